"""Django settings for the django-resilient-sessions test suite.

Environment variables:

``DRS_TEST_DB``
    ``sqlite`` (default) or ``postgres``.
``DRS_TEST_PG_HOST`` / ``DRS_TEST_PG_PORT`` / ``DRS_TEST_PG_USER`` / ``DRS_TEST_PG_PASSWORD`` /
``DRS_TEST_PG_NAME``
    PostgreSQL connection (defaults: 127.0.0.1, 5432, postgres, no password, ``test``).
    pytest-django creates and drops ``test_<NAME>`` itself.
``DRS_TEST_REDIS_URL``
    Initial location of the ``default`` cache. The default points at a port where nothing
    listens; the autouse ``redis_server`` fixture in ``tests/conftest.py`` re-points the alias
    at a private redis-server for every test. The shared Redis on port 6379 is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "drs-tests-not-a-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django_resilient_sessions",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "tests.testapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django_resilient_sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

SESSION_ENGINE = "django_resilient_sessions.backends.resilient"

ROOT_URLCONF = "tests.testapp.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_TEST_DB = os.environ.get("DRS_TEST_DB", "sqlite").strip().lower() or "sqlite"

DATABASES: dict[str, dict[str, Any]]
if _TEST_DB == "sqlite":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            # Never created by the tests: pytest-django uses an in-memory test database.
            "NAME": str(BASE_DIR / "drs-tests.sqlite3"),
        },
    }
elif _TEST_DB == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("DRS_TEST_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("DRS_TEST_PG_PORT", "5432"),
            "USER": os.environ.get("DRS_TEST_PG_USER", "postgres"),
            "PASSWORD": os.environ.get("DRS_TEST_PG_PASSWORD", ""),
            "NAME": os.environ.get("DRS_TEST_PG_NAME", "test"),
            # One test database per run: concurrent runs (a matrix, a second checkout)
            # never drop each other's.
            "TEST": {"NAME": f"test_drs_{os.getpid()}"},
        },
    }
else:
    raise ImproperlyConfigured(f"DRS_TEST_DB must be 'sqlite' or 'postgres', not {_TEST_DB!r}")

# A second database, for the multi-database tests (tests/test_multidb.py): the same
# server, its own test database. Tests reach it only when they ask for it.
DATABASES["other"] = {
    **DATABASES["default"],
    "TEST": (
        {"NAME": f"{DATABASES['default']['TEST']['NAME']}_other"} if _TEST_DB == "postgres" else {}
    ),
}
if _TEST_DB == "sqlite":
    DATABASES["other"]["NAME"] = str(BASE_DIR / "drs-tests-other.sqlite3")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Fast hashing: the tests log users in a lot.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
USE_I18N = True

STATIC_URL = "static/"

_SHARED_REDIS_PORT = 6379

_REDIS_OPTIONS: dict[str, Any] = {
    "SOCKET_TIMEOUT": 0.25,
    "SOCKET_CONNECT_TIMEOUT": 0.25,
}

_redis_url = os.environ.get("DRS_TEST_REDIS_URL", "redis://127.0.0.1:1/0")
_parsed = urlsplit(_redis_url)
if _parsed.scheme in ("redis", "rediss") and (_parsed.port or 6379) == _SHARED_REDIS_PORT:
    raise ImproperlyConfigured(
        f"DRS_TEST_REDIS_URL={_redis_url!r} points at port {_SHARED_REDIS_PORT}, the shared "
        "Redis. The tests start their own redis-server; do not point them at a shared one."
    )

CACHES: dict[str, dict[str, Any]] = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": _redis_url,
        "OPTIONS": dict(_REDIS_OPTIONS),
    },
}

RESILIENT_SESSIONS: dict[str, Any] = {
    "BREAKER_COOLDOWN": 0.5,
}
