-- The send path takes the time as a parameter (p_now, NULL for the clock), as River's
-- JobGetAvailable does, so that tests of pacing pass the time instead of racing it. A new
-- argument is a new signature: the old ones go (the function files create the new ones,
-- and api functions are never overloaded).
DROP FUNCTION IF EXISTS api.claim_sends(text, integer);
DROP FUNCTION IF EXISTS api.report_sends(jsonb);
DROP FUNCTION IF EXISTS core.read_queue(text, integer, integer);
DROP FUNCTION IF EXISTS core.delay_messages(text, bigint[], double precision[]);
DROP FUNCTION IF EXISTS core.start_due_campaigns();
DROP FUNCTION IF EXISTS core.complete_campaigns(bigint[]);
