"""pytest fixtures for testing a site that uses the engine (opt-in, needs pytest-django).

Enable them in the site's top-level ``conftest.py``::

    pytest_plugins = ["django_resilient_sessions.pytest_plugin"]

It is not registered as a ``pytest11`` entry point: installing the package must not load
it into every pytest run of the environment (a project without pytest-django, or whose
Django settings do not use the engine).

Fixtures (the tests that log in still need the database: ``@pytest.mark.django_db``):

``resilient_client``
    a :class:`~django_resilient_sessions.testing.ResilientClient`: Django's test client
    whose ``login()`` and ``force_login()`` set the backup cookie too.
``logged_in_client``
    a factory: ``logged_in_client(user, backend=None, **request)`` gives a new
    ``ResilientClient`` logged in as ``user`` with both cookies (see
    :func:`~django_resilient_sessions.testing.login_with_backup`).
``redis_outage``
    :func:`~django_resilient_sessions.testing.redis_outage`: ``with redis_outage(): ...``
    makes the session cache refuse connections within the block (Redis refusing
    connections only; see ``docs/testing.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser

    from .testing import ResilientClient

__all__ = ["logged_in_client", "redis_outage", "resilient_client"]


# The testing module is imported inside the fixtures: this module is loaded while pytest
# starts, before pytest-django has set Django up.


@pytest.fixture
def resilient_client() -> ResilientClient:
    """Django's test client, whose logins set the backup cookie."""
    from .testing import ResilientClient

    return ResilientClient()


@pytest.fixture
def logged_in_client() -> Callable[..., ResilientClient]:
    """``logged_in_client(user, backend=None, **request)``: a new client logged in as ``user``."""
    from .testing import ResilientClient, login_with_backup

    def log_in(
        user: AbstractBaseUser, backend: str | None = None, **request: Any
    ) -> ResilientClient:
        client = ResilientClient()
        login_with_backup(client, user, backend, **request)
        return client

    return log_in


@pytest.fixture
def redis_outage() -> Callable[..., AbstractContextManager[str]]:
    """``with redis_outage(): ...``: the session cache refuses connections in the block."""
    from .testing import redis_outage

    return redis_outage
