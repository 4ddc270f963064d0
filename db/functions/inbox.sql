-- The shared inbox: conversations, their messages, agents' replies, read receipts and
-- the hand-over to humans. Every reply (bot, agent, LLM, opt-out confirmation) and read
-- receipt goes through core.enqueue_replies onto the number's reply queue r_<number>,
-- which api.claim_sends reads before any campaign.
--
-- Pages are keyset-paginated: api.conversations on core.conversations (number_id,
-- last_message_at DESC, contact_id DESC), api.conversation on core.inbox_messages
-- (number_id, contact_id, created_at DESC, message_id DESC).

-------------------------------------------------------------------------------
-- Queueing replies
-------------------------------------------------------------------------------

-- The text an outbound message shows in the inbox.
CREATE OR REPLACE FUNCTION core.message_text(p_message jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT CASE p_message->>'type'
        WHEN 'text' THEN p_message->'text'->>'body'
        WHEN 'interactive' THEN p_message->'interactive'->'body'->>'text'
        WHEN 'template' THEN p_message->'template'->>'name'
        ELSE coalesce(p_message->(p_message->>'type')->>'caption', p_message->(p_message->>'type')->>'body')
    END
$$;

-- Queue replies, set-based: one outbound message (kind bot, agent, llm, reply or
-- receipt) and one inbox row (direction 'out'; none for a receipt) per request, the
-- fully rendered Graph API request {"o": outbound_id, "b": body} on the number's reply
-- queue, the conversation's last message moved, and NOTIFY pgwa_send per number. A
-- free-form message needs the conversation's 24-hour window open; a template or a read
-- receipt does not. Returns, per request position, the outbound and inbox ids, or null
-- ids where the window was closed (nothing is queued for those). An agent's reply
-- clears the conversation's call for a human.
CREATE OR REPLACE FUNCTION core.enqueue_replies(p_replies core.reply_request[]) RETURNS SETOF core.reply_queued
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_done core.reply_queued[];
    v_queue jsonb[];
BEGIN
    IF p_replies IS NULL OR cardinality(p_replies) = 0 THEN
        RETURN;
    END IF;
    WITH req AS MATERIALIZED (
        SELECT r.ord::integer AS ord, r.number_id, r.contact_id, r.kind, r.message, c.wa_id, c.user_id,
               core.window_closes_at(v.last_inbound_at) AS closes_at,
               r.kind = 'receipt' OR r.message->>'type' = 'template'
               OR core.window_open(v.last_inbound_at, now()) AS allowed
        FROM unnest(p_replies) WITH ORDINALITY AS r(number_id, contact_id, kind, message, ord)
        JOIN core.contacts c ON c.contact_id = r.contact_id
        LEFT JOIN core.conversations v ON v.number_id = r.number_id AND v.contact_id = r.contact_id
    ), ids AS MATERIALIZED (
        SELECT q.*, nextval('core.outbound_messages_outbound_id_seq') AS outbound_id
        FROM req q WHERE q.allowed ORDER BY q.ord
    ), ok AS MATERIALIZED (
        SELECT i.*, CASE
                   WHEN i.kind = 'receipt' THEN jsonb_build_object('messaging_product', 'whatsapp') || i.message
                   ELSE jsonb_build_object('messaging_product', 'whatsapp', 'recipient_type', 'individual')
                        -- A user known only by a business-scoped user id is addressed by it.
                        || CASE WHEN i.wa_id IS NOT NULL THEN jsonb_build_object('to', i.wa_id)
                                ELSE jsonb_build_object('recipient', i.user_id) END
                        || i.message
                        || jsonb_build_object('biz_opaque_callback_data', core.opaque_data(NULL, i.outbound_id))
               END AS body
        FROM ids i
    ), outbound AS (
        INSERT INTO core.outbound_messages (outbound_id, number_id, contact_id, kind)
        OVERRIDING SYSTEM VALUE
        SELECT o.outbound_id, o.number_id, o.contact_id, o.kind FROM ok o ORDER BY o.outbound_id
    ), inbox AS (
        INSERT INTO core.inbox_messages (number_id, contact_id, direction, type, body, payload, outbound_id)
        SELECT o.number_id, o.contact_id, 'out', coalesce(o.message->>'type', 'text'), core.message_text(o.message),
               o.body, o.outbound_id
        FROM ok o WHERE o.kind <> 'receipt'
        ORDER BY o.ord
        RETURNING message_id, outbound_id
    ), conversations AS (
        INSERT INTO core.conversations AS v (number_id, contact_id, last_message_at)
        SELECT o.number_id, o.contact_id, now() FROM ok o WHERE o.kind <> 'receipt'
        GROUP BY o.number_id, o.contact_id
        ORDER BY o.number_id, o.contact_id
        ON CONFLICT (number_id, contact_id) DO UPDATE SET
            last_message_at = greatest(v.last_message_at, excluded.last_message_at),
            needs_human = v.needs_human AND NOT EXISTS (
                SELECT 1 FROM ok a WHERE a.kind = 'agent' AND a.number_id = v.number_id AND a.contact_id = v.contact_id)
    )
    SELECT array_agg(ROW(q.ord, o.outbound_id, i.message_id, q.closes_at)::core.reply_queued ORDER BY q.ord),
           array_agg(jsonb_build_object('n', o.number_id, 'o', o.outbound_id, 'b', o.body) ORDER BY q.ord)
               FILTER (WHERE o.outbound_id IS NOT NULL)
    INTO v_done, v_queue
    FROM req q
    LEFT JOIN ok o ON o.ord = q.ord
    LEFT JOIN inbox i ON i.outbound_id = o.outbound_id;

    IF v_queue IS NOT NULL THEN
        PERFORM pgmq.send_batch(core.reply_queue((m->>'n')::bigint), array_agg(jsonb_build_object('o', m->'o', 'b', m->'b') ORDER BY (m->>'o')::bigint))
        FROM unnest(v_queue) m GROUP BY m->>'n';
        PERFORM core.wake_sender(n) FROM (SELECT DISTINCT (m->>'n')::bigint AS n FROM unnest(v_queue) m) d;
    END IF;
    RETURN QUERY SELECT * FROM unnest(v_done);
END
$$;

-------------------------------------------------------------------------------
-- Reading the inbox
-------------------------------------------------------------------------------

-- One page of conversation summaries in list order, for the given contacts of a number.
CREATE OR REPLACE FUNCTION core.conversation_summaries(p_number_id bigint, p_contact_ids bigint[])
RETURNS SETOF api.conversation_summary
LANGUAGE sql STABLE SET search_path = '' AS $$
    SELECT c.contact_id, c.wa_id, c.user_id, c.name, c.profile_name, c.opted_out,
           l.message_id, l.direction, l.type, l.body, v.last_message_at, v.unread,
           core.window_open(v.last_inbound_at, now()),
           core.window_closes_at(v.last_inbound_at),
           v.assigned_to, v.assigned_at, v.needs_human, v.needs_human_reason
    FROM unnest(p_contact_ids) AS k(contact_id)
    JOIN core.conversations v ON v.number_id = p_number_id AND v.contact_id = k.contact_id
    JOIN core.contacts c ON c.contact_id = v.contact_id
    -- The last message, off the conversation index.
    LEFT JOIN LATERAL (
        SELECT i.message_id, i.direction, i.type, i.body FROM core.inbox_messages i
        WHERE i.number_id = v.number_id AND i.contact_id = v.contact_id
        ORDER BY i.created_at DESC, i.message_id DESC
        LIMIT 1
    ) l ON true
    ORDER BY v.last_message_at DESC, v.contact_id DESC
$$;

-- The tenant's contact, or PW204.
CREATE OR REPLACE FUNCTION core.contact_for(p_tenant_id bigint, p_contact_id bigint) RETURNS core.contacts
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
DECLARE
    v_contact core.contacts;
BEGIN
    SELECT * INTO v_contact FROM core.contacts WHERE contact_id = p_contact_id AND tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'contact % not found', p_contact_id
            USING ERRCODE = 'PW204', HINT = 'List the number''s conversations with api.conversations().';
    END IF;
    RETURN v_contact;
END
$$;

CREATE OR REPLACE FUNCTION api.conversations(
    p_tenant_id          bigint,
    p_number_id          bigint,
    p_filter             text DEFAULT 'all',
    p_agent              text DEFAULT NULL,
    p_before_at          timestamptz DEFAULT NULL,
    p_before_contact_id  bigint DEFAULT NULL,
    p_limit              integer DEFAULT 50
) RETURNS SETOF api.conversation_summary
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
BEGIN
    PERFORM core.number_for(p_tenant_id, p_number_id);
    IF p_filter IS NULL OR p_filter NOT IN ('all', 'unread', 'open', 'assigned', 'unassigned', 'needs_human') THEN
        RAISE EXCEPTION 'filter must be all, unread, open, assigned, unassigned or needs_human, not "%"', p_filter
            USING ERRCODE = 'PW100', HINT = 'open: the 24-hour window is open; p_agent narrows to one agent''s conversations.';
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 500 THEN
        RAISE EXCEPTION 'limit % is out of range', p_limit USING ERRCODE = 'PW100', HINT = 'Ask for 1 to 500 conversations a page.';
    END IF;
    RETURN QUERY
    SELECT * FROM core.conversation_summaries(p_number_id, ARRAY(
        SELECT v.contact_id FROM core.conversations v
        WHERE v.number_id = p_number_id
          AND (v.last_message_at, v.contact_id)
              < (coalesce(p_before_at, 'infinity'), coalesce(p_before_contact_id, 9223372036854775807))
          AND CASE p_filter
                  WHEN 'unread' THEN v.unread > 0
                  WHEN 'open' THEN v.last_inbound_at > (SELECT core.window_start(now()))
                  WHEN 'assigned' THEN v.assigned_to IS NOT NULL
                  WHEN 'unassigned' THEN v.assigned_to IS NULL
                  WHEN 'needs_human' THEN v.needs_human
                  ELSE true END
          AND (p_agent IS NULL OR v.assigned_to = p_agent)
        ORDER BY v.last_message_at DESC, v.contact_id DESC
        LIMIT p_limit));
END
$$;
COMMENT ON FUNCTION api.conversations(bigint, bigint, text, text, timestamptz, bigint, integer) IS
    'Lists a number''s conversations, latest message first: the contact, the last message, unread count, whether the 24-hour window is open and until when, the assigned agent and whether a human was asked for. p_filter is all, unread, open, assigned, unassigned or needs_human; p_agent narrows to one agent. Keyset pagination: pass the last row''s last_message_at and contact_id as p_before_at and p_before_contact_id. Raises PW100 for a bad filter or limit (1..500), PW202 when the number is not the tenant''s.';

CREATE OR REPLACE FUNCTION api.conversation(
    p_tenant_id   bigint,
    p_number_id   bigint,
    p_contact_id  bigint,
    p_before_at   timestamptz DEFAULT NULL,
    p_before_id   bigint DEFAULT NULL,
    p_limit       integer DEFAULT 50
) RETURNS SETOF api.inbox_message
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
BEGIN
    PERFORM core.number_for(p_tenant_id, p_number_id);
    PERFORM core.contact_for(p_tenant_id, p_contact_id);
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 500 THEN
        RAISE EXCEPTION 'limit % is out of range', p_limit USING ERRCODE = 'PW100', HINT = 'Ask for 1 to 500 messages a page.';
    END IF;
    RETURN QUERY
    SELECT i.message_id, i.direction, i.type, i.body, i.payload, coalesce(i.wamid, o.wamid), i.context_wamid,
           i.created_at, i.outbound_id, o.kind, o.state, o.error_code, o.error_detail, i.campaign_id,
           core.message_media(i.message_id, i.number_id, i.direction, i.type, i.payload)
    FROM core.inbox_messages i
    LEFT JOIN core.outbound_messages o ON o.outbound_id = i.outbound_id AND i.direction = 'out'
    WHERE i.number_id = p_number_id AND i.contact_id = p_contact_id
      AND (i.created_at, i.message_id) < (coalesce(p_before_at, 'infinity'), coalesce(p_before_id, 9223372036854775807))
    ORDER BY i.created_at DESC, i.message_id DESC
    LIMIT p_limit;
END
$$;
COMMENT ON FUNCTION api.conversation(bigint, bigint, bigint, timestamptz, bigint, integer) IS
    'One page of a conversation''s messages, newest first, both directions; an outbound one carries its kind (bot, agent, llm, reply) and delivery state. Keyset pagination: pass the last row''s created_at and message_id as p_before_at and p_before_id. Raises PW100 for a limit outside 1..500, PW202/PW204 when the number or contact is not the tenant''s.';

-------------------------------------------------------------------------------
-- Agents
-------------------------------------------------------------------------------

-- The tenant's conversation, locked, or PW202/PW209.
CREATE OR REPLACE FUNCTION core.conversation_for(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint)
RETURNS core.conversations
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_conversation core.conversations;
BEGIN
    PERFORM core.number_for(p_tenant_id, p_number_id);
    SELECT v.* INTO v_conversation FROM core.conversations v
    JOIN core.contacts c ON c.contact_id = v.contact_id AND c.tenant_id = p_tenant_id
    WHERE v.number_id = p_number_id AND v.contact_id = p_contact_id
    FOR UPDATE OF v;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no conversation between number % and contact %', p_number_id, p_contact_id
            USING ERRCODE = 'PW209', HINT = 'List the number''s conversations with api.conversations().';
    END IF;
    RETURN v_conversation;
END
$$;

CREATE OR REPLACE FUNCTION api.reply(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint, p_reply jsonb)
RETURNS api.reply_queued
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_number core.wa_numbers := core.number_for(p_tenant_id, p_number_id);
    v_contact core.contacts;
    v_queued core.reply_queued;
BEGIN
    v_contact := core.contact_for(p_tenant_id, p_contact_id);
    PERFORM core.check_reply(p_reply, p_tenant_id, v_number.waba_id);
    -- An uploaded file is sent by its Meta id (media.sql); PW245/PW345 when unusable.
    p_reply := core.resolve_reply_media(p_reply, p_tenant_id, p_number_id);
    -- Outside the window only a template reaches the contact, and only one who has not
    -- opted out; inside it the contact wrote first, and may be answered.
    IF p_reply->>'type' = 'template' AND v_contact.opted_out THEN
        RAISE EXCEPTION 'contact % has opted out of messages', p_contact_id
            USING ERRCODE = 'PW106', HINT = 'A template starts a conversation; wait for the contact to write (or opt in again).';
    END IF;
    SELECT * INTO v_queued FROM core.enqueue_replies(ARRAY[ROW(p_number_id, p_contact_id, 'agent',
                                    core.render_reply(p_reply, core.contact_vars(v_contact)))::core.reply_request]);
    IF v_queued.outbound_id IS NULL THEN
        RAISE EXCEPTION 'the 24-hour customer service window with contact % is closed%', p_contact_id,
            coalesce(' since ' || v_queued.window_closes_at::text, ' (the contact never wrote to this number)')
            USING ERRCODE = 'PW104',
                  HINT = 'Send an approved template instead: api.reply(..., p_reply => ''{"type": "template", "name": "...", "language": "en_US", "params": [...]}'').';
    END IF;
    RETURN ROW(v_queued.outbound_id, v_queued.message_id, v_queued.window_closes_at)::api.reply_queued;
END
$$;
COMMENT ON FUNCTION api.reply(bigint, bigint, bigint, jsonb) IS
    'An agent''s reply to a contact on a number, queued before campaign traffic: {"type": "text" | "buttons" | "list" | "cta_url", ...} or media ({"type": "image" | "video" | "audio" | "document" | "sticker", "media": <pgwa media id> | "link": "https://...", "caption": ...}) inside the 24-hour window, {"type": "template", ...} at any time; {{name}} and other contact variables are filled in. Returns the outbound id, the inbox row and when the window closes. Raises PW104 for a free-form reply outside the window (send a template), PW106 for a template to an opted-out contact, PW100/PW102 for a bad reply or template (PW100 names the field), PW245/PW345 for an uploaded file that is not the number''s or whose Meta id expires within a day, PW202/PW204 when the number or contact is not the tenant''s.';

CREATE OR REPLACE FUNCTION api.mark_read(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_conversation core.conversations := core.conversation_for(p_tenant_id, p_number_id, p_contact_id);
    v_last core.inbox_messages;
BEGIN
    SELECT * INTO v_last FROM core.inbox_messages i
    WHERE i.number_id = p_number_id AND i.contact_id = p_contact_id AND i.direction = 'in'
    ORDER BY i.created_at DESC, i.message_id DESC
    LIMIT 1;
    IF v_last.message_id IS NULL OR v_last.message_id <= coalesce(v_conversation.read_up_to_id, 0) THEN
        RETURN 0;
    END IF;
    -- Meta marks the message and every earlier one read; it accepts receipts for 30 days.
    IF v_last.wamid IS NOT NULL AND v_last.created_at > now() - interval '30 days' THEN
        PERFORM core.enqueue_replies(ARRAY[ROW(p_number_id, p_contact_id, 'receipt',
                    jsonb_build_object('status', 'read', 'message_id', v_last.wamid))::core.reply_request]);
    END IF;
    UPDATE core.conversations SET unread = 0, read_up_to_id = v_last.message_id
    WHERE number_id = p_number_id AND contact_id = p_contact_id;
    RETURN v_conversation.unread;
END
$$;
COMMENT ON FUNCTION api.mark_read(bigint, bigint, bigint) IS
    'Marks a conversation read: its unread count drops to zero and Meta''s read receipt for the latest inbound message (blue ticks, for it and every earlier one) is queued on the number''s reply queue. Returns how many messages were unread; 0, and nothing queued, when everything was read already. Raises PW202/PW209 when the number or conversation is not the tenant''s.';

CREATE OR REPLACE FUNCTION api.assign_conversation(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint,
                                                   p_agent text) RETURNS api.conversation_summary
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    IF coalesce(btrim(p_agent), '') = '' OR length(p_agent) > 200 THEN
        RAISE EXCEPTION 'agent must be 1 to 200 characters' USING ERRCODE = 'PW100',
            HINT = 'Name the agent (an id or e-mail); api.release_conversation hands it back to the bots.';
    END IF;
    PERFORM core.conversation_for(p_tenant_id, p_number_id, p_contact_id);
    UPDATE core.conversations SET assigned_to = btrim(p_agent), assigned_at = now(),
        needs_human = false, needs_human_reason = NULL, needs_human_at = NULL
    WHERE number_id = p_number_id AND contact_id = p_contact_id;
    RETURN (SELECT s FROM core.conversation_summaries(p_number_id, ARRAY[p_contact_id]) s);
END
$$;
COMMENT ON FUNCTION api.assign_conversation(bigint, bigint, bigint, text) IS
    'Hands a conversation to an agent (or to another one): bots and the LLM stay quiet on it until api.release_conversation, and the call for a human is cleared. Returns the conversation. Raises PW100 for an empty agent, PW202/PW209 when the number or conversation is not the tenant''s.';

CREATE OR REPLACE FUNCTION api.release_conversation(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint)
RETURNS api.conversation_summary
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    PERFORM core.conversation_for(p_tenant_id, p_number_id, p_contact_id);
    UPDATE core.conversations SET assigned_to = NULL, assigned_at = NULL,
        needs_human = false, needs_human_reason = NULL, needs_human_at = NULL
    WHERE number_id = p_number_id AND contact_id = p_contact_id;
    RETURN (SELECT s FROM core.conversation_summaries(p_number_id, ARRAY[p_contact_id]) s);
END
$$;
COMMENT ON FUNCTION api.release_conversation(bigint, bigint, bigint) IS
    'Hands a conversation back to automation: bots and the LLM answer its next messages again. Returns the conversation. Raises PW202/PW209 when the number or conversation is not the tenant''s.';

REVOKE ALL ON FUNCTION api.conversations(bigint, bigint, text, text, timestamptz, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.conversation(bigint, bigint, bigint, timestamptz, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.reply(bigint, bigint, bigint, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.mark_read(bigint, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.assign_conversation(bigint, bigint, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.release_conversation(bigint, bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.conversations(bigint, bigint, text, text, timestamptz, bigint, integer) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.conversation(bigint, bigint, bigint, timestamptz, bigint, integer) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.reply(bigint, bigint, bigint, jsonb) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.mark_read(bigint, bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.assign_conversation(bigint, bigint, bigint, text) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.release_conversation(bigint, bigint, bigint) TO pgwa_api;
