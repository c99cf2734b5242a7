"""The cache copy of a session, in Redis through django-redis.

Entries are keyed by the SHA-256 of the session key, so a dump of Redis holds
no usable key.  Each operation is one Redis command on the primary (``SET`` with
``NX``/``XX`` instead of a ``GET`` then a ``SET``), goes through the alias's
circuit breaker, and turns every Redis failure into :class:`CacheUnavailable`.
Values go through django-redis's own serializer and compressor.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.core.cache import caches
from django.db import DatabaseError
from django_redis.exceptions import ConnectionInterrupted
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from . import health, signals
from .breaker import CLOSED, HALF_OPEN, get_breaker
from .conf import conf
from .exceptions import CacheUnavailable

__all__ = ["Entry", "SessionCache", "hash_key"]

logger = logging.getLogger("django_resilient_sessions")
T = TypeVar("T")

# What counts as "the cache is unavailable": any Redis error (refused,
# timeout, READONLY replica, LOADING, no master from Sentinel...), socket
# errors that escaped redis-py, and django-redis's wrapper of them.
CACHE_ERRORS = (RedisError, ConnectionInterrupted, OSError)


def hash_key(session_key: str) -> str:
    """The name a session goes by in Redis and in the database."""
    return hashlib.sha256(session_key.encode()).hexdigest()


@dataclass
class Entry:
    """A session's cache copy: data plus what the engine needs beside it."""

    version: int
    data: dict[str, Any]
    backup_tag: str = ""

    def dump(self) -> list[Any]:
        return [self.version, self.data, self.backup_tag]

    @classmethod
    def load(cls, value: Any) -> Entry | None:
        if (
            isinstance(value, (list, tuple))
            and len(value) == 3
            and isinstance(value[0], int)
            and isinstance(value[1], dict)
        ):
            return cls(value[0], value[1], str(value[2]))
        return None


