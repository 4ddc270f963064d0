"""Named queries: pgwa/queries.sql, read once into ``queries``, a read-only dict by name.

::

    from pgwa.queries import queries
    conn.execute(queries["create_tenant"], {"name": "acme"}).fetchone()[0]

A name that is not in the file is a KeyError at the call; tests/test_queries.py checks
that every name the code uses is in the file, that every query in the file is used, and
that each one prepares against the migrated schema.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib.resources import files
from types import MappingProxyType

HEADER = re.compile(r"^-- ([a-z0-9_]+) --$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """The queries of a text in queries.sql's format: each runs from its ``-- name --`` line
    to the next one, without its whole-line comments and its final semicolon."""
    parts = HEADER.split(text)
    result: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if name in result:
            raise ValueError(f"queries.sql: {name} is named twice")
        lines = (line for line in body.splitlines() if not line.lstrip().startswith("--"))
        query = "\n".join(lines).strip().removesuffix(";").rstrip()
        if not query:
            raise ValueError(f"queries.sql: {name} has no SQL")
        result[name] = query
    return result


queries: Mapping[str, str] = MappingProxyType(
    parse(files("pgwa").joinpath("queries.sql").read_text(encoding="utf-8")))
