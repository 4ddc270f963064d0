"""Bot rules, opt-out keywords and the webhook hook that applies them (core.on_inbound).

State is built through the api functions; inbound messages arrive as Meta's webhook
payloads through api.ingest_webhook and api.process_webhooks, or from the simulator.
Replies are read where the worker would find them: the number's reply queue.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass

import psycopg
import pytest
from psycopg.types.json import Jsonb

from pgwa.config import Settings
from pgwa.contacts import csv_text, stage_csv
from pgwa.queries import queries
from tests import factories
from worker.sender import Sender

try:  # tests/ is a rootless directory under pytest's default import mode
    from sim_fixtures import NUMBERS
except ImportError:  # tests/ became a package
    from tests.sim_fixtures import NUMBERS

pytest_plugins = ["sim_fixtures"] if __package__ in (None, "") else ["tests.sim_fixtures"]

ONE = NUMBERS[0]
ORDER_UPDATE = [{"type": "BODY", "text": "Hi {{1}}, your order {{2}} is on its way."}]
_senders = itertools.count(1)


def text(body: str) -> dict:
    return {"type": "text", "text": body}


def sqlstate(exc: pytest.ExceptionInfo) -> str:
    return exc.value.diag.sqlstate


@dataclass
class Inbox:
    """A tenant with one registered number (the simulator's first), as a client builds it."""

    db: psycopg.Connection
    tenant_id: int
    number_id: int
    pnid: str = ONE["phone_number_id"]
    waba_id: str = ONE["waba_id"]

    @classmethod
    def build(cls, db: psycopg.Connection, number: dict = ONE, mps: int = 80) -> Inbox:
        tenant = db.execute("SELECT api.create_tenant(%s)", (f"tenant-{uuid.uuid4().hex[:8]}",)).fetchone()[0]
        number_id = db.execute("SELECT api.register_number(%s, %s, %s, %s, NULL, %s, %s)",
                               (tenant, number["phone_number_id"], number["waba_id"], number["token"], mps,
                                number["display_phone_number"])).fetchone()[0]
        db.execute("SELECT api.upsert_template(%s, %s, 'order_update', 'en_US', %s)",
                   (tenant, number["waba_id"], Jsonb(ORDER_UPDATE)))
        return cls(db, tenant, number_id, number["phone_number_id"], number["waba_id"])

    # --- rules ------------------------------------------------------------------------

    def rule(self, kind: str, pattern: str | None, reply: dict | str, priority: int = 100,
             enabled: bool = True) -> int:
        reply = text(reply) if isinstance(reply, str) else reply
        return self.db.execute("SELECT rule_id FROM api.save_bot_rule(%s, %s, %s, %s, %s, %s, %s)",
                               (self.tenant_id, self.number_id, kind, pattern, Jsonb(reply), priority,
                                enabled)).fetchone()[0]

    def match(self, body: str, welcome: bool = False) -> int | None:
        return self.db.execute("SELECT rule_id FROM api.match_bot_rule(%s, %s, %s, %s)",
                               (self.tenant_id, self.number_id, body, welcome)).fetchone()[0]

    # --- inbound ----------------------------------------------------------------------

    @staticmethod
    def sender() -> str:
        return f"1555{next(_senders):07d}"

    def message(self, body: str, sender: str, *, ts: int | None = None, name: str = "Ana Lima") -> dict:
        """Meta's webhook payload of one inbound text message."""
        msg = {"from": sender, "id": f"wamid.in.{uuid.uuid4().hex}",
               "timestamp": str(ts if ts is not None else int(time.time())), "type": "text",
               "text": {"body": body}}
        return {"object": "whatsapp_business_account", "entry": [{"id": self.waba_id, "changes": [{
            "field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": ONE["display_phone_number"], "phone_number_id": self.pnid},
                "contacts": [{"profile": {"name": name}, "wa_id": sender}],
                "messages": [msg]}}]}]}

    def deliver(self, *payloads: dict) -> None:
        """Ingest payloads (one webhook POST each) and process them all in one batch."""
        for p in payloads:
            self.db.execute("SELECT api.ingest_webhook(%s)", (Jsonb(p),))
        row = self.db.execute("SELECT payloads, dead FROM api.process_webhooks(1000)").fetchone()
        assert row == (len(payloads), 0)

    def say(self, body: str, sender: str, **kw) -> None:
        self.deliver(self.message(body, sender, **kw))

    # --- what came out ----------------------------------------------------------------

    def queued(self) -> list[dict]:
        """The Graph API requests on the number's reply queue, oldest first."""
        queue = factories.reply_queue(self.db, self.number_id)
        return [m["message"] for m in factories.queue(self.db, queue)]

    def replies_to(self, wa_id: str) -> list[str]:
        """What the reply queue holds for one recipient, as text."""
        out = []
        for m in self.queued():
            b = m["b"]
            if b.get("to") != wa_id:
                continue
            out.append(b["text"]["body"] if b["type"] == "text" else
                       b["interactive"]["body"]["text"] if b["type"] == "interactive" else
                       f"template:{b['template']['name']}")
        return out

    def contact(self, wa_id: str) -> int:
        return self.db.execute("SELECT contact_id FROM core.contacts WHERE tenant_id = %s AND wa_id = %s",
                               (self.tenant_id, wa_id)).fetchone()[0]

    def llm_jobs(self) -> list[dict]:
        return [r[0] for r in self.db.execute("SELECT message FROM pgmq.q_llm_jobs ORDER BY msg_id")]


