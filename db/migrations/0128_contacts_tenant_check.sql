-- Contacts without a per-row foreign key check on their tenant.
--
-- core.new_campaign inserts every new contact of a list in one statement (100,000 for a
-- large list). The tenant foreign key checked each row with its own lookup and lock of
-- the same tenant row: for 100,000 new contacts the insert took 1.52 s with it and 1.02 s
-- without (pg_stat_statements, in the function), a sixth of the campaign's creation.
-- As with a campaign's messages (0118), the check and the cascade are kept by
-- statement-level triggers (db/functions/contacts.sql): core.check_contact_tenants
-- looks up and locks (FOR KEY SHARE, as the foreign key did) the distinct tenants of
-- the rows a statement inserted, once, and refuses the statement when one does not
-- exist; a contact moved to another tenant is checked the same way;
-- core.delete_tenant_contacts deletes a deleted tenant's contacts, and all of them after
-- a TRUNCATE of the tenants.
ALTER TABLE core.contacts DROP CONSTRAINT contacts_tenant_id_fkey;
COMMENT ON COLUMN core.contacts.tenant_id IS
    'The contact''s tenant. No foreign key (one check per row was a sixth of a campaign''s creation): the contacts_tenant_exists triggers check each statement''s tenants once (FOR KEY SHARE, as the key did), and the tenants_delete_contacts and tenants_truncate_contacts triggers delete a tenant''s contacts with it.';
