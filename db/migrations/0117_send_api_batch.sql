-- The send API in batches (issue 14): POST /v1/messages gathers the requests that arrive
-- together and sends them with one api.send_messages call, one transaction and one commit;
-- each request still gets its own answer, a message or its own error.

-- One item's answer from api.send_messages: the message (as api.send_message returns it)
-- or the error that item alone raised, as PostgreSQL would have reported it.
CREATE TYPE api.send_result AS (
    item     integer,            -- the item's position in p_items, from 1
    sent     api.message_sent,   -- null when the item failed
    sqlstate text,               -- the item's error (PWxxx, 22xxx ...), null when it was sent
    message  text,
    detail   text,
    hint     text
);

-- One key's answer from api.authenticate_many: the tenant, or why the request is refused.
CREATE TYPE api.key_result AS (
    item      integer,
    tenant_id bigint,
    sqlstate  text,
    message   text,
    detail    text,
    hint      text
);
