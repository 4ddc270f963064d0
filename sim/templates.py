"""Message templates per WhatsApp Business Account, and the checks a send makes.

A template is kept in the shape ``GET /{waba_id}/message_templates`` answers
(``id, name, language, status, category, parameter_format, components``).
The BODY (and a TEXT HEADER) placeholders are counted once at load: ``{{1}}``
style for POSITIONAL templates, ``{{first_name}}`` style for NAMED ones.
"""

from __future__ import annotations

import base64
import re
import zlib
from urllib.parse import urlencode

from .errors import SimError

PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
STATUSES = {"APPROVED", "PENDING", "REJECTED", "PAUSED", "DISABLED", "IN_APPEAL",
            "PENDING_DELETION", "DELETED", "ARCHIVED", "LIMIT_EXCEEDED"}
DEFAULT_PAGE = 25      # Graph API default page size
MAX_PAGE = 1000


def _placeholders(text: str) -> list[str]:
    seen: list[str] = []
    for name in PLACEHOLDER_RE.findall(text or ""):
        if name not in seen:
            seen.append(name)
    return seen


class Template:
    """One template in one language, with what a send is checked against."""

    __slots__ = ("body_params", "data", "header_params", "named", "quick_replies")

    def __init__(self, data: dict) -> None:
        self.data = data
        self.body_params: list[str] = []
        self.header_params: list[str] = []
        self.quick_replies: list[str] = []
        for comp in data.get("components", []):
            ctype = str(comp.get("type", "")).upper()
            if ctype == "BODY":
                self.body_params = _placeholders(comp.get("text", ""))
            elif ctype == "HEADER" and str(comp.get("format", "TEXT")).upper() == "TEXT":
                self.header_params = _placeholders(comp.get("text", ""))
            elif ctype == "BUTTONS":
                self.quick_replies = [b.get("text", "") for b in comp.get("buttons", [])
                                      if str(b.get("type", "")).upper() == "QUICK_REPLY"]
        self.named = data.get("parameter_format") == "NAMED"

    @property
    def status(self) -> str:
        return self.data["status"]

    @property
    def category(self) -> str:
        return self.data.get("category", "UTILITY")


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
    return {
        "name": raw["name"],
        "parameter_format": raw.get("parameter_format") or ("NAMED" if named else "POSITIONAL"),
        "components": raw.get("components", []),
        "language": raw["language"],
        "status": status,
        "category": str(raw.get("category", "UTILITY")).upper(),
        "id": str(tid),
    }


class TemplateStore:
    """Templates of every WABA; ``seed`` is given to a WABA the first time it is seen."""

    def __init__(self, seed: object) -> None:
        self.seed = seed
        self.by_waba: dict[str, dict[tuple[str, str], Template]] = {}

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

    # --- send-time checks ---------------------------------------------------

    def check_send(self, waba_id: str, template: dict) -> Template:
        """Validate a send's ``template`` object like Meta; returns the template or raises."""
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
        given: dict[str, list] = {"body": [], "header": []}
        for comp in components:
            if not isinstance(comp, dict):
                raise SimError(100, "Each template component must be an object.")
            ctype = str(comp.get("type", "")).lower()
            if ctype in given:
                params = comp.get("parameters") or []
                if not isinstance(params, list):
                    raise SimError(100, f"Param {ctype}.parameters must be an array.")
                for p in params:
                    _check_param(p)
                given[ctype] = params
        for ctype, expected in (("header", tpl.header_params), ("body", tpl.body_params)):
            params = given[ctype]
            if len(params) != len(expected):
                raise SimError(132000, f"{ctype}: number of localizable_params ({len(params)}) "
                               f"does not match the expected number of params ({len(expected)})")
            if tpl.named and ctype == "body":
                names = [p.get("parameter_name") for p in params]
                if sorted(map(str, names)) != sorted(expected):
                    raise SimError(132000, f"{ctype}: parameter names {names} do not match the "
                                   f"template's named params {expected}")
        return tpl

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
