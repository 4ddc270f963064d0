"""The dashboard's part of `make bench-api` (bench/bench_api.py calls it): its pages on a
big inbox and its event streams, each against a same-run baseline.

* an inbox of ``inbox_rows`` messages (default 10,000,000; 100 a conversation) on the
  bench tenant's number, written set-based like the rest of bench_api's fixture;
* dashboard_page_p99_ms   the p99 time of GET /dashboard/inbox and of the big campaign's
  GET /dashboard/campaigns/{id} (the slower of the two), logged in as an admin, against
  a bare Starlette app serving the same bytes (bare_page_p99_ms) with the same client;
* sse_clients             ``clients`` open /dashboard/events streams on one API process;
  one campaign update (an UPDATE of core.campaigns, whose trigger NOTIFYs): how many
  streams got it within 1 s and the p99 latency from the UPDATE, against a bare
  Starlette SSE endpoint fanning a POST out to as many streams (sse_bare_p99_ms).

The bare baseline app is ``bare_app`` here, served by uvicorn as ``python -m api`` is.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
from common import Server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from api.dashboard.passwords import hash_password
from pgwa.local.stack import free_port

EMAIL = "bench-admin@example.com"
PASSWORD = "bench dashboard password"
PER_CONVERSATION = 100
CHUNK = 1_000_000
HOST = "127.0.0.1"

INBOX_CONTACTS = """
INSERT INTO core.contacts (tenant_id, wa_id, name)
SELECT %(tenant)s, (15550000000 + g)::text, 'Inbox contact ' || g FROM generate_series(1, %(n)s) g
"""
# Two in, one out, one message every 10 ms; conversation = message number modulo contacts.
INBOX_MESSAGES = """
INSERT INTO core.inbox_messages (number_id, contact_id, direction, type, body, created_at)
SELECT %(number)s, %(first)s + g %% %(contacts)s, CASE WHEN g %% 3 = 0 THEN 'out' ELSE 'in' END, 'text',
       'bench message ' || g, %(t0)s::timestamptz + make_interval(secs => g / 100.0)
FROM generate_series(%(lo)s, %(hi)s) g
"""
CONVERSATIONS = """
INSERT INTO core.conversations (number_id, contact_id, last_inbound_at, last_message_at, unread)
SELECT %(number)s, c.contact_id, c.last_at, c.last_at, c.contact_id %% 4
FROM (SELECT %(first)s + k AS contact_id,
             %(t0)s::timestamptz + make_interval(secs => (%(rows)s - ((%(rows)s - k) %% %(contacts)s)) / 100.0) AS last_at
      FROM generate_series(0, %(contacts)s - 1) k) c
"""


def build_inbox(url: str, tenant: int, number: int, big: int, rows: int, log) -> dict:
    """``rows`` inbox messages in rows / 100 conversations of the tenant's number."""
    began = time.perf_counter()
    contacts = max(1, rows // PER_CONVERSATION)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        ids = conn.execute(INBOX_CONTACTS + " RETURNING contact_id", {"tenant": tenant, "n": contacts}).fetchall()
        first = min(i[0] for i in ids)
        assert max(i[0] for i in ids) - first + 1 == contacts, "contact ids are not contiguous"
        t0 = conn.execute("SELECT date_trunc('minute', now()) - make_interval(secs => %s / 100.0 + 60)",
                          (rows,)).fetchone()[0]
        args = {"number": number, "first": first, "contacts": contacts, "t0": t0, "rows": rows}
        for lo in range(1, rows + 1, CHUNK):
            conn.execute(INBOX_MESSAGES, {**args, "lo": lo, "hi": min(lo + CHUNK - 1, rows)})
            log(f"  inbox messages up to {min(lo + CHUNK - 1, rows):,} ({time.perf_counter() - began:.0f} s)")
        conn.execute(CONVERSATIONS, args)
        conn.execute("VACUUM (ANALYZE) core.inbox_messages, core.conversations, core.contacts")
        conn.execute("SELECT api.create_user(%s, %s, 'admin', %s)", (tenant, EMAIL, hash_password(PASSWORD)))
        # The big campaign's (empty) queue, as a campaign completed within the day still has:
        # the campaign page previews its first message from there.
        conn.execute("SELECT pgmq.create(core.campaign_queue(%s))", (big,))
    return {"inbox_rows": rows, "inbox_conversations": contacts, "inbox_build_s": round(time.perf_counter() - began, 1)}


# -- the bare baseline ---------------------------------------------------------------------------

BARE_BODY_FILE = "PGWA_BENCH_BARE_BODY"
_streams: set[asyncio.Queue] = set()


async def _page(request: Request) -> Response:
    return Response(request.app.state.body, media_type="text/html")


async def _events(request: Request) -> Response:
    async def stream() -> AsyncIterator[bytes]:
        queue: asyncio.Queue = asyncio.Queue(256)
        _streams.add(queue)
        try:
            yield b"retry: 2000\n: connected\n\n"
            while True:
                kind, data = await queue.get()
                yield b"event: " + kind + b"\ndata: " + data + b"\n\n"
        finally:
            _streams.discard(queue)
    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


async def _fire(request: Request) -> Response:
    for queue in _streams:
        queue.put_nowait((b"campaign", b'{"ids": ["1"]}'))
    return Response(str(len(_streams)), media_type="text/plain")


def bare_app() -> Starlette:
    app = Starlette(routes=[Route("/page", _page), Route("/events", _events), Route("/fire", _fire, methods=["POST"])])
    app.state.body = Path(os.environ[BARE_BODY_FILE]).read_bytes()
    return app


# -- measures ------------------------------------------------------------------------------------

def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3)


