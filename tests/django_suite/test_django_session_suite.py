"""Django's own session tests, run against django-resilient-sessions.

Where the tests come from: ``tests/sessions_tests/tests.py`` in the Django source
distribution (the sdist on PyPI) of the *installed* Django version. It is not vendored:
``make django-suite-fetch`` (``python -m tests.django_suite.fetch``) extracts it into
``.cache/django-tests/<version>/`` and ``tests/django_suite/settings.py`` puts that directory
on ``sys.path`` and adds the ``sessions_tests`` app. Run with ``make test-django-suite``.

What runs here:

* ``ResilientEngineDjangoSuite``: every test of Django's ``SessionTestsMixin`` (the contract
  all session backends share) plus the cache-backend specific tests of Django's
  ``CacheSessionTests``, mirroring how Django builds ``CacheSessionTests``. Differences:

  - ``django.test.TestCase`` instead of ``SimpleTestCase``: our store may write its
    ``UserSession`` tracking rows, which ``SimpleTestCase`` forbids.
  - ``test_default_cache``, ``test_create_and_save`` (and ``_async``) and
    ``test_non_default_cache`` are rewritten: Django's versions look the session up under
    ``CacheSession.cache_key``, an attribute of Django's cache backend, not of the
    ``SessionBase`` API. Ours check the same thing (the session was written to the cache
    alias ``SESSION_CACHE_ALIAS`` names) through ``exists()`` and the Redis server itself.
    ``test_non_default_cache`` also uses a django-redis alias instead of ``LocMemCache``,
    because the engine stores sessions through django-redis.
  - ``test_load_overlong_key`` and any other ``CacheSessionTests`` test are reused as is.

* ``ResilientMiddlewareDjangoSuite``: Django's ``SessionMiddlewareTests`` with Django's
  middleware class replaced by ours (the session engine is ours through settings).
  ``test_empty_session_saved`` is skipped: it reads the row from
  ``django.contrib.sessions.models.Session``, i.e. it assumes the database backend.

Harness self-check: with ``DRS_DJANGO_SUITE_REFERENCE=1`` the settings switch to Django's
own cache session backend and middleware, and everything here is expected to pass.
"""

from __future__ import annotations

import os
import unittest
from typing import Any
from unittest import mock

import pytest
from django.conf import settings
from django.test import TestCase, override_settings
from django.utils.module_loading import import_string
from django_redis import get_redis_connection

if "sessions_tests" not in settings.INSTALLED_APPS:
    _MISSING = (
        "Django's sessions_tests are not available: run `make django-suite-fetch` and run "
        "this module with DJANGO_SETTINGS_MODULE=tests.django_suite.settings "
        "(`make test-django-suite` does both)."
    )
    # Under CI, and in the nox sessions (noxfile.py), a missing suite is a failure.
    if os.environ.get("CI") or os.environ.get("DRS_DJANGO_SUITE_REQUIRED"):
        pytest.fail(_MISSING, pytrace=False)
    pytest.skip(_MISSING, allow_module_level=True)

from sessions_tests import tests as django_tests

# Normally django_resilient_sessions.backends.resilient.SessionStore and
# django_resilient_sessions.middleware.SessionMiddleware (see tests/settings.py).
EngineSessionStore: Any = import_string(f"{settings.SESSION_ENGINE}.SessionStore")
EngineSessionMiddleware: Any = import_string(
    next(path for path in settings.MIDDLEWARE if path.endswith(".SessionMiddleware"))
)


def _keys_in(alias: str) -> int:
    """Number of keys in the Redis database behind the django-redis cache ``alias``."""
    count: int = get_redis_connection(alias).dbsize()
    return count


class ResilientEngineDjangoSuite(django_tests.SessionTestsMixin, TestCase):
    backend = EngineSessionStore

    def test_default_cache(self) -> None:
        before = _keys_in("default")
        self.session.save()
        self.assertTrue(self.backend().exists(self.session.session_key))
        self.assertGreater(_keys_in("default"), before)

    def test_create_and_save(self) -> None:
        self.session = self.backend()
        self.session.create()
        self.session.save()
        self.assertTrue(self.backend().exists(self.session.session_key))
        self.assertGreater(_keys_in("default"), 0)

    if hasattr(django_tests.CacheSessionTests, "test_create_and_save_async"):

        async def test_create_and_save_async(self) -> None:
            self.session = self.backend()
            await self.session.acreate()
            await self.session.asave()
            self.assertTrue(await self.backend().aexists(self.session.session_key))
            self.assertGreater(_keys_in("default"), 0)

    def test_non_default_cache(self) -> None:
        # "default" points at the private redis-server (tests/conftest.py); move the
        # sessions to a second alias on it and make "default" a DummyCache.
        redis_alias = dict(settings.CACHES["default"])
        with override_settings(
            CACHES={
                "default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"},
                "sessions": redis_alias,
            },
            SESSION_CACHE_ALIAS="sessions",
        ):
            session = self.backend()
            session["cat"] = "dog"
            session.save()
            try:
                self.assertGreater(_keys_in("sessions"), 0)
                self.assertEqual(self.backend(session.session_key).get("cat"), "dog")
            finally:
                session.delete()


# Reuse every other test Django defines for its cache backend (today:
# test_load_overlong_key), so that new ones are picked up with new Django versions.
for _name, _member in vars(django_tests.CacheSessionTests).items():
    if _name.startswith("test_") and _name not in vars(ResilientEngineDjangoSuite):
        setattr(ResilientEngineDjangoSuite, _name, _member)


class ResilientMiddlewareDjangoSuite(django_tests.SessionMiddlewareTests):
    """Django's middleware tests with Django's SessionMiddleware swapped for ours."""

    def setUp(self) -> None:
        super().setUp()
        patcher = mock.patch.object(django_tests, "SessionMiddleware", EngineSessionMiddleware)
        patcher.start()
        self.addCleanup(patcher.stop)

    @unittest.skip("reads django.contrib.sessions' Session table: database backend only")
    def test_empty_session_saved(self) -> None:
        raise AssertionError("skipped")
