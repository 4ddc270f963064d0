"""The migration runner, the extensions and the catalog rules every function obeys."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgwa.config import ROOT
from pgwa.migrate import (
    BASELINE,
    MIGRATIONS,
    MigrationError,
    apply_functions,
    apply_migrations,
    migrate,
)

# A fingerprint of everything the migrations and functions define in core and api.
CATALOG_FINGERPRINT = """
SELECT md5(string_agg(item, E'\n' ORDER BY item)) FROM (
    SELECT format('%s.%s %s', n.nspname, c.relname, c.relkind) AS item
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname IN ('core', 'api', 'pgmq')
    UNION ALL
    SELECT pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname IN ('core', 'api') AND p.prokind = 'f'
    UNION ALL
    SELECT format('%s %s', conname, pg_get_constraintdef(oid)) FROM pg_constraint
    WHERE connamespace IN ('core'::regnamespace, 'api'::regnamespace)
    UNION ALL
    SELECT format('%s %s', version, sha256) FROM core.schema_migrations
    UNION ALL
    SELECT format('%s rows in %s', count(*), 'meta_error_codes') FROM core.meta_error_codes
) items
"""


def migration_names() -> list[str]:
    """What db/migrations holds: the baseline folder, then the files after it."""
    return sorted(p.name for p in MIGRATIONS.iterdir() if p.suffix == ".sql" or p.is_dir())


def baseline() -> Path:
    return next(p for p in MIGRATIONS.iterdir() if p.name.endswith(BASELINE))


def record_folded_history(db: psycopg.Connection, *names: str) -> None:
    """Make this database's records look as the history the baseline folds left them: the
    migrations named, in place of the baseline's row."""
    db.execute("DELETE FROM core.schema_migrations WHERE version <= %s", (int(baseline().name[:4]),))
    for name in names:
        db.execute("INSERT INTO core.schema_migrations (version, name, sha256) VALUES (%s, %s, 'old')",
                   (int(name[:4]), name))


@pytest.fixture
def empty_db(db: psycopg.Connection) -> str:
    """A brand-new empty database beside the test's own; dropped afterwards."""
    name = f"{db.info.dbname}_empty"
    db.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = conninfo_to_dict(make_conninfo(host=db.info.host, port=db.info.port, user=db.info.user))
    yield make_conninfo(**info, dbname=name)
    db.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def fingerprint(url: str) -> str:
    with psycopg.connect(url) as conn:
        return conn.execute(CATALOG_FINGERPRINT).fetchone()[0]


def test_migrate_from_empty_creates_schema_and_queues(empty_db: str) -> None:
    applied = migrate(empty_db, quiet=True)
    assert applied == migration_names()
    assert applied[0] == baseline().name
    with psycopg.connect(empty_db) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'core'")}
        queues = {r[0] for r in conn.execute("SELECT queue_name FROM pgmq.list_queues()")}
        extensions = {r[0] for r in conn.execute("SELECT extname FROM pg_extension")}
    assert {"tenants", "api_keys", "wa_numbers", "templates", "contacts", "campaigns",
            "outbound_messages", "status_events", "inbox_messages", "bot_rules",
            "notifications", "meta_error_codes", "error_codes"} <= tables
    assert {"webhooks", "webhooks_dead", "llm_jobs"} <= queues
    assert "pgmq" in extensions


def test_migrate_three_times_changes_nothing(empty_db: str) -> None:
    migrate(empty_db, quiet=True)
    first = fingerprint(empty_db)
    assert migrate(empty_db, quiet=True) == []
    assert migrate(empty_db, quiet=True) == []
    assert fingerprint(empty_db) == first


