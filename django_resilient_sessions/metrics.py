"""Prometheus metrics (``pip install django-resilient-sessions[metrics]``).

When ``prometheus-client`` is importable, :func:`install` (called from
``AppConfig.ready``) makes the metrics below in its default registry and
becomes :mod:`.health`'s sink: every :func:`.health.count` also counts here,
and the breakers report their state to a gauge.  Without it nothing here is
made and the engine costs what it always did.

Under gunicorn, uWSGI or several ASGI workers, set ``PROMETHEUS_MULTIPROC_DIR``
(the client's multiprocess mode, see ``docs/production.md``): each worker
writes its values there and :func:`exposition` sums them for the scrape.  The
breaker gauge is ``livemax``: 1 while any live worker has that node's breaker
open.  Call :func:`child_exit` from gunicorn's ``child_exit`` hook so that a
dead worker stops counting.

No label carries a session, a user or a client: sources, reasons, outcomes,
ledger operations, cache aliases and Redis nodes only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from . import health, signals
from .breaker import CircuitBreaker, set_listener

__all__ = [
    "AVAILABLE",
    "CONTENT_TYPE",
    "METRICS",
    "PENDING_CAP",
    "child_exit",
    "exposition",
    "install",
    "multiprocess_dir",
]

logger = logging.getLogger("django_resilient_sessions")

try:
    import prometheus_client
    from prometheus_client import multiprocess
    from prometheus_client.core import GaugeMetricFamily
except ImportError:  # the optional extra is not installed
    prometheus_client = None  # type: ignore[assignment]

AVAILABLE = prometheus_client is not None
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: The queue gauge counts up to this many rows (one bounded query per scrape).
PENDING_CAP = 10_000

PREFIX = "resilient_sessions_"

#: Every metric family the package exports: name (as scraped) -> (type, labels, help).
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "loads_total": (
        "counter",
        ("source",),
        "Session loads by the copy that served them: cache (Redis), backup (the backup "
        "cookie), ledger (the login alone, from its ledger row), adopted (taken over from "
        "PREVIOUS_ENGINE) or none (nothing served).",
    ),
    "saves_total": (
        "counter",
        ("copy",),
        "Session saves by where the newest copy went: cache (Redis and a backup), backup "
        "(the backup only: Redis skipped or failing) or none (refused, nothing kept).",
    ),
    "write_backs_total": (
        "counter",
        (),
        "Backups (or ledger logins) written back into Redis after an outage or a lost copy.",
    ),
    "backups_written_total": ("counter", (), "Backup cookies written, partial ones included."),
    "backups_partial_total": (
        "counter",
        (),
        "Partial backups: keys left out to fit the cookie budget.",
    ),
    "backups_omitted_total": (
        "counter",
        (),
        "Saves whose backup did not fit even partially: no backup cookie.",
    ),
    "backups_rejected_total": (
        "counter",
        ("reason",),
        "Backups refused: invalid (undecodable, tampered, foreign), ended (logged out or "
        "revoked), no_ledger_row (a login the ledger never recorded), rollback (older than "
        "one already served).",
    ),
    "ended_total": (
        "counter",
        ("reason",),
        "Sessions ended in the ledger, by reason (logout, revoked, limit, expired, idle, "
        "password_change, account_deleted, replaced, other).",
    ),
    "purges_queued_total": (
        "counter",
        (),
        "Redis deletions that Redis could not take at once, queued for the drain.",
    ),
    "purges_done_total": ("counter", (), "Queued Redis deletions done by the drain."),
    "cache_reads_total": ("counter", ("result",), "Redis reads of a session: hit or miss."),
    "cache_errors_total": ("counter", (), "Redis calls that failed (refused, timed out, ...)."),
    "cache_skipped_total": (
        "counter",
        (),
        "Redis calls skipped because the circuit breaker was open.",
    ),
    "ledger_errors_total": (
        "counter",
        ("operation",),
        "Ledger statements that failed (the database refused, timed out or was read-only).",
    ),
    "breaker_open": (
        "gauge",
        ("alias", "node"),
        "1 while the circuit breaker of this cache alias (Redis Cluster: of this node; "
        "node is empty off a cluster) is open in any live worker.",
    ),
    "outage_duration_seconds": (
        "histogram",
        ("alias",),
        "How long a breaker stayed open, observed when it closes (one per worker and node).",
    ),
    "ledger_query_duration_seconds": (
        "histogram",
        ("operation",),
        "Time of each ledger operation (one guarded function: one or a few statements).",
    ),
    "purges_pending": (
        "gauge",
        (),
        f"Redis deletions queued and not done yet (counted up to {PENDING_CAP}); read at "
        "scrape time, absent when the database does not answer.",
    ),
    "ledger_up": (
        "gauge",
        (),
        "1 when the ledger's database answered the scrape's query, 0 when it did not.",
    ),
}

OUTAGE_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
QUERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: health counter -> (metric, fixed label value; None: the count's own label).
_COUNTED: dict[str, tuple[str, str | None]] = {
    "loads": ("loads_total", None),
    "saves": ("saves_total", None),
    "written_back": ("write_backs_total", ""),
    "backups_written": ("backups_written_total", ""),
    "backups_partial": ("backups_partial_total", ""),
    "backups_omitted": ("backups_omitted_total", ""),
    "backups_rejected": ("backups_rejected_total", None),
    "sessions_ended": ("ended_total", None),
    "purges_pending": ("purges_queued_total", ""),
    "purges_done": ("purges_done_total", ""),
    "cache_hits": ("cache_reads_total", "hit"),
    "cache_misses": ("cache_reads_total", "miss"),
    "cache_errors": ("cache_errors_total", ""),
    "cache_skipped": ("cache_skipped_total", ""),
    "ledger_errors": ("ledger_errors_total", None),
}
_OBSERVED = {
    "outage": "outage_duration_seconds",
    "ledger_query": "ledger_query_duration_seconds",
}


def _base(name: str) -> str:
    """The name prometheus-client takes: without ``_total`` (it adds it back)."""
    return PREFIX + name.removesuffix("_total")


class _Sink:
    """:mod:`.health`'s sink: the metric objects, made once per process."""

    def __init__(self) -> None:
        assert prometheus_client is not None
        self.made: dict[str, Any] = {}
        #: The counter (labelled child) of each (event, label) counted so far.
        self.counters: dict[tuple[str, str], Any] = {}
        for name, (kind, labels, text) in METRICS.items():
            if kind == "counter":
                self.made[name] = prometheus_client.Counter(_base(name), text, labels)
            elif kind == "histogram":
                buckets = OUTAGE_BUCKETS if name.startswith("outage") else QUERY_BUCKETS
                self.made[name] = prometheus_client.Histogram(
                    PREFIX + name, text, labels, buckets=buckets
                )
        self.breaker_open = prometheus_client.Gauge(
            PREFIX + "breaker_open",
            METRICS["breaker_open"][2],
            ("alias", "node"),
            multiprocess_mode="livemax",
        )

    # Each event is recorded or dropped, never raised: a metric that cannot be
    # written (the multiprocess directory removed or full) must not fail the
    # request that reported it, least of all during an outage.

    def count(self, name: str, n: int, label: str) -> None:
        counter = self.counters.get((name, label))
        try:
            if counter is None:
                found = _COUNTED.get(name)
                if found is None:
                    return
                metric, fixed = found
                counter = self.made[metric]
                if METRICS[metric][1]:
                    counter = counter.labels((label if fixed is None else fixed) or "other")
                # (labels are bounded values: the child is looked up once per process)
                self.counters[name, label] = counter
            counter.inc(n)
        # Whatever the client raises (OSError from its files, mostly): see above.
        except Exception as error:
            _dropped(error)

    def observe(self, name: str, value: float, label: str) -> None:
        metric = _OBSERVED.get(name)
        if metric is None:
            return
        try:
            self.made[metric].labels(label).observe(value)
        # As in count().
        except Exception as error:
            _dropped(error)

    def breaker(self, breaker: CircuitBreaker, is_open: bool) -> None:
        try:
            self.breaker_open.labels(breaker.alias, breaker.node or "").set(1 if is_open else 0)
        # As in count().
        except Exception as error:
            _dropped(error)


