"""Named exceptions of django-resilient-sessions."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext_lazy as _

__all__ = [
    "CacheUnavailable",
    "LedgerUnavailable",
    "ResilientSessionsError",
    "SessionLimitExceeded",
]


class ResilientSessionsError(Exception):
    """Base class of the package's exceptions."""


class CacheUnavailable(ResilientSessionsError):
    """The session cache failed, or its circuit breaker is open (internal).

    ``attempted`` is true when the command was sent: it may have been applied
    (a reply lost to a timeout, a hung server resuming), so a write's outcome
    is unknown.
    """

    def __init__(self, alias: str, *, attempted: bool = False) -> None:
        super().__init__(alias)
        self.alias = alias
        self.attempted = attempted


class LedgerUnavailable(ResilientSessionsError):
    """The ``UserSession`` ledger could not record a login, logout or revocation.

    Nothing was changed: the user is still logged in (or still logged out).
    ``SessionMiddleware`` answers it with HTTP 503 and a message; code that
    revokes sessions outside a request sees it raised.
    """


class SessionLimitExceeded(ResilientSessionsError):
    """A login would pass ``MAX_SESSIONS_PER_USER`` under the ``refuse`` policy.

    Its message is meant for the user: ``str(error)`` is :attr:`message`, in
    the language active when it is read (the request's, in a view).
    """

    #: What the user is told (``SessionMiddleware``'s 403 page shows it too).
    message = _(
        "This account already has the most active sessions allowed. "
        "Sign out on another device, then sign in again."
    )

    def __init__(self, message: Any = None) -> None:
        super().__init__(self.message if message is None else message)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else str(self.message)
