-- The roles clients take may not create temporary objects. A SECURITY DEFINER function
-- runs its statements as the owner, and PostgreSQL looks relation and type names up in
-- the session's pg_temp schema first even under search_path = '': a caller that may
-- create temporary objects can put a table, view, type or cast there that the owner's
-- code then uses, running the caller's code with the owner's rights. So TEMPORARY is
-- revoked from PUBLIC and from pgwa_api (0056 had granted it for the staging table,
-- which api.stage_contacts now creates as the owner and opens to pgwa_api for INSERT
-- alone). Database privileges are per database and not copied by CREATE DATABASE ...
-- TEMPLATE, so this is applied to each database migrate runs on.
DO $$
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC, pgwa_api, pgwa_worker', current_database());
END
$$;
