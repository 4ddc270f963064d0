"""Keys and endpoints (issue 11, item 6), tried as a hostile holder of a key would: scopes
decided in SQL, expiry, last_used_at, a per-key rate limit answering 429 with Retry-After,
/metrics behind its token on a non-loopback bind and free of tenants' identifiers, and
one tenant's admin key against another tenant's keys. Over HTTP against ``python -m api``."""

from __future__ import annotations

import hashlib
import json

import httpx
import psycopg
import pytest

from api import routes
from api.routes import ROUTE_SCOPES, JsonApi
from pgwa import cli
from pgwa.config import Settings
from tests import factories
from tests.api_support import live_server, new_tenant

T0 = "2026-03-01T12:00:00+00:00"


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _sqlstate(db: psycopg.Connection, query: str, params: tuple) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        db.execute(query, params)
    return info.value


def _key(db: psycopg.Connection, tenant_id: int, scope: str, **options: object) -> str:
    names = ", ".join(f"p_{name} => %({name})s" for name in options)
    return db.execute(f"SELECT key FROM api.create_api_key(%(t)s, 'k', %(scope)s{', ' + names if names else ''})",
                      {"t": tenant_id, "scope": scope, **options}).fetchone()[0]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- the route -> scope table ----------------------------------------------------------------

def test_every_v1_route_is_mapped_to_a_scope_and_every_statement_passes_it() -> None:
    api = JsonApi(Settings(database_url="postgresql://localhost/unused"))
    served = [(r.path, m, r.endpoint.__name__) for r in api.routes()
              if getattr(r, "path", "").startswith("/v1/") for m in (r.methods or ()) if m != "HEAD"]
    assert len(served) >= 30
    unmapped = [(p, m) for p, m, name in served if name not in ROUTE_SCOPES]
    assert unmapped == []
    assert set(ROUTE_SCOPES) == {name for _, _, name in served}, "a scope for a route that no longer exists"
    for path, method, name in served:
        scope = ROUTE_SCOPES[name]
        assert scope in ("read", "send", "admin"), (path, method)
        # A read key never changes anything; key management is admin's alone.
        assert (scope == "read") <= (method == "GET"), (path, method)
        if path.startswith("/v1/keys"):
            assert scope == "admin", (path, method)
    statements = [v for k, v in vars(routes).items() if k.isupper() and isinstance(v, str)]
    calls = [s for s in statements if "api.authenticate(" in s]
    assert len(calls) >= 25
    assert all("api.authenticate(%(key)s, %(scope)s)" in s for s in calls), \
        [s for s in calls if "%(scope)s" not in s]
    # The OpenAPI document says each route's scope and its 403 and 429 answers.
    document = routes.openapi.document({}, api.route_scopes())
    for path, method, name in served:
        op = document["paths"][path][method.lower()]
        assert op["x-pgwa-scope"] == ROUTE_SCOPES[name], (path, method)
        assert {"401", "403", "429"} <= set(op["responses"]), (path, method)
        assert "Retry-After" in op["responses"]["429"]["headers"]


# -- authenticate in SQL ---------------------------------------------------------------------

