"""Settings of the django-allauth test site (``make test-allauth``).

The main test settings (database choice, ``DRS_TEST_DB``, per-run PostgreSQL test database,
secret key, fast hasher) with django-allauth's ``account``, ``usersessions`` and
``headless`` apps next to this engine, as the README's "django-allauth" section
recommends:

- sessions on their own django-redis alias, ``sessions`` (``SESSION_CACHE_ALIAS``), with
  short socket timeouts; ``tests/allauth/conftest.py`` points it at a private
  redis-server (the one the test kills, pauses and restarts);
- Django's ``default`` cache, which allauth's rate limits use, kept off that Redis (a
  local-memory cache here): rate-limited allauth views (login, signup, password reset)
  would otherwise fail while the session Redis is down, whatever the session engine;
- ``USERSESSIONS_TRACK_ACTIVITY`` on, with allauth's ``UserSessionsMiddleware``;
- a tiny ``BREAKER_COOLDOWN``, so that tests wait a fraction of a second for recovery.
"""

from __future__ import annotations

from typing import Any

from tests.settings import *  # noqa: F403
from tests.settings import _REDIS_OPTIONS, CACHES, DATABASES

# The second database is for tests/test_multidb.py only.
DATABASES = {"default": DATABASES["default"]}

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django_resilient_sessions",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",  # allauth.usersessions' list template loads it
    "allauth",
    "allauth.account",
    "allauth.usersessions",
    "allauth.headless",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django_resilient_sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "allauth.usersessions.middleware.UserSessionsMiddleware",
]

ROOT_URLCONF = "tests.allauth.urls"

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]

SESSION_ENGINE = "django_resilient_sessions.backends.resilient"
SESSION_CACHE_ALIAS = "sessions"

CACHES = {
    # allauth's rate limits (and anything else using the default cache): not the session Redis.
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    # Re-pointed at a private redis-server by tests/allauth/conftest.py for every test.
    "sessions": {**CACHES["default"], "OPTIONS": dict(_REDIS_OPTIONS)},
}

RESILIENT_SESSIONS: dict[str, Any] = {
    "BREAKER_COOLDOWN": 0.2,
}

ACCOUNT_LOGIN_METHODS = {"username"}
ACCOUNT_SIGNUP_FIELDS = ["username*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "none"
LOGIN_REDIRECT_URL = "/whoami/"
ACCOUNT_LOGOUT_REDIRECT_URL = "/whoami/"

USERSESSIONS_TRACK_ACTIVITY = True

HEADLESS_CLIENTS = ("app", "browser")
