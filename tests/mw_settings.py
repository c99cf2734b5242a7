"""Settings of the gunicorn server started by ``tests/test_multiworker.py``.

Everything comes from ``tests.settings``; this module only points the server at its own
database and Redis, which the test passes through the environment:

``DRS_TEST_DB``
    ``sqlite`` (default) or ``postgres``, as for the rest of the suite.
``DRS_MW_SQLITE``
    SQLite: path of the database file (the test makes it in a temporary directory).
``DRS_MW_PG_NAME``
    PostgreSQL: name of the database the test creates and drops (default ``drs_mw``);
    host, port, user and password are those of ``tests.settings``.
``DRS_TEST_REDIS_URL``
    The session cache (the test's own ``fault_redis`` server); required here.
``DRS_SESSION_CACHE_ALIAS``
    ``SESSION_CACHE_ALIAS`` (default ``default``; ``tests/test_health.py`` names a missing one).

It also puts ``tests.mw_observe`` first in ``MIDDLEWARE`` (it reports the worker's pid
and breaker state in response headers) and logs warnings to stderr (the server log).
"""

from __future__ import annotations

import os
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from tests.settings import *  # noqa: F403
from tests.settings import CACHES, DATABASES, MIDDLEWARE


def _required(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise ImproperlyConfigured(f"tests.mw_settings needs the environment variable {name}.")
    return value


_TEST_DB = os.environ.get("DRS_TEST_DB", "sqlite").strip().lower() or "sqlite"

# Two worker processes write to one SQLite file (logins: the ledger row). In SQLite's
# default DEFERRED transactions, two concurrent logins that both read before writing
# deadlock on the lock upgrade and one gets "database is locked" at once, without waiting
# for the busy timeout; IMMEDIATE transactions take the write lock up front and wait
# instead.
_SQLITE_OPTIONS: dict[str, Any] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}

if _TEST_DB == "postgres":
    DATABASES = {
        "default": {**DATABASES["default"], "NAME": os.environ.get("DRS_MW_PG_NAME", "drs_mw")},
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _required("DRS_MW_SQLITE"),
            "OPTIONS": _SQLITE_OPTIONS,
        },
    }

# tests.settings already refuses the shared Redis on port 6379 for this URL.
CACHES = {"default": {**CACHES["default"], "LOCATION": _required("DRS_TEST_REDIS_URL")}}

SESSION_CACHE_ALIAS = os.environ.get("DRS_SESSION_CACHE_ALIAS", "default")

RESILIENT_SESSIONS: dict[str, Any] = {"BREAKER_COOLDOWN": 0.5}

MIDDLEWARE = ["tests.mw_observe.WorkerHeadersMiddleware", *MIDDLEWARE]

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "[%(process)d] %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}
