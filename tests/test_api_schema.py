"""The OpenAPI document: complete, drawn from COMMENT ON, and a schemathesis run against a
real server that finds no 5xx."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from starlette.routing import Route

from tests import factories
from tests.api_support import TestClient, live_server, new_tenant

pytest_plugins = ["tests.api_fixtures"]


def test_the_document_lists_every_route_with_its_functions_comment(db: psycopg.Connection,
                                                                    client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, ops in document["paths"].items() for method in ops}
    served = {(r.path, m) for r in client.app.routes if isinstance(r, Route)
              and (r.path.startswith("/v1/") or r.path == "/metrics")
              for m in (r.methods or ()) if m != "HEAD"}
    assert documented == served
    comments = dict(db.execute("SELECT name, description FROM api.functions()").fetchall())
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            function = op["x-pgwa-function"]
            assert function in comments, (path, method)
            assert comments[function] in op["description"], (path, method)
            assert {"400", "401", "404"} <= set(op["responses"])
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_every_api_function_is_documented_by_api_functions(db: psycopg.Connection) -> None:
    docs = db.execute("SELECT name, arguments, returns, description FROM api.functions()").fetchall()
    names = {d[0] for d in docs}
    assert {"campaign_stats", "campaigns", "reconcile_campaign", "metrics", "authenticate", "create_api_key",
            "import_contacts", "sync_templates", "notifications", "read_notifications"} <= names
    assert all(d[3] for d in docs)


def test_schemathesis_finds_no_server_error(db: psycopg.Connection, db_url: str) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    # Ids the fuzzer is likely to hit exist, and its own key is not among them (it may revoke
    # key 1, cancel campaign 1, ...: all fine, but it should keep its access).
    seed = new_tenant(db)
    factories.create_campaign(db, seed.acc, 5)
    db.execute("SELECT core.notify(%s, 'test', 'info', 'hello')", (seed.acc.tenant_id,))
    db.execute("SELECT setval(pg_get_serial_sequence('core.api_keys', 'api_key_id'), 1000000)")
    fuzzer = new_tenant(db)
    # Its ~1,700 requests are about the schema, not the per-key rate limit (test_security_keys.py).
    db.execute("UPDATE core.settings SET api_rate_limit_per_minute = 1000000")
    factories.create_campaign(db, fuzzer.acc, 5, start=True)

    failures: list[str] = []
    statuses: dict[int, int] = {}
    with live_server(db_url) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 20
        for operation in operations:
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                @settings(max_examples=25, deadline=None, database=None, derandomize=True,
                          phases=[Phase.explicit, Phase.generate],
                          suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy(generation_mode=mode))
                def call(case) -> None:
                    response = case.call(base_url=url, headers=fuzzer.headers, timeout=30)
                    statuses[response.status_code // 100] = statuses.get(response.status_code // 100, 0) + 1
                    if response.status_code >= 500:
                        failures.append(f"{case.method} {case.formatted_path} {case.query} "
                                        f"-> {response.status_code} {response.text[:200]}")

                try:
                    call()
                except Unsatisfiable:   # nothing to make invalid (an operation without inputs)
                    assert mode == schemathesis.GenerationMode.NEGATIVE
    log = getattr(live_server, "last_log", "")
    assert failures == [], "\n".join(failures[:20]) + "\n" + log[-3000:]
    assert statuses.get(2, 0) > 50 and statuses.get(4, 0) > 200, statuses
    # The fuzzer kept its key the whole time, so it tested more than 401s.
    assert db.execute("SELECT revoked_at FROM core.api_keys WHERE api_key_id > 1000000").fetchone()[0] is None
