"""The webhook-processing loop: drain the webhooks queue through api.process_webhooks.

::

    LISTEN "pgmq.q_webhooks.INSERT" ──wake──>  drain: api.process_webhooks(batch) until a
    (pgmq's insert trigger, throttled          short batch says the queue is empty
     to one NOTIFY per 50 ms)                         │
        ^                                             v
        └── wait: RECHECK_S after a busy drain, HEARTBEAT_S when idle, or a NOTIFY

All logic is in the SQL function (one transaction per batch, set-based, idempotent);
this loop only decides when to call it. The insert trigger sends at most one
notification per throttle interval, so a payload committed just after one may arrive
silently: the short re-check after every busy drain picks it up, and the heartbeat
covers anything else (a lost LISTEN connection, a crash that emptied pgmq's throttle
table). Any number of these loops may run at once; pgmq.read's SKIP LOCKED keeps their
batches apart. Deadlocks and lost connections are retried by worker.db.Database.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pgwa.config import Settings

from .db import Database, Unavailable, listen

log = logging.getLogger("worker.webhooks")

CHANNEL = "pgmq.q_webhooks.INSERT"
BATCH = 200              # payloads per transaction (each may carry up to 1,000 updates)
RECHECK_S = 0.1          # after a busy drain: two insert-notification throttle intervals
HEARTBEAT_S = 10.0       # idle: process anyway this often, even without a NOTIFY
ERROR_BACKOFF_S = 1.0    # after an unexpected error, before trying again
THROUGHPUT_LOG_S = 60.0

PROCESS_SQL = "SELECT payloads, status_events, messages, dead FROM api.process_webhooks(%s)"


class WebhookProcessor:
    """One loop calling api.process_webhooks; ``await run(stop)`` until ``stop`` is set."""

    def __init__(self, settings: Settings, *, batch: int = BATCH, recheck_s: float = RECHECK_S,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.settings = settings
        self.batch = batch
        self.recheck_s = recheck_s
        self.heartbeat_s = heartbeat_s
        self.db = Database(settings.database_url, name=f"{settings.worker_name}-webhooks")
        self.totals = {"batches": 0, "payloads": 0, "status_events": 0, "messages": 0, "dead": 0}

    async def process_once(self, stop: asyncio.Event | None = None) -> tuple[int, int, int, int]:
        """One batch: (payloads, status_events, messages, dead)."""
        rows, _ = await self.db.fetch(PROCESS_SQL, (self.batch,), stop=stop)
        payloads, status_events, messages, dead = rows[0]
        if payloads:
            t = self.totals
            t["batches"] += 1
            t["payloads"] += payloads
            t["status_events"] += status_events
            t["messages"] += messages
            t["dead"] += dead
            if dead:
                log.warning("%d webhook payload(s) moved to webhooks_dead", dead)
        return payloads, status_events, messages, dead

    async def drain(self, stop: asyncio.Event) -> int:
        """Process batches until one comes back short; returns the payloads processed."""
        done = 0
        while not stop.is_set():
            payloads = (await self.process_once(stop))[0]
            done += payloads
            if payloads < self.batch:
                break
        return done

    async def run(self, stop: asyncio.Event) -> None:
        wake = asyncio.Event()
        listener = asyncio.create_task(listen(self.settings.database_url, CHANNEL, wake, stop),
                                       name="webhooks-listen")
        stopping = asyncio.create_task(stop.wait(), name="webhooks-stop")
        logged_at, logged = time.monotonic(), dict(self.totals)
        try:
            while not stop.is_set():
                wake.clear()
                try:
                    busy = await self.drain(stop) > 0
                except Unavailable:
                    break                   # stop was set while the database was away
                except Exception:
                    log.exception("processing webhooks failed; retrying in %.0f s", ERROR_BACKOFF_S)
                    busy = False
                    await _wait(stopping, None, ERROR_BACKOFF_S)
                    continue
                await _wait(stopping, wake, self.recheck_s if busy else self.heartbeat_s)
                if time.monotonic() - logged_at >= THROUGHPUT_LOG_S:
                    logged_at, logged = time.monotonic(), self._log_throughput(logged)
        finally:
            stopping.cancel()
            listener.cancel()
            await asyncio.gather(listener, stopping, return_exceptions=True)
            await self.db.close()

    def _log_throughput(self, before: dict) -> dict:
        now = dict(self.totals)
        if now["payloads"] != before["payloads"]:
            log.info("webhooks in the last minute: %d payloads, %d status events, %d messages, "
                     "%d dead", *(now[k] - before[k]
                                  for k in ("payloads", "status_events", "messages", "dead")))
        return now


async def _wait(stopping: asyncio.Task, wake: asyncio.Event | None, timeout: float) -> None:
    """Until ``wake`` is set, ``stopping`` completes, or ``timeout`` seconds pass."""
    waiter = asyncio.create_task(wake.wait()) if wake is not None else None
    try:
        await asyncio.wait([t for t in (stopping, waiter) if t is not None], timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        if waiter is not None:
            waiter.cancel()


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """The webhook-processing loop of ``python -m worker``, until ``stop`` is set."""
    await WebhookProcessor(settings).run(stop)
