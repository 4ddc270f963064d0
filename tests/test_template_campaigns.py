"""Template campaigns end to end: PostgreSQL renders, the worker sends, the simulator checks
every component as Meta does (sim/templates.py) and answers.

The templates are the simulator's seeded ones (sim/templates.json), synced through the
Graph API as the route does. A recording proxy between the worker and the simulator keeps
the JSON body of every POST /messages, so that the tests assert the exact requests the
simulator received; the simulator's ledger and counters say who was messaged how often.
"""

from __future__ import annotations

import asyncio
import http.server
import threading
import time

import httpx
import orjson
import psycopg
import pytest
from psycopg.types.json import Jsonb

from api.graph_templates import sync_templates
from pgwa.config import Settings
from pgwa.contacts import csv_text, stage_csv
from pgwa.queries import queries
from tests.test_template_mapping import LOCATION, expected
from worker.sender import Sender

try:  # tests/ is a rootless directory under pytest's default import mode
    from sim_fixtures import NUMBERS, VERSION
except ImportError:  # tests/ became a package
    from tests.sim_fixtures import NUMBERS, VERSION

pytest_plugins = ["sim_fixtures"] if __package__ in (None, "") else ["tests.sim_fixtures"]
pytestmark = pytest.mark.usefixtures("quiet_world")

ONE = NUMBERS[0]          # the simulator allows it 80 msg/s


class RecordingProxy:
    """Forwards every request to the simulator and keeps the JSON body of each
    ``POST .../messages``, byte for byte what the simulator then received."""

    def __init__(self, target: str) -> None:
        self.bodies: list[dict] = []
        self.client = httpx.Client(base_url=target, timeout=30)
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.command == "POST" and self.path.split("?")[0].endswith("/messages"):
                    with lock:
                        proxy.bodies.append(orjson.loads(raw))
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                answer = proxy.client.request(self.command, self.path, content=raw, headers=headers)
                self.send_response(answer.status_code)
                for k, v in answer.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_DELETE = forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="recording-proxy", daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def received(self) -> dict[str, dict]:
        """The last body sent to each recipient."""
        return {b["to"]: b for b in self.bodies}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()


@pytest.fixture
def proxy(sim):
    recorder = RecordingProxy(sim.url)
    yield recorder
    recorder.close()


def setup_number(db: psycopg.Connection, sim, mps: int = 80) -> tuple[int, int]:
    """A tenant with ONE registered and the simulator's templates synced: (tenant, number)."""
    tenant = db.execute("SELECT api.create_tenant(%s)", (f"tenant {time.monotonic_ns()}",)).fetchone()[0]
    number_id = db.execute("SELECT api.register_number(%s, %s, %s, %s, NULL, %s)",
                           (tenant, ONE["phone_number_id"], ONE["waba_id"], ONE["token"], mps)).fetchone()[0]
    assert sync_templates(db, tenant, ONE["waba_id"], ONE["token"], sim.url, VERSION) >= 14
    return tenant, number_id


