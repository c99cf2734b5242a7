"""``manage.py clearsessions`` over many expired rows: this engine against Django's ``db``.

This engine's command ends the expired ``UserSession`` rows and deletes those ended (or
expired) more than ``ENDED_RETENTION_DAYS`` ago, in batches of ``CLEANUP_BATCH_SIZE``;
Django's ``db`` engine deletes its expired ``django_session`` rows in one query. Each table
gets ``rows`` rows that expired 31 to 61 days ago (past the retention, so both commands
end with an empty table), bulk-inserted by the database itself (``generate_series`` on
PostgreSQL, a recursive CTE on SQLite). Each command runs in its own process, first on the
empty table (the cost of starting Django) and then on the full one; its wall time and
peak resident memory (GNU ``time``'s ``%M``) are recorded.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.env import ROOT, BenchEnv

USERS = 1000
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"

_PG_TRACKING = """
INSERT INTO {table} (key_hash, user_id, created_at, last_activity, expires_at, ended_at,
                     end_reason, ip, user_agent, device_type, browser, os, backup_version,
                     auth_backend, auth_hash, signed_origin)
SELECT encode(sha256(('drs-bench-' || g)::bytea), 'hex'),
       %s + g %% %s,
       now() - interval '90 days',
       now() - interval '62 days',
       now() - interval '31 days' - (g %% 2592000) * interval '1 second',
       NULL, '', '192.0.2.1', %s, 'pc', 'Firefox', 'Linux', 0, '', '', false
FROM generate_series(1, %s) AS g
"""

_PG_DJANGO = """
INSERT INTO {table} (session_key, session_data, expire_date)
SELECT md5('drs-bench-' || g) || lpad(g::text, 8, '0'),
       %s,
       now() - interval '31 days' - (g %% 2592000) * interval '1 second'
FROM generate_series(1, %s) AS g
"""

_SERIES = "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < %s) "

_SQLITE_TRACKING = (
    _SERIES
    + """
INSERT INTO {table} (key_hash, user_id, created_at, last_activity, expires_at, ended_at,
                     end_reason, ip, user_agent, device_type, browser, os, backup_version,
                     auth_backend, auth_hash, signed_origin)
SELECT printf('%%064x', n), %s + n %% %s,
       datetime('now', '-90 days'), datetime('now', '-62 days'),
       datetime('now', '-31 days', '-' || (n %% 2592000) || ' seconds'),
       NULL, '', '192.0.2.1', %s, 'pc', 'Firefox', 'Linux', 0, '', '', 0
FROM g
"""
)

_SQLITE_DJANGO = (
    _SERIES
    + """
INSERT INTO {table} (session_key, session_data, expire_date)
SELECT printf('%%040x', n), %s,
       datetime('now', '-31 days', '-' || (n %% 2592000) || ' seconds')
