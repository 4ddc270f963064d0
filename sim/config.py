"""Simulator configuration: numbers, behaviour settings and how they are loaded.

One JSON config file (``--config``) may hold::

    {
      "webhook_url": "http://127.0.0.1:8000/webhooks/whatsapp",
      "app_secret": "sim-app-secret",
      "numbers": [{"phone_number_id": "100000000000001", "waba_id": "200000000000001",
                   "display_phone_number": "15550000001", "token": "sim-token",
                   "throughput_mps": 80, "app_secret": null, "webhook_url": null,
                   "verified_name": "Sim Business 0001", "quality_rating": "GREEN"}],
      "templates": [...] | {"<waba_id>": [...]},   # default: sim/templates.json for every WABA
      "settings": {...}                             # any subset of DEFAULT_SETTINGS
    }

A number's ``token`` stands for a system user's token assigned to its WABA: a token
reads every number of every WABA it was declared with (``GET /{phone_number_id}``,
``GET /{waba_id}/phone_numbers``, ``GET /{waba_id}/message_templates``), and sends
from the numbers declared with it.

Settings (behaviour and faults) can later be changed with ``POST /_sim/faults``,
which deep-merges a partial object into the current settings.
"""

from __future__ import annotations

import copy
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

DEFAULT_TEMPLATES_FILE = Path(__file__).with_name("templates.json")
DEFAULT_APP_SECRET = "sim-app-secret"
DEFAULT_THROUGHPUT_MPS = 80  # Meta's default per business phone number

DEFAULT_NUMBER = {
    "phone_number_id": "100000000000001",
    "waba_id": "200000000000001",
    "display_phone_number": "15550000001",
    "token": "sim-token",
}

DEFAULT_SETTINGS: dict = {
    # --- synchronous faults on POST /messages (probabilities are per request) ---
    "error_rates": {"131000": 0.0, "131016": 0.0, "http_500": 0.0, "http_503": 0.0},
    "drop_connection_rate": 0.0,      # close the socket without an answer
    "drop_after_accept_share": 0.5,   # share of drops that happen after the send was accepted
    "latency_ms": {"median": 0.0, "p99": 0.0},   # lognormal; 0 = answer at once
    "held_for_quality_rate": 0.0,     # share of accepts answered held_for_quality_assessment
    "failing_recipients": [],         # wa_ids that can never receive a message
    # Meta mostly reports 131026 asynchronously, as a failed status webhook after an
    # accepted send; "sync" answers it on the request instead. Default: webhook.
    "failing_mode": "webhook",
    "pair_rate_limit": {"enabled": False, "interval_s": 6.0},   # 131056, off by default
    # --- faults on the Graph API's reads (phone number node, phone_numbers, templates) ---
    "read_error_rates": {"http_500": 0.0, "http_503": 0.0},
    # --- status webhooks for accepted sends ---
    "statuses": {
        "delivered_rate": 1.0,
        "read_rate": 0.5,             # share of delivered messages that are read
        "sent_delay_ms": [10, 60],    # uniform [lo, hi] after the accept
        "delivered_delay_ms": [40, 250],
        "read_delay_ms": [200, 1500],
    },
    "conversation_in_status": True,   # Meta drops `conversation` from v24.0 webhooks
    "pricing_model": "PMP",           # per-message pricing (July 2025); "CBP" before
    # --- webhook delivery ---
    "webhook": {
        "batch_max": 100,             # statuses per POST per number (Meta allows 1,000)
        "flush_ms": 50,
        "duplicate_rate": 0.0,        # share of statuses delivered twice
        "reorder_rate": 0.0,          # share of messages whose status order is swapped
        "retry_base_ms": 250,
        "retry_max_ms": 30000,
        "max_attempts": 8,
        "timeout_s": 10.0,
        "concurrency": 8,
    },
    # --- inbound replies from recipients of template (or interactive) messages ---
    "inbound": {
        "reply_rate": 0.0,            # share of recipients who answer
        "delay_ms": [300, 1500],      # after the delivered status
        "kinds": {"text": 1.0, "button": 1.0, "interactive": 1.0},
        "texts": ["Yes", "Thanks!", "STOP", "What time do you open?"],
        "max_per_recipient": 1,       # auto replies per (number, recipient); avoids bot loops
    },
}

PHONE_ID_RE = re.compile(r"^\d{1,32}$")


@dataclass(slots=True)
class Number:
    phone_number_id: str
    waba_id: str
    display_phone_number: str
    token: str
    app_secret: str | None = None
    throughput_mps: float = DEFAULT_THROUGHPUT_MPS
    webhook_url: str | None = None
    verified_name: str | None = None       # default: "Sim Business " + last 4 digits
    quality_rating: str = "GREEN"

    def public(self) -> dict:
        return asdict(self)


def number_from(obj: dict, previous: Number | None = None) -> Number:
    """Validate a number object (upsert: missing keys keep ``previous`` values)."""
    if not isinstance(obj, dict):
        raise TypeError("a number must be a JSON object")
    base = previous.public() if previous else {}
    merged = {**base, **{k: v for k, v in obj.items() if k in Number.__slots__}}
    for key in ("phone_number_id", "waba_id", "display_phone_number", "token"):
        if not merged.get(key):
            raise ValueError(f"number needs {key}")
        merged[key] = str(merged[key])
    mps = merged.get("throughput_mps")
    merged["throughput_mps"] = float(DEFAULT_THROUGHPUT_MPS if mps is None else mps)
    if merged["throughput_mps"] <= 0:
        raise ValueError("throughput_mps must be positive")
    merged["verified_name"] = str(merged.get("verified_name")
                                  or f"Sim Business {merged['display_phone_number'][-4:]}")
    if merged.get("quality_rating") not in (None, "GREEN", "YELLOW", "RED", "UNKNOWN"):
        raise ValueError("quality_rating must be GREEN, YELLOW, RED or UNKNOWN")
    merged["quality_rating"] = merged.get("quality_rating") or "GREEN"
    return Number(**merged)


