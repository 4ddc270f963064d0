"""API benchmark: the campaign list and one campaign's stats, from maintained counters.

Sets up its own database on the project's cluster with a fixture written set-based
(INSERT ... SELECT generate_series, straight into the core tables):

* 1,000 campaigns of one tenant with live counters, templates and a timeline each;
* one campaign of 3.37 million messages and 10 million status events (sent, delivered,
  read, failed), whose maintained counters, per-minute timeline and error table are
  then made consistent with them by api.reconcile_campaign(..., p_fix => true) — which
  is timed too, as the one function here that does read every message.

Then measures, as medians over many calls:

* campaign_list_ms        api.campaigns(tenant, NULL, NULL, 1000) as the route's JSON text
* campaign_list_rows_ms   the same, fetched as rows by psycopg
* campaign_stats_ms       api.campaign_stats(tenant, big campaign) as the route's JSON text
* http_campaign_list_ms, http_campaign_stats_ms   GET /v1/campaigns?limit=1000 and
                          GET /v1/campaigns/{id}/stats on a real `python -m api` server

and, from bench/bench_dashboard.py, on an inbox of --inbox-rows messages (default
10,000,000) added to the fixture: dashboard_page_p99_ms (the inbox and the big campaign's
dashboard pages) and sse_clients (--sse-clients open /dashboard/events streams, one
campaign update), each with a bare Starlette baseline and ratio.

Progress on stderr; one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import bench_dashboard
import httpx
import psycopg
from common import create_tenant, logger, register_number, upsert_template
from psycopg.rows import dict_row

from pgwa import scratch
from pgwa.config import ROOT
from pgwa.local.stack import free_port
from pgwa.queries import queries

BENCH_DB = "pgwa_bench_api"
WABA_ID = "700000000000009"
CAMPAIGNS = 1000
# 2% failed after sending (sent, failed), 1% delivered (sent, delivered), 97% read (sent,
# delivered, read): 2.97 events a message, so 3.37 M messages carry 10 M status events.
MESSAGES = 3_370_000

LIST_JSON = """SELECT json_build_object('data', coalesce(json_agg(c ORDER BY c.campaign_id DESC), '[]'),
    'next_before_id', CASE WHEN count(*) = 1000 THEN min(c.campaign_id) END)::text
FROM api.campaigns(%s, NULL, NULL, 1000) c"""
LIST_ROWS = "SELECT * FROM api.campaigns(%s, NULL, NULL, 1000)"
STATS_JSON = "SELECT row_to_json(s)::text FROM api.campaign_stats(%s, %s) s"

MANY_CAMPAIGNS = """
INSERT INTO core.campaigns (tenant_id, number_id, name, status, created_at, started_at, completed_at, total,
                            sent, delivered, read, replied, failed, finished, skipped_invalid)
SELECT %(tenant)s, %(number)s, 'campaign ' || g,
       (ARRAY['completed', 'completed', 'completed', 'running', 'paused', 'draft', 'cancelled'])[1 + g %% 7],
       now() - make_interval(hours => %(n)s - g), now() - make_interval(hours => %(n)s - g),
       CASE WHEN g %% 7 < 3 THEN now() - make_interval(hours => %(n)s - g - 1) END,
       t.total, t.total * 9 / 10, t.total * 8 / 10, t.total / 2, t.total / 50, t.total / 20,
       t.total * 9 / 10 + t.total / 20, g %% 13
FROM generate_series(1, %(n)s) g, LATERAL (SELECT 1000 + (g * 7919) %% 99000 AS total) t
"""
MANY_TEMPLATES = """
INSERT INTO core.campaign_templates (campaign_id, variant, template_id, params, total, sent, delivered, read,
                                     replied, failed)
SELECT c.campaign_id, v.variant, v.template_id, '[]', c.total / 2, c.sent / 2, c.delivered / 2, c.read / 2,
       c.replied / 2, c.failed / 2
FROM core.campaigns c, (VALUES (0::smallint, %(t1)s::bigint), (1::smallint, %(t2)s::bigint)) v(variant, template_id)
WHERE c.tenant_id = %(tenant)s
"""
MANY_MINUTES = """
INSERT INTO core.campaign_minutes (campaign_id, minute, sent, delivered, read, failed)
SELECT c.campaign_id, date_trunc('minute', c.started_at) + make_interval(mins => m), c.sent / 30,
       c.delivered / 30, c.read / 30, c.failed / 30
FROM core.campaigns c, generate_series(0, 29) m
WHERE c.tenant_id = %(tenant)s
"""

BIG_CAMPAIGN = """
INSERT INTO core.campaigns (tenant_id, number_id, name, status, created_at, started_at, completed_at, total)
VALUES (%(tenant)s, %(number)s, 'ten million events', 'completed', %(t0)s, %(t0)s,
        %(t0)s::timestamptz + make_interval(secs => %(n)s / 1000.0), %(n)s)
