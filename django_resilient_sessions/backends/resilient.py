"""The resilient session engine (``SESSION_ENGINE``).

A session lives in Redis and, after every save, in an encrypted backup cookie
that :mod:`.middleware` carries.  With Redis healthy this engine behaves like
``django.contrib.sessions.backends.cache``: one ``GET`` per load, one ``SET``
per save, no database query.  Which copy serves a request otherwise, whether a
backup's login is trusted and what is written back is decided by
:func:`.trust.decide`; this class gathers the states it needs and carries out
its answers.  Logins, logouts and revocations are recorded in the
``UserSession`` ledger, durably or not at all (:class:`~.exceptions.LedgerUnavailable`).
"""

from __future__ import annotations

from .. import (
    _installed,  # noqa: F401  # first: a clear error when the app is not installed
    tracking,
)
from ..client import ClientInfo
from ..engine.ending import Ending

__all__ = ["ClientInfo", "SessionStore"]


class SessionStore(Ending):
    """Redis first, encrypted backup cookie second; see the module docstring.

    Built in layers (:mod:`django_resilient_sessions.engine`): its state, loading,
    logins, saving and ending, each a module of its own.
    """

    @classmethod
    def clear_expired(cls) -> None:
        tracking.clear_expired()
