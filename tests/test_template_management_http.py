"""Template management end to end: the JSON API (``python -m api``) creates and deletes
templates at the simulator's Graph API with the WABA's token; the simulator reviews them on
its clock and posts ``message_template_status_update`` to the API's webhook receiver; the
worker's webhook loop (run here) applies it. Every step waits on the state it needs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from psycopg.rows import dict_row

from pgwa import cli
from pgwa.config import Settings
from pgwa.local.stack import Stack
from pgwa.queries import queries
from tests.sim_fixtures import PATIENT_WEBHOOKS
from worker import webhooks

PNID, WABA = "730000000000001", "740000000000001"
B_PNID, B_WABA = "730000000000002", "740000000000002"
TOKEN = "local-token"
SIM_SETTINGS = {"profile": "quiet", "template_review": {"delay_s": 0.3}, "webhook": {"flush_ms": 20}}
WAIT_S = 30.0

ORDER_READY: dict[str, Any] = {
    "name": "order_ready", "language": "en_US", "category": "UTILITY",
    "components": [{"type": "BODY", "text": "Hi {{1}}, order {{2}} is ready.",
                    "example": {"body_text": [["Ana", "A-1"]]}},
                   {"type": "FOOTER", "text": "Thanks for shopping"}]}
SPRING_SALE: dict[str, Any] = {
    "name": "spring_sale_2026", "language": "en_US", "category": "MARKETING", "parameter_format": "NAMED",
    "components": [
        {"type": "HEADER", "format": "IMAGE", "example": {"header_handle": ["4::aW1hZ2U="]}},
        {"type": "BODY", "text": "Hi {{first_name}}, {{discount}} off until {{end_date}}.",
         "example": {"body_text_named_params": [
             {"param_name": "first_name", "example": "Ana"}, {"param_name": "discount", "example": "20%"},
             {"param_name": "end_date", "example": "May 1"}]}},
        {"type": "BUTTONS", "buttons": [
            {"type": "URL", "text": "Shop now", "url": "https://shop.example.com/sale/{{1}}",
             "example": ["https://shop.example.com/sale/spring"]}]}]}


class World:
    """Tenants A and B, each with a number of its own WABA (in the simulator and in pgwa) and
    an API key; the API and the simulator running."""

    def __init__(self, db: psycopg.Connection, url: str, stack: Stack) -> None:
        self.db, self.url, self.stack = db, url, stack
        self.tenant = db.execute(queries["create_tenant"], {"name": "a"}).fetchone()[0]
        self.number_id = stack.register_number(db, self.tenant, PNID, WABA, 80, token=TOKEN)
        b = db.execute(queries["create_tenant"], {"name": "b"}).fetchone()[0]
        stack.register_number(db, b, B_PNID, B_WABA, 80, token="b-token")
        self.api = httpx.Client(base_url=stack.api_url, timeout=30, headers=self._auth(self.tenant))
        self.api_b = httpx.Client(base_url=stack.api_url, timeout=30, headers=self._auth(b))
        self.settings = Settings(database_url=url, graph_base_url=stack.sim_url, worker_name="templates",
                                 **PATIENT_WEBHOOKS)

    def _auth(self, tenant: int) -> dict[str, str]:
        with self.db.cursor(row_factory=dict_row) as cur:
            key = cur.execute(queries["create_api_key"], {"tenant_id": tenant, "name": "t", "scope": "send",
                                                          "expires_at": None, "rate_limit_per_minute": None}
                              ).fetchone()["key"]
        return {"Authorization": f"Bearer {key}"}

    def close(self) -> None:
        self.api.close()
        self.api_b.close()

    def sim_templates(self) -> dict[tuple[str, str], dict]:
        listed = self.stack.sim("GET", f"/_sim/templates?waba_id={WABA}")
        return {(t["name"], t["language"]): t for t in listed.get(WABA, [])}

    def template(self, template_id: int) -> dict:
        with self.db.cursor(row_factory=dict_row) as cur:
            return cur.execute("SELECT * FROM core.templates WHERE template_id = %s", (template_id,)).fetchone()

    def process_until(self, query: str, params: tuple = ()) -> None:
        """Run the worker's webhook loop until ``query`` answers true."""
        async def go() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(webhooks.run(self.settings, stop))
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    deadline = time.monotonic() + WAIT_S
                    while not (await (await conn.execute(query, params)).fetchone())[0]:
                        assert time.monotonic() < deadline, f"timed out waiting for {query!r} {params}"
                        assert not task.done(), task.result()
                        await asyncio.sleep(0.05)
            finally:
                stop.set()
                await task

        asyncio.run(go())

    def status_becomes(self, template_id: int, status: str) -> dict:
        self.process_until("SELECT status = %s FROM core.templates WHERE template_id = %s", (status, template_id))
        return self.template(template_id)

    def campaign(self, template: str, language: str = "en_US") -> int:
        return self.db.execute(
            "WITH c AS (INSERT INTO core.campaigns (tenant_id, number_id, name, status, started_at) "
            "VALUES (%s, %s, 'Weekend', 'running', now()) RETURNING campaign_id) "
            "INSERT INTO core.campaign_templates (campaign_id, variant, template_id) "
            "SELECT c.campaign_id, 1, t.template_id FROM c, core.templates t "
            "WHERE t.waba_id = %s AND t.name = %s AND t.language = %s RETURNING campaign_id",
            (self.tenant, self.number_id, WABA, template, language)).fetchone()[0]


