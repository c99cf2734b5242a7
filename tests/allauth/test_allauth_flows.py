"""django-allauth next to this engine, through Redis outages, over HTTP.

Every test drives the allauth site (``tests/allauth/settings.py``, ``urls.py``) with
Django's test ``Client``: the full middleware stack (ours, allauth's ``AccountMiddleware``
and ``UserSessionsMiddleware``), cookies kept between requests, the real database
(SQLite or PostgreSQL) and a private redis-server that the test kills (SIGKILL), hangs
(SIGSTOP), resumes and restarts.

Covered:

- browser sign-in through allauth's login view, kept through an outage (served from the
  backup cookie); a sign-in during the outage;
- allauth's sessions page (``accounts/sessions/``) and its "sign out other sessions"
  during an outage: the other device's session ends for good;
- allauth's logout view during an outage: ended for good, whether Redis comes back empty
  or with the session's copy still in it;
- the headless "app" client (``X-Session-Token``, no backup cookie): while Redis is down
  a live token stays authenticated (the ledger row vouches for the login alone), never
  410 (gone) nor 5xx; it is authenticated once Redis answers, also if Redis came back
  empty; a token login and logout during an outage work; a logged-out token is 410
  whatever Redis does;
- the headless "browser" client (cookies): its session endpoint through an outage, its
  login and logout during one;
- why the site keeps allauth's rate limits (Django's ``default`` cache) off the session
  Redis.

The allauth flows this suite found broken (the sessions page deleting allauth's rows
during an outage, token clients losing their session) are fixed; their tests stay.
"""

from __future__ import annotations

import json
import time
from http.cookies import SimpleCookie
from typing import Any

import pytest
from allauth.usersessions.models import UserSession as AllauthSession
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client, override_settings

from django_resilient_sessions.cachecopy import hash_key
from django_resilient_sessions.models import EndReason, PendingPurge
from django_resilient_sessions.models import UserSession as LedgerRow
from tests.faults import LedgerFaults
from tests.redis_server import RedisServer

pytestmark = pytest.mark.django_db

USERNAME = "alice"
PASSWORD = "correct horse battery staple"
BACKUP_COOKIE = "sessionbackup"
COOLDOWN: float = settings.RESILIENT_SESSIONS["BREAKER_COOLDOWN"]  # 0.2 s
#: Requests (one per cool-down) a recovery may take: the probe, the queued deletions'
#: drain after its response, then Redis again. Bounded, never timed.
RECOVERY_REQUESTS = 10

LAPTOP = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
PHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)

APP = "/_allauth/app/v1"
BROWSER = "/_allauth/browser/v1"
JSON = "application/json"


# -- outages ----------------------------------------------------------------------------------


class Outage:
    """One way for the session Redis to go away and come back.

    ``killed``: SIGKILL, then started again empty (no persistence, or a failover to an
    empty replica). ``hung``: SIGSTOP, then SIGCONT, every key still there. ``restarted``:
    SIGKILL, then started again with the keys it held when it died (a Redis with
    persistence: its data is dumped before the kill and restored after the start).
    """

    def __init__(self, server: RedisServer, kind: str) -> None:
        self.server = server
        self.kind = kind
        self._saved: list[tuple[bytes, int, bytes]] = []

    def begin(self) -> None:
        if self.kind == "hung":
            self.server.pause()
            return
        if self.kind == "restarted":
            with self.server.client() as raw:
                for key in raw.scan_iter():
                    value = raw.dump(key)
                    if value is not None:  # (not expired meanwhile)
                        self._saved.append((key, max(raw.pttl(key), 0), value))
        self.server.kill()

    def end(self) -> None:
        """Redis answers again; then sleep past the breaker's cool-down."""
        if self.kind == "hung":
            self.server.resume()
        else:
            self.server.start()
            with self.server.client() as raw:
                for key, ttl, value in self._saved:
                    raw.restore(key, ttl, value, replace=True)
        wait_cooldown()

    def __repr__(self) -> str:
        return self.kind


def wait_cooldown() -> None:
    """Sleep past the breaker's cool-down, so that the next session request probes Redis."""
    time.sleep(COOLDOWN + 0.05)


@pytest.fixture
def alice() -> User:
    user: User = User.objects.create_user(username=USERNAME, password=PASSWORD)
    return user


# -- browser helpers --------------------------------------------------------------------------


def device(user_agent: str) -> Client:
    return Client(HTTP_USER_AGENT=user_agent)


