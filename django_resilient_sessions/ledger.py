"""The ledger: every statement the engine runs against ``UserSession`` and ``PendingPurge``.

Database only (Redis is :mod:`.cachecopy`; :mod:`.tracking` composes the two).
Every function takes key hashes, never session keys, and turns whatever the
ORM raises into :class:`~.exceptions.LedgerUnavailable`: a ``DatabaseError``,
but also the ``ValueError`` or ``TypeError`` a driver raises for a value it
cannot take.  Each write runs in its own ``atomic()`` block (a savepoint inside
a caller's transaction), so a failure leaves nothing half done and does not
spoil the caller's transaction.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any, ParamSpec, TypeVar

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import OperationalError, router, transaction
from django.db.models import BooleanField, ExpressionWrapper, F, Max, Min, Q
from django.db.models.functions import Greatest
from django.utils import timezone

from .conf import conf
from .devices import describe
from .exceptions import LedgerUnavailable
from .models import EndReason, PendingPurge, UserSession, active_q
from .trust import Row

__all__ = [
    "batches",
    "cleanup_window",
    "end_rows",
    "is_active",
    "live_hashes",
    "queue",
    "queue_exists",
    "queued",
    "rekey",
    "release",
    "row_state",
    "start",
    "touch",
    "tracks",
    "unqueue",
    "when",
]

logger = logging.getLogger("django_resilient_sessions")
#: Seconds after which a deletion still "in flight" (its process failed) counts as pending.
SETTLED = 5.0
P = ParamSpec("P")
R = TypeVar("R")
BATCH = 500


def _guarded(function: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except LedgerUnavailable:
            raise
        # The ORM raises DatabaseError subclasses, but a driver or a field may
        # raise ValueError or TypeError for a value it cannot take (a NUL byte
        # on PostgreSQL, an aware datetime on a USE_TZ = False SQLite): the
        # ledger could not answer either way, and the caller fails closed.
        except Exception as error:
            logger.error("Session ledger %s failed: %r", function.__name__, error)
            raise LedgerUnavailable(f"{function.__name__}: {error}") from error

    return wrapper


def _db() -> str:
    return router.db_for_write(UserSession)


def _one_statement() -> Any:
    """Room for one statement: none needed in autocommit (a statement is atomic), a
    savepoint inside a caller's transaction (so a failure does not spoil it)."""
    using = _db()
    if transaction.get_connection(using).in_atomic_block:
        return transaction.atomic(using=using)
    return contextlib.nullcontext()


def when(timestamp: float) -> datetime:
    """A unix time as the database takes it (naive local time under ``USE_TZ = False``)."""
    value = datetime.fromtimestamp(timestamp, tz=dt_timezone.utc)
    return value if settings.USE_TZ else timezone.make_naive(value)


def batches(items: Sequence[str], size: int = BATCH) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def tracks(user: Any) -> bool:
    """Can a ``UserSession`` row reference ``user`` (an instance of its foreign key's model)?"""
    model = UserSession._meta.get_field("user").related_model
    return isinstance(model, type) and isinstance(user, model)


def _user_pk(user_id: Any) -> Any:
    return get_user_model()._meta.pk.to_python(user_id)


# Logins ------------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    """What a row holds of its login: enough to serve it without any other copy."""

    user_id: str
    backend: str
    auth_hash: str
    login_at: float
    seen_at: float
    expires_at: float


def _timestamp(value: datetime) -> float:
    if timezone.is_naive(value):
        value = timezone.make_aware(value)
    return value.timestamp()


@_guarded
def login_of(key_hash: str) -> tuple[Row, Login | None]:
    """The login this session's row vouches for, if its row is active (one ``SELECT``)."""
    live = ExpressionWrapper(active_q(), output_field=BooleanField())
    found = list(
        UserSession.objects.filter(key_hash=key_hash)
        .annotate(live=live)
        .values_list(
            "user_id",
            "auth_backend",
            "auth_hash",
            "created_at",
            "last_activity",
            "expires_at",
            "live",
        )[:1]
    )
    if not found:
        return Row.MISSING, None
    owner, backend, auth_hash, created, seen, expires, active = found[0]
    if not active:
        return Row.ENDED, None
    if not (backend and auth_hash):
        return Row.MISSING, None  # recorded before rows kept their login
    login = Login(
        str(owner), backend, auth_hash, _timestamp(created), _timestamp(seen), _timestamp(expires)
    )
    return Row.ACTIVE, login


