"""The shared inbox and the bots over HTTP: conversations, messages, replies, read,
assignment, bot rules, opt-out keywords and LLM settings, each route one api function."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.api_support import TestClient, api_client
from tests.test_bots import Inbox

pytest_plugins = ["tests.sim_fixtures"]


@pytest.fixture
def inbox(db: psycopg.Connection) -> Inbox:
    return Inbox.build(db)


@pytest.fixture
def client(db_url: str, db: psycopg.Connection, inbox: Inbox) -> Iterator[TestClient]:
    key = db.execute("SELECT key FROM api.create_api_key(%s, 'agents')", (inbox.tenant_id,)).fetchone()[0]
    with api_client(db_url) as c:
        c.headers["Authorization"] = f"Bearer {key}"
        yield c


def test_an_agent_lists_reads_and_pages_conversations(inbox: Inbox, client: TestClient) -> None:
    senders = [inbox.sender() for _ in range(3)]
    for i, who in enumerate(senders):
        inbox.say(f"hello {i}", who)
    base = f"/v1/numbers/{inbox.number_id}/conversations"
    first = client.get(base, params={"limit": 2})
    assert first.status_code == 200, first.text
    page = first.json()
    assert len(page["data"]) == 2 and page["next"] is not None
    rest = client.get(base, params={"limit": 2, **page["next"]}).json()
    assert rest["next"] is None
    listed = [c["wa_id"] for c in page["data"] + rest["data"]]
    assert sorted(listed) == sorted(senders) and len(set(listed)) == 3
    contact = page["data"][0]["contact_id"]
    assert page["data"][0]["unread"] == 1
    messages = client.get(f"{base}/{contact}/messages").json()
    assert [(m["direction"], m["body"]) for m in messages["data"]] == [("in", page["data"][0]["last_body"])]
    assert client.post(f"{base}/{contact}/read").json() == {"marked": 1}
    assert len(client.get(base, params={"filter": "unread"}).json()["data"]) == 2


def test_an_agent_replies_assigns_and_releases(inbox: Inbox, client: TestClient) -> None:
    who = inbox.sender()
    inbox.say("where is my order?", who)
    contact = inbox.contact(who)
    path = f"/v1/numbers/{inbox.number_id}/conversations/{contact}"
    sent = client.post(f"{path}/reply", json={"type": "text", "text": "On its way, {{name}}!"})
    assert sent.status_code == 201, sent.text
    assert sent.json()["outbound_id"] > 0
    assert inbox.replies_to(who) == ["On its way, Ana Lima!"]
    assigned = client.post(f"{path}/assign", json={"agent": "maria"}).json()
    assert assigned["assigned_to"] == "maria"
    mine = client.get(f"/v1/numbers/{inbox.number_id}/conversations", params={"agent": "maria"}).json()
    assert [c["contact_id"] for c in mine["data"]] == [contact]
    assert client.post(f"{path}/release").json()["assigned_to"] is None
    bad = client.post(f"{path}/reply", json={"type": "fax"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "PW100"
    missing = client.post(f"{path}/assign", json={})
    assert missing.status_code == 400 and "agent" in missing.json()["error"]["message"]
    foreign = client.post(f"/v1/numbers/{inbox.number_id}/conversations/999999999/read")
    assert foreign.status_code == 404


def test_bot_rules_opt_out_words_and_llm_settings_are_managed_over_http(inbox: Inbox, client: TestClient) -> None:
    base = f"/v1/numbers/{inbox.number_id}/bot-rules"
    made = client.post(base, json={"kind": "exact", "pattern": "hours", "reply": {"type": "text", "text": "9 to 5"}})
    assert made.status_code == 201, made.text
    rule = made.json()["rule_id"]
    who = inbox.sender()
    inbox.say("hours", who)
    assert inbox.replies_to(who) == ["9 to 5"]
    changed = client.post(base, json={"rule_id": rule, "kind": "exact", "pattern": "hours",
                                      "reply": {"type": "text", "text": "8 to 6"}, "priority": 5}).json()
    assert (changed["rule_id"], changed["priority"], changed["reply"]["text"]) == (rule, 5, "8 to 6")
    assert [r["rule_id"] for r in client.get(base).json()] == [rule]
    bad = client.post(base, json={"kind": "regex", "pattern": "(", "reply": {"type": "text", "text": "x"}})
    assert bad.status_code == 422 and "(" in bad.json()["error"]["message"], bad.text
    assert client.post(base, json={"kind": "exact", "pattern": "x", "reply": "text"}).status_code == 400
    assert client.delete(f"/v1/bot-rules/{rule}").json() == {"rule_id": rule}
    assert client.get(base).json() == []
    assert client.delete(f"/v1/bot-rules/{rule}").status_code == 404

    words = client.post("/v1/opt-out", json={"opt_out_keywords": ["PARAR", "STOP"], "opt_out_reply": "Done."})
    assert words.status_code == 200, words.text
    assert words.json()["opt_out_keywords"] == ["PARAR", "STOP"]
    quitter = inbox.sender()
    inbox.say("parar", quitter)
    assert inbox.db.execute("SELECT opted_out FROM core.contacts WHERE contact_id = %s",
                            (inbox.contact(quitter),)).fetchone()[0] is True
    assert client.post("/v1/opt-out", json={"opt_out_keywords": "STOP"}).status_code == 400

    llm = client.post(f"/v1/numbers/{inbox.number_id}/llm", json={"enabled": True, "daily_limit": 50})
    assert llm.status_code == 200, llm.text
    assert (llm.json()["llm_enabled"], llm.json()["daily_limit"]) == (True, 50)


def test_the_llm_route_and_its_document_take_their_ranges_from_api_llm_bounds(
        inbox: Inbox, client: TestClient) -> None:
    bounds = {s: (kind, low, high) for s, kind, low, high in
              inbox.db.execute("SELECT setting, type, minimum, maximum FROM api.llm_bounds()")}
    path = "/v1/numbers/{number_id}/llm"
    body = client.get("/openapi.json").json()["paths"][path]["post"]["requestBody"]
    fields = body["content"]["application/json"]["schema"]["properties"]
    for setting, (kind, low, high) in bounds.items():
        shown = ((fields[setting].get("minLength", 0), fields[setting]["maxLength"]) if kind == "string"
                 else (fields[setting]["minimum"], fields[setting]["maximum"]))
        assert shown == (low, high), setting
    url = path.format(number_id=inbox.number_id)
    for setting in ("daily_limit", "context_messages", "number_daily_limit"):
        _, low, high = bounds[setting]
        assert client.post(url, json={setting: high}).json()[setting] == high
        for bad in (low - 1, high + 1):
            refused = client.post(url, json={setting: bad})
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "PW100", refused.text
            assert setting in refused.json()["error"]["message"], refused.text
    too_long = client.post(url, json={"system_prompt": "x" * (bounds["system_prompt"][2] + 1)})
    assert too_long.status_code == 400 and "system_prompt" in too_long.json()["error"]["message"]
