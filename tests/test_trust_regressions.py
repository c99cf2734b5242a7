"""Regression tests for the trust model: each hole found in 0.1, through real HTTP.

Real redis-server processes (killed, hung, flushed), a real database (its ledger table
made to vanish), Django's test client with the full middleware stack. Each test names
the scenario it closes:

1. a logout the ledger cannot record is a visible failure, not a silent no-op (also
   for a login held back while the database was down);
2. a login the ledger cannot record is not a login; hostile client data (NUL bytes in
   the user agent, a resolver that returns anything) never breaks a login;
3. the Redis copy never outlives its row: set_expiry() moves the row too,
   clearsessions purges Redis for every row it ends, a renewal without a row logs out;
4. deleting rows in the admin revokes the sessions first;
5. no rollback: an older backup presented during an outage neither serves nor wins;
6. a revocation landing between a load and its write-back is not lost;
7. the probe keeps the breaker open while the purge queue cannot be read;
8. a login withheld at a cache miss is not written back without its login;
9. the purge queue only holds sessions that were in Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from http.cookies import SimpleCookie
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.contrib.auth import login as django_login
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client, RequestFactory, override_settings
from django.utils import timezone

from django_resilient_sessions import outbox, signals
from django_resilient_sessions.backends.resilient import SessionStore
from django_resilient_sessions.breaker import get_breaker
from django_resilient_sessions.models import PendingPurge, UserSession
from tests.faults import LedgerFaults
from tests.redis_server import RedisServer
from tests.web import (
    BACKUP_COOKIE,
    PASSWORD,
    captured,
    cookie,
    get_values,
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
    table_unavailable,
    user_of,
    usersession_table_unavailable,
    whoami,
)

COOLDOWN = 0.2
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def short_cooldown() -> Iterator[None]:
    with override_settings(RESILIENT_SESSIONS={"BREAKER_COOLDOWN": COOLDOWN}):
        yield


def wait_cooldown() -> None:
    time.sleep(COOLDOWN + 0.05)


def recover(client: Client) -> None:
    """Past the cool-down, requests until Redis is trusted again (queued purges done)."""
    wait_cooldown()
    for _ in range(3):
        if not whoami(client)["degraded"]:
            return
        wait_cooldown()
    raise AssertionError("Redis was not trusted again")


def row_of(client: Client) -> UserSession:
    row: UserSession = UserSession.objects.get(key_hash=key_hash(session_key(client)))
    return row


def json_post(client: Client, path: str, **data: Any) -> Any:
    return client.post(path, data, HTTP_ACCEPT="application/json")


# 1. Logout ----------------------------------------------------------------------------------


def test_logout_with_the_ledger_down_and_redis_hung_fails_visibly(fault_redis: RedisServer) -> None:
    make_user()
    client = Client()
    login(client)
    stolen = captured(client)
    fault_redis.pause()
    try:
        assert whoami(client) == {"user": "alice", "degraded": True}
        with usersession_table_unavailable():
            response = json_post(client, "/logout/")
        assert response.status_code == 503
        assert response.json()["error"] == "ledger_unavailable"
        assert not response.cookies  # nothing changed: the user may simply try again
        assert UserSession.objects.active().count() == 1
        # Trying again once the database answers works, Redis still hung.
        assert ok(client.post("/logout/")) == {"ok": True}
        assert not UserSession.objects.active().exists()
        assert whoami(replay(stolen)) == {"user": None, "degraded": True}
    finally:
        fault_redis.resume()
    fault_redis.flushall()  # Redis loses the copy and any tombstone: the row still refuses
    recover(replay(stolen))
    assert user_of(replay(stolen)) is None


def test_logout_of_a_withheld_login_ends_its_row(fault_redis: RedisServer) -> None:
    make_user()
    client = Client()
    login(client)
    set_values(client, cart="3")
    stolen = captured(client)
    fault_redis.kill()
    with usersession_table_unavailable():
        # Fail closed: the backup is served without its login (held back).
        assert whoami(client) == {"user": None, "degraded": True}
        response = json_post(client, "/logout/")
        assert response.status_code == 503  # a held-back login is still a login
    assert ok(client.post("/logout/")) == {"ok": True}
    row = UserSession.objects.get()
    assert row.end_reason == "logout"
    assert whoami(replay(stolen)) == {"user": None, "degraded": True}
    fault_redis.start()
    recover(replay(stolen))
    assert user_of(replay(stolen)) is None
    assert get_values(replay(stolen)) == {}


# 2. Login -----------------------------------------------------------------------------------


def test_login_that_cannot_be_recorded_is_not_a_login(redis_server: RedisServer) -> None:
    make_user()
    client = Client()
    set_values(client, cart="3")
    with usersession_table_unavailable():
        response = client.post(
            "/login/",
            {"username": "alice", "password": PASSWORD},
            HTTP_ACCEPT="application/json",
        )
    assert response.status_code == 503
    assert UserSession.objects.count() == 0
    assert user_of(client) is None  # not logged in: no row-less login
    assert get_values(client) == {"cart": "3"}  # and nothing of the visit was lost
    login(client)
    assert UserSession.objects.active().count() == 1


@pytest.mark.parametrize(
    "agent",
    ["Mozilla/5.0 \x00 (X11)", "\x00" * 50, "caf\udce9 bot", "x" * 5000, "\x7f\x1b[31mred"],
)
def test_hostile_user_agents_are_cleaned_not_fatal(redis_server: RedisServer, agent: str) -> None:
    make_user()
    client = Client()
    login(client, HTTP_USER_AGENT=agent)
    row = UserSession.objects.get()
    assert "\x00" not in row.user_agent and len(row.user_agent) <= 300
    assert user_of(client) == "alice"


def odd_address(request: Any) -> str:
    return "not-an-ip, 10.0.0.1"


def raising_resolver(request: Any) -> str:
    raise ValueError("bad X-Forwarded-For")


@pytest.mark.parametrize("resolver", ["odd_address", "raising_resolver"])
def test_an_ip_resolver_returning_anything_never_breaks_login(
    redis_server: RedisServer, resolver: str
) -> None:
    make_user()
    client = Client()
    options = {"BREAKER_COOLDOWN": COOLDOWN, "IP_RESOLVER": f"{__name__}.{resolver}"}
    with override_settings(RESILIENT_SESSIONS=options):
        login(client)
    assert UserSession.objects.get().ip is None
    assert user_of(client) == "alice"


# 3. The Redis copy never outlives its row ---------------------------------------------------


def test_set_expiry_moves_the_row_expiry_with_the_redis_ttl(redis_server: RedisServer) -> None:
    make_user()
    client = Client()
    login(client)
    before = row_of(client).expires_at
    assert ok(client.post("/expiry/", {"seconds": str(settings.SESSION_COOKIE_AGE * 3)}))
    after = row_of(client).expires_at
    assert (after - before).total_seconds() > settings.SESSION_COOKIE_AGE
    with redis_server.client() as raw:
        ttl = raw.pttl(next(iter(raw.scan_iter(match="*resilient_sessions:*")))) / 1000
    assert abs(after.timestamp() - (time.time() + ttl)) < UserSession.grace().total_seconds()


def test_a_login_on_a_revoked_key_never_revives_its_row(redis_server: RedisServer) -> None:
    """A revoked session still served from Redis (the PURGE_CHECK_INTERVAL window: the
    row ended, the copy not purged yet) where the same user logs in again: Django's
    login() keeps the key then (same user, same hash), and recording the login used to
    turn the ended row active again.  Now the login goes on under a new key, and the
    revoked one stays ended, in the ledger and in Redis."""
    make_user()
    client = Client()
    login(client)
    stolen = captured(client)
    old = row_of(client)
    # Ended in the ledger only (another process, its Redis deletion not done yet).
    UserSession.objects.filter(pk=old.pk).update(ended_at=timezone.now(), end_reason="revoked")
    assert user_of(client) == "alice"  # the healthy path does not ask the ledger
    login(client)
    assert session_key(client) != stolen[settings.SESSION_COOKIE_NAME]
    old.refresh_from_db()
    assert old.ended_at is not None and old.end_reason == "revoked"
    assert row_of(client).ended_at is None
    assert user_of(client) == "alice"
    assert user_of(replay(stolen)) is None


def test_the_redis_copy_never_outlives_its_row_when_the_row_cannot_follow(
    redis_server: RedisServer,
) -> None:
    """set_expiry() moves the session's expiry far ahead, but the row's UPDATE fails
    (database read-only): the save still goes to Redis, with its TTL capped at the row's
    expiry plus the grace, so the copy cannot outlive a row clearsessions will end."""
    make_user()
    client = Client()
    login(client)
    row_expiry = row_of(client).expires_at
    with LedgerFaults() as ledger:
        ledger.fail_when(lambda sql, params: sql.lstrip().upper().startswith("UPDATE"), "readonly")
        answer = client.post("/expiry/", {"seconds": str(settings.SESSION_COOKIE_AGE * 3)})
    assert answer.status_code == 200
    assert row_of(client).expires_at == row_expiry  # the row could not follow
    with redis_server.client() as raw:
        ttl = raw.pttl(next(iter(raw.scan_iter(match="*resilient_sessions:*")))) / 1000
    limit = row_expiry.timestamp() + UserSession.grace().total_seconds()
    assert time.time() + ttl <= limit + 1  # (whole seconds)
    assert user_of(client) == "alice"  # still logged in: activity can wait


@pytest.mark.parametrize("past", [timedelta(days=1), timedelta(days=400)], ids=["ended", "deleted"])
def test_clearsessions_purges_redis_for_the_rows_it_ends(
    redis_server: RedisServer, past: timedelta
) -> None:
    make_user()
    client = Client()
    login(client)
    stolen = captured(client)
    # The row expired (it lagged the Redis TTL: a bug, a restored database...).
    UserSession.objects.update(expires_at=timezone.now() - past)
    assert user_of(client) == "alice"  # the healthy path does not ask the ledger...
    call_command("clearsessions", verbosity=0)
    rows = list(UserSession.objects.values_list("end_reason", flat=True))
    assert rows == (["expired"] if past.days < 30 else [])  # past retention: deleted
    assert user_of(replay(stolen)) is None  # ...but clearsessions ended it in Redis too
    assert not in_redis(redis_server, stolen[settings.SESSION_COOKIE_NAME])


def test_a_renewal_without_an_active_row_ends_the_login(redis_server: RedisServer) -> None:
    make_user()
    client = Client()
    with override_settings(RESILIENT_SESSIONS={"ACTIVITY_UPDATE_INTERVAL": 0}):
        login(client)
        UserSession.objects.all().delete()  # the row vanished (restored database, bug)
        whoami(client)  # its renewal finds no row: the login ends with this request
        assert user_of(client) is None


def test_clearing_a_logged_in_session_ends_its_login_for_good(redis_server: RedisServer) -> None:
    make_user()
    client = Client()
    login(client)
    stolen = captured(client)  # a backup holding the login
    ok(client.post("/clear/"))  # the data goes, the login with it; the key stays
    assert session_key(client) == stolen[settings.SESSION_COOKIE_NAME]
    assert not UserSession.objects.get().is_active
    assert user_of(client) is None
    redis_server.flushall()  # only the backups are left: the older one holds the login
    assert user_of(replay(stolen)) is None


# 4. Admin -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["action", "button"])
def test_deleting_rows_in_the_admin_logs_the_device_out(
    redis_server: RedisServer, how: str
) -> None:
    make_user()
    User.objects.create_superuser("root", "root@example.com", PASSWORD)
    device = Client()
    login(device)
    stolen = captured(device)
    pk = row_of(device).pk
    admin = Client()
    assert admin.login(username="root", password=PASSWORD)
    if how == "action":
        data = {"action": "delete_selected", "_selected_action": [pk], "post": "yes"}
        response = admin.post("/admin/django_resilient_sessions/usersession/", data)
    else:
        response = admin.post(
            f"/admin/django_resilient_sessions/usersession/{pk}/delete/", {"post": "yes"}
        )
    assert response.status_code == 302
    assert not UserSession.objects.filter(pk=pk).exists()
    assert user_of(device) is None
    assert user_of(replay(stolen)) is None


def test_staff_with_delete_user_can_delete_a_user_who_logged_in(redis_server: RedisServer) -> None:
    from django.contrib.auth.models import Permission

    target = make_user("bob")
    phone = Client()
    login(phone, "bob")
    staff = User.objects.create_user("staff", password=PASSWORD, is_staff=True)
    allowed = Permission.objects.filter(codename__in=["delete_user", "view_user"])
    staff.user_permissions.add(*allowed)
    admin = Client()
    assert admin.login(username="staff", password=PASSWORD)
    response = admin.post(f"/admin/auth/user/{target.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302, response.content[:300]
    assert not User.objects.filter(pk=target.pk).exists()
    assert not UserSession.objects.filter(user_id=target.pk).exists()
    assert user_of(phone) is None


# 5. No rollback -----------------------------------------------------------------------------


def test_an_older_backup_neither_serves_during_the_outage_nor_wins_after_it(
    fault_redis: RedisServer,
) -> None:
    make_user()
    client = Client()
    login(client)
    set_values(client, coupon="unused")
    unused = captured(client)
    set_values(client, coupon="used")

    fault_redis.pause()
    try:
        assert get_values(client) == {"coupon": "used"}  # served from the newest backup
        set_values(client, note="1")  # the ledger learns of this backup's version
        # The attacker presents the older backup, then writes to make its branch "newer".
        attacker = replay(unused)
        # Its login stands (the row vouches for it), none of its data is served.
        assert whoami(attacker) == {"user": "alice", "degraded": True}
        response = attacker.get("/get/")
        assert ok(response) == {}
        assert not response.cookies  # cookies left alone: nothing is renewed from it
        assert get_values(client) == {"coupon": "used", "note": "1"}  # the newest is intact
    finally:
        fault_redis.resume()
    recover(client)
    assert get_values(client) == {"coupon": "used", "note": "1"}
    assert get_values(replay(unused))["coupon"] == "used"


def test_a_browser_that_lost_an_answer_during_an_outage_stays_logged_in(
    fault_redis: RedisServer,
) -> None:
    """The newest backup went out in an answer the browser never got (an aborted
    request, a dropped connection): the one it holds is older than one served."""
    make_user()
    client = Client()
    login(client)
    set_values(client, cart="1")
    fault_redis.pause()
    try:
        held = captured(client)
        set_values(client, cart="2")  # served and recorded; its answer is lost
        browser = replay(held)
        assert whoami(browser) == {"user": "alice", "degraded": True}
        assert get_values(browser) == {}  # not the older data: no rollback
        set_values(browser, wish="3")  # a branch of its own, still logged in
        assert whoami(browser) == {"user": "alice", "degraded": True}
        assert get_values(browser) == {"wish": "3"}
    finally:
        fault_redis.resume()
    recover(browser)
    assert whoami(browser)["user"] == "alice"


def test_a_logout_on_a_branch_of_the_login_alone_reaches_the_redis_copy(
    fault_redis: RedisServer,
) -> None:
    """The login alone (in place of an older backup) is served during an outage while
    Redis still holds the session; a save branches from it, then the user logs out,
    Redis still hung.  The Redis copy (with the login) must not come back afterwards."""
    make_user()
    client = Client()
    login(client)
    set_values(client, cart="1")
    stolen = {settings.SESSION_COOKIE_NAME: session_key(client)}  # the session id alone
    fault_redis.pause()
    try:
        held = captured(client)
        set_values(client, cart="2")  # served and recorded; its answer is lost
        browser = replay(held)
        set_values(browser, wish="3")  # on the login alone: a branch of its own
        assert whoami(browser) == {"user": "alice", "degraded": True}
        assert ok(browser.post("/logout/")) == {"ok": True}
        assert not UserSession.objects.active().exists()
    finally:
        fault_redis.resume()
    thief = replay(stolen)
    recover(thief)
    assert whoami(thief) == {"user": None, "degraded": False}


def test_a_branch_of_the_login_alone_wins_over_the_older_redis_copy_after_the_outage(
    fault_redis: RedisServer,
) -> None:
    """What the user wrote on the login alone (acknowledged) is newer than the Redis
    copy that the older backup descends from: Redis, once back, must not win over it
    (nor bring back the data of that older copy)."""
    make_user()
    client = Client()
    login(client)
    set_values(client, cart="1")
    fault_redis.pause()
    try:
        held = captured(client)
        set_values(client, cart="2")  # served and recorded; its answer is lost
        browser = replay(held)
        set_values(browser, wish="3")  # on the login alone: a branch of its own
        assert get_values(browser) == {"wish": "3"}
    finally:
        fault_redis.resume()
    recover(browser)
    assert get_values(browser) == {"wish": "3"}


@override_settings(SESSION_SAVE_EVERY_REQUEST=True)
def test_a_read_on_the_login_alone_renews_nothing_when_every_request_saves(
    fault_redis: RedisServer,
) -> None:
    """A request racing another (same cookies, sent before the other's answer came
    back) is served the login alone; it only reads.  Saving on every request must not
    turn that read into a newer backup of the login alone, over the other's answer."""
    make_user()
    client = Client()
    login(client)
    set_values(client, cart="1")
    fault_redis.pause()
    try:
        held = captured(client)
        set_values(client, cart="2")  # the other request: answered, its backup kept
        racing = replay(held)
        response = racing.get("/whoami/")
        assert ok(response) == {"user": "alice", "degraded": True}
        assert not response.cookies  # a read renews nothing (the other's answer stands)
        assert get_values(client) == {"cart": "2"}
    finally:
        fault_redis.resume()


