"""Meta's limits end to end (issue 13): the simulator over real HTTP posts signed webhooks
to pgwa's receiver (``python -m api``), and the worker's send and webhook loops run in
this process, the send loop on a clock the test moves together with the simulator's
(``Sender(clock=...)``, ``POST /_sim/clock``), so that a day passes in a second.

The SQL of each rule is tested on its own (test_messaging_limits.py, test_send_limits.py,
test_unsure_sends.py, test_webhooks_account.py); here each path is taken by Meta's own
answers and webhooks:

* a campaign beyond the portfolio's messaging limit waits, and resumes as the 24 hours roll;
* a tier upgrade (business_capability_update) releases the waiting messages at once;
* 131049 as a later failed status: the user is tried again the next day, and delivered;
* 131050: marketing to that user stops, utility still goes;
* an 80007 burst holds the WABA's number with an alert, its pace untouched; 130429 halves it;
* 131056 defers only that recipient;
* a send whose answer was lost while the receiver was down is not sent twice.
"""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from api.graph_templates import sync_templates
from pgwa.config import Settings
from pgwa.contacts import csv_text, stage_csv
from pgwa.local.stack import GRAPH_VERSION, Stack
from pgwa.queries import queries
from tests.sim_fixtures import PATIENT_WEBHOOKS
from worker import webhooks
from worker.sender import Sender

PNID, WABA = "710000000000001", "720000000000001"
MPS = 200
# Meta's deterministic rules, its random behaviours off (exact counts), statuses soon.
SIM_SETTINGS = {"profile": "quiet", "us_marketing_blocked": False,
                "statuses": {"sent_delay_ms": [1, 10], "delivered_delay_ms": [5, 20], "read_rate": 0.0},
                "webhook": {"flush_ms": 20}}
UTILITY = [{"name": "order_update", "language": "en_US", "params": [{"column": "name"}, {"value": "A-1"}]}]
MARKETING = [{"name": "promo_offer", "language": "en_US", "params": [{"value": "20% off"}]}]


def phones(n: int, base: int = 0) -> list[str]:
    # "1" + an area code starting with 0: no US number (Meta's US marketing pause).
    return [f"10{base + i:09d}" for i in range(n)]


