"""Lazy adoption over HTTP: a site on each of Django's four session engines switches to this
one (``PREVIOUS_ENGINE``), and every logged-in user stays logged in with their data.

Real stores throughout: the ``django_session`` table, Django's cache engine keys in the
private redis-server, signed cookies; Django's test Client with the full middleware stack.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.contrib.sessions.models import Session
from django.core.cache import caches
from django.db import connection
from django.test import Client

from django_resilient_sessions import health
from django_resilient_sessions.models import AdoptedSession, UserSession
from tests.adoption_site import CACHE, CACHED_DB, DB, ENGINES, SIGNED, previous_site, resilient_site
from tests.redis_server import RedisServer
from tests.web import (
    BACKUP_COOKIE,
    PASSWORD,
    cookie,
    key_hash,
    make_user,
    ok,
    redis_key_for_hash,
    replay,
)

pytestmark = pytest.mark.django_db(transaction=True)

SESSION_COOKIE = "sessionid"


def state(client: Client) -> dict[str, Any]:
    return ok(client.get("/state/"))


def log_in_on(engine: str, username: str = "alice", **values: str) -> Client:
    """A user logged in on a site running ``engine``, with ``values`` in the session."""
    client = Client()
    with previous_site(engine):
        make_user(username)
        response = client.post("/login/", {"username": username, "password": PASSWORD})
        assert ok(response) == {"ok": True}
        if values:
            assert ok(client.post("/set/", values))["ok"] is True
        assert state(client) == {"user": username, "degraded": None, "data": values}
    assert cookie(client, SESSION_COOKIE)
    assert not cookie(client, BACKUP_COOKIE)
    return client


def moved(client: Client) -> Client:
    """The same browser (its cookies) at the site after the switch (a new process)."""
    return replay({name: m.value for name, m in client.cookies.items() if m.value})


def in_previous_store(engine: str, key: str) -> bool:
    if engine in (DB, CACHED_DB):
        return bool(Session.objects.filter(session_key=key).exists())
    if engine == CACHE:
        return caches["default"].get("django.contrib.sessions.cache" + key) is not None
    return True  # a signed cookie is its own store


@pytest.mark.parametrize("engine", ENGINES)
def test_a_site_switches_with_every_user_still_logged_in(engine: str) -> None:
    """The issue's "done when": logins and data survive the switch, per engine."""
    alice = log_in_on(engine, "alice", cart="3 apples", step="2")
    bob = log_in_on(engine, "bob", cart="1 pear")
    old_alice = cookie(alice, SESSION_COOKIE)
    health.reset_counters()
    with resilient_site(engine):
        alice, bob = moved(alice), moved(bob)
        assert state(alice) == {
            "user": "alice",
            "degraded": False,
            "data": {"cart": "3 apples", "step": "2"},
        }
        assert state(bob) == {"user": "bob", "degraded": False, "data": {"cart": "1 pear"}}
        # Adopted once: the next requests are served from Redis.
        assert state(alice)["data"] == {"cart": "3 apples", "step": "2"}
        new_alice = cookie(alice, SESSION_COOKIE)
        assert cookie(alice, BACKUP_COOKIE), "the adopting response carries a fresh backup"
        if engine == SIGNED:
            assert new_alice != old_alice, "a signed-cookie session gets a new key"
        else:
            assert new_alice == old_alice
            assert not in_previous_store(engine, old_alice), "adopted sessions leave the old store"
        row = UserSession.objects.get(key_hash=key_hash(new_alice))
        assert row.user.get_username() == "alice" and row.is_active
        assert AdoptedSession.objects.filter(key_hash=key_hash(old_alice), engine=engine).exists()
        assert health.snapshot()["counters"]["sessions_adopted"] == 2
        # Writes after the switch stick.
        assert ok(alice.post("/set/", {"cart": "4 apples"}))["ok"] is True
        assert state(alice)["data"]["cart"] == "4 apples"