def test_the_login_alone_keeps_the_expiry_the_session_was_given(
    fault_redis: RedisServer,
) -> None:
    """``set_expiry(600)`` (a "remember me" left unticked): the login alone served in
    place of an older backup must not come back with ``SESSION_COOKIE_AGE``, nor
    stretch its row that far at the next save."""
    make_user()
    client = Client()
    login(client)
    assert ok(client.post("/expiry/", {"seconds": 600}))
    set_values(client, cart="1")
    fault_redis.pause()
    try:
        held = captured(client)
        set_values(client, cart="2")  # served and recorded; its answer is lost
        browser = replay(held)
        set_values(browser, wish="3")  # on the login alone
        row = row_of(browser)
        assert row.expires_at <= timezone.now() + timedelta(seconds=600 + 60)
    finally:
        fault_redis.resume()


def test_a_logout_on_a_branch_of_the_login_alone_without_a_backup_reaches_redis(
    fault_redis: RedisServer,
) -> None:
    """As above, for a browser that sends its session cookie without the backup (the
    browser evicted it): the login alone, a save, a logout, Redis hung throughout."""
    make_user()
    client = Client()
    login(client)
    set_values(client, cart="1")
    stolen = {settings.SESSION_COOKIE_NAME: session_key(client)}  # the session id alone
    fault_redis.pause()
    try:
        browser = replay(stolen)
        set_values(browser, wish="3")  # on the login alone: a branch of its own
        assert whoami(browser) == {"user": "alice", "degraded": True}
        assert ok(browser.post("/logout/")) == {"ok": True}
        assert not UserSession.objects.active().exists()
    finally:
        fault_redis.resume()
    thief = replay(stolen)
    recover(thief)
    assert whoami(thief) == {"user": None, "degraded": False}


