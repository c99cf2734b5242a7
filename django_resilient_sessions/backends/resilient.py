"""The resilient session engine (``SESSION_ENGINE``).

A session lives in Redis and, after every save, in an encrypted backup cookie
that :mod:`..middleware` carries.  With Redis healthy this engine behaves like
``django.contrib.sessions.backends.cache``: one ``GET`` per load, one ``SET``
per save, no database query.  Which copy serves a request otherwise, whether a
backup's login is trusted and what is written back is decided by
:func:`..trust.decide`; this class gathers the states it needs and carries out
its answers.  Logins, logouts and revocations are recorded in the
``UserSession`` ledger, durably or not at all (:class:`~..exceptions.LedgerUnavailable`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.base import (
    VALID_KEY_CHARS,
    CreateError,
    SessionBase,
    UpdateError,
)
from django.utils.crypto import get_random_string

from .. import (  # _installed first: a clear error when the app is not installed
    _installed,  # noqa: F401
    codec,
    cookies,
    health,
    ledger,
    lifecycle,
    purges,
    signals,
    tracking,
    trust,
)
from ..breaker import CLOSED
from ..cachecopy import CacheRead, Entry, SessionCache, hash_key
from ..client import ClientInfo
from ..conf import (
    LOGIN_AT_KEY,
    ROW_EXPIRY_KEY,
    ROW_HASH_KEY,
    SEEN_AT_KEY,
    UNTRACKED_KEY,
    conf,
)
from ..exceptions import CacheUnavailable, LedgerUnavailable, SessionLimitExceeded
from ..models import EndReason
from ..trust import Cache, Row, Serve, Store, Write

__all__ = ["ClientInfo", "SessionStore"]

logger = logging.getLogger("django_resilient_sessions")
security_logger = logging.getLogger("django.security.SuspiciousSession")


class SessionStore(SessionBase):
    """Redis first, encrypted backup cookie second; see the module docstring."""

    def __init__(
        self,
        session_key: str | None = None,
        *,
        backup: str | None = None,
        client: ClientInfo | None = None,
    ) -> None:
        self._hashed: tuple[str | None, str] = (None, "")
        super().__init__(session_key)
        self._cache = SessionCache.of(settings.SESSION_CACHE_ALIAS, self.serializer)
        self.backup_token = backup
        self.client = client or ClientInfo()
        #: True when this request could not use the cache.
        self.degraded = False
        #: Where the data came from: "cache", "backup" or None (new or not loaded).
        self.source: str | None = None
        #: The backup made by the last save (None: none fits, or not saved).
        self.sealed: cookies.Sealed | None = None
        #: The request's backup was refused: the middleware deletes it.
        self.backup_rejected = False
        #: The client's backup is missing or behind: the middleware saves to renew it.
        self.needs_backup = False
        #: Leave the cookies alone although the session is empty.
        self.keep_cookie = False
        #: A renewal found the session ended meanwhile: the middleware sets nothing.
        self.interrupted = False
        self._version = 0  # of the copy in hand
        self._base = 0  # the Redis version it descends from (0: never in Redis)
        self._parent = NO_TAG  # fingerprint of the copy in hand (its backup's token)
        self._served = 0  # the newest backup version the ledger saw served
        # A session refused for this request but perhaps alive (key, holds a login?).
        self._shadow: tuple[str, bool | None] | None = None
        self._ledger_login: ledger.Login | None = None
        self._partial = False
        self._user: str | None = None  # the login the ledger holds for this key
        self._loaded = False
        self._in_cache = False  # Redis holds the copy in hand
        # A backup's login the ledger could not vouch for: kept out of the
        # session (fail closed), sealed into the next backup, so it comes back
        # once the database answers.
        self._withheld: dict[str, Any] = {}

    @property
    def key_hash(self) -> str:
        key = self.session_key
        if key != self._hashed[0]:
            self._hashed = (key, hash_key(key) if key else "")
        return self._hashed[1]

    # Values: what cannot be kept is refused where it is set -----------------

    def __setitem__(self, key: str, value: Any) -> None:
        self._check_storable({key: value})
        super().__setitem__(key, value)

    async def aset(self, key: str, value: Any) -> None:
        self._check_storable({key: value})
        await super().aset(key, value)

    def update(self, dict_: Any) -> None:  # type: ignore[override]  # as SessionBase
        self._check_storable(dict(dict_))
        super().update(dict_)

    async def aupdate(self, dict_: Any) -> None:
        self._check_storable(dict(dict_))
        await super().aupdate(dict_)

    def _check_storable(self, values: dict[str, Any]) -> None:
        """Both copies go through ``SESSION_SERIALIZER``, so a view sees the same
        values whichever served it; a value it cannot take fails here, not later."""
        self._serialize(values)

    def _serialize(self, values: dict[str, Any]) -> bytes:
        try:
            payload: bytes = self.serializer().dumps(values)
        # Serializers raise TypeError, ValueError (circular), OverflowError...:
        # whatever it is, the value cannot be kept, and the caller is told now.
        except Exception as error:
            names = ", ".join(repr(k) for k in values)
            raise TypeError(
                f"Session value for {names} cannot be stored: {settings.SESSION_SERIALIZER} "
                f"cannot serialize it ({error}). Store JSON types (str, int, float, bool, "
                "None, list, dict with str keys), or set SESSION_SERIALIZER."
            ) from error
        return payload

    def _get_new_session_key(self) -> str:
        # No exists() round trip: SET NX in create() detects a collision.
        return get_random_string(32, VALID_KEY_CHARS)

    # Loading ---------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        self._loaded = True
        purges.check_if_due(self._cache)
        key_hash = self.key_hash
        try:
            read = self._cache.read(key_hash)
        except CacheUnavailable:
            self.degraded = True
            read = CacheRead(Cache.UNREACHABLE)
        backup, state = self._backup_against(read)
        login = backup is not None and SESSION_KEY in backup.data
        decision = trust.decide(read.state, state, login, fail_closed=conf.FAIL_CLOSED)
        if decision.serve is Serve.ASK_LEDGER:
            row = self._row(key_hash, backup)
            decision = trust.decide(read.state, state, login, row, fail_closed=conf.FAIL_CLOSED)
        return self._carry_out(decision, read, backup)

    def _backup_against(self, read: CacheRead) -> tuple[codec.Backup | None, trust.Backup]:
        """The request's backup, opened unless it is the one saved with the Redis copy."""
        token = self.backup_token
        entry = read.entry
        if entry is None:
            current = False
        elif token:
            current = codec.token_tag(token) == entry.tag
        else:
            current = entry.tag == NO_TAG  # saved without a backup: none fits, none to renew
        backup = None
        if token and not current and read.state is not Cache.TOMBSTONED and self.session_key:
            budget = cookies.max_token_chars()
            backup = codec.open_token(token, self.session_key, self.serializer, budget)
        state = trust.classify(
            read.state,
            token=bool(token),
            current=current,
            opened=backup is not None,
            version=backup.version if backup else 0,
            base=backup.base if backup else 0,
            cache_version=entry.version if entry else 0,
            child=backup is not None and entry is not None and backup.parent == entry.tag,
        )
        return backup, state

    def _row(self, key_hash: str, backup: codec.Backup | None) -> Row:
        """The ledger's answer: for a backup's login, or, without a backup, for the key."""
        try:
            if backup is None:
                row, self._ledger_login = ledger.login_of(key_hash)
                return row
            row, self._served = ledger.row_state(key_hash, backup.data[SESSION_KEY], backup.version)
        except LedgerUnavailable:
            return Row.UNREADABLE
        return row

    def _carry_out(
        self, decision: trust.Decision, read: CacheRead, backup: codec.Backup | None
    ) -> dict[str, Any]:
        key_hash = self.key_hash
        path = _PATHS[read.state]
        if decision.reject:
            self._refuse(key_hash, decision.reason, path)
        elif decision.reason == trust.ROLLBACK:
            security_logger.warning("Session backup refused: %s.", decision.reason)
            health.count("backups_rejected")
        if decision.purge:
            self._purge(key_hash)
        self.keep_cookie = decision.keep_cookies
        if decision.serve is Serve.CACHE:
            assert read.entry is not None
            self.needs_backup = decision.renew
            return self._use_entry(read.entry, backup.version if backup else 0)
        if decision.serve is Serve.LEDGER_LOGIN:
            return self._use_ledger_login(key_hash, read, decision)
        if decision.serve is Serve.NOTHING or backup is None:
            if decision.keep_cookies and self.session_key:
                # Not served, but not over either: a logout must still end it.
                login = None if backup is None else SESSION_KEY in backup.data
                self._shadow = (self.session_key, login)
            return self._forget_key()
        data = backup.data
        if decision.serve is Serve.BACKUP_WITHOUT_LOGIN:
            logger.warning("Ledger unavailable: backup restored without its login.")
            self._withheld = lifecycle.strip_login(data)
        elif decision.reason == trust.TRUSTED_UNCHECKED:
            logger.warning("Ledger unavailable: backup login trusted (FAIL_CLOSED off).")
        if backup.partial and read.entry is not None:
            essential = set(conf.ESSENTIAL_KEYS)
            data = {k: v for k, v in read.entry.data.items() if k not in essential} | data
        self._partial = backup.partial and read.entry is None
        self._parent = codec.token_tag(self.backup_token or "")
        data = self._use(backup.version, backup.base, data, "backup", in_cache=False)
        if self.session_key is None:
            return data  # timed out
        health.count("restored_from_backup")
        _send(signals.session_restored, key_hash=key_hash, reason=path, partial=backup.partial)
        if decision.write is not Write.NONE:
            entry = Entry(self._version, data, codec.token_tag(self.backup_token or ""))
            return self._write_back(key_hash, read, entry, backup.expires_at - int(time.time()))
        return data

    def _use_entry(self, entry: Entry, floor: int) -> dict[str, Any]:
        """Serve the Redis copy.  Versions only go up: past ``floor`` (the version of
        a backup it won over) and past any the ledger saw served."""
        data = self._use(entry.version, entry.version, entry.data, "cache", in_cache=True)
        if self.session_key is not None:
            self._parent = entry.tag
            self._version = max(self._version, floor, self._served)
        return data

    def _use(
        self, version: int, base: int, data: dict[str, Any], source: str, *, in_cache: bool
    ) -> dict[str, Any]:
        """Take ``data`` as the session, unless its login is past a timeout."""
        now = time.time()
        reason = lifecycle.timed_out(data, now)
        if reason is not None:
            self._end_quietly(self.key_hash, reason, in_redis=in_cache or base > 0)
            return self._forget_key()
        self._version, self._base = version, base
        self._user = data.get(SESSION_KEY)
        self.source = source
        self._in_cache = in_cache
        self.needs_backup = self.needs_backup or lifecycle.renewal_due(data, now)
        return data

    def _use_ledger_login(
        self, key_hash: str, read: CacheRead, decision: trust.Decision
    ) -> dict[str, Any]:
        """Serve the login alone, as its row has it (no copy of the session at hand).

        Version 0 and no lineage: any backup of this session wins over it, and
        what is written on top of it is a branch of its own.
        """
        found = self._ledger_login
        assert found is not None
        data = {
            SESSION_KEY: found.user_id,
            BACKEND_SESSION_KEY: found.backend,
            HASH_SESSION_KEY: found.auth_hash,
            LOGIN_AT_KEY: int(found.login_at),
            SEEN_AT_KEY: int(found.seen_at),
            ROW_EXPIRY_KEY: int(found.expires_at),
            ROW_HASH_KEY: lifecycle.fingerprint(found.auth_hash),
        }
        data = self._use(0, 0, data, "ledger", in_cache=False)
        if self.session_key is None:
            return data  # timed out
        health.count("restored_from_ledger")
        if decision.write is not Write.NONE:
            ttl = int(found.expires_at - time.time())
            return self._write_back(key_hash, read, Entry(0, data, NO_TAG), ttl)
        return data

    def _write_back(self, key_hash: str, read: CacheRead, entry: Entry, ttl: int) -> dict[str, Any]:
        data = entry.data
        try:
            other = self._cache.write_back(key_hash, entry, ttl, read.sha)
        except CacheUnavailable as error:
            self.degraded = True
            if error.attempted:
                self._base = self._version  # Redis may hold it now (see _save)
            return data
        if other is None:
            health.count("written_back")
            self._in_cache, self._base = True, self._version
            self._parent = entry.tag
            # The client's backup is now a Redis copy: a fresh one descends from
            # it, so a process still on backups cannot leave it behind.
            self.needs_backup = True
            return data
        if other.state is Cache.TOMBSTONED:
            self._refuse(key_hash, trust.ENDED, _PATHS[Cache.TOMBSTONED])
            return self._forget_key()
        if other.entry is None:
            return data  # an unreadable value is in the way: stay on the backup
        # Another request wrote a copy meanwhile: it wins.
        self.needs_backup = True
        return self._use_entry(other.entry, self._version)

    def _forget_key(self) -> dict[str, Any]:
        self._session_key = None
        self._version = self._base = 0
        self._user = None
        return {}

    def _refuse(self, key_hash: str, reason: str, path: str) -> None:
        if reason == trust.ROW_MISSING:
            security_logger.warning("Backup of a login with no tracking row refused.")
        elif reason in (trust.ENDED, trust.ROW_ENDED):
            security_logger.warning("Backup of an ended or revoked session refused.")
        # (an invalid backup was logged by the codec)
        self.backup_rejected = True
        health.count("backups_rejected")
        if reason != "invalid":
            _send(signals.backup_rejected, key_hash=key_hash, reason=path)

    def _purge(self, key_hash: str) -> None:
        """The ledger says this session ended, but Redis kept its copy: drop it."""
        tracking.remove([key_hash], queue=True)

    def _end_quietly(self, key_hash: str, reason: str, *, in_redis: bool) -> None:
        """End a timed-out login; its own stamps refuse it again if this fails."""
        try:
            tracking.end_one(key_hash, reason, login=True, in_redis=in_redis)
        except LedgerUnavailable:
            logger.exception("Could not record the end of a timed-out session.")

    # Logins ----------------------------------------------------------------

    def record_login(self, user: Any = None) -> None:
        """Record the login ``django.contrib.auth.login()`` just put in the session.

        Called from the ``user_logged_in`` signal.  If the ledger cannot take
        it, the login is taken out of the session and ``LedgerUnavailable`` (or
        ``SessionLimitExceeded``) is raised: a login that cannot be recorded is
        not a login.  A user of another model than the ledger's (a custom
        authentication backend's) is not tracked: served from Redis, never
        from a backup.
        """
        data = self._session  # type: ignore[attr-defined]
        user_id = data.get(SESSION_KEY)
        if user_id is None:
            return
        self._get_or_create_session_key()  # type: ignore[attr-defined]
        now = time.time()
        expires_at = now + self.get_expiry_age()
        if user is not None and not ledger.tracks(user):
            logger.warning(
                "Login of a %s, which the ledger does not track: it is not kept through outages.",
                type(user).__name__,
            )
            lifecycle.stamp(data, now, expires_at, login=True)
            data[UNTRACKED_KEY] = 1  # no row to keep in step, to move or to end
            self._user = str(user_id)
            return
        self._start(data, user_id, now, expires_at)

    def _start(self, data: dict[str, Any], user: Any, now: float, expires_at: float) -> None:
        try:
            recorded, evicted = ledger.start(
                self.key_hash,
                user,
                expires_at,
                self._version + 1,
                self.client.ip,
                self.client.user_agent,
                str(data.get(BACKEND_SESSION_KEY, "")),
                str(data.get(HASH_SESSION_KEY, "")),
            )
        except LedgerUnavailable:
            if self._user != str(user):
                self._take_back_login(data)  # a new login: not a login without its row
            raise  # (the same user again: nothing changed, still logged in)
        if not recorded:
            self._take_back_login(data)
            logger.warning("Login refused: the user is at MAX_SESSIONS_PER_USER.")
            raise SessionLimitExceeded()  # its message is the user's, translated
        lifecycle.stamp(data, now, expires_at, login=True)
        self._user = str(user)
        self._withheld = {}
        self._served = max(self._served, self._version + 1)  # the row has that version
        tracking.settle(evicted)

    def _take_back_login(self, data: dict[str, Any]) -> None:
        lifecycle.strip_login(data)
        self.modified = True

    def _ledger_before_write(
        self, data: dict[str, Any], version: int, now: float, expires_at: float, skip: bool
    ) -> bool:
        """Keep the ledger in step with a save; ``True`` when it recorded ``version``."""
        user = data.get(SESSION_KEY)
        if user is not None and data.get(UNTRACKED_KEY):
            self._user = str(user)
            return False  # a login the ledger does not track (another user model)
        if user != self._user:
            if self._user is not None:
                # The login was removed or replaced without logout(): end it first.
                reason = str(EndReason.REPLACED if user else EndReason.LOGOUT)
                ledger.end_rows([self.key_hash], reason)
                self._user = None
            if user is not None:
                self._start(data, user, now, expires_at)
            return True
        if user is None:
            return False
        due = lifecycle.renewal_due(data, now, expires_at)
        rehash = lifecycle.hash_changed(data)
        if version <= self._served and not (due or rehash):
            return True  # the row already has this version (recorded at login)
        if not (due or skip or rehash):
            return False
        try:
            alive = ledger.touch(
                self.key_hash,
                user,
                version=version,
                expires_at=expires_at if due else None,
                auth_hash=str(data[HASH_SESSION_KEY]) if rehash else None,
            )
        except LedgerUnavailable:
            if skip:
                raise  # the backup would be this login's only copy, unprotected: refused
            return False  # activity is not essential; the next save tries again
        if not alive:
            # Ended, expired or never recorded: a renewal that finds no row ends the login.
            security_logger.warning("Session login ended: its ledger row is no longer active.")
            lifecycle.strip_login(data)
            self._user = None
        elif due:
            lifecycle.stamp(data, now, expires_at)
        elif rehash:
            data[ROW_HASH_KEY] = lifecycle.fingerprint(str(data[HASH_SESSION_KEY]))
        self._served = max(self._served, version)
        return True

    # Saving ----------------------------------------------------------------

    def create(self) -> None:
        self._create(record=True)

    def _create(self, *, record: bool) -> None:
        for _ in range(100):
            self._session_key = self._get_new_session_key()
            try:
                self._save(must_create=True, record=record)
            except CreateError:
                continue
            self.modified = True
            return
        raise RuntimeError("Unable to create a new session key.")

    def save(self, must_create: bool = False) -> None:
        if self.session_key is None:
            return self.create()
        self._save(must_create=must_create, record=True)

    def _save(self, *, must_create: bool, record: bool) -> None:
        data = self._get_session(no_load=must_create)  # type: ignore[attr-defined]
        if self.session_key is None:
            raise UpdateError  # the load found no such session: nothing to update (as Django)
        key_hash = self.key_hash
        version = self._version + 1
        now = time.time()
        age = self.get_expiry_age()
        expires_at = int(now) + age
        confirmed = not self._withheld or SESSION_KEY in data
        store = trust.plan_save(
            must_create=must_create,
            in_cache=self._in_cache,
            confirmed=confirmed,
            reachable=self._cache.breaker.state == CLOSED,
        )
        try:
            recorded = record and self._ledger_before_write(
                data, version, now, expires_at, skip=store is Store.SKIP
            )
        except LedgerUnavailable:
            return self._unprotected()
        withheld = self._withheld if SESSION_KEY not in data else {}
        backup = data | withheld
        # Serialized once for both copies (they differ only by a withheld login).
        serialized = self._serialize(data)
        packed = self._serialize(backup) if withheld else serialized
        # Lineage: a backup descends from its own version when Redis may hold
        # that version (written, or a write whose reply was lost: a hung Redis
        # applies it when it resumes), else from the Redis copy in hand.
        base = self._base if store is Store.SKIP else version
        sealed = self._seal(backup, version, base, packed)
        stored = maybe = False
        if store is not Store.SKIP:
            entry = Entry(version, data, _tag(sealed))
            try:
                stored = self._store(store, key_hash, entry, age, serialized)
            except CacheUnavailable as error:
                self.degraded = True
                maybe = error.attempted
                health.count("degraded_saves")
            except _Ended:
                # A renewal of a session ended meanwhile: nothing to renew (no error).
                self.interrupted = True
                self.sealed = None
                return
            if not (stored or maybe):
                sealed = self._seal(backup, version, self._base, packed)
        if not stored and record and not recorded and SESSION_KEY in data:
            # The backup is the newest copy of this login: no older one may win.
            try:
                ledger.touch(key_hash, data[SESSION_KEY], version=version)
            except LedgerUnavailable:
                return self._unprotected()
            self._served = max(self._served, version)
        self._version = version
        self._in_cache = stored
        if stored or maybe:
            self._base = version
        self._parent = _tag(sealed)
        self._record(sealed, key_hash)

    def _store(self, store: Store, key_hash: str, entry: Entry, age: int, payload: bytes) -> bool:
        """Write the Redis copy as planned; ``True`` when Redis holds it afterwards."""
        if age <= 0:
            self._cache.drop(key_hash)  # expired on arrival, as Django's cache engine does
            return True
        if store is Store.CREATE:
            if not self._cache.create(key_hash, entry, age, payload):
                raise CreateError
            return True
        if store is Store.UPDATE:
            updated = self._cache.update(key_hash, entry, age, payload)
            if updated:
                return True
            if updated is None:
                return self._ended_meanwhile()
        # Not read from Redis, or its copy is gone (expired, evicted, flushed):
        # put it back unless the session ended; a copy written meanwhile wins.
        other = self._cache.write_back(key_hash, entry, age, "", payload)
        if other is None:
            return True
        if other.state is Cache.TOMBSTONED:
            return self._ended_meanwhile()
        return False

    def _ended_meanwhile(self) -> bool:
        if self.modified:
            raise UpdateError  # deleted elsewhere (logout in another tab, revoked)
        raise _Ended

    def _unprotected(self) -> None:
        """A login's save only a backup would keep, whose version the ledger cannot record.

        An older backup could then win over it (no rollback protection), so it is not
        acknowledged: a change is refused (``LedgerUnavailable``, HTTP 503, nothing
        changed), a mere renewal of the backup is skipped.
        """
        logger.warning("The ledger cannot record this login's newest backup: save refused.")
        self.sealed = None
        if self.modified:
            raise LedgerUnavailable("the newest backup of this login cannot be recorded")
        self.interrupted = True

    def _seal(
        self, data: dict[str, Any], version: int, base: int, payload: bytes | None = None
    ) -> cookies.Sealed | None:
        expires_at = int(time.time()) + self.get_expiry_age()
        backup = codec.Backup(version, expires_at, data, self._partial, base, self._parent)
        return cookies.seal_within_budget(backup, self.session_key or "", self.serializer, payload)

    def _record(self, sealed: cookies.Sealed | None, key_hash: str) -> None:
        self.sealed = sealed
        if sealed is None:
            health.count("backups_omitted")
            return
        health.count("backups_written")
        if sealed.partial and sealed.dropped:
            health.count("backups_partial")
            _send(
                signals.backup_truncated,
                key_hash=key_hash,
                dropped=sealed.dropped,
                budget=cookies.max_token_chars(),
            )

    # Keys and deletion -----------------------------------------------------

    def exists(self, session_key: str) -> bool:
        if not session_key:
            return False
        key_hash = hash_key(session_key)
        try:
            state = self._cache.read(key_hash).state
            if state is not Cache.ABSENT:
                return state is Cache.PRESENT
        except CacheUnavailable:
            self.degraded = True
        # Redis cannot say, or lost the copy: a login whose row is active exists
        # (its row serves it: django-allauth prunes its session list on exists(),
        # and tells its token clients their session is gone).  No answer: no.
        try:
            return ledger.is_active(key_hash)
        except LedgerUnavailable:
            return False

    def _may_be_in_redis(self) -> bool:
        """Could Redis hold a copy of this session (so that ending it must reach Redis)?

        Yes if it was read from or written to Redis, if its lineage went through
        Redis (``base``), or if it was served from its ledger row (Redis may
        hold the rest of it).
        """
        return self._in_cache or self._base > 0 or self.source == "ledger"

    def _login(self) -> str | None:
        """The login this session holds, shows, or holds back (``None``: anonymous)."""
        data: dict[str, Any] = getattr(self, "_session_cache", {})
        user = data.get(SESSION_KEY) or self._withheld.get(SESSION_KEY) or self._user
        return None if user is None else str(user)

    def delete(self, session_key: str | None = None) -> None:
        own = session_key is None or session_key == self.session_key
        if own and not hasattr(self, "_session_cache") and self.session_key:
            self._get_session()  # type: ignore[attr-defined]  # what is being ended?
        key = self.session_key if session_key is None else session_key
        login: bool | None
        if own and key is None and self._shadow is not None:
            # Refused for this request (an older backup than one served), yet alive.
            (key, login), in_redis, ttl = self._shadow, True, 0
            self._shadow = None
        elif key is None:
            return
        elif own and self._loaded:
            login = self._login() is not None
            in_redis = self._may_be_in_redis()
            ttl = self.get_expiry_age()
        else:
            login, in_redis, ttl = None, True, 0  # not loaded: it may be a login in Redis
        reason = str(EndReason.LOGOUT if own else EndReason.REVOKED)
        tracking.end_one(hash_key(key), reason, login=login, in_redis=in_redis, ttl=ttl)
        if own:
            self._user = None
            self._withheld = {}
            self._version = self._base = 0
            self._in_cache = False

    def flush(self) -> None:
        # Django clears the data first; here the end is recorded first, so that
        # a logout the ledger cannot record changes nothing (LedgerUnavailable).
        self.delete()
        self.clear()
        self._session_key = None

    async def aflush(self) -> None:
        await sync_to_async(self.flush)()

    def cycle_key(self) -> None:
        data = self._session  # type: ignore[attr-defined]
        if not self.session_key and self._shadow is not None:
            self.delete()  # a new key over a session refused but alive: that one ends
        old_key = self.session_key
        user = self._login()
        old_in_redis = self._may_be_in_redis()
        ttl = self.get_expiry_age()
        if user is None or not old_key:
            self._create(record=True)
            self._session_cache = data
            if old_key:
                tracking.remove([hash_key(old_key)], queue=old_in_redis, ttl=ttl)
            return
        state = (self._version, self._base, self._in_cache)
        self._create(record=False)
        self._session_cache = data
        old_hash = hash_key(old_key)
        try:
            moved = ledger.rekey(old_hash, self.key_hash)
        except LedgerUnavailable:
            # Undo: the new key goes, the old one stays (if Redis still has it).
            with contextlib.suppress(CacheUnavailable):  # nobody ever received the new key
                self._cache.delete([self.key_hash])
            self._session_key = old_key
            self._version, self._base, self._in_cache = state
            raise
        tracking.settle([old_hash], ttl=ttl)
        if not moved and not data.get(UNTRACKED_KEY):
            # The login had no active row (ended meanwhile): it does not move on.
            security_logger.warning("Session login ended: no active ledger row to move.")
            lifecycle.strip_login(data)
            self._withheld = {}
            self._user = None
            self.modified = True

    async def acycle_key(self) -> None:
        await sync_to_async(self.cycle_key)()

    @classmethod
    def clear_expired(cls) -> None:
        tracking.clear_expired()


NO_TAG = bytes(12)
_PATHS = {
    Cache.UNREACHABLE: "cache_unavailable",
    Cache.ABSENT: "cache_miss",
    Cache.PRESENT: "newer_backup",
    Cache.TOMBSTONED: "ended",
}


class _Ended(Exception):
    """A renewal found the session ended (internal to ``save``)."""


def _tag(sealed: cookies.Sealed | None) -> bytes:
    return codec.token_tag(sealed.token) if sealed else NO_TAG


def _send(signal: Any, **kwargs: Any) -> None:
    for receiver, result in signal.send_robust(sender=SessionStore, **kwargs):
        if isinstance(result, Exception):
            logger.error("Receiver %r of a session signal failed: %r", receiver, result)
