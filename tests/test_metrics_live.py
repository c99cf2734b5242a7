"""The metrics and the health view of a live two-worker gunicorn site, through an outage.

gunicorn serves the test site (``tests/gunicorn_site.py``) with prometheus-client in
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``). Three users log in; then Redis is killed,
restarted empty, hung (SIGSTOP) and resumed. The test counts what it does and checks the
scrape of ``/-/metrics/`` against it after each phase, summed over both workers:

- every request that loads a session adds exactly one to ``loads_total``, under the source
  that served it: all ``cache`` while healthy, all ``backup`` while Redis is killed or hung;
- writes while Redis is down are ``saves_total{copy="backup"}``; the first request of each
  user once its worker trusts Redis again is a ``write_backs_total``;
- a logout while Redis is down is ``ended_total{reason="logout"}``, one queued purge and a
  pending-purge gauge of 1 (read from the database at scrape time), then one purge done and
  a gauge of 0 after recovery;
- ``breaker_open{alias="default", node=""}`` is 1 while a worker's breaker is open and 0
  once both closed; each worker whose breaker opened adds one outage to the histogram;
- ``/-/health/`` answers 200 ``ok``, 200 ``degraded`` (killed, hung), 200 ``ok``.

No timing is asserted: the phases wait for the workers' own reports (response headers).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.gunicorn_site import Server, django, gunicorn_site, pg_name, site_database, site_env
from tests.redis_server import RedisServer

USERS = ("live-ann", "live-bob", "live-cyd")
PASSWORD = "live-pw"
WORKERS = 2
COOLDOWN = 0.5  # RESILIENT_SESSIONS["BREAKER_COOLDOWN"] in tests.mw_settings
HTTP_TIMEOUT = 10.0
BREAKER = ("resilient_sessions_breaker_open", (("alias", "default"), ("node", "")))
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def live_site(fault_redis: RedisServer, tmp_path: Path) -> Iterator[Server]:
    prometheus = tmp_path / "prometheus"
    prometheus.mkdir()
    with site_database(tmp_path, pg_name("metrics_live")) as database:
        env = site_env(database, fault_redis.url, PROMETHEUS_MULTIPROC_DIR=str(prometheus))
        django(env, "migrate", "--no-input", "-v", "0")
        create = (
            "from django.contrib.auth.models import User\n"
            f"for name in {USERS!r}:\n"
            f"    User.objects.create_user(name, password={PASSWORD!r})\n"
        )
        django(env, "shell", "-c", create)
        with gunicorn_site(env, tmp_path, workers=WORKERS) as server:
            yield server


class Site:
    """The users' browsers and a tally of the session loads they caused."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.browsers = {name: requests.Session() for name in USERS}
        self.loads = 0  # requests that carried a session cookie (each loads it once)
        self.breakers: dict[int, str] = {}  # worker pid -> its breaker after its last answer
        self.opened: set[int] = set()  # workers whose breaker was seen open

    def send(self, user: str, method: str, path: str, **data: str) -> dict[str, Any]:
        http = self.browsers[user]
        if "sessionid" in http.cookies:
            self.loads += 1
        response = http.request(method, self.server.url + path, data=data or None,
                                timeout=HTTP_TIMEOUT)  # fmt: skip
        assert response.status_code == 200, (response.status_code, self.server.log_tail())
        worker = int(response.headers["X-DRS-Worker"])
        self.breakers[worker] = response.headers["X-DRS-Breaker"]
        if self.breakers[worker] != "closed":
            self.opened.add(worker)
        body: dict[str, Any] = response.json()
        return body

    def everyone(self, users: tuple[str, ...], method: str, path: str, **data: str) -> None:
        with ThreadPoolExecutor(len(users)) as pool:
            for body in pool.map(lambda u: self.send(u, method, path, **data), users):
                if path == "/whoami/":
                    assert body["user"] is not None, body

    def until_every_worker(self, users: tuple[str, ...], state: str) -> None:
        """Whoami from every user at once until each worker answered with its breaker ``state``."""
        deadline = time.monotonic() + 30
        while any(self.breakers.get(pid) != state for pid in self.server.workers):
            assert time.monotonic() < deadline, (state, self.breakers, self.server.log_tail())
            self.everyone(users, "GET", "/whoami/")

    def scrape(self) -> Series:
        response = requests.get(self.server.url + "/-/metrics/", timeout=HTTP_TIMEOUT)
        assert response.status_code == 200, response.text
        found: Series = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
        return found

    def health(self) -> tuple[int, str]:
        response = requests.get(self.server.url + "/-/health/", timeout=HTTP_TIMEOUT)
        return response.status_code, response.json()["status"]