FROM g
"""
)


def _users() -> tuple[int, int]:
    """``(first pk, count)`` of contiguous users that own the tracking rows."""
    from django.contrib.auth import get_user_model

    model = get_user_model()
    made = model.objects.bulk_create(
        [model(username=f"cleanup-{i}") for i in range(USERS)], batch_size=USERS
    )
    pks = sorted(user.pk for user in made if user.pk is not None)
    if len(pks) == USERS and pks[-1] - pks[0] == USERS - 1:
        return pks[0], USERS
    first: int = model.objects.order_by("pk").values_list("pk", flat=True)[0]
    return first, 1


def _session_data() -> str:
    """A real ``db`` engine value: the bench session, signed and compressed by Django."""
    from django.contrib.sessions.backends.db import SessionStore

    from benchmarks.site.views import APP_DATA

    data = {
        "_auth_user_id": "1",
        "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
        "_auth_user_hash": "0" * 64,
        **APP_DATA,
    }
    encoded: str = SessionStore().encode(data)
    return encoded


def _insert(kind: str, rows: int, users: tuple[int, int]) -> float:
    """Fill the table of ``kind`` (``resilient`` or ``db``); returns the seconds it took."""
    from django.contrib.sessions.models import Session
    from django.db import connection

    from django_resilient_sessions.models import UserSession

    postgres = connection.vendor == "postgresql"
    if kind == "resilient":
        table = UserSession._meta.db_table
        sql = (_PG_TRACKING if postgres else _SQLITE_TRACKING).format(table=table)
        first, count = users
        params: list[Any] = (
            [first, count, USER_AGENT, rows] if postgres else [rows, first, count, USER_AGENT]
        )
    else:
        table = Session._meta.db_table
        sql = (_PG_DJANGO if postgres else _SQLITE_DJANGO).format(table=table)
        data = _session_data()
        params = [data, rows] if postgres else [rows, data]
    start = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        cursor.execute(f"ANALYZE {table}" if postgres else "ANALYZE")
    return time.monotonic() - start


def _empty_tables() -> None:
    """Start from empty tables (the other sections leave sessions behind)."""
    from django.contrib.sessions.models import Session

    from django_resilient_sessions.models import PendingPurge, UserSession

    for model in (UserSession, PendingPurge, Session):
        model.objects.all().delete()


def _count(kind: str) -> int:
    from django.contrib.sessions.models import Session

    from django_resilient_sessions.models import UserSession

    model: Any = UserSession if kind == "resilient" else Session
    count: int = model.objects.count()
    return count


def _gnu_time() -> str | None:
    """GNU time, whose ``%M`` is the child's own peak RSS.

    ``ru_maxrss`` from ``wait4`` in this process would not do: Linux keeps the high-water
    mark of the memory a child had before ``exec`` (a copy of this big process) in its
    ``ru_maxrss``, so every child would look at least as big as the bench itself.
    """
    path = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    if path is None:
        return None
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if "GNU" in version.stdout + version.stderr else None


def clearsessions(env: BenchEnv, engine: str) -> dict[str, Any]:
    """Run ``clearsessions`` in a child process; wall time, peak RSS, its output."""
    command = [sys.executable, "-m", "django", "clearsessions", "--verbosity", "1"]
    timer = _gnu_time()
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "maxrss"
        if timer:
            command = [timer, "-f", "%M", "-o", str(rss_file), *command]
        start = time.monotonic()
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=env.subprocess_env(engine),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.monotonic() - start
        if timer:
            rss_kb = int(rss_file.read_text().split()[-1])
            method = "GNU time %M"
        else:
            # Floor: the peak of this process when it forked (see _gnu_time).
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            rss_kb = usage.ru_maxrss // (1024 if sys.platform == "darwin" else 1)
            method = "getrusage(RUSAGE_CHILDREN), inflated by the parent's size"
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise RuntimeError(f"clearsessions ({engine}) failed with {done.returncode}:\n{output}")
    return {
        "wall_s": round(wall, 2),
        "max_rss_mb": round(rss_kb / 1024, 1),
        "rss_method": method,
        "output": output,
    }


def run(env: BenchEnv, rows: int, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Both commands over ``rows`` expired rows; returns the ``cleanup`` section."""
    from django.db import connection

    _empty_tables()
    users = _users()
    results = []
    for engine in ("resilient", "db"):
        empty = clearsessions(env, engine)
        inserted = _insert(engine, rows, users)
        before = _count(engine)
        full = clearsessions(env, engine)
        after = _count(engine)
        results.append(
            {
                "engine": engine,
                "table": "UserSession" if engine == "resilient" else "django_session",
                "rows": before,
                "rows_left": after,
                "insert_s": round(inserted, 2),
                "wall_s": full["wall_s"],
                "max_rss_mb": full["max_rss_mb"],
                "startup_wall_s": empty["wall_s"],
                "startup_max_rss_mb": empty["max_rss_mb"],
                "output": full["output"],
                "rss_method": full["rss_method"],
            }
        )
        progress(
            f"  cleanup: {engine:<9} {before} rows in {full['wall_s']:.2f} s, "
            f"peak RSS {full['max_rss_mb']:.1f} MB (empty table: {empty['wall_s']:.2f} s, "
            f"{empty['max_rss_mb']:.1f} MB), {after} left"
        )
    return {
        "rows": rows,
        "database": connection.vendor,
        "batch_size": 5000,
        "retention_days": 30,
        "runs": results,
    }
