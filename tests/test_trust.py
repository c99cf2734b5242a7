"""The trust decision as a pure function: every state, every invariant, and the docs' table.

``trust.decide()`` is exhaustively enumerable (a few dozen states), so every invariant
it protects is checked here over all of them, not over examples.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from django_resilient_sessions import trust, trusttable
from django_resilient_sessions.trust import Backup, Cache, Decision, Op, Row, Serve, Write

DOC = Path(__file__).resolve().parent.parent / "docs" / "trust-model.md"
# The ledger's answers to a read (a load never writes the row).
ROWS = [row for row in Row if row not in (Row.NOT_ASKED, Row.UNWRITABLE)]


def every_state() -> list[tuple[Cache, Backup, bool, Row, bool, Decision]]:
    """(cache, backup, login, row, fail_closed, final decision) over the whole space."""
    states = []
    for cache, login, fail_closed in itertools.product(Cache, (False, True), (False, True)):
        for backup in trusttable.possible_backups(cache):
            add(states, cache, backup, login, fail_closed)
    return states


def add(
    states: list[tuple[Cache, Backup, bool, Row, bool, Decision]],
    cache: Cache,
    backup: Backup,
    login: bool,
    fail_closed: bool,
) -> None:
    first = trust.decide(cache, backup, login, fail_closed=fail_closed)
    if not first.ask:
        states.append((cache, backup, login, Row.NOT_ASKED, fail_closed, first))
        return
    for row in ROWS:
        if backup is Backup.NONE and row is Row.AHEAD:
            continue  # without a backup there is no version to be behind
        decision = trust.decide(cache, backup, login, row, fail_closed=fail_closed)
        assert decision.serve is not Serve.ASK_LEDGER
        states.append((cache, backup, login, row, fail_closed, decision))


STATES = every_state()


def test_the_ledger_is_asked_only_where_a_login_may_be_served_without_redis() -> None:
    """For a backup's login that would win, or for a key with no copy at hand at all."""
    for cache, backup, login, row, _, _ in STATES:
        if row is not Row.NOT_ASKED:
            assert cache is not Cache.TOMBSTONED
            if backup is Backup.NONE:
                assert cache in (Cache.ABSENT, Cache.UNREACHABLE)
            else:
                assert login and backup in (Backup.NEWER, Backup.VALID)


def test_the_login_alone_from_an_active_row_without_a_backup_or_over_an_older_one() -> None:
    for cache, backup, _, row, _, decision in STATES:
        if decision.serve is Serve.LEDGER_LOGIN and row is Row.AHEAD:
            assert backup is not Backup.NONE and decision.write is Write.NONE
        elif decision.serve is Serve.LEDGER_LOGIN:
            assert backup is Backup.NONE and row is Row.ACTIVE
            assert decision.write is (Write.RECREATE if cache is Cache.ABSENT else Write.NONE)


def test_never_resurrect() -> None:
    """A tombstone, an ended or a missing row: nothing of it is served, the backup is refused."""
    for cache, backup, _, row, _, decision in STATES:
        if cache is Cache.TOMBSTONED or row in (Row.ENDED, Row.MISSING):
            assert decision.serve is Serve.NOTHING
            assert decision.write is Write.NONE
            assert decision.reject == (backup is not Backup.NONE)
        if row in (Row.ENDED, Row.MISSING) and cache is Cache.PRESENT:
            assert decision.purge  # the Redis copy that outlived its row goes too


def test_no_rollback() -> None:
    """A backup wins over a Redis copy only when it descends from it; an older one never."""
    for cache, backup, _, row, _, decision in STATES:
        if cache is Cache.PRESENT and backup is not Backup.NEWER:
            assert decision.serve is Serve.CACHE
            assert decision.write is Write.NONE
        if row is Row.AHEAD:
            # Neither this backup nor Redis (older still) may win: none of their data
            # is served, nothing is written, and the client keeps its cookies (its
            # newer backup may be in another request's answer). The row vouches for
            # the login alone, as it does for a request that carries no backup.
            assert decision.serve is Serve.LEDGER_LOGIN
            assert decision.write is Write.NONE
            assert decision.keep_cookies and not decision.renew
        if decision.write is Write.REPLACE:
            assert cache is Cache.PRESENT and backup is Backup.NEWER


