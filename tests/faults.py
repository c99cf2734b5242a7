"""Fault injection at every I/O step, against a real Redis and a real database.

Two layers, one per kind of I/O the session engine does, and a helper to walk them:

``RedisFaultProxy``
    A TCP proxy in front of a real ``redis-server``. It parses the client's RESP command
    stream and forwards the commands one at a time, relaying each reply once it has been
    parsed in full, so a fault can be put on any single command, also inside a pipeline
    or a ``MULTI``/``EXEC`` block. It logs every command (global number, name, arguments,
    which client write it came in) and injects one-shot faults (``fail``/``fail_when``)
    or persistent ones (``down``/``hang``).

``LedgerFaults``
    A ``connection.execute_wrapper`` (Django's hook) that numbers the SQL statements
    touching the ledger tables and makes the Nth one fail: for real where the database
    allows it (a read-only transaction, a lock held by a second connection, a terminated
    backend), otherwise by raising the exception the ORM would raise.

``steps_of`` / ``for_each_step``
    Run an operation once to list its steps (Redis commands and ledger statements, in
    order), then once per step and fault kind with that step failing.

Typical use, failing every step of a login in turn with every kind::

    def test_login_survives_any_single_fault(redis_server, transactional_db):
        with proxied_cache(redis_server) as proxy, LedgerFaults() as ledger:

            def login() -> object:
                return Client().post("/login/", {"username": "u", "password": PASSWORD})

            def reset() -> None:
                redis_server.flushall()
                UserSession.objects.all().delete()
                reset_breakers()

            def check(result: StepResult) -> None:
                # result.step, result.kind, result.error, result.value
                assert_no_half_login(result)

            for_each_step(login, proxy, ledger, before=reset, after=check)

or by hand::

    steps = steps_of(operation, proxy, ledger)        # counting only, no fault
    for step in steps:
        for kind in step.kinds:
            reset()
            fault = step.arm(kind)                    # proxy.fail(nth=...) / ledger.fail(...)
            ...run the operation, check the outcome...
            assert fault.fired
            step.layer.disarm()

Numbering: ``fail(nth=N)`` counts the layer's *faultable* steps from the moment it is
armed (1 = the next one), so arm it right before the operation, after any set-up that
talks to Redis or the ledger.

Nothing here mocks Redis or the database, and nothing talks to the shared Redis on
port 6379: the proxy refuses to point at it.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import secrets
import select
import selectors
import socket
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NoReturn, Protocol, TypeVar, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.redis_server import (
    FORBIDDEN_PORT,
    HOST,
    RedisServer,
    django_cache_pointing_at,
    forget_django_redis_pools,
    redis_url_port,
)

__all__ = [
    "DB_KINDS",
    "DEFAULT_SETUP_COMMANDS",
    "LEDGER_TABLE_PREFIX",
    "REDIS_KINDS",
    "FaultLayer",
    "InjectedFault",
    "LedgerFaults",
    "LedgerStatement",
    "ProtocolError",
    "ProxiedCommand",
    "RedisFaultProxy",
    "Step",
    "StepResult",
    "for_each_step",
    "parse_command",
    "proxied_cache",
    "reply_end",
    "steps_of",
]

T = TypeVar("T")

#: Order of every logged step across both layers (Redis commands and SQL statements).
_SEQUENCE = itertools.count(1)

#: Fault kinds of :class:`RedisFaultProxy`.
REDIS_KINDS: tuple[str, ...] = ("refuse", "timeout", "readonly", "loading", "error", "lost_reply")

#: Fault kinds of :class:`LedgerFaults`.
DB_KINDS: tuple[str, ...] = (
    "readonly",
    "locked",
    "refused",
    "operational",
    "integrity",
    "data",
    "programming",
    "value",
    "type",
)

#: Commands redis-py sends while setting up a connection. Logged, but not numbered nor
#: faultable unless the proxy is built with ``setup_commands=frozenset()``.
DEFAULT_SETUP_COMMANDS: frozenset[str] = frozenset(
    {
        "HELLO",
        "AUTH",
        "SELECT",
        "READONLY",
        "CLIENT SETINFO",
        "CLIENT SETNAME",
        "CLIENT MAINT_NOTIFICATIONS",
    }
)

#: Tables whose statements :class:`LedgerFaults` counts by default.
LEDGER_TABLE_PREFIX = "django_resilient_sessions_"
#: Tables of the package that are not the ledger's, never counted by default: the
#: per-minute figures for operators (``recent.py``), written at most every 30 s per
#: process after a response, so a run that flushes and one that does not keep the same
#: steps. A failure there changes no session.
NOT_LEDGER_TABLES = ("django_resilient_sessions_backuploadsminute",)


# ------------------------------------------------------------------------------------------
# Faults and steps, common to both layers
# ------------------------------------------------------------------------------------------


class InjectedFault:
    """Handle of an armed fault: has it fired, on which steps.

    ``fired`` turns true once the fault has taken effect (for ``lost_reply``: after Redis
    applied the command; for ``timeout``: once the command has been swallowed).
    """

    def __init__(self, kind: str, times: int, description: str) -> None:
        self.kind = kind
        self.times = times
        self.description = description
        self.hits: list[Any] = []
        self._event = threading.Event()

    @property
    def fired(self) -> bool:
        return self._event.is_set()

    @property
    def hit(self) -> Any:
        """The first step the fault hit (a ProxiedCommand or a LedgerStatement), or None."""
        return self.hits[0] if self.hits else None

    def wait(self, timeout: float = 5.0) -> bool:
        """Wait until the fault has fired; False on timeout."""
        return self._event.wait(timeout)

    def _record(self, step: Any) -> None:
        self.hits.append(step)
        self._event.set()

    def __repr__(self) -> str:
        state = f"fired x{len(self.hits)}" if self.hits else "armed"
        return f"<InjectedFault {self.kind} {self.description} {state}>"


@dataclass
class _Armed:
    fault: InjectedFault
    target: int | None  # absolute step number, for fail(nth=...)
    predicate: Callable[..., bool] | None
    remaining: int


class _Loggable(Protocol):
    seq: int
    n: int | None

    def describe(self) -> str: ...


class FaultLayer(Protocol):
    """What :func:`steps_of` and :func:`for_each_step` need of a layer."""

    label: str
    KINDS: tuple[str, ...]

    @property
    def count(self) -> int: ...

    def counted_since(self, count: int) -> Sequence[_Loggable]: ...

    def fail(self, nth: int = 1, kind: str = ...) -> InjectedFault: ...

    def disarm(self) -> None: ...


@dataclass(frozen=True)
class Step:
    """One I/O step of an operation, as seen by :func:`steps_of`."""

    layer: FaultLayer
    #: Position among the layer's counted steps of the operation (1-based): ``fail(nth=n)``.
    n: int
    #: Position among all steps of the operation, both layers (1-based).
    order: int
    description: str

    @property
    def kinds(self) -> tuple[str, ...]:
        return self.layer.KINDS

    def arm(self, kind: str) -> InjectedFault:
        """Make this step fail with ``kind`` the next time the operation runs."""
        return self.layer.fail(nth=self.n, kind=kind)

    def __str__(self) -> str:
        return f"step {self.order} ({self.layer.label} #{self.n}: {self.description})"


@dataclass
class StepResult:
    """The outcome of one run of :func:`for_each_step`."""

    step: Step
    kind: str
    fault: InjectedFault
    value: object = None
    error: BaseException | None = None


def steps_of(operation: Callable[[], object], *layers: FaultLayer) -> list[Step]:
    """Run ``operation`` once without faults and list its counted steps, in order."""
    marks = [layer.count for layer in layers]
    operation()
    found: list[tuple[int, FaultLayer, int, str]] = []
    for layer, mark in zip(layers, marks, strict=True):
        for entry in layer.counted_since(mark):
            assert entry.n is not None  # counted steps are numbered
            found.append((entry.seq, layer, entry.n - mark, entry.describe()))
    found.sort(key=lambda item: item[0])
    return [
        Step(layer=layer, n=n, order=i, description=text)
        for i, (_, layer, n, text) in enumerate(found, start=1)
    ]


#: Runs of one (step, kind) before a fault that never fires is an error: a loaded machine
#: can stretch a request past a breaker cool-down (a second probe, a step more), so a
#: run whose sequence moved is done again, and only a step never reached fails.
ATTEMPTS = 3


def _faulted_run(
    operation: Callable[[], object], step: Step, kind: str, before: Callable[[], object] | None
) -> StepResult:
    """Run ``operation`` with ``step`` failing with ``kind``, until the fault fires."""
    for _ in range(ATTEMPTS):
        if before is not None:
            before()
        fault = step.arm(kind)
        result = StepResult(step=step, kind=kind, fault=fault)
        try:
            result.value = operation()
        except Exception as exc:
            result.error = exc
        finally:
            step.layer.disarm()
        if fault.fired and _same_step(step, fault.hit):
            return result
    raise AssertionError(
        f"{step} was not reached in {ATTEMPTS} runs when failing it with {kind!r}: the "
        "operation does not repeat the same steps (make `before` reset all state)"
    )


def _same_step(step: Step, hit: Any) -> bool:
    """Did the fault hit the step it was armed for (the same command or statement)?

    Redis commands are compared by name (their keys differ from run to run), SQL
    statements by their text (parameters apart).
    """
    found = str(hit.describe())
    if step.layer.label == "db":
        return found == step.description
    return found.split(" ", 1)[0] == step.description.split(" ", 1)[0]


def for_each_step(
    operation: Callable[[], object],
    *layers: FaultLayer,
    kinds: Sequence[str] | Callable[[Step], Sequence[str]] | None = None,
    before: Callable[[], object] | None = None,
    after: Callable[[StepResult], object] | None = None,
) -> list[StepResult]:
    """Run ``operation`` once per (step, kind) with that step failing with that kind.

    ``before`` runs before the counting run and before every faulted run (reset state
    there: it runs *before* the fault is armed, so its own I/O is not counted).
    ``kinds``: a list (kinds a layer does not know are skipped for its steps), a function
    of the step, or None for all kinds of the step's layer. ``after`` gets each
    :class:`StepResult` (the operation's return value or the exception it raised); an
    exception from it gets a note naming the step and kind. Every fault must fire: an
    operation that no longer reaches the step is an error (it is not deterministic).
    """
    if before is not None:
        before()
    steps = steps_of(operation, *layers)
    results: list[StepResult] = []
    for step in steps:
        if kinds is None:
            step_kinds: Sequence[str] = step.kinds
        elif callable(kinds):
            step_kinds = kinds(step)
        else:
            step_kinds = [kind for kind in kinds if kind in step.kinds]
        for kind in step_kinds:
            result = _faulted_run(operation, step, kind, before)
            try:
                if after is not None:
                    after(result)
            except Exception as exc:
                note = f"while failing {step} with {kind!r}"
                if sys.version_info >= (3, 11):
                    exc.add_note(note)
                else:  # the attribute PEP 678 defines, which pytest shows on 3.10 too
                    exc.__notes__ = [*getattr(exc, "__notes__", []), note]
                raise
            results.append(result)
    return results


# ------------------------------------------------------------------------------------------
# RESP parsing
# ------------------------------------------------------------------------------------------


class ProtocolError(ValueError):
    """The byte stream is not valid RESP."""


_CRLF = b"\r\n"
_SIMPLE = frozenset(b"+-:_,#(")
_BLOBS = frozenset(b"$!=")
_AGGREGATES = frozenset(b"*~>%|")


def _line(buf: bytes | bytearray, pos: int) -> tuple[bytes, int] | None:
    end = buf.find(_CRLF, pos)
    if end < 0:
        return None
    return bytes(buf[pos:end]), end + 2


def _length(text: bytes) -> int:
    try:
        return int(text)
    except ValueError:
        raise ProtocolError(f"bad length {text!r}") from None


def reply_end(buf: bytes | bytearray, pos: int = 0) -> int | None:
    """End offset of the complete RESP2/RESP3 value at ``buf[pos:]``, None if incomplete.

    Types: ``+ - : _ , # (`` (one line), ``$ ! =`` (length-prefixed, ``$-1`` is null,
    ``$?`` streamed), ``* ~ > % |`` (aggregates, ``-1`` null, ``?`` streamed). An
    attribute (``|``) belongs to the value that follows it, so it is included.
    """
    if pos >= len(buf):
        return None
    kind = buf[pos]
    parsed = _line(buf, pos + 1)
    if parsed is None:
        return None
    head, nxt = parsed
    if kind in _SIMPLE:
        return nxt
    if kind in _BLOBS:
        if head == b"?":
            return _streamed_string_end(buf, nxt)
        size = _length(head)
        if size < 0:
            return nxt
        end = nxt + size + 2
        return end if end <= len(buf) else None
    if kind in _AGGREGATES:
        if head == b"?":
            end_of_items = _streamed_aggregate_end(buf, nxt)
        else:
            count = _length(head)
            if count < 0:
                return nxt
            end_of_items = _items_end(buf, nxt, count * 2 if kind in b"%|" else count)
        if end_of_items is not None and kind == ord("|"):
            return reply_end(buf, end_of_items)  # attributes precede the value they describe
        return end_of_items
    raise ProtocolError(f"unknown RESP type byte {bytes([kind])!r}")


def _items_end(buf: bytes | bytearray, pos: int, count: int) -> int | None:
    for _ in range(count):
        end = reply_end(buf, pos)
        if end is None:
            return None
        pos = end
    return pos


def _streamed_string_end(buf: bytes | bytearray, pos: int) -> int | None:
    """``;len`` chunks until ``;0``."""
    while True:
        if pos >= len(buf):
            return None
        if buf[pos] != ord(";"):
            raise ProtocolError("bad streamed string chunk")
        chunk = _line(buf, pos + 1)
        if chunk is None:
            return None
        size = _length(chunk[0])
        if size == 0:
            return chunk[1]
        pos = chunk[1] + size + 2
        if pos > len(buf):
            return None


def _streamed_aggregate_end(buf: bytes | bytearray, pos: int) -> int | None:
    """Values until ``.``."""
    while True:
        if pos + 3 > len(buf):
            return None
        if buf[pos : pos + 3] == b".\r\n":
            return pos + 3
        end = reply_end(buf, pos)
        if end is None:
            return None
        pos = end


def _split_inline(line: bytes) -> list[bytes]:
    """Split an inline command like redis-server does (quotes, backslash escapes)."""
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i : i + 1].isspace():
            i += 1
        if i >= n:
            return args
        current = bytearray()
        quote = line[i : i + 1] if line[i : i + 1] in (b'"', b"'") else b""
        if quote:
            i += 1
            while True:
                if i >= n:
                    raise ProtocolError("unbalanced quotes in inline command")
                ch = line[i : i + 1]
                if quote == b'"' and ch == b"\\" and i + 1 < n:
                    esc = line[i + 1 : i + 2]
                    if esc == b"x" and i + 3 < n:
                        try:
                            current.append(int(line[i + 2 : i + 4], 16))
                            i += 4
                            continue
                        except ValueError:
                            pass
                    current += {
                        b"n": b"\n",
                        b"r": b"\r",
                        b"t": b"\t",
                        b"b": b"\b",
                        b"a": b"\a",
                    }.get(esc, esc)
                    i += 2
                    continue
                if quote == b"'" and ch == b"\\" and line[i + 1 : i + 2] == b"'":
                    current += b"'"
                    i += 2
                    continue
                if ch == quote:
                    i += 1
                    if i < n and not line[i : i + 1].isspace():
                        raise ProtocolError("closing quote must be followed by a space")
                    break
                current += ch
                i += 1
        else:
            while i < n and not line[i : i + 1].isspace():
                current += line[i : i + 1]
                i += 1
        args.append(bytes(current))


def parse_command(buf: bytes | bytearray, pos: int = 0) -> tuple[int, list[bytes]] | None:
    """Parse one client command at ``buf[pos:]``: ``(end offset, [name, *args])``.

    Arrays of bulk strings and inline commands. None if incomplete. An empty command
    (``*0``, a blank inline line) yields an empty list: Redis ignores it, sending no reply.
    """
    if pos >= len(buf):
        return None
    if buf[pos] == ord("*"):
        parsed = _line(buf, pos + 1)
        if parsed is None:
            return None
        count, p = _length(parsed[0]), parsed[1]
        args: list[bytes] = []
        for _ in range(max(count, 0)):
            if p >= len(buf):
                return None
            if buf[p] != ord("$"):
                raise ProtocolError(f"expected '$', got {bytes(buf[p : p + 1])!r}")
            head = _line(buf, p + 1)
            if head is None:
                return None
            size = _length(head[0])
            if size < 0:
                raise ProtocolError("null bulk string in a command")
            start = head[1]
            end = start + size
            if end + 2 > len(buf):
                return None
            if buf[end : end + 2] != _CRLF:
                raise ProtocolError("bulk string not terminated by CRLF")
            args.append(bytes(buf[start:end]))
            p = end + 2
        return p, args
    end = buf.find(b"\n", pos)
    if end < 0:
        return None
    return end + 1, _split_inline(bytes(buf[pos:end]).rstrip(b"\r"))


# ------------------------------------------------------------------------------------------
# Redis proxy
# ------------------------------------------------------------------------------------------

_ERROR_REPLIES: Mapping[str, bytes] = {
    "readonly": b"-READONLY You can't write against a read only replica.\r\n",
    "loading": b"-LOADING Redis is loading the dataset in memory\r\n",
    "error": b"-ERR injected fault\r\n",
}
_EXECABORT = b"-EXECABORT Transaction discarded because of previous errors.\r\n"
_DISCARD = b"*1\r\n$7\r\nDISCARD\r\n"
_REPLY_HEAD = 256  # bytes of each reply kept in the log

# What the connection thread does after a command.
_CONTINUE, _CLOSE, _BLACKHOLE = "continue", "close", "blackhole"


@dataclass
class ProxiedCommand:
    """One command the proxy received (log entry)."""

    #: Number among faultable commands since the last ``reset_log()`` (None: setup command).
    n: int | None
    #: Command name, upper case (``"CLIENT"`` for ``CLIENT SETINFO``: see ``args``).
    name: str
    #: The arguments after the name, as sent.
    args: tuple[bytes, ...]
    #: Which client write (round trip) the command came in; global, increasing.
    batch: int
    #: Which client connection (global, increasing).
    connection: int
    setup: bool
    #: Kind of fault injected on it (also ``"hang"``, ``"down"``), or None.
    fault: str | None = None
    #: The first bytes of what the client got for it (None: nothing).
    reply: bytes | None = None
    seq: int = 0

    @property
    def command(self) -> str:
        """``"SET"``, ``"CLIENT SETINFO"``: the name with its subcommand where it has one."""
        if self.name in _SUBCOMMANDS and self.args:
            return f"{self.name} {self.args[0].decode('latin-1').upper()}"
        return self.name

    def describe(self) -> str:
        shown = " ".join(_show(arg) for arg in self.args[:3])
        more = " ..." if len(self.args) > 3 else ""
        return f"{self.name} {shown}{more}".rstrip()


_SUBCOMMANDS = frozenset({"CLIENT", "SCRIPT", "CONFIG", "CLUSTER", "COMMAND", "OBJECT", "DEBUG"})


def _show(arg: bytes, limit: int = 40) -> str:
    text = arg[:limit].decode("utf-8", "backslashreplace")
    return text + ("..." if len(arg) > limit else "")


@dataclass
class _Conn:
    id: int
    client: socket.socket
    upstream: socket.socket | None = None
    thread: threading.Thread | None = None
    closing: bool = False
    blackholed: bool = False
    in_multi: bool = False
    multi_dirty: bool = False
    up_buf: bytearray = field(default_factory=bytearray)


class _UpstreamClosed(Exception):
    pass


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _readable_now(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


def _upstream_address(upstream: RedisServer | str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(upstream, RedisServer):
        address = (upstream.host, upstream.port)
    elif isinstance(upstream, str):
        from urllib.parse import urlsplit

        port = redis_url_port(upstream)
        if port is None:
            raise ValueError(f"not a redis:// URL: {upstream!r}")
        address = (urlsplit(upstream).hostname or HOST, port)
    else:
        address = (upstream[0], int(upstream[1]))
    if address[1] == FORBIDDEN_PORT:
        raise ValueError(f"refusing to proxy the shared Redis on port {FORBIDDEN_PORT}")
    if address[0] not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"the proxy only talks to loopback, not {address[0]!r}")
    return address


class RedisFaultProxy:
    """A fault-injecting RESP proxy in front of a real redis-server (see the module doc).

    Use as a context manager; point clients at :attr:`url` (for the Django cache:
    :func:`proxied_cache`). Commands are forwarded one at a time in the order each
    client sent them, so the replies keep their order and a fault hits exactly one
    command. Not supported: Pub/Sub, ``MONITOR``, ``CLIENT REPLY OFF`` (commands whose
    replies are not one reply per command); RESP3 push messages in between replies
    (client tracking) are relayed.

    Fault kinds (what the client sees):

    ``refuse``      the connection is closed, the command not forwarded: ConnectionError
    ``timeout``     the command is swallowed and the connection never answers again:
                    the client's socket timeout fires (TimeoutError)
    ``readonly``    ``-READONLY ...`` instead of forwarding: ReadOnlyError
    ``loading``     ``-LOADING ...``: BusyLoadingError (a ConnectionError subclass in
                    redis-py, so a client with retries retries it)
    ``error``       ``-ERR injected fault``: ResponseError
    ``lost_reply``  forwarded and applied by Redis, then the reply is dropped and the
                    connection closed: ConnectionError although the write happened

    An error-reply fault on a command queued in ``MULTI`` makes the ``EXEC`` answer
    ``-EXECABORT`` (the proxy sends ``DISCARD`` instead), as Redis does for a command
    refused at queue time. Replies to earlier commands of the same client write are
    delivered before a connection is closed or goes silent. A fault hits whatever
    command it lands on (a real replica answers ``READONLY`` to writes only).

    Clients: ``redis.Redis(...)`` built without ``retry=`` retries connection errors and
    timeouts (redis-py >= 6: 10 times with backoff), which hides one-shot faults and
    applies a ``lost_reply`` command twice; :meth:`client` and django-redis' pools do not
    retry. ``timeout`` costs the client's socket timeout (0.25 s in tests/settings.py).
    A "batch" is what the proxy read before it had answered everything received: one
    redis-py call or pipeline (its chunks are sent back to back); a connection's
    handshake is its own batches, left out of :attr:`batches`.
    """

    KINDS = REDIS_KINDS
    label = "redis"

    def __init__(
        self,
        upstream: RedisServer | str | tuple[str, int],
        *,
        setup_commands: Iterable[str] = DEFAULT_SETUP_COMMANDS,
        connect_timeout: float = 2.0,
    ) -> None:
        self.upstream = _upstream_address(upstream)
        self.setup_commands = frozenset(c.upper() for c in setup_commands)
        self.connect_timeout = connect_timeout
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._log: list[ProxiedCommand] = []
        self._counter = 0
        self._batches = itertools.count(1)
        self._conn_ids = itertools.count(1)
        self._armed: list[_Armed] = []
        self._mode = "up"
        self._conns: dict[int, _Conn] = {}
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._requests: list[tuple[str, threading.Event]] = []
        self._listener: socket.socket | None = None
        self._listening = False
        self._acceptor: threading.Thread | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._port: int | None = None
        self._started = False
        self._closed = False
        #: Exceptions raised inside the proxy's threads (a harness bug; should stay empty).
        self.errors: list[BaseException] = []

    # -- addressing -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the proxy has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A ``redis.Redis`` through the proxy: 1 s timeouts and no retries by default."""
        options: dict[str, Any] = {
            "socket_timeout": 1.0,
            "socket_connect_timeout": 1.0,
            "retry": Retry(NoBackoff(), 0),
        }
        options.update(kwargs)
        return redis.Redis(host=HOST, port=self.port, **options)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> RedisFaultProxy:
        if self._started:
            return self
        self._started = True
        self._wake_r, self._wake_w = socket.socketpair()
        self._track(self._wake_r)
        self._track(self._wake_w)
        self._wake_r.setblocking(False)
        while True:
            listener = self._new_socket()
            listener.bind((HOST, 0))
            if listener.getsockname()[1] != FORBIDDEN_PORT:
                break
            listener.close()
        self._port = listener.getsockname()[1]
        listener.listen(128)
        self._listener = listener
        self._listening = True
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"redis-fault-proxy:{self._port}", daemon=True
        )
        self._threads.append(self._acceptor)
        self._acceptor.start()
        return self

    def close(self) -> None:
        """Stop accepting, close every connection, join every thread. Idempotent."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        if self._acceptor is not None and self._acceptor.is_alive():
            self._request("stop")
            self._acceptor.join(5)
        self._close_connections(lambda conn: True)
        for sock in (self._wake_r, self._wake_w, self._listener):
            if sock is not None:
                sock.close()
        # A connection whose client hung up just before (a test's client closed first)
        # has left the table but its thread may still be on its way out: wait for it too.
        for thread in self.alive_threads():
            if thread is not threading.current_thread():
                thread.join(5)
        stuck = self.alive_threads()
        if stuck:
            raise RuntimeError(f"proxy threads did not stop: {stuck}")

    def __enter__(self) -> RedisFaultProxy:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except RuntimeError:
            if exc_type is None:
                raise

    def alive_threads(self) -> list[threading.Thread]:
        """The proxy's threads still running (empty once closed)."""
        with self._lock:
            return [thread for thread in self._threads if thread.is_alive()]

    def open_sockets(self) -> list[socket.socket]:
        """The proxy's sockets not yet closed (empty once closed)."""
        with self._lock:
            return [sock for sock in self._sockets if sock.fileno() != -1]

    @property
    def connection_count(self) -> int:
        """Client connections currently open through the proxy."""
        with self._lock:
            return len(self._conns)

    def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until ``condition()`` holds, re-checked whenever the proxy's state changes."""
        with self._changed:
            return self._changed.wait_for(condition, timeout)

    # -- log --------------------------------------------------------------------------------

    @property
    def log(self) -> list[ProxiedCommand]:
        """Every command received since the last ``reset_log()``, setup ones included."""
        with self._lock:
            return list(self._log)

    @property
    def commands(self) -> list[ProxiedCommand]:
        """The faultable (numbered) commands since the last ``reset_log()``."""
        with self._lock:
            return [entry for entry in self._log if entry.n is not None]

    def names(self) -> list[str]:
        """Names of the faultable commands, e.g. ``["SET", "GET", "SCRIPT LOAD"]``."""
        return [entry.command for entry in self.commands]

    @property
    def batches(self) -> list[list[ProxiedCommand]]:
        """Faultable commands grouped by the client write they came in (round trips).

        Writes holding only setup commands (a new connection's handshake) are left out.
        """
        grouped: dict[int, list[ProxiedCommand]] = {}
        for entry in self.commands:
            grouped.setdefault(entry.batch, []).append(entry)
        return list(grouped.values())

    @property
    def count(self) -> int:
        """Faultable commands numbered so far (since the last ``reset_log()``)."""
        with self._lock:
            return self._counter

    def counted_since(self, count: int) -> list[ProxiedCommand]:
        with self._lock:
            return [e for e in self._log if e.n is not None and e.n > count]

    def reset_log(self) -> None:
        """Forget the log; numbering starts again at 1 (armed faults keep their place)."""
        with self._lock:
            for armed in self._armed:
                if armed.target is not None:
                    armed.target -= self._counter
            self._counter = 0
            self._log.clear()

    # -- faults -----------------------------------------------------------------------------

    def fail(self, nth: int = 1, kind: str = "error") -> InjectedFault:
        """Fail the ``nth`` faultable command from now on (1 = the next one), once."""
        self._check_kind(kind)
        if nth < 1:
            raise ValueError("nth counts from 1")
        fault = InjectedFault(kind, 1, f"command #{nth} from arming")
        with self._lock:
            self._armed.append(_Armed(fault, self._counter + nth, None, 1))
        return fault

    def fail_when(
        self,
        predicate: Callable[[str, tuple[bytes, ...]], bool],
        kind: str = "error",
        times: int = 1,
    ) -> InjectedFault:
        """Fail the next ``times`` faultable commands for which ``predicate(name, args)``."""
        self._check_kind(kind)
        fault = InjectedFault(kind, times, f"when {getattr(predicate, '__name__', predicate)}")
        with self._lock:
            self._armed.append(_Armed(fault, None, predicate, times))
        return fault

    def disarm(self) -> None:
        """Drop the one-shot faults that have not fired."""
        with self._lock:
            self._armed.clear()

    @property
    def mode(self) -> str:
        """``"up"``, ``"down"`` or ``"hang"``."""
        return self._mode

    def down(self) -> None:
        """Close every connection and refuse new ones (connect: ECONNREFUSED) until heal()."""
        with self._lock:
            self._mode = "down"
        self._request("unlisten")
        self._close_connections(lambda conn: True)

    def hang(self) -> None:
        """Accept connections and read commands, but never answer (until heal())."""
        with self._lock:
            self._mode = "hang"

    def heal(self) -> None:
        """Back to normal: accept and answer again, drop the one-shot faults.

        Connections that a hang or a ``timeout`` fault left silent are closed (their
        clients see a connection error instead of waiting forever).
        """
        with self._lock:
            was = self._mode
            self._mode = "up"
            self._armed.clear()
            self._changed.notify_all()
        if was == "down":
            self._request("listen")
        self._close_connections(lambda conn: conn.blackholed)

    def drop_connections(self) -> None:
        """Close every client connection now (like a Redis restart), mode unchanged."""
        self._close_connections(lambda conn: True)

    def _check_kind(self, kind: str) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown Redis fault kind {kind!r}; one of {self.KINDS}")

    # -- internals: sockets and threads -----------------------------------------------------

    def _new_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._track(sock)
        return sock

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets = [s for s in self._sockets if s.fileno() != -1]
            self._sockets.append(sock)

    def _request(self, what: str) -> None:
        """Have the acceptor thread do ``what`` (it owns the listening socket) and wait."""
        done = threading.Event()
        with self._lock:
            self._requests.append((what, done))
        assert self._wake_w is not None
        self._wake_w.send(b"x")
        if not done.wait(5):
            raise RuntimeError(f"the proxy's acceptor did not handle {what!r}")

    def _accept_loop(self) -> None:
        assert self._wake_r is not None
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        assert self._listener is not None
        self._listener.setblocking(False)
        selector.register(self._listener, selectors.EVENT_READ)
        try:
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            self._wake_r.recv(4096)
                        if self._handle_requests(selector):
                            return
                    elif key.fileobj is self._listener and self._listening:
                        self._accept_one()
        except BaseException as exc:  # pragma: no cover - a harness bug
            self.errors.append(exc)
        finally:
            selector.close()
            if self._listener is not None:
                self._listener.close()

    def _handle_requests(self, selector: selectors.BaseSelector) -> bool:
        with self._lock:
            requests, self._requests = self._requests, []
        stop = False
        for what, done in requests:
            assert self._listener is not None
            if what == "stop":
                stop = True
            elif what == "unlisten" and self._listening:
                # Close the listener, keep the port with a bound socket that does not
                # listen: connects are refused and nobody else can take the port.
                selector.unregister(self._listener)
                self._listener.close()
                placeholder = self._new_socket()
                placeholder.bind((HOST, self.port))
                self._listener = placeholder
                self._listening = False
            elif what == "listen" and not self._listening:
                self._listener.listen(128)
                self._listener.setblocking(False)
                selector.register(self._listener, selectors.EVENT_READ)
                self._listening = True
            done.set()
        return stop

    def _accept_one(self) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        self._track(client)
        client.setblocking(True)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._mode == "down":
                client.close()
                return
            conn = _Conn(id=next(self._conn_ids), client=client)
            thread = threading.Thread(
                target=self._serve,
                args=(conn,),
                name=f"redis-fault-proxy:{self.port}:conn{conn.id}",
                daemon=True,
            )
            conn.thread = thread
            self._conns[conn.id] = conn
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            self._changed.notify_all()
        thread.start()

    def _close_connections(self, which: Callable[[_Conn], bool]) -> None:
        with self._lock:
            chosen = [conn for conn in self._conns.values() if which(conn)]
            for conn in chosen:
                conn.closing = True
                _shutdown(conn.client)
                _shutdown(conn.upstream)
        for conn in chosen:
            if conn.thread is not None and conn.thread is not threading.current_thread():
                conn.thread.join(5)

    def _serve(self, conn: _Conn) -> None:
        try:
            try:
                upstream = socket.create_connection(self.upstream, timeout=self.connect_timeout)
            except OSError:
                return  # Redis is not there: the client sees its connection closed
            self._track(upstream)
            upstream.settimeout(None)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                conn.upstream = upstream
                if conn.closing:
                    return
            self._pump(conn)
        except (OSError, _UpstreamClosed):
            pass
        except BaseException as exc:  # a harness bug: keep it for the tests to see
            self.errors.append(exc)
        finally:
            with self._lock:
                self._conns.pop(conn.id, None)
                for sock in (conn.client, conn.upstream):
                    if sock is not None:
                        _shutdown(sock)
                        sock.close()
                self._changed.notify_all()

    def _pump(self, conn: _Conn) -> None:
        client = conn.client
        buf = bytearray()
        out = bytearray()
        batch: int | None = None
        while True:
            while True:
                try:
                    parsed = parse_command(buf)
                except ProtocolError as exc:
                    client.sendall(bytes(out) + f"-ERR Protocol error: {exc}\r\n".encode())
                    return
                if parsed is None:
                    break
                end, args = parsed
                raw = bytes(buf[:end])
                del buf[:end]
                if not args:
                    continue
                if batch is None:
                    batch = next(self._batches)
                action = self._process(conn, raw, args, batch, out)
                if action != _CONTINUE:
                    with contextlib.suppress(OSError):
                        client.sendall(out)
                    if action == _BLACKHOLE:
                        self._blackhole(conn)
                    return
                if _readable_now(client):  # more of the same write: same batch
                    data = client.recv(65536)
                    if not data:
                        return
                    buf += data
            if not buf and not _readable_now(client):
                # Every command received has been answered and the client sent no more:
                # it is waiting for these replies, so this write (batch) is over.
                if out:
                    client.sendall(out)
                    out.clear()
                batch = None
            data = client.recv(65536)
            if not data:
                return
            buf += data

    def _blackhole(self, conn: _Conn) -> None:
        """Never answer this connection again: read and drop until the client gives up."""
        with self._lock:
            upstream, conn.upstream = conn.upstream, None
            self._changed.notify_all()
        if upstream is not None:
            _shutdown(upstream)
            upstream.close()
        while conn.client.recv(65536):
            pass

    def _is_setup(self, name: str, args: list[bytes]) -> bool:
        if name in self.setup_commands:
            return True
        if len(args) > 1:
            return f"{name} {args[1].decode('latin-1').upper()}" in self.setup_commands
        return False

    def _choose(
        self, n: int | None, name: str, args: tuple[bytes, ...]
    ) -> tuple[str | None, InjectedFault | None]:
        if self._mode == "down":
            return "down", None
        if self._mode == "hang":
            return "hang", None
        if n is None:
            return None, None
        for armed in self._armed:
            if armed.target is not None:
                if armed.target == n:
                    self._armed.remove(armed)
                    return armed.fault.kind, armed.fault
            elif armed.predicate is not None and armed.predicate(name, args):
                armed.remaining -= 1
                if armed.remaining <= 0:
                    self._armed.remove(armed)
                return armed.fault.kind, armed.fault
        return None, None

    def _process(
        self, conn: _Conn, raw: bytes, args: list[bytes], batch: int, out: bytearray
    ) -> str:
        name = args[0].decode("latin-1").upper()
        setup = self._is_setup(name, args)
        with self._lock:
            n: int | None = None
            if not setup:
                self._counter += 1
                n = self._counter
            rest = tuple(args[1:])
            kind, fault = self._choose(n, name, rest)
            if kind in ("hang", "timeout"):
                conn.blackholed = True  # before anyone can see the log entry
            entry = ProxiedCommand(
                n=n,
                name=name,
                args=rest,
                batch=batch,
                connection=conn.id,
                setup=setup,
                fault=kind,
                seq=next(_SEQUENCE),
            )
            self._log.append(entry)
            self._changed.notify_all()
        try:
            return self._apply(conn, raw, name, kind, entry, out)
        finally:
            if fault is not None:
                fault._record(entry)
            with self._lock:
                self._changed.notify_all()

    def _apply(
        self,
        conn: _Conn,
        raw: bytes,
        name: str,
        kind: str | None,
        entry: ProxiedCommand,
        out: bytearray,
    ) -> str:
        if kind is None:
            if name == "EXEC" and conn.multi_dirty:
                self._forward(conn, _DISCARD)
                conn.in_multi = conn.multi_dirty = False
                reply = _EXECABORT
            else:
                reply = self._forward(conn, raw)
                self._track_multi(conn, name, reply)
            entry.reply = reply[:_REPLY_HEAD]
            out += reply
            return _CONTINUE
        if kind in ("hang", "timeout"):
            return _BLACKHOLE
        if kind in ("refuse", "down"):
            return _CLOSE
        if kind in _ERROR_REPLIES:
            reply = _ERROR_REPLIES[kind]
            if conn.in_multi:
                if name == "EXEC":  # the transaction must not run: drop it
                    self._forward(conn, _DISCARD)
                    conn.in_multi = conn.multi_dirty = False
                elif name not in ("MULTI", "DISCARD"):
                    conn.multi_dirty = True  # as Redis does for a command refused when queued
            entry.reply = reply
            out += reply
            return _CONTINUE
        if kind == "lost_reply":
            reply = self._forward(conn, raw)
            self._track_multi(conn, name, reply)
            return _CLOSE
        raise AssertionError(f"unhandled kind {kind!r}")  # pragma: no cover

    @staticmethod
    def _track_multi(conn: _Conn, name: str, reply: bytes) -> None:
        if name == "MULTI" and reply.startswith(b"+OK"):
            conn.in_multi = True
            conn.multi_dirty = False
        elif name in ("EXEC", "DISCARD"):
            conn.in_multi = conn.multi_dirty = False

    def _forward(self, conn: _Conn, raw: bytes) -> bytes:
        """Send one command upstream, return its complete reply (with push messages)."""
        upstream = conn.upstream
        if upstream is None:
            raise _UpstreamClosed
        upstream.sendall(raw)
        relayed = bytearray()
        buf = conn.up_buf
        while True:
            end = reply_end(buf)
            if end is None:
                data = upstream.recv(65536)
                if not data:
                    raise _UpstreamClosed
                buf += data
                continue
            is_push = buf[0] == ord(">")
            relayed += buf[:end]
            del buf[:end]
            if not is_push:  # a push (RESP3) is out of band: the reply still follows
                return bytes(relayed)


