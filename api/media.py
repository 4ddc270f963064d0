"""Media routes: upload a file to Meta, list the tenant's media, stream a stored file.

::

    POST /v1/media                   multipart: file (its Content-Type is the MIME type, or the
                                     field "type"), number_id, filename?  -> the media (201; 200
                                     and "reused": true when the same bytes are uploaded and valid)
    GET  /v1/media                   ?number_id=&direction=in|out&before_id=&limit=
    GET  /v1/media/{media_id}/content  the bytes, with their Content-Type

An upload is authenticated first, then its body is spooled (size and SHA-256 as it comes,
no connection held), then ``api.prepare_media_upload`` checks the file against Meta's
limits (core.media_types: PW146 for a MIME type Meta does not take, PW145 for a file over
its type's limit, both naming the field) and finds an earlier upload of the same bytes;
otherwise the file is kept in the media store (pgwa/media.py), POSTed to Meta's
``/{phone-number-id}/media`` with the number's token, and recorded by ``api.save_media``.
The token never leaves the server: errors carry Meta's code and message only.

Content is served to the tenant's keys with scope read; another tenant's media id is
not found (PW245), like every id in this API.
"""

from __future__ import annotations

import asyncio
import re

import orjson
from psycopg.rows import dict_row
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from api.errors import ApiError
from api.routes import JSON, _limit, _path_id, _query, _to_int, _to_text
from api.upload import _Multipart

# MAX_MEDIA_BYTES: the largest file Meta takes as media (a document); the type's own limit is
# checked in SQL once the file's MIME type and size are known.
from pgwa.media import (
    MAX_MEDIA_BYTES,
    MediaError,
    MediaStore,
    Spool,
    media_store,
    storage_key,
    upload_to_meta,
)

LIST = """SELECT json_build_object(
    'data', coalesce(json_agg(m ORDER BY m.media_id DESC), '[]'),
    'next_before_id', CASE WHEN count(*) = %(limit)s::integer THEN min(m.media_id) END)::text
FROM api.media(api.authenticate(%(key)s, %(scope)s), %(number_id)s::bigint, %(direction)s::text,
               %(before_id)s::bigint, %(limit)s::integer) m"""
CONTENT = """SELECT row_to_json(c)::text
FROM api.media_content(api.authenticate(%(key)s, %(scope)s), %(media_id)s::bigint) c"""
PREPARE = """SELECT media_type, to_json(reuse)::text AS reuse, phone_number_id, access_token, graph_api_version
FROM api.prepare_media_upload(%(tenant_id)s::bigint, %(number_id)s::bigint, %(mime)s::text, %(size)s::bigint,
                              %(sha256)s::text)"""
SAVE = """SELECT row_to_json(m)::text
FROM api.save_media(%(tenant_id)s::bigint, %(number_id)s::bigint, %(meta_media_id)s::text, %(mime)s::text,
                    %(size)s::bigint, %(sha256)s::text, %(filename)s::text, %(storage_key)s::text) m"""
_UNSAFE_FILENAME = re.compile(r'[^A-Za-z0-9._ -]')


class _MediaForm(_Multipart):
    """The multipart parser of api/upload.py, also keeping the file part's Content-Type and name."""

    file_mime: str | None = None
    filename: str | None = None

    def _headers_finished(self) -> None:
        super()._headers_finished()
        if self._is_file and self.file_mime is None:
            self.file_mime = self._headers.get(b"content-type", b"").decode("latin-1").strip() or None
            _, disposition = self._parse_options_header(self._headers.get(b"content-disposition", b""))
            name = disposition.get(b"filename")
            self.filename = name.decode("utf-8", "replace") if name else None


def _store(request: Request) -> MediaStore:
    state = request.app.state
    if getattr(state, "media_store", None) is None:
        state.media_store = media_store(request.app.state.json_api.settings)
    return state.media_store


def _too_large(size: str) -> ApiError:
    return ApiError("PW145", f"file: {size} is over {MAX_MEDIA_BYTES} bytes, the largest media Meta accepts",
                    "Images may be 5 MB, audio and video 16 MB, documents 100 MB (api.media_types() "
                    "lists every type).", status=413)


