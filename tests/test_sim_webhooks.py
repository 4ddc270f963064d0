"""Webhooks from the simulator: status, inbound, template and quality updates."""

from __future__ import annotations

import time

import pytest

from api.signature import verify_signature
from tests.sim_fixtures import (
    APP_SECRET,
    NUMBERS,
    OTHER_SECRET,
    template_body,
    text_body,
    wait_for,
)

ONE, TWO, THREE = (n["phone_number_id"] for n in NUMBERS)
WABA_ONE = NUMBERS[0]["waba_id"]


def send_ok(sim, body, pnid=ONE) -> str:
    resp = sim.send(body, pnid=pnid)
    assert resp.status_code == 200, resp.text
    return resp.json()["messages"][0]["id"]


def statuses_of(receiver, wamid):
    return [s for s in receiver.statuses() if s["id"] == wamid]


@pytest.mark.usefixtures("quiet_world")    # exactly sent, delivered and read
def test_status_webhooks_have_meta_shape(sim, sim_receiver):
    sim.faults(statuses={"read_rate": 1.0})
    # A UK number: Meta delivers no marketing template to US numbers.
    wamid = send_ok(sim, template_body(to="447700900001", name="promo_offer", params=["X"],
                                       biz="camp-7:msg-1"))
    got = sim_receiver.wait_for(lambda r: len(statuses_of(r, wamid)) == 3 and statuses_of(r, wamid))
    assert sorted(s["status"] for s in got) == ["delivered", "read", "sent"]
    post = next(p["json"] for p in sim_receiver.posts
                if any(s["id"] == wamid for e in p["json"]["entry"] for c in e["changes"]
                       for s in c["value"].get("statuses", [])))
    assert post["object"] == "whatsapp_business_account"
    [entry] = post["entry"]
    assert entry["id"] == WABA_ONE
    [change] = entry["changes"]
    assert change["field"] == "messages"
    value = change["value"]
    assert value["messaging_product"] == "whatsapp"
    assert value["metadata"] == {"display_phone_number": NUMBERS[0]["display_phone_number"],
                                 "phone_number_id": ONE}
    by_status = {s["status"]: s for s in got}
    sent, delivered, read = by_status["sent"], by_status["delivered"], by_status["read"]
    for s in got:
        assert s["recipient_id"] == "447700900001"
        assert s["biz_opaque_callback_data"] == "camp-7:msg-1"
        assert isinstance(s["timestamp"], str) and s["timestamp"].isdigit()
    assert sent["conversation"]["origin"] == {"type": "marketing"}
    assert int(sent["conversation"]["expiration_timestamp"]) > time.time() + 23 * 3600
    assert delivered["conversation"]["id"] == sent["conversation"]["id"]
    assert sent["pricing"] == {"billable": True, "pricing_model": "PMP",
                               "category": "marketing", "type": "regular"}
    assert "pricing" not in read


def test_biz_opaque_callback_data_only_when_sent(sim, sim_receiver):
    wamid = send_ok(sim, template_body())
    sim.quiet()
    got = statuses_of(sim_receiver, wamid)
    assert got and all("biz_opaque_callback_data" not in s for s in got)


def test_signatures_verify_with_the_client_code(sim, sim_receiver):
    send_ok(sim, template_body())
    send_ok(sim, template_body(), pnid=THREE)
    sim_receiver.wait_for(lambda r: len(r.statuses()) >= 4)
    for post in sim_receiver.posts:
        header = post["headers"]["X-Hub-Signature-256"]
        assert header.startswith("sha256=")
        pnid = post["json"]["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"]
        secret = OTHER_SECRET if pnid == THREE else APP_SECRET
        assert verify_signature(post["body"], header, [secret])
        assert verify_signature(post["body"], header, ["old-rotated-secret", secret])
        assert not verify_signature(post["body"], header, ["wrong-secret"])
        assert not verify_signature(post["body"] + b" ", header, [secret])


def test_undeliverable_recipient_gets_a_failed_status_by_default(sim, sim_receiver):
    sim.faults(failing_recipients=["15550000404"])
    wamid = send_ok(sim, template_body(to="15550000404", biz="c:1"))
    [failed] = sim_receiver.wait_for(lambda r: statuses_of(r, wamid))
    assert failed["status"] == "failed"
    assert failed["biz_opaque_callback_data"] == "c:1"
    [err] = failed["errors"]
    assert err["code"] == 131026
    assert err["title"] and err["message"] and err["error_data"]["details"]
    # Nothing else comes for it: once the simulator has nothing left to post, it is final.
    sim.quiet()
    assert len(statuses_of(sim_receiver, wamid)) == 1


