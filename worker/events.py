"""The event loop: deliver a tenant's outbound events to its endpoints, signed.

::

    LISTEN pgwa_events ──wake──┐        (the triggers NOTIFY at commit; HEARTBEAT_S otherwise,
    claim loop ──api.claim_events(batch, busy lanes)──> rows        for retries coming due)
        ──> one lane per endpoint: at most lane_concurrency POSTs at once, each with the
            endpoint's timeout ──> results ──api.report_events──> delivered / retried / dead

A lane is an endpoint. The database hands out at most four times a lane's concurrency per
claim (one event, as a probe, while the endpoint is failing), and the loop names the
lanes that are full (``busy``) so that they get nothing more; a slow or dead endpoint
therefore holds its own lane and no other endpoint's events wait behind it.
Back-off, retry windows and dead-lettering are the database's (api.report_events).

Each POST carries the exact body the database built and::

    Content-Type: application/json
    X-Pgwa-Event-Id: <id>             the same on every attempt and replay (dedupe on it)
    X-Pgwa-Event-Type: <type>
    X-Pgwa-Delivery-Attempt: <n>
    X-Pgwa-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

A receiver recomputes the HMAC over the timestamp, a dot and the raw body, compares in
constant time and refuses a timestamp far from its clock (:func:`verify`). An endpoint
on a loopback, private or link-local address is refused (when it is named by address,
and whatever its name resolves to) unless core.settings.event_allow_private_urls.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from pgwa.config import Settings

from .db import Database, Unavailable, listen
from .loop import NotReported, Results, report, run_tasks, wait

log = logging.getLogger("worker.events")

CHANNEL = "pgwa_events"
BATCH = 500              # deliveries per claim
HEARTBEAT_S = 1.0        # idle: claim this often anyway (retries and probes coming due)
CLAIM_MIN_S = 0.005      # between claims while busy: let completions coalesce
REPORT_S = 0.05          # at most one report per this interval
MAX_INFLIGHT = 4096      # claimed and not yet reported, over all lanes
STOP_REPORT_S = 15.0
LANE_DEPTH = 4           # a lane is full at this many times its concurrency claimed (as the claim's share)
ERROR_MAX = 300
USER_AGENT = "pgwa-events/1"

POLICY_SQL = "SELECT timeout_ms, lane_concurrency, allow_private_urls FROM api.event_policy()"
CLAIM_SQL = ("SELECT msg_id, endpoint_id, event_id, event_type, attempt, url, secret, body "
             "FROM api.claim_events(%s, %s, %s::bigint[], %s::timestamptz)")
REPORT_SQL = "SELECT delivered, retried, dead FROM api.report_events(%s::jsonb, %s::timestamptz)"


# -- the signature ---------------------------------------------------------------------------

def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>.<body>"`` with the endpoint's secret."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: int = 300, now: float | None = None) -> bool:
    """A receiver's check of ``X-Pgwa-Signature``: a v1 HMAC that matches (constant time) and a
    timestamp within ``tolerance_s`` of ``now`` (default the clock)."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, v) for v in parts.get("v1", ()))


# -- where an endpoint may be ----------------------------------------------------------------

