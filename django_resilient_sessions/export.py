"""The way back: every session mirrored into ``EXPORT_TO``, a stock engine, under its key.

Neither Redis nor the ledger holds a usable session key (only hashes), so no
command can write sessions under the keys browsers hold: only a request,
which carries its key, can.  With ``EXPORT_TO`` set, every save of a session
(Redis healthy or not: a save served from a backup mirrors too) writes it into
that engine's store under its key, through that engine's own ``SessionStore``;
a load whose session is not mirrored yet saves it once so that it is.  A
logout or a new key (``cycle_key``) deletes the mirrored copy; a session
ended without its key at hand (a revocation, a timeout, the session limit)
is removed from the store by ``manage.py exportsessions``, which finds it by
hashing the store's keys and asking the ledger.

Each mirrored session is marked (``EXPORTED_KEY`` in its data, naming the
engine), so ``exportsessions`` can count from Redis how many live sessions are
mirrored.  Once all are, the site can switch ``SESSION_ENGINE`` to the stock
engine and nobody is logged out.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.contrib.sessions.backends.base import CreateError, SessionBase, UpdateError

from . import engines
from .conf import EXPORTED_KEY, conf

__all__ = ["Report", "due", "enabled", "forget", "mirror", "prune", "report", "scan"]

logger = logging.getLogger("django_resilient_sessions")


def enabled() -> bool:
    return conf.EXPORT_TO is not None


def due(data: dict[str, Any]) -> bool:
    """Must this session be saved so that it is mirrored (non-empty, not marked)?"""
    target = conf.EXPORT_TO
    return target is not None and bool(data) and data.get(EXPORTED_KEY) != target


def _store(session_key: str) -> SessionBase:
    path = conf.EXPORT_TO
    assert path is not None
    return engines.store_class(path)(session_key)


def mirror(session_key: str, data: dict[str, Any], *, new: bool) -> None:
    """Write ``data`` into the ``EXPORT_TO`` store under ``session_key`` and mark it.

    ``new``: the key was just made (written only if that store does not have
    it).  A failure is logged and leaves the session unmarked (mirrored again
    at its next save); it never fails the request.
    """
    copy = {k: v for k, v in data.items() if k != EXPORTED_KEY}
    try:
        target = _store(session_key)
        target._session_cache = copy  # type: ignore[attr-defined]  # as SessionBase keeps it
        if new:
            target.save(must_create=True)
        else:
            try:
                target.save()
            except UpdateError:  # not there yet
                target.save(must_create=True)
    except CreateError:
        data.pop(EXPORTED_KEY, None)
        return  # the key is taken there: not ours
    # The other engine's store is foreign code over a database or a cache:
    # whatever it raises, the session stays unmarked and is tried again.
    except Exception as error:
        logger.warning("A session could not be mirrored into %s: %r", conf.EXPORT_TO, error)
        data.pop(EXPORTED_KEY, None)
        return
    data[EXPORTED_KEY] = conf.EXPORT_TO


def forget(session_key: str | None) -> None:
    """Delete the mirrored copy of an ended session (best effort: see ``exportsessions``)."""
    if not session_key or not enabled():
        return
    try:
        _store(session_key).delete(session_key)
    # Foreign code, as in mirror(): logged; exportsessions removes what is left.
    except Exception as error:
        logger.warning("A mirrored session could not be deleted from %s: %r", conf.EXPORT_TO, error)


# exportsessions -------------------------------------------------------------


@dataclass
class Report:
    mirrored: int = 0
    missing: int = 0
    #: When the last live session not mirrored yet expires (unix time; 0: none).
    last_expiry: float = 0.0


def report(batch: int = 1000) -> Report:
    """Count this engine's live Redis entries mirrored into ``EXPORT_TO`` or not.

    ``SCAN`` over the entries (every primary of a cluster), tombstones skipped;
    one pipeline of ``GET`` and ``PTTL`` per batch.  ``CacheUnavailable`` when
    Redis does not answer.
    """
    from .cachecopy import TOMBSTONE, Entry

    found = Report()
    now = time.time()
    for cache, client, keys in scan(batch):
        _tally(client, keys, found, now, cache.serializer, Entry, TOMBSTONE)
    return found


def scan(batch: int = 1000) -> Iterator[tuple[Any, Any, list[Any]]]:
    """This engine's Redis keys, ``(session cache, client, keys)`` a batch at a time:
    ``SCAN`` with a ``MATCH`` on the entries' prefix on every primary, never ``KEYS``."""
    from .cachecopy import SessionCache

    cache = SessionCache()
    client = cache.redis.client()
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", cache.redis.key(conf.CACHE_KEY_PREFIX)) + "*"
    nodes = client.get_primaries() if cache.redis.cluster else [None]
    for node in nodes:
        options = {"target_nodes": node} if node is not None else {}
        keys = []
        for key in client.scan_iter(match=pattern, count=batch, **options):
            keys.append(key)
            if len(keys) >= batch:
                yield cache, client, keys
                keys = []
        if keys:
            yield cache, client, keys


def _tally(
    client: Any,
    keys: list[Any],
    found: Report,
    now: float,
    serializer: Any,
    entry: Any,
    dead: bytes,
) -> None:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
        pipe.pttl(key)
    replies = pipe.execute()
    for raw, ttl in zip(replies[::2], replies[1::2], strict=True):
        if raw is None or raw == dead:
            continue
        copy = entry.load(raw, serializer)
        if copy is None:
            continue  # not an entry of this engine
        if copy.data.get(EXPORTED_KEY) == conf.EXPORT_TO:
            found.mirrored += 1
        else:
            found.missing += 1
            found.last_expiry = max(found.last_expiry, now + max(ttl, 0) / 1000)


def prune(batch: int = 1000) -> int:
    """Delete from the ``EXPORT_TO`` store the logins whose ledger row is no longer active.

    They ended without their key at hand (revoked, timed out, evicted by the
    session limit), so :func:`forget` could not reach their copy: found here by
    hashing the store's keys.  Returns how many were deleted.
    """
    from .bulkadoption import _forget, batches
    from .cachecopy import hash_key
    from .conf import UNTRACKED_KEY
    from .models import UserSession, active_q

    target = _store("")
    pages, _ = batches(batch, target)
    pruned = 0
    for items, _passed in pages:
        logins = {
            hash_key(i.key): i.key
            for i in items
            if "_auth_user_id" in i.data and not i.data.get(UNTRACKED_KEY)
        }
        active = set(
            UserSession.objects.filter(active_q(), key_hash__in=list(logins)).values_list(
                "key_hash", flat=True
            )
        )
        ended = [key for h, key in logins.items() if h not in active]
        _forget(ended, target)
        pruned += len(ended)
    return pruned
