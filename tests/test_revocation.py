"""The revocation ledger (``UserSession``, ``PendingPurge``) driven through HTTP.

Logins, logouts and revocations go through the test app with Django's test ``Client``
(full middleware stack, backup cookies kept) against real redis-server processes.
Covered:

- a login records exactly one active row (IP, user agent, expiry), a re-login moves it
  to the new key, a logout ends it, and anonymous data survives the login's key cycle;
- revoking one device logs out that device only, and its captured cookies never work
  again, with Redis up or down; revoking a queryset logs out everywhere;
- revocation and logout while Redis is down: the row ends at once, the cache entry is
  queued in ``PendingPurge`` and purged by the first request after recovery, and the
  old cookies are refused during and after the outage;
- the database unavailable during a Redis outage: fail closed (auth keys dropped, the
  rest kept) or, with ``FAIL_CLOSED`` off, the login trusted;
- ``clearsessions``: expired rows ended, old ended rows deleted, recent ones kept,
  pending purges finished, in batches.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_resilient_sessions.breaker import reset_breakers
from django_resilient_sessions.models import PendingPurge, UserSession
from tests.redis_server import RedisServer
from tests.web import (
    BACKUP_COOKIE,
    captured,
    get_values,
    has_copy,
    in_redis,
    is_tombstone,
    key_hash,
    login,
    make_user,
    ok,
    redis_key_for_hash,
    replay,
    session_key,
    set_values,
    user_of,
    usersession_table_unavailable,
    whoami,
)

COOLDOWN = 0.2
AGENT = "Mozilla/5.0 (X11; Linux x86_64) DRS-Test/1.0"


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def short_cooldown() -> Iterator[None]:
    with override_settings(RESILIENT_SESSIONS={"BREAKER_COOLDOWN": COOLDOWN}):
        yield


def wait_cooldown() -> None:
    time.sleep(COOLDOWN + 0.05)


def recover_through(client: Client) -> None:
    """The first request after the cool-down probes Redis and, with purges queued,
    is still served from its backup: the queue is drained after its response."""
    wait_cooldown()
    assert whoami(client)["degraded"] is True
    assert not PendingPurge.objects.exists()


def row_of(client: Client) -> UserSession:
    row: UserSession = UserSession.objects.get(key_hash=key_hash(session_key(client)))
    return row


def deleted(response: Any, name: str) -> bool:
    morsel = response.cookies.get(name)
    return morsel is not None and morsel.value == "" and morsel["max-age"] == 0


# -- login, logout, key cycling ---------------------------------------------------------------


@pytest.mark.django_db
def test_login_records_one_active_row_and_logout_ends_it() -> None:
    user = make_user()
    client = Client()
    before = timezone.now()
    login(client, HTTP_USER_AGENT=AGENT)

    rows = UserSession.objects.filter(user=user)
    assert rows.count() == 1
    row = rows.get()
    assert row.key_hash == key_hash(session_key(client))
    assert row.is_active and row.ended_at is None and row.end_reason == ""
    assert row.ip == "127.0.0.1"
    assert row.user_agent == AGENT
    assert row.created_at >= before
    expected_expiry = before + timedelta(seconds=settings.SESSION_COOKIE_AGE)
    assert abs((row.expires_at - expected_expiry).total_seconds()) < 10
    assert list(UserSession.objects.active().filter(user=user)) == [row]
    assert user_of(client) == "alice"

    response = client.post("/logout/")
    assert ok(response) == {"ok": True}
    assert deleted(response, settings.SESSION_COOKIE_NAME)
    assert deleted(response, BACKUP_COOKIE)
    row = UserSession.objects.get(pk=row.pk)
    assert row.ended_at is not None
    assert row.end_reason == "logout"
    assert not row.is_active
    assert not UserSession.objects.active().filter(user=user).exists()
    assert user_of(client) is None


@pytest.mark.django_db
def test_relogin_on_the_same_device_keeps_one_row() -> None:
    user = make_user()
    client = Client()
    login(client)
    row = row_of(client)
    login(client)  # same user again: Django keeps the session (and its key)

    assert list(UserSession.objects.filter(user=user)) == [row_of(client)]
    assert row_of(client).is_active
    assert row_of(client).pk == row.pk
    assert user_of(client) == "alice"


@pytest.mark.django_db
def test_other_user_logging_in_on_the_device_ends_the_first_row() -> None:
    alice, bob = make_user("alice"), make_user("bob")
    client = Client()
    login(client, "alice")
    alice_row = row_of(client)
    login(client, "bob")

    alice_row.refresh_from_db()
    assert alice_row.ended_at is not None
    assert not UserSession.objects.active().filter(user=alice).exists()
    assert UserSession.objects.active().get(user=bob) == row_of(client)
    assert user_of(client) == "bob"


@pytest.mark.django_db
def test_login_keeps_anonymous_session_data(redis_server: RedisServer) -> None:
    user = make_user()
    client = Client()
    set_values(client, cart="3", theme="dark")
    anonymous_key = session_key(client)
    assert in_redis(redis_server, anonymous_key)

    login(client)
    key = session_key(client)
    assert key != anonymous_key  # cycle_key: no session fixation
    assert get_values(client) == {"cart": "3", "theme": "dark"}
    assert user_of(client) == "alice"
    assert in_redis(redis_server, key)
    assert not in_redis(redis_server, anonymous_key)
    assert UserSession.objects.get(user=user).key_hash == key_hash(key)
    assert not UserSession.objects.filter(key_hash=key_hash(anonymous_key)).exists()


# -- revocation with Redis up -----------------------------------------------------------------


@pytest.mark.django_db
def test_revoking_one_device_logs_out_that_device_only(
    fault_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    user = make_user()
    laptop, phone = Client(), Client()
    login(laptop)
    login(phone)
    assert UserSession.objects.active().filter(user=user).count() == 2
    stolen = captured(laptop)

    row = row_of(laptop)
    assert row.revoke() is True
    assert row.ended_at is not None and row.end_reason == "revoked"
    assert not in_redis(fault_redis, session_key(laptop))
    assert in_redis(fault_redis, session_key(phone))
    assert UserSession.objects.active().filter(user=user).count() == 1

    with caplog.at_level(logging.WARNING, logger="django.security.SuspiciousSession"):
        response = laptop.get("/whoami/")
    assert ok(response) == {"user": None, "degraded": False}
    assert deleted(response, BACKUP_COOKIE)
    assert any(r.name == "django.security.SuspiciousSession" for r in caplog.records)
    assert user_of(phone) == "alice"

    # The captured cookies never work again: not with Redis up...
    assert user_of(replay(stolen)) is None
    assert not in_redis(fault_redis, stolen[settings.SESSION_COOKIE_NAME])
    # ...nor while it is down, when only the backup could vouch for them...
    fault_redis.kill()
    assert whoami(replay(stolen)) == {"user": None, "degraded": True}
    assert whoami(phone) == {"user": "alice", "degraded": True}
    # ...nor after it comes back.
    fault_redis.start()
    wait_cooldown()
    assert whoami(replay(stolen)) == {"user": None, "degraded": False}
    assert user_of(phone) == "alice"
    assert row.revoke() is False  # already ended


@pytest.mark.django_db
def test_revoking_a_queryset_logs_out_everywhere(redis_server: RedisServer) -> None:
    alice, _ = make_user("alice"), make_user("bob")
    devices = [Client() for _ in range(3)]
    for device in devices:
        login(device, "alice")
    bob = Client()
    login(bob, "bob")
    stolen = [captured(device) for device in devices]

    assert UserSession.objects.filter(user=alice).revoke() == 3
    assert not UserSession.objects.active().filter(user=alice).exists()
    assert set(UserSession.objects.filter(user=alice).values_list("end_reason", flat=True)) == {
        "revoked"
    }
    for device, cookies in zip(devices, stolen, strict=True):
        assert user_of(device) is None
        assert user_of(replay(cookies)) is None
        assert not in_redis(redis_server, cookies[settings.SESSION_COOKIE_NAME])
    assert user_of(bob) == "bob"


# -- revocation and logout while Redis is down ------------------------------------------------


@pytest.mark.django_db
def test_revoke_while_redis_is_down_is_purged_on_recovery(fault_redis: RedisServer) -> None:
    make_user()
    laptop, phone = Client(), Client()
    login(laptop)
    login(phone)
    laptop_key, phone_key = session_key(laptop), session_key(phone)
    stolen = captured(laptop)

    fault_redis.pause()
    try:
        # The first request notices the hang and opens the breaker.
        assert whoami(phone) == {"user": "alice", "degraded": True}
        row = row_of(laptop)
        assert row.revoke() is True
        assert row.ended_at is not None and row.end_reason == "revoked"
        assert list(PendingPurge.objects.values_list("key_hash", flat=True)) == [row.key_hash]

        # The revoked device's backup is refused (and deleted); the other device is untouched.
        response = laptop.get("/whoami/")
        assert ok(response) == {"user": None, "degraded": True}
        assert deleted(response, BACKUP_COOKIE)
        assert whoami(replay(stolen)) == {"user": None, "degraded": True}
        assert whoami(phone) == {"user": "alice", "degraded": True}
    finally:
        fault_redis.resume()

    # The hung server kept its copy: only the pending purge removes it.
    assert in_redis(fault_redis, laptop_key)
    recover_through(phone)
    assert whoami(phone) == {"user": "alice", "degraded": False}
    assert not in_redis(fault_redis, laptop_key)
    assert in_redis(fault_redis, phone_key)

    assert user_of(laptop) is None
    assert whoami(replay(stolen)) == {"user": None, "degraded": False}
    assert user_of(phone) == "alice"


@pytest.mark.django_db
def test_logout_while_redis_is_down_refuses_old_cookies(fault_redis: RedisServer) -> None:
    make_user()
    client = Client()
    login(client)
    set_values(client, cart="3")
    key = session_key(client)
    stolen = captured(client)
    row = row_of(client)

    fault_redis.pause()
    try:
        response = client.post("/logout/")
        assert ok(response) == {"ok": True}
        assert deleted(response, settings.SESSION_COOKIE_NAME)
        assert deleted(response, BACKUP_COOKIE)
        row.refresh_from_db()
        assert row.end_reason == "logout" and row.ended_at is not None
        assert PendingPurge.objects.filter(key_hash=row.key_hash).exists()

        attacker = replay(stolen)
        assert whoami(attacker) == {"user": None, "degraded": True}
        assert get_values(replay(stolen)) == {}
        assert user_of(client) is None
    finally:
        fault_redis.resume()

    assert in_redis(fault_redis, key)
    recover_through(replay(stolen))
    assert whoami(replay(stolen)) == {"user": None, "degraded": False}
    assert not in_redis(fault_redis, key)
    assert get_values(replay(stolen)) == {}
    assert user_of(client) is None


@pytest.mark.django_db
def test_revoked_during_outage_by_another_process_is_not_served_from_cache(
    fault_redis: RedisServer,
) -> None:
    make_user()
    laptop, phone = Client(), Client()
    login(laptop)
    login(phone)
    stolen = captured(laptop)

    # "Admin process": it notices the hang, then revokes the laptop; the purge is queued.
    fault_redis.pause()
    try:
        assert whoami(phone) == {"user": "alice", "degraded": True}
        assert row_of(laptop).revoke() is True
        assert PendingPurge.objects.count() == 1
    finally:
        fault_redis.resume()

    # "Web process": a worker whose breaker never opened (the admin process may have
    # exited, or not serve a request for a while). Redis answers, the revoked session's
    # cache copy is still there.
    # Its periodic check (PURGE_CHECK_INTERVAL, here on every load) finds the queued purge.
    reset_breakers()
    assert in_redis(fault_redis, stolen[settings.SESSION_COOKIE_NAME])
    # Once it knows, it stops trusting Redis until the queue is drained (after that
    # request's response), then trusts it again.
    with override_settings(RESILIENT_SESSIONS={"PURGE_CHECK_INTERVAL": 0}):
        assert whoami(replay(stolen)) == {"user": None, "degraded": True}
    assert not PendingPurge.objects.exists()
    assert not in_redis(fault_redis, stolen[settings.SESSION_COOKIE_NAME])
    assert whoami(phone) == {"user": "alice", "degraded": False}
    assert whoami(replay(stolen)) == {"user": None, "degraded": False}


# -- database unavailable during a Redis outage -----------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fail_closed", [True, False], ids=["fail_closed", "fail_open"])
def test_database_unavailable_during_outage(
    fault_redis: RedisServer, caplog: pytest.LogCaptureFixture, fail_closed: bool
) -> None:
    options = {"BREAKER_COOLDOWN": COOLDOWN, "FAIL_CLOSED": fail_closed}
    make_user()
    client = Client()
    with override_settings(RESILIENT_SESSIONS=options):
        login(client)
        set_values(client, cart="3", theme="dark")
        fault_redis.kill()
        with usersession_table_unavailable(), caplog.at_level(logging.WARNING):
            me = whoami(client)
            values = get_values(client)
        assert "Ledger unavailable" in caplog.text
        assert me == {"user": None if fail_closed else "alice", "degraded": True}
        assert values == {"cart": "3", "theme": "dark"}
        # With the database back, the same backup is vouched for again.
        assert whoami(client) == {"user": "alice", "degraded": True}
    assert UserSession.objects.active().count() == 1


@pytest.mark.django_db(transaction=True)
def test_logout_while_database_is_down_fails_visibly_and_changes_nothing(
    redis_server: RedisServer,
) -> None:
    make_user()
    client = Client()
    login(client)
    set_values(client, cart="3")
    key = session_key(client)
    stolen = captured(client)

    with usersession_table_unavailable():
        response = client.post("/logout/", HTTP_ACCEPT="application/json")
    # Not a silent no-op: the user is told, and nothing changed (cookies, Redis, row).
    assert response.status_code == 503
    assert response.json()["error"] == "ledger_unavailable"
    assert response["Retry-After"]
    assert not response.cookies
    assert in_redis(redis_server, key)
    assert user_of(client) == "alice"
    assert UserSession.objects.active().count() == 1

    # With the database back, the same logout works, for good.
    assert ok(client.post("/logout/")) == {"ok": True}
    assert not in_redis(redis_server, key)
    assert user_of(replay(stolen)) is None
    assert not UserSession.objects.active().exists()


# -- clearsessions ----------------------------------------------------------------------------

GROUPS: dict[str, tuple[int, dict[str, timedelta | str | None]]] = {
    # name: (rows, fields relative to now)
    "active": (5, {"expires_at": timedelta(days=1)}),
    "in_grace": (1, {"expires_at": timedelta(seconds=-60)}),
    "expired": (5, {"expires_at": timedelta(days=-1)}),
    "ended_recent": (
        4,
        {"expires_at": timedelta(days=1), "ended_at": timedelta(days=-1), "end_reason": "logout"},
    ),
    "ended_old": (
        3,
        {
            "expires_at": timedelta(days=-20),
            "ended_at": timedelta(days=-31),
            "end_reason": "revoked",
        },
    ),
    "expired_old": (3, {"expires_at": timedelta(days=-40)}),
}


def seed_rows(user: User) -> dict[str, list[str]]:
    """~20 ledger rows in every state clearsessions cares about; key hashes per group."""
    now = timezone.now()
    hashes: dict[str, list[str]] = {}
    for group, (count, fields) in GROUPS.items():
        hashes[group] = []
        for i in range(count):
            digest = key_hash(f"{group}-{i}")
            values: dict[str, Any] = {
                name: now + value if isinstance(value, timedelta) else value
                for name, value in fields.items()
            }
            UserSession.objects.create(key_hash=digest, user=user, **values)
            hashes[group].append(digest)
    return hashes


def ledger_state() -> dict[str, tuple[bool, str]]:
    """key_hash -> (ended, end_reason) for every row left."""
    return {
        digest: (ended_at is not None, reason)
        for digest, ended_at, reason in UserSession.objects.values_list(
            "key_hash", "ended_at", "end_reason"
        )
    }


def expected_state(hashes: dict[str, list[str]]) -> dict[str, tuple[bool, str]]:
    state: dict[str, tuple[bool, str]] = {}
    for digest in hashes["active"] + hashes["in_grace"]:
        state[digest] = (False, "")
    for digest in hashes["expired"]:
        state[digest] = (True, "expired")
    for digest in hashes["ended_recent"]:
        state[digest] = (True, "logout")
    return state  # ended_old and expired_old are deleted


@pytest.mark.django_db
@pytest.mark.parametrize("batch_size", [3, None], ids=["batch_3", "default_batch"])
def test_clearsessions_prunes_the_ledger(redis_server: RedisServer, batch_size: int | None) -> None:
    options: dict[str, Any] = {"BREAKER_COOLDOWN": COOLDOWN}
    if batch_size is not None:
        options["CLEANUP_BATCH_SIZE"] = batch_size
    hashes = seed_rows(make_user())
    assert UserSession.objects.count() == 21
    recent_ended_at = dict(
        UserSession.objects.filter(key_hash__in=hashes["ended_recent"]).values_list(
            "key_hash", "ended_at"
        )
    )
    pending = [key_hash(f"pending-{i}") for i in range(4)]
    survivor = redis_key_for_hash(key_hash("not-pending"))
    with redis_server.client() as raw:
        for digest in pending + hashes["expired"]:
            raw.set(redis_key_for_hash(digest), b"x")
        raw.set(survivor, b"x")
    PendingPurge.objects.bulk_create([PendingPurge(key_hash=d) for d in pending])

    pks = list(UserSession.objects.values_list("pk", flat=True))
    windows = math.ceil((max(pks) - min(pks) + 1) / (batch_size or 5000))
    before = timezone.now()
    with override_settings(RESILIENT_SESSIONS=options), CaptureQueriesContext(connection) as ctx:
        call_command("clearsessions")

    assert ledger_state() == expected_state(hashes)
    expired = UserSession.objects.filter(key_hash__in=hashes["expired"])
    assert all(ended_at >= before for ended_at in expired.values_list("ended_at", flat=True))
    assert (
        dict(
            UserSession.objects.filter(key_hash__in=hashes["ended_recent"]).values_list(
                "key_hash", "ended_at"
            )
        )
        == recent_ended_at
    )
    assert not PendingPurge.objects.exists()
    with redis_server.client() as raw:
        assert not any(has_copy(raw, redis_key_for_hash(d)) for d in pending)
        assert has_copy(raw, survivor)

    # Every row it ended lost its Redis copy too, with a tombstone left behind.
    with redis_server.client() as raw:
        assert all(is_tombstone(raw.get(redis_key_for_hash(d))) for d in hashes["expired"])

    # Batches: per window of CLEANUP_BATCH_SIZE primary keys, one DELETE, one SELECT of
    # the rows to end, and an UPDATE when there are any.
    table = UserSession._meta.db_table
    statements = [q["sql"].lstrip().upper() for q in ctx.captured_queries if table in q["sql"]]
    assert sum(sql.startswith("DELETE") for sql in statements) == windows
    assert 1 <= sum(sql.startswith("UPDATE") for sql in statements) <= windows

    # Nothing left to do: a second run changes nothing.
    with override_settings(RESILIENT_SESSIONS=options):
        call_command("clearsessions")
    assert ledger_state() == expected_state(hashes)


@pytest.mark.django_db
def test_clearsessions_honours_retention_days() -> None:
    user = make_user()
    now = timezone.now()
    rows = {
        "ended_3_days_ago": {"ended_at": now - timedelta(days=3), "end_reason": "logout"},
        "ended_1_day_ago": {"ended_at": now - timedelta(days=1), "end_reason": "logout"},
    }
    for name, fields in rows.items():
        UserSession.objects.create(
            key_hash=key_hash(name), user=user, expires_at=now + timedelta(days=1), **fields
        )
    UserSession.objects.create(
        key_hash=key_hash("expired_3_days_ago"), user=user, expires_at=now - timedelta(days=3)
    )
    with override_settings(RESILIENT_SESSIONS={"ENDED_RETENTION_DAYS": 2}):
        call_command("clearsessions")
    assert ledger_state() == {key_hash("ended_1_day_ago"): (True, "logout")}


@pytest.mark.django_db
def test_clearsessions_keeps_pending_purges_while_redis_is_down(
    fault_redis: RedisServer,
) -> None:
    hashes = seed_rows(make_user())
    pending = [key_hash(f"pending-{i}") for i in range(3)]
    PendingPurge.objects.bulk_create([PendingPurge(key_hash=d) for d in pending])

    fault_redis.kill()
    call_command("clearsessions")  # must not raise
    assert ledger_state() == expected_state(hashes)
    # The queue keeps what it held, and gains nothing: the rows it ended (and those it
    # deleted) were past their expiry and its grace, so their Redis copies have expired
    # as well (an entry per expired row would hold the breakers open after the outage).
    queued = sorted(PendingPurge.objects.values_list("key_hash", flat=True))
    assert queued == sorted(pending)

    fault_redis.start()
    with fault_redis.client() as raw:
        for digest in pending:
            raw.set(redis_key_for_hash(digest), b"x")
    wait_cooldown()
    call_command("clearsessions")
    assert not PendingPurge.objects.exists()
    with fault_redis.client() as raw:
        assert not any(has_copy(raw, redis_key_for_hash(d)) for d in pending)
