"""The dashboard's main screens under its real Content-Security-Policy, in headless
Chromium (selenium, ``python -m api``): each screen loads and works (htmx swaps, the live
stream, the funnel and the timeline chart, the CSV columns, the canned reply, the thread's
read POST) with nothing refused, as read from the browser's own console (chromedriver's
goog:loggingPrefs), not from a listener the page could leave out. A control shows the
console does report a refusal: an inline script injected into a page is refused."""

from __future__ import annotations

import psycopg
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from tests import factories
from tests.dashboard_fixtures import (
    add_user,
    click,
    live,
    log_in,
    policy_refusals,
    shot,
    text_of,
    wait,
)
from tests.test_bots import Inbox

SCREENS = ("/dashboard/campaigns", "/dashboard/campaigns/new", "/dashboard/contacts", "/dashboard/templates",
           "/dashboard/bots", "/dashboard/numbers", "/dashboard/notifications", "/dashboard/keys",
           "/dashboard/users", "/dashboard/inbox", "/dashboard/inbox/canned")


def _loaded(driver) -> bool:
    return driver.execute_script("return document.readyState === 'complete' && !!window.htmx")


def test_the_main_screens_work_with_no_policy_refusal(db: psycopg.Connection, server: str, browser,
                                                      tmp_path) -> None:
    acc = factories.account(db)
    add_user(db, acc.tenant_id, "boss@example.com", "admin")
    cid = factories.running_campaign(db, acc, 6)
    factories.catch_up(db)
    claimed = factories.claim_all(db)
    factories.report(db, [factories.ok(claimed[0]), factories.ok(claimed[1]), factories.err(claimed[2], 131026)])

    browser.get(f"{server}/dashboard/login")
    wait(browser, _loaded)
    assert policy_refusals(browser) == []
    log_in(browser, server, "boss@example.com")
    for path in SCREENS:
        browser.get(f"{server}{path}")
        wait(browser, _loaded)
        assert browser.find_elements(By.ID, "who"), path
        assert policy_refusals(browser) == [], path

    # The campaign: the funnel's bars and the timeline are drawn (SVG, no style=""); the
    # live stream moves the counters through htmx under the policy.
    browser.get(f"{server}/dashboard/campaigns/{cid}")
    wait(browser, ec.presence_of_element_located((By.CSS_SELECTOR, "svg#timeline rect.sent")))
    widths = browser.execute_script(
        "return ['total', 'sent'].map(s => document.querySelector(`[data-step='${s}'] .bar rect`)"
        ".getBoundingClientRect().width)")
    assert widths[1] > 0 and abs(widths[0] / widths[1] - 3) < 0.1      # 6 in all, 2 sent: a third of the bar
    live(browser)
    factories.report(db, [factories.ok(claimed[3])])
    wait(browser, lambda d: text_of(d, '[data-step="sent"] .value') == "3")
    shot(browser, "csp-campaign")

    # The builder: a CSV's header names become the columns a parameter may take (dashboard.js).
    csv = tmp_path / "list.csv"
    csv.write_text("phone,name,until\n+351910000001,Rita,Friday\n", encoding="utf-8")
    browser.get(f"{server}/dashboard/campaigns/new")
    wait(browser, ec.presence_of_element_located((By.ID, "csv"))).send_keys(str(csv))
    wait(browser, lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('#columns option')).some(o => o.value === 'until')"))
    assert browser.find_element(By.ID, "audience-csv").is_selected()
    assert policy_refusals(browser) == []


def test_the_inbox_works_with_no_policy_refusal_and_reading_is_the_pages_post(db: psycopg.Connection, server: str,
                                                                              browser) -> None:
    inbox = Inbox.build(db)
    add_user(db, inbox.tenant_id, "ana@example.com", "agent")
    db.execute("SELECT api.create_canned_reply(%s, NULL, 'Shipping', 'It ships today, {{name}}!')",
               (inbox.tenant_id,))
    who = inbox.sender()
    inbox.say("where is my order?", who)
    contact = inbox.contact(who)
    unread = "SELECT unread FROM core.conversations WHERE contact_id = %s"

    log_in(browser, server, "ana@example.com")
    browser.get(f"{server}/dashboard/inbox")
    click(browser, f'li[data-contact="{contact}"] a')
    wait(browser, ec.presence_of_element_located((By.ID, "reply-text")))
    # htmx posted /read as the thread loaded: the receipt went to Meta's queue.
    wait(browser, lambda d: db.execute(unread, (contact,)).fetchone()[0] == 0)
    assert [m["b"].get("status") for m in inbox.queued()] == ["read"]
    browser.find_element(By.CSS_SELECTOR, "#canned option:nth-child(2)").click()
    wait(browser, lambda d: d.find_element(By.ID, "reply-text").get_attribute("value") == "It ships today, {{name}}!")
    live(browser)
    inbox.say("and where is it now?", who)             # the open thread refreshes (data-live-inbox)
    wait(browser, lambda d: "and where is it now?" in text_of(d, "#messages"))
    wait(browser, lambda d: db.execute(unread, (contact,)).fetchone()[0] == 0)   # and is read again
    assert policy_refusals(browser) == []
    shot(browser, "csp-thread")

    # The control: the policy is enforced and the console reports it.
    browser.execute_script("const s = document.createElement('script'); s.textContent = 'window.pwned = 1';"
                           "document.body.appendChild(s);")
    assert browser.execute_script("return window.pwned") is None
    refused = wait(browser, lambda d: policy_refusals(d))
    assert any("inline script" in message for message in refused)
    browser.__dict__["_pgwa_console"] = []       # expected here: the fixture's own check starts clean
