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


