"""api.process_webhooks: statuses, inbound messages and account updates, set-based and
idempotent under redelivery, duplicates and reordering; bad payloads dead-lettered."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.test_webhooks_payloads import (
    WABA_ID,
    World,
    account_update_payload,
    build_world,
    envelope,
    inbound,
    inbound_payload,
    messages_value,
    now_ts,
    quality_payload,
    status,
    statuses_payload,
    template_status_payload,
    wamid,
)

SNAPSHOT = """
SELECT (SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY wamid, status), '')) FROM core.status_events t),
       (SELECT md5(string_agg(t::text, ',' ORDER BY outbound_id)) FROM core.outbound_messages t),
       (SELECT md5(string_agg(t::text, ',' ORDER BY campaign_id)) FROM core.campaigns t),
       (SELECT md5(string_agg(t::text, ',' ORDER BY campaign_id, variant)) FROM core.campaign_templates t),
       (SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY message_id), '')) FROM core.inbox_messages t),
       (SELECT md5(string_agg((t.contact_id, t.wa_id, t.user_id, t.profile_name, t.last_inbound_at)::text,
                              ',' ORDER BY contact_id)) FROM core.contacts t),
       (SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY notification_id), '')) FROM core.notifications t),
       (SELECT md5(string_agg(t::text, ',' ORDER BY template_id)) FROM core.templates t),
       (SELECT md5(string_agg(t::text, ',' ORDER BY number_id)) FROM core.wa_numbers t)
