"""Volume benchmark: are the hot paths as fast with months of data as with none?

Measures, on empty tables and with BENCH_VOLUME_ROWS rows of history (default
100,000,000) in core.status_events, core.outbound_messages and core.inbox_messages, the
same four paths on fresh work of the same size:

* claim     api.claim_sends of 200 messages of a running campaign (ms a batch)
* report    api.report_sends of those 200 answers, accepted with their wamids (ms a batch)
* webhook   api.process_webhooks of one payload of 200 statuses (sent, delivered) of
            those messages (ms a payload)
* inbox     api.conversations (first page of 50) and api.conversation (first page of 50
            messages of one contact) (ms the pair)

History, split as a month of traffic is: 3/5 status events (sent, delivered, read of each
message), 1/5 outbound messages (delivered, in one finished campaign), 1/5 inbox messages
(over 100,000 contacts of the same number), spread over the last 30 days. It is generated
in PostgreSQL (generate_series, one INSERT per day and table, triggers and foreign-key
checks off for the load: session_replication_role = replica), then ANALYZEd.

Two databases, set up alike: pgwa_bench_volume_empty (no history) and pgwa_bench_volume
(with it); their calls alternate (claim on one, claim on the other, ...), so that the
machine's changing load weighs on both alike. Each figure is the median over --rounds
rounds (a new campaign of 2,000 contacts each, after one warm-up round);
``hot_path_ratio_100m`` is the worst of the four ratios (with history / without). Both databases are dropped at the end (kept with
BENCH_VOLUME_KEEP=1, to look at plans). Progress on stderr; one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator

import orjson
import psycopg
from common import create_tenant, logger, register_number, upsert_template
from psycopg.rows import dict_row

from pgwa import scratch
from pgwa.contacts import csv_text, stage_csv
from pgwa.queries import queries

BENCH_DB = "pgwa_bench_volume"
PHONE_NUMBER_ID = "510000000000001"
WABA_ID = "510000000000009"
BATCH = 200
CAMPAIGN = 2000
INBOX_CONTACTS = 50
DAYS = 30

log = logger("bench-volume")


def setup(conn: psycopg.Connection) -> dict:
    tenant = create_tenant(conn, "bench-volume")
    number = register_number(conn, tenant, PHONE_NUMBER_ID, WABA_ID, throughput_mps=1000)
    upsert_template(conn, tenant, WABA_ID, "hello", components=[{"type": "BODY", "text": "Hello"}])
    # The inbox the page shows: 50 conversations of 40 inbound messages each, through the
    # webhook path as Meta delivers them.
    now = int(time.time())
    payloads = []
    for c in range(INBOX_CONTACTS):
        for m in range(40):
            payloads.append(envelope({"contacts": [{"profile": {"name": f"P{c}"}, "wa_id": f"1888{c:07d}"}],
                                      "messages": [{"from": f"1888{c:07d}", "id": f"wamid.inbox.{c}.{m}",
                                                    "timestamp": str(now - 3600 + m), "type": "text",
                                                    "text": {"body": f"message {m}"}}]}))
    conn.execute("SELECT api.ingest_webhooks(%s::jsonb[], %s::text[])",
                 ([orjson.dumps(p).decode() for p in payloads], [None] * len(payloads)))
    while conn.execute("SELECT (api.process_webhooks(100)).payloads").fetchone()[0]:
        pass
    contact = conn.execute("SELECT contact_id FROM core.contacts WHERE tenant_id = %s AND wa_id = %s",
                           (tenant, "18880000000")).fetchone()[0]
    # The finished campaign history's messages belong to (a draft here: its counters
    # are not what the bench reads).
    with conn.transaction():
        stage_csv(conn, csv_text([{"phone": "16660000000"}]))
        history = conn.execute(queries["create_campaign"], {
            "tenant_id": tenant, "number_id": number, "name": "history",
            "templates": orjson.dumps([{"name": "hello", "language": "en_US", "params": []}]).decode(),
            "on_invalid": "reject", "scheduled_at": None, "start": False, "default_country_code": None}).fetchone()[0]
    return {"tenant": tenant, "number": number, "contact": contact, "history_campaign": history}


def envelope(value: dict) -> dict:
    return {"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000001", "phone_number_id": PHONE_NUMBER_ID}, **value}}]}]}


def timed(conn: psycopg.Connection, query: str, params: tuple | dict) -> tuple[float, list]:
    began = time.perf_counter()
    rows = conn.execute(query, params).fetchall()
    return (time.perf_counter() - began) * 1000, rows


def measure_round(conn: psycopg.Connection, ids: dict, label: str, n: int,
                  times: dict[str, list[float]]) -> Iterator[None]:
    """One campaign of CAMPAIGN contacts through claim, report and its status webhooks;
    then inbox pages. Appends each path's times (ms) to `times`, and yields after each
    timed call, so that the two databases' rounds run in lockstep."""
    rows = [{"phone": f"1777{(n * CAMPAIGN + i):07d}"} for i in range(CAMPAIGN)]
    with conn.transaction():
        stage_csv(conn, csv_text(rows))
        conn.execute(queries["create_campaign"], {
            "tenant_id": ids["tenant"], "number_id": ids["number"], "name": f"bench {label} {n}",
            "templates": orjson.dumps([{"name": "hello", "language": "en_US", "params": []}]).decode(),
            "on_invalid": "reject", "scheduled_at": None, "start": True, "default_country_code": None})
    wamids: list[str] = []
    while True:
        # The pace caught up, as if time had passed since the last claim: the bench
        # measures the claim's work, not the token bucket's wait.
        conn.execute("UPDATE core.wa_numbers SET send_tat = now() - interval '1 second' WHERE number_id = %s",
                     (ids["number"],))
        ms, claimed = timed(conn, "SELECT outbound_id, queue_name, msg_id FROM api.claim_sends('bench', %s)", (BATCH,))
        if not claimed:
            break
        times["claim"].append(ms)
        yield
        results = [{"outbound_id": o, "queue_name": q, "msg_id": m, "wamid": f"wamid.bench.{label}.{o}",
                    "message_status": "accepted", "error_code": None, "http_status": 200, "error_message": None}
                   for o, q, m in claimed]
        ms, _ = timed(conn, "SELECT * FROM api.report_sends(%s::jsonb)", (orjson.dumps(results).decode(),))
        times["report"].append(ms)
        yield
        wamids += [r["wamid"] for r in results]
    now = int(time.time())
    payloads = [envelope({"statuses": [{"id": w, "status": s, "timestamp": str(now), "recipient_id": "17770000000"}
                                       for w in wamids[i:i + BATCH // 2] for s in ("sent", "delivered")]})
                for i in range(0, len(wamids), BATCH // 2)]
    conn.execute("SELECT api.ingest_webhooks(%s::jsonb[], %s::text[])",
                 ([orjson.dumps(p).decode() for p in payloads], [None] * len(payloads)))
    for _ in payloads:
        ms, done = timed(conn, "SELECT (api.process_webhooks(1)).status_events", ())
        assert done[0][0] == BATCH, done
        times["webhook"].append(ms)
        yield
    for _ in range(20):
        began = time.perf_counter()
        page = conn.execute("SELECT * FROM api.conversations(%s, %s)", (ids["tenant"], ids["number"])).fetchall()
        messages = conn.execute("SELECT * FROM api.conversation(%s, %s, %s)",
                                (ids["tenant"], ids["number"], ids["contact"])).fetchall()
        times["inbox"].append((time.perf_counter() - began) * 1000)
        assert len(page) == INBOX_CONTACTS and len(messages) == 40, (len(page), len(messages))
        yield


def lockstep(conns: dict[str, psycopg.Connection], ids: dict[str, dict], label: str, n: int
             ) -> dict[str, dict[str, list[float]]]:
    """A round on each database, their calls alternating (empty, full, full, empty, ...) so
    that the machine's changing load weighs on both alike."""
    times = {db: {"claim": [], "report": [], "webhook": [], "inbox": []} for db in conns}
    steps = {db: measure_round(conn, ids[db], f"{db}-{label}", n, times[db]) for db, conn in conns.items()}
    order = list(steps)
    while steps:
        for db in order:
            if db in steps and next(steps[db], StopIteration) is StopIteration:
                del steps[db]
        order.reverse()       # neither database always goes first
    return times


def measure(conns: dict[str, psycopg.Connection], ids: dict[str, dict], rounds: int) -> dict[str, dict[str, float]]:
    """--rounds rounds after a warm-up one; the median of each path over them."""
    for conn in conns.values():
        conn.execute("VACUUM ANALYZE")
    lockstep(conns, ids, "warm", 0)       # caches and plans warm, not counted
    all_times = {db: {"claim": [], "report": [], "webhook": [], "inbox": []} for db in conns}
    for n in range(rounds):
        times = lockstep(conns, ids, "round", 1 + n)
        for db, paths in times.items():
            for path, t in paths.items():
                all_times[db][path] += t
            log(f"round {n + 1} {db}: " + json.dumps({p: round(statistics.median(t), 2) for p, t in paths.items()}))
    return {db: {path: round(statistics.median(t), 3) for path, t in paths.items()} for db, paths in all_times.items()}


def load_history(url: str, ids: dict, total: int) -> dict:
    """total rows of history over the last DAYS days; returns the counts and seconds."""
    outbound = total // 5
    inbox = total // 5
    began = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        tenant, number = ids["tenant"], ids["number"]
        campaign = ids["history_campaign"]
        conn.execute("""INSERT INTO core.contacts (tenant_id, wa_id)
                        SELECT %s, '1666' || lpad(i::text, 7, '0') FROM generate_series(1, 100000) i""", (tenant,))
        first_contact = conn.execute("SELECT min(contact_id) FROM core.contacts WHERE wa_id LIKE '1666%%'").fetchone()[0]
        # The partitions of the days history covers, as a deployment that ran for a month has.
        conn.execute("""SELECT partman.create_partition_time('core.status_events',
                            ARRAY(SELECT date_trunc('day', now()) - d * interval '1 day'
                                  FROM generate_series(1, %s) d), p_analyze => false)""", (DAYS + 1,))
        per_day = -(-outbound // DAYS)
        inbox_per_day = -(-inbox // DAYS)
        for d in range(DAYS):
            lo = d * per_day
            hi = min(outbound, lo + per_day)
            day = f"now() - interval '{DAYS - d} days'"
            if hi > lo:
                conn.execute(f"""
                    INSERT INTO core.outbound_messages (number_id, campaign_id, variant, contact_id, kind, state,
                                                        wamid, queued_at, claimed_at, accepted_at, sent_at, delivered_at)
                    SELECT %s, %s, 1, %s + i %% 100000, 'campaign', 'delivered', 'wamid.h.' || lpad(i::text, 10, '0'),
                           t, t, t, t, t
                    FROM generate_series(%s::bigint, %s::bigint) i,
                         LATERAL (SELECT {day} + (i - %s) * interval '1 day' / %s AS t) x""",
                             (number, campaign, first_contact, lo, hi - 1, lo, per_day))
                conn.execute("""
                    INSERT INTO core.status_events (wamid, status, outbound_id, occurred_at, received_at,
                                                    recipient_id, number_id)
                    SELECT o.wamid, s.status, o.outbound_id, o.sent_at + s.after, o.sent_at + s.after, '1666', %s
                    FROM core.outbound_messages o
                    CROSS JOIN (VALUES ('sent', interval '1 second'), ('delivered', interval '2 seconds'),
                                       ('read', interval '60 seconds')) s(status, after)
                    WHERE o.wamid BETWEEN %s AND %s""",
                             (number, f"wamid.h.{lo:010d}", f"wamid.h.{hi - 1:010d}"))
            lo = d * inbox_per_day
            hi = min(inbox, lo + inbox_per_day)
            if hi > lo:
                conn.execute(f"""
                    INSERT INTO core.inbox_messages (number_id, contact_id, direction, wamid, type, body, created_at)
                    SELECT %s, %s + i %% 100000, 'in', 'wamid.hi.' || lpad(i::text, 10, '0'), 'text', 'hello',
                           {day} + (i - %s) * interval '1 day' / %s
                    FROM generate_series(%s::bigint, %s::bigint) i""",
                             (number, first_contact, lo, inbox_per_day, lo, hi - 1))
            log(f"history day {d + 1}/{DAYS} loaded ({time.perf_counter() - began:.0f} s)")
        conn.execute("ANALYZE core.outbound_messages")
        conn.execute("ANALYZE core.status_events")
        conn.execute("ANALYZE core.inbox_messages")
        conn.execute("ANALYZE core.contacts")
        counts = conn.execute("""SELECT (SELECT count(*) FROM core.status_events), (SELECT count(*) FROM core.outbound_messages),
                                        (SELECT count(*) FROM core.inbox_messages)""").fetchone()
    return {"rows": sum(counts), "status_events": counts[0], "outbound_messages": counts[1],
            "inbox_messages": counts[2], "generate_s": round(time.perf_counter() - began, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_VOLUME_ROWS", "100000000")))
    args = parser.parse_args()
    names = {"empty": BENCH_DB + "_empty", "full": BENCH_DB}
    try:
        urls = {label: scratch.fresh_database(name) for label, name in names.items()}
        log(f"databases {', '.join(names.values())} ready")
        conns = {label: psycopg.connect(url, autocommit=True) for label, url in urls.items()}
        try:
            ids = {label: setup(conn) for label, conn in conns.items()}
            loaded = load_history(urls["full"], ids["full"], args.rows)
            log(f"history: {json.dumps(loaded)}")
            ms = measure(conns, ids, args.rounds)
            with conns["full"].cursor(row_factory=dict_row) as cur:
                partitions = cur.execute("""SELECT parent_table, count(*) AS partitions FROM partman.part_config c,
                    LATERAL partman.show_partitions(c.parent_table, p_include_default => true) GROUP BY 1""").fetchall()
        finally:
            for conn in conns.values():
                conn.close()
    finally:
        if not os.environ.get("BENCH_VOLUME_KEEP"):
            for name in names.values():
                scratch.drop_database(name)
    ratios = {path: round(ms["full"][path] / ms["empty"][path], 3) for path in ms["empty"]}
    print(json.dumps({
        "hot_path_ratio_100m": max(ratios.values()),
        "ratios": ratios,
        "ms_empty": ms["empty"],
        "ms_with_history": ms["full"],
        "history": loaded,
        "history_rows_goal": 100_000_000,
        "partitions": {p["parent_table"]: p["partitions"] for p in partitions},
        "batch": BATCH,
        "rounds": args.rounds,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
