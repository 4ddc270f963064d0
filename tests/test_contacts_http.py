"""Contacts, fields, segments, retargeting and the recipient report over HTTP (the API
in-process): hostile filters, exact retargeting, erasure, streamed exports, isolation."""

from __future__ import annotations

import csv
import io

import orjson
import psycopg

from tests import factories
from tests.api_support import Tenant, TestClient, api_client, new_tenant

pytest_plugins = ["tests.api_fixtures"]

HOSTILE = "Robert'); DROP TABLE core.contacts; --"


def csv_bytes(rows: list[dict]) -> bytes:
    return factories.csv_text(rows).getvalue().encode()


def imported(client: TestClient, rows: list[dict], **params: str) -> dict:
    response = client.post("/v1/contacts/import", content=csv_bytes(rows), params=params,
                           headers={"content-type": "text/csv"})
    assert response.status_code == 200, response.text
    return response.json()


def ids_by_phone(db: psycopg.Connection, tenant: Tenant) -> dict[str, int]:
    return dict(db.execute("SELECT wa_id, contact_id FROM core.contacts WHERE tenant_id = %s",
                           (tenant.acc.tenant_id,)).fetchall())


def test_fields_tags_mapped_import_search_and_a_hostile_segment(db: psycopg.Connection, client: TestClient,
                                                                tenant: Tenant) -> None:
    for name, kind in (("city", "text"), ("points", "number")):
        assert client.post("/v1/contact-fields", json={"name": name, "type": kind}).status_code == 201
    bad = client.post("/v1/contact-fields", json={"name": "Bad Name", "type": "text"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "PW100"
    rows = [{"phone": p, "name": f"N{i}", "town": town, "score": score, "labels": labels}
            for i, (p, town, score, labels) in enumerate(zip(
                factories.phones(4), ["Paris", HOSTILE, "Lyon", "Paris"], ["10", "20", "many", "40"],
                ["vip;news", "vip", "", "news"]))]
    result = imported(client, rows, mapping=orjson.dumps({"fields": {"town": "city", "score": "points"},
                                                          "tag_columns": ["labels"]}).decode())
    assert result["inserted"] == 4 and result["tagged"] == 3     # one row has no labels
    assert result["skipped_values"] == [{"row": 4, "column": "score", "value": "many",
                                         "reason": "not a number (digits, an optional minus and decimal point) (field points)"}]
    # Search: by tag, by name, by field through a filter, keyset-paged.
    assert len(client.get("/v1/contacts", params={"tag": "vip"}).json()["data"]) == 2
    assert [c["name"] for c in client.get("/v1/contacts", params={"name": "n2"}).json()["data"]] == ["N2"]
    flt = orjson.dumps({"field": "points", "op": "gte", "value": 20}).decode()
    page = client.get("/v1/contacts", params={"filter": flt, "limit": 1}).json()
    rest = client.get("/v1/contacts", params={"filter": flt, "limit": 1, "before_id": page["next_before_id"]}).json()
    assert {c["name"] for c in page["data"] + rest["data"]} == {"N1", "N3"}
    # A hostile value is only data: it matches the one contact that has it, and drops nothing.
    hostile = {"all": [{"field": "city", "op": "eq", "value": HOSTILE}, {"tag": HOSTILE.replace("DROP", "drop")}]}
    counted = client.get("/v1/segments/count", params={"filter": orjson.dumps(
        {"field": "city", "op": "eq", "value": HOSTILE}).decode()})
    assert counted.status_code == 200 and counted.json() == {"count": 1}
    assert client.get("/v1/segments/count", params={"filter": orjson.dumps(hostile).decode()}).json() == {"count": 0}
    assert client.get("/v1/segments/count", params={"tags": "vip,news"}).json() == {"count": 3}
    error = client.get("/v1/segments/count", params={"filter": orjson.dumps(
        {"any": [{"tag": "vip"}, {"field": "points", "op": "contains", "value": "1"}]}).decode()})
    assert error.status_code == 422 and error.json()["error"]["code"] == "PW132"
    assert "filter.any[1].op" in error.json()["error"]["message"]
    assert db.execute("SELECT count(*) FROM core.contacts").fetchone()[0] == 4
    # Saved segments and their live counts.
    saved = client.post("/v1/segments", json={"name": "parisians", "filter": {"field": "city", "op": "eq",
                                                                            "value": "Paris"}})
    assert saved.status_code == 201, saved.text
    segment_id = saved.json()["segment_id"]
    assert client.get(f"/v1/segments/{segment_id}/count").json() == {"count": 2}
    assert [s["name"] for s in client.get("/v1/segments").json()] == ["parisians"]


def test_one_contact_is_read_edited_and_erased(db: psycopg.Connection, client: TestClient, tenant: Tenant) -> None:
    client.post("/v1/contact-fields", json={"name": "points", "type": "number"})
    imported(client, factories.contacts(2))
    contact_id = ids_by_phone(db, tenant)[factories.phones(1)[0]]
    edited = client.patch(f"/v1/contacts/{contact_id}", json={"name": "Ann", "fields": {"points": "7"},
                                                              "add_tags": ["vip"]})
    assert edited.status_code == 200, edited.text
    assert (edited.json()["name"], edited.json()["attributes"]["points"], edited.json()["tags"]) == ("Ann", 7, ["vip"])
    bad = client.patch(f"/v1/contacts/{contact_id}", json={"fields": {"points": "seven"}})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "PW133" and "points" in bad.json()["error"]["message"]
    # A campaign message waits for the contact; erasure withdraws it and removes the contact.
    campaign = client.post("/v1/campaigns/from-segment", json={
        "number_id": tenant.acc.number_id, "name": "to vips", "tags": ["vip"], "templates": [factories.order_update()]})
    assert campaign.status_code == 201, campaign.text
    erased = client.delete(f"/v1/contacts/{contact_id}")
    assert erased.status_code == 200, erased.text
    assert (erased.json()["outbound_messages"], erased.json()["withdrawn"]) == (1, 1)
    assert client.get(f"/v1/contacts/{contact_id}").status_code == 404
    assert db.execute("SELECT count(*) FROM core.outbound_messages WHERE contact_id = %s", (contact_id,)).fetchone()[0] == 0


def test_retargeting_over_http_picks_exactly_the_recipients_and_the_report_streams(
        db: psycopg.Connection, client: TestClient, tenant: Tenant) -> None:
    imported(client, factories.contacts(5))
    ids = ids_by_phone(db, tenant)
    tagged = client.post("/v1/contacts/tags", json={"contact_ids": list(ids.values()), "add_tags": ["all"]})
    assert tagged.json() == {"changed": 5}
    created = client.post("/v1/campaigns/from-segment", json={
        "number_id": tenant.acc.number_id, "name": "launch", "filter": {"tag": "all"},
        "templates": [factories.order_update()], "start": True})
    assert created.status_code == 201 and created.json()["total"] == 5
    campaign_id = created.json()["campaign_id"]
    p = factories.phones(5)
    outcome = {p[0]: "read", p[1]: "delivered", p[2]: "failed", p[3]: "sent"}      # p[4] still queued
    for phone, state in outcome.items():
        db.execute("""UPDATE core.outbound_messages SET state = %s,
                          delivered_at = CASE WHEN %s IN ('read', 'delivered') THEN now() END,
                          read_at = CASE WHEN %s = 'read' THEN now() END,
                          error_code = CASE WHEN %s = 'failed' THEN 131026 END
                      WHERE campaign_id = %s AND contact_id = %s""",
                   (state, state, state, state, campaign_id, ids[phone]))
    again = client.post(f"/v1/campaigns/{campaign_id}/retarget", json={"who": "not_read", "name": "nudge"})
    assert again.status_code == 201, again.text
    picked = {r[0] for r in db.execute("SELECT c.wa_id FROM core.outbound_messages o JOIN core.contacts c USING (contact_id)"
                                       " WHERE o.campaign_id = %s", (again.json()["campaign_id"],))}
    assert picked == {p[1], p[2], p[3]}
    bad = client.post(f"/v1/campaigns/{campaign_id}/retarget", json={"who": "everyone"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "PW100"
    # The report, streamed as CSV and as a JSON array.
    report = client.get(f"/v1/campaigns/{campaign_id}/recipients", params={"format": "csv"})
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/csv")
    rows = {r["phone"]: r for r in csv.DictReader(io.StringIO(report.text))}
    assert {phone: rows[phone]["state"] for phone in p} == {**outcome, p[4]: "queued"}
    assert rows[p[2]]["error_code"] == "131026"
    as_json = client.get(f"/v1/campaigns/{campaign_id}/recipients", params={"format": "json"})
    assert {r["phone"]: r["state"] for r in as_json.json()} == {**outcome, p[4]: "queued"}
    export = client.get("/v1/contacts/export", params={"filter": orjson.dumps({"tag": "all"}).decode()})
    assert export.status_code == 200 and len(list(csv.DictReader(io.StringIO(export.text)))) == 5


def test_another_tenant_sees_edits_segments_and_exports_nothing_of_this_ones(
        db: psycopg.Connection, db_url: str, client: TestClient, tenant: Tenant) -> None:
    imported(client, factories.contacts(2))
    contact_id = ids_by_phone(db, tenant)[factories.phones(1)[0]]
    segment_id = client.post("/v1/segments", json={"name": "all", "filter": {"opted_out": False}}).json()["segment_id"]
    campaign_id = client.post("/v1/campaigns/from-segment", json={
        "number_id": tenant.acc.number_id, "name": "x", "segment_id": segment_id,
        "templates": [factories.order_update()]}).json()["campaign_id"]
    other = new_tenant(db)
    with api_client(db_url) as theirs:
        theirs.headers.update(other.headers)
        assert theirs.get(f"/v1/contacts/{contact_id}").status_code == 404
        assert theirs.patch(f"/v1/contacts/{contact_id}", json={"name": "x"}).status_code == 404
        assert theirs.delete(f"/v1/contacts/{contact_id}").status_code == 404
        assert theirs.post("/v1/contacts/tags", json={"contact_ids": [contact_id], "add_tags": ["x"]}).status_code == 404
        assert theirs.get(f"/v1/segments/{segment_id}/count").status_code == 404
        assert theirs.delete(f"/v1/segments/{segment_id}").status_code == 404
        assert theirs.post("/v1/campaigns/from-segment", json={
            "number_id": other.acc.number_id, "name": "x", "segment_id": segment_id,
            "templates": [factories.order_update()]}).status_code == 404
        assert theirs.post(f"/v1/campaigns/{campaign_id}/retarget", json={"who": "not_read"}).status_code == 404
        assert theirs.get(f"/v1/campaigns/{campaign_id}/recipients").status_code == 404
        assert theirs.get("/v1/contacts/export").text.strip().count("\n") == 0     # the header alone
        assert theirs.get("/v1/segments").json() == []
    assert db.execute("SELECT name FROM core.contacts WHERE contact_id = %s", (contact_id,)).fetchone()[0] == "Name 0"
