"""A drop-in, attacked: the same requests against Django's ``cache`` engine and this one.

A scripted sequence of requests (set, read, ``set_expiry`` in each form, ``clear``,
``cycle_key``, ``flush``, logins...) runs once against a site on Django's ``cache``
engine and middleware and once against the same site on ours, Redis healthy; the
status codes, bodies, the session cookie's ``Set-Cookie`` (value present, deleted or
absent, ``Max-Age``, ``Expires``, ``Path``, ``Domain``, flags) and the session data the
views see must be the same.  What may differ is what the README's "What changes for a
site that switches" says.
"""

from __future__ import annotations

import datetime
import inspect
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import login as auth_login
from django.contrib.auth import logout as auth_logout
from django.contrib.auth.models import User
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpRequest, JsonResponse
from django.test import Client, override_settings
from django.urls import path
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from django_resilient_sessions.backends.resilient import SessionStore as ResilientStore
from tests.redis_server import RedisServer
from tests.web import PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)

OURS = "django_resilient_sessions.middleware.SessionMiddleware"
DJANGO_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"
DJANGO_ENGINE = "django.contrib.sessions.backends.cache"
OUR_ENGINE = "django_resilient_sessions.backends.resilient"


# The views -----------------------------------------------------------------------------------


def _visible(session: Any) -> dict[str, Any]:
    return {k: v for k, v in session.items() if not k.startswith("_resilient_")}


def _snapshot(request: HttpRequest, **extra: Any) -> JsonResponse:
    session: Any = request.session
    return JsonResponse(
        {
            "data": _visible(session),
            "has_key": session.session_key is not None,
            "empty": session.is_empty(),
            "expiry_age": session.get_expiry_age(),
            "expiry_date": session.get_expiry_date().timestamp(),
            "at_close": session.get_expire_at_browser_close(),
            "cookie_age": session.get_session_cookie_age(),
            "user": request.user.get_username() if request.user.is_authenticated else None,
            **extra,
        }
    )


def _login_in(zone: str, request: HttpRequest) -> None:
    timezone.activate(zone)
    auth_login(request, User.objects.get(username="alice"))


def _in_five_minutes() -> datetime.datetime:
    return timezone.now() + datetime.timedelta(seconds=500)


OPERATIONS: dict[str, Callable[[HttpRequest], Any]] = {
    "nothing": lambda r: None,
    "read": lambda r: r.session.get("a"),
    "set": lambda r: r.session.update({"a": 1, "b": {"x": [1, 2]}, "s": "é€"}),
    "set_c": lambda r: r.session.__setitem__("c", 3),
    "pop": lambda r: r.session.pop("a", None),
    "delitem": lambda r: r.session.__delitem__("b"),
    "setdefault": lambda r: r.session.setdefault("d", [4]),
    "expiry_0": lambda r: r.session.set_expiry(0),
    "expiry_300": lambda r: r.session.set_expiry(300),
    "expiry_2": lambda r: r.session.set_expiry(2),
    "expiry_datetime": lambda r: r.session.set_expiry(_in_five_minutes()),
    "expiry_timedelta": lambda r: r.session.set_expiry(datetime.timedelta(seconds=600)),
    "expiry_none": lambda r: r.session.set_expiry(None),
    "clear": lambda r: r.session.clear(),
    "cycle": lambda r: r.session.cycle_key(),
    "flush": lambda r: r.session.flush(),
    "test_cookie": lambda r: r.session.set_test_cookie(),
    "test_cookie_worked": lambda r: r.session.test_cookie_worked(),
    "delete_test_cookie": lambda r: r.session.delete_test_cookie(),
    "exists_own": lambda r: r.session.exists(r.session.session_key or ""),
    "exists_other": lambda r: r.session.exists("nosuchsessionkey0123456789abcdef"),
    "login": lambda r: auth_login(r, User.objects.get(username="alice")),
    # A site's time zone middleware (Django's docs' example) activates the user's zone
    # for the request and leaves it active while the response goes out.
    "login_in_la": lambda r: _login_in("America/Los_Angeles", r),
    "logout": lambda r: auth_logout(r),
    "error_after_set": lambda r: r.session.__setitem__("e", 5),
}


