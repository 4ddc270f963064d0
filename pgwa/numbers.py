"""Registration proves ownership: ask the Graph API before ``api.register_number``.

A tenant registering a number gives Meta's ids and a token. Before pgwa stores them it
asks Meta, with that token, two questions::

    GET /{version}/{phone_number_id}           can the token read the number?
    GET /{version}/{waba_id}/phone_numbers     does the WABA hold it? (cursor pages)

and passes Meta's answer (display number, verified name, quality) to
``api.register_number(..., p_verified => ...)``, which refuses a tenant's call without
one. The SQL checks the fields first (``api.prepare_number_registration``), so a
malformed id never reaches a URL. Failures are :class:`GraphCheckError`, named by a
SQLSTATE of core.error_codes:

    PW415  Meta rejected the token (error 190, HTTP 401)
    PW416  the token cannot read the number (error 100: no WABA of the token holds it)
    PW115  the WABA given does not hold the number
    PW515  Meta could not be reached, answered 5xx, or is throttling reads

Messages carry Meta's code and message, never the token. The HTTP route runs
:func:`verify_number` in a thread; the CLI and the local stack call :func:`register_number`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import orjson
import psycopg

from pgwa.queries import queries

NODE_FIELDS = "id,display_phone_number,verified_name,quality_rating,throughput,whatsapp_business_manager_messaging_limit"
MAX_PAGES = 50
# Graph codes that mean "not now" rather than "not yours": unknown/temporary errors and
# the call-rate limits (app, user, WABA).
TRANSIENT_CODES = {1, 2, 4, 17, 32, 613, 80007}
TOKEN_HINT = ("Give a current system user access token with whatsapp_business_management and "
              "whatsapp_business_messaging permissions on the number's WABA.")
RETRY_HINT = "Meta's Graph API is unavailable or throttling; retry the registration later."


class GraphCheckError(Exception):
    """Meta did not confirm the registration; ``sqlstate`` is a code of core.error_codes."""

    def __init__(self, sqlstate: str, message: str, hint: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.hint = hint


def _error(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _refusal(response: httpx.Response, what: str, not_yours: GraphCheckError) -> GraphCheckError:
    """The error for a non-200 answer: the token, Meta's health, or ``not_yours``."""
    error = _error(response)
    code = error.get("code")
    said = f"Graph API error {code if code is not None else response.status_code} reading {what}: " \
           f"{str(error.get('message') or response.reason_phrase)[:300]}"
    if code == 190 or response.status_code == 401:
        return GraphCheckError("PW415", f"Meta rejected the access token. {said}", TOKEN_HINT)
    if response.status_code >= 500 or code in TRANSIENT_CODES:
        return GraphCheckError("PW515", said, RETRY_HINT)
    return GraphCheckError(not_yours.sqlstate, f"{not_yours.message} {said}", not_yours.hint)


def _get(http: httpx.Client, url: str, params: dict | None, what: str) -> httpx.Response:
    try:
        return http.get(url, params=params)
    except httpx.HTTPError as exc:
        raise GraphCheckError("PW515", f"the Graph API could not be reached reading {what}: "
                              f"{type(exc).__name__}", RETRY_HINT) from None


def _json_object(response: httpx.Response, what: str) -> dict:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise GraphCheckError("PW515", f"the Graph API answered {what} with no JSON object", RETRY_HINT)
    return body


def verify_number(graph_base_url: str, version: str, phone_number_id: str, waba_id: str, token: str, *,
                  timeout: float = 15.0, transport: httpx.BaseTransport | None = None) -> dict:
    """Meta's answer for the number, plus ``waba_id`` once the WABA is seen to hold it.

    ``phone_number_id`` and ``waba_id`` must have passed api.prepare_number_registration
    (digits only) before they are put in a URL. Raises GraphCheckError.
    """
    base = graph_base_url.rstrip("/")
    origin = urlsplit(base)[:2]
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=timeout,
                      transport=transport) as http:
        what = f"phone_number_id {phone_number_id}"
        response = _get(http, f"{base}/{version}/{phone_number_id}", {"fields": NODE_FIELDS}, what)
        if response.status_code != 200:
            raise _refusal(response, what, GraphCheckError(
                "PW416", f"the access token cannot read phone_number_id {phone_number_id}.",
                "Check the Phone number ID in WhatsApp Manager, and give a token of a system user "
                "assigned to the WABA that holds the number."))
        node = _json_object(response, what)
        if node.get("id") != phone_number_id or not node.get("display_phone_number"):
            raise GraphCheckError("PW515", f"the Graph API answered {what} without its id and "
                                  "display_phone_number", RETRY_HINT)

        what = f"the phone numbers of waba_id {waba_id}"
        not_in_waba = GraphCheckError(
            "PW115", f"waba_id {waba_id} does not hold phone_number_id {phone_number_id}.",
            "Give the WhatsApp Business Account ID that holds the number (WhatsApp Manager, "
            "Account tools, Phone numbers).")
        url: str | None = f"{base}/{version}/{waba_id}/phone_numbers"
        params: dict | None = {"fields": "id", "limit": 100}
        for _ in range(MAX_PAGES):
            if url is None:
                break
            if urlsplit(url)[:2] != origin:    # the token goes to the Graph API's host only
                raise GraphCheckError("PW515", "the Graph API's next page is on another host; not followed",
                                      RETRY_HINT)
            response = _get(http, url, params, what)
            if response.status_code != 200:
                raise _refusal(response, what, not_in_waba)
            page = _json_object(response, what)
            data = page.get("data")
            if not isinstance(data, list):
                raise GraphCheckError("PW515", f"the Graph API answered {what} without a data list", RETRY_HINT)
            if any(isinstance(n, dict) and n.get("id") == phone_number_id for n in data):
                return {"id": phone_number_id, "waba_id": waba_id,
                        "display_phone_number": str(node["display_phone_number"]),
                        "verified_name": node.get("verified_name"),
                        "quality_rating": node.get("quality_rating"),
                        "throughput": node.get("throughput"),
                        # The portfolio's messaging-limit tier (TIER_250 .. TIER_UNLIMITED).
                        "messaging_limit": node.get("whatsapp_business_manager_messaging_limit")}
            paging = page.get("paging")
            url, params = (paging.get("next") if isinstance(paging, dict) else None), None
        raise not_in_waba


def register_number(conn: psycopg.Connection, tenant_id: int, phone_number_id: str, waba_id: str,
                    token: str, *, graph_base_url: str, app_secret: str | None = None,
                    throughput_mps: int = 80, transport: httpx.BaseTransport | None = None) -> int:
    """Check the fields, ask Meta, then register with Meta's answer; returns the number_id.

    ``app_secret`` None keeps the number's secret, "" clears it. Raises GraphCheckError
    or psycopg.Error (the SQLSTATE and hint of the refusal).
    """
    params = {"tenant_id": tenant_id, "phone_number_id": phone_number_id, "waba_id": waba_id,
              "access_token": token, "throughput_mps": throughput_mps}
    version = conn.execute(queries["prepare_number_registration"], params).fetchone()[0]
    facts = verify_number(graph_base_url, version, phone_number_id, waba_id, token, transport=transport)
    return conn.execute(queries["register_number"], {
        **params, "app_secret": app_secret, "display_phone_number": None,
        "verified": orjson.dumps(facts).decode()}).fetchone()[0]
