"""The example site in a real browser (Chromium through Playwright), through a Redis outage.

One user, two devices: log in, save a preference, kill Redis (the site's "Stop Redis"
button), keep browsing and change the preference from the backup cookie, start Redis
again (empty) and get the latest data back into it, sign the other device out from the
sessions page, log out, and replay the pre-logout cookies (with Redis up, then down).
A screenshot of every step goes to ``test-artifacts/e2e/``.

Runs on the SQLite pass only (the site uses its own SQLite file, not the test database).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.demo_site import DemoSite

try:
    from playwright.sync_api import BrowserContext, Page, expect
except ImportError:  # pragma: no cover - the `browser` fixture reports it
    if os.environ.get("CI"):
        raise
    pytest.skip(
        "browser test skipped: playwright is not installed (make venv: the test group)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.skipif(
    os.environ.get("DRS_TEST_DB", "sqlite").strip().lower() == "postgres",
    reason="the browser test runs on the SQLite pass only (the demo has its own SQLite file)",
)

USERNAME, PASSWORD = "demo", "demo-password"
BREAKER_COOLDOWN = 2.0  # RESILIENT_SESSIONS["BREAKER_COOLDOWN"] in example_project/demo/settings.py
PHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)


class Steps:
    """Numbered screenshots: ``test-artifacts/e2e/NN-name.png``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0

    def shot(self, page: Page, name: str) -> None:
        self.count += 1
        page.screenshot(path=self.directory / f"{self.count:02d}-{name}.png", full_page=True)


def new_context(browser: Any, **options: Any) -> BrowserContext:
    context: BrowserContext = browser.new_context(
        viewport={"width": 1000, "height": 720}, **options
    )
    context.set_default_timeout(10_000)
    return context


def expect_source(page: Page, source: str) -> int:
    """The banner says where the session came from; returns the backup bytes it reports."""
    banner = page.locator("#session-source")
    expect(banner).to_have_attribute("data-source", source)
    return int(banner.get_attribute("data-backup-bytes") or "-1")


def expect_signed_in(page: Page) -> None:
    expect(page).to_have_url(re.compile(r"/(profile|preferences)$"))
    expect(page.get_by_role("button", name=f"Log out {USERNAME}")).to_be_visible()


def expect_anonymous(page: Page, site: DemoSite) -> None:
    """On the login page, with no trace of the user."""
    expect(page).to_have_url(f"{site.base_url}/login?next=/profile")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    expect(page.get_by_role("button", name=f"Log out {USERNAME}")).to_have_count(0)


def log_in(page: Page, site: DemoSite) -> None:
    page.goto(f"{site.base_url}/login")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.locator("#login-form button[type=submit]").click()
    expect(page).to_have_url(f"{site.base_url}/profile")
    expect(page.locator("#username")).to_have_text(USERNAME)


def redis_button(page: Page, label: str, done_message: str) -> None:
    """Press an outage button and wait for the page that confirms it."""
    page.locator("#outage-controls").get_by_role("button", name=label).click()
    expect(page.locator(".messages")).to_contain_text(done_message)


def save_preferences(page: Page, site: DemoSite, theme: str, note: str) -> None:
    page.goto(f"{site.base_url}/preferences")
    page.get_by_label(theme).check()
    page.fill("#id_note", note)
    page.locator("#preferences-form button[type=submit]").click()
    expect(page.locator(".messages")).to_contain_text("Preferences saved.")


def expect_preferences(page: Page, theme: str, note: str) -> None:
    expect(page.get_by_label(theme)).to_be_checked()
    expect(page.locator("#id_note")).to_have_value(note)
    expect(page.locator("body")).to_have_class(f"theme-{theme.lower()}")