def cookie(client: Client, name: str) -> str:
    morsel = client.cookies.get(name)
    return morsel.value if morsel is not None else ""


def captured(client: Client) -> dict[str, str]:
    """The cookies a client holds now (what a copy of that browser would present)."""
    return {name: morsel.value for name, morsel in client.cookies.items() if morsel.value}


def replay(cookies: dict[str, str], user_agent: str) -> Client:
    client = device(user_agent)
    client.cookies = SimpleCookie(cookies)
    return client


def no_5xx(response: Any) -> Any:
    assert response.status_code < 500, (response.status_code, response.content[:800])
    return response


def sign_in(client: Client) -> str:
    """Sign in through allauth's login view; returns the session key."""
    response = no_5xx(client.post("/accounts/login/", {"login": USERNAME, "password": PASSWORD}))
    assert response.status_code == 302, response.content[:800]
    assert response["Location"] == settings.LOGIN_REDIRECT_URL
    key = cookie(client, settings.SESSION_COOKIE_NAME)
    assert key
    assert cookie(client, BACKUP_COOKIE)
    return key


def whoami(client: Client) -> dict[str, Any]:
    response = no_5xx(client.get("/whoami/"))
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def user_of(client: Client) -> str | None:
    user: str | None = whoami(client)["user"]
    return user


def sessions_page(client: Client) -> Any:
    """allauth's "Sessions" page, as the signed-in user."""
    response = no_5xx(client.get("/accounts/sessions/"))
    assert response.status_code == 200, response.status_code
    return response


def listed_agents(response: Any) -> set[str]:
    return {session.user_agent for session in response.context["sessions"]}


def allauth_rows(*keys: str) -> set[str]:
    """Which of these session keys allauth's ``UserSession`` table still has."""
    return set(
        AllauthSession.objects.filter(session_key__in=keys).values_list("session_key", flat=True)
    )


def ledger_row(key: str) -> LedgerRow:
    row: LedgerRow = LedgerRow.objects.get(key_hash=hash_key(key))
    return row


def two_devices() -> tuple[Client, str, Client, str]:
    laptop, phone = device(LAPTOP), device(PHONE)
    laptop_key, phone_key = sign_in(laptop), sign_in(phone)
    assert user_of(laptop) == USERNAME
    assert user_of(phone) == USERNAME
    assert allauth_rows(laptop_key, phone_key) == {laptop_key, phone_key}
    return laptop, laptop_key, phone, phone_key


def recovered(client: Client) -> dict[str, Any]:
    """Requests (one per cool-down) until one is served from Redis; that answer."""
    for _ in range(RECOVERY_REQUESTS):
        answer = whoami(client)
        if answer["degraded"] is False:
            return answer
        wait_cooldown()
    raise AssertionError(f"still degraded after {RECOVERY_REQUESTS} requests")


# -- headless helpers -------------------------------------------------------------------------


def raw_api(client: Client, method: str, path: str, data: Any = None, token: str = "") -> Any:
    headers = {"X-Session-Token": token} if token else {}
    body = json.dumps(data) if data is not None else ""
    call = getattr(client, method)
    return call(path, body, content_type=JSON, headers=headers)


def api(client: Client, method: str, path: str, data: Any = None, token: str = "") -> Any:
    return no_5xx(raw_api(client, method, path, data, token))


def app_sign_in(client: Client) -> str:
    """The headless app client's login; returns its session token."""
    response = api(
        client, "post", f"{APP}/auth/login", {"username": USERNAME, "password": PASSWORD}
    )
    assert response.status_code == 200, response.content[:800]
    body = response.json()
    assert body["meta"]["is_authenticated"] is True
    token: str = body["meta"]["session_token"]
    assert token
    assert not client.cookies.get(settings.SESSION_COOKIE_NAME), "an app client has no cookies"
    return token


def token_status(token: str) -> int:
    """The status allauth answers to the app client's session request with this token."""
    response = api(Client(), "get", f"{APP}/auth/session", token=token)
    status: int = response.status_code
    if status == 200:
        assert response.json()["meta"]["is_authenticated"] is True
        assert response.json()["data"]["user"]["username"] == USERNAME
    return status


def token_statuses_until_authenticated(token: str) -> list[int]:
    """Statuses of the token's session requests after an outage, up to the first 200."""
    seen = []
    for _ in range(RECOVERY_REQUESTS):
        seen.append(token_status(token))
        if seen[-1] == 200:
            break
        wait_cooldown()
    return seen


