-- The roles clients take: the HTTP API and the workers. Functions in api are executable
-- by the roles named in their GRANT, never by PUBLIC. Roles are cluster-wide, so an
-- existing one is left as it is.
DO $$
BEGIN
    CREATE ROLE pgwa_api NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;
END
$$;
DO $$
BEGIN
    CREATE ROLE pgwa_worker NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;
END
$$;
ALTER DEFAULT PRIVILEGES IN SCHEMA api REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA core REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
GRANT USAGE ON SCHEMA api TO pgwa_api, pgwa_worker;
