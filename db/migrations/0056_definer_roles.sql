-- Functions in api run as their owner (SECURITY DEFINER), so the roles clients take need
-- no privilege on any table: they call functions and nothing else. The one exception,
-- api.stage_contacts, creates the caller's own temporary staging table.
DO $$
BEGIN
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO pgwa_api', current_database());
END
$$;
