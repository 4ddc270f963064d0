"""Meta's limits other than a number's throughput, as the send path meets them
synchronously (reference §2.3, §3): each waits for what it is about, and only 130429
slows a number's pace (test_sending.py).

- 80007 / 4: the WABA's / app's hourly call budget is spent; every number of the WABA /
  tenant waits as long as Meta's usage header says (an hour when it says nothing), the
  pace untouched, an operator told once an hour.
- 131057: the number is in maintenance (a throughput upgrade); it waits a minute.
- 131056: the pair rate; only that recipient waits, 4^n seconds, the number sends on.
- 131049: the per-user marketing cap; that recipient is tried a day later, up to
  core.settings.capped_retry_days times, then fails.
None of these spends one of the message's attempts.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests import factories as f
from tests.factories import later


def numbers(db: psycopg.Connection, *ids: int) -> list[dict]:
    with db.cursor(row_factory=dict_row) as cur:
        return [cur.execute("SELECT * FROM core.wa_numbers WHERE number_id = %s", (i,)).fetchone() for i in ids]


def visible_at(db: psycopg.Connection, cid: int, req: dict):
    (m,) = [m for m in f.queue(db, f.campaign_queue(db, cid)) if m["msg_id"] == req["msg_id"]]
    return m["vt"]


def with_regain(result: dict, seconds: int | None) -> dict:
    return {**result, "retry_after_s": seconds}


@pytest.mark.parametrize(("code", "held"), [(80007, {"same_waba"}), (4, {"same_waba", "other_waba"})],
                         ids=["80007-waba", "4-app"])
def test_an_account_call_limit_holds_its_numbers_for_the_regain_time_without_slowing_them(
        db: psycopg.Connection, code: int, held: set[str]) -> None:
    acc = f.account(db, throughput_mps=200)
    same_waba = f.another_number(db, acc, acc.waba_id, "19990001")
    other_waba = f.another_number(db, acc, "29990001", "19990002")
    stranger = f.account(db, throughput_mps=200)
    cid = f.running_campaign(db, acc, 20)
    t = f.clock(db)
    requests = f.claim_all(db, 10, now=t)
    before = {n["number_id"]: n["send_tat"] for n in numbers(db, same_waba, other_waba, stranger.number_id)}
    # Meta's X-Business-Use-Case-Usage said access comes back in 25 minutes.
    result = f.report(db, [with_regain(f.err(requests[0], code), 1500)] + [f.ok(r) for r in requests[2:]], now=t)
    assert (result["retried"], result["accepted"], result["failed"]) == (1, 8, 0)

    n, same, other, theirs = numbers(db, acc.number_id, same_waba, other_waba, stranger.number_id)
    assert n["send_tat"] == later(t, 1500) and n["rate_mps"] == 200 and n["throttled_at"] is None
    assert (same["send_tat"] == later(t, 1500)) == ("same_waba" in held)
    assert (other["send_tat"] == later(t, 1500)) == ("other_waba" in held)
    assert theirs["send_tat"] == before[stranger.number_id]       # another tenant's number never waits
    o = f.outbound(db, requests[0]["outbound_id"])
    assert (o["state"], o["attempts"], o["error_code"]) == ("queued", 0, code)
    assert visible_at(db, cid, requests[0]) == later(t, 1500)
    # Nothing more of the number is claimed meanwhile; then the rest is.
    assert f.claim(db, now=later(t, 10)) == []
    assert len(f.claim(db, now=later(t, 1500))) > 0
    (note,) = db.execute("SELECT kind, severity, details->>'error_code' FROM core.notifications").fetchall()
    assert note == ("send_error", "warning", str(code))

    # Without a usage header: an hour (core.meta_error_codes.backoff_s).
    f.report(db, [f.err(requests[1], code)], now=t)
    assert numbers(db, acc.number_id)[0]["send_tat"] == later(t, 3600)
    assert db.execute("SELECT count(*), max((details->>'messages')::int) FROM core.notifications").fetchone() == (1, 2)


def test_maintenance_mode_holds_the_number_a_minute(db: psycopg.Connection) -> None:
    acc = f.account(db, throughput_mps=200)
    cid = f.running_campaign(db, acc, 4)
    t = f.clock(db)
    requests = f.claim_all(db, now=t)
    f.report(db, [f.err(requests[0], 131057, 503)] + [f.ok(r) for r in requests[1:]], now=t)
    (n,) = numbers(db, acc.number_id)
    assert (n["send_tat"], n["rate_mps"]) == (later(t, 60), 200)
    assert visible_at(db, cid, requests[0]) == later(t, 60)
    assert f.outbound(db, requests[0]["outbound_id"])["attempts"] == 0


def test_the_pair_rate_defers_only_that_recipient_four_times_longer_each_time(db: psycopg.Connection) -> None:
    f.settings(db, max_attempts=2)
    acc = f.account(db, throughput_mps=200)
    cid = f.running_campaign(db, acc, 4)
    t = f.clock(db)
    requests = f.claim_all(db, now=t)
    (before,) = numbers(db, acc.number_id)
    result = f.report(db, [f.err(requests[0], 131056)] + [f.ok(r) for r in requests[1:]], now=t)
    assert result["retried"] == 1
    (n,) = numbers(db, acc.number_id)
    assert (n["send_tat"], n["rate_mps"], n["throttled_at"]) == (before["send_tat"], 200, None)
    waits = [visible_at(db, cid, requests[0]) - t]
    for _ in range(3):               # more tries than max_attempts: deferrals are not attempts
        t = later(t, 4000)
        (again,) = f.claim_all(db, now=t)
        f.report(db, [f.err(again, 131056)], now=t)
        waits.append(visible_at(db, cid, again) - t)
    assert [w.total_seconds() for w in waits] == [1, 4, 16, 64]
    o = f.outbound(db, requests[0]["outbound_id"])
    assert (o["state"], o["attempts"], o["deferrals"]) == ("queued", 0, 4)
    assert f.campaign(db, cid)["status"] == "running"


def test_the_marketing_cap_tries_a_recipient_again_a_day_later_then_fails(db: psycopg.Connection) -> None:
    f.settings(db, capped_retry_days=2)
    acc = f.account(db, throughput_mps=200)
    cid = f.running_campaign(db, acc, 3)
    t = f.clock(db)
    first, *others = f.claim_all(db, now=t)
    f.report(db, [f.err(first, 131049)] + [f.ok(r) for r in others], now=t)
    assert visible_at(db, cid, first) == later(t, 86400)
    assert f.campaign(db, cid)["retrying"] == 1
    assert f.claim_all(db, now=later(t, 86399)) == []       # the rest of the campaign went on
    for day in (1, 2):
        t = later(t, 86400)
        (again,) = f.claim_all(db, now=t)
        result = f.report(db, [f.err(again, 131049)], now=t)
    assert result["failed"] == 1
    o = f.outbound(db, first["outbound_id"])
    assert (o["state"], o["error_code"], o["deferrals"]) == ("failed", 131049, 2)
    assert f.campaign(db, cid)["status"] == "completed"


def test_a_user_who_stopped_marketing_gets_no_more_marketing_templates_but_still_utility_ones(
        db: psycopg.Connection) -> None:
    acc = f.account(db, throughput_mps=200)
    db.execute("UPDATE core.templates SET category = CASE name WHEN 'promo' THEN 'MARKETING' ELSE 'UTILITY' END "
               "WHERE tenant_id = %s", (acc.tenant_id,))
    rows = [{"phone": p, "name": "Ann", "order_no": "A1", "shop": "ACME"} for p in f.phones(2)]
    first = f.create_campaign(db, acc, rows, [f.promo()], start=True)["campaign_id"]
    t = f.clock(db)
    capped, other = f.claim_all(db, now=t)
    # The answer to one of them says the user stopped marketing from this business.
    assert f.report(db, [f.err(capped, 131050), f.ok(other)], now=t)["failed"] == 1
    stopped = db.execute("SELECT wa_id FROM core.contacts WHERE tenant_id = %s AND marketing_stopped_at = %s",
                         (acc.tenant_id, t)).fetchall()
    assert stopped == [(capped["body"]["to"],)]

    # A later marketing campaign skips that contact when it is claimed; a utility one does not.
    promo = f.create_campaign(db, acc, rows, [f.promo()], start=True)["campaign_id"]
    utility = f.create_campaign(db, acc, rows, [f.order_update()], start=True)["campaign_id"]
    sent = f.claim_all(db, now=later(t, 1))
    to = {(r["queue_name"], r["body"]["to"]) for r in sent}
    assert to == {(f.campaign_queue(db, promo), other["body"]["to"]),
                  (f.campaign_queue(db, utility), capped["body"]["to"]),
                  (f.campaign_queue(db, utility), other["body"]["to"])}
    c = f.campaign(db, promo)
    assert (c["cancelled"], c["total"]) == (1, 2)
    assert f.campaign(db, first)["failed"] == 1


def test_a_message_withheld_by_the_marketing_cap_after_acceptance_is_tried_again_a_day_later(
        db: psycopg.Connection) -> None:
    from tests.test_webhooks_payloads import status, statuses_payload

    acc = f.account(db)

    def deliver(*items: dict) -> None:
        db.execute("SELECT api.ingest_webhooks(%s::jsonb[])",
                   ([Jsonb(statuses_payload(*items, phone_number_id=acc.phone_number_id))],))
        while db.execute("SELECT payloads FROM api.process_webhooks(100)").fetchone()[0]:
            pass

    f.settings(db, capped_retry_days=1)
    rows = [{"phone": p, "name": n, "order_no": o, "shop": "ACME"}
            for p, n, o in zip(f.phones(2), ("Ann", "Bo"), ("A1", "B2"))]
    cid = f.create_campaign(db, acc, rows, start=True)["campaign_id"]
    t = f.clock(db)
    capped, other = f.claim_all(db, now=t)
    f.report(db, [f.ok(capped), f.ok(other)], now=t)
    assert f.campaign(db, cid)["status"] == "completed"

    # Meta accepted it, then withheld it: a failed status with 131049.
    deliver(status(f"wamid.{capped['outbound_id']}", "failed", error_code=131049))
    o = f.outbound(db, capped["outbound_id"])
    assert (o["state"], o["wamid"], o["deferrals"], o["error_code"]) == ("queued", None, 1, 131049)
    c = f.campaign(db, cid)
    assert (c["status"], c["sent"], c["failed"], c["finished"]) == ("running", 1, 0, 1)
    with db.cursor(row_factory=dict_row) as cur:
        assert cur.execute("SELECT retrying FROM api.campaign_stats(%s, %s)",
                           (acc.tenant_id, cid)).fetchone()["retrying"] == 1
    # A day later it is sent again, as first rendered; this time it fails for good.
    assert f.claim_all(db, now=later(f.clock(db), 86000)) == []
    (again,) = f.claim_all(db, now=later(f.clock(db), 86401))
    assert again["body"] == capped["body"] and again["outbound_id"] == capped["outbound_id"]
    assert f.campaign(db, cid)["retrying"] == 0           # tried again: no longer waiting
    f.report(db, [f.ok(again, wamid="wamid.second")], now=later(t, 86401))
    deliver(status("wamid.second", "failed", error_code=131049))
    o = f.outbound(db, capped["outbound_id"])
    assert (o["state"], o["error_code"]) == ("failed", 131049)
    c = f.campaign(db, cid)
    assert (c["status"], c["sent"], c["failed"]) == ("completed", 2, 1)
    drift = db.execute("SELECT scope, key, counter, drift FROM api.reconcile_campaign(%s, %s) WHERE drift <> 0",
                       (acc.tenant_id, cid)).fetchall()
    assert drift == []            # every counter the deferral moved back agrees with a recount
