
CREATE SCHEMA api;

CREATE SCHEMA core;

CREATE TABLE core.meta_error_codes (
    code integer NOT NULL,
    title text NOT NULL,
    category text NOT NULL,
    retryable boolean NOT NULL,
    alert boolean NOT NULL,
    pauses_campaign boolean DEFAULT false NOT NULL,
    throttles boolean DEFAULT false NOT NULL,
    CONSTRAINT meta_error_codes_category_valid CHECK ((category = ANY (ARRAY['rate_limit'::text, 'auth'::text, 'template'::text, 'payment'::text, 'recipient'::text, 'policy'::text, 'transient'::text, 'request'::text, 'unknown'::text])))
);

COMMENT ON TABLE core.meta_error_codes IS 'Meta Cloud API error codes: category, retry, alert, pause and throttle policy; code -1 is the default for unknown codes.';

CREATE FUNCTION core.meta_error(p_code integer) RETURNS core.meta_error_codes
    LANGUAGE sql STABLE
    SET search_path TO ''
    AS $$
    SELECT e.* FROM core.meta_error_codes e
    WHERE e.code = coalesce(p_code, -2)
    UNION ALL
    SELECT d.* FROM core.meta_error_codes d
    WHERE d.code = -1 AND NOT EXISTS (SELECT 1 FROM core.meta_error_codes x WHERE x.code = coalesce(p_code, -2))
$$;

CREATE FUNCTION core.run_retention(p_keep interval DEFAULT '30 days'::interval) RETURNS bigint
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $_$
DECLARE
    v_deleted bigint := 0;
    v_rows bigint;
    v_queue text;
BEGIN
    FOR v_queue IN SELECT queue_name FROM pgmq.meta LOOP
        EXECUTE format('DELETE FROM pgmq.%I WHERE archived_at < now() - $1', 'a_' || v_queue) USING p_keep;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_deleted := v_deleted + v_rows;
    END LOOP;
    DELETE FROM core.status_events WHERE received_at < now() - p_keep;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    v_deleted := v_deleted + v_rows;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        DELETE FROM cron.job_run_details WHERE end_time < now() - p_keep;
    END IF;
    RETURN v_deleted;
END
$_$;

CREATE FUNCTION core.sync_cron_jobs() RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_count integer := 0;
    v_job record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RETURN 0;
    END IF;
    FOR v_job IN SELECT job_name, schedule, command FROM core.cron_jobs ORDER BY job_name LOOP
        -- cron.schedule upserts by name; unchanged jobs are left as they are so that
        -- re-applying functions changes nothing.
        IF NOT EXISTS (SELECT 1 FROM cron.job j WHERE j.jobname = v_job.job_name
                       AND j.schedule = v_job.schedule AND j.command = v_job.command) THEN
            PERFORM cron.schedule(v_job.job_name, v_job.schedule, v_job.command);
        END IF;
        v_count := v_count + 1;
    END LOOP;
    PERFORM cron.unschedule(j.jobid) FROM cron.job j
    WHERE j.jobname LIKE 'pgwa\_%' AND j.jobname NOT IN (SELECT job_name FROM core.cron_jobs);
    RETURN v_count;
END
$$;

CREATE TABLE core.api_keys (
    api_key_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    name text NOT NULL,
    key_hash bytea NOT NULL,
    key_prefix text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    revoked_at timestamp with time zone
);

ALTER TABLE core.api_keys ALTER COLUMN api_key_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.api_keys_api_key_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.bot_rules (
    rule_id bigint NOT NULL,
    number_id bigint NOT NULL,
    kind text NOT NULL,
    pattern text,
    priority integer DEFAULT 100 NOT NULL,
    reply jsonb NOT NULL,
    enabled boolean DEFAULT true NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT bot_rules_kind_valid CHECK ((kind = ANY (ARRAY['exact'::text, 'starts_with'::text, 'contains'::text, 'regex'::text, 'welcome'::text, 'default'::text]))),
    CONSTRAINT bot_rules_pattern_present CHECK (((kind = ANY (ARRAY['welcome'::text, 'default'::text])) OR (pattern IS NOT NULL)))
);

