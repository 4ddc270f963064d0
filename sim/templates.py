"""Message templates per WhatsApp Business Account, the checks a send makes, and the
management surface (create, review, delete).

A template is kept in the shape ``GET /{waba_id}/message_templates`` answers
(``id, name, language, status, category, sub_category, parameter_format, components,
quality_score, rejected_reason``). What a send must carry is worked out once at load:

* header: ``format`` TEXT (its ``{{..}}`` placeholders, at most one), IMAGE, VIDEO,
  DOCUMENT (one parameter of that type with ``link`` or ``id``) or LOCATION;
* body: its placeholders, ``{{1}}`` style for POSITIONAL templates, ``{{first_name}}``
  style for NAMED ones (every header/body text parameter then carries ``parameter_name``);
* buttons, by index: a dynamic URL (``{{1}}`` in its url) and an OTP button take one
  ``text`` parameter (sub_type ``url``), COPY_CODE one ``coupon_code`` (sub_type
  ``copy_code``), QUICK_REPLY an optional ``payload`` (sub_type ``quick_reply``; without
  it Meta echoes the button text), FLOW / CATALOG / MPM an optional ``action``;
  PHONE_NUMBER, static URL and the others take no component.

Send-time answers (HTTP 400, Meta's envelope, ``error_data.details`` naming the part):

* 132000: a component's parameter count differs, ``"<part>: number of localizable_params
  (n) does not match the expected number of params (m)"`` where ``<part>`` is ``header``,
  ``body`` or ``button at index <i> (<TYPE>)``; also a button component for an index the
  template has no button at, or for a button that takes no parameter;
* 132012: a parameter of the wrong kind: ``"header: Format mismatch, expected IMAGE,
  received VIDEO"`` (``received UNKNOWN`` when a media or location header is left out, as
  Meta words it), a media parameter without ``link`` or ``id``, a body parameter that is
  not text / currency / date_time, a button's sub_type or parameter type, a missing or
  unknown ``parameter_name`` in a NAMED template or one in a POSITIONAL template;
* 131009: an empty text (or payload, coupon code) value; 131008: a parameter without type;
* 132005: the body with its values filled in is over 1,024 characters;
* 132001 (unknown or not approved), 132015 (paused), 132016 (disabled).

The media a send names (header parameters) are returned to the simulator, which checks
ids and "fetches" links (sim/media.py).
"""

from __future__ import annotations

import base64
import re
import zlib
from dataclasses import dataclass
from urllib.parse import urlencode

from .errors import SimError

PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
STATUSES = {"APPROVED", "PENDING", "REJECTED", "PAUSED", "DISABLED", "IN_APPEAL",
            "PENDING_DELETION", "DELETED", "ARCHIVED", "LIMIT_EXCEEDED", "LOCKED"}
CATEGORIES = ("MARKETING", "UTILITY", "AUTHENTICATION")
MEDIA_FORMATS = ("IMAGE", "VIDEO", "DOCUMENT")
HEADER_FORMATS = ("TEXT", *MEDIA_FORMATS, "LOCATION")
BODY_KINDS = ("text", "currency", "date_time")
BODY_MAX = 1024
HEADER_TEXT_MAX = 60
FOOTER_MAX = 60
BUTTON_TEXT_MAX = 25
COUPON_MAX = 15
BUTTON_TYPES = ("QUICK_REPLY", "URL", "PHONE_NUMBER", "COPY_CODE", "OTP", "FLOW", "CATALOG",
                "MPM", "VOICE_CALL", "SPM")
# Components of a send the simulator does not check (carousel cards, offers).
UNCHECKED_COMPONENTS = frozenset({"carousel", "limited_time_offer", "order_status"})
NAME_RE = re.compile(r"^[a-z0-9_]{1,512}$")
LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(_[A-Za-z]{2,4})?$")
NAMED_PARAM_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
DEFAULT_PAGE = 25      # Graph API default page size
MAX_PAGE = 1000


