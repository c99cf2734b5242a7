"""The engine on a real Redis Cluster (3 masters, 1 replica each), through HTTP.

Every engine operation (login, read, write, logout, new key, revocation of many
sessions across slots, ``clearsessions``) on the cluster, and the session API itself, sync
and async (``aload``, ``asave``, ``acreate``, ``adelete``, ``acycle_key``, ``exists``,
``flush``, ``set_expiry``, a key collision refused by ``SET NX``); the cache adapter's
multi-key calls split by slot and ``clear()`` on every primary; the node named by the
``cache_lost`` and ``cache_recovered`` signals and the log lines; the key layout (a session's
key hash is its key's hash tag, so its queued deletion knows its slot); and the faults a
cluster adds: one shard down moves that shard's sessions to their backups and nobody
else's, a master killed is replaced by its replica and Redis serves again, a hung node
costs its own sessions only, slots migrate under requests (``ASK`` then ``MOVED``), the
whole cluster comes back empty. Each fault is followed by the invariants: nobody logged
out, no write lost, a logout during the fault stays a logout.

The cluster is started once for the module; each test starts from a healthy, empty
cluster. Deselect with ``-m "not cluster"``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.contrib.sessions.backends.base import CreateError
from django.core.cache import caches
from django.core.management import call_command
from django.test import Client, override_settings

from django_resilient_sessions import health, outbox, purges, signals, tracking
from django_resilient_sessions.backends.resilient import SessionStore
from django_resilient_sessions.breaker import CLOSED, all_breakers, get_breaker, reset_breakers
from django_resilient_sessions.cache import forget_clients
from django_resilient_sessions.cachecopy import TOMBSTONE, SessionCache
from django_resilient_sessions.models import PendingPurge, UserSession
from tests.redis_cluster import LocalCluster, LocalNode, keyslot
from tests.web import key_hash, login, make_user, ok, session_key, set_values

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

COOLDOWN = 0.3
USERS = 24  # enough that every shard serves some (each misses one with p = (2/3)^24 = 6e-5)
CLUSTER_CACHE = "django_resilient_sessions.cache.RedisClusterCache"


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


# -- helpers ------------------------------------------------------------------------------


class Browser:
    """One user's browser, and what the engine must keep for it."""

    def __init__(self, username: str) -> None:
        self.username = username
        self.client = Client()
        self.values: dict[str, str] = {}
        make_user(username)
        login(self.client, username)

    @property
    def key_hash(self) -> str:
        return key_hash(session_key(self.client))

    @property
    def redis_key(self) -> str:
        return SessionCache().entry_key(self.key_hash)

    def node(self, cluster: LocalCluster) -> LocalNode:
        return cluster.node_for_key(self.redis_key)

    def state(self) -> dict[str, Any]:
        body = ok(self.client.get("/state/"))
        return body

    def write(self, n: int) -> None:
        self.values["n"] = str(n)
        set_values(self.client, n=str(n))

    def check(self) -> dict[str, Any]:
        """Still logged in, with every acknowledged write; returns the answer."""
        body = self.state()
        assert body["user"] == self.username, (self.username, body)
        assert body["data"] == self.values, (self.username, body)
        return body


def browsers(n: int = USERS) -> list[Browser]:
    return [Browser(f"user{i}") for i in range(n)]


def by_node(cluster: LocalCluster, people: list[Browser]) -> dict[int, list[Browser]]:
    """Browsers grouped by the port of the master serving their session."""
    groups: dict[int, list[Browser]] = {}
    for person in people:
        groups.setdefault(person.node(cluster).port, []).append(person)
    assert len(groups) == 3, "every shard serves some sessions"
    return groups


def raw_get(cluster: LocalCluster, redis_key: str) -> bytes | None:
    with cluster.node_for_key(redis_key).client(decode_responses=False) as raw:
        value: bytes | None = raw.get(redis_key)
    return value


def open_breakers() -> list[str]:
    return sorted(name for name, b in all_breakers().items() if b.state != CLOSED)


