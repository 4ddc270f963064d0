-- How long a number Meta throttled sends nothing: a setting, read by report_sends (it
-- holds the number's schedule) and by the worker through api.send_policy (it holds the
-- number's lane), instead of an IMMUTABLE function in SQL and a constant in Python.
ALTER TABLE core.settings
    ADD COLUMN throttle_hold_ms integer NOT NULL DEFAULT 250
        CONSTRAINT settings_throttle_hold_valid CHECK (throttle_hold_ms BETWEEN 0 AND 10000);
COMMENT ON COLUMN core.settings.throttle_hold_ms IS
    'After a throughput error (core.meta_error_codes.throttles) a number sends nothing for this long; the worker hands back what it holds for the number that was due before the hold ends.';
DROP FUNCTION IF EXISTS core.throttle_hold();
