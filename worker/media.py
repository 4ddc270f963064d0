"""The media loop: download the files contacts send (image, audio, video, document,
sticker) through Meta's two-step media API into the media store.

::

    LISTEN pgwa_media ──wake──> api.claim_media_downloads(worker, free slots)   FOR UPDATE
    (core.queue_media_downloads,    │                                          SKIP LOCKED,
     when a webhook brings media)   v                                          leased
                  one task per file: GET /{version}/{media-id}?phone_number_id=   -> url, mime, size
                                     GET url (the same Bearer token)              -> bytes, hashed,
                                     checked against api.media_types(), kept in the media store
                                  │
                                  v
                  api.complete_media_downloads(results)   stored, or retried with back-off,
                                                          or given up with the reason

The database decides what is claimed, when a failure is tried again and when it is given
up (core.settings.media_download_*); this loop only moves bytes. Meta's limits are the
rows of core.media_types, read once at start: a file whose type Meta does not take, or
that is larger than its type allows, is refused (permanently) before it is stored.

The access token goes into the Authorization header of requests to the Graph API and to
the download URL it returns, and only when that URL is on the Graph API's host or one of
Meta's media hosts; errors carry status codes and Meta's messages, never the token.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from pgwa.config import Settings
from pgwa.media import (
    MEDIA_TYPES,
    MediaError,
    MediaStore,
    Spool,
    base_mime,
    graph_error,
    media_store,
    scrub,
    storage_key,
)

from .db import Database, Unavailable, listen
from .loop import Results, run_tasks, wait

log = logging.getLogger("worker.media")

CHANNEL = "pgwa_media"
HEARTBEAT_S = 5.0        # idle: claim this often even without a NOTIFY (retries coming due)
REPORT_S = 0.05          # at most one api.complete_media_downloads per this interval
ERROR_MAX = 300
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
# Where Meta serves media (lookaside.fbsbx.com and the like); besides these, only the
# Graph API's own host gets the token.
META_MEDIA_HOSTS = ("fbsbx.com", "facebook.com", "fbcdn.net", "whatsapp.net")

CLAIM_SQL = """
SELECT media_id, tenant_id, meta_media_id, media_type, mime_type, sha256, attempts,
       phone_number_id, access_token, graph_api_version
FROM api.claim_media_downloads(%s, %s)
"""
COMPLETE_SQL = "SELECT media_id, state, last_error FROM api.complete_media_downloads(%s::jsonb)"


def _digest_matches(expected: str | None, hexdigest: str) -> bool:
    """Meta's sha256 (hex, or base64 in webhooks) against ours; nothing to compare is a match."""
    if not expected:
        return True
    if expected.lower() == hexdigest:
        return True
    try:
        return base64.b64decode(expected, validate=True) == bytes.fromhex(hexdigest)
    except ValueError:
        return False


