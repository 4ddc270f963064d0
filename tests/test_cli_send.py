"""`pgwa send` and `pgwa message show`, run in-process against the test's database."""

from __future__ import annotations

import re

import psycopg
import pytest

from pgwa import cli
from tests import factories


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


def test_send_queues_a_template_once_per_key_and_message_show_prints_it(run, db: psycopg.Connection) -> None:
    acc = factories.account(db)
    args = ("send", "--tenant", str(acc.tenant_id), "--number", str(acc.number_id), "--to", "+1 415 555 0140",
            "--template", "order_update", "--param", "Ana", "--param", "A-1", "--param", "ACME",
            "--idempotency-key", "cli-1")
    code, out, err = run(*args)
    assert code == 0 and "Queued" in out and "14155550140" in out, err
    outbound_id = int(re.search(r"│\s*(\d+)\s*│\s*14155550140", out).group(1))
    code, out, _ = run(*args)
    assert code == 0 and "Already sent" in out and str(outbound_id) in out
    assert len(factories.queue(db, factories.reply_queue(db, acc.number_id))) == 1

    code, out, _ = run("message", "show", str(outbound_id), "--tenant", str(acc.tenant_id))
    assert code == 0 and "cli-1" in out and "api" in out and "queued" in out and "History" in out


def test_send_refuses_a_text_outside_the_window_and_another_tenants_message(run, db: psycopg.Connection) -> None:
    acc, other = factories.account(db), factories.account(db)
    code, _, err = run("send", "--tenant", str(acc.tenant_id), "--number", str(acc.number_id),
                       "--to", "+14155550141", "--text", "hello")
    assert code == 1 and "PW304" in err and "window" in err
    assert factories.queue(db, factories.reply_queue(db, acc.number_id)) == []
    code, out, _ = run("send", "--tenant", str(acc.tenant_id), "--number", str(acc.number_id),
                       "--to", "+14155550142", "--template", "order_update", "--param", "A", "--param", "B",
                       "--param", "C")
    outbound_id = int(re.search(r"│\s*(\d+)\s*│\s*14155550142", out).group(1))
    code, _, err = run("message", "show", str(outbound_id), "--tenant", str(other.tenant_id))
    assert code == 1 and "PW210" in err
    code, _, err = run("send", "--tenant", str(acc.tenant_id), "--number", str(acc.number_id), "--to", "+1",
                       "--template", "order_update", "--named", "oops")
    assert code == 2 and "NAME=VALUE" in err
