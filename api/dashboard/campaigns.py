"""The dashboard's campaign screens: the list with live counters, the builder (number,
approved template, audience from a CSV upload, a saved segment or tags, a source for
every template parameter), the draft's review (one message rendered as its recipient
will see it, a start time in the tenant's zone, a send window, start), and the detail
page (funnel, a sends-per-minute and delivery chart drawn as SVG on the server,
failures by Meta error code with advice, pause / resume / cancel).

Every statement runs an ``api`` function with the tenant that
``api.dashboard_authorize(<session hash>, <action>)`` resolves in SQL: campaigns.read to
look, campaigns.manage to build, start, pause. The builder creates the campaign as the
JSON API does (``api.stage_contacts`` + COPY + ``api.create_campaign``, or
``api.create_campaign_from_segment``) in one transaction, so an error leaves nothing
behind; SQL's PW1xx message and hint are shown beside the form. Python only assembles
the template mapping JSON from the form's fields (``src:<slot>`` and ``val:<slot>``,
a slot named as ``api.template_parameters`` names it: header, body[0], body.first_name,
buttons.0).
"""

from __future__ import annotations

import re
from datetime import datetime, time
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api.dashboard.views import PageError, _int, _redirect
from api.errors import ApiError
from api.upload import CsvUpload
from pgwa.queries import queries

# -- statements -------------------------------------------------------------------------------

CAMPAIGNS = """SELECT coalesce(json_agg(c ORDER BY c.campaign_id DESC), '[]')::text
FROM api.campaigns(api.dashboard_authorize(%(s)s, 'campaigns.read'), NULL, NULL, 100) c"""
# The detail page: stats, failures explained, one message previewed, the tenant's zone.
CAMPAIGN = """SELECT json_build_object(
    'stats', (SELECT row_to_json(c) FROM api.campaign_stats(a.t, %(campaign_id)s::bigint) c),
    'failures', (SELECT coalesce(json_agg(f), '[]') FROM api.campaign_failures(a.t, %(campaign_id)s::bigint) f),
    'preview', api.preview_campaign_message(a.t, %(campaign_id)s::bigint),
    'time_zone', api.tenant_time_zone(a.t))::text
FROM (SELECT api.dashboard_authorize(%(s)s, 'campaigns.read') AS t) a"""
CAMPAIGN_STATS = """SELECT json_build_object(
    'stats', (SELECT row_to_json(c) FROM api.campaign_stats(a.t, %(campaign_id)s::bigint) c),
    'failures', (SELECT coalesce(json_agg(f), '[]') FROM api.campaign_failures(a.t, %(campaign_id)s::bigint) f))::text
FROM (SELECT api.dashboard_authorize(%(s)s, 'campaigns.read') AS t) a"""
ACTIONS = {
    "pause": "SELECT api.pause_campaign(api.dashboard_authorize(%(s)s, 'campaigns.manage'), %(campaign_id)s::bigint,"
             " 'paused from the dashboard')",
    "resume": "SELECT api.resume_campaign(api.dashboard_authorize(%(s)s, 'campaigns.manage'), %(campaign_id)s::bigint)",
    "cancel": "SELECT api.cancel_campaign(api.dashboard_authorize(%(s)s, 'campaigns.manage'), %(campaign_id)s::bigint)",
}
# What the builder offers: numbers, approved templates, saved segments, contact fields.
BUILDER = """SELECT json_build_object(
    'numbers', (SELECT coalesce(json_agg(n ORDER BY n.number_id), '[]') FROM api.numbers(a.t) n),
    'templates', (SELECT coalesce(json_agg(json_build_object(
                      'template_id', t.template_id, 'waba_id', t.waba_id, 'name', t.name, 'language', t.language,
                      'category', t.category) ORDER BY t.name, t.language), '[]')
                  FROM api.templates(a.t, NULL, 'APPROVED') t),
    'segments', (SELECT coalesce(json_agg(g ORDER BY g.name), '[]') FROM api.segments(a.t) g),
    'fields', (SELECT coalesce(json_agg(f.name ORDER BY f.name), '[]') FROM api.contact_fields(a.t) f))::text
FROM (SELECT api.dashboard_authorize(%(s)s, 'campaigns.manage') AS t) a"""
PARAMETERS = """SELECT coalesce(json_agg(p), '[]')::text
FROM api.template_parameters(api.dashboard_authorize(%(s)s, 'campaigns.manage'), %(template_id)s::bigint) p"""
AUTHORIZE_MANAGE = "SELECT api.dashboard_authorize(%(s)s, 'campaigns.manage')"
UPLOAD_TIMEOUT = "SELECT set_config('statement_timeout', %(ms)s::text, true)"
FROM_SEGMENT = """SELECT campaign_id FROM api.create_campaign_from_segment(
    %(tenant_id)s::bigint, %(number_id)s::bigint, %(name)s::text, %(templates)s::jsonb, %(segment_id)s::bigint,
    NULL, %(tags)s::text[], NULL, false, 'skip')"""
