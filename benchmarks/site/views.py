"""Views of the bench site, and the session data every benchmark uses.

``POST /login/`` logs a user in and puts :data:`APP_DATA` (about 500 bytes of JSON: a cart,
preferences, a half-filled form) in the session, as a shop would. ``GET /read/`` reads the
session (the user and the cart); ``POST /write/`` changes it; ``POST /logout/`` logs out
(the sizing measurements count its cost). Every answer carries
``X-Bench-Auth: 1`` when the request was logged in, ``0`` when it was not, so the load
generator can count requests that were silently logged out.
"""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from tests.testapp.views import log_in_from_post

APP_DATA: dict[str, Any] = {
    "cart": [
        {"sku": "BK-1021-PB", "qty": 1, "price": "24.90", "title": "A Field Guide to Mushrooms"},
        {"sku": "MG-0331-BL", "qty": 2, "price": "12.50", "title": "Enamel mug, blue"},
        {"sku": "TS-7788-M", "qty": 1, "price": "19.00", "title": "T-shirt, size M"},
    ],
    "prefs": {"lang": "en-gb", "tz": "Europe/London", "currency": "GBP", "theme": "dark"},
    "checkout": {"step": 2, "shipping": "standard", "postcode": "EC1A 1BB", "gift": False},
    "recently_viewed": [10452, 10488, 11020, 9877, 10233, 12001, 11876, 10999],
    "flash": "Your basket was updated.",
}
"""About 500 bytes once serialized (checked in :func:`app_data_size`)."""


def app_data_size() -> int:
    return len(json.dumps(APP_DATA, separators=(",", ":")))


def _auth_header(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    response["X-Bench-Auth"] = "1" if request.user.is_authenticated else "0"
    return response


@csrf_exempt
@require_POST
def login_view(request: HttpRequest) -> HttpResponse:
    user = log_in_from_post(request)
    if user is None:
        return JsonResponse({"ok": False}, status=403)
    request.session.update(APP_DATA)
    return _auth_header(request, JsonResponse({"ok": True}))


@require_GET
def read_view(request: HttpRequest) -> HttpResponse:
    cart = request.session.get("cart", [])
    body = {"user": request.user.get_username() or None, "cart": len(cart)}
    return _auth_header(request, JsonResponse(body))


@csrf_exempt
@require_POST
def write_view(request: HttpRequest) -> HttpResponse:
    session = request.session
    session["visits"] = session.get("visits", 0) + 1
    session["flash"] = request.POST.get("note", "")[:100]
    body = {"user": request.user.get_username() or None, "visits": session["visits"]}
    return _auth_header(request, JsonResponse(body))


@csrf_exempt
@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    from django.contrib.auth import logout

    logout(request)
    return _auth_header(request, JsonResponse({"ok": True}))


@require_GET
def health_view(request: HttpRequest) -> HttpResponse:
    from django_resilient_sessions import health

    return JsonResponse(health.snapshot())
