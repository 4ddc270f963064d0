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
the choice is noted beside the entry. A code outside the table can still be injected
(``inject`` rules, sim/config.py): it answers HTTP 400 with a generic title unless the
rule gives its own. The call-limit codes 4 and 80007 come with Meta's
``X-Business-Use-Case-Usage`` header (``usage_header``), which says when access is back.
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


# code -> spec. Titles are Meta's; details are Meta's default wording (reference §2.2).
TABLE: dict[int, ErrorSpec] = {
    spec.code: spec
    for spec in (
        ErrorSpec(0, "AuthException", 401, "We were unable to authenticate the app user."),
        ErrorSpec(1, "An unknown error has occurred.", 500,
                  "Invalid request or possible server error."),
        ErrorSpec(2, "Service temporarily unavailable", 503,
                  "Temporary due to downtime or due to being overloaded."),
        ErrorSpec(3, "API Method", 500, "Capability or permissions issue."),
        # Meta's older table says 429, the current Graph answers 400 [conflict, §2.2]; the
        # simulator answers 400 and an X-Business-Use-Case-Usage header (sim/errors.py).
        ErrorSpec(4, "Application request limit reached", 400,
                  "The app has reached its API call rate limit."),
        ErrorSpec(10, "Permission Denied", 403,
                  "Permission is either not granted or has been removed."),
        ErrorSpec(100, "Invalid parameter", 400,
                  "The request included one or more unsupported or misspelled parameters."),
        ErrorSpec(190, "Access token has expired", 401, "Your access token has expired."),
        ErrorSpec(368, "Temporarily blocked for policies violations", 403,
                  "The WhatsApp Business Account associated with the app has been restricted "
                  "or disabled for violating a platform policy."),
        ErrorSpec(80007, "Rate limit issues", 400,
                  "The WhatsApp Business Account has reached its rate limit."),
        # Meta's table lists 400 for throughput errors; one partner mirror of the
        # table shows 429. Clients must key on the code either way.
        ErrorSpec(130429, "Rate limit hit", 400,
                  "Message failed to send because there were too many messages sent from "
                  "this phone number in a short period of time"),
        ErrorSpec(130472, "User's number is part of an experiment", 400,
                  "Message was not sent as part of an experiment."),
        ErrorSpec(131000, "Something went wrong", 500,
                  "Message failed to send due to an unknown error."),
        ErrorSpec(131005, "Access denied", 403,
                  "Permission is either not granted or has been removed."),
        ErrorSpec(131008, "Required parameter is missing", 400,
                  "The request is missing a required parameter."),
        ErrorSpec(131009, "Parameter value is not valid", 400,
                  "One or more parameter values are invalid."),
        ErrorSpec(131016, "Service unavailable", 503, "A service is temporarily unavailable."),
        ErrorSpec(131021, "Recipient cannot be sender", 400,
                  "Sender and recipient phone number is the same."),
        ErrorSpec(131026, "Message undeliverable", 400, "Message Undeliverable."),
        ErrorSpec(131031, "Account has been locked", 403,
                  "The WhatsApp Business Account associated with the app has been restricted "
                  "or disabled for violating a platform policy, or the request data could "
                  "not be verified."),
        ErrorSpec(131042, "Business eligibility payment issue", 400,
                  "There was an error related to your payment method."),
        ErrorSpec(131047, "Re-engagement message", 400,
                  "Message failed to send because more than 24 hours have passed since the "
                  "customer last replied to this number."),
        ErrorSpec(131048, "Spam rate limit hit", 400,
                  "Message failed to send because there are restrictions on how many messages "
                  "can be sent from this phone number. This may be because too many previous "
                  "messages were blocked or flagged as spam."),
        ErrorSpec(131049, "This message was not delivered to maintain healthy ecosystem "
                  "engagement.", 400,
                  "In order to maintain a healthy ecosystem engagement, the message failed to "
                  "be delivered."),
        ErrorSpec(131050, "Unable to deliver the message. This recipient has chosen to stop "
                  "receiving marketing messages on WhatsApp from your business.", 400,
                  "The user has stopped marketing messages from this business."),
        ErrorSpec(131051, "Unsupported message type", 400, "Message type is not currently supported."),
        ErrorSpec(131053, "Media upload error", 400, "Unable to upload the media used in the message."),
        ErrorSpec(131056, "(Business Account, Consumer Account) pair rate limit hit", 400,
                  "Message failed to send because there were too many messages sent from "
                  "this phone number to the same phone number in a short period of time."),
        # HTTP status undocumented (some clients see a 5xx) [unsure]; 400 like most codes.
        ErrorSpec(131057, "Account in maintenance mode", 400,
                  "Business Account is in maintenance mode. This can happen while the "
                  "account's throughput is being upgraded."),
        ErrorSpec(132000, "Number of parameters does not match the expected number of params",
                  400, "The number of variable parameter values included in the request did "
                  "not match the number of variable parameters defined in the template."),
        ErrorSpec(132001, "Template name does not exist in the translation", 400,
                  "The template does not exist in the specified language or the template "
                  "has not been approved."),
        ErrorSpec(132005, "Template Hydrated Text Too Long", 400,
                  "Translated text is too long."),
        ErrorSpec(132007, "Template Format Character Policy Violated", 400,
                  "Template content violates a WhatsApp policy."),
        ErrorSpec(132012, "Template Parameter Format Mismatch", 400,
                  "Variable parameter values formatted incorrectly."),
        ErrorSpec(132015, "Template is Paused", 400,
                  "Template is paused due to low quality so it cannot be sent in a template "
                  "message."),
        ErrorSpec(132016, "Template is Disabled", 400,
                  "Template has been paused too many times due to low quality and is now "
                  "permanently disabled."),
        ErrorSpec(133010, "Phone number Not Registered", 400,
                  "The phone number is not registered on the WhatsApp Business Platform."),
        ErrorSpec(135000, "Generic user error", 400,
                  "Message failed to send because of an unknown error with your request "
                  "parameters."),
    )
}