@csrf_exempt
def operate(request: HttpRequest, name: str) -> JsonResponse:
    result = OPERATIONS[name](request)
    if not isinstance(result, (bool, int, str, type(None), list)):
        result = repr(type(result))
    response = _snapshot(request, result=result)
    if name == "error_after_set":
        response.status_code = 500
    return response


@csrf_exempt
def untouched(request: HttpRequest) -> JsonResponse:
    """A view that never looks at the session."""
    return JsonResponse({"ok": True})


ASYNC_OPERATIONS: dict[str, list[tuple[Any, ...]]] = {
    "set": [("aset", "a", 1), ("aupdate", {"b": {"x": [1, 2]}}), ("asetdefault", "c", [3])],
    "read": [("aget", "a"), ("ahas_key", "b"), ("akeys",), ("avalues",), ("aitems",)],
    "pop": [("apop", "a"), ("apop", "nope", None)],
    "expiry": [("aset_expiry", 300), ("aget_expiry_age",), ("aget_expire_at_browser_close",)],
    "expiry_0": [("aset_expiry", 0), ("aget_expire_at_browser_close",)],
    "expiry_none": [("aset_expiry", None), ("aget_expiry_age",)],
    "test_cookie": [("aset_test_cookie",), ("atest_cookie_worked",)],
    "cycle": [("acycle_key",)],
    "exists": [("aexists", "nosuchsessionkey0123456789abcdef")],
    "login": [("alogin",)],
    "logout": [("alogout",)],
    "flush": [("aflush",)],
}


async def aoperate(request: HttpRequest, name: str) -> JsonResponse:
    from django.contrib.auth import alogin, alogout

    session: Any = request.session
    results: list[Any] = []
    for method, *args in ASYNC_OPERATIONS[name]:
        if method == "alogin":
            user = await User.objects.aget(username="alice")
            await alogin(request, user)
            continue
        if method == "alogout":
            await alogout(request)
            continue
        found = await getattr(session, method)(*args)
        if method in ("akeys", "avalues", "aitems"):
            # Less the engine's own stamps (the README says a login carries them).
            stamps = {k: v for k, v in session.items() if k.startswith("_resilient_")}
            hidden = {"akeys": stamps, "aitems": stamps.items(), "avalues": stamps.values()}
            left = list(found)
            for item in hidden[method]:
                left.remove(item)
            found = sorted(map(repr, left))
        results.append(found)
    data = {k: v for k, v in (await session.aitems()) if not k.startswith("_resilient_")}
    return JsonResponse(
        {
            "results": results,
            "data": data,
            "has_key": session.session_key is not None,
            "expiry_age": await session.aget_expiry_age(),
        }
    )


def _values() -> dict[str, Any]:
    return {
        "int": 7,
        "big": 2**70,
        "float": 1e308,
        "tiny": 5e-324,
        "nan": float("nan"),
        "inf": float("-inf"),
        "neg0": -0.0,
        "nested": {1: {2: "x"}, "k": [None, True, False]},
        "tuple": (1, (2, 3)),
        "text": "\u00fcn\u00ef\u2603\U0001f600\ud800",
        "none": None,
        "long": "x" * 3000,
        "empty": {},
        "bool_key": {True: 1},
    }


@csrf_exempt
def set_values(request: HttpRequest) -> JsonResponse:
    values = _values()
    values.update(getattr(settings, "EXTRA_VALUES", {}))
    for key, value in values.items():
        request.session[key] = value
    return JsonResponse({"ok": True})


@csrf_exempt
def values(request: HttpRequest) -> JsonResponse:
    """What the view sees: each value's repr (a tuple is not a list, 1 is not "1")."""
    if request.method == "POST":
        request.session["touched"] = request.session.get("touched", 0) + 1
    seen = {k: repr(v) for k, v in request.session.items() if k != "touched"}
    return JsonResponse({"seen": seen, "degraded": getattr(request.session, "degraded", None)})