def deep_merge(base: dict, patch: dict) -> dict:
    """Return ``base`` updated with ``patch``, merging nested objects key by key."""
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def check_settings(settings: dict) -> None:
    """Reject settings the simulator cannot use, with a message naming the key."""
    def prob(path: str, value) -> None:
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{path} must be a probability in [0, 1]")

    for key, value in settings["error_rates"].items():
        if key not in DEFAULT_SETTINGS["error_rates"]:
            raise ValueError(f"error_rates.{key} is not a known fault")
        prob(f"error_rates.{key}", value)
    if sum(settings["error_rates"].values()) > 1.0:
        raise ValueError("error_rates must sum to at most 1")
    for key, value in settings["read_error_rates"].items():
        if key not in DEFAULT_SETTINGS["read_error_rates"]:
            raise ValueError(f"read_error_rates.{key} is not a known fault")
        prob(f"read_error_rates.{key}", value)
    if sum(settings["read_error_rates"].values()) > 1.0:
        raise ValueError("read_error_rates must sum to at most 1")
    for key in ("drop_connection_rate", "drop_after_accept_share", "held_for_quality_rate"):
        prob(key, settings[key])
    prob("statuses.delivered_rate", settings["statuses"]["delivered_rate"])
    prob("statuses.read_rate", settings["statuses"]["read_rate"])
    prob("webhook.duplicate_rate", settings["webhook"]["duplicate_rate"])
    prob("webhook.reorder_rate", settings["webhook"]["reorder_rate"])
    prob("inbound.reply_rate", settings["inbound"]["reply_rate"])
    if settings["failing_mode"] not in ("webhook", "sync"):
        raise ValueError('failing_mode must be "webhook" or "sync"')
    if not isinstance(settings["failing_recipients"], list):
        raise TypeError("failing_recipients must be a list of wa_ids")
    lat = settings["latency_ms"]
    if lat["median"] < 0 or (lat["median"] > 0 and lat["p99"] < lat["median"]):
        raise ValueError("latency_ms needs 0 <= median <= p99")
    for key in ("sent_delay_ms", "delivered_delay_ms", "read_delay_ms"):
        lo, hi = settings["statuses"][key]
        if not 0 <= lo <= hi:
            raise ValueError(f"statuses.{key} must be [lo, hi] with 0 <= lo <= hi")
    lo, hi = settings["inbound"]["delay_ms"]
    if not 0 <= lo <= hi:
        raise ValueError("inbound.delay_ms must be [lo, hi] with 0 <= lo <= hi")
    if not 1 <= int(settings["webhook"]["batch_max"]) <= 1000:
        raise ValueError("webhook.batch_max must be within 1..1000")
    if int(settings["webhook"]["concurrency"]) < 1:
        raise ValueError("webhook.concurrency must be at least 1")


def lognormal_params(median_ms: float, p99_ms: float) -> tuple[float, float]:
    """(mu, sigma) of a lognormal with the given median and 99th percentile."""
    mu = math.log(median_ms)
    sigma = (math.log(p99_ms) - mu) / 2.3263478740408408 if p99_ms > median_ms else 0.0
    return mu, sigma


@dataclass(slots=True)
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 8781
    webhook_url: str | None = None
    app_secret: str = DEFAULT_APP_SECRET
    numbers: list | None = None        # list of number dicts
    templates: object = None           # list (all WABAs) or {waba_id: list}
    settings: dict | None = None       # merged DEFAULT_SETTINGS


def load_config(path: str | None = None, *, host: str | None = None, port: int | None = None,
                webhook_url: str | None = None, app_secret: str | None = None,
                templates_file: str | None = None) -> SimConfig:
    """Build the config: defaults < config file < environment < explicit arguments."""
    raw: dict = {}
    if path:
        raw = orjson.loads(Path(path).read_bytes())
    cfg = SimConfig()
    cfg.host = host or os.environ.get("SIM_HOST") or raw.get("host") or cfg.host
    cfg.port = int(port or os.environ.get("SIM_PORT") or raw.get("port") or cfg.port)
    cfg.webhook_url = (webhook_url or os.environ.get("SIM_WEBHOOK_URL")
                       or raw.get("webhook_url") or None)
    cfg.app_secret = (app_secret or os.environ.get("SIM_APP_SECRET")
                      or raw.get("app_secret") or DEFAULT_APP_SECRET)
    cfg.numbers = raw.get("numbers") or [dict(DEFAULT_NUMBER)]
    tpl_file = templates_file or raw.get("templates_file")
    if tpl_file:
        cfg.templates = orjson.loads(Path(tpl_file).read_bytes())
    elif raw.get("templates") is not None:
        cfg.templates = raw["templates"]
    else:
        cfg.templates = orjson.loads(DEFAULT_TEMPLATES_FILE.read_bytes())
    cfg.settings = deep_merge(copy.deepcopy(DEFAULT_SETTINGS), raw.get("settings") or {})
    check_settings(cfg.settings)
    return cfg
