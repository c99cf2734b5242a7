"""Adoption: a session of ``PREVIOUS_ENGINE`` taken over by this engine, once.

When a request's key is unknown here (no Redis copy, no tombstone, no backup,
no ledger row: :attr:`.trust.Serve.ADOPT`), :func:`adopt` looks it up in the
previous engine (:mod:`.previous`).  If that engine keeps a live session under
it, the session is taken over:

1. its login, if any, is resolved as ``django.contrib.auth.get_user()`` would
   (a backend no longer in ``AUTHENTICATION_BACKENDS``, a deleted or inactive
   user, or a session auth hash that no longer matches, after a password
   change, drops the login, as Django would); a login naming a user whose
   sessions were ended after it was issued (an adoption bar, :mod:`.bars`)
   refuses the whole session: it is recorded as adopted and deleted from the previous
   store, and nothing is served;
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
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from . import bars, engines, health, ledger, lifecycle, previous, tracking
from .cachecopy import CacheRead, Entry, hash_key
from .conf import UNTRACKED_KEY, conf
from .dbaccess import db
from .exceptions import CacheUnavailable, LedgerUnavailable
from .models import AdoptedSession, EndReason
from .trust import Cache
from .vetting import expiry_age, resolve_user, storable, verified

if TYPE_CHECKING:
    from .engine.loading import Loading

__all__ = [
    "ADOPTED_TAG",
    "RACE_SECONDS",
    "adopt",
    "adopted_at",
    "enabled",
    "expiry_age",
    "load_again",
    "resolve_user",
    "storable",
    "take_over",
    "verified",
]

logger = logging.getLogger("django_resilient_sessions")
security_logger = logging.getLogger("django.security.SuspiciousSession")

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


def adopt(store: Loading, read: CacheRead) -> dict[str, Any] | None:
    """Take over the previous engine's session under the store's key, if it has one.

    Returns the session's data, or ``None`` (not adopted: the store serves
    nothing, as for any unknown key).
    """
    old_key = store.session_key
    assert old_key is not None
    try:
        found = previous.lookup(old_key, cache_reachable=read.state is not Cache.UNREACHABLE)
    except previous.PreviousUnavailable:
        store.keep_cookie = True  # it may be there: adopted once the store answers
        return None
    if found is None:
        # Adopted by a concurrent request meanwhile (and gone from the store)?
        adopted = adopted_at(store.key_hash)
        if adopted is None:
            store.keep_cookie = True  # cannot tell
        return load_again(store, adopted) if adopted else None
    return take_over(store, read, found)


@dataclass
class _Outcome:
    recorded: bool = False  # the login has its ledger row
    written: bool = False  # the Redis copy is written
    refused: bool = False  # its user's sessions were ended since it was issued (bars)


def take_over(
    store: Loading, read: CacheRead, found: previous.Found, *, over: bool = False
) -> dict[str, Any] | None:
    """Adopt ``found``, the previous engine's session under the store's key.

    ``over``: this engine still holds a copy of that key, from before the site
    left for the previous engine (:mod:`.handback`); the previous store's is
    newer, and replaces it.
    """
    old_key = store.session_key
    assert old_key is not None
    old_hash = store.key_hash
    signed = engines.kind_of(engines.store_class(previous.engine())) == engines.SIGNED
    new_key = store._get_new_session_key() if signed else old_key
    data = storable(dict(found.data), store.serializer)
    try:
        user = resolve_user(data)
        done = _commit(store, (old_hash, hash_key(new_key)), data, user, read, found, over=over)
    except _Taken:
        return load_again(store, adopted_at(old_hash))
    except LedgerUnavailable as error:
        logger.warning("A session of the previous engine was not adopted: %s", error)
        store.keep_cookie = True
        return None
    previous.forget(old_key)
    if done.refused:
        security_logger.warning(
            "A session of the previous engine was refused: its user's sessions were ended "
            "after it was issued."
        )
        if over:
            tracking.remove([old_hash], queue=True)  # the copy held from before is over too
        return None
    health.count("sessions_adopted")
    logger.info("Session adopted from %s%s.", previous.engine(), " (a login)" * done.recorded)
    store._session_key = new_key
    store.adopted_new_key = new_key != old_key
    data = store._use(
        VERSION, VERSION if done.written else 0, data, "adopted", in_cache=done.written
    )
    store._parent = ADOPTED_TAG if done.written else store._parent
    if done.recorded:
        store._served = VERSION  # the row holds that version
    store.needs_backup = True  # the response carries the session's first backup
    return data


def _commit(
    store: Loading,
    hashes: tuple[str, str],
    data: dict[str, Any],
    user: Any,
    read: CacheRead,
    found: previous.Found,
    *,
    over: bool,
) -> _Outcome:
    """Record the adoption (and its login) and write the Redis copy, in one transaction.

    ``hashes``: the old key's and the new key's.  ``data`` loses a login that
    cannot be kept (no user, or refused by the session limit).  A barred login
    (:mod:`.bars`) refuses the whole session: only the record is written.
    """
    old_hash, new_hash = hashes
    now = time.time()
    expires_at = now + expiry_age(store, data)
    evicted: list[str] = []
    done = _Outcome()
    try:
        with transaction.atomic(using=db()):
            _record(old_hash, over=over)
            if over:
                # What this engine held of it is over: the previous store's copy replaces it.
                ledger.end_rows([new_hash], str(EndReason.EXPORTED), queue=False)
            claimed = found.data.get(SESSION_KEY)
            if claimed is not None and bars.refuses_login(str(claimed), found.issued_at):
                done.refused = True
                return done
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
                    signed_origin=new_hash != old_hash,
                )
                done.recorded = bool(recorded)
                if done.recorded:
                    lifecycle.stamp(data, now, expires_at, login=True)
                else:
                    logger.warning("Adopted without its login: the user is at the session limit.")
                    lifecycle.strip_login(data)
            if read.state is not Cache.UNREACHABLE:
                expected = read.sha if over else ""
                done.written = _write(store, new_hash, data, int(expires_at - now), expected)
    except DatabaseError as error:
        if done.written:
            _undo(store, new_hash)
        raise LedgerUnavailable(f"recording an adoption: {error}") from error
    except LedgerUnavailable:
        if done.written:
            _undo(store, new_hash)
        raise
    tracking.settle(evicted)
    return done


def _record(old_hash: str, *, over: bool) -> None:
    """The ``AdoptedSession`` record: unique, so of two requests adopting at once the
    second fails here (``_Taken``).  ``over``: a record left from before the site left
    (older than a race) no longer stands in the way."""
    try:
        with transaction.atomic(using=db()):
            if over:
                race = timezone.now() - timedelta(seconds=RACE_SECONDS)
                AdoptedSession.objects.filter(key_hash=old_hash, adopted_at__lt=race).delete()
            AdoptedSession.objects.create(key_hash=old_hash, engine=previous.engine())
    except IntegrityError:
        raise _Taken from None


def _write(store: Loading, key_hash: str, data: dict[str, Any], ttl: int, expected: str) -> bool:
    """The Redis copy (before the commit, so a request that loses the race finds it);
    ``expected``: the SHA-1 of the copy it replaces ("" for none)."""
    try:
        other = store._cache.write_back(key_hash, Entry(VERSION, data, ADOPTED_TAG), ttl, expected)
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


def adopted_at(key_hash: str) -> float | None:
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


def load_again(store: Loading, when: float | None) -> dict[str, Any]:
    """Serve what another request adopted (never adopt twice).

    Within :data:`RACE_SECONDS` of that adoption (or when the database cannot
    say when it was), the other request may still be on its way: its response
    sets the cookies, so this one leaves them alone.  Later, a key that serves
    nothing is a dead one, forgotten as any unknown key is.
    """
    store._adoption_done = True
    data = store._load()  # within the request's one load (counted and traced once)
    if when is None or time.time() - when < RACE_SECONDS:
        store.keep_cookie = True  # the other request's response sets the cookies
    return data
