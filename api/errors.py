"""Errors of the JSON API, and the one handler that turns any of them into a response.

::

    Exception
     ├── psycopg.Error      raised by PostgreSQL; its SQLSTATE (exc.diag.sqlstate) is looked up
     │                      in core.error_codes, loaded once at start-up, for the HTTP status
     │                      (no SQLSTATE: a lost connection is 503, a value psycopg cannot send 400)
     ├── psycopg_pool.PoolTimeout   no connection free in time: 503
     └── ApiError           raised in Python around the SQL call (no bearer token, a body that is
                            not JSON, an upstream Graph API error); it names a SQLSTATE of the
                            same registry, so both kinds answer alike

Every error answers ``{"error": {"code": "PW201", "name": "campaign_not_found",
"message": "...", "hint": "..."}}``; invalid contact rows (PW101) add ``detail``, and a
key over its rate limit (PW429, 429) adds ``detail`` and a ``Retry-After`` header. A
SQLSTATE missing from the registry is a bug as far as a client can tell: 500 with a
generic message, while the log gets the SQLSTATE and PostgreSQL's primary message —
never the statement's parameters or its DETAIL, which may hold what a client sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import orjson
import psycopg
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger("pgwa.api")

# Before the registry is loaded (or for a code it lacks but whose family is plain), the
# family digit of a PWgnn code gives the status (1 input, 2 not found, 3 state, 4 auth, 5 upstream).
FAMILY_STATUS = {"1": 400, "2": 404, "3": 409, "4": 401, "5": 502}
LOAD_CODES = "SELECT sqlstate, name, http_status FROM api.error_codes()"
# Codes whose DETAIL is JSON written by pgwa's own SQL (never a client's input), shown to
# the client: PW101's invalid rows, PW429's {"retry_after_s": n}.
DETAILED = ("PW101", "PW429")


@dataclass(frozen=True)
class Code:
    name: str
    status: int


class ApiError(Exception):
    """An error found in Python, named by a SQLSTATE of core.error_codes."""

    def __init__(self, sqlstate: str, message: str, hint: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.hint = hint
        self.status = status


class ErrorCodes:
    """SQLSTATE -> (name, HTTP status), from core.error_codes."""

    def __init__(self) -> None:
        self.codes: dict[str, Code] = {}

    async def load(self, conn: psycopg.AsyncConnection) -> None:
        rows = await (await conn.execute(LOAD_CODES)).fetchall()
        self.codes = {sqlstate: Code(name, status) for sqlstate, name, status in rows}

    def lookup(self, sqlstate: str | None) -> Code | None:
        if sqlstate is None:
            return None
        code = self.codes.get(sqlstate)
        if code is None and sqlstate.startswith("PW") and sqlstate[2:3] in FAMILY_STATUS:
            code = Code(sqlstate.lower(), FAMILY_STATUS[sqlstate[2]])
        return code


def error_response(status: int, sqlstate: str, name: str, message: str, hint: str | None = None,
                   detail: object = None, headers: dict[str, str] | None = None) -> Response:
    error: dict = {"code": sqlstate, "name": name, "message": message, "hint": hint}
    if detail is not None:
        error["detail"] = detail
    return Response(orjson.dumps({"error": error}), status_code=status,
                    media_type="application/json", headers=headers)


def _retry_after(sqlstate: str, detail: object, status: int) -> dict[str, str] | None:
    """A rate-limited key (PW429) is told when to come back, in whole seconds; a request that
    met a passing conflict (503: a deadlock, a serialisation failure, a row held past the
    lock timeout) may come back at once."""
    if status == 503:
        return {"Retry-After": "1"}
    if sqlstate != "PW429":
        return None
    seconds = detail.get("retry_after_s") if isinstance(detail, dict) else None
    return {"Retry-After": str(seconds if isinstance(seconds, int) and seconds > 0 else 1)}


def _internal(request: Request, what: str) -> Response:
    log.error("500 on %s %s: %s", request.method, request.url.path, what)
    return error_response(500, "internal_error", "internal_error",
                          "The server could not complete the request.",
                          "It has been logged; retry later or contact the operator.")


def _unavailable(request: Request, why: str) -> Response:
    log.warning("503 on %s %s: %s", request.method, request.url.path, why)
    return error_response(503, "unavailable", "unavailable", "The database is unavailable.",
                          "Retry in a few seconds.", headers={"Retry-After": "5"})


def handler(codes: ErrorCodes):
    """The exception handler for psycopg.Error, PoolTimeout and ApiError."""

    async def handle(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ApiError):
            code = codes.lookup(exc.sqlstate)
            status = exc.status or (code.status if code else 500)
            return error_response(status, exc.sqlstate, code.name if code else exc.sqlstate.lower(),
                                  exc.message, exc.hint)
        if isinstance(exc, PoolTimeout):
            return _unavailable(request, "no database connection free")
        if not isinstance(exc, psycopg.Error):
            return _internal(request, type(exc).__name__)
        diag = exc.diag
        sqlstate = diag.sqlstate
        if sqlstate is None:
            # Raised by psycopg itself: nothing reached the server, or the server went away.
            if isinstance(exc, psycopg.DataError):
                return error_response(400, "PW100", "invalid_input", str(exc),
                                      "A value cannot be sent to the database as it is.")
            if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
                return _unavailable(request, type(exc).__name__)
            return _internal(request, type(exc).__name__)
        if sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03"):
            return _unavailable(request, f"SQLSTATE {sqlstate}")
        code = codes.lookup(sqlstate)
        if code is None:
            return _internal(request, f"SQLSTATE {sqlstate}: {diag.message_primary}")
        detail = None
        if sqlstate in DETAILED and diag.message_detail:
            try:
                detail = orjson.loads(diag.message_detail)
            except orjson.JSONDecodeError:
                detail = None
        return error_response(code.status, sqlstate, code.name, diag.message_primary or code.name,
                              diag.message_hint, detail, headers=_retry_after(sqlstate, detail, code.status))

    return handle
