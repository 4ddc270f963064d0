"""The shared inbox: conversation lists and pages (keyset), agents' replies inside and
outside the 24-hour window, read receipts, and the hand-over that silences the bots."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.test_bots import Inbox, _run_sender, sim_inbound, sqlstate, text

try:
    from sim_fixtures import NUMBERS
except ImportError:
    from tests.sim_fixtures import NUMBERS

pytest_plugins = ["sim_fixtures"] if __package__ in (None, "") else ["tests.sim_fixtures"]


@pytest.fixture
def inbox(db: psycopg.Connection) -> Inbox:
    return Inbox.build(db)


def conversations(inbox: Inbox, **kw) -> list[dict]:
    args = {"p_filter": "all", "p_agent": None, "p_before_at": None, "p_before_contact_id": None, "p_limit": 50, **kw}
    cur = inbox.db.execute(
        "SELECT * FROM api.conversations(%s, %s, %s, %s, %s, %s, %s)",
        (inbox.tenant_id, inbox.number_id, args["p_filter"], args["p_agent"], args["p_before_at"],
         args["p_before_contact_id"], args["p_limit"]))
    return [dict(zip([c.name for c in cur.description], r)) for r in cur.fetchall()]


def page(inbox: Inbox, contact_id: int, before: tuple | None = None, limit: int = 50) -> list[dict]:
    cur = inbox.db.execute("SELECT * FROM api.conversation(%s, %s, %s, %s, %s, %s)",
                           (inbox.tenant_id, inbox.number_id, contact_id, *(before or (None, None)), limit))
    return [dict(zip([c.name for c in cur.description], r)) for r in cur.fetchall()]


def reply(inbox: Inbox, contact_id: int, body: dict) -> tuple:
    return inbox.db.execute("SELECT * FROM api.reply(%s, %s, %s, %s)",
                            (inbox.tenant_id, inbox.number_id, contact_id, Jsonb(body))).fetchone()


# --- listing ------------------------------------------------------------------------------

def test_conversations_list_latest_first_with_unread_window_and_last_message(inbox: Inbox) -> None:
    inbox.rule("exact", "hours", "9 to 5")
    now = int(time.time())
    alice, bob, carol = inbox.sender(), inbox.sender(), inbox.sender()
    inbox.deliver(inbox.message("hello", alice, ts=now - 30), inbox.message("hours", bob, ts=now - 20),
                  inbox.message("old", carol, ts=now - 2 * 86_400), inbox.message("again", alice, ts=now - 10))
    rows = conversations(inbox)
    # Bob's conversation ends with the bot's reply (sent now): it is first.
    assert [r["wa_id"] for r in rows] == [bob, alice, carol]
    bob_row, alice_row, carol_row = rows
    assert (bob_row["last_direction"], bob_row["last_body"], bob_row["unread"]) == ("out", "9 to 5", 1)
    assert (alice_row["last_direction"], alice_row["last_body"], alice_row["unread"]) == ("in", "again", 2)
    assert alice_row["window_open"] and not carol_row["window_open"]
    assert carol_row["window_closes_at"].timestamp() == pytest.approx(now - 2 * 86_400 + 86_400)
    assert [r["wa_id"] for r in conversations(inbox, p_filter="open")] == [bob, alice]
    inbox.db.execute("SELECT api.mark_read(%s, %s, %s)", (inbox.tenant_id, inbox.number_id, alice_row["contact_id"]))
    assert [r["wa_id"] for r in conversations(inbox, p_filter="unread")] == [bob, carol]


def test_a_message_sent_back_within_the_second_of_a_reply_comes_after_it(inbox: Inbox) -> None:
    """Meta stamps a message with whole seconds: one the user sends back in the second of
    the agent's reply is listed and paged after that reply, not before it."""
    alice = inbox.sender()
    inbox.say("hello", alice, ts=int(time.time()) - 60)
    contact = inbox.contact(alice)
    reply(inbox, contact, text("an agent"))
    replied_at = inbox.db.execute("SELECT max(created_at) FROM core.inbox_messages WHERE direction = 'out'"
                                  ).fetchone()[0]
    inbox.say("thanks", alice, ts=int(replied_at.timestamp()))       # the reply's own second
    assert [r["body"] for r in page(inbox, contact)] == ["thanks", "an agent", "hello"]
    row = conversations(inbox)[0]
    assert (row["last_direction"], row["last_body"]) == ("in", "thanks")
    # An old message delivered late keeps its place among Meta's seconds.
    inbox.say("late", alice, ts=int(time.time()) - 30)
    assert [r["body"] for r in page(inbox, contact)] == ["thanks", "an agent", "late", "hello"]


