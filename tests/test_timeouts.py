"""Server-side timeouts: ``IDLE_TIMEOUT`` and ``ABSOLUTE_TIMEOUT``.

Time is not mocked and not slept through: the two stamps the engine keeps in the
session data (``_resilient_login_at``, ``_resilient_seen_at``) are moved into the past
by a real save through a ``SessionStore`` (Redis copy and a new backup cookie), which is
the state a session reaches when that much time has passed.  Covered:

- the stamps are written at login;
- past ``ABSOLUTE_TIMEOUT`` a login ends with reason ``expired``, past ``IDLE_TIMEOUT``
  with ``idle``: the visitor is anonymous, both cookies are deleted, the Redis copy is
  gone, and replaying the cookies later does not bring the login back; the same when
  the request is served from the backup while Redis is down;
- an active user within both limits stays logged in, from Redis and from the backup,
  and activity renews the idle stamp; with no timeouts nothing ends;
- the system check W005 when ``IDLE_TIMEOUT`` < 2 x ``ACTIVITY_UPDATE_INTERVAL``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import checks
from django.http import HttpResponse
from django.test import Client, override_settings

from django_resilient_sessions.backends.resilient import SessionStore
from django_resilient_sessions.cachecopy import hash_key
from django_resilient_sessions.conf import LOGIN_AT_KEY, SEEN_AT_KEY
from django_resilient_sessions.models import PendingPurge, UserSession
from tests.redis_server import RedisServer
from tests.web import has_copy, redis_key_for_hash

# Each test on django-redis and on Django's own RedisCache (tests/conftest.py).
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("cache_backend")]

PASSWORD = "correct horse battery staple"
SESSION_COOKIE = "sessionid"
BACKUP_COOKIE = "sessionbackup"
COOLDOWN = 0.2
INTERVAL = 60
IDLE = 600
ABSOLUTE = 3600
TIMEOUTS: dict[str, Any] = {
    "BREAKER_COOLDOWN": COOLDOWN,
    "ACTIVITY_UPDATE_INTERVAL": INTERVAL,
    "IDLE_TIMEOUT": IDLE,
    "ABSOLUTE_TIMEOUT": ABSOLUTE,
}


# Helpers ----------------------------------------------------------------------------------


@dataclass
class Cookies:
    session_key: str
    backup: str

    def client(self) -> Client:
        client = Client()
        client.cookies[SESSION_COOKIE] = self.session_key
        client.cookies[BACKUP_COOKIE] = self.backup
        return client


@pytest.fixture(autouse=True)
def timeouts() -> Iterator[None]:
    with override_settings(RESILIENT_SESSIONS=TIMEOUTS):
        yield


@pytest.fixture
def client() -> Client:
    get_user_model().objects.create_user("alice", password=PASSWORD)
    client = Client()
    response = client.post("/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    return client


def cookies_of(client: Client) -> Cookies:
    return Cookies(client.cookies[SESSION_COOKIE].value, client.cookies[BACKUP_COOKIE].value)


def whoami(client: Client) -> tuple[HttpResponse, dict[str, Any]]:
    response = client.get("/whoami/")
    assert response.status_code == 200
    payload: dict[str, Any] = response.json()
    return response, payload


def stored(client: Client) -> dict[str, Any]:
    """The session data as the engine has it now (read with the timeouts off)."""
    with override_settings(RESILIENT_SESSIONS={"IDLE_TIMEOUT": None, "ABSOLUTE_TIMEOUT": None}):
        store = SessionStore(
            client.cookies[SESSION_COOKIE].value, backup=client.cookies[BACKUP_COOKIE].value
        )
        data = dict(store.items())
    assert store.source == "cache"
    return data


def go_back_in_time(client: Client, *, since_login: int = 0, since_seen: int = 0) -> None:
    """Move the session's stamps into the past through a real save of the engine.

    The save runs with the timeouts off and a huge activity interval, so that it neither
    ends the session nor stamps it again; the client gets the new backup cookie.
    """
    options = {
        **settings.RESILIENT_SESSIONS,
        "ACTIVITY_UPDATE_INTERVAL": 10**7,
        "IDLE_TIMEOUT": None,
        "ABSOLUTE_TIMEOUT": None,
    }
    with override_settings(RESILIENT_SESSIONS=options):
        store = SessionStore(
            client.cookies[SESSION_COOKIE].value, backup=client.cookies[BACKUP_COOKIE].value
        )
        store[LOGIN_AT_KEY] = store[LOGIN_AT_KEY] - since_login
        store[SEEN_AT_KEY] = store[SEEN_AT_KEY] - since_seen
        store.save()
    assert store.source == "cache"
    assert store.sealed is not None
    client.cookies[BACKUP_COOKIE] = store.sealed.token


def the_row(client: Client) -> UserSession:
    return UserSession.objects.get(key_hash=hash_key(client.cookies[SESSION_COOKIE].value))


def redis_key(key_hash: str) -> str:
    return redis_key_for_hash(key_hash)


def is_deleted(response: HttpResponse, name: str) -> bool:
    morsel = response.cookies.get(name)
    return morsel is not None and morsel.value == "" and morsel["max-age"] == 0


# Stamps -------------------------------------------------------------------------------------


def test_login_stamps_the_session(client: Client) -> None:
    data = stored(client)
    now = time.time()
    assert now - 5 <= data[LOGIN_AT_KEY] <= now
    assert now - 5 <= data[SEEN_AT_KEY] <= now


# Timed out ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("since_login", "since_seen", "reason"),
    [
        (ABSOLUTE + 1, 0, "expired"),
        (IDLE + 1, IDLE + 1, "idle"),
        (ABSOLUTE + 1, IDLE + 1, "expired"),
    ],
    ids=["absolute", "idle", "both"],
)
def test_timed_out_login_ends(
    client: Client, redis_server: RedisServer, since_login: int, since_seen: int, reason: str
) -> None:
    go_back_in_time(client, since_login=since_login, since_seen=since_seen)
    captured = cookies_of(client)
    key_hash = hash_key(captured.session_key)

    response, payload = whoami(client)
    assert payload == {"user": None, "degraded": False}
    assert is_deleted(response, SESSION_COOKIE)
    assert is_deleted(response, BACKUP_COOKIE)
    row = UserSession.objects.get(key_hash=key_hash)
    assert row.end_reason == reason
    assert row.ended_at is not None
    with redis_server.client() as raw:
        assert not has_copy(raw, redis_key(key_hash))

    # The same cookies again (a copy kept by the browser): still out.
    _, payload = whoami(captured.client())
    assert payload["user"] is None
    assert UserSession.objects.get(key_hash=key_hash).end_reason == reason


@pytest.mark.parametrize(
    ("since_login", "since_seen", "reason"),
    [(ABSOLUTE + 1, 0, "expired"), (IDLE + 1, IDLE + 1, "idle")],
    ids=["absolute", "idle"],
)
def test_timed_out_login_ends_when_served_from_the_backup(
    fault_redis: RedisServer, client: Client, since_login: int, since_seen: int, reason: str
) -> None:
    # fault_redis comes first: the login must go to the server that is killed.
    go_back_in_time(client, since_login=since_login, since_seen=since_seen)
    captured = cookies_of(client)
    key_hash = hash_key(captured.session_key)

    fault_redis.kill()
    response, payload = whoami(client)
    assert payload == {"user": None, "degraded": True}
    assert is_deleted(response, SESSION_COOKIE)
    assert is_deleted(response, BACKUP_COOKIE)
    assert UserSession.objects.get(key_hash=key_hash).end_reason == reason
    assert PendingPurge.objects.filter(key_hash=key_hash).exists()
    _, payload = whoami(captured.client())  # during the outage
    assert payload == {"user": None, "degraded": True}

    fault_redis.start()  # back, empty
    time.sleep(COOLDOWN + 0.05)
    _, payload = whoami(captured.client())  # the probe: the purge is drained after it
    assert payload == {"user": None, "degraded": True}
    assert not PendingPurge.objects.exists()
    _, payload = whoami(captured.client())
    assert payload == {"user": None, "degraded": False}
    assert UserSession.objects.get(key_hash=key_hash).end_reason == reason


# Not timed out ------------------------------------------------------------------------------


def test_user_within_both_limits_stays_logged_in(client: Client) -> None:
    go_back_in_time(client, since_login=ABSOLUTE - 60, since_seen=INTERVAL - 10)
    for _ in range(3):
        _, payload = whoami(client)
        assert payload == {"user": "alice", "degraded": False}
    row = the_row(client)
    assert row.is_active and row.end_reason == ""


def test_activity_renews_the_idle_stamp(client: Client) -> None:
    seen_before = stored(client)[SEEN_AT_KEY]
    last_activity = the_row(client).last_activity
    # Idle for most of IDLE_TIMEOUT, then active: the stamp and the row are renewed.
    go_back_in_time(client, since_seen=IDLE - 100)
    _, payload = whoami(client)
    assert payload["user"] == "alice"
    assert stored(client)[SEEN_AT_KEY] >= seen_before
    assert the_row(client).last_activity > last_activity

    # Idle for most of it again: more than IDLE_TIMEOUT since the login in total, yet
    # the user was active in between.
    go_back_in_time(client, since_seen=IDLE - 100)
    _, payload = whoami(client)
    assert payload["user"] == "alice"
    assert the_row(client).is_active


def test_user_within_limits_is_served_from_the_backup(
    fault_redis: RedisServer, client: Client
) -> None:
    go_back_in_time(client, since_login=ABSOLUTE - 60, since_seen=IDLE - 60)
    fault_redis.kill()
    _, payload = whoami(client)
    assert payload == {"user": "alice", "degraded": True}
    assert the_row(client).is_active
    assert not PendingPurge.objects.exists()


def test_no_timeouts_configured_nothing_ends(client: Client) -> None:
    go_back_in_time(client, since_login=10**6, since_seen=10**6)
    options = {"BREAKER_COOLDOWN": COOLDOWN, "ACTIVITY_UPDATE_INTERVAL": INTERVAL}
    with override_settings(RESILIENT_SESSIONS=options):
        _, payload = whoami(client)
    assert payload["user"] == "alice"
    assert the_row(client).is_active


# System check ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "warned"),
    [
        ({"IDLE_TIMEOUT": 100, "ACTIVITY_UPDATE_INTERVAL": 60}, True),
        ({"IDLE_TIMEOUT": 119, "ACTIVITY_UPDATE_INTERVAL": 60}, True),
        ({"IDLE_TIMEOUT": 120, "ACTIVITY_UPDATE_INTERVAL": 60}, False),
        ({"IDLE_TIMEOUT": 599}, True),  # the default interval is 300 s
        ({"IDLE_TIMEOUT": 600}, False),
        ({"IDLE_TIMEOUT": None, "ACTIVITY_UPDATE_INTERVAL": 60}, False),
        ({"IDLE_TIMEOUT": 10, "ACTIVITY_UPDATE_INTERVAL": 0}, False),
    ],
)
def test_w005_idle_timeout_under_twice_the_interval(options: dict[str, Any], warned: bool) -> None:
    with override_settings(RESILIENT_SESSIONS=options):
        messages = checks.run_checks()
    w005 = [m for m in messages if m.id == "django_resilient_sessions.W005"]
    assert bool(w005) is warned
    if warned:
        assert w005[0].level == checks.WARNING
        assert str(options["IDLE_TIMEOUT"]) in w005[0].msg
