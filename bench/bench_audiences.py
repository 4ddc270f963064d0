"""Audiences benchmark: segments over a 1,000,000-contact tenant, a campaign made from one,
and the per-recipient report of that 1,000,000-recipient campaign.

Sets up its own database on the project's cluster (pgwa_bench_audiences), writes the
contacts with one INSERT ... SELECT over generate_series (every contact tagged
``customers``, one in ten also ``vip``, a typed ``points`` field), and measures:

* count_baseline_1m_ms   plain ``SELECT count(*)`` of the tenant's contacts: what a live
                         count cannot beat, on this machine, this run
* segment_count_1m_ms    api.segment_count of the segment {"tag": "customers"} (1M contacts)
* segment_count_vip_ms   api.segment_count of {"all": [{"tag": "vip"}, {"field": "points",
                         "op": "gte", "value": 500}]} (about 50,000 contacts)
* segment_campaign_1m_s  api.create_campaign_from_segment of the 1M segment, one transaction
* segment_campaign_cpu_1m_s  the CPU its backend spent on it (/proc)
* segment_campaign_baseline_1m_s, segment_campaign_ratio
                         the same run's floor: one plain INSERT ... SELECT of the same
                         contacts' ids and phones into a temporary table, committed
* export_1m_s            the CSV report of that campaign (api.open_campaign_recipients),
                         fetched 10,000 lines at a time through a cursor and counted
* export_1m_mb           its size
* segment_count_ratio    segment_count_1m_ms / count_baseline_1m_ms
* events_delivered_per_s, events_lost, events_duplicated_share, events_baseline_http_posts_per_s,
  events_ratio           bench/bench_events.py's delivery measurement (measure_delivery), run here
* send_api_rps, idempotent_duplicates, send_api_baseline_rps, send_api_ratio
                         bench/bench_send_api.py's measure(): new messages accepted per second by
                         POST /v1/messages against a bare SELECT-1 route of the same server
--quick runs the whole bench at reduced scale (100,000 contacts, one run, fewer events, shorter
send API load).

Medians of --runs runs (each campaign run makes another 1M-message campaign). Progress on
stderr; one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import orjson
import psycopg
from common import create_tenant, logger, register_number, upsert_template

from pgwa import scratch

BENCH_DB = "pgwa_bench_audiences"
log = logger("bench_audiences")
TEMPLATE = [{"type": "BODY", "text": "Hi {{1}}, you have {{2}} points."}]
SPEC = [{"name": "points_update", "language": "en_US", "params": [{"column": "name"}, {"column": "points"}]}]

CONTACTS = """
INSERT INTO core.contacts (tenant_id, wa_id, name, attributes, tags)
SELECT %(tenant)s, '14' || lpad(i::text, 9, '0'), 'Contact ' || i,
       jsonb_build_object('points', i %% 1000),
       CASE WHEN i %% 10 = 0 THEN ARRAY['customers', 'vip'] ELSE ARRAY['customers'] END
FROM generate_series(1, %(n)s) i"""
VIP = {"all": [{"tag": "vip"}, {"field": "points", "op": "gte", "value": 500}]}


def backend_cpu_s(conn: psycopg.Connection) -> float:
    """User + system CPU seconds of this connection's backend so far (/proc, when the server
    runs on this machine, else 0): what a loaded machine inflates less than the wall clock."""
    try:
        with open(f"/proc/{conn.info.backend_pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(conn: psycopg.Connection, query: str, params: dict) -> tuple[float, object]:
    start = time.perf_counter()
    row = conn.execute(query, params).fetchone()
    return time.perf_counter() - start, row[0] if row else None


def export(conn: psycopg.Connection, tenant: int, campaign: int) -> tuple[float, int, int]:
    """Stream the campaign's CSV report through a cursor: (seconds, lines, bytes)."""
    start = time.perf_counter()
    lines = size = 0
    with conn.transaction():
        conn.execute("SELECT api.open_campaign_recipients(%s, %s, 'csv', 'report')", (tenant, campaign))
        while True:
            batch = conn.execute("FETCH FORWARD 10000 FROM report").fetchall()
            if not batch:
                break
            lines += len(batch)
            size += sum(len(r[0]) + 1 for r in batch)
    return time.perf_counter() - start, lines, size


def events_and_send_api(quick: bool) -> dict:
    """bench_events.py's delivery measurement and bench_send_api.py's, in-process, each on
    its own database, with their same-run baselines and ratios."""
    import bench_events
    import bench_send_api

    url = scratch.fresh_database(bench_events.BENCH_DB)
    try:
        events = bench_events.measure_delivery(url, 5_000 if quick else 30_000)
    finally:
        scratch.drop_database(bench_events.BENCH_DB)
    sends = bench_send_api.measure(seconds=5 if quick else 10, runs=1 if quick else 3)
    return {
        "events_delivered_per_s": events["events_delivered_per_s"], "events_lost": events["events_lost"],
        "events_duplicated_share": events["events_duplicated_share"],
        "events_baseline_http_posts_per_s": events["http_posts_per_s"],
        "events_ratio": round(events["events_delivered_per_s"] / events["http_posts_per_s"], 3),
        "send_api_rps": sends["send_api_rps"], "idempotent_duplicates": sends["idempotent_duplicates"],
        "send_api_baseline_rps": sends["baseline_rps"], "send_api_ratio": sends["ratio"],
        "send_api_requests_per_s_sent_twice": sends["send_api_requests_per_s"],
        "send_api_wrk_cpu_share": sends["wrk_cpu_share"],
    }


