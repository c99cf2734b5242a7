"""Sessions of Django's own engines, made in bulk for the adoption tests and benchmarks.

``seed_table`` fills ``django_session`` (Django's ``db`` engine model, ``bulk_create`` in
chunks), ``seed_cache`` Django's ``cache`` engine keys in Redis (``set_many``: one
pipeline per chunk). Every other session is a login, spread over ``users`` users; a
share of the table's sessions is already expired.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import User
from django.contrib.sessions.backends.base import VALID_KEY_CHARS
from django.contrib.sessions.backends.db import SessionStore as DBStore
from django.contrib.sessions.models import Session
from django.core.cache import caches
from django.utils import timezone
from django.utils.crypto import get_random_string

MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"
CACHE_PREFIX = "django.contrib.sessions.cache"
CHUNK = 2000


def make_users(count: int) -> list[User]:
    """``count`` users (``user0``, ``user1``...), made in one statement."""
    User.objects.bulk_create(
        [User(username=f"user{i}", password="!") for i in range(count)], ignore_conflicts=True
    )
    return list(User.objects.filter(username__startswith="user").order_by("pk")[:count])


def session_data(i: int, users: list[User]) -> dict[str, Any]:
    """Session ``i``: a login of one of ``users`` when ``i`` is even, anonymous otherwise."""
    data: dict[str, Any] = {"cart": f"item-{i}"}
    if i % 2 == 0 and users:
        user = users[(i // 2) % len(users)]
        data |= {
            SESSION_KEY: str(user.pk),
            BACKEND_SESSION_KEY: MODEL_BACKEND,
            HASH_SESSION_KEY: user.get_session_auth_hash(),
        }
    return data


def new_key() -> str:
    return get_random_string(32, VALID_KEY_CHARS)


def seed_table(count: int, users: list[User], *, expired: int = 0, keep: int = 100) -> list[str]:
    """``count`` live sessions (and ``expired`` expired ones) in ``django_session``: the keys
    of the first ``keep`` live ones, for HTTP samples."""
    encoder = DBStore()
    now = timezone.now()
    sample: list[str] = []
    for start in range(0, count + expired, CHUNK):
        rows = []
        for i in range(start, min(start + CHUNK, count + expired)):
            live = i < count
            key = new_key()
            if live and len(sample) < keep:
                sample.append(key)
            expire = now + timedelta(days=1) if live else now - timedelta(minutes=1)
            rows.append(Session(key, encoder.encode(session_data(i, users)), expire))
        Session.objects.bulk_create(rows)
    return sample


def seed_cache(count: int, users: list[User], alias: str = "default") -> list[str]:
    """``count`` sessions as Django's cache engine keeps them: the first 100 keys."""
    cache = caches[alias]
    sample: list[str] = []
    for start in range(0, count, CHUNK):
        chunk = {}
        for i in range(start, min(start + CHUNK, count)):
            key = new_key()
            if len(sample) < 100:
                sample.append(key)
            chunk[CACHE_PREFIX + key] = session_data(i, users)
        cache.set_many(chunk, timeout=86400)
    return sample
