"""worker/webhooks.py: woken by pgmq's insert notification, never polling in a hot loop.

No test here races the clock: each waits for the state it needs (the loop listening and
idle, a payload claimed) and gives the timers it does not test an hour, so that only the
path under test can make the change it waits for (up to a generous timeout).
"""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from pgwa.config import Settings
from tests.test_webhooks_payloads import World, build_world, status, statuses_payload
from worker.webhooks import WebhookProcessor


@pytest.fixture
def world(db: psycopg.Connection) -> World:
    return build_world(db)


HOUR = 3600.0
WAIT_S = 30.0           # for a change that takes milliseconds when all is well

# The loop is idle: its LISTEN is in place and its last claim came back empty (the queue
# was empty), so it now waits for a NOTIFY, a recheck or its heartbeat.
IDLE = """
SELECT count(*) FILTER (WHERE application_name = 'pgwa-worker-listen' AND query LIKE 'LISTEN%%') = 1
   AND count(*) FILTER (WHERE application_name = 'worker-webhooks-0' AND state = 'idle'
                          AND query LIKE '%%claim_webhooks%%') = 1
   AND NOT EXISTS (SELECT 1 FROM pgmq.q_webhooks)
FROM pg_stat_activity WHERE datname = current_database()
"""


async def _until(predicate, timeout: float = WAIT_S) -> None:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.01)


def _state(world: World, outbound_id: int) -> str:
    return world.one("SELECT state FROM core.outbound_messages WHERE outbound_id = %s",
                     outbound_id)[0]


def _idle(world: World) -> bool:
    return world.one(IDLE)[0]


async def _start(world: World, db_url: str, settings: dict | None = None,
                 **kw) -> tuple[WebhookProcessor, asyncio.Event, asyncio.Task]:
    """A processor on an empty queue, once it is idle: what it does next, a NOTIFY, a
    recheck or its heartbeat made it do."""
    processor = WebhookProcessor(Settings(database_url=db_url, **(settings or {})), **kw)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    await _until(lambda: _idle(world))
    return processor, stop, task


def test_the_insert_notification_wakes_the_worker(world: World, db_url: str) -> None:
    async def scenario() -> None:
        # Idle, with an hour to its heartbeat: only the NOTIFY can wake it within WAIT_S.
        processor, stop, task = await _start(world, db_url, heartbeat_s=HOUR)
        a, wa = world.outbound()
        world.ingest(statuses_payload(status(wa, "delivered")))
        await _until(lambda: _state(world, a) == "delivered")
        stop.set()
        await asyncio.wait_for(task, WAIT_S)
        assert processor.totals["payloads"] == 1 and processor.totals["status_events"] == 1

    asyncio.run(scenario())


def test_a_notification_swallowed_by_the_throttle_is_caught_by_the_recheck(world: World,
                                                                          db_url: str) -> None:
    # One notification an hour: the first payload's; the second's is swallowed for certain.
    world.db.execute("SELECT pgmq.update_notify_insert('webhooks', 3600000)")
    notified_at = "SELECT last_notified_at FROM pgmq.notify_insert_throttle WHERE queue_name = 'webhooks'"

    async def scenario() -> None:
        # No heartbeat and no statement timeout within the test: only the recheck after
        # the first payload's batch can find the second.
        processor, stop, task = await _start(world, db_url, {"webhook_timeout_ms": 600_000},
                                             heartbeat_s=HOUR, recheck_s=0.5)
        a, wa = world.outbound()
        b, wb = world.outbound()
        # The second payload must arrive while the first one's batch is being processed
        # (after its claim, before the recheck's timer starts): the test holds a's row,
        # so that batch waits for the test, not the test for a moment in time.
        with psycopg.connect(db_url) as holder:
            holder.execute("SELECT 1 FROM core.outbound_messages WHERE outbound_id = %s FOR UPDATE", (a,))
            [first] = world.ingest(statuses_payload(status(wa, "sent")))
            once = world.one(notified_at)[0]
            await _until(lambda: world.one("SELECT read_ct FROM pgmq.q_webhooks WHERE msg_id = %s",
                                           first)[0] > 0)                # claimed, now waiting
            world.ingest(statuses_payload(status(wb, "delivered")))
            assert world.one(notified_at)[0] == once                     # no NOTIFY for this one
            assert _state(world, a) == "accepted"
        await _until(lambda: _state(world, a) == "sent")
        await _until(lambda: _state(world, b) == "delivered")
        stop.set()
        await asyncio.wait_for(task, WAIT_S)
        # Counted once the loop has stopped: a batch's commit is visible here before the
        # worker's coroutine resumes to count it.
        assert processor.totals["batches"] == 2                          # the second one alone

    asyncio.run(scenario())


def test_the_heartbeat_processes_without_any_notification(world: World, db_url: str) -> None:
    world.db.execute("SELECT pgmq.disable_notify_insert('webhooks')")

    async def scenario() -> None:
        # Idle on an empty queue and no NOTIFY to come: only the heartbeat can find it.
        _, stop, task = await _start(world, db_url, heartbeat_s=0.5)
        a, wa = world.outbound()
        world.ingest(statuses_payload(status(wa, "read")))
        await _until(lambda: _state(world, a) == "read")
        stop.set()
        await asyncio.wait_for(task, WAIT_S)

    asyncio.run(scenario())


def test_the_worker_drains_a_backlog_in_batches_and_stops_promptly(world: World,
                                                                   db_url: str) -> None:
    msgs = [world.outbound() for _ in range(120)]
    world.ingest(*[statuses_payload(status(w, "delivered")) for _, w in msgs])

    async def scenario() -> None:
        # _start returns once the loop is idle: the backlog drained and the queue empty.
        processor, stop, task = await _start(world, db_url, batch=25, heartbeat_s=HOUR)
        assert processor.totals["batches"] >= 5
        # Stopped in the middle of its wait for the next heartbeat, an hour away: it returns
        # at once, not when the hour is up.
        stop.set()
        await asyncio.wait_for(task, WAIT_S)

    asyncio.run(scenario())
    assert world.campaign_counters()["delivered"] == 120


def test_the_worker_carries_on_after_losing_its_connections(world: World, db_url: str) -> None:
    async def scenario() -> None:
        _, stop, task = await _start(world, db_url, heartbeat_s=0.5)
        world.db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        a, wa = world.outbound()
        world.ingest(statuses_payload(status(wa, "sent")))
        await _until(lambda: _state(world, a) == "sent")
        stop.set()
        await asyncio.wait_for(task, WAIT_S)

    asyncio.run(scenario())
