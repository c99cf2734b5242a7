"""``adoptsessions`` over 10,000 and 100,000 sessions with flat memory (``make test-adoption``).

PostgreSQL (``django_session``) and Django's cache engine keys in a private redis-server.
The command runs in a fresh process (tests/adoption_rss.py) so that its peak resident set
is its own: the peak over 100,000 sessions must not exceed the peak over 10,000 by more
than a few megabytes (a store loaded whole would add hundreds). ``DRS_ADOPT_SCALE`` sets
the large size (default 100000).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from django.db import connection

from django_resilient_sessions.models import AdoptedSession, UserSession
from tests.adoption_seed import make_users, seed_cache, seed_table
from tests.adoption_site import CACHE, DB
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.adoption_scale]

LARGE = int(os.environ.get("DRS_ADOPT_SCALE", "100000"))
SMALL = LARGE // 10
#: What the peak may grow by from SMALL to LARGE sessions (kilobytes).
SLACK_KB = 12 * 1024


def adopt_in_a_process(engine: str, server: RedisServer) -> dict[str, Any]:
    env = dict(os.environ, DRS_TEST_REDIS_URL=server.url)
    if connection.vendor == "postgresql":
        env["DRS_TEST_DB"] = "postgres"
        env["DRS_TEST_PG_NAME"] = connection.settings_dict["NAME"]
    done = subprocess.run(
        [sys.executable, "-m", "tests.adoption_rss", engine, "1000"],
        env=env, capture_output=True, text=True, check=False, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(engine, result)  # the figures, for the report (pytest -s)
    return result


@pytest.mark.parametrize("engine", (DB, CACHE))
def test_memory_stays_flat_from_10k_to_100k(engine: str, redis_server: RedisServer) -> None:
    if engine == DB and connection.vendor != "postgresql":
        pytest.skip("a fresh process cannot share SQLite's in-memory test database")
    users = make_users(1000)
    seed = seed_table if engine == DB else seed_cache
    peaks = []
    for size in (SMALL, LARGE):
        seed(size, users)
        result = adopt_in_a_process(engine, redis_server)
        assert result["summary"].startswith(f"Sessions adopted: {size} ({size // 2} logged in")
        peaks.append(result["peak_kb"])
    assert AdoptedSession.objects.count() == SMALL + LARGE
    assert UserSession.objects.count() == (SMALL + LARGE) // 2
    assert peaks[1] - peaks[0] < SLACK_KB, peaks
