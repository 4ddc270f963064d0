-- Months of data (issue 17): the tables that grow with traffic are partitioned by time
-- with pg_partman (Debian's postgresql-15-partman, installed by scripts/db.sh), kept
-- ahead by core.run_partition_maintenance() from pg_cron, and retained by dropping whole
-- partitions (core.run_retention) instead of DELETE.
--
-- core.status_events is partitioned by occurred_at, daily. occurred_at is Meta's own
-- timestamp of the status, the same in every redelivery of it, so the primary key
-- (wamid, status, number_id, occurred_at) still stores a status once whatever the
-- redelivery (Meta retries for up to 7 days, which the retention of 30 days covers).
-- A row whose time is outside the premade partitions (a status older than the oldest
-- partition, a garbled timestamp) lands in the default partition: never an error on the
-- hot path. Lookups by wamid alone probe each partition's small partial index of
-- unmatched events (status_events_unmatched); with 30 days kept that is about 38 probes.
--
-- core.outbound_messages and core.inbox_messages stay unpartitioned for now (see
-- docs/scaling.md): their ids are referenced by foreign keys and read by id alone on the
-- send, report and webhook paths.

CREATE SCHEMA IF NOT EXISTS partman;
CREATE EXTENSION IF NOT EXISTS pg_partman SCHEMA partman;

-- The table as it was, renamed with its constraints and indexes so that the new ones
-- can take their names.
ALTER TABLE core.status_events RENAME TO status_events_unpartitioned;
ALTER TABLE core.status_events_unpartitioned RENAME CONSTRAINT status_events_pkey TO status_events_unpartitioned_pkey;
ALTER TABLE core.status_events_unpartitioned RENAME CONSTRAINT status_events_status_valid TO status_events_unpartitioned_status_valid;
ALTER INDEX core.status_events_unmatched RENAME TO status_events_unpartitioned_unmatched;
ALTER INDEX core.status_events_received RENAME TO status_events_unpartitioned_received;

-- Same columns in the same order (row types and SELECT * see them).
CREATE TABLE core.status_events (
    wamid         text NOT NULL,
    status        text NOT NULL
                  CONSTRAINT status_events_status_valid CHECK (status IN ('sent', 'delivered', 'read', 'failed', 'deleted', 'warning', 'played')),
    -- Null while the wamid is unknown (its send not reported yet); matched later.
    outbound_id   bigint,
    -- Meta's timestamp of the status: the partition key (daily partitions).
    occurred_at   timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    recipient_id  text,
    error_code    integer,
    pricing_category text,
    conversation_id  text,
    -- The number the event came through (see 0086_baseline/06_webhooks.sql). No foreign
    -- key: numbers are never deleted, and the hot insert stays cheap.
    number_id     bigint NOT NULL DEFAULT 0,
    -- Once per (wamid, status) and number: occurred_at is the same in every redelivery.
    CONSTRAINT status_events_pkey PRIMARY KEY (wamid, status, number_id, occurred_at)
) PARTITION BY RANGE (occurred_at);
-- Read when a report_sends brings a wamid whose statuses arrived first (one probe per
-- partition, each index holding only the few unmatched events).
CREATE INDEX status_events_unmatched ON core.status_events (wamid) WHERE outbound_id IS NULL;

COMMENT ON TABLE core.status_events IS
    'Every status Meta reported, once per (wamid, status) and number; partitioned daily by occurred_at with pg_partman (0114), retained by dropping partitions (core.run_retention).';

-- Daily partitions from the oldest day retention keeps (30 days by default) or the
-- oldest row, whichever is later, to a week ahead, plus the default partition.
SELECT partman.create_parent(
    p_parent_table => 'core.status_events',
    p_control => 'occurred_at',
    p_type => 'native',
    p_interval => 'daily',
    p_premake => 7,
    p_start_partition => to_char(greatest(
        date_trunc('day', now() - interval '31 days'),
        coalesce((SELECT date_trunc('day', min(occurred_at)) FROM core.status_events_unpartitioned),
                 date_trunc('day', now()))), 'YYYY-MM-DD HH24:MI:SS'),
    p_jobmon => false);
-- Partitions are made ahead of the clock even when no row came lately (the default is
-- to make them only ahead of the newest row).
UPDATE partman.part_config SET infinite_time_partitions = true
WHERE parent_table = 'core.status_events';

-- The rows: into their partitions (older than the first one: the default partition,
-- which retention empties).
INSERT INTO core.status_events (wamid, status, outbound_id, occurred_at, received_at, recipient_id,
                                error_code, pricing_category, conversation_id, number_id)
SELECT wamid, status, outbound_id, occurred_at, received_at, recipient_id,
       error_code, pricing_category, conversation_id, number_id
FROM core.status_events_unpartitioned;

DROP TABLE core.status_events_unpartitioned;

-- Partition maintenance (premake ahead of the clock), hourly; the function lives in
-- db/functions/housekeeping.sql. core.sync_cron_jobs registers it with pg_cron.
INSERT INTO core.cron_jobs (job_name, schedule, command) VALUES
    ('pgwa_partition_maintenance', '7 * * * *', 'SELECT core.run_partition_maintenance()');