ALTER TABLE core.bot_rules ALTER COLUMN rule_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.bot_rules_rule_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.campaign_templates (
    campaign_id bigint NOT NULL,
    variant smallint NOT NULL,
    template_id bigint NOT NULL,
    params jsonb DEFAULT '[]'::jsonb NOT NULL,
    total integer DEFAULT 0 NOT NULL,
    sent integer DEFAULT 0 NOT NULL,
    delivered integer DEFAULT 0 NOT NULL,
    read integer DEFAULT 0 NOT NULL,
    replied integer DEFAULT 0 NOT NULL,
    failed integer DEFAULT 0 NOT NULL
);

CREATE TABLE core.campaigns (
    campaign_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    number_id bigint NOT NULL,
    name text NOT NULL,
    status text DEFAULT 'draft'::text NOT NULL,
    pause_reason text,
    scheduled_at timestamp with time zone,
    started_at timestamp with time zone,
    completed_at timestamp with time zone,
    cancelled_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    total integer DEFAULT 0 NOT NULL,
    skipped_opted_out integer DEFAULT 0 NOT NULL,
    skipped_invalid integer DEFAULT 0 NOT NULL,
    duplicates_removed integer DEFAULT 0 NOT NULL,
    sent integer DEFAULT 0 NOT NULL,
    delivered integer DEFAULT 0 NOT NULL,
    read integer DEFAULT 0 NOT NULL,
    replied integer DEFAULT 0 NOT NULL,
    failed integer DEFAULT 0 NOT NULL,
    cancelled integer DEFAULT 0 NOT NULL,
    CONSTRAINT campaigns_status_valid CHECK ((status = ANY (ARRAY['draft'::text, 'scheduled'::text, 'running'::text, 'paused'::text, 'completed'::text, 'cancelled'::text])))
);

ALTER TABLE core.campaigns ALTER COLUMN campaign_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.campaigns_campaign_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.contacts (
    contact_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    wa_id text,
    user_id text,
    name text,
    profile_name text,
    attributes jsonb DEFAULT '{}'::jsonb NOT NULL,
    opted_out boolean DEFAULT false NOT NULL,
    opted_out_at timestamp with time zone,
    last_inbound_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT contacts_identified CHECK (((wa_id IS NOT NULL) OR (user_id IS NOT NULL))),
    CONSTRAINT contacts_wa_id_e164 CHECK ((wa_id ~ '^[1-9][0-9]{6,14}$'::text))
);

ALTER TABLE core.contacts ALTER COLUMN contact_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.contacts_contact_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.cron_jobs (
    job_name text NOT NULL,
    schedule text NOT NULL,
    command text NOT NULL
);

CREATE TABLE core.error_codes (
    sqlstate text NOT NULL,
    name text NOT NULL,
    http_status smallint NOT NULL,
    meaning text NOT NULL,
    CONSTRAINT error_codes_http_status_valid CHECK (((http_status >= 400) AND (http_status <= 599))),
    CONSTRAINT error_codes_sqlstate_shape CHECK ((sqlstate ~ '^(PW[1-5][0-9]{2}|[0-9A-Z]{5})$'::text))
);

COMMENT ON TABLE core.error_codes IS 'Registry of project SQLSTATEs (PWgnn) with their HTTP status; the API maps errors through it.';

CREATE TABLE core.inbox_messages (
    message_id bigint NOT NULL,
    number_id bigint NOT NULL,
    contact_id bigint NOT NULL,
    direction text NOT NULL,
    wamid text,
    type text NOT NULL,
    body text,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL,
    context_wamid text,
    outbound_id bigint,
    campaign_id bigint,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT inbox_messages_direction_valid CHECK ((direction = ANY (ARRAY['in'::text, 'out'::text])))
);

ALTER TABLE core.inbox_messages ALTER COLUMN message_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.inbox_messages_message_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.notifications (
    notification_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    kind text NOT NULL,
    severity text DEFAULT 'warning'::text NOT NULL,
    message text NOT NULL,
    details jsonb DEFAULT '{}'::jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    read_at timestamp with time zone,
    CONSTRAINT notifications_severity_valid CHECK ((severity = ANY (ARRAY['info'::text, 'warning'::text, 'critical'::text])))
);

