"""What changes between the two engines, shared by the peer suites' settings modules.

This folder (``tests/peer/site``) is put on ``sys.path`` of the suites' processes. Its
modules have a ``drs_peer_`` prefix and import nothing from the repository's ``tests``
package, because django-allauth's suite has a top-level ``tests`` package of its own.

The harness (``python -m tests.peer``) passes everything through environment variables:

``DRS_PEER_ENGINE``
    ``ours`` (``django_resilient_sessions``: engine, middleware and app) or ``cache``
    (``django.contrib.sessions.backends.cache`` with Django's middleware).
``DRS_PEER_REDIS_URL``
    The private redis-server of this run (the shared Redis on port 6379 is refused).
``DRS_PEER_DB`` / ``DRS_PEER_USE_TZ`` / ``DRS_PEER_DB_PREFIX``
    ``sqlite`` or ``postgres``; ``1`` or ``0``; the prefix of the test database names
    (unique per run, so that parallel or repeated runs never share a database).
``DRS_TEST_PG_HOST`` / ``_PORT`` / ``_USER`` / ``_PASSWORD`` / ``_NAME``
    PostgreSQL, as for the main suite (defaults 127.0.0.1, 5432, postgres, none, test).
``DRS_PEER_RESULT_FILE``
    Where the suite's per-test outcomes are written (JSON).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

OUR_ENGINE = "django_resilient_sessions.backends.resilient"
OUR_MIDDLEWARE = "django_resilient_sessions.middleware.SessionMiddleware"
OUR_APP = "django_resilient_sessions"
CACHE_ENGINE = "django.contrib.sessions.backends.cache"
DJANGO_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"
DJANGO_SESSIONS_APP = "django.contrib.sessions"

#: The cache alias the sessions use, so that tests playing with "default" leave them alone.
SESSIONS_ALIAS = "sessions"

ENGINES = ("ours", "cache")
SHARED_REDIS_PORT = 6379


def _require(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise RuntimeError(f"{name} is not set: run the peer suites with `python -m tests.peer`")
    return value


def engine() -> str:
    value = _require("DRS_PEER_ENGINE")
    if value not in ENGINES:
        raise RuntimeError(f"DRS_PEER_ENGINE must be one of {ENGINES}, not {value!r}")
    return value


def ours() -> bool:
    return engine() == "ours"


def session_engine() -> str:
    return OUR_ENGINE if ours() else CACHE_ENGINE


def redis_url() -> str:
    url = _require("DRS_PEER_REDIS_URL")
    parsed = urlsplit(url)
    if parsed.scheme not in ("redis", "rediss") or (parsed.port or 6379) == SHARED_REDIS_PORT:
        raise RuntimeError(f"DRS_PEER_REDIS_URL={url!r}: only a private redis-server is used")
    return url


def session_cache() -> dict[str, Any]:
    """The django-redis alias both engines keep sessions in.

    The suites compare the engines with Redis healthy (outages have suites of their own:
    tests/allauth, tests/test_outage_http.py). The README's 0.25 s socket timeouts let a
    busy machine (a loaded CI runner) pass for a hung Redis: our engine's breaker then
    serves seconds of tests from backups, where tests that read ``client.session`` (a
    store built outside any request, without the backup cookie) see nothing. 2 s keeps
    the runs about the engines, not the machine's load.
    """
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": redis_url(),
        "OPTIONS": {"SOCKET_TIMEOUT": 2.0, "SOCKET_CONNECT_TIMEOUT": 2.0},
    }


def keep_sessions_alias() -> None:
    """Give back the ``sessions`` alias to a ``CACHES`` that a test replaced wholesale.

    Tests that swap ``CACHES`` (``override_settings(CACHES={"default": ...})``, allauth's
    ``enable_cache`` fixture) mean to change the ``default`` cache; dropping the alias the
    sessions live in would make every request in them fail, with either engine. A project
    keeps that alias in its ``CACHES``, so the suites do too: whenever ``CACHES`` changes and
    the new value lacks ``sessions``, it is added back and Django's cache handler reloaded.
    """
    from django.core.signals import setting_changed

    def restore(*, setting: str, enter: bool, **kwargs: Any) -> None:
        if setting != "CACHES" or not enter:
            return  # leaving an override restores a value this already completed
        from asgiref.local import Local
        from django.conf import settings
        from django.core.cache import caches, close_caches

        if SESSIONS_ALIAS in settings.CACHES:
            return
        settings.CACHES[SESSIONS_ALIAS] = session_cache()
        close_caches()
        caches._settings = caches.settings = caches.configure_settings(None)
        caches._connections = Local()

    setting_changed.connect(restore, weak=False, dispatch_uid="drs_peer_keep_sessions_alias")


def middleware(paths: Iterable[str]) -> list[str]:
    """``paths`` with Django's SessionMiddleware replaced by ours (engine ``ours`` only)."""
    result = list(paths)
    if ours():
        result = [OUR_MIDDLEWARE if path == DJANGO_MIDDLEWARE else path for path in result]
        if OUR_MIDDLEWARE not in result:
            raise RuntimeError(f"no {DJANGO_MIDDLEWARE} to replace in {result}")
    return result


def installed_apps(apps: Iterable[str]) -> list[str]:
    """``apps`` with ours added before ``django.contrib.sessions`` (engine ``ours`` only)."""
    result = list(apps)
    if ours() and OUR_APP not in result:
        position = result.index(DJANGO_SESSIONS_APP) if DJANGO_SESSIONS_APP in result else 0
        result.insert(position, OUR_APP)
    return result


def use_tz(default: bool) -> bool:
    value = os.environ.get("DRS_PEER_USE_TZ", "").strip()
    return default if not value else value == "1"


def databases(default: dict[str, dict[str, Any]], aliases: Iterable[str]) -> dict[str, Any]:
    """``default`` on SQLite; on PostgreSQL the ``aliases`` with unique test database names."""
    if os.environ.get("DRS_PEER_DB", "sqlite") == "sqlite":
        return default
    prefix = _require("DRS_PEER_DB_PREFIX")
    base = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("DRS_TEST_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("DRS_TEST_PG_PORT", "5432"),
        "USER": os.environ.get("DRS_TEST_PG_USER", "postgres"),
        "PASSWORD": os.environ.get("DRS_TEST_PG_PASSWORD", ""),
        "NAME": os.environ.get("DRS_TEST_PG_NAME", "test"),
    }
    return {alias: {**base, "TEST": {"NAME": f"{prefix}_{alias}"}} for alias in aliases}
