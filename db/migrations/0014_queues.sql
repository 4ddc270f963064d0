-- Queues that exist once per installation; per-campaign (c_<id>) and per-number reply
-- (r_<id>) queues are created by the functions that create campaigns and numbers.
SELECT pgmq.create('webhooks');
SELECT pgmq.create('webhooks_dead');
SELECT pgmq.create('llm_jobs');
