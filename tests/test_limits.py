"""``MAX_SESSIONS_PER_USER`` and ``SESSION_LIMIT_POLICY``.

Covered, through POST /login/ and ``django.contrib.auth.login()`` with real sessions:

- ``"evict_oldest"``: a login past the limit ends the least recently active session
  (not the oldest login) with reason ``limit``; that device is anonymous on its next
  request, its Redis copy is gone, the limit's worth of rows stay active; another
  user's sessions, ended ones and a re-login on a counted device are not counted; with
  Redis down the eviction still happens and the evicted device's backup is refused;
- ``"refuse"``: ``login()`` raises ``SessionLimitExceeded`` (through the test app's login
  view, which does not catch it, and called directly with a ``RequestFactory`` request),
  no row is created, nothing of the login is left in the session or in Redis, and a
  device already counted may log in again;
- concurrency: eight simultaneous logins of one user, each from its own thread, client
  and database connection, leave exactly the limit's worth of active sessions under both
  policies (PostgreSQL: the user's row is locked; SQLite: skipped, it has no row locks).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import SESSION_KEY, get_user_model, login
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection
from django.test import Client, RequestFactory, override_settings
from django.utils import timezone

from django_resilient_sessions.backends.resilient import SessionStore
from django_resilient_sessions.cachecopy import hash_key
from django_resilient_sessions.exceptions import SessionLimitExceeded
from django_resilient_sessions.models import PendingPurge, UserSession
from tests.redis_server import RedisServer
from tests.web import has_copy, is_tombstone, redis_key_for_hash

PASSWORD = "correct horse battery staple"
SESSION_COOKIE = "sessionid"
LIMIT = 2
THREADS = 8
BASE_OPTIONS: dict[str, Any] = {"BREAKER_COOLDOWN": 0.2, "MAX_SESSIONS_PER_USER": LIMIT}


# Helpers ----------------------------------------------------------------------------------


def policy(name: str) -> override_settings:
    return override_settings(RESILIENT_SESSIONS={**BASE_OPTIONS, "SESSION_LIMIT_POLICY": name})


@pytest.fixture
def evict_oldest() -> Iterator[None]:
    with policy("evict_oldest"):
        yield


@pytest.fixture
def refuse() -> Iterator[None]:
    with policy("refuse"):
        yield


def make_user(username: str = "alice") -> AbstractBaseUser:
    user: AbstractBaseUser = get_user_model().objects.create_user(username, password=PASSWORD)
    return user


def log_in(client: Client, username: str = "alice") -> str:
    response = client.post("/login/", {"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.content
    return hash_key(client.cookies[SESSION_COOKIE].value)


def whoami(client: Client) -> str | None:
    response = client.get("/whoami/")
    assert response.status_code == 200
    user: str | None = response.json()["user"]
    return user


def active_hashes(username: str = "alice") -> set[str]:
    return set(
        UserSession.objects.active()
        .filter(user__username=username)
        .values_list("key_hash", flat=True)
    )


def session_copies_in_redis(server: RedisServer) -> list[bytes]:
    """The sessions' cache copies in Redis (not the tombstones of ended ones)."""
    with server.client() as raw:
        keys = raw.scan_iter(match="*resilient_sessions:*")
        return sorted(key for key in keys if not is_tombstone(raw.get(key)))


def redis_key(key_hash: str) -> str:
    return redis_key_for_hash(key_hash)


def last_active(key_hash: str, minutes_ago: int) -> None:
    UserSession.objects.filter(key_hash=key_hash).update(
        last_activity=timezone.now() - timedelta(minutes=minutes_ago)
    )


# evict_oldest -----------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.usefixtures("evict_oldest")
def test_evicts_the_least_recently_active(redis_server: RedisServer) -> None:
    make_user()
    first, second, third = Client(), Client(), Client()
    h1, h2 = log_in(first), log_in(second)
    # The first login has been used since; the second one has not.
    last_active(h1, 5)
    last_active(h2, 60)

    h3 = log_in(third)

    evicted = UserSession.objects.get(key_hash=h2)
    assert evicted.end_reason == "limit"
    assert evicted.ended_at is not None
    assert active_hashes() == {h1, h3}
    with redis_server.client() as raw:
        assert not has_copy(raw, redis_key(h2))
        assert has_copy(raw, redis_key(h1)) and has_copy(raw, redis_key(h3))
    assert whoami(second) is None
    assert whoami(first) == "alice"
    assert whoami(third) == "alice"


@pytest.mark.django_db
@pytest.mark.usefixtures("evict_oldest")
def test_each_login_past_the_limit_evicts_one() -> None:
    make_user()
    clients = [Client() for _ in range(5)]
    hashes = [log_in(c) for c in clients]
    # Logins one after another: each new one evicts the least recently active.
    assert active_hashes() == set(hashes[-LIMIT:])
    reasons = dict(UserSession.objects.values_list("key_hash", "end_reason"))
    assert [reasons[h] for h in hashes] == ["limit", "limit", "limit", "", ""]
    assert [whoami(c) for c in clients] == [None, None, None, "alice", "alice"]


@pytest.mark.django_db
@pytest.mark.usefixtures("evict_oldest")
def test_other_users_and_relogin_do_not_count() -> None:
    make_user("alice")
    make_user("bob")
    a1, a2, b1, b2 = Client(), Client(), Client(), Client()
    h1, h2 = log_in(a1), log_in(a2)
    log_in(b1, "bob")
    log_in(b2, "bob")
    # Logging in again on a device already counted evicts nothing.
    assert log_in(a1) == h1
    assert active_hashes("alice") == {h1, h2}
    assert len(active_hashes("bob")) == 2
    assert [whoami(c) for c in (a1, a2, b1, b2)] == ["alice", "alice", "bob", "bob"]


