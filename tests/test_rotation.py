"""Rotating ``SECRET_KEY`` with the old key in ``SECRET_KEY_FALLBACKS`` keeps every session.

Through HTTP with Django's test ``Client``: a user logs in and stores values under the
old key, then the site rotates (``override_settings(SECRET_KEY=new,
SECRET_KEY_FALLBACKS=[old])``):

- with Redis up, the user stays logged in with its data: Django checks the session's
  ``_auth_user_hash`` (an HMAC keyed by ``SECRET_KEY``) against the fallbacks too (4.1+),
  cycles the session key and stores the new hash; the engine moves the ``UserSession``
  row to the new key and the new backup is sealed under the new key only;
- with Redis down, the backup sealed under the old key still opens; the next save
  re-seals it under the new key (the old key alone no longer opens it), and once the
  fallback is dropped the re-sealed backup keeps the user logged in through an outage;
- anonymous sessions: their backup too is re-sealed at the next save;
- a key that is not in the fallbacks opens nothing: with Redis down the old backup is
  refused (and logged as suspicious); with Redis up Django's auth hash no longer matches
  and the session is flushed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.signing import JSONSerializer
from django.test import Client, override_settings

from django_resilient_sessions import codec, cookies
from django_resilient_sessions.models import UserSession
from tests.redis_server import RedisServer

pytestmark = pytest.mark.django_db(transaction=True)

OLD = settings.SECRET_KEY
NEW = "drs-rotation-new-secret-key-" + "n" * 36
OTHER = "drs-rotation-unrelated-secret-" + "u" * 34
PASSWORD = "rotation password"
SESSION = "sessionid"
BACKUP = "sessionbackup"
COOLDOWN = 0.2


@pytest.fixture(autouse=True)
def short_cooldown() -> Iterator[None]:
    with override_settings(RESILIENT_SESSIONS={"BREAKER_COOLDOWN": COOLDOWN}):
        yield


def rotated(secret: str = NEW, fallbacks: list[str] | None = None) -> Any:
    return override_settings(
        SECRET_KEY=secret, SECRET_KEY_FALLBACKS=[OLD] if fallbacks is None else fallbacks
    )


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, (response.status_code, response.content[:300])
    body: dict[str, Any] = response.json()
    return body


def cookie(client: Client, name: str) -> str:
    morsel = client.cookies.get(name)
    return morsel.value if morsel is not None else ""


def opens(token: str, session_key: str, secret: str, fallbacks: list[str]) -> bool:
    """Does ``token`` decrypt for ``session_key`` with exactly these keys?"""
    with override_settings(SECRET_KEY=secret, SECRET_KEY_FALLBACKS=fallbacks):
        backup = codec.open_token(token, session_key, JSONSerializer, cookies.max_token_chars())
    return backup is not None


def logged_in_with_values() -> Client:
    """A user logged in under the old key, with two values stored."""
    User.objects.create_user(username="alice", password=PASSWORD)
    client = Client()
    ok(client.post("/login/", {"username": "alice", "password": PASSWORD}))
    ok(client.post("/set/", {"cart": "3", "theme": "dark"}))
    assert opens(cookie(client, BACKUP), cookie(client, SESSION), OLD, [])
    return client


def active_row_key_hash() -> str:
    row = UserSession.objects.active().get()
    return row.key_hash


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_redis_up_rotation_keeps_login_and_data(redis_server: RedisServer) -> None:
    client = logged_in_with_values()
    old_key = cookie(client, SESSION)

    with rotated():
        assert ok(client.get("/whoami/")) == {"user": "alice", "degraded": False}
        assert ok(client.get("/get/")) == {"cart": "3", "theme": "dark"}
        assert ok(client.get("/whoami/")) == {"user": "alice", "degraded": False}

    # Django verified the auth hash against the fallback, cycled the key and stored the
    # hash under the new key; the ledger row followed the session to its new key.
    new_key = cookie(client, SESSION)
    assert new_key != old_key
    assert active_row_key_hash() == sha(new_key)
    new_backup = cookie(client, BACKUP)
    assert opens(new_backup, new_key, NEW, [])
    assert not opens(new_backup, new_key, OLD, [])

    # The rotation is over: the old key is gone from the fallbacks, nothing is lost.
    with rotated(fallbacks=[]):
        assert ok(client.get("/whoami/")) == {"user": "alice", "degraded": False}
        assert ok(client.get("/get/")) == {"cart": "3", "theme": "dark"}


def test_redis_down_old_backup_opens_and_next_save_reseals(fault_redis: RedisServer) -> None:
    client = logged_in_with_values()
    old_key = cookie(client, SESSION)
    old_backup = cookie(client, BACKUP)
    fault_redis.kill()

    with rotated():
        # Served from the backup sealed under the old key.
        assert ok(client.get("/whoami/")) == {"user": "alice", "degraded": True}
        assert ok(client.get("/get/")) == {"cart": "3", "theme": "dark"}
        ok(client.post("/set/", {"cart": "4"}))
        assert ok(client.get("/get/")) == {"cart": "4", "theme": "dark"}

    key = cookie(client, SESSION)
    backup = cookie(client, BACKUP)
    assert backup != old_backup
    assert key != old_key  # Django cycled it after the fallback hash matched
    assert active_row_key_hash() == sha(key)
    # Re-sealed under the new key only.
    assert opens(backup, key, NEW, [])
    assert not opens(backup, key, OLD, [])

    # Fallback dropped, Redis still down: the re-sealed backup carries the session alone.
    with rotated(fallbacks=[]):
        assert ok(client.get("/whoami/")) == {"user": "alice", "degraded": True}
        assert ok(client.get("/get/")) == {"cart": "4", "theme": "dark"}

    # Redis back, empty: the backup is written back, still under the new key.
    fault_redis.start()
    with rotated(fallbacks=[]):
        client.get("/whoami/")  # may be the breaker's probe
        assert ok(client.get("/whoami/"))["user"] == "alice"
        assert ok(client.get("/get/")) == {"cart": "4", "theme": "dark"}


def test_anonymous_session_backup_is_resealed_at_next_save(fault_redis: RedisServer) -> None:
    client = Client()
    ok(client.post("/set/", {"cart": "1"}))
    key = cookie(client, SESSION)
    assert opens(cookie(client, BACKUP), key, OLD, [])
    fault_redis.kill()

    with rotated():
        assert ok(client.get("/get/")) == {"cart": "1"}
        ok(client.post("/set/", {"cart": "2"}))

    assert cookie(client, SESSION) == key  # no login: no key cycle
    backup = cookie(client, BACKUP)
    assert opens(backup, key, NEW, [])
    assert not opens(backup, key, OLD, [])
    with rotated(fallbacks=[]):
        assert ok(client.get("/get/")) == {"cart": "2"}


def test_key_outside_the_fallbacks_opens_no_backup(
    fault_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = logged_in_with_values()
    key, backup = cookie(client, SESSION), cookie(client, BACKUP)
    # Neither an unrelated key, nor the new key with the wrong fallbacks, opens it.
    assert not opens(backup, key, OTHER, [])
    assert not opens(backup, key, NEW, [OTHER])
    assert opens(backup, key, NEW, [OTHER, OLD])

    fault_redis.kill()
    with rotated(secret=OTHER, fallbacks=[NEW]), caplog.at_level(logging.WARNING):
        assert ok(client.get("/whoami/")) == {"user": None, "degraded": True}
        assert ok(client.get("/get/")) == {}
    assert any(
        r.name == "django.security.SuspiciousSession" and "authentication failed" in r.getMessage()
        for r in caplog.records
    )
    # The refused backup cookie was deleted from the browser.
    assert cookie(client, BACKUP) == ""
    # The login itself was not ended: with the right key it is still there.
    assert UserSession.objects.active().count() == 1


def test_key_outside_the_fallbacks_with_redis_up_logs_out(redis_server: RedisServer) -> None:
    client = logged_in_with_values()
    with rotated(secret=OTHER, fallbacks=[]):
        # The cache copy loads, but Django's auth hash (keyed by the old secret) no longer
        # matches any key: the session is flushed.
        assert ok(client.get("/whoami/")) == {"user": None, "degraded": False}
        assert ok(client.get("/get/")) == {}
    assert UserSession.objects.active().count() == 0
