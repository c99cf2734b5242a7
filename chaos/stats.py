"""What a chaos run measured: one sample per request, violations, and the table per fault."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field


@dataclass
class Sample:
    phase: str
    kind: str  # login, logout, state, set, replay
    start: float  # time.monotonic()
    end: float
    status: int  # 0: no HTTP answer
    server_ms: float | None
    waited: int  # Redis errors this request ran into (server side)
    pid: int = 0  # the worker that answered
    source: str = ""  # the copy that served its session: cache, backup, ledger ("": none)
    breaker: str = ""  # the answering worker's breaker after it: closed, open, half_open

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000


@dataclass
class Violation:
    phase: str
    kind: str
    who: str
    detail: str
    at: float


#: Violation kinds, and the table column each one counts in.
ERROR = "error"  # a 5xx other than a due 503, no answer, or an unexpected status
NOT_DUE_503 = "503 not due"  # a 503 outside a ledger fault, on a read or write, or malformed
LOST_WRITE = "lost write"
ROLLBACK = "rollback"  # a read showing an older value than one already read or acknowledged
LOGOUT = "unexpected logout"
REPLAY = "resurrection"  # a dead session (logged out, revoked) answered as logged in
# The rest count in "other viol.":
FAIL_OPEN = "logged in while the database was down"
WRONG_USER = "wrong user"
LATENCY = "latency"
BYPASS = "done while the ledger was unavailable"  # a login, logout or revocation that
# succeeded while the ledger could not have recorded it
COOKIES = "refused logout changed cookies"
LEDGER = "ledger disagrees"  # final check: a live login with no active row, a dead one with one
FAULT = "fault not in effect"  # a fresh connection could still write (the fault is not real)
ABORTED = "run aborted"


@dataclass
class PhaseNotes:
    fail_closed_anonymous: int = 0  # requests served anonymously in the DB-down window
    logins_back: int = 0  # users who wrote while fail-closed and were logged in again after
    stale_copies: int = 0  # dead sessions served from a queued-for-deletion copy (R1)
    known: dict[str, str] = field(default_factory=dict)  # known bug -> what showed
    examples: list[str] = field(default_factory=list)
    replays_with_data: int = 0  # replays answered with (anonymous) session data
    extra: list[str] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)  # due 503s, by request kind
    kept_alive: int = 0  # sessions a 503 logout or a failed revocation left logged in
    kept_anonymous: int = 0  # 503 logins after which the user was anonymous, data kept
    renewed_on_503: int = 0  # refused logouts that renewed the backup cookie (same session)


def _with_known(violations: int, known: int, key: str) -> str:
    """A table cell: the violations, plus the known bug's occurrences (not failures)."""
    return f"{violations} (+{known} {key})" if known else str(violations)


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def backup_share(samples: list[Sample]) -> float:
    """The share of these requests whose session was served from its backup (NaN: none)."""
    if not samples:
        return math.nan
    return sum(1 for s in samples if s.source == "backup") / len(samples)