def test_conversation_list_pages_by_keyset_without_gaps_or_repeats(inbox: Inbox) -> None:
    now = int(time.time())
    senders = [inbox.sender() for _ in range(23)]
    # Several conversations share a timestamp: the contact id breaks the tie.
    inbox.deliver(*[inbox.message("hi", s, ts=now - (i // 3)) for i, s in enumerate(senders)])
    seen, before = [], {}
    while True:
        rows = conversations(inbox, p_limit=5, **before)
        if not rows:
            break
        seen += [r["wa_id"] for r in rows]
        before = {"p_before_at": rows[-1]["last_message_at"], "p_before_contact_id": rows[-1]["contact_id"]}
    assert sorted(seen) == sorted(senders) and len(seen) == len(set(seen))
    all_rows = conversations(inbox, p_limit=500)
    assert [r["wa_id"] for r in all_rows] == seen


def test_a_conversation_pages_newest_first_by_keyset_on_the_compound_index(inbox: Inbox) -> None:
    alice = inbox.sender()
    now = int(time.time())
    inbox.deliver(*[inbox.message(f"m{i}", alice, ts=now - 100 + i // 2) for i in range(45)])
    contact = inbox.contact(alice)
    reply(inbox, contact, text("an agent"))
    bodies, before = [], None
    while True:
        rows = page(inbox, contact, before, limit=10)
        if not rows:
            break
        bodies += [r["body"] for r in rows]
        before = (rows[-1]["created_at"], rows[-1]["message_id"])
    assert len(bodies) == 46 and len(set(bodies)) == 46
    assert bodies[0] == "an agent"
    assert set(bodies[1:]) == {f"m{i}" for i in range(45)}
    times = [r["created_at"] for r in page(inbox, contact, limit=100)]
    assert times == sorted(times, reverse=True)
    first = page(inbox, contact, limit=1)[0]
    assert (first["direction"], first["kind"], first["state"]) == ("out", "agent", "queued")
    plan = "\n".join(r[0] for r in inbox.db.execute(
        "EXPLAIN SELECT * FROM core.inbox_messages i WHERE i.number_id = %s AND i.contact_id = %s "
        "AND (i.created_at, i.message_id) < (now(), 9223372036854775807) "
        "ORDER BY i.created_at DESC, i.message_id DESC LIMIT 50", (inbox.number_id, contact)))
    assert "inbox_messages_conversation" in plan and "Sort" not in plan


def test_inbox_reads_are_scoped_to_the_tenant(inbox: Inbox) -> None:
    other = Inbox.build(inbox.db, NUMBERS[2])
    alice = inbox.sender()
    inbox.say("hi", alice)
    contact = inbox.contact(alice)
    for query, args, code in [
        ("SELECT * FROM api.conversations(%s, %s)", (other.tenant_id, inbox.number_id), "PW202"),
        ("SELECT * FROM api.conversation(%s, %s, %s)", (other.tenant_id, other.number_id, contact), "PW204"),
        ("SELECT * FROM api.mark_read(%s, %s, %s)", (other.tenant_id, other.number_id, contact), "PW209"),
        ("SELECT * FROM api.assign_conversation(%s, %s, %s, 'x')", (other.tenant_id, other.number_id, contact), "PW209"),
        ("SELECT * FROM api.conversations(%s, %s, 'mine')", (inbox.tenant_id, inbox.number_id), "PW100"),
        ("SELECT * FROM api.conversation(%s, %s, %s, NULL, NULL, 0)", (inbox.tenant_id, inbox.number_id, contact), "PW100"),
    ]:
        with pytest.raises(psycopg.Error) as exc:
            inbox.db.execute(query, args)
        assert sqlstate(exc) == code, query


# --- agents' replies ------------------------------------------------------------------------

def test_an_agent_replies_free_form_inside_the_window(inbox: Inbox) -> None:
    alice = inbox.sender()
    inbox.say("help", alice)
    outbound_id, message_id, closes_at = reply(inbox, inbox.contact(alice), text("On it, {{first_name}}"))
    assert closes_at.timestamp() > time.time() + 86_000
    queued = inbox.queued()
    assert [m["o"] for m in queued] == [outbound_id]
    assert queued[0]["b"]["text"]["body"] == "On it, Ana" and queued[0]["b"]["to"] == alice
    assert inbox.db.execute("SELECT direction, outbound_id FROM core.inbox_messages WHERE message_id = %s",
                            (message_id,)).fetchone() == ("out", outbound_id)


def test_outside_the_window_a_free_form_reply_is_refused_and_a_template_goes(inbox: Inbox) -> None:
    alice = inbox.sender()
    inbox.say("hi", alice, ts=int(time.time()) - 25 * 3600)
    contact = inbox.contact(alice)
    for body in (text("too late"), {"type": "buttons", "text": "pick", "buttons": ["a"]}):
        with pytest.raises(psycopg.Error) as exc:
            reply(inbox, contact, body)
        assert sqlstate(exc) == "PW104"
        assert "template" in exc.value.diag.message_hint
    assert inbox.queued() == []
    assert inbox.db.execute("SELECT count(*) FROM core.outbound_messages").fetchone()[0] == 0
    outbound_id, _, _ = reply(inbox, contact, {"type": "template", "name": "order_update", "language": "en_US",
                                               "params": ["{{name}}", "A-7"]})
    body = inbox.queued()[0]["b"]
    assert inbox.queued()[0]["o"] == outbound_id and body["type"] == "template"
    # A contact who never wrote to this number has no window at all.
    inbox.db.execute("INSERT INTO core.contacts (tenant_id, wa_id) VALUES (%s, '15559990000')", (inbox.tenant_id,))
    stranger = inbox.contact("15559990000")
    with pytest.raises(psycopg.Error) as exc:
        reply(inbox, stranger, text("hello"))
    assert sqlstate(exc) == "PW104" and "never wrote" in str(exc.value)


def test_a_template_to_an_opted_out_contact_is_refused(inbox: Inbox) -> None:
    alice = inbox.sender()
    inbox.say("stop", alice, ts=int(time.time()) - 25 * 3600)
    with pytest.raises(psycopg.Error) as exc:
        reply(inbox, inbox.contact(alice), {"type": "template", "name": "order_update", "language": "en_US",
                                            "params": ["a", "b"]})
    assert sqlstate(exc) == "PW106"


def test_an_agents_reply_clears_the_call_for_a_human(inbox: Inbox) -> None:
    alice = inbox.sender()
    inbox.say("hi", alice)
    inbox.db.execute("UPDATE core.conversations SET needs_human = true, needs_human_reason = 'LLM: timeout'")
    assert [r["wa_id"] for r in conversations(inbox, p_filter="needs_human")] == [alice]
    reply(inbox, inbox.contact(alice), text("Hello, I am Sam"))
    assert conversations(inbox, p_filter="needs_human") == []


# --- hand-over ----------------------------------------------------------------------------

def test_an_assigned_conversation_gets_no_bot_or_llm_reply_until_released(inbox: Inbox) -> None:
    inbox.rule("exact", "hours", "9 to 5")
    inbox.db.execute("SELECT api.configure_llm(%s, %s, true)", (inbox.tenant_id, inbox.number_id))
    alice, bob = inbox.sender(), inbox.sender()
    inbox.say("hello", alice)
    contact = inbox.contact(alice)
    inbox.db.execute("DELETE FROM pgmq.q_llm_jobs")
    row = inbox.db.execute("SELECT assigned_to, assigned_at IS NOT NULL FROM api.assign_conversation(%s, %s, %s, %s)",
                           (inbox.tenant_id, inbox.number_id, contact, " sam@example.com ")).fetchone()
    assert row == ("sam@example.com", True)
    inbox.say("hours", alice)
    inbox.say("anything", alice)
    inbox.say("hours", bob)                                    # others still get the bot
    assert inbox.replies_to(alice) == [] and inbox.replies_to(bob) == ["9 to 5"]
    assert inbox.llm_jobs() == []
    assert [r["wa_id"] for r in conversations(inbox, p_agent="sam@example.com")] == [alice]
    assert alice not in [r["wa_id"] for r in conversations(inbox, p_filter="unassigned")]
    inbox.db.execute("SELECT api.release_conversation(%s, %s, %s)", (inbox.tenant_id, inbox.number_id, contact))
    inbox.say("hours", alice)
    assert inbox.replies_to(alice) == ["9 to 5"]
    with pytest.raises(psycopg.Error) as exc:
        inbox.db.execute("SELECT api.assign_conversation(%s, %s, %s, '  ')", (inbox.tenant_id, inbox.number_id, contact))
    assert sqlstate(exc) == "PW100"


# --- read receipts ------------------------------------------------------------------------

def test_marking_read_queues_one_receipt_for_the_latest_inbound_message(inbox: Inbox) -> None:
    alice = inbox.sender()
    now = int(time.time())
    inbox.deliver(inbox.message("one", alice, ts=now - 2), inbox.message("two", alice, ts=now - 1))
    contact = inbox.contact(alice)
    latest = inbox.db.execute("SELECT wamid FROM core.inbox_messages WHERE body = 'two'").fetchone()[0]
    assert inbox.db.execute("SELECT api.mark_read(%s, %s, %s)", (inbox.tenant_id, inbox.number_id, contact)
                            ).fetchone()[0] == 2
    queued = inbox.queued()
    assert [m["b"] for m in queued] == [{"messaging_product": "whatsapp", "status": "read", "message_id": latest}]
    assert inbox.db.execute("SELECT kind FROM core.outbound_messages WHERE outbound_id = %s",
                            (queued[0]["o"],)).fetchone()[0] == "receipt"
    # Nothing new: nothing queued; a receipt is not an inbox message.
    assert inbox.db.execute("SELECT api.mark_read(%s, %s, %s)", (inbox.tenant_id, inbox.number_id, contact)
                            ).fetchone()[0] == 0
    assert len(inbox.queued()) == 1
    assert inbox.db.execute("SELECT count(*) FROM core.inbox_messages WHERE direction = 'out'").fetchone()[0] == 0
    assert conversations(inbox)[0]["unread"] == 0


def test_report_sends_settles_a_receipt_answered_without_a_wamid(inbox: Inbox) -> None:
    alice = inbox.sender()
    inbox.say("hi", alice)
    inbox.db.execute("SELECT api.mark_read(%s, %s, %s)", (inbox.tenant_id, inbox.number_id, inbox.contact(alice)))
    claimed = inbox.db.execute("SELECT outbound_id, queue_name, msg_id FROM api.claim_sends('w', 10)").fetchall()
    assert len(claimed) == 1
    (outbound_id, queue, msg_id), = claimed
    # What worker.graph makes of Meta's {"success": true}.
    result = inbox.db.execute("SELECT * FROM api.report_sends(%s)", (Jsonb([{
        "outbound_id": outbound_id, "queue_name": queue, "msg_id": msg_id, "wamid": None, "message_status": None,
        "error_code": None, "http_status": 200, "error_message": "answer without messages[0].id"}]),)).fetchone()
    assert result == (1, 0, 0, 0, 0)
    assert inbox.db.execute("SELECT state FROM core.outbound_messages WHERE outbound_id = %s",
                            (outbound_id,)).fetchone()[0] == "accepted"
    assert inbox.db.execute(f"SELECT count(*) FROM pgmq.q_{queue}").fetchone()[0] == 0


def test_a_read_receipt_and_an_agent_reply_reach_the_simulator(db_url: str, sim, sim_receiver) -> None:
    with psycopg.connect(db_url, autocommit=True) as db:
        inbox = Inbox.build(db)
        alice = inbox.sender()
        sim_inbound(inbox, sim, sim_receiver, alice, "is anyone there?")
        contact = inbox.contact(alice)
        db.execute("SELECT api.mark_read(%s, %s, %s)", (inbox.tenant_id, inbox.number_id, contact))
        outbound_id, _, _ = reply(inbox, contact, text("Yes, {{first_name}}!"))
        asyncio.run(_run_sender(db_url, sim.url, "SELECT count(*) = 2 FROM core.outbound_messages "
                                "WHERE state = 'accepted'", ()))
        assert sim.stats()["read_receipts"] == 1
        ledger = sim.ledger(0)
        assert [(e["to"], e["type"]) for e in ledger] == [(alice, "text")]
        assert db.execute("SELECT wamid = %s FROM core.outbound_messages WHERE outbound_id = %s",
                          (ledger[0]["wamid"], outbound_id)).fetchone()[0]
        assert db.execute("SELECT queue_length FROM pgmq.metrics(core.reply_queue(%s))",
                          (inbox.number_id,)).fetchone()[0] == 0
