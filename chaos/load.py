"""The virtual users and the replayer, and the invariants they check after every request.

Each :class:`VirtualUser` is a thread with its own ``requests.Session`` (its own cookie
jar). It logs in, reads its session, writes numbered values (``n=1, 2, 3...``), sends
every request to the other app server than the last one, and now and then logs out and
back in. After every answer it checks:

- no 5xx, no unanswered request, no unexpected status;
- the answer names the expected user: logged in while it should be, anonymous while it
  should be. The one window where a logged-in user *must* look anonymous is the
  "database down during a Redis outage" fault (fail closed); the runner flips
  :attr:`World.db_down` only while every user is paused between requests, so every
  request is entirely inside or outside that window;
- every acknowledged write is read back: a read shows the latest acknowledged ``n``
  (or a value written by a request that got no answer).

A logged-out or revoked session's cookies go to the replay pool; the :class:`Replayer`
sends them again on a schedule (and whenever the runner asks, e.g. in the middle of an
outage): they must come back anonymous every time.
"""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import requests

from chaos import stats
from chaos.stats import Recorder, Sample, Violation

HTTP_TIMEOUT = 15.0
#: Seconds after a session's death at which its cookies are replayed, then every REPLAY_EVERY.
REPLAY_SCHEDULE = (0.05, 0.3, 1.0, 2.0, 4.0, 8.0)
REPLAY_EVERY = 20.0


@dataclass
class DeadSession:
    who: str
    kind: str  # "logout" or "revoked"
    cookies: dict[str, str]
    phase: str
    died: float
    due: list[float] = field(default_factory=list)
    replays: int = 0

    def __post_init__(self) -> None:
        self.due = [self.died + delay for delay in REPLAY_SCHEDULE]

    @property
    def header(self) -> str:
        return "; ".join(f"{name}={value}" for name, value in self.cookies.items())

    def next_due(self) -> float:
        return self.due[0] if self.due else self.died + REPLAY_EVERY * (self.replays + 1)


class World:
    """What the users, the replayer and the runner share."""

    def __init__(
        self,
        urls: list[str],
        recorder: Recorder,
        *,
        seed: int,
        think: tuple[float, float],
        logout_rate: float,
        known_bugs: bool,
        max_requests: int,
    ) -> None:
        self.urls = urls
        self.recorder = recorder
        self.seed = seed
        self.think = think
        self.logout_rate = logout_rate
        self.known_bugs = known_bugs
        self.max_requests = max_requests
        self.phase = "startup"
        self.db_down = False
        self.stop = threading.Event()
        self.users: list[VirtualUser] = []
        self.replayer_lock = threading.Lock()
        self._dead: list[DeadSession] = []
        self._dead_lock = threading.Lock()
        self._requests = 0
        self._count_lock = threading.Lock()

    # phases and pauses ----------------------------------------------------------------------

    def set_phase(self, name: str) -> None:
        self.recorder.phase_started(name)
        self.phase = name

    @contextlib.contextmanager
    def quiesce(self, users: list[VirtualUser] | None = None) -> Iterator[None]:
        """Hold these users (default: all, and the replayer) between two requests."""
        chosen = self.users if users is None else users
        locks = [u.lock for u in sorted(chosen, key=lambda u: u.index)]
        if users is None:
            locks.insert(0, self.replayer_lock)
        with contextlib.ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock)
            yield

    def count_request(self) -> None:
        with self._count_lock:
            self._requests += 1
            if self._requests >= self.max_requests:
                self.stop.set()

    # replay pool ----------------------------------------------------------------------------

    def bury(self, dead: DeadSession) -> None:
        with self._dead_lock:
            self._dead.append(dead)

    def dead_sessions(self) -> list[DeadSession]:
        with self._dead_lock:
            return list(self._dead)

    def replay_all_soon(self, limit: int = 150) -> None:
        """Schedule the most recent ``limit`` dead sessions for a replay now."""
        now = time.monotonic()
        with self._dead_lock:
            for dead in self._dead[-limit:]:
                dead.due.insert(0, now)

    def due_replays(self, now: float, limit: int) -> list[DeadSession]:
        with self._dead_lock:
            due = [d for d in self._dead if d.next_due() <= now]
        due.sort(key=lambda d: d.next_due())
        return due[:limit]

    # requests -------------------------------------------------------------------------------

    def violation(self, phase: str, kind: str, who: str, detail: str) -> None:
        self.recorder.violation(Violation(phase, kind, who, detail, time.monotonic()))


