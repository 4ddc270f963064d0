"""Media files: the store that keeps their bytes, a file spooled with its digest, and the
upload to Meta that the API (``POST /v1/media``) and the CLI (``pgwa media upload``) share.

::

    MediaStore            put(key, file) / chunks(key) / delete(key): where bytes live
     └── LocalMediaStore  a directory (PGWA_MEDIA_DIR, default <repo>/.media), written
                          atomically (a temporary file renamed into place)
    media_store(settings) the store the settings name: PGWA_MEDIA_STORE="package.module:factory"
                          plugs in another one (S3 or the like): ``factory(settings)``
                          returns an object with the three methods; else the directory
    Spool                 a file received in chunks: size and SHA-256 as it arrives, in
                          memory up to 4 MiB, then in a temporary file
    upload_to_meta(...)   POST /{phone-number-id}/media (multipart file, type,
                          messaging_product): Meta's media id, or MediaError

Meta's limits (MIME types and sizes) are rows of core.media_types, read through
``api.media_types()``; the SQL functions check them again. A key names a tenant's file by
its digest (``<tenant>/<sha256[:2]>/<sha256>``): the same bytes are kept once per tenant.
The access token goes only into the Authorization header of Meta's requests; errors
carry Meta's code and message, never the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

import httpx
import orjson

from pgwa.config import Settings

SPOOL_IN_MEMORY = 4 << 20
CHUNK = 256 << 10
UPLOAD_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
_KEY = re.compile(r"^[0-9]+/[0-9a-f]{2}/[0-9a-f]{64}$")

MEDIA_TYPES = "SELECT mime_type, media_type, max_bytes FROM api.media_types()"


class MediaError(Exception):
    """Meta refused or could not be reached; the message is safe to show and log."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def storage_key(tenant_id: int, sha256: str) -> str:
    return f"{int(tenant_id)}/{sha256[:2]}/{sha256}"


def base_mime(mime: str | None) -> str:
    """A MIME type as core.media_types keys it (core.media_mime): no parameters, lower case."""
    return (mime or "").split(";", 1)[0].strip().lower()


def scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token and token in text else text


# -- stores -----------------------------------------------------------------------------------

class MediaStore(Protocol):
    """Where media bytes live. A production store (S3 or the like) implements these three
    and is named by PGWA_MEDIA_STORE; keys are ``<tenant>/<xx>/<sha256>``."""

    async def put(self, key: str, source: IO[bytes]) -> None:
        """Keep the bytes of ``source`` (read from its start) under ``key``; replace any."""

    def chunks(self, key: str) -> AsyncIterator[bytes]:
        """The bytes under ``key``, in chunks; FileNotFoundError when there are none."""

    async def delete(self, key: str) -> None:
        """Forget ``key`` (nothing when it is absent)."""


