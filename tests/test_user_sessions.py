"""Per-user sessions: the ``UserSession`` rows, the ledger API and the "your sessions" pages.

Everything is driven through Django's test ``Client`` and the full middleware stack
against the private redis-server of ``tests/conftest.py``.  Covered:

- a login records IP, user agent and the device, browser and OS parsed by ua-parser
  (mobile, desktop, tablet, bot); ``TRACK_IP`` off stores no IP; ``IP_RESOLVER`` is used;
- a request served from Redis runs no query of the engine's (none at all when the view
  does not load the user); once ``ACTIVITY_UPDATE_INTERVAL`` has passed, one request
  writes ``last_activity`` exactly once and the next one is free again;
- ``UserSession.objects.active()``, ``row.revoke()``, ``queryset.revoke()``,
  ``tracking.end_user_sessions(..., keep=...)``, ``end_sessions_after_password_change``
  and deleting a user (Redis copies gone, rows cascade; with Redis down the deletions
  are queued and the devices' backups refused);
- the pages under ``account/sessions/``: login required, own active sessions only with
  one "(this device)", JSON by ``?format=json`` and ``Accept``, revoking one device,
  another user's session (404), the current one (logged out), all others, CSRF enforced,
  and revocation while Redis hangs (the revoked device is out during and after).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_resilient_sessions import tracking
from django_resilient_sessions.backends.resilient import SessionStore
from django_resilient_sessions.cachecopy import hash_key
from django_resilient_sessions.conf import SEEN_AT_KEY
from django_resilient_sessions.devices import describe
from django_resilient_sessions.models import PendingPurge, UserSession
from tests.redis_server import RedisServer
from tests.web import has_copy, redis_key_for_hash

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"
SESSION_COOKIE = "sessionid"
BACKUP_COOKIE = "sessionbackup"
COOLDOWN = 0.2
BASE_OPTIONS: dict[str, Any] = {"BREAKER_COOLDOWN": COOLDOWN}
LIST_URL = "/account/sessions/"
ENGINE_TABLES = "django_resilient_sessions_"  # UserSession, PendingPurge

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def forwarded_ip(request: HttpRequest) -> str | None:
    """An ``IP_RESOLVER``: the first address of ``X-Forwarded-For``."""
    header = request.META.get("HTTP_X_FORWARDED_FOR", "")
    first = header.split(",")[0].strip()
    return first or None


# Helpers ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def short_cooldown() -> Iterator[None]:
    with override_settings(RESILIENT_SESSIONS=BASE_OPTIONS):
        yield


def options(**values: Any) -> override_settings:
    return override_settings(RESILIENT_SESSIONS={**BASE_OPTIONS, **values})


def make_user(username: str = "alice") -> AbstractBaseUser:
    user: AbstractBaseUser = get_user_model().objects.create_user(username, password=PASSWORD)
    return user


def log_in(client: Client, username: str = "alice", **extra: Any) -> str:
    """Log ``client`` in through POST /login/; returns the session's key hash."""
    response = client.post("/login/", {"username": username, "password": PASSWORD}, **extra)
    assert response.status_code == 200, response.content
    assert response.json() == {"ok": True}
    assert BACKUP_COOKIE in response.cookies
    return key_hash(client)


def key_hash(client: Client) -> str:
    return hash_key(client.cookies[SESSION_COOKIE].value)


def whoami(client: Client) -> str | None:
    response = client.get("/whoami/")
    assert response.status_code == 200
    user: str | None = response.json()["user"]
    return user


def redis_key(key_hash: str) -> str:
    return redis_key_for_hash(key_hash)


def in_redis(server: RedisServer, key_hash: str) -> bool:
    with server.client() as raw:
        return has_copy(raw, redis_key(key_hash))


def row(key_hash: str) -> UserSession:
    return UserSession.objects.get(key_hash=key_hash)


