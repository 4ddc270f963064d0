"""The JSON API's routes over HTTP: numbers, template sync against the simulator, contact
imports, campaigns from CSV uploads, lifecycle, notifications, /metrics."""

from __future__ import annotations

import orjson
import psycopg

from tests import factories
from tests.api_support import Tenant, TestClient, api_client
from tests.sim_fixtures import NUMBERS

pytest_plugins = ["tests.api_fixtures"]


def csv_bytes(rows: list[dict]) -> bytes:
    return factories.csv_text(rows).getvalue().encode()


def campaign_params(acc: factories.Account, name: str = "spring", templates: list | None = None, **extra) -> dict:
    return {"number_id": acc.number_id, "name": name,
            "templates": orjson.dumps(templates or [factories.order_update()]).decode(), **extra}


# -- numbers and templates ----------------------------------------------------------------------

def test_a_number_registered_through_the_api_is_listed(db_url: str, tenant: Tenant, sim) -> None:
    # At Meta (the simulator) the number is in the tenant's WABA and the token reads it.
    sim.control("numbers", {"phone_number_id": "4400112233", "waba_id": tenant.acc.waba_id, "token": "tok",
                            "display_phone_number": "+44 0011 2233"})
    with api_client(db_url, graph_base_url=sim.url) as client:
        client.headers.update(tenant.headers)
        created = client.post("/v1/numbers", json={"phone_number_id": "4400112233", "waba_id": tenant.acc.waba_id,
                                                   "access_token": "tok", "throughput_mps": 200})
        assert created.status_code == 201, created.text
        number_id = created.json()["number_id"]
        listed = {n["number_id"]: n for n in client.get("/v1/numbers").json()}
        assert set(listed) == {tenant.acc.number_id, number_id}
        assert listed[number_id]["throughput_mps"] == 200 and listed[number_id]["has_app_secret"] is False
        assert listed[number_id]["display_phone_number"] == "+44 0011 2233"
        missing = client.post("/v1/numbers", json={"phone_number_id": "1"})
        assert missing.status_code == 400 and "waba_id" in missing.json()["error"]["message"]


def test_template_sync_follows_the_graph_apis_cursor_pages(db: psycopg.Connection, db_url: str, sim) -> None:
    number = NUMBERS[0]
    acc = factories.account(db, with_templates=False)
    key = db.execute("SELECT key FROM api.create_api_key(%s, 't')", (acc.tenant_id,)).fetchone()[0]
    in_sim = sim.http.get("/_sim/templates", params={"waba_id": number["waba_id"]}).json()
    with api_client(db_url, graph_base_url=sim.url) as c:
        c.headers["Authorization"] = f"Bearer {key}"
        number_id = c.post("/v1/numbers", json={"phone_number_id": number["phone_number_id"],
                                                "waba_id": number["waba_id"],
                                                "access_token": number["token"]}).json()["number_id"]
        expected = len(in_sim[number["waba_id"]])
        assert expected > 3
        first = c.post("/v1/templates/sync", json={"number_id": number_id, "page_size": 3})
        assert first.status_code == 200, first.text
        assert first.json()["received"] == expected
        listed = c.get("/v1/templates", params={"waba_id": number["waba_id"]}).json()
        assert len(listed) == expected
        order = next(t for t in listed if t["name"] == "order_update" and t["language"] == "en_US")
        assert order["body_param_count"] == 2 and order["status"] == "APPROVED" and order["meta_template_id"]
        # Unchanged on a second sync; a template paused at Meta comes back paused.
        again = c.post("/v1/templates/sync", json={"number_id": number_id, "page_size": 2}).json()
        assert again == {"received": expected, "stored": 0, "unchanged": expected}
        changed = {**next(t for t in sim.http.get("/_sim/templates", params={"waba_id": number["waba_id"]})
                         .json()[number["waba_id"]] if t["name"] == "order_update" and t["language"] == "en_US"),
                   "status": "PAUSED"}
        paused = len(c.get("/v1/templates", params={"status": "paused"}).json())
        sim.control("templates", {"waba_id": number["waba_id"], "templates": [changed]})
        assert c.post("/v1/templates/sync", json={"number_id": number_id}).json()["stored"] == 1
        now_paused = c.get("/v1/templates", params={"status": "paused"}).json()
        assert len(now_paused) == paused + 1
        assert ("order_update", "en_US") in {(t["name"], t["language"]) for t in now_paused}


