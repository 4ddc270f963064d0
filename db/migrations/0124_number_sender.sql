-- One worker at a time sends a number's messages. Each worker paces its own sends
-- (worker/pacing.py) and never catches up a slot it woke too late for, which keeps one
-- worker under Meta's per-second limit. Two workers sharing a number (api.claim_sends
-- handed each the next stretch of its schedule) overlapped whenever the earlier one ran
-- late: four workers on two numbers had 42-61 sends answered 130429 in a run of 25,000
-- where one worker had none. A claim that takes a number's messages now makes its worker
-- the number's sender until a pace horizon after the last one it was given; other
-- workers' claims pass the number by meanwhile, and the sender renews it with each claim.
-- A worker that stops or dies gives the number up when that time passes.
ALTER TABLE core.wa_numbers
    ADD COLUMN sender text,
    ADD COLUMN sender_until timestamptz;
COMMENT ON COLUMN core.wa_numbers.sender IS
    'The worker (api.claim_sends'' p_worker) that sends this number''s messages until sender_until; other workers do not claim them meanwhile.';
COMMENT ON COLUMN core.wa_numbers.sender_until IS
    'When the sender gives the number up unless it claims again: a pace horizon after the last message it was given.';
