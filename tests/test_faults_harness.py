"""Self-tests of the fault-injection harness in ``tests/faults.py``.

Everything runs against real servers: private redis-server processes (never the shared
one on 6379) and the test database (SQLite, or PostgreSQL with ``DRS_TEST_DB=postgres``).
Proven here: each fault kind produces the error the client library really raises; the
counting is right (pipelines, round trips, setup commands, SQL bookkeeping); only the
chosen step fails and the rest go on; ``lost_reply`` really applies the write; the
persistent modes work and heal; nothing leaks (threads, sockets, ports, connections).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InternalError,
    OperationalError,
    ProgrammingError,
    connection,
    transaction,
)
from django.utils import timezone

from django_resilient_sessions.models import UserSession
from tests.faults import (
    DB_KINDS,
    REDIS_KINDS,
    LedgerFaults,
    ProtocolError,
    RedisFaultProxy,
    StepResult,
    for_each_step,
    parse_command,
    proxied_cache,
    reply_end,
    steps_of,
)
from tests.redis_server import HOST, RedisServer

# Helpers -----------------------------------------------------------------------------------

QUICK_TIMEOUT = 0.15  # socket timeout for the tests where a client must give up


class RawClient:
    """A bare socket speaking RESP, to see the exact bytes a server or the proxy sends."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=2.0)
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, *args: bytes | str) -> bytes:
        self.send(encode(*args))
        return self.reply()

    def reply(self) -> bytes:
        while True:
            end = reply_end(self.buf)
            if end is not None:
                frame = bytes(self.buf[:end])
                del self.buf[:end]
                return frame
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data

    def close(self) -> None:
        self.sock.close()


