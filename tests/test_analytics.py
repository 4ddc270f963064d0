"""Campaign analytics from maintained counters: stats, the list, reconciliation, /metrics'
function, the operators' views and the retention jobs."""

from __future__ import annotations

import re
import time

import orjson
import psycopg
import pytest
from psycopg.rows import dict_row

from tests import factories
from tests.factories import err, ok

SAMPLE = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"\\\n]*"(,[a-z_]+="[^"\\\n]*")*\})? -?[0-9]+(\.[0-9]+)?$')


def statuses(db: psycopg.Connection, acc: factories.Account, *items: tuple[str, str, int | None]) -> None:
    """Deliver Meta status webhooks (wamid, status, error code) through ingest and processing."""
    now = str(int(time.time()))
    entries = []
    for wamid, status, code in items:
        s: dict = {"id": wamid, "status": status, "timestamp": now, "recipient_id": "14150000000"}
        if code is not None:
            s["errors"] = [{"code": code, "title": "error", "message": "error"}]
        entries.append(s)
    payload = {"object": "whatsapp_business_account", "entry": [{"id": acc.waba_id, "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp",
                                       "metadata": {"phone_number_id": acc.phone_number_id},
                                       "statuses": entries}}]}]}
    db.execute("SELECT api.ingest_webhook(%s::jsonb)", (orjson.dumps(payload).decode(),))
    db.execute("SELECT * FROM api.process_webhooks(100)")


def stats(db: psycopg.Connection, acc: factories.Account, campaign_id: int) -> dict:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM api.campaign_stats(%s, %s)", (acc.tenant_id, campaign_id)).fetchone()


def drift(db: psycopg.Connection, acc: factories.Account, campaign_id: int, fix: bool = False) -> list[dict]:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM api.reconcile_campaign(%s, %s, %s)",
                           (acc.tenant_id, campaign_id, fix)).fetchall()


def settled_campaign(db: psycopg.Connection, acc: factories.Account) -> tuple[int, list[dict]]:
    """Ten messages over two templates: 6 accepted (then 4 delivered, 2 of them read, 1 failed
    after sending with 131049, 1 failed with no code), 2 failed 131026, 1 failed 131050,
    1 retried (transient 131000) and still queued. 131049 is final here: no retries left."""
    factories.settings(db, capped_retry_days=0)
    campaign_id = factories.running_campaign(db, acc, 10, [factories.order_update(), factories.promo()])
    requests = factories.claim_all(db)
    assert len(requests) == 10
    factories.report(db, [ok(r) for r in requests[:6]] + [err(r, 131026) for r in requests[6:8]]
                     + [err(requests[8], 131050), err(requests[9], 131000)])
    w = [f"wamid.{r['outbound_id']}" for r in requests[:6]]
    statuses(db, acc, *[(x, "delivered", None) for x in w[:4]], (w[0], "read", None), (w[1], "read", None),
             (w[4], "failed", 131049), (w[5], "failed", None))
    return campaign_id, requests