@pytest.fixture
def inbox(db: psycopg.Connection) -> Inbox:
    return Inbox.build(db)


# --- saving rules ---------------------------------------------------------------------

def test_an_invalid_regex_is_refused_with_pw103_and_nothing_is_saved(inbox: Inbox) -> None:
    with pytest.raises(psycopg.Error) as exc:
        inbox.rule("regex", "order (\\d+", "x")
    assert sqlstate(exc) == "PW103"
    assert "does not compile" in str(exc.value) and "parentheses" in str(exc.value)
    assert exc.value.diag.message_hint
    assert inbox.db.execute("SELECT count(*) FROM core.bot_rules").fetchone()[0] == 0


@pytest.mark.parametrize("kind, pattern, reply, code", [
    ("keyword", "hi", text("x"), "PW100"),                       # unknown kind
    ("exact", None, text("x"), "PW100"),                         # pattern missing
    ("exact", "   ", text("x"), "PW100"),                        # nothing left after normalising
    ("welcome", "hi", text("x"), "PW100"),                       # welcome takes no pattern
    ("exact", "hi", {"type": "text", "text": ""}, "PW100"),      # empty reply
    ("exact", "hi", {"type": "buttons", "text": "pick", "buttons": ["a", "b", "c", "d"]}, "PW100"),
    ("exact", "hi", {"type": "buttons", "text": "pick", "buttons": ["a title longer than twenty"]}, "PW100"),
    ("exact", "hi", {"type": "video"}, "PW100"),
    ("exact", "hi", {"type": "template", "name": "nope", "language": "en_US"}, "PW102"),
    ("exact", "hi", {"type": "template", "name": "order_update", "language": "en_US", "params": ["one"]}, "PW102"),
])
def test_a_bad_rule_is_refused_with_a_clear_code(inbox: Inbox, kind, pattern, reply, code) -> None:
    with pytest.raises(psycopg.Error) as exc:
        inbox.rule(kind, pattern, reply)
    assert sqlstate(exc) == code
    assert exc.value.diag.message_hint