def test_template_sync_with_a_token_meta_refuses_is_502_and_names_metas_error(
        db: psycopg.Connection, db_url: str, sim) -> None:
    number = NUMBERS[0]
    acc = factories.account(db, with_templates=False)
    key = db.execute("SELECT key FROM api.create_api_key(%s, 't')", (acc.tenant_id,)).fetchone()[0]
    sim.control("numbers", {"phone_number_id": number["phone_number_id"], "token": "EAAG-revoked-token"})
    with api_client(db_url, graph_base_url=sim.url) as c:
        c.headers["Authorization"] = f"Bearer {key}"
        number_id = c.post("/v1/numbers", json={"phone_number_id": number["phone_number_id"],
                                                "waba_id": number["waba_id"],
                                                "access_token": "EAAG-revoked-token"}).json()["number_id"]
        # Meta revokes the token after the registration.
        sim.control("numbers", {"phone_number_id": number["phone_number_id"], "token": "EAAG-new-token"})
        response = c.post("/v1/templates/sync", json={"number_id": number_id})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "PW501" and "190" in error["message"]
    assert "EAAG-revoked-token" not in response.text


# -- contacts -----------------------------------------------------------------------------------

def test_a_contact_csv_is_imported_without_a_campaign(db: psycopg.Connection, client: TestClient,
                                                      tenant: Tenant) -> None:
    rows = [*factories.contacts(5), {"phone": "12", "name": "short", "order_no": "x"},
            {"phone": "+1 415 000 0001", "name": "dup", "order_no": "y"}]
    response = client.post("/v1/contacts/import", content=csv_bytes(rows), headers={"content-type": "text/csv"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["staged"], result["inserted"], result["updated"], result["skipped_invalid"],
            result["duplicates_removed"]) == (7, 5, 0, 1, 1)
    assert result["invalid_rows"][0]["row"] == 7
    assert db.execute("SELECT count(*) FROM core.contacts WHERE tenant_id = %s", (tenant.acc.tenant_id,)).fetchone()[0] == 5
    assert db.execute("SELECT count(*) FROM core.campaigns").fetchone()[0] == 0
    # A second import of changed names as a multipart upload updates only those.
    renamed = [{**r, "name": "Renamed"} if i < 2 else r for i, r in enumerate(factories.contacts(5))]
    second = client.post("/v1/contacts/import", files={"file": ("list.csv", csv_bytes(renamed), "text/csv")},
                         data={"on_invalid": "reject"})
    assert second.status_code == 200, second.text
    assert (second.json()["inserted"], second.json()["updated"], second.json()["unchanged"]) == (0, 2, 3)
    page = client.get("/v1/contacts", params={"limit": 3}).json()
    assert len(page["data"]) == 3 and page["next_before_id"] == page["data"][-1]["contact_id"]
    rest = client.get("/v1/contacts", params={"limit": 3, "before_id": page["next_before_id"]}).json()
    assert len(rest["data"]) == 2 and rest["next_before_id"] is None
    found = client.get("/v1/contacts", params={"phone": "+1 (415) 000-0001"}).json()["data"]
    assert [c["name"] for c in found] == ["Renamed"]


def test_rejected_contact_rows_answer_422_with_the_rows_and_import_nothing(db: psycopg.Connection,
                                                                          client: TestClient) -> None:
    rows = [*factories.contacts(3), {"phone": "call me", "name": "x", "order_no": "1"}]
    response = client.post("/v1/contacts/import", params={"on_invalid": "reject"}, content=csv_bytes(rows),
                           headers={"content-type": "text/csv"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "PW101" and error["detail"] == [
        {"row": 5, "value": "call me", "reason": "phone has characters other than digits, spaces, +, -, ., ( and )"}]
    assert db.execute("SELECT count(*) FROM core.contacts").fetchone()[0] == 0
    no_phone = client.post("/v1/contacts/import", content=b"name,email\nAna,a@x\n", headers={"content-type": "text/csv"})
    assert no_phone.status_code == 422 and "phone" in no_phone.json()["error"]["message"]


def test_opting_out_a_phone_keeps_it_out_of_later_campaigns(db: psycopg.Connection, client: TestClient,
                                                            tenant: Tenant) -> None:
    out = client.post("/v1/contacts/opt-out", json={"phone": "+1 415 000 0002"})
    assert out.status_code == 200 and out.json()["opted_out"] is True and out.json()["wa_id"] == "14150000002"
    created = client.post("/v1/campaigns", params=campaign_params(tenant.acc), content=csv_bytes(factories.contacts(4)),
                          headers={"content-type": "text/csv"})
    assert created.status_code == 201, created.text
    assert (created.json()["total"], created.json()["skipped_opted_out"]) == (3, 1)
    back = client.post("/v1/contacts/opt-in", json={"contact_id": out.json()["contact_id"]})
    assert back.json()["opted_out"] is False and back.json()["opted_out_at"] is None
    assert client.post("/v1/contacts/opt-in", json={"phone": "+1 415 999 9999"}).status_code == 404
    both = client.post("/v1/contacts/opt-out", json={"phone": "+14150000002", "contact_id": 1})
    assert both.status_code == 400


# -- campaigns ----------------------------------------------------------------------------------

def test_a_campaign_is_created_from_a_csv_body_with_parameters_in_the_query(db: psycopg.Connection,
                                                                           client: TestClient, tenant: Tenant) -> None:
    rows = [*factories.contacts(50), {"phone": "nope", "name": "x", "order_no": "1"}]
    response = client.post("/v1/campaigns", params=campaign_params(tenant.acc, on_invalid="skip", start="true"),
                           content=csv_bytes(rows), headers={"content-type": "text/csv; charset=utf-8"})
    assert response.status_code == 201, response.text
    created = response.json()
    assert (created["status"], created["total"], created["skipped_invalid"]) == ("running", 50, 1)
    campaign = factories.campaign(db, created["campaign_id"])
    assert campaign["tenant_id"] == tenant.acc.tenant_id and campaign["name"] == "spring"
    assert len(factories.queue(db, factories.campaign_queue(db, created['campaign_id']))) == 50


def test_a_campaign_is_created_from_a_multipart_upload_with_a_params_field(db: psycopg.Connection,
                                                                          client: TestClient, tenant: Tenant) -> None:
    params = campaign_params(tenant.acc, name="ab test", templates=[factories.order_update(), factories.promo()])
    response = client.post("/v1/campaigns", data={"params": orjson.dumps(params).decode()},
                           files={"file": ("contacts.csv", csv_bytes(factories.contacts(20)), "text/csv")})
    assert response.status_code == 201, response.text
    stats = client.get(f"/v1/campaigns/{response.json()['campaign_id']}/stats").json()
    assert stats["name"] == "ab test" and stats["status"] == "draft"
    assert [(t["name"], t["total"]) for t in stats["templates"]] == [("order_update", 10), ("promo", 10)]
    # And with the parameters in the Pgwa-Campaign header instead.
    header = client.post("/v1/campaigns", headers={"content-type": "text/csv",
                                                   "pgwa-campaign": orjson.dumps({**params, "name": "hdr"}).decode()},
                         content=csv_bytes(factories.contacts(4)))
    assert header.status_code == 201 and factories.campaign(db, header.json()["campaign_id"])["name"] == "hdr"


def test_a_campaign_with_invalid_rows_is_422_and_leaves_nothing(db: psycopg.Connection, client: TestClient,
                                                               tenant: Tenant) -> None:
    rows = [*factories.contacts(3), {"phone": "0044", "name": "x", "order_no": "1"}]
    response = client.post("/v1/campaigns", params=campaign_params(tenant.acc), content=csv_bytes(rows),
                           headers={"content-type": "text/csv"})
    assert response.status_code == 422
    assert response.json()["error"]["detail"][0]["row"] == 5
    unknown = client.post("/v1/campaigns", params=campaign_params(tenant.acc, templates=[{"name": "nope",
                                                                                          "language": "en_US"}]),
                          content=csv_bytes(factories.contacts(3)), headers={"content-type": "text/csv"})
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "PW102"
    missing = client.post("/v1/campaigns", params={"name": "x"}, content=b"phone\n14155550100\n",
                          headers={"content-type": "text/csv"})
    assert missing.status_code == 400 and "number_id" in missing.json()["error"]["message"]
    assert db.execute("SELECT count(*) FROM core.campaigns").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM core.contacts").fetchone()[0] == 0


def test_lifecycle_routes_move_the_status_and_refuse_wrong_transitions(client: TestClient, tenant: Tenant) -> None:
    created = client.post("/v1/campaigns", params=campaign_params(tenant.acc), content=csv_bytes(factories.contacts(5)),
                          headers={"content-type": "text/csv"}).json()
    cid = created["campaign_id"]
    assert client.post(f"/v1/campaigns/{cid}/resume").status_code == 409
    assert client.post(f"/v1/campaigns/{cid}/start", json={"at": "2999-01-01T00:00:00Z"}).json()["status"] == "scheduled"
    assert client.post(f"/v1/campaigns/{cid}/pause", json={"reason": "wait"}).json() == {"campaign_id": cid,
                                                                                        "status": "paused"}
    assert client.get(f"/v1/campaigns/{cid}").json()["pause_reason"] == "wait"
    assert client.post(f"/v1/campaigns/{cid}/resume").json()["status"] == "scheduled"
    assert client.post(f"/v1/campaigns/{cid}/cancel").json()["status"] == "cancelled"
    again = client.post(f"/v1/campaigns/{cid}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "PW301"
    stats = client.get(f"/v1/campaigns/{cid}/stats").json()
    assert (stats["cancelled"], stats["queued"], stats["progress"]) == (5, 0, 1.0)
    drift = client.post(f"/v1/campaigns/{cid}/reconcile").json()
    assert drift and all(r["drift"] == 0 for r in drift)


def test_the_campaign_list_pages_newest_first_with_live_counters(db: psycopg.Connection, client: TestClient,
                                                                tenant: Tenant) -> None:
    ids = [factories.create_campaign(db, tenant.acc, 3, name=f"c{i}", start=i % 2 == 0)["campaign_id"]
           for i in range(5)]
    first = client.get("/v1/campaigns", params={"limit": 2}).json()
    assert [c["campaign_id"] for c in first["data"]] == ids[::-1][:2]
    second = client.get("/v1/campaigns", params={"limit": 2, "before_id": first["next_before_id"]}).json()
    third = client.get("/v1/campaigns", params={"limit": 2, "before_id": second["next_before_id"]}).json()
    assert [c["campaign_id"] for c in second["data"] + third["data"]] == ids[::-1][2:]
    assert third["next_before_id"] is None
    running = client.get("/v1/campaigns", params={"status": "running"}).json()["data"]
    assert sorted(c["campaign_id"] for c in running) == [ids[0], ids[2], ids[4]]
    # Counters are live: a report moves them, and the list shows it.
    requests = factories.claim_all(db)
    factories.report(db, [factories.ok(r) for r in requests[:4]])
    listed = {c["campaign_id"]: c for c in client.get("/v1/campaigns").json()["data"]}
    assert sum(c["sent"] for c in listed.values()) == 4
    assert sum(c["queued"] for c in listed.values()) == 15 - 4


# -- notifications ------------------------------------------------------------------------------

def test_notifications_are_listed_and_marked_read(db: psycopg.Connection, client: TestClient, tenant: Tenant) -> None:
    ids = [db.execute("SELECT core.notify(%s, 'test', %s, %s)", (tenant.acc.tenant_id, sev, f"n{i}")).fetchone()[0]
           for i, sev in enumerate(["info", "warning", "critical"])]
    listed = client.get("/v1/notifications").json()["data"]
    assert [n["notification_id"] for n in listed] == ids[::-1]
    assert client.post(f"/v1/notifications/{ids[0]}/read").json() == {"marked": 1}
    assert [n["notification_id"] for n in client.get("/v1/notifications", params={"unread": "true"}).json()["data"]] \
        == ids[:0:-1]
    assert client.post("/v1/notifications/read", json={"ids": [ids[0], ids[1]]}).json() == {"marked": 1}
    assert client.post("/v1/notifications/read", json={"all": True}).json() == {"marked": 1}
    assert client.get("/v1/notifications", params={"unread": "true"}).json()["data"] == []
    assert client.post("/v1/notifications/read", json={}).status_code == 400


# -- uploads: bounded, spooled before a connection is taken --------------------------------------
# tests/test_security_uploads.py: caps, the deadline for a slow body, and no connection or
# transaction held while the client sends.


def test_metrics_are_prometheus_text(db: psycopg.Connection, client: TestClient, tenant: Tenant) -> None:
    campaign = factories.running_campaign(db, tenant.acc, 4)
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert {"pgwa_queue_messages", "pgwa_webhook_lag_seconds", "pgwa_sends_per_second", "pgwa_number_rate_mps",
            "pgwa_number_tokens", "pgwa_campaign_messages", "pgwa_message_failures"} <= families
    assert 'pgwa_campaign_messages{status="running",stage="queued"} 4' in text and f'"{campaign}"' not in text
    assert text.endswith("\n")
