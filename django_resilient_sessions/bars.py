"""Adoption bars: ends that must reach the sessions still in ``PREVIOUS_ENGINE``.

Ending a session here cannot reach the sessions the previous engine still
keeps, not adopted yet: their keys are unknown here until a request brings
them.  So while ``PREVIOUS_ENGINE`` is set, two kinds of end leave an
:class:`~.models.AdoptionBar` for the user, written in the same transaction as
the end (a ledger that cannot write it makes the end fail visibly, as any end
does):

* a revocation of a user's sessions (:func:`.tracking.end_user_sessions`:
  "sign out other devices", a password change, deleting the user;
  ``revokesessions``): the user's sessions in the previous store were issued
  before it, so none of them is adopted logged in afterwards;
* the end of a session adopted from a signed cookie (logout, revocation,
  expiry, the session limit): each save had re-signed that cookie, and every
  earlier value is still a valid signed cookie for ``SESSION_COOKIE_AGE``;
  they were all signed before the end, so none of them is adopted either.

Adoption (lazy and bulk) then refuses a session of the previous store whose
login names a barred user (``_auth_user_id``, whether or not Django would still
honour that login) when it was issued before the bar: for a table or a cache
every one of them (their issue time is unknown, and the switch came first);
for a signed cookie, those whose signing time is not after the bar.  A refused
session is over: it is not adopted, not even its anonymous data, and is
recorded as adopted and deleted from the previous store.

Bars are lifted by ``clearsessions`` once they cannot refuse anything: all of
them once ``PREVIOUS_ENGINE`` is unset; with a signed-cookie previous engine,
those older than ``SESSION_COOKIE_AGE`` (every cookie signed before is expired).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db.models import QuerySet
from django.utils import timezone

from . import engines
from .conf import conf
from .dbaccess import batches, db, guarded
from .models import AdoptionBar, UserSession

__all__ = [
    "after_end",
    "barred",
    "clear",
    "key_of",
    "lock_users",
    "pks_of",
    "raise_for",
    "refuses",
    "refuses_login",
]


def key_of(user: Any) -> str:
    """The key a bar names a user by: its primary key as a string (``_auth_user_id``)."""
    return str(user.pk)


def watching() -> bool:
    """Are bars kept (``PREVIOUS_ENGINE`` is set)?"""
    return conf.PREVIOUS_ENGINE is not None


@functools.lru_cache(maxsize=8)
def _signed(path: str) -> bool:
    try:
        return engines.kind_of(engines.store_class(path)) == engines.SIGNED
    except ImproperlyConfigured:
        return False  # unusable (check E013): nothing is adopted from it anyway


def _bars() -> QuerySet[AdoptionBar]:
    """Bars on the ledger's database, for reads too (as ``ledger`` reads its rows)."""
    bars: QuerySet[AdoptionBar] = AdoptionBar.objects.using(db())
    return bars


def previous_is_signed() -> bool:
    path = conf.PREVIOUS_ENGINE
    return path is not None and _signed(path)


# Raising bars (inside the caller's transaction: no guard of their own) ---------------------


def raise_for(user_keys: Iterable[str], now: datetime) -> None:
    """Bar these users' sessions of the previous store issued up to ``now``."""
    keys = sorted(set(user_keys))
    if not keys:
        return
    _bars().bulk_create(
        [AdoptionBar(user_key=key, since=now) for key in keys], ignore_conflicts=True
    )
    # An existing bar moves to the latest time, never back.
    _bars().filter(user_key__in=keys, since__lt=now).update(since=now)


def after_end(key_hashes: Sequence[str], now: datetime) -> None:
    """These rows are about to end: bar the users of those adopted from a signed cookie.

    Called in the ending transaction, before the rows are marked ended.  Costs
    nothing unless the previous engine keeps its sessions in signed cookies.
    """
    if not key_hashes or not previous_is_signed():
        return
    users: list[Any] = []
    for batch in batches(list(key_hashes)):
        rows = UserSession.objects.using(db()).filter(
            key_hash__in=batch, ended_at__isnull=True, signed_origin=True
        )
        users.extend(rows.values_list("user_id", flat=True))
    raise_for((str(pk) for pk in users), now)


def lock_users(user_pks: Sequence[Any]) -> None:
    """Lock these users' rows (``SELECT ... FOR UPDATE``) in the caller's transaction.

    A revocation and an adoption of the same user take this lock before they
    read what the other writes (the user's live rows, the user's bar), so an
    adoption that commits during a revocation is either ended by it or refused.
    """
    if user_pks:
        users = _user_model()._default_manager.using(db())
        rows = users.select_for_update().filter(pk__in=list(user_pks))
        list(rows.order_by("pk").values("pk"))  # in one order: two lockers cannot deadlock


# Reading bars ------------------------------------------------------------------------------


def refuses(since: float | None, issued_at: float | None) -> bool:
    """Does a bar raised at ``since`` (unix time; ``None``: none) refuse a session of the
    previous store issued at ``issued_at`` (``None``: unknown, before any bar)?"""
    return since is not None and (issued_at is None or issued_at <= since)


def _timestamp(value: datetime) -> float:
    if timezone.is_naive(value):
        value = timezone.make_aware(value)
    return value.timestamp()


@guarded
def barred(user_keys: Iterable[str]) -> dict[str, float]:
    """The bars of these users: ``{user key: since (unix time)}``."""
    keys = sorted(set(user_keys))
    found = _bars().filter(user_key__in=keys).values_list("user_key", "since")
    return {key: _timestamp(since) for key, since in found}


@guarded
def refuses_login(user_key: str, issued_at: float | None) -> bool:
    """Inside an adoption's transaction: is a login of ``user_key`` (the session's
    ``_auth_user_id``) issued at ``issued_at`` barred?  The user's row, if there is
    one, is locked first (see :func:`lock_users`)."""
    lock_users(pks_of([user_key]))
    since = _bars().filter(user_key=user_key).values_list("since", flat=True).first()
    return refuses(None if since is None else _timestamp(since), issued_at)


def pks_of(user_keys: Iterable[str]) -> list[Any]:
    """The primary keys these user keys stand for (those that cannot be one left out)."""
    field = _user_model()._meta.pk
    assert field is not None
    pks = []
    for key in user_keys:
        try:
            pks.append(field.to_python(key))
        except (ValidationError, ValueError, TypeError):
            continue  # no user has it: nothing to lock
    return pks


def _user_model() -> type[Any]:
    model = UserSession._meta.get_field("user").related_model
    assert isinstance(model, type)
    return model


# Lifting them ------------------------------------------------------------------------------


@guarded
def clear(now: datetime | None = None) -> int:
    """Delete the bars that can no longer refuse anything; returns how many."""
    if not watching():
        return int(_bars().all().delete()[0])
    if previous_is_signed():
        cutoff = (now or timezone.now()) - timedelta(seconds=settings.SESSION_COOKIE_AGE)
        return int(_bars().filter(since__lt=cutoff).delete()[0])
    return 0
