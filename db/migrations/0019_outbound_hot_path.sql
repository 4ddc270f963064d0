-- outbound_messages is written 100,000 rows at a time by create_campaign and updated
-- on every send. Its number_id and contact_id are written only by pgwa's own functions
-- (from a campaign or a conversation that already references both), so the per-row
-- foreign key checks on them bought nothing but a third of campaign creation time.
-- The campaign foreign key stays (it cascades a campaign's deletion).
ALTER TABLE core.outbound_messages DROP CONSTRAINT outbound_messages_number_id_fkey;
ALTER TABLE core.outbound_messages DROP CONSTRAINT outbound_messages_contact_id_fkey;
-- It served only the number foreign key.
DROP INDEX core.outbound_messages_number;
