"""The JSON API under /v1, /metrics and /openapi.json: each route is one SQL statement.

A route parses its input, hashes the bearer key (api/auth.py) and runs one statement
that resolves the tenant and calls one ``api`` function with it, with PostgreSQL
building the JSON::

    SELECT coalesce(json_agg(c), '[]')::text
    FROM api.campaigns(api.authenticate(%(key)s, %(scope)s), %(status)s::text, ...) c

so the response body is the bytes PostgreSQL returns. Three routes need more than one
call and say so: number registration (``api.prepare_number_registration``, the Graph
API's answer for the number and its WABA, ``api.register_number`` with that answer),
uploads (authenticate; spool the body within its caps, holding no connection; then
``api.stage_contacts`` + COPY + ``api.create_campaign`` / ``api.import_contacts`` in
one transaction) and template sync
(``api.graph_credentials``, the Graph API's pages, one ``api.sync_templates``). Their calls
that take a tenant id are the named queries of pgwa/queries.sql, the texts the CLI, the
local stack and the tests send too; those routes encode the row they return with orjson.
POST /v1/messages is batched: its requests share statements and a commit with those that
arrive beside them (api/send_batch.py), each answered alone.
Another tenant's ids are simply not found (the functions raise PW2nn), and no route
returns an access token or an app secret. Errors go through api/errors.py.

More areas (the inbox, bot rules) slot in the same way: a list of Starlette routes
whose endpoints call ``JsonApi.fetch_text(request, SQL, params)``, given to
``JsonApi(settings, extra_routes=...)``, and their operations in api/openapi.py.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from api import openapi
from api.auth import key_hash, token_matches
from api.errors import ApiError, ErrorCodes, handler
from api.graph_templates import fetch_templates
from api.send_batch import SendBatcher, SendRequest
from api.upload import CsvUpload, UploadLimits
from pgwa.config import Settings
from pgwa.numbers import GraphCheckError, verify_number
from pgwa.queries import queries

log = logging.getLogger("pgwa.api")
JSON = "application/json"
MAX_JSON_BODY = 1 << 20
MAX_BIGINT = (1 << 63) - 1

# -- statements ------------------------------------------------------------------------------
# One per route; parameters are cast explicitly so that a value of the wrong size or
# type is a clean 22xxx (400), never a function lookup failure.

NUMBERS = """SELECT coalesce(json_agg(n ORDER BY n.number_id), '[]')::text
FROM api.numbers(api.authenticate(%(key)s, %(scope)s)) n"""
# Registering a number: check the fields, ask the Graph API (pgwa/numbers.py), then store
# what Meta answered (queries["register_number"]).
PREPARE_NUMBER = """SELECT a.tenant_id, api.prepare_number_registration(
    a.tenant_id, %(phone_number_id)s::text, %(waba_id)s::text, %(access_token)s::text, %(throughput_mps)s::integer)
FROM (SELECT api.authenticate(%(key)s, %(scope)s) AS tenant_id) a"""
TEMPLATES = """SELECT coalesce(json_agg(t), '[]')::text
FROM api.templates(api.authenticate(%(key)s, %(scope)s), %(waba_id)s::text, %(status)s::text) t"""
PORTFOLIOS = """SELECT coalesce(json_agg(p ORDER BY p.portfolio_id), '[]')::text
FROM api.portfolios(api.authenticate(%(key)s, %(scope)s)) p"""
SET_MESSAGING_LIMIT = """SELECT row_to_json(p)::text
FROM api.set_messaging_limit(api.authenticate(%(key)s, %(scope)s), %(number_id)s::bigint, %(tier)s::text,
                             %(business_id)s::text) p"""
CREDENTIALS = """SELECT a.tenant_id, c.waba_id, c.access_token, c.graph_api_version
FROM (SELECT api.authenticate(%(key)s, %(scope)s) AS tenant_id) a,
     api.graph_credentials(a.tenant_id, %(number_id)s::bigint) c"""
AUTHENTICATE = "SELECT api.authenticate(%(key)s, %(scope)s)"
# Refused by api.authenticate itself (no key, no scope, over the limit): nothing to count.
UNCOUNTED = frozenset({"PW401", "PW410", "PW429"})
# An upload's COPY and campaign creation may run for up to the upload deadline, not the
# pool's statement_timeout: a million contacts take longer than a route's one statement.
UPLOAD_TIMEOUT = "SELECT set_config('statement_timeout', %(ms)s::text, true)"
CONTACTS = """SELECT json_build_object(
    'data', coalesce(json_agg(c ORDER BY c.contact_id DESC), '[]'),
    'next_before_id', CASE WHEN count(*) = %(limit)s::integer THEN min(c.contact_id) END)::text
FROM api.search_contacts(api.authenticate(%(key)s, %(scope)s), %(phone)s::text, %(name)s::text, %(tag)s::text,
                         %(filter)s::jsonb, %(opted_out)s::boolean, %(before_id)s::bigint, %(limit)s::integer) c"""
IMPORT_CONTACTS = """SELECT row_to_json(r)::text
FROM api.import_contacts(%(tenant_id)s::bigint, %(default_country_code)s::text, %(on_invalid)s::text) r"""
# With a mapping of columns to fields and tags (api/contacts.py's area).
IMPORT_CONTACTS_MAPPED = """SELECT row_to_json(r)::text
FROM api.import_contacts_mapped(%(tenant_id)s::bigint, %(mapping)s::jsonb, %(default_country_code)s::text,
                                %(on_invalid)s::text) r"""
OPT_OUT = """SELECT row_to_json(r)::text
FROM api.set_contact_opt_out(api.authenticate(%(key)s, %(scope)s), %(opted_out)s::boolean, %(contact_id)s::bigint,
                             %(phone)s::text) r"""
CAMPAIGNS = """SELECT json_build_object(
    'data', coalesce(json_agg(c ORDER BY c.campaign_id DESC), '[]'),
    'next_before_id', CASE WHEN count(*) = %(limit)s::integer THEN min(c.campaign_id) END)::text