def age_last_seen(client: Client, seconds: int) -> None:
    """Move the session's ``_resilient_seen_at`` stamp ``seconds`` into the past.

    A real save through the engine (Redis copy and a new backup cookie for the client),
    with the activity interval raised for that one save so that it does not re-stamp.
    """
    current = dict(settings.RESILIENT_SESSIONS)
    with override_settings(RESILIENT_SESSIONS={**current, "ACTIVITY_UPDATE_INTERVAL": 10**6}):
        store = SessionStore(
            client.cookies[SESSION_COOKIE].value, backup=client.cookies[BACKUP_COOKIE].value
        )
        store[SEEN_AT_KEY] = store[SEEN_AT_KEY] - seconds
        store.save()
    assert store.source == "cache"
    assert store.sealed is not None
    client.cookies[BACKUP_COOKIE] = store.sealed.token


def engine_queries(captured: CaptureQueriesContext) -> list[str]:
    """The captured queries on the package's own tables."""
    return [q["sql"] for q in captured.captured_queries if ENGINE_TABLES in q["sql"]]


def page_token(response: HttpResponse) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', response.content.decode())
    assert match, "the page has no CSRF token in its forms"
    return match.group(1)


def revoke_url(pk: int) -> str:
    return f"{LIST_URL}{pk}/revoke/"


# Rows: what a login records ---------------------------------------------------------------


def test_login_records_ip_agent_and_parsed_device() -> None:
    make_user()
    client = Client()
    h = log_in(client, headers={"user-agent": IPHONE}, REMOTE_ADDR="203.0.113.7")

    saved = row(h)
    expected = describe(IPHONE)
    assert saved.user.get_username() == "alice"
    assert saved.ip == "203.0.113.7"
    assert saved.user_agent == IPHONE
    assert (saved.device_type, saved.browser, saved.os) == (
        expected.type,
        expected.browser,
        expected.os,
    )
    # Stable facts about this agent, whatever the ua-parser release.
    assert saved.device_type == "mobile"
    assert saved.browser.startswith("Mobile Safari")
    assert saved.os.startswith("iOS")
    assert saved.is_active
    assert saved.ended_at is None and saved.end_reason == ""


@pytest.mark.parametrize(
    ("agent", "kind"),
    [(CHROME_WINDOWS, "desktop"), (IPAD, "tablet"), (GOOGLEBOT, "bot"), (IPHONE, "mobile")],
    ids=["chrome-windows", "ipad", "googlebot", "iphone"],
)
def test_device_type_of_common_agents(agent: str, kind: str) -> None:
    make_user()
    h = log_in(Client(), headers={"user-agent": agent})
    saved = row(h)
    assert saved.device_type == kind
    assert saved.browser == describe(agent).browser


def test_describe_facts() -> None:
    assert describe(CHROME_WINDOWS).os.startswith("Windows")
    assert describe(CHROME_WINDOWS).browser.startswith("Chrome")
    assert describe(GOOGLEBOT).browser.startswith("Googlebot")
    assert describe("").type == "other"


def test_track_ip_off_stores_no_ip() -> None:
    make_user()
    with options(TRACK_IP=False):
        h = log_in(Client(), REMOTE_ADDR="203.0.113.7", headers={"user-agent": CHROME_WINDOWS})
    saved = row(h)
    assert saved.ip is None
    assert saved.device_type == "desktop"  # the rest is still recorded


def test_ip_resolver_is_used() -> None:
    make_user()
    resolver = f"{__name__}.forwarded_ip"
    with options(IP_RESOLVER=resolver):
        h = log_in(
            Client(),
            REMOTE_ADDR="10.0.0.1",
            headers={"x-forwarded-for": "198.51.100.23, 10.0.0.1"},
        )
        # No header: the resolver returns None and no IP is stored (not REMOTE_ADDR).
        h2 = log_in(Client(), REMOTE_ADDR="10.0.0.1")
    assert row(h).ip == "198.51.100.23"
    assert row(h2).ip is None


# Queries: the cost of a request -----------------------------------------------------------


