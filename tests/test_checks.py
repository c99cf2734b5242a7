"""System checks of django_resilient_sessions.checks, one by one, by exact ID.

Every check ID of the package (E001-E011, W001-W005) is triggered through
``override_settings`` and found with ``django.core.checks.run_checks()`` (with
``include_deployment_checks=True`` for the deploy-only ones); valid settings and the
suite's own settings produce none of them, and ``manage.py check`` (``call_command``)
fails with ``SystemCheckError`` on an error-level one.
"""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_resilient_sessions import checks
from django_resilient_sessions.conf import DEFAULTS

PREFIX = "django_resilient_sessions."
OUR_MIDDLEWARE = "django_resilient_sessions.middleware.SessionMiddleware"
DJANGO_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"
DB_ENGINE = "django.contrib.sessions.backends.db"
DUMMY_CACHE = "django.core.cache.backends.dummy.DummyCache"


def ours(*, deploy: bool = False) -> list[CheckMessage]:
    """Messages of this package only (Django's own checks are not under test here)."""
    return [
        m for m in run_checks(include_deployment_checks=deploy) if m.id and m.id.startswith(PREFIX)
    ]


def ids(messages: list[CheckMessage]) -> list[str]:
    return sorted(str(m.id) for m in messages)


def only(messages: list[CheckMessage], check_id: str) -> CheckMessage:
    found = [m for m in messages if m.id == PREFIX + check_id]
    assert len(found) == 1, f"expected one {check_id}, got {ids(messages)}"
    return found[0]


def middleware_without(name: str) -> list[str]:
    return [m for m in settings.MIDDLEWARE if m != name]


def default_cache(**changes: Any) -> dict[str, dict[str, Any]]:
    """CACHES with the default alias changed (its LOCATION kept: the fixture's server)."""
    caches = {alias: dict(conf) for alias, conf in settings.CACHES.items()}
    caches["default"] = {**caches["default"], **changes}
    return caches


# -- baseline ---------------------------------------------------------------------------


def test_suite_settings_produce_none_of_our_ids() -> None:
    assert ours() == []


def test_suite_settings_with_secure_cookie_produce_no_deploy_ids() -> None:
    with override_settings(SESSION_COOKIE_SECURE=True, SESSION_COOKIE_HTTPONLY=True):
        assert ours(deploy=True) == []


# -- E001 / E002 / E003: the RESILIENT_SESSIONS dict -------------------------------------


@pytest.mark.parametrize("value", [["BREAKER_COOLDOWN", 1.0], "BREAKER_COOLDOWN=1", 5])
def test_e001_options_not_a_dict(value: Any) -> None:
    with override_settings(RESILIENT_SESSIONS=value):
        messages = ours()
    assert ids(messages) == [PREFIX + "E001"]
    assert isinstance(messages[0], Error)


def test_e002_unknown_key_lists_known_keys() -> None:
    with override_settings(RESILIENT_SESSIONS={"BREAKER_COOLDOWN": 0.5, "COOKIE_NAME": "x"}):
        messages = ours()
    assert ids(messages) == [PREFIX + "E002"]
    error = messages[0]
    assert isinstance(error, Error)
    assert "'COOKIE_NAME'" in error.msg
    assert error.hint is not None
    for known in DEFAULTS:
        assert known in error.hint


def test_e002_one_error_per_unknown_key() -> None:
    with override_settings(RESILIENT_SESSIONS={"NOPE": 1, "ALSO_NOPE": 2}):
        messages = ours()
    assert ids(messages) == [PREFIX + "E002"] * 2
    assert {"'NOPE'", "'ALSO_NOPE'"} == {m.msg.split()[2] for m in messages}


