"""The outbox of Redis deletions (``PendingPurge``).

An end is recorded in the ledger together with the deletion of its Redis copy
(:func:`add`, in the same transaction); the process that ended it then deletes
in Redis and takes the entry off (:func:`unqueue`), or leaves it for the drain
(:mod:`.purges`) when Redis does not take it (:func:`release`).  Entries are in
flight while their process still works on them, pending after that.

Each entry knows its session's Redis Cluster hash slot (:func:`slot_of`), so a
cluster node's breaker waits for, and its drain does, that node's slots only:
``slots`` arguments are inclusive ``(first, last)`` ranges, ``None`` for all.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Max, Q, QuerySet
from django.utils import timezone
from redis.crc import key_slot

from .dbaccess import batches, db, guarded, one_statement
from .models import PendingPurge

#: Seconds after which a deletion still "in flight" (its process failed) counts as pending.
SETTLED = 5.0


Slots = Sequence[tuple[int, int]] | None


def slot_of(key_hash: str) -> int:
    """The hash slot of the session's Redis key on a cluster (its hash tag is the key hash)."""
    return int(key_slot(key_hash.encode()))


def _queue() -> QuerySet[PendingPurge]:
    """The queue on the ledger's database (reads too, as ``ledger._rows``), so that
    an entry is written in the same transaction as its end and no replica hides one."""
    entries: QuerySet[PendingPurge] = PendingPurge.objects.using(db())
    return entries


def add(key_hashes: Sequence[str], *, in_flight: bool = True) -> None:
    """Queue these deletions (inside the caller's transaction: no guard of its own)."""
    _queue().bulk_create(
        [PendingPurge(key_hash=h, in_flight=in_flight, slot=slot_of(h)) for h in key_hashes],
        ignore_conflicts=True,
    )


def _in(slots: Slots) -> Q:
    """The entries of these slot ranges (all for ``None``)."""
    if slots is None:
        return Q()
    found = Q(pk__in=[])
    for first, last in slots:
        found |= Q(slot__gte=first, slot__lte=last)
    return found


def _due(slots: Slots = None) -> Any:
    """The queued deletions still to do: not in flight, or in flight too long."""
    settled = timezone.now() - timedelta(seconds=SETTLED)
    return _queue().filter(Q(in_flight=False) | Q(created_at__lt=settled), _in(slots))


@guarded
def queue(key_hashes: Sequence[str]) -> None:
    """Remember Redis deletions to do once Redis answers."""
    with transaction.atomic(using=db()):
        for batch in batches(list(key_hashes)):
            add(batch, in_flight=False)


@guarded
def release(key_hashes: Sequence[str]) -> None:
    """Redis did not take these in-flight deletions: they are pending now."""
    with one_statement():
        _queue().filter(key_hash__in=list(key_hashes)).update(in_flight=False)


@guarded
def queue_top() -> int:
    """The newest queue entry's primary key (0 if none): where a drain stops."""
    return int(_queue().aggregate(top=Max("pk"))["top"] or 0)


@guarded
def queued(limit: int, upto: int, slots: Slots = None) -> list[str]:
    """Queued deletions up to primary key ``upto``, in flight or not (a drain does all)."""
    rows = _queue().filter(_in(slots), pk__lte=upto).order_by("pk")
    return list(rows.values_list("key_hash", flat=True)[:limit])


@guarded
def unqueue(key_hashes: Sequence[str]) -> int:
    """Take these deletions off the queue; returns how many were still on it."""
    with one_statement():
        return int(_queue().filter(key_hash__in=list(key_hashes)).delete()[0])


@guarded
def queue_exists(*, settled_only: bool = False, slots: Slots = None) -> bool:
    """Is a Redis deletion queued?  ``settled_only``: pending ones (see :func:`_due`)."""
    rows = _due(slots) if settled_only else _queue().filter(_in(slots))
    return bool(rows.exists())


@guarded
def pending_slots() -> set[int]:
    """The slots with pending deletions (see :func:`_due`)."""
    return set(_due().values_list("slot", flat=True).distinct())


@guarded
def queue_length() -> int:
    return int(_due().count())


@guarded
def queue_size(cap: int) -> int:
    """Queued deletions, in flight or not, counted up to ``cap`` (one bounded query)."""
    return int(PendingPurge.objects.all()[:cap].count())
