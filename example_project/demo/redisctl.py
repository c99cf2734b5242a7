"""Start, stop, hang, resume and flush the demo's own redis-server.

Used by the launcher (``run_demo.py``) and by the outage buttons of the example
site. It acts only on the redis-server whose pid is in the demo's pid file and
whose command line names the demo's port; the default Redis port (6379) is
refused outright, so a Redis you run yourself is never touched.

The launcher passes the configuration to the site in the environment:

``DEMO_REDIS_PORT``     port of the demo's redis-server (on 127.0.0.1)
``DEMO_REDIS_PIDFILE``  file holding the pid of the running server
``DEMO_REDIS_DIR``      working directory of the server (default: the pid file's directory)
``DEMO_REDIS_SERVER``   redis-server binary (default: ``redis-server`` on PATH)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"
#: The usual Redis port: never started, stopped or flushed by the demo.
FORBIDDEN_PORT = 6379

# Servers started by this process, kept so that they can be reaped (no zombies).
_spawned: list[subprocess.Popen[bytes]] = []
_lock = threading.Lock()


class RedisControlError(RuntimeError):
    """The demo's redis-server could not be controlled; the message says why."""


@dataclass(frozen=True)
class Status:
    state: str  # "running", "paused" or "stopped"
    pid: int | None = None


def find_redis_server(environ: Mapping[str, str] = os.environ) -> str | None:
    """The redis-server binary: ``DEMO_REDIS_SERVER``, ``DRS_REDIS_SERVER`` or on PATH."""
    for name in ("DEMO_REDIS_SERVER", "DRS_REDIS_SERVER"):
        configured = environ.get(name)
        if configured:
            return configured if os.access(configured, os.X_OK) else None
    return shutil.which("redis-server")


def _proc_state(pid: int) -> str | None:
    """The process state letter ("R", "S", "T", "Z"...), or None when there is no process."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            # "pid (comm) state ...": comm may hold spaces, so split after its ")".
            return stat.read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return None
    try:  # no /proc (macOS): alive or not is all we can tell
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return "R"
    return "R"


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child (otherwise its parent does)."""
    for process in list(_spawned):
        if process.pid == pid:
            process.poll()
            if process.returncode is not None:
                _spawned.remove(process)
            return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _gone(pid: int) -> bool:
    state = _proc_state(pid)
    if state == "Z":
        _reap(pid)
        return True
    return state is None


def stop_spawned() -> list[int]:
    """Kill and reap every redis-server this process started; returns their pids."""
    stopped = []
    with _lock:
        for process in list(_spawned):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGCONT)
                    process.kill()
                stopped.append(process.pid)
            process.wait()
            _spawned.remove(process)
    return stopped


class DemoRedis:
    """The demo's redis-server on ``127.0.0.1:port``, found through its pid file."""

    def __init__(
        self,
        port: int,
        pidfile: str | os.PathLike[str],
        *,
        workdir: str | os.PathLike[str] | None = None,
        executable: str | None = None,
    ) -> None:
        if port == FORBIDDEN_PORT:
            raise RedisControlError(
                f"port {FORBIDDEN_PORT} is the usual Redis port; the demo never controls it"
            )
        self.port = port
        self.pidfile = Path(pidfile)
        self.workdir = Path(workdir) if workdir else self.pidfile.parent
        self.executable = executable

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> DemoRedis | None:
        """The server the launcher configured, or None when there is none."""
        port, pidfile = environ.get("DEMO_REDIS_PORT"), environ.get("DEMO_REDIS_PIDFILE")
        if not port or not pidfile:
            return None
        return cls(
            int(port),
            pidfile,
            workdir=environ.get("DEMO_REDIS_DIR") or None,
            executable=environ.get("DEMO_REDIS_SERVER") or None,
        )

    def environ(self) -> dict[str, str]:
        """Environment variables that hand this server to the site (see the module doc)."""
        env = {
            "DEMO_REDIS_URL": self.url,
            "DEMO_REDIS_PORT": str(self.port),
            "DEMO_REDIS_PIDFILE": str(self.pidfile),
            "DEMO_REDIS_DIR": str(self.workdir),
        }
        if self.executable:
            env["DEMO_REDIS_SERVER"] = self.executable
        return env

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis-server.log"

    # -- state -------------------------------------------------------------------------------

    def pid(self) -> int | None:
        """Pid of the live server in the pid file (None: no file, dead, or not ours)."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        if _gone(pid):
            return None
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists():
            # redis-server sets its title to "redis-server 127.0.0.1:PORT".
            with contextlib.suppress(OSError):
                title = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if "redis" not in title or f":{self.port}" not in title:
                    return None
        return pid

    def status(self) -> Status:
        pid = self.pid()
        if pid is None:
            return Status("stopped")
        return Status("paused" if _proc_state(pid) == "T" else "running", pid)

    # -- actions -----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> int:
        """Start the server, empty, on the demo's port; returns its pid."""
        with _lock:
            if self.pid() is not None:
                raise RedisControlError("Redis is already running.")
            executable = self.executable or find_redis_server()
            if executable is None:
                raise RedisControlError("redis-server is not installed.")
            self.workdir.mkdir(parents=True, exist_ok=True)
            for leftover in ("dump.rdb", "appendonly.aof"):
                with contextlib.suppress(FileNotFoundError):
                    (self.workdir / leftover).unlink()
            args = [
                executable,
                "--port", str(self.port),
                "--bind", HOST,
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
                "--logfile", str(self.log_path),
                "--daemonize", "no",
            ]  # fmt: skip
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=self.workdir,
            )
            _spawned.append(process)
            self._wait_until_ready(process, timeout)
            partial = self.pidfile.with_name(self.pidfile.name + ".tmp")
            partial.write_text(f"{process.pid}\n")
            partial.replace(self.pidfile)
            return process.pid

    def _wait_until_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                _spawned.remove(process)
                raise RedisControlError(
                    f"redis-server exited with status {process.returncode} on start "
                    f"(port {self.port} in use?). Log: {self.log_path}"
                )
            with contextlib.suppress(redis.exceptions.RedisError), self._client() as client:
                if client.info("server").get("process_id") == process.pid:
                    return
            time.sleep(0.02)
        process.kill()
        process.wait()
        _spawned.remove(process)
        raise RedisControlError(f"redis-server did not answer within {timeout:g} s.")

    def kill(self) -> int | None:
        """SIGKILL the server and wait until it is gone; returns the pid it had."""
        with _lock:
            pid = self.pid()
            if pid is None:
                return None
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a paused server dies at once too
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while not _gone(pid) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.01)
            with contextlib.suppress(FileNotFoundError):
                self.pidfile.unlink()
            return pid

    def _signal(self, signum: signal.Signals) -> int:
        pid = self.pid()
        if pid is None:
            raise RedisControlError("Redis is not running.")
        os.kill(pid, signum)
        return pid

    def pause(self) -> int:
        """SIGSTOP: the server keeps its connections but answers nothing (timeouts)."""
        return self._signal(signal.SIGSTOP)

    def resume(self) -> int:
        """SIGCONT a paused server."""
        return self._signal(signal.SIGCONT)

    def flushall(self) -> None:
        """Delete every key, as a restart, eviction or failover to an empty replica would."""
        if self.status().state != "running":
            raise RedisControlError("Redis is not running (or paused): nothing to flush.")
        try:
            with self._client() as client:
                client.flushall()
        except redis.exceptions.RedisError as error:
            raise RedisControlError(f"FLUSHALL failed: {error}") from error

    def _client(self) -> redis.Redis:
        return redis.Redis(
            host=HOST,
            port=self.port,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
