-- The send API: one message at a time from a tenant's own systems (a shop, a CRM), to
-- any phone number or business-scoped user id. It takes the reply path: a template is
-- laid out with all its parameters as a campaign's is (core.map_template,
-- core.render_components), a free-form message checked and rendered like an agent's
-- reply (core.check_reply, core.render_reply); queued on the number's reply queue, which
-- api.claim_sends reads before any campaign's, paced and reported like every other send. An idempotency key makes a retry safe: the same key
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

-- One value of a send API template parameter as core.map_template takes a mapping source:
-- a string (or number) is {"value": ...} with the contact's variables filled in
-- ({{name}}; an empty result is "-", as in a reply), {"link": url} a media link,
-- {"media": n} a file uploaded to pgwa (POST /v1/media; its live Meta id, checked by
-- core.media_for_send), and {"value"}, {"media_id": Meta id} and {"location": {...}}
-- are taken as they are. The send API has no CSV: {"column"} is refused (PW102).
CREATE OR REPLACE FUNCTION core.api_template_source(p_src jsonb, p_vars jsonb, p_tenant_id bigint,
                                                    p_number_id bigint, p_now timestamptz) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
DECLARE
    v_text text;
BEGIN
    IF p_src IS NULL OR jsonb_typeof(p_src) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(p_src) IN ('string', 'number', 'boolean') OR (jsonb_typeof(p_src) = 'object' AND jsonb_typeof(p_src->'value') = 'string') THEN
        v_text := CASE WHEN jsonb_typeof(p_src) = 'object' THEN p_src->>'value' ELSE p_src #>> '{}' END;
        IF strpos(v_text, '{{') > 0 THEN
            v_text := coalesce(nullif(core.render_vars(v_text, p_vars), ''), '-');
        END IF;
        RETURN CASE WHEN jsonb_typeof(p_src) = 'object' THEN p_src ELSE '{}' END || jsonb_build_object('value', v_text);
    END IF;
    IF jsonb_typeof(p_src) <> 'object' THEN
        RETURN p_src;                       -- core.map_template names it and says what it takes
    END IF;
    IF p_src ? 'column' THEN
        RAISE EXCEPTION 'the send API takes parameter values, not CSV columns: %', left(p_src::text, 100)
            USING ERRCODE = 'PW102', HINT = 'Give the value itself: "Ana", {"link": "https://..."}, {"media": 12} or {"location": {...}}.';
    END IF;
    IF p_src ? 'link' THEN
        RETURN (p_src - 'link') || jsonb_build_object('value', p_src->'link');
    END IF;
    IF p_src ? 'media' THEN
        IF jsonb_typeof(p_src->'media') <> 'number' THEN
            RAISE EXCEPTION '"media" must be the number POST /v1/media returned, not %', left(p_src->>'media', 60)
                USING ERRCODE = 'PW102', HINT = 'Give {"media": 12} for an uploaded file, {"media_id": "..."} for a Meta media id or {"link": "https://..."}.';
        END IF;
        RETURN (p_src - 'media') || jsonb_build_object('media_id',
            core.media_for_send(p_tenant_id, (p_src->>'media')::bigint, p_number_id, p_now)->'id');
    END IF;
    RETURN p_src;
END
$$;