class LocalMediaStore:
    """A directory: ``<root>/<tenant>/<xx>/<sha256>``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError("not a media storage key")
        return self.root / key

    def _put(self, key: str, source: IO[bytes]) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        source.seek(0)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                while data := source.read(CHUNK):
                    out.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def put(self, key: str, source: IO[bytes]) -> None:
        await asyncio.to_thread(self._put, key, source)

    async def chunks(self, key: str) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(open, self.path(key), "rb")
        try:
            while data := await asyncio.to_thread(handle.read, CHUNK):
                yield data
        finally:
            handle.close()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path(key).unlink, missing_ok=True)


def media_store(settings: Settings) -> MediaStore:
    """The store the settings name (PGWA_MEDIA_STORE ``module:factory``), else the directory
    PGWA_MEDIA_DIR."""
    spec = getattr(settings, "media_store", "")
    if spec:
        module, _, name = spec.partition(":")
        return getattr(importlib.import_module(module), name or "store")(settings)
    return LocalMediaStore(settings.media_dir)


# -- a received file --------------------------------------------------------------------------

class Spool:
    """Bytes received in chunks, with their size and SHA-256, under a cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.size = 0
        self._hash = hashlib.sha256()
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, mode="w+b")  # noqa: SIM115 - close()

    def write(self, data: bytes) -> None:
        """Raises OverflowError once more than ``cap`` bytes came."""
        self.size += len(data)
        if self.size > self.cap:
            raise OverflowError(self.size)
        self._hash.update(data)
        self.file.write(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        self.file.close()


# -- Meta -------------------------------------------------------------------------------------

def graph_error(response: httpx.Response, what: str, token: str | None) -> MediaError:
    """A MediaError naming Meta's code and message (permanent for a 4xx other than 429)."""
    try:
        data: Any = orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        text = f"Graph API error {err.get('code')} {what}: {str(err.get('message') or '')[:200]}"
    else:
        text = f"HTTP {response.status_code} {what}"
    return MediaError(scrub(text, token), permanent=400 <= response.status_code < 500
                      and response.status_code != 429)


async def upload_to_meta(graph_base_url: str, version: str, phone_number_id: str, token: str, source: IO[bytes],
                         mime: str, filename: str | None, *,
                         transport: httpx.AsyncBaseTransport | None = None) -> str:
    """POST the file to ``/{phone-number-id}/media``; Meta's media id. Raises MediaError."""
    source.seek(0)
    url = f"{graph_base_url.rstrip('/')}/{version}/{phone_number_id}/media"
    files = {"file": (filename or "file", source, mime)}
    data = {"messaging_product": "whatsapp", "type": mime}
    try:
        async with httpx.AsyncClient(timeout=UPLOAD_TIMEOUT, transport=transport) as http:
            response = await http.post(url, data=data, files=files, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise MediaError(f"the Graph API could not be reached: {type(exc).__name__}") from None
    try:
        answer = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        answer = None
    if response.status_code == 200 and isinstance(answer, dict) and isinstance(answer.get("id"), str):
        return answer["id"]
    raise graph_error(response, f"uploading to number {phone_number_id}", token)


# -- the CLI's upload (the API's is api/media.py: the same statements, async) ---------------

MAX_MEDIA_BYTES = 100 << 20     # the largest media Meta takes (a document); types: core.media_types
PREPARE_UPLOAD = """SELECT media_type, to_json(reuse) AS reuse, phone_number_id, access_token, graph_api_version
FROM api.prepare_media_upload(%(tenant_id)s::bigint, %(number_id)s::bigint, %(mime)s::text, %(size)s::bigint,
                              %(sha256)s::text)"""
SAVE_MEDIA = """SELECT * FROM api.save_media(%(tenant_id)s::bigint, %(number_id)s::bigint, %(meta_media_id)s::text,
    %(mime)s::text, %(size)s::bigint, %(sha256)s::text, %(filename)s::text, %(storage_key)s::text)"""
LIST_MEDIA = """SELECT * FROM api.media(%(tenant_id)s::bigint, %(number_id)s::bigint, %(direction)s::text,
    NULL, %(limit)s::integer)"""


def upload_file(conn: Any, settings: Settings, tenant_id: int, number_id: int, path: Path,
                mime: str | None = None) -> dict:
    """Upload a local file to Meta for the number, as ``POST /v1/media`` does (blocking: not for a
    running event loop); the media row (``reused`` when the same bytes were uploaded and are
    valid). Raises MediaError when Meta refuses, psycopg errors (PW145/PW146...) from SQL."""
    import mimetypes

    from psycopg.rows import dict_row

    mime = mime or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    spool = Spool(MAX_MEDIA_BYTES)
    try:
        with path.open("rb") as handle:
            try:
                while data := handle.read(CHUNK):
                    spool.write(data)
            except OverflowError:
                raise MediaError(f"file: over {MAX_MEDIA_BYTES} bytes, the largest media Meta accepts",
                                 permanent=True) from None
        params = {"tenant_id": tenant_id, "number_id": number_id, "mime": mime, "size": spool.size,
                  "sha256": spool.sha256, "filename": path.name[:240]}
        with conn.cursor(row_factory=dict_row) as cur:
            target = cur.execute(PREPARE_UPLOAD, params).fetchone()
            if target["reuse"] is not None:     # JSON: its times as the rows' datetimes
                return {k: datetime.fromisoformat(v) if k.endswith("_at") and v else v
                        for k, v in target["reuse"].items()}
            key = storage_key(tenant_id, spool.sha256)

            async def store_and_upload() -> str:
                await media_store(settings).put(key, spool.file)
                return await upload_to_meta(settings.graph_base_url, target["graph_api_version"],
                                            target["phone_number_id"], target["access_token"], spool.file,
                                            mime, path.name)

            meta_id = asyncio.run(store_and_upload())
            return cur.execute(SAVE_MEDIA, {**params, "meta_media_id": meta_id, "storage_key": key}).fetchone()
    finally:
        spool.close()