def cool_down() -> None:
    import time

    time.sleep(COOLDOWN + 0.05)  # not an assertion: lets the breakers' cool-down pass


# -- every operation -----------------------------------------------------------------------


def test_every_engine_operation_on_the_cluster(cluster: LocalCluster) -> None:
    people = browsers(6)
    for i, person in enumerate(people):
        person.write(i)
        body = person.check()
        assert body["degraded"] is False
        # The session's copy is on the master serving its slot, under its hash tag.
        raw = raw_get(cluster, person.redis_key)
        assert raw is not None and raw != TOMBSTONE
        assert "{" + person.key_hash + "}" in person.redis_key
        assert keyslot(person.redis_key) == outbox.slot_of(person.key_hash)

    # A new key at login (cycle_key) moves the session; the old key is a tombstone.
    visitor = Client()
    set_values(visitor, cart="3")
    old_key = SessionCache().entry_key(key_hash(session_key(visitor)))
    assert raw_get(cluster, old_key) not in (None, TOMBSTONE)
    make_user("visitor")
    login(visitor, "visitor")
    new_key = SessionCache().entry_key(key_hash(session_key(visitor)))
    assert new_key != old_key
    assert raw_get(cluster, old_key) == TOMBSTONE
    assert ok(visitor.get("/state/"))["data"] == {"cart": "3"}
    first = people[0]

    # Logout: the copy becomes a tombstone, a replay of the cookies is anonymous.
    second = people[1]
    second_key = second.redis_key
    stolen = {name: m.value for name, m in second.client.cookies.items()}
    ok(second.client.post("/logout/"))
    assert raw_get(cluster, second_key) == TOMBSTONE
    thief = Client()
    for name, value in stolen.items():
        thief.cookies[name] = value
    assert ok(thief.get("/whoami/"))["user"] is None

    # Revoking many sessions at once: one batch of tombstones, grouped per node.
    rest = people[2:]
    hashes = [person.key_hash for person in rest]
    assert len({person.node(cluster).port for person in rest}) >= 1
    ended = tracking.end(hashes, "revoked")
    assert ended == len(rest)
    for person in rest:
        assert raw_get(cluster, person.redis_key) == TOMBSTONE
        assert ok(person.client.get("/whoami/"))["user"] is None
    assert PendingPurge.objects.count() == 0  # every node took its deletions

    # clearsessions on the cluster: nothing queued, nothing left to do.
    call_command("clearsessions", stdout=StringIO())
    # exists() answers from the cluster.
    store = SessionCache()
    assert store.read(first.key_hash).state.name == "PRESENT"

    # sessionstats names each node of the cluster.
    out = StringIO()
    call_command("sessionstats", "--json", stdout=out)
    stats = json.loads(out.getvalue())["cache"]
    assert sorted(n["name"] for n in stats["nodes"]) == sorted(
        f"default@{m.host}:{m.port}" for m in cluster.masters()
    )
    assert stats["reachable"] is True


def test_system_checks_accept_the_cluster_backend() -> None:
    out = StringIO()
    call_command("check", stdout=out)
    assert "django_resilient_sessions.E007" not in out.getvalue()
    assert "django_resilient_sessions.W001" not in out.getvalue()


# -- a breaker per node ------------------------------------------------------------------------