def test_request_served_from_cache_runs_no_query() -> None:
    make_user()
    client = Client()
    with options(ACTIVITY_UPDATE_INTERVAL=3600):
        log_in(client)
        # A first load: it also takes the engine's periodic (once a minute per process)
        # check for purges queued elsewhere, if one is due, out of the measured requests.
        assert whoami(client) == "alice"

        with CaptureQueriesContext(connection) as reading:
            response = client.get("/get/")
        assert response.status_code == 200
        assert reading.captured_queries == []

        with CaptureQueriesContext(connection) as writing:
            response = client.post("/set/", {"colour": "green"})
        assert response.status_code == 200
        assert writing.captured_queries == []
        assert client.get("/get/").json() == {"colour": "green"}

        # A view that loads the user: the user query only, nothing of the engine's.
        with CaptureQueriesContext(connection) as user_view:
            assert whoami(client) == "alice"
        assert len(user_view.captured_queries) == 1
        assert engine_queries(user_view) == []


def test_activity_is_written_once_per_interval() -> None:
    make_user()
    client = Client()
    with options(ACTIVITY_UPDATE_INTERVAL=60):
        h = log_in(client)
        long_ago = timezone.now() - timedelta(hours=1)
        UserSession.objects.filter(key_hash=h).update(last_activity=long_ago)
        # A first load: it also takes the engine's periodic (once a minute per process)
        # check for purges queued elsewhere, if one is due, out of the measured requests.
        assert whoami(client) == "alice"

        # Within the interval: nothing is written.
        with CaptureQueriesContext(connection) as quiet:
            assert client.get("/get/").status_code == 200
        assert quiet.captured_queries == []
        assert row(h).last_activity == long_ago

        # The interval has passed since the last recorded activity.
        age_last_seen(client, 61)
        with CaptureQueriesContext(connection) as due:
            assert client.get("/get/").status_code == 200
        updates = engine_queries(due)
        assert len(updates) == 1, updates
        assert updates[0].lstrip().upper().startswith("UPDATE")
        touched = row(h).last_activity
        assert touched > timezone.now() - timedelta(seconds=30)

        # Stamped again: the next requests are free.
        with CaptureQueriesContext(connection) as after:
            assert client.get("/get/").status_code == 200
            assert client.get("/get/").status_code == 200
        assert after.captured_queries == []
        assert row(h).last_activity == touched
        assert whoami(client) == "alice"


# The ledger API -----------------------------------------------------------------------------


def test_active_excludes_ended_and_expired_rows() -> None:
    make_user()
    live, in_grace, ended, expired = (log_in(Client()) for _ in range(4))
    row(ended).revoke()
    now = timezone.now()
    UserSession.objects.filter(key_hash=expired).update(
        expires_at=now - UserSession.grace() - timedelta(seconds=1)
    )
    # Just past its expiry, but within the grace the backup check also allows: still
    # active (the row's expiry is refreshed once per ACTIVITY_UPDATE_INTERVAL).
    UserSession.objects.filter(key_hash=in_grace).update(expires_at=now - timedelta(seconds=1))
    active = set(UserSession.objects.active().values_list("key_hash", flat=True))
    assert active == {live, in_grace}
    assert [r.is_active for r in (row(live), row(in_grace), row(ended), row(expired))] == [
        True,
        True,
        False,
        False,
    ]
    assert not row(expired).is_active
    assert row(expired).ended_at is None  # expired is not ended


def test_row_revoke_ends_one_session(redis_server: RedisServer) -> None:
    make_user()
    first, second = Client(), Client()
    h1, h2 = log_in(first), log_in(second)
    assert in_redis(redis_server, h1)

    target = row(h1)
    assert target.revoke() is True
    assert target.end_reason == "revoked" and target.ended_at is not None  # refreshed
    assert target.revoke() is False  # already ended: nothing to do

    assert not in_redis(redis_server, h1)
    assert in_redis(redis_server, h2)
    assert whoami(first) is None
    assert whoami(second) == "alice"


def test_queryset_revoke_ends_all_selected(redis_server: RedisServer) -> None:
    make_user("alice")
    make_user("bob")
    clients = {name: [Client(), Client()] for name in ("alice", "bob")}
    hashes = {name: [log_in(c, name) for c in cs] for name, cs in clients.items()}

    count = UserSession.objects.active().filter(user__username="alice").revoke("password_change")
    assert count == 2
    assert {row(h).end_reason for h in hashes["alice"]} == {"password_change"}
    assert not any(in_redis(redis_server, h) for h in hashes["alice"])
    assert [whoami(c) for c in clients["alice"]] == [None, None]
    assert [whoami(c) for c in clients["bob"]] == ["bob", "bob"]
    assert UserSession.objects.filter(user__username="alice").revoke() == 0


