-- The shared inbox, keyword bots and LLM replies: every message of a conversation in
-- both directions, the conversation's 24-hour window and assignment, the bot rules, and
-- what the LLM may spend.

-- Bot rules are matched against the inbound text normalised for case, whitespace and
-- accents (core.normalize_text). unaccent ships in contrib (Debian's postgresql-15, the
-- postgres image).
CREATE EXTENSION IF NOT EXISTS unaccent SCHEMA public;

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

-- Bot rules are matched inside webhook processing (core.match_bot_rules), set-based. A
-- rule keeps its pattern normalised as the inbound text is, so that matching compares
-- stored values and needs no per-rule function call: match_text for exact rules (and
-- regexes, unaccented only), like_pattern ('PATTERN%' or '%PATTERN%', wildcards
-- escaped) for starts_with and contains, evaluated as LIKE over an index-only scan in
-- priority order. Regex patterns must be in a safe subset (core.regex_unsafe_reason)
-- and see a bounded prefix of the text (core.settings.bot_match_prefix_chars).
CREATE TABLE core.bot_rules (
    rule_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number_id   bigint NOT NULL REFERENCES core.wa_numbers ON DELETE CASCADE,
    kind        text NOT NULL CONSTRAINT bot_rules_kind_valid CHECK (kind IN
                    ('exact', 'starts_with', 'contains', 'regex', 'welcome', 'default')),
    pattern     text,
    priority    integer NOT NULL DEFAULT 100,
    reply       jsonb NOT NULL,
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    match_text   text,
    like_pattern text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT bot_rules_pattern_present CHECK (kind IN ('welcome', 'default') OR pattern IS NOT NULL),
    CONSTRAINT bot_rules_match_text_present CHECK (kind IN ('welcome', 'default') OR match_text IS NOT NULL),
    CONSTRAINT bot_rules_priority_valid CHECK (priority BETWEEN 0 AND 1000000)
);
-- Read by matching (a number's enabled rules in priority order) and the number foreign key.
CREATE INDEX bot_rules_number_priority ON core.bot_rules (number_id, priority, rule_id);
-- Read by core.match_bot_rules: a number's exact rules by their normalised text.
CREATE INDEX bot_rules_exact ON core.bot_rules (number_id, match_text, priority, rule_id)
    WHERE enabled AND kind = 'exact';
-- Read by core.match_bot_rules: starts_with and contains rules in priority order; the
-- LIKE runs on the index tuples (index-only), the scan stops at the first hit.
CREATE INDEX bot_rules_like ON core.bot_rules (number_id, priority, rule_id) INCLUDE (like_pattern)
    WHERE enabled AND kind IN ('starts_with', 'contains');
-- Read by core.match_bot_rules: regex rules in priority order, index-only.
CREATE INDEX bot_rules_regex ON core.bot_rules (number_id, priority, rule_id) INCLUDE (match_text)
    WHERE enabled AND kind = 'regex';
-- Read by core.match_bot_rules: a number's welcome and default rules in priority order
-- (without it, finding the default rule walks every rule of the number by priority).
CREATE INDEX bot_rules_fallbacks ON core.bot_rules (number_id, kind, priority, rule_id)
    WHERE enabled AND kind IN ('welcome', 'default');

-- LLM spend per number: besides the replies one contact may get a day
-- (wa_numbers.llm_daily_limit), a number may make at most llm_number_daily_limit LLM
-- calls per UTC day, across all its contacts. api.claim_llm_jobs counts the calls it
-- hands out here; a job over the cap is claimed with over_limit, so the worker sends the
-- fallback and the conversation goes to a human, without calling the model.
CREATE TABLE core.llm_number_usage (
    number_id  bigint NOT NULL REFERENCES core.wa_numbers ON DELETE CASCADE,
    day        date NOT NULL,               -- the UTC day
    calls      integer NOT NULL DEFAULT 0,  -- LLM calls handed out by api.claim_llm_jobs
    -- Read and locked by api.claim_llm_jobs (number, today); also serves the foreign key.
    CONSTRAINT llm_number_usage_pkey PRIMARY KEY (number_id, day)
);
COMMENT ON TABLE core.llm_number_usage IS
    'LLM calls per number and UTC day, counted when api.claim_llm_jobs hands a job to a worker; capped by wa_numbers.llm_number_daily_limit.';

-- Named types of the inbox, bot and LLM functions.
CREATE TYPE api.bot_rule AS (
    rule_id     bigint,
    number_id   bigint,
    kind        text,      -- exact, starts_with, contains, regex, welcome, default
    pattern     text,
    priority    integer,   -- lower first
    reply       jsonb,     -- {"type": "text" | "buttons" | "template", ...}
    enabled     boolean,
    created_at  timestamptz,
    updated_at  timestamptz
);

CREATE TYPE api.opt_out_settings AS (
    tenant_id         bigint,
    opt_out_keywords  text[],
    opt_in_keywords   text[],
    opt_out_reply     text,
    opt_in_reply      text
);

CREATE TYPE api.llm_settings AS (
    number_id           bigint,
    llm_enabled         boolean,
    system_prompt       text,
    daily_limit         integer,
    context_messages    integer,
    number_daily_limit  integer
);

CREATE TYPE api.conversation_summary AS (
    contact_id          bigint,
    wa_id               text,
    user_id             text,
    name                text,
    profile_name        text,
    opted_out           boolean,
    last_message_id     bigint,
    last_direction      text,
    last_type           text,
    last_body           text,
    last_message_at     timestamptz,
    unread              integer,
    window_open         boolean,
    window_closes_at    timestamptz,
    assigned_to         text,
    assigned_at         timestamptz,
    needs_human         boolean,
    needs_human_reason  text
);

CREATE TYPE api.inbox_message AS (
    message_id     bigint,
    direction      text,          -- in, out
    type           text,
    body           text,
    payload        jsonb,         -- the webhook's message, or the Graph API request sent
    wamid          text,
    context_wamid  text,
    created_at     timestamptz,
    outbound_id    bigint,        -- out: the outbound message, with its kind and state
    kind           text,
    state          text,
    error_code     integer,
    error_detail   text,
    campaign_id    bigint
);

CREATE TYPE api.reply_queued AS (
    outbound_id       bigint,
    message_id        bigint,      -- the inbox row (direction out)
    window_closes_at  timestamptz
);

CREATE TYPE api.llm_job AS (
    msg_id         bigint,         -- the llm_jobs queue message
    number_id      bigint,
    contact_id     bigint,
    message_id     bigint,         -- the inbound message that asked
    system_prompt  text,
    messages       jsonb,          -- [{"role": "user" | "assistant", "content": "..."}], oldest first
    over_limit     boolean         -- the number's or the contact's daily LLM calls are used up: do not call
);

CREATE TYPE api.llm_outcome AS (
    replied    integer,    -- LLM replies queued
    fell_back  integer,    -- fallback texts queued (conversation flagged for a human)
    dropped    integer     -- results for jobs no longer wanted (handed over, window closed, done)
);

-- A reply for core.enqueue_replies: message is the Graph API message object without
-- messaging_product and recipient ({"type": "text", "text": {"body": "..."}}, a template,
-- an interactive message, or for kind 'receipt' {"status": "read", "message_id": wamid}).
CREATE TYPE core.reply_request AS (
    number_id   bigint,
    contact_id  bigint,
    kind        text,
    message     jsonb
);

-- What core.enqueue_replies did with each request, by its position (outbound_id null:
-- refused, the 24-hour window is closed for a free-form message).
CREATE TYPE core.reply_queued AS (
    ord               integer,
    outbound_id       bigint,
    message_id        bigint,
    window_closes_at  timestamptz
);

-- One inbound message of a webhook batch, as core.on_inbound decides about it.
CREATE TYPE core.inbound_step AS (
    message_id   bigint,
    number_id    bigint,
    contact_id   bigint,
    tenant_id    bigint,
    created_at   timestamptz,
    norm         text,          -- the normalised text (core.normalize_text)
    welcome      boolean,       -- the first inbound message of the conversation in 24 hours
    action       text,          -- opt_out, opt_in, auto (bots, LLM), or none
    llm          boolean        -- the LLM may answer if no rule matches
);
