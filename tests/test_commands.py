"""The management commands: ``sessionstats``, ``revokesessions`` and ``clearsessions``.

Sessions are made by real logins through the test app (so rows, Redis copies and backup
cookies are the engine's own) or, for volume, by ``bulk_create`` of ledger rows.  Covered:

- ``sessionstats`` text and ``--json``: active sessions and users, average and maximum
  per user, sessions by device type, pending purges, breaker state and Redis round trip;
  ended and expired rows are not counted; with Redis killed the cache is reported
  unreachable with the breaker open, pending purges are counted, and the command still
  succeeds;
- ``revokesessions``: every session by default (other users untouched, Redis copies
  gone, devices logged out), ``--except-newest`` keeps the most recently *active*
  session, ``--reason`` is recorded, an unknown user is a ``CommandError`` (exit code 1)
  and nothing is revoked, bad arguments exit with 2;
- ``clearsessions`` with ``CLEANUP_BATCH_SIZE=300`` over ~2,000 expired rows: every row
  marked expired, rows ended past retention deleted, recent and active rows kept, the
  summary line at verbosity 1, one progress line per batch at 2, silence at 0, and
  purges queued during an outage finished once Redis answers.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError
from django.test import Client, override_settings
from django.utils import timezone

from django_resilient_sessions.cachecopy import SessionCache, hash_key
from django_resilient_sessions.exceptions import CacheUnavailable
from django_resilient_sessions.models import PendingPurge, UserSession
from tests.redis_server import RedisServer
from tests.web import has_copy, redis_key_for_hash

PASSWORD = "correct horse battery staple"
SESSION_COOKIE = "sessionid"
COOLDOWN = 0.2
BASE_OPTIONS: dict[str, Any] = {"BREAKER_COOLDOWN": COOLDOWN}

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)


# Helpers ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def short_cooldown() -> Iterator[None]:
    with override_settings(RESILIENT_SESSIONS=BASE_OPTIONS):
        yield


def make_user(username: str) -> AbstractBaseUser:
    user: AbstractBaseUser = get_user_model().objects.create_user(username, password=PASSWORD)
    return user


def log_in(username: str, agent: str = CHROME_WINDOWS) -> tuple[Client, str]:
    client = Client()
    response = client.post(
        "/login/", {"username": username, "password": PASSWORD}, headers={"user-agent": agent}
    )
    assert response.status_code == 200, response.content
    return client, hash_key(client.cookies[SESSION_COOKIE].value)


def whoami(client: Client) -> str | None:
    response = client.get("/whoami/")
    assert response.status_code == 200
    user: str | None = response.json()["user"]
    return user


def run(*args: Any, **options: Any) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def redis_key(key_hash: str) -> str:
    return redis_key_for_hash(key_hash)


def in_redis(server: RedisServer, key_hash: str) -> bool:
    with server.client() as raw:
        return has_copy(raw, redis_key(key_hash))


def reasons(*key_hashes: str) -> list[str]:
    by_hash = dict(
        UserSession.objects.filter(key_hash__in=key_hashes).values_list("key_hash", "end_reason")
    )
    return [by_hash[h] for h in key_hashes]


def set_last_activity(key_hash: str, minutes_ago: int) -> None:
    UserSession.objects.filter(key_hash=key_hash).update(
        last_activity=timezone.now() - timedelta(minutes=minutes_ago)
    )


def a_mix_of_sessions() -> dict[str, str]:
    """alice on a phone and a PC, bob on a PC; carol logged out, dave's login expired."""
    for name in ("alice", "bob", "carol", "dave"):
        make_user(name)
    _, alice_phone = log_in("alice", IPHONE)
    _, alice_pc = log_in("alice")
    _, bob_pc = log_in("bob")
    carol, _ = log_in("carol", IPHONE)
    assert carol.post("/logout/").status_code == 200
    _, dave = log_in("dave", IPHONE)
    UserSession.objects.filter(key_hash=dave).update(
        expires_at=timezone.now() - UserSession.grace() - timedelta(seconds=1)
    )
    return {"alice_phone": alice_phone, "alice_pc": alice_pc, "bob_pc": bob_pc}


