"""The engine on a real Redis Cluster (3 masters, 1 replica each), through HTTP.

Every engine operation (login, read, write, logout, new key, revocation of many
sessions across slots, ``clearsessions``) on the cluster; the key layout (a session's
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
from django.conf import settings
from django.core.management import call_command
from django.test import Client, override_settings

from django_resilient_sessions import health, outbox, purges, tracking
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