def encode(*args: bytes | str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[RedisFaultProxy]:
    with RedisFaultProxy(redis_server) as running:
        yield running
        assert running.errors == []
    assert running.alive_threads() == []
    assert running.open_sockets() == []


@pytest.fixture
def client(proxy: RedisFaultProxy) -> Iterator[redis.Redis]:
    with proxy.client() as through_proxy:
        yield through_proxy


@pytest.fixture
def direct(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.client() as plain:
        yield plain


# RESP parsing ------------------------------------------------------------------------------

REPLIES = [
    b"+OK\r\n",
    b"-ERR bad\r\n",
    b":42\r\n",
    b"$5\r\nhello\r\n",
    b"$0\r\n\r\n",
    b"$-1\r\n",
    b"*-1\r\n",
    b"*0\r\n",
    b"*2\r\n$1\r\na\r\n:1\r\n",
    b"*2\r\n*1\r\n+x\r\n*2\r\n_\r\n$2\r\nab\r\n",
    b"_\r\n",
    b",3.14\r\n",
    b"#t\r\n",
    b"(3492890328409238509324850943850943825024385\r\n",
    b"!21\r\nSYNTAX invalid syntax\r\n",
    b"=15\r\ntxt:Some string\r\n",
    b"%2\r\n+first\r\n:1\r\n+second\r\n*1\r\n:2\r\n",
    b"~2\r\n+orange\r\n+apple\r\n",
    b">2\r\n+invalidate\r\n*1\r\n$1\r\nk\r\n",
    b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*1\r\n:2039123\r\n",
    b"$?\r\n;4\r\nHell\r\n;1\r\no\r\n;0\r\n",
    b"*?\r\n:1\r\n$1\r\nx\r\n.\r\n",
    b"%?\r\n+a\r\n:1\r\n.\r\n",
    b"$4\r\na\r\nb\r\n",  # CRLF inside a bulk string
]


@pytest.mark.parametrize("frame", REPLIES)
def test_reply_end_needs_the_whole_frame(frame: bytes) -> None:
    for cut in range(len(frame)):
        assert reply_end(frame[:cut]) is None, frame[:cut]
    assert reply_end(frame) == len(frame)
    assert reply_end(frame + b"+next\r\n") == len(frame)
    assert reply_end(b"+before\r\n" + frame, 9) == 9 + len(frame)


def test_reply_end_rejects_garbage() -> None:
    with pytest.raises(ProtocolError):
        reply_end(b"?what\r\n")
    with pytest.raises(ProtocolError):
        reply_end(b"$x\r\n")


def test_parse_command_arrays_inline_and_pipelines() -> None:
    stream = encode("SET", "k", b"a\r\nb") + b"GET  k\r\n" + b'SET "a b" \'c\\\'d\' "\\x41\\n"\r\n'
    first = parse_command(stream)
    assert first is not None
    assert first[1] == [b"SET", b"k", b"a\r\nb"]
    second = parse_command(stream, first[0])
    assert second is not None
    assert second[1] == [b"GET", b"k"]
    third = parse_command(stream, second[0])
    assert third == (len(stream), [b"SET", b"a b", b"c'd", b"A\n"])
    for cut in range(first[0]):
        assert parse_command(stream[:cut]) is None
    assert parse_command(b"*0\r\n") == (4, [])
    assert parse_command(b"\r\n") == (2, [])
    with pytest.raises(ProtocolError):
        parse_command(b"*1\r\n:1\r\n")
    with pytest.raises(ProtocolError):
        parse_command(b'GET "unbalanced\r\n')


# Redis: forwarding and counting ------------------------------------------------------------


def test_commands_pass_through_numbered_setup_excluded(
    proxy: RedisFaultProxy, client: redis.Redis, direct: redis.Redis
) -> None:
    assert client.set("a", "1") is True
    assert client.get("a") == b"1"
    assert direct.get("a") == b"1"
    setup = [entry for entry in proxy.log if entry.setup]
    assert {entry.command for entry in setup} >= {"HELLO", "CLIENT SETINFO"}
    assert all(entry.n is None for entry in setup)
    assert [(e.n, e.name, e.args) for e in proxy.commands] == [
        (1, "SET", (b"a", b"1")),
        (2, "GET", (b"a",)),
    ]
    assert proxy.count == 2
    assert [len(batch) for batch in proxy.batches] == [1, 1]
    assert proxy.commands[1].reply == b"$1\r\n1\r\n"


def test_pipeline_is_one_batch_of_commands(proxy: RedisFaultProxy, client: redis.Redis) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.set("x", 1)
    pipe.incr("x")
    pipe.get("x")
    assert pipe.execute() == [True, 2, b"2"]
    assert proxy.names() == ["SET", "INCRBY", "GET"]
    assert [[e.n for e in batch] for batch in proxy.batches] == [[1, 2, 3]]
    client.get("x")
    assert len(proxy.batches) == 2


def test_resp2_client_and_connection_setup_commands(
    proxy: RedisFaultProxy, redis_server: RedisServer
) -> None:
    with proxy.client(protocol=2, client_name="drs", db=1) as resp2:
        assert resp2.set("k", "v") is True
        assert resp2.get("k") == b"v"
    setup = {entry.command for entry in proxy.log if entry.setup}
    assert "HELLO" not in setup
    assert {"CLIENT SETNAME", "SELECT", "CLIENT SETINFO"} <= setup
    assert proxy.names() == ["SET", "GET"]
    with redis.Redis(host=HOST, port=redis_server.port, db=1) as db1:
        assert db1.get("k") == b"v"


def test_a_new_connections_handshake_is_not_faulted(proxy: RedisFaultProxy) -> None:
    fault = proxy.fail(nth=1, kind="refuse")
    with proxy.client() as fresh:
        with pytest.raises(redis.ConnectionError):
            fresh.get("a")  # HELLO and CLIENT SETINFO went through; GET is #1
        assert fault.hit.name == "GET"
        assert fresh.get("a") is None


def test_protocol_error_closes_the_connection(proxy: RedisFaultProxy) -> None:
    raw = RawClient(proxy.port)
    try:
        raw.send(b"*1\r\n:1\r\n")
        assert raw.reply().startswith(b"-ERR Protocol error")
        with pytest.raises(ConnectionError):
            raw.reply()
    finally:
        raw.close()


def test_setup_commands_can_be_counted(redis_server: RedisServer) -> None:
    with RedisFaultProxy(redis_server, setup_commands=()) as counting:
        with counting.client() as plain:
            plain.ping()
        names = counting.names()
        assert names[0] == "HELLO"
        assert names[-1] == "PING"
        assert all(entry.n is not None for entry in counting.log)


def test_commands_are_numbered_globally_across_connections(
    proxy: RedisFaultProxy, direct: redis.Redis
) -> None:
    with proxy.client() as one, proxy.client() as two:
        one.set("a", 1)
        fault = proxy.fail(nth=2, kind="error")
        two.set("b", 1)
        with pytest.raises(redis.ResponseError):
            one.set("c", 1)
        two.set("d", 1)
    assert fault.hit.name == "SET" and fault.hit.args[0] == b"c"
    assert [e.n for e in proxy.commands] == [1, 2, 3, 4]
    assert len({e.connection for e in proxy.commands}) == 2
    assert sorted(direct.keys()) == [b"a", b"b", b"d"]


def test_reset_log_renumbers_and_keeps_armed_faults(
    proxy: RedisFaultProxy, client: redis.Redis
) -> None:
    client.set("a", 1)
    fault = proxy.fail(nth=2, kind="error")
    proxy.reset_log()
    assert proxy.log == [] and proxy.count == 0
    client.get("a")
    with pytest.raises(redis.ResponseError):
        client.get("a")
    assert fault.hit.n == 2


def test_inline_commands(proxy: RedisFaultProxy) -> None:
    raw = RawClient(proxy.port)
    try:
        assert raw.command("PING") == b"+PONG\r\n"  # RESP array
        raw.send(b"SET inline 'a b'\r\nGET inline\r\n\r\n")
        assert raw.reply() == b"+OK\r\n"
        assert raw.reply() == b"$3\r\na b\r\n"
    finally:
        raw.close()
    assert proxy.names() == ["PING", "SET", "GET"]
    assert proxy.commands[1].args == (b"inline", b"a b")
    assert [len(batch) for batch in proxy.batches] == [1, 2]


def test_large_values_and_long_pipelines(
    proxy: RedisFaultProxy, client: redis.Redis, direct: redis.Redis
) -> None:
    big = bytes(range(256)) * 8192  # 2 MiB, arrives in many reads
    assert client.set("big", big) is True
    assert client.get("big") == big
    pipe = client.pipeline(transaction=False)
    for i in range(300):
        pipe.set(f"k{i}", big[: i * 100])
    pipe.mget([f"k{i}" for i in range(300)])
    results = pipe.execute()
    assert results[-1] == [big[: i * 100] for i in range(300)]
    assert direct.dbsize() == 301
    assert proxy.count == 2 + 301


def test_multi_exec_through_the_proxy(
    proxy: RedisFaultProxy, client: redis.Redis, direct: redis.Redis
) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.set("a", 1)
    pipe.incr("a")
    assert pipe.execute() == [True, 2]
    assert proxy.names() == ["MULTI", "SET", "INCRBY", "EXEC"]
    assert len(proxy.batches) == 1
    assert direct.get("a") == b"2"


def test_scripts_evalsha_noscript_fallback(
    proxy: RedisFaultProxy, client: redis.Redis, direct: redis.Redis
) -> None:
    assert client.eval("return redis.call('incr', KEYS[1])", 1, "n") == 1
    script = client.register_script("return redis.call('incr', KEYS[1])")
    direct.script_flush()
    proxy.reset_log()
    assert script(keys=["n"]) == 2  # NOSCRIPT, SCRIPT LOAD, EVALSHA
    assert proxy.names() == ["EVALSHA", "SCRIPT LOAD", "EVALSHA"]
    assert proxy.commands[0].reply is not None
    assert proxy.commands[0].reply.startswith(b"-NOSCRIPT")
    direct.script_flush()
    proxy.reset_log()
    pipe = client.pipeline(transaction=False)
    script(keys=["n"], client=pipe)
    pipe.get("n")
    assert pipe.execute() == [3, b"3"]
    assert proxy.names() == ["SCRIPT EXISTS", "SCRIPT LOAD", "EVALSHA", "GET"]
    fault = proxy.fail_when(lambda name, args: name == "EVALSHA", "error")
    with pytest.raises(redis.ResponseError, match="injected fault"):
        script(keys=["n"])
    assert fault.fired
    assert direct.get("n") == b"3"


def test_every_resp3_reply_type_is_relayed_byte_for_byte() -> None:
    kinds = [
        "string", "integer", "double", "bignum", "null", "array", "set", "map",
        "attrib", "verbatim", "true", "false",
    ]  # fmt: skip
    with (
        RedisServer(extra_args=("--enable-debug-command", "yes")) as server,
        RedisFaultProxy(server) as debug_proxy,
    ):
        plain, proxied = RawClient(server.port), RawClient(debug_proxy.port)
        try:
            for raw in (plain, proxied):
                assert raw.command("HELLO", "3").startswith(b"%")
            for kind in kinds:
                expected = plain.command("DEBUG", "PROTOCOL", kind)
                assert proxied.command("DEBUG", "PROTOCOL", kind) == expected, kind
            # A push message comes out of band, before the reply that follows it.
            push = [plain.command("DEBUG", "PROTOCOL", "push"), plain.reply()]
            assert push[0].startswith(b">")
            assert [proxied.command("DEBUG", "PROTOCOL", "push"), proxied.reply()] == push
            assert proxied.command("PING") == b"+PONG\r\n"
        finally:
            plain.close()
            proxied.close()
        assert debug_proxy.errors == []


# Redis: one-shot faults --------------------------------------------------------------------

EXPECTED_REDIS_ERRORS: dict[str, type[Exception]] = {
    "refuse": redis.ConnectionError,
    "timeout": redis.TimeoutError,
    "readonly": redis.ReadOnlyError,
    "loading": redis.BusyLoadingError,
    "error": redis.ResponseError,
    "lost_reply": redis.ConnectionError,
}


def test_every_redis_kind_is_tested() -> None:
    assert set(EXPECTED_REDIS_ERRORS) == set(REDIS_KINDS)


@pytest.mark.parametrize("kind", REDIS_KINDS)
def test_redis_kind_raises_the_real_error_then_recovers(
    kind: str, proxy: RedisFaultProxy, direct: redis.Redis
) -> None:
    with proxy.client(socket_timeout=QUICK_TIMEOUT) as quick:
        quick.set("before", 1)
        fault = proxy.fail(nth=1, kind=kind)
        with pytest.raises(EXPECTED_REDIS_ERRORS[kind]) as info:
            quick.set("victim", kind)
        if kind == "error":
            assert type(info.value) is redis.ResponseError
        assert fault.fired
        assert fault.hit.name == "SET" and fault.hit.fault == kind
        assert quick.set("after", 1) is True  # the next command is served normally
    applied = direct.get("victim")
    assert applied == (kind.encode() if kind == "lost_reply" else None)
    assert sorted(direct.keys()) == sorted([b"before", b"after"] + ([b"victim"] if applied else []))


@pytest.mark.parametrize("kind", REDIS_KINDS)
def test_only_the_nth_command_of_a_pipeline_fails(
    kind: str, proxy: RedisFaultProxy, direct: redis.Redis
) -> None:
    with proxy.client(socket_timeout=QUICK_TIMEOUT) as quick:
        fault = proxy.fail(nth=2, kind=kind)
        pipe = quick.pipeline(transaction=False)
        pipe.set("k1", 1)
        pipe.set("k2", 2)
        pipe.set("k3", 3)
        if kind in ("readonly", "error"):
            results = pipe.execute(raise_on_error=False)
            assert results[0] is True and results[2] is True
            assert isinstance(results[1], EXPECTED_REDIS_ERRORS[kind])
            expected = [b"1", None, b"3"]
        elif kind == "loading":  # a ConnectionError for redis-py: raised at once
            with pytest.raises(redis.BusyLoadingError):
                pipe.execute(raise_on_error=False)
            expected = [b"1", None, b"3"]
        else:  # the connection is gone: the rest of the pipeline never reached Redis
            with pytest.raises(EXPECTED_REDIS_ERRORS[kind]):
                pipe.execute()
            expected = [b"1", b"2" if kind == "lost_reply" else None, None]
        assert direct.mget("k1", "k2", "k3") == expected
        assert fault.hit.n == 2 and fault.hit.args[0] == b"k2"
        assert quick.get("k1") == b"1"
    assert proxy.names()[:2] == ["SET", "SET"]


def test_lost_reply_applies_a_non_idempotent_write(
    proxy: RedisFaultProxy, client: redis.Redis, direct: redis.Redis
) -> None:
    client.set("counter", 10)
    fault = proxy.fail(nth=1, kind="lost_reply")
    with pytest.raises(redis.ConnectionError):
        client.incr("counter")
    assert fault.fired and fault.hit.reply is None
    assert direct.get("counter") == b"11"
    assert client.incr("counter") == 12


def test_timeout_swallows_the_command(proxy: RedisFaultProxy, direct: redis.Redis) -> None:
    with proxy.client(socket_timeout=QUICK_TIMEOUT) as quick:
        proxy.fail(nth=1, kind="timeout")
        with pytest.raises(redis.TimeoutError):
            quick.set("never", 1)
        assert quick.set("later", 1) is True
    assert direct.exists("never") == 0
    assert direct.get("later") == b"1"


def test_fail_when_predicate_and_times(proxy: RedisFaultProxy, client: redis.Redis) -> None:
    fault = proxy.fail_when(lambda name, args: name == "GET" and args == (b"b",), "error", times=2)
    client.set("a", 1)
    assert client.get("a") == b"1"
    for _ in range(2):
        with pytest.raises(redis.ResponseError):
            client.get("b")
    assert client.get("b") is None
    assert [hit.n for hit in fault.hits] == [3, 4]


@pytest.mark.parametrize("kind", ["readonly", "loading", "error"])
def test_error_on_a_queued_command_aborts_the_transaction(
    kind: str, proxy: RedisFaultProxy, client: redis.Redis, direct: redis.Redis
) -> None:
    proxy.fail_when(lambda name, args: args[:1] == (b"b",), kind)
    pipe = client.pipeline(transaction=True)
    pipe.set("a", 1)
    pipe.set("b", 2)
    pipe.set("c", 3)
    with pytest.raises(EXPECTED_REDIS_ERRORS[kind]):
        pipe.execute()
    assert direct.keys() == []  # EXECABORT: nothing ran, as with Redis' own refusals
    assert proxy.commands[-1].name == "EXEC"
    assert proxy.commands[-1].reply is not None
    assert proxy.commands[-1].reply.startswith(b"-EXECABORT")
    assert client.set("z", 1) is True  # no transaction left open on the connection


def test_error_on_exec_discards_the_transaction(
    proxy: RedisFaultProxy, client: redis.Redis, direct: redis.Redis
) -> None:
    proxy.fail_when(lambda name, args: name == "EXEC", "readonly")
    pipe = client.pipeline(transaction=True)
    pipe.set("a", 1)
    with pytest.raises(redis.ReadOnlyError):
        pipe.execute()
    assert direct.keys() == []
    assert client.set("z", 1) is True


def test_lost_reply_on_exec_commits_the_transaction(
    proxy: RedisFaultProxy, client: redis.Redis, direct: redis.Redis
) -> None:
    proxy.fail_when(lambda name, args: name == "EXEC", "lost_reply")
    pipe = client.pipeline(transaction=True)
    pipe.set("a", 1)
    pipe.set("b", 2)
    with pytest.raises(redis.ConnectionError):
        pipe.execute()
    assert direct.mget("a", "b") == [b"1", b"2"]


# Redis: persistent modes, endings, leaks ---------------------------------------------------


def test_down_refuses_connections_until_healed(proxy: RedisFaultProxy, client: redis.Redis) -> None:
    client.set("a", 1)
    proxy.down()
    assert proxy.mode == "down" and proxy.connection_count == 0
    with pytest.raises(redis.ConnectionError):
        client.get("a")  # the pooled connection was closed, the reconnect refused
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, proxy.port), timeout=1.0)
    proxy.heal()
    assert client.get("a") == b"1"


