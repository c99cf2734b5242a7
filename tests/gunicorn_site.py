"""A live gunicorn site for tests: its own database, a few workers, always stopped.

``site_database`` makes the site's database (an SQLite file, or a PostgreSQL database made
and dropped here, named after ``DRS_TEST_PG_NAME``); ``gunicorn_site`` starts ``tests.mw_wsgi``
with ``tests.mw_settings`` (or what ``env`` says) and stops it, workers included, however
the test ends. Used by ``tests/test_multiworker.py`` and ``tests/test_metrics_live.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.redis_server import free_port

REPO = Path(__file__).resolve().parent.parent
SETTINGS = "tests.mw_settings"


def pg_name(suffix: str) -> str:
    """A PostgreSQL database name of this run's own (``DRS_TEST_PG_NAME``, else ``drs``)."""
    return f"{os.environ.get('DRS_TEST_PG_NAME') or 'drs'}_{suffix}"


def _pdeathsig() -> None:  # pragma: no cover - runs in the forked child
    """Have the kernel SIGTERM gunicorn's master if the test process dies abruptly."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def children(pid: int) -> set[int]:
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


def alive(pid: int) -> bool:
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


def stop(process: subprocess.Popen[bytes], workers: set[int]) -> None:
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
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in workers:
        if alive(pid):  # pragma: no cover - the master should have reaped them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, timeout=120)
    assert done.returncode == 0, (
        f"{command[3]} failed ({done.returncode}):\n{done.stdout.decode()}{done.stderr.decode()}"
    )


def django(env: dict[str, str], *args: str) -> None:
    """``python -m django ARGS --settings=...`` in the site's environment."""
    settings = env.get("DJANGO_SETTINGS_MODULE", SETTINGS)
    run([sys.executable, "-m", "django", args[0], f"--settings={settings}", *args[1:]], env)


@contextlib.contextmanager
def site_database(tmp_path: Path, name: str) -> Iterator[dict[str, str]]:
    """Environment naming the site's own database (made here, dropped afterwards)."""
    backend = os.environ.get("DRS_TEST_DB", "sqlite").strip().lower() or "sqlite"
    if backend != "postgres":
        yield {"DRS_TEST_DB": "sqlite", "DRS_MW_SQLITE": str(tmp_path / f"{name}.sqlite3")}
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
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield {"DRS_TEST_DB": "postgres", "DRS_MW_PG_NAME": name}
    finally:
        with psycopg.connect(**params) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def site_env(database: dict[str, str], redis_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        **database,
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "DRS_TEST_REDIS_URL": redis_url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        **extra,
    }


@contextlib.contextmanager
def gunicorn_site(
    env: dict[str, str],
    tmp_path: Path,
    *,
    workers: int = 2,
    ready: str = "/whoami/",
    config: Path | None = None,
) -> Iterator[Server]:
    """gunicorn serving ``tests.mw_wsgi`` with ``workers`` sync workers, until the block ends
    (``config``: a gunicorn configuration file, for its server hooks)."""
    port = free_port()
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn",
                "--workers", str(workers),
                "--worker-class", "sync",
                "--bind", f"127.0.0.1:{port}",
                "--timeout", "30",
                "--graceful-timeout", "3",
                "--log-level", "warning",
                *(("--config", str(config)) if config is not None else ()),
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
                if requests.get(server.url + ready, timeout=5).status_code == 200:
                    server.workers = children(process.pid)
                    if len(server.workers) == workers:
                        break
            assert time.monotonic() < deadline, f"gunicorn never answered:\n{server.log_tail()}"
            time.sleep(0.05)
        yield server
    finally:
        server.workers |= children(process.pid)
        stop(process, server.workers)
    assert process.returncode is not None
    leftovers = [pid for pid in server.workers if alive(pid)]
    assert leftovers == [], f"gunicorn workers left behind: {leftovers}"
