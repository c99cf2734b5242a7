"""Adoption attacked: stale logins, replayed and planted keys, garbage in the previous store,
failing stores under the commands, the cost of an unknown key, and the ways a session that
ended could come back.

Real parts throughout: the private redis-server (killed or flushed), the real database
(tables made to vanish), Django's test Client with the full middleware stack.
"""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.core.cache import caches
from django.core.management import CommandError, call_command
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import path
from django.utils import timezone

from django_resilient_sessions import trust
from django_resilient_sessions.models import AdoptedSession, UserSession
from django_resilient_sessions.trust import Backup, Cache, Row, Serve
from tests import adoption_engines
from tests.adoption_seed import make_users, seed_table
from tests.adoption_site import CACHE, DB, SIGNED, previous_site, resilient_site
from tests.faults import LedgerFaults
from tests.redis_server import RedisServer
from tests.testapp import urls as testapp_urls
from tests.web import (
    BACKUP_COOKIE,
    PASSWORD,
    cookie,
    key_hash,
    make_user,
    ok,
    replay,
    table_unavailable,
)

pytestmark = pytest.mark.django_db(transaction=True)

SESSION_COOKIE = "sessionid"
NEW_PASSWORD = "a new password, after a theft"
CACHE_PREFIX = "django.contrib.sessions.cache"
FOREIGN = "tests.adoption_engines"


def state(client: Client) -> dict[str, Any]:
    return ok(client.get("/state/"))


def log_in_on(engine: str, username: str = "alice", **values: str) -> Client:
    client = Client()
    with previous_site(engine):
        if not User.objects.filter(username=username).exists():
            make_user(username)
        assert ok(client.post("/login/", {"username": username, "password": PASSWORD})) == {
            "ok": True
        }
        if values:
            assert ok(client.post("/set/", values))["ok"] is True
    return client


def moved(client: Client) -> Client:
    return replay({name: m.value for name, m in client.cookies.items() if m.value})


def deleted(response: Any, name: str = SESSION_COOKIE) -> bool:
    """Does the response delete the cookie ``name``?"""
    morsel = response.cookies.get(name)
    return morsel is not None and morsel.value == "" and str(morsel["max-age"]) == "0"


# Privilege: a login the old store kept must still be one Django would honour ----------------


@pytest.mark.parametrize("engine", (DB, CACHE, SIGNED))
def test_a_login_from_before_a_password_change_is_not_adopted(engine: str) -> None:
    """The password was changed (say, after the cookie was stolen): the old session's login
    is not taken over, takes no place in the ledger, and evicts nobody under the limit."""
    stale = log_in_on(engine, "alice", cart="3 apples")
    user = User.objects.get(username="alice")
    user.set_password(NEW_PASSWORD)
    user.save()
    with resilient_site(engine, MAX_SESSIONS_PER_USER=1):
        fresh = Client()
        response = fresh.post("/login/", {"username": "alice", "password": NEW_PASSWORD})
        assert ok(response) == {"ok": True}
        assert state(moved(stale)) == {
            "user": None,
            "degraded": False,
            "data": {"cart": "3 apples"},
        }
        assert state(fresh)["user"] == "alice", "the stale session evicted the live one"
    assert UserSession.objects.count() == 1
    assert UserSession.objects.active().get().key_hash == key_hash(cookie(fresh, SESSION_COOKIE))


def test_a_login_hashed_with_a_fallback_secret_key_is_adopted_with_the_current_hash() -> None:
    """``SECRET_KEY_FALLBACKS`` (a rotated key) verifies the old hash, as Django's get_user()
    accepts it; the row and the session then hold the current one."""
    alice = log_in_on(DB, "alice", cart="3 apples")
    with override_settings(SECRET_KEY="a-brand-new-secret-key-" * 3, SECRET_KEY_FALLBACKS=[]):
        current = User.objects.get(username="alice").get_session_auth_hash()
    old_secret = settings.SECRET_KEY
    with (
        override_settings(
            SECRET_KEY="a-brand-new-secret-key-" * 3, SECRET_KEY_FALLBACKS=[old_secret]
        ),
        resilient_site(DB),
    ):
        alice = moved(alice)
        assert state(alice)["user"] == "alice"
        assert state(alice)["user"] == "alice", "Django's get_user() accepts what was adopted"
    assert UserSession.objects.active().get().auth_hash == current