def upload_video(sim) -> str:
    """A video uploaded to the simulator as Meta's media API takes it: its media id."""
    answer = httpx.post(f"{sim.url}/{VERSION}/{ONE['phone_number_id']}/media",
                        headers={"Authorization": f"Bearer {ONE['token']}"},
                        data={"messaging_product": "whatsapp", "type": "video/mp4"},
                        files={"file": ("new.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(4096), "video/mp4")})
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def phones(n: int, base: int) -> list[str]:
    """UK mobiles: no US marketing pause applies to them."""
    return [f"4477009{base + i:05d}" for i in range(n)]


def rows_for(to: list[str]) -> list[dict]:
    return [{"phone": p, "name": f"Name{i}", "photo": f"https://cdn.example.com/p/{i}.jpg", "until": f"May {i + 1}",
             "path": f"u{i}", "invoice": f"INV-{i}", "code": f"C{i:04d}"} for i, p in enumerate(to)]


def create_campaign(db: psycopg.Connection, tenant: int, number_id: int, rows: list[dict], spec: dict) -> int:
    stage_csv(db, csv_text(rows))
    row = db.execute(queries["create_campaign"], {
        "tenant_id": tenant, "number_id": number_id, "name": f"{spec['name']} {time.monotonic_ns()}",
        "templates": orjson.dumps([spec]).decode(), "on_invalid": "reject", "scheduled_at": None,
        "start": True, "default_country_code": None}).fetchone()
    assert row[2] == len(rows)
    return row[0]


async def run_until(sender: Sender, db_url: str, query: str, params: tuple, timeout: float,
                    hooks=None) -> None:
    """Run the worker until ``query`` returns true, then stop it gracefully. With ``hooks``
    (the simulator's webhook receiver), the webhooks it got are processed meanwhile, as
    the receiver and the webhook worker would."""
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    seen = 0
    try:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            deadline = time.monotonic() + timeout
            while not (await (await conn.execute(query, params)).fetchone())[0]:
                assert time.monotonic() < deadline, f"timed out; {sender.stats}"
                assert not task.done(), task.result()
                if hooks is not None:
                    with hooks.lock:
                        posts = [p["json"] for p in hooks.posts[seen:]]
                    seen += len(posts)
                    if posts:
                        await conn.execute("SELECT api.ingest_webhooks(%s::jsonb[])", ([Jsonb(p) for p in posts],))
                        await conn.execute("SELECT api.process_webhooks(1000)")
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await task


def run(db_url: str, base_url: str, query: str, params: tuple, timeout: float = 60, hooks=None) -> Sender:
    sender = Sender(Settings(database_url=db_url, graph_base_url=base_url, worker_name="tpl"))
    asyncio.run(run_until(sender, db_url, query, params, timeout, hooks))
    return sender


def states(db: psycopg.Connection, campaign_id: int) -> dict[str, int]:
    return dict(db.execute("SELECT state, count(*) FROM core.outbound_messages WHERE campaign_id = %s "
                           "GROUP BY state", (campaign_id,)).fetchall())


ALL_ACCEPTED = ("SELECT count(*) FILTER (WHERE state = 'accepted') = count(*) FROM core.outbound_messages "
                "WHERE campaign_id = ANY(%s)")


def test_a_campaign_of_each_template_kind_reaches_the_simulator_exactly_as_meta_expects(
        db: psycopg.Connection, db_url: str, sim, proxy: RecordingProxy) -> None:
    tenant, number_id = setup_number(db, sim)
    video_id = upload_video(sim)
    mappings = {
        "spring_sale": {"header": {"column": "photo"},
                        "body": {"first_name": {"column": "name"}, "discount": {"value": "20%"},
                                 "end_date": {"column": "until"}},
                        "buttons": {"0": {"column": "path"}, "1": {"value": "STOP"}}},
        "new_arrivals_video": {"header": {"media_id": video_id}, "body": [{"column": "name"}]},
        "invoice_ready": {"header": {"value": "https://cdn.example/inv.pdf", "filename": "invoice.pdf"},
                          "body": [{"column": "invoice"}, {"value": "$20.00"}]},
        "coupon_reminder": {"header": {"column": "name"}, "body": [{"column": "code"}, {"value": "3"}],
                            "buttons": {"0": {"column": "code"}, "1": {"value": "SPRING"}}},
        "visit_store": {"header": {"location": LOCATION}, "body": [{"column": "name"}]},
        "login_code": {"body": [{"column": "code"}]},
    }
    campaigns, lists = {}, {}
    for k, (kind, mapping) in enumerate(mappings.items()):
        lists[kind] = rows_for(phones(5, 100 * k))
        campaigns[kind] = create_campaign(db, tenant, number_id, lists[kind],
                                          {"name": kind, "language": "en_US", **mapping})
    run(db_url, proxy.url, ALL_ACCEPTED, (list(campaigns.values()),))

    stats = sim.stats()
    assert stats["duplicates"] == 0, stats
    assert not {c: n for c, n in stats["rejected_by_code"].items() if c != "130429"}, stats
    received = proxy.received()
    for kind, cid in campaigns.items():
        assert states(db, cid) == {"accepted": 5}, kind
        assert db.execute("SELECT status FROM core.campaigns WHERE campaign_id = %s", (cid,)).fetchone()[0] == "completed"
        outbound = dict(db.execute("SELECT c.wa_id, o.outbound_id FROM core.outbound_messages o "
                                   "JOIN core.contacts c USING (contact_id) WHERE o.campaign_id = %s", (cid,)).fetchall())
        for row in lists[kind][:3]:       # a sample of rows, each as the simulator received it
            want = expected(kind, row)
            if kind == "new_arrivals_video":
                want[0]["parameters"][0]["video"]["id"] = video_id
            assert received[row["phone"]] == {
                "messaging_product": "whatsapp", "recipient_type": "individual", "to": row["phone"], "type": "template",
                "template": {"name": kind, "language": {"code": "en_US"}, "components": want},
                "biz_opaque_callback_data": f"c{cid}:{outbound[row['phone']]}"}, kind
    ledger = [e for e in sim.ledger(0) if e["phone_number_id"] == ONE["phone_number_id"]]
    assert sorted(e["to"] for e in ledger) == sorted(r["phone"] for rows in lists.values() for r in rows)


def test_a_mapping_the_template_does_not_fit_is_refused_before_anything_is_sent(
        db: psycopg.Connection, sim) -> None:
    tenant, number_id = setup_number(db, sim)
    spec = {"name": "spring_sale", "language": "en_US", "header": {"column": "photo"},
            "body": {"first_name": {"column": "name"}, "discount": {"value": "20%"}}}
    with pytest.raises(psycopg.Error) as caught:
        create_campaign(db, tenant, number_id, rows_for(phones(3, 0)), spec)
    assert caught.value.diag.sqlstate == "PW102"
    assert "spring_sale" in caught.value.diag.message_primary and "{{end_date}}" in caught.value.diag.message_primary
    assert db.execute("SELECT count(*) FROM core.campaigns").fetchone()[0] == 0
    assert sim.ledger(0) == []


def test_a_template_error_mid_run_pauses_with_the_rest_queued_and_resumes_cleanly(
        db: psycopg.Connection, db_url: str, sim, proxy: RecordingProxy) -> None:
    tenant, number_id = setup_number(db, sim, mps=20)
    rows = rows_for(phones(60, 0))
    spec = {"name": "spring_sale", "language": "en_US", "header": {"column": "photo"},
            "body": {"first_name": {"column": "name"}, "discount": {"value": "20%"}, "end_date": {"column": "until"}},
            "buttons": {"0": {"column": "path"}}}
    cid = create_campaign(db, tenant, number_id, rows, spec)
    # Meta starts refusing the template's header at the 21st recipient (in list order).
    bad = rows[20]["phone"]
    sim.faults(inject=[{"code": 132012, "mode": "sync", "to": bad,
                        "details": "header: Format mismatch, expected IMAGE, received UNKNOWN"}])
    run(db_url, proxy.url, "SELECT status = 'paused' FROM core.campaigns WHERE campaign_id = %s", (cid,))

    counts = states(db, cid)
    # The pause stops the claims: what was claimed before Meta's answer came back went out
    # (at 80/s, more of it on a slow machine), the rest waits; nothing failed.
    assert counts.get("queued", 0) >= 1 and counts.get("failed", 0) == 0, counts
    assert set(counts) <= {"accepted", "queued"}, counts
    assert db.execute("SELECT state FROM core.outbound_messages o JOIN core.contacts c USING (contact_id) "
                      "WHERE o.campaign_id = %s AND c.wa_id = %s", (cid, bad)).fetchone()[0] == "queued"
    reason = db.execute("SELECT pause_reason FROM core.campaigns WHERE campaign_id = %s", (cid,)).fetchone()[0]
    assert "132012" in reason and "spring_sale" in reason and "header" in reason
    message, details = db.execute("SELECT message, details FROM core.notifications WHERE tenant_id = %s "
                                  "AND kind = 'campaign_paused'", (tenant,)).fetchone()
    assert "expected IMAGE" in message
    assert (details["template"], details["language"], details["component"]) == ("spring_sale", "en_US", "header")
    accepted_before = counts.get("accepted", 0)
    assert len(sim.ledger(0)) == accepted_before

    # The fix made (Meta accepts the template again): resume, and the rest goes once each.
    sim.faults(inject=[])
    db.execute("SELECT api.resume_campaign(%s, %s)", (tenant, cid))
    run(db_url, proxy.url, ALL_ACCEPTED, ([cid],))
    assert states(db, cid) == {"accepted": 60}
    assert db.execute("SELECT status FROM core.campaigns WHERE campaign_id = %s", (cid,)).fetchone()[0] == "completed"
    stats = sim.stats()
    assert stats["duplicates"] == 0, stats
    assert sorted(e["to"] for e in sim.ledger(0)) == sorted(r["phone"] for r in rows)
    assert proxy.received()[bad]["template"]["components"][0] == {
        "type": "header", "parameters": [{"type": "image", "image": {"link": rows[20]["photo"]}}]}


def test_a_media_link_meta_cannot_fetch_pauses_the_campaign(db: psycopg.Connection, db_url: str, sim,
                                                             proxy: RecordingProxy, sim_receiver) -> None:
    tenant, number_id = setup_number(db, sim, mps=20)
    rows = rows_for(phones(40, 0))
    rows[5]["photo"] = "https://cdn.example.com/broken/5.jpg"       # the simulator's fetcher fails it: 131053
    spec = {"name": "spring_sale", "language": "en_US", "header": {"column": "photo"},
            "body": {"first_name": {"column": "name"}, "discount": {"value": "20%"}, "end_date": {"column": "until"}},
            "buttons": {"0": {"column": "path"}}}
    cid = create_campaign(db, tenant, number_id, rows, spec)
    run(db_url, proxy.url, "SELECT status = 'paused' FROM core.campaigns WHERE campaign_id = %s", (cid,),
        hooks=sim_receiver)
    reason = db.execute("SELECT pause_reason FROM core.campaigns WHERE campaign_id = %s", (cid,)).fetchone()[0]
    assert "131053" in reason and "spring_sale" in reason
    assert db.execute("SELECT error_code FROM core.outbound_messages o JOIN core.contacts c USING (contact_id) "
                      "WHERE o.campaign_id = %s AND c.wa_id = %s", (cid, rows[5]["phone"])).fetchone()[0] == 131053
