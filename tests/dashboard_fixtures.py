"""Shared fixtures and helpers of the dashboard's browser tests: Debian's headless Chromium
driven by selenium against ``python -m api`` on a free port. A pytest plugin loaded by
tests/conftest.py, so the ``browser`` and ``server`` fixtures are everywhere; test modules
import the helpers (log_in, wait, click, shot...). Selenium is imported only when a
browser test runs. Waits are on the page's state (WebDriverWait), never on a clock.

Every browser test also runs under the dashboard's real Content-Security-Policy: the
``browser`` fixture reads Chromium's console (chromedriver's goog:loggingPrefs) and fails
the test if the browser refused anything under the policy, or htmx was refused an eval."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgwa.config import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = ROOT / "test-artifacts"
PASSWORD = "a good long password"
WAIT_S = 30
# What Chromium's console says when the policy refuses something ("Refused to execute
# inline script because it violates the following Content Security Policy directive..."),
# and htmx's error event when a page asks it for code (a trigger filter, hx-on).
POLICY_REFUSALS = ("Content Security Policy", "Content-Security-Policy", "htmx:evalDisallowedError")


@pytest.fixture
def browser() -> Iterator:
    from selenium import webdriver

    if not Path(CHROMIUM).exists() or not Path(CHROMEDRIVER).exists():
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} is missing: install Debian's chromium and chromium-driver "
                    "(scripts/db.sh does, for make test)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with tempfile.TemporaryDirectory(prefix="pgwa-chromium-") as profile:
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={profile}", "--window-size=1280,900"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
        try:
            yield driver
            refused = policy_refusals(driver)
            assert not refused, f"the browser reported Content-Security-Policy refusals: {refused}"
        finally:
            driver.quit()


def console(driver) -> list[dict]:
    """Every console entry of the browser so far (chromedriver hands each out once: kept here)."""
    seen = driver.__dict__.setdefault("_pgwa_console", [])
    seen.extend(driver.get_log("browser"))
    return seen


def policy_refusals(driver) -> list[str]:
    """The console's messages about the Content-Security-Policy refusing something."""
    return [e["message"] for e in console(driver) if any(word in e["message"] for word in POLICY_REFUSALS)]


@pytest.fixture
def server(db_url: str) -> Iterator[str]:
    from tests.api_support import live_server

    with live_server(db_url) as url:
        yield url


def add_user(db: psycopg.Connection, tenant_id: int, email: str, role: str) -> None:
    from api.dashboard.passwords import hash_password

    db.execute("SELECT api.create_user(%s, %s, %s, %s)", (tenant_id, email, role, hash_password(PASSWORD)))


def wait(driver, condition, timeout: float = WAIT_S):
    """Wait for ``condition``, asking again when the live page swapped the element
    out under it: selenium's stale element, or Chrome's own form of the same thing
    ("Node with given id does not belong to the document"). Any other error stands."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def settled(d):
        try:
            return condition(d)
        except StaleElementReferenceException:
            return False
        except WebDriverException as e:
            if "does not belong to the document" in (e.msg or ""):
                return False
            raise

    return WebDriverWait(driver, timeout).until(settled)


def shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def log_in(driver, server: str, email: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver.get(f"{server}/dashboard/login")
    wait(driver, ec.presence_of_element_located((By.ID, "email"))).send_keys(email)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login").click()
    wait(driver, ec.presence_of_element_located((By.ID, "who")))


def text_of(driver, css: str) -> str:
    return driver.find_element("css selector", css).text


def click(driver, css: str) -> None:
    """Clicks an element that a live refresh may swap at any moment (found again if it was)."""
    def clicked(d) -> bool:
        d.find_element("css selector", css).click()
        return True
    wait(driver, clicked)


def live(driver) -> None:
    """Waits until the page's SSE stream is open (events after this reach the page)."""
    wait(driver, lambda d: d.execute_script("return document.body.dataset.liveState") == "open")
