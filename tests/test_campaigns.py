"""Campaign creation and lifecycle, against a real PostgreSQL through the api functions."""

from __future__ import annotations

import random
import threading
import time

import orjson
import psycopg
import pytest

from pgwa.queries import queries
from tests import factories as f


def raises(db: psycopg.Connection, sqlstate: str, query: str, params: tuple = ()) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as caught:
        db.execute(query, params)
    assert caught.value.diag.sqlstate == sqlstate, caught.value
    return caught.value


def create_error(db: psycopg.Connection, acc: f.Account, rows: list[dict], templates: list[dict] | None = None,
                 **kwargs: object) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as caught:
        f.create_campaign(db, acc, rows, templates, **kwargs)
    return caught.value


def assert_nothing_left_behind(db: psycopg.Connection) -> None:
    counts = db.execute("""
        SELECT (SELECT count(*) FROM core.campaigns), (SELECT count(*) FROM core.campaign_templates),
               (SELECT count(*) FROM core.contacts), (SELECT count(*) FROM core.outbound_messages),
               (SELECT count(*) FROM pgmq.meta WHERE core.queue_campaign_id(queue_name) IS NOT NULL)""").fetchone()
    assert counts == (0, 0, 0, 0, 0)


def queued_messages(db: psycopg.Connection, campaign_id: int) -> list[dict]:
    return [m["message"] for m in f.queue(db, f.campaign_queue(db, campaign_id))]


# -- create_campaign: phones -----------------------------------------------------------

def test_phones_are_normalised_to_e164_digits(db: psycopg.Connection) -> None:
    acc = f.account(db)
    rows = [{"phone": raw, "name": "N", "order_no": "1"} for raw in
            ["+1 (415) 555-0100", "0044 20 7946 0958", "020 7946 0959", "+49.30.1234567", "\t+55 11 91234-5678 "]]
    created = f.create_campaign(db, acc, rows, default_country_code="44")
    assert created["total"] == 5 and created["skipped_invalid"] == 0
    assert [m["t"] for m in queued_messages(db, created["campaign_id"])] == [
        "14155550100", "442079460958", "442079460959", "49301234567", "5511912345678"]
    assert {r[0] for r in db.execute("SELECT wa_id FROM core.contacts")} == {
        "14155550100", "442079460958", "442079460959", "49301234567", "5511912345678"}


def test_invalid_rows_are_reported_with_row_number_value_and_reason(db: psycopg.Connection) -> None:
    acc = f.account(db)
    rows = [{"phone": "14155550100", "name": "ok", "order_no": "1"},       # CSV row 2
            {"phone": "415-CALL-NOW", "name": "letters", "order_no": "2"},  # row 3
            {"phone": "", "name": "empty", "order_no": "3"},                # row 4
            {"phone": "020 7946 0958", "name": "national", "order_no": "4"},  # row 5
            {"phone": "12345", "name": "short", "order_no": "5"},           # row 6
            {"phone": "14155550101", "name": "no order", "order_no": ""}]   # row 7
    exc = create_error(db, acc, rows)
    assert exc.diag.sqlstate == "PW101"
    assert "5 of 6 contact rows are invalid" in exc.diag.message_primary
    detail = orjson.loads(exc.diag.message_detail)
    assert [(d["row"], d["value"]) for d in detail] == [
        (3, "415-CALL-NOW"), (4, ""), (5, "020 7946 0958"), (6, "12345"), (7, "14155550101")]
    reasons = [d["reason"] for d in detail]
    assert "characters other than digits" in reasons[0]
    assert reasons[1] == "phone is empty"
    assert "national format" in reasons[2]
    assert "7 to 15 digits" in reasons[3]
    assert reasons[4] == 'column "order_no" is empty'


def test_rejected_list_leaves_nothing_behind(db: psycopg.Connection) -> None:
    acc = f.account(db)
    rows = f.contacts(50) + [{"phone": "not a phone", "name": "x", "order_no": "y"}]
    exc = create_error(db, acc, rows, on_invalid="reject", start=True)
    assert exc.diag.sqlstate == "PW101"
    assert_nothing_left_behind(db)


