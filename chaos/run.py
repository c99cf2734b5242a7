"""The chaos run: two app servers, one Redis (with Sentinel), one database, N users, faults.

:func:`main` starts everything (:mod:`chaos.infra`), lets the virtual users
(:mod:`chaos.load`) run, and injects the faults one after another; each fault is a phase
of the table: inject, hold, heal, then a settling time in which recovery problems still
count against it. It ends with a final check (every user reads back its latest value
from both servers, with Redis up and then down, and every dead session is replayed
again), prints the table per fault and exits 1 if any invariant broke.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos import KNOWN_BUGS, stats
from chaos.infra import AppServer, Database, InfraError, Topology
from chaos.load import DeadSession, Replayer, VirtualUser, World
from chaos.stats import Recorder, percentile

#: Every fault, in the order a full run injects them.
FAULTS = (
    "kill",
    "restart",
    "hang",
    "pause-write",
    "pause-all",
    "flushall",
    "revoke",
    "db-down",
    "failover",
)
SHORT_FAULTS = tuple(f for f in FAULTS if f != "pause-all")


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
        self.topology = Topology(self.workdir)
        self.topology.start()
        self.database = Database(options.db, self.workdir, options.pg_name)
        self.database.create()
        env = {
            **self.database.env,
            **self.topology.env,
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
            f"{options.users} users, {options.db}, Redis master :{self.topology.master.port} "
            f"replica :{self.topology.replica.port} sentinel "
            f":{self.topology.sentinel.port if self.topology.sentinel else '?'}, "
            f"apps {' '.join(s.url for s in self.servers)}, workdir {self.workdir}"
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
        faults: dict[str, Callable[[], None]] = {
            "kill": self.fault_kill,
            "restart": self.fault_restart,
            "hang": self.fault_hang,
            "pause-write": lambda: self.fault_pause("WRITE"),
            "pause-all": lambda: self.fault_pause("ALL"),
            "flushall": self.fault_flushall,
            "revoke": self.fault_revoke,
            "db-down": self.fault_db_down,
            "failover": self.fault_failover,
        }
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

    def fault_db_down(self) -> None:
        assert self.topology is not None and self.world is not None
        assert self.database is not None
        self.phase("DB down during outage")
        node = self.topology.kill_master()
        self.wait(0.5)
        with self.world.quiesce():
            self.database.take_down()
            self.world.db_down = True
        self.wait(self.hold / 2)
        # Dead sessions (logged out, revoked) while nothing can vouch for a login.
        self.world.replay_all_soon()
        self.wait(self.hold / 2)
        with self.world.quiesce():
            self.database.bring_up()
            self.world.db_down = False
        # Users come back while Redis is still down: their backups are vouched for again.
        self.wait(max(1.5, self.hold / 2))
        self.topology.start_empty(node)
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
        assert self.world is not None and self.topology is not None
        assert self.replayer is not None
        world = self.world
        dead = world.dead_sessions()
        for label, down in (("final check (Redis up)", False), ("final check (Redis down)", True)):
            self.phase(label)
            node = self.topology.kill_master() if down else None
            threads = [threading.Thread(target=u.final_check, args=(label,)) for u in world.users]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            for item in dead:
                for url in world.urls:
                    self.replayer.replay(item, url)
            if node is not None:
                self.topology.start_empty(node)

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

    def report(self) -> int:
        self.dump_samples()
        self.hang_latency()
        recorder = self.recorder
        print()
        print("CHAOS TABLE")
        print(recorder.table())
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


def main(options: Options) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="drs-chaos-"))
    runner = Runner(options, workdir)
    deadline_guard = threading.Timer(
        options.duration * 4 + 300, lambda: os._exit(3)
    )  # a wedged run must not hang CI forever
    deadline_guard.daemon = True
    deadline_guard.start()
    code = 2
    try:
        started = time.monotonic()
        runner.start()
        code = runner.run()
        runner.log(f"finished in {time.monotonic() - started:.0f} s")
    except InfraError as error:
        print(f"chaos: setup failed: {error}", file=sys.stderr)
        for server in runner.servers:
            print(f"--- {server.name} log tail:\n{server.log_tail()}", file=sys.stderr)
        code = 2
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
