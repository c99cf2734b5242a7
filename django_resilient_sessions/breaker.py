"""A per-process circuit breaker in front of the session cache.

After a failure the cache is skipped for ``BREAKER_COOLDOWN`` seconds; then one
caller probes it (a ``PING`` that waits at most ``BREAKER_PROBE_TIMEOUT``) while
the others keep skipping.  A probe that succeeds closes the breaker; one that
fails opens it for another cool-down.  So a hung Redis costs each process one
socket timeout when it hangs, then one short probe wait per cool-down.

There is one breaker per cache alias, and on Redis Cluster one per primary node
of the alias (named ``alias@host:port``): a failing shard moves the sessions of
its slots to their backups, the other shards keep serving theirs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .conf import conf

__all__ = [
    "CircuitBreaker",
    "breakers_of",
    "find_breaker",
    "forget_nodes",
    "get_breaker",
    "known_slot_map",
    "reset_breakers",
    "set_listener",
    "slot_owners",
]

logger = logging.getLogger("django_resilient_sessions")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

#: Told ``(breaker, open)`` when a breaker is made, opens, closes or is forgotten
#: (``open`` False then): the metrics' gauge.  None: nobody listens.
_listener: Callable[[CircuitBreaker, bool], None] | None = None


def set_listener(listener: Callable[[CircuitBreaker, bool], None] | None) -> None:
    global _listener
    _listener = listener


def _tell(breaker: CircuitBreaker, is_open: bool) -> None:
    if _listener is not None:
        _listener(breaker, is_open)


class CircuitBreaker:
    def __init__(self, alias: str, node: str | None = None) -> None:
        self.alias = alias
        #: ``host:port`` of the cluster node it guards (None: the alias's one server).
        self.node = node
        self.name = alias if node is None else f"{alias}@{node}"
        #: Open only because the cache may not be trusted yet (it answered: see hold()).
        self.held = False
        self._lock = threading.Lock()
        self.state = CLOSED
        self._retry_at = 0.0
        self.opened_at: float | None = None
        self.last_error = ""
        #: The last failure is one no waiting mends (a wrong password: see :meth:`failed`).
        self.refused_for_good = False
        self.failures = 0
        self.trips = 0
        self._probe = threading.local()
        _tell(self, False)

    @contextmanager
    def probing(self) -> Iterator[None]:
        """Inside the block, this thread's calls go through (recovery work)."""
        self._probe.active = True
        try:
            yield
        finally:
            self._probe.active = False

    def allow(self) -> bool | None:
        """``True`` to go ahead, ``None`` to go ahead as the probe, ``False`` to skip."""
        if self.state == CLOSED or self.in_probe():
            return True
        with self._lock:
            now = time.monotonic()
            # A probe that never reported back (its thread died) does not
            # hold the breaker half open for ever: the next cool-down frees it.
            if self.state != CLOSED and now >= self._retry_at:
                self.state = HALF_OPEN
                self._retry_at = now + conf.BREAKER_COOLDOWN
                return None
            return self.state == CLOSED

    def in_probe(self) -> bool:
        """Is this thread doing recovery work (inside :meth:`probing`)?"""
        return bool(getattr(self._probe, "active", False))

    def hold(self) -> None:
        """Stay open for another cool-down: the cache answers but may not be trusted yet."""
        with self._lock:
            if self.state == CLOSED:
                self.opened_at = time.monotonic()
                self.trips += 1
            self.held = True
            self.refused_for_good = False
            self.state = OPEN
            self._retry_at = time.monotonic() + conf.BREAKER_COOLDOWN
        _tell(self, True)

    def succeeded(self) -> float | None:
        """Record a success; returns the outage's length when this closed the breaker."""
        if self.state == CLOSED:
            return None
        with self._lock:
            if self.state == CLOSED:
                return None
            self.state = CLOSED
            self.held = self.refused_for_good = False
            downtime = time.monotonic() - (self.opened_at or time.monotonic())
            self.opened_at = None
        _tell(self, False)
        logger.warning("Session cache %r answers again after %.1f s.", self.name, downtime)
        return downtime

    def failed(self, error: BaseException, *, lasting: bool = False) -> bool:
        """Record a failure; returns ``True`` when this opened a closed breaker.

        ``lasting``: the cache refused us in a way no waiting mends (credentials,
        permissions), which the health check reports as down.
        """
        with self._lock:
            self.failures += 1
            self.last_error = f"{type(error).__name__}: {error}"
            self.refused_for_good = lasting
            was_closed = self.state == CLOSED
            self.held = False
            self.state = OPEN
            self._retry_at = time.monotonic() + conf.BREAKER_COOLDOWN
            if was_closed:
                self.opened_at = time.monotonic()
                self.trips += 1
        if was_closed:
            _tell(self, True)
            logger.error(
                "Session cache %r failed (%s); serving sessions from backups for %.1f s.",
                self.name,
                self.last_error,
                conf.BREAKER_COOLDOWN,
            )
        return was_closed

    def snapshot(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "node": self.node,
            "state": self.state,
            "open_for": round(time.monotonic() - self.opened_at, 3) if self.opened_at else 0.0,
            "failures": self.failures,
            "trips": self.trips,
            "last_error": self.last_error,
        }


_breakers: dict[str, CircuitBreaker] = {}
_registry_lock = threading.Lock()
#: Per alias, the node this process last saw serving each slot (Redis Cluster).
_owners: dict[str, dict[int, str]] = {}


#: Per alias, redis-py's slot map (the object) last read whole into ``_owners``:
#: redis-py makes a new one at each refresh.
_maps: dict[str, object] = {}


def slot_owners(alias: str) -> dict[int, str]:
    """Slot -> ``host:port`` of the node last seen serving it, for ``alias`` (mutable)."""
    return _owners.setdefault(alias, {})


def known_slot_map(alias: str, slot_map: object | None = None) -> object | None:
    """The slot map last read whole for ``alias``; ``slot_map``: the one read now."""
    if slot_map is not None:
        _maps[alias] = slot_map
    return _maps.get(alias)


def get_breaker(alias: str, node: str | None = None) -> CircuitBreaker:
    """The breaker of ``alias`` (of its cluster node ``node``), made on first use."""
    name = alias if node is None else f"{alias}@{node}"
    try:
        return _breakers[name]
    except KeyError:
        with _registry_lock:
            return _breakers.setdefault(name, CircuitBreaker(alias, node))


def find_breaker(alias: str, node: str | None = None) -> CircuitBreaker | None:
    """The breaker of ``alias`` (its node ``node``) if this process has one."""
    return _breakers.get(alias if node is None else f"{alias}@{node}")


def breakers_of(alias: str) -> list[CircuitBreaker]:
    """The breakers of ``alias`` this process has made (its nodes' on a cluster)."""
    return [b for b in list(_breakers.values()) if b.alias == alias]


def forget_nodes(alias: str, keep: set[str]) -> None:
    """Drop the breakers of ``alias``'s nodes that no longer serve slots (a failover)."""
    with _registry_lock:
        for name, breaker in list(_breakers.items()):
            if breaker.alias == alias and breaker.node is not None and breaker.node not in keep:
                del _breakers[name]
                _tell(breaker, False)


def all_breakers() -> dict[str, CircuitBreaker]:
    return dict(_breakers)


def reset_breakers() -> None:
    """Forget every breaker's state (for tests, and after reconfiguring caches)."""
    with _registry_lock:
        for breaker in _breakers.values():
            _tell(breaker, False)
        _breakers.clear()
        _owners.clear()
        _maps.clear()
