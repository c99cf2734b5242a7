"""A login's life in the session data: stamps, renewals, timeouts.

Three stamps in the session data make the server-side timeouts and the
ledger's bookkeeping work the same from Redis and from a backup, without a
query: ``_resilient_login_at`` (login time), ``_resilient_seen_at`` (last
activity recorded in the ledger) and ``_resilient_row_expiry`` (the expiry the
ledger row holds).  The ledger is written at login and when a renewal is due:
once per ``ACTIVITY_UPDATE_INTERVAL``, or as soon as the session's expiry moves
away from its row's by more than that, later or earlier (``set_expiry()``).
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import AnonymousUser

from .conf import AUTH_KEYS, LOGIN_AT_KEY, ROW_EXPIRY_KEY, ROW_HASH_KEY, SEEN_AT_KEY, conf
from .exceptions import LedgerUnavailable, SessionLimitExceeded
from .models import EndReason

__all__ = [
    "fingerprint",
    "hash_changed",
    "on_user_logged_in",
    "renewal_due",
    "stamp",
    "strip_login",
    "timed_out",
]


def renewal_due(data: dict[str, Any], now: float, expires_at: float | None = None) -> bool:
    """Must the ledger row of the login in ``data`` be refreshed?"""
    if SESSION_KEY not in data:
        return False
    interval = conf.ACTIVITY_UPDATE_INTERVAL
    if now - data.get(SEEN_AT_KEY, 0) >= interval:
        return True
    # The session's expiry moved away from its row's by more than the grace, either
    # way: later (the row would end first) or earlier (``set_expiry()`` shortened it,
    # and the row would vouch for the login long after the session expired).
    return expires_at is not None and abs(expires_at - data.get(ROW_EXPIRY_KEY, 0)) > interval


def fingerprint(auth_hash: str) -> str:
    """A short fingerprint of a session auth hash, to notice that it changed."""
    return hashlib.blake2b(auth_hash.encode(), digest_size=6).hexdigest()


def hash_changed(data: dict[str, Any]) -> bool:
    """Has the session auth hash changed since the row got it (a password change)?"""
    auth_hash = data.get(HASH_SESSION_KEY)
    return bool(auth_hash) and fingerprint(str(auth_hash)) != data.get(ROW_HASH_KEY)


def stamp(data: dict[str, Any], now: float, expires_at: float, *, login: bool = False) -> None:
    """Record in ``data`` what the ledger row now says."""
    if login:
        data[LOGIN_AT_KEY] = int(now)
    data[SEEN_AT_KEY] = int(now)
    data[ROW_EXPIRY_KEY] = int(expires_at)
    if data.get(HASH_SESSION_KEY):
        data[ROW_HASH_KEY] = fingerprint(str(data[HASH_SESSION_KEY]))


def strip_login(data: dict[str, Any]) -> dict[str, Any]:
    """Take the login out of ``data``; returns what was taken."""
    return {key: data.pop(key) for key in AUTH_KEYS if key in data}


def timed_out(data: dict[str, Any], now: float) -> str | None:
    """The end reason when a login in ``data`` is past a server-side timeout."""
    if SESSION_KEY not in data:
        return None
    absolute, idle = conf.ABSOLUTE_TIMEOUT, conf.IDLE_TIMEOUT
    if absolute and now - data.get(LOGIN_AT_KEY, now) > absolute:
        return str(EndReason.EXPIRED)
    if idle and now - data.get(SEEN_AT_KEY, now) > idle:
        return str(EndReason.IDLE)
    return None


def on_user_logged_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """Record the login in the ledger inside ``django.contrib.auth.login()``.

    A login that cannot be recorded is not a login: the engine takes it back
    out of the session and raises ``LedgerUnavailable`` (or
    ``SessionLimitExceeded`` under the ``refuse`` policy), which
    ``SessionMiddleware`` turns into a 503 (or 403) page.
    """
    record = getattr(getattr(request, "session", None), "record_login", None)
    if record is None:
        return
    try:
        record(user)
    except (LedgerUnavailable, SessionLimitExceeded):
        if hasattr(request, "user"):
            request.user = AnonymousUser()
        raise
