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

import contextlib
import functools
import hashlib
import logging
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from django_redis.exceptions import ConnectionInterrupted
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    ClusterDownError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.retry import Retry

from . import conf as conf_module
from . import health, signals
from .breaker import (
    CLOSED,
    CircuitBreaker,
    breakers_of,
    find_breaker,
    forget_nodes,
    get_breaker,
    known_slot_map,
    slot_owners,
)
from .conf import conf
from .exceptions import CacheUnavailable
from .outbox import slot_of
from .redisclient import RedisAccess
from .trust import Cache

__all__ = ["CacheRead", "Entry", "SessionCache", "hash_key", "set_gate"]

logger = logging.getLogger("django_resilient_sessions")
T = TypeVar("T")

# What counts as "the cache is unavailable": any Redis error (refused,
# timeout, READONLY replica, LOADING, no master from Sentinel...), socket
# errors that escaped redis-py, and django-redis's wrapper of them.
CACHE_ERRORS = (RedisError, RedisClusterException, ConnectionInterrupted, OSError)

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

# A drop.  KEYS: entry.  ARGV: tombstone.  DEL, but a tombstone stays (a session
# ended meanwhile must not lose its mark because a save found it already expired).
DROP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

WRITTEN, ENDED, KEPT = 1, 0, 2


@dataclass(frozen=True)
class Script:
    """A Lua script sent by its SHA-1 (``EVALSHA``), its text only when a node lacks it.

    One round trip once the node has seen it; ``EVAL`` after a ``NOSCRIPT`` (a
    restarted or flushed node, a promoted replica) loads it there again.  Both
    commands name the key, so a cluster client routes them to its slot's node.
    """

    text: str

    @functools.cached_property
    def sha(self) -> str:
        return hashlib.sha1(self.text.encode()).hexdigest()

    def run(self, client: Any, key: str, *args: Any) -> Any:
        try:
            return client.evalsha(self.sha, 1, key, *args)
        except NoScriptError:
            return client.eval(self.text, 1, key, *args)


UPDATE_SCRIPT = Script(UPDATE)
WRITE_BACK_SCRIPT = Script(WRITE_BACK)
DROP_SCRIPT = Script(DROP)


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


_gate: Callable[[SessionCache, CircuitBreaker], bool] | None = None
_made = threading.local()
#: Held while a refreshed slot map is read (see SessionCache._follow).
_following = threading.Lock()