urlpatterns = [
    path("values/set/", set_values),
    path("values/", values),
    path("op/<str:name>/", operate),
    path("aop/<str:name>/", aoperate),
    path("untouched/", untouched),
]


# The harness ---------------------------------------------------------------------------------


def _middleware(engine: str) -> list[str]:
    ours = engine == OUR_ENGINE
    found = [DJANGO_MIDDLEWARE if p == OURS and not ours else p for p in settings.MIDDLEWARE]
    assert (OURS if ours else DJANGO_MIDDLEWARE) in found
    return found


def _cookie_view(response: Any, name: str, now: float) -> dict[str, Any] | None:
    """What a response says about the cookie ``name`` (None: nothing)."""
    morsel = response.cookies.get(name)
    if morsel is None:
        return None
    expires = morsel["expires"]
    # Expires, relative to now, to within a second (the two runs are not at the same time):
    # "max-age" when it agrees with Max-Age.
    until: int | str | None = (
        round(parsedate_to_datetime(expires).timestamp() - now) if expires else None
    )
    if (
        isinstance(until, int)
        and morsel["max-age"] != ""
        and abs(until - int(morsel["max-age"])) <= 1
    ):
        until = "max-age"
    elif isinstance(until, int) and until < 0:
        until = "past"  # a deletion (1970)
    return {
        "value": "deleted" if morsel.value == "" else "set",
        "max-age": morsel["max-age"],
        "expires": until,
        "path": morsel["path"],
        "domain": morsel["domain"],
        "secure": bool(morsel["secure"]),
        "httponly": bool(morsel["httponly"]),
        "samesite": morsel["samesite"],
    }


def _observe(response: Any, now: float) -> dict[str, Any]:
    body = response.json()
    for field in ("expiry_age",):
        if field in body:
            body[field] = round(body[field] / 2)  # a second may pass between the runs
    if "expiry_date" in body:
        body["expiry_date"] = round((body["expiry_date"] - now) / 2)
    expiry = body.get("data", {}).get("_session_expiry")
    if isinstance(expiry, str):  # an ISO datetime: relative to now, as above
        at = datetime.datetime.fromisoformat(expiry)
        if timezone.is_naive(at):
            at = timezone.make_aware(at)
        body["data"]["_session_expiry"] = round((at.timestamp() - now) / 2)
    return {
        "status": response.status_code,
        "body": body,
        "cookie": _cookie_view(response, settings.SESSION_COOKIE_NAME, now),
        "vary": response.get("Vary"),
    }


def run(engine: str, steps: list[str], **overrides: Any) -> list[dict[str, Any]]:
    """Each step's observation with ``engine``; checks our backup cookie follows the
    session cookie (same attributes, always HttpOnly) on the way."""
    import time

    observations = []
    with override_settings(
        SESSION_ENGINE=engine,
        MIDDLEWARE=_middleware(engine),
        ROOT_URLCONF=__name__,
        **overrides,
    ):
        client = Client()
        for step in steps:
            now = time.time()
            if step == "untouched":
                response = client.get("/untouched/")
                observation = {
                    "status": response.status_code,
                    "body": response.json(),
                    "cookie": _cookie_view(response, settings.SESSION_COOKIE_NAME, now),
                    "vary": response.get("Vary"),
                }
            else:
                response = client.post(f"/op/{step}/")
                observation = _observe(response, now)
            observation["step"] = step
            observations.append(observation)
            if engine == OUR_ENGINE:
                _backup_follows(response, observation, now)
    return observations


def _backup_follows(response: Any, observation: dict[str, Any], now: float) -> None:
    session = observation["cookie"]
    backup = _cookie_view(response, "sessionbackup", now)
    if session is None or session["value"] == "deleted":
        assert backup is None or backup["value"] == "deleted", observation["step"]
        return
    assert backup is not None, observation["step"]
    assert backup == {**session, "httponly": True}, observation["step"]


