"""A private, disposable Redis Cluster for tests: N masters, R replicas each, on loopback.

Every node is a :class:`tests.redis_server.RedisServer` (free loopback port, no persistence,
throw-away directory, killed with the test process), started with ``--cluster-enabled yes``
and joined with ``redis-cli --cluster create``. The port 6379 and the shared Redis are never
used. Needs Redis 7.0+ (``--cluster-port`` lets the bus port be any free port).

Faults are injected on the real processes::

    with LocalCluster(masters=3, replicas_per_master=1) as cluster:
        rc = cluster.client()                      # redis.cluster.RedisCluster
        node = cluster.node_for_key("{abc}:data")  # the master serving that slot, asked live
        cluster.kill(node)                         # SIGKILL
        new_master = cluster.wait_failover(node)   # a replica took over, cluster ok again
        cluster.revive(node)                       # same port and nodes.conf: rejoins as replica
        cluster.pause(new_master)                  # SIGSTOP (connections hang)
        cluster.resume(new_master)                 # SIGCONT
        cluster.kill_shard(0)                      # a master and all its replicas
        cluster.restore()                          # resume/revive everything, wait until ok
        with cluster.begin_migration(slot, target) as migration:  # CLUSTER SETSLOT ... by hand
            ...                                    # source answers -ASK for keys it lacks
            migration.move_keys()                  # MIGRATE
        # leaving the block runs SETSLOT NODE everywhere: now -MOVED
        cluster.reshard(100, source, target)       # redis-cli --cluster reshard
        cluster.restart_empty()                    # everything killed, recreated, empty

Server settings chosen for tests (see ``_node_args``): a small ``cluster-node-timeout``
(default 1500 ms) so failovers take a few seconds; ``cluster-require-full-coverage no`` by
default, so a dead shard only affects its own slots (the setting the session engine needs;
pass ``require_full_coverage=True`` to see the whole cluster answer CLUSTERDOWN instead);
``cluster-replica-validity-factor 0`` so a replica on a slow machine still fails over;
``cluster-allow-replica-migration no`` so the topology only changes when a test changes it;
diskless replication without delay so replicas sync at once.

Nothing here waits on a fixed sleep: every wait polls the nodes until a condition holds
(``wait_ok``, ``wait_failover``) and fails with the last observed problems on timeout.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode as RedisPyClusterNode
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from tests.redis_server import (
    FORBIDDEN_PORT,
    HOST,
    RedisServer,
    RedisServerError,
    find_redis_server,
)

__all__ = [
    "CLUSTER_SLOTS",
    "ClusterFixtureError",
    "LocalCluster",
    "LocalNode",
    "NodeInfo",
    "SlotMigration",
    "find_redis_cli",
    "keyslot",
]

CLUSTER_SLOTS = 16384

#: How long the fixture waits for a state (cluster ok, failover done) unless told otherwise.
DEFAULT_WAIT = 30.0

_POLL = 0.05


class ClusterFixtureError(RuntimeError):
    """The local cluster could not be started, controlled, or did not reach a state."""


def keyslot(key: str | bytes) -> int:
    """Hash slot of ``key`` (hash tags honoured), computed locally like redis-py does."""
    return key_slot(key.encode() if isinstance(key, str) else key)


def find_redis_cli() -> str:
    """``$DRS_REDIS_CLI``, else the redis-cli next to redis-server, else the one on PATH."""
    configured = os.environ.get("DRS_REDIS_CLI")
    if configured:
        if not os.access(configured, os.X_OK):
            raise ClusterFixtureError(f"DRS_REDIS_CLI={configured!r} is not an executable file")
        return configured
    sibling = Path(find_redis_server()).with_name("redis-cli")
    if os.access(sibling, os.X_OK):
        return str(sibling)
    found = shutil.which("redis-cli")
    if found is None:
        raise ClusterFixtureError(
            "redis-cli was not found (it ships with redis-server: apt-get install redis-tools "
            "or redis-server, brew install redis), or set DRS_REDIS_CLI."
        )
    return found


def redis_server_version(executable: str) -> tuple[int, ...]:
    """Version of a redis-server binary, e.g. (7, 0, 15)."""
    out = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if match is None:
        raise ClusterFixtureError(f"cannot read the version of {executable}: {out!r}")
    return tuple(int(part) for part in match.groups())


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all bound at once, so no duplicates; no 6379)."""
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
            if port != FORBIDDEN_PORT:
                ports.append(port)
    finally:
        for sock in sockets:
            sock.close()
    return ports


