"""The simulator's state and behaviour, independent of HTTP.

``Simulator.send`` is the whole ``POST /messages`` decision after routing and
the token check: forced faults (130429 bursts, an account call-limit burst, a
throughput upgrade's maintenance, transient errors), token expiry, validation
(templates, the 24-hour window), injected error rules, throughput (sends and
inbound messages), the pair rate, recipient failures, the marketing rules and
the portfolio's messaging limit, then the accept (ledger, status webhooks or a
hold for quality, maybe an inbound reply). Checks run in that order; Meta does
not document its own order, so a request that breaks two rules may get a
different code here than from Meta. Every check costs O(1): dicts and deques,
no scan of the ledger.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import math
import random
import re
import time
import zlib
from dataclasses import dataclass

import orjson

from . import messages
from .clock import SimClock
from .config import (
    Number,
    SimConfig,
    apply_patch,
    check_settings,
    lognormal_params,
    number_from,
)
from .errors import (
    CALL_LIMIT_CODES,
    SimError,
    expired_token,
    invalid_token,
    unknown_object,
    usage_header,
)
from .ledger import Ledger
from .limits import TIERS, PairBuckets, Reach, capability_value, is_us_number, tier_limit
from .media import (
    INBOUND_DEFAULTS,
    INBOUND_TTL_S,
    MAX_INBOUND,
    MEDIA_KINDS,
    UPLOAD_TTL_S,
    MediaStore,
    sample_bytes,
)
from .probe import LoopProbe
from .templates import Template, TemplateStore
from .webhooks import Emitter

WINDOW_24H = 24 * 3600.0
ADJACENT_VARIABLES_RE = re.compile(r"\}\}\s*\{\{")   # Meta rejects {{1}} {{2}}
SENT_BUTTONS_MAX = 100_000   # template sends whose quick-reply buttons a tap can name
DROP = object()   # answer: close the connection without a response
NO_HEADERS: dict[str, str] = {}


@dataclass(slots=True)
class CallLimit:
    """An account call-limit burst: every send and read of its scope gets ``code``."""
    code: int                        # 80007 (a WABA) or 4 (the app)
    until: float                     # sim monotonic time
    regain_minutes: int | None       # what the usage header says; None: the time left


@dataclass(slots=True)
class Rule:
    """An ``inject`` rule, its scope resolved to sets once per settings change."""
    code: int
    rate: float
    sync: bool
    pnid: str | None
    to: frozenset[str] | None
    category: str | None
    spec: dict

    def error(self, waba_id: str) -> SimError:
        s = self.spec
        headers = None
        if self.code in CALL_LIMIT_CODES:
            headers = usage_header(waba_id, int(s.get("regain_minutes", 60)))
        return SimError(self.code, s.get("details"), title=s.get("title"),
                        http_status=s.get("http_status"), headers=headers)


@dataclass(slots=True)
class TokenExpiry:
    after_sends: int | None = None   # expires once this many more sends were accepted
    at: float | None = None          # wall-clock unix time
    expired_since: float | None = None


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.webhook_url = config.webhook_url
        self.app_secret = config.app_secret
        self.settings: dict = copy.deepcopy(config.settings)
        self.numbers: dict[str, Number] = {}
        self.tokens: set[str] = set()
        self.templates = TemplateStore(config.templates)
        self.ledger = Ledger()
        self.clock = SimClock()             # every decision by time reads it (sim/clock.py)
        self.emitter = Emitter(self)
        self.probe = LoopProbe()
        self.started = time.time()
        self._reset_state()
        for raw in config.numbers:
            self.upsert_number(raw)
        self._apply_settings()

    def _reset_state(self) -> None:
        self.windows: dict[tuple[str, str], float] = {}        # (pnid, wa_id) -> last inbound
        self.conversations: dict[tuple[str, str, str], tuple[str, float]] = {}
        self.pairs = PairBuckets()
        self.auto_replies: dict[tuple[str, str], int] = {}
        self.bursts: dict[str | None, float] = {}              # pnid (None = all) -> until
        self.expiries: dict[str, TokenExpiry] = {}
        self.reach: dict[str, Reach] = {}                      # business_id -> its 24 h reach
        self.call_limits: dict[str | None, CallLimit] = {}     # waba_id (None = the app)
        self.maintenance: dict[str, float] = {}                # pnid -> until (131057)
        # Held for quality: wamid -> (pnid, send, template, template key), and per template.
        self.held: dict[str, tuple] = {}
        self.held_by_template: dict[tuple[str, str, str], set[str]] = {}
        self.media = MediaStore(self.clock)                    # uploads and inbound media
        # wamid -> (pnid, wa_id, [(index, payload, text)]) of recent template sends with
        # quick-reply buttons, so a simulated tap (POST /_sim/inbound "button") echoes
        # the payload the send gave, as Meta does.
        self.sent_buttons: dict[str, tuple[str, str, list]] = {}

    # --- configuration ---------------------------------------------------------

    def _apply_settings(self) -> None:
        s = self.settings
        self.failing = set(map(str, s["failing_recipients"]))
        rates = s["error_rates"]
        self.fault_table = [(float(p), key) for key, p in rates.items() if float(p) > 0]
        self.fault_total = sum(p for p, _ in self.fault_table)
        lat = s["latency_ms"]
        self.latency = lognormal_params(lat["median"], lat["p99"]) if lat["median"] > 0 else None
        self.read_faults = [(float(p), key) for key, p in s["read_error_rates"].items() if float(p) > 0]
        self.rules = [
            Rule(int(r["code"]), float(r.get("rate", 1.0)), r.get("mode", "sync") == "sync",
                 str(r["phone_number_id"]) if r.get("phone_number_id") else None,
                 frozenset(messages.PHONE_STRIP_RE.sub("", str(t))
                           for t in (r["to"] if isinstance(r["to"], list) else [r["to"]]))
                 if r.get("to") is not None else None,
                 str(r["category"]).upper() if r.get("category") else None, r)
            for r in s["inject"]]
        pair = s["pair_rate_limit"]
        self.pair = (float(pair["interval_s"]), float(pair["burst"])) if pair["enabled"] else None
        self.marketing_cap_share = float(s["marketing_cap_share"])
        self.us_marketing_blocked = bool(s["us_marketing_blocked"])
        limit = s["messaging_limit"]
        self.tiers, self.default_tier = limit["tiers"], limit["default_tier"]
        self.tier_limits = {b: tier_limit(t) for b, t in self.tiers.items()}
        self.default_limit = tier_limit(self.default_tier)
        self.limit_sync = limit["mode"] == "sync"
        self.limit_code = int(limit["code"])

    def update_settings(self, patch: dict) -> dict:
        """Apply a partial settings update plus the one-shot faults; returns the settings."""
        if not isinstance(patch, dict):
            raise TypeError("faults must be a JSON object")
        patch = dict(patch)
        burst = patch.pop("rate_limit_burst", None)
        expiry = patch.pop("token_expiry", None)
        account = patch.pop("account_limit", None)
        unknown = set(patch) - set(self.settings)
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        merged = apply_patch(self.settings, patch)
        check_settings(merged)
        if account is not None:
            account = self._call_limit(account)
        self.settings = merged
        self._apply_settings()
        if burst is not None:
            self._burst(burst)
        if expiry is not None:
            self._token_expiry(expiry)
        if account is not None:
            self.call_limits[account[0]] = account[1]
        return self.settings

    def _call_limit(self, spec: dict) -> tuple[str | None, CallLimit]:
        """An account call-limit burst: {"code": 80007 | 4, "seconds", "regain_minutes"?,
        "waba_id"? | "phone_number_id"?}. 80007 holds one WABA (every WABA when none is
        named), 4 the whole app."""
        if not isinstance(spec, dict):
            raise TypeError("account_limit must be an object")
        code = int(spec.get("code", 80007))
        if code not in CALL_LIMIT_CODES:
            raise ValueError("account_limit.code must be 80007 (WABA) or 4 (app)")
        waba_id = spec.get("waba_id")
        if spec.get("phone_number_id") is not None:
            number = self.numbers.get(str(spec["phone_number_id"]))
            if number is None:
                raise ValueError(f"unknown phone_number_id {spec['phone_number_id']}")
            waba_id = number.waba_id
        scope = str(waba_id) if waba_id and code == 80007 else None
        regain = spec.get("regain_minutes")
        until = self.clock.monotonic() + float(spec.get("seconds", 3600))
        return scope, CallLimit(code, until, None if regain is None else int(regain))

    def _check_call_limit(self, waba_id: str, now: float) -> None:
        for key in (waba_id, None):
            limit = self.call_limits.get(key)
            if limit is None:
                continue
            if now >= limit.until:
                del self.call_limits[key]
                continue
            minutes = limit.regain_minutes
            if minutes is None:
                minutes = math.ceil((limit.until - now) / 60.0)
            raise SimError(limit.code, headers=usage_header(waba_id, minutes))

    def tier_of(self, business_id: str) -> str:
        return self.tiers.get(business_id, self.default_tier)

    def _burst(self, burst: dict) -> None:
        pnid = burst.get("phone_number_id")
        if pnid is not None and str(pnid) not in self.numbers:
            raise ValueError(f"unknown phone_number_id {pnid}")
        self.bursts[str(pnid) if pnid else None] = self.clock.monotonic() + float(burst.get("seconds", 1))

    def _token_expiry(self, spec: dict) -> None:
        pnid = str(spec.get("phone_number_id", ""))
        if pnid not in self.numbers:
            raise ValueError(f"token_expiry needs a known phone_number_id, got {pnid!r}")
        if spec.get("clear"):
            self.expiries.pop(pnid, None)
            return
        exp = TokenExpiry()
        if spec.get("after_sends") is not None:
            exp.after_sends = int(spec["after_sends"])
        elif spec.get("at") is not None:
            exp.at = float(spec["at"])
        elif spec.get("in_seconds") is not None:
            exp.at = self.clock.time() + float(spec["in_seconds"])
        else:
            exp.at = self.clock.time()
        if exp.after_sends == 0:
            exp.expired_since = self.clock.time()
        self.expiries[pnid] = exp

    def upsert_number(self, raw: dict) -> Number:
        pnid = str(raw.get("phone_number_id", "")) if isinstance(raw, dict) else ""
        previous = self.numbers.get(pnid)
        number = number_from(raw, previous)
        if previous and previous.token != number.token:
            self.expiries.pop(pnid, None)        # a new token ends a simulated expiry
        self.numbers[number.phone_number_id] = number
        self.tokens = {n.token for n in self.numbers.values()}
        self.templates.ensure_waba(number.waba_id)
        return number

    def reset(self, numbers: bool = False, templates: bool = False, settings: bool = True) -> None:
        self.ledger.reset()
        self.emitter.clear()
        self.clock.reset()
        self._reset_state()
        if numbers:
            self.numbers.clear()
            for raw in self.config.numbers:
                self.upsert_number(raw)
        if templates:
            self.templates.reseed({n.waba_id for n in self.numbers.values()})
        if settings:
            self.settings = copy.deepcopy(self.config.settings)
            self._apply_settings()

    # --- the send endpoint -------------------------------------------------------

    def authorize(self, pnid: str, auth: str | None) -> Number:
        token = auth[7:].strip() if auth and auth[:7].lower() == "bearer " else None
        if not token or token not in self.tokens:
            raise invalid_token()
        number = self.numbers.get(pnid)
        if number is None:
            raise unknown_object(pnid)
        if number.token != token:
            # A valid token without access to this number: Graph's object error.
            raise unknown_object(pnid)
        return number

    # --- the Graph API's reads ------------------------------------------------------

    def read_token(self, auth: str | None) -> str:
        """The bearer token of a read, or Meta's 190 (HTTP 401); injected 5xx first."""
        r = random.random()
        for p, key in self.read_faults:
            if r < p:
                raise SimError(1 if key == "http_500" else 2)
            r -= p
        token = auth[7:].strip() if auth and auth[:7].lower() == "bearer " else None
        if not token or token not in self.tokens:
            raise invalid_token()
        return token

    def token_wabas(self, token: str) -> set[str]:
        """The WABAs a token reads: those of the numbers it was declared with (a system
        user's token is assigned WABAs, and reads every number they hold)."""
        return {n.waba_id for n in self.numbers.values() if n.token == token}

    def read_number(self, pnid: str, auth: str | None) -> Number:
        """``GET /{phone_number_id}``: the number, if a WABA of the token holds it."""
        token = self.read_token(auth)
        number = self.numbers.get(pnid)
        if number is None or number.waba_id not in self.token_wabas(token):
            raise unknown_object(pnid, "get")
        if self.call_limits:
            self._check_call_limit(number.waba_id, self.clock.monotonic())
        return number

    def read_waba_numbers(self, waba_id: str, auth: str | None) -> list[Number]:
        """``GET /{waba_id}/phone_numbers``: the WABA's numbers, if the token reads it."""
        token = self.read_token(auth)
        if waba_id not in self.token_wabas(token):
            raise unknown_object(waba_id, "get")
        if self.call_limits:
            self._check_call_limit(waba_id, self.clock.monotonic())
        return [n for n in self.numbers.values() if n.waba_id == waba_id]

    def latency_s(self) -> float:
        if self.latency is None:
            return 0.0
        return random.lognormvariate(*self.latency) / 1000.0

    def pick_drop(self) -> str | None:
        """None, or "before"/"after" the accept, per drop_connection_rate."""
        rate = self.settings["drop_connection_rate"]
        if rate and random.random() < rate:
            return "after" if random.random() < self.settings["drop_after_accept_share"] else "before"
        return None

    def send(self, number: Number, raw_body: bytes, drop: str | None = None):
        """Decide one send; returns (http_status, body bytes, headers) or DROP."""
        now = self.clock.monotonic()
        pnid = number.phone_number_id
        stats = self.ledger.number(pnid)
        try:
            body = orjson.loads(raw_body)
        except orjson.JSONDecodeError:
            body = None
        is_receipt = isinstance(body, dict) and body.get("status") is not None
        if not is_receipt:
            stats.attempt(now)
        self.ledger.requests += 1
        try:
            if drop == "before":
                self.ledger.reject("dropped")
                return DROP
            self._faults(number, now)
            self._check_token(pnid)
            parsed = messages.parse_send(body)
            if isinstance(parsed, str):
                self.ledger.read_receipts += 1
                return 200, b'{"success":true}', NO_HEADERS
            tpl, fail = self._check_content(number, parsed)
            if self.rules:
                rule = self._injected(number, parsed, tpl)
                if rule is not None:
                    if rule.sync:
                        raise rule.error(number.waba_id)
                    fail = rule.error(number.waba_id)
            # Only accepted sends (and inbound messages) fill the window, so a client that
            # backs off on 130429 gets through; peak_1s_attempts shows whether it kept
            # under the limit.
            if stats.in_window(now) >= number.limit_mps:
                raise SimError(130429)
            if self.pair is not None and not self.pairs.take((pnid, parsed.wa_id), now, *self.pair):
                raise SimError(131056)
            if parsed.wa_id in self.failing:
                if self.settings["failing_mode"] == "sync":
                    raise SimError(131026)
                fail = fail or SimError(131026)
            if tpl is not None and fail is None:
                fail = self._template_rules(number, parsed, tpl, now)
        except SimError as err:
            self.ledger.reject(err.code)
            return err.http_status, err.body(), err.headers or NO_HEADERS
        answer = self._accept(number, parsed, tpl, fail, now, stats)
        if drop == "after":
            self.ledger.reject("dropped_after_accept")
            return DROP
        return 200, answer, NO_HEADERS

    def _faults(self, number: Number, now: float) -> None:
        pnid = number.phone_number_id
        if self.bursts:
            for key in (pnid, None):
                until = self.bursts.get(key)
                if until is not None:
                    if now < until:
                        raise SimError(130429)
                    del self.bursts[key]
        if self.call_limits:
            self._check_call_limit(number.waba_id, now)
        if self.maintenance:
            until = self.maintenance.get(pnid)
            if until is not None and now < until:
                raise SimError(131057)
        if self.fault_table:
            r = random.random()
            if r < self.fault_total:
                for p, key in self.fault_table:
                    if r < p:
                        break
                    r -= p
                if key == "http_500":
                    raise SimError(1)
                if key == "http_503":
                    raise SimError(2)
                code = int(key)
                headers = usage_header(number.waba_id, 60) if code in CALL_LIMIT_CODES else None
                raise SimError(code, headers=headers)

    def _injected(self, number: Number, send: messages.Send, tpl: Template | None) -> Rule | None:
        """The first ``inject`` rule in scope that fires for this send, if any."""
        for rule in self.rules:
            if rule.pnid is not None and rule.pnid != number.phone_number_id:
                continue
            if rule.to is not None and send.wa_id not in rule.to:
                continue
            if rule.category is not None and (tpl is None or tpl.category != rule.category):
                continue
            if rule.rate >= 1.0 or random.random() < rule.rate:
                return rule
        return None

    def _template_rules(self, number: Number, send: messages.Send, tpl: Template,
                        now: float) -> SimError | None:
        """The marketing rules, then the portfolio's messaging limit: None, or the error
        of a failed status to come (a sync refusal is raised). Inside the user's
        customer-service window a template is not business-initiated: it counts toward
        no limit and meets no per-user marketing cap (Meta's pages say so of the cap
        [unsure]); the US pause holds anyway."""
        opened = self.windows.get((number.phone_number_id, send.wa_id))
        in_window = opened is not None and self.clock.time() - opened <= WINDOW_24H
        if tpl.category == "MARKETING":
            if self.us_marketing_blocked and is_us_number(send.wa_id):
                return SimError(131049)
            share = self.marketing_cap_share
            if share and not in_window and random.random() < share:
                return SimError(131049)
        if in_window:
            return None
        business = number.business
        reach = self.reach.get(business)
        if reach is None:
            reach = self.reach[business] = Reach()
        if reach.admit(send.wa_id, now, self.tier_limits.get(business, self.default_limit)):
            return None
        if self.limit_sync:
            raise SimError(self.limit_code)
        return SimError(self.limit_code)

    def _check_token(self, pnid: str) -> None:
        exp = self.expiries.get(pnid)
        if exp is None:
            return
        if exp.expired_since is None and exp.at is not None and self.clock.time() >= exp.at:
            exp.expired_since = exp.at
        if exp.expired_since is not None:
            when = time.strftime("%A, %d-%b-%y %H:%M:%S PDT", time.gmtime(exp.expired_since))
            raise expired_token(when)

    def _check_content(self, number: Number,
                       send: messages.Send) -> tuple[Template | None, SimError | None]:
        """The send's template (None for a free-form message), and the 131053 of a media
        link the fetcher will fail on (a failed status later); refusals are raised."""
        if send.template is not None:
            tpl, refs = self.templates.check_send(number.waba_id, send.template)
            fail = None
            for kind, obj in refs:
                fail = self.media.check_ref(number.waba_id, kind, obj, self.settings) or fail
            return tpl, fail
        if send.type in messages.FREE_FORM_TYPES:
            opened = self.windows.get((number.phone_number_id, send.wa_id))
            if opened is None or self.clock.time() - opened > WINDOW_24H:
                raise SimError(131047)
        if send.media is not None:
            return None, self.media.check_ref(number.waba_id, send.type, send.media,
                                              self.settings)
        return None, None

    def _accept(self, number: Number, send: messages.Send, tpl: Template | None,
                fail: SimError | None, now: float, stats) -> bytes:
        pnid = number.phone_number_id
        wamid = messages.new_wamid(send.wa_id)
        rate = self.settings["held_for_quality_rate"]
        # Template pacing holds only template sends that would otherwise go out.
        held = bool(rate and tpl is not None and fail is None and random.random() < rate)
        status = "held_for_quality_assessment" if held else "accepted"
        stats.accept(now)
        exp = self.expiries.get(pnid)
        if exp is not None and exp.after_sends is not None and exp.expired_since is None:
            exp.after_sends -= 1
            if exp.after_sends <= 0:
                exp.expired_since = self.clock.time()
        self.ledger.record((self.clock.time(), pnid, send.wa_id, send.type,
                            tpl.data["name"] if tpl else None,
                            tpl.data["language"] if tpl else None,
                            send.biz, wamid, status))
        if tpl is not None and tpl.quick_replies:
            self._remember_buttons(wamid, pnid, send, tpl)
        if held:
            self._hold(number, send, tpl, wamid, now)
        else:
            self._schedule_statuses(number, send, tpl, wamid, fail, now)
        return orjson.dumps({
            "messaging_product": "whatsapp",
            "contacts": [{"input": send.to, "wa_id": send.wa_id}],
            "messages": [{"id": wamid, "message_status": status}],
        })

    # --- held for quality assessment (template pacing) ---------------------------

    def _hold(self, number: Number, send: messages.Send, tpl: Template, wamid: str,
              now: float) -> None:
        key = (number.waba_id, tpl.data["name"], tpl.data["language"])
        self.held[wamid] = (number.phone_number_id, send, tpl, key)
        self.held_by_template.setdefault(key, set()).add(wamid)
        self.ledger.held += 1
        due = now + random.uniform(*self.settings["held_release_s"])
        self.emitter.at(due, ("call", lambda: self._release(wamid)))

    def _release(self, wamid: str) -> None:
        """Meta's early feedback was good: the held message goes out (sent, delivered...)."""
        entry = self.held.pop(wamid, None)
        if entry is None:
            return          # dropped meanwhile (its template was paused)
        pnid, send, tpl, key = entry
        self.held_by_template.get(key, set()).discard(wamid)
        number = self.numbers.get(pnid)
        if number is not None:
            self.ledger.released += 1
            self._schedule_statuses(number, send, tpl, wamid, None, self.clock.monotonic())

    def _drop_held(self, waba_id: str, tpl: Template, code: int) -> int:
        """The template was paused (or disabled): every message held for it fails."""
        wamids = self.held_by_template.pop((waba_id, tpl.data["name"], tpl.data["language"]), ())
        now = self.clock.monotonic()
        for wamid in wamids:
            pnid, send, _tpl, _key = self.held.pop(wamid)
            self.ledger.failed_later[str(code)] += 1
            status = {**self._status_base(send, wamid), "status": "failed",
                      "errors": [SimError(code).webhook_error()]}
            self.emitter.at(now, ("status", pnid, status))
        return len(wamids)

    # --- webhooks for an accepted send ------------------------------------------

    def _conversation(self, pnid: str, wa_id: str, category: str) -> tuple[str, float]:
        key = (pnid, wa_id, category)
        conv = self.conversations.get(key)
        wall = self.clock.time()
        if conv is None or conv[1] <= wall:
            cid = hashlib.md5(f"{pnid}:{wa_id}:{category}:{wall}".encode()).hexdigest()
            conv = self.conversations[key] = (cid, wall + WINDOW_24H)
        return conv

    @staticmethod
    def _status_base(send: messages.Send, wamid: str) -> dict:
        base: dict = {"id": wamid, "recipient_id": send.wa_id}
        if send.biz is not None:
            base["biz_opaque_callback_data"] = send.biz
        return base

    def _schedule_statuses(self, number: Number, send: messages.Send, tpl: Template | None,
                           wamid: str, fail: SimError | None, now: float) -> None:
        s = self.settings
        st = s["statuses"]
        emit = self.emitter.at
        pnid = number.phone_number_id
        base = self._status_base(send, wamid)
        t_sent = now + random.uniform(*st["sent_delay_ms"]) / 1000.0
        if fail is not None:
            self.ledger.failed_later[str(fail.code)] += 1
            emit(t_sent, ("status", pnid, {**base, "status": "failed",
                                           "errors": [fail.webhook_error()]}))
            return
        category = tpl.category.lower() if tpl else "service"
        conv_id, conv_exp = self._conversation(pnid, send.wa_id, category)
        if s["pricing_model"] == "CBP":
            pricing = {"billable": True, "pricing_model": "CBP", "category": category}
        elif category == "service":
            pricing = {"billable": False, "pricing_model": "PMP", "category": "service",
                       "type": "free_customer_service"}
        else:
            pricing = {"billable": True, "pricing_model": "PMP", "category": category,
                       "type": "regular"}
        sent = {**base, "status": "sent"}
        if s["conversation_in_status"]:
            sent["conversation"] = {"id": conv_id, "expiration_timestamp": str(int(conv_exp)),
                                    "origin": {"type": category}}
        sent["pricing"] = pricing
        times = [t_sent]
        events = [sent]
        t_delivered = None
        if random.random() < st["delivered_rate"]:
            t_delivered = t_sent + random.uniform(*st["delivered_delay_ms"]) / 1000.0
            delivered = {**base, "status": "delivered"}
            if s["conversation_in_status"]:
                delivered["conversation"] = {"id": conv_id, "origin": {"type": category}}
            delivered["pricing"] = pricing
            if random.random() < st["read_rate"]:
                read = {**base, "status": "read"}
                t_read = t_delivered + random.uniform(*st["read_delay_ms"]) / 1000.0
                skip = st["read_without_delivered_rate"]
                if skip and random.random() < skip:
                    # Delivered and read together: Meta sends only `read`, which then
                    # carries what `delivered` would have (reference §4.3, §4.5).
                    for key in ("conversation", "pricing"):
                        if key in delivered:
                            read[key] = delivered[key]
                    times.append(t_read)
                    events.append(read)
                else:
                    times += [t_delivered, t_read]
                    events += [delivered, read]
            else:
                times.append(t_delivered)
                events.append(delivered)
        wh = s["webhook"]
        if wh["reorder_rate"]:
            for i in range(len(times) - 1):
                if random.random() < wh["reorder_rate"]:
                    times[i], times[i + 1] = times[i + 1], times[i]
        for t, event in zip(times, events):
            emit(t, ("status", pnid, event))
            if wh["duplicate_rate"] and random.random() < wh["duplicate_rate"]:
                emit(t + random.uniform(0.05, 0.5), ("status", pnid, dict(event)))
        if t_delivered is not None and s["inbound"]["reply_rate"]:
            self._maybe_reply(number, send, tpl, wamid, t_delivered)

    def _maybe_reply(self, number: Number, send: messages.Send, tpl: Template | None,
                     wamid: str, t_delivered: float) -> None:
        inbound = self.settings["inbound"]
        share = int(float(inbound["reply_rate"]) * 10000)
        if zlib.crc32(send.wa_id.encode()) % 10000 >= share:
            return
        key = (number.phone_number_id, send.wa_id)
        if self.auto_replies.get(key, 0) >= int(inbound["max_per_recipient"]):
            return
        kinds = {k: float(w) for k, w in inbound["kinds"].items() if float(w) > 0}
        buttons = messages.reply_buttons(send, tpl.buttons) if tpl else []
        iv_buttons = []
        if send.interactive and send.interactive.get("type") == "button":
            iv_buttons = [b["reply"] for b in send.interactive["action"]["buttons"]]
        if not buttons:
            kinds.pop("button", None)
        if not iv_buttons:
            kinds.pop("interactive", None)
        if send.template is None and not iv_buttons:
            return      # only campaign (template) or button messages get auto replies
        if not kinds:
            return
        kind = random.choices(list(kinds), weights=list(kinds.values()))[0]
        if kind == "button":
            _index, payload, text = random.choice(buttons)
            message = {"type": "button", "button": {"payload": payload, "text": text}}
        elif kind == "interactive":
            reply = random.choice(iv_buttons)
            message = {"type": "interactive", "interactive": {
                "type": "button_reply",
                "button_reply": {"id": reply["id"], "title": reply["title"]}}}
        else:
            message = {"type": "text", "text": {"body": random.choice(inbound["texts"])}}
        self.auto_replies[key] = self.auto_replies.get(key, 0) + 1
        due = t_delivered + random.uniform(*inbound["delay_ms"]) / 1000.0
        self.inbound(number, send.wa_id, message, context_id=wamid, due=due)

    # --- inbound, template and quality events --------------------------------------

    def inbound(self, number: Number, wa_id: str, message: dict, *, name: str | None = None,
                context_id: str | None = None, due: float | None = None) -> str:
        """Schedule an inbound message from ``wa_id``; opens the 24-hour window."""
        wamid = messages.new_wamid(wa_id, inbound=True)
        msg: dict = {}
        if context_id:
            msg["context"] = {"from": number.display_phone_number, "id": context_id}
        msg["from"] = wa_id
        msg["id"] = wamid
        if message.get("timestamp"):
            msg["timestamp"] = str(message["timestamp"])
        for key, value in message.items():
            if key not in ("from", "id", "timestamp", "context"):
                msg[key] = value
        msg.setdefault("type", "text")
        contact = {"profile": {"name": name or f"Sim User {wa_id[-4:]}"}, "wa_id": wa_id}
        if due is None:     # delivered now: the window opens now
            self.windows[(number.phone_number_id, wa_id)] = self.clock.time()
        # Otherwise the emitter opens it when the message goes out (see Emitter.flush).
        self.emitter.at(self.clock.monotonic() if due is None else due,
                        ("message", number.phone_number_id, (contact, msg)))
        return wamid

    def _remember_buttons(self, wamid: str, pnid: str, send: messages.Send,
                          tpl: Template) -> None:
        sent = self.sent_buttons
        if len(sent) >= SENT_BUTTONS_MAX:
            del sent[next(iter(sent))]          # the oldest send
        sent[wamid] = (pnid, send.wa_id, messages.reply_buttons(send, tpl.buttons))

    def inbound_media(self, number: Number, spec: dict) -> tuple[dict, dict]:
        """An inbound image / audio / video / document / sticker: its bytes are stored
        as media of the number's WABA (Meta keeps inbound media 7 days) and the message
        names it like Meta's webhook. Returns (message, facts about the media)."""
        if not isinstance(spec, dict):
            raise TypeError("media must be an object")
        kind = spec.get("type")
        if kind not in MEDIA_KINDS:
            raise ValueError(f"media.type must be one of {list(MEDIA_KINDS)}")
        voice = bool(spec.get("voice", kind == "audio"))
        mime = spec.get("mime_type") or ("audio/mpeg" if kind == "audio" and not voice
                                         else INBOUND_DEFAULTS[kind])
        if spec.get("content_b64") is not None:
            data = base64.b64decode(spec["content_b64"], validate=True)
        else:
            data = sample_bytes(mime, int(spec.get("size", 2048)))
        if not 0 < len(data) <= MAX_INBOUND:
            raise ValueError(f"media content must be 1 byte to {MAX_INBOUND} bytes")
        filename = spec.get("filename") or ("document.pdf" if kind == "document" else None)
        media = self.media.add(number.waba_id, number.phone_number_id, mime, data,
                               ttl_s=INBOUND_TTL_S, filename=filename)
        obj: dict = {}
        if spec.get("caption") is not None and kind in ("image", "video", "document"):
            obj["caption"] = str(spec["caption"])
        if kind == "document":
            obj["filename"] = filename
        obj.update(mime_type=mime, sha256=media.sha256_b64, id=media.id)
        if kind == "audio":
            obj["voice"] = voice
        if kind == "sticker":
            obj["animated"] = bool(spec.get("animated", False))
        facts = {"media_id": media.id, "mime_type": mime, "sha256": media.sha256,
                 "file_size": len(data)}
        return {"type": kind, kind: obj}, facts

    def button_tap(self, number: Number, wa_id: str, spec: dict,
                   context_id: str | None) -> dict:
        """A tap on a template's quick-reply button (``type: button``). With the
        ``context_id`` of a template message the simulator sent, ``index``, ``text`` or
        ``payload`` names the button and the payload is the one that send gave (else the
        button text);
        otherwise ``text`` (and ``payload``, default the text) are taken as given."""
        if not isinstance(spec, dict):
            raise TypeError("button must be an object")
        sent = self.sent_buttons.get(context_id) if context_id else None
        if sent is not None:
            pnid, to, buttons = sent
            if pnid != number.phone_number_id or to != wa_id:
                raise ValueError(f"message {context_id} was sent to {to} from {pnid}")
            if spec.get("index") is not None:
                found = [b for b in buttons if b[0] == int(spec["index"])]
            elif spec.get("text") is not None:
                found = [b for b in buttons if b[2] == spec["text"]]
            elif spec.get("payload") is not None:
                found = [b for b in buttons if b[1] == spec["payload"]]
            else:
                found = buttons[:1]
            if not found:
                raise ValueError(f"message {context_id} has no quick-reply button {spec}; "
                                 f"it has {buttons}")
            _index, payload, text = found[0]
        else:
            text = spec.get("text")
            if not isinstance(text, str) or not text:
                raise ValueError("button needs text (and payload), or the context_id of a "
                                 "template message the simulator sent with quick replies")
            payload = str(spec.get("payload") or text)
        return {"type": "button", "button": {"payload": payload, "text": text}}

    def _template_event(self, waba_id: str, tpl: Template, reason: str | None,
                        spec: dict | None = None, event: str | None = None) -> dict:
        """Send Meta's ``message_template_status_update`` for ``tpl``; returns its value."""
        spec = spec or {}
        event = event or tpl.status
        value = {
            "event": event,
            "message_template_id": int(tpl.data["id"]),
            "message_template_name": tpl.data["name"],
            "message_template_language": tpl.data["language"],
            "reason": reason,
            "message_template_category": tpl.category,
        }
        if event == "DISABLED":
            value["disable_info"] = {"disable_date": int(self.clock.time())}
        if spec.get("other_info"):
            value["other_info"] = spec["other_info"]
        elif event == "PAUSED":
            value["other_info"] = {"title": "FIRST_PAUSE", "description": (
                "Your message template has been paused for 3 hours due to low quality.")}
        if event == "REJECTED" and reason == "INVALID_FORMAT":
            value["rejection_info"] = {
                "reason": "The template has a formatting problem, such as variables next to "
                          "each other or at the start or end of the text.",
                "recommendation": "Put text between variables and fix the formatting, then "
                                  "submit it again."}
        self.emitter.post_account_update(waba_id, "message_template_status_update", value,
                                         "template")
        return value

    def template_status(self, spec: dict) -> list[dict]:
        name = spec.get("name")
        status = spec.get("status") or spec.get("event")
        if not name or not status:
            raise ValueError("template_status needs name and status")
        changed = self.templates.set_status(spec.get("waba_id"), name, spec.get("language"),
                                            status)
        out = []
        for waba_id, tpl in changed:
            if tpl.status == "REJECTED":
                tpl.data["rejected_reason"] = spec.get("reason") or "NONE"
            value = self._template_event(waba_id, tpl, spec.get("reason") or "NONE", spec)
            # Messages held for quality while the template was paced are dropped.
            if tpl.status in ("PAUSED", "DISABLED"):
                value_dropped = self._drop_held(waba_id, tpl,
                                                132015 if tpl.status == "PAUSED" else 132016)
                out.append({**value, "held_dropped": value_dropped})
            else:
                out.append(value)
        return out

    def template_quality(self, spec: dict) -> list[dict]:
        """A template's quality score moves: ``message_template_quality_update`` (the
        listing's ``quality_score`` follows)."""
        score = str(spec.get("score", "")).upper()
        if not spec.get("name") or score not in ("GREEN", "YELLOW", "RED", "UNKNOWN"):
            raise ValueError("template_quality needs name and score (GREEN, YELLOW, RED, UNKNOWN)")
        out = []
        for waba_id, tpl in self._matching(spec):
            previous = (tpl.data.get("quality_score") or {}).get("score", "UNKNOWN")
            tpl.data["quality_score"] = {"score": score, "date": int(self.clock.time())}
            value = {"previous_quality_score": previous, "new_quality_score": score,
                     "message_template_id": int(tpl.data["id"]),
                     "message_template_name": tpl.data["name"],
                     "message_template_language": tpl.data["language"]}
            self.emitter.post_account_update(waba_id, "message_template_quality_update", value,
                                             "template")
            out.append(value)
        return out

    def template_category(self, spec: dict) -> list[dict]:
        """Meta recategorises a template: ``template_category_update``. ``impending``: the
        24-hour notice (``new_category`` is still the current one, ``correct_category`` the
        coming one; nothing changes yet); else the change itself (``previous_category``)."""
        category = str(spec.get("category", "")).upper()
        if not spec.get("name") or category not in ("MARKETING", "UTILITY", "AUTHENTICATION"):
            raise ValueError("template_category needs name and category")
        out = []
        for waba_id, tpl in self._matching(spec):
            value = {"message_template_id": int(tpl.data["id"]),
                     "message_template_name": tpl.data["name"],
                     "message_template_language": tpl.data["language"]}
            if spec.get("impending"):
                value.update(new_category=tpl.category, correct_category=category,
                             category_update_timestamp=int(self.clock.time()) + 86400)
            else:
                value.update(previous_category=tpl.category, new_category=category)
                tpl.data["previous_category"] = tpl.category
                tpl.data["category"] = category
            self.emitter.post_account_update(waba_id, "template_category_update", value,
                                             "template")
            out.append(value)
        return out

    def _matching(self, spec: dict) -> list[tuple[str, Template]]:
        found = [(waba, tpl) for waba, templates in self.templates.by_waba.items()
                 if not spec.get("waba_id") or waba == str(spec["waba_id"])
                 for (name, lang), tpl in templates.items()
                 if name == spec["name"] and (not spec.get("language") or lang == spec["language"])]
        if not found:
            raise ValueError(f"no template {spec['name']!r} matches")
        return found

    # --- template management (POST / DELETE /{waba_id}/message_templates) -----------

    def create_template(self, waba_id: str, auth: str | None, raw: object) -> dict:
        """A new template, PENDING until the review on the simulator's clock."""
        self.read_waba_numbers(waba_id, auth)
        tpl = self.templates.create(waba_id, raw, self.clock.time())
        delay = float(self.settings["template_review"]["delay_s"])
        self.emitter.at(self.clock.monotonic() + delay,
                        ("call", lambda: self._review(waba_id, tpl)))
        return {"id": tpl.data["id"], "status": "PENDING", "category": tpl.category}

    def _review(self, waba_id: str, tpl: Template) -> None:
        current = self.templates.by_waba.get(waba_id, {}).get(
            (tpl.data["name"], tpl.data["language"]))
        if current is not tpl or tpl.status != "PENDING":
            return          # deleted, or its status set by hand meanwhile
        review = self.settings["template_review"]
        reason = None
        if review["reject_prefix"] and tpl.data["name"].startswith(review["reject_prefix"]):
            reason = review["reject_reason"]
        elif ADJACENT_VARIABLES_RE.search(tpl.body_text):
            reason = "INVALID_FORMAT"
        if reason:
            tpl.data["status"] = "REJECTED"
            tpl.data["rejected_reason"] = reason
        else:
            tpl.data["status"] = "APPROVED"
        self._template_event(waba_id, tpl, reason or "NONE")

    def delete_template(self, waba_id: str, auth: str | None, name: str | None,
                        hsm_id: str | None) -> dict:
        self.read_waba_numbers(waba_id, auth)
        if not name:
            raise SimError(100, "The parameter name is required.")
        for tpl in self.templates.delete(waba_id, name, hsm_id, self.clock.time()):
            self._template_event(waba_id, tpl, None, event="PENDING_DELETION")
        return {"success": True}

    # --- media (sim/media.py) -------------------------------------------------------

    def upload_media(self, number: Number, fields: dict, data: bytes | None,
                     file_mime: str | None, filename: str | None) -> dict:
        if fields.get("messaging_product") is None:
            raise SimError(100, "The parameter messaging_product is required.")
        if fields["messaging_product"] != "whatsapp":
            raise SimError(100, "Param messaging_product must be one of {WHATSAPP} - got "
                           f'"{fields["messaging_product"]}".')
        if data is None:
            raise SimError(100, "The parameter file is required.")
        mime = fields.get("type") or file_mime
        self.media.check_upload(mime, len(data))
        media = self.media.add(number.waba_id, number.phone_number_id, mime, data,
                               ttl_s=UPLOAD_TTL_S, filename=filename)
        return {"id": media.id}

    def read_media(self, media_id: str, auth: str | None, pnid: str | None = None):
        """The media a token may read (its WABA owns it), else Graph's 100/33."""
        token = self.read_token(auth)
        media = self.media.get(media_id)
        if media is None or media.waba_id not in self.token_wabas(token) \
                or (pnid and pnid != media.phone_number_id):
            raise unknown_object(media_id, "get")
        return media

    # --- messaging limits and throughput levels -------------------------------------

    def _business_of(self, spec: dict) -> str:
        if spec.get("business_id"):
            return str(spec["business_id"])
        if spec.get("phone_number_id") is not None:
            number = self.numbers.get(str(spec["phone_number_id"]))
            if number is None:
                raise ValueError(f"unknown phone_number_id {spec['phone_number_id']}")
            return number.business
        for number in self.numbers.values():
            if spec.get("waba_id") and number.waba_id == str(spec["waba_id"]):
                return number.business
        raise ValueError("name the business: business_id, phone_number_id or waba_id")

    def set_tier(self, spec: dict) -> dict:
        """Move a business portfolio to another messaging limit, and tell each of its
        WABAs as Meta does: a ``business_capability_update`` webhook whose
        ``max_daily_conversations_per_business`` is the limit (-1: unlimited)."""
        business = self._business_of(spec)
        tier = spec.get("tier")
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {list(TIERS)}")
        self.settings["messaging_limit"]["tiers"][business] = tier
        self.tier_limits[business] = tier_limit(tier)
        value = {"max_daily_conversations_per_business": capability_value(tier)}
        wabas = sorted({n.waba_id for n in self.numbers.values() if n.business == business})
        if spec.get("webhook", True):
            for waba_id in wabas:
                self.emitter.post_account_update(waba_id, "business_capability_update", value,
                                                 "capability")
        return {"business_id": business, "tier": tier, "wabas": wabas, "value": value}

    def throughput_upgrade(self, spec: dict) -> dict:
        """Meta's throughput upgrade of a number (reference §3.1): for ``maintenance_s``
        (up to a minute) its sends fail with 131057; then it sends at ``throughput_mps``
        and a ``phone_number_quality_update`` THROUGHPUT_UPGRADE webhook says so."""
        pnid = str(spec.get("phone_number_id", ""))
        if pnid not in self.numbers:
            raise ValueError("throughput upgrade needs a known phone_number_id")
        mps = float(spec.get("throughput_mps", 1000))
        maintenance_s = float(spec.get("maintenance_s", 60))
        if mps <= 0 or maintenance_s < 0:
            raise ValueError("throughput_mps must be positive and maintenance_s not negative")
        until = self.clock.monotonic() + maintenance_s
        self.maintenance[pnid] = until

        def done() -> None:
            self.maintenance.pop(pnid, None)
            number = self.numbers.get(pnid)
            if number is None:
                return
            number.throughput_mps = mps
            value = {"display_phone_number": number.display_phone_number,
                     "event": "THROUGHPUT_UPGRADE",
                     "max_daily_conversations_per_business": self.tier_of(number.business)}
            self.emitter.post_account_update(number.waba_id, "phone_number_quality_update",
                                             value, "quality")

        if maintenance_s == 0:
            done()
        else:
            self.emitter.at(until, ("call", done))
        return {"phone_number_id": pnid, "throughput_mps": mps, "maintenance_s": maintenance_s}

    def quality_update(self, spec: dict) -> dict:
        number = self.numbers.get(str(spec.get("phone_number_id", "")))
        if number is None:
            raise ValueError("quality update needs a known phone_number_id")
        value = {"display_phone_number": number.display_phone_number,
                 "event": spec.get("event", "FLAGGED")}
        for key in ("old_limit", "current_limit", "max_daily_conversations_per_business"):
            if spec.get(key) is not None:
                value[key] = spec[key]
        value.setdefault("current_limit", "TIER_10K")
        if spec.get("throughput_mps"):
            number.throughput_mps = float(spec["throughput_mps"])
        self.emitter.post_account_update(number.waba_id, "phone_number_quality_update", value,
                                         "quality")
        return value

    def stats(self) -> dict:
        out = self.ledger.stats({p: n.limit_mps for p, n in self.numbers.items()})
        now = self.clock.monotonic()
        businesses: dict[str, dict] = {}
        for number in self.numbers.values():
            business = number.business
            if business in businesses:
                continue
            tier = self.tier_of(business)
            reach = self.reach.get(business) or Reach()
            businesses[business] = {
                "tier": tier, "messaging_limit": tier_limit(tier),
                "unique_users_24h": reach.users(now), "max_unique_users_24h": reach.max_users,
                "refused_new_users": reach.refused}
        out["businesses"] = businesses
        out["held_for_quality"] = len(self.held)
        out["webhooks"] = {**self.emitter.counters.as_dict(), "pending": self.emitter.pending()}
        out["uptime_s"] = round(time.time() - self.started, 3)
        out["loop"] = self.probe.as_dict()
        return out
