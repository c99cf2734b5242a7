"""Ending sessions (logout, revocation) and giving them new keys."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth import SESSION_KEY

from .. import (
    export,
    ledger,
    lifecycle,
    tracking,
)
from ..cachecopy import hash_key
from ..conf import (
    UNTRACKED_KEY,
)
from ..exceptions import CacheUnavailable, LedgerUnavailable
from ..models import EndReason
from ..trust import Cache
from .saving import Saving

security_logger = logging.getLogger("django.security.SuspiciousSession")


class Ending(Saving):
    """Ending sessions (logout, revocation) and giving them new keys."""

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
        Redis (``base``), if it was served from its ledger row (Redis may hold the
        rest of it), or if it holds a tracked login: a branch written on top of the
        login alone has no lineage, yet Redis may hold the copy it stood in for,
        login included (a deletion queued for nothing is a tombstone later).
        """
        in_lineage = self._in_cache or self._base > 0 or self.source == "ledger"
        return in_lineage or self._login() is not None

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
        export.forget(key)
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
        export.forget(old_key)
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
