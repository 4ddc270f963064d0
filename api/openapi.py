"""The OpenAPI 3.1 document of the JSON API, served at /openapi.json.

Operations are written here by hand (small schema dicts); each names the ``api``
function it calls (``x-pgwa-function``) and takes that function's ``COMMENT ON`` text as
its description, loaded at start-up from ``api.functions()``: the database documents
itself once, and this document and ``\\dd api.*`` never disagree. The ranges of the LLM
settings come the same way, from ``api.llm_bounds()``, the rows ``api.configure_llm``
checks against.
"""

from __future__ import annotations

from typing import Any

VERSION = "0.1.0"

_INT = {"type": "integer", "minimum": 1, "maximum": (1 << 63) - 1}
_TS = {"type": ["string", "null"], "format": "date-time"}
TIERS = ["TIER_50", "TIER_250", "TIER_1K", "TIER_2K", "TIER_10K", "TIER_100K", "TIER_UNLIMITED"]
_DAYS_AT_LIMIT = {"type": ["integer", "null"],
                  "description": "Days the messages need at the portfolio's messaging limit (unique users "
                                 "per moving 24 hours); null: unlimited."}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str] | None = None, **properties: Any) -> dict:
    schema: dict = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _list(item: str) -> dict:
    return {"type": "array", "items": _ref(item)}


def _page(item: str) -> dict:
    return _obj(["data", "next_before_id"], data=_list(item),
                next_before_id={"type": ["integer", "null"],
                                "description": "Pass as before_id for the next page; null on the last."})


