"""Fail the Nth I/O step of each user-visible operation, for every N and every fault kind.

In the manner of SQLite's I/O-error tests: each operation (login, write, logout,
revocation, the first request after an outage) is run once to list its steps, every
Redis command (through a real TCP proxy in front of a real redis-server) and every
ledger statement (through Django's execute_wrapper on the real database); then once per
step and fault kind with that one step failing. After each run the invariants are
checked, with the faults gone and once Redis is trusted again:

- the answer is a 200, or a 503 saying the ledger is unavailable when a ledger step
  failed (never a 500, never a 400);
- a login answered 200 is a login with an active row; one answered 503 is no login;
- a logout or revocation that was acknowledged holds: the old cookies are anonymous,
  now, with Redis down, and after Redis loses everything; one that failed changed
  nothing;
- an acknowledged write is read back, from the device and from Redis itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.conf import settings
from django.test import Client, override_settings

from django_resilient_sessions.breaker import reset_breakers
from django_resilient_sessions.exceptions import LedgerUnavailable
from django_resilient_sessions.models import PendingPurge, UserSession
from django_resilient_sessions.purges import restart_clock
from tests.faults import LedgerFaults, RedisFaultProxy, StepResult, for_each_step, proxied_cache
from tests.redis_server import RedisServer
from tests.web import PASSWORD, captured, key_hash, make_user, replay, session_key

pytestmark = pytest.mark.django_db(transaction=True)

COOLDOWN = 0.05
OPTIONS = {"BREAKER_COOLDOWN": COOLDOWN, "BREAKER_PROBE_TIMEOUT": 0.05}
TIMEOUTS = {"SOCKET_TIMEOUT": 0.1, "SOCKET_CONNECT_TIMEOUT": 0.1}


@dataclass
class World:
    server: RedisServer
    proxy: RedisFaultProxy
    ledger: LedgerFaults
    device: Client = field(default_factory=Client)
    stolen: dict[str, str] = field(default_factory=dict)


BACKENDS = {
    # django-redis, and Django's own RedisCache (redis-py's option names).
    "django-redis": ("django_redis.cache.RedisCache", TIMEOUTS),
    "django": (
        "django.core.cache.backends.redis.RedisCache",
        {"socket_timeout": 0.1, "socket_connect_timeout": 0.1},
    ),
}


@pytest.fixture(params=sorted(BACKENDS))
def world(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[World]:
    backend, timeouts = BACKENDS[request.param]
    caches = {"default": {"BACKEND": backend, "LOCATION": redis_server.url, "OPTIONS": timeouts}}
    with (
        override_settings(CACHES=caches, RESILIENT_SESSIONS=OPTIONS),
        proxied_cache(redis_server) as proxy,
        LedgerFaults() as ledger,
    ):
        yield World(redis_server, proxy, ledger)


# Helpers -------------------------------------------------------------------------------------


def fresh(world: World) -> None:
    """Nothing left of the previous run: Redis empty (its scripts too, so that every run
    sends them the same way: EVALSHA, NOSCRIPT, EVAL), ledger empty, breakers closed."""
    world.proxy.heal()
    world.ledger.heal()
    world.server.flushall()
    with world.server.client() as raw:
        raw.script_flush()
    UserSession.objects.all().delete()
    PendingPurge.objects.all().delete()
    reset_breakers()
    restart_clock()
    world.device = Client()


def get(client: Client, path: str) -> dict[str, Any]:
    response = client.get(path)
    assert response.status_code == 200, (response.status_code, response.content[:300])
    body: dict[str, Any] = response.json()
    return body


def settle(world: World, client: Client) -> dict[str, Any]:
    """``/whoami/`` once Redis is trusted again (faults healed, queued purges done)."""
    world.proxy.heal()
    world.ledger.heal()
    for _ in range(6):
        time.sleep(COOLDOWN + 0.02)
        answer = get(client, "/whoami/")
        if not answer["degraded"]:
            return answer
    raise AssertionError("Redis is not trusted again after the faults healed")


def log_in(world: World, client: Client | None = None) -> None:
    client = client or world.device
    response = client.post("/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 200, response.content[:300]


def expect_answer(result: StepResult) -> Any:
    """The response, which must be a 200, or a 503 for a ledger step that failed."""
    assert result.error is None, f"the request raised {result.error!r}"
    response: Any = result.value
    ledger_failed = result.step.layer.label == "db"
    if response.status_code == 503:
        assert ledger_failed, "503 for a Redis fault"
        assert response.json()["error"] == "ledger_unavailable"
    else:
        assert response.status_code == 200, (response.status_code, response.content[:300])
    return response


def ended_for_good(world: World, cookies: dict[str, str]) -> None:
    """Old cookies stay anonymous: now, while Redis is down, and once Redis lost everything."""
    assert settle(world, replay(cookies))["user"] is None
    world.proxy.down()
    assert get(replay(cookies), "/whoami/")["user"] is None
    world.proxy.heal()
    world.server.flushall()
    assert settle(world, replay(cookies))["user"] is None


def run(
    world: World, operation: Callable[[], object], before: Callable[[], None], check: Any
) -> int:
    def prepare() -> None:
        fresh(world)
        before()

    results = for_each_step(operation, world.proxy, world.ledger, before=prepare, after=check)
    assert results, "the operation did no I/O at all"
    steps = len({result.step.order for result in results})
    print(f"{operation.__name__}: {steps} steps, {len(results)} faulted runs")
    return len(results)


# Operations ----------------------------------------------------------------------------------


def test_login(world: World) -> None:
    make_user()

    def before() -> None:
        world.device.post("/set/", {"cart": "3"})

    def login() -> Any:
        return world.device.post(
            "/login/", {"username": "alice", "password": PASSWORD}, HTTP_ACCEPT="application/json"
        )

    def check(result: StepResult) -> None:
        response = expect_answer(result)
        answer = settle(world, world.device)
        if response.status_code == 200:
            assert answer["user"] == "alice"
            assert (
                UserSession.objects.active()
                .filter(key_hash=key_hash(session_key(world.device)))
                .exists()
            )
        else:
            assert answer["user"] is None  # not a login
            assert not UserSession.objects.active().exists()
        assert get(world.device, "/get/") == {"cart": "3"}  # the visit's data kept

    assert run(world, login, before, check) > 10


def test_write(world: World) -> None:
    make_user()

    def before() -> None:
        log_in(world)
        world.device.post("/set/", {"cart": "1"})

    def write() -> Any:
        return world.device.post("/set/", {"cart": "2"})

    def check(result: StepResult) -> None:
        response = expect_answer(result)
        assert response.status_code == 200  # a write records nothing that must not fail
        assert settle(world, world.device)["user"] == "alice"
        assert get(world.device, "/get/") == {"cart": "2"}
        # Redis itself holds it once trusted again (no backup cookie sent).
        only_cache = replay({settings.SESSION_COOKIE_NAME: session_key(world.device)})
        assert get(only_cache, "/get/") == {"cart": "2"}

    assert run(world, write, before, check) > 5


def test_logout(world: World) -> None:
    make_user()

    def before() -> None:
        log_in(world)
        world.device.post("/set/", {"cart": "1"})
        world.stolen = captured(world.device)

    def logout() -> Any:
        return world.device.post("/logout/", HTTP_ACCEPT="application/json")

    def check(result: StepResult) -> None:
        response = expect_answer(result)
        if response.status_code == 200:
            ended_for_good(world, world.stolen)
            assert not UserSession.objects.active().exists()
        else:
            assert not response.cookies  # nothing changed
            assert settle(world, world.device)["user"] == "alice"
            assert UserSession.objects.active().count() == 1

    assert run(world, logout, before, check) > 5


def test_revocation(world: World) -> None:
    make_user()
    phone = Client()

    def before() -> None:
        nonlocal phone
        phone = Client()
        log_in(world, phone)
        world.stolen = captured(phone)

    def revoke() -> Any:
        try:
            return UserSession.objects.all().revoke()
        except LedgerUnavailable as error:
            return error

    def check(result: StepResult) -> None:
        assert result.error is None
        if isinstance(result.value, LedgerUnavailable):
            assert result.step.layer.label == "db"
            assert settle(world, phone)["user"] == "alice"  # nothing changed
        else:
            assert result.value == 1
            ended_for_good(world, world.stolen)

    assert run(world, revoke, before, check) >= 2


def test_first_request_after_an_outage(world: World) -> None:
    """The probe, the drain of queued purges and the write-back, each step failing."""
    make_user()
    laptop = Client()

    def before() -> None:
        nonlocal laptop
        laptop = Client()
        log_in(world)
        log_in(world, laptop)
        world.device.post("/set/", {"cart": "1"})
        world.stolen = captured(laptop)
        world.proxy.down()
        assert get(world.device, "/whoami/")["degraded"] is True
        world.device.post("/set/", {"cart": "2"})  # kept in the backup only
        UserSession.objects.filter(key_hash=key_hash(session_key(laptop))).revoke()  # queued
        world.proxy.heal()
        time.sleep(COOLDOWN + 0.02)

    def first_request() -> Any:
        return world.device.get("/get/")

    def check(result: StepResult) -> None:
        expect_answer(result)
        assert settle(world, world.device)["user"] == "alice"
        assert get(world.device, "/get/") == {"cart": "2"}
        ended_for_good(world, world.stolen)

    assert run(world, first_request, before, check) > 5


# The same operations while Redis is down: every ledger step in turn ------------------------


def outage(world: World) -> None:
    world.proxy.down()
    assert get(world.device, "/whoami/")["degraded"] is True  # the breaker opens


def test_login_during_an_outage(world: World) -> None:
    make_user()

    def before() -> None:
        world.device.post("/set/", {"cart": "3"})
        outage(world)

    def login_down() -> Any:
        return world.device.post(
            "/login/", {"username": "alice", "password": PASSWORD}, HTTP_ACCEPT="application/json"
        )

    def check(result: StepResult) -> None:
        response = expect_answer(result)
        assert get(world.device, "/whoami/")["user"] == (
            "alice" if response.status_code == 200 else None
        )
        answer = settle(world, world.device)
        assert answer["user"] == ("alice" if response.status_code == 200 else None)
        assert get(world.device, "/get/") == {"cart": "3"}

    assert run(world, login_down, before, check) >= 3


def test_write_during_an_outage(world: World) -> None:
    make_user()

    def before() -> None:
        log_in(world)
        world.device.post("/set/", {"cart": "1"})
        outage(world)

    def write_down() -> Any:
        return world.device.post("/set/", {"cart": "2"}, HTTP_ACCEPT="application/json")

    def check(result: StepResult) -> None:
        response = expect_answer(result)
        # Refused (503) when the ledger cannot record the new backup's version (an
        # older backup could win over it): then nothing changed.
        cart = "2" if response.status_code == 200 else "1"
        assert get(world.device, "/get/") == {"cart": cart}  # from the backup, at once
        assert settle(world, world.device)["user"] == "alice"
        assert get(world.device, "/get/") == {"cart": cart}  # and written back

    assert run(world, write_down, before, check) >= 2


def test_logout_during_an_outage(world: World) -> None:
    make_user()

    def before() -> None:
        log_in(world)
        world.stolen = captured(world.device)
        outage(world)

    def logout_down() -> Any:
        return world.device.post("/logout/", HTTP_ACCEPT="application/json")

    def check(result: StepResult) -> None:
        response = expect_answer(result)
        if response.status_code == 200:
            assert get(replay(world.stolen), "/whoami/")["user"] is None  # still down
            ended_for_good(world, world.stolen)
        else:
            assert not response.cookies
            assert get(world.device, "/whoami/")["user"] == "alice"
            assert settle(world, world.device)["user"] == "alice"

    assert run(world, logout_down, before, check) >= 3