@pytest.mark.parametrize("why", ("inactive", "deleted", "backend removed"))
def test_a_login_django_would_not_honour_is_adopted_without_it(why: str) -> None:
    alice = log_in_on(DB, "alice", cart="3 apples")
    user = User.objects.get(username="alice")
    options: dict[str, Any] = {}
    if why == "inactive":
        user.is_active = False
        user.save()
    elif why == "deleted":
        user.delete()
    else:
        options["AUTHENTICATION_BACKENDS"] = [f"{__name__}.RefusingBackend"]
    with override_settings(**options), resilient_site(DB):
        assert state(moved(alice)) == {
            "user": None,
            "degraded": False,
            "data": {"cart": "3 apples"},
        }
    assert not UserSession.objects.exists()


class RefusingBackend(ModelBackend):
    """A backend of the site's own whose get_user() finds nobody."""

    def get_user(self, user_id: Any) -> Any:
        return None


def adoptsessions(*args: str) -> str:
    out = io.StringIO()
    call_command("adoptsessions", *args, stdout=out)
    return out.getvalue().strip().splitlines()[-1]


def test_bulk_adoption_drops_a_login_from_before_a_password_change() -> None:
    log_in_on(DB, "alice", cart="3 apples")
    log_in_on(DB, "bob", cart="1 pear")
    alice = User.objects.get(username="alice")
    alice.set_password(NEW_PASSWORD)
    alice.save()
    with resilient_site(DB):
        assert adoptsessions("--dry-run").startswith("Sessions to adopt: 2 (1 logged in, 1 anon")
        assert adoptsessions().startswith("Sessions adopted: 2 (1 logged in, 1 anonymous)")
    assert list(UserSession.objects.values_list("user__username", flat=True)) == ["bob"]


def test_bulk_counts_a_login_a_custom_backend_refuses_as_anonymous() -> None:
    log_in_on(DB, "alice", cart="3 apples")
    session = Session.objects.get()
    data = session.get_decoded() | {"_auth_user_backend": f"{__name__}.RefusingBackend"}
    Session.objects.save(session.session_key, data, session.expire_date)
    backends = [f"{__name__}.RefusingBackend", "django.contrib.auth.backends.ModelBackend"]
    with override_settings(AUTHENTICATION_BACKENDS=backends), resilient_site(DB):
        assert adoptsessions("--dry-run").startswith("Sessions to adopt: 1 (0 logged in, 1 anon")
        assert adoptsessions().startswith("Sessions adopted: 1 (0 logged in, 1 anonymous)")
    assert not UserSession.objects.exists()


# A backup cookie that does not open ------------------------------------------------------------


def test_a_backup_cookie_left_by_an_earlier_trial_does_not_cost_the_session() -> None:
    """A canary on this engine, a rollback to Django's db engine, the switch for good: the
    browser still holds the canary's backup cookie, bound to a key it no longer uses.  That
    cookie does not open for the db session's key; it must not stop the adoption."""
    make_user("alice")
    alice = Client()
    with resilient_site(None):  # the canary
        assert ok(alice.post("/login/", {"username": "alice", "password": PASSWORD})) == {
            "ok": True
        }
    with previous_site(DB):  # rolled back: a new key, the backup cookie stays
        alice = moved(alice)
        assert ok(alice.post("/login/", {"username": "alice", "password": PASSWORD})) == {
            "ok": True
        }
        assert ok(alice.post("/set/", {"cart": "3 apples"}))["ok"] is True
        assert cookie(alice, BACKUP_COOKIE)
    stale_backup = cookie(alice, BACKUP_COOKIE)
    with resilient_site(DB):  # for good
        alice = moved(alice)
        assert state(alice) == {"user": "alice", "degraded": False, "data": {"cart": "3 apples"}}
        assert cookie(alice, BACKUP_COOKIE) not in ("", stale_backup), "a fresh backup"
        assert state(alice)["user"] == "alice"
    assert UserSession.objects.active().count() == 2  # the canary's, and the adopted one


