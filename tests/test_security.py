"""Security rules of the backup cookie, at store level and through the test client.

Covers: a backup that is tampered, truncated, re-encrypted under another SECRET_KEY,
transplanted from another session or plain garbage is refused (``backup_rejected``, a
``django.security.SuspiciousSession`` record, no exception; over HTTP: 200, anonymous, bad
backup cookie deleted or replaced) whether the cache copy is present, lost or unreachable;
replaying the cookies of a session ended by logout or by ``UserSession...revoke()`` stays
anonymous with Redis up, down, and restarted empty; neither Redis nor the database holds a
session key; the backup cookie carries no session data in clear.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.cookies import Morsel
from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.signing import JSONSerializer
from django.http import HttpResponse
from django.test import Client, override_settings

from django_resilient_sessions import codec, cookies
from django_resilient_sessions.backends.resilient import SessionStore
from django_resilient_sessions.cachecopy import hash_key
from django_resilient_sessions.models import PendingPurge, UserSession
from tests.redis_server import RedisServer
from tests.web import is_tombstone

pytestmark = pytest.mark.django_db

SECURITY_LOGGER = "django.security.SuspiciousSession"
SESSION_COOKIE = "sessionid"
BACKUP_COOKIE = "sessionbackup"
PASSWORD = "correct horse battery staple"
OTHER_SECRET = "an-entirely-different-secret-key-" + "q" * 30
CANARY = "PLAINTEXT-CANARY"


# Helpers ---------------------------------------------------------------------------------


@dataclass
class Captured:
    """The cookies a browser holds for one session."""

    session_key: str
    backup: str

    def client(self, backup: str | None = None) -> Client:
        """A new client presenting these cookies (optionally another backup value)."""
        client = Client()
        client.cookies[SESSION_COOKIE] = self.session_key
        client.cookies[BACKUP_COOKIE] = self.backup if backup is None else backup
        return client


def make_user(username: str = "alice") -> AbstractBaseUser:
    user: AbstractBaseUser = get_user_model().objects.create_user(username, password=PASSWORD)
    return user


def log_in(client: Client, username: str = "alice") -> Captured:
    response = client.post("/login/", {"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.content
    return capture(client)


def capture(client: Client) -> Captured:
    session_key = client.cookies[SESSION_COOKIE].value
    backup = client.cookies[BACKUP_COOKIE].value
    assert session_key and backup
    return Captured(session_key, backup)


def whoami(client: Client) -> tuple[HttpResponse, dict[str, Any]]:
    response = client.get("/whoami/")
    assert response.status_code == 200
    payload: dict[str, Any] = response.json()
    return response, payload


def is_deleted(morsel: Morsel[str]) -> bool:
    return morsel.value == "" and (morsel["max-age"] == 0 or "1970" in str(morsel["expires"]))


def assert_backup_deleted(response: HttpResponse) -> None:
    assert BACKUP_COOKIE in response.cookies, "the bad backup cookie was left in place"
    assert is_deleted(response.cookies[BACKUP_COOKIE])


def open_token(token: str, session_key: str) -> codec.Backup | None:
    return codec.open_token(token, session_key, JSONSerializer, cookies.max_token_chars())


def security_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == SECURITY_LOGGER]


def redis_dump(server: RedisServer) -> dict[bytes, bytes]:
    with server.client() as client:
        return {key: client.get(key) or b"" for key in client.scan_iter()}


def session_copies(server: RedisServer) -> dict[bytes, bytes]:
    """The session entries in Redis, without the tombstones of ended sessions."""
    return {k: v for k, v in redis_dump(server).items() if not is_tombstone(v)}


def tombstoned(server: RedisServer) -> set[str]:
    """Key hashes of the sessions Redis remembers as ended."""
    return {k.decode().rsplit(":", 1)[-1] for k, v in redis_dump(server).items() if is_tombstone(v)}


@pytest.fixture
def security_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger=SECURITY_LOGGER):
        yield caplog


# Bad backups ------------------------------------------------------------------------------


def _flip(token: str) -> str:
    index = len(token) // 2
    return token[:index] + ("B" if token[index] == "A" else "A") + token[index + 1 :]


def _reencrypt(token: str, session_key: str) -> str:
    backup = open_token(token, session_key)
    assert backup is not None
    with override_settings(SECRET_KEY=OTHER_SECRET):
        return codec.seal(backup, session_key, JSONSerializer)


@dataclass
class Sessions:
    """Two logged-in sessions: ``victim`` (the one attacked) and ``other``."""

    victim: Captured
    other: Captured


BadBackup = Callable[[Sessions], str]

BAD_BACKUPS: dict[str, BadBackup] = {
    "tampered": lambda s: _flip(s.victim.backup),
    "truncated": lambda s: s.victim.backup[:-12],
    "other_secret_key": lambda s: _reencrypt(s.victim.backup, s.victim.session_key),
    "transplanted": lambda s: s.other.backup,
    "garbage": lambda s: "garbage!not-a-token",
    "garbage_base64": lambda s: base64.urlsafe_b64encode(b"\x01" + b"\x00" * 90).decode(),
}


@pytest.fixture
def sessions() -> Sessions:
    make_user("alice")
    make_user("mallory")
    return Sessions(victim=log_in(Client(), "alice"), other=log_in(Client(), "mallory"))


@pytest.mark.parametrize("bad", BAD_BACKUPS.values(), ids=BAD_BACKUPS.keys())
def test_store_refuses_bad_backup_on_cache_miss(
    bad: BadBackup, sessions: Sessions, redis_server: RedisServer, security_log: Any
) -> None:
    token = bad(sessions)
    assert open_token(sessions.victim.backup, sessions.victim.session_key) is not None
    redis_server.flushall()  # the cache copy is lost: only the backup could restore it

    store = SessionStore(sessions.victim.session_key, backup=token)
    data = store.load()

    assert data == {}
    assert store.session_key is None
    assert store.backup_rejected is True
    assert store.degraded is False
    assert security_records(security_log)
    assert redis_dump(redis_server) == {}, "a refused backup must not be written back"


@pytest.mark.parametrize("bad", BAD_BACKUPS.values(), ids=BAD_BACKUPS.keys())
def test_store_refuses_bad_backup_with_cache_down(
    bad: BadBackup, fault_redis: RedisServer, sessions: Sessions, security_log: Any
) -> None:
    token = bad(sessions)
    fault_redis.kill()

    store = SessionStore(sessions.victim.session_key, backup=token)
    data = store.load()

    assert data == {}
    assert store.degraded is True
    assert store.backup_rejected is True
    assert store.keep_cookie is True
    assert store.session_key is None
    assert security_records(security_log)


@pytest.mark.parametrize("bad", BAD_BACKUPS.values(), ids=BAD_BACKUPS.keys())
def test_store_with_cache_copy_ignores_bad_backup(
    bad: BadBackup, sessions: Sessions, security_log: Any
) -> None:
    store = SessionStore(sessions.victim.session_key, backup=bad(sessions))
    data = store.load()

    assert data["_auth_user_id"] == str(get_user_model().objects.get(username="alice").pk)
    assert store.source == "cache"
    assert store.backup_rejected is True
    assert store.needs_backup is True
    assert security_records(security_log)


@pytest.mark.parametrize("bad", BAD_BACKUPS.values(), ids=BAD_BACKUPS.keys())
def test_http_bad_backup_on_cache_miss(
    bad: BadBackup, sessions: Sessions, redis_server: RedisServer, security_log: Any
) -> None:
    client = sessions.victim.client(backup=bad(sessions))
    redis_server.flushall()

    response, payload = whoami(client)

    assert payload == {"user": None, "degraded": False}
    assert_backup_deleted(response)
    assert is_deleted(response.cookies[SESSION_COOKIE])
    assert security_records(security_log)
    _, again = whoami(client)
    assert again["user"] is None


@pytest.mark.parametrize("bad", BAD_BACKUPS.values(), ids=BAD_BACKUPS.keys())
def test_http_bad_backup_with_cache_down(
    bad: BadBackup, fault_redis: RedisServer, sessions: Sessions, security_log: Any
) -> None:
    client = sessions.victim.client(backup=bad(sessions))
    fault_redis.kill()

    response, payload = whoami(client)

    assert payload == {"user": None, "degraded": True}
    assert_backup_deleted(response)
    # Redis may still hold the session: the session cookie itself is kept.
    assert SESSION_COOKIE not in response.cookies
    assert security_records(security_log)


@pytest.mark.parametrize("bad", BAD_BACKUPS.values(), ids=BAD_BACKUPS.keys())
def test_http_bad_backup_with_cache_copy_is_replaced(
    bad: BadBackup, sessions: Sessions, security_log: Any
) -> None:
    client = sessions.victim.client(backup=bad(sessions))

    response, payload = whoami(client)

    # The cache copy is authoritative: the user stays logged in and gets a good backup.
    assert payload == {"user": "alice", "degraded": False}
    fresh = response.cookies[BACKUP_COOKIE].value
    assert fresh and fresh != bad(sessions)
    renewed = open_token(fresh, sessions.victim.session_key)
    assert renewed is not None and renewed.data["_auth_user_id"]
    assert security_records(security_log)


def test_valid_backup_is_served_when_cache_is_down(
    fault_redis: RedisServer, sessions: Sessions
) -> None:
    """Control for the refusals above: the untouched backup does log the user in."""
    fault_redis.kill()

    _, payload = whoami(sessions.victim.client())

    assert payload == {"user": "alice", "degraded": True}


# Replay after the session ended -------------------------------------------------------------


def _end_by_logout(client: Client, user: AbstractBaseUser) -> None:
    response = client.post("/logout/")
    assert response.status_code == 200
    assert is_deleted(response.cookies[SESSION_COOKIE])


def _end_by_revoke(client: Client, user: AbstractBaseUser) -> None:
    assert UserSession.objects.filter(user=user).revoke() == 1


ENDINGS = {"logout": _end_by_logout, "revoke": _end_by_revoke}


def _redis_up(server: RedisServer) -> bool:
    return False


def _redis_down(server: RedisServer) -> bool:
    server.kill()
    return True


def _redis_restarted_empty(server: RedisServer) -> bool:
    server.restart()
    return False


REDIS_STATES = {"up": _redis_up, "down": _redis_down, "restarted_empty": _redis_restarted_empty}


@pytest.mark.parametrize("end", ENDINGS.values(), ids=ENDINGS.keys())
@pytest.mark.parametrize("redis_state", REDIS_STATES.values(), ids=REDIS_STATES.keys())
def test_replay_of_ended_session_stays_anonymous(
    end: Callable[[Client, AbstractBaseUser], None],
    redis_state: Callable[[RedisServer], bool],
    fault_redis: RedisServer,
    security_log: Any,
) -> None:
    user = make_user("alice")
    browser = Client()
    captured = log_in(browser, "alice")
    _, before = whoami(captured.client())
    assert before["user"] == "alice"
    key_hash = hash_key(captured.session_key)

    end(browser, user)
    row = UserSession.objects.get(key_hash=key_hash)
    assert row.ended_at is not None
    degraded = redis_state(fault_redis)

    replay = captured.client()
    response, payload = whoami(replay)

    assert payload == {"user": None, "degraded": degraded}
    assert_backup_deleted(response)
    assert any("ended or revoked" in r.getMessage() for r in security_records(security_log))
    _, again = whoami(replay)
    assert again["user"] is None
    _, posted = whoami(captured.client())
    assert posted["user"] is None
    if not degraded:
        assert session_copies(fault_redis) == {}, "the ended session was written back to Redis"

    # Control: a live session of the same user in the same Redis state is still served.
    live = log_in(Client(), "alice")
    _, control = whoami(live.client())
    assert control == {"user": "alice", "degraded": degraded}


def test_revoked_session_refused_on_every_later_request(fault_redis: RedisServer) -> None:
    user = make_user("alice")
    browser = Client()
    log_in(browser, "alice")
    UserSession.objects.get(user=user).revoke()

    _, payload = whoami(browser)
    assert payload["user"] is None
    fault_redis.kill()
    _, payload = whoami(browser)
    assert payload["user"] is None


# Nothing usable at rest ------------------------------------------------------------------


def test_no_session_key_in_redis_or_database(fault_redis: RedisServer) -> None:
    for name in ("alice", "bob", "carol"):
        make_user(name)
    browsers = {name: Client() for name in ("alice", "bob", "carol")}
    keys = {name: log_in(client, name).session_key for name, client in browsers.items()}
    anonymous = Client()
    anonymous.post("/set/", {"cart": "3 apples"})
    keys["anonymous"] = anonymous.cookies[SESSION_COOKIE].value
    browsers["alice"].post("/logout/")
    UserSession.objects.filter(user__username="bob").revoke()

    dump = session_copies(fault_redis)
    assert len(dump) == 2  # carol's and the anonymous session
    assert tombstoned(fault_redis) == {hash_key(keys["alice"]), hash_key(keys["bob"])}
    assert {hash_key(keys["carol"]), hash_key(keys["anonymous"])} == {
        key.decode().rsplit(":", 1)[-1] for key in dump
    }

    fault_redis.kill()
    browsers["carol"].post("/logout/")  # cache down: the purge is queued in the database
    assert PendingPurge.objects.filter(key_hash=hash_key(keys["carol"])).exists()
    assert UserSession.objects.count() == 3

    database = _dump_database()
    for session_key in keys.values():
        for raw_key, raw_value in dump.items():
            assert session_key.encode() not in raw_key
            assert session_key.encode() not in raw_value
        assert session_key not in database
    assert hash_key(keys["carol"]) in database


def _dump_database() -> str:
    """Every row of every installed model, as text."""
    rows: list[str] = []
    for model in apps.get_models():
        rows.extend(repr(row) for row in model._default_manager.values_list())
    return "\n".join(rows)


def _base64_forms(text: str) -> set[str]:
    """Base64 (standard and url-safe) of ``text`` at each byte alignment, edges removed."""
    raw = text.encode()
    forms: set[str] = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode().rstrip("=")
        core = encoded[(shift * 8 + 5) // 6 + (1 if shift else 0) : -2]
        forms |= {core, core.replace("+", "-").replace("/", "_")}
    return forms


def test_backup_cookie_carries_no_data_in_clear(redis_server: RedisServer) -> None:
    client = Client()
    response = client.post("/set/", {"note": CANARY, "other": CANARY.lower()})
    assert response.status_code == 200
    backup = response.cookies[BACKUP_COOKIE]
    session_key = response.cookies[SESSION_COOKIE].value

    value = backup.value
    opened = open_token(value, session_key)
    assert opened is not None and opened.data["note"] == CANARY  # it is in there, encrypted
    assert backup["httponly"] is True
    assert CANARY not in value and CANARY.lower() not in value
    for form in _base64_forms(CANARY) | _base64_forms(CANARY.lower()):
        assert len(form) >= 15
        assert form not in value
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    assert CANARY.encode() not in raw and CANARY.lower().encode() not in raw
    for raw_key, raw_value in redis_dump(redis_server).items():
        assert CANARY.encode() not in raw_key
        assert session_key.encode() not in raw_value
    assert all(
        CANARY not in str(morsel) for morsel in response.cookies.values() if morsel is not backup
    )


def test_base64_forms_would_catch_plain_encoding() -> None:
    """Self-check of the helper above: a backup that only base64-encoded would be caught."""
    for prefix in ("", "x", "xy"):
        encoded = base64.urlsafe_b64encode(f'{prefix}{{"note":"{CANARY}"}}'.encode()).decode()
        assert any(form in encoded for form in _base64_forms(CANARY))