# sessionstats -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_sessionstats_json() -> None:
    a_mix_of_sessions()
    stats = json.loads(run("sessionstats", "--json"))
    assert stats["active_sessions"] == 3
    assert stats["active_users"] == 2
    assert stats["sessions_per_user"] == {"average": 1.5, "maximum": 2}
    assert stats["by_device"] == {"desktop": 2, "mobile": 1}
    assert stats["pending_purges"] == 0
    cache = stats["cache"]
    assert cache["alias"] == settings.SESSION_CACHE_ALIAS
    assert cache["breaker"] == "closed"
    assert cache["reachable"] is True
    assert isinstance(cache["round_trip_ms"], float)
    # A real PING was timed (the figure is reported, never bounded): the slowest node's,
    # the only one here.
    assert cache["round_trip_ms"] > 0
    assert [node["round_trip_ms"] for node in cache["nodes"]] == [cache["round_trip_ms"]]


@pytest.mark.django_db
def test_sessionstats_text() -> None:
    a_mix_of_sessions()
    lines = run("sessionstats").splitlines()
    assert lines[:5] == [
        "Active sessions:   3",
        "Active users:      2",
        "Sessions per user: 1.5 on average, 2 at most",
        "By device:         desktop 2, mobile 1",
        "Pending purges:    0",
    ]
    assert re.fullmatch(r"Cache 'default': +breaker closed, round trip [0-9.]+ ms", lines[5])
    assert lines[6] == "From backups:      0 session loads (all processes) in the last 15 min"
    assert len(lines) == 7


@pytest.mark.django_db
def test_sessionstats_with_no_sessions() -> None:
    stats = json.loads(run("sessionstats", "--json"))
    assert stats["active_sessions"] == 0
    assert stats["active_users"] == 0
    assert stats["sessions_per_user"] == {"average": 0.0, "maximum": 0}
    assert stats["by_device"] == {}
    assert "By device:         none" in run("sessionstats")


@pytest.mark.django_db
def test_sessionstats_with_redis_down(fault_redis: RedisServer) -> None:
    hashes = a_mix_of_sessions()
    fault_redis.kill()
    # Revoked during the outage: the Redis copy's deletion is queued.
    assert UserSession.objects.get(key_hash=hashes["bob_pc"]).revoke()
    assert PendingPurge.objects.count() == 1

    stats = json.loads(run("sessionstats", "--json"))  # no exception: exit status 0
    assert stats["active_sessions"] == 2
    assert stats["active_users"] == 1
    assert stats["pending_purges"] == 1
    assert stats["cache"]["reachable"] is False
    assert stats["cache"]["round_trip_ms"] is None
    assert stats["cache"]["breaker"] == "open"

    text = run("sessionstats")
    assert "Pending purges:    1" in text
    assert re.search(r"breaker open, round trip unreachable$", text.strip(), re.MULTILINE)


# revokesessions -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_revokesessions_all_by_default(redis_server: RedisServer) -> None:
    make_user("alice")
    make_user("bob")
    alice = [log_in("alice") for _ in range(3)]
    bob_client, bob_hash = log_in("bob")

    out = run("revokesessions", "alice")
    assert out.splitlines() == ["alice: 3 session(s) revoked", "3 session(s) revoked in all."]
    assert reasons(*(h for _, h in alice)) == ["revoked"] * 3
    assert [whoami(c) for c, _ in alice] == [None, None, None]
    assert not any(in_redis(redis_server, h) for _, h in alice)
    assert whoami(bob_client) == "bob"
    assert in_redis(redis_server, bob_hash)

    # Nothing left to revoke is not an error.
    assert run("revokesessions", "alice", "--all").splitlines()[0] == "alice: 0 session(s) revoked"