def _int(headers: Any, name: str) -> int:
    try:
        return int(headers.get(name, "0"))
    except ValueError:
        return 0


def _float(headers: Any, name: str) -> float | None:
    try:
        return float(headers[name])
    except (KeyError, ValueError):
        return None


def send(
    world: World,
    http: Any,
    kind: str,
    method: str,
    url: str,
    who: str,
    **kwargs: Any,
) -> tuple[dict[str, Any] | None, requests.Response | None, str]:
    """One request, recorded; returns (JSON body or None on error, response, phase)."""
    phase = world.phase
    world.count_request()
    start = time.monotonic()
    try:
        response = http.request(method, url, timeout=HTTP_TIMEOUT, allow_redirects=False, **kwargs)
    except requests.RequestException as error:
        end = time.monotonic()
        world.recorder.sample(Sample(phase, kind, start, end, 0, None, 0))
        world.violation(phase, stats.ERROR, who, f"{kind} {url}: no answer ({error!r})")
        return None, None, phase
    end = time.monotonic()
    world.recorder.sample(
        Sample(
            phase,
            kind,
            start,
            end,
            response.status_code,
            _float(response.headers, "X-Chaos-Ms"),
            _int(response.headers, "X-Chaos-Waited"),
            _int(response.headers, "X-Chaos-Pid"),
        )
    )
    if response.status_code != 200:
        world.violation(
            phase,
            stats.ERROR,
            who,
            f"{kind} {url}: HTTP {response.status_code} "
            f"{response.headers.get('X-Chaos-Exception') or ''} {_brief(response.text)}",
        )
        return None, response, phase
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        world.violation(phase, stats.ERROR, who, f"{kind} {url}: not JSON {_brief(response.text)}")
        return None, response, phase
    return body, response, phase


def _brief(text: str) -> str:
    """A short, one-line view of a response body (the title of an HTML error page)."""
    title = re.search(r"<title>(.*?)</title>", text, re.S)
    line = title.group(1) if title else text
    return repr(" ".join(line.split())[:120])


def _where(response: requests.Response | None, body: dict[str, Any] | None) -> str:
    if response is None:
        return ""
    parts = [f"pid={response.headers.get('X-Chaos-Pid')}"]
    parts.append(f"breaker={response.headers.get('X-Chaos-Breaker')}")
    if body:
        parts.append(f"degraded={body.get('degraded')} source={body.get('source')}")
    return " ".join(parts)


