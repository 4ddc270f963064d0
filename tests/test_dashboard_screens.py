"""The dashboard's contacts, templates, bots, numbers, notifications and API keys screens
over HTTP (Starlette's TestClient): each screen and action, the role refusals decided in
SQL (PW403 -> 403), and tenant isolation (another tenant's ids are 404)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests import factories
from tests.api_support import TestClient, api_client
from tests.test_dashboard_http import add_user, csrf_of, login

CSV = "phone,name,city\n+351910000001,Rita Sousa,Porto\n+351910000002,Joao Neves,Lisboa\nnot-a-phone,Bad,X\n"


@pytest.fixture
def acc(db: psycopg.Connection) -> factories.Account:
    return factories.account(db)


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with api_client(db_url) as c:
        yield c


def _contact(db: psycopg.Connection, tenant_id: int, wa_id: str) -> dict:
    return db.execute("SELECT contact_id, opted_out FROM core.contacts WHERE tenant_id = %s AND wa_id = %s",
                      (tenant_id, wa_id)).fetchone()


def _import(http: TestClient, csv: str = CSV) -> object:
    token = csrf_of(http, "/dashboard/contacts")
    return http.post("/dashboard/contacts/import", data={"csrf_token": token},
                       files={"file": ("people.csv", csv.encode(), "text/csv")})


def test_contacts_import_search_page_and_opt_out(db, acc, client: TestClient) -> None:
    add_user(db, acc.tenant_id, "mark@example.com", "marketer")
    login(client, "mark@example.com")
    db.execute("SELECT api.define_contact_field(%s, 'city', 'text')", (acc.tenant_id,))
    imported = _import(client)
    assert imported.status_code == 200, imported.text
    assert "2 new" in imported.text and "1 invalid rows skipped" in imported.text
    rita = _contact(db, acc.tenant_id, "351910000001")
    db.execute("SELECT api.tag_contacts(%s, %s, %s)", (acc.tenant_id, [rita[0]], ["vip"]))

    everyone = client.get("/dashboard/contacts")
    assert "Rita Sousa" in everyone.text and "Joao Neves" in everyone.text and ">vip<" in everyone.text
    for query in ({"phone": "+351 91 000 0001"}, {"name": "rita"}, {"tag": "vip"},
                  {"field": "city", "value": "Porto"}):
        found = client.get("/dashboard/contacts", params=query)
        assert found.status_code == 200, (query, found.text)
        assert "Rita Sousa" in found.text and "Joao Neves" not in found.text, query
    bad = client.get("/dashboard/contacts", params={"phone": "12"})
    assert bad.status_code == 400 and "not a phone number" in bad.text

    # Paging: the page is 50 contacts, newest first; "Older" continues below the last one.
    factories.stage(db, factories.contacts(60))
    db.execute("SELECT api.import_contacts(%s)", (acc.tenant_id,))
    first = client.get("/dashboard/contacts")
    assert first.text.count("data-contact=") == 50
    older = re.search(r'href="([^"]+)" id="older"', first.text).group(1).replace("&amp;", "&")
    rest = client.get(older)
    assert rest.text.count("data-contact=") == 12 and 'id="older"' not in rest.text

    token = csrf_of(client, "/dashboard/contacts")
    out = client.post(f"/dashboard/contacts/{rita[0]}/opt-out", data={"csrf_token": token, "back": "/dashboard/contacts?tag=vip"},
                      follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/dashboard/contacts?tag=vip"
    assert _contact(db, acc.tenant_id, "351910000001")[1] is True
    client.post(f"/dashboard/contacts/{rita[0]}/opt-in", data={"csrf_token": token, "back": "https://evil.example/"})
    assert _contact(db, acc.tenant_id, "351910000001")[1] is False
    assert "opted out" not in client.get("/dashboard/contacts", params={"opted_out": "yes"}).text.split("<tbody>")[1]


def test_contacts_refusals_and_isolation(db, acc, client: TestClient) -> None:
    other = factories.account(db, with_templates=False)
    factories.stage(db, [{"phone": "+14155550100", "name": "Other tenant's"}])
    db.execute("SELECT api.import_contacts(%s)", (other.tenant_id,))
    theirs = _contact(db, other.tenant_id, "14155550100")[0]
    add_user(db, acc.tenant_id, "ana@example.com", "agent")
    add_user(db, acc.tenant_id, "boss@example.com", "admin")

    login(client, "ana@example.com")
    page = client.get("/dashboard/contacts")
    assert page.status_code == 200 and "Other tenant" not in page.text
    assert 'action="/dashboard/contacts/import"' not in page.text        # not offered to an agent...
    token = csrf_of(client, "/dashboard/contacts")
    refused = client.post(f"/dashboard/contacts/{theirs}/opt-out", data={"csrf_token": token})
    assert refused.status_code == 403 and "lacks the contacts.manage permission" in refused.text   # ...and refused
    assert _import(client).status_code == 403

    login(client, "boss@example.com")
    token = csrf_of(client, "/dashboard/contacts")
    foreign = client.post(f"/dashboard/contacts/{theirs}/opt-out", data={"csrf_token": token})
    assert foreign.status_code == 404
    assert _contact(db, other.tenant_id, "14155550100")[1] is False
    forged = client.post("/dashboard/contacts/import", data={"csrf_token": "forged"},
                         files={"file": ("people.csv", CSV.encode(), "text/csv")})
    assert forged.status_code == 403
    assert db.execute("SELECT count(*) FROM core.contacts WHERE tenant_id = %s", (acc.tenant_id,)).fetchone()[0] == 0


def test_templates_show_status_category_quality_components_and_parameters(db, acc, client: TestClient) -> None:
    other = factories.account(db, with_templates=False)
    factories.template(db, other, "secret_other_template", factories.NO_PARAMS)
    db.execute("UPDATE core.templates SET category = 'MARKETING', quality_score = 'GREEN' WHERE tenant_id = %s AND name = 'promo'",
               (acc.tenant_id,))
    add_user(db, acc.tenant_id, "view@example.com", "viewer")
    login(client, "view@example.com")
    page = client.get("/dashboard/templates")
    assert page.status_code == 200
    promo_id = db.execute("SELECT template_id FROM core.templates WHERE tenant_id = %s AND name = 'promo'",
                          (acc.tenant_id,)).fetchone()[0]
    promo = page.text.split(f'data-template="{promo_id}"')[1].split("</section>")[0]
    assert "APPROVED" in promo and "MARKETING" in promo and "quality: GREEN" in promo
    assert "<code>body[0]</code>" in promo and "text" in promo
    assert "order_update" in page.text and "No parameters." in page.text      # confirmed has none
    assert "secret_other_template" not in page.text


def test_bots_list_try_add_delete_and_refusals(db, acc, client: TestClient) -> None:
    other = factories.account(db, with_templates=False)
    rule = db.execute("SELECT rule_id FROM api.save_bot_rule(%s, %s, 'contains', 'price', %s)",
                      (acc.tenant_id, acc.number_id, Jsonb({"type": "text", "text": "It costs 5 EUR"}))).fetchone()[0]
    theirs = db.execute("SELECT rule_id FROM api.save_bot_rule(%s, %s, 'contains', 'hours', %s)",
                        (other.tenant_id, other.number_id, Jsonb({"type": "text", "text": "9 to 5"}))).fetchone()[0]
    add_user(db, acc.tenant_id, "mark@example.com", "marketer")
    add_user(db, acc.tenant_id, "ana@example.com", "agent")

    login(client, "mark@example.com")
    page = client.get("/dashboard/bots")
    assert page.status_code == 200 and f'data-rule="{rule}"' in page.text and "It costs 5 EUR" in page.text
    tried = client.get("/dashboard/bots", params={"number_id": acc.number_id, "text": "What is the PRICE?"})
    assert f"Rule {rule}" in tried.text and 'class="hit"' in tried.text
    none = client.get("/dashboard/bots", params={"number_id": acc.number_id, "text": "hello"})
    assert "No rule answers this message." in none.text

    token = csrf_of(client, "/dashboard/bots")
    added = client.post(f"/dashboard/bots/{acc.number_id}/rules", follow_redirects=False, data={
        "csrf_token": token, "kind": "exact", "pattern": "hello", "priority": "5", "reply": "Hi {{name}}!"})
    assert added.status_code == 303
    new_rule = db.execute("SELECT rule_id FROM core.bot_rules WHERE number_id = %s AND pattern = 'hello'",
                          (acc.number_id,)).fetchone()[0]
    assert f"Rule {new_rule}" in client.get("/dashboard/bots", params={"number_id": acc.number_id, "text": "Hello"}).text
    bad = client.post(f"/dashboard/bots/{acc.number_id}/rules", data={
        "csrf_token": token, "kind": "regex", "pattern": "(a+)+", "reply": "x"})
    assert bad.status_code == 422 and "safe subset" in bad.text     # PW103
    assert client.post(f"/dashboard/bots/{acc.number_id}/rules/{new_rule}/delete", data={"csrf_token": token},
                       follow_redirects=False).status_code == 303
    assert db.execute("SELECT count(*) FROM core.bot_rules WHERE rule_id = %s", (new_rule,)).fetchone()[0] == 0

    # Another tenant's number and rule are not found.
    assert client.get("/dashboard/bots", params={"number_id": other.number_id}).status_code == 404
    assert client.get("/dashboard/bots", params={"number_id": other.number_id, "text": "hours"}).status_code == 404
    assert client.post(f"/dashboard/bots/{other.number_id}/rules", data={
        "csrf_token": token, "kind": "exact", "pattern": "x", "reply": "x"}).status_code == 404
    assert client.post(f"/dashboard/bots/{acc.number_id}/rules/{theirs}/delete",
                       data={"csrf_token": token}).status_code == 404
    assert db.execute("SELECT count(*) FROM core.bot_rules WHERE rule_id = %s", (theirs,)).fetchone()[0] == 1

    # An agent reads and tries, but may not edit: 403 from SQL.
    login(client, "ana@example.com")
    page = client.get("/dashboard/bots")
    assert page.status_code == 200 and 'id="add-rule"' not in page.text
    token = csrf_of(client, "/dashboard/bots")
    refused = client.post(f"/dashboard/bots/{acc.number_id}/rules/{rule}/delete", data={"csrf_token": token})
    assert refused.status_code == 403 and "lacks the bots.manage permission" in refused.text
    refused = client.post(f"/dashboard/bots/{acc.number_id}/rules", data={
        "csrf_token": token, "kind": "exact", "pattern": "x", "reply": "x"})
    assert refused.status_code == 403
    assert db.execute("SELECT count(*) FROM core.bot_rules WHERE number_id = %s", (acc.number_id,)).fetchone()[0] == 1
    keys = client.get("/dashboard/keys")       # nor see the API keys
    assert keys.status_code == 403 and "agent role lacks the keys.manage permission" in keys.text


def test_numbers_show_quality_tier_pace_throughput_and_budget(db, acc, client: TestClient) -> None:
    other = factories.account(db, with_templates=False)
    db.execute("UPDATE core.wa_numbers SET quality_rating = 'YELLOW', rate_mps = 12.5, throughput_mps = 80 "
               "WHERE number_id = %s", (acc.number_id,))
    db.execute("SELECT api.set_messaging_limit(%s, %s, 'TIER_1K')", (acc.tenant_id, acc.number_id))
    add_user(db, acc.tenant_id, "ana@example.com", "agent")
    login(client, "ana@example.com")
    page = client.get("/dashboard/numbers")
    assert page.status_code == 200
    row = page.text.split(f'data-number="{acc.number_id}"')[1].split("</tr>")[0]
    assert "YELLOW" in row and "TIER_1K" in row and "12.5" in row and ">80<" in row and "0 / 1000" in row
    assert f'data-number="{other.number_id}"' not in page.text
    assert acc.access_token not in page.text


def test_notifications_list_mark_read_and_isolation(db, acc, client: TestClient) -> None:
    other = factories.account(db, with_templates=False)
    mine = [db.execute("SELECT core.notify(%s, 'campaign_paused', 'critical', %s)",
                       (acc.tenant_id, f"Campaign {i} paused")).fetchone()[0] for i in range(2)]
    theirs = db.execute("SELECT core.notify(%s, 'quality', 'warning', 'Other tenant note')",
                        (other.tenant_id,)).fetchone()[0]
    add_user(db, acc.tenant_id, "ana@example.com", "agent")
    add_user(db, acc.tenant_id, "view@example.com", "viewer")

    login(client, "ana@example.com")
    page = client.get("/dashboard/notifications")
    assert page.status_code == 200 and "Campaign 0 paused" in page.text and "Other tenant note" not in page.text
    assert page.text.count('class="unread"') == 2
    token = csrf_of(client, "/dashboard/notifications")
    done = client.post("/dashboard/notifications/read", data={"csrf_token": token, "notification_id": mine[0]},
                       follow_redirects=False)
    assert done.status_code == 303
    assert "Campaign 0 paused" not in client.get("/dashboard/notifications", params={"unread": "1"}).text
    fragment = client.get("/dashboard/notifications", params={"fragment": "1"})
    # The list alone: the page's #notifications box stays and takes it in (dashboard.js).
    assert fragment.text.lstrip().startswith("<ul") and 'id="notifications"' not in fragment.text
    assert "<html" not in fragment.text
    assert client.post("/dashboard/notifications/read", data={"csrf_token": token, "notification_id": theirs}
                       ).status_code == 404
    client.post("/dashboard/notifications/read", data={"csrf_token": token})      # all of mine
    assert db.execute("SELECT count(*) FROM core.notifications WHERE read_at IS NULL").fetchone()[0] == 1   # theirs

    login(client, "view@example.com")
    assert client.get("/dashboard/notifications").status_code == 200
    token = csrf_of(client, "/dashboard/notifications")
    assert client.post("/dashboard/notifications/read", data={"csrf_token": token}).status_code == 403


def test_api_keys_admin_only_secret_shown_once_and_isolation(db, acc, client: TestClient) -> None:
    other = factories.account(db, with_templates=False)
    theirs = db.execute("SELECT api_key_id FROM api.create_api_key(%s, 'theirs')", (other.tenant_id,)).fetchone()[0]
    add_user(db, acc.tenant_id, "boss@example.com", "admin")
    add_user(db, acc.tenant_id, "mark@example.com", "marketer")

    login(client, "boss@example.com")
    token = csrf_of(client, "/dashboard/keys")
    created = client.post("/dashboard/keys", data={"csrf_token": token, "name": "shop", "scope": "send"})
    assert created.status_code == 200 and created.headers["cache-control"] == "no-store"
    key = re.search(r'<code id="new-key">(pgwa_[0-9a-f]+)</code>', created.text).group(1)
    assert client.get("/v1/campaigns", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    listed = client.get("/dashboard/keys")
    assert "shop" in listed.text and key not in listed.text and key[:13] in listed.text and "theirs" not in listed.text
    keys = "SELECT count(*) FROM core.api_keys WHERE tenant_id = %s"
    assert db.execute(keys, (acc.tenant_id,)).fetchone()[0] == 1      # a reload made no other key
    # POST/redirect/GET: the POST answers a redirect that carries no secret (nor the URL);
    # the GET shows it once, to the session that made it only.
    made = client.post("/dashboard/keys", data={"csrf_token": token, "name": "crm", "scope": "send"},
                       follow_redirects=False)
    assert made.status_code == 303 and made.headers["location"] == "/dashboard/keys" and "pgwa_" not in made.text
    slot = client.cookies.get("pgwa_new_key")
    cookie = next(h for h in made.headers.get_list("set-cookie") if h.startswith("pgwa_new_key="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "pgwa_" not in cookie.split(";")[0][13:]
    # Another session (the same user's, elsewhere) with the slot's id is not given the key.
    slots, owner = client.app.state.dashboard.once, hashlib.sha256(b"another session").digest()
    assert slots.take(owner, slot) is None
    shown = client.get("/dashboard/keys")
    assert 'id="new-key"' in shown.text and "pgwa_new_key" not in client.cookies
    assert 'id="new-key"' not in client.get("/dashboard/keys").text
    assert db.execute(keys, (acc.tenant_id,)).fetchone()[0] == 2
    # A hostile key name (set through POST /v1/keys by anyone holding an admin key) is text
    # in an attribute, never script: the revoke question is no inline JavaScript.
    db.execute("SELECT api.create_api_key(%s, %s)", (acc.tenant_id, "x');alert(1);('"))
    page = client.get("/dashboard/keys").text
    assert "confirm(" not in page and 'data-confirm="Revoke x&#39;);alert(1);(&#39;?' in page
    key_id = db.execute("SELECT api_key_id FROM core.api_keys WHERE name = 'shop'").fetchone()[0]
    assert client.post(f"/dashboard/keys/{theirs}/revoke", data={"csrf_token": token}).status_code == 404
    assert client.post(f"/dashboard/keys/{key_id}/revoke", data={"csrf_token": token},
                       follow_redirects=False).status_code == 303
    assert client.get("/v1/campaigns", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert db.execute("SELECT revoked_at FROM core.api_keys WHERE api_key_id = %s", (theirs,)).fetchone()[0] is None

    login(client, "mark@example.com")
    assert "/dashboard/keys" not in client.get("/dashboard/contacts").text
    refused = client.get("/dashboard/keys")
    assert refused.status_code == 403 and "lacks the keys.manage permission" in refused.text
    token = csrf_of(client, "/dashboard/contacts")
    assert client.post("/dashboard/keys", data={"csrf_token": token, "name": "sneaky", "scope": "admin"}
                       ).status_code == 403
    assert db.execute("SELECT count(*) FROM core.api_keys WHERE name = 'sneaky'").fetchone()[0] == 0


def test_live_parts_swap_their_content_and_never_themselves() -> None:
    """Every element that refreshes on a live event keeps its place in the page (htmx drops
    a request queued on an element that a swap took out: a list would stay an event behind;
    tests/test_dashboard_inbox_browser.py shows it in a browser)."""
    from pathlib import Path

    templates = Path(__file__).resolve().parent.parent / "api" / "templates"
    live = []
    for path in sorted(templates.glob("*.html")):
        for tag in re.findall(r"<[a-z]+\b[^>]*>", path.read_text()):
            if re.search(r'hx-trigger="[^"]*pgwa:', tag):
                live.append(path.name)
                assert "outerHTML" not in tag, f"{path.name}: a live element swaps itself: {tag}"
    assert {"_conversations_live.html", "campaigns.html", "notifications.html", "campaign.html",
            "thread.html"} <= set(live)
