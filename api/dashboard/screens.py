"""The dashboard's other screens: contacts, templates, bot rules, numbers, notifications
and API keys. Like views.py, each request is one statement (after the session's, for
the page's header) through the ``api`` functions the JSON API uses, its tenant and role
check resolved in SQL by ``api.dashboard_authorize(<session hash>, <action>)``; the
actions and the roles that hold them are listed in db/migrations/0111_dashboard_screens.sql.
Nothing here writes a table, and no secret leaves SQL but an API key, shown once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api.dashboard.sessions import OneTimeSlots
from api.dashboard.views import PageError, _field, _int, _redirect
from api.errors import ApiError
from api.upload import CsvUpload

if TYPE_CHECKING:
    from api.dashboard.views import Dashboard

PAGE = 50

# -- statements -------------------------------------------------------------------------------

CONTACTS = """SELECT coalesce(json_agg(c ORDER BY c.contact_id DESC), '[]')::text
FROM api.search_contacts(api.dashboard_authorize(%(s)s, 'contacts.read'), %(phone)s::text, %(name)s::text,
                         %(tag)s::text, %(filter)s::jsonb, %(opted_out)s::boolean, %(before_id)s::bigint,
                         %(limit)s::integer) c"""
OPT_OUT = """SELECT contact_id FROM api.set_contact_opt_out(api.dashboard_authorize(%(s)s, 'contacts.manage'),
                                                          %(opted_out)s, %(contact_id)s::bigint, NULL)"""
MAY_IMPORT = "SELECT api.dashboard_authorize(%(s)s, 'contacts.manage')"
IMPORT = """SELECT row_to_json(r)::text
FROM api.import_contacts(api.dashboard_authorize(%(s)s, 'contacts.manage'), %(default_country_code)s::text, 'skip') r"""
TEMPLATES = """WITH t AS MATERIALIZED (SELECT api.dashboard_authorize(%(s)s, 'templates.read') AS tenant_id)
SELECT coalesce(json_agg(json_build_object(
           'template', x,
           'parameters', (SELECT coalesce(json_agg(p), '[]') FROM api.template_parameters(t.tenant_id, x.template_id) p))
       ORDER BY x.name, x.language, x.template_id), '[]')::text
FROM t, api.templates(t.tenant_id) x"""
BOT_NUMBERS = """SELECT coalesce(json_agg(n ORDER BY n.number_id), '[]')::text
FROM api.numbers(api.dashboard_authorize(%(s)s, 'bots.read')) n"""
BOT_RULES = """SELECT coalesce(json_agg(r), '[]')::text
FROM api.bot_rules(api.dashboard_authorize(%(s)s, 'bots.read'), %(number_id)s::bigint) r"""
TRY_RULE = """SELECT row_to_json(r)::text
FROM api.match_bot_rule(api.dashboard_authorize(%(s)s, 'bots.read'), %(number_id)s::bigint, %(text)s::text,
                        %(welcome)s::boolean) r WHERE r.rule_id IS NOT NULL"""
SAVE_RULE = """SELECT rule_id FROM api.save_bot_rule(api.dashboard_authorize(%(s)s, 'bots.manage'),
    %(number_id)s::bigint, %(kind)s::text, %(pattern)s::text, %(reply)s::jsonb, %(priority)s::integer)"""
DELETE_RULE = "SELECT api.delete_bot_rule(api.dashboard_authorize(%(s)s, 'bots.manage'), %(rule_id)s::bigint)"
NUMBERS = """WITH t AS MATERIALIZED (SELECT api.dashboard_authorize(%(s)s, 'numbers.read') AS tenant_id)
SELECT json_build_object(
    'numbers', (SELECT coalesce(json_agg(n ORDER BY n.number_id), '[]') FROM t, api.numbers(t.tenant_id) n),
    'portfolios', (SELECT coalesce(json_agg(p ORDER BY p.portfolio_id), '[]') FROM t, api.portfolios(t.tenant_id) p)
)::text"""
NOTIFICATIONS = """SELECT coalesce(json_agg(n ORDER BY n.notification_id DESC), '[]')::text
FROM api.notifications(api.dashboard_authorize(%(s)s, 'notifications.read'), %(unread)s::boolean,
                       %(before_id)s::bigint, %(limit)s::integer) n"""
READ_NOTIFICATIONS = """SELECT api.read_notifications(api.dashboard_authorize(%(s)s, 'notifications.manage'),
                                                     %(ids)s::bigint[])"""
NEW_KEY_COOKIE = "pgwa_new_key"     # the one-time slot of a key just created (never the key)
KEYS = """SELECT coalesce(json_agg(k ORDER BY k.api_key_id DESC), '[]')::text
FROM api.api_keys(api.dashboard_authorize(%(s)s, 'keys.manage')) k"""
CREATE_KEY = """SELECT row_to_json(k)::text
FROM api.create_api_key(api.dashboard_authorize(%(s)s, 'keys.manage'), %(name)s::text, %(scope)s::text) k"""
REVOKE_KEY = "SELECT api_key_id FROM api.revoke_api_key(api.dashboard_authorize(%(s)s, 'keys.manage'), %(key_id)s::bigint)"

RULE_KINDS = ("exact", "starts_with", "contains", "regex", "welcome", "default")
KEY_SCOPES = ("read", "send", "admin")


def _q(request: Request, name: str, limit: int = 200) -> str | None:
    value = (request.query_params.get(name) or "").strip()
    if len(value) > limit:
        raise PageError(400, f"{name} is too long")
    return value or None


def _back(form_value: str, base: str) -> str:
    """Where a form returns to: its own screen with the list's query, never elsewhere."""
    return form_value if form_value.startswith(base) and "//" not in form_value and "\n" not in form_value else base