@contextlib.contextmanager
def proxied_cache(
    upstream: RedisServer | str | tuple[str, int], alias: str = "default", **options: Any
) -> Iterator[RedisFaultProxy]:
    """A :class:`RedisFaultProxy` with the Django cache ``alias`` pointed through it.

    django-redis' pools for the proxy's URL are dropped on the way out, before the proxy
    closes.
    """
    with RedisFaultProxy(upstream, **options) as proxy:
        try:
            with django_cache_pointing_at(proxy.url, alias):
                yield proxy
        finally:
            forget_django_redis_pools(proxy.url)


# ------------------------------------------------------------------------------------------
# Database ledger faults
# ------------------------------------------------------------------------------------------

_BOOKKEEPING = re.compile(r"\s*(SAVEPOINT|RELEASE|ROLLBACK|BEGIN|COMMIT|END)\b", re.IGNORECASE)
_WRITE = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE|MERGE)\b", re.IGNORECASE)
_QUOTED = re.compile(r'"([^"]+)"')
_RAISED = {
    "operational": "OperationalError",
    "integrity": "IntegrityError",
    "data": "DataError",
    "programming": "ProgrammingError",
}
_savepoint_ids = itertools.count(1)


@dataclass
class LedgerStatement:
    """One SQL statement seen by :class:`LedgerFaults` (log entry)."""

    #: Number among counted statements since the last ``reset_log()`` (None: not counted).
    n: int | None
    sql: str
    params: Any
    many: bool
    #: Kind of fault injected on it, or None.
    fault: str | None = None
    #: True if the database itself produced the failure, False if the harness raised it.
    real: bool | None = None
    #: How the fault was produced ("query_only", "table lock", "terminated backend", ...).
    detail: str = ""
    #: What the statement raised (with or without a fault), or None.
    error: BaseException | None = None
    seq: int = 0

    def describe(self) -> str:
        text = " ".join(self.sql.split())
        return text if len(text) <= 100 else text[:97] + "..."


