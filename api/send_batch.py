"""Group commit for POST /v1/messages: the requests that arrive together share one transaction.

A send commits synchronously, and a commit is one WAL flush: one request, one flush, is
what held the send API to a few hundred requests a second. The route parses and checks
its request as before, then hands it to the process's ``SendBatcher`` and awaits its own
answer. The batcher takes everything that arrived while the batches before were in the
database (at most MAX_BATCH; at most MAX_IN_FLIGHT batches at once, so that one runs
while another waits for its commit) and runs it as two statements:

* ``api.authenticate_many``: every request's key, authenticated and counted on its own
  as ``api.authenticate`` does it (an asynchronous commit, as the read routes', since the
  count is advisory state), so a send that then fails still counts toward the key's
  limit; the tenant of each request comes from its own key only;
* ``api.send_messages``: the authenticated requests, one transaction, one commit; each
  item answers its message or the error it alone raised.

A batcher with a free place starts a batch the moment a request arrives: a lone request
waits for nothing (BatchStats.waited counts those that did). Each answer is the response the request had before batching: a message, or a
psycopg error built from the item's SQLSTATE, message, DETAIL and HINT that the JSON
API's one handler (api/errors.py) renders as it renders any. A batch whose statement
fails as a whole (a deadlock, say) is sent again one request at a time, so that only the
request that caused it gets the error. After the commit the senders of the numbers that
got new messages are woken, each at most once every WAKE_EVERY_S.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg.pq import DiagnosticField
from psycopg_pool import AsyncConnectionPool, PoolTimeout

log = logging.getLogger("pgwa.api")

# Enough to cover a commit's wait at a thousand requests a second many times over; small
# enough that one batch's statement stays in the tens of milliseconds.
MAX_BATCH = 200
# Batches in the database at once: while one waits for its commit's WAL flush (milliseconds
# when the disk is busy) the next runs its statement. Two batches lock idempotency keys,
# contacts and conversations each in one sorted order, so they never wait in a cycle.
MAX_IN_FLIGHT = 2
# Each request authenticated and counted in this transaction, which does not wait for the
# WAL flush (api/routes.py says why: the count is advisory state, and its row lock is
# held only until this commit).
AUTHENTICATE_MANY = """SELECT a.item, a.tenant_id, a.sqlstate, a.message, a.detail, a.hint
FROM set_config('synchronous_commit', 'off', true) s, api.authenticate_many(%(keys)s::bytea[], %(scope)s::text) a"""
# p_wake false, then WAKE_SENDERS once committed: a NOTIFY inside the send would hold
# PostgreSQL's cluster-wide notify lock through the commit's WAL flush (db/functions/messages.sql).
SEND_MESSAGES = """SELECT r.item, row_to_json(r.sent)::text, (r.sent).replayed, r.sqlstate, r.message, r.detail, r.hint
FROM api.send_messages(%(items)s::jsonb, p_wake => false) r"""
WAKE_SENDERS = "SELECT pg_notify('pgwa_send', n::text) FROM unnest(%(numbers)s::bigint[]) n"
# A worker that claimed work keeps claiming every pace interval for a second after
# (worker/sender.py, IDLE_AFTER_S): one wake per number this often is enough.
WAKE_EVERY_S = 0.05


@dataclass
class SendRequest:
    """One POST /v1/messages, checked: its key's hash and what api.send_messages takes."""
    key: bytes
    number_id: int
    to: str
    message: dict[str, Any]
    idempotency_key: str | None


@dataclass
class BatchStats:
    """What the batcher did: tests read it (a lone request never waited) and so may /metrics."""
    batches: int = 0
    items: int = 0
    largest: int = 0
    waited: int = 0        # requests that arrived while a batch was in the database
    retried: int = 0       # batches whose statement failed whole and went again one by one


