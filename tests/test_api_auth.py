"""API keys, tenant isolation and secrets: who may call what, and what never comes back."""

from __future__ import annotations

import hashlib

import psycopg
import pytest

from tests import factories
from tests.api_support import Tenant, TestClient, api_client, new_tenant

pytest_plugins = ["tests.api_fixtures"]

SECRET_TOKEN = "EAAG-secret-access-token-0123456789"
SECRET_APP = "app-secret-9876543210-abcdef"


def _sql_error(db: psycopg.Connection, query: str, params: tuple) -> str:
    with pytest.raises(psycopg.Error) as info:
        db.execute(query, params)
    return info.value.diag.sqlstate


def test_create_api_key_returns_the_key_once_and_stores_only_its_sha256(db: psycopg.Connection) -> None:
    acc = factories.account(db, with_templates=False)
    key_id, tenant_id, name, key, prefix, scope = db.execute(
        "SELECT api_key_id, tenant_id, name, key, key_prefix, scope FROM api.create_api_key(%s, 'dashboard')",
        (acc.tenant_id,)).fetchone()
    assert (tenant_id, name, scope) == (acc.tenant_id, "dashboard", "admin")
    assert key.startswith("pgwa_") and len(key) == 5 + 64 and key.startswith(prefix)
    stored = db.execute("SELECT key_hash, key_prefix FROM core.api_keys WHERE api_key_id = %s", (key_id,)).fetchone()
    assert bytes(stored[0]) == hashlib.sha256(key.encode()).digest()
    # The key itself is nowhere in the table, nor in the listing.
    assert key not in str(db.execute("SELECT * FROM core.api_keys").fetchall())
    assert key not in str(db.execute("SELECT * FROM api.api_keys(%s)", (acc.tenant_id,)).fetchall())
    second = db.execute("SELECT key FROM api.create_api_key(%s, 'cli')", (acc.tenant_id,)).fetchone()[0]
    assert second != key


def test_authenticate_resolves_the_tenant_and_refuses_unknown_or_revoked_keys(db: psycopg.Connection) -> None:
    t = new_tenant(db, with_templates=False)
    digest = hashlib.sha256(t.key.encode()).digest()
    assert db.execute("SELECT api.authenticate(%s)", (digest,)).fetchone()[0] == t.acc.tenant_id
    assert _sql_error(db, "SELECT api.authenticate(%s)", (hashlib.sha256(b"pgwa_other").digest(),)) == "PW401"
    assert _sql_error(db, "SELECT api.authenticate(%s)", (None,)) == "PW401"
    key_id = db.execute("SELECT api_key_id FROM api.api_keys(%s)", (t.acc.tenant_id,)).fetchone()[0]
    db.execute("SELECT api.revoke_api_key(%s, %s)", (t.acc.tenant_id, key_id))
    assert _sql_error(db, "SELECT api.authenticate(%s)", (digest,)) == "PW401"


def test_create_api_key_checks_its_arguments(db: psycopg.Connection) -> None:
    acc = factories.account(db, with_templates=False)
    assert _sql_error(db, "SELECT api.create_api_key(%s, %s)", (acc.tenant_id, "  ")) == "PW100"
    assert _sql_error(db, "SELECT api.create_api_key(%s, %s)", (987654, "x")) == "PW205"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"},
                                     {"Authorization": "Bearer pgwa_unknown"},
                                     {"Authorization": "Bearer not-a-pgwa-key"}])
def test_routes_without_a_valid_key_answer_401_in_json(db_url: str, tenant: Tenant, headers: dict) -> None:
    with api_client(db_url) as anonymous:
        for method, path in [("GET", "/v1/campaigns"), ("GET", "/v1/numbers"), ("POST", "/v1/campaigns/1/start"),
                             ("GET", "/v1/notifications"), ("POST", "/v1/keys")]:
            response = anonymous.request(method, path, headers=headers, json={"name": "x"})
            assert response.status_code == 401, (method, path, response.text)
            error = response.json()["error"]
            assert error["code"] == "PW401" and error["name"] == "unauthenticated" and error["hint"]


def test_a_revoked_key_is_refused_at_once(client: TestClient, tenant: Tenant) -> None:
    created = client.post("/v1/keys", json={"name": "temporary"})
    assert created.status_code == 201
    other = created.json()
    headers = {"Authorization": f"Bearer {other['key']}"}
    assert client.get("/v1/campaigns", headers=headers).status_code == 200
    assert client.delete(f"/v1/keys/{other['api_key_id']}").json()["revoked_at"] is not None
    assert client.get("/v1/campaigns", headers=headers).status_code == 401
    # The listing shows prefixes, never keys.
    listing = client.get("/v1/keys").text
    assert other["key"] not in listing and other["key_prefix"] in listing


