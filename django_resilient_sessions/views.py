"""The "your sessions" pages (list, sign out one, sign out all other devices),
and the operations endpoints :func:`health` and :func:`metrics`.

Views are thin: the work is in :mod:`.tracking`, :mod:`.status` and
:mod:`.metrics`.  The session pages answer JSON to a client that asks for it
(``Accept: application/json`` or ``?format=json``).  The operations endpoints
are not in ``django_resilient_sessions.urls`` (that is for users): route them yourself, where only
your load balancers and monitors can reach them (``docs/production.md``).
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST, require_safe

from . import metrics as metrics_module
from . import status, tracking
from .conf import conf
from .models import EndReason, UserSession
from .typing import resilient_session

__all__ = ["health", "metrics", "revoke_others", "revoke_session", "session_list"]


def _wants_json(request: HttpRequest) -> bool:
    accept = request.headers.get("Accept", "")
    return request.GET.get("format") == "json" or accept.startswith("application/json")


def _current(request: HttpRequest) -> str:
    session = resilient_session(request)
    return session.key_hash if session is not None else ""


def _row(row: UserSession, current: str) -> dict[str, Any]:
    return {
        "id": row.pk,
        "device": row.device_type,
        "browser": row.browser,
        "os": row.os,
        "ip": row.ip,
        "created_at": row.created_at.isoformat(),
        "last_activity": row.last_activity.isoformat(),
        "expires_at": row.expires_at.isoformat(),
        "current": row.key_hash == current,
    }


def _done(request: HttpRequest, message: str, **data: Any) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"ok": True, **data})
    messages.success(request, message, fail_silently=True)
    return redirect("resilient_sessions:list")


@login_required
@require_GET
def session_list(request: HttpRequest) -> HttpResponse:
    """GET: the user's active sessions, most recently active first, this device marked.

    JSON: ``{"sessions": [...]}``, each with ``id``, ``device``, ``browser``, ``os``, ``ip``,
    ``created_at``, ``last_activity``, ``expires_at`` and ``current``.
    """
    current = _current(request)
    rows = UserSession.objects.active().filter(user=request.user).order_by("-last_activity")
    if _wants_json(request):
        return JsonResponse({"sessions": [_row(row, current) for row in rows]})
    sessions = [(row, row.key_hash == current) for row in rows]
    context = {"sessions": sessions, "others": sum(1 for _, mine in sessions if not mine)}
    return render(request, "django_resilient_sessions/session_list.html", context)


@login_required
@require_POST
def revoke_session(request: HttpRequest, pk: int) -> HttpResponse:
    """POST: sign out one of the user's sessions (this one is a logout); 404 for another's."""
    row = get_object_or_404(UserSession.objects.active(), pk=pk, user=request.user)
    if row.key_hash == _current(request):
        logout(request)
        if _wants_json(request):
            return JsonResponse({"ok": True, "revoked": 1, "logged_out": True})
        return redirect("resilient_sessions:list")
    row.revoke(str(EndReason.REVOKED))
    return _done(request, _("The session was signed out."), revoked=1)


@login_required
@require_POST
def revoke_others(request: HttpRequest) -> HttpResponse:
    """POST: sign out every other session of the user, keeping this one."""
    count = tracking.end_user_sessions(request.user, str(EndReason.REVOKED), keep=_current(request))
    message = ngettext(
        "Signed out of %(count)d other session.", "Signed out of %(count)d other sessions.", count
    ) % {"count": count}
    return _done(request, message, revoked=count)


@never_cache
@require_safe
def health(request: HttpRequest) -> HttpResponse:
    """JSON ``{"status": "ok" | "degraded" | "down", ...}``: 503 only when down.

    Never raises; waits at most ``BREAKER_PROBE_TIMEOUT`` per Redis node and
    ``HEALTH_CHECK_TIMEOUT`` for the database (see :mod:`.status`).
    """
    report = status.check(live=True)
    code = 503 if report.status == status.DOWN else 200
    return JsonResponse(report.as_json(), status=code)


@never_cache
@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    """The Prometheus text exposition; 501 when ``prometheus-client`` is not installed."""
    if not metrics_module.AVAILABLE:
        return HttpResponse(
            "prometheus-client is not installed: "
            "pip install 'django-resilient-sessions[metrics]'\n",
            status=501,
            content_type="text/plain; charset=utf-8",
        )
    body = metrics_module.exposition(conf.HEALTH_CHECK_TIMEOUT)
    return HttpResponse(body, content_type=metrics_module.CONTENT_TYPE)
