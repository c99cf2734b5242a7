"""The short form of ``make chaos-cluster``, as part of ``make test``.

``python -m chaos cluster --short`` in a subprocess: 40 virtual users against two gunicorn
app servers whose session cache is a private Redis Cluster of three masters and three
replicas (SQLite ledger), while a master is killed (its replica promoted), a whole shard
is down, slots are resharded, a master hangs and the cluster is restarted empty, with
logouts and revocations during each. It must exit 0: no 5xx, no lost write, no rollback,
no unexpected logout, no resurrection, the ledger agreeing with what the users were told,
and, while one shard of three is down, between 10% and 60% of the requests served from
their backups (``chaos.cluster.SHARE_BAND``: one shard's share, not everyone's). Timings
are printed by the run, never asserted. About 80 s; on the SQLite pass only.
"""

from __future__ import annotations

import os
import re

import pytest

from tests.test_chaos_short import _column, run_chaos

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        os.environ.get("DRS_TEST_DB", "sqlite").strip().lower() not in ("", "sqlite"),
        reason="the short chaos runs go with the SQLite pass",
    ),
]

FAULTS = (
    "master killed (replica promoted)",
    "shard down (master and replica)",
    "slots resharded under load",
    "node hung (SIGSTOP)",
    "cluster restarted empty",
)


def test_short_chaos_run_on_a_cluster_keeps_every_invariant() -> None:
    code, output, elapsed = run_chaos("cluster", "--short", "--db", "sqlite", timeout=240)
    assert "CHAOS TABLE" in output, output[-5000:]
    assert code == 0, output[-8000:]
    assert "CHAOS RESULT: PASS" in output
    for fault in FAULTS:
        assert f"| {fault} " in output, f"no row for {fault!r}"
    table = {
        name: _column(output, name)
        for name in ("errors", "lost writes", "rollbacks", "unexp. logouts", "resurrections")
    }
    for name, column in table.items():
        assert column["TOTAL"] == "0", (name, column)
    # The faults were met: revocations during each, and the shard outage moved its own
    # sessions (the runner's band check: a note, and no violation above).
    notes = output[output.index("Notes:") :]
    for fault in FAULTS:
        line = next(line for line in notes.splitlines() if line.startswith(f"- {fault}:"))
        assert "users revoked" in line, line
    share = re.search(r"while it was down: (\d+) requests, (\d+)% served from backups", notes)
    assert share is not None, notes
    assert int(share.group(1)) > 0 and 10 <= int(share.group(2)) <= 60, share.group(0)
    backup = _column(output, "from backup")
    assert backup["final check (Redis down)"] != "0%"  # everyone from backups there
    print(f"short chaos run on a cluster: {elapsed:.0f} s")