@pytest.mark.django_db
@pytest.mark.usefixtures("evict_oldest")
def test_ended_sessions_do_not_count() -> None:
    make_user()
    first, second, third = Client(), Client(), Client()
    log_in(first)
    h2 = log_in(second)
    assert first.post("/logout/").status_code == 200
    h3 = log_in(third)
    assert active_hashes() == {h2, h3}
    assert UserSession.objects.filter(end_reason="limit").count() == 0


@pytest.mark.django_db
def test_eviction_while_redis_is_down(fault_redis: RedisServer) -> None:
    make_user()
    first, second, third = Client(), Client(), Client()
    h1, h2 = log_in(first), log_in(second)
    last_active(h1, 60)

    fault_redis.kill()
    with policy("evict_oldest"):
        h3 = log_in(third)  # served without Redis: the ledger still holds the limit
        assert UserSession.objects.get(key_hash=h1).end_reason == "limit"
        assert active_hashes() == {h2, h3}
        assert PendingPurge.objects.filter(key_hash=h1).exists()
        # The evicted device's backup is refused; the others are served from theirs.
        assert whoami(first) is None
        assert [whoami(second), whoami(third)] == ["alice", "alice"]


# refuse -----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.usefixtures("refuse")
def test_refused_login_is_a_403_page_in_any_login_view(redis_server: RedisServer) -> None:
    make_user()
    first, second = Client(), Client()
    h1, h2 = log_in(first), log_in(second)
    third = Client(raise_request_exception=True)

    # A login view that does not catch SessionLimitExceeded (the admin's, a package's):
    # the middleware answers with a page, never a 500.
    response = third.post("/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 403
    assert b"Too many active sessions" in response.content
    assert "Retry-After" not in response

    assert UserSession.objects.count() == 2
    assert active_hashes() == {h1, h2}
    assert whoami(third) is None
    assert [whoami(first), whoami(second)] == ["alice", "alice"]
    # Nothing of the refused login was left in Redis: the two logins, and the third
    # visitor's session as it was before (anonymous data is kept, the login is not).
    third_key = third.cookies[settings.SESSION_COOKIE_NAME].value
    assert SESSION_KEY not in SessionStore(third_key).load()
    logins = sorted(redis_key(h).encode() for h in (h1, h2))
    assert (
        sorted(
            set(session_copies_in_redis(redis_server)) - {redis_key(hash_key(third_key)).encode()}
        )
        == logins
    )


@pytest.mark.django_db
@pytest.mark.usefixtures("refuse")
def test_refused_login_leaves_the_session_anonymous() -> None:
    user = make_user()
    log_in(Client())
    log_in(Client())

    request = RequestFactory().post("/login/")
    request.session = SessionStore()
    request.user = AnonymousUser()
    with pytest.raises(SessionLimitExceeded):
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")

    assert request.user.is_anonymous
    assert SESSION_KEY not in request.session
    request.session.save()  # what the middleware would do for a handled exception
    assert UserSession.objects.count() == 2
    assert SESSION_KEY not in SessionStore(request.session.session_key).load()


@pytest.mark.django_db
@pytest.mark.usefixtures("refuse")
def test_refuse_allows_relogin_on_a_counted_device_and_after_a_logout() -> None:
    make_user()
    first, second, third = Client(), Client(), Client()
    h1, h2 = log_in(first), log_in(second)
    assert log_in(first) == h1  # the same device logging in again is not a new session
    assert active_hashes() == {h1, h2}

    assert second.post("/logout/").status_code == 200
    h3 = log_in(third)
    assert active_hashes() == {h1, h3}
    assert whoami(third) == "alice"


# Concurrency ------------------------------------------------------------------------------


def _login_from_thread(
    barrier: threading.Barrier, client: Client, outcomes: list[str], errors: list[BaseException]
) -> None:
    try:
        barrier.wait(timeout=30)
        try:
            response = client.post("/login/", {"username": "alice", "password": PASSWORD})
            outcomes.append(str(response.status_code))
        except SessionLimitExceeded:
            outcomes.append("refused")
    except BaseException as error:  # reported by the main thread
        errors.append(error)
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("limit_policy", ["evict_oldest", "refuse"])
def test_concurrent_logins_stay_within_the_limit(limit_policy: str) -> None:
    if connection.vendor == "sqlite":
        pytest.skip(
            "SQLite has no row locks (SELECT ... FOR UPDATE is a no-op) and its shared "
            "in-memory test database fails concurrent writers at once ('database table is "
            "locked'); the limit under concurrent logins is a PostgreSQL guarantee"
        )
    make_user()
    clients = [Client(raise_request_exception=True) for _ in range(THREADS)]
    barrier = threading.Barrier(THREADS)
    outcomes: list[str] = []
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_login_from_thread, args=(barrier, c, outcomes, errors))
        for c in clients
    ]
    with policy(limit_policy):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert len(outcomes) == THREADS

        active = active_hashes()
        assert len(active) == LIMIT
        logged_in = [c for c in clients if whoami(c) == "alice"]
        assert len(logged_in) == LIMIT
        assert {hash_key(c.cookies[SESSION_COOKIE].value) for c in logged_in} == active

    if limit_policy == "evict_oldest":
        assert outcomes == ["200"] * THREADS
        assert UserSession.objects.count() == THREADS
        assert UserSession.objects.filter(end_reason="limit").count() == THREADS - LIMIT
    else:
        # The count and the row are taken under one lock: exactly LIMIT logins pass,
        # the others are answered with the 403 page (never an exception, never a 500).
        assert UserSession.objects.count() == LIMIT
        assert sorted(outcomes) == ["200"] * LIMIT + ["403"] * (THREADS - LIMIT)
