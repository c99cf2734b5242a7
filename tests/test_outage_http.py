"""The outage contract, end to end over HTTP.

Every test drives the test app through Django's test ``Client`` (the full middleware
stack, cookies kept between requests, backup cookie included) against a private
redis-server that the test kills, restarts empty, flushes or hangs (SIGSTOP).  Covered:

- a logged-in user keeps their identity and every session value while Redis is dead,
  writes made during the outage survive it, and the session is written back to Redis
  once the breaker lets a probe through;
- Redis restarted empty or flushed: sessions come back from their backups;
- a hung Redis costs one socket timeout per cool-down, not one per request;
- a backup written during the outage is newer than the cache copy and wins on recovery;
- new visitors and logins during the outage;
- a client without its backup cookie is anonymous during the outage but keeps its
  session cookie, and is logged in again once Redis answers;
- the middleware re-issues a missing or stale backup;
- ``request.session.degraded``, ``health.snapshot()`` and the engine's signals.

(The test app has no async view, so the async path is not exercised here.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from typing import Any

import pytest
from django.conf import settings
from django.core.signing import JSONSerializer
from django.test import Client, override_settings

from django_resilient_sessions import health, signals
from django_resilient_sessions.backends.resilient import SessionStore
from django_resilient_sessions.breaker import get_breaker
from django_resilient_sessions.cachecopy import Entry
from django_resilient_sessions.models import PendingPurge, UserSession
from django_resilient_sessions.testing import _end_cool_down
from tests.redis_server import CountingConnectionPool, RedisServer, counting_pool
from tests.web import (
    BACKUP_COOKIE,
    PASSWORD,
    cookie,
    get_values,
    in_redis,
    key_hash,
    login,
    make_user,
    ok,
    redis_key_for_hash,
    replay,
    session_key,
    set_values,
    whoami,
)

# Each test on django-redis and on Django's own RedisCache (tests/conftest.py).
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("cache_backend")]

COOLDOWN = 0.2
USERNAME = "alice"


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def short_cooldown() -> Iterator[None]:
    with override_settings(RESILIENT_SESSIONS={"BREAKER_COOLDOWN": COOLDOWN}):
        yield


def wait_cooldown(seconds: float = COOLDOWN) -> None:
    """Sleep past the breaker's cool-down so the next cache call is a probe."""
    time.sleep(seconds + 0.05)


def redis_key(key: str) -> str:
    return redis_key_for_hash(key_hash(key))


def cached_data(server: RedisServer, key: str) -> dict[str, Any] | None:
    """The session data stored in Redis for ``key`` (None when there is no entry)."""
    with server.client() as raw:
        value = raw.get(redis_key(key))
    if value is None:
        return None
    entry = Entry.load(value, JSONSerializer)
    assert entry is not None, value
    return entry.data


def public(data: dict[str, Any] | None) -> dict[str, Any]:
    assert data is not None
    return {k: v for k, v in data.items() if not k.startswith("_")}


def cache_only_client(key: str) -> Client:
    """A client carrying the session cookie and no backup: it sees only the cache copy."""
    other = Client()
    other.cookies = SimpleCookie({settings.SESSION_COOKIE_NAME: key})
    return other


def logged_in_with_values(**values: str) -> Client:
    make_user()
    client = Client()
    login(client)
    set_values(client, **values)
    assert whoami(client) == {"user": USERNAME, "degraded": False}
    return client


# -- Redis killed -----------------------------------------------------------------------------


def test_redis_killed_user_keeps_session_and_it_is_written_back(fault_redis: RedisServer) -> None:
    client = logged_in_with_values(a="1", b="two")
    key = session_key(client)
    assert in_redis(fault_redis, key)

    fault_redis.kill()
    assert whoami(client) == {"user": USERNAME, "degraded": True}
    assert get_values(client) == {"a": "1", "b": "two"}
    set_values(client, c="3", a="1bis")
    assert session_key(client) == key
    assert get_values(client) == {"a": "1bis", "b": "two", "c": "3"}
    assert whoami(client) == {"user": USERNAME, "degraded": True}

    fault_redis.start()  # comes back empty
    assert not in_redis(fault_redis, key)
    wait_cooldown()
    assert whoami(client) == {"user": USERNAME, "degraded": False}
    assert in_redis(fault_redis, key)
    assert public(cached_data(fault_redis, key)) == {"a": "1bis", "b": "two", "c": "3"}
    assert get_values(client) == {"a": "1bis", "b": "two", "c": "3"}
    # The write-back holds the login: the cache copy alone logs the user in.
    assert whoami(cache_only_client(key))["user"] == USERNAME


