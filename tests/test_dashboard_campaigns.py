"""The dashboard's campaign screens over HTTP (Starlette's TestClient): the builder from a
CSV (header image, body parameter, URL button) and from tags, its errors shown beside the
form with nothing created, the preview, scheduling and starting in the tenant's zone, the
detail page's chart and explained failures, roles refused in SQL, and tenant isolation on
every campaign route. Plus the preview and failure functions in SQL, and the two pure
helpers (the mapping built from the form, the SVG chart)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest

from api.dashboard.campaigns import template_mapping, timeline_svg
from tests import factories
from tests.api_support import TestClient, api_client
from tests.test_dashboard_http import add_user, csrf_of, login

PHOTO_PROMO = [
    {"type": "HEADER", "format": "IMAGE", "example": {"header_handle": ["https://cdn.example.com/x.jpg"]}},
    {"type": "BODY", "text": "Hi {{1}}, your order {{2}} ships today.", "example": {"body_text": [["Ana", "A-1"]]}},
    {"type": "FOOTER", "text": "Reply STOP to opt out"},
    {"type": "BUTTONS", "buttons": [{"type": "URL", "text": "Track", "url": "https://t.example.com/{{1}}",
                                     "example": ["A-1"]}]},
]
CSV = ("phone,name,order_no,photo\n"
       "14155550101,Ana,A-1,https://cdn.example.com/ana.jpg\n"
       "14155550102,Bo,B-2,https://cdn.example.com/bo.jpg\n")
GOOD_MAPPING = {"src:header": "column", "val:header": "photo", "src:body[0]": "column", "val:body[0]": "name",
                "src:body[1]": "column", "val:body[1]": "order_no", "src:buttons.0": "column",
                "val:buttons.0": "order_no"}
NEW_ID = re.compile(r"/dashboard/campaigns/(\d+)$")


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with api_client(db_url) as c:
        yield c


@pytest.fixture
def acc(db: psycopg.Connection) -> factories.Account:
    acc = factories.account(db)
    factories.template(db, acc, "photo_promo", PHOTO_PROMO)
    return acc


def template_id(db: psycopg.Connection, acc: factories.Account, name: str = "photo_promo") -> int:
    return db.execute("SELECT template_id FROM core.templates WHERE tenant_id = %s AND name = %s",
                      (acc.tenant_id, name)).fetchone()[0]


def build(client: TestClient, db, acc, *, csv: str | None = CSV, **fields: str):
    token = csrf_of(client, "/dashboard/campaigns/new")
    data = {"csrf_token": token, "name": "Spring", "number_id": str(acc.number_id),
            "template_id": str(template_id(db, acc)), "audience": "csv", "on_invalid": "skip",
            **GOOD_MAPPING, **fields}
    files = {"file": ("list.csv", (csv or "").encode(), "text/csv")}
    return client.post("/dashboard/campaigns/new", data=data, files=files, follow_redirects=False)


def campaigns_of(db, tenant_id: int) -> int:
    return db.execute("SELECT count(*) FROM core.campaigns WHERE tenant_id = %s", (tenant_id,)).fetchone()[0]


def test_a_marketer_builds_previews_and_starts_a_campaign_from_a_csv(db, acc, client: TestClient) -> None:
    add_user(db, acc.tenant_id, "mark@example.com", "marketer")
    db.execute("SELECT api.set_tenant_time_zone(%s, 'Europe/Lisbon')", (acc.tenant_id,))
    login(client, "mark@example.com")
    page = client.get("/dashboard/campaigns/new")
    assert page.status_code == 200 and "photo_promo (en_US)" in page.text
    # The template's parameters, every one of them, as the builder offers them.
    params = client.get(f"/dashboard/campaigns/new/parameters?template_id={template_id(db, acc)}")
    assert params.status_code == 200
    for slot in ("header", "body[0]", "body[1]", "buttons.0"):
        assert f'name="val:{slot}"' in params.text
    assert 'value="media_id"' in params.text          # the header image may be an uploaded media id

    answer = build(client, db, acc)
    assert answer.status_code == 303, answer.text
    cid = int(NEW_ID.search(answer.headers["location"]).group(1))
    assert factories.campaign(db, cid)["status"] == "draft" and factories.campaign(db, cid)["total"] == 2

    detail = client.get(f"/dashboard/campaigns/{cid}")
    assert detail.status_code == 200
    assert "Hi Ana, your order A-1 ships today." in detail.text
    assert 'src="https://cdn.example.com/ana.jpg"' in detail.text
    assert "Track" in detail.text and "(A-1)" in detail.text
    assert "Europe/Lisbon" in detail.text

    # Scheduled at a wall-clock time of the tenant's zone, within a send window.
    token = csrf_of(client, f"/dashboard/campaigns/{cid}")
    answer = client.post(f"/dashboard/campaigns/{cid}/start", follow_redirects=False, data={
        "csrf_token": token, "start_at": "2099-01-02T09:30", "window_start": "09:00", "window_end": "18:00"})
    assert answer.status_code == 303, answer.text
    row = db.execute("SELECT status, scheduled_at = '2099-01-02 09:30'::timestamp AT TIME ZONE 'Europe/Lisbon', "
                     "send_window_start::text, send_window_end::text FROM core.campaigns WHERE campaign_id = %s",
                     (cid,)).fetchone()
    assert row == ("scheduled", True, "09:00:00", "18:00:00")
    # Now.
    answer = client.post(f"/dashboard/campaigns/{cid}/start", data={"csrf_token": token}, follow_redirects=False)
    assert answer.status_code == 303
    assert factories.campaign(db, cid)["status"] == "running"


def test_a_mapping_error_is_shown_beside_the_form_and_nothing_is_created(db, acc, client: TestClient) -> None:
    add_user(db, acc.tenant_id, "mark@example.com", "marketer")
    login(client, "mark@example.com")
    answer = build(client, db, acc, **{"val:body[1]": ""})
    assert answer.status_code == 422
    error = re.search(r'id="builder-error"[^>]*data-code="(PW\d+)"', answer.text)
    assert error and error.group(1) == "PW102"
    assert "body {{2}}" in answer.text or "body[1]" in answer.text or "{{2}}" in answer.text
    assert 'value="Spring"' in answer.text                 # the form keeps what was typed
    assert campaigns_of(db, acc.tenant_id) == 0
    assert db.execute("SELECT count(*) FROM core.contacts WHERE tenant_id = %s", (acc.tenant_id,)).fetchone()[0] == 0
    # A bad CSV is shown the same way.
    answer = build(client, db, acc, csv="name\nAna\n")
    assert answer.status_code == 400 and "no phone column" in answer.text and campaigns_of(db, acc.tenant_id) == 0
    # A link that is not one.
    answer = build(client, db, acc, **{"src:header": "value", "val:header": "not a link"})
    assert answer.status_code == 422 and "is not an http(s) link" in answer.text


def test_a_campaign_from_tags_or_a_segment_maps_contact_fields(db, acc, client: TestClient) -> None:
    add_user(db, acc.tenant_id, "mark@example.com", "marketer")
    factories.create_campaign(db, acc, [{"phone": "14155550101", "name": "Ana", "order_no": "A-1",
                                         "photo": "https://cdn.example.com/ana.jpg"}])
    ids = [r[0] for r in db.execute("SELECT contact_id FROM core.contacts WHERE tenant_id = %s", (acc.tenant_id,))]
    db.execute("SELECT api.tag_contacts(%s, %s, ARRAY['vip'])", (acc.tenant_id, ids))
    login(client, "mark@example.com")
    answer = build(client, db, acc, csv="", audience="tags", tags="vip")
    assert answer.status_code == 303, answer.text
    cid = int(NEW_ID.search(answer.headers["location"]).group(1))
    assert factories.campaign(db, cid)["total"] == 1
    assert "Hi Ana, your order A-1 ships today." in client.get(f"/dashboard/campaigns/{cid}").text
    answer = build(client, db, acc, csv="", audience="tags", tags="")
    assert answer.status_code == 400 and "tags are required" in answer.text
    # A saved segment, the same way.
    segment = db.execute("SELECT segment_id FROM api.save_segment(%s, 'vips', '{\"tag\": \"vip\"}'::jsonb)",
                         (acc.tenant_id,)).fetchone()[0]
    assert "vips" in client.get("/dashboard/campaigns/new").text
    answer = build(client, db, acc, csv="", audience="segment", segment_id=str(segment))
    assert answer.status_code == 303, answer.text
    assert factories.campaign(db, int(NEW_ID.search(answer.headers["location"]).group(1)))["total"] == 1
    # Not a form upload at all: refused beside the form.
    token = csrf_of(client, "/dashboard/campaigns/new")
    answer = client.post("/dashboard/campaigns/new", data={"csrf_token": token, "audience": "tags", "tags": "vip"})
    assert answer.status_code == 415 and 'id="builder-error"' in answer.text


def test_roles_are_checked_in_sql(db, acc, client: TestClient) -> None:
    add_user(db, acc.tenant_id, "vic@example.com", "viewer")
    add_user(db, acc.tenant_id, "ana@example.com", "agent")
    cid = factories.create_campaign(db, acc, 2)["campaign_id"]
    login(client, "vic@example.com")
    refused = client.get("/dashboard/campaigns/new")
    assert refused.status_code == 403 and "viewer role lacks the campaigns.manage permission" in refused.text
    assert client.get(f"/dashboard/campaigns/new/parameters?template_id={template_id(db, acc)}").status_code == 403
    detail = client.get(f"/dashboard/campaigns/{cid}")
    assert detail.status_code == 200 and 'id="schedule"' not in detail.text and 'id="new-campaign"' not in \
        client.get("/dashboard/campaigns").text
    token = csrf_of(client, f"/dashboard/campaigns/{cid}")
    assert client.post(f"/dashboard/campaigns/{cid}/start", data={"csrf_token": token}).status_code == 403
    files = {"file": ("list.csv", CSV.encode(), "text/csv")}
    answer = client.post("/dashboard/campaigns/new", files=files, data={
        "csrf_token": token, "name": "x", "number_id": str(acc.number_id), "template_id": str(template_id(db, acc)),
        "audience": "csv", **GOOD_MAPPING})
    assert answer.status_code == 403 and campaigns_of(db, acc.tenant_id) == 1
    assert factories.campaign(db, cid)["status"] == "draft"
    client.cookies.clear()
    login(client, "ana@example.com")
    assert client.get(f"/dashboard/campaigns/{cid}").status_code == 403


def test_another_tenants_campaign_is_not_found_on_every_route(db, acc, client: TestClient) -> None:
    other = factories.account(db)
    theirs = factories.create_campaign(db, other, 2)["campaign_id"]
    running = factories.running_campaign(db, other, 2)
    add_user(db, acc.tenant_id, "mark@example.com", "marketer")
    add_user(db, other.tenant_id, "mark@example.com", "marketer")   # same e-mail, other tenant
    login_page = client.get("/dashboard/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', login_page.text).group(1)
    client.post("/dashboard/login", data={"csrf_token": token, "email": "mark@example.com",
                                          "password": "a good long password", "tenant_id": str(acc.tenant_id)})
    mine = factories.create_campaign(db, acc, 1)["campaign_id"]
    csrf = csrf_of(client, f"/dashboard/campaigns/{mine}")
    for cid in (theirs, running):
        assert client.get(f"/dashboard/campaigns/{cid}").status_code == 404
        assert client.get(f"/dashboard/campaigns/{cid}?fragment=1").status_code == 404
        for action in ("start", "pause", "resume", "cancel"):
            answer = client.post(f"/dashboard/campaigns/{cid}/{action}", data={"csrf_token": csrf})
            assert answer.status_code == 404, (action, answer.status_code)
    assert factories.campaign(db, theirs)["status"] == "draft"
    assert factories.campaign(db, running)["status"] == "running"
    # Tenant B's templates are not offered to A, nor usable by id.
    assert client.get(f"/dashboard/campaigns/new/parameters?template_id={template_id(db, other, 'promo')}"
                      ).status_code == 404
    answer = build(client, db, acc, template_id=str(template_id(db, other, "promo")))
    assert answer.status_code == 400 and campaigns_of(db, acc.tenant_id) == 1


def test_the_detail_page_draws_the_timeline_and_explains_failures(db, acc, client: TestClient) -> None:
    add_user(db, acc.tenant_id, "vic@example.com", "viewer")
    cid = factories.running_campaign(db, acc, 4)
    factories.catch_up(db)
    claimed = factories.claim_all(db)
    factories.report(db, [factories.ok(claimed[0]), factories.ok(claimed[1]), factories.err(claimed[2], 131026),
                          factories.err(claimed[3], 131050)])
    login(client, "vic@example.com")
    page = client.get(f"/dashboard/campaigns/{cid}").text
    assert '<svg class="chart" id="timeline"' in page and '<rect class="sent"' in page
    assert 'data-code="131026"' in page and "not on WhatsApp" in page
    assert 'data-code="131050"' in page and "They are opted out" in page
    fragment = client.get(f"/dashboard/campaigns/{cid}?fragment=1").text
    assert "<html" not in fragment and 'id="campaign-status"' in fragment and "131026" in fragment


def test_preview_and_failures_in_sql(db, acc) -> None:
    cid = factories.create_campaign(db, acc, factories.contacts(2), [factories.order_update("SHOP")])["campaign_id"]
    preview = db.execute("SELECT api.preview_campaign_message(%s, %s)", (acc.tenant_id, cid)).fetchone()[0]
    assert preview["to"] == factories.phones(1)[0] and preview["template"] == "order_update"
    assert "Name 0" in preview["body"] and "A-0" in preview["body"] and "SHOP" in preview["body"]
    assert "{{" not in preview["body"]
    other = factories.account(db)
    for fn in ("preview_campaign_message", "campaign_failures"):
        with pytest.raises(psycopg.Error) as exc:
            db.execute(f"SELECT api.{fn}(%s, %s)", (other.tenant_id, cid))
        assert exc.value.diag.sqlstate == "PW201"
    # Unknown codes fall back to their category's advice.
    db.execute("INSERT INTO core.campaign_errors (campaign_id, error_code, category, count) VALUES (%s, 424242, "
               "'recipient', 3)", (cid,))
    rows = db.execute("SELECT error_code, title, count, advice FROM api.campaign_failures(%s, %s)",
                      (acc.tenant_id, cid)).fetchall()
    advice = "The recipient cannot get this message: remove these numbers from the list."
    assert rows == [(424242, "Unknown error code", 3, advice)]
    # Housekeeping drops a finished campaign's queue: the preview is then empty, not an error.
    db.execute("SELECT pgmq.drop_queue(core.campaign_queue(%s))", (cid,))
    assert db.execute("SELECT api.preview_campaign_message(%s, %s)", (acc.tenant_id, cid)).fetchone()[0] is None


def test_the_mapping_is_built_from_the_form_and_the_chart_scales() -> None:
    spec = template_mapping({"name": "t", "language": "en_US"}, {
        "src:header": "media_id", "val:header": "123", "src:body[1]": "value", "val:body[1]": "x",
"src:buttons.0": "column",
        "val:buttons.0": "", "src:evil": "column", "val:evil": "x", "src:body[0]": "sql", "val:body[0]": "y"})
    # body[0] had no valid source: the gap stays, for SQL to name.
    assert spec == {"name": "t", "language": "en_US", "header": {"media_id": "123"},
                    "body": [None, {"value": "x"}]}
    svg = timeline_svg([{"minute": f"2026-12-02T10:0{i}:00+00:00", "sent": s, "delivered": s, "read": 0,
                         "failed": 0, "replied": 0} for i, s in enumerate([2, 4])], 6)
    assert svg.count("<rect") == 2 and 'viewBox="0 0 600 160"' in svg and "<script" not in svg
    assert timeline_svg([], 0) == ""
