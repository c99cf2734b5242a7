"""Named exceptions of django-resilient-sessions."""

from __future__ import annotations

__all__ = ["CacheUnavailable", "ResilientSessionsError", "SessionLimitExceeded"]


class ResilientSessionsError(Exception):
    """Base class of the package's exceptions."""


class CacheUnavailable(ResilientSessionsError):
    """The session cache failed, or its circuit breaker is open (internal)."""


class SessionLimitExceeded(ResilientSessionsError):
    """A login would pass ``MAX_SESSIONS_PER_USER`` under the ``refuse`` policy."""
