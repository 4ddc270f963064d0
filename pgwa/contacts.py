"""Stream a contact CSV into this session's staging table with COPY.

The CSV's header names the columns: `phone` (or `wa_id`, `mobile`, `number`) is the
phone, `name` the name, every other column becomes a contact attribute that a template
parameter can map to. Parsing stays here only because COPY needs rows; every rule about
what a valid contact is lives in api.create_campaign. The HTTP upload (api/upload.py)
spools its own COPY text under caps, then stages it with the same two named queries.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO

import orjson
import psycopg

from pgwa.queries import queries

PHONE_COLUMNS = ("phone", "wa_id", "mobile", "number", "phone_number")


class CsvHeaderError(ValueError):
    """The CSV has no header naming a phone column."""


def staged_rows(source: TextIO | Iterable[str]) -> Iterator[tuple[int, str, str | None, str]]:
    """(row_no, phone, name, attributes-json) per data row; row 1 is the header."""
    reader = csv.reader(source)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise CsvHeaderError("the CSV is empty: expected a header row naming a phone column") from None
    phone_at = next((header.index(c) for c in PHONE_COLUMNS if c in header), None)
    if phone_at is None:
        raise CsvHeaderError(f"no phone column in the CSV header {header!r}: name one of {', '.join(PHONE_COLUMNS)}")
    name_at = header.index("name") if "name" in header else None
    extra = [(i, h) for i, h in enumerate(header) if i not in (phone_at, name_at) and h]
    for row_no, row in enumerate(reader, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        row += [""] * (len(header) - len(row))
        attributes = {h: row[i].strip() for i, h in extra}
        yield row_no, row[phone_at], row[name_at] if name_at is not None else None, orjson.dumps(attributes).decode()


def stage_csv(conn: psycopg.Connection, source: TextIO | Iterable[str],
              progress: Callable[[int], None] | None = None) -> int:
    """Stage the CSV's rows for api.create_campaign on this connection; returns the count."""
    conn.execute(queries["stage_contacts"])
    count = 0
    with conn.cursor().copy(queries["copy_staged_contacts"]) as copy:
        for count, row in enumerate(staged_rows(source), start=1):
            copy.write_row(row)
            if progress and count % 5000 == 0:
                progress(count)
    if progress:
        progress(count)
    return count


def csv_text(rows: Iterable[dict[str, object]]) -> io.StringIO:
    """A CSV document from dicts (all with the same keys), for scripts and tests."""
    out = io.StringIO()
    writer = None
    for row in rows:
        if writer is None:
            writer = csv.DictWriter(out, fieldnames=list(row))
            writer.writeheader()
        writer.writerow(row)
    out.seek(0)
    return out
