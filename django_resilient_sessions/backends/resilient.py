"""The resilient session engine (``SESSION_ENGINE``).

A session lives in Redis (through django-redis) and, after every save, in an
encrypted backup cookie that :mod:`..middleware` carries.  With the cache
healthy this engine behaves like ``django.contrib.sessions.backends.cache``.
When the cache fails, a request is served from its backup; when it answers
again, a backup newer than the cache copy, or one whose copy was lost, is
written back.  A backup holding a login is used only while that session's
``UserSession`` row is active, so ended sessions never come back.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.base import (
    VALID_KEY_CHARS,
    CreateError,
    SessionBase,
    UpdateError,
)
from django.db import DatabaseError
from django.utils.crypto import get_random_string

from .. import codec, cookies, health, lifecycle, signals, tracking
from ..breaker import CLOSED
from ..cachecopy import Entry, SessionCache, hash_key
from ..conf import AUTH_KEYS, conf
from ..exceptions import CacheUnavailable
from ..models import EndReason

__all__ = ["ClientInfo", "SessionStore"]

logger = logging.getLogger("django_resilient_sessions")
security_logger = logging.getLogger("django.security.SuspiciousSession")


class ClientInfo:
    """Who is on the other end, as the middleware saw it (read at login only)."""

    def __init__(self, ip: str | None = None, user_agent: str = "") -> None:
        self.ip = ip
        self.user_agent = user_agent


class SessionStore(SessionBase):
    """Redis first, encrypted backup cookie second; see the module docstring."""

    def __init__(
        self,
        session_key: str | None = None,
        *,
        backup: str | None = None,
        client: ClientInfo | None = None,
    ) -> None:
        super().__init__(session_key)
        self._cache = SessionCache(settings.SESSION_CACHE_ALIAS)
        self.backup_token = backup
        self.client = client or ClientInfo()
        #: True when this request could not use the cache.
        self.degraded = False
        #: Where the data came from: "cache", "backup" or None (new or not loaded).
        self.source: str | None = None
        #: The backup made by the last save (None: none fits, or not saved).
        self.sealed: cookies.Sealed | None = None
        #: The request's backup was invalid or ended: the middleware deletes it.
        self.backup_rejected = False
        #: The client's backup is missing or stale: the middleware saves to renew it.
        self.needs_backup = False
        #: Keep the session cookie although the session is empty (cache down, no backup).
        self.keep_cookie = False
        self._version = 0
        self._partial = False
        self._user: str | None = None
        self._loaded = False
        self._in_cache = False
        # Auth keys of a backup the database could not vouch for: kept out of
        # the session (fail closed) but sealed into the next backup, so the
        # login comes back once the database answers.
        self._withheld: dict[str, Any] = {}

    @property
    def key_hash(self) -> str:
        return hash_key(self.session_key) if self.session_key else ""

    # Loading ---------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        key_hash = self.key_hash
        self._loaded = True
        try:
            tracking.purge_pending_if_due()
        except DatabaseError:
            logger.exception("Could not check for pending cache purges.")
        try:
            entry, ended = self._cache.get(key_hash)
        except CacheUnavailable:
            self.degraded = True
            backup = self._trusted_backup(key_hash, "cache_unavailable")
            if backup is None:
                # Unknown key, unverifiable: never adopt it (fixation), but
                # leave the cookie alone, the session may be fine in Redis.
                self.keep_cookie = True
                return self._forget_key()
            self._partial = backup.partial
            return self._adopt(backup.version, backup.data, "backup", in_cache=False)
        if ended:
            # Logged out, flushed or revoked: no backup of it comes back.
            if self.backup_token:
                self._refuse(key_hash, "ended")
            return self._forget_key()
        if entry is None:
            backup = self._trusted_backup(key_hash, "cache_miss")
            if backup is None:
                return self._forget_key()
            data = self._adopt(backup.version, backup.data, "backup", in_cache=False)
            if self.session_key is not None:
                self._write_back(key_hash, backup.version, data, backup.expires_at, nx=True)
            return data
        if self.backup_token and codec.token_tag(self.backup_token) != entry.backup_tag:
            newer = self._newer_backup(key_hash, entry)
            if newer is not None:
                return newer
            self.needs_backup = True
        elif not self.backup_token:
            self.needs_backup = True
        return self._adopt(entry.version, entry.data, "cache")

    def _newer_backup(self, key_hash: str, entry: Entry) -> dict[str, Any] | None:
        backup = self._open_backup()
        if backup is None or backup.version <= entry.version:
            return None
        trusted = self._vet(backup, key_hash, "newer_backup")
        if trusted is None:
            return None
        data = trusted.data
        if trusted.partial:
            essential = set(conf.ESSENTIAL_KEYS)
            data = {k: v for k, v in entry.data.items() if k not in essential} | data
        data = self._adopt(trusted.version, data, "backup", in_cache=False)
        if self.session_key is not None:
            self._write_back(key_hash, trusted.version, data, trusted.expires_at, nx=False)
        return data

    def _adopt(
        self, version: int, data: dict[str, Any], source: str, *, in_cache: bool = True
    ) -> dict[str, Any]:
        now = time.time()
        reason = lifecycle.timed_out(data, now)
        if reason is not None:
            self._end(self.key_hash, reason)
            return self._forget_key()
        self._version = version
        self._user = data.get(SESSION_KEY)
        self.source = source
        self._in_cache = in_cache
        self.needs_backup = self.needs_backup or lifecycle.renewal_due(data, now)
        return data

    def _forget_key(self) -> dict[str, Any]:
        self._session_key = None
        self._version = 0
        return {}

    def _open_backup(self) -> codec.Backup | None:
        if not self.backup_token or not self.session_key:
            return None
        backup = codec.open_token(
            self.backup_token, self.session_key, self.serializer, cookies.max_token_chars()
        )
        if backup is None:
            self.backup_rejected = True
            health.count("backups_rejected")
        return backup

    def _trusted_backup(self, key_hash: str, reason: str) -> codec.Backup | None:
        backup = self._open_backup()
        return None if backup is None else self._vet(backup, key_hash, reason)

    def _vet(self, backup: codec.Backup, key_hash: str, reason: str) -> codec.Backup | None:
        """Apply the never-resurrect rule to a backup that decrypted."""
        user_id = backup.data.get(SESSION_KEY)
        if user_id is not None:
            try:
                state = tracking.row_state(key_hash, user_id)
            except DatabaseError:
                if conf.FAIL_CLOSED:
                    logger.warning("Database unavailable: backup restored without its login.")
                    self._withheld = {k: v for k, v in backup.data.items() if k in AUTH_KEYS}
                    backup.data = {k: v for k, v in backup.data.items() if k not in AUTH_KEYS}
                else:
                    logger.warning("Database unavailable: backup login trusted (FAIL_CLOSED off).")
                state = "unconfirmed"
            if state not in ("active", "unconfirmed"):
                self._refuse(key_hash, reason, state)
                return None
        health.count("restored_from_backup")
        _send(signals.session_restored, key_hash=key_hash, reason=reason, partial=backup.partial)
        return backup

    def _refuse(self, key_hash: str, reason: str, state: str = "ended") -> None:
        if state == "missing":
            security_logger.warning("Backup of a login with no tracking row refused.")
        else:
            security_logger.warning("Backup of an ended or revoked session refused.")
        self.backup_rejected = True
        health.count("backups_rejected")
        _send(signals.backup_rejected, key_hash=key_hash, reason=reason)

    def _write_back(
        self, key_hash: str, version: int, data: dict[str, Any], expires_at: int, *, nx: bool
    ) -> None:
        entry = Entry(version, data, codec.token_tag(self.backup_token or ""))
        try:
            self._cache.put(key_hash, entry, expires_at - int(time.time()), nx=nx)
        except CacheUnavailable:
            self.degraded = True
            return
        health.count("written_back")
        self._in_cache = True

    # Saving ----------------------------------------------------------------

    def create(self) -> None:
        for _ in range(100):
            # No exists() round trip: SET NX in save() detects a collision.
            self._session_key = get_random_string(32, VALID_KEY_CHARS)
            try:
                self.save(must_create=True)
            except CreateError:
                continue
            self.modified = True
            return
        raise RuntimeError("Unable to create a new session key.")

    def save(self, must_create: bool = False) -> None:
        if self.session_key is None:
            return self.create()
        data = self._get_session(no_load=must_create)  # type: ignore[attr-defined]
        key_hash = self.key_hash
        version = self._version + 1
        now = time.time()
        age = self.get_expiry_age()
        expires_at = int(now) + age
        if lifecycle.due(data, self._user, now):
            lifecycle.record(data, key_hash, self._user, expires_at, self.client, now)
            self._user = data.get(SESSION_KEY)
        withheld = self._withheld if SESSION_KEY not in data else {}
        sealed = cookies.seal_within_budget(
            codec.Backup(version, expires_at, data | withheld, self._partial),
            self.session_key,
            self.serializer,
        )
        entry = Entry(version, data, codec.token_tag(sealed.token) if sealed else "")
        try:
            self._in_cache = self._store(key_hash, entry, age, must_create, bool(withheld))
        except CacheUnavailable:
            self.degraded = True
            health.count("degraded_saves")
        self._version = version
        self._record(sealed, key_hash)

    def _store(
        self, key_hash: str, entry: Entry, age: int, must_create: bool, unconfirmed: bool
    ) -> bool:
        """Write the cache copy; ``True`` when the cache holds it afterwards."""
        if must_create:
            if not self._cache.put(key_hash, entry, age, nx=True):
                raise CreateError
            return True
        # Read from the cache: update it, unless it was deleted meanwhile.
        if self._in_cache and self._cache.put(key_hash, entry, age, xx=True):
            return True
        # Read from a backup, or the cache lost its copy (flush, restart):
        # put it back unless the session ended, but never overwrite a copy we
        # did not read (a newer backup wins it back on the next request).
        if unconfirmed or not self._may_recreate(key_hash, entry.data):
            return False  # kept in the backup only, until the login is confirmed
        if self._cache.recreate(key_hash, entry, age) is None:
            raise UpdateError  # deleted elsewhere: its tombstone says so
        return True

    def _may_recreate(self, key_hash: str, data: dict[str, Any]) -> bool:
        """May a login read from a backup be put back into the cache now?"""
        if self._cache.breaker.state != CLOSED:
            return False  # the write would be skipped: spare the query
        user = data.get(SESSION_KEY)
        if user is None:
            return True
        try:
            active = tracking.is_active(key_hash, user)
        except DatabaseError:
            return False  # unconfirmed: keep it in the backup only
        if not active:
            raise UpdateError  # ended meanwhile (logout elsewhere, revoked)
        return True

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
        try:
            return self._cache.exists(hash_key(session_key))
        except CacheUnavailable:
            self.degraded = True
            return False

    def delete(self, session_key: str | None = None) -> None:
        own = session_key is None or session_key == self.session_key
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        key_hash = hash_key(session_key)
        # A session loaded without a login has no row: skip the query.
        anonymous = own and self._loaded and self._user is None
        self._end(
            key_hash, None if anonymous else str(EndReason.LOGOUT if own else EndReason.REVOKED)
        )
        if own:
            self._user = None
            self._version = 0
            self._withheld = {}

    def _end(self, key_hash: str, reason: str | None) -> None:
        """End the row (unless ``reason`` is None) and drop the cache copy."""
        try:
            if reason is None:
                tracking.purge([key_hash])
            else:
                tracking.end([key_hash], reason)
        except DatabaseError:
            logger.exception("Could not record the end of a session.")

    def cycle_key(self) -> None:
        data = self._session  # type: ignore[attr-defined]
        old_key = self.session_key
        user = self._user
        self.create()
        self._session_cache = data
        if not old_key:
            return
        old_hash = hash_key(old_key)
        self._end(old_hash, None)
        try:
            if user is not None and not tracking.rekey(old_hash, self.key_hash):
                self._user = None  # no row to move: the next save starts one
        except DatabaseError:
            logger.exception("Could not move the session's tracking row to its new key.")

    async def acycle_key(self) -> None:
        await sync_to_async(self.cycle_key)()

    @classmethod
    def clear_expired(cls) -> None:
        tracking.clear_expired()


def _send(signal: Any, **kwargs: Any) -> None:
    for receiver, result in signal.send_robust(sender=SessionStore, **kwargs):
        if isinstance(result, Exception):
            logger.error("Receiver %r of a session signal failed: %r", receiver, result)
