"""Bulk adoption (``manage.py adoptsessions``): every live session of ``PREVIOUS_ENGINE``.

The previous store is read in batches, never whole: a database table (Django's
``db`` and ``cached_db`` engines) in primary-key order, one keyset page at a
time; Django's ``cache`` engine keys in Redis with ``SCAN`` (a ``MATCH`` on the
engine's key prefix, never ``KEYS``).  Each batch is adopted as a request
adopts one session (:mod:`.adoption`): in one transaction the
``AdoptedSession`` records and the logins' ``UserSession`` rows, and before
the commit the Redis copies; then the batch leaves the previous store.  So a
run can stop anywhere and be run again: what was adopted is gone from the
previous store, and the records make a second adoption impossible.

There is no request: a login's row records no IP address, user agent or
device (unknown), and its expiry is the one the previous store had.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
)
from django.contrib.sessions.backends.base import SessionBase
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from . import bars, engines, ledger, lifecycle, previous, tracking
from .adoption import ADOPTED_TAG, VERSION
from .cachecopy import Entry, SessionCache, hash_key
from .conf import UNTRACKED_KEY, conf
from .dbaccess import db, when
from .exceptions import CacheUnavailable, LedgerUnavailable
from .models import AdoptedSession, UserSession
from .vetting import expiry_age, storable, users_of

__all__ = ["STORE_ERRORS", "Counts", "Item", "NotSupported", "adopt_all"]


class NotSupported(Exception):
    """The previous store cannot be listed (the message says why)."""


def _store_errors() -> tuple[type[Exception], ...]:
    from redis.exceptions import RedisError

    errors: list[type[Exception]] = [CacheUnavailable, LedgerUnavailable, DatabaseError, RedisError]
    try:
        from django_redis.exceptions import ConnectionInterrupted
    except ImportError:  # django-redis is optional
        pass
    else:
        errors.append(ConnectionInterrupted)
    return tuple(errors)


#: What a store that does not answer raises as the commands read and write it in
#: bulk (the database, redis-py, django-redis, and this package's own): they stop
#: with a message, what was done stays done.
STORE_ERRORS = _store_errors()


@dataclass
class Item:
    key: str
    data: dict[str, Any]
    expires_at: float


@dataclass
class Counts:
    seen: int = 0
    live: int = 0
    expired: int = 0
    logged_in: int = 0
    anonymous: int = 0
    already: int = 0
    adopted: int = 0
    #: Logins refused with their session: their user's sessions were ended since (bars).
    refused: int = 0
    #: The store's size when known (a table's row count), for a progress bar.
    total: int | None = None
    started: float = field(default_factory=time.monotonic)


Batch = tuple[list[Item], int]  # live sessions, and how many others (expired, empty) were passed


def batches(batch_size: int, store: Any = None) -> tuple[Iterator[Batch], int | None]:
    """The previous store's (or ``store``'s) sessions in batches, and its size if known."""
    store = previous.store() if store is None else store
    kind = engines.kind_of(type(store))
    if kind == engines.DB:
        return _table(store, batch_size), store.model.objects.count()
    if kind == engines.CACHE:
        from .redisclient import RedisAccess

        try:
            client = RedisAccess("previous", store._cache).client()
        except ImproperlyConfigured as error:
            raise NotSupported(f"The previous engine's cache is not Redis: {error}") from error
        return _cache_keys(store, client, batch_size), None
    if kind == engines.SIGNED:
        raise NotSupported(
            f"{type(store).__module__} keeps each session in its cookie: there is no store to "
            "list. Nothing to do in bulk: lazy adoption takes each session over at its "
            "first request (keep PREVIOUS_ENGINE set for SESSION_COOKIE_AGE)."
        )
    raise NotSupported(
        f"{type(store).__module__} cannot be listed in bulk (Django's db, cached_db and cache "
        "engines can): lazy adoption takes its sessions over one request at a time."
    )


def _table(store: Any, size: int) -> Iterator[Batch]:
    """Keyset pages in primary-key order: each page one indexed query, none kept."""
    rows = store.model.objects.order_by("session_key")
    last = ""
    while True:
        page = list(
            rows.filter(session_key__gt=last).values_list(
                "session_key", "session_data", "expire_date"
            )[:size]
        )
        if not page:
            return
        last = page[-1][0]
        now = timezone.now()
        items = [
            Item(key, store.decode(data), _timestamp(expire))
            for key, data, expire in page
            if expire > now
        ]
        items = [item for item in items if item.data]  # (undecodable data: logged by Django)
        yield items, len(page) - len(items)


def _timestamp(value: Any) -> float:
    if timezone.is_naive(value):  # USE_TZ = False: in TIME_ZONE (see dbaccess.when)
        value = timezone.make_aware(value, timezone.get_default_timezone())
    return float(value.timestamp())


def _cache_keys(store: Any, client: Any, size: int) -> Iterator[Batch]:
    """``SCAN`` over the engine's keys (32 characters of Django's key alphabet)."""
    cache = store._cache
    prefix = store.cache_key_prefix
    made = cache.make_key(prefix)
    if cache.make_key(prefix + "k") != made + "k":
        raise NotSupported(
            "The previous cache has a KEY_FUNCTION that does not end keys with the name: "
            "its session keys cannot be matched. Lazy adoption still works."
        )
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", made) + "[a-z0-9]" * 32
    pending: list[str] = []
    for raw in client.scan_iter(match=pattern, count=size):
        pending.append(raw.decode() if isinstance(raw, bytes) else raw)
        if len(pending) >= size:
            yield _cache_batch(cache, client, made, prefix, pending)
            pending = []
    if pending:
        yield _cache_batch(cache, client, made, prefix, pending)


def _cache_batch(cache: Any, client: Any, made: str, prefix: str, raw_keys: list[str]) -> Batch:
    keys = [raw[len(made) :] for raw in raw_keys]
    values = cache.get_many([prefix + key for key in keys])
    pipe = client.pipeline(transaction=False)
    for raw in raw_keys:
        pipe.pttl(raw)
    ttls = pipe.execute()
    now = time.time()
    items = []
    for key, ttl in zip(keys, ttls, strict=True):
        data = values.get(prefix + key)
        if isinstance(data, dict) and data:
            seconds = ttl / 1000 if ttl and ttl > 0 else settings.SESSION_COOKIE_AGE
            items.append(Item(key, data, now + seconds))
    return items, len(keys) - len(items)


def adopt_batch(items: list[Item], counts: Counts, *, dry_run: bool) -> None:
    hashes = {hash_key(item.key): item for item in items}
    known = AdoptedSession.objects.filter(key_hash__in=list(hashes))
    taken = set(known.values_list("key_hash", flat=True))
    counts.already += len(taken)
    fresh = [item for h, item in hashes.items() if h not in taken]
    users = users_of(fresh)
    claims = {i.key: str(i.data[SESSION_KEY]) for i in fresh if i.data.get(SESSION_KEY) is not None}
    if dry_run:
        barred = bars.barred(claims.values()) if claims else {}
        _classify(counts, fresh, users, {k for k, user in claims.items() if user in barred})
        return
    leftovers = [hashes[h].key for h in taken]
    try:
        refused = _commit(fresh, users, claims)
    except IntegrityError:
        if len(fresh) > 1:
            # A request adopted one of them meanwhile: one at a time, the others still go.
            for item in fresh:
                one = Counts()
                adopt_batch([item], one, dry_run=False)
                for name in ("adopted", "already", "refused", "logged_in", "anonymous"):
                    setattr(counts, name, getattr(counts, name) + getattr(one, name))
            _forget(leftovers)
            return
        counts.already += 1
        leftovers.extend(i.key for i in fresh)
        _forget(leftovers)
        return
    _classify(counts, fresh, users, refused)
    counts.adopted += len(fresh) - len(refused)
    _forget(leftovers + [item.key for item in fresh])


def _classify(counts: Counts, fresh: list[Item], users: dict[str, Any], refused: set[str]) -> None:
    counts.refused += len(refused)
    counts.logged_in += len(set(users) - refused)
    counts.anonymous += len(fresh) - len(set(users) | refused)


def _commit(items: list[Item], users: dict[str, Any], claims: dict[str, str]) -> set[str]:
    """Records, rows and Redis copies of a batch: all of it, or (on any error) none of it.

    ``claims``: the user each login names (``_auth_user_id``), by key.  Returns the
    keys refused (their user is barred, :mod:`.bars`): those get their record only,
    no row, no copy.
    """
    cache = SessionCache()
    probe = SessionBase()
    for item in items:
        item.data = storable(item.data, cache.serializer)
        expiry_age(probe, item.data)  # (drops a _session_expiry Django cannot read)
    now = time.time()
    evicted: list[str] = []
    rows: list[UserSession] = []
    copies: list[tuple[str, Entry, int]] = []
    written: list[str] = []
    engine = previous.engine()
    refused: set[str] = set()
    try:
        with transaction.atomic(using=db()):
            AdoptedSession.objects.bulk_create(
                [AdoptedSession(key_hash=hash_key(i.key), engine=engine) for i in items]
            )
            barred = _barred(claims)
            for item in items:
                key_hash = hash_key(item.key)
                user = users.get(item.key)
                if claims.get(item.key) in barred:
                    refused.add(item.key)  # (these stores do not tell when it was issued)
                    continue
                if user is None:
                    lifecycle.strip_login(item.data)
                elif not ledger.tracks(user):
                    lifecycle.stamp(item.data, now, item.expires_at, login=True)
                    item.data[UNTRACKED_KEY] = 1
                elif conf.MAX_SESSIONS_PER_USER:  # the limit, as at any login
                    recorded, ended = ledger.start(
                        key_hash, user.pk, item.expires_at, VERSION, None, "",
                        str(item.data.get(BACKEND_SESSION_KEY, "")),
                        str(item.data.get(HASH_SESSION_KEY, "")),
                    )  # fmt: skip
                    evicted.extend(ended)
                    if recorded:
                        lifecycle.stamp(item.data, now, item.expires_at, login=True)
                    else:
                        lifecycle.strip_login(item.data)
                else:
                    rows.append(_row(key_hash, user, item))
                    lifecycle.stamp(item.data, now, item.expires_at, login=True)
                ttl = max(int(item.expires_at - now), 1)
                copies.append((key_hash, Entry(VERSION, item.data, ADOPTED_TAG), ttl))
            UserSession.objects.bulk_create(rows)
            created = cache.create_many(copies)
            written = [copy[0] for copy, done in zip(copies, created, strict=True) if done]
            if len(written) < len(copies):
                raise IntegrityError("a Redis key is taken (a tombstone or a copy)")
    except BaseException:
        if written:
            for key_hash in written:  # a plain DEL: they may be adopted again
                try:
                    cache.drop(key_hash)
                except CacheUnavailable:
                    break
        raise
    tracking.settle(evicted)
    return refused


def _barred(claims: dict[str, str]) -> set[str]:
    """The users named by this batch's logins whose adoption is barred, read after
    locking their rows (a revocation running now either ends what this batch
    adopts, or bars it first)."""
    if not claims:
        return set()
    bars.lock_users(bars.pks_of(set(claims.values())))
    return set(bars.barred(claims.values()))


def _row(key_hash: str, user: Any, item: Item) -> UserSession:
    now = timezone.now()
    return UserSession(
        key_hash=key_hash,
        user=user,
        created_at=now,
        last_activity=now,
        expires_at=when(item.expires_at),
        backup_version=VERSION,
        auth_backend=str(item.data.get(BACKEND_SESSION_KEY, ""))[:255],
        auth_hash=str(item.data.get(HASH_SESSION_KEY, ""))[:128],
    )


def _forget(keys: list[str], store: Any = None) -> None:
    """Delete adopted sessions from the previous store (or ``store``), a batch at once."""
    if not keys:
        return
    store = previous.store() if store is None else store
    if engines.kind_of(type(store)) == engines.DB:
        store.model.objects.filter(session_key__in=keys).delete()
    cached = getattr(store, "_cache", None)
    if cached is not None:
        prefix = store.cache_key_prefix
        cached.delete_many([prefix + key for key in keys])


def adopt_all(
    batch_size: int, *, dry_run: bool, progress: Callable[[Counts], None] | None = None
) -> Counts:
    """Adopt (or, ``dry_run``, count) every live session of the previous store."""
    found, total = batches(batch_size)
    counts = Counts(total=total)
    for items, expired in found:
        counts.expired += expired
        counts.live += len(items)
        counts.seen += len(items) + expired
        if items:
            adopt_batch(items, counts, dry_run=dry_run)
        if progress is not None:
            progress(counts)
    return counts
