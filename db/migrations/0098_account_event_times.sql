-- Meta retries a webhook for up to 7 days and never promises order, so a late copy of an
-- older account-level event (a tier, a quality rating, a ban, a user's marketing
-- preference) can arrive after a newer one. Each row keeps when the newest event applied
-- to it happened, and an older one changes nothing there (as core.templates.status_event_at
-- does for template statuses). Written by db/functions/webhooks.sql only.

ALTER TABLE core.portfolios ADD COLUMN tier_event_at timestamptz;
COMMENT ON COLUMN core.portfolios.tier_event_at IS
    'When the newest webhook that set the tier happened (phone_number_quality_update, business_capability_update); an older one leaves the tier alone.';

ALTER TABLE core.wa_numbers ADD COLUMN quality_event_at timestamptz;
COMMENT ON COLUMN core.wa_numbers.quality_event_at IS
    'When the newest phone_number_quality_update applied to the number happened; an older one changes nothing.';

ALTER TABLE core.wa_numbers ADD COLUMN ban_event_at timestamptz;
COMMENT ON COLUMN core.wa_numbers.ban_event_at IS
    'When the newest account_update DISABLED_UPDATE (ban or reinstatement) of the number''s WABA happened; an older one changes nothing.';

ALTER TABLE core.contacts ADD COLUMN marketing_resumed_at timestamptz;
COMMENT ON COLUMN core.contacts.marketing_resumed_at IS
    'When the user last resumed marketing messages (user_preferences webhook); a stop older than this changes nothing.';
