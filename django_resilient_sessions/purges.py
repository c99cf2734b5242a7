"""Recovery: the Redis deletions queued during an outage, and when Redis may be trusted again.

While Redis cannot be reached, ended sessions whose Redis copies could not be
deleted are queued in ``PendingPurge``.  A process must not serve from Redis
again before those copies are gone, so the breaker's probe passes through
:func:`gate`: Redis answers *and* the queue is empty, or it stays open.  An
unreadable queue keeps it open too (fail closed).

The queue is drained in bounded batches, never inside the request that
probes: the probe only schedules the work, which runs once that request's
response has gone out (Django's ``request_finished``), ``DRAIN_BATCHES`` batches
of ``DRAIN_BATCH`` keys at a time; ``clearsessions`` drains everything.  The
last batch closes the breaker.

A process that never saw the outage has no probe to notice it: once per
``PURGE_CHECK_INTERVAL`` it asks whether the queue is empty (one indexed
``EXISTS``), and if not, stops trusting Redis until it is drained.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from . import health, outbox
from .cachecopy import SessionCache, set_gate
from .conf import conf
from .exceptions import CacheUnavailable, LedgerUnavailable

__all__ = ["DRAIN_BATCH", "DRAIN_BATCHES", "check_if_due", "drain", "gate", "install"]

logger = logging.getLogger("django_resilient_sessions")

DRAIN_BATCH = 100
DRAIN_BATCHES = 10

_scheduled: set[str] = set()
_lock = threading.Lock()
_draining = threading.Lock()
_last_check = time.monotonic()


def gate(cache: SessionCache) -> bool:
    """May ``cache``'s breaker close?  Only with the queue known to be empty."""
    try:
        pending = outbox.queue_exists()
    except LedgerUnavailable:
        logger.warning("Redis answers, but the purge queue cannot be read: still using backups.")
        return False
    if pending:
        schedule(cache.alias)
    return not pending


def schedule(alias: str) -> None:
    with _lock:
        _scheduled.add(alias)


def on_request_finished(**kwargs: Any) -> None:
    """Drain what a probe scheduled, after its response went out (one drainer per process)."""
    if not _scheduled or not _draining.acquire(blocking=False):
        return
    try:
        with _lock:
            aliases = list(_scheduled)
        for alias in aliases:
            if not drain(SessionCache(alias), max_batches=DRAIN_BATCHES).more:
                with _lock:
                    _scheduled.discard(alias)
    finally:
        # (A connection the drain opened is closed by Django when the next request
        # starts, as CONN_MAX_AGE says.)
        _draining.release()


@dataclass
class Drained:
    done: int = 0
    #: Stopped at the batch limit with more to do (not at a failure, not at the end).
    more: bool = False


def drain(cache: SessionCache, *, max_batches: int | None) -> Drained:
    """Delete queued Redis copies, ``DRAIN_BATCH`` at a time.

    Closes ``cache``'s breaker once the queue is empty.  Stops at the first
    failure of Redis (the breaker opens) or of the database (it stays open);
    the next probe schedules the rest.
    """
    result = Drained()
    batches = 0
    with cache.breaker.probing():
        try:
            # What was queued when the drain began: logouts after it see to their own.
            upto = outbox.queue_top()
        except LedgerUnavailable as error:
            logger.warning("Draining the purge queue stopped: %s", error)
            return result
        while True:
            if max_batches is not None and batches >= max_batches:
                result.more = True
                break
            try:
                hashes = outbox.queued(DRAIN_BATCH, upto)
                if not hashes:
                    cache.recovered()
                    break
                cache.delete(hashes)
                outbox.unqueue(hashes)
            except (CacheUnavailable, LedgerUnavailable) as error:
                logger.warning("Draining the purge queue stopped: %s", error)
                break
            result.done += len(hashes)
            batches += 1
    if result.done:
        health.count("purges_done", result.done)
        logger.warning("Purged %d session cache entries queued during an outage.", result.done)
    return result


def check_if_due(cache: SessionCache) -> None:
    """Once per ``PURGE_CHECK_INTERVAL``: stop trusting Redis if another process queued purges."""
    global _last_check
    interval = conf.PURGE_CHECK_INTERVAL
    now = time.monotonic()
    if interval is None or now - _last_check < interval:
        return
    _last_check = now
    try:
        # Not the deletions in flight: every logout has one for a few milliseconds
        # (ledger.end_rows); one whose process failed counts once SETTLED old.
        pending = outbox.queue_exists(settled_only=True)
    except LedgerUnavailable:
        return  # cannot tell: Redis stays trusted on this path (the documented window)
    if pending:
        logger.warning("Purges queued by another process: using backups until they are done.")
        cache.breaker.hold()
        schedule(cache.alias)


def restart_clock() -> None:
    """Start the ``PURGE_CHECK_INTERVAL`` wait afresh (tests)."""
    global _last_check
    _last_check = time.monotonic()
    with _lock:
        _scheduled.clear()


def install() -> None:
    """Connect recovery to the cache layer and to Django's request cycle (``AppConfig.ready``)."""
    from django.core.signals import request_finished

    set_gate(gate)
    request_finished.connect(on_request_finished, dispatch_uid="django_resilient_sessions.drain")