def test_authenticate_grants_a_scope_and_those_below_it_and_refuses_expired_keys(db: psycopg.Connection) -> None:
    acc = factories.account(db, with_templates=False)
    keys = {scope: _key(db, acc.tenant_id, scope) for scope in ("read", "send", "admin")}
    for held, rank in (("read", 1), ("send", 2), ("admin", 3)):
        for needed, need_rank in (("read", 1), ("send", 2), ("admin", 3)):
            query = "SELECT api.authenticate(%s, %s)"
            if rank >= need_rank:
                assert db.execute(query, (_hash(keys[held]), needed)).fetchone()[0] == acc.tenant_id
            else:
                error = _sqlstate(db, query, (_hash(keys[held]), needed))
                assert error.diag.sqlstate == "PW410", (held, needed)
                assert f"scope {needed}" in error.diag.message_primary and error.diag.message_hint
    # Before the migration, keys had no scope: they keep what they could do (admin).
    assert db.execute("SELECT column_default FROM information_schema.columns WHERE table_schema = 'core' "
                      "AND table_name = 'api_keys' AND column_name = 'scope'").fetchone()[0] == "'admin'::text"
    # Expiry, with time as a parameter.
    expiring = _key(db, acc.tenant_id, "admin", expires_at="2026-03-01T13:00:00+00:00", now=T0)
    assert db.execute("SELECT api.authenticate(%s, 'read', %s::timestamptz)",
                      (_hash(expiring), "2026-03-01T12:59:59+00:00")).fetchone()[0] == acc.tenant_id
    error = _sqlstate(db, "SELECT api.authenticate(%s, 'read', %s::timestamptz)",
                      (_hash(expiring), "2026-03-01T13:00:00+00:00"))
    assert error.diag.sqlstate == "PW401" and "expired" in error.diag.message_primary
    # Bad key options change nothing.
    before = db.execute("SELECT count(*) FROM core.api_keys").fetchone()[0]
    for options in ({"scope": "root"}, {"scope": "read", "expires_at": "2020-01-01T00:00:00Z"},
                    {"scope": "read", "rate_limit_per_minute": 0}):
        error = _sqlstate(db, "SELECT api.create_api_key(%s, 'x', %s, %s::timestamptz, %s)",
                          (acc.tenant_id, options["scope"], options.get("expires_at"),
                           options.get("rate_limit_per_minute")))
        assert error.diag.sqlstate == "PW100" and error.diag.message_hint, options
    assert db.execute("SELECT count(*) FROM core.api_keys").fetchone()[0] == before


def test_the_rate_limit_is_a_gcra_on_the_key_row(db: psycopg.Connection) -> None:
    acc = factories.account(db, with_templates=False)
    key = _key(db, acc.tenant_id, "read", rate_limit_per_minute=3)
    auth = "SELECT api.authenticate(%s, 'read', %s::timestamptz + %s::interval)"
    # A fresh key may spend a minute's limit at once; the fourth request is refused ...
    for _ in range(3):
        assert db.execute(auth, (_hash(key), T0, "0 s")).fetchone()[0] == acc.tenant_id
    error = _sqlstate(db, auth, (_hash(key), T0, "0 s"))
    assert error.diag.sqlstate == "PW429" and error.diag.message_hint
    assert json.loads(error.diag.message_detail) == {"retry_after_s": 20}
    # ... and refused requests do not count: one period (60 s / 3) later, one more passes.
    assert _sqlstate(db, auth, (_hash(key), T0, "19 s")).diag.sqlstate == "PW429"
    assert db.execute(auth, (_hash(key), T0, "20 s")).fetchone()[0] == acc.tenant_id
    assert _sqlstate(db, auth, (_hash(key), T0, "20 s")).diag.sqlstate == "PW429"
    # A key without its own limit follows the platform's setting.
    default = _key(db, acc.tenant_id, "read")
    db.execute("UPDATE core.settings SET api_rate_limit_per_minute = 2")
    for _ in range(2):
        db.execute(auth, (_hash(default), T0, "0 s"))
    assert _sqlstate(db, auth, (_hash(default), T0, "0 s")).diag.sqlstate == "PW429"


def test_last_used_at_moves_at_most_once_a_minute(db: psycopg.Connection) -> None:
    acc = factories.account(db, with_templates=False)
    key = _key(db, acc.tenant_id, "read")
    used = "SELECT last_used_at FROM core.api_keys WHERE key_hash = %s"
    auth = "SELECT api.authenticate(%s, 'read', %s::timestamptz + %s::interval)"
    assert db.execute(used, (_hash(key),)).fetchone()[0] is None
    db.execute(auth, (_hash(key), T0, "0 s"))
    first = db.execute(used, (_hash(key),)).fetchone()[0]
    assert first.isoformat() == T0
    db.execute(auth, (_hash(key), T0, "59 s"))
    assert db.execute(used, (_hash(key),)).fetchone()[0] == first
    db.execute(auth, (_hash(key), T0, "61 s"))
    assert (db.execute(used, (_hash(key),)).fetchone()[0] - first).total_seconds() == 61


# -- over HTTP -------------------------------------------------------------------------------

