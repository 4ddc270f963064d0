-- Wake the webhook worker when payloads arrive: pgmq's insert trigger sends NOTIFY on
-- channel "pgmq.q_webhooks.INSERT", at most once per 50 ms however many rows arrive
-- (the API inserts many payloads per commit). A notification the throttle swallows is
-- caught by the worker's short re-check after each busy spell (worker/webhooks.py).
-- The throttle row lives in an UNLOGGED table that a crash empties; api.process_webhooks
-- puts it back when it finds the queue idle.
SELECT pgmq.enable_notify_insert('webhooks', 50);