def test_outage_recovery_and_revocation_in_a_browser(
    browser: Any, demo_site: DemoSite, artifacts: Path
) -> None:
    site = demo_site
    steps = Steps(artifacts)
    laptop = new_context(browser)
    page = laptop.new_page()

    # Log in.
    page.goto(f"{site.base_url}/")
    expect(page).to_have_url(f"{site.base_url}/login")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    expect_source(page, "none")
    expect(page.locator("#outage-controls")).to_have_attribute("data-state", "running")
    steps.shot(page, "login-page")
    log_in(page, site)
    assert expect_source(page, "redis") > 0
    steps.shot(page, "logged-in")

    # A preference, kept in the session.
    save_preferences(page, site, "Dark", "written while Redis was up")
    expect_preferences(page, "Dark", "written while Redis was up")
    expect_source(page, "redis")
    steps.shot(page, "preference-saved")

    # Kill Redis: the next requests are served from the backup cookie.
    redis_button(page, "Stop Redis", "Redis stopped (SIGKILL")
    assert not site.redis_answers()
    expect(page.locator("#outage-controls")).to_have_attribute("data-state", "stopped")
    expect_source(page, "backup")
    steps.shot(page, "redis-stopped")

    page.goto(f"{site.base_url}/profile")
    expect_signed_in(page)
    assert expect_source(page, "backup") > 0
    steps.shot(page, "outage-profile-still-logged-in")

    page.goto(f"{site.base_url}/preferences")
    expect_preferences(page, "Dark", "written while Redis was up")
    save_preferences(page, site, "Light", "changed during the outage")
    expect_preferences(page, "Light", "changed during the outage")
    expect_source(page, "backup")
    steps.shot(page, "outage-preference-changed")

    # Redis comes back empty; after the breaker's cool-down the backup goes back into it.
    redis_button(page, "Start Redis", "Redis started again, empty")
    assert site.redis_answers()
    steps.shot(page, "redis-started-empty")
    time.sleep(BREAKER_COOLDOWN + 0.3)
    page.reload()
    expect_signed_in(page)
    expect_preferences(page, "Light", "changed during the outage")
    expect_source(page, "redis")
    with site.redis() as client:
        assert client.dbsize() >= 1, "the session was not written back into Redis"
    steps.shot(page, "recovered-latest-preference")

    # A second device logs in as the same user.
    phone = new_context(browser, user_agent=PHONE_UA)
    phone_page = phone.new_page()
    log_in(phone_page, site)
    expect_source(phone_page, "redis")
    steps.shot(phone_page, "second-device-logged-in")

    # From the first device, sign the second one out.
    page.goto(f"{site.base_url}/account/sessions/")
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("tbody tr.current")).to_have_count(1)
    other = page.locator("tbody tr:not(.current)")
    expect(other).to_contain_text("iOS")
    steps.shot(page, "sessions-two-devices")
    other.get_by_role("button", name="Sign out").click()
    expect(page.locator(".messages")).to_contain_text("The session was signed out.")
    expect(rows).to_have_count(1)
    expect(page.locator("tbody tr.current")).to_have_count(1)
    steps.shot(page, "other-device-signed-out")

    phone_page.goto(f"{site.base_url}/profile")
    expect_anonymous(phone_page, site)
    steps.shot(phone_page, "second-device-anonymous")
    phone.close()

    # Log out, then replay the cookies the browser had before logging out.
    page.goto(f"{site.base_url}/profile")
    before_logout = laptop.cookies()
    names = {cookie["name"] for cookie in before_logout}
    assert {"sessionid", "sessionbackup"} <= names, names
    page.get_by_role("button", name=f"Log out {USERNAME}").click()
    expect(page).to_have_url(f"{site.base_url}/login")
    expect(page.locator(".messages")).to_contain_text("You are signed out.")
    steps.shot(page, "logged-out")

    replay = new_context(browser)
    replay.add_cookies(before_logout)
    replay_page = replay.new_page()
    replay_page.goto(f"{site.base_url}/profile")
    expect_anonymous(replay_page, site)
    steps.shot(replay_page, "replayed-cookies-anonymous")
    replay.close()

    # Even with Redis down, the ended login does not come back from its backup cookie.
    redis_button(page, "Stop Redis", "Redis stopped (SIGKILL")
    replay = new_context(browser)
    replay.add_cookies(before_logout)
    replay_page = replay.new_page()
    replay_page.goto(f"{site.base_url}/profile")
    expect_anonymous(replay_page, site)
    # The ledger says that session ended: its refused cookies were deleted with the
    # redirect, so the login page it lands on carries no session at all.
    expect_source(replay_page, "none")
    assert not {c["name"] for c in replay.cookies()} & {"sessionid", "sessionbackup"}
    steps.shot(replay_page, "replayed-cookies-redis-down-anonymous")
    replay.close()

    # Leave a button-started redis-server running: stopping the demo must stop it too.
    redis_button(page, "Start Redis", "Redis started again, empty")
    laptop.close()
    assert site.redis_answers()
    assert site.server_errors() == []
    assert site.stop() == 0, site.log()
    assert not site.redis_answers(), "the demo left its redis-server running"
    assert "Demo stopped." in site.log(), site.log()