def test_skip_sends_to_the_valid_rows_and_returns_the_invalid_ones(db: psycopg.Connection) -> None:
    acc = f.account(db)
    rows = f.contacts(3) + [{"phone": "abc", "name": "x", "order_no": "y"}] + f.contacts(2, base=10)
    created = f.create_campaign(db, acc, rows, on_invalid="skip")
    assert (created["total"], created["skipped_invalid"]) == (5, 1)
    assert created["invalid_rows"] == [
        {"row": 5, "value": "abc", "reason": "phone has characters other than digits, spaces, +, -, ., ( and )"}]
    c = f.campaign(db, created["campaign_id"])
    assert (c["total"], c["skipped_invalid"], c["status"]) == (5, 1, "draft")
    assert db.execute("SELECT count(*) FROM core.outbound_messages").fetchone()[0] == 5
    assert len(f.queue(db, f.campaign_queue(db, created['campaign_id']))) == 5
    # The staged list is consumed: the same upload cannot create a second campaign.
    with pytest.raises(psycopg.Error) as again:
        db.execute("SELECT api.create_campaign(%s, %s, 'again', %s::jsonb)",
                   (acc.tenant_id, acc.number_id, orjson.dumps([f.order_update()]).decode()))
    assert again.value.diag.sqlstate == "PW101"


def test_a_list_with_no_valid_row_is_refused_even_with_skip(db: psycopg.Connection) -> None:
    acc = f.account(db)
    exc = create_error(db, acc, [{"phone": "nope", "name": "x", "order_no": "1"}], on_invalid="skip")
    assert exc.diag.sqlstate == "PW101"
    assert_nothing_left_behind(db)


def test_duplicates_in_the_list_are_sent_once_and_counted(db: psycopg.Connection) -> None:
    acc = f.account(db)
    rows = [{"phone": p, "name": f"N{i}", "order_no": str(i)} for i, p in enumerate(
        ["+1 415 555 0100", "14155550100", "001 (415) 555-0100", "14155550199", "+1-415-555-0199"])]
    created = f.create_campaign(db, acc, rows)
    assert (created["total"], created["duplicates_removed"]) == (2, 3)
    assert f.campaign(db, created["campaign_id"])["duplicates_removed"] == 3
    messages = queued_messages(db, created["campaign_id"])
    assert [m["t"] for m in messages] == ["14155550100", "14155550199"]
    # The first occurrence of a phone is the one kept.
    assert [m["p"][0] for m in messages] == ["N0", "N3"]


def test_opted_out_contacts_are_skipped_and_counted(db: psycopg.Connection) -> None:
    acc = f.account(db)
    f.create_campaign(db, acc, 4)
    db.execute("UPDATE core.contacts SET opted_out = true, opted_out_at = now() WHERE wa_id = ANY(%s)",
               (f.phones(2),))
    created = f.create_campaign(db, acc, 4)
    assert (created["total"], created["skipped_opted_out"]) == (2, 2)
    assert f.campaign(db, created["campaign_id"])["skipped_opted_out"] == 2
    assert [m["t"] for m in queued_messages(db, created["campaign_id"])] == f.phones(4)[2:]


def test_counts_add_up_when_invalid_duplicate_and_opted_out_rows_mix(db: psycopg.Connection) -> None:
    acc = f.account(db)
    f.create_campaign(db, acc, 1)
    db.execute("UPDATE core.contacts SET opted_out = true")
    rows = f.contacts(5) + f.contacts(2) + [{"phone": "x", "name": "x", "order_no": "x"}]
    created = f.create_campaign(db, acc, rows, on_invalid="skip")
    assert (created["total"], created["skipped_invalid"], created["duplicates_removed"],
            created["skipped_opted_out"]) == (4, 1, 2, 1)


