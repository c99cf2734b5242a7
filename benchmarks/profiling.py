"""Profiles of what a missed target measured, written next to the results.

Operations (``load``, ``save``) are profiled in process, for this engine and Django's
``cache`` engine on the same loop: a pyinstrument call tree and cProfile's own-time table
with call counts per operation. HTTP runs are profiled with py-spy on every gunicorn
worker of this engine's server while the load generator runs the same view in the same
Redis state (``--idle`` on, so time spent waiting on the database or Redis counts);
frames are aggregated into inclusive shares of the time spent inside Django's handler.

``--profile missed`` (the full run's default) profiles what missed its target;
``--profile always`` (the smoke run's) profiles ``load`` and one HTTP run regardless.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import pstats
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import http, ops
from benchmarks.env import ROOT, BenchEnv, no_gc

OP_TARGETS = {"load_ratio": "load", "save_ratio": "save"}
HTTP_TARGETS = {
    "hung_p99_read": ("hung", "read"),
    "hung_p99_write": ("hung", "write"),
    "down_rps_read": ("killed", "read"),
    "down_rps_write": ("killed", "write"),
}


def profile_op(env: BenchEnv, op: str, reps: int) -> str:
    """pyinstrument tree and cProfile table of ``op`` for our engine and ``cache``."""
    from django.contrib.auth import get_user_model
    from pyinstrument import Profiler

    user = get_user_model().objects.get(pk=env.user_id())
    sections = [f"Profile of `{op}`, {reps} repetitions per engine, in process.\n"]
    for name in ("resilient", ops.BASELINE):
        engine = ops.make_engine(name, user)
        state = ops.prepare(op, engine)
        step = ops.STEPS[op]
        for rep in range(max(reps // 10, 10)):
            step(engine, state, rep)
        with no_gc():
            start = time.perf_counter_ns()
            for rep in range(reps):
                step(engine, state, rep)
            plain = (time.perf_counter_ns() - start) / reps / 1000
            profiler = Profiler(interval=0.0001)
            profiler.start()
            for rep in range(reps):
                step(engine, state, rep)
            profiler.stop()
            tracer = cProfile.Profile()
            tracer.enable()
            for rep in range(reps):
                step(engine, state, rep)
            tracer.disable()
        tree = profiler.output_text(unicode=False, color=False, show_all=False)
        table = io.StringIO()
        stats = pstats.Stats(tracer, stream=table)
        stats.sort_stats("tottime").print_stats(30)
        sections.append(
            f"=== {name}: {plain:.1f} µs per {op} in this loop alone, without a profiler "
            f"(not interleaved: latest.md has the ratio; cProfile: divide ncalls by {reps})\n\n"
            f"--- pyinstrument\n{tree}\n--- cProfile (own time)\n{_trim(table.getvalue())}\n"
        )
    return relative_paths("\n".join(sections))


def _trim(text: str) -> str:
    """cProfile's table without its preamble."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(lines[start:])


def relative_paths(text: str) -> str:
    """Paths relative to site-packages, the standard library or the repository."""
    pattern = r"\S*/site-packages/|\S*/lib/python3\.\d+/|" + re.escape(str(ROOT) + "/")
    return re.sub(pattern, "", text)


def profile_http(env: BenchEnv, state: str, view: str, plan: http.Plan, duration: int) -> str:
    """py-spy over our gunicorn workers while ``view`` is driven with Redis ``state``."""
    spy = shutil.which("py-spy") or _venv_tool("py-spy")
    header = f"Profile of our engine's `{view}` view with Redis {state} (py-spy, {duration} s).\n"
    if spy is None:
        return header + "py-spy is not installed (bench extra).\n"
    tool = plan.tools[0]
    pair = ("resilient", state)
    with (
        http.redis_per_state(env, (state,)) as redis,
        http.serving(env, [pair], redis, plan.workers) as servers,
    ):
        server = servers[pair]
        cookie = http.logins(server, plan.connections)
        http.inject(redis[state], state)
        http.run_load(tool, server, view, cookie, duration=max(plan.warmup_s, 1), plan=plan)
        raw = env.workdir / f"py-spy-{state}-{view}.txt"
        args = [
            spy, "record", "--pid", str(server.process.pid), "--subprocesses", "--idle",
            "--rate", "200", "--format", "raw", "--duration", str(duration), "-o", str(raw),
        ]  # fmt: skip
        recorder = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        http.revive(server, cookie)
        result = http.summarise_load(
            [http.run_load(tool, server, view, cookie, duration=duration, plan=plan)]
        )
        _, err = recorder.communicate(timeout=duration + 60)
    if recorder.returncode != 0 or not raw.exists():
        message = err.decode(errors="replace")[-800:]
        return header + f"py-spy failed (status {recorder.returncode}): {message}\n"
    return (
        header
        + f"Load during the profile ({tool}): {result['rps']} req/s, p99 {result['p99_ms']} ms.\n\n"
        + aggregate(raw.read_text())
    )


def _venv_tool(name: str) -> str | None:
    import sys

    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


def _frame(text: str) -> str:
    """``function (path/to/file.py:12)`` -> ``function (file.py)``."""
    name, _, where = text.partition(" (")
    path = where.split(":")[0]
    return f"{name} ({'/'.join(path.split('/')[-2:])})" if path else name


def aggregate(raw: str, *, root: str = "WSGIHandler.__call__", top: int = 40) -> str:
    """Inclusive and leaf shares of py-spy's collapsed stacks, within ``root`` frames."""
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not count.isdigit() or root not in stack:
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        frames = frames[next(i for i, f in enumerate(frames) if f.startswith(root)) :]
        total += n
        for frame in set(frames):
            inclusive[frame] += n
        leaves[frames[-1]] += n
    if not total:
        return "no samples inside the Django handler\n"
    lines = [f"{total} samples inside {root}; inclusive share of that time:"]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(top)]
    lines += ["", "leaf frames (where the time is spent):"]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in leaves.most_common(15)]
    return "\n".join(lines) + "\n"


def run(
    env: BenchEnv,
    results: dict[str, Any],
    out: Path,
    *,
    mode: str,
    reps: int,
    plan: http.Plan,
    duration: int,
    progress: Callable[[str], None] = print,
) -> list[str]:
    """Profile what ``mode`` asks for; returns the names of the files written."""
    if mode == "never":
        return []
    missed = {t["key"] for t in results.get("targets", []) if t["met"] is False}
    op_jobs = sorted({OP_TARGETS[k] for k in missed if k in OP_TARGETS})
    http_jobs = sorted({HTTP_TARGETS[k] for k in missed if k in HTTP_TARGETS})
    if mode == "always":
        op_jobs = op_jobs or (["load"] if "ops" in results else [])
        http_jobs = http_jobs or ([("healthy", "read")] if "http" in results else [])
    written = []
    for op in op_jobs:
        progress(f"  profile: {op}")
        name = f"profile-{op}.txt"
        (out / name).write_text(profile_op(env, op, reps))
        written.append(name)
    for state, view in http_jobs:
        progress(f"  profile: http {state} {view}")
        name = f"profile-http-{state}-{view}.txt"
        with contextlib.suppress(OSError):
            (out / name).unlink()
        (out / name).write_text(profile_http(env, state, view, plan, duration))
        written.append(name)
    return written
