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
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any, ParamSpec, TypeVar

from django.conf import settings
from django.db import router, transaction
from django.utils import timezone

from .exceptions import LedgerUnavailable
from .models import UserSession

logger = logging.getLogger("django_resilient_sessions")
P = ParamSpec("P")
R = TypeVar("R")
#: Keys per ``IN (...)`` list.
BATCH = 500


def guarded(function: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except LedgerUnavailable:
            raise
        # The ORM raises DatabaseError subclasses, but a driver or a field may
        # raise ValueError or TypeError for a value it cannot take (a NUL byte
        # on PostgreSQL, an aware datetime on a USE_TZ = False SQLite): the
        # ledger could not answer either way, and the caller fails closed.
        except Exception as error:
            logger.error("Session ledger %s failed: %r", function.__name__, error)
            raise LedgerUnavailable(f"{function.__name__}: {error}") from error

    return wrapper


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
