"""System checks: a misconfiguration is an error with a stable ID, not a surprise.

==========================================  =====================================================
ID                                          problem
==========================================  =====================================================
``django_resilient_sessions.E001``          ``RESILIENT_SESSIONS`` is not a dict
``django_resilient_sessions.E002``          unknown key in ``RESILIENT_SESSIONS``
``django_resilient_sessions.E003``          bad value for a key
``django_resilient_sessions.E004``          engine is ours, our middleware (or subclass) missing
``django_resilient_sessions.E005``          another session middleware: Django's, or ours twice
``django_resilient_sessions.E006``          ``SESSION_CACHE_ALIAS`` is not in ``CACHES``
``django_resilient_sessions.E007``          that cache is not a supported Redis cache backend
``django_resilient_sessions.E009``          backup cookie name clashes with another cookie
``django_resilient_sessions.E010``          our middleware comes after one that reads the session
``django_resilient_sessions.E011``          the ledger is routed to another database than the users
``django_resilient_sessions.E012``          a cluster cache whose key prefix breaks the hash tags
``django_resilient_sessions.E013``          ``PREVIOUS_ENGINE`` is not a usable other session engine
``django_resilient_sessions.E014``          ``EXPORT_TO`` is not an engine to mirror sessions into
``django_resilient_sessions.E015``          ``PREVIOUS_ENGINE`` and ``EXPORT_TO`` are both set
``django_resilient_sessions.E016``          ``PROMETHEUS_MULTIPROC_DIR`` is not a writable directory
``django_resilient_sessions.W001``          no socket timeouts on the session cache
``django_resilient_sessions.W002``          our middleware without our engine
``django_resilient_sessions.W003``          (deploy) ``SESSION_COOKIE_SECURE`` is off
``django_resilient_sessions.W004``          (deploy) ``SESSION_COOKIE_HTTPONLY`` is off
``django_resilient_sessions.W005``          ``IDLE_TIMEOUT`` under twice the activity interval
``django_resilient_sessions.W006``          the metrics view is routed, prometheus-client missing
==========================================  =====================================================
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

from .conf import DEFAULTS

ENGINE = "django_resilient_sessions.backends.resilient"
CLUSTER_BACKEND = "django_resilient_sessions.cache.RedisClusterCache"
MIDDLEWARE = "django_resilient_sessions.middleware.SessionMiddleware"
DJANGO_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"
ID = "django_resilient_sessions."
COOKIE_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")


def _int_in(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _importable(value: Any) -> bool:
    if value is None:
        return True
    try:
        return callable(import_string(value))
    # import_string raises ImportError, but a broken module may raise anything.
    except Exception:
        return False


VALIDATORS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "BACKUP_COOKIE_NAME": (
        lambda v: isinstance(v, str) and bool(COOKIE_NAME.match(v)),
        "a cookie name (letters, digits, !#$%&'*+-.^_`|~)",
    ),
    "BACKUP_COOKIE_MAX_BYTES": (_int_in(1024, 4096), "an integer from 1024 to 4096"),
    "BACKUP_COOKIE_MAX_CHUNKS": (_int_in(1, 8), "an integer from 1 to 8"),
    "ESSENTIAL_KEYS": (
        lambda v: isinstance(v, (list, tuple)) and all(isinstance(k, str) for k in v),
        "a list of session key names",
    ),
    "BREAKER_COOLDOWN": (
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 3600,
        "a number of seconds above 0 and at most 3600",
    ),
    "BREAKER_PROBE_TIMEOUT": (
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 10,
        "a number of seconds above 0 and at most 10",
    ),
    "FAIL_CLOSED": (lambda v: isinstance(v, bool), "True or False"),
    "CACHE_KEY_PREFIX": (lambda v: isinstance(v, str), "a string"),
    "ACTIVITY_UPDATE_INTERVAL": (_int_in(0, 86400), "an integer number of seconds, 0 to 86400"),
    "TRACK_IP": (lambda v: isinstance(v, bool), "True or False"),
    "IP_RESOLVER": (_importable, "None or the dotted path of a callable(request)"),
    "ENDED_RETENTION_DAYS": (_int_in(0, 3650), "an integer number of days, 0 to 3650"),
    "CLEANUP_BATCH_SIZE": (_int_in(1, 100_000), "an integer from 1 to 100000"),
    "PURGE_CHECK_INTERVAL": (
        lambda v: (
            v is None
            or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 86400)
        ),
        "None or a number of seconds from 0 to 86400",
    ),
    "MAX_SESSIONS_PER_USER": (
        lambda v: v is None or _int_in(1, 10_000)(v),
        "None or an integer from 1 to 10000",
    ),
    "SESSION_LIMIT_POLICY": (
        lambda v: v in ("evict_oldest", "refuse"),
        '"evict_oldest" or "refuse"',
    ),
    "IDLE_TIMEOUT": (
        lambda v: v is None or _int_in(1, 10**8)(v),
        "None or a positive number of seconds",
    ),
    "ABSOLUTE_TIMEOUT": (
        lambda v: v is None or _int_in(1, 10**8)(v),
        "None or a positive number of seconds",
    ),
    "PREVIOUS_ENGINE": (
        lambda v: v is None or (isinstance(v, str) and bool(v)),
        "None or the dotted path of a session engine (E013 checks it)",
    ),
    "EXPORT_TO": (
        lambda v: v is None or (isinstance(v, str) and bool(v)),
        "None or the dotted path of a session engine (E014 checks it)",
    ),
    "BACKUP_LOADS_WINDOW": (
        lambda v: v is None or _int_in(1, 1440)(v),
        "None or an integer number of minutes from 1 to 1440",
    ),
    "HEALTH_CHECK_TIMEOUT": (
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 30,
        "a number of seconds above 0 and at most 30",
    ),
}
assert VALIDATORS.keys() == DEFAULTS.keys()


@register()
def check_settings(**kwargs: Any) -> list[CheckMessage]:
    options = getattr(settings, "RESILIENT_SESSIONS", {})
    if not isinstance(options, dict):
        return [Error("RESILIENT_SESSIONS must be a dict.", id=ID + "E001")]
    errors: list[CheckMessage] = []
    for key in sorted(options):
        if key not in DEFAULTS:
            errors.append(
                Error(
                    f"Unknown key {key!r} in RESILIENT_SESSIONS.",
                    hint="Known keys: " + ", ".join(sorted(DEFAULTS)) + ".",
                    id=ID + "E002",
                )
            )
        elif not VALIDATORS[key][0](options[key]):
            errors.append(
                Error(
                    f"RESILIENT_SESSIONS[{key!r}] is {options[key]!r}.",
                    hint=f"It must be {VALIDATORS[key][1]}.",
                    id=ID + "E003",
                )
            )
    idle = options.get("IDLE_TIMEOUT")
    interval = options.get("ACTIVITY_UPDATE_INTERVAL", DEFAULTS["ACTIVITY_UPDATE_INTERVAL"])
    if isinstance(idle, int) and isinstance(interval, int) and idle < 2 * interval:
        errors.append(
            Warning(
                f"IDLE_TIMEOUT ({idle} s) is less than twice ACTIVITY_UPDATE_INTERVAL "
                f"({interval} s): activity is recorded once per interval, so active users "
                "may be timed out.",
                hint="Lower ACTIVITY_UPDATE_INTERVAL or raise IDLE_TIMEOUT.",
                id=ID + "W005",
            )
        )
    name = options.get("BACKUP_COOKIE_NAME", DEFAULTS["BACKUP_COOKIE_NAME"])
    taken = {settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME, settings.LANGUAGE_COOKIE_NAME}
    if name in taken:
        errors.append(
            Error(
                f"The backup cookie name {name!r} is already used by another Django cookie.",
                hint="Set RESILIENT_SESSIONS['BACKUP_COOKIE_NAME'] to another name.",
                id=ID + "E009",
            )
        )
    return errors


@register()
def check_other_engines(**kwargs: Any) -> list[CheckMessage]:
    """``PREVIOUS_ENGINE`` and ``EXPORT_TO`` name usable engines (see ``engines.py``)."""
    options = getattr(settings, "RESILIENT_SESSIONS", {})
    if not isinstance(options, dict):
        return []  # E001
    from . import engines

    errors: list[CheckMessage] = []
    previous, export = options.get("PREVIOUS_ENGINE"), options.get("EXPORT_TO")
    for name, value, export_, id_ in (
        ("PREVIOUS_ENGINE", previous, False, ID + "E013"),
        ("EXPORT_TO", export, True, ID + "E014"),
    ):
        usable = isinstance(value, str) and bool(value)  # other values: E003
        found = engines.problem(value, export=export_) if usable else None
        if found is not None:
            errors.append(Error(f"RESILIENT_SESSIONS[{name!r}] is {value!r}: {found}", id=id_))
    if previous and export:
        errors.append(
            Error(
                "RESILIENT_SESSIONS sets both PREVIOUS_ENGINE and EXPORT_TO: sessions "
                "mirrored into one store would be adopted back from the other.",
                hint="Set PREVIOUS_ENGINE while switching to this engine, EXPORT_TO while "
                "leaving it; not both.",
                id=ID + "E015",
            )
        )
    return errors


def _class(path: str) -> type | None:
    try:
        found = import_string(path)
    # A wrong dotted path raises ImportError; a broken module may raise anything.
    except Exception:
        return None
    return found if isinstance(found, type) else None


def uses_our_engine() -> bool:
    """Is ``SESSION_ENGINE`` this engine, or a site's own engine module whose
    ``SessionStore`` subclasses it (as Django's docs show for extending an engine)?"""
    if settings.SESSION_ENGINE == ENGINE:
        return True
    store = _class(settings.SESSION_ENGINE + ".SessionStore")
    if store is None:
        return False  # another engine, or one that does not import (Django says so at use)
    from .backends.resilient import SessionStore

    return issubclass(store, SessionStore)


def _is(path: str, base: str) -> bool:
    """Is the middleware at ``path`` the class at ``base``, or a subclass of it?"""
    cls, parent = _class(path), _class(base)
    return cls is not None and parent is not None and issubclass(cls, parent)


#: Middleware that reads ``request.session``: ours must run before it.
SESSION_READERS = (
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
)
MESSAGES = "django.contrib.messages.middleware.MessageMiddleware"
#: Message storages that keep messages in the session (Django's default is the fallback).
SESSION_MESSAGE_STORAGES = (
    "django.contrib.messages.storage.session.SessionStorage",
    "django.contrib.messages.storage.fallback.FallbackStorage",
)


def _reads_session(path: str) -> bool:
    if _is(path, MESSAGES):
        storage = getattr(
            settings, "MESSAGE_STORAGE", "django.contrib.messages.storage.fallback.FallbackStorage"
        )
        return any(_is(storage, kind) for kind in SESSION_MESSAGE_STORAGES)
    return any(_is(path, reader) for reader in SESSION_READERS)


def misplaced(middleware: list[str]) -> list[tuple[str, str]]:
    """``(message, hint)`` for each session reader above our middleware in ``middleware``.

    Also used by the middleware itself where checks do not run.
    """
    position = next((i for i, path in enumerate(middleware) if _is(path, MIDDLEWARE)), None)
    if position is None:
        return []
    return [
        (
            f"{path!r} comes before the resilient SessionMiddleware in MIDDLEWARE, "
            "but it reads request.session, which that middleware sets.",
            f"Move {middleware[position]!r} above position {i}.",
        )
        for i, path in enumerate(middleware[:position])
        if _reads_session(path)
    ]


def duplicated(middleware: list[str]) -> list[tuple[str, str]]:
    """``(message, hint)`` when another session middleware runs beside ours: Django's,
    or ours a second time (each would save the session again, and Django's sends no
    backup with its save).  Also used by the middleware itself where checks do not run.
    """
    ours = [path for path in middleware if _is(path, MIDDLEWARE)]
    if not ours:
        return []
    problems = []
    if any(_is(path, DJANGO_MIDDLEWARE) and not _is(path, MIDDLEWARE) for path in middleware):
        problems.append(
            (
                "Both Django's SessionMiddleware and the resilient one are installed.",
                f"Remove {DJANGO_MIDDLEWARE!r} from MIDDLEWARE.",
            )
        )
    if len(ours) > 1:
        problems.append(
            (
                f"The resilient SessionMiddleware is installed {len(ours)} times "
                f"({', '.join(ours)}).",
                "Keep one of them in MIDDLEWARE.",
            )
        )
    return problems


@register()
def check_wiring(**kwargs: Any) -> list[CheckMessage]:
    middleware = list(settings.MIDDLEWARE)
    ours_engine = uses_our_engine()
    position = next((i for i, path in enumerate(middleware) if _is(path, MIDDLEWARE)), None)
    errors: list[CheckMessage] = []
    if ours_engine and position is None:
        errors.append(
            Error(
                "SESSION_ENGINE is the resilient engine but its middleware is not installed: "
                "no backup cookie is ever written.",
                hint=f"Replace {DJANGO_MIDDLEWARE!r} with {MIDDLEWARE!r} in MIDDLEWARE.",
                id=ID + "E004",
            )
        )
    for message, hint in duplicated(middleware):
        errors.append(Error(message, hint=hint, id=ID + "E005"))
    for message, hint in misplaced(middleware):
        errors.append(Error(message, hint=hint, id=ID + "E010"))
    if position is not None and not ours_engine:
        errors.append(
            Warning(
                "The resilient SessionMiddleware is installed but SESSION_ENGINE is "
                f"{settings.SESSION_ENGINE!r}: sessions have no backup.",
                hint=f"Set SESSION_ENGINE = {ENGINE!r}.",
                id=ID + "W002",
            )
        )
    if ours_engine:
        errors.extend(_check_cache())
        errors.extend(_check_routing())
    return errors


def _related(first: tuple[type, str], second: tuple[type, str]) -> bool:
    """May rows of these models on these databases reference each other?

    The same database, or two that the routers' ``allow_relation`` accepts (replicas of
    one primary, say); without a router's opinion Django says "the same database".
    """
    from django.db import router

    if first[1] == second[1]:
        return True
    one, two = first[0](), second[0]()
    one._state.db, two._state.db = first[1], second[1]
    return bool(router.allow_relation(one, two))


def _check_routing() -> list[CheckMessage]:
    from django.contrib.auth import get_user_model
    from django.db import router

    from .models import UserSession

    user = get_user_model()
    ledger, users = router.db_for_write(UserSession), router.db_for_write(user)
    reads, user_reads = router.db_for_read(UserSession), router.db_for_read(user)
    if ledger != users or not router.allow_migrate_model(ledger, UserSession):
        problem = (
            f"The UserSession ledger is routed to the database {ledger!r}, the user model "
            f"{user._meta.label} to {users!r}: its rows reference the users, so logins "
            "would fail."
        )
    elif not _related((UserSession, reads), (user, user_reads)):
        problem = (
            f"The UserSession ledger is read from the database {reads!r} (db_for_read), the "
            f"user model {user._meta.label} from {user_reads!r}: the session lists and the "
            "admin would look for the ledger's rows where they are not."
        )
    else:
        return []
    return [
        Error(
            problem,
            hint="Route the django_resilient_sessions app with the user model (db_for_read, "
            "db_for_write and allow_migrate), as for django.contrib.sessions.",
            id=ID + "E011",
        )
    ]


def _check_cache() -> list[CheckMessage]:
    alias = settings.SESSION_CACHE_ALIAS
    config = settings.CACHES.get(alias)
    if config is None:
        return [
            Error(
                f"SESSION_CACHE_ALIAS {alias!r} is not in CACHES.",
                hint="Add a django-redis cache (or Django's RedisCache) under that alias.",
                id=ID + "E006",
            )
        ]
    backend = config.get("BACKEND", "")
    django_redis = _is(backend, "django_redis.cache.RedisCache")
    builtin = _is(backend, "django.core.cache.backends.redis.RedisCache")
    if not (django_redis or builtin):
        return [
            Error(
                f"The session cache {alias!r} is {backend!r}, not a Redis cache.",
                hint="Use 'django_redis.cache.RedisCache', "
                "'django.core.cache.backends.redis.RedisCache' or, for Redis Cluster, "
                f"{CLUSTER_BACKEND!r} for the session cache.",
                id=ID + "E007",
            )
        ]
    options = config.get("OPTIONS", {})
    client_class = str(options.get("CLIENT_CLASS", ""))
    if django_redis and client_class and _is(client_class, "django_redis.client.ShardClient"):
        return [
            Error(
                f"The session cache {alias!r} uses django-redis's ShardClient, which spreads "
                "keys over several servers itself: the engine needs one primary.",
                hint="Use DefaultClient or SentinelClient for the session cache (or, to "
                f"spread sessions over several nodes, Redis Cluster with {CLUSTER_BACKEND!r}).",
                id=ID + "E007",
            )
        ]
    errors: list[CheckMessage] = []
    # (No check of django-redis' IGNORE_EXCEPTIONS: the engine talks to Redis through
    # the redis-py client, which that option does not wrap, so an outage is an outage.)
    if _is(backend, CLUSTER_BACKEND):
        ours = getattr(settings, "RESILIENT_SESSIONS", {})
        own = (
            ours.get("CACHE_KEY_PREFIX", DEFAULTS["CACHE_KEY_PREFIX"])
            if isinstance(ours, dict)
            else ""
        )
        # (Django's default key function puts KEY_PREFIX and VERSION before the key.)
        if "{" in str(config.get("KEY_PREFIX", "")) + str(config.get("VERSION", "")) + str(own):
            errors.append(
                Error(
                    f"The Redis Cluster session cache {alias!r} has a '{{' in its KEY_PREFIX, "
                    "its VERSION or RESILIENT_SESSIONS['CACHE_KEY_PREFIX']: a session's key "
                    "hash must be its key's hash tag, or every session falls in one slot and "
                    "queued deletions cannot tell their node.",
                    hint="Remove '{' from them.",
                    id=ID + "E012",
                )
            )
    names = ("SOCKET_TIMEOUT", "SOCKET_CONNECT_TIMEOUT")
    if builtin:
        names = ("socket_timeout", "socket_connect_timeout")  # redis-py's own keywords
    missing = [k for k in names if not options.get(k)]
    if missing:
        errors.append(
            Warning(
                f"The session cache {alias!r} has no {' or '.join(missing)}: a hung Redis "
                "makes the probe request wait for the operating system's timeout.",
                hint=f"Set OPTIONS {' and '.join(names)}, e.g. 0.25 seconds.",
                id=ID + "W001",
            )
        )
    return errors


@register(Tags.security, deploy=True)
def check_cookie_flags(**kwargs: Any) -> list[CheckMessage]:
    if not uses_our_engine():
        return []
    warnings: list[CheckMessage] = []
    if not settings.SESSION_COOKIE_SECURE:
        warnings.append(
            Warning(
                "SESSION_COOKIE_SECURE is off: the session and backup cookies travel over "
                "plain HTTP.",
                hint="Set SESSION_COOKIE_SECURE = True behind HTTPS.",
                id=ID + "W003",
            )
        )
    if not settings.SESSION_COOKIE_HTTPONLY:
        warnings.append(
            Warning(
                "SESSION_COOKIE_HTTPONLY is off: scripts can read the session cookie.",
                hint="Set SESSION_COOKIE_HTTPONLY = True.",
                id=ID + "W004",
            )
        )
    return warnings


@register()
def check_metrics(**kwargs: Any) -> list[CheckMessage]:
    from . import metrics, views

    errors: list[CheckMessage] = []
    folder = metrics.multiprocess_dir()
    if (
        metrics.AVAILABLE
        and folder
        and not (os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK))
    ):
        errors.append(
            Error(
                f"PROMETHEUS_MULTIPROC_DIR is {folder!r}, which is not a writable directory: "
                "every session metric would fail to be written.",
                hint="Create it (empty) before the workers start, or unset the variable.",
                id=ID + "E016",
            )
        )
    if not metrics.AVAILABLE and any(v is views.metrics for v in _routed_views()):
        errors.append(
            Warning(
                "django_resilient_sessions.views.metrics is routed but prometheus-client is "
                "not installed: it answers 501.",
                hint="pip install 'django-resilient-sessions[metrics]'.",
                id=ID + "W006",
            )
        )
    return errors


def _routed_views() -> list[Any]:
    """Every view callable of the root URLconf (nothing if it cannot be loaded)."""
    from django.urls import URLPattern, URLResolver, get_resolver

    def walk(patterns: Any) -> Iterator[Any]:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns)
            elif isinstance(pattern, URLPattern):
                yield pattern.callback

    try:
        return list(walk(get_resolver().url_patterns))
    # A URLconf that fails to import is reported by Django's own checks (urls.E...).
    except Exception:
        return []
