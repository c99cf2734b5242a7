"""The sessions of ``PREVIOUS_ENGINE``, the engine a site switches from, one key at a time.

:func:`lookup` reads a live session by its key, :func:`forget` deletes it once
adopted.  How depends on the kind of store (:mod:`.engines`): a database table
(Django's ``db`` and ``cached_db``) is read by primary key with its expiry; a
Django cache (Django's ``cache`` engine) by its cache key, with the key's TTL
where the cache can tell it; a signed cookie is its own session; any other
engine through its ``SessionStore.load()``.  A store that fails to answer is
:class:`PreviousUnavailable`, never "not found": the request then keeps its
cookie, so the session can still be adopted once the store answers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from django.contrib.sessions.backends.base import SessionBase
from django.core import signing
from django.utils import timezone

from . import engines
from .conf import conf

__all__ = ["Found", "PreviousUnavailable", "engine", "forget", "lookup", "signed_at", "store"]

#: The salt of Django's ``signed_cookies`` engine.
SIGNED_SALT = "django.contrib.sessions.backends.signed_cookies"

logger = logging.getLogger("django_resilient_sessions")


class PreviousUnavailable(Exception):
    """The previous engine's store could not say whether it knows a key."""


@dataclass(frozen=True)
class Found:
    """A live session of the previous engine."""

    data: dict[str, Any]
    #: When it expires there (unix time), if that store can tell.
    expires_at: float | None = None
    #: When it was issued (unix time): a signed cookie's signing time.  ``None``
    #: for the other stores, which do not tell (see :mod:`.bars`).
    issued_at: float | None = None


def engine() -> str:
    """``PREVIOUS_ENGINE`` (the caller checked that adoption is on)."""
    path = conf.PREVIOUS_ENGINE
    assert path is not None
    return path


def store(session_key: str | None = None) -> SessionBase:
    """A ``SessionStore`` of the previous engine (``ImproperlyConfigured`` if unusable)."""
    return engines.store_class(engine())(session_key)


def lookup(session_key: str, *, cache_reachable: bool = True) -> Found | None:
    """The live session the previous engine keeps under ``session_key``, if any.

    ``cache_reachable``: the session cache answers; when it does not, a
    previous ``cache`` engine on the same alias is not asked (it would wait a
    socket timeout, then fail).
    """
    old = store(session_key)
    kind = engines.kind_of(type(old))
    try:
        if kind == engines.DB:
            return _from_table(old, session_key)
        if kind == engines.CACHE:
            if not cache_reachable:
                raise PreviousUnavailable("the session cache does not answer")
            return _from_cache(old, session_key)
        data: Any = old.load()  # foreign code: not always the dict it should be
    except PreviousUnavailable:
        raise
    # The previous store is foreign code over a database, a cache or a cookie:
    # whatever it raises, it could not answer.
    except Exception as error:
        logger.warning("The previous session engine could not be read: %r", error)
        raise PreviousUnavailable(str(error)) from error
    if not isinstance(data, dict):
        logger.warning("The previous session engine's load() gave a %s: ignored.", type(data))
        return None
    if not data:
        return None
    return Found(dict(data), issued_at=signed_at(session_key) if kind == engines.SIGNED else None)


def signed_at(value: str) -> float | None:
    """When a cookie of Django's ``signed_cookies`` engine was signed (unix time).

    Its value is ``TimestampSigner`` output, ``payload:timestamp:signature``: the
    signature (``SECRET_KEY`` or a fallback) is checked by Django's ``Signer``
    with the engine's salt, then the base-62 timestamp is decoded.  ``None``
    when it cannot be read (an engine of its own with another salt): such a
    cookie counts as issued before any bar.
    """
    try:
        signed = signing.Signer(salt=SIGNED_SALT).unsign(value)
        return float(signing.b62_decode(signed.rsplit(":", 1)[1]))
    except (signing.BadSignature, ValueError, IndexError):
        return None


def _from_table(old: Any, session_key: str) -> Found | None:
    row = (
        old.model.objects.filter(session_key=session_key, expire_date__gt=timezone.now())
        .values_list("session_data", "expire_date")
        .first()
    )
    if row is None:
        return None
    data = old.decode(row[0])  # {} for data that does not decode (logged by Django)
    return Found(dict(data), row[1].timestamp()) if data else None


def _from_cache(old: Any, session_key: str) -> Found | None:
    key = old.cache_key_prefix + session_key
    data = old._cache.get(key)
    if not data or not isinstance(data, dict):
        return None
    ttl = getattr(old._cache, "ttl", None)  # django-redis tells a key's TTL
    seconds = ttl(key) if ttl is not None else None
    expires_at = time.time() + seconds if isinstance(seconds, int) and seconds > 0 else None
    return Found(dict(data), expires_at)


def forget(session_key: str) -> None:
    """Delete the session from the previous store, once adopted (best effort: the
    ``AdoptedSession`` record refuses a second adoption anyway)."""
    try:
        store(session_key).delete(session_key)
    # Foreign code over another store (see lookup): a failure is logged only.
    except Exception as error:
        logger.warning(
            "An adopted session could not be deleted from the previous engine: %r", error
        )