SEND_WINDOW = "SELECT api.set_campaign_send_window(%(t)s::bigint, %(campaign_id)s::bigint, %(start)s::time, %(end)s::time)"
START = """SELECT api.start_campaign(%(t)s::bigint, %(campaign_id)s::bigint,
                                  api.tenant_local_time(%(t)s::bigint, %(at)s::timestamp))"""

SLOT = re.compile(r"^(header|body\[(\d{1,2})\]|body\.([A-Za-z0-9_]{1,64})|buttons\.(\d{1,2}))$")
SOURCES = ("column", "value", "media_id")


def template_mapping(template: dict[str, Any], fields: dict[str, str]) -> dict[str, Any]:
    """The api.create_campaign mapping of one template from the builder's fields: for each
    ``src:<slot>`` (column, value or media_id) its ``val:<slot>``. Empty values are left
    out, so that SQL names the parameter that is missing (PW102) and its fix."""
    spec: dict[str, Any] = {"name": template["name"], "language": template["language"]}
    positional: dict[int, dict] = {}
    for key, kind in fields.items():
        if not key.startswith("src:"):
            continue
        slot = key[4:]
        match = SLOT.match(slot)
        value = (fields.get(f"val:{slot}") or "").strip()
        if not match or kind not in SOURCES or not value:
            continue
        source = {kind: value}
        if match.group(1) == "header":
            spec["header"] = source
        elif match.group(2) is not None:
            positional[int(match.group(2))] = source
        elif match.group(3) is not None:
            spec.setdefault("body", {})[match.group(3)] = source
        else:
            spec.setdefault("buttons", {})[match.group(4)] = source
    if positional:
        # A gap stays a gap: SQL names the position that lacks a source.
        spec["body"] = [positional.get(i) for i in range(max(positional) + 1)]
    return spec


def timeline_svg(timeline: list[dict[str, Any]], total: int, *, width: int = 600, height: int = 160) -> str:
    """The campaign's minutes as an SVG (no script): a bar a minute of the messages sent,
    a line of the delivered share of the list over time. Scales to the page's width."""
    if not timeline:
        return ""
    points = timeline[-120:]                      # the latest two hours of minutes
    pad, n = 24, len(points)
    plot_w, plot_h = width - 2 * pad, height - 2 * pad
    peak = max(max(p["sent"] for p in points), 1)
    bar_w = plot_w / n
    delivered_before = sum(p["delivered"] for p in timeline[:-len(points)]) if len(timeline) > n else 0
    parts = [(f'<svg class="chart" id="timeline" viewBox="0 0 {width} {height}" role="img" '
              'aria-label="Messages sent per minute and delivered over time" xmlns="http://www.w3.org/2000/svg">'),
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" class="axis"/>']
    line, cumulative = [], delivered_before
    for i, p in enumerate(points):
        x = pad + i * bar_w
        h = plot_h * p["sent"] / peak
        parts.append(f'<rect class="sent" x="{x:.1f}" y="{height - pad - h:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                     f'height="{h:.1f}"><title>{p["minute"][11:16]}: {p["sent"]} sent, {p["delivered"]} delivered, '
                     f'{p["failed"]} failed</title></rect>')
        cumulative += p["delivered"]
        share = cumulative / total if total else 0
        line.append(f"{x + bar_w / 2:.1f},{height - pad - plot_h * min(share, 1):.1f}")
    parts.append(f'<polyline class="delivered" fill="none" points="{" ".join(line)}"/>')
    parts.append(f'<text x="{pad}" y="{pad - 8}" class="legend">bars: sent per minute (peak {peak}) · '
                 f'line: delivered, share of {total}</text>')
    parts.append(f'<text x="{pad}" y="{height - 6}" class="legend">{points[0]["minute"][11:16]}</text>')
    parts.append(f'<text x="{width - pad}" y="{height - 6}" class="legend" text-anchor="end">'
                 f'{points[-1]["minute"][11:16]} UTC</text>')
    parts.append("</svg>")
    return "".join(parts)


def _local_time(value: str) -> datetime | None:
    value = value.strip()
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=None)
    except ValueError:
        raise ApiError("PW100", f"start time {value!r} is not a date and time",
                       "Give it as 2026-12-24T09:00, in the workspace's time zone.") from None


def _clock(value: str, name: str) -> time | None:
    value = value.strip()
    if not value:
        return None
    try:
        return time.fromisoformat(value)
    except ValueError:
        raise ApiError("PW100", f"send window {name} {value!r} is not a time of day",
                       "Give it as 09:00.") from None


