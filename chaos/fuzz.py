"""HTTP fuzz of the session and backup cookies against a live server (``python -m chaos fuzz``).

One gunicorn app server (:mod:`chaos.wsgi`, 2 sync workers), a private Redis and the
run's own database. Two users log in; their real cookies are captured. Then thousands
of requests carry random, truncated, extended, oversized, bit-flipped, re-encoded and
swapped session and backup cookies (mutations of the real ones):

- with Redis up, the session cookie is never the victim's real one (with it, Redis alone
  would rightly log the request in);
- with Redis killed, the session cookie is the victim's real key half of the time, so the
  backup alone decides, and the backup is never the real one. (The real key with no
  backup cookie at all is the one login expected: the key is the credential, as on a
  healthy site, and the ledger row vouches for the login alone.)

Every other answer must be below 500 and anonymous. The server logs
``django.security.SuspiciousSession`` to a file; each request that had its backup
refused must have logged exactly one line there (no flood, no silent refusal), as the
``X-Chaos-Rejected`` / ``X-Chaos-Suspicious`` headers of :mod:`chaos.observe` tell per
request, and the file's line count must match their sum. A positive control at the
start of each phase (the real pair of cookies is logged in) shows the checks can fail.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import string
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
from django.http import parse_cookie

from chaos.infra import AppServer, Database, InfraError
from tests.redis_server import RedisServer

SESSION_COOKIE = "sessionid"
BACKUP_COOKIE = "sessionbackup"
PASSWORD = "fuzz-password"
URLSAFE = string.ascii_letters + string.digits + "-_"
#: Characters a Cookie header can carry (latin-1, no controls, CR, LF or NUL).
HEADER_CHARS = "".join(chr(c) for c in range(0x20, 0x100) if c != 0x7F)


@dataclass
class FuzzOptions:
    count: int = 12_000
    db: str = "sqlite"
    threads: int = 4
    seed: int = 1
    pg_name: str = "drs_chaos_fuzz"
    keep: bool = False


@dataclass
class Real:
    """The cookies of two logged-in users."""

    session: str
    backup: str
    other_session: str
    other_backup: str


# -- mutations --------------------------------------------------------------------------------


def _b64decode(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _random_text(rng: random.Random, alphabet: str, low: int, high: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


def mutations(real: str, other: str) -> dict[str, Callable[[random.Random], str]]:
    """Named ways to damage a real cookie value (``other``: another session's value)."""

    def bit_flip(rng: random.Random) -> str:
        raw = bytearray(_b64decode(real))
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(raw))
            raw[i] ^= 1 << rng.randrange(8)
        return _b64encode(bytes(raw))

    def char_swap(rng: random.Random) -> str:
        i = rng.randrange(len(real))
        choices = [c for c in URLSAFE if c != real[i]]
        return real[:i] + rng.choice(choices) + real[i + 1 :]

    def last_char(rng: random.Random) -> str:
        # The last base64 character carries padding bits: non-canonical spellings.
        return real[:-1] + rng.choice([c for c in URLSAFE if c != real[-1]])

    def truncated(rng: random.Random) -> str:
        return real[: rng.randrange(0, len(real))]

    def extended(rng: random.Random) -> str:
        return real + _random_text(rng, URLSAFE, 1, 64)

    def oversized(rng: random.Random) -> str:
        return (real * (8000 // max(len(real), 1) + 1))[: rng.randint(4000, 7800)]

    def giant(rng: random.Random) -> str:
        return _random_text(rng, URLSAFE, 8200, 12000)  # past gunicorn's header limit

    def random_urlsafe(rng: random.Random) -> str:
        return _random_text(rng, URLSAFE, 0, len(real) + 20)

    def random_header_text(rng: random.Random) -> str:
        return _random_text(rng, HEADER_CHARS, 1, 200).strip() or "x"

    def padded(rng: random.Random) -> str:
        return real + "=" * rng.randint(1, 3)

    def quoted(rng: random.Random) -> str:
        # Django unquotes a quoted cookie value: quote a damaged one.
        return f'"{char_swap(rng)}"'

    def format_byte(rng: random.Random) -> str:
        raw = bytearray(_b64decode(real))
        raw[0] = rng.choice([b for b in range(256) if b != raw[0]])
        return _b64encode(bytes(raw))

    def spliced(rng: random.Random) -> str:
        cut = rng.randrange(1, len(real))
        return real[:cut] + other[cut:]

    def swapped(rng: random.Random) -> str:
        return other

    def empty(rng: random.Random) -> str:
        return ""

    def standard_base64(rng: random.Random) -> str:
        return base64.b64encode(_b64decode(real)).decode()

    return {
        "bit_flip": bit_flip,
        "char_swap": char_swap,
        "last_char": last_char,
        "truncated": truncated,
        "extended": extended,
        "oversized": oversized,
        "giant": giant,
        "random_urlsafe": random_urlsafe,
        "random_header_text": random_header_text,
        "padded": padded,
        "quoted": quoted,
        "format_byte": format_byte,
        "spliced": spliced,
        "swapped": swapped,
        "empty": empty,
        "standard_base64": standard_base64,
    }


#: Relative weights; "giant" headers only reach gunicorn (400), so they stay rare.
WEIGHTS = {"giant": 0.2, "empty": 0.5, "quoted": 0.5, "padded": 0.5}


def pick(rng: random.Random, table: dict[str, Callable[[random.Random], str]]) -> tuple[str, str]:
    names = list(table)
    name = rng.choices(names, weights=[WEIGHTS.get(n, 1.0) for n in names])[0]
    return name, table[name](rng)


# -- the run ----------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    name: str
    requests: int = 0
    status: Counter[int] = field(default_factory=Counter)
    logged_in: int = 0
    rejected: int = 0
    suspicious: int = 0
    rejected_unlogged: int = 0
    logged_unrejected: int = 0
    max_lines: int = 0
    errors: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)

    def fail(self, message: str) -> None:
        if len(self.errors) < 30:
            self.errors.append(message)


class Fuzzer:
    def __init__(self, options: FuzzOptions, url: str, real: Real) -> None:
        self.options = options
        self.url = url
        self.real = real
        self.backups = mutations(real.backup, real.other_backup)
        self.sessions = mutations(real.session, real.other_session)
        self.lock = threading.Lock()

    def cookies(self, rng: random.Random, redis_down: bool) -> tuple[str, str, str]:
        """(Cookie header, session kind, backup kind) for one request."""
        real = self.real
        if redis_down and rng.random() < 0.5:
            session_kind, session = "real", real.session
        else:
            session_kind, session = pick(rng, self.sessions)
            if session in (real.session, real.other_session):
                session_kind, session = "random_urlsafe", _random_text(rng, URLSAFE, 32, 32)
        roll = rng.random()
        if roll < 0.07:
            backup_kind, backup = "absent", None
        elif roll < 0.15 and not redis_down:
            backup_kind, backup = "real", real.backup
        else:
            backup_kind, backup = pick(rng, self.backups)
            if backup == real.backup and session == real.session:
                backup_kind, backup = "truncated", real.backup[:-4]
        parts = []
        if session_kind != "empty" or rng.random() < 0.5:
            parts.append(f"{SESSION_COOKIE}={session}")
        if backup is not None:
            parts.append(f"{BACKUP_COOKIE}={backup}")
        rng.shuffle(parts)
        if rng.random() < 0.05:
            parts.append(f"{BACKUP_COOKIE}={pick(rng, self.backups)[1]}")  # a duplicate
        return "; ".join(parts), session_kind, backup_kind

    def send(self, result: PhaseResult, header: str, kinds: str, rng: random.Random) -> None:
        headers = {"Cookie": header, "User-Agent": "drs-chaos-fuzz/1.0"}
        try:
            if rng.random() < 0.3:
                response = requests.post(
                    self.url + "set/", data={"n": "fuzz"}, headers=headers, timeout=15
                )
            else:
                response = requests.get(self.url + "state/", headers=headers, timeout=15)
        except requests.RequestException as error:
            with self.lock:
                result.requests += 1
                result.status[0] += 1
                result.fail(f"no answer ({kinds}): {error!r}")
            return
        rejected = response.headers.get("X-Chaos-Rejected") == "1"
        lines = int(response.headers.get("X-Chaos-Suspicious", "0") or 0)
        user = None
        if response.status_code == 200:
            try:
                user = response.json().get("user")
            except ValueError:
                user = "<not JSON>"
        parsed = parse_cookie(header)
        key_alone = parsed.get(SESSION_COOKIE) == self.real.session and not parsed.get(
            BACKUP_COOKIE
        )
        with self.lock:
            result.requests += 1
            result.kinds[kinds] += 1
            result.status[response.status_code] += 1
            result.rejected += rejected
            result.suspicious += lines
            result.max_lines = max(result.max_lines, lines)
            if response.status_code >= 500:
                result.fail(f"HTTP {response.status_code} ({kinds}) {response.text[:200]!r}")
            if user is not None and not (key_alone and user == "fuzz-victim"):
                result.logged_in += 1
                result.fail(f"logged in as {user!r} ({kinds})")
            if rejected and lines != 1:
                result.rejected_unlogged += 1
                result.fail(f"backup refused with {lines} log lines ({kinds})")
            if lines and not rejected:
                result.logged_unrejected += 1
                result.fail(f"{lines} suspicious lines without a refusal ({kinds})")
            if lines > 1:
                result.fail(f"{lines} log lines for one request ({kinds})")

    def phase(self, name: str, count: int, redis_down: bool) -> PhaseResult:
        result = PhaseResult(name)
        per_thread = [count // self.options.threads] * self.options.threads
        per_thread[0] += count - sum(per_thread)

        def worker(index: int, n: int) -> None:
            rng = random.Random(f"{self.options.seed}-{name}-{index}")
            for _ in range(n):
                header, session_kind, backup_kind = self.cookies(rng, redis_down)
                self.send(result, header, f"session={session_kind} backup={backup_kind}", rng)

        threads = [
            threading.Thread(target=worker, args=(i, n), daemon=True)
            for i, n in enumerate(per_thread)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        return result


def _login(url: str, username: str) -> tuple[str, str]:
    http = requests.Session()
    response = http.post(url + "login/", data={"username": username, "password": PASSWORD})
    response.raise_for_status()
    http.post(url + "set/", data={"cart": "3 items", "theme": "dark"}).raise_for_status()
    session, backup = http.cookies.get(SESSION_COOKIE), http.cookies.get(BACKUP_COOKIE)
    if not session or not backup:
        raise InfraError(f"logging {username} in gave no session and backup cookies")
    return session, backup


def _control(url: str, real: Real) -> str | None:
    header = f"{SESSION_COOKIE}={real.session}; {BACKUP_COOKIE}={real.backup}"
    user: str | None = requests.get(url + "state/", headers={"Cookie": header}, timeout=15).json()[
        "user"
    ]
    return user


def _count_lines(path: Path) -> int:
    try:
        with open(path, errors="replace") as log:
            return sum(1 for line in log if "SuspiciousSession" in line)
    except FileNotFoundError:
        return 0


def run(options: FuzzOptions, workdir: Path) -> int:
    redis_server = RedisServer()
    database = Database(options.db, workdir, options.pg_name)
    server: AppServer | None = None
    security_log = workdir / "security.log"
    try:
        redis_server.start()
        database.create()
        env = {
            **database.env,
            "CHAOS_REDIS_URL": redis_server.url,
            "CHAOS_COOLDOWN": "1.0",
            "CHAOS_SECURITY_LOG": str(security_log),
        }
        os.environ.update({k: v for k, v in env.items() if k != "CHAOS_SECURITY_LOG"})
        os.environ["DJANGO_SETTINGS_MODULE"] = "chaos.settings"
        import django

        django.setup()
        from django.contrib.auth.models import User
        from django.core.management import call_command
        from django.db import connections

        call_command("migrate", verbosity=0)
        for name in ("fuzz-victim", "fuzz-other"):
            User.objects.create_user(username=name, password=PASSWORD)
        connections.close_all()
        server = AppServer("fuzz", env, workdir)
        server.start()
        server.wait_ready()
        url = server.url
        session, backup = _login(url, "fuzz-victim")
        other_session, other_backup = _login(url, "fuzz-other")
        real = Real(session, backup, other_session, other_backup)
        fuzzer = Fuzzer(options, url, real)
        started = time.monotonic()
        results: list[PhaseResult] = []
        controls: list[str] = []

        up_count = options.count * 6 // 10
        if _control(url, real) != "fuzz-victim":
            controls.append("control (Redis up): the real cookies were not logged in")
        lines_before = _count_lines(security_log)
        results.append(fuzzer.phase("Redis up", up_count, redis_down=False))
        redis_server.kill()
        if _control(url, real) != "fuzz-victim":
            controls.append("control (Redis down): the real cookies were not logged in")
        results.append(fuzzer.phase("Redis down", options.count - up_count, redis_down=True))
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # let the workers flush their log lines
        lines = _count_lines(security_log) - lines_before
        return report(results, controls, lines, elapsed)
    except InfraError as error:
        print(f"chaos fuzz: setup failed: {error}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
        redis_server.stop()
        try:
            from django.db import connections

            connections.close_all()
        except Exception:
            pass
        database.drop()


def report(results: list[PhaseResult], controls: list[str], lines: int, elapsed: float) -> int:
    header = (
        "phase", "requests", "5xx", "4xx", "logged in", "refused", "log lines",
        "max/request", "refused w/o 1 line", "lines w/o refusal",
    )  # fmt: skip
    rows = []
    for r in results:
        rows.append(
            (
                r.name,
                str(r.requests),
                str(sum(n for s, n in r.status.items() if s >= 500 or s == 0)),
                str(sum(n for s, n in r.status.items() if 400 <= s < 500)),
                str(r.logged_in),
                str(r.rejected),
                str(r.suspicious),
                str(r.max_lines),
                str(r.rejected_unlogged),
                str(r.logged_unrejected),
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    print()
    print("FUZZ TABLE")
    for cells in (header, *rows):
        print("| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |")
    total = sum(r.requests for r in results)
    refused = sum(r.rejected for r in results)
    reported = sum(r.suspicious for r in results)
    print(
        f"\n{total} requests in {elapsed:.0f} s; {refused} backups refused; "
        f"{lines} SuspiciousSession lines in the server's log file "
        f"(headers say {reported})."
    )
    sessions: Counter[str] = Counter()
    backups: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    for r in results:
        statuses.update(r.status)
        for kinds, n in r.kinds.items():
            session_kind, backup_kind = (part.split("=", 1)[1] for part in kinds.split())
            sessions[session_kind] += n
            backups[backup_kind] += n
    print("status codes: " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())))
    print("session cookies: " + ", ".join(f"{k} {n}" for k, n in sorted(sessions.items())))
    print("backup cookies: " + ", ".join(f"{k} {n}" for k, n in sorted(backups.items())))
    failures = list(controls)
    for r in results:
        failures += [f"[{r.name}] {e}" for e in r.errors]
    if lines != reported:
        failures.append(f"log file has {lines} lines, responses reported {reported}")
    if lines > refused:
        failures.append(f"{lines} log lines for {refused} refused backups: a log flood")
    print()
    if failures:
        print(f"INVARIANTS BROKEN: {len(failures)}")
        for failure in failures[:40]:
            print(f"  {failure}")
        print("FUZZ RESULT: FAIL")
        return 1
    print("FUZZ RESULT: PASS (no 5xx, nobody logged in, one log line per refused backup)")
    return 0


def main(options: FuzzOptions) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="drs-fuzz-"))
    code = 2
    try:
        code = run(options, workdir)
    finally:
        if options.keep or code != 0:
            print(f"chaos fuzz: logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code