# -- CLUSTER NODES parsing -----------------------------------------------------------------


@dataclass(frozen=True)
class NodeInfo:
    """One line of ``CLUSTER NODES`` as seen by one node."""

    node_id: str
    host: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    link_state: str
    slots: tuple[tuple[int, int], ...]  # inclusive ranges; open (migrating) slots excluded

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        """Flagged FAIL (agreed) or PFAIL (suspected) by the node that reported this line."""
        return "fail" in self.flags or "fail?" in self.flags

    @property
    def slot_count(self) -> int:
        return sum(end - start + 1 for start, end in self.slots)

    def owns(self, slot: int) -> bool:
        return any(start <= slot <= end for start, end in self.slots)


def parse_cluster_nodes(text: str) -> dict[str, NodeInfo]:
    """Parse ``CLUSTER NODES`` output into ``{node_id: NodeInfo}``."""
    nodes: dict[str, NodeInfo] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        node_id, address, flags, master, _ping, _pong, _epoch, link, *slot_fields = parts
        hostport = address.split(",", 1)[0].split("@", 1)[0]
        host, _, port = hostport.rpartition(":")
        slots: list[tuple[int, int]] = []
        for field in slot_fields:
            if field.startswith("["):  # "[slot->-id]" / "[slot-<-id]": migration in progress
                continue
            start, _, end = field.partition("-")
            slots.append((int(start), int(end or start)))
        nodes[node_id] = NodeInfo(
            node_id=node_id,
            host=host,
            port=int(port) if port.isdigit() else 0,
            flags=frozenset(flags.split(",")),
            master_id=None if master == "-" else master,
            link_state=link,
            slots=tuple(sorted(slots)),
        )
    return nodes


def _slot_owners(view: dict[str, NodeInfo]) -> tuple[tuple[int, int, str], ...]:
    """Canonical slot map of one view: sorted (start, end, owner id) ranges of masters."""
    return tuple(
        sorted(
            (start, end, info.node_id)
            for info in view.values()
            if info.is_master
            for start, end in info.slots
        )
    )


def _covered(owners: Iterable[tuple[int, int, str]]) -> int:
    return sum(end - start + 1 for start, end, _ in owners)


# -- nodes ----------------------------------------------------------------------------------