# -- browser: allauth's pages -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["killed", "hung"])
def test_browser_login_is_kept_through_an_outage(
    outage_redis: RedisServer, alice: User, kind: str
) -> None:
    laptop = device(LAPTOP)
    key = sign_in(laptop)
    assert whoami(laptop) == {"user": USERNAME, "degraded": False}
    assert ledger_row(key).ended_at is None
    assert allauth_rows(key) == {key}

    outage = Outage(outage_redis, kind)
    outage.begin()
    assert whoami(laptop) == {"user": USERNAME, "degraded": True}  # served from the backup
    assert whoami(laptop) == {"user": USERNAME, "degraded": True}
    assert cookie(laptop, settings.SESSION_COOKIE_NAME) == key

    outage.end()
    assert recovered(laptop) == {"user": USERNAME, "degraded": False}
    assert cookie(laptop, settings.SESSION_COOKIE_NAME) == key
    assert allauth_rows(key) == {key}


REFUSE = {
    "BREAKER_COOLDOWN": COOLDOWN,
    "MAX_SESSIONS_PER_USER": 1,
    "SESSION_LIMIT_POLICY": "refuse",
}


@override_settings(RESILIENT_SESSIONS=REFUSE)
def test_refused_login_in_allauths_login_view_is_the_403_page(alice: User) -> None:
    """allauth's view does not catch ``SessionLimitExceeded`` from ``login()``: the
    middleware answers it, with the 403 page, as for the admin's."""
    laptop = device(LAPTOP)
    key = sign_in(laptop)
    phone = Client(HTTP_USER_AGENT=PHONE, raise_request_exception=False)
    response = phone.post("/accounts/login/", {"login": USERNAME, "password": PASSWORD})
    assert response.status_code == 403
    assert b"Too many active sessions" in response.content
    assert user_of(phone) is None
    assert user_of(laptop) == USERNAME
    assert LedgerRow.objects.filter(ended_at=None).count() == 1
    assert allauth_rows(key) == {key} and AllauthSession.objects.count() == 1
    # The headless app client's login view too; it asks for JSON.
    response = Client(raise_request_exception=False).post(
        f"{APP}/auth/login",
        json.dumps({"username": USERNAME, "password": PASSWORD}),
        content_type=JSON,
        headers={"Accept": JSON},
    )
    assert response.status_code == 403
    assert response.json()["error"] == "session_limit"
    assert LedgerRow.objects.filter(ended_at=None).count() == 1


def test_browser_login_during_an_outage(outage_redis: RedisServer, alice: User) -> None:
    """allauth's login view works while Redis is down (its rate limits are not on that Redis)."""
    outage = Outage(outage_redis, "killed")
    outage.begin()
    laptop = device(LAPTOP)
    key = sign_in(laptop)
    assert whoami(laptop) == {"user": USERNAME, "degraded": True}
    assert ledger_row(key).ended_at is None
    assert allauth_rows(key) == {key}

    outage.end()  # empty: the login lives in its backup alone, and goes back into Redis
    assert recovered(laptop) == {"user": USERNAME, "degraded": False}


def test_sessions_page_lists_both_devices_with_redis_healthy(
    outage_redis: RedisServer, alice: User
) -> None:
    """The control: allauth's page and rows with Redis answering."""
    laptop, laptop_key, phone, phone_key = two_devices()
    page = sessions_page(laptop)
    assert listed_agents(page) == {LAPTOP, PHONE}
    assert b"Sign Out Other Sessions" in page.content
    assert allauth_rows(laptop_key, phone_key) == {laptop_key, phone_key}
    assert user_of(phone) == USERNAME


@pytest.mark.parametrize("kind", ["killed", "hung"])
def test_sessions_page_during_an_outage_lists_both_devices_and_keeps_their_rows(
    outage_redis: RedisServer, alice: User, kind: str
) -> None:
    laptop, laptop_key, phone, phone_key = two_devices()
    outage = Outage(outage_redis, kind)
    outage.begin()
    assert whoami(laptop) == {"user": USERNAME, "degraded": True}
    assert whoami(phone) == {"user": USERNAME, "degraded": True}

    page = sessions_page(laptop)
    assert allauth_rows(laptop_key, phone_key) == {laptop_key, phone_key}
    assert listed_agents(page) == {LAPTOP, PHONE}
    assert b"Sign Out Other Sessions" in page.content


