-- A worker behind its schedule keeps its numbers while it still holds their messages
-- (api.keep_numbers), and hands back a message it has held for the claim timeout: a
-- claim may take it again once its visibility ends, and it would be sent twice. The
-- worker learns the timeout from api.send_policy.
COMMENT ON COLUMN core.wa_numbers.sender_until IS
    'When the sender gives the number up unless it claims again: a pace horizon after the last message it was given, or after an api.keep_numbers call (a worker behind its schedule that still holds the number''s messages). api.release_numbers clears it sooner, when the worker stops or cannot reach Meta.';
ALTER TYPE api.send_policy ADD ATTRIBUTE claim_timeout_s integer;
