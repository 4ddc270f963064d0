"""Contacts, fields, segments, retargeting and the per-recipient report in the JSON API.

::

    GET    /v1/contacts/export?segment_id=&filter=      api.open_contacts_export (CSV, streamed)
    GET    /v1/contacts/{contact_id}                    api.contact
    PATCH  /v1/contacts/{contact_id}                    api.update_contact
    DELETE /v1/contacts/{contact_id}                    api.delete_contact (erasure)
    POST   /v1/contacts/tags                            api.tag_contacts
    GET    /v1/contact-fields                           api.contact_fields
    POST   /v1/contact-fields                           api.define_contact_field
    DELETE /v1/contact-fields/{name}                    api.delete_contact_field
    GET    /v1/segments                                 api.segments
    POST   /v1/segments                                 api.save_segment (segment_id: replace)
    DELETE /v1/segments/{segment_id}                    api.delete_segment
    GET    /v1/segments/{segment_id}/count              api.segment_count
    GET    /v1/segments/count?filter=|tags=             api.segment_count (inline filter or tags)
    POST   /v1/campaigns/from-segment                   api.create_campaign_from_segment
    POST   /v1/campaigns/{campaign_id}/retarget         api.retarget_campaign
    GET    /v1/campaigns/{campaign_id}/recipients?format=csv|json   api.open_campaign_recipients

Each JSON route is one statement that authenticates the key (api/routes.py ROUTE_SCOPES)
and calls one function. The two streamed routes open a cursor with their function in a
transaction of their own and FETCH it a slice at a time while the client reads, so a
million-line report holds one slice in memory, here and in the database. Search by name,
tag and filter is GET /v1/contacts (api/routes.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from api.auth import key_hash
from api.routes import (
    JSON,
    UPLOAD_TIMEOUT,
    _bad,
    _field,
    _json_body,
    _path_id,
    _query,
    _to_bool,
    _to_int,
    _to_time,
    scope_of,
)

if TYPE_CHECKING:
    from api.routes import JsonApi

CONTACT = """SELECT row_to_json(c)::text FROM api.contact(api.authenticate(%(key)s, %(scope)s), %(contact_id)s::bigint) c"""
UPDATE_CONTACT = """SELECT row_to_json(c)::text
FROM api.update_contact(api.authenticate(%(key)s, %(scope)s), %(contact_id)s::bigint, %(name)s::text, %(fields)s::jsonb,
                        %(add_tags)s::text[], %(remove_tags)s::text[]) c"""
DELETE_CONTACT = """SELECT row_to_json(c)::text
FROM api.delete_contact(api.authenticate(%(key)s, %(scope)s), %(contact_id)s::bigint) c"""
TAG_CONTACTS = """SELECT json_build_object('changed',
    api.tag_contacts(api.authenticate(%(key)s, %(scope)s), %(contact_ids)s::bigint[], %(add_tags)s::text[],
                     %(remove_tags)s::text[]))::text"""
FIELDS = """SELECT coalesce(json_agg(f), '[]')::text FROM api.contact_fields(api.authenticate(%(key)s, %(scope)s)) f"""
DEFINE_FIELD = """SELECT row_to_json(f)::text
FROM api.define_contact_field(api.authenticate(%(key)s, %(scope)s), %(name)s::text, %(type)s::text) f"""
DELETE_FIELD = """SELECT json_build_object('name',
    api.delete_contact_field(api.authenticate(%(key)s, %(scope)s), %(name)s::text))::text"""
SEGMENTS = """SELECT coalesce(json_agg(s), '[]')::text FROM api.segments(api.authenticate(%(key)s, %(scope)s)) s"""
SAVE_SEGMENT = """SELECT row_to_json(s)::text
FROM api.save_segment(api.authenticate(%(key)s, %(scope)s), %(name)s::text, %(filter)s::jsonb, %(segment_id)s::bigint) s"""
DELETE_SEGMENT = """SELECT json_build_object('segment_id',
    api.delete_segment(api.authenticate(%(key)s, %(scope)s), %(segment_id)s::bigint))::text"""
SEGMENT_COUNT = """SELECT json_build_object('count',
    api.segment_count(api.authenticate(%(key)s, %(scope)s), %(segment_id)s::bigint, %(filter)s::jsonb,
                      %(tags)s::text[]))::text"""
FROM_SEGMENT = """SELECT row_to_json(c)::text
FROM api.create_campaign_from_segment(api.authenticate(%(key)s, %(scope)s), %(number_id)s::bigint, %(name)s::text,
                                      %(templates)s::jsonb, %(segment_id)s::bigint, %(filter)s::jsonb, %(tags)s::text[],
                                      %(scheduled_at)s::timestamptz, %(start)s::boolean, %(on_invalid)s::text) c"""
RETARGET = """SELECT row_to_json(c)::text
FROM api.retarget_campaign(api.authenticate(%(key)s, %(scope)s), %(campaign_id)s::bigint, %(who)s::text, %(name)s::text,
                           %(templates)s::jsonb, %(scheduled_at)s::timestamptz, %(start)s::boolean,
                           %(number_id)s::bigint, %(on_invalid)s::text) c"""
OPEN_RECIPIENTS = """SELECT api.open_campaign_recipients(api.authenticate(%(key)s, %(scope)s), %(campaign_id)s::bigint,
                                                          %(format)s::text, 'recipients')"""
OPEN_EXPORT = """SELECT api.open_contacts_export(api.authenticate(%(key)s, %(scope)s), %(segment_id)s::bigint,
                                                 %(filter)s::jsonb, 'contacts_export')"""
# The cursor names are the constants the functions are given above.
FETCH_RECIPIENTS = "FETCH FORWARD 5000 FROM recipients"
FETCH_EXPORT = "FETCH FORWARD 5000 FROM contacts_export"


def _json_arg(name: str, value: Any, kind: type, example: str) -> str | None:
    """A JSON object or list argument, re-encoded for a ::jsonb parameter."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise _bad(f"{name} is not JSON", example) from None
    if not isinstance(value, kind):
        raise _bad(f"{name} must be a JSON {'object' if kind is dict else 'array'}", example)
    return orjson.dumps(value).decode()