def test_the_rules_for_a_backup_that_does_not_open() -> None:
    """Without PREVIOUS_ENGINE nothing changes; with it, the key is asked about as if the
    request had no backup, and adopted only when no row knows it (the cookie is rejected)."""
    invalid = (Cache.ABSENT, Backup.INVALID, False)
    assert trust.decide(*invalid).serve is Serve.NOTHING
    assert trust.decide(*invalid, adoptable=True).ask
    adopt = trust.decide(*invalid, Row.MISSING, adoptable=True)
    assert (adopt.serve, adopt.reject, adopt.keep_cookies) == (Serve.ADOPT, True, False)
    for row in (Row.ACTIVE, Row.ENDED):
        refused = trust.decide(*invalid, row, adoptable=True)
        assert (refused.serve, refused.reject, refused.keep_cookies) == (Serve.NOTHING, True, False)
    unreadable = trust.decide(*invalid, Row.UNREADABLE, adoptable=True)
    assert (unreadable.serve, unreadable.keep_cookies) == (Serve.NOTHING, True)
    down = trust.decide(Cache.UNREACHABLE, Backup.INVALID, False, Row.MISSING, adoptable=True)
    assert (down.serve, down.keep_cookies) == (Serve.ADOPT, True)


# A failed response -----------------------------------------------------------------------------


def broken(request: HttpRequest) -> HttpResponse:
    """A view with a bug, after it read the session."""
    request.session.get("cart")
    raise RuntimeError("a bug in a view")


urlpatterns = [path("broken/", broken), *testapp_urls.urlpatterns]


@pytest.mark.parametrize("engine", (DB, SIGNED))
def test_an_adopting_request_that_fails_does_not_cost_the_session(engine: str) -> None:
    """The first request after the switch meets a bug (HTTP 500: nothing is saved, as in
    Django).  A signed cookie was adopted under a new key all the same, and its old value
    is refused from now on: the new key must reach the browser."""
    alice = log_in_on(engine, "alice", cart="3 apples")
    with resilient_site(engine), override_settings(ROOT_URLCONF=__name__):
        alice = moved(alice)
        alice.raise_request_exception = False
        assert alice.get("/broken/").status_code == 500
        assert state(alice) == {"user": "alice", "degraded": False, "data": {"cart": "3 apples"}}
    assert UserSession.objects.active().count() == 1


# Garbage in the previous store ----------------------------------------------------------------


@pytest.mark.parametrize("expiry", ("not a date", "2030-01-01T00:00:00", [1, 2], float("inf")))
def test_an_unreadable_set_expiry_in_the_old_store_is_dropped_not_a_500(expiry: Any) -> None:
    key = "k" * 32
    caches["default"].set(CACHE_PREFIX + key, {"cart": "2 pears", "_session_expiry": expiry})
    with resilient_site(CACHE):
        client = replay({SESSION_COOKIE: key})
        assert state(client) == {"user": None, "degraded": False, "data": {"cart": "2 pears"}}
        assert ok(client.post("/set/", {"cart": "3 pears"}))["ok"] is True
        assert state(client)["data"] == {"cart": "3 pears"}


@pytest.mark.parametrize("answer", (["a", "list"], "a string", 42, RuntimeError("its bug")))
def test_a_foreign_previous_engine_answering_garbage_is_not_a_500(answer: Any) -> None:
    adoption_engines.SessionStore.answer = answer
    try:
        with resilient_site(FOREIGN):
            client = replay({SESSION_COOKIE: "f" * 32})
            assert state(client) == {"user": None, "degraded": False, "data": {}}
    finally:
        adoption_engines.SessionStore.answer = None
    assert not AdoptedSession.objects.exists()


# The commands, when a store fails ----------------------------------------------------------


def command_error(name: str, *args: str) -> str:
    with pytest.raises(CommandError) as failed:
        call_command(name, *args, stdout=io.StringIO(), stderr=io.StringIO())
    return str(failed.value)


def test_adoptsessions_stops_with_a_message_when_a_store_fails(fault_redis: RedisServer) -> None:
    log_in_on(DB, "alice", cart="3 apples")
    with resilient_site(DB):
        for table in (AdoptedSession, Session, UserSession):
            with table_unavailable(table):
                assert command_error("adoptsessions").startswith("Stopped: ")
        assert adoptsessions().startswith("Sessions adopted: 1 (1 logged in")
    log_in_on(CACHE, "bob", cart="1 pear")
    fault_redis.kill()
    with resilient_site(CACHE):
        assert command_error("adoptsessions").startswith("Stopped: ")
        assert command_error("adoptsessions", "--dry-run").startswith("Stopped: ")


