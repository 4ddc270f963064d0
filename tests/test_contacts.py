"""Contacts as a managed list: typed fields, tags, edits, erasure, search, export and mapped
imports, through the api functions against a real PostgreSQL."""

from __future__ import annotations

import csv
import io

import orjson
import psycopg
import pytest
from psycopg.rows import dict_row

from tests import factories as f


def raises(db: psycopg.Connection, sqlstate: str, query: str, params: tuple = ()) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as caught:
        db.execute(query, params)
    assert caught.value.diag.sqlstate == sqlstate, caught.value
    return caught.value


def j(value: object) -> str:
    return orjson.dumps(value).decode()


def import_rows(db: psycopg.Connection, acc: f.Account, rows: list[dict]) -> dict[str, int]:
    f.stage(db, rows)
    db.execute("SELECT * FROM api.import_contacts(%s)", (acc.tenant_id,))
    return dict(db.execute("SELECT wa_id, contact_id FROM core.contacts WHERE tenant_id = %s", (acc.tenant_id,)).fetchall())


def contact(db: psycopg.Connection, tenant_id: int, contact_id: int) -> dict:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM api.contact(%s, %s)", (tenant_id, contact_id)).fetchone()


def update(db: psycopg.Connection, tenant_id: int, contact_id: int, **kw: object) -> dict:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM api.update_contact(%(t)s, %(c)s, %(name)s, %(fields)s::jsonb, %(add)s, %(remove)s)",
                           {"t": tenant_id, "c": contact_id, "name": kw.get("name"),
                            "fields": j(kw["fields"]) if "fields" in kw else None,
                            "add": kw.get("add"), "remove": kw.get("remove")}).fetchone()


@pytest.fixture
def acc(db: psycopg.Connection) -> f.Account:
    acc = f.account(db)
    for name, kind in (("city", "text"), ("points", "number"), ("birthday", "date"), ("member", "boolean")):
        db.execute("SELECT api.define_contact_field(%s, %s, %s)", (acc.tenant_id, name, kind))
    return acc


# -- fields -----------------------------------------------------------------------------------

def test_fields_are_defined_listed_and_refused_when_malformed(db, acc) -> None:
    assert [tuple(r) for r in db.execute("SELECT name, type FROM api.contact_fields(%s)", (acc.tenant_id,))] == [
        ("birthday", "date"), ("city", "text"), ("member", "boolean"), ("points", "number")]
    db.execute("SELECT api.define_contact_field(%s, 'city', 'text')", (acc.tenant_id,))   # idempotent
    raises(db, "PW302", "SELECT api.define_contact_field(%s, 'city', 'number')", (acc.tenant_id,))
    for bad in ("City", "1st", "phone", "a-b", "x" * 64, "tags"):
        raises(db, "PW100", "SELECT api.define_contact_field(%s, %s, 'text')", (acc.tenant_id, bad))
    raises(db, "PW100", "SELECT api.define_contact_field(%s, 'colour', 'color')", (acc.tenant_id,))
    raises(db, "PW205", "SELECT api.define_contact_field(0, 'colour', 'text')")
    db.execute("SELECT api.delete_contact_field(%s, 'member')", (acc.tenant_id,))
    raises(db, "PW233", "SELECT api.delete_contact_field(%s, 'member')", (acc.tenant_id,))


def test_field_values_are_typed_on_write_and_bad_ones_named(db, acc) -> None:
    ids = import_rows(db, acc, [{"phone": "14155550100", "name": "Ann"}])
    cid = ids["14155550100"]
    got = update(db, acc.tenant_id, cid, fields={"city": " Paris ", "points": "12.50", "birthday": "1990-02-28",
                                                  "member": "yes"})
    assert got["attributes"] == {"city": "Paris", "points": 12.50, "birthday": "1990-02-28", "member": True}
    for field, value, words in (("points", "a lot", "not a number"), ("birthday", "1990-02-30", "calendar"),
                                ("birthday", "28/02/1990", "YYYY-MM-DD"), ("member", "maybe", "true or false"),
                                ("city", {"a": 1}, "single value")):
        with pytest.raises(psycopg.Error) as caught:
            update(db, acc.tenant_id, cid, fields={field: value})
        assert caught.value.diag.sqlstate == "PW133"
        assert field in caught.value.diag.message_primary and words in caught.value.diag.message_primary
    with pytest.raises(psycopg.Error) as caught:
        update(db, acc.tenant_id, cid, fields={"colour": "red"})
    assert caught.value.diag.sqlstate == "PW233"
    # Nothing of the refused edits landed; null removes a value; name '' clears it.
    got = update(db, acc.tenant_id, cid, fields={"city": None}, name="")
    assert got["attributes"] == {"points": 12.50, "birthday": "1990-02-28", "member": True} and got["name"] is None


