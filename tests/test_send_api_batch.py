"""The send API in batches: api.send_messages and POST /v1/messages' group commit (api/send_batch.py).

Requests that arrive together are authenticated (api.authenticate_many) and sent
(api.send_messages) in one transaction, yet each answers alone: its message, or its own
error with nothing of it left behind; a key counts every request it makes; one tenant's
key never sends another tenant's item.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from api.send_batch import SendBatcher, SendRequest
from pgwa.queries import queries
from tests import factories
from tests.api_support import Tenant, TestClient, new_tenant

pytest_plugins = ["tests.api_fixtures"]

TEMPLATE = {"type": "template", "name": "order_update", "language": "en_US", "params": ["Ana", "A-1", "ACME"]}


def item(tenant: Tenant, to: str, message: dict | None = None, key: str | None = None,
         number_id: int | None = None) -> dict[str, Any]:
    return {"tenant_id": tenant.acc.tenant_id, "number_id": number_id or tenant.acc.number_id, "to": to,
            "message": message or TEMPLATE, "idempotency_key": key}


def send_batch(db: psycopg.Connection, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("""SELECT r.item, (r.sent).outbound_id, (r.sent).replayed, (r.sent).recipient,
                                     r.sqlstate, r.message, r.hint
                              FROM api.send_messages(%s::jsonb, p_wake => false) r ORDER BY r.item""",
                           (orjson.dumps(items).decode(),)).fetchall()


def api_messages(db: psycopg.Connection, number_id: int) -> int:
    return db.execute("SELECT count(*) FROM core.outbound_messages WHERE kind = 'api' AND number_id = %s",
                      (number_id,)).fetchone()[0]


def key_of(db: psycopg.Connection, tenant: Tenant, limit: int | None = None) -> bytes:
    """A new send key of the tenant's (``limit`` requests a minute), as its sha256."""
    with db.cursor(row_factory=dict_row) as cur:
        key = cur.execute(queries["create_api_key"], {
            "tenant_id": tenant.acc.tenant_id, "name": "batch", "scope": "send", "expires_at": None,
            "rate_limit_per_minute": limit}).fetchone()["key"]
    return hashlib.sha256(key.encode()).digest()


def request(key: bytes, tenant: Tenant, to: str, message: dict | None = None, idempotency_key: str | None = None,
            number_id: int | None = None) -> SendRequest:
    return SendRequest(key=key, number_id=number_id or tenant.acc.number_id, to=to,
                       message=message or TEMPLATE, idempotency_key=idempotency_key)


def run_batcher(db_url: str, *rounds: list[SendRequest]) -> tuple[list[list[Any]], SendBatcher]:
    """Each round's requests handed to one batcher at once (as concurrent requests are), a
    round after the one before has its answers: the answers (a (json, replayed) pair or the
    error) and the batcher."""

    async def main() -> tuple[list[list[Any]], SendBatcher]:
        async with AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False,
                                       kwargs={"autocommit": True}) as pool:
            batcher = SendBatcher(pool, "send")
            answers = []
            for requests in rounds:
                answers.append(await asyncio.gather(*(batcher.send(r) for r in requests), return_exceptions=True))
            await batcher.stop()
            return answers, batcher

    return asyncio.run(main())


def test_a_bad_item_gets_its_own_error_naming_the_field_and_the_others_are_sent(
        db: psycopg.Connection, tenant: Tenant) -> None:
    acc = tenant.acc
    results = send_batch(db, [
        item(tenant, "+14155550201"),
        item(tenant, "555"),                                                     # not a phone
        item(tenant, "+14155550203", {**TEMPLATE, "params": ["only one"]}),      # too few parameters
        item(tenant, "+14155550204", {"type": "fax"}),
        item(tenant, "+14155550205", key="has space"),
        item(tenant, "+14155550206"),
    ])
    assert [r["sqlstate"] for r in results] == [None, "PW100", "PW102", "PW100", "PW100", None]
    assert '"555"' in results[1]["message"] and "to" in results[1]["message"]
    assert "parameters" in results[2]["message"]
    assert "type" in results[3]["message"] and "Idempotency-Key" in results[4]["message"]
    assert [r["recipient"] for r in results] == ["14155550201", None, None, None, None, "14155550206"]
    # The good ones are queued and written; of the bad ones nothing is left, not even a contact.
    assert api_messages(db, acc.number_id) == 2
    assert len(factories.queue(db, factories.reply_queue(db, acc.number_id))) == 2
    assert db.execute("SELECT count(*) FROM core.inbox_messages WHERE direction = 'out'").fetchone()[0] == 2
    assert db.execute("SELECT count(*) FROM core.contacts WHERE wa_id IN ('14155550203', '14155550204', "
                      "'14155550205')").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM core.api_sends").fetchone()[0] == 0