# One bad value per key (and a few edge cases the validators must catch).
BAD_VALUES: list[tuple[str, Any]] = [
    ("BACKUP_COOKIE_NAME", "session backup"),
    ("BACKUP_COOKIE_NAME", ""),
    ("BACKUP_COOKIE_NAME", 7),
    ("BACKUP_COOKIE_MAX_BYTES", 500),
    ("BACKUP_COOKIE_MAX_BYTES", 5000),
    ("BACKUP_COOKIE_MAX_BYTES", "4000"),
    ("BACKUP_COOKIE_MAX_CHUNKS", 0),
    ("BACKUP_COOKIE_MAX_CHUNKS", 9),
    ("BACKUP_COOKIE_MAX_CHUNKS", True),
    ("ESSENTIAL_KEYS", "cart"),
    ("ESSENTIAL_KEYS", ["cart", 3]),
    ("BREAKER_COOLDOWN", 0),
    ("BREAKER_COOLDOWN", -1.0),
    ("BREAKER_COOLDOWN", 3601),
    ("BREAKER_COOLDOWN", "5"),
    ("BREAKER_PROBE_TIMEOUT", 0),
    ("BREAKER_PROBE_TIMEOUT", 11),
    ("BREAKER_PROBE_TIMEOUT", True),
    ("FAIL_CLOSED", "yes"),
    ("FAIL_CLOSED", 1),
    ("CACHE_KEY_PREFIX", None),
    ("ACTIVITY_UPDATE_INTERVAL", -1),
    ("ACTIVITY_UPDATE_INTERVAL", 2.5),
    ("TRACK_IP", "no"),
    ("IP_RESOLVER", "tests.no_such_module.resolve"),
    ("IP_RESOLVER", "django.conf.settings"),  # importable, not callable
    ("ENDED_RETENTION_DAYS", 3651),
    ("CLEANUP_BATCH_SIZE", 0),
    ("CLEANUP_BATCH_SIZE", 100_001),
    ("PURGE_CHECK_INTERVAL", -1),
    ("PURGE_CHECK_INTERVAL", 86401),
    ("PURGE_CHECK_INTERVAL", False),
    ("MAX_SESSIONS_PER_USER", 0),
    ("MAX_SESSIONS_PER_USER", "3"),
    ("SESSION_LIMIT_POLICY", "evict_newest"),
    ("SESSION_LIMIT_POLICY", None),
    ("IDLE_TIMEOUT", 0),
    ("IDLE_TIMEOUT", 600.0),
    ("ABSOLUTE_TIMEOUT", -5),
    ("ABSOLUTE_TIMEOUT", True),
    ("PREVIOUS_ENGINE", ""),
    ("PREVIOUS_ENGINE", 3),
    ("EXPORT_TO", ["django.contrib.sessions.backends.db"]),
    ("BACKUP_LOADS_WINDOW", 0),
    ("BACKUP_LOADS_WINDOW", 1441),
    ("BACKUP_LOADS_WINDOW", 1.5),
    ("HEALTH_CHECK_TIMEOUT", 0),
    ("HEALTH_CHECK_TIMEOUT", 31),
    ("HEALTH_CHECK_TIMEOUT", "1"),
]


def test_bad_values_cover_every_key() -> None:
    assert {key for key, _ in BAD_VALUES} == set(DEFAULTS)


@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=[f"{k}={v!r}" for k, v in BAD_VALUES])
def test_e003_bad_value(key: str, value: Any) -> None:
    with override_settings(RESILIENT_SESSIONS={key: value}):
        messages = ours()
    # IDLE_TIMEOUT=0 also draws W005 (0 < 2 x the interval); only one error either way.
    errors = [m for m in messages if m.is_serious()]
    assert ids(errors) == [PREFIX + "E003"]
    assert ids(messages) == [PREFIX + "E003"] or (key, value) == ("IDLE_TIMEOUT", 0)
    error = errors[0]
    assert isinstance(error, Error)
    assert f"[{key!r}]" in error.msg
    assert error.hint and error.hint.startswith("It must be")


