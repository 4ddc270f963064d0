"""Configuration, read from the environment once. Secrets are never printed."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent


def _local_database_url() -> str:
    out = subprocess.run(
        [str(ROOT / "scripts" / "db.sh"), "url"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def database_url() -> str:
    """DATABASE_URL, or the project-local cluster's URL (scripts/db.sh url)."""
    return os.environ.get("DATABASE_URL") or _local_database_url()


def _csv(name: str) -> tuple[str, ...]:
    return tuple(s for s in os.environ.get(name, "").split(",") if s)


def _number(name: str, default: float, convert: type = int, minimum: float = 1) -> float:
    """A numeric variable, or a ValueError that names it, its value and the reason."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = convert(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not {'an integer' if convert is int else 'a number'}") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r} must be 1 or 0")


@dataclass(frozen=True)
class Settings:
    database_url: str
    graph_base_url: str = "https://graph.facebook.com"
    verify_token: str = field(default="", repr=False)
    app_secrets: tuple[str, ...] = field(default=(), repr=False)
    worker_name: str = "worker"
    claim_batch: int = 500
    send_concurrency: int = 256
    # LLM replies (worker/llm.py): an OpenAI-compatible chat-completions endpoint.
    llm_base_url: str = ""
    llm_model: str = "gpt-4o-mini"
    llm_api_key: str = field(default="", repr=False)
    llm_timeout_s: float = 20.0
    llm_concurrency: int = 16
    llm_fallback_text: str = "Thanks for your message! A member of our team will get back to you shortly."
    # python -m api
    api_host: str = "127.0.0.1"
    api_port: int = 8780
    api_workers: int = 1
    metrics_token: str = field(default="", repr=False)     # /metrics wants it as a Bearer token
    # Both processes: "" is each one's own default (worker INFO, api warning).
    log_level: str = ""
    uvloop: bool = True
    # Contact CSV uploads (api/upload.py): the body is spooled within the deadline, under
    # these caps, before a database connection is taken.
    upload_max_bytes: int = 100 << 20
    upload_max_rows: int = 1_000_000
    upload_max_field: int = 1_000           # characters in one CSV field
    upload_deadline_s: float = 300.0        # for the whole body to arrive
    # Session limits set on every connection the API and the workers open.
    statement_timeout_ms: int = 30_000
    idle_tx_timeout_ms: int = 60_000        # the API's pooled connections
    # The webhook loop's statement_timeout: a batch that takes longer is retried payload
    # by payload, so one slow payload delays the others by about this much at most.
    webhook_timeout_ms: int = 700
    webhook_single_timeout_ms: int = 300    # one payload retried alone after a failed batch
    webhook_loops: int = 2                  # concurrent webhook-processing loops per worker
    # Media (pgwa/media.py): where stored files live (a directory, or a store plugged in as
    # "package.module:factory"), and how many inbound files a worker downloads at once.
    media_dir: str = str(ROOT / ".media")
    media_store: str = ""
    media_concurrency: int = 4

    def session_url(self, *, idle_tx: bool = False, statement_timeout_ms: int | None = None) -> str:
        """database_url with this process's session limits as libpq options: the
        statement_timeout (``statement_timeout_ms``, else PGWA_STATEMENT_TIMEOUT_MS; and,
        for the API's pool, idle_in_transaction_session_timeout), kept after any options
        the URL already carries. Set per connection because ``ALTER ROLE ... SET`` binds
        only the login role, never the members of a group."""
        gucs = {"statement_timeout": self.statement_timeout_ms if statement_timeout_ms is None
                else statement_timeout_ms}
        if idle_tx:
            gucs["idle_in_transaction_session_timeout"] = self.idle_tx_timeout_ms
        given = conninfo_to_dict(self.database_url).get("options") or ""
        options = " ".join([given, *(f"-c {name}={value}" for name, value in gucs.items())]).strip()
        return make_conninfo(self.database_url, options=options)

    @classmethod
    def from_env(cls) -> Settings:
        """Raises ValueError naming the variable when one is malformed."""
        return cls(
            database_url=database_url(),
            graph_base_url=os.environ.get("GRAPH_BASE_URL", cls.graph_base_url).rstrip("/"),
            verify_token=os.environ.get("WHATSAPP_VERIFY_TOKEN", ""),
            app_secrets=_csv("WHATSAPP_APP_SECRET"),
            # Unique per process (one worker at a time sends a number's messages): two
            # containers may share a host name (host networking) and a pid (1).
            worker_name=os.environ.get("PGWA_WORKER_NAME", "").strip()
            or f"worker-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}",
            claim_batch=_number("PGWA_CLAIM_BATCH", cls.claim_batch),
            send_concurrency=_number("PGWA_SEND_CONCURRENCY", cls.send_concurrency),
            llm_base_url=os.environ.get("PGWA_LLM_BASE_URL", cls.llm_base_url).rstrip("/"),
            llm_model=os.environ.get("PGWA_LLM_MODEL", cls.llm_model),
            llm_api_key=os.environ.get("PGWA_LLM_API_KEY", ""),
            llm_timeout_s=_number("PGWA_LLM_TIMEOUT_S", cls.llm_timeout_s, float, 0.1),
            llm_concurrency=_number("PGWA_LLM_CONCURRENCY", cls.llm_concurrency),
            llm_fallback_text=os.environ.get("PGWA_LLM_FALLBACK_TEXT", cls.llm_fallback_text),
            api_host=os.environ.get("PGWA_API_HOST") or cls.api_host,
            api_port=_number("PGWA_API_PORT", cls.api_port),
            api_workers=_number("PGWA_API_WORKERS", cls.api_workers),
            metrics_token=os.environ.get("PGWA_METRICS_TOKEN", ""),
            log_level=os.environ.get("PGWA_LOG_LEVEL", ""),
            uvloop=_flag("PGWA_UVLOOP", cls.uvloop),
            upload_max_bytes=_number("PGWA_UPLOAD_MAX_BYTES", cls.upload_max_bytes),
            upload_max_rows=_number("PGWA_UPLOAD_MAX_ROWS", cls.upload_max_rows),
            upload_max_field=_number("PGWA_UPLOAD_MAX_FIELD", cls.upload_max_field),
            upload_deadline_s=_number("PGWA_UPLOAD_DEADLINE_S", cls.upload_deadline_s, float, 0.1),
            statement_timeout_ms=_number("PGWA_STATEMENT_TIMEOUT_MS", cls.statement_timeout_ms, minimum=0),
            idle_tx_timeout_ms=_number("PGWA_IDLE_TX_TIMEOUT_MS", cls.idle_tx_timeout_ms, minimum=0),
            webhook_timeout_ms=_number("PGWA_WEBHOOK_TIMEOUT_MS", cls.webhook_timeout_ms, minimum=0),
            webhook_loops=_number("PGWA_WEBHOOK_LOOPS", cls.webhook_loops),
            media_dir=os.environ.get("PGWA_MEDIA_DIR") or cls.media_dir,
            media_store=os.environ.get("PGWA_MEDIA_STORE", ""),
            media_concurrency=_number("PGWA_MEDIA_CONCURRENCY", cls.media_concurrency),
            webhook_single_timeout_ms=_number("PGWA_WEBHOOK_SINGLE_TIMEOUT_MS", cls.webhook_single_timeout_ms,
                                              minimum=0),
        )


def settings_or_exit(prog: str) -> Settings:
    """Settings.from_env(), or exit 2 with one line naming what is malformed."""
    try:
        return Settings.from_env()
    except ValueError as exc:
        print(f"{prog}: bad configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
