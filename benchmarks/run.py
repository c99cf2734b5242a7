"""Command line: ``python -m benchmarks [--smoke] [options]`` (``make bench``, ``bench-smoke``).

Runs, in one go and against one private redis-server and one database, the per-operation
timings (:mod:`.ops`), the HTTP runs (:mod:`.http`), the cleanup (:mod:`.cleanup`), Redis
Cluster against standalone Redis (:mod:`.cluster`, on private clusters of its own) and the
sizing measurements (:mod:`.sizing`), then writes ``<out>/<UTC time>.json``,
``<out>/latest.json``, ``<out>/latest.md``, the charts (:mod:`.report`) and, for the
cluster and sizing sections, files of their own as well (``cluster.md``, ``sizing.md`` and
their JSON: docs/benchmarks.md and docs/sizing.md include them), and prints the Markdown.

The full run (default) writes into ``benchmarks/results/`` and takes about twelve minutes;
``--smoke`` uses tiny counts (50 repetitions per operation, 1 s HTTP runs of our engine
with Redis healthy, 2,000 rows to clean, small cluster and sizing runs), writes into
``benchmarks/results/smoke/`` (ignored by git) and may fall back to SQLite when PostgreSQL
does not answer. Benchmarks print figures; they never fail because the machine is slow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import (
    adoption,
    cleanup,
    cluster,
    env,
    http,
    ops,
    profiling,
    report,
    sizing,
    sizing_model,
)

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("ops", "http", "cleanup", "adoption", "cluster", "sizing")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--smoke", action="store_true", help="tiny counts, to check it all runs")
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated: " + ",".join(SECTIONS)
    )
    parser.add_argument("--reps", type=int, help="repetitions of create, cycle_key and flush")
    parser.add_argument("--cheap-reps", type=int, help="repetitions of the other operations")
    parser.add_argument(
        "--slice", type=int, help="seconds per HTTP slice (default: the breaker cool-down, 5)"
    )
    parser.add_argument("--rounds", type=int, help="HTTP slices per engine, state and view")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn workers per engine")
    parser.add_argument("--connections", type=int, help="load generator connections")
    parser.add_argument("--rows", type=int, help="expired rows for the cleanup")
    parser.add_argument(
        "--adopt-sessions",
        type=int,
        help="sessions adoptsessions adopts (and a tenth of it, for the memory comparison)",
    )
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python", "both"),
        help="HTTP load generator (auto: wrk if installed; smoke default: both)",
    )
    parser.add_argument(
        "--profile",
        choices=("missed", "always", "never"),
        help="profile what missed its target (default), always (smoke default), or never",
    )
    parser.add_argument("--db-name", help="PostgreSQL database to create and drop")
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs (debugging)")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="only redraw latest.md and the charts from a results file (into --out or its folder)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    smoke = args.smoke
    args.out_given = args.out
    args.out = args.out or (RESULTS / "smoke" if smoke else RESULTS)
    args.reps = args.reps or (50 if smoke else 2000)
    args.cheap_reps = args.cheap_reps or (50 if smoke else 5000)
    args.slice = args.slice or (1 if smoke else 5)
    args.rounds = args.rounds or (1 if smoke else 2)
    args.connections = args.connections or 2 * args.workers
    args.rows = args.rows or (2000 if smoke else 1_000_000)
    args.adopt_sessions = args.adopt_sessions or (2000 if smoke else 100_000)
    args.loadgen = args.loadgen or ("both" if smoke else "auto")
    args.profile = args.profile or ("always" if smoke else "missed")
    args.db_name = args.db_name or (f"drs_bench_smoke_{os.getpid()}" if smoke else "drs_bench")
    return args


def render(path: Path, out: Path | None) -> int:
    """Redraw ``latest.md``, the charts, ``cluster.md`` and ``sizing.md`` of an earlier run
    (no benchmark is run)."""
    results = json.loads(path.read_text())
    out = out or path.parent
    out.mkdir(parents=True, exist_ok=True)
    try:
        results["charts"] = report.charts(results, out)
    except ImportError as error:
        print(f"charts skipped: matplotlib is not installed ({error})")
    (out / "latest.md").write_text(report.markdown(results))
    if "cluster" in results:
        cluster.write(results, out, report.stamp(results))
    if "sizing" in results:  # the model again: its assumptions may have changed
        measured = results["sizing"]["measured"]
        results["sizing"] = {"measured": measured, **sizing_model.model(measured)}
        sizing_model.write(results["sizing"], out, report.stamp(results))
    print(report.markdown(results))
    print(f"wrote {out / 'latest.md'} and {', '.join(results.get('charts', []))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args.render, args.out_given)
    sections = args.sections.split(",")
    started = datetime.now(timezone.utc)
    clock = time.monotonic()
    mode = "smoke" if args.smoke else "full"
    print(f"django-resilient-sessions benchmarks ({mode}): {', '.join(sections)}", flush=True)

    def progress(line: str) -> None:
        print(line, flush=True)

    plan = http.Plan(
        engines=("resilient",) if args.smoke else ops.ENGINE_NAMES,
        states=("healthy",) if args.smoke else http.STATES,
        views=("read", "write"),
        slice_s=args.slice,
        rounds=args.rounds,
        warmup_s=0 if args.smoke else 1,
        workers=args.workers,
        connections=args.connections,
        timeout=5,
        tools=http.available_tools(args.loadgen),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        bench = env.BenchEnv(
            db_name=args.db_name, allow_sqlite=args.smoke, keep_workdir=args.keep_workdir
        )
        with bench:
            results: dict[str, Any] = {
                "schema": 1,
                "mode": mode,
                "started_at": started.isoformat(timespec="seconds"),
                "machine": env.machine(),
                "versions": env.versions(bench),
                "database": bench.db_kind,
            }
            if "ops" in sections:
                progress("ops: per operation, in process")
                results["ops"] = ops.run(
                    bench, reps=args.reps, cheap_reps=args.cheap_reps, progress=progress
                )
            if "http" in sections:
                progress("http: gunicorn + load generator")
                results["http"] = http.run(bench, plan, progress=progress)
            if "cleanup" in sections:
                progress(f"cleanup: clearsessions over {args.rows:,} expired rows")
                results["cleanup"] = cleanup.run(bench, args.rows, progress=progress)
            if "adoption" in sections:
                progress(f"adoption: adopting requests, adoptsessions over {args.adopt_sessions:,}")
                sizes = (args.adopt_sessions // 10, args.adopt_sessions)
                results["adoption"] = adoption.run(
                    bench, reps=min(args.reps, 1000), sizes=sizes, progress=progress
                )
            if "cluster" in sections:
                progress("cluster: Redis Cluster against standalone Redis")
                results["cluster"] = cluster.run(
                    bench,
                    reps=args.reps,
                    cheap_reps=args.cheap_reps,
                    plan=plan,
                    progress=progress,
                )
            if "sizing" in sections:
                progress("sizing: memory, commands, cookies, capacities")
                results["sizing"] = sizing.run(bench, smoke=args.smoke, progress=progress)
            results["targets"] = [vars(t) for t in report.targets(results)]
            if args.profile != "never":
                progress(f"profiles ({args.profile})")
            results["profiles"] = profiling.run(
                bench,
                results,
                args.out,
                mode=args.profile,
                reps=args.reps,
                plan=plan,
                duration=args.slice,
                progress=progress,
            )
    except env.BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results["duration_s"] = round(time.monotonic() - clock, 1)
    name = started.strftime("%Y%m%dT%H%M%SZ") + ("-smoke" if args.smoke else "")
    paths = report.write(results, args.out, name)
    if "cluster" in results:
        paths += cluster.write(results, args.out, report.stamp(results))
    if "sizing" in results:
        paths += sizing_model.write(results["sizing"], args.out, report.stamp(results))
    print()
    print(report.markdown(results))
    for path in paths:
        print(f"wrote {path}")
    if results.get("charts_skipped"):
        print(f"charts skipped: {results['charts_skipped']}")
    return 0
