"""The machinery a chaos run stands on: Redis (with Sentinel), app servers and a database.

- :class:`Topology`: one Redis master, one replica (``--replicaof``) and one Sentinel
  (``redis-server <conf> --sentinel``), all private processes on free loopback ports.
  Faults always hit the *current* master, as Sentinel reports it. Sentinel's
  ``down-after-milliseconds`` is short in its configuration file; the runner raises it
  (:meth:`Topology.disarm_sentinel`) while it kills, hangs or restarts the master on
  purpose, so that only the failover fault ends in a failover.
- :class:`AppServer`: ``gunicorn chaos.wsgi`` with 2 sync workers on a free loopback port.
- :class:`Database`: an SQLite file in the run's directory or a PostgreSQL database of the
  run's own (``drs_chaos`` by default; ``test`` and ``test_*`` are refused), that can be
  made unavailable and brought back.

Every process started here is stopped by :meth:`close`/:meth:`stop` (terminate, then kill
the process group) and dies with the runner (``PR_SET_PDEATHSIG``) if the runner is killed.
Nothing here talks to anything but 127.0.0.1, and never to port 6379.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
import requests

from tests.redis_server import FORBIDDEN_PORT, HOST, RedisServer, find_redis_server, free_port

REPO = Path(__file__).resolve().parent.parent
SERVICE = "mymaster"
#: Sentinel's reaction time for the failover fault (its configuration file says this).
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
#: While other faults run, the master may be away this long before Sentinel reacts.
DISARMED_DOWN_AFTER_MS = 3_600_000
#: Replicas resync with a master restarted empty at once (diskless sync waits 5 s by default).
NODE_ARGS = ("--repl-diskless-sync-delay", "0")


class InfraError(RuntimeError):
    """A service of the run could not be started, reached or controlled."""


def _pdeathsig() -> None:  # pragma: no cover - runs in the forked child
    """Have the kernel SIGTERM this child when the runner dies (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def _stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 8.0) -> None:
    """Terminate a process started in its own session, then kill its whole group."""
    if process is None:
        return
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


# -- Redis -----------------------------------------------------------------------------------