def _placeholders(text: str) -> list[str]:
    seen: list[str] = []
    for name in PLACEHOLDER_RE.findall(text or ""):
        if name not in seen:
            seen.append(name)
    return seen


@dataclass(slots=True, frozen=True)
class Button:
    """One button of a template, and the component a send gives it (if any)."""
    index: int
    type: str                  # QUICK_REPLY, URL, COPY_CODE, OTP, PHONE_NUMBER, ...
    text: str
    sub_type: str | None       # the send component's sub_type; None: no component
    kind: str | None           # its parameter's type: text, coupon_code, payload, action
    required: bool             # the send must carry the component (one parameter)


def _button(index: int, raw: dict) -> Button:
    btype = str(raw.get("type", "")).upper()
    text = str(raw.get("text", ""))
    if btype == "QUICK_REPLY":
        return Button(index, btype, text, "quick_reply", "payload", False)
    if btype == "URL" and PLACEHOLDER_RE.search(str(raw.get("url", ""))):
        return Button(index, btype, text, "url", "text", True)
    if btype == "OTP":      # the code goes in a url button component (COPY_CODE, ONE_TAP)
        return Button(index, btype, text, "url", "text", True)
    if btype == "COPY_CODE":
        return Button(index, btype, text, "copy_code", "coupon_code", True)
    if btype in ("FLOW", "CATALOG", "MPM"):
        return Button(index, btype, text, btype.lower(), "action", btype == "MPM")
    return Button(index, btype, text, None, None, False)


