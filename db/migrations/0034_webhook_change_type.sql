-- One entry[].changes[] element of a webhook payload, flattened once per batch by
-- core.flatten_webhooks and handed to each processing step (db/functions/webhooks.sql).
CREATE TYPE core.webhook_change AS (
    ord              integer,       -- the payload's position in its batch
    waba_id          text,          -- entry[].id
    entry_at         timestamptz,   -- entry[].time, when Meta sends it
    field            text,          -- messages, message_template_status_update, ...
    phone_number_id  text,          -- value.metadata.phone_number_id
    value            jsonb
);