#: Django's middleware varies on Cookie whenever it sets the session cookie since a 5.2
#: bugfix release; before it, only when the session was accessed. Ours always does (a
#: response that sets a session cookie must not be cached for others), so on an earlier
#: 5.2 release the one allowed difference is that header on a response setting a cookie.
DJANGO_VARIES_ON_SET_COOKIE = "need_vary_cookie" in inspect.getsource(
    SessionMiddleware.process_response
)


def differential(steps: list[str], **overrides: Any) -> None:
    theirs = run(DJANGO_ENGINE, steps, **overrides)
    ours = run(OUR_ENGINE, steps, **overrides)
    for their, our in zip(theirs, ours, strict=True):
        if not DJANGO_VARIES_ON_SET_COOKIE and their["vary"] is None and their["cookie"]:
            assert our["vary"] == "Cookie", f"step {their['step']!r}"
            their = {**their, "vary": "Cookie"}
        assert our == their, f"step {their['step']!r}"


@pytest.fixture(autouse=True)
def alice(redis_server: RedisServer) -> Iterator[None]:
    User.objects.create_user(username="alice", password=PASSWORD)
    with override_settings(RESILIENT_SESSIONS={"BREAKER_COOLDOWN": 0.2}):
        yield


# The scripts ---------------------------------------------------------------------------------

ANONYMOUS = [
    "untouched",
    "read",
    "set",
    "read",
    "untouched",
    "set_c",
    "pop",
    "delitem",
    "setdefault",
    "exists_own",
    "exists_other",
    "test_cookie",
    "test_cookie_worked",
    "delete_test_cookie",
    "expiry_0",
    "read",
    "expiry_300",
    "read",
    "expiry_datetime",
    "read",
    "expiry_timedelta",
    "read",
    "expiry_none",
    "read",
    "error_after_set",
    "read",
    "cycle",
    "read",
    "clear",
    "read",
    "set",
    "flush",
    "read",
    "cycle",
    "read",
    "flush",
    "untouched",
]

LOGGED_IN = [
    "set",
    "login",
    "read",
    "untouched",
    "expiry_0",
    "read",
    "cycle",
    "read",
    "set_c",
    "logout",
    "read",
    "login",
    "clear",
    "read",
    "login",
    "flush",
    "read",
]

COOKIE_SETTINGS = {
    "SESSION_COOKIE_SECURE": True,
    "SESSION_COOKIE_DOMAIN": "example.com",
    "SESSION_COOKIE_PATH": "/",
    "SESSION_COOKIE_SAMESITE": "Strict",
    "SESSION_COOKIE_HTTPONLY": False,
    "SESSION_COOKIE_AGE": 3600,
}


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        COOKIE_SETTINGS,
        {"SESSION_SAVE_EVERY_REQUEST": True},
        {"SESSION_EXPIRE_AT_BROWSER_CLOSE": True},
        {"USE_TZ": False, "TIME_ZONE": "America/New_York"},
    ],
    ids=["defaults", "cookie-settings", "save-every-request", "browser-close", "naive"],
)
@pytest.mark.parametrize("script", ["anonymous", "logged-in"])
def test_the_same_requests_get_the_same_answers(script: str, overrides: dict[str, Any]) -> None:
    differential(ANONYMOUS if script == "anonymous" else LOGGED_IN, **overrides)


# Async: the same calls through ASGI ---------------------------------------------------------

ASYNC_SCRIPT = [
    "read",
    "set",
    "read",
    "pop",
    "expiry",
    "read",
    "expiry_0",
    "expiry_none",
    "test_cookie",
    "exists",
    "login",
    "read",
    "cycle",
    "read",
    "logout",
    "read",
    "set",
    "flush",
    "read",
]


