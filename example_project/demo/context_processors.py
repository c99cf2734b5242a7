"""What every page shows: where this request's session came from, and the outage panel."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from .redisctl import DemoRedis


def session_source(request: HttpRequest) -> dict[str, Any]:
    """The banner: "redis", "backup" (Redis unavailable) or "none" (no session yet)."""
    session: Any = getattr(request, "session", None)
    user = getattr(request, "user", None)
    # Reading the user loads the session, so the engine has tried Redis by now.
    signed_in = bool(user is not None and user.is_authenticated)
    if session is not None and getattr(session, "degraded", False):
        source = "backup"
    elif session is None or session.session_key is None:
        source = "none"
    else:
        source = "redis"
    name = getattr(settings, "RESILIENT_SESSIONS", {}).get("BACKUP_COOKIE_NAME", "sessionbackup")
    backup_bytes = sum(
        len(value.encode()) for key, value in request.COOKIES.items() if key.startswith(name)
    )
    return {
        "source": source,
        # During an outage: False when the request had no usable backup (anonymous).
        "has_session": session is not None and session.session_key is not None,
        # Redis answered but had lost the session: it was put back from the backup cookie.
        "restored": source == "redis" and getattr(session, "source", None) == "backup",
        "backup_bytes": backup_bytes,
        "signed_in": signed_in,
    }


# action, label, help, the states in which the button makes sense
BUTTONS = [
    ("stop", "Stop Redis", "SIGKILL the server", {"running", "paused"}),
    ("hang", "Hang Redis", "SIGSTOP: connections open, no answers", {"running"}),
    ("resume", "Resume Redis", "SIGCONT a hung server", {"paused"}),
    ("flush", "Flush Redis", "FLUSHALL: every key gone", {"running"}),
    ("start", "Start Redis", "start it again, empty, on the same port", {"stopped"}),
]


def outage_panel(request: HttpRequest) -> dict[str, Any]:
    """The demo's own redis-server, its state and the buttons (only with DEBUG on)."""
    if not settings.DEBUG:
        return {"enabled": False}
    server = DemoRedis.from_env()
    status = server.status() if server is not None else None
    buttons = [
        {
            "action": action,
            "label": label,
            "help": help_text,
            "enabled": status is not None and status.state in states,
        }
        for action, label, help_text, states in BUTTONS
    ]
    return {"enabled": True, "server": server, "status": status, "buttons": buttons}


def demo(request: HttpRequest) -> dict[str, Any]:
    session: Any = getattr(request, "session", None)
    preferences = session.get("preferences", {}) if session is not None else {}
    return {
        "banner": session_source(request),
        "outage": outage_panel(request),
        "theme": preferences.get("theme", "light"),
    }
