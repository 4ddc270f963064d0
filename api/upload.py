"""A contact CSV uploaded over HTTP, streamed into this session's staging table with COPY.

::

    request.stream() ──> multipart part (or the raw text/csv body) ──> UTF-8, whole CSV
        records (quote-aware) ──> csv rows ──> COPY pg_temp.staged_contacts, chunk by chunk

Nothing holds the whole file: each chunk the client sends is parsed and written to
COPY before the next is read. The header rules are pgwa.contacts' (a ``phone`` column
or one of its aliases, ``name``, every other column an attribute); what makes a valid
contact is decided in SQL (``api.create_campaign`` / ``api.import_contacts``).
A multipart body may carry small text fields beside the file (``params``, a JSON
object); they are collected in ``CsvUpload.fields``.
"""

from __future__ import annotations

import codecs
import csv
from collections import deque
from collections.abc import AsyncIterator

import orjson
import psycopg
from starlette.requests import Request

from api.errors import ApiError
from pgwa.contacts import COPY_STAGED, PHONE_COLUMNS, STAGE

CSV_TYPES = ("text/csv", "application/csv", "text/plain", "application/octet-stream", "application/vnd.ms-excel")
MAX_RECORD = 1 << 20        # one CSV record (a line, or lines inside quotes)
MAX_FIELD = 64 << 10        # a multipart text field
FILE_FIELDS = ("file", "csv", "contacts")


def _bad_csv(message: str) -> ApiError:
    return ApiError("PW101", message, "Upload a UTF-8 CSV whose header names a phone column "
                    f"({', '.join(PHONE_COLUMNS)}), e.g. phone,name,order_no.")


def _in_quotes_after(line: str, in_quotes: bool) -> bool:
    """Whether a CSV record is still inside a quoted field at the end of ``line``, read as
    the csv module reads it: a quote opens a field only at the field's start, and ``""``
    inside a quoted field is a literal quote. Most lines have no quote and cost one scan."""
    if '"' not in line:
        return in_quotes
    field_start = not in_quotes
    after_quote = False
    for ch in line:
        if in_quotes:
            if ch == '"':
                in_quotes = False
                after_quote = True
            continue
        if ch == '"' and (field_start or after_quote):
            in_quotes = True
        field_start = ch == ","
        after_quote = False
    return in_quotes


