"""The health view and ``sessionstats --check`` against real Redis servers and databases.

- healthy: 200 ``ok``, exit 0; Redis killed or hung: 200 ``degraded``, exit 1 (a Redis
  outage must not take the site out of the load balancer); after recovery ``ok`` again;
- a Redis that wants a password we do not have (a private ``redis-server --requirepass``):
  503 ``down``, exit 2, with the reason; a session cache that cannot be configured: 503;
- a database that cannot be opened: ``degraded`` with Redis up, ``down`` with Redis down
  too (FAIL_CLOSED), ``degraded`` again with FAIL_CLOSED off;
- without prometheus-client and OpenTelemetry the site works, the metrics view answers
  501 and check W006 says why.

The command runs as a real ``manage.py`` process (``tests.mw_settings``, a database file of
its own), so its exit status is the one cron and Nagios see.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client, override_settings

from django_resilient_sessions import health as health_counters
from django_resilient_sessions import status
from tests.redis_server import RedisServer, django_cache_pointing_at, forget_django_redis_pools
from tests.web import login, make_user, whoami

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "s3cret-for-tests"
COOLDOWN = 0.2


class PasswordRedis(RedisServer):
    """A redis-server that wants a password (the helper's own client knows it)."""

    def __init__(self) -> None:
        super().__init__(extra_args=("--requirepass", PASSWORD))

    def client(self, **kwargs: Any) -> Any:
        kwargs.setdefault("password", PASSWORD)
        return super().client(**kwargs)


@pytest.fixture
def password_redis(redis_server: RedisServer) -> Iterator[PasswordRedis]:
    with PasswordRedis() as server:
        try:
            yield server
        finally:
            forget_django_redis_pools(server.url)


def health(client: Client | None = None) -> tuple[int, dict[str, Any]]:
    response = (client or Client()).get("/-/health/")
    assert response["Content-Type"] == "application/json"
    assert "no-cache" in response["Cache-Control"]
    body: dict[str, Any] = response.json()
    return response.status_code, body


@pytest.mark.django_db(transaction=True)
def test_health_through_an_outage(fault_redis: RedisServer) -> None:
    health_counters.reset_counters()  # the figure below is this process's own
    with override_settings(RESILIENT_SESSIONS={"BREAKER_COOLDOWN": COOLDOWN}):
        make_user()
        client = Client()
        login(client)
        code, body = health()
        assert (code, body["status"]) == (200, "ok")
        assert body["ledger"] == {"database": "default", "answers": True, "error": ""}
        [node] = body["nodes"]
        assert node["name"] == "default" and node["answers"] is True
        assert node["breaker"] == "closed" and node["round_trip_ms"] is not None

        fault_redis.kill()
        assert whoami(client) == {"user": "alice", "degraded": True}
        code, body = health()
        assert (code, body["status"]) == (200, "degraded")
        [node] = body["nodes"]
        assert node["answers"] is False and node["misconfigured"] is False
        assert node["breaker"] == "open" and "ConnectionError" in node["last_error"]
        assert node["degraded_seconds"] >= 0
        assert any("does not answer" in reason for reason in body["reasons"])
        assert body["backup_loads"] == {"minutes": 15, "this_process": 1}

        fault_redis.start()
        fault_redis.pause()  # hung: the PING times out after BREAKER_PROBE_TIMEOUT
        try:
            code, body = health()
            assert (code, body["status"]) == (200, "degraded")
            assert "Timeout" in body["nodes"][0]["error"]
        finally:
            fault_redis.resume()

        time.sleep(COOLDOWN + 0.05)
        assert whoami(client) == {"user": "alice", "degraded": False}
        code, body = health()
        assert (code, body["status"]) == (200, "ok")


@pytest.mark.django_db(transaction=True)
def test_a_wrong_password_is_down(password_redis: PasswordRedis) -> None:
    with django_cache_pointing_at(password_redis.url):  # no password in the URL
        code, body = health()
    assert (code, body["status"]) == (503, "down")
    [node] = body["nodes"]
    assert node["misconfigured"] is True and "AuthenticationError" in node["error"]
    assert "refuses us for good" in body["reasons"][0]


@pytest.mark.django_db(transaction=True)
def test_a_cache_that_cannot_be_configured_is_down(tmp_path: Path) -> None:
    # (Every request of such a site fails in the middleware: the check itself must answer.)
    with override_settings(SESSION_CACHE_ALIAS="missing"):
        report = status.check()
    assert report.status == status.DOWN
    assert "is not a usable cache" in report.configuration_error
    done = command("redis://127.0.0.1:1/0", tmp_path / "site.sqlite3", "sessionstats", "--check",
                   DRS_SESSION_CACHE_ALIAS="missing")  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout.startswith("RESILIENT SESSIONS DOWN: session cache 'missing' misconfigured")


def test_judge_double_outage() -> None:
    """The rule for both down, in isolation: FAIL_CLOSED decides."""

    def report() -> status.Report:
        node = status.Node("default", None, answers=False, error="ConnectionError: refused")
        ledger = status.Ledger("default", answers=False, error="no answer within 1 s")
        return status.Report(status.OK, [], "default", [node], ledger)

    assert status.judge(report(), fail_closed=True).status == status.DOWN
    assert status.judge(report(), fail_closed=False).status == status.DEGRADED
    one_up = report()
    one_up.nodes.append(status.Node("default@127.0.0.1:7001", "127.0.0.1:7001", answers=True))
    assert status.judge(one_up, fail_closed=True).status == status.DEGRADED


# -- sessionstats --check, a real process ----------------------------------------------------


def command(
    redis_url: str, database: Path, *args: str, python: bool = False, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.mw_settings",
        "DRS_TEST_DB": "sqlite",
        "DRS_MW_SQLITE": str(database),
        "DRS_TEST_REDIS_URL": redis_url,
        "PYTHONPATH": str(REPO),
        **env,
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.run(
        [sys.executable, *(() if python else ("-m", "django")), *args],
        env=environment,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def check(redis_url: str, database: Path) -> tuple[int, str]:
    done = command(redis_url, database, "sessionstats", "--check")
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, (done.stdout, done.stderr)
    return done.returncode, lines[0]


def test_sessionstats_check(fault_redis: RedisServer, tmp_path: Path) -> None:
    database = tmp_path / "site.sqlite3"
    code, line = check(fault_redis.url, database)
    assert code == 0, line
    assert line.startswith("RESILIENT SESSIONS OK: Redis answers (1 node), ledger answers")

    fault_redis.kill()
    code, line = check(fault_redis.url, database)
    assert code == 1, line
    assert line.startswith("RESILIENT SESSIONS DEGRADED: Redis default does not answer")
    assert "ConnectionError" in line

    fault_redis.start()
    fault_redis.pause()
    try:
        code, line = check(fault_redis.url, database)
    finally:
        fault_redis.resume()
    assert code == 1 and "Timeout" in line, line


def test_sessionstats_check_wrong_password(password_redis: PasswordRedis, tmp_path: Path) -> None:
    database = tmp_path / "site.sqlite3"
    code, line = check(password_redis.url, database)
    assert code == 2, line
    assert line.startswith("RESILIENT SESSIONS DOWN: Redis default refuses us for good")
    assert "AuthenticationError" in line
    wrong = password_redis.url.replace("redis://", "redis://:not-the-password@")
    code, line = check(wrong, database)
    assert code == 2 and "AuthenticationError" in line, line
    right = password_redis.url.replace("redis://", f"redis://:{PASSWORD}@")
    code, line = check(right, database)
    assert code == 0, line


def test_sessionstats_check_database_down(fault_redis: RedisServer, tmp_path: Path) -> None:
    """A database file that cannot be opened (its directory does not exist)."""
    database = tmp_path / "no-such-directory" / "site.sqlite3"
    code, line = check(fault_redis.url, database)
    assert code == 1, line
    assert "RESILIENT SESSIONS DEGRADED: ledger database 'default' does not answer" in line
    fault_redis.kill()
    code, line = check(fault_redis.url, database)
    assert code == 2, line
    assert "neither Redis nor the ledger answers" in line


# -- without the optional packages -------------------------------------------------------------

WITHOUT_EXTRAS = """
import json, sys
sys.modules["prometheus_client"] = None  # as if not installed
sys.modules["opentelemetry"] = None
import django
django.setup()
from django.core import checks
from django.test import Client
from django.test.utils import setup_test_environment
from django_resilient_sessions import health, metrics, tracing
setup_test_environment()
client = Client()
answer = client.get("/-/metrics/")
seen = client.get("/whoami/")
ids = [m.id for m in checks.run_checks() if m.id and m.id.startswith("django_resilient")]
print(json.dumps({
    "metrics": [metrics.AVAILABLE, answer.status_code, answer.content.decode()],
    "tracing": tracing.AVAILABLE,
    "sink": health.sink is not None,
    "whoami": seen.status_code,
    "checks": ids,
}))
"""


def test_without_prometheus_client_or_opentelemetry(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    done = command(redis_server.url, tmp_path / "site.sqlite3", "-c", WITHOUT_EXTRAS, python=True)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    available, code, text = found["metrics"]
    assert (available, code) == (False, 501)
    assert "pip install 'django-resilient-sessions[metrics]'" in text
    assert found["tracing"] is False and found["sink"] is False
    assert found["whoami"] == 200
    assert "django_resilient_sessions.W006" in found["checks"]


def test_a_database_that_does_not_answer_costs_the_bound_and_no_more_threads() -> None:
    """``dbaccess.bounded``: gives up after its timeout; a hung database holds at most
    ``BOUNDED_IN_FLIGHT`` threads, and the next check fails at once instead of piling up."""
    import threading

    from django_resilient_sessions.dbaccess import BOUNDED_IN_FLIGHT, bounded
    from django_resilient_sessions.exceptions import LedgerUnavailable

    hung = threading.Event()
    for _ in range(BOUNDED_IN_FLIGHT):
        with pytest.raises(LedgerUnavailable, match="no answer within"):
            bounded(hung.wait, 0.01)
    with pytest.raises(LedgerUnavailable, match="earlier checks are still waiting"):
        bounded(lambda: 42, 5.0)
    hung.set()  # the database answers: the threads finish and free their places
    for _ in range(500):
        try:
            assert bounded(lambda: 42, 5.0) == 42
            break
        except LedgerUnavailable:
            time.sleep(0.01)
    else:
        pytest.fail("the checks never freed their places")
    with pytest.raises(LedgerUnavailable, match="ZeroDivisionError"):
        bounded(lambda: 1 // 0, 5.0)


SCRAPE = """
import django
django.setup()
from django.test import Client
from django.test.utils import setup_test_environment
setup_test_environment()
answer = Client().get("/-/metrics/")
print(answer.status_code)
print(answer.content.decode())
"""


def test_a_scrape_reports_a_database_that_cannot_be_opened(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    database = tmp_path / "no-such-directory" / "site.sqlite3"
    done = command(redis_server.url, database, "-c", SCRAPE, python=True)
    assert done.returncode == 0, done.stderr
    code, text = done.stdout.split("\n", 1)
    assert code == "200"
    assert "resilient_sessions_ledger_up 0.0" in text
    assert "resilient_sessions_purges_pending" not in text  # unknown: absent, not 0
    assert "resilient_sessions_loads_total" in text
