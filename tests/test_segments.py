"""Segments, campaigns from segments, retargeting and the per-recipient report, through the
api functions against a real PostgreSQL."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
from psycopg.rows import dict_row

from tests import factories as f

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def raises(db: psycopg.Connection, sqlstate: str, query: str, params: tuple = ()) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as caught:
        db.execute(query, params)
    assert caught.value.diag.sqlstate == sqlstate, caught.value
    return caught.value


def j(value: object) -> str:
    return orjson.dumps(value).decode()


def add_contacts(db: psycopg.Connection, acc: f.Account, rows: list[dict]) -> dict[str, int]:
    """Import rows (phone, name, attributes...) and return contact ids by phone."""
    f.stage(db, rows)
    db.execute("SELECT * FROM api.import_contacts(%s)", (acc.tenant_id,))
    return dict(db.execute("SELECT wa_id, contact_id FROM core.contacts WHERE tenant_id = %s", (acc.tenant_id,)).fetchall())


def count(db: psycopg.Connection, acc: f.Account, flt: object, now: datetime = NOW) -> int:
    return db.execute("SELECT api.segment_count(%s, p_filter => %s::jsonb, p_now => %s)",
                      (acc.tenant_id, j(flt), now)).fetchone()[0]


@pytest.fixture
def shop(db: psycopg.Connection) -> tuple[f.Account, dict[str, int]]:
    """A tenant with typed fields and five contacts with tags and values."""
    acc = f.account(db)
    for name, kind in (("city", "text"), ("points", "number"), ("birthday", "date"), ("member", "boolean")):
        db.execute("SELECT api.define_contact_field(%s, %s, %s)", (acc.tenant_id, name, kind))
    ids = add_contacts(db, acc, [{"phone": p, "name": f"N{i}"} for i, p in enumerate(f.phones(5))])
    p = f.phones(5)
    values = [("Paris", 10, "1990-01-15", True, ["vip", "news"]),
              ("paris", 200, "1985-06-01", False, ["news"]),
              ("Lyon", 55.5, "2000-12-31", True, []),
              ("Nice", None, None, None, ["vip"]),
              (None, 0, "1970-01-01", False, [])]
    for phone, (city, points, birthday, member, tags) in zip(p, values):
        fields = {k: v for k, v in (("city", city), ("points", points), ("birthday", birthday), ("member", member))
                  if v is not None}
        db.execute("SELECT api.update_contact(%s, %s, p_fields => %s::jsonb, p_add_tags => %s)",
                   (acc.tenant_id, ids[phone], j(fields), tags or None))
    return acc, ids


# -- the grammar ------------------------------------------------------------------------

def test_conditions_on_tags_fields_and_opt_out_count_the_right_contacts(db, shop) -> None:
    acc, _ = shop
    assert count(db, acc, {"tag": "vip"}) == 2
    assert count(db, acc, {"all": [{"tag": "vip"}, {"tag": "news"}]}) == 1
    assert count(db, acc, {"any": [{"tag": "vip"}, {"tag": "news"}]}) == 3
    assert count(db, acc, {"not": {"tag": "vip"}}) == 3
    assert count(db, acc, {"field": "city", "op": "eq", "value": "Paris"}) == 1
    assert count(db, acc, {"field": "city", "op": "contains", "value": "ARI"}) == 2
    assert count(db, acc, {"field": "city", "op": "ne", "value": "Paris"}) == 4   # no city counts as not Paris
    assert count(db, acc, {"field": "city", "op": "exists", "value": False}) == 1
    assert count(db, acc, {"field": "points", "op": "gt", "value": 10}) == 2
    assert count(db, acc, {"field": "points", "op": "lte", "value": "10"}) == 2
    assert count(db, acc, {"field": "birthday", "op": "lt", "value": "1990-01-01"}) == 2
    assert count(db, acc, {"field": "member", "op": "eq", "value": True}) == 2
    assert count(db, acc, {"opted_out": False}) == 5
    db.execute("SELECT api.set_contact_opt_out(%s, true, p_phone => %s)", (acc.tenant_id, f.phones(1)[0]))
    assert count(db, acc, {"all": [{"tag": "vip"}, {"opted_out": False}]}) == 1


def test_last_inbound_conditions_use_the_time_given(db, shop) -> None:
    acc, ids = shop
    p = f.phones(5)
    db.execute("UPDATE core.contacts SET last_inbound_at = %s WHERE contact_id = %s", (NOW - timedelta(days=2), ids[p[0]]))
    db.execute("UPDATE core.contacts SET last_inbound_at = %s WHERE contact_id = %s", (NOW - timedelta(days=20), ids[p[1]]))
    assert count(db, acc, {"last_inbound_at": {"within": "7 days"}}) == 1
    assert count(db, acc, {"last_inbound_at": {"within": "7 days"}}, NOW + timedelta(days=6)) == 0
    assert count(db, acc, {"last_inbound_at": {"before": (NOW - timedelta(days=7)).isoformat()}}) == 1
    assert count(db, acc, {"last_inbound_at": {"exists": False}}) == 3


@pytest.mark.parametrize(("flt", "path"), [
    ({"all": [{"tag": "vip"}, {"field": "points", "op": "contains", "value": 1}]}, "filter.all[1].op"),
    ({"any": [{"tag": "vip"}, {"all": [{"field": "points", "op": "gt", "value": "many"}]}]}, "filter.any[1].all[0].value"),
    ({"not": {"colour": "red"}}, "filter.not"),
    ({"all": []}, "filter.all"),
    ({"tag": "vip", "field": "city"}, "filter"),
    ({"last_inbound_at": {"within": "forever"}}, "filter.last_inbound_at.within"),
    ({"field": "birthday", "op": "eq", "value": "2026-02-30"}, "filter.value"),
    ({"campaign": 1, "event": "opened"}, "filter.event"),
])
def test_a_filter_outside_the_grammar_is_refused_naming_the_condition(db, shop, flt, path) -> None:
    acc, _ = shop
    if "campaign" in flt:
        flt = {**flt, "campaign": f.create_campaign(db, acc, 1)["campaign_id"]}
    error = raises(db, "PW132", "SELECT api.segment_count(%s, p_filter => %s::jsonb)", (acc.tenant_id, j(flt)))
    assert path in error.diag.message_primary


def test_an_undefined_field_is_named(db, shop) -> None:
    acc, _ = shop
    error = raises(db, "PW233", "SELECT api.segment_count(%s, p_filter => %s::jsonb)",
                   (acc.tenant_id, j({"all": [{"field": "colour", "op": "eq", "value": "red"}]})))
    assert "filter.all[0].field" in error.diag.message_primary and "colour" in error.diag.message_primary


def test_hostile_field_names_and_values_are_only_data(db, shop) -> None:
    acc, ids = shop
    hostile = "x'); DELETE FROM core.contacts; --"
    db.execute("SELECT api.update_contact(%s, %s, p_fields => %s::jsonb, p_add_tags => %s)",
               (acc.tenant_id, ids[f.phones(1)[0]], j({"city": hostile}), [hostile, "$1[1]"]))
    assert count(db, acc, {"field": "city", "op": "eq", "value": hostile}) == 1
    assert count(db, acc, {"tag": hostile}) == 1
    assert count(db, acc, {"tag": "$1[1]"}) == 1
    assert count(db, acc, {"field": "city", "op": "contains", "value": "'; DROP TABLE core.contacts; --"}) == 0
    # A field name is checked against the definitions: never spliced in.
    raises(db, "PW233", "SELECT api.segment_count(%s, p_filter => %s::jsonb)",
           (acc.tenant_id, j({"field": "city' OR true --", "op": "exists"})))
    compiled = db.execute("SELECT (core.compile_segment(%s, %s::jsonb)).sql",
                          (acc.tenant_id, j({"all": [{"tag": hostile}, {"field": "city", "op": "eq", "value": hostile}]}))
                          ).fetchone()[0]
    assert hostile not in compiled and "city" not in compiled and "DELETE" not in compiled
    assert db.execute("SELECT count(*) FROM core.contacts").fetchone()[0] == 5


# -- saved segments, isolation ------------------------------------------------------------

def test_saved_segments_are_listed_counted_replaced_and_deleted(db, shop) -> None:
    acc, _ = shop
    seg = db.execute("SELECT segment_id FROM api.save_segment(%s, 'vips', %s::jsonb)",
                     (acc.tenant_id, j({"tag": "vip"}))).fetchone()[0]
    assert db.execute("SELECT api.segment_count(%s, %s)", (acc.tenant_id, seg)).fetchone()[0] == 2
    raises(db, "PW302", "SELECT api.save_segment(%s, 'vips', %s::jsonb)", (acc.tenant_id, j({"tag": "news"})))
    db.execute("SELECT api.save_segment(%s, 'vips', %s::jsonb, %s)", (acc.tenant_id, j({"tag": "news"}), seg))
    assert db.execute("SELECT api.segment_count(%s, %s)", (acc.tenant_id, seg)).fetchone()[0] == 2
    assert [r[0] for r in db.execute("SELECT name FROM api.segments(%s)", (acc.tenant_id,))] == ["vips"]
    raises(db, "PW132", "SELECT api.save_segment(%s, 'bad', %s::jsonb)", (acc.tenant_id, j({"tag": 3})))
    db.execute("SELECT api.delete_segment(%s, %s)", (acc.tenant_id, seg))
    raises(db, "PW232", "SELECT api.segment_count(%s, %s)", (acc.tenant_id, seg))
    raises(db, "PW100", "SELECT api.segment_count(%s)", (acc.tenant_id,))


def test_another_tenant_cannot_see_count_change_or_use_a_segment_or_campaign(db, shop) -> None:
    acc, _ = shop
    other = f.account(db)
    seg = db.execute("SELECT segment_id FROM api.save_segment(%s, 'vips', %s::jsonb)",
                     (acc.tenant_id, j({"tag": "vip"}))).fetchone()[0]
    campaign = f.create_campaign(db, acc, 2)["campaign_id"]
    assert db.execute("SELECT count(*) FROM api.segments(%s)", (other.tenant_id,)).fetchone()[0] == 0
    raises(db, "PW232", "SELECT api.segment_count(%s, %s)", (other.tenant_id, seg))
    raises(db, "PW232", "SELECT api.save_segment(%s, 'x', '{\"tag\": \"a\"}', %s)", (other.tenant_id, seg))
    raises(db, "PW232", "SELECT api.delete_segment(%s, %s)", (other.tenant_id, seg))
    raises(db, "PW232", "SELECT api.create_campaign_from_segment(%s, %s, 'x', %s::jsonb, p_segment_id => %s)",
           (other.tenant_id, other.number_id, j([f.promo()]), seg))
    # Tenant B's filter over A's tags sees only B's contacts; A's campaign is not found.
    assert db.execute("SELECT api.segment_count(%s, p_tags => '{vip}')", (other.tenant_id,)).fetchone()[0] == 0
    raises(db, "PW201", "SELECT api.segment_count(%s, p_filter => %s::jsonb)",
           (other.tenant_id, j({"campaign": campaign, "event": "messaged"})))
    raises(db, "PW201", "SELECT api.retarget_campaign(%s, %s, 'failed')", (other.tenant_id, campaign))
    raises(db, "PW201", "SELECT api.open_campaign_recipients(%s, %s)", (other.tenant_id, campaign))
    # Nor can A send from B's number.
    raises(db, "PW202", "SELECT api.create_campaign_from_segment(%s, %s, 'x', %s::jsonb, p_segment_id => %s)",
           (acc.tenant_id, other.number_id, j([f.promo()]), seg))
    assert db.execute("SELECT count(*) FROM core.segments").fetchone()[0] == 1


# -- campaigns from segments --------------------------------------------------------------

def from_segment(db: psycopg.Connection, acc: f.Account, **source: object) -> dict:
    args = {k: j(v) if k == "filter" else v for k, v in source.items()}
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM api.create_campaign_from_segment(%(t)s, %(n)s, 'from segment', %(tpl)s::jsonb,"
            " p_segment_id => %(segment_id)s, p_filter => %(filter)s::jsonb, p_tags => %(tags)s)",
            {"t": acc.tenant_id, "n": acc.number_id, "tpl": j(source.get("templates", [f.promo()])),
             "segment_id": args.get("segment_id"), "filter": args.get("filter"), "tags": args.get("tags")}).fetchone()


def recipients(db: psycopg.Connection, campaign_id: int) -> set[str]:
    return {r[0] for r in db.execute("SELECT c.wa_id FROM core.outbound_messages o JOIN core.contacts c USING (contact_id)"
                                     " WHERE o.campaign_id = %s", (campaign_id,))}


def test_a_campaign_from_a_segment_snapshots_its_contacts_and_maps_fields(db, shop) -> None:
    acc, _ = shop
    p = f.phones(5)
    seg = db.execute("SELECT segment_id FROM api.save_segment(%s, 'vips', %s::jsonb)",
                     (acc.tenant_id, j({"tag": "vip"}))).fetchone()[0]
    db.execute("SELECT api.set_contact_opt_out(%s, true, p_phone => %s)", (acc.tenant_id, p[3]))
    created = from_segment(db, acc, segment_id=seg, templates=[
        {"name": "order_update", "language": "en_US", "params": [{"column": "name"}, {"column": "city"}, {"value": "ACME"}]}])
    assert (created["total"], created["skipped_opted_out"]) == (1, 1)
    assert recipients(db, created["campaign_id"]) == {p[0]}
    message = f.queue(db, f.campaign_queue(db, created["campaign_id"]))[0]["message"]
    assert {"N0", "Paris"} <= set(message["p"])   # the per-row values (constants are folded in)
    # A contact tagged afterwards is not in the campaign made before.
    later = add_contacts(db, acc, [{"phone": f.phones(1, 100)[0], "name": "late"}])
    db.execute("SELECT api.tag_contacts(%s, %s, '{vip}')", (acc.tenant_id, [later[f.phones(1, 100)[0]]]))
    assert db.execute("SELECT api.segment_count(%s, %s)", (acc.tenant_id, seg)).fetchone()[0] == 3
    assert f.campaign(db, created["campaign_id"])["total"] == 1
    assert recipients(db, created["campaign_id"]) == {p[0]}


def test_tags_and_inline_filters_are_audiences_too(db, shop) -> None:
    acc, _ = shop
    p = f.phones(5)
    assert recipients(db, from_segment(db, acc, tags=["news", "vip"])["campaign_id"]) == {p[0], p[1], p[3]}
    flt = {"field": "points", "op": "gte", "value": 55}
    assert recipients(db, from_segment(db, acc, filter=flt)["campaign_id"]) == {p[1], p[2]}


def test_a_failed_campaign_from_a_segment_leaves_nothing_behind(db, shop) -> None:
    acc, _ = shop
    before = db.execute("SELECT (SELECT count(*) FROM core.campaigns), (SELECT count(*) FROM core.outbound_messages),"
                        " (SELECT count(*) FROM pgmq.meta)").fetchone()
    with pytest.raises(psycopg.Error) as caught:
        from_segment(db, acc, tags=["vip"], templates=[{"name": "nope", "language": "en_US"}])
    assert caught.value.diag.sqlstate == "PW102"
    with pytest.raises(psycopg.Error) as caught:
        from_segment(db, acc, tags=["nobody-has-this"])
    assert caught.value.diag.sqlstate == "PW101"
    after = db.execute("SELECT (SELECT count(*) FROM core.campaigns), (SELECT count(*) FROM core.outbound_messages),"
                       " (SELECT count(*) FROM pgmq.meta)").fetchone()
    assert after == before


# -- retargeting ----------------------------------------------------------------------------

def settle(db: psycopg.Connection, campaign_id: int, states: dict[str, dict]) -> None:
    """Give each recipient (by phone) its outcome, as the send path and webhooks would."""
    for phone, cols in states.items():
        sets = ", ".join(f"{k} = %({k})s" for k in cols)
        db.execute(f"UPDATE core.outbound_messages o SET {sets} FROM core.contacts c"
                   " WHERE c.contact_id = o.contact_id AND c.wa_id = %(phone)s AND o.campaign_id = %(cid)s",
                   {**cols, "phone": phone, "cid": campaign_id})


def test_retargeting_picks_exactly_the_recipients_asked_for(db) -> None:
    acc = f.account(db)
    p = f.phones(6)
    ids = add_contacts(db, acc, f.contacts(6))
    db.execute("SELECT api.tag_contacts(%s, %s, '{customers}')", (acc.tenant_id, list(ids.values())))
    campaign = from_segment(db, acc, tags=["customers"], templates=[f.order_update()])["campaign_id"]
    t = NOW
    settle(db, campaign, {
        p[0]: {"state": "read", "delivered_at": t, "read_at": t, "replied_at": t},
        p[1]: {"state": "read", "read_at": t},                       # read without a delivered status
        p[2]: {"state": "delivered", "delivered_at": t},
        p[3]: {"state": "sent", "sent_at": t},
        p[4]: {"state": "failed", "failed_at": t, "error_code": 131026},
        # p[5] is still queued: never picked.
    })
    expect = {"failed": {p[4]}, "not_delivered": {p[3], p[4]}, "not_read": {p[2], p[3], p[4]},
              "not_replied": {p[1], p[2], p[3], p[4]}}
    for who, phones in expect.items():
        created = db.execute("SELECT campaign_id, status FROM api.retarget_campaign(%s, %s, %s)",
                             (acc.tenant_id, campaign, who)).fetchone()
        assert recipients(db, created[0]) == phones, who
        assert created[1] == "draft"
    # The same templates and mapping: the new campaign renders the same parameters.
    last = db.execute("SELECT max(campaign_id) FROM core.campaigns").fetchone()[0]
    assert db.execute("""SELECT jsonb_build_object('name', t.name, 'language', t.language) || ct.mapping
                         FROM core.campaign_templates ct JOIN core.templates t USING (template_id)
                         WHERE ct.campaign_id = %s""", (last,)).fetchone()[0] == f.order_update()
    name = db.execute("SELECT name FROM core.campaigns WHERE campaign_id = %s", (last,)).fetchone()[0]
    assert name.endswith("(not replied)")


def test_retargeting_with_another_template_and_a_start_time(db) -> None:
    acc = f.account(db)
    campaign = f.create_campaign(db, acc, 3, start=True)["campaign_id"]
    settle(db, campaign, {p: {"state": "failed"} for p in f.phones(3)})
    at = datetime.now(UTC) + timedelta(hours=3)
    created = db.execute("SELECT campaign_id, status, total FROM api.retarget_campaign(%s, %s, 'failed', 'again', %s::jsonb, %s)",
                         (acc.tenant_id, campaign, j([f.promo()]), at)).fetchone()
    assert created[1:] == ("scheduled", 3)
    assert db.execute("SELECT t.name FROM core.campaign_templates ct JOIN core.templates t USING (template_id)"
                      " WHERE ct.campaign_id = %s", (created[0],)).fetchone()[0] == "promo"
    raises(db, "PW100", "SELECT api.retarget_campaign(%s, %s, 'everyone')", (acc.tenant_id, campaign))
    raises(db, "PW101", "SELECT api.retarget_campaign(%s, %s, 'not_replied')",
           (acc.tenant_id, f.create_campaign(db, acc, 2)["campaign_id"]))   # all still queued


def test_engagement_conditions_follow_the_outbound_messages(db) -> None:
    acc = f.account(db)
    p = f.phones(3)
    campaign = f.create_campaign(db, acc, 3, start=True)["campaign_id"]
    settle(db, campaign, {p[0]: {"state": "read", "read_at": NOW}, p[1]: {"state": "failed"}})
    assert count(db, acc, {"campaign": campaign, "event": "delivered"}) == 1
    assert count(db, acc, {"campaign": campaign, "event": "failed"}) == 1
    assert count(db, acc, {"not": {"campaign": campaign, "event": "read"}}) == 2
    assert count(db, acc, {"campaign": campaign}) == 3


# -- the per-recipient report ------------------------------------------------------------

def report_lines(db: psycopg.Connection, tenant_id: int, campaign_id: int, fmt: str) -> list[str]:
    with db.transaction():
        db.execute("SELECT api.open_campaign_recipients(%s, %s, %s, 'report')", (tenant_id, campaign_id, fmt))
        return [r[0] for r in db.execute("FETCH ALL FROM report")]


def test_the_report_has_every_recipient_with_state_times_and_error(db) -> None:
    acc = f.account(db)
    p = f.phones(3)
    rows = [{"phone": p[0], "name": 'Ann "A", Jr', "order_no": "1"}, {"phone": p[1], "name": "Bo", "order_no": "2"},
            {"phone": p[2], "name": "Cy", "order_no": "3"}]
    campaign = f.create_campaign(db, acc, rows, start=True)["campaign_id"]
    settle(db, campaign, {p[0]: {"state": "delivered", "delivered_at": NOW},
                          p[1]: {"state": "failed", "failed_at": NOW, "error_code": 131026, "error_detail": "undeliverable"}})
    lines = report_lines(db, acc.tenant_id, campaign, "csv")
    parsed = list(csv.DictReader(io.StringIO("\n".join(lines))))
    assert len(parsed) == 3
    by_phone = {r["phone"]: r for r in parsed}
    assert by_phone[p[0]]["name"] == 'Ann "A", Jr' and by_phone[p[0]]["state"] == "delivered"
    assert by_phone[p[0]]["delivered_at"] == "2026-06-01T12:00:00.000000Z"
    assert by_phone[p[1]]["error_code"] == "131026" and by_phone[p[1]]["error_title"]
    assert by_phone[p[2]]["state"] == "queued" and by_phone[p[2]]["template"] == "order_update"
    as_json = [orjson.loads(line) for line in report_lines(db, acc.tenant_id, campaign, "json")]
    assert {r["phone"]: r["state"] for r in as_json} == {p[0]: "delivered", p[1]: "failed", p[2]: "queued"}
    assert next(r for r in as_json if r["phone"] == p[1])["error_code"] == 131026
    raises(db, "PW100", "SELECT api.open_campaign_recipients(%s, %s, 'xml')", (acc.tenant_id, campaign))
    raises(db, "PW100", "SELECT api.open_campaign_recipients(%s, %s, 'csv', 'x; DROP TABLE y')", (acc.tenant_id, campaign))
