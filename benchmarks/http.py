"""Requests per second and latency through HTTP, by Redis state.

gunicorn (sync workers) serves :mod:`benchmarks.site` on loopback, one server per engine
and Redis state, all against the bench's database; ``wrk`` (or :mod:`benchmarks.loadgen`
when wrk is missing) drives a read-only view and a writing view with the cookies of a
logged-in session. Redis states:

``healthy``  the bench's redis-server, answering.
``killed``   a redis-server of its own, SIGKILLed (connections refused).
``hung``     a redis-server of its own, SIGSTOPped (connections accepted, nothing
             answered: every command waits for the 0.25 s socket timeout).

Every engine of a state uses that state's redis-server. All servers start together, every
(engine, state, view) logs in while its Redis is still healthy, then the two faults are
injected and stay for the whole section. The load then comes in short slices, round after
round, the order of the (engine, state) pairs rotated each round: every figure is a sum
over slices spread across the whole section, so drift (other processes on the machine)
hits all of them alike and the ratios between states and engines hold. The first round is
a warm-up and is not counted (every worker has met its fault, our breakers are open).
Latency percentiles come from the merged histograms of the counted slices.

Each connection of the load generator logs in on its own (one session per connection,
as one browser each) and keeps a cookie jar: it sends back the cookies its responses set,
so every write carries the backup the previous write of that session answered, and while
Redis is down each request is served from its session's newest backup. (wrk runs one
connection per thread for that: a thread's script keeps its jar.) A run ends with a
request in flight per connection, whose answer the jar never gets: before each slice, a
connection of our engine whose jar no longer logs in (while Redis is down, its backup is
then one behind, refused as a rollback) logs in again (``revived``). Responses that are not
2xx are counted apart, and so are 2xx answers to a request that was no longer logged in
(``X-Bench-Auth: 0``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from benchmarks import loadgen
from benchmarks.env import PASSWORD, PREEXEC, ROOT, USERNAME, BenchEnv
from benchmarks.stats import hist_percentile, merge, ratio
from tests.redis_server import RedisServer, free_port

HOST = "127.0.0.1"
LUA_SCRIPT = Path(__file__).resolve().parent / "wrk_report.lua"
VIEWS = {"read": ("GET", "/read/"), "write": ("POST", "/write/")}
WRITE_BODY = "note=bench"
STATES = ("healthy", "killed", "hung")
ENGINE_ORDER = ("resilient", "cache", "cached_db", "signed_cookies")
#: How long the requests a run left in flight get to finish before the jars are checked.
SETTLE_S = 0.3


@dataclass
class Plan:
    engines: tuple[str, ...]
    states: tuple[str, ...]
    views: tuple[str, ...]
    slice_s: int
    rounds: int
    warmup_s: int
    workers: int
    connections: int
    timeout: int
    tools: tuple[str, ...]


def available_tools(prefer: str = "auto") -> tuple[str, ...]:
    """``("wrk",)`` when wrk is installed, else ``("python",)``; or what ``prefer`` says."""
    if prefer == "both":
        return ("wrk", "python") if shutil.which("wrk") else ("python",)
    if prefer == "python" or (prefer == "auto" and shutil.which("wrk") is None):
        return ("python",)
    return ("wrk",)


# -- Redis per state ------------------------------------------------------------------------


@contextlib.contextmanager
def redis_per_state(env: BenchEnv, states: tuple[str, ...]) -> Iterator[dict[str, RedisServer]]:
    """The bench's redis-server for ``healthy``, a fresh one for each faulty state."""
    servers = {"healthy": env.redis}
    try:
        for state in states:
            if state != "healthy":
                servers[state] = RedisServer().start()
        env.restore_redis()
        yield servers
    finally:
        for state, server in servers.items():
            if state != "healthy":
                server.stop()
        env.redis.ensure_running()


def inject(server: RedisServer, state: str) -> None:
    if state == "killed":
        server.kill()
    elif state == "hung":
        server.pause()


# -- gunicorn -------------------------------------------------------------------------------


@dataclass
class Server:
    engine: str
    state: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"