SCHEMAS: dict[str, dict] = {
    "Error": _obj(["error"], error=_obj(
        ["code", "name", "message"],
        code={"type": "string", "description": "SQLSTATE, e.g. PW201 (see GET core.error_codes)."},
        name={"type": "string"}, message={"type": "string"}, hint={"type": ["string", "null"]},
        detail={"description": "PW101 only: the invalid rows (row, value, reason)."})),
    "Number": _obj(number_id=_INT, phone_number_id={"type": "string"}, waba_id={"type": "string"},
                   display_phone_number={"type": ["string", "null"]}, throughput_mps={"type": "integer"},
                   rate_mps={"type": "number"}, quality_rating={"type": ["string", "null"]},
                   paused_reason={"type": ["string", "null"]}, has_app_secret={"type": "boolean"},
                   created_at=_TS),
    "Portfolio": _obj(portfolio_id=_INT, business_id={"type": "string", "description":
                                                          "Meta's business portfolio id (until known, the WABA's)."},
                      tier={"type": ["string", "null"], "enum": [*TIERS, None]},
                      messaging_limit={"type": ["integer", "null"],
                                       "description": "Unique users per moving 24 hours; null: unlimited."},
                      used_24h={"type": ["integer", "null"], "description":
                                "Unique users messaged business-initiated in the last 24 hours (null: unlimited)."},
                      budget_wait_until={**_TS, "description": "Messages to new users wait until then; null: "
                                                               "they do not wait."},
                      number_ids={"type": "array", "items": _INT}),
    "Template": _obj(template_id=_INT, waba_id={"type": "string"}, name={"type": "string"},
                     language={"type": "string"}, category={"type": ["string", "null"]},
                     status={"type": "string"}, body_param_count={"type": "integer"},
                     components={"type": "array"}, meta_template_id={"type": ["string", "null"]},
                     updated_at=_TS),
    "TemplateDetail": {"type": "object", "description": "A template (the fields of Template and more: "
                       "parameter_format, quality_score, rejected_reason, previous_category, ...); GET adds "
                       "parameters and campaigns.", "properties": {
                           "template_id": _INT, "status": {"type": "string"}, "components": {"type": "array"},
                           "parameters": {"type": "array", "items": {"type": "object"}},
                           "campaigns": {"type": "array", "items": {"type": "object"}}}},
    "Contact": _obj(contact_id=_INT, wa_id={"type": ["string", "null"]}, user_id={"type": ["string", "null"]},
                    name={"type": ["string", "null"]}, profile_name={"type": ["string", "null"]},
                    attributes={"type": "object"}, opted_out={"type": "boolean"}, opted_out_at=_TS,
                    last_inbound_at=_TS, created_at=_TS),
    "ContactsImported": _obj(staged={"type": "integer"}, inserted={"type": "integer"},
                             updated={"type": "integer"}, unchanged={"type": "integer"},
                             skipped_invalid={"type": "integer"}, duplicates_removed={"type": "integer"},
                             invalid_rows={"type": "array"}),
    "Campaign": _obj(campaign_id=_INT, name={"type": "string"}, status={"type": "string"},
                     number_id=_INT, total={"type": "integer"}, queued={"type": "integer"},
                     sent={"type": "integer"}, delivered={"type": "integer"}, read={"type": "integer"},
                     replied={"type": "integer"}, failed={"type": "integer"}, cancelled={"type": "integer"},
                     progress={"type": "number"}, created_at=_TS, started_at=_TS, completed_at=_TS),
    "CampaignCreated": _obj(campaign_id=_INT, status={"type": "string"}, total={"type": "integer"},
                            skipped_invalid={"type": "integer"}, skipped_opted_out={"type": "integer"},
                            duplicates_removed={"type": "integer"}, invalid_rows={"type": "array"},
                            days_at_limit=_DAYS_AT_LIMIT),
    "CampaignStats": _obj(campaign_id=_INT, name={"type": "string"}, status={"type": "string"},
                          total={"type": "integer"}, queued={"type": "integer"}, sent={"type": "integer"},
                          delivered={"type": "integer"}, read={"type": "integer"},
                          replied={"type": "integer"}, failed={"type": "integer"},
                          delivery_rate={"type": ["number", "null"]}, read_rate={"type": ["number", "null"]},
                          reply_rate={"type": ["number", "null"]}, failure_rate={"type": ["number", "null"]},
                          templates={"type": "array"}, errors={"type": "array"},
                          errors_by_category={"type": "array"}, timeline={"type": "array"},
                          waiting_for={"type": ["string", "null"], "enum": ["messaging_limit", None],
                                       "description": "messaging_limit: the portfolio's budget of new users "
                                                      "is spent; the campaign resumes at resumes_at."},
                          resumes_at=_TS,
                          messaging_limit={"type": ["integer", "null"],
                                           "description": "The portfolio's; null: unlimited."},
                          days_at_limit=_DAYS_AT_LIMIT,
                          retrying={"type": ["integer", "null"], "description":
                                    "Messages Meta withheld under its per-user marketing cap (131049), "
                                    "tried again a day later."}),
    "CampaignStatus": _obj(["campaign_id", "status"], campaign_id=_INT, status={"type": "string"}),
    "CounterDrift": _obj(scope={"type": "string"}, key={"type": "string"}, counter={"type": "string"},
                         maintained={"type": "integer"}, actual={"type": "integer"},
                         drift={"type": "integer"}, fixed={"type": "boolean"}),
    "Conversation": _obj(contact_id=_INT, wa_id={"type": ["string", "null"]}, user_id={"type": ["string", "null"]},
                         name={"type": ["string", "null"]}, profile_name={"type": ["string", "null"]},
                         opted_out={"type": "boolean"}, last_message_id=_INT,
                         last_direction={"type": "string"}, last_type={"type": "string"},
                         last_body={"type": ["string", "null"]}, last_message_at=_TS,
                         unread={"type": "integer"}, window_open={"type": "boolean"}, window_closes_at=_TS,
                         assigned_to={"type": ["string", "null"]}, assigned_at=_TS,
                         needs_human={"type": "boolean"}, needs_human_reason={"type": ["string", "null"]}),
    "InboxMessage": _obj(message_id=_INT, direction={"type": "string", "enum": ["in", "out"]},
                         type={"type": "string"}, body={"type": ["string", "null"]}, payload={"type": "object"},
                         wamid={"type": ["string", "null"]}, context_wamid={"type": ["string", "null"]},
                         created_at=_TS, outbound_id={"type": ["integer", "null"]},
                         kind={"type": ["string", "null"]}, state={"type": ["string", "null"]},
                         error_code={"type": ["integer", "null"]}, error_detail={"type": ["string", "null"]},
                         campaign_id={"type": ["integer", "null"]}),
    "ReplyQueued": _obj(outbound_id=_INT, message_id=_INT, window_closes_at=_TS),
    "MessageSent": _obj(outbound_id=_INT, number_id=_INT, contact_id=_INT, recipient={"type": "string"},
                        state={"type": "string"}, replayed={"type": "boolean", "description":
                                                            "true: an earlier request with this Idempotency-Key sent it."},
                        window_closes_at=_TS, queued_at=_TS),
    "Message": _obj(outbound_id=_INT, number_id=_INT, contact_id=_INT, recipient={"type": "string"},
                    kind={"type": "string"}, campaign_id={"type": ["integer", "null"]}, state={"type": "string"},
                    wamid={"type": ["string", "null"]}, attempts={"type": "integer"},
                    error={"type": ["object", "null"]}, idempotency_key={"type": ["string", "null"]},
                    history={"type": "array", "items": _obj(state={"type": "string"}, at=_TS)}),
    "BotRule": _obj(rule_id=_INT, number_id=_INT, kind={"type": "string"}, pattern={"type": "string"},
                    priority={"type": "integer"}, reply={"type": "object"}, enabled={"type": "boolean"},
                    created_at=_TS, updated_at=_TS),
    "OptOutSettings": _obj(tenant_id=_INT, opt_out_keywords={"type": "array", "items": {"type": "string"}},
                           opt_in_keywords={"type": "array", "items": {"type": "string"}},
                           opt_out_reply={"type": ["string", "null"]}, opt_in_reply={"type": ["string", "null"]}),
    "LlmSettings": _obj(number_id=_INT, llm_enabled={"type": "boolean"}, system_prompt={"type": ["string", "null"]},
                        daily_limit={"type": ["integer", "null"]}, context_messages={"type": ["integer", "null"]},
                        number_daily_limit={"type": ["integer", "null"]}),
    "Notification": _obj(notification_id=_INT, kind={"type": "string"}, severity={"type": "string"},
                         message={"type": "string"}, details={"type": "object"}, created_at=_TS, read_at=_TS),
    "ApiKey": _obj(api_key_id=_INT, name={"type": "string"}, key_prefix={"type": "string"},
                   created_at=_TS, revoked_at=_TS, scope={"type": "string", "enum": ["read", "send", "admin"]},
                   expires_at=_TS, last_used_at={**_TS, "description": "Moved at most once a minute."},
                   rate_limit_per_minute={"type": ["integer", "null"],
                                          "description": "null: the platform's default."}),
    "Media": _obj(media_id=_INT, number_id=_INT, direction={"type": "string", "enum": ["in", "out"]},
                  media_type={"type": "string", "enum": ["image", "audio", "video", "document", "sticker"]},
                  mime_type={"type": ["string", "null"]}, size_bytes={"type": ["integer", "null"]},
                  sha256={"type": ["string", "null"]}, filename={"type": ["string", "null"]},
                  caption={"type": ["string", "null"]},
                  state={"type": "string", "enum": ["uploaded", "pending", "stored", "failed"]},
                  meta_media_id={"type": "string"}, message_id={"type": ["integer", "null"]},
                  attempts={"type": "integer"}, last_error={"type": ["string", "null"]}, created_at=_TS,
                  expires_at=_TS, stored_at=_TS, reused={"type": "boolean"}),
    "ApiKeyCreated": _obj(api_key_id=_INT, tenant_id=_INT, name={"type": "string"},
                          key={"type": "string", "description": "Shown this once."},
                          key_prefix={"type": "string"}, created_at=_TS,
                          scope={"type": "string", "enum": ["read", "send", "admin"]}, expires_at=_TS,
                          rate_limit_per_minute={"type": ["integer", "null"]}),
}

