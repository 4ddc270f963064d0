"""Bots and inbox benchmark: rule matching, inbound-to-reply latency, conversation pages.

Sets up its own database (pgwa_bench_bots) on the project's cluster (DATABASE_URL or
``scripts/db.sh url``) and measures:

* match_p50_ms, match_p99_ms   core.normalize_text + core.match_bot_rules for one inbound
                               message, timed inside PostgreSQL, on a number with 1,000
                               rules (400 exact, 250 starts_with, 323 contains, 25 regex,
                               a welcome and a default rule, random priorities); messages:
                               a quarter exact hits, a fifth each starts_with and contains
                               hits, a tenth regex hits, a quarter matching nothing
* match_batch_per_msg_ms       the same messages 200 at a time, as webhook batches run it
* match_p99_ms_100_regex       the same with 100 regex rules (more than the 32 compiled
                               regexes PostgreSQL caches per session), for scale
* reply_p50_ms, reply_p99_ms   from POST /_sim/inbound to the bot's reply accepted by the
                               simulator (its ledger), at 200 inbound messages/s for 15 s
                               from distinct users, through pgwa.local.stack (simulator, webhook
                               receiver, one worker process); the simulator flushes
                               webhooks every 10 ms
* conversation_page_ms, conversation_page_p99_ms   api.conversation(), 50 messages, first
                               page and the next by keyset, for random contacts of a number
                               with 10,000,000 inbox rows (100,000 conversations, messages
                               interleaved in time as a real inbox fills), client round trip
* conversations_page_ms        api.conversations(), 50 conversations, same database

Progress on stderr; one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path

import httpx
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import create_tenant, logger, register_number

from pgwa import scratch
from pgwa.local.stack import Stack

BENCH_DB = "pgwa_bench_bots"
PNID, WABA = "106540352242001", "102290129340001"
MIX = {"exact": 400, "starts_with": 250, "contains": 323, "regex": 25}

# Per-call timing inside the server: no network in the figure, and one plan per call site
# as in core.on_inbound.
TIMING_FUNCTION = """
CREATE OR REPLACE FUNCTION public.bench_match(p_number_id bigint, p_texts text[], p_batch integer)
RETURNS SETOF double precision LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz;
    n integer;
BEGIN
    FOR i IN 1 .. cardinality(p_texts) BY p_batch LOOP
        t0 := clock_timestamp();
        SELECT count(m.rule_id) INTO n
        FROM core.match_bot_rules(array_fill(p_number_id, ARRAY[least(p_batch, cardinality(p_texts) - i + 1)]),
                                  ARRAY(SELECT core.normalize_text(t) FROM unnest(p_texts[i:i + p_batch - 1]) t),
                                  array_fill(false, ARRAY[least(p_batch, cardinality(p_texts) - i + 1)])) m;
        RETURN NEXT extract(epoch FROM clock_timestamp() - t0) * 1000 / least(p_batch, cardinality(p_texts) - i + 1);
    END LOOP;
