-- Housekeeping jobs. The table is the source of truth; core.sync_cron_jobs() (in
-- db/functions/housekeeping.sql) registers them with pg_cron where the extension is
-- installed in this database (pg_cron lives in one database per cluster).
CREATE TABLE core.cron_jobs (
    job_name  text PRIMARY KEY,
    schedule  text NOT NULL,
    command   text NOT NULL
);

INSERT INTO core.cron_jobs (job_name, schedule, command) VALUES
    ('pgwa_start_scheduled', '* * * * *', 'SELECT core.start_due_campaigns()'),
    ('pgwa_sweep_sends',     '* * * * *', 'SELECT core.sweep_sends()'),
    ('pgwa_retention',       '17 3 * * *', 'SELECT core.run_retention()');
