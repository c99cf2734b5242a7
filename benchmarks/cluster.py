"""Redis Cluster against standalone Redis: per operation in process, and HTTP with 1 and 3 shards.

``ops``: this engine's ``load``, ``save``, ``create``, ``cycle_key`` and ``flush`` (the
steps of :mod:`benchmarks.ops`, the same session) on the bench's standalone redis-server
(django-redis) and on a private cluster of three masters and three replicas
(``RedisClusterCache``), in one process, repetitions interleaved between the two as
:mod:`benchmarks.ops` interleaves engines. The session alias is switched between the two
caches before each step by setting ``SESSION_CACHE_ALIAS`` on the settings object (no
``setting_changed`` signal, so both aliases keep their clients and breakers).

``http``: the bench site under the same load generator as :mod:`benchmarks.http`, read and
write views, one gunicorn per setup: standalone Redis, a one-node cluster (every slot on
one master: the cluster protocol with one shard) and the three-master cluster, slices
interleaved round after round.

On one machine the app servers, not Redis, limit throughput, so more shards do not add
requests per second here; what the section shows is what the cluster client costs, and
that it costs the same with one shard as with three.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks import http, ops
from benchmarks.env import BenchEnv
from benchmarks.stats import percentile, ratio
from tests.redis_cluster import CLUSTER_SLOTS, LocalCluster
from tests.redis_server import RedisServer, free_port

CLUSTER_ALIAS = "bench_cluster"
OPS = ("load", "save", "create", "cycle_key", "flush")
OP_SETUPS = ("standalone", "cluster")
HTTP_SETUPS = ("standalone", "1 shard", "3 shards")


# -- the clusters -----------------------------------------------------------------------------


@contextlib.contextmanager
def one_shard() -> Iterator[RedisServer]:
    """A one-node Redis Cluster: one master serving all 16384 slots, no replica."""
    workdir = Path(tempfile.mkdtemp(prefix="drs-bench-shard-"))
    server = RedisServer(
        extra_args=(
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(workdir / "nodes.conf"),
            "--cluster-port", str(free_port()),
        )
    )  # fmt: skip
    try:
        server.start()
        with server.client() as client:
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, CLUSTER_SLOTS - 1)
            deadline = time.monotonic() + 30
            while "cluster_state:ok" not in str(client.execute_command("CLUSTER", "INFO")):
                if time.monotonic() > deadline:
                    raise RuntimeError("the one-node cluster did not reach cluster_state:ok")
                time.sleep(0.05)
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def cluster_cache(urls: list[str]) -> dict[str, Any]:
    return {
        "BACKEND": "django_resilient_sessions.cache.RedisClusterCache",
        "LOCATION": urls,
        "OPTIONS": {"socket_timeout": 0.25, "socket_connect_timeout": 0.25},
    }


# -- per operation ------------------------------------------------------------------------------


class OnAlias(ops.Resilient):
    """This engine on one cache alias (the session alias is switched to it per step)."""

    def __init__(self, label: str, user: Any, alias: str) -> None:
        from django.conf import settings

        settings.SESSION_CACHE_ALIAS = alias
        super().__init__("resilient", user)
        self.name = label
        self.alias = alias

    def store(self, handle: ops.Handle | None) -> Any:
        from django.conf import settings

        settings.SESSION_CACHE_ALIAS = self.alias
        return super().store(handle)


def run_ops(
    env: BenchEnv,
    standalone: RedisServer,
    cluster: LocalCluster,
    *,
    reps: int,
    cheap_reps: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import override_settings

    from django_resilient_sessions.breaker import reset_breakers

    user = get_user_model().objects.get(pk=env.user_id())
    default = {**settings.CACHES["default"], "LOCATION": standalone.url}
    caches = {"default": default, CLUSTER_ALIAS: cluster_cache(cluster.urls)}
    results: list[dict[str, Any]] = []
    with override_settings(CACHES=caches, SESSION_CACHE_ALIAS="default"):
        drivers = [
            OnAlias("standalone", user, "default"),
            OnAlias("cluster", user, CLUSTER_ALIAS),
        ]
        for op in OPS:
            n = cheap_reps if op in ops.CHEAP_OPS else reps
            reset_breakers()
            states = {driver.name: ops.prepare(op, driver) for driver in drivers}
            started = time.monotonic()
            samples = ops._interleaved(op, list(drivers), states, n, max(n // 20, 5))
            medians = {k: percentile(v, 50) / 1000 for k, v in samples.items()}
            p99s = {k: percentile(v, 99) / 1000 for k, v in samples.items()}
            for setup in OP_SETUPS:
                results.append(
                    {
                        "op": op,
                        "setup": setup,
                        "n": len(samples[setup]),
                        "median_us": round(medians[setup], 1),
                        "p99_us": round(p99s[setup], 1),
                        "ratio": ratio(medians[setup], medians["standalone"]),
                        "p99_ratio": ratio(p99s[setup], p99s["standalone"]),
                    }
                )
            progress(
                f"  cluster ops: {op:<10} {n} reps x 2 in {time.monotonic() - started:.1f} s, "
                f"cluster/standalone {ratio(medians['cluster'], medians['standalone'])}"
            )
    return {"setups": list(OP_SETUPS), "results": results}


# -- HTTP ---------------------------------------------------------------------------------------


def run_http(
    env: BenchEnv,
    standalone: RedisServer,
    urls: dict[str, list[str]],
    plan: http.Plan,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The read and write views under load, per setup (``urls``: its cluster's nodes)."""
    servers: dict[tuple[str, str], http.Server] = {}
    raws: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    try:
        for setup in HTTP_SETUPS:
            child = env.subprocess_env("resilient", standalone.url)
            if urls.get(setup):
                child["DRS_BENCH_CLUSTER_URLS"] = ",".join(urls[setup])
            servers[("resilient", setup)] = http.start_server(
                env, "resilient", setup, child, plan.workers
            )
        for server in servers.values():
            http._wait_ready(server)
        progress(f"  cluster http: {len(servers)} servers x {plan.workers} workers up")
        cookies = {
            (setup, view): http.logins(servers[("resilient", setup)], plan.connections)
            for setup in HTTP_SETUPS
            for view in plan.views
        }
        rounds = plan.rounds + (1 if plan.warmup_s else 0)
        for number in range(rounds):
            warmup = plan.warmup_s and number == 0
            for v, view in enumerate(plan.views):
                shift = (number + v) % len(HTTP_SETUPS)
                for setup in HTTP_SETUPS[shift:] + HTTP_SETUPS[:shift]:
                    for tool in plan.tools:
                        raw = http.run_load(
                            tool,
                            servers[("resilient", setup)],
                            view,
                            cookies[(setup, view)],
                            duration=plan.warmup_s if warmup else plan.slice_s,
                            plan=plan,
                        )
                        if not warmup:
                            raws.setdefault((setup, view, tool), []).append(raw)
            progress(f"  cluster http: round {number + 1}/{rounds} done")
    finally:
        http.stop_servers(servers)
    summary = []
    for (setup, view, tool), runs in raws.items():
        summary.append({"setup": setup, "view": view, "tool": tool, **http.summarise_load(runs)})
    index = {(r["setup"], r["view"], r["tool"]): r for r in summary}
    for row in summary:
        base = index[("standalone", row["view"], row["tool"])]
        one = index.get(("1 shard", row["view"], row["tool"]))
        row["rps_vs_standalone"] = ratio(row["rps"], base["rps"])
        three = row["setup"] == "3 shards"
        row["rps_vs_1_shard"] = ratio(row["rps"], one["rps"]) if one and three else None
    order = {name: i for i, name in enumerate((*HTTP_SETUPS, *http.VIEWS))}
    summary.sort(key=lambda r: (r["tool"], order[r["view"]], order[r["setup"]]))
    for row in summary:
        progress(
            f"  cluster http: {row['view']:<5} {row['setup']:<10} {row['tool']:<6} "
            f"{row['rps']:8.1f} req/s  p99 {row['p99_ms']:8.2f} ms  "
            f"non-2xx {row['non_2xx']}  logged out {row['logged_out']}"
        )
    return {
        "config": {
            "workers": plan.workers,
            "connections": plan.connections,
            "slice_s": plan.slice_s,
            "rounds": plan.rounds,
            "tools": list(plan.tools),
        },
        "summary": summary,
    }


