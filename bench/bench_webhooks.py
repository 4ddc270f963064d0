"""Webhook benchmark: ingestion over HTTP, set-based processing, end-to-end lag, losses.

Sets up its own database (pgwa_bench_webhooks) on the project's cluster (DATABASE_URL or
``scripts/db.sh url``) with a tenant, a number, a two-template campaign and its sent
messages, starts the API server (``python -m api``) and measures:

* ingest_rps_c64, p99_ms_c64   wrk, 64 connections, 20 s: signed single-status webhooks
                               (no worker running; each run starts from an empty queue);
                               medians of --runs rounds (3), each round's in ingest_runs
* ingest_rps_c8,  p99_ms_c8    the same with 8 connections
* bare_rps_c64, bare_p99_ms_c64, bare_rps_c8, bare_p99_ms_c8, ingest_ratio_c64, ingest_ratio_c8
                               the same-run baseline: the same wrk, bodies and uvicorn settings
                               (httptools, uvloop) against a bare ASGI app that reads the body
                               and answers 200; the ratio is pgwa's req/s over the bare one's
* wrk_cpu_share_c64, wrk_cpu_share_c8   the load generator's CPU seconds over the run's
                               wall seconds times the cores (how much of the machine wrk took)
* status_events_per_s          api.process_webhooks draining a preloaded backlog of
                               multi-status payloads (10-100 statuses each: sent, delivered,
                               read, some failed, ~5% reordered, ~3% duplicated)
* lag_p99_ms                   from the 200 of a POST to the commit of the batch that stored
                               its status, at a steady 2,000 webhooks/s for 15 s, with the
                               real worker loops (worker/webhooks.py) in their own process
* poison_lag_p99_ms            the same while another tenant's payloads are poison: one
                               whose processing hangs (its contact row stays locked, as a
                               runaway regex or a stuck backend would hold it) until the
                               webhook loop's statement timeout, retried until dead-lettered,
                               and one every second that raises (set aside at once)
* lost                         200s acknowledged minus payloads stored, over all HTTP phases

Progress on stderr; one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import Server, create_tenant, logger, register_number, upsert_template

from api.signature import sign
from pgwa.config import Settings
from pgwa.local.stack import free_port
from pgwa.scratch import fresh_database
from worker.webhooks import WebhookProcessor

BENCH_DB = "pgwa_bench_webhooks"
SECRET = "bench-app-secret"
WABA_ID = "102290129340398"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_PHONE = "15550783881"

WRK_SECONDS = 20
LAG_RATE = 2000
LAG_SECONDS = 15
PROCESS_MESSAGES = 60_000          # x (sent, delivered, read) in the processing backlog
LAG_MESSAGES = LAG_RATE * LAG_SECONDS // 3 + 1
WRK_BODIES = 4000

LUA = """
local reqs = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do
    local sig, body = line:match("^(%S+)\\t(.*)$")
    reqs[#reqs + 1] = wrk.format("POST", "/webhooks/whatsapp",
      {["Content-Type"] = "application/json", ["X-Hub-Signature-256"] = sig}, body)
  end
  i = math.random(#reqs)
end
request = function()
  i = i % #reqs + 1
  return reqs[i]
end
"""


log = logger("bench-webhooks")


# --- setup ------------------------------------------------------------------------------

def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() != 0:
        sys.exit("bench-webhooks: wrk is not installed (apt-get install wrk, as root)")
    log("installing wrk")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "wrk"]
    if subprocess.run(install, check=False, env=env, stdout=subprocess.DEVNULL).returncode:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(install, env=env, check=True, stdout=subprocess.DEVNULL)
    return shutil.which("wrk") or sys.exit("bench-webhooks: wrk did not install")


def setup_world(conn: psycopg.Connection) -> tuple[int, int]:
    """Tenant, number, two templates, a running campaign; returns (campaign_id, number_id)."""
    tenant = create_tenant(conn, "bench")
    number = register_number(conn, tenant, PHONE_NUMBER_ID, WABA_ID, app_secret=SECRET, throughput_mps=1000,
                             display_phone_number=DISPLAY_PHONE)
    templates = [upsert_template(conn, tenant, WABA_ID, name, category="MARKETING")
                 for name in ("order_update", "promo_offer")]
    campaign = conn.execute("""INSERT INTO core.campaigns (tenant_id, number_id, name, status, started_at)
                               VALUES (%s, %s, 'bench', 'running', now()) RETURNING campaign_id""",
                            (tenant, number)).fetchone()[0]
    for variant, template in enumerate(templates, 1):
        conn.execute("INSERT INTO core.campaign_templates (campaign_id, variant, template_id) VALUES (%s, %s, %s)",
                     (campaign, variant, template))
    return campaign, number


def add_sent_messages(conn: psycopg.Connection, campaign: int, number: int, count: int, tag: str) -> list:
    """``count`` campaign messages already accepted by Meta; returns [(outbound_id, wamid)]."""
    rows = conn.execute(
        """WITH c AS (
               INSERT INTO core.contacts (tenant_id, wa_id)
               SELECT (SELECT tenant_id FROM core.campaigns WHERE campaign_id = %(campaign)s),
                      (%(base)s + g)::text
               FROM generate_series(1, %(n)s) g RETURNING contact_id, wa_id
           ), o AS (
               INSERT INTO core.outbound_messages (number_id, campaign_id, variant, contact_id, state, wamid,
                                                   attempts, claimed_at, accepted_at)
               SELECT %(number)s, %(campaign)s, 1 + contact_id %% 2, contact_id, 'accepted',
                      'wamid.' || %(tag)s || '.' || wa_id, 1, now(), now()
               FROM c RETURNING outbound_id, wamid, variant
           ), v AS (
               UPDATE core.campaign_templates t SET total = t.total + x.n, sent = t.sent + x.n
               FROM (SELECT variant, count(*)::int AS n FROM o GROUP BY variant) x
               WHERE t.campaign_id = %(campaign)s AND t.variant = x.variant
           ), k AS (
               UPDATE core.campaigns SET total = total + %(n)s, sent = sent + %(n)s, finished = finished + %(n)s
               WHERE campaign_id = %(campaign)s
           )
           SELECT outbound_id, wamid FROM o ORDER BY outbound_id""",
        {"campaign": campaign, "number": number, "n": count, "tag": tag,
         "base": 16_500_000_000 + random.randrange(10**8) * 10}).fetchall()
    return rows


def status(campaign: int, outbound_id: int, wamid: str, st: str, ts: int) -> dict:
    s: dict = {"id": wamid, "status": st, "timestamp": str(ts), "recipient_id": wamid.rsplit(".", 1)[1],
               "biz_opaque_callback_data": f"c{campaign}:{outbound_id}"}
    if st in ("sent", "delivered"):
        s["conversation"] = {"id": "a75d17ad06104c51166f948319b03c6a", "origin": {"type": "marketing"}}
        if st == "sent":
            s["conversation"]["expiration_timestamp"] = str(ts + 86400)
        s["pricing"] = {"billable": True, "pricing_model": "PMP", "type": "regular", "category": "marketing"}
    if st == "failed":
        s["errors"] = [{"code": 131026, "title": "Message undeliverable", "message": "Message undeliverable",
                        "error_data": {"details": "Message Undeliverable."}}]
    return s


def payload(statuses: list[dict]) -> bytes:
    return orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "changes": [{
        "value": {"messaging_product": "whatsapp",
                  "metadata": {"display_phone_number": DISPLAY_PHONE, "phone_number_id": PHONE_NUMBER_ID},
                  "statuses": statuses},
        "field": "messages"}]}]})


# --- the API server and wrk -----------------------------------------------------------------


def api_server(url: str) -> Server:
    port = free_port()
    return Server("bench-webhooks", [sys.executable, "-m", "api"], port, timeout=20,
                  env={"DATABASE_URL": url, "WHATSAPP_APP_SECRET": SECRET,
                       "PGWA_API_HOST": "127.0.0.1", "PGWA_API_PORT": str(port)})


BARE_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})
"""


def bare_server(tmp: Path) -> Server:
    """The baseline: a bare ASGI app under the API's own uvicorn settings."""
    (tmp / "bare_asgi.py").write_text(BARE_APP)
    port = free_port()
    return Server("bench-webhooks (bare ASGI)", [
        sys.executable, "-m", "uvicorn", "--app-dir", str(tmp), "bare_asgi:app", "--host", "127.0.0.1",
        "--port", str(port), "--http", "httptools", "--loop", "uvloop", "--no-access-log",
        "--log-level", "warning", "--timeout-keep-alive", "75"], port, timeout=20)


def run_wrk(wrk: str, port: int, connections: int, seconds: int, tmp: Path) -> dict:
    threads = 2 if connections >= 16 else 1
    cpu0 = os.times()
    out = subprocess.run([wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", str(tmp / "post.lua"), f"http://127.0.0.1:{port}/webhooks/whatsapp",
                          "--", str(tmp / "bodies.txt")], capture_output=True, text=True, check=True).stdout
    cpu1 = os.times()
    wrk_cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = int(non2xx.group(1)) if non2xx else 0
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p99_ms": round(float(p99.group(1)) * scale, 2), "acked": requests - errors, "errors": errors,
            "wrk_cpu_share": round(wrk_cpu / (seconds * (os.cpu_count() or 1)), 3)}


