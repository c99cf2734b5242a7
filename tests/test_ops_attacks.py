"""The operations endpoints attacked as an operator at 3 a.m. and as an attacker would.

Real parts only: private redis-server processes (and a small Redis Cluster), the test
database, gunicorn as ``tests/gunicorn_site.py`` starts it, ``manage.py`` in a process of
its own, prometheus-client's multiprocess files on disk.

- a metrics sink that cannot write (the multiprocess directory removed under a running
  site, as a ``/tmp`` cleaner does) must cost the metrics, never a request;
- a gunicorn worker killed while its breaker is open must not hold the breaker gauge at 1
  once the live workers closed theirs (the documented ``child_exit`` hook), and the
  counters stay monotonic over the worker's death;
- one request loads its session once (``loads_total``), adoption's second look included;
- a Redis password never shows in the health view, ``sessionstats --check`` or the logs;
- a wrong Redis password on a cluster is ``down``, as off a cluster;
- metrics scrapes waiting on a locked table do not make the health view report a database
  that answers as one that does not;
- ``sessionstats --check`` exits 0/1/2 with one line, never a traceback (whose exit
  status 1 would read as "degraded");
- the served-from-backups figure never claims a longer window than it covers.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.cache import caches
from django.db import connection
from django.test import Client, override_settings

from django_resilient_sessions import health, recent, status
from django_resilient_sessions.breaker import reset_breakers
from tests.adoption_site import DB, previous_site, resilient_site
from tests.gunicorn_site import (
    Server,
    children,
    django,
    gunicorn_site,
    pg_name,
    site_database,
    site_env,
)
from tests.redis_server import RedisServer, free_port
from tests.test_health import command
from tests.test_metrics_live import BREAKER, COOLDOWN, PASSWORD, USERS, Site, grew, loads
from tests.web import PASSWORD as WEB_PASSWORD
from tests.web import make_user, ok, replay

SECRET = "hunter2-not-for-logs"
REPO = Path(__file__).resolve().parent.parent


# -- a metrics sink that fails ------------------------------------------------------------

REMOVED_DIRECTORY = """
import json, os, shutil
import django
django.setup()
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.test.utils import setup_test_environment
setup_test_environment()
call_command("migrate", verbosity=0)
User.objects.create_user("ann", password="pw")
shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"])  # a /tmp cleaner, a wrong deploy step
client = Client(raise_request_exception=False)
login = client.post("/login/", {"username": "ann", "password": "pw"})
who = client.get("/whoami/")
print(json.dumps({"login": login.status_code, "whoami": [who.status_code, who.json()]}))
"""


def test_a_metrics_directory_that_vanished_costs_the_metrics_not_the_login(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    prometheus = tmp_path / "prometheus"
    prometheus.mkdir()
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.mw_settings",
        "DRS_TEST_DB": "sqlite",
        "DRS_MW_SQLITE": str(tmp_path / "site.sqlite3"),
        "DRS_TEST_REDIS_URL": redis_server.url,
        "PYTHONPATH": str(REPO),
        "PROMETHEUS_MULTIPROC_DIR": str(prometheus),
    }
    done = subprocess.run([sys.executable, "-c", REMOVED_DIRECTORY], env=environment, cwd=REPO,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"login": 200, "whoami": [200, {"user": "ann", "degraded": False}]}, (
        done.stderr[-3000:]
    )
    assert "FileNotFoundError" in done.stderr  # said, once
    assert done.stderr.count("Metrics could not be recorded") == 1


# -- a worker killed while its breaker is open --------------------------------------------

GUNICORN_CONF = "from django_resilient_sessions.metrics import child_exit  # noqa: F401\n"


@pytest.fixture
def hooked_site(fault_redis: RedisServer, tmp_path: Path) -> Iterator[Server]:
    """The live two-worker site, started with the gunicorn hook docs/production.md shows."""
    prometheus = tmp_path / "prometheus"
    prometheus.mkdir()
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(GUNICORN_CONF)
    with site_database(tmp_path, pg_name("ops_attacks")) as database:
        env = site_env(database, fault_redis.url, PROMETHEUS_MULTIPROC_DIR=str(prometheus))
        django(env, "migrate", "--no-input", "-v", "0")
        create = (
            "from django.contrib.auth.models import User\n"
            f"for name in {USERS!r}:\n"
            f"    User.objects.create_user(name, password={PASSWORD!r})\n"
        )
        django(env, "shell", "-c", create)
        with gunicorn_site(env, tmp_path, workers=2, config=config) as server:
            yield server


def replaced(server: Server, dead: int) -> set[int]:
    """Wait until gunicorn has replaced the worker ``dead``; the live workers then."""
    deadline = time.monotonic() + 30
    while True:
        now = children(server.process.pid)
        if dead not in now and len(now) == 2:
            for _ in range(50):  # the new worker answers once it has imported Django
                try:
                    requests.get(server.url + "/whoami/", timeout=5)
                    break
                except requests.RequestException:
                    time.sleep(0.1)
            return now
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.05)


def test_a_killed_worker_does_not_hold_the_breaker_gauge(
    hooked_site: Server, fault_redis: RedisServer
) -> None:
    site = Site(hooked_site)
    for user in USERS:
        assert site.send(user, "POST", "/login/", username=user, password=PASSWORD)["ok"]
    start = site.scrape()

    fault_redis.kill()
    site.loads = 0
    site.until_every_worker(USERS, "open")
    opened = site.scrape()
    assert opened[BREAKER] == 1
    assert loads(start, opened) == {"backup": site.loads}
    served_before = sum(loads(start, opened).values())

    victim = sorted(hooked_site.workers)[0]
    os.kill(victim, signal.SIGKILL)  # the OOM killer, a segfault, gunicorn's timeout
    hooked_site.workers = replaced(hooked_site, victim)
    site.breakers.pop(victim, None)

    fault_redis.start()
    time.sleep(COOLDOWN + 0.1)
    site.loads = 0
    site.until_every_worker(USERS, "closed")
    back = site.scrape()
    # The dead worker's counts stay in the sums (counters never go down) ...
    assert sum(loads(opened, back).values()) == site.loads
    assert sum(loads(start, back).values()) == served_before + site.loads
    assert grew(opened, back, "resilient_sessions_saves_total", copy="cache") >= 0
    # ... and its open breaker does not: every live worker closed its own.
    assert back[BREAKER] == 0, hooked_site.log_tail()


# -- one request, one load ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_replayed_adopted_key_counts_one_load() -> None:
    """Adoption's "already adopted" branch loads again: still one load for the request."""
    client = Client()
    with previous_site(DB):
        assert ok(client.post("/set/", {"cart": "2 pears"}))["ok"] is True
    old = {"sessionid": client.cookies["sessionid"].value}
    with resilient_site(DB):
        assert ok(replay(old).get("/state/"))["data"] == {"cart": "2 pears"}  # adopted
        caches["default"].clear()  # Redis lost the adopted copy
        health.reset_counters()
        replayed = ok(replay(old).get("/state/"))  # no backup, no row: ADOPT, "already adopted"
        loaded = health.snapshot()["labelled"].get("loads", {})
    assert replayed["data"] == {}
    assert sum(loaded.values()) == 1, loaded


