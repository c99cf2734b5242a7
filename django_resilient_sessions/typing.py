"""Typed access to the engine's state of a request, for sites type-checked with django-stubs.

django-stubs types ``request.session`` as Django's ``SessionBase``, which has no
``degraded`` or ``key_hash``: ``request.session.degraded`` is an error under mypy
(``"SessionBase" has no attribute "degraded"``).  Ask for the engine's session instead::

    from django_resilient_sessions.typing import resilient_session

    def banner(request: HttpRequest) -> str:
        session = resilient_session(request)
        if session is not None and session.degraded:
            return "Some features are slower than usual."
        return ""

:func:`resilient_session` is ``None`` when the request's session is not this engine's
(another ``SESSION_ENGINE``, a request that went through no session middleware), so the
same code runs on a site, or in a test, that does not use the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from django.http import HttpRequest

__all__ = ["ResilientSession", "resilient_session"]


class ResilientSession(Protocol):
    """What the engine's session tells about the request, besides Django's session API."""

    @property
    def degraded(self) -> bool:
        """True when Redis failed, or its breaker was open, for this request.

        The session is then served from, and saved to, the backup cookie.
        """

    @property
    def key_hash(self) -> str:
        """SHA-256 of the session key, as in ``UserSession.key_hash`` ("" without a key)."""

    @property
    def source(self) -> str | None:
        """Where the data came from: ``"cache"``, ``"backup"``, ``"ledger"`` or None.

        None for a new session or one not loaded yet.
        """


def resilient_session(request: HttpRequest) -> ResilientSession | None:
    """The request's session when it is this engine's (a subclass counts), else None."""
    # Imported here: this module must stay importable before the app registry is ready.
    from .backends.resilient import SessionStore

    session = getattr(request, "session", None)
    return session if isinstance(session, SessionStore) else None