def test_tags_are_added_removed_and_checked(db, acc) -> None:
    ids = import_rows(db, acc, [{"phone": p} for p in f.phones(3)])
    got = update(db, acc.tenant_id, ids[f.phones(1)[0]], add=[" vip ", "news", "vip"])
    assert got["tags"] == ["news", "vip"]
    got = update(db, acc.tenant_id, ids[f.phones(1)[0]], add=["late"], remove=["news"])
    assert got["tags"] == ["late", "vip"]
    assert db.execute("SELECT api.tag_contacts(%s, %s, '{vip}')", (acc.tenant_id, list(ids.values()))).fetchone()[0] == 2
    for bad in ([""], ["x" * 65], ["a\nb"], [f"t{i}" for i in range(101)]):
        raises(db, "PW100", "SELECT api.tag_contacts(%s, %s, %s)", (acc.tenant_id, list(ids.values()), bad))
    raises(db, "PW204", "SELECT api.tag_contacts(%s, %s, '{x}')", (acc.tenant_id, [*ids.values(), 10**9]))
    assert db.execute("SELECT count(*) FROM core.contacts WHERE 'x' = ANY (tags)").fetchone()[0] == 0


def test_another_tenant_cannot_see_edit_tag_or_delete_a_contact(db, acc) -> None:
    other = f.account(db)
    cid = import_rows(db, acc, [{"phone": "14155550100", "name": "Ann"}])["14155550100"]
    raises(db, "PW204", "SELECT api.contact(%s, %s)", (other.tenant_id, cid))
    raises(db, "PW204", "SELECT api.update_contact(%s, %s, 'Mallory')", (other.tenant_id, cid))
    raises(db, "PW204", "SELECT api.tag_contacts(%s, %s, '{stolen}')", (other.tenant_id, [cid]))
    raises(db, "PW204", "SELECT api.delete_contact(%s, %s)", (other.tenant_id, cid))
    assert db.execute("SELECT count(*) FROM api.search_contacts(%s, p_phone => '14155550100')",
                      (other.tenant_id,)).fetchone()[0] == 0
    with db.transaction():
        db.execute("SELECT api.open_contacts_export(%s, p_cursor => 'x')", (other.tenant_id,))
        assert [r[0] for r in db.execute("FETCH ALL FROM x")][1:] == []
    assert contact(db, acc.tenant_id, cid)["name"] == "Ann"


# -- erasure ------------------------------------------------------------------------------