def test_end_user_sessions_keeps_the_current_device(redis_server: RedisServer) -> None:
    user = make_user()
    this, other1, other2 = Client(), Client(), Client()
    keep, h1, h2 = log_in(this), log_in(other1), log_in(other2)

    assert tracking.end_user_sessions(user, "revoked", keep=keep) == 2
    assert whoami(this) == "alice"
    assert whoami(other1) is None
    assert whoami(other2) is None
    assert row(keep).is_active
    assert {row(h1).end_reason, row(h2).end_reason} == {"revoked"}
    assert in_redis(redis_server, keep)
    assert not in_redis(redis_server, h1) and not in_redis(redis_server, h2)

    # Without keep: everything.
    assert tracking.end_user_sessions(user, "revoked") == 1
    assert whoami(this) is None


def test_end_sessions_after_password_change(redis_server: RedisServer) -> None:
    user = make_user()
    this, other = Client(), Client()
    h_this, h_other = log_in(this), log_in(other)
    old_key = this.cookies[SESSION_COOKIE].value
    old_backup = this.cookies[BACKUP_COOKIE].value

    # The password change view's request, with this client's real session.
    request = RequestFactory().post("/password/")
    request.session = SessionStore(old_key, backup=old_backup)
    request.user = user
    user.set_password("a brand new passphrase")
    user.save()
    assert tracking.end_sessions_after_password_change(request, user) == 1
    request.session.save()  # what the middleware does at the end of that request

    new_key = request.session.session_key
    assert new_key and new_key != old_key  # the key was cycled
    assert request.session.sealed is not None
    this.cookies[SESSION_COOKIE] = new_key
    this.cookies[BACKUP_COOKIE] = request.session.sealed.token

    assert whoami(this) == "alice"
    assert whoami(other) is None
    kept = row(hash_key(new_key))
    assert kept.is_active and kept.pk == UserSession.objects.get(user=user, ended_at=None).pk
    assert not UserSession.objects.filter(key_hash=h_this).exists()  # moved to the new key
    assert row(h_other).end_reason == "password_change"
    assert not in_redis(redis_server, h_other)
    assert not in_redis(redis_server, h_this)

    # The cookies from before the change do not work any more.
    stale = Client()
    stale.cookies[SESSION_COOKIE] = old_key
    stale.cookies[BACKUP_COOKIE] = old_backup
    assert whoami(stale) is None


def test_deleting_a_user_ends_their_sessions(redis_server: RedisServer) -> None:
    alice, _ = make_user("alice"), make_user("bob")
    a1, a2, b = Client(), Client(), Client()
    h1, h2, hb = log_in(a1), log_in(a2), log_in(b, "bob")
    assert in_redis(redis_server, h1) and in_redis(redis_server, h2)

    alice.delete()

    assert not in_redis(redis_server, h1)
    assert not in_redis(redis_server, h2)
    assert in_redis(redis_server, hb)
    assert not UserSession.objects.filter(key_hash__in=[h1, h2]).exists()  # cascaded
    assert UserSession.objects.filter(key_hash=hb, ended_at=None).exists()
    assert whoami(a1) is None
    assert whoami(b) == "bob"


def test_deleting_a_user_while_redis_is_down(fault_redis: RedisServer) -> None:
    alice = make_user()
    phone, pc = Client(), Client()
    h1, h2 = log_in(phone), log_in(pc)

    fault_redis.kill()
    alice.delete()
    assert not UserSession.objects.exists()
    assert set(PendingPurge.objects.values_list("key_hash", flat=True)) == {h1, h2}
    # No row any more: the backups are refused.
    assert whoami(phone) is None
    assert whoami(pc) is None


# The "your sessions" pages -----------------------------------------------------------------


def test_list_requires_login() -> None:
    with override_settings(LOGIN_URL="/login/"):
        response = Client().get(LIST_URL)
        json_response = Client().get(LIST_URL, {"format": "json"})
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={LIST_URL}"
    assert json_response.status_code == 302


