"""Download the peer suites' sources: sdists from PyPI, extracted under ``.cache/peer/``.

* Django's ``tests/`` tree, from the sdist of the *installed* Django version, into
  ``.cache/peer/django-<version>/tests/`` (it holds ``runtests.py``);
* django-allauth's whole sdist (its ``tests/`` and the ``allauth`` package the tests import)
  into ``.cache/peer/django-allauth-<version>/``.

Archives are downloaded once with ``pip download --no-binary :all: --no-deps`` and kept in
``.cache/sdists/`` (``tests/django_suite/fetch.py`` reuses them). An extracted tree is reused
when it is complete; ``--force`` extracts again. The cache root can be moved with
``DRS_PEER_CACHE`` (default ``<repo>/.cache``).

Run as ``python -m tests.peer.fetch`` (``make peer-fetch``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version as distribution_version
from pathlib import Path, PurePosixPath

REPO_ROOT = Path(__file__).resolve().parents[2]

#: The django-allauth release whose suite runs. The newest release (when this was written)
#: whose classifiers list Django 5.2; bump it deliberately and re-check the expected failures.
ALLAUTH_VERSION = "65.22.1"

_COMPLETE = ".drs-complete"


def cache_root() -> Path:
    configured = os.environ.get("DRS_PEER_CACHE")
    return Path(configured) if configured else REPO_ROOT / ".cache"


def installed_django_version() -> str:
    return distribution_version("django")


def sdist_archive(project: str, version: str) -> Path:
    """Path of ``project==version``'s sdist in ``.cache/sdists/``, downloaded if missing."""
    folder = cache_root() / "sdists"
    normalized = project.replace("-", "_").lower()
    for candidate in sorted(folder.glob("*.tar.gz")):
        if candidate.name.lower() == f"{normalized}-{version}.tar.gz".lower():
            return candidate
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="drs-sdist-", dir=folder) as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-binary",
            ":all:",
            # Only the sources are wanted: Django 6.x's sdist, fetched by a Python 3.11
            # (the nox process, for a Python 3.12 session), is not refused.
            "--ignore-requires-python",
            "--dest",
            tmp,
            f"{project}=={version}",
        ]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True)
        archives = sorted(Path(tmp).glob("*.tar.gz"))
        if len(archives) != 1:
            raise SystemExit(f"expected one {project} sdist from pip download, got {archives}")
        target = folder / archives[0].name
        archives[0].replace(target)
    return target


def extract(archive: Path, target: Path, subdir: str | None = None) -> int:
    """Extract the regular files of ``archive`` (under ``<top>/<subdir>/`` if given).

    Paths are taken relative to that folder. Links, devices and members that would land
    outside ``target`` are refused or skipped. Returns the number of files written.
    """
    prefix = PurePosixPath(subdir).parts if subdir else ()
    count = 0
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            if not member.isfile() or len(parts) < 2 + len(prefix):
                continue
            if parts[1 : 1 + len(prefix)] != prefix:
                continue
            relative = parts[1 + len(prefix) :]
            if ".." in relative or PurePosixPath(member.name).is_absolute():
                raise SystemExit(f"refusing suspicious archive member {member.name!r}")
            source = tar.extractfile(member)
            if source is None:
                continue
            destination = target.joinpath(*relative)
            destination.parent.mkdir(parents=True, exist_ok=True)
            with source, open(destination, "wb") as out:
                shutil.copyfileobj(source, out)
            count += 1
    return count


def _extract_tree(archive: Path, root: Path, subdir: str | None, must_have: str) -> Path:
    """Extract into a staging folder beside ``root``, check it, then move it in place."""
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        inner = staging / subdir if subdir else staging
        if extract(archive, inner, subdir) == 0 or not (inner / must_have).is_file():
            raise SystemExit(f"{archive.name} has no {subdir or '.'}/{must_have}")
        (staging / _COMPLETE).write_text(archive.name + "\n")
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


# -- Django -----------------------------------------------------------------------------------


def django_root(django_version: str | None = None) -> Path:
    return cache_root() / "peer" / f"django-{django_version or installed_django_version()}"


def django_tests_dir(django_version: str | None = None) -> Path:
    """Django's ``tests/`` folder (the one holding ``runtests.py``)."""
    return django_root(django_version) / "tests"


def django_is_fetched(django_version: str | None = None) -> bool:
    root = django_root(django_version)
    return (root / _COMPLETE).is_file() and (root / "tests" / "runtests.py").is_file()


def fetch_django(django_version: str | None = None, *, force: bool = False) -> Path:
    version = django_version or installed_django_version()
    if django_is_fetched(version) and not force:
        print(f"Django {version} tests already in {django_tests_dir(version)}")
        return django_tests_dir(version)
    archive = sdist_archive("django", version)
    _extract_tree(archive, django_root(version), "tests", "runtests.py")
    print(f"Extracted Django {version} tests/ into {django_tests_dir(version)}")
    return django_tests_dir(version)


# -- django-allauth ---------------------------------------------------------------------------


def allauth_root(allauth_version: str = ALLAUTH_VERSION) -> Path:
    """The extracted allauth sdist: ``allauth/``, ``tests/``, ``pytest.ini``, ``pyproject.toml``."""
    return cache_root() / "peer" / f"django-allauth-{allauth_version}"


def allauth_is_fetched(allauth_version: str = ALLAUTH_VERSION) -> bool:
    root = allauth_root(allauth_version)
    return (root / _COMPLETE).is_file() and (root / "tests" / "conftest.py").is_file()


def fetch_allauth(allauth_version: str = ALLAUTH_VERSION, *, force: bool = False) -> Path:
    root = allauth_root(allauth_version)
    if allauth_is_fetched(allauth_version) and not force:
        print(f"django-allauth {allauth_version} already in {root}")
        return root
    archive = sdist_archive("django-allauth", allauth_version)
    _extract_tree(archive, root, None, "tests/conftest.py")
    print(f"Extracted django-allauth {allauth_version} into {root}")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--suite", choices=("django", "allauth", "all"), default="all")
    parser.add_argument("--django-version", help="default: the installed one")
    parser.add_argument("--allauth-version", default=ALLAUTH_VERSION)
    parser.add_argument("--force", action="store_true", help="extract again")
    args = parser.parse_args(argv)
    if args.suite in ("django", "all"):
        fetch_django(args.django_version, force=args.force)
    if args.suite in ("allauth", "all"):
        fetch_allauth(args.allauth_version, force=args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
