"""Outbound events over real HTTP: the worker (worker/events.py) delivers signed events to a
local receiver (an aiohttp server in a thread), retries a failing endpoint with back-off (the
worker's clock is a parameter: the test moves it instead of waiting), dead-letters after
the retry window, delivers a replay, and keeps a hanging endpoint from delaying another
endpoint's events. The routes (/v1/endpoints, /v1/events) are exercised in-process."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
from aiohttp import web

from pgwa.config import Settings
from tests import factories
from tests.api_support import api_client, new_tenant
from worker.events import EventDeliverer, EventStats, PublicResolver, url_refusal, verify

SECRET = "test-secret-0123456789abcdef"


# -- a receiver ------------------------------------------------------------------------------

@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records every POST; answers 503 on paths in ``failing``, holds those in ``hanging``
    until ``release`` is set, 200 otherwise."""

    port: int = 0
    got: list[Received] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)
    hanging: set[str] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.got if r.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An aiohttp server on its own event loop, in a thread."""
    state = Receiver()
    loop = asyncio.new_event_loop()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        with state.lock:
            state.got.append(Received(request.path, {k.lower(): v for k, v in request.headers.items()}, body))
        if request.path in state.hanging:
            while not state.release.is_set():
                await asyncio.sleep(0.02)
        return web.Response(status=503 if request.path in state.failing else 200, text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", hook)
    runner = web.AppRunner(app, access_log=None)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        state.port = site._server.sockets[0].getsockname()[1]
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="receiver", daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield state
    finally:
        state.release.set()
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


# -- the worker ------------------------------------------------------------------------------

class Clock:
    """The worker's time: the moment the test made it plus what the test has moved it by.
    It stands still otherwise, so that a back-off never passes by itself on a slow machine."""

    def __init__(self) -> None:
        self.base = datetime.now(UTC)
        self.ahead = timedelta()

    def __call__(self) -> datetime:
        return self.base + self.ahead


def deliver_until(db_url: str, done: Callable[[], bool], *, clock: Clock | None = None,
                  on_start: Callable[[], None] | None = None, timeout_s: float = 20.0) -> EventStats:
    """Run the event loop until ``done()`` holds (checked every 20 ms), then stop it."""

    async def main() -> EventStats:
        worker = EventDeliverer(Settings(database_url=db_url, worker_name="test"), heartbeat_s=0.05,
                                report_s=0.01, clock=clock)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if on_start:
            on_start()
        try:
            while not await asyncio.to_thread(done):
                if task.done():
                    task.result()
                assert loop.time() < deadline, "timed out"
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
        return worker.stats

    return asyncio.run(main())


def setup(db: psycopg.Connection, **settings: object) -> None:
    factories.settings(db, event_allow_private_urls=True, **settings)


def endpoint(db: psycopg.Connection, tenant_id: int, url: str, types: list[str]) -> int:
    return db.execute("SELECT endpoint_id FROM api.create_event_endpoint(%s, %s, %s, %s)",
                      (tenant_id, url, types, SECRET)).fetchone()[0]


def opt_out(db: psycopg.Connection, tenant_id: int, phone: str) -> None:
    db.execute("SELECT api.set_contact_opt_out(%s, true, NULL, %s)", (tenant_id, phone))


def delivery(db_url: str, endpoint_id: int) -> list[tuple]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return conn.execute("SELECT event_id, status, attempts, last_http_status FROM core.event_deliveries "
                            "WHERE endpoint_id = %s ORDER BY event_id", (endpoint_id,)).fetchall()


# -- delivery --------------------------------------------------------------------------------

def test_events_reach_the_receiver_signed_and_the_signature_verifies(
        db: psycopg.Connection, db_url: str, receiver: Receiver) -> None:
    setup(db)
    acc = factories.account(db)
    ep = endpoint(db, acc.tenant_id, receiver.url("/hooks"), ["contact.opted_out", "template.status"])
    opt_out(db, acc.tenant_id, "+14155550101")
    factories.template(db, acc, "promo", factories.PROMO, status="PAUSED")
    stats = deliver_until(db_url, lambda: [s for _, s, _, _ in delivery(db_url, ep)] == ["delivered"] * 2)
    assert stats.delivered == 2 and stats.failed == 0
    got = receiver.on("/hooks")
    assert len(got) == 2
    for r in got:
        body = orjson.loads(r.body)
        assert r.headers["content-type"] == "application/json"
        assert r.headers["x-pgwa-event-id"] == str(body["id"]) and r.headers["x-pgwa-event-type"] == body["type"]
        assert verify(SECRET, r.headers["x-pgwa-signature"], r.body)
        # What a receiver in any language does: HMAC-SHA256 over "<t>.<raw body>".
        t, v1 = (p.split("=", 1)[1] for p in r.headers["x-pgwa-signature"].split(","))
        assert hmac.compare_digest(v1, hmac.new(SECRET.encode(), f"{t}.".encode() + r.body,
                                                hashlib.sha256).hexdigest())
        assert not verify(SECRET, r.headers["x-pgwa-signature"], r.body.replace(b"}", b" }", 1))
        assert not verify("another-secret-0123456789", r.headers["x-pgwa-signature"], r.body)
        assert not verify(SECRET, r.headers["x-pgwa-signature"], r.body, now=int(t) + 3600)
    assert sorted(orjson.loads(r.body)["type"] for r in got) == ["contact.opted_out", "template.status"]


def test_a_failing_endpoint_is_retried_with_back_off_until_it_answers(
        db: psycopg.Connection, db_url: str, receiver: Receiver) -> None:
    setup(db)
    acc = factories.account(db)
    ep = endpoint(db, acc.tenant_id, receiver.url("/flaky"), ["contact.opted_out"])
    receiver.failing.add("/flaky")
    opt_out(db, acc.tenant_id, "+14155550102")
    clock = Clock()
    deliver_until(db_url, lambda: delivery(db_url, ep)[0][2] >= 1, clock=clock)
    [(_, status, attempts, http_status)] = delivery(db_url, ep)
    assert (status, attempts, http_status) == ("pending", 1, 503)
    # Not tried again before its back-off (5 s) has passed on the worker's clock ...
    deliver_until(db_url, lambda: True, clock=clock)
    assert len(receiver.on("/flaky")) == 1
    # ... and tried again once it has; still failing: the next back-off is longer.
    clock.ahead += timedelta(seconds=6)
    deliver_until(db_url, lambda: delivery(db_url, ep)[0][2] >= 2, clock=clock)
    assert len(receiver.on("/flaky")) == 2
    receiver.failing.discard("/flaky")
    clock.ahead += timedelta(seconds=20)
    deliver_until(db_url, lambda: delivery(db_url, ep)[0][1] == "delivered", clock=clock)
    got = receiver.on("/flaky")
    assert len(got) == 3 and len({r.body for r in got}) == 1
    assert [r.headers["x-pgwa-delivery-attempt"] for r in got] == ["1", "2", "3"]


def test_an_endpoint_down_for_the_whole_window_is_dead_lettered_then_replayed(
        db: psycopg.Connection, db_url: str, receiver: Receiver) -> None:
    setup(db)
    tenant = new_tenant(db)
    ep = endpoint(db, tenant.acc.tenant_id, receiver.url("/down"), ["contact.opted_out"])
    receiver.failing.add("/down")
    opt_out(db, tenant.acc.tenant_id, "+14155550103")
    clock = Clock()
    deliver_until(db_url, lambda: delivery(db_url, ep)[0][2] >= 1, clock=clock)
    clock.ahead += timedelta(hours=24, minutes=1)
    deliver_until(db_url, lambda: delivery(db_url, ep)[0][1] == "dead", clock=clock)
    assert len(receiver.on("/down")) == 2
    receiver.failing.discard("/down")
    with api_client(db_url) as client:
        client.headers.update(tenant.headers)
        dead = client.get("/v1/events", params={"endpoint": ep, "status": "dead"}).json()["data"]
        assert [(e["event_type"], e["attempts"], e["last_http_status"]) for e in dead] == \
            [("contact.opted_out", 2, 503)]
        replayed = client.post(f"/v1/events/{dead[0]['event_id']}/replay")
        assert replayed.status_code == 202 and replayed.json()["replayed"] == 1
    deliver_until(db_url, lambda: delivery(db_url, ep)[0][1] == "delivered", clock=clock)
    got = receiver.on("/down")
    assert len(got) == 3 and got[0].body == got[2].body
    assert verify(SECRET, got[2].headers["x-pgwa-signature"], got[2].body)


def test_a_hanging_endpoint_does_not_delay_another_endpoints_events(
        db: psycopg.Connection, db_url: str, receiver: Receiver) -> None:
    setup(db, event_timeout_ms=30000, event_lane_concurrency=4)
    slow, fast = factories.account(db), factories.account(db)
    hanging = endpoint(db, slow.tenant_id, receiver.url("/hang"), ["contact.opted_out"])
    quick = endpoint(db, fast.tenant_id, receiver.url("/fast"), ["contact.opted_out"])
    receiver.hanging.add("/hang")
    for i in range(50):
        opt_out(db, slow.tenant_id, f"+1415444{i:04d}")

    def then_the_other_tenants_events() -> None:
        # Once the hanging endpoint holds its lane, the other tenant's events are made.
        def made() -> None:
            with psycopg.connect(db_url, autocommit=True) as conn:
                while len(receiver.on("/hang")) < 4:
                    threading.Event().wait(0.01)
                for i in range(20):
                    opt_out(conn, fast.tenant_id, f"+1415333{i:04d}")
        threading.Thread(target=made, daemon=True).start()

    def fast_done() -> bool:
        return [s for _, s, _, _ in delivery(db_url, quick)] == ["delivered"] * 20

    def check() -> bool:
        if not fast_done():
            return False
        # Delivered while the hanging endpoint still holds its first requests, unanswered.
        assert [s for _, s, _, _ in delivery(db_url, hanging)].count("delivered") == 0
        assert len(receiver.on("/hang")) == 4            # its lane: lane_concurrency at once
        receiver.release.set()
        return True

    deliver_until(db_url, check, on_start=then_the_other_tenants_events, timeout_s=20)
    assert len(receiver.on("/fast")) == 20


# -- the routes ------------------------------------------------------------------------------

def test_endpoint_and_event_routes_keep_secrets_and_tenants_apart(db: psycopg.Connection, db_url: str) -> None:
    setup(db)
    a, b = new_tenant(db), new_tenant(db)
    with api_client(db_url) as client:
        client.headers.update(a.headers)
        created = client.post("/v1/endpoints", json={"url": "http://127.0.0.1:9/a", "description": "shop",
                                                     "event_types": ["message.status", "contact.opted_out"]})
        assert created.status_code == 201, created.text
        ep = created.json()
        assert ep["secret"].startswith("whsec_") and ep["event_types"] == ["contact.opted_out", "message.status"]
        listed = client.get("/v1/endpoints")
        assert listed.status_code == 200 and ep["secret"] not in listed.text and "secret" not in listed.text
        assert [e["endpoint_id"] for e in listed.json()] == [ep["endpoint_id"]]
        bad = client.post("/v1/endpoints", json={"url": "http://127.0.0.1:9/a", "event_types": ["nope"]})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "PW100"
        test = client.post(f"/v1/endpoints/{ep['endpoint_id']}/test")
        assert test.status_code == 202
        event_id = test.json()["event_id"]
        events = client.get("/v1/events", params={"endpoint": ep["endpoint_id"]}).json()
        assert [(e["event_id"], e["event_type"], e["status"]) for e in events["data"]] == \
            [(event_id, "endpoint.test", "pending")]
        assert client.post(f"/v1/events/{event_id}/replay").json()["replayed"] == 0    # pending already
        assert client.get("/v1/events", params={"status": "sent"}).status_code == 400

        client.headers.update(b.headers)
        assert client.get("/v1/events").json()["data"] == []
        assert client.get("/v1/endpoints").json() == []
        for method, path in (("GET", f"/v1/events?endpoint={ep['endpoint_id']}"),
                             ("POST", f"/v1/events/{event_id}/replay"),
                             ("POST", f"/v1/endpoints/{ep['endpoint_id']}/test"),
                             ("DELETE", f"/v1/endpoints/{ep['endpoint_id']}")):
            answer = client.request(method, path)
            assert answer.status_code == 404, (method, path)
            assert answer.json()["error"]["code"] in ("PW230", "PW231")

        client.headers.update(a.headers)
        assert client.delete(f"/v1/endpoints/{ep['endpoint_id']}").json() == {"endpoint_id": ep["endpoint_id"]}
        assert client.get("/v1/endpoints").json() == []


def test_the_worker_refuses_an_endpoint_on_a_private_address_whatever_the_database_holds(
        db: psycopg.Connection, db_url: str, receiver: Receiver) -> None:
    setup(db)
    acc = factories.account(db)
    ep = endpoint(db, acc.tenant_id, receiver.url("/private"), ["contact.opted_out"])
    factories.settings(db, event_allow_private_urls=False)      # registered while it was allowed
    opt_out(db, acc.tenant_id, "+14155550104")
    deliver_until(db_url, lambda: delivery(db_url, ep)[0][2] >= 1)
    assert receiver.on("/private") == []
    error = db.execute("SELECT last_error FROM core.event_deliveries WHERE endpoint_id = %s", (ep,)).fetchone()[0]
    assert error.startswith("refused: address 127.0.0.1")


def test_a_name_that_resolves_to_a_private_address_is_refused() -> None:
    async def resolve() -> None:
        resolver = PublicResolver()
        try:
            with pytest.raises(OSError, match="loopback, private or link-local"):
                await resolver.resolve("localhost", 80)
        finally:
            await resolver.close()

    asyncio.run(resolve())
    assert url_refusal("http://[::ffff:10.0.0.1]/x", allow_private=False)
    assert url_refusal("http://10.0.0.1/x", allow_private=True) is None
    assert url_refusal("https://hooks.example.com/x", allow_private=False) is None