def test_one_key_twice_in_a_batch_sends_one_message(db: psycopg.Connection, tenant: Tenant) -> None:
    acc = tenant.acc
    results = send_batch(db, [
        item(tenant, "+14155550210", key="order-1"),
        item(tenant, "+14155550210", {**TEMPLATE}, key="order-1"),               # the same request again
        item(tenant, "+14155550211", key="order-1"),                             # another message, same key
        item(tenant, "+14155550212", key="order-2"),
    ])
    first, again, other, second = results
    assert first["sqlstate"] is None and first["replayed"] is False
    assert again["outbound_id"] == first["outbound_id"] and again["replayed"] is True
    assert other["sqlstate"] == "PW303" and other["outbound_id"] is None
    assert second["sqlstate"] is None and second["outbound_id"] != first["outbound_id"]
    assert api_messages(db, acc.number_id) == 2
    assert len(factories.queue(db, factories.reply_queue(db, acc.number_id))) == 2
    # The next batch answers the key from core.api_sends.
    [later] = send_batch(db, [item(tenant, "+14155550210", key="order-1")])
    assert later["outbound_id"] == first["outbound_id"] and later["replayed"] is True


def test_a_key_whose_first_item_failed_is_free_for_the_next(db: psycopg.Connection, tenant: Tenant) -> None:
    results = send_batch(db, [
        item(tenant, "+14155550215", {**TEMPLATE, "name": "nope"}, key="k-9"),
        item(tenant, "+14155550215", key="k-9"),
    ])
    assert [r["sqlstate"] for r in results] == ["PW102", None]
    assert results[1]["replayed"] is False
    assert db.execute("SELECT count(*) FROM core.api_sends WHERE idempotency_key = 'k-9'").fetchone()[0] == 1


def test_two_tenants_in_one_batch_stay_apart(db: psycopg.Connection, tenant: Tenant) -> None:
    other = new_tenant(db)
    results = send_batch(db, [
        item(tenant, "+14155550220", key="same"),
        item(tenant, "+14155550221", number_id=other.acc.number_id),            # A on B's number
        item(other, "+14155550220", key="same"),
    ])
    assert [r["sqlstate"] for r in results] == [None, "PW202", None]
    assert results[2]["replayed"] is False and results[2]["outbound_id"] != results[0]["outbound_id"]
    assert api_messages(db, tenant.acc.number_id) == 1 and api_messages(db, other.acc.number_id) == 1
    [queued] = factories.queue(db, factories.reply_queue(db, other.acc.number_id))
    assert queued["message"]["o"] == results[2]["outbound_id"]
    # Each tenant's contact is its own.
    assert db.execute("SELECT count(DISTINCT tenant_id) FROM core.contacts WHERE wa_id = '14155550220'"
                      ).fetchone()[0] == 2
    assert db.execute("SELECT count(*) FROM core.contacts WHERE wa_id = '14155550221'").fetchone()[0] == 0


def test_a_tenants_key_never_sends_on_another_tenants_number_through_the_batcher(
        db: psycopg.Connection, db_url: str, tenant: Tenant) -> None:
    other = new_tenant(db)
    mine, theirs = key_of(db, tenant), key_of(db, other)
    [answers], batcher = run_batcher(db_url, [
        request(mine, tenant, "+14155550230", number_id=other.acc.number_id),
        request(theirs, other, "+14155550231"),
        request(mine, tenant, "+14155550232"),
    ])
    stolen, ok, own = answers
    assert isinstance(stolen, psycopg.Error) and stolen.sqlstate == "PW202", stolen
    assert stolen.diag.message_primary == f"number {other.acc.number_id} not found"
    assert orjson.loads(ok[0])["number_id"] == other.acc.number_id and ok[1] is False
    assert orjson.loads(own[0])["number_id"] == tenant.acc.number_id
    assert batcher.stats.batches == 1 and batcher.stats.largest == 3
    assert api_messages(db, other.acc.number_id) == 1 and api_messages(db, tenant.acc.number_id) == 1