def test_deleting_a_contact_erases_its_messages_and_events_and_keeps_campaigns_completing(db, acc) -> None:
    keep, gone = f.phones(2)
    campaign = f.create_campaign(db, acc, [{"phone": keep, "name": "K", "order_no": "1"},
                                           {"phone": gone, "name": "G", "order_no": "2"}], start=True)["campaign_id"]
    sent_earlier = f.create_campaign(db, acc, [{"phone": gone, "name": "G", "order_no": "3"}], start=True)["campaign_id"]
    ids = dict(db.execute("SELECT wa_id, contact_id FROM core.contacts").fetchall())
    # The earlier campaign's message went out and was delivered; the contact wrote back.
    # Its queue message was archived for history, as a permanent failure's is.
    db.execute("SELECT pgmq.archive(%s, msg_id) FROM pgmq.read(%s, 0, 10)",
               (f.campaign_queue(db, sent_earlier), f.campaign_queue(db, sent_earlier)))
    assert len(f.archived(db, f.campaign_queue(db, sent_earlier))) == 1
    db.execute("UPDATE core.outbound_messages SET state = 'delivered', wamid = 'wamid.gone', delivered_at = now()"
               " WHERE campaign_id = %s", (sent_earlier,))
    db.execute("UPDATE core.campaigns SET sent = 1, delivered = 1, finished = 1 WHERE campaign_id = %s", (sent_earlier,))
    db.execute("INSERT INTO core.status_events (wamid, status, outbound_id, occurred_at, number_id)"
               " SELECT 'wamid.gone', 'delivered', outbound_id, now(), number_id FROM core.outbound_messages"
               " WHERE campaign_id = %s", (sent_earlier,))
    db.execute("INSERT INTO core.inbox_messages (number_id, contact_id, direction, wamid, type, body)"
               " VALUES (%s, %s, 'in', 'wamid.in', 'text', 'please forget me')", (acc.number_id, ids[gone]))
    db.execute("INSERT INTO core.conversations (number_id, contact_id, last_message_at) VALUES (%s, %s, now())",
               (acc.number_id, ids[gone]))
    db.execute("INSERT INTO core.events (tenant_id, event_type, data) VALUES (%s, 'message.inbound', %s),"
               " (%s, 'message.inbound', %s)", (acc.tenant_id, j({"from": {"contact_id": ids[gone]}}),
                                                 acc.tenant_id, j({"from": {"contact_id": ids[keep]}})))
    with db.cursor(row_factory=dict_row) as cur:
        erased = cur.execute("SELECT * FROM api.delete_contact(%s, %s)", (acc.tenant_id, ids[gone])).fetchone()
    assert erased == {"contact_id": ids[gone], "outbound_messages": 2, "withdrawn": 1, "inbox_messages": 1,
                      "conversations": 1, "status_events": 1, "events": 1}
    left = db.execute("""SELECT (SELECT count(*) FROM core.contacts WHERE wa_id = %(p)s),
        (SELECT count(*) FROM core.outbound_messages WHERE contact_id = %(c)s),
        (SELECT count(*) FROM core.inbox_messages WHERE contact_id = %(c)s),
        (SELECT count(*) FROM core.status_events WHERE wamid = 'wamid.gone')""", {"p": gone, "c": ids[gone]}).fetchone()
    assert left == (0, 0, 0, 0)
    assert [m["message"]["t"] for m in f.queue(db, f.campaign_queue(db, campaign))] == [keep]
    assert f.archived(db, f.campaign_queue(db, sent_earlier)) == []
    assert f.campaign(db, campaign)["cancelled"] == 1
    assert f.campaign(db, sent_earlier)["delivered"] == 1    # anonymous aggregates stay
    # The campaign still completes once its other message is done.
    req = f.claim_all(db)
    f.report(db, [f.ok(r) for r in req])
    assert f.campaign(db, campaign)["status"] == "completed"
    raises(db, "PW204", "SELECT api.delete_contact(%s, %s)", (acc.tenant_id, ids[gone]))


# -- search and export --------------------------------------------------------------------

def test_search_by_phone_name_tag_and_field_pages_by_keyset(db, acc) -> None:
    ids = import_rows(db, acc, [{"phone": p, "name": f"Name {i}"} for i, p in enumerate(f.phones(25))])
    for i, cid in enumerate(sorted(ids.values())):
        update(db, acc.tenant_id, cid, fields={"points": i}, add=["even"] if i % 2 == 0 else None)

    def search(**kw: object) -> list[int]:
        return [r[0] for r in db.execute(
            "SELECT contact_id FROM api.search_contacts(%(t)s, %(phone)s, %(name)s, %(tag)s, %(filter)s::jsonb,"
            " NULL, %(before)s, %(limit)s)",
            {"t": acc.tenant_id, "phone": kw.get("phone"), "name": kw.get("name"), "tag": kw.get("tag"),
             "filter": j(kw["filter"]) if "filter" in kw else None, "before": kw.get("before"),
             "limit": kw.get("limit", 50)})]

    first = f.phones(1)[0]
    assert search(phone="+" + first) == [ids[first]]
    assert len(search(name="name 1")) == 11                     # Name 1, Name 10..19
    assert len(search(tag="even")) == 13
    assert len(search(tag="even", filter={"field": "points", "op": "gte", "value": 20})) == 3
    pages, before = [], None
    while True:
        page = search(tag="even", limit=5, before=before)
        pages += page
        if len(page) < 5:
            break
        before = page[-1]
    assert pages == sorted(pages, reverse=True) and len(pages) == len(set(pages)) == 13
    raises(db, "PW100", "SELECT * FROM api.search_contacts(%s, p_limit => 0)", (acc.tenant_id,))
    raises(db, "PW100", "SELECT * FROM api.search_contacts(%s, p_phone => 'call me')", (acc.tenant_id,))
    raises(db, "PW132", "SELECT * FROM api.search_contacts(%s, p_filter => '{\"tag\": 1}')", (acc.tenant_id,))