def start_servers(
    env: BenchEnv, pairs: list[tuple[str, str]], redis: dict[str, RedisServer], workers: int
) -> dict[tuple[str, str], Server]:
    """One gunicorn per (engine, state), its cache at that state's redis-server."""
    servers: dict[tuple[str, str], Server] = {}
    try:
        for engine, state in pairs:
            child = env.subprocess_env(engine, redis[state].url)
            servers[(engine, state)] = start_server(env, engine, state, child, workers)
        for server in servers.values():
            _wait_ready(server)
    except BaseException:
        stop_servers(servers)
        raise
    return servers


def start_server(
    env: BenchEnv, engine: str, state: str, child_env: dict[str, str], workers: int
) -> Server:
    """One gunicorn serving the bench site with ``child_env`` (not waited for)."""
    port = free_port()
    log = env.workdir / f"gunicorn-{engine}-{state}.log".replace(" ", "-")
    args = [
        sys.executable, "-m", "gunicorn", "benchmarks.site.wsgi:application",
        "--bind", f"{HOST}:{port}",
        "--workers", str(workers),
        "--worker-class", "sync",
        "--timeout", "120",
        "--graceful-timeout", "5",
        "--log-level", "warning",
        "--error-logfile", str(log),
        "--no-control-socket",
    ]  # fmt: skip
    process = subprocess.Popen(
        args,
        cwd=ROOT,
        env=child_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=PREEXEC,
    )
    return Server(engine, state, port, process, log)


def _wait_ready(server: Server, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"gunicorn for {server.engine} exited; see {server.log}")
        with contextlib.suppress(OSError):
            status, _, _ = request(server.port, "GET", "/health/", timeout=2)
            if status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn for {server.engine} did not answer within {timeout:g} s")


def stop_servers(servers: dict[tuple[str, str], Server]) -> None:
    for server in servers.values():
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
    for server in servers.values():
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@contextlib.contextmanager
def serving(
    env: BenchEnv, pairs: list[tuple[str, str]], redis: dict[str, RedisServer], workers: int
) -> Iterator[dict[tuple[str, str], Server]]:
    servers = start_servers(env, pairs, redis, workers)
    try:
        yield servers
    finally:
        # A paused Redis would hold the workers' graceful shutdown.
        for server in redis.values():
            if server.paused:
                server.resume()
        stop_servers(servers)


# -- HTTP helpers ---------------------------------------------------------------------------


