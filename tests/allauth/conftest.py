"""Fixtures of the django-allauth site: the ``sessions`` cache alias on a private redis-server.

``tests/conftest.py`` gives every test ``redis_server`` (one private server for the run,
flushed per test) pointed at by the ``default`` alias.  This site keeps sessions on the
``sessions`` alias (``tests/allauth/settings.py``), so here:

- ``sessions_on_shared_server`` (autouse) points ``sessions`` at that same server (and
  empties the ``default`` cache, where allauth's rate limits count);
- ``outage_redis`` gives a test a server of its own, pointed at by ``sessions``, to kill,
  pause and restart; it is stopped and its connection pools dropped afterwards.

Nothing here connects to the shared Redis on port 6379.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings
from django.core.cache import caches

from tests.redis_server import RedisServer, django_cache_pointing_at, forget_django_redis_pools

ALIAS = "sessions"


@pytest.fixture(autouse=True)
def sessions_on_shared_server(redis_server: RedisServer) -> Iterator[RedisServer]:
    assert settings.SESSION_CACHE_ALIAS == ALIAS
    with django_cache_pointing_at(redis_server.url, alias=ALIAS):
        # allauth's rate limits count in the default (local memory) cache: none carried over.
        caches["default"].clear()
        yield redis_server


@pytest.fixture
def outage_redis(sessions_on_shared_server: RedisServer) -> Iterator[RedisServer]:
    """A redis-server for this test only, holding its sessions: free to break."""
    with RedisServer() as server:
        url = server.url
        try:
            with django_cache_pointing_at(url, alias=ALIAS):
                yield server
        finally:
            server.stop()
            forget_django_redis_pools(url)
