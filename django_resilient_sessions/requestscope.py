"""The current request's backup and client, for a store built without them.

The middleware hands the store it puts on ``request.session`` the request's backup
cookie and client details.  Some packages build another store for the same session
in the middle of a request (django-allauth replaces ``request.session`` with
``SessionStore(session_key)`` after it saves an OAuth state): while Redis cannot
answer, such a store would have no copy to load, and the middleware would send the
client an empty backup, losing the session.  So the middleware opens a scope per
request, holding the client details and, per session key, the newest backup token
(the request's cookie, then each one a save in this request seals); a store given
neither ``backup`` nor ``client`` takes them from it.

A token is only ever looked up by the key it is bound to (a backup opens with its
own session key alone), and every request starts a new scope, so nothing passes from
one request or session to another.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

from .client import ClientInfo

__all__ = ["backup_for", "client", "close", "open_scope", "record"]


@dataclass
class Scope:
    client: ClientInfo
    #: Session key -> the newest backup token of that session in this request.
    backups: dict[str, str] = field(default_factory=dict)


_current: ContextVar[Scope | None] = ContextVar("django_resilient_sessions_scope", default=None)


def open_scope(session_key: str | None, token: str | None, client_info: ClientInfo) -> None:
    """Start the request's scope (replacing whatever a previous request left)."""
    scope = Scope(client_info)
    if session_key and token:
        scope.backups[session_key] = token
    _current.set(scope)


def close() -> None:
    _current.set(None)


def backup_for(session_key: str | None) -> str | None:
    """The newest backup token of ``session_key`` in this request, if any."""
    scope = _current.get()
    if scope is None or not session_key:
        return None
    return scope.backups.get(session_key)


def client() -> ClientInfo | None:
    scope = _current.get()
    return scope.client if scope is not None else None


def record(session_key: str | None, token: str | None) -> None:
    """A save sealed ``token`` for ``session_key`` (``None``: it has no backup now)."""
    scope = _current.get()
    if scope is None or not session_key:
        return
    if token:
        scope.backups[session_key] = token
    else:
        scope.backups.pop(session_key, None)
