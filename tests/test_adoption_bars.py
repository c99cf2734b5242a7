"""Adoption bars: ending a user's sessions reaches those still in the previous store.

A revocation of all of a user's sessions, and the end of a session adopted from a signed
cookie, leave a bar (``AdoptionBar``) that refuses the user's sessions of the previous
engine issued before it: lazily (through HTTP) and in bulk (``adoptsessions``).  Real
parts: Django's stock engines on the test database and the private redis-server, the
full middleware stack.
"""

from __future__ import annotations

import io
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.contrib.sessions.models import Session
from django.core import signing
from django.core.management import call_command
from django.core.signing import JSONSerializer
from django.db import connection, connections, transaction
from django.http import HttpRequest
from django.test import Client, override_settings
from django.utils import timezone

from django_resilient_sessions import bars, previous, tracking
from django_resilient_sessions.backends.resilient import SessionStore
from django_resilient_sessions.exceptions import LedgerUnavailable
from django_resilient_sessions.models import AdoptedSession, AdoptionBar, UserSession
from tests.adoption_site import CACHE, DB, SIGNED, previous_site, resilient_site
from tests.web import PASSWORD, cookie, key_hash, make_user, ok, replay, table_unavailable

pytestmark = pytest.mark.django_db(transaction=True)

SESSION_COOKIE = "sessionid"
LIST_URL = "/account/sessions/"


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


def adoptsessions(*args: str) -> str:
    out = io.StringIO()
    call_command("adoptsessions", *args, stdout=out)
    return out.getvalue().strip().splitlines()[-1]


def revoke_all(how: str, laptop: Client) -> None:
    """End alice's sessions but the laptop's, the ways a site does it."""
    alice = User.objects.get(username="alice")
    if how == "revokesessions":
        call_command("revokesessions", "alice", "--except-newest", stdout=io.StringIO())
    elif how == "sign out other devices":
        response = laptop.post(f"{LIST_URL}revoke-others/?format=json")
        assert ok(response) == {"ok": True, "revoked": 0}
    else:
        tracking.end_user_sessions(alice, "revoked", keep=key_hash(cookie(laptop, SESSION_COOKIE)))


# A revocation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ("revokesessions", "sign out other devices", "end_user_sessions"))
@pytest.mark.parametrize("engine", (DB, CACHE))
def test_a_revocation_refuses_the_users_sessions_not_adopted_yet(engine: str, how: str) -> None:
    laptop = log_in_on(engine, "alice", cart="3 apples")
    stolen = log_in_on(engine, "alice", cart="a stolen cart")
    bob = log_in_on(engine, "bob", cart="1 pear")
    stolen_key = cookie(stolen, SESSION_COOKIE)
    with resilient_site(engine):
        laptop = moved(laptop)
        assert state(laptop)["user"] == "alice"
        revoke_all(how, laptop)
        assert state(laptop) == {"user": "alice", "degraded": False, "data": {"cart": "3 apples"}}
        response = moved(stolen).get("/state/")
        assert response.json() == {"user": None, "degraded": False, "data": {}}, (
            "a revoked session is over: its data is not adopted either"
        )
        assert response.cookies[SESSION_COOKIE].value == "", "its cookie is deleted"
        assert state(moved(bob))["user"] == "bob", "another user is not barred"
        assert state(replay({SESSION_COOKIE: stolen_key}))["user"] is None
    assert AdoptedSession.objects.filter(key_hash=key_hash(stolen_key)).exists()
    assert list(AdoptionBar.objects.values_list("user_key", flat=True)) == [
        str(User.objects.get(username="alice").pk)
    ]
    with previous_site(engine):  # gone from the old store
        assert state(replay({SESSION_COOKIE: stolen_key}))["user"] is None
    assert UserSession.objects.active().count() == 2  # the laptop and bob


def test_a_password_change_and_a_deleted_user_bar_too() -> None:
    """Their logins would not be adopted anyway (the hash, the user); the bar refuses
    their data too: a revoked session is over."""
    alice = log_in_on(DB, "alice", cart="3 apples")
    bob = log_in_on(DB, "bob", cart="1 pear")
    with resilient_site(DB):
        request = HttpRequest()
        request.session = SessionStore()
        request.user = AnonymousUser()
        user = User.objects.get(username="alice")
        user.set_password("a new password")
        user.save()
        tracking.end_sessions_after_password_change(request, user)
        User.objects.get(username="bob").delete()
        assert state(moved(alice)) == {"user": None, "degraded": False, "data": {}}
        assert state(moved(bob)) == {"user": None, "degraded": False, "data": {}}
    assert AdoptionBar.objects.count() == 2


