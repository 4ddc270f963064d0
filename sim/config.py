"""Simulator configuration: numbers, behaviour settings and how they are loaded.

One JSON config file (``--config``) may hold::

    {
      "webhook_url": "http://127.0.0.1:8000/webhooks/whatsapp",
      "app_secret": "sim-app-secret",
      "numbers": [{"phone_number_id": "100000000000001", "waba_id": "200000000000001",
                   "display_phone_number": "15550000001", "token": "sim-token",
                   "throughput_mps": 80, "app_secret": null, "webhook_url": null,
                   "verified_name": "Sim Business 0001", "quality_rating": "GREEN",
                   "business_id": null, "coexistence": false}],
      "templates": [...] | {"<waba_id>": [...]},   # default: sim/templates.json for every WABA
      "settings": {...}                             # any subset of DEFAULT_SETTINGS
    }

A number's ``token`` stands for a system user's token assigned to its WABA: a token
reads every number of every WABA it was declared with (``GET /{phone_number_id}``,
``GET /{waba_id}/phone_numbers``, ``GET /{waba_id}/message_templates``), and sends
from the numbers declared with it. ``business_id`` names its business portfolio (the
messaging limit is the portfolio's; default: one portfolio per WABA, under the WABA's
id); a ``coexistence`` number (also in the WhatsApp Business app) sends 20 msg/s
whatever its ``throughput_mps``.

By default the simulator behaves as Meta does (reference §2-§4; every setting is
commented in DEFAULT_SETTINGS):

* deterministic rules: throughput per number, counting sends and inbound messages
  (130429); the pair rate, a bucket of 45 refilled one per 6 s (131056); the portfolio's
  messaging limit over unique users in a moving 24 hours (TIER_UNLIMITED unless
  configured; beyond it 131049 as a failed status [unsure]); no MARKETING template to
  US numbers (accepted, then failed 131049); the 24-hour window (131047); webhook
  retries for 7 days, at once then up to an hour apart, on the simulator's clock;
* random behaviours: duplicated (1%) and reordered (5%) statuses, `read` without
  `delivered` (5% of reads), 2% of MARKETING sends failing later with 131049, inbound
  messages and statuses batched per POST (up to ``webhook.batch_max``, at most 1,000).

A test that needs a quiet world asks for it: ``"profile": "quiet"`` (in the settings,
``--profile quiet``, SIM_PROFILE=quiet, or ``POST /_sim/faults {"profile": "quiet"}``)
applies QUIET_SETTINGS: the random behaviours and injected faults off, the deterministic
rules kept (turn one off by name, e.g. ``"us_marketing_blocked": false``);
``"profile": "realistic"`` puts them back. Any Meta error code can be injected, at a
rate, synchronously or as a later failed status, for all sends or one number, one
recipient or one template category (``inject``, ``error_rates``).

Settings (behaviour and faults) can later be changed with ``POST /_sim/faults``,
which deep-merges a partial object into the current settings (a ``profile`` first), and
takes the one-shot faults ``rate_limit_burst``, ``token_expiry`` and ``account_limit``
(sim/app.py). ``POST /_sim/reset`` returns to the configured settings.
"""

from __future__ import annotations

