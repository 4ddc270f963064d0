"""Meta's messaging limit, kept in SQL (reference §3.3): a business portfolio starts
conversations with at most its tier's number of unique users in any moving 24 hours,
shared by its WABAs and numbers. api.claim_sends never starts a new user beyond it; the
rest wait in their queues, visible in the campaign's stats, and go when the window rolls
or the tier grows.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from psycopg.rows import dict_row

from tests import factories as f
from tests.factories import later


def set_limit(db: psycopg.Connection, acc: f.Account, tier: str | None, business_id: str | None = None,
              number_id: int | None = None) -> dict:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM api.set_messaging_limit(%s, %s, %s, %s)",
                           (acc.tenant_id, number_id or acc.number_id, tier, business_id)).fetchone()


def portfolios(db: psycopg.Connection, acc: f.Account, now=None) -> list[dict]:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM api.portfolios(%s, %s)", (acc.tenant_id, now)).fetchall()


def stats(db: psycopg.Connection, acc: f.Account, cid: int) -> dict:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM api.campaign_stats(%s, %s)", (acc.tenant_id, cid)).fetchone()


def recipients(requests: list[dict]) -> set[str]:
    return {r["body"]["to"] for r in requests}


def test_a_campaign_never_starts_more_new_users_than_the_tier_and_resumes_as_the_window_rolls(
        db: psycopg.Connection) -> None:
    acc = f.account(db)
    assert set_limit(db, acc, "TIER_50")["messaging_limit"] == 50
    created = f.create_campaign(db, acc, 80, start=True)
    assert created["days_at_limit"] == 2
    cid = created["campaign_id"]
    t = f.clock(db)
    first = f.claim_all(db, now=t)
    assert len(first) == 50
    f.report(db, [f.ok(r) for r in first], now=t)
    (p,) = portfolios(db, acc, now=t)
    assert (p["used_24h"], p["budget_wait_until"]) == (50, t.replace(second=0, microsecond=0) + timedelta(days=1, minutes=1))
    s = stats(db, acc, cid)
    assert (s["waiting_for"], s["resumes_at"], s["messaging_limit"], s["days_at_limit"]) == \
        ("messaging_limit", p["budget_wait_until"], 50, 1)
    # Nothing more in the 24 hours; then the other 30.
    assert f.claim_all(db, now=later(t, 86000)) == []
    rest = f.claim_all(db, now=p["budget_wait_until"])
    assert len(rest) == 30 and not recipients(rest) & recipients(first)
    f.report(db, [f.ok(r) for r in rest], now=p["budget_wait_until"])
    assert f.campaign(db, cid)["status"] == "completed"
    assert portfolios(db, acc, now=p["budget_wait_until"])[0]["used_24h"] == 30


def test_users_messaged_in_the_last_24_hours_are_not_new_and_replies_are_never_limited(
        db: psycopg.Connection) -> None:
    acc = f.account(db)
    set_limit(db, acc, "TIER_50")
    f.create_campaign(db, acc, 50, start=True)
    t = f.clock(db)
    f.report(db, [f.ok(r) for r in f.claim_all(db, now=t)], now=t)
    # The budget is spent, but the same 50 users again (another template) are not new.
    again = f.create_campaign(db, acc, 50, templates=[f.promo()], start=True)["campaign_id"]
    second = f.claim_all(db, now=later(t, 3600))
    assert len(second) == 50 and {r["queue_name"] for r in second} == {f.campaign_queue(db, again)}
    assert portfolios(db, acc, now=later(t, 3600))[0]["used_24h"] == 50
    # Moved to their latest message: still counted a day after the first one.
    assert portfolios(db, acc, now=later(t, 86400 + 120))[0]["used_24h"] == 50


def test_numbers_of_one_portfolio_share_the_limit_and_other_portfolios_keep_theirs(db: psycopg.Connection) -> None:
    acc = f.account(db)
    sibling = f.another_number(db, acc, acc.waba_id, "19990011")          # same WABA: same portfolio
    elsewhere = f.another_number(db, acc, "29990011", "19990012")         # its own WABA, for now
    stranger = f.account(db)
    set_limit(db, acc, "TIER_50")
    assert set_limit(db, acc, None, number_id=elsewhere)["messaging_limit"] is None
    f.create_campaign(db, acc, 40, start=True)
    f.create_campaign(db, f.Account(acc.tenant_id, sibling, "19990011", acc.waba_id, acc.access_token),
                      [{"phone": p, "name": "x", "order_no": "1", "shop": "y"} for p in f.phones(40, 1000)],
                      start=True)
    f.create_campaign(db, stranger, 40, start=True)
    t = f.clock(db)
    claimed = f.claim_all(db, now=t)
    by_number = {}
    for r in claimed:
        by_number[r["phone_number_id"]] = by_number.get(r["phone_number_id"], 0) + 1
    assert by_number[acc.phone_number_id] + by_number["19990011"] == 50
    assert by_number[stranger.phone_number_id] == 40
    # Meta says the two WABAs are one business: they share one limit from now on.
    merged = set_limit(db, acc, "TIER_250", business_id="777000111", number_id=elsewhere)
    assert merged["number_ids"] == [elsewhere]
    merged = set_limit(db, acc, "TIER_250", business_id="777000111")
    assert merged["number_ids"] == sorted([acc.number_id, sibling, elsewhere])
    with pytest.raises(psycopg.Error) as bad:
        set_limit(db, acc, "TIER_3K")
    assert (bad.value.diag.sqlstate, bad.value.diag.column_name) == ("PW100", "tier")
    with pytest.raises(psycopg.Error) as theirs:          # another tenant's number
        set_limit(db, stranger, "TIER_2K", number_id=acc.number_id)
    assert theirs.value.diag.sqlstate == "PW202"
    assert portfolios(db, stranger)[0]["tier"] is None


def test_a_higher_tier_releases_the_waiting_messages_at_once(db: psycopg.Connection) -> None:
    acc = f.account(db)
    set_limit(db, acc, "TIER_50")
    cid = f.create_campaign(db, acc, 80, start=True)["campaign_id"]
    t = f.clock(db)
    f.report(db, [f.ok(r) for r in f.claim_all(db, now=t)], now=t)
    set_limit(db, acc, "TIER_250")
    rest = f.claim_all(db)
    assert len(rest) == 30
    assert stats(db, acc, cid)["waiting_for"] is None