@pytest.mark.parametrize("engine", ENGINES)
def test_logout_after_adoption_cannot_be_replayed_with_the_old_cookie(engine: str) -> None:
    alice = log_in_on(engine, "alice", cart="3 apples")
    before_switch = {SESSION_COOKIE: cookie(alice, SESSION_COOKIE)}
    with resilient_site(engine):
        alice = moved(alice)
        assert state(alice)["user"] == "alice"
        after_adoption = {name: m.value for name, m in alice.cookies.items() if m.value}
        assert ok(alice.post("/logout/")) == {"ok": True}
        assert state(alice)["user"] is None
        for stolen in (
            before_switch,
            after_adoption,
            {SESSION_COOKIE: before_switch[SESSION_COOKIE]},
        ):
            assert state(replay(stolen)) == {"user": None, "degraded": False, "data": {}}
    assert not UserSession.objects.active().exists()


@pytest.mark.parametrize("engine", (DB, SIGNED))
def test_a_revoked_adopted_session_stays_revoked(engine: str, redis_server: RedisServer) -> None:
    alice = log_in_on(engine, "alice", cart="3 apples")
    original = {SESSION_COOKIE: cookie(alice, SESSION_COOKIE)}
    with resilient_site(engine):
        alice = moved(alice)
        assert state(alice)["user"] == "alice"
        adopted = {name: m.value for name, m in alice.cookies.items() if m.value}
        assert UserSession.objects.active().revoke() == 1
        assert state(alice)["user"] is None
        redis_server.flushall()  # Redis forgets the tombstone: the ledger still refuses
        for stolen in (adopted, original, {SESSION_COOKIE: adopted[SESSION_COOKIE]}):
            assert state(replay(stolen))["user"] is None
    assert not UserSession.objects.active().exists()


@pytest.mark.parametrize("engine", ENGINES)
def test_an_unknown_key_creates_nothing(engine: str, redis_server: RedisServer) -> None:
    with resilient_site(engine):
        client = replay({SESSION_COOKIE: "x" * 32 if engine != SIGNED else "forged:value:sig"})
        assert state(client) == {"user": None, "degraded": False, "data": {}}
        assert not cookie(client, SESSION_COOKIE)
        assert not cookie(client, BACKUP_COOKIE)
    assert not AdoptedSession.objects.exists()
    assert not UserSession.objects.exists()
    with redis_server.client() as raw:
        assert raw.dbsize() == 0


def test_without_previous_engine_nothing_is_adopted() -> None:
    alice = log_in_on(DB, "alice", cart="3 apples")
    with resilient_site(None):
        alice = moved(alice)
        assert state(alice)["user"] is None
    assert Session.objects.count() == 1  # left alone
    assert not AdoptedSession.objects.exists()


def test_anonymous_data_is_adopted_without_a_row() -> None:
    client = Client()
    with previous_site(DB):
        assert ok(client.post("/set/", {"cart": "2 pears"}))["ok"] is True
    with resilient_site(DB):
        client = moved(client)
        assert state(client) == {"user": None, "degraded": False, "data": {"cart": "2 pears"}}
        assert cookie(client, BACKUP_COOKIE)
    assert not UserSession.objects.exists()
    assert AdoptedSession.objects.count() == 1


def test_adoption_with_redis_down_from_the_database(fault_redis: RedisServer) -> None:
    alice = log_in_on(DB, "alice", cart="3 apples")
    fault_redis.kill()
    with resilient_site(DB):
        alice = moved(alice)
        assert state(alice) == {"user": "alice", "degraded": True, "data": {"cart": "3 apples"}}
        assert cookie(alice, BACKUP_COOKIE), "served from its first backup until Redis is back"
        assert state(alice)["user"] == "alice"
        fault_redis.start()
        assert UserSession.objects.active().count() == 1
    assert not Session.objects.exists()