def test_a_shard_down_moves_its_own_sessions_to_backups_only(cluster: LocalCluster) -> None:
    people = browsers()
    for i, person in enumerate(people):
        person.write(i)
    groups = by_node(cluster, people)
    down_port = min(groups)
    down = cluster.node_at(down_port)
    cluster.kill_shard([m.port for m in cluster.masters()].index(down_port))

    for round_ in range(3):
        for person in people:
            person.write(100 * round_ + len(person.username))
            body = person.check()
            on_down_shard = person in groups[down_port]
            # Only the down shard's sessions come from their backups.
            assert body["degraded"] is on_down_shard, (person.username, body)
    assert open_breakers() == [f"default@{down.host}:{down.port}"]
    snapshot = health.snapshot()["breakers"]
    assert snapshot[f"default@{down.host}:{down.port}"]["node"] == f"{down.host}:{down.port}"

    # A logout on the down shard: refused from its backup at once, queued with its slot.
    leaving = groups[down_port][0]
    digest = leaving.key_hash
    stolen = {name: m.value for name, m in leaving.client.cookies.items()}
    ok(leaving.client.post("/logout/"))
    queued = PendingPurge.objects.get()
    assert (queued.key_hash, queued.slot) == (digest, outbox.slot_of(digest))
    # The other nodes' breakers stay closed although a deletion is queued: it is not theirs.
    cool_down()
    for person in people:
        if person is not leaving and person not in groups[down_port]:
            assert person.check()["degraded"] is False

    cluster.restore()  # the shard is back (empty: its master and replica were killed)
    cool_down()
    for person in people:
        if person is leaving:
            continue
        person.check()
    replay = Client()
    for name, value in stolen.items():
        replay.cookies[name] = value
    assert ok(replay.get("/whoami/"))["user"] is None
    assert PendingPurge.objects.count() == 0  # the drain tombstoned it
    for person in people:
        if person is not leaving:
            assert person.check()["degraded"] is False


def test_the_queued_deletion_knows_its_slot_and_holds_only_its_node(
    cluster: LocalCluster,
) -> None:
    people = browsers()
    groups = by_node(cluster, people)
    down_port = min(groups)
    leaving = groups[down_port][0]
    digest = leaving.key_hash
    shard = [m.port for m in cluster.masters()].index(down_port)
    cluster.kill_shard(shard)
    ok(leaving.client.post("/logout/"))
    entry = PendingPurge.objects.get()
    assert entry.key_hash == digest and entry.slot == outbox.slot_of(digest)
    # Another process learns of it (PURGE_CHECK_INTERVAL): it holds that node only.
    reset_breakers()
    with override_settings(
        RESILIENT_SESSIONS={"BREAKER_COOLDOWN": COOLDOWN, "PURGE_CHECK_INTERVAL": 0}
    ):
        PendingPurge.objects.update(in_flight=False)
        others = [p for port, group in groups.items() if port != down_port for p in group]
        for person in others:
            assert person.check()["degraded"] is False
        down = cluster.node_at(down_port)
        assert open_breakers() == [f"default@{down.host}:{down.port}"]
        # Another node has a hiccup: its breaker opens, and closes at its next probe,
        # the deletion queued for the down shard notwithstanding (not its slots).
        other = others[0].node(cluster)
        get_breaker("default", f"{other.host}:{other.port}").failed(ConnectionError("hiccup"))
        assert others[0].check()["degraded"] is True
        cool_down()
        assert others[0].check()["degraded"] is False
        assert PendingPurge.objects.count() == 1
    assert UserSession.objects.get(key_hash=digest).end_reason == "logout"


def test_a_master_killed_is_replaced_and_redis_serves_again(cluster: LocalCluster) -> None:
    people = browsers()
    for i, person in enumerate(people):
        person.write(i)
    groups = by_node(cluster, people)
    port = min(groups)
    master = cluster.node_at(port)
    cluster.kill(master)
    for person in people:
        person.write(1000 + len(person.username))
        person.check()  # served from backups on that shard while the replica takes over
    promoted = cluster.wait_failover(master)
    cool_down()
    for _ in range(2):
        for person in people:
            body = person.check()
        cool_down()
    for person in groups[port]:
        body = person.check()
        assert body["degraded"] is False
        assert person.node(cluster) is promoted
    # The dead master's breaker is gone with it (it serves no slots): the process is healthy.
    assert open_breakers() == []
    assert f"default@{master.host}:{master.port}" not in health.snapshot()["breakers"]


