"""The named queries of pgwa/queries.sql: every name the code uses is there, every query
there is used, each takes named parameters only and prepares against the migrated schema."""

from __future__ import annotations

import re

import psycopg
import pytest
from psycopg import sql

from pgwa.config import ROOT
from pgwa.queries import parse, queries

USED = re.compile(r"""queries\[["']([a-z0-9_]+)["']\]""")
PARAM = re.compile(r"%\((\w+)\)s")


def numbered(query: str) -> str:
    """The query with $1, $2, ... for its named parameters, as psycopg sends it."""
    numbers: dict[str, int] = {}
    return PARAM.sub(lambda m: f"${numbers.setdefault(m.group(1), len(numbers) + 1)}", query)


def names_used() -> set[str]:
    found = set()
    for folder in ("api", "bench", "pgwa", "sim", "tests", "worker"):
        for path in (ROOT / folder).rglob("*.py"):
            found |= set(USED.findall(path.read_text(encoding="utf-8")))
    return found


def test_every_name_the_code_uses_is_a_query_and_every_query_is_used() -> None:
    used = names_used()
    assert used - set(queries) == set(), "used but not in pgwa/queries.sql"
    assert set(queries) - used == set(), "in pgwa/queries.sql but used nowhere"


def test_parameters_are_named_and_the_text_has_no_comment_or_semicolon() -> None:
    for name, query in queries.items():
        assert "%s" not in query, f"{name}: a positional parameter"
        assert "--" not in query and not query.endswith(";"), name


def test_a_query_runs_from_its_header_to_the_next_without_its_comments() -> None:
    text = ("-- the file's header\n\n-- a --\n-- what it returns\nSELECT 1\n  FROM t;\n\n"
            "-- a section ------------------\n\n-- b --\nSELECT 2\n")
    assert parse(text) == {"a": "SELECT 1\n  FROM t", "b": "SELECT 2"}


def test_a_name_given_twice_or_a_query_without_sql_is_refused() -> None:
    with pytest.raises(ValueError, match="named twice"):
        parse("-- a --\nSELECT 1;\n\n-- a --\nSELECT 2;\n")
    with pytest.raises(ValueError, match="has no SQL"):
        parse("-- a --\n-- says what it returns\n\n-- b --\nSELECT 2;\n")


def test_every_query_prepares_against_the_schema(db: psycopg.Connection) -> None:
    for name, query in queries.items():
        if query.startswith("COPY"):
            continue
        text = numbered(query)
        try:
            db.execute(sql.SQL("PREPARE {} AS {}").format(sql.Identifier(f"q_{name}"), sql.SQL(text)))
        except psycopg.Error as exc:
            pytest.fail(f"{name}: {exc.diag.message_primary}")
        db.execute(sql.SQL("DEALLOCATE {}").format(sql.Identifier(f"q_{name}")))