GOOD_VALUES: dict[str, Any] = {
    "BACKUP_COOKIE_NAME": "sb-backup",
    "BACKUP_COOKIE_MAX_BYTES": 4096,
    "BACKUP_COOKIE_MAX_CHUNKS": 8,
    "ESSENTIAL_KEYS": ("cart", "locale"),
    "BREAKER_COOLDOWN": 3600,
    "BREAKER_PROBE_TIMEOUT": 0.2,
    "FAIL_CLOSED": False,
    "CACHE_KEY_PREFIX": "",
    "ACTIVITY_UPDATE_INTERVAL": 0,
    "TRACK_IP": False,
    "IP_RESOLVER": "django.utils.http.http_date",
    "ENDED_RETENTION_DAYS": 0,
    "CLEANUP_BATCH_SIZE": 1,
    "PURGE_CHECK_INTERVAL": 0.5,
    "MAX_SESSIONS_PER_USER": 10_000,
    "SESSION_LIMIT_POLICY": "refuse",
    "IDLE_TIMEOUT": 3600,
    "ABSOLUTE_TIMEOUT": 10**8,
    "PREVIOUS_ENGINE": "django.contrib.sessions.backends.cached_db",
    "EXPORT_TO": None,  # (not with PREVIOUS_ENGINE: E015; see test_other_engines)
    "BACKUP_LOADS_WINDOW": 1440,
    "HEALTH_CHECK_TIMEOUT": 0.25,
}


def test_good_values_of_every_key_pass() -> None:
    assert set(GOOD_VALUES) == set(DEFAULTS)
    with override_settings(RESILIENT_SESSIONS=GOOD_VALUES):
        assert ours() == []


def test_e003_one_error_per_bad_key() -> None:
    with override_settings(RESILIENT_SESSIONS={"TRACK_IP": "no", "FAIL_CLOSED": None}):
        messages = ours()
    assert ids(messages) == [PREFIX + "E003"] * 2


@pytest.mark.parametrize("policy", ["evict_oldest", "refuse"])
def test_session_limit_options_pass(policy: str) -> None:
    options = {"MAX_SESSIONS_PER_USER": 1, "SESSION_LIMIT_POLICY": policy, "IDLE_TIMEOUT": None}
    with override_settings(RESILIENT_SESSIONS=options):
        assert ours() == []


# -- W005: idle timeout against the activity interval -------------------------------------


@pytest.mark.parametrize(
    ("idle", "interval"),
    [(599, None), (100, 60), (1, 1)],
    ids=["default-interval", "custom-interval", "tiny"],
)
def test_w005_idle_timeout_under_twice_the_activity_interval(
    idle: int, interval: int | None
) -> None:
    options: dict[str, Any] = {"IDLE_TIMEOUT": idle}
    if interval is not None:
        options["ACTIVITY_UPDATE_INTERVAL"] = interval
    with override_settings(RESILIENT_SESSIONS=options):
        messages = ours()
    assert ids(messages) == [PREFIX + "W005"]
    assert isinstance(messages[0], Warning)
    assert f"({idle} s)" in messages[0].msg


@pytest.mark.parametrize(
    ("idle", "interval"),
    [(600, None), (120, 60), (1, 0), (None, 86400)],
    ids=["default-interval", "custom-interval", "no-interval", "no-idle-timeout"],
)
def test_no_w005_when_idle_timeout_is_long_enough(idle: int | None, interval: int | None) -> None:
    options: dict[str, Any] = {"IDLE_TIMEOUT": idle}
    if interval is not None:
        options["ACTIVITY_UPDATE_INTERVAL"] = interval
    with override_settings(RESILIENT_SESSIONS=options):
        assert ours() == []


# -- E004 / E005 / W002: engine and middleware wiring ------------------------------------


def test_e004_engine_without_our_middleware() -> None:
    replaced = [DJANGO_MIDDLEWARE if m == OUR_MIDDLEWARE else m for m in settings.MIDDLEWARE]
    with override_settings(MIDDLEWARE=replaced):
        messages = ours()
    assert ids(messages) == [PREFIX + "E004"]
    assert isinstance(messages[0], Error)
    assert OUR_MIDDLEWARE in (messages[0].hint or "")


def test_e004_engine_without_any_session_middleware() -> None:
    with override_settings(MIDDLEWARE=middleware_without(OUR_MIDDLEWARE)):
        assert ids(ours()) == [PREFIX + "E004"]


def test_e005_both_middlewares() -> None:
    both = [DJANGO_MIDDLEWARE, *settings.MIDDLEWARE]
    with override_settings(MIDDLEWARE=both):
        messages = ours()
    assert ids(messages) == [PREFIX + "E005"]
    assert isinstance(messages[0], Error)


