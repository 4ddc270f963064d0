"""Hostile input to the bots and the LLM (issue 11): regex rules outside the safe subset
are refused at save, over HTTP and in SQL; rules see a bounded prefix of a huge message;
LLM calls are capped per number and UTC day; an opt-out cancels a queued or in-flight LLM
job."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.api_support import live_server, new_tenant
from tests.fake_llm import FakeLLM
from tests.test_bots import Inbox, sqlstate
from tests.test_llm import replies, run_until, settings
from worker.llm import LLMResponder

REPLY = {"type": "text", "text": "ok"}

# Pattern -> the reason api.save_bot_rule gives (as the rule is matched: upper case).
UNSAFE = {
    r"(HI) \1": r"back-reference (\1)",
    r"(?<N>A)\k<N>": "embedded options ((?<)",               # a named group: only (?: is allowed
    r"\k<NAME>": r"back-reference (\k)",
    "HELLO(?=WORLD)": "look-around ((?=)",
    "HELLO(?!WORLD)": "look-around ((?!)",
    "(?<=NO )THANKS": "look-around ((?<=)",
    "(?<!NO )THANKS": "look-around ((?<!)",
    "(?I)HELLO": "embedded options",
    "***=HELLO": "director",
    "A" * 201: "201 characters long; the limit is 200",
    "A{1,500}": "repetition bound over 100 ({1,500})",
    "A{101}": "repetition bound over 100 ({101})",
    "(A+)+B": "nested quantifiers",
    "(A*)*": "nested quantifiers",
    "(?:X[0-9]+){2,}": "nested quantifiers",
    "((A)B?)+": "nested quantifiers",
    "(A|AA)*B": "alternation",
    "(A|AA)*\\1$": "alternation",                               # the example
    "((A|B)C)+": "alternation",
    "A{2}{3}": "quantifier to a quantifier",
}
SAFE = {
    r"^ORDER\s+#?[0-9]{4,8}$": "order #12345",
    "(HI|HELLO) THERE": "hello there",
    "[[:digit:]]+ ITEMS?": "3 items",
    "(AB)+C": "ababc",
    "[(|)]+X": "(|)x",
    r"\d{3}-\d{4}": "call 555-1234",
    "CAF(E|É)": "café",
}


@pytest.fixture
def inbox(db: psycopg.Connection) -> Inbox:
    return Inbox.build(db)


def save(inbox: Inbox, pattern: str) -> int:
    return inbox.rule("regex", pattern, REPLY)


def rule_count(db: psycopg.Connection, number_id: int) -> int:
    return db.execute("SELECT count(*) FROM core.bot_rules WHERE number_id = %s", (number_id,)).fetchone()[0]


# --- the safe subset -------------------------------------------------------------------


def test_unsafe_regexes_are_refused_over_http_with_pw103_naming_the_pattern_and_why(
        db: psycopg.Connection, db_url: str) -> None:
    tenant = new_tenant(db)
    number_id = tenant.acc.number_id
    with live_server(db_url) as url, httpx.Client(base_url=url, headers=tenant.headers, timeout=30) as http:
        for pattern, reason in {**UNSAFE, "(UNCLOSED": "does not compile"}.items():
            response = http.post(f"/v1/numbers/{number_id}/bot-rules",
                                 json={"kind": "regex", "pattern": pattern, "reply": REPLY})
            assert response.status_code == 422, (pattern, response.text)
            error = response.json()["error"]
            assert error["code"] == "PW103" and error["name"] == "invalid_pattern", pattern
            assert pattern in error["message"] and reason in error["message"], (pattern, error["message"])
            assert error["hint"]
        assert http.get(f"/v1/numbers/{number_id}/bot-rules").json() == []      # nothing was saved
        for pattern in SAFE:
            response = http.post(f"/v1/numbers/{number_id}/bot-rules",
                                 json={"kind": "regex", "pattern": pattern, "reply": REPLY})
            assert response.status_code == 201, (pattern, response.text)
    assert rule_count(db, number_id) == len(SAFE)


@pytest.mark.parametrize("pattern", list(UNSAFE))
def test_unsafe_regexes_are_refused_in_sql_and_nothing_changes(inbox: Inbox, pattern: str) -> None:
    kept = save(inbox, "^KEPT$")
    with pytest.raises(psycopg.Error) as exc:
        save(inbox, pattern)
    assert sqlstate(exc) == "PW103"
    assert UNSAFE[pattern] in exc.value.diag.message_primary
    # Replacing a good rule with an unsafe pattern is refused too, and leaves it as it was.
    with pytest.raises(psycopg.Error) as exc:
        inbox.db.execute("SELECT api.save_bot_rule(%s, %s, 'regex', %s, %s, 100, true, %s)",
                         (inbox.tenant_id, inbox.number_id, pattern, Jsonb(REPLY), kept))
    assert sqlstate(exc) == "PW103"
    assert inbox.db.execute("SELECT pattern FROM core.bot_rules WHERE number_id = %s",
                            (inbox.number_id,)).fetchall() == [("^KEPT$",)]


def test_safe_regexes_still_save_and_match(inbox: Inbox) -> None:
    for pattern, text in SAFE.items():
        rule_id = save(inbox, pattern)
        assert inbox.match(text) == rule_id, pattern
        inbox.db.execute("SELECT api.delete_bot_rule(%s, %s)", (inbox.tenant_id, rule_id))


def test_a_huge_message_is_matched_on_its_prefix_only(inbox: Inbox) -> None:
    prefix = inbox.db.execute("SELECT bot_match_prefix_chars FROM core.settings").fetchone()[0]
    assert prefix == 1024
    beyond = inbox.rule("regex", "SECRET WORD", "beyond the prefix", priority=1)
    inbox.rule("contains", "other secret", "beyond the prefix too", priority=2)
    head = inbox.rule("regex", "^HELLO", "at the start", priority=3)
    body = "hello " + "filler " * 15_000 + "secret word other secret"           # ~105 KB
    assert len(body) > 100_000

    alice = inbox.sender()
    inbox.say(body, alice)                                  # api.ingest_webhook, api.process_webhooks
    assert inbox.replies_to(alice) == ["at the start"]
    assert inbox.match(body) == head
    # The bound is what hides the tail: with a longer prefix the first rule answers.
    inbox.db.execute("UPDATE core.settings SET bot_match_prefix_chars = 100000")
    assert inbox.match(body[-90_000:]) == beyond


# --- LLM: opt-out cancels, number cap -------------------------------------------------


@pytest.fixture
def fake() -> FakeLLM:
    with FakeLLM() as f:
        yield f


@pytest.fixture
def llm_inbox(db: psycopg.Connection) -> Inbox:
    inbox = Inbox.build(db)
    db.execute("SELECT api.configure_llm(%s, %s, true, 'You are a shop assistant.', 5, 4)",
               (inbox.tenant_id, inbox.number_id))
    return inbox


def opt_out(inbox: Inbox, wa_id: str, how: str) -> None:
    if how == "keyword":
        inbox.say("STOP", wa_id)
    else:
        inbox.db.execute("SELECT api.set_contact_opt_out(%s, true, p_phone => %s)", (inbox.tenant_id, f"+{wa_id}"))
    assert inbox.db.execute("SELECT opted_out FROM core.contacts WHERE contact_id = %s",
                            (inbox.contact(wa_id),)).fetchone()[0]


@pytest.mark.parametrize("how", ["keyword", "api"])
def test_an_opt_out_cancels_a_queued_llm_job(llm_inbox: Inbox, db_url: str, fake: FakeLLM, how: str) -> None:
    inbox = llm_inbox
    alice = inbox.sender()
    inbox.say("can I return my shoes?", alice)
    assert len(inbox.llm_jobs()) == 1
    opt_out(inbox, alice, how)
    responder = LLMResponder(settings(db_url, fake))
    asyncio.run(run_until(responder, db_url, "SELECT NOT EXISTS (SELECT FROM pgmq.q_llm_jobs)"))
    assert fake.calls() == []                               # the model was never asked
    assert responder.totals["claimed"] == 0
    sent = [body for _, body in replies(inbox)]
    confirmation = "You have been unsubscribed and will get no more messages from us. Reply START to subscribe again."
    assert sent == ([confirmation] if how == "keyword" else [])


def test_an_opt_out_while_the_model_answers_drops_the_reply(llm_inbox: Inbox) -> None:
    inbox = llm_inbox
    alice = inbox.sender()
    inbox.say("hello?", alice)
    (msg_id,) = inbox.db.execute("SELECT msg_id FROM api.claim_llm_jobs('w', 10, 60)").fetchone()
    opt_out(inbox, alice, "api")
    outcome = inbox.db.execute("SELECT * FROM api.complete_llm_jobs(%s)",
                               (Jsonb([{"msg_id": msg_id, "text": "Sure!", "error": None}]),)).fetchone()
    assert outcome == (0, 0, 1)
    assert replies(inbox) == [] and inbox.queued() == []


def _inside_a_utc_day() -> datetime:
    """Now, or 3 hours ago when now is in the first hour of a UTC day: a time at least
    one hour into its day, so that 23 hours later is the next UTC day, and recent
    enough (under 24 hours) for the bots to answer a message sent at it."""
    now = int(time.time())
    ts = now if now % 86400 >= 3600 else now - 3 * 3600
    return datetime.fromtimestamp(ts, UTC)


def test_llm_calls_are_capped_per_number_and_utc_day_with_one_notification(llm_inbox: Inbox) -> None:
    inbox = llm_inbox
    inbox.db.execute("SELECT api.configure_llm(%s, %s, p_number_daily_limit => 2)", (inbox.tenant_id, inbox.number_id))
    day1 = _inside_a_utc_day()
    day2 = day1 + timedelta(hours=23)
    ts = int(day1.timestamp())

    def claim(*senders: str, at: datetime) -> list[bool]:
        for s in senders:
            inbox.say("a question", s, ts=ts)
        rows = inbox.db.execute("SELECT contact_id, over_limit FROM api.claim_llm_jobs('w', 100, 60, %s)",
                                (at,)).fetchall()
        return [over for _, over in sorted(rows, key=lambda r: [inbox.contact(s) for s in senders].index(r[0]))]

    def notifications() -> list[dict]:
        return [r[0] for r in inbox.db.execute(
            "SELECT details FROM core.notifications WHERE tenant_id = %s AND kind = 'llm_number_cap' "
            "ORDER BY notification_id", (inbox.tenant_id,))]

    def usage() -> dict:
        return dict(inbox.db.execute("SELECT day, calls FROM core.llm_number_usage WHERE number_id = %s",
                                     (inbox.number_id,)).fetchall())

    assert claim(*(inbox.sender() for _ in range(3)), at=day1) == [False, False, True]
    assert claim(inbox.sender(), at=day1) == [True]        # still over, no second notification
    assert [n["day"] for n in notifications()] == [day1.date().isoformat()]
    assert usage() == {day1.date(): 2}
    # The next UTC day starts afresh.
    assert claim(inbox.sender(), inbox.sender(), inbox.sender(), at=day2) == [False, False, True]
    assert [n["day"] for n in notifications()] == [day1.date().isoformat(), day2.date().isoformat()]
    assert usage() == {day1.date(): 2, day2.date(): 2}


def test_over_the_number_cap_the_worker_sends_the_fallback_and_asks_a_human(
        llm_inbox: Inbox, db_url: str, fake: FakeLLM) -> None:
    inbox = llm_inbox
    inbox.db.execute("SELECT api.configure_llm(%s, %s, p_number_daily_limit => 1)", (inbox.tenant_id, inbox.number_id))
    alice, bob = inbox.sender(), inbox.sender()
    inbox.say("first", alice)
    inbox.say("second", bob)
    asyncio.run(run_until(LLMResponder(settings(db_url, fake)), db_url,
                          "SELECT count(*) = 2 FROM core.outbound_messages WHERE kind IN ('llm', 'bot')"))
    assert len(fake.calls()) == 1                           # one call: the number's cap
    assert sorted(kind for kind, _ in replies(inbox)) == ["bot", "llm"]
    flagged = inbox.db.execute("SELECT count(*) FROM core.conversations WHERE number_id = %s AND needs_human",
                               (inbox.number_id,)).fetchone()[0]
    assert flagged == 1
    # The flagged conversation raises no more LLM jobs: a human answers it.
    (human,) = inbox.db.execute("SELECT c.wa_id FROM core.conversations v JOIN core.contacts c USING (contact_id) "
                                "WHERE v.number_id = %s AND v.needs_human", (inbox.number_id,)).fetchone()
    inbox.say("hello?", human)
    assert inbox.llm_jobs() == []


def test_the_number_cap_is_configured_over_http(db: psycopg.Connection, db_url: str) -> None:
    tenant = new_tenant(db)
    with live_server(db_url) as url, httpx.Client(base_url=url, headers=tenant.headers, timeout=30) as http:
        path = f"/v1/numbers/{tenant.acc.number_id}/llm"
        response = http.post(path, json={"enabled": True, "number_daily_limit": 50})
        assert response.status_code == 200, response.text
        assert response.json()["number_daily_limit"] == 50
        response = http.post(path, json={"number_daily_limit": -1})
        assert response.status_code == 400 and response.json()["error"]["code"] == "PW100"
    assert db.execute("SELECT llm_number_daily_limit FROM core.wa_numbers WHERE number_id = %s",
                      (tenant.acc.number_id,)).fetchone()[0] == 50

