"""JSON views used by the tests to drive sessions through the full middleware stack.

All views are CSRF-exempt so that plain test clients and HTTP clients can POST to them.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import authenticate, login, logout
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST


def log_in_from_post(request: HttpRequest) -> Any:
    """Authenticate the POSTed username and password and log in; the user, or None.

    Shared with the chaos and benchmark sites, whose login views answer differently.
    """
    user = authenticate(
        request,
        username=request.POST.get("username", ""),
        password=request.POST.get("password", ""),
    )
    if user is not None:
        login(request, user)
    return user


@csrf_exempt
@require_POST
def login_view(request: HttpRequest) -> JsonResponse:
    if log_in_from_post(request) is None:
        return JsonResponse({"ok": False}, status=403)
    return JsonResponse({"ok": True})


@csrf_exempt
@require_POST
def logout_view(request: HttpRequest) -> JsonResponse:
    logout(request)
    return JsonResponse({"ok": True})


@csrf_exempt
@require_GET
def whoami(request: HttpRequest) -> JsonResponse:
    user = request.user
    return JsonResponse(
        {
            "user": user.get_username() if user.is_authenticated else None,
            "degraded": getattr(request.session, "degraded", None),
        }
    )


@csrf_exempt
@require_POST
def session_set(request: HttpRequest) -> JsonResponse:
    """Store every POSTed key=value pair (last value wins) in the session."""
    for key, value in request.POST.items():
        request.session[key] = value
    return JsonResponse({"ok": True, "keys": sorted(request.POST.keys())})


@csrf_exempt
@require_GET
def session_get(request: HttpRequest) -> JsonResponse:
    """Return the session contents, leaving out Django's internal ``_``-prefixed keys."""
    data = {key: value for key, value in request.session.items() if not key.startswith("_")}
    return JsonResponse(data)


@csrf_exempt
@require_POST
def session_expiry(request: HttpRequest) -> JsonResponse:
    """``set_expiry(seconds)`` on the session."""
    request.session.set_expiry(int(request.POST["seconds"]))
    return JsonResponse({"ok": True})


@csrf_exempt
@require_POST
def session_flush(request: HttpRequest) -> JsonResponse:
    """``flush()`` the session (what logout does, for an anonymous visitor too)."""
    request.session.flush()
    return JsonResponse({"ok": True})