def test_a_subclass_of_our_middleware_is_our_middleware() -> None:
    subclass = "tests.testapp.wiring.SiteSessionMiddleware"
    replaced = [subclass if m == OUR_MIDDLEWARE else m for m in settings.MIDDLEWARE]
    with override_settings(MIDDLEWARE=replaced):
        assert ours() == []


def test_e010_our_middleware_after_authentication() -> None:
    auth = "django.contrib.auth.middleware.AuthenticationMiddleware"
    moved = [m for m in settings.MIDDLEWARE if m != OUR_MIDDLEWARE]
    moved.insert(moved.index(auth) + 1, OUR_MIDDLEWARE)
    with override_settings(MIDDLEWARE=moved):
        messages = ours()
    assert ids(messages) == [PREFIX + "E010"]
    assert auth in messages[0].msg


@pytest.mark.parametrize(
    ("storage", "reported"),
    [
        (None, True),  # Django's default: the fallback storage, which uses the session
        ("django.contrib.messages.storage.session.SessionStorage", True),
        ("django.contrib.messages.storage.cookie.CookieStorage", False),
    ],
)
def test_e010_our_middleware_after_messages_only_if_they_are_in_the_session(
    storage: str | None, reported: bool
) -> None:
    messages_mw = "django.contrib.messages.middleware.MessageMiddleware"
    moved = [m for m in settings.MIDDLEWARE if m != OUR_MIDDLEWARE]
    moved.insert(moved.index(messages_mw) + 1, OUR_MIDDLEWARE)
    moved.remove("django.contrib.auth.middleware.AuthenticationMiddleware")
    with override_settings(MIDDLEWARE=moved, **({"MESSAGE_STORAGE": storage} if storage else {})):
        messages = ours()
    assert (PREFIX + "E010" in ids(messages)) is reported


def test_e011_ledger_routed_away_from_the_users() -> None:
    # (The routers only name an "other" database; the check opens no connection.)
    with override_settings(DATABASE_ROUTERS=["tests.testapp.wiring.LedgerElsewhereRouter"]):
        messages = ours()
    assert ids(messages) == [PREFIX + "E011"]
    assert "auth.User" in messages[0].msg
    with override_settings(DATABASE_ROUTERS=["tests.testapp.wiring.LedgerWithUsersRouter"]):
        assert ours() == []


def test_e011_ledger_read_away_from_the_users() -> None:
    with override_settings(DATABASE_ROUTERS=["tests.testapp.wiring.LedgerReadElsewhereRouter"]):
        messages = ours()
    assert ids(messages) == [PREFIX + "E011"]
    assert "db_for_read" in messages[0].msg and "'other'" in messages[0].msg
    # Reads from a replica the router relates to the primary: nothing to say.
    with override_settings(DATABASE_ROUTERS=["tests.testapp.wiring.ReplicaRouter"]):
        assert ours() == []


def test_w002_our_middleware_with_django_db_engine() -> None:
    with override_settings(SESSION_ENGINE=DB_ENGINE):
        messages = ours()
    assert ids(messages) == [PREFIX + "W002"]
    assert isinstance(messages[0], Warning)
    assert DB_ENGINE in messages[0].msg


def test_other_engine_and_django_middleware_are_not_our_business() -> None:
    replaced = [DJANGO_MIDDLEWARE if m == OUR_MIDDLEWARE else m for m in settings.MIDDLEWARE]
    with override_settings(SESSION_ENGINE=DB_ENGINE, MIDDLEWARE=replaced):
        assert ours() == []
        assert ours(deploy=True) == []


# -- E006 / E007 / E008 / W001: the session cache ----------------------------------------


def test_e006_alias_missing_from_caches() -> None:
    with override_settings(SESSION_CACHE_ALIAS="sessions"):
        messages = ours()
    assert ids(messages) == [PREFIX + "E006"]
    assert "'sessions'" in messages[0].msg