def test_without_previous_engine_nothing_is_barred() -> None:
    make_user("alice")
    with resilient_site(None):
        laptop = Client()
        assert ok(laptop.post("/login/", {"username": "alice", "password": PASSWORD}))["ok"]
        call_command("revokesessions", "alice", stdout=io.StringIO())
        assert state(laptop)["user"] is None
    assert not AdoptionBar.objects.exists()


def test_a_bar_that_cannot_be_recorded_fails_the_revocation_visibly() -> None:
    laptop = log_in_on(DB, "alice")
    other = log_in_on(DB, "alice")
    with resilient_site(DB):
        laptop, other = moved(laptop), moved(other)
        assert state(laptop)["user"] == state(other)["user"] == "alice"
        with table_unavailable(AdoptionBar):
            with pytest.raises(LedgerUnavailable):
                call_command("revokesessions", "alice", stdout=io.StringIO())
            refused = laptop.post(f"{LIST_URL}revoke-others/?format=json")
            assert refused.status_code == 503
        assert UserSession.objects.active().count() == 2, "nothing was ended"
        assert state(other)["user"] == "alice"


def test_bulk_adoption_refuses_a_barred_users_sessions() -> None:
    laptop = log_in_on(DB, "alice", cart="3 apples")
    log_in_on(DB, "alice", cart="a stolen cart")
    log_in_on(DB, "bob", cart="1 pear")
    with resilient_site(DB):
        laptop = moved(laptop)
        assert state(laptop)["user"] == "alice"
        call_command("revokesessions", "alice", "--except-newest", stdout=io.StringIO())
        assert adoptsessions("--dry-run") == (
            "Sessions to adopt: 1 (1 logged in, 0 anonymous); 2 live, 0 expired or empty, "
            "0 already adopted; 1 refused (revoked since the switch)."
        )
        assert adoptsessions() == (
            "Sessions adopted: 1 (1 logged in, 0 anonymous); 2 live, 0 expired or empty, "
            "0 already adopted; 1 refused (revoked since the switch)."
        )
        assert adoptsessions().startswith("Sessions adopted: 0 (0 logged in, 0 anonymous); 0 live")
    assert not Session.objects.exists()
    assert AdoptedSession.objects.count() == 3
    active = UserSession.objects.active().values_list("user__username", flat=True)
    assert sorted(active) == ["alice", "bob"]  # the laptop (lazily adopted) and bob


# Signed cookies -------------------------------------------------------------------------------


def signed_value(username: str) -> str:
    client = log_in_on(SIGNED, username)
    return cookie(client, SESSION_COOKIE)


def test_the_signing_time_of_a_signed_cookie_is_read_with_its_signature() -> None:
    before = time.time()
    value = signed_value("alice")
    assert previous.signed_at(value) == pytest.approx(before, abs=2)
    payload, stamp, signature = value.rsplit(":", 2)
    # A changed character early in the signature (the last one carries padding bits).
    forged = signature[:5] + ("B" if signature[5] == "A" else "A") + signature[6:]
    assert previous.signed_at(f"{payload}:{stamp}:{forged}") is None, "forged"
    assert previous.signed_at(f"{payload}:zzzzzz:{signature}") is None, "stamp changed"
    assert previous.signed_at("no signature at all") is None
    with override_settings(SECRET_KEY="another-secret-key-" * 3):
        assert previous.signed_at(value) is None
    with override_settings(
        SECRET_KEY="another-secret-key-" * 3, SECRET_KEY_FALLBACKS=[_secret_key()]
    ):
        assert previous.signed_at(value) == pytest.approx(before, abs=2)


def _secret_key() -> str:
    from django.conf import settings

    return str(settings.SECRET_KEY)


class _SignedEarlier(signing.TimestampSigner):
    """Django's signer, stamping as if it signed ``AGO`` seconds ago."""

    AGO = 10

    def timestamp(self) -> str:
        return signing.b62_encode(int(time.time()) - self.AGO)


def test_a_signed_cookie_signed_after_the_bar_is_adopted() -> None:
    """A bar refuses what was signed before it, not after (a process still on the old
    engine during a rolling deployment signs new cookies)."""
    make_user("alice")
    now = signed_value("alice")
    data = signing.loads(now, salt=previous.SIGNED_SALT, serializer=JSONSerializer)
    before = _SignedEarlier(salt=previous.SIGNED_SALT).sign_object(
        data, serializer=JSONSerializer, compress=True
    )
    with resilient_site(SIGNED):
        tracking.end_user_sessions(User.objects.get(username="alice"), "revoked")
    AdoptionBar.objects.update(since=timezone.now() - timedelta(seconds=_SignedEarlier.AGO / 2))
    with resilient_site(SIGNED):
        assert state(replay({SESSION_COOKIE: before}))["user"] is None
        assert state(replay({SESSION_COOKIE: now}))["user"] == "alice"


