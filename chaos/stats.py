"""What a chaos run measured: one sample per request, violations, and the table per fault."""

from __future__ import annotations

import math
import threading
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
ERROR = "error"  # 5xx, no answer, or an unexpected status
LOST_WRITE = "lost write"
LOGOUT = "unexpected logout"
REPLAY = "replay accepted"
FAIL_OPEN = "logged in while the database was down"
WRONG_USER = "wrong user"
LATENCY = "latency"


@dataclass
class PhaseNotes:
    fail_closed_anonymous: int = 0  # requests served anonymously in the DB-down window
    logins_back: int = 0  # users who wrote while fail-closed and were logged in again after
    stale_copies: int = 0  # dead sessions served from a queued-for-deletion copy (R1)
    known: dict[str, str] = field(default_factory=dict)  # known bug -> what showed
    examples: list[str] = field(default_factory=list)
    replays_with_data: int = 0  # replays answered with (anonymous) session data
    extra: list[str] = field(default_factory=list)


def _with_known(violations: int, known: int, key: str) -> str:
    """A table cell: the violations, plus the known bug's occurrences (not failures)."""
    return f"{violations} (+{known} {key})" if known else str(violations)


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

    def phase_started(self, name: str) -> None:
        with self._lock:
            if name not in self.phases:
                self.phases.append(name)

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
            "lost writes",
            "unexp. logouts",
            "replays acc/sent",
            "other viol.",
            "p50 ms",
            "p99 ms",
        )
        rows: list[tuple[str, ...]] = []
        main = {ERROR, LOST_WRITE, LOGOUT, REPLAY}
        for phase in self.phases:
            samples = [s for s in self.samples if s.phase == phase]
            latencies = [s.ms for s in samples if s.kind != "replay"]
            other = sum(1 for v in self.violations if v.phase == phase and v.kind not in main)
            note = self.notes.get(phase, PhaseNotes())
            rows.append(
                (
                    phase,
                    str(len(samples)),
                    str(self.count(phase, ERROR)),
                    str(self.count(phase, LOST_WRITE)),
                    str(self.count(phase, LOGOUT)),
                    _with_known(self.count(phase, REPLAY), note.stale_copies, "R1")
                    + f"/{self.replays_sent[phase]}",
                    str(other),
                    f"{percentile(latencies, 50):.1f}",
                    f"{percentile(latencies, 99):.1f}",
                )
            )
        notes = list(self.notes.values())

        def violations(kind: str) -> int:
            return sum(1 for v in self.violations if v.kind == kind)

        total = [
            "TOTAL",
            str(len(self.samples)),
            str(violations(ERROR)),
            str(violations(LOST_WRITE)),
            str(violations(LOGOUT)),
            _with_known(violations(REPLAY), sum(n.stale_copies for n in notes), "R1")
            + f"/{sum(self.replays_sent.values())}",
            str(sum(1 for v in self.violations if v.kind not in main)),
            f"{percentile([s.ms for s in self.samples if s.kind != 'replay'], 50):.1f}",
            f"{percentile([s.ms for s in self.samples if s.kind != 'replay'], 99):.1f}",
        ]
        rows.append(tuple(total))
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
            parts += note.extra
            parts += [f"e.g. {example}" for example in note.examples]
            parts += [f"known bug {key}: {text}" for key, text in sorted(note.known.items())]
            if parts:
                lines.append(f"- {phase}: " + "; ".join(parts))
        return "\n".join(lines)
