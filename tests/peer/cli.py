"""``python -m tests.peer``: run the peer suites with both engines and compare them.

Examples::

    python -m tests.peer                                  # everything (make test-peer)
    python -m tests.peer --suite django --mode sqlite-tz  # one mode of Django's suite
    python -m tests.peer --suite django --apps auth_tests,sessions_tests --engine ours
    python -m tests.peer --report-only                    # compare what test-artifacts/ has

Each run (suite x mode x engine) gets a private redis-server (``tests/redis_server.py``),
unique PostgreSQL test database names, a log and a JSON file of every outcome in
``test-artifacts/peer/``. The comparison (``tests/peer/results.py``) prints both engines'
counts side by side and writes ``report.md`` and ``summary.json``. Exit status 1 when a test
fails only with our engine and is not in ``tests/peer/expected_failures.toml``, or when a run
did not complete; tests failing with both engines are reported, never fatal.

Modes: ``sqlite-notz``, ``sqlite-tz``, ``pg-notz``, ``pg-tz`` (SQLite in memory or PostgreSQL
on ``DRS_TEST_PG_HOST:PORT``; ``USE_TZ`` off or on). Without PostgreSQL the ``pg-*`` modes
are skipped with a warning, except under ``CI`` where that is an error. django-allauth's
suite runs on SQLite (its settings' database; one of its tests hangs on PostgreSQL), with
``USE_TZ`` off and on (``--allauth-mode``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version as distribution_version
from pathlib import Path

from tests.peer import fetch
from tests.peer.results import (
    Comparison,
    Run,
    compare,
    group_by_essence,
    load_expected,
    markdown,
    run_path,
    summary,
    table,
)
from tests.redis_server import RedisServer

REPO_ROOT = Path(__file__).resolve().parents[2]
SITE = Path(__file__).resolve().parent / "site"
ENGINES = ("ours", "cache")

#: Django test apps the issue names: the ones built around sessions, login and messages.
CORE_APPS = (
    "sessions_tests",
    "auth_tests",
    "messages_tests",
    "test_client",
    "test_client_regress",
    "csrf_tests",
    "middleware",
    "admin_views",
    "flatpages_tests",
)
#: Other Django test apps whose tests go through the session engine: they log in
#: (``client.login``/``force_login``, ``alogin``), read ``request.session`` or check the
#: session middleware, found by grepping Django's tests/ (see tests/peer/README.md).
EXTRA_APPS = (
    "admin_changelist",
    "admin_checks",
    "admin_custom_urls",
    "admin_docs",
    "admin_inlines",
    "admin_utils",
    "admin_widgets",
    "async",
    "generic_inline_admin",
    "proxy_models",
    "timezones",
    "urlpatterns_reverse",
)
ALL_APPS = CORE_APPS + EXTRA_APPS


@dataclass(frozen=True)
class Mode:
    name: str
    db: str
    use_tz: bool


MODES = {
    m.name: m
    for m in (
        Mode("sqlite-notz", "sqlite", False),
        Mode("sqlite-tz", "sqlite", True),
        Mode("pg-notz", "postgres", False),
        Mode("pg-tz", "postgres", True),
    )
}


def pg_address() -> tuple[str, int]:
    return os.environ.get("DRS_TEST_PG_HOST", "127.0.0.1"), int(
        os.environ.get("DRS_TEST_PG_PORT", "5432")
    )


def pg_reachable() -> bool:
    try:
        socket.create_connection(pg_address(), timeout=3).close()
    except OSError:
        return False
    return True


def drop_test_databases(prefix: str) -> list[str]:
    """Drop the PostgreSQL databases whose names start with ``prefix`` (this run's only)."""
    import psycopg
    from psycopg import sql

    host, port = pg_address()
    dropped: list[str] = []
    with psycopg.connect(
        host=host,
        port=port,
        user=os.environ.get("DRS_TEST_PG_USER", "postgres"),
        password=os.environ.get("DRS_TEST_PG_PASSWORD", "") or None,
        dbname="postgres",
        autocommit=True,
        connect_timeout=5,
    ) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)
            )
        ]
        for name in names:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            dropped.append(name)
    return dropped


