"""The backup cookie(s): names, size budget, partial backups and chunks.

A browser drops a cookie whose name, value and attributes pass 4096 bytes
(RFC 6265 section 6.1) without telling anyone, so every backup is measured
against ``BACKUP_COOKIE_MAX_BYTES`` with its real name and attributes before it
is sent.  When the whole session does not fit, the backup keeps only the
essential keys and says so (``partial``); when even those do not fit, there is
no backup and the old one is deleted.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping
from http.cookies import SimpleCookie
from typing import Any

from django.conf import settings

from . import codec
from .conf import conf

__all__ = ["Sealed", "chunk_names", "read_token", "seal_within_budget", "split_token"]

logger = logging.getLogger("django_resilient_sessions")


class Sealed:
    """A token ready to be set, and what had to be left out of it."""

    def __init__(self, token: str, partial: bool, dropped: list[str]) -> None:
        self.token = token
        self.partial = partial
        self.dropped = dropped


def chunk_names(count: int | None = None) -> list[str]:
    base = conf.BACKUP_COOKIE_NAME
    total = conf.BACKUP_COOKIE_MAX_CHUNKS if count is None else count
    return [base if i == 0 else f"{base}_{i}" for i in range(total)]


@functools.lru_cache(maxsize=64)
def _overhead(name: str, path: str, domain: str | None, samesite: str | None) -> int:
    """Bytes a Set-Cookie for ``name`` takes besides its value, at most."""
    jar: SimpleCookie = SimpleCookie()
    jar[name] = ""
    morsel = jar[name]
    morsel["max-age"] = 10**10
    morsel["expires"] = "Thu, 01 Jan 1970 00:00:00 GMT"
    morsel["path"] = path
    if domain:
        morsel["domain"] = domain
    morsel["secure"] = True
    morsel["httponly"] = True
    morsel["samesite"] = samesite or "None"
    return len(morsel.OutputString())


def chunk_capacity() -> list[int]:
    """Characters of token each backup cookie may carry."""
    found: list[int] | None = conf.derived.get("capacity")
    if found is None:
        limit = conf.BACKUP_COOKIE_MAX_BYTES
        attrs = (
            settings.SESSION_COOKIE_PATH,
            settings.SESSION_COOKIE_DOMAIN,
            settings.SESSION_COOKIE_SAMESITE,
        )
        found = [max(limit - _overhead(name, *attrs), 0) for name in chunk_names()]
        conf.derived["capacity"] = found
    return found


def max_token_chars() -> int:
    return sum(chunk_capacity())


def split_token(token: str) -> list[str]:
    """Cut ``token`` into the chunks that carry it (it must fit the budget)."""
    parts: list[str] = []
    rest = token
    for capacity in chunk_capacity():
        if not rest:
            break
        parts.append(rest[:capacity])
        rest = rest[capacity:]
    return parts


def read_token(cookies: Mapping[str, str]) -> str | None:
    """Join the chunks a request carries, in order, up to the first missing one."""
    parts: list[str] = []
    for name in chunk_names():
        value = cookies.get(name)
        if not value:
            break
        parts.append(value)
    return "".join(parts) or None


def seal_within_budget(
    backup: codec.Backup, session_key: str, serializer: Any, payload: bytes | None = None
) -> Sealed | None:
    """Seal ``backup`` so that it fits the cookie budget, partially if it must.

    ``payload``: ``backup.data`` already serialized, if the caller has it.
    """
    budget = max_token_chars()
    token = _try_seal(backup, session_key, serializer, budget, payload)
    if token is not None:
        return Sealed(token, backup.partial, [])
    essential = set(conf.ESSENTIAL_KEYS)
    kept = {k: v for k, v in backup.data.items() if k in essential}
    dropped = sorted(k for k in backup.data if k not in essential)
    reduced = dataclasses.replace(backup, data=kept, partial=True)
    token = _try_seal(reduced, session_key, serializer, budget)
    if token is None:
        logger.warning(
            "Session backup left out: even its essential keys (%s) pass the %d-character budget.",
            ", ".join(sorted(kept)),
            budget,
        )
        return None
    logger.warning(
        "Session backup is partial: %d keys left out to fit %d characters.", len(dropped), budget
    )
    return Sealed(token, True, dropped)


def _try_seal(
    backup: codec.Backup,
    session_key: str,
    serializer: Any,
    budget: int,
    payload: bytes | None = None,
) -> str | None:
    try:
        token = codec.seal(backup, session_key, serializer, payload)
    # The serializer may refuse values the cache's own serializer accepted
    # (JSON against pickle): the session still works, only without this copy.
    except Exception:
        logger.warning("Session data does not serialize for the backup.", exc_info=True)
        return None
    return token if len(token) <= budget else None