def test_a_read_key_only_reads_and_a_send_key_cannot_manage_keys(db: psycopg.Connection, db_url: str) -> None:
    owner = new_tenant(db)
    campaign = factories.running_campaign(db, owner.acc, 3)
    with live_server(db_url) as url, httpx.Client(base_url=url, timeout=30) as http:
        made = {}
        for scope in ("read", "send"):
            response = http.post("/v1/keys", headers=owner.headers, json={"name": scope, "scope": scope})
            assert response.status_code == 201 and response.json()["scope"] == scope, response.text
            made[scope] = response.json()
        read, send = _bearer(made["read"]["key"]), _bearer(made["send"]["key"])
        keys_before = db.execute("SELECT count(*) FROM core.api_keys").fetchone()[0]
        campaigns_before = db.execute("SELECT count(*) FROM core.campaigns").fetchone()[0]

        assert http.get("/v1/campaigns", headers=read).status_code == 200
        assert http.get(f"/v1/campaigns/{campaign}/stats", headers=read).status_code == 200
        conversation = f"/v1/numbers/{owner.acc.number_id}/conversations/1"
        refused = [
            ("read", "POST", "/v1/campaigns", {"params": {"number_id": owner.acc.number_id, "name": "x"}}),
            ("read", "POST", f"/v1/campaigns/{campaign}/pause", None),
            ("read", "POST", f"{conversation}/reply", {"type": "text", "text": "hi"}),
            ("read", "POST", "/v1/keys", {"name": "mine", "scope": "admin"}),
            ("read", "GET", "/v1/keys", None),
            ("send", "POST", "/v1/keys", {"name": "mine", "scope": "admin"}),
            ("send", "GET", "/v1/keys", None),
            ("send", "DELETE", f"/v1/keys/{made['read']['api_key_id']}", None),
            ("send", "POST", "/v1/numbers", {"phone_number_id": "5550009", "waba_id": owner.acc.waba_id,
                                             "access_token": "t"}),
        ]
        for holder, method, path, body in refused:
            headers = read if holder == "read" else send
            if path == "/v1/campaigns":
                response = http.post(path, headers={**headers, "content-type": "text/csv",
                                                    "pgwa-campaign": json.dumps(body["params"])},
                                     content=b"phone\n+14155550100\n")
            else:
                response = http.request(method, path, headers=headers, json=body)
            assert response.status_code == 403, (holder, method, path, response.text)
            error = response.json()["error"]
            assert (error["code"], error["name"]) == ("PW410", "insufficient_scope"), (holder, path)
            assert error["hint"]
        # Nothing moved: no key made or revoked, no campaign made, the campaign still running.
        assert db.execute("SELECT count(*) FROM core.api_keys").fetchone()[0] == keys_before
        assert db.execute("SELECT count(*) FROM core.api_keys WHERE revoked_at IS NOT NULL").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM core.campaigns").fetchone()[0] == campaigns_before
        assert factories.campaign(db, campaign)["status"] == "running"
        # What a send key is for, it may do.
        paused = http.post(f"/v1/campaigns/{campaign}/pause", headers=send)
        assert paused.status_code == 200 and paused.json()["status"] == "paused", paused.text