import copy
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from .errors import TABLE
from .limits import TIERS

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
    # Which world: "realistic" (Meta's behaviour, the default) or "quiet" (QUIET_SETTINGS
    # applied: no random faults, duplicates or reordering; Meta's deterministic rules kept).
    "profile": "realistic",
    # --- synchronous faults on POST /messages (probabilities are per request) ---
    # Keys: "http_500", "http_503", or any Meta error code of sim/errors.py (as a string).
    # Meta publishes no rate for its transient errors: 0 by default.
    "error_rates": {"131000": 0.0, "131016": 0.0, "http_500": 0.0, "http_503": 0.0},
    # Any Meta error code, injected by rule (first rule that fires wins):
    #   {"code": 131048, "rate": 1.0, "mode": "sync" | "webhook",
    #    "phone_number_id"?: "...", "to"?: "<wa_id>" | ["<wa_id>", ...],
    #    "category"?: "MARKETING", "details"?: "...", "title"?: "...", "http_status"?: 400,
    #    "regain_minutes"?: 60}
    # sync: the send is answered with Meta's error envelope (4 and 80007 with the usage
    # header); webhook: accepted, then a failed status carrying the code.
    "inject": [],
    "drop_connection_rate": 0.0,      # close the socket without an answer
    "drop_after_accept_share": 0.5,   # share of drops that happen after the send was accepted
    "latency_ms": {"median": 0.0, "p99": 0.0},   # lognormal; 0 = answer at once
    # Template pacing (reference §3.4): this share of template sends is answered
    # held_for_quality_assessment; a held message is released (sent, delivered...)
    # held_release_s later, or dropped with a failed 132015 status when its template is
    # paused meanwhile (POST /_sim/template_status). Established templates: 0.
    "held_for_quality_rate": 0.0,
    "held_release_s": [60.0, 900.0],
    "failing_recipients": [],         # wa_ids that can never receive a message
    # Meta mostly reports 131026 asynchronously, as a failed status webhook after an
    # accepted send; "sync" answers it on the request instead. Default: webhook.
    "failing_mode": "webhook",
    # Per-user marketing cap (reference §3.4): this share of MARKETING template sends
    # outside the user's customer-service window is accepted and then fails with 131049;
    # and every MARKETING template to a US number (+1 outside Canada and the Caribbean,
    # sim/limits.py) does, since April 2025.
    "marketing_cap_share": 0.02,
    "us_marketing_blocked": True,
    # Pair rate (reference §3.2): per (number, user) one message every interval_s on
    # average, bursts up to `burst` borrowing from future quota (a token bucket); over it,
    # 131056. A campaign to distinct users never meets it.
    "pair_rate_limit": {"enabled": True, "interval_s": 6.0, "burst": 45},
    # Messaging limits (reference §3.3): a business portfolio (a number's business_id,
    # else its WABA) may reach only so many unique users business-initiated (templates to
    # users whose customer-service window is closed) in a moving 24 hours. The sim's
    # numbers stand for an established business: TIER_UNLIMITED unless `tiers` says
    # otherwise (Meta starts new portfolios at TIER_250). A new user beyond the limit:
    # Meta documents no code [unsure]; by default the send is accepted and fails with
    # 131049 (mode "webhook"); mode "sync" answers `code` (e.g. 131048) on the request.
    "messaging_limit": {"default_tier": "TIER_UNLIMITED", "tiers": {},
                        "mode": "webhook", "code": 131049},
    # --- faults on the Graph API's reads (phone number node, phone_numbers, templates) ---
    "read_error_rates": {"http_500": 0.0, "http_503": 0.0},
    # --- status webhooks for accepted sends ---
    "statuses": {
        "delivered_rate": 1.0,
        "read_rate": 0.5,             # share of delivered messages that are read
        # Meta skips `delivered` when delivery and read happen together (reference §4.3):
        # the share of read messages whose only status after sent is `read`.
        "read_without_delivered_rate": 0.05,
        "sent_delay_ms": [10, 60],    # uniform [lo, hi] after the accept
        "delivered_delay_ms": [40, 250],
        "read_delay_ms": [200, 1500],
    },
    "conversation_in_status": True,   # Meta drops `conversation` from v24.0 webhooks
    "pricing_model": "PMP",           # per-message pricing (July 2025); "CBP" before
    # --- webhook delivery (reference §4.3) ---
    "webhook": {
        "batch_max": 100,             # statuses (or inbound messages) per POST per number (Meta: up to 1,000)
        "flush_ms": 50,
        "duplicate_rate": 0.01,       # share of statuses delivered twice
        "reorder_rate": 0.05,         # share of adjacent statuses of a message swapped
        # Meta retries anything but a 200 "immediately, then with decreasing frequency"
        # for up to 7 days: retry_base_ms doubling per attempt up to retry_max_ms apart,
        # given up max_age_s after the first attempt (or after max_attempts, 0: no cap).
        # The delays run on the simulator's clock: a test advances it through hours.
        "retry_base_ms": 1000,
        "retry_max_ms": 3_600_000,
        "max_age_s": 7 * 24 * 3600,
        "max_attempts": 0,
        "timeout_s": 10.0,
        "concurrency": 8,
    },
    # --- media a send names by link (sim/media.py): the simulator never downloads a
    # link; one whose host is listed here (a name, or a ".suffix") or whose URL holds a
    # marker fails later with a failed status 131053, as Meta's fetcher reports it.
    "media": {"unreachable_hosts": [".invalid", "unreachable.example"],
              "bad_link_markers": ["/broken"]},
    # --- template review (POST /{waba_id}/message_templates): a new template is PENDING,
    # then after delay_s on the simulator's clock APPROVED, or REJECTED with reject_reason
    # when its name starts with reject_prefix (or its body has two variables side by side:
    # INVALID_FORMAT, as Meta rejects it); a message_template_status_update webhook says so.
    "template_review": {"delay_s": 5.0, "reject_prefix": "reject_",
                        "reject_reason": "INVALID_FORMAT"},
    # --- inbound replies from recipients of template (or interactive) messages ---
    "inbound": {
        "reply_rate": 0.0,            # share of recipients who answer
        "delay_ms": [300, 1500],      # after the delivered status
        "kinds": {"text": 1.0, "button": 1.0, "interactive": 1.0},
        "texts": ["Yes", "Thanks!", "STOP", "What time do you open?"],
        "max_per_recipient": 1,       # auto replies per (number, recipient); avoids bot loops
    },
}

