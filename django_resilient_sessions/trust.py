"""The trust decision: which copy of a session serves a request, and what follows.

This module is pure: no I/O, no settings, no clock.  The engine
(:mod:`.backends.resilient`) gathers the states below, asks :func:`decide`, and
carries out the answer.  The whole rule book is the table that
:func:`django_resilient_sessions.trusttable.table` prints (``docs/trust-model.md``
shows it, and a test keeps the two in step).

States
    :class:`Cache`: what Redis holds for the session key: a copy, nothing, a
    tombstone (the session was ended), or no answer.

    :class:`Backup`: the backup cookie the request carries, compared with the
    Redis copy.  A backup records its own version, ``base`` (the version of
    the Redis copy it descends from) and its parent's fingerprint; it
    *descends* from a Redis copy at version ``r`` when ``base >= r`` (Redis has
    not moved since the backup branched off) or when that copy is its parent,
    and it is *newer* when its version is above ``r`` too.

    :class:`Row`: the session's ``UserSession`` row, asked only when a backup
    holding a login is about to be used.  ``AHEAD`` is an active row that has
    already served a newer backup of this session (so this one is a rollback).

Invariants the rules protect
    *never resurrect*: a tombstoned, ended or row-less login is never served;
    *no rollback*: a backup replaces a Redis copy only if it descends from it,
    and a login's backup older than one already served is refused;
    *fail closed*: a login the ledger cannot vouch for is withheld;
    *lose nothing*: a copy that may still be good is never destroyed because of
    a request that could not use it (cookies are kept).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

__all__ = [
    "Backup",
    "Cache",
    "Decision",
    "DeletePlan",
    "Row",
    "Serve",
    "Store",
    "Write",
    "classify",
    "decide",
    "plan_delete",
    "plan_save",
]


class Cache(Enum):
    PRESENT = "present"
    ABSENT = "absent"
    TOMBSTONED = "tombstoned"
    UNREACHABLE = "unreachable"


class Backup(Enum):
    NONE = "none"  # no backup cookie
    INVALID = "invalid"  # does not open: tampered, cut, expired, other session or key
    CURRENT = "current"  # the backup saved along with the Redis copy
    NEWER = "newer"  # descends from the Redis copy and is newer
    STALE = "stale"  # the Redis copy moved on since this backup branched off
    VALID = "valid"  # opens; no Redis copy to compare it with


class Row(Enum):
    NOT_ASKED = "-"
    ACTIVE = "active"
    AHEAD = "ahead"  # active, but a newer backup of this session was served
    ENDED = "ended"  # ended, expired, or another user's
    MISSING = "missing"
    UNREADABLE = "unreadable"


class Serve(Enum):
    CACHE = "cache"
    BACKUP = "backup"
    BACKUP_WITHOUT_LOGIN = "backup, login withheld"
    LEDGER_LOGIN = "the login alone, from its row"
    NOTHING = "nothing"
    ASK_LEDGER = "ask the ledger"
    ADOPT = "adopt it from the previous engine, if it knows the key"


class Write(Enum):
    NONE = "-"
    RECREATE = "recreate"  # put the backup into Redis if no copy is there
    REPLACE = "replace"  # put it over the copy that was read, if that is still there


@dataclass(frozen=True)
class Decision:
    serve: Serve
    write: Write = Write.NONE
    #: Give the client a fresh backup (its own is missing or behind).
    renew: bool = False
    #: The backup is refused: log it, signal it, delete the cookie.
    reject: bool = False
    #: Leave every cookie alone although nothing is served: the session may live on.
    keep_cookies: bool = False
    #: The ledger ended this session but Redis still holds it: delete that copy.
    purge: bool = False
    #: Why, for logs, signals and metrics.
    reason: str = ""


def classify(
    cache: Cache,
    *,
    token: bool,
    current: bool,
    opened: bool,
    version: int = 0,
    base: int = 0,
    cache_version: int = 0,
    child: bool = False,
) -> Backup:
    """The :class:`Backup` state of a request's backup cookie.

    ``token``: the request carries one; ``current``: its fingerprint is the one
    stored with the Redis copy (or, with no token, the Redis copy was saved
    with no backup at all because none fits: there is nothing to renew);
    ``opened``: it decrypted and authenticated; ``child``: it was made from
    the Redis copy itself (its parent fingerprint is the copy's), which covers
    a copy written back from it while the client went on elsewhere.
    """
    if cache is Cache.PRESENT and current:
        return Backup.CURRENT
    if not token:
        return Backup.NONE
    if not opened:
        return Backup.INVALID
    if cache is not Cache.PRESENT:
        return Backup.VALID
    if (base >= cache_version or child) and version > cache_version:
        return Backup.NEWER
    return Backup.STALE


_ASK = Decision(Serve.ASK_LEDGER)

# Reasons the engine acts on (the others are for logs and the docs).
ENDED = "ended"
ROW_ENDED = "row ended"
ROW_MISSING = "row missing"
ROLLBACK = "older than a backup already served"
LEDGER_LOGIN = "no copy: the row vouches for the login"
UNREADABLE_NOTHING = "no copy, ledger unreadable"
TRUSTED_UNCHECKED = "ledger unreadable: login trusted (FAIL_CLOSED off)"
ADOPT = "no copy, no row: the previous engine may know the key"


def decide(
    cache: Cache,
    backup: Backup,
    login: bool,
    row: Row = Row.NOT_ASKED,
    *,
    fail_closed: bool = True,
    adoptable: bool = False,
) -> Decision:
    """What to serve for these states; :attr:`Serve.ASK_LEDGER` asks for ``row``.

    ``login`` says whether the backup holds an authenticated user.
    ``adoptable``: ``PREVIOUS_ENGINE`` is set.  A key this engine has never seen
    (no copy, no tombstone, no backup, no row) is then looked up there
    (:attr:`Serve.ADOPT`, the one exception to "an unknown key is never
    adopted"); if that engine does not know it either, the answer is ``NOTHING``.
    """
    if cache is Cache.TOMBSTONED:
        return Decision(Serve.NOTHING, reject=backup is not Backup.NONE, reason=ENDED)
    if cache is Cache.PRESENT:
        if backup is Backup.CURRENT:
            return Decision(Serve.CACHE, reason="current")
        if backup is not Backup.NEWER:
            return Decision(
                Serve.CACHE, renew=True, reject=backup is Backup.INVALID, reason=backup.value
            )
        return _use_backup(Write.REPLACE, login, row, fail_closed, fallback=_REDIS_WINS)
    write = Write.RECREATE if cache is Cache.ABSENT else Write.NONE
    if backup is Backup.NONE:
        # No copy at hand: only the ledger can say whether this key holds a
        # login (a client that never carries the backup cookie, such as an app
        # with a session token).  An unknown key is never adopted; while Redis
        # cannot answer, the session may be fine there: keep the cookie.
        if row is Row.NOT_ASKED:
            return _ASK
        if row is Row.ACTIVE:
            return Decision(Serve.LEDGER_LOGIN, write=write, reason=LEDGER_LOGIN)
        if row is Row.MISSING and adoptable:
            return Decision(Serve.ADOPT, keep_cookies=cache is Cache.UNREACHABLE, reason=ADOPT)
        reason = {Row.ENDED: ROW_ENDED, Row.UNREADABLE: UNREADABLE_NOTHING}.get(row, "no copy")
        # (With adoption on, an unreadable ledger may hide a key to adopt: keep it too.)
        keep = cache is Cache.UNREACHABLE or (adoptable and row is Row.UNREADABLE)
        return Decision(Serve.NOTHING, keep_cookies=keep, reason=reason)
    if backup is Backup.INVALID:
        return Decision(
            Serve.NOTHING, reject=True, keep_cookies=cache is Cache.UNREACHABLE, reason="no copy"
        )
    return _use_backup(write, login, row, fail_closed, fallback=_KEEP_AND_SERVE_NOTHING)


_REDIS_WINS = Decision(Serve.CACHE, renew=True)
_KEEP_AND_SERVE_NOTHING = Decision(Serve.NOTHING, keep_cookies=True)


def _use_backup(
    write: Write, login: bool, row: Row, fail_closed: bool, fallback: Decision
) -> Decision:
    """Serve a backup that would win, once its login (if any) is vouched for.

    ``fallback`` is what to do when it must not win (an older backup than one
    served) but nothing proves the session over: with a Redis copy, Redis
    wins; without one, serve nothing and keep the cookies.
    """
    if not login:
        return Decision(Serve.BACKUP, write=write, reason="anonymous")
    if row is Row.NOT_ASKED:
        return _ASK
    if row is Row.ACTIVE:
        return Decision(Serve.BACKUP, write=write, reason="row active")
    if row is Row.AHEAD:
        # A newer backup of this login was served; Redis, if it has a copy, is
        # older still: neither may win over it.  Serve nothing, touch nothing.
        return replace(_KEEP_AND_SERVE_NOTHING, reason=ROLLBACK)
    if row in (Row.ENDED, Row.MISSING):
        # The ledger is the authority: a Redis copy that outlived its row goes too.
        return Decision(
            Serve.NOTHING,
            reject=True,
            purge=fallback is _REDIS_WINS,
            reason=ROW_ENDED if row is Row.ENDED else ROW_MISSING,
        )
    # The ledger cannot answer.  The backup still wins over what it descends
    # from (its writes must not be lost), but nothing is written back, and its
    # login is held back (fail closed) until the ledger vouches for it.
    if fail_closed:
        return Decision(Serve.BACKUP_WITHOUT_LOGIN, reason="ledger unreadable: login withheld")
    return Decision(Serve.BACKUP, reason=TRUSTED_UNCHECKED)


class Store(Enum):
    CREATE = "create: SET NX (a new key)"
    UPDATE = "update: SET XX, or recreate if the copy is gone"
    RECREATE = "recreate: the write-back script (absent copy, no tombstone)"
    SKIP = "backup only"


def plan_save(*, must_create: bool, in_cache: bool, confirmed: bool, reachable: bool) -> Store:
    """How a save writes the Redis copy.

    ``in_cache``: the session was read from (or written to) Redis in this
    request; ``confirmed``: no login is held back (a withheld login must not
    reach Redis, or an anonymous copy would shadow it); ``reachable``: the
    breaker lets calls through.  A copy not read from Redis is only recreated,
    never written over: if Redis holds another one, the next load compares them.
    """
    if not reachable or not confirmed:
        return Store.SKIP
    if must_create:
        return Store.CREATE
    return Store.UPDATE if in_cache else Store.RECREATE


@dataclass(frozen=True)
class DeletePlan:
    #: End the ``UserSession`` row; if that fails, the deletion fails visibly.
    end_row: bool
    #: When Redis cannot delete its copy now, queue the deletion; for a login
    #: a queue that cannot be written fails the deletion visibly too.
    queue: bool
    #: A failure to queue is the caller's error (a login), not only a log line.
    must_queue: bool


def plan_delete(*, login: bool | None, in_redis: bool) -> DeletePlan:
    """What deleting a session must achieve.

    ``login``: the session holds (or held back) a login; ``None`` when unknown
    (a key deleted without being loaded), which counts as one.  ``in_redis``:
    Redis may hold a copy (a session that was never stored there, created
    during an outage, queues nothing: so nobody can fill the queue at will).
    """
    is_login = login is not False
    return DeletePlan(end_row=is_login, queue=in_redis, must_queue=in_redis and is_login)
