"""Shared fixtures: private redis-server processes and the Django cache pointed at them.

Every test gets ``redis_server`` (autouse): one redis-server for the whole run, flushed
before each test, with the ``default`` cache alias pointing at it and the session engine's
circuit breakers reset before and after the test. Tests that break Redis (kill, pause,
restart) request ``fault_redis`` instead, which gives them a server of their own.

Nothing here ever connects to the shared Redis on port 6379.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from tests.redis_server import (
    CACHE_BACKENDS,
    RedisServer,
    django_cache_backend,
    django_cache_pointing_at,
    forget_django_redis_pools,
)

DJANGO_SUITE_SETTINGS = "tests.django_suite.settings"
_DJANGO_SUITE_DIR = Path(__file__).resolve().parent / "django_suite"
ALLAUTH_SETTINGS = "tests.allauth.settings"
_ALLAUTH_DIR = Path(__file__).resolve().parent / "allauth"
# The peer suites' harness (make test-peer): modules run in other processes, never tests here.
_PEER_DIR = Path(__file__).resolve().parent / "peer"

# Redis round trips make example timings noisy, and the per-test fixtures (flush, breaker
# reset) are intentionally per test rather than per example.
hypothesis_settings.register_profile(
    "drs",
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
hypothesis_settings.register_profile(
    "drs-ci",
    parent=hypothesis_settings.get_profile("drs"),
    derandomize=True,
    print_blob=True,
)
_default_profile = "drs-ci" if os.environ.get("CI") else "drs"
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default_profile))


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Keep Django's own session tests, the allauth site and the peer harness out of the main run.

    Django's session tests need ``tests.django_suite.settings`` (see ``make
    test-django-suite``) and the django-allauth tests ``tests.allauth.settings`` (``make
    test-allauth``), which pytest-django exports as DJANGO_SETTINGS_MODULE before
    collection starts. ``tests/peer/`` holds the harness of ``make test-peer`` (settings
    modules and runners for other projects' suites), tested by ``tests/test_peer_harness.py``.
    """
    if collection_path.resolve() == _PEER_DIR:
        return True
    if (
        collection_path.resolve() == _DJANGO_SUITE_DIR
        and os.environ.get("DJANGO_SETTINGS_MODULE") != DJANGO_SUITE_SETTINGS
    ):
        return True
    if (
        collection_path.resolve() == _ALLAUTH_DIR
        and os.environ.get("DJANGO_SETTINGS_MODULE") != ALLAUTH_SETTINGS
    ):
        return True
    return None


def _reset_breakers() -> None:
    """Fresh per-process state: breakers closed, the periodic purge check not yet due."""
    from django_resilient_sessions.breaker import reset_breakers
    from django_resilient_sessions.purges import restart_clock as restart_purge_clock

    reset_breakers()
    restart_purge_clock()


@pytest.fixture(scope="session")
def redis_server_process() -> Iterator[RedisServer]:
    """The private redis-server shared by the whole test run (stopped at the end)."""
    with RedisServer() as server:
        yield server


@pytest.fixture(autouse=True)
def redis_server(redis_server_process: RedisServer) -> Iterator[RedisServer]:
    """The shared private server, emptied, with the ``default`` cache alias pointing at it."""
    server = redis_server_process
    # Undo anything a previous test may have done to the shared server.
    server.ensure_running()
    server.flushall()
    with django_cache_pointing_at(server.url):
        _reset_breakers()
        try:
            yield server
        finally:
            _reset_breakers()
    server.ensure_running()


@pytest.fixture
def fault_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """A redis-server for this test only, free to be killed, paused or restarted.

    The ``default`` cache alias points at it (overriding ``redis_server``); it is stopped
    and its django-redis connection pools are dropped after the test.
    """
    with RedisServer() as server:
        url = server.url
        try:
            with django_cache_pointing_at(url):
                yield server
        finally:
            server.stop()
            forget_django_redis_pools(url)


@pytest.fixture(params=sorted(CACHE_BACKENDS))
def cache_backend(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[str]:
    """The ``default`` cache as each supported one-server backend in turn: django-redis,
    then Django's own ``RedisCache`` (``tests.redis_server.CACHE_BACKENDS``).

    With ``fault_redis`` or a proxy, in either order: each keeps what the other set.
    """
    with django_cache_backend(request.param):
        yield request.param