# The definition core.normalize_phone had before it was made fast: the reference the
# rewrite must agree with, on every kind of input.
OLD_NORMALIZE = """
    SELECT CASE WHEN raw ~ '[^0-9+()./ \t-]' THEN NULL ELSE substring(
        CASE WHEN translate(raw, '+()./ -' || chr(9), '') LIKE '00%%' THEN substr(translate(raw, '+()./ -' || chr(9), ''), 3)
             WHEN ltrim(raw) LIKE '+%%' OR cc IS NULL OR translate(raw, '+()./ -' || chr(9), '') NOT LIKE '0%%'
                 THEN translate(raw, '+()./ -' || chr(9), '')
             ELSE cc || ltrim(translate(raw, '+()./ -' || chr(9), ''), '0') END, '^([1-9][0-9]{6,14})$') END"""


def test_phone_normalisation_agrees_with_its_reference_definition(db: psycopg.Connection) -> None:
    raws = ["+1 (415) 555-0100", "0044 20 7946 0958", "020 7946 0959", "+49.30.1234567", "\t+55 11 91234-5678 ",
            "", " ", "+", "00", "0", "000123", "1234567", "123456", "123456789012345", "1234567890123456",
            "00123456789012345", "001234567890123456", "0012345", "00123456", "+0 123 4567", "0123456", "01234567",
            "(0) 20 7946", "abc", "+1 415 555 0100 ext 2", "1٢34567890", "+1\n4155550100", None]
    ccs = [None, "44", "1", "999"]
    rows = db.execute(f"""
        SELECT raw, cc, core.normalize_phone(raw, cc) AS new,
               core.phone_from_digits(raw, core.phone_digits(raw), cc) AS set_based, ({OLD_NORMALIZE}) AS old
        FROM unnest(%s::text[]) raw, unnest(%s::text[]) cc""", (raws, ccs)).fetchall()
    assert len(rows) == len(raws) * len(ccs)
    assert [r for r in rows if not (r[2] == r[3] == r[4])] == []
    assert sum(r[2] is not None for r in rows) > 20


def test_known_contacts_the_list_does_not_change_are_not_locked_or_rewritten(db: psycopg.Connection) -> None:
    acc = f.account(db)
    f.create_campaign(db, acc, 3)
    before = dict(db.execute("SELECT wa_id, (xmin::text, xmax::text, ctid::text) FROM core.contacts").fetchall())
    f.create_campaign(db, acc, 3)
    assert dict(db.execute("SELECT wa_id, (xmin::text, xmax::text, ctid::text) FROM core.contacts").fetchall()) == before
    # A new name or attribute is merged into that contact alone; a row without a name keeps the old one.
    rows = f.contacts(3)
    rows[1] = {**rows[1], "name": "Renamed", "order_no": "Z-1"}
    rows[2] = {**rows[2], "name": ""}
    f.create_campaign(db, acc, rows, [f.promo()], on_invalid="skip")
    after = dict(db.execute("SELECT wa_id, (xmin::text, xmax::text, ctid::text) FROM core.contacts").fetchall())
    phones = f.phones(3)
    assert after[phones[0]] == before[phones[0]] and after[phones[2]] == before[phones[2]]
    assert after[phones[1]] != before[phones[1]]
    assert db.execute("SELECT wa_id, name, attributes FROM core.contacts ORDER BY wa_id").fetchall() == [
        (phones[0], "Name 0", {"order_no": "A-0"}), (phones[1], "Renamed", {"order_no": "Z-1"}),
        (phones[2], "Name 2", {"order_no": "A-2"})]


