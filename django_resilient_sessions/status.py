"""Can this site serve sessions now?  The answer of the health view and ``sessionstats --check``.

:func:`check` gathers the facts (this process's breakers, a bounded ``PING``
per Redis node, a bounded ``SELECT 1`` on the ledger's database) and
:func:`judge`, a pure function, turns them into a status.

``down`` (HTTP 503, exit 2) when sessions cannot be served at all: the session
cache cannot be configured (``ImproperlyConfigured``), or a Redis node refuses
us for good (an authentication or permission error, an unknown command, a
database index it does not have: waiting will not mend it, a person must fix
the settings or the server); or no Redis node answers *and* the ledger's
database does not answer, with ``FAIL_CLOSED`` on (no backup's login can be
vouched for and no login can be recorded: every user is logged out until one
of them is back).

``degraded`` (HTTP 200, exit 1) while sessions are served, some from backups:
a breaker of this process is open, a node does not answer (refused, timed out,
loading, read-only...), or the ledger does not answer while Redis does
(sessions served, logins and logouts refused).

``ok`` (HTTP 200, exit 0): Redis and the ledger answer, every breaker closed.

A Redis outage alone is ``degraded``, never ``down``: the backups serve, and
taking the site out of the load balancer would turn an outage of the cache
into an outage of the site.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.db import connections

from . import health
from .breaker import CLOSED, breakers_of
from .conf import conf

__all__ = ["DEGRADED", "DOWN", "OK", "Ledger", "Node", "Report", "check", "judge"]

logger = logging.getLogger("django_resilient_sessions")

OK, DEGRADED, DOWN = "ok", "degraded", "down"

#: Redis replies that no waiting mends (matched in upper case in the error's text).
MISCONFIGURED_REPLIES = (
    "NOAUTH",
    "WRONGPASS",
    "INVALID PASSWORD",
    "NOPERM",
    "UNKNOWN COMMAND",
    "DB INDEX IS OUT OF RANGE",
    "INVALID DB INDEX",
)


@dataclass
class Node:
    """One Redis node (the alias's server off a cluster) as this process sees it."""

    name: str
    node: str | None
    #: This process's breaker: closed, open or half_open.
    breaker: str = CLOSED
    #: Seconds this process's breaker has been open (0 when closed).
    degraded_seconds: float = 0.0
    #: The last failure this process's breaker recorded.
    last_error: str = ""
    #: The live check: True (answered), False (did not), None (not checked).
    answers: bool | None = None
    round_trip_ms: float | None = None
    error: str = ""
    #: The live check's error is one no waiting mends (see MISCONFIGURED_REPLIES).
    misconfigured: bool = False


@dataclass
class Ledger:
    database: str
    #: True (answered), False (did not), None (not checked).
    answers: bool | None = None
    error: str = ""


@dataclass
class Report:
    status: str
    reasons: list[str]
    alias: str
    nodes: list[Node] = field(default_factory=list)
    ledger: Ledger | None = None
    #: The session cache could not even be configured.
    configuration_error: str = ""
    # This process's loads served from backups over the last "minutes" (at most its ring).
    backup_loads: dict[str, int] = field(default_factory=dict, init=False)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["pid"] = os.getpid()
        return data

    def line(self) -> str:
        """One line for cron and Nagios-style checks."""
        label = {OK: "OK", DEGRADED: "DEGRADED", DOWN: "DOWN"}[self.status]
        return f"RESILIENT SESSIONS {label}: " + "; ".join(self.reasons)


def misconfigured(error: BaseException) -> bool:
    """Is this Redis error one that waiting will not mend (credentials, permissions)?

    The errors it was raised from count too: redis-py's cluster client wraps an
    authentication error in a ``RedisClusterException``.
    """
    import redis.exceptions as redis_errors

    lasting = tuple(
        getattr(redis_errors, name)
        for name in ("AuthenticationError", "AuthorizationError", "NoPermissionError")
        if hasattr(redis_errors, name)
    )
    seen: set[int] = set()
    found: BaseException | None = error
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        if isinstance(found, lasting):
            return True
        if isinstance(found, redis_errors.ResponseError) or type(found).__name__ == "ResponseError":
            text = str(found).upper()
            if any(reply in text for reply in MISCONFIGURED_REPLIES):
                return True
        found = found.__cause__ or found.__context__
    return False


def judge(report: Report, *, fail_closed: bool) -> Report:
    """Set ``report.status`` and its reasons from its facts (no I/O)."""
    reasons: list[str] = []
    down: list[str] = []
    if report.configuration_error:
        down.append(f"session cache {report.alias!r} misconfigured: {report.configuration_error}")
    for node in report.nodes:
        if node.misconfigured:
            down.append(f"Redis {node.name} refuses us for good: {node.error}")
        elif node.answers is False:
            reasons.append(f"Redis {node.name} does not answer ({node.error})")
        elif node.breaker != CLOSED:
            reasons.append(
                f"Redis {node.name}: breaker {node.breaker} for {node.degraded_seconds:.0f} s "
                f"({node.last_error}), sessions served from backups"
            )
    answering = [n for n in report.nodes if n.answers is not False and n.breaker == CLOSED]
    ledger = report.ledger
    ledger_down = ledger is not None and ledger.answers is False
    if ledger_down:
        assert ledger is not None
        reasons.append(f"ledger database {ledger.database!r} does not answer ({ledger.error})")
        if not answering and not report.configuration_error and fail_closed:
            down.append(
                "neither Redis nor the ledger answers: no login can be vouched for (FAIL_CLOSED)"
            )
    if down:
        report.status, report.reasons = DOWN, down + reasons
    elif reasons:
        report.status, report.reasons = DEGRADED, reasons
    else:
        report.status = OK
        report.reasons = [
            f"Redis answers ({len(report.nodes)} node{'s' * (len(report.nodes) != 1)}), "
            "ledger answers" + ("" if ledger is not None and ledger.answers else " (not checked)")
        ]
    return report


def check(*, live: bool = True) -> Report:
    """Gather the facts and judge them; never raises, waits at most the configured bounds.

    ``live``: also ``PING`` every node (``BREAKER_PROBE_TIMEOUT`` each) and run
    ``SELECT 1`` on the ledger's database (``HEALTH_CHECK_TIMEOUT``).
    """
    alias = settings.SESSION_CACHE_ALIAS
    report = Report(status=OK, reasons=[], alias=alias)
    try:
        try:
            _cache_facts(report, live=live)
        # Whatever building the cache or its client raises (ImproperlyConfigured,
        # a bad OPTIONS value, an import error of a client class): the site cannot
        # reach its sessions' cache until the settings change.
        except Exception as error:
            logger.error("Health check: the session cache %r cannot be used: %r", alias, error)
            report.configuration_error = f"{type(error).__name__}: {error}"
        if live:
            report.ledger = _ledger_facts()
        minutes = min(conf.BACKUP_LOADS_WINDOW or 15, health.RING_MINUTES)
        report.backup_loads = {"minutes": minutes, "this_process": health.backup_loads(minutes)}
        return judge(report, fail_closed=conf.FAIL_CLOSED)
    # Anything else (a setting no system check vetted: ``sessionstats --check``
    # skips them; a database router that raises): the check cannot tell, and
    # says so as "down" with the error rather than raising (a 500, a traceback
    # whose exit status 1 would read as "degraded").
    except Exception as error:
        logger.exception("Health check failed: %r", error)
        report.status = DOWN
        report.reasons = [f"the health check cannot run: {type(error).__name__}: {error}"]
        return report


def _cache_facts(report: Report, *, live: bool) -> None:
    from .cachecopy import SessionCache

    cache = SessionCache(report.alias)
    pings = cache.ping() if live else {}
    seen = {b.name: b for b in breakers_of(report.alias)}
    names = list(pings) or [n for n, b in seen.items() if b.node is not None] or [report.alias]
    for name in names:
        breaker = seen.get(name)
        state = breaker.snapshot() if breaker is not None else {}
        node = Node(
            name=name,
            node=breaker.node if breaker is not None else _node_of(name),
            breaker=state.get("state", CLOSED),
            degraded_seconds=state.get("open_for", 0.0),
            last_error=state.get("last_error", ""),
        )
        if name in pings:
            ms, error = pings[name]
            node.answers, node.round_trip_ms = error is None, ms
            if error is not None:
                node.error = f"{type(error).__name__}: {error}"
                node.misconfigured = misconfigured(error)
        elif breaker is not None and breaker.state != CLOSED and breaker.refused_for_good:
            # Nothing to ping (a cluster whose client could not be made): the
            # breaker's last failure says whether waiting will mend it.
            node.misconfigured, node.error = True, breaker.last_error
        report.nodes.append(node)


def _node_of(name: str) -> str | None:
    return name.split("@", 1)[1] if "@" in name else None


def _ledger_facts() -> Ledger:
    from .dbaccess import bounded, db
    from .exceptions import LedgerUnavailable

    using = db()
    ledger = Ledger(database=using)

    def select_one() -> None:
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()

    try:
        bounded(select_one, conf.HEALTH_CHECK_TIMEOUT)
    except LedgerUnavailable as error:
        ledger.answers, ledger.error = False, str(error)
    else:
        ledger.answers = True
    return ledger
