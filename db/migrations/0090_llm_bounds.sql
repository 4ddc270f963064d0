-- The bounds of a number's LLM settings have one home, api.llm_bounds() (bots.sql):
-- api.configure_llm checks its arguments against it, and the HTTP API validates its input
-- with, and documents in /openapi.json, the same rows. The column CHECKs on
-- core.wa_numbers (0086_baseline/02_tenants.sql) were further copies that a change of bound
-- would have to find (api.configure_llm is the only writer of these columns), so they go.
CREATE TYPE api.llm_bound AS (
    setting  text,      -- the api.configure_llm argument (p_<setting>) and the API's JSON field
    type     text,      -- integer, or string (whose bounds count its characters)
    minimum  integer,
    maximum  integer,
    meaning  text       -- what the value is: the error's HINT and the OpenAPI description
);

ALTER TABLE core.wa_numbers
    DROP CONSTRAINT IF EXISTS wa_numbers_llm_daily_limit_valid,
    DROP CONSTRAINT IF EXISTS wa_numbers_llm_context_messages_valid,
    DROP CONSTRAINT IF EXISTS wa_numbers_llm_number_daily_limit_valid;