def queue_counts(conn: psycopg.Connection) -> int:
    """Payloads stored: queued, archived or dead-lettered."""
    return conn.execute("""SELECT (SELECT count(*) FROM pgmq.q_webhooks) + (SELECT count(*) FROM pgmq.a_webhooks)
                                  + (SELECT count(*) FROM pgmq.q_webhooks_dead)""").fetchone()[0]


def reset_queues(conn: psycopg.Connection) -> None:
    conn.execute("TRUNCATE pgmq.q_webhooks, pgmq.a_webhooks, pgmq.q_webhooks_dead")


# --- processing throughput ------------------------------------------------------------------

def backlog(campaign: int, messages: list, rng: random.Random) -> tuple[list[bytes], int]:
    """Multi-status payloads for ``messages``: (payloads, statuses in them)."""
    now = int(time.time())
    events = []
    block = 2000
    for start in range(0, len(messages), block):
        chunk = messages[start:start + block]
        fails = {i for i in range(len(chunk)) if rng.random() < 0.02}
        for st in ("sent", "delivered", "read"):
            for i, (oid, w) in enumerate(chunk):
                if i in fails and st != "sent":
                    if st == "delivered":
                        events.append(status(campaign, oid, w, "failed", now))
                    continue
                events.append(status(campaign, oid, w, st, now))
    for i in range(len(events) - 1):          # ~5% delivered out of order
        if rng.random() < 0.05:
            events[i], events[i + 1] = events[i + 1], events[i]
    for _ in range(len(events) * 3 // 100):   # ~3% delivered twice
        events.insert(rng.randrange(len(events)), dict(rng.choice(events)))
    payloads, i = [], 0
    while i < len(events):
        n = rng.randint(10, 100)
        payloads.append(payload(events[i:i + n]))
        i += n
    return payloads, len(events)


async def drain_with(url: str, workers: int, batch: int) -> float:
    processors = [WebhookProcessor(Settings(database_url=url), batch=batch) for _ in range(workers)]
    stop = asyncio.Event()
    start = time.perf_counter()
    await asyncio.gather(*(p.drain(stop) for p in processors))
    elapsed = time.perf_counter() - start
    for p in processors:
        await p.db.close()
    return elapsed


def measure_processing(url: str, conn: psycopg.Connection, campaign: int, number: int, rng: random.Random,
                       workers: int, batch: int) -> dict:
    messages = add_sent_messages(conn, campaign, number, PROCESS_MESSAGES, "proc")
    payloads, statuses = backlog(campaign, messages, rng)
    log(f"processing: preloading {len(payloads)} payloads carrying {statuses} statuses")
    for i in range(0, len(payloads), 500):
        conn.execute("SELECT api.ingest_webhooks(%s::text[]::jsonb[])",
                     ([p.decode() for p in payloads[i:i + 500]],))
    conn.execute("VACUUM ANALYZE core.outbound_messages, core.status_events")
    before = conn.execute("SELECT count(*) FROM core.status_events").fetchone()[0]
    elapsed = asyncio.run(drain_with(url, workers, batch))
    stored = conn.execute("SELECT count(*) FROM core.status_events").fetchone()[0] - before
    left = conn.execute("SELECT count(*) FROM pgmq.q_webhooks").fetchone()[0]
    counters = conn.execute("""SELECT count(*) FILTER (WHERE state = 'read'), count(*) FILTER (WHERE state = 'failed')
                               FROM core.outbound_messages WHERE wamid LIKE 'wamid.proc.%'""").fetchone()
    log(f"processing: {statuses} statuses ({stored} new events) in {elapsed:.2f} s "
        f"with {workers} loop(s) of {batch}; {counters[0]} read, {counters[1]} failed, {left} left")
    return {"status_events_per_s": round(statuses / elapsed), "new_events_per_s": round(stored / elapsed)}


# --- lag at a steady rate -------------------------------------------------------------------

WORKER_CHILD = """
import asyncio, json, signal, sys, time
sys.path.insert(0, {root!r})
from pgwa.config import Settings
from worker.webhooks import WebhookProcessor

class Timed(WebhookProcessor):
    intervals = []
    async def _process(self, ids, stop):
        t0 = time.time()
        result = await super()._process(ids, stop)
        self.intervals.append((t0, time.time()))
        return result

async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    settings = Settings.from_env()
    loops = [Timed(settings, index=i) for i in range(settings.webhook_loops)]
    print("ready", flush=True)
    await asyncio.gather(*(p.run(stop) for p in loops))
    json.dump(Timed.intervals, open({out!r}, "w"))

asyncio.run(main())
"""


async def steady_load(port: int, requests: list[tuple[bytes, bytes]], rate: int, conns: int) -> tuple:
    """POST ``requests`` (key, raw request) at ``rate``/s over ``conns`` connections.

    Returns ({key: ack time}, acknowledged 200s, other answers)."""
    acks: dict[bytes, float] = {}
    other = 0
    start = time.time() + 0.2

    async def connection(k: int) -> None:
        nonlocal other
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(k, len(requests), conns):
            due = start + i / rate
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            key, raw = requests[i]
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            if length:
                await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 200"):
                acks[key] = time.time()
            else:
                other += 1
        writer.close()

    await asyncio.gather(*(connection(k) for k in range(conns)))
    return acks, other


def http_post(body: bytes) -> bytes:
    return (b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"X-Hub-Signature-256: " + sign(body, SECRET).encode() + b"\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


POISON_NUMBER, POISON_WABA, POISON_SENDER = "106540352242999", "102290129340999", "16505559999"


def poison_world(conn: psycopg.Connection) -> None:
    """Another tenant, whose one contact's row the bench keeps locked during the phase."""
    tenant = create_tenant(conn, "poison")
    register_number(conn, tenant, POISON_NUMBER, POISON_WABA)
    conn.execute("INSERT INTO core.contacts (tenant_id, wa_id) VALUES (%s, %s)", (tenant, POISON_SENDER))


def poison_payloads(i: int) -> tuple[bytes, bytes]:
    """(hangs, raises): an inbound message for the locked contact; an entry jsonb cannot walk."""
    hangs = orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": POISON_WABA, "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": POISON_NUMBER},
            "contacts": [{"profile": {"name": "P"}, "wa_id": POISON_SENDER}],
            "messages": [{"from": POISON_SENDER, "id": f"wamid.hangs.{i}", "timestamp": str(int(time.time())),
                          "type": "text", "text": {"body": "hangs"}}]}}]}]})
    raises = orjson.dumps({"object": "whatsapp_business_account", "entry": {"id": POISON_WABA, "n": i}})
    return hangs, raises


