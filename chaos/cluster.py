"""The chaos run against a real Redis Cluster: ``python -m chaos cluster`` (``make chaos-cluster``).

The same run as :mod:`chaos.run` (two gunicorn app servers, N virtual users checking every
answer, dead sessions replayed, the final check and the ledger's agreement), with the
session cache on a private cluster of three masters and three replicas
(:class:`tests.redis_cluster.LocalCluster`, ``cluster-require-full-coverage no``: the setting
docs/cluster.md asks for) through :class:`django_resilient_sessions.cache.RedisClusterCache`.
The faults, each with logouts and revocations while it lasts:

``kill-master``    a master SIGKILLed; its replica takes its slots over; the old master
                   comes back as a replica.
``shard-down``     a master and its replica SIGKILLed: a third of the slots has no node;
                   both come back empty. Only that shard's sessions may go to their
                   backups: the share of requests served from backups while it lasts must
                   lie in :data:`SHARE_BAND`.
``reshard``        slots moved to another master and back by ``redis-cli --cluster
                   reshard`` under load (``ASK`` during each slot's migration, ``MOVED``
                   after it).
``hang-node``      a master SIGSTOPped; its replica is told not to fail over, so that the
                   fault stays a hang (the kill fault is the failover).
``restart-empty``  every node killed, then the cluster made again, empty, on the same ports.

The final check's "Redis down" half kills every node, and the cluster is made again
afterwards. The table is the standard one, whose "from backup" column is the share of
requests (replays aside) served from their backups.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from chaos import stats
from chaos.infra import InfraError
from chaos.load import SESSION_COOKIE
from chaos.run import HangWindow, Options, Runner
from chaos.run import main as run_main
from tests.redis_cluster import ClusterFixtureError, LocalCluster, LocalNode

CLUSTER_FAULTS = ("kill-master", "shard-down", "reshard", "hang-node", "restart-empty")
#: The short run (make test) keeps every fault: each is what a cluster adds.
SHORT_CLUSTER_FAULTS = CLUSTER_FAULTS

#: While one shard of three is down, the share of requests served from backups. One
#: shard serves a third of the slots, so about a third of the sessions, each picked
#: uniformly: with U users on it out of N, U follows Binomial(N, 1/3), and the band
#: [10%, 60%] holds all but 6e-5 of its mass for N = 50 and 3e-4 for N = 40 (the short
#: run); everyone (100%, as if the engine had one breaker for the whole cluster) and
#: no one (0%, the shard's sessions not moved to their backups) are both far outside it.
#: Requests, not users, are counted: users send requests at the same mean rate.
SHARE_BAND = (0.10, 0.60)
SHARE = "backup share out of band"

#: Slots moved by the reshard fault (each way): about a sixth of a shard's.
RESHARD_SLOTS = 900

T = TypeVar("T")


@dataclass
class ClusterRunner(Runner):
    """:class:`chaos.run.Runner` with a Redis Cluster and the cluster's faults."""

    local: LocalCluster | None = None

    # Redis side ---------------------------------------------------------------------------

    def start_redis(self) -> dict[str, str]:
        try:
            self.local = LocalCluster(masters=3, replicas_per_master=1).start()
        except ClusterFixtureError as error:
            raise InfraError(f"the Redis Cluster did not start: {error}") from error
        return {
            "CHAOS_REDIS_CLUSTER": ",".join(self.local.urls),
            # No ledger fault here: SQLite's lock waits (a revocation's transaction, the
            # versions degraded requests record) need not fail fast (chaos.settings).
            "CHAOS_SQLITE_TIMEOUT": "5",
        }

    def describe_redis(self) -> str:
        local = self.cluster
        masters = local.masters()
        replicas = [node for master in masters for node in local.replicas_of(master)]
        return (
            "Redis Cluster masters "
            + " ".join(f":{node.port}" for node in masters)
            + " replicas "
            + " ".join(f":{node.port}" for node in replicas)
        )

    @property
    def cluster(self) -> LocalCluster:
        assert self.local is not None
        return self.local

    def stop(self) -> None:
        super().stop()
        if self.local is not None:
            self.local.stop()

    def redis_down(self) -> Callable[[], None]:
        """Every node killed for the final check; brought back as a new, empty cluster."""
        for node in self.cluster.nodes:
            self.cluster.kill(node)
        return lambda: self.checked("the cluster made again", self.cluster.restart_empty)

    def fault_table(self) -> dict[str, Callable[[], None]]:
        return {
            "kill-master": self.fault_kill_master,
            "shard-down": self.fault_shard_down,
            "reshard": self.fault_reshard,
            "hang-node": self.fault_hang_node,
            "restart-empty": self.fault_restart_empty,
        }

    # helpers ------------------------------------------------------------------------------

    def note(self, text: str) -> None:
        assert self.world is not None
        self.recorder.note(self.world.phase).extra.append(text)

    def pick_master(self) -> tuple[int, LocalNode]:
        """A shard picked by the run's seeded generator, and its master."""
        masters = self.cluster.masters()
        index = self.rng.randrange(len(masters))
        return index, masters[index]

    def during(self, seconds: float | None = None) -> None:
        """Hold a fault: logouts, then revocations, and replays of dead sessions, in it."""
        assert self.world is not None
        seconds = self.hold if seconds is None else seconds
        self.wait(seconds / 3)
        self.request_logouts()
        self.revoke_some(ledger_down=False)
        self.world.replay_all_soon()
        self.wait(seconds / 3)
        self.world.replay_all_soon()
        self.wait(seconds / 3)

    def sessions_on(self, node: LocalNode) -> tuple[int, int]:
        """(users whose session lives on ``node``'s slots, users with a session)."""
        assert self.world is not None
        from django_resilient_sessions.cachecopy import hash_key
        from django_resilient_sessions.outbox import slot_of

        slots = self.cluster.slots_of(node)
        keys = [key for u in self.world.users if (key := u.cookies().get(SESSION_COOKIE))]
        on = sum(
            1 for key in keys if any(start <= slot_of(hash_key(key)) <= end for start, end in slots)
        )
        return on, len(keys)

    def checked(self, what: str, action: Callable[[], T]) -> T:
        """Run a fixture action; its failure is the infrastructure's, not the engine's."""
        try:
            return action()
        except ClusterFixtureError as error:
            raise InfraError(f"{what}: {error}") from error

    # faults -------------------------------------------------------------------------------

    def fault_kill_master(self) -> None:
        self.phase("master killed (replica promoted)")
        _, master = self.pick_master()
        started = time.monotonic()
        self.cluster.kill(master)
        self.during(self.hold / 2)
        promoted = self.checked("failover", lambda: self.cluster.wait_failover(master))
        self.note(
            f"master :{master.port} killed; its replica :{promoted.port} served its slots "
            f"{time.monotonic() - started:.1f} s later"
        )
        self.during(self.hold / 2)
        self.cluster.revive(master)
        self.checked("the old master rejoining", self.cluster.wait_ok)
        self.healed()

    def fault_shard_down(self) -> None:
        assert self.world is not None
        phase = "shard down (master and replica)"
        self.phase(phase)
        index, master = self.pick_master()
        on, total = self.sessions_on(master)
        members = self.cluster.kill_shard(index)
        started = time.monotonic()
        self.during()
        ended = time.monotonic()
        self.checked("the shard coming back", self.cluster.restore)
        self.note(
            "killed " + " and ".join(f":{node.port}" for node in members) + f" ({on} of "
            f"{total} sessions on its slots when it went down); both back empty"
        )
        self.check_share(phase, started, ended)
        self.healed()

    def check_share(self, phase: str, started: float, ended: float) -> None:
        samples = [
            s
            for s in self.recorder.samples
            if s.phase == phase and s.kind != "replay" and started <= s.start and s.end <= ended
        ]
        share = stats.backup_share(samples)
        low, high = SHARE_BAND
        self.note(
            f"while it was down: {len(samples)} requests, {share:.0%} served from backups "
            f"(band {low:.0%}-{high:.0%})"
        )
        if not samples or not low <= share <= high:
            self.world_violation(
                phase,
                SHARE,
                f"{share:.0%} of {len(samples)} requests served from backups while one shard "
                f"of three was down (expected {low:.0%}-{high:.0%})",
            )

    def fault_reshard(self) -> None:
        assert self.world is not None
        self.phase("slots resharded under load")
        masters = self.cluster.masters()
        source, target = self.rng.sample(masters, 2)
        slots = RESHARD_SLOTS if self.options.duration >= 60 else RESHARD_SLOTS // 3
        errors: list[BaseException] = []

        def reshard() -> None:
            try:
                self.cluster.reshard(slots, source, target)
                self.cluster.reshard(slots, target, source)
            except BaseException as error:  # reported by the runner's thread below
                errors.append(error)

        started = time.monotonic()
        worker = threading.Thread(target=reshard, name="chaos-reshard", daemon=True)
        worker.start()
        self.wait(min(1.0, self.hold / 3))
        self.request_logouts()
        self.revoke_some(ledger_down=False)
        while worker.is_alive() and not self.world.stop.is_set():
            self.world.replay_all_soon()
            self.wait(0.5)
        worker.join(timeout=300)
        if errors:
            raise InfraError(f"redis-cli --cluster reshard failed: {errors[0]}")
        self.note(
            f"{slots} slots :{source.port} -> :{target.port}, then {slots} back, "
            f"in {time.monotonic() - started:.1f} s"
        )
        self.healed()

    def fault_hang_node(self) -> None:
        phase = "node hung (SIGSTOP)"
        self.phase(phase)
        _, master = self.pick_master()
        replicas = self.cluster.replicas_of(master)
        for replica in replicas:  # a hang, not a failover (kill-master is the failover)
            replica.admin().config_set("cluster-replica-no-failover", "yes")
        self.cluster.pause(master)
        started = time.monotonic()
        try:
            self.during()
        finally:
            self.cluster.resume(master)
            self.hangs.append(HangWindow(phase, started, time.monotonic()))
            for replica in replicas:
                replica.admin().config_set("cluster-replica-no-failover", "no")
        self.note(f"master :{master.port} paused for {time.monotonic() - started:.1f} s")
        self.checked("the hung node coming back", self.cluster.wait_ok)
        self.healed()

    def fault_restart_empty(self) -> None:
        assert self.world is not None
        self.phase("cluster restarted empty")
        self.request_logouts()
        self.wait(0.5)
        for node in self.cluster.nodes:
            self.cluster.kill(node)
        started = time.monotonic()
        self.revoke_some(ledger_down=False)
        self.world.replay_all_soon()
        self.wait(self.hold / 2)
        down = time.monotonic() - started
        self.checked("the cluster made again", self.cluster.restart_empty)
        self.note(
            f"every node down for {down:.1f} s; the cluster made again, empty, "
            f"{time.monotonic() - started - down:.1f} s later"
        )
        self.world.replay_all_soon()
        self.healed()


def main(options: Options) -> int:
    return run_main(options, ClusterRunner)
