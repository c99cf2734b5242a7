"""What a chaos app server tells the runner about each request, in response headers.

``ObserveMiddleware`` sits outermost and adds:

``X-Chaos-Pid``
    the gunicorn worker that answered;
``X-Chaos-Ms``
    time spent in Django for this request (milliseconds);
``X-Chaos-Waited``
    how many Redis errors this request ran into (it waited for a failing Redis that many
    times; 0 when the circuit breaker let it skip Redis or Redis answered);
``X-Chaos-Breaker``
    the session cache's breaker state in this worker after the request (on Redis Cluster,
    the worst of its nodes' breakers);
``X-Chaos-Source``
    the copy that served the session (``cache``, ``backup``, ``ledger``; empty: none);
``X-Chaos-Rejected``
    1 when the session engine refused the request's backup cookie;
``X-Chaos-Suspicious``
    records logged on ``django.security.SuspiciousSession`` during this request;
``X-Chaos-Exception``
    the class of the exception Django turned into this (4xx/5xx) response, if any;
``X-Chaos-Pending-Purge``
    only for the runner's replays of dead sessions (``X-Chaos-Replay: 1``): whether a
    deletion of this session's Redis copy was queued (``PendingPurge``) when the request
    came in (``?``: the database did not answer). One query, on replays only.

Sync workers serve one request at a time, so the per-process counters it diffs are exact.
It reads :func:`django_resilient_sessions.health.snapshot` only: no I/O.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponseBase

from django_resilient_sessions import health
from django_resilient_sessions.cachecopy import hash_key

SECURITY_LOGGER = "django.security.SuspiciousSession"


class _Counter(logging.Filter):
    """Counts records logged on one logger (per thread), letting every record through."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        self._local.count = self.value() + 1
        return True

    def value(self) -> int:
        count: int = getattr(self._local, "count", 0)
        return count


class _LastException(logging.Filter):
    """Remembers (per thread) the exception class of the last record with exc_info."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is not None:
            self._local.name = record.exc_info[0].__name__
        return True

    def take(self) -> str:
        name: str = getattr(self._local, "name", "")
        self._local.name = ""
        return name


_suspicious = _Counter()
logging.getLogger(SECURITY_LOGGER).addFilter(_suspicious)
_exceptions = _LastException()
logging.getLogger("django.request").addFilter(_exceptions)


def _cache_errors() -> int:
    errors: int = health.snapshot()["counters"]["cache_errors"]
    return errors


def _pending_purge(session_key: str | None) -> str:
    from django_resilient_sessions.models import PendingPurge

    if not session_key:
        return "0"
    try:
        return "1" if PendingPurge.objects.filter(key_hash=hash_key(session_key)).exists() else "0"
    except DatabaseError:
        return "?"


class ObserveMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        start = time.perf_counter()
        errors = _cache_errors()
        suspicious = _suspicious.value()
        _exceptions.take()
        pending = None
        if request.headers.get("X-Chaos-Replay"):
            pending = _pending_purge(request.COOKIES.get(settings.SESSION_COOKIE_NAME))
        response = self.get_response(request)
        if pending is not None:
            response["X-Chaos-Pending-Purge"] = pending
        snapshot = health.snapshot()
        alias = settings.SESSION_CACHE_ALIAS
        states = {b["state"] for b in snapshot["breakers"].values() if b["alias"] == alias}
        session = getattr(request, "session", None)
        response["X-Chaos-Pid"] = str(os.getpid())
        response["X-Chaos-Ms"] = f"{(time.perf_counter() - start) * 1000:.2f}"
        response["X-Chaos-Waited"] = str(snapshot["counters"]["cache_errors"] - errors)
        response["X-Chaos-Breaker"] = next(
            (state for state in ("open", "half_open") if state in states), "closed"
        )
        response["X-Chaos-Source"] = str(getattr(session, "source", None) or "")
        response["X-Chaos-Rejected"] = "1" if getattr(session, "backup_rejected", False) else "0"
        response["X-Chaos-Suspicious"] = str(_suspicious.value() - suspicious)
        response["X-Chaos-Exception"] = _exceptions.take()
        return response
