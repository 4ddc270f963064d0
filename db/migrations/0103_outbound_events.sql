-- Outbound events (issue 14, item 6): a tenant registers endpoints (a URL, a secret and the
-- event types it wants); a change that causes an event queues it in the same transaction
-- (statement-level triggers over the changed rows, db/functions/events.sql), and the
-- worker delivers it signed (worker/events.py), retries with back-off for at least
-- core.settings.event_retry_window_s, then dead-letters it; a tenant can replay it.
--
--   change ──trigger──> core.events (one row an event) + core.event_deliveries (one an
--   endpoint) + one pgmq message on the endpoint's own queue (ev_<endpoint_id>)
--
-- One queue per endpoint is its lane: a slow or dead endpoint's backlog never sits in
-- front of another endpoint's events, and the claim takes at most a lane's share.

-- The event types a tenant may subscribe to; endpoint.test is queued only by
-- api.test_event_endpoint, to the one endpoint tested.
CREATE TABLE core.event_types (
    event_type    text PRIMARY KEY,
    subscribable  boolean NOT NULL DEFAULT true,
    meaning       text NOT NULL
);
INSERT INTO core.event_types (event_type, subscribable, meaning) VALUES
    ('message.status',     true,  'An outbound message moved to accepted, sent, delivered, read or failed.'),
    ('message.inbound',    true,  'A contact sent a message to one of the tenant''s numbers.'),
    ('campaign.completed', true,  'A campaign finished: every message is past sending.'),
    ('campaign.paused',    true,  'A campaign was paused, by an operator or by an error that pauses it.'),
    ('contact.opted_out',  true,  'A contact opted out (a keyword, the API or the CLI).'),
    ('contact.opted_in',   true,  'A contact opted back in.'),
    ('template.status',    true,  'Meta changed a template''s status (APPROVED, REJECTED, PAUSED, ...).'),
    ('endpoint.test',      false, 'A test event, sent to one endpoint by POST /v1/endpoints/{id}/test.');

CREATE TABLE core.event_endpoints (
    endpoint_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     bigint NOT NULL REFERENCES core.tenants ON DELETE CASCADE,
    url           text NOT NULL CONSTRAINT event_endpoints_url_valid
                  CHECK (url ~ '^https?://[^[:space:]/?#]+' AND length(url) <= 2000),
    -- Signs the deliveries (HMAC-SHA256). Stored as a number's access token is: a column
    -- no client role can read; returned once by api.create_event_endpoint, and afterwards
    -- only to the worker, by api.claim_events.
    secret        text NOT NULL,
    description   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- The lane's state. After a failed delivery the endpoint is tried again (one event,
    -- as a probe) at retry_at, after a back-off that grows with its consecutive failures;
    -- a success clears both. claimed_at rotates the claim's order across endpoints.
    failures      integer NOT NULL DEFAULT 0,
    retry_at      timestamptz,
    claimed_at    timestamptz
);
-- Read by the foreign key's ON DELETE and by the tenant's endpoint listing.
CREATE INDEX event_endpoints_tenant_id ON core.event_endpoints (tenant_id);

-- Which endpoints want which events. The triggers ask this table first (an index probe
-- on event_type): with no subscriber for a type, a change costs no more than that.
CREATE TABLE core.event_subscriptions (
    event_type   text NOT NULL REFERENCES core.event_types,
    tenant_id    bigint NOT NULL,
    endpoint_id  bigint NOT NULL REFERENCES core.event_endpoints ON DELETE CASCADE,
    PRIMARY KEY (event_type, tenant_id, endpoint_id)
);
-- Read by the endpoint foreign key's ON DELETE and by the endpoint listing.
CREATE INDEX event_subscriptions_endpoint_id ON core.event_subscriptions (endpoint_id);

