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

A process that never saw the outage has no probe to notice it: at its first
load and then once per ``PURGE_CHECK_INTERVAL`` it asks whether the queue is
empty (one indexed ``EXISTS``), and if not, stops trusting Redis until it is
drained.

On Redis Cluster each node's breaker has its own gate and drain: the queued
deletions of the slots it serves (``PendingPurge.slot``), so a shard that
cannot be reached keeps its own sessions on backups and nobody else's.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from . import health, outbox
from .breaker import CircuitBreaker, get_breaker
from .cachecopy import SessionCache, set_gate
from .conf import conf
from .exceptions import LedgerUnavailable

__all__ = ["DRAIN_BATCH", "DRAIN_BATCHES", "check_if_due", "drain", "gate", "install"]

logger = logging.getLogger("django_resilient_sessions")

DRAIN_BATCH = 100
DRAIN_BATCHES = 10

#: (alias, node) pairs whose drain a probe scheduled (node None: the whole alias).
_scheduled: set[tuple[str, str | None]] = set()
_lock = threading.Lock()
_draining = threading.Lock()
#: When the queue was last checked (None: never, so at the process's first load: a
#: process started after an outage has no breaker that saw it).
_last_check: float | None = None


def gate(cache: SessionCache, breaker: CircuitBreaker) -> bool:
    """May this breaker of ``cache`` close?  Only with its part of the queue known empty."""
    try:
        pending = outbox.queue_exists(slots=cache.slots_of(breaker))
    except LedgerUnavailable:
        logger.warning("Redis answers, but the purge queue cannot be read: still using backups.")
        return False
    if pending:
        schedule(cache.alias, breaker.node)
    return not pending


def schedule(alias: str, node: str | None = None) -> None:
    with _lock:
        _scheduled.add((alias, node))


def on_request_finished(**kwargs: Any) -> None:
    """Drain what a probe scheduled, after its response went out (one drainer per process)."""
    if not _scheduled or not _draining.acquire(blocking=False):
        return
    try:
        with _lock:
            scheduled = list(_scheduled)
        for alias, node in scheduled:
            if not drain(SessionCache(alias), max_batches=DRAIN_BATCHES, node=node).more:
                with _lock:
                    _scheduled.discard((alias, node))
    finally:
        # (A connection the drain opened is closed by Django when the next request
        # starts, as CONN_MAX_AGE says.)
        _draining.release()


@dataclass
class Drained:
    done: int = 0
    #: Stopped at the batch limit with more to do (not at a failure, not at the end).
    more: bool = False


def drain(cache: SessionCache, *, max_batches: int | None, node: str | None = None) -> Drained:
    """Delete queued Redis copies, ``DRAIN_BATCH`` at a time (``node``'s slots only, if given).

    Closes the breakers held for these deletions once they are done.  Stops at
    the first failure of Redis (the breaker opens) or of the database (it
    stays open); the next probe schedules the rest.
    """
    result = Drained()
    batches = 0
    slots = None if node is None else cache.slots_of(get_breaker(cache.alias, node))
    with cache.probing():
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
                hashes = outbox.queued(DRAIN_BATCH, upto, slots)
                if not hashes:
                    cache.recovered(node)
                    break
                done = cache.tombstone(hashes)
                # (Counted by the queue: another process draining at once did the rest.)
                result.done += outbox.unqueue(done)
            except LedgerUnavailable as error:
                logger.warning("Draining the purge queue stopped: %s", error)
                break
            batches += 1
            if len(done) < len(hashes):
                # (A node of a cluster, or Redis, refused: its breaker opened.)
                logger.warning("Draining the purge queue stopped: the cache refused.")
                break
    if result.done:
        health.count("purges_done", result.done)
        logger.warning("Purged %d session cache entries queued during an outage.", result.done)
    return result


def check_if_due(cache: SessionCache) -> None:
    """Once per ``PURGE_CHECK_INTERVAL``: stop trusting Redis if another process queued purges."""
    global _last_check
    interval = conf.PURGE_CHECK_INTERVAL
    now = time.monotonic()
    if interval is None or (_last_check is not None and now - _last_check < interval):
        return
    _last_check = now
    try:
        # Not the deletions in flight: every logout has one for a few milliseconds
        # (ledger.end_rows); one whose process failed counts once SETTLED old.
        pending = outbox.pending_slots()
    except LedgerUnavailable:
        return  # cannot tell: Redis stays trusted on this path (the documented window)
    if pending:
        logger.warning("Purges queued by another process: using backups until they are done.")
        for breaker in cache.breakers_serving(pending):
            breaker.hold()
            schedule(cache.alias, breaker.node)


def restart_clock(*, checked: bool = True) -> None:
    """Start the ``PURGE_CHECK_INTERVAL`` wait afresh (tests); ``checked=False``: as a
    process that has not checked yet (its first load checks)."""
    global _last_check
    _last_check = time.monotonic() if checked else None
    with _lock:
        _scheduled.clear()


def install() -> None:
    """Connect recovery to the cache layer and to Django's request cycle (``AppConfig.ready``)."""
    from django.core.signals import request_finished

    set_gate(gate)
    request_finished.connect(on_request_finished, dispatch_uid="django_resilient_sessions.drain")