def test_redis_restarted_empty_sessions_come_back(fault_redis: RedisServer) -> None:
    client = logged_in_with_values(a="1", b="2")
    key = session_key(client)

    fault_redis.restart()
    assert not in_redis(fault_redis, key)
    assert whoami(client)["user"] == USERNAME
    assert get_values(client) == {"a": "1", "b": "2"}
    assert in_redis(fault_redis, key)
    assert public(cached_data(fault_redis, key)) == {"a": "1", "b": "2"}
    assert whoami(client) == {"user": USERNAME, "degraded": False}


def test_flushall_sessions_come_back(fault_redis: RedisServer) -> None:
    client = logged_in_with_values(a="1", b="2")
    key = session_key(client)

    fault_redis.flushall()
    assert not in_redis(fault_redis, key)
    assert whoami(client) == {"user": USERNAME, "degraded": False}
    assert get_values(client) == {"a": "1", "b": "2"}
    assert in_redis(fault_redis, key)
    assert public(cached_data(fault_redis, key)) == {"a": "1", "b": "2"}
    set_values(client, c="3")
    assert public(cached_data(fault_redis, key)) == {"a": "1", "b": "2", "c": "3"}


# -- Redis hung -------------------------------------------------------------------------------


@pytest.fixture
def pool(fault_redis: RedisServer) -> Iterator[type[CountingConnectionPool]]:
    """The cache's pooled connections, counted (see :func:`counting_pool`)."""
    with counting_pool() as counted:
        yield counted


@override_settings(RESILIENT_SESSIONS={"BREAKER_COOLDOWN": 3600.0})
def test_hung_redis_costs_one_timeout_then_short_probes(
    fault_redis: RedisServer, pool: type[CountingConnectionPool]
) -> None:
    """Counted, never timed: the waits show as pooled connections and breaker failures.

    The cool-down is an hour and is ended by hand (as ``redis_outage()`` does on leaving),
    so no request of the skipping phase can turn into a probe however slow the machine.
    """
    client = logged_in_with_values(a="1")
    assert pool.checkouts > 0  # the cache's pool is the counting one, whichever the backend
    breaker = get_breaker("default")

    fault_redis.pause()
    try:
        checkouts = pool.checkouts
        assert whoami(client) == {"user": USERNAME, "degraded": True}
        # It waited on the hung server once: a pooled connection, a socket timeout.
        assert pool.checkouts > checkouts
        assert (breaker.failures, breaker.trips) == (1, 1)
        assert breaker.last_error is not None and breaker.last_error.startswith("Timeout")

        for _ in range(3):
            assert_skips_redis(lambda: whoami(client), {"user": USERNAME, "degraded": True})
        assert_skips_redis(lambda: get_values(client), {"a": "1"})
        assert breaker.failures == 1  # none of them waited

        # Next cool-down: one probe waits BREAKER_PROBE_TIMEOUT (not a socket timeout),
        # the requests after it do not wait at all.
        _end_cool_down("default")
        errors = health.snapshot()["counters"]["cache_errors"]
        checkouts = pool.checkouts
        assert whoami(client) == {"user": USERNAME, "degraded": True}
        assert health.snapshot()["counters"]["cache_errors"] == errors + 1  # the probe failed
        assert breaker.failures == 2  # ...waiting for its PING to time out...
        assert breaker.last_error is not None and breaker.last_error.startswith("Timeout")
        assert pool.checkouts == checkouts  # ...on a bounded connection, not a pooled one
        assert breaker.trips == 1  # the same outage
        assert_skips_redis(lambda: whoami(client), {"user": USERNAME, "degraded": True})
    finally:
        fault_redis.resume()

    _end_cool_down("default")
    assert whoami(client) == {"user": USERNAME, "degraded": False}
    assert get_values(client) == {"a": "1"}
    assert breaker.state == "closed"


def assert_skips_redis(request: Any, expected: dict[str, Any]) -> None:
    """The request is answered without waiting on Redis: the breaker skipped it."""
    before = health.snapshot()["counters"]
    assert request() == expected
    after = health.snapshot()["counters"]
    assert after["cache_errors"] == before["cache_errors"], "a request waited on Redis"
    assert after["cache_skipped"] > before["cache_skipped"]


