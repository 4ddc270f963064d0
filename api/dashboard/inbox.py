"""The inbox for support agents under /dashboard/inbox: the conversation list (per-user
unread counts, search, mine / unassigned / all), a thread (messages with their media and
statuses, internal notes, the 24-hour window, the hand-over flag, assignment) and the
replies (text, a file, an approved template, a canned reply), kept live by the event
stream's ``inbox`` events (api/static/dashboard.js re-fetches the fragments).

Every statement resolves the session's tenant, user and role in SQL first
(``api.dashboard_actor``), which also refuses an agent another agent's conversation
(PW403) before the function called finds another tenant's ids not found (PW2nn)::

    SELECT … FROM api.dashboard_actor(%(s)s, 'inbox.reply', %(number_id)s, %(contact_id)s) a,
                  api.add_conversation_note(a.tenant_id, a.user_id, …)
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import orjson
from psycopg.rows import dict_row
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from api.dashboard.sessions import CSRF_FIELD, CSRF_HEADER
from api.dashboard.views import PageError, _field, _int, _redirect
from pgwa.media import MAX_MEDIA_BYTES, MediaError, media_store, storage_key, upload_to_meta

if TYPE_CHECKING:
    from api.dashboard.views import Dashboard

FILTERS = ("all", "mine", "unassigned", "needs_human", "unread")

NUMBERS = """SELECT coalesce(json_agg(n ORDER BY n.number_id), '[]')::text
FROM api.numbers(api.dashboard_authorize(%(s)s, 'inbox.read')) n"""
CONVERSATIONS = """SELECT coalesce(json_agg(c ORDER BY c.last_message_at DESC, c.contact_id DESC), '[]')::text
FROM api.dashboard_actor(%(s)s, 'inbox.read') a,
     api.inbox_conversations(a.tenant_id, a.user_id, %(number_id)s::bigint, %(filter)s::text, %(q)s::text, 100) c"""
THREAD = """SELECT json_build_object(
    'conversation', (SELECT row_to_json(v) FROM api.inbox_conversation(a.tenant_id, a.user_id, %(number_id)s::bigint,
                                                                       %(contact_id)s::bigint) v),
    'items', (SELECT coalesce(json_agg(x.item ORDER BY x.at, x.id), '[]') FROM (
        SELECT m.created_at AS at, m.message_id AS id, to_jsonb(m) AS item
        FROM api.conversation(a.tenant_id, %(number_id)s::bigint, %(contact_id)s::bigint, NULL, NULL, 100) m
        UNION ALL
        SELECT n.created_at, n.note_id, to_jsonb(n) || '{"note": true}'
        FROM api.conversation_notes(a.tenant_id, %(number_id)s::bigint, %(contact_id)s::bigint) n) x))::text
FROM api.dashboard_actor(%(s)s, 'inbox.read', %(number_id)s::bigint, %(contact_id)s::bigint) a"""
# Reading is a POST the open thread sends (GET has no side effect: a prefetch, a link
# preview or a cross-site GET sends no receipt): the user's own read mark, and for the
# roles that answer, Meta's read receipt (blue ticks).
MARK_SEEN = """SELECT api.mark_conversation_read(a.tenant_id, a.user_id, %(number_id)s::bigint, %(contact_id)s::bigint)
FROM api.dashboard_actor(%(s)s, 'inbox.read', %(number_id)s::bigint, %(contact_id)s::bigint) a"""
MARK_READ = """SELECT api.mark_read(api.dashboard_authorize_conversation(%(s)s, 'inbox.reply', %(number_id)s::bigint,
                                                                         %(contact_id)s::bigint),
                                    %(number_id)s::bigint, %(contact_id)s::bigint)"""
TOOLS = """SELECT json_build_object(
    'templates', (SELECT coalesce(json_agg(t), '[]') FROM api.reply_templates(a.tenant_id, %(number_id)s::bigint) t),
    'canned', (SELECT coalesce(json_agg(r), '[]') FROM api.canned_replies(a.tenant_id) r))::text
FROM api.dashboard_actor(%(s)s, 'inbox.reply', %(number_id)s::bigint, %(contact_id)s::bigint) a"""
ASSIGNEES = """SELECT coalesce(json_agg(json_build_object('user_id', u.user_id, 'email', u.email, 'role', u.role)
                             ORDER BY u.email), '[]')::text