def test_every_request_counts_toward_the_rate_limit_failing_ones_too(db: psycopg.Connection, db_url: str,
                                                                    tenant: Tenant) -> None:
    key = key_of(db, tenant, limit=3)
    bad = {**TEMPLATE, "name": "nope"}
    [answers], _ = run_batcher(db_url, [
        request(key, tenant, "+14155550240", bad), request(key, tenant, "+14155550241", bad),
        request(key, tenant, "+14155550242"), request(key, tenant, "+14155550243"),
        request(key, tenant, "+14155550244"),
    ])
    codes = [a.sqlstate if isinstance(a, psycopg.Error) else "sent" for a in answers]
    # A fresh key spends its minute's 3 requests at once: two failed sends and one sent; the rest are refused.
    assert codes == ["PW102", "PW102", "sent", "PW429", "PW429"]
    assert orjson.loads(answers[3].diag.message_detail)["retry_after_s"] >= 1
    assert api_messages(db, tenant.acc.number_id) == 1


def test_an_unknown_key_in_a_batch_is_refused_alone(db: psycopg.Connection, db_url: str, tenant: Tenant) -> None:
    key = key_of(db, tenant)
    [answers], _ = run_batcher(db_url, [
        request(key, tenant, "+14155550250"), request(hashlib.sha256(b"pgwa_nope").digest(), tenant, "+14155550251"),
    ])
    assert answers[0][1] is False
    assert isinstance(answers[1], psycopg.Error) and answers[1].sqlstate == "PW401"
    assert api_messages(db, tenant.acc.number_id) == 1


def test_a_lone_request_starts_its_batch_at_once(db: psycopg.Connection, db_url: str, tenant: Tenant) -> None:
    key = key_of(db, tenant)
    answers, batcher = run_batcher(db_url, [request(key, tenant, "+14155550260")],
                                   [request(key, tenant, "+14155550261")])
    assert [a[0][1] for a in answers] == [False, False]
    # Each went alone, into an idle batcher: no batch in flight made it wait.
    assert (batcher.stats.batches, batcher.stats.items, batcher.stats.largest, batcher.stats.waited) == (2, 2, 1, 0)


def test_requests_arriving_together_share_one_batch_and_one_commit(db: psycopg.Connection, db_url: str,
                                                                    tenant: Tenant) -> None:
    key = key_of(db, tenant)
    [answers], batcher = run_batcher(db_url, [request(key, tenant, f"+1415555{n:04d}") for n in range(300, 340)])
    assert all(a[1] is False for a in answers)
    assert batcher.stats.batches == 1 and batcher.stats.largest == 40
    # One transaction wrote the forty messages.
    assert db.execute("SELECT count(DISTINCT xmin::text) FROM core.outbound_messages WHERE outbound_id = ANY(%s)",
                      ([orjson.loads(a[0])["outbound_id"] for a in answers],)).fetchone()[0] == 1


def test_errors_of_batched_requests_answer_as_before(tenant: Tenant, client: TestClient, db: psycopg.Connection,
                                                      db_url: str) -> None:
    acc = tenant.acc
    body = {"number_id": acc.number_id, "to": "+14155550270", "message": TEMPLATE}
    first = client.post("/v1/messages", json=body, headers={"Idempotency-Key": "o-1"})
    conflict = client.post("/v1/messages", json={**body, "to": "+14155550271"}, headers={"Idempotency-Key": "o-1"})
    assert first.status_code == 201 and conflict.status_code == 409, conflict.text
    assert conflict.json()["error"] == {
        "code": "PW303", "name": "idempotency_conflict",
        "message": 'Idempotency-Key "o-1" was already used for a different message',
        "hint": "Use a new key for a new message; retry a message with its own key and the same body."}
    # Over its limit, a key gets 429 with the detail and Retry-After, as every route answers it.
    with db.cursor(row_factory=dict_row) as cur:
        limited = cur.execute(queries["create_api_key"], {
            "tenant_id": acc.tenant_id, "name": "one", "scope": "send", "expires_at": None,
            "rate_limit_per_minute": 1}).fetchone()["key"]
    headers = {"Authorization": f"Bearer {limited}"}
    assert client.post("/v1/messages", json={**body, "to": "+14155550272"}, headers=headers).status_code == 201
    over = client.post("/v1/messages", json={**body, "to": "+14155550273"}, headers=headers)
    assert over.status_code == 429 and over.json()["error"]["code"] == "PW429", over.text
    assert int(over.headers["Retry-After"]) >= 1 and over.json()["error"]["detail"]["retry_after_s"] >= 1


