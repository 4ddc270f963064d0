-- Retention of what the API and metrics read: notifications (read ones after 30 days,
-- any after 180) and the per-number send minutes behind /metrics (30 days). The
-- functions live in db/functions/metrics.sql.
INSERT INTO core.cron_jobs (job_name, schedule, command) VALUES
    ('pgwa_notifications_retention', '23 3 * * *', 'SELECT core.prune_notifications()'),
    ('pgwa_send_minutes_retention',  '29 3 * * *', 'SELECT core.prune_send_minutes()');