# -- one run ----------------------------------------------------------------------------------


@dataclass
class Plan:
    suite: str
    mode: Mode
    engine: str
    labels: tuple[str, ...]
    parallel: int
    artifacts: Path
    token: str

    @property
    def name(self) -> str:
        return f"{self.suite}-{self.mode.name}-{self.engine}"

    @property
    def db_prefix(self) -> str:
        short = self.mode.name.replace("-", "")
        return f"test_drs_{self.token}_{self.engine[0]}{self.suite[0]}_{short}"

    def command(self) -> tuple[list[str], Path]:
        if self.suite == "django":
            tests_dir = fetch.django_tests_dir()
            command = [
                sys.executable,
                str(SITE / "drs_peer_runtests.py"),
                str(tests_dir / "runtests.py"),
                "--settings=drs_peer_django_settings",
                "--noinput",
                f"--parallel={self.parallel}",
                "--verbosity=1",
                *self.labels,
            ]
            return command, tests_dir
        root = fetch.allauth_root()
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "drs_peer_pytest_recorder",
            "--ds=drs_peer_allauth_settings",
            "-q",
            "-rN",
            # Plain tracebacks, as unittest's: pytest's long ones (source and locals of
            # every frame) made a run with many failures several times slower.
            "--tb=native",
            *self.labels,
        ]
        return command, root

    def environment(self, redis_url: str) -> dict[str, str]:
        env = dict(os.environ)
        cwd = self.command()[1]
        # The suite's own folder first (allauth has a top-level ``tests`` package, like us),
        # then the settings modules, then this repository for django_resilient_sessions.
        paths = [str(cwd), str(SITE), str(REPO_ROOT)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(paths),
                "DRS_PEER_ENGINE": self.engine,
                "DRS_PEER_REDIS_URL": redis_url,
                "DRS_PEER_DB": self.mode.db,
                "DRS_PEER_USE_TZ": "1" if self.mode.use_tz else "0",
                "DRS_PEER_DB_PREFIX": self.db_prefix,
                "DRS_PEER_RESULT_FILE": str(self.raw_path),
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        env.pop("DJANGO_SETTINGS_MODULE", None)
        return env

    @property
    def raw_path(self) -> Path:
        return self.artifacts / f"{self.name}.raw.json"

    @property
    def log_path(self) -> Path:
        return self.artifacts / f"{self.name}.log"


def _end_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL, the process group ``process`` leads, if it still runs."""
    if process.poll() is not None:
        return
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _terminate_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that ``finally`` blocks stop the suites' processes."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def execute(plan: Plan, timeout: float) -> Run:
    command, cwd = plan.command()
    plan.raw_path.unlink(missing_ok=True)
    meta: dict[str, object] = {
        "suite": plan.suite,
        "mode": plan.mode.name,
        "engine": plan.engine,
        "labels": list(plan.labels),
        "django_version": distribution_version("django"),
        "suite_version": distribution_version("django")
        if plan.suite == "django"
        else fetch.ALLAUTH_VERSION,
        "parallel": plan.parallel if plan.suite == "django" else 1,
        "command": command,
        "log": plan.log_path.name,
    }
    print(f"[peer] {plan.name}: starting ({len(plan.labels)} labels)", flush=True)
    started = time.monotonic()
    crash: str | None = None
    with RedisServer() as redis_server, open(plan.log_path, "w") as log:
        log.write(f"$ cd {cwd} && {' '.join(command)}\n")
        log.flush()
        # A session (process group) of its own: a timeout or an interrupted harness ends
        # the suite with all its workers, never leaving them to run on.
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=plan.environment(redis_server.url),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            returncode = None
            crash = f"timed out after {timeout:.0f}s"
        finally:
            _end_process_group(process)
    wall = time.monotonic() - started
    if plan.mode.db == "postgres":
        with contextlib.suppress(Exception):
            leftovers = drop_test_databases(plan.db_prefix)
            if leftovers:
                print(f"[peer] {plan.name}: dropped leftover databases {leftovers}", flush=True)
    tests: dict[str, dict[str, object]] = {}
    if plan.raw_path.is_file():
        tests = json.loads(plan.raw_path.read_text())["tests"]
        plan.raw_path.unlink()
    if crash is None:
        ok_codes = {0, 1}
        if not tests:
            crash = f"no test outcome recorded (exit status {returncode}); see {plan.log_path}"
        elif returncode not in ok_codes:
            crash = f"exit status {returncode}; see {plan.log_path}"
    meta.update({"returncode": returncode, "wall_seconds": round(wall, 1), "crash": crash})
    run = Run(plan.suite, plan.mode.name, plan.engine, meta, tests)
    run.save(run_path(plan.artifacts, plan.suite, plan.mode.name, plan.engine))
    counts = run.counts()
    status = f"CRASH: {crash}" if crash else ", ".join(f"{v} {k}" for k, v in counts.items())
    print(f"[peer] {plan.name}: {status} in {wall:.0f}s", flush=True)
    return run


# -- command line -----------------------------------------------------------------------------


def _modes(values: list[str]) -> list[Mode]:
    names: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if part == "all":
                names.extend(MODES)
            elif part in MODES:
                names.append(part)
            elif part:
                raise SystemExit(f"unknown mode {part!r}; choose from {', '.join(MODES)} or all")
    return [MODES[n] for n in dict.fromkeys(names)]


def _apps(value: str) -> tuple[str, ...]:
    if value == "all":
        return ALL_APPS
    if value == "core":
        return CORE_APPS
    return tuple(part.strip() for part in value.split(",") if part.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.peer",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--suite", choices=("django", "allauth", "all"), default="all")
    parser.add_argument("--engine", choices=("ours", "cache", "both"), default="both")
    parser.add_argument(
        "--mode",
        action="append",
        default=None,
        help="Django suite modes: sqlite-notz, sqlite-tz, pg-notz, pg-tz, all (repeat or "
        "comma-separate; default all)",
    )
    parser.add_argument(
        "--apps",
        default="all",
        help="Django test labels: all (default), core (the nine the issue names) or a "
        "comma-separated list of apps or test labels",
    )
    parser.add_argument(
        "--pg-apps",
        default=None,
        help="Django test labels for the pg-* modes (default: as --apps)",
    )
    parser.add_argument(
        "--allauth-mode",
        action="append",
        default=None,
        help="modes for django-allauth's suite: sqlite-notz, sqlite-tz (default: both)",
    )
    parser.add_argument(
        "--allauth-tests",
        default="tests/",
        help="pytest arguments selecting allauth tests, comma-separated (default tests/)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes for Django's runner (default: min(2, cores))",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path(os.environ.get("ARTIFACTS", "test-artifacts")) / "peer",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: compare the run files already in --artifacts",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _terminate_on_sigterm()
    artifacts: Path = args.artifacts.resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    expected = load_expected()
    suites = ("django", "allauth") if args.suite == "all" else (args.suite,)
    engines = ENGINES if args.engine == "both" else (args.engine,)
    django_modes = _modes(args.mode or ["all"])
    allauth_modes = _modes(args.allauth_mode or ["sqlite-notz,sqlite-tz"])
    if "allauth" in suites and any(m.db == "postgres" for m in allauth_modes):
        # tests/apps/idp/oidc/test_authorization.py::test_authorization_code_concurrent_
        # redemption makes 8 threads meet at a barrier inside a request; on PostgreSQL the
        # threads' connections wait on the test's open transaction and it never ends.
        print("error: django-allauth's suite runs on SQLite only (it hangs on PostgreSQL)")
        return 2
    if not pg_reachable():
        wanted = [m.name for m in (*django_modes, *allauth_modes) if m.db == "postgres"]
        if wanted and not args.report_only:
            host, port = pg_address()
            message = f"PostgreSQL does not answer on {host}:{port}"
            if os.environ.get("CI"):
                print(f"error: CI is set but {message} (modes {wanted})", file=sys.stderr)
                return 1
            print(f"warning: {message}: skipping {', '.join(sorted(set(wanted)))}", flush=True)
            django_modes = [m for m in django_modes if m.db != "postgres"]
            allauth_modes = [m for m in allauth_modes if m.db != "postgres"]

    token = secrets.token_hex(4)
    plans: list[Plan] = []
    for suite in suites:
        for mode in django_modes if suite == "django" else allauth_modes:
            if suite == "django":
                labels = _apps(
                    args.pg_apps if mode.db == "postgres" and args.pg_apps else args.apps
                )
            else:
                labels = tuple(p.strip() for p in args.allauth_tests.split(",") if p.strip())
            for engine in engines:
                plans.append(Plan(suite, mode, engine, labels, args.parallel, artifacts, token))

    started = time.monotonic()
    if not args.report_only:
        if shutil.which("redis-server") is None and not os.environ.get("DRS_REDIS_SERVER"):
            print("error: redis-server is needed (make redis)", file=sys.stderr)
            return 1
        if "django" in suites:
            fetch.fetch_django()
        if "allauth" in suites:
            fetch.fetch_allauth()
        for plan in plans:
            execute(plan, args.timeout)

    comparisons: list[Comparison] = []
    seen: set[tuple[str, str]] = set()
    for plan in plans:
        key = (plan.suite, plan.mode.name)
        if key in seen:
            continue
        seen.add(key)
        loaded = {}
        for engine in ENGINES:
            path = run_path(artifacts, plan.suite, plan.mode.name, engine)
            loaded[engine] = Run.load(path) if path.is_file() else None
        comparisons.append(compare(*key, loaded["ours"], loaded["cache"], expected))

    report = markdown(comparisons)
    (artifacts / "report.md").write_text(report)
    data = summary(comparisons)
    data["wall_seconds"] = round(time.monotonic() - started, 1)
    (artifacts / "summary.json").write_text(json.dumps(data, indent=1))

    print()
    print(table(comparisons))
    print()
    for c in comparisons:
        if c.ours is not None and c.cache is None and "cache" not in engines:
            print(f"note: {c.suite} {c.mode}: no comparable cache-engine run to compare with")
    unexpected = [f for c in comparisons for f in c.unexpected]
    crashes = data["crashes"]
    stale = sorted({(e.suite, e.test) for c in comparisons for e in c.stale})
    both = sum(1 for c in comparisons for f in c.findings if f.kind == "both")
    if both:
        print(f"{both} failures with both engines (not ours): see {artifacts / 'report.md'}")
    for suite, test in stale:
        print(f"warning: expected failure passed with our engine: {suite} {test}")
    for crash in crashes:
        print(f"error: run did not complete: {crash}")
    if unexpected:
        print(f"\n{len(unexpected)} engine-only failures not in tests/peer/expected_failures.toml:")
        for cause, members in group_by_essence(unexpected):
            where = " ".join(sorted({f"{f.suite}:{f.mode}" for f in members}))
            print(f"  {len(members)} x {cause}  [{where}]")
            for finding in members[:5]:
                print(f"      {finding.suite} {finding.mode} {finding.test}")
            if len(members) > 5:
                print(f"      ... and {len(members) - 5} more (see report.md)")
    print(f"\nreport: {artifacts / 'report.md'}; total {data['wall_seconds']:.0f}s")
    passed = sum((c.ours.counts()["passed"] if c.ours else 0) for c in comparisons)
    failed = len(unexpected) + len(crashes)
    # The plain closing line CI reads: what this harness judged, not the suites' raw counts.
    print(f"peer: {passed} passed, {failed} failed")
    return 1 if unexpected or crashes else 0