def test_write_during_outage_is_newer_than_cache_copy(fault_redis: RedisServer) -> None:
    client = logged_in_with_values(a="1")
    key = session_key(client)
    assert public(cached_data(fault_redis, key)) == {"a": "1"}

    fault_redis.pause()
    try:
        set_values(client, a="2")  # the cache times out: the change lives in the backup only
        assert get_values(client) == {"a": "2"}
    finally:
        fault_redis.resume()
    # The hung server kept its (now older) copy.
    assert public(cached_data(fault_redis, key)) == {"a": "1"}

    wait_cooldown()
    assert get_values(client) == {"a": "2"}
    assert public(cached_data(fault_redis, key)) == {"a": "2"}
    # A client holding only the session cookie reads the cache copy: the new version.
    other = cache_only_client(key)
    assert get_values(other) == {"a": "2"}
    assert whoami(other) == {"user": USERNAME, "degraded": False}


# -- New visitors and missing backups ---------------------------------------------------------


def test_new_visitor_and_login_while_redis_is_down(fault_redis: RedisServer) -> None:
    user = make_user()
    fault_redis.kill()
    client = Client()

    set_values(client, cart="3")
    assert cookie(client, settings.SESSION_COOKIE_NAME)
    assert cookie(client, BACKUP_COOKIE)
    assert get_values(client) == {"cart": "3"}
    assert whoami(client) == {"user": None, "degraded": True}

    login(client)
    assert whoami(client) == {"user": USERNAME, "degraded": True}
    assert get_values(client) == {"cart": "3"}
    key = session_key(client)
    row = UserSession.objects.get(key_hash=key_hash(key))
    assert row.user == user and row.is_active

    fault_redis.start()
    wait_cooldown()
    # The old key's deletion may have been queued (the first save of the outage
    # cannot know whether Redis took it): the probe drains it after its response.
    assert whoami(client)["user"] == USERNAME
    assert not PendingPurge.objects.exists()
    assert whoami(client) == {"user": USERNAME, "degraded": False}
    assert in_redis(fault_redis, key)
    assert get_values(client) == {"cart": "3"}


def test_client_without_backup_keeps_its_login_and_session_cookie(
    fault_redis: RedisServer,
) -> None:
    """No backup (an app with a session token, a cookie lost): the login alone, from its
    ledger row, while Redis hangs; the rest of the session is back with Redis."""
    client = logged_in_with_values(a="1")
    key = session_key(client)
    del client.cookies[BACKUP_COOKIE]

    fault_redis.pause()
    try:
        response = client.get("/whoami/")
        assert ok(response) == {"user": USERNAME, "degraded": True}
        assert settings.SESSION_COOKIE_NAME not in response.cookies
        assert session_key(client) == key
        response = client.get("/get/")
        assert ok(response) == {}  # the login only: the data is in Redis
        assert settings.SESSION_COOKIE_NAME not in response.cookies
    finally:
        fault_redis.resume()

    wait_cooldown()
    response = client.get("/whoami/")
    assert ok(response) == {"user": USERNAME, "degraded": False}
    assert session_key(client) == key
    assert cookie(client, BACKUP_COOKIE)  # re-issued with the cache answering
    assert get_values(client) == {"a": "1"}


def test_a_session_without_backup_written_during_an_outage_keeps_the_write(
    fault_redis: RedisServer,
) -> None:
    """Served from its ledger row (no backup at hand), then written to: the new backup
    is numbered past the versions the row saw served, so it is not refused later as a
    rollback (it was, and the write was lost on the next request)."""
    client = logged_in_with_values(a="1")
    set_values(client, a="2")  # the row has seen a backup version served now
    del client.cookies[BACKUP_COOKIE]
    fault_redis.kill()
    assert whoami(client) == {"user": USERNAME, "degraded": True}  # from the ledger row
    set_values(client, cart="3")
    assert cookie(client, BACKUP_COOKIE)
    assert get_values(client) == {"cart": "3"}
    assert whoami(client) == {"user": USERNAME, "degraded": True}
    set_values(client, cart="4")
    assert get_values(client) == {"cart": "4"}


def test_a_store_a_view_rebuilds_during_an_outage_keeps_the_session(
    fault_redis: RedisServer,
) -> None:
    """A view that saves and then puts ``SessionStore(key)`` on the request (as
    django-allauth does with its OAuth states) while Redis is down: the new store takes
    the request's newest backup, so nothing is lost (it loaded nothing, and the client
    got an empty backup)."""
    client = logged_in_with_values(a="1")
    fault_redis.kill()
    assert ok(client.post("/stash-and-rebuild/", {"state": "s1"}))["ok"] is True
    assert get_values(client) == {"a": "1", "state": "s1"}
    assert whoami(client) == {"user": USERNAME, "degraded": True}
    anonymous = Client()
    assert ok(anonymous.post("/stash-and-rebuild/", {"state": "s2"}))["ok"] is True
    assert get_values(anonymous) == {"state": "s2"}
    # Nothing of a request is left for a store built outside one: no backup at hand,
    # only the login its ledger row vouches for.
    outside = SessionStore(session_key(client))
    assert "state" not in outside.load()
    assert outside.source == "ledger"


