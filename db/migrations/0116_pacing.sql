-- Pacing that holds when CPU is short, in fewer statements per message.
--
-- The worker now paces each number's sends through its own GCRA (worker/pacing.py),
-- which skips the slots a starved loop missed instead of sending them together, so the
-- database can pace closer to Meta's limit: 99% of a number's throughput instead of 97%.
-- And a claim schedules a whole second ahead instead of 250 ms, so that a worker claims
-- every half horizon (api.send_policy tells it the horizon) and reports as often: four
-- statements a second for a number at 1,000 msg/s instead of sixteen. Only a database
-- still on the old defaults moves.

ALTER TABLE core.settings ALTER COLUMN rate_headroom SET DEFAULT 0.99;
UPDATE core.settings SET rate_headroom = 0.99 WHERE rate_headroom = 0.97;
COMMENT ON COLUMN core.settings.rate_headroom IS
    'The share of a number''s throughput_mps that claim_sends paces at (0.99: the worker''s pacer holds a starved loop''s late sends to the pace, so 1% covers the network''s jitter).';

ALTER TABLE core.settings ALTER COLUMN pace_horizon_ms SET DEFAULT 1000;
UPDATE core.settings SET pace_horizon_ms = 1000 WHERE pace_horizon_ms = 250;
COMMENT ON COLUMN core.settings.pace_horizon_ms IS
    'How far ahead of now one claim schedules a number''s sends; workers claim every half of it (api.send_policy).';

ALTER TYPE api.send_policy ADD ATTRIBUTE pace_horizon_ms integer;
