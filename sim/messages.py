"""Validation of ``POST /{version}/{phone_number_id}/messages`` bodies, and wamids.

Follows Meta's send-message reference: ``messaging_product`` must be
"whatsapp"; ``type`` defaults to "text"; each type needs its own object;
``biz_opaque_callback_data`` is echoed in status webhooks (max 512 chars).
A read receipt is ``{"messaging_product": "whatsapp", "status": "read",
"message_id": "wamid..."}`` and answers ``{"success": true}``.

Where Meta's docs do not say which code a malformed body gets, the simulator
uses 131008 for a missing required parameter, 131009 for a present but invalid
value, and 100 for an unknown or mistyped top-level parameter.
"""

from __future__ import annotations

import base64
import itertools
import os
import re
from dataclasses import dataclass

from .errors import SimError

SEND_TYPES = ("text", "template", "interactive", "image", "document", "reaction",
              "audio", "video", "sticker", "location", "contacts")
FREE_FORM_TYPES = frozenset(SEND_TYPES) - {"template"}
MEDIA_TYPES = frozenset({"image", "document", "audio", "video", "sticker"})
INTERACTIVE_TYPES = {"button", "list", "cta_url", "flow", "product", "product_list",
                     "location_request_message", "address_message"}
PHONE_STRIP_RE = re.compile(r"[\s\-().+]")
BIZ_OPAQUE_MAX = 512
TEXT_MAX = 4096

_ID_PREFIX = int.from_bytes(os.urandom(3), "big")
_id_counter = itertools.count(1)


def new_wamid(wa_id: str, inbound: bool = False) -> str:
    """A unique id shaped like Meta's: 'wamid.' + base64 of a small binary record."""
    tail = f"{_ID_PREFIX:06X}{next(_id_counter):012X}".encode()
    raw = (b"\x1c\x18" + bytes([len(wa_id) & 0x7F]) + wa_id.encode()
           + (b"\x15\x02\x00\x12\x18\x14" if inbound else b"\x15\x02\x00\x11\x18\x12")
           + tail + b"\x00")
    return "wamid." + base64.b64encode(raw).decode()


@dataclass(slots=True)
class Send:
    type: str
    to: str                    # as given
    wa_id: str                 # digits only
    biz: str | None
    template: dict | None      # the send's template object
    interactive: dict | None
    context_id: str | None
    media: dict | None = None  # the image / video / audio / document / sticker object


def wa_id_of(to: str) -> str:
    digits = PHONE_STRIP_RE.sub("", to)
    if not digits.isdigit() or not 7 <= len(digits) <= 15:
        raise SimError(131009, f"Recipient phone number {to!r} is not a valid phone number.")
    return digits