class Template:
    """One template in one language, with what a send is checked against."""

    __slots__ = ("body_params", "body_text", "buttons", "data", "header_format",
                 "header_params", "named", "quick_replies")

    def __init__(self, data: dict) -> None:
        self.data = data
        self.body_params: list[str] = []
        self.body_text = ""
        self.header_format: str | None = None
        self.header_params: list[str] = []
        self.buttons: list[Button] = []
        for comp in data.get("components", []):
            ctype = str(comp.get("type", "")).upper()
            if ctype == "BODY":
                self.body_text = str(comp.get("text", ""))
                self.body_params = _placeholders(self.body_text)
            elif ctype == "HEADER":
                self.header_format = str(comp.get("format", "TEXT")).upper()
                if self.header_format == "TEXT":
                    self.header_params = _placeholders(comp.get("text", ""))
            elif ctype == "BUTTONS":
                self.buttons = [_button(i, b) for i, b in enumerate(comp.get("buttons", []))
                                if isinstance(b, dict)]
        self.quick_replies = [b.text for b in self.buttons if b.type == "QUICK_REPLY"]
        self.named = data.get("parameter_format") == "NAMED"

    @property
    def status(self) -> str:
        return self.data["status"]

    @property
    def category(self) -> str:
        return self.data.get("category", "UTILITY")

    # --- send-time checks of one component --------------------------------------

    def _names(self, part: str, params: list, expected: list[str]) -> None:
        """NAMED templates match text parameters by parameter_name, POSITIONAL by place."""
        names = [p.get("parameter_name") for p in params]
        if not self.named:
            if any(n is not None for n in names):
                raise SimError(132012, f"{part}: parameter_name given, but template "
                               f"{self.data['name']} uses POSITIONAL parameters ({{{{1}}}}, ...)")
            return
        for i, name in enumerate(names, 1):
            if not name:
                raise SimError(132012, f"{part}: parameter {i} has no parameter_name; template "
                               f"{self.data['name']} uses NAMED parameters {expected}")
            if name not in expected:
                raise SimError(132012, f"{part}: unknown parameter_name {name!r}; the "
                               f"template's named params are {expected}")
        if len(set(names)) != len(names):
            raise SimError(132012, f"{part}: a parameter_name is given twice: {names}")

    def check_header(self, params: list | None, media: list) -> None:
        fmt = self.header_format
        given = params or []
        if fmt in MEDIA_FORMATS or fmt == "LOCATION":
            if not given:
                raise SimError(132012, f"header: Format mismatch, expected {fmt}, received UNKNOWN")
            _count("header", given, 1)
            p = given[0]
            kind = str(p.get("type", "")).lower()
            if kind != fmt.lower():
                raise SimError(132012, f"header: Format mismatch, expected {fmt}, "
                               f"received {kind.upper() or 'UNKNOWN'}")
            obj = p.get(kind)
            if fmt == "LOCATION":
                if not isinstance(obj, dict) or not all(
                        isinstance(obj.get(k), (int, float)) and not isinstance(obj.get(k), bool)
                        for k in ("latitude", "longitude")):
                    raise SimError(132012, "header: a location parameter needs location."
                                   "latitude and location.longitude (numbers)")
                return
            if not isinstance(obj, dict) or not (obj.get("link") or obj.get("id")):
                raise SimError(132012, f"header: the {kind} parameter needs {kind}.link or "
                               f"{kind}.id")
            media.append((kind, obj))
            return
        _count("header", given, len(self.header_params))
        for p in given:
            kind = str(p.get("type", "")).lower()
            if kind != "text":
                raise SimError(132012, f"header: Format mismatch, expected TEXT, "
                               f"received {kind.upper()}")
        self._names("header", given, self.header_params)

    def check_body(self, params: list | None) -> None:
        given = params or []
        _count("body", given, len(self.body_params))
        values = []
        for i, p in enumerate(given, 1):
            kind = str(p.get("type", "")).lower()
            if kind not in BODY_KINDS:
                raise SimError(132012, f"body: parameter {i} is of type {kind}; a body "
                               "parameter is text, currency or date_time")
            if kind == "text":
                values.append(p["text"])
            else:
                obj = p.get(kind)
                need = ("fallback_value", "code", "amount_1000") if kind == "currency" \
                    else ("fallback_value",)
                if not isinstance(obj, dict) or any(obj.get(k) in (None, "") for k in need):
                    raise SimError(131008, f"body: a {kind} parameter needs "
                                   + ", ".join(f"{kind}.{k}" for k in need))
                values.append(str(obj["fallback_value"]))
        self._names("body", given, self.body_params)
        if self.named:
            by_name = {p["parameter_name"]: v for p, v in zip(given, values)}
        else:
            by_name = dict(zip(self.body_params, values))
        hydrated = PLACEHOLDER_RE.sub(lambda m: by_name.get(m.group(1), ""), self.body_text)
        if len(hydrated) > BODY_MAX:
            raise SimError(132005, f"body: the text with its parameters is {len(hydrated)} "
                           f"characters; at most {BODY_MAX}")

    def check_buttons(self, given: dict[int, dict]) -> None:
        for button in self.buttons:
            comp = given.pop(button.index, None)
            part = f"button at index {button.index} ({button.type})"
            if comp is None:
                if button.required:
                    _count(part, [], 1)
                continue
            params = comp.get("parameters") or []
            if button.sub_type is None:
                _count(part, params, 0)
                continue
            sub_type = comp.get("sub_type")
            if not sub_type:
                raise SimError(131008, f"{part}: the parameter sub_type is required")
            if str(sub_type).lower() != button.sub_type:
                raise SimError(132012, f"{part}: sub_type must be {button.sub_type}, "
                               f"got {sub_type}")
            if button.required or len(params) > 1:
                _count(part, params, 1)
            for p in params:
                kind = str(p.get("type", "")).lower()
                if kind != button.kind:
                    raise SimError(132012, f"{part}: parameter type must be {button.kind}, "
                                   f"got {kind}")
                value = p.get(kind)
                if kind in ("coupon_code", "payload") and (not isinstance(value, str)
                                                           or not value.strip()):
                    raise SimError(131009, f"{part}: {kind} must be a non-empty string")
                if kind == "coupon_code" and len(value) > COUPON_MAX:
                    raise SimError(131009, f"{part}: coupon_code is at most {COUPON_MAX} "
                                   "characters")
        for index in sorted(given):
            comp = given[index]
            raise SimError(132000, f"button at index {index}: number of localizable_params "
                           f"({len(comp.get('parameters') or [])}) does not match the expected "
                           f"number of params (0): template {self.data['name']} has "
                           f"{len(self.buttons)} buttons")


