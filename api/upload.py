"""A contact CSV uploaded over HTTP, spooled within its caps, then COPied into this
session's staging table.

::

    request.stream() ──> multipart part (or the raw text/csv body) ──> UTF-8, whole CSV
        records (quote-aware) ──> csv rows ──> COPY text in a spool (memory, then a temp file)
    then, with a pooled connection: COPY pg_temp.staged_contacts FROM the spool

The body is parsed as it arrives, under caps read once from Settings: bytes
(PGWA_UPLOAD_MAX_BYTES, 413), data rows (PGWA_UPLOAD_MAX_ROWS, 413), characters in one
field (PGWA_UPLOAD_MAX_FIELD, 422) and a deadline for the whole body
(PGWA_UPLOAD_DEADLINE_S, 408); each error names the cap and the row. No database
connection is held while the client sends: a client that dribbles bytes ties up a
little memory or disk, never a pooled connection or an open transaction.
The header rules are pgwa.contacts' (a ``phone`` column or one of its aliases, ``name``,
every other column an attribute); what makes a valid contact is decided in SQL
(``api.create_campaign`` / ``api.import_contacts``). A multipart body may carry small
text fields beside the file (``params``, a JSON object); they are collected in
``CsvUpload.fields``.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import tempfile
from collections import deque
from dataclasses import dataclass

import orjson
import psycopg
from starlette.requests import Request

from api.errors import ApiError
from pgwa.config import Settings
from pgwa.contacts import PHONE_COLUMNS
from pgwa.queries import queries

CSV_TYPES = ("text/csv", "application/csv", "text/plain", "application/octet-stream", "application/vnd.ms-excel")
MAX_RECORD = 1 << 20        # one CSV record (a line, or lines inside quotes)
MAX_FIELD = 64 << 10        # a multipart text field
FILE_FIELDS = ("file", "csv", "contacts")
SPOOL_IN_MEMORY = 4 << 20   # COPY text kept in memory up to this, then in a temporary file
COPY_CHUNK = 256 << 10
# COPY's text format: a backslash, tab, newline or carriage return inside a value is escaped.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


@dataclass(frozen=True)
class UploadLimits:
    """The caps of one upload (pgwa.config.Settings, PGWA_UPLOAD_*)."""

    max_bytes: int = Settings.upload_max_bytes
    max_rows: int = Settings.upload_max_rows
    max_field: int = Settings.upload_max_field
    deadline_s: float = Settings.upload_deadline_s

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadLimits:
        return cls(settings.upload_max_bytes, settings.upload_max_rows, settings.upload_max_field,
                   settings.upload_deadline_s)


def _too_large(message: str) -> ApiError:
    return ApiError("PW120", message, "Split the contact list into smaller uploads, or ask the operator "
                    "to raise the cap.", status=413)


def _copy_text(row: tuple) -> str:
    return "\t".join("\\N" if v is None else str(v).translate(_COPY_ESCAPES) for v in row) + "\n"


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
    as (row_no, phone, name, attributes-json); row 1 is the header, as pgwa.contacts counts.
    More than ``max_rows`` data rows, or a field of more than ``max_field`` characters, is
    refused naming the row (and the column)."""

    def __init__(self, max_rows: int | None = None, max_field: int | None = None) -> None:
        self.max_rows = max_rows
        self.max_field = max_field
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
            if self.max_field is not None and row and max(map(len, row)) > self.max_field:
                self._field_too_long(row)
            if self._header is None:
                self._set_header(row)
                continue
            if not row or not any(cell.strip() for cell in row):
                continue
            if self.max_rows is not None and self.rows + len(out) >= self.max_rows:
                raise _too_large(f"row {self._row_no}: the upload has more than {self.max_rows} contact rows, "
                                 "the cap (PGWA_UPLOAD_MAX_ROWS)")
            row += [""] * (len(self._header) - len(row))
            attributes = {h: row[i].strip() for i, h in self._extra}
            out.append((self._row_no, row[self._phone_at],
                        row[self._name_at] if self._name_at >= 0 else None,
                        orjson.dumps(attributes).decode()))
        self.rows += len(out)
        return out

    @property
    def row_no(self) -> int:
        """The CSV rows read so far (the header is row 1)."""
        return self._row_no

    def _field_too_long(self, row: list[str]) -> None:
        at = next(i for i, cell in enumerate(row) if len(cell) > self.max_field)
        if self._header is None:
            named = f"column {at + 1} of the header"
        elif at < len(self._header) and self._header[at]:
            named = f"column {self._header[at]!r}"
        else:
            named = f"column {at + 1}"
        raise ApiError("PW121", f"row {self._row_no}, {named}: a field of {len(row[at])} characters is longer "
                       f"than the cap of {self.max_field} (PGWA_UPLOAD_MAX_FIELD)",
                       "Shorten the field, or ask the operator to raise PGWA_UPLOAD_MAX_FIELD.", status=422)

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
    """The CSV of a request (a text/csv body, or the file part of a multipart form):
    ``receive()`` spools it within the caps, with no database connection; ``stage(conn)``
    then COPies it into this session's staging table; ``close()`` frees the spool."""

    def __init__(self, request: Request, limits: UploadLimits | None = None) -> None:
        self.request = request
        self.limits = limits or UploadLimits()
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";", 1)[0].strip().lower()
        self.multipart = _Multipart(content_type) if media == "multipart/form-data" else None
        if self.multipart is None and media not in CSV_TYPES:
            raise ApiError("PW100", f"cannot read a contact list from Content-Type {media or 'none'!r}",
                           "Send the CSV as the body with Content-Type: text/csv, or as the file "
                           "of a multipart/form-data upload.", status=415)
        self.csv = CsvRows(self.limits.max_rows, self.limits.max_field)
        self.received = 0
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limits.max_bytes:
            raise _too_large(f"the upload's Content-Length, {declared} bytes, is over the cap of "
                             f"{self.limits.max_bytes} bytes (PGWA_UPLOAD_MAX_BYTES); no row was read")
        self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, mode="w+b")  # noqa: SIM115 - close()

    @property
    def fields(self) -> dict[str, str]:
        return self.multipart.fields if self.multipart else {}

    def _over_bytes(self) -> ApiError:
        return _too_large(f"the upload is over the cap of {self.limits.max_bytes} bytes (PGWA_UPLOAD_MAX_BYTES) "
                          f"at row {self.csv.row_no + 1}")

    async def receive(self) -> int:
        """Read, parse and spool the whole body within the deadline; returns the data rows."""
        try:
            async with asyncio.timeout(self.limits.deadline_s):
                async for chunk in self.request.stream():
                    if chunk:
                        self._take(chunk)
        except TimeoutError:
            raise ApiError("PW122", f"the upload did not arrive within {self.limits.deadline_s:g} s, the deadline "
                           f"(PGWA_UPLOAD_DEADLINE_S): {self.received} bytes and {self.csv.rows} rows came, "
                           f"up to row {self.csv.row_no}",
                           "Send the whole body without pauses, split the list, or ask the operator to raise "
                           "PGWA_UPLOAD_DEADLINE_S.", status=408) from None
        if self.multipart and not self.multipart.file_seen:
            raise ApiError("PW100", "the multipart form has no file part",
                           "Send the CSV as a part with a filename (or named file).")
        self._write(self.csv.finish())
        return self.csv.rows

    def _take(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.limits.max_bytes:
            raise self._over_bytes()
        for data in (self.multipart.feed(chunk) if self.multipart else (chunk,)):
            self._write(self.csv.feed(data))

    def _write(self, rows: list[tuple]) -> None:
        if rows:
            self._spool.write("".join(map(_copy_text, rows)).encode())

    async def stage(self, conn: psycopg.AsyncConnection) -> int:
        """Empty this session's staging table and COPY the spooled rows into it; returns the rows."""
        await conn.execute(queries["stage_contacts"])
        self._spool.seek(0)
        async with conn.cursor().copy(queries["copy_staged_contacts"]) as copy:
            while data := await asyncio.to_thread(self._spool.read, COPY_CHUNK):
                await copy.write(data)
        return self.csv.rows

    def close(self) -> None:
        self._spool.close()
