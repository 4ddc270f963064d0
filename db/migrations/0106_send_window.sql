-- Send windows: a campaign may be limited to hours of each recipient's local day, the
-- recipient's time zone taken from the phone's prefix (core.phone_zones, generated into
-- 0107_phone_zones.sql) unless the contact has its own; a tenant has a time zone in
-- which its schedules are written.

CREATE TABLE core.phone_zones (
    prefix    text PRIMARY KEY CONSTRAINT phone_zones_prefix_digits CHECK (prefix ~ '^[1-9][0-9]{0,9}$'),
    time_zone text NOT NULL
);
COMMENT ON TABLE core.phone_zones IS
    'The IANA time zone of each phone number prefix (libphonenumber''s map; one zone per prefix): core.phone_zone takes a number''s longest prefix.';

ALTER TABLE core.contacts ADD COLUMN time_zone text;
COMMENT ON COLUMN core.contacts.time_zone IS
    'The contact''s own IANA time zone, for campaign send windows (NULL: from the phone''s prefix, core.phone_zone).';
ALTER TABLE core.tenants ADD COLUMN time_zone text NOT NULL DEFAULT 'UTC';
COMMENT ON COLUMN core.tenants.time_zone IS
    'The IANA time zone in which the tenant writes schedules (api.tenant_local_time) and the fallback for recipients of unknown zone.';

ALTER TABLE core.campaigns
    ADD COLUMN send_window_start time,
    ADD COLUMN send_window_end   time,
    ADD CONSTRAINT campaigns_send_window_whole CHECK (
        (send_window_start IS NULL) = (send_window_end IS NULL) AND (send_window_start IS NULL OR send_window_start <> send_window_end));
COMMENT ON COLUMN core.campaigns.send_window_start IS
    'Messages go out only from this local time of the recipient''s day until send_window_end (which may be past midnight); NULL: any time.';

CREATE TYPE api.send_window AS (
    campaign_id       bigint,
    send_window_start time,
    send_window_end   time
);
