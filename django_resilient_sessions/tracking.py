"""The revocation ledger: what the engine writes to and asks of ``UserSession``.

Every function here takes key hashes, never session keys.  None of them runs
on a request served from the cache, except at login, logout and once per
``ACTIVITY_UPDATE_INTERVAL``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import OperationalError, transaction
from django.db.models import Max, Min, Q
from django.utils import timezone

from . import health
from .cachecopy import SessionCache
from .conf import conf
from .devices import describe
from .exceptions import CacheUnavailable
from .models import EndReason, PendingPurge, UserSession

__all__ = ["clear_expired", "end", "is_active", "purge", "purge_pending", "rekey", "start", "touch"]

logger = logging.getLogger("django_resilient_sessions")
BATCH = 500


def _batches(items: Sequence[str], size: int = BATCH) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def start(key_hash: str, user_id: str, expires_at: datetime, ip: str | None, agent: str) -> bool:
    """Record a login on this session; ``False`` when the session limit refuses it.

    With ``MAX_SESSIONS_PER_USER`` set, the user's row is locked (``SELECT ...
    FOR UPDATE``) while the active sessions are counted, so concurrent logins
    cannot pass the limit together.  A lock conflict (SQLite answers "database
    is locked" at once instead of waiting) is retried once.
    """
    try:
        return _start(key_hash, user_id, expires_at, ip, agent)
    except OperationalError:
        if transaction.get_connection().in_atomic_block:
            raise  # the enclosing transaction is spoilt: nothing to retry in
        logger.warning("Recording a login met a lock conflict; retrying once.")
        time.sleep(0.05)
        return _start(key_hash, user_id, expires_at, ip, agent)


def _start(key_hash: str, user_id: str, expires_at: datetime, ip: str | None, agent: str) -> bool:
    now = timezone.now()
    device = describe(agent)
    pk = get_user_model()._meta.pk.to_python(user_id)
    fields = {
        "user_id": pk,
        "created_at": now,
        "last_activity": now,
        "expires_at": expires_at,
        "ended_at": None,
        "end_reason": "",
        "ip": ip if conf.TRACK_IP else None,
        "user_agent": agent[:300],
        "device_type": device.type,
        "browser": device.browser,
        "os": device.os,
    }
    evicted: list[str] = []
    with transaction.atomic():
        if conf.MAX_SESSIONS_PER_USER:
            room = _make_room(pk, key_hash, now)
            if room is None:
                return False
            evicted = room
        # Write first (no SELECT): the statement takes the write lock at once.
        if not UserSession.objects.filter(key_hash=key_hash).update(**fields):
            UserSession.objects.create(key_hash=key_hash, **fields)
    purge(evicted)
    return True


def _make_room(user_pk: Any, key_hash: str, now: datetime) -> list[str] | None:
    """End the sessions a new login displaces; ``None`` if the login is refused."""
    limit = conf.MAX_SESSIONS_PER_USER or 0
    list(get_user_model()._default_manager.select_for_update().filter(pk=user_pk).values("pk"))
    others = (
        UserSession.objects.active()
        .filter(user_id=user_pk)
        .exclude(key_hash=key_hash)
        .order_by("last_activity", "pk")
    )
    excess = others.count() - limit + 1
    if excess <= 0:
        return []
    if conf.SESSION_LIMIT_POLICY == "refuse":
        return None
    evicted = list(others.values_list("key_hash", flat=True)[:excess])
    UserSession.objects.filter(key_hash__in=evicted).update(
        ended_at=now, end_reason=str(EndReason.LIMIT)
    )
    return evicted


def touch(key_hash: str, expires_at: datetime) -> None:
    UserSession.objects.filter(key_hash=key_hash, ended_at__isnull=True).update(
        last_activity=timezone.now(), expires_at=expires_at
    )


def rekey(old_hash: str, new_hash: str) -> int:
    """Move a row to the session's new key (``cycle_key``)."""
    moved: int = UserSession.objects.filter(key_hash=old_hash).update(key_hash=new_hash)
    return moved


def row_state(key_hash: str, user_id: Any) -> str:
    """``"active"``, ``"ended"`` (or expired, or another user's) or ``"missing"``.

    A backup holding ``user_id`` for this session may be trusted only when
    the answer is ``"active"``.
    """
    rows = UserSession.objects.filter(key_hash=key_hash).values_list(
        "user_id", "ended_at", "expires_at"
    )[:1]  # no ORDER BY: the key hash is unique
    if not rows:
        return "missing"
    owner, ended_at, expires_at = rows[0]
    live = ended_at is None and expires_at > timezone.now() - UserSession.grace()
    return "active" if live and str(owner) == str(user_id) else "ended"


def is_active(key_hash: str, user_id: Any) -> bool:
    """May a backup holding ``user_id`` for this session be trusted?"""
    return row_state(key_hash, user_id) == "active"


def end(key_hashes: Sequence[str], reason: str) -> int:
    """End these sessions: the rows now, the cache entries now or once it answers."""
    ended = 0
    now = timezone.now()
    try:
        for batch in _batches(list(key_hashes)):
            ended += UserSession.objects.filter(key_hash__in=batch, ended_at__isnull=True).update(
                ended_at=now, end_reason=reason
            )
    finally:
        # Even when the database fails, the cache copy goes (as Django's
        # cache engine would delete it).
        purge(key_hashes)
    return ended


def purge(key_hashes: Sequence[str]) -> None:
    """Delete cache entries, or queue them when the cache does not answer."""
    if not key_hashes:
        return
    cache = SessionCache(settings.SESSION_CACHE_ALIAS)
    for batch in _batches(list(key_hashes)):
        try:
            cache.delete(batch)
        except CacheUnavailable:
            PendingPurge.objects.bulk_create(
                [PendingPurge(key_hash=h) for h in batch], ignore_conflicts=True
            )
            health.count("purges_pending", len(batch))
            logger.warning("%d session cache entries queued for purge.", len(batch))


def purge_pending(batch_size: int = BATCH) -> int:
    """Delete the cache entries queued while the cache was down."""
    cache = SessionCache(settings.SESSION_CACHE_ALIAS)
    done = 0
    while True:
        hashes = list(PendingPurge.objects.values_list("key_hash", flat=True)[:batch_size])
        if not hashes:
            return done
        try:
            cache.delete(hashes)
        except CacheUnavailable:
            return done
        PendingPurge.objects.filter(key_hash__in=hashes).delete()
        done += len(hashes)


_last_check = time.monotonic()


def purge_pending_if_due() -> None:
    """Finish purges queued by another process, once per ``PURGE_CHECK_INTERVAL``.

    A process whose breaker never opened (it was idle during the outage) has
    no recovery to react to; this indexed ``EXISTS`` is how it learns that a
    session it could serve from the cache was ended meanwhile.
    """
    global _last_check
    interval = conf.PURGE_CHECK_INTERVAL
    now = time.monotonic()
    if interval is None or now - _last_check < interval:
        return
    _last_check = now
    if PendingPurge.objects.exists():
        purged = purge_pending()
        logger.warning("Purged %d session cache entries ended by another process.", purged)


def restart_purge_clock() -> None:
    """Start the ``PURGE_CHECK_INTERVAL`` wait afresh (used by tests)."""
    global _last_check
    _last_check = time.monotonic()


@dataclass
class Cleanup:
    purged: int = 0
    expired: int = 0
    deleted: int = 0


def clear_expired(progress: Any = None) -> Cleanup:
    """Delete rows ended or expired past retention, mark expired ones, finish purges.

    Walks the table in windows of ``CLEANUP_BATCH_SIZE`` primary keys, two
    statements per window (a DELETE, then an UPDATE), so no statement touches
    more rows than that and memory stays flat whatever the table's size.
    ``progress(Cleanup)`` is called after each window.
    """
    result = Cleanup(purged=purge_pending())
    now = timezone.now()
    size = conf.CLEANUP_BATCH_SIZE
    cutoff = now - timedelta(days=conf.ENDED_RETENTION_DAYS)
    past_retention = Q(ended_at__lt=cutoff) | Q(expires_at__lt=cutoff)
    bounds = UserSession.objects.aggregate(low=Min("pk"), high=Max("pk"))
    if bounds["low"] is None:
        return result
    for first in range(bounds["low"], bounds["high"] + 1, size):
        window = UserSession.objects.filter(pk__gte=first, pk__lt=first + size)
        result.deleted += window.filter(past_retention).delete()[0]
        result.expired += window.filter(
            ended_at__isnull=True, expires_at__lte=now - UserSession.grace()
        ).update(ended_at=now, end_reason=str(EndReason.EXPIRED))
        if progress:
            progress(result)
    return result


def end_user_sessions(user: Any, reason: str, *, keep: str | None = None) -> int:
    """End every session of ``user`` except the one whose key hash is ``keep``."""
    rows = UserSession.objects.filter(user=user, ended_at__isnull=True)
    if keep:
        rows = rows.exclude(key_hash=keep)
    hashes = list(rows.values_list("key_hash", flat=True))
    return end(hashes, reason)


def on_user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    """Deleting a user ends their sessions in the cache too (rows then cascade)."""
    end_user_sessions(instance, str(EndReason.ACCOUNT_DELETED))


def end_sessions_after_password_change(request: Any, user: Any) -> int:
    """Keep this request's session logged in and end every other one of ``user``.

    Call it from a password change view instead of ``update_session_auth_hash``.
    """
    from django.contrib.auth import update_session_auth_hash

    update_session_auth_hash(request, user)
    keep = getattr(request.session, "key_hash", None)
    return end_user_sessions(user, str(EndReason.PASSWORD_CHANGE), keep=keep)
