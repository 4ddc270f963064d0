"""Campaign benchmark: creation time, end-to-end send rate, rate compliance, exactly-once.

Sets up its own database on the project's cluster, starts the simulator, the webhook
receiver and a worker (pgwa.local.stack), and measures:

* create_100k_s     api.stage_contacts + COPY + api.create_campaign of 100,000 contacts
* msgs_per_s        one number limited to 1,000 msg/s, a 50,000-message campaign, from
                    start to completion (database timestamps)
* msgs_per_s_two_numbers  two numbers at 1,000 msg/s each, 25,000 messages each
* peak_1s_rate      the most requests the simulator saw for one number in any 1-second window
                    (on its clock, when its event loop got to them: a stall of that loop,
                    sim_loop, squeezes the requests that waited into the next second)
* worker_peak_1s    the most requests the worker started for one number in any second, on
                    its own clock (its log line on stop): what pgwa's pacing decides
* duplicates, lost  from the simulator's ledger: repeated (recipient, campaign) sends, and
                    messages of the campaigns that Meta never accepted
* sql_statements_per_msg  top-level statements of the send path (pg_stat_statements) / messages
* sim_defaults      "realistic": the simulator behaves as Meta, with no override
                    (duplicated and reordered statuses, `read` without `delivered`, the
                    pair rate, tiers, webhook retries, and 2% of marketing sends withheld
                    under the per-user cap: 131049 as a later failed status). The contacts'
                    area codes (+1 0..) are not US ones, so the US marketing pause does not
                    apply. A capped message is tried again by pgwa a day later: the
                    campaign then waits for tomorrow and never completes within the run,
                    so a send run ends when every message was sent once (the campaign's
                    finished + retrying = total), and its span ends at the last send's
                    answer. ``delivered`` and ``retrying_tomorrow`` say what became of
                    them, and sim_failed_later_by_code what Meta failed after accepting.

Each send run starts on a settled database (VACUUM ANALYZE and a checkpoint after the
previous step), and reports the simulator's own loop steadiness (``sim_loop``): a rate
counted on a stalled loop squeezes arrivals into one second.

Medians of --runs runs. Progress on stderr; one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections import Counter

import orjson
import psycopg
from common import create_tenant, logger

from api.graph_templates import sync_templates
from pgwa import scratch
from pgwa.contacts import csv_text, stage_csv
from pgwa.local.stack import GRAPH_VERSION, Stack
from pgwa.queries import queries

LIMIT = 1000
BENCH_DB = "pgwa_bench"
TEMPLATES = [
    {"name": "order_update", "language": "en_US", "params": [{"column": "name"}, {"column": "order_no"}]},
    {"name": "promo_offer", "language": "en_US", "params": [{"value": "20% off"}]},
]
# The send path's statements: everything but the webhook path (and the receiver's heartbeat)
# and this script's own queries (marked, or the named start_campaign), as
# pg_stat_statements counts them at top level.
SEND_PATH_STATEMENTS = """
SELECT query, calls FROM pg_stat_statements
WHERE toplevel AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND query !~* '(process_webhooks|process_claimed_webhooks|claim_webhooks|fail_webhooks|ingest_webhook|receiver_heartbeat|start_campaign|/\\* bench \\*/|pg_stat_statements)'
ORDER BY calls DESC
"""


log = logger("bench-campaign")
# The simulator's defaults are Meta's, none overridden (see the docstring).
SIM_OVERRIDES: dict = {}


def fresh_database() -> str:
    return scratch.fresh_database(BENCH_DB)


def contacts(n: int, offset: int) -> list[dict[str, str]]:
    return [{"phone": f"+1 {offset + i:010d}", "name": f"C{i}", "order_no": str(i)} for i in range(n)]


def create(conn: psycopg.Connection, tenant: int, number: int, n: int, offset: int, start: bool) -> tuple[int, float]:
    rows = csv_text(contacts(n, offset))
    began = time.perf_counter()
    with conn.transaction():
        stage_csv(conn, rows)
        campaign = conn.execute(queries["create_campaign"], {
            "tenant_id": tenant, "number_id": number, "name": f"bench {offset}",
            "templates": orjson.dumps(TEMPLATES).decode(), "on_invalid": "reject", "scheduled_at": None,
            "start": start, "default_country_code": None}).fetchone()[0]
    return campaign, time.perf_counter() - began


def wait_sent(conn: psycopg.Connection, campaigns: list[int], timeout: float) -> float:
    """Seconds from the first start to the last send's answer, once every message was sent
    once (those Meta withheld under the marketing cap wait for tomorrow: retrying)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = conn.execute(
            "/* bench */ SELECT finished + retrying + cancelled >= total, sent, total FROM core.campaigns"
            " WHERE campaign_id = ANY(%s)", (campaigns,)).fetchall()
        if all(r[0] for r in rows):
            return conn.execute(
                "/* bench */ SELECT extract(epoch FROM max(greatest(o.accepted_at, o.failed_at)) - min(c.started_at))::float8"
                " FROM core.campaigns c JOIN core.outbound_messages o USING (campaign_id)"
                " WHERE c.campaign_id = ANY(%s)", (campaigns,)).fetchone()[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"campaigns {campaigns} not sent after {timeout:.0f} s: {rows}")
        print(f"\r  sent {sum(r[1] for r in rows):,} / {sum(r[2] for r in rows):,}", end="",
              file=sys.stderr, flush=True)
        time.sleep(0.5)


