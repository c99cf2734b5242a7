"""The virtual users and the replayer, and the invariants they check after every request.

Each :class:`VirtualUser` is a thread with its own ``requests.Session`` (its own cookie
jar). It logs in, reads its session, writes numbered values (``n=1, 2, 3...``, before
logging in too: anonymous data), sends every request to the other app server than the
last one, and now and then logs out and back in. Half the users ask for JSON
(``Accept: application/json``), half for HTML. After every answer it checks:

- no 5xx, no unanswered request, no unexpected status. The one 5xx that may be due is a
  ledger refusal (HTTP 503, ``Retry-After``, JSON ``{"ok": false, "error":
  "ledger_unavailable"}`` or an HTML page), and only on a login or a logout while a
  ledger fault is active (:attr:`World.ledger_fault`): a 503 anywhere else, or on a read
  or a write (activity updates are best-effort), is counted as not due;
- the answer names the expected user: logged in while it should be, anonymous while it
  should be. The one window where a logged-in user *must* look anonymous is the
  "database down during a Redis outage" fault (fail closed). The runner flips
  :attr:`World.db_down` and :attr:`World.ledger_fault` only while every user is paused
  between requests, so every request is entirely inside or outside a fault;
- every acknowledged write is read back: a read shows the latest acknowledged ``n`` (or a
  value written by a request that got no answer); an older one is a rollback, anything
  else a lost write;
- a login answered 503 is no login: the next answer is anonymous and still holds the
  anonymous data; a logout answered 503 (or a revocation that raised in the runner)
  changed nothing: the session is logged in, with its data, once the fault is over, and
  its cookies were left alone; neither is a dead session. A login, logout or revocation
  that *succeeds* while the ledger cannot record it is a violation too.

A logged-out (answered 200) or revoked (returned) session's cookies go to the replay pool;
the :class:`Replayer` sends them again on a schedule (and whenever the runner asks, e.g.
in the middle of an outage): they must come back anonymous every time, whatever fault
comes after.
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
#: The kinds of request a ledger refusal (503) may answer, while a ledger fault is active.
REFUSABLE = ("login", "logout")
#: Seconds a user waits before trying again after a refused login or logout.
RETRY_AFTER = (1.0, 3.0)
SESSION_COOKIE = "sessionid"
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
        #: A login *may* be withheld (fail closed) in this window, not must: Redis is back
        #: while the ledger is unreadable, and a worker still on backups withholds it.
        self.may_fail_closed = False
        #: The ledger fault in force (None: the ledger answers); see the module docstring.
        self.ledger_fault: str | None = None
        #: The chance a step logs out while a ledger fault is in force.
        self.fault_logout_rate = 0.0 if logout_rate <= 0 else max(5 * logout_rate, 0.05)
        self.stop = threading.Event()
        self.users: list[VirtualUser] = []
        self.replayer_lock = threading.Lock()
        self.pause_replays = threading.Event()
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
        """Hold these users (default: all, and the replayer) between two requests.

        They are asked to pause first, so that each finishes at most the request it is
        in (during a ledger fault a request may take a second or two) while the locks
        are taken one by one.
        """
        chosen = self.users if users is None else users
        locks = [u.lock for u in sorted(chosen, key=lambda u: u.index)]
        if users is None:
            locks.insert(0, self.replayer_lock)
            self.pause_replays.set()
        for user in chosen:
            user.paused = True
        try:
            with contextlib.ExitStack() as stack:
                for lock in locks:
                    stack.enter_context(lock)
                yield
        finally:
            for user in chosen:
                user.paused = False
            self.pause_replays.clear()

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
    fault = world.ledger_fault
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
            response.headers.get("X-Chaos-Source", ""),
        )
    )
    if response.status_code == 503:
        problem = _refusal_problem(response, kwargs.get("headers") or http_headers(http))
        if problem is None and fault is not None and kind in REFUSABLE:
            world.recorder.note(phase).refused[kind] += 1
        else:
            why = problem or (f"on a {kind}" if fault is not None else "with the ledger up")
            world.violation(
                phase,
                stats.NOT_DUE_503,
                who,
                f"{kind} {url}: HTTP 503 {why} "
                f"{response.headers.get('X-Chaos-Exception') or ''} {_brief(response.text)}",
            )
        return None, response, phase
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


def http_headers(http: Any) -> dict[str, str]:
    headers = getattr(http, "headers", None)
    return dict(headers) if headers is not None else {}


def _refusal_problem(response: requests.Response, sent: dict[str, str]) -> str | None:
    """What is wrong with a 503 as a ledger refusal (None: a well-formed one)."""
    if not response.headers.get("Retry-After"):
        return "without Retry-After"
    wants_json = str(sent.get("Accept", "")).startswith("application/json")
    content_type = response.headers.get("Content-Type", "")
    if not wants_json:
        return None if content_type.startswith("text/html") else f"not HTML ({content_type})"
    try:
        body = response.json()
    except ValueError:
        return f"not JSON ({content_type})"
    if not isinstance(body, dict) or body.get("ok") is not False:
        return f"JSON without ok=false: {body!r}"[:160]
    if body.get("error") != "ledger_unavailable":
        return f"JSON error {body.get('error')!r}, not 'ledger_unavailable'"
    return None


def refused(response: requests.Response | None) -> bool:
    """Answered 503: the engine says nothing changed (due or not, counted by send())."""
    return response is not None and response.status_code == 503


def set_cookies(response: requests.Response) -> list[tuple[str, str, bool]]:
    """The cookies a response sets, as (name, value, deleted)."""
    raw = getattr(response.raw, "headers", None)
    lines: list[str] = list(raw.getlist("Set-Cookie")) if raw is not None else []
    found = []
    for line in lines:
        first, _, attributes = line.partition(";")
        name, _, value = first.strip().partition("=")
        attrs = attributes.lower().replace(" ", "")
        deleted = value.strip('"') == "" or "max-age=0" in attrs or "1970" in attrs
        found.append((name, value.strip('"'), deleted))
    return found


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


def _older(got: Any, acked: Any) -> bool:
    """Is ``got`` a value written before ``acked``?"""
    try:
        return int(got) < int(acked)
    except (TypeError, ValueError):
        return False


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
        if index % 2 == 0:
            # Half the users ask for JSON: a ledger refusal answers them in JSON, the
            # others with an HTML page.
            self.http.headers["Accept"] = "application/json"
        self.lock = threading.Lock()
        #: Set by World.quiesce(): take no new step (the runner is taking the lock).
        self.paused = False
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
        #: Set by the runner: log out, then stay logged out until a ledger fault is in
        #: force (or until this time), so that logins meet the fault.
        self.stay_out_until = 0.0
        #: No login (logout) attempt before this time: the last one was refused.
        self.login_retry_at = 0.0
        self.logout_retry_at = 0.0
        #: A login was refused (503) in this phase: the next read must be anonymous, with
        #: the anonymous data.
        self.confirm_anonymous: str | None = None
        #: A logout was refused (503) or a revocation raised, in this phase: the first
        #: read once the fault is over must be logged in, with the data.
        self.confirm_alive: str | None = None

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
        if body is None and not refused(response):
            self.resync = True  # (a refusal changed nothing: expectations stand)
        return body, response, phase

    def cookies(self) -> dict[str, str]:
        return {c.name: c.value for c in self.http.cookies if c.value is not None}

    def _violation(self, phase: str, kind: str, detail: str) -> None:
        self.world.violation(phase, kind, self.username, detail)

    # the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        while not self.world.stop.is_set():
            if self.paused:
                time.sleep(0.005)
                continue
            with self.lock:
                if self.world.stop.is_set():
                    break
                self.step()
            time.sleep(self.rng.uniform(*self.world.think))

    def step(self) -> None:
        world = self.world
        now = time.monotonic()
        fault = world.ledger_fault
        if self.revoked:
            self.after_revocation()
        elif self.confirm_anonymous is not None:
            self.read()  # right after a refused login: anonymous, data kept?
        elif self.confirm_alive is not None and fault is None and not world.db_down:
            self.read()  # the fault is over: still logged in, data kept?
        elif self.failclosed_write and not (world.db_down or world.may_fail_closed):
            self.read()  # first thing after the database returns: is the login back?
        elif not self.logged_in:
            if fault is not None:
                self.stay_out_until = 0.0
            waiting = now < max(self.stay_out_until, self.login_retry_at)
            if waiting or (self.acked is None and self.rng.random() < 0.5):
                # Anonymous data first (a refused login must keep it), or wait a moment.
                self.write() if self.rng.random() < 0.5 else self.read()
            else:
                self.login()
        elif now >= self.logout_retry_at and (
            self.logout_requested
            or self.rng.random() < (world.fault_logout_rate if fault else world.logout_rate)
        ):
            self.logout()
        elif self.rng.random() < 0.5:
            self.write()
        else:
            self.read()

    # actions ------------------------------------------------------------------------------

    def login(self) -> None:
        data = {"username": self.username, "password": self.PASSWORD}
        fault = self.world.ledger_fault
        body, response, phase = self._send("login", "POST", "login/", data=data)
        if refused(response):
            # Not a login: anonymous after it, with its data; try again in a moment.
            self.confirm_anonymous = phase
            self.login_retry_at = time.monotonic() + self.rng.uniform(*RETRY_AFTER)
            return
        if body is None:
            return
        if body.get("user") != self.username:
            self._violation(phase, stats.ERROR, f"login answered {body!r}")
            return
        self.logged_in = True
        if fault is not None:
            self._violation(
                phase,
                stats.BYPASS,
                f"login answered 200 while the ledger was unavailable ({fault}) "
                f"{_where(response, body)}",
            )

    def logout(self) -> None:
        before = self.cookies()
        fault = self.world.ledger_fault
        body, response, phase = self._send("logout", "POST", "logout/")
        if refused(response):
            # Nothing changed: still logged in, cookies untouched, not a dead session.
            assert response is not None
            self.check_cookies_untouched(response, phase, before)
            self.logout_requested = False
            self.confirm_alive = phase
            self.logout_retry_at = time.monotonic() + self.rng.uniform(*RETRY_AFTER)
            return
        if body is None:
            return
        if fault is not None:
            self._violation(
                phase,
                stats.BYPASS,
                f"logout answered 200 while the ledger was unavailable ({fault}) "
                f"{_where(response, body)}",
            )
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
        may = self.world.may_fail_closed
        self.check_user(body, response, phase, db_down, may=may)
        if (db_down or may) and body.get("user") is None and self.logged_in:
            # Saved while the login was withheld: it must still come back afterwards.
            self.failclosed_write = True
        self.acked = value
        self.maybe.clear()

    def read(self) -> None:
        db_down, may = self.world.db_down, self.world.may_fail_closed
        over = self.world.ledger_fault is None and not db_down
        body, response, phase = self._send("state", "GET", "state/")
        if body is None:
            return
        ok = self.check_user(body, response, phase, db_down, may=may)
        ok = self.check_data(body, response, phase) and ok
        if self.confirm_anonymous is not None:
            if ok:
                self.world.recorder.note(self.confirm_anonymous).kept_anonymous += 1
            self.confirm_anonymous = None
        if self.confirm_alive is not None and over:
            if ok:
                self.world.recorder.note(self.confirm_alive).kept_alive += 1
            self.confirm_alive = None

    def check_cookies_untouched(
        self, response: requests.Response, phase: str, before: dict[str, str]
    ) -> None:
        """A refused logout leaves the cookies alone: no cookie deleted, the same session
        key (the same key with a renewed backup is counted apart: same session)."""
        changed = [
            f"{name}{' (deleted)' if deleted else ' (another key)'}"
            for name, value, deleted in set_cookies(response)
            if deleted or (name == SESSION_COOKIE and value != before.get(name))
        ]
        if changed:
            self._violation(
                phase,
                stats.COOKIES,
                f"logout answered 503 but set {', '.join(changed)} {_where(response, None)}",
            )
        elif set_cookies(response):
            self.world.recorder.note(phase).renewed_on_503 += 1

    def after_revocation(self) -> None:
        """The first request after the runner revoked this user's sessions."""
        body, response, phase = self._send("state", "GET", "state/")
        if body is None:
            return
        self.revoked = False
        self.logged_in = False
        self.confirm_alive = None
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
        *,
        may: bool = False,
    ) -> bool:
        """Is the answer's user the expected one?  False (and a violation) if not.

        ``db_down``: the login must be withheld (fail closed); ``may``: it may be.
        """
        user = body.get("user")
        where = _where(response, body)
        if user is not None and user != self.username:
            self._violation(phase, stats.WRONG_USER, f"answered as {user!r} {where}")
            return False
        if not self.logged_in:
            if user is not None:
                after = (
                    f"after a login refused in {self.confirm_anonymous!r} "
                    if self.confirm_anonymous
                    else ""
                )
                self._violation(
                    phase, stats.WRONG_USER, f"logged in while logged out {after}{where}"
                )
                return False
            return True
        if db_down:
            if user is None:
                self.world.recorder.note(phase).fail_closed_anonymous += 1
                return True
            self._violation(phase, stats.FAIL_OPEN, f"login trusted without the DB {where}")
            return False
        if may and user is None:
            self.world.recorder.note(phase).fail_closed_anonymous += 1
            return True
        if user == self.username:
            if self.failclosed_write:
                # Wrote while its login was withheld: the login must come back all the same.
                self.failclosed_write = False
                self.world.recorder.note(phase).logins_back += 1
            return True
        detail = "after writing while the database was down " if self.failclosed_write else ""
        if self.confirm_alive:
            detail += f"after a logout or revocation refused in {self.confirm_alive!r} "
        self.failclosed_write = False
        self._violation(phase, stats.LOGOUT, f"anonymous {detail}{where}")
        self.logged_in = False
        return False

    def check_data(
        self, body: dict[str, Any], response: requests.Response | None, phase: str
    ) -> bool:
        """Does the read show the latest acknowledged value?  False (and a violation) if not."""
        got = (body.get("data") or {}).get("n")
        if self.resync:
            self.resync = False
            self.acked, self.maybe = got, set()
            return True
        if got == self.acked:
            return True
        if got in self.maybe:
            self.acked, self.maybe = got, set()
            return True
        login = "logged in" if self.logged_in else "anonymous"
        after = ""
        if self.confirm_anonymous:
            after = f" after a login refused in {self.confirm_anonymous!r}"
        elif self.confirm_alive:
            after = f" after a logout or revocation refused in {self.confirm_alive!r}"
        self._violation(
            phase,
            stats.ROLLBACK if _older(got, self.acked) else stats.LOST_WRITE,
            f"read n={got!r}, last acknowledged n={self.acked!r} ({login}{after}) "
            f"{_where(response, body)}",
        )
        self.acked, self.maybe = got, set()
        return False

    def final_check(self, label: str) -> None:
        """A last read (the runner calls it with the load stopped)."""
        with self.lock:
            if self.revoked:
                self.after_revocation()
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
                    if self.world.stop.is_set() or self.world.pause_replays.is_set():
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