_ERRORS = {str(status): {"description": text, "content": {"application/json": {"schema": _ref("Error")}}}
           for status, text in ((400, "Bad input (PW1nn, 22xxx)"),
                                (401, "No API key, or one unknown, revoked or expired (PW401)"),
                                (403, "The key lacks the route's scope (PW410)"),
                                (404, "Not found, or another tenant's (PW2nn)"),
                                (409, "State conflict (PW3nn)"), (422, "Invalid rows or templates (PW1nn)"))}
_ERRORS["429"] = {"description": "The key is over its request rate limit (PW429); retry after Retry-After seconds",
                  "headers": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}},
                  "content": {"application/json": {"schema": _ref("Error")}}}
_SCOPE_TEXT = {"read": "Needs an API key with scope read, send or admin.",
               "send": "Needs an API key with scope send or admin.",
               "admin": "Needs an API key with scope admin."}


def _param(name: str, where: str, schema: dict, description: str = "", required: bool = False) -> dict:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema,
            "description": description}


_LIMIT = _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50})
_BEFORE = _param("before_id", "query", _INT, "Keyset: the smallest id of the previous page.")
_CAMPAIGN_ID = _param("campaign_id", "path", _INT)
_NUMBER_ID = _param("number_id", "path", _INT)
_CONVERSATION = [_NUMBER_ID, _param("contact_id", "path", _INT)]
_KEYWORDS = {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 64}, "maxItems": 100}


def _keyset(item: str, **cursor: dict) -> dict:
    return _obj(["data", "next"], data=_list(item), next={
        "oneOf": [{"type": "null"}, _obj(list(cursor), **cursor)],
        "description": "Pass these as query parameters for the next page; null on the last."})


def _json_body(schema: dict, required: bool = True) -> dict:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _csv_body(description: str) -> dict:
    return {"required": True, "description": description, "content": {
        "text/csv": {"schema": {"type": "string"}},
        "multipart/form-data": {"schema": _obj(["file"], file={"type": "string", "format": "binary"},
                                               params={"type": "string", "description": "JSON object"})},
    }}


def _op(function: str, summary: str, response: dict | None, *, status: int = 200, params: list | None = None,
        body: dict | None = None, media: str = "application/json") -> dict:
    op: dict = {"summary": summary, "x-pgwa-function": function, "parameters": params or [],
                "responses": {str(status): {"description": "OK", "content": {media: {"schema": response or {}}}},
                              **_ERRORS}}
    if body:
        op["requestBody"] = body
    return op


def _llm_body(bounds: dict[str, dict]) -> dict:
    """configure_llm's body, each bounded setting with its range and meaning from its row of
    ``api.llm_bounds()`` (read at start-up: the ranges are written nowhere else)."""
    fields: dict[str, dict] = {"system_prompt": {"type": "string"}, "daily_limit": {"type": "integer"},
                               "context_messages": {"type": "integer"}, "number_daily_limit": {"type": "integer"}}
    for name, bound in bounds.items():
        if name in fields:
            low, high = ("minLength", "maxLength") if bound["type"] == "string" else ("minimum", "maximum")
            fields[name] = {**fields[name], low: bound["minimum"], high: bound["maximum"],
                            "description": f"{bound['meaning']}."}
    return _json_body(_obj(enabled={"type": "boolean"}, **fields))


_CAMPAIGN_QUERY = [
    _param("number_id", "query", _INT, "The number to send from (or in Pgwa-Campaign / params)."),
    _param("name", "query", {"type": "string"}),
    _param("templates", "query", {"type": "string"},
           'JSON: [{"name": "order_update", "language": "en_US", "params": [{"column": "name"}, {"value": "ACME"}]}]'),
    _param("on_invalid", "query", {"type": "string", "enum": ["reject", "skip"]}),
    _param("scheduled_at", "query", {"type": "string", "format": "date-time"}),
    _param("start", "query", {"type": "boolean"}),
    _param("default_country_code", "query", {"type": "string"}),
]

