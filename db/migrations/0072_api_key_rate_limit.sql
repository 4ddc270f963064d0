-- A request rate limit per API key (issue 11): a GCRA, like a number's send pacing, whose
-- theoretical arrival time lives on the key's row, so the limit holds across any number
-- of API processes. A key without a limit of its own follows the platform's.
ALTER TABLE core.settings
    ADD COLUMN api_rate_limit_per_minute integer NOT NULL DEFAULT 600
        CONSTRAINT settings_api_rate_limit_valid CHECK (api_rate_limit_per_minute BETWEEN 1 AND 1000000);

ALTER TABLE core.api_keys
    -- NULL: core.settings.api_rate_limit_per_minute.
    ADD COLUMN rate_limit_per_minute integer
        CONSTRAINT api_keys_rate_limit_valid CHECK (rate_limit_per_minute BETWEEN 1 AND 1000000),
    ADD COLUMN rate_tat timestamptz;

ALTER TYPE api.api_key_created ADD ATTRIBUTE rate_limit_per_minute integer;
ALTER TYPE api.api_key ADD ATTRIBUTE rate_limit_per_minute integer;
