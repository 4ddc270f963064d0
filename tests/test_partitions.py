"""Months of data: core.status_events partitioned by day with pg_partman (0114), partitions
made ahead by core.run_partition_maintenance, retention by dropping whole partitions
(core.run_retention), and the hot insert never failing on a time outside them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgwa.migrate import MIGRATIONS, apply_migrations, ensure_extensions
from tests import factories as f
from tests.test_webhooks_payloads import status, statuses_payload

PARTITIONS = """SELECT p.partition_tablename FROM partman.show_partitions('core.status_events', p_include_default => true) p"""


def partitions(db: psycopg.Connection) -> set[str]:
    return {r[0] for r in db.execute(PARTITIONS)}


def store(db: psycopg.Connection, wamid: str, status_: str, at: str) -> None:
    db.execute("INSERT INTO core.status_events (wamid, status, number_id, occurred_at) VALUES (%s, %s, 1, %s)",
               (wamid, status_, at))


def where(db: psycopg.Connection, wamid: str) -> str:
    return db.execute("SELECT tableoid::regclass::text FROM core.status_events WHERE wamid = %s", (wamid,)).fetchone()[0]


def test_status_events_are_partitioned_by_day_with_a_week_made_ahead(db: psycopg.Connection) -> None:
    assert db.execute("SELECT partstrat FROM pg_partitioned_table WHERE partrelid = 'core.status_events'::regclass"
                      ).fetchone() == ("r",)
    names = partitions(db)
    assert "status_events_default" in names
    ahead = db.execute("""SELECT count(*) FROM partman.show_partitions('core.status_events') p,
                          LATERAL partman.show_partition_info('core.' || p.partition_tablename,
                                                              p_parent_table => 'core.status_events') i
                          WHERE i.child_start_time > now()""").fetchone()[0]
    assert ahead >= 7
    assert db.execute("SELECT job_name FROM core.cron_jobs WHERE command LIKE '%%run_partition_maintenance%%'"
                      ).fetchone() == ("pgwa_partition_maintenance",)


def test_a_redelivered_status_is_stored_once_and_lands_in_its_day(db: psycopg.Connection) -> None:
    acc = f.account(db)
    f.running_campaign(db, acc, 1)
    req = f.claim_all(db)[0]
    f.report(db, [f.ok(req, "wamid.part.1")])
    payload = statuses_payload(status("wamid.part.1", "delivered"), phone_number_id=acc.phone_number_id)
    for _ in range(2):
        db.execute("SELECT api.ingest_webhook(%s::jsonb)", (orjson.dumps(payload).decode(),))
        db.execute("SELECT api.process_webhooks(10)")
    assert db.execute("SELECT count(*), min(tableoid::regclass::text) FROM core.status_events WHERE wamid = %s",
                      ("wamid.part.1",)).fetchone() == (1, "core.status_events_p" + db.execute(
                          "SELECT to_char(now(), 'YYYY_MM_DD')").fetchone()[0])


def test_a_time_outside_the_partitions_is_stored_and_moved_by_maintenance(db: psycopg.Connection) -> None:
    store(db, "wamid.far", "sent", "2099-01-01")
    store(db, "wamid.soon", "sent", db.execute("SELECT (now() + interval '20 days')::text").fetchone()[0])
    assert where(db, "wamid.soon") == "core.status_events_default"
    db.execute("SELECT core.run_partition_maintenance()")
    # Moved out of the default partition into partitions of their own, so that the
    # partitions made ahead as the days pass are never blocked by them.
    assert where(db, "wamid.soon").startswith("core.status_events_p")
    assert where(db, "wamid.far") == "core.status_events_p2099_01_01"
    assert db.execute("SELECT count(*) FROM core.status_events_default").fetchone() == (0,)
    # The hot path's insert still goes through afterwards.
    store(db, "wamid.after", "sent", db.execute("SELECT now()::text").fetchone()[0])
    assert where(db, "wamid.after").startswith("core.status_events_p")


def test_retention_drops_whole_partitions_and_empties_the_default_of_old_rows(db: psycopg.Connection) -> None:
    db.execute("""SELECT partman.create_partition_time('core.status_events',
                      ARRAY[date_trunc('day', now()) - interval '40 days', date_trunc('day', now()) - interval '10 days'],
                      p_analyze => false)""")
    old_day = db.execute("SELECT to_char(now() - interval '40 days', 'YYYY_MM_DD')").fetchone()[0]
    store(db, "wamid.old.1", "sent", db.execute("SELECT (now() - interval '40 days')::text").fetchone()[0])
    store(db, "wamid.old.2", "delivered", db.execute("SELECT (now() - interval '40 days')::text").fetchone()[0])
    store(db, "wamid.recent", "sent", db.execute("SELECT (now() - interval '10 days')::text").fetchone()[0])
    store(db, "wamid.ancient", "sent", "2001-01-01")          # before every partition: the default
    assert where(db, "wamid.ancient") == "core.status_events_default"
    assert f"status_events_p{old_day}" in partitions(db)

    removed = db.execute("SELECT core.run_retention()").fetchone()[0]
    assert removed >= 3
    assert f"status_events_p{old_day}" not in partitions(db)
    left = {r[0] for r in db.execute("SELECT wamid FROM core.status_events")}
    assert left == {"wamid.recent"}
    # The setting keeps its meaning: keep less, and the 10-day-old partition goes too.
    assert db.execute("SELECT core.run_retention(interval '5 days')").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM core.status_events").fetchone() == (0,)


@pytest.fixture
def empty_db(db: psycopg.Connection) -> Iterator[str]:
    """A brand-new empty database beside the test's own; dropped afterwards."""
    name = f"{db.info.dbname}_convert"
    db.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = conninfo_to_dict(make_conninfo(host=db.info.host, port=db.info.port, user=db.info.user))
    yield make_conninfo(**info, dbname=name)
    db.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_deployed_database_is_converted_with_its_rows(empty_db: str, tmp_path: Path) -> None:
    before, upto = tmp_path / "before", tmp_path / "upto"
    before.mkdir()
    upto.mkdir()
    for path in MIGRATIONS.iterdir():
        if path.name[:4].isdigit() and int(path.name[:4]) <= 114:
            (upto / path.name).symlink_to(path)
            if int(path.name[:4]) < 114:
                (before / path.name).symlink_to(path)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("SET client_min_messages = warning")
        ensure_extensions(conn)
        apply_migrations(conn, before)
        conn.execute("""INSERT INTO core.status_events (wamid, status, number_id, outbound_id, occurred_at, received_at)
                        VALUES ('wamid.a', 'sent', 1, 7, now() - interval '3 days', now() - interval '3 days'),
                               ('wamid.a', 'delivered', 1, 7, now(), now()),
                               ('wamid.b', 'sent', 2, NULL, now() - interval '90 days', now() - interval '90 days')""")
        assert apply_migrations(conn, upto) == ["0114_partitions.sql"]
        rows = conn.execute("""SELECT wamid, status, number_id, outbound_id, tableoid::regclass::text
                               FROM core.status_events ORDER BY wamid, status""").fetchall()
        day = conn.execute("SELECT to_char(now() - interval '3 days', 'YYYY_MM_DD'), to_char(now(), 'YYYY_MM_DD')"
                           ).fetchone()
        assert rows == [("wamid.a", "delivered", 1, 7, f"core.status_events_p{day[1]}"),
                        ("wamid.a", "sent", 1, 7, f"core.status_events_p{day[0]}"),
                        # Older than retention keeps: in the default partition, for retention.
                        ("wamid.b", "sent", 2, None, "core.status_events_default")]
        assert conn.execute("SELECT to_regclass('core.status_events_unpartitioned')").fetchone() == (None,)
        # The partitions start 31 days back (what retention keeps), not at the 90-day-old row.
        oldest = conn.execute("""SELECT min(partition_tablename) FROM partman.show_partitions('core.status_events')"""
                              ).fetchone()[0]
        assert oldest == "status_events_p" + conn.execute(
            "SELECT to_char(now() - interval '31 days', 'YYYY_MM_DD')").fetchone()[0]