PATHS: dict[str, dict[str, dict]] = {
    "/v1/numbers": {
        "get": _op("numbers", "List the tenant's WhatsApp numbers (never their secrets)", _list("Number")),
        "post": _op("register_number", "Register or update a number, once the Graph API confirms that the "
                    "token reads it and that the WABA holds it", _obj(number_id=_INT), status=201,
                    body=_json_body(_obj(["phone_number_id", "waba_id", "access_token"],
                                         phone_number_id={"type": "string"}, waba_id={"type": "string"},
                                         access_token={"type": "string", "writeOnly": True},
                                         app_secret={"type": ["string", "null"], "writeOnly": True,
                                                     "description": "null or absent keeps the secret; \"\" clears it."},
                                         throughput_mps={"type": "integer", "default": 80},
                                         display_phone_number={"type": "string", "description":
                                                               "Ignored: Meta's display number is stored."}))),
    },
    "/v1/portfolios": {"get": _op(
        "portfolios", "The tenant's business portfolios: messaging-limit tier, the unique users messaged "
        "in the last 24 hours, until when new users wait", _list("Portfolio"))},
    "/v1/numbers/{number_id}/messaging-limit": {"put": _op(
        "set_messaging_limit", "Set the messaging-limit tier of the number's portfolio (and with business_id, "
        "which business portfolio its WABA is in)", _ref("Portfolio"), params=[_NUMBER_ID],
        body=_json_body(_obj(["tier"], tier={"type": "string", "enum": TIERS},
                             business_id={"type": "string", "pattern": "^[0-9]{1,32}$",
                                          "description": "Meta's business portfolio id: WABAs given one id "
                                                         "share one limit."})))},
    "/v1/templates": {"get": _op("templates", "List templates", _list("Template"), params=[
        _param("waba_id", "query", {"type": "string"}), _param("status", "query", {"type": "string"})]),
        "post": _op(
            "prepare_template", "Create a template through Meta's API (201, PENDING until Meta's review; 200 "
            "when the same definition exists)", _ref("TemplateDetail"), status=201,
            body=_json_body(_obj(
                ["name", "language", "category", "components"],
                waba_id={"type": "string", "description": "The WABA; or give number_id."},
                number_id={**_INT, "description": "A number of the WABA; or give waba_id."},
                name={"type": "string", "pattern": "^[a-z0-9_]+$", "maxLength": 512},
                language={"type": "string", "description": "Meta's code, e.g. en_US."},
                category={"type": "string", "enum": ["MARKETING", "UTILITY", "AUTHENTICATION"]},
                parameter_format={"type": "string", "enum": ["POSITIONAL", "NAMED"]},
                allow_category_change={"type": "boolean"},
                components={"type": "array", "items": {"type": "object"}, "description":
                            "Meta's definition: HEADER, BODY, FOOTER, BUTTONS, with an example for every variable."})))},
    "/v1/templates/{template_id}": {
        "get": _op("template_detail", "One template with its components, parameters and campaigns",
                   _ref("TemplateDetail"), params=[_param("template_id", "path", _INT)]),
        "delete": _op("prepare_template_deletion", "Delete this language of the template at Meta (409 while "
                      "campaigns send it, unless force)", _ref("TemplateDetail"),
                      params=[_param("template_id", "path", _INT),
                              _param("force", "query", {"type": "boolean", "default": False},
                                     "Delete anyway and pause the campaigns that send it.")])},
    "/v1/templates/sync": {"post": _op(
        "sync_templates", "Fetch the number's WABA templates from the Graph API (all pages) and store them",
        _obj(received={"type": "integer"}, stored={"type": "integer"}, unchanged={"type": "integer"}),
        body=_json_body(_obj(["number_id"], number_id=_INT,
                             page_size={"type": "integer", "minimum": 1, "maximum": 1000})))},
    "/v1/contacts": {"get": _op("search_contacts", "Search contacts by phone, name, tag and segment filter",
                                _page("Contact"), params=[
        _param("phone", "query", {"type": "string"}), _param("opted_out", "query", {"type": "boolean"}),
        _param("name", "query", {"type": "string"}, "A part of the name, any case."),
        _param("tag", "query", {"type": "string"}),
        _param("filter", "query", {"type": "string"}, "A segment filter as JSON (fields, tags, engagement)."),
        _BEFORE, _LIMIT])},
    "/v1/contacts/import": {"post": _op(
        "import_contacts", "Import a contact CSV (streamed to the database with COPY), no campaign",
        _ref("ContactsImported"), params=[
            _param("default_country_code", "query", {"type": "string"}),
            _param("on_invalid", "query", {"type": "string", "enum": ["reject", "skip"]}),
            _param("mapping", "query", {"type": "string"},
                   'JSON: {"fields": {"column": "field"}, "tag_columns": ["column"], "tags": ["tag"]} '
                   "(api.import_contacts_mapped; the answer adds skipped_values and tagged).")],
        body=_csv_body("CSV with a header naming a phone column; other columns become attributes."))},
    "/v1/contacts/opt-out": {"post": _op(
        "set_contact_opt_out", "Opt a contact out (by contact_id or phone)", _ref("Contact"),
        body=_json_body(_obj(contact_id=_INT, phone={"type": "string"})))},
    "/v1/contacts/opt-in": {"post": _op(
        "set_contact_opt_out", "Opt a contact back in (by contact_id or phone)", _ref("Contact"),
        body=_json_body(_obj(contact_id=_INT, phone={"type": "string"})))},
    "/v1/campaigns": {
        "get": _op("campaigns", "List campaigns with live counters", _page("Campaign"), params=[
            _param("status", "query", {"type": "string", "enum": ["draft", "scheduled", "running", "paused",
                                                                  "completed", "cancelled"]}),
            _BEFORE, _LIMIT]),
        "post": _op("create_campaign", "Create a campaign from a contact CSV streamed with COPY",
                    _ref("CampaignCreated"), status=201, params=[
                        *_CAMPAIGN_QUERY,
                        _param("Pgwa-Campaign", "header", {"type": "string"},
                               "The same parameters as one JSON object.")],
                    body=_csv_body("CSV with a header naming a phone column; columns map to template "
                                   "parameters. In multipart, a `params` field may carry the parameters.")),
    },
    "/v1/campaigns/{campaign_id}": {"get": _op("campaign_stats", "A campaign's stats", _ref("CampaignStats"),
                                               params=[_CAMPAIGN_ID])},
    "/v1/campaigns/{campaign_id}/stats": {"get": _op("campaign_stats", "A campaign's stats",
                                                     _ref("CampaignStats"), params=[_CAMPAIGN_ID])},
    "/v1/campaigns/{campaign_id}/start": {"post": _op(
        "start_campaign", "Start (or schedule) a campaign", _ref("CampaignStatus"), params=[_CAMPAIGN_ID],
        body=_json_body(_obj(at={"type": "string", "format": "date-time"}), required=False))},
    "/v1/campaigns/{campaign_id}/pause": {"post": _op(
        "pause_campaign", "Pause a campaign", _ref("CampaignStatus"), params=[_CAMPAIGN_ID],
        body=_json_body(_obj(reason={"type": "string"}), required=False))},
    "/v1/campaigns/{campaign_id}/resume": {"post": _op("resume_campaign", "Resume a paused campaign",
                                                       _ref("CampaignStatus"), params=[_CAMPAIGN_ID])},
    "/v1/campaigns/{campaign_id}/cancel": {"post": _op("cancel_campaign", "Cancel a campaign",
                                                       _ref("CampaignStatus"), params=[_CAMPAIGN_ID])},
    "/v1/campaigns/{campaign_id}/reconcile": {"post": _op(
        "reconcile_campaign", "Recount a campaign's counters from its messages (and fix them)",
        _list("CounterDrift"), params=[_CAMPAIGN_ID, _param("fix", "query", {"type": "boolean"})])},
    "/v1/campaigns/{campaign_id}/send-window": {"put": _op(
        "set_campaign_send_window", "Send only in these hours of each recipient's local day",
        _obj(campaign_id=_INT, send_window_start={"type": ["string", "null"]},
             send_window_end={"type": ["string", "null"]}),
        params=[_CAMPAIGN_ID], body=_json_body(_obj(
            start={"type": ["string", "null"], "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$", "description":
                   "Local time HH:MM; null with end null: any time."},
            end={"type": ["string", "null"], "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$", "description":
                 "Before start: the window runs past midnight."})))},
    "/v1/numbers/{number_id}/conversations": {"get": _op(
        "conversations", "The number's conversations, latest first", _keyset(
            "Conversation", before_at=_TS, before_contact_id=_INT), params=[
            _NUMBER_ID,
            _param("filter", "query", {"type": "string", "enum": ["all", "unread", "open", "assigned", "unassigned",
                                                              "needs_human"]}),
            _param("agent", "query", {"type": "string"}, "Only this agent's conversations."),
            _param("before_at", "query", {"type": "string", "format": "date-time"}),
            _param("before_contact_id", "query", _INT), _LIMIT])},
    "/v1/numbers/{number_id}/conversations/{contact_id}/messages": {"get": _op(
        "conversation", "One conversation's messages, newest first", _keyset(
            "InboxMessage", before_at=_TS, before_id=_INT), params=[
            *_CONVERSATION, _param("before_at", "query", {"type": "string", "format": "date-time"}),
            _param("before_id", "query", _INT), _LIMIT])},
    "/v1/numbers/{number_id}/conversations/{contact_id}/reply": {"post": _op(
        "reply", "Reply to the contact (sent before campaign traffic)", _ref("ReplyQueued"), status=201,
        params=_CONVERSATION, body=_json_body(_obj(
            ["type"], type={"type": "string", "enum": ["text", "buttons", "template", "image", "video", "audio",
                                                       "document", "sticker", "list", "cta_url"]},
            text={"type": "string"}, buttons={"type": "array"}, name={"type": "string"},
            language={"type": "string"}, params={"type": "array"},
            media={**_INT, "description": "image/video/audio/document/sticker: a media_id from POST /v1/media"},
            link={"type": "string", "format": "uri"}, caption={"type": "string", "maxLength": 1024},
            filename={"type": "string"}, button={"type": "string", "maxLength": 20}, sections={"type": "array"},
            display_text={"type": "string", "maxLength": 20}, url={"type": "string", "format": "uri"})))},
    "/v1/messages": {"post": _op(
        "send_message", "Send one message to a phone or user id (201; 200 when an Idempotency-Key replays)",
        _ref("MessageSent"), status=201,
        params=[_param("Idempotency-Key", "header", {"type": "string", "maxLength": 255},
                       "The same key and body never send twice; the retry answers the first message.")],
        body=_json_body(_obj(["number_id", "to"], number_id=_INT,
                             to={"type": "string", "description": "+E.164 phone or business-scoped user id."},
                             template={"type": "object", "description": (
                                 "An approved template with all its parameters (give this or message): name, "
                                 "language, header (text, {link}, {media}, {media_id} or {location}), body (a list, "
                                 "or an object for named parameters), buttons ({index: value}).")},
                             message={"type": "object", "description": (
                                 "A reply shape: template, or inside the 24-hour window text, buttons, media, "
                                 "list, cta_url.")})))},
    "/v1/messages/{outbound_id}": {"get": _op(
        "message", "One outbound message with its status history", _ref("Message"),
        params=[_param("outbound_id", "path", _INT)])},
    "/v1/numbers/{number_id}/conversations/{contact_id}/read": {"post": _op(
        "mark_read", "Mark the conversation read (and send Meta read receipts)", _obj(marked={"type": "integer"}),
        params=_CONVERSATION)},
    "/v1/numbers/{number_id}/conversations/{contact_id}/assign": {"post": _op(
        "assign_conversation", "Assign the conversation to an agent", _ref("Conversation"), params=_CONVERSATION,
        body=_json_body(_obj(["agent"], agent={"type": "string"})))},
    "/v1/numbers/{number_id}/conversations/{contact_id}/release": {"post": _op(
        "release_conversation", "Release the conversation back to the bots", _ref("Conversation"),
        params=_CONVERSATION)},
    "/v1/numbers/{number_id}/bot-rules": {
        "get": _op("bot_rules", "The number's keyword and regex bot rules", _list("BotRule"), params=[_NUMBER_ID]),
        "post": _op("save_bot_rule", "Create a bot rule, or update one (rule_id)", _ref("BotRule"), status=201,
                    params=[_NUMBER_ID], body=_json_body(_obj(
                        ["kind", "pattern", "reply"], kind={"type": "string", "enum": ["exact", "starts_with", "contains", "regex"]},
                        pattern={"type": "string"}, reply={"type": "object"},
                        priority={"type": "integer", "minimum": 0, "default": 100},
                        enabled={"type": "boolean", "default": True}, rule_id=_INT))),
    },
    "/v1/bot-rules/{rule_id}": {"delete": _op("delete_bot_rule", "Delete a bot rule", _obj(rule_id=_INT),
                                              params=[_param("rule_id", "path", _INT)])},
    "/v1/numbers/{number_id}/llm": {"post": _op(
        "configure_llm", "LLM replies for the number: on or off, prompt, daily limit", _ref("LlmSettings"),
        params=[_NUMBER_ID], body=_llm_body({}))},
    "/v1/opt-out": {"post": _op(
        "configure_opt_out", "The tenant's opt-out and opt-in keywords and replies", _ref("OptOutSettings"),
        body=_json_body(_obj(opt_out_keywords=_KEYWORDS, opt_in_keywords=_KEYWORDS,
                             opt_out_reply={"type": "string"}, opt_in_reply={"type": "string"})))},
    "/v1/notifications": {"get": _op("notifications", "List notifications", _page("Notification"), params=[
        _param("unread", "query", {"type": "boolean"}), _BEFORE, _LIMIT])},
    "/v1/notifications/read": {"post": _op(
        "read_notifications", "Mark notifications read", _obj(marked={"type": "integer"}),
        body=_json_body(_obj(ids={"type": "array", "items": _INT}, all={"type": "boolean"})))},
    "/v1/notifications/{notification_id}/read": {"post": _op(
        "read_notifications", "Mark one notification read", _obj(marked={"type": "integer"}),
        params=[_param("notification_id", "path", _INT)])},
    "/v1/keys": {
        "get": _op("api_keys", "List the tenant's API keys (prefixes only)", _list("ApiKey")),
        "post": _op("create_api_key", "Create another API key for the tenant; the key is shown once",
                    _ref("ApiKeyCreated"), status=201, body=_json_body(_obj(
                        ["name"], name={"type": "string"},
                        scope={"type": "string", "enum": ["read", "send", "admin"], "default": "admin"},
                        expires_at={"type": "string", "format": "date-time"},
                        rate_limit_per_minute={"type": "integer", "minimum": 1, "maximum": 1000000}))),
    },
    "/v1/keys/{api_key_id}": {"delete": _op("revoke_api_key", "Revoke an API key", _ref("ApiKey"),
                                            params=[_param("api_key_id", "path", _INT)])},
    "/v1/media": {
        "get": _op("media", "List the tenant's media: uploads (with their Meta id and expiry) and files contacts "
                   "sent (with their download state)", _page("Media"), params=[
                       _param("number_id", "query", _INT), _param("direction", "query", {"enum": ["in", "out"]}),
                       _BEFORE, _LIMIT]),
        "post": _op("save_media", "Upload a file to Meta for a number (checked against Meta's MIME types and "
                    "sizes); the same bytes uploaded earlier and still valid are reused (200, reused true)",
                    _ref("Media"), status=201, body={"required": True, "content": {"multipart/form-data": {
                        "schema": _obj(["file", "number_id"], file={"type": "string", "format": "binary",
                                                                    "description": "Its Content-Type is the MIME type."},
                                       number_id=_INT, type={"type": "string", "description": "MIME type (overrides "
                                                                                               "the part's)"},
                                       filename={"type": "string", "maxLength": 240})}}}),
    },
    "/v1/media/{media_id}/content": {"get": _op(
        "media_content", "The stored bytes of a media file (an inbound file once downloaded, or an upload), with "
        "its Content-Type", {"type": "string", "format": "binary"}, params=[_param("media_id", "path", _INT)],
        media="application/octet-stream")},
    "/metrics": {"get": {**_op("metrics", "Prometheus metrics (no tenant's identifiers); needs the "
                               "PGWA_METRICS_TOKEN bearer token when set, and is refused (403) without one "
                               "unless the API listens on loopback", {"type": "string"}, media="text/plain"),
                         "security": []}},
}


