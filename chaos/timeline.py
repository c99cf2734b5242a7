"""A picture of a chaos run: what the users saw, second by second, with each fault shaded.

:func:`write` draws four panels over the run's time (seconds since the first request):

1. requests per second answered (errors, 503s included), by every virtual user and the replayer;
2. p50 and p99 latency per second, as the clients measured it (log scale);
3. the share of session loads served from backups (and from the ledger alone) per second;
4. how many app-server workers answered with their circuit breaker open.

Each fault is shaded from its injection to its heal (its settling time lighter) and
labelled above the first panel.  Uses matplotlib (the ``bench`` extra); without it the run
goes on and says so.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from chaos.stats import Recorder, Sample, percentile

__all__ = ["Window", "windows", "write"]

#: Phases that are not faults (no shading).
QUIET = ("startup", "baseline", "final check (Redis up)", "final check (ledger)")
HEALED = "healed"


@dataclass(frozen=True)
class Window:
    """A fault: injected at ``start``, healed at ``healed``, settled by ``end`` (seconds)."""

    label: str
    start: float
    healed: float
    end: float


def windows(recorder: Recorder, origin: float) -> list[Window]:
    """The faults of a run, from its phase starts and "healed" marks."""
    marks = sorted(recorder.timeline, key=lambda mark: mark[1])
    found: list[Window] = []
    for i, (name, at) in enumerate(marks):
        if name == HEALED or name.startswith(QUIET):
            continue
        later = [m for m in marks[i + 1 :] if m[0] != HEALED]
        end = later[0][1] if later else max((s.end for s in recorder.samples), default=at)
        heals = [m[1] for m in marks[i + 1 :] if m[0] == HEALED and m[1] <= end]
        healed = heals[0] if heals else end
        found.append(Window(name, at - origin, healed - origin, end - origin))
    return found


def _per_second(samples: list[Sample], origin: float) -> dict[int, list[Sample]]:
    buckets: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        buckets[int(sample.end - origin)].append(sample)
    return buckets


def write(recorder: Recorder, path: Path, *, title: str = "") -> Path | None:
    """Draw the run into ``path`` (PNG); None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    samples = list(recorder.samples)
    if not samples:
        return None
    origin = min(s.start for s in samples)
    buckets = _per_second(samples, origin)
    seconds = list(range(0, max(buckets) + 1))
    rps = [len(buckets.get(t, [])) for t in seconds]
    p50, p99, backup, ledger, opened = [], [], [], [], []
    workers = {s.pid for s in samples if s.pid}
    last: dict[int, str] = {}
    for t in seconds:
        chunk = buckets.get(t, [])
        timed = [s.ms for s in chunk if s.status]
        p50.append(percentile(timed, 50))
        p99.append(percentile(timed, 99))
        sources = [s.source for s in chunk if s.source]
        backup.append(100 * sources.count("backup") / len(sources) if sources else math.nan)
        ledger.append(100 * sources.count("ledger") / len(sources) if sources else math.nan)
        for s in sorted(chunk, key=lambda s: s.end):
            if s.pid and s.breaker:
                last[s.pid] = s.breaker
        opened.append(sum(state != "closed" for state in last.values()))

    figure, axes = plt.subplots(4, 1, figsize=(15, 10), sharex=True, constrained_layout=True)
    requests_ax, latency_ax, share_ax, breaker_ax = axes
    requests_ax.plot(seconds, rps, color="#1f4e79", linewidth=1)
    requests_ax.set_ylabel("requests / s")
    latency_ax.plot(seconds, p50, color="#2e7d32", linewidth=1, label="p50")
    latency_ax.plot(seconds, p99, color="#c62828", linewidth=1, label="p99")
    latency_ax.set_yscale("log")
    latency_ax.set_ylabel("latency (ms)")
    latency_ax.legend(loc="upper right", fontsize=8)
    share_ax.fill_between(seconds, backup, step="post", color="#ef6c00", alpha=0.6,
                          label="from backups")  # fmt: skip
    share_ax.plot(seconds, ledger, color="#6a1b9a", linewidth=1, label="login from the ledger")
    share_ax.set_ylim(0, 100)
    share_ax.set_ylabel("% of session loads")
    share_ax.legend(loc="upper right", fontsize=8)
    breaker_ax.step(seconds, opened, where="post", color="#b71c1c", linewidth=1.2)
    breaker_ax.set_ylim(-0.2, max(len(workers), 1) + 0.2)
    breaker_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    breaker_ax.set_ylabel(f"breakers open\n(of {len(workers)} workers)")
    breaker_ax.set_xlabel("seconds since the first request")

    for i, window in enumerate(windows(recorder, origin)):
        colour = ("#90a4ae", "#ffcc80")[i % 2]
        for ax in axes:
            ax.axvspan(window.start, window.healed, color=colour, alpha=0.35, linewidth=0)
            ax.axvspan(window.healed, window.end, color=colour, alpha=0.12, linewidth=0)
        requests_ax.annotate(
            window.label,
            xy=(window.start, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, 2),
            textcoords="offset points",
            rotation=35,
            fontsize=7,
            va="bottom",
        )
    for ax in axes:
        ax.grid(True, alpha=0.3)
    figure.suptitle(
        (title or "Chaos run: what the users saw")
        + "\n(shaded: a fault from injection to heal, lighter: the settling time after it)",
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
