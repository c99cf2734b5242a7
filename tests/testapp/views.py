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
@require_GET
def session_state(request: HttpRequest) -> JsonResponse:
    """``whoami`` and ``get`` in one answer: the user and the data of the same request."""
    user = request.user
    data = {key: value for key, value in request.session.items() if not key.startswith("_")}
    return JsonResponse(
        {
            "user": user.get_username() if user.is_authenticated else None,
            "degraded": getattr(request.session, "degraded", None),
            "data": data,
        }
    )


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


@csrf_exempt
@require_POST
def session_clear(request: HttpRequest) -> JsonResponse:
    """``clear()`` the session: its data goes, login included, the key stays."""
    request.session.clear()
    return JsonResponse({"ok": True})


@csrf_exempt
@require_GET
def read_then_end_elsewhere(request: HttpRequest) -> JsonResponse:
    """Read the session, then log it out "in another tab" (another store, same key)."""
    from django.contrib.sessions.backends.base import SessionBase
    from django.utils.module_loading import import_string

    user = request.session.get("_auth_user_id")
    engine = import_string(request.session.__module__ + ".SessionStore")
    other: SessionBase = engine(request.session.session_key)
    other.flush()
    return JsonResponse({"user_before": user})


TYPED = {"pair": (1, 2), "count": 3, "by_id": {7: "seven"}}


@csrf_exempt
@require_POST
def set_typed(request: HttpRequest) -> JsonResponse:
    for key, value in TYPED.items():
        request.session[key] = value
    return JsonResponse({"ok": True})


@csrf_exempt
@require_GET
def typed(request: HttpRequest) -> JsonResponse:
    """The Python types the view sees for the values ``set_typed`` stored."""
    by_id = request.session.get("by_id", {})
    types = {
        "pair": type(request.session.get("pair")).__name__,
        "count": type(request.session.get("count")).__name__,
        "keys": type(next(iter(by_id), None)).__name__,
    }
    return JsonResponse({"types": types, "pair": request.session.get("pair")})


@csrf_exempt
@require_POST
def set_datetime(request: HttpRequest) -> JsonResponse:
    """A site's bug: a value JSON cannot hold (Django's ``cache`` engine would pickle it)."""
    from django.utils import timezone

    request.session["when"] = timezone.now()  # the line the TypeError must point at
    return JsonResponse({"ok": True})


@csrf_exempt
@require_POST
def save_by_key(request: HttpRequest) -> JsonResponse:
    """Save, by its key, a session this request did not load (as admin tools do).

    Answers the name of what ``save()`` raised (``None`` when it saved) and whether the
    key exists afterwards.
    """
    from importlib import import_module

    from django.conf import settings
    from django.contrib.sessions.backends.base import UpdateError

    engine = import_module(settings.SESSION_ENGINE).SessionStore
    key = request.POST["key"]
    store = engine(key)
    store.modified = True
    try:
        store.save()
    except UpdateError as error:
        raised: str | None = type(error).__name__
    else:
        raised = None
    return JsonResponse({"raised": raised, "exists": engine().exists(key)})


@csrf_exempt
@require_POST
def stash_and_rebuild(request: HttpRequest) -> JsonResponse:
    """What django-allauth does with an OAuth state: set it, save, then put a new store
    for the same key on the request (``SessionStore(key)``), for the middleware to save."""
    for key, value in request.POST.items():
        request.session[key] = value
    request.session.save()
    key = request.session.session_key
    request.session = type(request.session)(key)
    request.session.modified = True
    return JsonResponse({"ok": True})
