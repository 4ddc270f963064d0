"""POST/GET /webhooks/whatsapp over real HTTP: the handshake, signatures, limits, and a
fuzz that never gets a 5xx or stores an unsigned body."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import psycopg
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from api.signature import sign
from api.webhooks import MAX_BODY, WhatsAppWebhook
from pgwa.config import Settings
from pgwa.local.stack import free_port
from tests.test_webhooks_payloads import status, statuses_payload, wamid

SECRETS = ("current-secret", "previous-secret")
VERIFY_TOKEN = "meatyhamhock"


@contextlib.contextmanager
def serve(app) -> Iterator[str]:
    """``app`` served by uvicorn (httptools) on a free port, in a thread."""
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http="httptools",
                                        log_level="error", lifespan="on"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture
def server(db_url: str) -> Iterator[str]:
    with serve(create_app(Settings(database_url=db_url, verify_token=VERIFY_TOKEN,
                                   app_secrets=SECRETS))) as url:
        yield url


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=10) as c:
        yield c


def queued(db: psycopg.Connection) -> list:
    return [r[0] for r in db.execute("SELECT message FROM pgmq.q_webhooks ORDER BY msg_id")]


def post(client: httpx.Client, body: bytes, secret: str | None = SECRETS[0],
         **headers) -> httpx.Response:
    if secret is not None:
        headers.setdefault("X-Hub-Signature-256", sign(body, secret))
    return client.post("/webhooks/whatsapp", content=body,
                       headers={"Content-Type": "application/json", **headers})


# --- the verification handshake -----------------------------------------------------------

def test_handshake_echoes_the_challenge_for_the_right_token(client: httpx.Client) -> None:
    r = client.get("/webhooks/whatsapp", params={"hub.mode": "subscribe",
                                                 "hub.challenge": "1158201444",
                                                 "hub.verify_token": VERIFY_TOKEN})
    assert (r.status_code, r.text) == (200, "1158201444")
    assert r.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("params", [
    {"hub.mode": "subscribe", "hub.challenge": "1", "hub.verify_token": "wrong"},
    {"hub.mode": "unsubscribe", "hub.challenge": "1", "hub.verify_token": VERIFY_TOKEN},
    {"hub.challenge": "1", "hub.verify_token": VERIFY_TOKEN},
    {"hub.mode": "subscribe", "hub.challenge": "1"},
    {},
])
def test_handshake_refuses_anything_else(client: httpx.Client, params: dict) -> None:
    assert client.get("/webhooks/whatsapp", params=params).status_code == 403


def test_handshake_refuses_everyone_when_no_token_is_configured(db_url: str) -> None:
    app = create_app(Settings(database_url=db_url, verify_token="", app_secrets=SECRETS))
    with serve(app) as url:
        params = {"hub.mode": "subscribe", "hub.challenge": "1", "hub.verify_token": ""}
        r = httpx.get(url + "/webhooks/whatsapp", params=params)
        assert r.status_code == 403


# --- POST -----------------------------------------------------------------------------------

def test_a_signed_webhook_is_stored_once_and_answered_200(client: httpx.Client,
                                                           db: psycopg.Connection) -> None:
    payload = statuses_payload(status(wamid(), "delivered"))
    body = orjson.dumps(payload)
    r = post(client, body)
    assert (r.status_code, r.content) == (200, b"")
    assert queued(db) == [payload]


def test_every_configured_secret_is_accepted_during_rotation(client: httpx.Client,
                                                             db: psycopg.Connection) -> None:
    bodies = [orjson.dumps(statuses_payload(status(wamid(), "sent"))) for _ in SECRETS]
    assert [post(client, b, s).status_code for b, s in zip(bodies, SECRETS)] == [200, 200]
    assert len(queued(db)) == 2


def test_a_webhook_signed_by_a_tenants_own_app_is_accepted_even_for_a_number_registered_since(
        client: httpx.Client, db: psycopg.Connection) -> None:
    tenant = db.execute("SELECT api.create_tenant('own app')").fetchone()[0]
    payload = statuses_payload(status(wamid(), "sent"))
    payload["entry"][0]["id"] = "5550009"            # the WABA the tenant's app sends for
    body = orjson.dumps(payload)
    assert post(client, body, "tenant-app-secret").status_code == 401      # nobody's secret yet
    assert queued(db) == []
    # Registered after the receiver started: a signature that matches no known secret
    # has the receiver load the numbers' secrets again (at most every few seconds).
    db.execute("SELECT api.register_number(%s, '5550001', '5550009', 'tok', 'tenant-app-secret', 80)",
               (tenant,))
    time.sleep(WhatsAppWebhook.SECRETS_RETRY_S)
    assert post(client, body, "tenant-app-secret").status_code == 200
    assert post(client, body, SECRETS[0]).status_code == 200              # the environment's still
    assert post(client, body, "another-app").status_code == 401
    # Checked only against the secrets of the WABAs a body names: the same app's
    # signature over a body naming another WABA matches nothing.
    elsewhere = orjson.dumps(statuses_payload(status(wamid(), "sent")))
    assert post(client, elsewhere, "tenant-app-secret").status_code == 401
    assert len(queued(db)) == 2
    # Never shown: the numbers list only says one is set.
    assert db.execute("SELECT has_app_secret FROM api.numbers(%s)", (tenant,)).fetchone()[0] is True


@pytest.mark.parametrize("signature", [None, "", "sha256=", "sha1=abc", "sha256=" + "0" * 64,
                                       "sha256=zz" + "0" * 62, "SHA256=" + "0" * 64])
def test_missing_or_bad_signature_is_401_and_stores_nothing(client: httpx.Client,
                                                            db: psycopg.Connection,
                                                            signature: str | None) -> None:
    body = orjson.dumps(statuses_payload(status(wamid(), "sent")))
    headers = {} if signature is None else {"X-Hub-Signature-256": signature}
    assert post(client, body, secret=None, **headers).status_code == 401
    # Signed with a secret that is not ours, or over other bytes.
    assert post(client, body, secret="someone-else").status_code == 401
    signed_other_bytes = {"X-Hub-Signature-256": sign(body, SECRETS[0])}
    assert post(client, body + b" ", secret=None, **signed_other_bytes).status_code == 401
    assert queued(db) == []


def test_a_body_over_one_mebibyte_is_413_and_stores_nothing(client: httpx.Client, server: str,
                                                            db: psycopg.Connection) -> None:
    big = b'{"pad": "' + b"x" * MAX_BODY + b'"}'
    assert post(client, big).status_code == 413
    # Without Content-Length (chunked): refused once the stream passes the limit.

    def chunks():
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    r = httpx.post(server + "/webhooks/whatsapp", content=chunks(),
                   headers={"X-Hub-Signature-256": sign(big, SECRETS[0])}, timeout=10)
    assert r.status_code == 413
    # Exactly at the limit is fine.
    exact = b'{"pad": "' + b"x" * (MAX_BODY - 11) + b'"}'
    assert len(exact) == MAX_BODY
    assert post(client, exact).status_code == 200
    assert len(queued(db)) == 1
    # And the server keeps serving.
    assert client.get("/healthz").status_code == 200


def kept_raw(db: psycopg.Connection) -> list[tuple[bytes, int | None]]:
    return [(bytes(r[0]), r[1]) for r in
            db.execute("SELECT body, queued_msg_id FROM core.webhook_raw ORDER BY raw_id")]


@pytest.mark.parametrize("body", [b"", b"not json", b'{"object": ', b"[1, 2, 3]", b'"a string"',
                                  b"42", b"\xff\xfe{}", b'{"a": NaN}',
                                  b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}"])
def test_a_signed_body_that_is_not_a_json_object_is_kept_raw_and_acknowledged(
        client: httpx.Client, db: psycopg.Connection, body: bytes) -> None:
    # Signed by an app we trust: acknowledged (Meta would retry it for days otherwise)
    # and kept byte for byte, never queued for processing.
    assert post(client, body).status_code == 200
    assert queued(db) == []
    assert kept_raw(db) == [(body, None)]


def test_a_body_postgres_cannot_hold_is_kept_raw_and_a_repaired_copy_queued(
        client: httpx.Client, db: psycopg.Connection) -> None:
    # Valid JSON that jsonb refuses (\u0000, a lone surrogate): acknowledged, the bytes
    # kept, and a copy with U+FFFD in their place processed like any other; the ones
    # committed beside them are stored as usual.
    nul = b'{"object": "x", "text": "a\\u0000b"}'
    lone = b'{"object": "x", "text": "c\\ud800d"}'
    good = [orjson.dumps(statuses_payload(status(wamid(), "sent"))) for _ in range(20)]
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda b: post(client, b).status_code, [nul, *good, lone]))
    assert codes == [200] * 22
    messages = queued(db)
    assert len(messages) == 22
    assert {m["text"] for m in messages if "text" in m} == {"a\ufffdb", "c\ufffdd"}
    raw = kept_raw(db)
    assert sorted(body for body, _ in raw) == sorted([nul, lone])
    assert all(msg_id is not None for _, msg_id in raw)


def test_concurrent_webhooks_are_each_stored_exactly_once(server: str,
                                                         db: psycopg.Connection) -> None:
    bodies = [orjson.dumps(statuses_payload(status(wamid(), "sent"))) for _ in range(300)]

    def send(chunk: list[bytes]) -> list[int]:
        with httpx.Client(base_url=server, timeout=10) as c:
            return [post(c, b).status_code for b in chunk]

    with ThreadPoolExecutor(16) as pool:
        parts = pool.map(send, [bodies[i::16] for i in range(16)])
        codes = [code for part in parts for code in part]
    assert codes == [200] * 300
    stored = db.execute("SELECT message->'entry'->0->'changes'->0->'value'->'statuses'->0->>'id' "
                        "FROM pgmq.q_webhooks").fetchall()
    assert sorted(r[0] for r in stored) == sorted(json.loads(b)["entry"][0]["changes"][0]["value"]
                                                  ["statuses"][0]["id"] for b in bodies)


def test_other_methods_are_405_and_healthz_answers(client: httpx.Client) -> None:
    assert client.put("/webhooks/whatsapp", content=b"{}").status_code == 405
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["ok"] is True


def test_the_database_going_away_is_503_not_a_crash(client: httpx.Client, db: psycopg.Connection,
                                                    server: str) -> None:
    body = orjson.dumps(statuses_payload(status(wamid(), "sent")))
    assert post(client, body).status_code == 200
    db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    codes = [post(client, body).status_code for _ in range(5)]
    assert set(codes) <= {200, 503} and codes[-1] == 200        # reconnected
    assert len(queued(db)) == codes.count(200) + 1


# --- fuzz -------------------------------------------------------------------------------------

# Values HTTP can carry (visible ASCII): the fuzz is of our checks, not of the HTTP parser.
HEADER_VALUES = st.one_of(st.none(),
                          st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=80),
                          st.just("sha256=").map(lambda p: p + "a" * 64),
                          st.binary(max_size=32).map(lambda b: "sha256=" + b.hex()))
JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
                    | st.floats(allow_nan=False) | st.text(),
                    lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=8), children, max_size=4),
                    max_leaves=20)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(st.binary(max_size=2048), JSON.map(orjson.dumps)), signature=HEADER_VALUES,
       content_type=st.sampled_from(["application/json", "text/plain", "",
                                     "application/x-www-form-urlencoded"]))
def test_fuzz_unsigned_bodies_never_5xx_and_never_store(client: httpx.Client,
                                                        db: psycopg.Connection,
                                                        body: bytes, signature: str | None,
                                                        content_type: str) -> None:
    headers = {"Content-Type": content_type}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    r = client.post("/webhooks/whatsapp", content=body, headers=headers)
    assert r.status_code == 401
    assert db.execute("SELECT count(*) FROM pgmq.q_webhooks").fetchone() == (0,)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(st.binary(max_size=512), JSON.map(orjson.dumps),
                      st.dictionaries(st.text(), JSON, max_size=6).map(orjson.dumps)))
def test_fuzz_signed_bodies_are_200_and_stored_or_kept_never_5xx(client: httpx.Client,
                                                                db: psycopg.Connection,
                                                                body: bytes) -> None:
    count = "SELECT (SELECT count(*) FROM pgmq.q_webhooks), (SELECT count(*) FROM core.webhook_raw)"
    queued_before, raw_before = db.execute(count).fetchone()
    r = post(client, body)
    queued_after, raw_after = db.execute(count).fetchone()
    assert r.status_code == 200
    # Queued as it came, or kept raw (with a repaired copy queued, or not).
    assert (queued_after - queued_before, raw_after - raw_before) in ((1, 0), (0, 1), (1, 1))