def _count(part: str, params: list, expected: int) -> None:
    if len(params) != expected:
        raise SimError(132000, f"{part}: number of localizable_params ({len(params)}) does not "
                       f"match the expected number of params ({expected})")


def normalise(raw: dict, waba_id: str) -> dict:
    if not isinstance(raw, dict) or not raw.get("name") or not raw.get("language"):
        raise ValueError("a template needs name and language")
    status = str(raw.get("status", "APPROVED")).upper()
    if status not in STATUSES:
        raise ValueError(f"unknown template status {status}")
    named = any(not p.isdigit() for c in raw.get("components", [])
                for p in _placeholders(c.get("text", "")))
    tid = raw.get("id") or str(10**15 + zlib.crc32(
        f"{waba_id}:{raw['name']}:{raw['language']}".encode()))
    category = str(raw.get("category", "UTILITY")).upper()
    data = {
        "name": raw["name"],
        "parameter_format": raw.get("parameter_format") or ("NAMED" if named else "POSITIONAL"),
        "components": raw.get("components", []),
        "language": raw["language"],
        "status": status,
        "category": category,
        "sub_category": raw.get("sub_category") or "CUSTOM",
        "id": str(tid),
        # Meta scores an established template GREEN; a new one UNKNOWN until it has sends.
        "quality_score": raw.get("quality_score") or {
            "score": "GREEN" if status == "APPROVED" else "UNKNOWN"},
        "rejected_reason": raw.get("rejected_reason") or "NONE",
    }
    for key in ("previous_category", "message_send_ttl_seconds", "correct_category"):
        if raw.get(key) is not None:
            data[key] = raw[key]
    return data


# --- POST /{waba_id}/message_templates: what Meta checks at creation -------------------

def _bad(details: str, subcode: int | None = None) -> SimError:
    return SimError(100, details, subcode=subcode)


def _check_placeholders(where: str, names: list[str], named: bool) -> None:
    if not names:
        return
    if named:
        for n in names:
            if n.isdigit() or not NAMED_PARAM_RE.match(n):
                raise _bad(f"{where}: {{{{{n}}}}} is not a named parameter (lowercase letters, "
                           "digits and underscores) in a NAMED template", 2388072)
    else:
        if names != [str(i) for i in range(1, len(names) + 1)]:
            raise _bad(f"{where}: positional parameters must be {{{{1}}}}, {{{{2}}}}, ... in "
                       f"order; got {names}", 2388072)


def _examples(comp: dict, key_positional: str, key_named: str, names: list[str],
              named: bool, where: str) -> None:
    example = comp.get("example")
    if not isinstance(example, dict):
        raise _bad(f"{where} has variables {names} but no example: add example."
                   f"{key_named if named else key_positional}", 2388043)
    if named:
        given = {e.get("param_name") for e in example.get(key_named) or []
                 if isinstance(e, dict) and e.get("example") not in (None, "")}
        missing = [n for n in names if n not in given]
        if missing:
            raise _bad(f"{where}: example.{key_named} lacks examples for {missing}", 2388043)
        return
    rows = example.get(key_positional)
    row = rows[0] if key_positional == "body_text" and isinstance(rows, list) and rows else rows
    if not isinstance(row, list) or len(row) != len(names) or any(v in (None, "") for v in row):
        raise _bad(f"{where}: example.{key_positional} must give {len(names)} sample "
                   "value(s)", 2388043)


