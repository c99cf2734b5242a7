"""The release artefacts: what the sdist and the wheel hold, and the metadata PyPI shows.

The sdist is deliberate (``MANIFEST.in``): the package and the documents a user or a
packager reads, no tests (the suite runs from a clone). The wheel is the package with its
templates, migrations, catalogs and ``py.typed``. The metadata says what is tested: the
classifiers name exactly the Django and Python versions of ``noxfile.py``'s matrix, the
runtime dependencies are ``pyproject.toml``'s, the test and tool groups are no extras.

Built with ``python -m build --no-isolation`` (setuptools and build from the ``test``
group: no network). ``make dist`` builds them again with isolation and runs
``twine check --strict``.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

from tests.test_docs_site import noxfile_matrix

if sys.version_info >= (3, 11):
    import tomllib
else:  # the test group brings tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "django_resilient_sessions"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: Besides the package: what the sdist carries, generated files included.
SDIST_DOCUMENTS = {
    "CHANGELOG.md",
    "CONTRIBUTING.md",
    "LICENSE",
    "MANIFEST.in",
    "PKG-INFO",
    "README.md",
    "SECURITY.md",
    "pyproject.toml",
    "setup.cfg",
}
LANGUAGES = ("de", "en", "fr", "zh_Hans")


def package_files() -> set[str]:
    """Every file of the package in the working tree (bytecode left out)."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / PACKAGE).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def sdist_members(dist: Path) -> set[str]:
    with tarfile.open(only(dist, "*.tar.gz")) as archive:
        names = [m.name for m in archive.getmembers() if m.isfile()]
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {f"{PACKAGE}-{PYPROJECT['project']['version']}"}
    return {name.split("/", 1)[1] for name in names}


def wheel_metadata(dist: Path) -> Message:
    with zipfile.ZipFile(only(dist, "*.whl")) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(wheel.read(name).decode())


def test_the_sdist_holds_the_package_and_its_documents_and_no_tests(dist: Path) -> None:
    members = sdist_members(dist)
    egg_info = {m for m in members if m.startswith(f"{PACKAGE}.egg-info/")}
    assert members - egg_info == package_files() | SDIST_DOCUMENTS
    for folder in ("tests", "docs", "chaos", "benchmarks", "example_project", ".ci"):
        assert not any(m.startswith(f"{folder}/") for m in members), folder


def test_the_wheel_holds_the_package_with_its_data(dist: Path) -> None:
    with zipfile.ZipFile(only(dist, "*.whl")) as wheel:
        names = set(wheel.namelist())
    assert {n for n in names if ".dist-info/" not in n} == package_files()
    for language in LANGUAGES:
        assert f"{PACKAGE}/locale/{language}/LC_MESSAGES/django.mo" in names, language
    assert f"{PACKAGE}/py.typed" in names
    assert any(n.startswith(f"{PACKAGE}/templates/{PACKAGE}/") for n in names)
    assert any(n.startswith(f"{PACKAGE}/migrations/0001_") for n in names)


def test_the_classifiers_name_exactly_the_tested_versions(dist: Path) -> None:
    classifiers = wheel_metadata(dist).get_all("Classifier") or []
    matrix = noxfile_matrix()
    djangos = {c.rsplit(" ", 1)[1] for c in classifiers if c.startswith("Framework :: Django ::")}
    assert djangos == set(matrix)
    pythons = {
        c.rsplit(" ", 1)[1]
        for c in classifiers
        if c.startswith("Programming Language :: Python :: 3.")
    }
    assert pythons == {python for versions in matrix.values() for python in versions}
    assert wheel_metadata(dist)["Requires-Python"] == f">={min(pythons, key=_version)}"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_every_classifier_is_one_pypi_accepts() -> None:
    from trove_classifiers import classifiers as known

    assert set(PYPROJECT["project"]["classifiers"]) <= known


def test_the_metadata_has_the_runtime_dependencies_and_no_tool_extras(dist: Path) -> None:
    metadata = wheel_metadata(dist)
    requires = metadata.get_all("Requires-Dist") or []
    runtime = [r for r in requires if "extra ==" not in r]
    assert runtime == PYPROJECT["project"]["dependencies"]
    extras = set(metadata.get_all("Provides-Extra") or [])
    assert extras == set(PYPROJECT["project"].get("optional-dependencies", {}))
    assert not extras & {"test", "dev", "lint", "bench", "docs", "matrix", "dist"}
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert set(urls) == {"Homepage", "Documentation", "Source", "Changelog", "Issues"}
    assert all(url.startswith("https://") for url in urls.values())
    assert metadata["Description-Content-Type"] == "text/markdown"
