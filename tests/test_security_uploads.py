"""Hostile uploads and hostile callers (issue 11, items 3-5): bounded CSV uploads over
HTTP, statement timeouts on every connection the API and the workers open, and a
pgwa_api member that cannot turn the staging table into code run as the functions' owner.

The attacks are performed as a client would: uploads over HTTP against ``python -m api``,
SQL as a throwaway login role in pgwa_api (what docker-compose's API connects as).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import orjson
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from api.app import create_app
from api.routes import JsonApi
from pgwa.config import ROOT, Settings
from tests import factories as f
from tests.api_support import Tenant, live_server, new_tenant
from worker.db import Database
from worker.sender import Sender

NO_TEMPORARY = ROOT / "db" / "migrations" / "0086_baseline" / "09_roles.sql"


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture
def production_privileges(db: psycopg.Connection) -> None:
    """This test's database with the database-level privileges migrate gives a real one.

    A test database is a clone of the migrated template, and CREATE DATABASE ... TEMPLATE
    does not copy database privileges: the clone gets PostgreSQL's defaults (TEMPORARY for
    PUBLIC). So the baseline's roles file, which revokes it, is run again here;
    test_a_migrated_database_gives_client_roles_no_temporary_objects checks migrate did.
    """
    db.execute(NO_TEMPORARY.read_text())


@pytest.fixture
def login(db: psycopg.Connection, db_url: str) -> Iterator:
    """login(group) -> (role name, its URL): a new login role in ``group`` for this database."""
    made: list[str] = []

    def make(group: str) -> tuple[str, str]:
        name = f"pgwa_sec_{group}_{os.getpid()}_{len(made)}"
        db.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(sql.Identifier(name), sql.Identifier(group)))
        made.append(name)
        return name, make_conninfo(**{**conninfo_to_dict(db_url), "user": name})

    yield make
    for name in made:        # roles are cluster-wide: leave none behind
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def csv_bytes(rows: list[dict]) -> bytes:
    return f.csv_text(rows).getvalue().encode()


def campaign_query(acc: f.Account, name: str = "caps") -> dict[str, str]:
    return {"number_id": str(acc.number_id), "name": name, "templates": orjson.dumps([f.order_update()]).decode()}


def contact_rows(n: int, **extra: str) -> list[dict]:
    return [{**row, "order_no": f"A-{i}", **extra} for i, row in enumerate(f.contacts(n))]


def stored(db: psycopg.Connection, tenant_id: int) -> tuple[int, int]:
    """(contacts, campaigns) of a tenant."""
    return db.execute("SELECT (SELECT count(*) FROM core.contacts WHERE tenant_id = %(t)s),"
                      " (SELECT count(*) FROM core.campaigns WHERE tenant_id = %(t)s)", {"t": tenant_id}).fetchone()


def core_fingerprint(db: psycopg.Connection) -> tuple:
    """What an attack that ran as the owner would change: rows of core tables, superusers,
    and objects in public."""
    return db.execute("""SELECT (SELECT count(*) FROM core.tenants), (SELECT count(*) FROM core.contacts),
                                (SELECT count(*) FROM core.campaigns), (SELECT count(*) FROM core.api_keys),
                                (SELECT count(*) FROM pg_roles WHERE rolsuper),
                                (SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace)""").fetchone()


# -- least privilege: the staging table -----------------------------------------------------------

def test_a_migrated_database_gives_client_roles_no_temporary_objects(db, postgresql_server) -> None:
    template = postgresql_server.template_dbname
    can = db.execute("""SELECT has_database_privilege('pgwa_api', %(d)s, 'TEMPORARY'),
                               has_database_privilege('pgwa_worker', %(d)s, 'TEMPORARY'),
                               has_database_privilege('public', %(d)s, 'TEMPORARY')""", {"d": template}).fetchone()
    assert can == (False, False, False)


# Each attack is tried by a pgwa_api member before and after the session's staging table
# exists (api.stage_contacts creates the session's pg_temp schema as the owner).
ATTACKS = {
    "a staging table of its own with a trigger": [
        "CREATE TEMP TABLE staged_contacts (row_no integer, phone text, name text, attributes jsonb)",
        ("CREATE TRIGGER own AFTER TRUNCATE ON pg_temp.staged_contacts "
        "EXECUTE FUNCTION pg_catalog.suppress_redundant_updates_trigger()"),
    ],
    "a temporary view in place of the staging table": [
        ("CREATE TEMP VIEW staged_contacts AS SELECT 2 AS row_no, '+14155550100' AS phone, 'x' AS name, "
        "'{}'::jsonb AS attributes"),
    ],
    "a rule on the owner's staging table": [
        "CREATE RULE own AS ON INSERT TO pg_temp.staged_contacts DO ALSO INSERT INTO core.tenants (name) VALUES ('x')",
    ],
    "a trigger on the owner's staging table": [
        ("CREATE TRIGGER own BEFORE TRUNCATE ON pg_temp.staged_contacts "
        "EXECUTE FUNCTION pg_catalog.suppress_redundant_updates_trigger()"),
    ],
    "row-level security on the owner's staging table": [
        "ALTER TABLE pg_temp.staged_contacts ENABLE ROW LEVEL SECURITY",
    ],
    "dropping the owner's staging table": ["DROP TABLE pg_temp.staged_contacts"],
    "a function in pg_temp": ["CREATE FUNCTION pg_temp.own() RETURNS int LANGUAGE sql AS 'SELECT 1'"],
    # With search_path = '' a SECURITY DEFINER function still looks type names up in
    # pg_temp first: a table named text is a type named text, and a cast to it a function
    # the owner would run.
    "a type shadowing text": ["CREATE TEMP TABLE text (a integer)"],
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_pgwa_api_member_cannot_plant_temporary_objects_for_the_owner(
        db, production_privileges, login, attack: str) -> None:
    acc = f.account(db)
    _, url = login("pgwa_api")
    before = core_fingerprint(db)
    with psycopg.connect(url, autocommit=True) as client:
        for phase in ("before staging", "after staging"):
            if phase == "after staging":
                client.execute("SELECT api.stage_contacts()")
            for statement in ATTACKS[attack]:
                if "pg_temp.staged_contacts" in statement and phase == "before staging":
                    continue     # needs the owner's table
                with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
                    client.execute(statement)
                assert "permission denied" in str(refused.value) or "must be owner" in str(refused.value)
        # The honest path still works for the same session.
        rows = f.stage(client, contact_rows(3))
        created = client.execute("SELECT total FROM api.create_campaign(%s, %s, 'honest', %s::jsonb)",
                                 (acc.tenant_id, acc.number_id, orjson.dumps([f.order_update()]).decode())).fetchone()
    assert rows == 3 and created == (3,)
    after = core_fingerprint(db)
    assert (after[0], after[3:]) == (before[0], before[3:])     # only the honest campaign's rows were added


# A client role that was granted TEMPORARY by mistake (or a session that kept a table of
# its own from before): the definer functions check the table before reading it.
PLANTED = {
    "a caller-owned table with a trigger that writes core tables": ("owned by", [
        ("CREATE TEMP TABLE staged_contacts (row_no integer NOT NULL, phone text, name text, "
        "attributes jsonb NOT NULL DEFAULT '{}')"),
        ("CREATE FUNCTION pg_temp.plant() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN INSERT INTO core.tenants (name) VALUES ('planted'); CREATE TABLE public.planted (); "
        "RETURN NULL; END$$"),
        "CREATE TRIGGER plant AFTER TRUNCATE ON pg_temp.staged_contacts EXECUTE FUNCTION pg_temp.plant()",
        "INSERT INTO pg_temp.staged_contacts VALUES (2, '+14155550100', 'Ana', '{\"order_no\": \"1\"}')",
    ]),
    "a temporary view calling the caller's function": ("it is a view", [
        ("CREATE FUNCTION pg_temp.plant() RETURNS text LANGUAGE plpgsql AS "
        "$$BEGIN INSERT INTO core.tenants (name) VALUES ('planted'); RETURN '+14155550100'; END$$"),
        ("CREATE TEMP VIEW staged_contacts AS SELECT 2 AS row_no, pg_temp.plant() AS phone, 'Ana'::text AS name, "
        "'{\"order_no\": \"1\"}'::jsonb AS attributes"),
    ]),
    "a caller-owned table with a rule": ("owned by", [
        ("CREATE TEMP TABLE staged_contacts (row_no integer NOT NULL, phone text, name text, "
        "attributes jsonb NOT NULL DEFAULT '{}')"),
        ("CREATE FUNCTION pg_temp.plant() RETURNS void LANGUAGE plpgsql AS "
         "$$BEGIN INSERT INTO core.tenants (name) VALUES ('planted'); END$$"),
        "CREATE RULE plant AS ON DELETE TO pg_temp.staged_contacts DO ALSO SELECT pg_temp.plant()",
        "INSERT INTO pg_temp.staged_contacts VALUES (2, '+14155550100', 'Ana', '{\"order_no\": \"1\"}')",
    ]),
}


@pytest.mark.parametrize("attack", PLANTED)
def test_a_planted_staging_table_is_refused_before_the_owner_reads_it(
        db, production_privileges, login, attack: str) -> None:
    acc = f.account(db)
    name, url = login("pgwa_api")
    db.execute(sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(
        sql.Identifier(db.info.dbname), sql.Identifier(name)))
    reason, statements = PLANTED[attack]
    before = core_fingerprint(db)
    templates = orjson.dumps([f.order_update()]).decode()
    with psycopg.connect(url, autocommit=True) as client:
        for statement in statements:
            client.execute(statement)
        for call, args in [("SELECT api.stage_contacts()", ()),
                           ("SELECT * FROM api.create_campaign(%s, %s, 'planted', %s::jsonb)",
                            (acc.tenant_id, acc.number_id, templates)),
                           ("SELECT * FROM api.import_contacts(%s)", (acc.tenant_id,))]:
            with pytest.raises(psycopg.Error) as refused:
                client.execute(call, args)
            assert refused.value.sqlstate == "PW403", call
            assert "pg_temp.staged_contacts is not the staging table" in refused.value.diag.message_primary
            assert reason in refused.value.diag.message_primary
            assert "api.stage_contacts()" in refused.value.diag.message_hint
        assert core_fingerprint(db) == before
        # Dropping its own object lets the same session take the honest path.
        client.execute("DROP VIEW IF EXISTS pg_temp.staged_contacts" if "view" in attack
                       else "DROP TABLE pg_temp.staged_contacts")
        assert f.stage(client, contact_rows(2)) == 2
        created = client.execute("SELECT total FROM api.create_campaign(%s, %s, 'honest', %s::jsonb)",
                                 (acc.tenant_id, acc.number_id, templates)).fetchone()
    assert created == (2,)
    assert db.execute("SELECT count(*) FROM core.tenants WHERE name = 'planted'").fetchone()[0] == 0
    assert db.execute("SELECT to_regclass('public.planted')").fetchone()[0] is None


def test_the_api_runs_as_a_pgwa_api_member_and_uploads_contacts(db, production_privileges, login) -> None:
    t = new_tenant(db)
    _, url = login("pgwa_api")
    with live_server(url) as base:
        created = httpx.post(f"{base}/v1/campaigns", params=campaign_query(t.acc), content=csv_bytes(contact_rows(4)),
                             headers={**t.headers, "content-type": "text/csv"}, timeout=30)
        imported = httpx.post(f"{base}/v1/contacts/import", content=csv_bytes(contact_rows(6)),
                              headers={**t.headers, "content-type": "text/csv"}, timeout=30)
    assert created.status_code == 201, created.text
    assert created.json()["total"] == 4
    assert imported.status_code == 200, imported.text
    assert stored(db, t.acc.tenant_id) == (6, 1)


# -- statement timeouts ---------------------------------------------------------------------------

def _cancelled(run) -> psycopg.Error:
    with pytest.raises(psycopg.errors.QueryCanceled) as cancelled:
        asyncio.run(run())
    assert "statement timeout" in str(cancelled.value)
    return cancelled.value


def test_every_connection_of_the_api_and_the_worker_cancels_a_long_statement(db_url: str) -> None:
    settings = Settings(database_url=db_url, statement_timeout_ms=200, idle_tx_timeout_ms=1500)
    long_statement = "SELECT pg_sleep(5)"

    async def api_pool() -> None:
        api = JsonApi(settings, pool_size=1)
        await api.pool.open(wait=True, timeout=30)
        try:
            async with api.pool.connection() as conn:
                shown = await (await conn.execute("SELECT current_setting('idle_in_transaction_session_timeout')"))\
                    .fetchone()
                assert shown == ("1500ms",)
                await conn.execute(long_statement)
        finally:
            await api.pool.close()

    async def webhook_receiver() -> None:
        committer = create_app(settings).state.committer
        conn = await committer._connect()
        try:
            await conn.execute(long_statement)
        finally:
            await conn.close()

    def worker(connection: str):
        async def run() -> None:
            db = getattr(Sender(settings), connection)      # the claim and the report connections
            try:
                await db.fetch(long_statement)
            finally:
                await db.close()
        return run

    for run in (api_pool, webhook_receiver, worker("_claims"), worker("_reports")):
        _cancelled(run)


def test_a_url_that_carries_options_keeps_them_beside_the_timeouts(db_url: str) -> None:
    settings = Settings(database_url=make_conninfo(db_url, options="-c work_mem=1234kB"), statement_timeout_ms=1234)

    async def shown() -> tuple:
        db = Database(settings.session_url())
        try:
            rows, _ = await db.fetch("SELECT current_setting('work_mem'), current_setting('statement_timeout')")
            return rows[0]
        finally:
            await db.close()

    assert asyncio.run(shown()) == ("1234kB", "1234ms")


# -- bounded uploads over HTTP --------------------------------------------------------------------

CAPS = {"PGWA_UPLOAD_MAX_BYTES": "4096", "PGWA_UPLOAD_MAX_ROWS": "5", "PGWA_UPLOAD_MAX_FIELD": "3000"}


@pytest.fixture
def capped(db: psycopg.Connection, db_url: str) -> Iterator[tuple[str, Tenant]]:
    t = new_tenant(db)
    with live_server(db_url, **CAPS) as base:
        yield base, t


def _post(base: str, t: Tenant, content, path: str = "/v1/campaigns") -> httpx.Response:
    params = campaign_query(t.acc) if path == "/v1/campaigns" else {}
    return httpx.post(f"{base}{path}", params=params, content=content,
                      headers={**t.headers, "content-type": "text/csv"}, timeout=30)


def test_an_upload_over_the_byte_cap_is_413_and_stores_nothing(db, capped) -> None:
    base, t = capped
    body = csv_bytes(contact_rows(2, note="n" * 2500))           # ~5 KB: fields and rows within their caps
    assert len(body) > 4096
    declared = _post(base, t, body)                                # with Content-Length: refused before reading
    chunked = _post(base, t, iter([body[:1000], body[1000:]]))     # chunked: refused as the bytes arrive
    imported = _post(base, t, body, "/v1/contacts/import")
    for response in (declared, chunked, imported):
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["code"] == "PW120" and error["name"] == "upload_too_large"
        assert "4096 bytes" in error["message"] and "PGWA_UPLOAD_MAX_BYTES" in error["message"]
    assert "row" in chunked.json()["error"]["message"]
    assert stored(db, t.acc.tenant_id) == (0, 0)
    # Within the caps the same route works.
    fine = _post(base, t, csv_bytes(contact_rows(5)))
    assert fine.status_code == 201, fine.text
    assert stored(db, t.acc.tenant_id) == (5, 1)


def test_an_upload_over_the_row_cap_is_413_naming_the_row(db, capped) -> None:
    base, t = capped
    for path in ("/v1/campaigns", "/v1/contacts/import"):
        response = _post(base, t, csv_bytes(contact_rows(8)), path)
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        # Row 1 is the header: the sixth data row is row 7.
        assert error["code"] == "PW120"
        assert "row 7" in error["message"] and "5 contact rows" in error["message"]
        assert "PGWA_UPLOAD_MAX_ROWS" in error["message"]
    assert stored(db, t.acc.tenant_id) == (0, 0)


def test_a_field_over_the_length_cap_is_refused_naming_the_row_and_the_column(db, capped) -> None:
    base, t = capped
    rows = contact_rows(3)
    rows[1]["name"] = "N" * 3001
    for path in ("/v1/campaigns", "/v1/contacts/import"):
        response = _post(base, t, csv_bytes(rows), path)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "PW121" and error["name"] == "field_too_long"
        assert "row 3, column 'name'" in error["message"]
        assert "3001 characters" in error["message"] and "cap of 3000" in error["message"]
        assert "PGWA_UPLOAD_MAX_FIELD" in error["message"]
    assert stored(db, t.acc.tenant_id) == (0, 0)


def _http_response(sock: socket.socket, until: float, watch) -> tuple[int, dict]:
    """Read one HTTP/1.1 response (Content-Length framed) before ``until``, calling
    ``watch()`` between reads; returns (status, JSON body)."""
    data = b""
    sock.settimeout(0.05)
    while time.monotonic() < until:
        watch()
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if length is not None and len(body) >= length:
                return int(head.split(b" ", 2)[1]), orjson.loads(body[:length])
    raise AssertionError(f"no complete response before the client gave up: {data[:300]!r}")


def test_a_slow_body_is_refused_at_the_deadline_holding_no_connection_meanwhile(db, db_url) -> None:
    t = new_tenant(db)
    held: list[tuple] = []

    def watch() -> None:
        # The API's backends while the client dribbles: none in a transaction or busy, but
        # for the one-statement authentication that comes before the body is read.
        held.extend(db.execute("""SELECT pid, state, query FROM pg_stat_activity
                                  WHERE application_name = 'pgwa-api' AND datname = current_database()
                                    AND (xact_start IS NOT NULL OR state <> 'idle')
                                    AND query NOT LIKE 'SELECT api.authenticate(%%'""").fetchall())

    with live_server(db_url, PGWA_UPLOAD_DEADLINE_S="1") as base:
        port = int(base.rsplit(":", 1)[1])
        first = b"phone,name,order_no\n+14155550100,Ana,A-1\n"
        head = (f"POST /v1/campaigns?{urlencode(campaign_query(t.acc))} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {t.key}\r\n"
                "Content-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head + f"{len(first):x}\r\n".encode() + first + b"\r\n")
            # Then nothing more: the client waits far longer (15 s) than the 1 s deadline.
            status, body = _http_response(sock, time.monotonic() + 15, watch)
    assert status == 408, body
    error = body["error"]
    assert error["code"] == "PW122" and error["name"] == "upload_too_slow"
    assert "within 1 s" in error["message"] and "PGWA_UPLOAD_DEADLINE_S" in error["message"]
    assert "row" in error["message"]
    assert held == []
    assert stored(db, t.acc.tenant_id) == (0, 0)
