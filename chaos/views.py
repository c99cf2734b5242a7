"""The chaos app: a handful of JSON views that report the session's user on every answer.

``POST login/`` (username, password), ``POST logout/``, ``GET state/`` (user, data,
degraded, source) and ``POST set/`` (stores every posted pair; answers with the user).
Every view names the request's user, so the runner checks "still logged in" after every
request. All are CSRF-exempt: the virtual users are plain HTTP clients.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import logout
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from tests.testapp.views import log_in_from_post


def _user(request: HttpRequest) -> str | None:
    user = request.user
    return user.get_username() if user.is_authenticated else None


def _session_info(request: HttpRequest) -> dict[str, Any]:
    session: Any = request.session
    return {
        "degraded": getattr(session, "degraded", None),
        "source": getattr(session, "source", None),
    }


@csrf_exempt
@require_POST
def login_view(request: HttpRequest) -> JsonResponse:
    user = log_in_from_post(request)
    if user is None:
        return JsonResponse({"ok": False}, status=403)
    return JsonResponse({"ok": True, "user": user.get_username(), **_session_info(request)})


@csrf_exempt
@require_POST
def logout_view(request: HttpRequest) -> JsonResponse:
    logout(request)
    return JsonResponse({"ok": True})


@csrf_exempt
@require_GET
def state_view(request: HttpRequest) -> JsonResponse:
    data = {k: v for k, v in request.session.items() if not k.startswith("_")}
    return JsonResponse({"user": _user(request), "data": data, **_session_info(request)})


@csrf_exempt
@require_POST
def set_view(request: HttpRequest) -> JsonResponse:
    for key, value in request.POST.items():
        request.session[key] = value
    return JsonResponse({"ok": True, "user": _user(request), **_session_info(request)})