class World:
    """One tenant's number in pgwa and in the simulator, and the clock both run on."""

    def __init__(self, db: psycopg.Connection, url: str, stack: Stack) -> None:
        self.db, self.url, self.stack = db, url, stack
        self.offset_s = 0.0
        self.tenant = db.execute(queries["create_tenant"], {"name": "limits"}).fetchone()[0]
        self.number_id = stack.register_number(db, self.tenant, PNID, WABA, MPS)
        sync_templates(db, self.tenant, WABA, "local-token", stack.sim_url, GRAPH_VERSION)
        self.settings = Settings(database_url=url, graph_base_url=stack.sim_url, worker_name="e2e",
                                 **PATIENT_WEBHOOKS)

    # --- the clock ----------------------------------------------------------------------
    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset_s)

    def advance(self, seconds: float) -> None:
        """Move the simulator's clock and pgwa's (the sender's p_now) forward together."""
        self.sim("POST", "/_sim/clock", {"advance_s": seconds})
        self.offset_s += seconds

    def advance_to(self, at: datetime) -> None:
        self.advance(max((at - self.now()).total_seconds(), 0) + 1.0)

    # --- the simulator ------------------------------------------------------------------
    def sim(self, method: str, path: str, payload: object = None) -> dict:
        return self.stack.sim(method, path, payload)

    def faults(self, **patch: object) -> dict:
        return self.sim("POST", "/_sim/faults", patch)

    def accepted_to(self) -> dict[str, int]:
        """How many sends the simulator accepted per recipient."""
        rows = self.sim("GET", f"/_sim/ledger?limit=100000&phone_number_id={PNID}")["entries"]
        out: dict[str, int] = {}
        for r in rows:
            out[r["to"]] = out.get(r["to"], 0) + 1
        return out

    def tier(self, tier: str, webhook: bool = False) -> None:
        """The portfolio's tier at Meta; without the webhook, pgwa is told as its owner would."""
        self.sim("POST", "/_sim/tier", {"waba_id": WABA, "tier": tier, "webhook": webhook})
        if not webhook:
            self.db.execute(queries["set_messaging_limit"], {"tenant_id": self.tenant, "number_id": self.number_id,
                                                             "tier": tier, "business_id": None})

    # --- pgwa ---------------------------------------------------------------------------
    def campaign(self, to: list[str], templates: list[dict] = UTILITY) -> int:
        with self.db.transaction():
            stage_csv(self.db, csv_text({"phone": "+" + p, "name": f"N{i}"} for i, p in enumerate(to)))
            row = self.db.execute(queries["create_campaign"], {
                "tenant_id": self.tenant, "number_id": self.number_id, "name": f"c{time.monotonic_ns()}",
                "templates": orjson.dumps(templates).decode(), "on_invalid": "reject", "scheduled_at": None,
                "start": True, "default_country_code": None}).fetchone()
        return row[0]

    def one(self, query: str, *params: object) -> dict:
        with self.db.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, params).fetchone()

    def messages(self, campaign: int) -> dict[str, dict]:
        with self.db.cursor(row_factory=dict_row) as cur:
            rows = cur.execute("SELECT ct.wa_id, o.* FROM core.outbound_messages o "
                               "JOIN core.contacts ct USING (contact_id) WHERE o.campaign_id = %s",
                               (campaign,)).fetchall()
        return {r["wa_id"]: r for r in rows}

    def run_until(self, query: str, params: tuple = (), timeout: float = 30.0) -> Sender:
        """Run the send loop (on this world's clock) and the webhook loop until ``query``
        answers true and every message claimed was reported; returns the sender."""
        sender = Sender(self.settings, clock=self.now, heartbeat_s=0.2, status_line=False)

        async def go() -> None:
            stop = asyncio.Event()
            tasks = [asyncio.create_task(sender.run(stop)), asyncio.create_task(webhooks.run(self.settings, stop))]
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    deadline = time.monotonic() + timeout
                    while True:
                        row = await (await conn.execute(query, params)).fetchone()
                        if row[0] and sender._inflight == 0:
                            break
                        assert time.monotonic() < deadline, f"timed out waiting for {query!r}; {sender.stats}"
                        assert not any(t.done() for t in tasks), [t.result() for t in tasks if t.done()]
                        await asyncio.sleep(0.05)
            finally:
                stop.set()
                await asyncio.gather(*tasks)

        asyncio.run(go())
        return sender

    def run_until_completed(self, campaign: int, timeout: float = 30.0) -> Sender:
        return self.run_until("SELECT status = 'completed' FROM core.campaigns WHERE campaign_id = %s",
                              (campaign,), timeout)

    def wait_quiet(self) -> None:
        """Every webhook the simulator scheduled was answered and processed."""
        self.run_until("SELECT NOT EXISTS (SELECT 1 FROM pgmq.q_webhooks)", ())
        deadline = time.monotonic() + 30
        while self.sim("GET", "/_sim/stats")["webhooks"]["pending"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        self.run_until("SELECT NOT EXISTS (SELECT 1 FROM pgmq.q_webhooks)", ())


@pytest.fixture
def world(db: psycopg.Connection, db_url: str):
    with Stack(db_url, sim_settings=SIM_SETTINGS) as stack:
        yield World(db, db_url, stack)


def test_a_campaign_beyond_the_messaging_limit_waits_and_resumes_as_the_window_rolls(world: World) -> None:
    world.tier("TIER_50")
    to = phones(80)
    campaign = world.campaign(to)
    world.run_until("SELECT budget_wait_until IS NOT NULL AND used_24h = 50 FROM api.portfolios(%s, %s)",
                    (world.tenant, world.now()))
    world.wait_quiet()
    portfolio = world.one("SELECT * FROM api.portfolios(%s, %s)", world.tenant, world.now())
    assert (portfolio["tier"], portfolio["messaging_limit"], portfolio["used_24h"]) == ("TIER_50", 50, 50)
    assert portfolio["budget_wait_until"] > world.now() + timedelta(hours=23)
    assert len(world.accepted_to()) == 50                        # Meta saw 50 new users, no more
    assert world.one("SELECT status, sent FROM core.campaigns WHERE campaign_id = %s", campaign) == \
        {"status": "running", "sent": 50}

    # A day later (on both clocks) the window has rolled past the first 50: 30 more go.
    world.advance_to(portfolio["budget_wait_until"])
    world.run_until_completed(campaign)
    business = world.sim("GET", "/_sim/stats")["businesses"][WABA]
    assert business["max_unique_users_24h"] <= 50 and business["refused_new_users"] == 0
    assert world.accepted_to() == dict.fromkeys(to, 1)


def test_a_tier_upgrade_from_metas_webhook_releases_the_waiting_messages_at_once(world: World) -> None:
    world.tier("TIER_50")
    to = phones(80)
    campaign = world.campaign(to)
    world.run_until("SELECT budget_wait_until IS NOT NULL FROM api.portfolios(%s)", (world.tenant,))
    # Meta raises the portfolio's limit and says so (business_capability_update): no wait.
    world.tier("TIER_250", webhook=True)
    world.run_until_completed(campaign)
    portfolio = world.one("SELECT * FROM api.portfolios(%s)", world.tenant)
    assert (portfolio["tier"], portfolio["messaging_limit"], portfolio["budget_wait_until"]) == \
        ("TIER_250", 250, None)
    assert world.offset_s == 0                                   # no day passed
    assert world.accepted_to() == dict.fromkeys(to, 1)
    assert world.sim("GET", "/_sim/stats")["businesses"][WABA]["refused_new_users"] == 0


def test_a_user_meta_withholds_under_the_marketing_cap_is_tried_the_next_day_and_delivered(world: World) -> None:
    to = phones(6)
    capped = to[2]
    # Meta accepts the send, then fails it with 131049 (the per-user marketing cap).
    world.faults(inject=[{"code": 131049, "mode": "webhook", "to": [capped], "category": "MARKETING"}])
    campaign = world.campaign(to, MARKETING)
    world.run_until("SELECT delivered = 5 FROM core.campaigns WHERE campaign_id = %s", (campaign,))
    world.wait_quiet()
    # pg_cron's minute sweep, for a 131049 whose webhook crossed its send's report.
    world.db.execute("SELECT core.sweep_sends()")
    c = world.one("SELECT status, retrying, failed FROM core.campaigns WHERE campaign_id = %s", campaign)
    assert c == {"status": "running", "retrying": 1, "failed": 0}
    m = world.messages(campaign)[capped]
    assert (m["state"], m["deferrals"], m["error_code"]) == ("queued", 1, 131049)
    assert world.one("SELECT retrying FROM api.campaign_stats(%s, %s)", world.tenant, campaign)["retrying"] == 1

    # Not before a day has passed since Meta's failed status (its timestamp, on the
    # simulator's clock) ...
    failed_at = world.one("SELECT occurred_at FROM core.status_events WHERE outbound_id = %s AND status = 'failed'",
                          m["outbound_id"])["occurred_at"]
    queue = world.db.execute("SELECT 'pgmq.' || pgmq.format_table_name(core.campaign_queue(%s), 'q')",
                             (campaign,)).fetchone()[0]
    (vt,) = world.db.execute(f"SELECT vt FROM {queue} WHERE (message->>'o')::bigint = %s",
                             (m["outbound_id"],)).fetchone()
    assert failed_at + timedelta(days=1) <= vt <= failed_at + timedelta(days=1, seconds=60)
    world.advance(86400 - 120)
    assert vt > world.now() and world.accepted_to()[capped] == 1
    # ... then once more, and this time the cap lets it through.
    world.faults(inject=[])
    world.advance(121)
    world.run_until_completed(campaign)
    world.wait_quiet()
    m = world.messages(campaign)[capped]
    assert (m["state"], m["deferrals"]) == ("delivered", 1)
    assert world.accepted_to() == {**dict.fromkeys(to, 1), capped: 2}
    c = world.one("SELECT delivered, failed, retrying FROM core.campaigns WHERE campaign_id = %s", campaign)
    assert c == {"delivered": 6, "failed": 0, "retrying": 0}


def test_a_user_who_stopped_marketing_gets_no_more_marketing_but_still_utility(world: World) -> None:
    stopped, other = phones(2)
    world.faults(inject=[{"code": 131050, "mode": "webhook", "to": [stopped], "category": "MARKETING"}])
    first = world.campaign([stopped, other], MARKETING)
    world.run_until("SELECT failed = 1 AND delivered = 1 FROM core.campaigns WHERE campaign_id = %s", (first,))
    assert world.one("SELECT marketing_stopped_at IS NOT NULL AS stopped FROM core.contacts "
                     "WHERE tenant_id = %s AND wa_id = %s", world.tenant, stopped) == {"stopped": True}
    world.faults(inject=[])

    promo = world.campaign([stopped, other], MARKETING)
    utility = world.campaign([stopped], UTILITY)
    world.run_until_completed(promo)
    world.run_until_completed(utility)
    world.wait_quiet()
    assert world.messages(promo)[stopped]["state"] == "cancelled"
    assert world.messages(utility)[stopped]["state"] == "delivered"
    # Meta got the first marketing send and the utility one; no second marketing send.
    assert world.accepted_to() == {stopped: 2, other: 2}


def test_an_80007_burst_holds_the_number_with_an_alert_and_keeps_its_pace(world: World) -> None:
    world.faults(account_limit={"code": 80007, "seconds": 600, "waba_id": WABA, "regain_minutes": 10})
    to = phones(30)
    campaign = world.campaign(to)
    world.run_until("SELECT send_tat > %s::timestamptz + interval '9 minutes' FROM core.wa_numbers "
                    "WHERE number_id = %s", (world.now(), world.number_id))
    n = world.one("SELECT rate_mps, throttled_at, send_tat FROM core.wa_numbers WHERE number_id = %s",
                  world.number_id)
    assert n["rate_mps"] == MPS and n["throttled_at"] is None       # no halving for 80007
    alerts = world.db.execute("SELECT severity, details FROM core.notifications WHERE tenant_id = %s "
                              "AND kind = 'send_error'", (world.tenant,)).fetchall()
    assert [(s, d["error_code"]) for s, d in alerts] == [("warning", 80007)]
    assert world.accepted_to() == {}
    c = world.one("SELECT failed, sent FROM core.campaigns WHERE campaign_id = %s", campaign)
    assert c == {"failed": 0, "sent": 0}                         # held, nothing spent

    world.advance_to(n["send_tat"])                               # the hour's budget is back
    sender = world.run_until_completed(campaign)
    assert sender.stats.error_codes.get(80007, 0) == 0
    assert world.one("SELECT rate_mps FROM core.wa_numbers WHERE number_id = %s", world.number_id) == \
        {"rate_mps": MPS}
    assert world.accepted_to() == dict.fromkeys(to, 1)


def test_130429_halves_the_numbers_pace(world: World) -> None:
    # Meta answers 130429 until the test ends the burst (never a race with a few seconds
    # of wall clock on a loaded machine): no clean batch meanwhile grows the pace back.
    world.faults(rate_limit_burst={"seconds": 600, "phone_number_id": PNID})
    campaign = world.campaign(phones(20))
    world.run_until("SELECT throttled_at IS NOT NULL FROM core.wa_numbers WHERE number_id = %s",
                    (world.number_id,))
    n = world.one("SELECT rate_mps, throttled_at FROM core.wa_numbers WHERE number_id = %s", world.number_id)
    assert 0 < n["rate_mps"] <= MPS / 2
    world.faults(rate_limit_burst={"seconds": 0, "phone_number_id": PNID})
    world.run_until_completed(campaign)
    assert world.accepted_to() == dict.fromkeys(phones(20), 1)


def test_131056_defers_only_that_recipient_and_the_number_sends_on(world: World) -> None:
    to = phones(10)
    busy = to[4]
    world.faults(inject=[{"code": 131056, "mode": "sync", "to": [busy]}])
    campaign = world.campaign(to)
    world.run_until("SELECT delivered = 9 FROM core.campaigns WHERE campaign_id = %s", (campaign,))
    m = world.messages(campaign)[busy]
    assert (m["state"], m["error_code"], m["attempts"]) == ("queued", 131056, 0)
    assert m["deferrals"] >= 1
    n = world.one("SELECT rate_mps, throttled_at FROM core.wa_numbers WHERE number_id = %s", world.number_id)
    assert n == {"rate_mps": MPS, "throttled_at": None}
    world.faults(inject=[])
    world.advance(4 ** m["deferrals"] + 1)
    world.run_until_completed(campaign)
    assert world.accepted_to() == dict.fromkeys(to, 1)


def test_a_send_whose_answer_is_lost_while_the_receiver_is_down_is_not_sent_twice(world: World) -> None:
    # Short graces, so that a resend would come within the test if pgwa guessed.
    world.db.execute("UPDATE core.settings SET status_grace_s = 1, receiver_beat_s = 1")
    to = phones(1)
    api = world.stack.procs["api"]
    api.send_signal(signal.SIGSTOP)                 # the receiver is down: no beats, no webhooks
    try:
        world.faults(drop_connection_rate=1.0, drop_after_accept_share=1.0)
        campaign = world.campaign(to)
        queue = world.db.execute("SELECT 'pgmq.' || pgmq.format_table_name(core.campaign_queue(%s), 'q')",
                                 (campaign,)).fetchone()[0]
        world.run_until("SELECT unsure_since IS NOT NULL FROM core.outbound_messages WHERE campaign_id = %s",
                        (campaign,))
        world.faults(drop_connection_rate=0.0)
        assert world.accepted_to() == {to[0]: 1}    # Meta has it; pgwa does not know
        # Grace after grace passes: each claim finds the webhook stream not caught up past
        # the send (the receiver is not beating) and holds the message again.
        world.run_until(f"SELECT read_ct >= 4 FROM {queue}")
        assert world.accepted_to() == {to[0]: 1}
        assert world.messages(campaign)[to[0]]["state"] == "queued"
    finally:
        api.send_signal(signal.SIGCONT)
    # The receiver is back; Meta's retried status webhooks settle the message.
    world.run_until("SELECT state = 'delivered' FROM core.outbound_messages WHERE campaign_id = %s", (campaign,),
                    timeout=60)
    world.run_until(f"SELECT NOT EXISTS (SELECT 1 FROM {queue})")     # dropped, never resent
    assert world.accepted_to() == {to[0]: 1}
    # Settled by its status, not by a report: the minute's sweep completes the campaign.
    assert world.db.execute("SELECT core.complete_campaigns(ARRAY[%s::bigint])", (campaign,)).fetchone()[0] == \
        [campaign]
    outages = world.db.execute("SELECT count(*) FROM core.receiver_outages").fetchone()[0]
    assert outages >= 1                             # pgwa knew the receiver had been down


# --- a 131049 and its send's report, in either order (no simulator: the order is forced) ---

def _capped_world(db: psycopg.Connection):
    from tests import factories as f
    from tests.test_webhooks_payloads import status, statuses_payload

    acc = f.account(db)
    cid = f.running_campaign(db, acc, 2)
    capped, other = f.claim_all(db)
    failed = status(f"wamid.{capped['outbound_id']}", "failed", error_code=131049,
                    opaque=capped["body"]["biz_opaque_callback_data"])
    db.execute("SELECT api.ingest_webhooks(%s::jsonb[])",
               ([Jsonb(statuses_payload(failed, phone_number_id=acc.phone_number_id))],))
    return f, cid, capped, other


def test_a_131049_that_comes_before_its_sends_report_defers_the_message(db: psycopg.Connection) -> None:
    f, cid, capped, other = _capped_world(db)
    # Meta's webhook beat the worker's report: the message is in flight, its wamid unknown.
    assert db.execute("SELECT payloads FROM api.process_webhooks(100)").fetchone()[0] == 1
    assert f.outbound(db, capped["outbound_id"])["state"] == "in_flight"    # left for the report
    f.report(db, [f.ok(capped), f.ok(other)])
    o = f.outbound(db, capped["outbound_id"])
    assert (o["state"], o["deferrals"], o["error_code"], o["wamid"]) == ("queued", 1, 131049, None)
    c = f.campaign(db, cid)
    assert (c["status"], c["retrying"], c["failed"], c["sent"]) == ("running", 1, 0, 1)


def test_a_131049_that_crossed_its_sends_report_is_matched_by_the_sweep(db: psycopg.Connection,
                                                                      db_url: str) -> None:
    f, cid, capped, other = _capped_world(db)
    # The two transactions cross: the webhook's sees the message in flight and leaves the
    # status for the report; the report, committed first, cannot see that status yet.
    with psycopg.connect(db_url) as webhooks_tx:
        assert webhooks_tx.execute("SELECT payloads FROM api.process_webhooks(100)").fetchone()[0] == 1
        f.report(db, [f.ok(capped), f.ok(other)])
        webhooks_tx.commit()
    o = f.outbound(db, capped["outbound_id"])
    assert (o["state"], o["deferrals"]) == ("accepted", 0)
    assert f.campaign(db, cid)["status"] == "completed"
    # The minute's sweep matches it: tried again a day later, the campaign running again.
    assert db.execute("SELECT core.sweep_sends()->>'late_capped'").fetchone()[0] == "1"
    o = f.outbound(db, capped["outbound_id"])
    assert (o["state"], o["deferrals"], o["error_code"]) == ("queued", 1, 131049)
    c = f.campaign(db, cid)
    assert (c["status"], c["retrying"], c["failed"]) == ("running", 1, 0)
    assert db.execute("SELECT core.sweep_sends()->>'late_capped'").fetchone()[0] == "0"    # once


def test_once_the_budget_is_spent_a_campaigns_whole_queue_waits_at_once(db: psycopg.Connection) -> None:
    from tests import factories as f

    acc = f.account(db)
    db.execute(queries["set_messaging_limit"], {"tenant_id": acc.tenant_id, "number_id": acc.number_id,
                                                "tier": "TIER_50", "business_id": None})
    cid = f.create_campaign(db, acc, 600, start=True)["campaign_id"]
    t = f.clock(db)
    f.report(db, [f.ok(r) for r in f.claim_all(db, now=t)], now=t)
    (wait,) = db.execute("SELECT budget_wait_until FROM api.portfolios(%s, %s)", (acc.tenant_id, t)).fetchone()
    # The next claim reads a few messages to new users and finds no budget: not only those
    # few but all 550 waiting go back until the window rolls, in one claim.
    assert f.claim(db, 5, now=f.later(t, 1)) == []
    vts = [m["vt"] for m in f.queue(db, f.campaign_queue(db, cid))]
    assert len(vts) == 550 and min(vts) == wait
    assert f.claim_all(db, now=f.later(wait, -1)) == []
    assert len(f.claim_all(db, now=wait)) == 50