def test_one_message_sent_twice_at_once_through_the_batcher_is_sent_once(db: psycopg.Connection, db_url: str,
                                                                           tenant: Tenant) -> None:
    key = key_of(db, tenant)
    copies = [request(key, tenant, f"+1415555{n:04d}", idempotency_key=f"twice-{n}") for n in range(400, 410)]
    [answers], batcher = run_batcher(db_url, [r for r in copies for _ in range(2)])
    sent = [(orjson.loads(a[0])["outbound_id"], a[1]) for a in answers]
    assert [replayed for _, replayed in sent] == [False, True] * 10
    assert all(sent[i][0] == sent[i + 1][0] for i in range(0, 20, 2))
    assert api_messages(db, tenant.acc.number_id) == 10 and batcher.stats.items == 20


def test_a_message_json_cannot_carry_fails_alone_and_the_batch_is_sent(db: psycopg.Connection, db_url: str,
                                                                       tenant: Tenant) -> None:
    # Nested deeper than JSON serialisation allows, or with a NUL that jsonb refuses: once
    # these made the batch's one statement fail, and every request beside them with it.
    key = key_of(db, tenant)
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    [answers], batcher = run_batcher(db_url, [
        request(key, tenant, "+14155550501"),
        request(key, tenant, "+14155550502", {"type": "text", "text": "hi", "x": deep}),
        request(key, tenant, "+14155550503", {"type": "text", "text": "a\x00b"}),
        request(key, tenant, "+1415555\x000504"),
        request(key, tenant, "+14155550505"),
    ])
    assert [isinstance(a, tuple) for a in answers] == [True, False, False, False, True], answers
    assert {a.sqlstate for a in answers[1:4]} == {"PW100"}
    assert "JSON" in str(answers[1]) and "NUL" in str(answers[2]) and "NUL" in str(answers[3])
    assert api_messages(db, tenant.acc.number_id) == 2 and batcher.stats.retried == 0


def test_a_contact_held_by_another_transaction_holds_up_its_own_request_only(
        db: psycopg.Connection, db_url: str, tenant: Tenant) -> None:
    # A campaign being created has inserted this phone's contact and not committed yet (a
    # million-row list holds it for tens of seconds): the batch waits at most lock_timeout
    # for it, then its requests go one at a time and only that one fails, as retryable.
    key = key_of(db, tenant)
    with psycopg.connect(db_url) as creating:
        creating.execute("INSERT INTO core.contacts (tenant_id, wa_id) VALUES (%s, '14155550601')",
                         (tenant.acc.tenant_id,))
        [answers], batcher = run_batcher(db_url, [request(key, tenant, f"+1415555060{n}") for n in range(3)])
        creating.rollback()
    assert [isinstance(a, tuple) for a in answers] == [True, False, True], answers
    assert answers[1].sqlstate == "55P03" and batcher.stats.retried == 1
    assert api_messages(db, tenant.acc.number_id) == 2
    # Once the other transaction is over, the same request is sent.
    [again], _ = run_batcher(db_url, [request(key, tenant, "+14155550601")])
    assert isinstance(again[0], tuple) and again[0][1] is False


def test_a_held_row_answers_503_with_retry_after(tenant: Tenant, client: TestClient, db_url: str) -> None:
    body = {"number_id": tenant.acc.number_id, "to": "+14155550611", "message": TEMPLATE}
    with psycopg.connect(db_url) as creating:
        creating.execute("INSERT INTO core.contacts (tenant_id, wa_id) VALUES (%s, '14155550611')",
                         (tenant.acc.tenant_id,))
        held = client.post("/v1/messages", json=body, headers={"Idempotency-Key": "held-1"})
        creating.rollback()
    assert held.status_code == 503, held.text
    assert held.headers["Retry-After"] == "1"
    assert held.json()["error"]["code"] == "55P03" and held.json()["error"]["name"] == "lock_not_available"
    # The retry with the same key sends it.
    retry = client.post("/v1/messages", json=body, headers={"Idempotency-Key": "held-1"})
    assert retry.status_code == 201, retry.text
