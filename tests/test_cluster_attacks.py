"""Attacks on the engine over a real Redis Cluster (3 masters, 1 replica each).

Each test is a fault a cluster adds and what must hold through it: a session ended
while its master was down is not served from the replica that took its slots over, by
any process (one that saw the outage but had not served that slot, one that met the
failover only through a ``MOVED``, one started after it); a replica promoted without
the last writes (a newer backup wins; a lost tombstone is the documented remaining
risk, a strict xfail); every node hung; slots that migrate while a session is written
or ended; a cluster that answers ``CLUSTERDOWN`` everywhere (no 500, no breaker
flapping); a user that may not ask ``CLUSTER INFO``; breakers that follow failovers
and do not pile up.

The cluster is started once for the module (6 redis-server processes); each test
starts from a healthy, empty cluster. Deselect with ``-m "not cluster"``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client, override_settings

from django_resilient_sessions import outbox, purges, signals, tracking
from django_resilient_sessions.breaker import (
    CLOSED,
    all_breakers,
    get_breaker,
    reset_breakers,
    slot_owners,
)
from django_resilient_sessions.cache import forget_clients
from django_resilient_sessions.cachecopy import TOMBSTONE, Entry, SessionCache
from django_resilient_sessions.models import PendingPurge
from django_resilient_sessions.trust import Cache
from tests.redis_cluster import LocalCluster, LocalNode
from tests.test_cluster import (
    CLUSTER_CACHE,
    COOLDOWN,
    Browser,
    browsers,
    by_node,
    cool_down,
    open_breakers,
    raw_get,
)
from tests.web import ok

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas_per_master=1) as local:
        yield local


@pytest.fixture(autouse=True)
def on_cluster(cluster: LocalCluster) -> Iterator[LocalCluster]:
    """A healthy, empty cluster as the ``default`` (session) cache for the test."""
    cluster.restore()
    cluster.flushall()
    caches = {
        "default": {
            "BACKEND": CLUSTER_CACHE,
            "LOCATION": cluster.urls,
            "OPTIONS": {"socket_timeout": 0.25, "socket_connect_timeout": 0.25},
        }
    }
    forget_clients()
    with override_settings(CACHES=caches, RESILIENT_SESSIONS={"BREAKER_COOLDOWN": COOLDOWN}):
        reset_breakers()
        purges.restart_clock()
        try:
            yield cluster
        finally:
            forget_clients()
            reset_breakers()
    cluster.restore()


def stolen(client: Client) -> dict[str, str]:
    return {name: morsel.value for name, morsel in client.cookies.items()}


def kill_replicated(cluster: LocalCluster, master: LocalNode) -> None:
    """Kill ``master`` once its replica has everything it acknowledged."""
    master.admin().execute_command("WAIT", 1, 5000)
    cluster.kill(master)


def replayed_user(cookies: dict[str, str]) -> Any:
    """Who a client presenting these cookies is (a thief replaying an ended session)."""
    thief = Client()
    for name, value in cookies.items():
        thief.cookies[name] = value
    return ok(thief.get("/whoami/"))["user"]


# -- resurrection across a failover ------------------------------------------------------------


def test_a_logout_during_a_failover_is_not_served_on_a_slot_this_process_had_not_served(
    cluster: LocalCluster,
) -> None:
    """Worker W serves user A; user V logs out on another worker while V's master is down
    (the deletion is queued); the replica, which holds V's copy from before the logout,
    takes the slots over. W saw the outage (A's requests opened the dead master's
    breaker) and then probed: its slot map now names the promoted replica. W had never
    served V's slot. V's stolen cookies must not be served from the promoted replica's
    copy before the queued deletion is done."""
    people = browsers()
    groups = by_node(cluster, people)
    port = min(groups)
    master = cluster.node_at(port)
    seen, victim = groups[port][0], groups[port][1]
    victim_key, victim_hash = victim.redis_key, victim.key_hash
    cookies = stolen(victim.client)
    kill_replicated(cluster, master)
    assert seen.check()["degraded"] is True  # W sees the outage: its breaker opens
    ok(victim.client.post("/logout/"))  # the deletion cannot reach the dead master
    assert PendingPurge.objects.count() == 1
    promoted = cluster.wait_failover(master)
    assert raw_get(cluster, victim_key) not in (None, TOMBSTONE)  # the replica's copy
    # W never served V's slot (V's requests went to another worker): W's record of which
    # node served which slot has no entry for it.
    slot = outbox.slot_of(victim_hash)
    slot_owners("default").pop(slot, None)
    cool_down()
    seen.check()  # W probes the dead master: the slot map is refreshed
    nodes = SessionCache().redis.client().nodes_manager
    assert nodes.get_node_from_slot(slot).name == promoted.name
    assert replayed_user(cookies) is None
    for _ in range(3):  # the queued deletion is done; Redis serves the shard again
        cool_down()
        seen.check()
    assert PendingPurge.objects.count() == 0
    assert raw_get(cluster, victim_key) == TOMBSTONE
    assert seen.check()["degraded"] is False


def other_worker(cluster: LocalCluster) -> dict[str, Any]:
    """The CACHES of another worker process: its own cluster client (and slot map)."""
    return {
        "default": {
            "BACKEND": CLUSTER_CACHE,
            "LOCATION": cluster.urls,
            "OPTIONS": {
                "socket_timeout": 0.25,
                "socket_connect_timeout": 0.25,
                "client_name": "other-worker",
            },
        }
    }


def test_a_logout_during_a_failover_is_not_served_by_a_worker_that_missed_the_outage(
    cluster: LocalCluster,
) -> None:
    """Worker W2 served everyone before the outage, then had no request for the dead
    master's slots while it was down: its breakers stayed closed and its slot map still
    names the dead master. User V logs out on worker W1 during the outage (the deletion
    is queued); the replica takes over, the old master comes back as its replica. W2's
    next read of V's session goes to the old master, which answers MOVED: redis-py
    follows it to the promoted replica, whose copy predates the logout."""
    people = browsers()
    groups = by_node(cluster, people)
    port = min(groups)
    master = cluster.node_at(port)
    victim = groups[port][0]
    victim_key = victim.redis_key
    cookies = stolen(victim.client)
    with override_settings(CACHES=other_worker(cluster)):  # W2 serves everyone once
        for person in people:
            assert person.check()["degraded"] is False
        w2_owners = dict(slot_owners("default"))
    reset_breakers()
    kill_replicated(cluster, master)
    ok(victim.client.post("/logout/"))  # on W1: queued
    assert PendingPurge.objects.count() == 1
    cluster.wait_failover(master)
    assert raw_get(cluster, victim_key) not in (None, TOMBSTONE)  # the replica's copy
    cluster.revive(master)  # rejoins as the new master's replica: it answers MOVED
    cluster.wait_ok()
    with override_settings(CACHES=other_worker(cluster)):
        reset_breakers()  # W2's own breakers (all closed) and slot records
        slot_owners("default").update(w2_owners)
        assert replayed_user(cookies) is None


def test_a_logout_during_a_failover_is_not_served_by_a_worker_started_after_it(
    cluster: LocalCluster,
) -> None:
    """A worker started after the failover (a new gunicorn worker, a restarted pod), before
    the queued deletion is done: its first slot map names the promoted replica, which holds
    the copy of a session logged out during the outage."""
    people = browsers()
    groups = by_node(cluster, people)
    port = min(groups)
    master = cluster.node_at(port)
    victim = groups[port][0]
    victim_key = victim.redis_key
    cookies = stolen(victim.client)
    kill_replicated(cluster, master)
    ok(victim.client.post("/logout/"))  # queued
    cluster.wait_failover(master)
    assert PendingPurge.objects.count() == 1
    assert raw_get(cluster, victim_key) not in (None, TOMBSTONE)  # the replica's copy
    # A new process: its own cluster client, no breakers, the purge queue never checked.
    forget_clients()
    reset_breakers()
    purges.restart_clock(checked=False)
    with override_settings(CACHES=other_worker(cluster)):
        assert replayed_user(cookies) is None


def lagging_failover(cluster: LocalCluster) -> tuple[list[Browser], Browser, dict[str, str]]:
    """A master's replica misses its last writes (its link cut), then takes over.

    Returns the shard's users, one whose last write (``n = 2``) only the old master had,
    and the cookies of one who logged out then (the tombstone only the old master had).
    """
    people = browsers()
    groups = by_node(cluster, people)
    port = min(groups)
    master = cluster.node_at(port)
    writer, leaving = groups[port][0], groups[port][1]
    leaving_key = leaving.redis_key
    writer.write(1)
    master.admin().execute_command("WAIT", 1, 5000)  # the replica has everything so far
    [replica] = cluster.replicas_of(master)
    cookies = stolen(leaving.client)
    cluster.pause(replica)
    master.admin().execute_command("CLIENT", "KILL", "TYPE", "replica")
    writer.write(2)  # acknowledged by the master alone
    ok(leaving.client.post("/logout/"))  # its tombstone too
    assert PendingPurge.objects.count() == 0
    cluster.kill(master)
    cluster.resume(replica)
    promoted = cluster.wait_failover(master)
    assert promoted is replica
    with promoted.client(decode_responses=False) as raw:
        assert raw.get(leaving_key) not in (None, TOMBSTONE)  # the tombstone is lost
    shard = [person for person in groups[port] if person is not leaving]
    for _ in range(3):  # the process finds the promoted replica and trusts it
        cool_down()
        for person in shard:
            person.check()
    assert open_breakers() == []
    return shard, writer, cookies


def test_a_replica_promoted_without_the_last_writes(cluster: LocalCluster) -> None:
    """A newer backup wins over the lagging replica's older copy, and a session whose
    tombstone it lost stays ended once its row is checked (within
    ACTIVITY_UPDATE_INTERVAL: the documented remaining risk, here 1 s)."""
    with override_settings(
        RESILIENT_SESSIONS={"BREAKER_COOLDOWN": COOLDOWN, "ACTIVITY_UPDATE_INTERVAL": 1}
    ):
        _, writer, cookies = lagging_failover(cluster)
        assert writer.check()["data"] == {"n": "2"}  # the newer backup won
        assert writer.check()["degraded"] is False
        time.sleep(1)  # (the activity interval passes: not an assertion)
        replayed_user(cookies)  # may be served once: the row is checked when it saves
        assert replayed_user(cookies) is None


@pytest.mark.xfail(
    strict=True,
    reason="Documented remaining risk (docs/security.md): a tombstone the promoted replica "
    "never received is not known to be missing; the session is served from the replica's "
    "copy until its next activity update (ACTIVITY_UPDATE_INTERVAL, 300 s by default). "
    "Closing it needs the tombstone replicated before the deletion leaves the queue "
    "(WAIT), or the sessions ended shortly before a failover tombstoned again.",
)
def test_a_logout_whose_tombstone_the_promoted_replica_lost_stays_a_logout(
    cluster: LocalCluster,
) -> None:
    _, _, cookies = lagging_failover(cluster)
    assert replayed_user(cookies) is None


def test_a_logout_while_the_whole_cluster_hangs_stays_a_logout(cluster: LocalCluster) -> None:
    """Every node hung (no failover: all of them stopped), a logout meanwhile, then every
    node resumes with its data, the ended session's copy included: the process, whose
    every node breaker opened, serves nobody from that copy, and Redis again once the
    queued deletion is done."""
    people = browsers(9)
    for i, person in enumerate(people):
        person.write(i)
    victim, others = people[0], people[1:]
    victim_key = victim.redis_key
    cookies = stolen(victim.client)
    for node in cluster.nodes:
        cluster.pause(node)
    try:
        for person in others:
            assert person.check()["degraded"] is True
        ok(victim.client.post("/logout/"))  # recorded, its Redis deletion queued
        assert PendingPurge.objects.count() == 1
        assert replayed_user(cookies) is None
    finally:
        for node in cluster.nodes:
            cluster.resume(node)
    cluster.wait_ok()
    assert raw_get(cluster, victim_key) not in (None, TOMBSTONE)  # the copy survived
    for _ in range(4):
        cool_down()
        assert replayed_user(cookies) is None
        for person in others:
            person.check()
    assert PendingPurge.objects.count() == 0
    assert raw_get(cluster, victim_key) == TOMBSTONE
    for person in others:
        assert person.check()["degraded"] is False
    assert open_breakers() == []


# -- slots migrating ---------------------------------------------------------------------------


def hash_in_slot(slot: int, avoid: str = "") -> str:
    """A session key hash whose Redis key falls in ``slot`` (its hash tag decides)."""
    for i in range(1_000_000):
        candidate = hashlib.sha256(f"probe{i}".encode()).hexdigest()
        if candidate != avoid and outbox.slot_of(candidate) == slot:
            return candidate
    raise AssertionError(f"no hash found for slot {slot}")


def test_every_write_while_the_slot_migrates(cluster: LocalCluster) -> None:
    """The scripts, SET NX and the tombstone pipeline on a slot half migrated: the key on
    the target (the source answers ASK), another of the same slot still on the source."""
    people = browsers(6)
    person = people[0]
    person.write(1)
    store = SessionCache()
    moved_hash = person.key_hash
    slot = outbox.slot_of(moved_hash)
    source = person.node(cluster)
    target = next(m for m in cluster.masters() if m is not source)
    staying_hash = hash_in_slot(slot, avoid=moved_hash)
    fresh_hash = hash_in_slot(slot, avoid=staying_hash)
    assert store.create(staying_hash, Entry(1, {"a": 1}), 60)
    with cluster.begin_migration(slot, target) as migration:
        with source.client(decode_responses=False) as raw:
            raw.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS",
                                store.entry_key(moved_hash))  # fmt: skip
        assert migration.keys_left() == [store.entry_key(staying_hash)]
        read = store.read(moved_hash)  # ASK
        assert read.state is Cache.PRESENT and read.entry is not None
        entry = Entry(read.entry.version + 1, {**read.entry.data, "x": 1}, read.entry.tag)
        assert store.update(moved_hash, entry, 60) is True  # the UPDATE script, ASK
        assert store.write_back(moved_hash, entry, 60, store.read(moved_hash).sha) is None
        assert store.create(fresh_hash, Entry(1, {"b": 2}), 60)  # SET NX, ASK (no key yet)
        assert store.read(fresh_hash).state is Cache.PRESENT
        # A batch of tombstones on both sides of the migration, and on other nodes.
        others = [p.key_hash for p in people[1:]]
        done = store.tombstone([moved_hash, staying_hash, fresh_hash, *others])
        assert sorted(done) == sorted([moved_hash, staying_hash, fresh_hash, *others])
        for key_hash in (moved_hash, staying_hash, fresh_hash):
            assert store.read(key_hash).state is Cache.TOMBSTONED
            assert store.write_back(key_hash, entry, 60, "") is not None  # refused
    for key_hash in (moved_hash, staying_hash, fresh_hash, *others):
        assert raw_get(cluster, store.entry_key(key_hash)) == TOMBSTONE
    assert ok(person.client.get("/whoami/"))["user"] is None
    assert open_breakers() == []


def test_a_session_revoked_while_its_key_migrates_stays_ended(cluster: LocalCluster) -> None:
    people = browsers(6)
    victim = people[0]
    cookies = stolen(victim.client)
    slot = outbox.slot_of(victim.key_hash)
    source = victim.node(cluster)
    target = next(m for m in cluster.masters() if m is not source)
    with cluster.begin_migration(slot, target) as migration:
        # Revoked while the key is still on the source: the tombstone migrates with it.
        assert tracking.end([victim.key_hash], "revoked") == 1
        migration.move_keys()
        assert replayed_user(cookies) is None
    assert raw_get(cluster, victim.redis_key) == TOMBSTONE
    assert replayed_user(cookies) is None
    assert PendingPurge.objects.count() == 0


# -- a cluster that refuses everything ---------------------------------------------------------


def wait_until_down(cluster: LocalCluster) -> None:
    """Until every live node says ``cluster_state:fail`` (it then answers CLUSTERDOWN)."""
    deadline = time.monotonic() + 30
    while any(n.cluster_info().get("cluster_state") != "fail" for n in cluster.alive_nodes()):
        assert time.monotonic() < deadline, "the cluster never went down"
        time.sleep(0.05)


def test_clusterdown_everywhere_answers_no_500_and_recovers(cluster: LocalCluster) -> None:
    """``cluster-require-full-coverage yes`` and a shard down: every node answers
    CLUSTERDOWN. Everyone is served from their backups, nobody sees a 500 or loses a
    write, and Redis serves again once the shard is back."""
    for node in cluster.nodes:
        node.admin().config_set("cluster-require-full-coverage", "yes")
    try:
        people = browsers(9)
        for i, person in enumerate(people):
            person.write(i)
        cluster.kill_shard(0)
        wait_until_down(cluster)
        lost: list[dict[str, Any]] = []

        def on_lost(**kwargs: Any) -> None:
            lost.append(kwargs)

        signals.cache_lost.connect(on_lost)
        try:
            for round_ in range(4):
                for person in people:
                    person.write(10 * round_ + 1)
                    assert person.check()["degraded"] is True
                cool_down()
        finally:
            signals.cache_lost.disconnect(on_lost)
        # A breaker opens once per outage, not again at every cool-down (a PING answers
        # on a node that refuses every key).
        assert len(lost) <= 3, [s["node"] for s in lost]
    finally:
        cluster.restore()
        for node in cluster.nodes:
            node.admin().config_set("cluster-require-full-coverage", "no")
    for _ in range(3):
        cool_down()
        for person in people:
            person.check()
    for person in people:
        assert person.check()["degraded"] is False


def test_a_probe_that_may_not_ask_cluster_info_still_closes_the_breaker(
    cluster: LocalCluster,
) -> None:
    """A user whose ACL refuses ``CLUSTER INFO`` (a managed service may): the probe falls
    back to its ``PING``, so the node's breaker still closes once it answers."""
    for node in cluster.nodes:
        node.admin().execute_command(
            "ACL", "SETUSER", "sessions", "on", ">secret", "~*", "&*", "+@all", "-cluster|info"
        )
    try:
        urls = [f"redis://sessions:secret@{node.host}:{node.port}" for node in cluster.nodes]
        caches = other_worker(cluster)
        caches["default"]["LOCATION"] = urls
        with override_settings(CACHES=caches):
            reset_breakers()
            people = browsers(6)
            person = people[0]
            breaker = get_breaker("default", person.node(cluster).name)
            breaker.failed(ConnectionError("a hiccup"))
            assert person.check()["degraded"] is True
            cool_down()
            assert person.check()["degraded"] is False
            assert breaker.state == CLOSED
            pings = SessionCache().ping()
            assert all(error is None for _, error in pings.values()), pings
    finally:
        for node in cluster.nodes:
            node.admin().execute_command("ACL", "DELUSER", "sessions")


def test_breakers_do_not_pile_up_over_failovers(cluster: LocalCluster) -> None:
    """Masters killed and replaced, again and again: a breaker per live primary (and the
    alias's), not one per node that ever served."""
    people = browsers()
    for _ in range(2):
        groups = by_node(cluster, people)
        port = min(groups)
        master = cluster.node_at(port)
        cluster.kill(master)
        for person in people:
            person.check()
        cluster.wait_failover(master)
        cluster.revive(master)  # back as a replica of the new master
        cluster.wait_ok()
        for _round in range(3):
            cool_down()
            for person in people:
                person.check()
    primaries = {f"default@{m.host}:{m.port}" for m in cluster.masters()}
    assert set(all_breakers()) - {"default"} == primaries
    assert all(person.check()["degraded"] is False for person in people)