ALTER TABLE core.notifications ALTER COLUMN notification_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.notifications_notification_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.outbound_messages (
    outbound_id bigint NOT NULL,
    number_id bigint NOT NULL,
    campaign_id bigint,
    variant smallint,
    contact_id bigint NOT NULL,
    kind text DEFAULT 'campaign'::text NOT NULL,
    state text DEFAULT 'queued'::text NOT NULL,
    attempts smallint DEFAULT 0 NOT NULL,
    wamid text,
    error_code integer,
    error_category text,
    error_detail text,
    queued_at timestamp with time zone DEFAULT now() NOT NULL,
    claimed_at timestamp with time zone,
    accepted_at timestamp with time zone,
    sent_at timestamp with time zone,
    delivered_at timestamp with time zone,
    read_at timestamp with time zone,
    failed_at timestamp with time zone,
    replied_at timestamp with time zone,
    CONSTRAINT outbound_messages_kind_valid CHECK ((kind = ANY (ARRAY['campaign'::text, 'reply'::text, 'bot'::text, 'agent'::text, 'llm'::text]))),
    CONSTRAINT outbound_messages_state_valid CHECK ((state = ANY (ARRAY['queued'::text, 'in_flight'::text, 'accepted'::text, 'sent'::text, 'delivered'::text, 'read'::text, 'failed'::text, 'cancelled'::text])))
);

ALTER TABLE core.outbound_messages ALTER COLUMN outbound_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.outbound_messages_outbound_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    sha256 text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE core.settings (
    singleton boolean DEFAULT true NOT NULL,
    claim_timeout_s integer DEFAULT 30 NOT NULL,
    max_attempts integer DEFAULT 6 NOT NULL,
    retry_backoff_s integer[] DEFAULT '{5,10,20,40,60,120}'::integer[] NOT NULL,
    pace_horizon_ms integer DEFAULT 250 NOT NULL,
    rate_headroom double precision DEFAULT 0.97 NOT NULL,
    graph_api_version text DEFAULT 'v21.0'::text NOT NULL,
    CONSTRAINT settings_claim_timeout_valid CHECK (((claim_timeout_s >= 5) AND (claim_timeout_s <= 3600))),
    CONSTRAINT settings_max_attempts_valid CHECK (((max_attempts >= 1) AND (max_attempts <= 50))),
    CONSTRAINT settings_pace_horizon_valid CHECK (((pace_horizon_ms >= 10) AND (pace_horizon_ms <= 5000))),
    CONSTRAINT settings_rate_headroom_valid CHECK (((rate_headroom > (0)::double precision) AND (rate_headroom <= (1)::double precision))),
    CONSTRAINT settings_singleton CHECK (singleton)
);

CREATE TABLE core.status_events (
    wamid text NOT NULL,
    status text NOT NULL,
    outbound_id bigint,
    occurred_at timestamp with time zone NOT NULL,
    received_at timestamp with time zone DEFAULT now() NOT NULL,
    recipient_id text,
    error_code integer,
    pricing_category text,
    conversation_id text,
    CONSTRAINT status_events_status_valid CHECK ((status = ANY (ARRAY['sent'::text, 'delivered'::text, 'read'::text, 'failed'::text, 'deleted'::text, 'warning'::text, 'played'::text])))
);

CREATE TABLE core.templates (
    template_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    waba_id text NOT NULL,
    meta_template_id text,
    name text NOT NULL,
    language text NOT NULL,
    category text,
    status text DEFAULT 'APPROVED'::text NOT NULL,
    components jsonb DEFAULT '[]'::jsonb NOT NULL,
    body_param_count smallint DEFAULT 0 NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT templates_param_count_valid CHECK ((body_param_count >= 0))
);