def _private(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True                     # not an address: refuse rather than guess
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


class PublicResolver(aiohttp.ThreadedResolver):
    """Resolves names to their public addresses only: a name that resolves to loopback,
    private or link-local space (DNS rebinding included: the connection uses what this
    returns) is refused."""

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[dict[str, Any]]:
        found = await super().resolve(host, port, family)
        public = [a for a in found if not _private(a["host"])]
        if not public:
            raise OSError(f"{host} resolves only to loopback, private or link-local addresses")
        return public


def url_refusal(url: str, allow_private: bool) -> str | None:
    """Why the worker will not POST to ``url`` (named by a private address), or None."""
    host = urlsplit(url).hostname or ""
    if allow_private:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None if host != "localhost" else "localhost is refused"
    return f"address {host} is loopback, private or link-local" if _private(host) else None


# -- the loop --------------------------------------------------------------------------------

@dataclass
class EventStats:
    claims: int = 0
    claimed: int = 0
    delivered: int = 0          # answered 2xx
    failed: int = 0
    reports: int = 0
    reported: int = 0
    unreported: int = 0
    dead: int = 0


class _Lane:
    """One endpoint's claimed deliveries, sent by at most ``concurrency`` runners at once."""

    __slots__ = ("held", "rows", "runners")

    def __init__(self) -> None:
        self.rows: deque[tuple] = deque()
        self.runners = 0
        self.held = 0               # claimed, not yet settled


class EventDeliverer:
    """One worker's claim → POST → report loop for outbound events; ``await run(stop)``."""

    def __init__(self, settings: Settings, *, batch: int = BATCH, heartbeat_s: float = HEARTBEAT_S,
                 report_s: float = REPORT_S, max_inflight: int = MAX_INFLIGHT,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.batch = batch
        self.heartbeat_s = heartbeat_s
        self.report_s = report_s
        self.max_inflight = max_inflight
        self.clock = clock                  # tests: the time claims and reports happen at
        self.name = f"{settings.worker_name}-events"
        self.stats = EventStats()
        self._claims = Database(settings.session_url(), f"{self.name}-claim")
        self._reports = Database(settings.session_url(), f"{self.name}-report")
        self._lanes: dict[int, _Lane] = {}
        self._inflight = 0
        self._results = Results()
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._refusals: dict[str, str | None] = {}
        self.timeout_s = 10.0
        self.lane_concurrency = 16
        self.allow_private = False

    async def run(self, stop: asyncio.Event) -> EventStats:
        sent = asyncio.Event()
        try:
            await run_tasks({f"{self.name}-claim": self._claim_then_drain(stop, sent),
                             f"{self.name}-report": self._report_loop(sent)},
                            {f"{self.name}-listen": listen(self.settings.database_url, CHANNEL, self._wake, stop,
                                                           f"{self.name}-listen")},
                            stop=stop)
        finally:
            await self._claims.close()
            await self._reports.close()
            if self._session is not None:
                await self._session.close()
            s = self.stats
            log.info("events %s stopped: %d delivered, %d failed, %d dead, %d left to the claim timeout",
                     self.name, s.delivered, s.failed, s.dead, s.unreported)
        return self.stats

    async def _policy(self, stop: asyncio.Event) -> None:
        rows, _ = await self._claims.fetch(POLICY_SQL, (), stop=stop)
        timeout_ms, self.lane_concurrency, self.allow_private = rows[0]
        self.timeout_s = timeout_ms / 1000
        resolver = aiohttp.ThreadedResolver() if self.allow_private else PublicResolver()
        # No connection limit per host: endpoints of different tenants may share a host, and a
        # hanging one would hold the others' connections. Each lane's runners are the limit.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, resolver=resolver, ttl_dns_cache=60,
                                         enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector, headers={"User-Agent": USER_AGENT},
            timeout=aiohttp.ClientTimeout(total=self.timeout_s, connect=min(self.timeout_s, 5.0)))

    async def _claim_then_drain(self, stop: asyncio.Event, sent: asyncio.Event) -> None:
        try:
            await self._claim_loop(stop)
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            sent.set()

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while not stop.is_set():
            self._wake.clear()
            started = loop.time()
            room = min(self.batch, self.max_inflight - self._inflight)
            got = 0
            if room > 0:
                try:
                    if self._session is None:
                        await self._policy(stop)
                    busy = [e for e, lane in self._lanes.items() if lane.held >= LANE_DEPTH * self.lane_concurrency]
                    rows, _ = await self._claims.fetch(
                        CLAIM_SQL, (self.settings.worker_name, room, busy, self._now()), stop=stop)
                    failures = 0
                except Unavailable:
                    break
                except Exception as exc:  # noqa: BLE001 (a broken function must not kill the loop)
                    failures += 1
                    log.error("claim_events failed: %s", _describe(exc))
                    await wait(stop, None, min(self.heartbeat_s, 0.5 * 2 ** failures))
                    continue
                self.stats.claims += 1
                got = len(rows)
                self._dispatch(rows)
            if got >= room > 0:
                await wait(stop, None, CLAIM_MIN_S - (loop.time() - started))
            else:
                # A lane with room again, a NOTIFY, or the heartbeat.
                await wait(stop, self._wake, self.heartbeat_s)
                await wait(stop, None, CLAIM_MIN_S - (loop.time() - started))

    def _dispatch(self, rows: list[tuple]) -> None:
        self.stats.claimed += len(rows)
        self._inflight += len(rows)
        loop = asyncio.get_running_loop()
        touched = set()
        for row in rows:
            lane = self._lanes.get(row[1])
            if lane is None:
                lane = self._lanes[row[1]] = _Lane()
            lane.held += 1
            lane.rows.append(row)
            touched.add(lane)
        for lane in touched:
            while lane.runners < self.lane_concurrency and lane.runners < len(lane.rows):
                lane.runners += 1
                task = loop.create_task(self._run_lane(lane))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run_lane(self, lane: _Lane) -> None:
        """One of a lane's runners: deliver its rows one after another until none is left."""
        try:
            while lane.rows:
                await self._deliver(lane.rows.popleft(), lane)
        finally:
            lane.runners -= 1

    async def _deliver(self, row: tuple, lane: _Lane) -> None:
        msg_id, endpoint_id, event_id, event_type, attempt, url, secret, body = row
        result = {"endpoint_id": endpoint_id, "event_id": event_id, "msg_id": msg_id,
                  "ok": False, "http_status": None, "error": None}
        try:
            result.update(await self._post(url, secret, body.encode(), event_id, event_type, attempt))
        except Exception as exc:  # noqa: BLE001 (never lose a result)
            result["error"] = _describe(exc)
        lane.held -= 1
        if result["ok"]:
            self.stats.delivered += 1
        else:
            self.stats.failed += 1
        self._results.add(result)
        if lane.held == LANE_DEPTH * self.lane_concurrency // 2:
            self._wake.set()        # the lane has room for a claim's share again

    async def _post(self, url: str, secret: str, body: bytes, event_id: int, event_type: str,
                    attempt: int) -> dict:
        refusal = self._refusals.get(url, False)
        if refusal is False:
            refusal = self._refusals[url] = url_refusal(url, self.allow_private)
        if refusal:
            return {"error": f"refused: {refusal}"}
        headers = {"Content-Type": "application/json", "X-Pgwa-Event-Id": str(event_id),
                   "X-Pgwa-Event-Type": event_type, "X-Pgwa-Delivery-Attempt": str(attempt),
                   "X-Pgwa-Signature": signature_header(secret, int(time.time()), body)}
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300
                return {"ok": ok, "http_status": resp.status,
                        "error": None if ok else f"HTTP {resp.status} {resp.reason or ''}".strip()}
        except TimeoutError:
            return {"error": f"no answer within {self.timeout_s:g} s"}
        except (aiohttp.ClientError, OSError) as exc:
            return {"error": _describe(exc)}

    async def _report_loop(self, sent: asyncio.Event) -> None:
        async for batch in self._results.batches(self.report_s, sent):
            await self._report(batch, sent)

    async def _report(self, batch: list[dict], sent: asyncio.Event) -> None:
        try:
            rows, _ = await report(
                self._reports, REPORT_SQL, (orjson.dumps(batch).decode(), self._now()), what="report_events",
                size=len(batch), sent=sent, stop_report_s=STOP_REPORT_S, describe=_describe, logger=log)
        except NotReported as why:
            return self._give_up(batch, str(why))
        self.stats.reports += 1
        self.stats.reported += len(batch)
        self.stats.dead += rows[0][2] if rows else 0
        self._inflight -= len(batch)

    def _give_up(self, batch: list[dict], why: str) -> None:
        log.error("%d event results not reported (%s); they are delivered again after the claim timeout",
                  len(batch), why)
        self.stats.unreported += len(batch)
        self._inflight -= len(batch)

    def _now(self) -> datetime | None:
        return None if self.clock is None else self.clock()


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= ERROR_MAX else text[: ERROR_MAX - 1] + "…"


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """The event loop of ``python -m worker``, until ``stop`` is set."""
    await EventDeliverer(settings).run(stop)
