"""The read-only ``UserSession`` admin and its "Revoke selected sessions" action.

Sessions are made by real logins (rows, Redis copies and cookies are the engine's own);
the admin user logs in with ``Client.force_login``, through the engine as well.  Covered:

- the changelist loads with its columns and status texts; the status filter (active /
  ended or expired), the end reason and device type filters and the search by user name
  and by IP select the right rows;
- no add page (403), a change page without a save button that refuses a POST (403);
- the action ends the selected rows only, deletes their Redis copies and logs those
  devices out; a staff user without the delete permission neither sees nor can run it,
  one with it can.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, Permission
from django.http import HttpResponse
from django.test import Client, override_settings
from django.utils import timezone

from django_resilient_sessions.cachecopy import hash_key
from django_resilient_sessions.models import UserSession
from tests.redis_server import RedisServer
from tests.web import has_copy, redis_key_for_hash

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"
SESSION_COOKIE = "sessionid"
CHANGELIST = "/admin/django_resilient_sessions/usersession/"
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
    with override_settings(RESILIENT_SESSIONS={"BREAKER_COOLDOWN": 0.2}):
        yield


class Device:
    """A browser logged in as a user, and its ledger row."""

    def __init__(self, username: str, agent: str, ip: str) -> None:
        self.client = Client()
        response = self.client.post(
            "/login/",
            {"username": username, "password": PASSWORD},
            headers={"user-agent": agent},
            REMOTE_ADDR=ip,
        )
        assert response.status_code == 200, response.content
        self.key_hash = hash_key(self.client.cookies[SESSION_COOKIE].value)

    @property
    def row(self) -> UserSession:
        return UserSession.objects.get(key_hash=self.key_hash)

    def whoami(self) -> str | None:
        user: str | None = self.client.get("/whoami/").json()["user"]
        return user


@pytest.fixture
def devices() -> dict[str, Device]:
    """alice on a phone and a PC, bob on a PC (revoked), carol on a phone (expired)."""
    for name in ("alice", "bob", "carol"):
        get_user_model().objects.create_user(name, password=PASSWORD)
    made = {
        "alice_phone": Device("alice", IPHONE, "203.0.113.7"),
        "alice_pc": Device("alice", CHROME_WINDOWS, "198.51.100.1"),
        "bob_pc": Device("bob", CHROME_WINDOWS, "198.51.100.2"),
        "carol_phone": Device("carol", IPHONE, "198.51.100.3"),
    }
    made["bob_pc"].row.revoke()
    UserSession.objects.filter(key_hash=made["carol_phone"].key_hash).update(
        expires_at=timezone.now() - UserSession.grace() - timedelta(seconds=1)
    )
    return made


def staff(username: str, *permissions: str, superuser: bool = False) -> Client:
    model: Any = get_user_model()
    if superuser:
        user: AbstractUser = model.objects.create_superuser(username, password=PASSWORD)
    else:
        user = model.objects.create_user(username, password=PASSWORD, is_staff=True)
        for codename in permissions:
            user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def admin_client() -> Client:
    return staff("admin", superuser=True)


def shown(response: HttpResponse) -> set[int]:
    """Primary keys of the rows on a changelist page."""
    assert response.status_code == 200
    return {obj.pk for obj in response.context["cl"].result_list}


def pks(devices: dict[str, Device], *names: str) -> set[int]:
    return {devices[name].row.pk for name in names}


def admin_rows() -> set[int]:
    """The rows of the admin users' own logins (force_login goes through the engine)."""
    return set(UserSession.objects.filter(user__is_staff=True).values_list("pk", flat=True))


def action_choices(response: HttpResponse) -> list[str]:
    form = response.context["action_form"]  # None when no action is available at all
    return [] if form is None else [name for name, _ in form.fields["action"].choices]


def redis_key(key_hash: str) -> str:
    return redis_key_for_hash(key_hash)


def in_redis(server: RedisServer, key_hash: str) -> bool:
    with server.client() as raw:
        return has_copy(raw, redis_key(key_hash))


# Changelist ---------------------------------------------------------------------------------