FROM api.campaigns(api.authenticate(%(key)s, %(scope)s), %(status)s::text, %(before_id)s::bigint, %(limit)s::integer) c"""
CAMPAIGN_STATS = """SELECT row_to_json(s)::text
FROM api.campaign_stats(api.authenticate(%(key)s, %(scope)s), %(campaign_id)s::bigint) s"""
# A time without an offset is the tenant's wall clock (api.tenant_local_time).
START_CAMPAIGN = """SELECT json_build_object('campaign_id', %(campaign_id)s::bigint, 'status',
    api.start_campaign(a.t, %(campaign_id)s::bigint,
                       coalesce(%(at)s::timestamptz, api.tenant_local_time(a.t, %(at_local)s::timestamp))))::text
FROM (SELECT api.authenticate(%(key)s, %(scope)s) AS t) a"""
SEND_WINDOW = """SELECT row_to_json(w)::text
FROM api.set_campaign_send_window(api.authenticate(%(key)s, %(scope)s), %(campaign_id)s::bigint,
                                  %(start)s::time, %(end)s::time) w"""
LOCAL_TIME = "SELECT api.tenant_local_time(%s, %s)"
PAUSE_CAMPAIGN = """SELECT json_build_object('campaign_id', %(campaign_id)s::bigint, 'status',
    api.pause_campaign(api.authenticate(%(key)s, %(scope)s), %(campaign_id)s::bigint, %(reason)s::text))::text"""
RESUME_CAMPAIGN = """SELECT json_build_object('campaign_id', %(campaign_id)s::bigint, 'status',
    api.resume_campaign(api.authenticate(%(key)s, %(scope)s), %(campaign_id)s::bigint))::text"""
CANCEL_CAMPAIGN = """SELECT json_build_object('campaign_id', %(campaign_id)s::bigint, 'status',
    api.cancel_campaign(api.authenticate(%(key)s, %(scope)s), %(campaign_id)s::bigint))::text"""
RECONCILE = """SELECT coalesce(json_agg(r), '[]')::text
FROM api.reconcile_campaign(api.authenticate(%(key)s, %(scope)s), %(campaign_id)s::bigint, %(fix)s::boolean) r"""
NOTIFICATIONS = """SELECT json_build_object(
    'data', coalesce(json_agg(n ORDER BY n.notification_id DESC), '[]'),
    'next_before_id', CASE WHEN count(*) = %(limit)s::integer THEN min(n.notification_id) END)::text
FROM api.notifications(api.authenticate(%(key)s, %(scope)s), %(unread)s::boolean, %(before_id)s::bigint,
                       %(limit)s::integer) n"""
READ_NOTIFICATIONS = """SELECT json_build_object('marked',
    api.read_notifications(api.authenticate(%(key)s, %(scope)s), %(ids)s::bigint[]))::text"""
API_KEYS = """SELECT coalesce(json_agg(k), '[]')::text FROM api.api_keys(api.authenticate(%(key)s, %(scope)s)) k"""
CREATE_API_KEY = """SELECT row_to_json(k)::text
FROM api.create_api_key(api.authenticate(%(key)s, %(scope)s), %(name)s::text, %(key_scope)s::text,
                        %(expires_at)s::timestamptz, %(rate_limit_per_minute)s::integer) k"""
REVOKE_API_KEY = """SELECT row_to_json(k)::text
FROM api.revoke_api_key(api.authenticate(%(key)s, %(scope)s), %(api_key_id)s::bigint) k"""
CONVERSATIONS = """SELECT json_build_object(
    'data', coalesce(json_agg(c ORDER BY c.last_message_at DESC, c.contact_id DESC), '[]'),
    'next', CASE WHEN count(*) = %(limit)s::integer THEN json_build_object(
        'before_at', min(c.last_message_at),
        'before_contact_id', (array_agg(c.contact_id ORDER BY c.last_message_at, c.contact_id))[1]) END)::text
FROM api.conversations(api.authenticate(%(key)s, %(scope)s), %(number_id)s::bigint, %(filter)s::text, %(agent)s::text,
                       %(before_at)s::timestamptz, %(before_contact_id)s::bigint, %(limit)s::integer) c"""
CONVERSATION = """SELECT json_build_object(
    'data', coalesce(json_agg(m ORDER BY m.created_at DESC, m.message_id DESC), '[]'),
    'next', CASE WHEN count(*) = %(limit)s::integer THEN json_build_object(
        'before_at', min(m.created_at),
        'before_id', (array_agg(m.message_id ORDER BY m.created_at, m.message_id))[1]) END)::text
