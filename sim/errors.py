"""The Cloud API error table the simulator answers with.

Shapes and codes follow Meta's public documentation (WhatsApp Cloud API
"Error codes", Graph API "Handling errors"):

    {"error": {"message": "(#130429) Rate limit hit",
               "type": "OAuthException",
               "code": 130429,
               "error_data": {"messaging_product": "whatsapp",
                              "details": "Message failed to send because ..."},
               "error_subcode": 2494055,        # only where one is documented
               "fbtrace_id": "A1b2C3..."}}

Meta asks clients to branch on ``code`` (and ``details``), not on the HTTP
status or the subcode; ``error_subcode`` is marked deprecated and many v16+
responses omit it, so the simulator only sends one where Meta documents one.

HTTP statuses are those of Meta's table. Where the published mirrors disagree
the choice is noted beside the entry.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

import orjson

ERROR_CODES_HREF = "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    code: int
    title: str
    http_status: int
    details: str
    type: str = "OAuthException"


# code -> spec. Titles are Meta's; details are Meta's default wording.
TABLE: dict[int, ErrorSpec] = {
    spec.code: spec
    for spec in (
        ErrorSpec(1, "An unknown error has occurred.", 500,
                  "Invalid request or possible server error."),
        ErrorSpec(2, "Service temporarily unavailable", 503,
                  "Temporary due to downtime or due to being overloaded."),
        ErrorSpec(100, "Invalid parameter", 400,
                  "The request included one or more unsupported or misspelled parameters."),
        ErrorSpec(190, "Access token has expired", 401, "Your access token has expired."),
        # Meta's table lists 400 for throughput errors; one partner mirror of the
        # table shows 429. Clients must key on the code either way.
        ErrorSpec(130429, "Rate limit hit", 400,
                  "Message failed to send because there were too many messages sent from "
                  "this phone number in a short period of time"),
        ErrorSpec(131000, "Something went wrong", 500,
                  "Message failed to send due to an unknown error."),
        ErrorSpec(131008, "Required parameter is missing", 400,
                  "The request is missing a required parameter."),
        ErrorSpec(131009, "Parameter value is not valid", 400,
                  "One or more parameter values are invalid."),
        ErrorSpec(131016, "Service unavailable", 503, "A service is temporarily unavailable."),
        ErrorSpec(131026, "Message undeliverable", 400, "Message Undeliverable."),
        ErrorSpec(131047, "Re-engagement message", 400,
                  "Message failed to send because more than 24 hours have passed since the "
                  "customer last replied to this number."),
        ErrorSpec(131056, "(Business Account, Consumer Account) pair rate limit hit", 400,
                  "Message failed to send because there were too many messages sent from "
                  "this phone number to the same phone number in a short period of time."),
        ErrorSpec(132000, "Number of parameters does not match the expected number of params",
                  400, "The number of variable parameter values included in the request did "
                  "not match the number of variable parameters defined in the template."),
        ErrorSpec(132001, "Template name does not exist in the translation", 400,
                  "The template does not exist in the specified language or the template "
                  "has not been approved."),
        ErrorSpec(132015, "Template is Paused", 400,
                  "Template is paused due to low quality so it cannot be sent in a template "
                  "message."),
        ErrorSpec(132016, "Template is Disabled", 400,
                  "Template has been paused too many times due to low quality and is now "
                  "permanently disabled."),
    )
}

# Documented subcodes: 33 = object does not exist / no permission (Graph),
# 463 = session (token) expired, 2494055 appears in Meta's own 130429 sample.
SUBCODE_UNKNOWN_OBJECT = 33
SUBCODE_TOKEN_EXPIRED = 463
SUBCODES = {130429: 2494055}


class SimError(Exception):
    """A Graph API error answer: raise it anywhere on the request path."""

    def __init__(self, code: int, details: str | None = None, *, message: str | None = None,
                 subcode: int | None = None, http_status: int | None = None,
                 type_: str | None = None, graph_level: bool | None = None) -> None:
        spec = TABLE[code]
        self.code = code
        self.title = spec.title
        self.details = details or spec.details
        self.message = message or f"(#{code}) {spec.title}"
        self.subcode = subcode if subcode is not None else SUBCODES.get(code)
        self.http_status = http_status or spec.http_status
        self.type = type_ or spec.type
        # Graph-level errors (tokens, unknown objects, outages) carry no WhatsApp error_data.
        self.graph_level = code in (1, 2, 190) if graph_level is None else graph_level
        super().__init__(self.message)

    def body(self) -> bytes:
        return error_body(self.code, self.message, None if self.graph_level else self.details,
                          self.type, self.subcode)

    def webhook_error(self) -> dict:
        """The ``errors[]`` entry Meta puts in a failed status webhook."""
        return {
            "code": self.code,
            "title": self.title,
            "message": self.title,
            "error_data": {"details": self.details},
            "href": ERROR_CODES_HREF,
        }


def fbtrace_id() -> str:
    return base64.urlsafe_b64encode(os.urandom(15)).decode().rstrip("=")[:23]


def error_body(code: int, message: str, details: str | None, type_: str = "OAuthException",
               subcode: int | None = None) -> bytes:
    err: dict = {"message": message, "type": type_, "code": code}
    if details is not None:
        err["error_data"] = {"messaging_product": "whatsapp", "details": details}
    if subcode is not None:
        err["error_subcode"] = subcode
    err["fbtrace_id"] = fbtrace_id()
    return orjson.dumps({"error": err})


def invalid_token() -> SimError:
    # Graph answers an unparseable or unknown token with 190 and no subcode.
    return SimError(190, "Invalid OAuth access token - Cannot parse access token",
                    message="Invalid OAuth access token - Cannot parse access token")


def expired_token(expired_at: str) -> SimError:
    msg = f"Error validating access token: Session has expired on {expired_at}."
    return SimError(190, msg, message=msg, subcode=SUBCODE_TOKEN_EXPIRED)


def unknown_object(object_id: str, method: str = "post") -> SimError:
    msg = (f"Unsupported {method} request. Object with ID '{object_id}' does not exist, cannot "
           "be loaded due to missing permissions, or does not support this operation. Please "
           "read the Graph API documentation at https://developers.facebook.com/docs/graph-api")
    return SimError(100, msg, message=msg, subcode=SUBCODE_UNKNOWN_OBJECT,
                    type_="GraphMethodException", graph_level=True)


def unknown_path(path: str) -> SimError:
    # Graph answers unknown edges with 400; the exact code varies (100 or 2500) in the wild.
    msg = f"Unknown path components: {path}"
    return SimError(100, msg, message=msg, graph_level=True)