def test_export_streams_csv_with_a_column_per_field(db, acc) -> None:
    ids = import_rows(db, acc, [{"phone": "14155550100", "name": 'Ann "the, first"'}, {"phone": "14155550101"}])
    update(db, acc.tenant_id, ids["14155550100"], fields={"city": "=cmd|' /C calc'!A0", "points": 3}, add=["a", "b"])
    with db.transaction():
        name = db.execute("SELECT api.open_contacts_export(%s)", (acc.tenant_id,)).fetchone()[0]
        assert name == "contacts_export"
        lines = []
        while batch := db.execute("FETCH 1 FROM contacts_export").fetchall():
            lines += [r[0] for r in batch]
    rows = list(csv.DictReader(io.StringIO("\n".join(lines))))
    assert list(rows[0]) == ["contact_id", "phone", "user_id", "name", "tags", "opted_out", "last_inbound_at",
                             "created_at", "birthday", "city", "member", "points"]
    ann = next(r for r in rows if r["phone"] == "14155550100")
    assert (ann["name"], ann["tags"], ann["city"], ann["points"]) == ('Ann "the, first"', "a;b", "=cmd|' /C calc'!A0", "3")
    with db.transaction():
        db.execute("SELECT api.open_contacts_export(%s, p_filter => '{\"tag\": \"a\"}', p_cursor => 'only_a')",
                   (acc.tenant_id,))
        assert len(db.execute("FETCH ALL FROM only_a").fetchall()) == 2     # header + Ann


# -- mapped imports -------------------------------------------------------------------------

def test_an_import_maps_columns_to_fields_and_tags_and_reports_skipped_values(db, acc) -> None:
    rows = [{"phone": "14155550100", "name": "Ann", "town": "Paris", "score": "12", "dob": "1990-01-01",
             "interests": "shoes; bags", "note": "kept"},
            {"phone": "14155550101", "name": "Bo", "town": "Lyon", "score": "lots", "dob": "1990-13-01",
             "interests": "", "note": ""},
            {"phone": "not a phone", "name": "Cy", "town": "", "score": "", "dob": "", "interests": "", "note": ""}]
    f.stage(db, rows)
    mapping = {"fields": {"town": "city", "score": "points", "dob": "birthday"}, "tag_columns": ["interests"],
               "tags": ["fair-2026"]}
    with db.cursor(row_factory=dict_row) as cur:
        got = cur.execute("SELECT * FROM api.import_contacts_mapped(%s, %s::jsonb)", (acc.tenant_id, j(mapping))).fetchone()
    assert (got["inserted"], got["skipped_invalid"], got["tagged"]) == (2, 1, 2)
    assert got["skipped_values"] == [
        {"row": 3, "column": "dob", "value": "1990-13-01", "reason": "not a calendar date (field birthday)"},
        {"row": 3, "column": "score", "value": "lots", "reason": "not a number (digits, an optional minus and decimal point) (field points)"}]
    assert got["invalid_rows"][0]["row"] == 4
    with db.cursor(row_factory=dict_row) as cur:
        ann, bo = (cur.execute("SELECT attributes, tags FROM core.contacts WHERE wa_id = %s", (p,)).fetchone()
                   for p in ("14155550100", "14155550101"))
    assert ann["attributes"] == {"city": "Paris", "points": 12, "birthday": "1990-01-01", "note": "kept"}
    assert ann["tags"] == ["bags", "fair-2026", "shoes"]
    assert bo["attributes"] == {"city": "Lyon", "note": ""} and bo["tags"] == ["fair-2026"]
    # reject refuses the whole list, naming the first bad value.
    f.stage(db, rows)
    error = raises(db, "PW133", "SELECT * FROM api.import_contacts_mapped(%s, %s::jsonb, NULL, 'reject')",
                   (acc.tenant_id, j(mapping)))
    assert "row 3" in error.diag.message_primary
    f.stage(db, rows)
    raises(db, "PW233", "SELECT * FROM api.import_contacts_mapped(%s, %s::jsonb)",
           (acc.tenant_id, j({"fields": {"town": "colour"}})))
    raises(db, "PW100", "SELECT * FROM api.import_contacts_mapped(%s, %s::jsonb)", (acc.tenant_id, j({"columns": {}})))