RETURNING campaign_id
"""
BIG_TEMPLATES = """
INSERT INTO core.campaign_templates (campaign_id, variant, template_id, params, total)
VALUES (%(c)s, 0, %(t1)s, '[{"column": "name"}]', (%(n)s + 1) / 2), (%(c)s, 1, %(t2)s, '[]', %(n)s / 2)
"""
CONTACTS = """
INSERT INTO core.contacts (tenant_id, wa_id, name)
SELECT %(tenant)s, (14150000000 + g)::text, 'Contact ' || g FROM generate_series(1, 1000) g
"""
# One message a millisecond (1,000 msg/s); the kind of each follows from g % 100.
BIG_MESSAGES = """
INSERT INTO core.outbound_messages (outbound_id, number_id, campaign_id, variant, contact_id, kind, state, attempts,
                                    wamid, error_code, error_category, error_detail, queued_at, claimed_at,
                                    accepted_at, sent_at, delivered_at, read_at, failed_at, replied_at)
OVERRIDING SYSTEM VALUE
SELECT g, %(number)s, %(c)s, (g %% 2)::smallint, %(first_contact)s + g %% 1000, 'campaign',
       CASE WHEN g %% 100 < 2 THEN 'failed' WHEN g %% 100 = 2 THEN 'delivered' ELSE 'read' END, 1,
       'wamid.bench.' || g,
       CASE WHEN g %% 100 = 0 THEN 131026 WHEN g %% 100 = 1 THEN 131049 END,
       CASE WHEN g %% 100 = 0 THEN 'recipient' WHEN g %% 100 = 1 THEN 'policy' END,
       CASE WHEN g %% 100 < 2 THEN 'bench failure' END,
       t.t0, t.t0, t.t0, t.t0 + interval '1 second',
       CASE WHEN g %% 100 >= 2 THEN t.t0 + interval '3 seconds' END,
       CASE WHEN g %% 100 >= 3 THEN t.t0 + make_interval(secs => 60 + g %% 600) END,
       CASE WHEN g %% 100 < 2 THEN t.t0 + interval '2 seconds' END,
       CASE WHEN g %% 50 = 7 THEN t.t0 + interval '5 minutes' END
FROM generate_series(%(lo)s, %(hi)s) g,
     LATERAL (SELECT %(t0)s::timestamptz + make_interval(secs => g / 1000.0) AS t0) t
"""
BIG_EVENTS = """
INSERT INTO core.status_events (wamid, status, outbound_id, occurred_at, received_at, recipient_id, error_code,
                                pricing_category)
SELECT 'wamid.bench.' || g, s.status, g, s.at, s.at + interval '200 milliseconds',
       (14150000000 + g %% 1000)::text, s.code, 'marketing'
FROM generate_series(%(lo)s, %(hi)s) g,
     LATERAL (SELECT %(t0)s::timestamptz + make_interval(secs => g / 1000.0) AS t0) t,
     LATERAL (VALUES ('sent', t.t0 + interval '1 second', NULL::integer, true),
                     ('delivered', t.t0 + interval '3 seconds', NULL, g %% 100 >= 2),
                     ('read', t.t0 + make_interval(secs => 60 + g %% 600), NULL, g %% 100 >= 3),
                     ('failed', t.t0 + interval '2 seconds',
                      CASE WHEN g %% 100 = 0 THEN 131026 ELSE 131049 END, g %% 100 < 2)) s(status, at, code, present)