FROM api.conversation(api.authenticate(%(key)s, %(scope)s), %(number_id)s::bigint, %(contact_id)s::bigint,
                      %(before_at)s::timestamptz, %(before_id)s::bigint, %(limit)s::integer) m"""
REPLY = """SELECT row_to_json(r)::text
FROM api.reply(api.authenticate(%(key)s, %(scope)s), %(number_id)s::bigint, %(contact_id)s::bigint, %(reply)s::jsonb) r"""
MARK_READ = """SELECT json_build_object('marked',
    api.mark_read(api.authenticate(%(key)s, %(scope)s), %(number_id)s::bigint, %(contact_id)s::bigint))::text"""
ASSIGN = """SELECT row_to_json(c)::text
FROM api.assign_conversation(api.authenticate(%(key)s, %(scope)s), %(number_id)s::bigint, %(contact_id)s::bigint,
                             %(agent)s::text) c"""
# POST /v1/messages goes through the process's group commit (api/send_batch.py): its
# requests are authenticated (api.authenticate_many) and sent (api.send_messages) a batch at
# a time. Authentication runs in a transaction of its own: api.authenticate's counting
# UPDATE locks the key's row until commit, and inside the send's transaction every
# request of that key would wait for the one before it to commit (measured: 49 sends/s).
MESSAGE = """SELECT api.message(api.authenticate(%(key)s, %(scope)s), %(outbound_id)s::bigint)::text"""
RELEASE = """SELECT row_to_json(c)::text
FROM api.release_conversation(api.authenticate(%(key)s, %(scope)s), %(number_id)s::bigint, %(contact_id)s::bigint) c"""
BOT_RULES = """SELECT coalesce(json_agg(r), '[]')::text
FROM api.bot_rules(api.authenticate(%(key)s, %(scope)s), %(number_id)s::bigint) r"""
SAVE_BOT_RULE = """SELECT row_to_json(r)::text
FROM api.save_bot_rule(api.authenticate(%(key)s, %(scope)s), %(number_id)s::bigint, %(kind)s::text, %(pattern)s::text,
                       %(reply)s::jsonb, %(priority)s::integer, %(enabled)s::boolean, %(rule_id)s::bigint) r"""
DELETE_BOT_RULE = """SELECT json_build_object('rule_id',
    api.delete_bot_rule(api.authenticate(%(key)s, %(scope)s), %(rule_id)s::bigint))::text"""
CONFIGURE_OPT_OUT = """SELECT row_to_json(o)::text
FROM api.configure_opt_out(api.authenticate(%(key)s, %(scope)s), %(opt_out_keywords)s::text[], %(opt_in_keywords)s::text[],
                           %(opt_out_reply)s::text, %(opt_in_reply)s::text) o"""
CONFIGURE_LLM = """SELECT row_to_json(l)::text
FROM api.configure_llm(api.authenticate(%(key)s, %(scope)s), %(number_id)s::bigint, %(enabled)s::boolean,
                       %(system_prompt)s::text, %(daily_limit)s::integer, %(context_messages)s::integer,
                       %(number_daily_limit)s::integer) l"""
METRICS = "SELECT api.metrics()"
FUNCTION_DOCS = "SELECT name, description FROM api.functions()"
LLM_BOUNDS = "SELECT setting, type, minimum, maximum, meaning FROM api.llm_bounds()"


# -- input ------------------------------------------------------------------------------------

def _bad(message: str, hint: str | None = None) -> ApiError:
    return ApiError("PW100", message, hint)


def _to_int(name: str, value: Any, *, low: int = -MAX_BIGINT, high: int = MAX_BIGINT) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _bad(f"{name} must be an integer")
    try:
        number = int(value)
    except ValueError:
        raise _bad(f"{name} must be an integer, not {str(value)[:40]!r}") from None
    if not low <= number <= high:
        raise _bad(f"{name} must be between {low} and {high}")
    return number


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise _bad(f"{name} must be true or false")


def _to_time(name: str, value: Any) -> datetime:
    if not isinstance(value, str):
        raise _bad(f"{name} must be an ISO 8601 timestamp")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _bad(f"{name} must be an ISO 8601 timestamp, not {value[:40]!r}",
                   "e.g. 2026-05-01T09:00:00+00:00") from None
    if moment.tzinfo is None:
        raise _bad(f"{name} needs a time zone offset", "e.g. 2026-05-01T09:00:00+00:00 or ...Z")
    return moment


def _to_schedule(name: str, value: Any) -> datetime:
    """A time to schedule at: with an offset, that instant; without one, the tenant's wall
    clock (the caller turns it into an instant with api.tenant_local_time)."""
    if not isinstance(value, str):
        raise _bad(f"{name} must be an ISO 8601 time")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise _bad(f"{name} must be an ISO 8601 time, not {value[:40]!r}",
                   "e.g. 2026-05-01T09:00 (your time zone) or 2026-05-01T09:00:00+00:00") from None


def _to_clock(name: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", value):
        raise _bad(f"{name} must be a local time HH:MM, not {str(value)[:20]!r}", "e.g. 09:00 and 20:00")
    return value


def _to_text(name: str, value: Any, *, limit: int = 10_000) -> str:
    if not isinstance(value, str):
        raise _bad(f"{name} must be a string")
    if len(value) > limit:
        raise _bad(f"{name} is longer than {limit} characters")
    return value


def _query(request: Request, name: str, convert=None, default: Any = None, **bounds: Any) -> Any:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if convert is _to_int:
        return _to_int(name, raw, **bounds)
    return convert(name, raw) if convert else _to_text(name, raw)


def _json_object(name: str, value: Any) -> str | None:
    """A JSON object given as text (a query parameter, a multipart field) or already parsed,
    re-encoded for a ::jsonb parameter."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise _bad(f"{name} is not JSON") from None
    if not isinstance(value, dict):
        raise _bad(f"{name} must be a JSON object")
    return orjson.dumps(value).decode()


def _json_query(request: Request, name: str) -> str | None:
    return _json_object(name, request.query_params.get(name))


def _path_id(request: Request, name: str) -> int:
    return _to_int(name, request.path_params[name], low=1)


def _limit(request: Request) -> int:
    return _query(request, "limit", _to_int, 50, low=1, high=1000)


async def _json_body(request: Request, *, required: bool = True) -> dict:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise ApiError("PW100", "the JSON body is larger than 1 MiB", status=413)
    if not body and not required:
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _bad("the body is not JSON", "Send a JSON object with Content-Type: application/json.") from None
    if not isinstance(value, dict):
        raise _bad("the body must be a JSON object")
    return value


def _field(body: dict, name: str, convert=_to_text, *, required: bool = False, default: Any = None,
           **bounds: Any) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise _bad(f"{name} is required")
        return default
    return convert(name, value, **bounds)