def test_e007_locmem_cache() -> None:
    locmem = "django.core.cache.backends.locmem.LocMemCache"
    caches = {"default": {"BACKEND": locmem}}
    with override_settings(CACHES=caches):
        messages = ours()
    assert ids(messages) == [PREFIX + "E007"]
    assert locmem in messages[0].msg


def test_e007_locmem_cache_on_a_separate_session_alias() -> None:
    caches = {
        **settings.CACHES,
        "sessions": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    }
    with override_settings(CACHES=caches, SESSION_CACHE_ALIAS="sessions"):
        messages = ours()
    assert ids(messages) == [PREFIX + "E007"]
    assert "'sessions'" in messages[0].msg


def test_e007_other_cache_backend() -> None:
    with override_settings(CACHES=default_cache(BACKEND=DUMMY_CACHE)):
        assert ids(ours()) == [PREFIX + "E007"]


def test_e007_backend_that_does_not_import() -> None:
    # Django's own cache checks instantiate every alias and would raise first, so the
    # package's check function is called directly here.
    with override_settings(CACHES=default_cache(BACKEND="no_such_package.cache.RedisCache")):
        messages = checks.check_wiring()
    assert ids(messages) == [PREFIX + "E007"]


def test_djangos_own_redis_cache_is_supported() -> None:
    builtin = "django.core.cache.backends.redis.RedisCache"
    options = {"socket_timeout": 0.25, "socket_connect_timeout": 0.25}
    with override_settings(CACHES=default_cache(BACKEND=builtin, OPTIONS=options)):
        assert ours() == []
    with override_settings(CACHES=default_cache(BACKEND=builtin, OPTIONS={})):
        messages = ours()
    assert ids(messages) == [PREFIX + "W001"]
    assert "socket_timeout" in messages[0].msg  # redis-py's keyword, as that backend takes


def test_e008_ignore_exceptions_in_options() -> None:
    options = {**settings.CACHES["default"]["OPTIONS"], "IGNORE_EXCEPTIONS": True}
    with override_settings(CACHES=default_cache(OPTIONS=options)):
        messages = ours()
    assert ids(messages) == [PREFIX + "E008"]
    assert isinstance(messages[0], Error)


def test_e008_ignore_exceptions_global_setting() -> None:
    with override_settings(DJANGO_REDIS_IGNORE_EXCEPTIONS=True):
        assert ids(ours()) == [PREFIX + "E008"]


def test_e008_alias_option_off_wins_over_global_setting() -> None:
    options = {**settings.CACHES["default"]["OPTIONS"], "IGNORE_EXCEPTIONS": False}
    with override_settings(
        DJANGO_REDIS_IGNORE_EXCEPTIONS=True, CACHES=default_cache(OPTIONS=options)
    ):
        assert ours() == []


def test_w001_no_socket_timeouts() -> None:
    with override_settings(CACHES=default_cache(OPTIONS={})):
        messages = ours()
    assert ids(messages) == [PREFIX + "W001"]
    assert isinstance(messages[0], Warning)
    assert "SOCKET_TIMEOUT" in messages[0].msg
    assert "SOCKET_CONNECT_TIMEOUT" in messages[0].msg


@pytest.mark.parametrize("missing", ["SOCKET_TIMEOUT", "SOCKET_CONNECT_TIMEOUT"])
def test_w001_one_socket_timeout_missing(missing: str) -> None:
    options = {k: v for k, v in settings.CACHES["default"]["OPTIONS"].items() if k != missing}
    with override_settings(CACHES=default_cache(OPTIONS=options)):
        messages = ours()
    assert ids(messages) == [PREFIX + "W001"]
    assert f"no {missing}:" in messages[0].msg


# -- E009: cookie name clashes ------------------------------------------------------------


@pytest.mark.parametrize("taken", ["sessionid", "csrftoken", "django_language"])
def test_e009_backup_cookie_named_like_a_django_cookie(taken: str) -> None:
    with override_settings(RESILIENT_SESSIONS={"BACKUP_COOKIE_NAME": taken}):
        messages = ours()
    assert ids(messages) == [PREFIX + "E009"]
    assert repr(taken) in messages[0].msg


