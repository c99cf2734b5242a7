"""How the ledger and the outbox run their statements.

Every function of :mod:`.ledger` and :mod:`.outbox` is :func:`guarded`: whatever
the database or its driver raises becomes
:class:`~.exceptions.LedgerUnavailable`, so that the engine fails closed on one
exception type.  Writes go to the database the router picks for ``UserSession``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any, ParamSpec, TypeVar

from django.conf import settings
from django.db import connections, router, transaction
from django.utils import timezone

from . import health
from .exceptions import LedgerUnavailable
from .models import UserSession

logger = logging.getLogger("django_resilient_sessions")
P = ParamSpec("P")
R = TypeVar("R")
#: Keys per ``IN (...)`` list.
BATCH = 500


def guarded(function: Callable[P, R]) -> Callable[P, R]:
    name = function.__name__

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        # Timed only when a metrics sink listens (no clock reads otherwise).
        start = time.perf_counter() if health.sink is not None else 0.0
        try:
            return function(*args, **kwargs)
        except LedgerUnavailable:
            raise
        # The ORM raises DatabaseError subclasses, but a driver or a field may
        # raise ValueError or TypeError for a value it cannot take (a NUL byte
        # on PostgreSQL, an aware datetime on a USE_TZ = False SQLite): the
        # ledger could not answer either way, and the caller fails closed.
        except Exception as error:
            logger.error("Session ledger %s failed: %r", name, error)
            health.count("ledger_errors", label=name)
            raise LedgerUnavailable(f"{name}: {error}") from error
        finally:
            if start:
                health.observe("ledger_query", time.perf_counter() - start, name)

    return wrapper


#: Checks in flight at once per lane (a hung database holds them): past that, fail at once.
BOUNDED_IN_FLIGHT = 4
#: One lane per kind of check: a scrape's query that waits on a lock (its table's)
#: must not take the places of the health check's ``SELECT 1``, which does not.
LANES = ("health", "metrics")
_lanes = {lane: threading.BoundedSemaphore(BOUNDED_IN_FLIGHT) for lane in LANES}


def bounded(function: Callable[[], R], timeout: float, *, lane: str = "health") -> R:
    """``function()`` (database work) in a thread of its own, waited for ``timeout`` seconds.

    For health checks and scrapes, which must answer whatever the database
    does: past the timeout :class:`LedgerUnavailable` is raised and the thread
    is left to finish (its connection is closed when it does).  At most
    ``BOUNDED_IN_FLIGHT`` such threads at a time per ``lane`` (one of
    ``LANES``): while that many still wait (a hung database), the next call
    fails at once.
    """
    slots = _lanes[lane]
    if not slots.acquire(blocking=False):
        raise LedgerUnavailable("earlier checks are still waiting for the database")
    outcome: list[tuple[bool, Any]] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, function()))
        # Reported to the caller, whatever it was (the caller never raises it on).
        except Exception as error:
            outcome.append((False, error))
        finally:
            connections.close_all()  # this thread's connections only
            slots.release()
            done.set()

    threading.Thread(target=run, name="drs-db-check", daemon=True).start()
    if not done.wait(timeout):
        raise LedgerUnavailable(f"no answer within {timeout:g} s")
    ok, value = outcome[0]
    if not ok:
        error = value if isinstance(value, LedgerUnavailable) else None
        raise error or LedgerUnavailable(f"{type(value).__name__}: {value}") from value
    result: R = value
    return result


def db() -> str:
    return router.db_for_write(UserSession)


def one_statement() -> Any:
    """Room for one statement: none needed in autocommit (a statement is atomic), a
    savepoint inside a caller's transaction (so a failure does not spoil it)."""
    using = db()
    if transaction.get_connection(using).in_atomic_block:
        return transaction.atomic(using=using)
    return contextlib.nullcontext()


def when(timestamp: float) -> datetime:
    """A unix time as the database takes it (naive local time under ``USE_TZ = False``)."""
    value = datetime.fromtimestamp(timestamp, tz=dt_timezone.utc)
    return value if settings.USE_TZ else timezone.make_naive(value)


def batches(items: Sequence[str], size: int = BATCH) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
