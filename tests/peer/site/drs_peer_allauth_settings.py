"""Settings for django-allauth's suite: its ``regular`` test project, with the engine swapped.

allauth's own settings (``tests.projects.regular.settings``: SQLite in memory, ``USE_TZ``
on, ``DummyCache`` as ``default``) plus, as for Django's suite, a django-redis ``sessions``
alias on the run's private redis-server named by ``SESSION_CACHE_ALIAS`` (kept when a test
replaces ``CACHES``, as allauth's ``enable_cache`` fixture does), and either our
engine, middleware and app or Django's ``cache`` engine with Django's middleware.
``DRS_PEER_DB`` / ``DRS_PEER_USE_TZ`` can move it to PostgreSQL or ``USE_TZ=False``.
"""

from __future__ import annotations

from drs_peer_common import (
    SESSIONS_ALIAS,
    databases,
    installed_apps,
    keep_sessions_alias,
    middleware,
    session_cache,
    session_engine,
    use_tz,
)

from tests.projects.regular.settings import *  # type: ignore[import-not-found]  # noqa: F403
from tests.projects.regular.settings import (  # type: ignore[import-not-found]
    CACHES,
    DATABASES,
    INSTALLED_APPS,
    MIDDLEWARE,
    USE_TZ,
)

DATABASES = databases(DATABASES, ("default",))
USE_TZ = use_tz(default=USE_TZ)
CACHES = {**CACHES, SESSIONS_ALIAS: session_cache()}
SESSION_CACHE_ALIAS = SESSIONS_ALIAS
SESSION_ENGINE = session_engine()
keep_sessions_alias()
INSTALLED_APPS = tuple(installed_apps(INSTALLED_APPS))
MIDDLEWARE = tuple(middleware(MIDDLEWARE))
