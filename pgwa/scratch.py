"""Scratch databases beside the project's, on the same server: for benchmarks and for
generating db/schema.sql from a clean migration."""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgwa.config import database_url
from pgwa.migrate import migrate


def _admin() -> tuple[dict, str]:
    server = conninfo_to_dict(database_url())
    return server, make_conninfo(**{**server, "dbname": "postgres"})


def drop_database(name: str) -> None:
    _, admin = _admin()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def fresh_database(name: str) -> str:
    """Drop and re-create database `name`, migrate it, and return its URL."""
    server, admin = _admin()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(**{**server, "dbname": name})
    migrate(url, quiet=True)
    return url