def _bounded(body: dict, name: str, bounds: dict[str, dict]) -> Any:
    """A field within its row of ``bounds`` (``api.llm_bounds()``, which the function the route
    calls checks again): an integer from minimum to maximum, or a string of at most maximum
    characters."""
    bound = bounds[name]
    if bound["type"] == "string":
        return _field(body, name, limit=bound["maximum"])
    return _field(body, name, _to_int, low=bound["minimum"], high=bound["maximum"])


def _keywords(body: dict[str, Any], name: str) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 100 or not all(isinstance(k, str) and 0 < len(k) <= 64
                                                                   for k in value):
        raise _bad(f"{name} must be a list of at most 100 words of 1 to 64 characters", '["STOP", "UNSUBSCRIBE"]')
    return value


async def _row(conn: psycopg.AsyncConnection, query: str, params: dict[str, Any]) -> dict[str, Any]:
    """The one row of a named query, as a dict (for the routes that send one)."""
    cur = conn.cursor(row_factory=dict_row)
    return await (await cur.execute(query, params)).fetchone()


CONVERSATION_PATH = "/v1/numbers/{number_id}/conversations/{contact_id}"

# -- scopes -----------------------------------------------------------------------------------
# The scope each route's key needs, by endpoint, decided here once: every statement passes
# it to api.authenticate, which grants it in SQL (read < send < admin, each implying the
# ones below). read: GET routes; send: what sends or changes campaigns, contacts, templates,
# the inbox and notifications; admin: numbers and their credentials and messaging limits,
# automation settings, bot rules and keys. tests/test_security_keys.py checks every /v1 route is listed.

READ, SEND, ADMIN = "read", "send", "admin"
ROUTE_SCOPES: dict[str, str] = {
    "numbers": READ, "register_number": ADMIN, "portfolios": READ, "set_messaging_limit": ADMIN,
    "templates": READ, "sync_templates": SEND, "create_template": SEND, "template": READ, "delete_template": SEND,
    "contacts": READ, "import_contacts": SEND, "opt_out": SEND, "opt_in": SEND,
    "campaigns": READ, "create_campaign": SEND, "campaign_stats": READ, "start_campaign": SEND,
    "pause_campaign": SEND, "resume_campaign": SEND, "cancel_campaign": SEND, "reconcile_campaign": SEND,
    "set_send_window": SEND,
    "conversations": READ, "conversation": READ, "reply": SEND, "mark_read": SEND, "assign": SEND,
    "release": SEND, "send_message": SEND, "message": READ,
    "bot_rules": READ, "save_bot_rule": ADMIN, "delete_bot_rule": ADMIN, "configure_llm": ADMIN,
    "configure_opt_out": ADMIN,
    "notifications": READ, "read_notifications": SEND, "read_notification": SEND,
    "api_keys": ADMIN, "create_api_key": ADMIN, "revoke_api_key": ADMIN,
    # Outbound events (api/events.py): endpoints hold secrets, so only admin makes or deletes one.
    "event_endpoints": READ, "create_event_endpoint": ADMIN, "delete_event_endpoint": ADMIN,
    "test_event_endpoint": SEND, "outbound_events": READ, "replay_event": SEND,
    "list_media": READ, "upload_media": SEND, "media_content": READ,     # api/media.py
    # Contacts, fields, segments, retargeting, the recipient report (api/contacts.py).
    "contact": READ, "update_contact": SEND, "delete_contact": SEND, "tag_contacts": SEND, "export_contacts": READ,
    "contact_fields": READ, "define_contact_field": SEND, "delete_contact_field": SEND,
    "segments": READ, "save_segment": SEND, "delete_segment": SEND, "count_segment": READ, "count_filter": READ,
    "campaign_from_segment": SEND, "retarget_campaign": SEND, "campaign_recipients": READ,
}


def scope_of(request: Request) -> str:
    """The scope the request's route needs (a route missing from ROUTE_SCOPES is a bug: 500)."""
    endpoint = request.scope.get("endpoint")
    return ROUTE_SCOPES[getattr(endpoint, "__name__", "")]


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- the API ----------------------------------------------------------------------------------

