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
