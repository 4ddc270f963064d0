"""The migration runner: numbered, forward-only migrations, then every function file.

Each migration in db/migrations runs once, in its own transaction, which first records
its version: two runners started at once serialise on that row, and the second skips
what the first applied (graphile-worker does the same). A migration is a file
NNNN_name.sql, or a folder NNNN_name/ whose .sql files run in name order as that one
migration. Then every file in db/functions is re-applied, all in one transaction. A
broken file raises MigrationError naming the file and the server's message, and leaves
the database as it was before that migration.

A commit lies between a migration and the function files: a migration that drops a
constraint whose work a function file's trigger takes over leaves a moment with neither,
harmless on a fresh database but not under traffic. 0118 and 0128 left that moment (a
database upgraded through them had it for the length of one runner's commits); from now
on such a migration creates the trigger and its function itself (the function file keeps
them with CREATE OR REPLACE), so the swap is one transaction.

The baseline (the migration named NNNN_baseline) folds the history up to its number
into the schema as it stood then. A database that history built already holds that
schema: the runner records the baseline there without running it (fold_history).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import psycopg

from pgwa.config import ROOT, database_url

MIGRATIONS = ROOT / "db" / "migrations"
FUNCTIONS = ROOT / "db" / "functions"
# The name of the migration that stands for every earlier one: NNNN_baseline.
BASELINE = "_baseline"

BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS core;
CREATE TABLE IF NOT EXISTS core.schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    sha256      text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
"""

# pgmq registered as an extension where its control file is installed (scripts/db.sh
# does that); otherwise the SQL script the PyPI package ships, as plain objects.
PGMQ_AVAILABLE = "SELECT 1 FROM pg_available_extensions WHERE name = 'pgmq'"
PGMQ_PRESENT = "SELECT 1 FROM pg_namespace WHERE nspname = 'pgmq'"
# pg_cron can only be created in the one database named by cron.database_name.
CRON_HERE = """
SELECT 1 FROM pg_available_extensions
WHERE name = 'pg_cron' AND current_setting('cron.database_name', true) = current_database()
"""

# The benchmarks count the send path's statements with it, where it is preloaded.
STATEMENTS_LOADED = """
SELECT 1 FROM pg_available_extensions
WHERE name = 'pg_stat_statements' AND current_setting('shared_preload_libraries') ~ 'pg_stat_statements'
"""


class MigrationError(RuntimeError):
    """A migration or function file failed; the message names it."""


def _pgmq_sql() -> str:
    import pgmq

    return (Path(pgmq.__file__).parent / "sql" / "pgmq.sql").read_text()


def ensure_extensions(conn: psycopg.Connection) -> None:
    with conn.transaction():
        # CREATE EXTENSION IF NOT EXISTS races with itself; runners take turns here.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgwa.ensure_extensions'))")
        if conn.execute(PGMQ_AVAILABLE).fetchone():
            conn.execute("CREATE EXTENSION IF NOT EXISTS pgmq")
        elif not conn.execute(PGMQ_PRESENT).fetchone():
            conn.execute(_pgmq_sql())
        if conn.execute(CRON_HERE).fetchone():
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        if conn.execute(STATEMENTS_LOADED).fetchone():
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


def _version(path: Path) -> int:
    head = path.name.split("_", 1)[0]
    if not head.isdigit():
        raise MigrationError(f"{path.name}: a migration's name starts with its number, e.g. 0001_core.sql")
    return int(head)


def _migrations(directory: Path) -> list[Path]:
    """The migrations in order: files NNNN_name.sql and folders NNNN_name/ (the README is neither)."""
    return sorted(p for p in directory.iterdir() if p.suffix == ".sql" or p.is_dir())


def _files(migration: Path) -> list[Path]:
    return sorted(migration.glob("*.sql")) if migration.is_dir() else [migration]


