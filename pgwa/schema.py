"""Print db/schema.sql: the dump of a freshly migrated scratch database (make schema)."""

from __future__ import annotations

import subprocess
import sys

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgwa.config import ROOT, database_url
from pgwa.migrate import migrate

SCRATCH = "pgwa_schema_scratch"


def main() -> int:
    server = conninfo_to_dict(database_url())
    admin = make_conninfo(**{**server, "dbname": "postgres"})
    scratch = make_conninfo(**{**server, "dbname": SCRATCH})
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SCRATCH)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SCRATCH)))
        try:
            migrate(scratch, quiet=True)
            out = subprocess.run([str(ROOT / "scripts" / "dump_schema.sh"), scratch],
                                 capture_output=True, text=True, check=True).stdout
        finally:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SCRATCH)))
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
