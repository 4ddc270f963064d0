"""What the benchmarks share: their progress lines, the servers they start beside the
code under test (``Server``), and the state they build as the operator would, through the
named queries of pgwa/queries.sql (a tenant; a number registered without asking the
Graph API, which only an operator may do; a template).

The benchmarks run as scripts (``python bench/bench_api.py``), so this directory is first
on their path and they import this module as ``common``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import orjson
import psycopg

from pgwa.config import ROOT
from pgwa.local.stack import wait_until_serving
from pgwa.queries import queries


class Server:
    """A server a benchmark starts as a child process on ``port``: ready once
    http://127.0.0.1:<port><path> answers 200, until stop()."""

    def __init__(self, name: str, argv: list[str], port: int, *, env: dict[str, str] | None = None,
                 path: str = "/healthz", timeout: float = 30) -> None:
        self.port = port
        self.proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {})},
                                     stdout=subprocess.DEVNULL, stderr=sys.stderr)
        if not wait_until_serving(self.proc, f"http://127.0.0.1:{port}{path}", timeout):
            self.stop()
            raise SystemExit(f"{name}: the server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def logger(name: str) -> Callable[[str], None]:
    """A function that prints ``name: message`` lines on stderr, at once."""
    def log(msg: str) -> None:
        print(f"{name}: {msg}", file=sys.stderr, flush=True)
    return log


def create_tenant(conn: psycopg.Connection, name: str) -> int:
    return conn.execute(queries["create_tenant"], {"name": name}).fetchone()[0]


def register_number(conn: psycopg.Connection, tenant: int, phone_number_id: str, waba_id: str, *,
                    token: str = "token", app_secret: str | None = None, throughput_mps: int = 80,
                    display_phone_number: str | None = None) -> int:
    """A number registered as the operator registers one: without the Graph API's answer."""
    return conn.execute(queries["register_number"], {
        "tenant_id": tenant, "phone_number_id": phone_number_id, "waba_id": waba_id, "access_token": token,
        "app_secret": app_secret, "throughput_mps": throughput_mps,
        "display_phone_number": display_phone_number, "verified": None}).fetchone()[0]


def upsert_template(conn: psycopg.Connection, tenant: int, waba_id: str, name: str, *,
                    components: list[dict] | None = None, category: str | None = None) -> int:
    """An approved en_US template."""
    return conn.execute(queries["upsert_template"], {
        "tenant_id": tenant, "waba_id": waba_id, "name": name, "language": "en_US",
        "components": orjson.dumps(components or []).decode(), "status": "APPROVED", "category": category,
        "meta_template_id": None}).fetchone()[0]
