-- The shared inbox: every message of a conversation, both directions.
CREATE TABLE core.inbox_messages (
    message_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number_id      bigint NOT NULL REFERENCES core.wa_numbers ON DELETE CASCADE,
    contact_id     bigint NOT NULL REFERENCES core.contacts ON DELETE CASCADE,
    direction      text NOT NULL CONSTRAINT inbox_messages_direction_valid CHECK (direction IN ('in', 'out')),
    wamid          text,
    type           text NOT NULL,
    body           text,
    payload        jsonb NOT NULL DEFAULT '{}',
    context_wamid  text,
    outbound_id    bigint,
    campaign_id    bigint,
    created_at     timestamptz NOT NULL DEFAULT now()
);
-- Read by the conversation page (keyset on created_at, message_id) and the number foreign key.
CREATE INDEX inbox_messages_conversation ON core.inbox_messages (number_id, contact_id, created_at DESC, message_id DESC);
-- Read by the contact foreign key.
CREATE INDEX inbox_messages_contact ON core.inbox_messages (contact_id);
-- Dedupe of redelivered inbound webhooks.
CREATE UNIQUE INDEX inbox_messages_wamid ON core.inbox_messages (wamid) WHERE wamid IS NOT NULL;