@pytest.fixture
def world(db: psycopg.Connection, db_url: str) -> Iterator[World]:
    with Stack(db_url, sim_settings=SIM_SETTINGS) as stack:
        w = World(db, db_url, stack)
        try:
            yield w
        finally:
            w.close()
        stack.stop()
        api_log = (stack.logs / "api.log").read_text(errors="replace")
        assert TOKEN not in api_log and "b-token" not in api_log


def test_a_template_created_through_the_api_is_reviewed_by_meta_and_approved(world: World) -> None:
    created = world.api.post("/v1/templates", json={"waba_id": WABA, **SPRING_SALE})
    assert created.status_code == 201, created.text
    template = created.json()
    assert template["status"] == "PENDING" and template["meta_template_id"]
    assert TOKEN not in created.text
    # Meta has it, exactly as defined, under the id pgwa recorded.
    at_meta = world.sim_templates()[("spring_sale_2026", "en_US")]
    assert at_meta["id"] == template["meta_template_id"] and at_meta["parameter_format"] == "NAMED"
    assert at_meta["components"][1]["text"] == SPRING_SALE["components"][1]["text"]

    approved = world.status_becomes(template["template_id"], "APPROVED")
    assert approved["rejected_reason"] is None
    shown = world.api.get(f"/v1/templates/{template['template_id']}")
    assert shown.status_code == 200 and shown.json()["status"] == "APPROVED"
    params = [(p["component"], p["parameter_name"] or p["index"], p["kind"]) for p in shown.json()["parameters"]]
    assert params == [("header", 1, "image"), ("body", "first_name", "text"), ("body", "discount", "text"),
                      ("body", "end_date", "text"), ("button", 0, "url_suffix")]
    listed = world.api.get("/v1/templates", params={"status": "approved"}).json()
    assert "spring_sale_2026" in [t["name"] for t in listed]
    note = world.db.execute("SELECT severity, message FROM core.notifications WHERE tenant_id = %s "
                            "AND kind = 'template_status'", (world.tenant,)).fetchall()
    assert note == [("info", "Template spring_sale_2026 (en_US) is APPROVED: it can be sent")]

    # The same request again is answered from what pgwa holds: Meta is not asked twice.
    again = world.api.post("/v1/templates", json={"number_id": world.number_id, **SPRING_SALE})
    assert again.status_code == 200 and again.json()["template_id"] == template["template_id"]
    assert again.json()["status"] == "APPROVED"


def test_a_template_meta_rejects_is_rejected_with_the_reason(world: World) -> None:
    created = world.api.post("/v1/templates", json={"waba_id": WABA, **ORDER_READY, "name": "reject_order_ready"})
    assert created.status_code == 201, created.text
    rejected = world.status_becomes(created.json()["template_id"], "REJECTED")
    assert rejected["rejected_reason"]
    message = world.db.execute("SELECT message FROM core.notifications WHERE tenant_id = %s AND kind = "
                               "'template_status'", (world.tenant,)).fetchone()[0]
    assert message.startswith("Template reject_order_ready (en_US) is REJECTED: ")


def test_a_definition_pgwa_refuses_never_reaches_meta(world: World) -> None:
    bad = {**ORDER_READY, "components": [{"type": "BODY", "text": "Hi {{1}}{{2}} is ready."}]}
    refused = world.api.post("/v1/templates", json={"waba_id": WABA, **bad})
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "PW130" and "BODY" in error["message"] and error["hint"]
    assert ("order_ready", "en_US") not in world.sim_templates()
    assert world.db.execute("SELECT count(*) FROM core.templates WHERE tenant_id = %s",
                            (world.tenant,)).fetchone() == (0,)
    # Another tenant's WABA is not found, and nothing reaches Meta either.
    foreign = world.api.post("/v1/templates", json={"waba_id": B_WABA, **ORDER_READY})
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "PW202"