def test_statuses_are_batched_per_number_up_to_batch_max(sim, sim_receiver):
    sim.faults(webhook={"batch_max": 7})
    # All 40 statuses fall due in one flush, however long the 20 sends take.
    sim.clock(frozen=True)
    for i in range(20):
        send_ok(sim, template_body(to=f"1555600{i:04d}"))
    sim.clock(advance_s=1)
    sim_receiver.wait_for(lambda r: len(r.statuses()) >= 40)
    sizes = [len(c["value"]["statuses"]) for p in sim_receiver.posts
             for e in p["json"]["entry"] for c in e["changes"]]
    assert max(sizes) == 7
    assert len(sizes) < 40


@pytest.mark.usefixtures("quiet_world")    # exactly two statuses, in one post
def test_webhooks_are_retried_until_a_200(sim, sim_receiver):
    sim.faults(statuses={"sent_delay_ms": [0, 0], "delivered_delay_ms": [0, 0]})
    sim.clock(frozen=True)
    sim_receiver.fail_next(3, status=503)
    wamid = send_ok(sim, template_body())
    sim.clock(advance_s=0.05)
    # Meta retries at once, then less and less often: here about 1, 2, 4 s apart; each
    # retry waits for the simulator's clock (the real one stands still).
    for failed, wait_s in ((1, 1.3), (2, 2.5), (3, 5.0)):
        wait_for(lambda n=failed: sim.stats()["webhooks"]["posts_failed"] == n, 10,
                 f"attempt {failed}")
        time.sleep(0.2)
        assert sim.stats()["webhooks"]["posts_failed"] == failed   # nothing before its time
        sim.clock(advance_s=wait_s)
    sim_receiver.wait_for(lambda r: len(statuses_of(r, wamid)) == 2)
    # The receiver records a post before it answers; the simulator counts it delivered
    # only once it has read the 200, a moment later.
    hooks = sim.quiet()["webhooks"]
    assert hooks["posts_failed"] == 3 and hooks["retries"] == 3
    assert hooks["statuses_delivered"] == 2


def test_webhook_retries_are_bounded(sim, sim_receiver):
    sim.faults(webhook={"max_attempts": 2, "retry_base_ms": 10})
    sim_receiver.fail_next(1000)
    send_ok(sim, template_body())
    hooks = sim.quiet()["webhooks"]
    assert hooks["gave_up"] >= 1 and hooks["statuses_delivered"] == 0


def test_duplicates_and_reordering_on_demand(sim, sim_receiver):
    sim.faults(webhook={"duplicate_rate": 1.0, "reorder_rate": 1.0},
               statuses={"sent_delay_ms": [0, 0], "delivered_delay_ms": [200, 200]})
    # The clock stands still: only what is due at once (the delivered status, swapped
    # into sent's place) goes out until the test moves it on, however slow the machine.
    sim.clock(frozen=True)
    wamid = send_ok(sim, template_body())
    assert [s["status"] for s in sim_receiver.wait_for(lambda r: statuses_of(r, wamid))] == ["delivered"]
    sim.clock(advance_s=1)
    got = sim_receiver.wait_for(lambda r: len(statuses_of(r, wamid)) == 4 and statuses_of(r, wamid))
    kinds = [s["status"] for s in got]
    assert sorted(kinds) == ["delivered", "delivered", "sent", "sent"]
    assert kinds[0] == "delivered"     # swapped with sent


def test_injected_inbound_message_has_meta_shape(sim, sim_receiver):
    resp = sim.control("inbound", {"phone_number_id": TWO, "from": "15557770042",
                                   "text": "Hello there", "name": "Ana"})
    wamid = resp["id"]
    assert wamid.startswith("wamid.")
    [value] = sim_receiver.wait_for(lambda r: r.changes())
    assert value["metadata"]["phone_number_id"] == TWO
    assert value["contacts"] == [{"profile": {"name": "Ana"}, "wa_id": "15557770042"}]
    [msg] = value["messages"]
    assert msg["from"] == "15557770042" and msg["id"] == wamid
    assert msg["type"] == "text" and msg["text"] == {"body": "Hello there"}
    assert msg["timestamp"].isdigit()
    # The user wrote, so a free-form reply is now inside the 24-hour window.
    assert sim.send(text_body(to="15557770042"), pnid=TWO).status_code == 200


def test_injected_inbound_accepts_any_message_object(sim, sim_receiver):
    message = {"type": "interactive", "interactive": {
        "type": "button_reply", "button_reply": {"id": "yes", "title": "Yes"}}}
    sim.control("inbound", {"phone_number_id": ONE, "from": "15557770043", "message": message,
                            "context_id": "wamid.CONTEXT"})
    [msg] = sim_receiver.wait_for(lambda r: r.messages())
    assert msg["interactive"]["button_reply"] == {"id": "yes", "title": "Yes"}
    assert msg["context"] == {"from": NUMBERS[0]["display_phone_number"], "id": "wamid.CONTEXT"}


