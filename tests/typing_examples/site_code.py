"""A site's views and context processor reading the engine's state, fully typed.

Without the accessor, ``request.session.degraded`` is an error for mypy with django-stubs
(``"SessionBase" has no attribute "degraded"``): see ``tests/test_typing.py``.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from django_resilient_sessions.models import UserSession
from django_resilient_sessions.typing import ResilientSession, resilient_session


def degraded_banner(request: HttpRequest) -> dict[str, str]:
    """A context processor: a notice while sessions are served from backup cookies."""
    session = resilient_session(request)
    if session is not None and session.degraded:
        return {"session_notice": "Some features are slower than usual."}
    return {"session_notice": ""}


def describe(session: ResilientSession) -> dict[str, str | bool | None]:
    """Anything typed with the Protocol accepts the engine's session."""
    degraded: bool = session.degraded
    key_hash: str = session.key_hash
    source: str | None = session.source
    return {"degraded": degraded, "key_hash": key_hash, "source": source}


def session_status(request: HttpRequest) -> JsonResponse:
    """A health view for the current session: where it came from, and its ledger row."""
    session = resilient_session(request)
    if session is None:  # another engine, or no session middleware
        return JsonResponse({"engine": None})
    row = UserSession.objects.filter(key_hash=session.key_hash).first()
    return JsonResponse({"engine": "resilient", **describe(session), "tracked": row is not None})


def this_device_id(request: HttpRequest) -> int | None:
    """The ``UserSession`` primary key of the request's own session, if it has one."""
    session = resilient_session(request)
    if session is None or not session.key_hash:
        return None
    pk: int | None = (
        UserSession.objects.active()
        .filter(key_hash=session.key_hash)
        .values_list("pk", flat=True)
        .first()
    )
    return pk