@pytest.mark.django_db
def test_revokesessions_except_newest_keeps_the_most_recently_active() -> None:
    make_user("alice")
    make_user("bob")
    first, second, third = log_in("alice"), log_in("alice"), log_in("alice")
    bob = [log_in("bob"), log_in("bob")]
    # The first login is the one in use; the last one has been idle for an hour.
    set_last_activity(first[1], 1)
    set_last_activity(second[1], 30)
    set_last_activity(third[1], 60)

    out = run("revokesessions", "alice", "bob", "--except-newest", "--reason", "password_change")
    assert out.splitlines() == [
        "alice: 2 session(s) revoked",
        "bob: 1 session(s) revoked",
        "3 session(s) revoked in all.",
    ]
    assert reasons(first[1], second[1], third[1]) == ["", "password_change", "password_change"]
    assert [whoami(c) for c, _ in (first, second, third)] == ["alice", None, None]
    assert sorted(reasons(*(h for _, h in bob))) == ["", "password_change"]
    assert sum(whoami(c) == "bob" for c, _ in bob) == 1


@pytest.mark.django_db
def test_revokesessions_unknown_user_revokes_nothing() -> None:
    make_user("alice")
    client, key_hash = log_in("alice")

    with pytest.raises(CommandError, match="nosuchuser") as raised:
        run("revokesessions", "alice", "nosuchuser")
    assert raised.value.returncode == 1
    assert reasons(key_hash) == [""]
    assert whoami(client) == "alice"


@pytest.mark.django_db(transaction=True)
def test_revokesessions_exit_status_from_the_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_user("alice")
    client, key_hash = log_in("alice")
    command = load_command_class("django_resilient_sessions", "revokesessions")

    with pytest.raises(SystemExit) as exited:
        command.run_from_argv(["manage.py", "revokesessions", "alice", "nosuchuser"])
    assert exited.value.code == 1
    assert "Unknown user(s): nosuchuser" in capsys.readouterr().err
    assert reasons(key_hash) == [""]
    assert whoami(client) == "alice"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "argv",
    [
        ["alice", "--reason", "bored"],
        ["alice", "--all", "--except-newest"],
        [],
    ],
    ids=["bad-reason", "exclusive-options", "no-user"],
)
def test_revokesessions_bad_arguments_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    make_user("alice")
    client, key_hash = log_in("alice")
    command = load_command_class("django_resilient_sessions", "revokesessions")

    with pytest.raises(SystemExit) as exited:
        command.run_from_argv(["manage.py", "revokesessions", *argv])
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err
    assert reasons(key_hash) == [""]
    assert whoami(client) == "alice"


# clearsessions ------------------------------------------------------------------------------

EXPIRED = 2_000
OLD_ENDED = 250
BATCH = 300


def fill_ledger() -> dict[str, list[int]]:
    """Rows in every state clearsessions tells apart; returns their primary keys."""
    users = [make_user(f"user{i}") for i in range(4)]
    now = timezone.now()
    counter = iter(range(10**6))

    def rows(count: int, **fields: Any) -> list[int]:
        made = UserSession.objects.bulk_create(
            [
                UserSession(
                    key_hash=f"{next(counter):064x}",
                    user=users[i % len(users)],
                    created_at=now - timedelta(days=2),
                    last_activity=now - timedelta(days=2),
                    **fields,
                )
                for i in range(count)
            ]
        )
        return sorted(
            UserSession.objects.filter(key_hash__in=[r.key_hash for r in made]).values_list(
                "pk", flat=True
            )
        )

    return {
        "expired": rows(EXPIRED, expires_at=now - timedelta(days=1)),
        "old_ended": rows(
            OLD_ENDED,
            expires_at=now - timedelta(days=35),
            ended_at=now - timedelta(days=40),
            end_reason="logout",
        ),
        "recently_ended": rows(
            5,
            expires_at=now + timedelta(days=1),
            ended_at=now - timedelta(days=1),
            end_reason="revoked",
        ),
        # Past expiry by less than the activity interval: within the grace period.
        "in_grace": rows(5, expires_at=now - timedelta(seconds=10)),
        "active": rows(5, expires_at=now + timedelta(days=1)),
    }


