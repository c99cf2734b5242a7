"""The supported matrix: one nox session per Django x Python pair, plus the lowest versions.

Run by ``make test-matrix`` (part of ``make test``); ``nox -l`` lists the sessions and
``nox -s django6.1-py3.13`` runs one. Each session installs the package with the ``test``
dependency group into a fresh virtualenv (made by uv when it is installed, which the
``matrix`` group brings), then runs on SQLite:

1. the package's test suite, less the heavy integration files that the main pass
   (``make test-sqlite``, ``make test-postgres``) runs once on the default Python;
2. Django's own ``sessions_tests`` of that very Django release against the engine
   (``tests/django_suite/``), fetched from Django's sdist by the nox process.

The ``lowest`` session pins every runtime dependency to the floor ``pyproject.toml``
declares (``Django>=5.2`` becomes ``Django==5.2``), on the oldest supported Python, and
runs the Redis Cluster tests as well (the cluster adapter sets redis-py's floor).

Interpreters: each ``python3.X`` is looked up with pyenv first (``pyenv prefix``), then on
``PATH``; a missing one is an error, never a silently skipped session.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")

#: Django release line -> the Pythons it is tested on (Django 6.x needs Python 3.12+).
MATRIX: dict[str, tuple[str, ...]] = {
    "5.2": ("3.10", "3.11", "3.12", "3.13"),
    "6.0": ("3.12", "3.13"),
    "6.1": ("3.12", "3.13"),
}
LOWEST_PYTHON = "3.10"

#: Tests that run once, in the main pass on the default Python: the browser, the
#: multi-process, chaos and benchmark runs, the Redis Cluster suites (six redis-servers
#: each), the every-step walk and the model-based test, the packaging build, and the
#: peer suites' harness (which runs in .venv-peer, on the default Python, and reads
#: TOML with Python 3.11's tomllib).
MAIN_PASS_ONLY = (
    "tests/e2e",
    "tests/test_multiworker.py",
    "tests/test_chaos_short.py",
    "tests/test_bench_smoke.py",
    "tests/test_cluster.py",
    "tests/test_redis_cluster_fixture.py",
    "tests/test_every_step.py",
    "tests/test_model.py",
    "tests/test_packaging.py",
    "tests/test_peer_harness.py",
    # Multi-process runs (gunicorn, a chaos run, several interpreters): once, on the
    # main pass, where they take most of their time, not on every Django x Python pair.
    "tests/test_chaos_cluster_short.py",
    "tests/test_chaos_timeline.py",
    "tests/test_metrics_live.py",
    "tests/test_backup_loads.py",
    "tests/test_ops_attacks.py",
)

ARTIFACTS = ROOT / os.environ.get("ARTIFACTS", "test-artifacts") / "nox"

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_missing_interpreters = True
nox.options.reuse_venv = "yes"
nox.options.sessions = [
    *(f"django{django}-py{python}" for django, pythons in MATRIX.items() for python in pythons),
    "lowest",
]


# -- interpreters ---------------------------------------------------------------------------


def _pyenv_interpreter(version: str) -> Path | None:
    """``python3.X`` of the newest pyenv-installed CPython 3.X, if pyenv has one."""
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return None
    listed = subprocess.run(
        [pyenv, "versions", "--bare"], capture_output=True, text=True, check=False
    ).stdout.split()
    releases = [v for v in listed if re.fullmatch(re.escape(version) + r"\.\d+", v)]
    for release in sorted(releases, key=lambda v: int(v.rsplit(".", 1)[1]), reverse=True):
        prefix = subprocess.run(
            [pyenv, "prefix", release], capture_output=True, text=True, check=False
        ).stdout.strip()
        candidate = Path(prefix) / "bin" / f"python{version}"
        if prefix and candidate.is_file():
            return candidate
    return None


def _path_interpreter(version: str) -> Path | None:
    """``python3.X`` on PATH, provided it runs (a pyenv shim of an unselected one does not)."""
    found = shutil.which(f"python{version}")
    if found is None:
        return None
    works = subprocess.run([found, "-c", "pass"], capture_output=True, check=False)
    return Path(found) if works.returncode == 0 else None


def _expose_interpreters() -> None:
    """Put each supported ``python3.X`` on PATH, through a folder of links of our own.

    nox finds a session's interpreter by the name ``python3.X``; pyenv keeps its CPythons
    off PATH (its shims answer only for the selected versions). Linking the real binaries
    into one folder at the head of PATH changes nothing but those names.
    """
    folder = ROOT / ".nox" / "pythons"
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {python for pythons in MATRIX.values() for python in pythons} | {LOWEST_PYTHON}
    for version in sorted(wanted):
        link = folder / f"python{version}"
        if link.is_symlink() or link.exists():
            link.unlink()
        interpreter = _pyenv_interpreter(version) or _path_interpreter(version)
        if interpreter is not None:
            link.symlink_to(interpreter)
    os.environ["PATH"] = os.pathsep.join([str(folder), os.environ.get("PATH", "")])


_expose_interpreters()


# -- what a session installs and runs -------------------------------------------------------


def lowest_pins() -> list[str]:
    """``name==floor`` for every runtime dependency (each must declare a ``>=`` floor)."""
    pins = []
    for requirement in PYPROJECT["project"]["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9._-]+)\s*>=\s*([0-9][0-9.]*)", requirement.strip())
        if match is None:
            raise ValueError(f"no plain >= floor to pin in {requirement!r}")
        pins.append(f"{match[1]}=={match[2]}")
    return pins


def _django_version(session: nox.Session) -> str:
    code = "import django; print(django.get_version())"
    output = session.run("python", "-c", code, silent=True)
    assert isinstance(output, str)
    return output.strip().splitlines()[-1]


#: Run by ``lowest`` all the same: redis-py's floor (8.0) is set by the cluster adapter.
CLUSTER_TESTS = ("tests/test_cluster.py", "tests/test_redis_cluster_fixture.py")


def _run_suites(
    session: nox.Session, requirements: list[str], skip: tuple[str, ...] = MAIN_PASS_ONLY
) -> None:
    session.install("-e", ".", *nox.project.dependency_groups(PYPROJECT, "test"), *requirements)
    version = _django_version(session)
    # The nox process's interpreter has pip (a uv venv has not): it downloads Django's sdist.
    session.run(
        sys.executable, "-m", "tests.django_suite.fetch", "--django-version", version,
        external=True,
    )  # fmt: skip
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    env = {"DRS_TEST_DB": "sqlite"}
    ignores = [f"--ignore={path}" for path in skip]
    session.run(
        "pytest", "-p", "no:cacheprovider", *ignores,
        f"--junitxml={ARTIFACTS / f'{session.name}.xml'}", *session.posargs,
        env=env,
    )  # fmt: skip
    session.run(
        "pytest", "tests/django_suite", "-p", "no:cacheprovider",
        f"--junitxml={ARTIFACTS / f'{session.name}-django-suite.xml'}", *session.posargs,
        env={**env, "DJANGO_SETTINGS_MODULE": "tests.django_suite.settings",
             "DRS_DJANGO_SUITE_REQUIRED": "1"},
    )  # fmt: skip


def _matrix_session(django: str, python: str) -> Callable[[nox.Session], None]:
    def run(session: nox.Session) -> None:
        _run_suites(session, [f"Django=={django}.*"])

    run.__doc__ = f"Django {django} on Python {python}: the suite and Django's session tests."
    run.__name__ = f"django{django}_py{python}".replace(".", "")
    return nox.session(name=f"django{django}-py{python}", python=python)(run)


for _django, _pythons in MATRIX.items():
    for _python in _pythons:
        _matrix_session(_django, _python)


@nox.session(python=LOWEST_PYTHON)
def lowest(session: nox.Session) -> None:
    """The floors of every runtime dependency, on the oldest supported Python.

    The Redis Cluster tests run here too: redis-py's floor is the cluster adapter's.
    """
    skip = tuple(path for path in MAIN_PASS_ONLY if path not in CLUSTER_TESTS)
    _run_suites(session, lowest_pins(), skip)
