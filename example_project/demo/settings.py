"""Settings of the example site: django-resilient-sessions set up as in the README.

Environment variables (``run_demo.py`` sets them):

``DEMO_REDIS_URL``   the session cache (default ``redis://127.0.0.1:6390/0``)
``DEMO_DB_PATH``     the SQLite database file (default ``example_project/demo.sqlite3``)
``DEMO_DEBUG``       ``1`` (default) or ``0``; the outage buttons exist only with DEBUG on
``DEMO_SECRET_KEY``  the secret key (default: a fixed, public, demo-only value)

The demo never uses Redis' usual port 6379, so it cannot touch a Redis you run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent  # example_project/

SECRET_KEY = os.environ.get(
    "DEMO_SECRET_KEY", "demo-only-not-secret-7c1e0b9a4d2f4e6a8b3c5d7e9f1a2b4c6d8e0f2a"
)
DEBUG = os.environ.get("DEMO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django_resilient_sessions",  # before django.contrib.sessions (its clearsessions reports)
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django_resilient_sessions.middleware.SessionMiddleware",  # instead of Django's
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

SESSION_ENGINE = "django_resilient_sessions.backends.resilient"
SESSION_CACHE_ALIAS = "default"

REDIS_URL = os.environ.get("DEMO_REDIS_URL", "redis://127.0.0.1:6390/0")
if (urlsplit(REDIS_URL).port or 6379) == 6379:
    raise ImproperlyConfigured(
        f"DEMO_REDIS_URL={REDIS_URL!r}: the demo never uses port 6379, so that it cannot "
        "touch a Redis you run. `make demo` starts a redis-server of its own."
    )

CACHES: dict[str, dict[str, Any]] = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": {
            # A hung Redis must not hold requests: fail fast, the breaker does the rest.
            "SOCKET_TIMEOUT": 0.25,
            "SOCKET_CONNECT_TIMEOUT": 0.25,
        },
    }
}

RESILIENT_SESSIONS = {
    # Short, so that the demo shows Redis coming back within seconds.
    "BREAKER_COOLDOWN": 2.0,
}

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DEMO_DB_PATH") or str(BASE_DIR / "demo.sqlite3"),
    }
}

ROOT_URLCONF = "demo.urls"
WSGI_APPLICATION = "demo.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # demo/templates is searched before the apps: it overrides
        # django_resilient_sessions/base.html to put the sessions pages in the site's layout.
        "DIRS": [BASE_DIR / "demo" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "demo.context_processors.demo",
            ],
        },
    },
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "profile"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
USE_I18N = True
STATIC_URL = "static/"
