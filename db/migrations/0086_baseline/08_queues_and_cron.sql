-- The pgmq queues that exist once per installation, and the housekeeping jobs.

-- Per-campaign (c_<id>) and per-number reply (r_<id>) queues are created by the
-- functions that create campaigns and numbers.
SELECT pgmq.create('webhooks');
SELECT pgmq.create('webhooks_dead');
SELECT pgmq.create('llm_jobs');

-- Wake the webhook worker when payloads arrive: pgmq's insert trigger sends NOTIFY on
-- channel "pgmq.q_webhooks.INSERT", at most once per 50 ms however many rows arrive
-- (the API inserts many payloads per commit). A notification the throttle swallows is
-- caught by the worker's short re-check after each busy spell (worker/webhooks.py).
-- The throttle row lives in an UNLOGGED table that a crash empties; api.process_webhooks
-- puts it back when it finds the queue idle.
SELECT pgmq.enable_notify_insert('webhooks', 50);

-- Housekeeping jobs. The table is the source of truth; core.sync_cron_jobs() (in
-- db/functions/housekeeping.sql) registers them with pg_cron where the extension is
-- installed in this database (pg_cron lives in one database per cluster), each time
-- the function files are applied.
CREATE TABLE core.cron_jobs (
    job_name  text PRIMARY KEY,
    schedule  text NOT NULL,
    command   text NOT NULL
);

INSERT INTO core.cron_jobs (job_name, schedule, command) VALUES
    ('pgwa_start_scheduled', '* * * * *', 'SELECT core.start_due_campaigns()'),
    ('pgwa_sweep_sends',     '* * * * *', 'SELECT core.sweep_sends()'),
    ('pgwa_retention',       '17 3 * * *', 'SELECT core.run_retention()'),
    -- Notifications (read ones after 30 days, any after 180) and the per-number send
    -- minutes behind /metrics (30 days); the functions live in db/functions/metrics.sql.
    ('pgwa_notifications_retention', '23 3 * * *', 'SELECT core.prune_notifications()'),
    ('pgwa_send_minutes_retention',  '29 3 * * *', 'SELECT core.prune_send_minutes()');
