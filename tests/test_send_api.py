"""The send API: POST /v1/messages and GET /v1/messages/{id}, each one api function.

A message from a tenant's own system goes on the number's reply queue (ahead of any
campaign), is checked like an agent's reply, and an Idempotency-Key makes a retry safe.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests import factories
from tests.api_support import Tenant, TestClient, api_client, new_tenant

pytest_plugins = ["tests.api_fixtures"]

TEMPLATE = {"type": "template", "name": "order_update", "language": "en_US", "params": ["Ana", "A-1", "ACME"]}


def send(client: TestClient, acc: factories.Account, to: str, message: dict, key: str | None = None):
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/v1/messages", json={"number_id": acc.number_id, "to": to, "message": message},
                       headers=headers)


def write_in(db: psycopg.Connection, acc: factories.Account, sender: str) -> None:
    """The contact writes to the number: its 24-hour window opens."""
    payload = {"object": "whatsapp_business_account", "entry": [{"id": acc.waba_id, "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": acc.phone_number_id},
            "contacts": [{"profile": {"name": "Ana"}, "wa_id": sender}],
            "messages": [{"from": sender, "id": f"wamid.in.{uuid.uuid4().hex}", "timestamp": str(int(time.time())),
                          "type": "text", "text": {"body": "hi"}}]}}]}]}
    db.execute("SELECT api.ingest_webhook(%s)", (Jsonb(payload),))
    assert db.execute("SELECT payloads, dead FROM api.process_webhooks(100)").fetchone() == (1, 0)


def test_a_template_goes_to_a_new_phone_ahead_of_campaign_traffic(db: psycopg.Connection, tenant: Tenant,
                                                                   client: TestClient) -> None:
    acc = tenant.acc
    factories.running_campaign(db, acc, 5)
    r = send(client, acc, "+1 415 555 0199", TEMPLATE)
    assert r.status_code == 201, r.text
    sent = r.json()
    assert sent["recipient"] == "14155550199" and sent["state"] == "queued" and sent["replayed"] is False
    assert factories.outbound(db, sent["outbound_id"])["kind"] == "api"

    factories.catch_up(db)
    first = factories.claim(db, max_rows=1)
    assert [c["outbound_id"] for c in first] == [sent["outbound_id"]]
    body = first[0]["body"]
    assert body["to"] == "14155550199" and body["type"] == "template"
    assert body["template"]["name"] == "order_update"
    assert [p["text"] for p in body["template"]["components"][0]["parameters"]] == ["Ana", "A-1", "ACME"]
    # Agents see it in the shared inbox, and no dashboard NOTIFY was sent for it.
    row = db.execute("SELECT direction, type FROM core.inbox_messages WHERE outbound_id = %s",
                     (sent["outbound_id"],)).fetchone()
    assert row == ("out", "template")


def test_the_same_idempotency_key_never_sends_twice(db: psycopg.Connection, tenant: Tenant,
                                                    client: TestClient) -> None:
    acc = tenant.acc
    first = send(client, acc, "+14155550101", TEMPLATE, key="order-42")
    again = send(client, acc, "+14155550101", {**TEMPLATE}, key="order-42")
    assert first.status_code == 201 and again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["outbound_id"] == first.json()["outbound_id"] and again.json()["replayed"] is True
    assert len(factories.queue(db, factories.reply_queue(db, acc.number_id))) == 1

    other = send(client, acc, "+14155550102", TEMPLATE, key="order-42")
    assert other.status_code == 409 and other.json()["error"]["code"] == "PW303", other.text
    assert len(factories.queue(db, factories.reply_queue(db, acc.number_id))) == 1

    bad = send(client, acc, "+14155550102", TEMPLATE, key="has space")
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["error"]["message"]


def test_keys_are_per_tenant(db: psycopg.Connection, db_url: str, tenant: Tenant, client: TestClient) -> None:
    other = new_tenant(db)
    mine = send(client, tenant.acc, "+14155550103", TEMPLATE, key="k-1")
    with api_client(db_url) as theirs:
        theirs.headers.update(other.headers)
        r = send(theirs, other.acc, "+14155550103", TEMPLATE, key="k-1")
        assert r.status_code == 201 and r.json()["outbound_id"] != mine.json()["outbound_id"]
        # Tenant B neither reads A's message nor sends from A's number.
        assert theirs.get(f"/v1/messages/{mine.json()['outbound_id']}").status_code == 404
        stolen = send(theirs, tenant.acc, "+14155550104", TEMPLATE)
        assert stolen.status_code == 404 and stolen.json()["error"]["code"] == "PW202"


def test_free_form_text_needs_the_window_open(db: psycopg.Connection, tenant: Tenant, client: TestClient) -> None:
    acc = tenant.acc
    text = {"type": "text", "text": "Your parcel left the warehouse, {{name}}."}
    closed = send(client, acc, "+14155550105", text)
    assert closed.status_code == 409 and closed.json()["error"]["code"] == "PW304", closed.text
    assert "never wrote" in closed.json()["error"]["message"]

    write_in(db, acc, "14155550105")
    opened = send(client, acc, "+14155550105", text)
    assert opened.status_code == 201, opened.text
    assert opened.json()["window_closes_at"] is not None
    factories.catch_up(db)
    [req] = factories.claim(db)
    assert req["body"]["text"]["body"] == "Your parcel left the warehouse, Ana."


@pytest.mark.parametrize(("to", "message", "status", "code", "names"), [
    ("555", TEMPLATE, 400, "PW100", "to"),
    ("+14155550106", {"type": "fax"}, 400, "PW100", "type"),
    ("+14155550106", {**TEMPLATE, "name": "nope"}, 422, "PW102", "nope"),
    ("+14155550106", {**TEMPLATE, "params": ["only one"]}, 422, "PW102", "parameters"),
])
def test_bad_input_is_refused_naming_it_and_changes_nothing(db: psycopg.Connection, tenant: Tenant,
                                                            client: TestClient, to, message, status, code,
                                                            names) -> None:
    r = send(client, tenant.acc, to, message, key="k-bad")
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    assert names in r.json()["error"]["message"]
    assert db.execute("SELECT count(*) FROM core.api_sends").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM core.contacts WHERE wa_id = '14155550106'").fetchone()[0] == 0


def test_message_and_template_together_are_refused(db: psycopg.Connection, tenant: Tenant,
                                                   client: TestClient) -> None:
    r = client.post("/v1/messages", json={"number_id": tenant.acc.number_id, "to": "+14155550107",
                                          "message": {"type": "text", "text": "hi"},
                                          "template": {"name": "order_update", "language": "en_US"}})
    assert r.status_code == 400 and "not both" in r.json()["error"]["message"], r.text
    assert db.execute("SELECT count(*) FROM core.outbound_messages WHERE kind = 'api'").fetchone()[0] == 0


def test_a_business_scoped_user_id_is_addressed_by_it(db: psycopg.Connection, tenant: Tenant,
                                                      client: TestClient) -> None:
    r = send(client, tenant.acc, "US.13491208655302741918", TEMPLATE)
    assert r.status_code == 201 and r.json()["recipient"] == "US.13491208655302741918", r.text
    factories.catch_up(db)
    [req] = factories.claim(db)
    assert req["body"]["recipient"] == "US.13491208655302741918" and "to" not in req["body"]


def test_an_opted_out_contact_gets_no_template(db: psycopg.Connection, tenant: Tenant, client: TestClient) -> None:
    db.execute("SELECT api.set_contact_opt_out(%s, true, NULL, '14155550107')", (tenant.acc.tenant_id,))
    r = send(client, tenant.acc, "+14155550107", TEMPLATE)
    assert r.status_code == 422 and r.json()["error"]["code"] == "PW106", r.text


def test_a_message_shows_its_history(db: psycopg.Connection, tenant: Tenant, client: TestClient) -> None:
    sent = send(client, tenant.acc, "+14155550108", TEMPLATE, key="hist-1").json()
    factories.catch_up(db)
    [req] = factories.claim(db)
    factories.report(db, [factories.ok(req, "wamid.hist-1")])
    r = client.get(f"/v1/messages/{sent['outbound_id']}")
    assert r.status_code == 200, r.text
    msg = r.json()
    assert msg["kind"] == "api" and msg["wamid"] == "wamid.hist-1" and msg["idempotency_key"] == "hist-1"
    assert [h["state"] for h in msg["history"]] == ["queued", "claimed", "accepted"]
    assert client.get("/v1/messages/999999999").json()["error"]["code"] == "PW210"


def test_a_campaign_gets_a_send_window_and_a_schedule_in_the_tenants_time(db: psycopg.Connection, tenant: Tenant,
                                                                         client: TestClient) -> None:
    acc = tenant.acc
    campaign_id = factories.create_campaign(db, acc, 2)["campaign_id"]
    r = client.put(f"/v1/campaigns/{campaign_id}/send-window", json={"start": "09:00", "end": "20:00"})
    assert r.status_code == 200 and r.json()["send_window_start"] == "09:00:00", r.text
    bad = client.put(f"/v1/campaigns/{campaign_id}/send-window", json={"start": "9am", "end": "20:00"})
    assert bad.status_code == 400 and "start" in bad.json()["error"]["message"]

    db.execute("SELECT api.set_tenant_time_zone(%s, 'Asia/Tokyo')", (acc.tenant_id,))
    r = client.post(f"/v1/campaigns/{campaign_id}/start", json={"at": "2099-01-02T09:00"})
    assert r.status_code == 200 and r.json()["status"] == "scheduled", r.text
    at = db.execute("SELECT scheduled_at AT TIME ZONE 'UTC' FROM core.campaigns WHERE campaign_id = %s",
                    (campaign_id,)).fetchone()[0]
    assert at.isoformat() == "2099-01-02T00:00:00"        # 09:00 in Tokyo


def test_two_requests_with_one_key_at_once_send_once_and_answer_alike(db: psycopg.Connection, db_url: str,
                                                                        tenant: Tenant) -> None:
    acc = tenant.acc
    call = "SELECT outbound_id, replayed FROM api.send_message(%s, %s, %s, %s, %s)"
    args = (acc.tenant_id, acc.number_id, "+14155550120", Jsonb(TEMPLATE), "race-1")
    with psycopg.connect(db_url) as first, psycopg.connect(db_url, autocommit=True) as second:
        won = first.execute(call, args).fetchone()          # in flight: not committed yet
        pid = second.info.backend_pid
        with ThreadPoolExecutor(1) as pool:
            retry = pool.submit(lambda: second.execute(call, args).fetchone())
            # The retry waits on the key, not racing the first to the queue.
            deadline = time.monotonic() + 20
            while db.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s",
                             (pid,)).fetchone()[0] != "advisory":
                assert time.monotonic() < deadline and not retry.done(), "the retry did not wait on the key"
                time.sleep(0.01)
            first.commit()
            again = retry.result(timeout=30)
    assert won == (again[0], False) and again[1] is True
    assert len(factories.queue(db, factories.reply_queue(db, acc.number_id))) == 1


def test_a_text_in_the_window_is_judged_at_p_now(db: psycopg.Connection, tenant: Tenant) -> None:
    acc = tenant.acc
    write_in(db, acc, "14155550121")
    text = Jsonb({"type": "text", "text": "hello"})
    with pytest.raises(psycopg.Error) as late:
        db.execute("SELECT api.send_message(%s, %s, '+14155550121', %s, NULL, now() + interval '25 hours')",
                   (acc.tenant_id, acc.number_id, text))
    assert late.value.diag.sqlstate == "PW304" and "closed at" in late.value.diag.message_primary
    assert db.execute("SELECT count(*) FROM core.outbound_messages WHERE kind = 'api'").fetchone()[0] == 0


def test_a_second_request_of_the_same_shape_gets_its_own_values(db: psycopg.Connection, tenant: Tenant,
                                                                 client: TestClient) -> None:
    acc = tenant.acc
    first = send(client, acc, "+14155550130", TEMPLATE)
    second = send(client, acc, "+14155550131", {**TEMPLATE, "params": ["Bob", "{{phone}}", "ACME"]})
    assert first.status_code == 201 and second.status_code == 201, second.text
    # The second was laid out from the first's cached skeleton, with its own values.
    assert db.execute("SELECT count(*) FROM core.api_template_layouts").fetchone()[0] == 1
    empty = send(client, acc, "+14155550132", {**TEMPLATE, "params": ["Cy", " ", "ACME"]})
    assert empty.status_code == 422 and empty.json()["error"]["code"] == "PW102", empty.text
    assert "{{2}}" in empty.json()["error"]["message"]
    factories.catch_up(db)
    bodies = {r["body"]["to"]: r["body"] for r in factories.claim(db)}
    assert [p["text"] for p in bodies["14155550131"]["template"]["components"][0]["parameters"]] == \
        ["Bob", "14155550131", "ACME"]
    assert [p["text"] for p in bodies["14155550130"]["template"]["components"][0]["parameters"]] == \
        ["Ana", "A-1", "ACME"]
    assert "14155550132" not in bodies


def test_a_send_notifies_neither_the_dashboard_nor_the_sender_inside_its_transaction(
        db: psycopg.Connection, db_url: str, tenant: Tenant) -> None:
    acc = tenant.acc
    with psycopg.connect(db_url, autocommit=True) as listener, psycopg.connect(db_url, autocommit=True) as sender:
        listener.execute("LISTEN pgwa_dashboard")
        listener.execute("LISTEN pgwa_send")
        api_contact = sender.execute("SELECT contact_id FROM api.send_message(%s, %s, '+14155550140', %s, NULL, NULL, "
                                     "false)", (acc.tenant_id, acc.number_id, Jsonb(TEMPLATE))).fetchone()[0]
        # An inbound message in the same number's inbox is still announced (notifications
        # arrive in commit order, so the send's would come first): the check can fail.
        write_in(sender, acc, "14155550141")
        seen = [(n.channel, n.payload) for n in listener.notifies(timeout=5, stop_after=1)]
    inbound = db.execute("SELECT contact_id FROM core.contacts WHERE wa_id = '14155550141'").fetchone()[0]
    assert seen == [("pgwa_dashboard", f"inbox {acc.tenant_id}:{acc.number_id}.{inbound}")]
    assert inbound != api_contact