class MediaDownloader:
    """Claim inbound media, download, store, report; ``await run(stop)`` until ``stop``."""

    def __init__(self, settings: Settings, *, http: httpx.AsyncClient | None = None,
                 store: MediaStore | None = None, heartbeat_s: float = HEARTBEAT_S,
                 report_s: float = REPORT_S) -> None:
        self.settings = settings
        self.http = http
        self._own_http = http is None
        self.store = store or media_store(settings)
        self.heartbeat_s = heartbeat_s
        self.report_s = report_s
        self.db = Database(settings.session_url(), f"{settings.worker_name}-media")
        self.limits: dict[str, tuple[str, int]] = {}     # mime -> (media type, max bytes)
        self.totals = {"claimed": 0, "stored": 0, "failed": 0, "retrying": 0}
        self._graph_host = urlsplit(settings.graph_base_url).hostname or ""
        self._tasks: set[asyncio.Task] = set()
        self._results = Results()
        self._slot_free = asyncio.Event()

    # --- one file ---------------------------------------------------------------------

    def _allowed_url(self, url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        return parts.scheme in ("https", "http") and bool(host) and (
            host == self._graph_host or any(host == h or host.endswith("." + h) for h in META_MEDIA_HOSTS))

    async def download(self, job: dict) -> dict:
        """The report for one claimed file: stored, or {error, permanent}."""
        token = job["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        base = self.settings.graph_base_url.rstrip("/")
        try:
            response = await self.http.get(f"{base}/{job['graph_api_version']}/{job['meta_media_id']}",
                                           params={"phone_number_id": job["phone_number_id"]}, headers=headers)
        except httpx.HTTPError as exc:
            raise MediaError(f"the Graph API could not be reached: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise graph_error(response, f"reading media {job['meta_media_id']}", token)
        try:
            info: Any = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            info = None
        if not isinstance(info, dict) or not isinstance(info.get("url"), str):
            raise MediaError("the Graph API answered a media object without a url")
        mime = base_mime(info.get("mime_type") or job["mime_type"])
        if mime not in self.limits:
            raise MediaError(f'mime_type: "{mime}" is not one Meta accepts as media', permanent=True)
        kind, cap = self.limits[mime]
        declared = info.get("file_size")
        if isinstance(declared, (int, str)) and str(declared).isdigit() and int(declared) > cap:
            raise MediaError(f"{declared} bytes is over Meta's limit of {cap} bytes for {kind}", permanent=True)
        if not self._allowed_url(info["url"]):
            raise MediaError("the download URL is not on a Meta host; not followed", permanent=True)
        spool = Spool(cap)
        try:
            try:
                async with self.http.stream("GET", info["url"], headers=headers) as body:
                    if body.status_code != 200:
                        await body.aread()
                        # 404: the 5-minute URL expired; the next attempt asks for a new one.
                        raise graph_error(body, "downloading the media", token) if body.status_code != 404 \
                            else MediaError("HTTP 404 downloading the media (the URL expired)")
                    async for data in body.aiter_bytes():
                        spool.write(data)
            except OverflowError:
                raise MediaError(f"the file is over Meta's limit of {cap} bytes for {kind}", permanent=True) from None
            except httpx.HTTPError as exc:
                raise MediaError(f"the download failed: {type(exc).__name__}") from None
            if spool.size == 0:
                raise MediaError("the download was empty")
            if not _digest_matches(info.get("sha256"), spool.sha256):
                raise MediaError("the downloaded bytes do not match Meta's sha256")
            key = storage_key(job["tenant_id"], spool.sha256)
            await self.store.put(key, spool.file)
        finally:
            spool.close()
        return {"media_id": job["media_id"], "storage_key": key, "sha256": spool.sha256,
                "size_bytes": spool.size, "mime_type": mime}

    async def _run_job(self, job: dict) -> None:
        try:
            result = await self.download(job)
        except MediaError as exc:
            result = {"media_id": job["media_id"], "error": scrub(str(exc), job["access_token"])[:ERROR_MAX],
                      "permanent": exc.permanent}
        except Exception as exc:  # a bug must not lose the report: the file is tried again
            log.exception("media download %s failed", job["media_id"])
            result = {"media_id": job["media_id"], "error": f"worker error ({type(exc).__name__})"}
        if "error" in result:
            log.warning("media %s: %s", job["media_id"], result["error"])
        self._results.add(result)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._slot_free.set()

    # --- the loop ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        if self.http is None:
            self.http = httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False,
                                          limits=httpx.Limits(max_connections=settings.media_concurrency * 2))
        wake = asyncio.Event()
        done = asyncio.Event()
        try:
            rows, _ = await self.db.fetch(MEDIA_TYPES, stop=stop)
            self.limits = {mime: (kind, cap) for mime, kind, cap in rows}
            log.info("media loop %s started: %d media types, concurrency %d", settings.worker_name,
                     len(self.limits), settings.media_concurrency)
            await run_tasks(
                {"media-claim": self._claim_then_download(stop, wake, done), "media-report": self._report_loop(done)},
                {"media-listen": listen(settings.database_url, CHANNEL, wake, stop,
                                        f"{settings.worker_name}-media-listen")},
                stop=stop)
        except Unavailable:
            pass
        finally:
            await self.db.close()
            if self._own_http:
                await self.http.aclose()
            log.info("media loop %s stopped: %s", settings.worker_name, self.totals)

    async def _claim_then_download(self, stop: asyncio.Event, wake: asyncio.Event, done: asyncio.Event) -> None:
        try:
            await self._claim_loop(stop, wake)
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            done.set()

    async def _claim_loop(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        names = ("media_id", "tenant_id", "meta_media_id", "media_type", "mime_type", "sha256", "attempts",
                 "phone_number_id", "access_token", "graph_api_version")
        while not stop.is_set():
            wake.clear()
            self._slot_free.clear()
            free = self.settings.media_concurrency - len(self._tasks)
            claimed = 0
            if free > 0:
                try:
                    rows, _ = await self.db.fetch(CLAIM_SQL, (self.settings.worker_name, free), stop=stop)
                except Unavailable:
                    break
                except Exception:
                    log.exception("claim_media_downloads failed; retrying in %.0f s", self.heartbeat_s)
                    await wait(stop, None, self.heartbeat_s)
                    continue
                claimed = len(rows)
                self.totals["claimed"] += claimed
                for row in rows:
                    task = asyncio.create_task(self._run_job(dict(zip(names, row))))
                    self._tasks.add(task)
                    task.add_done_callback(self._task_done)
            if claimed and claimed == free:
                continue
            await wait(stop, self._slot_free if free <= 0 else wake, self.heartbeat_s)

    async def _report_loop(self, done: asyncio.Event) -> None:
        async for batch in self._results.batches(self.report_s, done):
            await self._report(batch, done)

    async def _report(self, batch: list[dict], done: asyncio.Event) -> None:
        payload = orjson.dumps(batch).decode()
        for attempt in range(3):
            try:
                deadline = asyncio.get_running_loop().time() + 15 if done.is_set() else None
                rows, _ = await self.db.fetch(COMPLETE_SQL, (payload,), deadline=deadline)
            except Unavailable:
                break
            except Exception:
                log.exception("complete_media_downloads failed (%d results, attempt %d)", len(batch), attempt + 1)
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            keys = {r["media_id"]: r.get("storage_key") for r in batch}
            for media_id, state, _error in rows:
                self.totals["stored" if state == "stored" else "failed" if state == "failed" else "retrying"] += 1
                if state != "stored" and keys.get(media_id):
                    # SQL refused a stored file (outside the limits): it is not kept.
                    await self.store.delete(keys[media_id])
            return
        log.error("%d media results not reported; their files come back after the lease", len(batch))


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """The media loop of ``python -m worker``, until ``stop`` is set."""
    await MediaDownloader(settings).run(stop)
