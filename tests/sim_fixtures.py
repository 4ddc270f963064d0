"""Pytest fixtures for tests that talk to the simulator over real HTTP.

* ``sim_hooks`` — a capturing webhook receiver (stdlib HTTP server in a thread)
  that records every POST (raw body, headers) and can be told to fail.
* ``sim`` — a simulator subprocess (one per test session, reset before each
  test) on a free port, posting webhooks to ``sim_hooks``; the fixture value is
  a small client with helpers for sends and control calls. It behaves as Meta
  does by default (sim/config.py): duplicated and reordered statuses, `read`
  without `delivered`, the 131049 marketing share, the pair rate, tiers, webhook
  retries over hours; only its delays are shortened (FAST_SETTINGS).
* ``quiet_world`` — a test that needs a quiet world asks for it
  (``@pytest.mark.usefixtures("quiet_world")``, or ``pytestmark`` for a module):
  the simulator's quiet profile, Meta's random behaviours off, its deterministic
  rules kept.

No PostgreSQL is needed.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from pgwa.local.stack import free_port, wait_until_serving

ROOT = Path(__file__).resolve().parents[1]
APP_SECRET = "test-app-secret"
OTHER_SECRET = "other-app-secret"
VERSION = "v21.0"

# Three numbers: two share a WABA; the third has its own app secret and WABA.
NUMBERS = [
    {"phone_number_id": "111000111", "waba_id": "900000001", "display_phone_number": "15550001111",
     "token": "tok-one", "throughput_mps": 80},
    {"phone_number_id": "222000222", "waba_id": "900000001", "display_phone_number": "15550002222",
     "token": "tok-two", "throughput_mps": 20},
    {"phone_number_id": "333000333", "waba_id": "900000003", "display_phone_number": "15550003333",
     "token": "tok-three", "app_secret": OTHER_SECRET},
]
# Shorter delays only: the behaviours stay Meta's (retries back off over hours on the
# simulator's clock, which the tests that need them move forward).
FAST_SETTINGS = {
    "statuses": {"sent_delay_ms": [1, 10], "delivered_delay_ms": [5, 20],
                 "read_delay_ms": [5, 20], "read_rate": 0.0},
    "webhook": {"flush_ms": 20, "timeout_s": 2},
    "inbound": {"delay_ms": [5, 20]},
}


class WebhookReceiver:
    """Records webhook POSTs; ``fail_next(n)`` answers the next n with ``status``."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.lock = threading.Lock()
        self.failures = 0
        self.fail_status = 500
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    failing = receiver.failures > 0
                    if failing:
                        receiver.failures -= 1
                    else:
                        receiver.posts.append({"headers": dict(self.headers), "body": raw,
                                               "json": json.loads(raw)})
                status = receiver.fail_status if failing else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def clear(self) -> None:
        with self.lock:
            self.posts.clear()
            self.failures = 0
            self.fail_status = 500

    def fail_next(self, n: int, status: int = 500) -> None:
        with self.lock:
            self.failures = n
            self.fail_status = status

    def changes(self, field: str = "messages") -> list[dict]:
        """Every ``changes[].value`` of the given field, in arrival order."""
        with self.lock:
            posts = list(self.posts)
        return [c["value"] for p in posts for e in p["json"]["entry"] for c in e["changes"]
                if c["field"] == field]

    def statuses(self) -> list[dict]:
        return [s for v in self.changes() for s in v.get("statuses", [])]

    def messages(self) -> list[dict]:
        return [m for v in self.changes() for m in v.get("messages", [])]

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "webhooks"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate(self)
            if result:
                return result
            time.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}; got {len(self.posts)} posts")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SimClient:
    """An httpx client for one running simulator, with Graph and control helpers."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def send(self, body: dict, pnid: str = NUMBERS[0]["phone_number_id"],
             token: str | None = None) -> httpx.Response:
        token = token or next(n["token"] for n in NUMBERS if n["phone_number_id"] == pnid)
        return self.http.post(f"/{VERSION}/{pnid}/messages", json=body,
                              headers={"Authorization": f"Bearer {token}"})

    def control(self, name: str, body: dict | list | None = None) -> dict:
        resp = self.http.post(f"/_sim/{name}", json=body or {})
        assert resp.status_code == 200, resp.text
        return resp.json()

    def faults(self, **patch) -> dict:
        return self.control("faults", patch)

    def profile(self, name: str) -> dict:
        """``quiet``: Meta's random behaviours off (sim/config.py QUIET_SETTINGS);
        ``realistic``: back on. The reset before each test gives the realistic world."""
        return self.control("faults", {"profile": name})

    def stats(self) -> dict:
        return self.http.get("/_sim/stats").json()

    def clock(self, *, frozen: bool | None = None, advance_s: float = 0.0) -> dict:
        """Freeze, thaw or move the simulator's clock (sim/clock.py); the reset before
        each test puts it back on real time."""
        body: dict = {"advance_s": advance_s}
        if frozen is not None:
            body["frozen"] = frozen
        return self.control("clock", body)

    def quiet(self, timeout: float = 30.0) -> dict:
        """Wait until every webhook scheduled so far was answered (or given up on):
        nothing more will be posted until something new happens. Returns the stats."""
        return wait_for(lambda: (s := self.stats())["webhooks"]["pending"] == 0 and s,
                        timeout, "the simulator's webhooks to be delivered")

    def ledger(self, since: int = 0) -> list[dict]:
        return self.http.get("/_sim/ledger", params={"since": since}).json()["entries"]


# The webhook loops' statement timeouts in end-to-end tests. Production's (700 / 300 ms,
# pgwa/config.py) bound a batch on a healthy server; a CI machine running two suites can
# starve a backend for longer, and a payload that times out on every try is dead-lettered
# after webhook_max_attempts, which would fail a test about something else. The tests of
# the timeouts themselves (tests/test_webhooks_worker.py, test_security_webhooks.py) set
# their own.
PATIENT_WEBHOOKS = {"webhook_timeout_ms": 10_000, "webhook_single_timeout_ms": 5_000}
# The same for worker processes (pgwa.local.stack.Stack's worker_env).
PATIENT_WEBHOOKS_ENV = {"PGWA_WEBHOOK_TIMEOUT_MS": "10000", "PGWA_WEBHOOK_SINGLE_TIMEOUT_MS": "5000"}


def template_body(to: str = "15557770001", name: str = "order_update", lang: str = "en_US",
                  params: list[str] | None = ("Ana", "A-1"), biz: str | None = None) -> dict:
    body: dict = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
                  "type": "template",
                  "template": {"name": name, "language": {"code": lang}}}
    if params:
        body["template"]["components"] = [
            {"type": "body", "parameters": [{"type": "text", "text": p} for p in params]}]
    if biz is not None:
        body["biz_opaque_callback_data"] = biz
    return body


def text_body(to: str = "15557770001", text: str = "hello") -> dict:
    return {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": text}}


def wait_for(predicate, timeout: float, what: str, *, tolerate: tuple[type[BaseException], ...] = ()):
    """Poll ``predicate`` until it returns something true (returned); fail after ``timeout``.
    Exceptions in ``tolerate`` count as not yet (a database restarting, say)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except tolerate:
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="session")
def sim_receiver():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def sim_process(sim_receiver, tmp_path_factory):
    port = free_port()
    config = {"numbers": NUMBERS, "settings": FAST_SETTINGS}
    path = tmp_path_factory.mktemp("sim") / "sim.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sim", "--host", "127.0.0.1", "--port", str(port),
             "--config", str(path), "--webhook-url", sim_receiver.url,
             "--app-secret", APP_SECRET],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        if not wait_until_serving(proc, f"{url}/_sim/health", 60):
            proc.kill()
            log.seek(0)
            raise RuntimeError(f"simulator did not start:\n{log.read().decode()}")
        yield url
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def sim(sim_process, sim_receiver):
    """A freshly reset simulator (ledger, faults, windows, templates) and an empty receiver."""
    client = SimClient(sim_process)
    client.control("reset", {"templates": True, "numbers": True})
    sim_receiver.clear()
    yield client
    client.http.close()


@pytest.fixture
def quiet_world(sim):
    """The simulator without Meta's random behaviours, for a test whose assertions need
    exact counts: no duplicated or reordered statuses, every read also delivered, no
    131049 share, no injected errors. Deterministic rules stay (the US marketing pause,
    throughput, pair rate, tiers, the 24-hour window)."""
    sim.profile("quiet")
    return sim
