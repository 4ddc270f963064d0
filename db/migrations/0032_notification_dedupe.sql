-- A notification raised from a webhook carries a key derived from the event, so that
-- Meta's redelivery of the same webhook (retried for up to 7 days) raises it only once.
ALTER TABLE core.notifications ADD COLUMN dedupe_key text;

-- Read by INSERT ... ON CONFLICT DO NOTHING when webhook processing raises a notification.
CREATE UNIQUE INDEX notifications_tenant_dedupe_key ON core.notifications (tenant_id, dedupe_key)
    WHERE dedupe_key IS NOT NULL;
