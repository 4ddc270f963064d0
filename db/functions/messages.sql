-- The send API: one message at a time from a tenant's own systems (a shop, a CRM), to
-- any phone number or business-scoped user id. It takes the reply path: checked and
-- rendered like an agent's reply (core.check_reply, core.render_reply), queued on the
-- number's reply queue, which api.claim_sends reads before any campaign's, paced and
-- reported like every other send. An idempotency key makes a retry safe: the same key
-- never sends twice and answers the first result.

-- The recipient as the send API takes it: a business-scoped user id ('US.1349…',
-- Meta's two-letter country and digits) stays as it is; anything else must be a phone
-- in international format, returned as E.164 digits. Raises PW100 naming the value.
CREATE OR REPLACE FUNCTION core.api_recipient(p_to text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = '' AS $$
DECLARE
    v_phone text;
BEGIN
    IF p_to ~ '^[A-Z]{2}\.[0-9]{5,40}$' THEN
        RETURN p_to;
    END IF;
    v_phone := core.normalize_phone(p_to);
    IF v_phone IS NULL THEN
        RAISE EXCEPTION 'to "%" is neither a phone number with its country code nor a business-scoped user id',
            left(coalesce(p_to, ''), 60)
            USING ERRCODE = 'PW100', HINT = 'Give "+15551234567" (E.164) or a user id such as "US.13491208655302741918".';
    END IF;
    RETURN v_phone;
END
$$;

-- The contact a send API message goes to, created on first use (a phone as wa_id, a
-- business-scoped user id as user_id).
CREATE OR REPLACE FUNCTION core.api_contact(p_tenant_id bigint, p_recipient text) RETURNS core.contacts
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_contact core.contacts;
    v_bsuid boolean := p_recipient !~ '^[0-9]+$';
BEGIN
    SELECT * INTO v_contact FROM core.contacts c
    WHERE c.tenant_id = p_tenant_id
      AND CASE WHEN v_bsuid THEN c.user_id = p_recipient ELSE c.wa_id = p_recipient END;
    IF FOUND THEN
        RETURN v_contact;
    END IF;
    INSERT INTO core.contacts (tenant_id, wa_id, user_id)
    VALUES (p_tenant_id, CASE WHEN NOT v_bsuid THEN p_recipient END, CASE WHEN v_bsuid THEN p_recipient END)
    ON CONFLICT DO NOTHING
    RETURNING * INTO v_contact;
    IF v_contact.contact_id IS NULL THEN      -- a concurrent send created it first
        SELECT * INTO v_contact FROM core.contacts c
        WHERE c.tenant_id = p_tenant_id
          AND CASE WHEN v_bsuid THEN c.user_id = p_recipient ELSE c.wa_id = p_recipient END;
    END IF;
    RETURN v_contact;
END
$$;

-- What a send API message looks like to its caller now.
CREATE OR REPLACE FUNCTION core.message_sent(p_outbound_id bigint, p_replayed boolean) RETURNS api.message_sent
LANGUAGE sql STABLE SET search_path = '' AS $$
    SELECT ROW(o.outbound_id, o.number_id, o.contact_id, coalesce(c.wa_id, c.user_id), o.state, p_replayed,
               core.window_closes_at(v.last_inbound_at), o.queued_at)::api.message_sent
    FROM core.outbound_messages o
    JOIN core.contacts c ON c.contact_id = o.contact_id
    LEFT JOIN core.conversations v ON v.number_id = o.number_id AND v.contact_id = o.contact_id
    WHERE o.outbound_id = p_outbound_id
$$;

CREATE OR REPLACE FUNCTION api.send_message(p_tenant_id bigint, p_number_id bigint, p_to text, p_message jsonb,
                                            p_idempotency_key text DEFAULT NULL)
RETURNS api.message_sent
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_number core.wa_numbers := core.number_for(p_tenant_id, p_number_id);
    v_recipient text := core.api_recipient(p_to);
    v_hash text;
    v_used core.api_sends;
    v_contact core.contacts;
    v_queued core.reply_queued;
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        IF p_idempotency_key !~ '^[!-~]{1,255}$' THEN
            RAISE EXCEPTION 'Idempotency-Key must be 1 to 255 printable ASCII characters without spaces'
                USING ERRCODE = 'PW100', HINT = 'Use a UUID or your own order id.';
        END IF;
        -- The request a key stands for: jsonb's text is canonical, so key order in the
        -- message does not make two requests differ.
        v_hash := md5(jsonb_build_array(p_number_id, v_recipient, p_message)::text);
        -- One request per key at a time: a concurrent retry waits here for the first to
        -- commit, then answers its message.
        PERFORM pg_advisory_xact_lock(hashtextextended(p_tenant_id || ':' || p_idempotency_key, 0));
        SELECT * INTO v_used FROM core.api_sends s
        WHERE s.tenant_id = p_tenant_id AND s.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            IF v_used.request_hash <> v_hash THEN
                RAISE EXCEPTION 'Idempotency-Key "%" was already used for a different message', p_idempotency_key
                    USING ERRCODE = 'PW303', HINT = 'Use a new key for a new message; retry a message with its own key and the same body.';
            END IF;
            RETURN core.message_sent(v_used.outbound_id, true);
        END IF;
    END IF;

    PERFORM core.check_reply(p_message, p_tenant_id, v_number.waba_id);
    v_contact := core.api_contact(p_tenant_id, v_recipient);
    IF p_message->>'type' = 'template' AND v_contact.opted_out THEN
        RAISE EXCEPTION 'contact % (%) has opted out of messages', v_contact.contact_id, v_recipient
            USING ERRCODE = 'PW106', HINT = 'The contact opts in again by writing to the number (or api.set_contact_opt_out).';
    END IF;
    SELECT * INTO v_queued FROM core.enqueue_replies(ARRAY[ROW(p_number_id, v_contact.contact_id, 'api',
                                    core.render_reply(p_message, core.contact_vars(v_contact)))::core.reply_request]);
    IF v_queued.outbound_id IS NULL THEN
        RAISE EXCEPTION 'the 24-hour customer service window with % is closed%', v_recipient,
            coalesce(' since ' || v_queued.window_closes_at::text, ' (the contact never wrote to this number)')
            USING ERRCODE = 'PW104', HINT = 'Outside the window only an approved template reaches the contact: {"type": "template", ...}.';
    END IF;
    IF p_idempotency_key IS NOT NULL THEN
        INSERT INTO core.api_sends (tenant_id, idempotency_key, request_hash, outbound_id)
        VALUES (p_tenant_id, p_idempotency_key, v_hash, v_queued.outbound_id);
    END IF;
    RETURN ROW(v_queued.outbound_id, p_number_id, v_contact.contact_id, v_recipient, 'queued', false,
               v_queued.window_closes_at, now())::api.message_sent;
END
$$;
COMMENT ON FUNCTION api.send_message(bigint, bigint, text, jsonb, text) IS
    'Sends one message from a tenant''s own system to p_to (a phone with its country code, or a business-scoped user id), on the number''s reply queue ahead of campaign traffic and paced with it: a template ({"type": "template", ...}) at any time, a free-form message (text, buttons and the other reply shapes of api.reply) only inside the contact''s 24-hour window. The contact is created on first use. With p_idempotency_key, a retry with the same key and message answers the first message (replayed true) and sends nothing. Returns the outbound id, its state and when the window closes. Raises PW100 for a bad recipient, key or message, PW102 for an unknown or unapproved template or wrong parameters, PW104 when the window is closed, PW106 when the contact opted out, PW303 when the key was used for another message, PW202 when the number is not the tenant''s.';

-- One outbound message of the tenant's, any kind, with its status history.
CREATE OR REPLACE FUNCTION api.message(p_tenant_id bigint, p_outbound_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_out jsonb;
BEGIN
    SELECT jsonb_build_object(
               'outbound_id', o.outbound_id, 'number_id', o.number_id, 'contact_id', o.contact_id,
               'recipient', coalesce(c.wa_id, c.user_id), 'kind', o.kind, 'campaign_id', o.campaign_id,
               'state', o.state, 'wamid', o.wamid, 'attempts', o.attempts,
               'error', CASE WHEN o.error_code IS NOT NULL THEN jsonb_build_object(
                   'code', o.error_code, 'category', o.error_category, 'title', e.title, 'detail', o.error_detail) END,
               'idempotency_key', s.idempotency_key,
               -- Each state the message reached, oldest first (a read message was also
               -- delivered even when Meta's delivered status never came).
               'history', (SELECT coalesce(jsonb_agg(jsonb_build_object('state', h.state, 'at', h.at) ORDER BY h.at, h.n), '[]')
                           FROM (VALUES (1, 'queued', o.queued_at), (2, 'claimed', o.claimed_at),
                                        (3, 'accepted', o.accepted_at), (4, 'sent', o.sent_at),
                                        (5, 'delivered', o.delivered_at), (6, 'read', o.read_at),
                                        (7, 'failed', o.failed_at), (8, 'replied', o.replied_at)) h(n, state, at)
                           WHERE h.at IS NOT NULL))
    INTO v_out
    FROM core.outbound_messages o
    JOIN core.wa_numbers n ON n.number_id = o.number_id
    JOIN core.contacts c ON c.contact_id = o.contact_id
    LEFT JOIN core.meta_error_codes e ON e.code = o.error_code
    LEFT JOIN core.api_sends s ON s.outbound_id = o.outbound_id
    WHERE o.outbound_id = p_outbound_id AND n.tenant_id = p_tenant_id;
    IF v_out IS NULL THEN
        RAISE EXCEPTION 'message % not found', p_outbound_id
            USING ERRCODE = 'PW210', HINT = 'Use the outbound_id that api.send_message (POST /v1/messages) returned.';
    END IF;
    RETURN v_out;
END
$$;
COMMENT ON FUNCTION api.message(bigint, bigint) IS
    'One of the tenant''s outbound messages (sent through the send API, a campaign, a bot or an agent): recipient, kind, state, Meta''s wamid, attempts, the error with its title, the idempotency key it was sent with, and its history (each state reached with its time, oldest first). Raises PW210 when the tenant has no such message.';

REVOKE ALL ON FUNCTION api.send_message(bigint, bigint, text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.message(bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.send_message(bigint, bigint, text, jsonb, text) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.message(bigint, bigint) TO pgwa_api;