def test_list_shows_own_active_sessions_and_marks_this_device() -> None:
    make_user("alice")
    make_user("bob")
    me, my_phone, my_old, bob = Client(), Client(), Client(), Client()
    h_me = log_in(me, headers={"user-agent": CHROME_WINDOWS}, REMOTE_ADDR="192.0.2.1")
    h_phone = log_in(my_phone, headers={"user-agent": IPHONE}, REMOTE_ADDR="192.0.2.2")
    h_old = log_in(my_old)
    h_bob = log_in(bob, "bob", REMOTE_ADDR="192.0.2.99")
    row(h_old).revoke()

    response = me.get(LIST_URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count("(this device)") == 1
    current = re.search(r'<tr class="current">(.*?)</tr>', html, re.S)
    assert current, "no row is marked as the current one"
    assert revoke_url(row(h_me).pk) in current.group(1)
    assert revoke_url(row(h_phone).pk) in html
    assert revoke_url(row(h_old).pk) not in html  # ended: not listed
    assert revoke_url(row(h_bob).pk) not in html  # another user's
    assert "192.0.2.99" not in html
    assert describe(IPHONE).os in html and describe(IPHONE).browser in html
    assert "Sign out all other devices" in html

    # From the phone, the marker moves.
    phone_html = my_phone.get(LIST_URL).content.decode()
    phone_current = re.search(r'<tr class="current">(.*?)</tr>', phone_html, re.S)
    assert phone_current and revoke_url(row(h_phone).pk) in phone_current.group(1)


def test_list_alone_has_no_sign_out_others_button() -> None:
    make_user()
    client = Client()
    log_in(client)
    html = client.get(LIST_URL).content.decode()
    assert html.count("(this device)") == 1
    assert "Sign out all other devices" not in html


@pytest.mark.parametrize("how", ["query", "accept"])
def test_list_as_json(how: str) -> None:
    make_user("alice")
    make_user("bob")
    me, phone, bob = Client(), Client(), Client()
    h_me = log_in(me, headers={"user-agent": CHROME_WINDOWS})
    h_phone = log_in(phone, headers={"user-agent": IPHONE}, REMOTE_ADDR="192.0.2.2")
    log_in(bob, "bob")

    if how == "query":
        response = me.get(LIST_URL, {"format": "json"})
    else:
        response = me.get(LIST_URL, headers={"accept": "application/json"})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    sessions = response.json()["sessions"]
    by_id = {s["id"]: s for s in sessions}
    assert set(by_id) == {row(h_me).pk, row(h_phone).pk}
    assert by_id[row(h_me).pk]["current"] is True
    assert by_id[row(h_phone).pk]["current"] is False
    assert by_id[row(h_me).pk]["device"] == "desktop"
    assert by_id[row(h_phone).pk]["device"] == "mobile"
    assert by_id[row(h_phone).pk]["browser"] == describe(IPHONE).browser
    assert by_id[row(h_phone).pk]["ip"] == "192.0.2.2"


def test_revoke_another_device(redis_server: RedisServer) -> None:
    make_user()
    me, phone = Client(), Client()
    log_in(me)
    h_phone = log_in(phone)
    assert whoami(phone) == "alice"

    response = me.post(revoke_url(row(h_phone).pk))
    assert response.status_code == 302
    assert response["Location"] == LIST_URL
    assert whoami(phone) is None
    assert whoami(me) == "alice"
    assert row(h_phone).end_reason == "revoked"
    assert not in_redis(redis_server, h_phone)
    # The confirmation message is shown on the list.
    assert "The session was signed out." in me.get(LIST_URL).content.decode()


def test_revoke_as_json() -> None:
    make_user()
    me, phone = Client(), Client()
    log_in(me)
    h_phone = log_in(phone)
    response = me.post(revoke_url(row(h_phone).pk), headers={"accept": "application/json"})
    assert response.status_code == 200
    assert response.json() == {"ok": True, "revoked": 1}
    assert whoami(phone) is None


def test_revoke_someone_elses_session_is_404() -> None:
    make_user("alice")
    make_user("bob")
    alice, bob = Client(), Client()
    log_in(alice)
    h_bob = log_in(bob, "bob")

    response = alice.post(revoke_url(row(h_bob).pk))
    assert response.status_code == 404
    assert row(h_bob).is_active
    assert whoami(bob) == "bob"
    # An ended session of one's own cannot be revoked again either.
    assert alice.post(revoke_url(999_999)).status_code == 404


def test_revoke_needs_post() -> None:
    make_user()
    me, phone = Client(), Client()
    log_in(me)
    h_phone = log_in(phone)
    assert me.get(revoke_url(row(h_phone).pk)).status_code == 405
    assert me.get(f"{LIST_URL}revoke-others/").status_code == 405
    assert whoami(phone) == "alice"


def test_revoking_the_current_session_logs_out(redis_server: RedisServer) -> None:
    make_user()
    me, phone = Client(), Client()
    h_me = log_in(me)
    log_in(phone)

    response = me.post(revoke_url(row(h_me).pk), headers={"accept": "application/json"})
    assert response.status_code == 200
    assert response.json() == {"ok": True, "revoked": 1, "logged_out": True}
    assert whoami(me) is None
    assert whoami(phone) == "alice"
    assert row(h_me).end_reason == "logout"
    assert not in_redis(redis_server, h_me)


def test_revoke_others_keeps_this_one(redis_server: RedisServer) -> None:
    make_user("alice")
    make_user("bob")
    me, o1, o2, bob = Client(), Client(), Client(), Client()
    h_me, h1, h2 = log_in(me), log_in(o1), log_in(o2)
    log_in(bob, "bob")

    response = me.post(f"{LIST_URL}revoke-others/?format=json")
    assert response.status_code == 200
    assert response.json() == {"ok": True, "revoked": 2}
    assert whoami(me) == "alice"
    assert whoami(o1) is None and whoami(o2) is None
    assert whoami(bob) == "bob"
    assert row(h_me).is_active
    assert {row(h1).end_reason, row(h2).end_reason} == {"revoked"}
    assert in_redis(redis_server, h_me)

    # The HTML form answers with a redirect and a message.
    response = me.post(f"{LIST_URL}revoke-others/")
    assert response.status_code == 302
    assert "Signed out of 0 other sessions." in me.get(LIST_URL).content.decode()


def test_csrf_is_enforced_on_the_pages() -> None:
    make_user()
    me = Client(enforce_csrf_checks=True)
    other = Client()
    log_in(me)  # the login view of the test app is CSRF-exempt
    h_other = log_in(other)
    page = me.get(LIST_URL)
    assert page.status_code == 200

    refused = me.post(f"{LIST_URL}revoke-others/")
    assert refused.status_code == 403
    refused = me.post(revoke_url(row(h_other).pk))
    assert refused.status_code == 403
    assert whoami(other) == "alice"
    assert row(h_other).is_active

    token = page_token(page)
    accepted = me.post(revoke_url(row(h_other).pk), {"csrfmiddlewaretoken": token})
    assert accepted.status_code == 302
    assert whoami(other) is None
    assert whoami(me) == "alice"


def test_revoke_while_redis_hangs(fault_redis: RedisServer) -> None:
    make_user()
    me, phone = Client(), Client()
    log_in(me)
    h_phone = log_in(phone)
    target = row(h_phone).pk
    assert in_redis(fault_redis, h_phone)

    fault_redis.pause()
    try:
        response = me.post(revoke_url(target), headers={"accept": "application/json"})
        assert response.status_code == 200
        assert response.json() == {"ok": True, "revoked": 1}
        assert row(h_phone).end_reason == "revoked"
        assert PendingPurge.objects.filter(key_hash=h_phone).exists()
        # During the outage: the phone's backup is refused, this device still works.
        assert whoami(phone) is None
        assert whoami(me) == "alice"
    finally:
        fault_redis.resume()

    # After the outage (once the breaker lets a probe through): purged, still out.
    time.sleep(COOLDOWN + 0.05)
    assert whoami(me) == "alice"
    assert not PendingPurge.objects.exists()
    assert not in_redis(fault_redis, h_phone)
    assert whoami(phone) is None
