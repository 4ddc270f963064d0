-- The send API: single messages a tenant's own systems send (POST /v1/messages), on the
-- reply queue ahead of campaign traffic, made safe to retry by an idempotency key.

ALTER TABLE core.outbound_messages DROP CONSTRAINT outbound_messages_kind_valid;
ALTER TABLE core.outbound_messages ADD CONSTRAINT outbound_messages_kind_valid
    CHECK (kind IN ('campaign', 'reply', 'bot', 'agent', 'llm', 'receipt', 'api')) NOT VALID;
ALTER TABLE core.outbound_messages VALIDATE CONSTRAINT outbound_messages_kind_valid;

-- One row per idempotency key a tenant used: the request it stood for (a hash of the
-- number, the recipient and the message) and the message it sent. A retry with the same
-- key and request answers that message; the same key with another request is refused.
CREATE TABLE core.api_sends (
    tenant_id       bigint NOT NULL REFERENCES core.tenants ON DELETE CASCADE,
    idempotency_key text NOT NULL CONSTRAINT api_sends_key_shape CHECK (idempotency_key ~ '^[!-~]{1,255}$'),
    request_hash    text NOT NULL,
    outbound_id     bigint NOT NULL REFERENCES core.outbound_messages ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, idempotency_key)
);
CREATE INDEX api_sends_outbound ON core.api_sends (outbound_id);
COMMENT ON TABLE core.api_sends IS
    'Idempotency keys of the send API (api.send_message): the request each stood for and the outbound message it queued.';

INSERT INTO core.error_codes (sqlstate, name, http_status, meaning) VALUES
    ('PW210', 'message_not_found',      404, 'The tenant has no outbound message with this id.'),
    ('PW303', 'idempotency_conflict',   409, 'The idempotency key was already used for a different request.');

CREATE TYPE api.message_sent AS (
    outbound_id      bigint,
    number_id        bigint,
    contact_id       bigint,
    recipient        text,         -- the phone (E.164 digits) or business-scoped user id
    state            text,
    replayed         boolean,      -- true: an earlier request with this idempotency key sent it
    window_closes_at timestamptz,  -- when the contact's 24-hour window closes (null: not open)
    queued_at        timestamptz
);
