-- Contacts, campaigns and the messages pgwa sends: one row per outbound message (its
-- state, wamid, attempts, error) and, while it waits, one pgmq message. Campaign counters
-- are moved by the transitions of each batch (aggregated), never per message.

CREATE TABLE core.contacts (
    contact_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        bigint NOT NULL REFERENCES core.tenants ON DELETE CASCADE,
    -- E.164 digits without '+'. Since 2026 Meta may identify a user only by a
    -- business-scoped user id with an empty wa_id, so either key may be absent.
    wa_id            text CONSTRAINT contacts_wa_id_e164 CHECK (wa_id ~ '^[1-9][0-9]{6,14}$'),
    user_id          text,
    name             text,
    profile_name     text,
    attributes       jsonb NOT NULL DEFAULT '{}',
    opted_out        boolean NOT NULL DEFAULT false,
    opted_out_at     timestamptz,
    last_inbound_at  timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT contacts_identified CHECK (wa_id IS NOT NULL OR user_id IS NOT NULL)
);
-- Upsert keys for campaign creation and inbound messages; the first also serves the
-- tenant foreign key.
CREATE UNIQUE INDEX contacts_tenant_wa_id ON core.contacts (tenant_id, wa_id);
CREATE UNIQUE INDEX contacts_tenant_user_id ON core.contacts (tenant_id, user_id) WHERE user_id IS NOT NULL;
-- Read by core.cancel_opted_out (from api.claim_sends): has anyone of the tenant opted
-- out since a running campaign was created? Opt-outs are rare, so the index is small.
CREATE INDEX contacts_opted_out ON core.contacts (tenant_id, opted_out_at) WHERE opted_out;

CREATE TABLE core.campaigns (
    campaign_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id          bigint NOT NULL REFERENCES core.tenants ON DELETE CASCADE,
    number_id          bigint NOT NULL REFERENCES core.wa_numbers ON DELETE CASCADE,
    name               text NOT NULL,
    status             text NOT NULL DEFAULT 'draft'
                       CONSTRAINT campaigns_status_valid CHECK (status IN
                           ('draft', 'scheduled', 'running', 'paused', 'completed', 'cancelled')),
    pause_reason       text,
    scheduled_at       timestamptz,
    started_at         timestamptz,
    completed_at       timestamptz,
    cancelled_at       timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    -- Counters, moved by the transitions of each batch (aggregated), never per message.
    total              integer NOT NULL DEFAULT 0,
    skipped_opted_out  integer NOT NULL DEFAULT 0,
    skipped_invalid    integer NOT NULL DEFAULT 0,
    duplicates_removed integer NOT NULL DEFAULT 0,
    sent               integer NOT NULL DEFAULT 0,
    delivered          integer NOT NULL DEFAULT 0,
    read               integer NOT NULL DEFAULT 0,
    replied            integer NOT NULL DEFAULT 0,
    failed             integer NOT NULL DEFAULT 0,
    cancelled          integer NOT NULL DEFAULT 0,
    -- Messages past sending, whatever the outcome: the campaign completes at total.
    finished           integer NOT NULL DEFAULT 0
);
-- Read by the campaign list (tenant, newest first) and the tenant foreign key.
CREATE INDEX campaigns_tenant_created ON core.campaigns (tenant_id, created_at DESC);
-- Read by api.campaigns: a tenant's campaigns newest first, keyset on campaign_id.
CREATE INDEX campaigns_tenant_campaign ON core.campaigns (tenant_id, campaign_id);
-- Read by claim_sends (running campaigns of a number) and the number foreign key.
CREATE INDEX campaigns_number_status ON core.campaigns (number_id, status);
-- Read by the scheduler job.
CREATE INDEX campaigns_scheduled_due ON core.campaigns (scheduled_at) WHERE status = 'scheduled';

-- The templates a campaign sends, one row a variant; contacts are split across them.
CREATE TABLE core.campaign_templates (
    campaign_id  bigint NOT NULL REFERENCES core.campaigns ON DELETE CASCADE,
    variant      smallint NOT NULL,
    template_id  bigint NOT NULL REFERENCES core.templates,
    -- Body parameter n (1-based) from a CSV column {"column": "x"} or {"value": "constant"}.
    params       jsonb NOT NULL DEFAULT '[]',
    total        integer NOT NULL DEFAULT 0,
    sent         integer NOT NULL DEFAULT 0,
    delivered    integer NOT NULL DEFAULT 0,
    read         integer NOT NULL DEFAULT 0,
    replied      integer NOT NULL DEFAULT 0,
    failed       integer NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, variant)
);
-- Read by the template foreign key (a template in use cannot be deleted).
CREATE INDEX campaign_templates_template_id ON core.campaign_templates (template_id);

-- One row per message pgwa sends; while it waits it is also one pgmq message. It is
-- written 100,000 rows at a time by create_campaign and updated on every send, so its
-- number_id and contact_id carry no foreign key: only pgwa's own functions write them,
-- from a campaign or a conversation that already references both, and the per-row
-- checks cost a third of campaign creation time. The campaign foreign key stays (it
-- cascades a campaign's deletion).
CREATE TABLE core.outbound_messages (
    outbound_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number_id      bigint NOT NULL,
    campaign_id    bigint REFERENCES core.campaigns ON DELETE CASCADE,
    variant        smallint,
    contact_id     bigint NOT NULL,
    -- A read receipt ({"messaging_product": "whatsapp", "status": "read", "message_id":
    -- wamid}) travels the reply queue like a reply, as kind 'receipt'; Meta answers it
    -- {"success": true}, without a wamid (api.report_sends settles it).
    kind           text NOT NULL DEFAULT 'campaign'
                   CONSTRAINT outbound_messages_kind_valid CHECK (kind IN ('campaign', 'reply', 'bot', 'agent', 'llm', 'receipt')),
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
-- Read by the contact's history in the inbox.
CREATE INDEX outbound_messages_contact ON core.outbound_messages (contact_id, outbound_id);

-- Analytics counters beyond the campaign's own, maintained by core.advance_outbound per
-- batch (never per message) so that api.campaign_stats reads a few rows, never the
-- outbound messages or their status events.

-- Per campaign and minute (of the event: accepted, delivered, read, failed, replied).
CREATE TABLE core.campaign_minutes (
    campaign_id  bigint NOT NULL REFERENCES core.campaigns ON DELETE CASCADE,
    minute       timestamptz NOT NULL,
    sent         integer NOT NULL DEFAULT 0,
    delivered    integer NOT NULL DEFAULT 0,
    read         integer NOT NULL DEFAULT 0,
    failed       integer NOT NULL DEFAULT 0,
    replied      integer NOT NULL DEFAULT 0,
    -- Read by api.campaign_stats (a campaign's latest minutes) and the foreign key.
    PRIMARY KEY (campaign_id, minute)
);

-- Final failures per campaign and Meta error code; -2 stands for no code (a network
-- error, or a failed status that carried none), as in core.meta_error.
CREATE TABLE core.campaign_errors (
    campaign_id  bigint NOT NULL REFERENCES core.campaigns ON DELETE CASCADE,
    error_code   integer NOT NULL,
    category     text NOT NULL,
    count        integer NOT NULL DEFAULT 0,
    -- Read by api.campaign_stats and the foreign key.
    PRIMARY KEY (campaign_id, error_code)
);

-- Named return types of contact imports, campaign creation and analytics.
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

CREATE TYPE api.campaign_created AS (
    campaign_id         bigint,
    status              text,
    total               integer,
    skipped_invalid     integer,
    skipped_opted_out   integer,
    duplicates_removed  integer,
    invalid_rows        jsonb
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