def test_stats_give_the_funnel_rates_templates_errors_and_timeline(db: psycopg.Connection) -> None:
    acc = factories.account(db)
    campaign_id, requests = settled_campaign(db, acc)
    s = stats(db, acc, campaign_id)
    assert {k: s[k] for k in ("total", "queued", "sent", "delivered", "read", "replied", "failed", "cancelled")} == \
        {"total": 10, "queued": 1, "sent": 6, "delivered": 4, "read": 2, "replied": 0, "failed": 5, "cancelled": 0}
    assert (s["delivery_rate"], s["read_rate"], s["failure_rate"]) == (round(4 / 6, 4), 0.5, round(5 / 9, 4))
    assert s["progress"] == 0.9
    assert {(e["error_code"], e["category"], e["count"]) for e in s["errors"]} == {
        (131026, "recipient", 2), (131050, "recipient", 1), (131049, "policy", 1), (-2, "transient", 1)}
    assert s["errors"][0]["error_code"] == 131026 and s["errors"][0]["title"] == "Message undeliverable"
    assert s["errors_by_category"] == [{"category": "recipient", "count": 3}, {"category": "policy", "count": 1},
                                       {"category": "transient", "count": 1}]
    # Per template: the counters of each variant, which add up to the campaign's.
    variants = {r["outbound_id"]: factories.outbound(db, r["outbound_id"])["variant"] for r in requests}
    sent_by_variant = [sum(1 for r in requests[:6] if variants[r["outbound_id"]] == v) for v in (0, 1)]
    assert [t["name"] for t in s["templates"]] == ["order_update", "promo"]
    assert [t["sent"] for t in s["templates"]] == sent_by_variant
    for key in ("total", "sent", "delivered", "read", "failed"):
        assert sum(t[key] for t in s["templates"]) == s[key]
    # The timeline holds every transition once, in the minute of its event.
    for key in ("sent", "delivered", "read", "failed"):
        assert sum(m[key] for m in s["timeline"]) == s[key], key
    assert all(m["minute"] for m in s["timeline"])
    assert all(r["drift"] == 0 for r in drift(db, acc, campaign_id)), drift(db, acc, campaign_id)


def test_stats_and_the_list_never_read_messages_or_status_events(db: psycopg.Connection) -> None:
    acc = factories.account(db)
    campaign_id, _ = settled_campaign(db, acc)
    reads = """SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0) FROM pg_stat_xact_user_tables
               WHERE relid IN ('core.outbound_messages'::regclass, 'core.status_events'::regclass)"""
    # Within one transaction the backend's pending scan counts are not flushed, so their
    # difference is what these calls read.
    with db.transaction():
        before = db.execute(reads).fetchone()[0]
        db.execute("SELECT * FROM api.campaign_stats(%s, %s)", (acc.tenant_id, campaign_id))
        db.execute("SELECT * FROM api.campaigns(%s, NULL, NULL, 1000)", (acc.tenant_id,))
        db.execute("SELECT api.metrics()")
        assert db.execute(reads).fetchone()[0] == before
        # The check can fire: reconciliation does read the messages.
        db.execute("SELECT * FROM api.reconcile_campaign(%s, %s)", (acc.tenant_id, campaign_id))
        assert db.execute(reads).fetchone()[0] > before


def test_reconcile_reports_drift_per_counter_and_fixes_it(db: psycopg.Connection) -> None:
    acc = factories.account(db)
    campaign_id, _ = settled_campaign(db, acc)
    before = stats(db, acc, campaign_id)
    db.execute("UPDATE core.campaigns SET sent = sent + 5, replied = 3 WHERE campaign_id = %s", (campaign_id,))
    db.execute("UPDATE core.campaign_templates SET delivered = 0 WHERE campaign_id = %s AND variant = 0", (campaign_id,))
    db.execute("DELETE FROM core.campaign_errors WHERE campaign_id = %s AND error_code = 131026", (campaign_id,))
    db.execute("INSERT INTO core.campaign_errors VALUES (%s, 999, 'unknown', 7)", (campaign_id,))
    db.execute("DELETE FROM core.campaign_minutes WHERE campaign_id = %s", (campaign_id,))
    found = {(r["scope"], r["key"], r["counter"]): r["drift"] for r in drift(db, acc, campaign_id) if r["drift"]}
    delivered_0 = next(t["delivered"] for t in before["templates"] if t["variant"] == 0)
    assert delivered_0 > 0
    assert found == {
        ("campaign", "", "sent"): 5, ("campaign", "", "replied"): 3,
        ("template", "0", "delivered"): -delivered_0,
        ("error", "131026", "count"): -2, ("error", "999", "count"): 7,
        ("timeline", "", "sent"): -6, ("timeline", "", "delivered"): -4, ("timeline", "", "read"): -2,
        ("timeline", "", "failed"): -5,
    }
    fixed = drift(db, acc, campaign_id, fix=True)
    assert {(r["scope"], r["key"], r["counter"]) for r in fixed if r["fixed"]} == set(found)
    assert all(r["drift"] == 0 for r in drift(db, acc, campaign_id))
    after = stats(db, acc, campaign_id)
    for key in ("sent", "delivered", "read", "replied", "failed", "templates", "errors", "errors_by_category"):
        assert after[key] == before[key], key
    assert [sum(m[k] for m in after["timeline"]) for k in ("sent", "delivered", "read", "failed")] == [6, 4, 2, 5]


