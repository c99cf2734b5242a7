"""Fetch Django's own session tests (``tests/sessions_tests``) for the installed Django.

Django's wheels do not contain its test suite, but the source distribution on PyPI does.
This downloads the sdist matching the installed Django version with ``pip download`` (kept
in ``.cache/sdists/`` and shared with ``tests/peer/fetch.py``) and extracts only
``tests/sessions_tests/`` to::

    .cache/django-tests/<django version>/sessions_tests/

Nothing is done when that directory already exists (use ``--force`` to fetch again).
Run it as ``python -m tests.django_suite.fetch`` (``make django-suite-fetch``).
The cache location can be changed with ``DRS_DJANGO_TESTS_CACHE``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tarfile
import tempfile
from importlib.metadata import version as distribution_version
from pathlib import Path, PurePosixPath

from tests.peer.fetch import sdist_archive

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "sessions_tests"


def cache_root() -> Path:
    configured = os.environ.get("DRS_DJANGO_TESTS_CACHE")
    return Path(configured) if configured else REPO_ROOT / ".cache" / "django-tests"


def installed_django_version() -> str:
    return distribution_version("django")


def suite_root(django_version: str | None = None) -> Path:
    """Directory to put on sys.path so that ``import sessions_tests`` works."""
    return cache_root() / (django_version or installed_django_version())


def is_fetched(django_version: str | None = None) -> bool:
    return (suite_root(django_version) / PACKAGE / "tests.py").is_file()


def _extract_sessions_tests(archive: Path, target: Path) -> int:
    """Extract ``<top>/tests/sessions_tests/**`` from ``archive`` into ``target``."""
    count = 0
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            # <django-x.y.z>/tests/sessions_tests/<file>
            if len(parts) < 4 or parts[1:3] != ("tests", PACKAGE) or not member.isfile():
                continue
            relative = Path(*parts[2:])
            if ".." in relative.parts:
                raise SystemExit(f"refusing suspicious archive member {member.name!r}")
            source = tar.extractfile(member)
            if source is None:
                continue
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            with source, open(destination, "wb") as out:
                shutil.copyfileobj(source, out)
            count += 1
    return count


def fetch(django_version: str | None = None, *, force: bool = False) -> Path:
    django_version = django_version or installed_django_version()
    root = suite_root(django_version)
    if is_fetched(django_version) and not force:
        print(f"Django {django_version} sessions_tests already present in {root}")
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    archive = sdist_archive("django", django_version)
    staging = Path(tempfile.mkdtemp(prefix=f".{django_version}-", dir=root.parent))
    try:
        if _extract_sessions_tests(archive, staging) == 0:
            raise SystemExit(f"{archive.name} contains no tests/{PACKAGE}/")
        if not (staging / PACKAGE / "tests.py").is_file():
            raise SystemExit(f"{archive.name} has no tests/{PACKAGE}/tests.py")
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"Extracted Django {django_version} tests/{PACKAGE} into {root}")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--django-version",
        help="Django version to fetch (default: the installed one)",
    )
    parser.add_argument("--force", action="store_true", help="download again")
    args = parser.parse_args(argv)
    fetch(args.django_version, force=args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
