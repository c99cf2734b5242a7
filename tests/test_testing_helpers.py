"""``django_resilient_sessions.testing`` and its pytest plugin, used as a site's tests would.

Covered:

- ``login_with_backup()`` gives any test client both cookies, a ``UserSession`` row with
  the request's details and the session it returns; it keeps an anonymous session's data
  across the login, and raises what ``login()`` raises (the ``refuse`` limit) and
  ``ImproperlyConfigured`` for another engine;
- why it exists: after Django's ``force_login()`` the client's backup is not the logged-in
  session's (an outage then shows an anonymous visitor without the cart), after
  ``login_with_backup()`` it is;
- ``redis_outage()``: refused at once, served from backups (data and writes kept,
  ``degraded``), back to Redis after the block (the outage's writes written back), and a
  logout during the outage stays a logout after it; a Sentinel or replicas configuration
  is pointed at the unreachable address alone;
- ``ResilientClient``: ``login()``, ``force_login()`` and ``aforce_login()``
  set the backup cookie; as ``client_class`` of a Django ``TestCase``;
- the pytest plugin's fixtures, and that the plugin and ``testing`` import without Django
  set up (what loading the plugin at pytest start needs).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, TestCase, override_settings
from redis.exceptions import TimeoutError as RedisTimeoutError

from django_resilient_sessions import signals
from django_resilient_sessions.exceptions import SessionLimitExceeded
from django_resilient_sessions.models import UserSession
from django_resilient_sessions.testing import (
    ResilientClient,
    backup_cookies,
    login_with_backup,
    redis_outage,
    unreachable_caches,
)
from tests.redis_server import RedisServer
from tests.web import (
    BACKUP_COOKIE,
    PASSWORD,
    captured,
    get_values,
    in_redis,
    make_user,
    replay,
    session_key,
    set_values,
    user_of,
    whoami,
)

pytest_plugins = ["django_resilient_sessions.pytest_plugin"]

ROOT = Path(__file__).resolve().parent.parent
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)


# login_with_backup ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_login_with_backup_sets_both_cookies_and_records_the_login() -> None:
    user = make_user()
    client = Client()
    session = login_with_backup(
        client, user, REMOTE_ADDR="192.0.2.7", headers={"user-agent": IPHONE}
    )
    assert session_key(client) == session.session_key
    assert set(backup_cookies(client)) == {BACKUP_COOKIE}
    assert all(backup_cookies(client).values())
    assert whoami(client) == {"user": "alice", "degraded": False}
    row = UserSession.objects.active().get()
    assert row.key_hash == session.key_hash
    assert (row.user, row.ip, row.device_type) == (user, "192.0.2.7", "mobile")


@pytest.mark.django_db
def test_login_with_backup_keeps_the_anonymous_session_data() -> None:
    client = Client()
    set_values(client, cart="42")
    anonymous_key = session_key(client)
    login_with_backup(client, make_user())
    assert session_key(client) != anonymous_key  # cycled, as login() does
    assert get_values(client) == {"cart": "42"}
    assert user_of(client) == "alice"


@pytest.mark.django_db
def test_login_with_backup_raises_what_login_raises() -> None:
    user = make_user()
    login_with_backup(Client(), user)
    with (
        override_settings(
            RESILIENT_SESSIONS={"MAX_SESSIONS_PER_USER": 1, "SESSION_LIMIT_POLICY": "refuse"}
        ),
        pytest.raises(SessionLimitExceeded),
    ):
        login_with_backup(Client(), user)
    assert UserSession.objects.active().count() == 1


@pytest.mark.django_db
@override_settings(SESSION_ENGINE="django.contrib.sessions.backends.cache")
def test_login_with_backup_needs_the_engine() -> None:
    with pytest.raises(ImproperlyConfigured, match="SESSION_ENGINE"):
        login_with_backup(Client(), make_user())


@pytest.mark.django_db
def test_force_login_leaves_no_backup_of_the_login_login_with_backup_does() -> None:
    """A cart, then a login, then an outage: what a test sees with each way to log in."""
    user = make_user()
    django_way, ours = Client(), Client()
    for client in (django_way, ours):
        set_values(client, cart="42")
    django_way.force_login(user)  # saved without the middleware: the backup is the old one
    login_with_backup(ours, user)
    with redis_outage():
        assert whoami(django_way) == {"user": None, "degraded": True}
        assert get_values(django_way) == {}
        assert whoami(ours) == {"user": "alice", "degraded": True}
        assert get_values(ours) == {"cart": "42"}


def causes(error: BaseException | None) -> list[BaseException]:
    """``error`` and the exceptions it was raised from or while handling."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


# redis_outage --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_redis_outage_serves_from_backups_and_recovers(redis_server: RedisServer) -> None:
    client = Client()
    login_with_backup(client, make_user())
    set_values(client, cart="42")
    key = session_key(client)
    lost: list[BaseException] = []

    def record(error: BaseException, **kwargs: Any) -> None:
        lost.append(error)

    signals.cache_lost.connect(record)
    try:
        with redis_outage() as url:
            assert whoami(client) == {"user": "alice", "degraded": True}
            # Refused at once, no timeout: the one failure is a refused connection.
            assert len(lost) == 1
            chain = causes(lost[0])
            assert any(isinstance(e, ConnectionRefusedError) for e in chain)
            assert not any(isinstance(e, (TimeoutError, RedisTimeoutError)) for e in chain)
            set_values(client, cart="43", step="2")
            assert get_values(client) == {"cart": "43", "step": "2"}
            assert settings.CACHES["default"]["LOCATION"] == url
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((urlsplit(url).hostname, urlsplit(url).port), timeout=1)
    finally:
        signals.cache_lost.disconnect(record)
    assert settings.CACHES["default"]["LOCATION"] == redis_server.url
    assert whoami(client) == {"user": "alice", "degraded": False}  # no cool-down to wait for
    assert get_values(client) == {"cart": "43", "step": "2"}
    assert in_redis(redis_server, key)  # written back from the backup