@_guarded
def start(
    key_hash: str,
    user_id: Any,
    expires_at: float,
    version: int,
    ip: str | None,
    agent: str,
    backend: str = "",
    auth_hash: str = "",
) -> tuple[bool, list[str]]:
    """Record a login on this session.

    Returns ``(recorded, evicted)``: ``recorded`` is ``False`` when the session
    limit refuses the login; ``evicted`` lists the sessions the limit ended to
    make room (queued for Redis like :func:`end_rows`: the caller deletes the
    copies and unqueues them).  With
    ``MAX_SESSIONS_PER_USER`` set, the user's row is locked (``SELECT ... FOR
    UPDATE``) while the active sessions are counted, so concurrent logins
    cannot pass the limit together.  A lock conflict (SQLite answers
    "database is locked" at once instead of waiting) is retried once.
    """
    login = (backend, auth_hash)
    try:
        return _start(key_hash, user_id, expires_at, version, ip, agent, login)
    except OperationalError:
        if transaction.get_connection(_db()).in_atomic_block:
            raise  # the enclosing transaction is spoilt: nothing to retry in
        logger.warning("Recording a login met a lock conflict; retrying once.")
        time.sleep(0.05)
        return _start(key_hash, user_id, expires_at, version, ip, agent, login)


def _start(
    key_hash: str,
    user_id: Any,
    expires_at: float,
    version: int,
    ip: str | None,
    agent: str,
    login: tuple[str, str],
) -> tuple[bool, list[str]]:
    now = timezone.now()
    device = describe(agent)
    pk = _user_pk(user_id)
    fields = {
        "user_id": pk,
        "created_at": now,
        "last_activity": now,
        "expires_at": when(expires_at),
        "ended_at": None,
        "end_reason": "",
        "ip": ip if conf.TRACK_IP else None,
        "user_agent": agent,
        "device_type": device.type,
        "browser": device.browser,
        "os": device.os,
        "backup_version": version,
        "auth_backend": login[0][:255],
        "auth_hash": login[1][:128],
    }
    evicted: list[str] = []
    with transaction.atomic(using=_db()):
        if conf.MAX_SESSIONS_PER_USER:
            room = _make_room(pk, key_hash, now)
            if room is None:
                return False, []
            evicted = room
            _queue(evicted)  # the outbox: see end_rows
        # Write first (no SELECT): the statement takes the write lock at once.
        again = fields | {"backup_version": Greatest(F("backup_version"), version)}
        if not UserSession.objects.filter(key_hash=key_hash).update(**again):
            UserSession.objects.create(key_hash=key_hash, **fields)
    return True, evicted