# -- secrets ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_cluster_location_error_does_not_show_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caches_setting = {
        "default": {
            "BACKEND": "django_resilient_sessions.cache.RedisClusterCache",
            # A database index Redis Cluster does not have: the error names the URL.
            "LOCATION": [f"redis://:{SECRET}@127.0.0.1:{free_port()}/3"],
        }
    }
    with override_settings(CACHES=caches_setting), caplog.at_level(logging.DEBUG):
        reset_breakers()
        try:
            code, body = _health()
        finally:
            reset_breakers()
    assert (code, body["status"]) == (503, "down")
    assert "names a database" in body["configuration_error"]
    assert SECRET not in json.dumps(body)
    assert SECRET not in caplog.text


def _health() -> tuple[int, dict[str, Any]]:
    response = Client().get("/-/health/")
    data: dict[str, Any] = response.json()
    return response.status_code, data


# -- a wrong password on a cluster ----------------------------------------------------------


@pytest.fixture(scope="module")
def small_cluster() -> Iterator[Any]:
    from tests.redis_cluster import LocalCluster

    with LocalCluster(masters=3, replicas_per_master=0) as cluster:
        yield cluster


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_a_wrong_password_on_a_cluster_is_down(small_cluster: Any) -> None:
    """Off a cluster a wrong password is ``down`` (test_health); on a cluster too."""
    from django_resilient_sessions.cache import forget_clients

    urls = [url.replace("redis://", "redis://nobody:wrong@") for url in small_cluster.urls]
    caches_setting = {
        "default": {
            "BACKEND": "django_resilient_sessions.cache.RedisClusterCache",
            "LOCATION": urls,
            "OPTIONS": {"socket_timeout": 0.25, "socket_connect_timeout": 0.25},
        }
    }
    forget_clients()
    with override_settings(CACHES=caches_setting):
        reset_breakers()
        try:
            first = status.check()
            again = status.check()  # the alias's breaker is open now: no new attempt
        finally:
            forget_clients()
            reset_breakers()
    for report in (first, again):
        assert report.status == status.DOWN, report.reasons
        assert "refuses us for good" in report.reasons[0]


