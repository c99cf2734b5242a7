"""The trust model as tables: every state :func:`.trust.decide` can meet, its answer,
and the invariant that answer protects, for each operation.

``docs/trust-model.md`` prints :func:`markdown_table` (loads) and
:func:`markdown_save_table`, :func:`markdown_login_table` and
:func:`markdown_delete_table`; the tests check that the page and the code agree
and that every reason has an entry in :data:`PROTECTS`.
"""

from __future__ import annotations

from . import trust
from .trust import Backup, Cache, Op, Row


def table(*, fail_closed: bool = True) -> list[tuple[str, str, str, str, trust.Decision]]:
    """Every distinct state and its decision: (cache, backup, login, row, decision)."""
    rows: list[tuple[str, str, str, str, trust.Decision]] = []
    for cache in Cache:
        for backup in possible_backups(cache):
            for login in (False, True):
                if login and _asks_for_a_login(cache, backup):
                    continue  # no backup: "login" is what the row says
                first = trust.decide(cache, backup, login, fail_closed=fail_closed)
                if first.serve is not trust.Serve.ASK_LEDGER:
                    if login and not _login_matters(cache, backup):
                        continue
                    shown = "any" if not _login_matters(cache, backup) else _yes(login)
                    rows.append((cache.value, backup.value, shown, "-", first))
                    continue
                for row in READ_ROWS:
                    if row is trust.Row.AHEAD and _asks_for_a_login(cache, backup):
                        continue  # no backup version to be behind
                    decision = trust.decide(cache, backup, login, row, fail_closed=fail_closed)
                    shown = "row" if _asks_for_a_login(cache, backup) else _yes(login)
                    rows.append((cache.value, backup.value, shown, row.value, decision))
    return rows


#: The invariant each decision protects, by its reason (for the docs' table).
PROTECTS = {
    "current": "healthy path: one GET, no query",
    "none": "every save leaves a fresh backup",
    "invalid": "total decoding: a bad cookie is no backup",
    "stale": "no rollback: Redis moved on, Redis wins",
    "anonymous": "lose nothing (anonymous data: the documented exception to no rollback)",
    "row active": "lose nothing: the newest copy wins",
    trust.ROLLBACK: "no rollback: an older backup than one served; the row keeps the login",
    trust.ROW_ENDED: "never resurrect: the ledger ended it",
    trust.ROW_MISSING: "never resurrect: a login with no row is not a login",
    "ledger unreadable: login withheld": "fail closed: the login waits for the ledger",
    trust.TRUSTED_UNCHECKED: "availability over revocation (FAIL_CLOSED off)",
    "no copy": "no fixation: an unknown key is never adopted",
    trust.LEDGER_LOGIN: (
        "stay logged in without a backup (token clients); its writes are a new branch"
    ),
    trust.UNREADABLE_NOTHING: "fail closed: no login the ledger cannot vouch for",
    trust.ENDED: "never resurrect: the tombstone says it ended",
    trust.ADOPT: "no fixation: adopted only if PREVIOUS_ENGINE knows the key, and only once",
    # Saves
    trust.WRITABLE: "one round trip; a copy not read from Redis never overwrites one",
    trust.ACTIVITY_LATER: "the Redis copy never outlives its row by more than the grace",
    trust.BACKUP_ONLY: "lose nothing (anonymous data: the documented exception to no rollback)",
    trust.RECORDED: "no rollback: the row knows the newest backup of this login",
    trust.UNPROTECTED: "no rollback: a change no row can vouch for is not acknowledged",
    trust.ROW_OVER: "never resurrect: a renewal that finds no active row ends the login",
    trust.WITHHELD: "fail closed: a withheld login never reaches Redis, nor is lost",
    trust.ENDED_MEANWHILE: "never resurrect: a save never overwrites a tombstone",
    # Logins
    trust.LOGIN_RECORDED: "every login has its row (listed, counted, revocable)",
    trust.LOGIN_REFUSED: "a login that cannot be recorded is not a login",
    trust.LIMIT: "MAX_SESSIONS_PER_USER (policy refuse)",
    # Deletions
    trust.ROW_THEN_TOMBSTONE: "never resurrect: the end is durable before Redis is touched",
    trust.TOMBSTONE_ONLY: "no queue growth at will: only copies that may be in Redis queue",
    trust.END_REFUSED: "a logout or revocation is recorded or visibly fails",
}