def test_another_tenants_ids_answer_404(db: psycopg.Connection, client: TestClient, tenant: Tenant) -> None:
    other = new_tenant(db)
    campaign = factories.create_campaign(db, other.acc, 3)["campaign_id"]
    notification = db.execute("SELECT core.notify(%s, 'test', 'info', 'theirs')", (other.acc.tenant_id,)).fetchone()[0]
    their_key = db.execute("SELECT api_key_id FROM api.api_keys(%s)", (other.acc.tenant_id,)).fetchone()[0]
    attempts = [
        ("GET", f"/v1/campaigns/{campaign}", None, "PW201"),
        ("GET", f"/v1/campaigns/{campaign}/stats", None, "PW201"),
        ("POST", f"/v1/campaigns/{campaign}/start", None, "PW201"),
        ("POST", f"/v1/campaigns/{campaign}/pause", None, "PW201"),
        ("POST", f"/v1/campaigns/{campaign}/resume", None, "PW201"),
        ("POST", f"/v1/campaigns/{campaign}/cancel", None, "PW201"),
        ("POST", f"/v1/campaigns/{campaign}/reconcile?fix=true", None, "PW201"),
        ("POST", f"/v1/notifications/{notification}/read", None, "PW208"),
        ("POST", "/v1/notifications/read", {"ids": [notification]}, "PW208"),
        ("DELETE", f"/v1/keys/{their_key}", None, "PW207"),
        ("POST", "/v1/templates/sync", {"number_id": other.acc.number_id}, "PW202"),
        ("POST", "/v1/contacts/opt-in", {"contact_id": 1}, "PW204"),
    ]
    for method, path, body, code in attempts:
        response = client.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == code, (method, path)
    # Nothing of theirs moved, and their lists do not show through.
    assert factories.campaign(db, campaign)["status"] == "draft"
    assert db.execute("SELECT read_at FROM core.notifications WHERE notification_id = %s",
                      (notification,)).fetchone()[0] is None
    assert db.execute("SELECT revoked_at FROM core.api_keys WHERE api_key_id = %s", (their_key,)).fetchone()[0] is None
    assert client.get("/v1/campaigns").json()["data"] == []
    assert [n["number_id"] for n in client.get("/v1/numbers").json()] == [tenant.acc.number_id]
    assert client.get("/v1/notifications").json()["data"] == []


def test_no_route_returns_an_access_token_or_app_secret(db: psycopg.Connection, db_url: str, tenant: Tenant,
                                                        sim) -> None:
    sim.control("numbers", {"phone_number_id": "5550001", "waba_id": tenant.acc.waba_id, "token": SECRET_TOKEN,
                            "display_phone_number": "+1 555 0001"})
    with api_client(db_url, graph_base_url=sim.url) as client:
        client.headers.update(tenant.headers)
        _no_route_returns_a_secret(db, client, tenant, sim)


def _no_route_returns_a_secret(db: psycopg.Connection, client: TestClient, tenant: Tenant, sim) -> None:
    registered = client.post("/v1/numbers", json={
        "phone_number_id": "5550001", "waba_id": tenant.acc.waba_id, "access_token": SECRET_TOKEN,
        "app_secret": SECRET_APP, "throughput_mps": 250, "display_phone_number": "+1 555 0001"})
    assert registered.status_code == 201, registered.text
    number = registered.json()["number_id"]
    assert db.execute("SELECT access_token, app_secret FROM core.wa_numbers WHERE number_id = %s",
                      (number,)).fetchone() == (SECRET_TOKEN, SECRET_APP)
    factories.create_campaign(db, tenant.acc, 3)
    db.execute("SELECT core.notify(%s, 'test', 'info', 'hello')", (tenant.acc.tenant_id,))
    bodies = [registered.text]
    for path in ["/v1/numbers", "/v1/templates", "/v1/contacts", "/v1/campaigns", "/v1/campaigns/1",
                 "/v1/notifications", "/v1/keys", "/metrics", "/openapi.json"]:
        response = client.get(path)
        assert response.status_code == 200, (path, response.text)
        bodies.append(response.text)
    # The server's own Graph call uses the token; a failure's message must not carry it.
    sim.control("numbers", {"phone_number_id": "5550001", "token": SECRET_TOKEN + "2"})   # Meta rotated it
    failed = client.post("/v1/templates/sync", json={"number_id": number})
    assert failed.status_code == 502
    bodies.append(failed.text)
    # Re-registering (a rotation) answers the id only; so does a refused one.
    bodies.append(client.post("/v1/numbers", json={"phone_number_id": "5550001", "waba_id": tenant.acc.waba_id,
                                                    "access_token": SECRET_TOKEN + "2"}).text)
    refused = client.post("/v1/numbers", json={"phone_number_id": "5550001", "waba_id": tenant.acc.waba_id,
                                               "access_token": SECRET_TOKEN})
    assert refused.status_code == 403
    bodies.append(refused.text)
    for body in bodies:
        assert SECRET_TOKEN not in body and SECRET_APP not in body
        assert tenant.acc.access_token not in body
    listed = next(n for n in client.get("/v1/numbers").json() if n["number_id"] == number)
    assert listed["has_app_secret"] is True and "access_token" not in listed and "app_secret" not in listed


