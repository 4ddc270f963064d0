"""The worker's PostgreSQL connections: calls that survive deadlocks and lost connections,
and a LISTEN connection that turns NOTIFY into an asyncio.Event.

Every call the worker makes is one statement in autocommit, so retrying it after a
deadlock (40P01), a serialization failure (40001) or a lost connection is safe: the
failed attempt left nothing behind, or (a claim whose answer was lost) its messages
come back when their visibility timeout ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from .loop import wait

log = logging.getLogger("worker.db")

# Admin or crash shutdown, or a server not yet accepting connections: reconnect.
LOST_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0


class Unavailable(Exception):
    """The call could not be made before its deadline (database unreachable)."""


def _backoff(attempt: int) -> float:
    return min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** attempt) * (0.5 + random.random() / 2)


class Database:
    """One autocommit connection, opened on first use and reopened after it is lost."""

    def __init__(self, url: str, name: str = "pgwa-worker") -> None:
        self.url = url
        self.name = name
        self._conn: psycopg.AsyncConnection | None = None

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, application_name=self.name)
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def fetch(self, query: str, params: Sequence[Any] | Mapping[str, Any] = (), *,
                    deadline: float | None = None, stop: asyncio.Event | None = None,
                    ) -> tuple[list[tuple], list[str]]:
        """Run one statement; returns (rows, column names).

        Retries on 40P01/40001 and on a lost connection (reconnecting with backoff)
        until ``deadline`` (loop time; None = forever, or until ``stop`` is set, in
        which case Unavailable is raised). Other database errors are raised.
        """
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:
                conn = await self._connection()
                cur = conn.cursor()
                await cur.execute(query, params)
                # The names from the result itself: cursor.description builds a Column
                # object per column on every call (4% of the sender's CPU, profiled).
                result = cur.pgresult
                if result is None or not result.nfields:
                    return [], []
                names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
                return await cur.fetchall(), names
            except (pgerrors.DeadlockDetected, pgerrors.SerializationFailure) as exc:
                reason = exc.sqlstate
            except psycopg.OperationalError as exc:
                if not self._lost(exc):
                    raise          # a real error (a timeout, say) on a healthy connection
                reason = "connection lost"
                await self._discard()
            except OSError:
                reason = "connection lost"
                await self._discard()
            delay = _backoff(attempt)
            attempt += 1
            if (deadline is not None and loop.time() + delay > deadline) or \
                    (stop is not None and stop.is_set()):
                raise Unavailable(f"{self.name}: gave up after {attempt} attempts ({reason})")
            if attempt in (1, 5) or attempt % 20 == 0:
                log.warning("%s: %s; retrying (attempt %d)", self.name, reason, attempt)
            await (asyncio.sleep(delay) if stop is None else wait(stop, None, delay))

    def _lost(self, exc: psycopg.OperationalError) -> bool:
        conn = self._conn
        return (conn is None or conn.closed or conn.broken or exc.sqlstate is None
                or exc.sqlstate.startswith("08") or exc.sqlstate in LOST_SQLSTATES)

    async def _discard(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):   # it is broken already
                await conn.close()


async def listen(url: str, channel: str, wake: asyncio.Event, stop: asyncio.Event,
                 name: str = "pgwa-worker-listen") -> None:
    """Set ``wake`` on every NOTIFY on ``channel`` until ``stop``; reconnects when lost.

    Waiting costs no queries: the connection only reads the socket. After a
    reconnect ``wake`` is set, since a notification may have been missed.
    """
    attempt = 0
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(
                    url, autocommit=True, application_name=name) as conn:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                if attempt:
                    log.info("listening on %s again", channel)
                    wake.set()
                attempt = 0
                while not stop.is_set():
                    async for _ in conn.notifies(timeout=1.0):
                        wake.set()
        except (psycopg.OperationalError, OSError) as exc:
            attempt += 1
            if attempt in (1, 5) or attempt % 20 == 0:
                log.warning("LISTEN %s lost (%s); reconnecting", channel, type(exc).__name__)
            await wait(stop, None, _backoff(attempt))