-- The values of a mapping (core.map_template's sources) as slots: each {"value": v}
-- becomes {"column": "v000"}, {"column": "v001"} ... in document order, and the values a
-- list in that order; media ids, locations and file names stay in the shape.
-- core.map_template numbers its columns in name order, so slot n is the n-th value.
CREATE OR REPLACE FUNCTION core.api_template_shape(p_spec jsonb, OUT shape jsonb, OUT vals jsonb)
LANGUAGE plpgsql IMMUTABLE SET search_path = '' AS $$
DECLARE
    v_part text;
    v_key text;
    v_src jsonb;
    v_n integer := 0;
BEGIN
    shape := p_spec;
    vals := '[]';
    FOREACH v_part IN ARRAY ARRAY['header', 'body', 'buttons'] LOOP
        CONTINUE WHEN NOT p_spec ? v_part;
        IF v_part = 'header' THEN
            IF jsonb_typeof(p_spec->'header') = 'object' AND jsonb_typeof(p_spec#>'{header,value}') = 'string' THEN
                shape := jsonb_set(shape, '{header}', ((p_spec->'header') - 'value')
                                                      || jsonb_build_object('column', format('v%s', lpad(v_n::text, 3, '0'))));
                vals := vals || jsonb_build_array(p_spec#>'{header,value}');
                v_n := v_n + 1;
            END IF;
            CONTINUE;
        END IF;
        FOR v_key, v_src IN
            SELECT CASE WHEN jsonb_typeof(p_spec->v_part) = 'array' THEN (e.i - 1)::text ELSE e.k END, e.v
            FROM (SELECT NULL::text AS k, a.v, a.i FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p_spec->v_part) = 'array'
                                                                               THEN p_spec->v_part END) WITH ORDINALITY a(v, i)
                  UNION ALL
                  SELECT o.key, o.value, row_number() OVER (ORDER BY o.key) FROM jsonb_each(CASE WHEN jsonb_typeof(p_spec->v_part) = 'object'
                                                                                              THEN p_spec->v_part END) o) e
            ORDER BY e.i
        LOOP
            CONTINUE WHEN jsonb_typeof(v_src) <> 'object' OR jsonb_typeof(v_src->'value') <> 'string';
            shape := jsonb_set(shape, ARRAY[v_part, v_key], (v_src - 'value')
                                                            || jsonb_build_object('column', format('v%s', lpad(v_n::text, 3, '0'))));
            vals := vals || jsonb_build_array(v_src->'value');
            v_n := v_n + 1;
        END LOOP;
    END LOOP;
END
$$;

-- Whether the values fill a cached skeleton as core.map_template would accept them as
-- constants (core.check_source): none empty, a media header a http(s) link, a copy code
-- at most 15 characters. When not, the caller lays the request out with map_template
-- itself, which names what is wrong.
CREATE OR REPLACE FUNCTION core.api_values_fit(p_render jsonb, p_values jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT NOT EXISTS (
        SELECT 1 FROM jsonb_array_elements(p_render) c, jsonb_array_elements(c->'parameters') p,
             LATERAL (SELECT p_values->>((p->>'$slot')::integer) AS v) x
        WHERE p ? '$slot'
          AND (x.v IS NULL OR btrim(x.v) = ''
               OR (p->>'$path' LIKE '%,link}' AND x.v !~* '^https?://[^\s/]+')
               OR (p->>'$path' = '{coupon_code}' AND length(x.v) > 15)))
$$;

-- Meta's template message of a send API template request: the approved template of the
-- number's WABA, its parameters (header, body, buttons; at the top level, under
-- "parameters", or the older "params" for the body) checked and laid out by
-- core.map_template and core.render_components exactly as a campaign's are. The layout
-- of a shape of parameters already seen comes from core.api_template_layouts. Raises
-- PW100 for an unknown key, PW102 for an unknown or unapproved template or a parameter
-- that does not fit (naming the component and the parameter).
CREATE OR REPLACE FUNCTION core.api_template_message(p_message jsonb, p_vars jsonb, p_tenant_id bigint,
                                                     p_number core.wa_numbers, p_now timestamptz) RETURNS jsonb
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_template core.templates;
    v_params jsonb := CASE WHEN jsonb_typeof(p_message->'parameters') = 'object' THEN p_message->'parameters' ELSE '{}' END;
    v_header jsonb := coalesce(p_message->'header', v_params->'header');
    v_body jsonb := coalesce(p_message->'body', p_message->'params', v_params->'body',
                             CASE WHEN jsonb_typeof(p_message->'parameters') = 'array' THEN p_message->'parameters' END);
    v_buttons jsonb := coalesce(p_message->'buttons', v_params->'buttons');
    v_key text;
    v_spec jsonb;
    v_shape jsonb;
    v_values jsonb;
    v_md5 text;
    v_render jsonb;
BEGIN
    SELECT string_agg(format('"%s"', k), ', ') INTO v_key FROM jsonb_object_keys(p_message) k
    WHERE k NOT IN ('type', 'name', 'language', 'header', 'body', 'buttons', 'params', 'parameters');
    IF v_key IS NOT NULL THEN
        RAISE EXCEPTION 'a template message has no key %', v_key USING ERRCODE = 'PW100',
            HINT = '{"name": "...", "language": "en_US", "header": ..., "body": [...] or {...}, "buttons": {"0": ...}}';
    END IF;
    SELECT * INTO v_template FROM core.templates t
    WHERE t.tenant_id = p_tenant_id AND t.waba_id = p_number.waba_id
      AND t.name = p_message->>'name' AND t.language = p_message->>'language';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'template "%" (%) does not exist for WABA %', p_message->>'name',
            coalesce(p_message->>'language', 'no language'), p_number.waba_id
            USING ERRCODE = 'PW102', HINT = 'Sync templates from Meta or check the name and language.';
    ELSIF v_template.status <> 'APPROVED' THEN
        RAISE EXCEPTION 'template "%" (%) is %, not APPROVED', v_template.name, v_template.language, v_template.status
            USING ERRCODE = 'PW102', HINT = 'Only approved templates can be sent.';
    END IF;
    v_spec := jsonb_strip_nulls(jsonb_build_object(
        'header', core.api_template_source(v_header, p_vars, p_tenant_id, p_number.number_id, p_now),
        'body', CASE jsonb_typeof(v_body)
            WHEN 'array' THEN (SELECT coalesce(jsonb_agg(coalesce(core.api_template_source(b.value, p_vars, p_tenant_id,
                                                           p_number.number_id, p_now), 'null') ORDER BY b.i), '[]')
                               FROM jsonb_array_elements(v_body) WITH ORDINALITY b(value, i))
            WHEN 'object' THEN (SELECT coalesce(jsonb_object_agg(b.key, core.api_template_source(b.value, p_vars, p_tenant_id,
                                                                  p_number.number_id, p_now)), '{}')
                                FROM jsonb_each(v_body) b)
            ELSE v_body END,
        'buttons', CASE jsonb_typeof(v_buttons)
            WHEN 'object' THEN (SELECT coalesce(jsonb_object_agg(b.key, core.api_template_source(b.value, p_vars, p_tenant_id,
                                                                  p_number.number_id, p_now)), '{}')
                                FROM jsonb_each(v_buttons) b)
            -- A list: the button at each position (null where a button takes nothing).
            WHEN 'array' THEN (SELECT coalesce(jsonb_object_agg((b.i - 1)::text, core.api_template_source(b.value, p_vars, p_tenant_id,
                                                                 p_number.number_id, p_now)), '{}')
                               FROM jsonb_array_elements(v_buttons) WITH ORDINALITY b(value, i)
                               WHERE jsonb_typeof(b.value) <> 'null')
            ELSE v_buttons END));

    SELECT s.shape, s.vals INTO v_shape, v_values FROM core.api_template_shape(v_spec) s;
    v_md5 := md5(v_template.components::text || coalesce(v_template.parameter_format, '') || v_shape::text);
    SELECT l.render INTO v_render FROM core.api_template_layouts l
    WHERE l.template_id = v_template.template_id AND l.shape_md5 = v_md5;
    IF v_render IS NOT NULL AND NOT core.api_values_fit(v_render, v_values) THEN
        -- Laid out with its values: map_template names what does not fit.
        v_render := (core.map_template(v_template, v_spec)).render;
    ELSIF v_render IS NULL THEN
        -- A new shape: checked with its values first (what does not fit raises here,
        -- named), then laid out with slots and kept.
        PERFORM core.map_template(v_template, v_spec);
        v_render := (core.map_template(v_template, v_shape)).render;
        INSERT INTO core.api_template_layouts (template_id, shape_md5, render)
        VALUES (v_template.template_id, v_md5, v_render) ON CONFLICT DO NOTHING;
    END IF;
    RETURN jsonb_build_object('type', 'template', 'template',
        jsonb_build_object('name', v_template.name, 'language', jsonb_build_object('code', v_template.language))
        || CASE WHEN jsonb_array_length(v_render) = 0 THEN '{}'::jsonb
                ELSE jsonb_build_object('components', core.render_components(v_render, v_values)) END);
END
$$;

CREATE OR REPLACE FUNCTION api.send_message(p_tenant_id bigint, p_number_id bigint, p_to text, p_message jsonb,
                                            p_idempotency_key text DEFAULT NULL, p_now timestamptz DEFAULT NULL,
                                            p_wake boolean DEFAULT true)
RETURNS api.message_sent
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_number core.wa_numbers := core.number_for(p_tenant_id, p_number_id);
    v_recipient text := core.api_recipient(p_to);
    v_template boolean := p_message->>'type' = 'template';
    v_hash text;
    v_used core.api_sends;
    v_contact core.contacts;
    v_last_inbound timestamptz;
    v_message jsonb;
    v_outbound_id bigint;
    v_body jsonb;
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
        -- commit, then answers its message (or, if the first failed, sends it itself).
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

    IF NOT v_template THEN
        PERFORM core.check_reply(p_message, p_tenant_id, v_number.waba_id);
    END IF;
    v_contact := core.api_contact(p_tenant_id, v_recipient);
    SELECT v.last_inbound_at INTO v_last_inbound FROM core.conversations v
    WHERE v.number_id = p_number_id AND v.contact_id = v_contact.contact_id;
    IF v_template THEN
        IF v_contact.opted_out THEN
            RAISE EXCEPTION 'contact % (%) has opted out of messages', v_contact.contact_id, v_recipient
                USING ERRCODE = 'PW106', HINT = 'The contact opts in again by writing to the number (or api.set_contact_opt_out).';
        END IF;
        v_message := core.api_template_message(p_message, core.contact_vars(v_contact), p_tenant_id, v_number, v_now);
    ELSE
        IF NOT core.window_open(v_last_inbound, v_now) THEN
            RAISE EXCEPTION 'the 24-hour customer service window with % %', v_recipient,
                coalesce('closed at ' || to_char(core.window_closes_at(v_last_inbound) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                         'is not open: the contact never wrote to this number')
                USING ERRCODE = 'PW304',
                      DETAIL = json_build_object('window_closes_at', core.window_closes_at(v_last_inbound))::text,
                      HINT = 'Outside the window only an approved template reaches the contact: {"type": "template", ...}.';
        END IF;
        v_message := core.render_reply(core.resolve_reply_media(p_message, p_tenant_id, p_number_id),
                                       core.contact_vars(v_contact));
    END IF;

    -- Queued as core.enqueue_replies queues a reply ({"o", "b"} on the reply queue) and
    -- written to the shared inbox, so that agents see what the tenant's system sent. No
    -- NOTIFY inside this transaction: the dashboard's inbox trigger leaves API sends out,
    -- and the sender's wake-up is the caller's after commit (p_wake), since a NOTIFY holds
    -- PostgreSQL's cluster-wide notify lock through the commit's WAL flush, one sending
    -- transaction at a time.
    v_outbound_id := nextval('core.outbound_messages_outbound_id_seq');
    INSERT INTO core.outbound_messages (outbound_id, number_id, contact_id, kind)
    OVERRIDING SYSTEM VALUE VALUES (v_outbound_id, p_number_id, v_contact.contact_id, 'api');
    v_body := jsonb_build_object('messaging_product', 'whatsapp', 'recipient_type', 'individual')
        -- A user known only by a business-scoped user id is addressed by it.
        || CASE WHEN v_contact.wa_id IS NOT NULL THEN jsonb_build_object('to', v_contact.wa_id)
                ELSE jsonb_build_object('recipient', v_contact.user_id) END
        || v_message
        || jsonb_build_object('biz_opaque_callback_data', core.opaque_data(NULL, v_outbound_id));
    INSERT INTO core.inbox_messages (number_id, contact_id, direction, type, body, payload, outbound_id)
    VALUES (p_number_id, v_contact.contact_id, 'out', coalesce(v_message->>'type', 'text'),
            core.message_text(v_message), v_body, v_outbound_id);
    INSERT INTO core.conversations AS v (number_id, contact_id, last_message_at)
    VALUES (p_number_id, v_contact.contact_id, now())
    ON CONFLICT (number_id, contact_id) DO UPDATE SET
        last_message_at = greatest(v.last_message_at, excluded.last_message_at);
    PERFORM pgmq.send(core.reply_queue(p_number_id), jsonb_build_object('o', v_outbound_id, 'b', v_body));
    -- p_wake false: the caller wakes the sender once this has committed (POST /v1/messages does).
    IF p_wake THEN
        PERFORM core.wake_sender(p_number_id);
    END IF;
    IF p_idempotency_key IS NOT NULL THEN
        INSERT INTO core.api_sends (tenant_id, idempotency_key, request_hash, outbound_id)
        VALUES (p_tenant_id, p_idempotency_key, v_hash, v_outbound_id);
    END IF;
    RETURN ROW(v_outbound_id, p_number_id, v_contact.contact_id, v_recipient, 'queued', false,
               core.window_closes_at(v_last_inbound), now())::api.message_sent;
END
$$;
COMMENT ON FUNCTION api.send_message(bigint, bigint, text, jsonb, text, timestamptz, boolean) IS
    'Sends one message from a tenant''s own system to p_to (a phone with its country code, or a business-scoped user id), on the number''s reply queue ahead of campaign traffic and paced with it. A template at any time: {"type": "template", "name", "language", "header": "text" | {"link"} | {"media": uploaded id} | {"media_id": Meta id} | {"location": {...}}, "body": [values] (POSITIONAL) or {"name": value} (NAMED), "buttons": {"<index>": value}}, laid out by core.map_template as a campaign''s; values may use {{name}} and other contact variables. A free-form message (text, buttons, media, list, cta_url: the reply shapes of api.reply) only inside the contact''s 24-hour window at p_now (NULL: the clock). The contact is created on first use. With p_idempotency_key, a retry with the same key and message answers the first message (replayed true) and sends nothing; a concurrent one waits for the first. The message is written to the shared inbox (without a dashboard NOTIFY). p_wake false leaves waking the sender (NOTIFY pgwa_send) to the caller after commit. Returns the outbound id, its state and when the window closes. Raises PW100 for a bad recipient, key or message, PW102 for an unknown or unapproved template or a parameter that does not fit, PW304 when the window is closed (naming when it closed), PW106 when the contact opted out, PW303 when the key was used for another message, PW202 when the number is not the tenant''s, PW245/PW345 for an unknown or expired uploaded media.';

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

REVOKE ALL ON FUNCTION api.send_message(bigint, bigint, text, jsonb, text, timestamptz, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.message(bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.send_message(bigint, bigint, text, jsonb, text, timestamptz, boolean) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.message(bigint, bigint) TO pgwa_api;
