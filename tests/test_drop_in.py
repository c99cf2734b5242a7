"""A drop-in for Django's engines: what a site that switches relies on, through real HTTP.

- ``USE_TZ = False`` sites log in, renew, list, revoke and clean up (the ledger's
  datetimes follow the setting);
- ``SESSION_LIMIT_POLICY = "refuse"`` in a login view that does not catch the refusal
  (the admin's) is a 403 page, not a 500;
- a read-only request whose session was logged out concurrently answers 200 (Django's
  engines do), not 400;
- Django's contract: ``save()`` of an unknown key raises ``UpdateError``; ``create()``
  uses a subclass's ``_get_new_session_key()``;
- values: both copies go through ``SESSION_SERIALIZER``, so a view sees the same types
  from Redis and from a backup, and a value that cannot be kept fails where it is set.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.contrib.sessions.backends.base import UpdateError
from django.core.management import call_command
from django.test import Client, override_settings
from django.utils import timezone

from django_resilient_sessions.backends.resilient import SessionStore
from django_resilient_sessions.models import UserSession
from tests.redis_server import RedisServer
from tests.web import PASSWORD, captured, login, make_user, ok, replay, set_values, user_of, whoami

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def short_cooldown() -> Iterator[None]:
    with override_settings(RESILIENT_SESSIONS={"BREAKER_COOLDOWN": 0.2}):
        yield


# USE_TZ = False ---------------------------------------------------------------------------


@override_settings(USE_TZ=False, TIME_ZONE="Europe/Paris")
def test_a_use_tz_false_site_logs_in_renews_lists_revokes_and_cleans_up(
    fault_redis: RedisServer,
) -> None:
    make_user()
    laptop, phone = Client(), Client()
    login(laptop)
    login(phone)
    row = UserSession.objects.order_by("pk")[0]
    assert timezone.is_naive(row.expires_at) and row.is_active
    with override_settings(RESILIENT_SESSIONS={"ACTIVITY_UPDATE_INTERVAL": 0}):
        set_values(laptop, cart="1")  # a renewal writes the row
    listed = laptop.get("/account/sessions/?format=json").json()["sessions"]
    assert len(listed) == 2
    fault_redis.kill()
    assert whoami(phone) == {"user": "alice", "degraded": True}  # the backup's row checked
    stolen = captured(phone)
    response = laptop.post("/account/sessions/revoke-others/", HTTP_ACCEPT="application/json")
    assert ok(response) == {"ok": True, "revoked": 1}
    assert user_of(replay(stolen)) is None
    UserSession.objects.update(expires_at=datetime.datetime(2000, 1, 1))  # naive, local
    call_command("clearsessions", verbosity=0)
    assert not UserSession.objects.exists()


# The refuse policy in a view that does not catch it ---------------------------------------


def test_refused_login_in_the_admin_is_a_403_page(redis_server: RedisServer) -> None:
    User.objects.create_superuser("root", "root@example.com", PASSWORD)
    first = Client()
    assert ok(first.post("/login/", {"username": "root", "password": PASSWORD}))
    options = {"MAX_SESSIONS_PER_USER": 1, "SESSION_LIMIT_POLICY": "refuse"}
    with override_settings(RESILIENT_SESSIONS=options):
        response = Client(raise_request_exception=True).post(
            "/admin/login/", {"username": "root", "password": PASSWORD, "next": "/admin/"}
        )
    assert response.status_code == 403
    assert b"Too many active sessions" in response.content
    assert UserSession.objects.active().count() == 1


# A read-only request whose session ended meanwhile ----------------------------------------


def test_a_read_only_request_of_a_session_logged_out_meanwhile_answers_200(
    redis_server: RedisServer,
) -> None:
    make_user()
    client = Client()
    login(client)
    with override_settings(RESILIENT_SESSIONS={"ACTIVITY_UPDATE_INTERVAL": 0}):
        # The view reads the session; while it runs, another tab logs out; the middleware
        # then renews the backup (the activity interval is due) and finds the tombstone.
        response = client.get("/read-then-end-elsewhere/")
    assert response.status_code == 200
    assert user_of(client) is None


# Django's contract --------------------------------------------------------------------------


def test_save_of_an_unknown_key_is_an_update_error(redis_server: RedisServer) -> None:
    store = SessionStore("thiskeywasnevercreated0123456789")
    store.modified = True
    with pytest.raises(UpdateError):
        store.save()


class PrefixedKeys(SessionStore):
    def _get_new_session_key(self) -> str:
        return "site" + super()._get_new_session_key()[4:]


def test_create_uses_a_subclass_new_key(redis_server: RedisServer) -> None:
    store = PrefixedKeys()
    store["a"] = 1
    store.save()
    assert (store.session_key or "").startswith("site")
    assert PrefixedKeys(store.session_key).load() == {"a": 1}


# Values -------------------------------------------------------------------------------------


def test_a_value_the_serializer_cannot_take_fails_where_it_is_set() -> None:
    store = SessionStore()
    with pytest.raises(TypeError, match="'when' cannot be stored"):
        store["when"] = datetime.datetime.now()
    with pytest.raises(TypeError, match="'a', 'b'"):
        store.update({"a": 1, "b": {1, 2}})
    assert "when" not in store and "a" not in store  # nothing half-set
    assert not store.modified


def test_a_view_sees_the_same_types_from_redis_and_from_a_backup(
    fault_redis: RedisServer,
) -> None:
    client = Client()
    ok(client.post("/set-typed/"))
    from_redis = ok(client.get("/typed/"))
    fault_redis.kill()
    from_backup = ok(client.get("/typed/"))
    assert from_redis == from_backup
    assert from_redis["types"] == {"pair": "list", "count": "int", "keys": "str"}
    assert whoami(client)["degraded"] is True
