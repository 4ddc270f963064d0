"""The simulator's state and behaviour, independent of HTTP.

``Simulator.send`` is the whole ``POST /messages`` decision after routing and
the token check: injected faults (bursts, transient errors), token expiry,
validation (templates, the 24-hour window), throughput, pair limit, recipient
failures, then the accept (ledger, status webhooks, maybe an inbound reply).
Checks run in that order; Meta does not document its own order, so a request
that breaks two rules may get a different code here than from Meta.
"""

from __future__ import annotations

import copy
import hashlib
import random
import time
import zlib
from dataclasses import dataclass

import orjson

from . import messages
from .clock import SimClock
from .config import Number, SimConfig, check_settings, deep_merge, lognormal_params, number_from
from .errors import SimError, expired_token, invalid_token, unknown_object
from .ledger import Ledger
from .probe import LoopProbe
from .templates import Template, TemplateStore
from .webhooks import Emitter

WINDOW_24H = 24 * 3600.0
DROP = object()   # answer: close the connection without a response


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
        self.pair_last: dict[tuple[str, str], float] = {}
        self.auto_replies: dict[tuple[str, str], int] = {}
        self.bursts: dict[str | None, float] = {}              # pnid (None = all) -> until
        self.expiries: dict[str, TokenExpiry] = {}

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

    def update_settings(self, patch: dict) -> dict:
        """Apply a partial settings update plus the one-shot faults; returns the settings."""
        if not isinstance(patch, dict):
            raise TypeError("faults must be a JSON object")
        patch = dict(patch)
        burst = patch.pop("rate_limit_burst", None)
        expiry = patch.pop("token_expiry", None)
        unknown = set(patch) - set(self.settings)
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        merged = deep_merge(self.settings, patch)
        check_settings(merged)
        self.settings = merged
        self._apply_settings()
        if burst is not None:
            self._burst(burst)
        if expiry is not None:
            self._token_expiry(expiry)
        return self.settings

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
        return number

    def read_waba_numbers(self, waba_id: str, auth: str | None) -> list[Number]:
        """``GET /{waba_id}/phone_numbers``: the WABA's numbers, if the token reads it."""
        token = self.read_token(auth)
        if waba_id not in self.token_wabas(token):
            raise unknown_object(waba_id, "get")
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
        """Decide one send; returns (http_status, body bytes) or DROP."""
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
            self._faults(pnid, now)
            self._check_token(pnid)
            parsed = messages.parse_send(body)
            if isinstance(parsed, str):
                self.ledger.read_receipts += 1
                return 200, b'{"success":true}'
            tpl = self._check_content(number, parsed)
            # Only accepted sends fill the window, so a client that backs off on 130429
            # gets through; peak_1s_attempts shows whether it kept under the limit.
            if stats.in_window(now) >= number.throughput_mps:
                raise SimError(130429)
            self._check_pair(pnid, parsed.wa_id, now)
            failing = parsed.wa_id in self.failing
            if failing and self.settings["failing_mode"] == "sync":
                raise SimError(131026)
        except SimError as err:
            self.ledger.reject(err.code)
            return err.http_status, err.body()
        answer = self._accept(number, parsed, tpl, failing, now, stats)
        if drop == "after":
            self.ledger.reject("dropped_after_accept")
            return DROP
        return 200, answer

    def _faults(self, pnid: str, now: float) -> None:
        if self.bursts:
            for key in (pnid, None):
                until = self.bursts.get(key)
                if until is not None:
                    if now < until:
                        raise SimError(130429)
                    del self.bursts[key]
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
                raise SimError(int(key))

    def _check_token(self, pnid: str) -> None:
        exp = self.expiries.get(pnid)
        if exp is None:
            return
        if exp.expired_since is None and exp.at is not None and self.clock.time() >= exp.at:
            exp.expired_since = exp.at
        if exp.expired_since is not None:
            when = time.strftime("%A, %d-%b-%y %H:%M:%S PDT", time.gmtime(exp.expired_since))
            raise expired_token(when)

    def _check_content(self, number: Number, send: messages.Send) -> Template | None:
        if send.template is not None:
            return self.templates.check_send(number.waba_id, send.template)
        if send.type in messages.FREE_FORM_TYPES:
            opened = self.windows.get((number.phone_number_id, send.wa_id))
            if opened is None or self.clock.time() - opened > WINDOW_24H:
                raise SimError(131047)
        return None

    def _check_pair(self, pnid: str, wa_id: str, now: float) -> None:
        pair = self.settings["pair_rate_limit"]
        if not pair["enabled"]:
            return
        key = (pnid, wa_id)
        last = self.pair_last.get(key)
        if last is not None and now - last < float(pair["interval_s"]):
            raise SimError(131056)
        self.pair_last[key] = now

    def _accept(self, number: Number, send: messages.Send, tpl: Template | None, failing: bool,
                now: float, stats) -> bytes:
        pnid = number.phone_number_id
        wamid = messages.new_wamid(send.wa_id)
        held = (self.settings["held_for_quality_rate"]
                and random.random() < self.settings["held_for_quality_rate"])
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
        self._schedule_statuses(number, send, tpl, wamid, failing, now)
        return orjson.dumps({
            "messaging_product": "whatsapp",
            "contacts": [{"input": send.to, "wa_id": send.wa_id}],
            "messages": [{"id": wamid, "message_status": status}],
        })

    # --- webhooks for an accepted send ------------------------------------------

    def _conversation(self, pnid: str, wa_id: str, category: str) -> tuple[str, float]:
        key = (pnid, wa_id, category)
        conv = self.conversations.get(key)
        wall = self.clock.time()
        if conv is None or conv[1] <= wall:
            cid = hashlib.md5(f"{pnid}:{wa_id}:{category}:{wall}".encode()).hexdigest()
            conv = self.conversations[key] = (cid, wall + WINDOW_24H)
        return conv

    def _schedule_statuses(self, number: Number, send: messages.Send, tpl: Template | None,
                           wamid: str, failing: bool, now: float) -> None:
        s = self.settings
        st = s["statuses"]
        emit = self.emitter.at
        pnid = number.phone_number_id
        base: dict = {"id": wamid, "recipient_id": send.wa_id}
        if send.biz is not None:
            base["biz_opaque_callback_data"] = send.biz
        t_sent = now + random.uniform(*st["sent_delay_ms"]) / 1000.0
        if failing:
            err = SimError(131026).webhook_error()
            emit(t_sent, ("status", pnid, {**base, "status": "failed", "errors": [err]}))
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
        delivered = None
        if s["conversation_in_status"]:
            sent["conversation"] = {"id": conv_id, "expiration_timestamp": str(int(conv_exp)),
                                    "origin": {"type": category}}
        sent["pricing"] = pricing
        times = [t_sent]
        events = [sent]
        if random.random() < st["delivered_rate"]:
            delivered = {**base, "status": "delivered"}
            if s["conversation_in_status"]:
                delivered["conversation"] = {"id": conv_id, "origin": {"type": category}}
            delivered["pricing"] = pricing
            times.append(t_sent + random.uniform(*st["delivered_delay_ms"]) / 1000.0)
            events.append(delivered)
            if random.random() < st["read_rate"]:
                times.append(times[-1] + random.uniform(*st["read_delay_ms"]) / 1000.0)
                events.append({**base, "status": "read"})
        wh = s["webhook"]
        if wh["reorder_rate"]:
            for i in range(len(times) - 1):
                if random.random() < wh["reorder_rate"]:
                    times[i], times[i + 1] = times[i + 1], times[i]
        for t, event in zip(times, events):
            emit(t, ("status", pnid, event))
            if wh["duplicate_rate"] and random.random() < wh["duplicate_rate"]:
                emit(t + random.uniform(0.05, 0.5), ("status", pnid, dict(event)))
        if delivered is not None and s["inbound"]["reply_rate"]:
            self._maybe_reply(number, send, tpl, wamid, times[1])

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
        buttons = messages.reply_buttons(send, tpl.quick_replies) if tpl else []
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
            payload, text = random.choice(buttons)
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

    def template_status(self, spec: dict) -> list[dict]:
        name = spec.get("name")
        status = spec.get("status") or spec.get("event")
        if not name or not status:
            raise ValueError("template_status needs name and status")
        changed = self.templates.set_status(spec.get("waba_id"), name, spec.get("language"),
                                            status)
        out = []
        for waba_id, tpl in changed:
            value = {
                "event": tpl.status,
                "message_template_id": int(tpl.data["id"]),
                "message_template_name": tpl.data["name"],
                "message_template_language": tpl.data["language"],
                "reason": spec.get("reason") or "NONE",
                "message_template_category": tpl.category,
            }
            if tpl.status == "DISABLED":
                value["disable_info"] = {"disable_date": int(self.clock.time())}
            if spec.get("other_info"):
                value["other_info"] = spec["other_info"]
            self.emitter.post_account_update(waba_id, "message_template_status_update", value,
                                             "template")
            out.append(value)
        return out

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
        out = self.ledger.stats({p: n.throughput_mps for p, n in self.numbers.items()})
        out["webhooks"] = {**self.emitter.counters.as_dict(), "pending": self.emitter.pending()}
        out["uptime_s"] = round(time.time() - self.started, 3)
        out["loop"] = self.probe.as_dict()
        return out
