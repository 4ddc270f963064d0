"""Registration proves ownership (issue 11): attacks on POST /v1/numbers, over HTTP against
``python -m api`` whose Graph API is the simulator, and the operator-only transfer.

Tenant A holds a number the usual way; tenant B holds its own. The simulator knows both
as Meta would: each token reads the WABA it was declared with, and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import orjson
import psycopg
import pytest

from pgwa import cli
from pgwa.local.stack import free_port
from tests.api_support import Tenant, live_server, new_tenant

NEW_PNID, NEW_DISPLAY, NEW_NAME = "770000001", "+1 555-010-0001", "Bravo Coffee"


@dataclass
class World:
    a: Tenant
    b: Tenant
    url: str
    sim: object

    def register(self, who: Tenant, **body: object) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/numbers", json=body, headers=who.headers, timeout=30)


def declare(sim, pnid: str, waba: str, token: str, display: str | None = None, **extra: object) -> None:
    """The number as Meta has it: in this WABA, readable by this token."""
    sim.control("numbers", {"phone_number_id": pnid, "waba_id": waba, "token": token,
                            "display_phone_number": display or f"1555{pnid[-7:]}", **extra})


@pytest.fixture
def world(db: psycopg.Connection, db_url: str, sim) -> Iterator[World]:
    a, b = new_tenant(db, with_templates=False), new_tenant(db, with_templates=False)
    for t in (a, b):
        declare(sim, t.acc.phone_number_id, t.acc.waba_id, t.acc.access_token)
    with live_server(db_url, GRAPH_BASE_URL=sim.url) as url:
        yield World(a, b, url, sim)


def numbers(db: psycopg.Connection) -> list[tuple]:
    return db.execute("""SELECT phone_number_id, tenant_id, waba_id, access_token, app_secret
                         FROM core.wa_numbers ORDER BY number_id""").fetchall()


def notifications(db: psycopg.Connection, kind: str) -> list[tuple]:
    return db.execute("""SELECT tenant_id, message, details FROM core.notifications
                         WHERE kind = %s ORDER BY notification_id""", (kind,)).fetchall()


def error(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_an_honest_registration_stores_what_meta_reported(db, world: World) -> None:
    declare(world.sim, NEW_PNID, world.b.acc.waba_id, world.b.acc.access_token, NEW_DISPLAY,
            verified_name=NEW_NAME, quality_rating="YELLOW")
    world.sim.control("tier", {"waba_id": world.b.acc.waba_id, "tier": "TIER_2K"})
    response = world.register(world.b, phone_number_id=NEW_PNID, waba_id=world.b.acc.waba_id,
                              access_token=world.b.acc.access_token, display_phone_number="+1 999 I-SAY-SO")
    assert response.status_code == 201, response.text
    row = db.execute("""SELECT tenant_id, display_phone_number, verified_name, quality_rating, verified_at IS NOT NULL
                        FROM core.wa_numbers WHERE number_id = %s""", (response.json()["number_id"],)).fetchone()
    assert row == (world.b.acc.tenant_id, NEW_DISPLAY, NEW_NAME, "YELLOW", True)
    # Meta's messaging-limit tier of the portfolio came with the number.
    assert db.execute("""SELECT p.tier, p.messaging_limit FROM core.wa_numbers n
                        JOIN core.portfolios p USING (portfolio_id) WHERE n.number_id = %s""",
                      (response.json()["number_id"],)).fetchone() == ("TIER_2K", 2000)


def test_another_tenants_number_with_ones_own_token_is_refused_and_changes_nothing(db, world: World) -> None:
    before = numbers(db)
    # B names A's number, with B's own token, under A's WABA and under B's own.
    for waba in (world.a.acc.waba_id, world.b.acc.waba_id):
        response = world.register(world.b, phone_number_id=world.a.acc.phone_number_id, waba_id=waba,
                                  access_token=world.b.acc.access_token, app_secret="evil")
        assert error(response) == (403, "PW416"), response.text
        assert "cannot read" in response.json()["error"]["message"] and response.json()["error"]["hint"]
        assert world.b.acc.access_token not in response.text
    assert numbers(db) == before
    assert notifications(db, "app_secret_changed") == []


def test_a_number_the_waba_does_not_hold_is_refused(db, world: World) -> None:
    # B's token also reads another WABA of B's; B's number is not in it.
    other_waba = "990000077"
    declare(world.sim, "990000078", other_waba, world.b.acc.access_token)
    before = numbers(db)
    response = world.register(world.b, phone_number_id=world.b.acc.phone_number_id, waba_id=other_waba,
                              access_token=world.b.acc.access_token)
    assert error(response) == (422, "PW115"), response.text
    assert other_waba in response.json()["error"]["message"]
    # A WABA the token cannot read at all says the same.
    response = world.register(world.b, phone_number_id=world.b.acc.phone_number_id, waba_id=world.a.acc.waba_id,
                              access_token=world.b.acc.access_token)
    assert error(response) == (422, "PW115"), response.text
    assert numbers(db) == before


def test_a_token_meta_rejects_is_refused(db, world: World) -> None:
    before = numbers(db)
    forged = "EAAG-forged-token-0000"
    response = world.register(world.b, phone_number_id=world.b.acc.phone_number_id, waba_id=world.b.acc.waba_id,
                              access_token=forged)
    assert error(response) == (403, "PW415"), response.text
    assert "190" in response.json()["error"]["message"] and "token" in response.json()["error"]["hint"]
    assert forged not in response.text
    assert numbers(db) == before


def test_meta_failing_or_unreachable_is_an_upstream_error(db, db_url: str, world: World) -> None:
    before = numbers(db)
    body = {"phone_number_id": world.b.acc.phone_number_id, "waba_id": world.b.acc.waba_id,
            "access_token": world.b.acc.access_token}
    world.sim.faults(read_error_rates={"http_500": 1.0})
    response = world.register(world.b, **body)
    assert error(response) == (502, "PW515"), response.text
    assert "retry" in response.json()["error"]["hint"]
    # Nothing listens on this port: the Graph API cannot be reached at all.
    with live_server(db_url, GRAPH_BASE_URL=f"http://127.0.0.1:{free_port()}") as down:
        response = httpx.post(f"{down}/v1/numbers", json=body, headers=world.b.headers, timeout=30)
    assert error(response) == (502, "PW515"), response.text
    assert numbers(db) == before


def test_a_malformed_id_is_refused_before_any_url_is_built(db, world: World) -> None:
    response = world.register(world.b, phone_number_id="../../me/accounts", waba_id=world.b.acc.waba_id,
                              access_token=world.b.acc.access_token)
    assert error(response) == (400, "PW100"), response.text


def test_setting_and_clearing_the_app_secret_is_audited_without_the_secret(db, world: World) -> None:
    first, second = "s3cret-first-7f1d", "s3cret-second-9a2c"
    base = {"phone_number_id": world.b.acc.phone_number_id, "waba_id": world.b.acc.waba_id,
            "access_token": world.b.acc.access_token}
    secret = "SELECT app_secret FROM core.wa_numbers WHERE number_id = %s"
    steps = [(first, first, ["set"]), (None, first, ["set"]), (second, second, ["set", "changed"]),
             ("", None, ["set", "changed", "cleared"]), (None, None, ["set", "changed", "cleared"])]
    for given, stored, actions in steps:
        body = base if given is None else {**base, "app_secret": given}
        assert world.register(world.b, **body).status_code == 201
        assert db.execute(secret, (world.b.acc.number_id,)).fetchone()[0] == stored
        assert [d["action"] for _, _, d in notifications(db, "app_secret_changed")] == actions
    assert {t for t, _, _ in notifications(db, "app_secret_changed")} == {world.b.acc.tenant_id}
    listed = httpx.get(f"{world.url}/v1/notifications", headers=world.b.headers).text
    assert "app_secret_changed" in listed
    raw = orjson.dumps(notifications(db, "app_secret_changed")).decode() + listed
    for s in (first, second):
        assert s not in raw and s[:8] not in raw


# -- the SQL decides: a client role cannot skip the check, nor move a number -----------------

def test_the_api_role_cannot_register_without_metas_answer(db, login) -> None:
    a = new_tenant(db, with_templates=False)
    client = login("pgwa_api")
    with pytest.raises(psycopg.Error) as refused:
        client.execute("SELECT api.register_number(%s, '770000002', %s, 'tok')", (a.acc.tenant_id, a.acc.waba_id))
    assert refused.value.diag.sqlstate == "PW417" and refused.value.diag.message_hint
    assert db.execute("SELECT count(*) FROM core.wa_numbers WHERE phone_number_id = '770000002'").fetchone()[0] == 0
    # Another tenant's number stays a conflict even with an answer that vouches for it.
    b = new_tenant(db, with_templates=False)
    verified = orjson.dumps({"id": a.acc.phone_number_id, "waba_id": b.acc.waba_id,
                             "display_phone_number": "15550000000"}).decode()
    with pytest.raises(psycopg.Error) as conflict:
        client.execute("SELECT api.register_number(%s, %s, %s, 'tok', NULL, 80, NULL, %s::jsonb)",
                       (b.acc.tenant_id, a.acc.phone_number_id, b.acc.waba_id, verified))
    assert conflict.value.diag.sqlstate == "PW302"


def test_the_transfer_is_refused_to_the_api_role(db, login) -> None:
    a, b = new_tenant(db, with_templates=False), new_tenant(db, with_templates=False)
    client = login("pgwa_api")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        client.execute("SELECT api.transfer_number(%s, %s)", (a.acc.phone_number_id, b.acc.tenant_id))
    assert db.execute("SELECT tenant_id FROM core.wa_numbers WHERE number_id = %s",
                      (a.acc.number_id,)).fetchone()[0] == a.acc.tenant_id
    assert notifications(db, "number_transferred") == []


def test_the_operator_transfers_a_number_and_the_new_tenant_registers_it_with_its_own_token(
        db, world: World) -> None:
    a, b = world.a, world.b
    db.execute("SELECT api.register_number(%s, %s, %s, %s, 'a-secret')",
               (a.acc.tenant_id, a.acc.phone_number_id, a.acc.waba_id, a.acc.access_token))
    db.execute("SELECT api.save_bot_rule(%s, %s, 'exact', 'hi', '{\"type\": \"text\", \"text\": \"from A\"}'::jsonb)",
               (a.acc.tenant_id, a.acc.number_id))
    # At Meta the number moved to B's WABA.
    declare(world.sim, a.acc.phone_number_id, b.acc.waba_id, b.acc.access_token)
    refused = world.register(b, phone_number_id=a.acc.phone_number_id, waba_id=b.acc.waba_id,
                             access_token=b.acc.access_token)
    assert error(refused) == (409, "PW302"), refused.text
    assert "transfer" in refused.json()["error"]["hint"]

    moved = db.execute("SELECT api.transfer_number(%s, %s, %s)",
                       (a.acc.phone_number_id, b.acc.tenant_id, b.acc.waba_id)).fetchone()[0]
    assert moved == a.acc.number_id
    row = db.execute("""SELECT tenant_id, waba_id, access_token, app_secret, paused_reason IS NOT NULL
                        FROM core.wa_numbers WHERE number_id = %s""", (moved,)).fetchone()
    assert row == (b.acc.tenant_id, b.acc.waba_id, "", None, True)
    assert db.execute("SELECT count(*) FROM core.bot_rules WHERE number_id = %s", (moved,)).fetchone()[0] == 0
    told = notifications(db, "number_transferred")
    assert {t for t, _, _ in told} == {a.acc.tenant_id, b.acc.tenant_id}
    assert all(d["to_tenant_id"] == b.acc.tenant_id for _, _, d in told)

    response = world.register(b, phone_number_id=a.acc.phone_number_id, waba_id=b.acc.waba_id,
                              access_token=b.acc.access_token)
    assert response.status_code == 201, response.text
    assert db.execute("""SELECT access_token, paused_reason FROM core.wa_numbers WHERE number_id = %s""",
                      (moved,)).fetchone() == (b.acc.access_token, None)


def test_the_cli_registers_after_metas_answer_and_the_operator_transfers(
        db, db_url: str, sim, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    a, b = new_tenant(db, with_templates=False), new_tenant(db, with_templates=False)
    declare(sim, NEW_PNID, b.acc.waba_id, b.acc.access_token, NEW_DISPLAY)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("GRAPH_BASE_URL", sim.url)
    monkeypatch.setenv("WHATSAPP_ACCESS_TOKEN", "EAAG-wrong")

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    register = ("number", "register", "--tenant", str(b.acc.tenant_id), "--phone-number-id", NEW_PNID,
                "--waba-id", b.acc.waba_id)
    code, _, err = run(*register)
    assert code == 1 and "PW415" in err and "hint:" in err and "EAAG-wrong" not in err
    monkeypatch.setenv("WHATSAPP_ACCESS_TOKEN", b.acc.access_token)
    code, out, _ = run(*register)
    assert code == 0 and "Meta confirmed" in out
    assert db.execute("SELECT tenant_id, display_phone_number FROM core.wa_numbers WHERE phone_number_id = %s",
                      (NEW_PNID,)).fetchone() == (b.acc.tenant_id, NEW_DISPLAY)
    code, out, _ = run("number", "transfer", NEW_PNID, "--to", str(a.acc.tenant_id), "--waba-id", "880000001")
    assert code == 0 and "moved" in out
    assert db.execute("SELECT tenant_id FROM core.wa_numbers WHERE phone_number_id = %s",
                      (NEW_PNID,)).fetchone()[0] == a.acc.tenant_id


def test_a_transfer_cancels_the_numbers_unsent_replies_and_no_others(db) -> None:
    a, b = new_tenant(db), new_tenant(db)
    template = {"type": "template", "name": "order_update", "language": "en_US", "params": ["Ana", "A-1", "ACME"]}

    def send(t: Tenant, to: str) -> int:
        items = [{"tenant_id": t.acc.tenant_id, "number_id": t.acc.number_id, "to": to, "message": template,
                  "idempotency_key": None}]
        row = db.execute("SELECT (r.sent).outbound_id, r.sqlstate FROM api.send_messages(%s::jsonb, p_wake => false) r",
                         (orjson.dumps(items).decode(),)).fetchone()
        assert row[1] is None, row
        return row[0]

    queued, claimed, answered = (send(a, f"+1415555070{n}") for n in range(3))
    theirs = send(b, "+14155550709")
    db.execute("UPDATE core.outbound_messages SET state = 'in_flight' WHERE outbound_id = %s", (claimed,))
    db.execute("UPDATE core.outbound_messages SET state = 'accepted', wamid = 'wamid.T1' WHERE outbound_id = %s",
               (answered,))
    db.execute("SELECT api.transfer_number(%s, %s, %s)", (a.acc.phone_number_id, b.acc.tenant_id, b.acc.waba_id))
    states = dict(db.execute("SELECT outbound_id, state FROM core.outbound_messages WHERE outbound_id = ANY(%s)",
                             ([queued, claimed, answered, theirs],)).fetchall())
    assert states == {queued: "cancelled", claimed: "cancelled", answered: "accepted", theirs: "queued"}
    queue = db.execute("SELECT core.reply_queue(%s)", (a.acc.number_id,)).fetchone()[0]
    assert db.execute("SELECT count(*) FROM pgmq.metrics(%s)", (queue,)).fetchone()[0] == 1
    assert db.execute("SELECT queue_length FROM pgmq.metrics(%s)", (queue,)).fetchone()[0] == 0