def test_a_dead_masters_breaker_goes_when_redis_py_refreshed_the_slot_map(
    cluster: LocalCluster,
) -> None:
    """redis-py refreshes its slot map by itself (after an error, on the next command to
    any node): the engine's own probe then never runs for the dead master, whose breaker
    must still go once a slot it served is seen on its new owner."""
    people = browsers()
    for i, person in enumerate(people):
        person.write(i)
    groups = by_node(cluster, people)
    port = min(groups)
    master = cluster.node_at(port)
    cluster.kill(master)
    for person in groups[port]:
        person.write(2000)  # opens the dead master's breaker
    assert open_breakers() == [f"default@{master.host}:{master.port}"]
    promoted = cluster.wait_failover(master)
    SessionCache().redis.client().nodes_manager.initialize()  # redis-py's refresh, not ours
    for person in groups[port]:
        body = person.check()
        assert body["degraded"] is False
        assert person.node(cluster) is promoted
    assert open_breakers() == []
    assert health.snapshot()["healthy"] is True


def test_a_hung_node_costs_its_own_sessions_only(cluster: LocalCluster) -> None:
    people = browsers()
    groups = by_node(cluster, people)
    port = min(groups)
    node = cluster.node_at(port)
    cluster.pause(node)
    try:
        for person in people:
            person.write(7)
            assert person.check()["degraded"] is (person in groups[port])
        assert open_breakers() == [f"default@{node.host}:{node.port}"]
    finally:
        cluster.resume(node)
    cluster.wait_ok()
    cool_down()
    for person in people:
        person.check()
    cool_down()
    for person in people:
        assert person.check()["degraded"] is False


def test_sessions_keep_working_while_their_slot_migrates(cluster: LocalCluster) -> None:
    people = browsers(6)
    person = people[0]
    person.write(1)
    slot = keyslot(person.redis_key)
    source = person.node(cluster)
    target = next(m for m in cluster.masters() if m is not source)
    with cluster.begin_migration(slot, target) as migration:
        # Open, no key moved: the source still answers for the key.
        person.write(2)
        person.check()
        migration.move_keys()
        # Keys on the target, slot still open: the source answers -ASK.
        person.write(3)
        assert person.check()["degraded"] is False
    # Finished: the source answers -MOVED, the client follows and learns the new owner.
    person.write(4)
    assert person.check()["degraded"] is False
    assert person.node(cluster) is target
    assert raw_get(cluster, person.redis_key) not in (None, TOMBSTONE)
    redis_key = person.redis_key
    ok(person.client.post("/logout/"))
    assert raw_get(cluster, redis_key) == TOMBSTONE
    assert open_breakers() == []


def test_slots_resharded_under_requests(cluster: LocalCluster) -> None:
    people = browsers(12)
    for i, person in enumerate(people):
        person.write(i)
    masters = cluster.masters()
    cluster.reshard(300, masters[0], masters[1])
    for person in people:
        person.write(50)
        assert person.check()["degraded"] is False


def test_the_whole_cluster_back_empty(cluster: LocalCluster) -> None:
    people = browsers(9)
    for i, person in enumerate(people):
        person.write(i)
    cluster.restart_empty()
    for _ in range(3):
        for person in people:
            person.check()
        cool_down()
    for person in people:
        person.write(99)
        body = person.check()
        assert body["degraded"] is False
        assert raw_get(cluster, person.redis_key) not in (None, TOMBSTONE)  # written back


def test_no_cluster_at_all_serves_everyone_from_backups(cluster: LocalCluster) -> None:
    people = browsers(3)
    for person in people:
        person.write(5)
    for node in list(cluster.nodes):
        cluster.kill(node)
    forget_clients()
    reset_breakers()
    try:
        # A process that starts now: its cluster client cannot even be made.
        with override_settings(CACHES=dict(settings.CACHES)):
            for person in people:
                person.write(6)
                assert person.check()["degraded"] is True
            # The alias's breaker keeps requests from asking for the slot map again
            # before its cool-down.
            assert get_breaker("default").state != CLOSED
            skipped = health.snapshot()["counters"]["cache_skipped"]
            people[0].check()
            assert health.snapshot()["counters"]["cache_skipped"] > skipped
    finally:
        cluster.restore()
    cool_down()
    for _ in range(2):
        for person in people:
            person.check()
        cool_down()
    assert all(person.check()["degraded"] is False for person in people)