def markdown_table(*, fail_closed: bool = True) -> str:
    """:func:`table` as the Markdown table ``docs/trust-model.md`` prints."""
    lines = [
        "| Redis | backup | login | row | serve | write back | renew | cookies | protects |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for cache, backup, login, row, d in table(fail_closed=fail_closed):
        parts = ["refuse backup"] * d.reject + ["keep session cookie"] * d.keep_cookies
        cookies = ", ".join(parts + ["delete Redis copy"] * d.purge) or "-"
        renew = "yes" if d.renew else "-"
        cells = [cache, backup, login, row, d.serve.value, d.write.value, renew, cookies]
        lines.append("| " + " | ".join([*cells, PROTECTS[d.reason]]) + " |")
    return "\n".join(lines) + "\n"


#: The ledger's answers to a read (a load never writes the row).
READ_ROWS = tuple(row for row in Row if row not in (Row.NOT_ASKED, Row.UNWRITABLE))

#: The ledger's answers a save, a login or a deletion can get.
WRITE_ROWS = (Row.NOT_ASKED, Row.ACTIVE, Row.ENDED, Row.UNWRITABLE)


def save_table() -> list[SaveRow]:
    """(Redis, login, changed, new key, row, decision) for every save state."""
    rows: list[SaveRow] = []
    for cache in Cache:
        for login in ("no", "yes", "withheld"):
            for new_key in (False, True):
                if new_key and cache is not Cache.ABSENT:
                    continue  # a new key has no copy in Redis yet
                for changed in (True, False):
                    for row in WRITE_ROWS:
                        decision = trust.decide(
                            cache,
                            login=login != "no",
                            row=row,
                            op=Op.SAVE,
                            changed=changed,
                            new_key=new_key,
                            withheld=login == "withheld",
                        )
                        if decision.ask or not _row_asked(row, login, cache):
                            continue
                        cells = (cache.value, login, _yes(changed), _yes(new_key), row.value)
                        rows.append((*cells, decision))
    return _merged(_merged(rows, 2, ("yes", "no"), "any"), 4, ("-", "active"), "- or active")


def _row_asked(row: Row, login: str, cache: Cache) -> bool:
    """Does the engine ask (or write) the row in this state at all?"""
    if login != "yes" or cache is Cache.TOMBSTONED:
        return row is Row.NOT_ASKED
    return True


SaveRow = tuple[str, str, str, str, str, trust.Decision]


def _merged(rows: list[SaveRow], column: int, values: tuple[str, str], shown: str) -> list[SaveRow]:
    """Merge the rows that differ only by ``column`` (one of ``values``) into one."""
    merged: list[SaveRow] = []
    for row in rows:
        twins = [
            i
            for i, other in enumerate(merged)
            if other[5] == row[5]
            and {other[column], row[column]} == set(values)
            and all(other[c] == row[c] for c in range(5) if c != column)
        ]
        if twins:
            cells = list(merged[twins[0]][:5])
            cells[column] = shown
            merged[twins[0]] = (cells[0], cells[1], cells[2], cells[3], cells[4], row[5])
        else:
            merged.append(row)
    return merged


def login_table() -> list[tuple[str, trust.Decision]]:
    return [(row.value, trust.decide(Cache.ABSENT, row=row, op=Op.LOGIN)) for row in LOGIN_ROWS]


#: The ledger's answers to recording a login: a row, no room for one, or a refusal.
LOGIN_ROWS = (Row.ACTIVE, Row.MISSING, Row.UNWRITABLE)


def delete_table() -> list[tuple[str, str, str, trust.Decision]]:
    """(Redis may hold it, login, row, decision) for every deletion state."""
    rows: list[tuple[str, str, str, trust.Decision]] = []
    for cache in (Cache.PRESENT, Cache.ABSENT):
        for login in (False, True, None):
            for row in (Row.NOT_ASKED, Row.UNWRITABLE) if login is not False else (Row.NOT_ASKED,):
                decision = trust.decide(cache, login=login, row=row, op=Op.DELETE)
                shown = {False: "no", True: "yes", None: "unknown"}[login]
                rows.append((_yes(cache is Cache.PRESENT), shown, row.value, decision))
    return rows


def markdown_save_table() -> str:
    lines = [
        "| Redis | login | changed | new key | row | Redis write | then | protects |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for *cells, d in save_table():
        then = _outcome(d) or "backup written"
        lines.append("| " + " | ".join([*cells, d.write.value, then, PROTECTS[d.reason]]) + " |")
    return "\n".join(lines) + "\n"


def markdown_login_table() -> str:
    lines = ["| row | then | protects |", "| --- | --- | --- |"]
    for row, d in login_table():
        then = _outcome(d) or "logged in"
        lines.append(f"| {row} | {then} | {PROTECTS[d.reason]} |")
    return "\n".join(lines) + "\n"


def markdown_delete_table() -> str:
    lines = [
        "| Redis may hold it | login | row | end the row | Redis | queue if Redis fails |"
        " then | protects |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for in_redis, login, row, d in delete_table():
        queue = "must" if d.must_queue else ("best effort" if d.queue else "-")
        cells = [in_redis, login, row, _yes(d.end_row), d.write.value, queue]
        then = _outcome(d) or "ended"
        lines.append("| " + " | ".join([*cells, then, PROTECTS[d.reason]]) + " |")
    return "\n".join(lines) + "\n"


def _outcome(d: trust.Decision) -> str:
    if d.refuse:
        return "refused: " + (
            "UpdateError"
            if d.reason == trust.ENDED_MEANWHILE
            else (
                "SessionLimitExceeded (403)" if d.reason == trust.LIMIT else "503, nothing changed"
            )
        )
    if d.skip:
        return "nothing (a renewal)"
    if d.end_login:
        return "the login leaves the session"
    if d.cap_ttl:
        return "Redis TTL capped at the row's expiry + grace"
    return ""


def possible_backups(cache: Cache) -> list[Backup]:
    """The backup states :func:`classify` can give along with ``cache``."""
    if cache is Cache.PRESENT:
        return [
            Backup.NONE,
            Backup.INVALID,
            Backup.CURRENT,
            Backup.STALE,
            Backup.NEWER,
        ]
    return [Backup.NONE, Backup.INVALID, Backup.VALID]


def _login_matters(cache: Cache, backup: Backup) -> bool:
    return cache is not Cache.TOMBSTONED and backup in (
        Backup.NEWER,
        Backup.VALID,
    )


def _asks_for_a_login(cache: Cache, backup: Backup) -> bool:
    return backup is Backup.NONE and cache in (Cache.ABSENT, Cache.UNREACHABLE)


def _yes(value: bool) -> str:
    return "yes" if value else "no"
