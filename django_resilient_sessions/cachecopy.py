"""The Redis copy of a session.

Each session has one Redis key, ``<prefix><sha256 of the session key>``: no
usable session key is ever stored.  The key holds the session's entry or, once
the session has ended, its *tombstone* (a marker that lives as long as a backup
can), so a session is always one key: every command is single-key, atomic and
safe on Redis Cluster, with no hash tags and no cross-slot scripts.

The healthy path is one command per operation: ``GET`` to read (a miss and a
tombstone included), ``SET NX`` to create, and a small script to update
(``SET`` that refuses to overwrite a tombstone).  A write-back is a script that
refuses on a tombstone and replaces only the very copy that was read.  A
deletion is a single ``SET`` of the tombstone over the entry.

Every call goes through the alias's circuit breaker and turns any Redis
failure into :class:`CacheUnavailable`.  This module knows nothing of the
ledger: what must happen before the breaker closes again is a *gate* installed
by the app (:func:`set_gate`).
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.utils.module_loading import import_string
from django_redis.exceptions import ConnectionInterrupted
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from . import conf as conf_module
from . import health, signals
from .breaker import CLOSED, CircuitBreaker, get_breaker
from .conf import conf
from .exceptions import CacheUnavailable
from .redisclient import RedisAccess
from .trust import Cache

__all__ = ["CacheRead", "Entry", "SessionCache", "hash_key", "set_gate"]

logger = logging.getLogger("django_resilient_sessions")
T = TypeVar("T")

# What counts as "the cache is unavailable": any Redis error (refused,
# timeout, READONLY replica, LOADING, no master from Sentinel...), socket
# errors that escaped redis-py, and django-redis's wrapper of them.
CACHE_ERRORS = (RedisError, ConnectionInterrupted, OSError)

#: What a tombstone holds (an entry always starts with its format byte, 2).
TOMBSTONE = b"\x00ended"

# An update.  KEYS: entry.  ARGV: value, TTL in ms, tombstone.  Like SET XX
# (0 when the copy is gone), but a tombstone is never overwritten (-1).
UPDATE = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
if current == ARGV[3] then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# A write-back.  KEYS: entry.  ARGV: value, TTL in ms, SHA-1 of the value that
# was read ("" if none), tombstone.  Refuses when the session ended (0); leaves
# alone a copy other than the one that was read, and returns it (2).
WRITE_BACK = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[4] then return {0} end
if current and (ARGV[3] == '' or redis.sha1hex(current) ~= ARGV[3]) then
  return {2, current}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1}
"""

WRITTEN, ENDED, KEPT = 1, 0, 2


def hash_key(session_key: str) -> str:
    """The name a session goes by in Redis and in the database."""
    return hashlib.sha256(session_key.encode()).hexdigest()


_HEADER = struct.Struct(">BQ12s")
_FORMAT = 2


@dataclass
class Entry:
    """A session's Redis copy: its data, version, and the backup saved with it."""

    version: int
    data: dict[str, Any]
    #: Fingerprint of the backup token saved along with this copy (b"": none).
    tag: bytes = b""

    def dump(self, serializer: Any, payload: bytes | None = None) -> bytes:
        """The value stored in Redis (``payload``: ``data`` already serialized)."""
        if payload is None:
            payload = serializer().dumps(self.data)
        return _HEADER.pack(_FORMAT, self.version, self.tag) + payload

    @classmethod
    def load(cls, raw: bytes, serializer: Any) -> Entry | None:
        if len(raw) < _HEADER.size or raw[0] != _FORMAT:
            return None
        _, version, tag = _HEADER.unpack_from(raw)
        try:
            data = serializer().loads(raw[_HEADER.size :])
        # Whatever the serializer raises on bytes it did not write (a value
        # under our prefix written by something else): not a session.
        except Exception:
            return None
        return cls(version, data, tag) if isinstance(data, dict) else None