ALTER TABLE core.templates ALTER COLUMN template_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.templates_template_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.tenants (
    tenant_id bigint NOT NULL,
    name text NOT NULL,
    opt_out_keywords text[] DEFAULT '{STOP,UNSUBSCRIBE}'::text[] NOT NULL,
    opt_in_keywords text[] DEFAULT '{START}'::text[] NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE core.tenants ALTER COLUMN tenant_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.tenants_tenant_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.wa_numbers (
    number_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    phone_number_id text NOT NULL,
    waba_id text NOT NULL,
    display_phone_number text,
    access_token text NOT NULL,
    app_secret text,
    throughput_mps integer DEFAULT 80 NOT NULL,
    rate_mps double precision DEFAULT 80 NOT NULL,
    send_tat timestamp with time zone DEFAULT now() NOT NULL,
    throttled_at timestamp with time zone,
    quality_rating text,
    llm_enabled boolean DEFAULT false NOT NULL,
    paused_reason text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT wa_numbers_phone_number_id_digits CHECK ((phone_number_id ~ '^[0-9]{1,32}$'::text)),
    CONSTRAINT wa_numbers_rate_positive CHECK ((rate_mps > (0)::double precision)),
    CONSTRAINT wa_numbers_throughput_valid CHECK (((throughput_mps >= 1) AND (throughput_mps <= 1000))),
    CONSTRAINT wa_numbers_waba_id_digits CHECK ((waba_id ~ '^[0-9]{1,32}$'::text))
);

ALTER TABLE core.wa_numbers ALTER COLUMN number_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.wa_numbers_number_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

ALTER TABLE ONLY core.api_keys
    ADD CONSTRAINT api_keys_key_hash_unique UNIQUE (key_hash);

ALTER TABLE ONLY core.api_keys
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (api_key_id);

ALTER TABLE ONLY core.bot_rules
    ADD CONSTRAINT bot_rules_pkey PRIMARY KEY (rule_id);

ALTER TABLE ONLY core.campaign_templates
    ADD CONSTRAINT campaign_templates_pkey PRIMARY KEY (campaign_id, variant);

ALTER TABLE ONLY core.campaigns
    ADD CONSTRAINT campaigns_pkey PRIMARY KEY (campaign_id);

ALTER TABLE ONLY core.contacts
    ADD CONSTRAINT contacts_pkey PRIMARY KEY (contact_id);

ALTER TABLE ONLY core.cron_jobs
    ADD CONSTRAINT cron_jobs_pkey PRIMARY KEY (job_name);

ALTER TABLE ONLY core.error_codes
    ADD CONSTRAINT error_codes_name_key UNIQUE (name);

ALTER TABLE ONLY core.error_codes
    ADD CONSTRAINT error_codes_pkey PRIMARY KEY (sqlstate);

ALTER TABLE ONLY core.inbox_messages
    ADD CONSTRAINT inbox_messages_pkey PRIMARY KEY (message_id);

ALTER TABLE ONLY core.meta_error_codes
    ADD CONSTRAINT meta_error_codes_pkey PRIMARY KEY (code);

ALTER TABLE ONLY core.notifications
    ADD CONSTRAINT notifications_pkey PRIMARY KEY (notification_id);

ALTER TABLE ONLY core.outbound_messages
    ADD CONSTRAINT outbound_messages_pkey PRIMARY KEY (outbound_id);

ALTER TABLE ONLY core.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);

ALTER TABLE ONLY core.settings
    ADD CONSTRAINT settings_pkey PRIMARY KEY (singleton);

ALTER TABLE ONLY core.status_events
    ADD CONSTRAINT status_events_pkey PRIMARY KEY (wamid, status);

ALTER TABLE ONLY core.templates
    ADD CONSTRAINT templates_pkey PRIMARY KEY (template_id);

ALTER TABLE ONLY core.templates
    ADD CONSTRAINT templates_waba_name_language_unique UNIQUE (waba_id, name, language);

ALTER TABLE ONLY core.tenants
    ADD CONSTRAINT tenants_name_unique UNIQUE (name);

ALTER TABLE ONLY core.tenants
    ADD CONSTRAINT tenants_pkey PRIMARY KEY (tenant_id);

ALTER TABLE ONLY core.wa_numbers
    ADD CONSTRAINT wa_numbers_phone_number_id_unique UNIQUE (phone_number_id);

ALTER TABLE ONLY core.wa_numbers
    ADD CONSTRAINT wa_numbers_pkey PRIMARY KEY (number_id);

CREATE INDEX api_keys_tenant_id ON core.api_keys USING btree (tenant_id);

