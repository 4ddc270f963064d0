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
    # Other updates of a contact do not look at its tenant at all.
    db.execute("UPDATE core.contacts SET name = 'renamed'")


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
