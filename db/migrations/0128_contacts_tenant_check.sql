-- Contacts without a per-row foreign key check on their tenant.
--
-- core.new_campaign inserts every new contact of a list in one statement (100,000 for a
-- large list). The tenant foreign key checked each row with its own lookup and lock of
-- the same tenant row: measured on 100,000 new contacts, 0.45 s of the insert's 1.0 s
-- (a copy of the table with and without the constraint), about a seventh of a
-- campaign's creation. As with a campaign's messages (0118), the check and the cascade
-- are kept by statement-level triggers (db/functions/contacts.sql):
-- core.check_contact_tenants looks up and locks (FOR KEY SHARE, as the foreign key did)
-- the distinct tenants of the rows a statement inserted, once, and refuses the
-- statement when one does not exist; a change of a contact's tenant is checked the
-- same way; core.delete_tenant_contacts deletes a deleted tenant's contacts, and a
-- TRUNCATE of the tenants truncates the contacts.
ALTER TABLE core.contacts DROP CONSTRAINT contacts_tenant_id_fkey;
COMMENT ON COLUMN core.contacts.tenant_id IS
    'The contact''s tenant. No foreign key (one check per row was a seventh of a campaign''s creation): the contacts_tenant_exists triggers check each statement''s tenants once (FOR KEY SHARE, as the key did), and the tenants_delete_contacts triggers delete a tenant''s contacts with it.';
