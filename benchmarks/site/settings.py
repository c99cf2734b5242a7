"""Settings of the bench site: one project, the session engine chosen by the environment.

``DRS_BENCH_ENGINE``
    ``resilient`` (this package, with its middleware), ``cache``, ``cached_db``,
    ``signed_cookies`` or ``db`` (Django's engines, with Django's middleware).
``DRS_BENCH_REDIS_URL``
    The django-redis cache every engine shares (the bench's own redis-server; port 6379,
    the shared Redis, is refused).
``DRS_BENCH_CLUSTER_URLS``
    Comma-separated ``redis://`` URLs of Redis Cluster nodes: the cache is then this
    package's ``RedisClusterCache`` instead (the cluster section of the benchmarks).
``DRS_BENCH_DB``
    ``postgres`` (default) or ``sqlite``.
``DRS_BENCH_PG_NAME`` / ``DRS_BENCH_PG_HOST`` / ``DRS_BENCH_PG_PORT`` / ``DRS_BENCH_PG_USER`` /
``DRS_BENCH_PG_PASSWORD``
    PostgreSQL connection (host and port default to ``DRS_TEST_PG_HOST`` / ``DRS_TEST_PG_PORT``,
    then 127.0.0.1:5432, user ``postgres``, database ``drs_bench``).
``DRS_BENCH_SQLITE``
    SQLite: path of the database file.
``DRS_BENCH_LOG``
    File that receives warnings and errors (default: stderr).

The cache options are the ones the README recommends (0.25 s socket timeouts) and
``RESILIENT_SESSIONS`` keeps every default (a 5 s breaker cool-down), so the figures are
those of a site configured as documented. Database connections are persistent
(``CONN_MAX_AGE``), as on any production site, for every engine alike.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from benchmarks.site.engines import ENGINES

ENGINE_NAME = os.environ.get("DRS_BENCH_ENGINE", "resilient")
if ENGINE_NAME not in ENGINES:
    raise ImproperlyConfigured(f"DRS_BENCH_ENGINE must be one of {sorted(ENGINES)}")

SECRET_KEY = "drs-bench-not-a-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGH"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django_resilient_sessions",
    "django.contrib.sessions",
]

MIDDLEWARE = [
    "benchmarks.site.middleware.cookie_list",  # for wrk's cookie jars (outermost)
    (
        "django_resilient_sessions.middleware.SessionMiddleware"
        if ENGINE_NAME == "resilient"
        else "django.contrib.sessions.middleware.SessionMiddleware"
    ),
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

SESSION_ENGINE = ENGINES[ENGINE_NAME]
ROOT_URLCONF = "benchmarks.site.urls"
WSGI_APPLICATION = "benchmarks.site.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
# Logins are not what is measured.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

_DB = os.environ.get("DRS_BENCH_DB", "postgres")
DATABASES: dict[str, dict[str, Any]]
if _DB == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get(
                "DRS_BENCH_PG_HOST", os.environ.get("DRS_TEST_PG_HOST", "127.0.0.1")
            ),
            "PORT": os.environ.get("DRS_BENCH_PG_PORT", os.environ.get("DRS_TEST_PG_PORT", "5432")),
            "USER": os.environ.get("DRS_BENCH_PG_USER", "postgres"),
            "PASSWORD": os.environ.get("DRS_BENCH_PG_PASSWORD", ""),
            "NAME": os.environ.get("DRS_BENCH_PG_NAME", "drs_bench"),
            "CONN_MAX_AGE": 600,
        }
    }
elif _DB == "sqlite":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("DRS_BENCH_SQLITE", "drs-bench.sqlite3"),
            "OPTIONS": {"timeout": 20},
            "CONN_MAX_AGE": 600,
        }
    }
else:
    raise ImproperlyConfigured("DRS_BENCH_DB must be 'postgres' or 'sqlite'")

_redis_url = os.environ.get("DRS_BENCH_REDIS_URL", "redis://127.0.0.1:1/0")
if (urlsplit(_redis_url).port or 6379) == 6379:
    raise ImproperlyConfigured("DRS_BENCH_REDIS_URL must not point at port 6379 (shared Redis)")

CACHES: dict[str, dict[str, Any]] = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": _redis_url,
        "OPTIONS": {"SOCKET_TIMEOUT": 0.25, "SOCKET_CONNECT_TIMEOUT": 0.25},
    }
}
_cluster_urls = [url for url in os.environ.get("DRS_BENCH_CLUSTER_URLS", "").split(",") if url]
if _cluster_urls:
    if 6379 in {urlsplit(url).port or 6379 for url in _cluster_urls}:
        raise ImproperlyConfigured("DRS_BENCH_CLUSTER_URLS must not name port 6379")
    CACHES["default"] = {
        "BACKEND": "django_resilient_sessions.cache.RedisClusterCache",
        "LOCATION": _cluster_urls,
        "OPTIONS": {"socket_timeout": 0.25, "socket_connect_timeout": 0.25},
    }

RESILIENT_SESSIONS: dict[str, Any] = {}

_log_file = os.environ.get("DRS_BENCH_LOG")
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"}
    },
    "handlers": {
        "out": (
            {"class": "logging.FileHandler", "filename": _log_file, "formatter": "plain"}
            if _log_file
            else {"class": "logging.StreamHandler", "formatter": "plain"}
        )
    },
    # Django's default would also mail admins (building an HTML traceback) on every 500.
    "root": {"handlers": ["out"], "level": "WARNING"},
    "loggers": {"django": {"handlers": ["out"], "level": "WARNING", "propagate": False}},
}
