"""Ending sessions: the ledger and Redis together.

The public API for sites (``end_user_sessions``, ``end_sessions_after_password_change``)
and what ``UserSession.revoke()``, the views, the admin, the commands and the
engine use to end sessions.  The rule, everywhere: the ledger records the end
first, durably, or :class:`~.exceptions.LedgerUnavailable` is raised and
nothing changed; then the Redis copies go (entry and tombstone in one atomic
step), and those Redis cannot take now are queued in ``PendingPurge`` for when
it answers.  A login whose deletion can be neither done nor queued fails
visibly too, since its Redis copy would outlive its end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from . import health, ledger
from .cachecopy import SessionCache
from .conf import conf
from .exceptions import CacheUnavailable, LedgerUnavailable
from .models import EndReason, UserSession
from .trust import plan_delete

__all__ = [
    "Cleanup",
    "clear_expired",
    "end",
    "end_one",
    "end_sessions_after_password_change",
    "end_user_sessions",
    "on_user_deleted",
    "remove",
]

logger = logging.getLogger("django_resilient_sessions")


def end(key_hashes: Sequence[str], reason: str) -> int:
    """End these logins: rows first, then their Redis copies.  Returns the rows ended."""
    hashes = list(key_hashes)
    if not hashes:
        return 0
    ended = ledger.end_rows(hashes, reason)
    remove(hashes, queue=True, must_queue=True)
    return ended


def end_one(
    key_hash: str, reason: str, *, login: bool | None, in_redis: bool, ttl: int = 0
) -> None:
    """End one session as :func:`~.trust.plan_delete` says it must be ended."""
    plan = plan_delete(login=login, in_redis=in_redis)
    if plan.end_row:
        ledger.end_rows([key_hash], reason)
    remove([key_hash], queue=plan.queue, must_queue=plan.must_queue, ttl=ttl)


def remove(key_hashes: Sequence[str], *, queue: bool, must_queue: bool, ttl: int = 0) -> None:
    """Delete Redis copies (leaving tombstones); queue what Redis cannot take now.

    After the first batch Redis refuses, the rest is queued without trying.
    """
    hashes = list(key_hashes)
    if not hashes:
        return
    cache = SessionCache()
    for position, batch in enumerate(ledger.batches(hashes)):
        try:
            cache.delete(batch, ttl)
        except CacheUnavailable:
            if queue:
                _queue(hashes[position * ledger.BATCH :], must_queue)
            return


def _queue(hashes: Sequence[str], must_queue: bool) -> None:
    try:
        ledger.queue(hashes)
    except LedgerUnavailable:
        if must_queue:
            raise
        logger.warning("Could not queue %d Redis deletions of anonymous sessions.", len(hashes))
        return
    health.count("purges_pending", len(hashes))
    logger.warning("%d session cache entries queued for purge.", len(hashes))


def end_user_sessions(user: Any, reason: str, *, keep: str | None = None) -> int:
    """End every session of ``user`` except the one whose key hash is ``keep``."""
    rows = UserSession.objects.filter(user=user, ended_at__isnull=True)
    if keep:
        rows = rows.exclude(key_hash=keep)
    try:
        hashes = list(rows.values_list("key_hash", flat=True))
    # Reading the rows is part of the ledger: see ledger._guarded.
    except Exception as error:
        raise LedgerUnavailable(f"end_user_sessions: {error}") from error
    return end(hashes, reason)


def on_user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    """Deleting a user ends their sessions, Redis copies included, then drops their rows.

    Raising here (ledger or queue unavailable) aborts the deletion: a user
    whose sessions could not be ended is not deleted.
    """
    end_user_sessions(instance, str(EndReason.ACCOUNT_DELETED))
    UserSession.objects.filter(user=instance).delete()


def end_sessions_after_password_change(request: Any, user: Any) -> int:
    """Keep this request's session logged in and end every other one of ``user``.

    Call it from a password change view instead of ``update_session_auth_hash``.
    """
    from django.contrib.auth import update_session_auth_hash

    update_session_auth_hash(request, user)
    keep = getattr(request.session, "key_hash", None)
    return end_user_sessions(user, str(EndReason.PASSWORD_CHANGE), keep=keep)


@dataclass
class Cleanup:
    purged: int = 0
    expired: int = 0
    deleted: int = 0


def clear_expired(progress: Callable[[Cleanup], None] | None = None) -> Cleanup:
    """Delete rows past retention, end expired ones (Redis copies too), finish queued purges.

    Walks the table in windows of ``CLEANUP_BATCH_SIZE`` primary keys, so no
    statement touches more rows than that and memory stays flat whatever the
    table's size.  ``progress(Cleanup)`` is called after each window.
    """
    from . import purges

    result = Cleanup(purged=purges.drain(SessionCache(), max_batches=None).done)
    now = timezone.now()
    size = conf.CLEANUP_BATCH_SIZE
    low, high = ledger.pk_bounds()
    if low is None or high is None:
        return result
    for first in range(low, high + 1, size):
        deleted, ended = ledger.cleanup_window(first, size, now)
        remove(ended, queue=True, must_queue=True)
        result.deleted += deleted
        result.expired += len(ended)
        if progress:
            progress(result)
    return result
