"""``python -m worker``: the send loop, the webhook-processing loops, the LLM loop and the
media loop (worker/media.py: inbound media into the media store) until
SIGTERM/SIGINT, run together by worker.loop.run_tasks (one crashing stops the others).

Configuration comes from the environment once (pgwa.config.Settings): DATABASE_URL,
GRAPH_BASE_URL, PGWA_WORKER_NAME, PGWA_CLAIM_BATCH, PGWA_SEND_CONCURRENCY. On the
first SIGTERM/SIGINT every loop stops taking work, finishes and reports what it
holds, and the process exits 0; a second signal exits at once (1) — whatever was
not reported comes back to a worker when its visibility timeout ends.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys

from pgwa.config import Settings, settings_or_exit

from . import events as outbound_events
from . import llm, media, sender, webhooks
from .loop import Crashed, run_tasks

log = logging.getLogger("worker")

# The loops this process runs, each ``async run(settings, stop)``.
LOOPS = {"sender": sender.run, "webhooks": webhooks.run, "llm": llm.run, "media": media.run}
# Outbound events to the tenants' endpoints (worker/events.py).
LOOPS["events"] = outbound_events.run


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

    log.info("worker %s running: %s", settings.worker_name, ", ".join(LOOPS))
    try:
        await run_tasks({name: run(settings, stop) for name, run in LOOPS.items()}, stop=stop)
        failed = False
    except Crashed:
        failed = True
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
