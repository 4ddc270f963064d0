-- One row per conversation: a WhatsApp number of the business and a contact. It holds
-- what the inbox lists and what automation decides by: Meta's 24-hour customer service
-- window (opened per business number and user, so it lives here rather than on the
-- tenant-wide contact), the unread count, the agent it is assigned to (bots and the LLM
-- stay quiet while it is), the flag that asks for a human, and the LLM's daily replies.
-- Moved once per webhook batch by core.on_inbound and once per reply batch by
-- core.enqueue_replies (db/functions/bots.sql, inbox.sql).
CREATE TABLE core.conversations (
    number_id           bigint NOT NULL REFERENCES core.wa_numbers ON DELETE CASCADE,
    contact_id          bigint NOT NULL REFERENCES core.contacts ON DELETE CASCADE,
    -- The window is open until last_inbound_at + 24 hours.
    last_inbound_at     timestamptz,
    last_message_at     timestamptz NOT NULL,
    unread              integer NOT NULL DEFAULT 0 CONSTRAINT conversations_unread_valid CHECK (unread >= 0),
    -- The newest inbox message marked read (api.mark_read).
    read_up_to_id       bigint,
    assigned_to         text,
    assigned_at         timestamptz,
    needs_human         boolean NOT NULL DEFAULT false,
    needs_human_reason  text,
    needs_human_at      timestamptz,
    -- LLM replies sent on llm_day (reset when the day changes), and the newest inbound
    -- message an LLM job has taken into its context (older jobs are dropped).
    llm_day             date,
    llm_replies         integer NOT NULL DEFAULT 0,
    llm_answered_id     bigint,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (number_id, contact_id)
);
-- Read by api.conversations: a number's conversations newest first, keyset on
-- (last_message_at, contact_id).
CREATE INDEX conversations_number_last ON core.conversations (number_id, last_message_at DESC, contact_id DESC);
-- Read by the contact foreign key.
CREATE INDEX conversations_contact ON core.conversations (contact_id);

-- Conversations of the messages stored before this migration, once.
INSERT INTO core.conversations (number_id, contact_id, last_inbound_at, last_message_at)
SELECT number_id, contact_id, max(created_at) FILTER (WHERE direction = 'in'), max(created_at)
FROM core.inbox_messages
GROUP BY number_id, contact_id;

INSERT INTO core.error_codes (sqlstate, name, http_status, meaning) VALUES
    ('PW209', 'conversation_not_found', 404, 'No conversation between this number and contact for this tenant.');
