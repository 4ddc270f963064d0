"""Templates as Meta defines them, in SQL: what a template needs (api.template_parameters),
how a campaign maps every parameter of every component (api.create_campaign, refused with
PW102 naming the template, the component, the parameter and the fix), how claim_sends
renders Meta's components array, and template errors that pause a campaign."""

from __future__ import annotations

import orjson
import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests import factories as f
from tests.test_campaigns import assert_nothing_left_behind, create_error, queued_messages

# The seeded simulator templates of issue 12 (sim/templates.json), as Meta lists them.
SPRING_SALE = [
    {"type": "HEADER", "format": "IMAGE", "example": {"header_handle": ["https://cdn.example/spring.jpg"]}},
    {"type": "BODY", "text": "Hi {{first_name}}, {{discount}} off everything until {{end_date}}.",
     "example": {"body_text_named_params": [{"param_name": "first_name", "example": "Ana"},
                                            {"param_name": "discount", "example": "20%"},
                                            {"param_name": "end_date", "example": "May 31"}]}},
    {"type": "FOOTER", "text": "Reply STOP to opt out"},
    {"type": "BUTTONS", "buttons": [
        {"type": "URL", "text": "Shop now", "url": "https://shop.example.com/sale/{{1}}", "example": ["spring"]},
        {"type": "QUICK_REPLY", "text": "Stop promotions"}]}]
