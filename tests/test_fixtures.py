"""Tests of the test infrastructure itself: private redis-server processes and fixtures."""

from __future__ import annotations

import os

import pytest
import redis
from django.conf import settings
from django.core.cache import caches

from tests.redis_server import FORBIDDEN_PORT, RedisServer, redis_url_port


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_private_server_answers(redis_server: RedisServer) -> None:
    assert redis_server.running
    assert redis_server.port != FORBIDDEN_PORT
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    with redis_server.client() as conn:
        assert conn.ping() is True


@pytest.mark.parametrize("attempt", [1, 2])
def test_server_is_flushed_before_each_test(redis_server: RedisServer, attempt: int) -> None:
    with redis_server.client() as conn:
        # Whichever of the two runs second would see the other's key without the flush.
        assert conn.dbsize() == 0
        conn.set(f"left-over-{attempt}", "x")


def test_kill_makes_connections_fail(fault_redis: RedisServer) -> None:
    with fault_redis.client() as conn:
        assert conn.ping()
        fault_redis.kill()
        assert not fault_redis.running
        with pytest.raises(redis.exceptions.ConnectionError):
            conn.ping()
    with fault_redis.client() as fresh, pytest.raises(redis.exceptions.ConnectionError):
        fresh.ping()


def test_start_after_kill_uses_same_port(fault_redis: RedisServer) -> None:
    port = fault_redis.port
    fault_redis.kill()
    fault_redis.start()
    assert fault_redis.port == port
    with fault_redis.client() as conn:
        assert conn.ping()


def test_pause_times_out_and_resume_recovers(fault_redis: RedisServer) -> None:
    with fault_redis.client(socket_timeout=0.2) as conn:
        assert conn.ping()
        fault_redis.pause()
        assert fault_redis.paused
        with pytest.raises(redis.exceptions.TimeoutError):
            conn.ping()
        fault_redis.resume()
        assert not fault_redis.paused
        assert conn.ping()


def test_restart_comes_back_empty(fault_redis: RedisServer) -> None:
    port = fault_redis.port
    with fault_redis.client() as conn:
        conn.set("survives", "no")
    old_pid = fault_redis.pid
    fault_redis.restart()
    assert fault_redis.port == port
    assert fault_redis.pid != old_pid
    with fault_redis.client() as conn:
        assert conn.get("survives") is None
        assert conn.dbsize() == 0


def test_django_cache_points_at_private_server(redis_server: RedisServer) -> None:
    location = settings.CACHES["default"]["LOCATION"]
    assert location == redis_server.url
    assert redis_url_port(location) != FORBIDDEN_PORT
    assert settings.CACHES["default"]["OPTIONS"]["SOCKET_TIMEOUT"] == 0.25

    caches["default"].set("fixture-probe", 42)
    with redis_server.client() as conn:
        assert any(b"fixture-probe" in key for key in conn.keys("*"))
    assert caches["default"].get("fixture-probe") == 42


def test_fault_redis_overrides_cache_alias(
    redis_server: RedisServer, fault_redis: RedisServer
) -> None:
    assert fault_redis.port != redis_server.port
    assert settings.CACHES["default"]["LOCATION"] == fault_redis.url

    caches["default"].set("which-server", "fault")
    with fault_redis.client() as conn:
        assert conn.dbsize() == 1
    with redis_server.client() as conn:
        assert conn.dbsize() == 0


def test_django_cache_fails_when_fault_redis_is_killed(fault_redis: RedisServer) -> None:
    caches["default"].set("k", "v")
    fault_redis.kill()
    # django-redis re-raises the underlying redis-py error from its cache API.
    with pytest.raises(redis.exceptions.ConnectionError):
        caches["default"].get("k")
    fault_redis.start()
    assert caches["default"].get("k") is None  # back, but empty


def test_context_manager_and_stop_leave_no_process() -> None:
    with RedisServer() as server:
        pid = server.pid
        assert pid is not None
        server.pause()  # stop() must also cope with a paused process
    assert not server.running
    assert not _process_exists(pid)
    server.stop()  # idempotent


def test_refuses_the_shared_redis_port() -> None:
    with pytest.raises(ValueError):
        RedisServer(port=FORBIDDEN_PORT)


@pytest.mark.django_db
def test_database_matches_drs_test_db() -> None:
    from django.db import connection

    expected = {"sqlite": "sqlite", "postgres": "postgresql"}[
        os.environ.get("DRS_TEST_DB", "sqlite")
    ]
    assert connection.vendor == expected
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