def test_the_cache_engine_on_the_same_redis_waits_for_it(fault_redis: RedisServer) -> None:
    """Django's cache engine on the session cache: down with it, so nothing to adopt then;
    the cookie is kept, and the session is adopted once Redis answers."""
    alice = log_in_on(CACHE, "alice", cart="3 apples")
    key = cookie(alice, SESSION_COOKIE)
    fault_redis.pause()
    try:
        with resilient_site(CACHE):
            alice = moved(alice)
            assert state(alice)["user"] is None
            assert cookie(alice, SESSION_COOKIE) == key, "the cookie is kept"
    finally:
        fault_redis.resume()
    from django_resilient_sessions.breaker import reset_breakers

    reset_breakers()
    with resilient_site(CACHE):
        assert state(alice) == {"user": "alice", "degraded": False, "data": {"cart": "3 apples"}}


def test_a_login_the_ledger_cannot_record_adopts_nothing() -> None:
    from tests.web import usersession_table_unavailable

    alice = log_in_on(DB, "alice", cart="3 apples")
    key = cookie(alice, SESSION_COOKIE)
    with resilient_site(DB):
        alice = moved(alice)
        with usersession_table_unavailable():
            assert state(alice)["user"] is None
            assert cookie(alice, SESSION_COOKIE) == key, "the cookie is kept"
            assert Session.objects.filter(session_key=key).exists(), "the old store keeps it"
        assert not AdoptedSession.objects.exists()
        assert state(alice) == {"user": "alice", "degraded": False, "data": {"cart": "3 apples"}}


def test_a_concurrent_double_adoption_adopts_once() -> None:
    if connection.vendor == "sqlite":
        pytest.skip("SQLite's in-memory test database is one connection")
    alice = log_in_on(DB, "alice", cart="3 apples")
    cookies = {SESSION_COOKIE: cookie(alice, SESSION_COOKIE)}
    results: list[dict[str, Any]] = []
    barrier = threading.Barrier(4)

    def request() -> None:
        try:
            barrier.wait()
            results.append(state(replay(cookies)))
        finally:
            connection.close()

    with resilient_site(DB):
        threads = [threading.Thread(target=request) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(results) == 4
    assert all(r["user"] == "alice" for r in results), results
    assert AdoptedSession.objects.count() == 1
    assert UserSession.objects.count() == 1


@pytest.mark.parametrize("nth", range(1, 9))
def test_every_ledger_statement_of_an_adoption_failing(nth: int, redis_server: RedisServer) -> None:
    """Fail the Nth statement on the ledger's tables: adopted whole, or not at all (the old
    store keeps it, the cookie is kept, no row, no record, no Redis copy) and adopted at the
    next request."""
    from tests.faults import LedgerFaults

    alice = log_in_on(DB, "alice", cart="3 apples")
    key = cookie(alice, SESSION_COOKIE)
    with resilient_site(DB):
        alice = moved(alice)
        with LedgerFaults() as ledger:
            fault = ledger.fail(nth, "operational")
            first = state(alice)
        if first["user"] is None:
            assert fault.fired
            assert cookie(alice, SESSION_COOKIE) == key
            assert Session.objects.filter(session_key=key).exists()
            assert not AdoptedSession.objects.exists()
            assert not UserSession.objects.exists()
            with redis_server.client() as raw:
                assert raw.get(redis_key_for_hash(key_hash(key))) is None
        else:
            assert first == {"user": "alice", "degraded": False, "data": {"cart": "3 apples"}}
        assert state(alice) == {"user": "alice", "degraded": False, "data": {"cart": "3 apples"}}
        assert AdoptedSession.objects.count() == 1
        assert UserSession.objects.active().count() == 1
        assert not Session.objects.exists()


def test_values_json_cannot_take_are_dropped_not_the_session() -> None:
    """Django's cache engine pickles: a datetime in such a session is left out, the rest kept."""
    import datetime

    alice = log_in_on(CACHE, "alice", cart="3 apples")
    key = cookie(alice, SESSION_COOKIE)
    cache = caches["default"]
    data = cache.get("django.contrib.sessions.cache" + key)
    cache.set("django.contrib.sessions.cache" + key, data | {"when": datetime.datetime.now()})
    with resilient_site(CACHE):
        alice = moved(alice)
        assert state(alice) == {"user": "alice", "degraded": False, "data": {"cart": "3 apples"}}
