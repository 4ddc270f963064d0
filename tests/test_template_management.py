"""Template management in SQL: a definition checked against Meta's rules before Meta sees
it, the create and delete steps around Meta's answer, and what a template's review,
status, quality and category events do to the campaigns that send it. Tenant B never
sees, deletes or moves tenant A's template, whatever a webhook names."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import psycopg
import pytest
from psycopg.rows import dict_row

from pgwa.queries import queries
from tests import factories
from tests.test_webhooks_payloads import (
    WABA_ID,
    World,
    build_world,
    envelope,
    template_status_payload,
)

T0 = 1_750_000_000
META_ID = 594425479261596        # spring_sale's id in build_world

SPRING_SALE: dict[str, Any] = {
    "name": "spring_sale", "language": "en_US", "category": "marketing", "parameter_format": "NAMED",
    "components": [
        {"type": "HEADER", "format": "IMAGE", "example": {"header_handle": ["4::aW1hZ2U="]}},
        {"type": "BODY", "text": "Hi {{first_name}}, {{discount}} off everything until {{end_date}}.",
         "example": {"body_text_named_params": [
             {"param_name": "first_name", "example": "Ana"}, {"param_name": "discount", "example": "20%"},
             {"param_name": "end_date", "example": "May 1"}]}},
        {"type": "FOOTER", "text": "Reply STOP to opt out"},
        {"type": "BUTTONS", "buttons": [
            {"type": "URL", "text": "Shop now", "url": "https://shop.example.com/sale/{{1}}",
             "example": ["https://shop.example.com/sale/spring"]},
            {"type": "QUICK_REPLY", "text": "Stop promotions"}]}]}

ORDER_READY: dict[str, Any] = {
    "name": "order_ready", "language": "en_US", "category": "UTILITY",
    "components": [{"type": "BODY", "text": "Hi {{1}}, order {{2}} is ready.",
                    "example": {"body_text": [["Ana", "A-1"]]}}]}


def problems(db: psycopg.Connection, definition: Any) -> list[tuple[str, str, str]]:
    return db.execute("SELECT component, problem, fix FROM api.template_definition_problems(%s::jsonb)",
                      (orjson.dumps(definition).decode(),)).fetchall()


def refused(db: psycopg.Connection, sql: str, params: Any) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        db.execute(sql, params)
    return info.value


def prepare(db: psycopg.Connection, tenant_id: int, definition: dict, *, waba_id: str | None = None,
            number_id: int | None = None) -> dict:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries["prepare_template"], {
            "tenant_id": tenant_id, "definition": orjson.dumps(definition).decode(), "waba_id": waba_id,
            "number_id": number_id}).fetchone()


def submitted(db: psycopg.Connection, tenant_id: int, template_id: int, answer: dict) -> dict:
    return db.execute(queries["template_submitted"], {"tenant_id": tenant_id, "template_id": template_id,
                                                      "answer": orjson.dumps(answer).decode()}).fetchone()[0]


def notes(db: psycopg.Connection, tenant_id: int, kind: str | None = None) -> list[tuple[str, str, str]]:
    return db.execute("SELECT kind, severity, message FROM core.notifications WHERE tenant_id = %s "
                      "AND (%s::text IS NULL OR kind = %s) ORDER BY notification_id",
                      (tenant_id, kind, kind)).fetchall()


def status_of(db: psycopg.Connection, campaign_id: int) -> tuple[str, str | None]:
    return db.execute("SELECT status, pause_reason FROM core.campaigns WHERE campaign_id = %s",
                      (campaign_id,)).fetchone()


def template_row(db: psycopg.Connection, template_id: int) -> dict:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM core.templates WHERE template_id = %s", (template_id,)).fetchone()


def campaign_on(world: World, name: str, status: str, template_id: int) -> int:
    campaign_id = world.db.execute(
        "INSERT INTO core.campaigns (tenant_id, number_id, name, status, scheduled_at) "
        "VALUES (%s, %s, %s, %s, now() + interval '1 day') RETURNING campaign_id",
        (world.tenant_id, world.number_id, name, status)).fetchone()[0]
    world.db.execute("INSERT INTO core.campaign_templates (campaign_id, variant, template_id) VALUES (%s, 1, %s)",
                     (campaign_id, template_id))
    return campaign_id


# -- checking a definition ------------------------------------------------------------------

def test_a_definition_that_keeps_metas_rules_comes_back_as_meta_takes_it(db: psycopg.Connection) -> None:
    assert problems(db, SPRING_SALE) == []
    assert problems(db, ORDER_READY) == []
    checked = db.execute("SELECT api.check_template_definition(%s::jsonb)",
                         (orjson.dumps({**ORDER_READY, "components": [{**ORDER_READY["components"][0],
                                                                       "type": "body"}]}).decode(),)).fetchone()[0]
    assert checked["category"] == "UTILITY" and checked["parameter_format"] == "POSITIONAL"
    assert checked["components"][0]["type"] == "BODY"
    # Meta writes an authentication template's body itself; it needs its one OTP button.
    auth = {"name": "login_code", "language": "en_US", "category": "AUTHENTICATION",
            "components": [{"type": "BODY", "add_security_recommendation": True},
                           {"type": "BUTTONS", "buttons": [{"type": "OTP", "otp_type": "COPY_CODE"}]}]}
    assert problems(db, auth) == []
    assert [p[:2] for p in problems(db, {**auth, "components": auth["components"][:1]})] == [
        ("BUTTONS", "an AUTHENTICATION template needs exactly one OTP button")]


def _with(base: dict, path: tuple, value: Any) -> dict:
    """A deep copy of ``base`` with the value at ``path`` replaced (or removed: value ...)."""
    definition = copy.deepcopy(base)
    target = definition
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return definition


BAD = [
    # (definition, component, words of the problem, words of the fix)
    (_with(ORDER_READY, ("name",), "Order Ready"), "template", "lowercase letters", "no spaces"),
    (_with(ORDER_READY, ("name",), "x" * 513), "template", "1 to 512", "no spaces"),
    (_with(ORDER_READY, ("category",), "PROMOTION"), "template", "category", "MARKETING"),
    (_with(ORDER_READY, ("language",), "English"), "template", "language", "en_US"),
    (_with(ORDER_READY, ("components", 0, "text"), "{{1}}, order {{2}} is ready."), "BODY",
     "starts or ends with a variable", "words before"),
    (_with(ORDER_READY, ("components", 0, "text"), "Hi {{1}} {{2}} is ready."), "BODY",
     "next to each other", "Separate"),
    (_with(ORDER_READY, ("components", 0, "example"), ...), "BODY", "needs an example for each", '"body_text"'),
    (_with(ORDER_READY, ("components", 0, "example"), {"body_text": [["Ana"]]}), "BODY",
     "needs an example for each", '"body_text"'),
    (_with(ORDER_READY, ("components", 0, "text"), "Hi {{2}}, order {{1}} is ready."), "BODY",
     "numbered {{1}} to {{2}}", "Renumber"),
    (_with(ORDER_READY, ("components", 0, "text"), "Hi {{name}}, order {{2}} is ready."), "BODY",
     "named variable in a POSITIONAL", "NAMED"),
    (_with(SPRING_SALE, ("components", 1, "example", "body_text_named_params", 2), {"param_name": "end_date"}),
     "BODY", "no example for {{end_date}}", '"param_name": "end_date"'),
    (_with(SPRING_SALE, ("components", 0, "example"), ...), "HEADER", "IMAGE header needs an example",
     "header_handle"),
    (_with(SPRING_SALE, ("components", 0), {"type": "HEADER", "format": "TEXT", "text": "x" * 61}), "HEADER",
     "over Meta's 60", "60 characters"),
    (_with(SPRING_SALE, ("components", 0), {"type": "HEADER", "format": "TEXT", "text": "{{a}} and {{b}}!"}),
     "HEADER", "at most one", "move the others"),
    (_with(SPRING_SALE, ("components", 0), {"type": "HEADER", "format": "TEXT", "text": "Hey {{first_name}}"}),
     "HEADER", "no example for {{first_name}}", "header_text_named_params"),
    (_with(SPRING_SALE, ("components", 2, "text"), "Reply STOP, {{first_name}}"), "FOOTER", "no variables",
     "body"),
    (_with(SPRING_SALE, ("components", 3, "buttons", 0, "url"), "https://shop.example.com/{{1}}/sale"),
     "BUTTONS[0]", "at the end of its url", "sale/{{1}}"),
    (_with(SPRING_SALE, ("components", 3, "buttons", 0, "example"), ...), "BUTTONS[0]", "has no example",
     "sample suffix"),
    (_with(SPRING_SALE, ("components", 3, "buttons", 1), {"type": "OTP", "otp_type": "COPY_CODE"}), "BUTTONS[1]",
     "AUTHENTICATION template", "COPY_CODE or URL"),
    (_with(SPRING_SALE, ("components", 3, "buttons", 1, "text"), "x" * 26), "BUTTONS[1]", "1 to 25 characters",
     "text"),
    (_with(SPRING_SALE, ("components", 3, "buttons"), [
        {"type": "URL", "text": f"Go {i}", "url": "https://x.example.com"} for i in range(3)]), "BUTTONS",
     "more than 2 URL buttons", "at most 2"),
    (_with(SPRING_SALE, ("components", 1), {"type": "CAROUSEL", "cards": []}), "CAROUSEL", "is not a HEADER",
     "WhatsApp Manager"),
    (_with(ORDER_READY, ("components",), [{"type": "FOOTER", "text": "bye"}]), "BODY", "has no BODY",
     '"type": "BODY"'),
]


@pytest.mark.parametrize(("definition", "component", "problem", "fix"), BAD,
                         ids=[f"{c}:{p}" for _, c, p, _ in BAD])
def test_a_definition_meta_would_refuse_is_refused_naming_the_component_and_the_fix(
        db: psycopg.Connection, definition: dict, component: str, problem: str, fix: str) -> None:
    found = problems(db, definition)
    assert any(c == component and problem in p and fix in f for c, p, f in found), found
    err = refused(db, "SELECT api.check_template_definition(%s::jsonb)", (orjson.dumps(definition).decode(),))
    assert err.sqlstate == "PW130"
    assert err.diag.message_primary.startswith(f"template {definition.get('name', '?')}: ")
    assert problem in err.diag.message_detail


# -- creating ---------------------------------------------------------------------------------

def test_a_submission_claims_the_name_once_records_metas_answer_and_is_idempotent(db: psycopg.Connection) -> None:
    acc = factories.account(db, with_templates=False)
    claim = prepare(db, acc.tenant_id, ORDER_READY, number_id=acc.number_id)
    assert claim["submit"] and claim["status"] == "SUBMITTING" and claim["waba_id"] == acc.waba_id
    assert claim["access_token"] == acc.access_token and claim["request"]["category"] == "UTILITY"
    # A second request while Meta answers the first does not submit again.
    err = refused(db, queries["prepare_template"], {"tenant_id": acc.tenant_id, "definition": orjson.dumps(ORDER_READY).decode(),
                                                    "waba_id": acc.waba_id, "number_id": None})
    assert err.sqlstate == "PW301"
    template = submitted(db, acc.tenant_id, claim["template_id"], {"id": "1400000000000009", "status": "PENDING",
                                                                   "category": "UTILITY"})
    assert (template["status"], template["meta_template_id"]) == ("PENDING", "1400000000000009")
    assert "tenant_id" not in template
    # The same definition again: the template as it stands, nothing to submit.
    again = prepare(db, acc.tenant_id, ORDER_READY, waba_id=acc.waba_id)
    assert (again["submit"], again["template_id"], again["status"]) == (False, claim["template_id"], "PENDING")
    assert again["access_token"] is None
    # Another definition under the same name and language is a conflict, not an overwrite.
    err = refused(db, queries["prepare_template"], {
        "tenant_id": acc.tenant_id, "waba_id": acc.waba_id, "number_id": None,
        "definition": orjson.dumps(_with(ORDER_READY, ("components", 0, "text"), "Order {{1}} for {{2}} is ready."
                                         )).decode()})
    assert err.sqlstate == "PW302" and f"DELETE /v1/templates/{claim['template_id']}" in err.diag.message_hint
    # A bad definition claims nothing.
    err = refused(db, queries["prepare_template"], {"tenant_id": acc.tenant_id, "waba_id": acc.waba_id,
                                                    "number_id": None,
                                                    "definition": orjson.dumps(_with(ORDER_READY, ("name",), "Bad")).decode()})
    assert err.sqlstate == "PW130"
    assert db.execute("SELECT count(*) FROM core.templates WHERE tenant_id = %s", (acc.tenant_id,)).fetchone() == (1,)


def test_a_refused_submission_lets_go_of_the_claim(db: psycopg.Connection) -> None:
    acc = factories.account(db, with_templates=False)
    claim = prepare(db, acc.tenant_id, ORDER_READY, waba_id=acc.waba_id)
    assert db.execute(queries["template_refused"], {"tenant_id": acc.tenant_id,
                                                    "template_id": claim["template_id"]}).fetchone() == (True,)
    assert db.execute("SELECT count(*) FROM core.templates WHERE template_id = %s",
                      (claim["template_id"],)).fetchone() == (0,)
    # Corrected and submitted again: a new claim.
    assert prepare(db, acc.tenant_id, ORDER_READY, waba_id=acc.waba_id)["submit"]


def test_a_submission_names_a_waba_or_number_of_the_tenant(db: psycopg.Connection) -> None:
    a = factories.account(db, with_templates=False)
    b = factories.account(db, with_templates=False)
    for params, code in (({"waba_id": b.waba_id, "number_id": None}, "PW202"),
                         ({"waba_id": None, "number_id": b.number_id}, "PW202"),
                         ({"waba_id": None, "number_id": None}, "PW100"),
                         ({"waba_id": a.waba_id, "number_id": a.number_id}, "PW100")):
        err = refused(db, queries["prepare_template"], {"tenant_id": a.tenant_id,
                                                        "definition": orjson.dumps(ORDER_READY).decode(), **params})
        assert err.sqlstate == code, params
    assert db.execute("SELECT count(*) FROM core.templates").fetchone() == (0,)


# -- showing and deleting ---------------------------------------------------------------------

def test_a_template_shows_its_parameters_and_the_campaigns_that_send_it(db: psycopg.Connection) -> None:
    world = build_world(db)
    db.execute("UPDATE core.templates SET components = %s, parameter_format = 'NAMED' WHERE template_id = %s",
               (orjson.dumps(SPRING_SALE["components"]).decode(), world.template_ids[0]))
    detail = db.execute(queries["template_detail"], {"tenant_id": world.tenant_id,
                                                     "template_id": world.template_ids[0]}).fetchone()[0]
    assert detail["name"] == "spring_sale" and detail["components"] == SPRING_SALE["components"]
    params = [(p["component"], p["parameter_name"], p["kind"]) for p in detail["parameters"]]
    assert ("body", "first_name", "text") in params and params[0][0] == "header"
    assert [c["name"] for c in detail["campaigns"]] == ["Spring"]


def test_a_template_sent_by_campaigns_is_deleted_only_when_forced_and_they_pause(db: psycopg.Connection) -> None:
    world = build_world(db)
    spring = world.template_ids[0]
    later = campaign_on(world, "Later", "scheduled", spring)
    plan = {"tenant_id": world.tenant_id, "template_id": spring, "force": False}
    err = refused(db, queries["prepare_template_deletion"], plan)
    assert err.sqlstate == "PW330"
    assert '"Spring"' in err.diag.message_primary and '"Later"' in err.diag.message_primary
    with db.cursor(row_factory=dict_row) as cur:
        forced = cur.execute(queries["prepare_template_deletion"], {**plan, "force": True}).fetchone()
    assert forced["submit"] and forced["meta_template_id"] == str(META_ID) and forced["name"] == "spring_sale"
    assert sorted(forced["campaign_ids"]) == sorted([world.campaign_id, later])
    deleted = db.execute(queries["template_deleted"], {"tenant_id": world.tenant_id, "template_id": spring}).fetchone()[0]
    assert deleted["status"] == "DELETED" and deleted["deleted_at"] is not None
    for campaign_id in (world.campaign_id, later):
        status, reason = status_of(db, campaign_id)
        assert status == "paused" and "spring_sale (en_US) is DELETED" in reason
    paused = notes(db, world.tenant_id, "campaign_paused")
    assert len(paused) == 2 and all(n[1] == "critical" and "spring_sale" in n[2] for n in paused)
    # Deleted already: nothing to ask Meta, nothing raised twice. Meta's later event changes nothing.
    with db.cursor(row_factory=dict_row) as cur:
        assert cur.execute(queries["prepare_template_deletion"], plan).fetchone()["submit"] is False
    world.deliver(template_status_payload("PENDING_DELETION", template_id=META_ID, name="spring_sale",
                                          entry_time=T0 + 10**6))
    assert template_row(db, spring)["status"] == "DELETED"


def test_a_disabled_template_or_one_without_metas_id_is_not_deleted(db: psycopg.Connection) -> None:
    world = build_world(db)
    db.execute("UPDATE core.campaigns SET status = 'completed' WHERE campaign_id = %s", (world.campaign_id,))
    db.execute("UPDATE core.templates SET status = 'DISABLED' WHERE template_id = %s", (world.template_ids[0],))
    db.execute("UPDATE core.templates SET meta_template_id = NULL WHERE template_id = %s", (world.template_ids[1],))
    for template_id, words in ((world.template_ids[0], "DISABLED"), (world.template_ids[1], "no Meta id")):
        err = refused(db, queries["prepare_template_deletion"],
                      {"tenant_id": world.tenant_id, "template_id": template_id, "force": True})
        assert err.sqlstate == "PW301" and words in err.diag.message_primary


def test_tenant_b_neither_sees_nor_changes_tenant_as_template_by_its_id(db: psycopg.Connection) -> None:
    world = build_world(db)
    b = factories.account(db, with_templates=False)
    spring = world.template_ids[0]
    before = template_row(db, spring)
    for name, extra in (("template_detail", {}), ("prepare_template_deletion", {"force": True}),
                        ("template_deleted", {}), ("template_refused", {}),
                        ("template_submitted", {"answer": '{"id": "1", "status": "APPROVED"}'})):
        err = refused(db, queries[name], {"tenant_id": b.tenant_id, "template_id": spring, **extra})
        assert err.sqlstate == "PW203", name
    assert template_row(db, spring) == before
    assert status_of(db, world.campaign_id)[0] == "running"
    listed = db.execute(queries["templates"], {"tenant_id": b.tenant_id, "waba_id": None, "status": None}).fetchall()
    assert listed == []


# -- review and status events -----------------------------------------------------------------

def rejected(template_id: int, name: str, at: int) -> dict:
    payload = template_status_payload("REJECTED", template_id=template_id, name=name, reason="INVALID_FORMAT",
                                      entry_time=at)
    payload["entry"][0]["changes"][0]["value"]["rejection_info"] = {
        "reason": "Your template has parameters placed next to each other without text between them.",
        "recommendation": "Separate parameters with descriptive text."}
    return payload


def test_a_paused_template_pauses_its_running_and_scheduled_campaigns_and_says_why(db: psycopg.Connection) -> None:
    world = build_world(db)
    spring = world.template_ids[0]
    later = campaign_on(world, "Later", "scheduled", spring)
    done = campaign_on(world, "Done", "completed", spring)
    other = campaign_on(world, "Other", "running", world.template_ids[1])
    world.deliver(template_status_payload("PAUSED", template_id=META_ID, name="spring_sale",
                                          reason="NONE", entry_time=T0))
    assert template_row(db, spring)["status"] == "PAUSED"
    for campaign_id in (world.campaign_id, later):
        status, reason = status_of(db, campaign_id)
        assert status == "paused" and reason == "template spring_sale (en_US) is PAUSED: FIRST_PAUSE: " \
            "Your WhatsApp message template has been paused for 3 hours."
    assert status_of(db, done)[0] == "completed" and status_of(db, other)[0] == "running"
    paused = notes(db, world.tenant_id, "campaign_paused")
    assert [n[2].split(":")[0] for n in paused] == ['Campaign "Spring" paused', 'Campaign "Later" paused']
    assert all("template spring_sale (en_US) is PAUSED: FIRST_PAUSE" in n[2] and "stay queued" in n[2]
               for n in paused)
    # Redelivered: nothing paused or raised twice.
    count = len(notes(db, world.tenant_id))
    world.deliver(template_status_payload("PAUSED", template_id=META_ID, name="spring_sale", entry_time=T0))
    assert len(notes(db, world.tenant_id)) == count

    # Back to APPROVED: the paused campaigns are told, and stay paused.
    world.deliver(template_status_payload("REINSTATED", template_id=META_ID, name="spring_sale", entry_time=T0 + 60))
    assert template_row(db, spring)["status"] == "APPROVED"
    assert status_of(db, world.campaign_id)[0] == "paused" and status_of(db, later)[0] == "paused"
    resumable = notes(db, world.tenant_id, "campaign_resumable")
    assert len(resumable) == 2 and all(n[1] == "info" and "can be resumed" in n[2] and "spring_sale" in n[2]
                                       for n in resumable)
    # Resumed by hand (with no message left, it completes at once).
    db.execute("SELECT api.resume_campaign(%s, %s)", (world.tenant_id, world.campaign_id))
    assert status_of(db, world.campaign_id) == ("completed", None)


@pytest.mark.parametrize("event", ["REJECTED", "DISABLED", "DELETED", "PENDING_DELETION", "ARCHIVED"])
def test_every_event_that_stops_a_template_pauses_its_campaigns(db: psycopg.Connection, event: str) -> None:
    world = build_world(db)
    payload = (rejected(META_ID, "spring_sale", T0) if event == "REJECTED"
               else template_status_payload(event, template_id=META_ID, name="spring_sale", entry_time=T0))
    world.deliver(payload)
    status, reason = status_of(db, world.campaign_id)
    assert status == "paused" and f"spring_sale (en_US) is {event}" in reason
    [(_, severity, message)] = notes(db, world.tenant_id, "campaign_paused")
    assert severity == "critical" and event in message
    if event == "REJECTED":
        assert template_row(db, world.template_ids[0])["rejected_reason"] == (
            "INVALID_FORMAT: Your template has parameters placed next to each other without text between them.")
        assert "INVALID_FORMAT" in message


def test_a_review_result_sets_the_status_and_approval_is_news(db: psycopg.Connection) -> None:
    world = build_world(db)
    claim = prepare(db, world.tenant_id, ORDER_READY, waba_id=WABA_ID)
    submitted(db, world.tenant_id, claim["template_id"], {"id": "1400000000000004", "status": "PENDING"})
    claim_b = prepare(db, world.tenant_id, {**ORDER_READY, "name": "cart_reminder_v3"}, waba_id=WABA_ID)
    submitted(db, world.tenant_id, claim_b["template_id"], {"id": "1400000000000005", "status": "PENDING"})
    world.deliver(template_status_payload("APPROVED", template_id=1400000000000004, name="order_ready",
                                          entry_time=T0),
                  rejected(1400000000000005, "cart_reminder_v3", T0))
    assert template_row(db, claim["template_id"])["status"] == "APPROVED"
    row = template_row(db, claim_b["template_id"])
    assert row["status"] == "REJECTED" and row["rejected_reason"].startswith("INVALID_FORMAT: ")
    kinds = [(k, s) for k, s, _ in notes(db, world.tenant_id, "template_status")]
    assert sorted(kinds) == [("template_status", "info"), ("template_status", "warning")]
    # Nothing the review says moves a running campaign of other templates.
    assert status_of(db, world.campaign_id)[0] == "running"


def test_a_flagged_template_warns_and_keeps_its_status(db: psycopg.Connection) -> None:
    world = build_world(db)
    world.deliver(template_status_payload("FLAGGED", template_id=META_ID, name="spring_sale", entry_time=T0))
    assert template_row(db, world.template_ids[0])["status"] == "APPROVED"
    [(kind, severity, message)] = notes(db, world.tenant_id)
    assert (kind, severity) == ("template_status", "warning") and "FLAGGED" in message
    assert status_of(db, world.campaign_id)[0] == "running"


# -- quality and category -----------------------------------------------------------------------

def quality(score: str, at: int, previous: str | None = None, *, waba_id: str = WABA_ID,
            template_id: int = META_ID, name: str = "spring_sale") -> dict:
    value = {"new_quality_score": score, "message_template_id": template_id, "message_template_name": name,
             "message_template_language": "en_US"}
    if previous:
        value["previous_quality_score"] = previous
    return envelope("message_template_quality_update", value, waba_id=waba_id, entry_time=at)


def test_a_quality_drop_is_stored_and_warns_the_running_campaigns(db: psycopg.Connection) -> None:
    world = build_world(db)
    done = campaign_on(world, "Done", "completed", world.template_ids[0])
    world.deliver(quality("GREEN", T0))
    assert template_row(db, world.template_ids[0])["quality_score"] == "GREEN"
    assert notes(db, world.tenant_id) == []
    world.deliver(quality("YELLOW", T0 + 60, "GREEN"), quality("YELLOW", T0 + 60, "GREEN"))
    warned = notes(db, world.tenant_id, "campaign_template_quality")
    assert [(s, m) for _, s, m in warned] == [
        ("warning", ('Campaign "Spring" (running): template spring_sale (en_US) quality dropped from GREEN to '
                     'YELLOW: watch the replies and blocks'))]
    assert len(notes(db, world.tenant_id, "template_quality")) == 1
    world.deliver(quality("RED", T0 + 120, "YELLOW"))
    assert [s for _, s, _ in notes(db, world.tenant_id, "campaign_template_quality")] == ["warning", "critical"]
    assert all("Done" not in m for _, _, m in notes(db, world.tenant_id))
    assert status_of(db, done)[0] == "completed"
    # An older event changes nothing; a rise warns nobody.
    world.deliver(quality("GREEN", T0 + 90, "YELLOW"))
    assert template_row(db, world.template_ids[0])["quality_score"] == "RED"
    world.deliver(quality("GREEN", T0 + 180, "RED"))
    assert template_row(db, world.template_ids[0])["quality_score"] == "GREEN"
    assert len(notes(db, world.tenant_id)) == 4


def test_a_completed_category_change_keeps_the_previous_category(db: psycopg.Connection) -> None:
    world = build_world(db)
    db.execute("UPDATE core.templates SET category = 'UTILITY' WHERE template_id = %s", (world.template_ids[0],))
    world.deliver(envelope("template_category_update", {
        "message_template_id": META_ID, "message_template_name": "spring_sale",
        "message_template_language": "en_US", "previous_category": "UTILITY", "new_category": "MARKETING"},
        entry_time=T0))
    row = template_row(db, world.template_ids[0])
    assert (row["category"], row["previous_category"]) == ("MARKETING", "UTILITY")
    assert [k for k, _, _ in notes(db, world.tenant_id)] == ["template_category", "campaign_template_category"]


# -- isolation ----------------------------------------------------------------------------------

def test_events_through_waba_x_never_touch_tenant_bs_template_of_the_same_name(db: psycopg.Connection) -> None:
    world = build_world(db)
    b = factories.account(db, with_templates=False)
    b_spring = db.execute("SELECT api.upsert_template(%s, %s, 'spring_sale', 'en_US', '[]', 'APPROVED', "
                          "'MARKETING', %s)", (b.tenant_id, b.waba_id, str(META_ID))).fetchone()[0]
    b_campaign = db.execute("INSERT INTO core.campaigns (tenant_id, number_id, name, status) "
                            "VALUES (%s, %s, 'B spring', 'running') RETURNING campaign_id",
                            (b.tenant_id, b.number_id)).fetchone()[0]
    db.execute("INSERT INTO core.campaign_templates (campaign_id, variant, template_id) VALUES (%s, 1, %s)",
               (b_campaign, b_spring))
    before = template_row(db, b_spring)
    # Through A's WABA, naming the template B also has (same name, same id).
    world.deliver(template_status_payload("PAUSED", template_id=META_ID, name="spring_sale", entry_time=T0),
                  quality("RED", T0, "GREEN"))
    assert template_row(db, world.template_ids[0])["status"] == "PAUSED"
    assert template_row(db, b_spring) == before
    assert status_of(db, b_campaign) == ("running", None)
    assert notes(db, b.tenant_id) == []
    # Through a WABA nobody registered: nothing at all.
    world.deliver(template_status_payload("DISABLED", template_id=META_ID, name="spring_sale", entry_time=T0 + 60)
                  | {"entry": [{**template_status_payload("DISABLED", template_id=META_ID, name="spring_sale",
                                                          entry_time=T0 + 60)["entry"][0], "id": "999999999"}]})
    assert template_row(db, b_spring) == before
    assert template_row(db, world.template_ids[0])["status"] == "PAUSED"


def test_a_waba_moved_to_tenant_b_does_not_hand_it_tenant_as_templates(db: psycopg.Connection) -> None:
    a = factories.account(db, with_templates=False)
    b = factories.account(db, with_templates=False)
    claim = prepare(db, a.tenant_id, ORDER_READY, waba_id=a.waba_id)
    submitted(db, a.tenant_id, claim["template_id"], {"id": "1400000000000011", "status": "PENDING"})
    db.execute("SELECT api.transfer_number(%s, %s, NULL)", (a.phone_number_id, b.tenant_id))
    err = refused(db, queries["prepare_template"], {"tenant_id": b.tenant_id, "waba_id": a.waba_id, "number_id": None,
                                                    "definition": orjson.dumps(ORDER_READY).decode()})
    assert err.sqlstate == "PW302" and "another tenant" in err.diag.message_primary
    assert "/v1/templates/" not in (err.diag.message_hint or "")     # A's template id is not given away
    assert template_row(db, claim["template_id"])["tenant_id"] == a.tenant_id


def test_a_submission_whose_answer_was_lost_may_go_again_after_the_timeout(db: psycopg.Connection) -> None:
    acc = factories.account(db, with_templates=False)
    body = orjson.dumps(ORDER_READY).decode()
    call = "SELECT submit, template_id FROM api.prepare_template(%s, %s::jsonb, %s, NULL, %s)"
    t0 = factories.clock(db)
    first = db.execute(call, (acc.tenant_id, body, acc.waba_id, t0)).fetchone()
    assert first[0]
    err = refused(db, call, (acc.tenant_id, body, acc.waba_id, factories.later(t0, 60)))
    assert err.sqlstate == "PW301"
    # The server died while Meta answered: two minutes on, the claim is taken again.
    assert db.execute(call, (acc.tenant_id, body, acc.waba_id, factories.later(t0, 121))).fetchone() == first