def segment_baseline(conn: psycopg.Connection, tenant: int) -> float:
    """A campaign from a segment cannot beat writing its contacts' ids once: one
    INSERT ... SELECT of the segment's contact ids and phones into a plain temporary table."""
    start = time.perf_counter()
    with conn.transaction():
        conn.execute("CREATE TEMP TABLE segment_ids (contact_id bigint, wa_id text) ON COMMIT DROP")
        conn.execute("INSERT INTO segment_ids SELECT contact_id, wa_id FROM core.contacts"
                     " WHERE tenant_id = %s AND tags @> '{customers}'", (tenant,))
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true",
                        help="the whole bench at reduced scale: 100,000 contacts, one run, 5,000 events, "
                             "5 s of send API load (the figures' names keep their 1m)")
    parser.add_argument("--segment-only", action="store_true",
                        help="only the counts and the campaign from a segment (no report, events, send API)")
    args = parser.parse_args()
    if args.quick:
        args.contacts, args.runs = min(args.contacts, 100_000), 1

    url = scratch.fresh_database(BENCH_DB)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            tenant = create_tenant(conn, "audiences")
            number = register_number(conn, tenant, "900001", "900002", throughput_mps=1000)
            upsert_template(conn, tenant, "900002", "points_update", components=TEMPLATE)
            conn.execute("SELECT api.define_contact_field(%s, 'points', 'number')", (tenant,))
            log(f"writing {args.contacts:,} contacts")
            conn.execute(CONTACTS, {"tenant": tenant, "n": args.contacts})
            conn.execute("VACUUM ANALYZE core.contacts")

            baseline, counts, vips, creates, exports, floors, cpus = [], [], [], [], [], [], []
            for run in range(args.runs):
                baseline.append(timed(conn, "SELECT count(*) FROM core.contacts WHERE tenant_id = %(t)s",
                                      {"t": tenant})[0])
                seconds, n = timed(conn, "SELECT api.segment_count(%(t)s, p_filter => %(f)s::jsonb)",
                                   {"t": tenant, "f": '{"tag": "customers"}'})
                assert n == args.contacts, n
                counts.append(seconds)
                seconds, n_vip = timed(conn, "SELECT api.segment_count(%(t)s, p_filter => %(f)s::jsonb)",
                                       {"t": tenant, "f": orjson.dumps(VIP).decode()})
                vips.append(seconds)
                log(f"run {run + 1}: count {counts[-1] * 1000:.0f} ms (baseline {baseline[-1] * 1000:.0f} ms), "
                    f"vip {n_vip:,} in {seconds * 1000:.0f} ms")
                floors.append(segment_baseline(conn, tenant))
                cpu = backend_cpu_s(conn)
                seconds, created = timed(conn, """SELECT row_to_json(c)::text FROM api.create_campaign_from_segment(
                    %(t)s, %(n)s, %(name)s, %(spec)s::jsonb, p_tags => '{customers}') c""",
                                         {"t": tenant, "n": number, "name": f"segment run {run + 1}",
                                          "spec": orjson.dumps(SPEC).decode()})
                created = orjson.loads(created)
                assert created["total"] == args.contacts, created
                creates.append(seconds)
                cpus.append(backend_cpu_s(conn) - cpu)
                log(f"run {run + 1}: campaign of {created['total']:,} in {seconds:.1f} s "
                    f"(its backend's CPU {cpus[-1]:.1f} s) "
                    f"(baseline INSERT ... SELECT {floors[-1]:.1f} s)")
                if args.segment_only:
                    continue
                conn.execute("VACUUM ANALYZE core.outbound_messages")
                seconds, lines, size = export(conn, tenant, created["campaign_id"])
                assert lines == args.contacts + 1, lines
                exports.append((seconds, size))
                log(f"run {run + 1}: report of {lines - 1:,} recipients, {size / 1e6:.0f} MB in {seconds:.1f} s")
    finally:
        scratch.drop_database(BENCH_DB)

    result = {
        "contacts": args.contacts,
        "runs": args.runs,
        "count_baseline_1m_ms": round(statistics.median(baseline) * 1000, 1),
        "segment_count_1m_ms": round(statistics.median(counts) * 1000, 1),
        "segment_count_vip_ms": round(statistics.median(vips) * 1000, 1),
        "segment_campaign_1m_s": round(statistics.median(creates), 2),
        "segment_campaign_cpu_1m_s": round(statistics.median(cpus), 2),
        "segment_campaign_baseline_1m_s": round(statistics.median(floors), 2),
        "segment_campaign_ratio": round(statistics.median(creates) / statistics.median(floors), 1),
    }
    if exports:
        result["export_1m_s"] = round(statistics.median(s for s, _ in exports), 2)
        result["export_1m_mb"] = round(statistics.median(b for _, b in exports) / 1e6, 1)
    result["segment_count_ratio"] = round(result["segment_count_1m_ms"] / result["count_baseline_1m_ms"], 2)
    if not args.segment_only:
        result |= events_and_send_api(args.quick)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
