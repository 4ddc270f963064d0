"""LLM replies: jobs from webhook processing, the worker's loop against a local fake
OpenAI-compatible server (tests/fake_llm.py), the fallback and the human flag, the daily
limit, and jobs that are no longer wanted. Nothing reaches the network."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.types.json import Jsonb

from pgwa.config import Settings
from tests.fake_llm import FakeLLM
from tests.test_bots import Inbox, sqlstate
from worker.llm import LLMResponder

KEY = "sk-test-secret-key-0123456789"


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as f:
        yield f


@pytest.fixture
def inbox(db: psycopg.Connection) -> Inbox:
    inbox = Inbox.build(db)
    db.execute("SELECT api.configure_llm(%s, %s, true, %s, 3, 4)",
               (inbox.tenant_id, inbox.number_id, "You are the ACME shop assistant."))
    return inbox


def settings(db_url: str, fake: FakeLLM | None, **kw) -> Settings:
    # A timeout no answer of the fake's comes near on a loaded machine, unless a test
    # is about the timeout.
    return Settings(database_url=db_url, worker_name="llm-test", llm_base_url=fake.url if fake else "",
                    llm_model="fake-model", llm_api_key=KEY, llm_timeout_s=kw.pop("timeout", 30.0),
                    llm_fallback_text="A person will answer soon.", **kw)


async def run_until(responder: LLMResponder, db_url: str, query: str, params: tuple = (),
                    timeout: float = 30) -> float:
    """Run the loop until ``query`` is true; returns how long that took."""
    stop = asyncio.Event()
    task = asyncio.create_task(responder.run(stop))
    started = time.monotonic()
    try:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            while not (await (await conn.execute(query, params)).fetchone())[0]:
                assert time.monotonic() - started < timeout, f"timed out: {responder.totals}"
                assert not task.done(), task.result()
                await asyncio.sleep(0.02)
        return time.monotonic() - started
    finally:
        stop.set()
        await task


def replies(inbox: Inbox, kind: str | None = None) -> list[tuple[str, str]]:
    return inbox.db.execute(
        "SELECT o.kind, i.body FROM core.inbox_messages i JOIN core.outbound_messages o USING (outbound_id) "
        "WHERE %s::text IS NULL OR o.kind = %s ORDER BY i.message_id", (kind, kind)).fetchall()


def conversation(inbox: Inbox, wa_id: str) -> tuple:
    return inbox.db.execute("SELECT needs_human, needs_human_reason, llm_replies FROM core.conversations "
                            "WHERE contact_id = %s", (inbox.contact(wa_id),)).fetchone()


def test_an_unmatched_message_is_answered_by_the_llm_with_the_conversations_context(
        inbox: Inbox, db_url: str, fake: FakeLLM) -> None:
    inbox.rule("exact", "hours", "9 to 5")
    alice = inbox.sender()
    now = int(time.time())
    # Meta's timestamps have whole seconds; the bot's reply is stamped when it is queued.
    for ts, body in [(now - 5, "hours"), (now + 1, "I bought shoes"), (now + 2, "they are too small"),
                     (now + 3, "can I return them?")]:
        inbox.say(body, alice, ts=ts)
    assert len(inbox.llm_jobs()) == 3                          # one per webhook batch
    fake.set(reply="Of course, bring them back within 30 days.")
    responder = LLMResponder(settings(db_url, fake))
    asyncio.run(run_until(responder, db_url, "SELECT count(*) = 1 FROM core.outbound_messages WHERE kind = 'llm'"))

    (call,) = fake.calls()
    assert call["path"] == "/v1/chat/completions"
    assert call["headers"]["Authorization"] == f"Bearer {KEY}"
    assert call["json"]["model"] == "fake-model"
    # The system prompt, then the last 4 messages of the conversation, oldest first.
    assert call["json"]["messages"] == [
        {"role": "system", "content": "You are the ACME shop assistant."},
        {"role": "assistant", "content": "9 to 5"},
        {"role": "user", "content": "I bought shoes"},
        {"role": "user", "content": "they are too small"},
        {"role": "user", "content": "can I return them?"}]
    assert replies(inbox, "llm") == [("llm", "Of course, bring them back within 30 days.")]
    body = inbox.queued()[-1]["b"]
    assert body["to"] == alice and body["text"]["body"] == "Of course, bring them back within 30 days."
    assert conversation(inbox, alice) == (False, None, 1)
    assert responder.totals["replied"] == 1 and inbox.llm_jobs() == []


@pytest.mark.parametrize("failure", ["timeout", "http_500", "no_endpoint"])
def test_a_failed_llm_call_sends_the_fallback_once_and_flags_a_human(
        inbox: Inbox, db_url: str, fake: FakeLLM, failure: str, caplog) -> None:
    if failure == "timeout":
        # An answer that comes long after the run_until below gives up: a fallback within
        # it can only be the timeout's.
        fake.set(delay_s=120)
    elif failure == "http_500":
        fake.set(status=500)
    alice = inbox.sender()
    inbox.say("hello?", alice)
    cfg = settings(db_url, None if failure == "no_endpoint" else fake,
                   **({"timeout": 0.5} if failure == "timeout" else {}))
    with caplog.at_level(logging.DEBUG):
        asyncio.run(run_until(LLMResponder(cfg), db_url,
                              "SELECT count(*) = 1 FROM core.outbound_messages WHERE kind = 'bot'"))
    assert replies(inbox) == [("bot", "A person will answer soon.")]
    needs_human, reason, count = conversation(inbox, alice)
    assert needs_human and count == 0
    assert reason == {"timeout": "LLM: timeout after 0.5 s", "http_500": "LLM: HTTP 500 (server_error)",
                      "no_endpoint": "LLM: no LLM endpoint configured"}[failure]
    assert KEY not in caplog.text
    # Flagged: the next message raises no LLM job (a human will answer).
    inbox.say("hello??", alice)
    assert inbox.llm_jobs() == []


def test_the_daily_limit_stops_the_llm_and_asks_for_a_human(inbox: Inbox, db_url: str, fake: FakeLLM) -> None:
    inbox.db.execute("SELECT api.configure_llm(%s, %s, p_daily_limit => 1)", (inbox.tenant_id, inbox.number_id))
    alice = inbox.sender()
    inbox.say("first", alice)
    asyncio.run(run_until(LLMResponder(settings(db_url, fake)), db_url,
                          "SELECT count(*) = 1 FROM core.outbound_messages WHERE kind = 'llm'"))
    inbox.say("second", alice)
    asyncio.run(run_until(LLMResponder(settings(db_url, fake)), db_url,
                          "SELECT count(*) = 1 FROM core.outbound_messages WHERE kind = 'bot'"))
    assert len(fake.calls()) == 1                              # the second job never reached the model
    assert conversation(inbox, alice) == (True, "LLM: daily LLM reply limit reached", 1)
    # Tomorrow the count starts again.
    inbox.db.execute("UPDATE core.conversations SET llm_day = current_date - 1, needs_human = false")
    inbox.say("third", alice)
    asyncio.run(run_until(LLMResponder(settings(db_url, fake)), db_url,
                          "SELECT count(*) = 2 FROM core.outbound_messages WHERE kind = 'llm'"))
    assert conversation(inbox, alice)[2] == 1


def claim(inbox: Inbox, n: int = 10) -> list[tuple]:
    return inbox.db.execute("SELECT msg_id, contact_id, message_id, messages FROM api.claim_llm_jobs('t', %s, 30)",
                            (n,)).fetchall()


def test_a_newer_job_supersedes_older_ones_and_sees_their_messages(inbox: Inbox) -> None:
    alice = inbox.sender()
    now = int(time.time())
    inbox.say("one", alice, ts=now - 2)
    inbox.say("two", alice, ts=now - 1)
    assert len(inbox.llm_jobs()) == 2
    (job,) = claim(inbox)
    assert [m["content"] for m in job[3]] == ["one", "two"]
    assert inbox.db.execute("SELECT count(*) FROM pgmq.q_llm_jobs").fetchone()[0] == 1
    # A job whose message was already in a claimed job's context is dropped when it comes.
    inbox.db.execute("SELECT pgmq.send('llm_jobs', jsonb_build_object('number_id', %s, 'contact_id', %s, "
                     "'message_id', %s))", (inbox.number_id, job[1], job[2] - 1))
    inbox.db.execute("UPDATE pgmq.q_llm_jobs SET vt = now() WHERE msg_id <> %s", (job[0],))
    assert claim(inbox) == []


def test_a_job_is_dropped_when_the_conversation_was_handed_to_an_agent(inbox: Inbox) -> None:
    alice = inbox.sender()
    inbox.say("hi", alice)
    inbox.db.execute("SELECT api.assign_conversation(%s, %s, %s, 'sam')",
                     (inbox.tenant_id, inbox.number_id, inbox.contact(alice)))
    assert claim(inbox) == [] and inbox.llm_jobs() == []


def test_a_result_for_a_conversation_assigned_meanwhile_or_reported_twice_is_dropped(inbox: Inbox) -> None:
    alice, bob = inbox.sender(), inbox.sender()
    inbox.say("hi", alice)
    inbox.say("hi", bob)
    jobs = {r[1]: r[0] for r in claim(inbox)}
    inbox.db.execute("SELECT api.assign_conversation(%s, %s, %s, 'sam')",
                     (inbox.tenant_id, inbox.number_id, inbox.contact(alice)))
    results = Jsonb([{"msg_id": jobs[inbox.contact(alice)], "text": "late", "error": None},
                     {"msg_id": jobs[inbox.contact(bob)], "text": "hello bob", "error": None}])
    assert inbox.db.execute("SELECT * FROM api.complete_llm_jobs(%s)", (results,)).fetchone() == (1, 0, 1)
    assert inbox.db.execute("SELECT * FROM api.complete_llm_jobs(%s)", (results,)).fetchone() == (0, 0, 0)
    assert replies(inbox) == [("llm", "hello bob")]
    with pytest.raises(psycopg.Error) as exc:
        inbox.db.execute("SELECT api.complete_llm_jobs('{}')")
    assert sqlstate(exc) == "PW100"


# The loop is idle: listening, and its last claim (the first) came back empty.
LLM_IDLE = """
SELECT count(*) FILTER (WHERE application_name = 'llm-test-llm-listen' AND query LIKE 'LISTEN%%') = 1
   AND count(*) FILTER (WHERE application_name = 'llm-test-llm' AND state = 'idle'
                          AND query LIKE '%%claim_llm_jobs%%') = 1
