"""The ledger kept in step with the logins a session holds."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

from .. import (
    ledger,
    lifecycle,
    tracking,
    trust,
)
from ..conf import (
    ROW_HASH_KEY,
    UNTRACKED_KEY,
)
from ..exceptions import LedgerUnavailable, SessionLimitExceeded
from ..models import EndReason
from ..trust import Cache, Op, Row
from .loading import Loading

logger = logging.getLogger("django_resilient_sessions")
security_logger = logging.getLogger("django.security.SuspiciousSession")


class Logins(Loading):
    """The ledger kept in step with the logins a session holds."""

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
        evicted: list[str] = []
        failure: LedgerUnavailable | None = None
        try:
            recorded, evicted = self._record_start(data, user, expires_at)
            if recorded is None:
                # The key's row was ended (revoked, logged out): a login never brings
                # it back.  The login goes on under a new key, the old one stays ended.
                security_logger.warning("Login on a session key that was ended: new key.")
                self._move_to_new_key()
                recorded, evicted = self._record_start(data, user, expires_at)
            row = Row.ACTIVE if recorded else Row.MISSING
        except LedgerUnavailable as error:
            row, failure = Row.UNWRITABLE, error
        decision = trust.decide(Cache.ABSENT, row=row, op=Op.LOGIN)
        if decision.refuse:
            if row is Row.MISSING:
                self._take_back_login(data)
                logger.warning("Login refused: the user is at MAX_SESSIONS_PER_USER.")
                raise SessionLimitExceeded()  # its message is the user's, translated
            if self._user != str(user):
                self._take_back_login(data)  # a new login: not a login without its row
            # (the same user again: nothing changed, still logged in)
            raise failure or LedgerUnavailable("the login cannot be recorded")
        lifecycle.stamp(data, now, expires_at, login=True)
        self._user = str(user)
        self._withheld = {}
        self._served = max(self._served, self._version + 1)  # the row has that version
        tracking.settle(evicted)

    def _record_start(
        self, data: dict[str, Any], user: Any, expires_at: float
    ) -> tuple[bool | None, list[str]]:
        return ledger.start(
            self.key_hash,
            user,
            expires_at,
            self._version + 1,
            self.client.ip,
            self.client.user_agent,
            str(data.get(BACKEND_SESSION_KEY, "")),
            str(data.get(HASH_SESSION_KEY, "")),
        )

    def _move_to_new_key(self) -> None:
        """Leave an ended key for a new one, keeping the data in hand (saved later)."""
        old = self.key_hash
        self._session_key = None
        self._get_or_create_session_key()  # type: ignore[attr-defined]
        self._version = self._base = 0
        self._in_cache = False
        self.modified = True
        tracking.remove([old], queue=True)  # its Redis copy, if any, is over too

    def _take_back_login(self, data: dict[str, Any]) -> None:
        lifecycle.strip_login(data)
        self.modified = True

    def _ledger_before_write(
        self, data: dict[str, Any], version: int, now: float, expires_at: float, must: bool
    ) -> Row:
        """Keep the ledger in step with a save: the row's answer (see :func:`.trust.decide`).

        ``ACTIVE``: the row recorded ``version``; ``ENDED``: the row is over
        (the save ends the login); ``UNWRITABLE``: it could not be written;
        ``NOT_ASKED``: nothing was due.  ``must``: Redis cannot take this
        save, so the row must record its version.  A login set or replaced
        without ``login()`` is recorded (or ended) here, or the save fails.
        """
        user = data.get(SESSION_KEY)
        if user is not None and data.get(UNTRACKED_KEY):
            self._user = str(user)
            return Row.NOT_ASKED  # a login the ledger does not track (another user model)
        if user != self._user:
            if self._user is not None:
                # The login was removed or replaced without logout(): end it first.
                reason = str(EndReason.REPLACED if user else EndReason.LOGOUT)
                ledger.end_rows([self.key_hash], reason)
                self._user = None
            if user is not None:
                self._start(data, user, now, expires_at)
                return Row.ACTIVE
            return Row.NOT_ASKED
        if user is None:
            return Row.NOT_ASKED
        due = lifecycle.renewal_due(data, now, expires_at)
        rehash = lifecycle.hash_changed(data)
        if version <= self._served and not (due or rehash):
            return Row.ACTIVE  # the row already has this version (recorded at login)
        if not (due or must or rehash):
            return Row.NOT_ASKED
        try:
            alive = ledger.touch(
                self.key_hash,
                user,
                version=version,
                expires_at=expires_at if due else None,
                auth_hash=str(data[HASH_SESSION_KEY]) if rehash else None,
            )
        except LedgerUnavailable:
            if version <= self._served and not rehash:
                # The row has this version (recorded at login, in this very request):
                # only the activity stamp is missing, and it can wait.
                return Row.ACTIVE
            return Row.UNWRITABLE  # activity can wait; a backup-only save cannot (decide)
        if not alive:
            return Row.ENDED
        if due:
            lifecycle.stamp(data, now, expires_at)
        elif rehash:
            data[ROW_HASH_KEY] = lifecycle.fingerprint(str(data[HASH_SESSION_KEY]))
        self._served = max(self._served, version)
        return Row.ACTIVE

    # Saving ----------------------------------------------------------------
