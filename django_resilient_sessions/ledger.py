"""The ledger: every statement the engine runs against ``UserSession``.

Database only (Redis is :mod:`.cachecopy`; :mod:`.tracking` composes the two;
the deletions queued with an end are :mod:`.outbox`).  Every function takes key
hashes, never session keys, and is guarded (:mod:`.dbaccess`): whatever the
database raises becomes :class:`~.exceptions.LedgerUnavailable`.  Each write
runs in its own ``atomic()`` block (a savepoint inside a caller's transaction),
so a failure leaves nothing half done and does not spoil the caller's
transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import BooleanField, ExpressionWrapper, F, Max, Min, Q, QuerySet
from django.db.models.functions import Greatest
from django.utils import timezone

from . import bars, health, outbox
from .conf import conf
from .dbaccess import batches, db, guarded, one_statement, when
from .devices import describe
from .models import EndReason, UserSession, active_q
from .trust import Row

logger = logging.getLogger("django_resilient_sessions")

__all__ = [
    "batches",
    "cleanup_window",
    "end_all",
    "end_rows",
    "end_users",
    "is_active",
    "live_hashes",
    "rekey",
    "row_state",
    "start",
    "touch",
    "tracks",
    "when",
]


def tracks(user: Any) -> bool:
    """Can a ``UserSession`` row reference ``user`` (an instance of its foreign key's model)?"""
    model = UserSession._meta.get_field("user").related_model
    return isinstance(model, type) and isinstance(user, model)


def _rows() -> QuerySet[UserSession]:
    """``UserSession`` rows on the ledger's database, for reads too.

    The router's ``db_for_read`` may name a replica; one that lags would vouch for a
    login that was just ended, or miss one that was just recorded.  The engine reads
    what it decides on from where it writes.
    """
    rows: QuerySet[UserSession] = UserSession.objects.using(db())
    return rows


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
    #: The newest backup version the row has seen served: a copy rebuilt from the row
    #: numbers its saves past it, or their backups would look like rollbacks.
    served: int = 0


def _timestamp(value: datetime) -> float:
    if timezone.is_naive(value):  # USE_TZ = False: in TIME_ZONE (see dbaccess.when)
        value = timezone.make_aware(value, timezone.get_default_timezone())
    return value.timestamp()


#: What a row holds of its login, read in one ``SELECT`` (see :func:`_read`).
_LOGIN_FIELDS = (
    "user_id",
    "auth_backend",
    "auth_hash",
    "created_at",
    "last_activity",
    "expires_at",
    "backup_version",
    "live",
    "end_reason",
)


def _read(key_hash: str) -> tuple[Any, ...] | None:
    """The session's row as :data:`_LOGIN_FIELDS` ("live": :func:`~.models.active_q`)."""
    live = ExpressionWrapper(active_q(), output_field=BooleanField())
    found = list(
        _rows().filter(key_hash=key_hash).annotate(live=live).values_list(*_LOGIN_FIELDS)[:1]
    )
    return found[0] if found else None


def _login(found: tuple[Any, ...]) -> Login | None:
    """The login of an active row, ``None`` for a row recorded before rows kept it."""
    owner, backend, auth_hash, created, seen, expires, served, _, _ = found
    if not (backend and auth_hash):
        return None
    return Login(
        str(owner),
        backend,
        auth_hash,
        _timestamp(created),
        _timestamp(seen),
        _timestamp(expires),
        served,
    )


@guarded
def login_of(key_hash: str) -> tuple[Row, Login | None]:
    """The login this session's row vouches for, if its row is active (one ``SELECT``)."""
    found = _read(key_hash)
    if found is None:
        return Row.MISSING, None
    if not found[7]:
        return _over(found[8]), None
    login = _login(found)
    if login is None:
        return Row.MISSING, None  # recorded before rows kept their login
    return Row.ACTIVE, login


def _over(reason: str) -> Row:
    """A row that is no longer active: ``ENDED``, or ``MISSING`` when it ended because
    the session moved to another engine (``exportsessions --finish``): the key is no
    longer this engine's, and may be adopted back from there (``PREVIOUS_ENGINE``)."""
    return Row.MISSING if reason == str(EndReason.EXPORTED) else Row.ENDED


@guarded
def start(
    key_hash: str,
    user_id: Any,
    expires_at: float,
    version: int,
    ip: str | None,
    agent: str,
    backend: str = "",
    auth_hash: str = "",
    *,
    signed_origin: bool = False,
) -> tuple[bool | None, list[str]]:
    """Record a login on this session (``signed_origin``: adopted from a signed cookie).

    Returns ``(recorded, evicted)``: ``recorded`` is ``False`` when the session
    limit refuses the login, ``None`` when the key's row was ended (a revoked
    key never serves a login again, whoever logs in on it: the caller takes a
    new key and records the login there; a row ended ``exported`` is not one);
    ``evicted`` lists the sessions the limit ended to make room (queued for
    Redis like :func:`end_rows`: the caller deletes the copies and unqueues
    them).  With
    ``MAX_SESSIONS_PER_USER`` set, the user's row is locked (``SELECT ... FOR
    UPDATE``) while the active sessions are counted, so concurrent logins
    cannot pass the limit together.  A lock conflict (SQLite answers
    "database is locked" at once instead of waiting) is retried once.
    """
    login = (backend, auth_hash, signed_origin)
    try:
        try:
            return _start(key_hash, user_id, expires_at, version, ip, agent, login)
        except OperationalError:
            if transaction.get_connection(db()).in_atomic_block:
                raise  # the enclosing transaction is spoilt: nothing to retry in
            logger.warning("Recording a login met a lock conflict; retrying once.")
            time.sleep(0.05)
            return _start(key_hash, user_id, expires_at, version, ip, agent, login)
    except _DeadKey:
        return None, []


class _DeadKey(Exception):
    """The session key's row was ended: no login may bring it back (see :func:`start`)."""


def _start(
    key_hash: str,
    user_id: Any,
    expires_at: float,
    version: int,
    ip: str | None,
    agent: str,
    login: tuple[str, str, bool],
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
        "signed_origin": login[2],
    }
    evicted: list[str] = []
    with transaction.atomic(using=db()):
        if conf.MAX_SESSIONS_PER_USER:
            room = _make_room(pk, key_hash, now)
            if room is None:
                return False, []
            evicted = room
            outbox.add(evicted)  # the outbox: see end_rows
        # Write first (no SELECT): the statement takes the write lock at once.
        again = fields | {"backup_version": Greatest(F("backup_version"), version)}
        # A row ended because its session moved to another engine is no dead key: the
        # session came back from there (adopted again, see ``handback``).
        live = Q(ended_at__isnull=True) | Q(end_reason=str(EndReason.EXPORTED))
        rows = _rows().filter(live, key_hash=key_hash)
        if not rows.update(**again):
            try:
                with transaction.atomic(using=db()):
                    _rows().create(key_hash=key_hash, **fields)
            except IntegrityError:
                if _rows().filter(key_hash=key_hash).exists():
                    raise _DeadKey from None  # ended: evictions above are undone too
                raise
    return True, evicted


def _make_room(user_pk: Any, key_hash: str, now: datetime) -> list[str] | None:
    """End the sessions a new login displaces; ``None`` if the login is refused."""
    limit = conf.MAX_SESSIONS_PER_USER or 0
    list(get_user_model()._default_manager.select_for_update().filter(pk=user_pk).values("pk"))
    others = (
        _rows()
        .filter(active_q(now), user_id=user_pk)
        .exclude(key_hash=key_hash)
        .order_by("last_activity", "pk")
    )
    excess = others.count() - limit + 1
    if excess <= 0:
        return []
    if conf.SESSION_LIMIT_POLICY == "refuse":
        return None
    evicted = list(others.values_list("key_hash", flat=True)[:excess])
    bars.after_end(evicted, now)
    _rows().filter(key_hash__in=evicted).update(ended_at=now, end_reason=str(EndReason.LIMIT))
    return evicted


@guarded
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
    rows = _rows().filter(active_q(), key_hash=key_hash, user_id=_user_pk(user_id))
    with one_statement():
        return bool(rows.update(**fields))


@guarded
def row_state(key_hash: str, user_id: Any, version: int) -> tuple[Row, int, Login | None]:
    """May a backup at ``version`` holding ``user_id`` for this session be trusted?

    One ``SELECT`` by the unique key hash; "active" is :func:`~.models.active_q`.
    Also returns the newest backup version the row has seen served, and, when a
    newer backup than this one was served (``AHEAD``), the login the row vouches
    for (served alone in place of the older backup's data).
    """
    found = _read(key_hash)
    if found is None:
        return Row.MISSING, 0, None
    owner, served, active, reason = found[0], found[6], found[7], found[8]
    if not active:
        return _over(reason), served, None
    if str(owner) != str(user_id):
        return Row.ENDED, served, None
    if version < served:
        return Row.AHEAD, served, _login(found)
    return Row.ACTIVE, served, None


@guarded
def is_active(key_hash: str) -> bool:
    """Does this session hold an active login?"""
    return bool(_rows().filter(active_q(), key_hash=key_hash).exists())


@guarded
def live_hashes(rows: Any) -> list[str]:
    """The key hashes of the rows of ``rows`` (a ``UserSession`` queryset) not yet ended."""
    live = rows.using(db()).filter(ended_at__isnull=True)
    return list(live.values_list("key_hash", flat=True))


@guarded
def end_rows(key_hashes: Sequence[str], reason: str, *, queue: bool = True) -> int:
    """Mark these sessions' rows ended and queue their Redis deletions, in one transaction.

    The queue is an outbox: the caller deletes the Redis copies next and then
    takes them off the queue (:func:`unqueue`); whatever Redis does not take
    stays queued for the drain.  So an end is recorded with its purge, or not
    at all.
    """
    now = timezone.now()
    with transaction.atomic(using=db()):
        ended = _end(list(key_hashes), reason, now, queue=queue)
    _count_ended(ended, reason)
    return ended


def _end(hashes: list[str], reason: str, now: datetime, *, queue: bool = True) -> int:
    """The body of an end, inside the caller's transaction."""
    ended = 0
    for batch in batches(hashes):
        bars.after_end(batch, now)
        ended += (
            _rows()
            .filter(key_hash__in=batch, ended_at__isnull=True)
            .update(ended_at=now, end_reason=reason)
        )
        if queue:
            outbox.add(batch)
    return ended


def _count_ended(ended: int, reason: str) -> None:
    if ended:
        health.count(
            "sessions_ended", ended, label=reason if reason in EndReason.values else "other"
        )


@guarded
def end_users(
    user_pks: Sequence[Any], reason: str, *, keep: Sequence[str] = (), active_only: bool = False
) -> tuple[int, list[str]]:
    """End every session of these users but those in ``keep`` (key hashes), in one
    transaction; returns ``(how many ended, their hashes)``, queued as by :func:`end_rows`.

    ``active_only``: leave alone the rows that expired without being marked ended
    (``clearsessions`` marks them).  While ``PREVIOUS_ENGINE`` is set, the same
    transaction bars these users' sessions still in the previous store
    (:mod:`.bars`), after locking their rows, so that an adoption of one of them
    cannot slip past the revocation.
    """
    now = timezone.now()
    barring = bars.watching()
    with transaction.atomic(using=db()):
        if barring:
            bars.lock_users(user_pks)
        rows = _rows().filter(user_id__in=list(user_pks), ended_at__isnull=True)
        if active_only:
            rows = rows.filter(active_q(now))
        hashes = list(rows.exclude(key_hash__in=list(keep)).values_list("key_hash", flat=True))
        ended = _end(hashes, reason, now)
        if barring:
            bars.raise_for((str(pk) for pk in user_pks), now)
    _count_ended(ended, reason)
    return ended, hashes


@guarded
def end_all(first: int, size: int, reason: str) -> int:
    """End every row not ended yet among primary keys ``[first, first+size)`` (no
    Redis deletion queued: the caller deals with Redis as a whole)."""
    window = _rows().filter(pk__gte=first, pk__lt=first + size, ended_at__isnull=True)
    with one_statement():
        ended: int = window.update(ended_at=timezone.now(), end_reason=reason)
    return ended


@guarded
def rekey(old_hash: str, new_hash: str) -> int:
    """Move an active row to the session's new key (``cycle_key``), queueing the old key's purge.

    Both in one transaction (the outbox of :func:`end_rows`): either the old
    key is dead in the ledger and queued for Redis, or nothing changed.
    """
    with transaction.atomic(using=db()):
        moved: int = _rows().filter(active_q(), key_hash=old_hash).update(key_hash=new_hash)
        outbox.add([old_hash])
    return moved


# Cleanup ---------------------------------------------------------------------


@guarded
def cleanup_window(first: int, size: int, now: datetime) -> tuple[int, list[str]]:
    """Delete rows past retention and end expired ones among primary keys ``[first, first+size)``.

    Returns ``(deleted, ended)``: the hashes of the rows it ended (not queued: see
    below; the caller tombstones them, best effort).
    """
    cutoff = now - timedelta(days=conf.ENDED_RETENTION_DAYS)
    window = _rows().filter(pk__gte=first, pk__lt=first + size)
    with transaction.atomic(using=db()):
        # End first, so that a row deleted below was ended (its Redis copy too).
        expired = window.filter(ended_at__isnull=True).exclude(active_q(now))
        found = list(expired.values_list("pk", "key_hash", "expires_at"))
        hashes = [key_hash for _, key_hash, _ in found]
        bars.after_end(hashes, now)
        # By primary key: the rows read above, whatever happened to them since; not
        # those past retention, which the delete below takes in this transaction.
        kept = [pk for pk, _, expires_at in found if expires_at >= cutoff]
        window.filter(pk__in=kept).update(ended_at=now, end_reason=str(EndReason.EXPIRED))
        # No outbox entry: past the grace, their Redis copies have expired too (see
        # active_q), so there is nothing a queued deletion would have to finish.
        deleted = window.filter(Q(ended_at__lt=cutoff) | Q(expires_at__lt=cutoff)).delete()[0]
    return deleted, hashes


@guarded
def pk_bounds() -> tuple[int | None, int | None]:
    bounds = _rows().aggregate(low=Min("pk"), high=Max("pk"))
    return bounds["low"], bounds["high"]