FROM api.inbox_assignees(api.dashboard_authorize(%(s)s, 'inbox.assign')) u"""
REPLY = """SELECT outbound_id FROM api.reply(api.dashboard_authorize_conversation(%(s)s, 'inbox.reply',
                                                                                  %(number_id)s::bigint,
                                                                                  %(contact_id)s::bigint),
                                            %(number_id)s::bigint, %(contact_id)s::bigint, %(reply)s::jsonb)"""
TAKE = "SELECT assigned_to FROM api.dashboard_take_conversation(%(s)s, %(number_id)s::bigint, %(contact_id)s::bigint)"
ASSIGN = """SELECT assigned_to FROM api.assign_conversation_to_user(
    api.dashboard_authorize_conversation(%(s)s, 'inbox.assign', %(number_id)s::bigint, %(contact_id)s::bigint),
    %(number_id)s::bigint, %(contact_id)s::bigint, %(user_id)s::bigint)"""
RELEASE = """SELECT contact_id FROM api.release_conversation(
    api.dashboard_authorize_conversation(%(s)s, 'inbox.assign', %(number_id)s::bigint, %(contact_id)s::bigint),
    %(number_id)s::bigint, %(contact_id)s::bigint)"""
CLEAR_HANDOVER = """SELECT api.clear_needs_human(
    api.dashboard_authorize_conversation(%(s)s, 'inbox.reply', %(number_id)s::bigint, %(contact_id)s::bigint),
    %(number_id)s::bigint, %(contact_id)s::bigint)"""
NOTE = """SELECT n.note_id FROM api.dashboard_actor(%(s)s, 'inbox.reply', %(number_id)s::bigint, %(contact_id)s::bigint) a,
     api.add_conversation_note(a.tenant_id, a.user_id, %(number_id)s::bigint, %(contact_id)s::bigint, %(body)s) n"""
CANNED = """SELECT coalesce(json_agg(r ORDER BY r.title), '[]')::text
FROM api.canned_replies(api.dashboard_authorize(%(s)s, 'inbox.reply')) r"""
CANNED_ONE = """SELECT r.body FROM api.canned_replies(api.dashboard_authorize(%(s)s, 'inbox.reply')) r
WHERE r.canned_reply_id = %(canned_reply_id)s::bigint"""
CANNED_CREATE = """SELECT r.canned_reply_id FROM api.dashboard_actor(%(s)s, 'inbox.reply') a,
     api.create_canned_reply(a.tenant_id, a.user_id, %(title)s, %(body)s) r"""
CANNED_DELETE = """SELECT api.delete_canned_reply(api.dashboard_authorize(%(s)s, 'inbox.reply'),
                                                  %(canned_reply_id)s::bigint)"""
MEDIA = """SELECT row_to_json(c)::text
FROM api.dashboard_actor(%(s)s, 'inbox.read', %(number_id)s::bigint, %(contact_id)s::bigint) a,
     api.inbox_media_content(a.tenant_id, a.user_id, %(number_id)s::bigint, %(contact_id)s::bigint,
                             %(media_id)s::bigint) c"""
UPLOAD_TENANT = """SELECT api.dashboard_authorize_conversation(%(s)s, 'inbox.reply', %(number_id)s::bigint,
                                                            %(contact_id)s::bigint)"""
PREPARE = """SELECT media_type, (reuse).media_id AS reuse_id, phone_number_id, access_token, graph_api_version
FROM api.prepare_media_upload(%(tenant_id)s::bigint, %(number_id)s::bigint, %(mime)s::text, %(size)s::bigint,
                              %(sha256)s::text)"""
SAVE = """SELECT media_id, media_type FROM api.save_media(%(tenant_id)s::bigint, %(number_id)s::bigint,
    %(meta_media_id)s::text, %(mime)s::text, %(size)s::bigint, %(sha256)s::text, %(filename)s::text,
    %(storage_key)s::text)"""


class InboxPages:
    """The inbox's routes, on the dashboard's pool, session and error pages."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.d = dashboard
        self.store = None

    def routes(self) -> list[BaseRoute]:
        page = self.d._page
        base = "/dashboard/inbox/{number_id}/{contact_id}"
        return [
            Route("/dashboard/inbox", page(self.inbox), methods=["GET"]),
            Route("/dashboard/inbox/canned", page(self.canned), methods=["GET"]),
            Route("/dashboard/inbox/canned", page(self.canned_create), methods=["POST"]),
            Route("/dashboard/inbox/canned/{canned_reply_id}/fill", page(self.canned_fill), methods=["GET"]),
            Route("/dashboard/inbox/canned/{canned_reply_id}/delete", page(self.canned_delete), methods=["POST"]),
            Route(base, page(self.thread), methods=["GET"]),
            Route(base + "/template-fields", page(self.template_fields), methods=["GET"]),
            Route(base + "/read", page(self.read), methods=["POST"]),
            Route(base + "/reply", page(self.reply), methods=["POST"]),
            Route(base + "/template", page(self.reply_template), methods=["POST"]),
            Route(base + "/note", page(self.note), methods=["POST"]),
            Route(base + "/take", page(self.take), methods=["POST"]),
            Route(base + "/assign", page(self.assign), methods=["POST"]),
            Route(base + "/handover", page(self.clear_handover), methods=["POST"]),
            Route(base + "/media/{media_id}", page(self.media), methods=["GET"]),
        ]

    # -- helpers ------------------------------------------------------------------------------

    def _ids(self, request: Request) -> dict[str, Any]:
        return {"s": self.d._hash(request), "number_id": _int(request.path_params["number_id"], "number"),
                "contact_id": _int(request.path_params["contact_id"], "contact")}

    @staticmethod
    def _back(ids: dict[str, Any]) -> Response:
        return _redirect(f"/dashboard/inbox/{ids['number_id']}/{ids['contact_id']}")

    async def _list(self, request: Request, s: bytes, numbers: list[dict], number_id: int | None = None
                    ) -> dict[str, Any]:
        raw = request.query_params.get("number_id")
        if number_id is None:
            number_id = _int(raw, "number") if raw else (numbers[0]["number_id"] if numbers else None)
        filter_ = request.query_params.get("filter") or "all"
        if filter_ not in FILTERS:
            raise PageError(400, f"filter must be one of {', '.join(FILTERS)}")
        q = (request.query_params.get("q") or "").strip()[:100]
        conversations = [] if number_id is None else await self.d._json(
            CONVERSATIONS, {"s": s, "number_id": number_id, "filter": filter_, "q": q or None})
        return {"numbers": numbers, "number_id": number_id, "filter": filter_, "q": q, "filters": FILTERS,
                "conversations": conversations}

    # -- the list -----------------------------------------------------------------------------

    async def inbox(self, request: Request) -> Response:
        session = await self.d._session(request)
        s = self.d._hash(request)
        fragment = bool(request.query_params.get("fragment"))
        numbers = [] if fragment else await self.d._json(NUMBERS, {"s": s})
        if fragment and not request.query_params.get("number_id"):
            raise PageError(400, "number_id is required")
        context = await self._list(request, s, numbers)
        current = request.query_params.get("current")
        context["current"] = int(current) if current and current.isdecimal() else None
        return self.d._render(request, "_conversations.html" if fragment else "inbox.html", context, session=session)

    # -- the thread ---------------------------------------------------------------------------

    async def thread(self, request: Request) -> Response:
        session = await self.d._session(request)
        ids = self._ids(request)
        data = await self.d._json(THREAD, ids)
        context: dict[str, Any] = {**ids, "s": None, "c": data["conversation"], "items": data["items"]}
        if request.query_params.get("fragment"):
            return self.d._render(request, "_conversation.html", context, session=session)
        actions = session["actions"]
        if "inbox.reply" in actions:
            context.update(await self.d._json(TOOLS, ids))
        context["assignees"] = await self.d._json(ASSIGNEES, ids) if "inbox.assign" in actions else []
        # The list beside the thread (below it on a phone).
        context.update(await self._list(request, ids["s"], [], ids["number_id"]))
        context["current"] = ids["contact_id"]
        return self.d._render(request, "thread.html", context, session=session)

    async def read(self, request: Request) -> Response:
        """The open thread was seen (htmx posts it when the thread loads or refreshes)."""
        await self.d._form(request)
        session = await self.d._session(request)
        ids = self._ids(request)
        await self.d._one(MARK_SEEN, ids)
        if "inbox.reply" in session["actions"]:
            await self.d._one(MARK_READ, ids)
        return Response(status_code=204)

    async def template_fields(self, request: Request) -> Response:
        session = await self.d._session(request)
        ids = self._ids(request)
        raw = request.query_params.get("template_id")
        tools = await self.d._json(TOOLS, ids)
        chosen = None
        if raw:
            template_id = _int(raw, "template")
            chosen = next((t for t in tools["templates"] if t["template_id"] == template_id), None)
            if chosen is None:
                raise PageError(404, "no such template for this number")
        return self.d._render(request, "_conversation_template.html", {**ids, "s": None, "t": chosen},
                              session=session)

    # -- replies ------------------------------------------------------------------------------

    async def reply(self, request: Request) -> Response:
        ids = self._ids(request)
        form = await self._upload_form(request)
        upload = form.get("file")
        text = _field(form, "text", required=False).strip()
        if isinstance(upload, UploadFile) and upload.filename:
            media_id, media_type = await self._upload(request, ids, upload)
            reply: dict[str, Any] = {"type": media_type, "media": media_id}
            if text and media_type in ("image", "video", "document"):
                reply["caption"] = text
            if media_type == "document":
                reply["filename"] = upload.filename[:240]
        elif text:
            reply = {"type": "text", "text": text}
        else:
            raise PageError(400, "write a reply or choose a file")
        await self.d._one(REPLY, {**ids, "reply": orjson.dumps(reply).decode()})
        return self._back(ids)

    async def reply_template(self, request: Request) -> Response:
        form = await self.d._form(request)
        ids = self._ids(request)
        values = [v if isinstance(v, str) else "" for v in form.getlist("param")]
        names = [v if isinstance(v, str) else "" for v in form.getlist("param_name")]
        params: Any = dict(zip(names, values, strict=False)) if _field(form, "format", required=False) == "NAMED" \
            else values
        reply = {"type": "template", "name": _field(form, "name"), "language": _field(form, "language"),
                 "params": params}
        await self.d._one(REPLY, {**ids, "reply": orjson.dumps(reply).decode()})
        return self._back(ids)

    async def _upload_form(self, request: Request) -> FormData:
        # The session before any byte of the body is read (PW401), and a declared length
        # (which the server holds the body to) under Meta's largest media: a chunked body
        # of unknown size is refused rather than spooled to disk.
        await self.d._session(request)
        declared = request.headers.get("content-length", "")
        if not declared.isdecimal():
            raise PageError(411, "the upload must declare its Content-Length")
        if int(declared) > MAX_MEDIA_BYTES + (64 << 10):
            raise PageError(413, f"the file is over {MAX_MEDIA_BYTES} bytes, the largest media Meta accepts")
        form = await request.form(max_files=1, max_fields=10)
        token = self.d._token(request)
        given = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
        if token is None or not self.d.signer.csrf_ok(token, given if isinstance(given, str) else None):
            raise PageError(403, "The form has expired (CSRF check failed); reload the page and try again.")
        return form

    async def _upload(self, request: Request, ids: dict[str, Any], upload: UploadFile) -> tuple[int, str]:
        """Keeps the file, uploads it to Meta with the number's token (never shown) and records it."""
        source = upload.file
        digest = hashlib.sha256()
        size = 0
        source.seek(0)
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            if size > MAX_MEDIA_BYTES:
                raise PageError(413, f"the file is over {MAX_MEDIA_BYTES} bytes, the largest media Meta accepts")
        mime = (upload.content_type or "application/octet-stream").split(";", 1)[0].strip().lower()
        filename = upload.filename[:240] if upload.filename else None
        tenant_id = await self.d._one(UPLOAD_TENANT, ids)
        params = {"tenant_id": tenant_id, "number_id": ids["number_id"], "mime": mime, "size": size,
                  "sha256": digest.hexdigest(), "filename": filename}
        async with self.d.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            target = await (await cur.execute(PREPARE, params)).fetchone()
        if target["reuse_id"] is not None:
            return target["reuse_id"], target["media_type"]
        settings = self.d.json_api.settings
        if self.store is None:
            self.store = media_store(settings)
        key = storage_key(tenant_id, params["sha256"])
        source.seek(0)
        await self.store.put(key, source)
        try:
            meta_id = await upload_to_meta(settings.graph_base_url, target["graph_api_version"],
                                           target["phone_number_id"], target["access_token"], source, mime, filename)
        except MediaError as exc:
            raise PageError(502, f"Meta did not take the file: {exc}") from None
        async with self.d.pool.connection() as conn:
            row = await (await conn.execute(SAVE, {**params, "meta_media_id": meta_id, "storage_key": key})).fetchone()
        return row[0], row[1]

    # -- notes, assignment, hand-over ---------------------------------------------------------

    async def note(self, request: Request) -> Response:
        form = await self.d._form(request)
        ids = self._ids(request)
        await self.d._one(NOTE, {**ids, "body": _field(form, "note")})
        return self._back(ids)

    async def take(self, request: Request) -> Response:
        await self.d._form(request)
        ids = self._ids(request)
        await self.d._one(TAKE, ids)
        return self._back(ids)

    async def assign(self, request: Request) -> Response:
        form = await self.d._form(request)
        ids = self._ids(request)
        raw = _field(form, "user_id", required=False).strip()
        if raw:
            await self.d._one(ASSIGN, {**ids, "user_id": _int(raw, "user")})
        else:
            await self.d._one(RELEASE, ids)
        return self._back(ids)

    async def clear_handover(self, request: Request) -> Response:
        await self.d._form(request)
        ids = self._ids(request)
        await self.d._one(CLEAR_HANDOVER, ids)
        return self._back(ids)

    # -- canned replies -----------------------------------------------------------------------

    async def canned(self, request: Request) -> Response:
        session = await self.d._session(request)
        replies = await self.d._json(CANNED, {"s": self.d._hash(request)})
        return self.d._render(request, "inbox_canned.html", {"replies": replies}, session=session)

    async def canned_create(self, request: Request) -> Response:
        form = await self.d._form(request)
        await self.d._one(CANNED_CREATE, {"s": self.d._hash(request), "title": _field(form, "title"),
                                          "body": _field(form, "body")})
        return _redirect("/dashboard/inbox/canned")

    async def canned_delete(self, request: Request) -> Response:
        await self.d._form(request)
        await self.d._one(CANNED_DELETE, {"s": self.d._hash(request),
                                          "canned_reply_id": _int(request.path_params["canned_reply_id"], "reply")})
        return _redirect("/dashboard/inbox/canned")

    async def canned_fill(self, request: Request) -> Response:
        """The reply box filled with a canned reply (htmx swaps it in)."""
        session = await self.d._session(request)
        body = await self.d._one(CANNED_ONE, {"s": self.d._hash(request), "canned_reply_id": _int(
            request.path_params["canned_reply_id"], "reply")})
        if body is None:
            raise PageError(404, "no such canned reply")
        return self.d._render(request, "_conversation_reply_box.html", {"text": body}, session=session)

    # -- media --------------------------------------------------------------------------------

    async def media(self, request: Request) -> Response:
        """A stored file shown in a conversation the session may open (images show inline)."""
        found = await self.d._json(MEDIA, {**self._ids(request),
                                           "media_id": _int(request.path_params["media_id"], "media")})
        if self.store is None:
            self.store = media_store(self.d.json_api.settings)
        chunks = self.store.chunks(found["storage_key"])
        try:
            first = await anext(chunks)
        except (FileNotFoundError, StopAsyncIteration):
            raise PageError(404, "the file is missing from the media store") from None

        async def body():
            yield first
            async for data in chunks:
                yield data

        mime = found["mime_type"] or "application/octet-stream"
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600",
                   "Content-Security-Policy": "default-src 'none'; sandbox"}
        if not mime.startswith(("image/", "audio/", "video/")):
            headers["Content-Disposition"] = "attachment"
        return StreamingResponse(body(), media_type=mime, headers=headers)