def test_recipients_answer_template_quick_replies(sim, sim_receiver):
    sim.faults(inbound={"reply_rate": 1.0, "kinds": {"text": 0, "button": 1, "interactive": 0}})
    wamid = send_ok(sim, template_body(to="15557770050"))
    [msg] = sim_receiver.wait_for(lambda r: r.messages())
    assert msg["type"] == "button"
    assert msg["button"]["text"] in ("Track my order", "Talk to an agent")
    assert msg["button"]["payload"] == msg["button"]["text"]
    assert msg["context"] == {"from": NUMBERS[0]["display_phone_number"], "id": wamid}
    assert msg["from"] == "15557770050"
    [value] = [v for v in sim_receiver.changes() if v.get("messages")]
    assert value["contacts"][0]["wa_id"] == "15557770050"


def test_quick_reply_payloads_from_the_send_are_echoed(sim, sim_receiver):
    sim.faults(inbound={"reply_rate": 1.0, "kinds": {"text": 0, "button": 1, "interactive": 0}})
    body = template_body(to="15557770051")
    body["template"]["components"] += [
        {"type": "button", "sub_type": "quick_reply", "index": "0",
         "parameters": [{"type": "payload", "payload": "TRACK-A1"}]},
        {"type": "button", "sub_type": "quick_reply", "index": "1",
         "parameters": [{"type": "payload", "payload": "AGENT-A1"}]}]
    send_ok(sim, body)
    [msg] = sim_receiver.wait_for(lambda r: r.messages())
    assert msg["button"]["payload"] in ("TRACK-A1", "AGENT-A1")


def test_recipients_answer_interactive_buttons(sim, sim_receiver):
    sim.control("inbound", {"phone_number_id": ONE, "from": "15557770052", "text": "menu"})
    sim_receiver.wait_for(lambda r: r.messages())
    sim_receiver.clear()
    sim.faults(inbound={"reply_rate": 1.0, "kinds": {"text": 0, "button": 0, "interactive": 1}})
    body = {"messaging_product": "whatsapp", "to": "15557770052", "type": "interactive",
            "interactive": {"type": "button", "body": {"text": "Confirm?"}, "action": {
                "buttons": [{"type": "reply", "reply": {"id": "confirm-1", "title": "Confirm"}}]}}}
    wamid = send_ok(sim, body)
    [msg] = sim_receiver.wait_for(lambda r: r.messages())
    assert msg["interactive"] == {"type": "button_reply",
                                  "button_reply": {"id": "confirm-1", "title": "Confirm"}}
    assert msg["context"]["id"] == wamid


def test_auto_replies_are_bounded_per_recipient(sim, sim_receiver):
    sim.faults(inbound={"reply_rate": 1.0, "kinds": {"text": 1, "button": 0, "interactive": 0}})
    for _ in range(3):
        send_ok(sim, template_body(to="15557770053"))
    sim_receiver.wait_for(lambda r: r.messages())
    sim.quiet()                          # nothing more is coming
    assert len(sim_receiver.messages()) == 1


def test_template_status_update_webhook_and_its_effect(sim, sim_receiver):
    resp = sim.control("template_status", {"waba_id": WABA_ONE, "name": "order_update",
                                           "language": "en_US", "status": "PAUSED",
                                           "reason": "LOW_QUALITY"})
    assert resp["updated"] == 1
    [value] = sim_receiver.wait_for(lambda r: r.changes("message_template_status_update"))
    assert value["event"] == "PAUSED"
    assert value["message_template_name"] == "order_update"
    assert value["message_template_language"] == "en_US"
    assert value["reason"] == "LOW_QUALITY"
    assert isinstance(value["message_template_id"], int)
    post = sim_receiver.posts[0]["json"]
    assert post["object"] == "whatsapp_business_account"
    assert post["entry"][0]["id"] == WABA_ONE and isinstance(post["entry"][0]["time"], int)
    assert verify_signature(sim_receiver.posts[0]["body"],
                            sim_receiver.posts[0]["headers"]["X-Hub-Signature-256"], [APP_SECRET])
    assert sim.send(template_body()).json()["error"]["code"] == 132015
    # The other WABA keeps its own copy of the template.
    assert sim.send(template_body(), pnid=THREE).status_code == 200
    sim.control("template_status", {"waba_id": WABA_ONE, "name": "order_update",
                                    "language": "en_US", "status": "APPROVED"})
    assert sim.send(template_body()).status_code == 200


def test_phone_number_quality_update_webhook(sim, sim_receiver):
    sim.control("quality", {"phone_number_id": ONE, "event": "DOWNGRADE",
                            "old_limit": "TIER_10K", "current_limit": "TIER_1K"})
    [value] = sim_receiver.wait_for(lambda r: r.changes("phone_number_quality_update"))
    assert value == {"display_phone_number": NUMBERS[0]["display_phone_number"],
                     "event": "DOWNGRADE", "old_limit": "TIER_10K", "current_limit": "TIER_1K"}