def test_a_branch_that_redis_never_saw_does_not_overwrite_it(fault_redis: RedisServer) -> None:
    """The 0.1 hole: an old anonymous branch, made "newer" by writes, overwrote Redis."""
    client = Client()
    set_values(client, coupon="unused")
    unused = captured(client)
    set_values(client, coupon="used")
    fault_redis.pause()
    try:
        attacker = replay(unused)
        for n in range(5):  # anonymous data during an outage: the documented exception
            set_values(attacker, n=str(n))
        assert get_values(attacker)["coupon"] == "unused"
    finally:
        fault_redis.resume()
    wait_cooldown()
    assert get_values(attacker)["coupon"] == "used"  # on recovery Redis wins: no rollback
    assert get_values(client)["coupon"] == "used"


def test_writes_made_during_an_outage_win_over_the_copy_they_descend_from(
    fault_redis: RedisServer,
) -> None:
    make_user()
    client = Client()
    login(client)
    set_values(client, cart="1")
    fault_redis.pause()
    try:
        for n in range(2, 5):
            set_values(client, cart=str(n))
    finally:
        fault_redis.resume()
    recover(client)
    assert get_values(client) == {"cart": "4"}
    other = Client()  # Redis itself holds it now
    other.cookies = SimpleCookie({settings.SESSION_COOKIE_NAME: session_key(client)})
    assert get_values(other) == {"cart": "4"}


