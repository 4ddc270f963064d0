"""Fixtures of the JSON API's tests (a pytest plugin: ``pytest_plugins = ["tests.api_fixtures"]``)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.api_support import Tenant, TestClient, api_client, new_tenant


@pytest.fixture
def tenant(db: psycopg.Connection) -> Tenant:
    return new_tenant(db)


@pytest.fixture
def client(db_url: str, tenant: Tenant) -> Iterator[TestClient]:
    """The app in-process, authenticated as ``tenant``."""
    with api_client(db_url) as c:
        c.headers.update(tenant.headers)
        yield c
