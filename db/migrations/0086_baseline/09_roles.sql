-- The roles clients take: pgwa_api for the HTTP API, pgwa_worker for the workers.
-- Functions in api run as their owner (SECURITY DEFINER), so these roles need no
-- privilege on any table: they call the functions named in each function file's GRANT,
-- and nothing else; nothing is executable by PUBLIC. The login roles the services
-- connect as are members of these (deploy/logins.sql).
--
-- Every statement here may run again on a database that already has it (a test runs
-- this file on each clone of its template database; see below).

-- Roles are cluster-wide, so an existing one is left as it is.
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

-- No temporary objects for the roles clients take. A SECURITY DEFINER function runs its
-- statements as the owner, and PostgreSQL looks relation and type names up in the
-- session's pg_temp schema first even under search_path = '': a caller that may create
-- temporary objects can put a table, view, type or cast there that the owner's code then
-- uses, running the caller's code with the owner's rights. (api.stage_contacts creates
-- its staging table as the owner and opens it to pgwa_api for INSERT alone.) Database
-- privileges are per database and not copied by CREATE DATABASE ... TEMPLATE, so this
-- holds for the database migrate runs on, and a clone needs it again.
DO $$
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC, pgwa_api, pgwa_worker', current_database());
END
$$;
