"""Configuration: every variable read once, in pgwa.config.Settings; a malformed one is
refused with its name, and the processes exit without starting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pgwa.config import ROOT, Settings

URL = "postgresql://example.invalid/pgwa"


def test_the_defaults_and_the_variables_that_change_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", URL)
    for name in ("PGWA_API_PORT", "PGWA_API_WORKERS", "PGWA_UVLOOP", "PGWA_METRICS_TOKEN", "PGWA_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    s = Settings.from_env()
    assert (s.api_host, s.api_port, s.api_workers, s.uvloop, s.log_level) == ("127.0.0.1", 8780, 1, True, "")
    monkeypatch.setenv("PGWA_API_PORT", "9000")
    monkeypatch.setenv("PGWA_UVLOOP", "0")
    monkeypatch.setenv("PGWA_METRICS_TOKEN", "scrape-secret")
    monkeypatch.setenv("PGWA_LLM_TIMEOUT_S", "2.5")
    s = Settings.from_env()
    assert (s.api_port, s.uvloop, s.metrics_token, s.llm_timeout_s) == (9000, False, "scrape-secret", 2.5)
    assert "scrape-secret" not in repr(s)


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("PGWA_API_PORT", "eighty", "is not an integer"),
    ("PGWA_CLAIM_BATCH", "0", "must be at least 1"),
    ("PGWA_LLM_TIMEOUT_S", "soon", "is not a number"),
    ("PGWA_UVLOOP", "maybe", "must be 1 or 0"),
])
def test_a_malformed_variable_is_refused_with_its_name_value_and_reason(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str, reason: str) -> None:
    monkeypatch.setenv("DATABASE_URL", URL)
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as caught:
        Settings.from_env()
    assert str(caught.value) == f"{name}={value!r} {reason}"


@pytest.mark.parametrize("module", ["worker", "api"])
def test_a_process_with_bad_configuration_exits_2_naming_the_variable(module: str) -> None:
    env = {**os.environ, "DATABASE_URL": URL, "PGWA_SEND_CONCURRENCY": "-3"}
    proc = subprocess.run([sys.executable, "-m", module], check=False, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"{module}: bad configuration: PGWA_SEND_CONCURRENCY='-3' must be at least 1"