def test_stats_and_reconcile_of_another_tenants_campaign_are_not_found(db: psycopg.Connection) -> None:
    mine, theirs = factories.account(db), factories.account(db)
    campaign_id = factories.create_campaign(db, theirs, 2)["campaign_id"]
    for query in ("SELECT * FROM api.campaign_stats(%s, %s)", "SELECT * FROM api.reconcile_campaign(%s, %s)",
                  "SELECT * FROM api.reconcile_campaign(%s, %s, true)"):
        with pytest.raises(psycopg.Error) as info:
            db.execute(query, (mine.tenant_id, campaign_id))
        assert info.value.diag.sqlstate == "PW201"


def test_the_campaign_list_checks_its_arguments(db: psycopg.Connection) -> None:
    acc = factories.account(db)
    for args in [(acc.tenant_id, None, None, 0), (acc.tenant_id, None, None, 1001), (acc.tenant_id, "done", None, 5)]:
        with pytest.raises(psycopg.Error) as info:
            db.execute("SELECT * FROM api.campaigns(%s, %s, %s, %s)", args)
        assert info.value.diag.sqlstate == "PW100"


def test_replies_reach_the_timeline(db: psycopg.Connection) -> None:
    acc = factories.account(db)
    campaign_id = factories.running_campaign(db, acc, 1)
    request = factories.claim_all(db)[0]
    factories.report(db, [ok(request)])
    payload = {"object": "whatsapp_business_account", "entry": [{"id": acc.waba_id, "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": {"phone_number_id": acc.phone_number_id},
            "contacts": [{"profile": {"name": "A"}, "wa_id": "14150000000"}],
            "messages": [{"from": "14150000000", "id": "wamid.reply1", "timestamp": str(int(time.time())),
                          "type": "text", "text": {"body": "yes"},
                          "context": {"id": f"wamid.{request['outbound_id']}"}}]}}]}]}
    db.execute("SELECT api.ingest_webhook(%s::jsonb)", (orjson.dumps(payload).decode(),))
    db.execute("SELECT * FROM api.process_webhooks(100)")
    s = stats(db, acc, campaign_id)
    assert s["replied"] == 1
    assert sum(m["replied"] for m in s["timeline"]) == 1


# -- /metrics ---------------------------------------------------------------------------------

def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{want}}} " if labels else f"{name} "
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, (prefix, [line for line in text.splitlines() if line.startswith(name)])
    return float(lines[0].rsplit(" ", 1)[1])