def test_hang_answers_nothing_until_healed(proxy: RedisFaultProxy) -> None:
    with (
        proxy.client(socket_timeout=QUICK_TIMEOUT) as pooled,
        proxy.client(socket_timeout=QUICK_TIMEOUT) as fresh,
    ):
        pooled.set("a", 1)
        proxy.hang()
        with pytest.raises(redis.TimeoutError):
            pooled.get("a")  # an open connection stops answering
        with pytest.raises(redis.TimeoutError):
            fresh.get("a")  # a new one is accepted, but its handshake is never answered
        hung = [entry for entry in proxy.log if entry.fault == "hang"]
        assert [entry.command for entry in hung] == ["GET", "HELLO"]
        proxy.heal()
        assert pooled.get("a") == b"1"
        assert fresh.get("a") == b"1"


def test_heal_closes_connections_left_silent(proxy: RedisFaultProxy) -> None:
    raw = RawClient(proxy.port)
    try:
        proxy.hang()
        raw.send(encode("PING"))
        assert proxy.wait_until(lambda: any(e.fault == "hang" for e in proxy.log))
        proxy.heal()
        with pytest.raises(ConnectionError):
            raw.reply()  # closed, not left waiting forever
    finally:
        raw.close()


def test_drop_connections_is_like_a_server_restart(
    proxy: RedisFaultProxy, client: redis.Redis
) -> None:
    client.set("a", 1)
    assert proxy.connection_count == 1
    proxy.drop_connections()
    assert proxy.connection_count == 0 and proxy.mode == "up"
    assert client.get("a") == b"1"  # redis-py sees the closed socket and reconnects
    assert len({entry.connection for entry in proxy.commands}) == 2