def item_error(sqlstate: str, message: str | None, detail: str | None = None,
               hint: str | None = None) -> psycopg.Error:
    """The error one item of a batch raised, as psycopg would have raised it alone."""
    try:
        cls = psycopg.errors.lookup(sqlstate)
    except KeyError:
        cls = psycopg.errors.get_base_exception(sqlstate)
    info = {DiagnosticField.SQLSTATE: sqlstate.encode(), DiagnosticField.SEVERITY: b"ERROR",
            DiagnosticField.MESSAGE_PRIMARY: (message or "").encode()}
    if detail is not None:
        info[DiagnosticField.MESSAGE_DETAIL] = detail.encode()
    if hint is not None:
        info[DiagnosticField.MESSAGE_HINT] = hint.encode()
    return cls(message or sqlstate, info=info)


@dataclass
class _Pending:
    request: SendRequest
    future: asyncio.Future
    message: orjson.Fragment            # the request's message, serialised on its own
    tenant_id: int | None = None
    done: bool = field(default=False)

    def answer(self, result: tuple[str, bool] | None = None, error: BaseException | None = None) -> None:
        self.done = True
        if self.future.done():             # the client went away
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


def _serialised(request: SendRequest) -> orjson.Fragment:
    """The request's message as JSON, or its own PW100: what cannot be written as JSON, or
    carries a NUL (which PostgreSQL's jsonb refuses), must fail this request alone, not the
    batch's one statement (which every request beside it shares)."""
    try:
        message = orjson.dumps(request.message)
    except orjson.JSONEncodeError as exc:
        raise item_error("PW100", f"message cannot be written as JSON: {str(exc)[:80]}",
                         hint="A JSON object nested at most 200 levels deep.") from None
    if b"\\u0000" in message or "\x00" in request.to or "\x00" in (request.idempotency_key or ""):
        raise item_error("PW100", "message, to and Idempotency-Key must not contain the NUL character (\\u0000)",
                         hint="Remove the NUL characters.")
    return orjson.Fragment(message)


class _Slot:
    """A batch's place among the batcher's MAX_IN_FLIGHT, given back once (its statement
    answered, or the batch ended), waking the batcher for what waits."""

    def __init__(self, batcher: SendBatcher, keys: set[tuple[bytes, str]]) -> None:
        self.batcher: SendBatcher | None = batcher
        self.keys = keys

    def release(self) -> None:
        if self.batcher is not None:
            self.batcher._in_flight -= 1
            self.batcher._keys_in_flight -= self.keys
            self.batcher._arrived.set()
            self.batcher = None


