"""Fixtures of the browser test: the demo site in a subprocess, and Debian's Chromium.

``demo_site`` runs the real launcher (see :mod:`tests.e2e.demo_site`); ``browser`` is
Chromium driven by Playwright (``DRS_CHROMIUM``, default ``/usr/bin/chromium``; Playwright's
own browser download is not used). Missing prerequisites (Chromium, Playwright,
redis-server) skip the test with the reason, or fail it when the ``CI`` environment variable
is set.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.e2e.demo_site import ROOT, DemoSite
from tests.redis_server import RedisServerError, find_redis_server

ARTIFACTS = ROOT / "test-artifacts" / "e2e"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def unavailable(reason: str) -> NoReturn:
    """Skip locally; fail under CI, where the browser test must run."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the browser test must run, but {reason}", pytrace=False)
    pytest.skip(f"browser test skipped: {reason}")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """``test-artifacts/e2e/``, emptied of the previous run's screenshots."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = os.environ.get("DRS_CHROMIUM") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        unavailable(
            f"there is no Chromium at {path}. Run `make chromium` (installs "
            "Debian's chromium as root) or set DRS_CHROMIUM to a Chromium binary."
        )
    return path


@pytest.fixture(scope="session")
def browser(chromium_path: str) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (make venv: the test group)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def demo_site(artifacts: Path, tmp_path: Path) -> Iterator[DemoSite]:
    try:
        find_redis_server()
    except RedisServerError as error:
        unavailable(str(error))
    site = DemoSite(tmp_path / "demo.sqlite3", tmp_path / "demo-server.log")
    try:
        site.wait_until_ready()
        yield site
    finally:
        site.stop()
        site.kill_leftover_redis()
        shutil.copyfile(site.log_path, artifacts / "demo-server.log")