def check_new(raw: object) -> dict:
    """Validate a template creation body like Meta; returns the template to store
    (PENDING) or raises SimError 100 naming the field (with Meta's 2388xxx subcode where
    one is known)."""
    if not isinstance(raw, dict):
        raise _bad("The request body must be a JSON object.")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _bad("Param name must be lowercase letters, digits and underscores "
                   f"(at most 512 characters); got {name!r}")
    category = str(raw.get("category", "")).upper()
    if category not in CATEGORIES:
        raise _bad(f"Param category must be one of {{{', '.join(CATEGORIES)}}} - got "
                   f"{raw.get('category')!r}")
    language = raw.get("language")
    if not isinstance(language, str) or not LANGUAGE_RE.match(language):
        raise _bad(f"Param language must be a language code such as en or en_US; got "
                   f"{language!r}")
    fmt = str(raw.get("parameter_format") or "POSITIONAL").upper()
    if fmt not in ("POSITIONAL", "NAMED"):
        raise _bad(f"Param parameter_format must be POSITIONAL or NAMED; got {fmt}")
    named = fmt == "NAMED"
    components = raw.get("components")
    if not isinstance(components, list) or not components:
        raise _bad("Param components is required: a list with at least a BODY")
    seen: dict[str, dict] = {}
    for comp in components:
        if not isinstance(comp, dict):
            raise _bad("Each component must be an object")
        ctype = str(comp.get("type", "")).upper()
        if ctype not in ("HEADER", "BODY", "FOOTER", "BUTTONS"):
            raise _bad(f"Unknown component type {comp.get('type')!r}: HEADER, BODY, FOOTER "
                       "or BUTTONS")
        if ctype in seen:
            raise _bad(f"A template has at most one {ctype} component")
        seen[ctype] = comp
    body = seen.get("BODY")
    if body is None:
        raise _bad("A template needs a BODY component")
    if category == "AUTHENTICATION" and not body.get("text"):
        # Meta writes an authentication body itself (add_security_recommendation).
        body = seen["BODY"] = {**body, "text": "{{1}} is your verification code.",
                               "example": body.get("example") or {"body_text": [["123456"]]}}
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise _bad("BODY.text is required", 2388072)
    if len(text) > BODY_MAX:
        raise _bad(f"BODY.text is {len(text)} characters; at most {BODY_MAX}", 2388040)
    names = _placeholders(text)
    _check_placeholders("BODY", names, named)
    if names:
        stripped = text.strip()
        # Authentication bodies are Meta's own wording ("{{1}} is your verification code.").
        if category != "AUTHENTICATION" and PLACEHOLDER_RE.match(stripped) or re.search(r"\{\{\s*[A-Za-z0-9_]+\s*\}\}$", stripped):
            raise _bad("BODY: the text cannot start or end with a variable", 2388299)
        _examples(body, "body_text", "body_text_named_params", names, named, "BODY")
    header = seen.get("HEADER")
    if header is not None:
        hfmt = str(header.get("format", "")).upper()
        if hfmt not in HEADER_FORMATS:
            raise _bad(f"HEADER.format must be one of {HEADER_FORMATS}; got {hfmt or None}",
                       2388047)
        if hfmt == "TEXT":
            htext = header.get("text")
            if not isinstance(htext, str) or not htext.strip() or len(htext) > HEADER_TEXT_MAX:
                raise _bad(f"HEADER.text must be 1 to {HEADER_TEXT_MAX} characters", 2388047)
            hnames = _placeholders(htext)
            if len(hnames) > 1:
                raise _bad("HEADER.text may hold one variable at most", 2388047)
            _check_placeholders("HEADER", hnames, named)
            if hnames:
                _examples(header, "header_text", "header_text_named_params", hnames, named,
                          "HEADER")
        elif hfmt in MEDIA_FORMATS:
            handles = (header.get("example") or {}).get("header_handle")
            if not isinstance(handles, list) or not handles:
                raise _bad(f"HEADER ({hfmt}) needs example.header_handle (an uploaded "
                           "sample)", 2388043)
    footer = seen.get("FOOTER")
    if footer is not None:
        ftext = footer.get("text")
        if not isinstance(ftext, str) or not ftext.strip() or len(ftext) > FOOTER_MAX \
                or PLACEHOLDER_RE.search(ftext):
            raise _bad(f"FOOTER.text must be 1 to {FOOTER_MAX} characters without variables",
                       2388073)
    buttons = seen.get("BUTTONS")
    if buttons is not None:
        listed = buttons.get("buttons")
        if not isinstance(listed, list) or not 1 <= len(listed) <= 10:
            raise _bad("BUTTONS.buttons must hold 1 to 10 buttons")
        for i, b in enumerate(listed):
            _check_new_button(i, b)
    out = dict(raw)
    out["components"] = [seen.get(c.get("type", "").upper(), c) if isinstance(c, dict) else c
                         for c in components]
    out.update(name=name, category=category, language=language, parameter_format=fmt,
               status="PENDING")
    return out