class SendBatcher:
    """The process's group commit for the send API (see the module's docstring)."""

    def __init__(self, pool: AsyncConnectionPool, scope: str, *, max_batch: int = MAX_BATCH,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.pool = pool
        self.scope = scope                    # what every request's key must hold (api/routes.py ROUTE_SCOPES)
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.stats = BatchStats()
        self._pending: list[_Pending] = []
        self._in_flight = 0                   # batches in the database
        self._keys_in_flight: set[tuple[bytes, str]] = set()   # their idempotency keys
        self._woken: dict[int, float] = {}    # number_id -> when its sender was last woken
        self._loop: asyncio.AbstractEventLoop | None = None
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()   # batches and wake-ups under way

    async def send(self, request: SendRequest) -> tuple[str, bool]:
        """The request's message as JSON text and whether it was replayed; raises its error."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            # First use, or a new event loop (a test client's): a task of this loop.
            self._loop, self._arrived, self._in_flight = loop, asyncio.Event(), 0
            self._keys_in_flight = set()
            self._task = loop.create_task(self._run(), name="send-batcher")
        pending = _Pending(request, loop.create_future(), _serialised(request))
        if self._in_flight >= self.max_in_flight:
            self.stats.waited += 1
        self._pending.append(pending)
        self._arrived.set()
        return await pending.future

    async def stop(self) -> None:
        if self._loop is asyncio.get_running_loop():
            for task in [*self._tasks, *([self._task] if self._task else [])]:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._task = None
        self._tasks.clear()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        arrived = self._arrived
        while True:
            await arrived.wait()
            arrived.clear()
            while self._pending and self._in_flight < self.max_in_flight:
                # A retry whose idempotency key is in a batch still in the database waits for
                # the next batch here, rather than holding up a whole batch on the key's lock.
                batch, later = [], []
                for p in self._pending:
                    key = p.request.idempotency_key and (p.request.key, p.request.idempotency_key)
                    (batch if len(batch) < self.max_batch and key not in self._keys_in_flight else later).append(p)
                if not batch:
                    break
                self._pending = later
                keys = {(p.request.key, p.request.idempotency_key) for p in batch if p.request.idempotency_key}
                self._keys_in_flight |= keys
                self._in_flight += 1
                self._spawn(self._batch(batch, _Slot(self, keys)), "send-batch")

    async def _batch(self, batch: list[_Pending], slot: _Slot) -> None:
        try:
            await self._send(batch, slot)
        except Exception as exc:      # noqa: BLE001 — every request gets an answer
            for p in batch:
                if not p.done:
                    p.answer(error=exc)
        finally:
            slot.release()

    async def _send(self, batch: list[_Pending], slot: _Slot) -> None:
        self.stats.batches += 1
        self.stats.items += len(batch)
        self.stats.largest = max(self.stats.largest, len(batch))
        async with self.pool.connection() as conn:
            keys = await (await conn.execute(AUTHENTICATE_MANY, {
                "keys": [p.request.key for p in batch], "scope": self.scope})).fetchall()
            allowed = []
            for item, tenant_id, sqlstate, message, detail, hint in keys:
                p = batch[item - 1]
                if sqlstate is not None:
                    p.answer(error=item_error(sqlstate, message, detail, hint))
                else:
                    p.tenant_id = tenant_id
                    allowed.append(p)
            if not allowed:
                return
            try:
                sent = await self._statement(conn, allowed, slot)
            except psycopg.Error:
                if len(allowed) == 1 or conn.broken:
                    raise
                # One request made the whole statement fail: each on its own, its error its own.
                self.stats.retried += 1
                sent = []
                for n, p in enumerate(allowed, 1):
                    try:
                        sent += await self._statement(conn, [p], slot if n == len(allowed) else None)
                    except psycopg.Error as exc:
                        p.answer(error=exc)
                        if conn.broken:
                            raise
        self._wake(sent)

    async def _statement(self, conn: psycopg.AsyncConnection, batch: list[_Pending],
                         slot: _Slot | None) -> list[int]:
        """api.send_messages for ``batch``, each answered (``slot`` released first: what arrives
        from then on may start the next batch at once); the numbers that got new messages."""
        items = orjson.dumps([{"tenant_id": p.tenant_id, "number_id": p.request.number_id, "to": p.request.to,
                               "message": p.message, "idempotency_key": p.request.idempotency_key}
                              for p in batch]).decode()
        rows = await (await conn.execute(SEND_MESSAGES, {"items": items})).fetchall()
        if slot is not None:
            slot.release()
        numbers = []
        for item, result, replayed, sqlstate, message, detail, hint in rows:
            p = batch[item - 1]
            if sqlstate is not None:
                p.answer(error=item_error(sqlstate, message, detail, hint))
            else:
                p.answer((result, bool(replayed)))
                if not replayed:
                    numbers.append(p.request.number_id)
        return numbers

    def _wake(self, numbers: list[int]) -> None:
        """Wake the senders of ``numbers`` (those not woken within WAKE_EVERY_S), beside the
        next batch rather than ahead of it."""
        now = time.monotonic()
        due = sorted({n for n in numbers if now - self._woken.get(n, 0.0) >= WAKE_EVERY_S})
        if not due:
            return
        for n in due:
            self._woken[n] = now
        self._spawn(self._notify(due), "send-batcher-wake")

    async def _notify(self, numbers: list[int]) -> None:
        try:
            async with self.pool.connection() as conn:
                await conn.execute(WAKE_SENDERS, {"numbers": numbers})
        except (psycopg.Error, PoolTimeout):     # the messages are queued: the sender's heartbeat finds them
            log.warning("waking the senders of numbers %s failed", numbers)