class SessionCache:
    """The session alias of ``CACHES``, seen as a store of :class:`Entry`."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.backend: Any = caches[alias]
        self.breaker = get_breaker(alias)

    def _key(self, key_hash: str) -> Any:
        return self.backend.client.make_key(conf.CACHE_KEY_PREFIX + key_hash)

    def _tomb(self, key_hash: str) -> Any:
        return self.backend.client.make_key(conf.CACHE_KEY_PREFIX + "ended:" + key_hash)

    def _call(self, operation: Callable[[Any], T]) -> T:
        """Run ``operation`` on the primary, through the breaker."""
        allowed = self.breaker.allow()
        if allowed is None:
            allowed = self._probe()
        if not allowed:
            health.count("cache_skipped")
            raise CacheUnavailable(self.alias)
        try:
            return operation(self.backend.client.get_client(write=True))
        except CACHE_ERRORS as error:
            self._failed(error)
            raise CacheUnavailable(self.alias) from error

    def _failed(self, error: BaseException) -> None:
        health.count("cache_errors")
        if self.breaker.failed(error):
            _send(signals.cache_lost, alias=self.alias, error=error)

    def _probe(self) -> bool:
        """Is the cache back?  Then finish the purges queued during the outage.

        The ``PING`` waits at most ``BREAKER_PROBE_TIMEOUT``, so a hung Redis
        costs the probing request that long, not a socket timeout.  The breaker
        closes only once the queued deletions are done: no session ended
        during the outage is served from the cache.
        """
        from . import tracking  # the ledger sits on top of this module

        try:
            client = self.backend.client.get_client(write=True)
            _run_quick(client, [("PING",)], conf.BREAKER_PROBE_TIMEOUT)
            with self.breaker.probing():
                tracking.purge_pending()
        except CACHE_ERRORS as error:
            self._failed(error)
            return False
        except DatabaseError:
            # Redis is back but the queue cannot be read: serve from the cache
            # (users stay logged in); the periodic check purges later.
            logger.exception("Could not read the pending cache purges.")
        if self.breaker.state != HALF_OPEN:
            return False  # a purge failed: the breaker is open again
        downtime = self.breaker.succeeded()
        if downtime is not None:
            _send(signals.cache_recovered, alias=self.alias, downtime=downtime)
        return True

    def get(self, key_hash: str) -> tuple[Entry | None, bool]:
        """The cache copy, and whether the session was ended.

        One ``GET``; a miss asks for the tombstone too (a second round trip,
        on the rare path that may restore a backup).
        """
        key = self._key(key_hash)
        raw = self._call(lambda client: client.get(key))
        if raw is None:
            health.count("cache_misses")
            return None, bool(self._call(lambda client: client.exists(self._tomb(key_hash))))
        try:
            entry = Entry.load(self.backend.client.decode(raw))
        # A value this engine did not write (another serializer, a foreign
        # key under our prefix) cannot be a session: treat it as a miss.
        except Exception:
            logger.warning("Unreadable session cache entry %s treated as missing.", key_hash[:12])
            entry = None
        health.count("cache_hits" if entry is not None else "cache_misses")
        return entry, False

    def put(
        self, key_hash: str, entry: Entry, ttl: int, *, nx: bool = False, xx: bool = False
    ) -> bool:
        """Write ``entry``; ``False`` when ``nx``/``xx`` stopped the write."""
        if ttl <= 0:
            self.delete([key_hash], tombstone=False)
            return True
        value = self.backend.client.encode(entry.dump())
        key = self._key(key_hash)
        return bool(self._call(lambda client: client.set(key, value, px=ttl * 1000, nx=nx, xx=xx)))

    def exists(self, key_hash: str) -> bool:
        return bool(self._call(lambda client: client.exists(self._key(key_hash))))

    def recreate(self, key_hash: str, entry: Entry, ttl: int) -> bool | None:
        """Put back a copy that may have been lost: ``None`` if the session was ended.

        ``False`` when a copy is there (it is left alone), ``True`` when written.
        """
        if self._call(lambda client: client.exists(self._tomb(key_hash))):
            return None
        return self.put(key_hash, entry, ttl, nx=True)

    def delete(self, key_hashes: Iterable[str], *, tombstone: bool = True) -> int:
        """Delete cache copies, leaving a tombstone so no backup brings them back.

        One round trip (a pipeline).  The tombstone lives as long as a backup
        can (``SESSION_COOKIE_AGE``).  Tried even with the breaker open.
        """
        hashes = list(key_hashes)
        if not hashes:
            return 0

        commands: list[tuple[Any, ...]] = [("DEL", *[self._key(h) for h in hashes])]
        if tombstone:
            ttl = max(settings.SESSION_COOKIE_AGE, 1)
            commands += [("SET", self._tomb(h), b"1", "EX", ttl) for h in hashes]
        if self.breaker.state == CLOSED:
            return int(self._call(lambda client: _pipeline(client, commands))[0])
        # Breaker open: try anyway, since a deletion that fails leaves an ended
        # session in the cache for other processes, but on a connection of its
        # own that waits no longer than the probe does.
        try:
            client = self.backend.client.get_client(write=True)
            return int(_run_quick(client, commands, conf.BREAKER_PROBE_TIMEOUT)[0])
        except CACHE_ERRORS as error:
            self._failed(error)
            raise CacheUnavailable(self.alias) from error

    def ping_ms(self) -> float:
        """Round-trip time of a PING in milliseconds (for health reports)."""
        start = time.perf_counter()
        self._call(lambda client: client.ping())
        return (time.perf_counter() - start) * 1000


def _pipeline(client: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return list(pipe.execute())


def _run_quick(client: Any, commands: list[tuple[Any, ...]], timeout: float) -> list[Any]:
    """Run ``commands`` over a fresh connection whose every step waits at most ``timeout``.

    A pooled connection would inherit the alias's socket timeouts (a hung
    Redis accepts the TCP connection, then never answers the handshake).
    """
    pool = client.connection_pool
    options = {
        **pool.connection_kwargs,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    connection = pool.connection_class(**options)
    try:
        connection.connect()
        connection.send_packed_command(connection.pack_commands(commands))
        return [connection.read_response() for _ in commands]  # raises on an error reply
    finally:
        connection.disconnect()


def _send(signal: Any, **kwargs: Any) -> None:
    for receiver, result in signal.send_robust(sender=SessionCache, **kwargs):
        if isinstance(result, Exception):
            logger.error("Receiver %r of a session signal failed: %r", receiver, result)
