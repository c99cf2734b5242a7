"""Fault, load and abuse runs against live app servers (``python -m chaos``).

``python -m chaos run`` (the default) starts two gunicorn app servers (:mod:`chaos.wsgi`,
2 sync workers each) that share one Redis (a master, a replica and a Sentinel) and one
database, lets N virtual users log in, read, write numbered values and log out against
both servers, and injects Redis and database faults one after another, checking the
session engine's promises after every request (:mod:`chaos.load`, :mod:`chaos.run`).

``python -m chaos fuzz`` sends thousands of mutated session and backup cookies to a live
server (:mod:`chaos.fuzz`).

Both print a table and exit 1 when an invariant breaks (2 when setup fails).
"""

from __future__ import annotations

#: Engine bugs and documented risks the chaos run knows about. When one shows up exactly
#: where it is expected, the run reports it (the table marks it "+n KEY") instead of
#: failing; ``--no-known-bugs`` turns them back into failures. Each engine bug has a test
#: in tests/test_chaos_findings.py marked xfail(strict=True), so a fix is noticed there.
#: (B1, B3 and B4, found by earlier runs, are fixed: they fail the run again if they return.)
KNOWN_BUGS = {
    "R1": (
        "documented risk (README, PURGE_CHECK_INTERVAL): a worker whose breaker is closed "
        "serves a session from its Redis copy while that copy's deletion, queued by another "
        "worker that could not write to Redis, is still pending"
    ),
}
