"""One home per rule (issue 16): the queue names, Meta's cap on a text message, its 24-hour
customer-service window and the bounds of the LLM settings each live in one SQL function
that everything else asks."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests import factories
from tests.test_bots import Inbox, sqlstate, text

# Where each rule lives; no other function or view may spell it out.
HOMES = {"core.campaign_queue(bigint)", "core.reply_queue(bigint)", "core.service_window()",
         "core.text_body_max()", "core.wake_sender(bigint)"}
SPELLED_OUT = r"'\^?[cr]_'|'q_[cr]_'|interval\s*'24 hours'|\m4096\M|'pgwa_send'"


@pytest.fixture
def inbox(db: psycopg.Connection) -> Inbox:
    return Inbox.build(db)


def test_no_function_or_view_spells_out_a_shared_rule(db: psycopg.Connection) -> None:
    found = {r[0] for r in db.execute(
        """SELECT p.oid::regprocedure::text FROM pg_proc p
           WHERE p.pronamespace IN ('api'::regnamespace, 'core'::regnamespace) AND p.prosrc ~* %(re)s
           UNION ALL
           SELECT schemaname || '.' || viewname FROM pg_views
           WHERE schemaname IN ('api', 'core') AND definition ~* %(re)s""", {"re": SPELLED_OUT})}
    assert found == HOMES


def test_queues_are_named_and_recognised_by_one_function_each(db: psycopg.Connection) -> None:
    acc = factories.account(db)
    cid = factories.create_campaign(db, acc, 3)["campaign_id"]
    campaign, reply = factories.campaign_queue(db, cid), factories.reply_queue(db, acc.number_id)
    assert campaign != reply
    assert {campaign, reply} <= {r[0] for r in db.execute("SELECT queue_name FROM pgmq.meta")}
    assert db.execute("SELECT core.queue_campaign_id(%s), core.queue_number_id(%s), "
                      "core.queue_campaign_id(%s), core.queue_number_id(%s)",
                      (campaign, reply, reply, campaign)).fetchone() == (cid, acc.number_id, None, None)
    # The platform's queues and look-alikes belong to no campaign and no number.
    for name in ("webhooks", "llm_jobs", campaign + "x", "x" + campaign, campaign.replace(str(cid), f"0{cid}"),
                 campaign.replace(str(cid), "9" * 19), ""):
        assert db.execute("SELECT core.queue_campaign_id(%s), core.queue_number_id(%s)",
                          (name, name)).fetchone() == (None, None), name
    kinds = dict(db.execute("SELECT queue_name, kind FROM core.queue_depths").fetchall())
    assert (kinds[campaign], kinds[reply], kinds["webhooks"]) == ("campaign", "reply", "webhooks")


def test_the_window_closes_exactly_24_hours_after_the_last_inbound_message(db: psycopg.Connection) -> None:
    row = db.execute("""
        SELECT core.window_closes_at(t) = t + interval '24 hours',
               core.window_open(t, t + interval '24 hours' - interval '1 microsecond'),
               core.window_open(t, t + interval '24 hours'),
               core.window_open(t, t),
               core.window_open(NULL, t),
               core.window_closes_at(NULL),
               -- The bare-column form of a WHERE clause agrees with core.window_open.
               t > core.window_start(t + interval '24 hours' - interval '1 microsecond'),
               t > core.window_start(t + interval '24 hours')
        FROM (SELECT timestamptz '2026-03-28 23:30:00+00' AS t) x""").fetchone()
    assert row == (True, True, False, True, False, None, True, False)


def test_at_exactly_24_hours_a_free_form_reply_is_refused_and_the_conversation_is_closed(inbox: Inbox) -> None:
    alice = inbox.sender()
    inbox.say("hi", alice)
    contact = inbox.contact(alice)
    for age, is_open in (("24 hours", False), ("24 hours - 1 microsecond", True)):
        # One transaction: now() is the same instant for the update and the calls.
        with inbox.db.transaction(force_rollback=True):
            inbox.db.execute(f"UPDATE core.conversations SET last_inbound_at = now() - interval '{age}' "
                             "WHERE number_id = %s AND contact_id = %s", (inbox.number_id, contact))
            listed = inbox.db.execute(
                "SELECT contact_id, window_open FROM api.conversations(%s, %s, 'open')",
                (inbox.tenant_id, inbox.number_id)).fetchall()
            assert listed == ([(contact, True)] if is_open else []), age
            if is_open:
                inbox.db.execute("SELECT * FROM api.reply(%s, %s, %s, %s)",
                                 (inbox.tenant_id, inbox.number_id, contact, Jsonb(text("still open"))))
            else:
                with pytest.raises(psycopg.Error) as exc, inbox.db.transaction():
                    inbox.db.execute("SELECT * FROM api.reply(%s, %s, %s, %s)",
                                     (inbox.tenant_id, inbox.number_id, contact, Jsonb(text("too late"))))
                assert sqlstate(exc) == "PW104"


def test_a_message_exactly_24_hours_after_the_previous_one_opens_a_new_window(inbox: Inbox) -> None:
    inbox.rule("welcome", None, "Welcome!")
    inbox.rule("default", None, "Sorry?")
    alice = inbox.sender()
    now = int(time.time())
    inbox.say("hi", alice, ts=now - 86_400 - 60)     # too old to answer
    inbox.say("hi again", alice, ts=now - 60)        # the old window has just closed: welcome
    inbox.say("and again", alice, ts=now - 59)
    assert inbox.replies_to(alice) == ["Welcome!", "Sorry?"]


def test_configure_llm_accepts_its_bounds_and_names_the_setting_it_refuses(inbox: Inbox) -> None:
    bounds = inbox.db.execute("SELECT setting, type, minimum, maximum, meaning FROM api.llm_bounds()").fetchall()
    assert {b[0] for b in bounds} == {"system_prompt", "daily_limit", "context_messages", "number_daily_limit"}
    for setting, kind, low, high, meaning in bounds:
        call = f"SELECT api.configure_llm(%s, %s, p_{setting} => %s)"
        for n in (low, high):
            inbox.db.execute(call, (inbox.tenant_id, inbox.number_id, "x" * n if kind == "string" else n))
        for n in (low - 1, high + 1):
            if n < 0 and kind == "string":
                continue
            with pytest.raises(psycopg.Error) as exc:
                inbox.db.execute(call, (inbox.tenant_id, inbox.number_id, "x" * n if kind == "string" else n))
            diag = exc.value.diag
            assert (diag.sqlstate, diag.column_name) == ("PW100", setting)
            assert diag.message_primary.startswith(setting) and f"{low} to {high}" in diag.message_primary
            assert diag.message_hint == f"{meaning}."
    # Each value at its maximum was kept.
    highest = {b[0]: b[3] for b in bounds}
    assert inbox.db.execute("SELECT llm_daily_limit, llm_context_messages, llm_number_daily_limit, "
                            "length(llm_system_prompt) FROM core.wa_numbers WHERE number_id = %s",
                            (inbox.number_id,)).fetchone() == (
        highest["daily_limit"], highest["context_messages"], highest["number_daily_limit"], highest["system_prompt"])


def test_a_text_reply_may_hold_exactly_metas_cap(inbox: Inbox) -> None:
    cap = inbox.db.execute("SELECT core.text_body_max()").fetchone()[0]
    inbox.rule("exact", "long", "x" * cap)
    with pytest.raises(psycopg.Error) as exc:
        inbox.rule("exact", "longer", "x" * (cap + 1))
    assert sqlstate(exc) == "PW100" and f"1 to {cap} characters" in exc.value.diag.message_primary
    inbox.db.execute("SELECT api.configure_opt_out(%s, p_opt_out_reply => %s)", (inbox.tenant_id, "y" * cap))
    with pytest.raises(psycopg.Error) as exc:
        inbox.db.execute("SELECT api.configure_opt_out(%s, p_opt_out_reply => %s)",
                         (inbox.tenant_id, "y" * (cap + 1)))
    assert sqlstate(exc) == "PW100" and f"1 to {cap} characters" in exc.value.diag.message_primary
