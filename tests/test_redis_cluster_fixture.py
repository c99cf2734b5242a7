"""Self-tests of the local Redis Cluster fixture (tests/redis_cluster.py).

One cluster (3 masters, 1 replica each) is started for the module. Every test leaves it ok:
the ``healthy`` fixture empties it before and undoes faults after each test. Waits poll the
cluster state; nothing asserts on wall-clock time.

Deselect with ``-m "not cluster"``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import AskError, ConnectionError, MovedError, TimeoutError, TryAgainError
from redis.retry import Retry

from tests.redis_cluster import CLUSTER_SLOTS, LocalCluster, LocalNode, keyslot
from tests.redis_server import FORBIDDEN_PORT

pytestmark = pytest.mark.cluster

# The session engine's key layout: data key and tombstone share the hash tag, so one slot.
DATA = "drs:s:{4f2a}"
TOMBSTONE = "drs:s:{4f2a}:ended"
# The tombstone check of the engine: touches both keys, one of which usually does not exist.
TWO_KEY_SCRIPT = "return {redis.call('GET', KEYS[1]), redis.call('EXISTS', KEYS[2])}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas_per_master=1) as local:
        yield local


@pytest.fixture(autouse=True)
def healthy(cluster: LocalCluster) -> Iterator[LocalCluster]:
    """Empty and ok before the test; every fault undone after it."""
    cluster.restore()
    cluster.flushall()
    yield cluster
    cluster.restore()


@pytest.fixture
def rc(cluster: LocalCluster) -> Iterator[RedisCluster]:
    """A cluster client without retries (faults surface at once), decoding replies."""
    client = cluster.client(decode_responses=True)
    yield client
    client.close()


def key_on_other_shard(cluster: LocalCluster, than: LocalNode) -> str:
    """A key whose slot is served by another master than ``than``."""
    for i in range(10_000):
        key = f"other:{{{i}}}"
        if cluster.node_for_key(key) is not than:
            return key
    raise AssertionError("no key found on another shard")


def slot_count(cluster: LocalCluster, node: LocalNode) -> int:
    return sum(end - start + 1 for start, end in cluster.slots_of(node))


def probe(node: LocalNode, timeout: float = 0.2) -> redis.Redis:
    """What a per-node circuit breaker would use: one node, short timeouts, no retries."""
    return redis.Redis(
        host=node.host,
        port=node.port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def test_cluster_is_ok_for_redis_py(cluster: LocalCluster, rc: RedisCluster) -> None:
    assert FORBIDDEN_PORT not in [node.port for node in cluster.nodes]
    assert len(cluster.nodes) == 6
    masters = cluster.masters()
    assert len(masters) == 3
    for master in masters:
        assert len(cluster.replicas_of(master)) == 1
    assert sum(slot_count(cluster, m) for m in masters) == CLUSTER_SLOTS
    # redis-py sees the same cluster: all slots mapped, the same masters, state ok.
    assert len(rc.nodes_manager.slots_cache) == CLUSTER_SLOTS
    assert {n.name for n in rc.get_primaries()} == {m.name for m in masters}
    assert {n.name for n in rc.get_replicas()} == {
        r.name for m in masters for r in cluster.replicas_of(m)
    }
    assert rc.ping(target_nodes=RedisCluster.ALL_NODES)
    assert rc.cluster_info()["cluster_state"] == "ok"
    rc.set("hello", "world")
    assert rc.get("hello") == "world"
    # from_url with one node discovers the others.
    with RedisCluster.from_url(cluster.url) as by_url:
        assert len(by_url.get_nodes()) == 6


def test_hash_tagged_keys_share_one_slot_and_node(cluster: LocalCluster, rc: RedisCluster) -> None:
    slot = keyslot(DATA)
    assert keyslot(TOMBSTONE) == slot == rc.keyslot(DATA) == rc.keyslot(TOMBSTONE)
    owner = cluster.node_for_key(DATA)
    # The client-side lookup a per-node breaker needs: no round trip, same answer.
    assert rc.get_node_from_key(DATA).name == owner.name
    assert rc.nodes_manager.get_node_from_slot(slot).name == owner.name
    rc.set(DATA, "payload")
    rc.set(TOMBSTONE, "1")
    assert rc.eval(TWO_KEY_SCRIPT, 2, DATA, TOMBSTONE) == ["payload", 1]
    # Both keys are on the owner: it answers directly; every other master redirects.
    with owner.client() as raw:
        assert raw.get(DATA) == "payload"
        assert raw.exists(TOMBSTONE) == 1
    for master in cluster.masters():
        if master is owner:
            continue
        with master.client() as raw, pytest.raises(MovedError) as moved:
            raw.get(DATA)
        assert moved.value.slot_id == slot
        assert moved.value.port == owner.port


def test_kill_master_fails_over_to_its_replica(cluster: LocalCluster, rc: RedisCluster) -> None:
    old = cluster.node_for_key(DATA)
    [replica] = cluster.replicas_of(old)
    other = key_on_other_shard(cluster, old)
    rc.set(DATA, "survives")
    rc.set(other, "elsewhere")
    sha = rc.script_load(TWO_KEY_SCRIPT)
    with old.client() as raw:
        assert raw.execute_command("WAIT", 1, 5000) == 1  # the replica has the write

    cluster.kill(old)
    # Before the failover: that shard's keys fail at once, the other shards keep working.
    with pytest.raises(ConnectionError):
        rc.get(DATA)
    assert rc.get(other) == "elsewhere"

    new = cluster.wait_failover(old)
    assert new is replica
    # The client refreshes its slot map on the next error; with retries it then succeeds.
    with cluster.client(decode_responses=True, retry=Retry(NoBackoff(), 3)) as retrying:
        assert retrying.get(DATA) == "survives"
        assert retrying.get_node_from_key(DATA).name == new.name
    # Pitfall: the script cache is not replicated, the promoted replica never saw the script.
    with new.client() as raw:
        assert raw.script_exists(sha) == [False]

    cluster.revive(old)
    cluster.wait_ok()
    assert cluster.node_for_key(DATA) is new
    assert cluster.replicas_of(new) == [old]  # the old master came back as a replica


def test_paused_node_times_out_a_probe(cluster: LocalCluster) -> None:
    node = cluster.node_for_key(DATA)
    with probe(node) as conn:
        assert conn.ping()
    cluster.pause(node)
    try:
        # SIGSTOP: the kernel still accepts the connection, nothing answers.
        with probe(node) as conn, pytest.raises(TimeoutError):
            conn.ping()
    finally:
        cluster.resume(node)
    with probe(node) as conn:
        assert conn.ping()


def test_ask_during_migration_then_moved(cluster: LocalCluster, rc: RedisCluster) -> None:
    slot = keyslot(DATA)
    source = cluster.node_for_slot(slot)
    target = next(m for m in cluster.masters() if m is not source)
    rc.set(DATA, "moving")
    assert rc.get_node_from_key(DATA).name == source.name  # the client's map, not updated

    with cluster.begin_migration(slot, target) as migration:
        with source.client() as raw:
            assert raw.get(DATA) == "moving"  # still here: served
            with pytest.raises(AskError) as ask:
                raw.get(TOMBSTONE)  # not here: ask the target
            assert (ask.value.slot_id, ask.value.port) == (slot, target.port)
            # Pitfall: a multi-key command with a present and a missing key: TRYAGAIN.
            with pytest.raises(TryAgainError):
                raw.eval(TWO_KEY_SCRIPT, 2, DATA, TOMBSTONE)
        with target.client() as raw, pytest.raises(MovedError) as moved:
            raw.get(TOMBSTONE)  # no ASKING: the target sends the client back
        assert moved.value.port == source.port

        assert migration.move_keys() == 1
        with source.client() as raw, pytest.raises(AskError):
            raw.get(DATA)  # gone from the source now
        assert rc.get(DATA) == "moving"  # redis-py follows the ASK (ASKING + GET)
        assert rc.get_node_from_key(DATA).name == source.name  # ASK does not update the map
    # Leaving the block assigned the slot to the target everywhere.
    assert cluster.node_for_slot(slot) is target
    with source.client() as raw, pytest.raises(MovedError) as moved:
        raw.get(DATA)
    assert (moved.value.slot_id, moved.value.port) == (slot, target.port)
    assert rc.get(DATA) == "moving"  # follows the MOVED and patches its slot map
    assert rc.get_node_from_key(DATA).name == target.name
    assert rc.eval(TWO_KEY_SCRIPT, 2, DATA, TOMBSTONE) == ["moving", 0]


def test_migrate_slot_reports_steps(cluster: LocalCluster, rc: RedisCluster) -> None:
    slot = keyslot(DATA)
    source = cluster.node_for_slot(slot)
    target = next(m for m in cluster.masters() if m is not source)
    rc.set(DATA, "x")
    seen: list[tuple[str, int]] = []

    def step(name: str, migration: object) -> None:
        with source.client() as raw:
            seen.append((name, len(raw.execute_command("CLUSTER GETKEYSINSLOT", slot, 10))))

    cluster.migrate_slot(slot, target, on_step=step)
    assert seen == [("migrating", 1), ("keys-moved", 0)]
    assert cluster.node_for_slot(slot) is target
    assert rc.get(DATA) == "x"


def test_reshard_with_redis_cli(cluster: LocalCluster, rc: RedisCluster) -> None:
    source, target = cluster.masters()[:2]
    before_source, before_target = slot_count(cluster, source), slot_count(cluster, target)
    cluster.reshard(16, source, target)
    assert slot_count(cluster, source) == before_source - 16
    assert slot_count(cluster, target) == before_target + 16
    rc.set(DATA, "after-reshard")
    assert rc.get(DATA) == "after-reshard"


def test_dead_shard_only_affects_its_slots(cluster: LocalCluster, rc: RedisCluster) -> None:
    dead_master = cluster.node_for_key(DATA)
    other = key_on_other_shard(cluster, dead_master)
    rc.set(other, "alive")
    shard = cluster.masters().index(dead_master)
    killed = cluster.kill_shard(shard)
    assert dead_master in killed and len(killed) == 2
    with pytest.raises(ConnectionError):
        rc.get(DATA)
    assert rc.get(other) == "alive"
    # cluster-require-full-coverage no: the survivors stay "ok" and keep serving.
    cluster.wait_ok()
    assert rc.get(other) == "alive"
    # Pitfall: redis-py's Script reloads on NOSCRIPT with SCRIPT LOAD on *all* primaries,
    # which fails while any shard is down, even for a key on a healthy shard.
    healthy_node = cluster.node_for_key(other)
    healthy_node.admin().script_flush()
    script = rc.register_script(TWO_KEY_SCRIPT)
    with pytest.raises(ConnectionError):
        script(keys=[other, other + ":ended"])
    # EVAL (routed by key) works; so does SCRIPT LOAD sent to the key's node only.
    assert rc.eval(TWO_KEY_SCRIPT, 2, other, other + ":ended") == ["alive", 0]
    node = rc.get_node_from_key(other)
    assert rc.execute_command("SCRIPT LOAD", TWO_KEY_SCRIPT, target_nodes=node) == (
        hashlib.sha1(TWO_KEY_SCRIPT.encode()).hexdigest()
    )
    cluster.restore()
    with cluster.client(decode_responses=True, retry=Retry(NoBackoff(), 3)) as retrying:
        assert retrying.get(DATA) is None  # the shard came back without persistence: empty
        assert retrying.get(other) == "alive"


def test_restart_empty(cluster: LocalCluster, rc: RedisCluster) -> None:
    rc.set(DATA, "gone soon")
    ports = [node.port for node in cluster.nodes]
    ids = {node.node_id for node in cluster.nodes}
    cluster.restart_empty()
    assert [node.port for node in cluster.nodes] == ports
    assert ids.isdisjoint(node.node_id for node in cluster.nodes)
    for master in cluster.masters():
        with master.client() as raw:
            assert raw.dbsize() == 0
    with cluster.client(decode_responses=True, retry=Retry(NoBackoff(), 3)) as fresh:
        assert fresh.get(DATA) is None
        fresh.set(DATA, "new")
        assert fresh.get(DATA) == "new"