CREATE INDEX bot_rules_number_priority ON core.bot_rules USING btree (number_id, priority, rule_id);

CREATE INDEX campaign_templates_template_id ON core.campaign_templates USING btree (template_id);

CREATE INDEX campaigns_number_status ON core.campaigns USING btree (number_id, status);

CREATE INDEX campaigns_scheduled_due ON core.campaigns USING btree (scheduled_at) WHERE (status = 'scheduled'::text);

CREATE INDEX campaigns_tenant_created ON core.campaigns USING btree (tenant_id, created_at DESC);

CREATE UNIQUE INDEX contacts_tenant_user_id ON core.contacts USING btree (tenant_id, user_id) WHERE (user_id IS NOT NULL);

CREATE UNIQUE INDEX contacts_tenant_wa_id ON core.contacts USING btree (tenant_id, wa_id);

CREATE INDEX inbox_messages_contact ON core.inbox_messages USING btree (contact_id);

CREATE INDEX inbox_messages_conversation ON core.inbox_messages USING btree (number_id, contact_id, created_at DESC, message_id DESC);

CREATE UNIQUE INDEX inbox_messages_wamid ON core.inbox_messages USING btree (wamid) WHERE (wamid IS NOT NULL);

CREATE INDEX notifications_tenant_created ON core.notifications USING btree (tenant_id, created_at DESC);

CREATE INDEX outbound_messages_campaign_state ON core.outbound_messages USING btree (campaign_id, state);

CREATE INDEX outbound_messages_contact ON core.outbound_messages USING btree (contact_id, outbound_id);

CREATE INDEX outbound_messages_number ON core.outbound_messages USING btree (number_id);

CREATE UNIQUE INDEX outbound_messages_wamid ON core.outbound_messages USING btree (wamid) WHERE (wamid IS NOT NULL);

CREATE INDEX status_events_received ON core.status_events USING brin (received_at);

CREATE INDEX status_events_unmatched ON core.status_events USING btree (wamid) WHERE (outbound_id IS NULL);

CREATE INDEX templates_tenant_id ON core.templates USING btree (tenant_id);

CREATE INDEX wa_numbers_tenant_id ON core.wa_numbers USING btree (tenant_id);

ALTER TABLE ONLY core.api_keys
    ADD CONSTRAINT api_keys_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.bot_rules
    ADD CONSTRAINT bot_rules_number_id_fkey FOREIGN KEY (number_id) REFERENCES core.wa_numbers(number_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.campaign_templates
    ADD CONSTRAINT campaign_templates_campaign_id_fkey FOREIGN KEY (campaign_id) REFERENCES core.campaigns(campaign_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.campaign_templates
    ADD CONSTRAINT campaign_templates_template_id_fkey FOREIGN KEY (template_id) REFERENCES core.templates(template_id);

ALTER TABLE ONLY core.campaigns
    ADD CONSTRAINT campaigns_number_id_fkey FOREIGN KEY (number_id) REFERENCES core.wa_numbers(number_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.campaigns
    ADD CONSTRAINT campaigns_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.contacts
    ADD CONSTRAINT contacts_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.inbox_messages
    ADD CONSTRAINT inbox_messages_contact_id_fkey FOREIGN KEY (contact_id) REFERENCES core.contacts(contact_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.inbox_messages
    ADD CONSTRAINT inbox_messages_number_id_fkey FOREIGN KEY (number_id) REFERENCES core.wa_numbers(number_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.notifications
    ADD CONSTRAINT notifications_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.outbound_messages
    ADD CONSTRAINT outbound_messages_campaign_id_fkey FOREIGN KEY (campaign_id) REFERENCES core.campaigns(campaign_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.outbound_messages
    ADD CONSTRAINT outbound_messages_contact_id_fkey FOREIGN KEY (contact_id) REFERENCES core.contacts(contact_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.outbound_messages
    ADD CONSTRAINT outbound_messages_number_id_fkey FOREIGN KEY (number_id) REFERENCES core.wa_numbers(number_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.templates
    ADD CONSTRAINT templates_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.wa_numbers
    ADD CONSTRAINT wa_numbers_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