async def arun(engine: str, steps: list[str]) -> list[dict[str, Any]]:
    import time

    from django.test import AsyncClient

    observations = []
    with override_settings(
        SESSION_ENGINE=engine, MIDDLEWARE=_middleware(engine), ROOT_URLCONF=__name__
    ):
        client = AsyncClient()
        for step in steps:
            now = time.time()
            response = await client.post(f"/aop/{step}/")
            observation = _observe(response, now)
            observation["step"] = step
            observations.append(observation)
            if engine == OUR_ENGINE:
                _backup_follows(response, observation, now)
    return observations


def test_the_same_async_calls_get_the_same_answers() -> None:
    from asgiref.sync import async_to_sync

    theirs = async_to_sync(arun)(DJANGO_ENGINE, ASYNC_SCRIPT)
    ours = async_to_sync(arun)(OUR_ENGINE, ASYNC_SCRIPT)
    for their, our in zip(theirs, ours, strict=True):
        assert our == their, f"step {their['step']!r}"


# clear() ------------------------------------------------------------------------------------


def _client_on(engine: str = OUR_ENGINE) -> Iterator[Client]:
    with override_settings(
        SESSION_ENGINE=engine, MIDDLEWARE=_middleware(engine), ROOT_URLCONF=__name__
    ):
        yield Client()


@pytest.fixture
def client() -> Iterator[Client]:
    yield from _client_on()


def test_clear_of_a_login_logs_out_for_good(client: Client) -> None:
    """``session.clear()`` in a request that had not read the session ended nothing:
    the save, not knowing the Redis copy, left it in place (with its login) and the
    next request was served from it, logged in again."""
    from django_resilient_sessions.models import UserSession

    assert client.post("/op/set/").status_code == 200
    assert client.post("/op/login/").json()["user"] == "alice"
    stolen = {name: m.value for name, m in client.cookies.items() if m.value}
    assert client.post("/op/clear/").json()["data"] == {}
    after = client.post("/op/read/").json()
    assert (after["data"], after["user"]) == ({}, None)
    assert not UserSession.objects.active().exists()
    replayed = Client()
    for name, value in stolen.items():
        replayed.cookies[name] = value
    assert replayed.post("/op/read/").json()["user"] is None


def test_clear_on_an_unknown_key_creates_no_session_under_it(
    client: Client, redis_server: RedisServer
) -> None:
    """A key the client chose (never issued) must not become a session when a view
    clears it (Django's ``cache`` engine refuses it with ``UpdateError``, a 400; here
    the key is forgotten and its cookie deleted)."""
    from tests.web import in_redis

    chosen = "chosenbytheclient0123456789abcde"
    client.cookies[settings.SESSION_COOKIE_NAME] = chosen
    response = client.post("/op/clear/")
    assert response.status_code == 200
    assert response.cookies[settings.SESSION_COOKIE_NAME].value == ""
    assert not in_redis(redis_server, chosen)


# Renewals: a read-only request ----------------------------------------------------------------


def test_a_read_only_request_of_a_login_slides_only_when_its_row_is_renewed() -> None:
    """A documented difference (README, "What changes for a site that switches"): a
    login's read-only request saves, both cookies included, when its ledger row is
    renewed (once per ACTIVITY_UPDATE_INTERVAL), and only then; Django's engines never
    set the cookie on a read-only request."""
    theirs = run(DJANGO_ENGINE, ["login", "read", "read"])
    ours = run(OUR_ENGINE, ["login", "read", "read"])  # the interval has not passed
    assert [o["cookie"] for o in theirs[1:]] == [None, None]
    assert [o["cookie"] for o in ours[1:]] == [None, None]
    with override_settings(RESILIENT_SESSIONS={"ACTIVITY_UPDATE_INTERVAL": 0}):
        renewed = run(OUR_ENGINE, ["login", "read", "read"])  # due on every request
    assert all(o["cookie"] is not None for o in renewed[1:])


# Values and types, whichever copy serves ------------------------------------------------------


class DecimalJSONSerializer:
    """A site's serializer: JSON that keeps Decimals (as strings) and datetimes."""

    def dumps(self, obj: Any) -> bytes:
        import json

        from django.core.serializers.json import DjangoJSONEncoder

        return json.dumps(obj, cls=DjangoJSONEncoder, separators=(",", ":")).encode()

    def loads(self, data: bytes) -> Any:
        import json

        return json.loads(data)