def test_fail_closed() -> None:
    """A login the ledger cannot vouch for is never served, nor written anywhere."""
    for _, backup, _, row, fail_closed, decision in STATES:
        if row is not Row.UNREADABLE:
            continue
        assert decision.write is Write.NONE  # nothing unconfirmed is written anywhere
        if backup is Backup.NONE:
            assert decision.serve is Serve.NOTHING
        elif fail_closed:
            assert decision.serve is Serve.BACKUP_WITHOUT_LOGIN
        else:
            assert decision.serve is Serve.BACKUP


def test_lose_nothing() -> None:
    """What may still be good is never destroyed by a request that could not use it."""
    for cache, backup, login, row, _, decision in STATES:
        if cache is Cache.UNREACHABLE:
            assert decision.write is Write.NONE
            assert not decision.purge
            if decision.serve is Serve.NOTHING and not decision.reject:
                assert decision.keep_cookies  # the session may be fine in Redis
        if cache is Cache.ABSENT and backup is Backup.VALID and (not login or row is Row.ACTIVE):
            assert (decision.serve, decision.write) == (Serve.BACKUP, Write.RECREATE)
        if backup is Backup.NEWER and (not login or row is Row.ACTIVE):
            assert (decision.serve, decision.write) == (Serve.BACKUP, Write.REPLACE)
        if decision.serve is Serve.CACHE and backup is not Backup.CURRENT:
            assert decision.renew  # the client's backup is behind: give it the Redis copy


def test_no_fixation() -> None:
    """An unknown session key without a usable backup is never adopted: without a backup
    only a login whose row is active is served (the login alone)."""
    for cache, backup, _, row, _, decision in STATES:
        if cache in (Cache.ABSENT, Cache.UNREACHABLE) and backup in (Backup.NONE, Backup.INVALID):
            if backup is Backup.NONE and row is Row.ACTIVE:
                assert decision.serve is Serve.LEDGER_LOGIN
            else:
                assert decision.serve is Serve.NOTHING


@pytest.mark.parametrize(
    ("base", "child", "version", "expected"),
    [
        (5, False, 6, Backup.NEWER),  # branched off the copy itself
        (7, False, 9, Backup.NEWER),  # Redis lagging (a replica promoted)
        (4, False, 9, Backup.STALE),  # Redis moved on after the branch: a rollback branch
        (4, True, 6, Backup.NEWER),  # ...unless the copy is its parent (written back)
        (5, False, 5, Backup.STALE),  # same version, other content: Redis wins
        (9, False, 4, Backup.STALE),  # older
    ],
)
def test_classify_lineage(base: int, child: bool, version: int, expected: Backup) -> None:
    state = trust.classify(
        Cache.PRESENT,
        token=True,
        current=False,
        opened=True,
        version=version,
        base=base,
        cache_version=5,
        child=child,
    )
    assert state is expected


def test_classify_without_a_token_and_without_a_copy() -> None:
    assert trust.classify(Cache.ABSENT, token=False, current=False, opened=False) is Backup.NONE
    # A Redis copy saved without any backup (none fits): there is nothing to renew.
    assert trust.classify(Cache.PRESENT, token=False, current=True, opened=False) is Backup.CURRENT
    assert trust.classify(Cache.ABSENT, token=True, current=False, opened=False) is Backup.INVALID


SAVE_STATES = [
    (cache, login, withheld, changed, new_key, row)
    for cache in Cache
    for login, withheld in ((False, False), (True, False), (False, True))
    for changed in (False, True)
    for new_key in (False, True)
    for row in Row
]


def save(
    cache: Cache, login: bool, withheld: bool, changed: bool, new_key: bool, row: Row
) -> Decision:
    return trust.decide(
        cache,
        login=login,
        row=row,
        op=Op.SAVE,
        changed=changed,
        new_key=new_key,
        withheld=withheld,
    )