def test_rules_are_scoped_to_the_tenant(inbox: Inbox) -> None:
    other = Inbox.build(inbox.db, NUMBERS[2])
    rule = inbox.rule("exact", "hi", "hello")
    with pytest.raises(psycopg.Error) as exc:
        inbox.db.execute("SELECT api.save_bot_rule(%s, %s, 'exact', 'x', %s)",
                         (other.tenant_id, inbox.number_id, Jsonb(text("x"))))
    assert sqlstate(exc) == "PW202"
    with pytest.raises(psycopg.Error) as exc:
        inbox.db.execute("SELECT api.save_bot_rule(%s, %s, 'exact', 'x', %s, 100, true, %s)",
                         (other.tenant_id, other.number_id, Jsonb(text("x")), rule))
    assert sqlstate(exc) == "PW206"
    with pytest.raises(psycopg.Error) as exc:
        inbox.db.execute("SELECT api.delete_bot_rule(%s, %s)", (other.tenant_id, rule))
    assert sqlstate(exc) == "PW206"
    assert inbox.db.execute("SELECT api.delete_bot_rule(%s, %s)", (inbox.tenant_id, rule)).fetchone()[0] == rule
    assert inbox.match("hi") is None


def test_updating_a_rule_renormalises_its_pattern(inbox: Inbox) -> None:
    rule = inbox.rule("exact", "hello", "x")
    inbox.db.execute("SELECT api.save_bot_rule(%s, %s, 'starts_with', 'Órder', %s, 5, true, %s)",
                     (inbox.tenant_id, inbox.number_id, Jsonb(text("y")), rule))
    assert inbox.match("hello") is None
    assert inbox.match("order 42") == rule
    rows = inbox.db.execute("SELECT kind, priority, reply->>'text' FROM api.bot_rules(%s, %s)",
                            (inbox.tenant_id, inbox.number_id)).fetchall()
    assert rows == [("starts_with", 5, "y")]


# --- matching -------------------------------------------------------------------------

def test_matching_ignores_case_accents_and_surrounding_whitespace(inbox: Inbox) -> None:
    exact = inbox.rule("exact", "  Préço  ", "price")
    starts = inbox.rule("starts_with", "horário", "hours")
    contains = inbox.rule("contains", "CAFÉ com leite", "coffee")
    assert inbox.match("preco") == exact
    assert inbox.match("\t PREÇO \n") == exact
    assert inbox.match("preco please") is None              # exact is the whole message
    assert inbox.match("Horario de funcionamento?") == starts
    assert inbox.match("qual o horario?") is None            # starts_with is at the start
    assert inbox.match("quero um cafe   COM leite") == contains   # inner whitespace runs collapse
    assert inbox.match("cafe sem leite") is None


def test_like_wildcards_in_patterns_are_literal(inbox: Inbox) -> None:
    percent = inbox.rule("contains", "50%", "half")
    under = inbox.rule("starts_with", "a_b", "underscore")
    back = inbox.rule("contains", "c\\d", "backslash")
    assert inbox.match("is it 50% off?") == percent
    assert inbox.match("is it 500 off?") is None
    assert inbox.match("a_b c") == under
    assert inbox.match("axb c") is None
    assert inbox.match("x c\\d y") == back
    assert inbox.match("x cd y") is None


def test_the_first_match_by_priority_wins_whatever_the_kind(inbox: Inbox) -> None:
    exact = inbox.rule("exact", "order 42", "exact", priority=50)
    contains = inbox.rule("contains", "order", "contains", priority=20)
    regex = inbox.rule("regex", "^order\\s+\\d+$", "regex", priority=10)
    inbox.rule("contains", "42", "disabled", priority=1, enabled=False)
    assert inbox.match("order 42") == regex
    assert inbox.match("order forty-two") == contains
    inbox.db.execute("UPDATE core.bot_rules SET priority = 5 WHERE rule_id = %s", (exact,))
    assert inbox.match("order 42") == exact
    # Equal priority: the older rule first.
    tie = inbox.rule("contains", "forty", "tie", priority=20)
    assert inbox.match("order forty-two") == contains
    assert tie > contains