# Outbound events (api/events.py): a tenant's endpoints and its events' deliveries.
_EVENT_TYPES = ["message.status", "message.inbound", "campaign.completed", "campaign.paused",
                "contact.opted_out", "contact.opted_in", "template.status"]
_ENDPOINT_ID = _param("endpoint_id", "path", _INT)
SCHEMAS.update({
    "EventEndpoint": _obj(endpoint_id=_INT, url={"type": "string"},
                          event_types={"type": "array", "items": {"type": "string"}},
                          description={"type": ["string", "null"]}, created_at=_TS,
                          failures={"type": "integer", "description": "Consecutive failed deliveries."},
                          retry_at={**_TS, "description": "A failing endpoint is tried again then."},
                          pending={"type": "integer"}),
    "EventEndpointCreated": _obj(endpoint_id=_INT, url={"type": "string"},
                                 event_types={"type": "array", "items": {"type": "string"}},
                                 description={"type": ["string", "null"]}, created_at=_TS,
                                 secret={"type": "string", "description": "Signs the deliveries; shown this once."}),
    "OutboundEvent": _obj(event_id=_INT, event_type={"type": "string"}, created_at=_TS, endpoint_id=_INT,
                          status={"type": "string", "enum": ["pending", "delivered", "dead"]},
                          attempts={"type": "integer"}, next_attempt_at=_TS, last_attempt_at=_TS,
                          last_http_status={"type": ["integer", "null"]}, last_error={"type": ["string", "null"]},
                          delivered_at=_TS, dead_at=_TS, replays={"type": "integer"}, data={"type": "object"}),
})
PATHS.update({
    "/v1/endpoints": {
        "get": _op("event_endpoints", "The tenant's event endpoints (never their secrets)", _list("EventEndpoint")),
        "post": _op("create_event_endpoint", "Register an endpoint for outbound events; the signing secret is "
                    "shown once", _ref("EventEndpointCreated"), status=201, body=_json_body(_obj(
                        ["url", "event_types"], url={"type": "string", "format": "uri", "maxLength": 2000},
                        event_types={"type": "array", "minItems": 1, "maxItems": 20,
                                     "items": {"type": "string", "enum": _EVENT_TYPES}},
                        secret={"type": "string", "minLength": 16, "maxLength": 200, "writeOnly": True,
                                "description": "Absent: a whsec_ secret is made."},
                        description={"type": "string", "maxLength": 500}))),
    },
    "/v1/endpoints/{endpoint_id}": {"delete": _op(
        "delete_event_endpoint", "Delete an endpoint, its queue and its deliveries", _obj(endpoint_id=_INT),
        params=[_ENDPOINT_ID])},
    "/v1/endpoints/{endpoint_id}/test": {"post": _op(
        "test_event_endpoint", "Queue an endpoint.test event to the endpoint", _obj(event_id=_INT), status=202,
        params=[_ENDPOINT_ID])},
    "/v1/events": {"get": _op("outbound_events", "The tenant's outbound events and their deliveries, newest "
                              "first", _page("OutboundEvent"), params=[
        _param("endpoint", "query", _INT, "Only this endpoint's deliveries."),
        _param("status", "query", {"type": "string", "enum": ["pending", "delivered", "dead"]}),
        _BEFORE, _LIMIT])},
    "/v1/events/{event_id}/replay": {"post": _op(
        "replay_event", "Deliver an event again (the same id and body), to every endpoint it went to or one",
        _obj(event_id=_INT, replayed={"type": "integer"}), status=202,
        params=[_param("event_id", "path", _INT)],
        body=_json_body(_obj(endpoint_id=_INT), required=False))},
})

