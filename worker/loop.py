"""What the worker's loops share: how their tasks run together, how they wait, and how
they hand results to one reporting call.

::

    run_tasks(main, side, stop)   the one supervisor (after procrastinate's utils.run_tasks):
                                  main tasks run to their end (a loop returns once ``stop`` is
                                  set and what it holds is done); side tasks (a LISTEN
                                  connection, a status line) run beside them and are cancelled
                                  once every main task has returned. A task that raises, or a
                                  main one that returns before ``stop``, sets ``stop``: the others
                                  finish what they hold and return, then Crashed is raised.
    wait(stop, wake, timeout)     a loop's only sleep: until the timeout, its wake-up (a NOTIFY,
                                  a free slot) or ``stop``, whichever comes first.
    Results                       results added one at a time and reported in batches: at most
                                  one call per interval, and the rest at once when finished.
    report(db, sql, params, …)    one reporting call of a batch, retried until the database takes
                                  it (for a bounded time once stopping), or NotReported.

``python -m worker`` runs the send loop, the webhook loops and the LLM loop with
``run_tasks``, and each of them runs its own tasks with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:                       # worker/db.py imports wait from here
    from .db import Database

log = logging.getLogger("worker.loop")


class Crashed(Exception):
    """A task run by :func:`run_tasks` raised; it was logged, by name, where it happened."""


async def run_tasks(main: Mapping[str, Coroutine[Any, Any, Any]],
                    side: Mapping[str, Coroutine[Any, Any, Any]] | None = None, *,
                    stop: asyncio.Event) -> None:
    """Run the ``main`` coroutines to their end, the ``side`` ones beside them; each is a
    task named by its key. Raises Crashed when any of them raised (after all have ended)."""
    mains = {asyncio.create_task(coro, name=name) for name, coro in main.items()}
    sides = {asyncio.create_task(coro, name=name) for name, coro in (side or {}).items()}
    crashed: list[str] = []
    pending = mains | sides
    try:
        while pending & mains:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = None if task.cancelled() else task.exception()
                if exc is not None:
                    crashed.append(task.get_name())
                    if not isinstance(exc, Crashed):     # logged already, by the run_tasks below
                        log.error("%s crashed; stopping the others", task.get_name(),
                                  exc_info=(type(exc), exc, exc.__traceback__))
                    stop.set()
                elif task in mains and not stop.is_set():
                    log.warning("%s returned before stop; stopping the others", task.get_name())
                    stop.set()
    finally:
        # Normally only side tasks are left; all of them when this call itself is cancelled.
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    if crashed:
        raise Crashed(", ".join(crashed))


async def wait(stop: asyncio.Event, wake: asyncio.Event | None, timeout: float | None) -> None:
    """Sleep ``timeout`` seconds (None: no limit), or less if ``stop`` (or ``wake``) is set."""
    if (timeout is not None and timeout <= 0) or stop.is_set() or (wake is not None and wake.is_set()):
        return
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


class Results:
    """Results waiting for their reporting call: added one at a time, taken in batches."""

    __slots__ = ("items", "ready", "urgent")

    def __init__(self) -> None:
        self.items: list[dict] = []
        self.ready = asyncio.Event()
        self.urgent = asyncio.Event()

    def add(self, result: dict, urgent: bool = False) -> None:
        """``urgent``: report without waiting out the interval (an error the database
        must act on before more of the same go out)."""
        self.items.append(result)
        self.ready.set()
        if urgent:
            self.urgent.set()

    async def batches(self, every: float, finished: asyncio.Event) -> AsyncIterator[list[dict]]:
        """What was added, at most one batch per ``every`` seconds (results coalesce meanwhile);
        once ``finished`` is set, what is left at once, then the end. An urgent result
        cuts the wait short."""
        loop = asyncio.get_running_loop()
        last = -1e9
        while True:
            await wait(finished, self.ready, None)
            await wait(finished, self.urgent, last + every - loop.time())
            self.ready.clear()
            self.urgent.clear()
            batch, self.items = self.items, []
            if batch:
                last = loop.time()
                yield batch
            if finished.is_set() and not self.items:
                return


class NotReported(Exception):
    """The database did not take a batch of results (the reason is the message): the work
    they stand for comes back to a worker when its claim times out."""


async def report(db: Database, sql: str, params: Any, *, what: str, size: int, sent: asyncio.Event,
                 stop_report_s: float, describe: Callable[[BaseException], str],
                 logger: logging.Logger) -> tuple[list[tuple], list[str]]:
    """One reporting call (``what``, of ``size`` results) and its rows and column names.
    While the loop still sends, an unavailable database is waited for (until ``sent``);
    once everything is sent, for at most ``stop_report_s``. A database error is retried
    twice, half a second more each time. Raises NotReported when it gives up."""
    from .db import Unavailable  # here: worker/db.py imports this module

    loop = asyncio.get_running_loop()
    attempts = 0
    while True:
        deadline = loop.time() + stop_report_s if sent.is_set() else None
        try:
            return await db.fetch(sql, params, deadline=deadline, stop=None if deadline is not None else sent)
        except Unavailable:
            if deadline is not None:
                raise NotReported("database unavailable") from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (a broken function must not kill the loop)
            attempts += 1
            logger.error("%s failed (%d results): %s", what, size, describe(exc))
            if attempts >= 3:
                raise NotReported(f"{what} kept failing") from None
            await asyncio.sleep(0.5 * attempts)

