-- Meta's webhooks: the receiver verifies, enqueues the raw payload in pgmq (queue
-- webhooks, 08_queues_and_cron.sql) and answers 200; api.process_webhooks turns batches
-- of payloads into status events, inbox messages and template updates.
--
-- A webhook speaks only for the numbers of the app that signed it. The receiver records
-- which app secret verified a payload: none for the platform's WHATSAPP_APP_SECRET (it
-- may speak for any number), or the signer of a number's own app secret
-- (core.app_signer, salted by core.settings.signer_salt), kept in the queue message's
-- headers. Processing applies a tenant-signed change only to numbers and WABAs
-- registered with that same secret.

-- Every status Meta reported, stored once per (wamid, status) and number whatever the
-- redelivery.
CREATE TABLE core.status_events (
    wamid         text NOT NULL,
    status        text NOT NULL
                  CONSTRAINT status_events_status_valid CHECK (status IN ('sent', 'delivered', 'read', 'failed', 'deleted', 'warning', 'played')),
    -- Null while the wamid is unknown (its send not reported yet); matched later.
    outbound_id   bigint,
    occurred_at   timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    recipient_id  text,
    error_code    integer,
    pricing_category text,
    conversation_id  text,
    -- The number the event came through. An event whose wamid is not known yet is kept
    -- until its message is, and then it may move only a message of that same number: a
    -- wamid named by another tenant's webhook never moves this one's message, nor takes
    -- the key of its genuine event. 0: a number pgwa does not know. No foreign key:
    -- numbers are never deleted, and the hot insert stays cheap.
    number_id     bigint NOT NULL DEFAULT 0,
    CONSTRAINT status_events_pkey PRIMARY KEY (wamid, status, number_id)
);
-- Read when a report_sends brings a wamid whose statuses arrived first.
CREATE INDEX status_events_unmatched ON core.status_events (wamid) WHERE outbound_id IS NULL;
-- Read by retention (oldest first).
CREATE INDEX status_events_received ON core.status_events USING brin (received_at);

-- A signed body PostgreSQL's jsonb cannot hold (\u0000, a lone surrogate) or that is
-- not a JSON object: acknowledged all the same and kept here, byte for byte. When a
-- repaired copy could be queued, queued_msg_id names it.
CREATE TABLE core.webhook_raw (
    raw_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at    timestamptz NOT NULL DEFAULT now(),
    signer         text,
    reason         text NOT NULL,
    body           bytea NOT NULL,
    queued_msg_id  bigint
);

-- What api.process_webhooks returns for a batch.
CREATE TYPE api.webhook_batch AS (
    payloads       integer,   -- payloads taken from the queue
    status_events  integer,   -- status events stored for the first time
    messages       integer,   -- inbound messages stored for the first time
    dead           integer,   -- payloads moved to webhooks_dead
    dropped        integer    -- changes not signed for their number
);

-- What api.claim_webhooks returns: the payloads read for the first time, processed as one
-- batch, and those read again after a failed attempt, which the worker processes one by
-- one under a short timeout so that a payload that hung once never holds up a batch again.
CREATE TYPE api.webhook_claim AS (
    fresh    bigint[],
    retried  bigint[]
);

-- A number's own app secret, for the receiver alone. It checks a signature only against
-- the secrets of the WABAs a payload names, so a badly signed POST costs one HMAC per app
-- that could have sent it, not one per app on the platform.
CREATE TYPE api.webhook_signer AS (
    app_secret  text,   -- a number's own app secret (never shown; for the receiver only)
    signer      text,   -- what the receiver stores beside a payload that secret verified
    waba_ids    text[]  -- the WABAs the secret is registered for
);

-- One entry[].changes[] element of a webhook payload, flattened once per batch by
-- core.flatten_webhooks and handed to each processing step (db/functions/webhooks.sql).
CREATE TYPE core.webhook_change AS (
    ord              integer,       -- the payload's position in its batch
    waba_id          text,          -- entry[].id
    entry_at         timestamptz,   -- entry[].time, when Meta sends it
    field            text,          -- messages, message_template_status_update, ...
    phone_number_id  text,          -- value.metadata.phone_number_id
    value            jsonb,
    signer           text           -- null: the platform's app
);
