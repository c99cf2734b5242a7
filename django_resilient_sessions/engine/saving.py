"""Saving: the Redis copy and the backup, with the ledger in step."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.base import (
    CreateError,
    UpdateError,
)

from .. import (
    codec,
    cookies,
    export,
    health,
    ledger,
    lifecycle,
    requestscope,
    signals,
    tracing,
    trust,
)
from ..cachecopy import Entry
from ..conf import ROW_EXPIRY_KEY, UNTRACKED_KEY, conf
from ..exceptions import CacheUnavailable, LedgerUnavailable
from ..trust import Cache, Op, Row, Write
from .logins import Logins
from .state import Ended, send, tag_of

logger = logging.getLogger("django_resilient_sessions")
security_logger = logging.getLogger("django.security.SuspiciousSession")


class Saving(Logins):
    """Saving: the Redis copy and the backup, with the ledger in step."""

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
        """Save both copies, counted by where the newest went (``saves`` metric, span)."""
        with tracing.span("session.save") as span:
            copy = "none"
            try:
                copy = self._save_copies(must_create=must_create, record=record)
            except CreateError:
                copy = ""  # a key collision: create() tries another key
                raise
            finally:
                if copy:
                    health.count("saves", label=copy)
                    tracing.annotate(span, copy=copy, degraded=self.degraded)

    def _save_copies(self, *, must_create: bool, record: bool) -> str:
        """Write the copies; returns where the newest went: "cache", "backup" or "none"."""
        data = self._get_session(no_load=must_create)  # type: ignore[attr-defined]
        if self.session_key is None:
            raise UpdateError  # the load found no such session: nothing to update (as Django)
        if self._renews_nothing and not (self.modified or must_create):
            # The login alone in place of an older backup: its backup would overwrite
            # the newer one the client may hold, and the row would take it as newest.
            self.interrupted = True
            self.sealed = None
            return "none"
        self._renews_nothing = False
        key_hash = self.key_hash
        version = self._version + 1
        now = time.time()
        age = self.get_expiry_age()
        expires_at = int(now) + age
        withheld = bool(self._withheld) and SESSION_KEY not in data
        if not self._cache.reachable(key_hash):
            cache = Cache.UNREACHABLE
        else:
            cache = Cache.PRESENT if self._in_cache else Cache.ABSENT

        def plan(cache: Cache, row: Row) -> trust.Decision:
            return trust.decide(
                cache,
                login=SESSION_KEY in data,
                row=row,
                op=Op.SAVE,
                changed=self.modified,
                new_key=must_create,
                withheld=withheld,
            )

        decision = plan(cache, Row.NOT_ASKED)
        recorded = False
        if record:
            row = self._ledger_before_write(data, version, now, expires_at, must=decision.ask)
            decision = plan(cache, row)
            if not self._carry_out_save(decision, data):
                return "none"
            recorded = row is Row.ACTIVE
        backup_only = decision.write is Write.NONE
        if decision.cap_ttl:
            # The row could not follow the session's expiry: Redis must not outlive it.
            row_end = int(data.get(ROW_EXPIRY_KEY, now)) + conf.ACTIVITY_UPDATE_INTERVAL
            age = min(age, row_end - int(now))
        if export.enabled() and self.session_key:
            export.mirror(self.session_key, data, new=must_create)  # (marks data)
        withheld_login = self._withheld if SESSION_KEY not in data else {}
        backup = data | withheld_login
        # Serialized once for both copies (they differ only by a withheld login).
        serialized = self._serialize(data)
        packed = self._serialize(backup) if withheld_login else serialized
        # Lineage: a backup descends from its own version when Redis may hold
        # that version (written, or a write whose reply was lost: a hung Redis
        # applies it when it resumes), else from the Redis copy in hand.
        base = self._base if backup_only else version
        sealed = self._seal(backup, version, base, packed)
        stored = maybe = False
        if not backup_only:
            entry = Entry(version, data, tag_of(sealed))
            try:
                stored = self._store(decision.write, key_hash, entry, age, serialized)
            except CacheUnavailable as error:
                self.degraded = True
                maybe = error.attempted
                health.count("degraded_saves")
            except Ended:
                export.forget(self.session_key)  # ended meanwhile: no copy to keep either
                if not self._carry_out_save(plan(Cache.TOMBSTONED, Row.NOT_ASKED), data):
                    return "none"
            if not (stored or maybe):
                sealed = self._seal(backup, version, self._base, packed)
        if not stored and record and not recorded and self._tracked_login(data):
            # Redis could not take it: the backup is the newest copy of this
            # login, and its row must say so, or an older backup could win.
            decision = plan(Cache.UNREACHABLE, self._record_version(key_hash, data, version))
            if not self._carry_out_save(decision, data):
                return "none"
            if decision.end_login:
                sealed = self._seal(data, version, self._base)
        self._version = version
        self._in_cache = stored
        if stored or maybe:
            self._base = version
        self._parent = tag_of(sealed)
        self._record(sealed, key_hash)
        return "cache" if stored else "backup" if sealed is not None else "none"

    def _carry_out_save(self, decision: trust.Decision, data: dict[str, Any]) -> bool:
        """Act on a save decision; ``False`` when the save stops here."""
        if decision.end_login:
            # Ended, expired or never recorded: a renewal that finds no row ends the login.
            security_logger.warning("Session login ended: its ledger row is no longer active.")
            lifecycle.strip_login(data)
            self._user = None
        if decision.refuse:
            self.sealed = None
            if decision.reason == trust.ENDED_MEANWHILE:
                raise UpdateError  # deleted elsewhere (logout in another tab, revoked)
            logger.warning("The ledger cannot record this login's newest backup: save refused.")
            raise LedgerUnavailable("the newest backup of this login cannot be recorded")
        if decision.skip:
            # A mere renewal of the backup, not acknowledged: nothing to renew.
            self.interrupted = True
            self.sealed = None
            return False
        return True

    @staticmethod
    def _tracked_login(data: dict[str, Any]) -> bool:
        return SESSION_KEY in data and not data.get(UNTRACKED_KEY)

    def _record_version(self, key_hash: str, data: dict[str, Any], version: int) -> Row:
        """The row records ``version`` as the newest backup of this login: its answer."""
        try:
            alive = ledger.touch(key_hash, data[SESSION_KEY], version=version)
        except LedgerUnavailable:
            return Row.UNWRITABLE
        if alive:
            self._served = max(self._served, version)
        return Row.ACTIVE if alive else Row.ENDED

    def _store(self, write: Write, key_hash: str, entry: Entry, age: int, payload: bytes) -> bool:
        """Write the Redis copy as decided; ``True`` when Redis holds it afterwards.

        Raises :class:`Ended` when the write met the session's tombstone.
        """
        if age <= 0:
            self._cache.drop(key_hash)  # expired on arrival, as Django's cache engine does
            return True
        if write is Write.CREATE:
            if not self._cache.create(key_hash, entry, age, payload):
                raise CreateError
            return True
        if write is Write.UPDATE:
            updated = self._cache.update(key_hash, entry, age, payload)
            if updated:
                return True
            if updated is None:
                raise Ended
        # Not read from Redis, or its copy is gone (expired, evicted, flushed):
        # put it back unless the session ended; a copy written meanwhile wins.
        other = self._cache.write_back(key_hash, entry, age, "", payload)
        if other is None:
            return True
        if other.state is Cache.TOMBSTONED:
            raise Ended
        return False

    def _seal(
        self, data: dict[str, Any], version: int, base: int, payload: bytes | None = None
    ) -> cookies.Sealed | None:
        expires_at = int(time.time()) + self.get_expiry_age()
        backup = codec.Backup(version, expires_at, data, self._partial, base, self._parent)
        return cookies.seal_within_budget(backup, self.session_key or "", self.serializer, payload)

    def _record(self, sealed: cookies.Sealed | None, key_hash: str) -> None:
        self.sealed = sealed
        requestscope.record(self.session_key, sealed.token if sealed else None)
        if sealed is None:
            health.count("backups_omitted")
            return
        health.count("backups_written")
        if sealed.partial and sealed.dropped:
            health.count("backups_partial")
            send(
                signals.backup_truncated,
                type(self),
                key_hash=key_hash,
                dropped=sealed.dropped,
                budget=cookies.max_token_chars(),
            )

    # Keys and deletion -----------------------------------------------------
