"""Fixtures: a real PostgreSQL with pgmq and pg_cron, one fresh database per test.

The server is the project's own cluster (scripts/db.sh starts it, as the `postgres` OS
user when run as root, which pytest-postgresql's process fixture cannot do), or the one
DATABASE_URL names. pytest-postgresql's noproc fixture migrates a template database once
per session; every test gets a clone of it, which takes a few milliseconds.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_postgresql import factories
from pytest_postgresql.executors import NoopExecutor
from pytest_postgresql.janitor import DatabaseJanitor

from pgwa.config import ROOT, database_url
from pgwa.migrate import migrate

pytest_plugins = ["tests.sim_fixtures"] if (ROOT / "tests" / "sim_fixtures.py").exists() else []
# The dashboard browser tests' `browser` and `server` fixtures (selenium imported lazily).
pytest_plugins.append("tests.dashboard_fixtures")

# What a test needs, by module: `unit` tests talk to PostgreSQL only; `integration` tests
# also start processes or servers (the API, the simulator, a worker, uvicorn); `slow`
# ones run for tens of seconds (fuzzing, crash recovery). `make test` runs them all,
# `make test-fast` the unit tests alone.
INTEGRATION = frozenset({
    "test_api_auth", "test_api_routes", "test_api_schema", "test_bots", "test_campaign_recovery",
    "test_cli", "test_config", "test_dashboard_browser", "test_dashboard_campaigns", "test_dashboard_campaigns_browser", "test_dashboard_http", "test_contacts_http", "test_inbox", "test_limits_e2e", "test_llm", "test_migrate", "test_security_bots",
    "test_security_keys", "test_security_numbers", "test_send_api", "test_security_uploads", "test_security_webhooks",
    "test_media_http", "test_sim_control", "test_sim_limits", "test_sim_media", "test_sim_realism", "test_sim_send", "test_sim_templates", "test_sim_webhooks",
    "test_template_campaigns", "test_template_management_http",
    "test_webhooks_http", "test_webhooks_worker", "test_worker_graph", "test_worker_sender",
    "test_events_http", "test_send_api_sim", "test_cli_send", "test_send_api_batch",
    "test_dashboard_screens", "test_dashboard_screens_browser",
    "test_dashboard_inbox", "test_dashboard_inbox_browser",
})
SLOW = frozenset({"test_api_schema", "test_campaign_recovery"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        item.add_marker("integration" if module in INTEGRATION else "unit")
        if module in SLOW:
            item.add_marker("slow")


# The server's address is known without starting it; the cluster itself is started
# (and migrated) only when a test asks for a database, so tests of the simulator alone
# never touch PostgreSQL.
SERVER = conninfo_to_dict(database_url())


@pytest.fixture(scope="session")
def cluster() -> None:
    if not os.environ.get("DATABASE_URL"):
        subprocess.run([str(ROOT / "scripts" / "db.sh"), "up"], check=True, capture_output=True)


def load_schema(host: str, port: int, user: str, dbname: str, password: str | None, **_: object) -> None:
    migrate(make_conninfo(host=host, port=port, user=user, dbname=dbname, password=password), quiet=True)


postgresql_server = factories.postgresql_noproc(
    host=SERVER.get("host", "127.0.0.1"),
    port=int(SERVER.get("port", 5432)),
    user=SERVER.get("user", "postgres"),
    password=SERVER.get("password"),
    # Per session, so that several pytest runs can share the server.
    dbname=f"pgwa_test_{os.getpid()}",
    load=[load_schema],
)
_clones = itertools.count(1)


@pytest.fixture
def postgresql(cluster: None, postgresql_server: NoopExecutor) -> Iterator[psycopg.Connection]:
    """This test's own clone of the migrated template database.

    Each clone has a name no other test uses: a process a test started and left
    reconnecting (workers do reconnect) must never land in the next test's database.
    """
    server = postgresql_server
    janitor = DatabaseJanitor(user=server.user, host=server.host, port=server.port,
                              dbname=f"{server.dbname}_{next(_clones)}",
                              template_dbname=server.template_dbname, password=server.password)
    with janitor:
        conn = psycopg.connect(host=server.host, port=server.port, user=server.user,
                               dbname=janitor.dbname, password=server.password)
        try:
            yield conn
        finally:
            conn.close()


@pytest.fixture
def db_url(postgresql: psycopg.Connection) -> str:
    """The URL of this test's own freshly migrated database."""
    info = postgresql.info
    return make_conninfo(host=info.host, port=info.port, user=info.user, dbname=info.dbname,
                         password=info.password or None)


@pytest.fixture
def db(postgresql: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """An autocommit connection to this test's database, as a client would hold."""
    postgresql.autocommit = True
    yield postgresql


@pytest.fixture
def server_url(cluster: None) -> str:
    """The URL of the cluster's project database (the one pg_cron lives in)."""
    return database_url()


@pytest.fixture
def login(db: psycopg.Connection, db_url: str) -> Iterator:
    """connect(role): a connection as a throwaway login role in ``role`` (as in test_roles)."""
    made: list[str] = []
    conns: list[psycopg.Connection] = []

    def connect(group: str) -> psycopg.Connection:
        name = f"pgwa_test_{group}_{os.getpid()}_{len(made)}"
        db.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(sql.Identifier(name), sql.Identifier(group)))
        made.append(name)
        conns.append(psycopg.connect(make_conninfo(**{**conninfo_to_dict(db_url), "user": name}), autocommit=True))
        return conns[-1]

    yield connect
    for conn in conns:
        conn.close()
    for name in made:
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