def test_a_contact_another_session_adds_meanwhile_is_used_not_duplicated(db: psycopg.Connection, db_url: str) -> None:
    acc = f.account(db)
    rows = f.contacts(4)
    with psycopg.connect(db_url) as other, psycopg.connect(db_url, autocommit=True) as watcher:
        # Another session inserts the list's third phone and has not committed: the campaign
        # does not see it, tries to insert it and waits; then the other session commits.
        other_id = other.execute("INSERT INTO core.contacts (tenant_id, wa_id, name) VALUES (%s, %s, 'Theirs')"
                                 " RETURNING contact_id", (acc.tenant_id, rows[2]["phone"])).fetchone()[0]
        f.stage(db, rows)
        pid = db.info.backend_pid
        result: dict = {}

        def create() -> None:
            result["created"] = db.execute(queries["create_campaign"], {
                "tenant_id": acc.tenant_id, "number_id": acc.number_id, "name": "meanwhile",
                "templates": orjson.dumps([f.order_update()]).decode(), "on_invalid": "reject",
                "scheduled_at": None, "start": False, "default_country_code": None}).fetchone()

        worker = threading.Thread(target=create)
        worker.start()
        deadline = time.monotonic() + 30
        while not watcher.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                                  (pid,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the campaign never waited for the other session's row"
            time.sleep(0.01)
        other.commit()
        worker.join(30)
    assert result["created"][2] == 4
    contacts = dict(db.execute("SELECT wa_id, contact_id FROM core.contacts").fetchall())
    assert len(contacts) == 4 and contacts[rows[2]["phone"]] == other_id
    # The list's name is merged into the contact the other session made, and the
    # messages keep list order and point at the contacts as they are.
    assert db.execute("SELECT name FROM core.contacts WHERE contact_id = %s", (other_id,)).fetchone()[0] == "Name 2"
    outbound = db.execute("SELECT contact_id FROM core.outbound_messages ORDER BY outbound_id").fetchall()
    assert [r[0] for r in outbound] == [contacts[r["phone"]] for r in rows]
    assert [m["t"] for m in queued_messages(db, result["created"][0])] == [r["phone"] for r in rows]


def test_opting_out_a_phone_another_session_is_adding_opts_out_that_contact(db: psycopg.Connection,
                                                                          db_url: str) -> None:
    acc = f.account(db)
    phone = f.contacts(1)[0]["phone"]
    db.commit()
    with psycopg.connect(db_url) as other, psycopg.connect(db_url, autocommit=True) as watcher, \
            psycopg.connect(db_url, autocommit=True) as opting:
        # A campaign (or a send) is adding the phone and has not committed; the opt-out by
        # phone does not see it, tries to insert it and waits, then opts out that contact.
        other_id = other.execute("INSERT INTO core.contacts (tenant_id, wa_id, name) VALUES (%s, %s, 'Theirs')"
                                 " RETURNING contact_id", (acc.tenant_id, phone)).fetchone()[0]
        pid = opting.info.backend_pid
        result: dict = {}

        def opt_out() -> None:
            try:
                result["contact"] = opting.execute("SELECT (api.set_contact_opt_out(%s, true, NULL, %s)).contact_id",
                                                   (acc.tenant_id, phone)).fetchone()[0]
            except psycopg.Error as exc:    # the assertion below names it
                result["error"] = exc

        worker = threading.Thread(target=opt_out)
        worker.start()
        deadline = time.monotonic() + 30
        while not watcher.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                                  (pid,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the opt-out never waited for the other session's row"
            time.sleep(0.01)
        other.commit()
        worker.join(30)
        assert "error" not in result, result.get("error")
        assert result["contact"] == other_id
        row = watcher.execute("SELECT opted_out, opted_out_at IS NOT NULL, name FROM core.contacts "
                              "WHERE tenant_id = %s AND wa_id = %s", (acc.tenant_id, phone)).fetchall()
        assert row == [(True, True, "Theirs")]


def test_a_failure_after_contacts_are_written_leaves_nothing_behind(db: psycopg.Connection) -> None:
    acc = f.account(db)
    # A late write of a creation (the outbound messages) fails: the contacts, the
    # campaign, its templates and its queue, all written before it, must go too.
    db.execute("""CREATE FUNCTION pg_temp.fail() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = 'XX999'; END $$""")
    db.execute("""CREATE TRIGGER fail_queue AFTER INSERT ON core.outbound_messages
                  FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.fail()""")
    try:
        exc = create_error(db, acc, f.contacts(20), start=True)
    finally:
        db.execute("DROP TRIGGER fail_queue ON core.outbound_messages")
    assert exc.diag.sqlstate == "XX999"
    assert_nothing_left_behind(db)


# -- create_campaign: templates and parameters -----------------------------------------

BAD_TEMPLATES = [  # (templates, what the message names)
    ([{"name": "no_such_template", "language": "en_US", "params": []}], "no_such_template"),
    ([{"name": "promo", "language": "pt_BR", "params": [{"column": "name"}]}], "pt_BR"),
    ([{"name": "paused_one", "language": "en_US", "params": []}], "PAUSED, not APPROVED"),
    ([{"name": "order_update", "language": "en_US", "params": [{"column": "name"}]}], "3 body parameters but 1"),
    ([{"name": "promo", "language": "en_US", "params": [{"column": "coupon_code"}]}], '"coupon_code"'),
    ([{"name": "promo", "language": "en_US", "params": [{"expr": "1"}]}], "neither"),
    ([f.promo(), {"name": "order_update", "language": "en_US", "params": []}], "order_update"),
]


def test_bad_template_mapping_is_refused_with_pw102_naming_it(db: psycopg.Connection) -> None:
    acc = f.account(db)
    f.template(db, acc, "paused_one", f.NO_PARAMS, status="PAUSED")
    for templates, named in BAD_TEMPLATES:
        exc = create_error(db, acc, f.contacts(3), templates)
        assert exc.diag.sqlstate == "PW102", (templates, exc)
        assert named in exc.diag.message_primary, (templates, exc)
        assert_nothing_left_behind(db)


def test_another_tenants_number_or_template_is_not_found(db: psycopg.Connection) -> None:
    mine, theirs = f.account(db, with_templates=False), f.account(db)
    exc = create_error(db, f.Account(mine.tenant_id, theirs.number_id, "", mine.waba_id, ""), f.contacts(2))
    assert exc.diag.sqlstate == "PW202"
    # Their promo template exists, but not for my number's WABA.
    exc = create_error(db, mine, f.contacts(2), [f.promo()])
    assert exc.diag.sqlstate == "PW102" and "promo" in exc.diag.message_primary
    assert db.execute("SELECT count(*) FROM core.campaigns").fetchone()[0] == 0


def test_contacts_split_across_two_templates_interleave_in_queue_order(db: psycopg.Connection) -> None:
    acc = f.account(db)
    rows = f.contacts(2000)
    random.Random(7).shuffle(rows)  # list order differs from phone order
    created = f.create_campaign(db, acc, rows, [f.order_update(), f.promo()])
    assert created["total"] == 2000
    messages = queued_messages(db, created["campaign_id"])
    assert [m["v"] for m in messages] == [0, 1] * 1000
    assert [m["t"] for m in messages] == [r["phone"] for r in rows]
    # Queue order is outbound order, and each outbound row carries its message's variant.
    outbound = db.execute("SELECT outbound_id, variant FROM core.outbound_messages ORDER BY outbound_id").fetchall()
    assert [(m["o"], m["v"]) for m in messages] == outbound
    assert db.execute("SELECT array_agg(total ORDER BY variant) FROM core.campaign_templates").fetchone()[0] == [
        1000, 1000]


def test_columns_and_constants_render_into_the_request_exactly_as_meta_expects(db: psycopg.Connection) -> None:
    acc = f.account(db)
    rows = [{"phone": "+1 (415) 555-0100", "name": "Ann", "order_no": "A-17"},
            {"phone": "14155550101", "name": "Bob", "order_no": "B-2"}]
    cid = f.create_campaign(db, acc, rows, [f.order_update("ACME & Co"), f.promo()], start=True)["campaign_id"]
    requests = f.claim_all(db)
    assert [r["body"] for r in requests] == [
        {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "14155550100", "type": "template",
         "template": {"name": "order_update", "language": {"code": "en_US"},
                      "components": [{"type": "body", "parameters": [
                          {"type": "text", "text": "Ann"}, {"type": "text", "text": "A-17"},
                          {"type": "text", "text": "ACME & Co"}]}]},
         "biz_opaque_callback_data": f"c{cid}:{requests[0]['outbound_id']}"},
        {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "14155550101", "type": "template",
         "template": {"name": "promo", "language": {"code": "en_US"},
                      "components": [{"type": "body", "parameters": [{"type": "text", "text": "Bob"}]}]},
         "biz_opaque_callback_data": f"c{cid}:{requests[1]['outbound_id']}"}]
    assert {(r["phone_number_id"], r["access_token"], r["path"], r["queue_name"]) for r in requests} == {
        (acc.phone_number_id, acc.access_token, f"v21.0/{acc.phone_number_id}/messages", f.campaign_queue(db, cid))}


def test_a_template_without_parameters_is_sent_without_components(db: psycopg.Connection) -> None:
    acc = f.account(db)
    f.running_campaign(db, acc, 1, [{"name": "confirmed", "language": "en_US"}])
    (request,) = f.claim_all(db)
    assert request["body"]["template"] == {"name": "confirmed", "language": {"code": "en_US"}}


INJECTION = "x'); DROP TABLE core.contacts; --"


def test_injection_through_a_column_name_or_constant_is_rendered_as_data(db: psycopg.Connection) -> None:
    acc = f.account(db)
    column = INJECTION.lower()  # the CSV header is read lower-cased
    rows = [{"phone": "14155550100", "name": "Ann", column: "$q$ %s %I ' \"; SELECT 1; --"}]
    templates = [{"name": "order_update", "language": "en_US",
                  "params": [{"column": column}, {"value": INJECTION}, {"value": "$q$ END; --"}]}]
    f.create_campaign(db, acc, rows, templates, start=True)
    (request,) = f.claim_all(db)
    assert [p["text"] for p in request["body"]["template"]["components"][0]["parameters"]] == [
        "$q$ %s %I ' \"; SELECT 1; --", INJECTION, "$q$ END; --"]
    # A column the list does not have is refused by its name, whatever the name holds.
    exc = create_error(db, acc, f.contacts(1), [{"name": "promo", "language": "en_US",
                                                 "params": [{"column": INJECTION}]}])
    assert exc.diag.sqlstate == "PW102" and INJECTION in exc.diag.message_primary
    assert db.execute("SELECT to_regclass('core.contacts') IS NOT NULL").fetchone()[0]
    assert db.execute("SELECT count(*) FROM core.contacts").fetchone()[0] == 1


def test_bad_arguments_are_refused_with_pw100(db: psycopg.Connection) -> None:
    acc = f.account(db)
    assert create_error(db, acc, f.contacts(1), on_invalid="ignore").diag.sqlstate == "PW100"
    assert create_error(db, acc, f.contacts(1), default_country_code="+44").diag.sqlstate == "PW100"
    assert create_error(db, acc, f.contacts(1), name="  ").diag.sqlstate == "PW100"
    assert_nothing_left_behind(db)


# -- lifecycle -----------------------------------------------------------------------

def test_draft_campaign_sends_nothing_until_started(db: psycopg.Connection) -> None:
    acc = f.account(db)
    created = f.create_campaign(db, acc, 5)
    assert created["status"] == "draft"
    assert f.claim_all(db) == []
    assert db.execute("SELECT api.start_campaign(%s, %s)", (acc.tenant_id, created["campaign_id"])).fetchone()[0] \
        == "running"
    assert f.campaign(db, created["campaign_id"])["started_at"] is not None
    assert len(f.claim_all(db)) == 5


def test_campaign_started_for_a_future_time_is_scheduled_and_starts_once_due(db: psycopg.Connection) -> None:
    acc = f.account(db)
    cid = f.create_campaign(db, acc, 3)["campaign_id"]
    status = db.execute("SELECT api.start_campaign(%s, %s, now() + interval '1 hour')",
                        (acc.tenant_id, cid)).fetchone()[0]
    assert status == "scheduled"
    assert db.execute("SELECT core.start_due_campaigns()").fetchone()[0] == 0
    assert f.claim_all(db) == []
    db.execute("UPDATE core.campaigns SET scheduled_at = now() - interval '1 second' WHERE campaign_id = %s", (cid,))
    assert db.execute("SELECT core.start_due_campaigns()").fetchone()[0] == 1
    assert f.campaign(db, cid)["status"] == "running"
    assert db.execute("SELECT core.start_due_campaigns()").fetchone()[0] == 0
    assert len(f.claim_all(db)) == 3
    # Created with a future time, a campaign is scheduled from the start.
    created = f.create_campaign(db, acc, f.contacts(2, base=50), scheduled_at="2999-01-01T00:00:00Z")
    assert created["status"] == "scheduled"
    assert f.claim_all(db) == []


def test_a_scheduled_campaign_paused_and_resumed_keeps_its_schedule(db: psycopg.Connection) -> None:
    acc = f.account(db)
    cid = f.create_campaign(db, acc, 2, scheduled_at="2999-01-01T00:00:00Z")["campaign_id"]
    assert db.execute("SELECT api.pause_campaign(%s, %s)", (acc.tenant_id, cid)).fetchone()[0] == "paused"
    assert db.execute("SELECT api.resume_campaign(%s, %s)", (acc.tenant_id, cid)).fetchone()[0] == "scheduled"
    assert f.claim_all(db) == []
    db.execute("UPDATE core.campaigns SET scheduled_at = now() - interval '1 second'")
    assert len(f.claim_all(db)) == 2    # the claim path starts what is due
    assert f.campaign(db, cid)["status"] == "running"


def test_paused_campaign_stops_within_one_batch(db: psycopg.Connection) -> None:
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 20)
    first = f.claim_all(db, 5)
    assert db.execute("SELECT api.pause_campaign(%s, %s)", (acc.tenant_id, cid)).fetchone()[0] == "paused"
    assert f.claim_all(db) == []
    # What a worker already holds still finishes.
    assert f.report(db, [f.ok(r) for r in first])["accepted"] == 5
    assert f.campaign(db, cid)["status"] == "paused"
    assert db.execute("SELECT api.resume_campaign(%s, %s)", (acc.tenant_id, cid)).fetchone()[0] == "running"
    rest = f.claim_all(db)
    assert len(rest) == 15
    assert not {r["outbound_id"] for r in first} & {r["outbound_id"] for r in rest}


def test_paused_campaign_leaves_other_campaigns_of_the_number_sending(db: psycopg.Connection) -> None:
    acc = f.account(db)
    paused, other = f.running_campaign(db, acc, 5), f.running_campaign(db, acc, f.contacts(5, base=100))
    db.execute("SELECT api.pause_campaign(%s, %s)", (acc.tenant_id, paused))
    assert {r["queue_name"] for r in f.claim_all(db)} == {f.campaign_queue(db, other)}


def test_cancel_withdraws_queued_messages_and_counts_them(db: psycopg.Connection) -> None:
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 10)
    assert db.execute("SELECT api.cancel_campaign(%s, %s)", (acc.tenant_id, cid)).fetchone()[0] == "cancelled"
    c = f.campaign(db, cid)
    assert (c["status"], c["cancelled"], c["cancelled_at"] is not None) == ("cancelled", 10, True)
    assert f.queue(db, f.campaign_queue(db, cid)) == []
    assert db.execute("SELECT array_agg(DISTINCT state) FROM core.outbound_messages").fetchone()[0] == ["cancelled"]
    assert f.claim_all(db) == []
    raises(db, "PW301", "SELECT api.cancel_campaign(%s, %s)", (acc.tenant_id, cid))


