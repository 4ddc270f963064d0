"""Outbound events in SQL: each change queues its event in its own transaction (and a
rolled-back change queues nothing), nothing is queued for a tenant without an endpoint,
the claim keeps endpoints in their own lanes, failures back off and are dead-lettered
after the retry window, replays queue the same event again, and no tenant sees, moves
or receives another's. Time is passed as p_now; nothing sleeps."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import orjson
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from pgwa import cli
from pgwa.queries import queries
from tests import factories
from tests.test_bots import Inbox

URL = "http://127.0.0.1:9/hooks"
ALL_TYPES = ["message.status", "message.inbound", "campaign.completed", "campaign.paused",
             "contact.opted_out", "contact.opted_in", "template.status"]


# -- helpers ---------------------------------------------------------------------------------

def allow_local(db: psycopg.Connection) -> None:
    factories.settings(db, event_allow_private_urls=True)


def endpoint(db: psycopg.Connection, tenant_id: int, types: list[str], url: str = URL,
             secret: str | None = None) -> dict[str, Any]:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM api.create_event_endpoint(%s, %s, %s, %s)",
                           (tenant_id, url, types, secret)).fetchone()


def events(db: psycopg.Connection, tenant_id: int | None = None) -> list[dict[str, Any]]:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT event_id, tenant_id, event_type, data FROM core.events "
                           "WHERE %s::bigint IS NULL OR tenant_id = %s ORDER BY event_id",
                           (tenant_id, tenant_id)).fetchall()


def queued(db: psycopg.Connection, endpoint_id: int) -> list[int]:
    """The event ids waiting on the endpoint's pgmq queue."""
    queue = db.execute("SELECT core.event_queue(%s)", (endpoint_id,)).fetchone()[0]
    return [r[0] for r in db.execute(sql.SQL("SELECT (message->>'e')::bigint FROM pgmq.{} ORDER BY msg_id")
                                     .format(sql.Identifier("q_" + queue)))]


def claim(db: psycopg.Connection, max_rows: int = 100, busy: list[int] | None = None, now: Any = None
          ) -> list[dict[str, Any]]:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM api.claim_events('test', %s, %s::bigint[], %s)",
                           (max_rows, busy or [], now)).fetchall()


def report(db: psycopg.Connection, rows: list[dict], ok: bool, now: Any = None, status: int | None = None
           ) -> dict[str, int]:
    results = [{"endpoint_id": r["endpoint_id"], "event_id": r["event_id"], "msg_id": r["msg_id"], "ok": ok,
                "http_status": status if status is not None else (200 if ok else 503),
                "error": None if ok else "HTTP 503"} for r in rows]
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM api.report_events(%s::jsonb, %s)",
                           (orjson.dumps(results).decode(), now)).fetchone()


def delivery(db: psycopg.Connection, endpoint_id: int, event_id: int) -> dict[str, Any]:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM core.event_deliveries WHERE endpoint_id = %s AND event_id = %s",
                           (endpoint_id, event_id)).fetchone()


def now(db: psycopg.Connection) -> Any:
    return factories.clock(db)


def sqlstate(exc: pytest.ExceptionInfo) -> str:
    return exc.value.diag.sqlstate


# -- the changes that cause each event -------------------------------------------------------

def _status(db: psycopg.Connection, acc: factories.Account) -> None:
    factories.running_campaign(db, acc, 2)
    rows = factories.claim_all(db)
    factories.report(db, [factories.ok(r) for r in rows])


def _paused(db: psycopg.Connection, acc: factories.Account) -> None:
    cid = factories.running_campaign(db, acc, 2)
    db.execute(queries["pause_campaign"], {"tenant_id": acc.tenant_id, "campaign_id": cid})


def _completed(db: psycopg.Connection, acc: factories.Account) -> None:
    cid = factories.running_campaign(db, acc, 1)
    rows = factories.claim_all(db)
    factories.report(db, [factories.ok(r) for r in rows])
    db.execute("SELECT core.complete_campaigns(ARRAY[%s]::bigint[], NULL)", (cid,))
    assert factories.campaign(db, cid)["status"] == "completed"


def _opted_out(db: psycopg.Connection, acc: factories.Account) -> None:
    db.execute("SELECT api.set_contact_opt_out(%s, true, NULL, '+14155550199')", (acc.tenant_id,))