class PickleSerializer:
    """A site's pickle serializer (Django removed its own in 5.0)."""

    def dumps(self, obj: Any) -> bytes:
        import pickle

        return pickle.dumps(obj)

    def loads(self, data: bytes) -> Any:
        import pickle

        return pickle.loads(data)  # the site's choice (the test's subject)


def _seen_by_copy(server: RedisServer) -> dict[str, Any]:
    """What the views see: from Redis, from the backup (Redis killed), after a change
    kept in the backup alone, then back in Redis (restarted empty: written back)."""
    seen: dict[str, Any] = {}
    with override_settings(ROOT_URLCONF=__name__):
        client = Client()
        assert client.post("/values/set/").status_code == 200
        redis = client.get("/values/").json()
        assert redis["degraded"] is False
        seen["redis"] = redis["seen"]
        server.kill()
        backup = client.get("/values/").json()
        assert backup["degraded"] is True
        seen["backup"] = backup["seen"]
        seen["backup_after_save"] = client.post("/values/").json()["seen"]
        seen["backup_again"] = client.get("/values/").json()["seen"]
        server.restart()
        import time

        time.sleep(0.3)  # the breaker's cool-down (0.2 s) passes
        seen["written_back"] = client.get("/values/").json()["seen"]
        redis = client.get("/values/").json()
        assert redis["degraded"] is False
        seen["redis_again"] = redis["seen"]
    return seen


@pytest.mark.parametrize(
    "serializer, extra",
    [
        ("django.contrib.sessions.serializers.JSONSerializer", {}),
        (
            f"{__name__}.DecimalJSONSerializer",
            {"price": __import__("decimal").Decimal("10.10")},
        ),
        (
            f"{__name__}.PickleSerializer",
            {
                "when": datetime.datetime(2024, 2, 29, 12, 0, tzinfo=datetime.timezone.utc),
                "set": frozenset({1, 2}),
                "price": __import__("decimal").Decimal("10.10"),
            },
        ),
    ],
    ids=["json", "decimal-json", "pickle"],
)
def test_a_view_sees_the_same_values_whichever_copy_serves(
    fault_redis: RedisServer, serializer: str, extra: dict[str, Any]
) -> None:
    with override_settings(SESSION_SERIALIZER=serializer, EXTRA_VALUES=extra):
        seen = _seen_by_copy(fault_redis)
    first = seen["redis"]
    assert set(first) == set(_values()) | set(extra)
    for copy, found in seen.items():
        assert found == first, copy
    if serializer.endswith("PickleSerializer"):
        assert first["tuple"] == "(1, (2, 3))" and first["set"] == "frozenset({1, 2})"
    else:
        assert first["tuple"] == "[1, [2, 3]]" and first["nested"].startswith("{'1': {'2'")


# USE_TZ = False with a time zone activated for the request --------------------------------------


@override_settings(USE_TZ=False, TIME_ZONE="Europe/Paris", SESSION_COOKIE_AGE=3600)
def test_a_login_under_an_activated_time_zone_is_recorded_in_the_default_one(
    client: Client, fault_redis: RedisServer
) -> None:
    """Under ``USE_TZ = False`` the database holds naive times in ``TIME_ZONE`` (what
    ``timezone.now()`` gives); the ledger wrote the row's expiry in the time zone the
    request had activated (Los Angeles, 9 hours behind Paris): the one-hour login was
    over at once, and a backup of it was refused in the next outage."""
    from django_resilient_sessions.models import UserSession

    try:
        assert client.post("/op/login_in_la/").json()["user"] == "alice"
    finally:
        timezone.deactivate()
    row = UserSession.objects.get()
    late = (row.expires_at - datetime.datetime.now()).total_seconds()
    assert 3500 < late <= 3600
    assert row.is_active
    fault_redis.kill()
    assert client.post("/op/read/").json()["user"] == "alice"