def test_a_logout_while_a_master_is_down_stays_a_logout_after_its_replica_takes_over(
    cluster: LocalCluster,
) -> None:
    people = browsers()
    groups = by_node(cluster, people)
    port = min(groups)
    master = cluster.node_at(port)
    leaving = groups[port][0]
    redis_key = leaving.redis_key
    stolen = {name: m.value for name, m in leaving.client.cookies.items()}
    master.admin().execute_command("WAIT", 1, 5000)  # the replica has the copy
    cluster.kill(master)
    ok(leaving.client.post("/logout/"))  # its Redis copy cannot be deleted: queued
    assert PendingPurge.objects.count() == 1

    def replay() -> Any:
        thief = Client()
        for name, value in stolen.items():
            thief.cookies[name] = value
        return ok(thief.get("/whoami/"))["user"]

    assert replay() is None
    # The replica, which holds the session's copy from before the logout, takes over.
    promoted = cluster.wait_failover(master)
    with promoted.client(decode_responses=False) as raw:
        assert raw.get(redis_key) not in (None, TOMBSTONE)  # the copy survived the failover
    for _ in range(4):
        assert replay() is None
        for person in groups[port][1:]:
            person.check()
        cool_down()
    # The queued deletion reached the new master; the others are served from Redis again.
    with promoted.client(decode_responses=False) as raw:
        assert raw.get(redis_key) == TOMBSTONE
    assert PendingPurge.objects.count() == 0
    for person in groups[port][1:]:
        assert person.check()["degraded"] is False


def test_a_revocation_from_a_process_that_missed_the_failover_reaches_the_new_master(
    cluster: LocalCluster,
) -> None:
    """A process whose breaker for a dead master is open, and whose slot map still names
    it, revokes a session of its slots after the replica took over (the chaos run's
    runner, an admin's process): the tombstone must reach the promoted replica, which
    holds the session's copy and which the other processes already trust."""
    people = browsers()
    groups = by_node(cluster, people)
    port = min(groups)
    master = cluster.node_at(port)
    victim = groups[port][0]
    victim.write(1)
    redis_key = victim.redis_key
    master.admin().execute_command("WAIT", 1, 5000)  # the replica has the copy
    cluster.kill(master)
    victim.write(2)  # opens the dead master's breaker; this process's map still names it
    assert f"default@{master.host}:{master.port}" in open_breakers()
    promoted = cluster.wait_failover(master)
    with promoted.client(decode_responses=False) as raw:
        assert raw.get(redis_key) not in (None, TOMBSTONE)  # the copy the replica holds
    assert tracking.end([victim.key_hash], "revoked") == 1
    with promoted.client(decode_responses=False) as raw:
        assert raw.get(redis_key) == TOMBSTONE
    assert PendingPurge.objects.count() == 0  # done at once, not left for a drain
    assert ok(victim.client.get("/whoami/"))["user"] is None


def test_a_process_started_while_a_master_is_down_serves_the_other_shards(
    cluster: LocalCluster,
) -> None:
    """A process started while a master is down (a new worker, an admin's shell) makes its
    cluster client then. redis-py gives up on the first node that refuses unless it may
    retry: the process must still reach the other shards, or its logouts and revocations
    there would only be queued while the other processes serve those sessions from Redis."""
    people = browsers()
    groups = by_node(cluster, people)
    port = min(groups)
    dead = cluster.node_at(port)
    alive = [p for node_port, group in groups.items() if node_port != port for p in group]
    cluster.kill(dead)
    caches = dict(settings.CACHES)
    # The dead node first in LOCATION (redis-py asks the first ones first).
    others = [node.url for node in cluster.nodes if node is not dead]
    caches["default"] = {**caches["default"], "LOCATION": [dead.url, *others]}
    forget_clients()
    reset_breakers()
    with override_settings(CACHES=caches):  # a new process's caches
        assert SessionCache().read(alive[0].key_hash).state.name == "PRESENT"
        assert open_breakers() == []
        leaving = alive[1]
        assert tracking.end([leaving.key_hash], "revoked") == 1
        assert raw_get(cluster, leaving.redis_key) == TOMBSTONE
    assert PendingPurge.objects.count() == 0