# 6. Check-then-write races ------------------------------------------------------------------


def test_a_revocation_between_load_and_write_back_is_not_lost(redis_server: RedisServer) -> None:
    make_user()
    client = Client()
    login(client)
    stolen = captured(client)
    redis_server.flushall()  # Redis lost the copy: the next load writes the backup back

    def revoke_now(**kwargs: Any) -> None:
        UserSession.objects.all().revoke()  # lands after the ledger said "active"

    signals.session_restored.connect(revoke_now)
    try:
        whoami(client)
    finally:
        signals.session_restored.disconnect(revoke_now)
    assert not in_redis(redis_server, stolen[settings.SESSION_COOKIE_NAME])
    assert user_of(replay(stolen)) is None
    assert user_of(client) is None


def test_a_save_found_already_expired_leaves_a_revocations_tombstone(
    redis_server: RedisServer,
) -> None:
    store = SessionStore()
    store["cart"] = "full"
    store.save()
    key = store.session_key
    assert key is not None
    SessionStore(key).delete()  # ended elsewhere (another tab's logout, a revocation)
    store.set_expiry(-10)
    store.save()  # expired on arrival: its copy is dropped, the tombstone is not
    with redis_server.client() as raw:
        assert is_tombstone(raw.get(redis_key_for_hash(key_hash(key))))
    assert SessionStore(key).load() == {}


