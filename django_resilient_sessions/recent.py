"""Served from backups in the last N minutes, over every process: a ring of minutes in the database.

Each process counts its loads served from backups per minute
(:func:`.health.count`).  At most every ``FLUSH_INTERVAL`` seconds, after a
response has gone out (Django's ``request_finished``), it adds what it counted
since its last flush to the rows of :class:`~.models.BackupLoadsMinute`, and
deletes the rows older than ``BACKUP_LOADS_WINDOW`` minutes.  It writes only
when it has something to add: a site served from Redis writes nothing.

What the figure covers: every process of every server that shares the
database, up to ``FLUSH_INTERVAL`` seconds late.  A flush the database refuses
(it is down too) is tried again at the next one; counts older than the
process's own ring (an hour) are lost then, so the figure may fall short
after a long database outage, never run over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, Sum

from . import health
from .conf import conf
from .dbaccess import db, guarded
from .exceptions import LedgerUnavailable
from .models import BackupLoadsMinute

__all__ = ["FLUSH_INTERVAL", "backup_loads", "flush", "install"]

logger = logging.getLogger("django_resilient_sessions")

FLUSH_INTERVAL = 30.0

#: Per minute, what this process has added to the database so far.
_flushed: Counter[int] = Counter()
_last_flush = float("-inf")
_flushing = threading.Lock()


def _unflushed() -> dict[int, int]:
    counted = health.backup_minutes()
    for minute in [m for m in _flushed if m not in counted]:
        del _flushed[minute]  # out of the process's ring
    return {m: n - _flushed[m] for m, n in counted.items() if n > _flushed[m]}


def flush(*, force: bool = False) -> int:
    """Add this process's new counts to the database (if due); returns how many loads."""
    global _last_flush
    window = conf.BACKUP_LOADS_WINDOW
    if window is None or not _flushing.acquire(blocking=False):
        return 0
    try:
        now = time.monotonic()
        if not force and now - _last_flush < FLUSH_INTERVAL:
            return 0
        counts = _unflushed()
        if not counts:
            return 0
        _last_flush = now
        try:
            record_backup_loads(counts, int(time.time() // 60) - window)
        except LedgerUnavailable:
            return 0  # kept for the next flush
        _flushed.update(counts)
        return sum(counts.values())
    finally:
        _flushing.release()


@guarded
def record_backup_loads(counts: dict[int, int], oldest: int) -> None:
    with transaction.atomic(using=db()):
        for minute, n in sorted(counts.items()):
            if minute <= oldest:
                continue
            rows = BackupLoadsMinute.objects.filter(minute=minute)
            if rows.update(loads=F("loads") + n):
                continue
            try:
                with transaction.atomic(using=db()):
                    BackupLoadsMinute.objects.create(minute=minute, loads=n)
            except IntegrityError:  # another process made the row meanwhile
                rows.update(loads=F("loads") + n)
        BackupLoadsMinute.objects.filter(minute__lte=oldest).delete()


@guarded
def backup_loads(minutes: int | None = None) -> int:
    """Loads served from backups in the last ``minutes`` minutes (the window by default),
    by every process that shares the database (up to ``FLUSH_INTERVAL`` seconds late)."""
    minutes = minutes or conf.BACKUP_LOADS_WINDOW or 15
    since = int(time.time() // 60) - minutes + 1
    found = BackupLoadsMinute.objects.filter(minute__gte=since).aggregate(n=Sum("loads"))
    return int(found["n"] or 0)


def on_request_finished(**kwargs: Any) -> None:
    flush()


def install() -> None:
    """Flush after responses (``AppConfig.ready``)."""
    from django.core.signals import request_finished

    request_finished.connect(on_request_finished, dispatch_uid="django_resilient_sessions.recent")


def reset() -> None:
    """Forget what was flushed and when (tests)."""
    global _last_flush
    _flushed.clear()
    _last_flush = float("-inf")
