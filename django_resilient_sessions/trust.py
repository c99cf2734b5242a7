"""The trust decision: which copy of a session serves a request, and what follows.

This module is pure: no I/O, no settings, no clock.  The engine
(the ``engine`` layers, assembled in :mod:`.backends.resilient`) gathers the states
below, asks :func:`decide`, and carries out the answer, for each operation
(:class:`Op`): a load (which copy serves, whether a backup's login is trusted,
what is written back), a save (how the copies are written, and when the ledger
must record the version first), a login (recorded, or not a login) and a
deletion (what ending a session must achieve).  The whole rule book is the
table that :mod:`django_resilient_sessions.trusttable` prints
(``docs/trust-model.md`` shows it, and a test keeps the two in step).

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
    holding a login is about to be used, when a login's save must be recorded
    because Redis cannot take it, at login, and at a deletion.  ``AHEAD`` is an
    active row that has already served a newer backup of this session (so this
    one is a rollback); ``UNREADABLE`` and ``UNWRITABLE`` are a database that
    did not answer a read, or refused a write.

Invariants the rules protect
    *never resurrect*: a tombstoned, ended or row-less login is never served;
    *no rollback*: a backup replaces a Redis copy only if it descends from it,
    and a login's backup older than one already served is refused;
    *fail closed*: a login the ledger cannot vouch for is withheld, a login it
    cannot record is not a login, an end it cannot record fails visibly;
    *lose nothing*: a copy that may still be good is never destroyed because of
    a request that could not use it (cookies are kept).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = [
    "Backup",
    "Cache",
    "Decision",
    "Op",
    "Row",
    "Serve",
    "Write",
    "classify",
    "decide",
]


class Op(Enum):
    LOAD = "load"  # which copy serves a request
    SAVE = "save"  # how a save writes the copies
    LOGIN = "login"  # recording a login
    DELETE = "delete"  # what ending a session must achieve


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
    MISSING = "missing"  # never recorded (or, at login, refused: the session limit)
    UNREADABLE = "unreadable"  # the database did not answer a read
    UNWRITABLE = "unwritable"  # the database refused a write (read-only, locked, down)


class Serve(Enum):
    CACHE = "cache"
    BACKUP = "backup"
    BACKUP_WITHOUT_LOGIN = "backup, login withheld"
    LEDGER_LOGIN = "the login alone, from its row"
    NOTHING = "nothing"
    ASK_LEDGER = "ask the ledger"
    ADOPT = "adopt it from the previous engine, if it knows the key"
    #: A save, a login or a deletion serves nothing.
    NOT_A_LOAD = "-"


class Write(Enum):
    NONE = "-"
    CREATE = "create"  # a new key: SET NX
    UPDATE = "update"  # over the copy in hand, unless a tombstone replaced it
    RECREATE = "recreate"  # put the copy into Redis if no copy is there
    REPLACE = "replace"  # put it over the copy that was read, if that is still there
    TOMBSTONE = "tombstone"  # the tombstone in place of the copy


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
    #: A save: the login's row is over, so the login leaves the session.
    end_login: bool = False
    #: The operation fails visibly: ``LedgerUnavailable`` (HTTP 503, nothing
    #: changed), ``UpdateError`` for a save over an ended session, or the login
    #: refused (``SessionLimitExceeded``).
    refuse: bool = False
    #: A save that is a mere renewal, refused: nothing is saved, nothing said.
    skip: bool = False
    #: A save whose row could not follow the session's expiry: the Redis copy
    #: must not outlive the row (its TTL is capped at the row's expiry + grace).
    cap_ttl: bool = False
    #: A deletion: end the row first (durably, or the deletion fails visibly).
    end_row: bool = False
    #: A deletion Redis cannot take now is queued; for a login, a queue that
    #: cannot be written fails the deletion visibly too (``must_queue``).
    queue: bool = False
    must_queue: bool = False
    #: Why, for logs, signals and metrics.
    reason: str = ""

    @property
    def ask(self) -> bool:
        """The ledger row must be asked (or written) first; then decide again with it."""
        return self.serve is Serve.ASK_LEDGER


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


# Pure, over a few enums and flags: each answer is worked out once per process
# (every load and save asks; a lookup costs a fraction of the walk).
@functools.lru_cache(maxsize=1024)
def decide(
    cache: Cache,
    backup: Backup = Backup.NONE,
    login: bool | None = False,
    row: Row = Row.NOT_ASKED,
    *,
    op: Op = Op.LOAD,
    fail_closed: bool = True,
    adoptable: bool = False,
    changed: bool = True,
    new_key: bool = False,
    withheld: bool = False,
) -> Decision:
    """What to do for these states; a decision whose :attr:`~Decision.ask` is set
    asks for ``row`` first.

    ``login``: the backup (a load), the session (a save, a deletion) holds an
    authenticated user; ``None`` at a deletion: unknown (not loaded), which
    counts as one.  ``adoptable`` (a load): ``PREVIOUS_ENGINE`` is set.  A key
    this engine has never seen (no copy, no tombstone, no backup, no row) is
    then looked up there (:attr:`Serve.ADOPT`, the one exception to "an unknown
    key is never adopted"); if that engine does not know it either, the answer
    is ``NOTHING``.  For a save: ``cache`` is ``PRESENT`` when the copy in hand
    came from (or went to) Redis, ``ABSENT`` when not, ``TOMBSTONED`` when the
    write met a tombstone and ``UNREACHABLE`` when Redis cannot take it;
    ``changed``: the session was modified (not a mere renewal of its backup);
    ``new_key``: it is being created; ``withheld``: its login is held back.
    For a deletion: ``cache`` is ``PRESENT`` when Redis may hold a copy,
    ``ABSENT`` when it never did (created during an outage).
    """
    if op is Op.SAVE:
        return _save(cache, bool(login), row, changed=changed, new_key=new_key, withheld=withheld)
    if op is Op.LOGIN:
        return _login(row)
    if op is Op.DELETE:
        return _delete(cache, login, row)
    return _load(cache, backup, bool(login), row, fail_closed, adoptable)


def _load(
    cache: Cache, backup: Backup, login: bool, row: Row, fail_closed: bool, adoptable: bool
) -> Decision:
    """Which copy serves a request."""
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
        if adoptable and row is Row.NOT_ASKED:
            return _ASK  # a backup that does not open is no copy: the key may be adoptable
        if adoptable and row is Row.MISSING:
            # (A backup cookie left by an earlier trial of this engine, under another key,
            # must not cost the user the session the previous engine keeps.)
            return Decision(
                Serve.ADOPT, reject=True, keep_cookies=cache is Cache.UNREACHABLE, reason=ADOPT
            )
        keep = cache is Cache.UNREACHABLE or (adoptable and row is Row.UNREADABLE)
        return Decision(Serve.NOTHING, reject=True, keep_cookies=keep, reason="no copy")
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
        # older still: neither may win over it.  The row vouches for the login
        # (as it would for a request without any backup): serve the login alone,
        # none of the older data, and write nothing back.
        return Decision(Serve.LEDGER_LOGIN, keep_cookies=True, reason=ROLLBACK)
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


# Saving, logging in, ending -------------------------------------------------

_DONE = Decision(Serve.NOT_A_LOAD)


def _done(**changes: Any) -> Decision:
    """A decision of a save, login or deletion (``_DONE`` with ``changes``).

    Built directly: ``dataclasses.replace`` looks every field up again, and this
    runs on every save."""
    return Decision(Serve.NOT_A_LOAD, **changes)


ENDED_MEANWHILE = "ended meanwhile"
BACKUP_ONLY = "backup only"
RECORDED = "backup only, its version recorded"
ROW_OVER = "renewal found the row over"
UNPROTECTED = "version cannot be recorded"
ACTIVITY_LATER = "activity can wait"
WITHHELD = "login withheld: backup only"
WRITABLE = "Redis takes it"


def _save(
    cache: Cache, login: bool, row: Row, *, changed: bool, new_key: bool, withheld: bool
) -> Decision:
    """How a save writes the copies (the backup is always written, unless refused).

    A copy not read from Redis is only recreated, never written over: if Redis
    holds another one, the next load compares them.  A login's save that only
    the backup would keep must have its version recorded by its row first, or
    an older backup could win over it.
    """
    if cache is Cache.TOMBSTONED:
        # The session ended meanwhile (logout in another tab, revoked).
        return _done(refuse=changed, skip=not changed, reason=ENDED_MEANWHILE)
    if withheld:
        # A login held back must not reach Redis: an anonymous copy would shadow it.
        return _done(reason=WITHHELD)
    if row in (Row.ENDED, Row.MISSING):
        # Whatever else happens, a login whose row is over leaves the session.
        write = Write.NONE if cache is Cache.UNREACHABLE else _write_for(cache, new_key)
        return _done(write=write, end_login=True, reason=ROW_OVER)
    if cache is not Cache.UNREACHABLE:
        if row is Row.UNWRITABLE and login:
            return _done(write=_write_for(cache, new_key), cap_ttl=True, reason=ACTIVITY_LATER)
        return _done(write=_write_for(cache, new_key), reason=WRITABLE)
    if not login:
        return _done(reason=BACKUP_ONLY)
    if row is Row.NOT_ASKED:
        return _ASK
    if row in (Row.UNWRITABLE, Row.UNREADABLE):
        return _done(refuse=changed, skip=not changed, reason=UNPROTECTED)
    return _done(reason=RECORDED)


def _write_for(cache: Cache, new_key: bool) -> Write:
    if new_key:
        return Write.CREATE
    return Write.UPDATE if cache is Cache.PRESENT else Write.RECREATE


LOGIN_RECORDED = "login recorded"
LOGIN_REFUSED = "login not recorded"
LIMIT = "at the session limit"


def _login(row: Row) -> Decision:
    """A login is recorded by its row, or it is not a login."""
    if row is Row.NOT_ASKED:
        return _ASK
    if row is Row.ACTIVE:
        return _done(reason=LOGIN_RECORDED)
    if row is Row.MISSING:
        return _done(refuse=True, reason=LIMIT)  # the ledger made no row: no room
    return _done(refuse=True, reason=LOGIN_REFUSED)


ROW_THEN_TOMBSTONE = "row ended, then the tombstone"
END_REFUSED = "end not recorded"
TOMBSTONE_ONLY = "anonymous: the tombstone, best effort"


def _delete(cache: Cache, login: bool | None, row: Row) -> Decision:
    """What ending a session must achieve.

    A login (or a session whose login is unknown or held back) ends its row
    first, durably, or the deletion fails visibly and changes nothing; then its
    Redis copy becomes a tombstone, or the deletion is queued, and a queue that
    cannot be written fails it visibly too.  A session that was never in Redis
    queues nothing, so nobody can fill the queue at will.
    """
    is_login = login is not False
    in_redis = cache is not Cache.ABSENT
    if is_login and row in (Row.UNWRITABLE, Row.UNREADABLE):
        return _done(refuse=True, reason=END_REFUSED)
    return _done(
        write=Write.TOMBSTONE,
        end_row=is_login,
        queue=in_redis,
        must_queue=in_redis and is_login,
        reason=ROW_THEN_TOMBSTONE if is_login else TOMBSTONE_ONLY,
    )
