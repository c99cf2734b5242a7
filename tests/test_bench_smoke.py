"""The benchmark script keeps working: ``python -m benchmarks --smoke`` in a subprocess.

Benchmarks are not tests: nothing here looks at a figure, only at the shape of what the
smoke run (tiny counts, about 50 s) writes: every section of the JSON (the Redis Cluster
section starts two private clusters, a few seconds), the targets, the Markdown, the sizing
page's measurements, the profiles, and the charts when matplotlib (the ``bench`` extra) is
installed. Counts that are the engine's promises (one ``GET`` per cached read, no ledger
write on a read) are checked: they are not timings.
It runs once per ``make test``, on the SQLite pass; the run brings its own redis-server and
its own PostgreSQL database (a SQLite file when PostgreSQL does not answer).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    os.environ.get("DRS_TEST_DB", "sqlite").strip().lower() not in ("", "sqlite"),
    reason="runs once per `make test`, on the SQLite pass",
)

OPS = {"load", "save", "create", "cycle_key", "flush", "encode", "decode", "load_down"}
ENGINES = {"resilient", "cache", "cached_db", "signed_cookies"}
VIEWS = ("read", "write")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bench-smoke")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_SETTINGS")}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


def test_json_has_every_section(smoke_run: tuple[Path, str]) -> None:
    out, _ = smoke_run
    runs = sorted(out.glob("*-smoke.json"))
    assert len(runs) == 1
    results = json.loads((out / "latest.json").read_text())
    assert json.loads(runs[0].read_text()) == results
    assert results["mode"] == "smoke"
    assert {"cpu", "cores", "ram_gb"} <= results["machine"].keys()
    assert {"python", "django", "django_redis", "redis_py", "redis_server", "database"} <= (
        results["versions"].keys()
    )
    assert results["versions"]["redis_server"][0].isdigit()

    ops = results["ops"]["results"]
    assert {(row["op"], row["engine"]) for row in ops} == {(o, e) for o in OPS for e in ENGINES}
    for row in ops:
        assert row["n"] == 50
        assert _number(row["median_us"]) and _number(row["p99_us"]), row
        assert row["p99_us"] >= row["median_us"]
        if row["engine"] == row["baseline"]:
            assert row["ratio"] == 1.0
    outcomes = {r["engine"]: r["outcome"] for r in ops if r["op"] == "load_down"}
    assert outcomes["resilient"] == "logged in"
    assert outcomes["cache"] == "empty session (logged out)"

    http = results["http"]
    tools = set(http["config"]["tools"])
    assert tools and tools <= {"wrk", "python"}
    expected = {(v, "healthy", "resilient", t) for v in ("read", "write") for t in tools}
    assert {(r["view"], r["state"], r["engine"], r["tool"]) for r in http["summary"]} == expected
    assert {(r["view"], r["state"], r["engine"], r["tool"]) for r in http["slices"]} == expected
    for row in http["summary"]:
        assert row["requests"] > 0 and _number(row["rps"]) and _number(row["p99_ms"]), row
        assert row["p99_ms"] >= row["p50_ms"] > 0, row
        assert row["non_2xx"] == 0 and row["logged_out"] == 0, row

    cleanup = results["cleanup"]
    assert cleanup["rows"] == 2000
    assert {r["engine"] for r in cleanup["runs"]} == {"resilient", "db"}
    for row in cleanup["runs"]:
        assert row["rows"] == 2000 and row["rows_left"] == 0, row
        assert _number(row["wall_s"]) and row["max_rss_mb"] > 0, row

    cluster = results["cluster"]
    assert {(r["op"], r["setup"]) for r in cluster["ops"]["results"]} == {
        (op, setup)
        for op in ("load", "save", "create", "cycle_key", "flush")
        for setup in ("standalone", "cluster")
    }
    for row in cluster["ops"]["results"]:
        assert row["n"] == 50 and _number(row["median_us"]) and _number(row["ratio"]), row
    setups = {(r["setup"], r["view"]) for r in cluster["http"]["summary"]}
    assert setups >= {(s, v) for s in ("standalone", "1 shard", "3 shards") for v in VIEWS}
    for row in cluster["http"]["summary"]:
        assert row["requests"] > 0 and row["non_2xx"] == 0 and row["logged_out"] == 0, row

    sizing = results["sizing"]["measured"]
    assert set(sizing["memory"]) == {"login, small data", "login, 1 KB of data", "tombstone"}
    for row in sizing["memory"].values():
        assert row["memory_usage_bytes"] > row["value_bytes"] > 0, row
        assert _number(row["used_memory_per_session"]), row
    per = sizing["requests"]["per_request"]
    assert per["read"]["redis_by_command"] == {"get": 1}  # one GET, as promised
    assert per["write"]["redis_round_trips"] == 2 and per["read"]["ledger_writes"] == 0
    assert per["read, activity update due"]["ledger_writes"] == 1
    assert all(row["status"] == 200 for row in per.values()), per
    assert [row["rate"] for row in results["sizing"]["model"]] == [10_000, 100_000, 1_000_000]
    assert "| 1,000,000 |" in (out / "sizing.md").read_text()

    keys = {t["key"] for t in results["targets"]}
    assert {"load_ratio", "save_ratio", "hung_p99_read", "down_rps_write"} <= keys
    measured = {t["key"]: t["met"] for t in results["targets"]}
    assert isinstance(measured["load_ratio"], bool)
    assert measured["hung_p99_read"] is None  # smoke: no outage runs


def test_markdown_and_charts(smoke_run: tuple[Path, str]) -> None:
    out, stdout = smoke_run
    markdown = (out / "latest.md").read_text()
    for heading in ("| target |", "| operation |", "| view | Redis |", "| engine | table |"):
        assert heading in markdown
    assert markdown.strip() in stdout
    results = json.loads((out / "latest.json").read_text())
    # --profile always (the smoke default): the op and HTTP profilers keep working too.
    assert {"profile-load.txt", "profile-http-healthy-read.txt"} <= set(results["profiles"])
    assert "=== resilient" in (out / "profile-load.txt").read_text()
    assert (
        "Profile of our engine's `read` view" in (out / "profile-http-healthy-read.txt").read_text()
    )
    if importlib.util.find_spec("matplotlib") is None:
        assert results["charts"] == [] and "matplotlib" in results["charts_skipped"]
        return
    assert sorted(results["charts"]) == sorted(
        ["ops_ratios.png", "http_throughput.png", "http_p99.png", "cleanup.png"]
    )
    for name in results["charts"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_adoption_section(smoke_run: tuple[Path, str]) -> None:
    out, stdout = smoke_run
    adoption = json.loads((out / "latest.json").read_text())["adoption"]
    request = adoption["request"]
    assert request["reps"] == 50 and _number(request["ratio"]), request
    assert [run["sessions"] for run in adoption["bulk"]] == [200, 2000]
    for run in adoption["bulk"]:
        assert run["summary"].startswith(f"Sessions adopted: {run['sessions']} "), run
        assert run["rate_per_s"] > 0 and run["peak_rss_mb"] >= run["start_rss_mb"] > 0
    assert "`adoptsessions` (batches of 1,000" in stdout