class CsvRows:
    """Incremental CSV parsing: ``feed(bytes)`` returns the staged rows completed so far,
    as (row_no, phone, name, attributes-json); row 1 is the header, as pgwa.contacts counts."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self._partial = ""             # the current line, not yet ended
        self._record: list[str] = []   # lines of the current record (open quotes)
        self._record_size = 0
        self._in_quotes = False
        self._records: deque[str] = deque()
        self._reader = csv.reader(self._records_iter())
        self._row_no = 0
        self._header: list[str] | None = None
        self._phone_at = self._name_at = -1
        self._extra: list[tuple[int, str]] = []
        self.rows = 0

    def _records_iter(self):
        # csv.reader pulls one whole record at a time: feed() only asks for a row when a
        # complete record waits here, so the reader never sees the deque run dry mid-record.
        while True:
            yield self._records.popleft()

    def feed(self, data: bytes, final: bool = False) -> list[tuple]:
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise _bad_csv(f"the CSV is not UTF-8 (byte {exc.start} of a chunk)") from None
        *lines, rest = text.split("\n")
        for piece in lines:
            self._end_line(self._partial + piece + "\n")
            self._partial = ""
        self._partial += rest
        if len(self._partial) > MAX_RECORD:
            raise _bad_csv("a CSV line is longer than 1 MiB")
        if final:
            if self._partial:
                self._end_line(self._partial)
                self._partial = ""
            if self._record:   # an unclosed quote: let csv parse what there is
                self._records.append("".join(self._record))
                self._record.clear()
        return self._rows()

    def _end_line(self, line: str) -> None:
        self._record.append(line)
        self._record_size += len(line)
        self._in_quotes = _in_quotes_after(line, self._in_quotes)
        if not self._in_quotes:
            self._records.append("".join(self._record))
            self._record.clear()
            self._record_size = 0
        elif self._record_size > MAX_RECORD:
            raise _bad_csv("a quoted CSV field runs on for more than 1 MiB (an unclosed quote?)")

    def _rows(self) -> list[tuple]:
        out = []
        while self._records:
            try:
                row = next(self._reader)
            except csv.Error as exc:
                raise _bad_csv(f"row {self._row_no + 1} is not valid CSV: {exc}") from None
            except (IndexError, StopIteration):   # the last record ends inside quotes
                raise _bad_csv(f"row {self._row_no + 1} opens a quote that never closes") from None
            self._row_no += 1
            if self._header is None:
                self._set_header(row)
                continue
            if not row or not any(cell.strip() for cell in row):
                continue
            row += [""] * (len(self._header) - len(row))
            attributes = {h: row[i].strip() for i, h in self._extra}
            out.append((self._row_no, row[self._phone_at],
                        row[self._name_at] if self._name_at >= 0 else None,
                        orjson.dumps(attributes).decode()))
        self.rows += len(out)
        return out

    def _set_header(self, row: list[str]) -> None:
        header = [h.strip().lower() for h in row]
        phone_at = next((header.index(c) for c in PHONE_COLUMNS if c in header), None)
        if phone_at is None:
            raise _bad_csv(f"no phone column in the CSV header {header[:20]!r}")
        self._header = header
        self._phone_at = phone_at
        self._name_at = header.index("name") if "name" in header else -1
        self._extra = [(i, h) for i, h in enumerate(header) if i not in (phone_at, self._name_at) and h]

    def finish(self) -> list[tuple]:
        rows = self.feed(b"", final=True)
        if self._header is None:
            raise _bad_csv("the CSV is empty: expected a header row naming a phone column")
        return rows


class _Multipart:
    """python-multipart's streaming parser, keeping the CSV part's bytes and small fields."""

    def __init__(self, content_type: str) -> None:
        try:
            from python_multipart.multipart import MultipartParser, parse_options_header
        except ImportError:  # pragma: no cover - installed with the project
            raise ApiError("PW100", "multipart uploads are not available on this server",
                           "Send the CSV as the body with Content-Type: text/csv.", status=415) from None
        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise ApiError("PW100", "multipart/form-data without a boundary",
                           "Let the HTTP client build the multipart body.")
        self.fields: dict[str, str] = {}
        self._chunks: list[bytes] = []
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._is_file = False
        self._field = bytearray()
        self.file_seen = False
        self._file_done = False
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        })
        self._parse_options_header = parse_options_header

    def _part_begin(self) -> None:
        self._headers = {}
        self._field = bytearray()

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _, disposition = self._parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = disposition.get(b"name", b"").decode("latin-1")
        # The first file part (or a part named file/csv/contacts) is the CSV; only one.
        self._is_file = not self._file_done and (b"filename" in disposition or self._name in FILE_FIELDS)
        self.file_seen = self.file_seen or self._is_file

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self._chunks.append(data[start:end])
        else:
            self._field += data[start:end]
            if len(self._field) > MAX_FIELD:
                raise ApiError("PW100", f"multipart field {self._name!r} is larger than 64 KiB",
                               "Only the CSV file may be large.")

    def _part_end(self) -> None:
        if self._is_file:
            self._file_done = True
        elif self._name:
            self.fields[self._name] = self._field.decode("utf-8", "replace")

    def feed(self, chunk: bytes) -> list[bytes]:
        try:
            self._parser.write(chunk)
        except ValueError as exc:  # python-multipart's errors (FormParserError) are ValueErrors
            raise ApiError("PW100", f"malformed multipart body: {type(exc).__name__}",
                           "Let the HTTP client build the multipart body.") from None
        chunks, self._chunks = self._chunks, []
        return chunks


class CsvUpload:
    """The CSV of a request (a text/csv body, or the file part of a multipart form)."""

    def __init__(self, request: Request) -> None:
        self.request = request
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";", 1)[0].strip().lower()
        self.multipart = _Multipart(content_type) if media == "multipart/form-data" else None
        if self.multipart is None and media not in CSV_TYPES:
            raise ApiError("PW100", f"cannot read a contact list from Content-Type {media or 'none'!r}",
                           "Send the CSV as the body with Content-Type: text/csv, or as the file "
                           "of a multipart/form-data upload.", status=415)
        self.csv = CsvRows()

    @property
    def fields(self) -> dict[str, str]:
        return self.multipart.fields if self.multipart else {}

    async def batches(self) -> AsyncIterator[list[tuple]]:
        """Batches of staged rows, as the body arrives."""
        async for chunk in self.request.stream():
            if not chunk:
                continue
            for data in (self.multipart.feed(chunk) if self.multipart else (chunk,)):
                rows = self.csv.feed(data)
                if rows:
                    yield rows
        if self.multipart and not self.multipart.file_seen:
            raise ApiError("PW100", "the multipart form has no file part",
                           "Send the CSV as a part with a filename (or named file).")
        rows = self.csv.finish()
        if rows:
            yield rows

    async def stage(self, conn: psycopg.AsyncConnection) -> int:
        """Empty this session's staging table and COPY the upload into it; returns the rows."""
        await conn.execute(STAGE)
        async with conn.cursor().copy(COPY_STAGED) as copy:
            async for rows in self.batches():
                for row in rows:
                    await copy.write_row(row)
        return self.csv.rows
