"""Messaging limits over HTTP: a tenant's portfolios (GET /v1/portfolios), a number's tier
(PUT /v1/numbers/{id}/messaging-limit, admin only, the tenant's own numbers only), and a
campaign over its portfolio's budget, whose creation says how many days the list needs and
whose stats say what it waits for and until when."""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row

from pgwa.queries import queries
from tests import factories
from tests.api_support import Tenant, TestClient, api_client, new_tenant
from tests.test_api_routes import campaign_params, csv_bytes

pytest_plugins = ["tests.api_fixtures"]


def limit_path(number_id: int) -> str:
    return f"/v1/numbers/{number_id}/messaging-limit"


def key_with_scope(db: psycopg.Connection, tenant: Tenant, scope: str) -> dict[str, str]:
    with db.cursor(row_factory=dict_row) as cur:
        key = cur.execute(queries["create_api_key"], {
            "tenant_id": tenant.acc.tenant_id, "name": scope, "scope": scope, "expires_at": None,
            "rate_limit_per_minute": None}).fetchone()["key"]
    return {"Authorization": f"Bearer {key}"}


def test_a_tier_set_through_the_api_limits_the_portfolio_and_is_listed(client: TestClient, tenant: Tenant) -> None:
    (before,) = client.get("/v1/portfolios").json()
    assert (before["tier"], before["messaging_limit"], before["used_24h"], before["number_ids"]) == \
        (None, None, None, [tenant.acc.number_id])
    response = client.put(limit_path(tenant.acc.number_id), json={"tier": "TIER_250"})
    assert response.status_code == 200, response.text
    assert (response.json()["tier"], response.json()["messaging_limit"], response.json()["used_24h"]) == \
        ("TIER_250", 250, 0)
    # With Meta's business id, the number's WABA moves into that portfolio, which takes the tier.
    moved = client.put(limit_path(tenant.acc.number_id), json={"tier": "TIER_UNLIMITED", "business_id": "7788990011"})
    assert moved.status_code == 200, moved.text
    assert (moved.json()["business_id"], moved.json()["tier"], moved.json()["messaging_limit"]) == \
        ("7788990011", "TIER_UNLIMITED", None)
    listed = {p["business_id"]: p for p in client.get("/v1/portfolios").json()}
    assert listed["7788990011"]["number_ids"] == [tenant.acc.number_id]
    assert listed[before["business_id"]]["number_ids"] == []


def test_a_campaign_over_the_budget_waits_and_its_stats_say_until_when(db: psycopg.Connection, client: TestClient,
                                                                      tenant: Tenant) -> None:
    assert client.put(limit_path(tenant.acc.number_id), json={"tier": "TIER_50"}).status_code == 200
    created = client.post("/v1/campaigns", params=campaign_params(tenant.acc, start="true"),
                          content=csv_bytes(factories.contacts(80)), headers={"content-type": "text/csv"})
    assert created.status_code == 201, created.text
    assert created.json()["days_at_limit"] == 2
    cid = created.json()["campaign_id"]
    stats = client.get(f"/v1/campaigns/{cid}/stats").json()
    assert (stats["waiting_for"], stats["resumes_at"], stats["messaging_limit"], stats["days_at_limit"],
            stats["retrying"]) == (None, None, 50, 2, 0)

    t = factories.clock(db)
    sent = factories.claim_all(db, now=t)
    assert len(sent) == 50
    factories.report(db, [factories.ok(r) for r in sent], now=t)
    (portfolio,) = client.get("/v1/portfolios").json()
    assert portfolio["used_24h"] == 50 and portfolio["budget_wait_until"] is not None
    for path in (f"/v1/campaigns/{cid}", f"/v1/campaigns/{cid}/stats"):
        stats = client.get(path).json()
        assert (stats["waiting_for"], stats["resumes_at"], stats["days_at_limit"]) == \
            ("messaging_limit", portfolio["budget_wait_until"], 1)


def test_a_read_or_send_key_lists_portfolios_but_cannot_set_a_tier(db: psycopg.Connection, tenant: Tenant,
                                                                    db_url: str) -> None:
    with api_client(db_url) as c:
        for scope in ("read", "send"):
            headers = key_with_scope(db, tenant, scope)
            assert c.get("/v1/portfolios", headers=headers).status_code == 200
            refused = c.put(limit_path(tenant.acc.number_id), json={"tier": "TIER_100K"}, headers=headers)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "PW410", scope
        assert c.get("/v1/portfolios", headers=tenant.headers).json()[0]["tier"] is None


def test_another_tenants_number_is_not_found_and_keeps_its_tier(db: psycopg.Connection, client: TestClient,
                                                                tenant: Tenant) -> None:
    other = new_tenant(db)
    theirs = client.put(limit_path(other.acc.number_id), json={"tier": "TIER_50", "business_id": "1"})
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "PW202"
    mine = [p["number_ids"] for p in client.get("/v1/portfolios").json()]
    assert mine == [[tenant.acc.number_id]]
    with db.cursor(row_factory=dict_row) as cur:
        (p,) = cur.execute(queries["portfolios"], {"tenant_id": other.acc.tenant_id}).fetchall()
    assert (p["tier"], p["business_id"], p["number_ids"]) == (None, other.acc.waba_id, [other.acc.number_id])


def test_a_bad_tier_or_business_id_is_400_naming_the_field(client: TestClient, tenant: Tenant) -> None:
    path = limit_path(tenant.acc.number_id)
    for body, field in (({"tier": "TIER_5"}, "tier"), ({}, "tier"), ({"tier": 50}, "tier"),
                        ({"tier": "TIER_1K", "business_id": "acme"}, "business_id"),
                        ({"tier": "TIER_1K", "business_id": 12}, "business_id")):
        response = client.put(path, json=body)
        error = response.json()["error"]
        assert response.status_code == 400 and error["code"] == "PW100" and field in error["message"], body
    assert client.put(path, content=b"TIER_1K").status_code == 400
    assert client.put(limit_path(0), json={"tier": "TIER_1K"}).status_code == 400
    assert client.get("/v1/portfolios").json()[0]["tier"] is None