# Django's RedisCache: credentials, another db, prefixes, versions, key functions --------------


class PasswordRedis(RedisServer):
    """A redis-server whose default user is off: only ``sess`` / ``s3cret`` gets in."""

    def __init__(self) -> None:
        acl = ("--user", "default", "off", "--user", "sess", "on", ">s3cret", "~*", "+@all")
        super().__init__(extra_args=acl)

    def client(self, **kwargs: Any) -> Any:
        raw = super().client(username="sess", password="s3cret", **kwargs)
        return raw

    def db3(self) -> Any:
        """A client of the database the session cache uses."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=1.0)

    @property
    def url(self) -> str:
        return f"redis://sess:s3cret@127.0.0.1:{self.port}/3"


def site_key(key: str, key_prefix: str, version: int) -> str:
    return f"site|{key_prefix}|v{version}|{key}"


@pytest.mark.parametrize("backend", ["django", "django-redis"])
def test_a_cache_with_credentials_a_db_a_prefix_a_version_and_a_key_function(
    client: Client, backend: str
) -> None:
    """Every Redis command of the engine, the breaker's probe and the bounded deletions
    included, goes to the alias's own server, user, database and key names: a session
    survives an outage, and a revocation made during it reaches Redis afterwards."""
    from tests.redis_server import CACHE_BACKENDS

    server = PasswordRedis()
    with server:
        path, options = CACHE_BACKENDS[backend]
        caches = {
            "default": {
                "BACKEND": path,
                "LOCATION": server.url,
                "OPTIONS": options,
                "KEY_PREFIX": "shop",
                "VERSION": 2,
                "KEY_FUNCTION": f"{__name__}.site_key",
            }
        }
        with override_settings(CACHES=caches):
            laptop, phone = client, Client()
            for device in (laptop, phone):
                assert device.post("/op/login/").json()["user"] == "alice"
            assert laptop.post("/op/set/").json()["data"]["a"] == 1
            with server.db3() as raw:
                keys = [k.decode() for k in raw.scan_iter()]
            assert keys and all(k.startswith("site|shop|v2|resilient_sessions:") for k in keys)
            stolen = {name: m.value for name, m in laptop.cookies.items() if m.value}
            server.kill()
            assert laptop.post("/op/read/").json()["data"]["a"] == 1  # from the backup
            from django_resilient_sessions import tracking
            from django_resilient_sessions.models import UserSession
            from tests.web import key_hash

            mine = key_hash(phone.cookies[settings.SESSION_COOKIE_NAME].value)
            others = UserSession.objects.exclude(key_hash=mine)
            assert tracking.end(list(others.values_list("key_hash", flat=True)), "revoked")
            server.restart()
            import time

            time.sleep(0.3)  # the cool-down: the next request probes, then drains
            assert phone.post("/op/read/").json()["user"] == "alice"
            phone.post("/op/read/")
            thief = Client()
            for name, value in stolen.items():
                thief.cookies[name] = value
            assert thief.post("/op/read/").json()["user"] is None
            with server.db3() as raw:
                found = {k.decode(): raw.get(k) for k in raw.scan_iter()}
            assert any(v == b"\x00ended" for v in found.values())  # the tombstone, in db 3
            assert phone.post("/op/read/").json()["user"] == "alice"
            assert phone.get("/values/").json()["degraded"] is False  # the probe got in


# Misconfigurations: a check error with an ID, and ImproperlyConfigured at start-up -----------


def _our_check_ids() -> list[str]:
    from django.core.checks import run_checks

    return sorted(m.id or "" for m in run_checks() if (m.id or "").startswith("django_resil"))


def _first_request_fails_to_build() -> str:
    """What building the handler (a Client's first request) raises, by message."""
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured) as raised:
        Client().get("/untouched/")
    return str(raised.value)