# 7. The probe and an unreadable queue -------------------------------------------------------


def test_the_breaker_stays_open_while_the_purge_queue_cannot_be_read(
    fault_redis: RedisServer,
) -> None:
    make_user()
    laptop, phone = Client(), Client()
    login(laptop)
    login(phone)
    stolen = captured(laptop)
    fault_redis.pause()
    try:
        assert whoami(phone)["degraded"] is True
        row_of(laptop).revoke()
        assert PendingPurge.objects.count() == 1
    finally:
        fault_redis.resume()
    wait_cooldown()
    with table_unavailable(PendingPurge):
        for _ in range(3):
            # Redis answers, but the revoked copy may still be in it: backups only.
            assert whoami(replay(stolen)) == {"user": None, "degraded": True}
            assert whoami(phone) == {"user": "alice", "degraded": True}
            wait_cooldown()
    assert get_breaker("default").state != "closed"
    recover(phone)
    assert whoami(replay(stolen)) == {"user": None, "degraded": False}


# 8. Withheld logins -------------------------------------------------------------------------


def test_a_withheld_login_is_not_written_back_without_it(redis_server: RedisServer) -> None:
    make_user()
    client = Client()
    login(client)
    set_values(client, cart="3")
    redis_server.flushall()  # a cache miss, and the database down
    with usersession_table_unavailable():
        assert whoami(client) == {"user": None, "degraded": False}
        assert get_values(client) == {"cart": "3"}
        assert not in_redis(redis_server, session_key(client))  # no login-less copy
    assert whoami(client) == {"user": "alice", "degraded": False}  # the login is back
    assert in_redis(redis_server, session_key(client))