def test_regexes_match_case_insensitively_against_the_unaccented_text(inbox: Inbox) -> None:
    rule = inbox.rule("regex", "^(pedido|órden)\\s*#?[0-9]{3,}$", "order")
    assert inbox.match("ORDEN #1234") == rule
    assert inbox.match("Órden 555") == rule
    assert inbox.match("pedido 12") is None


def test_welcome_and_default_rules(inbox: Inbox) -> None:
    welcome = inbox.rule("welcome", None, "welcome", priority=1)
    default = inbox.rule("default", None, "sorry", priority=0)
    hours = inbox.rule("contains", "hours", "hours", priority=10)
    assert inbox.match("hi", welcome=True) == welcome
    assert inbox.match("hours?", welcome=True) == welcome   # welcome's priority is higher
    assert inbox.match("hours?") == hours
    assert inbox.match("hi") == default                      # the fallback, whatever its priority


def test_rules_of_another_number_never_answer(inbox: Inbox) -> None:
    other = Inbox.build(inbox.db, NUMBERS[2])
    other.rule("contains", "price", "other number")
    assert inbox.match("price?") is None
    alice = inbox.sender()
    inbox.say("price?", alice)
    assert inbox.queued() == []


# --- replies from webhook processing ----------------------------------------------------

def test_a_matched_message_gets_its_reply_on_the_reply_queue_with_contact_variables(inbox: Inbox) -> None:
    inbox.rule("exact", "price", "Hi {{first_name}}, it costs 10. {{nickname|Cheers}}!")
    inbox.rule("exact", "menu", {"type": "buttons", "text": "What do you need, {{name}}?",
                                 "buttons": ["Hours", {"id": "agent", "title": "Hi {{first_name}}"}],
                                 "footer": "pgwa"})
    inbox.rule("exact", "status", {"type": "template", "name": "order_update", "language": "en_US",
                                   "params": ["{{name}}", "{{order_no|unknown}}"]})
    alice = inbox.sender()
    now = int(time.time())
    inbox.deliver(inbox.message("Price", alice, name="Alice Smith", ts=now - 2))
    inbox.deliver(inbox.message("menu", alice, ts=now - 1), inbox.message("status", alice, ts=now))

    queued = inbox.queued()
    assert len(queued) == 3
    assert [m["b"]["to"] for m in queued] == [alice] * 3
    first = queued[0]["b"]
    assert first["messaging_product"] == "whatsapp" and first["type"] == "text"
    assert first["text"]["body"] == "Hi Alice, it costs 10. Cheers!"
    assert first["biz_opaque_callback_data"] == str(queued[0]["o"])
    # The profile name in the second webhook ("Ana Lima") is the contact's name now.
    buttons = queued[1]["b"]["interactive"]
    assert buttons["type"] == "button" and buttons["body"]["text"] == "What do you need, Ana Lima?"
    assert buttons["action"]["buttons"] == [
        {"type": "reply", "reply": {"id": "Hours", "title": "Hours"}},
        {"type": "reply", "reply": {"id": "agent", "title": "Hi Ana"}}]
    assert buttons["footer"] == {"text": "pgwa"}
    template = queued[2]["b"]["template"]
    assert template["name"] == "order_update" and template["language"] == {"code": "en_US"}
    assert [p["text"] for p in template["components"][0]["parameters"]] == ["Ana Lima", "unknown"]

    rows = inbox.db.execute(
        """SELECT o.kind, o.state, i.direction, i.body FROM core.outbound_messages o
           JOIN core.inbox_messages i ON i.outbound_id = o.outbound_id
           WHERE o.outbound_id = ANY(%s) ORDER BY o.outbound_id""", ([m["o"] for m in queued],)).fetchall()
    assert rows == [("bot", "queued", "out", "Hi Alice, it costs 10. Cheers!"),
                    ("bot", "queued", "out", "What do you need, Ana Lima?"),
                    ("bot", "queued", "out", "order_update")]