def _check_new_button(i: int, b: object) -> None:
    where = f"BUTTONS[{i}]"
    if not isinstance(b, dict):
        raise _bad(f"{where} must be an object")
    btype = str(b.get("type", "")).upper()
    if btype not in BUTTON_TYPES:
        raise _bad(f"{where}.type must be one of {BUTTON_TYPES}; got {b.get('type')!r}")
    text = b.get("text")
    if btype not in ("COPY_CODE", "OTP") and (not isinstance(text, str) or not text.strip()
                                               or len(text) > BUTTON_TEXT_MAX):
        raise _bad(f"{where}.text must be 1 to {BUTTON_TEXT_MAX} characters")
    if btype == "URL":
        url = b.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise _bad(f"{where}.url must be an http(s) URL")
        variables = _placeholders(url)
        if variables:
            if variables != ["1"] or not re.search(r"\{\{\s*1\s*\}\}$", url):
                raise _bad(f"{where}.url may hold one variable, {{{{1}}}}, at its end")
            example = b.get("example")
            if not isinstance(example, list) or not example or not example[0]:
                raise _bad(f"{where}: a URL with a variable needs an example", 2388043)
    elif btype == "PHONE_NUMBER":
        if not isinstance(b.get("phone_number"), str) or not b["phone_number"].strip():
            raise _bad(f"{where}.phone_number is required")
    elif btype == "COPY_CODE":
        example = b.get("example")
        if not isinstance(example, str) or not example or len(example) > COUPON_MAX:
            raise _bad(f"{where}.example must be the sample code (1 to {COUPON_MAX} "
                       "characters)", 2388043)
    elif btype == "OTP" and str(b.get("otp_type", "")).upper() not in (
            "COPY_CODE", "ONE_TAP", "ZERO_TAP"):
        raise _bad(f"{where}.otp_type must be COPY_CODE, ONE_TAP or ZERO_TAP")