def test_an_unknown_key_without_a_backup_is_never_adopted(fault_redis: RedisServer) -> None:
    made_up = {settings.SESSION_COOKIE_NAME: "madeupkey" * 4}
    make_user()
    assert whoami(replay(made_up)) == {"user": None, "degraded": False}
    fault_redis.pause()
    try:
        assert whoami(replay(made_up)) == {"user": None, "degraded": True}
        assert whoami(replay(made_up)) == {"user": None, "degraded": True}
    finally:
        fault_redis.resume()


def test_middleware_issues_a_missing_backup(fault_redis: RedisServer) -> None:
    make_user()
    client = Client()
    assert client.login(username=USERNAME, password=PASSWORD)
    assert not cookie(client, BACKUP_COOKIE)

    response = client.get("/whoami/")
    assert ok(response) == {"user": USERNAME, "degraded": False}
    assert response.cookies[BACKUP_COOKIE].value
    assert response.cookies[BACKUP_COOKIE]["httponly"]
    assert cookie(client, BACKUP_COOKIE)

    # The issued backup is a working one.
    fault_redis.kill()
    assert whoami(client) == {"user": USERNAME, "degraded": True}


def test_middleware_replaces_a_stale_backup(fault_redis: RedisServer) -> None:
    client = logged_in_with_values(a="1")
    stale = cookie(client, BACKUP_COOKIE)
    set_values(client, a="2")
    assert cookie(client, BACKUP_COOKIE) != stale

    client.cookies[BACKUP_COOKIE] = stale
    response = client.get("/get/")
    assert ok(response) == {"a": "2"}  # the newer cache copy wins over an older backup
    fresh = response.cookies[BACKUP_COOKIE].value
    assert fresh and fresh != stale

    fault_redis.kill()
    assert get_values(client) == {"a": "2"}


# -- Observability ----------------------------------------------------------------------------


@pytest.fixture
def received() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Events of the engine's signals, in order, as (signal name, kwargs)."""
    events: list[tuple[str, dict[str, Any]]] = []
    watched = {
        "cache_lost": signals.cache_lost,
        "cache_recovered": signals.cache_recovered,
        "session_restored": signals.session_restored,
    }

    def receiver_for(name: str) -> Any:
        def receiver(sender: Any, **kwargs: Any) -> None:
            kwargs.pop("signal", None)
            events.append((name, kwargs))

        return receiver

    receivers = {name: receiver_for(name) for name in watched}
    for name, signal in watched.items():
        signal.connect(receivers[name], weak=False, dispatch_uid=f"test-outage-{name}")
    try:
        yield events
    finally:
        for name, signal in watched.items():
            signal.disconnect(dispatch_uid=f"test-outage-{name}")


def test_degraded_health_and_signals_follow_the_outage(
    fault_redis: RedisServer, received: list[tuple[str, dict[str, Any]]]
) -> None:
    client = logged_in_with_values(a="1")
    key = session_key(client)
    assert received == []
    snap = health.snapshot()
    assert snap["healthy"] is True
    assert snap["breakers"]["default"]["state"] == "closed"
    restored_before = snap["counters"]["restored_from_backup"]

    fault_redis.kill()
    assert whoami(client) == {"user": USERNAME, "degraded": True}
    assert get_values(client) == {"a": "1"}
    snap = health.snapshot()
    assert snap["healthy"] is False
    assert snap["breakers"]["default"]["state"] == "open"
    assert snap["breakers"]["default"]["trips"] == 1
    assert snap["counters"]["restored_from_backup"] >= restored_before + 2

    names = [name for name, _ in received]
    assert names == ["cache_lost", "session_restored", "session_restored"]
    assert received[0][1]["alias"] == "default"
    assert received[0][1]["error"] is not None
    assert received[1][1] == {
        "key_hash": key_hash(key),
        "reason": "cache_unavailable",
        "partial": False,
    }
    received.clear()

    fault_redis.start()
    wait_cooldown()
    assert whoami(client) == {"user": USERNAME, "degraded": False}
    snap = health.snapshot()
    assert snap["healthy"] is True
    assert snap["breakers"]["default"]["state"] == "closed"
    names = [name for name, _ in received]
    assert names == ["cache_recovered", "session_restored"]
    assert received[0][1]["alias"] == "default"
    assert received[0][1]["downtime"] > 0
    assert received[1][1] == {"key_hash": key_hash(key), "reason": "cache_miss", "partial": False}

    received.clear()
    assert whoami(client) == {"user": USERNAME, "degraded": False}
    assert received == []  # served from the cache again