def test_welcome_answers_only_the_first_message_in_24_hours(inbox: Inbox) -> None:
    inbox.rule("welcome", None, "Welcome!")
    inbox.rule("default", None, "Sorry?")
    alice, bob = inbox.sender(), inbox.sender()
    now = int(time.time())
    # Alice: two messages in one batch, then one 25 hours after her first (delivered late).
    inbox.deliver(inbox.message("hi", alice, ts=now - 90_000), inbox.message("anyone?", alice, ts=now - 89_990),
                  inbox.message("hello", bob, ts=now))
    assert inbox.replies_to(bob) == ["Welcome!"]
    # Alice's messages are over 24 hours old: no automatic reply reaches her.
    assert inbox.replies_to(alice) == []
    inbox.say("back again", alice, ts=now - 60)
    assert inbox.replies_to(alice) == ["Welcome!"]
    inbox.say("and again", alice, ts=now)
    assert inbox.replies_to(alice) == ["Welcome!", "Sorry?"]


def test_a_default_rule_answers_what_nothing_matched(inbox: Inbox) -> None:
    inbox.rule("default", None, "Sorry, I did not get that")
    inbox.rule("exact", "hours", "9 to 5")
    alice = inbox.sender()
    now = int(time.time())
    inbox.deliver(inbox.message("hours", alice, ts=now - 1), inbox.message("blah", alice, ts=now))
    assert inbox.replies_to(alice) == ["9 to 5", "Sorry, I did not get that"]
    assert inbox.llm_jobs() == []


def test_with_the_llm_enabled_unmatched_messages_go_to_it_before_the_default(inbox: Inbox) -> None:
    inbox.rule("default", None, "Sorry")
    inbox.rule("exact", "hours", "9 to 5")
    inbox.db.execute("SELECT api.configure_llm(%s, %s, true)", (inbox.tenant_id, inbox.number_id))
    alice, bob = inbox.sender(), inbox.sender()
    now = int(time.time())
    inbox.deliver(inbox.message("hours", alice, ts=now - 3), inbox.message("what is love", alice, ts=now - 2),
                  inbox.message("and why", alice, ts=now - 1), inbox.message("hmm", bob))
    assert inbox.replies_to(alice) == ["9 to 5"]
    assert inbox.replies_to(bob) == []
    jobs = inbox.llm_jobs()
    # One job per conversation, for its latest message.
    assert sorted((j["contact_id"], j["number_id"]) for j in jobs) == \
        sorted([(inbox.contact(alice), inbox.number_id), (inbox.contact(bob), inbox.number_id)])
    latest = inbox.db.execute("SELECT message_id FROM core.inbox_messages WHERE body = 'and why'").fetchone()[0]
    assert [j["message_id"] for j in jobs if j["contact_id"] == inbox.contact(alice)] == [latest]


def test_a_redelivered_webhook_is_not_answered_twice(inbox: Inbox) -> None:
    inbox.rule("exact", "hi", "hello")
    alice = inbox.sender()
    payload = inbox.message("hi", alice)
    inbox.deliver(payload)
    inbox.deliver(payload)
    assert inbox.replies_to(alice) == ["hello"]
    assert inbox.db.execute("SELECT unread FROM core.conversations").fetchone()[0] == 1


def test_a_batch_of_many_conversations_is_answered_in_one_pass(inbox: Inbox) -> None:
    for i in range(50):
        inbox.rule("exact", f"kw{i}", f"reply {i}", priority=i)
    inbox.rule("default", None, "fallback")
    senders = [inbox.sender() for _ in range(300)]
    inbox.deliver(*[inbox.message(f"KW{i % 60}", s) for i, s in enumerate(senders)])
    for i, s in enumerate(senders):
        assert inbox.replies_to(s) == [f"reply {i % 60}" if i % 60 < 50 else "fallback"]
    assert inbox.db.execute("SELECT count(*), sum(unread) FROM core.conversations").fetchone() == (300, 300)