class VirtualUser(threading.Thread):
    PASSWORD = "chaos-password"

    def __init__(self, world: World, index: int) -> None:
        super().__init__(name=f"chaos-user-{index}", daemon=True)
        self.world = world
        self.index = index
        self.username = f"chaos-{index:03d}"
        self.rng = random.Random(world.seed * 1000 + index)
        self.http = requests.Session()
        self.http.headers["User-Agent"] = f"drs-chaos/1.0 (user {index})"
        self.lock = threading.Lock()
        self.turn = index % 2
        self.logged_in = False
        self.n = 0
        self.acked: str | None = None  # latest acknowledged value of "n" (None: none)
        self.maybe: set[str] = set()  # values sent by writes that got no answer
        self.resync = False  # expectations unknown after an error: take the next read
        #: Set by the runner: this user's sessions were revoked.
        self.revoked = False
        #: Set by the runner: log out at the next step.
        self.logout_requested = False
        #: A write was saved while this login was withheld by fail-closed (DB-down window):
        #: the next request after the window checks that the login came back.
        self.failclosed_write = False

    # plumbing -----------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        base = self.world.urls[self.turn]
        self.turn = (self.turn + 1) % len(self.world.urls)
        return base + path

    def _send(
        self, kind: str, method: str, path: str, **kwargs: Any
    ) -> tuple[dict[str, Any] | None, requests.Response | None, str]:
        body, response, phase = send(
            self.world, self.http, kind, method, self._url(path), self.username, **kwargs
        )
        if body is None:
            self.resync = True
        return body, response, phase

    def cookies(self) -> dict[str, str]:
        return {c.name: c.value for c in self.http.cookies if c.value is not None}

    def _violation(self, phase: str, kind: str, detail: str) -> None:
        self.world.violation(phase, kind, self.username, detail)

    # the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        while not self.world.stop.is_set():
            with self.lock:
                if self.world.stop.is_set():
                    break
                self.step()
            time.sleep(self.rng.uniform(*self.world.think))

    def step(self) -> None:
        world = self.world
        if self.revoked:
            self.after_revocation()
        elif self.failclosed_write and not world.db_down:
            self.read()  # first thing after the database returns: is the login back?
        elif not self.logged_in:
            if world.db_down:
                self.read()  # logging in needs the database: a real user would wait too
            else:
                self.login()
        elif not world.db_down and (self.logout_requested or self.rng.random() < world.logout_rate):
            self.logout()
        elif self.rng.random() < 0.5:
            self.write()
        else:
            self.read()

    # actions ------------------------------------------------------------------------------

    def login(self) -> None:
        data = {"username": self.username, "password": self.PASSWORD}
        body, _response, phase = self._send("login", "POST", "login/", data=data)
        if body is None:
            return
        if body.get("user") != self.username:
            self._violation(phase, stats.ERROR, f"login answered {body!r}")
            return
        self.logged_in = True

    def logout(self) -> None:
        before = self.cookies()
        body, _response, phase = self._send("logout", "POST", "logout/")
        if body is None:
            return
        self.logged_in = False
        self.logout_requested = False
        self.acked = None
        self.maybe.clear()
        self.world.bury(DeadSession(self.username, "logout", before, phase, time.monotonic()))

    def write(self) -> None:
        self.n += 1
        value = str(self.n)
        db_down = self.world.db_down
        body, response, phase = self._send("set", "POST", "set/", data={"n": value})
        if body is None or body.get("ok") is not True:
            self.maybe.add(value)
            return
        self.check_user(body, response, phase, db_down)
        if db_down and body.get("user") is None and self.logged_in:
            # Saved while the login was withheld: it must still come back afterwards.
            self.failclosed_write = True
        self.acked = value
        self.maybe.clear()

    def read(self) -> None:
        db_down = self.world.db_down
        body, response, phase = self._send("state", "GET", "state/")
        if body is None:
            return
        self.check_user(body, response, phase, db_down)
        self.check_data(body, response, phase)

    def after_revocation(self) -> None:
        """The first request after the runner revoked this user's sessions."""
        body, response, phase = self._send("state", "GET", "state/")
        if body is None:
            return
        self.revoked = False
        self.logged_in = False
        self.acked = None
        self.maybe.clear()
        if body.get("user") is not None:
            self._violation(
                phase,
                stats.REPLAY,
                f"revoked session still answers as {body.get('user')} {_where(response, body)}",
            )
        if body.get("data"):
            self._violation(
                phase,
                stats.REPLAY,
                f"revoked session's data still served: {body['data']!r} {_where(response, body)}",
            )

    # invariants ---------------------------------------------------------------------------

    def check_user(
        self,
        body: dict[str, Any],
        response: requests.Response | None,
        phase: str,
        db_down: bool,
    ) -> None:
        user = body.get("user")
        where = _where(response, body)
        if user is not None and user != self.username:
            self._violation(phase, stats.WRONG_USER, f"answered as {user!r} {where}")
            return
        if not self.logged_in:
            if user is not None:
                self._violation(phase, stats.WRONG_USER, f"logged in while logged out {where}")
            return
        if db_down:
            if user is None:
                self.world.recorder.note(phase).fail_closed_anonymous += 1
            else:
                self._violation(phase, stats.FAIL_OPEN, f"login trusted without the DB {where}")
            return
        if user == self.username:
            if self.failclosed_write:
                # Wrote while its login was withheld: the login must come back all the same.
                self.failclosed_write = False
                self.world.recorder.note(phase).logins_back += 1
            return
        detail = "after writing while the database was down " if self.failclosed_write else ""
        self.failclosed_write = False
        self._violation(phase, stats.LOGOUT, f"anonymous {detail}{where}")
        self.logged_in = False

    def check_data(
        self, body: dict[str, Any], response: requests.Response | None, phase: str
    ) -> None:
        got = (body.get("data") or {}).get("n")
        if self.resync:
            self.resync = False
            self.acked, self.maybe = got, set()
            return
        if got == self.acked:
            return
        if got in self.maybe:
            self.acked, self.maybe = got, set()
            return
        self._violation(
            phase,
            stats.LOST_WRITE,
            f"read n={got!r}, last acknowledged n={self.acked!r} {_where(response, body)}",
        )
        self.acked, self.maybe = got, set()

    def final_check(self, label: str) -> None:
        """A last read (the runner calls it with the load stopped)."""
        with self.lock:
            for _ in self.world.urls:
                self.read()


