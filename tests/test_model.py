"""A model-based test of the whole engine: random histories of users, faults and attacks.

A hypothesis state machine drives the real engine over HTTP (Django's test ``Client``
and the test app's views) through a real redis-server behind a fault proxy
(``RedisFaultProxy``) and the real test database (``LedgerFaults``). It keeps a model
of what every device was told, and after every step checks that the engine agrees.

Rules: log in (two users, two devices each; a re-login on the same device), write a
value, read, log out, revoke one session (``UserSession`` queryset ``revoke()``) or all of
a user's, Redis down or hung, Redis back (the breaker's cool-down slept through), Redis
flushed and restarted empty, an attacker replaying an older cookie pair of a device (a
rollback attempt), and one fault at an I/O step of the next operation: the Nth Redis
command (every kind of the proxy) or the Nth ledger statement (every kind of
``LedgerFaults``).

Invariants, checked after every step (and, for the answer, on the step itself):

- no ended session (logged out or revoked, acknowledged) is ever served logged in, nor
  its data: its cookies, all of them since its login, replayed in whatever state Redis
  is in (down, hung, flushed); and no ledger row of it is active. Those ended while Redis
  took the tombstone (and not flushed since) are replayed once more with their ledger
  read failing: then only the tombstone refuses their data;
- no acknowledged write of a live login is lost, and nothing older is served: each
  logged-in device reads exactly the data the model holds, logged in;
- no older backup wins: a replayed older cookie pair of a live login is anonymous, the
  login alone (an older backup than one served, during an outage), or
  shows the newest acknowledged data;
- never a 5xx but the documented 503 "ledger unavailable", and that only when a
  ledger statement of the request failed; a 503 changed nothing (the same session
  cookie; a login's 503 keeps the visit's anonymous data);
- a login answered 200 has an active ledger row, and the active rows are exactly those of
  the live logins (a login answered 503 left none); an anonymous device is anonymous.

The documented exceptions the model allows, and only where they apply
(README "What happens during an outage", "Limits"; docs/security.md "What remains"):

- a ledger read that fails while a backup's login is used withholds the login for that
  one request (``FAIL_CLOSED``): that answer may be anonymous, with the session's data;
  and a replay of an ended session then may show its data (anonymous) where Redis could
  not be asked for the tombstone (docs/security.md, "Database and Redis down together");
- anonymous data may be rolled back: the model writes only in logged-in sessions, and
  never asserts anonymous data;
- the activity-interval rollback window is closed by ``ACTIVITY_UPDATE_INTERVAL = 0``
  (the documented way), so the model asserts no rollback at all;
- the ``PURGE_CHECK_INTERVAL`` window needs a second process that missed the outage:
  there is one process here, so the model asserts that no ended session is served.

Bounds: ``DRS_MODEL_EXAMPLES`` (default 25) examples of ``DRS_MODEL_STEPS`` (default 30)
steps, derandomized so that ``make test`` is repeatable (about 10-25 s); ``DRS_MODEL_RANDOM=1``
draws a new seed each run (``make model`` runs 200 examples of 50 steps that way, a few
minutes; ``make chaos`` runs it on PostgreSQL). The engine's activity stamps are whole
seconds of the wall clock, so hypothesis may find a replay of a failing sequence to
behave differently and report a ``FlakyFailure``: the original assertion is inside it.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client, override_settings
from hypothesis import HealthCheck, Phase
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from django_resilient_sessions.breaker import reset_breakers
from django_resilient_sessions.exceptions import LedgerUnavailable
from django_resilient_sessions.models import PendingPurge, UserSession
from django_resilient_sessions.purges import restart_clock
from tests.faults import (
    DB_KINDS,
    REDIS_KINDS,
    InjectedFault,
    LedgerFaults,
    RedisFaultProxy,
    proxied_cache,
)
from tests.redis_server import RedisServer
from tests.web import PASSWORD, captured, key_hash, replay

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = int(os.environ.get("DRS_MODEL_EXAMPLES", "25"))
STEPS = int(os.environ.get("DRS_MODEL_STEPS", "30"))
RANDOM = os.environ.get("DRS_MODEL_RANDOM", "") not in ("", "0")
#: ``DRS_MODEL_NO_SHRINK=1``: report the first failing sequence as found (the engine's
#: wall-clock stamps can make a replay while shrinking draw differently, and hypothesis
#: then reports its own inconsistency instead of the failure).
NO_SHRINK = os.environ.get("DRS_MODEL_NO_SHRINK", "") not in ("", "0")

COOLDOWN = 0.05
OPTIONS = {
    "BREAKER_COOLDOWN": COOLDOWN,
    "BREAKER_PROBE_TIMEOUT": 0.05,
    # Closes the documented rollback window of one activity interval before an outage.
    "ACTIVITY_UPDATE_INTERVAL": 0,
}
TIMEOUTS = {"SOCKET_TIMEOUT": 0.1, "SOCKET_CONNECT_TIMEOUT": 0.1}
USERS = ("ann", "bob")
DEVICES_PER_USER = 2
JSON = {"HTTP_ACCEPT": "application/json"}

Cookies = dict[str, str]


@dataclass
class Device:
    """One browser of one user, and what the engine acknowledged to it."""

    user: str
    client: Client = field(default_factory=Client)
    logged_in: bool = False
    #: The data of its login, as acknowledged (the model writes only in logged-in sessions).
    data: dict[str, str] = field(default_factory=dict)
    #: Every cookie pair it held since its login: what an attacker could have copied.
    pairs: list[Cookies] = field(default_factory=list)

    def session_key(self) -> str:
        morsel = self.client.cookies.get(settings.SESSION_COOKIE_NAME)
        return morsel.value if morsel is not None else ""

    def remember(self) -> None:
        pair = captured(self.client)
        if pair and pair not in self.pairs:
            self.pairs.append(pair)


@dataclass
class World:
    server: RedisServer
    proxy: RedisFaultProxy
    ledger: LedgerFaults


@pytest.fixture
def world(redis_server: RedisServer) -> Iterator[World]:
    caches = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": redis_server.url,
            "OPTIONS": TIMEOUTS,
        }
    }
    with (
        override_settings(CACHES=caches, RESILIENT_SESSIONS=OPTIONS),
        proxied_cache(redis_server) as proxy,
        LedgerFaults() as ledger,
    ):
        yield World(redis_server, proxy, ledger)


FAULTS = st.one_of(
    st.tuples(st.just("redis"), st.sampled_from(REDIS_KINDS)),
    st.tuples(st.just("db"), st.sampled_from(DB_KINDS)),
)


class SessionModel(RuleBasedStateMachine):
    """The engine against the model (module docstring); ``world`` is set by the test."""

    world: World
    steps = 0
    examples = 0

    def __init__(self) -> None:
        super().__init__()
        world = self.world
        world.proxy.heal()
        world.ledger.heal()
        world.server.flushall()
        UserSession.objects.all().delete()
        PendingPurge.objects.all().delete()
        reset_breakers()
        restart_clock()
        self.devices = [Device(user) for user in USERS for _ in range(DEVICES_PER_USER)]
        self.ended: list[Cookies] = []
        #: Ended while Redis took the tombstone, not flushed since: Redis alone refuses them.
        self.tombstoned: list[Cookies] = []
        self.ended_keys: set[str] = set()
        self.fault: tuple[str, str, int] | None = None
        self.values = itertools.count(1)
        self.redis = "up"
        type(self).examples += 1

    # -- faults --------------------------------------------------------------------------

    def _arm(self) -> tuple[str, InjectedFault] | None:
        """Arm the fault chosen for this operation (the Nth step from now), if any."""
        if self.fault is None:
            return None
        layer, kind, nth = self.fault
        self.fault = None
        target = self.world.proxy if layer == "redis" else self.world.ledger
        return layer, target.fail(nth=nth, kind=kind)

    def _disarm(self, armed: tuple[str, InjectedFault] | None) -> str | None:
        """The layer whose armed fault fired during the operation, if one did."""
        self.world.proxy.disarm()
        self.world.ledger.disarm()
        if armed is None or not armed[1].fired:
            return None
        return armed[0]

    def _request(
        self, device: Device, method: str, path: str, **data: str
    ) -> tuple[Any, str | None]:
        key = device.session_key()
        armed = self._arm()
        try:
            send = device.client.post if method == "post" else device.client.get
            response = send(path, data, **JSON) if data or method == "post" else send(path, **JSON)
        finally:
            fired = self._disarm(armed)
        # A login refused with 503 keeps the visit's anonymous data under a new key.
        answered(response, fired, key=None if path == "/login/" else key)
        return response, fired

    # -- rules ---------------------------------------------------------------------------

    @rule(layer_kind=FAULTS, nth=st.integers(1, 4))
    def fault_at_next_operation(self, layer_kind: tuple[str, str], nth: int) -> None:
        self.fault = (layer_kind[0], layer_kind[1], nth)

    @rule(index=st.integers(0, len(USERS) * DEVICES_PER_USER - 1))
    def login(self, index: int) -> None:
        device = self.devices[index]
        again = device.logged_in
        response, _ = self._request(
            device, "post", "/login/", username=device.user, password=PASSWORD
        )
        if response.status_code == 503:
            return  # nothing changed (checked by the invariants)
        assert response.json() == {"ok": True}
        if not again:
            device.data = {}  # (its anonymous data is empty: the model writes only when logged in)
            device.pairs = []
        device.logged_in = True
        device.remember()
        assert self._row_active(device.session_key()), "a login answered 200 has no active row"

    @precondition(lambda self: any(d.logged_in for d in self.devices))
    @rule(data=st.data(), name=st.sampled_from(("a", "b")))
    def write(self, data: st.DataObject, name: str) -> None:
        device = data.draw(st.sampled_from([d for d in self.devices if d.logged_in]))
        value = str(next(self.values))
        response, _ = self._request(device, "post", "/set/", **{name: value})
        if response.status_code == 200:
            device.data[name] = value
            device.remember()

    @rule(index=st.integers(0, len(USERS) * DEVICES_PER_USER - 1))
    def read(self, index: int) -> None:
        device = self.devices[index]
        response, fired = self._request(device, "get", "/state/")
        self._check_state(device, response.json(), withheld_allowed=fired == "db")
        if device.logged_in:
            device.remember()

    @rule(index=st.integers(0, len(USERS) * DEVICES_PER_USER - 1))
    def logout(self, index: int) -> None:
        device = self.devices[index]
        before = captured(device.client)
        response, fired = self._request(device, "post", "/logout/")
        if response.status_code == 503:
            return  # nothing changed (answered() and the invariants check it)
        if device.logged_in:
            self._end(device, before, fired)

    @precondition(lambda self: any(d.logged_in for d in self.devices))
    @rule(data=st.data())
    def revoke_one(self, data: st.DataObject) -> None:
        device = data.draw(st.sampled_from([d for d in self.devices if d.logged_in]))
        before = captured(device.client)
        armed = self._arm()
        try:
            ended = UserSession.objects.filter(key_hash=key_hash(device.session_key())).revoke()
        except LedgerUnavailable:
            assert self._disarm(armed) == "db", "LedgerUnavailable without a ledger fault"
            return
        fired = self._disarm(armed)
        assert ended == 1
        self._end(device, before, fired)

    @rule(user=st.sampled_from(USERS))
    def revoke_all_of_a_user(self, user: str) -> None:
        armed = self._arm()
        try:
            ended = UserSession.objects.active().filter(user__username=user).revoke()
        except LedgerUnavailable:
            assert self._disarm(armed) == "db", "LedgerUnavailable without a ledger fault"
            return
        fired = self._disarm(armed)
        mine = [d for d in self.devices if d.user == user and d.logged_in]
        assert ended == len(mine)
        for device in mine:
            self._end(device, captured(device.client), fired)

    @rule(mode=st.sampled_from(("down", "hang")))
    def redis_outage(self, mode: str) -> None:
        if mode == "down":
            self.world.proxy.down()
        else:
            self.world.proxy.hang()
        self.redis = mode

    @rule()
    def redis_back(self) -> None:
        self.world.proxy.heal()
        self.redis = "up"
        time.sleep(COOLDOWN + 0.02)  # the breaker's cool-down: the next request probes

    @rule()
    def redis_restarted_empty(self) -> None:
        self.tombstoned = []
        self.world.server.flushall()
        self.world.proxy.drop_connections()

    @precondition(lambda self: any(d.logged_in and len(d.pairs) > 1 for d in self.devices))
    @rule(data=st.data())
    def replay_an_older_pair(self, data: st.DataObject) -> None:
        device = data.draw(
            st.sampled_from([d for d in self.devices if d.logged_in and len(d.pairs) > 1])
        )
        pair = data.draw(st.sampled_from(device.pairs[:-1]))
        response = replay(pair).get("/state/", **JSON)
        answered(response, None)
        shown = response.json()
        if shown["user"] is not None:
            assert shown["user"] == device.user, f"another user's login: {shown}"
            # The newest data, or (an older backup than one served during an outage)
            # the login alone, vouched for by its row: never the older data.
            assert shown["data"] in (device.data, {}), (
                f"rollback: an older pair was served {shown['data']}, newest is {device.data}"
            )

    @precondition(lambda self: bool(self.ended))
    @rule(data=st.data())
    def replay_an_ended_pair(self, data: st.DataObject) -> None:
        """With the next fault: a failing ledger read may show an ended session's data
        (anonymous) only where no tombstone guards it (docs/security.md, double outage)."""
        pair = data.draw(st.sampled_from(self.ended))
        if self.fault is None:  # (the invariants replay without faults: here, always one,
            # mostly on the first ledger statement, the row's read)
            layer = data.draw(st.sampled_from(("db", "db", "db", "redis")))
            kind = data.draw(st.sampled_from(DB_KINDS if layer == "db" else REDIS_KINDS))
            self.fault = (layer, kind, 1)
        armed = self._arm()
        try:
            response = replay(pair).get("/state/", **JSON)
        finally:
            fired = self._disarm(armed)
        answered(response, fired, key=pair.get(settings.SESSION_COOKIE_NAME, ""))
        shown = response.json()
        assert shown["user"] is None, f"an ended session served logged in ({self.redis})"
        if shown["data"]:
            assert fired == "db", f"an ended session's data served ({self.redis})"
            assert shown["degraded"] or pair not in self.tombstoned, (
                "an ended session's data served past its tombstone"
            )

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def ended_sessions_stay_ended(self) -> None:
        type(self).steps += 1
        for pair in self.ended:
            response = replay(pair).get("/state/", **JSON)
            answered(response, None)
            shown = response.json()
            assert shown["user"] is None, f"an ended session served logged in ({self.redis})"
            assert shown["data"] == {}, f"an ended session's data served ({self.redis})"
        for pair in self.tombstoned:
            # The ledger failing too: only the tombstone refuses the session's data now.
            self.world.ledger.fail(nth=1, kind="operational")
            try:
                response = replay(pair).get("/state/", **JSON)
            finally:
                self.world.ledger.disarm()
            answered(response, "db", key=pair.get(settings.SESSION_COOKIE_NAME, ""))
            shown = response.json()
            assert shown["user"] is None, f"an ended session served logged in ({self.redis})"
            assert shown["degraded"] or not shown["data"], (
                "an ended session's data served past its tombstone"
            )
        for digest in self.ended_keys:
            assert not UserSession.objects.active().filter(key_hash=digest).exists()

    @invariant()
    def every_device_reads_what_it_was_told(self) -> None:
        for device in self.devices:
            response = device.client.get("/state/", **JSON)
            answered(response, None)
            self._check_state(device, response.json(), withheld_allowed=False)
        live = {key_hash(d.session_key()) for d in self.devices if d.logged_in}
        rows = set(UserSession.objects.active().values_list("key_hash", flat=True))
        assert rows == live, f"active rows {len(rows)} != live logins {len(live)}"

    # -- helpers -------------------------------------------------------------------------

    def _check_state(
        self, device: Device, shown: dict[str, Any], *, withheld_allowed: bool
    ) -> None:
        if not device.logged_in:
            assert shown["user"] is None, f"an anonymous device is logged in: {shown}"
            return
        if shown["user"] is None and withheld_allowed:
            assert shown["data"] == device.data, f"withheld login lost data: {shown}"
            return
        assert shown["user"] == device.user, (
            f"a live login is not served ({self.redis}): {shown}, expected {device.data}"
        )
        assert shown["data"] == device.data, (
            f"acknowledged writes lost or rolled back ({self.redis}): {shown['data']} "
            f"!= {device.data}"
        )

    def _end(self, device: Device, before: Cookies, fired: str | None) -> None:
        digest = key_hash(device.session_key() or before.get(settings.SESSION_COOKIE_NAME, ""))
        for pair in [*device.pairs, before]:
            if pair and pair not in self.ended:
                self.ended.append(pair)
                if self.redis == "up" and fired is None:
                    self.tombstoned.append(pair)  # Redis took the tombstone at once
        self.ended_keys.add(digest)
        device.logged_in = False
        device.data = {}
        device.pairs = []

    def _row_active(self, key: str) -> bool:
        return bool(key) and UserSession.objects.active().filter(key_hash=key_hash(key)).exists()


def answered(response: Any, fired: str | None, *, key: str | None = "") -> None:
    """A 200, or the documented 503 when a ledger statement of the request failed.

    A 503 changed nothing: the session cookie, if sent at all, is the same ``key`` (a
    renewed backup of the same session is fine: with ``ACTIVITY_UPDATE_INTERVAL = 0``
    every request renews it). ``key=None``: a login, whose 503 keeps the visit's
    anonymous data under a new key.
    """
    if response.status_code == 503:
        assert fired == "db", f"503 without a ledger fault: {response.content[:300]!r}"
        assert response.json()["error"] == "ledger_unavailable"
        sent = response.cookies.get(settings.SESSION_COOKIE_NAME)
        if key is not None and sent is not None:
            assert sent.value == key, "a 503 changed the session cookie"
        return
    assert response.status_code == 200, (response.status_code, response.content[:300])


def test_the_engine_follows_the_model(world: World) -> None:
    User.objects.all().delete()
    for name in USERS:
        User.objects.create_user(username=name, password=PASSWORD)
    SessionModel.world = world
    SessionModel.steps = SessionModel.examples = 0
    started = time.monotonic()
    run_state_machine_as_test(
        SessionModel,
        settings=hypothesis_settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            derandomize=not RANDOM,
            phases=[Phase.explicit, Phase.reuse, Phase.generate] if NO_SHRINK else list(Phase),
            database=None,
            print_blob=True,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
    print(
        f"model: {SessionModel.examples} examples, {SessionModel.steps} checked steps, "
        f"{time.monotonic() - started:.0f} s"
    )
