-- A queue message claimed by api.claim_sends, before it is returned.
CREATE TYPE core.claimed AS (queue_name text, msg_id bigint, read_ct integer, outbound_id bigint, body jsonb);
