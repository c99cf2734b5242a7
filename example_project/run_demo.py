#!/usr/bin/env python
"""Run the example site with a redis-server of its own (``make demo``).

1. migrates the SQLite database and creates the ``demo`` user (or resets its password);
2. starts ``redis-server`` on a free port, empty and without persistence, in a temporary
   directory, when one is installed; otherwise the site runs without Redis and every
   session lives in its backup cookie alone;
3. serves the site with ``manage.py runserver`` (DEBUG on, so the outage buttons exist);
4. on Ctrl-C (SIGINT) or SIGTERM stops the site and every redis-server it started,
   including one started again by the "Start Redis" button (found through the pid file).

Environment: ``DEMO_PORT`` (site port, default 8000), ``DEMO_DB_PATH`` (database file,
default ``example_project/demo.sqlite3``), ``DEMO_REDIS_PORT`` (default: a free port; never
6379, so that a Redis you run is never touched), ``DEMO_REDIS_SERVER`` (redis-server binary).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from demo.redisctl import (  # noqa: E402
    FORBIDDEN_PORT,
    HOST,
    DemoRedis,
    RedisControlError,
    find_redis_server,
    stop_spawned,
)

USERNAME = "demo"
PASSWORD = "demo-password"


def free_port() -> int:
    """An unused loopback port (never 6379)."""
    while True:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port != FORBIDDEN_PORT:
            return port


def answers(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def prepare_database() -> str:
    """Migrate and create (or reset) the demo user; returns the database file's path."""
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connections

    call_command("migrate", interactive=False, verbosity=0)
    user, _ = get_user_model().objects.get_or_create(username=USERNAME)
    # Staff, so that /admin/ shows the sessions table too (UserSession, read-only).
    user.is_staff = user.is_superuser = True
    if not user.check_password(PASSWORD):
        user.set_password(PASSWORD)
    user.save()
    connections.close_all()
    return str(settings.DATABASES["default"]["NAME"])


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    port = int(os.environ.get("DEMO_PORT") or 8000)
    if answers(port):
        print(f"error: something already listens on {HOST}:{port}; set DEMO_PORT.", file=sys.stderr)
        return 1
    # Explicitly: a launcher started in the background inherits SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="drs-demo-"))
    redis_server: DemoRedis | None = None
    site: subprocess.Popen[bytes] | None = None
    try:
        env = {"DJANGO_SETTINGS_MODULE": "demo.settings", "DEMO_DEBUG": "1"}
        for name in ("DEMO_REDIS_URL", "DEMO_REDIS_PIDFILE", "DEMO_REDIS_DIR"):
            os.environ.pop(name, None)
        executable = find_redis_server()
        if executable is not None:
            redis_port = int(os.environ.get("DEMO_REDIS_PORT") or free_port())
            redis_server = DemoRedis(
                redis_port, workdir / "redis.pid", workdir=workdir / "redis", executable=executable
            )
            try:
                redis_server.start()
            except RedisControlError as error:
                print(f"error: could not start redis-server: {error}", file=sys.stderr)
                return 1
            env.update(redis_server.environ())
        else:
            os.environ.pop("DEMO_REDIS_PORT", None)
            # Nothing listens there: every request finds Redis down.
            env["DEMO_REDIS_URL"] = f"redis://{HOST}:{free_port()}/0"
        os.environ.update(env)
        database = prepare_database()

        command = [sys.executable, "manage.py", "runserver", f"{HOST}:{port}", "--noreload"]
        site = subprocess.Popen(command, cwd=HERE)
        deadline = time.monotonic() + 60
        while not answers(port):
            if site.poll() is not None or time.monotonic() > deadline:
                print("error: the site did not start (see above).", file=sys.stderr)
                return 1
            time.sleep(0.1)

        lines = [
            "",
            f"django-resilient-sessions demo: http://{HOST}:{port}/",
            f"  log in as   {USERNAME} / {PASSWORD}",
        ]
        if redis_server is not None:
            status = redis_server.status()
            lines += [
                f"  Redis       its own redis-server on {HOST}:{redis_server.port} "
                f"(pid {status.pid}), empty, no persistence",
                "              the buttons on every page stop, hang, resume, flush and start it",
            ]
        else:
            lines += [
                "  Redis       none: redis-server is not installed, so sessions are kept in",
                "              the backup cookie alone (install it to try the outage buttons)",
            ]
        lines += [
            f"  database    {database}",
            "Press Ctrl-C to stop the site and every redis-server it started.",
            "",
        ]
        print("\n".join(lines), flush=True)
        return site.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("\nStopping the demo...", flush=True)
        if site is not None:
            stop_process(site)
        if redis_server is not None:
            # The server in the pid file (ours, or one the "Start Redis" button started),
            # then any other this process started (the first one, if a button killed it).
            pids = {redis_server.kill(), *stop_spawned()} - {None}
            for pid in sorted(pid for pid in pids if pid is not None):
                print(f"Stopped redis-server (pid {pid}).", flush=True)
        shutil.rmtree(workdir, ignore_errors=True)
        print("Demo stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
