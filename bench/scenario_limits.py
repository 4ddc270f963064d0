"""Meta's limits end to end, on a compressed clock: a 30,000-contact marketing campaign
on a TIER_2K portfolio (2,000 unique users per moving 24 hours), 5% of users withheld by
Meta's per-user marketing cap (131049 as a later failed status) and one 80007 burst
(the WABA's hourly call budget spent).

It runs the simulator with Meta's realistic defaults (sim/config.py) but for the cap's
share (0.05) and the US pause (off: the contacts' area codes are not US ones anyway),
the webhook receiver (``python -m api``), and, in this process, the worker's send loop
and webhook-processing loop. The send loop claims and reports at a time it is given
(``Sender(clock=...)``: p_now of api.claim_sends / api.report_sends): real time plus an
offset. Whenever nothing can happen before a later time (every message that may go now
went, its statuses were processed, and the next one waits for the portfolio's budget,
for the next-day retry of a capped user, or for the end of the 80007 hold), the scenario
moves that offset and the simulator's clock (``POST /_sim/clock``) forward together, to
that time. Days pass in seconds.

Prints one JSON line: the tier, the most unique users the simulator saw reached in any
24 hours (never above the tier), whether the campaign waited for the budget, the capped
users retried and delivered on a retry, the 80007 alerts, the number's lowest pace from
the burst to the end of the hold it caused (``pace_min_mps``: 80007 must not halve it;
``pace_min_overall_mps`` and ``throttled_130429`` say whether Meta's 130429 did at
another time), duplicates and lost messages (from the simulator's ledger), the simulated
days and the elapsed seconds. Exits 1 when one of those is not as it should be.
Progress on stderr (``--verbose``: a line for each move of the clocks).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import psycopg
from common import create_tenant, logger

from api.graph_templates import sync_templates
from pgwa import scratch
from pgwa.config import Settings
from pgwa.contacts import csv_text, stage_csv
from pgwa.local.stack import GRAPH_VERSION, Stack
from pgwa.queries import queries
from worker import webhooks
from worker.sender import Sender

SCENARIO_DB = "pgwa_scenario"
TIER = "TIER_2K"
MPS = 1000
CAP_SHARE = 0.05
PHONE_NUMBER_ID, WABA_ID = "610000000000001", "620000000000001"
TEMPLATES = [{"name": "promo_offer", "language": "en_US", "params": [{"value": "20% off"}]}]
SIM_SETTINGS = {"marketing_cap_share": CAP_SHARE, "us_marketing_blocked": False,
                "messaging_limit": {"tiers": {WABA_ID: TIER}}}
BURST = {"code": 80007, "seconds": 3600, "waba_id": WABA_ID}   # the usage header: 60 minutes
POLL_S = 0.2
QUIET_POLLS = 3          # nothing moved for this many polls: the world waits for a time

log = logger("scenario-limits")


class Clock:
    """Real time plus an offset, moved forward with the simulator's clock."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset_s)


def contacts(n: int) -> str:
    # "+1 0..." numbers: no US area code (an area code starts with 2-9).
    return csv_text({"phone": f"+1 {i:010d}", "name": f"C{i}"} for i in range(n))


def setup(conn: psycopg.Connection, stack: Stack, n: int) -> tuple[int, int, int]:
    """A tenant, its number on a TIER_2K portfolio (in pgwa and in the simulator) and a
    running marketing campaign to n contacts: (tenant, number_id, campaign_id)."""
    tenant = create_tenant(conn, f"scenario-{time.time()}")
    number = stack.register_number(conn, tenant, PHONE_NUMBER_ID, WABA_ID, MPS)
    sync_templates(conn, tenant, WABA_ID, "local-token", stack.sim_url, GRAPH_VERSION)
    conn.execute(queries["set_messaging_limit"], {"tenant_id": tenant, "number_id": number, "tier": TIER,
                                                  "business_id": None})
    with conn.transaction():
        stage_csv(conn, contacts(n))
        row = conn.execute(queries["create_campaign"], {
            "tenant_id": tenant, "number_id": number, "name": "limits scenario",
            "templates": orjson.dumps(TEMPLATES).decode(), "on_invalid": "reject", "scheduled_at": None,
            "start": True, "default_country_code": None}).fetchone()
    log(f"campaign {row[0]}: {row[2]:,} contacts, {row[7]} days at {TIER}")
    return tenant, number, row[0]


