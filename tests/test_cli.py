"""The `pgwa` operator CLI, run in-process against the test's database."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from pgwa import cli
from tests import factories
from tests.test_webhooks_payloads import status, statuses_payload


@pytest.fixture
def run(db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Run ``pgwa ARGS``; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("PGWA_TENANT", raising=False)

    def _run(*args: str) -> tuple[int, str, str]:
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return _run


def write_csv(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "contacts.csv"
    path.write_text(factories.csv_text(rows).getvalue())
    return path


def test_db_url_prints_the_database_url_and_nothing_else(run, db_url: str) -> None:
    assert run("db", "url") == (0, db_url + "\n", "")


def test_tenant_and_key_create_print_what_a_script_needs(run, db: psycopg.Connection) -> None:
    code, out, _ = run("tenant", "create", "Acme")
    assert code == 0 and re.search(r"tenant (\d+) created", out)
    code, out, err = run("key", "create", "--tenant", "Acme", "--name", "dashboard")
    key = out.strip().splitlines()[-1]
    assert code == 0 and key.startswith("pgwa_") and "shown once" in err
    tenant_id = db.execute("SELECT tenant_id FROM core.tenants WHERE name = 'Acme'").fetchone()[0]
    assert db.execute("SELECT api.authenticate(%s)", (hashlib.sha256(key.encode()).digest(),)).fetchone()[0] == tenant_id
    code, out, _ = run("key", "list", "--tenant", str(tenant_id))
    assert code == 0 and "dashboard" in out and key not in out
    assert run("tenant", "create", "Acme")[0] == 1      # PW302: taken
    code, _, err = run("key", "create", "--tenant", "Nobody")
    assert code == 2 and "no tenant named" in err


def test_campaign_create_uploads_a_csv_and_the_tables_show_it(run, db: psycopg.Connection, tmp_path: Path) -> None:
    acc = factories.account(db)
    path = write_csv(tmp_path, [*factories.contacts(30), {"phone": "bad", "name": "x", "order_no": "1"}])
    code, out, err = run("campaign", "create", "--csv", str(path), "--tenant", str(acc.tenant_id),
                         "--number", acc.phone_number_id, "--template", "order_update:en_US:name,order_no,=ACME",
                         "--template", "promo:en_US:name", "--on-invalid", "skip", "--name", "Spring", "--quiet")
    assert code == 0, err
    campaign_id = int(out.strip().splitlines()[-1])
    assert "30 messages queued" in out and "1 invalid" in out and "row 32" in out
    campaign = factories.campaign(db, campaign_id)
    assert (campaign["name"], campaign["status"], campaign["total"]) == ("Spring", "draft", 30)
    first = factories.queue(db, factories.campaign_queue(db, campaign_id))[0]["message"]
    # The row's column values; the constant ACME is in the variant's render skeleton.
    assert first["p"] == ["Name 0", "A-0"]

    assert run("campaign", "start", str(campaign_id), "--tenant", str(acc.tenant_id))[1].strip() == \
        f"campaign {campaign_id}: running"
    factories.report(db, [factories.ok(r) for r in factories.claim_all(db)[:10]])
    code, out, _ = run("campaigns", "--tenant", str(acc.tenant_id))
    assert code == 0 and "Spring" in out and "running" in out
    row = next(line for line in out.splitlines() if "Spring" in line)
    assert re.search(r"\b30\b.*\b20\b.*\b10\b", row), row          # total, queued, sent
    code, out, _ = run("stats", str(campaign_id), "--tenant", str(acc.tenant_id))
    assert code == 0
    assert re.search(r"sent\s*│\s*10\b", out) and "order_update (en_US)" in out and "promo (en_US)" in out
    code, out, _ = run("reconcile", str(campaign_id), "--tenant", str(acc.tenant_id))
    assert code == 0 and "0 counter(s) drifting" in out


def test_campaign_create_refuses_bad_input_with_the_sql_error(run, db: psycopg.Connection, tmp_path: Path) -> None:
    acc = factories.account(db)
    path = write_csv(tmp_path, factories.contacts(3))
    code, _, err = run("campaign", "create", "--csv", str(path), "--tenant", str(acc.tenant_id),
                       "--number", str(acc.number_id), "--template", "order_update:en_US:name", "--quiet")
    assert code == 1 and "PW102" in err and "hint:" in err
    code, _, err = run("campaign", "create", "--csv", str(path), "--tenant", str(acc.tenant_id),
                       "--number", "999", "--template", "x", "--quiet")
    assert code == 2
    assert db.execute("SELECT count(*) FROM core.campaigns").fetchone()[0] == 0


def test_watch_shows_progress_and_returns_once_the_campaign_is_finished(run, db: psycopg.Connection) -> None:
    acc = factories.account(db)
    campaign_id = factories.running_campaign(db, acc, 4)
    factories.report(db, [factories.ok(r) for r in factories.claim_all(db)])
    assert factories.campaign(db, campaign_id)["status"] == "completed"
    code, out, _ = run("campaign", "watch", str(campaign_id), "--tenant", str(acc.tenant_id), "--interval", "0.05")
    assert code == 0 and "completed" in out and "100.0%" in out and "4 / 4" in out


def test_template_specs_map_columns_and_constants() -> None:
    assert cli.parse_template("order_update:en_US:name,order_no,=ACME Ltd:") == {
        "name": "order_update", "language": "en_US",
        "params": [{"column": "name"}, {"column": "order_no"}, {"value": "ACME Ltd:"}]}
    assert cli.parse_template("confirmed:en_US") == {"name": "confirmed", "language": "en_US", "params": []}
    with pytest.raises(cli.CliError):
        cli.parse_template("nolanguage")


def test_portfolio_set_tier_and_list_show_the_messaging_limit(run, db: psycopg.Connection) -> None:
    acc = factories.account(db)
    tenant = str(acc.tenant_id)
    code, out, err = run("portfolio", "set-tier", acc.phone_number_id, "TIER_250", "--tenant", tenant,
                         "--business-id", "5566778899")
    assert code == 0, err
    assert "business 5566778899" in out and "TIER_250" in out and "250 new users per 24 hours" in out
    code, out, _ = run("portfolio", "list", "--tenant", tenant)
    row = next(line for line in out.splitlines() if "5566778899" in line)
    assert code == 0 and re.search(rf"TIER_250\s*│\s*250\s*│\s*0\s*│\s*│\s*{acc.number_id}\b", row), row
    code, _, err = run("portfolio", "set-tier", str(acc.number_id), "TIER_5", "--tenant", tenant)
    assert code == 1 and "PW100" in err and "tier" in err and "hint:" in err
    code, _, err = run("portfolio", "set-tier", "999", "TIER_50", "--tenant", tenant)
    assert code == 2 and "no number" in err


def test_a_campaign_over_the_messaging_limit_warns_at_creation_and_its_stats_say_it_waits(
        run, db: psycopg.Connection, tmp_path: Path) -> None:
    acc = factories.account(db)
    tenant = str(acc.tenant_id)
    assert run("portfolio", "set-tier", str(acc.number_id), "TIER_50", "--tenant", tenant)[0] == 0
    path = write_csv(tmp_path, factories.contacts(80))
    code, out, err = run("campaign", "create", "--csv", str(path), "--tenant", tenant, "--number",
                         str(acc.number_id), "--template", "order_update:en_US:name,order_no,=ACME", "--start",
                         "--quiet")
    assert code == 0, err
    assert "warning: needs 2 days at tier TIER_50 (50 new users per 24 hours)" in out
    campaign_id = int(out.strip().splitlines()[-1])
    t = factories.clock(db)
    sent = factories.claim_all(db, now=t)
    assert len(sent) == 50
    factories.report(db, [factories.ok(r) for r in sent], now=t)
    # Meta accepted one, then withheld it under its per-user marketing cap: tried again a day later.
    db.execute("SELECT api.ingest_webhooks(%s::jsonb[])", ([Jsonb(statuses_payload(
        status(f"wamid.{sent[0]['outbound_id']}", "failed", error_code=131049),
        phone_number_id=acc.phone_number_id))],))
    while db.execute("SELECT payloads FROM api.process_webhooks(100)").fetchone()[0]:
        pass
    until = db.execute("SELECT budget_wait_until FROM api.portfolios(%s)", (acc.tenant_id,)).fetchone()[0]
    code, out, _ = run("stats", str(campaign_id), "--tenant", tenant)
    assert code == 0
    assert f"waiting for messaging limit until {until:%Y-%m-%d %H:%M}" in out
    assert "needs 1 day at the messaging limit (50 new users per 24 hours)" in out
    assert "retrying 1: withheld by Meta's per-user marketing cap" in out
    code, out, _ = run("campaign", "watch", str(campaign_id), "--tenant", tenant, "--once")
    assert code == 0 and "waiting for messaging limit until" in out
    code, out, _ = run("portfolio", "list", "--tenant", tenant)
    assert re.search(rf"TIER_50\s*│\s*50\s*│\s*50\s*│\s*{until:%Y-%m-%d %H:%M}", out), out


def test_a_campaign_within_a_day_of_its_limit_creates_without_a_warning(run, db: psycopg.Connection,
                                                                        tmp_path: Path) -> None:
    acc = factories.account(db)
    assert run("portfolio", "set-tier", str(acc.number_id), "TIER_50", "--tenant", str(acc.tenant_id))[0] == 0
    code, out, err = run("campaign", "create", "--csv", str(write_csv(tmp_path, factories.contacts(50))),
                         "--tenant", str(acc.tenant_id), "--number", str(acc.number_id),
                         "--template", "promo:en_US:name", "--quiet")
    assert code == 0, err
    assert "50 messages queued" in out and "warning" not in out
    code, out, _ = run("stats", out.strip().splitlines()[-1], "--tenant", str(acc.tenant_id))
    assert code == 0 and "waiting for" not in out and "retrying" not in out
