"""The dashboard in a real browser: Debian's headless Chromium driven by selenium against
``python -m api`` on a free port. Login, a campaign's live counters and a pause, answering
a conversation, and an agent refused a marketer's action. Each test saves a screenshot
under test-artifacts/. Waits are on the page's state (WebDriverWait), never on a clock."""

from __future__ import annotations

import psycopg
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from pgwa.config import ROOT
from tests import factories
from tests.dashboard_fixtures import add_user, click, log_in, shot, text_of, wait
from tests.test_bots import Inbox


def test_a_marketer_logs_in_watches_counters_move_and_pauses(db: psycopg.Connection, server: str, browser) -> None:
    acc = factories.account(db)
    add_user(db, acc.tenant_id, "mark@example.com", "marketer")
    cid = factories.running_campaign(db, acc, 6)
    factories.catch_up(db)
    claimed = factories.claim_all(db)
    factories.report(db, [factories.ok(claimed[0]), factories.err(claimed[1], 131026)])

    browser.get(f"{server}/dashboard/login")
    shot(browser, "login")
    log_in(browser, server, "mark@example.com")
    row = f'tr[data-campaign="{cid}"] td.sent'
    wait(browser, lambda d: text_of(d, row) == "1")   # 6 queued, 1 sent, 1 failed
    shot(browser, "campaigns")

    click(browser, f'tr[data-campaign="{cid}"] a')
    wait(browser, ec.text_to_be_present_in_element((By.ID, "campaign-status"), "running"))
    wait(browser, lambda d: d.execute_script("return document.body.dataset.liveState") == "open")
    # Live: the worker's report moves the counters; the open page follows through SSE.
    factories.report(db, [factories.ok(claimed[2]), factories.ok(claimed[3])])
    wait(browser, lambda d: text_of(d, '[data-step="sent"] .value') == "3")
    assert "131026" in text_of(browser, "#failures")
    shot(browser, "campaign")

    click(browser, "#pause")
    wait(browser, ec.text_to_be_present_in_element((By.ID, "campaign-status"), "paused"))
    assert factories.campaign(db, cid)["status"] == "paused"
    assert browser.find_elements(By.ID, "resume")


def test_an_agent_answers_a_conversation(db: psycopg.Connection, server: str, browser) -> None:
    inbox = Inbox.build(db)
    add_user(db, inbox.tenant_id, "ana@example.com", "agent")
    who = inbox.sender()
    inbox.say("where is my order?", who)
    contact = inbox.contact(who)

    log_in(browser, server, "ana@example.com")
    browser.get(f"{server}/dashboard/inbox")
    item = wait(browser, ec.presence_of_element_located((By.CSS_SELECTOR, f'li[data-contact="{contact}"] a')))
    assert "where is my order?" in item.text
    wait(browser, lambda d: d.execute_script("return document.body.dataset.liveState") == "open")
    # A new inbound message reaches the open list without a reload.
    inbox.say("hello? anyone there?", who)
    wait(browser, lambda d: "anyone there" in text_of(d, f'li[data-contact="{contact}"]'))
    shot(browser, "inbox")

    click(browser, f'li[data-contact="{contact}"] a')
    box = wait(browser, ec.presence_of_element_located((By.ID, "reply-text")))
    box.send_keys("It ships today, {{name}}!")
    browser.find_element(By.ID, "send").click()
    wait(browser, lambda d: "It ships today, Ana Lima!" in text_of(d, "#thread"))
    assert inbox.replies_to(who) == ["It ships today, Ana Lima!"]
    wait(browser, lambda d: d.execute_script("return document.body.dataset.liveState") == "open")
    inbox.say("great, thanks!", who)      # the open thread shows it without a reload
    wait(browser, lambda d: "great, thanks!" in text_of(d, "#thread"))
    browser.set_window_size(390, 844)     # a phone
    shot(browser, "thread-phone")


def test_an_agent_is_refused_a_marketers_action(db: psycopg.Connection, server: str, browser) -> None:
    acc = factories.account(db)
    add_user(db, acc.tenant_id, "ana@example.com", "agent")
    cid = factories.running_campaign(db, acc, 2)

    log_in(browser, server, "ana@example.com")
    assert not browser.find_elements(By.LINK_TEXT, "Campaigns")     # not offered...
    browser.get(f"{server}/dashboard/campaigns/{cid}")              # ...and refused by SQL when asked
    error = wait(browser, ec.presence_of_element_located((By.ID, "error")))
    assert error.get_attribute("data-status") == "403"
    assert "agent role lacks the campaigns.read permission" in error.text
    shot(browser, "refused")
    # A hand-made POST with the page's own CSRF token is refused too.
    status = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const token = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token'];
        fetch(arguments[0], {method: 'POST', headers: {'X-CSRF-Token': token}}).then(r => done(r.status));
    """, f"/dashboard/campaigns/{cid}/pause")
    assert status == 403
    assert factories.campaign(db, cid)["status"] == "running"


def test_artifacts_folder_is_ignored_by_git() -> None:
    ignore = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert "/test-artifacts/" in ignore
