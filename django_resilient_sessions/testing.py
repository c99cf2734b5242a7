"""Helpers for testing a site that uses the engine: logins with a backup cookie, Redis outages.

Django's ``Client.login()`` and ``Client.force_login()`` save the session themselves,
without the middleware, so the client gets a session cookie but no backup cookie, and
the first request during an outage is anonymous: the site's outage behaviour cannot be
tested that way.  Here a login goes through the engine's ``SessionMiddleware``, as a real
login view's does, and the client gets both cookies::

    from django_resilient_sessions.testing import login_with_backup, redis_outage

    login_with_backup(client, user)  # any django.test.Client
    with redis_outage():  # Redis refuses connections in this block
        response = client.get("/cart/")  # served from the backup cookie, still logged in

or ``client_class = ResilientClient`` in a ``TestCase``, whose ``login()`` and
``force_login()`` set the backup cookie too.  pytest fixtures built on these are in
:mod:`django_resilient_sessions.pytest_plugin` (opt-in).  ``docs/testing.md`` says what
:func:`redis_outage` simulates and what it does not.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, RequestFactory, override_settings

if TYPE_CHECKING:
    from django.contrib.auth.backends import BaseBackend
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.test import AsyncClient

    from .backends.resilient import SessionStore

__all__ = ["ResilientClient", "backup_cookies", "login_with_backup", "redis_outage"]

ENGINE = "django_resilient_sessions.backends.resilient"


def login_with_backup(
    client: Client | AsyncClient,
    user: AbstractBaseUser,
    backend: type[BaseBackend] | str | None = None,
    **request: Any,
) -> SessionStore:
    """Log ``user`` in on ``client`` through the engine; the client holds both cookies after.

    As ``Client.force_login()`` (no password check; ``backend`` defaults to the first of
    ``AUTHENTICATION_BACKENDS`` that can get a user), but the login runs through
    ``SessionMiddleware``: the ``UserSession`` row, the Redis copy and the backup
    cookie(s) are made as for a real login, and a session the client already has (an
    anonymous cart) is carried over as ``login()`` does.  ``request`` goes to
    ``RequestFactory.get()`` for the login request (``REMOTE_ADDR="192.0.2.1"``,
    ``headers={"user-agent": ...}``: what the ``UserSession`` row records).

    Returns the logged-in session (``key_hash`` names its row).  Raises what ``login()``
    raises (``SessionLimitExceeded`` under the ``refuse`` policy, ``LedgerUnavailable``),
    and ``ImproperlyConfigured`` when ``SESSION_ENGINE`` is not this engine.
    """
    from django.contrib.auth import login
    from django.http import HttpResponse

    from .backends.resilient import SessionStore
    from .middleware import SessionMiddleware

    middleware = SessionMiddleware(lambda request: HttpResponse())
    if not issubclass(middleware.SessionStore, SessionStore):
        raise ImproperlyConfigured(
            f"login_with_backup() needs SESSION_ENGINE = {ENGINE!r}, "
            f"not {settings.SESSION_ENGINE!r}: other engines have no backup cookie."
        )
    http = RequestFactory().get("/", **request)
    http.COOKIES = {name: morsel.value for name, morsel in client.cookies.items() if morsel.value}
    middleware.process_request(http)
    if backend is None:
        backend = _first_backend()
    anyone: Any = user  # django-stubs types login()'s user as AUTH_USER_MODEL
    login(http, anyone, backend)
    response = middleware.process_response(http, HttpResponse())
    if response.status_code != 200:  # the middleware's refusal page (503, 403)
        content = getattr(response, "content", b"").decode(errors="replace")
        raise RuntimeError(f"the login was refused ({response.status_code}): {content[:300]}")
    client.cookies.update(response.cookies)
    session: SessionStore = http.session  # type: ignore[assignment]  # checked above
    return session


def _first_backend() -> str | None:
    """As ``Client.force_login()``: the first backend that can get a user."""
    from django.contrib.auth import load_backend

    for path in settings.AUTHENTICATION_BACKENDS:
        if hasattr(load_backend(path), "get_user"):
            return path
    return None


def backup_cookies(client: Client | AsyncClient) -> dict[str, str]:
    """The backup cookie(s) the client holds (name: value), empty when it has none."""
    from . import cookies

    names = cookies.chunk_names()
    return {name: morsel.value for name, morsel in client.cookies.items() if name in names}


class ResilientClient(Client):
    """``django.test.Client`` whose ``login()`` and ``force_login()`` set the backup cookie.

    Both go through :func:`login_with_backup`; everything else is Django's client.  In a
    ``TestCase``: ``client_class = ResilientClient``.
    """

    def _login(self, user: Any, backend: Any = None) -> None:
        login_with_backup(self, user, backend)

    async def _alogin(self, user: Any, backend: Any = None) -> None:  # Django 5's alogin()
        from asgiref.sync import sync_to_async

        await sync_to_async(login_with_backup)(self, user, backend)

    @property
    def backup_cookies(self) -> dict[str, str]:
        """The backup cookie(s) this client holds: see :func:`backup_cookies`."""
        return backup_cookies(self)


@contextlib.contextmanager
def redis_outage(alias: str | None = None) -> Iterator[str]:
    """Within the block, the session cache alias points at an address that refuses connections.

    Not a mock: the engine, django-redis and redis-py run as in production and every
    connection attempt is refused at once (a local port held bound but not listening),
    so requests are served from backup cookies, saves go into new backups and
    ``degraded`` is true, as when Redis is down.  It simulates **Redis refusing
    connections** only: not a hung or slow Redis (timeouts), a Redis restarted empty, a
    failover, nor a database outage; and only in this process (a ``live_server`` thread
    included, not a server in another process).

    ``alias`` defaults to ``SESSION_CACHE_ALIAS``; yields the unreachable URL.  On leaving,
    the alias points at the real Redis again and the circuit breaker's cool-down is cut
    short: the next request probes Redis and runs the engine's recovery (the Redis
    deletions queued by logouts during the outage first), as after a real outage.  Usable
    as a decorator too.
    """
    alias = alias or settings.SESSION_CACHE_ALIAS
    if alias not in settings.CACHES:
        raise ImproperlyConfigured(f"redis_outage(): no cache alias {alias!r} in CACHES")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))  # never listen(): a connection gets a reset, at once
        url = f"redis://127.0.0.1:{held.getsockname()[1]}/0"
        try:
            with override_settings(CACHES=unreachable_caches(alias, url)):
                yield url
        finally:
            _forget_pools(url)
            _end_cool_down(alias)


def unreachable_caches(alias: str, url: str) -> dict[str, dict[str, Any]]:
    """``CACHES`` with ``alias`` at ``url`` alone (replicas and Sentinel left out)."""
    caches = {name: dict(config) for name, config in settings.CACHES.items()}
    config = caches[alias]
    options = dict(config.get("OPTIONS", {}))
    if _is_django_redis(str(config.get("BACKEND", ""))):
        for key in ("SENTINELS", "SENTINEL_KWARGS"):
            options.pop(key, None)
        for key in ("CLIENT_CLASS", "CONNECTION_POOL_CLASS"):
            if "sentinel" in str(options.get(key, "")).lower():
                options.pop(key)
        options["CONNECTION_FACTORY"] = "django_redis.pool.ConnectionFactory"
    caches[alias] = {**config, "LOCATION": url, "OPTIONS": options}
    return caches


def _is_django_redis(backend: str) -> bool:
    return backend.startswith("django_redis.")


def _forget_pools(url: str) -> None:
    """Drop django-redis' process-wide connection pools for ``url`` (no socket is open)."""
    with contextlib.suppress(Exception):
        from django_redis.pool import ConnectionFactory

        pools = ConnectionFactory._pools
        for key in [key for key in pools if isinstance(key, str) and key.startswith(url)]:
            del pools[key]


def _end_cool_down(alias: str) -> None:
    """Let the next request probe Redis, as it would once ``BREAKER_COOLDOWN`` had passed."""
    from .breaker import CLOSED, get_breaker

    breaker = get_breaker(alias)
    with breaker._lock:
        if breaker.state != CLOSED:
            breaker._retry_at = 0.0