# -- metrics scrapes and the health view share the database checks --------------------------


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a table lock on PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_scrapes_stuck_on_a_locked_table_do_not_take_the_site_down(
    fault_redis: RedisServer,
) -> None:
    """Redis is down (backups serve) and something holds a lock on the purge queue's table
    (a migration, VACUUM FULL): the scrapes' COUNT waits, SELECT 1 does not.  The health
    view must still see a database that answers: degraded, not a 503 on every server."""
    import psycopg

    from django_resilient_sessions.dbaccess import bounded
    from django_resilient_sessions.exceptions import LedgerUnavailable
    from django_resilient_sessions.models import PendingPurge

    params = connection.get_connection_params()
    holder = psycopg.connect(**{k: v for k, v in params.items() if k != "cursor_factory"})
    fault_redis.kill()
    try:
        holder.execute(f"LOCK TABLE {PendingPurge._meta.db_table} IN ACCESS EXCLUSIVE MODE")
        with override_settings(RESILIENT_SESSIONS={"HEALTH_CHECK_TIMEOUT": 0.2}):
            for _ in range(6):  # Prometheus scraping, each scrape waiting on the lock
                scrape = Client().get("/-/metrics/")
                assert b"resilient_sessions_ledger_up 0.0" in scrape.content
            code, body = _health()
    finally:
        holder.rollback()
        holder.close()
        for _ in range(500):  # the scrapes' threads finish once the lock is gone
            try:
                bounded(lambda: None, 5.0, lane="metrics")
                break
            except LedgerUnavailable:
                time.sleep(0.01)
    assert body["ledger"]["answers"] is True, body
    assert (code, body["status"]) == (200, "degraded"), body["reasons"]


# -- sessionstats --check, never a traceback -----------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value"),
    [("HEALTH_CHECK_TIMEOUT", "1s"), ("BACKUP_LOADS_WINDOW", "15m")],
)
def test_sessionstats_check_with_a_malformed_setting_answers_one_line(
    redis_server: RedisServer, tmp_path: Path, setting: str, value: str
) -> None:
    """``--check`` skips the system checks (to report a misconfiguration as down), so a
    value they would refuse reaches it: one line, exit 2 (the error logged), not an uncaught
    exception."""
    settings_module = tmp_path / "bad_settings.py"
    settings_module.write_text(
        "from tests.mw_settings import *  # noqa: F403\n"
        f"RESILIENT_SESSIONS = {{'BREAKER_COOLDOWN': 0.5, {setting!r}: {value!r}}}\n"
    )
    done = command(redis_server.url, tmp_path / "site.sqlite3", "sessionstats", "--check",
                   DJANGO_SETTINGS_MODULE="bad_settings",
                   PYTHONPATH=f"{tmp_path}{os.pathsep}{Path(__file__).parent.parent}")  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr[-2000:])  # uncaught: 1, "degraded"
    [line] = done.stdout.strip().splitlines()
    assert line.startswith("RESILIENT SESSIONS DOWN: the health check cannot run: "), line
    assert repr(value) in line, line


@pytest.mark.django_db(transaction=True)
def test_the_health_view_with_a_malformed_setting_answers_503_not_500() -> None:
    with override_settings(RESILIENT_SESSIONS={"HEALTH_CHECK_TIMEOUT": "1s"}):
        response = Client(raise_request_exception=False).get("/-/health/")
    assert response.status_code == 503, response.content[:500]
    assert response.json()["status"] == "down"


# -- the served-from-backups figure -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_figure_never_claims_more_minutes_than_it_covers(fault_redis: RedisServer) -> None:
    from django_resilient_sessions.management.commands.sessionstats import served_from_backups

    with override_settings(RESILIENT_SESSIONS={"BACKUP_LOADS_WINDOW": 120}):
        # The database keeps the window's rows; the health view's per-process ring an hour.
        assert served_from_backups(600)["minutes"] == 120
        assert served_from_backups(30)["minutes"] == 30
        health.reset_counters()
        recent.reset()
        body = _health()[1]
    assert body["backup_loads"]["minutes"] == health.RING_MINUTES


# -- the health view leaves the request's session alone ---------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_health_view_neither_loads_nor_sets_a_session() -> None:
    make_user()
    client = Client()
    assert ok(client.post("/login/", {"username": "alice", "password": WEB_PASSWORD}))["ok"] is True
    health.reset_counters()
    for browser in (client, Client()):
        response = browser.get("/-/health/")
        assert response.status_code == 200
        assert not response.cookies, response.cookies
    assert health.snapshot()["labelled"].get("loads", {}) == {}