def test_a_reply_is_claimed_while_the_next_webhook_batch_of_its_number_is_still_open(
        inbox: Inbox, db_url: str) -> None:
    # The next batch's inbox rows check their number by foreign key (FOR KEY SHARE on the
    # number's row) until it commits; at 1,000 messages/s one is nearly always open, and a
    # claim that skipped the number meanwhile left the replies queued before it waiting.
    inbox.rule("exact", "hi", "hello")
    alice, bob = inbox.sender(), inbox.sender()
    inbox.say("hi", alice)
    with psycopg.connect(db_url) as batch:
        batch.execute("SELECT api.ingest_webhook(%s)", (Jsonb(inbox.message("hi", bob)),))
        assert batch.execute("SELECT messages FROM api.process_webhooks(10)").fetchone() == (1,)
        inbox.db.execute("SET statement_timeout = '10s'")
        claimed = [r[0] for r in inbox.db.execute("SELECT body FROM api.claim_sends('w', 500)")]
        assert [b["to"] for b in claimed] == [alice]
        batch.commit()
    assert [r[0]["to"] for r in inbox.db.execute("SELECT body FROM api.claim_sends('w', 500)")] == [bob]


# --- opt-out ------------------------------------------------------------------------------

def test_stop_opts_out_confirms_and_silences_the_bots_until_start(inbox: Inbox) -> None:
    inbox.rule("contains", "stop", "a bot rule must not answer STOP")
    inbox.rule("default", None, "bot")
    alice = inbox.sender()
    inbox.say("  Stop ", alice)
    contact = inbox.db.execute("SELECT opted_out, opted_out_at IS NOT NULL FROM core.contacts WHERE wa_id = %s",
                               (alice,)).fetchone()
    assert contact == (True, True)
    assert inbox.replies_to(alice) == [
        "You have been unsubscribed and will get no more messages from us. Reply START to subscribe again."]
    inbox.say("hello?", alice)
    assert len(inbox.replies_to(alice)) == 1                  # an opted-out contact gets no bot replies
    inbox.say("start", alice)
    assert inbox.db.execute("SELECT opted_out, opted_out_at FROM core.contacts WHERE wa_id = %s",
                            (alice,)).fetchone() == (False, None)
    inbox.say("hello?", alice)
    assert inbox.replies_to(alice)[1:] == ["You are subscribed again. Reply STOP to unsubscribe.", "bot"]


def test_start_from_a_subscribed_contact_is_an_ordinary_message(inbox: Inbox) -> None:
    inbox.rule("exact", "start", "Let's begin")
    alice = inbox.sender()
    inbox.say("START", alice)
    assert inbox.replies_to(alice) == ["Let's begin"]


def test_stop_then_start_in_one_batch_ends_subscribed(inbox: Inbox) -> None:
    alice = inbox.sender()
    now = int(time.time())
    inbox.deliver(inbox.message("stop", alice, ts=now - 2), inbox.message("start", alice, ts=now - 1))
    assert inbox.db.execute("SELECT opted_out FROM core.contacts WHERE wa_id = %s", (alice,)).fetchone()[0] is False
    assert len(inbox.replies_to(alice)) == 2


def test_a_late_stop_is_honoured_but_not_confirmed(inbox: Inbox) -> None:
    alice = inbox.sender()
    inbox.say("stop", alice, ts=int(time.time()) - 2 * 86_400)
    assert inbox.db.execute("SELECT opted_out FROM core.contacts WHERE wa_id = %s", (alice,)).fetchone()[0] is True
    assert inbox.replies_to(alice) == []


