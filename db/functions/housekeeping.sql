-- Housekeeping: pg_cron registration and retention.

-- Register core.cron_jobs with pg_cron, where pg_cron is installed in this database
-- (it lives in one database per cluster: cron.database_name). Returns the job count.
CREATE OR REPLACE FUNCTION core.sync_cron_jobs() RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_count integer := 0;
    v_job record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RETURN 0;
    END IF;
    FOR v_job IN SELECT job_name, schedule, command FROM core.cron_jobs ORDER BY job_name LOOP
        -- cron.schedule upserts by name; unchanged jobs are left as they are so that
        -- re-applying functions changes nothing.
        IF NOT EXISTS (SELECT 1 FROM cron.job j WHERE j.jobname = v_job.job_name
                       AND j.schedule = v_job.schedule AND j.command = v_job.command) THEN
            PERFORM cron.schedule(v_job.job_name, v_job.schedule, v_job.command);
        END IF;
        v_count := v_count + 1;
    END LOOP;
    PERFORM cron.unschedule(j.jobid) FROM cron.job j
    WHERE j.jobname LIKE 'pgwa\_%' AND j.jobname NOT IN (SELECT job_name FROM core.cron_jobs);
    RETURN v_count;
END
$$;

-- Drop what is old: pgmq archives of handled webhooks and finished sends, status events
-- of messages long final, pg_cron's own run log. Returns the rows deleted.
CREATE OR REPLACE FUNCTION core.run_retention(p_keep interval DEFAULT '30 days') RETURNS bigint
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_deleted bigint := 0;
    v_rows bigint;
    v_queue text;
BEGIN
    FOR v_queue IN SELECT queue_name FROM pgmq.meta LOOP
        EXECUTE format('DELETE FROM pgmq.%I WHERE archived_at < now() - $1', 'a_' || v_queue) USING p_keep;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_deleted := v_deleted + v_rows;
    END LOOP;
    DELETE FROM core.status_events WHERE received_at < now() - p_keep;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    v_deleted := v_deleted + v_rows;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        DELETE FROM cron.job_run_details WHERE end_time < now() - p_keep;
    END IF;
    RETURN v_deleted;
END
$$;
