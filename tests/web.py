"""HTTP helpers shared by the tests that drive the test app through Django's Client."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from http.cookies import SimpleCookie
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import caches
from django.db import DatabaseError, connection
from django.test import Client

from django_resilient_sessions.cachecopy import hash_key as key_hash
from django_resilient_sessions.models import UserSession
from tests.redis_server import RedisServer

__all__ = [
    "BACKUP_COOKIE",
    "PASSWORD",
    "cache_client",
    "captured",
    "cookie",
    "get_values",
    "has_copy",
    "in_redis",
    "is_tombstone",
    "key_hash",
    "login",
    "make_user",
    "ok",
    "redis_key_for_hash",
    "replay",
    "session_key",
    "set_values",
    "table_unavailable",
    "user_of",
    "usersession_table_unavailable",
    "whoami",
]

PASSWORD = "correct horse battery staple"
BACKUP_COOKIE = "sessionbackup"


def make_user(username: str = "alice") -> User:
    user: User = User.objects.create_user(username=username, password=PASSWORD)
    return user


def ok(response: Any) -> dict[str, Any]:
    """The JSON body of a response that must be a 200 (never a 4xx/5xx during outages)."""
    assert response.status_code == 200, (response.status_code, response.content[:500])
    body: dict[str, Any] = response.json()
    return body


def login(client: Client, username: str = "alice", **extra: Any) -> None:
    """Log in through the middleware (unlike ``Client.login``, this sets a backup cookie)."""
    response = client.post("/login/", {"username": username, "password": PASSWORD}, **extra)
    assert ok(response) == {"ok": True}
    assert cookie(client, settings.SESSION_COOKIE_NAME)
    assert cookie(client, BACKUP_COOKIE)


def whoami(client: Client) -> dict[str, Any]:
    return ok(client.get("/whoami/"))


def user_of(client: Client) -> str | None:
    user: str | None = whoami(client)["user"]
    return user


def get_values(client: Client) -> dict[str, Any]:
    return ok(client.get("/get/"))


def set_values(client: Client, **values: str) -> None:
    assert ok(client.post("/set/", values))["ok"] is True


def cookie(client: Client, name: str) -> str:
    """The value the client would send for ``name`` ("" when absent or deleted)."""
    morsel = client.cookies.get(name)
    return morsel.value if morsel is not None else ""


def session_key(client: Client) -> str:
    key = cookie(client, settings.SESSION_COOKIE_NAME)
    assert key
    return key


def captured(client: Client) -> dict[str, str]:
    """The cookie values a client holds now (what an attacker could copy)."""
    return {name: morsel.value for name, morsel in client.cookies.items() if morsel.value}


def replay(cookies: dict[str, str]) -> Client:
    """A fresh client presenting previously captured cookies."""
    client = Client()
    client.cookies = SimpleCookie(cookies)
    return client


def cache_client() -> Any:
    """django-redis's client of the session cache (untyped)."""
    cache: Any = caches["default"]
    return cache.client


def redis_key_for_hash(digest: str) -> str:
    """The engine's own name for a session's Redis entry."""
    from django_resilient_sessions.cachecopy import SessionCache

    return SessionCache().entry_key(digest)


def is_tombstone(value: bytes | None) -> bool:
    """Does this raw Redis value mark an ended session?"""
    from django_resilient_sessions.cachecopy import TOMBSTONE

    return value == TOMBSTONE


def has_copy(raw: Any, redis_key: str) -> bool:
    """Does Redis hold a live session copy (not a tombstone) under ``redis_key``?"""
    value = raw.get(redis_key)
    return value is not None and not is_tombstone(value)


def in_redis(server: RedisServer, key: str) -> bool:
    with server.client() as raw:
        return has_copy(raw, redis_key_for_hash(key_hash(key)))


@contextmanager
def table_unavailable(model: Any) -> Iterator[None]:
    """Make a model's table vanish (queries raise DatabaseError), and always bring it back."""
    quote = connection.ops.quote_name
    table = model._meta.db_table
    hidden = f"{table}_offline"
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {quote(table)} RENAME TO {quote(hidden)}")
    try:
        with pytest.raises(DatabaseError):
            model.objects.exists()
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {quote(hidden)} RENAME TO {quote(table)}")


def usersession_table_unavailable() -> Any:
    """The ledger's table gone: every ledger statement fails."""
    return table_unavailable(UserSession)
