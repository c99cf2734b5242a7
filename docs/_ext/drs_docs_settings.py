"""Django settings for building the documentation (``docs/conf.py`` calls ``django.setup()``).

Autodoc imports the package's modules, and its models need the app registry. Nothing
here is ever connected to: no database query and no Redis command runs during a build.
"""

from __future__ import annotations

SECRET_KEY = "drs-docs-build-not-a-secret"
DEBUG = False
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django_resilient_sessions",
    "django.contrib.sessions",
]

MIDDLEWARE = [
    "django_resilient_sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

SESSION_ENGINE = "django_resilient_sessions.backends.resilient"

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}

# Port 1: nothing listens there, and nothing connects during a build.
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
        "OPTIONS": {"SOCKET_TIMEOUT": 0.25, "SOCKET_CONNECT_TIMEOUT": 0.25},
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