def test_a_save_writes_redis_only_where_it_may() -> None:
    """One write per save; never over a tombstone; a copy not read from Redis is only
    recreated (never written over); a withheld login never reaches Redis."""
    for cache, login, withheld, changed, new_key, row in SAVE_STATES:
        d = save(cache, login, withheld, changed, new_key, row)
        if cache in (Cache.TOMBSTONED, Cache.UNREACHABLE) or withheld:
            assert d.write is Write.NONE
        elif new_key:
            assert d.write is Write.CREATE
        elif cache is Cache.PRESENT:
            assert d.write is Write.UPDATE
        else:
            assert d.write is Write.RECREATE
        assert d.write is not Write.REPLACE  # only a load replaces the copy it read


def test_a_save_only_the_backup_keeps_is_recorded_by_the_row_or_not_acknowledged() -> None:
    """No rollback: with Redis unable to take a login's save, the row must record its
    version first; if it cannot, a change is refused (503) and a renewal skipped."""
    for cache, login, withheld, changed, new_key, row in SAVE_STATES:
        d = save(cache, login, withheld, changed, new_key, row)
        if cache is not Cache.UNREACHABLE or not login or withheld:
            assert not d.ask
            continue
        if row is Row.NOT_ASKED:
            assert d.ask
        elif row in (Row.UNWRITABLE, Row.UNREADABLE):
            assert (d.refuse, d.skip) == (changed, not changed)
        else:
            assert not (d.ask or d.refuse or d.skip)


def test_a_save_never_resurrects() -> None:
    for cache, login, withheld, changed, new_key, row in SAVE_STATES:
        d = save(cache, login, withheld, changed, new_key, row)
        if cache is Cache.TOMBSTONED:
            # Ended meanwhile: Django's UpdateError for a change, nothing for a renewal.
            assert (d.refuse, d.skip, d.write) == (changed, not changed, Write.NONE)
        elif row in (Row.ENDED, Row.MISSING) and not withheld:
            assert d.end_login  # a renewal that finds no active row ends the login


def test_a_login_is_recorded_or_is_not_a_login() -> None:
    assert trust.decide(Cache.ABSENT, op=Op.LOGIN).ask
    assert not trust.decide(Cache.ABSENT, row=Row.ACTIVE, op=Op.LOGIN).refuse
    for row in (Row.MISSING, Row.UNWRITABLE, Row.UNREADABLE, Row.ENDED):
        assert trust.decide(Cache.ABSENT, row=row, op=Op.LOGIN).refuse


def test_a_deletion_ends_the_row_first_or_fails_visibly() -> None:
    for cache in (Cache.PRESENT, Cache.ABSENT):
        for login in (True, None):  # a login, or one not known (not loaded): the same
            d = trust.decide(cache, login=login, op=Op.DELETE)
            assert (d.end_row, d.write) == (True, Write.TOMBSTONE)
            assert d.queue == d.must_queue == (cache is Cache.PRESENT)
            refused = trust.decide(cache, login=login, row=Row.UNWRITABLE, op=Op.DELETE)
            assert refused.refuse and not refused.end_row and refused.write is Write.NONE
        anonymous = trust.decide(cache, login=False, op=Op.DELETE)
        assert not anonymous.end_row and not anonymous.must_queue
        # Never stored in Redis (created during an outage): nothing to queue.
        assert anonymous.queue == (cache is Cache.PRESENT)


def test_every_decision_says_what_it_protects() -> None:
    decisions = [d for *_, d in STATES] + [save(*state) for state in SAVE_STATES]
    decisions += [d for _, d in trusttable.login_table()]
    decisions += [d for *_, d in trusttable.delete_table()]
    for decision in decisions:
        assert decision.ask or decision.reason in trusttable.PROTECTS, decision


@pytest.mark.parametrize(
    "table",
    [
        trusttable.markdown_table,
        trusttable.markdown_save_table,
        trusttable.markdown_login_table,
        trusttable.markdown_delete_table,
    ],
)
def test_docs_print_the_decision_tables(table: Callable[[], str]) -> None:
    text = DOC.read_text()
    assert table() in text, "docs/trust-model.md: regenerate the tables (trusttable)"