-- One row an event. The body delivered is built from it when claimed
-- ({"id", "type", "created_at", "data"}, jsonb's canonical text), so a replay sends the
-- same bytes. No foreign key to tenants: rows arrive thousands a second from triggers
-- on the send path, and core.prune_events removes a deleted tenant's rows.
CREATE TABLE core.events (
    event_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL,
    event_type  text NOT NULL,
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- Read by api.outbound_events (a tenant's events, newest first, keyset on event_id).
CREATE INDEX events_tenant_event ON core.events (tenant_id, event_id);

-- One row an event and endpoint: the delivery's state. pending until delivered; dead
-- once it failed after retry_from + core.settings.event_retry_window_s (a replay moves
-- retry_from to the replay's time and makes it pending again).
CREATE TABLE core.event_deliveries (
    endpoint_id       bigint NOT NULL REFERENCES core.event_endpoints ON DELETE CASCADE,
    event_id          bigint NOT NULL REFERENCES core.events ON DELETE CASCADE,
    status            text NOT NULL DEFAULT 'pending'
                      CONSTRAINT event_deliveries_status_valid CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts          integer NOT NULL DEFAULT 0,
    retry_from        timestamptz NOT NULL DEFAULT now(),
    next_attempt_at   timestamptz,
    last_attempt_at   timestamptz,
    last_http_status  smallint,
    last_error        text,
    delivered_at      timestamptz,
    dead_at           timestamptz,
    replays           integer NOT NULL DEFAULT 0,
    -- Read by api.outbound_events for one endpoint, and by the report's dead-lettering.
    PRIMARY KEY (endpoint_id, event_id)
);
-- Read by the event foreign key's ON DELETE, by the tenant-wide listing and by replays.
CREATE INDEX event_deliveries_event_id ON core.event_deliveries (event_id);

ALTER TABLE core.settings
    ADD COLUMN event_retry_window_s integer NOT NULL DEFAULT 86400
        CONSTRAINT settings_event_retry_window_valid CHECK (event_retry_window_s BETWEEN 60 AND 2592000),
    ADD COLUMN event_backoff_s integer[] NOT NULL DEFAULT '{5,15,30,60,120,300,600,1200,1800,3600}',
    ADD COLUMN event_timeout_ms integer NOT NULL DEFAULT 10000
        CONSTRAINT settings_event_timeout_valid CHECK (event_timeout_ms BETWEEN 100 AND 60000),
    ADD COLUMN event_lane_concurrency integer NOT NULL DEFAULT 16
        CONSTRAINT settings_event_lane_concurrency_valid CHECK (event_lane_concurrency BETWEEN 1 AND 256),
    ADD COLUMN event_allow_private_urls boolean NOT NULL DEFAULT false,
    ADD COLUMN event_retention_days integer NOT NULL DEFAULT 7
        CONSTRAINT settings_event_retention_valid CHECK (event_retention_days BETWEEN 1 AND 365);
COMMENT ON COLUMN core.settings.event_retry_window_s IS
    'An outbound event is retried for this long (from its creation or replay) before it is dead-lettered.';
COMMENT ON COLUMN core.settings.event_backoff_s IS
    'Seconds before the n-th retry of an outbound event (and of a failing endpoint''s probe); the last repeats.';
COMMENT ON COLUMN core.settings.event_timeout_ms IS
    'How long the worker waits for an endpoint''s answer; a slower one is a failed attempt.';
COMMENT ON COLUMN core.settings.event_lane_concurrency IS
    'Deliveries one worker has in flight to one endpoint at most; a claim takes no more than four times as many.';
COMMENT ON COLUMN core.settings.event_allow_private_urls IS
    'Allow endpoints on loopback, private and link-local addresses (local development and tests only).';
COMMENT ON COLUMN core.settings.event_retention_days IS
    'Delivered and dead events are deleted this many days after they were created.';

INSERT INTO core.error_codes (sqlstate, name, http_status, meaning) VALUES
    ('PW230', 'endpoint_not_found', 404, 'No such event endpoint for this tenant.'),
    ('PW231', 'event_not_found',    404, 'No such outbound event for this tenant.');

INSERT INTO core.cron_jobs (job_name, schedule, command) VALUES
    ('pgwa_events_retention', '41 3 * * *', 'SELECT core.prune_events()');

-- Named return types of the api functions in db/functions/events.sql. Only
-- api.event_endpoint_created (the creation's answer, once) and api.claimed_event (the
-- worker's) carry the secret.
CREATE TYPE api.event_endpoint AS (
    endpoint_id   bigint,
    url           text,
    event_types   text[],
    description   text,
    created_at    timestamptz,
    failures      integer,
    retry_at      timestamptz,
    pending       bigint
);

CREATE TYPE api.event_endpoint_created AS (
    endpoint_id   bigint,
    url           text,
    event_types   text[],
    description   text,
    created_at    timestamptz,
    secret        text      -- shown this once
);

CREATE TYPE api.outbound_event AS (
    event_id          bigint,
    event_type        text,
    created_at        timestamptz,
    endpoint_id       bigint,
    status            text,
    attempts          integer,
    next_attempt_at   timestamptz,
    last_attempt_at   timestamptz,
    last_http_status  smallint,
    last_error        text,
    delivered_at      timestamptz,
    dead_at           timestamptz,
    replays           integer,
    data              jsonb
);

CREATE TYPE api.claimed_event AS (
    msg_id       bigint,
    endpoint_id  bigint,
    event_id     bigint,
    event_type   text,
    attempt      integer,      -- 1 for the first try
    url          text,
    secret       text,
    body         text
);

CREATE TYPE api.events_reported AS (
    delivered  integer,
    retried    integer,
    dead       integer
);

CREATE TYPE api.event_policy AS (
    timeout_ms          integer,
    lane_concurrency    integer,
    allow_private_urls  boolean
);