_said = False


def _dropped(error: Exception) -> None:
    """Say once per process that metrics are being lost (and why)."""
    global _said
    if not _said:
        _said = True
        logger.error(
            "Metrics could not be recorded (%r); they are dropped until this is fixed "
            "(PROMETHEUS_MULTIPROC_DIR: %r).",
            error,
            multiprocess_dir(),
        )


_sink: _Sink | None = None


def install() -> bool:
    """Make the metrics and start counting (once per process); False without the extra."""
    global _sink
    if not AVAILABLE:
        return False
    if _sink is None:
        _sink = _Sink()
        from .breaker import all_breakers

        for breaker in all_breakers().values():
            _sink.breaker(breaker, breaker.state != "closed")
    health.install_sink(_sink)
    set_listener(_sink.breaker)
    signals.cache_recovered.connect(
        _on_recovered, dispatch_uid="django_resilient_sessions.metrics.outage"
    )
    return True


def _on_recovered(*, alias: str, downtime: float, **kwargs: Any) -> None:
    health.observe("outage", downtime, alias)


def multiprocess_dir() -> str:
    """``PROMETHEUS_MULTIPROC_DIR`` ("" when the client runs in single-process mode)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


class _LedgerCollector:
    """The queue's length and whether the ledger answered, read at scrape time."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def collect(self) -> Iterator[Any]:
        from .dbaccess import bounded
        from .exceptions import LedgerUnavailable
        from .outbox import queue_size

        try:
            pending = bounded(lambda: queue_size(PENDING_CAP), self.timeout, lane="metrics")
        except LedgerUnavailable as error:
            logger.warning("Metrics: the ledger did not answer (%s).", error)
            pending = None
        up = GaugeMetricFamily(PREFIX + "ledger_up", METRICS["ledger_up"][2])
        up.add_metric([], 0 if pending is None else 1)
        yield up
        if pending is not None:
            yield GaugeMetricFamily(
                PREFIX + "purges_pending", METRICS["purges_pending"][2], value=pending
            )


def exposition(timeout: float) -> bytes:
    """The text exposition: every worker's values (multiprocess mode) or this process's,
    and the ledger's gauges (a query waiting at most ``timeout`` seconds)."""
    assert prometheus_client is not None
    registry: Any = prometheus_client.REGISTRY
    if multiprocess_dir():
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    extra = prometheus_client.CollectorRegistry()
    extra.register(_LedgerCollector(timeout))
    ours = prometheus_client.generate_latest(registry)
    return bytes(ours + prometheus_client.generate_latest(extra))


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook: a dead worker's gauges stop counting."""
    if AVAILABLE and multiprocess_dir():
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
