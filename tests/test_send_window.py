"""Send windows: a campaign sends only in hours of each recipient's local day, the zone
from the contact, else the phone's prefix, else the tenant; and schedules written in the
tenant's time zone. Every time is a parameter (p_now), never the clock."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import psycopg
import pytest

from tests import factories

# 15:00 UTC on a winter day: 10:00 in New York, 07:00 in Los Angeles, 12:00 in São Paulo.
NOON_NY = datetime(2027, 1, 12, 15, 0, tzinfo=UTC)
NY, LA = "12125550100", "14155550100"


@pytest.mark.parametrize(("phone", "zone"), [
    ("12125550100", "America/New_York"), ("14155550100", "America/Los_Angeles"),
    ("5511987654321", "America/Sao_Paulo"), ("447700900123", "Europe/London"),
    ("4915123456789", "Europe/Berlin"), ("79161234567", "Europe/Moscow"),
])
def test_a_phone_takes_the_zone_of_its_longest_prefix(db: psycopg.Connection, phone: str, zone: str) -> None:
    assert db.execute("SELECT core.phone_zone(%s)", (phone,)).fetchone()[0] == zone


def test_every_prefix_names_a_zone_postgresql_knows(db: psycopg.Connection) -> None:
    total, unknown = db.execute("""
        SELECT count(*), count(*) FILTER (WHERE time_zone NOT IN (SELECT name FROM pg_timezone_names))
        FROM core.phone_zones""").fetchone()
    assert total > 3000 and unknown == 0


@pytest.mark.parametrize(("local", "start", "end", "opens"), [
    ("10:00", "09:00", "20:00", None),                   # open
    ("07:00", "09:00", "20:00", "2027-01-12 09:00"),     # later today
    ("21:00", "09:00", "20:00", "2027-01-13 09:00"),     # tomorrow
    ("23:00", "22:00", "06:00", None),                   # past midnight: open
    ("03:00", "22:00", "06:00", None),
    ("12:00", "22:00", "06:00", "2027-01-12 22:00"),
])
def test_when_a_window_opens(db: psycopg.Connection, local: str, start: str, end: str, opens: str | None) -> None:
    got = db.execute("""
        SELECT core.window_opens_at(('2027-01-12 ' || %s)::timestamp AT TIME ZONE 'Europe/Lisbon',
                                    'Europe/Lisbon', %s::time, %s::time) AT TIME ZONE 'Europe/Lisbon'""",
                     (local, start, end)).fetchone()[0]
    assert got == (datetime.fromisoformat(opens) if opens else None)


def window_campaign(db: psycopg.Connection, acc: factories.Account, phones: list[str],
                    start: str = "09:00", end: str = "20:00") -> int:
    rows = [{"phone": p, "name": f"N{i}", "order_no": f"A-{i}"} for i, p in enumerate(phones)]
    campaign_id = factories.running_campaign(db, acc, rows)
    db.execute("SELECT api.set_campaign_send_window(%s, %s, %s, %s)", (acc.tenant_id, campaign_id, start, end))
    return campaign_id


def recipients(reqs: list[dict]) -> list[str]:
    return sorted(r["body"]["to"] for r in reqs)


def test_a_recipient_outside_the_window_waits_for_it_and_the_rest_go(db: psycopg.Connection) -> None:
    acc = factories.account(db)
    window_campaign(db, acc, [NY, LA])
    assert recipients(factories.claim_all(db, now=NOON_NY)) == [NY]

    held = db.execute("""SELECT o.state, o.attempts FROM core.outbound_messages o
                         JOIN core.contacts c USING (contact_id) WHERE c.wa_id = %s""", (LA,)).fetchone()
    assert held == ("queued", 0)
    la_opens = datetime(2027, 1, 12, 17, 0, tzinfo=UTC)          # 09:00 in Los Angeles
    assert factories.claim_all(db, now=la_opens - timedelta(seconds=1)) == []
    assert recipients(factories.claim_all(db, now=la_opens)) == [LA]


def test_the_contacts_own_zone_wins(db: psycopg.Connection) -> None:
    acc = factories.account(db)
    window_campaign(db, acc, [NY, LA])
    la = db.execute("SELECT contact_id FROM core.contacts WHERE wa_id = %s", (LA,)).fetchone()[0]
    zone = db.execute("SELECT api.set_contact_time_zone(%s, %s, 'America/New_York')", (acc.tenant_id, la)).fetchone()[0]
    assert zone == "America/New_York"
    assert recipients(factories.claim_all(db, now=NOON_NY)) == [NY, LA]


def test_a_window_past_midnight(db: psycopg.Connection) -> None:
    acc = factories.account(db)
    window_campaign(db, acc, [NY], start="22:00", end="02:00")
    assert factories.claim_all(db, now=NOON_NY) == []
    assert recipients(factories.claim_all(db, now=datetime(2027, 1, 13, 3, 0, tzinfo=UTC))) == [NY]   # 22:00 NY


def test_lifting_the_window_sends_at_once_from_the_next_claim(db: psycopg.Connection) -> None:
    acc = factories.account(db)
    campaign_id = window_campaign(db, acc, [NY, LA])
    factories.claim_all(db, now=NOON_NY)
    row = db.execute("SELECT * FROM api.set_campaign_send_window(%s, %s, NULL, NULL)",
                     (acc.tenant_id, campaign_id)).fetchone()
    assert row == (campaign_id, None, None)
    # LA's message waits out the vt it was given; a new campaign's recipients do not wait.
    factories.running_campaign(db, acc, [{"phone": "14155550111", "name": "X", "order_no": "B-1"}])
    assert recipients(factories.claim_all(db, now=NOON_NY + timedelta(seconds=1))) == ["14155550111"]


def test_bad_windows_and_zones_are_refused_naming_them(db: psycopg.Connection) -> None:
    acc = factories.account(db)
    campaign_id = factories.create_campaign(db, acc, 1)["campaign_id"]
    for start, end in (("09:00", None), ("09:00", "09:00")):
        with pytest.raises(psycopg.Error) as bad:
            db.execute("SELECT api.set_campaign_send_window(%s, %s, %s, %s)", (acc.tenant_id, campaign_id, start, end))
        assert bad.value.sqlstate == "PW100" and "start and an end" in str(bad.value)
    contact = db.execute("SELECT contact_id FROM core.contacts WHERE tenant_id = %s", (acc.tenant_id,)).fetchone()[0]
    with pytest.raises(psycopg.Error) as bad:
        db.execute("SELECT api.set_contact_time_zone(%s, %s, 'Mars/Olympus')", (acc.tenant_id, contact))
    assert bad.value.sqlstate == "PW100" and "Mars/Olympus" in str(bad.value)
    assert db.execute("SELECT time_zone FROM core.contacts WHERE contact_id = %s", (contact,)).fetchone()[0] is None


def test_another_tenant_cannot_touch_the_window_or_the_contact(db: psycopg.Connection) -> None:
    mine, theirs = factories.account(db), factories.account(db)
    campaign_id = factories.create_campaign(db, mine, 1)["campaign_id"]
    contact = db.execute("SELECT contact_id FROM core.contacts WHERE tenant_id = %s", (mine.tenant_id,)).fetchone()[0]
    for sql, args, code in (
            ("SELECT api.set_campaign_send_window(%s, %s, '09:00', '17:00')", (theirs.tenant_id, campaign_id), "PW201"),
            ("SELECT api.set_contact_time_zone(%s, %s, 'UTC')", (theirs.tenant_id, contact), "PW204")):
        with pytest.raises(psycopg.Error) as refused:
            db.execute(sql, args)
        assert refused.value.sqlstate == code
    assert db.execute("SELECT send_window_start FROM core.campaigns WHERE campaign_id = %s",
                      (campaign_id,)).fetchone()[0] is None


def test_schedules_are_written_in_the_tenants_time_zone(db: psycopg.Connection) -> None:
    acc = factories.account(db)
    assert db.execute("SELECT api.tenant_local_time(%s, '2027-01-12 09:00')", (acc.tenant_id,)).fetchone()[0] == \
        datetime(2027, 1, 12, 9, 0, tzinfo=UTC)
    db.execute("SELECT api.set_tenant_time_zone(%s, 'America/Sao_Paulo')", (acc.tenant_id,))
    assert db.execute("SELECT api.tenant_local_time(%s, '2027-01-12 09:00')", (acc.tenant_id,)).fetchone()[0] == \
        datetime(2027, 1, 12, 12, 0, tzinfo=UTC)
    # A recipient of unknown zone (no phone prefix known) takes the tenant's.
    assert db.execute("SELECT core.window_opens_at(%s, 'America/Sao_Paulo', %s, %s)",
                      (NOON_NY, time(9), time(20))).fetchone()[0] is None
