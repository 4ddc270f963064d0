-- LLM spend per number: besides the replies one contact may get a day (llm_daily_limit),
-- a number may make at most llm_number_daily_limit LLM calls per UTC day, across all its
-- contacts. api.claim_llm_jobs counts the calls it hands out in core.llm_number_usage;
-- a job over the cap is claimed with over_limit, so the worker sends the fallback and
-- the conversation goes to a human, without calling the model.
ALTER TABLE core.wa_numbers
    ADD COLUMN llm_number_daily_limit integer NOT NULL DEFAULT 1000
        CONSTRAINT wa_numbers_llm_number_daily_limit_valid CHECK (llm_number_daily_limit BETWEEN 0 AND 1000000);

CREATE TABLE core.llm_number_usage (
    number_id  bigint NOT NULL REFERENCES core.wa_numbers ON DELETE CASCADE,
    day        date NOT NULL,               -- the UTC day
    calls      integer NOT NULL DEFAULT 0,  -- LLM calls handed out by api.claim_llm_jobs
    -- Read and locked by api.claim_llm_jobs (number, today); also serves the foreign key.
    CONSTRAINT llm_number_usage_pkey PRIMARY KEY (number_id, day)
);
COMMENT ON TABLE core.llm_number_usage IS
    'LLM calls per number and UTC day, counted when api.claim_llm_jobs hands a job to a worker; capped by wa_numbers.llm_number_daily_limit.';

ALTER TYPE api.llm_settings ADD ATTRIBUTE number_daily_limit integer;

-- New signatures in bots.sql (a number cap on configure_llm, p_now on claim_llm_jobs);
-- the api schema has no overloads (on a fresh database they do not exist yet).
DROP FUNCTION IF EXISTS api.configure_llm(bigint, bigint, boolean, text, integer, integer);
DROP FUNCTION IF EXISTS api.claim_llm_jobs(text, integer, integer);
