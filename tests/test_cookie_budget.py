"""Backup cookie size rules, end to end through the middleware (Django test Client).

Covers: a normal session's backup fits one cookie of at most ``BACKUP_COOKIE_MAX_BYTES``
(name and attributes included); a session too big for the budget gets a partial backup
(essential keys only: Django's auth keys and ``ESSENTIAL_KEYS``) with a warning and the
``backup_truncated`` signal, and with Redis down the user stays logged in without the
dropped keys; ``BACKUP_COOKIE_MAX_CHUNKS`` spreads a bigger backup over several cookies,
each within budget, and deletes the chunks no longer needed; when even the essential keys
do not fit there is no backup at all (the old one is deleted) and the request still
works; a partial backup written during an outage is merged over the cache copy when Redis
answers again; a logout deletes the session cookie and every backup cookie.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.cookies import Morsel
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.dispatch import Signal
from django.http import HttpResponse
from django.test import Client, override_settings
from django.utils.module_loading import import_string

from django_resilient_sessions import codec, cookies, signals
from django_resilient_sessions.cachecopy import hash_key
from tests.redis_server import RedisServer, forget_django_redis_pools

pytestmark = pytest.mark.django_db

LOGGER = "django_resilient_sessions"
BACKUP = "sessionbackup"
USERNAME = "alice"
PASSWORD = "budget-pw"

# Random URL-safe text compresses to about 75 % (6 bits per character), never below.
HUGE = 15_000  # bytes of entropy: a 20 000-character value, far past one cookie
SEVEN_KB = 5_250  # bytes of entropy: a 7 000-character value, two or three cookies


@contextmanager
def options(*, socket_timeout: float = 2.0, **changes: Any) -> Iterator[None]:
    """``RESILIENT_SESSIONS`` for one test, and the session cache's socket timeouts.

    Tests that do not hang Redis use 2 s instead of the suite's 0.25 s, so that a busy
    machine cannot turn a slow reply into an outage (and, with no backup, into a logout).
    django-redis keeps one pool per URL for the whole process: it is dropped on entry and
    exit so that the pool in use has these timeouts, and later tests get their own again.
    """
    caches = {alias: dict(conf) for alias, conf in settings.CACHES.items()}
    cache = caches["default"]
    timeouts = {"SOCKET_TIMEOUT": socket_timeout, "SOCKET_CONNECT_TIMEOUT": socket_timeout}
    cache["OPTIONS"] = {**cache.get("OPTIONS", {}), **timeouts}
    forget_django_redis_pools(cache["LOCATION"])
    try:
        with override_settings(
            RESILIENT_SESSIONS={"BREAKER_COOLDOWN": 0.2, **changes}, CACHES=caches
        ):
            yield
    finally:
        forget_django_redis_pools(cache["LOCATION"])


@pytest.fixture
def user() -> User:
    return User.objects.create_user(USERNAME, password=PASSWORD)


@pytest.fixture
def client(user: User) -> Client:
    client = Client()
    response = client.post("/login/", {"username": USERNAME, "password": PASSWORD})
    assert response.status_code == 200, response.content
    assert BACKUP in response.cookies
    return client


@contextmanager
def captured(signal: Signal) -> Iterator[list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        calls.append(kwargs)

    signal.connect(receiver, weak=False)
    try:
        yield calls
    finally:
        signal.disconnect(receiver)


def set_values(client: Client, **values: str) -> HttpResponse:
    response = client.post("/set/", values)
    assert response.status_code == 200, response.content
    return response


def whoami(client: Client) -> dict[str, Any]:
    response = client.get("/whoami/")
    assert response.status_code == 200, response.content
    data: dict[str, Any] = response.json()
    return data


def session_data(client: Client) -> dict[str, Any]:
    response = client.get("/get/")
    assert response.status_code == 200, response.content
    data: dict[str, Any] = response.json()
    return data


def cookie_bytes(morsel: Morsel[str]) -> int:
    """Size of the Set-Cookie value a browser gets: name, value and attributes."""
    return len(morsel.OutputString().encode())


def is_set(response: HttpResponse, name: str) -> bool:
    morsel = response.cookies.get(name)
    return morsel is not None and bool(morsel.value) and morsel["max-age"] != 0


def is_deleted(response: HttpResponse, name: str) -> bool:
    morsel = response.cookies.get(name)
    return morsel is not None and morsel.value == "" and morsel["max-age"] == 0


def backup_chunks(response: HttpResponse) -> list[str]:
    """Names of the backup cookies this response sets, in chunk order."""
    return [name for name in cookies.chunk_names() if is_set(response, name)]


def open_backup(response: HttpResponse, session_key: str) -> codec.Backup:
    token = cookies.read_token(
        {name: response.cookies[name].value for name in backup_chunks(response)}
    )
    assert token is not None
    serializer = import_string(settings.SESSION_SERIALIZER)
    backup = codec.open_token(token, session_key, serializer, cookies.max_token_chars())
    assert backup is not None, "the backup cookie does not decrypt"
    return backup


def session_key(client: Client) -> str:
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def warnings_of(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING and text in r.getMessage()
    ]


# -- one cookie ---------------------------------------------------------------------------


@pytest.mark.parametrize("max_bytes", [None, 4000, 2048, 1024])
def test_normal_session_backup_fits_one_cookie(user: User, max_bytes: int | None) -> None:
    extra = {} if max_bytes is None else {"BACKUP_COOKIE_MAX_BYTES": max_bytes}
    with options(**extra), captured(signals.backup_truncated) as truncated:
        client = Client()
        login = client.post("/login/", {"username": USERNAME, "password": PASSWORD})
        assert login.status_code == 200
        response = set_values(client, cart="2 apples", theme="dark", step="3")
        assert backup_chunks(response) == [BACKUP]
        assert cookie_bytes(response.cookies[BACKUP]) <= (max_bytes or 4000)
        assert response.cookies[BACKUP]["httponly"] is True
        backup = open_backup(response, session_key(client))
    assert not backup.partial
    assert backup.data["_auth_user_id"] == str(user.pk)
    assert {k: backup.data[k] for k in ("cart", "theme", "step")} == {
        "cart": "2 apples",
        "theme": "dark",
        "step": "3",
    }
    assert truncated == []


def test_oversized_session_gets_partial_backup(
    client: Client, fault_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    huge = secrets.token_urlsafe(HUGE)
    with options(), captured(signals.backup_truncated) as truncated:
        set_values(client, note="small")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            response = set_values(client, huge=huge)
        key = session_key(client)

        assert backup_chunks(response) == [BACKUP]
        assert cookie_bytes(response.cookies[BACKUP]) <= 4000
        backup = open_backup(response, key)
        assert backup.partial
        assert backup.data["_auth_user_id"] == str(User.objects.get().pk)
        assert "huge" not in backup.data
        assert "note" not in backup.data

        assert len(truncated) == 1
        assert truncated[0]["dropped"] == ["huge", "note"]
        assert truncated[0]["key_hash"] == hash_key(key)
        assert truncated[0]["budget"] == cookies.max_token_chars()
        assert warnings_of(caplog, "partial"), caplog.text

        # Redis up: the cache copy is whole.
        assert session_data(client) == {"note": "small", "huge": huge}

        fault_redis.kill()
        me = whoami(client)
        assert me == {"user": USERNAME, "degraded": True}
        assert session_data(client) == {}


def test_essential_key_survives_partial_backup(client: Client, fault_redis: RedisServer) -> None:
    with (
        options(ESSENTIAL_KEYS=["cart"]),
        captured(signals.backup_truncated) as truncated,
    ):
        set_values(client, cart="3 apples", note="dropped")
        response = set_values(client, huge=secrets.token_urlsafe(HUGE))
        assert cookie_bytes(response.cookies[BACKUP]) <= 4000
        backup = open_backup(response, session_key(client))
        assert backup.partial
        assert backup.data["cart"] == "3 apples"
        assert [call["dropped"] for call in truncated] == [["huge", "note"]]

        fault_redis.kill()
        assert whoami(client) == {"user": USERNAME, "degraded": True}
        assert session_data(client) == {"cart": "3 apples"}
        # Writes during the outage go to the backup, which stays partial: it still lacks
        # the dropped keys, to be merged over the cache copy when Redis answers again.
        after = set_values(client, cart="4 apples")
        backup = open_backup(after, session_key(client))
        assert backup.partial
        assert backup.data["cart"] == "4 apples"
        assert session_data(client) == {"cart": "4 apples"}


def test_partial_backup_is_merged_over_the_cache_copy(
    client: Client, fault_redis: RedisServer
) -> None:
    """Writes made from a partial backup during a hang win; the keys it lacked come back."""
    huge = secrets.token_urlsafe(HUGE)
    with options(socket_timeout=0.25, ESSENTIAL_KEYS=["cart"]):
        set_values(client, cart="3 apples", huge=huge, note="kept in Redis")
        fault_redis.pause()
        try:
            # The first request waits one socket timeout and opens the breaker.
            assert whoami(client) == {"user": USERNAME, "degraded": True}
            response = set_values(client, cart="4 apples")
            assert open_backup(response, session_key(client)).partial
            assert session_data(client) == {"cart": "4 apples"}
        finally:
            fault_redis.resume()
        time.sleep(0.25)  # the breaker's cool-down (0.2 s): the next request probes
        assert whoami(client) == {"user": USERNAME, "degraded": False}
        assert session_data(client) == {"cart": "4 apples", "huge": huge, "note": "kept in Redis"}


# -- chunks -------------------------------------------------------------------------------


def test_chunked_backup_carries_the_whole_session(client: Client, fault_redis: RedisServer) -> None:
    value = secrets.token_urlsafe(SEVEN_KB)
    with options(BACKUP_COOKIE_MAX_CHUNKS=3), captured(signals.backup_truncated) as truncated:
        response = set_values(client, big=value, cart="1 pear")
        chunks = backup_chunks(response)
        assert chunks[:2] == [BACKUP, f"{BACKUP}_1"]
        assert len(chunks) in (2, 3)
        for name in chunks:
            assert cookie_bytes(response.cookies[name]) <= 4000, name
            assert response.cookies[name]["httponly"] is True
        assert not open_backup(response, session_key(client)).partial
        assert truncated == []

        fault_redis.kill()
        assert whoami(client) == {"user": USERNAME, "degraded": True}
        assert session_data(client) == {"big": value, "cart": "1 pear"}


def test_chunks_no_longer_needed_are_deleted(client: Client, fault_redis: RedisServer) -> None:
    with options(BACKUP_COOKIE_MAX_CHUNKS=3):
        # ~10 000 characters of token: three cookies.
        response = set_values(client, big=secrets.token_urlsafe(7_000))
        assert backup_chunks(response) == [BACKUP, f"{BACKUP}_1", f"{BACKUP}_2"]

        # ~7 000 characters: two cookies, the third is deleted.
        medium = secrets.token_urlsafe(SEVEN_KB)
        response = set_values(client, big=medium)
        assert backup_chunks(response) == [BACKUP, f"{BACKUP}_1"]
        assert is_deleted(response, f"{BACKUP}_2")

        # Small again: one cookie, both extra chunks deleted.
        response = set_values(client, big="small")
        assert backup_chunks(response) == [BACKUP]
        assert is_deleted(response, f"{BACKUP}_1")
        assert is_deleted(response, f"{BACKUP}_2")
        assert cookie_bytes(response.cookies[BACKUP]) <= 4000

        # A response that sets no new backup leaves the chunks alone.
        assert "sessionbackup_1" not in client.get("/whoami/").cookies

        fault_redis.kill()
        assert whoami(client) == {"user": USERNAME, "degraded": True}
        assert session_data(client) == {"big": "small"}


def test_chunks_shrink_while_redis_is_down(client: Client, fault_redis: RedisServer) -> None:
    with options(BACKUP_COOKIE_MAX_CHUNKS=3):
        set_values(client, big=secrets.token_urlsafe(SEVEN_KB))
        fault_redis.kill()
        response = set_values(client, big="tiny")
        assert backup_chunks(response) == [BACKUP]
        assert is_deleted(response, f"{BACKUP}_1")
        assert whoami(client) == {"user": USERNAME, "degraded": True}
        assert session_data(client) == {"big": "tiny"}


# -- nothing fits ---------------------------------------------------------------------------


@pytest.mark.parametrize("max_chunks", [1, 3])
def test_no_backup_when_essential_keys_do_not_fit(
    client: Client, caplog: pytest.LogCaptureFixture, max_chunks: int
) -> None:
    huge = secrets.token_urlsafe(HUGE)  # ~27 000 characters of token: past 3 cookies too
    limits = {"ESSENTIAL_KEYS": ["huge"], "BACKUP_COOKIE_MAX_CHUNKS": max_chunks}
    with options(**limits), captured(signals.backup_truncated) as truncated:
        before = set_values(client, huge=secrets.token_urlsafe(SEVEN_KB if max_chunks > 1 else 9))
        sent = backup_chunks(before)
        assert len(sent) == (2 if max_chunks > 1 else 1)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            response = client.post("/set/", {"huge": huge})
        assert response.status_code == 200
        assert is_set(response, settings.SESSION_COOKIE_NAME)
        # The old backup cookies are deleted, no new one is set.
        for name in sent:
            assert is_deleted(response, name), name
        assert backup_chunks(response) == []
        assert warnings_of(caplog, "left out"), caplog.text
        assert truncated == []
        # Redis up: the session is whole and the user logged in.
        assert whoami(client)["user"] == USERNAME
        assert session_data(client) == {"huge": huge}


# -- logout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("max_chunks", [1, 3])
def test_logout_deletes_session_and_backup_cookies(client: Client, max_chunks: int) -> None:
    size = SEVEN_KB if max_chunks > 1 else 100
    with options(BACKUP_COOKIE_MAX_CHUNKS=max_chunks):
        before = set_values(client, big=secrets.token_urlsafe(size))
        sent = backup_chunks(before)
        assert len(sent) == (2 if max_chunks > 1 else 1)

        response = client.post("/logout/")
        assert response.status_code == 200
        assert is_deleted(response, settings.SESSION_COOKIE_NAME)
        for name in sent:
            assert is_deleted(response, name), name
        assert backup_chunks(response) == []
        assert whoami(client)["user"] is None
