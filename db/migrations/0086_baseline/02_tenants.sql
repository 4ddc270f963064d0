-- Tenants and what each owns before any message moves: its WhatsApp numbers, their
-- templates, and the notifications an operator reads. Columns are in the order they
-- were added while the schema grew (a row type's order, which `SELECT *` sees).

CREATE TABLE core.tenants (
    tenant_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name               text NOT NULL CONSTRAINT tenants_name_unique UNIQUE,
    -- Matched against the normalised (upper-cased, trimmed, unaccented) inbound text.
    opt_out_keywords   text[] NOT NULL DEFAULT '{STOP,UNSUBSCRIBE}',
    opt_in_keywords    text[] NOT NULL DEFAULT '{START}',
    created_at         timestamptz NOT NULL DEFAULT now(),
    -- The confirmations sent for the opt-out and opt-in keywords.
    opt_out_reply      text NOT NULL
                       DEFAULT 'You have been unsubscribed and will get no more messages from us. Reply START to subscribe again.',
    opt_in_reply       text NOT NULL
                       DEFAULT 'You are subscribed again. Reply STOP to unsubscribe.'
);

CREATE TABLE core.wa_numbers (
    number_id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id            bigint NOT NULL REFERENCES core.tenants ON DELETE CASCADE,
    phone_number_id      text NOT NULL CONSTRAINT wa_numbers_phone_number_id_unique UNIQUE
                         CONSTRAINT wa_numbers_phone_number_id_digits CHECK (phone_number_id ~ '^[0-9]{1,32}$'),
    waba_id              text NOT NULL CONSTRAINT wa_numbers_waba_id_digits CHECK (waba_id ~ '^[0-9]{1,32}$'),
    display_phone_number text,
    access_token         text NOT NULL,
    app_secret           text,
    -- Meta's throughput for the number: 80 msg/s by default, up to 1,000.
    throughput_mps       integer NOT NULL DEFAULT 80
                         CONSTRAINT wa_numbers_throughput_valid CHECK (throughput_mps BETWEEN 1 AND 1000),
    -- Rate state, persisted so it survives restarts: the AIMD-controlled pace and the
    -- GCRA theoretical arrival time of the next send.
    rate_mps             double precision NOT NULL DEFAULT 80
                         CONSTRAINT wa_numbers_rate_positive CHECK (rate_mps > 0),
    send_tat             timestamptz NOT NULL DEFAULT now(),
    throttled_at         timestamptz,
    quality_rating       text,
    llm_enabled          boolean NOT NULL DEFAULT false,
    paused_reason        text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    -- When the AIMD rate last moved: growth is paced per second, not per report.
    rate_changed_at      timestamptz,
    -- The LLM's system prompt, how many messages of the conversation it sees, and how
    -- many replies it may send one contact a day.
    llm_system_prompt    text,
    llm_daily_limit      integer NOT NULL DEFAULT 20
                         CONSTRAINT wa_numbers_llm_daily_limit_valid CHECK (llm_daily_limit BETWEEN 0 AND 10000),
    llm_context_messages integer NOT NULL DEFAULT 12
                         CONSTRAINT wa_numbers_llm_context_messages_valid CHECK (llm_context_messages BETWEEN 1 AND 100),
    -- Registration proves ownership: what the Graph API answered when the number was last
    -- checked. verified_at stays null for a number an operator registered directly.
    verified_name        text,
    verified_at          timestamptz,
    -- LLM calls the number may make per UTC day across all its contacts
    -- (core.llm_number_usage); a job over the cap goes to a human without calling the model.
    llm_number_daily_limit integer NOT NULL DEFAULT 1000
                         CONSTRAINT wa_numbers_llm_number_daily_limit_valid CHECK (llm_number_daily_limit BETWEEN 0 AND 1000000)
);
-- Read by the foreign key's ON DELETE and by the tenant's number listing.
CREATE INDEX wa_numbers_tenant_id ON core.wa_numbers (tenant_id);

CREATE TABLE core.templates (
    template_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         bigint NOT NULL REFERENCES core.tenants ON DELETE CASCADE,
    waba_id           text NOT NULL,
    meta_template_id  text,
    name              text NOT NULL,
    language          text NOT NULL,
    category          text,
    status            text NOT NULL DEFAULT 'APPROVED',
    components        jsonb NOT NULL DEFAULT '[]',
    body_param_count  smallint NOT NULL DEFAULT 0 CONSTRAINT templates_param_count_valid CHECK (body_param_count >= 0),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- message_template_status_update webhooks may come late or out of order: the time of
    -- the event that set the status, so that older ones are ignored.
    status_event_at   timestamptz,
    CONSTRAINT templates_waba_name_language_unique UNIQUE (waba_id, name, language)
);
-- Read by the foreign key's ON DELETE and by the tenant's template listing.
CREATE INDEX templates_tenant_id ON core.templates (tenant_id);
-- Read by webhook processing, which matches template updates by Meta's template id.
CREATE INDEX templates_meta_template_id ON core.templates (meta_template_id) WHERE meta_template_id IS NOT NULL;

CREATE TABLE core.notifications (
    notification_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Null for an operator's notification: a forged webhook is the platform's business,
    -- and its tenant must not be told whose numbers it named.
    tenant_id        bigint REFERENCES core.tenants ON DELETE CASCADE,
    kind             text NOT NULL,
    severity         text NOT NULL DEFAULT 'warning'
                     CONSTRAINT notifications_severity_valid CHECK (severity IN ('info', 'warning', 'critical')),
    message          text NOT NULL,
    details          jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    read_at          timestamptz,
    -- A key derived from the event that raised it, so that Meta's redelivery of the same
    -- webhook (retried for up to 7 days) raises it only once.
    dedupe_key       text
);
-- Read by the notification list (newest first) and the tenant foreign key.
CREATE INDEX notifications_tenant_created ON core.notifications (tenant_id, created_at DESC);
-- Read by api.notifications: keyset on notification_id per tenant.
CREATE INDEX notifications_tenant_notification ON core.notifications (tenant_id, notification_id);
-- Read by INSERT ... ON CONFLICT DO NOTHING / DO UPDATE when a notification is raised
-- with a key; NULLS NOT DISTINCT so that operator notifications dedupe too.
CREATE UNIQUE INDEX notifications_tenant_dedupe_key ON core.notifications (tenant_id, dedupe_key)
    NULLS NOT DISTINCT WHERE dedupe_key IS NOT NULL;

-- Named return types of the api functions of this area (api.* never returns anonymous
-- records). None carries an access token or an app secret except api.graph_credentials,
-- which the server uses for its own Graph API calls and never returns to a client.
CREATE TYPE api.number AS (
    number_id             bigint,
    phone_number_id       text,
    waba_id               text,
    display_phone_number  text,
    throughput_mps        integer,
    rate_mps              double precision,
    quality_rating        text,
    paused_reason         text,
    has_app_secret        boolean,
    created_at            timestamptz
);

CREATE TYPE api.graph_credentials AS (
    number_id          bigint,
    phone_number_id    text,
    waba_id            text,
    access_token       text,
    graph_api_version  text
);

CREATE TYPE api.template AS (
    template_id       bigint,
    waba_id           text,
    name              text,
    language          text,
    category          text,
    status            text,
    body_param_count  smallint,
    components        jsonb,
    meta_template_id  text,
    updated_at        timestamptz
);

CREATE TYPE api.templates_synced AS (
    received  integer,    -- templates in the pages fetched
    stored    integer,    -- inserted or changed
    unchanged integer
);

CREATE TYPE api.notification AS (
    notification_id  bigint,
    kind             text,
    severity         text,
    message          text,
    details          jsonb,
    created_at       timestamptz,
    read_at          timestamptz
);