class SentinelProcess:
    """One ``redis-server <conf> --sentinel`` watching ``SERVICE``."""

    def __init__(self, workdir: Path, master_port: int) -> None:
        self.dir = workdir / "sentinel"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = self.dir / "sentinel.conf"
        self.log = self.dir / "sentinel.log"
        self.conf.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    f"bind {HOST}",
                    "daemonize no",
                    f"dir {self.dir}",
                    "sentinel resolve-hostnames no",
                    f"sentinel monitor {SERVICE} {HOST} {master_port} 1",
                    f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {SERVICE} 1",
                    "",
                ]
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [find_redis_server(), str(self.conf), "--sentinel"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
                preexec_fn=_pdeathsig,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise InfraError(f"redis sentinel exited at startup; see {self.log}")
            try:
                with self.client() as conn:
                    if conn.ping():
                        return
            except redis.RedisError:
                time.sleep(0.05)
        raise InfraError(f"redis sentinel did not answer on port {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def master_port(self) -> int | None:
        with self.client() as conn:
            address = conn.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(address[1]) if address else None

    def set_down_after(self, ms: int) -> None:
        with self.client() as conn:
            conn.execute_command("SENTINEL", "SET", SERVICE, "down-after-milliseconds", str(ms))

    def stop(self) -> None:
        _stop_process(self.process)
        self.process = None


class Topology:
    """A master, a replica and a Sentinel; ``master`` follows Sentinel's view."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nodes: list[RedisServer] = []
        self.sentinel: SentinelProcess | None = None

    def start(self) -> None:
        master = RedisServer(extra_args=NODE_ARGS)
        master.start()
        self.nodes.append(master)
        replica = RedisServer(extra_args=self._replica_args(master.port))
        replica.start()
        self.nodes.append(replica)
        self._wait_link(replica)
        self.sentinel = SentinelProcess(self.workdir, master.port)
        self.sentinel.start()
        self.disarm_sentinel()
        self._wait_sentinel_knows_replica()

    @staticmethod
    def _replica_args(master_port: int) -> tuple[str, ...]:
        return (*NODE_ARGS, "--replicaof", HOST, str(master_port))

    @property
    def env(self) -> dict[str, str]:
        assert self.sentinel is not None
        return {"CHAOS_SENTINEL": f"{HOST}:{self.sentinel.port}", "CHAOS_SENTINEL_SERVICE": SERVICE}

    def _node(self, port: int) -> RedisServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise InfraError(f"Sentinel names port {port}, which is none of ours")

    @property
    def master(self) -> RedisServer:
        assert self.sentinel is not None
        port = self.sentinel.master_port()
        if port is None or port == FORBIDDEN_PORT:
            raise InfraError(f"Sentinel reports no usable master ({port!r})")
        return self._node(port)

    @property
    def replica(self) -> RedisServer:
        master = self.master
        return next(node for node in self.nodes if node is not master)

    def disarm_sentinel(self) -> None:
        assert self.sentinel is not None
        self.sentinel.set_down_after(DISARMED_DOWN_AFTER_MS)

    def arm_sentinel(self) -> None:
        assert self.sentinel is not None
        self.sentinel.set_down_after(DOWN_AFTER_MS)

    def _wait_link(self, replica: RedisServer, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError), replica.client() as conn:
                info = conn.info("replication")
                if info.get("role") == "slave" and info.get("master_link_status") == "up":
                    return
            time.sleep(0.05)
        raise InfraError(f"replica on port {replica.port} did not sync with its master")

    def _wait_sentinel_knows_replica(self, timeout: float = 20.0) -> None:
        assert self.sentinel is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.sentinel.client() as conn:
                replicas = conn.execute_command("SENTINEL", "REPLICAS", SERVICE)
            if replicas:
                return
            time.sleep(0.1)
        raise InfraError("Sentinel did not discover the replica")

    # faults on the current master --------------------------------------------------------

    def kill_master(self) -> RedisServer:
        master = self.master
        master.kill()
        return master

    def start_empty(self, node: RedisServer) -> None:
        """Start a killed master again, empty, still the master (Sentinel disarmed)."""
        node.extra_args = NODE_ARGS
        node.start()
        self._wait_link(self.replica)

    def restart_master_empty(self) -> None:
        master = self.master
        master.kill()
        self.start_empty(master)

    def failover(self, timeout: float = 30.0) -> tuple[int, int, float]:
        """Kill the master and wait for Sentinel to promote the replica.

        Returns (old port, new port, seconds until Sentinel named the new master). The old
        master is left down: :meth:`rejoin_as_replica` brings it back.
        """
        assert self.sentinel is not None
        old = self.master
        self.arm_sentinel()
        start = time.monotonic()
        old.kill()
        deadline = start + timeout
        while time.monotonic() < deadline:
            port = self.sentinel.master_port()
            if port is not None and port != old.port:
                with contextlib.suppress(redis.RedisError), self._node(port).client() as conn:
                    if conn.info("replication").get("role") == "master":
                        return old.port, port, time.monotonic() - start
            time.sleep(0.05)
        raise InfraError("Sentinel did not promote the replica in time")

    def rejoin_as_replica(self, port: int) -> None:
        node = self._node(port)
        node.extra_args = self._replica_args(self.master.port)
        node.start()
        self._wait_link(node)
        self.disarm_sentinel()

    def hang_master(self) -> RedisServer:
        master = self.master
        master.pause()
        return master

    def pause_clients(self, ms: int, mode: str) -> None:
        with self.master.client() as conn:
            conn.execute_command("CLIENT", "PAUSE", str(ms), mode)

    def flushall(self) -> None:
        self.master.flushall()

    def close(self) -> None:
        if self.sentinel is not None:
            self.sentinel.stop()
        for node in self.nodes:
            node.stop()


# -- app servers -----------------------------------------------------------------------------


class AppServer:
    """``gunicorn chaos.wsgi`` with two sync workers on 127.0.0.1."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path, workers: int = 2) -> None:
        self.name = name
        self.port = free_port()
        self.env = env
        self.workers = workers
        self.log = workdir / f"gunicorn-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def start(self) -> None:
        command = [
            sys.executable, "-m", "gunicorn", "chaos.wsgi:application",
            "--bind", f"{HOST}:{self.port}",
            "--workers", str(self.workers),
            "--worker-class", "sync",
            "--timeout", "60",
            "--graceful-timeout", "5",
            "--backlog", "512",
            "--log-level", "warning",
            "--error-logfile", "-",
        ]  # fmt: skip
        env = {**os.environ, **self.env, "DJANGO_SETTINGS_MODULE": "chaos.settings"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
                start_new_session=True,
                preexec_fn=_pdeathsig,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise InfraError(f"app server {self.name} exited; see {self.log}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "state/", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise InfraError(f"app server {self.name} did not answer; see {self.log}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        _stop_process(self.process)
        self.process = None


# -- database --------------------------------------------------------------------------------


def _pg_params() -> dict[str, Any]:
    return {
        "host": os.environ.get("DRS_TEST_PG_HOST", "127.0.0.1"),
        "port": int(os.environ.get("DRS_TEST_PG_PORT", "5432")),
        "user": os.environ.get("DRS_TEST_PG_USER", "postgres"),
        "password": os.environ.get("DRS_TEST_PG_PASSWORD", ""),
    }


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(dbname="postgres", connect_timeout=3, **_pg_params()):
            return True
    except Exception:
        return False


class FaultUnavailable(InfraError):
    """This fault cannot be made real on this database and machine (the phase is skipped)."""


#: The ledger's table, the one the "table locked" fault locks.
LEDGER_TABLE = "django_resilient_sessions_usersession"
#: A write that changes nothing but needs a writable ledger (probes of the ledger faults).
WRITE_PROBE = f"UPDATE {LEDGER_TABLE} SET backup_version = backup_version WHERE 1 = 0"
READ_PROBE = f"SELECT COUNT(*) FROM {LEDGER_TABLE}"


class Database:
    """The run's own database, and the faults on it (callers quiesce their traffic first).

    - :meth:`take_down` / :meth:`bring_up`: unavailable (connections refused);
    - :meth:`make_read_only` / :meth:`make_writable`: reads work, every write fails:
      PostgreSQL ``ALTER DATABASE ... SET default_transaction_read_only = on`` and its
      backends terminated (a session reads the setting when it starts); SQLite: the file
      made immutable (``chattr +i``: root ignores permission bits, not this attribute), so
      SQLite opens it read-only ("attempt to write a readonly database");
    - :meth:`lock_ledger` / :meth:`unlock_ledger`: a connection of the runner's holds
      ``LOCK TABLE <ledger> IN ACCESS EXCLUSIVE MODE`` (PostgreSQL: every statement on the
      ledger waits, then fails on the app's ``lock_timeout``) or ``BEGIN EXCLUSIVE``
      (SQLite: the whole file, reads included, fails on the app's busy ``timeout``) in an
      open transaction;
    - :meth:`probe`: what a fresh connection sees, to prove a fault real (or healed).
    """

    def __init__(self, kind: str, workdir: Path, pg_name: str = "drs_chaos") -> None:
        if kind not in ("sqlite", "postgres"):
            raise ValueError(f"unknown database kind {kind!r}")
        if kind == "postgres" and (
            pg_name in ("test", "postgres") or pg_name.startswith(("test_", "template"))
        ):
            raise ValueError(f"refusing to use the PostgreSQL database {pg_name!r}")
        self.kind = kind
        self.pg_name = pg_name
        self.path = workdir / "chaos.sqlite3"
        self.down = False
        self.read_only = False
        self._lock: Any = None  # the connection holding the ledger lock

    @property
    def env(self) -> dict[str, str]:
        if self.kind == "sqlite":
            return {"CHAOS_DB": "sqlite", "CHAOS_SQLITE_PATH": str(self.path)}
        return {"CHAOS_DB": "postgres", "CHAOS_PG_NAME": self.pg_name}

    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect(
            dbname="postgres", autocommit=True, connect_timeout=5, **_pg_params()
        )

    def create(self) -> None:
        if self.kind == "postgres":
            with self._admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{self.pg_name}"')

    def drop(self) -> None:
        if self.kind == "postgres":
            with contextlib.suppress(Exception), self._admin() as conn:
                conn.execute(f'ALTER DATABASE "{self.pg_name}" ALLOW_CONNECTIONS true')
                conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')

    def take_down(self) -> None:
        """New connections fail and open ones are cut (callers quiesce their traffic first)."""
        if self.kind == "sqlite":
            # chmod 000 does not stop root: move the file away and put a directory in its
            # place, which SQLite cannot open (and would not silently create afresh).
            os.replace(self.path, self.path.with_name(self.path.name + ".away"))
            self.path.mkdir()
        else:
            with self._admin() as conn:
                conn.execute(f'ALTER DATABASE "{self.pg_name}" ALLOW_CONNECTIONS false')
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (self.pg_name,),
                )
        self.down = True

    def bring_up(self) -> None:
        if self.kind == "sqlite":
            self.path.rmdir()
            os.replace(self.path.with_name(self.path.name + ".away"), self.path)
        else:
            with self._admin() as conn:
                conn.execute(f'ALTER DATABASE "{self.pg_name}" ALLOW_CONNECTIONS true')
        self.down = False

    def _terminate_backends(self, conn: Any) -> None:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.pg_name,),
        )

    def make_read_only(self) -> str:
        """Reads work, writes fail, for every new connection; returns how it was done.

        SQLite: root (the app servers run as the runner does) ignores permission bits,
        so as root the file is made immutable (``chattr +i``, where the file system and
        the capabilities allow it); otherwise it is made read-only (``chmod 444``). Either
        way a fresh connection must then fail to write, or the fault is not real here and
        :class:`FaultUnavailable` says so (the phase is skipped).
        """
        if self.kind == "sqlite":
            if os.geteuid() == 0:
                how = "chattr +i on the SQLite file (SQLite opens it read-only)"
                done = subprocess.run(
                    ["chattr", "+i", str(self.path)], capture_output=True, text=True, check=False
                )
                if done.returncode != 0:
                    raise FaultUnavailable(
                        f"chattr +i {self.path} failed ({done.stderr.strip() or done.returncode}):"
                        " no real way to make the SQLite file read-only for root here"
                    )
            else:
                how = "chmod 444 on the SQLite file (the app servers are not root)"
                self.path.chmod(0o444)
            self.read_only = True
            if self.probe()[0] is None:
                self.make_writable()
                raise FaultUnavailable(f"{how} did not stop writes")
            return how
        with self._admin() as conn:
            conn.execute(f'ALTER DATABASE "{self.pg_name}" SET default_transaction_read_only = on')
            self._terminate_backends(conn)
        self.read_only = True
        return "ALTER DATABASE SET default_transaction_read_only = on, backends terminated"

    def make_writable(self) -> None:
        if self.kind == "sqlite":
            if os.geteuid() == 0:
                subprocess.run(["chattr", "-i", str(self.path)], check=True, capture_output=True)
            else:
                self.path.chmod(0o644)
        else:
            with self._admin() as conn:
                conn.execute(f'ALTER DATABASE "{self.pg_name}" RESET default_transaction_read_only')
                self._terminate_backends(conn)  # sessions started read-only stay so
        self.read_only = False

    def lock_ledger(self) -> str:
        """Hold the ledger locked in an open transaction; returns how."""
        if self.kind == "sqlite":
            import sqlite3

            conn = sqlite3.connect(str(self.path), timeout=10, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            self._lock = conn
            return "BEGIN EXCLUSIVE held by the runner (the whole file: reads fail too)"
        import psycopg

        lock = psycopg.connect(
            dbname=self.pg_name, connect_timeout=5, options="-c lock_timeout=10000", **_pg_params()
        )
        lock.execute(f"LOCK TABLE {LEDGER_TABLE} IN ACCESS EXCLUSIVE MODE")
        self._lock = lock
        return f"LOCK TABLE {LEDGER_TABLE} IN ACCESS EXCLUSIVE MODE held by the runner"

    def unlock_ledger(self) -> None:
        lock, self._lock = self._lock, None
        if lock is None:
            return
        with contextlib.suppress(Exception):
            lock.rollback()
        lock.close()

    def probe(self, timeout: float = 0.3) -> tuple[str | None, str | None]:
        """(write error, read error) seen by a fresh connection; None where it worked.

        The write changes nothing (``WRITE_PROBE``) and is rolled back.
        """
        if self.kind == "sqlite":
            import sqlite3

            def sqlite_try(statement: str) -> str | None:
                try:
                    conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
                except sqlite3.Error as error:
                    return f"{type(error).__name__}: {error}"
                try:
                    conn.execute("BEGIN IMMEDIATE" if statement == WRITE_PROBE else "BEGIN")
                    conn.execute(statement).fetchall()
                    conn.execute("ROLLBACK")
                    return None
                except sqlite3.Error as error:
                    return f"{type(error).__name__}: {error}"
                finally:
                    conn.close()

            return sqlite_try(WRITE_PROBE), sqlite_try(READ_PROBE)
        import psycopg

        def pg_try(statement: str) -> str | None:
            ms = int(timeout * 1000)
            try:
                with psycopg.connect(
                    dbname=self.pg_name,
                    connect_timeout=3,
                    options=f"-c lock_timeout={ms} -c statement_timeout={ms * 10}",
                    **_pg_params(),
                ) as conn:
                    cursor = conn.execute(statement)
                    if statement == READ_PROBE:
                        cursor.fetchall()
                    conn.rollback()
                return None
            except psycopg.Error as error:
                return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"

        return pg_try(WRITE_PROBE), pg_try(READ_PROBE)

    def restore_if_down(self) -> None:
        with contextlib.suppress(Exception):
            self.unlock_ledger()
        if self.read_only:
            with contextlib.suppress(Exception):
                self.make_writable()
        if self.down:
            with contextlib.suppress(Exception):
                self.bring_up()