def test_status_column_and_filter_agree_on_a_row_within_its_grace(
    admin_client: Client, devices: dict[str, Device]
) -> None:
    """Just past ``expires_at`` but within the grace, a row is active everywhere (the backup
    check, ``active()``, the filter, the column): one definition of "active"."""
    phone = devices["alice_phone"].row
    UserSession.objects.filter(pk=phone.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    active = shown(admin_client.get(CHANGELIST + "?status=active"))
    assert phone.pk in active
    assert UserSession.objects.active().filter(pk=phone.pk).exists()
    response = admin_client.get(CHANGELIST + "?status=active&q=alice")
    html = response.content.decode()
    assert 'class="field-status">expired<' not in html
    assert html.count('class="field-status">active<') == len(shown(response))


def test_changelist_columns_and_status(admin_client: Client, devices: dict[str, Device]) -> None:
    response = admin_client.get(CHANGELIST)
    assert shown(response) == pks(devices, *devices) | admin_rows()
    html = response.content.decode()
    for header in ("User", "Device", "IP address", "Logged in", "Last activity", "Status"):
        assert f">{header}<" in html, header
    assert "ended (revoked)" in html
    assert ">expired<" in html
    assert "203.0.113.7" in html
    phone = devices["alice_phone"].row
    assert f"{phone.browser} / {phone.os}" in html
    # The filters are offered.
    assert "?status=active" in html and "?status=ended" in html
    assert "end_reason__exact=revoked" in html
    assert "device_type=mobile" in html


@pytest.mark.parametrize(
    ("query", "expected", "with_admin"),
    [
        ({"status": "active"}, ["alice_phone", "alice_pc"], True),
        ({"status": "ended"}, ["bob_pc", "carol_phone"], False),
        ({"end_reason__exact": "revoked"}, ["bob_pc"], False),
        ({"device_type": "mobile"}, ["alice_phone", "carol_phone"], False),
        ({"status": "active", "device_type": "desktop"}, ["alice_pc"], False),
        ({"q": "alice"}, ["alice_phone", "alice_pc"], False),
        ({"q": "203.0.113.7"}, ["alice_phone"], False),
        ({"q": "nobody"}, [], False),
    ],
    ids=[
        "active",
        "ended-or-expired",
        "end-reason",
        "device-type",
        "active-desktop",
        "search-user",
        "search-ip",
        "search-none",
    ],
)
def test_changelist_filters_and_search(
    admin_client: Client,
    devices: dict[str, Device],
    query: dict[str, str],
    expected: list[str],
    with_admin: bool,
) -> None:
    response = admin_client.get(CHANGELIST, query)
    admins = admin_rows() if with_admin else set()
    assert shown(response) == pks(devices, *expected) | admins


# Read-only ----------------------------------------------------------------------------------


def test_no_add_page(admin_client: Client) -> None:
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403
    assert admin_client.post(f"{CHANGELIST}add/", {}).status_code == 403
    assert f'href="{CHANGELIST}add/"' not in admin_client.get(CHANGELIST).content.decode()


def test_change_page_is_read_only(admin_client: Client, devices: dict[str, Device]) -> None:
    row = devices["alice_phone"].row
    page = admin_client.get(f"{CHANGELIST}{row.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="_save"' not in html
    assert "203.0.113.7" in html  # shown, read-only

    response = admin_client.post(
        f"{CHANGELIST}{row.pk}/change/", {"ip": "192.0.2.66", "end_reason": "revoked"}
    )
    assert response.status_code == 403
    after = devices["alice_phone"].row
    assert (after.ip, after.end_reason, after.ended_at) == ("203.0.113.7", "", None)


# The revoke action --------------------------------------------------------------------------


def test_revoke_action_ends_the_selected_sessions(
    admin_client: Client, devices: dict[str, Device], redis_server: RedisServer
) -> None:
    phone, pc = devices["alice_phone"], devices["alice_pc"]
    assert in_redis(redis_server, phone.key_hash)
    assert "revoke_sessions" in action_choices(admin_client.get(CHANGELIST))

    response = admin_client.post(
        CHANGELIST,
        {"action": "revoke_sessions", "_selected_action": [phone.row.pk], "index": 0},
        follow=True,
    )
    assert response.status_code == 200
    assert "1 session revoked." in response.content.decode()

    assert phone.row.end_reason == "revoked" and phone.row.ended_at is not None
    assert not in_redis(redis_server, phone.key_hash)
    assert phone.whoami() is None
    assert pc.row.is_active
    assert in_redis(redis_server, pc.key_hash)
    assert pc.whoami() == "alice"


def test_revoke_action_on_several_and_already_ended(
    admin_client: Client, devices: dict[str, Device], redis_server: RedisServer
) -> None:
    selected = pks(devices, "alice_phone", "alice_pc", "bob_pc")
    bob_ended_at = devices["bob_pc"].row.ended_at
    response = admin_client.post(
        CHANGELIST, {"action": "revoke_sessions", "_selected_action": sorted(selected)}, follow=True
    )
    # bob's session had already ended: two are revoked, bob's row is left as it was.
    assert "2 sessions revoked." in response.content.decode()
    assert devices["alice_phone"].whoami() is None
    assert devices["alice_pc"].whoami() is None
    assert not in_redis(redis_server, devices["alice_pc"].key_hash)
    assert devices["bob_pc"].row.ended_at == bob_ended_at
    assert admin_client.get(CHANGELIST).status_code == 200  # the admin's own session lives


def test_staff_without_delete_permission_cannot_revoke(devices: dict[str, Device]) -> None:
    viewer = staff("viewer", "view_usersession")
    page = viewer.get(CHANGELIST)
    assert page.status_code == 200
    assert "revoke_sessions" not in action_choices(page)
    assert "Revoke selected sessions" not in page.content.decode()

    phone = devices["alice_phone"]
    response = viewer.post(
        CHANGELIST, {"action": "revoke_sessions", "_selected_action": [phone.row.pk]}
    )
    assert response.status_code in (200, 302)
    assert phone.row.is_active
    assert phone.whoami() == "alice"


def test_staff_with_delete_permission_can_revoke(devices: dict[str, Device]) -> None:
    revoker = staff("revoker", "view_usersession", "delete_usersession")
    assert "revoke_sessions" in action_choices(revoker.get(CHANGELIST))
    phone = devices["alice_phone"]
    revoker.post(CHANGELIST, {"action": "revoke_sessions", "_selected_action": [phone.row.pk]})
    assert phone.row.end_reason == "revoked"
    assert phone.whoami() is None


def test_staff_without_view_permission_is_refused(devices: dict[str, Device]) -> None:
    nobody = staff("nobody")
    assert nobody.get(CHANGELIST).status_code == 403
    assert devices["alice_phone"].row.is_active
