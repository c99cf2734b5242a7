"""Cheap, in-process health figures for monitoring.

``snapshot()`` costs no I/O: it reads this process's breaker states and
counters, so a health view can call it on every scrape.

:func:`count` is the one place the engine reports what it did: it keeps this
process's counters and hands the same event to the installed *sink*
(:mod:`.metrics` installs one when ``prometheus-client`` is importable).
Without a sink it costs what it always did: a lock and a dict update.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from typing import Any, Protocol

from .breaker import all_breakers

__all__ = [
    "COUNTERS",
    "Sink",
    "backup_loads",
    "backup_minutes",
    "count",
    "install_sink",
    "observe",
    "reset_counters",
    "sink",
    "snapshot",
]

COUNTERS = (
    "cache_hits",
    "cache_misses",
    "cache_errors",
    "cache_skipped",
    "restored_from_backup",
    "restored_from_ledger",
    "written_back",
    "backups_written",
    "backups_partial",
    "backups_omitted",
    "backups_rejected",
    "degraded_saves",
    "purges_pending",
    "purges_done",
    "sessions_adopted",
    # Counted with a label (see ``labelled`` in the snapshot):
    "loads",  # source: cache, backup, ledger, adopted, none
    "saves",  # copy: cache, backup, none
    "sessions_ended",  # reason: logout, revoked, ... (EndReason values, "other")
    "ledger_errors",  # operation: the ledger function that failed
)

#: Minutes of backup loads this process remembers (its ring).
RING_MINUTES = 60


class Sink(Protocol):
    """Where :func:`count` and :func:`observe` send events besides the counters."""

    def count(self, name: str, n: int, label: str) -> None: ...

    def observe(self, name: str, value: float, label: str) -> None: ...


_counts: Counter[str] = Counter()
_labelled: Counter[tuple[str, str]] = Counter()
#: This process's loads served from backups, per minute (unix time // 60).
_backup_minutes: Counter[int] = Counter()
_lock = threading.Lock()
#: The installed sink (None: counters only).
sink: Sink | None = None


def install_sink(new: Sink | None) -> None:
    """Send every event to ``new`` too (None: stop)."""
    global sink
    sink = new


def count(name: str, n: int = 1, label: str = "") -> None:
    """Count ``n`` events ``name`` (with ``label``: a bounded value such as a source)."""
    with _lock:
        _counts[name] += n
        if label:
            _labelled[name, label] += n
            if name == "loads" and label == "backup":
                minute = int(time.time() // 60)
                _backup_minutes[minute] += n
                if len(_backup_minutes) > RING_MINUTES:
                    for old in [m for m in _backup_minutes if m <= minute - RING_MINUTES]:
                        del _backup_minutes[old]
    if sink is not None:
        sink.count(name, n, label)


def observe(name: str, value: float, label: str = "") -> None:
    """A measurement (seconds) for the sink's histograms; nothing without a sink."""
    if sink is not None:
        sink.observe(name, value, label)


def backup_loads(minutes: int) -> int:
    """Loads this process served from backups in the last ``minutes`` minutes (at most 60)."""
    since = int(time.time() // 60) - min(minutes, RING_MINUTES) + 1
    with _lock:
        return sum(n for minute, n in _backup_minutes.items() if minute >= since)


def backup_minutes() -> dict[int, int]:
    """This process's ring: loads served from backups per minute (unix time // 60)."""
    with _lock:
        return dict(_backup_minutes)


def reset_counters() -> None:
    with _lock:
        _counts.clear()
        _labelled.clear()
        _backup_minutes.clear()


def snapshot() -> dict[str, Any]:
    """Breaker state per cache alias (and cluster node) and this process's counters."""
    with _lock:
        counters = {name: _counts[name] for name in COUNTERS}
        labelled: dict[str, dict[str, int]] = {}
        for (name, label), n in sorted(_labelled.items()):
            labelled.setdefault(name, {})[label] = n
    breakers = {name: b.snapshot() for name, b in all_breakers().items()}
    healthy = all(b["state"] == "closed" for b in breakers.values())
    return {
        "healthy": healthy,
        "pid": os.getpid(),
        "breakers": breakers,
        "counters": counters,
        "labelled": labelled,
    }
