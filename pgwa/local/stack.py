"""Run the whole system locally: the simulator, the webhook receiver and the workers.

`make demo`, the benchmarks and the end-to-end tests use this: every part is a real
process talking real HTTP and SQL, exactly as in production, with sim/ standing in for
graph.facebook.com (the API's Graph calls, number checks and template sync, included).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Self

import httpx

from pgwa import numbers
from pgwa.config import ROOT

APP_SECRET = "local-app-secret"
VERIFY_TOKEN = "local-verify-token"
GRAPH_VERSION = "v21.0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(proc: subprocess.Popen, url: str, timeout: float) -> bool:
    """Poll url until it answers 200; False when proc exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


class Stack:
    """Processes started together and stopped together (a context manager)."""

    def __init__(self, database_url: str, *, workers: int = 1, api: bool = True,
                 worker_env: dict[str, str] | None = None, sim_settings: dict | None = None) -> None:
        """``sim_settings``: the simulator's settings over its defaults (sim/config.py),
        which are Meta's behaviour; ``{"profile": "quiet"}`` asks for a quiet world."""
        self.database_url = database_url
        self.workers = workers
        self.with_api = api
        self.worker_env = worker_env or {}
        self.sim_settings = sim_settings
        self.sim_url = f"http://127.0.0.1:{free_port()}"
        self.api_url = f"http://127.0.0.1:{free_port()}"
        self.logs = Path(tempfile.mkdtemp(prefix="pgwa-stack-"))
        self.procs: dict[str, subprocess.Popen] = {}
        self._log_files: list = []
        self.http = httpx.Client(timeout=30)

    # -- processes ---------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        # Open for the process's lifetime; closed in stop().
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115
        self._log_files.append(log)
        self.procs[name] = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "DATABASE_URL": self.database_url, **env})

    def _wait_http(self, name: str, url: str, timeout: float = 30) -> None:
        if not wait_until_serving(self.procs[name], url, timeout):
            raise RuntimeError(f"{name} did not start answering {url} within {timeout:.0f} s; "
                               f"see {self.logs / (name + '.log')}")

    def start(self) -> Self:
        api_port = self.api_url.rsplit(":", 1)[1]
        if self.with_api:
            self._spawn("api", ["-m", "api"], {"PGWA_API_PORT": api_port, "WHATSAPP_APP_SECRET": APP_SECRET,
                                               "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
                                               "GRAPH_BASE_URL": self.sim_url})
            self._wait_http("api", f"{self.api_url}/healthz")
        config = []
        if self.sim_settings:
            path = self.logs / "sim.json"
            path.write_text(json.dumps({"settings": self.sim_settings}))
            config = ["--config", str(path)]
        self._spawn("sim", ["-m", "sim", "--port", self.sim_url.rsplit(":", 1)[1], *config,
                            "--webhook-url", f"{self.api_url}/webhooks/whatsapp", "--app-secret", APP_SECRET], {})
        self._wait_http("sim", f"{self.sim_url}/_sim/health")
        return self

    def start_workers(self) -> None:
        for i in range(self.workers):
            self._spawn(f"worker{i}", ["-m", "worker"], {"GRAPH_BASE_URL": self.sim_url,
                                                          "PGWA_WORKER_NAME": f"worker{i}", **self.worker_env})

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.procs[name].send_signal(sig)
        self.procs[name].wait(timeout=30)

    def stop(self) -> None:
        # Workers first, gracefully: they finish and report what they hold.
        order = sorted(self.procs, key=lambda n: (not n.startswith("worker"), n))
        for name in order:
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for log in self._log_files:
            log.close()
        self.http.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the simulator's control surface -------------------------------------------------
    def sim(self, method: str, path: str, payload: Any = None) -> Any:
        response = self.http.request(method, f"{self.sim_url}{path}", json=payload)
        response.raise_for_status()
        return response.json()

    def register_number(self, conn, tenant_id: int, phone_number_id: str, waba_id: str,
                        throughput_mps: int, token: str = "local-token") -> int:
        """The number in the simulator (as Meta would have it), then in pgwa the way a
        tenant registers it: checked against the simulator's Graph API first."""
        self.sim("POST", "/_sim/numbers", {"phone_number_id": phone_number_id, "waba_id": waba_id,
                                           "display_phone_number": phone_number_id[-11:],
                                           "token": token, "throughput_mps": throughput_mps})
        return numbers.register_number(conn, tenant_id, phone_number_id, waba_id, token,
                                       graph_base_url=self.sim_url, app_secret=APP_SECRET,
                                       throughput_mps=throughput_mps)
