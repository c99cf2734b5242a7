"""Which copy of a session serves a request, and what is written back."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

from .. import (
    adoption,
    codec,
    cookies,
    export,
    handback,
    health,
    ledger,
    lifecycle,
    purges,
    requestscope,
    signals,
    tracing,
    tracking,
    trust,
)
from ..cachecopy import CacheRead, Entry
from ..conf import (
    LOGIN_AT_KEY,
    ROW_EXPIRY_KEY,
    ROW_HASH_KEY,
    SEEN_AT_KEY,
    conf,
)
from ..exceptions import CacheUnavailable, LedgerUnavailable
from ..trust import Cache, Row, Serve, Write
from .state import NO_TAG, StoreState, send

#: Where ``SessionBase.set_expiry()`` keeps a session's own expiry.
EXPIRY_KEY = "_session_expiry"

logger = logging.getLogger("django_resilient_sessions")
security_logger = logging.getLogger("django.security.SuspiciousSession")


class Loading(StoreState):
    """Which copy of a session serves a request, and what is written back."""

    def load(self) -> dict[str, Any]:
        """The session's data from the copy that may serve it (``loads`` metric, span)."""
        with tracing.span("session.load") as span:
            data = self._load()
            source = (self.source or "none") if self.session_key is not None else "none"
            health.count("loads", label=source)
            tracing.annotate(span, source=source, degraded=self.degraded)
            return data

    def _load(self) -> dict[str, Any]:
        self._loaded = True
        if self.backup_token is None:  # a store built without the request's backup
            self.backup_token = requestscope.backup_for(self.session_key)
        purges.check_if_due(self._cache)
        key_hash = self.key_hash
        try:
            read = self._cache.read(key_hash)
        except CacheUnavailable:
            self.degraded = True
            read = CacheRead(Cache.UNREACHABLE)
        backup, state = self._backup_against(read)
        came_back = handback.plan(read, backup)
        if came_back is handback.Plan.HAND_BACK:
            adopted = handback.hand_back(self, read)
            return self._forget_key() if adopted is None else adopted
        if came_back is handback.Plan.STALE_BACKUP:
            backup, state = None, trust.Backup.INVALID  # from before the site left
        login = backup is not None and SESSION_KEY in backup.data
        adoptable = adoption.enabled() and not self._adoption_done
        decision = trust.decide(
            read.state, state, login, fail_closed=conf.FAIL_CLOSED, adoptable=adoptable
        )
        if decision.ask:
            row = self._row(key_hash, backup)
            decision = trust.decide(
                read.state, state, login, row, fail_closed=conf.FAIL_CLOSED, adoptable=adoptable
            )
        if decision.serve is Serve.ADOPT:
            self._adoption_done = True
            adopted = adoption.adopt(self, read)
            if adopted is not None:
                return adopted
            # Not adopted: nothing served, the cookie kept if the store could not tell.
            decision = replace(decision, keep_cookies=decision.keep_cookies or self.keep_cookie)
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
            user = backup.data[SESSION_KEY]
            row, self._served, self._ledger_login = ledger.row_state(key_hash, user, backup.version)
        except LedgerUnavailable:
            return Row.UNREADABLE
        return row

    def _carry_out(
        self, decision: trust.Decision, read: CacheRead, backup: codec.Backup | None
    ) -> dict[str, Any]:
        key_hash = self.key_hash
        path = PATHS[read.state]
        if decision.reject:
            self._refuse(key_hash, decision.reason, path)
        elif decision.reason == trust.ROLLBACK:
            security_logger.warning("Session backup refused: %s.", decision.reason)
            health.count("backups_rejected", label="rollback")
        if decision.purge:
            self._purge(key_hash)
        self.keep_cookie = decision.keep_cookies
        if decision.serve is Serve.CACHE:
            assert read.entry is not None
            self.needs_backup = decision.renew
            return self._use_entry(read.entry, backup.version if backup else 0)
        if decision.serve is Serve.LEDGER_LOGIN and self._ledger_login is not None:
            return self._use_ledger_login(key_hash, read, decision, backup)
        if decision.serve in (Serve.NOTHING, Serve.LEDGER_LOGIN) or backup is None:
            # (The login alone, when its row no longer has it: nothing, cookies kept.)
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
        send(
            signals.session_restored,
            type(self),
            key_hash=key_hash,
            reason=path,
            partial=backup.partial,
        )
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
        self.needs_backup = (
            self.needs_backup or lifecycle.renewal_due(data, now) or export.due(data)
        )
        return data

    def _use_ledger_login(
        self,
        key_hash: str,
        read: CacheRead,
        decision: trust.Decision,
        backup: codec.Backup | None = None,
    ) -> dict[str, Any]:
        """Serve the login alone, as its row has it (no copy of the session at hand).

        Its version is the newest the row saw served, so that the backups of what is
        written on top of it are not taken for rollbacks (an older backup is refused
        as before).  Without a backup, no lineage: what is written on top of it is a
        branch of its own.  In place of an older ``backup``, it takes that backup's
        lineage (and the Redis copy's, which that backup descends from): Redis may
        hold that copy, with the login, so a logout on a branch of it must reach Redis.
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
        # The row holds the session's age (``set_expiry()`` moves it, and each renewal
        # sets both stamps): a shorter one than the default is kept, or the login would
        # come back with SESSION_COOKIE_AGE (and the next save stretch the row to it).
        age = int(found.expires_at - found.seen_at)
        if age < settings.SESSION_COOKIE_AGE - conf.ACTIVITY_UPDATE_INTERVAL:
            data[EXPIRY_KEY] = max(age, 1)
        base = 0
        if backup is not None:
            base = max(backup.base, read.entry.version if read.entry is not None else 0)
            self._parent = codec.token_tag(self.backup_token or "")
        data = self._use(found.served, base, data, "ledger", in_cache=False)
        if self.session_key is None:
            return data  # timed out
        self._served = found.served
        if decision.reason == trust.ROLLBACK:
            # In place of an older backup (a response the browser lost, a tab that
            # raced another): a read renews nothing, so the newer backup the client
            # may still hold is not overwritten by one of the login alone (nor by a
            # save of every request: see Saving).
            self.needs_backup = False
            self._renews_nothing = True
        health.count("restored_from_ledger")
        if decision.write is not Write.NONE:
            ttl = int(found.expires_at - time.time())
            return self._write_back(key_hash, read, Entry(found.served, data, NO_TAG), ttl)
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
            self._refuse(key_hash, trust.ENDED, PATHS[Cache.TOMBSTONED])
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
        health.count("backups_rejected", label=REJECTIONS.get(reason, "invalid"))
        if reason != "invalid":
            send(signals.backup_rejected, type(self), key_hash=key_hash, reason=path)

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


#: The ``reason`` label of a refused backup, by the trust decision's reason (else "invalid").
REJECTIONS = {
    trust.ENDED: "ended",
    trust.ROW_ENDED: "ended",
    trust.ROW_MISSING: "no_ledger_row",
}

#: How a backup came to be looked at, by the state of the Redis copy (signals, metrics).
PATHS = {
    Cache.UNREACHABLE: "cache_unavailable",
    Cache.ABSENT: "cache_miss",
    Cache.PRESENT: "newer_backup",
    Cache.TOMBSTONED: "ended",
}
