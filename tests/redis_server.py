"""A private, disposable ``redis-server`` process for tests.

The tests never talk to a shared Redis: every server used by the suite is started here,
on a free loopback port, with persistence disabled and a throw-away working directory.
Fault injection is done on the real process: ``kill()`` (SIGKILL), ``pause()`` (SIGSTOP),
``resume()`` (SIGCONT) and ``restart()`` (comes back empty on the same port).

Processes are always cleaned up: ``stop()`` runs from ``__exit__``, from an ``atexit`` hook,
and (on Linux) the child gets SIGKILL from the kernel if the test process dies abruptly.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

#: Port of the shared Redis on developer machines and CI hosts. Never used by the tests.
FORBIDDEN_PORT = 6379

HOST = "127.0.0.1"


class RedisServerError(RuntimeError):
    """The redis-server process could not be started or controlled."""


def find_redis_server() -> str:
    """Path of the redis-server binary: ``$DRS_REDIS_SERVER`` or ``redis-server`` on PATH."""
    configured = os.environ.get("DRS_REDIS_SERVER")
    if configured:
        if not os.access(configured, os.X_OK):
            raise RedisServerError(f"DRS_REDIS_SERVER={configured!r} is not an executable file")
        return configured
    found = shutil.which("redis-server")
    if found is None:
        raise RedisServerError(
            "redis-server was not found on PATH. The tests start private redis-server "
            "processes; install it (Debian/Ubuntu: apt-get install redis-server, macOS: "
            "brew install redis), run `make redis`, or set DRS_REDIS_SERVER."
        )
    return found


def free_port() -> int:
    """A currently unused TCP port on the loopback interface (never 6379)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port != FORBIDDEN_PORT:
            return port


def _load_prctl() -> Any:
    """libc's prctl on Linux, resolved in the parent (no imports or lookups after fork)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Have the kernel SIGKILL this child when the thread that started it goes away."""
    _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