def test_two_runners_at_once_apply_each_migration_once(empty_db: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(empty_db, quiet=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(empty_db) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM core.schema_migrations")]
    assert len(versions) == len(set(versions)) == len(migration_names())


def test_broken_migration_fails_loudly_and_rolls_back(db: psycopg.Connection, tmp_path: Path) -> None:
    (tmp_path / "9001_half_done.sql").write_text(
        "CREATE TABLE core.half_done (id int);\nSELECT no_such_column FROM core.tenants;\n")
    with pytest.raises(MigrationError) as info:
        apply_migrations(db, tmp_path)
    assert "9001_half_done.sql" in str(info.value)
    assert "no_such_column" in str(info.value)
    assert db.execute("SELECT to_regclass('core.half_done')").fetchone()[0] is None
    assert db.execute("SELECT count(*) FROM core.schema_migrations WHERE version = 9001").fetchone()[0] == 0


def test_broken_function_file_leaves_every_function_as_it_was(db: psycopg.Connection, tmp_path: Path) -> None:
    before = fingerprint(db.info.dsn)
    (tmp_path / "a_fine.sql").write_text(
        "CREATE OR REPLACE FUNCTION core.sync_cron_jobs() RETURNS integer LANGUAGE sql AS 'SELECT 42';")
    (tmp_path / "b_broken.sql").write_text("CREATE OR REPLACE FUNCTION core.x( RETURNS int;")
    with pytest.raises(MigrationError, match="b_broken.sql"):
        apply_functions(db, tmp_path)
    assert fingerprint(db.info.dsn) == before


def test_a_folder_is_one_migration_run_in_one_transaction(db: psycopg.Connection, tmp_path: Path) -> None:
    folder = tmp_path / "9002_in_parts"
    folder.mkdir()
    (folder / "01_table.sql").write_text("CREATE TABLE core.in_parts (id int);")
    (folder / "02_broken.sql").write_text("SELECT no_such_column FROM core.in_parts;")
    with pytest.raises(MigrationError, match="02_broken.sql"):
        apply_migrations(db, tmp_path)
    assert db.execute("SELECT to_regclass('core.in_parts')").fetchone()[0] is None
    (folder / "02_broken.sql").write_text("INSERT INTO core.in_parts VALUES (1);")
    assert apply_migrations(db, tmp_path) == ["9002_in_parts"]
    assert db.execute("SELECT id FROM core.in_parts").fetchall() == [(1,)]


def test_changed_migration_is_refused(db: psycopg.Connection, tmp_path: Path) -> None:
    shutil.copytree(baseline(), tmp_path / baseline().name)
    (tmp_path / baseline().name / "01_registries.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="forward-only"):
        apply_migrations(db, tmp_path)


def test_database_the_folded_history_built_takes_the_baseline_without_running_it(
        db: psycopg.Connection, db_url: str) -> None:
    fresh = fingerprint(db_url)
    record_folded_history(db, "0001_error_codes.sql", "0056_definer_roles.sql", "0086_send_policy_type.sql")
    # Running the baseline would fail: its tables are there already.
    assert migrate(db_url, quiet=True) == []
    assert fingerprint(db_url) == fresh


def test_database_the_folded_history_built_gets_the_migrations_after_the_baseline(
        db: psycopg.Connection, tmp_path: Path) -> None:
    shutil.copytree(baseline(), tmp_path / baseline().name)
    (tmp_path / "9003_after_the_baseline.sql").write_text("CREATE TABLE core.after_the_baseline (id int);")
    record_folded_history(db, "0001_error_codes.sql", "0086_send_policy_type.sql")
    assert apply_migrations(db, tmp_path) == ["9003_after_the_baseline.sql"]
    assert db.execute("SELECT to_regclass('core.after_the_baseline')").fetchone()[0] is not None
    folded = db.execute("SELECT name FROM core.schema_migrations WHERE version <= %s",
                        (int(baseline().name[:4]),)).fetchall()
    assert folded == [(baseline().name,)]


def test_database_with_part_of_the_folded_history_is_refused(db: psycopg.Connection) -> None:
    record_folded_history(db, "0001_error_codes.sql", "0050_conversations.sql")
    with pytest.raises(MigrationError, match="only up to 0050_conversations.sql"):
        apply_migrations(db)
    names = [r[0] for r in db.execute("SELECT name FROM core.schema_migrations ORDER BY version")]
    assert names[:2] == ["0001_error_codes.sql", "0050_conversations.sql"]


def test_pgmq_queue_round_trip(db: psycopg.Connection) -> None:
    db.execute("SELECT pgmq.create('round_trip')")
    msg_id = db.execute("""SELECT * FROM pgmq.send('round_trip', '{"hello": "world"}')""").fetchone()[0]
    read = db.execute("SELECT msg_id, message FROM pgmq.read('round_trip', 30, 10)").fetchall()
    assert read == [(msg_id, {"hello": "world"})]
    # Invisible while claimed; gone once deleted.
    assert db.execute("SELECT count(*) FROM pgmq.read('round_trip', 30, 10)").fetchone()[0] == 0
    assert db.execute("SELECT pgmq.delete('round_trip', %s::bigint)", (msg_id,)).fetchone()[0] is True
    assert db.execute("SELECT queue_length FROM pgmq.metrics('round_trip')").fetchone()[0] == 0


def test_project_database_has_both_extensions_and_the_cron_jobs(server_url: str) -> None:
    migrate(server_url, quiet=True)
    with psycopg.connect(server_url) as conn:
        extensions = {r[0] for r in conn.execute("SELECT extname FROM pg_extension")}
        jobs = {r[0]: r[1] for r in conn.execute("SELECT jobname, command FROM cron.job")}
        declared = {r[0]: r[1] for r in conn.execute("SELECT job_name, command FROM core.cron_jobs")}
    assert {"pgmq", "pg_cron"} <= extensions
    assert declared and all(jobs.get(name) == command for name, command in declared.items())


def test_every_meta_error_code_the_issue_names_is_classified(db: psycopg.Connection) -> None:
    required = {0, 3, 4, 10, 100, 190, 368, 80007, 130429, 130472, 131000, 131005, 131008, 131009,
                131016, 131021, 131026, 131031, 131042, 131045, 131047, 131048, 131049, 131050,
                131051, 131052, 131053, 131056, 132000, 132001, 132005, 132007, 132012, 132015,
                132016, 133010}
    known = {r[0] for r in db.execute("SELECT code FROM core.meta_error_codes")}
    assert required - known == set()
    rows = dict(db.execute("SELECT code, category FROM core.meta_error_codes WHERE code IN (190, 130429, 131026)"))
    assert rows == {190: "auth", 130429: "rate_limit", 131026: "recipient"}
    unknown = db.execute("SELECT category, retryable, alert FROM core.meta_error(987654)").fetchone()
    assert unknown == ("unknown", True, True)


def test_schema_sql_is_current(db_url: str) -> None:
    dumped = subprocess.run([str(ROOT / "scripts" / "dump_schema.sh"), db_url],
                            capture_output=True, text=True, check=True).stdout
    committed = (ROOT / "db" / "schema.sql").read_text()
    assert dumped == committed, "db/schema.sql is stale: run `make schema` and commit the diff"