# -- the session API, sync and async, on the cluster ----------------------------------------


def copy_of(cluster: LocalCluster, session_key: str) -> bytes | None:
    """The raw Redis value of a session (on the master serving its slot)."""
    return raw_get(cluster, SessionCache().entry_key(key_hash(session_key)))


def ttl_ms(cluster: LocalCluster, session_key: str) -> int:
    redis_key = SessionCache().entry_key(key_hash(session_key))
    with cluster.node_for_key(redis_key).client() as raw:
        return int(raw.pttl(redis_key))


def test_the_async_session_api_on_the_cluster(cluster: LocalCluster) -> None:
    async def scenario() -> None:
        store = SessionStore()
        await store.aset("cart", "1")
        await store.aset_expiry(300)
        await store.asave()
        first = store.session_key or ""
        assert await store.aexists(first) is True
        assert 295_000 < await sync_to_async(ttl_ms)(cluster, first) <= 300_000
        assert await SessionStore(first).aload() == {"cart": "1", "_session_expiry": 300}
        assert await SessionStore(first).aget_expiry_age() == 300

        await store.acycle_key()  # the new key's slot is (most likely) on another node
        second = store.session_key or ""
        assert second != first
        assert await sync_to_async(copy_of)(cluster, first) == TOMBSTONE
        assert await SessionStore(second).aget("cart") == "1"
        assert await store.aexists(first) is False

        await store.aflush()
        assert store.session_key is None
        assert await sync_to_async(copy_of)(cluster, second) == TOMBSTONE
        assert await SessionStore(second).aload() == {}

        made = SessionStore()
        await made.acreate()
        third = made.session_key or ""
        assert await made.aexists(third) is True
        await made.adelete(third)
        assert await made.aexists(third) is False
        assert await sync_to_async(copy_of)(cluster, third) == TOMBSTONE

    async_to_sync(scenario)()
    assert open_breakers() == []


def test_exists_flush_and_set_expiry_on_the_cluster(cluster: LocalCluster) -> None:
    store = SessionStore()
    store["cart"] = "2"
    store.set_expiry(120)
    store.save()
    key = store.session_key or ""
    assert store.exists(key) is True
    assert 115_000 < ttl_ms(cluster, key) <= 120_000
    store.set_expiry(600)
    store.save()
    assert 595_000 < ttl_ms(cluster, key) <= 600_000
    assert SessionStore(key).get_expiry_age() == 600
    store.flush()
    assert store.exists(key) is False
    assert copy_of(cluster, key) == TOMBSTONE
    assert SessionStore(key).load() == {}