def test_every_end_of_a_session_adopted_from_a_signed_cookie_bars_its_earlier_values() -> None:
    """Logout bars (the xfail that was); so do a single revocation and the session limit.
    The trade, documented: the user's other signed cookies signed before then are refused
    too (they log in again); other users are not touched."""
    make_user("alice")
    make_user("bob")
    earlier, other_device, bobs = signed_value("alice"), signed_value("alice"), signed_value("bob")
    later = log_in_on(SIGNED, "alice", cart="3 apples")
    with resilient_site(SIGNED):
        adopted = moved(later)
        assert state(adopted)["user"] == "alice"
        row = UserSession.objects.get()
        assert row.signed_origin
        row.revoke()
    assert AdoptionBar.objects.get().user_key == str(row.user_id)
    with resilient_site(SIGNED):
        assert state(replay({SESSION_COOKIE: earlier}))["user"] is None
        assert state(replay({SESSION_COOKIE: other_device}))["user"] is None
        assert state(replay({SESSION_COOKIE: bobs}))["user"] == "bob"


def test_a_session_limit_eviction_of_a_signed_adoption_bars_too() -> None:
    make_user("alice")
    earlier = signed_value("alice")
    later = log_in_on(SIGNED, "alice")
    with resilient_site(SIGNED, MAX_SESSIONS_PER_USER=1):
        assert state(moved(later))["user"] == "alice"
        fresh = Client()
        assert ok(fresh.post("/login/", {"username": "alice", "password": PASSWORD}))["ok"]
        assert AdoptionBar.objects.count() == 1, "the adopted session was evicted"
        assert state(replay({SESSION_COOKIE: earlier}))["user"] is None
        assert state(fresh)["user"] == "alice"


def test_a_session_adopted_from_a_table_is_no_signed_origin() -> None:
    alice = log_in_on(DB, "alice")
    with resilient_site(DB):
        assert state(moved(alice))["user"] == "alice"
        assert not UserSession.objects.get().signed_origin
        assert ok(moved(alice).post("/logout/")) == {"ok": True}
    assert not AdoptionBar.objects.exists(), "a logout is not a revocation of the user"


# Lifting bars ---------------------------------------------------------------------------------


def clearsessions() -> str:
    out = io.StringIO()
    call_command("clearsessions", stdout=out)
    return out.getvalue().strip()


def test_clearsessions_lifts_the_bars_that_can_refuse_nothing() -> None:
    now = timezone.now()
    AdoptionBar.objects.create(user_key="1", since=now)
    AdoptionBar.objects.create(user_key="2", since=now - timedelta(days=15))
    with resilient_site(DB):
        assert "Adoption bars" not in clearsessions(), "a table's sessions have no issue time"
        assert AdoptionBar.objects.count() == 2
    with resilient_site(SIGNED):
        assert clearsessions().endswith("Adoption bars lifted: 1.")  # SESSION_COOKIE_AGE: 14 d
        assert list(AdoptionBar.objects.values_list("user_key", flat=True)) == ["1"]
    with resilient_site(None):
        assert clearsessions().endswith("Adoption bars lifted: 1.")
    assert not AdoptionBar.objects.exists()


# A revocation and an adoption at once --------------------------------------------------------


def test_an_adoption_during_a_revocation_waits_for_it_and_is_refused() -> None:
    """The revocation holds the user's row while it ends the rows and writes the bar; an
    adoption of that user's session meanwhile waits on that lock (PostgreSQL shows it
    waiting), then finds the bar.  Without the lock it would have committed a login the
    revocation never saw."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no row locks (SELECT ... FOR UPDATE is a no-op)")
    stolen = log_in_on(DB, "alice", cart="a stolen cart")
    alice = User.objects.get(username="alice")
    waited: list[bool] = []
    locked = threading.Event()

    def revocation() -> None:
        try:
            with transaction.atomic():
                bars.lock_users([alice.pk])
                locked.set()
                waited.append(_a_backend_waits_on_a_lock())
                bars.raise_for([str(alice.pk)], timezone.now())
        finally:
            connection.close()

    with resilient_site(DB):
        thread = threading.Thread(target=revocation)
        thread.start()
        assert locked.wait(30)
        answer = state(moved(stolen))
        thread.join()
    assert waited == [True], "the adoption did not wait for the revocation"
    assert answer == {"user": None, "degraded": False, "data": {}}
    assert not UserSession.objects.exists()


def _a_backend_waits_on_a_lock(polls: int = 300) -> bool:
    """Does another backend wait on a lock (``pg_stat_activity``)?  Polled, bounded."""
    with connections["default"].cursor() as cursor:
        for _ in range(polls):
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database() AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0]:
                return True
            time.sleep(0.05)  # (polling, not an assertion)
    return False
