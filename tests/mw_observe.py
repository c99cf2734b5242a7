"""Middleware for the multi-worker test server: which worker answered, in what state.

Adds to every response ``X-DRS-Worker`` (the worker's pid), ``X-DRS-Breaker`` (the state of
the session cache's circuit breaker in that worker), ``X-DRS-Failures`` (the breaker's
failure count, which grows by one on every request that waited for a failing Redis) and
``X-DRS-Elapsed-Ms`` (time spent in Django, to tell server time from client-side delays).
It reads :func:`django_resilient_sessions.health.snapshot` only: no I/O, no session access.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

from django_resilient_sessions import health


class WorkerHeadersMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        start = time.perf_counter()
        response = self.get_response(request)
        elapsed = (time.perf_counter() - start) * 1000
        snapshot = health.snapshot()
        breaker = snapshot["breakers"].get(settings.SESSION_CACHE_ALIAS, {})
        response["X-DRS-Worker"] = str(snapshot["pid"])
        response["X-DRS-Breaker"] = str(breaker.get("state", "closed"))
        response["X-DRS-Failures"] = str(breaker.get("failures", 0))
        response["X-DRS-Elapsed-Ms"] = f"{elapsed:.1f}"
        return response
