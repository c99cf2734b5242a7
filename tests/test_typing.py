"""``django_resilient_sessions.typing``: the typed accessor, for mypy and at run time.

- mypy (strict, django-stubs plugin, this project's configuration) accepts a site's code
  that reads ``degraded``, ``key_hash`` and ``source`` through ``resilient_session()``
  (``tests/typing_examples/``, also checked by ``make lint``), and refuses the same code
  written against ``request.session`` directly;
- at run time the accessor gives the engine's session (its state as the engine set it,
  through a real request while Redis answers and while it is down), and None for another
  engine's session or a request without one.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.contrib.sessions.backends.signed_cookies import SessionStore as SignedCookieStore
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from django_resilient_sessions.backends.resilient import SessionStore
from django_resilient_sessions.cachecopy import hash_key
from django_resilient_sessions.middleware import SessionMiddleware
from django_resilient_sessions.typing import resilient_session
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent

WITH_ACCESSOR = """
from django.http import HttpRequest

from django_resilient_sessions.typing import resilient_session


def degraded(request: HttpRequest) -> bool:
    session = resilient_session(request)
    return session is not None and session.degraded


def key_hash(request: HttpRequest) -> str:
    session = resilient_session(request)
    return session.key_hash if session is not None else ""
"""

WITHOUT_ACCESSOR = """
from django.http import HttpRequest


def degraded(request: HttpRequest) -> bool:
    return bool(request.session.degraded)


def key_hash(request: HttpRequest) -> str:
    return str(request.session.key_hash)
"""


def test_mypy_accepts_the_accessor_and_refuses_the_bare_session(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    pytest.importorskip("mypy_django_plugin")
    (tmp_path / "with_accessor.py").write_text(textwrap.dedent(WITH_ACCESSOR))
    (tmp_path / "without_accessor.py").write_text(textwrap.dedent(WITHOUT_ACCESSOR))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-error-summary",
            "--hide-error-context",
            str(ROOT / "tests" / "typing_examples"),
            str(tmp_path / "with_accessor.py"),
            str(tmp_path / "without_accessor.py"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert result.returncode == 1, result.stdout + result.stderr
    assert all(line.startswith(str(tmp_path / "without_accessor.py")) for line in errors), errors
    assert any('"SessionBase" has no attribute "degraded"' in line for line in errors), errors
    assert any('"SessionBase" has no attribute "key_hash"' in line for line in errors), errors


def test_the_typing_examples_are_in_mypys_files() -> None:
    """``make lint`` checks them (mypy's ``files``), so a change to the API shows there."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"tests/typing_examples"' in pyproject.split("[tool.mypy]")[1].split("\n[")[0]


# At run time --------------------------------------------------------------------------------


def through_middleware(request: HttpRequest) -> HttpRequest:
    SessionMiddleware(lambda request: HttpResponse()).process_request(request)
    return request


@pytest.mark.django_db
def test_the_accessor_gives_the_engines_session() -> None:
    request = through_middleware(RequestFactory().get("/"))
    session = resilient_session(request)
    assert session is request.session
    assert isinstance(session, SessionStore)
    assert (session.degraded, session.key_hash, session.source) == (False, "", None)
    request.session["x"] = 1
    request.session.save()
    assert session.key_hash == hash_key(request.session.session_key or "")
    assert session.degraded is False


@pytest.mark.django_db
def test_the_accessor_shows_an_outage(fault_redis: RedisServer) -> None:
    request = through_middleware(RequestFactory().get("/"))
    request.session["x"] = 1
    fault_redis.kill()
    request.session.save()
    session = resilient_session(request)
    assert session is not None and session.degraded is True


def test_the_accessor_is_none_for_another_engine_or_no_session() -> None:
    request = RequestFactory().get("/")
    assert resilient_session(request) is None
    request.session = SignedCookieStore()
    assert resilient_session(request) is None


def test_a_subclass_of_the_engine_counts() -> None:
    class SiteStore(SessionStore):
        pass

    request = RequestFactory().get("/")
    request.session = SiteStore()
    assert resilient_session(request) is request.session