WHERE s.present
"""


log = logger("bench-api")


def fresh_database() -> str:
    return scratch.fresh_database(BENCH_DB)


def reconcile(conn: psycopg.Connection, tenant: int, campaign: int, *, fix: bool) -> list[dict]:
    return conn.cursor(row_factory=dict_row).execute(queries["reconcile_campaign"], {
        "tenant_id": tenant, "campaign_id": campaign, "fix": fix}).fetchall()


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + size - 1, n)) for lo in range(1, n + 1, size)]


def generate(url: str, messages: int) -> dict:
    began = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        tenant = create_tenant(conn, "bench-api")
        number = register_number(conn, tenant, "700000000000001", WABA_ID, token="bench-token",
                                 throughput_mps=1000)
        t1, t2 = (upsert_template(conn, tenant, WABA_ID, name, components=[{"type": "BODY", "text": text}])
                  for name, text in (("order_update", "Hi {{1}}"), ("promo", "10% off")))
        args = {"tenant": tenant, "number": number, "t1": t1, "t2": t2, "n": CAMPAIGNS}
        conn.execute(MANY_CAMPAIGNS, args)
        conn.execute(MANY_TEMPLATES, args)
        conn.execute(MANY_MINUTES, args)
        log(f"{CAMPAIGNS} campaigns in {time.perf_counter() - began:.1f} s")

        t0 = conn.execute("SELECT date_trunc('minute', now()) - interval '3 hours'").fetchone()[0]
        big = conn.execute(BIG_CAMPAIGN, {**args, "t0": t0, "n": messages}).fetchone()[0]
        conn.execute(BIG_TEMPLATES, {**args, "c": big, "n": messages})
        first_contact = conn.execute(CONTACTS + " RETURNING contact_id", args).fetchall()[0][0]
        # Indexes are built once after the load rather than row by row (same final state).
        # (status_events is partitioned by day: its primary key, which holds the partition
        # key, stays; the partial index is built after the load.)
        conn.execute("DROP INDEX core.status_events_unmatched")
        step = time.perf_counter()
        for lo, hi in _chunks(messages, 500_000):
            conn.execute(BIG_MESSAGES, {**args, "c": big, "first_contact": first_contact, "t0": t0, "lo": lo, "hi": hi})
            conn.execute(BIG_EVENTS, {"t0": t0, "lo": lo, "hi": hi})
            log(f"  messages and events up to {hi:,} ({time.perf_counter() - step:.0f} s)")
        conn.execute("SELECT setval('core.outbound_messages_outbound_id_seq', %s)", (messages,))
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("CREATE INDEX status_events_unmatched ON core.status_events (wamid) WHERE outbound_id IS NULL")
        loaded = time.perf_counter() - began
        log(f"loaded in {loaded:.0f} s; reconciling the big campaign's counters")
        step = time.perf_counter()
        drifted = sum(1 for r in reconcile(conn, tenant, big, fix=True) if r["drift"])
        reconcile_s = time.perf_counter() - step
        conn.execute("VACUUM (ANALYZE) core.campaigns, core.campaign_templates, core.campaign_minutes, "
                     "core.campaign_errors, core.outbound_messages, core.status_events")
        events = conn.execute("SELECT count(*) FROM core.status_events").fetchone()[0]
        # A read key whose rate limit the timed calls stay under (they measure latency).
        key = conn.cursor(row_factory=dict_row).execute(queries["create_api_key"], {
            "tenant_id": tenant, "name": "bench", "scope": "read", "expires_at": None,
            "rate_limit_per_minute": 1_000_000}).fetchone()["key"]
        check = sum(1 for r in reconcile(conn, tenant, big, fix=False) if r["drift"])
    return {"tenant": tenant, "number": number, "big": big, "key": key, "events": events, "generation_s": time.perf_counter() - began,
            "reconcile_fix_s": reconcile_s, "counters_fixed": drifted, "drift_after_fix": check}


def median_ms(fn, calls: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    return round(statistics.median(times), 3)


def http_medians(url: str, fixture: dict, calls: int) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL,
                              env={**os.environ, "DATABASE_URL": url, "PGWA_API_PORT": str(port)})
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {fixture['key']}"}, timeout=30) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the API server did not start")
                time.sleep(0.1)
            listed = http.get("/v1/campaigns", params={"limit": 1000})
            assert listed.status_code == 200 and len(listed.json()["data"]) == 1000, listed.text[:200]
            stats = http.get(f"/v1/campaigns/{fixture['big']}/stats")
            assert stats.status_code == 200, stats.text[:200]
            return {
                "http_campaign_list_ms": median_ms(lambda: http.get("/v1/campaigns", params={"limit": 1000}), calls),
                "http_campaign_stats_ms": median_ms(lambda: http.get(f"/v1/campaigns/{fixture['big']}/stats"), calls),
                "http_campaign_list_bytes": len(listed.content),
            }
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--messages", type=int, default=MESSAGES)
    parser.add_argument("--inbox-rows", type=int, default=10_000_000, help="inbox messages for the dashboard pages")
    parser.add_argument("--sse-clients", type=int, default=1000, help="open /dashboard/events streams")
    args = parser.parse_args()
    url = fresh_database()
    log(f"database {BENCH_DB} ready")
    fixture = generate(url, args.messages)
    log(f"fixture: {fixture['events']:,} status events in {fixture['generation_s']:.0f} s")

    with psycopg.connect(url, autocommit=True) as conn:
        tenant, big = fixture["tenant"], fixture["big"]
        stats = conn.execute(STATS_JSON, (tenant, big)).fetchone()[0]
        sample = json.loads(stats)
        result = {
            "campaign_list_ms": median_ms(lambda: conn.execute(LIST_JSON, (tenant,)).fetchone(), args.calls),
            "campaign_list_rows_ms": median_ms(lambda: conn.execute(LIST_ROWS, (tenant,)).fetchall(), args.calls),
            "campaign_stats_ms": median_ms(lambda: conn.execute(STATS_JSON, (tenant, big)).fetchone(), args.calls),
        }
    result.update(http_medians(url, fixture, args.calls))
    result.update(bench_dashboard.build_inbox(url, fixture["tenant"], fixture["number"], fixture["big"],
                                              args.inbox_rows, log))
    result.update(bench_dashboard.measure(url, fixture["big"], args.calls, args.sse_clients, log))
    result.update({
        "campaigns": CAMPAIGNS + 1,
        "status_events": fixture["events"],
        "big_campaign_messages": args.messages,
        "big_campaign_sent": sample["sent"],
        "big_campaign_timeline_minutes": len(sample["timeline"]),
        "reconcile_fix_s": round(fixture["reconcile_fix_s"], 2),
        "drift_after_fix": fixture["drift_after_fix"],
        "generation_s": round(fixture["generation_s"], 1),
        "calls": args.calls,
        "targets_ms": {"campaign_list": 20, "campaign_stats": 5},
    })
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