def parse_send(body: object) -> Send | str:
    """Validate a send body; returns a Send, or the message_id of a read receipt."""
    if not isinstance(body, dict):
        raise SimError(100, "The request body must be a JSON object.")
    product = body.get("messaging_product")
    if product is None:
        raise SimError(100, "The parameter messaging_product is required.")
    if product != "whatsapp":
        raise SimError(100, f'Param messaging_product must be one of {{WHATSAPP}} - got "{product}".')
    if body.get("status") is not None:
        if body["status"] != "read":
            raise SimError(100, f'Param status must be one of {{READ}} - got "{body["status"]}".')
        message_id = body.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise SimError(131008, "The parameter message_id is required.")
        return message_id
    to = body.get("to")
    if to is None or to == "":
        raise SimError(131008, "The parameter to is required.")
    if not isinstance(to, str):
        raise SimError(100, "Param to must be a string.")
    wa_id = wa_id_of(to)
    recipient_type = body.get("recipient_type", "individual")
    if recipient_type not in ("individual", "group"):
        raise SimError(100, f'Param recipient_type must be one of {{INDIVIDUAL, GROUP}} - got "{recipient_type}".')
    mtype = body.get("type", "text")
    if mtype not in SEND_TYPES:
        raise SimError(100, f'Param type must be one of {{{", ".join(t.upper() for t in SEND_TYPES)}}} - got "{mtype}".')
    obj = body.get(mtype)
    if obj is None:
        raise SimError(131008, f"The parameter {mtype} is required.")
    if not isinstance(obj, dict):
        raise SimError(100, f"Param {mtype} must be a JSON object.")
    biz = body.get("biz_opaque_callback_data")
    if biz is not None:
        if not isinstance(biz, str):
            raise SimError(100, "Param biz_opaque_callback_data must be a string.")
        if len(biz) > BIZ_OPAQUE_MAX:
            raise SimError(131009, f"biz_opaque_callback_data is longer than {BIZ_OPAQUE_MAX} characters.")
    context = body.get("context")
    context_id = context.get("message_id") if isinstance(context, dict) else None
    if mtype == "text":
        text = obj.get("body")
        if text is None:
            raise SimError(131008, "The parameter text.body is required.")
        if not isinstance(text, str) or not text.strip() or len(text) > TEXT_MAX:
            raise SimError(131009, f"text.body must be a non-empty string of at most {TEXT_MAX} characters.")
    elif mtype == "interactive":
        _check_interactive(obj)
    elif mtype in ("image", "document", "audio", "video", "sticker"):
        if not obj.get("id") and not obj.get("link"):
            raise SimError(131008, f"The parameter {mtype}.id or {mtype}.link is required.")
    elif mtype == "reaction":
        if not obj.get("message_id"):
            raise SimError(131008, "The parameter reaction.message_id is required.")
        if not isinstance(obj.get("emoji"), str):
            raise SimError(131008, "The parameter reaction.emoji is required.")
    return Send(mtype, to, wa_id, biz, obj if mtype == "template" else None,
                obj if mtype == "interactive" else None, context_id,
                obj if mtype in MEDIA_TYPES else None)


def _check_interactive(obj: dict) -> None:
    itype = obj.get("type")
    if not itype:
        raise SimError(131008, "The parameter interactive.type is required.")
    if itype not in INTERACTIVE_TYPES:
        raise SimError(100, f'Param interactive.type is not supported - got "{itype}".')
    action = obj.get("action")
    if not isinstance(action, dict):
        raise SimError(131008, "The parameter interactive.action is required.")
    if itype in ("button", "list") and not isinstance(obj.get("body"), dict):
        raise SimError(131008, "The parameter interactive.body is required.")
    if itype == "button":
        buttons = action.get("buttons")
        if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
            raise SimError(131009, "interactive.action.buttons must hold 1 to 3 buttons.")
        for b in buttons:
            reply = b.get("reply") if isinstance(b, dict) else None
            if not isinstance(reply, dict) or not reply.get("id") or not reply.get("title"):
                raise SimError(131009, "Each reply button needs reply.id and reply.title.")
    if itype == "list":
        sections = action.get("sections")
        if not isinstance(sections, list) or not sections or not action.get("button"):
            raise SimError(131009, "A list message needs action.button and action.sections.")


def reply_buttons(send: Send, buttons) -> list[tuple[int, str, str]]:
    """(index, payload, text) of the quick-reply buttons a recipient could tap on this
    send; ``buttons`` are the template's (sim/templates.py Button)."""
    if send.template is None:
        return []
    payloads: dict[int, str] = {}
    for comp in send.template.get("components") or []:
        if isinstance(comp, dict) and comp.get("type") == "button" \
                and comp.get("sub_type") == "quick_reply":
            params = comp.get("parameters") or [{}]
            payload = params[0].get("payload") if isinstance(params[0], dict) else None
            if payload:
                try:
                    payloads[int(comp.get("index", 0))] = str(payload)
                except (TypeError, ValueError):
                    continue
    # Without a payload parameter Meta echoes the button text as payload.
    return [(b.index, payloads.get(b.index, b.text), b.text) for b in buttons
            if b.type == "QUICK_REPLY"]