def test_cancel_lets_messages_already_claimed_finish(db: psycopg.Connection) -> None:
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 10)
    held = f.claim_all(db, 3)
    db.execute("SELECT api.cancel_campaign(%s, %s)", (acc.tenant_id, cid))
    assert sorted(m["message"]["o"] for m in f.queue(db, f.campaign_queue(db, cid))) == sorted(r["outbound_id"] for r in held)
    assert f.report(db, [f.ok(r) for r in held])["accepted"] == 3
    c = f.campaign(db, cid)
    assert (c["status"], c["cancelled"], c["sent"], c["finished"]) == ("cancelled", 7, 3, 3)
    assert f.queue(db, f.campaign_queue(db, cid)) == []


def test_messages_held_at_cancel_that_come_back_are_cancelled_not_requeued(db: psycopg.Connection) -> None:
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 10)
    held = f.claim_all(db, 4)
    db.execute("SELECT api.cancel_campaign(%s, %s)", (acc.tenant_id, cid))
    f.report(db, [f.err(held[0], 131000, 500), f.err(held[1], 130429, 429), f.err(held[2], 190), f.ok(held[3])])
    states = [f.outbound(db, r["outbound_id"])["state"] for r in held]
    assert states == ["cancelled", "cancelled", "cancelled", "accepted"]
    c = f.campaign(db, cid)
    assert (c["status"], c["cancelled"], c["sent"], c["finished"]) == ("cancelled", 9, 1, 1)
    assert f.queue(db, f.campaign_queue(db, cid)) == []
    assert db.execute("SELECT count(*) FROM core.outbound_messages WHERE state = 'queued'").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM core.notifications").fetchone()[0] == 0


