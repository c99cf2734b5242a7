"""The other session engines this one adopts sessions from or mirrors them into.

``PREVIOUS_ENGINE`` (adoption, :mod:`.adoption`) and ``EXPORT_TO`` (the way back,
:mod:`.export`) name a session engine by its dotted module path, as
``SESSION_ENGINE`` does.  This module resolves such a path to its ``SessionStore``
class and says what kind of store it keeps: the kind decides how sessions are
read (:mod:`.previous`) and whether they can be listed in bulk.
"""

from __future__ import annotations

import importlib
from typing import Any

from django.contrib.sessions.backends.base import SessionBase
from django.core.exceptions import ImproperlyConfigured

__all__ = ["CACHE", "DB", "OTHER", "SIGNED", "kind_of", "problem", "store_class"]

OURS = "django_resilient_sessions.backends.resilient"

#: A database table (Django's ``db`` and ``cached_db`` engines, and their subclasses).
DB = "db"
#: Keys of a Django cache (Django's ``cache`` engine and its subclasses).
CACHE = "cache"
#: The session is the cookie itself (Django's ``signed_cookies`` engine).
SIGNED = "signed"
#: Any other engine: read one key at a time through its ``SessionStore``.
OTHER = "other"


def _load(path: str) -> type[SessionBase]:
    """The ``SessionStore`` of the engine module ``path``, or ``ImproperlyConfigured``."""
    try:
        module = importlib.import_module(path)
    # import_module raises ImportError for a wrong path; a broken module may raise anything.
    except Exception as error:
        raise ImproperlyConfigured(
            f"The session engine {path!r} cannot be imported: {error}"
        ) from error
    store = getattr(module, "SessionStore", None)
    if not (isinstance(store, type) and issubclass(store, SessionBase)):
        raise ImproperlyConfigured(
            f"The session engine {path!r} has no SessionStore class (a subclass of "
            "django.contrib.sessions.backends.base.SessionBase)."
        )
    return store


def store_class(path: str) -> type[SessionBase]:
    """The ``SessionStore`` class of ``path``; ``ImproperlyConfigured`` if it is unusable."""
    found = problem(path)
    if found is not None:
        raise ImproperlyConfigured(found)
    return _load(path)


def problem(path: Any, *, export: bool = False) -> str | None:
    """What makes ``path`` unusable as ``PREVIOUS_ENGINE`` (or ``EXPORT_TO``), or ``None``."""
    if not isinstance(path, str) or not path:
        return "It must be the dotted path of a session engine module."
    try:
        store = _load(path)
    except ImproperlyConfigured as error:
        return str(error)
    from .backends.resilient import SessionStore as Ours

    if issubclass(store, Ours):
        return f"{path!r} is this engine itself: name the engine the site switches from or to."
    if export and kind_of(store) == SIGNED:
        return (
            f"{path!r} keeps a session in its cookie: the session keys browsers hold "
            "now cannot become signed cookies, so sessions cannot be mirrored into it."
        )
    return None


def kind_of(store: type[SessionBase]) -> str:
    """:data:`DB`, :data:`CACHE`, :data:`SIGNED` or :data:`OTHER`."""
    from django.contrib.sessions.backends.cache import SessionStore as CacheStore
    from django.contrib.sessions.backends.db import SessionStore as DBStore
    from django.contrib.sessions.backends.signed_cookies import SessionStore as SignedStore

    if issubclass(store, DBStore):
        return DB  # cached_db included: its table is the authority
    if issubclass(store, CacheStore):
        return CACHE
    if issubclass(store, SignedStore):
        return SIGNED
    return OTHER