WORLD_SQL = """
/* scenario */ SELECT c.status, c.total, c.sent, c.delivered, c.failed, c.retrying,
       (SELECT count(*) FROM core.outbound_messages o WHERE o.campaign_id = c.campaign_id AND o.state = 'in_flight'),
       (SELECT count(*) FROM pgmq.q_webhooks),
       n.rate_mps, n.send_tat,
       (SELECT p.budget_wait_until FROM api.portfolios(c.tenant_id, %(now)s) p WHERE n.number_id = ANY (p.number_ids)),
       (SELECT p.used_24h FROM api.portfolios(c.tenant_id, %(now)s) p WHERE n.number_id = ANY (p.number_ids))
FROM core.campaigns c JOIN core.wa_numbers n ON n.number_id = c.number_id
WHERE c.campaign_id = %(campaign)s
"""


async def drive(url: str, stack: Stack, http: httpx.AsyncClient, clock: Clock, sender: Sender,
                campaign: int, burst_after: int, timeout: float, verbose: bool = False) -> dict:
    """Watch the world; move the clocks when it waits; inject the burst; until the campaign
    is over. Returns what was observed."""
    seen = {"waited_for_budget": False, "pace_min_mps": None, "pace_min_overall_mps": None, "pace_max_mps": None,
            "max_used_24h": 0, "advances": 0, "burst_at_sent": None, "late_capped": 0}
    began = time.monotonic()
    deadline = began + timeout
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        queue = (await (await conn.execute("SELECT 'pgmq.' || pgmq.format_table_name(core.campaign_queue(%s), 'q')",
                                           (campaign,))).fetchone())[0]
        quiet, last_key, last_print = 0, None, 0.0
        episode: dict | None = None
        while True:
            assert time.monotonic() < deadline, f"scenario not over after {timeout:.0f} s"
            now = clock()
            w = await (await conn.execute(WORLD_SQL, {"now": now, "campaign": campaign})).fetchone()
            status, total, sent, delivered, failed, retrying, in_flight, hooks, rate, tat, wait, used = w
            visible, next_vt = await (await conn.execute(
                f"SELECT count(*) FILTER (WHERE vt <= %(now)s), min(vt) FILTER (WHERE vt > %(now)s) FROM {queue}",
                {"now": now})).fetchone()
            sim = (await http.get("/_sim/stats")).json()
            pending = sim["webhooks"]["pending"]
            rate = float(rate)
            seen["pace_min_overall_mps"] = min(seen["pace_min_overall_mps"] or rate, rate)
            seen["pace_max_mps"] = max(seen["pace_max_mps"] or 0, rate)
            if episode is not None:
                # The 80007 episode: from the burst to the end of the hold it caused (the
                # pace Meta's answers left the number with).
                seen["pace_min_mps"] = min(seen["pace_min_mps"] or rate, rate)
                if tat is not None and tat > now + timedelta(seconds=1):
                    episode["held"] = True
                elif episode["held"]:
                    episode = None
            seen["max_used_24h"] = max(seen["max_used_24h"], used or 0)
            if wait is not None:
                seen["waited_for_budget"] = True
            if seen["burst_at_sent"] is None and sent >= burst_after:
                (await http.post("/_sim/faults", json={"account_limit": BURST})).raise_for_status()
                seen["burst_at_sent"] = sent
                episode = {"held": False}
                log(f"80007 burst on WABA {WABA_ID} after {sent:,} sent")
            if time.monotonic() - last_print >= 1.0:
                last_print = time.monotonic()
                print(f"\r  day {clock.offset_s / 86400:5.2f}  sent {sent:,}/{total:,}  delivered {delivered:,}"
                      f"  failed {failed:,}  retrying {retrying:,}  used_24h {used}  pace {rate:.0f}/s   ",
                      end="", file=sys.stderr, flush=True)
            settled = (in_flight == 0 and hooks == 0 and pending == 0 and sender._inflight == 0)
            key = (sent, delivered, failed, retrying, sender.stats.sent)
            quiet = quiet + 1 if settled and key == last_key else 0
            last_key = key
            if quiet == QUIET_POLLS:
                # pg_cron's minute sweep, which this database has not: it completes a
                # campaign whose last messages were settled by statuses, and matches a
                # 131049 that crossed its send's report (core.match_late_capped).
                swept = (await (await conn.execute("SELECT core.sweep_sends()")).fetchone())[0]
                seen["late_capped"] += swept.get("late_capped", 0)
                if swept["completed"] or swept.get("late_capped"):
                    quiet = 0
                    continue
            if quiet >= QUIET_POLLS:
                held = tat is not None and tat > now + timedelta(seconds=1)
                if status == "completed" and visible == 0 and next_vt is None and retrying == 0:
                    print(file=sys.stderr)
                    return seen
                if visible == 0 or held:
                    # Nothing can go before the next message's time or the hold's end.
                    nxt = min(t for t in (next_vt, tat if held else None) if t is not None) \
                        if (next_vt is not None or held) else None
                    if nxt is not None and nxt > now + timedelta(seconds=1):
                        step = (nxt - now).total_seconds() + 1.0
                        (await http.post("/_sim/clock", json={"advance_s": step})).raise_for_status()
                        clock.offset_s += step
                        seen["advances"] += 1
                        quiet = 0
                        if verbose:
                            why = "the hold" if held and nxt == tat else "the next message due"
                            print(f"\n  {time.monotonic() - began:6.1f} s: clock +{step:,.0f} s to {why}"
                                  f" (sent {sent:,}, budget used {used})", file=sys.stderr, flush=True)
            await asyncio.sleep(POLL_S)


