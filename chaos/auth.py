"""The chaos site's user directory: so that a database fault hits the ledger, not Django's auth.

The ledger faults (database read-only, ledger table locked, connections refused) are
about what the session engine does with its ledger at logins, logouts and revocations.
A stock Django site meets the database earlier: ``authenticate()`` reads ``auth_user``,
``django.contrib.auth.login()`` sends ``user_logged_in``, whose first receiver
(``update_last_login``) writes ``auth_user`` before the engine's receiver runs, and
``request.user`` reads ``auth_user`` again on every request of a logged-in user. Each of
those would answer 500 during the fault, before the engine is even asked.

So the chaos site keeps its users as a site with an outside directory would:

- :class:`DirectoryBackend`: ``ModelBackend`` whose users, once read from ``auth_user``,
  are kept per process (the chaos run never changes them); the password is checked
  against the kept hash, with no re-hash on login (MD5 is the only hasher);
- :func:`install`: ``update_last_login`` becomes best-effort (a failed write is logged,
  not raised) and runs after the engine's receiver.

The engine itself is untouched: everything it does with ``UserSession`` and
``PendingPurge`` still meets the fault.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.hashers import check_password
from django.contrib.auth.models import User
from django.db import DatabaseError
from django.http import HttpRequest

logger = logging.getLogger("chaos")

_lock = threading.Lock()
_by_name: dict[str, User] = {}
_by_pk: dict[str, User] = {}


def _keep(user: User) -> User:
    with _lock:
        _by_name[user.get_username()] = user
        _by_pk[str(user.pk)] = user
    return user


def preload() -> None:
    """Read every user once (the worker's start, with the database up); best effort."""
    try:
        for user in User.objects.all():
            _keep(user)
    except DatabaseError as error:
        logger.warning("chaos directory: users not preloaded (%r)", error)


class DirectoryBackend(ModelBackend):
    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> User | None:
        if not username or password is None:
            return None
        user = _by_name.get(username)
        if user is None:
            try:
                user = _keep(User.objects.get(username=username))
            except User.DoesNotExist:
                return None
        if check_password(password, user.password) and self.user_can_authenticate(user):
            return user
        return None

    def get_user(self, user_id: Any) -> User | None:
        user = _by_pk.get(str(user_id))
        if user is None:
            try:
                user = _keep(User.objects.get(pk=user_id))
            except User.DoesNotExist:
                return None
        return user if self.user_can_authenticate(user) else None


def _update_last_login(sender: Any, user: Any, **kwargs: Any) -> None:
    from django.contrib.auth.models import update_last_login

    try:
        update_last_login(sender, user, **kwargs)
    except DatabaseError as error:
        logger.warning("chaos directory: last_login not recorded (%r)", error)


def install() -> None:
    """Make ``update_last_login`` best-effort (called once the apps are ready)."""
    from django.contrib.auth.models import update_last_login
    from django.contrib.auth.signals import user_logged_in

    # Connected anew, it runs after the engine's receiver: a login the ledger refused
    # leaves last_login alone.
    if user_logged_in.disconnect(update_last_login, dispatch_uid="update_last_login"):
        user_logged_in.connect(_update_last_login, dispatch_uid="chaos_update_last_login")
