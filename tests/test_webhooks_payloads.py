"""Helpers for the webhook tests (no tests here).

Payloads in the shapes of Meta's webhook references (messages/status, messages/text,
button, interactive, reaction, image, document, business-scoped user ids,
message_template_status_update, phone_number_quality_update, account_update), and the
little world (tenant, number, campaign, outbound messages) they refer to.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import psycopg
from psycopg.types.json import Jsonb

WABA_ID = "102290129340398"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_PHONE = "15550783881"

_ids = itertools.count(1)


def wamid() -> str:
    """A fresh wamid-shaped id."""
    return f"wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI{next(_ids):012d}QUFERjg0NDEzNDdFODU3MUMxMAA="


def now_ts(offset: int = 0) -> str:
    return str(int(time.time()) + offset)


def envelope(field_name: str, value: dict, *, waba_id: str = WABA_ID,
             entry_time: int | None = None) -> dict:
    entry: dict = {"id": waba_id}
    if entry_time is not None:
        entry["time"] = entry_time
    entry["changes"] = [{"value": value, "field": field_name}]
    return {"object": "whatsapp_business_account", "entry": [entry]}


def messages_value(*, phone_number_id: str = PHONE_NUMBER_ID, **items) -> dict:
    return {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": DISPLAY_PHONE, "phone_number_id": phone_number_id},
            **items}


def status(wamid_: str, status_: str, *, ts: str | None = None, recipient: str = "16505551234",
           opaque: str | None = None, error_code: int | None = None) -> dict:
    """One statuses[] element as Meta sends it (v23-style, with conversation and pricing)."""
    s: dict = {"id": wamid_, "status": status_, "timestamp": ts or now_ts(),
               "recipient_id": recipient}
    if opaque is not None:
        s["biz_opaque_callback_data"] = opaque
    if status_ in ("sent", "delivered"):
        conv = {"id": "a75d17ad06104c51166f948319b03c6a", "origin": {"type": "marketing"}}
        if status_ == "sent":
            conv["expiration_timestamp"] = now_ts(86400)
        s["conversation"] = conv
        s["pricing"] = {"billable": True, "pricing_model": "PMP", "type": "regular",
                        "category": "marketing"}
    if status_ == "failed":
        s["errors"] = [{"code": error_code or 131026, "title": "Message undeliverable",
                        "message": "Message undeliverable",
                        "error_data": {"details": "Message Undeliverable."},
                        "href": "/documentation/business-messaging/whatsapp/support/error-codes/"}]
    return s


def statuses_payload(*items: dict, phone_number_id: str = PHONE_NUMBER_ID) -> dict:
    return envelope("messages", messages_value(phone_number_id=phone_number_id,
                                               statuses=list(items)))


def inbound_payload(message: dict, *, wa_id: str = "16505551234", name: str = "Kerry Fisher",
                    user_id: str | None = None, phone_number_id: str = PHONE_NUMBER_ID) -> dict:
    """One inbound message with its contacts[] entry, as Meta delivers them (one per POST)."""
    contact: dict = {"profile": {"name": name}, "wa_id": wa_id}
    if user_id is not None:
        contact["user_id"] = user_id
    return envelope("messages", messages_value(phone_number_id=phone_number_id, contacts=[contact],
                                               messages=[message]))


def inbound(type_: str, content: dict | None, *, sender: str = "16505551234",
            context: str | None = None, from_user_id: str | None = None,
            id_: str | None = None) -> dict:
    m: dict = {}
    if context is not None:
        m["context"] = {"from": DISPLAY_PHONE, "id": context}
    m["from"] = sender
    if from_user_id is not None:
        m["from_user_id"] = from_user_id
    m["id"] = id_ or wamid()
    m["timestamp"] = now_ts()
    m["type"] = type_
    if content is not None:
        m[type_] = content
    return m


def template_status_payload(event: str, *, template_id: int, name: str, language: str = "en_US",
                            reason: str = "NONE", entry_time: int | None = None) -> dict:
    value = {"event": event, "message_template_id": template_id, "message_template_name": name,
             "message_template_language": language, "reason": reason}
    if event == "PAUSED":
        value["other_info"] = {"title": "FIRST_PAUSE",
                               "description": "Your WhatsApp message template has been paused "
                                              "for 3 hours."}
    return envelope("message_template_status_update", value,
                    entry_time=entry_time if entry_time is not None else int(time.time()))


def quality_payload(event: str, *, current_limit: str = "TIER_10K") -> dict:
    return envelope("phone_number_quality_update",
                    {"display_phone_number": DISPLAY_PHONE, "event": event,
                     "current_limit": current_limit},
                    entry_time=int(time.time()))


def account_update_payload(event: str, **extra) -> dict:
    return envelope("account_update", {"phone_number": DISPLAY_PHONE, "event": event, **extra},
                    entry_time=int(time.time()))


@dataclass
class World:
    """A tenant with one number, a running two-variant campaign and its contacts."""

    db: psycopg.Connection
    tenant_id: int
    number_id: int
    campaign_id: int
    template_ids: list[int]
    contacts: list[int] = field(default_factory=list)

    def outbound(self, *, state: str = "accepted", with_wamid: bool = True, variant: int = 1,
                 campaign: bool = True) -> tuple[int, str | None]:
        """A sent message (state accepted, wamid known) or one still in flight."""
        contact = self.contact(f"1650555{next(_ids):04d}")
        w = wamid() if with_wamid else None
        row = self.db.execute(
            """INSERT INTO core.outbound_messages (number_id, campaign_id, variant, contact_id,
                                                   kind, state, wamid, attempts, claimed_at,
                                                   accepted_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, 1, now(),
                       CASE WHEN %s = 'accepted' THEN now() END)
               RETURNING outbound_id""",
            (self.number_id, self.campaign_id if campaign else None, variant if campaign else None,
             contact, "campaign" if campaign else "reply", state, w, state)).fetchone()
        if campaign:
            # The counters report_sends would have moved: an accepted message is sent and finished.
            done = int(state == "accepted")
            self.db.execute("UPDATE core.campaigns SET total = total + 1, sent = sent + %s, "
                            "finished = finished + %s WHERE campaign_id = %s",
                            (done, done, self.campaign_id))
            self.db.execute("UPDATE core.campaign_templates SET total = total + 1, "
                            "sent = sent + %s WHERE campaign_id = %s AND variant = %s",
                            (done, self.campaign_id, variant))
        return row[0], w

    def contact(self, wa_id: str) -> int:
        row = self.db.execute(
            "INSERT INTO core.contacts (tenant_id, wa_id) VALUES (%s, %s) RETURNING contact_id",
            (self.tenant_id, wa_id)).fetchone()
        self.contacts.append(row[0])
        return row[0]

    def ingest(self, *payloads: dict) -> list[int]:
        return self.db.execute("SELECT api.ingest_webhooks(%s::jsonb[])",
                               ([Jsonb(p) for p in payloads],)).fetchone()[0]

    def process(self, max_: int = 100) -> dict:
        cur = self.db.execute("SELECT * FROM api.process_webhooks(%s)", (max_,))
        return dict(zip([c.name for c in cur.description], cur.fetchone()))

    def deliver(self, *payloads: dict) -> dict:
        """Ingest and process until the queue is empty; returns the summed counts."""
        self.ingest(*payloads)
        total = {"payloads": 0, "status_events": 0, "messages": 0, "dead": 0}
        while True:
            r = self.process()
            for k in total:
                total[k] += r[k]
            if r["payloads"] == 0:
                return total

    def one(self, query: str, *params):
        return self.db.execute(query, params).fetchone()

    def campaign_counters(self) -> dict:
        cur = self.db.execute(
            "SELECT sent, delivered, read, replied, failed, finished FROM core.campaigns "
            "WHERE campaign_id = %s",
            (self.campaign_id,))
        return dict(zip([c.name for c in cur.description], cur.fetchone()))


def build_world(db: psycopg.Connection, *, app_secret: str = "app-secret") -> World:
    tenant_id = db.execute("SELECT api.create_tenant('Acme')").fetchone()[0]
    number_id = db.execute(
        "SELECT api.register_number(%s, %s, %s, 'token', %s, 80, %s)",
        (tenant_id, PHONE_NUMBER_ID, WABA_ID, app_secret, DISPLAY_PHONE)).fetchone()[0]
    # Registering with an app secret is audited; the tests count what webhooks raise.
    db.execute("DELETE FROM core.notifications WHERE kind = 'app_secret_changed'")
    template_ids = [
        db.execute("SELECT api.upsert_template(%s, %s, %s, 'en_US', '[]', 'APPROVED', "
                   "'MARKETING', %s)",
                   (tenant_id, WABA_ID, name, meta_id)).fetchone()[0]
        for name, meta_id in (("spring_sale", "594425479261596"),
                              ("spring_sale_b", "594425479261597"))
    ]
    campaign_id = db.execute(
        """INSERT INTO core.campaigns (tenant_id, number_id, name, status, started_at)
           VALUES (%s, %s, 'Spring', 'running', now()) RETURNING campaign_id""",
        (tenant_id, number_id)).fetchone()[0]
    for variant, template_id in enumerate(template_ids, start=1):
        db.execute("INSERT INTO core.campaign_templates (campaign_id, variant, template_id) "
                   "VALUES (%s, %s, %s)",
                   (campaign_id, variant, template_id))
    return World(db, tenant_id, number_id, campaign_id, template_ids)