def test_client_closing_mid_command(proxy: RedisFaultProxy, client: redis.Redis) -> None:
    raw = RawClient(proxy.port)
    raw.send(b"*2\r\n$3\r\nGET\r\n$10\r\nabc")
    assert proxy.wait_until(lambda: proxy.connection_count == 1)
    raw.close()
    assert proxy.wait_until(lambda: proxy.connection_count == 0)
    assert proxy.log == []
    assert client.ping() is True


def test_server_dying_mid_stream(fault_redis: RedisServer) -> None:
    with RedisFaultProxy(fault_redis) as mortal, mortal.client(socket_timeout=QUICK_TIMEOUT) as c:
        c.set("a", 1)
        fault_redis.pause()
        with pytest.raises(redis.TimeoutError):
            c.get("a")  # the proxy waits on the stopped server, the client gives up
        fault_redis.kill()  # the proxy's read from the dead server ends
        assert mortal.wait_until(lambda: mortal.connection_count == 0)
        with pytest.raises(redis.ConnectionError):
            c.get("a")  # accepted, then closed: there is no server behind the proxy
        fault_redis.start()
        assert c.set("a", 2) is True
        assert mortal.errors == []
    assert mortal.alive_threads() == []


def test_nothing_leaks_on_exit_whatever_the_state(redis_server: RedisServer) -> None:
    before = {thread.ident for thread in threading.enumerate()}
    with RedisFaultProxy(redis_server) as closing:
        port = closing.port
        c = closing.client(socket_timeout=QUICK_TIMEOUT)
        c.set("a", 1)
        silent = RawClient(port)
        partial = RawClient(port)
        partial.send(b"*1\r\n$4\r\nPI")
        closing.fail(nth=1, kind="timeout")
        silent.send(encode("GET", "a"))
        assert closing.wait_until(lambda: any(e.fault == "timeout" for e in closing.log))
        assert closing.wait_until(lambda: closing.connection_count == 3)
    assert closing.alive_threads() == []
    assert closing.open_sockets() == []
    assert {thread.ident for thread in threading.enumerate()} <= before
    with pytest.raises(redis.ConnectionError):
        c.get("a")
    for raw in (silent, partial):
        with pytest.raises(ConnectionError):
            raw.reply()
        raw.close()
    c.close()
    # The port is free again: nobody listens on it any more.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((HOST, port))
        probe.listen()