def test_exportsessions_stops_with_a_message_when_a_store_fails(fault_redis: RedisServer) -> None:
    with resilient_site(None, EXPORT_TO=DB), table_unavailable(Session):
        assert command_error("exportsessions", "--to", DB).startswith("Stopped: ")
    fault_redis.kill()
    with resilient_site(None, EXPORT_TO=CACHE):
        assert command_error("exportsessions", "--to", CACHE).startswith("Stopped: ")


@pytest.mark.parametrize("engine", ("no.such.engine", SIGNED))
def test_exportsessions_refuses_an_unusable_engine_even_without_system_checks(engine: str) -> None:
    """call_command() skips the system checks (E014): the command still refuses, rather
    than telling the operator to switch to an engine that cannot hold the sessions."""
    with resilient_site(None, EXPORT_TO=engine):
        assert "EXPORT_TO" in command_error("exportsessions", "--to", engine)


# The cost of an unknown key -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "queries"), ((None, 1), (DB, 3), (CACHE, 2), (SIGNED, 2), (FOREIGN, 2))
)
def test_what_an_unknown_key_costs(engine: str | None, queries: int) -> None:
    """A random key (what anyone can send at will): the ledger's SELECT, then, with
    PREVIOUS_ENGINE, the old store's (for a table) and the AdoptedSession record's.  Never a
    write, never a cookie; docs/switching.md gives these figures."""
    with resilient_site(engine):
        key = "q" * 32 if engine != SIGNED else "forged:value:signature"
        client = replay({SESSION_COOKIE: key})
        with CaptureQueriesContext(connection) as captured:
            response = client.get("/state/")
        assert response.json() == {"user": None, "degraded": False, "data": {}}
        sql = [q["sql"] for q in captured.captured_queries]
        assert all(s.startswith("SELECT") for s in sql), sql
        assert len(sql) == queries, sql
        assert deleted(response), "the unknown key's cookie is deleted, as Django does"


def test_a_key_adopted_long_ago_that_serves_nothing_is_forgotten(
    redis_server: RedisServer,
) -> None:
    """An adopted anonymous session whose Redis copy is gone (a flush, an eviction) and
    which has no backup: its cookie was kept for ever, each request paying the adoption
    look-ups again.  Past the race window it is an unknown key like any other."""
    client = Client()
    with previous_site(DB):
        assert ok(client.post("/set/", {"cart": "2 pears"}))["ok"] is True
    key = cookie(client, SESSION_COOKIE)
    with resilient_site(DB):
        assert state(replay({SESSION_COOKIE: key}))["data"] == {"cart": "2 pears"}
        redis_server.flushall()
        response = replay({SESSION_COOKIE: key}).get("/state/")
        assert response.json()["data"] == {}
        assert SESSION_COOKIE not in response.cookies, "just adopted: maybe a race, kept"
        AdoptedSession.objects.update(adopted_at=timezone.now() - timedelta(minutes=5))
        response = replay({SESSION_COOKIE: key}).get("/state/")
        assert response.json()["data"] == {}
        assert deleted(response)


def test_an_adopted_signed_cookie_replayed_later_is_deleted() -> None:
    alice = log_in_on(SIGNED, "alice", cart="3 apples")
    old = {SESSION_COOKIE: cookie(alice, SESSION_COOKIE)}
    with resilient_site(SIGNED):
        assert state(moved(alice))["user"] == "alice"
        response = replay(old).get("/state/")
        assert response.json()["user"] is None
        assert SESSION_COOKIE not in response.cookies, "just adopted: maybe a race, kept"
        AdoptedSession.objects.update(adopted_at=timezone.now() - timedelta(minutes=5))
        response = replay(old).get("/state/")
        assert response.json()["user"] is None
        assert deleted(response)
    assert UserSession.objects.count() == 1


# Resurrection --------------------------------------------------------------------------------


def test_an_adopted_session_the_old_store_kept_stays_ended(redis_server: RedisServer) -> None:
    """The old store's DELETE failed at adoption, so it still has the session; it was logged
    out since, Redis lost the tombstone and clearsessions deleted the ended row: the
    AdoptedSession record still refuses it (those records are never cleaned up)."""
    alice = log_in_on(DB, "alice", cart="3 apples")
    key = cookie(alice, SESSION_COOKIE)
    with resilient_site(DB):
        with LedgerFaults(tables=["django_session"]) as ledger:
            fault = ledger.fail_when(lambda sql, params: sql.startswith("DELETE"))
            assert state(moved(alice))["user"] == "alice"
        assert fault.fired and Session.objects.filter(session_key=key).exists()
        assert ok(moved(alice).post("/logout/")) == {"ok": True}
        redis_server.flushall()
        UserSession.objects.all().delete()
        assert state(replay({SESSION_COOKIE: key})) == {"user": None, "degraded": False, "data": {}}


