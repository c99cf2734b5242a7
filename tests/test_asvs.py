"""OWASP ASVS 5.0 requirements (V7 session management, V3.3 cookie setup) not covered elsewhere.

``docs/security.md`` maps every requirement to a test; these are the ones no other file
showed. Through Django's test ``Client`` and the full middleware stack:

- 7.2.3: session keys are 32 characters of ``[a-z0-9]`` (over 165 bits) from Django's
  CSPRNG-backed ``get_random_string``, all distinct;
- 7.2.4: logging in issues a new session key and ends the pre-login one (its cookies are
  anonymous and empty afterwards); a key chosen by an attacker is never adopted;
- 7.4.2: a deactivated user is anonymous on every device at once, Redis up or down;
- 7.4.5: an administrator ends every session of every user in one call, Redis up or down;
- V3.3.1-3.3.4: the backup cookie carries exactly the session cookie's ``Secure``,
  ``SameSite``, ``Path``, ``Domain`` and lifetime, is always ``HttpOnly``, and
  ``__Host-`` / ``__Secure-`` prefixed names work for both cookies (chunks included);
- the map in ``docs/security.md`` cites only tests that exist.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from http.cookies import Morsel
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.test import Client, override_settings

from django_resilient_sessions.backends.resilient import SessionStore
from django_resilient_sessions.models import UserSession
from tests.redis_server import RedisServer

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "asvs password"
SESSION = "sessionid"
BACKUP = "sessionbackup"
COOLDOWN = 0.2


@pytest.fixture(autouse=True)
def short_cooldown() -> Iterator[None]:
    with override_settings(RESILIENT_SESSIONS={"BREAKER_COOLDOWN": COOLDOWN}):
        yield


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, (response.status_code, response.content[:300])
    body: dict[str, Any] = response.json()
    return body


def login(client: Client, username: str) -> Any:
    response = client.post("/login/", {"username": username, "password": PASSWORD})
    assert ok(response) == {"ok": True}
    return response


def user_of(client: Client) -> str | None:
    user: str | None = ok(client.get("/whoami/"))["user"]
    return user


def replay(cookies: dict[str, str]) -> Client:
    client = Client()
    for name, value in cookies.items():
        client.cookies[name] = value
    return client


def captured(client: Client) -> dict[str, str]:
    return {name: morsel.value for name, morsel in client.cookies.items() if morsel.value}


# -- V7.2 fundamental session security ---------------------------------------------------------


def test_session_keys_are_long_random_and_distinct(redis_server: RedisServer) -> None:
    keys = set()
    for _ in range(200):
        store = SessionStore()
        store.create()
        assert store.session_key is not None
        keys.add(store.session_key)
    assert len(keys) == 200
    # 32 characters of a 36-letter alphabet: log2(36) * 32 > 165 bits.
    assert all(re.fullmatch(r"[a-z0-9]{32}", key) for key in keys)


def test_login_issues_a_new_key_and_ends_the_pre_login_one(fault_redis: RedisServer) -> None:
    User.objects.create_user(username="alice", password=PASSWORD)
    client = Client()
    ok(client.post("/set/", {"cart": "1"}))
    before = captured(client)
    login(client, "alice")
    after = captured(client)
    assert after[SESSION] != before[SESSION]
    assert ok(client.get("/get/")) == {"cart": "1"}  # the data moved to the new key

    # The pre-login key is over: anonymous and empty, Redis up...
    thief = replay(before)
    assert user_of(thief) is None
    assert ok(thief.get("/get/")) == {}
    # ...and Redis down (its backup never held a login).
    fault_redis.kill()
    assert user_of(replay(before)) is None
    assert user_of(client) == "alice"


def test_a_session_key_chosen_by_an_attacker_is_never_adopted(redis_server: RedisServer) -> None:
    User.objects.create_user(username="alice", password=PASSWORD)
    planted = "attackerchosenkey0123456789abcd"
    client = replay({SESSION: planted})
    response = login(client, "alice")
    issued = response.cookies[SESSION].value
    assert issued != planted
    assert user_of(replay({SESSION: planted})) is None


# -- V7.4 session termination ------------------------------------------------------------------


@pytest.mark.parametrize("redis_down", [False, True], ids=["redis_up", "redis_down"])
def test_deactivated_user_is_anonymous_everywhere(
    fault_redis: RedisServer, redis_down: bool
) -> None:
    user = User.objects.create_user(username="alice", password=PASSWORD)
    phone, laptop = Client(), Client()
    login(phone, "alice")
    login(laptop, "alice")
    if redis_down:
        fault_redis.kill()
    user.is_active = False
    user.save()
    assert user_of(phone) is None
    assert user_of(laptop) is None
    # Ending the rows (what a site's "disable account" should also do) stops them for good.
    UserSession.objects.filter(user=user).revoke()
    user.is_active = True
    user.save()
    assert user_of(phone) is None
    assert user_of(laptop) is None


@pytest.mark.parametrize("redis_down", [False, True], ids=["redis_up", "redis_down"])
def test_administrator_ends_every_session_of_every_user(
    fault_redis: RedisServer, redis_down: bool
) -> None:
    clients = {}
    for name in ("alice", "bob", "carol"):
        User.objects.create_user(username=name, password=PASSWORD)
        clients[name] = Client()
        login(clients[name], name)
    stolen = {name: captured(client) for name, client in clients.items()}
    if redis_down:
        fault_redis.kill()
    assert UserSession.objects.active().revoke() == 3
    for name, client in clients.items():
        assert user_of(client) is None, name
        assert user_of(replay(stolen[name])) is None, name
    assert not UserSession.objects.active().exists()


# -- V3.3 cookie setup -------------------------------------------------------------------------


def cookie_attributes(morsel: Morsel[str]) -> dict[str, Any]:
    return {
        key: morsel[key] for key in ("secure", "samesite", "path", "domain", "max-age", "expires")
    }


@pytest.mark.parametrize(
    "options",
    [
        {"SESSION_COOKIE_SECURE": True, "SESSION_COOKIE_SAMESITE": "Strict"},
        {"SESSION_COOKIE_SECURE": True, "SESSION_COOKIE_SAMESITE": "None"},
        {"SESSION_COOKIE_SECURE": False, "SESSION_COOKIE_SAMESITE": "Lax"},
        {
            "SESSION_COOKIE_SECURE": True,
            "SESSION_COOKIE_SAMESITE": "Lax",
            "SESSION_COOKIE_PATH": "/app/",
            "SESSION_COOKIE_DOMAIN": ".example.com",
            "SESSION_COOKIE_AGE": 3600,
        },
    ],
    ids=["strict", "none", "lax-insecure", "path-domain-age"],
)
def test_backup_cookie_carries_the_session_cookie_attributes(
    redis_server: RedisServer, options: dict[str, Any]
) -> None:
    User.objects.create_user(username="alice", password=PASSWORD)
    with override_settings(**options):
        response = login(Client(), "alice")
    session, backup = response.cookies[SESSION], response.cookies[BACKUP]
    assert cookie_attributes(backup) == cookie_attributes(session)
    assert bool(backup["secure"]) is options["SESSION_COOKIE_SECURE"]
    assert backup["samesite"] == options["SESSION_COOKIE_SAMESITE"]
    assert backup["httponly"] is True


def test_backup_cookie_is_httponly_even_when_the_session_cookie_is_not(
    redis_server: RedisServer,
) -> None:
    User.objects.create_user(username="alice", password=PASSWORD)
    with override_settings(SESSION_COOKIE_HTTPONLY=False):
        response = login(Client(), "alice")
    assert not response.cookies[SESSION]["httponly"]
    assert response.cookies[BACKUP]["httponly"] is True


@pytest.mark.parametrize("prefix", ["__Host-", "__Secure-"])
def test_prefixed_cookie_names_work_through_an_outage(
    fault_redis: RedisServer, prefix: str
) -> None:
    User.objects.create_user(username="alice", password=PASSWORD)
    session_name, backup_name = f"{prefix}sessionid", f"{prefix}sessionbackup"
    options = {
        "BREAKER_COOLDOWN": COOLDOWN,
        "BACKUP_COOKIE_NAME": backup_name,
        "BACKUP_COOKIE_MAX_CHUNKS": 3,
        "BACKUP_COOKIE_MAX_BYTES": 1024,
    }
    with override_settings(
        SESSION_COOKIE_NAME=session_name,
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_PATH="/",
        SESSION_COOKIE_DOMAIN=None,
        RESILIENT_SESSIONS=options,
    ):
        ids = {m.id for m in run_checks(include_deployment_checks=True)}
        assert not {i for i in ids if i and i.startswith("django_resilient_sessions.")}
        client = Client()
        login(client, "alice")
        # A session big enough to need the chunk cookies, which keep the prefix.
        notes = secrets.token_hex(1000)
        response = client.post("/set/", {"notes": notes})
        names = [name for name in response.cookies if name.startswith(backup_name)]
        assert backup_name in names and f"{backup_name}_1" in names
        for name in [session_name, *names]:
            morsel = response.cookies[name]
            # __Host-: Secure, Path=/ and no Domain; __Secure-: Secure.
            assert morsel["secure"] is True
            assert morsel["path"] == "/"
            assert not morsel["domain"]
        fault_redis.kill()
        assert ok(client.get("/whoami/")) == {"user": "alice", "degraded": True}
        assert ok(client.get("/get/")) == {"notes": notes}


# -- the requirement map itself ----------------------------------------------------------------


def test_security_doc_names_only_tests_that_exist() -> None:
    """Every ``file::test`` that docs/security.md cites is a test function of that file."""
    root = Path(__file__).resolve().parent
    doc = (root.parent / "docs" / "security.md").read_text()
    cited = set(re.findall(r"`(test_\w+\.py)::(\w+)`", doc))
    assert len(cited) > 40
    missing = [
        f"{name}::{function}"
        for name, function in sorted(cited)
        if not re.search(
            rf"^(async )?def {function}\(", (root / name).read_text(), flags=re.MULTILINE
        )
    ]
    assert missing == []