@pytest.mark.django_db
def test_a_logout_during_the_outage_stays_a_logout_after_it() -> None:
    client = Client()
    login_with_backup(client, make_user())
    stolen = captured(client)
    with redis_outage():
        assert client.post("/logout/").status_code == 200
        assert user_of(replay(stolen)) is None
    assert user_of(replay(stolen)) is None  # the Redis copy went with the recovery
    assert user_of(client) is None


@pytest.mark.django_db
def test_redis_outage_as_a_decorator() -> None:
    client = Client()
    login_with_backup(client, make_user())

    @redis_outage()
    def during() -> dict[str, Any]:
        return whoami(client)

    assert during() == {"user": "alice", "degraded": True}
    assert whoami(client)["degraded"] is False


def test_unreachable_caches_leave_sentinel_and_replicas_out() -> None:
    sentinel = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://mymaster/0",
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.SentinelClient",
            "SENTINELS": [("127.0.0.1", 26379)],
            "SENTINEL_KWARGS": {"password": "x"},
            "CONNECTION_POOL_CLASS": "redis.sentinel.SentinelConnectionPool",
            "SOCKET_TIMEOUT": 0.25,
        },
    }
    replicas = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"],
        "KEY_PREFIX": "site",
    }
    url = "redis://127.0.0.1:9/0"
    with override_settings(CACHES={"default": sentinel, "sessions": replicas}):
        made = unreachable_caches("default", url)
        assert made["default"] == {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": url,
            "OPTIONS": {
                "SOCKET_TIMEOUT": 0.25,
                "CONNECTION_FACTORY": "django_redis.pool.ConnectionFactory",
            },
        }
        assert made["sessions"] == replicas
        made = unreachable_caches("sessions", url)
        assert made["sessions"] == {**replicas, "LOCATION": url, "OPTIONS": {}}
        assert made["default"] == sentinel
        with pytest.raises(ImproperlyConfigured, match="no cache alias 'other'"):
            redis_outage("other").__enter__()


# ResilientClient -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_resilient_client_logins_set_the_backup_cookie() -> None:
    user = make_user()
    by_password, forced = ResilientClient(), ResilientClient()
    assert by_password.login(username="alice", password=PASSWORD)
    forced.force_login(user)
    for client in (by_password, forced):
        assert client.backup_cookies
        with redis_outage():
            assert whoami(client) == {"user": "alice", "degraded": True}
    assert not ResilientClient().login(username="alice", password="wrong")
    by_password.logout()
    assert not by_password.backup_cookies and user_of(by_password) is None


@pytest.mark.django_db
def test_resilient_client_aforce_login() -> None:
    client = ResilientClient()
    async_to_sync(client.aforce_login)(make_user())
    assert client.backup_cookies
    with redis_outage():
        assert user_of(client) == "alice"


class SiteTestCase(TestCase):
    """The docs' Django ``TestCase`` example."""

    client_class = ResilientClient

    @classmethod
    def setUpTestData(cls) -> None:
        cls.user = User.objects.create_user("bob", password=PASSWORD)

    def test_the_cart_survives_an_outage(self) -> None:
        self.client.force_login(self.user)
        set_values(self.client, cart="42")
        with redis_outage():
            response = self.client.get("/state/")
        self.assertEqual(response.json()["user"], "bob")
        self.assertEqual(response.json()["data"], {"cart": "42"})
        self.assertTrue(response.json()["degraded"])


# The pytest plugin ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_plugin_fixtures(
    resilient_client: ResilientClient, logged_in_client: Any, redis_outage: Any
) -> None:
    user = make_user()
    resilient_client.force_login(user)
    phone = logged_in_client(user, headers={"user-agent": IPHONE})
    assert isinstance(phone, ResilientClient) and phone.backup_cookies
    assert UserSession.objects.active().filter(device_type="mobile").count() == 1
    with redis_outage():
        assert user_of(resilient_client) == "alice"
        assert whoami(phone) == {"user": "alice", "degraded": True}


@pytest.mark.parametrize("module", ["pytest_plugin", "testing"])
def test_importable_before_django_is_set_up(module: str) -> None:
    """pytest loads a plugin before pytest-django has configured Django."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(ROOT)
    code = f"import django_resilient_sessions.{module}"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_the_docs_page_shows_the_helpers_as_they_are() -> None:
    """docs/testing.md: its Python compiles and names what the modules provide."""
    import re

    from django_resilient_sessions import pytest_plugin, testing

    page = (ROOT / "docs" / "testing.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    assert len(blocks) >= 4
    for block in blocks:
        compile(block, "docs/testing.md", "exec")
    for name in ("login_with_backup", "ResilientClient", "backup_cookies", "redis_outage"):
        assert name in testing.__all__ and f"`{name}" in page, name
    for fixture in pytest_plugin.__all__:
        assert f"| `{fixture}` |" in page, fixture
    assert 'pytest_plugins = ["django_resilient_sessions.pytest_plugin"]' in page
