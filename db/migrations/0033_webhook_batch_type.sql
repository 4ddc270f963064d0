-- What api.process_webhooks returns for a batch (named, as every api return type is).
CREATE TYPE api.webhook_batch AS (
    payloads       integer,   -- payloads taken from the queue
    status_events  integer,   -- status events stored for the first time
    messages       integer,   -- inbound messages stored for the first time
    dead           integer    -- payloads moved to webhooks_dead
);