# The quiet world a test asks for (``{"profile": "quiet"}``): Meta's random behaviours
# off; its deterministic rules (throughput, pair rate, tiers, the US marketing pause, the
# 24-hour window, webhook retries) kept unless the test turns them off too.
QUIET_SETTINGS: dict = {
    "error_rates": {key: 0.0 for key in DEFAULT_SETTINGS["error_rates"]},
    "inject": [],
    "drop_connection_rate": 0.0,
    "held_for_quality_rate": 0.0,
    "marketing_cap_share": 0.0,
    "statuses": {"read_without_delivered_rate": 0.0},
    "webhook": {"duplicate_rate": 0.0, "reorder_rate": 0.0},
}


def _defaults_of(patch: dict, defaults: dict) -> dict:
    """The DEFAULT_SETTINGS values of the keys ``patch`` names (the realistic profile
    restores exactly what the quiet one turned off)."""
    return {k: _defaults_of(v, defaults[k]) if isinstance(v, dict) and isinstance(defaults[k], dict)
            else copy.deepcopy(defaults[k]) for k, v in patch.items()}


PROFILES: dict[str, dict] = {
    "realistic": _defaults_of(QUIET_SETTINGS, DEFAULT_SETTINGS),
    "quiet": QUIET_SETTINGS,
}
COEXISTENCE_MPS = 20.0                # numbers shared with the WhatsApp Business app (§3.1)

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
    business_id: str | None = None         # its business portfolio; default: its WABA
    coexistence: bool = False              # also in the WhatsApp Business app: 20 msg/s

    def public(self) -> dict:
        return asdict(self)

    @property
    def business(self) -> str:
        return self.business_id or self.waba_id

    @property
    def limit_mps(self) -> float:
        """Messages per second Meta allows the number (sends and inbound together)."""
        return COEXISTENCE_MPS if self.coexistence else self.throughput_mps


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
    merged["business_id"] = str(merged["business_id"]) if merged.get("business_id") else None
    if not isinstance(merged.get("coexistence", False), bool):
        raise TypeError("coexistence must be true or false")
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


def apply_patch(settings: dict, patch: dict) -> dict:
    """``settings`` updated by a partial ``patch``: its ``profile`` first (the quiet or
    realistic values of the random behaviours), then the rest of it, deep-merged."""
    profile = patch.get("profile")
    if profile is None:
        return deep_merge(settings, patch)
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}")
    out = deep_merge(settings, PROFILES[profile])
    if profile == "quiet":      # every injected rate, not only the default keys
        out["error_rates"] = {key: 0.0 for key in out["error_rates"]}
    return deep_merge(out, patch)


INJECT_KEYS = {"code", "rate", "mode", "phone_number_id", "to", "category", "details", "title",
               "http_status", "regain_minutes"}