def outcome(conn: psycopg.Connection, campaigns: list[int], stack: Stack, timeout: float = 30) -> dict:
    """Once the statuses of the last sends came in: delivered (or read), failed, and
    retrying tomorrow (Meta's marketing cap), summed over the campaigns."""
    deadline = time.monotonic() + timeout
    while stack.sim("GET", "/_sim/stats")["webhooks"]["pending"] or conn.execute(
            "/* bench */ SELECT EXISTS (SELECT 1 FROM pgmq.q_webhooks)").fetchone()[0]:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # pg_cron's minute sweep, which this database has not: it matches a 131049 whose webhook
    # crossed its send's report (core.match_late_capped).
    conn.execute("/* bench */ SELECT core.sweep_sends()")
    row = conn.execute(
        "/* bench */ SELECT count(*) FILTER (WHERE o.state IN ('delivered', 'read')),"
        " count(*) FILTER (WHERE o.state = 'failed') FROM core.outbound_messages o"
        " WHERE o.campaign_id = ANY(%s)", (campaigns,)).fetchone()
    retrying = conn.execute("/* bench */ SELECT sum(retrying) FROM core.campaigns WHERE campaign_id = ANY(%s)",
                            (campaigns,)).fetchone()[0]
    return {"delivered": row[0], "failed": row[1], "retrying_tomorrow": int(retrying)}


