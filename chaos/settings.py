"""Django settings of the chaos run's app servers (and of the runner's own ORM access).

Everything that differs between runs comes from the environment, set by the runner
(:mod:`chaos.infra`) before it starts gunicorn or calls ``django.setup()``:

``CHAOS_DB``
    ``sqlite`` or ``postgres``.
``CHAOS_SQLITE_PATH``
    SQLite: the database file (made in the run's temporary directory).
``CHAOS_PG_NAME`` and ``DRS_TEST_PG_HOST`` / ``_PORT`` / ``_USER`` / ``_PASSWORD``
    PostgreSQL: the run's own database (default ``drs_chaos``) and where the server is.
``CHAOS_REDIS_URL``
    A standalone Redis, ``redis://127.0.0.1:PORT/0``, or
``CHAOS_SENTINEL``
    ``127.0.0.1:PORT``: the session cache goes through Redis Sentinel (service
    ``CHAOS_SENTINEL_SERVICE``, default ``mymaster``) with django-redis' ``SentinelClient``, or
``CHAOS_REDIS_CLUSTER``
    comma-separated ``redis://127.0.0.1:PORT`` URLs of Redis Cluster nodes: the session cache
    is this package's ``RedisClusterCache`` (``python -m chaos cluster``).
``CHAOS_COOLDOWN``
    ``RESILIENT_SESSIONS["BREAKER_COOLDOWN"]`` (default 1.0 s).
``CHAOS_ENGINE_OPTIONS``
    JSON object merged into ``RESILIENT_SESSIONS`` (``--engine-option``).
``CHAOS_SQLITE_TIMEOUT``
    SQLite's busy timeout in seconds (default ``SQLITE_BUSY_TIMEOUT_S``; the cluster run,
    which has no ledger faults, waits longer: lock contention is not what it tests).
``CHAOS_SECURITY_LOG``
    File that receives the ``django.security.SuspiciousSession`` logger (one line per
    record); the fuzz run counts its lines.

The shared Redis on port 6379 is refused, whatever the environment says.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlsplit

import django
from django.core.exceptions import ImproperlyConfigured

FORBIDDEN_REDIS_PORT = 6379

SECRET_KEY = os.environ.get("CHAOS_SECRET_KEY", "drs-chaos-not-a-secret-0123456789-abcdefghijklmn")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django_resilient_sessions",
    "django.contrib.sessions",
]

MIDDLEWARE = [
    "chaos.observe.ObserveMiddleware",
    "django_resilient_sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

ROOT_URLCONF = "chaos.urls"
# The engine's 503 page (a login or logout the ledger could not record, for a client that
# did not ask for JSON) is a template.
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
SESSION_ENGINE = "django_resilient_sessions.backends.resilient"
SESSION_CACHE_ALIAS = "default"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
# Virtual users log in a lot; a slow hasher would only measure the hasher.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Users kept per process, so that a database fault meets the engine's ledger and not
# Django's own auth first (see chaos.auth).
AUTHENTICATION_BACKENDS = ["chaos.auth.DirectoryBackend"]

#: How long an app statement waits for a lock before failing (the "ledger table locked"
#: fault): long enough for ordinary contention on a loaded machine (SQLite's writers queue
#: on it, and a commit's fsync may take a while), short enough that a locked ledger fails
#: the request quickly instead of holding a sync worker.
SQLITE_BUSY_TIMEOUT_S = 0.5
PG_LOCK_TIMEOUT_MS = 200
PG_STATEMENT_TIMEOUT_MS = 5000

_DB = os.environ.get("CHAOS_DB", "sqlite").strip().lower()
DATABASES: dict[str, dict[str, Any]]
if _DB == "sqlite":
    # SQLite's busy timeout: a BEGIN EXCLUSIVE held by another process fails the
    # statement after this long (Django's default would wait 5 s).
    _timeout = float(os.environ.get("CHAOS_SQLITE_TIMEOUT", SQLITE_BUSY_TIMEOUT_S))
    _options: dict[str, Any] = {"timeout": _timeout}
    if django.VERSION >= (5, 1):
        # Writers take the lock up front instead of failing an upgrade under contention.
        _options["transaction_mode"] = "IMMEDIATE"
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("CHAOS_SQLITE_PATH", "chaos.sqlite3"),
            "OPTIONS": _options,
            # One connection per request: the "database unavailable" fault moves the file
            # away, which only new connections notice.
            "CONN_MAX_AGE": 0,
        }
    }
elif _DB == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("DRS_TEST_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("DRS_TEST_PG_PORT", "5432"),
            "USER": os.environ.get("DRS_TEST_PG_USER", "postgres"),
            "PASSWORD": os.environ.get("DRS_TEST_PG_PASSWORD", ""),
            "NAME": os.environ.get("CHAOS_PG_NAME", "drs_chaos"),
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
            # A locked ledger table makes app statements wait: lock_timeout fails them
            # fast; statement_timeout bounds anything else that would hang a worker.
            "OPTIONS": {
                "connect_timeout": 2,
                "options": f"-c lock_timeout={PG_LOCK_TIMEOUT_MS}ms "
                f"-c statement_timeout={PG_STATEMENT_TIMEOUT_MS}ms",
            },
        }
    }
else:
    raise ImproperlyConfigured(f"CHAOS_DB must be 'sqlite' or 'postgres', not {_DB!r}")

_REDIS_OPTIONS: dict[str, Any] = {"SOCKET_TIMEOUT": 0.25, "SOCKET_CONNECT_TIMEOUT": 0.25}

_sentinel = os.environ.get("CHAOS_SENTINEL", "")
_redis_url = os.environ.get("CHAOS_REDIS_URL", "")
_cluster = [url for url in os.environ.get("CHAOS_REDIS_CLUSTER", "").split(",") if url]
if _cluster:
    if FORBIDDEN_REDIS_PORT in {urlsplit(url).port or FORBIDDEN_REDIS_PORT for url in _cluster}:
        raise ImproperlyConfigured("CHAOS_REDIS_CLUSTER names port 6379: refused.")
    CACHES: dict[str, dict[str, Any]] = {
        "default": {
            "BACKEND": "django_resilient_sessions.cache.RedisClusterCache",
            "LOCATION": _cluster,
            "OPTIONS": {"socket_timeout": 0.25, "socket_connect_timeout": 0.25},
        }
    }
elif _sentinel:
    _host, _, _port = _sentinel.rpartition(":")
    if int(_port) == FORBIDDEN_REDIS_PORT:
        raise ImproperlyConfigured("CHAOS_SENTINEL points at port 6379: refused.")
    _service = os.environ.get("CHAOS_SENTINEL_SERVICE", "mymaster")
    # django-redis' documented Sentinel setup: the factory (global setting), the client
    # class and the pool class; LOCATION names the service, not a host.
    DJANGO_REDIS_CONNECTION_FACTORY = "django_redis.pool.SentinelConnectionFactory"
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://{_service}/0",
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.SentinelClient",
                "CONNECTION_POOL_CLASS": "redis.sentinel.SentinelConnectionPool",
                "SENTINELS": [(_host, int(_port))],
                "SENTINEL_KWARGS": {"socket_timeout": 0.25, "socket_connect_timeout": 0.25},
                **_REDIS_OPTIONS,
            },
        }
    }
elif _redis_url:
    if (urlsplit(_redis_url).port or FORBIDDEN_REDIS_PORT) == FORBIDDEN_REDIS_PORT:
        raise ImproperlyConfigured("CHAOS_REDIS_URL points at port 6379: refused.")
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": _redis_url,
            "OPTIONS": dict(_REDIS_OPTIONS),
        }
    }
else:
    raise ImproperlyConfigured(
        "chaos.settings needs CHAOS_SENTINEL, CHAOS_REDIS_URL or CHAOS_REDIS_CLUSTER."
    )

RESILIENT_SESSIONS: dict[str, Any] = {
    "BREAKER_COOLDOWN": float(os.environ.get("CHAOS_COOLDOWN", "1.0")),
    # --engine-option KEY=VALUE (e.g. FAIL_CLOSED=false: the run must then fail).
    **json.loads(os.environ.get("CHAOS_ENGINE_OPTIONS", "{}")),
}

_SECURITY_LOG = os.environ.get("CHAOS_SECURITY_LOG", "")
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "plain"},
        "security": (
            {"class": "logging.FileHandler", "filename": _SECURITY_LOG, "formatter": "plain"}
            if _SECURITY_LOG
            else {"class": "logging.StreamHandler", "formatter": "plain"}
        ),
    },
    "loggers": {
        "django.security.SuspiciousSession": {
            "handlers": ["security"],
            "level": "WARNING",
            "propagate": False,
        },
        # WARNING: 4xx answers are logged too (and their exception reported to the runner).
        "django.request": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "django_resilient_sessions": {
            "handlers": ["stderr"],
            "level": "WARNING",
            "propagate": False,
        },
        "chaos": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
    },
}
