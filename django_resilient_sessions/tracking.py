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

from . import health, ledger, outbox
from .cachecopy import SessionCache
from .conf import conf
from .exceptions import LedgerUnavailable
from .models import EndReason, UserSession
from .trust import Cache, Op, decide

__all__ = [
    "Cleanup",
    "clear_expired",
    "end",
    "end_one",
    "end_sessions_after_password_change",
    "end_user_sessions",
    "on_user_deleted",
    "remove",
    "revoke",
    "settle",
]

logger = logging.getLogger("django_resilient_sessions")


def end(key_hashes: Sequence[str], reason: str) -> int:
    """End these logins: rows first (with their purges queued), then their Redis copies."""
    hashes = list(key_hashes)
    if not hashes:
        return 0
    ended = ledger.end_rows(hashes, reason)
    settle(hashes)
    return ended


def revoke(rows: Any, reason: str) -> int:
    """End the sessions of ``rows`` (a ``UserSession`` queryset) that have not ended yet."""
    return end(ledger.live_hashes(rows), reason)


def end_one(
    key_hash: str, reason: str, *, login: bool | None, in_redis: bool, ttl: int = 0
) -> None:
    """End one session as :func:`~.trust.decide` says a deletion must end it."""
    cache = Cache.PRESENT if in_redis else Cache.ABSENT
    plan = decide(cache, login=login, op=Op.DELETE)
    if plan.end_row:
        # Not recorded (LedgerUnavailable): the deletion fails visibly and changes
        # nothing, as decide(..., row=Row.UNWRITABLE, op=Op.DELETE) says.
        ledger.end_rows([key_hash], reason, queue=plan.queue)
        settle([key_hash], ttl=ttl, queued=plan.queue)
    else:
        remove([key_hash], queue=plan.queue, ttl=ttl)


def settle(key_hashes: Sequence[str], *, ttl: int = 0, queued: bool = True) -> None:
    """Delete Redis copies whose deletion is queued, then take them off the queue.

    What Redis does not take now stays queued, for the drain.
    """
    done, rest = _delete(key_hashes, ttl)
    if not queued:
        return
    try:
        if done:
            outbox.unqueue(done)
        if rest:
            outbox.release(rest)
    except LedgerUnavailable:
        # Left in flight: they count as pending once SETTLED seconds old.
        logger.warning("Could not update the purge queue; the drain will settle it.")
    if rest:
        health.count("purges_pending", len(rest))
        logger.warning("%d session cache entries queued for purge.", len(rest))


def remove(key_hashes: Sequence[str], *, queue: bool, ttl: int = 0) -> None:
    """Delete Redis copies of sessions with no login (leaving tombstones), best effort.

    What Redis cannot take now is queued when ``queue`` (the session may be in
    Redis); a queue that cannot be written is logged: anonymous data only.
    """
    rest = _delete(key_hashes, ttl)[1]
    if not rest or not queue:
        return
    try:
        outbox.queue(rest)
    except LedgerUnavailable:
        logger.warning("Could not queue %d Redis deletions of anonymous sessions.", len(rest))
        return
    health.count("purges_pending", len(rest))


def _delete(key_hashes: Sequence[str], ttl: int) -> tuple[list[str], list[str]]:
    """Tombstone these Redis copies in batches: (the hashes done, the rest).

    On a cluster a failing node leaves its own sessions undone, not the others'.
    """
    cache = SessionCache()
    done: list[str] = []
    for batch in ledger.batches(list(key_hashes)):
        done.extend(cache.tombstone(batch, ttl))
    finished = set(done)
    return done, [h for h in key_hashes if h not in finished]


def end_user_sessions(
    user: Any, reason: str, *, keep: str | None = None, active_only: bool = False
) -> int:
    """End every session of ``user`` except the one whose key hash is ``keep``.

    While ``PREVIOUS_ENGINE`` is set, this also bars the adoption of the user's
    sessions still in the previous store (``bars``), in the same transaction.
    ``active_only``: leave alone the rows that expired without being marked ended.
    """
    ended, hashes = ledger.end_users(
        [user.pk], reason, keep=[keep] if keep else [], active_only=active_only
    )
    settle(hashes)
    return ended


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
    #: Adoption bars lifted (see ``bars.clear()``).
    bars: int = 0


def clear_expired(progress: Callable[[Cleanup], None] | None = None) -> Cleanup:
    """Delete rows past retention, end expired ones (Redis copies too), finish queued
    purges, lift the adoption bars that can no longer refuse anything.

    Walks the table in windows of ``CLEANUP_BATCH_SIZE`` primary keys, so no
    statement touches more rows than that and memory stays flat whatever the
    table's size.  ``progress(Cleanup)`` is called after each window.
    """
    from . import bars, purges

    result = Cleanup(purged=purges.drain(SessionCache(), max_batches=None).done)
    result.bars = bars.clear()
    now = timezone.now()
    size = conf.CLEANUP_BATCH_SIZE
    low, high = ledger.pk_bounds()
    if low is None or high is None:
        return result
    for first in range(low, high + 1, size):
        deleted, ended = ledger.cleanup_window(first, size, now)
        # Tombstones, best effort and never queued: an expired row's Redis copy has
        # expired as well, so a row that Redis does not take now leaves nothing behind
        # (a queue entry per expired row would hold breakers open after an outage).
        settle(ended, queued=False)
        result.deleted += deleted
        result.expired += len(ended)
        if progress:
            progress(result)
    return result