def test_sessions_page_after_redis_restarted_empty_keeps_the_other_devices_row(
    outage_redis: RedisServer, alice: User
) -> None:
    laptop, laptop_key, phone, phone_key = two_devices()
    outage = Outage(outage_redis, "killed")
    outage.begin()
    outage.end()
    assert recovered(laptop) == {"user": USERNAME, "degraded": False}  # laptop written back

    page = sessions_page(laptop)
    assert allauth_rows(laptop_key, phone_key) == {laptop_key, phone_key}
    assert listed_agents(page) == {LAPTOP, PHONE}
    assert user_of(phone) == USERNAME  # the phone's backup still restores it


def assert_phone_ended_for_good(
    outage: Outage, laptop: Client, phone: Client, phone_key: str, phone_cookies: dict[str, str]
) -> None:
    """The phone's session ended: anonymous now, and after Redis answers again."""
    row = ledger_row(phone_key)
    assert row.ended_at is not None
    assert row.end_reason == EndReason.REVOKED
    assert not allauth_rows(phone_key)
    # During the outage: the phone itself, and a copy of the cookies it held.
    assert user_of(phone) is None
    assert user_of(replay(phone_cookies, PHONE)) is None
    assert user_of(laptop) == USERNAME

    outage.end()
    assert recovered(laptop) == {"user": USERNAME, "degraded": False}
    assert not PendingPurge.objects.exists()  # the queued deletion was done
    assert user_of(replay(phone_cookies, PHONE)) is None
    assert user_of(phone) is None
    assert allauth_rows(phone_key) == set()


@pytest.mark.parametrize("kind", ["killed", "hung"])
def test_sign_out_other_sessions_during_an_outage_ends_the_other_device_for_good(
    outage_redis: RedisServer, alice: User, kind: str
) -> None:
    """allauth's "Sign Out Other Sessions" button (its form's POST) while Redis is down."""
    laptop, laptop_key, phone, phone_key = two_devices()
    phone_cookies = captured(phone)
    outage = Outage(outage_redis, kind)
    outage.begin()
    assert whoami(laptop) == {"user": USERNAME, "degraded": True}

    response = no_5xx(laptop.post("/accounts/sessions/"))
    assert response.status_code == 302, response.content[:800]
    assert response["Location"] == "/accounts/sessions/"
    assert allauth_rows(laptop_key) == {laptop_key}
    assert ledger_row(laptop_key).ended_at is None

    assert_phone_ended_for_good(outage, laptop, phone, phone_key, phone_cookies)


@pytest.mark.parametrize("kind", ["killed", "hung"])
def test_sessions_page_then_sign_out_others_during_an_outage(
    outage_redis: RedisServer, alice: User, kind: str
) -> None:
    """The issue's flow: open the sessions page during the outage, then sign the others out."""
    laptop, _, phone, phone_key = two_devices()
    phone_cookies = captured(phone)
    outage = Outage(outage_redis, kind)
    outage.begin()
    sessions_page(laptop)
    response = no_5xx(laptop.post("/accounts/sessions/"))
    assert response.status_code == 302

    assert_phone_ended_for_good(outage, laptop, phone, phone_key, phone_cookies)


@pytest.mark.parametrize("kind", ["killed", "hung"])
def test_logout_during_an_outage_is_for_good(
    outage_redis: RedisServer, alice: User, kind: str
) -> None:
    laptop = device(LAPTOP)
    key = sign_in(laptop)
    stolen = captured(laptop)
    outage = Outage(outage_redis, kind)
    outage.begin()
    assert whoami(laptop) == {"user": USERNAME, "degraded": True}

    response = no_5xx(laptop.post("/accounts/logout/"))
    assert response.status_code == 302, response.content[:800]
    assert response["Location"] == settings.ACCOUNT_LOGOUT_REDIRECT_URL
    row = ledger_row(key)
    assert row.ended_at is not None
    assert row.end_reason == EndReason.LOGOUT
    assert user_of(laptop) is None
    assert user_of(replay(stolen, LAPTOP)) is None

    outage.end()
    assert user_of(replay(stolen, LAPTOP)) is None
    for _ in range(3):  # past the probe and the drain of the queued deletion
        wait_cooldown()
        assert user_of(replay(stolen, LAPTOP)) is None
    assert not PendingPurge.objects.exists()
    assert user_of(laptop) is None


# -- headless app client (X-Session-Token) ----------------------------------------------------