def set_gate(gate: Callable[[SessionCache, CircuitBreaker], bool] | None) -> None:
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
        if self.redis.cluster:
            probe = hashlib.sha256(b"slot").hexdigest()
            if key_slot(self.entry_key(probe).encode()) != slot_of(probe):
                raise ImproperlyConfigured(
                    f"The keys of the Redis Cluster session cache {self.alias!r} do not keep "
                    "the session's hash tag (a KEY_PREFIX or KEY_FUNCTION with '{'): "
                    "sessions would not be spread over the cluster, and queued deletions "
                    "could not tell their node."
                )

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

    def entry_key(self, key_hash: str) -> str:
        if self.redis.cluster:
            # The key hash is the hash tag: its slot is known without the key's prefix.
            return self.redis.key(conf.CACHE_KEY_PREFIX + "{" + key_hash + "}")
        return self.redis.key(conf.CACHE_KEY_PREFIX + key_hash)

    def slots_of(self, breaker: CircuitBreaker) -> list[tuple[int, int]] | None:
        """The slot ranges the breaker's node serves (``None``: every slot, off a cluster)."""
        if breaker.node is None:
            return None
        slots = self.redis.client().nodes_manager.slots_cache
        ranges: list[tuple[int, int]] = []
        for slot in sorted(slots):
            if not slots[slot] or slots[slot][0].name != breaker.node:
                continue
            if ranges and ranges[-1][1] == slot - 1:
                ranges[-1] = (ranges[-1][0], slot)
            else:
                ranges.append((slot, slot))
        return ranges

    def breakers_serving(self, slots: set[int]) -> list[CircuitBreaker]:
        """The breakers of the nodes that serve any of these slots (the alias's, off a cluster)."""
        if not self.redis.cluster:
            return [self.breaker]
        try:
            served = self._cluster().nodes_manager.slots_cache
        except (CacheUnavailable, *CACHE_ERRORS):
            return [self.breaker]  # no slot map: the cluster as a whole
        names = {served[slot][0].name for slot in slots if served.get(slot)}
        return [get_breaker(self.alias, name) for name in sorted(names)]

    # Breakers: one for the alias, or one per primary node of a cluster ----

    @property
    def breaker(self) -> CircuitBreaker:
        """The alias's breaker (on a cluster: for the cluster as a whole)."""
        return get_breaker(self.alias)

    def breaker_for(self, key: str) -> CircuitBreaker:
        """The breaker guarding the Redis key ``key``: its node's on a cluster."""
        if not self.redis.cluster:
            return self.breaker
        client = self._cluster()
        try:
            slot = client.keyslot(key)
            self._follow(client)
            node = client.nodes_manager.get_node_from_slot(slot)
        except CACHE_ERRORS as error:
            # The slot map lacks it (no node answers for the slot): the cluster as a whole.
            self._failed(self.breaker, error)
            raise CacheUnavailable(self.alias) from error
        breaker = get_breaker(self.alias, node.name)
        owners = slot_owners(self.alias)
        previous = owners.get(slot)
        if previous != node.name:
            # (redis-py moves a single slot in place when it follows a MOVED.)
            owners[slot] = node.name
            if previous is not None:
                self._taken_over(client, {(previous, node.name)})
        return breaker

    def _follow(self, client: Any) -> None:
        """Read the whole slot map again if redis-py refreshed it (a new map object).

        Every slot whose primary changed since the last read is checked, not only
        the slots this process happened to serve: after a failover, a session of
        any of the dead node's slots may have been ended meanwhile.
        """
        slots = client.nodes_manager.slots_cache
        if known_slot_map(self.alias) is slots:
            return
        with _following:
            if known_slot_map(self.alias) is slots:
                return
            owners = slot_owners(self.alias)
            now = {slot: nodes[0].name for slot, nodes in list(slots.items()) if nodes}
            moves: set[tuple[str, str]] = set()
            if now != owners:  # (compared in C: a refresh that moved nothing costs little)
                moves = {(owners[s], n) for s, n in now.items() if owners.get(s, n) != n}
                owners.update(now)
            self._taken_over(client, moves)
            known_slot_map(self.alias, slots)

    def _taken_over(self, client: Any, moves: set[tuple[str, str]]) -> None:
        """Slots moved (``(previous node, new node)`` pairs): check the new owners.

        After a failover the new owner (a promoted replica) holds copies of
        sessions whose deletions were queued while the previous node was down:
        it is trusted only once its slots' queue is known to be empty, as the
        previous node would have been.  A slot moved off a node that is still a
        primary and not known to fail (a resharding) needs nothing.  Then
        the breakers of nodes that serve no slot any more are dropped: whoever
        refreshed the slot map (our probe, or redis-py after an error on any
        node), a dead master's breaker must not stay open for ever.
        """
        primaries = {primary.name for primary in client.get_primaries()}
        for previous, name in sorted(moves):
            old = find_breaker(self.alias, previous)
            if previous in primaries and (old is None or old.state == CLOSED):
                continue
            breaker = get_breaker(self.alias, name)
            if breaker.state == CLOSED and _gate is not None and not _gate(self, breaker):
                logger.warning(
                    "Session cache node %s took over slots of %s: using backups for them "
                    "until the deletions queued meanwhile are done.",
                    breaker.node,
                    previous,
                )
                breaker.hold()
        forget_nodes(self.alias, primaries)

    def _cluster(self) -> Any:
        """The cluster client.  Making it asks a node for the slot map: that goes
        through the alias's breaker, so a cluster that cannot be reached is not
        asked again by every request."""
        if self.redis.connected:
            return self.redis.client()
        allowed = self.breaker.allow()
        if allowed is False:
            health.count("cache_skipped")
            raise CacheUnavailable(self.alias)
        try:
            client = self.redis.client()
        except CACHE_ERRORS as error:
            self._failed(self.breaker, error)
            raise CacheUnavailable(self.alias) from error
        self._close(self.breaker)
        return client

    def breakers(self) -> list[CircuitBreaker]:
        """The breakers of every primary serving the alias (made if need be).

        On a cluster the alias's own breaker only guards making the client
        (:meth:`_cluster`): the gates are the nodes'.  No slot map, no nodes.
        """
        if not self.redis.cluster:
            return [self.breaker]
        try:
            primaries = self._cluster().get_primaries()
        except (CacheUnavailable, *CACHE_ERRORS):
            return [b for b in breakers_of(self.alias) if b.node is not None]
        forget_nodes(self.alias, {n.name for n in primaries})
        return [get_breaker(self.alias, n.name) for n in primaries]

    def reachable(self, key_hash: str) -> bool:
        """Does the breaker of this session's Redis key let calls through?"""
        try:
            return self.breaker_for(self.entry_key(key_hash)).state == CLOSED
        except CacheUnavailable:
            return False

    @contextlib.contextmanager
    def probing(self) -> Iterator[None]:
        """Inside the block, this thread's calls go through every breaker (recovery work)."""
        with contextlib.ExitStack() as stack:
            for breaker in self.breakers():
                stack.enter_context(breaker.probing())
            yield

    def hold(self) -> None:
        """Stop trusting Redis (every node of a cluster) for a cool-down."""
        for breaker in self.breakers():
            breaker.hold()

    # Calls through the breakers --------------------------------------------

    def _call(self, key: str | None, operation: Callable[[Any], T], *, recheck: bool = True) -> T:
        """Run ``operation`` on the client, through the breaker of ``key``.

        ``recheck``: refuse the answer if the key's slot moved meanwhile to a node
        not trusted yet (see :meth:`_moved_meanwhile`).
        """
        breaker = self.breaker if key is None else self.breaker_for(key)
        allowed = breaker.allow()
        if allowed is None:
            allowed = self._probe(breaker)
            if allowed and key is not None and breaker.node is not None:
                # The probe refreshed the slot map: the key may be elsewhere now.
                moved = self.breaker_for(key)
                if moved is not breaker:
                    breaker = moved
                    allowed = moved.allow() is not False
        if not allowed:
            health.count("cache_skipped")
            raise CacheUnavailable(self.alias)
        try:
            result = operation(self.redis.client())
        except CACHE_ERRORS as error:
            self._failed(breaker, error)
            raise CacheUnavailable(self.alias, attempted=True) from error
        if recheck and key is not None and self._moved_meanwhile(key, breaker):
            health.count("cache_skipped")
            raise CacheUnavailable(self.alias, attempted=True)
        return result

    def _moved_meanwhile(self, key: str, breaker: CircuitBreaker) -> bool:
        """Did ``key``'s slot move during the call to a node that may not be trusted yet?

        redis-py follows a ``MOVED`` by itself: a process that had not noticed a
        failover (its breaker for the dead master closed, its slot map old) reads
        from the promoted replica, which may hold sessions ended meanwhile.
        """
        if breaker.node is None:
            return False
        try:
            now = self.breaker_for(key)
        except CacheUnavailable:
            return False  # the call itself was answered
        return now is not breaker and now.state != CLOSED

    def _failed(self, breaker: CircuitBreaker, error: BaseException) -> None:
        from .status import misconfigured  # the health rules' judgement (a lazy import: layering)

        health.count("cache_errors")
        if breaker.failed(error, lasting=misconfigured(error)):
            _send(signals.cache_lost, alias=self.alias, node=breaker.node, error=error)

    def _probe(self, breaker: CircuitBreaker) -> bool:
        """Is the cache (this node of it) back, and may it be trusted again?

        The ``PING`` waits at most ``BREAKER_PROBE_TIMEOUT`` on a connection of
        its own, so a hung Redis costs the probing request that long, not a
        socket timeout.  On a cluster the slot map is refreshed first (a
        replica may have taken the node's slots over).  Then the installed gate
        decides (deletions queued during the outage must be done first); until
        it agrees, the breaker stays open.
        """
        try:
            if breaker.node is not None:
                self._refresh_slots(breaker.node)
            self._answers(breaker)
        except CACHE_ERRORS as error:
            self._failed(breaker, error)
            return False
        if _gate is not None and not _gate(self, breaker):
            breaker.hold()
            return False
        self._close(breaker)
        return True

    def _refresh_slots(self, failed_node: str) -> None:
        """Ask the cluster who serves which slots now, the failed node last."""
        client = self.redis.client()
        client.nodes_manager.initialize(last_failed_node_name=failed_node)
        self._follow(client)

    def _answers(self, breaker: CircuitBreaker) -> None:
        """Raise unless the breaker's node answers within ``BREAKER_PROBE_TIMEOUT``.

        A ``PING``; on a cluster, ``CLUSTER INFO``: a node answers ``PING`` while
        it refuses every key (``CLUSTERDOWN``: a shard down with
        ``cluster-require-full-coverage yes``, or a node cut off from the
        majority), and a breaker closed on that answer would open again at the
        next request, once per cool-down.
        """
        client = self._node_client(breaker)
        timeout = conf.BREAKER_PROBE_TIMEOUT
        if breaker.node is None:
            _run_quick(client, [("PING",)], timeout)
            return
        try:
            [info] = _run_quick(client, [("CLUSTER", "INFO")], timeout)
        except ResponseError as error:
            if isinstance(error, ClusterDownError):
                raise
            _run_quick(client, [("PING",)], timeout)  # not allowed to ask (an ACL)
            return
        text = info if isinstance(info, bytes) else str(info).encode()
        if b"cluster_state:ok" not in text:
            raise ClusterDownError(f"{breaker.node} says the cluster is down")

    def _node_client(self, breaker: CircuitBreaker) -> Any:
        """A redis-py client of the breaker's node alone (the alias's, off a cluster)."""
        client = self.redis.client()
        if breaker.node is None:
            return client
        node = client.get_node(node_name=breaker.node)
        if node is None:
            raise ConnectionError(f"{breaker.node} no longer serves slots")
        return client.get_redis_connection(node)

    def _close(self, breaker: CircuitBreaker) -> None:
        downtime = breaker.succeeded()
        if downtime is not None:
            _send(signals.cache_recovered, alias=self.alias, node=breaker.node, downtime=downtime)

    def recovered(self, node: str | None = None) -> None:
        """The queued deletions are done (``node``'s only, if given): close the
        breakers that were kept open for them alone (Redis answered them)."""
        breakers = self.breakers() if node is None else [get_breaker(self.alias, node)]
        for breaker in breakers:
            if breaker.held:
                self._close(breaker)

    # Operations ----------------------------------------------------------

    def read(self, key_hash: str) -> CacheRead:
        """The Redis copy, a tombstone or nothing: one ``GET``."""
        key = self.entry_key(key_hash)
        raw = self._call(key, lambda client: client.get(key))
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
        return bool(self._call(key, lambda client: client.set(key, value, px=_ms(ttl), nx=True)))

    def update(
        self, key_hash: str, entry: Entry, ttl: int, payload: bytes | None = None
    ) -> bool | None:
        """Replace the copy: ``False`` if it is gone, ``None`` if the session ended."""
        value = entry.dump(self.serializer, payload)
        key = self.entry_key(key_hash)
        args = (value, _ms(ttl), TOMBSTONE)
        done = int(self._call(key, lambda client: UPDATE_SCRIPT.run(client, key, *args)))
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
        reply = self._call(key, lambda client: WRITE_BACK_SCRIPT.run(client, key, *args))
        if reply[0] == WRITTEN:
            return None
        if reply[0] == ENDED:
            return CacheRead(Cache.TOMBSTONED)
        return self._decode(key_hash, reply[1])

    def create_many(self, items: list[tuple[str, Entry, int]]) -> list[bool]:
        """``SET NX`` of each ``(key hash, entry, TTL)``, one round trip per node.

        Returns which were created (a key already taken, tombstone included, is
        not).  ``CacheUnavailable`` when a node fails: some may have been created.
        """
        groups: dict[str, list[int]] = {}
        for i, (key_hash, _, _) in enumerate(items):
            breaker = self.breaker_for(self.entry_key(key_hash))
            groups.setdefault(breaker.name, []).append(i)
        created = [False] * len(items)
        for indexes in groups.values():
            commands: list[tuple[Any, ...]] = []
            for i in indexes:
                key_hash, entry, ttl = items[i]
                value = entry.dump(self.serializer)
                commands.append(("SET", self.entry_key(key_hash), value, "PX", _ms(ttl), "NX"))
            first = self.entry_key(items[indexes[0]][0])
            replies = self._call(first, functools.partial(_pipeline, commands))
            for i, reply in zip(indexes, replies, strict=True):
                created[i] = bool(reply)
        return created

    def drop(self, key_hash: str) -> None:
        """``DEL`` the entry, no tombstone (a session saved already expired).

        A tombstone found there stays: the session ended meanwhile.
        """
        key = self.entry_key(key_hash)
        self._call(key, lambda client: DROP_SCRIPT.run(client, key, TOMBSTONE))

    def delete(self, key_hashes: Iterable[str], ttl: int | None = None) -> None:
        """:meth:`tombstone`, raising ``CacheUnavailable`` unless every one was done."""
        hashes = list(key_hashes)
        if len(self.tombstone(hashes, ttl)) < len(hashes):
            raise CacheUnavailable(self.alias, attempted=True)

    def tombstone(self, key_hashes: Iterable[str], ttl: int | None = None) -> list[str]:
        """End these sessions in Redis: each key's entry becomes its tombstone.

        Returns the hashes done.  One ``SET`` per session (atomic by itself),
        one round trip per node for the batch.  The tombstone lives as long as
        a backup can (``ttl``, at least ``SESSION_COOKIE_AGE``).  Tried even
        with a breaker open: a deletion that fails leaves an ended session in
        the cache for other processes, so it is worth one bounded attempt (on a
        connection of its own that waits no longer than the probe does).
        """
        seconds = max(settings.SESSION_COOKIE_AGE, ttl or 0, 1)
        hashes = list(key_hashes)
        done, failed = self._tombstone(hashes, seconds)
        if failed and self.redis.cluster:
            # A node that refused may have been replaced (a failover this process has
            # not seen, its breaker open): other processes may already serve the copies
            # its promoted replica holds.  Ask for the slot map once and try the new
            # owners, rather than leave the deletions queued until a drain.
            left = [h for h in hashes if h not in set(done)]
            if self._moved(left, failed):
                done += self._tombstone(left, seconds)[0]
        return done

    def _tombstone(self, hashes: list[str], seconds: int) -> tuple[list[str], list[str]]:
        """One attempt per node: (hashes done, nodes that refused)."""
        groups: dict[str, tuple[CircuitBreaker, list[str]]] = {}
        for key_hash in hashes:
            try:
                breaker = self.breaker_for(self.entry_key(key_hash))
            except CacheUnavailable:
                continue  # no slot map: not done
            groups.setdefault(breaker.name, (breaker, []))[1].append(key_hash)
        done: list[str] = []
        failed: list[str] = []
        for breaker, group in groups.values():
            commands = [("SET", self.entry_key(h), TOMBSTONE, "EX", seconds) for h in group]
            try:
                if breaker.state == CLOSED or breaker.in_probe():
                    # (A tombstone that reached a node not trusted yet is still done.)
                    key = self.entry_key(group[0])
                    self._call(key, functools.partial(_pipeline, commands), recheck=False)
                else:
                    _run_quick(self._node_client(breaker), commands, conf.BREAKER_PROBE_TIMEOUT)
            except CacheUnavailable:
                failed.append(breaker.node or "")
                continue
            except CACHE_ERRORS as error:
                self._failed(breaker, error)
                failed.append(breaker.node or "")
                continue
            done.extend(group)
        return done, failed

    def _moved(self, hashes: list[str], failed: list[str]) -> bool:
        """Refresh the slot map: does another node serve any of these sessions now?"""
        try:
            client = self._cluster()
            nodes = client.nodes_manager
            before = [nodes.get_node_from_slot(slot_of(h)).name for h in hashes]
            self._refresh_slots(failed[0])
            after = [nodes.get_node_from_slot(slot_of(h)).name for h in hashes]
        except (CacheUnavailable, *CACHE_ERRORS):
            return False  # no node answers the slot map: the deletions stay queued
        return before != after

    def ping(self) -> dict[str, tuple[float | None, BaseException | None]]:
        """A ``PING`` per node, each waiting at most ``BREAKER_PROBE_TIMEOUT`` on a
        connection of its own: ``(round trip in ms, None)`` or ``(None, the error)``.

        The breakers are left as they are: a slow health check must not send
        a process to the backups.
        """
        import time

        found: dict[str, tuple[float | None, BaseException | None]] = {}
        for breaker in self.breakers():
            start = time.perf_counter()
            try:
                self._answers(breaker)
            except CACHE_ERRORS as error:
                found[breaker.name] = (None, error)
                continue
            found[breaker.name] = (round((time.perf_counter() - start) * 1000, 3), None)
        return found

    def ping_ms(self) -> dict[str, float | None]:
        """Round trip of a bounded ``PING`` per node, in milliseconds (None: no answer)."""
        return {name: ms for name, (ms, _) in self.ping().items()}


def _ms(ttl: int) -> int:
    return max(ttl, 1) * 1000


def _pipeline(commands: list[tuple[Any, ...]], client: Any) -> list[Any]:
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