def test_cycle_key_over_a_withheld_login_leaves_no_old_row_active(
    fault_redis: RedisServer,
) -> None:
    user = make_user()
    client = Client()
    login(client)
    old = captured(client)
    fault_redis.kill()
    store = SessionStore(old[settings.SESSION_COOKIE_NAME], backup=old[BACKUP_COOKIE])
    with usersession_table_unavailable():
        assert SESSION_KEY not in store  # held back: the database cannot vouch
    # The database answers again within the same request, and login() cycles the key
    # (the session shows no login, so login() does not know of the held-back one).
    request = RequestFactory().post("/login/")
    request.session = store
    django_login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    assert UserSession.objects.active().count() == 1
    assert UserSession.objects.get().key_hash == store.key_hash
    assert store.key_hash != key_hash(old[settings.SESSION_COOKIE_NAME])
    assert whoami(replay(old)) == {"user": None, "degraded": True}


# 9. The purge queue -------------------------------------------------------------------------


def test_anonymous_sessions_made_during_an_outage_queue_nothing(fault_redis: RedisServer) -> None:
    fault_redis.kill()
    noticing = Client()  # a request that finds Redis gone (its breaker opens)
    noticing.cookies = SimpleCookie({settings.SESSION_COOKIE_NAME: "x" * 32})
    assert whoami(noticing)["degraded"] is True
    for _ in range(5):
        visitor = Client()
        set_values(visitor, junk="x")
        set_values(visitor, more="y")
        assert cookie(visitor, BACKUP_COOKIE)
        assert ok(visitor.post("/flush/"))
    assert not PendingPurge.objects.exists()


