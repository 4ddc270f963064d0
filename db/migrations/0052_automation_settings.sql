-- Settings of inbox automation. Per tenant: the confirmations sent for the opt-out and
-- opt-in keywords (core.tenants already holds the keywords). Per number: the LLM's
-- system prompt, how many messages of the conversation it sees, and how many replies it
-- may send one contact a day (llm_enabled is in 0003).
ALTER TABLE core.tenants
    ADD COLUMN opt_out_reply text NOT NULL
        DEFAULT 'You have been unsubscribed and will get no more messages from us. Reply START to subscribe again.',
    ADD COLUMN opt_in_reply text NOT NULL
        DEFAULT 'You are subscribed again. Reply STOP to unsubscribe.';

ALTER TABLE core.wa_numbers
    ADD COLUMN llm_system_prompt    text,
    ADD COLUMN llm_daily_limit      integer NOT NULL DEFAULT 20
        CONSTRAINT wa_numbers_llm_daily_limit_valid CHECK (llm_daily_limit BETWEEN 0 AND 10000),
    ADD COLUMN llm_context_messages integer NOT NULL DEFAULT 12
        CONSTRAINT wa_numbers_llm_context_messages_valid CHECK (llm_context_messages BETWEEN 1 AND 100);

-- Read by core.cancel_opted_out (from api.claim_sends): has anyone of the tenant opted
-- out since a running campaign was created? Opt-outs are rare, so the index is small.
CREATE INDEX contacts_opted_out ON core.contacts (tenant_id, opted_out_at) WHERE opted_out;