class LedgerFaults:
    """Count, log and fail the ORM's SQL statements on one connection (module doc).

    ``with LedgerFaults() as ledger:`` installs a ``connection.execute_wrapper`` on the
    connection ``using`` *of the current thread* (requests made with Django's test
    client run in it). Counted by default: statements mentioning a table whose name
    starts with ``django_resilient_sessions_`` (``tables=None``: every statement), never
    the transaction bookkeeping (``SAVEPOINT``/``RELEASE``/``ROLLBACK``/``BEGIN``)
    unless ``count_bookkeeping=True``.

    Kinds, and how real they are:

    ============ ============================================ ==============================
    kind         SQLite (pytest-django's in-memory database)  PostgreSQL
    ============ ============================================ ==============================
    readonly     real: ``PRAGMA query_only`` for the          real: a read-only transaction
                 statement ("attempt to write a readonly      ("cannot execute INSERT in a
                 database", OperationalError)                 read-only transaction",
                                                              InternalError)
    locked       real: a second connection holds a shared-    real: a second connection
                 cache table lock ("database table is         holds ``LOCK TABLE ... ACCESS
                 locked", OperationalError); raised when our  EXCLUSIVE``, ours has a 50 ms
                 own open transaction already holds that      ``lock_timeout`` ("canceling
                 table, so no other connection can lock it    statement due to lock
                                                              timeout", OperationalError);
                                                              if our transaction already
                                                              holds the table, the same
                                                              real wait on an advisory lock
                                                              held by the second connection
    refused      raised: OperationalError("unable to open     real in autocommit (needs
                 database file")                              ``django_db(transaction=
                                                              True)``): the backend is
                                                              terminated, the statement
                                                              fails, Django's connection is
                                                              closed so the next statement
                                                              reconnects; raised inside
                                                              pytest-django's test
                                                              transaction (it would die)
    operational, raised: django.db.OperationalError / IntegrityError / DataError /
    integrity,   ProgrammingError, converted from the driver's exception by Django's
    data,        ``wrap_database_errors`` (so ``__cause__`` is a sqlite3/psycopg error)
    programming
    value, type  raised: ValueError / TypeError (as psycopg raises for a NUL byte, or
                 SQLite's adapter for an aware datetime with USE_TZ=False)
    ============ ============================================ ==============================

    The statement is not run when the fault is raised; ``readonly`` only breaks writes
    (a read-only database still answers reads). Each log entry says ``real`` or not.

    Transactions (PostgreSQL; SQLite keeps a transaction usable after an error):

    - No transaction (autocommit, ``django_db(transaction=True)``): the statement fails
      alone, as in production.
    - Only pytest-django's test transaction open (plain ``django_db``): the code under
      test runs in autocommit as far as it knows, so the failure is contained in a
      savepoint and the test transaction goes on.
    - A transaction the code under test opened (``transaction.atomic()``): the failure
      leaves it aborted, as a real error would ("current transaction is aborted"), also
      for raised DatabaseError kinds (not for ``value``/``type``, which psycopg raises
      before sending anything).

    Persistent: ``down(kind)`` fails every counted statement with ``kind`` until
    ``heal()`` (it drops armed one-shot faults, as ``heal()`` does); ``down("refused")``
    is the database being unreachable: on PostgreSQL in autocommit Django's connection is
    closed and its settings point at a closed port, so every connect is refused for real
    (nothing reaches the wrapper, so nothing is logged); otherwise every statement but
    the bookkeeping raises.

    Which test mode to use. Engine tests that make ORM *writes* fail should use
    ``django_db(transaction=True)``, which is production's autocommit:

    - In plain ``django_db`` every failing ``save()``/``create()``/``update()``/
      ``delete()`` (any exception, ``value``/``type`` included) marks pytest-django's
      test transaction for rollback (Django's ``mark_for_rollback_on_error``): the next
      query raises TransactionManagementError, unless the failing call ran in an
      ``atomic()`` block of its own. Failing reads (``count()``, ``exists()``, iteration)
      and raw ``connection.cursor()`` statements are not marked.
    - In plain ``django_db``, ``connection.in_atomic_block`` is always true, so code
      that decides on it (e.g. "retry unless inside a transaction") takes the
      in-transaction path there.
    - ``refused`` is real only with ``transaction=True`` on PostgreSQL (a terminated
      backend would take the test transaction with it); ``locked`` is real on SQLite
      only when our transaction does not already hold the table, which in practice
      means ``transaction=True`` as well.

    Only the connection of the thread that entered the block is wrapped (the test
    client runs requests in that thread; a live server or worker threads are not
    covered). Server-side cursors (``QuerySet.iterator()`` on PostgreSQL) do not mix
    with a ``readonly`` fault inside a transaction: its savepoint is rolled back after
    the statement, which closes a cursor declared in it.
    """

    KINDS = DB_KINDS
    label = "db"

    def __init__(
        self,
        using: str = "default",
        *,
        tables: Sequence[str] | None = (LEDGER_TABLE_PREFIX,),
        count_bookkeeping: bool = False,
        lock_timeout_ms: int = 50,
    ) -> None:
        self.using = using
        self.tables = tuple(tables) if tables is not None else None
        self.count_bookkeeping = count_bookkeeping
        self.lock_timeout_ms = lock_timeout_ms
        self._lock = threading.RLock()
        self._log: list[LedgerStatement] = []
        self._counter = 0
        self._armed: list[_Armed] = []
        self._down: str | None = None
        self._down_saved: tuple[Any, Any] | None = None
        self._closed_port: socket.socket | None = None
        self._helper: Any = None
        self._wrapper_cm: contextlib.AbstractContextManager[None] | None = None
        self._connection: Any = None
        self._real_settings: dict[str, Any] = {}

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def connection(self) -> Any:
        if self._connection is None:
            raise RuntimeError("use LedgerFaults as a context manager")
        return self._connection

    @property
    def vendor(self) -> str:
        return str(self.connection.vendor)

    def __enter__(self) -> LedgerFaults:
        from django.db import connections

        self._connection = connections[self.using]
        self._real_settings = dict(self._connection.settings_dict)
        self._wrapper_cm = self._connection.execute_wrapper(self._wrap)
        self._wrapper_cm.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.heal()
        finally:
            if self._wrapper_cm is not None:
                self._wrapper_cm.__exit__(None, None, None)
                self._wrapper_cm = None
            self._close_helper()

    @property
    def helper_open(self) -> bool:
        """Whether the second connection (locks, terminations) is open."""
        return self._helper is not None

    # -- log --------------------------------------------------------------------------------

    @property
    def log(self) -> list[LedgerStatement]:
        """Counted statements since the last ``reset_log()``."""
        with self._lock:
            return list(self._log)

    @property
    def count(self) -> int:
        with self._lock:
            return self._counter

    def counted_since(self, count: int) -> list[LedgerStatement]:
        with self._lock:
            return [e for e in self._log if e.n is not None and e.n > count]

    def reset_log(self) -> None:
        """Forget the log; numbering starts again at 1 (armed faults keep their place)."""
        with self._lock:
            for armed in self._armed:
                if armed.target is not None:
                    armed.target -= self._counter
            self._counter = 0
            self._log.clear()

    # -- faults -----------------------------------------------------------------------------

    def fail(self, nth: int = 1, kind: str = "operational") -> InjectedFault:
        """Fail the ``nth`` counted statement from now on (1 = the next one), once."""
        self._check_kind(kind)
        if nth < 1:
            raise ValueError("nth counts from 1")
        fault = InjectedFault(kind, 1, f"statement #{nth} from arming")
        with self._lock:
            self._armed.append(_Armed(fault, self._counter + nth, None, 1))
        return fault

    def fail_when(
        self, predicate: Callable[[str, Any], bool], kind: str = "operational", times: int = 1
    ) -> InjectedFault:
        """Fail the next ``times`` counted statements for which ``predicate(sql, params)``."""
        self._check_kind(kind)
        fault = InjectedFault(kind, times, f"when {getattr(predicate, '__name__', predicate)}")
        with self._lock:
            self._armed.append(_Armed(fault, None, predicate, times))
        return fault

    def disarm(self) -> None:
        with self._lock:
            self._armed.clear()

    def down(self, kind: str = "refused") -> None:
        """Fail every counted statement with ``kind`` until ``heal()`` (class doc)."""
        self._check_kind(kind)
        self.heal()
        conn = self.connection
        if kind == "refused" and self.vendor == "postgresql" and not conn.in_atomic_block:
            conn.close()
            placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            placeholder.bind((HOST, 0))  # bound, never listening: connects are refused
            self._closed_port = placeholder
            self._down_saved = (conn.settings_dict.get("HOST"), conn.settings_dict.get("PORT"))
            conn.settings_dict["HOST"] = HOST
            conn.settings_dict["PORT"] = str(placeholder.getsockname()[1])
        self._down = kind

    def heal(self) -> None:
        """Back to normal: no persistent fault, no armed one-shot faults."""
        with self._lock:
            self._down = None
            self._armed.clear()
        if self._down_saved is not None:
            conn = self.connection
            conn.settings_dict["HOST"], conn.settings_dict["PORT"] = self._down_saved
            self._down_saved = None
            conn.close()
        if self._closed_port is not None:
            self._closed_port.close()
            self._closed_port = None

    def _check_kind(self, kind: str) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown database fault kind {kind!r}; one of {self.KINDS}")

    # -- the wrapper ------------------------------------------------------------------------

    def _counts(self, sql: str) -> bool:
        if not self.count_bookkeeping and _BOOKKEEPING.match(sql):
            return False
        if self.tables is None:
            return True
        if self.tables == (LEDGER_TABLE_PREFIX,) and any(t in sql for t in NOT_LEDGER_TABLES):
            return False
        return any(prefix in sql for prefix in self.tables)

    def _wrap(
        self,
        execute: Callable[[str, Any, bool, Mapping[str, Any]], Any],
        sql: str,
        params: Any,
        many: bool,
        context: Mapping[str, Any],
    ) -> Any:
        counted = self._counts(sql)
        with self._lock:
            n: int | None = None
            if counted:
                self._counter += 1
                n = self._counter
            kind, fault = self._choose(n, sql, params)
            entry = LedgerStatement(
                n=n, sql=sql, params=params, many=many, fault=kind, seq=next(_SEQUENCE)
            )
            if counted:
                self._log.append(entry)

        def run() -> Any:
            return execute(sql, params, many, context)

        try:
            if kind is None:
                return run()
            return self._inject(kind, entry, run)
        except BaseException as exc:
            entry.error = exc
            raise
        finally:
            if fault is not None:
                fault._record(entry)

    def _choose(
        self, n: int | None, sql: str, params: Any
    ) -> tuple[str | None, InjectedFault | None]:
        if self._down == "refused" and (n is not None or not _BOOKKEEPING.match(sql)):
            return "refused", None
        if n is None:
            return None, None
        if self._down is not None:
            return self._down, None
        for armed in self._armed:
            if armed.target is not None:
                if armed.target == n:
                    self._armed.remove(armed)
                    return armed.fault.kind, armed.fault
            elif armed.predicate is not None and armed.predicate(sql, params):
                armed.remaining -= 1
                if armed.remaining <= 0:
                    self._armed.remove(armed)
                return armed.fault.kind, armed.fault
        return None, None

    # -- transaction state ------------------------------------------------------------------

    def _in_transaction(self) -> bool:
        return not self.connection.get_autocommit()

    def _code_transaction(self) -> bool:
        """Is a transaction open that the code under test (not pytest-django) opened?"""
        conn = self.connection
        if not self._in_transaction():
            return False
        blocks = conn.atomic_blocks
        if not blocks:
            return True  # autocommit turned off by hand
        return any(not getattr(block, "_from_testcase", False) for block in blocks)

    def _test_transaction(self) -> bool:
        return any(getattr(b, "_from_testcase", False) for b in self.connection.atomic_blocks)

    # -- injection --------------------------------------------------------------------------

    def _inject(self, kind: str, entry: LedgerStatement, run: Callable[[], T]) -> T:
        vendor = self.vendor
        if kind in ("readonly", "locked", "refused") and self._pg_aborted():
            # The statement is going to fail for real anyway ("current transaction is
            # aborted"); setting a fault up would need statements that fail the same way.
            entry.real, entry.detail = True, "transaction already aborted"
            return run()
        if kind == "readonly":
            if vendor == "sqlite":
                return self._sqlite_readonly(entry, run)
            if vendor == "postgresql":
                return self._pg_readonly(entry, run)
        elif kind == "locked":
            if vendor == "sqlite":
                return self._sqlite_locked(entry, run)
            if vendor == "postgresql":
                return self._pg_locked(entry, run)
        elif kind == "refused" and vendor == "postgresql" and not self._test_transaction():
            if self._down == "refused":
                # Reached only when down() was called inside an atomic block.
                return self._raise(entry, "refused")
            return self._pg_refused(entry, run)
        return self._raise(entry, kind)

    def _raise(self, entry: LedgerStatement, kind: str) -> NoReturn:
        """Raise what the ORM would, without running the statement."""
        entry.real = False
        entry.detail = "raised"
        if kind == "value":
            raise ValueError(f"injected fault: value ({entry.describe()})")
        if kind == "type":
            raise TypeError(f"injected fault: type ({entry.describe()})")
        database = self.connection.Database
        if kind == "refused":
            message = (
                "unable to open database file"
                if self.vendor == "sqlite"
                else "server closed the connection unexpectedly (injected fault)"
            )
            error_class = database.OperationalError
        elif kind == "readonly":
            message = "attempt to write a readonly database (injected fault)"
            error_class = database.OperationalError
        elif kind == "locked":
            message = "database table is locked (injected fault)"
            error_class = database.OperationalError
        else:
            message = f"injected fault: {kind}"
            error_class = getattr(database, _RAISED[kind])
        self._abort_code_transaction()
        with self.connection.wrap_database_errors:
            raise error_class(message)
        raise AssertionError("unreachable")  # pragma: no cover - wrap_database_errors re-raises

    def _abort_code_transaction(self) -> None:
        """On PostgreSQL, leave a transaction the code opened aborted, as a real error does."""
        if self.vendor != "postgresql" or not self._code_transaction():
            return
        with contextlib.suppress(Exception):
            self._raw("SELECT 1 / 0 AS injected_fault")

    def _raw(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run SQL on our own connection, beside the ORM (not seen by the wrapper).

        Errors come out as Django's exceptions, like the ORM's.
        """
        with self.connection.wrap_database_errors:
            cursor = self.connection.connection.cursor()
            try:
                if params is None:
                    cursor.execute(sql)
                else:
                    cursor.execute(sql, params)
                return list(cursor.fetchall()) if cursor.description else []
            finally:
                cursor.close()

    def _pg_aborted(self) -> bool:
        if self.vendor != "postgresql" or self.connection.connection is None:
            return False
        import psycopg

        raw = self.connection.connection
        return bool(raw.info.transaction_status == psycopg.pq.TransactionStatus.INERROR)

    # -- SQLite -----------------------------------------------------------------------------

    def _sqlite_readonly(self, entry: LedgerStatement, run: Callable[[], T]) -> T:
        entry.real, entry.detail = True, "PRAGMA query_only"
        previous = self._raw("PRAGMA query_only")[0][0]
        self._raw("PRAGMA query_only = ON")
        try:
            return run()
        finally:
            self._raw(f"PRAGMA query_only = {int(previous)}")

    def _sqlite_helper(self) -> sqlite3.Connection | None:
        name = str(self.connection.settings_dict["NAME"])
        if not (name.startswith("file:") and "mode=memory" in name and "cache=shared" in name):
            return None  # only the shared-cache in-memory database has table locks
        if self._helper is None:
            self._helper = sqlite3.connect(
                name, uri=True, isolation_level=None, check_same_thread=False, timeout=0
            )
        return cast(sqlite3.Connection, self._helper)

    def _tables_in(self, sql: str) -> list[str]:
        names = list(dict.fromkeys(_QUOTED.findall(sql)))
        if not names:
            return []
        if self.vendor == "sqlite":
            marks = ", ".join("?" for _ in names)
            rows = self._raw(
                f"SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ({marks})", names
            )
        else:
            rows = self._raw(
                "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') "
                "AND relname = ANY(%s) AND pg_table_is_visible(oid)",
                [names],
            )
        found = {row[0] for row in rows}
        return [name for name in names if name in found]

    def _sqlite_locked(self, entry: LedgerStatement, run: Callable[[], T]) -> T:
        helper = self._sqlite_helper()
        tables = self._tables_in(entry.sql)
        if helper is None or not tables:
            self._raise(entry, "locked")
        writes = bool(_WRITE.match(entry.sql))
        helper.execute("BEGIN")
        try:
            held = self._sqlite_lock(helper, tables, "DELETE FROM {} WHERE 0")
            if held:
                entry.detail = "table write lock"
            elif writes:
                held = self._sqlite_lock(helper, tables, "SELECT 1 FROM {} WHERE 0")
                entry.detail = "table read lock"
            if not held:
                # Our own open transaction holds these tables: nobody else can lock them.
                self._raise(entry, "locked")
            entry.real = True
            return run()
        finally:
            helper.execute("ROLLBACK")

    @staticmethod
    def _sqlite_lock(helper: sqlite3.Connection, tables: Sequence[str], template: str) -> bool:
        try:
            for table in tables:
                helper.execute(template.format(_quote(table))).fetchall()
        except sqlite3.OperationalError:
            return False
        return True

    # -- PostgreSQL -------------------------------------------------------------------------

    def _pg_helper(self) -> Any:
        if self._helper is None:
            import psycopg

            settings = self._real_settings
            params: dict[str, Any] = {
                "dbname": self.connection.settings_dict["NAME"],
                "autocommit": True,
                "application_name": "drs-ledger-faults",
            }
            for key, name in (("USER", "user"), ("PASSWORD", "password"), ("HOST", "host")):
                if settings.get(key):
                    params[name] = settings[key]
            if settings.get("PORT"):
                params["port"] = int(settings["PORT"])
            self._helper = psycopg.connect(**params)
        return self._helper

    def _close_helper(self) -> None:
        helper, self._helper = self._helper, None
        if helper is not None:
            with contextlib.suppress(Exception):
                helper.close()

    def _pg_guarded(
        self, settings: Mapping[str, str], action: Callable[[], T], *, undo_on_success: bool
    ) -> T:
        """Run ``action`` with ``settings`` in force, then put them back (class doc).

        In a transaction, inside a savepoint: on an error it is rolled back (contained)
        unless the code under test opened the transaction (then it stays aborted); on
        success it is rolled back if ``undo_on_success`` (reads under read-only: nothing to
        lose, and ``transaction_read_only`` cannot be switched off otherwise) or released.
        """
        from django.db import DatabaseError

        if not self._in_transaction():
            previous = {
                name: self._raw("SELECT current_setting(%s)", [name])[0][0] for name in settings
            }
            for name, value in settings.items():
                self._raw("SELECT set_config(%s, %s, false)", [name, value])
            try:
                return action()
            finally:
                if not self.connection.connection.closed:
                    for name, value in previous.items():
                        self._raw("SELECT set_config(%s, %s, false)", [name, value])
        code_transaction = self._code_transaction()
        savepoint = f"drs_fault_{next(_savepoint_ids)}"
        previous = {
            name: self._raw("SELECT current_setting(%s)", [name])[0][0] for name in settings
        }
        self._raw(f"SAVEPOINT {savepoint}")
        for name, value in settings.items():
            self._raw("SELECT set_config(%s, %s, true)", [name, value])
        try:
            result = action()
        except DatabaseError:
            if not code_transaction:
                self._raw(f"ROLLBACK TO SAVEPOINT {savepoint}")
                self._raw(f"RELEASE SAVEPOINT {savepoint}")
            raise
        if undo_on_success:
            self._raw(f"ROLLBACK TO SAVEPOINT {savepoint}")
        else:
            for name, value in previous.items():
                self._raw("SELECT set_config(%s, %s, true)", [name, value])
        self._raw(f"RELEASE SAVEPOINT {savepoint}")
        return result

    def _pg_readonly(self, entry: LedgerStatement, run: Callable[[], T]) -> T:
        entry.real = True
        if self._in_transaction():
            entry.detail = "transaction_read_only"
            setting = {"transaction_read_only": "on"}
        else:
            entry.detail = "default_transaction_read_only"
            setting = {"default_transaction_read_only": "on"}
        return self._pg_guarded(setting, run, undo_on_success=True)

    def _pg_locked(self, entry: LedgerStatement, run: Callable[[], T]) -> T:
        import psycopg

        helper = self._pg_helper()
        tables = self._tables_in(entry.sql)
        timeout = {"lock_timeout": f"{self.lock_timeout_ms}ms"}
        entry.real = True
        if tables:
            helper.execute("BEGIN")
            try:
                for table in tables:
                    helper.execute(f"LOCK TABLE {_quote(table)} IN ACCESS EXCLUSIVE MODE NOWAIT")
            except psycopg.errors.LockNotAvailable:
                helper.execute("ROLLBACK")  # our own transaction holds the table
            else:
                entry.detail = "table lock"
                try:
                    return self._pg_guarded(timeout, run, undo_on_success=False)
                finally:
                    helper.execute("ROLLBACK")
        entry.detail = "advisory lock"
        key = secrets.randbits(62)
        helper.execute("SELECT pg_advisory_lock(%s)", [key])

        def wait_then_run() -> T:
            with self.connection.wrap_database_errors:
                self._raw("SELECT pg_advisory_xact_lock(%s)", [key])
            return run()  # pragma: no cover - the lock is held, the wait times out

        try:
            return self._pg_guarded(timeout, wait_then_run, undo_on_success=False)
        finally:
            helper.execute("SELECT pg_advisory_unlock(%s)", [key])

    def _pg_refused(self, entry: LedgerStatement, run: Callable[[], T]) -> T:
        conn = self.connection
        pid = conn.connection.info.backend_pid
        terminated = self._pg_helper().execute("SELECT pg_terminate_backend(%s, 5000)", [pid])
        if not terminated.fetchone()[0]:
            raise RuntimeError(f"could not terminate our PostgreSQL backend {pid}")
        entry.real, entry.detail = True, "terminated backend"
        try:
            return run()
        finally:
            if not conn.in_atomic_block:
                conn.close()  # the next statement reconnects (in atomic: Django closes it)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
