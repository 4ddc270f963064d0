"""The contacts, templates, bots, numbers, notifications and API keys screens in a real
browser (Debian's headless Chromium, selenium, ``python -m api``): an admin visits each,
searches, tries a message against the bot rules, sees a notification arrive live (SSE),
creates an API key; each screen is saved under test-artifacts/ (contacts.png, ...).
With PGWA_DOCS_SCREENSHOT=1 the bots screen is also saved as docs/dashboard.png, the
README's picture. Waits are on the page's state, never on a clock."""

from __future__ import annotations

import os

import psycopg
from psycopg.types.json import Jsonb
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from pgwa.config import ROOT
from tests import dashboard_fixtures, factories
from tests.dashboard_fixtures import add_user, click, live, log_in, shot, text_of, wait

browser = dashboard_fixtures.browser     # the fixtures, by name
server = dashboard_fixtures.server


def _seed(db: psycopg.Connection) -> factories.Account:
    acc = factories.account(db)
    db.execute("SELECT api.define_contact_field(%s, 'city', 'text')", (acc.tenant_id,))
    factories.stage(db, [{"phone": f"+35191000{i:04d}", "name": name, "city": city}
                         for i, (name, city) in enumerate([("Rita Sousa", "Porto"), ("Joao Neves", "Lisboa"),
                                                           ("Ana Lima", "Braga"), ("Ivo Costa", "Porto")])])
    db.execute("SELECT api.import_contacts(%s)", (acc.tenant_id,))
    db.execute("SELECT api.tag_contacts(%s, ARRAY(SELECT contact_id FROM core.contacts WHERE tenant_id = %s "
               "AND attributes->>'city' = 'Porto'), %s)", (acc.tenant_id, acc.tenant_id, ["vip", "north"]))
    db.execute("UPDATE core.templates SET category = 'MARKETING', quality_score = 'GREEN' WHERE tenant_id = %s",
               (acc.tenant_id,))
    for kind, pattern, reply, priority in [("contains", "price", "It costs 5 EUR, {{name}}.", 10),
                                           ("exact", "hours", "We are open 9 to 5.", 20),
                                           ("default", None, "An agent will answer soon.", 100)]:
        db.execute("SELECT api.save_bot_rule(%s, %s, %s, %s, %s, %s)",
                   (acc.tenant_id, acc.number_id, kind, pattern, Jsonb({"type": "text", "text": reply}), priority))
    db.execute("UPDATE core.wa_numbers SET quality_rating = 'GREEN', rate_mps = 42.0, display_phone_number = "
               "'+1 555 010 0100' WHERE number_id = %s", (acc.number_id,))
    db.execute("SELECT api.set_messaging_limit(%s, %s, 'TIER_10K')", (acc.tenant_id, acc.number_id))
    db.execute("SELECT core.notify(%s, 'quality_changed', 'warning', 'Number +1 555 010 0100 quality is now YELLOW')",
               (acc.tenant_id,))
    return acc


def test_an_admin_visits_every_screen(db: psycopg.Connection, server: str, browser) -> None:
    acc = _seed(db)
    add_user(db, acc.tenant_id, "boss@example.com", "admin")
    log_in(browser, server, "boss@example.com")
    for link in ("Contacts", "Templates", "Bots", "Numbers", "Notifications", "API keys"):
        assert browser.find_elements(By.LINK_TEXT, link), link

    # Contacts: a tag search, then opting one out.
    browser.find_element(By.LINK_TEXT, "Contacts").click()
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#contacts tr[data-contact]")) == 4)
    browser.find_element(By.CSS_SELECTOR, 'input[name="tag"]').send_keys("vip")
    browser.find_element(By.ID, "search").click()
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#contacts tr[data-contact]")) == 2)
    assert "Rita Sousa" in text_of(browser, "#contacts") and "Joao Neves" not in text_of(browser, "#contacts")
    click(browser, "#contacts tr[data-contact] button.opt")
    wait(browser, lambda d: "opted out" in text_of(d, "#contacts"))
    shot(browser, "contacts")

    browser.get(f"{server}/dashboard/templates")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "section.tpl")) == 3)
    assert "body[0]" in text_of(browser, "main") and "MARKETING" in text_of(browser, "main")
    shot(browser, "templates")

    browser.get(f"{server}/dashboard/bots")
    box = wait(browser, ec.presence_of_element_located((By.ID, "try-text")))
    box.send_keys("What's the price?")
    browser.find_element(By.ID, "try-go").click()
    tried = wait(browser, ec.presence_of_element_located((By.ID, "tried")))
    assert "contains" in tried.text and "It costs 5 EUR" in tried.text
    assert browser.find_elements(By.CSS_SELECTOR, "#rules tr.hit")
    shot(browser, "bots")
    if os.environ.get("PGWA_DOCS_SCREENSHOT") == "1":
        browser.set_window_size(1000, 640)
        assert browser.save_screenshot(str(ROOT / "docs" / "dashboard.png"))
        browser.set_window_size(1280, 900)

    browser.get(f"{server}/dashboard/numbers")
    row = wait(browser, ec.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-number="{acc.number_id}"]')))
    assert "TIER_10K" in row.text and "GREEN" in row.text and "42.0" in row.text
    shot(browser, "numbers")

    # Notifications: a new one appears without a reload (event 'notification'), then marked read.
    browser.get(f"{server}/dashboard/notifications")
    wait(browser, lambda d: "quality is now YELLOW" in text_of(d, "#notifications"))
    live(browser)
    db.execute("SELECT core.notify(%s, 'campaign_paused', 'critical', 'Campaign 7 paused: the number was flagged')",
               (acc.tenant_id,))
    wait(browser, lambda d: "Campaign 7 paused" in text_of(d, "#notifications"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#notifications li.unread")) == 2
    click(browser, "#read-all")
    wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "#notifications li.unread"))
    shot(browser, "notifications")

    # API keys: created, shown once, then only its prefix.
    browser.get(f"{server}/dashboard/keys")
    wait(browser, ec.presence_of_element_located((By.ID, "key-name"))).send_keys("shop backend")
    browser.find_element(By.ID, "key-create").click()
    key = wait(browser, ec.presence_of_element_located((By.ID, "new-key"))).text
    assert key.startswith("pgwa_") and "shop backend" in text_of(browser, "#keys")
    shot(browser, "keys")
    browser.get(f"{server}/dashboard/keys")
    wait(browser, lambda d: "shop backend" in text_of(d, "#keys"))
    assert key not in browser.page_source and not browser.find_elements(By.ID, "new-key")

    # At phone width the lists turn into cards, still readable.
    browser.set_window_size(390, 844)
    browser.get(f"{server}/dashboard/contacts")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#contacts tr[data-contact]")) == 4)
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= 390 + 1, width
    shot(browser, "contacts-phone")

