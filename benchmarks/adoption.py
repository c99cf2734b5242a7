"""Adoption (``PREVIOUS_ENGINE``): what a request that adopts costs, and bulk adoption's rate.

``request``: interleaved in this process, repetition ``i`` times (a) a request-like load of
a session this engine already has (Redis hit, backup cookie sent) and (b) a request that
adopts a session of Django's ``db`` engine: ``load()`` (the previous store read, the
``AdoptedSession`` record and the login's ``UserSession`` row in one transaction, the Redis
copy, the row deleted from ``django_session``) then ``save()`` (its first backup, as the
middleware does). Each adopting repetition has its own session, made beforehand.

``bulk``: ``manage.py adoptsessions`` in a fresh process over ``django_session`` filled
with N sessions (half of them logins), at two sizes: wall time, sessions per second, and
the command's peak resident memory (``tests/adoption_rss.py``: reset, then ``VmHWM``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.env import ROOT, BenchEnv, no_gc
from benchmarks.stats import percentile, ratio

PREVIOUS = "django.contrib.sessions.backends.db"


def _request_costs(reps: int) -> dict[str, Any]:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import override_settings

    from django_resilient_sessions.backends.resilient import SessionStore
    from tests.adoption_seed import seed_table, session_data

    users = list(get_user_model().objects.order_by("pk")[:1])
    served = SessionStore()
    served.update(session_data(0, users))
    served.save()
    key, token = served.session_key, served.sealed.token if served.sealed else None
    warmup = max(reps // 10, 5)
    # Even indexes are logins: every adopting request adopts one.
    keys = seed_table(2 * (reps + warmup), users, keep=2 * (reps + warmup))[::2]
    samples: dict[str, list[int]] = {"served": [], "adopting": []}
    options = dict(settings.RESILIENT_SESSIONS, PREVIOUS_ENGINE=PREVIOUS)
    with override_settings(RESILIENT_SESSIONS=options), no_gc():
        for i, old in enumerate(keys):
            start = time.perf_counter_ns()
            SessionStore(key, backup=token).load()
            middle = time.perf_counter_ns()
            store = SessionStore(old)
            assert store.load(), "adopted"
            store.save()
            end = time.perf_counter_ns()
            if i >= warmup:
                samples["served"].append(middle - start)
                samples["adopting"].append(end - middle)
    medians = {name: percentile(values, 50) / 1000 for name, values in samples.items()}
    return {
        "reps": reps,
        "served_us": round(medians["served"], 1),
        "adopting_us": round(medians["adopting"], 1),
        "ratio": ratio(medians["adopting"], medians["served"]),
    }


def _bulk(env: BenchEnv, size: int) -> dict[str, Any]:
    from django.contrib.auth import get_user_model

    from tests.adoption_seed import make_users, seed_table

    users = make_users(1000) if get_user_model().objects.count() < 1000 else None
    seed_table(size, users or list(get_user_model().objects.order_by("pk")[:1000]))
    done = subprocess.run(
        [sys.executable, "-m", "tests.adoption_rss", PREVIOUS, "1000"],
        env=env.subprocess_env("resilient"), cwd=ROOT, capture_output=True, text=True,
        check=True, timeout=3600,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "sessions": size,
        "wall_s": round(result["seconds"], 2),
        "rate_per_s": round(size / result["seconds"]),
        "peak_rss_mb": round(result["peak_kb"] / 1024, 1),
        "start_rss_mb": round(result["baseline_kb"] / 1024, 1),
        "summary": result["summary"],
    }


def run(
    env: BenchEnv, *, reps: int, sizes: tuple[int, int], progress: Callable[[str], None] = print
) -> dict[str, Any]:
    from django.contrib.sessions.models import Session

    from django_resilient_sessions.models import AdoptedSession, UserSession

    env.restore_redis()
    request = _request_costs(reps)
    progress(f"  adoption: {reps} adopting requests, {request['ratio']}x a Redis hit")
    bulk = []
    for size in sizes:
        Session.objects.all().delete()
        AdoptedSession.objects.all().delete()
        UserSession.objects.all().delete()
        env.restore_redis()
        bulk.append(_bulk(env, size))
        progress(f"  adoption: adoptsessions over {size:,} sessions: {bulk[-1]['rate_per_s']}/s")
    return {"database": env.db_kind, "request": request, "bulk": bulk}


def table(adoption: dict[str, Any]) -> list[str]:
    """The markdown lines of the section (for ``latest.md``)."""
    r = adoption["request"]
    lines = [
        f"Adoption from Django's `db` engine ({adoption['database']}): a request that adopts "
        f"(load + first save, median of {r['reps']}) against a request served from Redis:",
        "",
        "| request | median | ratio |",
        "| --- | --- | --- |",
        f"| served from Redis | {r['served_us']:.0f} µs | 1.00x |",
        f"| adopting (previous store read, record, row, Redis copy, backup) | "
        f"{r['adopting_us']:.0f} µs | {r['ratio']:.2f}x |",
        "",
        "`adoptsessions` (batches of 1,000, its own process):",
        "",
        "| sessions | wall time | sessions/s | peak RSS | RSS at start |",
        "| --- | --- | --- | --- | --- |",
    ]
    for run in adoption["bulk"]:
        lines.append(
            f"| {run['sessions']:,} | {run['wall_s']:.1f} s | {run['rate_per_s']:,} | "
            f"{run['peak_rss_mb']:.0f} MB | {run['start_rss_mb']:.0f} MB |"
        )
    return lines
