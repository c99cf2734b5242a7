"""A login's life: started, seen, limited, timed out.

The engine calls these around its own loads and saves.  Two stamps in the
session data, ``_resilient_login_at`` and ``_resilient_seen_at``, make the
server-side timeouts work the same from Redis and from a backup, without a
query; the database is written at login and once per
``ACTIVITY_UPDATE_INTERVAL`` at most.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from django.contrib.auth import SESSION_KEY
from django.contrib.auth.models import AnonymousUser
from django.db import DatabaseError

from . import tracking
from .conf import AUTH_KEYS, LOGIN_AT_KEY, SEEN_AT_KEY, conf
from .exceptions import SessionLimitExceeded
from .models import EndReason, UserSession

__all__ = ["due", "on_user_logged_in", "record", "renewal_due", "timed_out"]

logger = logging.getLogger("django_resilient_sessions")


def due(data: dict[str, Any], known_user: str | None, now: float) -> bool:
    """Does saving ``data`` have to write to the ledger?"""
    user = data.get(SESSION_KEY)
    if user != known_user:
        return True
    return user is not None and renewal_due(data, now)


def renewal_due(data: dict[str, Any], now: float) -> bool:
    """Is a login's last recorded activity older than the interval?"""
    return SESSION_KEY in data and now - data.get(SEEN_AT_KEY, 0) >= conf.ACTIVITY_UPDATE_INTERVAL


def record(
    data: dict[str, Any],
    key_hash: str,
    known_user: str | None,
    expires_at: int,
    client: Any,
    now: float,
) -> None:
    """Write a login, a change of user, or activity; stamp ``data`` to match."""
    user = data.get(SESSION_KEY)
    expires = datetime.fromtimestamp(expires_at, tz=timezone.utc)
    if user is not None:
        data[SEEN_AT_KEY] = int(now)
    try:
        if user == known_user:
            tracking.touch(key_hash, expires)
            return
        if known_user is not None:
            tracking.end([key_hash], str(EndReason.REPLACED))
        if user is None:
            return
        data[LOGIN_AT_KEY] = int(now)
        if not tracking.start(key_hash, user, expires, client.ip, client.user_agent):
            logger.warning("Login refused: the user is at MAX_SESSIONS_PER_USER.")
            for key in AUTH_KEYS:
                data.pop(key, None)
    except DatabaseError:
        logger.exception("Could not record session activity; the session goes on.")


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
    """Under the "refuse" policy, stop a login past the limit inside ``login()``.

    The session is flushed and :class:`SessionLimitExceeded` propagates out of
    ``django.contrib.auth.login()``, for the login view to show as a message.
    (Concurrent logins that pass this check together are still held to the
    limit when their rows are written, under a lock on the user's row.)
    """
    limit = conf.MAX_SESSIONS_PER_USER
    session = getattr(request, "session", None)
    if not limit or conf.SESSION_LIMIT_POLICY != "refuse" or session is None:
        return
    current = getattr(session, "key_hash", "")
    others = UserSession.objects.active().filter(user=user).exclude(key_hash=current).count()
    if others >= limit:
        session.flush()
        request.user = AnonymousUser()
        raise SessionLimitExceeded(
            f"This account already has {others} active sessions, the most allowed. "
            "Sign out on another device first."
        )
