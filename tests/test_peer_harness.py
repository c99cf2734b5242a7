"""The peer suites' harness (tests/peer/): classification, expected failures, engine swap.

The suites themselves run with ``make test-peer``; this checks, quickly and without them,
the parts that decide whether that run passes.
"""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from django.core.signals import setting_changed
from django.test import override_settings

from tests.peer.results import (
    EXPECTED_FILE,
    Expected,
    Run,
    compare,
    essence,
    group_by_essence,
    load_expected,
    markdown,
    table,
)

SITE = Path(__file__).resolve().parent / "peer" / "site"


def _site_module(name: str) -> ModuleType:
    """Import ``tests/peer/site/<name>.py`` without putting that folder on sys.path."""
    spec = importlib.util.spec_from_file_location(f"_peer_{name}", SITE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(engine: str, tests: dict[str, str], **meta: Any) -> Run:
    base = {
        "suite": "django",
        "mode": "sqlite-tz",
        "engine": engine,
        "labels": ["auth_tests"],
        "django_version": "5.2",
        "suite_version": "5.2",
        "crash": None,
    }
    base.update(meta)
    entries = {
        test_id: {"outcome": outcome, "detail": f"Traceback\nValueError: {test_id}"}
        for test_id, outcome in tests.items()
    }
    return Run("django", base["mode"], engine, base, entries)


def test_committed_expected_failures_load() -> None:
    entries = load_expected(EXPECTED_FILE)
    for entry in entries:
        assert entry.reason and entry.test and entry.modes


def test_expected_file_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "expected.toml"
    path.write_text('[[expected]]\nsuite = "django"\ntest = "a.b"\nreason = "short"\n')
    with pytest.raises(ValueError, match="reason"):
        load_expected(path)
    path.write_text('[[expected]]\nsuite = "other"\ntest = "a.b"\nreason = "x" \n')
    with pytest.raises(ValueError, match="suite"):
        load_expected(path)
    path.write_text(
        '[[expected]]\nsuite = "django"\ntest = "a.*"\nmodes = ["pg-*"]\n'
        'reason = "reads django_session rows directly"\n'
    )
    (entry,) = load_expected(path)
    assert entry.matches("django", "pg-tz", "a.b")
    assert not entry.matches("django", "sqlite-tz", "a.b")
    assert not entry.matches("allauth", "pg-tz", "a.b")


def test_an_expected_failure_can_require_its_error(tmp_path: Path) -> None:
    path = tmp_path / "expected.toml"
    path.write_text(
        '[[expected]]\nsuite = "django"\ntest = "t.uuid"\nerror = "OverflowError"\n'
        'reason = "the test swaps AUTH_USER_MODEL at run time"\n'
    )
    expected = load_expected(path)
    ours = _run("ours", {"t.uuid": "error"})
    cache = _run("cache", {"t.uuid": "passed"})
    ours.tests["t.uuid"]["detail"] = "OverflowError: Python int too large"
    assert compare("django", "sqlite-tz", ours, cache, expected).unexpected == []
    ours.tests["t.uuid"]["detail"] = "ValueError: SQLite backend does not support ..."
    (finding,) = compare("django", "sqlite-tz", ours, cache, expected).unexpected
    assert finding.test == "t.uuid"


def test_classification() -> None:
    ours = _run(
        "ours",
        {
            "t.engine_bug": "error",
            "t.by_design": "failed",
            "t.both": "failed",
            "t.cache_only": "passed",
            "t.fine": "passed",
            "t.stale": "passed",
        },
    )
    cache = _run(
        "cache",
        {
            "t.engine_bug": "passed",
            "t.by_design": "passed",
            "t.both": "error",
            "t.cache_only": "failed",
            "t.fine": "passed",
            "t.stale": "passed",
            "t.missing": "passed",
        },
    )
    expected = [
        Expected("django", "t.by_design", "reads the django_session table directly"),
        Expected("django", "t.stale", "was failing once, passes now"),
    ]
    result = compare("django", "sqlite-tz", ours, cache, expected)
    kinds = {f.test: f.kind for f in result.findings}
    assert kinds == {
        "t.engine_bug": "engine-only",
        "t.by_design": "engine-only",
        "t.both": "both",
        "t.cache_only": "cache-only",
    }
    assert [f.test for f in result.unexpected] == ["t.engine_bug"]
    assert [e.test for e in result.stale] == ["t.stale"]
    assert result.not_run_with_ours == 1
    assert "t.engine_bug" in markdown([result])
    assert "sqlite-tz" in table([result])


def test_without_a_comparable_reference_our_failures_count() -> None:
    ours = _run("ours", {"t.a": "failed"})
    other_labels = _run("cache", {"t.a": "passed"}, labels=["sessions_tests"])
    for cache in (None, other_labels):
        result = compare("django", "sqlite-tz", ours, cache, [])
        assert [(f.test, f.kind) for f in result.unexpected] == [("t.a", "unreferenced")]


def test_crashed_runs_are_reported() -> None:
    ours = _run("ours", {"t.a": "passed"}, crash="exit status 2")
    result = compare("django", "sqlite-tz", ours, None, [])
    assert result.crashes == ["django sqlite-tz ours: exit status 2"]


def test_essence() -> None:
    unittest_style = "Traceback (most recent call last):\n  File x\nValueError: SQLite says no\n"
    pytest_style = textwrap.dedent(
        """
        >       raise self.exception_class(f"The connection '{alias}' doesn't exist.")
        E       django.core.cache.backends.base.InvalidCacheBackendError: The connection

        ../site-packages/django/utils/connection.py:61: InvalidCacheBackendError
        """
    )
    assert essence(unittest_style) == "ValueError: SQLite says no"
    assert essence(pytest_style).startswith("django.core.cache.backends.base.InvalidCache")
    assert essence("") == "(no detail)"


def test_grouping_puts_the_biggest_cause_first() -> None:
    ours = _run("ours", {"a": "error", "b": "error", "c": "failed"})
    ours.tests["c"]["detail"] = "AssertionError: 1 != 2"
    ours.tests["a"]["detail"] = ours.tests["b"]["detail"] = "ValueError: tz"
    cache = _run("cache", {"a": "passed", "b": "passed", "c": "passed"})
    groups = group_by_essence(compare("django", "sqlite-tz", ours, cache, []).findings)
    assert [(cause, len(members)) for cause, members in groups] == [
        ("ValueError: tz", 2),
        ("AssertionError: 1 != 2", 1),
    ]


def test_recorder_keeps_the_worst_outcome(tmp_path: Path) -> None:
    record = _site_module("drs_peer_record")
    recorder = record.Recorder()
    recorder.add("t", "passed")
    recorder.add("t", "error", "teardown broke")
    recorder.add("t", "skipped")
    target = recorder.write(tmp_path / "out.json")
    assert target is not None
    assert recorder.tests["t"] == {"outcome": "error", "detail": "teardown broke"}


def test_engine_swap(monkeypatch: pytest.MonkeyPatch) -> None:
    common = _site_module("drs_peer_common")
    django_mw = "django.contrib.sessions.middleware.SessionMiddleware"
    apps = ["django.contrib.auth", "django.contrib.sessions", "django.contrib.admin"]
    monkeypatch.setenv("DRS_PEER_ENGINE", "ours")
    assert common.middleware(["a", django_mw, "b"]) == ["a", common.OUR_MIDDLEWARE, "b"]
    assert common.installed_apps(apps) == [
        "django.contrib.auth",
        "django_resilient_sessions",
        "django.contrib.sessions",
        "django.contrib.admin",
    ]
    assert common.session_engine() == common.OUR_ENGINE
    monkeypatch.setenv("DRS_PEER_ENGINE", "cache")
    assert common.middleware(["a", django_mw]) == ["a", django_mw]
    assert common.installed_apps(apps) == apps
    assert common.session_engine() == "django.contrib.sessions.backends.cache"


def test_shared_redis_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    common = _site_module("drs_peer_common")
    monkeypatch.setenv("DRS_PEER_REDIS_URL", "redis://127.0.0.1:6379/0")
    with pytest.raises(RuntimeError, match="private"):
        common.session_cache()


def test_postgres_database_names_are_unique_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    common = _site_module("drs_peer_common")
    monkeypatch.setenv("DRS_PEER_DB", "postgres")
    monkeypatch.setenv("DRS_PEER_DB_PREFIX", "test_drs_0123abcd_od_pgtz")
    databases = common.databases({}, ("default", "other"))
    assert databases["default"]["TEST"]["NAME"] == "test_drs_0123abcd_od_pgtz_default"
    assert databases["other"]["TEST"]["NAME"] == "test_drs_0123abcd_od_pgtz_other"


def test_sessions_alias_survives_a_caches_override(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.conf import settings

    common = _site_module("drs_peer_common")
    monkeypatch.setenv("DRS_PEER_REDIS_URL", "redis://127.0.0.1:1/0")
    common.keep_sessions_alias()
    try:
        locmem = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
        with override_settings(CACHES=locmem):
            assert settings.CACHES["sessions"]["LOCATION"] == "redis://127.0.0.1:1/0"
    finally:
        setting_changed.disconnect(dispatch_uid="drs_peer_keep_sessions_alias")
    assert "sessions" not in settings.CACHES


def test_runtests_main_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(SITE))  # it imports drs_peer_common
    runtests = _site_module("drs_peer_runtests")
    script = tmp_path / "runtests.py"
    script.write_text("X = 1\nif __name__ == '__main__':\n    X = 2\n    Y = X + 1\n")
    namespace: dict[str, Any] = {"X": 1}
    exec(compile(runtests.main_block(script), str(script), "exec"), namespace)
    assert namespace["Y"] == 3
