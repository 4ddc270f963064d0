"""The campaign builder in a real browser (headless Chromium, selenium, ``python -m api``):
a marketer builds a campaign from a CSV with the simulator's spring_sale template (an
image header, named body parameters, a URL button), previews a message, starts it and
watches it complete on the detail page while the worker sends to the simulator and its
status webhooks are processed; a viewer is refused the builder by SQL. Screenshots go to
test-artifacts/ (campaign-builder.png, campaign-detail.png, campaign-detail-phone.png).
Waits are on the page's state, never on a clock."""

from __future__ import annotations

import threading

import psycopg
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select

from pgwa.contacts import csv_text
from tests import factories
from tests.dashboard_fixtures import add_user, click, live, log_in, shot, text_of, wait
from tests.test_template_campaigns import phones, rows_for, run, setup_number

MAPPING = {"header": ("column", "photo"), "body.first_name": ("column", "name"), "body.discount": ("value", "20%"),
           "body.end_date": ("column", "until"), "buttons.0": ("column", "path")}
DONE = "SELECT status = 'completed' AND delivered = total FROM core.campaigns WHERE campaign_id = %s"


class Worker(threading.Thread):
    """The sender against the simulator, feeding its webhooks back, until ``DONE``."""

    def __init__(self, db_url: str, sim_url: str, campaign_id: int, hooks) -> None:
        super().__init__(name="campaign-worker", daemon=True)
        self.args_ = (db_url, sim_url, DONE, (campaign_id,), 90, hooks)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            run(*self.args_)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def test_a_marketer_builds_previews_starts_and_watches_a_campaign_complete(
        db: psycopg.Connection, db_url: str, server: str, browser, quiet_world, sim_receiver, tmp_path) -> None:
    sim = quiet_world
    tenant, _ = setup_number(db, sim)
    add_user(db, tenant, "mark@example.com", "marketer")
    rows = rows_for(phones(3, 700))
    path = tmp_path / "spring.csv"
    path.write_text(csv_text(rows).getvalue(), encoding="utf-8")

    log_in(browser, server, "mark@example.com")
    browser.get(f"{server}/dashboard/campaigns")
    click(browser, "#new-campaign")
    wait(browser, ec.presence_of_element_located((By.ID, "builder")))
    browser.find_element(By.ID, "name").send_keys("Spring sale")
    Select(browser.find_element(By.ID, "template_id")).select_by_visible_text("spring_sale (en_US) · marketing")
    # htmx swaps in one row per parameter of the template.
    wait(browser, ec.presence_of_element_located((By.NAME, "val:body.end_date")))
    browser.find_element(By.ID, "csv").send_keys(str(path))
    wait(browser, lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('#columns option')).some(o => o.value === 'until')"))
    for slot, (kind, value) in MAPPING.items():
        Select(browser.find_element(By.NAME, f"src:{slot}")).select_by_value(kind)
        browser.find_element(By.NAME, f"val:{slot}").send_keys(value)
    shot(browser, "campaign-builder")
    browser.find_element(By.ID, "create").click()

    # The draft's review: one message as its first recipient will get it.
    body = wait(browser, ec.presence_of_element_located((By.ID, "preview-body")))
    assert body.text == "Hi Name0, 20% off everything until May 1."
    assert "https://cdn.example.com/p/0.jpg" in text_of(browser, "#preview-header")
    assert "u0" in text_of(browser, "#preview-buttons")
    assert text_of(browser, "#campaign-status") == "draft"
    cid = int(browser.current_url.rstrip("/").rsplit("/", 1)[1])
    assert factories.campaign(db, cid)["total"] == 3

    click(browser, "#start")
    wait(browser, ec.text_to_be_present_in_element((By.ID, "campaign-status"), "running"))
    live(browser)
    worker = Worker(db_url, sim.url, cid, sim_receiver)
    worker.start()
    try:
        def completed(d) -> bool:
            assert worker.error is None, worker.error
            return text_of(d, "#campaign-status") == "completed"
        wait(browser, completed, timeout=90)
        wait(browser, lambda d: text_of(d, '[data-step="delivered"] .value') == "3", timeout=30)
    finally:
        worker.join(timeout=120)
    assert worker.error is None, worker.error
    assert text_of(browser, '[data-step="sent"] .value') == "3"
    assert browser.find_elements(By.CSS_SELECTOR, "#timeline rect.sent")
    assert "No failures." in text_of(browser, "#failures")
    shot(browser, "campaign-detail")
    browser.set_window_size(390, 844)      # a phone: the chart scales to the width
    width = browser.execute_script("return document.getElementById('timeline').getBoundingClientRect().width")
    assert 0 < width <= 390
    shot(browser, "campaign-detail-phone")


def test_a_viewer_is_refused_the_builder(db: psycopg.Connection, server: str, browser) -> None:
    acc = factories.account(db)
    add_user(db, acc.tenant_id, "vic@example.com", "viewer")
    log_in(browser, server, "vic@example.com")
    browser.get(f"{server}/dashboard/campaigns")
    assert not browser.find_elements(By.ID, "new-campaign")         # not offered...
    browser.get(f"{server}/dashboard/campaigns/new")                 # ...and refused by SQL when asked
    error = wait(browser, ec.presence_of_element_located((By.ID, "error")))
    assert error.get_attribute("data-status") == "403"
    assert "viewer role lacks the campaigns.manage permission" in error.text
