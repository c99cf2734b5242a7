"""Misconfigurations checks cannot see fail at first use with ImproperlyConfigured.

Where system checks do not run (gunicorn, uvicorn), an unsupported session cache stops
the middleware at start-up, and a missing app stops the engine's import, each with a
message saying what to change: never a 500 at login, never a bare RuntimeError.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.test import override_settings

from django_resilient_sessions.middleware import SessionMiddleware

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "backend",
    [
        "django.core.cache.backends.locmem.LocMemCache",
        "django.core.cache.backends.dummy.DummyCache",
    ],
)
def test_an_unsupported_session_cache_stops_the_middleware_at_start_up(backend: str) -> None:
    with (
        override_settings(CACHES={"default": {"BACKEND": backend}}),
        pytest.raises(ImproperlyConfigured, match="needs django-redis"),
    ):
        SessionMiddleware(lambda request: HttpResponse())


def test_djangos_redis_cache_starts(redis_server: object) -> None:
    caches = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
        }
    }
    with override_settings(CACHES=caches):
        SessionMiddleware(lambda request: HttpResponse())  # no connection is made here


def test_the_engine_without_its_app_says_so() -> None:
    script = """
import django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes",
                    "django.contrib.sessions"],
    SESSION_ENGINE="django_resilient_sessions.backends.resilient",
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
)
django.setup()
from django.core.exceptions import ImproperlyConfigured
try:
    import django_resilient_sessions.backends.resilient
except ImproperlyConfigured as error:
    print("ImproperlyConfigured:", error)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert "ImproperlyConfigured:" in done.stdout, done.stderr[-2000:]
    assert "not in INSTALLED_APPS" in done.stdout


CLUSTER = {
    "BACKEND": "django_resilient_sessions.cache.RedisClusterCache",
    # Never contacted: the checks and the key layout are decided before any connection.
    "LOCATION": ["redis://127.0.0.1:1"],
}


@pytest.mark.parametrize(
    ("extra", "ours"),
    [
        ({"KEY_PREFIX": "site{a}"}, {}),
        ({"VERSION": "{2}"}, {}),
        ({}, {"CACHE_KEY_PREFIX": "s{x}:"}),
    ],
)
def test_a_brace_in_a_cluster_cache_key_prefix_is_a_check_error(
    extra: dict[str, str], ours: dict[str, str]
) -> None:
    from django_resilient_sessions.checks import check_wiring

    with override_settings(CACHES={"default": {**CLUSTER, **extra}}, RESILIENT_SESSIONS=ours):
        ids = [message.id for message in check_wiring()]
    assert "django_resilient_sessions.E012" in ids


def test_a_cluster_cache_without_a_brace_passes_the_checks() -> None:
    from django_resilient_sessions.checks import check_wiring

    cluster = {**CLUSTER, "OPTIONS": {"socket_timeout": 0.25, "socket_connect_timeout": 0.25}}
    with override_settings(CACHES={"default": cluster}):
        ids = [message.id for message in check_wiring()]
    assert not [i for i in ids if i.endswith(("E007", "E012", "W001"))], ids


def braced_key(key: str, key_prefix: str, version: int) -> str:
    """A KEY_FUNCTION that puts a hash tag of its own in front (every key in one slot)."""
    return f"{{site}}:{version}:{key}"


def test_a_cluster_key_function_that_loses_the_hash_tag_fails_at_first_use() -> None:
    from django_resilient_sessions.cachecopy import SessionCache

    function = f"{__name__}.braced_key"
    caches = {"default": {**CLUSTER, "KEY_FUNCTION": function}}
    with override_settings(CACHES=caches), pytest.raises(ImproperlyConfigured, match="hash tag"):
        SessionCache("default")