def test_django_redis_shard_client_is_refused_before_any_login() -> None:
    """django-redis's ShardClient passed every check and the middleware's start-up test
    (it has a ``get_client``), then answered every request with a 500 (its
    ``get_client`` raises ``NotImplementedError``)."""
    caches = {name: dict(config) for name, config in settings.CACHES.items()}
    caches["default"]["LOCATION"] = [caches["default"]["LOCATION"]]
    caches["default"]["OPTIONS"] = {
        **caches["default"]["OPTIONS"],
        "CLIENT_CLASS": "django_redis.client.ShardClient",
    }
    with override_settings(CACHES=caches, ROOT_URLCONF=__name__):
        assert _our_check_ids() == ["django_resilient_sessions.E007"]
        assert "no single primary" in _first_request_fails_to_build()


@pytest.mark.parametrize("other", [OURS, DJANGO_MIDDLEWARE])
def test_a_second_session_middleware_is_an_error_and_stops_start_up(other: str) -> None:
    """Our middleware twice was not caught at all (each saved the session: two writes per
    request); Django's beside ours was E005 only where checks run (elsewhere each
    request saved twice, the second backup never sent: a renewal on every request)."""
    middleware = list(settings.MIDDLEWARE)
    middleware.insert(middleware.index(OURS), other)
    with override_settings(MIDDLEWARE=middleware, ROOT_URLCONF=__name__):
        assert _our_check_ids() == ["django_resilient_sessions.E005"]
        assert "SessionMiddleware" in _first_request_fails_to_build()


# A site's own engine module, subclassing ours (Django's docs: "extending" an engine) ------------


class SessionStore(ResilientStore):
    """This module as a ``SESSION_ENGINE``: keys of the site's own making."""

    def _get_new_session_key(self) -> str:
        return "site" + super()._get_new_session_key()[4:]


def test_a_site_engine_subclassing_ours_is_checked_and_served_as_ours(
    client: Client, fault_redis: RedisServer
) -> None:
    """It was taken for another engine: a false W002 ("sessions have no backup"), none of
    the cache and routing checks (E006 to E011, W001), ``clearsessions`` without its
    report and ``adoptsessions`` refused."""
    import io

    from django.core.management import call_command

    with override_settings(SESSION_ENGINE=__name__):
        assert _our_check_ids() == []
        with override_settings(SESSION_CACHE_ALIAS="nowhere"):
            assert _our_check_ids() == ["django_resilient_sessions.E006"]
        assert client.post("/op/login/").json()["user"] == "alice"
        assert client.cookies[settings.SESSION_COOKIE_NAME].value.startswith("site")
        fault_redis.kill()
        assert client.post("/op/read/").json()["user"] == "alice"  # from its backup
        out = io.StringIO()
        call_command("clearsessions", stdout=out)
        assert out.getvalue().startswith("Sessions:")


# A shorter expiry, enforced on the server --------------------------------------------------------


@pytest.mark.parametrize("engine", [DJANGO_ENGINE, OUR_ENGINE])
def test_a_login_past_a_shorter_set_expiry_is_over_on_the_server(engine: str) -> None:
    """``set_expiry(2)`` after login, then the session id alone, replayed after the two
    seconds (a stolen id; a client that ignores Max-Age): with Django's engine the cache
    copy has expired, the request is anonymous.  Here the Redis copy had expired too,
    but the ledger row still said "active" until the login's first expiry (two weeks),
    so the login was served again from its row, and written back."""
    import time

    with (
        override_settings(RESILIENT_SESSIONS={"ACTIVITY_UPDATE_INTERVAL": 1}),
        override_settings(
            SESSION_ENGINE=engine, MIDDLEWARE=_middleware(engine), ROOT_URLCONF=__name__
        ),
    ):
        client = Client()
        assert client.post("/op/login/").json()["user"] == "alice"
        assert client.post("/op/expiry_2/").json()["data"]["_session_expiry"] == 2
        stolen = client.cookies[settings.SESSION_COOKIE_NAME].value
        time.sleep(3.5)  # the session's expiry, then the row's grace (1 s), pass
        thief = Client()
        thief.cookies[settings.SESSION_COOKIE_NAME] = stolen
        assert thief.post("/op/read/").json()["user"] is None
