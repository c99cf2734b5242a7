"""The trust model as a table: every state :func:`.trust.decide` can meet, its answer,
and the invariant that answer protects.

``docs/trust-model.md`` prints :func:`markdown_table`; the tests check that the
page and the code agree and that every reason has an entry in :data:`PROTECTS`.
"""

from __future__ import annotations

from . import trust
from .trust import Backup, Cache


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
                for row in list(trust.Row)[1:]:
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
    trust.ROLLBACK: "no rollback: an older backup than one served",
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