def settle(url: str) -> None:
    """Vacuum what the previous step left (300,000 created messages, or a run's 50,000
    sends and their 125,000 statuses), so that each run starts on a database whose
    autovacuum has caught up, as a production database between campaigns would, and
    not in the middle of the previous run's clean-up."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("/* bench */ VACUUM (ANALYZE)")
        conn.execute("/* bench */ CHECKPOINT")


def send_run(url: str, numbers: int, per_number: int, run: int) -> dict:
    settle(url)
    with psycopg.connect(url, autocommit=True) as conn, Stack(url, sim_settings=SIM_OVERRIDES) as stack:
        tenant = create_tenant(conn, f"bench-{run}-{numbers}-{time.time()}")
        ids, campaigns = [], []
        for k in range(numbers):
            pnid, waba = f"{run}{numbers}{k}{int(time.time() * 1000) % 10**9:09d}", f"9{run}{numbers}{k}{int(time.time()) % 10**8:08d}"
            number = stack.register_number(conn, tenant, pnid, waba, LIMIT)
            sync_templates(conn, tenant, waba, "local-token", stack.sim_url, GRAPH_VERSION)
            campaign, _ = create(conn, tenant, number, per_number, offset=(run * 10 + k) * 10**6, start=False)
            ids.append(pnid)
            campaigns.append(campaign)
        conn.execute("/* bench */ SELECT pg_stat_statements_reset()")
        stack.start_workers()
        time.sleep(1.0)  # the worker connects and goes idle: its start-up is not the send path
        for campaign in campaigns:
            conn.execute(queries["start_campaign"], {"tenant_id": tenant, "campaign_id": campaign})
        span = wait_sent(conn, campaigns, timeout=per_number * numbers / 200 + 60)
        print(file=sys.stderr)
        statements = conn.execute(SEND_PATH_STATEMENTS).fetchall()
        settled = outcome(conn, campaigns, stack)
        ledger = stack.sim("GET", "/_sim/stats")
    # The worker's own count (its log line on stop): the requests it started for one number
    # in any second, before the network and the simulator's event loop (sim_loop) could
    # squeeze them into fewer.
    peaks = re.findall(r"busiest second (\d+) requests", (stack.logs / "worker0.log").read_text(errors="replace"))
    accepted = sum(ledger["numbers"].get(p, {}).get("accepted", 0) for p in ids)
    total = per_number * numbers
    return {
        "msgs_per_s": total / span,
        "peak_1s_rate": max(ledger["numbers"][p]["peak_1s_attempts"] for p in ids),
        "worker_peak_1s": max(map(int, peaks)) if peaks else None,
        "duplicates": ledger["duplicates"],
        "lost": total - (accepted - ledger["duplicates"]),
        "rejected": ledger["rejected"],
        "sql_statements_per_msg": sum(c for _, c in statements) / total,
        "statements": {q[:60]: c for q, c in statements[:6]},
        "sim_loop": ledger["loop"],
        "failed_later": ledger.get("failed_later_by_code", {}),
        **settled,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args()
    url = fresh_database()
    log(f"database {BENCH_DB} ready")

    with psycopg.connect(url, autocommit=True) as conn, Stack(url, api=False, sim_settings=SIM_OVERRIDES) as stack:
        tenant = create_tenant(conn, "bench-create")
        number = stack.register_number(conn, tenant, "500000000000001", "500000000000009", LIMIT)
        sync_templates(conn, tenant, "500000000000009", "local-token", stack.sim_url, GRAPH_VERSION)
        creates = []
        for run in range(args.runs):
            campaign, seconds = create(conn, tenant, number, 100_000, offset=(50 + run) * 10**6, start=False)
            conn.execute(queries["cancel_campaign"], {"tenant_id": tenant, "campaign_id": campaign})
            creates.append(seconds)
            log(f"create 100k run {run + 1}: {seconds:.2f} s")

    singles, doubles = [], []
    for run in range(args.runs):
        singles.append(send_run(url, 1, args.messages, run))
        log(f"one number run {run + 1}: {json.dumps(singles[-1])}")
        doubles.append(send_run(url, 2, args.messages // 2, run))
        log(f"two numbers run {run + 1}: {json.dumps(doubles[-1])}")

    def median(runs: list[dict], key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 4)

    result = {
        "msgs_per_s": round(median(singles, "msgs_per_s"), 1),
        "msgs_per_s_two_numbers": round(median(doubles, "msgs_per_s"), 1),
        "peak_1s_rate": max(r["peak_1s_rate"] for r in singles + doubles),
        "worker_peak_1s": max((r["worker_peak_1s"] or 0) for r in singles + doubles),
        "rate_limit": LIMIT,
        "duplicates": sum(r["duplicates"] for r in singles + doubles),
        "lost": sum(r["lost"] for r in singles + doubles),
        "sql_statements_per_msg": median(singles, "sql_statements_per_msg"),
        "create_100k_s": round(statistics.median(creates), 2),
        "messages": args.messages,
        "runs": args.runs,
        "rejected_by_sim": sum(r["rejected"] for r in singles + doubles),
        "sim_max_loop_lag_ms": max(r["sim_loop"]["max_lag_ms"] for r in singles + doubles),
        "delivered": sum(r["delivered"] for r in singles + doubles),
        "failed": sum(r["failed"] for r in singles + doubles),
        "retrying_tomorrow": sum(r["retrying_tomorrow"] for r in singles + doubles),
        "sim_defaults": "realistic",
        "sim_overrides": SIM_OVERRIDES,
        "sim_failed_later_by_code": dict(sum((Counter(r["failed_later"]) for r in singles + doubles),
                                             Counter())),
        "single_runs": [round(r["msgs_per_s"], 1) for r in singles],
        "two_number_runs": [round(r["msgs_per_s"], 1) for r in doubles],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
