"""What of a session of ``PREVIOUS_ENGINE`` may be adopted: its login as Django would
honour it, its expiry, the values ``SESSION_SERIALIZER`` can store.

Used by lazy adoption (:mod:`.adoption`) and bulk adoption (:mod:`.bulkadoption`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    load_backend,
)
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import ValidationError
from django.db import DatabaseError
from django.utils.crypto import constant_time_compare

from .exceptions import LedgerUnavailable

__all__ = ["expiry_age", "resolve_user", "storable", "users_of", "verified"]

logger = logging.getLogger("django_resilient_sessions")


def resolve_user(data: dict[str, Any]) -> Any:
    """The user the login in ``data`` stands for, as Django's ``get_user()`` finds it.

    ``None``: no login, or one Django would not honour (its backend is no longer
    configured, its user is gone or inactive, its session auth hash is no longer
    the user's: see :func:`verified`).  A database that fails raises
    ``LedgerUnavailable``: the login cannot be checked, so nothing is adopted.
    """
    user_id, path = data.get(SESSION_KEY), data.get(BACKEND_SESSION_KEY)
    if user_id is None or path not in settings.AUTHENTICATION_BACKENDS:
        return None
    try:
        pk = get_user_model()._meta.pk.to_python(user_id)
        user = load_backend(str(path)).get_user(pk)
    except (ValidationError, ValueError, TypeError):
        return None  # an id that is no user's
    except DatabaseError as error:
        raise LedgerUnavailable(f"the user of an adopted session: {error}") from error
    return user if user is not None and verified(user, data) else None


def verified(user: Any, data: dict[str, Any]) -> bool:
    """Does the session auth hash in ``data`` still vouch for ``user``?

    As ``get_user()`` checks it at every request: a login made before a password
    change (or without a hash, for a user model that has one) is not one.  A hash
    made with a ``SECRET_KEY_FALLBACKS`` key is accepted and replaced in ``data``
    by the current one, as Django does.  Checked before the login is recorded, so
    a stale session never takes a place in the ledger (nor, under
    ``MAX_SESSIONS_PER_USER``, evicts a live one).
    """
    if not hasattr(user, "get_session_auth_hash"):
        return True
    stored = str(data.get(HASH_SESSION_KEY) or "")
    current = user.get_session_auth_hash()
    if stored and constant_time_compare(stored, current):
        return True
    fallbacks = getattr(user, "get_session_auth_fallback_hash", lambda: ())()
    if stored and any(constant_time_compare(stored, other) for other in fallbacks):
        data[HASH_SESSION_KEY] = current
        return True
    logger.warning(
        "A session of the previous engine was adopted without its login: its "
        "session auth hash is no longer the user's (a password change)."
    )
    return False


def expiry_age(store: Any, data: dict[str, Any]) -> int:
    """Seconds an adopted session has left by its ``set_expiry()`` choice.

    A ``_session_expiry`` Django cannot read (garbage in the old store) is
    dropped, with a warning: the default age applies, rather than every later
    save of the session failing.
    """
    try:
        age = store.get_expiry_age(expiry=data.get("_session_expiry"))
        if isinstance(age, int | float) and not isinstance(age, bool):
            return int(age)
    except (ValueError, TypeError, OverflowError):
        pass  # an unreadable value: dropped below
    logger.warning("An adopted session's _session_expiry was unreadable and was dropped.")
    data.pop("_session_expiry", None)
    return int(store.get_session_cookie_age())


def storable(data: dict[str, Any], serializer: Any) -> dict[str, Any]:
    """``data`` without the values ``SESSION_SERIALIZER`` cannot take.

    Django's ``cache`` engine pickles, so its sessions may hold values (a
    ``datetime``, a ``set``) that this engine's copies, serialized with
    ``SESSION_SERIALIZER`` (JSON by default), cannot: those keys are dropped,
    with a warning naming them, rather than the whole session.
    """
    try:
        serializer().dumps(data)
        return data
    # Whatever the serializer raises (TypeError, ValueError...): find the culprits.
    except Exception:
        kept, dropped = {}, []
        for key, value in data.items():
            try:
                serializer().dumps({key: value})
            # As above: this value cannot be kept.
            except Exception:
                dropped.append(key)
            else:
                kept[key] = value
    logger.warning(
        "Adopted session values SESSION_SERIALIZER cannot store were dropped: %s",
        ", ".join(repr(k) for k in dropped),
    )
    return kept


def users_of(items: Sequence[Any]) -> dict[str, Any]:
    """The user each login of ``items`` (with ``key`` and ``data``) stands for, by key
    (``resolve_user``), model backends in one query.

    Sessions without a login Django would honour are left out.
    """
    users: dict[str, Any] = {}
    by_pk: dict[Any, list[Any]] = {}
    model = get_user_model()
    for item in items:
        path = item.data.get(BACKEND_SESSION_KEY)
        if item.data.get(SESSION_KEY) is None or path not in settings.AUTHENTICATION_BACKENDS:
            continue
        backend = load_backend(str(path))
        if type(backend).get_user is ModelBackend.get_user:
            try:
                by_pk.setdefault(model._meta.pk.to_python(item.data[SESSION_KEY]), []).append(item)
            except Exception:  # an id that is no user's (ValidationError and the like)
                continue
        else:
            user = resolve_user(item.data)
            if user is not None:
                users[item.key] = user
    found = model._default_manager.in_bulk(list(by_pk))
    for pk, user in found.items():
        for item in by_pk[pk]:
            backend = load_backend(str(item.data[BACKEND_SESSION_KEY]))
            if backend.user_can_authenticate(user) and verified(user, item.data):  # type: ignore[attr-defined]
                users[item.key] = user
    return users