END
$$;
"""


log = logger("bench-bots")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def fresh_database() -> str:
    return scratch.fresh_database(BENCH_DB)


def drop_database() -> None:
    scratch.drop_database(BENCH_DB)



# --- rules and messages ----------------------------------------------------------------------

def add_rules(conn: psycopg.Connection, tenant: int, number: int, rng: random.Random, regexes: int) -> None:
    """1,000 rules through api.save_bot_rule (validation, normalisation), random priorities."""
    mix = {**MIX, "regex": regexes, "contains": MIX["contains"] + MIX["regex"] - regexes}
    specs = [("welcome", None), ("default", None)]
    specs += [("exact", f"Prodúto {i}") for i in range(mix["exact"])]
    specs += [("starts_with", f"quero o plano {i} ") for i in range(mix["starts_with"])]
    specs += [("contains", f"cupom{i}x") for i in range(mix["contains"])]
    specs += [("regex", f"^(pedido|order)\\s*#?{i}-[0-9]{{3,8}}$") for i in range(mix["regex"])]
    with conn.transaction():
        for kind, pattern in specs:
            conn.execute("SELECT api.save_bot_rule(%s, %s, %s, %s, %s, %s)",
                         (tenant, number, kind, pattern, Jsonb({"type": "text", "text": f"Re {pattern}, {{{{name}}}}"}),
                          rng.randint(0, 1000)))
    conn.execute("VACUUM ANALYZE core.bot_rules")


def messages(rng: random.Random, n: int, regexes: int) -> list[str]:
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.25:
            out.append(f"  produto {rng.randrange(MIX['exact'])} ")
        elif r < 0.45:
            out.append(f"Quero o PLANO {rng.randrange(MIX['starts_with'])} por favor")
        elif r < 0.65:
            out.append(f"tenho o cupom{rng.randrange(MIX['contains'])}x, vale?")
        elif r < 0.75:
            out.append(f"Pedido #{rng.randrange(regexes)}-{rng.randrange(10**6)}")
        else:
            out.append("Olá, bom dia! Gostaria de saber se vocês entregam no sábado à tarde? " + str(rng.random()))
    return out


def measure_matching(url: str, rng: random.Random) -> dict:
    result = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(TIMING_FUNCTION)
        for label, regexes in (("", MIX["regex"]), ("_100_regex", 100)):
            tenant = create_tenant(conn, f"match{label}")
            number = register_number(conn, tenant, f"1065403522{len(label):05d}", f"1022901293{len(label):05d}")
            add_rules(conn, tenant, number, rng, regexes)
            texts = messages(rng, 3000, regexes)
            hits = conn.execute("SELECT count(m.rule_id) FROM core.match_bot_rules(array_fill(%s::bigint, ARRAY[%s]), "
                                "ARRAY(SELECT core.normalize_text(t) FROM unnest(%s::text[]) t), "
                                "array_fill(false, ARRAY[%s])) m", (number, len(texts), texts, len(texts))).fetchone()[0]
            conn.execute("SELECT count(*) FROM public.bench_match(%s, %s, 1)", (number, texts[:300]))   # warm
            single = [r[0] for r in conn.execute("SELECT * FROM public.bench_match(%s, %s, 1)", (number, texts))]
            if label:
                result[f"match_p99_ms{label}"] = round(pct(single, 99), 3)
                continue
            batched = [r[0] for r in conn.execute("SELECT * FROM public.bench_match(%s, %s, 200)", (number, texts))]
            result.update(match_p50_ms=round(pct(single, 50), 3), match_p99_ms=round(pct(single, 99), 3),
                          match_max_ms=round(max(single), 3),
                          match_batch_per_msg_ms=round(statistics.mean(batched), 4),
                          rules_per_number=conn.execute("SELECT count(*) FROM core.bot_rules WHERE number_id = %s",
                                                        (number,)).fetchone()[0],
                          rule_hit_share=round(hits / len(texts), 3))
            log(f"matching: p50 {result['match_p50_ms']} ms, p99 {result['match_p99_ms']} ms "
                f"({result['rule_hit_share']:.0%} of messages hit a rule)")
    log(f"matching with 100 regex rules: p99 {result['match_p99_ms_100_regex']} ms")
    return result


# --- inbound to reply ----------------------------------------------------------------------

async def inject(sim_url: str, senders: list[str], rate: float) -> dict[str, float]:
    """POST /_sim/inbound for each sender at a steady rate; the wall time of each POST."""
    sent: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=sim_url, timeout=10,
                                 limits=httpx.Limits(max_connections=32)) as client:
        async def one(wa_id: str) -> None:
            sent[wa_id] = time.time()
            r = await client.post("/_sim/inbound", json={"phone_number_id": PNID, "from": wa_id,
                                                         "text": "Qual é o preço do cupom7x?", "name": "Bench"})
            r.raise_for_status()

        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i, wa_id in enumerate(senders):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(wa_id)))
        await asyncio.gather(*tasks)
    return sent


def ledger(stack: Stack) -> list[dict]:
    entries, since = [], 0
    while True:
        page = stack.sim("GET", f"/_sim/ledger?since={since}&limit=1000")["entries"]
        if not page:
            return entries
        entries += page
        since = page[-1]["seq"] + 1


def measure_reply_latency(url: str, rng: random.Random, rate: int, seconds: int) -> dict:
    with Stack(url, workers=1) as stack, psycopg.connect(url, autocommit=True) as conn:
        stack.sim("POST", "/_sim/faults", {"webhook": {"flush_ms": 10}})
        tenant = create_tenant(conn, "replies")
        number = stack.register_number(conn, tenant, PNID, WABA, 1000)
        add_rules(conn, tenant, number, rng, MIX["regex"])
        stack.start_workers()
        time.sleep(2)
        warm = [f"1777{i:07d}" for i in range(50)]
        asyncio.run(inject(stack.sim_url, warm, 50))
        senders = [f"1888{i:07d}" for i in range(rate * seconds)]
        log(f"replies: {len(senders)} inbound messages at {rate}/s")
        sent = asyncio.run(inject(stack.sim_url, senders, rate))
        deadline = time.time() + 60
        while True:
            replied = {e["to"]: e["time"] for e in ledger(stack) if e["to"] in sent and e["type"] == "text"}
            if len(replied) == len(sent) or time.time() > deadline:
                break
            time.sleep(0.5)
        latencies = [(replied[w] - sent[w]) * 1000 for w in replied]
        stats = stack.sim("GET", "/_sim/stats")
    result = {"reply_p50_ms": round(pct(latencies, 50), 1), "reply_p99_ms": round(pct(latencies, 99), 1),
              "reply_max_ms": round(max(latencies), 1), "inbound_per_s": rate,
              "replies_missing": len(sent) - len(replied), "sim_rejected": stats.get("rejected_by_code", {})}
    log(f"replies: p50 {result['reply_p50_ms']} ms, p99 {result['reply_p99_ms']} ms, "
        f"{result['replies_missing']} missing")
    return result


# --- conversation pages --------------------------------------------------------------------

def generate_inbox(conn: psycopg.Connection, tenant: int, number: int, rows: int, contacts: int) -> None:
    """rows inbox messages over contacts conversations, set-based, interleaved in time."""
    t0 = time.monotonic()
    conn.execute("""INSERT INTO core.contacts (tenant_id, wa_id, profile_name)
                    SELECT %s, (19000000000 + g)::text, 'Contact ' || g FROM generate_series(1, %s) g""",
                 (tenant, contacts))
    first = conn.execute("SELECT min(contact_id) FROM core.contacts WHERE tenant_id = %s", (tenant,)).fetchone()[0]
    # Secondary indexes are built after the load (the same definitions), foreign key
    # triggers skipped: the load is a benchmark fixture, not a code path.
    indexes = conn.execute("""SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'core'
                              AND tablename = 'inbox_messages' AND indexname <> 'inbox_messages_pkey'""").fetchall()
    for name, _ in indexes:
        conn.execute(sql.SQL("DROP INDEX core.{}").format(sql.Identifier(name)))
    conn.execute("SET session_replication_role = replica")
    conn.execute("SET maintenance_work_mem = '1GB'")
    conn.execute("SET max_parallel_maintenance_workers = 2")
    chunk = 2_000_000
    for lo in range(0, rows, chunk):
        conn.execute("""
            INSERT INTO core.inbox_messages (number_id, contact_id, direction, type, body, created_at)
            SELECT %(number)s, %(first)s + (g::bigint * 7919) %% %(contacts)s,
                   CASE WHEN g %% 3 = 0 THEN 'out' ELSE 'in' END, 'text',
                   'Message number ' || g || ' of the benchmark, with some ordinary text in it',
                   timestamptz '2025-01-01' + g * interval '3 seconds'
            FROM generate_series(%(lo)s + 1, %(hi)s) g""",
                     {"number": number, "first": first, "contacts": contacts, "lo": lo, "hi": min(rows, lo + chunk)})
        log(f"inbox: {min(rows, lo + chunk):,} rows ({time.monotonic() - t0:.0f} s)")
    conn.execute("SET session_replication_role = origin")
    for name, definition in indexes:
        conn.execute(definition)
        log(f"inbox: index {name} built ({time.monotonic() - t0:.0f} s)")
    conn.execute("""INSERT INTO core.conversations (number_id, contact_id, last_inbound_at, last_message_at, unread)
                    SELECT number_id, contact_id, max(created_at) FILTER (WHERE direction = 'in'), max(created_at), 0
                    FROM core.inbox_messages WHERE number_id = %s GROUP BY number_id, contact_id""", (number,))
    conn.execute("VACUUM ANALYZE core.inbox_messages")
    conn.execute("VACUUM ANALYZE core.conversations")
    log(f"inbox: {rows:,} rows ready in {time.monotonic() - t0:.0f} s")


def measure_pages(url: str, rng: random.Random, rows: int, contacts: int) -> dict:
    with psycopg.connect(url, autocommit=True) as conn:
        tenant = create_tenant(conn, "inbox")
        number = register_number(conn, tenant, "106540352249999", "102290129349999")
        generate_inbox(conn, tenant, number, rows, contacts)
        ids = [r[0] for r in conn.execute("SELECT contact_id FROM core.contacts WHERE tenant_id = %s", (tenant,))]
        first_pages, next_pages, lists = [], [], []
        query = "SELECT * FROM api.conversation(%s, %s, %s, %s, %s, 50)"
        for _ in range(20):                                     # plans and caches
            conn.execute(query, (tenant, number, rng.choice(ids), None, None)).fetchall()
        for contact in rng.sample(ids, 400):
            t = time.perf_counter()
            page = conn.execute(query, (tenant, number, contact, None, None)).fetchall()
            first_pages.append((time.perf_counter() - t) * 1000)
            assert len(page) == 50, len(page)
            t = time.perf_counter()
            conn.execute(query, (tenant, number, contact, page[-1][7], page[-1][0])).fetchall()
            next_pages.append((time.perf_counter() - t) * 1000)
        cursor = (None, None)
        for _ in range(100):
            t = time.perf_counter()
            page = conn.execute("SELECT * FROM api.conversations(%s, %s, 'all', NULL, %s, %s, 50)",
                                (tenant, number, *cursor)).fetchall()
            lists.append((time.perf_counter() - t) * 1000)
            cursor = (page[-1][10], page[-1][0]) if len(page) == 50 else (None, None)
        total = conn.execute("SELECT count(*) FROM core.inbox_messages").fetchone()[0]
    pages = first_pages + next_pages
    result = {"conversation_page_ms": round(pct(pages, 50), 3), "conversation_page_p99_ms": round(pct(pages, 99), 3),
              "conversations_page_ms": round(pct(lists, 50), 3), "inbox_rows": total}
    log(f"pages: {result}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="inbox rows for the page benchmark")
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=200, help="inbound messages per second")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--keep", action="store_true", help=f"keep the {BENCH_DB} database")
    args = parser.parse_args()
    rng = random.Random(6)
    url = fresh_database()
    log(f"database {BENCH_DB} migrated")
    try:
        result = measure_matching(url, rng)
        result |= measure_reply_latency(url, rng, args.rate, args.seconds)
        result |= measure_pages(url, rng, args.rows, args.contacts)
    finally:
        if not args.keep:
            drop_database()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
