"""``manage.py adoptsessions``: bulk adoption from ``django_session`` and from Django's cache
engine keys in a real Redis, then the same browsers served over HTTP, logged in with their
data. 2,000 sessions here; ``make test-adoption`` runs 100,000 (tests/test_adoption_scale.py).
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.contrib.sessions.models import Session
from django.core.cache import caches
from django.core.management import CommandError, call_command
from django.test import Client

from django_resilient_sessions import health
from django_resilient_sessions.models import AdoptedSession, UserSession
from tests.adoption_seed import CACHE_PREFIX, make_users, seed_cache, seed_table
from tests.adoption_site import CACHE, CACHED_DB, DB, SIGNED, resilient_site
from tests.redis_server import RedisServer
from tests.web import key_hash, ok, redis_key_for_hash

pytestmark = pytest.mark.django_db(transaction=True)

SESSIONS = 2000
EXPIRED = 100


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("adoptsessions", *args, stdout=out)
    return out.getvalue()


def adopt(*args: str) -> str:
    """The command's summary (its last line)."""
    return run(*args).strip().splitlines()[-1]


def served(keys: list[str]) -> list[dict[str, Any]]:
    states = []
    for key in keys:
        client = Client()
        client.cookies["sessionid"] = key
        states.append(ok(client.get("/state/")))
    return states


def check_served(keys: list[str]) -> None:
    """Each sampled browser is who it was, with its cart, served from Redis (not adopted now)."""
    health.reset_counters()
    states = served(keys)
    for i, state in enumerate(states):
        assert state["data"] == {"cart": f"item-{i}"}, state
        assert (state["user"] is None) == (i % 2 == 1), state
    assert health.snapshot()["counters"]["sessions_adopted"] == 0


def redis_entries(server: RedisServer) -> int:
    with server.client() as raw:
        return sum(1 for _ in raw.scan_iter(match="*resilient_sessions:*", count=1000))


@pytest.mark.parametrize("engine", (DB, CACHED_DB))
def test_adoptsessions_from_the_table(engine: str, redis_server: RedisServer) -> None:
    users = make_users(50)
    sample = seed_table(SESSIONS, users, expired=EXPIRED)
    with resilient_site(engine):
        report = adopt("--dry-run", "--batch-size", "300")
        assert report.strip() == (
            f"Sessions to adopt: {SESSIONS} ({SESSIONS // 2} logged in, {SESSIONS // 2} "
            f"anonymous); {SESSIONS} live, {EXPIRED} expired or empty, 0 already adopted."
        )
        assert Session.objects.count() == SESSIONS + EXPIRED and not AdoptedSession.objects.exists()
        report = adopt("--batch-size", "300")
        assert report.strip().startswith(f"Sessions adopted: {SESSIONS} ({SESSIONS // 2} logged in")
        assert Session.objects.count() == EXPIRED, "adopted sessions leave the table"
        assert AdoptedSession.objects.count() == SESSIONS
        rows = UserSession.objects.active()
        assert rows.count() == SESSIONS // 2
        assert set(rows.values_list("device_type", "user_agent", "ip").distinct()) == {
            ("", "", None)
        }
        assert redis_entries(redis_server) == SESSIONS
        # Idempotent: nothing left to adopt.
        assert adopt().strip().startswith("Sessions adopted: 0 (0 logged in, 0 anonymous)")
        check_served(sample[:40])


def test_adoptsessions_from_the_cache_engine(redis_server: RedisServer) -> None:
    users = make_users(50)
    sample = seed_cache(SESSIONS, users)
    cache = caches["default"]
    # Other keys under a longer prefix (cached_db's) are not the cache engine's: left alone.
    cache.set("django.contrib.sessions.cached_db" + "k" * 32, {"x": 1}, 600)
    with resilient_site(CACHE):
        report = adopt("--dry-run", "--batch-size", "250")
        assert f"{SESSIONS} live" in report and f"({SESSIONS // 2} logged in" in report
        assert cache.get(CACHE_PREFIX + sample[0]) is not None
        adopt("--batch-size", "250")
        assert cache.get(CACHE_PREFIX + sample[0]) is None, "adopted sessions leave the cache"
        assert cache.get("django.contrib.sessions.cached_db" + "k" * 32) == {"x": 1}
        assert AdoptedSession.objects.count() == SESSIONS
        assert UserSession.objects.active().count() == SESSIONS // 2
        with redis_server.client() as raw:
            ttl = raw.ttl(redis_key_for_hash(key_hash(sample[0])))
        assert 86000 < ttl <= 86400, "the expiry the cache engine had"
        check_served(sample[:40])


def test_lazily_adopted_sessions_are_skipped_and_leftovers_removed() -> None:
    users = make_users(5)
    sample = seed_table(50, users)
    with resilient_site(DB):
        assert served(sample[:10])[0]["user"] == "user0"  # ten adopted by their requests
        report = adopt()
        assert "Sessions adopted: 40 " in report
        assert AdoptedSession.objects.count() == 50 and not Session.objects.exists()


def test_a_run_stopped_by_redis_resumes(fault_redis: RedisServer) -> None:
    users = make_users(5)
    sample = seed_table(300, users)
    with resilient_site(DB):
        fault_redis.kill()
        with pytest.raises(CommandError, match="run the command again"):
            adopt("--batch-size", "100")
        assert not AdoptedSession.objects.exists() and Session.objects.count() == 300
        fault_redis.start()
        from django_resilient_sessions.breaker import reset_breakers

        reset_breakers()
        assert "Sessions adopted: 300 " in adopt("--batch-size", "100")
        check_served(sample[:10])


def test_signed_cookies_cannot_be_listed() -> None:
    with resilient_site(SIGNED), pytest.raises(CommandError, match="lazy adoption"):
        adopt()


def test_without_previous_engine_the_command_refuses() -> None:
    with resilient_site(None), pytest.raises(CommandError, match="PREVIOUS_ENGINE"):
        adopt()


def test_progress_lines_when_not_a_terminal() -> None:
    users = make_users(2)
    seed_table(30, users)
    with resilient_site(DB):
        out = run("--batch-size", "10")
    lines = out.strip().splitlines()
    assert lines[0].startswith("[") and "adopted" in lines[0], lines
    assert "\r" not in out
    assert lines[-1].startswith("Sessions adopted: 30 ")
