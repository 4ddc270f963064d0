-- The send path: api.claim_sends hands a worker ready-to-POST requests, api.report_sends
-- takes the results back (db/functions/sending.sql).

-- Per number and minute, what the send path saw: the real error rate and the
-- throughput history for metrics. One row a number a minute, moved once per report.
CREATE TABLE core.send_minutes (
    number_id  bigint NOT NULL REFERENCES core.wa_numbers ON DELETE CASCADE,
    minute     timestamptz NOT NULL,
    accepted   integer NOT NULL DEFAULT 0,
    retried    integer NOT NULL DEFAULT 0,
    failed     integer NOT NULL DEFAULT 0,
    throttled  integer NOT NULL DEFAULT 0,
    PRIMARY KEY (number_id, minute)
);

CREATE TYPE api.send_request AS (
    outbound_id      bigint,
    queue_name       text,
    msg_id           bigint,
    phone_number_id  text,
    access_token     text,
    path             text,
    body             jsonb,
    send_at          timestamptz,
    attempt          integer
);

CREATE TYPE api.report_result AS (
    accepted  integer,
    retried   integer,
    failed    integer,
    paused    integer,
    ignored   integer
);

-- What a worker learns from the database about Meta's pacing rules (api.send_policy), so
-- that no rule is copied in Python: which error codes throttle a number, and for how long.
CREATE TYPE api.send_policy AS (
    throttle_hold_ms  integer,
    throttle_codes    integer[]
);

-- A queue message claimed by api.claim_sends, before it is returned. It keeps the whole
-- pgmq message: campaign messages are rendered when claimed, not when queued (see
-- core.read_queue).
CREATE TYPE core.claimed AS (queue_name text, msg_id bigint, read_ct integer, outbound_id bigint, message jsonb);