def test_metrics_expose_queues_lag_rates_tokens_errors_and_progress(db: psycopg.Connection) -> None:
    acc = factories.account(db)
    campaign_id, _ = settled_campaign(db, acc)
    other = factories.create_campaign(db, acc, 3)["campaign_id"]
    # One time for the whole test: the minute before it is "the last complete minute"
    # however long the test takes (the clock may turn a minute meanwhile).
    now = db.execute("SELECT now()").fetchone()[0]
    factories.catch_up(db, now)
    db.execute("INSERT INTO core.send_minutes (number_id, minute, accepted, failed) "
               "VALUES (%s, date_trunc('minute', %s::timestamptz) - interval '1 minute', 600, 30)",
               (acc.number_id, now))
    db.execute("SELECT api.ingest_webhook('{\"object\": \"x\"}'::jsonb)")
    db.execute("UPDATE pgmq.q_webhooks SET enqueued_at = now() - interval '95 seconds'")
    text = db.execute("SELECT api.metrics(%s)", (now,)).fetchone()[0]

    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or SAMPLE.match(line), line
    assert metric(text, "pgwa_webhook_lag_seconds") >= 95
    # Summed over queues, numbers and campaigns: no series names a tenant's campaign or number.
    assert metric(text, "pgwa_queue_messages", kind="campaign") == 3 + 1
    assert metric(text, "pgwa_sends_per_second", outcome="accepted") == 10
    assert metric(text, "pgwa_sends_per_second", outcome="failed") == 0.5
    assert metric(text, "pgwa_numbers") == 1
    assert metric(text, "pgwa_number_throughput_mps") == 1000
    # A caught-up number may be given its whole pace horizon: 1 s at 99% of 1,000/s.
    assert metric(text, "pgwa_number_tokens") == 990
    assert metric(text, "pgwa_message_failures", category="recipient", code="131026") == 2
    assert metric(text, "pgwa_campaign_messages", status="running", stage="sent") == 6
    assert metric(text, "pgwa_campaign_progress_ratio", status="running") == 0.9
    assert metric(text, "pgwa_campaigns", status="draft") == 1
    assert factories.campaign_queue(db, campaign_id) not in text
    assert "campaign=" not in text and "number=" not in text
    # A finished campaign's queue leaves the queue metrics.
    db.execute("SELECT api.cancel_campaign(%s, %s)", (acc.tenant_id, other))
    assert metric(db.execute("SELECT api.metrics()").fetchone()[0], "pgwa_queue_messages", kind="campaign") == 1


# -- operators ------------------------------------------------------------------------------

def test_operator_views_show_campaigns_queues_and_numbers_and_are_read_only(db: psycopg.Connection) -> None:
    acc = factories.account(db)
    campaign_id, _ = settled_campaign(db, acc)
    with db.cursor(row_factory=dict_row) as cur:
        overview = cur.execute("SELECT * FROM core.campaign_overview WHERE campaign_id = %s", (campaign_id,)).fetchone()
        queue = cur.execute("SELECT * FROM core.queue_depths WHERE campaign_id = %s", (campaign_id,)).fetchone()
        number = cur.execute("SELECT * FROM core.number_health WHERE number_id = %s", (acc.number_id,)).fetchone()
        failures = cur.execute("SELECT * FROM core.campaign_failures WHERE campaign_id = %s", (campaign_id,)).fetchall()
    assert (overview["sent"], overview["queued"], float(overview["progress_pct"])) == (6, 1, 90.0)
    assert overview["phone_number_id"] == acc.phone_number_id
    assert (queue["kind"], queue["queue_length"]) == ("campaign", 1)
    assert number["throughput_mps"] == 1000 and "access_token" not in number and "app_secret" not in number
    assert sum(f["count"] for f in failures) == 5
    for view in ("campaign_overview", "queue_depths", "number_health", "campaign_failures"):
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            db.execute(f"DELETE FROM core.{view}")


def test_retention_jobs_are_registered_and_prune(db: psycopg.Connection) -> None:
    jobs = dict(db.execute("SELECT job_name, command FROM core.cron_jobs").fetchall())
    assert jobs["pgwa_notifications_retention"] == "SELECT core.prune_notifications()"
    assert jobs["pgwa_send_minutes_retention"] == "SELECT core.prune_send_minutes()"
    acc = factories.account(db, with_templates=False)
    for read_at, created_at in [("now() - interval '40 days'", "now() - interval '41 days'"),
                                ("now() - interval '1 day'", "now() - interval '41 days'"),
                                ("NULL", "now() - interval '200 days'"), ("NULL", "now()")]:
        db.execute(f"INSERT INTO core.notifications (tenant_id, kind, message, read_at, created_at) "
                   f"VALUES (%s, 'test', 'x', {read_at}, {created_at})", (acc.tenant_id,))
    assert db.execute("SELECT core.prune_notifications()").fetchone()[0] == 2
    assert db.execute("SELECT count(*) FROM core.notifications").fetchone()[0] == 2
    db.execute("INSERT INTO core.send_minutes (number_id, minute) VALUES (%s, now() - interval '31 days'), "
               "(%s, date_trunc('minute', now()))", (acc.number_id, acc.number_id))
    assert db.execute("SELECT core.prune_send_minutes()").fetchone()[0] == 1
