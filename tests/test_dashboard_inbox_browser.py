"""The inbox in a real browser (headless Chromium, tests/dashboard_fixtures.py): an agent
opens a conversation from the list, picks a canned reply, replies, adds a note, and sees
a new message that the simulator's user writes arrive in the open thread and the list
through the event stream; at phone width the thread and the list stack. Screenshots
test-artifacts/inbox.png and thread.png (and thread-narrow.png)."""

from __future__ import annotations

import psycopg
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from tests.dashboard_fixtures import add_user, click, live, log_in, shot, text_of, wait
from tests.test_bots import Inbox, sim_inbound

pytest_plugins = ["tests.sim_fixtures"]


def test_an_agent_answers_notes_and_sees_a_new_message_arrive(db: psycopg.Connection, server: str, browser,
                                                             sim, sim_receiver) -> None:
    inbox = Inbox.build(db)
    add_user(db, inbox.tenant_id, "ana@example.com", "agent")
    db.execute("SELECT api.create_canned_reply(%s, NULL, 'Shipping', 'It ships today, {{name}}!')",
               (inbox.tenant_id,))
    who, other = inbox.sender(), inbox.sender()
    inbox.say("where is my order?", who)
    inbox.say("hello there", other, name="Bea Costa")
    contact = inbox.contact(who)

    log_in(browser, server, "ana@example.com")
    browser.get(f"{server}/dashboard/inbox")
    item = f'li[data-contact="{contact}"]'
    wait(browser, ec.presence_of_element_located((By.CSS_SELECTOR, f"{item} .badge.unread")))
    assert "where is my order?" in text_of(browser, item) and "open until" in text_of(browser, item)
    shot(browser, "inbox")

    click(browser, f"{item} a")
    wait(browser, ec.presence_of_element_located((By.ID, "reply-text")))
    assert "Window open until" in text_of(browser, "#window")
    # A canned reply fills the box; the agent sends it.
    browser.find_element(By.CSS_SELECTOR, "#canned option:nth-child(2)").click()
    wait(browser, lambda d: d.find_element(By.ID, "reply-text").get_attribute("value") == "It ships today, {{name}}!")
    click(browser, "#send")
    wait(browser, lambda d: "It ships today, Ana Lima!" in text_of(d, "#messages"))
    assert inbox.replies_to(who) == ["It ships today, Ana Lima!"]

    click(browser, ".note-form summary")
    wait(browser, ec.visibility_of_element_located((By.ID, "note-text"))).send_keys("Promised delivery by Friday")
    click(browser, "#add-note")
    wait(browser, lambda d: "Promised delivery by Friday" in text_of(d, "#messages .msg.note"))

    # The simulator's user writes: the open thread and the list show it, no reload.
    live(browser)
    sim_inbound(inbox, sim, sim_receiver, who, "thanks, see you Friday")
    wait(browser, lambda d: "thanks, see you Friday" in text_of(d, "#messages"))
    wait(browser, lambda d: "thanks, see you Friday" in text_of(d, item))
    assert "Promised delivery by Friday" in text_of(browser, "#messages")     # the note is still there
    assert all("Friday" not in str(m) or "see you" in str(m) for m in inbox.queued())   # the note never left
    shot(browser, "thread")

    # A phone: the thread, then the list below it, one column.
    browser.set_window_size(390, 844)
    wait(browser, lambda d: d.execute_script(
        "const t = document.querySelector('.pane-thread').getBoundingClientRect(),"
        "      l = document.querySelector('.pane-list').getBoundingClientRect();"
        "return l.top >= t.bottom && l.width > 300 && t.width > 300;"))
    shot(browser, "thread-narrow")


def test_an_event_during_a_list_refresh_is_fetched_after_it(db: psycopg.Connection, db_url: str, server: str,
                                                            browser) -> None:
    """A message that arrives while the list's refresh is still on its way is fetched by a
    second refresh: the list's live box stays in the page, so htmx's queued request is not
    dropped with a swapped-out element (what once left a list a message behind)."""
    inbox = Inbox.build(db)
    add_user(db, inbox.tenant_id, "ana@example.com", "agent")
    who = inbox.sender()
    inbox.say("first message", who)
    item = f'li[data-contact="{inbox.contact(who)}"]'
    log_in(browser, server, "ana@example.com")
    browser.get(f"{server}/dashboard/inbox")
    wait(browser, ec.presence_of_element_located((By.CSS_SELECTOR, item)))
    live(browser)
    browser.execute_script("""
        window.pgwaAsked = 0; window.pgwaListed = 0;
        document.body.addEventListener("pgwa:inbox", function () { window.pgwaAsked++; });
        document.body.addEventListener("htmx:afterRequest", function (e) {
          var path = (e.detail.pathInfo || {}).requestPath || "";
          if (path.indexOf("/dashboard/inbox?") === 0 && path.indexOf("fragment=1") > 0) window.pgwaListed++;
        });""")

    # The list's refresh waits on a lock of a table it reads: an event arrives meanwhile.
    with psycopg.connect(db_url) as locker:
        locker.execute("LOCK TABLE core.conversation_reads IN ACCESS EXCLUSIVE MODE")
        db.execute("SELECT pg_notify('pgwa_dashboard', %s)",
                   (f"inbox {inbox.tenant_id}:{inbox.number_id}.{inbox.contact(who)}",))
        wait(browser, lambda d: db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
            ("%inbox_conversations%",)).fetchone()[0] >= 1)
        inbox.say("second message", who)
        wait(browser, lambda d: d.execute_script("return window.pgwaAsked") >= 2)
        assert lists_fetched(browser) == 0
        locker.rollback()
    wait(browser, lambda d: lists_fetched(d) >= 2)
    wait(browser, lambda d: "second message" in text_of(d, item))


def lists_fetched(driver) -> int:
    return driver.execute_script("return window.pgwaListed")
