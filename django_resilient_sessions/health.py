"""Cheap, in-process health figures for monitoring.

``snapshot()`` costs no I/O: it reads this process's breaker states and
counters, so a health view can call it on every scrape.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from typing import Any

from .breaker import all_breakers

__all__ = ["COUNTERS", "count", "reset_counters", "snapshot"]

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
)

_counts: Counter[str] = Counter()
_lock = threading.Lock()


def count(name: str, n: int = 1) -> None:
    with _lock:
        _counts[name] += n


def reset_counters() -> None:
    with _lock:
        _counts.clear()


def snapshot() -> dict[str, Any]:
    """Breaker state per cache alias and this process's counters."""
    with _lock:
        counters = {name: _counts[name] for name in COUNTERS}
    breakers = {alias: b.snapshot() for alias, b in all_breakers().items()}
    healthy = all(b["state"] == "closed" for b in breakers.values())
    return {"healthy": healthy, "pid": os.getpid(), "breakers": breakers, "counters": counters}
