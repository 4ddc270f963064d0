-- A webhook speaks only for the numbers of the app that signed it (issue 11).
--
-- The receiver records which app secret verified a payload: none for the platform's
-- WHATSAPP_APP_SECRET (it may speak for any number), or the signer of a number's own
-- app secret (core.app_signer), kept in the queue message's headers. Processing applies
-- a tenant-signed change only to numbers and WABAs registered with that same secret.
-- The signer is a salted sha256 of the secret, so a queue row never holds the secret
-- itself nor a hash a dictionary could reverse.
ALTER TABLE core.settings
    ADD COLUMN signer_salt text NOT NULL
        DEFAULT replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''),
    -- A payload read this many times without being processed (its batch crashed or
    -- timed out each time) is dead-lettered instead of being read again.
    ADD COLUMN webhook_max_attempts integer NOT NULL DEFAULT 5
        CONSTRAINT settings_webhook_max_attempts_valid CHECK (webhook_max_attempts BETWEEN 1 AND 100),
    -- How long a claimed batch of payloads stays invisible to other workers.
    ADD COLUMN webhook_claim_s integer NOT NULL DEFAULT 30
        CONSTRAINT settings_webhook_claim_s_valid CHECK (webhook_claim_s BETWEEN 1 AND 3600);

ALTER TYPE core.webhook_change ADD ATTRIBUTE signer text;   -- null: the platform's app
ALTER TYPE api.webhook_batch ADD ATTRIBUTE dropped integer; -- changes not signed for their number

CREATE TYPE api.webhook_signer AS (
    app_secret  text,   -- a number's own app secret (never shown; for the receiver only)
    signer      text    -- what the receiver stores beside a payload that secret verified
);

-- Operator notifications belong to no tenant: a forged webhook is the platform's
-- business, and its tenant must not be told whose numbers it named.
ALTER TABLE core.notifications ALTER COLUMN tenant_id DROP NOT NULL;
DROP INDEX core.notifications_tenant_dedupe_key;
-- Read by INSERT ... ON CONFLICT DO NOTHING / DO UPDATE when a notification is raised
-- with a key; NULLS NOT DISTINCT so that operator notifications dedupe too.
CREATE UNIQUE INDEX notifications_tenant_dedupe_key ON core.notifications (tenant_id, dedupe_key)
    NULLS NOT DISTINCT WHERE dedupe_key IS NOT NULL;

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

-- The signatures change (signers beside payloads); the function files recreate them.
-- IF EXISTS: on a fresh database the function files run after every migration.
DROP FUNCTION IF EXISTS api.ingest_webhook(jsonb);
DROP FUNCTION IF EXISTS api.ingest_webhooks(jsonb[]);
DROP FUNCTION IF EXISTS api.webhook_app_secrets();
DROP FUNCTION IF EXISTS core.process_webhook_payloads(jsonb[]);
DROP FUNCTION IF EXISTS core.flatten_webhooks(jsonb[]);
