"""The webhook-processing loop: drain the webhooks queue through api.process_webhooks.

::

    LISTEN "pgmq.q_webhooks.INSERT" ──wake──>  drain: api.claim_webhooks(batch) (commits)
    (pgmq's insert trigger, throttled            then api.process_claimed_webhooks(ids),
     to one NOTIFY per 50 ms)                    until a short batch says the queue is empty
        ^                                             │
        └── wait: RECHECK_S after a busy drain, HEARTBEAT_S when idle, or a NOTIFY

All logic is in the SQL functions (one transaction per batch, set-based, idempotent);
this loop only decides when to call them. The claim commits on its own, so a batch
that crashes or outlives the connection's statement timeout still counts as an
attempt: it is then retried payload by payload under a short timeout
(PGWA_WEBHOOK_SINGLE_TIMEOUT_MS), so that the payloads beside a poison one are processed
at once, and the poison one is reported (api.fail_webhooks), retried after a back-off,
alone (the claim hands retried payloads back apart), and dead-lettered after
webhook_max_attempts reads. The insert trigger sends at most one
notification per throttle interval, so a payload committed just after one may arrive
silently: the short re-check after every busy drain picks it up, and the heartbeat
covers anything else (a lost LISTEN connection, a crash that emptied pgmq's throttle
table). Any number of these loops may run at once; pgmq.read's SKIP LOCKED keeps their
batches apart. Deadlocks and lost connections are retried by worker.db.Database.

A batch is sized to its time, not only its count: payloads carry 1 to 1,000 updates
(Meta, and the simulator, put more in each POST when the receiver falls behind), and a
machine short of CPU runs everything slower. A batch that took more than BATCH_SHARE of
the statement timeout halves the next claim, one that timed out quarters it, and quick
full batches double it back up to ``batch``: otherwise a burst of big payloads makes
healthy batches time out, and their one-by-one retries under the short timeout time out
too and back off for seconds, which is how inbound latency went from milliseconds to
tens of seconds under load (bench/bench_bots.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg

from pgwa.config import Settings

from .db import Database, Unavailable, listen
from .loop import run_tasks, wait

log = logging.getLogger("worker.webhooks")

CHANNEL = "pgmq.q_webhooks.INSERT"
BATCH = 200              # payloads per transaction (each may carry up to 1,000 updates)
RECHECK_S = 0.1          # after a busy drain: two insert-notification throttle intervals
HEARTBEAT_S = 10.0       # idle: process anyway this often, even without a NOTIFY
ERROR_BACKOFF_S = 1.0    # after an unexpected error, before trying again
THROUGHPUT_LOG_S = 60.0

CLAIM_SQL = "SELECT fresh, retried FROM api.claim_webhooks(%s)"
TIMEOUT_SQL = "SELECT set_config('statement_timeout', %s, false)"
PROCESS_SQL = ("SELECT payloads, status_events, messages, dead, dropped "
               "FROM api.process_claimed_webhooks(%s)")
FAIL_SQL = "SELECT api.fail_webhooks(%s, %s, %s)"
EXTEND_SQL = "SELECT api.extend_webhook_claims(%s)"
EXTEND_EVERY_S = 10.0    # well inside webhook_claim_s (30 s by default)
BATCH_SHARE = 0.25       # a batch should take at most this share of the statement timeout


class WebhookProcessor:
    """One loop claiming and processing webhook payloads; ``await run(stop)`` until ``stop``."""

    def __init__(self, settings: Settings, *, batch: int = BATCH, recheck_s: float = RECHECK_S,
                 heartbeat_s: float = HEARTBEAT_S, index: int = 0) -> None:
        self.settings = settings
        self.batch = batch
        self.limit = batch       # the next claim's size (see BATCH_SHARE)
        self.recheck_s = recheck_s
        self.heartbeat_s = heartbeat_s
        self.name = f"{settings.worker_name}-webhooks-{index}"
        self.db = Database(settings.session_url(statement_timeout_ms=settings.webhook_timeout_ms), name=self.name)
        self.claimed = batch     # the last claim's size
        self.totals = {"batches": 0, "payloads": 0, "status_events": 0, "messages": 0, "dead": 0,
                       "dropped": 0, "failed": 0}

    async def process_once(self, stop: asyncio.Event | None = None) -> tuple[int, int, int, int]:
        """One batch: (payloads, status_events, messages, dead)."""
        self.claimed = limit = self.limit
        fresh, retried = (await self.db.fetch(CLAIM_SQL, (limit,), stop=stop))[0][0]
        if not fresh and not retried:
            return 0, 0, 0, 0
        counts = [len(fresh) + len(retried), 0, 0, 0, 0]
        singles = list(retried)
        if fresh:
            started = time.monotonic()
            try:
                self._add(counts, await self._process(fresh, stop))
                self._resize(time.monotonic() - started, len(fresh) + len(retried) >= limit)
            except psycopg.Error as exc:
                # The batch's transaction failed as a whole (a statement timeout, a crash
                # of its backend): the database could not isolate the culprit; do it here.
                log.warning("a batch of %d webhook payloads failed (%s); retrying one by one",
                            len(fresh), exc.sqlstate or type(exc).__name__)
                if exc.sqlstate == "57014":
                    self.limit = max(1, len(fresh) // 4)
                singles = list(fresh) + singles
        if singles:
            await self._one_by_one(singles, counts, stop)
        t = self.totals
        t["batches"] += 1
        for key, n in zip(("payloads", "status_events", "messages", "dead", "dropped"), counts):
            t[key] += n
        if counts[3]:
            log.warning("%d webhook payload(s) moved to webhooks_dead", counts[3])
        if counts[4]:
            log.warning("%d webhook change(s) dropped: signed by an app that does not hold "
                        "the number they name", counts[4])
        return tuple(counts[:4])

    def _resize(self, elapsed_s: float, full: bool) -> None:
        """The next claim's size from this batch's time (BATCH_SHARE)."""
        budget = self.settings.webhook_timeout_ms / 1000 * BATCH_SHARE
        if budget <= 0:
            return
        if elapsed_s > budget:
            self.limit = max(1, self.limit // 2)
        elif full and elapsed_s < budget / 4 and self.limit < self.batch:
            self.limit = min(self.batch, self.limit * 2)

    async def _one_by_one(self, ids: list[int], counts: list[int], stop: asyncio.Event | None) -> None:
        """Each payload alone, under the short single-payload timeout: those that fail
        are reported to api.fail_webhooks (back-off, then dead-lettered)."""
        failed: list[int] = []
        exc: psycopg.Error | None = None
        loop = asyncio.get_running_loop()
        extended_at = loop.time()       # the claim was made moments ago
        await self.db.fetch(TIMEOUT_SQL, (str(self.settings.webhook_single_timeout_ms),), stop=stop)
        try:
            for i, msg_id in enumerate(ids):
                if loop.time() - extended_at >= EXTEND_EVERY_S and len(ids) - i > 1:
                    # Many slow payloads in a row must not outlive the claim of the rest.
                    await self.db.fetch(EXTEND_SQL, (ids[i:],), stop=stop)
                    extended_at = loop.time()
                try:
                    self._add(counts, await self._process([msg_id], stop))
                except psycopg.Error as one:
                    failed.append(msg_id)
                    exc = one
        finally:
            await self.db.fetch(TIMEOUT_SQL, (str(self.settings.webhook_timeout_ms),), stop=stop)
        if failed and exc is not None:
            reason = f"{type(exc).__name__}: {exc}"[:1000]
            counts[3] += (await self.db.fetch(FAIL_SQL, (failed, exc.sqlstate or "XX000", reason),
                                              stop=stop))[0][0][0]
            self.totals["failed"] += len(failed)

    async def _process(self, ids: list[int], stop: asyncio.Event | None) -> tuple:
        rows, _ = await self.db.fetch(PROCESS_SQL, (ids,), stop=stop)
        _, status_events, messages, dead, dropped = rows[0]
        return 0, status_events, messages, dead, dropped

    @staticmethod
    def _add(counts: list[int], more: tuple) -> None:
        for i, n in enumerate(more):
            counts[i] += n or 0

    async def drain(self, stop: asyncio.Event) -> int:
        """Process batches until one comes back short; returns the payloads processed."""
        done = 0
        while not stop.is_set():
            payloads = (await self.process_once(stop))[0]
            done += payloads
            if payloads < self.claimed:
                break
        return done

    async def run(self, stop: asyncio.Event) -> None:
        wake = asyncio.Event()
        try:
            await run_tasks({self.name: self._loop(stop, wake)},
                            {f"{self.name}-listen": listen(self.settings.database_url, CHANNEL, wake, stop)},
                            stop=stop)
        finally:
            await self.db.close()

    async def _loop(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        logged_at, logged = time.monotonic(), dict(self.totals)
        while not stop.is_set():
            wake.clear()
            try:
                busy = await self.drain(stop) > 0
            except Unavailable:
                break                   # stop was set while the database was away
            except Exception:
                log.exception("processing webhooks failed; retrying in %.0f s", ERROR_BACKOFF_S)
                await wait(stop, None, ERROR_BACKOFF_S)
                continue
            await wait(stop, wake, self.recheck_s if busy else self.heartbeat_s)
            if time.monotonic() - logged_at >= THROUGHPUT_LOG_S:
                logged_at, logged = time.monotonic(), self._log_throughput(logged)

    def _log_throughput(self, before: dict) -> dict:
        now = dict(self.totals)
        if now["payloads"] != before["payloads"]:
            log.info("webhooks in the last minute: %d payloads, %d status events, %d messages, "
                     "%d dead", *(now[k] - before[k]
                                  for k in ("payloads", "status_events", "messages", "dead")))
        return now


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """The webhook-processing loops of ``python -m worker`` (PGWA_WEBHOOK_LOOPS of them),
    until ``stop`` is set. More than one, so that a batch held up by a slow payload (up
    to the statement timeout, twice) never holds up the payloads that arrive meanwhile."""
    processors = [WebhookProcessor(settings, index=i) for i in range(settings.webhook_loops)]
    await run_tasks({p.name: p.run(stop) for p in processors}, stop=stop)