@dataclass(frozen=True)
class CacheRead:
    """What a read found: the :class:`~.trust.Cache` state and the copy, if any."""

    state: Cache
    entry: Entry | None = None
    raw: bytes | None = None

    @property
    def sha(self) -> str:
        """SHA-1 of the raw value read ("" if none), so a write-back replaces only it."""
        return hashlib.sha1(self.raw).hexdigest() if self.raw is not None else ""


_gate: Callable[[SessionCache], bool] | None = None
_made = threading.local()


def set_gate(gate: Callable[[SessionCache], bool] | None) -> None:
    """Install what a probe must pass before the breaker closes (see :mod:`.purges`)."""
    global _gate
    _gate = gate


class SessionCache:
    """The session alias of ``CACHES``, seen as a store of :class:`Entry`.

    Made once per cache backend object (Django makes those per thread) and kept
    on it: see :meth:`of`.
    """

    def __init__(
        self, alias: str | None = None, serializer: Any = None, backend: Any = None
    ) -> None:
        self.alias = alias or settings.SESSION_CACHE_ALIAS
        self.redis = RedisAccess(self.alias, backend)
        self.serializer = serializer or import_string(settings.SESSION_SERIALIZER)

    @classmethod
    def of(cls, alias: str, serializer: Any) -> SessionCache:
        """The alias's SessionCache for this thread, made once per settings generation."""
        made: dict[str, tuple[int, SessionCache]] = _made.__dict__.setdefault("by_alias", {})
        found = made.get(alias)
        if (
            found is None
            or found[0] != conf_module.generation
            or found[1].serializer is not serializer
        ):
            found = (conf_module.generation, cls(alias, serializer))
            made[alias] = found
        return found[1]

    @property
    def breaker(self) -> CircuitBreaker:
        return get_breaker(self.alias)

    def entry_key(self, key_hash: str) -> str:
        return self.redis.key(conf.CACHE_KEY_PREFIX + key_hash)

    # Calls through the breaker -------------------------------------------

    def _call(self, operation: Callable[[Any], T]) -> T:
        allowed = self.breaker.allow()
        if allowed is None:
            allowed = self._probe()
        if not allowed:
            health.count("cache_skipped")
            raise CacheUnavailable(self.alias)
        try:
            return operation(self.redis.client())
        except CACHE_ERRORS as error:
            self._failed(error)
            raise CacheUnavailable(self.alias, attempted=True) from error

    def _failed(self, error: BaseException) -> None:
        health.count("cache_errors")
        if self.breaker.failed(error):
            _send(signals.cache_lost, alias=self.alias, error=error)

    def _probe(self) -> bool:
        """Is the cache back, and may it be trusted again?

        The ``PING`` waits at most ``BREAKER_PROBE_TIMEOUT`` on a connection of
        its own, so a hung Redis costs the probing request that long, not a
        socket timeout.  Then the installed gate decides (deletions queued
        during the outage must be done first); until it agrees, the breaker
        stays open.
        """
        try:
            _run_quick(self.redis.client(), [("PING",)], conf.BREAKER_PROBE_TIMEOUT)
        except CACHE_ERRORS as error:
            self._failed(error)
            return False
        if _gate is not None and not _gate(self):
            self.breaker.hold()
            return False
        self.recovered()
        return True

    def recovered(self) -> None:
        """Close the breaker (if open) and say so."""
        downtime = self.breaker.succeeded()
        if downtime is not None:
            _send(signals.cache_recovered, alias=self.alias, downtime=downtime)

    # Operations ----------------------------------------------------------

    def read(self, key_hash: str) -> CacheRead:
        """The Redis copy, a tombstone or nothing: one ``GET``."""
        raw = self._call(lambda client: client.get(self.entry_key(key_hash)))
        return self._decode(key_hash, raw)

    def _decode(self, key_hash: str, raw: bytes | None) -> CacheRead:
        if raw is None:
            health.count("cache_misses")
            return CacheRead(Cache.ABSENT)
        if raw == TOMBSTONE:
            return CacheRead(Cache.TOMBSTONED)
        entry = Entry.load(raw, self.serializer)
        if entry is None:
            # Not written by this engine (another format, an older release):
            # a miss, but one a write-back may replace (it knows the SHA-1).
            logger.warning("Unreadable session cache entry %s treated as missing.", key_hash[:12])
            health.count("cache_misses")
            return CacheRead(Cache.ABSENT, raw=raw)
        health.count("cache_hits")
        return CacheRead(Cache.PRESENT, entry, raw)

    def create(self, key_hash: str, entry: Entry, ttl: int, payload: bytes | None = None) -> bool:
        """``SET NX``: ``False`` if the key is taken."""
        value = entry.dump(self.serializer, payload)
        key = self.entry_key(key_hash)
        return bool(self._call(lambda client: client.set(key, value, px=_ms(ttl), nx=True)))

    def update(
        self, key_hash: str, entry: Entry, ttl: int, payload: bytes | None = None
    ) -> bool | None:
        """Replace the copy: ``False`` if it is gone, ``None`` if the session ended."""
        value = entry.dump(self.serializer, payload)
        key = self.entry_key(key_hash)
        args = (value, _ms(ttl), TOMBSTONE)
        done = int(self._call(lambda client: client.eval(UPDATE, 1, key, *args)))
        return None if done < 0 else bool(done)

    def write_back(
        self, key_hash: str, entry: Entry, ttl: int, expected: str, payload: bytes | None = None
    ) -> CacheRead | None:
        """Put ``entry`` back, atomically refusing when the session ended.

        ``expected`` is the SHA-1 of the copy that was read ("" for none): a
        copy written since is left alone.  Returns ``None`` when written,
        ``TOMBSTONED`` when refused, or the copy that was kept (``ABSENT`` if
        it is unreadable).
        """
        key = self.entry_key(key_hash)
        args = (entry.dump(self.serializer, payload), _ms(ttl), expected, TOMBSTONE)
        reply = self._call(lambda client: client.eval(WRITE_BACK, 1, key, *args))
        if reply[0] == WRITTEN:
            return None
        if reply[0] == ENDED:
            return CacheRead(Cache.TOMBSTONED)
        return self._decode(key_hash, reply[1])

    def drop(self, key_hash: str) -> None:
        """``DEL`` the entry, no tombstone (a session saved already expired)."""
        self._call(lambda client: client.delete(self.entry_key(key_hash)))

    def delete(self, key_hashes: Iterable[str], ttl: int | None = None) -> None:
        """End these sessions in Redis: each key's entry becomes its tombstone.

        One ``SET`` per session (atomic by itself), one round trip for the
        batch.  The tombstone lives as long as a backup can (``ttl``, at least
        ``SESSION_COOKIE_AGE``).  Tried even with the breaker open: a deletion
        that fails leaves an ended session in the cache for other processes, so
        it is worth one bounded attempt (on a connection of its own that waits
        no longer than the probe does).
        """
        hashes = list(key_hashes)
        if not hashes:
            return
        seconds = max(settings.SESSION_COOKIE_AGE, ttl or 0, 1)
        commands = [("SET", self.entry_key(h), TOMBSTONE, "EX", seconds) for h in hashes]
        if self.breaker.state == CLOSED or self.breaker.in_probe():
            self._call(lambda client: _pipeline(client, commands))
            return
        try:
            _run_quick(self.redis.client(), commands, conf.BREAKER_PROBE_TIMEOUT)
        except CACHE_ERRORS as error:
            self._failed(error)
            raise CacheUnavailable(self.alias, attempted=True) from error

    def ping_ms(self) -> float:
        """Round-trip time of a PING in milliseconds (for health reports)."""
        import time

        start = time.perf_counter()
        self._call(lambda client: client.ping())
        return (time.perf_counter() - start) * 1000


def _ms(ttl: int) -> int:
    return max(ttl, 1) * 1000


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