def test_down_then_exit_releases_the_port(redis_server: RedisServer) -> None:
    with RedisFaultProxy(redis_server) as downed:
        port = downed.port
        downed.down()
    assert downed.open_sockets() == []
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((HOST, port))
        probe.listen()


def test_refuses_the_shared_redis() -> None:
    with pytest.raises(ValueError, match="6379"):
        RedisFaultProxy("redis://127.0.0.1:6379/0")
    with pytest.raises(ValueError, match="loopback"):
        RedisFaultProxy(("10.0.0.1", 7000))


def test_plain_redis_py_clients_retry_and_hide_one_shot_faults(
    proxy: RedisFaultProxy, direct: redis.Redis
) -> None:
    """A pitfall, not a harness feature: redis-py >= 6 retries by default.

    ``redis.Redis(...)`` without ``retry=`` retries connection errors and timeouts (10
    times, with backoff), so a one-shot fault goes unnoticed and a ``lost_reply`` on a
    non-idempotent command applies it twice. django-redis' pools and
    ``RedisFaultProxy.client()`` do not retry.
    """
    with redis.Redis(host=HOST, port=proxy.port) as retrying:
        retrying.set("n", 0)
        proxy.fail(nth=1, kind="lost_reply")
        assert retrying.incr("n") == 2
    assert direct.get("n") == b"2"
    assert proxy.names() == ["SET", "INCRBY", "INCRBY"]