def test_the_queue_is_drained_in_bounded_batches_after_the_probe(fault_redis: RedisServer) -> None:
    from django_resilient_sessions import purges

    make_user()
    phone = Client()
    login(phone)
    fault_redis.pause()
    try:
        assert whoami(phone)["degraded"] is True
        many = purges.DRAIN_BATCH * purges.DRAIN_BATCHES + 7
        PendingPurge.objects.bulk_create(
            [PendingPurge(key_hash=key_hash(f"gone-{i}")) for i in range(many)]
        )
    finally:
        fault_redis.resume()
    wait_cooldown()
    assert whoami(phone)["degraded"] is True  # the probe only schedules the work...
    assert PendingPurge.objects.count() == 7  # ...done after its response, in batches
    assert get_breaker("default").state != "closed"
    assert whoami(phone)["degraded"] is True  # the rest after the next one
    assert not PendingPurge.objects.exists()
    assert whoami(phone) == {"user": "alice", "degraded": False}


def test_the_periodic_check_ignores_deletions_in_flight_until_they_settle(
    redis_server: RedisServer,
) -> None:
    """Every logout queues its deletion for a few milliseconds (an outbox): a process
    must not stop trusting Redis for that, only for one left behind by a failure."""
    from datetime import timedelta as delta

    make_user()
    client = Client()
    login(client)
    PendingPurge.objects.create(key_hash=key_hash("in-flight"), in_flight=True)
    with override_settings(RESILIENT_SESSIONS={"PURGE_CHECK_INTERVAL": 0}):
        assert whoami(client) == {"user": "alice", "degraded": False}
        PendingPurge.objects.update(created_at=timezone.now() - delta(seconds=outbox.SETTLED + 1))
        # Settled: its process failed before it could finish; now it counts.
        assert whoami(client) == {"user": "alice", "degraded": True}
    assert not PendingPurge.objects.exists()  # drained after that response
    assert whoami(client) == {"user": "alice", "degraded": False}
