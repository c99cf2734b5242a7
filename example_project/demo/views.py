"""Views of the example site: log in, profile, preferences, log out, outage buttons.

They use sessions exactly as any Django site does; the engine does the rest.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, logout
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from django_resilient_sessions.exceptions import SessionLimitExceeded
from django_resilient_sessions.models import UserSession

from .redisctl import DemoRedis, RedisControlError

DEFAULT_PREFERENCES = {"theme": "light", "note": ""}


def _wants_json(request: HttpRequest) -> bool:
    return request.content_type == "application/json" or request.headers.get(
        "Accept", ""
    ).startswith("application/json")


def _safe_next(request: HttpRequest, fallback: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return target
    return fallback


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return redirect("profile" if request.user.is_authenticated else "login")


@require_http_methods(["GET", "POST"])
def login_view(request: HttpRequest) -> HttpResponse:
    as_json = _wants_json(request)
    if request.method == "GET":
        if as_json:
            user = request.user.get_username() if request.user.is_authenticated else None
            return JsonResponse({"user": user, "csrf_token": get_token(request)})
        if request.user.is_authenticated:
            return redirect("profile")
        form = AuthenticationForm(request)
    else:
        data: Any = request.POST
        if request.content_type == "application/json":
            try:
                data = json.loads(request.body or b"{}")
            except ValueError:
                errors = {"__all__": [{"message": "The body is not JSON.", "code": "invalid"}]}
                return JsonResponse({"ok": False, "errors": errors}, status=400)
        form = AuthenticationForm(request, data=data)
        if form.is_valid():
            try:
                login(request, form.get_user())
            except SessionLimitExceeded as error:
                form.add_error(None, str(error))
            else:
                if as_json:
                    return JsonResponse({"ok": True, "user": form.get_user().get_username()})
                return redirect(_safe_next(request, "profile"))
        if as_json:
            return JsonResponse({"ok": False, "errors": form.errors.get_json_data()}, status=400)
    next_url = request.POST.get("next") or request.GET.get("next", "")
    return render(request, "demo/login.html", {"form": form, "next": next_url})


@login_required
@require_GET
def profile(request: HttpRequest) -> HttpResponse:
    row = UserSession.objects.filter(key_hash=request.session.key_hash).first()
    return render(request, "demo/profile.html", {"row": row})


class PreferencesForm(forms.Form):
    theme = forms.ChoiceField(
        choices=[("light", "Light"), ("dark", "Dark")], widget=forms.RadioSelect
    )
    note = forms.CharField(
        max_length=200, required=False, help_text="Any text; kept in your session."
    )


@require_http_methods(["GET", "POST"])
def preferences(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = PreferencesForm(request.POST)
        if form.is_valid():
            request.session["preferences"] = form.cleaned_data
            messages.success(request, "Preferences saved.")
            return redirect("preferences")
    else:
        current = {**DEFAULT_PREFERENCES, **request.session.get("preferences", {})}
        form = PreferencesForm(initial=current)
    return render(request, "demo/preferences.html", {"form": form})


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    messages.info(request, "You are signed out.")
    return redirect("login")


# -- outage buttons (DEBUG only) ---------------------------------------------------------------


def _stop(server: DemoRedis) -> str:
    pid = server.kill()
    return f"Redis stopped (SIGKILL to pid {pid})." if pid else "Redis was not running."


def _hang(server: DemoRedis) -> str:
    return f"Redis hangs (SIGSTOP to pid {server.pause()}): it accepts connections, answers none."


def _resume(server: DemoRedis) -> str:
    return f"Redis resumed (SIGCONT to pid {server.resume()})."


def _flush(server: DemoRedis) -> str:
    server.flushall()
    return "Redis flushed (FLUSHALL): every session copy in it is gone."


def _start(server: DemoRedis) -> str:
    return f"Redis started again, empty (pid {server.start()})."


REDIS_ACTIONS: dict[str, Callable[[DemoRedis], str]] = {
    "stop": _stop,
    "hang": _hang,
    "resume": _resume,
    "flush": _flush,
    "start": _start,
}


@require_POST
def redis_control(request: HttpRequest, action: str) -> HttpResponse:
    if not settings.DEBUG or action not in REDIS_ACTIONS:
        raise Http404("No such control.")
    server = DemoRedis.from_env()
    if server is None:
        messages.error(request, "No demo Redis is configured: start the site with `make demo`.")
    else:
        try:
            messages.success(request, REDIS_ACTIONS[action](server))
        except RedisControlError as error:
            messages.error(request, str(error))
    return redirect(_safe_next(request, "home"))