def _opted_in(db: psycopg.Connection, acc: factories.Account) -> None:
    _opted_out(db, acc)
    db.execute("SELECT api.set_contact_opt_out(%s, false, NULL, '+14155550199')", (acc.tenant_id,))


def _template(db: psycopg.Connection, acc: factories.Account) -> None:
    factories.template(db, acc, "promo", factories.PROMO, status="PAUSED")


CHANGES: dict[str, Callable[[psycopg.Connection, factories.Account], None]] = {
    "message.status": _status, "campaign.paused": _paused, "campaign.completed": _completed,
    "contact.opted_out": _opted_out, "contact.opted_in": _opted_in, "template.status": _template,
}


@pytest.mark.parametrize("event_type", CHANGES)
def test_each_event_is_queued_in_the_transaction_of_its_change_and_not_when_it_rolls_back(
        db: psycopg.Connection, event_type: str) -> None:
    allow_local(db)
    acc = factories.account(db)
    ep = endpoint(db, acc.tenant_id, [event_type])
    with db.transaction(force_rollback=True):
        CHANGES[event_type](db, acc)
        inside = [e for e in events(db) if e["event_type"] == event_type]
        assert inside, "the event is there before the change commits"
    assert events(db) == [] and queued(db, ep["endpoint_id"]) == []
    assert db.execute("SELECT count(*) FROM core.event_deliveries").fetchone()[0] == 0

    CHANGES[event_type](db, acc)
    mine = [e for e in events(db) if e["event_type"] == event_type]
    assert mine and all(e["tenant_id"] == acc.tenant_id for e in mine)
    # Only the types the endpoint asked for; each on its queue once.
    assert {e["event_type"] for e in events(db)} == {event_type}
    assert queued(db, ep["endpoint_id"]) == [e["event_id"] for e in mine]


def test_the_payloads_carry_what_the_tenant_may_see_and_no_token(db: psycopg.Connection) -> None:
    allow_local(db)
    acc = factories.account(db)
    endpoint(db, acc.tenant_id, ALL_TYPES)
    for change in CHANGES.values():
        change(db, acc)
    found = events(db)
    kinds = {e["event_type"] for e in found}
    assert kinds == set(CHANGES)
    status = next(e["data"] for e in found if e["event_type"] == "message.status")
    assert status["status"] == "accepted" and status["previous_status"] == "in_flight"
    assert status["wamid"].startswith("wamid.") and status["recipient"]["wa_id"]
    assert status["phone_number_id"] == acc.phone_number_id
    paused = next(e["data"] for e in found if e["event_type"] == "campaign.paused")
    assert paused["status"] == "paused" and paused["total"] == 2
    template = next(e["data"] for e in found if e["event_type"] == "template.status")
    assert (template["name"], template["status"], template["previous_status"]) == ("promo", "PAUSED", "APPROVED")
    text = orjson.dumps([e["data"] for e in found]).decode()
    assert acc.access_token not in text and "secret" not in text
    # The body the worker sends: id, type, created_at (UTC) and data.
    [row] = claim(db, 1)
    body = orjson.loads(row["body"])
    assert set(body) == {"id", "type", "created_at", "data"} and body["created_at"].endswith("Z")


def test_an_inbound_message_and_a_stop_keyword_arrive_as_events(db: psycopg.Connection) -> None:
    allow_local(db)
    inbox = Inbox.build(db)
    endpoint(db, inbox.tenant_id, ["message.inbound", "contact.opted_out"])
    sender = inbox.sender()
    inbox.say("Where is my order?", sender)
    inbox.say("STOP", sender)
    found = [(e["event_type"], e["data"]) for e in events(db)]
    inbound = [d for t, d in found if t == "message.inbound"]
    assert [d["text"] for d in inbound] == ["Where is my order?", "STOP"]
    assert inbound[0]["from"]["wa_id"] == sender and inbound[0]["phone_number_id"] == inbox.pnid
    assert [d["wa_id"] for t, d in found if t == "contact.opted_out"] == [sender]


def test_without_an_endpoint_for_the_type_nothing_is_queued(db: psycopg.Connection) -> None:
    allow_local(db)
    acc = factories.account(db)
    endpoint(db, acc.tenant_id, ["template.status"])      # wants something else
    for name, change in CHANGES.items():
        if name != "template.status":
            change(db, acc)
    assert events(db) == []
    assert db.execute("SELECT count(*) FROM core.event_deliveries").fetchone()[0] == 0