def test_a_key_collision_on_the_cluster_is_refused_and_another_key_taken(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = SessionStore()
    taken["owner"] = "first"
    taken.save()
    key = taken.session_key or ""
    before = copy_of(cluster, key)

    # SET NX on the slot's master: a save that must create refuses a key in use.
    with pytest.raises(CreateError):
        SessionStore(key).save(must_create=True)
    assert copy_of(cluster, key) == before

    # create() meets the collision and draws again.
    fresh = "fresh0123456789abcdefghijklmnopq"
    keys = iter([key, fresh])
    monkeypatch.setattr(SessionStore, "_get_new_session_key", lambda self: next(keys))
    other = SessionStore()
    other["owner"] = "second"
    other.create()
    other.save()
    assert other.session_key == fresh
    assert copy_of(cluster, key) == before  # the first session's copy is untouched
    assert SessionStore(key).load() == {"owner": "first"}
    assert SessionStore(fresh).load() == {"owner": "second"}


# -- signals and logs name the node ----------------------------------------------------------


def test_signals_and_logs_name_the_node(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    people = browsers()
    groups = by_node(cluster, people)
    port = min(groups)
    node = cluster.node_at(port)
    person = groups[port][0]
    lost: list[dict[str, Any]] = []
    recovered: list[dict[str, Any]] = []

    def on_lost(**kwargs: Any) -> None:
        lost.append(kwargs)

    def on_recovered(**kwargs: Any) -> None:
        recovered.append(kwargs)

    signals.cache_lost.connect(on_lost)
    signals.cache_recovered.connect(on_recovered)
    replicas = cluster.replicas_of(node)
    for replica in replicas:  # a hang, not a failover: the node comes back as itself
        replica.admin().config_set("cluster-replica-no-failover", "yes")
    try:
        cluster.pause(node)
        try:
            with caplog.at_level("ERROR", logger="django_resilient_sessions"):
                assert person.check()["degraded"] is True
        finally:
            cluster.resume(node)
        cool_down()
        assert person.check()["degraded"] is False
    finally:
        signals.cache_lost.disconnect(on_lost)
        signals.cache_recovered.disconnect(on_recovered)
        for replica in replicas:
            replica.admin().config_set("cluster-replica-no-failover", "no")
    name = f"{node.host}:{node.port}"
    assert [(s["alias"], s["node"]) for s in lost] == [("default", name)]
    assert "Timeout" in type(lost[0]["error"]).__name__
    assert [(s["alias"], s["node"]) for s in recovered] == [("default", name)]
    assert recovered[0]["downtime"] > 0
    failed = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert failed and all(f"'default@{name}'" in message for message in failed), failed


# -- the cache adapter's multi-key calls -----------------------------------------------------


def test_the_adapter_splits_multi_key_calls_by_slot_and_clears_every_primary(
    cluster: LocalCluster,
) -> None:
    cache = caches["default"]
    data = {f"item-{i}": {"n": i} for i in range(30)}
    redis_keys = {name: cache.make_key(name) for name in data}
    assert len({cluster.node_for_key(k).port for k in redis_keys.values()}) == 3
    cache.set_many(data, timeout=60)
    assert cache.get_many([*data, "missing"]) == data
    for name, redis_key in redis_keys.items():
        assert raw_get(cluster, redis_key) is not None, name
    gone = list(data)[:10]
    cache.delete_many(gone)
    assert cache.get_many(list(data)) == {k: v for k, v in data.items() if k not in gone}
    cache.set_many({name: 0 for name in gone}, timeout=0)  # Django: timeout 0 deletes
    assert cache.get_many(gone) == {}

    people = browsers(3)
    assert cache.clear() is True  # FLUSHDB on every primary
    for master in cluster.masters():
        assert master.admin().dbsize() == 0
    for person in people:  # their Redis copies went with it: back from their backups
        person.check()
        assert raw_get(cluster, person.redis_key) not in (None, TOMBSTONE)


def test_exportsessions_finish_deletes_every_copy_on_every_shard(cluster: LocalCluster) -> None:
    """The last step of leaving, on a cluster: a SCAN per master deletes every copy (logins
    and anonymous sessions, on every shard); a tombstone stays."""
    people = browsers(12)
    visitor = Client()
    set_values(visitor, cart="3")
    gone = people.pop()
    ended = gone.redis_key
    ok(gone.client.post("/logout/"))
    copies = [p.redis_key for p in people] + [
        SessionCache().entry_key(key_hash(session_key(visitor)))
    ]
    by_node(cluster, people)  # (every shard holds some)
    db = "django.contrib.sessions.backends.db"
    out = StringIO()
    with override_settings(SESSION_ENGINE=db):
        call_command("exportsessions", "--to", db, "--finish", stdout=out)
    assert out.getvalue().startswith(
        f"Ledger rows ended: {len(people)}; Redis copies deleted: {len(copies)}; "
    )
    assert all(raw_get(cluster, key) is None for key in copies)
    assert raw_get(cluster, ended) == TOMBSTONE
    assert not UserSession.objects.active().exists()