def test_django_cache_through_the_proxy(redis_server: RedisServer) -> None:
    with proxied_cache(redis_server) as cached:
        cache.set("k", "v")
        assert cache.get("k") == "v"
        assert [[e.name for e in batch] for batch in cached.batches] == [["SET"], ["GET"]]
        # django-redis 7 re-raises redis-py's own exception (ConnectionInterrupted's cause).
        cached.fail(nth=1, kind="refuse")
        with pytest.raises(redis.ConnectionError):
            cache.get("k")
        assert cache.get("k") == "v"
        cached.fail(nth=1, kind="timeout")  # the test settings' 0.25 s socket timeout
        with pytest.raises(redis.TimeoutError):
            cache.get("k")
        assert cache.get("k") == "v"
        assert cached.errors == []
    assert cached.alive_threads() == []


# Database ----------------------------------------------------------------------------------

LEDGER = '"django_resilient_sessions_usersession"'


def make_user(name: str = "ledger-user") -> Any:
    return get_user_model().objects.create_user(username=name, password="pw")


def new_row(user: Any, key: str) -> UserSession:
    return UserSession.objects.create(
        key_hash=key, user=user, expires_at=timezone.now() + timedelta(days=1)
    )


def keys() -> set[str]:
    return set(UserSession.objects.values_list("key_hash", flat=True))


