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
    health,
    ledger,
    requestscope,
    signals,
    trust,
)
from ..cachecopy import Entry
from ..exceptions import CacheUnavailable, LedgerUnavailable
from ..trust import Cache, Store
from .logins import Logins
from .state import Ended, send, tag_of

logger = logging.getLogger("django_resilient_sessions")


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
            reachable=self._cache.reachable(key_hash),
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
            entry = Entry(version, data, tag_of(sealed))
            try:
                stored = self._store(store, key_hash, entry, age, serialized)
            except CacheUnavailable as error:
                self.degraded = True
                maybe = error.attempted
                health.count("degraded_saves")
            except Ended:
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
        self._parent = tag_of(sealed)
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
        raise Ended

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
