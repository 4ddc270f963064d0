-- Named return types of the send path and campaign creation (no anonymous records in api).
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

CREATE TYPE api.campaign_created AS (
    campaign_id         bigint,
    status              text,
    total               integer,
    skipped_invalid     integer,
    skipped_opted_out   integer,
    duplicates_removed  integer,
    invalid_rows        jsonb
);

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
