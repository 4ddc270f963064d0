-- Named return types of the JSON API's functions (api.* never returns anonymous records).
-- None carries an access token or an app secret except api.graph_credentials, which the
-- server uses for its own Graph API calls and never returns to a client.

CREATE TYPE api.api_key_created AS (
    api_key_id  bigint,
    tenant_id   bigint,
    name        text,
    key         text,      -- shown this once; only its sha256 is stored
    key_prefix  text,
    created_at  timestamptz
);

CREATE TYPE api.api_key AS (
    api_key_id  bigint,
    name        text,
    key_prefix  text,
    created_at  timestamptz,
    revoked_at  timestamptz
);

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

CREATE TYPE api.contacts_imported AS (
    staged              integer,
    inserted            integer,
    updated             integer,
    unchanged           integer,
    skipped_invalid     integer,
    duplicates_removed  integer,
    invalid_rows        jsonb
);

CREATE TYPE api.contact AS (
    contact_id       bigint,
    wa_id            text,
    user_id          text,
    name             text,
    profile_name     text,
    attributes       jsonb,
    opted_out        boolean,
    opted_out_at     timestamptz,
    last_inbound_at  timestamptz,
    created_at       timestamptz
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

CREATE TYPE api.campaign_summary AS (
    campaign_id         bigint,
    name                text,
    status              text,
    number_id           bigint,
    pause_reason        text,
    scheduled_at        timestamptz,
    started_at          timestamptz,
    completed_at        timestamptz,
    cancelled_at        timestamptz,
    created_at          timestamptz,
    total               integer,
    queued              integer,   -- not yet past sending: waiting or in flight
    sent                integer,
    delivered           integer,
    read                integer,
    replied             integer,
    failed              integer,
    cancelled           integer,
    skipped_opted_out   integer,
    skipped_invalid     integer,
    duplicates_removed  integer,
    progress            double precision   -- (finished + cancelled) / total
);

CREATE TYPE api.campaign_stats AS (
    campaign_id         bigint,
    name                text,
    status              text,
    number_id           bigint,
    pause_reason        text,
    created_at          timestamptz,
    started_at          timestamptz,
    completed_at        timestamptz,
    total               integer,
    queued              integer,
    sent                integer,
    delivered           integer,
    read                integer,
    replied             integer,
    failed              integer,
    cancelled           integer,
    skipped_opted_out   integer,
    skipped_invalid     integer,
    duplicates_removed  integer,
    progress            double precision,
    delivery_rate       double precision,  -- delivered / sent
    read_rate           double precision,  -- read / delivered
    reply_rate          double precision,  -- replied / delivered
    failure_rate        double precision,  -- failed / finished
    templates           jsonb,   -- per variant: template, counters, rates
    errors              jsonb,   -- per Meta error code: category, title, count
    errors_by_category  jsonb,
    timeline            jsonb    -- per minute: sent, delivered, read, failed, replied
);

CREATE TYPE api.counter_drift AS (
    scope       text,     -- campaign, template, error, timeline
    key         text,     -- the variant, the error code, or '' for the campaign
    counter     text,
    maintained  bigint,
    actual      bigint,
    drift       bigint,   -- maintained - actual
    fixed       boolean
);

CREATE TYPE api.function_doc AS (
    name         text,
    arguments    text,
    returns      text,
    description  text
);
