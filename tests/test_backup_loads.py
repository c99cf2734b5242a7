"""The "served from backups in the last N minutes" figure: per-minute rows in the database.

Each process adds what it served from backups to ``BackupLoadsMinute`` (at most every
``recent.FLUSH_INTERVAL`` seconds, after a response); ``sessionstats`` and the admin's list
of user sessions sum the window. A healthy site writes nothing; rows older than the window
go; two processes add up (the second is a real ``manage.py shell``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client, override_settings

from django_resilient_sessions import health, recent
from django_resilient_sessions.models import BackupLoadsMinute
from tests.redis_server import RedisServer
from tests.web import login, make_user, whoami

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_counts() -> Iterator[None]:
    health.reset_counters()
    recent.reset()
    yield
    recent.reset()


def stats() -> dict[str, object]:
    out = StringIO()
    call_command("sessionstats", "--json", stdout=out)
    figure: dict[str, object] = json.loads(out.getvalue())["served_from_backups"]
    return figure


def test_a_healthy_site_writes_nothing() -> None:
    make_user()
    client = Client()
    login(client)
    for _ in range(3):
        assert whoami(client)["degraded"] is False
    assert recent.flush(force=True) == 0
    assert BackupLoadsMinute.objects.count() == 0
    assert stats() == {"minutes": 15, "loads": 0, "covers": "every process sharing the database"}


def test_backup_loads_are_counted_for_sessionstats_and_the_admin(fault_redis: RedisServer) -> None:
    make_user()
    client = Client()
    login(client)
    fault_redis.kill()
    for _ in range(3):
        assert whoami(client) == {"user": "alice", "degraded": True}
    # The first response flushed its load at once; the next two wait for the interval.
    assert recent.backup_loads() == 1
    assert recent.flush(force=True) == 2
    assert recent.flush(force=True) == 0  # nothing new
    assert recent.backup_loads() == 3
    assert stats()["loads"] == 3
    assert recent.backup_loads(1) == BackupLoadsMinute.objects.get().loads == 3

    admin = get_user_model().objects.create_superuser("boss", password="pw")
    staff = Client()
    staff.force_login(admin)
    page = staff.get("/admin/django_resilient_sessions/usersession/")
    assert page.status_code == 200
    assert (
        b"Served from backups in the last 15 minutes: 3 session loads (all servers)."
        in page.content
    )
    with override_settings(RESILIENT_SESSIONS={"BACKUP_LOADS_WINDOW": None}):
        page = staff.get("/admin/django_resilient_sessions/usersession/")
        assert b"Served from backups" not in page.content
        assert stats()["loads"] is None


def test_old_minutes_are_deleted_and_outside_the_window() -> None:
    now = int(time.time() // 60)
    BackupLoadsMinute.objects.create(minute=now - 20, loads=7)
    BackupLoadsMinute.objects.create(minute=now - 5, loads=2)
    assert recent.backup_loads(15) == 2
    assert recent.backup_loads(30) == 9
    health.count("loads", label="backup")
    assert recent.flush(force=True) == 1
    assert sorted(BackupLoadsMinute.objects.values_list("minute", "loads")) == [
        (now - 5, 2),
        (now, 1),
    ]


ANOTHER_PROCESS = """
from django_resilient_sessions import health, recent
health.count("loads", 4, label="backup")
print(recent.flush(force=True))
"""


def test_every_process_adds_up(tmp_path: Path) -> None:
    """A second process (manage.py shell on the same SQLite file) adds to the same minute."""
    if os.environ.get("DRS_TEST_DB", "sqlite") != "sqlite":
        pytest.skip("the second process shares an SQLite file here")
    database = tmp_path / "site.sqlite3"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.mw_settings",
        "DRS_MW_SQLITE": str(database),
        "DRS_TEST_REDIS_URL": "redis://127.0.0.1:1/0",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    for command in (["migrate", "-v", "0"], ["shell", "-c", ANOTHER_PROCESS],
                    ["shell", "-c", ANOTHER_PROCESS]):  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "django", *command], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "django", "sessionstats", "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert json.loads(done.stdout)["served_from_backups"]["loads"] == 8