@pytest.mark.django_db
def test_clearsessions_in_batches() -> None:
    pks = fill_ledger()
    with override_settings(RESILIENT_SESSIONS={**BASE_OPTIONS, "CLEANUP_BATCH_SIZE": BATCH}):
        out = run("clearsessions", verbosity=2)
    lines = out.splitlines()
    progress = [line for line in lines if line.startswith("  ... ")]
    summary = [line for line in lines if not line.startswith("  ... ")]

    assert summary == [
        f"Sessions: {EXPIRED} marked expired, {OLD_ENDED} old rows deleted, "
        "0 cache purges finished."
    ]
    # One progress line per window of BATCH primary keys, with running totals.
    every_pk = [pk for group in pks.values() for pk in group]
    assert len(progress) == math.ceil((max(every_pk) - min(every_pk) + 1) / BATCH)
    assert progress[-1] == f"  ... {EXPIRED} marked expired, {OLD_ENDED} deleted"
    totals = [tuple(int(n) for n in re.findall(r"\d+", line)) for line in progress]
    assert totals == sorted(totals)

    expired = UserSession.objects.filter(pk__in=pks["expired"])
    assert expired.count() == EXPIRED
    assert expired.filter(end_reason="expired", ended_at__isnull=False).count() == EXPIRED
    assert not UserSession.objects.filter(pk__in=pks["old_ended"]).exists()
    kept = UserSession.objects.filter(pk__in=pks["recently_ended"])
    assert list(kept.values_list("end_reason", flat=True)) == ["revoked"] * 5
    assert UserSession.objects.filter(pk__in=pks["in_grace"], ended_at=None).count() == 5
    assert UserSession.objects.filter(pk__in=pks["active"], ended_at=None).count() == 5

    # Nothing left to do the second time.
    again = run("clearsessions", verbosity=1)
    assert again.splitlines() == [
        "Sessions: 0 marked expired, 0 old rows deleted, 0 cache purges finished."
    ]


@pytest.mark.django_db
def test_clearsessions_verbosity() -> None:
    pks = fill_ledger()
    with override_settings(RESILIENT_SESSIONS={**BASE_OPTIONS, "CLEANUP_BATCH_SIZE": BATCH}):
        quiet = run("clearsessions", verbosity=0)
    assert quiet == ""
    assert UserSession.objects.filter(pk__in=pks["expired"], end_reason="expired").count() == (
        EXPIRED
    )
    with override_settings(RESILIENT_SESSIONS={**BASE_OPTIONS, "CLEANUP_BATCH_SIZE": BATCH}):
        normal = run("clearsessions")  # verbosity 1
    assert normal.splitlines() == [
        "Sessions: 0 marked expired, 0 old rows deleted, 0 cache purges finished."
    ]


@pytest.mark.django_db
def test_clearsessions_finishes_purges_queued_during_an_outage(fault_redis: RedisServer) -> None:
    make_user("alice")
    client, key_hash = log_in("alice")
    assert in_redis(fault_redis, key_hash)
    cooldown = 0.5

    with override_settings(RESILIENT_SESSIONS={**BASE_OPTIONS, "BREAKER_COOLDOWN": cooldown}):
        fault_redis.pause()
        try:
            # A hung Redis opens the breaker (a harmless read times out). A command sent
            # to the hung server would still run once it resumes, so the revocation has
            # to come while the breaker is open, as it does in a busy process.
            with pytest.raises(CacheUnavailable):
                SessionCache(settings.SESSION_CACHE_ALIAS).read(key_hash)
            assert UserSession.objects.get(key_hash=key_hash).revoke()
        finally:
            fault_redis.resume()
        assert list(PendingPurge.objects.values_list("key_hash", flat=True)) == [key_hash]
        assert in_redis(fault_redis, key_hash)  # the copy outlived the outage

        time.sleep(cooldown + 0.05)  # the breaker lets the next call probe Redis
        out = run("clearsessions")
    assert out.splitlines() == [
        "Sessions: 0 marked expired, 0 old rows deleted, 1 cache purges finished."
    ]
    assert not PendingPurge.objects.exists()
    assert not in_redis(fault_redis, key_hash)
    assert whoami(client) is None