def test_expired_keys_are_401_and_last_used_at_moves(db: psycopg.Connection, db_url: str) -> None:
    acc = factories.account(db, with_templates=False)
    expired = db.execute("SELECT key FROM api.create_api_key(%s, 'old', 'admin', now() - interval '1 hour', NULL, "
                         "now() - interval '2 hours')", (acc.tenant_id,)).fetchone()[0]
    fresh = _key(db, acc.tenant_id, "read")
    with live_server(db_url) as url, httpx.Client(base_url=url, timeout=30) as http:
        response = http.get("/v1/numbers", headers=_bearer(expired))
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["code"] == "PW401" and "expired" in error["message"] and error["hint"]
        assert db.execute("SELECT last_used_at FROM core.api_keys WHERE key_hash = %s",
                          (_hash(fresh),)).fetchone()[0] is None
        assert http.get("/v1/numbers", headers=_bearer(fresh)).status_code == 200
    assert db.execute("SELECT last_used_at > now() - interval '10 minutes' FROM core.api_keys WHERE key_hash = %s",
                      (_hash(fresh),)).fetchone()[0] is True


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(db: psycopg.Connection, db_url: str) -> None:
    owner = new_tenant(db, with_templates=False)
    with live_server(db_url) as url, httpx.Client(base_url=url, timeout=30) as http:
        created = http.post("/v1/keys", headers=owner.headers,
                            json={"name": "slow", "scope": "read", "rate_limit_per_minute": 3})
        assert created.status_code == 201 and created.json()["rate_limit_per_minute"] == 3, created.text
        limited = _bearer(created.json()["key"])
        # Three a minute, a minute's worth at once: the fourth comes within 20 s of the first
        # however slow this machine is, and is refused.
        statuses = [http.get("/v1/numbers", headers=limited) for _ in range(4)]
        assert [r.status_code for r in statuses] == [200, 200, 200, 429], [r.text for r in statuses]
        refused = statuses[-1]
        assert 1 <= int(refused.headers["Retry-After"]) <= 20
        error = refused.json()["error"]
        assert (error["code"], error["name"]) == ("PW429", "rate_limited") and error["hint"]
        assert error["detail"]["retry_after_s"] == int(refused.headers["Retry-After"])
        # The limit is the key's: the tenant's other key is not held back.
        assert http.get("/v1/numbers", headers=owner.headers).status_code == 200


def test_an_admin_key_cannot_list_or_revoke_another_tenants_keys(db: psycopg.Connection, db_url: str) -> None:
    a, b = new_tenant(db, with_templates=False), new_tenant(db, with_templates=False)
    theirs = [r[0] for r in db.execute("SELECT api_key_id FROM core.api_keys WHERE tenant_id = %s",
                                       (b.acc.tenant_id,))]
    with live_server(db_url) as url, httpx.Client(base_url=url, timeout=30, headers=a.headers) as http:
        listed = http.get("/v1/keys")
        assert listed.status_code == 200
        assert {k["api_key_id"] for k in listed.json()}.isdisjoint(theirs)
        for key_id in theirs:
            response = http.delete(f"/v1/keys/{key_id}")
            assert response.status_code == 404 and response.json()["error"]["code"] == "PW207"
        assert http.get("/v1/numbers", headers=b.headers).status_code == 200
    assert db.execute("SELECT count(*) FROM core.api_keys WHERE tenant_id = %s AND revoked_at IS NOT NULL",
                      (b.acc.tenant_id,)).fetchone()[0] == 0


def test_metrics_need_a_token_off_loopback_and_name_no_tenant(db: psycopg.Connection, db_url: str) -> None:
    tenant_id = db.execute("SELECT api.create_tenant('Quokka Zebra Holdings')").fetchone()[0]
    pnid, waba, display = "771234567890123", "889900112233445", "+1 555 867 5309"
    number_id = db.execute("SELECT api.register_number(%s, %s, %s, 'token-quokka', NULL, 80, %s)",
                           (tenant_id, pnid, waba, display)).fetchone()[0]
    acc = factories.Account(tenant_id, number_id, pnid, waba, "token-quokka")
    factories.template(db, acc, "order_update", factories.ORDER_UPDATE)
    campaign = factories.create_campaign(db, acc, 3, name="Narwhal Spring Sale", start=True)["campaign_id"]
    # 60 sends in each minute from the last one on: whichever minute is the last complete
    # one when the scrape comes (starting two servers may take the clock past a minute).
    db.execute("INSERT INTO core.send_minutes (number_id, minute, accepted) "
               "SELECT %s, date_trunc('minute', now()) + m * interval '1 minute', 60 "
               "FROM generate_series(-1, 10) m", (number_id,))

    with live_server(db_url, PGWA_API_HOST="0.0.0.0") as url:
        refused = httpx.get(f"{url}/metrics", timeout=30)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "PW403" and "PGWA_METRICS_TOKEN" in refused.text

    with live_server(db_url, PGWA_API_HOST="0.0.0.0", PGWA_METRICS_TOKEN="scrape-me-now") as url:
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401
        response = httpx.get(f"{url}/metrics", headers=_bearer("scrape-me-now"), timeout=30)
        assert response.status_code == 200
    text = response.text
    # The tenant's traffic is there, summed ...
    assert "pgwa_queue_messages{kind=\"campaign\"} 3" in text
    assert "pgwa_sends_per_second{outcome=\"accepted\"} 1" in text
    assert "pgwa_campaign_messages{status=\"running\",stage=\"total\"} 3" in text
    # ... and nothing that names it.
    for identifier in ["Quokka", "Zebra", pnid, waba, display, "867 5309", "Narwhal", "token-quokka",
                       factories.campaign_queue(db, campaign), factories.reply_queue(db, number_id),
                       f'"{campaign}"', f'"{number_id}"', f'"{tenant_id}"',
                       "campaign=", "number=", "queue=", "tenant"]:
        assert identifier not in text, identifier