NEW_ARRIVALS_VIDEO = [
    {"type": "HEADER", "format": "VIDEO", "example": {"header_handle": ["https://cdn.example/v.mp4"]}},
    {"type": "BODY", "text": "{{1}}, see what is new this week.", "example": {"body_text": [["Ana"]]}},
    {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Show me"}]}]
INVOICE_READY = [
    {"type": "HEADER", "format": "DOCUMENT", "example": {"header_handle": ["https://cdn.example/i.pdf"]}},
    {"type": "BODY", "text": "Invoice {{1}} for {{2}} is attached.", "example": {"body_text": [["INV-1", "$10"]]}},
    {"type": "BUTTONS", "buttons": [{"type": "PHONE_NUMBER", "text": "Call us", "phone_number": "+15550100"}]}]
COUPON_REMINDER = [
    {"type": "HEADER", "format": "TEXT", "text": "Act fast, {{1}}!", "example": {"header_text": ["Pablo"]}},
    {"type": "BODY", "text": "Your code {{1}} expires in {{2}} days!", "example": {"body_text": [["SUMMER20", "10"]]}},
    {"type": "BUTTONS", "buttons": [
        {"type": "COPY_CODE", "example": "SUMMER20"},
        {"type": "URL", "text": "Use it", "url": "https://example.com/c/{{1}}", "example": ["SUMMER20"]}]}]
VISIT_STORE = [
    {"type": "HEADER", "format": "LOCATION"},
    {"type": "BODY", "text": "See you at {{1}}.", "example": {"body_text": [["Main St"]]}}]
LOGIN_CODE = [
    {"type": "BODY", "text": "{{1}} is your verification code.", "example": {"body_text": [["123456"]]}},
    {"type": "BUTTONS", "buttons": [{"type": "OTP", "otp_type": "COPY_CODE", "text": "Copy code"}]}]

KINDS = {"spring_sale": SPRING_SALE, "new_arrivals_video": NEW_ARRIVALS_VIDEO, "invoice_ready": INVOICE_READY,
         "coupon_reminder": COUPON_REMINDER, "visit_store": VISIT_STORE, "login_code": LOGIN_CODE}

LOCATION = {"latitude": 37.483, "longitude": -122.148, "name": "Main St store", "address": "1 Main St"}

# One mapping of each kind, and the components it renders for ROWS[0] (Ann) and ROWS[1] (Bob).
MAPPINGS = {
    "spring_sale": {
        "header": {"column": "photo"},
        "body": {"first_name": {"column": "name"}, "discount": {"value": "20%"}, "end_date": {"column": "until"}},
        "buttons": {"0": {"column": "path"}, "1": {"value": "STOP"}}},
    "new_arrivals_video": {"header": {"media_id": "4490709327384033"}, "body": [{"column": "name"}]},
    "invoice_ready": {"header": {"value": "https://cdn.example/inv.pdf", "filename": "invoice.pdf"},
                      "body": [{"column": "invoice"}, {"value": "$20.00"}]},
    "coupon_reminder": {"header": {"column": "name"}, "body": [{"column": "code"}, {"value": "3"}],
                        "buttons": {"0": {"column": "code"}, "1": {"value": "SPRING"}}},
    "visit_store": {"header": {"location": LOCATION}, "body": [{"column": "name"}]},
    "login_code": {"body": [{"column": "code"}]},
}

ROWS = [{"phone": "14155550100", "name": "Ann", "photo": "https://cdn.example/a.jpg", "until": "May 31",
         "path": "ann", "invoice": "INV-1", "code": "AB12"},
        {"phone": "14155550101", "name": "Bob", "photo": "https://cdn.example/b.jpg", "until": "June 1",
         "path": "bob", "invoice": "INV-2", "code": "CD34"}]


def expected(kind: str, row: dict) -> list[dict]:
    """Meta's components array for a row, written out by hand (reference §1.7)."""
    if kind == "spring_sale":
        return [{"type": "header", "parameters": [{"type": "image", "image": {"link": row["photo"]}}]},
                {"type": "body", "parameters": [
                    {"type": "text", "parameter_name": "first_name", "text": row["name"]},
                    {"type": "text", "parameter_name": "discount", "text": "20%"},
                    {"type": "text", "parameter_name": "end_date", "text": row["until"]}]},
                {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": row["path"]}]},
                {"type": "button", "sub_type": "quick_reply", "index": "1",
                 "parameters": [{"type": "payload", "payload": "STOP"}]}]
    if kind == "new_arrivals_video":
        return [{"type": "header", "parameters": [{"type": "video", "video": {"id": "4490709327384033"}}]},
                {"type": "body", "parameters": [{"type": "text", "text": row["name"]}]}]
    if kind == "invoice_ready":
        return [{"type": "header", "parameters": [{"type": "document", "document": {
                    "link": "https://cdn.example/inv.pdf", "filename": "invoice.pdf"}}]},
                {"type": "body", "parameters": [{"type": "text", "text": row["invoice"]},
                                                {"type": "text", "text": "$20.00"}]}]
    if kind == "coupon_reminder":
        return [{"type": "header", "parameters": [{"type": "text", "text": row["name"]}]},
                {"type": "body", "parameters": [{"type": "text", "text": row["code"]}, {"type": "text", "text": "3"}]},
                {"type": "button", "sub_type": "copy_code", "index": "0",
                 "parameters": [{"type": "coupon_code", "coupon_code": row["code"]}]},
                {"type": "button", "sub_type": "url", "index": "1", "parameters": [{"type": "text", "text": "SPRING"}]}]
    if kind == "visit_store":
        return [{"type": "header", "parameters": [{"type": "location", "location": LOCATION}]},
                {"type": "body", "parameters": [{"type": "text", "text": row["name"]}]}]
    assert kind == "login_code"
    return [{"type": "body", "parameters": [{"type": "text", "text": row["code"]}]},
            {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": row["code"]}]}]


def account_with_kinds(db: psycopg.Connection) -> f.Account:
    acc = f.account(db)
    for name, components in KINDS.items():
        f.template(db, acc, name, components)
    return acc


def mapping(kind: str, **changes: object) -> dict:
    spec = {"name": kind, "language": "en_US", **MAPPINGS[kind]}
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


def template_id(db: psycopg.Connection, acc: f.Account, name: str) -> int:
    return db.execute("SELECT template_id FROM core.templates WHERE tenant_id = %s AND name = %s",
                      (acc.tenant_id, name)).fetchone()[0]


def parameters(db: psycopg.Connection, tenant_id: int, tid: int) -> list[tuple]:
    return db.execute("SELECT component, index, parameter_name, kind, required, example, mapping "
                      "FROM api.template_parameters(%s, %s)", (tenant_id, tid)).fetchall()


# -- what a template needs ---------------------------------------------------------------

def test_template_parameters_describe_every_slot_of_every_component(db: psycopg.Connection) -> None:
    acc = account_with_kinds(db)
    assert parameters(db, acc.tenant_id, template_id(db, acc, "spring_sale")) == [
        ("header", 1, None, "image", True, "https://cdn.example/spring.jpg", "header"),
        ("body", 1, "first_name", "text", True, "Ana", "body.first_name"),
        ("body", 2, "discount", "text", True, "20%", "body.discount"),
        ("body", 3, "end_date", "text", True, "May 31", "body.end_date"),
        ("button", 0, None, "url_suffix", True, "spring", "buttons.0"),
        ("button", 1, None, "payload", False, None, "buttons.1")]
    assert parameters(db, acc.tenant_id, template_id(db, acc, "coupon_reminder")) == [
        ("header", 1, None, "text", True, "Pablo", "header"),
        ("body", 1, None, "text", True, "SUMMER20", "body[0]"),
        ("body", 2, None, "text", True, "10", "body[1]"),
        ("button", 0, None, "coupon_code", True, "SUMMER20", "buttons.0"),
        ("button", 1, None, "url_suffix", True, "SUMMER20", "buttons.1")]
    assert [r[3] for r in parameters(db, acc.tenant_id, template_id(db, acc, "visit_store"))] == ["location", "text"]
    assert [r[3] for r in parameters(db, acc.tenant_id, template_id(db, acc, "invoice_ready"))] == [
        "document", "text", "text"]  # the PHONE_NUMBER button takes nothing
    assert [(r[0], r[3], r[4]) for r in parameters(db, acc.tenant_id, template_id(db, acc, "login_code"))] == [
        ("body", "text", True), ("button", "otp", False)]  # the OTP button defaults to the body's code
    # A registered template's format comes from its placeholders.
    assert db.execute("SELECT name, parameter_format FROM core.templates WHERE tenant_id = %s "
                      "AND name IN ('spring_sale', 'coupon_reminder') ORDER BY name", (acc.tenant_id,)).fetchall() == [
        ("coupon_reminder", "POSITIONAL"), ("spring_sale", "NAMED")]


def test_another_tenants_template_parameters_are_not_found(db: psycopg.Connection) -> None:
    mine, theirs = f.account(db, with_templates=False), account_with_kinds(db)
    with pytest.raises(psycopg.Error) as caught:
        parameters(db, mine.tenant_id, template_id(db, theirs, "spring_sale"))
    assert caught.value.diag.sqlstate == "PW203"
    assert len(parameters(db, theirs.tenant_id, template_id(db, theirs, "spring_sale"))) == 6


def test_sync_keeps_parameter_format_quality_and_categories_as_meta_returns_them(db: psycopg.Connection) -> None:
    acc = f.account(db, with_templates=False)
    listed = [{"name": "spring_sale", "language": "en_US", "status": "APPROVED", "category": "MARKETING",
               "sub_category": "CUSTOM", "parameter_format": "NAMED", "id": "9001", "components": SPRING_SALE,
               "quality_score": {"score": "GREEN", "date": 1717000000}, "previous_category": "UTILITY"},
              {"name": "invoice_ready", "language": "en_US", "status": "REJECTED", "category": "UTILITY",
               "rejected_reason": "INVALID_FORMAT", "id": "9002", "components": INVOICE_READY}]
    synced = db.execute("SELECT * FROM api.sync_templates(%s, %s, %s::jsonb)",
                        (acc.tenant_id, acc.waba_id, orjson.dumps(listed).decode())).fetchone()
    assert synced == (2, 2, 0)
    with db.cursor(row_factory=dict_row) as cur:
        rows = {r["name"]: r for r in cur.execute("SELECT * FROM api.templates(%s)", (acc.tenant_id,))}
    assert {k: rows["spring_sale"][k] for k in ("parameter_format", "sub_category", "quality_score",
                                                 "previous_category", "rejected_reason", "components")} == {
        "parameter_format": "NAMED", "sub_category": "CUSTOM", "quality_score": "GREEN",
        "previous_category": "UTILITY", "rejected_reason": None, "components": SPRING_SALE}
    assert (rows["invoice_ready"]["parameter_format"], rows["invoice_ready"]["rejected_reason"]) == (
        "POSITIONAL", "INVALID_FORMAT")
    # The same list again changes nothing; a new quality score is a change.
    again = db.execute("SELECT * FROM api.sync_templates(%s, %s, %s::jsonb)",
                       (acc.tenant_id, acc.waba_id, orjson.dumps(listed).decode())).fetchone()
    assert again == (2, 0, 2)
    listed[0]["quality_score"] = {"score": "YELLOW"}
    assert db.execute("SELECT * FROM api.sync_templates(%s, %s, %s::jsonb)",
                      (acc.tenant_id, acc.waba_id, orjson.dumps(listed).decode())).fetchone() == (2, 1, 1)


# -- rendering ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(KINDS))
def test_each_template_kind_renders_exactly_as_meta_expects(db: psycopg.Connection, kind: str) -> None:
    acc = account_with_kinds(db)
    cid = f.create_campaign(db, acc, ROWS, [mapping(kind)], start=True)["campaign_id"]
    requests = sorted(f.claim_all(db), key=lambda r: r["body"]["to"])
    assert [r["body"] for r in requests] == [
        {"messaging_product": "whatsapp", "recipient_type": "individual", "to": row["phone"], "type": "template",
         "template": {"name": kind, "language": {"code": "en_US"}, "components": expected(kind, row)},
         "biz_opaque_callback_data": f"c{cid}:{req['outbound_id']}"}
        for row, req in zip(ROWS, requests, strict=True)]


def test_queue_messages_carry_only_the_rows_column_values(db: psycopg.Connection) -> None:
    acc = account_with_kinds(db)
    cid = f.create_campaign(db, acc, ROWS, [mapping("spring_sale"), mapping("coupon_reminder")])["campaign_id"]
    # Columns in name order, each once (coupon_reminder's code feeds the body and the button).
    assert [m["p"] for m in queued_messages(db, cid)] == [
        ["Ann", "ann", "https://cdn.example/a.jpg", "May 31"], ["CD34", "Bob"]]
    params, render, given = db.execute("SELECT params, render, mapping FROM core.campaign_templates "
                                       "WHERE campaign_id = %s AND variant = 1", (cid,)).fetchone()
    assert params == [{"column": "code"}, {"column": "name"}]
    assert given == MAPPINGS["coupon_reminder"]
    assert render[0] == {"type": "header", "parameters": [{"type": "text", "text": "", "$slot": 1, "$path": "{text}"}]}


def test_a_body_only_mapping_in_the_old_spelling_still_renders(db: psycopg.Connection) -> None:
    acc = f.account(db)
    f.create_campaign(db, acc, ROWS[:1], [{"name": "order_update", "language": "en_US",
                                           "params": [{"column": "name"}, {"value": "A-1"}, {"value": "ACME"}]}],
                      start=True)
    (request,) = f.claim_all(db)
    assert request["body"]["template"]["components"] == [{"type": "body", "parameters": [
        {"type": "text", "text": "Ann"}, {"type": "text", "text": "A-1"}, {"type": "text", "text": "ACME"}]}]


# NULL: as a campaign made before migration 0100 left it. An object is no skeleton either,
# and must not fail the claim that renders every row's skeleton beside it.
@pytest.mark.parametrize("render", [None, '{"type": "body"}'])
def test_a_campaign_queued_before_render_skeletons_still_renders_its_body(db: psycopg.Connection,
                                                                          render: str | None) -> None:
    acc = f.account(db)
    cid = f.create_campaign(db, acc, [{**ROWS[0], "order_no": "A-1"}], [f.order_update("ACME")],
                            start=True)["campaign_id"]
    # No skeleton, "p" the body parameters.
    db.execute("UPDATE core.campaign_templates SET render = %s::jsonb, params = %s::jsonb WHERE campaign_id = %s",
               (render, orjson.dumps([{"column": "name"}, {"column": "order_no"}, {"value": "ACME"}]).decode(), cid))
    queue = "q_" + f.campaign_queue(db, cid)
    db.execute(f"UPDATE pgmq.{queue} SET message = jsonb_set(message, '{{p}}', '[\"Ann\", \"A-9\", \"ACME\"]')")
    (request,) = f.claim_all(db)
    assert request["body"]["template"]["components"] == [{"type": "body", "parameters": [
        {"type": "text", "text": "Ann"}, {"type": "text", "text": "A-9"}, {"type": "text", "text": "ACME"}]}]


def test_render_components_fills_slots_and_leaves_constants(db: psycopg.Connection) -> None:
    skeleton = [{"type": "header", "parameters": [{"type": "image", "image": {}, "$slot": 1, "$path": "{image,link}"}]},
                {"type": "body", "parameters": [{"type": "text", "text": "x", "parameter_name": "a"},
                                                {"type": "text", "text": "", "parameter_name": "b",
                                                 "$slot": 0, "$path": "{text}"}]}]
    rendered = db.execute("SELECT core.render_components(%s::jsonb, %s::jsonb)",
                          (orjson.dumps(skeleton).decode(), '["B", "https://x/y.png"]')).fetchone()[0]
    assert rendered == [
        {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://x/y.png"}}]},
        {"type": "body", "parameters": [{"type": "text", "text": "x", "parameter_name": "a"},
                                        {"type": "text", "text": "B", "parameter_name": "b"}]}]
    # Inlinable into the claim: an immutable one-row set-returning SQL function without a
    # SET clause (a call per row that is not inlined cost half the rendering again).
    props = db.execute("SELECT provolatile, proretset, proconfig FROM pg_proc "
                       "WHERE oid = 'core.render_components'::regproc").fetchone()
    assert props == ("i", True, None)


def test_a_row_whose_mapped_column_is_empty_is_an_invalid_row_naming_the_column(db: psycopg.Connection) -> None:
    acc = account_with_kinds(db)
    rows = [dict(ROWS[0]), {**ROWS[1], "photo": " "}]
    created = f.create_campaign(db, acc, rows, [mapping("spring_sale")], on_invalid="skip")
    assert (created["total"], created["skipped_invalid"]) == (1, 1)
    assert created["invalid_rows"] == [{"row": 3, "value": "14155550101", "reason": 'column "photo" is empty'}]
    exc = create_error(db, acc, rows, [mapping("spring_sale")])
    assert exc.diag.sqlstate == "PW101" and 'column "photo" is empty' in exc.diag.message_primary


# -- mapping errors ----------------------------------------------------------------------

BAD_MAPPINGS = [  # (mapping, what the message names: template, component, parameter)
    (mapping("spring_sale", header=None), ["spring_sale", "header IMAGE", "not mapped"]),
    (mapping("spring_sale", header={"value": "not a link"}), ["spring_sale", "header IMAGE", "http(s) link"]),
    (mapping("spring_sale", header={"value": "https://x/a.jpg", "filename": "a.jpg"}),
     ["spring_sale", "header IMAGE", "neither"]),
    (mapping("spring_sale", header={"location": LOCATION}), ["spring_sale", "header IMAGE", "neither"]),
    (mapping("spring_sale", body={"first_name": {"column": "name"}, "discount": {"value": "5%"}}),
     ["spring_sale", "body parameter {{end_date}}", "not mapped"]),
    (mapping("spring_sale", body={**MAPPINGS["spring_sale"]["body"], "nickname": {"value": "x"}}),
     ["spring_sale", "body has no parameter {{nickname}}"]),
    (mapping("spring_sale", body=[{"column": "name"}, {"value": "5%"}, {"value": "May"}]),
     ["spring_sale", "NAMED", "object"]),
    (mapping("spring_sale", body={**MAPPINGS["spring_sale"]["body"], "discount": {"value": ""}}),
     ["spring_sale", "body parameter {{discount}}", "non-empty"]),
    (mapping("spring_sale", buttons={"1": {"value": "STOP"}}), ["spring_sale", "button 0 (URL suffix {{1}})", "not mapped"]),
    (mapping("spring_sale", buttons={"0": {"column": "path"}, "2": {"value": "x"}}),
     ["spring_sale", "button 2 takes no parameter"]),
    (mapping("spring_sale", buttons=[{"column": "path"}]), ["spring_sale", "buttons must be an object"]),
    (mapping("new_arrivals_video", header={"media_id": ""}), ["new_arrivals_video", "header VIDEO", "non-empty"]),
    (mapping("new_arrivals_video", body=[]), ["new_arrivals_video", "1 body parameters but 0", "{{1}} is not mapped"]),
    (mapping("new_arrivals_video", body=[{"column": "name"}, {"value": "x"}]),
     ["new_arrivals_video", "1 body parameters but 2", "{{2}} does not exist"]),
    (mapping("new_arrivals_video", body={"name": {"column": "name"}}), ["new_arrivals_video", "positional", "array"]),
    (mapping("invoice_ready", buttons={"0": {"value": "x"}}), ["invoice_ready", "button 0 takes no parameter"]),
    (mapping("invoice_ready", header={"value": "https://x/i.pdf", "filename": 7}), ["invoice_ready", "filename"]),
    (mapping("coupon_reminder", header={"media_id": "1"}), ["coupon_reminder", "header TEXT {{1}}", "neither"]),
    (mapping("coupon_reminder", buttons={"0": {"value": "SIXTEEN-CHARS-XX"}, "1": {"value": "SPRING"}}),
     ["coupon_reminder", "button 0 (copy code)", "15 characters"]),
    (mapping("coupon_reminder", buttons={"1": {"value": "SPRING"}}), ["coupon_reminder", "button 0 (copy code)", "not mapped"]),
    (mapping("coupon_reminder", buttons={"0": {"column": "code"}, "1": {"expr": "1"}}),
     ["coupon_reminder", "button 1 (URL suffix {{1}})", "neither"]),
    (mapping("visit_store", header={"location": {"latitude": "37", "longitude": 1}}),
     ["visit_store", "header LOCATION", "latitude"]),
    (mapping("visit_store", header={"location": {**LOCATION, "zip": "1"}}), ["visit_store", "header LOCATION"]),
    (mapping("login_code", header={"value": "x"}), ["login_code", "header takes no parameter"]),
    (mapping("login_code", footer={"value": "x"}), ["login_code", "unknown mapping key \"footer\""]),
    (mapping("login_code", params=[{"column": "code"}]), ["login_code", "both \"body\" and \"params\""]),
    ({"name": "confirmed", "language": "en_US", "body": [{"value": "x"}]}, ["confirmed", "body takes no parameter"]),
]


def test_every_kind_of_bad_mapping_is_refused_naming_component_and_parameter(db: psycopg.Connection) -> None:
    acc = account_with_kinds(db)
    for spec, named in BAD_MAPPINGS:
        exc = create_error(db, acc, ROWS, [spec])
        assert exc.diag.sqlstate == "PW102", (spec, exc)
        for part in named:
            assert part in exc.diag.message_primary, (spec, part, exc.diag.message_primary)
        assert exc.diag.message_hint, spec
        assert_nothing_left_behind(db)


def test_a_mapped_column_missing_from_the_list_is_refused_by_name(db: psycopg.Connection) -> None:
    acc = account_with_kinds(db)
    spec = mapping("spring_sale", buttons={"0": {"column": "sale_path"}})
    exc = create_error(db, acc, ROWS, [spec])
    assert exc.diag.sqlstate == "PW102" and '"sale_path"' in exc.diag.message_primary


def test_the_otp_button_may_be_mapped_on_its_own(db: psycopg.Connection) -> None:
    acc = account_with_kinds(db)
    f.create_campaign(db, acc, ROWS[:1], [mapping("login_code", buttons={"0": {"value": "ZZ99"}})], start=True)
    (request,) = f.claim_all(db)
    assert request["body"]["template"]["components"][1] == {
        "type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "ZZ99"}]}


# -- template errors pause the campaign --------------------------------------------------

PAUSING = [132000, 132001, 132005, 132007, 132012, 132015, 132016, 132068, 132069, 131053]


def test_template_and_media_errors_pause_campaigns(db: psycopg.Connection) -> None:
    rows = db.execute("SELECT code FROM core.meta_error_codes WHERE pauses_campaign AND code = ANY(%s) ORDER BY code",
                      (PAUSING,)).fetchall()
    assert [r[0] for r in rows] == sorted(PAUSING)


def test_a_template_error_pauses_naming_template_and_component_and_resume_sends_the_rest(
        db: psycopg.Connection) -> None:
    acc = account_with_kinds(db)
    rows = [{**ROWS[0], "phone": p} for p in f.phones(6)]
    cid = f.create_campaign(db, acc, rows, [mapping("spring_sale")], start=True)["campaign_id"]
    first, *others = f.claim_all(db, max_rows=3)
    result = f.err(first, 132012)
    result["error_message"] = ("(#132012) Parameter format does not match format in the created template: "
                               "header: Format mismatch, expected IMAGE, received UNKNOWN [OAuthException]")
    f.report(db, [result] + [f.ok(r) for r in others])
    status, reason = db.execute("SELECT status, pause_reason FROM core.campaigns WHERE campaign_id = %s",
                                (cid,)).fetchone()
    assert status == "paused"
    assert "132012" in reason and 'template "spring_sale" en_US' in reason and "component header" in reason
    message, details = db.execute(
        "SELECT message, details FROM core.notifications WHERE tenant_id = %s AND kind = 'campaign_paused'",
        (acc.tenant_id,)).fetchone()
    assert "spring_sale" in message and "header" in message and "expected IMAGE" in message
    assert {k: details[k] for k in ("template", "language", "component", "error_code")} == {
        "template": "spring_sale", "language": "en_US", "component": "header", "error_code": 132012}
    # Nothing more is claimed while paused; the failed one and the unsent stay queued.
    assert f.claim_all(db) == []
    states = dict(db.execute("SELECT state, count(*) FROM core.outbound_messages WHERE campaign_id = %s "
                             "GROUP BY state", (cid,)).fetchall())
    assert states == {"accepted": 2, "queued": 4}
    # Resumed (the mapping fixed at Meta's side): the four left go, and the campaign completes.
    db.execute("SELECT api.resume_campaign(%s, %s)", (acc.tenant_id, cid))
    rest = f.claim_all(db)
    assert len(rest) == 4 and first["outbound_id"] in {r["outbound_id"] for r in rest}
    assert rest[0]["body"]["template"]["components"] == expected("spring_sale", rows[0])
    f.report(db, [f.ok(r) for r in rest])
    assert db.execute("SELECT status, sent FROM core.campaigns WHERE campaign_id = %s", (cid,)).fetchone() == (
        "completed", 6)


def test_a_media_error_as_a_failed_status_pauses_the_campaign(db: psycopg.Connection) -> None:
    acc = account_with_kinds(db)
    rows = [{**ROWS[0], "phone": p} for p in f.phones(4)]
    cid = f.create_campaign(db, acc, rows, [mapping("spring_sale")], start=True)["campaign_id"]
    first, second = f.claim_all(db, max_rows=2)
    f.report(db, [f.ok(first, "wamid.A1"), f.ok(second, "wamid.A2")])
    status = {"id": "wamid.A1", "status": "failed", "timestamp": "1717000000", "recipient_id": rows[0]["phone"],
              "errors": [{"code": 131053, "title": "Media upload error",
                          "error_data": {"details": "header: media could not be downloaded"}}]}
    payload = {"object": "whatsapp_business_account", "entry": [{"id": acc.waba_id, "changes": [
        {"field": "messages", "value": {"messaging_product": "whatsapp",
                                        "metadata": {"display_phone_number": "15550001", "phone_number_id": acc.phone_number_id},
                                        "statuses": [status]}}]}]}
    db.execute("SELECT api.ingest_webhooks(%s::jsonb[])", ([Jsonb(payload)],))
    while db.execute("SELECT payloads FROM api.process_webhooks(100)").fetchone()[0]:
        pass
    status, reason = db.execute("SELECT status, pause_reason FROM core.campaigns WHERE campaign_id = %s",
                                (cid,)).fetchone()
    assert status == "paused" and "131053" in reason and "spring_sale" in reason and "header" in reason
    assert db.execute("SELECT count(*) FROM core.outbound_messages WHERE campaign_id = %s AND state = 'queued'",
                      (cid,)).fetchone() == (2,)


# -- template replies (bots, agents) render as campaigns do ------------------------------

NAMED_GREETING = [{"type": "BODY", "text": "Hello {{first_name}}, thanks for being with us since {{since}}."}]


def check_reply(db: psycopg.Connection, acc: f.Account, reply: dict) -> None:
    db.execute("SELECT core.check_reply(%s::jsonb, %s, %s)", (orjson.dumps(reply).decode(), acc.tenant_id, acc.waba_id))


def test_a_named_template_reply_carries_parameter_names(db: psycopg.Connection) -> None:
    acc = account_with_kinds(db)
    f.template(db, acc, "named_greeting", NAMED_GREETING)
    reply = {"type": "template", "name": "named_greeting", "language": "en_US",
             "params": {"first_name": "{{name}}", "since": "2021"}}
    check_reply(db, acc, reply)
    rendered = db.execute("SELECT core.render_reply(%s::jsonb, %s::jsonb)",
                          (orjson.dumps(reply).decode(), '{"name": "Ann"}')).fetchone()[0]
    assert rendered["template"]["components"] == [{"type": "body", "parameters": [
        {"type": "text", "parameter_name": "first_name", "text": "Ann"},
        {"type": "text", "parameter_name": "since", "text": "2021"}]}]
    for bad, named in [({**reply, "params": ["Ann", "2021"]}, "NAMED"),
                       ({**reply, "params": {"first_name": "Ann"}}, "{{since}}"),
                       ({"type": "template", "name": "spring_sale", "language": "en_US", "params": {}},
                        "header image")]:
        with pytest.raises(psycopg.Error) as caught:
            check_reply(db, acc, bad)
        assert caught.value.diag.sqlstate == "PW102" and named in caught.value.diag.message_primary, caught.value


def test_a_message_withheld_under_the_marketing_cap_is_queued_again_with_its_row_values(
        db: psycopg.Connection) -> None:
    acc = account_with_kinds(db)
    cid = f.create_campaign(db, acc, ROWS[:1], [mapping("spring_sale")], start=True)["campaign_id"]
    (original,) = queued_messages(db, cid)
    (request,) = f.claim_all(db)
    f.report(db, [f.ok(request, "wamid.CAP1")])
    status = {"id": "wamid.CAP1", "status": "failed", "timestamp": "1717000000", "recipient_id": ROWS[0]["phone"],
              "errors": [{"code": 131049, "title": "This message was not delivered to maintain healthy ecosystem engagement."}]}
    payload = {"object": "whatsapp_business_account", "entry": [{"id": acc.waba_id, "changes": [
        {"field": "messages", "value": {"messaging_product": "whatsapp",
                                        "metadata": {"display_phone_number": "15550001", "phone_number_id": acc.phone_number_id},
                                        "statuses": [status]}}]}]}
    db.execute("SELECT api.ingest_webhooks(%s::jsonb[])", ([Jsonb(payload)],))
    while db.execute("SELECT payloads FROM api.process_webhooks(100)").fetchone()[0]:
        pass
    (again,) = queued_messages(db, cid)
    assert again["p"] == original["p"] and again["o"] == original["o"]
    # And it renders as the first send did (constants from the skeleton, columns from "p").
    db.execute(f"UPDATE pgmq.q_{f.campaign_queue(db, cid)} SET vt = now()")
    (retry,) = f.claim_all(db)
    assert retry["body"]["template"] == request["body"]["template"]
