"""What every benchmark shares: one private redis-server, one database, Django set up in
this process with :mod:`benchmarks.site.settings`, and the facts about the machine and the
versions that are stamped on every result.

The redis-server is started by :class:`tests.redis_server.RedisServer` on a free port
(never 6379). The database is PostgreSQL (a database of our own, created here and dropped
at the end; never ``test`` or ``test_*``) or, when PostgreSQL does not answer and the run
allows it (smoke mode), a SQLite file in a temporary directory.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_MODULE = "benchmarks.site.settings"

USERNAME = "bench"
PASSWORD = "bench-password"


class BenchError(RuntimeError):
    """The benchmark cannot run here (no PostgreSQL, no redis-server...)."""


@dataclass
class PgTarget:
    host: str = field(
        default_factory=lambda: os.environ.get(
            "DRS_BENCH_PG_HOST", os.environ.get("DRS_TEST_PG_HOST", "127.0.0.1")
        )
    )
    port: str = field(
        default_factory=lambda: os.environ.get(
            "DRS_BENCH_PG_PORT", os.environ.get("DRS_TEST_PG_PORT", "5432")
        )
    )
    user: str = field(default_factory=lambda: os.environ.get("DRS_BENCH_PG_USER", "postgres"))
    password: str = field(default_factory=lambda: os.environ.get("DRS_BENCH_PG_PASSWORD", ""))

    def connect(self, dbname: str = "postgres") -> Any:
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password or None,
            dbname=dbname,
            connect_timeout=3,
            autocommit=True,
        )

    def reachable(self) -> bool:
        try:
            with self.connect():
                return True
        except Exception:
            return False


def _check_db_name(name: str) -> None:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise BenchError(f"bad database name {name!r}")
    if name in ("test", "postgres", "template0", "template1") or name.startswith("test_"):
        raise BenchError(f"refusing to use the database {name!r}: pick a drs_bench* name")


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Linux: have the kernel kill this child if the bench process dies abruptly."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))


PREEXEC = _die_with_parent if sys.platform.startswith("linux") else None


class BenchEnv:
    """Context manager: redis-server up, database created and migrated, Django set up.

    ``env`` holds the ``DRS_BENCH_*`` variables that point a subprocess (gunicorn,
    ``manage.py clearsessions``) at the same redis-server and database.
    """

    def __init__(self, *, db_name: str, allow_sqlite: bool, keep_workdir: bool = False) -> None:
        _check_db_name(db_name)
        self.db_name = db_name
        self.allow_sqlite = allow_sqlite
        self.keep_workdir = keep_workdir
        self.workdir = Path(tempfile.mkdtemp(prefix="drs-bench-"))
        self.log_path = self.workdir / "django.log"
        self.pg = PgTarget()
        self.db_kind = "postgres"
        self.redis = RedisServer()
        self.env: dict[str, str] = {}

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> BenchEnv:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        if self.pg.reachable():
            self._create_pg_database()
        elif self.allow_sqlite:
            self.db_kind = "sqlite"
        else:
            raise BenchError(
                f"PostgreSQL does not answer on {self.pg.host}:{self.pg.port} (user "
                f"{self.pg.user}); the full benchmark needs it (set DRS_BENCH_PG_HOST/PORT)."
            )
        self.redis.start()
        self.env = {
            "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
            "DRS_BENCH_REDIS_URL": self.redis.url,
            "DRS_BENCH_DB": self.db_kind,
            "DRS_BENCH_PG_NAME": self.db_name,
            "DRS_BENCH_PG_HOST": self.pg.host,
            "DRS_BENCH_PG_PORT": self.pg.port,
            "DRS_BENCH_PG_USER": self.pg.user,
            "DRS_BENCH_PG_PASSWORD": self.pg.password,
            "DRS_BENCH_SQLITE": str(self.workdir / "bench.sqlite3"),
            "DRS_BENCH_LOG": str(self.log_path),
        }
        os.environ.update(self.env)
        os.environ["DRS_BENCH_ENGINE"] = "resilient"
        self._setup_django()

    def _create_pg_database(self) -> None:
        with self.pg.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.db_name}"')

    def _setup_django(self) -> None:
        import django
        from django.contrib.auth import get_user_model
        from django.core.management import call_command

        django.setup()
        call_command("migrate", interactive=False, verbosity=0)
        user_model = get_user_model()
        user = user_model.objects.create(username=USERNAME)
        user.set_password(PASSWORD)
        user.save()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        self.redis.stop()
        if self.db_kind == "postgres":
            with contextlib.suppress(Exception), self.pg.connect() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        if self.keep_workdir:
            print(f"logs kept in {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- helpers ------------------------------------------------------------------------

    def subprocess_env(self, engine: str, redis_url: str | None = None) -> dict[str, str]:
        """Environment of a child process serving or cleaning with ``engine``."""
        child = {**os.environ, **self.env, "DRS_BENCH_ENGINE": engine}
        if redis_url:
            child["DRS_BENCH_REDIS_URL"] = redis_url
        return child

    def restore_redis(self) -> None:
        """Undo any fault: resume if paused, start if killed (empty), then flush."""
        self.redis.ensure_running()
        self.redis.flushall()

    def user_id(self) -> int:
        from django.contrib.auth import get_user_model

        pk: int = get_user_model().objects.get(username=USERNAME).pk
        return pk


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Garbage collection off inside the block (like ``timeit``), one collection before."""
    import gc

    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# -- machine and versions -------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = 0
    with contextlib.suppress(ValueError, OSError, AttributeError):
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 0,
        "ram_gb": round(ram / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
    }


def _dist(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _command_version(args: list[str]) -> str:
    if shutil.which(args[0]) is None:
        return "not installed"
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        # Only the package's own changes make the figures differ from the commit's.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "django_resilient_sessions"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def versions(env: BenchEnv) -> dict[str, str]:
    """Versions of everything the figures depend on."""
    from django.db import connection

    redis_version = "unknown"
    with contextlib.suppress(Exception), env.redis.client() as client:
        redis_version = str(client.info("server").get("redis_version", "unknown"))
    if env.db_kind == "postgres":
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            database = "PostgreSQL " + str(cursor.fetchone()[0]).split()[0]
    else:
        database = "SQLite " + sqlite3.sqlite_version
    wrk = _command_version(["wrk", "-v"])
    match = re.search(r"wrk\s+(\S+)", wrk)
    return {
        "python": platform.python_version(),
        "django": _dist("Django"),
        "django_redis": _dist("django-redis"),
        "redis_py": _dist("redis"),
        "redis_server": redis_version,
        "database": database,
        "psycopg": _dist("psycopg"),
        "gunicorn": _dist("gunicorn"),
        "wrk": match.group(1) if match else wrk,
        "cryptography": _dist("cryptography"),
        "django_resilient_sessions": _dist("django-resilient-sessions") + " @ " + _git_revision(),
    }