def test_e009_session_cookie_renamed_onto_the_default_backup_name() -> None:
    with override_settings(SESSION_COOKIE_NAME="sessionbackup"):
        assert ids(ours()) == [PREFIX + "E009"]


def test_e009_csrf_cookie_renamed_onto_the_backup_name() -> None:
    options = {"BACKUP_COOKIE_NAME": "sb"}
    with override_settings(RESILIENT_SESSIONS=options, CSRF_COOKIE_NAME="sb"):
        assert ids(ours()) == [PREFIX + "E009"]


# -- W003 / W004: deployment checks -------------------------------------------------------


def test_w003_insecure_session_cookie_is_a_deploy_warning() -> None:
    with override_settings(SESSION_COOKIE_SECURE=False, SESSION_COOKIE_HTTPONLY=True):
        assert ours() == []
        messages = ours(deploy=True)
    assert ids(messages) == [PREFIX + "W003"]
    assert isinstance(messages[0], Warning)


def test_w004_script_readable_session_cookie_is_a_deploy_warning() -> None:
    with override_settings(SESSION_COOKIE_SECURE=True, SESSION_COOKIE_HTTPONLY=False):
        assert ours() == []
        messages = ours(deploy=True)
    assert ids(messages) == [PREFIX + "W004"]
    assert isinstance(messages[0], Warning)


def test_w003_and_w004_together() -> None:
    with override_settings(SESSION_COOKIE_SECURE=False, SESSION_COOKIE_HTTPONLY=False):
        assert ids(ours(deploy=True)) == [PREFIX + "W003", PREFIX + "W004"]


# -- manage.py check -----------------------------------------------------------------------


def test_manage_check_passes_with_suite_settings() -> None:
    out, err = StringIO(), StringIO()
    call_command("check", stdout=out, stderr=err)
    assert PREFIX not in out.getvalue() + err.getvalue()


def test_manage_check_fails_on_an_error() -> None:
    with (
        override_settings(MIDDLEWARE=middleware_without(OUR_MIDDLEWARE)),
        pytest.raises(SystemCheckError) as raised,
    ):
        call_command("check", stdout=StringIO(), stderr=StringIO())
    assert PREFIX + "E004" in str(raised.value)


def test_manage_check_reports_a_warning_without_failing() -> None:
    err = StringIO()
    with override_settings(CACHES=default_cache(OPTIONS={})):
        call_command("check", stdout=StringIO(), stderr=err)
    assert PREFIX + "W001" in err.getvalue()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"PREVIOUS_ENGINE": "django.contrib.sessions.backends.signed_cookies"}, set()),
        ({"EXPORT_TO": "django.contrib.sessions.backends.cache"}, set()),
        ({"PREVIOUS_ENGINE": "no.such.engine"}, {"E013"}),
        ({"PREVIOUS_ENGINE": "django.contrib.sessions"}, {"E013"}),  # no SessionStore
        ({"PREVIOUS_ENGINE": "django_resilient_sessions.backends.resilient"}, {"E013"}),
        ({"EXPORT_TO": "django_resilient_sessions.backends.resilient"}, {"E014"}),
        ({"EXPORT_TO": "django.contrib.sessions.backends.signed_cookies"}, {"E014"}),
        (
            {
                "PREVIOUS_ENGINE": "django.contrib.sessions.backends.db",
                "EXPORT_TO": "django.contrib.sessions.backends.db",
            },
            {"E015"},
        ),
    ],
)
def test_other_engines(options: dict[str, Any], expected: set[str]) -> None:
    with override_settings(RESILIENT_SESSIONS=options):
        assert {m.id.rsplit(".", 1)[1] for m in ours()} == expected


# -- metrics ---------------------------------------------------------------------------------


def test_e016_multiprocess_directory_missing_or_read_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    error = only(ours(), "E016")
    assert "not a writable directory" in error.msg
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(a_file))
    assert ids(ours()) == [PREFIX + "E016"]
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert ours() == []


def test_no_w006_when_prometheus_client_is_installed() -> None:
    # The suite's URLconf routes views.metrics and prometheus-client is installed; the
    # warning itself is shown without it in tests/test_health.py (a process of its own).
    assert ours() == []
