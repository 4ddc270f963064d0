"""/dashboard/events: Server-Sent Events fed by PostgreSQL's LISTEN/NOTIFY.

One connection per process listens (pgwa_dashboard: campaign counters and inbox
messages, from statement-level triggers in db/functions/users.sql; pgwa_notification:
a tenant's new notification) and fans each notification out in memory to the open
streams of its tenant, never one database connection per browser::

    PostgreSQL ── NOTIFY pgwa_dashboard 'campaign 7:12,7:13' ──> EventHub (1 connection)
        ──> the queues of tenant 7's streams ──> event: campaign / data: {"ids": ["12", "13"]}

A page reacts by re-fetching a fragment (api/static/dashboard.js). A stream whose
queue is full (a stalled browser) misses events and is told to reload everything
(event: resync). Every HEARTBEAT_S the stream sends a comment, and checks its session
is still live, so that a logout or a disabled user also ends open streams.

An event stream never finishes by itself, and uvicorn's graceful shutdown waits for
open responses: when uvicorn is asked to exit (its signal handler's ``should_exit``,
watched every SHUTDOWN_POLL_S by one task), every stream ends, and the browsers
reconnect to whichever process serves next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import psycopg
from starlette.requests import Request
from starlette.responses import StreamingResponse

log = logging.getLogger("pgwa.api.dashboard")

CHANNELS = ("pgwa_dashboard", "pgwa_notification")
HEARTBEAT_S = 15.0
QUEUE_SIZE = 256
RECONNECT_S = 1.0
SHUTDOWN_POLL_S = 0.5
CLOSE = ("close", {})


def _uvicorn_server() -> object | None:
    """The uvicorn Server whose signal handler is installed (it has ``should_exit``), if any."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        server = getattr(signal.getsignal(sig), "__self__", None)
        if hasattr(server, "should_exit"):
            return server
    return None


class EventHub:
    """The one listening connection of a process and the open streams, by tenant."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.streams: dict[int, set[asyncio.Queue]] = defaultdict(set)
        self.tasks: list[asyncio.Task] = []
        self.listening = asyncio.Event()
        self.closing = False

    async def start(self) -> None:
        self.tasks.append(asyncio.create_task(self._listen(), name="dashboard-listen"))
        server = _uvicorn_server()
        if server is not None:
            self.tasks.append(asyncio.create_task(self._close_on_exit(server), name="dashboard-exit"))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _close_on_exit(self, server: object) -> None:
        while not getattr(server, "should_exit", False):
            await asyncio.sleep(SHUTDOWN_POLL_S)
        self.closing = True
        for queues in self.streams.values():
            for queue in queues:
                self._put(queue, *CLOSE)

    @property
    def clients(self) -> int:
        return sum(len(s) for s in self.streams.values())

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.conninfo, autocommit=True, application_name="pgwa-api-events") as conn:
                    for channel in CHANNELS:
                        await conn.execute(f"LISTEN {channel}")   # constant names, not input
                    self.listening.set()
                    # Whatever happened while no one listened: every page refreshes.
                    self._broadcast("resync", {})
                    async for notify in conn.notifies():
                        self.dispatch(notify.channel, notify.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (the database is away: listen again)
                log.warning("dashboard listener lost its connection (%s); reconnecting", type(exc).__name__)
            self.listening.clear()
            await asyncio.sleep(RECONNECT_S)

    def dispatch(self, channel: str, payload: str) -> None:
        """Fans one notification out to the streams of the tenants it names."""
        if channel == "pgwa_notification":
            with contextlib.suppress(ValueError):
                self._send(int(payload), "notification", {})
            return
        kind, _, items = payload.partition(" ")
        by_tenant: dict[int, list[str]] = defaultdict(list)
        for item in items.split(","):
            tenant, _, ident = item.partition(":")
            if tenant.isdigit() and ident:
                by_tenant[int(tenant)].append(ident)
        for tenant_id, ids in by_tenant.items():
            self._send(tenant_id, kind, {"ids": ids})

    def _send(self, tenant_id: int, kind: str, data: dict) -> None:
        for queue in self.streams.get(tenant_id, ()):
            self._put(queue, kind, data)

    def _broadcast(self, kind: str, data: dict) -> None:
        for queues in self.streams.values():
            for queue in queues:
                self._put(queue, kind, data)

    @staticmethod
    def _put(queue: asyncio.Queue, kind: str, data: dict) -> None:
        try:
            queue.put_nowait((kind, data))
        except asyncio.QueueFull:
            # A stalled page: drop what waits, tell it to reload everything (or to close).
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(CLOSE if kind == "close" else ("resync", {}))

    @contextlib.contextmanager
    def subscribe(self, tenant_id: int):
        queue: asyncio.Queue = asyncio.Queue(QUEUE_SIZE)
        self.streams[tenant_id].add(queue)
        try:
            yield queue
        finally:
            self.streams[tenant_id].discard(queue)
            if not self.streams[tenant_id]:
                del self.streams[tenant_id]

    def response(self, request: Request, tenant_id: int, recheck: Callable[[], Awaitable[object]]) -> StreamingResponse:
        async def stream() -> AsyncIterator[bytes]:
            with self.subscribe(tenant_id) as queue:
                # "connected" promises that what happens from then on reaches the page, so
                # the process's LISTEN comes first (a listener that connects late broadcasts
                # a resync anyway; a database away for longer than a heartbeat is not waited for).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.listening.wait(), HEARTBEAT_S)
                yield b"retry: 2000\n: connected\n\n"
                while not self.closing:
                    try:
                        kind, data = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                    except TimeoutError:
                        try:
                            await recheck()
                        except psycopg.Error:
                            return     # the session ended (or the database is away): the page reconnects
                        yield b": ping\n\n"
                        continue
                    if kind == "close":
                        return
                    yield b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
