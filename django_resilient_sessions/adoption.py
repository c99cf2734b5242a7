"""Adoption: a session of ``PREVIOUS_ENGINE`` taken over by this engine, once.

When a request's key is unknown here (no Redis copy, no tombstone, no backup,
no ledger row: :attr:`.trust.Serve.ADOPT`), :func:`adopt` looks it up in the
previous engine (:mod:`.previous`).  If that engine keeps a live session under
it, the session is taken over:

1. its login, if any, is resolved as ``django.contrib.auth.get_user()`` would
   (a backend no longer in ``AUTHENTICATION_BACKENDS``, a deleted or inactive
   user, or a session auth hash that no longer matches, after a password
   change, drops the login, as Django would);
2. in one transaction: an :class:`~.models.AdoptedSession` record (unique on
   the key's hash: of two requests adopting it at once, the second fails here
   and loads again what the first adopted), the login's ``UserSession`` row
   through :func:`.ledger.start` as at any login (session limit, the request's
   device), and, before the commit, the Redis copy;
3. then the session is deleted from the previous store, and the request's
   response carries a fresh backup.

A login the ledger cannot record is not a login: nothing is adopted, the
previous store keeps the session and the request keeps its cookie, so the next
request adopts it.  A signed-cookie session (the cookie value is the session,
and cannot be revoked) is adopted under a new key; the record on the old
value's hash refuses that cookie ever after.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    load_backend,
)
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, transaction
from django.utils.crypto import constant_time_compare

from . import engines, health, ledger, lifecycle, previous, tracking
from .cachecopy import CacheRead, Entry, hash_key
from .conf import UNTRACKED_KEY, conf
from .dbaccess import db
from .exceptions import CacheUnavailable, LedgerUnavailable
from .models import AdoptedSession
from .trust import Cache

if TYPE_CHECKING:
    from .engine.loading import Loading

__all__ = ["ADOPTED_TAG", "adopt", "enabled", "resolve_user"]

logger = logging.getLogger("django_resilient_sessions")

#: The backup fingerprint an adopted Redis copy is stored with: no backup has it,
#: so the client's first request gets a fresh backup.
ADOPTED_TAG = b"adopted\x00\x00\x00\x00\x00"
#: The version an adopted session starts at (its row's backup version too).
VERSION = 1
#: Seconds after an adoption during which a request that finds the key adopted
#: by another is taken to be racing it (whose response sets the cookies): its own
#: cookies are left alone.  Later, the key is merely dead, and is forgotten.
RACE_SECONDS = 60


class _Taken(Exception):
    """Another request adopted (or ended) this session first."""


def enabled() -> bool:
    return conf.PREVIOUS_ENGINE is not None


def resolve_user(data: dict[str, Any]) -> Any:
    """The user the login in ``data`` stands for, as Django's ``get_user()`` finds it.

    ``None``: no login, or one Django would not honour (its backend is no longer
    configured, its user is gone or inactive, its session auth hash is no longer
    the user's: see :func:`verified`).  A database that fails raises
    ``LedgerUnavailable``: the login cannot be checked, so nothing is adopted.
    """
    user_id, path = data.get(SESSION_KEY), data.get(BACKEND_SESSION_KEY)
    if user_id is None or path not in settings.AUTHENTICATION_BACKENDS:
        return None
    try:
        pk = get_user_model()._meta.pk.to_python(user_id)
        user = load_backend(str(path)).get_user(pk)
    except (ValidationError, ValueError, TypeError):
        return None  # an id that is no user's
    except DatabaseError as error:
        raise LedgerUnavailable(f"the user of an adopted session: {error}") from error
    return user if user is not None and verified(user, data) else None


def verified(user: Any, data: dict[str, Any]) -> bool:
    """Does the session auth hash in ``data`` still vouch for ``user``?

    As ``get_user()`` checks it at every request: a login made before a password
    change (or without a hash, for a user model that has one) is not one.  A hash
    made with a ``SECRET_KEY_FALLBACKS`` key is accepted and replaced in ``data``
    by the current one, as Django does.  Checked before the login is recorded, so
    a stale session never takes a place in the ledger (nor, under
    ``MAX_SESSIONS_PER_USER``, evicts a live one).
    """
    if not hasattr(user, "get_session_auth_hash"):
        return True
    stored = str(data.get(HASH_SESSION_KEY) or "")
    current = user.get_session_auth_hash()
    if stored and constant_time_compare(stored, current):
        return True
    fallbacks = getattr(user, "get_session_auth_fallback_hash", lambda: ())()
    if stored and any(constant_time_compare(stored, other) for other in fallbacks):
        data[HASH_SESSION_KEY] = current
        return True
    logger.warning(
        "A session of the previous engine was adopted without its login: its "
        "session auth hash is no longer the user's (a password change)."
    )
    return False


def expiry_age(store: Any, data: dict[str, Any]) -> int:
    """Seconds an adopted session has left by its ``set_expiry()`` choice.

    A ``_session_expiry`` Django cannot read (garbage in the old store) is
    dropped, with a warning: the default age applies, rather than every later
    save of the session failing.
    """
    try:
        age = store.get_expiry_age(expiry=data.get("_session_expiry"))
        if isinstance(age, int | float) and not isinstance(age, bool):
            return int(age)
    except (ValueError, TypeError, OverflowError):
        pass  # an unreadable value: dropped below
    logger.warning("An adopted session's _session_expiry was unreadable and was dropped.")
    data.pop("_session_expiry", None)
    return int(store.get_session_cookie_age())


def storable(data: dict[str, Any], serializer: Any) -> dict[str, Any]:
    """``data`` without the values ``SESSION_SERIALIZER`` cannot take.

    Django's ``cache`` engine pickles, so its sessions may hold values (a
    ``datetime``, a ``set``) that this engine's copies, serialized with
    ``SESSION_SERIALIZER`` (JSON by default), cannot: those keys are dropped,
    with a warning naming them, rather than the whole session.
    """
    try:
        serializer().dumps(data)
        return data
    # Whatever the serializer raises (TypeError, ValueError...): find the culprits.
    except Exception:
        kept, dropped = {}, []
        for key, value in data.items():
            try:
                serializer().dumps({key: value})
            # As above: this value cannot be kept.
            except Exception:
                dropped.append(key)
            else:
                kept[key] = value
    logger.warning(
        "Adopted session values SESSION_SERIALIZER cannot store were dropped: %s",
        ", ".join(repr(k) for k in dropped),
    )
    return kept


def adopt(store: Loading, read: CacheRead) -> dict[str, Any] | None:
    """Take over the previous engine's session under the store's key, if it has one.

    Returns the session's data, or ``None`` (not adopted: the store serves
    nothing, as for any unknown key).
    """
    old_key = store.session_key
    assert old_key is not None
    old_hash = store.key_hash
    try:
        found = previous.lookup(old_key, cache_reachable=read.state is not Cache.UNREACHABLE)
    except previous.PreviousUnavailable:
        store.keep_cookie = True  # it may be there: adopted once the store answers
        return None
    if found is None:
        # Adopted by a concurrent request meanwhile (and gone from the store)?
        adopted = _adopted_at(old_hash)
        if adopted is None:
            store.keep_cookie = True  # cannot tell
        return _load_again(store, adopted) if adopted else None
    signed = engines.kind_of(engines.store_class(previous.engine())) == engines.SIGNED
    new_key = store._get_new_session_key() if signed else old_key
    data = storable(dict(found.data), store.serializer)
    try:
        user = resolve_user(data)
        recorded, written = _commit(store, old_hash, hash_key(new_key), data, user, read)
    except _Taken:
        return _load_again(store, _adopted_at(old_hash))
    except LedgerUnavailable as error:
        logger.warning("A session of the previous engine was not adopted: %s", error)
        store.keep_cookie = True
        return None
    previous.forget(old_key)
    health.count("sessions_adopted")
    logger.info("Session adopted from %s%s.", previous.engine(), " (a login)" * recorded)
    store._session_key = new_key
    store.adopted_new_key = new_key != old_key
    data = store._use(VERSION, VERSION if written else 0, data, "adopted", in_cache=written)
    store._parent = ADOPTED_TAG if written else store._parent
    if recorded:
        store._served = VERSION  # the row holds that version
    store.needs_backup = True  # the response carries the session's first backup
    return data


def _commit(
    store: Loading, old_hash: str, new_hash: str, data: dict[str, Any], user: Any, read: CacheRead
) -> tuple[bool, bool]:
    """Record the adoption (and its login) and write the Redis copy, in one transaction.

    Returns ``(login recorded, Redis copy written)``.  ``data`` loses a login
    that cannot be kept (no user, or refused by the session limit).
    """
    now = time.time()
    expires_at = now + expiry_age(store, data)
    evicted: list[str] = []
    recorded: bool | None = False
    written = False
    try:
        with transaction.atomic(using=db()):
            try:
                with transaction.atomic(using=db()):
                    AdoptedSession.objects.create(key_hash=old_hash, engine=previous.engine())
            except IntegrityError:
                raise _Taken from None
            if user is None:
                lifecycle.strip_login(data)
            elif not ledger.tracks(user):
                lifecycle.stamp(data, now, expires_at, login=True)
                data[UNTRACKED_KEY] = 1  # as Logins.record_login: served from Redis only
            else:
                recorded, evicted = ledger.start(
                    new_hash,
                    user.pk,
                    expires_at,
                    VERSION,
                    store.client.ip,
                    store.client.user_agent,
                    str(data.get(BACKEND_SESSION_KEY, "")),
                    str(data.get(HASH_SESSION_KEY, "")),
                )
                if recorded:
                    lifecycle.stamp(data, now, expires_at, login=True)
                else:
                    logger.warning("Adopted without its login: the user is at the session limit.")
                    lifecycle.strip_login(data)
            if read.state is not Cache.UNREACHABLE:
                written = _write(store, new_hash, data, int(expires_at - now))
    except DatabaseError as error:
        if written:
            _undo(store, new_hash)
        raise LedgerUnavailable(f"recording an adoption: {error}") from error
    except LedgerUnavailable:
        if written:
            _undo(store, new_hash)
        raise
    tracking.settle(evicted)
    return bool(recorded), written


def _write(store: Loading, key_hash: str, data: dict[str, Any], ttl: int) -> bool:
    """The Redis copy (before the commit, so a request that loses the race finds it)."""
    try:
        other = store._cache.write_back(key_hash, Entry(VERSION, data, ADOPTED_TAG), ttl, "")
    except CacheUnavailable:
        store.degraded = True
        return False
    if other is None:
        return True
    raise _Taken  # a copy or a tombstone is there already: not ours to adopt


def _undo(store: Loading, key_hash: str) -> None:
    """The transaction failed after the Redis copy was written: remove the copy (a
    plain ``DEL``, no tombstone: the session may be adopted at the next request)."""
    try:
        store._cache.drop(key_hash)
    except CacheUnavailable:
        logger.error("An adoption failed, and its Redis copy could not be removed.")


def _adopted_at(key_hash: str) -> float | None:
    """When this key was adopted (unix time; 0.0: never).  ``None``: the database
    cannot tell."""
    try:
        when = (
            AdoptedSession.objects.filter(key_hash=key_hash)
            .values_list("adopted_at", flat=True)
            .first()
        )
    except DatabaseError:
        return None
    return 0.0 if when is None else when.timestamp()


def _load_again(store: Loading, adopted_at: float | None) -> dict[str, Any]:
    """Serve what another request adopted (never adopt twice).

    Within :data:`RACE_SECONDS` of that adoption (or when the database cannot
    say when it was), the other request may still be on its way: its response
    sets the cookies, so this one leaves them alone.  Later, a key that serves
    nothing is a dead one, forgotten as any unknown key is.
    """
    store._adoption_done = True
    data = store._load()  # within the request's one load (counted and traced once)
    if adopted_at is None or time.time() - adopted_at < RACE_SECONDS:
        store.keep_cookie = True  # the other request's response sets the cookies
    return data