class JsonApi:
    """The routes, their connection pool, the error registry and the OpenAPI document."""

    def __init__(self, settings: Settings, *, pool_size: int = 10,
                 metrics_token: str | None = None, extra_routes: Sequence[BaseRoute] = ()) -> None:
        self.settings = settings
        self.metrics_token = metrics_token if metrics_token is not None else settings.metrics_token
        from api.media import routes as media_routes  # here: api/media.py imports this module
        self.extra_routes = [*media_routes(), *extra_routes]
        from api.templates import TemplateRoutes  # here: api.templates builds on this module
        self.template_routes = TemplateRoutes(self)
        self.codes = ErrorCodes()
        self.llm_bounds: dict[str, dict] = {}   # api.llm_bounds() by setting, read by start()
        self.document = openapi.document({}, self.route_scopes())
        self.upload_limits = UploadLimits.from_settings(settings)
        # statement_timeout and idle_in_transaction_session_timeout on every pooled connection.
        self.pool = AsyncConnectionPool(settings.session_url(idle_tx=True), min_size=1, max_size=pool_size, open=False,
                                        kwargs={"autocommit": True, "application_name": "pgwa-api"},
                                        timeout=10, name="pgwa-api")
        self.send_batcher = SendBatcher(self.pool, ROUTE_SCOPES["send_message"])   # POST /v1/messages' group commit

    async def start(self) -> None:
        await self.pool.open(wait=True, timeout=30)
        async with self.pool.connection() as conn:
            await self.codes.load(conn)
            docs = await (await conn.execute(FUNCTION_DOCS)).fetchall()
            bounds = await (await conn.execute(LLM_BOUNDS)).fetchall()
        self.llm_bounds = {setting: {"type": kind, "minimum": low, "maximum": high, "meaning": meaning}
                           for setting, kind, low, high, meaning in bounds}
        self.document = openapi.document(dict(docs), self.route_scopes(), self.llm_bounds)

    async def stop(self) -> None:
        await self.send_batcher.stop()
        await self.pool.close()

    @property
    def exception_handlers(self) -> dict:
        handle = handler(self.codes)
        return {psycopg.Error: handle, ApiError: handle, PoolTimeout: handle}

    async def fetch_text(self, request: Request, sql: str, params: dict[str, Any]) -> str | None:
        """Run one authenticated statement (``%(key)s`` is the request's key hash, ``%(scope)s`` the
        scope its route needs, from ROUTE_SCOPES); its one value."""
        params = {**params, "key": key_hash(request), "scope": scope_of(request)}
        async with self.pool.connection() as conn:
            try:
                row = await (await conn.execute(sql, params)).fetchone()
            except psycopg.Error as exc:
                # The statement's count of the request rolled back with it: count it on
                # its own, so that requests that fail (a 404 while guessing ids, say) are
                # rate-limited too. Over the limit, this answers 429 instead.
                if exc.sqlstate not in UNCOUNTED and not conn.broken:
                    await conn.execute(AUTHENTICATE, params)
                raise
        return row[0] if row else None

    async def _json(self, request: Request, sql: str, params: dict[str, Any], status: int = 200) -> Response:
        return Response(await self.fetch_text(request, sql, params), status_code=status, media_type=JSON)

    def route_scopes(self) -> dict[tuple[str, str], str]:
        """(path, method) -> the scope its key needs, for the OpenAPI document."""
        return {(r.path, m): ROUTE_SCOPES[r.endpoint.__name__] for r in self.routes()
                if isinstance(r, Route) and r.path.startswith("/v1/") for m in (r.methods or ()) if m != "HEAD"}

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/numbers", self.numbers, methods=["GET"]),
            Route("/v1/numbers", self.register_number, methods=["POST"]),
            Route("/v1/portfolios", self.portfolios, methods=["GET"]),
            Route("/v1/numbers/{number_id}/messaging-limit", self.set_messaging_limit, methods=["PUT"]),
            Route("/v1/templates", self.templates, methods=["GET"]),
            Route("/v1/templates/sync", self.sync_templates, methods=["POST"]),
            *self.template_routes.routes(),
            Route("/v1/contacts", self.contacts, methods=["GET"]),
            Route("/v1/contacts/import", self.import_contacts, methods=["POST"]),
            Route("/v1/contacts/opt-out", self.opt_out, methods=["POST"]),
            Route("/v1/contacts/opt-in", self.opt_in, methods=["POST"]),
            Route("/v1/campaigns", self.campaigns, methods=["GET"]),
            Route("/v1/campaigns", self.create_campaign, methods=["POST"]),
            Route("/v1/campaigns/{campaign_id}", self.campaign_stats, methods=["GET"]),
            Route("/v1/campaigns/{campaign_id}/stats", self.campaign_stats, methods=["GET"]),
            Route("/v1/campaigns/{campaign_id}/start", self.start_campaign, methods=["POST"]),
            Route("/v1/campaigns/{campaign_id}/pause", self.pause_campaign, methods=["POST"]),
            Route("/v1/campaigns/{campaign_id}/resume", self.resume_campaign, methods=["POST"]),
            Route("/v1/campaigns/{campaign_id}/cancel", self.cancel_campaign, methods=["POST"]),
            Route("/v1/campaigns/{campaign_id}/reconcile", self.reconcile_campaign, methods=["POST"]),
            Route("/v1/campaigns/{campaign_id}/send-window", self.set_send_window, methods=["PUT"]),
            Route("/v1/numbers/{number_id}/conversations", self.conversations, methods=["GET"]),
            Route(f"{CONVERSATION_PATH}/messages", self.conversation, methods=["GET"]),
            Route(f"{CONVERSATION_PATH}/reply", self.reply, methods=["POST"]),
            Route(f"{CONVERSATION_PATH}/read", self.mark_read, methods=["POST"]),
            Route(f"{CONVERSATION_PATH}/assign", self.assign, methods=["POST"]),
            Route(f"{CONVERSATION_PATH}/release", self.release, methods=["POST"]),
            Route("/v1/messages", self.send_message, methods=["POST"]),
            Route("/v1/messages/{outbound_id}", self.message, methods=["GET"]),
            Route("/v1/numbers/{number_id}/bot-rules", self.bot_rules, methods=["GET"]),
            Route("/v1/numbers/{number_id}/bot-rules", self.save_bot_rule, methods=["POST"]),
            Route("/v1/bot-rules/{rule_id}", self.delete_bot_rule, methods=["DELETE"]),
            Route("/v1/numbers/{number_id}/llm", self.configure_llm, methods=["POST"]),
            Route("/v1/opt-out", self.configure_opt_out, methods=["POST"]),
            Route("/v1/notifications", self.notifications, methods=["GET"]),
            Route("/v1/notifications/read", self.read_notifications, methods=["POST"]),
            Route("/v1/notifications/{notification_id}/read", self.read_notification, methods=["POST"]),
            Route("/v1/keys", self.api_keys, methods=["GET"]),
            Route("/v1/keys", self.create_api_key, methods=["POST"]),
            Route("/v1/keys/{api_key_id}", self.revoke_api_key, methods=["DELETE"]),
            *self._event_routes(),
            *self._audience_routes(),
            *self.extra_routes,
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"], include_in_schema=False),
        ]

    def _event_routes(self) -> list[BaseRoute]:
        from api.events import EventRoutes  # it imports this module's input helpers
        return EventRoutes(self).routes()

    def _audience_routes(self) -> list[BaseRoute]:
        from api.contacts import AudienceRoutes  # it imports this module's input helpers
        return AudienceRoutes(self).routes()

    # -- numbers and templates ------------------------------------------------------------------

    async def numbers(self, request: Request) -> Response:
        return await self._json(request, NUMBERS, {})

    async def register_number(self, request: Request) -> Response:
        body = await _json_body(request)
        params = {
            "phone_number_id": _field(body, "phone_number_id", required=True, limit=64),
            "waba_id": _field(body, "waba_id", required=True, limit=64),
            "access_token": _field(body, "access_token", required=True),
            "app_secret": _field(body, "app_secret"),    # null keeps the secret, "" clears it
            "throughput_mps": _field(body, "throughput_mps", _to_int, default=80),
            "display_phone_number": _field(body, "display_phone_number", limit=64),
        }
        async with self.pool.connection() as conn:
            tenant_id, version = await (await conn.execute(
                PREPARE_NUMBER, {**params, "key": key_hash(request), "scope": scope_of(request)})).fetchone()
        # Meta's answer, not the client's word, is what gets stored; no connection is held
        # while the Graph API answers (a thread: the check is rare and synchronous).
        try:
            verified = await run_in_threadpool(verify_number, self.settings.graph_base_url, version,
                                               params["phone_number_id"], params["waba_id"], params["access_token"])
        except GraphCheckError as exc:
            raise ApiError(exc.sqlstate, exc.message, exc.hint) from None
        async with self.pool.connection() as conn:
            number_id = (await (await conn.execute(queries["register_number"], {
                **params, "tenant_id": tenant_id, "verified": orjson.dumps(verified).decode()})).fetchone())[0]
        return Response(orjson.dumps({"number_id": number_id}), status_code=201, media_type=JSON)

    async def portfolios(self, request: Request) -> Response:
        return await self._json(request, PORTFOLIOS, {})

    async def set_messaging_limit(self, request: Request) -> Response:
        body = await _json_body(request)
        # api.set_messaging_limit checks the tier's and the business id's values (PW100).
        return await self._json(request, SET_MESSAGING_LIMIT, {
            "number_id": _path_id(request, "number_id"),
            "tier": _field(body, "tier", required=True, limit=32),
            "business_id": _field(body, "business_id", limit=64)})

    async def templates(self, request: Request) -> Response:
        return await self._json(request, TEMPLATES, {"waba_id": _query(request, "waba_id"),
                                                     "status": _query(request, "status")})

    async def sync_templates(self, request: Request) -> Response:
        body = await _json_body(request)
        number_id = _field(body, "number_id", _to_int, required=True)
        page_size = _field(body, "page_size", _to_int, default=100, low=1, high=1000)
        params = {"key": key_hash(request), "scope": scope_of(request), "number_id": number_id}
        async with self.pool.connection() as conn:
            tenant_id, waba_id, token, version = await (await conn.execute(CREDENTIALS, params)).fetchone()
        # No connection is held while the Graph API answers.
        templates = await fetch_templates(self.settings.graph_base_url, version, waba_id, token,
                                          page_size=page_size)
        async with self.pool.connection() as conn:
            synced = await _row(conn, queries["sync_templates"], {
                "tenant_id": tenant_id, "waba_id": waba_id, "templates": orjson.dumps(templates).decode()})
        return Response(orjson.dumps(synced), media_type=JSON)

    # -- contacts -------------------------------------------------------------------------------

    async def contacts(self, request: Request) -> Response:
        return await self._json(request, CONTACTS, {
            "phone": _query(request, "phone"), "opted_out": _query(request, "opted_out", _to_bool),
            "name": _query(request, "name"), "tag": _query(request, "tag"), "filter": _json_query(request, "filter"),
            "before_id": _query(request, "before_id", _to_int), "limit": _limit(request)})

    async def _authenticate(self, request: Request) -> int:
        async with self.pool.connection() as conn:
            return (await (await conn.execute(AUTHENTICATE, {"key": key_hash(request), "scope": scope_of(request)})).fetchone())[0]

    async def _staged(self, conn: psycopg.AsyncConnection, upload: CsvUpload) -> None:
        """In the caller's transaction: the upload's statement timeout, then its COPY."""
        await conn.execute(UPLOAD_TIMEOUT, {"ms": int(self.upload_limits.deadline_s * 1000)})
        await upload.stage(conn)

    async def import_contacts(self, request: Request) -> Response:
        # Authenticated first, then the body spooled with no connection held, then one
        # transaction: stage, COPY, import.
        tenant_id = await self._authenticate(request)
        upload = CsvUpload(request, self.upload_limits)
        try:
            await upload.receive()
            options = {**dict(request.query_params), **upload.fields}
            params = {"tenant_id": tenant_id,
                      "default_country_code": _field(options, "default_country_code", limit=8),
                      "on_invalid": _field(options, "on_invalid", default="skip", limit=16),
                      "mapping": _json_object("mapping", options.get("mapping"))}
            async with self.pool.connection() as conn, conn.transaction():
                await self._staged(conn, upload)
                row = await (await conn.execute(IMPORT_CONTACTS if params["mapping"] is None else IMPORT_CONTACTS_MAPPED,
                                                params)).fetchone()
        finally:
            upload.close()
        return Response(row[0], media_type=JSON)

    async def _opt(self, request: Request, opted_out: bool) -> Response:
        body = await _json_body(request)
        return await self._json(request, OPT_OUT, {
            "opted_out": opted_out, "contact_id": _field(body, "contact_id", _to_int),
            "phone": _field(body, "phone", limit=64)})

    async def opt_out(self, request: Request) -> Response:
        return await self._opt(request, True)

    async def opt_in(self, request: Request) -> Response:
        return await self._opt(request, False)

    # -- campaigns ------------------------------------------------------------------------------

    async def campaigns(self, request: Request) -> Response:
        return await self._json(request, CAMPAIGNS, {
            "status": _query(request, "status"), "before_id": _query(request, "before_id", _to_int),
            "limit": _limit(request)})

    @staticmethod
    def _campaign_options(request: Request, fields: dict[str, str]) -> dict[str, Any]:
        """Parameters from the query, the Pgwa-Campaign header (a JSON object) and multipart
        fields (``params``, a JSON object, or one field per parameter), later ones winning."""
        options: dict[str, Any] = dict(request.query_params)
        for source in (request.headers.get("pgwa-campaign"), fields.get("params")):
            if source:
                try:
                    extra = orjson.loads(source)
                except orjson.JSONDecodeError:
                    raise _bad("campaign parameters are not JSON") from None
                if not isinstance(extra, dict):
                    raise _bad("campaign parameters must be a JSON object")
                options.update(extra)
        options.update({k: v for k, v in fields.items() if k != "params"})
        templates = options.get("templates")
        if isinstance(templates, str):
            try:
                templates = orjson.loads(templates)
            except orjson.JSONDecodeError:
                raise _bad("templates is not JSON", '[{"name": "order_update", "language": "en_US", '
                           '"params": [{"column": "name"}]}]') from None
        return {
            "number_id": _field(options, "number_id", _to_int, required=True),
            "name": _field(options, "name", required=True, limit=200),
            "templates": orjson.dumps(templates).decode() if templates is not None else None,
            "on_invalid": _field(options, "on_invalid", default="reject", limit=16),
            "scheduled_at": _field(options, "scheduled_at", _to_schedule),
            "start": _field(options, "start", _to_bool, default=False),
            "default_country_code": _field(options, "default_country_code", limit=8),
        }

    async def create_campaign(self, request: Request) -> Response:
        tenant_id = await self._authenticate(request)
        upload = CsvUpload(request, self.upload_limits)
        try:
            if upload.multipart is None:      # everything is known before the body: fail fast
                self._campaign_options(request, {})
            await upload.receive()            # no connection held while the client sends
            params = self._campaign_options(request, upload.fields)
            async with self.pool.connection() as conn, conn.transaction():
                at = params["scheduled_at"]
                if at is not None and at.tzinfo is None:
                    params["scheduled_at"] = (await (await conn.execute(LOCAL_TIME, (tenant_id, at))).fetchone())[0]
                await self._staged(conn, upload)
                created = await _row(conn, queries["create_campaign"], {**params, "tenant_id": tenant_id})
        finally:
            upload.close()
        return Response(orjson.dumps(created), status_code=201, media_type=JSON)

    async def campaign_stats(self, request: Request) -> Response:
        return await self._json(request, CAMPAIGN_STATS, {"campaign_id": _path_id(request, "campaign_id")})

    async def start_campaign(self, request: Request) -> Response:
        body = await _json_body(request, required=False)
        at = _field(body, "at", _to_schedule)
        local = at is not None and at.tzinfo is None
        return await self._json(request, START_CAMPAIGN, {
            "campaign_id": _path_id(request, "campaign_id"),
            "at": None if local else at, "at_local": at if local else None})

    async def set_send_window(self, request: Request) -> Response:
        body = await _json_body(request)
        return await self._json(request, SEND_WINDOW, {
            "campaign_id": _path_id(request, "campaign_id"),
            "start": _field(body, "start", _to_clock), "end": _field(body, "end", _to_clock)})

    async def pause_campaign(self, request: Request) -> Response:
        body = await _json_body(request, required=False)
        return await self._json(request, PAUSE_CAMPAIGN, {
            "campaign_id": _path_id(request, "campaign_id"),
            "reason": _field(body, "reason", default="paused by operator", limit=500)})

    async def resume_campaign(self, request: Request) -> Response:
        return await self._json(request, RESUME_CAMPAIGN, {"campaign_id": _path_id(request, "campaign_id")})

    async def cancel_campaign(self, request: Request) -> Response:
        return await self._json(request, CANCEL_CAMPAIGN, {"campaign_id": _path_id(request, "campaign_id")})

    async def reconcile_campaign(self, request: Request) -> Response:
        return await self._json(request, RECONCILE, {
            "campaign_id": _path_id(request, "campaign_id"),
            "fix": _query(request, "fix", _to_bool, False)})

    # -- the shared inbox -----------------------------------------------------------------------

    @staticmethod
    def _conversation_ids(request: Request) -> dict[str, int]:
        return {"number_id": _path_id(request, "number_id"), "contact_id": _path_id(request, "contact_id")}

    async def conversations(self, request: Request) -> Response:
        return await self._json(request, CONVERSATIONS, {
            "number_id": _path_id(request, "number_id"), "filter": _query(request, "filter") or "all",
            "agent": _query(request, "agent"), "before_at": _query(request, "before_at", _to_time),
            "before_contact_id": _query(request, "before_contact_id", _to_int), "limit": _limit(request)})

    async def conversation(self, request: Request) -> Response:
        return await self._json(request, CONVERSATION, {
            **self._conversation_ids(request), "before_at": _query(request, "before_at", _to_time),
            "before_id": _query(request, "before_id", _to_int), "limit": _limit(request)})

    async def reply(self, request: Request) -> Response:
        body = await _json_body(request)
        return await self._json(request, REPLY, {**self._conversation_ids(request),
                                                 "reply": orjson.dumps(body).decode()}, status=201)

    # -- the send API ---------------------------------------------------------------------------

    async def send_message(self, request: Request) -> Response:
        """A message from the tenant's own system; ``Idempotency-Key`` makes a retry safe."""
        body = await _json_body(request)
        message, template = body.get("message"), body.get("template")
        if message is not None and template is not None:
            message = None                                  # one or the other: refused below
        elif isinstance(template, dict):
            message = {**template, "type": "template"}      # {"template": {"name", "language", ...}}
        if not isinstance(message, dict):
            raise _bad("give message (an object) or template (an object), not both",
                       '{"template": {"name": "...", "language": "en_US", "body": [...]}} or '
                       '{"message": {"type": "text", "text": "..."}}')
        number_id = _field(body, "number_id", lambda n, v: _to_int(n, v, low=1), required=True)
        to = _field(body, "to", required=True, limit=64)
        idempotency_key = request.headers.get("idempotency-key")
        # Authenticated, sent and committed with the requests that arrive beside it.
        result, replayed = await self.send_batcher.send(SendRequest(
            key=key_hash(request), number_id=number_id, to=to, message=message,
            idempotency_key=idempotency_key))
        return Response(result, status_code=200 if replayed else 201, media_type=JSON,
                        headers={"Idempotent-Replayed": "true"} if replayed else None)

    async def message(self, request: Request) -> Response:
        return await self._json(request, MESSAGE, {"outbound_id": _path_id(request, "outbound_id")})

    async def mark_read(self, request: Request) -> Response:
        return await self._json(request, MARK_READ, self._conversation_ids(request))

    async def assign(self, request: Request) -> Response:
        body = await _json_body(request)
        return await self._json(request, ASSIGN, {**self._conversation_ids(request),
                                                  "agent": _field(body, "agent", required=True, limit=200)})

    async def release(self, request: Request) -> Response:
        return await self._json(request, RELEASE, self._conversation_ids(request))

    # -- bots, opt-out keywords, LLM replies ----------------------------------------------------

    async def bot_rules(self, request: Request) -> Response:
        return await self._json(request, BOT_RULES, {"number_id": _path_id(request, "number_id")})

    async def save_bot_rule(self, request: Request) -> Response:
        body = await _json_body(request)
        reply = body.get("reply")
        if not isinstance(reply, dict):
            raise _bad("reply must be a JSON object", '{"type": "text", "text": "We open at 9."}')
        return await self._json(request, SAVE_BOT_RULE, {
            "number_id": _path_id(request, "number_id"),
            "kind": _field(body, "kind", required=True, limit=32),
            "pattern": _field(body, "pattern", required=True, limit=1000),
            "reply": orjson.dumps(reply).decode(),
            "priority": _field(body, "priority", _to_int, default=100, low=0, high=1_000_000),
            "enabled": _field(body, "enabled", _to_bool, default=True),
            "rule_id": _field(body, "rule_id", _to_int)}, status=201)

    async def delete_bot_rule(self, request: Request) -> Response:
        return await self._json(request, DELETE_BOT_RULE, {"rule_id": _path_id(request, "rule_id")})

    async def configure_llm(self, request: Request) -> Response:
        body = await _json_body(request)
        return await self._json(request, CONFIGURE_LLM, {
            "number_id": _path_id(request, "number_id"),
            "enabled": _field(body, "enabled", _to_bool),
            **{name: _bounded(body, name, self.llm_bounds)
               for name in ("system_prompt", "daily_limit", "context_messages", "number_daily_limit")}})

    async def configure_opt_out(self, request: Request) -> Response:
        body = await _json_body(request)
        return await self._json(request, CONFIGURE_OPT_OUT, {
            "opt_out_keywords": _keywords(body, "opt_out_keywords"),
            "opt_in_keywords": _keywords(body, "opt_in_keywords"),
            # api.configure_opt_out holds them to Meta's cap on a text (core.text_body_max).
            "opt_out_reply": _field(body, "opt_out_reply"),
            "opt_in_reply": _field(body, "opt_in_reply")})

    # -- notifications and keys -----------------------------------------------------------------

    async def notifications(self, request: Request) -> Response:
        return await self._json(request, NOTIFICATIONS, {
            "unread": _query(request, "unread", _to_bool, False),
            "before_id": _query(request, "before_id", _to_int), "limit": _limit(request)})

    async def read_notifications(self, request: Request) -> Response:
        body = await _json_body(request)
        ids = body.get("ids")
        if ids is None:
            if body.get("all") is not True:
                raise _bad('give "ids": [...] or "all": true')
        elif not isinstance(ids, list) or len(ids) > 10_000:
            raise _bad("ids must be a list of at most 10,000 notification ids")
        else:
            ids = [_to_int("ids[]", i) for i in ids]
        return await self._json(request, READ_NOTIFICATIONS, {"ids": ids})

    async def read_notification(self, request: Request) -> Response:
        return await self._json(request, READ_NOTIFICATIONS, {"ids": [_path_id(request, "notification_id")]})

    async def api_keys(self, request: Request) -> Response:
        return await self._json(request, API_KEYS, {})

    async def create_api_key(self, request: Request) -> Response:
        body = await _json_body(request)
        return await self._json(request, CREATE_API_KEY, {
            "name": _field(body, "name", required=True, limit=200),
            "key_scope": _field(body, "scope", default=ADMIN, limit=16),
            "expires_at": _field(body, "expires_at", _to_time),
            "rate_limit_per_minute": _field(body, "rate_limit_per_minute", _to_int, low=1, high=1_000_000)},
            status=201)

    async def revoke_api_key(self, request: Request) -> Response:
        return await self._json(request, REVOKE_API_KEY, {"api_key_id": _path_id(request, "api_key_id")})

    # -- operations -----------------------------------------------------------------------------

    async def metrics(self, request: Request) -> Response:
        """Prometheus text, behind a bearer token when PGWA_METRICS_TOKEN is set; without one,
        served only while the API listens on loopback."""
        if self.metrics_token:
            if not token_matches(request, self.metrics_token):
                raise ApiError("PW401", "the metrics token is missing or wrong",
                               "Send Authorization: Bearer <PGWA_METRICS_TOKEN>.")
        elif not _loopback(self.settings.api_host):
            raise ApiError("PW403", f"/metrics needs a token: the API listens on {self.settings.api_host}, "
                           "not loopback only, and PGWA_METRICS_TOKEN is not set",
                           "Set PGWA_METRICS_TOKEN and scrape with Authorization: Bearer <token>, "
                           "or listen on 127.0.0.1 (PGWA_API_HOST).")
        async with self.pool.connection() as conn:
            text = (await (await conn.execute(METRICS)).fetchone())[0]
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(self.document)
