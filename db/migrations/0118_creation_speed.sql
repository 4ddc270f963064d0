-- Campaign creation without a per-row foreign key check on its messages.
--
-- core.new_campaign writes one core.outbound_messages row per recipient (1,000,000 for a
-- large list) right after it inserted the campaign, in the same transaction. The
-- campaign foreign key checked each of them with its own lookup of that one campaign
-- row: measured on a 100,000-message insert (perf), 60% of the statement's time, about
-- 0.6 s of every 100,000 recipients. Like number_id and contact_id (0086 baseline), the
-- column is written only by pgwa's own function, from the campaign it has just made
-- (the other writers leave it NULL), so the check goes. Its one other use, deleting a
-- campaign's messages with the campaign (a tenant's deletion cascades to its
-- campaigns), is kept by a statement-level trigger on core.campaigns
-- (core.delete_campaign_messages, db/functions/campaigns.sql). The index that leads with
-- campaign_id serves that delete.
ALTER TABLE core.outbound_messages DROP CONSTRAINT outbound_messages_campaign_id_fkey;
COMMENT ON COLUMN core.outbound_messages.campaign_id IS
    'The campaign of a campaign message (NULL for replies, bot, agent and API messages). No foreign key (one check per row was most of a campaign''s creation): only core.new_campaign writes it, from the campaign it has just inserted; the campaigns_delete_messages trigger deletes a campaign''s messages with it.';