def raw_sql(sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """A statement through Django's cursor (wrapped, but not marked for rollback on error)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []


@contextlib.contextmanager
def may_fail(mode: str) -> Iterator[None]:
    """Where an ORM write is made to fail.

    Inside pytest-django's test transaction, a failed ``save()``/``update()``/``delete()``
    marks the enclosing atomic block for rollback (Django's ``mark_for_rollback_on_error``),
    which would break the rest of the test: there the write needs an atomic block of its
    own, as Django's TestCase requires. In autocommit it runs bare, as in production.
    """
    if mode == "db":
        with transaction.atomic():
            yield
    else:
        yield


EXPECTED_DB_ERRORS: dict[str, type[BaseException]] = {
    "readonly": DatabaseError,
    "locked": OperationalError,
    "refused": OperationalError,
    "operational": OperationalError,
    "integrity": IntegrityError,
    "data": DataError,
    "programming": ProgrammingError,
    "value": ValueError,
    "type": TypeError,
}


@pytest.fixture(
    params=[
        pytest.param("db", marks=pytest.mark.django_db),
        pytest.param("transactional_db", marks=pytest.mark.django_db(transaction=True)),
    ]
)
def db_mode(request: pytest.FixtureRequest) -> str:
    """Run the test inside pytest-django's test transaction, and in autocommit.

    (Marks, not ``getfixturevalue``: pytest-django picks the mode before that runs.)
    """
    return str(request.param)


def expected_reality(kind: str, mode: str) -> tuple[bool, str]:
    """(real?, detail) of a fault on a write to a table the transaction may already hold."""
    vendor = connection.vendor
    if kind == "readonly":
        if vendor == "sqlite":
            return True, "PRAGMA query_only"
        return True, "transaction_read_only" if mode == "db" else "default_transaction_read_only"
    if kind == "locked":
        if vendor == "sqlite":
            return (False, "raised") if mode == "db" else (True, "table write lock")
        return True, "advisory lock" if mode == "db" else "table lock"
    if kind == "refused" and vendor == "postgresql" and mode == "transactional_db":
        return True, "terminated backend"
    return False, "raised"


def test_every_db_kind_is_tested() -> None:
    assert set(EXPECTED_DB_ERRORS) == set(DB_KINDS)


@pytest.mark.parametrize("kind", DB_KINDS)
def test_db_kind_fails_only_that_statement(kind: str, db_mode: str) -> None:
    user = make_user()
    with LedgerFaults() as ledger:
        new_row(user, "a")
        fault = ledger.fail(nth=2, kind=kind)
        assert UserSession.objects.filter(key_hash="a").exists()
        with pytest.raises(EXPECTED_DB_ERRORS[kind]) as info, may_fail(db_mode):
            new_row(user, "b")
        new_row(user, "c")  # the connection is usable again
        assert keys() == {"a", "c"}
    assert fault.fired
    hit = fault.hit
    assert hit.n == 3 and hit.sql.startswith("INSERT") and hit.error is info.value
    assert (hit.real, hit.detail) == expected_reality(kind, db_mode)
    if kind == "readonly":
        real_class = OperationalError if connection.vendor == "sqlite" else InternalError
        assert isinstance(info.value, real_class)
        assert "read" in str(info.value) and "only" in str(info.value)
    if kind == "locked" and hit.real:
        assert "locked" in str(info.value) or "lock timeout" in str(info.value)
    if isinstance(info.value, DatabaseError):
        # The driver's exception, converted by Django as a real one would be.
        assert type(info.value.__cause__).__module__.split(".")[0] in ("sqlite3", "psycopg")
    assert [entry.n for entry in ledger.log] == [1, 2, 3, 4, 5]


def test_readonly_lets_reads_through(db_mode: str) -> None:
    user = make_user()
    with LedgerFaults() as ledger:
        new_row(user, "a")
        fault = ledger.fail(nth=1, kind="readonly")
        assert UserSession.objects.count() == 1
        assert fault.fired and fault.hit.error is None
        new_row(user, "b")  # not left read-only
    assert keys() == {"a", "b"}


@pytest.mark.parametrize("kind", ["locked", "refused", "operational", "value"])
@pytest.mark.django_db
def test_failed_read_leaves_the_test_transaction_usable(kind: str) -> None:
    """Reads are not marked for rollback by Django: no atomic block needed around them."""
    user = make_user()
    new_row(user, "a")
    with LedgerFaults() as ledger:
        ledger.fail(nth=1, kind=kind)
        with pytest.raises(EXPECTED_DB_ERRORS[kind]):
            UserSession.objects.count()
        assert keys() == {"a"}
        new_row(user, "b")
    assert keys() == {"a", "b"}


@pytest.mark.django_db
def test_lock_is_real_when_our_transaction_has_not_touched_the_table() -> None:
    user = make_user()  # the test transaction writes auth_user, not the ledger
    with LedgerFaults() as ledger:
        fault = ledger.fail(nth=1, kind="locked")
        with pytest.raises(OperationalError, match="lock"), transaction.atomic():
            new_row(user, "a")
        new_row(user, "b")
    assert fault.hit.real is True
    expected = "table read lock" if connection.vendor == "sqlite" else "table lock"
    assert fault.hit.detail == expected
    assert keys() == {"b"}


@pytest.mark.parametrize("kind", ["readonly", "locked", "refused", "integrity", "value"])
def test_failure_inside_the_codes_transaction(kind: str, db_mode: str) -> None:
    """In an atomic block of the code under test, PostgreSQL aborts the transaction."""
    user = make_user()
    new_row(user, "a")
    aborts = connection.vendor == "postgresql" and kind != "value"
    with LedgerFaults() as ledger:
        with transaction.atomic():
            fault = ledger.fail(nth=1, kind=kind)
            with pytest.raises(EXPECTED_DB_ERRORS[kind]):
                raw_sql(f"UPDATE {LEDGER} SET browser = %s", ["x"])
            if aborts:
                with pytest.raises(DatabaseError, match=r"abort|closed|terminat"):
                    raw_sql(f"SELECT COUNT(*) FROM {LEDGER}")
            else:
                assert raw_sql(f"SELECT COUNT(*) FROM {LEDGER}") == [(1,)]
            transaction.set_rollback(True)
        assert fault.fired
        real_refusal = kind == "refused" and aborts and db_mode == "transactional_db"
        assert (fault.hit.detail == "terminated backend") is real_refusal
        new_row(user, "c")
    assert keys() == {"a", "c"}


@pytest.mark.django_db(transaction=True)
def test_refused_really_drops_the_connection_on_postgres() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no connection to drop")
    user = make_user()
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    with LedgerFaults() as ledger:
        ledger.fail(nth=1, kind="refused")
        with pytest.raises(OperationalError, match=r"terminat|closed"):
            new_row(user, "a")
        new_row(user, "b")
        assert connection.connection.info.backend_pid != pid
        assert ledger.helper_open
    assert not ledger.helper_open
    assert keys() == {"b"}


def test_counting_ledger_tables_only_and_no_bookkeeping(db_mode: str) -> None:
    with LedgerFaults() as ledger:
        user = make_user()
        with transaction.atomic():
            new_row(user, "a")
        UserSession.objects.filter(key_hash="a").update(browser="x")
        assert ledger.count == 2
        assert [e.sql.split()[0] for e in ledger.log] == ["INSERT", "UPDATE"]
    with LedgerFaults(tables=None) as everything:
        with transaction.atomic():
            get_user_model().objects.filter(pk=user.pk).update(first_name="x")
        assert [e.sql.split()[0] for e in everything.log] == ["UPDATE"]
        assert "auth_user" in everything.log[0].sql
    with LedgerFaults(tables=None, count_bookkeeping=True) as bookkeeping:
        with transaction.atomic(), transaction.atomic():  # the inner one: a savepoint
            get_user_model().objects.filter(pk=user.pk).update(first_name="y")
        words = [e.sql.split()[0].upper() for e in bookkeeping.log]
        assert "UPDATE" in words and "SAVEPOINT" in words and "RELEASE" in words


@pytest.mark.django_db(transaction=True)
def test_fail_when_and_reset_log() -> None:
    user = make_user()
    with LedgerFaults() as ledger:
        fault = ledger.fail_when(lambda sql, params: sql.startswith("UPDATE"), "data", times=2)
        new_row(user, "a")
        for _ in range(2):
            with pytest.raises(DataError):
                UserSession.objects.filter(key_hash="a").update(browser="x")
        assert UserSession.objects.filter(key_hash="a").update(browser="y") == 1
        assert [hit.n for hit in fault.hits] == [2, 3]
        later = ledger.fail(nth=2, kind="type")
        ledger.reset_log()
        assert ledger.log == [] and ledger.count == 0
        assert UserSession.objects.count() == 1
        with pytest.raises(TypeError):
            UserSession.objects.count()
        assert later.hit.n == 2


def test_down_refused_makes_the_database_unreachable(db_mode: str) -> None:
    user = make_user()
    new_row(user, "a")
    with LedgerFaults() as ledger:
        ledger.down("refused")
        with pytest.raises(OperationalError) as info:
            UserSession.objects.count()
        with pytest.raises(OperationalError):
            get_user_model().objects.count()  # the whole database, not just the ledger
        real = connection.vendor == "postgresql" and db_mode == "transactional_db"
        assert ("refused" in str(info.value)) is real
        ledger.heal()
        assert keys() == {"a"}
    assert connection.settings_dict["PORT"] == ledger._real_settings["PORT"]


def test_down_readonly_fails_each_ledger_write(db_mode: str) -> None:
    user = make_user()
    with LedgerFaults() as ledger:
        ledger.down("readonly")
        for key in ("a", "b"):
            with pytest.raises(DatabaseError), may_fail(db_mode):
                new_row(user, key)
        assert UserSession.objects.count() == 0
        make_user("other")  # not a ledger table: not failed
        ledger.heal()
        new_row(user, "c")
        assert [e.fault for e in ledger.log] == ["readonly", "readonly", "readonly", None]
    assert keys() == {"c"}


@pytest.mark.django_db
def test_wrapper_and_helper_are_removed_on_exit() -> None:
    user = make_user()
    wrappers = list(connection.execute_wrappers)
    with LedgerFaults() as ledger:
        assert len(connection.execute_wrappers) == len(wrappers) + 1
        ledger.fail(nth=1, kind="locked")
        with pytest.raises(OperationalError), transaction.atomic():
            new_row(user, "a")
        assert ledger.helper_open
        ledger.fail(nth=5, kind="integrity")  # never reached: dropped on exit
    assert connection.execute_wrappers == wrappers
    assert not ledger.helper_open
    new_row(user, "b")
    assert len(ledger.log) == 1


# Steps across both layers ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_steps_of_and_for_each_step(proxy: RedisFaultProxy, client: redis.Redis) -> None:
    user = make_user()
    new_row(user, "a")

    def operation() -> str:
        UserSession.objects.filter(key_hash="a").update(browser="x")
        pipe = client.pipeline(transaction=False)
        pipe.set("k", "v")
        pipe.expire("k", 60)
        pipe.execute()
        assert UserSession.objects.filter(key_hash="a").exists()
        return str(client.get("k"))

    with LedgerFaults() as ledger:
        steps = steps_of(operation, proxy, ledger)
        assert [(s.layer.label, s.n, s.order) for s in steps] == [
            ("db", 1, 1),
            ("redis", 1, 2),
            ("redis", 2, 3),
            ("db", 2, 4),
            ("redis", 3, 5),
        ]
        assert steps[1].description == "SET k v"
        assert "UPDATE" in steps[0].description

        seen: list[tuple[int, str, str]] = []

        def check(result: StepResult) -> None:
            assert result.error is not None and result.value is None
            assert result.fault.hit.describe() == result.step.description
            seen.append((result.step.order, result.kind, type(result.error).__name__))

        results = for_each_step(
            operation, proxy, ledger, kinds=["error", "integrity", "refuse"], after=check
        )
        assert seen == [
            (1, "integrity", "IntegrityError"),
            (2, "error", "ResponseError"),
            (2, "refuse", "ConnectionError"),
            (3, "error", "ResponseError"),
            (3, "refuse", "ConnectionError"),
            (4, "integrity", "IntegrityError"),
            (5, "error", "ResponseError"),
            (5, "refuse", "ConnectionError"),
        ]
        assert len(results) == 8
        assert client.get("k") == b"v" and ledger.count > 0


@pytest.mark.django_db
def test_for_each_step_reports_failures_with_the_step(proxy: RedisFaultProxy) -> None:
    with proxy.client() as c, LedgerFaults() as ledger:

        def operation() -> object:
            return c.get("k")

        def complain(result: StepResult) -> None:
            raise ValueError("boom")

        with pytest.raises(ValueError, match="boom") as info:
            for_each_step(operation, proxy, ledger, kinds=["error"], after=complain)
        assert any("step 1 (redis #1" in note for note in getattr(info.value, "__notes__", []))

        calls: list[int] = []

        def shrinking() -> object:
            calls.append(1)
            return c.get("k") if len(calls) == 1 else None

        with pytest.raises(AssertionError, match="not reached"):
            for_each_step(shrinking, proxy, kinds=["error"])
