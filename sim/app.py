"""The simulator's HTTP server (aiohttp): the Graph API surface and ``/_sim`` control.

Graph API routes (``{version}`` is any ``v<major>.<minor>``)::

    POST /{version}/{phone_number_id}/messages       send, or mark as read
    GET  /{version}/{waba_id}/message_templates      cursor-paged templates
    POST /{version}/{waba_id}/message_templates      create a template: {"id", "status":
                                                     "PENDING", "category"}, reviewed later
    DELETE /{version}/{waba_id}/message_templates?name=&hsm_id=   delete (all languages,
                                                     or the one with that id)
    GET  /{version}/{waba_id}/phone_numbers          the WABA's numbers (cursor-paged)
    GET  /{version}/{phone_number_id}                the phone number node (?fields=)
    POST /{version}/{phone_number_id}/media          upload (multipart file, type,
                                                     messaging_product): {"id"}
    GET  /{version}/{media_id}[?phone_number_id=]    url, mime_type, sha256, file_size, id
    DELETE /{version}/{media_id}                     {"success": true}
    GET  /whatsapp_business/attachments/?mid=&ext=&hash=   the bytes (Bearer token; 404
                                                     once the 5-minute URL expired)

Template checks at send and creation: sim/templates.py; media: sim/media.py.

A read needs a token declared with a number of the WABA (190, HTTP 401, otherwise an
unknown token; 100 subcode 33, HTTP 400, for an object the token cannot read).

Control routes (no auth; JSON in, JSON out)::

    GET  /_sim/health                 {"ok": true}
    GET  /_sim/stats                  counters, peaks, duplicates, webhook delivery, sends
                                      failed later by code, and per business portfolio its
                                      tier, unique_users_24h, max_unique_users_24h and
                                      refused_new_users (0: the client kept to the tier)
    GET  /_sim/ledger?since=&limit=&phone_number_id=
    GET  /_sim/faults | POST /_sim/faults      settings; POST deep-merges a partial object
    GET  /_sim/numbers | POST /_sim/numbers    idempotent upsert of one number (or a list)
    GET  /_sim/templates?waba_id= | POST /_sim/templates {"waba_id"?, "templates": [...]}
    POST /_sim/reset                  {"numbers": false, "templates": false, "settings": true}
                                      (and the clock back on real time)
    GET  /_sim/clock | POST /_sim/clock        {"frozen"?: bool, "advance_s"?: seconds}:
                                      freeze or move the simulator's time (sim/clock.py)
    POST /_sim/inbound                {"phone_number_id", "from", "text" | "message" |
                                       "media" | "button", "context_id"?, "name"?,
                                       "delay_s"?}: delivered now or delay_s later;
                                      answers {"id", "wamid"} (and the media facts)
         "media": {"type": "image" | "audio" | "video" | "document" | "sticker",
                   "mime_type"?, "content_b64"? | "size"? (random bytes, default 2048),
                   "caption"? (image, video, document), "filename"? (document),
                   "voice"? (audio, default true: audio/ogg; codecs=opus),
                   "animated"? (sticker)}: the bytes become media of the number's WABA
                   (7 days), served by GET /{media_id} and its download URL; the answer
                   adds "media_id", "mime_type", "sha256" (hex) and "file_size"
         "button": {"index"? | "text"? | "payload"?}: a tap on a template's quick-reply
                   button (type "button"); with the "context_id" of a template message
                   the simulator sent to "from", index (or text) picks the button and the
                   payload is the one that send gave (else the button text)
    GET  /_sim/media                  the media held: id, waba_id, phone_number_id,
                                      mime_type, file_size, sha256, expires (unix)
    POST /_sim/template_status        {"name", "status", "language"?, "waba_id"?, "reason"?}
                                      (PAUSED drops the messages held for it: failed 132015;
                                      REJECTED sets rejected_reason to reason)
    POST /_sim/template_quality       {"name", "score": GREEN|YELLOW|RED|UNKNOWN, "language"?,
                                       "waba_id"?}: message_template_quality_update
    POST /_sim/template_category      {"name", "category", "language"?, "waba_id"?,
                                       "impending"?: false}: template_category_update (the
                                      24-hour notice, or the change itself)
    POST /_sim/quality                {"phone_number_id", "event", "current_limit"?, ...}
    POST /_sim/tier                   {"business_id" | "phone_number_id" | "waba_id", "tier",
                                       "webhook"?: true}: a portfolio's messaging limit, and
                                      the business_capability_update webhook Meta sends
    POST /_sim/throughput             {"phone_number_id", "throughput_mps"?: 1000,
                                       "maintenance_s"?: 60}: a throughput upgrade (131057
                                      meanwhile, then a THROUGHPUT_UPGRADE webhook)

``POST /_sim/faults`` also takes one-shot faults: ``rate_limit_burst``, ``token_expiry``
and ``account_limit`` (``{"code": 80007 | 4, "seconds", "regain_minutes"?, "waba_id"? |
"phone_number_id"?}``: every send and read of that WABA, or of the app, answers the code
with an ``X-Business-Use-Case-Usage`` header until it ends). See sim/config.py.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import signal
import sys

import orjson
from aiohttp import BodyPartReader, web

from .config import SimConfig
from .errors import SimError, unknown_path
from .media import MAX_UPLOAD
from .simulator import DROP, Simulator

log = logging.getLogger("sim")
VERSION_RE = re.compile(r"^v\d+\.\d+$")
JSON = "application/json"


def _json(obj, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type=JSON)


def _graph_error(err: SimError) -> web.Response:
    return web.Response(body=err.body(), status=err.http_status, content_type=JSON,
                        headers=err.headers)


class SimApp:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.control = {
            ("GET", "health"): self.health,
            ("GET", "stats"): self.stats,
            ("GET", "ledger"): self.ledger,
            ("GET", "faults"): self.get_faults,
            ("POST", "faults"): self.post_faults,
            ("GET", "numbers"): self.get_numbers,
            ("POST", "numbers"): self.post_numbers,
            ("GET", "templates"): self.get_templates,
            ("POST", "templates"): self.post_templates,
            ("POST", "reset"): self.reset,
            ("GET", "clock"): self.get_clock,
            ("POST", "clock"): self.post_clock,
            ("POST", "inbound"): self.post_inbound,
            ("GET", "media"): self.get_media,
            ("POST", "template_status"): self.post_template_status,
            ("POST", "template_quality"): self.post_template_quality,
            ("POST", "template_category"): self.post_template_category,
            ("POST", "quality"): self.post_quality,
            ("POST", "tier"): self.post_tier,
            ("POST", "throughput"): self.post_throughput,
        }

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app) -> None:
        await self.sim.emitter.start()

    async def _on_cleanup(self, _app) -> None:
        await self.sim.emitter.stop()

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = request.path.split("/")
        if len(parts) == 4 and parts[3] == "messages" and request.method == "POST":
            return await self.messages(request, parts[1], parts[2])
        if len(parts) >= 3 and parts[1] == "_sim":
            handler = self.control.get((request.method, parts[2]))
            if handler is None:
                return _json({"error": f"no control route {request.method} {request.path}"}, 404)
            try:
                return await handler(request)
            except (ValueError, TypeError, KeyError) as exc:
                return _json({"error": str(exc)}, 400)
        versioned = len(parts) >= 3 and VERSION_RE.match(parts[1]) is not None
        method = request.method
        if versioned and len(parts) == 4 and parts[3] == "message_templates":
            if method == "GET":
                return self.message_templates(request, parts[2])
            if method == "POST":
                return await self.create_template(request, parts[2])
            if method == "DELETE":
                return self.delete_template(request, parts[2])
        if versioned and len(parts) == 4 and parts[3] == "media" and method == "POST":
            return await self.upload_media(request, parts[2])
        if method == "GET" and versioned and len(parts) == 4 and parts[3] == "phone_numbers":
            return self.waba_phone_numbers(request, parts[2])
        if versioned and len(parts) == 3:
            if method == "GET" and parts[2] in self.sim.media.items:
                return self.media_info(request, parts[2])
            if method == "GET":
                return self.phone_number(request, parts[2])
            if method == "DELETE":
                return self.delete_media(request, parts[2])
        if method == "GET" and request.path == "/whatsapp_business/attachments/":
            return self.download_media(request)
        return _graph_error(unknown_path(request.path))

    # --- Graph API ------------------------------------------------------------------

    async def messages(self, request: web.Request, version: str, pnid: str) -> web.StreamResponse:
        sim = self.sim
        raw = await request.read()
        if not VERSION_RE.match(version):
            return _graph_error(unknown_path(request.path))
        try:
            number = sim.authorize(pnid, request.headers.get("Authorization"))
        except SimError as err:
            sim.ledger.requests += 1
            sim.ledger.reject(err.code)
            return _graph_error(err)
        delay = sim.latency_s()
        if delay:
            await asyncio.sleep(delay)
        result = sim.send(number, raw, sim.pick_drop())
        if result is DROP:
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=204)
        status, body, headers = result
        return web.Response(body=body, status=status, content_type=JSON, headers=headers or None)

    def _waba_access(self, request: web.Request, waba_id: str) -> None:
        self.sim.read_waba_numbers(waba_id, request.headers.get("Authorization"))

    def message_templates(self, request: web.Request, waba_id: str) -> web.Response:
        try:
            self._waba_access(request, waba_id)
            base = f"{request.scheme}://{request.host}{request.path}"
            return _json(self.sim.templates.page(waba_id, dict(request.query), base))
        except SimError as err:
            return _graph_error(err)

    async def create_template(self, request: web.Request, waba_id: str) -> web.Response:
        try:
            raw = await request.read()
            try:
                body = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                raise SimError(100, "The request body must be JSON.") from None
            return _json(self.sim.create_template(waba_id, request.headers.get("Authorization"),
                                                  body))
        except SimError as err:
            return _graph_error(err)

    def delete_template(self, request: web.Request, waba_id: str) -> web.Response:
        try:
            return _json(self.sim.delete_template(
                waba_id, request.headers.get("Authorization"), request.query.get("name"),
                request.query.get("hsm_id")))
        except SimError as err:
            return _graph_error(err)

    # --- media -----------------------------------------------------------------------

    async def upload_media(self, request: web.Request, pnid: str) -> web.Response:
        sim = self.sim
        try:
            number = sim.authorize(pnid, request.headers.get("Authorization"))
            if not request.content_type.startswith("multipart/"):
                raise SimError(100, "Upload the file as multipart/form-data (file, type, "
                               "messaging_product).")
            fields: dict[str, str] = {}
            data = file_mime = filename = None
            async for part in await request.multipart():
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "file":
                    buf = bytearray()
                    while chunk := await part.read_chunk(1 << 20):
                        buf += chunk
                        if len(buf) > MAX_UPLOAD:
                            raise SimError(131053, "The file is larger than 100 MB, the "
                                           "largest any media may be.")
                    data, filename = bytes(buf), part.filename
                    file_mime = part.headers.get("Content-Type")
                elif part.name:
                    fields[part.name] = await part.text()
            return _json(sim.upload_media(number, fields, data, file_mime, filename))
        except SimError as err:
            return _graph_error(err)

    def media_info(self, request: web.Request, media_id: str) -> web.Response:
        try:
            media = self.sim.read_media(media_id, request.headers.get("Authorization"),
                                        request.query.get("phone_number_id"))
        except SimError as err:
            return _graph_error(err)
        url = self.sim.media.issue_url(media, f"{request.scheme}://{request.host}")
        return _json(media.info(url))

    def delete_media(self, request: web.Request, media_id: str) -> web.Response:
        try:
            self.sim.read_media(media_id, request.headers.get("Authorization"),
                                request.query.get("phone_number_id"))
        except SimError as err:
            return _graph_error(err)
        self.sim.media.delete(media_id)
        return _json({"success": True})

    def download_media(self, request: web.Request) -> web.Response:
        """The bytes behind a URL ``GET /{media_id}`` issued, for a token of the owning
        WABA; 404 once the URL (5 minutes) or the media expired, or for another WABA."""
        try:
            token = self.sim.read_token(request.headers.get("Authorization"))
        except SimError as err:
            return _graph_error(err)
        media = self.sim.media.by_url(request.query.get("mid"), request.query.get("hash"))
        if media is None or media.waba_id not in self.sim.token_wabas(token):
            return web.Response(status=404, text="Not Found")
        headers = {"Content-Type": media.mime_type}
        if media.filename:
            headers["Content-Disposition"] = f'attachment; filename="{media.filename}"'
        return web.Response(body=media.data, headers=headers)

    def _node(self, number, fields: str | None) -> dict:
        """The phone number node: Meta's default fields, or those asked for (and ``id``).
        ``whatsapp_business_manager_messaging_limit`` (the portfolio's tier) only when
        asked for, as Meta answers it."""
        # Meta shows STANDARD; the upgraded level's name was not seen [unsure]: HIGH.
        level = "HIGH" if number.limit_mps >= 1000 else "STANDARD"
        node = {"verified_name": number.verified_name, "code_verification_status": "VERIFIED",
                "display_phone_number": number.display_phone_number,
                "quality_rating": number.quality_rating, "platform_type": "CLOUD_API",
                "throughput": {"level": level}, "id": number.phone_number_id}
        if fields:
            wanted = {f.strip() for f in fields.split(",")} | {"id"}
            node = {k: v for k, v in node.items() if k in wanted}
            if "whatsapp_business_manager_messaging_limit" in wanted:
                node["whatsapp_business_manager_messaging_limit"] = \
                    self.sim.tier_of(number.business)
        return node

    def phone_number(self, request: web.Request, pnid: str) -> web.Response:
        try:
            number = self.sim.read_number(pnid, request.headers.get("Authorization"))
        except SimError as err:
            return _graph_error(err)
        return _json(self._node(number, request.query.get("fields")))

    def waba_phone_numbers(self, request: web.Request, waba_id: str) -> web.Response:
        """One page of the WABA's numbers; ``after`` is the index cursor of the last one."""
        try:
            numbers = self.sim.read_waba_numbers(waba_id, request.headers.get("Authorization"))
            limit = max(1, min(int(request.query.get("limit", 25)), 100))
            start = int(request.query.get("after", 0) or 0)
        except SimError as err:
            return _graph_error(err)
        except ValueError:
            return _graph_error(SimError(100, "limit and after must be integers", graph_level=True))
        numbers.sort(key=lambda n: n.phone_number_id)
        page = numbers[start:start + limit]
        body: dict = {"data": [self._node(n, request.query.get("fields")) for n in page]}
        if page:
            body["paging"] = {"cursors": {"before": str(start), "after": str(start + len(page))}}
            if start + len(page) < len(numbers):
                query = {**request.query, "after": str(start + len(page)), "limit": str(limit)}
                body["paging"]["next"] = str(request.url.with_query(query))
        return _json(body)

    # --- control ---------------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict:
        raw = await request.read()
        if not raw:
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON: {exc}") from exc
        return body

    async def health(self, _request) -> web.Response:
        return _json({"ok": True, "numbers": len(self.sim.numbers)})

    async def stats(self, _request) -> web.Response:
        return _json(self.sim.stats())

    async def ledger(self, request) -> web.Response:
        q = request.query
        return _json(self.sim.ledger.entries(int(q.get("since", 0)), int(q.get("limit", 1000)),
                                             q.get("phone_number_id")))

    async def get_faults(self, _request) -> web.Response:
        return _json(self.sim.settings)

    async def post_faults(self, request) -> web.Response:
        return _json(self.sim.update_settings(await self._body(request)))

    async def get_numbers(self, _request) -> web.Response:
        return _json({"numbers": [n.public() for n in self.sim.numbers.values()]})

    async def post_numbers(self, request) -> web.Response:
        body = await self._body(request)
        items = body if isinstance(body, list) else body.get("numbers", [body])
        return _json({"numbers": [self.sim.upsert_number(item).public() for item in items]})

    async def get_templates(self, request) -> web.Response:
        waba = request.query.get("waba_id")
        return _json({w: [t.data for t in tpls.values()]
                      for w, tpls in self.sim.templates.by_waba.items()
                      if waba is None or w == waba})

    async def post_templates(self, request) -> web.Response:
        body = await self._body(request)
        wabas = [body["waba_id"]] if body.get("waba_id") else list(self.sim.templates.by_waba)
        out = [self.sim.templates.upsert(w, raw) for w in wabas for raw in body["templates"]]
        return _json({"templates": out})

    async def reset(self, request) -> web.Response:
        body = await self._body(request)
        self.sim.reset(numbers=bool(body.get("numbers", False)),
                       templates=bool(body.get("templates", False)),
                       settings=bool(body.get("settings", True)))
        return _json({"ok": True})

    async def get_clock(self, _request) -> web.Response:
        return _json(self.sim.clock.as_dict())

    async def post_clock(self, request) -> web.Response:
        body = await self._body(request)
        unknown = set(body) - {"frozen", "advance_s"}
        if unknown:
            raise ValueError(f"unknown clock fields: {sorted(unknown)}")
        frozen = body.get("frozen")
        if frozen is not None and not isinstance(frozen, bool):
            raise TypeError("frozen must be true or false")
        return _json(self.sim.clock.set(frozen=frozen, advance_s=float(body.get("advance_s", 0))))

    async def post_inbound(self, request) -> web.Response:
        body = await self._body(request)
        number = self.sim.numbers.get(str(body.get("phone_number_id", "")))
        if number is None:
            raise ValueError("inbound needs a known phone_number_id")
        sender = str(body.get("from", "")).lstrip("+")
        if not sender.isdigit():
            raise ValueError("inbound needs from (the user's wa_id)")
        message = body.get("message")
        facts: dict = {}
        if body.get("media") is not None:
            message, facts = self.sim.inbound_media(number, body["media"])
        elif body.get("button") is not None:
            message = self.sim.button_tap(number, sender, body["button"], body.get("context_id"))
        elif message is None:
            message = {"type": "text", "text": {"body": str(body.get("text", "Hi"))}}
        if not isinstance(message, dict):
            raise TypeError("message must be an object")
        delay_s = float(body.get("delay_s", 0))
        if not 0 <= delay_s < 7 * 24 * 3600:
            raise ValueError("delay_s must be a number of seconds, not negative")
        due = self.sim.clock.monotonic() + delay_s if delay_s else None
        wamid = self.sim.inbound(number, sender, message, name=body.get("name"),
                                 context_id=body.get("context_id"), due=due)
        return _json({"id": wamid, "wamid": wamid, **facts})

    async def get_media(self, _request) -> web.Response:
        return _json({"media": [
            {"id": m.id, "waba_id": m.waba_id, "phone_number_id": m.phone_number_id,
             "mime_type": m.mime_type, "file_size": len(m.data), "sha256": m.sha256,
             "expires": int(m.expires)} for m in self.sim.media.items.values()]})

    async def post_template_status(self, request) -> web.Response:
        changed = self.sim.template_status(await self._body(request))
        return _json({"updated": len(changed), "events": changed})

    async def post_template_quality(self, request) -> web.Response:
        return _json({"events": self.sim.template_quality(await self._body(request))})

    async def post_template_category(self, request) -> web.Response:
        return _json({"events": self.sim.template_category(await self._body(request))})

    async def post_quality(self, request) -> web.Response:
        return _json(self.sim.quality_update(await self._body(request)))

    async def post_tier(self, request) -> web.Response:
        return _json(self.sim.set_tier(await self._body(request)))

    async def post_throughput(self, request) -> web.Response:
        return _json(self.sim.throughput_upgrade(await self._body(request)))


async def serve(config: SimConfig, ready: asyncio.Event | None = None) -> None:
    """Run the simulator until SIGINT/SIGTERM."""
    sim = Simulator(config)
    app = SimApp(sim).make_app()
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=2048, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    probe = asyncio.create_task(sim.probe.run(stop))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    numbers = ", ".join(f"{n.phone_number_id} (waba {n.waba_id}, {n.limit_mps:g} mps)"
                        for n in sim.numbers.values())
    print(f"sim listening on http://{config.host}:{config.port} numbers: {numbers}; "
          f"webhooks -> {config.webhook_url or '(none)'}; profile {sim.settings['profile']}",
          file=sys.stderr, flush=True)
    # The simulator counts each number's rate on this loop, so a collector pause skews
    # its clock: requests that waited in the socket meanwhile are stamped together, a
    # burst the sender never sent. The start-up heap leaves the collector's sight, young
    # collections come less often (pauses up to 30 ms, 2.5% of the loop, without this),
    # and the full collections, whose pause grows with the heap (the ledger, scheduled
    # statuses and webhook retries: 73-190 ms measured during a 50,000-message run), run
    # only while no send came for IDLE_GC_S (idle_collections), or every FORCED_GC_S
    # at the latest so that a simulator never idle still frees its reference cycles.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 2, NO_FULL_COLLECTION)
    _raise_priority()
    collector = asyncio.create_task(idle_collections(sim, stop))
    if ready:
        ready.set()
    try:
        await stop.wait()
    finally:
        await probe
        await collector
        await runner.cleanup()


# Full collections: never by threshold (gen 2 collects only after this many gen 1 ones).
NO_FULL_COLLECTION = 1_000_000_000
IDLE_GC_S = 10.0
FORCED_GC_S = 600.0


async def idle_collections(sim: Simulator, stop: asyncio.Event, check_s: float = 0.5) -> None:
    """A full collection once sends stopped coming for IDLE_GC_S (after some came), or
    after FORCED_GC_S without one; the rate of a number is never counted across it."""
    loop = asyncio.get_running_loop()
    seen, quiet_since, last_full = sim.ledger.requests, loop.time(), loop.time()
    dirty = False
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), check_s)
        except TimeoutError:
            pass
        now = loop.time()
        if sim.ledger.requests != seen:
            seen, quiet_since, dirty = sim.ledger.requests, now, True
        if (dirty and now - quiet_since >= IDLE_GC_S) or now - last_full >= FORCED_GC_S:
            gc.collect()                # (the start-up heap stays frozen: not traversed)
            last_full, dirty = now, False


def _raise_priority() -> None:
    """``PGWA_SIM_NICE`` (e.g. -10): the simulator stands for Meta's servers, which do not
    share the sender's CPU; on one machine a benchmark may run it ahead of the processes it
    measures, so that a sender starved of CPU is measured, not a simulator starved of it.
    Needs the privilege to lower a nice value; without it the simulator says so and runs
    as it is."""
    wanted = os.environ.get("PGWA_SIM_NICE")
    if not wanted:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, int(wanted))
    except (OSError, ValueError) as exc:
        print(f"sim: PGWA_SIM_NICE={wanted} not applied: {exc}", file=sys.stderr, flush=True)