def test_deleting_a_template_refuses_while_a_campaign_sends_it_then_deletes_at_meta(world: World) -> None:
    created = world.api.post("/v1/templates", json={"waba_id": WABA, **ORDER_READY}).json()
    template_id = created["template_id"]
    world.status_becomes(template_id, "APPROVED")
    campaign = world.campaign("order_ready")

    # Tenant B: not found, whichever way it asks.
    for response in (world.api_b.get(f"/v1/templates/{template_id}"),
                     world.api_b.delete(f"/v1/templates/{template_id}", params={"force": "true"})):
        assert response.status_code == 404 and response.json()["error"]["code"] == "PW203"

    in_use = world.api.delete(f"/v1/templates/{template_id}")
    assert in_use.status_code == 409
    assert in_use.json()["error"]["code"] == "PW330" and '"Weekend"' in in_use.json()["error"]["message"]
    assert ("order_ready", "en_US") in world.sim_templates()

    deleted = world.api.delete(f"/v1/templates/{template_id}", params={"force": "true"})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["status"] == "DELETED"
    assert ("order_ready", "en_US") not in world.sim_templates()
    status, reason = world.db.execute("SELECT status, pause_reason FROM core.campaigns WHERE campaign_id = %s",
                                      (campaign,)).fetchone()
    assert status == "paused" and "order_ready (en_US) is DELETED" in reason
    # Meta's PENDING_DELETION webhook arrives and is processed; the template stays DELETED.
    world.process_until("SELECT count(*) > 0 FROM pgmq.a_webhooks WHERE message::text LIKE %s",
                        ("%PENDING_DELETION%",))
    assert world.template(template_id)["status"] == "DELETED"

    # Meta does not let an approved name be reused for 30 days: its refusal comes back as
    # PW131 with Meta's words, and the template stays as it was.
    again = world.api.post("/v1/templates", json={"waba_id": WABA, **ORDER_READY})
    assert again.status_code == 422, again.text
    assert again.json()["error"]["code"] == "PW131" and "2388023" in again.json()["error"]["message"]
    assert TOKEN not in again.text
    assert world.template(template_id)["status"] == "DELETED"
    # Deleting it again asks Meta nothing.
    assert world.api.delete(f"/v1/templates/{template_id}").json()["status"] == "DELETED"


def test_the_api_documents_and_scopes_the_template_routes(world: World) -> None:
    document = world.api.get("/openapi.json").json()
    assert document["paths"]["/v1/templates"]["post"]["x-pgwa-scope"] == "send"
    assert document["paths"]["/v1/templates/{template_id}"]["get"]["x-pgwa-scope"] == "read"
    assert document["paths"]["/v1/templates/{template_id}"]["delete"]["x-pgwa-scope"] == "send"
    body = orjson.dumps({"waba_id": WABA, **ORDER_READY, "components": "not a list"})
    bad = world.api.post("/v1/templates", content=body, headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "PW100"


def test_the_cli_creates_shows_syncs_and_deletes_templates(world: World, tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("DATABASE_URL", world.url)
    monkeypatch.setenv("GRAPH_BASE_URL", world.stack.sim_url)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("PGWA_TENANT", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main([*args, "--tenant", str(world.tenant)])
        out, err = capsys.readouterr()
        return code, out, err

    definition = tmp_path / "order_ready.json"
    definition.write_text(orjson.dumps(ORDER_READY).decode())
    code, out, _ = run("template", "create", str(definition), "--number", PNID)
    assert code == 0 and "order_ready (en_US): PENDING" in out
    template_id = int(out.split()[1])
    world.status_becomes(template_id, "APPROVED")
    code, out, _ = run("template", "show", str(template_id))
    assert code == 0 and "APPROVED" in out and "body[0]" in out and "body[1]" in out
    code, out, _ = run("template", "sync", "--number", PNID)
    assert code == 0 and f"of WABA {WABA} synced" in out
    code, out, _ = run("template", "list", "--status", "approved")
    assert code == 0 and "order_ready" in out and TOKEN not in out
    # A definition Meta's rules refuse: the component, the problem and the fix.
    definition.write_text(orjson.dumps({**ORDER_READY, "name": "Order Ready"}).decode())
    code, _, err = run("template", "create", str(definition), "--waba-id", WABA)
    assert code == 1 and "PW130" in err and "hint:" in err
    code, out, _ = run("template", "delete", str(template_id))
    assert code == 0 and "DELETED" in out
    assert ("order_ready", "en_US") not in world.sim_templates()