def _share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0%}"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class Recorder:
    """Thread-safe sink for samples and violations."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.samples: list[Sample] = []
        self.violations: list[Violation] = []
        self.replays_sent: Counter[str] = Counter()
        self.notes: dict[str, PhaseNotes] = defaultdict(PhaseNotes)
        self.phases: list[str] = []
        #: (phase, time.monotonic()) at each phase's start, and ("healed", time) marks.
        self.timeline: list[tuple[str, float]] = []

    def phase_started(self, name: str) -> None:
        with self._lock:
            self.timeline.append((name, time.monotonic()))
            if name not in self.phases:
                self.phases.append(name)

    def mark(self, what: str) -> None:
        """Note when something happened (the runner marks each fault "healed")."""
        with self._lock:
            self.timeline.append((what, time.monotonic()))

    def sample(self, sample: Sample) -> None:
        with self._lock:
            self.samples.append(sample)

    def violation(self, violation: Violation) -> None:
        with self._lock:
            self.violations.append(violation)

    def replay_sent(self, phase: str) -> None:
        with self._lock:
            self.replays_sent[phase] += 1

    def note(self, phase: str) -> PhaseNotes:
        with self._lock:
            return self.notes[phase]

    def count(self, phase: str, kind: str) -> int:
        return sum(1 for v in self.violations if v.phase == phase and v.kind == kind)

    def table(self) -> str:
        header = (
            "fault",
            "requests",
            "errors",
            "503 ok/bad",
            "lost writes",
            "rollbacks",
            "unexp. logouts",
            "resurrections",
            "replays",
            "other viol.",
            "p50 ms",
            "p99 ms",
            "from backup",
        )
        main = {ERROR, NOT_DUE_503, LOST_WRITE, ROLLBACK, LOGOUT, REPLAY}

        def row(name: str, phases: list[str]) -> tuple[str, ...]:
            chosen = set(phases)
            samples = [s for s in self.samples if s.phase in chosen]
            violations = [v for v in self.violations if v.phase in chosen]
            notes = [self.notes[p] for p in phases if p in self.notes]
            latencies = [s.ms for s in samples if s.kind != "replay"]

            def count(kind: str) -> int:
                return sum(1 for v in violations if v.kind == kind)

            refused = sum(sum(n.refused.values()) for n in notes)
            stale = sum(n.stale_copies for n in notes)
            return (
                name,
                str(len(samples)),
                str(count(ERROR)),
                f"{refused}/{count(NOT_DUE_503)}",
                str(count(LOST_WRITE)),
                str(count(ROLLBACK)),
                str(count(LOGOUT)),
                _with_known(count(REPLAY), stale, "R1"),
                str(sum(self.replays_sent[p] for p in phases)),
                str(sum(1 for v in violations if v.kind not in main)),
                _ms(percentile(latencies, 50)),
                _ms(percentile(latencies, 99)),
                _share(backup_share([s for s in samples if s.kind != "replay"])),
            )

        rows = [row(phase, [phase]) for phase in self.phases]
        stray = sorted({v.phase for v in self.violations} - set(self.phases))
        rows += [row(phase, [phase]) for phase in stray]
        rows.append(row("TOTAL", self.phases + stray))
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

        def line(cells: tuple[str, ...] | list[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
            return "| " + " | ".join([first, *rest]) + " |"

        out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += [line(r) for r in rows]
        return "\n".join(out)

    def notes_text(self) -> str:
        lines = []
        for phase in self.phases:
            note = self.notes.get(phase)
            if note is None:
                continue
            parts = []
            if note.fail_closed_anonymous:
                parts.append(f"{note.fail_closed_anonymous} requests anonymous (fail closed)")
            if note.logins_back:
                parts.append(
                    f"{note.logins_back} users who wrote while fail-closed were logged in "
                    "again once the database answered"
                )
            if note.replays_with_data:
                parts.append(
                    f"{note.replays_with_data} replays of dead sessions answered anonymously "
                    "but with their session data (fail closed keeps the data: docs/security.md)"
                )
            if note.refused:
                kinds = ", ".join(f"{n} {kind}s" for kind, n in sorted(note.refused.items()))
                parts.append(f"answered 503 while the ledger was unavailable: {kinds}")
            if note.kept_anonymous:
                parts.append(
                    f"{note.kept_anonymous} refused logins left the user anonymous with its data"
                )
            if note.kept_alive:
                parts.append(
                    f"{note.kept_alive} sessions whose logout or revocation was refused were "
                    "still logged in, with their data, once the ledger answered"
                )
            if note.renewed_on_503:
                parts.append(
                    f"{note.renewed_on_503} refused logouts renewed the backup cookie "
                    "(same session)"
                )
            parts += note.extra
            parts += [f"e.g. {example}" for example in note.examples]
            parts += [f"known bug {key}: {text}" for key, text in sorted(note.known.items())]
            if parts:
                lines.append(f"- {phase}: " + "; ".join(parts))
        return "\n".join(lines)
