"""The roles clients take, pgwa_api and pgwa_worker, call api functions and nothing else.

Functions in api run as their owner (SECURITY DEFINER): a login role that is a member of
pgwa_api creates and lists campaigns, one in pgwa_worker claims and reports sends, and
neither can read or write a table, nor call a function granted to the other.
"""

from __future__ import annotations

import orjson
import psycopg
import pytest

try:  # tests/ is a rootless directory under pytest's default import mode
    import factories as f
except ImportError:
    from tests import factories as f


def test_the_api_role_creates_and_lists_a_campaign_through_functions_alone(db, login) -> None:
    acc = f.account(db)
    client = login("pgwa_api")
    f.stage(client, f.contacts(5))                       # stage_contacts + COPY, as the caller
    templates = orjson.dumps([f.promo()]).decode()
    created = client.execute("SELECT campaign_id, total FROM api.create_campaign(%s, %s, 'roles', %s::jsonb)",
                             (acc.tenant_id, acc.number_id, templates)).fetchone()
    assert created[1] == 5
    client.execute("SELECT api.start_campaign(%s, %s)", (acc.tenant_id, created[0]))
    listed = client.execute("SELECT campaign_id, status FROM api.campaigns(%s)", (acc.tenant_id,)).fetchall()
    assert listed == [(created[0], "running")]


def test_the_worker_role_claims_and_reports_sends(db, login) -> None:
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 3)
    f.catch_up(db)
    worker = login("pgwa_worker")
    requests = f.claim(worker)
    assert len(requests) == 3
    assert f.report(worker, [f.ok(r) for r in requests])["accepted"] == 3
    # It may keep the number it claimed for (f.claim's worker, 'test'), and no other.
    assert worker.execute("SELECT api.keep_numbers('test', %s)", ([acc.phone_number_id],)).fetchone()[0] \
        == [acc.phone_number_id]
    assert worker.execute("SELECT api.keep_numbers('other', %s)", ([acc.phone_number_id],)).fetchone()[0] == []
    assert f.campaign(db, cid)["status"] == "completed"


@pytest.mark.parametrize("statement", [
    "SELECT * FROM core.campaigns",
    "UPDATE core.wa_numbers SET rate_mps = 1",
    "INSERT INTO core.tenants (name) VALUES ('x')",
    "SELECT * FROM pgmq.read('webhooks', 30, 1)",
    "SELECT * FROM api.claim_sends('thief', 10)",       # the worker's, not the API's
    "SELECT api.release_numbers('thief')",              # nor another worker's numbers
    "SELECT api.keep_numbers('thief', '{}')",
])
def test_the_api_role_reaches_no_table_and_no_function_of_the_workers(login, statement: str) -> None:
    client = login("pgwa_api")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        client.execute(statement)


def test_the_worker_role_cannot_create_campaigns(db, login) -> None:
    acc = f.account(db)
    worker = login("pgwa_worker")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        worker.execute("SELECT * FROM api.create_campaign(%s, %s, 'nope', '[]'::jsonb)",
                       (acc.tenant_id, acc.number_id))
