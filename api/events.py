"""Outbound events in the JSON API: a tenant's endpoints and its events' deliveries.

::

    POST   /v1/endpoints                  api.create_event_endpoint (the secret, this once)
    GET    /v1/endpoints                  api.event_endpoints (never a secret)
    DELETE /v1/endpoints/{endpoint_id}    api.delete_event_endpoint
    POST   /v1/endpoints/{endpoint_id}/test   api.test_event_endpoint
    GET    /v1/events?endpoint=&status=&before_id=&limit=   api.outbound_events
    POST   /v1/events/{event_id}/replay   api.replay_event

Each route is one statement that authenticates the key (api/routes.py ROUTE_SCOPES) and
calls one function; another tenant's ids are not found (PW230, PW231). Delivery itself is
the worker's (worker/events.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.routes import _bad, _field, _json_body, _limit, _path_id, _query, _to_int

if TYPE_CHECKING:
    from api.routes import JsonApi

CREATE_ENDPOINT = """SELECT row_to_json(e)::text
FROM api.create_event_endpoint(api.authenticate(%(key)s, %(scope)s), %(url)s::text, %(event_types)s::text[],
                               %(secret)s::text, %(description)s::text) e"""
ENDPOINTS = """SELECT coalesce(json_agg(e ORDER BY e.endpoint_id), '[]')::text
FROM api.event_endpoints(api.authenticate(%(key)s, %(scope)s)) e"""
DELETE_ENDPOINT = """SELECT json_build_object('endpoint_id',
    api.delete_event_endpoint(api.authenticate(%(key)s, %(scope)s), %(endpoint_id)s::bigint))::text"""
TEST_ENDPOINT = """SELECT json_build_object('event_id',
    api.test_event_endpoint(api.authenticate(%(key)s, %(scope)s), %(endpoint_id)s::bigint))::text"""
EVENTS = """SELECT json_build_object(
    'data', coalesce(json_agg(e ORDER BY e.event_id DESC, e.endpoint_id), '[]'),
    'next_before_id', CASE WHEN count(*) = %(limit)s::integer THEN min(e.event_id) END)::text
FROM api.outbound_events(api.authenticate(%(key)s, %(scope)s), %(endpoint_id)s::bigint, %(status)s::text,
                         %(before_id)s::bigint, %(limit)s::integer) e"""
REPLAY = """SELECT json_build_object('event_id', %(event_id)s::bigint, 'replayed',
    api.replay_event(api.authenticate(%(key)s, %(scope)s), %(event_id)s::bigint, %(endpoint_id)s::bigint))::text"""


def _event_types(body: dict) -> list[str]:
    value = body.get("event_types")
    if not isinstance(value, list) or not value or len(value) > 20 or \
            not all(isinstance(t, str) and 0 < len(t) <= 64 for t in value):
        raise _bad("event_types must be a list of event types",
                   '["message.status", "message.inbound", "campaign.completed"]')
    return value


class EventRoutes:
    """The routes of this area, calling through ``json_api`` (its pool, its key check)."""

    def __init__(self, json_api: JsonApi) -> None:
        self.api = json_api

    def routes(self) -> list[Route]:
        return [
            Route("/v1/endpoints", self.event_endpoints, methods=["GET"]),
            Route("/v1/endpoints", self.create_event_endpoint, methods=["POST"]),
            Route("/v1/endpoints/{endpoint_id}", self.delete_event_endpoint, methods=["DELETE"]),
            Route("/v1/endpoints/{endpoint_id}/test", self.test_event_endpoint, methods=["POST"]),
            Route("/v1/events", self.outbound_events, methods=["GET"]),
            Route("/v1/events/{event_id}/replay", self.replay_event, methods=["POST"]),
        ]

    async def event_endpoints(self, request: Request) -> Response:
        return await self.api._json(request, ENDPOINTS, {})

    async def create_event_endpoint(self, request: Request) -> Response:
        body = await _json_body(request)
        return await self.api._json(request, CREATE_ENDPOINT, {
            "url": _field(body, "url", required=True, limit=2000),
            "event_types": _event_types(body),
            "secret": _field(body, "secret", limit=200),
            "description": _field(body, "description", limit=500)}, status=201)

    async def delete_event_endpoint(self, request: Request) -> Response:
        return await self.api._json(request, DELETE_ENDPOINT, {"endpoint_id": _path_id(request, "endpoint_id")})

    async def test_event_endpoint(self, request: Request) -> Response:
        return await self.api._json(request, TEST_ENDPOINT, {"endpoint_id": _path_id(request, "endpoint_id")},
                                    status=202)

    async def outbound_events(self, request: Request) -> Response:
        return await self.api._json(request, EVENTS, {
            "endpoint_id": _query(request, "endpoint", _to_int, low=1),
            "status": _query(request, "status"),
            "before_id": _query(request, "before_id", _to_int), "limit": _limit(request)})

    async def replay_event(self, request: Request) -> Response:
        body = await _json_body(request, required=False)
        return await self.api._json(request, REPLAY, {
            "event_id": _path_id(request, "event_id"),
            "endpoint_id": _field(body, "endpoint_id", _to_int, low=1)}, status=202)
