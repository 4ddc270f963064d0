"""A contact's tenant exists and its contacts go with it, without a per-row foreign key
(migration 0128): statement-level triggers check and lock the tenants a statement wrote
once, and a tenant's deletion (or a TRUNCATE of the tenants) takes its contacts."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from tests import factories as f

MISSING = 10**9


def add_contacts(db: psycopg.Connection, acc: f.Account, n: int, base: int = 0) -> None:
    db.execute("INSERT INTO core.contacts (tenant_id, wa_id) SELECT %s, p FROM unnest(%s::text[]) p",
               (acc.tenant_id, f.phones(n, base)))


def contacts_of(db: psycopg.Connection) -> list[tuple[int, str]]:
    return db.execute("SELECT tenant_id, wa_id FROM core.contacts ORDER BY tenant_id, wa_id").fetchall()


def test_a_contact_of_a_tenant_that_does_not_exist_is_refused_with_the_whole_statement(db: psycopg.Connection) -> None:
    acc = f.account(db)
    f.create_campaign(db, acc, 3)   # the campaign path's insert
    before = contacts_of(db)
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match=f"contact of tenant {MISSING} that does not exist") as err:
        db.execute("INSERT INTO core.contacts (tenant_id, wa_id) VALUES (%s, '15550000001'), (%s, '15550000002')",
                   (acc.tenant_id, MISSING))
    assert (err.value.diag.table_name, err.value.diag.column_name) == ("contacts", "tenant_id")
    assert contacts_of(db) == before   # the good row went with the bad one
    # Moving a contact to a tenant that does not exist is refused too; to one that does, not.
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match=str(MISSING)):
        db.execute("UPDATE core.contacts SET tenant_id = %s WHERE wa_id = %s", (MISSING, before[0][1]))
    other = f.account(db)
    db.execute("UPDATE core.contacts SET tenant_id = %s WHERE wa_id = %s", (other.tenant_id, before[0][1]))
    assert (other.tenant_id, before[0][1]) in contacts_of(db)
    # Other updates of a contact do not look at its tenant at all: the check runs for a
    # row that moved, not for one renamed or rewritten (the backend's own count of calls,
    # before and after: calls not yet flushed to the statistics show in both).
    db.execute("SET track_functions = 'pl'")
    calls = "SELECT coalesce(pg_stat_get_xact_function_calls('core.check_contact_tenants'::regproc), 0)"
    with db.transaction():
        start = db.execute(calls).fetchone()[0]
        assert db.execute("UPDATE core.contacts SET name = 'renamed', tenant_id = tenant_id").rowcount == 3
        assert db.execute(calls).fetchone()[0] == start
        db.execute("UPDATE core.contacts SET tenant_id = %s WHERE wa_id = %s", (acc.tenant_id, before[0][1]))
        assert db.execute(calls).fetchone()[0] == start + 1
    # A tenant set by something else than the statement's SET list (a BEFORE trigger of
    # the contacts) is checked too.
    db.execute(f"CREATE FUNCTION pg_temp.misfile() RETURNS trigger LANGUAGE plpgsql"
               f" AS $$ BEGIN NEW.tenant_id := {MISSING}; RETURN NEW; END $$")
    db.execute("CREATE TRIGGER misfile BEFORE UPDATE ON core.contacts FOR EACH ROW EXECUTE FUNCTION pg_temp.misfile()")
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match=str(MISSING)):
        db.execute("UPDATE core.contacts SET name = 'misfiled' WHERE wa_id = %s", (before[0][1],))
    db.execute("DROP TRIGGER misfile ON core.contacts")


def test_a_statement_of_several_tenants_upserts_and_copy_are_checked_too(db: psycopg.Connection) -> None:
    one, two = f.account(db), f.account(db)
    add_contacts(db, one, 2)
    # One statement for two tenants that exist, and a third that does not: all refused.
    rows = [(one.tenant_id, "15550000101"), (two.tenant_id, "15550000102"), (MISSING, "15550000103")]

    def insert(rows: list[tuple[int, str]]) -> None:
        db.execute("INSERT INTO core.contacts (tenant_id, wa_id) SELECT * FROM unnest(%s::bigint[], %s::text[])",
                   ([t for t, _ in rows], [w for _, w in rows]))

    with pytest.raises(psycopg.errors.ForeignKeyViolation, match=str(MISSING)):
        insert(rows)
    assert len(contacts_of(db)) == 2
    insert(rows[:2])
    assert len(contacts_of(db)) == 4
    # An upsert whose conflicting rows are updated, and one that inserts for a missing tenant.
    existing = contacts_of(db)[0][1]
    db.execute("INSERT INTO core.contacts (tenant_id, wa_id, name) VALUES (%s, %s, 'upserted')"
               " ON CONFLICT (tenant_id, wa_id) DO UPDATE SET name = excluded.name", (one.tenant_id, existing))
    assert db.execute("SELECT name FROM core.contacts WHERE tenant_id = %s AND wa_id = %s",
                      (one.tenant_id, existing)).fetchone()[0] == "upserted"
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match=str(MISSING)):
        db.execute("INSERT INTO core.contacts (tenant_id, wa_id) VALUES (%s, %s)"
                   " ON CONFLICT (tenant_id, wa_id) DO UPDATE SET name = excluded.name", (MISSING, existing))
    # COPY, the bulk path, fires the same statement trigger.
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match=str(MISSING)), \
            db.cursor().copy("COPY core.contacts (tenant_id, wa_id) FROM STDIN") as copy:
        copy.write_row((two.tenant_id, "15550000201"))
        copy.write_row((MISSING, "15550000202"))
    assert len(contacts_of(db)) == 4


def test_a_tenant_keeps_its_id_and_is_deleted_only_under_read_committed(db: psycopg.Connection) -> None:
    acc = f.account(db)
    empty = db.execute("SELECT api.create_tenant('no contacts, no numbers')").fetchone()[0]
    add_contacts(db, acc, 2)
    # The id is an identity GENERATED ALWAYS: only DEFAULT can change it, which it does.
    renumber = "UPDATE core.tenants SET tenant_id = DEFAULT WHERE tenant_id = %s RETURNING tenant_id"
    for tenant in (acc.tenant_id, empty):       # with contacts or without
        with pytest.raises(psycopg.errors.FeatureNotSupported, match=f"tenant {tenant}: its tenant_id cannot change"):
            db.execute(renumber, (tenant,))
    # A snapshot older than the deletion would miss contacts added meanwhile: refused.
    for level in ("REPEATABLE READ", "SERIALIZABLE"):
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="READ COMMITTED"), db.transaction():
            db.execute(f"SET TRANSACTION ISOLATION LEVEL {level}")
            db.execute("DELETE FROM core.tenants WHERE tenant_id = %s", (acc.tenant_id,))
    assert len(contacts_of(db)) == 2
    # A deletion that takes no tenant has nothing to miss; under READ COMMITTED (or READ
    # UNCOMMITTED, which runs as it) a deletion takes the tenant's contacts.
    with db.transaction():
        db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert db.execute("DELETE FROM core.tenants WHERE tenant_id = %s", (MISSING,)).rowcount == 0
    with db.transaction():
        db.execute("SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED")
        db.execute("DELETE FROM core.tenants WHERE tenant_id = %s", (acc.tenant_id,))
    assert contacts_of(db) == []


def test_deleting_a_tenant_deletes_its_contacts_and_their_conversations_and_no_others(db: psycopg.Connection) -> None:
    gone, kept = f.account(db), f.account(db)
    add_contacts(db, gone, 4)
    add_contacts(db, kept, 2, base=10)
    for acc in (gone, kept):
        db.execute("INSERT INTO core.conversations (number_id, contact_id, last_message_at)"
                   " SELECT %s, contact_id, now() FROM core.contacts WHERE tenant_id = %s",
                   (acc.number_id, acc.tenant_id))
    db.execute("DELETE FROM core.tenants WHERE tenant_id = %s", (gone.tenant_id,))
    assert {t for t, _ in contacts_of(db)} == {kept.tenant_id} and len(contacts_of(db)) == 2
    assert db.execute("SELECT count(*) FROM core.conversations").fetchone()[0] == 2
    # A TRUNCATE of the tenants, which the foreign key made take the contacts, still does.
    db.execute("TRUNCATE core.tenants CASCADE")
    assert contacts_of(db) == []


def test_a_tenant_deleted_while_its_contacts_are_being_added_takes_them_along(db: psycopg.Connection,
                                                                            db_url: str) -> None:
    acc = f.account(db)
    with psycopg.connect(db_url) as adding, psycopg.connect(db_url, autocommit=True) as watcher, \
            psycopg.connect(db_url, autocommit=True) as deleting:
        # A session is adding contacts and has not committed (nothing else it wrote refers
        # to the tenant): the tenant is locked as the foreign key locked it, so its
        # deletion waits, then deletes them too.
        add_contacts(adding, acc, 3)
        pid = deleting.info.backend_pid
        worker = threading.Thread(target=lambda: deleting.execute("DELETE FROM core.tenants WHERE tenant_id = %s",
                                                                  (acc.tenant_id,)))
        worker.start()
        deadline = time.monotonic() + 30
        while not watcher.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                                  (pid,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the deletion never waited for the contacts' transaction"
            time.sleep(0.01)
        adding.commit()
        worker.join(30)
        assert not worker.is_alive()
    assert contacts_of(db) == []
    # The other way round: once the tenant is gone, adding a contact to it is refused.
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        db.execute("INSERT INTO core.contacts (tenant_id, wa_id) VALUES (%s, '15550000009')", (acc.tenant_id,))