def _tags(body: dict, name: str) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 100 or not all(isinstance(t, str) and len(t) <= 64 for t in value):
        raise _bad(f"{name} must be a list of at most 100 tags of up to 64 characters", '["vip", "newsletter"]')
    return value


FILTER_EXAMPLE = '{"all": [{"tag": "vip"}, {"field": "city", "op": "eq", "value": "Paris"}]}'
TEMPLATES_EXAMPLE = '[{"name": "order_update", "language": "en_US", "params": [{"column": "name"}]}]'


def _audience(body: dict) -> dict[str, Any]:
    return {"segment_id": _field(body, "segment_id", _to_int, low=1),
            "filter": _json_arg("filter", body.get("filter"), dict, FILTER_EXAMPLE),
            "tags": _tags(body, "tags")}


class AudienceRoutes:
    """The routes of this area, calling through ``json_api`` (its pool, its key check)."""

    def __init__(self, json_api: JsonApi) -> None:
        self.api = json_api

    def routes(self) -> list[Route]:
        return [
            Route("/v1/contacts/export", self.export_contacts, methods=["GET"]),
            Route("/v1/contacts/tags", self.tag_contacts, methods=["POST"]),
            Route("/v1/contacts/{contact_id}", self.contact, methods=["GET"]),
            Route("/v1/contacts/{contact_id}", self.update_contact, methods=["PATCH"]),
            Route("/v1/contacts/{contact_id}", self.delete_contact, methods=["DELETE"]),
            Route("/v1/contact-fields", self.contact_fields, methods=["GET"]),
            Route("/v1/contact-fields", self.define_contact_field, methods=["POST"]),
            Route("/v1/contact-fields/{name}", self.delete_contact_field, methods=["DELETE"]),
            Route("/v1/segments", self.segments, methods=["GET"]),
            Route("/v1/segments", self.save_segment, methods=["POST"]),
            Route("/v1/segments/count", self.count_filter, methods=["GET"]),
            Route("/v1/segments/{segment_id}", self.delete_segment, methods=["DELETE"]),
            Route("/v1/segments/{segment_id}/count", self.count_segment, methods=["GET"]),
            Route("/v1/campaigns/from-segment", self.campaign_from_segment, methods=["POST"]),
            Route("/v1/campaigns/{campaign_id}/retarget", self.retarget_campaign, methods=["POST"]),
            Route("/v1/campaigns/{campaign_id}/recipients", self.campaign_recipients, methods=["GET"]),
        ]

    # -- one contact, tags, fields ------------------------------------------------------------

    async def contact(self, request: Request) -> Response:
        return await self.api._json(request, CONTACT, {"contact_id": _path_id(request, "contact_id")})

    async def update_contact(self, request: Request) -> Response:
        body = await _json_body(request)
        return await self.api._json(request, UPDATE_CONTACT, {
            "contact_id": _path_id(request, "contact_id"), "name": _field(body, "name", limit=200),
            "fields": _json_arg("fields", body.get("fields"), dict, '{"city": "Paris", "points": 12}'),
            "add_tags": _tags(body, "add_tags"), "remove_tags": _tags(body, "remove_tags")})

    async def delete_contact(self, request: Request) -> Response:
        return await self.api._json(request, DELETE_CONTACT, {"contact_id": _path_id(request, "contact_id")})

    async def tag_contacts(self, request: Request) -> Response:
        body = await _json_body(request)
        ids = body.get("contact_ids")
        if not isinstance(ids, list) or not 0 < len(ids) <= 100_000:
            raise _bad("contact_ids must be a list of 1 to 100,000 contact ids")
        return await self.api._json(request, TAG_CONTACTS, {
            "contact_ids": [_to_int("contact_ids[]", i, low=1) for i in ids],
            "add_tags": _tags(body, "add_tags"), "remove_tags": _tags(body, "remove_tags")})

    async def contact_fields(self, request: Request) -> Response:
        return await self.api._json(request, FIELDS, {})

    async def define_contact_field(self, request: Request) -> Response:
        body = await _json_body(request)
        return await self.api._json(request, DEFINE_FIELD, {
            "name": _field(body, "name", required=True, limit=100),
            "type": _field(body, "type", required=True, limit=20)}, status=201)

    async def delete_contact_field(self, request: Request) -> Response:
        return await self.api._json(request, DELETE_FIELD, {"name": request.path_params["name"][:100]})

    # -- segments -------------------------------------------------------------------------------

    async def segments(self, request: Request) -> Response:
        return await self.api._json(request, SEGMENTS, {})

    async def save_segment(self, request: Request) -> Response:
        body = await _json_body(request)
        return await self.api._json(request, SAVE_SEGMENT, {
            "name": _field(body, "name", required=True, limit=200),
            "filter": _json_arg("filter", body.get("filter"), dict, FILTER_EXAMPLE),
            "segment_id": _field(body, "segment_id", _to_int, low=1)}, status=201)

    async def delete_segment(self, request: Request) -> Response:
        return await self.api._json(request, DELETE_SEGMENT, {"segment_id": _path_id(request, "segment_id")})

    async def count_segment(self, request: Request) -> Response:
        return await self.api._json(request, SEGMENT_COUNT, {
            "segment_id": _path_id(request, "segment_id"), "filter": None, "tags": None})

    async def count_filter(self, request: Request) -> Response:
        tags = _query(request, "tags")
        return await self.api._json(request, SEGMENT_COUNT, {
            "segment_id": None, "filter": _json_arg("filter", _query(request, "filter"), dict, FILTER_EXAMPLE),
            "tags": [t.strip() for t in tags.split(",")] if tags is not None else None})

    # -- campaigns from audiences -----------------------------------------------------------------

    async def campaign_from_segment(self, request: Request) -> Response:
        body = await _json_body(request)
        return await self._create(request, FROM_SEGMENT, {
            **_audience(body),
            "number_id": _field(body, "number_id", _to_int, required=True, low=1),
            "name": _field(body, "name", required=True, limit=200),
            "templates": _json_arg("templates", body.get("templates"), list, TEMPLATES_EXAMPLE),
            "scheduled_at": _field(body, "scheduled_at", _to_time),
            "start": _field(body, "start", _to_bool, default=False),
            "on_invalid": _field(body, "on_invalid", default="skip", limit=16)})

    async def retarget_campaign(self, request: Request) -> Response:
        body = await _json_body(request)
        return await self._create(request, RETARGET, {
            "campaign_id": _path_id(request, "campaign_id"),
            "who": _field(body, "who", required=True, limit=32),
            "name": _field(body, "name", limit=200),
            "templates": _json_arg("templates", body.get("templates"), list, TEMPLATES_EXAMPLE),
            "scheduled_at": _field(body, "scheduled_at", _to_time),
            "start": _field(body, "start", _to_bool, default=False),
            "number_id": _field(body, "number_id", _to_int, low=1),
            "on_invalid": _field(body, "on_invalid", default="skip", limit=16)})

    async def _create(self, request: Request, sql: str, params: dict[str, Any]) -> Response:
        """A campaign made from contacts already in the database: one statement, under the
        upload deadline rather than a route's statement timeout (a million contacts take
        longer), as a CSV campaign is."""
        params = {**params, "key": key_hash(request), "scope": scope_of(request)}
        async with self.api.pool.connection() as conn, conn.transaction():
            await conn.execute(UPLOAD_TIMEOUT, {"ms": int(self.api.upload_limits.deadline_s * 1000)})
            row = await (await conn.execute(sql, params)).fetchone()
        return Response(row[0], status_code=201, media_type=JSON)

    # -- streamed ---------------------------------------------------------------------------------

    async def _stream(self, request: Request, open_sql: str, fetch_sql: str, params: dict[str, Any],
                      media_type: str, *, prefix: bytes = b"", separator: bytes = b"\n",
                      suffix: bytes = b"\n") -> Response:
        """Open the cursor in a transaction of a pooled connection (an error there, 404 say, is
        answered as any route's), then stream its lines; the connection goes back to the pool
        when the last slice has left or the client went away."""
        params = {**params, "key": key_hash(request), "scope": scope_of(request)}
        pool = self.api.pool
        conn = await pool.getconn()
        try:
            await conn.execute("BEGIN")
            await conn.execute(open_sql, params)
        except BaseException:
            await self._release(conn)
            raise

        async def lines() -> AsyncIterator[bytes]:
            try:
                yield prefix
                first = True
                while rows := await (await conn.execute(fetch_sql)).fetchall():
                    chunk = separator.join(r[0].encode() for r in rows)
                    yield chunk if first else separator + chunk
                    first = False
                yield suffix
            finally:
                await self._release(conn)

        return StreamingResponse(lines(), media_type=media_type)

    async def _release(self, conn: psycopg.AsyncConnection) -> None:
        try:
            if not conn.broken:
                await conn.execute("ROLLBACK")
        except psycopg.Error:
            pass
        await self.api.pool.putconn(conn)

    async def campaign_recipients(self, request: Request) -> Response:
        fmt = _query(request, "format") or "csv"
        if fmt not in ("csv", "json"):
            raise _bad(f"format must be csv or json, not {fmt[:20]!r}")
        params = {"campaign_id": _path_id(request, "campaign_id"), "format": fmt}
        if fmt == "json":     # one JSON array, an object per recipient
            return await self._stream(request, OPEN_RECIPIENTS, FETCH_RECIPIENTS, params, JSON,
                                      prefix=b"[", separator=b",\n", suffix=b"]\n")
        return await self._stream(request, OPEN_RECIPIENTS, FETCH_RECIPIENTS, params, "text/csv; charset=utf-8")

    async def export_contacts(self, request: Request) -> Response:
        return await self._stream(request, OPEN_EXPORT, FETCH_EXPORT, {
            "segment_id": _query(request, "segment_id", _to_int, low=1),
            "filter": _json_arg("filter", _query(request, "filter"), dict, FILTER_EXAMPLE)},
            "text/csv; charset=utf-8")