def test_lifecycle_calls_on_another_tenants_campaign_are_not_found(db: psycopg.Connection) -> None:
    mine, theirs = f.account(db), f.account(db)
    cid = f.create_campaign(db, theirs, 2)["campaign_id"]
    for call in ("start_campaign", "pause_campaign", "resume_campaign", "cancel_campaign"):
        raises(db, "PW201", f"SELECT api.{call}(%s, %s)", (mine.tenant_id, cid))
    assert f.campaign(db, cid)["status"] == "draft"
    assert f.campaign(db, cid)["cancelled"] == 0


def test_transitions_a_status_does_not_allow_raise_pw301(db: psycopg.Connection) -> None:
    acc = f.account(db)
    cid = f.create_campaign(db, acc, 2)["campaign_id"]
    raises(db, "PW301", "SELECT api.pause_campaign(%s, %s)", (acc.tenant_id, cid))
    raises(db, "PW301", "SELECT api.resume_campaign(%s, %s)", (acc.tenant_id, cid))
    db.execute("SELECT api.start_campaign(%s, %s)", (acc.tenant_id, cid))
    raises(db, "PW301", "SELECT api.start_campaign(%s, %s)", (acc.tenant_id, cid))
    raises(db, "PW301", "SELECT api.resume_campaign(%s, %s)", (acc.tenant_id, cid))


