"""The simulator's HTTP server (aiohttp): the Graph API surface and ``/_sim`` control.

Graph API routes (``{version}`` is any ``v<major>.<minor>``)::

    POST /{version}/{phone_number_id}/messages       send, or mark as read
    GET  /{version}/{waba_id}/message_templates      cursor-paged templates
    GET  /{version}/{waba_id}/phone_numbers          the WABA's numbers (cursor-paged)
    GET  /{version}/{phone_number_id}                the phone number node (?fields=)

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
    POST /_sim/inbound                {"phone_number_id", "from", "text" | "message",
                                       "delay_s"?, ...}: delivered now or delay_s later
    POST /_sim/template_status        {"name", "status", "language"?, "waba_id"?, "reason"?}
                                      (PAUSED drops the messages held for it: failed 132015)
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
import re
import signal
import sys

import orjson
from aiohttp import web

from .config import SimConfig
from .errors import SimError, unknown_path
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
            ("POST", "template_status"): self.post_template_status,
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
        if request.method == "GET" and len(parts) == 4 and parts[3] == "message_templates" \
                and VERSION_RE.match(parts[1]):
            return self.message_templates(request, parts[2])
        if request.method == "GET" and len(parts) == 4 and parts[3] == "phone_numbers" \
                and VERSION_RE.match(parts[1]):
            return self.waba_phone_numbers(request, parts[2])
        if request.method == "GET" and len(parts) == 3 and VERSION_RE.match(parts[1]):
            return self.phone_number(request, parts[2])
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
        if message is None:
            message = {"type": "text", "text": {"body": str(body.get("text", "Hi"))}}
        if not isinstance(message, dict):
            raise TypeError("message must be an object")
        delay_s = float(body.get("delay_s", 0))
        if not 0 <= delay_s < 7 * 24 * 3600:
            raise ValueError("delay_s must be a number of seconds, not negative")
        due = self.sim.clock.monotonic() + delay_s if delay_s else None
        wamid = self.sim.inbound(number, sender, message, name=body.get("name"),
                                 context_id=body.get("context_id"), due=due)
        return _json({"id": wamid, "wamid": wamid})

    async def post_template_status(self, request) -> web.Response:
        changed = self.sim.template_status(await self._body(request))
        return _json({"updated": len(changed), "events": changed})

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
    # its clock: the start-up heap leaves the collector's sight, and young collections
    # come less often (measured: pauses up to 30 ms, 2.5% of the loop, without this).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    if ready:
        ready.set()
    try:
        await stop.wait()
    finally:
        await probe
        await runner.cleanup()