def timed_ms(http: httpx.Client, path: str, calls: int) -> list[float]:
    for _ in range(5):
        assert http.get(path).status_code == 200
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        answer = http.get(path)
        times.append((time.perf_counter() - began) * 1000)
        assert answer.status_code == 200, answer.status_code
    return times


def log_in(base: str) -> httpx.Client:
    http = httpx.Client(base_url=base, timeout=60, follow_redirects=True)
    form = http.get("/dashboard/login")
    token = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    done = http.post("/dashboard/login", data={"csrf_token": token, "email": EMAIL, "password": PASSWORD})
    assert done.status_code == 200 and EMAIL in done.text, done.status_code
    return http


async def _open(port: int, path: str, cookie: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n"
                 f"Cookie: {cookie}\r\n\r\n".encode())
    await writer.drain()
    seen = b""
    while b": connected" not in seen:
        chunk = await asyncio.wait_for(reader.read(4096), 30)
        if not chunk:
            raise RuntimeError(f"stream closed before it connected: {seen[:200]!r}")
        seen += chunk
    return reader, writer


async def _until_campaign(reader: asyncio.StreamReader) -> float:
    seen = b""
    while b"event: campaign" not in seen:
        chunk = await reader.read(4096)
        if not chunk:
            raise ConnectionError("stream closed")
        seen = seen[-64:] + chunk
    return time.perf_counter()


async def sse_fanout(port: int, path: str, cookie: str, clients: int, fire) -> dict:
    """Opens ``clients`` streams (50 at a time), calls ``fire`` once, times each stream's event."""
    streams = []
    for lo in range(0, clients, 50):
        streams += await asyncio.gather(*(_open(port, path, cookie) for _ in range(lo, min(lo + 50, clients))))
    waiters = [asyncio.create_task(_until_campaign(r)) for r, _ in streams]
    await asyncio.sleep(0.2)      # every waiter reading
    began = time.perf_counter()
    await asyncio.to_thread(fire)
    done, pending = await asyncio.wait(waiters, timeout=5)
    for task in pending:
        task.cancel()
    latencies = [(t.result() - began) * 1000 for t in done if not t.exception()]
    for _, writer in streams:
        writer.close()
    within = sum(1 for v in latencies if v <= 1000)
    missing = [5000.0] * (clients - len(latencies))
    return {"clients": clients, "received_within_1s": within, "p99_ms": p99(latencies + missing) if clients else 0}


def measure(url: str, big: int, calls: int, clients: int, log) -> dict:
    port = free_port()
    api = Server("bench-dashboard", [sys.executable, "-m", "api"], port, timeout=60,
                 env={"DATABASE_URL": url, "PGWA_API_PORT": str(port), "PGWA_LOG_LEVEL": "warning"})
    try:
        http = log_in(f"http://{HOST}:{port}")
        inbox = timed_ms(http, "/dashboard/inbox", calls)
        campaign = timed_ms(http, f"/dashboard/campaigns/{big}", calls)
        body = http.get("/dashboard/inbox").content
        cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
        log(f"dashboard pages: inbox p99 {p99(inbox)} ms, campaign p99 {p99(campaign)} ms; {clients} streams")

        # The update's connection is open before the clock starts, as the bare POST's is.
        with psycopg.connect(url, autocommit=True) as conn:
            sse = asyncio.run(sse_fanout(port, "/dashboard/events", cookie, clients, lambda: conn.execute(
                "UPDATE core.campaigns SET sent = sent WHERE campaign_id = %s", (big,))))
        http.close()
    finally:
        api.stop()

    bare_port = free_port()
    body_file = Path(f"/tmp/pgwa-bench-bare-{os.getpid()}.html")
    body_file.write_bytes(body)
    serve = ("import sys, uvicorn; sys.path.insert(0, 'bench'); uvicorn.run('bench_dashboard:bare_app', "
             f"factory=True, host='{HOST}', port={bare_port}, http='httptools', loop='uvloop', access_log=False, "
             "log_level='warning')")
    bare = Server("bench-dashboard (bare page)", [sys.executable, "-c", serve], bare_port, path="/page", timeout=60,
                  env={BARE_BODY_FILE: str(body_file)})
    try:
        with httpx.Client(base_url=f"http://{HOST}:{bare_port}", timeout=60) as http:
            page = timed_ms(http, "/page", calls)
            bare_sse = asyncio.run(sse_fanout(bare_port, "/events", "", clients, lambda: http.post("/fire")))
    finally:
        bare.stop()
        body_file.unlink(missing_ok=True)

    page_p99 = max(p99(inbox), p99(campaign))
    return {
        "dashboard_page_p99_ms": page_p99,
        "dashboard_inbox_p99_ms": p99(inbox),
        "dashboard_campaign_p99_ms": p99(campaign),
        "bare_page_p99_ms": p99(page),
        "dashboard_page_ratio": round(page_p99 / max(p99(page), 0.001), 2),
        "dashboard_page_bytes": len(body),
        "sse_clients": sse["clients"],
        "sse_received_within_1s": sse["received_within_1s"],
        "sse_p99_ms": sse["p99_ms"],
        "sse_bare_received_within_1s": bare_sse["received_within_1s"],
        "sse_bare_p99_ms": bare_sse["p99_ms"],
        "sse_ratio": round(sse["p99_ms"] / max(bare_sse["p99_ms"], 0.001), 2),
        "dashboard_calls": calls,
    }
