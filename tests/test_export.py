"""The way back: ``EXPORT_TO`` mirrors every session into a stock engine's store under its
key, ``exportsessions --to ENGINE`` says when all are there, and a site switched back to
that engine serves the same cookies, still logged in, with their data.
"""

from __future__ import annotations

import io

import pytest
from django.contrib.sessions.models import Session
from django.core.cache import caches
from django.core.management import CommandError, call_command
from django.test import Client

from django_resilient_sessions.conf import EXPORTED_KEY
from django_resilient_sessions.models import UserSession
from tests.adoption_site import CACHE, DB, SIGNED, previous_site, resilient_site
from tests.redis_server import RedisServer
from tests.web import PASSWORD, cookie, make_user, ok, replay

pytestmark = pytest.mark.django_db(transaction=True)


def state(client: Client) -> dict[str, object]:
    return ok(client.get("/state/"))


def log_in(username: str, **values: str) -> Client:
    client = Client()
    make_user(username)
    assert ok(client.post("/login/", {"username": username, "password": PASSWORD})) == {"ok": True}
    if values:
        assert ok(client.post("/set/", values))["ok"] is True
    return client


def moved(client: Client) -> Client:
    return replay({name: m.value for name, m in client.cookies.items() if m.value})


def export(engine: str, *extra: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("exportsessions", "--to", engine, *extra, stdout=out, stderr=io.StringIO())
    except SystemExit as exit_:
        return int(exit_.code or 0), out.getvalue()
    return 0, out.getvalue()


@pytest.mark.parametrize("engine", (DB, CACHE))
def test_a_site_goes_back_to_a_stock_engine_with_everybody_logged_in(engine: str) -> None:
    with resilient_site(None):  # before EXPORT_TO: sessions that are not mirrored
        alice = log_in("alice", cart="3 apples")
        bob = log_in("bob", cart="1 pear")
    with resilient_site(None, EXPORT_TO=engine):
        alice, bob = moved(alice), moved(bob)
        assert export(engine)[0] == 1, "nobody mirrored yet"
        assert state(alice) == {"user": "alice", "degraded": False, "data": {"cart": "3 apples"}}
        status, text = export(engine)
        assert status == 1 and "mirrored into " + engine + ": 1; not yet: 1." in text, text
        assert ok(bob.post("/set/", {"cart": "2 pears"}))["ok"] is True  # a save mirrors
        status, text = export(engine)
        assert status == 0, text
        assert "Live sessions: 2; mirrored into " + engine + ": 2; not yet: 0." in text
        carol = log_in("carol", step="1")  # a new login is mirrored at once
        assert export(engine)[0] == 0
    with previous_site(engine):  # the switch back
        for client, user, data in (
            (alice, "alice", {"cart": "3 apples"}),
            (bob, "bob", {"cart": "2 pears"}),
            (carol, "carol", {"step": "1"}),
        ):
            again = moved(client)
            assert state(again) == {"user": user, "degraded": None, "data": data}


def test_logout_and_revocation_do_not_survive_the_way_back() -> None:
    with resilient_site(None, EXPORT_TO=DB):
        alice = log_in("alice", cart="3 apples")
        bob = log_in("bob", cart="1 pear")
        stolen_alice = {n: m.value for n, m in alice.cookies.items() if m.value}
        stolen_bob = {n: m.value for n, m in bob.cookies.items() if m.value}
        assert Session.objects.count() == 2
        assert ok(alice.post("/logout/")) == {"ok": True}
        assert Session.objects.count() == 1, "a logout deletes the mirrored copy"
        UserSession.objects.filter(user__username="bob").revoke()
        assert Session.objects.count() == 1, "a revocation has no key: the copy stays..."
        _status, text = export(DB)
        assert "Ended logins removed from " + DB + ": 1." in text, text
        assert not Session.objects.exists(), "...until exportsessions removes it"
    with previous_site(DB):
        assert state(replay(stolen_alice))["user"] is None
        assert state(replay(stolen_bob))["user"] is None


def test_sessions_are_mirrored_during_a_redis_outage(fault_redis: RedisServer) -> None:
    with resilient_site(None, EXPORT_TO=DB):
        alice = log_in("alice", cart="3 apples")
        Session.objects.all().delete()  # as if mirrored before EXPORT_TO
        fault_redis.kill()
        assert ok(alice.post("/set/", {"cart": "4 apples"}))["ok"] is True
        assert state(alice)["degraded"] is True
        assert Session.objects.count() == 1, "a save served from the backup mirrors too"
    with previous_site(DB):
        assert state(moved(alice)) == {
            "user": "alice",
            "degraded": None,
            "data": {"cart": "4 apples"},
        }


def test_exportsessions_refuses_another_engine() -> None:
    with (
        resilient_site(None, EXPORT_TO=DB),
        pytest.raises(CommandError, match="EXPORT_TO") as error,
    ):
        call_command("exportsessions", "--to", CACHE)
    assert error.value.returncode == 2


def test_the_marker_is_not_exported() -> None:
    with resilient_site(None, EXPORT_TO=CACHE):
        alice = log_in("alice", cart="3 apples")
        key = cookie(alice, "sessionid")
    data = caches["default"].get("django.contrib.sessions.cache" + key)
    assert data["cart"] == "3 apples" and EXPORTED_KEY not in data


def test_export_to_signed_cookies_is_a_check_error() -> None:
    from django.core.checks import run_checks

    with resilient_site(None, EXPORT_TO=SIGNED):
        ids = {m.id for m in run_checks()}
    assert "django_resilient_sessions.E014" in ids
