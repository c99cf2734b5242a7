"""Settings for Django's own ``tests/runtests.py`` (``--settings=drs_peer_django_settings``).

Django's example ``test_sqlite.py`` (both aliases, MD5 hasher, ``AutoField``) plus:

* the database (SQLite in memory or PostgreSQL) and ``USE_TZ`` of the mode;
* ``CACHES["sessions"]``, a django-redis alias on the run's private redis-server, named by
  ``SESSION_CACHE_ALIAS``; ``default`` stays Django's local-memory cache; the alias is
  put back when a test replaces ``CACHES`` (``drs_peer_common.keep_sessions_alias``);
* ``SESSION_ENGINE``: ours or ``django.contrib.sessions.backends.cache``;
* a test runner that records every outcome (``drs_peer_django_runner``).

``runtests.py`` sets ``INSTALLED_APPS`` and ``MIDDLEWARE`` itself from its
``ALWAYS_INSTALLED_APPS`` / ``ALWAYS_MIDDLEWARE``; ``drs_peer_runtests`` patches those lists
for our engine (our app, our middleware in place of Django's).
"""

from __future__ import annotations

from drs_peer_common import (
    SESSIONS_ALIAS,
    databases,
    keep_sessions_alias,
    session_cache,
    session_engine,
    use_tz,
)

DATABASES = databases(
    {
        "default": {"ENGINE": "django.db.backends.sqlite3"},
        "other": {"ENGINE": "django.db.backends.sqlite3"},
    },
    ("default", "other"),
)

SECRET_KEY = "django_tests_secret_key"

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

USE_TZ = use_tz(default=False)

CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    SESSIONS_ALIAS: session_cache(),
}
SESSION_CACHE_ALIAS = SESSIONS_ALIAS
SESSION_ENGINE = session_engine()
keep_sessions_alias()

TEST_RUNNER = "drs_peer_django_runner.RecordingRunner"
