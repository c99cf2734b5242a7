"""Sites on each of Django's four session engines, and the same site switched to this one.

Shared by the adoption tests: ``previous_site(engine)`` is the settings of a site on a
stock engine (Django's own ``SessionMiddleware``), ``resilient_site(engine)`` the same
site on the resilient engine with ``PREVIOUS_ENGINE`` set to it.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.test import override_settings

DB = "django.contrib.sessions.backends.db"
CACHE = "django.contrib.sessions.backends.cache"
CACHED_DB = "django.contrib.sessions.backends.cached_db"
SIGNED = "django.contrib.sessions.backends.signed_cookies"
ENGINES = (DB, CACHE, CACHED_DB, SIGNED)
OURS = "django_resilient_sessions.backends.resilient"
DJANGO_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"
OUR_MIDDLEWARE = "django_resilient_sessions.middleware.SessionMiddleware"


def previous_site(engine: str) -> Any:
    """Settings of the test site on ``engine`` with Django's own session middleware."""
    middleware = [DJANGO_MIDDLEWARE if m == OUR_MIDDLEWARE else m for m in settings.MIDDLEWARE]
    return override_settings(SESSION_ENGINE=engine, MIDDLEWARE=middleware)


def resilient_site(engine: str | None, **options: Any) -> Any:
    """The test site on the resilient engine, adopting from ``engine``."""
    ours = dict(settings.RESILIENT_SESSIONS)
    ours.update(options)
    if engine is not None:
        ours["PREVIOUS_ENGINE"] = engine
    middleware = [OUR_MIDDLEWARE if m == DJANGO_MIDDLEWARE else m for m in settings.MIDDLEWARE]
    return override_settings(SESSION_ENGINE=OURS, MIDDLEWARE=middleware, RESILIENT_SESSIONS=ours)