def _digest(migration: Path) -> str:
    """sha256 of a file's bytes, or of a folder's files with their names: renaming, adding
    or editing a file of the folder changes the migration as editing a file does."""
    if not migration.is_dir():
        return hashlib.sha256(migration.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for path in _files(migration):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def fold_history(conn: psycopg.Connection, migrations: list[Path]) -> None:
    """Record the baseline as applied, without running it, where its history built the database.

    That history ran in version order and ended with the migration numbered as the
    baseline, so a row at the baseline's version under another name marks a database that
    already holds the baseline's schema. Its rows up to there give way to the baseline's
    one row, so that it and a database created afresh record the same migrations. A
    database that holds only part of that history cannot be brought forward from here.
    """
    baseline = next((p for p in migrations if p.name.endswith(BASELINE)), None)
    if baseline is None:
        return
    version = _version(baseline)
    row = conn.execute("SELECT name FROM core.schema_migrations WHERE version = %s", (version,)).fetchone()
    if row is None:
        older = conn.execute(
            "SELECT max(name) FROM core.schema_migrations WHERE version < %s", (version,)
        ).fetchone()[0]
        if older is not None:
            raise MigrationError(
                f"{baseline.name}: the database was migrated only up to {older} of the history "
                "the baseline folds; migrate it with a checkout from before the baseline, or create it afresh"
            )
        return
    if row[0] != baseline.name:
        conn.execute("DELETE FROM core.schema_migrations WHERE version <= %s", (version,))
        conn.execute(
            "INSERT INTO core.schema_migrations (version, name, sha256) VALUES (%s, %s, %s)",
            (version, baseline.name, _digest(baseline)),
        )


def _run_file(conn: psycopg.Connection, path: Path) -> None:
    try:
        conn.execute(path.read_text())
    except psycopg.Error as exc:
        diag = exc.diag
        where = f" ({diag.context.strip()})" if diag.context else ""
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        raise MigrationError(f"{shown}: {diag.message_primary or exc}{where}") from exc


def apply_migrations(conn: psycopg.Connection, directory: Path = MIGRATIONS) -> list[str]:
    """Apply the migrations not yet recorded; return the names applied."""
    applied = []
    migrations = _migrations(directory)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgwa.ensure_extensions'))")
        conn.execute(BOOTSTRAP)
        fold_history(conn, migrations)
    for path in migrations:
        version, digest = _version(path), _digest(path)
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO core.schema_migrations (version, name, sha256) VALUES (%s, %s, %s)"
                " ON CONFLICT (version) DO NOTHING RETURNING version",
                (version, path.name, digest),
            ).fetchone()
            if row is None:
                known = conn.execute(
                    "SELECT name, sha256 FROM core.schema_migrations WHERE version = %s", (version,)
                ).fetchone()
                if known and known[1] != digest:
                    raise MigrationError(
                        f"{path.name}: changed after it was applied as {known[0]}; "
                        "migrations are forward-only, add a new one"
                    )
                continue
            for file in _files(path):
                _run_file(conn, file)
        applied.append(path.name)
    return applied


def apply_functions(conn: psycopg.Connection, directory: Path = FUNCTIONS) -> int:
    """Re-apply every function file in one transaction; return how many."""
    files = sorted(directory.glob("*.sql"))
    with conn.transaction():
        # Two runners replacing the same functions at once would collide.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgwa.apply_functions'))")
        for path in files:
            _run_file(conn, path)
        conn.execute("SELECT core.sync_cron_jobs()")
    return len(files)


def migrate(url: str | None = None, *, quiet: bool = False) -> list[str]:
    with psycopg.connect(url or database_url(), autocommit=True) as conn:
        conn.execute("SET client_min_messages = warning")
        ensure_extensions(conn)
        applied = apply_migrations(conn)
        count = apply_functions(conn)
    if not quiet:
        done = ", ".join(applied) if applied else "nothing new"
        print(f"migrate: applied {done}; re-applied {count} function files", file=sys.stderr)
    return applied


def main() -> int:
    try:
        migrate()
    except MigrationError as exc:
        print(f"migrate: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