class Replayer(threading.Thread):
    """Sends dead sessions' cookies again; any logged-in answer is a violation."""

    def __init__(self, world: World, per_tick: int = 25) -> None:
        super().__init__(name="chaos-replayer", daemon=True)
        self.world = world
        self.per_tick = per_tick
        self.rng = random.Random(world.seed)

    def run(self) -> None:
        while not self.world.stop.is_set():
            with self.world.replayer_lock:
                now = time.monotonic()
                for dead in self.world.due_replays(now, self.per_tick):
                    if self.world.stop.is_set():
                        break
                    self.replay(dead)
                    if dead.due:
                        dead.due.pop(0)
                    else:
                        dead.replays += 1
            time.sleep(0.05)

    def replay(self, dead: DeadSession, url: str | None = None) -> None:
        world = self.world
        target = url or self.rng.choice(world.urls)
        headers = {
            "Cookie": dead.header,
            "User-Agent": "drs-chaos/1.0 (replay)",
            "X-Chaos-Replay": "1",
        }
        body, response, phase = send(
            world, requests, "replay", "GET", target + "state/", dead.who, headers=headers
        )
        world.recorder.replay_sent(phase)
        if body is None:
            return
        user = body.get("user")
        pending = response is not None and response.headers.get("X-Chaos-Pending-Purge") == "1"
        if user is not None and world.known_bugs and pending and body.get("source") == "cache":
            # Served from a Redis copy whose deletion is queued: documented risk R1.
            note = world.recorder.note(phase)
            note.stale_copies += 1
            note.known["R1"] = (
                f"{note.stale_copies} replays of ended sessions answered as logged in from "
                "a Redis copy whose deletion was still queued"
            )
        elif user is not None:
            world.violation(
                phase,
                stats.REPLAY,
                dead.who,
                f"{dead.kind} session (ended in {dead.phase!r}) answered as "
                f"{body.get('user')!r} {_where(response, body)}",
            )
        if body.get("data") and user is None:
            note = world.recorder.note(phase)
            note.replays_with_data += 1
            if len(note.examples) < 3:
                note.examples.append(
                    f"{dead.kind} session of {dead.who} (ended in {dead.phase!r}) served "
                    f"data {body['data']!r} {_where(response, body)}"
                )