def test_a_status_that_does_not_move_the_message_is_no_event(db: psycopg.Connection) -> None:
    allow_local(db)
    acc = factories.account(db)
    endpoint(db, acc.tenant_id, ["message.status"])
    factories.running_campaign(db, acc, 1)
    rows = factories.claim_all(db)
    assert [e["data"]["status"] for e in events(db)] == []       # queued -> in_flight: not an event
    factories.report(db, [factories.ok(r) for r in rows])
    db.execute("UPDATE core.outbound_messages SET error_detail = 'x'")     # no state change
    assert [e["data"]["status"] for e in events(db)] == ["accepted"]


# -- tenants ---------------------------------------------------------------------------------

def test_another_tenants_endpoint_never_receives_its_events_nor_sees_or_moves_them(db: psycopg.Connection) -> None:
    allow_local(db)
    a, b = factories.account(db), factories.account(db)
    ep_a = endpoint(db, a.tenant_id, ALL_TYPES)
    ep_b = endpoint(db, b.tenant_id, ALL_TYPES)
    for change in CHANGES.values():
        change(db, a)
    assert events(db, b.tenant_id) == []
    assert queued(db, ep_b["endpoint_id"]) == []
    mine = events(db, a.tenant_id)
    assert mine and queued(db, ep_a["endpoint_id"]) == [e["event_id"] for e in mine]
    event_id = mine[0]["event_id"]
    # B sees none of A's events or endpoints, and cannot act on them.
    assert db.execute("SELECT count(*) FROM api.outbound_events(%s)", (b.tenant_id,)).fetchone()[0] == 0
    assert [r[0] for r in db.execute("SELECT endpoint_id FROM api.event_endpoints(%s)", (b.tenant_id,))] == \
        [ep_b["endpoint_id"]]
    for statement, args, code in (
            ("SELECT api.replay_event(%s, %s)", (b.tenant_id, event_id), "PW231"),
            ("SELECT api.replay_event(%s, %s, %s)", (b.tenant_id, event_id, ep_a["endpoint_id"]), "PW231"),
            ("SELECT * FROM api.outbound_events(%s, %s)", (b.tenant_id, ep_a["endpoint_id"]), "PW230"),
            ("SELECT api.delete_event_endpoint(%s, %s)", (b.tenant_id, ep_a["endpoint_id"]), "PW230"),
            ("SELECT api.test_event_endpoint(%s, %s)", (b.tenant_id, ep_a["endpoint_id"]), "PW230")):
        with pytest.raises(psycopg.Error) as exc:
            db.execute(statement, args)
        assert sqlstate(exc) == code, statement
    # A's own replay of one of B's deliveries (wrong endpoint) is not found either.
    with pytest.raises(psycopg.Error) as exc:
        db.execute("SELECT api.replay_event(%s, %s, %s)", (a.tenant_id, event_id, ep_b["endpoint_id"]))
    assert sqlstate(exc) == "PW231"
    assert len(queued(db, ep_a["endpoint_id"])) == len(mine)
    assert db.execute("SELECT count(*) FROM core.event_endpoints").fetchone()[0] == 2