def test_opt_out_keywords_and_confirmations_are_configurable(inbox: Inbox) -> None:
    row = inbox.db.execute(
        "SELECT * FROM api.configure_opt_out(%s, %s, %s, %s)",
        (inbox.tenant_id, ["Stop", "Baja", "darse de baja"], ["alta"], "Listo, {{name}} no aplica aquí")).fetchone()
    assert row[1] == ["BAJA", "DARSE DE BAJA", "STOP"] and row[2] == ["ALTA"]
    alice, bob = inbox.sender(), inbox.sender()
    inbox.deliver(inbox.message("bájá", alice), inbox.message("unsubscribe", bob))
    opted = dict(inbox.db.execute("SELECT wa_id, opted_out FROM core.contacts WHERE wa_id = ANY(%s)",
                                  ([alice, bob],)).fetchall())
    assert opted == {alice: True, bob: False}                 # UNSUBSCRIBE is no longer a keyword
    assert inbox.replies_to(alice) == ["Listo, {{name}} no aplica aquí"]
    for bad in (([], None), (["stop"], ["STOP"])):
        with pytest.raises(psycopg.Error) as exc:
            inbox.db.execute("SELECT api.configure_opt_out(%s, %s, %s)", (inbox.tenant_id, *bad))
        assert sqlstate(exc) == "PW100"


def create_campaign(inbox: Inbox, phones: list[str]) -> int:
    stage_csv(inbox.db, csv_text({"phone": p, "name": f"N{i}", "order_no": f"A-{i}"} for i, p in enumerate(phones)))
    templates = [{"name": "order_update", "language": "en_US",
                  "params": [{"column": "name"}, {"column": "order_no"}]}]
    return inbox.db.execute(queries["create_campaign"], {
        "tenant_id": inbox.tenant_id, "number_id": inbox.number_id, "name": f"c-{uuid.uuid4().hex[:6]}",
        "templates": Jsonb(templates), "on_invalid": "reject", "scheduled_at": None, "start": True,
        "default_country_code": None}).fetchone()[0]


def test_claim_sends_cancels_queued_campaign_messages_of_a_contact_who_opted_out(inbox: Inbox) -> None:
    p0, p1, p2, p3 = (inbox.sender() for _ in range(4))
    inbox.say("stop", p2)                                      # before: skipped at creation
    campaign = create_campaign(inbox, [p0, p1, p2, p3])
    assert inbox.db.execute("SELECT total, skipped_opted_out FROM core.campaigns WHERE campaign_id = %s",
                            (campaign,)).fetchone() == (3, 1)
    inbox.say("STOP", p0)                                      # after creation
    claimed = [r[0] for r in inbox.db.execute("SELECT body FROM api.claim_sends('w', 500)")]
    templates = sorted(b["to"] for b in claimed if b["type"] == "template")
    confirmations = sorted(b["to"] for b in claimed if b["type"] == "text")
    assert templates == sorted([p1, p3])
    assert confirmations == sorted([p0, p2])                   # replies still reach them
    row = inbox.db.execute(
        "SELECT state, error_category FROM core.outbound_messages o JOIN core.contacts c USING (contact_id) "
        "WHERE o.campaign_id = %s AND c.wa_id = %s", (campaign, p0)).fetchone()
    assert row == ("cancelled", "opted_out")
    assert inbox.db.execute("SELECT cancelled FROM core.campaigns WHERE campaign_id = %s",
                            (campaign,)).fetchone()[0] == 1
    assert inbox.db.execute("SELECT queue_length FROM pgmq.metrics(core.campaign_queue(%s))",
                            (campaign,)).fetchone()[0] == 2   # only the two in flight


def test_claim_sends_pays_nothing_for_opt_outs_older_than_the_running_campaigns(inbox: Inbox) -> None:
    p0, p1 = inbox.sender(), inbox.sender()
    inbox.say("stop", p0)
    inbox.db.execute("UPDATE core.contacts SET opted_out_at = now() - interval '1 day'")
    # Opted out again outside pgwa's keywords (as if imported): the campaign skips them.
    campaign = create_campaign(inbox, [p0, p1])
    cancelled = inbox.db.execute("SELECT core.cancel_opted_out(ARRAY(SELECT ROW('c', 1, 0, o.outbound_id, NULL)::core.claimed "
                                 "FROM core.outbound_messages o WHERE o.campaign_id = %s), %s, %s)",
                                 (campaign, inbox.tenant_id, inbox.number_id)).fetchone()[0]
    assert cancelled == 0


