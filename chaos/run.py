"""The chaos run: two app servers, one Redis (with Sentinel), one database, N users, faults.

:func:`main` starts everything (:mod:`chaos.infra`), lets the virtual users
(:mod:`chaos.load`) run, and injects the faults one after another; each fault is a phase
of the table: inject, hold, heal, then a settling time in which recovery problems still
count against it. It ends with a final check (every user reads back its latest value
from both servers, with Redis up and then down, every dead session is replayed again,
and the ledger is asked whether it agrees: every live login has an active row, no dead
session has one), prints the table per fault and exits 1 if any invariant broke.

The ledger faults (``db-readonly``, ``ledger-lock``, ``db-refused``, and ``db-down``,
which refuses connections during a Redis outage) hit the moments that need the ledger:
a few users log out just before the fault and log in while it lasts, the others log out
more often, the runner revokes some sessions during it (that must raise
``LedgerUnavailable`` and change nothing) and some once it is over (dead for good), and
dead sessions are replayed. Each is proved real by a fresh connection that must fail to
write, and healed only once one can write again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos import KNOWN_BUGS, stats, timeline
from chaos.infra import AppServer, Database, FaultUnavailable, InfraError, Topology
from chaos.load import SESSION_COOKIE, DeadSession, Replayer, VirtualUser, World
from chaos.stats import Recorder, percentile

#: Every fault, in the order a full run injects them: the ledger faults between Redis
#: faults, so that what they left (dead sessions, sessions a refusal kept alive) meets
#: Redis being emptied, hung and failed over afterwards.
FAULTS = (
    "kill",
    "db-readonly",
    "restart",
    "hang",
    "ledger-lock",
    "pause-write",
    "pause-all",
    "flushall",
    "db-refused",
    "revoke",
    "db-down",
    "hang-ledger-locked",
    "failover",
)
#: The short run (make test) leaves out the slowest faults.
SHORT_FAULTS = tuple(f for f in FAULTS if f not in ("pause-all", "hang-ledger-locked"))
#: Faults run only when asked for (``--faults``): each shows an open engine finding and
#: fails the run until the engine changes (then it belongs in FAULTS). None at present:
#: hang-ledger-locked (writes of a hang lost when Redis answered while the ledger's rows
#: could not be read) is fixed, and part of the full run.
EXTRA_FAULTS: tuple[str, ...] = ()
#: The faults during which the ledger cannot record a login, logout or revocation.
LEDGER_FAULTS = ("db-readonly", "ledger-lock", "db-refused", "db-down")


@dataclass
class Options:
    users: int = 50
    duration: float = 150.0
    db: str = "postgres"
    faults: tuple[str, ...] = FAULTS
    cooldown: float = 1.0
    seed: int = 1
    think: tuple[float, float] = (0.15, 0.45)
    logout_rate: float = 0.01
    known_bugs: bool = True
    keep: bool = False
    pg_name: str = "drs_chaos"
    engine_options: dict[str, Any] = field(default_factory=dict)
    #: Where the timeline chart goes ("": none).
    timeline: str = "test-artifacts/chaos-timeline.png"


@dataclass
class HangWindow:
    phase: str
    start: float
    end: float


@dataclass
class Runner:
    options: Options
    workdir: Path
    recorder: Recorder = field(default_factory=Recorder)
    hangs: list[HangWindow] = field(default_factory=list)
    world: World | None = None
    topology: Topology | None = None
    database: Database | None = None
    servers: list[AppServer] = field(default_factory=list)
    replayer: Replayer | None = None
    rng: random.Random = field(default_factory=random.Random)

    # timing ---------------------------------------------------------------------------------

    @property
    def hold(self) -> float:
        return max(3.0, self.options.duration / (2 * (len(self.options.faults) + 1)))

    @property
    def settle(self) -> float:
        return max(2.5, self.options.duration / (2 * (len(self.options.faults) + 1)))

    def log(self, message: str) -> None:
        print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)

    # setup ----------------------------------------------------------------------------------

    def start(self) -> None:
        options = self.options
        self.rng.seed(options.seed)
        redis_env = self.start_redis()
        self.database = Database(options.db, self.workdir, options.pg_name)
        self.database.create()
        env = {
            **self.database.env,
            **redis_env,
            "CHAOS_COOLDOWN": str(options.cooldown),
            "CHAOS_ENGINE_OPTIONS": json.dumps(options.engine_options),
            "CHAOS_SECURITY_LOG": str(self.workdir / "security.log"),
        }
        os.environ.update({k: v for k, v in env.items() if k != "CHAOS_SECURITY_LOG"})
        os.environ["DJANGO_SETTINGS_MODULE"] = "chaos.settings"
        import django

        django.setup()
        from django.contrib.auth.hashers import make_password
        from django.contrib.auth.models import User
        from django.core.management import call_command
        from django.db import connections

        call_command("migrate", verbosity=0)
        call_command("check", fail_level="ERROR")
        password = make_password(VirtualUser.PASSWORD)
        User.objects.bulk_create(
            [User(username=f"chaos-{i:03d}", password=password) for i in range(options.users)]
        )
        connections.close_all()
        self.servers = [AppServer(name, env, self.workdir) for name in ("a", "b")]
        for server in self.servers:
            server.start()
        for server in self.servers:
            server.wait_ready()
        self.log(
            f"{options.users} users, {options.db}, {self.describe_redis()}, "
            f"apps {' '.join(s.url for s in self.servers)}, workdir {self.workdir}"
        )

    def start_redis(self) -> dict[str, str]:
        """Start the Redis side of the run; returns the app servers' environment for it."""
        self.topology = Topology(self.workdir)
        self.topology.start()
        return self.topology.env

    def describe_redis(self) -> str:
        assert self.topology is not None
        return (
            f"Redis master :{self.topology.master.port} replica :{self.topology.replica.port} "
            f"sentinel :{self.topology.sentinel.port if self.topology.sentinel else '?'}"
        )

    def stop(self) -> None:
        if self.world is not None:
            self.world.stop.set()
            for user in self.world.users:
                user.join(timeout=20)
        if self.replayer is not None:
            self.replayer.join(timeout=20)
        for server in self.servers:
            server.stop()
        if self.database is not None:
            self.database.restore_if_down()
            try:
                from django.db import connections

                connections.close_all()
            except Exception:
                pass
            self.database.drop()
        if self.topology is not None:
            self.topology.close()

    # the run --------------------------------------------------------------------------------

    def run(self) -> int:
        options = self.options
        world = World(
            [s.url for s in self.servers],
            self.recorder,
            seed=options.seed,
            think=options.think,
            logout_rate=options.logout_rate,
            known_bugs=options.known_bugs,
            max_requests=max(20_000, int(options.users * options.duration * 30)),
        )
        self.world = world
        world.users = [VirtualUser(world, i) for i in range(options.users)]
        world.set_phase("startup (first logins)")
        for user in world.users:
            user.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(u.logged_in for u in world.users):
            self.wait(0.1)
        self.replayer = Replayer(world)
        self.replayer.start()
        self.phase("baseline")
        self.wait(self.settle + 1.0)
        faults = self.fault_table()
        for name in options.faults:
            if world.stop.is_set():
                break
            faults[name]()
        world.stop.set()
        for user in world.users:
            user.join(timeout=30)
        self.replayer.join(timeout=30)
        self.final_check()
        return self.report()

    def fault_table(self) -> dict[str, Callable[[], None]]:
        """Each fault's name (``--faults``) and the method that injects it."""
        return {
            "kill": self.fault_kill,
            "restart": self.fault_restart,
            "hang": self.fault_hang,
            "pause-write": lambda: self.fault_pause("WRITE"),
            "pause-all": lambda: self.fault_pause("ALL"),
            "flushall": self.fault_flushall,
            "revoke": self.fault_revoke,
            "db-readonly": self.fault_db_readonly,
            "ledger-lock": self.fault_ledger_lock,
            "db-refused": self.fault_db_refused,
            "db-down": self.fault_db_down,
            "failover": self.fault_failover,
            "hang-ledger-locked": self.fault_hang_ledger_locked,
        }

    def wait(self, seconds: float) -> None:
        assert self.world is not None
        self.world.stop.wait(seconds)

    def phase(self, name: str) -> None:
        assert self.world is not None
        self.log(f"phase: {name}")
        self.world.set_phase(name)

    def logged_in_users(self, count: int) -> list[VirtualUser]:
        assert self.world is not None
        candidates = [u for u in self.world.users if u.logged_in and not u.revoked]
        return self.rng.sample(candidates, min(count, len(candidates)))

    def request_logouts(self) -> None:
        """A few users log out in the middle of every fault: their cookies must stay dead."""
        if self.options.logout_rate <= 0:
            return
        for user in self.logged_in_users(max(2, self.options.users // 10)):
            user.logout_requested = True

    def hold_fault(self, seconds: float | None = None) -> None:
        assert self.world is not None
        seconds = self.hold if seconds is None else seconds
        self.wait(seconds / 3)
        self.request_logouts()
        self.world.replay_all_soon()
        self.wait(seconds / 3)
        self.world.replay_all_soon()
        self.wait(seconds / 3)

    def healed(self) -> None:
        assert self.world is not None
        self.recorder.mark(timeline.HEALED)
        self.world.replay_all_soon()
        self.wait(self.settle)

    # faults ---------------------------------------------------------------------------------

    def fault_kill(self) -> None:
        assert self.topology is not None
        self.phase("redis killed")
        node = self.topology.kill_master()
        self.hold_fault()
        self.topology.start_empty(node)
        self.healed()

    def fault_restart(self) -> None:
        assert self.topology is not None and self.world is not None
        self.phase("redis restarted empty")
        self.request_logouts()
        self.wait(0.5)
        self.topology.restart_master_empty()
        self.world.replay_all_soon()
        self.healed()

    def fault_hang(self) -> None:
        assert self.topology is not None
        self.phase("redis hung (SIGSTOP)")
        node = self.topology.hang_master()
        start = time.monotonic()
        self.hold_fault()
        node.resume()
        self.hangs.append(HangWindow("redis hung (SIGSTOP)", start, time.monotonic()))
        self.healed()

    def fault_pause(self, mode: str) -> None:
        assert self.topology is not None
        name = f"redis slowed (CLIENT PAUSE {mode})"
        self.phase(name)
        ms = int(self.hold * 1000)
        self.topology.pause_clients(ms, mode)
        self.hold_fault(ms / 1000)
        self.healed()

    def fault_flushall(self) -> None:
        assert self.topology is not None
        self.phase("FLUSHALL")
        self.request_logouts()
        self.wait(0.5)
        self.topology.flushall()
        self.healed()

    def fault_revoke(self) -> None:
        assert self.topology is not None and self.world is not None
        self.phase("revocation during outage")
        node = self.topology.kill_master()
        self.wait(0.5)
        victims = self.logged_in_users(max(1, self.options.users // 5))
        from django.db import connections

        from django_resilient_sessions.models import UserSession

        with self.world.quiesce(victims):
            now = time.monotonic()
            for user in victims:
                self.world.bury(
                    DeadSession(user.username, "revoked", user.cookies(), self.world.phase, now)
                )
                user.revoked = True
            names = [u.username for u in victims]
            revoked = UserSession.objects.filter(user__username__in=names).revoke()
            connections.close_all()
        self.recorder.note(self.world.phase).extra.append(
            f"{len(victims)} users revoked ({revoked} sessions) with Redis down"
        )
        self.hold_fault()
        self.topology.start_empty(node)
        self.healed()

    # ledger faults -------------------------------------------------------------------------

    def before_ledger_fault(self) -> None:
        """A few users log out now and stay out until the fault: their logins meet it."""
        assert self.world is not None
        if self.options.logout_rate <= 0:
            return
        until = time.monotonic() + 8.0
        for user in self.logged_in_users(max(2, self.options.users // 10)):
            user.stay_out_until = until
            user.logout_requested = True
        self.wait(0.8)

    def ledger_down(self, name: str, apply: Callable[[], str], *, db_down: bool = False) -> bool:
        """Apply a ledger fault with every user paused, prove it real, and flag it."""
        assert self.world is not None and self.database is not None
        with self.world.quiesce():
            try:
                how = apply()
            except FaultUnavailable as error:
                self.recorder.note(self.world.phase).extra.append(f"SKIPPED: {error}")
                self.log(f"{name} skipped: {error}")
                return False
            write, read = self.database.probe()
            self.world.ledger_fault = name
            self.world.db_down = db_down
        note = self.recorder.note(self.world.phase)
        note.extra.append(
            f"{how}; a fresh connection: write {'fails (' + write + ')' if write else 'WORKS'}, "
            f"read {'fails (' + read + ')' if read else 'works'}"
        )
        if write is None:
            self.world_violation(
                self.world.phase, stats.FAULT, f"{name}: a fresh connection can still write"
            )
        return True

    def ledger_up(self, heal: Callable[[], None]) -> None:
        """Heal with every user paused; the ledger must take writes again."""
        assert self.world is not None and self.database is not None
        with self.world.quiesce():
            heal()
            deadline = time.monotonic() + 10
            while (problem := self.database.probe()[0]) is not None:
                if time.monotonic() > deadline:
                    raise InfraError(f"the ledger did not heal: {problem}")
                time.sleep(0.1)
            self.world.ledger_fault = None
            self.world.db_down = False

    def revoke_some(self, *, ledger_down: bool) -> None:
        """Revoke a few logged-in users in the runner, as a site's admin would.

        With the ledger down it must raise ``LedgerUnavailable`` and change nothing (the
        victims stay logged in, checked once the fault is over); once it returned, the
        victims' sessions are dead for good (replayed from then on).
        """
        assert self.world is not None
        world = self.world
        victims = self.logged_in_users(max(1, self.options.users // 10))
        if not victims:
            return
        from django.db import connections

        from django_resilient_sessions.exceptions import LedgerUnavailable
        from django_resilient_sessions.models import UserSession

        phase = world.phase
        note = self.recorder.note(phase)
        with world.quiesce(victims):
            names = [u.username for u in victims]
            try:
                revoked = UserSession.objects.filter(user__username__in=names).revoke()
            except LedgerUnavailable as error:
                for user in victims:
                    user.confirm_alive = phase
                note.extra.append(
                    f"revocation of {len(victims)} users raised LedgerUnavailable "
                    f"({str(error).splitlines()[0][:80]})"
                )
                if not ledger_down:
                    self.world_violation(
                        phase, stats.ERROR, f"revocation raised with the ledger up: {error}"
                    )
                return
            finally:
                connections.close_all()
            now = time.monotonic()
            for user in victims:
                world.bury(DeadSession(user.username, "revoked", user.cookies(), phase, now))
                user.revoked = True
        note.extra.append(f"{len(victims)} users revoked ({revoked} sessions) with the ledger up")
        if ledger_down:
            self.world_violation(
                phase, stats.BYPASS, f"revocation of {names} returned while the ledger was down"
            )

    def hold_ledger_fault(self) -> None:
        self.wait(self.hold / 3)
        self.request_logouts()
        self.revoke_some(ledger_down=True)
        assert self.world is not None
        self.world.replay_all_soon()
        self.wait(self.hold / 3)
        self.world.replay_all_soon()
        self.wait(self.hold / 3)

    def fault_ledger(self, name: str, apply: Callable[[], str], heal: Callable[[], None]) -> None:
        """A ledger fault with Redis up: logins, logouts and revocations meet it."""
        self.phase(name)
        self.before_ledger_fault()
        if not self.ledger_down(name, apply):
            self.healed()
            return
        self.hold_ledger_fault()
        self.ledger_up(heal)
        self.revoke_some(ledger_down=False)
        self.healed()

    def fault_db_readonly(self) -> None:
        assert self.database is not None
        self.fault_ledger("DB read-only", self.database.make_read_only, self.database.make_writable)

    def fault_ledger_lock(self) -> None:
        assert self.database is not None
        self.fault_ledger(
            "ledger table locked", self.database.lock_ledger, self.database.unlock_ledger
        )

    def fault_db_refused(self) -> None:
        assert self.database is not None
        database = self.database

        def apply() -> str:
            database.take_down()
            return "connections refused (" + (
                "the SQLite file replaced by a directory)"
                if database.kind == "sqlite"
                else "ALLOW_CONNECTIONS false, backends terminated)"
            )

        self.fault_ledger("DB refused (Redis up)", apply, database.bring_up)

    def fault_db_down(self) -> None:
        """Connections refused during a Redis outage: logins wait for the ledger (fail closed)."""
        assert self.topology is not None and self.world is not None
        assert self.database is not None
        database = self.database
        self.phase("DB down during outage")
        self.before_ledger_fault()
        node = self.topology.kill_master()
        self.wait(0.5)

        def apply() -> str:
            database.take_down()
            return "connections refused, Redis down"

        self.ledger_down("DB down during outage", apply, db_down=True)
        # Dead sessions (logged out, revoked) while nothing can vouch for a login; logins,
        # logouts and a revocation that the ledger cannot record.
        self.hold_ledger_fault()
        self.ledger_up(database.bring_up)
        # Users come back while Redis is still down: their backups are vouched for again.
        self.revoke_some(ledger_down=False)
        self.wait(max(1.5, self.hold / 2))
        self.topology.start_empty(node)
        self.healed()

    def fault_hang_ledger_locked(self) -> None:
        """Redis comes back from a hang while the ledger table is locked.

        During the hang every save goes to the backup only, which grows newer than the
        Redis copy; when Redis answers again the newer backup needs the ledger to win
        ("present / newer / login" asks the row). With only the ledger's table locked, the
        purge queue is readable, the breaker closes, the row is unreadable, and the table
        says: serve the Redis copy and renew the backup from it. The run checks what the
        users then read.
        """
        assert self.topology is not None and self.world is not None
        assert self.database is not None
        database = self.database
        name = "redis back from a hang, ledger locked"
        self.phase(name)
        node = self.topology.hang_master()
        self.wait(self.hold)  # writes go to the backups only
        self.ledger_down(name, database.lock_ledger, db_down=True)
        self.wait(1.0)
        with self.world.quiesce():
            node.resume()
            # A worker still on backups withholds the login; one back on Redis serves it.
            self.world.db_down = False
            self.world.may_fail_closed = True
        self.hold_ledger_fault()
        self.ledger_up(database.unlock_ledger)
        with self.world.quiesce():
            self.world.may_fail_closed = False
        self.healed()

    def fault_failover(self) -> None:
        assert self.topology is not None and self.world is not None
        self.phase("sentinel failover")
        self.request_logouts()
        old, new, took = self.topology.failover()
        self.recorder.note(self.world.phase).extra.append(
            f"master :{old} -> :{new} promoted in {took:.1f} s"
        )
        self.world.replay_all_soon()
        self.wait(self.hold / 2)
        self.topology.rejoin_as_replica(old)
        self.healed()

    # the end --------------------------------------------------------------------------------

    def final_check(self) -> None:
        """Every user reads back, Redis up then down; every dead session is replayed."""
        assert self.world is not None and self.replayer is not None
        world = self.world
        dead = world.dead_sessions()
        for label, down in (("final check (Redis up)", False), ("final check (Redis down)", True)):
            self.phase(label)
            back = self.redis_down() if down else None
            threads = [threading.Thread(target=u.final_check, args=(label,)) for u in world.users]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            for item in dead:
                for url in world.urls:
                    self.replayer.replay(item, url)
            if back is not None:
                back()
        self.phase("final check (ledger)")
        self.ledger_agrees(dead)

    def redis_down(self) -> Callable[[], None]:
        """Take Redis away for the final check; returns what brings it back (empty)."""
        assert self.topology is not None
        topology = self.topology
        node = topology.kill_master()
        return lambda: topology.start_empty(node)

    def ledger_agrees(self, dead: list[DeadSession]) -> None:
        """Every live login has an active ledger row; no dead session (logged out with a
        200, revoked by a call that returned) has one: whatever the faults did, the
        ledger holds what the users were told."""
        assert self.world is not None
        from django.db import connections

        from django_resilient_sessions.cachecopy import hash_key
        from django_resilient_sessions.ledger import batches
        from django_resilient_sessions.models import UserSession

        def active(hashes: list[str]) -> set[tuple[str, str]]:
            found: set[tuple[str, str]] = set()
            for batch in batches(hashes):
                rows = UserSession.objects.active().filter(key_hash__in=list(batch))
                found.update(rows.values_list("key_hash", "user__username"))
            return found

        phase = self.world.phase
        live = {
            hash_key(key): user.username
            for user in self.world.users
            if user.logged_in and not user.revoked and (key := user.cookies().get(SESSION_COOKIE))
        }
        ended = {hash_key(key): item for item in dead if (key := item.cookies.get(SESSION_COOKIE))}
        try:
            rows = active(list(live))
            dead_rows = active(list(ended))
        finally:
            connections.close_all()
        for key_hash, name in live.items():
            if (key_hash, name) not in rows:
                self.world.violation(
                    phase, stats.LEDGER, name, "logged in, but its session has no active row"
                )
        for key_hash, _name in dead_rows:
            item = ended[key_hash]
            self.world.violation(
                phase,
                stats.LEDGER,
                item.who,
                f"{item.kind} session (ended in {item.phase!r}) still has an active row",
            )
        self.recorder.note(phase).extra.append(
            f"{len(live)} live logins, {len(rows)} with an active row; "
            f"{len(ended)} dead sessions, {len(dead_rows)} with an active row"
        )

    def hang_latency(self) -> None:
        """The breaker's promise while Redis hangs, counted after the hang's first second.

        At most one request per worker per cool-down waits for Redis (the breaker's
        probe, bounded by BREAKER_PROBE_TIMEOUT): a count, checked.  Latencies are
        reported beside it, never asserted: on a loaded machine they measure the
        machine, not the engine.
        """
        assert self.world is not None
        workers = 2 * len(self.servers)
        for window in self.hangs:
            samples = [
                s
                for s in self.recorder.samples
                if s.phase == window.phase
                and s.start >= window.start + 1.0
                and s.end <= window.end
                and s.kind != "replay"
            ]
            if not samples:
                continue
            logouts = [s for s in samples if s.kind == "logout"]
            waited = [s for s in samples if s.waited and s.kind != "logout"]
            allowed = workers * (math.ceil((window.end - window.start) / self.options.cooldown) + 1)
            p99_all = percentile([s.ms for s in samples], 99)
            note = self.recorder.note(window.phase)
            note.extra.append(
                f"after its first second: {len(samples)} requests, "
                f"p50 {percentile([s.ms for s in samples], 50):.0f} ms, p99 {p99_all:.0f} ms; "
                f"{len(waited)} waited for Redis (probes; at most {allowed}), "
                f"probe p99 {percentile([s.ms for s in waited], 99):.0f} ms; "
                f"{len(logouts)} logouts, p99 {percentile([s.ms for s in logouts], 99):.0f} ms; "
                "requests that did not wait: server-side p99 "
                f"{percentile([s.server_ms or 0.0 for s in samples if not s.waited], 99):.1f} ms"
            )
            if len(waited) > allowed:
                self.world_violation(
                    window.phase,
                    stats.LATENCY,
                    f"{len(waited)} requests waited for the hung Redis, more than one per "
                    f"worker per cool-down ({allowed})",
                )

    def world_violation(self, phase: str, kind: str, detail: str) -> None:
        assert self.world is not None
        self.world.violation(phase, kind, "-", detail)

    def dump_samples(self) -> None:
        """All samples as CSV in the work directory (kept when the run fails)."""
        with open(self.workdir / "samples.csv", "w") as out:
            out.write("phase,kind,start,end,ms,status,server_ms,waited,pid\n")
            for s in self.recorder.samples:
                out.write(
                    f"{s.phase},{s.kind},{s.start:.4f},{s.end:.4f},{s.ms:.1f},{s.status},"
                    f"{s.server_ms},{s.waited},{s.pid}\n"
                )
        with open(self.workdir / "windows.txt", "w") as out:
            for w in self.hangs:
                out.write(f"{w.phase},{w.start:.4f},{w.end:.4f}\n")

    def draw_timeline(self) -> None:
        if not self.options.timeline:
            return
        title = f"Chaos run: {self.options.users} users, {self.options.db}, " + ", ".join(
            self.options.faults
        )
        drawn = timeline.write(self.recorder, Path(self.options.timeline), title=title)
        self.log(f"timeline: {drawn}" if drawn else "timeline: not drawn (no matplotlib)")

    def abort(self, reason: str) -> int:
        """The run broke off (an exception): record it, stop the load, print the table."""
        if self.world is None:
            return 2
        self.world.violation(self.world.phase, stats.ABORTED, "-", reason)
        self.world.stop.set()
        time.sleep(1.0)  # let the users' last requests land in the table
        self.report()
        return 2

    def report(self) -> int:
        self.dump_samples()
        self.hang_latency()
        self.draw_timeline()
        recorder = self.recorder
        print()
        print("CHAOS TABLE")
        print(recorder.table())
        print(
            "errors: 5xx other than a due 503, no answer, unexpected status. 503 ok/bad: "
            "ledger refusals due (a login or logout while a ledger fault is in force, "
            "well-formed) / not due (any other 503). resurrections: a dead session (logout "
            "answered 200, revocation returned) answered as logged in. rollbacks: a read older "
            "than a value already read or acknowledged. Latencies are reported, not asserted."
        )
        print(
            "(+n KEY): occurrences of a known engine bug or documented risk "
            "(chaos.KNOWN_BUGS), reported, not counted as failures unless --no-known-bugs"
        )
        notes = recorder.notes_text()
        if notes:
            print()
            print("Notes:")
            print(notes)
        shown = sorted({key for n in recorder.notes.values() for key in n.known})
        if shown:
            print()
            print("Known engine bugs and risks that showed up (--no-known-bugs fails on them):")
            for key in shown:
                print(f"- {key}: {KNOWN_BUGS[key]}")
        violations = recorder.violations
        print()
        if violations:
            print(f"INVARIANTS BROKEN: {len(violations)}")
            by_kind: dict[str, int] = {}
            for v in violations:
                by_kind[v.kind] = by_kind.get(v.kind, 0) + 1
            print("  " + ", ".join(f"{k}: {n}" for k, n in sorted(by_kind.items())))
            for v in violations[:40]:
                print(f"  [{v.phase}] {v.kind}: {v.who}: {v.detail}")
            if len(violations) > 40:
                print(f"  ... and {len(violations) - 40} more")
            print("CHAOS RESULT: FAIL")
            return 1
        print("CHAOS RESULT: PASS (no invariant broke)")
        return 0


def main(options: Options, runner_class: type[Runner] = Runner) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="drs-chaos-"))
    runner = runner_class(options, workdir)

    def wedged() -> None:  # a wedged run must not hang CI forever, nor hide its table
        print("chaos: the run is wedged past its deadline; the table so far:", flush=True)
        with contextlib.suppress(Exception):
            print(runner.recorder.table(), flush=True)
        if runner.database is not None:
            runner.database.restore_if_down()  # (chattr -i: the directory stays removable)
        os._exit(3)

    deadline_guard = threading.Timer(options.duration * 4 + 300, wedged)
    deadline_guard.daemon = True
    deadline_guard.start()
    code = 2
    running = False
    try:
        started = time.monotonic()
        runner.start()
        running = True
        code = runner.run()
        runner.log(f"finished in {time.monotonic() - started:.0f} s")
    except InfraError as error:
        what = "a fault or check could not be carried out" if running else "setup failed"
        print(f"chaos: {what}: {error}", file=sys.stderr)
        if not running:
            for server in runner.servers:
                print(f"--- {server.name} log tail:\n{server.log_tail()}", file=sys.stderr)
        code = runner.abort(f"{what}: {error}") if running else 2
    except Exception as error:
        traceback.print_exc()
        code = runner.abort(f"{type(error).__name__}: {error}") if running else 2
    finally:
        if code != 0:
            for server in runner.servers:
                print(f"--- app server {server.name} log tail:\n{server.log_tail(60)}")
        runner.stop()
        deadline_guard.cancel()
        if options.keep or code != 0:
            print(f"chaos: logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code