class CampaignScreens:
    """The campaign routes of a Dashboard (api/dashboard/views.py), which gives the
    session, the rendering and the error pages."""

    def __init__(self, dashboard) -> None:
        self.d = dashboard

    def routes(self) -> list[BaseRoute]:
        page = self.d._page
        return [
            Route("/dashboard/campaigns", page(self.campaigns), methods=["GET"]),
            Route("/dashboard/campaigns/new", page(self.builder), methods=["GET"]),
            Route("/dashboard/campaigns/new", page(self.create), methods=["POST"]),
            Route("/dashboard/campaigns/new/parameters", page(self.parameters), methods=["GET"]),
            Route("/dashboard/campaigns/{campaign_id}", page(self.campaign), methods=["GET"]),
            Route("/dashboard/campaigns/{campaign_id}/start", page(self.start), methods=["POST"]),
            Route("/dashboard/campaigns/{campaign_id}/{action}", page(self.action), methods=["POST"]),
        ]

    # -- list and detail ----------------------------------------------------------------------

    async def campaigns(self, request: Request) -> Response:
        d = self.d
        session = await d._session(request)
        campaigns = await d._json(CAMPAIGNS, {"s": d._hash(request)})
        template = "_campaign_rows.html" if request.query_params.get("fragment") else "campaigns.html"
        return d._render(request, template, {"campaigns": campaigns}, session=session)

    async def campaign(self, request: Request, *, error: dict | None = None, status: int = 200) -> Response:
        d = self.d
        session = await d._session(request)
        campaign_id = _int(request.path_params["campaign_id"], "campaign")
        fragment = bool(request.query_params.get("fragment")) and error is None
        data = await d._json(CAMPAIGN_STATS if fragment else CAMPAIGN,
                             {"s": d._hash(request), "campaign_id": campaign_id})
        stats = data["stats"]
        context = {"c": stats, "failures": data["failures"], "preview": data.get("preview"),
                   "time_zone": data.get("time_zone"), "error": error,
                   "chart": timeline_svg(stats.get("timeline") or [], stats["total"])}
        return d._render(request, "_campaign_stats.html" if fragment else "campaign.html", context,
                         session=session, status=status)

    async def action(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ACTIONS:
            raise PageError(404, "no such action")
        await self.d._form(request)
        campaign_id = _int(request.path_params["campaign_id"], "campaign")
        await self.d._one(ACTIONS[action], {"s": self.d._hash(request), "campaign_id": campaign_id})
        return _redirect(f"/dashboard/campaigns/{campaign_id}")

    async def start(self, request: Request) -> Response:
        """Start a draft now or at a time in the tenant's zone, with an optional send window;
        a refusal from SQL is shown beside the form, and nothing changes."""
        d = self.d
        form = await d._form(request)
        campaign_id = _int(request.path_params["campaign_id"], "campaign")
        s = d._hash(request)
        try:
            at = _local_time(str(form.get("start_at") or ""))
            start, end = _clock(str(form.get("window_start") or ""), "start"), \
                _clock(str(form.get("window_end") or ""), "end")
            async with d.pool.connection() as conn, conn.transaction():
                t = (await (await conn.execute(AUTHORIZE_MANAGE, {"s": s})).fetchone())[0]
                if start is not None or end is not None:
                    await conn.execute(SEND_WINDOW, {"t": t, "campaign_id": campaign_id, "start": start, "end": end})
                await conn.execute(START, {"t": t, "campaign_id": campaign_id, "at": at})
        except ApiError as exc:
            return await self.campaign(request, error={"message": exc.message, "hint": exc.hint}, status=400)
        except psycopg.Error as exc:
            refusal = self._refusal(exc)
            if refusal is None:
                raise
            return await self.campaign(request, error=refusal[1], status=refusal[0])
        return _redirect(f"/dashboard/campaigns/{campaign_id}")

    def _refusal(self, exc: psycopg.Error) -> tuple[int, dict] | None:
        """A bad input or wrong state from SQL (PW1xx, PW3xx, PW2xx for an id of the form)
        as (status, error for the form); None for the rest (PW401/PW403 and the
        unexpected go to the error page)."""
        sqlstate = exc.diag.sqlstate or ""
        code = self.d.json_api.codes.lookup(sqlstate)
        if code is None or sqlstate[:3] not in ("PW1", "PW2", "PW3"):
            return None
        return code.status, {"message": exc.diag.message_primary or code.name, "hint": exc.diag.message_hint,
                             "detail": exc.diag.message_detail, "code": sqlstate}

    # -- builder ------------------------------------------------------------------------------

    async def builder(self, request: Request, *, values: dict[str, str] | None = None, error: dict | None = None,
                      status: int = 200) -> Response:
        d = self.d
        session = await d._session(request)
        s = d._hash(request)
        offer = await d._json(BUILDER, {"s": s})
        values = values or {}
        template_id = values.get("template_id") or request.query_params.get("template_id") or ""
        parameters = []
        if template_id.isdecimal() and any(str(t["template_id"]) == template_id for t in offer["templates"]):
            parameters = await d._json(PARAMETERS, {"s": s, "template_id": int(template_id)})
        return d._render(request, "campaign_builder.html", {
            **offer, "values": values, "error": error, "parameters": parameters,
            "template_id": template_id}, session=session, status=status)

    async def parameters(self, request: Request) -> Response:
        """The mapping rows of one template (htmx swaps them in when the template changes)."""
        d = self.d
        session = await d._session(request)
        template_id = _int(request.query_params.get("template_id"), "template")
        offer = await d._json(BUILDER, {"s": d._hash(request)})
        parameters = await d._json(PARAMETERS, {"s": d._hash(request), "template_id": template_id})
        return d._render(request, "_campaign_mapping.html", {
            "parameters": parameters, "values": {}, "fields": offer["fields"]}, session=session)

    async def create(self, request: Request) -> Response:
        d = self.d
        s = d._hash(request)
        await d._session(request)                 # PW401 before any byte of the body is read
        upload: CsvUpload | None = None
        fields: dict[str, str] = {}
        try:
            upload = CsvUpload(request, getattr(d.json_api, "upload_limits", None))
            try:
                await upload.receive()            # no connection held while the client sends
                fields = dict(upload.fields)
            except ApiError:
                fields = dict(upload.fields)
                if fields.get("audience", "csv") == "csv":
                    raise
            token = d._token(request)
            given = request.headers.get("x-csrf-token") or fields.get("csrf_token")
            if token is None or not d.signer.csrf_ok(token, given):
                raise PageError(403, "The form has expired (CSRF check failed); reload the page and try again.")
            campaign_id = await self._create(request, upload, fields, s)
        except ApiError as exc:
            return await self.builder(request, values=fields, error={"message": exc.message, "hint": exc.hint},
                                      status=exc.status or 400)
        except psycopg.Error as exc:
            refusal = self._refusal(exc)
            if refusal is None:
                raise
            return await self.builder(request, values=fields, error=refusal[1], status=refusal[0])
        finally:
            if upload is not None:
                upload.close()
        return _redirect(f"/dashboard/campaigns/{campaign_id}")

    async def _create(self, request: Request, upload: CsvUpload, fields: dict[str, str], s: bytes) -> int:
        d = self.d
        name = fields.get("name", "").strip()
        number_raw, template_raw = fields.get("number_id", ""), fields.get("template_id", "")
        if not number_raw.isdecimal():
            raise ApiError("PW100", "number is required", "Choose the number that sends the campaign.")
        if not template_raw.isdecimal():
            raise ApiError("PW100", "template is required", "Choose an approved template.")
        offer = await d._json(BUILDER, {"s": s})
        template = next((t for t in offer["templates"] if t["template_id"] == int(template_raw)), None)
        if template is None:
            raise ApiError("PW100", f"template {template_raw} is not an approved template of this workspace",
                           "Choose one of the approved templates listed.")
        mapping = orjson.dumps([template_mapping(template, fields)]).decode()
        audience = fields.get("audience", "csv")
        params = {"number_id": int(number_raw), "name": name, "templates": mapping}
        async with d.pool.connection() as conn, conn.transaction():
            t = (await (await conn.execute(AUTHORIZE_MANAGE, {"s": s})).fetchone())[0]
            if audience == "csv":
                limits = getattr(d.json_api, "upload_limits", None)
                if limits is not None:
                    await conn.execute(UPLOAD_TIMEOUT, {"ms": int(limits.deadline_s * 1000)})
                await upload.stage(conn)
                cur = conn.cursor(row_factory=dict_row)
                row = await (await cur.execute(queries["create_campaign"], {
                    **params, "tenant_id": t, "on_invalid": fields.get("on_invalid") or "skip",
                    "scheduled_at": None, "start": False,
                    "default_country_code": fields.get("default_country_code", "").strip() or None})).fetchone()
                return row["campaign_id"]
            if audience == "segment":
                segment = fields.get("segment_id", "")
                if not segment.isdecimal():
                    raise ApiError("PW100", "segment is required", "Choose a saved segment, or upload a CSV.")
                args = {**params, "tenant_id": t, "segment_id": int(segment), "tags": None}
            elif audience == "tags":
                tags = [x.strip() for x in fields.get("tags", "").split(",") if x.strip()]
                if not tags:
                    raise ApiError("PW100", "tags are required", "Give one or more tags, separated by commas.")
                args = {**params, "tenant_id": t, "segment_id": None, "tags": tags}
            else:
                raise ApiError("PW100", f"audience {audience!r} is not csv, segment or tags",
                               "Choose where the recipients come from.")
            return (await (await conn.execute(FROM_SEGMENT, args)).fetchone())[0]