# -- the section --------------------------------------------------------------------------------


def run(
    env: BenchEnv,
    *,
    reps: int,
    cheap_reps: int,
    plan: http.Plan,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The ``cluster`` section of the results."""
    with (
        RedisServer() as standalone,
        LocalCluster(masters=3, replicas_per_master=1) as three,
        one_shard() as one,
    ):
        # Fresh servers all: what earlier sections left in the bench's redis-server (a
        # million tombstones after the cleanup) does not weigh on one side only.
        progress(
            f"  cluster: {three!r}; one-node cluster :{one.port}; standalone :{standalone.port}"
        )
        version = three.nodes[0].admin().info("server").get("redis_version", "?")
        result = {
            "topology": {
                "masters": 3,
                "replicas_per_master": 1,
                "redis_server": str(version),
            },
            "ops": run_ops(
                env, standalone, three, reps=reps, cheap_reps=cheap_reps, progress=progress
            ),
            "http": run_http(
                env, standalone, {"1 shard": [one.url], "3 shards": three.urls}, plan, progress
            ),
        }
    return result


def markdown(cluster: dict[str, Any]) -> list[str]:
    """The section's tables, for latest.md."""
    rows = cluster["ops"]["results"]
    n = max((row["n"] for row in rows), default=0)
    lines = [
        "Redis Cluster (3 masters, 1 replica each, `RedisClusterCache`) against standalone "
        f"Redis (django-redis), this engine, in process (median µs, p99 µs; up to {n:,} "
        "interleaved repetitions each):",
        "",
        "| operation | standalone | cluster | cluster / standalone |",
        "| --- | --- | --- | --- |",
    ]
    for op in OPS:
        found = {row["setup"]: row for row in rows if row["op"] == op}
        if len(found) < 2:
            continue
        a, b = found["standalone"], found["cluster"]
        lines.append(
            f"| {op} | {a['median_us']:.1f} · p99 {a['p99_us']:.1f} | "
            f"{b['median_us']:.1f} · p99 {b['p99_us']:.1f} | **{b['ratio']:.2f}x** |"
        )
    config = cluster["http"]["config"]
    lines += [
        "",
        f"Through HTTP with the cluster (gunicorn, {config['workers']} sync workers per setup; "
        f"{' and '.join(config['tools'])} with {config['connections']} connections; "
        f"{config['rounds']} interleaved slices of {config['slice_s']} s each):",
        "",
        "| view | setup | requests/s | p50 ms | p99 ms | vs standalone | vs 1 shard |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in cluster["http"]["summary"]:
        label = row["view"] if len(config["tools"]) == 1 else f"{row['view']} ({row['tool']})"
        versus = row["rps_vs_1_shard"]
        errors = f" · **{row['non_2xx']} errors**" if row["non_2xx"] else ""
        lines.append(
            f"| {label} | {row['setup']} | {row['rps']:,.0f}{errors} | {row['p50_ms']:.1f} | "
            f"{row['p99_ms']:.1f} | {row['rps_vs_standalone']:.2f}x | "
            + ("" if versus is None else f"{versus:.2f}x")
            + " |"
        )
    return lines


def write(results: dict[str, Any], out: Path, stamp: str) -> list[Path]:
    """``cluster.json`` and ``cluster.md`` in ``out`` (docs/benchmarks.md includes the latter),
    so that the section can be run, and committed, on its own."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "cluster.json", out / "cluster.md"]
    section = {"machine": results["machine"], "versions": results["versions"]}
    paths[0].write_text(json.dumps({**section, **results["cluster"]}, indent=1) + "\n")
    paths[1].write_text(f"Measured {stamp}.\n\n" + "\n".join(markdown(results["cluster"])) + "\n")
    return paths
