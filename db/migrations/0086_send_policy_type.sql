-- What a worker learns from the database about Meta's pacing rules (api.send_policy), so
-- that no rule is copied in Python: which error codes throttle a number, and for how long.
CREATE TYPE api.send_policy AS (
    throttle_hold_ms  integer,
    throttle_codes    integer[]
);
