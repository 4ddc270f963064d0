-- What api.claim_webhooks returns: the payloads read for the first time, processed as one
-- batch, and those read again after a failed attempt, which the worker processes one by
-- one under a short timeout so that a payload that hung once never holds up a batch again.
CREATE TYPE api.webhook_claim AS (
    fresh    bigint[],
    retried  bigint[]
);
DROP FUNCTION IF EXISTS api.claim_webhooks(integer);