class RedisServer:
    """One redis-server subprocess bound to 127.0.0.1 on a fixed (free) port.

    The port is chosen once and kept across ``kill()``/``start()``/``restart()``, so clients
    configured with :attr:`url` reconnect to the new process.

    Note: on Linux the child is tied to the *thread* that started it (PR_SET_PDEATHSIG), so
    call :meth:`start` from a thread that outlives the server (in tests: the main thread).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        executable: str | None = None,
        startup_timeout: float = 10.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        if port == FORBIDDEN_PORT:
            raise ValueError(f"port {FORBIDDEN_PORT} is reserved for the shared Redis")
        self._requested_port = port
        self._port: int | None = port
        self.executable = executable or find_redis_server()
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self._dir = Path(tempfile.mkdtemp(prefix="drs-redis-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._closed = False
        atexit.register(self.stop)

    # -- addressing -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise RedisServerError("the server has not been started yet, so it has no port")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the process exists (also when it is paused)."""
        return self._process is not None and self._process.poll() is None

    @property
    def paused(self) -> bool:
        return self.running and self._paused

    @property
    def log_path(self) -> Path:
        return self._dir / "redis-server.log"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> RedisServer:
        """Start the server (again), empty, on the same port. No-op if it is running."""
        if self._closed:
            raise RedisServerError("this RedisServer has been stopped for good")
        if self.running:
            return self
        self._process = None
        self._paused = False
        # With a port picked by us there is a small window in which someone else may grab
        # it; try a few fresh ports in that case. A fixed port is only tried once.
        attempts = 1 if self._requested_port is not None or self._port is not None else 3
        last_error: RedisServerError | None = None
        for _ in range(attempts):
            if self._port is None:
                self._port = free_port()
            try:
                self._spawn()
                return self
            except RedisServerError as exc:
                last_error = exc
                if self._requested_port is None and attempts > 1:
                    self._port = None
        assert last_error is not None
        raise last_error

    def _spawn(self) -> None:
        port = self.port
        assert port != FORBIDDEN_PORT
        # Remove anything an earlier incarnation left behind, so a restart is really empty.
        for leftover in self._dir.iterdir():
            if leftover.is_file() and leftover != self.log_path:
                leftover.unlink()
        args = [
            self.executable,
            "--port", str(port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            log.write(f"--- starting: {' '.join(args)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                preexec_fn=_die_with_parent if _PRCTL is not None else None,
            )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise RedisServerError(
                    f"redis-server on port {self.port} exited with status {code} during "
                    f"startup.\n{self._log_tail()}"
                )
            try:
                with self.client(socket_timeout=0.5, socket_connect_timeout=0.5) as probe:
                    # Check that it is *our* process answering, not another server that
                    # happens to own the port (ours would then fail with "address in use").
                    if probe.info("server").get("process_id") == self._process.pid:
                        return
            except redis.exceptions.RedisError as exc:
                last_error = exc
            time.sleep(0.02)
        self._kill_process()
        raise RedisServerError(
            f"redis-server on port {self.port} did not answer PING within "
            f"{self.startup_timeout:g}s (last error: {last_error!r}).\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no redis-server log)"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"redis-server log ({self.log_path}):\n{tail}"

    def _kill_process(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        process.wait()
        self._paused = False

    def kill(self) -> None:
        """SIGKILL the server and wait for it: clients now get connection errors."""
        self._kill_process()

    def restart(self) -> RedisServer:
        """Kill and start again on the same port. The new server is empty."""
        self.kill()
        self._process = None
        return self.start()

    def ensure_running(self) -> RedisServer:
        """Resume if paused and start if it is not running: undo any fault a test injected."""
        if self.paused:
            self.resume()
        if not self.running:
            self.start()
        return self

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open but nothing is answered (timeouts)."""
        if not self.running:
            raise RedisServerError("cannot pause: the server is not running")
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused server."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)
        self._paused = False

    def stop(self) -> None:
        """Final cleanup: resume if paused, terminate (then kill), remove the temp dir."""
        if self._closed:
            return
        self._closed = True
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
        self._paused = False
        shutil.rmtree(self._dir, ignore_errors=True)
        atexit.unregister(self.stop)

    # -- clients ----------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new ``redis.Redis`` for this server (caller closes it; usable with ``with``).

        Defaults: 1 s socket timeouts and no retries, so that faults surface immediately.
        Any ``redis.Redis`` keyword argument can be overridden.
        """
        options: dict[str, Any] = {
            "socket_timeout": 1.0,
            "socket_connect_timeout": 1.0,
            "retry": Retry(NoBackoff(), 0),
        }
        options.update(kwargs)
        return redis.Redis(host=HOST, port=self.port, db=0, **options)

    def flushall(self) -> None:
        with self.client() as conn:
            conn.flushall()

    # -- context manager --------------------------------------------------------------------

    def __enter__(self) -> RedisServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<RedisServer {HOST}:{self._port} {state}>"


def redis_url_port(url: str) -> int | None:
    """TCP port a redis:// or rediss:// URL refers to (Redis' default port if none given)."""
    parsed = urlsplit(url)
    if parsed.scheme not in ("redis", "rediss"):
        return None
    return parsed.port or FORBIDDEN_PORT


@contextlib.contextmanager
def django_cache_pointing_at(url: str, alias: str = "default") -> Iterator[None]:
    """Point the django-redis cache ``alias`` at ``url`` for the duration of the block.

    Uses ``override_settings`` so Django's ``setting_changed`` handler closes and resets the
    cache connections on entry and exit. Everything except LOCATION (backend, OPTIONS) is
    taken from the currently active settings.
    """
    from django.conf import settings
    from django.test import override_settings

    if redis_url_port(url) == FORBIDDEN_PORT:
        raise ValueError(f"refusing to point the {alias!r} cache at port {FORBIDDEN_PORT}")
    caches_conf = {name: dict(conf) for name, conf in settings.CACHES.items()}
    base = caches_conf.get(alias) or caches_conf.get("default") or {}
    caches_conf[alias] = {
        **base,
        "BACKEND": base.get("BACKEND", "django_redis.cache.RedisCache"),
        "LOCATION": url,
        "OPTIONS": dict(base.get("OPTIONS", {})),
    }
    with override_settings(CACHES=caches_conf):
        yield


#: The cache backends the engine supports for one Redis server, with their option names
#: for the suite's socket timeouts (tests/settings.py): django-redis', and redis-py's as
#: Django's own ``RedisCache`` takes them.
CACHE_BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "django-redis": (
        "django_redis.cache.RedisCache",
        {"SOCKET_TIMEOUT": 0.25, "SOCKET_CONNECT_TIMEOUT": 0.25},
    ),
    "django": (
        "django.core.cache.backends.redis.RedisCache",
        {"socket_timeout": 0.25, "socket_connect_timeout": 0.25},
    ),
}


@contextlib.contextmanager
def django_cache_backend(kind: str, alias: str = "default") -> Iterator[None]:
    """Make the cache ``alias`` a ``kind`` backend (:data:`CACHE_BACKENDS`), wherever it
    points; :func:`django_cache_pointing_at` keeps the backend when it moves the alias."""
    from django.conf import settings
    from django.test import override_settings

    backend, options = CACHE_BACKENDS[kind]
    caches_conf = {name: dict(conf) for name, conf in settings.CACHES.items()}
    caches_conf[alias] = {**caches_conf[alias], "BACKEND": backend, "OPTIONS": dict(options)}
    with override_settings(CACHES=caches_conf):
        yield


def socket_timeout(alias: str = "default") -> float:
    """The socket timeout of the cache ``alias``, whichever backend's option name it has."""
    from django.conf import settings

    options = settings.CACHES[alias].get("OPTIONS", {})
    return float(options.get("SOCKET_TIMEOUT", options.get("socket_timeout")))


def forget_django_redis_pools(url: str) -> None:
    """Disconnect and drop django-redis' process-wide connection pools for ``url``.

    django-redis keeps pools in a class attribute keyed by URL; without this, sockets to a
    per-test server would stay open until the end of the run.
    """
    try:
        from django_redis.pool import ConnectionFactory
    except ImportError:  # pragma: no cover
        return
    pools = getattr(ConnectionFactory, "_pools", None)
    if not isinstance(pools, dict):  # pragma: no cover - private API changed
        return
    target = urlsplit(url).netloc
    for key in [k for k in pools if isinstance(k, str) and urlsplit(k).netloc == target]:
        pool = pools.pop(key)
        with contextlib.suppress(Exception):
            pool.disconnect()


class CountingConnectionPool(redis.ConnectionPool):
    """redis-py's pool, counting the connections it hands out (class-wide).

    A command on a pooled connection waits up to the cache alias's socket timeout when
    Redis hangs; the engine's bounded paths (breaker probe, deletions while the breaker
    is open) build a connection of their own instead. Counting check-outs tells the two
    apart without timing anything.
    """

    checkouts = 0

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        type(self).checkouts += 1
        return super().get_connection(*args, **kwargs)


@contextlib.contextmanager
def counting_pool(alias: str = "default") -> Iterator[type[CountingConnectionPool]]:
    """Make the cache ``alias`` (django-redis or Django's RedisCache) count its pools' check-outs
    (:class:`CountingConnectionPool`).

    Enter it before the alias first connects (its pool is built on first use, per URL).
    """
    from django.conf import settings
    from django.test import override_settings

    caches_conf = {name: dict(conf) for name, conf in settings.CACHES.items()}
    options = dict(caches_conf[alias].get("OPTIONS", {}))
    django_redis = caches_conf[alias]["BACKEND"] == CACHE_BACKENDS["django-redis"][0]
    # django-redis' option, or Django's RedisCache's (its pools are per cache object).
    options["CONNECTION_POOL_CLASS" if django_redis else "pool_class"] = (
        f"{CountingConnectionPool.__module__}.{CountingConnectionPool.__qualname__}"
    )
    caches_conf[alias] = {**caches_conf[alias], "OPTIONS": options}
    forget_django_redis_pools(caches_conf[alias]["LOCATION"])
    CountingConnectionPool.checkouts = 0
    try:
        with override_settings(CACHES=caches_conf):
            yield CountingConnectionPool
    finally:
        forget_django_redis_pools(caches_conf[alias]["LOCATION"])