def measure_lag(url: str, conn: psycopg.Connection, api: Server, campaign: int, number: int,
                tmp: Path, poison: bool = False) -> dict:
    tag = "poison" if poison else "lag"
    messages = add_sent_messages(conn, campaign, number, LAG_MESSAGES, tag)
    count = LAG_RATE * LAG_SECONDS
    now = int(time.time())
    requests = []
    for i in range(count):
        oid, w = messages[i // 3]
        st = ("sent", "delivered", "read")[i % 3]
        requests.append((f"{w}|{st}".encode(), http_post(payload([status(campaign, oid, w, st, now)]))))
        if poison and i % LAG_RATE == LAG_RATE // 2:
            hangs, raises = poison_payloads(i)
            requests.append((b"raises", http_post(raises)))
            if i < LAG_RATE:
                requests.append((b"hangs", http_post(hangs)))
    holder = None
    if poison:
        holder = psycopg.connect(url)
        holder.execute("SELECT 1 FROM core.contacts WHERE wa_id = %s FOR UPDATE", (POISON_SENDER,))
    # Statuses of one message go to different connections and may overtake each other,
    # as Meta's do; every (wamid, status) is stored once whatever the order.
    out = tmp / "intervals.json"
    child = subprocess.Popen([sys.executable, "-c", WORKER_CHILD.format(root=str(ROOT), out=str(out))],
                             env={**os.environ, "DATABASE_URL": url},
                             stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    child.stdout.readline()
    time.sleep(0.5)
    log(f"{tag}: {count} webhooks at {LAG_RATE}/s with the worker running")
    try:
        acks, other = asyncio.run(steady_load(api.port, requests, LAG_RATE, 16))
        deadline = time.monotonic() + 60
        # Drained: nothing queued but the hanging payload (retried until dead-lettered).
        while conn.execute("SELECT count(*) FROM pgmq.q_webhooks WHERE message::text NOT LIKE '%wamid.hangs%'"
                           ).fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.3)
    finally:
        if holder is not None:
            holder.close()
    child.send_signal(signal.SIGTERM)
    child.wait(30)
    intervals = sorted(json.loads(out.read_text()))
    starts = [a for a, _ in intervals]
    stored = conn.execute("""SELECT wamid || '|' || status, extract(epoch FROM received_at)::float8
                             FROM core.status_events WHERE wamid LIKE %s""", (f"wamid.{tag}.%",)).fetchall()
    lags = []
    for key, received in stored:
        ack = acks.get(key.encode())
        if ack is None:
            continue
        # received_at is its batch's transaction start; the batch committed when its call
        # returned. Loops run side by side: of the calls under way then, take the one that
        # ended last (an upper bound).
        j = bisect.bisect_right(starts, received) - 1
        ends = [intervals[k][1] for k in range(max(0, j - 3), j + 1) if intervals[k][1] >= received]
        committed = max(ends) if ends else received
        lags.append(max(0.0, committed - ack) * 1000)
    lags.sort()
    p99 = lags[int(len(lags) * 0.99) - 1] if lags else None
    dead = conn.execute("SELECT count(*) FROM pgmq.q_webhooks_dead").fetchone()[0]
    log(f"{tag}: {len(acks)} acknowledged, {other} other answers, {len(stored)} statuses stored, "
        f"{len(intervals)} batches, {dead} dead-lettered; p50 {statistics.median(lags):.1f} ms, "
        f"p99 {p99:.1f} ms")
    return {"lag_p99_ms": round(p99, 1) if p99 is not None else None,
            "lag_p50_ms": round(statistics.median(lags), 1) if lags else None,
            "acked": len([k for k in acks if not k.startswith((b"hangs", b"raises"))]),
            "stored_events": len(stored), "dead": dead}


# --- main ---------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--wrk-seconds", type=int, default=WRK_SECONDS)
    parser.add_argument("--runs", type=int, default=3,
                        help="rounds of the four wrk runs (pgwa c64, c8, bare c64, c8); medians")
    parser.add_argument("--process-workers", type=int, default=1,
                        help="concurrent processing loops for status_events_per_s")
    parser.add_argument("--process-batch", type=int, default=200)
    parser.add_argument("--skip", default="", help="comma-separated phases to skip: wrk,process,lag,poison")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    rng = random.Random(5)

    wrk = ensure_wrk()
    log(f"creating {BENCH_DB}")
    url = fresh_database(BENCH_DB)
    result: dict = {}
    lost = 0
    with psycopg.connect(url, autocommit=True) as conn, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        campaign, number = setup_world(conn)
        api = api_server(url)
        try:
            if "wrk" not in skip:
                messages = add_sent_messages(conn, campaign, number, WRK_BODIES, "wrk")
                now = int(time.time())
                lines = []
                for oid, w in messages:
                    body = payload([status(campaign, oid, w, rng.choice(("sent", "delivered", "read")), now)])
                    lines.append(sign(body, SECRET) + "\t" + body.decode())
                (tmp / "bodies.txt").write_text("\n".join(lines) + "\n")
                (tmp / "post.lua").write_text(LUA)
                log(f"ingest: payloads of {sum(map(len, lines)) // len(lines)} bytes, "
                    f"{args.wrk_seconds} s per run")
                runs: dict[str, list] = {}
                bare = bare_server(tmp)
                try:
                    # Rounds alternate pgwa's receiver and the bare app, so a machine that
                    # slows down during the bench slows both; medians of the rounds.
                    for k in range(args.runs):
                        for c in (64, 8):
                            # Each run starts from an empty queue, as a worker keeps it.
                            reset_queues(conn)
                            time.sleep(2)
                            r = run_wrk(wrk, api.port, c, args.wrk_seconds, tmp)
                            log(f"round {k + 1}: ingest c{c}: {r['rps']:.0f} req/s, p99 {r['p99_ms']} ms, "
                                f"{r['errors']} non-200")
                            runs.setdefault(f"ingest_rps_c{c}", []).append(round(r["rps"]))
                            runs.setdefault(f"p99_ms_c{c}", []).append(r["p99_ms"])
                            runs.setdefault(f"wrk_cpu_share_c{c}", []).append(r["wrk_cpu_share"])
                            stored = queue_counts(conn)
                            if stored > r["acked"]:
                                log(f"ingest c{c}: {stored - r['acked']} stored beyond the 200s wrk counted "
                                    "(in flight when it stopped)")
                            lost += max(0, r["acked"] - stored)
                        reset_queues(conn)
                        for c in (64, 8):
                            r = run_wrk(wrk, bare.port, c, args.wrk_seconds, tmp)
                            log(f"round {k + 1}: bare ASGI c{c}: {r['rps']:.0f} req/s, p99 {r['p99_ms']} ms")
                            runs.setdefault(f"bare_rps_c{c}", []).append(round(r["rps"]))
                            runs.setdefault(f"bare_p99_ms_c{c}", []).append(r["p99_ms"])
                finally:
                    bare.stop()
                for key, values in runs.items():
                    result[key] = round(statistics.median(values), 3 if "share" in key else 2)
                for c in (64, 8):
                    result[f"ingest_rps_c{c}"] = round(result[f"ingest_rps_c{c}"])
                    result[f"bare_rps_c{c}"] = round(result[f"bare_rps_c{c}"])
                    result[f"ingest_ratio_c{c}"] = round(result[f"ingest_rps_c{c}"] / max(result[f"bare_rps_c{c}"], 1), 3)
                result["runs"] = args.runs
                result["ingest_runs"] = {key: runs[key] for key in
                                         ("ingest_rps_c64", "p99_ms_c64", "ingest_rps_c8", "p99_ms_c8",
                                          "bare_rps_c64", "bare_p99_ms_c64", "bare_rps_c8", "bare_p99_ms_c8")}
            if "process" not in skip:
                result.update(measure_processing(url, conn, campaign, number, rng,
                                                 args.process_workers, args.process_batch))
                reset_queues(conn)
            if "lag" not in skip:
                lag = measure_lag(url, conn, api, campaign, number, tmp)
                result["lag_p99_ms"] = lag["lag_p99_ms"]
                result["lag_p50_ms"] = lag["lag_p50_ms"]
                lost += max(0, lag["acked"] - queue_counts(conn))
            if "poison" not in skip:
                reset_queues(conn)
                poison_world(conn)
                lag = measure_lag(url, conn, api, campaign, number, tmp, poison=True)
                result["poison_lag_p99_ms"] = lag["lag_p99_ms"]
                result["poison_lag_p50_ms"] = lag["lag_p50_ms"]
                result["poison_dead"] = lag["dead"]
        finally:
            api.stop()
    result["lost"] = lost
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
