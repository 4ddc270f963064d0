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
    v_plain boolean := false;
    v_fits boolean;
BEGIN
    IF p_message - '{type,name,language,header,body,buttons,params,parameters}'::text[] <> '{}'::jsonb THEN
        SELECT string_agg(format('"%s"', k), ', ') INTO v_key FROM jsonb_object_keys(p_message) k
        WHERE k NOT IN ('type', 'name', 'language', 'header', 'body', 'buttons', 'params', 'parameters');
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
    -- The common request, a body list of plain values (no {{variables}}), has a shape known
    -- without walking it (core.api_template_shape's: slot n the n-th value); others are walked.
    IF v_header IS NULL AND v_buttons IS NULL AND jsonb_typeof(v_body) = 'array' AND jsonb_array_length(v_body) > 0 THEN
        SELECT bool_and(jsonb_typeof(b.value) IN ('string', 'number', 'boolean') AND strpos(b.value #>> '{}', '{{') = 0),
               jsonb_build_object('body', jsonb_agg(jsonb_build_object('column', format('v%s', lpad((b.i - 1)::text, 3, '0')))
                                                    ORDER BY b.i)),
               jsonb_agg(to_jsonb(b.value #>> '{}') ORDER BY b.i)
        INTO v_plain, v_shape, v_values
        FROM jsonb_array_elements(v_body) WITH ORDINALITY b(value, i);
    END IF;
    IF NOT v_plain THEN
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
    END IF;
    v_md5 := md5(v_template.components::text || coalesce(v_template.parameter_format, '') || v_shape::text);
    SELECT l.render INTO v_render FROM core.api_template_layouts l
    WHERE l.template_id = v_template.template_id AND l.shape_md5 = v_md5;
    v_fits := v_render IS NOT NULL AND core.api_values_fit(v_render, v_values);
    IF v_plain AND NOT v_fits THEN
        -- What core.api_template_source makes of plain values, for core.map_template below.
        v_spec := jsonb_build_object('body', (SELECT jsonb_agg(jsonb_build_object('value', v.value) ORDER BY v.i)
                                              FROM jsonb_array_elements(v_values) WITH ORDINALITY v(value, i)));
    END IF;
    IF v_render IS NOT NULL AND NOT v_fits THEN
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
                ELSE jsonb_build_object('components', (SELECT components FROM core.render_components(v_render, v_values) components)) END);
END
$$;

-- The send API's batch: every item ({"tenant_id", "number_id", "to", "message",
-- "idempotency_key"}) checked and laid out on its own, in a block of its own, so that its
-- error is its answer and leaves nothing behind; then what the survivors write, written
-- set-based: new contacts, outbound messages, the inbox, conversations, one
-- pgmq.send_batch per reply queue, idempotency keys. Two items with one tenant's key are
-- one message: the second answers the first's (replayed) or PW303. Keys are locked in one
-- order (their lock ids sorted) before anything else, so that two batches never wait on
-- each other in a cycle, and a key used by a batch still in flight waits for it to commit.
-- lock_timeout: a row another transaction holds for long (a contact that a campaign being
-- created has inserted and not committed, for the tens of seconds a million-row list takes)
-- would hold up every request of the batch, and with POST /v1/messages' batches all stuck
-- the whole API. Past it the batch fails with 55P03, POST /v1/messages sends its requests
-- again one at a time, and only the request whose row is held answers 503 (Retry-After).
CREATE OR REPLACE FUNCTION api.send_messages(p_items jsonb, p_now timestamptz DEFAULT NULL,
                                             p_wake boolean DEFAULT true)
RETURNS SETOF api.send_result
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' SET lock_timeout = '2s' AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_count integer := CASE WHEN jsonb_typeof(p_items) = 'array' THEN jsonb_array_length(p_items) ELSE 0 END;
    -- The answers, by item: the message, or the error's parts.
    r_sent api.message_sent[] := '{}';
    r_state text[] := '{}';
    r_text text[] := '{}';
    r_detail text[] := '{}';
    r_hint text[] := '{}';
    r_replayed bigint[] := '{}';        -- the message an earlier batch sent with the item's key
    v_item jsonb;
    v_tenant_id bigint;
    v_number core.wa_numbers;
    v_recipient text;
    v_message jsonb;
    v_key text;
    v_hash text;
    v_used core.api_sends;
    v_first integer;
    v_contact core.contacts;
    v_last_inbound timestamptz;
    v_rendered jsonb;
    v_seen jsonb := '{}';           -- "tenant:key" -> {"h": hash, "s": the survivor that sent it}
    v_replay_items integer[] := '{}';   -- items answered by a survivor of this batch ...
    v_replay_of integer[] := '{}';      -- ... and that survivor
    v_s integer := 0;                   -- survivors so far
    v_next integer;                     -- the item in hand
    v_replay record;
    -- The survivors, one position each.
    s_item integer[] := '{}';
    s_tenant bigint[] := '{}';
    s_number bigint[] := '{}';
    s_contact bigint[] := '{}';
    s_wa text[] := '{}';
    s_user text[] := '{}';
    s_recipient text[] := '{}';
    s_message jsonb[] := '{}';
    s_last_inbound timestamptz[] := '{}';
    s_key text[] := '{}';
    s_hash text[] := '{}';
    s_outbound bigint[];
    s_body jsonb[];
    v_n integer;
    v_state text;
    v_text text;
    v_detail text;
    v_hint text;
BEGIN
    IF jsonb_typeof(p_items) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'p_items must be a JSON array of messages' USING ERRCODE = 'PW100',
            HINT = '[{"tenant_id": 1, "number_id": 1, "to": "+15551234567", "message": {...}, "idempotency_key": "..."}]';
    END IF;
    -- Every well-formed key of the batch, locked in lock-id order (see above).
    PERFORM pg_advisory_xact_lock(k.lock_id)
    FROM (SELECT DISTINCT hashtextextended(i.value->>'tenant_id' || ':' || (i.value->>'idempotency_key'), 0) AS lock_id
          FROM jsonb_array_elements(p_items) i
          WHERE i.value->>'tenant_id' ~ '^[0-9]{1,18}$' AND i.value->>'idempotency_key' ~ '^[!-~]{1,255}$'
          ORDER BY 1) k;

    -- Items run in one block (one subtransaction) while none fails: a block per item would
    -- cost each item the set-up of every SQL function it calls (PL/pgSQL keeps their plans
    -- per subtransaction). The item that raises gets its error, which undoes only what its
    -- block wrote (layouts cached by core.api_template_message; what an item keeps is in
    -- variables), and the next block starts after it.
    v_next := 1;
    WHILE v_next <= v_count LOOP
        BEGIN
            FOR v_n IN v_next .. v_count LOOP
                v_next := v_n;
                v_item := p_items->(v_n - 1);
                v_tenant_id := (v_item->>'tenant_id')::bigint;
                -- Batches come mostly from one number: looked up again only when it changes.
                IF v_number.number_id IS DISTINCT FROM (v_item->>'number_id')::bigint
                   OR v_number.tenant_id IS DISTINCT FROM v_tenant_id THEN
                    v_number := core.number_for(v_tenant_id, (v_item->>'number_id')::bigint);
                END IF;
                v_recipient := core.api_recipient(v_item->>'to');
                v_message := v_item->'message';
                IF jsonb_typeof(v_message) IS DISTINCT FROM 'object' THEN
                    RAISE EXCEPTION 'message must be a JSON object' USING ERRCODE = 'PW100',
                        HINT = '{"type": "text", "text": "..."} or {"type": "template", "name": "...", "language": "en_US"}';
                END IF;
                v_key := v_item->>'idempotency_key';
                v_hash := NULL;
                IF v_key IS NOT NULL THEN
                    IF v_key !~ '^[!-~]{1,255}$' THEN
                        RAISE EXCEPTION 'Idempotency-Key must be 1 to 255 printable ASCII characters without spaces'
                            USING ERRCODE = 'PW100', HINT = 'Use a UUID or your own order id.';
                    END IF;
                    -- The request a key stands for: jsonb's text is canonical, so key order in the
                    -- message does not make two requests differ.
                    v_hash := md5(jsonb_build_array(v_number.number_id, v_recipient, v_message)::text);
                    v_first := (v_seen->(v_tenant_id || ':' || v_key)->>'s')::integer;
                    IF v_first IS NOT NULL THEN
                        IF v_seen->(v_tenant_id || ':' || v_key)->>'h' <> v_hash THEN
                            RAISE EXCEPTION 'Idempotency-Key "%" was already used for a different message', v_key
                                USING ERRCODE = 'PW303', HINT = 'Use a new key for a new message; retry a message with its own key and the same body.';
                        END IF;
                        v_replay_items[cardinality(v_replay_items) + 1] := v_n;
                        v_replay_of[cardinality(v_replay_of) + 1] := v_first;
                        CONTINUE;
                    END IF;
                    SELECT * INTO v_used FROM core.api_sends s
                    WHERE s.tenant_id = v_tenant_id AND s.idempotency_key = v_key;
                    IF FOUND THEN
                        IF v_used.request_hash <> v_hash THEN
                            RAISE EXCEPTION 'Idempotency-Key "%" was already used for a different message', v_key
                                USING ERRCODE = 'PW303', HINT = 'Use a new key for a new message; retry a message with its own key and the same body.';
                        END IF;
                        r_replayed[v_n] := v_used.outbound_id;     -- answered once all is written
                        CONTINUE;
                    END IF;
                END IF;

                IF v_message->>'type' IS DISTINCT FROM 'template' THEN
                    PERFORM core.check_reply(v_message, v_tenant_id, v_number.waba_id);
                END IF;
                -- The contact as it is, or as it will be created (a phone as wa_id, a user id as
                -- user_id): each lookup on its own unique index.
                v_contact := NULL;
                IF v_recipient ~ '^[0-9]+$' THEN
                    SELECT * INTO v_contact FROM core.contacts c WHERE c.tenant_id = v_tenant_id AND c.wa_id = v_recipient;
                ELSE
                    SELECT * INTO v_contact FROM core.contacts c WHERE c.tenant_id = v_tenant_id AND c.user_id = v_recipient;
                END IF;
                v_last_inbound := NULL;
                IF v_contact.contact_id IS NULL THEN
                    v_contact.tenant_id := v_tenant_id;
                    v_contact.attributes := '{}';
                    v_contact.opted_out := false;
                    IF v_recipient ~ '^[0-9]+$' THEN
                        v_contact.wa_id := v_recipient;
                    ELSE
                        v_contact.user_id := v_recipient;
                    END IF;
                ELSE
                    SELECT v.last_inbound_at INTO v_last_inbound FROM core.conversations v
                    WHERE v.number_id = v_number.number_id AND v.contact_id = v_contact.contact_id;
                END IF;
                IF v_message->>'type' = 'template' THEN
                    IF v_contact.opted_out THEN
                        RAISE EXCEPTION 'contact % (%) has opted out of messages', v_contact.contact_id, v_recipient
                            USING ERRCODE = 'PW106', HINT = 'The contact opts in again by writing to the number (or api.set_contact_opt_out).';
                    END IF;
                    -- The contact's variables only for a message that uses them.
                    v_rendered := core.api_template_message(v_message, CASE WHEN strpos(v_message::text, '{{') > 0
                                                                            THEN core.contact_vars(v_contact) ELSE '{}' END,
                                                            v_tenant_id, v_number, v_now);
                ELSE
                    IF NOT core.window_open(v_last_inbound, v_now) THEN
                        RAISE EXCEPTION 'the 24-hour customer service window with % %', v_recipient,
                            coalesce('closed at ' || to_char(core.window_closes_at(v_last_inbound) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                                     'is not open: the contact never wrote to this number')
                            USING ERRCODE = 'PW304',
                                  DETAIL = json_build_object('window_closes_at', core.window_closes_at(v_last_inbound))::text,
                                  HINT = 'Outside the window only an approved template reaches the contact: {"type": "template", ...}.';
                    END IF;
                    v_rendered := core.render_reply(core.resolve_reply_media(v_message, v_tenant_id, v_number.number_id),
                                                    core.contact_vars(v_contact));
                END IF;

                -- Assigned by position: PL/pgSQL changes an array in place, where || copies it.
                v_s := v_s + 1;
                s_item[v_s] := v_n;
                s_tenant[v_s] := v_tenant_id;
                s_number[v_s] := v_number.number_id;
                s_contact[v_s] := v_contact.contact_id;
                s_wa[v_s] := v_contact.wa_id;
                s_user[v_s] := v_contact.user_id;
                s_recipient[v_s] := v_recipient;
                s_message[v_s] := v_rendered;
                s_last_inbound[v_s] := v_last_inbound;
                s_key[v_s] := v_key;
                s_hash[v_s] := v_hash;
                IF v_key IS NOT NULL THEN
                    v_seen := v_seen || jsonb_build_object(v_tenant_id || ':' || v_key,
                                                           jsonb_build_object('h', v_hash, 's', v_s));
                END IF;
            END LOOP;
            v_next := v_count + 1;
        EXCEPTION
        WHEN deadlock_detected OR serialization_failure THEN
            -- Two batches caching the same new layouts: the batch fails whole, and POST
            -- /v1/messages sends its requests again one at a time.
            RAISE;
        WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_text = MESSAGE_TEXT,
                                    v_detail = PG_EXCEPTION_DETAIL, v_hint = PG_EXCEPTION_HINT;
            r_state[v_next] := v_state;
            r_text[v_next] := v_text;
            r_detail[v_next] := nullif(v_detail, '');
            r_hint[v_next] := nullif(v_hint, '');
            v_next := v_next + 1;
        END;
    END LOOP;

    IF v_s > 0 THEN
        -- Contacts seen for the first time, in key order (two batches never wait on each
        -- other in a cycle); one created meanwhile by another transaction is taken as it is.
        INSERT INTO core.contacts (tenant_id, wa_id, user_id)
        SELECT DISTINCT s.t, s.w, s.u FROM unnest(s_tenant, s_wa, s_user, s_contact) s(t, w, u, c)
        WHERE s.c IS NULL
        ORDER BY 1, 2, 3
        ON CONFLICT DO NOTHING;
        IF array_position(s_contact, NULL) IS NOT NULL THEN
            SELECT array_agg(coalesce(s.c, cw.contact_id, cu.contact_id) ORDER BY s.n),
                   array_agg(CASE WHEN s.c IS NOT NULL THEN s.w ELSE coalesce(cw.wa_id, cu.wa_id) END ORDER BY s.n),
                   array_agg(CASE WHEN s.c IS NOT NULL THEN s.u ELSE coalesce(cw.user_id, cu.user_id) END ORDER BY s.n)
            INTO s_contact, s_wa, s_user
            FROM unnest(s_tenant, s_wa, s_user, s_contact) WITH ORDINALITY s(t, w, u, c, n)
            LEFT JOIN core.contacts cw ON s.c IS NULL AND s.w IS NOT NULL AND cw.tenant_id = s.t AND cw.wa_id = s.w
            LEFT JOIN core.contacts cu ON s.c IS NULL AND s.w IS NULL AND cu.tenant_id = s.t AND cu.user_id = s.u;
        END IF;

        -- The requests as core.enqueue_replies queues a reply ({"o", "b"} on the reply queue);
        -- a user known only by a business-scoped user id is addressed by it.
        SELECT array_agg(x.o ORDER BY x.n),
               array_agg(jsonb_build_object('messaging_product', 'whatsapp', 'recipient_type', 'individual')
                         || CASE WHEN x.w IS NOT NULL THEN jsonb_build_object('to', x.w)
                                 ELSE jsonb_build_object('recipient', x.u) END
                         || x.m
                         || jsonb_build_object('biz_opaque_callback_data', core.opaque_data(NULL, x.o)) ORDER BY x.n)
        INTO s_outbound, s_body
        FROM (SELECT s.*, nextval('core.outbound_messages_outbound_id_seq') AS o
              FROM unnest(s_wa, s_user, s_message) WITH ORDINALITY s(w, u, m, n)) x;

        INSERT INTO core.outbound_messages (outbound_id, number_id, contact_id, kind)
        OVERRIDING SYSTEM VALUE
        SELECT s.o, s.nb, s.c, 'api' FROM unnest(s_outbound, s_number, s_contact) s(o, nb, c);
        -- Written to the shared inbox, so that agents see what the tenant's system sent. No
        -- NOTIFY inside this transaction: the dashboard's inbox trigger leaves API sends
        -- out, and the sender's wake-up is the caller's after commit (p_wake), since a NOTIFY
        -- holds PostgreSQL's cluster-wide notify lock through the commit's WAL flush.
        INSERT INTO core.inbox_messages (number_id, contact_id, direction, type, body, payload, outbound_id)
        SELECT s.nb, s.c, 'out', coalesce(s.m->>'type', 'text'), core.message_text(s.m), s.b, s.o
        FROM unnest(s_number, s_contact, s_message, s_body, s_outbound) s(nb, c, m, b, o);
        INSERT INTO core.conversations AS v (number_id, contact_id, last_message_at)
        SELECT DISTINCT s.nb, s.c, now() FROM unnest(s_number, s_contact) s(nb, c)
        ORDER BY 1, 2
        ON CONFLICT (number_id, contact_id) DO UPDATE SET
            last_message_at = greatest(v.last_message_at, excluded.last_message_at);
        PERFORM pgmq.send_batch(core.reply_queue(q.nb), q.msgs)
        FROM (SELECT s.nb, array_agg(jsonb_build_object('o', s.o, 'b', s.b) ORDER BY s.n) AS msgs
              FROM unnest(s_number, s_outbound, s_body) WITH ORDINALITY s(nb, o, b, n)
              GROUP BY s.nb ORDER BY s.nb) q;
        INSERT INTO core.api_sends (tenant_id, idempotency_key, request_hash, outbound_id)
        SELECT s.t, s.k, s.h, s.o FROM unnest(s_tenant, s_key, s_hash, s_outbound) s(t, k, h, o)
        WHERE s.k IS NOT NULL;
        -- p_wake false: the caller wakes the sender once this has committed (POST /v1/messages does).
        IF p_wake THEN
            PERFORM core.wake_sender(nb) FROM (SELECT DISTINCT nb FROM unnest(s_number) nb) d;
        END IF;

        FOR v_n IN 1 .. v_s LOOP
            r_sent[s_item[v_n]] := ROW(s_outbound[v_n], s_number[v_n], s_contact[v_n], s_recipient[v_n],
                                       'queued', false, core.window_closes_at(s_last_inbound[v_n]),
                                       now())::api.message_sent;
        END LOOP;
        FOR v_n IN 1 .. cardinality(v_replay_items) LOOP
            r_sent[v_replay_items[v_n]] := ROW(s_outbound[v_replay_of[v_n]], s_number[v_replay_of[v_n]],
                                               s_contact[v_replay_of[v_n]], s_recipient[v_replay_of[v_n]],
                                               'queued', true, core.window_closes_at(s_last_inbound[v_replay_of[v_n]]),
                                               now())::api.message_sent;
        END LOOP;
    END IF;
    -- Keys used by earlier batches: their messages in one query (core.message_sent's).
    IF cardinality(r_replayed) > 0 THEN
        FOR v_replay IN
            SELECT r.n, ROW(o.outbound_id, o.number_id, o.contact_id, coalesce(c.wa_id, c.user_id), o.state, true,
                            core.window_closes_at(v.last_inbound_at), o.queued_at)::api.message_sent AS sent
            FROM generate_subscripts(r_replayed, 1) r(n)
            JOIN core.outbound_messages o ON o.outbound_id = r_replayed[r.n]
            JOIN core.contacts c ON c.contact_id = o.contact_id
            LEFT JOIN core.conversations v ON v.number_id = o.number_id AND v.contact_id = o.contact_id
        LOOP
            r_sent[v_replay.n] := v_replay.sent;
        END LOOP;
    END IF;
    -- Arrays assigned by position are as long as their last position: each answer at its item.
    RETURN QUERY SELECT g.n, r_sent[g.n], r_state[g.n], r_text[g.n], r_detail[g.n], r_hint[g.n]
                 FROM generate_series(1, v_count) g(n);
END
$$;
COMMENT ON FUNCTION api.send_messages(jsonb, timestamptz, boolean) IS
    'Sends a batch of messages as api.send_message sends one, in one transaction: p_items is a JSON array of {"tenant_id", "number_id", "to", "message", "idempotency_key"} (the tenant taken from each request''s own key). Returns one api.send_result per item, in order: the message (api.message_sent; replayed true for a key already used, in this batch or before) or the error that item alone raised (sqlstate, message, detail, hint: PW100, PW102, PW106, PW202, PW303, PW304, PW245/PW345 as api.send_message raises them), which leaves nothing of that item behind and sends the others. Two items with one tenant''s key send once: the second answers the first''s message, or PW303 for another message. p_wake false leaves waking the senders (NOTIFY pgwa_send) to the caller after commit. Raises PW100 when p_items is not an array, and 55P03 (the batch whole) when a row it needs, a new contact say, is held by another transaction for more than 2 s (lock_timeout).';

CREATE OR REPLACE FUNCTION api.send_message(p_tenant_id bigint, p_number_id bigint, p_to text, p_message jsonb,
                                            p_idempotency_key text DEFAULT NULL, p_now timestamptz DEFAULT NULL,
                                            p_wake boolean DEFAULT true)
RETURNS api.message_sent
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_result api.send_result;
BEGIN
    SELECT * INTO v_result FROM api.send_messages(jsonb_build_array(jsonb_build_object(
        'tenant_id', p_tenant_id, 'number_id', p_number_id, 'to', p_to, 'message', p_message,
        'idempotency_key', p_idempotency_key)), p_now, p_wake);
    IF v_result.sqlstate IS NULL THEN
        RETURN v_result.sent;
    END IF;
    -- The item's error, raised as it was (RAISE takes no null option).
    IF v_result.detail IS NOT NULL AND v_result.hint IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = v_result.sqlstate, MESSAGE = v_result.message,
            DETAIL = v_result.detail, HINT = v_result.hint;
    ELSIF v_result.detail IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = v_result.sqlstate, MESSAGE = v_result.message, DETAIL = v_result.detail;
    ELSIF v_result.hint IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = v_result.sqlstate, MESSAGE = v_result.message, HINT = v_result.hint;
    END IF;
    RAISE EXCEPTION USING ERRCODE = v_result.sqlstate, MESSAGE = v_result.message;
END
$$;
COMMENT ON FUNCTION api.send_message(bigint, bigint, text, jsonb, text, timestamptz, boolean) IS
    'Sends one message from a tenant''s own system to p_to (a phone with its country code, or a business-scoped user id), on the number''s reply queue ahead of campaign traffic and paced with it: api.send_messages with one item, its error raised. A template at any time: {"type": "template", "name", "language", "header": "text" | {"link"} | {"media": uploaded id} | {"media_id": Meta id} | {"location": {...}}, "body": [values] (POSITIONAL) or {"name": value} (NAMED), "buttons": {"<index>": value}}, laid out by core.map_template as a campaign''s; values may use {{name}} and other contact variables. A free-form message (text, buttons, media, list, cta_url: the reply shapes of api.reply) only inside the contact''s 24-hour window at p_now (NULL: the clock). The contact is created on first use. With p_idempotency_key, a retry with the same key and message answers the first message (replayed true) and sends nothing; a concurrent one waits for the first. The message is written to the shared inbox (without a dashboard NOTIFY). p_wake false leaves waking the sender (NOTIFY pgwa_send) to the caller after commit. Returns the outbound id, its state and when the window closes. Raises PW100 for a bad recipient, key or message, PW102 for an unknown or unapproved template or a parameter that does not fit, PW304 when the window is closed (naming when it closed), PW106 when the contact opted out, PW303 when the key was used for another message, PW202 when the number is not the tenant''s, PW245/PW345 for an unknown or expired uploaded media.';

-- The keys of a batch of requests, each authenticated and counted as api.authenticate
-- does it for one: the same key n times is n requests. A key that passes takes as many of
-- its requests as its budget allows in one guarded UPDATE (api.authenticate's GCRA, n
-- periods at once, in the same interval arithmetic); every other request goes through
-- api.authenticate itself, whose error is that request's answer alone.
CREATE OR REPLACE FUNCTION api.authenticate_many(p_key_hashes bytea[], p_scope text DEFAULT 'admin',
                                                 p_now timestamptz DEFAULT now())
RETURNS SETOF api.key_result
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_key record;
    v_tenant_id bigint;
    v_key_id bigint;
    v_taken integer;
    v_counted boolean := false;
    v_n integer;
    v_state text;
    v_text text;
    v_detail text;
    v_hint text;
BEGIN
    IF core.scope_rank(p_scope) IS NULL THEN
        RAISE EXCEPTION 'scope % is not one of read, send, admin', p_scope USING ERRCODE = 'PW100',
            HINT = 'The route passes read, send or admin.';
    END IF;
    FOR v_key IN
        SELECT k.key_hash, array_agg(k.n ORDER BY k.n) AS items
        FROM unnest(p_key_hashes) WITH ORDINALITY k(key_hash, n)
        GROUP BY k.key_hash ORDER BY k.key_hash
    LOOP
        v_tenant_id := NULL;
        v_taken := 0;
        IF v_key.key_hash IS NOT NULL THEN
            SELECT k.api_key_id, (SELECT count(*)::integer FROM generate_series(1, cardinality(v_key.items)) g
                                  WHERE greatest(k.rate_tat, p_now) + g * make_interval(secs => 60.0 / coalesce(
                                            k.rate_limit_per_minute, s.api_rate_limit_per_minute))
                                        <= p_now + interval '1 minute')
            INTO v_key_id, v_taken
            FROM core.api_keys k, core.settings s
            WHERE k.key_hash = v_key.key_hash AND k.revoked_at IS NULL
              AND (k.expires_at IS NULL OR k.expires_at > p_now)
              AND core.scope_rank(k.scope) >= core.scope_rank(p_scope)
            FOR UPDATE OF k;
            IF v_taken > 0 THEN
                UPDATE core.api_keys k
                SET rate_tat = greatest(k.rate_tat, p_now)
                               + v_taken * make_interval(secs => 60.0 / coalesce(k.rate_limit_per_minute, s.api_rate_limit_per_minute)),
                    last_used_at = CASE WHEN k.last_used_at > p_now - interval '1 minute' THEN k.last_used_at ELSE p_now END
                FROM core.settings s
                WHERE k.api_key_id = v_key_id
                RETURNING k.tenant_id INTO v_tenant_id;
                v_counted := true;
            ELSE
                v_taken := 0;
            END IF;
        END IF;
        FOR v_n IN 1 .. cardinality(v_key.items) LOOP
            IF v_n <= v_taken THEN
                RETURN NEXT ROW(v_key.items[v_n], v_tenant_id, NULL, NULL, NULL, NULL)::api.key_result;
                CONTINUE;
            END IF;
            BEGIN
                RETURN NEXT ROW(v_key.items[v_n], api.authenticate(v_key.key_hash, p_scope, p_now),
                                NULL, NULL, NULL, NULL)::api.key_result;
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_text = MESSAGE_TEXT,
                                        v_detail = PG_EXCEPTION_DETAIL, v_hint = PG_EXCEPTION_HINT;
                RETURN NEXT ROW(v_key.items[v_n], NULL, v_state, v_text, nullif(v_detail, ''), nullif(v_hint, ''))::api.key_result;
            END;
        END LOOP;
    END LOOP;
    IF v_counted AND p_scope = 'read' THEN
        PERFORM set_config('synchronous_commit', 'off', true);     -- as api.authenticate does
    END IF;
END
$$;
COMMENT ON FUNCTION api.authenticate_many(bytea[], text, timestamptz) IS
    'api.authenticate for each of a batch of requests (POST /v1/messages gathers them): one api.key_result per key hash (its item, from 1; in key order), with the tenant, or the error (sqlstate, message, detail, hint) that request alone gets: PW401 for an unknown, revoked or expired key, PW410 when the key lacks p_scope, PW429 (DETAIL {"retry_after_s": n}) over its rate limit. Each request is counted, so a request whose send then fails still counts.';

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
REVOKE ALL ON FUNCTION api.send_messages(jsonb, timestamptz, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.authenticate_many(bytea[], text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.send_messages(jsonb, timestamptz, boolean) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.authenticate_many(bytea[], text, timestamptz) TO pgwa_api;