def ledger(stack: Stack) -> list[dict]:
    rows, since = [], 0
    while True:
        page = stack.sim("GET", f"/_sim/ledger?since={since}&limit=50000&phone_number_id={PHONE_NUMBER_ID}")
        rows += page["entries"]
        if page["next"] >= page["total"]:
            return rows
        since = page["next"]


async def run(url: str, stack: Stack, tenant: int, campaign: int, contacts_n: int, timeout: float,
              verbose: bool = False) -> dict:
    clock = Clock()
    settings = Settings(database_url=url, graph_base_url=stack.sim_url, worker_name="scenario")
    # Claim as often as the database answers, even when a claim finds nothing: the
    # messages beyond the budget go back to their queue a claim's worth at a time (a
    # horizon of the number's pace), and the clock moves only once they all have.
    sender = Sender(settings, clock=clock, heartbeat_s=0.005, status_line=False)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(sender.run(stop)), asyncio.create_task(webhooks.run(settings, stop))]
    began = time.monotonic()
    try:
        async with httpx.AsyncClient(base_url=stack.sim_url, timeout=30) as http:
            seen = await drive(url, stack, http, clock, sender, campaign, burst_after=contacts_n // 60,
                               timeout=timeout, verbose=verbose)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.monotonic() - began

    sim = stack.sim("GET", "/_sim/stats")
    rows = ledger(stack)
    with psycopg.connect(url, autocommit=True) as conn:
        outbound = conn.execute(
            "/* scenario */ SELECT outbound_id, state, deferrals, error_code FROM core.outbound_messages"
            " WHERE campaign_id = %s", (campaign,)).fetchall()
        alerts = conn.execute(
            "/* scenario */ SELECT count(*) FROM core.notifications WHERE tenant_id = %s AND kind = 'send_error'"
            " AND (details->>'error_code')::int = 80007", (tenant,)).fetchone()[0]
        c = conn.execute("/* scenario */ SELECT total, sent, delivered, failed, retrying, status"
                         " FROM core.campaigns WHERE campaign_id = %s", (campaign,)).fetchone()
    accepted = Counter(int(r["biz_opaque_callback_data"].split(":", 1)[1]) for r in rows
                       if (r["biz_opaque_callback_data"] or "").startswith(f"c{campaign}:"))
    by_id = {o[0]: o for o in outbound}
    # A message the cap withheld was accepted once more for each deferral: not a duplicate.
    duplicates = sum(max(0, n - 1 - by_id[i][2]) for i, n in accepted.items() if i in by_id)
    terminal = {"delivered", "read", "failed", "sent", "accepted"}
    lost = sum(1 for o in outbound if o[0] not in accepted and o[1] != "failed") \
        + sum(1 for o in outbound if o[1] not in terminal)
    business = sim["businesses"][WABA_ID]
    retried = [o for o in outbound if o[2] > 0]
    return {
        "tier": TIER,
        "messaging_limit": business["messaging_limit"],
        "contacts": c[0],
        "max_unique_users_24h": business["max_unique_users_24h"],
        "refused_new_users": business["refused_new_users"],
        "pgwa_max_used_24h": seen["max_used_24h"],
        "waited_for_budget": seen["waited_for_budget"],
        "capped_share": CAP_SHARE,
        "capped_failed_statuses": sim["failed_later_by_code"].get("131049", 0),
        "capped_retried": len(retried),
        "capped_delivered_on_retry": sum(1 for o in retried if o[1] in ("delivered", "read")),
        "capped_failed_for_good": sum(1 for o in outbound if o[1] == "failed" and o[3] == 131049),
        "capped_matched_by_sweep": seen["late_capped"],
        "delivered": sum(1 for o in outbound if o[1] in ("delivered", "read")),
        "failed": c[3],
        "campaign_status": c[5],
        "account_limit_alerts": alerts,
        "account_limit_rejections": sim["rejected_by_code"].get("80007", 0),
        "pace_min_mps": round(seen["pace_min_mps"], 1),
        "pace_min_overall_mps": round(seen["pace_min_overall_mps"], 1),
        "pace_max_mps": round(seen["pace_max_mps"], 1),
        "throughput_mps": MPS,
        "throttled_130429": sim["rejected_by_code"].get("130429", 0),
        "duplicates": duplicates,
        "lost": lost,
        "simulated_days": round(clock.offset_s / 86400, 2),
        "clock_moves": seen["advances"],
        "elapsed_s": round(elapsed, 1),
        "sim_defaults": "realistic",
        "sim_overrides": SIM_SETTINGS,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contacts", type=int, default=30_000)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds of real time at most")
    parser.add_argument("--verbose", action="store_true", help="a line for each move of the clocks")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, signal.default_int_handler)     # stop the processes it started
    url = scratch.fresh_database(SCENARIO_DB)
    log(f"database {SCENARIO_DB} ready")
    with Stack(url, sim_settings=SIM_SETTINGS) as stack:
        with psycopg.connect(url, autocommit=True) as conn:
            tenant, _, campaign = setup(conn, stack, args.contacts)
        result = asyncio.run(run(url, stack, tenant, campaign, args.contacts, args.timeout, args.verbose))
    print(json.dumps(result))
    ok = (result["max_unique_users_24h"] <= result["messaging_limit"] and result["waited_for_budget"]
          and result["account_limit_alerts"] >= 1 and result["duplicates"] == 0 and result["lost"] == 0
          and result["pace_min_mps"] >= 0.9 * MPS * 0.97)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