async def _receive(request: Request, form: _MediaForm, spool: Spool, deadline_s: float) -> None:
    try:
        async with asyncio.timeout(deadline_s):
            async for chunk in request.stream():
                for data in form.feed(chunk):
                    spool.write(data)
    except OverflowError:
        raise _too_large("the file") from None
    except TimeoutError:
        raise ApiError("PW122", f"the upload did not arrive within {deadline_s:g} s (PGWA_UPLOAD_DEADLINE_S)",
                       "Send the whole body without pauses.", status=408) from None
    if not form.file_seen:
        raise ApiError("PW100", "the multipart form has no file part", "Send the file as the part named file.")


async def upload_media(request: Request) -> Response:
    json_api = request.app.state.json_api
    settings = json_api.settings
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise ApiError("PW100", "upload the file as multipart/form-data", "Fields: file, number_id, "
                       "and optionally type (the MIME type) and filename.", status=415)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_MEDIA_BYTES + (64 << 10):
        raise _too_large(f"the upload's Content-Length, {declared} bytes,")
    tenant_id = await json_api._authenticate(request)     # before the body: fail fast
    form = _MediaForm(content_type)
    spool = Spool(MAX_MEDIA_BYTES)
    try:
        await _receive(request, form, spool, settings.upload_deadline_s)
        fields = {**dict(request.query_params), **form.fields}
        number_id = _to_int("number_id", fields.get("number_id") or "", low=1) if fields.get("number_id") \
            else None
        if number_id is None:
            raise ApiError("PW100", "number_id is required", "The number that will send the file.")
        mime = fields.get("type") or form.file_mime
        filename = _to_text("filename", fields.get("filename") or form.filename or "", limit=240) or None
        params = {"tenant_id": tenant_id, "number_id": number_id, "mime": mime, "size": spool.size,
                  "sha256": spool.sha256, "filename": filename}
        async with json_api.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            target = await (await cur.execute(PREPARE, params)).fetchone()
        if target["reuse"] is not None:
            return Response(target["reuse"], media_type=JSON)
        key = storage_key(tenant_id, spool.sha256)
        await _store(request).put(key, spool.file)
        # No connection is held while Meta answers.
        try:
            meta_id = await upload_to_meta(settings.graph_base_url, target["graph_api_version"],
                                           target["phone_number_id"], target["access_token"], spool.file,
                                           mime, filename)
        except MediaError as exc:
            raise ApiError("PW501", str(exc), "Check the file and the number's access token; retry later "
                           "if Meta is unavailable.") from None
        async with json_api.pool.connection() as conn:
            row = await (await conn.execute(SAVE, {**params, "meta_media_id": meta_id, "storage_key": key})).fetchone()
        return Response(row[0], status_code=201, media_type=JSON)
    finally:
        spool.close()


async def list_media(request: Request) -> Response:
    json_api = request.app.state.json_api
    return await json_api._json(request, LIST, {
        "number_id": _query(request, "number_id", _to_int), "direction": _query(request, "direction"),
        "before_id": _query(request, "before_id", _to_int), "limit": _limit(request)})


async def media_content(request: Request) -> Response:
    json_api = request.app.state.json_api
    found = orjson.loads(await json_api.fetch_text(request, CONTENT, {"media_id": _path_id(request, "media_id")}))
    chunks = _store(request).chunks(found["storage_key"])
    try:
        first = await anext(chunks)
    except (FileNotFoundError, StopAsyncIteration):
        raise ApiError("PW301", f"media {found['media_id']} is missing from the media store",
                       "The operator's media store lost the file; it cannot be served.") from None

    async def body():
        yield first
        async for data in chunks:
            yield data

    headers = {"X-Content-Type-Options": "nosniff"}
    if found["size_bytes"]:
        headers["Content-Length"] = str(found["size_bytes"])
    if found["filename"]:
        safe = _UNSAFE_FILENAME.sub("_", found["filename"])[:240]
        headers["Content-Disposition"] = f'attachment; filename="{safe}"'
    return StreamingResponse(body(), media_type=found["mime_type"] or "application/octet-stream", headers=headers)


def routes() -> list[Route]:
    return [
        Route("/v1/media", list_media, methods=["GET"]),
        Route("/v1/media", upload_media, methods=["POST"]),
        Route("/v1/media/{media_id}/content", media_content, methods=["GET"]),
    ]