# Documented subcodes: 33 = object does not exist / no permission (Graph),
# 463 = session (token) expired, 2494055 appears in Meta's own 130429 sample.
SUBCODE_UNKNOWN_OBJECT = 33
SUBCODE_TOKEN_EXPIRED = 463
SUBCODES = {130429: 2494055}
GRAPH_LEVEL = frozenset({0, 1, 2, 3, 4, 10, 190, 80007})


class SimError(Exception):
    """A Graph API error answer: raise it anywhere on the request path."""

    def __init__(self, code: int, details: str | None = None, *, message: str | None = None,
                 subcode: int | None = None, http_status: int | None = None,
                 type_: str | None = None, graph_level: bool | None = None,
                 title: str | None = None, headers: dict[str, str] | None = None) -> None:
        # A code outside the table (an injected one, say) answers like Meta's generic 400.
        spec = TABLE.get(code) or ErrorSpec(code, f"Error {code}", 400, f"Error {code}.")
        self.code = code
        self.title = title or spec.title
        self.headers = headers           # extra response headers (the usage header of 4/80007)
        self.details = details or spec.details
        self.message = message or f"(#{code}) {self.title}"
        self.subcode = subcode if subcode is not None else SUBCODES.get(code)
        self.http_status = http_status or spec.http_status
        self.type = type_ or spec.type
        # Graph-level errors (tokens, permissions, call limits, unknown objects, outages)
        # carry no WhatsApp error_data.
        self.graph_level = code in GRAPH_LEVEL if graph_level is None else graph_level
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


USAGE_HEADER = "X-Business-Use-Case-Usage"
CALL_LIMIT_CODES = frozenset({4, 80007})     # the Graph call limits (reference §3.5)


def usage_header(business_id: str, regain_minutes: int, call_count: int = 100) -> dict[str, str]:
    """Meta's Business Use Case usage header: per business object (the simulator names the
    WABA), the share of the hourly budget used (percentages) and the minutes until access
    comes back (0 while under the limit)."""
    usage = {business_id: [{"type": "whatsapp_business_management", "call_count": call_count,
                            "total_cputime": min(call_count, 100), "total_time": min(call_count, 100),
                            "estimated_time_to_regain_access": max(int(regain_minutes), 0)}]}
    return {USAGE_HEADER: orjson.dumps(usage).decode()}


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
