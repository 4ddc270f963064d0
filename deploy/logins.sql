-- The login roles the API and the workers connect as: members of pgwa_api and
-- pgwa_worker (made by db/migrations/0086_baseline/09_roles.sql), never the owner or a superuser. Run by
-- docker-compose's `logins` service after migrate, as the owner, with psql variables
-- api_password and worker_password:
--   psql -v ON_ERROR_STOP=1 -v api_password=... -v worker_password=... -f deploy/logins.sql
-- Re-running it sets the passwords again. Session limits (statement_timeout and, for the
-- API, idle_in_transaction_session_timeout) are set by the processes on each connection
-- (PGWA_STATEMENT_TIMEOUT_MS, PGWA_IDLE_TX_TIMEOUT_MS): ALTER ROLE ... SET on the group
-- roles would not reach their members, since settings bind to the login role alone.
\set ON_ERROR_STOP on
SELECT format(CASE WHEN EXISTS (SELECT FROM pg_roles WHERE rolname = r.name)
                   THEN 'ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L'
                   ELSE 'CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L' END,
              r.name, r.password)
FROM (VALUES ('pgwa_api_login', :'api_password'), ('pgwa_worker_login', :'worker_password')) r(name, password)
\gexec
GRANT pgwa_api TO pgwa_api_login;
GRANT pgwa_worker TO pgwa_worker_login;