FROM pg_stat_activity WHERE datname = current_database()
"""


def test_the_loop_wakes_on_notify_not_on_its_heartbeat(inbox: Inbox, db_url: str, fake: FakeLLM) -> None:
    alice = inbox.sender()

    async def scenario() -> None:
        # Its heartbeat an hour away: within run_until's 30 s only the NOTIFY can wake it.
        responder = LLMResponder(settings(db_url, fake), heartbeat_s=3600)
        stop = asyncio.Event()
        task = asyncio.create_task(responder.run(stop))
        try:
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
                started = time.monotonic()
                while not (await (await conn.execute(LLM_IDLE)).fetchone())[0]:   # waited for, not guessed
                    assert time.monotonic() - started < 30 and not task.done()
                    await asyncio.sleep(0.02)
                assert responder.totals["claimed"] == 0
                await asyncio.to_thread(inbox.say, "are you open?", alice)
                started = time.monotonic()
                while not (await (await conn.execute(
                        "SELECT count(*) FROM core.outbound_messages WHERE kind = 'llm'")).fetchone())[0]:
                    assert time.monotonic() - started < 30, responder.totals
                    await asyncio.sleep(0.02)
        finally:
            stop.set()
            await task

    asyncio.run(scenario())


def test_configure_llm_checks_its_arguments(inbox: Inbox) -> None:
    for args in ((True, None, -1, None, None), (True, None, None, 0, None), (True, "x" * 20001, None, None, None),
                 (True, None, None, None, -1), (True, None, None, None, 1_000_001)):
        with pytest.raises(psycopg.Error) as exc:
            inbox.db.execute("SELECT api.configure_llm(%s, %s, %s, %s, %s, %s, %s)",
                             (inbox.tenant_id, inbox.number_id, *args))
        assert sqlstate(exc) == "PW100"
    row = inbox.db.execute("SELECT * FROM api.configure_llm(%s, %s, false, '')",
                           (inbox.tenant_id, inbox.number_id)).fetchone()
    assert row == (inbox.number_id, False, None, 3, 4, 1000)         # 1000 LLM calls per number and day
    alice = inbox.sender()
    inbox.say("hi", alice)
    assert inbox.llm_jobs() == []