class Screens:
    """The routes of the screens, run through the Dashboard's plumbing (session, errors, CSRF)."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.d = dashboard

    def routes(self) -> list[BaseRoute]:
        page = self.d._page
        return [
            Route("/dashboard/contacts", page(self.contacts), methods=["GET"]),
            Route("/dashboard/contacts/import", page(self.import_contacts), methods=["POST"]),
            Route("/dashboard/contacts/{contact_id}/{action}", page(self.opt), methods=["POST"]),
            Route("/dashboard/templates", page(self.templates), methods=["GET"]),
            Route("/dashboard/bots", page(self.bots), methods=["GET"]),
            Route("/dashboard/bots/{number_id}/rules", page(self.save_rule), methods=["POST"]),
            Route("/dashboard/bots/{number_id}/rules/{rule_id}/delete", page(self.delete_rule), methods=["POST"]),
            Route("/dashboard/numbers", page(self.numbers), methods=["GET"]),
            Route("/dashboard/notifications", page(self.notifications), methods=["GET"]),
            Route("/dashboard/notifications/read", page(self.read_notifications), methods=["POST"]),
            Route("/dashboard/keys", page(self.keys), methods=["GET"]),
            Route("/dashboard/keys", page(self.create_key), methods=["POST"]),
            Route("/dashboard/keys/{key_id}/revoke", page(self.revoke_key), methods=["POST"]),
        ]

    async def _page_of(self, request: Request, template: str, sql: str, params: dict[str, Any],
                       **context: Any) -> Response:
        session = await self.d._session(request)
        data = await self.d._json(sql, {"s": self.d._hash(request), **params})
        return self.d._render(request, template, {**context, "data": data}, session=session)

    # -- contacts -----------------------------------------------------------------------------

    def _contact_search(self, request: Request) -> dict[str, Any]:
        field, value = _q(request, "field", 100), _q(request, "value")
        opted = _q(request, "opted_out", 8)
        before = _q(request, "before_id", 20)
        return {"phone": _q(request, "phone", 40), "name": _q(request, "name"), "tag": _q(request, "tag", 100),
                "field": field, "value": value,
                "filter": orjson.dumps({"field": field, "op": "eq", "value": value or ""}).decode() if field else None,
                "opted_out": {"yes": True, "no": False}.get(opted or ""),
                "before_id": _int(before, "contact") if before else None}

    async def contacts(self, request: Request, *, imported: dict | None = None) -> Response:
        search = self._contact_search(request) if imported is None else {
            k: None for k in ("phone", "name", "tag", "field", "value", "filter", "opted_out", "before_id")}
        session = await self.d._session(request)
        contacts = await self.d._json(CONTACTS, {"s": self.d._hash(request), **search, "limit": PAGE})
        shown = {k: request.query_params.get(k, "") for k in ("phone", "name", "tag", "field", "value", "opted_out")}
        query = urlencode({k: v for k, v in shown.items() if v})
        older = (f"/dashboard/contacts?{urlencode({**{k: v for k, v in shown.items() if v}, 'before_id': contacts[-1]['contact_id']})}"
                 if len(contacts) == PAGE else None)
        return self.d._render(request, "contacts.html", {
            "contacts": contacts, "search": shown, "older": older, "imported": imported,
            "back": "/dashboard/contacts" + (f"?{query}" if query else "")}, session=session)

    async def opt(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ("opt-out", "opt-in"):
            raise PageError(404, "no such action")
        form = await self.d._form(request)
        await self.d._one(OPT_OUT, {"s": self.d._hash(request), "opted_out": action == "opt-out",
                                    "contact_id": _int(request.path_params["contact_id"], "contact")})
        return _redirect(_back(_field(form, "back", required=False), "/dashboard/contacts"))

    async def import_contacts(self, request: Request) -> Response:
        # Authorised first, then the body spooled with no connection held (api/upload.py),
        # then one transaction: stage, COPY, import, authorised again inside it.
        s = self.d._hash(request)
        await self.d._one(MAY_IMPORT, {"s": s})
        api = self.d.json_api
        upload = CsvUpload(request, api.upload_limits)
        try:
            try:
                await upload.receive()
            except ApiError as exc:
                raise PageError(exc.status or 400, f"{exc.message}. {exc.hint or ''}".strip()) from None
            token = self.d._token(request)
            given = request.headers.get("x-csrf-token") or upload.fields.get("csrf_token")
            if token is None or not self.d.signer.csrf_ok(token, given):
                raise PageError(403, "The form has expired (CSRF check failed); reload the page and try again.")
            country = (upload.fields.get("default_country_code") or "").strip()[:8] or None
            async with api.pool.connection() as conn, conn.transaction():
                await api._staged(conn, upload)
                row = await (await conn.execute(IMPORT, {"s": s, "default_country_code": country})).fetchone()
        finally:
            upload.close()
        return await self.contacts(request, imported=orjson.loads(row[0]))

    # -- templates ----------------------------------------------------------------------------

    async def templates(self, request: Request) -> Response:
        return await self._page_of(request, "templates_list.html", TEMPLATES, {})

    # -- bots ---------------------------------------------------------------------------------

    async def bots(self, request: Request) -> Response:
        session = await self.d._session(request)
        s = self.d._hash(request)
        numbers = await self.d._json(BOT_NUMBERS, {"s": s})
        raw = request.query_params.get("number_id")
        number_id = _int(raw, "number") if raw else (numbers[0]["number_id"] if numbers else None)
        rules = [] if number_id is None else await self.d._json(BOT_RULES, {"s": s, "number_id": number_id})
        text = request.query_params.get("text")
        tried = None
        if number_id is not None and text is not None:
            if len(text) > 4096:
                raise PageError(400, "the message is too long")
            welcome = bool(request.query_params.get("welcome"))
            answer = await self.d._one(TRY_RULE, {"s": s, "number_id": number_id, "text": text, "welcome": welcome})
            tried = {"text": text, "welcome": welcome, "rule": orjson.loads(answer) if answer else None}
        return self.d._render(request, "bots.html", {
            "numbers": numbers, "number_id": number_id, "rules": rules, "tried": tried, "kinds": RULE_KINDS},
            session=session)

    async def save_rule(self, request: Request) -> Response:
        form = await self.d._form(request)
        number_id = _int(request.path_params["number_id"], "number")
        kind = _field(form, "kind")
        priority = _field(form, "priority", required=False).strip() or "100"
        try:
            priority_value = int(priority)
        except ValueError:
            raise PageError(400, "priority must be a whole number") from None
        pattern = _field(form, "pattern", required=False)
        await self.d._one(SAVE_RULE, {
            "s": self.d._hash(request), "number_id": number_id, "kind": kind,
            "pattern": pattern if pattern.strip() and kind not in ("welcome", "default") else None,
            "reply": orjson.dumps({"type": "text", "text": _field(form, "reply")}).decode(),
            "priority": priority_value})
        return _redirect(f"/dashboard/bots?number_id={number_id}")

    async def delete_rule(self, request: Request) -> Response:
        await self.d._form(request)
        number_id = _int(request.path_params["number_id"], "number")
        await self.d._one(DELETE_RULE, {"s": self.d._hash(request),
                                        "rule_id": _int(request.path_params["rule_id"], "rule")})
        return _redirect(f"/dashboard/bots?number_id={number_id}")

    # -- numbers ------------------------------------------------------------------------------

    async def numbers(self, request: Request) -> Response:
        session = await self.d._session(request)
        data = await self.d._json(NUMBERS, {"s": self.d._hash(request)})
        portfolio_of = {n: p for p in data["portfolios"] for n in p["number_ids"] or ()}
        return self.d._render(request, "numbers.html", {
            "numbers": [{**n, "portfolio": portfolio_of.get(n["number_id"])} for n in data["numbers"]]},
            session=session)

    # -- notifications ------------------------------------------------------------------------

    async def notifications(self, request: Request) -> Response:
        session = await self.d._session(request)
        unread = request.query_params.get("unread") == "1"
        before = _q(request, "before_id", 20)
        items = await self.d._json(NOTIFICATIONS, {
            "s": self.d._hash(request), "unread": unread, "before_id": _int(before, "notification") if before else None,
            "limit": PAGE})
        older = None
        if len(items) == PAGE:
            older = "/dashboard/notifications?" + urlencode(
                {**({"unread": "1"} if unread else {}), "before_id": items[-1]["notification_id"]})
        template = "_notifications.html" if request.query_params.get("fragment") else "notifications.html"
        return self.d._render(request, template, {"items": items, "unread": unread, "older": older},
                              session=session)

    async def read_notifications(self, request: Request) -> Response:
        form = await self.d._form(request)
        raw = _field(form, "notification_id", required=False).strip()
        ids = [_int(raw, "notification")] if raw else None
        await self.d._one(READ_NOTIFICATIONS, {"s": self.d._hash(request), "ids": ids})
        return _redirect(_back(_field(form, "back", required=False), "/dashboard/notifications"))

    # -- API keys -----------------------------------------------------------------------------

    async def keys(self, request: Request) -> Response:
        session = await self.d._session(request)
        s = self.d._hash(request)
        keys = await self.d._json(KEYS, {"s": s})
        # The key just created (POST, then this GET): shown once, from its one-time slot.
        slot = request.cookies.get(NEW_KEY_COOKIE)
        created = self.d.once.take(s, slot) if slot else None
        response = self.d._render(request, "keys.html", {
            "keys": keys, "created": created, "lost": bool(slot) and created is None, "scopes": KEY_SCOPES},
            session=session)
        response.headers["Cache-Control"] = "no-store"     # a new key is on this page once
        if slot:
            response.delete_cookie(NEW_KEY_COOKIE, path="/dashboard/keys")
        return response

    async def create_key(self, request: Request) -> Response:
        """POST/redirect/GET: a reload of the page that shows the key creates no other key."""
        form = await self.d._form(request)
        s = self.d._hash(request)
        created = await self.d._json(CREATE_KEY, {"s": s, "name": _field(form, "name"),
                                                  "scope": _field(form, "scope")})
        response = _redirect("/dashboard/keys")
        response.set_cookie(NEW_KEY_COOKIE, self.d.once.put(s, created), max_age=int(OneTimeSlots.TTL_S),
                            httponly=True, samesite="strict", path="/dashboard/keys",
                            secure=request.url.scheme == "https")
        return response

    async def revoke_key(self, request: Request) -> Response:
        await self.d._form(request)
        await self.d._one(REVOKE_KEY, {"s": self.d._hash(request), "key_id": _int(request.path_params["key_id"], "key")})
        return _redirect("/dashboard/keys")