@pytest.mark.parametrize("kind", ["hung", "restarted"])
def test_app_token_stays_authenticated_through_an_outage(
    outage_redis: RedisServer, alice: User, kind: str
) -> None:
    token = app_sign_in(Client())
    assert token_status(token) == 200
    outage = Outage(outage_redis, kind)
    outage.begin()

    # No backup cookie to serve it from: the ledger row vouches for the login alone.
    statuses = [token_status(token) for _ in range(3)]
    wait_cooldown()  # and again once the breaker probes the dead Redis
    statuses.append(token_status(token))
    statuses.append(api(Client(), "get", f"{APP}/auth/sessions", token=token).status_code)
    assert statuses == [200, 200, 200, 200, 200]
    assert ledger_row(token).ended_at is None

    outage.end()
    seen = token_statuses_until_authenticated(token)
    assert seen[-1] == 200, seen
    assert set(seen) == {200}, seen  # never 401 or 410 on the way back
    assert token_status(token) == 200


def test_app_token_whose_redis_copy_was_lost_is_still_authenticated(
    outage_redis: RedisServer, alice: User
) -> None:
    """The app client's session was in Redis alone, and Redis came back empty: its
    ledger row still vouches for the login, which goes back into Redis."""
    token = app_sign_in(Client())
    outage = Outage(outage_redis, "killed")
    outage.begin()
    assert token_status(token) == 200
    outage.end()
    assert token_status(token) == 200
    assert token_status(token) == 200


@pytest.mark.parametrize("kind", ["killed", "hung", "restarted"])
def test_app_token_logged_out_is_410_at_any_time(
    outage_redis: RedisServer, alice: User, kind: str
) -> None:
    client = Client()
    token = app_sign_in(client)
    response = api(client, "delete", f"{APP}/auth/session", token=token)
    assert response.status_code == 401  # allauth's answer to a logout: no longer authenticated
    assert response.json()["meta"]["is_authenticated"] is False
    row = ledger_row(token)
    assert row.ended_at is not None
    assert row.end_reason == EndReason.LOGOUT
    assert token_status(token) == 410

    outage = Outage(outage_redis, kind)
    outage.begin()
    assert token_status(token) == 410
    wait_cooldown()
    assert token_status(token) == 410
    outage.end()
    for _ in range(3):
        assert token_status(token) == 410
        wait_cooldown()


@pytest.mark.parametrize("kind", ["hung", "restarted"])
def test_app_logout_during_an_outage_is_for_good(
    outage_redis: RedisServer, alice: User, kind: str
) -> None:
    client = Client()
    token = app_sign_in(client)
    outage = Outage(outage_redis, kind)
    outage.begin()
    response = api(client, "delete", f"{APP}/auth/session", token=token)
    assert response.status_code == 401  # allauth's answer to a logout
    assert response.json()["meta"]["is_authenticated"] is False
    assert ledger_row(token).ended_at is not None
    outage.end()
    for _ in range(3):
        assert token_status(token) == 410
        wait_cooldown()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["hung", "restarted"])
def test_app_logout_during_an_outage_the_ledger_cannot_record_is_refused(
    outage_redis: RedisServer, alice: User, kind: str
) -> None:
    """Redis down and the database read-only: the logout is a 503 and changes nothing."""
    client = Client()
    token = app_sign_in(client)
    outage = Outage(outage_redis, kind)
    outage.begin()
    with LedgerFaults() as ledger:
        ledger.down("readonly")
        response = raw_api(client, "delete", f"{APP}/auth/session", token=token)
        assert response.status_code == 503
        assert response["Retry-After"]
        assert any(entry.fault == "readonly" for entry in ledger.log)
    assert ledger_row(token).ended_at is None
    assert token_status(token) == 200  # still signed in: the client may try again
    outage.end()
    assert token_statuses_until_authenticated(token)[-1] == 200
    response = api(client, "delete", f"{APP}/auth/session", token=token)
    assert response.status_code == 401  # and now the logout is for good
    assert token_status(token) == 410


def test_app_login_during_an_outage_works_afterwards(
    outage_redis: RedisServer, alice: User
) -> None:
    outage = Outage(outage_redis, "hung")
    outage.begin()
    response = api(
        Client(), "post", f"{APP}/auth/login", {"username": USERNAME, "password": PASSWORD}
    )
    assert response.status_code == 200
    assert response.json()["meta"]["is_authenticated"] is True
    token = response.json()["meta"]["session_token"]
    assert ledger_row(token).ended_at is None
    assert token_status(token) == 200  # during the outage, vouched for by the ledger row
    outage.end()
    seen = token_statuses_until_authenticated(token)
    assert seen[-1] == 200, seen


