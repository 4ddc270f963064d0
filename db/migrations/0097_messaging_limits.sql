-- Meta's messaging limit (reference §3.3): a business portfolio may start conversations
-- with only so many unique users outside a customer-service window in any moving 24
-- hours (TIER_250 .. TIER_UNLIMITED), shared by every WABA and number of the portfolio.
-- pgwa keeps the budget itself: Meta has no error that says it was spent.

CREATE TABLE core.portfolios (
    portfolio_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        bigint NOT NULL REFERENCES core.tenants ON DELETE CASCADE,
    -- Meta's business portfolio id; until it is known, a WABA stands for its own
    -- portfolio under its own id.
    business_id      text NOT NULL,
    -- As Meta names it; NULL while unknown (then nothing is limited).
    tier             text CONSTRAINT portfolios_tier_valid CHECK (tier IN
                         ('TIER_50', 'TIER_250', 'TIER_1K', 'TIER_2K', 'TIER_10K', 'TIER_100K', 'TIER_UNLIMITED')),
    -- Unique users per moving 24 hours; NULL: unlimited. core.tier_limit(tier).
    messaging_limit  integer CONSTRAINT portfolios_messaging_limit_positive CHECK (messaging_limit > 0),
    -- The budget was spent: messages to new users wait until then (api.campaign_stats).
    budget_wait_until timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT portfolios_tenant_business_unique UNIQUE (tenant_id, business_id)
);
COMMENT ON TABLE core.portfolios IS
    'Business portfolios: the WABAs and numbers that share one messaging limit (unique users per moving 24 hours).';

ALTER TABLE core.wa_numbers ADD COLUMN portfolio_id bigint REFERENCES core.portfolios;
-- Read by the portfolio's number list and the foreign key.
CREATE INDEX wa_numbers_portfolio ON core.wa_numbers (portfolio_id);
INSERT INTO core.portfolios (tenant_id, business_id)
SELECT DISTINCT tenant_id, waba_id FROM core.wa_numbers;
UPDATE core.wa_numbers n SET portfolio_id = p.portfolio_id
FROM core.portfolios p WHERE p.tenant_id = n.tenant_id AND p.business_id = n.waba_id;

-- Who the portfolio messaged business-initiated, and when last: a user messaged within
-- the last 24 hours is not new. Read and written by api.claim_sends for limited
-- portfolios only.
CREATE TABLE core.portfolio_reach (
    portfolio_id  bigint NOT NULL REFERENCES core.portfolios ON DELETE CASCADE,
    wa_id         text NOT NULL,
    last_at       timestamptz NOT NULL,
    PRIMARY KEY (portfolio_id, wa_id)
);
-- How many of those users were last messaged in each minute: their sum over the last
-- 24 hours is the budget spent, a user moving to the minute of its latest message.
CREATE TABLE core.portfolio_reach_minutes (
    portfolio_id  bigint NOT NULL REFERENCES core.portfolios ON DELETE CASCADE,
    minute        timestamptz NOT NULL,
    users         integer NOT NULL CONSTRAINT portfolio_reach_minutes_users_valid CHECK (users >= 0),
    PRIMARY KEY (portfolio_id, minute)
);

-- What a campaign waits for, and the retries of the per-user marketing cap, in its stats.
ALTER TYPE api.campaign_stats
    ADD ATTRIBUTE waiting_for text,             -- 'messaging_limit' while its portfolio's budget is spent
    ADD ATTRIBUTE resumes_at timestamptz,       -- when the budget frees again
    ADD ATTRIBUTE messaging_limit integer,      -- the portfolio's, NULL: unlimited
    ADD ATTRIBUTE days_at_limit integer,        -- days the messages still queued need at that limit
    ADD ATTRIBUTE retrying integer;             -- withheld under the per-user marketing cap (131049), tried again later

-- Messages withheld under the per-user marketing cap (131049) that wait for their next
-- try: up by core.defer_capped, down when such a message is claimed again.
ALTER TABLE core.campaigns ADD COLUMN retrying integer NOT NULL DEFAULT 0
    CONSTRAINT campaigns_retrying_valid CHECK (retrying >= 0);

-- At creation: how many days the list needs at the portfolio's current limit (NULL:
-- unlimited, or within a day).
ALTER TYPE api.campaign_created ADD ATTRIBUTE days_at_limit integer;

CREATE TYPE api.portfolio AS (
    portfolio_id       bigint,
    business_id        text,
    tier               text,
    messaging_limit    integer,     -- NULL: unlimited
    used_24h           integer,     -- unique users messaged business-initiated in the moving 24 hours
    budget_wait_until  timestamptz, -- messages to new users wait until then
    number_ids         bigint[]
);
