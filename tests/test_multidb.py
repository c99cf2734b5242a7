"""Multi-database sites, over HTTP (Django's test ``Client``, the full middleware stack,
two real databases: ``default`` and ``other``, both SQLite or both PostgreSQL).

- The ledger routed with the user model to the second database: logins, the sessions
  list, a revocation, an outage served from backups (the ledger vouching from ``other``)
  and a logout all work, and no ledger row lands on ``default``.
- Reads routed to a replica that lags: the engine reads what it decides on from the
  primary, so an ended login that the replica still shows active stays ended.
- A router that sends the ledger away from the user model (Django's own
  ``admin_views.test_multidb`` router): check E011, and where checks do not run a login
  is the 503 page saying nothing changed (the ledger's foreign key cannot reference the
  user), never a 500, and no login.

The engine does not follow the user model's database by itself: the site's routers
decide where every model lives, as for Django's own apps (see docs/quickstart.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.test import Client, override_settings

from django_resilient_sessions.models import PendingPurge, UserSession
from tests.redis_server import RedisServer
from tests.web import PASSWORD, captured, login, make_user, ok, replay, user_of, whoami

pytestmark = pytest.mark.django_db(databases=["default", "other"], transaction=True)

WITH_THE_USERS = "tests.testapp.wiring.UsersOnOtherRouter"
ALL_BUT_CONTRIB = "tests.testapp.wiring.AllButContribRouter"
LAGGING_REPLICA = "tests.testapp.wiring.LaggingReplicaRouter"


@pytest.fixture(autouse=True)
def short_cooldown() -> Iterator[None]:
    with override_settings(RESILIENT_SESSIONS={"BREAKER_COOLDOWN": 0.2}):
        yield


def e011() -> list[str]:
    return [m.msg for m in run_checks() if m.id == "django_resilient_sessions.E011"]


def test_the_ledger_routed_with_the_users_to_a_second_database(fault_redis: RedisServer) -> None:
    with override_settings(DATABASE_ROUTERS=[WITH_THE_USERS]):
        assert e011() == []
        make_user()
        assert User.objects.using("other").filter(username="alice").exists()
        assert not User.objects.using("default").exists()
        laptop, phone, tablet = Client(), Client(), Client()
        for device in (laptop, phone, tablet):
            login(device)
        assert UserSession.objects.using("other").filter(ended_at=None).count() == 3
        assert not UserSession.objects.using("default").exists()
        listed = ok(laptop.get("/account/sessions/?format=json"))["sessions"]
        assert len(listed) == 3 and sum(s["current"] for s in listed) == 1

        # An outage: each backup's login is vouched for by its row on "other".
        fault_redis.kill()
        assert whoami(phone) == {"user": "alice", "degraded": True}
        stolen = captured(tablet)
        revoked = ok(laptop.post("/account/sessions/revoke-others/?format=json"))
        assert revoked == {"ok": True, "revoked": 2}
        assert user_of(phone) is None and user_of(replay(stolen)) is None
        assert PendingPurge.objects.using("other").count() == 2  # the Redis deletions to do
        assert not PendingPurge.objects.using("default").exists()

        # Logout during the outage: ended on "other", for good.
        kept = captured(laptop)
        assert ok(laptop.post("/logout/")) == {"ok": True}
        assert user_of(replay(kept)) is None
        assert not UserSession.objects.using("other").filter(ended_at=None).exists()
        assert not UserSession.objects.using("default").exists()


def test_a_router_sending_the_ledger_away_from_the_users_is_e011_and_refused_logins(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    make_user()  # on "default", with auth
    with override_settings(DATABASE_ROUTERS=[ALL_BUT_CONTRIB]):
        messages = e011()
        assert len(messages) == 1 and "'other'" in messages[0] and "'default'" in messages[0]
        client = Client(raise_request_exception=False)
        response = client.post("/login/", {"username": "alice", "password": PASSWORD})
        assert response.status_code == 503
        assert b"nothing was changed" in response.content
        assert response["Retry-After"]
        assert "IntegrityError" in caplog.text  # the foreign key, on "other"
        assert user_of(client) is None
        assert not UserSession.objects.using("other").exists()
        assert not UserSession.objects.using("default").exists()


def test_a_lagging_replica_never_vouches_for_an_ended_login(fault_redis: RedisServer) -> None:
    user = make_user()
    user.save(using="other")  # replicated
    with override_settings(DATABASE_ROUTERS=[LAGGING_REPLICA]):
        assert e011() == []
        client = Client()
        login(client)
        row = UserSession.objects.using("default").get()
        row.save(using="other")  # replicated; nothing after this is
        stolen = captured(client)
        fault_redis.kill()
        assert whoami(client) == {"user": "alice", "degraded": True}
        assert ok(client.post("/logout/")) == {"ok": True}
        assert UserSession.objects.using("default").get().ended_at is not None
        assert UserSession.objects.using("other").get().ended_at is None  # the replica lags
        # The backup's login is checked on the primary: ended, whatever the replica says.
        assert user_of(replay(stolen)) is None
        assert user_of(replay(stolen)) is None
