"""The session store's state, its values and its small shared helpers.

:class:`~django_resilient_sessions.backends.resilient.SessionStore` is built in
layers, one module per concept: this state, then :mod:`.loading` (which copy
serves a request), :mod:`.logins` (the ledger kept in step with logins),
:mod:`.saving` (both copies written) and :mod:`.ending` (logout, revocation,
new keys).
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.contrib.sessions.backends.base import (
    VALID_KEY_CHARS,
    SessionBase,
)
from django.utils.crypto import get_random_string

from .. import (
    codec,
    cookies,
    ledger,
    requestscope,
)
from ..cachecopy import SessionCache, hash_key
from ..client import ClientInfo

logger = logging.getLogger("django_resilient_sessions")


class StoreState(SessionBase):
    """What a session store knows about the copy in hand (see the package docstring)."""

    """Redis first, encrypted backup cookie second; see the module docstring."""

    def __init__(
        self,
        session_key: str | None = None,
        *,
        backup: str | None = None,
        client: ClientInfo | None = None,
    ) -> None:
        self._hashed: tuple[str | None, str] = (None, "")
        super().__init__(session_key)
        self._cache = SessionCache.of(settings.SESSION_CACHE_ALIAS, self.serializer)
        self.backup_token = backup
        self.client = client or requestscope.client() or ClientInfo()
        #: True when this request could not use the cache.
        self.degraded = False
        #: Where the data came from: "cache", "backup" or None (new or not loaded).
        self.source: str | None = None
        #: The backup made by the last save (None: none fits, or not saved).
        self.sealed: cookies.Sealed | None = None
        #: The request's backup was refused: the middleware deletes it.
        self.backup_rejected = False
        #: The client's backup is missing or behind: the middleware saves to renew it.
        self.needs_backup = False
        #: Leave the cookies alone although the session is empty.
        self.keep_cookie = False
        #: Adopted under a new key (a signed cookie, refused from now on): the new key
        #: must reach the browser even with a failed response (see the middleware).
        self.adopted_new_key = False
        #: A renewal found the session ended meanwhile, or must not be written (the
        #: login alone in place of an older backup): the middleware sets nothing.
        self.interrupted = False
        self._version = 0  # of the copy in hand
        self._base = 0  # the Redis version it descends from (0: never in Redis)
        self._parent = NO_TAG  # fingerprint of the copy in hand (its backup's token)
        self._served = 0  # the newest backup version the ledger saw served
        # A session refused for this request but perhaps alive (key, holds a login?).
        self._shadow: tuple[str, bool | None] | None = None
        self._ledger_login: ledger.Login | None = None
        self._partial = False
        self._user: str | None = None  # the login the ledger holds for this key
        self._loaded = False
        # Adoption from PREVIOUS_ENGINE was tried for this key (see ..adoption).
        self._adoption_done = False
        self._in_cache = False  # Redis holds the copy in hand
        # The login alone, served in place of an older backup: a save of nothing
        # new (SESSION_SAVE_EVERY_REQUEST) writes nothing, as a read renews nothing.
        self._renews_nothing = False
        # A backup's login the ledger could not vouch for: kept out of the
        # session (fail closed), sealed into the next backup, so it comes back
        # once the database answers.
        self._withheld: dict[str, Any] = {}

    @property
    def key_hash(self) -> str:
        key = self.session_key
        if key != self._hashed[0]:
            self._hashed = (key, hash_key(key) if key else "")
        return self._hashed[1]

    # Values: what cannot be kept is refused where it is set -----------------

    def __setitem__(self, key: str, value: Any) -> None:
        self._check_storable({key: value})
        super().__setitem__(key, value)

    async def aset(self, key: str, value: Any) -> None:
        self._check_storable({key: value})
        await super().aset(key, value)

    def update(self, dict_: Any) -> None:  # type: ignore[override]  # as SessionBase
        self._check_storable(dict(dict_))
        super().update(dict_)

    async def aupdate(self, dict_: Any) -> None:
        self._check_storable(dict(dict_))
        await super().aupdate(dict_)

    def clear(self) -> None:
        # Django's clear() skips the load.  Here the next save must know what it
        # replaces (the Redis copy's version, the login the ledger must end) and
        # whether the key exists at all, or the old copy would win over the cleared
        # one, its login would stay alive, and an unknown key would be created.
        if self.session_key is not None and not self._loaded:
            self._get_session()  # type: ignore[attr-defined]
        super().clear()

    def _check_storable(self, values: dict[str, Any]) -> None:
        """Both copies go through ``SESSION_SERIALIZER``, so a view sees the same
        values whichever served it; a value it cannot take fails here, not later."""
        self._serialize(values)

    def _serialize(self, values: dict[str, Any]) -> bytes:
        try:
            payload: bytes = self.serializer().dumps(values)
        # Serializers raise TypeError, ValueError (circular), OverflowError...:
        # whatever it is, the value cannot be kept, and the caller is told now.
        except Exception as error:
            names = ", ".join(repr(k) for k in values)
            raise TypeError(
                f"Session value for {names} cannot be stored: {settings.SESSION_SERIALIZER} "
                f"cannot serialize it ({error}). Store JSON types (str, int, float, bool, "
                "None, list, dict with str keys), or set SESSION_SERIALIZER."
            ) from error
        return payload

    def _get_new_session_key(self) -> str:
        # No exists() round trip: SET NX in create() detects a collision.
        return get_random_string(32, VALID_KEY_CHARS)

    # Loading ---------------------------------------------------------------


NO_TAG = bytes(12)


class Ended(Exception):
    """A renewal found the session ended (internal to ``save``)."""


def tag_of(sealed: cookies.Sealed | None) -> bytes:
    return codec.token_tag(sealed.token) if sealed else NO_TAG


def send(signal: Any, sender: type[SessionBase], **kwargs: Any) -> None:
    """Send one of :mod:`..signals`; a receiver's failure is logged, never raised."""
    for receiver, result in signal.send_robust(sender=sender, **kwargs):
        if isinstance(result, Exception):
            logger.error("Receiver %r of a session signal failed: %r", receiver, result)