"""


@pytest.fixture
def world(db: psycopg.Connection) -> World:
    return build_world(db)


def outbound_row(world: World, outbound_id: int) -> dict:
    cur = world.db.execute(
        """SELECT state, wamid, sent_at, delivered_at, read_at, failed_at, replied_at, error_code,
                  error_category, error_detail FROM core.outbound_messages WHERE outbound_id = %s""",
        (outbound_id,))
    return dict(zip([c.name for c in cur.description], cur.fetchone()))


# --- statuses ---------------------------------------------------------------------------

def test_sent_delivered_read_move_the_message_and_the_campaign_counters(world: World) -> None:
    a, wa = world.outbound(variant=1)
    b, wb = world.outbound(variant=2)
    result = world.deliver(
        statuses_payload(status(wa, "sent", ts=now_ts(-30)), status(wb, "sent", ts=now_ts(-30))),
        statuses_payload(status(wa, "delivered", ts=now_ts(-20)), status(wb, "delivered", ts=now_ts(-20))),
        statuses_payload(status(wa, "read", ts=now_ts(-10))),
    )
    assert result == {"payloads": 3, "status_events": 5, "messages": 0, "dead": 0}
    assert outbound_row(world, a)["state"] == "read"
    assert outbound_row(world, b)["state"] == "delivered"
    assert all(outbound_row(world, a)[k] is not None for k in ("sent_at", "delivered_at", "read_at"))
    assert world.campaign_counters() == {"sent": 2, "delivered": 2, "read": 1, "replied": 0,
                                         "failed": 0, "finished": 2}
    per_variant = world.db.execute(
        "SELECT variant, sent, delivered, read FROM core.campaign_templates WHERE campaign_id = %s ORDER BY 1",
        (world.campaign_id,)).fetchall()
    assert per_variant == [(1, 1, 1, 1), (2, 1, 1, 0)]
    stored = world.db.execute(
        "SELECT status, outbound_id, pricing_category, conversation_id IS NOT NULL FROM core.status_events "
        "WHERE wamid = %s ORDER BY occurred_at", (wa,)).fetchall()
    assert stored == [("sent", a, "marketing", True), ("delivered", a, "marketing", True), ("read", a, None, False)]


def test_redelivery_of_the_same_batch_changes_nothing(world: World) -> None:
    _a, wa = world.outbound()
    _b, wb = world.outbound()
    batch = [
        statuses_payload(status(wa, "sent"), status(wb, "sent"), status(wb, "delivered")),
        statuses_payload(status(wa, "failed", error_code=131049)),
        inbound_payload(inbound("button", {"payload": "STOP_PROMOS", "text": "Stop promotions"}, context=wb)),
        template_status_payload("PAUSED", template_id=594425479261596, name="spring_sale"),
        quality_payload("FLAGGED"),
        account_update_payload("ACCOUNT_VIOLATION", violation_info={"violation_type": "SCAM"}),
    ]
    first = world.deliver(*batch)
    assert first["dead"] == 0 and first["status_events"] == 4 and first["messages"] == 1
    before = world.one(SNAPSHOT)
    again = world.deliver(*batch)
    assert again == {"payloads": len(batch), "status_events": 0, "messages": 0, "dead": 0}
    assert world.one(SNAPSHOT) == before
    # Duplicates inside one batch count once as well.
    _c, wc = world.outbound()
    world.deliver(statuses_payload(status(wc, "sent"), status(wc, "sent")), statuses_payload(status(wc, "sent")))
    assert world.one("SELECT count(*) FROM core.status_events WHERE wamid = %s", wc) == (1,)


def test_reordered_statuses_end_in_the_right_state(world: World) -> None:
    a, wa = world.outbound()
    # Read first, then delivered, then sent: each in its own webhook, as Meta may deliver them.
    world.deliver(statuses_payload(status(wa, "read", ts=now_ts(-1))))
    world.deliver(statuses_payload(status(wa, "delivered", ts=now_ts(-2))))
    row = outbound_row(world, a)
    assert row["state"] == "read" and row["sent_at"] is None and row["delivered_at"] is not None
    world.deliver(statuses_payload(status(wa, "sent", ts=now_ts(-3))))
    row = outbound_row(world, a)
    assert row["state"] == "read"                      # a late sent changes nothing...
    assert row["sent_at"] is not None                  # ...but its timestamp
    assert world.campaign_counters()["read"] == 1
    assert world.campaign_counters()["sent"] == 1 and world.campaign_counters()["delivered"] == 1
    # All three in one batch, reversed, on another message.
    b, wb = world.outbound()
    world.deliver(statuses_payload(status(wb, "read"), status(wb, "delivered"), status(wb, "sent")))
    assert outbound_row(world, b)["state"] == "read"
    assert world.campaign_counters() == {"sent": 2, "delivered": 2, "read": 2, "replied": 0,
                                         "failed": 0, "finished": 2}


def test_status_before_the_send_is_reported_is_matched_by_opaque_id(world: World) -> None:
    a, _ = world.outbound(state="in_flight", with_wamid=False)
    b, _ = world.outbound(state="in_flight", with_wamid=False, campaign=False)
    wa, wb = wamid(), wamid()
    world.deliver(statuses_payload(status(wa, "sent", opaque=f"c{world.campaign_id}:{a}"),
                                   status(wb, "sent", opaque=str(b))))
    assert outbound_row(world, a)["wamid"] == wa and outbound_row(world, a)["state"] == "sent"
    assert outbound_row(world, b)["wamid"] == wb and outbound_row(world, b)["state"] == "sent"
    assert world.one("SELECT outbound_id FROM core.status_events WHERE wamid = %s", wa) == (a,)
    assert world.campaign_counters()["sent"] == 1
    # Later statuses match by the wamid the first one filled in, with or without opaque data.
    world.deliver(statuses_payload(status(wa, "delivered")))
    assert outbound_row(world, a)["state"] == "delivered"


def test_opaque_id_of_another_number_or_wamid_is_not_trusted(world: World) -> None:
    a, _wa = world.outbound()
    other = wamid()
    # Same opaque id but a different wamid than the one the message has: a different message.
    world.deliver(statuses_payload(status(other, "read", opaque=f"c{world.campaign_id}:{a}")))
    assert outbound_row(world, a)["state"] == "accepted"
    assert world.one("SELECT outbound_id FROM core.status_events WHERE wamid = %s", other) == (None,)
    # An opaque id arriving on a number the message was not sent from.
    b, _ = world.outbound(state="in_flight", with_wamid=False)
    world.db.execute("SELECT api.register_number(%s, '999000111', %s, 't')", (world.tenant_id, WABA_ID))
    world.deliver(statuses_payload(status(wamid(), "sent", opaque=str(b)), phone_number_id="999000111"))
    assert outbound_row(world, b)["state"] == "in_flight"


def test_status_of_an_unknown_message_is_kept_and_claimed_once_the_message_is_known(world: World) -> None:
    w = wamid()
    world.deliver(statuses_payload(status(w, "delivered")))
    assert world.one("SELECT outbound_id FROM core.status_events WHERE wamid = %s", w) == (None,)
    # The message becomes known (its wamid reported); the next status claims the early one too.
    a, _ = world.outbound(state="accepted", with_wamid=False)
    world.db.execute("UPDATE core.outbound_messages SET wamid = %s WHERE outbound_id = %s", (w, a))
    world.deliver(statuses_payload(status(w, "sent")))
    assert world.db.execute("SELECT status, outbound_id FROM core.status_events WHERE wamid = %s ORDER BY 1",
                            (w,)).fetchall() == [("delivered", a), ("sent", a)]
    assert outbound_row(world, a)["state"] == "delivered"


@pytest.mark.parametrize(("code", "category"), [(131026, "recipient"), (131049, "policy"),
                                                (131047, "policy"), (999999, "unknown")])
def test_failed_status_keeps_metas_error_code_and_category(world: World, code: int, category: str) -> None:
    a, wa = world.outbound()
    world.deliver(statuses_payload(status(wa, "failed", error_code=code)))
    row = outbound_row(world, a)
    assert (row["state"], row["error_code"], row["error_category"]) == ("failed", code, category)
    assert row["error_detail"] == "Message Undeliverable."
    assert world.one("SELECT error_code FROM core.status_events WHERE wamid = %s", wa) == (code,)
    assert world.campaign_counters()["failed"] == 1


def test_a_delivered_after_failed_is_the_truth_and_moves_every_counter_back(world: World) -> None:
    a, wa = world.outbound()
    world.deliver(statuses_payload(status(wa, "failed", error_code=131026)))
    before = world.campaign_counters()
    world.deliver(statuses_payload(status(wa, "delivered")))
    row = outbound_row(world, a)
    assert row["state"] == "delivered" and row["delivered_at"] is not None
    after = world.campaign_counters()
    assert (after["failed"] - before["failed"], after["delivered"] - before["delivered"]) == (-1, 1)
    assert world.one("SELECT coalesce(sum(count), 0) FROM core.campaign_errors WHERE campaign_id = %s",
                     world.campaign_id) == (0,)
    assert world.one("SELECT sum(failed), sum(delivered) FROM core.campaign_minutes WHERE campaign_id = %s",
                     world.campaign_id) == (0, 1)
    # A failed that comes later still wins over a delivered: only this direction revives.
    b, wb = world.outbound()
    world.deliver(statuses_payload(status(wb, "delivered"), status(wb, "failed", error_code=131026)))
    assert outbound_row(world, b)["state"] == "delivered"     # both in one batch: delivered is the truth


def test_a_webhook_of_a_thousand_statuses_is_processed_in_one_batch(world: World) -> None:
    msgs = [world.outbound(variant=1 + i % 2) for i in range(500)]
    payload = statuses_payload(*[status(w, s) for _, w in msgs for s in ("sent", "delivered")])
    result = world.deliver(payload)
    assert result == {"payloads": 1, "status_events": 1000, "messages": 0, "dead": 0}
    assert world.campaign_counters()["delivered"] == 500
    assert world.one("SELECT sum(delivered) FROM core.campaign_templates WHERE campaign_id = %s",
                     world.campaign_id) == (500,)


def test_deleted_warning_and_played_statuses_are_stored(world: World) -> None:
    a, wa = world.outbound()
    world.deliver(statuses_payload(status(wa, "deleted"), status(wa, "warning"), status(wa, "played")))
    assert world.one("SELECT count(*) FROM core.status_events WHERE wamid = %s", wa) == (3,)
    assert outbound_row(world, a)["state"] == "read"       # a played voice message was read


# --- inbound messages -------------------------------------------------------------------

def test_inbound_text_creates_the_contact_opens_the_window_and_is_stored_once(world: World) -> None:
    msg = inbound("text", {"body": "Hi, is the sale still on?"}, sender="447700900123")
    payload = inbound_payload(msg, wa_id="447700900123", name="Ana")
    assert world.deliver(payload)["messages"] == 1
    contact = world.one("SELECT contact_id, profile_name, last_inbound_at IS NOT NULL FROM core.contacts "
                        "WHERE tenant_id = %s AND wa_id = '447700900123'", world.tenant_id)
    assert contact[1:] == ("Ana", True)
    row = world.one("SELECT contact_id, number_id, direction, type, body, payload->>'id' FROM core.inbox_messages "
                    "WHERE wamid = %s", msg["id"])
    assert row == (contact[0], world.number_id, "in", "text", "Hi, is the sale still on?", msg["id"])
    assert world.deliver(payload)["messages"] == 0
    assert world.one("SELECT count(*) FROM core.inbox_messages") == (1,)


def test_inbound_message_updates_an_existing_contacts_name_and_window(world: World) -> None:
    contact = world.contact("447700900555")
    world.deliver(inbound_payload(inbound("text", {"body": "hello"}, sender="447700900555"),
                                  wa_id="447700900555", name="New Name"))
    assert world.one("SELECT profile_name, last_inbound_at > now() - interval '1 minute' FROM core.contacts "
                     "WHERE contact_id = %s", contact) == ("New Name", True)
    assert world.one("SELECT count(*) FROM core.contacts WHERE wa_id = '447700900555'") == (1,)


@pytest.mark.parametrize(("type_", "content", "body"), [
    ("text", {"body": "Does it come in another colour?"}, "Does it come in another colour?"),
    ("button", {"payload": "Yes, interested", "text": "Yes, interested"}, "Yes, interested"),
    ("interactive", {"type": "button_reply", "button_reply": {"id": "cancel-button", "title": "Cancel"}},
     "Cancel"),
    ("interactive", {"type": "list_reply", "list_reply": {"id": "priority_express",
                                                          "title": "Priority Mail Express",
                                                          "description": "Next Day to 2 Days"}},
     "Priority Mail Express"),
    ("reaction", {"message_id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=",
                  "emoji": "\U0001F44D"}, "\U0001F44D"),
    ("image", {"caption": "This is a caption", "mime_type": "image/jpeg",
               "sha256": "81d3bd8a8db4868c9520ed47186e8b7c5789e61ff79f7f834be6950b808a90d3",
               "id": "2754859441498128"}, "This is a caption"),
    ("document", {"filename": "invoice.pdf", "mime_type": "application/pdf",
                  "sha256": "81d3bd8a8db4868c9520ed47186e8b7c5789e61ff79f7f834be6950b808a90d3",
                  "id": "2754859441498129"}, "invoice.pdf"),
    ("audio", {"mime_type": "audio/ogg; codecs=opus", "sha256": "abc", "id": "2754859441498130",
               "voice": True}, None),
    ("location", {"latitude": 38.9, "longitude": -77.0, "name": "Philz Coffee",
                  "address": "101 Forest Ave, Palo Alto"}, "Philz Coffee, 101 Forest Ave, Palo Alto"),
    ("unsupported", None, None),
])
def test_every_inbound_type_lands_in_the_inbox(world: World, type_: str, content: dict | None,
                                               body: str | None) -> None:
    msg = inbound(type_, content)
    if type_ == "unsupported":
        msg["errors"] = [{"code": 131051, "title": "Message type unknown",
                          "message": "Message type unknown",
                          "error_data": {"details": "Message type is currently not supported."}}]
    assert world.deliver(inbound_payload(msg))["messages"] == 1
    assert world.one("SELECT type, body, payload = %s FROM core.inbox_messages WHERE wamid = %s",
                     Jsonb(msg), msg["id"]) == (type_, body, True)


def test_a_reply_is_attributed_to_the_campaign_message_once(world: World) -> None:
    a, wa = world.outbound(variant=2)
    first = inbound("button", {"payload": "Yes", "text": "Yes"}, context=wa)
    second = inbound("text", {"body": "and another thing"}, context=wa)
    world.deliver(inbound_payload(first), inbound_payload(second))
    assert outbound_row(world, a)["replied_at"] is not None
    assert world.campaign_counters()["replied"] == 1
    assert world.db.execute("SELECT variant, replied FROM core.campaign_templates WHERE campaign_id = %s "
                            "ORDER BY 1", (world.campaign_id,)).fetchall() == [(1, 0), (2, 1)]
    assert world.one("SELECT outbound_id, campaign_id FROM core.inbox_messages WHERE wamid = %s",
                     first["id"]) == (a, world.campaign_id)
    # A reply to a message pgwa did not send is stored, unattributed.
    stray = inbound("text", {"body": "?"}, context=wamid())
    world.deliver(inbound_payload(stray))
    assert world.one("SELECT outbound_id FROM core.inbox_messages WHERE wamid = %s", stray["id"]) == (None,)
    assert world.campaign_counters()["replied"] == 1


def test_a_user_known_only_by_business_scoped_id_becomes_a_contact(world: World) -> None:
    bsuid = "US.13491208655302741918"
    msg = inbound("text", {"body": "hi from a username"}, sender="", from_user_id=bsuid)
    payload = envelope("messages", messages_value(
        contacts=[{"profile": {"name": "Jo", "username": "@jo"}, "wa_id": "", "user_id": bsuid}],
        messages=[msg]))
    assert world.deliver(payload)["messages"] == 1
    contact = world.one("SELECT contact_id, wa_id, user_id, profile_name FROM core.contacts WHERE user_id = %s",
                        bsuid)
    assert contact[1:] == (None, bsuid, "Jo")
    # Later the phone number is shared too: the same contact, now keyed by both.
    later = inbound("text", {"body": "now with my number"}, sender="16505550001", from_user_id=bsuid)
    world.deliver(inbound_payload(later, wa_id="16505550001", user_id=bsuid, name="Jo"))
    assert world.one("SELECT contact_id, wa_id FROM core.contacts WHERE user_id = %s", bsuid) == \
        (contact[0], "16505550001")
    assert world.db.execute("SELECT DISTINCT contact_id FROM core.inbox_messages").fetchall() == [(contact[0],)]


def test_a_webhook_of_a_thousand_messages_gives_each_sender_its_own_contacts_entry(world: World) -> None:
    # Meta puts up to 1,000 messages in one POST, with their senders in contacts[] in any
    # order; one sender is known only by a business-scoped user id.
    senders = [f"4477009{i:05d}" for i in range(999)]
    msgs = [inbound("text", {"body": f"hi {i}"}, sender=s) for i, s in enumerate(senders)]
    msgs.append(inbound("text", {"body": "by username"}, sender="", from_user_id="US.1000"))
    contacts = [{"profile": {"name": f"Name {i}"}, "wa_id": s} for i, s in enumerate(senders)]
    contacts.append({"profile": {"name": "Jo"}, "wa_id": "", "user_id": "US.1000"})
    payload = envelope("messages", messages_value(contacts=contacts[::-1], messages=msgs))
    assert world.deliver(payload) == {"payloads": 1, "status_events": 0, "messages": 1000, "dead": 0}
    names = dict(world.db.execute("SELECT coalesce(wa_id, user_id), profile_name FROM core.contacts "
                                  "WHERE tenant_id = %s AND (wa_id = ANY (%s) OR user_id = 'US.1000')",
                                  (world.tenant_id, senders)).fetchall())
    assert names == {**{s: f"Name {i}" for i, s in enumerate(senders)}, "US.1000": "Jo"}


def test_new_inbound_messages_reach_the_bot_hook_once(world: World) -> None:
    world.db.execute("CREATE TABLE public.hook_calls (ids bigint[])")
    world.db.execute("""CREATE OR REPLACE FUNCTION core.on_inbound(p_message_ids bigint[]) RETURNS void
                        LANGUAGE sql SET search_path = '' AS
                        'INSERT INTO public.hook_calls VALUES (p_message_ids)'""")
    a = inbound_payload(inbound("text", {"body": "one"}))
    b = inbound_payload(inbound("text", {"body": "two"}))
    world.deliver(a, b)
    world.deliver(a)
    calls = world.db.execute("SELECT ids FROM public.hook_calls").fetchall()
    assert len(calls) == 1 and sorted(calls[0][0]) == [r[0] for r in world.db.execute(
        "SELECT message_id FROM core.inbox_messages ORDER BY 1")]


# --- account-level updates ----------------------------------------------------------------

def test_template_status_update_sets_the_status_and_notifies_when_paused(world: World) -> None:
    t0 = 1_750_000_000
    world.deliver(template_status_payload("PAUSED", template_id=594425479261596, name="spring_sale",
                                          reason="INCORRECT_CATEGORY", entry_time=t0))
    assert world.one("SELECT status FROM core.templates WHERE template_id = %s", world.template_ids[0]) == \
        ("PAUSED",)
    note = world.one("SELECT kind, severity, message FROM core.notifications WHERE tenant_id = %s",
                     world.tenant_id)
    assert note[:2] == ("template_status", "warning") and "spring_sale" in note[2] and "PAUSED" in note[2]
    # Matched by name and language when Meta's id is unknown here; APPROVED raises nothing.
    world.db.execute("UPDATE core.templates SET meta_template_id = NULL WHERE template_id = %s",
                     (world.template_ids[1],))
    world.deliver(template_status_payload("REJECTED", template_id=1, name="spring_sale_b", entry_time=t0))
    world.deliver(template_status_payload("APPROVED", template_id=594425479261596, name="spring_sale",
                                          entry_time=t0 + 60))
    assert world.db.execute("SELECT status FROM core.templates ORDER BY template_id").fetchall() == \
        [("APPROVED",), ("REJECTED",)]
    # A late copy of the older PAUSED event does not undo the newer APPROVED.
    world.deliver(template_status_payload("PAUSED", template_id=594425479261596, name="spring_sale",
                                          entry_time=t0))
    assert world.one("SELECT status FROM core.templates WHERE template_id = %s", world.template_ids[0]) == \
        ("APPROVED",)
    # The template's own notices: PAUSED and REJECTED (the campaigns using it hear of the
    # pause and of the approval that lets them resume, each in a notice of its own).
    assert world.one("SELECT count(*) FROM core.notifications WHERE kind = 'template_status'") == (2,)
    world.deliver(template_status_payload("DISABLED", template_id=594425479261596, name="spring_sale",
                                          entry_time=t0 + 120))
    assert world.one("SELECT severity FROM core.notifications ORDER BY notification_id DESC LIMIT 1") == \
        ("critical",)


def test_phone_quality_update_sets_the_rating_and_notifies(world: World) -> None:
    world.deliver(quality_payload("FLAGGED"))
    assert world.one("SELECT quality_rating FROM core.wa_numbers WHERE number_id = %s", world.number_id) == \
        ("RED",)
    assert world.one("SELECT kind, severity FROM core.notifications") == ("phone_quality", "critical")
    world.deliver(quality_payload("UNFLAGGED"))
    assert world.one("SELECT quality_rating FROM core.wa_numbers WHERE number_id = %s", world.number_id) == \
        ("GREEN",)
    world.deliver(quality_payload("THROUGHPUT_UPGRADE", current_limit="TIER_UNLIMITED"))
    assert world.one("SELECT quality_rating FROM core.wa_numbers WHERE number_id = %s", world.number_id) == \
        ("GREEN",)
    # The upgrade is news, not an incident (tests/test_webhooks_account.py has the rest).
    assert world.db.execute("SELECT severity FROM core.notifications ORDER BY notification_id").fetchall() == \
        [("critical",), ("info",)]


def test_account_update_notifies_the_tenant(world: World) -> None:
    world.deliver(account_update_payload("DISABLED_UPDATE",
                                         ban_info={"waba_ban_state": "DISABLE", "waba_ban_date": "2026-01-01"}))
    world.deliver(account_update_payload("VERIFIED_ACCOUNT"))
    assert world.db.execute("SELECT kind, severity, details->'event'->>'event' FROM core.notifications "
                            "ORDER BY notification_id").fetchall() == \
        [("account_update", "critical", "DISABLED_UPDATE"), ("account_update", "info", "VERIFIED_ACCOUNT")]


# --- robustness ---------------------------------------------------------------------------

def test_a_payload_that_cannot_be_processed_is_dead_lettered_and_the_rest_go_on(world: World) -> None:
    a, wa = world.outbound()
    bad = {"object": "whatsapp_business_account", "entry": {"id": "not-a-list"}}
    also_bad = statuses_payload(status(wamid(), "sent"))
    also_bad["entry"][0]["changes"][0]["value"]["statuses"] = {"id": "not-a-list"}
    result = world.deliver(statuses_payload(status(wa, "sent")), bad, also_bad,
                           statuses_payload(status(wa, "delivered")))
    assert result["payloads"] == 4 and result["dead"] == 2 and result["status_events"] == 2
    assert outbound_row(world, a)["state"] == "delivered"
    dead = world.db.execute("SELECT message->>'reason', message->>'sqlstate', message->'payload' "
                            "FROM pgmq.q_webhooks_dead ORDER BY msg_id").fetchall()
    assert [d[2] for d in dead] == [bad, also_bad]
    assert all(d[0] and d[1] for d in dead)
    assert world.one("SELECT count(*) FROM pgmq.q_webhooks") == (0,)
    assert world.one("SELECT count(*) FROM pgmq.a_webhooks") == (2,)


def test_processed_payloads_are_archived_with_their_raw_content(world: World) -> None:
    payload = statuses_payload(status(wamid(), "sent"))
    payload["entry"][0]["changes"][0]["value"]["some_future_field"] = {"kept": True}
    world.deliver(payload)
    assert world.one("SELECT message FROM pgmq.a_webhooks") == (payload,)
    assert world.one("SELECT count(*) FROM pgmq.q_webhooks") == (0,)


def test_unknown_fields_statuses_and_objects_do_not_crash(world: World) -> None:
    result = world.deliver(
        envelope("message_echoes", {"some": "thing"}),
        envelope("messages", messages_value(statuses=[{"id": wamid(), "status": "something_new",
                                                       "timestamp": "not a number"}])),
        envelope("messages", messages_value(statuses=[{"status": "sent"}])),       # no id
        {"object": "instagram", "entry": [{"id": "1", "changes": []}]},
        {"hello": "world"},
        statuses_payload(status(wamid(), "sent", ts="garbage")),
    )
    assert result == {"payloads": 6, "status_events": 1, "messages": 0, "dead": 0}


def test_ingest_refuses_what_is_not_a_json_object(db: psycopg.Connection) -> None:
    with pytest.raises(psycopg.Error) as info:
        db.execute("SELECT api.ingest_webhooks(ARRAY['[1, 2]'::jsonb])")
    assert info.value.diag.sqlstate == "PW105"
    assert db.execute("SELECT api.ingest_webhooks('{}')").fetchone() == ([],)
    assert db.execute("SELECT api.ingest_webhook('{\"object\": \"x\"}')").fetchone()[0] > 0


def test_process_webhooks_checks_its_batch_size(db: psycopg.Connection) -> None:
    for bad in (0, 10001, None):
        with pytest.raises(psycopg.Error) as info:
            db.execute("SELECT api.process_webhooks(%s)", (bad,))
        assert info.value.diag.sqlstate == "PW100"


def test_idle_processing_restores_the_notify_throttle_a_crash_empties(db: psycopg.Connection) -> None:
    db.execute("DELETE FROM pgmq.notify_insert_throttle")
    db.execute("SELECT api.process_webhooks()")
    assert db.execute("SELECT queue_name, throttle_interval_ms FROM pgmq.notify_insert_throttle").fetchall() == \
        [("webhooks", 50)]


def test_two_workers_never_process_the_same_payload(world: World, db_url: str) -> None:
    msgs = [world.outbound() for _ in range(40)]
    world.ingest(*[statuses_payload(status(w, "sent")) for _, w in msgs])
    with psycopg.connect(db_url) as other:
        # The other worker's transaction holds its batch while this one reads.
        taken = other.execute("SELECT payloads FROM api.process_webhooks(15)").fetchone()[0]
        mine = world.process(100)
        other.commit()
    assert taken == 15 and mine["payloads"] == 25
    assert world.one("SELECT count(*) FROM core.status_events") == (40,)
    assert world.campaign_counters()["sent"] == 40
