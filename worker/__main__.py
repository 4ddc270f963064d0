"""``python -m worker``: the send loop (and the webhook-processing loop) until SIGTERM/SIGINT.

Configuration comes from the environment once (pgwa.config.Settings): DATABASE_URL,
GRAPH_BASE_URL, PGWA_WORKER_NAME, PGWA_CLAIM_BATCH, PGWA_SEND_CONCURRENCY. On the
first SIGTERM/SIGINT every loop stops taking work, finishes and reports what it
holds, and the process exits 0; a second signal exits at once (1) — whatever was
not reported comes back to a worker when its visibility timeout ends.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import logging
import os
import signal
import sys

from pgwa.config import Settings, settings_or_exit

from . import sender

log = logging.getLogger("worker")


def _loops() -> list:
    """The loops this process runs: each ``async run(settings, stop)``."""
    loops = [sender.run]
    # --- the lead wires further loops here ----------------------------------------------
    # worker.webhooks (issue 4, written separately): `async run(settings, stop)`; started
    # when the module exists, so the two land independently.
    if importlib.util.find_spec("worker.webhooks") is not None:
        from . import webhooks
        if asyncio.iscoroutinefunction(getattr(webhooks, "run", None)):
            loops.append(webhooks.run)
    # worker.llm (issue 6): LLM replies to what no bot rule matched (api.claim_llm_jobs).
    from . import llm
    loops.append(llm.run)
    # -------------------------------------------------------------------------------------
    return loops


async def main(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting without finishing", signal.Signals(signum).name)
            os._exit(1)
        log.info("%s: finishing in-flight work", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    tasks = {asyncio.create_task(run(settings, stop), name=f"{run.__module__}.run")
             for run in _loops()}
    log.info("worker %s running: %s", settings.worker_name,
             ", ".join(sorted(t.get_name() for t in tasks)))
    failed = False
    pending = tasks
    while pending:
        finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in finished:
            exc = task.exception()
            if exc is not None:
                failed = True
                log.error("%s crashed; stopping the others", task.get_name(),
                          exc_info=(type(exc), exc, exc.__traceback__))
            elif not stop.is_set():
                log.warning("%s returned before stop; stopping the others", task.get_name())
            stop.set()
    log.info("worker %s stopped", settings.worker_name)
    return 1 if failed else 0


def cli() -> int:
    settings = settings_or_exit("worker")
    logging.basicConfig(level=(settings.log_level or "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Thousands of short-lived objects a second: collect the young generation less often,
    # and keep the startup heap out of full collections (fewer, shorter loop stalls).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    loop_factory = None
    if settings.uvloop:
        try:  # installed with uvicorn[standard]; psycopg and aiohttp both run on it
            import uvloop
            loop_factory = uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main(settings))


if __name__ == "__main__":
    sys.exit(cli())