def grew(before: Series, after: Series, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def loads(before: Series, after: Series) -> dict[str, float]:
    sources = ("cache", "backup", "ledger", "none")
    found = {s: grew(before, after, "resilient_sessions_loads_total", source=s) for s in sources}
    return {s: n for s, n in found.items() if n}


def test_metrics_and_health_of_a_live_site_through_an_outage(
    live_site: Server, fault_redis: RedisServer
) -> None:
    site = Site(live_site)
    leaver, *rest = USERS
    stayers = tuple(rest)

    # Healthy: everyone logs in and reads; every load is a Redis one.
    for user in USERS:
        assert site.send(user, "POST", "/login/", username=user, password=PASSWORD)["ok"]
    start = site.scrape()
    assert site.health() == (200, "ok")
    site.loads = 0
    for _ in range(2):
        site.everyone(USERS, "GET", "/whoami/")
    healthy = site.scrape()
    assert loads(start, healthy) == {"cache": site.loads} and site.loads == 6
    assert healthy[BREAKER] == 0
    assert healthy["resilient_sessions_ledger_up", ()] == 1
    assert healthy["resilient_sessions_purges_pending", ()] == 0

    # Killed: every load from a backup, on both workers; writes go to the backups only;
    # a logout is recorded and its Redis deletion queued.
    fault_redis.kill()
    site.loads = 0
    site.until_every_worker(USERS, "open")
    site.everyone(stayers, "POST", "/set/", colour="red")
    assert site.send(leaver, "POST", "/logout/") == {"ok": True}
    assert site.send(leaver, "GET", "/whoami/")["user"] is None  # no session cookie left
    killed = site.scrape()
    assert loads(healthy, killed) == {"backup": site.loads}
    assert grew(healthy, killed, "resilient_sessions_saves_total", copy="backup") == 2
    assert grew(healthy, killed, "resilient_sessions_saves_total", copy="cache") == 0
    assert grew(healthy, killed, "resilient_sessions_ended_total", reason="logout") == 1
    assert grew(healthy, killed, "resilient_sessions_purges_queued_total") == 1
    assert killed["resilient_sessions_purges_pending", ()] == 1
    assert killed[BREAKER] == 1
    assert site.opened == live_site.workers
    assert site.health() == (200, "degraded")

    # Back, empty: once each worker probed (and one drained the queue), both trust Redis
    # again; each user's session goes back into Redis once; each worker ends one outage.
    fault_redis.start()
    time.sleep(COOLDOWN + 0.1)
    site.loads, site.opened = 0, set()
    site.until_every_worker(stayers, "closed")
    back = site.scrape()
    served = loads(killed, back)
    assert sum(served.values()) == site.loads and set(served) <= {"cache", "backup"}
    assert grew(killed, back, "resilient_sessions_write_backs_total") == len(stayers)
    assert grew(killed, back, "resilient_sessions_purges_done_total") == 1
    assert back["resilient_sessions_purges_pending", ()] == 0
    outages = "resilient_sessions_outage_duration_seconds_count"
    assert grew(killed, back, outages, alias="default") == WORKERS
    assert back[BREAKER] == 0
    assert site.health() == (200, "ok")

    # Hung: the first request of each worker waits for its socket timeout, then every
    # load is a backup one; the health view's PING times out: degraded, still 200.
    fault_redis.pause()
    try:
        site.loads = 0
        site.until_every_worker(stayers, "open")
        hung = site.scrape()
        assert loads(back, hung) == {"backup": site.loads}
        assert hung[BREAKER] == 1
        assert site.health() == (200, "degraded")
    finally:
        fault_redis.resume()

    # Resumed: both close again, one more outage each.
    time.sleep(COOLDOWN + 0.1)
    site.loads = 0
    site.until_every_worker(stayers, "closed")
    resumed = site.scrape()
    assert sum(loads(hung, resumed).values()) == site.loads
    assert grew(hung, resumed, outages, alias="default") == WORKERS
    assert resumed[BREAKER] == 0
    assert site.health() == (200, "ok")
