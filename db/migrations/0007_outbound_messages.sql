-- One row per message pgwa sends; while it waits it is also one pgmq message.
CREATE TABLE core.outbound_messages (
    outbound_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number_id      bigint NOT NULL REFERENCES core.wa_numbers ON DELETE CASCADE,
    campaign_id    bigint REFERENCES core.campaigns ON DELETE CASCADE,
    variant        smallint,
    contact_id     bigint NOT NULL REFERENCES core.contacts ON DELETE CASCADE,
    kind           text NOT NULL DEFAULT 'campaign'
                   CONSTRAINT outbound_messages_kind_valid CHECK (kind IN ('campaign', 'reply', 'bot', 'agent', 'llm')),
    state          text NOT NULL DEFAULT 'queued'
                   CONSTRAINT outbound_messages_state_valid CHECK (state IN
                       ('queued', 'in_flight', 'accepted', 'sent', 'delivered', 'read', 'failed', 'cancelled')),
    attempts       smallint NOT NULL DEFAULT 0,
    wamid          text,
    error_code     integer,
    error_category text,
    error_detail   text,
    queued_at      timestamptz NOT NULL DEFAULT now(),
    claimed_at     timestamptz,
    accepted_at    timestamptz,
    sent_at        timestamptz,
    delivered_at   timestamptz,
    read_at        timestamptz,
    failed_at      timestamptz,
    replied_at     timestamptz
);
-- Read by status webhooks (match on wamid) and report_sends.
CREATE UNIQUE INDEX outbound_messages_wamid ON core.outbound_messages (wamid) WHERE wamid IS NOT NULL;
-- Read by reconciliation, completion checks and the campaign foreign key.
CREATE INDEX outbound_messages_campaign_state ON core.outbound_messages (campaign_id, state);
-- Read by the contact's history in the inbox and the contact foreign key.
CREATE INDEX outbound_messages_contact ON core.outbound_messages (contact_id, outbound_id);
-- Read by the number foreign key only; partial on the rare non-campaign rows is not
-- possible for a foreign key check, so it stays whole.
CREATE INDEX outbound_messages_number ON core.outbound_messages (number_id);
