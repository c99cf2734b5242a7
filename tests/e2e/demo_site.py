"""The demo site (``example_project/run_demo.py``) run in a subprocess for the browser test.

The real launcher, as ``make demo`` runs it, with a temporary SQLite file and free ports for
the site and for its own redis-server (never 6379). The site is a separate process, so the
test never uses pytest-django's test database.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.redis_server import FORBIDDEN_PORT, free_port

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "example_project" / "run_demo.py"


class DemoSite:
    """The launcher process and what the test needs to know about it."""

    def __init__(self, db_path: Path, log_path: Path) -> None:
        self.port = free_port()
        self.redis_port = free_port()
        assert FORBIDDEN_PORT not in (self.port, self.redis_port)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DEMO_"))}
        env.update(
            DEMO_PORT=str(self.port),
            DEMO_REDIS_PORT=str(self.redis_port),
            DEMO_DB_PATH=str(db_path),
            PYTHONUNBUFFERED="1",
        )
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, str(LAUNCHER)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Until the launcher says the site is up (after migrating and starting Redis)."""
        deadline = time.monotonic() + timeout
        while "django-resilient-sessions demo:" not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the demo did not start:\n{self.log()}")
            time.sleep(0.1)

    def redis(self) -> redis.Redis:
        """A client of the demo's own redis-server (caller closes it; no retries)."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.redis_port,
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),
        )

    def redis_answers(self) -> bool:
        try:
            with self.redis() as client:
                return bool(client.ping())
        except redis.exceptions.RedisError:
            return False

    def server_errors(self) -> list[str]:
        """runserver's log lines of responses with a 5xx status."""
        return re.findall(r'^.*" 5\d\d \d+$', self.log(), flags=re.MULTILINE)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGINT the launcher, as Ctrl-C does; returns its exit status (None: killed)."""
        code: int | None = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                code = self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        else:
            code = self.process.returncode
        self._log.close()
        return code

    def kill_leftover_redis(self) -> None:
        """Safety net: kill a redis-server the launcher left on the demo's port."""
        try:
            with self.redis() as client:
                pid = int(client.info("server")["process_id"])
        except redis.exceptions.RedisError:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
