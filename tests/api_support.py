"""Helpers for the JSON API's tests: the app in-process (Starlette's TestClient, which runs
its lifespan) or as a real server (``python -m api`` on a free port), and a tenant with
an API key, built through the api functions as a client would."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row

from api.app import create_app
from pgwa.config import ROOT, Settings
from pgwa.local.stack import free_port, wait_until_serving
from pgwa.queries import queries
from tests import factories

with warnings.catch_warnings():
    # Starlette 1.x suggests httpx2 for its test client; httpx is what the project pins.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


@dataclass(frozen=True)
class Tenant:
    """A tenant with one number (and templates) and an API key."""

    acc: factories.Account
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def new_tenant(db: psycopg.Connection, **account: object) -> Tenant:
    acc = factories.account(db, **account)
    with db.cursor(row_factory=dict_row) as cur:
        key = cur.execute(queries["create_api_key"], {
            "tenant_id": acc.tenant_id, "name": "tests", "scope": "admin", "expires_at": None,
            "rate_limit_per_minute": None}).fetchone()["key"]
    return Tenant(acc, key)


@contextmanager
def api_client(db_url: str, **settings: object) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=db_url, **settings))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@contextmanager
def live_server(db_url: str, **env: str) -> Iterator[str]:
    """``python -m api`` on a free port against this database; yields its base URL."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "DATABASE_URL": db_url, "PGWA_API_PORT": str(port),
                                     "PGWA_LOG_LEVEL": "warning", **env})
        url = f"http://127.0.0.1:{port}"
        if not wait_until_serving(proc, f"{url}/healthz", 60):
            proc.kill()
            log.seek(0)
            raise RuntimeError(f"the API did not start:\n{log.read().decode()}")
        try:
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.seek(0)
            live_server.last_log = log.read().decode()  # type: ignore[attr-defined]
