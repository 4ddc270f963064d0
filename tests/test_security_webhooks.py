"""Webhooks from a hostile tenant, end to end: signed by the tenant's own app, posted over
HTTP to the running receiver, processed by the worker's own webhook loop.

A payload signed with a number's own app secret speaks only for the numbers registered
with that secret; a poison payload is retried and set aside without holding up the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import orjson
import psycopg
import pytest

from api.app import create_app
from api.signature import sign
from pgwa.config import Settings
from tests.test_webhooks_http import serve
from tests.test_webhooks_payloads import (
    envelope,
    inbound,
    inbound_payload,
    status,
    statuses_payload,
    template_status_payload,
    wamid,
)
from worker.webhooks import WebhookProcessor

PLATFORM = "platform-app-secret"
EVIL = "evil"
CUSTOMER = "16505550100"

A_NUMBER, A_WABA = "7770001", "8880001"
B_NUMBER, B_WABA = "7770002", "8880002"


class Platform:
    """Tenant A (the platform's app) and tenant B (its own app, secret "evil")."""

    def __init__(self, db: psycopg.Connection, db_url: str) -> None:
        self.db = db
        self.db_url = db_url
        self.a = db.execute("SELECT api.create_tenant('Victim')").fetchone()[0]
        self.b = db.execute("SELECT api.create_tenant('Mallory')").fetchone()[0]
        self.a_number = db.execute("SELECT api.register_number(%s, %s, %s, 'token-a', NULL, 80)",
                                   (self.a, A_NUMBER, A_WABA)).fetchone()[0]
        self.b_number = db.execute("SELECT api.register_number(%s, %s, %s, 'token-b', %s, 80)",
                                   (self.b, B_NUMBER, B_WABA, EVIL)).fetchone()[0]
        self.a_template = db.execute(
            "SELECT api.upsert_template(%s, %s, 'spring_sale', 'en_US', '[]', 'APPROVED', 'MARKETING', "
            "'594425479261596')", (self.a, A_WABA)).fetchone()[0]

    def processor(self, **settings: object) -> WebhookProcessor:
        return WebhookProcessor(Settings(database_url=self.db_url, **settings))

    def process(self, processor: WebhookProcessor | None = None, rounds: int = 1) -> list[tuple]:
        proc = processor or self.processor()

        async def go() -> list[tuple]:
            try:
                return [await proc.process_once() for _ in range(rounds)]
            finally:
                await proc.db.close()
        return asyncio.run(go())

    def one(self, sql: str, *params: object) -> tuple:
        return self.db.execute(sql, params).fetchone()


@pytest.fixture
def platform(db: psycopg.Connection, db_url: str) -> Platform:
    return Platform(db, db_url)


@pytest.fixture
def receiver(platform: Platform) -> Iterator[httpx.Client]:
    # Started after B registered its secret, as a receiver that has been up a while is.
    app = create_app(Settings(database_url=platform.db_url, verify_token="t", app_secrets=(PLATFORM,)))
    with serve(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client


def post(client: httpx.Client, payload: dict, secret: str) -> int:
    body = orjson.dumps(payload)
    return client.post("/webhooks/whatsapp", content=body,
                       headers={"Content-Type": "application/json",
                                "X-Hub-Signature-256": sign(body, secret)}).status_code


def text(body: str, **kw: object) -> dict:
    return inbound("text", {"body": body}, sender=CUSTOMER, **kw)


def on(number: str, waba: str, payload: dict) -> dict:
    """``payload`` re-addressed: entry[].id and metadata.phone_number_id."""
    payload["entry"][0]["id"] = waba
    payload["entry"][0]["changes"][0]["value"].setdefault("metadata", {})["phone_number_id"] = number
    return payload


def test_a_tenants_app_cannot_speak_for_another_tenants_number(platform: Platform,
                                                               receiver: httpx.Client) -> None:
    p = platform
    # A's customer opted out, through A's own (platform-signed) webhook.
    assert post(receiver, on(A_NUMBER, A_WABA, inbound_payload(text("STOP"), wa_id=CUSTOMER)), PLATFORM) == 200
    p.process()
    assert p.one("SELECT opted_out FROM core.contacts WHERE tenant_id = %s AND wa_id = %s", p.a, CUSTOMER) == (True,)
    inbox_before = p.one("SELECT count(*) FROM core.inbox_messages WHERE number_id = %s", p.a_number)

    # B signs with its own app: a START for A's number under A's WABA, beside a message
    # for A's number under B's own WABA (so the signature verifies: B's app holds that
    # WABA); a message naming only A's WABA; a PAUSED for A's template by its Meta id.
    both = on(A_NUMBER, A_WABA, inbound_payload(text("START"), wa_id=CUSTOMER))
    both["entry"].append(on(A_NUMBER, B_WABA, inbound_payload(text("hello from B"), wa_id=CUSTOMER))["entry"][0])
    forged = [
        both,
        on(A_NUMBER, A_WABA, inbound_payload(text("second"), wa_id=CUSTOMER)),
        on(B_NUMBER, B_WABA, template_status_payload("PAUSED", template_id=594425479261596,
                                                     name="spring_sale")),
    ]
    # A body naming only A's WABA is checked against no secret of B's: refused at the door.
    assert [post(receiver, f, EVIL) for f in forged] == [200, 401, 200]
    p.process()

    assert p.one("SELECT opted_out FROM core.contacts WHERE tenant_id = %s AND wa_id = %s", p.a, CUSTOMER) == (True,)
    assert p.one("SELECT count(*) FROM core.inbox_messages WHERE number_id = %s", p.a_number) == inbox_before
    assert p.one("SELECT status FROM core.templates WHERE template_id = %s", p.a_template) == ("APPROVED",)
    # One operator notification (no tenant), counting the two changes dropped.
    notes = p.db.execute("SELECT tenant_id, kind, details FROM core.notifications "
                         "WHERE kind = 'webhook_forbidden'").fetchall()
    assert len(notes) == 1 and notes[0][0] is None and notes[0][2]["changes"] == 2
    assert notes[0][2]["signer_tenants"] == [p.b] and EVIL not in orjson.dumps(notes[0][2]).decode()
    assert not p.db.execute("SELECT 1 FROM core.notifications WHERE tenant_id = %s AND kind <> 'app_secret_changed'",
                            (p.b,)).fetchall()

    # B's app still speaks for B's own number.
    assert post(receiver, on(B_NUMBER, B_WABA, inbound_payload(text("mine"), wa_id=CUSTOMER)), EVIL) == 200
    p.process()
    assert p.one("SELECT count(*) FROM core.inbox_messages WHERE number_id = %s", p.b_number) == (1,)
    # And a second forgery in the same hour counts into the same notification.
    assert post(receiver, forged[0], EVIL) == 200
    p.process()
    assert p.one("SELECT count(*), max((details->>'changes')::int) FROM core.notifications "
                 "WHERE kind = 'webhook_forbidden'") == (1, 4)
    assert p.one("SELECT opted_out FROM core.contacts WHERE tenant_id = %s AND wa_id = %s", p.a, CUSTOMER) == (True,)


def test_ids_guessed_from_another_tenant_never_move_its_rows(platform: Platform,
                                                             receiver: httpx.Client) -> None:
    """Through B's own number (a webhook B's app may sign): a status naming A's message by
    its outbound id (biz_opaque_callback_data) or its wamid, and a reply quoting A's
    message, touch nothing of A's."""
    p = platform
    a_wamid = wamid()
    contact_id = p.one(
        "INSERT INTO core.contacts (tenant_id, wa_id) VALUES (%s, %s) RETURNING contact_id", p.a, CUSTOMER)[0]
    outbound_id = p.one(
        """INSERT INTO core.outbound_messages (number_id, contact_id, kind, state, wamid)
           VALUES (%s, %s, 'agent', 'sent', %s) RETURNING outbound_id""", p.a_number, contact_id, a_wamid)[0]
    forged = [
        statuses_payload(status(wamid(), "failed", opaque=str(outbound_id)), phone_number_id=B_NUMBER),
        statuses_payload(status(a_wamid, "read"), phone_number_id=B_NUMBER),
        inbound_payload(text("re", context=a_wamid), wa_id=CUSTOMER, phone_number_id=B_NUMBER),
    ]
    assert [post(receiver, on(B_NUMBER, B_WABA, f), EVIL) for f in forged] == [200] * 3
    p.process()
    assert p.one("SELECT state, wamid, replied_at FROM core.outbound_messages WHERE outbound_id = %s",
                 outbound_id) == ("sent", a_wamid, None)
    # The reply is B's own message, attributed to nothing of A's.
    assert p.one("SELECT outbound_id FROM core.inbox_messages WHERE number_id = %s", p.b_number) == (None,)


def test_a_status_for_a_wamid_not_sent_yet_never_moves_another_tenants_message(
        platform: Platform, receiver: httpx.Client) -> None:
    """B learns (or guesses) the wamid A's next send will get, and posts a failed status
    for it through B's own number before A's worker reports the send: the event is kept
    as B's, and neither A's report nor A's genuine statuses pick it up."""
    p = platform
    contact_id = p.one(
        "INSERT INTO core.contacts (tenant_id, wa_id) VALUES (%s, %s) RETURNING contact_id", p.a, CUSTOMER)[0]
    outbound_id = p.one(
        """INSERT INTO core.outbound_messages (number_id, contact_id, kind, state)
           VALUES (%s, %s, 'agent', 'in_flight') RETURNING outbound_id""", p.a_number, contact_id)[0]
    future = wamid()
    forged = statuses_payload(status(future, "failed", error_code=131026), phone_number_id=B_NUMBER)
    assert post(receiver, on(B_NUMBER, B_WABA, forged), EVIL) == 200
    # Without a number, a tenant's app speaks for nothing in the messages field.
    nameless = statuses_payload(status(future, "read"))
    del nameless["entry"][0]["changes"][0]["value"]["metadata"]
    nameless["entry"][0]["id"] = B_WABA
    assert post(receiver, nameless, EVIL) == 200
    p.process()
    # A's worker reports the send with that wamid; then A's genuine delivery arrives.
    p.db.execute("""SELECT api.report_sends(jsonb_build_array(jsonb_build_object(
                        'outbound_id', %s::bigint, 'queue_name', core.reply_queue(%s), 'msg_id', 0,
                        'wamid', %s::text, 'message_status', 'accepted')))""",
                 (outbound_id, p.a_number, future))
    assert post(receiver, statuses_payload(status(future, "delivered"), phone_number_id=A_NUMBER), PLATFORM) == 200
    p.process()
    assert p.one("SELECT state, error_code FROM core.outbound_messages WHERE outbound_id = %s",
                 outbound_id) == ("delivered", None)
    assert p.one("SELECT count(*) FROM core.status_events WHERE wamid = %s AND outbound_id IS NULL",
                 future) == (1,)


def test_a_poison_payload_is_retried_then_dead_lettered_without_holding_up_the_rest(
        platform: Platform, receiver: httpx.Client, db_url: str) -> None:
    p = platform
    p.db.execute("UPDATE core.settings SET webhook_max_attempts = 2, webhook_claim_s = 1")
    # The poison: an inbound message for B whose processing cannot finish, because the
    # contact row it must update stays locked (as a pathological regex or a stuck
    # backend would hold it) longer than the webhook loop's statement timeout.
    assert post(receiver, on(B_NUMBER, B_WABA, inbound_payload(text("first"), wa_id=CUSTOMER)), EVIL) == 200
    p.process()
    proc = p.processor(webhook_timeout_ms=300, webhook_single_timeout_ms=200)
    with psycopg.connect(db_url) as holder:
        holder.execute("SELECT 1 FROM core.contacts WHERE tenant_id = %s FOR UPDATE", (p.b,))
        assert post(receiver, on(B_NUMBER, B_WABA, inbound_payload(text("stuck"), wa_id=CUSTOMER)), EVIL) == 200
        # A's statuses, posted after it, ride in the same batch.
        for _ in range(5):
            assert post(receiver, statuses_payload(status(wamid(), "delivered"), phone_number_id=A_NUMBER),
                        PLATFORM) == 200
        first = p.process(proc)[0]
        # The batch timed out as a whole, then went one by one: A's five are processed
        # while the poison is still held, waiting for its next attempt.
        assert first[0] == 6 and first[1] == 5
        assert p.one("SELECT count(*) FROM core.status_events") == (5,)
        held = p.one("SELECT read_ct, headers->>'sqlstate' FROM pgmq.q_webhooks")
        assert held == (1, "57014")
        # Its next attempt (after the back-off) fails too: out of attempts, set aside.
        p.db.execute("UPDATE pgmq.q_webhooks SET vt = now()")
        p.process(proc)
        assert p.one("SELECT count(*) FROM pgmq.q_webhooks") == (0,)
        dead = p.one("SELECT message->>'reason', message->'payload' FROM pgmq.q_webhooks_dead")
        assert "2 attempts" in dead[0] and "canceling statement" in dead[0]
        assert dead[1]["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] == "stuck"
    # Nothing was lost meanwhile: B's first message is there, the poison is not.
    assert p.one("SELECT count(*) FROM core.inbox_messages WHERE number_id = %s", p.b_number) == (1,)


def test_a_payload_whose_batch_crashed_counts_an_attempt_and_is_set_aside_when_spent(
        platform: Platform) -> None:
    """A claim commits on its own: a batch that never reports (its worker died, its
    backend crashed) still used an attempt, and the claim after the last one dead-letters
    the payload instead of handing it out again."""
    p = platform
    p.db.execute("UPDATE core.settings SET webhook_max_attempts = 2")
    p.db.execute("SELECT api.ingest_webhook(%s)", (orjson.dumps(envelope("messages", {})).decode(),))
    for attempt in (1, 2):
        fresh, retried = p.one("SELECT fresh, retried FROM api.claim_webhooks(10)")
        assert (len(fresh), len(retried)) == ((1, 0) if attempt == 1 else (0, 1))
        p.db.execute("UPDATE pgmq.q_webhooks SET vt = now()")     # as if the claim timed out
    assert p.one("SELECT fresh, retried FROM api.claim_webhooks(10)") == ([], [])
    reason = p.one("SELECT message->>'reason' FROM pgmq.q_webhooks_dead")[0]
    assert reason.startswith("not processed after 2 attempts")
    assert p.one("SELECT count(*) FROM pgmq.q_webhooks") == (0,)


def test_claims_being_retried_one_by_one_are_kept_from_other_loops(platform: Platform) -> None:
    """While a loop retries a batch payload by payload, it extends the claim of the rest,
    so another loop does not claim them again (which would spend an attempt of payloads
    that never failed)."""
    p = platform
    p.db.execute("UPDATE core.settings SET webhook_claim_s = 600")
    for _ in range(3):
        p.db.execute("SELECT api.ingest_webhook(%s)", (orjson.dumps(envelope("messages", {})).decode(),))
    fresh, _ = p.one("SELECT fresh, retried FROM api.claim_webhooks(10)")
    p.db.execute("UPDATE pgmq.q_webhooks SET vt = now()")          # as if the claim ran out
    assert p.one("SELECT api.extend_webhook_claims(%s)", fresh[1:]) == (2,)
    # Only the one not extended can be claimed again, and it counts a second read.
    again = p.one("SELECT fresh, retried FROM api.claim_webhooks(10)")
    assert again == ([], [fresh[0]])
    assert p.one("SELECT min(vt) > now() + interval '590 seconds' FROM pgmq.q_webhooks "
                 "WHERE msg_id = ANY(%s)", fresh[1:]) == (True,)
