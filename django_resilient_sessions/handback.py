"""Coming back: a session this engine mirrored into the engine the site now switches from.

A site that left this engine (``EXPORT_TO``, then the stock engine) and comes
back to it (``PREVIOUS_ENGINE`` naming that stock engine) may find its old
state still here: Redis copies, backup cookies in browsers, ledger rows.  They
are from before it left.  Meanwhile the stock engine served those sessions
under the same keys: users logged out there, or changed their carts there.
So for a key whose copy here was mirrored into the previous engine (its data
carries ``EXPORTED_KEY`` naming it), the previous store is the authority:

* if it keeps a live session under the key, that session is adopted
  (:func:`.adoption.take_over`), replacing what this engine held: its Redis
  copy, its ledger row (ended, or restarted for the adopted login);
* if it does not (logged out there, expired there), the session is over here
  too: its row ends (``exported``), its Redis copy becomes a tombstone.

A backup cookie from before, met with a Redis copy that was handed back since,
is merely stale: the Redis copy serves.  While Redis does not answer nothing
is decided: the request is served nothing and keeps its cookies.

``exportsessions --finish``, the last step of leaving, ends the rows and
deletes the copies at once (:func:`finish`), so that the ledger and Redis
serve nothing of them even when ``PREVIOUS_ENGINE`` is not set on the way
back; the backup cookies in browsers are then met here.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import adoption, export, ledger, previous, tracking
from .cachecopy import TOMBSTONE, CacheRead
from .conf import EXPORTED_KEY, conf
from .dbaccess import db, guarded
from .exceptions import LedgerUnavailable
from .models import AdoptedSession, AdoptionBar, EndReason
from .trust import Cache

if TYPE_CHECKING:
    from .codec import Backup
    from .engine.loading import Loading

__all__ = ["Finished", "Plan", "finish", "hand_back", "marked", "plan"]

logger = logging.getLogger("django_resilient_sessions")


class Plan(enum.Enum):
    NONE = "none"  # nothing here came from the previous engine: load as usual
    HAND_BACK = "hand back"  # the previous store decides (see the module docstring)
    STALE_BACKUP = "stale backup"  # the backup is from before; the Redis copy serves


def marked(data: dict[str, Any]) -> bool:
    """Was this copy mirrored into ``PREVIOUS_ENGINE`` (and is mirroring over)?"""
    target = conf.PREVIOUS_ENGINE
    return target is not None and target != conf.EXPORT_TO and data.get(EXPORTED_KEY) == target


def plan(read: CacheRead, backup: Backup | None) -> Plan:
    """What the copies at hand say (no I/O)."""
    if conf.PREVIOUS_ENGINE is None:
        return Plan.NONE
    if read.entry is not None and marked(read.entry.data):
        return Plan.HAND_BACK
    if backup is None or not marked(backup.data):
        return Plan.NONE
    if read.state is Cache.PRESENT:
        return Plan.STALE_BACKUP
    if read.state is Cache.TOMBSTONED:
        return Plan.NONE  # ended here before the site left: refused as usual
    return Plan.HAND_BACK


def hand_back(store: Loading, read: CacheRead) -> dict[str, Any] | None:
    """Let the previous store decide this session (see the module docstring).

    Returns the adopted data, or ``None``: nothing is served (the cookies are
    kept when nothing could be decided: ``store.keep_cookie``).
    """
    again = store._adoption_done
    store._adoption_done = True
    if again or read.state is Cache.UNREACHABLE:
        store.keep_cookie = True  # decided once Redis (or the other request) is done
        return None
    key = store.session_key
    assert key is not None
    try:
        found = previous.lookup(key)
    except previous.PreviousUnavailable:
        store.keep_cookie = True
        return None
    if found is not None:
        return adoption.take_over(store, read, found, over=True)
    when = adoption.adopted_at(store.key_hash)
    if when is None:
        store.keep_cookie = True  # the database cannot say whether a request just did it
        return None
    if time.time() - when < adoption.RACE_SECONDS:
        return adoption.load_again(store, when)  # a concurrent request handed it back
    try:
        tracking.end_one(store.key_hash, str(EndReason.EXPORTED), login=True, in_redis=True)
    except LedgerUnavailable:
        store.keep_cookie = True
        return None
    logger.info(
        "A session from before the site left this engine ended: %s has none.", previous.engine()
    )
    return None


# Leaving: exportsessions --finish ---------------------------------------------------------


@dataclass
class Finished:
    #: Ledger rows ended (``exported``).
    ended: int = 0
    #: Redis copies deleted (tombstones are kept).
    removed: int = 0
    #: ``AdoptedSession`` records and adoption bars forgotten.
    forgotten: int = 0


def finish(batch: int = 1000) -> Finished:
    """Forget every session this engine holds: the last step of leaving it.

    Run once the site serves its sessions from the ``EXPORT_TO`` engine.  Every
    row not ended yet ends (``exported``: on the way back, its key is adopted
    from that engine if it is live there); every Redis copy is deleted (a plain
    ``DEL``: a tombstone would refuse that adoption), tombstones stay (those
    sessions ended here before the site left); the ``AdoptedSession`` records
    and the adoption bars, which are about the store this engine adopted from,
    are deleted.  Rows in windows of ``CLEANUP_BATCH_SIZE`` primary keys, Redis
    a ``SCAN`` batch at a time; it can be stopped and run again.
    """
    done = Finished()
    low, high = ledger.pk_bounds()
    if low is not None and high is not None:
        size = conf.CLEANUP_BATCH_SIZE
        for first in range(low, high + 1, size):
            done.ended += ledger.end_all(first, size, str(EndReason.EXPORTED))
    done.forgotten = _forget_adoptions()
    for _cache, client, keys in export.scan(batch):
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.strlen(key)
        copies = [k for k, n in zip(keys, pipe.execute(), strict=True) if n != len(TOMBSTONE)]
        if copies:
            pipe = client.pipeline(transaction=False)
            for key in copies:
                pipe.delete(key)
            done.removed += sum(int(n) for n in pipe.execute())
    return done


@guarded
def _forget_adoptions() -> int:
    using = db()
    records = AdoptedSession.objects.using(using).all().delete()[0]
    return int(records + AdoptionBar.objects.using(using).all().delete()[0])