@pytest.mark.django_db(transaction=True)
def test_app_login_during_an_outage_the_ledger_cannot_record_is_refused(
    outage_redis: RedisServer, alice: User
) -> None:
    """Redis hung and the database read-only: the login is a 503, no token, no row."""
    outage = Outage(outage_redis, "hung")
    outage.begin()
    with LedgerFaults() as ledger:
        ledger.down("readonly")
        response = raw_api(
            Client(), "post", f"{APP}/auth/login", {"username": USERNAME, "password": PASSWORD}
        )
        assert response.status_code == 503
        assert b"session_token" not in response.content
        assert any(entry.fault == "readonly" for entry in ledger.log)
    assert not LedgerRow.objects.exists()
    outage.end()
    assert token_status(app_sign_in(Client())) == 200  # once it can be recorded, it is


# -- headless browser client (cookies) --------------------------------------------------------


def browser_session(client: Client) -> int:
    response = api(client, "get", f"{BROWSER}/auth/session")
    status: int = response.status_code
    assert response.json()["meta"]["is_authenticated"] is (status == 200)
    return status


@pytest.mark.parametrize("kind", ["killed", "hung"])
def test_headless_browser_session_through_an_outage_and_its_logout(
    outage_redis: RedisServer, alice: User, kind: str
) -> None:
    spa = device(LAPTOP)
    response = api(
        spa, "post", f"{BROWSER}/auth/login", {"username": USERNAME, "password": PASSWORD}
    )
    assert response.status_code == 200, response.content[:800]
    key = cookie(spa, settings.SESSION_COOKIE_NAME)
    assert key
    assert cookie(spa, BACKUP_COOKIE)
    assert browser_session(spa) == 200

    outage = Outage(outage_redis, kind)
    outage.begin()
    assert browser_session(spa) == 200  # from the backup cookie
    assert browser_session(spa) == 200
    stolen = captured(spa)

    response = api(spa, "delete", f"{BROWSER}/auth/session")
    assert response.status_code == 401
    assert ledger_row(key).end_reason == EndReason.LOGOUT
    assert browser_session(spa) == 401
    assert browser_session(replay(stolen, LAPTOP)) == 401

    outage.end()
    for _ in range(3):
        assert browser_session(replay(stolen, LAPTOP)) == 401
        wait_cooldown()
    assert not PendingPurge.objects.exists()


def test_headless_browser_login_during_an_outage(outage_redis: RedisServer, alice: User) -> None:
    outage = Outage(outage_redis, "killed")
    outage.begin()
    spa = device(LAPTOP)
    response = api(
        spa, "post", f"{BROWSER}/auth/login", {"username": USERNAME, "password": PASSWORD}
    )
    assert response.status_code == 200, response.content[:800]
    assert cookie(spa, BACKUP_COOKIE)
    assert browser_session(spa) == 200
    outage.end()
    assert browser_session(spa) == 200
    assert recovered(spa) == {"user": USERNAME, "degraded": False}


# -- the settings' reason ---------------------------------------------------------------------


@pytest.mark.parametrize(("ignore_exceptions", "status"), [(False, 500), (True, 429)])
def test_rate_limits_on_the_session_redis_break_allauth_logins_during_an_outage(
    outage_redis: RedisServer, alice: User, ignore_exceptions: bool, status: int
) -> None:
    """Why the site keeps Django's ``default`` cache (allauth's rate limits) off that Redis.

    Not this engine: allauth's rate limiter itself fails (500), or, with django-redis'
    ``IGNORE_EXCEPTIONS``, cannot take its lock and answers 429.
    """
    sessions = settings.CACHES["sessions"]
    options = {**sessions["OPTIONS"], "IGNORE_EXCEPTIONS": ignore_exceptions}
    with override_settings(CACHES={**settings.CACHES, "default": {**sessions, "OPTIONS": options}}):
        outage_redis.kill()
        laptop = Client(HTTP_USER_AGENT=LAPTOP, raise_request_exception=False)
        response = laptop.post("/accounts/login/", {"login": USERNAME, "password": PASSWORD})
        assert response.status_code == status
        assert user_of(laptop) is None