# Contacts, fields, segments, retargeting and the recipient report (api/contacts.py).
_FILTER = {"type": "object", "description": "A segment filter: {\"all\"|\"any\": [...]}, {\"not\": ...}, "
           "{\"tag\": t}, {\"field\": f, \"op\": eq|ne|lt|gt|lte|gte|contains|exists, \"value\": v}, "
           "{\"opted_out\": b}, {\"last_inbound_at\": {\"within\": \"7 days\"}}, "
           "{\"campaign\": id, \"event\": messaged|sent|delivered|read|replied|failed}."}
_AUDIENCE = {"segment_id": _INT, "filter": _FILTER,
             "tags": {"type": "array", "items": {"type": "string", "maxLength": 64}, "maxItems": 100,
                      "description": "Contacts with any of these tags."}}
_TAGS = {"type": "array", "items": {"type": "string", "maxLength": 64}, "maxItems": 100}
_TEMPLATES = {"type": "array", "description": 'e.g. [{"name": "order_update", "language": "en_US", '
                                             '"params": [{"column": "name"}]}]'}
_CSV_STREAM = {"type": "string", "description": "CSV, streamed: a header line, then a line per row."}
SCHEMAS["Contact"]["properties"].update(tags={"type": "array", "items": {"type": "string"}}, updated_at=_TS)
SCHEMAS.update({
    "ContactField": _obj(name={"type": "string"}, type={"type": "string", "enum": ["text", "number", "date", "boolean"]},
                         created_at=_TS),
    "ContactErased": _obj(contact_id=_INT, outbound_messages={"type": "integer"}, withdrawn={"type": "integer"},
                          inbox_messages={"type": "integer"}, conversations={"type": "integer"},
                          status_events={"type": "integer"}),
    "Segment": _obj(segment_id=_INT, name={"type": "string"}, filter={"type": "object"}, created_at=_TS,
                    updated_at=_TS),
})
PATHS.update({
    "/v1/contacts/export": {"get": _op(
        "open_contacts_export", "Export contacts (all, a segment's or a filter's) as CSV, streamed", _CSV_STREAM,
        media="text/csv", params=[_param("segment_id", "query", _INT),
                                  _param("filter", "query", {"type": "string"}, "A segment filter as JSON.")])},
    "/v1/contacts/tags": {"post": _op(
        "tag_contacts", "Add and remove tags on contacts", _obj(changed={"type": "integer"}),
        body=_json_body(_obj(["contact_ids"], contact_ids={"type": "array", "items": _INT, "minItems": 1,
                                                           "maxItems": 100000},
                             add_tags=_TAGS, remove_tags=_TAGS)))},
    "/v1/contacts/{contact_id}": {
        "get": _op("contact", "One contact with its fields and tags", _ref("Contact"),
                   params=[_param("contact_id", "path", _INT)]),
        "patch": _op("update_contact", "Edit a contact: name, field values (null removes one), tags", _ref("Contact"),
                     params=[_param("contact_id", "path", _INT)],
                     body=_json_body(_obj(name={"type": "string", "maxLength": 200}, fields={"type": "object"},
                                          add_tags=_TAGS, remove_tags=_TAGS))),
        "delete": _op("delete_contact", "Erase a contact and its messages, events and conversations",
                      _ref("ContactErased"), params=[_param("contact_id", "path", _INT)]),
    },
    "/v1/contact-fields": {
        "get": _op("contact_fields", "The tenant's custom contact fields", _list("ContactField")),
        "post": _op("define_contact_field", "Define a typed custom field", _ref("ContactField"), status=201,
                    body=_json_body(_obj(["name", "type"], name={"type": "string", "pattern": "^[a-z][a-z0-9_]{0,62}$"},
                                         type={"type": "string", "enum": ["text", "number", "date", "boolean"]}))),
    },
    "/v1/contact-fields/{name}": {"delete": _op(
        "delete_contact_field", "Delete a field's definition (values stay as attributes)", _obj(name={"type": "string"}),
        params=[_param("name", "path", {"type": "string"})])},
    "/v1/segments": {
        "get": _op("segments", "The tenant's saved segments", _list("Segment")),
        "post": _op("save_segment", "Save a segment, or replace one (segment_id)", _ref("Segment"), status=201,
                    body=_json_body(_obj(["name", "filter"], name={"type": "string", "maxLength": 200},
                                         filter=_FILTER, segment_id=_INT))),
    },
    "/v1/segments/count": {"get": _op(
        "segment_count", "Count the contacts an inline filter or tags match now", _obj(count={"type": "integer"}),
        params=[_param("filter", "query", {"type": "string"}, "A segment filter as JSON."),
                _param("tags", "query", {"type": "string"}, "Comma-separated: contacts with any of them.")])},
    "/v1/segments/{segment_id}": {"delete": _op(
        "delete_segment", "Delete a saved segment", _obj(segment_id=_INT), params=[_param("segment_id", "path", _INT)])},
    "/v1/segments/{segment_id}/count": {"get": _op(
        "segment_count", "Count the contacts a saved segment matches now", _obj(count={"type": "integer"}),
        params=[_param("segment_id", "path", _INT)])},
    "/v1/campaigns/from-segment": {"post": _op(
        "create_campaign_from_segment", "Create a campaign for a segment, a filter or tags (a snapshot, atomically)",
        _ref("CampaignCreated"), status=201, body=_json_body(_obj(
            ["number_id", "name", "templates"], number_id=_INT, name={"type": "string", "maxLength": 200},
            templates=_TEMPLATES, **_AUDIENCE, scheduled_at={"type": "string", "format": "date-time"},
            start={"type": "boolean"}, on_invalid={"type": "string", "enum": ["reject", "skip"]})))},
    "/v1/campaigns/{campaign_id}/retarget": {"post": _op(
        "retarget_campaign", "Send again, as a new campaign, to the recipients who failed / were not delivered / "
        "did not read / did not reply", _ref("CampaignCreated"), status=201, params=[_CAMPAIGN_ID],
        body=_json_body(_obj(["who"], who={"type": "string", "enum": ["failed", "not_delivered", "not_read",
                                                                      "not_replied"]},
                             name={"type": "string", "maxLength": 200}, templates=_TEMPLATES,
                             scheduled_at={"type": "string", "format": "date-time"}, start={"type": "boolean"},
                             number_id=_INT, on_invalid={"type": "string", "enum": ["reject", "skip"]})))},
    "/v1/campaigns/{campaign_id}/recipients": {"get": {**_op(
        "open_campaign_recipients", "Every recipient's final state, times and error, streamed (CSV or a JSON array)",
        _CSV_STREAM, media="text/csv", params=[_CAMPAIGN_ID, _param("format", "query", {"type": "string",
                                                                                        "enum": ["csv", "json"]})])}},
})
_RECIPIENTS = PATHS["/v1/campaigns/{campaign_id}/recipients"]["get"]["responses"]["200"]["content"]
_RECIPIENTS["application/json"] = {"schema": {"type": "array", "items": {"type": "object"}}}


