"""The healthy path's cost, counted on the wire: Redis round trips and SQL statements.

A real TCP proxy in front of a real redis-server counts every command and every client
write (round trip); Django's query capture counts the statements. With Redis healthy a
request costs one Redis round trip per load and per save, and no database query; a
degraded request costs the ledger statements the trust model needs, and no more.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext

from django_resilient_sessions.purges import restart_clock
from tests.faults import RedisFaultProxy, proxied_cache
from tests.redis_server import RedisServer
from tests.web import login, make_user, set_values

# Each test on django-redis and on Django's own RedisCache (tests/conftest.py).
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("cache_backend")]


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[RedisFaultProxy]:
    with proxied_cache(redis_server) as proxy:
        yield proxy


def statements(queries: CaptureQueriesContext) -> list[str]:
    """The statements run, without the savepoints of the test's own transaction."""
    return [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]


def test_a_read_served_from_redis_is_one_get_and_no_query(proxy: RedisFaultProxy) -> None:
    make_user()
    client = Client()
    login(client)
    set_values(client, cart="1")
    restart_clock()
    proxy.reset_log()
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/get/")
    assert response.json() == {"cart": "1"}
    assert [[c.name for c in batch] for batch in proxy.batches] == [["GET"]]
    assert statements(queries) == []


def test_a_write_served_from_redis_is_one_get_one_update_and_no_query(
    proxy: RedisFaultProxy,
) -> None:
    make_user()
    client = Client()
    login(client)
    set_values(client, cart="1")  # (Redis has seen the update script since it started)
    restart_clock()
    proxy.reset_log()
    with CaptureQueriesContext(connection) as queries:
        set_values(client, cart="2")
    assert [[c.name for c in batch] for batch in proxy.batches] == [["GET"], ["EVALSHA"]]
    assert statements(queries) == []


def test_a_write_to_a_redis_without_the_script_sends_it_once(
    proxy: RedisFaultProxy, redis_server: RedisServer
) -> None:
    make_user()
    client = Client()
    login(client)
    set_values(client, cart="1")
    with redis_server.client() as raw:
        raw.script_flush()  # as a restarted Redis, or a promoted replica, would be
    proxy.reset_log()
    set_values(client, cart="2")
    names = [[c.name for c in batch] for batch in proxy.batches]
    assert names == [["GET"], ["EVALSHA"], ["EVAL"]]  # NOSCRIPT, then the script itself
    proxy.reset_log()
    set_values(client, cart="3")
    assert [[c.name for c in batch] for batch in proxy.batches] == [["GET"], ["EVALSHA"]]
    assert client.get("/get/").json() == {"cart": "3"}


def test_a_degraded_read_asks_the_ledger_once(proxy: RedisFaultProxy) -> None:
    make_user()
    client = Client()
    login(client)
    proxy.down()
    client.get("/get/")  # opens the breaker
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/whoami/").json() == {"user": "alice", "degraded": True}
    assert len(statements(queries)) == 1 + 1  # the ledger row, and the user (auth)


def test_a_degraded_write_asks_once_and_records_its_version_once(proxy: RedisFaultProxy) -> None:
    make_user()
    client = Client()
    login(client)
    proxy.down()
    client.get("/get/")
    with CaptureQueriesContext(connection) as queries:
        set_values(client, cart="3")
    ledger = [s for s in statements(queries) if "resilient_sessions_usersession" in s]
    assert len(ledger) == 2  # the row's state, then this backup's version (no rollback)
    assert ledger[0].lstrip().upper().startswith("SELECT")
    assert ledger[1].lstrip().upper().startswith("UPDATE")


@override_settings(RESILIENT_SESSIONS={"PURGE_CHECK_INTERVAL": 0})
def test_the_periodic_purge_check_is_one_indexed_exists(proxy: RedisFaultProxy) -> None:
    make_user()
    client = Client()
    login(client)
    with CaptureQueriesContext(connection) as queries:
        client.get("/get/")
    sql = statements(queries)
    assert len(sql) == 1 and "pendingpurge" in sql[0].lower()
