"""Engine bugs found by the model-based test (``tests/test_model.py``), as focused tests.

Each test is the minimal sequence hypothesis found (redone by hand with the engine's
default settings where the bug does not need the model's), asserting the contract. All
five are fixed in the engine; the tests stay as regression tests. The model test itself
runs in ``make test`` (bounded, derandomized) and, longer and with a random seed, in
``make model`` (which ``make chaos`` runs too).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from django.test import Client, override_settings

from django_resilient_sessions.models import UserSession
from tests.faults import LedgerFaults
from tests.redis_server import RedisServer
from tests.web import (
    PASSWORD,
    captured,
    get_values,
    login,
    make_user,
    ok,
    replay,
    set_values,
    user_of,
    whoami,
)

pytestmark = pytest.mark.django_db(transaction=True)

COOLDOWN = 0.2


@pytest.fixture(autouse=True)
def short_cooldown() -> Iterator[None]:
    with override_settings(RESILIENT_SESSIONS={"BREAKER_COOLDOWN": COOLDOWN}):
        yield


def recover(client: Client) -> None:
    """Past the cool-down, requests until Redis is trusted again."""
    for _ in range(5):
        time.sleep(COOLDOWN + 0.05)
        if not whoami(client)["degraded"]:
            return
    raise AssertionError("Redis was not trusted again")


@pytest.mark.parametrize("path", ["/logout/", "/flush/"])
def test_logout_while_the_backup_is_refused_as_older_ends_the_session(
    fault_redis: RedisServer, path: str
) -> None:
    """Model finding F1 (``logout`` after a copy of the same cookies was served).

    During an outage a copy of the device's cookies (another tab, or an attacker who
    copied them) is served and writes: the ledger learns its newer backup version, so
    the device's own backup is now "older than one served". It was answered anonymous
    then (it is now served its login alone, from the row, without the older data). The
    user then logged out: the load had forgotten the key and its login, so ``flush()``
    ended nothing in the ledger (``/logout/``: nothing at all; ``/flush/``, which
    deletes before it loads: a Redis tombstone at best, no row end) and answered 200.
    The row stayed active and the copy logged in; once Redis was back the device that
    logged out was logged in again, and the copy survived a Redis restart.
    """
    make_user()
    device = Client()
    login(device)
    copied = captured(device)
    fault_redis.pause()
    try:
        other = replay(copied)
        set_values(other, note="x")  # served from the same backup: the ledger learns its version
        # Older than one served: its data is refused, the row vouches for the login alone.
        assert whoami(device) == {"user": "alice", "degraded": True}
        assert ok(device.post(path)) == {"ok": True}
        assert not UserSession.objects.active().exists()  # fails: the logout ended nothing
        assert user_of(other) is None
    finally:
        fault_redis.resume()
    fault_redis.flushall()  # (a restart: only the ledger can refuse the copies now)
    recover(Client())
    assert user_of(device) is None
    assert user_of(replay(copied)) is None
    assert user_of(other) is None


def test_a_re_login_the_ledger_cannot_record_changes_nothing(redis_server: RedisServer) -> None:
    """Model finding F2 (``login`` of the user already logged in, the ledger failing once).

    Django's ``login()`` keeps the session key when the same user logs in again, and the
    engine's ``record_login`` then fails (a non-retryable error on the ledger's write).
    ``LedgerUnavailable`` says "nothing was changed" and the user gets a 503, but
    ``record_login`` took the login out of the session, *the one that was already
    there*, and the save that follows ends its row: the user is logged out.
    """
    make_user()
    device = Client()
    login(device)
    set_values(device, cart="3")
    with LedgerFaults() as ledger:
        ledger.fail(nth=1, kind="integrity")
        response = device.post(
            "/login/", {"username": "alice", "password": PASSWORD}, HTTP_ACCEPT="application/json"
        )
    assert response.status_code == 503
    assert response.json()["error"] == "ledger_unavailable"
    assert UserSession.objects.active().count() == 1  # fails: its row was ended
    assert whoami(device)["user"] == "alice"
    assert get_values(device) == {"cart": "3"}


def test_older_cookies_after_an_outage_do_not_undo_its_writes(fault_redis: RedisServer) -> None:
    """Model finding F3 (``replay`` of cookies from the middle of an outage, after it).

    The device writes twice while Redis hangs (both answered 200, in backups only); a copy
    of its cookies from between the two writes is presented once Redis answers again. That
    backup descends from the Redis copy and is newer than it, but older than the one the
    ledger saw served: "an older backup than one served", so Redis wins (table row
    ``present | newer | yes | ahead``). But the Redis copy is older still, from before the
    outage: it is served, logged in, and renewed at a version above the device's, so the
    device's own (newest) backup is now "stale" and Redis wins for it too. Both outage
    writes are lost, and the older cookies were served rolled back.
    """
    make_user()
    device = Client()
    login(device)
    fault_redis.pause()
    try:
        set_values(device, a="1")
        older = captured(device)
        set_values(device, a="2")
    finally:
        fault_redis.resume()
    time.sleep(COOLDOWN + 0.05)
    shown = ok(replay(older).get("/state/"))
    # Never the older data: the newest, or the login alone (its row vouches for it).
    assert shown["data"] in ({"a": "2"}, {}), shown
    assert ok(device.get("/state/"))["data"] == {"a": "2"}  # fails: {}


def test_an_outage_write_the_ledger_cannot_protect_is_refused(fault_redis: RedisServer) -> None:
    """Model finding F4 (a write during an outage while the ledger refuses writes).

    The rollback guard during an outage is the row's ``backup_version``: the engine
    records there the version of every backup served while Redis cannot take it. When
    that write failed (the database read-only, a lock), the failure was only logged and
    the write acknowledged, so the older cookies looked like the newest ones and were
    served, logged in, with the older data. Now such a write is refused (503, nothing
    changed): no acknowledged write is ever without its guard.
    """
    make_user()
    device = Client()
    login(device)
    set_values(device, a="0")
    older = captured(device)
    fault_redis.pause()
    try:
        with LedgerFaults() as ledger:
            ledger.down("readonly")  # reads answer, writes fail
            response = device.post("/set/", {"a": "1"}, HTTP_ACCEPT="application/json")
            assert response.status_code == 503
            assert response.json()["error"] == "ledger_unavailable"
            assert not response.cookies  # nothing changed
            state = ok(device.get("/state/"))  # a read still works
            assert state == {"user": "alice", "degraded": True, "data": {"a": "0"}}
        set_values(device, a="1")  # the ledger answers again: acknowledged, and guarded
        shown = ok(replay(older).get("/state/"))
        assert shown["data"] in ({"a": "1"}, {}), shown  # never the older {"a": "0"}
        assert ok(device.get("/state/")) == {"user": "alice", "degraded": True, "data": {"a": "1"}}
    finally:
        fault_redis.resume()


@pytest.mark.parametrize("again", [False, True], ids=["first-login", "re-login"])
def test_a_login_during_an_outage_is_not_refused_for_its_activity_stamp(
    fault_redis: RedisServer, again: bool
) -> None:
    """Model finding F5 (``login`` while Redis is down, a ledger write failing after it).

    With ``ACTIVITY_UPDATE_INTERVAL = 0`` every save is due for an activity stamp. A
    login during an outage records its row (with the new backup's version); the save that
    follows, which only the backup keeps, then stamped the row again, and when that one
    statement failed the save was refused: 503 "nothing changed", yet the row stayed
    active (a row with no login behind it, listed and counted) and, for a re-login, the
    device's own backup was now older than the version the row held, so it was answered
    anonymous, its data gone, for the rest of the outage. The version is recorded: only
    the stamp waits.
    """
    make_user()
    device = Client()
    if again:
        login(device)
        set_values(device, cart="3")

    def stamp(sql: str, params: object) -> bool:
        return 'SET "backup_version"' in sql  # the save's stamp (not the login's UPDATE)

    fault_redis.pause()
    try:
        with (
            override_settings(
                RESILIENT_SESSIONS={"BREAKER_COOLDOWN": COOLDOWN, "ACTIVITY_UPDATE_INTERVAL": 0}
            ),
            LedgerFaults() as ledger,
        ):
            if again:
                assert whoami(device)["degraded"] is True
            ledger.fail_when(stamp)  # the login's own statements go through
            credentials = {"username": "alice", "password": PASSWORD}
            response = device.post("/login/", credentials, HTTP_ACCEPT="application/json")
            ledger.heal()
            assert response.status_code == 200, response.content[:300]  # fails: 503
            state = ok(device.get("/state/"))
            assert state["user"] == "alice"  # fails (re-login): anonymous
            assert state["data"] == ({"cart": "3"} if again else {})
            assert UserSession.objects.active().count() == 1
    finally:
        fault_redis.resume()