def document(descriptions: dict[str, str], scopes: dict[tuple[str, str], str] | None = None,
             llm_bounds: dict[str, dict] | None = None) -> dict:
    """The OpenAPI document, with each operation's description from its function's comment,
    from ``scopes`` ((path, METHOD) -> scope, api/routes.py) the scope its key needs, and the
    ranges of the LLM settings from ``llm_bounds`` (``api.llm_bounds()`` by setting)."""
    paths: dict = {}
    for path, operations in PATHS.items():
        paths[path] = {}
        for method, op in operations.items():
            function = op["x-pgwa-function"]
            text = descriptions.get(function)
            scope = (scopes or {}).get((path, method.upper()))
            needs = f"{_SCOPE_TEXT[scope]} " if scope else ""
            paths[path][method] = {**op, "description": f"{needs}Calls `api.{function}`. {text or ''}".strip()}
            if scope:
                paths[path][method]["x-pgwa-scope"] = scope
            if function == "configure_llm":
                paths[path][method]["requestBody"] = _llm_body(llm_bounds or {})
    return {
        "openapi": "3.1.0",
        "info": {"title": "pgwa", "version": VERSION,
                 "description": "WhatsApp Cloud API campaigns with the logic in PostgreSQL. Every route calls "
                                "one SQL function of schema api; errors carry the SQLSTATE of core.error_codes."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "An API key from `pgwa key create`."}}},
    }
