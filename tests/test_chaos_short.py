"""The short forms of the chaos run and of the HTTP cookie fuzz, as part of ``make test``.

Both run ``python -m chaos`` in a subprocess (it starts its own Redis, Sentinel, gunicorn
servers and SQLite database, all on loopback) and must exit 0 with their table printed:

- ``python -m chaos --short``: 10 virtual users against two app servers while Redis is
  killed, restarted empty, hung, write-paused, flushed, failed over by Sentinel, and the
  ledger cannot record logins, logouts and revocations (database read-only, ledger table
  locked, connections refused with Redis up and during an outage); no 5xx but the 503s
  due to a ledger fault (logins and logouts only), no lost write, no rollback, no
  unexpected logout, no resurrection of a dead session (``chaos.KNOWN_BUGS`` excepted,
  see ``tests/test_chaos_findings.py``), and the ledger agrees with what users were told;
- ``python -m chaos fuzz --short``: 1,500 mutated session and backup cookies; no 5xx,
  nobody logged in, exactly one ``SuspiciousSession`` log line per refused backup.

A failure shows the run's results table first, then the end of its output (the server
log tails printed after the table would otherwise hide it).

They run on the ``DRS_TEST_DB=sqlite`` pass only, the chaos run on PostgreSQL when it
answers (as the full ``make chaos`` does), else on SQLite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    (os.environ.get("DRS_TEST_DB", "sqlite").strip().lower() or "sqlite") != "sqlite",
    reason="the short chaos run goes with the SQLite pass",
)


def run_chaos(*args: str, timeout: float) -> tuple[int, str, float]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "chaos", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stdout.decode(errors="replace"), time.monotonic() - start


def test_short_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    chart = tmp_path / "timeline.png"
    # PostgreSQL when it answers (always under CI): its row locks and lock_timeout make
    # a ledger fault what fails a request, not the file lock SQLite's writers queue on,
    # which a loaded machine turns into false "503 not due" answers.
    database = ("--db", "auto", "--pg-name", f"drs_chaos_short_{os.getpid()}")
    code, output, elapsed = run_chaos(
        "run", "--short", *database, "--timeline", str(chart), timeout=300
    )
    assert "CHAOS TABLE" in output, results_of(output, "CHAOS")
    assert code == 0, results_of(output, "CHAOS")
    assert "CHAOS RESULT: PASS" in output, results_of(output, "CHAOS")
    for fault in (
        "redis killed",
        "DB read-only",
        "redis restarted empty",
        "redis hung (SIGSTOP)",
        "ledger table locked",
        "redis slowed (CLIENT PAUSE WRITE)",
        "FLUSHALL",
        "DB refused (Redis up)",
        "revocation during outage",
        "DB down during outage",
        "sentinel failover",
    ):
        assert f"| {fault} " in output, f"no row for {fault!r}"
    for column in ("resurrections", "rollbacks", "503 ok/bad"):
        assert f" {column} |" in output, f"no column {column!r}"
    # Each ledger fault was met: logins or logouts were refused (503) while it lasted.
    refused = _column(output, "503 ok/bad")
    for fault in ("ledger table locked", "DB refused (Redis up)", "DB down during outage"):
        assert int(refused[fault].split("/")[0]) > 0, f"no refusal during {fault!r}"
    # Only the SQLite read-only fault may be skipped, where the file cannot be made
    # immutable (chattr +i needs the file system's support and CAP_LINUX_IMMUTABLE).
    skipped = [line for line in output.splitlines() if "SKIPPED" in line]
    assert all("chattr" in line for line in skipped), skipped
    for line in skipped:
        print(line)
    assert f"timeline: {chart}" in output
    assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    print(f"short chaos run: {elapsed:.0f} s")


def results_of(output: str, run: str, tail: int = 4000) -> str:
    """What a failure shows: the run's results table (from ``<RUN> TABLE`` to its
    ``<RUN> RESULT`` line, invariants broken included), then the end of the output
    (server log tails, a traceback). The table comes first: the log tails printed after
    it would otherwise push it out of a tail of the output."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == f"{run} TABLE"), None)
    if start is None:
        table = f"(no {run} TABLE in the output)"
    else:
        end = next(
            (i for i in range(start, len(lines)) if lines[i].startswith(f"{run} RESULT")),
            len(lines) - 1,
        )
        table = "\n".join(lines[start : end + 1])
    return f"{table}\n\n--- the last {tail} characters of the output ---\n{output[-tail:]}"


def _column(output: str, name: str) -> dict[str, str]:
    """One column of the chaos table, by fault."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in output.splitlines()
        if line.startswith("| ")
    ]
    header = next(row for row in rows if row[0] == "fault")
    index = header.index(name)
    return {row[0]: row[index] for row in rows if len(row) == len(header)}


def test_short_http_fuzz_of_session_cookies() -> None:
    code, output, elapsed = run_chaos("fuzz", "--short", "--db", "sqlite", timeout=180)
    assert "FUZZ TABLE" in output, results_of(output, "FUZZ")
    assert code == 0, results_of(output, "FUZZ")
    assert "FUZZ RESULT: PASS" in output, results_of(output, "FUZZ")
    assert "1500 requests" in output
    print(f"short HTTP fuzz: {elapsed:.0f} s")


def test_a_failure_shows_the_results_table_before_the_log_tails() -> None:
    logs = [f"app log line {i}" for i in range(2000)]
    output = "\n".join(
        [
            "[chaos 10:00:00] start",
            "CHAOS TABLE",
            "| fault | lost writes |",
            "| redis killed | 3 |",
            "INVARIANTS BROKEN: 1",
            "CHAOS RESULT: FAIL",
            *logs,
        ]
    )
    shown = results_of(output, "CHAOS")
    table, rest = shown.split("\n\n--- the last", 1)
    assert table.splitlines() == [
        "CHAOS TABLE",
        "| fault | lost writes |",
        "| redis killed | 3 |",
        "INVARIANTS BROKEN: 1",
        "CHAOS RESULT: FAIL",
    ]
    assert rest.endswith(logs[-1]) and logs[0] not in rest
    assert results_of("no table, a traceback", "FUZZ").startswith("(no FUZZ TABLE")