def test_secrets_are_shown_once_and_only_the_worker_may_read_them(db: psycopg.Connection, login) -> None:
    allow_local(db)
    acc = factories.account(db)
    created = endpoint(db, acc.tenant_id, ["message.status"])
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40
    given = endpoint(db, acc.tenant_id, ["message.status"], secret="a-secret-of-my-own-choosing")
    assert given["secret"] == "a-secret-of-my-own-choosing"
    listed = db.execute("SELECT to_jsonb(e)::text FROM api.event_endpoints(%s) e", (acc.tenant_id,)).fetchall()
    assert len(listed) == 2 and all(created["secret"] not in r[0] and "choosing" not in r[0] for r in listed)
    api_role, worker_role = login("pgwa_api"), login("pgwa_worker")
    for statement in ("SELECT * FROM api.claim_events('x', 1)", "SELECT secret FROM core.event_endpoints"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            api_role.execute(statement)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        worker_role.execute("SELECT secret FROM core.event_endpoints")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        worker_role.execute("SELECT * FROM api.create_event_endpoint(1, 'https://x.example', '{message.status}')")
    worker_role.execute("SELECT * FROM api.claim_events('x', 1)")
    assert api_role.execute("SELECT count(*) FROM api.event_endpoints(%s)", (acc.tenant_id,)).fetchone()[0] == 2


@pytest.mark.parametrize("url, reason", [
    ("ftp://example.com/x", "not an http"), ("https://user:pw@example.com/x", "credentials"),
    ("http://127.0.0.1:8080/x", "loopback"), ("http://10.1.2.3/x", "private"), ("http://[::1]/x", "loopback"),
    ("http://169.254.169.254/latest", "link-local"), ("http://localhost:9/x", "local"),
    ("https://exa mple.com", "not an http"),
])
def test_endpoints_on_local_or_private_addresses_or_malformed_urls_are_refused(
        db: psycopg.Connection, url: str, reason: str) -> None:
    acc = factories.account(db, with_templates=False)
    with pytest.raises(psycopg.Error) as exc:
        endpoint(db, acc.tenant_id, ["message.status"], url=url)
    assert sqlstate(exc) == "PW100" and reason in exc.value.diag.message_primary
    assert db.execute("SELECT count(*) FROM core.event_endpoints").fetchone()[0] == 0


def test_unknown_or_missing_event_types_are_refused_with_the_known_ones_in_the_hint(db: psycopg.Connection) -> None:
    acc = factories.account(db, with_templates=False)
    for types in ([], ["message.status", "message.sent"], ["endpoint.test"]):
        with pytest.raises(psycopg.Error) as exc:
            endpoint(db, acc.tenant_id, types, url="https://hooks.example.com/pgwa")
        assert sqlstate(exc) == "PW100" and "template.status" in exc.value.diag.message_hint
    created = endpoint(db, acc.tenant_id, ["message.status", "message.status"], url="https://hooks.example.com/p")
    assert created["event_types"] == ["message.status"]


# -- claim, back-off, dead letters, replay ---------------------------------------------------

def test_a_failure_backs_off_then_the_event_is_dead_after_the_window_and_a_replay_delivers_it(
        db: psycopg.Connection) -> None:
    allow_local(db)
    acc = factories.account(db)
    ep = endpoint(db, acc.tenant_id, ["contact.opted_out"])["endpoint_id"]
    _opted_out(db, acc)
    t0 = now(db)
    [first] = claim(db, now=t0)
    assert first["attempt"] == 1 and first["url"] == URL
    assert report(db, [first], ok=False, now=t0) == {"delivered": 0, "retried": 1, "dead": 0}
    d = delivery(db, ep, first["event_id"])
    assert d["status"] == "pending" and d["attempts"] == 1 and d["next_attempt_at"] == factories.later(t0, 5)
    assert d["last_http_status"] == 503 and d["last_error"] == "HTTP 503"
    assert claim(db, now=factories.later(t0, 4)) == []          # backing off
    # Retried with growing back-off for the whole window (24 hours), never dead before it.
    t, attempts = t0, 1
    while True:
        t = factories.later(t, 3600)
        rows = claim(db, now=t)
        if not rows:
            continue
        assert [r["event_id"] for r in rows] == [first["event_id"]]
        attempts += 1
        assert rows[0]["attempt"] == attempts
        outcome = report(db, rows, ok=False, now=t)
        if outcome["dead"]:
            break
        assert t - t0 < timedelta(hours=24)
    assert t - t0 >= timedelta(hours=24)
    d = delivery(db, ep, first["event_id"])
    assert d["status"] == "dead" and d["dead_at"] == t and queued(db, ep) == []
    assert claim(db, now=factories.later(t, 7200)) == []
    listed = db.execute("SELECT event_id FROM api.outbound_events(%s, %s, 'dead')", (acc.tenant_id, ep)).fetchall()
    assert listed == [(first["event_id"],)]
    # Replayed: the same event, pending again with a fresh window, delivered.
    assert db.execute("SELECT api.replay_event(%s, %s, NULL, %s)", (acc.tenant_id, first["event_id"], t)
                      ).fetchone()[0] == 1
    assert db.execute("SELECT api.replay_event(%s, %s)", (acc.tenant_id, first["event_id"])).fetchone()[0] == 0
    [again] = claim(db, now=factories.later(t, 1))
    assert (again["event_id"], again["body"]) == (first["event_id"], first["body"])
    assert report(db, [again], ok=True, now=factories.later(t, 1))["delivered"] == 1
    d = delivery(db, ep, first["event_id"])
    assert (d["status"], d["replays"], d["last_error"]) == ("delivered", 1, None) and queued(db, ep) == []


def test_a_failing_endpoint_is_probed_with_one_event_and_its_backlog_dies_after_the_window(
        db: psycopg.Connection) -> None:
    allow_local(db)
    acc = factories.account(db)
    ep = endpoint(db, acc.tenant_id, ["contact.opted_out"])["endpoint_id"]
    for i in range(5):
        db.execute("SELECT api.set_contact_opt_out(%s, true, NULL, %s)", (acc.tenant_id, f"+1415555{i:04d}"))
    t0 = now(db)
    rows = claim(db, now=t0)
    assert len(rows) == 5
    report(db, rows[:1], ok=False, now=t0)           # the endpoint fails twice ...
    report(db, rows[1:], ok=False, now=t0)
    assert claim(db, now=factories.later(t0, 14)) == []       # ... and backs off 15 s
    probe = claim(db, now=factories.later(t0, 16))
    assert len(probe) == 1                            # ... then gets one event at a time
    report(db, probe, ok=False, now=factories.later(t0, 16))
    late = factories.later(t0, 86400 + 60)
    probe = claim(db, now=late)
    assert len(probe) == 1
    assert report(db, probe, ok=False, now=late)["dead"] == 5     # the probe and those behind it
    assert queued(db, ep) == []
    assert db.execute("SELECT count(*) FROM core.event_deliveries WHERE status = 'dead'").fetchone()[0] == 5


def test_a_dead_or_busy_endpoint_does_not_hold_another_endpoints_events(db: psycopg.Connection) -> None:
    allow_local(db)
    a, b = factories.account(db), factories.account(db)
    dead = endpoint(db, a.tenant_id, ["contact.opted_out"], url="http://127.0.0.1:9/dead")["endpoint_id"]
    for i in range(200):
        db.execute("SELECT api.set_contact_opt_out(%s, true, NULL, %s)", (a.tenant_id, f"+1415666{i:04d}"))
    live = endpoint(db, b.tenant_id, ["contact.opted_out"], url="http://127.0.0.1:9/live")["endpoint_id"]
    db.execute("SELECT api.set_contact_opt_out(%s, true, NULL, '+14157770000')", (b.tenant_id,))
    t0 = now(db)
    # One claim: the dead endpoint's backlog is capped at its lane's share; the other's event comes too.
    rows = claim(db, 1000, now=t0)
    by_lane = {e: [r for r in rows if r["endpoint_id"] == e] for e in (dead, live)}
    assert len(by_lane[live]) == 1 and len(by_lane[dead]) == 64      # 4 x event_lane_concurrency
    # The worker says the dead lane is full: nothing more of it, the other lane still served.
    db.execute("SELECT api.set_contact_opt_out(%s, true, NULL, '+14157770001')", (b.tenant_id,))
    rows = claim(db, 1000, busy=[dead], now=now(db))
    assert [r["endpoint_id"] for r in rows] == [live]
    # Once it failed, it backs off and the other endpoint's new events go at once.
    report(db, by_lane[dead], ok=False, now=t0)
    db.execute("SELECT api.set_contact_opt_out(%s, true, NULL, '+14157770002')", (b.tenant_id,))
    rows = claim(db, 1000, now=now(db))
    assert [r["endpoint_id"] for r in rows] == [live]


def test_a_test_event_goes_to_the_one_endpoint_and_deleting_an_endpoint_drops_its_queue(
        db: psycopg.Connection) -> None:
    allow_local(db)
    acc = factories.account(db)
    one = endpoint(db, acc.tenant_id, ["message.status"])["endpoint_id"]
    two = endpoint(db, acc.tenant_id, ["message.status"])["endpoint_id"]
    event_id = db.execute("SELECT api.test_event_endpoint(%s, %s)", (acc.tenant_id, one)).fetchone()[0]
    assert queued(db, one) == [event_id] and queued(db, two) == []
    # /metrics and core.queue_depths count every endpoint's queue under one kind, by no id.
    kinds = dict(db.execute("SELECT queue_name, kind FROM core.queue_depths").fetchall())
    assert kinds[db.execute("SELECT core.event_queue(%s)", (two,)).fetchone()[0]] == "events"
    assert f"ev_{two}" not in db.execute("SELECT api.metrics()").fetchone()[0]
    [row] = claim(db)
    assert row["event_type"] == "endpoint.test" and row["endpoint_id"] == one
    assert db.execute("SELECT api.delete_event_endpoint(%s, %s)", (acc.tenant_id, one)).fetchone()[0] == one
    assert db.execute("SELECT count(*) FROM pgmq.meta WHERE queue_name = core.event_queue(%s)", (one,)
                      ).fetchone()[0] == 0
    # The report of a delivery whose endpoint is gone changes nothing and fails nothing.
    assert report(db, [row], ok=True) == {"delivered": 0, "retried": 0, "dead": 0}


def test_retention_deletes_settled_events_and_keeps_pending_ones(db: psycopg.Connection) -> None:
    allow_local(db)
    acc = factories.account(db)
    endpoint(db, acc.tenant_id, ["contact.opted_out"])
    _opted_out(db, acc)
    db.execute("SELECT api.set_contact_opt_out(%s, true, NULL, '+14155550198')", (acc.tenant_id,))
    rows = claim(db)
    report(db, rows[:1], ok=True)
    later = factories.later(now(db), 8 * 86400)
    assert db.execute("SELECT core.prune_events(%s)", (later,)).fetchone()[0] == 1
    assert [e["event_id"] for e in events(db)] == [rows[1]["event_id"]]
    assert db.execute("SELECT core.prune_events()").fetchone()[0] == 0


def test_the_cli_adds_lists_and_removes_endpoints_and_lists_and_replays_events(
        db: psycopg.Connection, db_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("COLUMNS", "200")
    allow_local(db)
    acc = factories.account(db, with_templates=False)
    tenant = str(acc.tenant_id)

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = run("endpoint", "add", URL, "--tenant", tenant, "--events", "contact.opted_out,message.status")
    assert code == 0 and out.strip().startswith("whsec_") and "shown once" in err
    secret = out.strip()
    ep = db.execute("SELECT endpoint_id FROM core.event_endpoints").fetchone()[0]
    code, out, _ = run("endpoint", "list", "--tenant", tenant)
    assert code == 0 and URL in out and "contact.opted_out" in out and secret not in out
    _opted_out(db, acc)
    [row] = claim(db)
    report(db, [row], ok=True)
    code, out, _ = run("event", "list", "--tenant", tenant, "--status", "delivered")
    assert code == 0 and "contact.opted_out" in out and "delivered" in out
    code, out, _ = run("event", "replay", str(row["event_id"]), "--tenant", tenant)
    assert code == 0 and "1 delivery queued again" in out
    assert queued(db, ep) == [row["event_id"]]
    other = factories.account(db, with_templates=False)
    code, _, err = run("event", "replay", str(row["event_id"]), "--tenant", str(other.tenant_id))
    assert code == 1 and "PW231" in err
    code, _, err = run("endpoint", "add", URL, "--tenant", tenant, "--events", "nope")
    assert code == 1 and "PW100" in err and "message.inbound" in err
    code, out, _ = run("endpoint", "remove", str(ep), "--tenant", tenant)
    assert code == 0 and db.execute("SELECT count(*) FROM core.event_endpoints").fetchone()[0] == 0


def test_deleting_an_endpoint_waits_for_a_change_queuing_to_it_and_never_fails_that_change(
        db: psycopg.Connection, db_url: str) -> None:
    allow_local(db)
    acc = factories.account(db, with_templates=False)
    ep = endpoint(db, acc.tenant_id, ["contact.opted_out"])["endpoint_id"]
    with psycopg.connect(db_url) as change, psycopg.connect(db_url, autocommit=True) as admin:
        change.execute("SELECT api.set_contact_opt_out(%s, true, NULL, '+14155550197')", (acc.tenant_id,))
        admin.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            admin.execute("SELECT api.delete_event_endpoint(%s, %s)", (acc.tenant_id, ep))
        change.commit()
        assert queued(db, ep) != []
        admin.execute("SELECT api.delete_event_endpoint(%s, %s)", (acc.tenant_id, ep))
    # Once it is gone, the same change queues nothing and still commits.
    db.execute("SELECT api.set_contact_opt_out(%s, true, NULL, '+14155550196')", (acc.tenant_id,))
    assert db.execute("SELECT count(*) FROM core.event_deliveries").fetchone()[0] == 0
    assert len(events(db)) == 1
