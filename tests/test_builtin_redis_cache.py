"""Django's own ``django.core.cache.backends.redis.RedisCache`` as the session cache.

The every-step fault tests (``test_every_step.py``) run on this backend too; here, its
primary/replica ``LOCATION`` list: the engine reads and writes the primary only, so a
lagging replica never serves a stale session (Django's backend would send reads there).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from django.test import Client, override_settings

from django_resilient_sessions import health
from tests.redis_server import RedisServer
from tests.web import get_values, login, make_user, set_values, user_of, whoami

BUILTIN = "django.core.cache.backends.redis.RedisCache"
OPTIONS = {"socket_timeout": 0.25, "socket_connect_timeout": 0.25}

pytestmark = pytest.mark.django_db


@pytest.fixture
def primary_and_stale_replica() -> Iterator[tuple[RedisServer, RedisServer]]:
    with RedisServer() as primary, RedisServer() as replica:
        with replica.client() as raw:
            raw.set("seed", "1")  # a replica that has fallen behind: it has nothing we write
        caches = {
            "default": {
                "BACKEND": BUILTIN,
                "LOCATION": [primary.url, replica.url],
                "OPTIONS": OPTIONS,
            }
        }
        with override_settings(CACHES=caches):
            yield primary, replica


def test_sessions_live_on_the_primary_of_a_location_list(
    primary_and_stale_replica: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = primary_and_stale_replica
    make_user()
    client = Client()
    login(client)
    for n in range(12):  # Django's backend picks a random replica for each read
        set_values(client, n=str(n))
        assert get_values(client) == {"n": str(n)}
        assert whoami(client) == {"user": "alice", "degraded": False}
    with primary.client() as raw:
        assert any(key.startswith(b":1:resilient_sessions:") for key in raw.scan_iter())
    with replica.client() as raw:
        assert list(raw.scan_iter()) == [b"seed"]


def test_an_outage_of_the_primary_is_served_from_backups(
    primary_and_stale_replica: tuple[RedisServer, RedisServer],
) -> None:
    primary, _ = primary_and_stale_replica
    make_user()
    client = Client()
    login(client)
    set_values(client, cart="3")
    primary.kill()
    assert whoami(client) == {"user": "alice", "degraded": True}
    set_values(client, cart="4")
    assert get_values(client) == {"cart": "4"}
    assert user_of(client) == "alice"


@override_settings(RESILIENT_SESSIONS={"BREAKER_COOLDOWN": 0.3})
def test_a_hung_primary_costs_one_timeout_then_the_breaker_skips_it(
    primary_and_stale_replica: tuple[RedisServer, RedisServer],
) -> None:
    """The primary hangs (SIGSTOP), the replica still answers: the engine never turns to
    the replica; one request waits on the primary, the breaker then skips it, and once it
    resumes the session goes on from Redis with the writes made meanwhile."""
    primary, replica = primary_and_stale_replica
    make_user()
    client = Client()
    login(client)
    set_values(client, cart="1")
    primary.pause()
    try:
        before = health.snapshot()["counters"]
        assert whoami(client) == {"user": "alice", "degraded": True}
        after = health.snapshot()["counters"]
        assert after["cache_errors"] == before["cache_errors"] + 1  # one wait, on the primary
        for _ in range(3):
            skipped = health.snapshot()["counters"]["cache_skipped"]
            assert user_of(client) == "alice"
            counters = health.snapshot()["counters"]
            assert counters["cache_errors"] == after["cache_errors"]  # no other wait
            assert counters["cache_skipped"] > skipped
        set_values(client, cart="2")  # kept in the backup
        assert get_values(client) == {"cart": "2"}
    finally:
        primary.resume()
    time.sleep(0.35)  # the cool-down: the next request probes the primary
    for _ in range(5):
        if not whoami(client)["degraded"]:
            break
        time.sleep(0.35)
    assert whoami(client) == {"user": "alice", "degraded": False}
    assert get_values(client) == {"cart": "2"}
    with replica.client() as raw:
        assert list(raw.scan_iter()) == [b"seed"]  # nothing written there...
        used = raw.info("commandstats")
    assert not {"cmdstat_get", "cmdstat_eval", "cmdstat_evalsha"} & set(used)  # ...nor read