def _make_room(user_pk: Any, key_hash: str, now: datetime) -> list[str] | None:
    """End the sessions a new login displaces; ``None`` if the login is refused."""
    limit = conf.MAX_SESSIONS_PER_USER or 0
    list(get_user_model()._default_manager.select_for_update().filter(pk=user_pk).values("pk"))
    others = (
        UserSession.objects.filter(active_q(now), user_id=user_pk)
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


@_guarded
def touch(
    key_hash: str,
    user_id: Any,
    *,
    version: int,
    expires_at: float | None = None,
    auth_hash: str | None = None,
) -> bool:
    """Record activity (with ``expires_at``), the newest backup version served, and a
    changed session auth hash (a password change).

    One ``UPDATE``; ``False`` when the session has no active row for
    ``user_id`` any more (ended, expired, or never recorded).
    """
    fields: dict[str, Any] = {"backup_version": Greatest(F("backup_version"), version)}
    if expires_at is not None:
        fields |= {"last_activity": timezone.now(), "expires_at": when(expires_at)}
    if auth_hash is not None:
        fields["auth_hash"] = auth_hash[:128]
    rows = UserSession.objects.filter(active_q(), key_hash=key_hash, user_id=_user_pk(user_id))
    with _one_statement():
        return bool(rows.update(**fields))


@_guarded
def row_state(key_hash: str, user_id: Any, version: int) -> tuple[Row, int]:
    """May a backup at ``version`` holding ``user_id`` for this session be trusted?

    One ``SELECT`` by the unique key hash; "active" is :func:`~.models.active_q`.
    Also returns the newest backup version the row has seen served.
    """
    live = ExpressionWrapper(active_q(), output_field=BooleanField())
    found = list(
        UserSession.objects.filter(key_hash=key_hash)
        .annotate(live=live)
        .values_list("user_id", "backup_version", "live")[:1]
    )
    if not found:
        return Row.MISSING, 0
    owner, served, active = found[0]
    if not active or str(owner) != str(user_id):
        return Row.ENDED, served
    return (Row.AHEAD if version < served else Row.ACTIVE), served


@_guarded
def is_active(key_hash: str) -> bool:
    """Does this session hold an active login?"""
    return bool(UserSession.objects.filter(active_q(), key_hash=key_hash).exists())


@_guarded
def live_hashes(rows: Any) -> list[str]:
    """The key hashes of the rows of ``rows`` (a ``UserSession`` queryset) not yet ended."""
    return list(rows.filter(ended_at__isnull=True).values_list("key_hash", flat=True))


@_guarded
def end_rows(key_hashes: Sequence[str], reason: str, *, queue: bool = True) -> int:
    """Mark these sessions' rows ended and queue their Redis deletions, in one transaction.

    The queue is an outbox: the caller deletes the Redis copies next and then
    takes them off the queue (:func:`unqueue`); whatever Redis does not take
    stays queued for the drain.  So an end is recorded with its purge, or not
    at all.
    """
    ended = 0
    now = timezone.now()
    with transaction.atomic(using=_db()):
        for batch in batches(list(key_hashes)):
            ended += UserSession.objects.filter(key_hash__in=batch, ended_at__isnull=True).update(
                ended_at=now, end_reason=reason
            )
            if queue:
                _queue(batch)
    return ended


@_guarded
def rekey(old_hash: str, new_hash: str) -> int:
    """Move an active row to the session's new key (``cycle_key``), queueing the old key's purge.

    Both in one transaction (the outbox of :func:`end_rows`): either the old
    key is dead in the ledger and queued for Redis, or nothing changed.
    """
    with transaction.atomic(using=_db()):
        moved: int = UserSession.objects.filter(active_q(), key_hash=old_hash).update(
            key_hash=new_hash
        )
        _queue([old_hash])
    return moved


# The purge queue ------------------------------------------------------------


def _queue(key_hashes: Sequence[str], *, in_flight: bool = True) -> None:
    PendingPurge.objects.bulk_create(
        [PendingPurge(key_hash=h, in_flight=in_flight) for h in key_hashes],
        ignore_conflicts=True,
    )


def _due() -> Any:
    """The queued deletions still to do: not in flight, or in flight too long."""
    settled = timezone.now() - timedelta(seconds=SETTLED)
    return PendingPurge.objects.filter(Q(in_flight=False) | Q(created_at__lt=settled))


@_guarded
def queue(key_hashes: Sequence[str]) -> None:
    """Remember Redis deletions to do once Redis answers."""
    with transaction.atomic(using=_db()):
        for batch in batches(list(key_hashes)):
            _queue(batch, in_flight=False)


@_guarded
def release(key_hashes: Sequence[str]) -> None:
    """Redis did not take these in-flight deletions: they are pending now."""
    with _one_statement():
        PendingPurge.objects.filter(key_hash__in=list(key_hashes)).update(in_flight=False)


@_guarded
def queue_top() -> int:
    """The newest queue entry's primary key (0 if none): where a drain stops."""
    return int(PendingPurge.objects.aggregate(top=Max("pk"))["top"] or 0)


@_guarded
def queued(limit: int, upto: int) -> list[str]:
    """Queued deletions up to primary key ``upto``, in flight or not (a drain does all)."""
    rows = PendingPurge.objects.filter(pk__lte=upto).order_by("pk")
    return list(rows.values_list("key_hash", flat=True)[:limit])


@_guarded
def unqueue(key_hashes: Sequence[str]) -> None:
    with _one_statement():
        PendingPurge.objects.filter(key_hash__in=list(key_hashes)).delete()


@_guarded
def queue_exists(*, settled_only: bool = False) -> bool:
    """Is a Redis deletion queued?  ``settled_only``: pending ones (see :func:`_due`)."""
    return bool((_due() if settled_only else PendingPurge.objects.all()).exists())


@_guarded
def queue_length() -> int:
    return int(_due().count())


# Cleanup ---------------------------------------------------------------------


@_guarded
def cleanup_window(first: int, size: int, now: datetime) -> tuple[int, list[str]]:
    """Delete rows past retention and end expired ones among primary keys ``[first, first+size)``.

    Returns ``(deleted, ended)``: the hashes of the rows it ended, queued for
    Redis like :func:`end_rows`.
    """
    cutoff = now - timedelta(days=conf.ENDED_RETENTION_DAYS)
    window = UserSession.objects.filter(pk__gte=first, pk__lt=first + size)
    with transaction.atomic(using=_db()):
        # End first, so that a row deleted below was ended (its Redis copy too).
        expired = window.filter(ended_at__isnull=True).exclude(active_q(now))
        hashes = list(expired.values_list("key_hash", flat=True))
        window.filter(key_hash__in=hashes).update(ended_at=now, end_reason=str(EndReason.EXPIRED))
        _queue(hashes)  # the outbox: see end_rows
        deleted = window.filter(Q(ended_at__lt=cutoff) | Q(expires_at__lt=cutoff)).delete()[0]
    return deleted, hashes


@_guarded
def pk_bounds() -> tuple[int | None, int | None]:
    bounds = UserSession.objects.aggregate(low=Min("pk"), high=Max("pk"))
    return bounds["low"], bounds["high"]