class TemplateStore:
    """Templates of every WABA; ``seed`` is given to a WABA the first time it is seen."""

    def __init__(self, seed: object) -> None:
        self.seed = seed
        self.by_waba: dict[str, dict[tuple[str, str], Template]] = {}
        # (waba, name, language) -> sim unix time deleted: Meta keeps a deleted approved
        # name from being reused for 30 days.
        self.deleted: dict[tuple[str, str, str], float] = {}
        self._next_id = 0

    def seed_for(self, waba_id: str) -> list:
        if isinstance(self.seed, dict):
            return self.seed.get(waba_id, self.seed.get("*", []))
        return self.seed or []

    def ensure_waba(self, waba_id: str) -> None:
        if waba_id not in self.by_waba:
            self.by_waba[waba_id] = {}
            for raw in self.seed_for(waba_id):
                self.upsert(waba_id, raw)

    def reseed(self, waba_ids) -> None:
        self.by_waba.clear()
        self.deleted.clear()
        for waba_id in waba_ids:
            self.ensure_waba(waba_id)

    def upsert(self, waba_id: str, raw: dict) -> dict:
        data = normalise(raw, waba_id)
        self.by_waba.setdefault(waba_id, {})[(data["name"], data["language"])] = Template(data)
        return data

    def set_status(self, waba_id: str | None, name: str, language: str | None,
                   status: str) -> list[tuple[str, Template]]:
        """Change the status of matching templates; returns (waba_id, template) changed."""
        status = status.upper()
        if status not in STATUSES:
            raise ValueError(f"unknown template status {status}")
        changed = []
        for waba, templates in self.by_waba.items():
            if waba_id and waba != waba_id:
                continue
            for (tname, tlang), tpl in templates.items():
                if tname == name and (language is None or tlang == language):
                    tpl.data["status"] = status
                    changed.append((waba, tpl))
        return changed

    # --- management ----------------------------------------------------------------

    def create(self, waba_id: str, raw: object, now: float) -> Template:
        """``POST /{waba_id}/message_templates``: a new PENDING template (SimError 100 when
        Meta would refuse it)."""
        data = check_new(raw)
        key = (data["name"], data["language"])
        templates = self.by_waba.setdefault(waba_id, {})
        if key in templates:
            raise _bad(f"There is already {data['language']} content for template "
                       f"{data['name']}. Create a new template or edit this one.", 2388024)
        deleted_at = self.deleted.get((waba_id, *key))
        if deleted_at is not None and now - deleted_at < 30 * 86400:
            raise _bad(f"{data['language']} content of {data['name']} was deleted; the name "
                       "cannot be reused for 30 days. Use a new name.", 2388023)
        self._next_id += 1
        data["id"] = str(2 * 10**15 + zlib.crc32(f"{waba_id}:{key}".encode()) * 1000
                         + self._next_id % 1000)
        tpl = Template(normalise(data, waba_id))
        templates[key] = tpl
        return tpl

    def delete(self, waba_id: str, name: str, hsm_id: str | None, now: float) -> list[Template]:
        """``DELETE /{waba_id}/message_templates?name=&hsm_id=``: every language of the name,
        or the one whose id is ``hsm_id``. Disabled templates cannot be deleted."""
        templates = self.by_waba.get(waba_id, {})
        found = [(k, t) for k, t in templates.items() if k[0] == name
                 and (hsm_id is None or t.data["id"] == str(hsm_id))]
        if not found:
            raise _bad(f"Message template {name!r}"
                       + (f" with id {hsm_id}" if hsm_id else "") + " was not found", 2593002)
        if any(t.status == "DISABLED" for _, t in found):
            raise _bad(f"Template {name} is disabled; a disabled template cannot be deleted")
        for key, tpl in found:
            del templates[key]
            if tpl.status == "APPROVED":
                self.deleted[(waba_id, *key)] = now
        return [t for _, t in found]

    # --- send-time checks ---------------------------------------------------

    def check_send(self, waba_id: str, template: dict) -> tuple[Template, list]:
        """Validate a send's ``template`` object like Meta; returns the template and the
        media its header names (``[(kind, {"link" | "id": ...}), ...]``) or raises."""
        name = template.get("name")
        if not name or not isinstance(name, str):
            raise SimError(131008, "The parameter template.name is required.")
        language = template.get("language")
        code = language.get("code") if isinstance(language, dict) else None
        if not code or not isinstance(code, str):
            raise SimError(131008, "The parameter template.language.code is required.")
        templates = self.by_waba.get(waba_id, {})
        tpl = templates.get((name, code))
        if tpl is None:
            raise SimError(132001, f"template name ({name}) does not exist in {code}")
        if tpl.status == "PAUSED":
            raise SimError(132015, f"Template {name} ({code}) is paused.")
        if tpl.status == "DISABLED":
            raise SimError(132016, f"Template {name} ({code}) is disabled.")
        if tpl.status != "APPROVED":
            # Meta's 132001 covers "does not exist ... or has not been approved".
            raise SimError(132001, f"template name ({name}) does not exist in {code}")
        components = template.get("components") or []
        if not isinstance(components, list):
            raise SimError(100, "Param template.components must be an array.")
        given: dict[str, list] = {}
        buttons: dict[int, dict] = {}
        for comp in components:
            if not isinstance(comp, dict):
                raise SimError(100, "Each template component must be an object.")
            ctype = str(comp.get("type", "")).lower()
            if ctype in UNCHECKED_COMPONENTS:
                continue
            if ctype not in ("header", "body", "button"):
                raise SimError(100, f'Param template.components[].type must be one of '
                               f'{{HEADER, BODY, BUTTON}} - got "{comp.get("type")}".')
            params = comp.get("parameters") or []
            if not isinstance(params, list):
                raise SimError(100, f"Param {ctype}.parameters must be an array.")
            for p in params:
                _check_param(p)
            if ctype == "button":
                try:
                    index = int(comp.get("index"))
                except (TypeError, ValueError):
                    raise SimError(131008, "The parameter template.components[].index is "
                                   "required for a button component (\"0\", \"1\", ...).") from None
                if index in buttons:
                    raise SimError(100, f"Two button components for index {index}.")
                buttons[index] = comp
            else:
                if ctype in given:
                    raise SimError(100, f"Two {ctype} components.")
                given[ctype] = params
        media: list = []
        tpl.check_header(given.get("header"), media)
        tpl.check_body(given.get("body"))
        tpl.check_buttons(buttons)
        return tpl, media

    # --- GET /{waba_id}/message_templates ----------------------------------

    def page(self, waba_id: str, query, base_url: str) -> dict:
        """One page of a WABA's templates with Graph API cursor paging."""
        items = [t.data for t in self.by_waba.get(waba_id, {}).values()]
        for key in ("name", "status", "category", "language"):
            want = query.get(key)
            if want:
                items = [t for t in items if want.lower() in str(t[key]).lower()]
        try:
            limit = min(max(int(query.get("limit", DEFAULT_PAGE)), 1), MAX_PAGE)
        except ValueError as exc:
            raise SimError(100, "Param limit must be an integer.") from exc
        if query.get("after"):
            start = _decode_cursor(query["after"]) + 1
            end = start + limit
        elif query.get("before"):
            end = _decode_cursor(query["before"])
            start = max(0, end - limit)
        else:
            start, end = 0, limit
        start = max(0, start)
        page = items[start:end]
        fields = query.get("fields")
        if fields:
            keep = {f.strip() for f in fields.split(",")} | {"id"}
            page = [{k: v for k, v in t.items() if k in keep} for t in page]
        out: dict = {"data": page}
        if page:
            before, after = _cursor(start), _cursor(start + len(page) - 1)
            paging: dict = {"cursors": {"before": before, "after": after}}
            params = {k: v for k, v in query.items() if k not in ("after", "before")}
            params["limit"] = str(limit)
            if start + len(page) < len(items):
                paging["next"] = f"{base_url}?{urlencode({**params, 'after': after})}"
            if start > 0:
                paging["previous"] = f"{base_url}?{urlencode({**params, 'before': before})}"
            out["paging"] = paging
        return out


def _check_param(p: object) -> None:
    if not isinstance(p, dict) or "type" not in p:
        raise SimError(131008, "Each parameter needs a type.")
    ptype = p["type"]
    if ptype == "text" and not isinstance(p.get("text"), str):
        raise SimError(131009, "Parameter of type text needs a string text value.")
    if ptype == "text" and not p["text"].strip():
        raise SimError(131009, "Parameter text cannot be empty.")


def _cursor(index: int) -> str:
    # Graph cursors are opaque base64 strings; these encode a list position.
    return base64.urlsafe_b64encode(f"tpl:{index}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, index = raw.partition(":")
        if prefix != "tpl":
            raise ValueError(cursor)
        return int(index)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SimError(100, f"Invalid cursor: {cursor}") from exc
