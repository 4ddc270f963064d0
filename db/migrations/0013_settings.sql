-- Tunables of the send path, one row. Read by claim_sends and report_sends.
CREATE TABLE core.settings (
    singleton           boolean PRIMARY KEY DEFAULT true CONSTRAINT settings_singleton CHECK (singleton),
    -- A claimed message comes back after this long if its worker never reports; its
    -- status webhooks are checked before it is resent.
    claim_timeout_s     integer NOT NULL DEFAULT 30 CONSTRAINT settings_claim_timeout_valid CHECK (claim_timeout_s BETWEEN 5 AND 3600),
    max_attempts        integer NOT NULL DEFAULT 6 CONSTRAINT settings_max_attempts_valid CHECK (max_attempts BETWEEN 1 AND 50),
    retry_backoff_s     integer[] NOT NULL DEFAULT '{5,10,20,40,60,120}',
    -- How far ahead of now a number's sends may be scheduled in one claim (GCRA horizon).
    pace_horizon_ms     integer NOT NULL DEFAULT 250 CONSTRAINT settings_pace_horizon_valid CHECK (pace_horizon_ms BETWEEN 10 AND 5000),
    -- Pace at most this share of the number's limit, so clock jitter never crosses it.
    rate_headroom       double precision NOT NULL DEFAULT 0.97 CONSTRAINT settings_rate_headroom_valid CHECK (rate_headroom > 0 AND rate_headroom <= 1),
    graph_api_version   text NOT NULL DEFAULT 'v21.0'
);
INSERT INTO core.settings DEFAULT VALUES;