def check_settings(settings: dict) -> None:
    """Reject settings the simulator cannot use, with a message naming the key."""
    def prob(path: str, value) -> None:
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{path} must be a probability in [0, 1]")

    if settings["profile"] not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}")
    for key, value in settings["error_rates"].items():
        if key not in DEFAULT_SETTINGS["error_rates"] and not (key.isdigit() and int(key) in TABLE):
            raise ValueError(f"error_rates.{key} is not a known fault or Meta error code")
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
    wh = settings["webhook"]
    if not 0 < float(wh["retry_base_ms"]) <= float(wh["retry_max_ms"]):
        raise ValueError("webhook needs 0 < retry_base_ms <= retry_max_ms")
    if float(wh["max_age_s"]) <= 0 or int(wh["max_attempts"]) < 0:
        raise ValueError("webhook.max_age_s must be positive and max_attempts at least 0")
    prob("statuses.read_without_delivered_rate", settings["statuses"]["read_without_delivered_rate"])
    prob("marketing_cap_share", settings["marketing_cap_share"])
    if not isinstance(settings["us_marketing_blocked"], bool):
        raise TypeError("us_marketing_blocked must be true or false")
    lo, hi = settings["held_release_s"]
    if not 0 <= lo <= hi:
        raise ValueError("held_release_s must be [lo, hi] with 0 <= lo <= hi")
    pair = settings["pair_rate_limit"]
    if float(pair["interval_s"]) <= 0 or float(pair["burst"]) < 1:
        raise ValueError("pair_rate_limit needs interval_s > 0 and burst >= 1")
    limit = settings["messaging_limit"]
    if not isinstance(limit["tiers"], dict):
        raise TypeError('messaging_limit.tiers must map business ids to tiers')
    for where, tier in [("default_tier", limit["default_tier"]),
                        *((f"tiers.{b}", t) for b, t in limit["tiers"].items())]:
        if tier not in TIERS:
            raise ValueError(f"messaging_limit.{where} must be one of {list(TIERS)}")
    if limit["mode"] not in ("webhook", "sync"):
        raise ValueError('messaging_limit.mode must be "webhook" or "sync"')
    if not isinstance(limit["code"], int):
        raise TypeError("messaging_limit.code must be a Meta error code (an integer)")
    media = settings["media"]
    for key in ("unreachable_hosts", "bad_link_markers"):
        if not isinstance(media[key], list) or not all(isinstance(v, str) for v in media[key]):
            raise TypeError(f"media.{key} must be a list of strings")
    review = settings["template_review"]
    if not isinstance(review["delay_s"], (int, float)) or review["delay_s"] < 0:
        raise ValueError("template_review.delay_s must be a number of seconds, not negative")
    if not isinstance(review["reject_prefix"], str) or not isinstance(review["reject_reason"], str):
        raise TypeError("template_review.reject_prefix and reject_reason must be strings")
    if not isinstance(settings["inject"], list):
        raise TypeError("inject must be a list of rules")
    for i, rule in enumerate(settings["inject"]):
        if not isinstance(rule, dict) or not isinstance(rule.get("code"), int):
            raise TypeError(f"inject[{i}] needs an integer code")
        unknown = set(rule) - INJECT_KEYS
        if unknown:
            raise ValueError(f"inject[{i}]: unknown keys {sorted(unknown)}")
        prob(f"inject[{i}].rate", rule.get("rate", 1.0))
        if rule.get("mode", "sync") not in ("sync", "webhook"):
            raise ValueError(f'inject[{i}].mode must be "sync" or "webhook"')


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
                templates_file: str | None = None, profile: str | None = None) -> SimConfig:
    """Build the config: defaults < config file < environment < explicit arguments.
    ``profile`` (``--profile``, SIM_PROFILE) applies before the file's settings."""
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
    settings = dict(raw.get("settings") or {})
    profile = profile or os.environ.get("SIM_PROFILE")
    if profile and "profile" not in settings:
        settings = {"profile": profile, **settings}
    cfg.settings = apply_patch(copy.deepcopy(DEFAULT_SETTINGS), settings)
    check_settings(cfg.settings)
    return cfg
