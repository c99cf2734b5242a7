"""How a site wires the engine in, through real requests (Django's test ``Client``, the
full middleware stack, a private redis-server):

- a site's own subclass of our middleware works end to end, outage included, and no
  check complains (E004 looks for subclasses too);
- our middleware below ``AuthenticationMiddleware``: check E010, and where checks do not
  run, ``ImproperlyConfigured`` naming our middleware when the handler is built (before,
  the first request met the authentication middleware's own error, which tells the site
  to install Django's ``SessionMiddleware``: a 500 page in production);
- the app missing from ``INSTALLED_APPS``: ``ImproperlyConfigured`` at the first
  request, not a bare ``RuntimeError``;
- a view that saves a session it did not load (``SessionStore(key)``, ``modified``,
  ``save()``) gets what Django's ``cache`` engine gives it, for an unknown key too;
- a view that stores a value the serializer cannot take (a ``datetime``) gets the
  ``TypeError`` at its own assignment line, naming the key.
"""

from __future__ import annotations

import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client, override_settings

from tests.redis_server import RedisServer
from tests.web import (
    BACKUP_COOKIE,
    cookie,
    get_values,
    login,
    make_user,
    ok,
    session_key,
    set_values,
    whoami,
)

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parent.parent
OURS = "django_resilient_sessions.middleware.SessionMiddleware"
SUBCLASS = "tests.testapp.wiring.SiteSessionMiddleware"
AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
DJANGO_ENGINE = "django.contrib.sessions.backends.cache"
DJANGO_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"


@pytest.fixture(autouse=True)
def short_cooldown() -> Iterator[None]:
    with override_settings(RESILIENT_SESSIONS={"BREAKER_COOLDOWN": 0.2}):
        yield


def our_ids() -> list[str]:
    return sorted(m.id for m in run_checks() if (m.id or "").startswith("django_resilient"))


def replaced(old: str, new: str) -> list[str]:
    assert old in settings.MIDDLEWARE
    return [new if path == old else path for path in settings.MIDDLEWARE]


# A subclass of our middleware ---------------------------------------------------------------


def test_a_subclass_of_the_middleware_works_end_to_end(fault_redis: RedisServer) -> None:
    with override_settings(MIDDLEWARE=replaced(OURS, SUBCLASS)):
        assert our_ids() == []  # neither E004 (middleware missing) nor E005 nor E010
        make_user()
        client = Client()
        login(client)
        set_values(client, cart="2")
        assert cookie(client, BACKUP_COOKIE)
        fault_redis.kill()
        assert whoami(client) == {"user": "alice", "degraded": True}
        set_values(client, cart="3")
        assert get_values(client) == {"cart": "3"}


# Our middleware below the authentication middleware -------------------------------------------


def below_authentication() -> list[str]:
    middleware = [path for path in settings.MIDDLEWARE if path != OURS]
    middleware.insert(middleware.index(AUTH) + 1, OURS)
    return middleware


def test_our_middleware_below_authentication_is_e010_and_stops_the_handler() -> None:
    with override_settings(MIDDLEWARE=below_authentication()):
        assert "django_resilient_sessions.E010" in our_ids()
        # Where checks do not run: the handler a WSGI server builds at start-up...
        with pytest.raises(ImproperlyConfigured, match="comes before the resilient") as built:
            WSGIHandler()
        assert AUTH in str(built.value) and OURS in str(built.value)
        assert "django.contrib.sessions.middleware" not in str(built.value)
        # ...and the test client's, built at its first request: no response, no 500 page.
        with pytest.raises(ImproperlyConfigured, match="comes before the resilient"):
            Client(raise_request_exception=False).get("/whoami/")


def test_our_middleware_above_authentication_builds() -> None:
    WSGIHandler()  # the suite's own order: nothing raised
    with override_settings(MIDDLEWARE=replaced(OURS, SUBCLASS)):
        WSGIHandler()


# The app missing from INSTALLED_APPS ----------------------------------------------------------

WITHOUT_THE_APP = """
import django
from django.conf import settings
settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["testserver"],
    SECRET_KEY="not-a-secret-0123456789-abcdefghijklmnopqrstuvwxyz",
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes",
                    "django.contrib.sessions"],
    MIDDLEWARE=["django_resilient_sessions.middleware.SessionMiddleware",
                "django.contrib.auth.middleware.AuthenticationMiddleware"],
    SESSION_ENGINE="django_resilient_sessions.backends.resilient",
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    CACHES={"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                        "LOCATION": "redis://127.0.0.1:1/0"}},
)
urlpatterns = []
django.setup()
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
try:
    Client().get("/")
except ImproperlyConfigured as error:
    print("ImproperlyConfigured:", error)
"""


def test_the_app_missing_from_installed_apps_is_improperly_configured_at_first_request() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_THE_APP],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.stdout.startswith("ImproperlyConfigured:"), done.stderr[-2000:]
    assert "'django_resilient_sessions' is not in INSTALLED_APPS" in done.stdout
    assert "RuntimeError" not in done.stdout + done.stderr


# A view saving a session it did not load, with either engine -------------------------------


@pytest.fixture(params=["ours", "django-cache"])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "ours":
        yield request.param
        return
    with override_settings(
        SESSION_ENGINE=DJANGO_ENGINE, MIDDLEWARE=replaced(OURS, DJANGO_MIDDLEWARE)
    ):
        yield request.param


def test_saving_an_unknown_key_in_a_view_is_an_update_error_as_with_django(engine: str) -> None:
    client = Client()
    answer = ok(client.post("/save-by-key/", {"key": "thiskeywasnevercreated0123456789"}))
    assert answer == {"raised": "UpdateError", "exists": False}


def test_saving_a_known_key_in_a_view_saves_it_as_with_django(engine: str) -> None:
    client = Client()
    set_values(client, cart="1")
    key = session_key(client)
    assert ok(client.post("/save-by-key/", {"key": key})) == {"raised": None, "exists": True}
    assert get_values(client) == {"cart": "1"}


def test_an_unknown_session_cookie_gets_a_new_key_as_with_django(engine: str) -> None:
    client = Client()
    client.cookies[settings.SESSION_COOKIE_NAME] = "thiskeywasnevercreated0123456789"
    set_values(client, cart="1")
    assert session_key(client) != "thiskeywasnevercreated0123456789"
    assert get_values(client) == {"cart": "1"}


# A value the serializer cannot take, set in a view ----------------------------------------------


def test_a_view_storing_a_datetime_gets_the_type_error_at_its_assignment() -> None:
    client = Client(raise_request_exception=True)
    set_values(client, cart="1")
    with pytest.raises(TypeError, match="'when' cannot be stored") as raised:
        client.post("/set-datetime/")
    frames = traceback.extract_tb(raised.value.__traceback__)
    in_the_view = [f for f in frames if f.name == "set_datetime"]
    assert in_the_view, frames
    assert (in_the_view[-1].line or "").startswith('request.session["when"] = timezone.now()')
    # Nothing half-set: the session still holds what it held.
    assert get_values(client) == {"cart": "1"}
    # Without raise_request_exception it is the site's 500 page, as any bug in a view.
    assert Client(raise_request_exception=False).post("/set-datetime/").status_code == 500
