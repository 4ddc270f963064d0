-- Named types of the inbox, bot and LLM functions (api.* never returns anonymous records).

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
    number_id         bigint,
    llm_enabled       boolean,
    system_prompt     text,
    daily_limit       integer,
    context_messages  integer
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
    over_limit     boolean         -- the contact's daily LLM replies are used up: do not call
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