def request(
    port: int,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: str | None = None,
    timeout: float = 10,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        all_headers = dict(headers or {})
        if body is not None:
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def login(server: Server) -> str:
    """Log the bench user in; returns the ``Cookie`` header replaying its cookies."""
    body = urlencode({"username": USERNAME, "password": PASSWORD})
    status, headers, _ = request(server.port, "POST", "/login/", body=body)
    if status != 200:
        raise RuntimeError(f"login on {server.engine} answered {status}")
    jar: SimpleCookie = SimpleCookie()
    for value in headers.get_all("Set-Cookie") or []:
        jar.load(value)
    cookie = "; ".join(f"{name}={morsel.value}" for name, morsel in jar.items() if morsel.value)
    status, headers, _ = request(server.port, "GET", "/read/", headers={"Cookie": cookie})
    if status != 200 or headers.get("X-Bench-Auth") != "1":
        raise RuntimeError(f"{server.engine}: the login cookies do not log in ({status})")
    return cookie


def logins(server: Server, connections: int) -> list[str]:
    """A session logged in per connection: each one's Cookie header (its jar to start with)."""
    return [login(server) for _ in range(connections)]


def revive(server: Server, jars: list[str]) -> int:
    """Log in again the connections whose jar no longer logs in; returns how many.

    wrk ends a run with a request in flight on each connection: the server saved it,
    its answer (the newer backup) never reached the jar. While Redis is down our
    engine then refuses the jar's backup as a rollback (an older backup of a login
    than one already served), as it would a browser's. Outside the timed slices.
    """
    time.sleep(SETTLE_S)  # the requests still in flight are done first
    revived = 0
    for i, cookie in enumerate(jars):
        try:
            status, headers, _ = request(server.port, "GET", "/read/", headers={"Cookie": cookie})
            if status == 200 and headers.get("X-Bench-Auth") == "1":
                continue
            jars[i] = login(server)
        except (OSError, RuntimeError, http.client.HTTPException):
            continue  # the engine cannot log in now: the slice counts it
        revived += 1
    return revived


def breaker_state(server: Server) -> str:
    """The breaker state one worker reports (the one that answers)."""
    try:
        status, _, body = request(server.port, "GET", "/health/", timeout=5)
    except OSError:
        return "unknown"
    if status != 200:
        return "unknown"
    breakers = json.loads(body).get("breakers", {})
    return str(breakers.get("default", {}).get("state", "closed"))


# -- load generation ------------------------------------------------------------------------


def run_load(
    tool: str, server: Server, view: str, jars: list[str], *, duration: int, plan: Plan
) -> dict[str, Any]:
    """One run of ``duration`` seconds: the raw figures of wrk_report.lua.

    ``jars``: a Cookie header per connection, each connection's jar to start with
    (updated in place with the cookies the run answered, for the next run).
    """
    method, path = VIEWS[view]
    if tool == "python":
        return loadgen.run(
            HOST,
            server.port,
            path,
            method=method,
            jars=jars,
            body=WRITE_BODY if method == "POST" else None,
            duration=duration,
            timeout=plan.timeout,
        )
    connections = str(len(jars))
    args = [
        "wrk", "-t", connections, "-c", connections, "-d", f"{duration}s",
        "--timeout", f"{plan.timeout}s", "-s", str(LUA_SCRIPT), server.base + path,
    ]  # fmt: skip
    env = {
        **os.environ,
        "BENCH_METHOD": method,
        "BENCH_BODY": WRITE_BODY,
        "BENCH_COOKIES": "\n".join(jars),
    }
    done = subprocess.run(
        args, capture_output=True, text=True, env=env, timeout=duration + plan.timeout + 60
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JAR "):
            _, index, *cookie = line.split(" ", 2)
            if cookie and cookie[0]:
                jars[int(index) - 1] = cookie[0]
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            raw: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            return raw
    raise RuntimeError(f"wrk gave no result (status {done.returncode}): {done.stderr[-500:]}")


def summarise_load(raws: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures of one or more runs taken together (latency from the merged histograms)."""
    histogram = merge(raw["hist"] for raw in raws)
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for raw in raws:
        for key, n in raw["statuses"].items():
            statuses[str(key)] = statuses.get(str(key), 0) + int(n)
        for key, n in raw["errors"].items():
            errors[key] = errors.get(key, 0) + int(n)
    requests = sum(int(raw["requests"]) for raw in raws)
    duration = sum(raw["duration_us"] for raw in raws) / 1e6
    return {
        "requests": requests,
        "duration_s": round(duration, 2),
        "rps": round(requests / duration, 1) if duration else 0.0,
        "p50_ms": round(hist_percentile(histogram, 50) / 1000, 2),
        "p90_ms": round(hist_percentile(histogram, 90) / 1000, 2),
        "p99_ms": round(hist_percentile(histogram, 99) / 1000, 2),
        "max_ms": round(max(histogram, default=0) / 1000, 2),
        "statuses": statuses,
        "non_2xx": sum(n for key, n in statuses.items() if not key.startswith("2")),
        "logged_out": sum(int(raw.get("anonymous", 0)) for raw in raws),
        "errors": errors,
    }


# -- the plan -------------------------------------------------------------------------------


def run(env: BenchEnv, plan: Plan, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the plan; returns the ``http`` section of the results."""
    pairs = [(engine, state) for state in plan.states for engine in plan.engines]
    raws: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    slices: list[dict[str, Any]] = []
    breakers: dict[str, str] = {}
    with (
        redis_per_state(env, plan.states) as redis,
        serving(env, pairs, redis, plan.workers) as servers,
    ):
        progress(f"  http: {len(servers)} servers x {plan.workers} workers up")
        cookies = {
            (engine, state, view): logins(servers[(engine, state)], plan.connections)
            for engine, state in pairs
            for view in plan.views
        }
        for state in plan.states:
            inject(redis[state], state)
        rounds = plan.rounds + (1 if plan.warmup_s else 0)
        revived = 0
        for number in range(rounds):
            warmup = plan.warmup_s and number == 0
            for v, view in enumerate(plan.views):
                shift = (number + v) % len(pairs)
                for engine, state in pairs[shift:] + pairs[:shift]:
                    server = servers[(engine, state)]
                    for tool in plan.tools:
                        duration = plan.warmup_s if warmup else plan.slice_s
                        if engine == "resilient":
                            revived += revive(server, cookies[(engine, state, view)])
                        raw = run_load(
                            tool,
                            server,
                            view,
                            cookies[(engine, state, view)],
                            duration=duration,
                            plan=plan,
                        )
                        if warmup:
                            continue
                        raws.setdefault((engine, state, view, tool), []).append(raw)
                        figures = summarise_load([raw])
                        slices.append(
                            {
                                "round": number,
                                "engine": engine,
                                "state": state,
                                "view": view,
                                "tool": tool,
                                **{k: figures[k] for k in ("requests", "rps", "p50_ms", "p99_ms")},
                            }
                        )
            progress(f"  http: round {number + 1}/{rounds}{' (warm-up)' if warmup else ''} done")
        for engine, state in pairs:
            if engine == "resilient":
                breakers[state] = breaker_state(servers[(engine, state)])
    summary = summarise(raws)
    for row in summary:
        progress(
            f"  http: {row['state']:<7} {row['view']:<5} {row['engine']:<14} {row['tool']:<6} "
            f"{row['rps']:8.1f} req/s  p99 {row['p99_ms']:8.2f} ms  "
            f"non-2xx {row['non_2xx']}  logged out {row['logged_out']}"
        )
    return {
        "config": {
            "workers": plan.workers,
            "connections": plan.connections,
            "slice_s": plan.slice_s,
            "rounds": plan.rounds,
            "warmup_s": plan.warmup_s,
            "timeout_s": plan.timeout,
            "tools": list(plan.tools),
            **_engine_settings(),
        },
        "breakers": breakers,
        "revived": revived,
        "summary": summary,
        "slices": slices,
    }


def _engine_settings() -> dict[str, float]:
    """The timeouts the servers ran with (they share this process's settings)."""
    from django.conf import settings

    from django_resilient_sessions.conf import conf

    options = settings.CACHES["default"].get("OPTIONS", {})
    return {
        "socket_timeout_s": float(options.get("SOCKET_TIMEOUT", 0)),
        "breaker_cooldown_s": conf.BREAKER_COOLDOWN,
        "breaker_probe_timeout_s": float(getattr(conf, "BREAKER_PROBE_TIMEOUT", 0.0)),
    }


def summarise(raws: dict[tuple[str, str, str, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (engine, state, view, tool), all its counted slices together."""
    summary: list[dict[str, Any]] = []
    for (engine, state, view, tool), runs in raws.items():
        figures = summarise_load(runs)
        summary.append(
            {
                "engine": engine,
                "state": state,
                "view": view,
                "tool": tool,
                "slices": len(runs),
                **figures,
                "timeouts": figures["errors"].get("timeout", 0),
            }
        )
    order = {name: i for i, name in enumerate((*ENGINE_ORDER, *STATES, *VIEWS))}
    summary.sort(key=lambda r: (r["tool"], order[r["view"]], order[r["state"]], order[r["engine"]]))
    index = {(r["engine"], r["state"], r["view"], r["tool"]): r for r in summary}
    for row in summary:
        healthy = index.get((row["engine"], "healthy", row["view"], row["tool"]))
        cache = index.get(("cache", row["state"], row["view"], row["tool"]))
        row["rps_vs_healthy"] = ratio(row["rps"], healthy["rps"]) if healthy else None
        row["rps_vs_cache"] = ratio(row["rps"], cache["rps"]) if cache else None
    return summary
