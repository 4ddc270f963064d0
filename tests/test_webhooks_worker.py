"""worker/webhooks.py: woken by pgmq's insert notification, never polling in a hot loop."""

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


async def _until(predicate, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def _state(world: World, outbound_id: int) -> str:
    return world.one("SELECT state FROM core.outbound_messages WHERE outbound_id = %s",
                     outbound_id)[0]


async def _start(db_url: str, **kw) -> tuple[WebhookProcessor, asyncio.Event, asyncio.Task]:
    processor = WebhookProcessor(Settings(database_url=db_url), **kw)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    await asyncio.sleep(0.3)            # LISTEN is in place and the first (empty) drain done
    return processor, stop, task


def test_the_insert_notification_wakes_the_worker(world: World, db_url: str) -> None:
    async def scenario() -> None:
        processor, stop, task = await _start(db_url, heartbeat_s=60)
        a, wa = world.outbound()
        world.ingest(statuses_payload(status(wa, "delivered")))
        took = await _until(lambda: _state(world, a) == "delivered", 2.0)
        assert took < 1.0
        stop.set()
        await asyncio.wait_for(task, 5)
        assert processor.totals["payloads"] == 1 and processor.totals["status_events"] == 1

    asyncio.run(scenario())


def test_a_notification_swallowed_by_the_throttle_is_caught_by_the_recheck(world: World,
                                                                          db_url: str) -> None:
    # A long throttle makes the swallowed notification certain; the recheck outlasts it.
    world.db.execute("SELECT pgmq.update_notify_insert('webhooks', 1500)")

    async def scenario() -> None:
        _, stop, task = await _start(db_url, heartbeat_s=60, recheck_s=2.0)
        a, wa = world.outbound()
        b, wb = world.outbound()
        world.ingest(statuses_payload(status(wa, "sent")))
        await _until(lambda: _state(world, a) == "sent", 2.0)
        world.ingest(statuses_payload(status(wb, "delivered")))         # no NOTIFY for this one
        await _until(lambda: _state(world, b) == "delivered", 3.0)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())


def test_the_heartbeat_processes_without_any_notification(world: World, db_url: str) -> None:
    world.db.execute("SELECT pgmq.disable_notify_insert('webhooks')")

    async def scenario() -> None:
        _, stop, task = await _start(db_url, heartbeat_s=0.5)
        a, wa = world.outbound()
        world.ingest(statuses_payload(status(wa, "read")))
        await _until(lambda: _state(world, a) == "read", 3.0)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())


def test_the_worker_drains_a_backlog_in_batches_and_stops_promptly(world: World,
                                                                   db_url: str) -> None:
    msgs = [world.outbound() for _ in range(120)]
    world.ingest(*[statuses_payload(status(w, "delivered")) for _, w in msgs])

    async def scenario() -> None:
        processor, stop, task = await _start(db_url, batch=25, heartbeat_s=60)
        await _until(lambda: world.one("SELECT count(*) FROM pgmq.q_webhooks")[0] == 0, 5.0)
        assert processor.totals["batches"] >= 5
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - started < 1.0

    asyncio.run(scenario())
    assert world.campaign_counters()["delivered"] == 120


def test_the_worker_carries_on_after_losing_its_connections(world: World, db_url: str) -> None:
    async def scenario() -> None:
        _, stop, task = await _start(db_url, heartbeat_s=0.5)
        world.db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        a, wa = world.outbound()
        world.ingest(statuses_payload(status(wa, "sent")))
        await _until(lambda: _state(world, a) == "sent", 5.0)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
