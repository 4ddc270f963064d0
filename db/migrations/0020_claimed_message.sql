-- A claimed queue message keeps the whole pgmq message: campaign messages are rendered
-- when claimed, not when queued (see core.read_queue).
ALTER TYPE core.claimed RENAME ATTRIBUTE body TO message;
