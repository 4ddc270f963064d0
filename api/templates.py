"""Template management routes: create a template through Meta's API, show one, delete one.

``GET /v1/templates`` (the listing) and ``POST /v1/templates/sync`` stay in api/routes.py.
Creating and deleting need Meta in the middle, so each is three statements with no
connection held while the Graph API answers (api/graph_templates.py):

    POST /v1/templates       api.prepare_template (authenticated: checks the definition,
                             claims the name and language)  ->  POST /{waba-id}/message_templates
                             ->  api.template_submitted, or api.template_refused when Meta said no
    DELETE /v1/templates/ID  api.prepare_template_deletion (PW330 while campaigns send it,
                             unless ?force=true)  ->  DELETE /{waba-id}/message_templates?name=&hsm_id=
                             ->  api.template_deleted

The WABA's access token goes from the first statement to Meta and nowhere else: never into a
response, an error or a log line. The first statement resolves the tenant from the key; the
later ones are the named queries of pgwa/queries.sql with that tenant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg.rows import dict_row
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api import graph_templates
from api.auth import key_hash
from api.errors import ApiError
from api.routes import (
    AUTHENTICATE,
    JSON,
    UNCOUNTED,
    _bad,
    _field,
    _json_body,
    _path_id,
    _query,
    _to_bool,
    _to_int,
    scope_of,
)
from pgwa.queries import queries

if TYPE_CHECKING:
    from api.routes import JsonApi

PREPARE = """SELECT a.tenant_id, p.*
FROM (SELECT api.authenticate(%(key)s, %(scope)s) AS tenant_id) a,
     api.prepare_template(a.tenant_id, %(definition)s::jsonb, %(waba_id)s::text, %(number_id)s::bigint) p"""
PREPARE_DELETION = """SELECT a.tenant_id, d.*
FROM (SELECT api.authenticate(%(key)s, %(scope)s) AS tenant_id) a,
     api.prepare_template_deletion(a.tenant_id, %(template_id)s::bigint, %(force)s::boolean) d"""
TEMPLATE = """SELECT api.template_detail(api.authenticate(%(key)s, %(scope)s), %(template_id)s::bigint)::text"""


class TemplateRoutes:
    """The routes, bound to the JsonApi whose pool, settings and error handling they share."""

    def __init__(self, api: JsonApi) -> None:
        self.api = api

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/templates", self.create_template, methods=["POST"]),
            Route("/v1/templates/{template_id}", self.template, methods=["GET"]),
            Route("/v1/templates/{template_id}", self.delete_template, methods=["DELETE"]),
        ]

    async def _first(self, request: Request, sql: str, params: dict[str, Any]) -> dict[str, Any]:
        """The one row of an authenticated statement, as a dict; a refused one still counts
        against the key's rate limit (as JsonApi.fetch_text does)."""
        params = {**params, "key": key_hash(request), "scope": scope_of(request)}
        async with self.api.pool.connection() as conn:
            try:
                return await (await conn.cursor(row_factory=dict_row).execute(sql, params)).fetchone()
            except psycopg.Error as exc:
                if exc.sqlstate not in UNCOUNTED and not conn.broken:
                    await conn.execute(AUTHENTICATE, params)
                raise

    async def _named(self, name: str, params: dict[str, Any]) -> Any:
        async with self.api.pool.connection() as conn:
            return (await (await conn.execute(queries[name], params)).fetchone())[0]

    async def create_template(self, request: Request) -> Response:
        body = await _json_body(request)
        definition = {k: body[k] for k in graph_templates.DEFINITION_FIELDS if k in body}
        if not isinstance(definition.get("components"), list):
            raise _bad("components must be a list of Meta's template components",
                       '[{"type": "BODY", "text": "Hi {{1}}, your order is ready.", '
                       '"example": {"body_text": [["Ana"]]}}]')
        claim = await self._first(request, PREPARE, {
            "definition": orjson.dumps(definition).decode(), "waba_id": _field(body, "waba_id", limit=64),
            "number_id": _field(body, "number_id", _to_int, low=1)})
        tenant = {"tenant_id": claim["tenant_id"], "template_id": claim["template_id"]}
        if not claim["submit"]:           # the same definition again: the template as it stands
            return Response(orjson.dumps(await self._named("template_detail", tenant)), media_type=JSON)
        settings = self.api.settings
        try:
            answer = await graph_templates.create_template(
                settings.graph_base_url, claim["graph_api_version"], claim["waba_id"], claim["access_token"],
                claim["request"])
        except ApiError:
            await self._named("template_refused", tenant)
            raise
        template = await self._named("template_submitted", {**tenant, "answer": orjson.dumps(answer).decode()})
        return Response(orjson.dumps(template), status_code=201, media_type=JSON)

    async def template(self, request: Request) -> Response:
        return Response(await self.api.fetch_text(request, TEMPLATE, {"template_id": _path_id(request, "template_id")}),
                        media_type=JSON)

    async def delete_template(self, request: Request) -> Response:
        plan = await self._first(request, PREPARE_DELETION, {
            "template_id": _path_id(request, "template_id"), "force": _query(request, "force", _to_bool, False)})
        if plan["submit"]:
            settings = self.api.settings
            await graph_templates.delete_template(settings.graph_base_url, plan["graph_api_version"], plan["waba_id"],
                                                  plan["access_token"], plan["name"], plan["meta_template_id"])
        template = await self._named("template_deleted", {"tenant_id": plan["tenant_id"],
                                                          "template_id": plan["template_id"]})
        return Response(orjson.dumps(template), media_type=JSON)
