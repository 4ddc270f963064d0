-- Regex bot rules are matched inside webhook processing, so a hostile pattern or a huge
-- text must not be able to stall it. Rules are matched against a bounded prefix of the
-- normalised text (core.match_bot_rules reads this column); patterns outside the safe
-- subset are refused when saved with PW103 (api.save_bot_rule, core.regex_unsafe_reason).
-- The lower bound keeps every keyword pattern (at most 500 characters) comparable whole.
ALTER TABLE core.settings
    ADD COLUMN bot_match_prefix_chars integer NOT NULL DEFAULT 1024
        CONSTRAINT settings_bot_match_prefix_valid CHECK (bot_match_prefix_chars BETWEEN 500 AND 100000);

COMMENT ON COLUMN core.settings.bot_match_prefix_chars IS
    'Bot rules see at most this many leading characters of the normalised inbound text.';

UPDATE core.error_codes
SET meaning = 'A bot rule pattern (regular expression) does not compile or is outside the safe subset; the message says why.'
WHERE sqlstate = 'PW103';