def test_metrics_need_the_scrape_token_when_one_is_configured(db_url: str, tenant: Tenant) -> None:
    with api_client(db_url) as open_client:
        assert open_client.get("/metrics").status_code == 200
        open_client.app.state.json_api.metrics_token = "scrape-me"
        assert open_client.get("/metrics").status_code == 401
        assert open_client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = open_client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/plain")


def test_an_unmapped_sqlstate_is_500_with_a_generic_message(db: psycopg.Connection, client: TestClient,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    # A bug in a function: a bare RAISE (P0001) whose text holds something private.
    db.execute("""CREATE OR REPLACE FUNCTION api.numbers(p_tenant_id bigint) RETURNS SETOF api.number
                  LANGUAGE plpgsql STABLE SET search_path = '' AS $$
                  BEGIN RAISE EXCEPTION 'leaked %', 'EAAG-private' USING DETAIL = 'more private'; END $$""")
    response = client.get("/v1/numbers")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "private" not in response.text and "leaked" not in response.text
    assert any("P0001" in r.getMessage() for r in caplog.records)
    assert not any("more private" in r.getMessage() for r in caplog.records)


def test_errors_map_through_core_error_codes(client: TestClient, tenant: Tenant) -> None:
    cases = [
        (client.get("/v1/campaigns/12345"), 404, "PW201"),
        (client.get("/v1/campaigns?status=bogus"), 400, "PW100"),
        (client.get("/v1/campaigns?limit=0"), 400, "PW100"),
        (client.get("/v1/campaigns/abc"), 400, "PW100"),
        (client.post("/v1/keys", content=b"not json", headers={"content-type": "application/json"}), 400, "PW100"),
        (client.post("/v1/keys", json=["a list"]), 400, "PW100"),
        (client.post("/v1/numbers", json={"phone_number_id": "x", "waba_id": "1", "access_token": "t"}), 400, "PW100"),
        (client.post("/v1/numbers", json={"phone_number_id": "1", "waba_id": "1", "access_token": "t",
                                          "throughput_mps": 2**40}), 400, "22003"),
        (client.post("/v1/keys", json={"name": "nul\u0000byte"}), 400, "PW100"),
        (client.post("/v1/campaigns/1/start", json={"at": "tomorrow"}), 400, "PW100"),
        (client.post("/v1/campaigns", content=b"phone\n1", headers={"content-type": "application/json"},
                     params={"number_id": 1, "name": "x"}), 415, "PW100"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        body = response.json()
        assert body["error"]["code"] == code, body
        assert body["error"]["message"]


def test_a_number_of_another_tenant_is_a_conflict(db: psycopg.Connection, db_url: str, tenant: Tenant,
                                                  sim) -> None:
    other = new_tenant(db, with_templates=False)
    # Even when Meta says the caller's token reads it in the caller's WABA (the number
    # moved at Meta), moving it between tenants is the operator's call.
    sim.control("numbers", {"phone_number_id": other.acc.phone_number_id, "waba_id": tenant.acc.waba_id,
                            "token": "t", "display_phone_number": "15550000001"})
    with api_client(db_url, graph_base_url=sim.url) as client:
        client.headers.update(tenant.headers)
        response = client.post("/v1/numbers", json={"phone_number_id": other.acc.phone_number_id,
                                                    "waba_id": tenant.acc.waba_id, "access_token": "t"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "PW302"
