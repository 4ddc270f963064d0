-- core.process_webhook_batch reads the queued payloads by id itself; the form taking the
-- payloads as arrays goes (the function file recreates the new one).
DROP FUNCTION IF EXISTS core.process_webhook_batch(bigint[], jsonb[], jsonb[]);