def test_an_earlier_value_of_an_adopted_signed_cookie_cannot_log_in_after_logout() -> None:
    client = Client()
    with previous_site(SIGNED):
        make_user("alice")
        assert ok(client.post("/login/", {"username": "alice", "password": PASSWORD})) == {
            "ok": True
        }
        earlier = cookie(client, SESSION_COOKIE)
        assert ok(client.post("/set/", {"cart": "3 apples"}))["ok"] is True
    assert cookie(client, SESSION_COOKIE) != earlier
    with resilient_site(SIGNED):
        alice = moved(client)
        assert state(alice)["user"] == "alice"
        assert ok(alice.post("/logout/")) == {"ok": True}
        assert state(replay({SESSION_COOKIE: earlier}))["user"] is None


def test_a_logout_on_the_stock_engine_is_not_undone_by_switching_back_again() -> None:
    with resilient_site(None, EXPORT_TO=DB):
        alice = Client()
        make_user("alice")
        assert ok(alice.post("/login/", {"username": "alice", "password": PASSWORD})) == {
            "ok": True
        }
        assert ok(alice.post("/set/", {"cart": "3 apples"}))["ok"] is True
        stolen = {SESSION_COOKIE: cookie(alice, SESSION_COOKIE)}
    with previous_site(DB):  # back on Django's db engine: the mirror serves the session
        alice = moved(alice)
        assert state(alice)["user"] == "alice"
        assert ok(alice.post("/logout/")) == {"ok": True}
        assert not Session.objects.exists()
    with resilient_site(DB):  # and forward again
        assert state(replay(stolen))["user"] is None


def test_revoking_a_users_sessions_reaches_those_not_adopted_yet() -> None:
    make_user("alice")
    laptop, stolen = Client(), Client()
    with previous_site(DB):
        for client in (laptop, stolen):
            assert ok(client.post("/login/", {"username": "alice", "password": PASSWORD})) == {
                "ok": True
            }
    with resilient_site(DB):
        laptop = moved(laptop)
        assert state(laptop)["user"] == "alice"
        call_command("revokesessions", "alice", stdout=io.StringIO())
        assert state(laptop)["user"] is None
        assert state(moved(stolen))["user"] is None


def test_adoptsessions_stopped_between_its_commit_and_the_old_stores_delete_resumes() -> None:
    """The batch is adopted, then the old store's DELETE fails: the run stops with a
    message; --dry-run then counts them as already adopted, and the next run removes them
    from the old store without adopting anything twice."""
    users = make_users(4)
    seed_table(30, users)
    with resilient_site(DB):
        with LedgerFaults(tables=["django_session"]) as ledger:
            fault = ledger.fail_when(lambda sql, params: sql.startswith("DELETE"))
            assert command_error("adoptsessions", "--batch-size", "10").startswith("Stopped: ")
        assert fault.fired
        assert AdoptedSession.objects.count() == 10 and Session.objects.count() == 30
        assert adoptsessions("--dry-run").endswith(
            "30 live, 0 expired or empty, 10 already adopted."
        )
        assert adoptsessions().startswith("Sessions adopted: 20 (")
        assert adoptsessions().startswith("Sessions adopted: 0 (0 logged in, 0 anonymous); 0 live")
    assert AdoptedSession.objects.count() == 30 and not Session.objects.exists()
    assert UserSession.objects.count() == 15


def test_an_adopted_signed_cookie_replayed_with_redis_or_the_database_down(
    fault_redis: RedisServer,
) -> None:
    alice = log_in_on(SIGNED, "alice", cart="3 apples")
    old = {SESSION_COOKIE: cookie(alice, SESSION_COOKIE)}
    with resilient_site(SIGNED):
        assert state(moved(alice))["user"] == "alice"
        with table_unavailable(UserSession):
            assert state(replay(old)) == {"user": None, "degraded": False, "data": {}}
        fault_redis.kill()
        assert state(replay(old)) == {"user": None, "degraded": True, "data": {}}
    assert AdoptedSession.objects.count() == 1 and UserSession.objects.count() == 1
