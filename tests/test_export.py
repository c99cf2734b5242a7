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

from django_resilient_sessions.cachecopy import TOMBSTONE
from django_resilient_sessions.conf import EXPORTED_KEY
from django_resilient_sessions.models import UserSession
from tests.adoption_site import CACHE, DB, OURS, SIGNED, previous_site, resilient_site
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


# Coming back: the stock engine's store is the authority ---------------------------------------


def jar(client: Client) -> dict[str, str]:
    return {name: m.value for name, m in client.cookies.items() if m.value}


def leave_and_use_the_stock_engine(*, finish: bool) -> dict[str, dict[str, str]]:
    """Leave for Django's db engine; there, alice logs out, bob changes his cart, carol
    (anonymous) and dave stay as they were.  The cookies each had before leaving."""
    with resilient_site(None, EXPORT_TO=DB):
        clients = {
            "alice": log_in("alice", cart="3 apples"),
            "bob": log_in("bob", cart="1 pear"),
            "carol": Client(),
            "dave": log_in("dave", step="1"),
        }
        assert ok(clients["carol"].post("/set/", {"cart": "a lemon"}))["ok"] is True
        assert export(DB)[0] == 0
    before = {name: jar(client) for name, client in clients.items()}
    with previous_site(DB):
        if finish:
            assert finish_export() == (
                "Ledger rows ended: 3; Redis copies deleted: 4; adoption records forgotten: 0."
            )
        alice = moved(clients["alice"])
        assert state(alice)["user"] == "alice"
        assert ok(alice.post("/logout/")) == {"ok": True}
        bob = moved(clients["bob"])
        assert ok(bob.post("/set/", {"cart": "2 pears"}))["ok"] is True
        assert state(bob) == {"user": "bob", "degraded": None, "data": {"cart": "2 pears"}}
    assert Session.objects.count() == 3
    return before


def finish_export() -> str:
    out = io.StringIO()
    call_command("exportsessions", "--to", DB, "--finish", stdout=out)
    return out.getvalue().splitlines()[0]


@pytest.mark.parametrize("finish", (False, True), ids=("forgotten", "finished"))
def test_coming_back_the_stock_engine_decides_each_session(finish: bool) -> None:
    """With or without ``--finish``: a logout on the stock engine holds (its old cookies,
    backup included, log nobody in), and the sessions still live there are adopted from
    there, with the data they have there, not with what this engine kept."""
    before = leave_and_use_the_stock_engine(finish=finish)
    with resilient_site(DB):
        response = replay(before["alice"]).get("/state/")
        assert response.json() == {"user": None, "degraded": False, "data": {}}
        assert response.cookies["sessionid"].value == "", "the old cookie is deleted"
        bob = replay(before["bob"])
        assert state(bob) == {"user": "bob", "degraded": False, "data": {"cart": "2 pears"}}
        assert state(bob) == {"user": "bob", "degraded": False, "data": {"cart": "2 pears"}}
        carol = replay(before["carol"])
        assert state(carol) == {"user": None, "degraded": False, "data": {"cart": "a lemon"}}
        dave = replay({"sessionid": before["dave"]["sessionid"]})  # no backup cookie
        assert state(dave) == {"user": "dave", "degraded": False, "data": {"step": "1"}}
        assert state(replay(before["alice"]))["user"] is None
    assert not Session.objects.exists(), "adopted, or ended: gone from the stock store"
    active = UserSession.objects.active().values_list("user__username", flat=True)
    assert sorted(active) == ["bob", "dave"]
    alice_row = UserSession.objects.get(user__username="alice")
    assert alice_row.end_reason == "exported"


def test_a_backup_from_before_leaving_does_not_win_over_the_session_handed_back() -> None:
    before = leave_and_use_the_stock_engine(finish=False)
    with resilient_site(DB):
        bob = replay(before["bob"])
        assert state(bob)["data"] == {"cart": "2 pears"}
        again = replay(before["bob"])  # the cookies of before leaving, once more
        response = again.get("/state/")
        assert response.json() == {"user": "bob", "degraded": False, "data": {"cart": "2 pears"}}
        assert cookie(again, "sessionbackup") != before["bob"]["sessionbackup"], "renewed"


def test_coming_back_while_redis_is_down_decides_nothing_yet(fault_redis: RedisServer) -> None:
    from django_resilient_sessions.breaker import reset_breakers

    before = leave_and_use_the_stock_engine(finish=False)
    fault_redis.kill()
    with resilient_site(DB):
        response = replay(before["bob"]).get("/state/")
        assert response.json() == {"user": None, "degraded": True, "data": {}}
        assert "sessionid" not in response.cookies, "kept: decided once Redis answers"
        assert Session.objects.count() == 3
        fault_redis.restart()
        reset_breakers()  # (the cool-down, without waiting for it)
        bob = replay(before["bob"])
        assert state(bob) == {"user": "bob", "degraded": False, "data": {"cart": "2 pears"}}


def test_finish_refuses_while_this_engine_serves_the_sessions() -> None:
    with resilient_site(None, EXPORT_TO=DB):
        alice = log_in("alice", cart="3 apples")
        with pytest.raises(CommandError, match="after the switch") as refused:
            call_command("exportsessions", "--to", DB, "--finish", stdout=io.StringIO())
        assert refused.value.returncode == 2
        assert state(alice)["user"] == "alice"
    with previous_site(DB), pytest.raises(CommandError, match="this engine itself"):
        call_command("exportsessions", "--to", OURS, "--finish", stdout=io.StringIO())
    assert UserSession.objects.active().count() == 1


def test_finish_keeps_the_tombstones_and_can_run_again(redis_server: RedisServer) -> None:
    with resilient_site(None, EXPORT_TO=DB):
        alice = log_in("alice", cart="3 apples")
        bob = log_in("bob", cart="1 pear")
        assert ok(alice.post("/logout/")) == {"ok": True}
    redis = redis_server.client()
    tombstones = [k for k in redis.scan_iter() if redis.get(k) == TOMBSTONE]
    assert len(tombstones) == 1
    with previous_site(DB):
        assert finish_export() == (
            "Ledger rows ended: 1; Redis copies deleted: 1; adoption records forgotten: 0."
        )
        assert finish_export() == (
            "Ledger rows ended: 0; Redis copies deleted: 0; adoption records forgotten: 0."
        )
        assert state(moved(bob))["user"] == "bob", "the stock engine serves its mirror"
    assert list(redis.scan_iter()) == tombstones


def test_two_requests_handing_back_the_same_session_at_once() -> None:
    """The second read the copy from before leaving, then the first handed the session back
    (adopted it and deleted it from the stock store): the second serves what the first
    adopted, and adopts nothing twice."""
    from django_resilient_sessions import handback
    from django_resilient_sessions.backends.resilient import SessionStore

    before = leave_and_use_the_stock_engine(finish=False)
    with resilient_site(DB):
        late = SessionStore(before["bob"]["sessionid"], backup=before["bob"]["sessionbackup"])
        stale = late._cache.read(late.key_hash)
        assert stale.entry is not None and handback.marked(stale.entry.data)
        assert state(replay(before["bob"]))["data"] == {"cart": "2 pears"}  # the first
        data = handback.hand_back(late, stale)
        assert data is not None and data["cart"] == "2 pears"
        assert late.keep_cookie, "the first request's response sets the cookies"
    assert UserSession.objects.filter(user__username="bob").count() == 1