def test_campaign_completes_when_every_message_is_reported(db: psycopg.Connection) -> None:
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 6)
    requests = f.claim_all(db)
    f.report(db, [f.ok(r) for r in requests[:3]])
    assert f.campaign(db, cid)["status"] == "running"
    f.report(db, [f.ok(r) for r in requests[3:5]] + [f.err(requests[5], 131026)])
    c = f.campaign(db, cid)
    assert (c["status"], c["finished"], c["total"], c["sent"], c["failed"]) == ("completed", 6, 6, 5, 1)
    assert c["completed_at"] is not None
    raises(db, "PW301", "SELECT api.pause_campaign(%s, %s)", (acc.tenant_id, cid))
    raises(db, "PW301", "SELECT api.cancel_campaign(%s, %s)", (acc.tenant_id, cid))


def test_campaign_finished_while_paused_completes_on_resume(db: psycopg.Connection) -> None:
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 2)
    requests = f.claim_all(db)
    db.execute("SELECT api.pause_campaign(%s, %s)", (acc.tenant_id, cid))
    f.report(db, [f.ok(r) for r in requests])
    assert f.campaign(db, cid)["status"] == "paused"
    assert db.execute("SELECT api.resume_campaign(%s, %s)", (acc.tenant_id, cid)).fetchone()[0] == "completed"
