-- What a retryable Meta error waits for, in one column of the error table instead of a
-- rule per code in the send path (reference §2.3, §3):
--   retry          a jittered backoff from core.settings.retry_backoff_s, the attempt counted;
--   throttle       the number's throughput (130429): its pace halves, it holds briefly;
--   number_hold    the number cannot send for backoff_s (131057, throughput upgrade in
--                  progress), the pace untouched;
--   waba_hold      the WABA's hourly call budget is spent (80007): every number of the
--                  WABA waits until Meta's X-Business-Use-Case-Usage says access is back
--                  (backoff_s when it does not say), the pace untouched, an operator told;
--   app_hold       the same for the app (4): every number of the tenant waits;
--   recipient      the pair rate (131056): only this recipient waits, 4^n seconds after
--                  its n-th deferral, the number and its pace untouched;
--   next_day       the per-user marketing cap (131049): this recipient is tried again
--                  backoff_s later, up to core.settings.capped_retry_days times.
-- Deferrals and holds do not count as attempts.
ALTER TABLE core.meta_error_codes
    ADD COLUMN backoff text NOT NULL DEFAULT 'retry'
        CONSTRAINT meta_error_codes_backoff_valid CHECK (backoff IN
            ('retry', 'throttle', 'number_hold', 'waba_hold', 'app_hold', 'recipient', 'next_day')),
    ADD COLUMN backoff_s integer CONSTRAINT meta_error_codes_backoff_s_positive CHECK (backoff_s > 0),
    -- The user stopped marketing messages from this business (131050): marketing
    -- templates to this contact are not sent again; utility ones still are.
    ADD COLUMN stops_marketing boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT meta_error_codes_backoff_s_given CHECK (backoff IN ('retry', 'throttle') OR backoff_s IS NOT NULL);

UPDATE core.meta_error_codes SET backoff = 'throttle' WHERE throttles;
UPDATE core.meta_error_codes SET backoff = 'app_hold', backoff_s = 3600, throttles = false, alert = true WHERE code = 4;
UPDATE core.meta_error_codes SET backoff = 'waba_hold', backoff_s = 3600, throttles = false, alert = true WHERE code = 80007;
UPDATE core.meta_error_codes SET backoff = 'number_hold', backoff_s = 60 WHERE code = 131057;
UPDATE core.meta_error_codes SET backoff = 'recipient', backoff_s = 4 WHERE code = 131056;
UPDATE core.meta_error_codes SET backoff = 'next_day', backoff_s = 86400, retryable = true WHERE code = 131049;
UPDATE core.meta_error_codes SET stops_marketing = true WHERE code = 131050;
-- backoff = 'throttle' says it now.
ALTER TABLE core.meta_error_codes DROP COLUMN throttles;
COMMENT ON TABLE core.meta_error_codes IS
    'Meta Cloud API error codes: category, retry, alert, pause and backoff policy (what a retryable error waits for); code -1 is the default for unknown codes.';

ALTER TABLE core.settings
    ADD COLUMN capped_retry_days smallint NOT NULL DEFAULT 3
        CONSTRAINT settings_capped_retry_days_valid CHECK (capped_retry_days BETWEEN 0 AND 30);
COMMENT ON COLUMN core.settings.capped_retry_days IS
    'How many times a message Meta withheld under the per-user marketing cap (131049) is tried again, a day apart, before it fails for good.';

-- Deferrals of a message (pair rate, marketing cap): they space its next try and are not
-- attempts.
ALTER TABLE core.outbound_messages ADD COLUMN deferrals smallint NOT NULL DEFAULT 0;

ALTER TABLE core.contacts ADD COLUMN marketing_stopped_at timestamptz;
COMMENT ON COLUMN core.contacts.marketing_stopped_at IS
    'When Meta said the user stopped marketing messages from this business (error 131050 or a user_preferences webhook); marketing templates skip the contact, utility ones do not.';


-- Read by core.cancel_opted_out (from api.claim_sends): has anyone of the tenant stopped
-- marketing? Rare, so the index is small.
CREATE INDEX contacts_marketing_stopped ON core.contacts (tenant_id) WHERE marketing_stopped_at IS NOT NULL;