class LocalNode:
    """One cluster node: a redis-server process on a fixed loopback port (kept on restart).

    ``nodes.conf`` lives outside the server's own directory, so :meth:`LocalCluster.revive`
    brings the node back with its identity (it rejoins the cluster); only
    :meth:`LocalCluster.restart_empty` deletes it.
    """

    def __init__(
        self,
        index: int,
        port: int,
        bus_port: int,
        config_file: Path,
        args: tuple[str, ...],
        executable: str,
    ) -> None:
        self.index = index
        self.bus_port = bus_port
        self.config_file = config_file
        self.server = RedisServer(
            port,
            executable=executable,
            extra_args=(
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(config_file),
                "--cluster-port", str(bus_port),
                *args,
            ),
        )  # fmt: skip
        self._node_id: str | None = None
        self._admin: redis.Redis | None = None

    # -- addressing ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def name(self) -> str:
        """``host:port``, the same string redis-py uses as ``ClusterNode.name``."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    @property
    def node_id(self) -> str:
        """The cluster node ID (``CLUSTER MYID``); changes only with :meth:`restart_empty`."""
        if self._node_id is None:
            self._node_id = str(self.admin().execute_command("CLUSTER MYID"))
        return self._node_id

    # -- process state ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.server.running

    @property
    def paused(self) -> bool:
        return self.server.paused

    @property
    def alive(self) -> bool:
        """Running and not paused: it answers commands."""
        return self.running and not self.paused

    # -- clients ----------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new plain ``redis.Redis`` to this one node (no redirections followed).

        Defaults: 1 s timeouts, no retries, ``decode_responses=True``. Close it after use.
        """
        options: dict[str, Any] = {"decode_responses": True}
        options.update(kwargs)
        return self.server.client(**options)

    def admin(self) -> redis.Redis:
        """The fixture's own cached connection (5 s timeouts, decoded replies)."""
        if self._admin is None:
            self._admin = self.server.client(
                socket_timeout=5.0, socket_connect_timeout=2.0, decode_responses=True
            )
        return self._admin

    def _drop_admin(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None

    def _forget_identity(self) -> None:
        self._node_id = None

    def cluster_nodes(self) -> dict[str, NodeInfo]:
        # Split command name: redis-py has a parsing callback for "CLUSTER NODES", none for
        # "CLUSTER", so this returns the raw text.
        return parse_cluster_nodes(str(self.admin().execute_command("CLUSTER", "NODES")))

    def cluster_info(self) -> dict[str, str]:
        text = str(self.admin().execute_command("CLUSTER", "INFO"))
        return dict(
            line.split(":", 1) for line in text.splitlines() if ":" in line and line.strip()
        )

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<LocalNode #{self.index} {self.name} {state}>"


# -- slot migration ---------------------------------------------------------------------------


class SlotMigration:
    """A slot migration done by hand, step by step, like ``redis-cli --cluster reshard`` does.

    After :meth:`begin` the source is MIGRATING and the target IMPORTING: the source serves
    the keys it still has and answers ``-ASK slot target`` for the others; the target serves
    only ``ASKING`` clients (others get ``-MOVED`` back to the source); a multi-key command
    with some keys on each side (or some missing) gets ``-TRYAGAIN``. :meth:`move_keys`
    MIGRATEs keys; :meth:`finish` moves what is left and assigns the slot to the target on
    every master (``CLUSTER SETSLOT slot NODE``), after which the source answers ``-MOVED``.
    """

    def __init__(self, cluster: LocalCluster, slot: int, source: LocalNode, target: LocalNode):
        if source is target:
            raise ClusterFixtureError(f"slot {slot} is already served by {target!r}")
        self.cluster = cluster
        self.slot = slot
        self.source = source
        self.target = target
        self.started = False
        self.finished = False
        self.keys_moved = 0

    def begin(self) -> SlotMigration:
        """IMPORTING on the target first, then MIGRATING on the source (the safe order)."""
        if self.started:
            return self
        self.target.admin().execute_command(
            "CLUSTER SETSLOT", self.slot, "IMPORTING", self.source.node_id
        )
        self.source.admin().execute_command(
            "CLUSTER SETSLOT", self.slot, "MIGRATING", self.target.node_id
        )
        self.started = True
        return self

    def keys_left(self, limit: int = 1000) -> list[str]:
        """Keys of the slot still on the source (``CLUSTER GETKEYSINSLOT``)."""
        keys = self.source.admin().execute_command("CLUSTER GETKEYSINSLOT", self.slot, limit)
        return [str(key) for key in keys]

    def move_keys(self, limit: int | None = None, batch: int = 100) -> int:
        """MIGRATE up to ``limit`` keys (all if None) from source to target; returns how many."""
        if not self.started:
            self.begin()
        moved = 0
        while limit is None or moved < limit:
            want = batch if limit is None else min(batch, limit - moved)
            keys = self.keys_left(want)
            if not keys:
                break
            self.source.admin().execute_command(
                "MIGRATE", HOST, self.target.port, "", 0, 5000, "KEYS", *keys
            )
            moved += len(keys)
        self.keys_moved += moved
        return moved

    def finish(self, wait: bool = True) -> None:
        """Move the remaining keys and give the slot to the target on every master."""
        if self.finished:
            return
        self.move_keys()
        # Target first (it bumps its config epoch), then the source (which stops ASK and
        # starts MOVED), then the other masters so they do not have to learn it by gossip.
        others = [m for m in self.cluster.masters() if m not in (self.source, self.target)]
        for node in (self.target, self.source, *others):
            node.admin().execute_command("CLUSTER SETSLOT", self.slot, "NODE", self.target.node_id)
        self.finished = True
        if wait:
            self.cluster.wait_ok()
            self.cluster.wait_slot_owner(self.slot, self.target)

    def __enter__(self) -> SlotMigration:
        return self.begin()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Also on error: never leave an open slot behind for the next test.
        if self.started and not self.finished and self.source.alive and self.target.alive:
            self.finish()

    def __repr__(self) -> str:
        return f"<SlotMigration slot {self.slot} {self.source.name} -> {self.target.name}>"


# -- the cluster ------------------------------------------------------------------------------


class LocalCluster:
    """``masters`` shards of one master and ``replicas_per_master`` replicas, on loopback.

    Use as a context manager (or call :meth:`start` and :meth:`stop`). Every process is
    killed and every temporary directory removed by :meth:`stop`, which also runs at exit;
    the kernel kills the servers if the test process dies (PR_SET_PDEATHSIG, Linux).
    """

    def __init__(
        self,
        masters: int = 3,
        replicas_per_master: int = 1,
        *,
        node_timeout_ms: int = 1500,
        require_full_coverage: bool = False,
        startup_timeout: float = DEFAULT_WAIT,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        if masters < 3:
            # redis-cli --cluster create refuses fewer than 3 masters (no failover quorum).
            raise ValueError("a Redis Cluster needs at least 3 masters")
        if replicas_per_master < 0:
            raise ValueError("replicas_per_master must be >= 0")
        self.n_masters = masters
        self.replicas_per_master = replicas_per_master
        self.node_timeout_ms = node_timeout_ms
        self.require_full_coverage = require_full_coverage
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.executable = find_redis_server()
        self.redis_cli = find_redis_cli()
        version = redis_server_version(self.executable)
        if version < (7, 0, 0):
            raise ClusterFixtureError(
                f"LocalCluster needs redis-server 7.0+ (for --cluster-port), found {version}"
            )
        self._dir = Path(tempfile.mkdtemp(prefix="drs-cluster-"))
        self.nodes: list[LocalNode] = []
        #: Slots a node served when the fixture last killed or paused it (for wait_failover).
        self._slots_at_fault: dict[int, tuple[tuple[int, int], ...]] = {}
        self._started = False
        self._closed = False
        atexit.register(self.stop)

    # -- lifecycle --------------------------------------------------------------------------

    def _node_args(self) -> tuple[str, ...]:
        return (
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-require-full-coverage", "yes" if self.require_full_coverage else "no",
            "--cluster-replica-validity-factor", "0",
            "--cluster-allow-replica-migration", "no",
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
            "--repl-diskless-sync-max-replicas", "0",
            # Replicas' offsets only grow with master traffic; an idle master pings them every
            # repl-ping-replica-period (10 s by default), and until then nodes leave the
            # replicas out of CLUSTER SLOTS (offset 0). 1 s keeps wait_ok() short.
            "--repl-ping-replica-period", "1",
            *self.extra_args,
        )  # fmt: skip

    def start(self) -> LocalCluster:
        if self._closed:
            raise ClusterFixtureError("this LocalCluster has been stopped for good")
        if self._started:
            return self
        total = self.n_masters * (1 + self.replicas_per_master)
        for attempt in range(3):
            ports = _free_ports(2 * total)
            try:
                self.nodes = [
                    LocalNode(
                        index=i,
                        port=ports[2 * i],
                        bus_port=ports[2 * i + 1],
                        config_file=self._dir / f"nodes-{ports[2 * i]}.conf",
                        args=self._node_args(),
                        executable=self.executable,
                    )
                    for i in range(total)
                ]
                for node in self.nodes:
                    node.server.start()
                break
            except RedisServerError:
                # Most likely a port was taken between picking and binding: new ports.
                self._stop_processes()
                if attempt == 2:
                    raise
        self._create()
        self._started = True
        self.wait_ok(self.startup_timeout)
        return self

    def _create(self) -> None:
        """``redis-cli --cluster create`` over all nodes (the first N become masters)."""
        args = [
            self.redis_cli,
            "--cluster", "create",
            *(node.name for node in self.nodes),
            "--cluster-replicas", str(self.replicas_per_master),
            "--cluster-yes",
        ]  # fmt: skip
        self._run_cli(args, what="create the cluster")

    def _run_cli(self, args: list[str], what: str, timeout: float = 120.0) -> str:
        try:
            done = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterFixtureError(f"redis-cli did not {what} within {timeout:g}s") from exc
        output = done.stdout + done.stderr
        # redis-cli 7.0 exits 0 on some failures; it always prints [ERR] for them.
        if done.returncode != 0 or "[ERR]" in output:
            raise ClusterFixtureError(
                f"redis-cli could not {what} (exit {done.returncode}): {' '.join(args)}\n"
                f"{output[-3000:]}"
            )
        return output

    def _stop_processes(self) -> None:
        for node in self.nodes:
            node._drop_admin()
            node.server.kill()
        for node in self.nodes:
            node.server.stop()

    def stop(self) -> None:
        """Kill every node and remove every temporary directory (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_processes()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
            atexit.unregister(self.stop)

    def __enter__(self) -> LocalCluster:
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
        ports = ",".join(str(node.server._port) for node in self.nodes)
        return f"<LocalCluster {self.n_masters}x(1+{self.replicas_per_master}) ports {ports}>"

    # -- addressing ---------------------------------------------------------------------

    @property
    def startup_nodes(self) -> list[RedisPyClusterNode]:
        """Every node as a redis-py ``ClusterNode`` (for ``RedisCluster(startup_nodes=...)``)."""
        return [RedisPyClusterNode(HOST, node.port) for node in self.nodes]

    @property
    def urls(self) -> list[str]:
        """``redis://127.0.0.1:PORT`` for every node (a cache LOCATION list)."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """One node's URL; ``RedisCluster.from_url`` discovers the rest."""
        return self.nodes[0].url

    def client(self, **kwargs: Any) -> RedisCluster:
        """A new ``redis.cluster.RedisCluster`` over :attr:`startup_nodes` (close it after use).

        Defaults: 1 s socket timeouts and no cluster-level retries (``Retry(NoBackoff(), 0)``),
        so that a fault surfaces as an exception on the first call instead of being retried
        (redis-py 8 retries 10 times by default). The client still follows MOVED/ASK and
        refreshes its slot map after an error. Any RedisCluster argument can be overridden.

        Creating a client while a master is down may fail without retries: the constructor
        sends COMMAND to a random primary (redis-py 8), which may be the dead one.
        """
        options: dict[str, Any] = {
            "startup_nodes": self.startup_nodes,
            "socket_timeout": 1.0,
            "socket_connect_timeout": 1.0,
            "retry": Retry(NoBackoff(), 0),
        }
        options.update(kwargs)
        return RedisCluster(**options)

    def node_at(self, port: int) -> LocalNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(f"no node of this cluster listens on port {port}")

    def node_by_id(self, node_id: str) -> LocalNode:
        for node in self.nodes:
            if node.alive and node.node_id == node_id:
                return node
        view = self.topology()
        info = view.get(node_id)
        if info is None:
            raise KeyError(f"unknown cluster node id {node_id}")
        return self.node_at(info.port)

    # -- topology (asked live) --------------------------------------------------------------

    def alive_nodes(self) -> list[LocalNode]:
        return [node for node in self.nodes if node.alive]

    def topology(self) -> dict[str, NodeInfo]:
        """``CLUSTER NODES`` of the first node that answers (``{node_id: NodeInfo}``)."""
        last: Exception | None = None
        for node in self.alive_nodes():
            try:
                return node.cluster_nodes()
            except redis.RedisError as exc:
                last = exc
        raise ClusterFixtureError(f"no node of the cluster answers CLUSTER NODES ({last!r})")

    def masters(self) -> list[LocalNode]:
        """Masters serving slots, in slot order: ``masters()[i]`` is shard ``i``."""
        view = self.topology()
        masters = sorted(
            (info for info in view.values() if info.is_master and info.slots),
            key=lambda info: info.slots[0],
        )
        return [self.node_at(info.port) for info in masters]

    def replicas_of(self, master: LocalNode) -> list[LocalNode]:
        """Nodes configured as replicas of ``master`` (also those that are down)."""
        view = self.topology()
        master_id = master.node_id
        return sorted(
            (self.node_at(info.port) for info in view.values() if info.master_id == master_id),
            key=lambda node: node.index,
        )

    def shard(self, index: int) -> list[LocalNode]:
        """``[master, *replicas]`` of shard ``index`` (shards numbered in slot order)."""
        master = self.masters()[index]
        return [master, *self.replicas_of(master)]

    def node_for_slot(self, slot: int) -> LocalNode:
        """The master serving ``slot``, according to the cluster (not to any client)."""
        for info in self.topology().values():
            if info.is_master and info.owns(slot):
                return self.node_at(info.port)
        raise ClusterFixtureError(f"slot {slot} is not assigned to any master")

    def node_for_key(self, key: str | bytes) -> LocalNode:
        """The master serving ``key``'s slot (hash tags honoured)."""
        return self.node_for_slot(keyslot(key))

    def slots_of(self, node: LocalNode) -> tuple[tuple[int, int], ...]:
        info = self.topology().get(node.node_id)
        return info.slots if info is not None else ()

    @staticmethod
    def keyslot(key: str | bytes) -> int:
        return keyslot(key)

    # -- waiting ----------------------------------------------------------------------------

    def _problems(self) -> list[str]:
        """Why the cluster is not (yet) ok, as seen from every node that is alive."""
        problems: list[str] = []
        alive = self.alive_nodes()
        if not alive:
            return ["no node is alive"]
        alive_ids: set[str] = set()
        views: dict[str, dict[str, NodeInfo]] = {}
        for node in alive:
            try:
                info = node.cluster_info()
                views[node.name] = node.cluster_nodes()
                alive_ids.add(node.node_id)
            except redis.RedisError as exc:
                problems.append(f"{node.name}: {exc!r}")
                continue
            if info.get("cluster_state") != "ok":
                problems.append(f"{node.name}: cluster_state:{info.get('cluster_state')}")
        if problems:
            return problems
        slot_maps = {name: _slot_owners(view) for name, view in views.items()}
        reference_name, reference = next(iter(slot_maps.items()))
        if _covered(reference) != CLUSTER_SLOTS:
            problems.append(f"{reference_name}: {_covered(reference)} slots assigned")
        for name, slot_map in slot_maps.items():
            if slot_map != reference:
                problems.append(f"{name} and {reference_name} disagree on the slot map")
        for name, view in views.items():
            for node_id in alive_ids:
                seen = view.get(node_id)
                if seen is None:
                    problems.append(f"{name} does not know node {node_id[:8]}")
                elif seen.failed:
                    problems.append(f"{name} flags live node {seen.port} as {sorted(seen.flags)}")
        roles = {
            name: {
                node_id: (view[node_id].is_master, view[node_id].master_id) for node_id in alive_ids
            }
            for name, view in views.items()
            if alive_ids <= view.keys()
        }
        if len({tuple(sorted(role.items())) for role in roles.values()}) > 1:
            problems.append("nodes disagree on who replicates whom")
        if problems:
            return problems
        # Replicas of a live master must be in sync with it, and listed in CLUSTER SLOTS
        # (what clients such as redis-py read): a node leaves out replicas it thinks have
        # replicated nothing yet (offset 0), which is the case just after a (re)start.
        view = views[reference_name]
        expected = sum(
            1
            for node_id in alive_ids
            if not view[node_id].is_master and view[node_id].master_id in alive_ids
        )
        for node in alive:
            try:
                ranges = cast(list[list[Any]], node.admin().execute_command("CLUSTER", "SLOTS"))
                listed = sum(len(entry) - 3 for entry in ranges)
            except redis.RedisError as exc:
                problems.append(f"{node.name}: {exc!r}")
                continue
            if listed < expected:
                problems.append(f"{node.name}: CLUSTER SLOTS lists {listed}/{expected} replicas")
        for node in alive:
            me = view[node.node_id]
            if me.is_master or me.master_id not in alive_ids:
                continue
            try:
                repl = node.admin().info("replication")
            except redis.RedisError as exc:
                problems.append(f"{node.name}: {exc!r}")
                continue
            if repl.get("master_link_status") != "up" or repl.get("master_sync_in_progress"):
                problems.append(f"replica {node.name}: link {repl.get('master_link_status')}")
        return problems

    def _wait(self, condition: Callable[[], list[str]], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            problems = condition()
            if not problems:
                return
            if time.monotonic() >= deadline:
                raise ClusterFixtureError(
                    f"{what} not reached within {timeout:g}s; last seen: " + "; ".join(problems)
                )
            time.sleep(_POLL)

    def wait_ok(self, timeout: float = DEFAULT_WAIT) -> None:
        """Until every live node says ``cluster_state:ok``, all 16384 slots are assigned, the
        live nodes agree on the slot map and the roles, none of them is flagged as failing,
        and the replicas of live masters are in sync."""
        self._wait(self._problems, "cluster ok", timeout)

    def wait_slot_owner(self, slot: int, owner: LocalNode, timeout: float = DEFAULT_WAIT) -> None:
        """Until every live node says ``owner`` serves ``slot``."""

        def problems() -> list[str]:
            found: list[str] = []
            for node in self.alive_nodes():
                view = node.cluster_nodes()
                me = view.get(owner.node_id)
                if me is None or not me.owns(slot):
                    found.append(f"{node.name} does not yet see slot {slot} on {owner.name}")
            return found

        self._wait(problems, f"slot {slot} on {owner.name}", timeout)

    def wait_failover(self, old_master: LocalNode, timeout: float = DEFAULT_WAIT) -> LocalNode:
        """Until a replica of the killed/paused ``old_master`` serves its slots and the
        cluster is ok again; returns the new master.

        ``old_master`` must have been faulted through this fixture (:meth:`kill`,
        :meth:`pause`, :meth:`kill_shard`), which records the slots it served.
        """
        slots = self._slots_at_fault.get(old_master.port)
        if not slots:
            raise ClusterFixtureError(
                f"{old_master!r} served no slots when it was faulted (or was not faulted "
                "through this fixture): there is no failover to wait for"
            )
        old_id = old_master.node_id
        result: list[LocalNode] = []

        def problems() -> list[str]:
            found: list[str] = []
            owners: set[str] = set()
            for node in self.alive_nodes():
                try:
                    view = node.cluster_nodes()
                except redis.RedisError as exc:
                    found.append(f"{node.name}: {exc!r}")
                    continue
                for start, _end in slots:
                    owner = next((i for i in view.values() if i.is_master and i.owns(start)), None)
                    if owner is None or owner.node_id == old_id or owner.failed:
                        found.append(f"{node.name}: slot {start} still on the old master")
                    else:
                        owners.add(owner.node_id)
            if found:
                return found
            if len(owners) != 1:
                return [f"nodes disagree on the new master: {sorted(owners)}"]
            found = self._problems()
            if not found:
                result[:] = [self.node_by_id(owners.pop())]
            return found

        self._wait(problems, f"failover of {old_master.name}", timeout)
        return result[0]

    # -- faults -----------------------------------------------------------------------------

    def _record_slots(self, node: LocalNode) -> None:
        with contextlib.suppress(ClusterFixtureError, redis.RedisError):
            for info in self.topology().values():
                if info.port == node.port:
                    self._slots_at_fault[node.port] = info.slots if info.is_master else ()

    def kill(self, node: LocalNode) -> None:
        """SIGKILL one node (its port then refuses connections)."""
        node.node_id  # noqa: B018 - learn the id while the node still answers
        self._record_slots(node)
        node._drop_admin()
        node.server.kill()

    def pause(self, node: LocalNode) -> None:
        """SIGSTOP one node: connections are accepted by the kernel but never answered."""
        node.node_id  # noqa: B018
        self._record_slots(node)
        node._drop_admin()
        node.server.pause()

    def resume(self, node: LocalNode) -> None:
        """SIGCONT a paused node (a paused master that was failed over becomes a replica)."""
        node.server.resume()
        node._drop_admin()

    def revive(self, node: LocalNode) -> None:
        """Start a killed node again on its port with its nodes.conf: it rejoins the cluster
        with its old identity but without data (a failed-over master becomes a replica)."""
        node._drop_admin()
        node.server.start()

    def kill_shard(self, index: int) -> list[LocalNode]:
        """SIGKILL shard ``index``: its master and all its replicas. Returns them."""
        members = self.shard(index)
        for node in members:
            self.kill(node)
        return members

    def restore(self, timeout: float = DEFAULT_WAIT) -> None:
        """Undo faults: resume paused nodes, revive killed ones, wait until the cluster is ok."""
        for node in self.nodes:
            if node.paused:
                self.resume(node)
            elif not node.running:
                self.revive(node)
        self.wait_ok(timeout)

    def restart_empty(self, timeout: float = DEFAULT_WAIT) -> None:
        """Kill everything and build the cluster again on the same ports: no keys, new node
        IDs, the first N nodes masters again. Clients keep working with the same startup
        nodes (a RedisCluster refreshes its slot map on the first error)."""
        for node in self.nodes:
            node._drop_admin()
            node.server.kill()
        for node in self.nodes:
            node.config_file.unlink(missing_ok=True)
            node._forget_identity()
        self._slots_at_fault.clear()
        for node in self.nodes:
            node.server.start()
        self._create()
        self.wait_ok(timeout)

    # -- resharding -------------------------------------------------------------------------

    def begin_migration(self, slot: int, to_node: LocalNode) -> SlotMigration:
        """Open the migration of ``slot`` to ``to_node`` (IMPORTING/MIGRATING set, no key moved
        yet). Use it as a context manager, or call ``move_keys()`` and ``finish()``."""
        return SlotMigration(self, slot, self.node_for_slot(slot), to_node).begin()

    def migrate_slot(
        self,
        slot: int,
        to_node: LocalNode,
        on_step: Callable[[str, SlotMigration], None] | None = None,
    ) -> SlotMigration:
        """Migrate ``slot`` to ``to_node`` step by step. ``on_step(step, migration)`` is called
        with ``"migrating"`` (slot open, no key moved), then ``"keys-moved"`` (all keys on the
        target, slot still open), so a test can look at the cluster in the middle."""
        migration = self.begin_migration(slot, to_node)
        with migration:
            if on_step is not None:
                on_step("migrating", migration)
            migration.move_keys()
            if on_step is not None:
                on_step("keys-moved", migration)
        return migration

    def reshard(self, n_slots: int, from_node: LocalNode, to_node: LocalNode) -> None:
        """Move ``n_slots`` slots with ``redis-cli --cluster reshard``, then wait until ok."""
        self._run_cli(
            [
                self.redis_cli,
                "--cluster", "reshard", from_node.name,
                "--cluster-from", from_node.node_id,
                "--cluster-to", to_node.node_id,
                "--cluster-slots", str(n_slots),
                "--cluster-yes",
            ],
            what=f"reshard {n_slots} slots",
        )  # fmt: skip
        self.wait_ok()

    # -- data helpers -----------------------------------------------------------------------

    def flushall(self) -> None:
        """FLUSHALL on every live master (one by one: there is no cluster-wide FLUSHALL)."""
        for node in self.masters():
            if node.alive:
                node.admin().flushall()


@contextlib.contextmanager
def running_cluster(**kwargs: Any) -> Iterator[LocalCluster]:
    """``with running_cluster(masters=3) as cluster:`` — shorthand for LocalCluster(...)."""
    with LocalCluster(**kwargs) as cluster:
        yield cluster
