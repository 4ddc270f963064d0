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
--
-- Status events go by whole partitions (0114): every daily partition that ends before
-- now() - p_keep is dropped, and the default partition (times outside the premade
-- ones) is emptied of rows that old.
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
    v_deleted := v_deleted + core.drop_old_partitions('core.status_events', p_keep);
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        DELETE FROM cron.job_run_details WHERE end_time < now() - p_keep;
    END IF;
    RETURN v_deleted;
END
$$;

-- Drop the partitions of p_parent (a pg_partman time-partitioned table) that end before
-- now() - p_keep, and delete rows that old from its default partition. Returns the rows
-- removed (a dropped partition's as the planner's statistics count them).
CREATE OR REPLACE FUNCTION core.drop_old_partitions(p_parent text, p_keep interval) RETURNS bigint
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_control text;
    v_removed bigint := 0;
    v_rows bigint;
    v_child record;
BEGIN
    SELECT c.control INTO v_control FROM partman.part_config c WHERE c.parent_table = p_parent;
    IF v_control IS NULL THEN
        RAISE EXCEPTION 'core.drop_old_partitions: % is not partitioned by pg_partman', p_parent
            USING ERRCODE = 'undefined_table';
    END IF;
    FOR v_child IN
        SELECT format('%I.%I', p.partition_schemaname, p.partition_tablename) AS name
        FROM partman.show_partitions(p_parent) p
        CROSS JOIN LATERAL partman.show_partition_info(p.partition_schemaname || '.' || p.partition_tablename,
                                                       p_parent_table => p_parent) i
        WHERE i.child_end_time <= now() - p_keep
    LOOP
        -- The planner's count (autovacuum analyzes a partition as it fills): counting a
        -- day of statuses at full rate would read it all. Never analyzed: counted.
        SELECT c.reltuples::bigint INTO v_rows FROM pg_catalog.pg_class c WHERE c.oid = v_child.name::regclass;
        IF v_rows < 0 THEN
            EXECUTE format('SELECT count(*) FROM %s', v_child.name) INTO v_rows;
        END IF;
        EXECUTE format('DROP TABLE %s', v_child.name);
        v_removed := v_removed + v_rows;
    END LOOP;
    IF to_regclass(p_parent || '_default') IS NOT NULL THEN
        EXECUTE format('DELETE FROM %s WHERE %I < now() - $1', p_parent || '_default', v_control) USING p_keep;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_removed := v_removed + v_rows;
    END IF;
    RETURN v_removed;
END
$$;

-- pg_partman's maintenance of the partitioned tables (0114), hourly from pg_cron: makes
-- the partitions ahead of the clock (premake). A row that came with a time beyond them
-- sits in the default partition, where it would stop the partition of its day from
-- being made: such rows are first moved into partitions of their own.
CREATE OR REPLACE FUNCTION core.run_partition_maintenance() RETURNS void
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_table record;
    v_ahead boolean;
BEGIN
    FOR v_table IN SELECT c.parent_table, c.control FROM partman.part_config c ORDER BY 1 LOOP
        IF to_regclass(v_table.parent_table || '_default') IS NOT NULL THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE %I >= now())',
                           v_table.parent_table || '_default', v_table.control) INTO v_ahead;
            IF v_ahead THEN
                PERFORM partman.partition_data_time(v_table.parent_table, p_batch_count => 1000, p_analyze => false);
            END IF;
        END IF;
    END LOOP;
    PERFORM partman.run_maintenance(p_analyze => false, p_jobmon => false);
END
$$;