# --- the simulator ------------------------------------------------------------------------

async def _run_sender(db_url: str, sim_url: str, query: str, params: tuple, timeout: float = 30,
                      **settings) -> Sender:
    sender = Sender(Settings(database_url=db_url, graph_base_url=sim_url, worker_name="bots-test", **settings))
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            deadline = time.monotonic() + timeout
            while not (await (await conn.execute(query, params)).fetchone())[0]:
                assert time.monotonic() < deadline, f"timed out: {sender.stats}"
                assert not task.done(), task.result()
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    return sender


def sim_inbound(inbox: Inbox, sim, sim_receiver, wa_id: str, body: str) -> None:
    """The simulator's user writes; its webhook reaches pgwa as Meta's would."""
    before = len(sim_receiver.messages())
    sim.control("inbound", {"phone_number_id": inbox.pnid, "from": wa_id, "text": body, "name": "Sim User"})
    sim_receiver.wait_for(lambda r: len(r.messages()) > before, what="the inbound webhook")
    with sim_receiver.lock:
        posts = [p["json"] for p in sim_receiver.posts]
    sim_receiver.clear()
    inbox.deliver(*posts)


def test_a_bot_reply_goes_out_before_campaign_traffic_and_the_simulator_accepts_it(
        db_url: str, sim, sim_receiver) -> None:
    with psycopg.connect(db_url, autocommit=True) as db:
        inbox = Inbox.build(db, mps=20)
        inbox.rule("contains", "price", "It is 10, {{first_name}}")
        campaign = create_campaign(inbox, [inbox.sender() for _ in range(60)])
        alice = inbox.sender()
        sim_inbound(inbox, sim, sim_receiver, alice, "What is the PRICE?")
        # One request at a time: the simulator sees them in the order the worker starts
        # them (the order of their send_at), not in whichever order two concurrent
        # requests happen to arrive 50 ms apart on a loaded machine.
        asyncio.run(_run_sender(db_url, sim.url,
                                "SELECT count(*) = 61 FROM core.outbound_messages WHERE state = 'accepted'", (),
                                send_concurrency=1))
        ledger = sim.ledger(0)
        assert len(ledger) == 61
        # The reply was claimed first: the first request the simulator accepted.
        assert (ledger[0]["to"], ledger[0]["type"]) == (alice, "text")
        row = db.execute("SELECT kind, wamid IS NOT NULL FROM core.outbound_messages WHERE campaign_id IS NULL"
                         ).fetchone()
        assert row == ("bot", True)
        assert db.execute("SELECT status FROM core.campaigns WHERE campaign_id = %s", (campaign,)).fetchone()[0] \
            == "completed"


def test_the_simulator_refuses_a_free_form_reply_outside_its_window(db_url: str, sim) -> None:
    """The 24-hour rule is Meta's: a text to someone who never wrote fails with 131047."""
    with psycopg.connect(db_url, autocommit=True) as db:
        inbox = Inbox.build(db)
        stranger = inbox.sender()
        # pgwa believes the window is open (a webhook the simulator never sent).
        inbox.say("hi", stranger)
        outbound = db.execute("SELECT (core.enqueue_replies(ARRAY[ROW(%s, %s, 'agent', %s)::core.reply_request])).outbound_id",
                              (inbox.number_id, inbox.contact(stranger),
                               Jsonb({"type": "text", "text": {"body": "hello"}}))).fetchone()[0]
        asyncio.run(_run_sender(db_url, sim.url,
                                "SELECT state = 'failed' FROM core.outbound_messages WHERE outbound_id = %s",
                                (outbound,)))
        assert db.execute("SELECT error_code FROM core.outbound_messages WHERE outbound_id = %s",
                          (outbound,)).fetchone()[0] == 131047