# -- the operator's CLI ----------------------------------------------------------------------

def test_cli_makes_scoped_expiring_keys_and_lists_them(db: psycopg.Connection, db_url: str,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("COLUMNS", "250")
    acc = factories.account(db, with_templates=False)
    tenant = str(acc.tenant_id)
    assert cli.main(["key", "create", "--tenant", tenant, "--name", "ops"]) == 0
    admin = capsys.readouterr().out.strip().splitlines()[-1]
    assert cli.main(["key", "create", "--tenant", tenant, "--name", "reports", "--scope", "read",
                     "--expires", "30d", "--rate-limit", "60"]) == 0
    out, err = capsys.readouterr()
    reader = out.strip().splitlines()[-1]
    assert "scope read" in err and "expires" in err
    rows = db.execute("SELECT key_hash, scope, expires_at > now() + interval '29 days', rate_limit_per_minute "
                      "FROM core.api_keys WHERE tenant_id = %s ORDER BY api_key_id", (acc.tenant_id,)).fetchall()
    assert [(bytes(r[0]), r[1], r[2], r[3]) for r in rows] == [
        (_hash(admin), "admin", None, None), (_hash(reader), "read", True, 60)]
    db.execute("SELECT api.authenticate(%s, 'read')", (_hash(reader),))
    assert cli.main(["key", "list", "--tenant", tenant]) == 0
    listing = capsys.readouterr().out
    assert all(word in listing for word in ("scope", "expires", "last used", "admin", "read", "60"))
    assert reader not in listing and admin not in listing
    # A bad expiry is refused before anything is made.
    with pytest.raises(SystemExit):
        cli.main(["key", "create", "--tenant", tenant, "--expires", "soon"])
    assert db.execute("SELECT count(*) FROM core.api_keys WHERE tenant_id = %s", (acc.tenant_id,)).fetchone()[0] == 2


def test_a_tenants_key_cannot_lift_its_own_rate_limit(db: psycopg.Connection, login) -> None:
    """Through the API's role, a key above the platform's limit is refused; the operator
    (psql, pgwa key create) may give one."""
    tenant = db.execute("SELECT api.create_tenant('limits')").fetchone()[0]
    client = login("pgwa_api")
    with pytest.raises(psycopg.Error) as refused:
        client.execute("SELECT api.create_api_key(%s, 'fast', 'read', NULL, 1000000)", (tenant,))
    assert refused.value.diag.sqlstate == "PW410"
    assert client.execute("SELECT (api.create_api_key(%s, 'ok', 'read', NULL, 600)).scope",
                          (tenant,)).fetchone() == ("read",)
    assert db.execute("SELECT (api.create_api_key(%s, 'ops', 'read', NULL, 1000000)).scope",
                      (tenant,)).fetchone() == ("read",)
    assert db.execute("SELECT count(*) FROM core.api_keys WHERE tenant_id = %s", (tenant,)).fetchone() == (2,)


def test_requests_that_fail_count_against_the_rate_limit(db: psycopg.Connection, db_url: str) -> None:
    """Guessing ids costs requests too: a 404 rolls back its statement, not its count."""
    owner = new_tenant(db, with_templates=False)
    with live_server(db_url) as url, httpx.Client(base_url=url, timeout=30) as http:
        created = http.post("/v1/keys", headers=owner.headers,
                            json={"name": "guesser", "scope": "read", "rate_limit_per_minute": 3})
        limited = _bearer(created.json()["key"])
        statuses = [http.get(f"/v1/campaigns/{10**9 + i}", headers=limited).status_code for i in range(4)]
        assert statuses == [404, 404, 404, 429]
