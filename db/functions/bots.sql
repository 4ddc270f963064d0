-- Inbox automation: opt-out keywords, keyword bots and the LLM hand-off, all decided
-- inside webhook processing, set-based, once per batch.
--
--   api.process_webhooks ─> core.apply_inbound ─> core.on_inbound(message ids)
--        conversations        window, last message, unread (one upsert per batch)
--        opt-out / opt-in     contacts.opted_out, a confirmation
--        core.match_bot_rules the first rule by priority, per message, in SQL
--        core.enqueue_replies the reply queue r_<number> (inbox.sql), sent before campaigns
--        llm_jobs             one job per conversation when no rule matched and the
--                             number enables it; worker/llm.py answers through
--                             api.claim_llm_jobs / api.complete_llm_jobs
--
-- Matching compares the inbound text normalised (core.normalize_text: whitespace runs
-- collapsed and trimmed, accents removed, upper case) with patterns normalised the same
-- way when the rule was saved. Per message it costs one index probe for exact rules; for
-- starts_with/contains, a join of the text's four-character substrings with the rules'
-- keys (core.bot_rules.match_key, one join for the whole batch) and LIKE on the stored
-- like_pattern of only the rules it finds (the few patterns too short for a key are
-- tried in priority order); and, only for regex rules that would beat the best keyword
-- hit, a scan evaluating the regexes case-insensitively.

-------------------------------------------------------------------------------
-- Normalisation and reply rendering
-------------------------------------------------------------------------------

-- Text as bot rules and opt-out keywords see it: whitespace runs collapsed to one space
-- and trimmed, accents removed (unaccent), upper case; null when nothing is left.
-- PL/pgSQL rather than SQL: its expression stays prepared across calls, where a SQL
-- function with a SET clause is planned again by every statement that calls it.
CREATE OR REPLACE FUNCTION core.normalize_text(p_text text) RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = '' AS $$
BEGIN
    RETURN nullif(upper(public.unaccent('public.unaccent'::regdictionary,
                                        btrim(regexp_replace(p_text, '\s+', ' ', 'g')))), '');
END
$$;

-- A LIKE pattern matching p_text literally (\, % and _ escaped).
CREATE OR REPLACE FUNCTION core.like_literal(p_text text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT replace(replace(replace(p_text, '\', '\\'), '%', '\%'), '_', '\_')
$$;

-- The variables a reply may use: {{name}} (the name the business gave, else the WhatsApp
-- profile name), {{first_name}}, {{profile_name}}, {{phone}} / {{wa_id}}, and every
-- key of the contact's attributes.
CREATE OR REPLACE FUNCTION core.contact_vars(p_contact core.contacts) RETURNS jsonb
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT coalesce(p_contact.attributes, '{}') || jsonb_strip_nulls(jsonb_build_object(
        'name', coalesce(p_contact.name, p_contact.profile_name),
        'first_name', split_part(coalesce(p_contact.name, p_contact.profile_name), ' ', 1),
        'profile_name', p_contact.profile_name,
        'phone', p_contact.wa_id,
        'wa_id', p_contact.wa_id))
$$;

-- Replace {{var}} and {{var|fallback}} with the contact's values; an unknown or empty
-- variable takes its fallback, or nothing.
CREATE OR REPLACE FUNCTION core.render_vars(p_text text, p_vars jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = '' AS $$
DECLARE
    v_out text := p_text;
    m text[];
BEGIN
    IF p_text IS NULL OR strpos(p_text, '{{') = 0 THEN
        RETURN p_text;
    END IF;
    FOR m IN SELECT DISTINCT r FROM regexp_matches(p_text, '(\{\{\s*([A-Za-z0-9_]+)\s*(\|[^{}]*)?\}\})', 'g') r LOOP
        v_out := replace(v_out, m[1], coalesce(nullif(coalesce(p_vars->>m[2], p_vars->>lower(m[2])), ''),
                                               substr(m[3], 2), ''));
    END LOOP;
    RETURN v_out;
END
$$;

-- Check a reply as a bot rule or an agent gives it; raises PW100 (shape) or PW102
-- (template). The three shapes:
--   {"type": "text", "text": "Hi {{name}}", "preview_url": false}
--   {"type": "buttons", "text": "...", "buttons": [{"id": "yes", "title": "Yes"}, "No"],
--    "header": "...", "footer": "..."}                  (1 to 3 buttons; a string is id and title)
--   {"type": "template", "name": "order_update", "language": "en_US", "params": ["{{name}}", "A-1"]}
-- and media (image, video, audio, document, sticker), list and cta_url: core.check_rich_reply (media.sql).
--   (a NAMED template's "params" is an object: {"first_name": "{{name}}"}; a template
--   whose header or buttons take a parameter is for campaigns only)
CREATE OR REPLACE FUNCTION core.check_reply(p_reply jsonb, p_tenant_id bigint, p_waba_id text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
DECLARE
    v_template core.templates;
    v_titles text[];
BEGIN
    IF jsonb_typeof(p_reply) IS DISTINCT FROM 'object' OR p_reply->>'type' IS NULL
       OR p_reply->>'type' NOT IN ('text', 'buttons', 'template',
                                   'image', 'video', 'audio', 'document', 'sticker', 'list', 'cta_url') THEN
        RAISE EXCEPTION 'a reply must be an object with type text, buttons, template, image, video, audio, document, sticker, list or cta_url'
            USING ERRCODE = 'PW100',
                  HINT = '{"type": "text", "text": "Hi {{name}}"}, {"type": "buttons", "text": "...", "buttons": ["Yes", "No"]} or {"type": "template", "name": "...", "language": "en_US", "params": [...]}';
    END IF;
    -- Media, list and CTA-URL replies: db/functions/media.sql.
    IF p_reply->>'type' NOT IN ('text', 'buttons', 'template') THEN
        PERFORM core.check_rich_reply(p_reply);
        RETURN;
    END IF;
    IF p_reply->>'type' IN ('text', 'buttons') AND (jsonb_typeof(p_reply->'text') IS DISTINCT FROM 'string'
            OR btrim(p_reply->>'text') = '' OR length(p_reply->>'text') > core.text_body_max()) THEN
        RAISE EXCEPTION 'a % reply needs a text of 1 to % characters', p_reply->>'type', core.text_body_max()
            USING ERRCODE = 'PW100', HINT = 'Give "text"; it may use {{name}} and other contact variables.';
    END IF;
    IF p_reply->>'type' = 'buttons' THEN
        IF jsonb_typeof(p_reply->'buttons') IS DISTINCT FROM 'array' OR jsonb_array_length(p_reply->'buttons') NOT BETWEEN 1 AND 3 THEN
            RAISE EXCEPTION 'a buttons reply needs 1 to 3 buttons' USING ERRCODE = 'PW100',
                HINT = '"buttons": [{"id": "yes", "title": "Yes"}, "No"] (Meta allows three reply buttons).';
        END IF;
        SELECT array_agg(coalesce(b->>'title', b #>> '{}')) INTO v_titles
        FROM jsonb_array_elements(p_reply->'buttons') b
        WHERE jsonb_typeof(b) = 'string' OR (jsonb_typeof(b) = 'object' AND jsonb_typeof(b->'title') = 'string');
        IF coalesce(cardinality(v_titles), 0) <> jsonb_array_length(p_reply->'buttons')
           OR EXISTS (SELECT 1 FROM unnest(v_titles) t WHERE btrim(t) = '' OR length(t) > 20) THEN
            RAISE EXCEPTION 'each button needs a title of 1 to 20 characters' USING ERRCODE = 'PW100',
                HINT = 'A button is "Title" or {"id": "...", "title": "Title"}; Meta limits titles to 20 characters.';
        END IF;
        IF length(coalesce(p_reply->>'header', '')) > 60 OR length(coalesce(p_reply->>'footer', '')) > 60 THEN
            RAISE EXCEPTION 'header and footer are at most 60 characters' USING ERRCODE = 'PW100',
                HINT = 'Shorten the header or footer.';
        END IF;
    END IF;
    IF p_reply->>'type' = 'template' THEN
        SELECT * INTO v_template FROM core.templates t
        WHERE t.tenant_id = p_tenant_id AND t.waba_id = p_waba_id
          AND t.name = p_reply->>'name' AND t.language = p_reply->>'language';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'template "%" (%) does not exist for WABA %', p_reply->>'name',
                coalesce(p_reply->>'language', 'no language'), p_waba_id
                USING ERRCODE = 'PW102', HINT = 'Sync templates from Meta or check the name and language.';
        ELSIF v_template.status <> 'APPROVED' THEN
            RAISE EXCEPTION 'template "%" (%) is %, not APPROVED', v_template.name, v_template.language, v_template.status
                USING ERRCODE = 'PW102', HINT = 'Only approved templates can be sent.';
        ELSIF EXISTS (SELECT 1 FROM core.template_slots(v_template.components, v_template.parameter_format) s
                      WHERE s.component <> 'body' AND s.required) THEN
            -- A reply sends body parameters only (core.render_reply); a template whose
            -- header or buttons take one goes out in a campaign (api.create_campaign).
            RAISE EXCEPTION 'template "%" (%) needs % parameters, and a reply sends body parameters only', v_template.name,
                v_template.language, (SELECT string_agg(DISTINCT s.component || ' ' || s.kind, ', ')
                                      FROM core.template_slots(v_template.components, v_template.parameter_format) s
                                      WHERE s.component <> 'body' AND s.required)
                USING ERRCODE = 'PW102', HINT = 'Send it in a campaign, whose mapping gives the header and buttons, or reply with a template whose header and buttons are fixed.';
        ELSIF v_template.parameter_format = 'NAMED' AND v_template.body_param_count > 0 THEN
            -- Named parameters: "params" is an object of exactly the template's names.
            IF jsonb_typeof(p_reply->'params') IS DISTINCT FROM 'object'
               OR EXISTS (SELECT 1 FROM jsonb_each(p_reply->'params') p WHERE jsonb_typeof(p.value) <> 'string')
               OR ARRAY(SELECT k FROM jsonb_object_keys(p_reply->'params') k ORDER BY k)
                  <> ARRAY(SELECT s.parameter_name FROM core.template_slots(v_template.components, v_template.parameter_format) s
                           WHERE s.component = 'body' ORDER BY s.parameter_name) THEN
                RAISE EXCEPTION 'template "%" has NAMED body parameters %; give "params" as an object of those names to strings',
                    v_template.name, (SELECT string_agg(format('{{%s}}', s.parameter_name), ', ' ORDER BY s.index)
                                      FROM core.template_slots(v_template.components, v_template.parameter_format) s
                                      WHERE s.component = 'body')
                    USING ERRCODE = 'PW102', HINT = 'E.g. "params": {"first_name": "{{name}}"}; values may use {{name}} and other contact variables.';
            END IF;
        ELSIF coalesce(jsonb_typeof(p_reply->'params'), 'array') <> 'array'
              OR coalesce(jsonb_array_length(p_reply->'params'), 0) <> v_template.body_param_count
              OR EXISTS (SELECT 1 FROM jsonb_array_elements(coalesce(p_reply->'params', '[]')) p
                         WHERE jsonb_typeof(p) <> 'string') THEN
            RAISE EXCEPTION 'template "%" has % body parameters; give "params" as that many strings',
                v_template.name, v_template.body_param_count
                USING ERRCODE = 'PW102', HINT = 'Parameters may use {{name}} and other contact variables.';
        END IF;
    END IF;
END
$$;

-- The Graph API message object of a checked reply (without messaging_product and the
-- recipient), its variables filled in from p_vars (core.contact_vars).
CREATE OR REPLACE FUNCTION core.render_reply(p_reply jsonb, p_vars jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT CASE p_reply->>'type'
        WHEN 'text' THEN jsonb_build_object('type', 'text', 'text',
            jsonb_build_object('body', left(core.render_vars(p_reply->>'text', p_vars), core.text_body_max()))
            || CASE WHEN jsonb_typeof(p_reply->'preview_url') = 'boolean'
                    THEN jsonb_build_object('preview_url', p_reply->'preview_url') ELSE '{}' END)
        WHEN 'buttons' THEN jsonb_build_object('type', 'interactive', 'interactive',
            jsonb_build_object(
                'type', 'button',
                'body', jsonb_build_object('text', left(core.render_vars(p_reply->>'text', p_vars), 1024)),
                'action', jsonb_build_object('buttons', (
                    SELECT jsonb_agg(jsonb_build_object('type', 'reply', 'reply', jsonb_build_object(
                               'id', coalesce(b->>'id', b->>'title', b #>> '{}'),
                               'title', left(core.render_vars(coalesce(b->>'title', b #>> '{}'), p_vars), 20)))
                           ORDER BY i)
                    FROM jsonb_array_elements(p_reply->'buttons') WITH ORDINALITY x(b, i))))
            || CASE WHEN coalesce(p_reply->>'header', '') <> '' THEN jsonb_build_object('header',
                   jsonb_build_object('type', 'text', 'text', core.render_vars(p_reply->>'header', p_vars))) ELSE '{}' END
            || CASE WHEN coalesce(p_reply->>'footer', '') <> '' THEN jsonb_build_object('footer',
                   jsonb_build_object('text', core.render_vars(p_reply->>'footer', p_vars))) ELSE '{}' END)
        WHEN 'template' THEN jsonb_build_object('type', 'template', 'template',
            jsonb_build_object('name', p_reply->>'name', 'language', jsonb_build_object('code', p_reply->>'language'))
            || CASE WHEN jsonb_typeof(p_reply->'params') = 'object' THEN
                        -- A NAMED template's parameters (core.check_reply), matched by name.
                        CASE WHEN p_reply->'params' = '{}' THEN '{}'::jsonb
                             ELSE jsonb_build_object('components', jsonb_build_array(jsonb_build_object(
                                 'type', 'body', 'parameters', (
                                     SELECT jsonb_agg(jsonb_build_object('type', 'text', 'parameter_name', x.key, 'text',
                                                coalesce(nullif(core.render_vars(x.value, p_vars), ''), '-')) ORDER BY x.key)
                                     FROM jsonb_each_text(p_reply->'params') x)))) END
                    WHEN coalesce(jsonb_array_length(p_reply->'params'), 0) = 0 THEN '{}'::jsonb
                    ELSE jsonb_build_object('components', jsonb_build_array(jsonb_build_object(
                        'type', 'body', 'parameters', (
                            SELECT jsonb_agg(jsonb_build_object('type', 'text', 'text',
                                       coalesce(nullif(core.render_vars(p, p_vars), ''), '-')) ORDER BY i)
                            FROM jsonb_array_elements_text(p_reply->'params') WITH ORDINALITY x(p, i)))))
               END)
        -- Media (its pgwa id resolved by core.resolve_reply_media), list, cta_url: media.sql.
        ELSE core.render_rich_reply(p_reply, p_vars)
    END
$$;

-------------------------------------------------------------------------------
-- Matching
-------------------------------------------------------------------------------

-- The rule that answers each message (parallel arrays: number, normalised text, whether
-- it is the conversation's first inbound message in 24 hours), by position: rule_id is
-- the first match by priority (then rule id) among exact, starts_with, contains, regex
-- and welcome rules; default_rule_id the number's first default rule, the fallback when
-- nothing matched (core.on_inbound lets the LLM answer first where it is enabled).
-- Rules see only the first core.settings.bot_match_prefix_chars characters of each text
-- (1,024 by default), so a huge message costs no more than a long one; that bound is at
-- least 500, the longest keyword pattern, so keyword rules compare their whole pattern.
CREATE OR REPLACE FUNCTION core.match_bot_rules(p_number_ids bigint[], p_texts text[], p_welcome boolean[])
RETURNS TABLE (ord bigint, rule_id bigint, default_rule_id bigint)
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
DECLARE
    -- Cut once here: in the query, left() would be evaluated again for every rule tried.
    v_texts text[] := ARRAY(SELECT left(t.norm, s.bot_match_prefix_chars)
                            FROM unnest(p_texts) WITH ORDINALITY AS t(norm, i), core.settings s ORDER BY t.i);
BEGIN
    -- PL/pgSQL keeps this statement's plan for the session; as a SQL function it would be
    -- planned on every call (~0.4 ms, more than running it).
    RETURN QUERY
    WITH m AS MATERIALIZED (
        SELECT u.number_id, u.norm, u.welcome, u.ord
        FROM unnest(p_number_ids, v_texts, p_welcome) WITH ORDINALITY AS u(number_id, norm, welcome, ord)
    ), grams AS MATERIALIZED (
        SELECT m.ord, m.number_id, substr(m.norm, s.i, 4) AS gram
        FROM m, generate_series(1, length(m.norm) - 3) AS s(i)
    ), keyed AS MATERIALIZED (
        -- starts_with and contains rules with a key (0115_inbound_speed.sql): a rule can
        -- only match a text that holds its key, so the texts' four-character substrings
        -- find the candidates for the whole batch in one join, and only those run LIKE.
        SELECT DISTINCT ON (g.ord) g.ord, r.priority, r.rule_id
        FROM grams g
        JOIN m ON m.ord = g.ord
        JOIN core.bot_rules r ON r.number_id = g.number_id AND r.match_key = g.gram
                             AND r.enabled AND r.kind IN ('starts_with', 'contains') AND r.match_key IS NOT NULL
        WHERE m.norm LIKE r.like_pattern
        ORDER BY g.ord, r.priority, r.rule_id
    )
    SELECT m.ord, coalesce(x.rule_id, k.rule_id), d.rule_id
    FROM m
    LEFT JOIN keyed kw ON kw.ord = m.ord
    -- The best keyword or welcome rule: each branch stops at its first hit.
    LEFT JOIN LATERAL (
        SELECT b.priority, b.rule_id FROM (
            (SELECT r.priority, r.rule_id FROM core.bot_rules r
             WHERE r.number_id = m.number_id AND r.enabled AND r.kind = 'exact' AND r.match_text = m.norm
             ORDER BY r.priority, r.rule_id LIMIT 1)
            UNION ALL
            SELECT kw.priority, kw.rule_id WHERE kw.rule_id IS NOT NULL
            UNION ALL
            (SELECT r.priority, r.rule_id FROM core.bot_rules r
             WHERE r.number_id = m.number_id AND r.enabled AND r.kind IN ('starts_with', 'contains')
               AND r.match_key IS NULL AND m.norm LIKE r.like_pattern
             ORDER BY r.priority, r.rule_id LIMIT 1)
            UNION ALL
            (SELECT r.priority, r.rule_id FROM core.bot_rules r
             WHERE m.welcome AND r.number_id = m.number_id AND r.enabled AND r.kind = 'welcome'
             ORDER BY r.priority, r.rule_id LIMIT 1)
        ) b
        ORDER BY b.priority, b.rule_id LIMIT 1
    ) k ON true
    -- Regexes cost the most (PostgreSQL caches 32 compiled ones per session): only those
    -- that would beat the keyword hit are tried, in priority order, until one matches.
    LEFT JOIN LATERAL (
        SELECT r.rule_id FROM core.bot_rules r
        WHERE r.number_id = m.number_id AND r.enabled AND r.kind = 'regex'
          AND (r.priority, r.rule_id) < (coalesce(k.priority, 2147483647), coalesce(k.rule_id, 9223372036854775807))
          AND m.norm ~* r.match_text
        ORDER BY r.priority, r.rule_id LIMIT 1
    ) x ON true
    LEFT JOIN LATERAL (
        SELECT r.rule_id FROM core.bot_rules r
        WHERE r.number_id = m.number_id AND r.enabled AND r.kind = 'default'
        ORDER BY r.priority, r.rule_id LIMIT 1
    ) d ON true;
END
$$;

-------------------------------------------------------------------------------
-- The webhook hook
-------------------------------------------------------------------------------

-- Called by core.apply_inbound (webhooks.sql) once per batch, in its transaction, with
-- the inbox ids of the inbound messages stored for the first time. Per message, in
-- order: an opt-out keyword opts the contact out (an opt-in keyword opts an opted-out
-- contact back in) and is confirmed; otherwise, unless the conversation is assigned to
-- an agent, the contact has opted out or the message is older than the 24-hour window,
-- the first matching rule answers, else the LLM (one job per conversation, if the number
-- enables it and no human was asked for), else the number's default rule. The
-- conversation's window, last message and unread count move once per batch.
CREATE OR REPLACE FUNCTION core.on_inbound(p_message_ids bigint[]) RETURNS void
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_steps core.inbound_step[];
    v_replies core.reply_request[];
    v_jobs jsonb[];
BEGIN
    SELECT array_agg(ROW(s.message_id, s.number_id, s.contact_id, s.tenant_id, s.created_at, s.norm,
                         -- Welcome: the window was closed (or never open) when it came.
                         NOT core.window_open(s.prev_at, s.created_at),
                         CASE WHEN s.is_out THEN 'opt_out'
                              WHEN s.is_in AND s.opted_before THEN 'opt_in'
                              WHEN NOT core.window_open(s.created_at, now()) THEN 'none'
                              WHEN s.assigned_to IS NOT NULL OR s.opted_before THEN 'none'
                              ELSE 'auto' END,
                         s.llm)::core.inbound_step
                     ORDER BY s.created_at, s.message_id)
    INTO v_steps
    FROM (
        SELECT w.*,
               -- Opted out before this message: by the latest keyword before it in the
               -- batch, else as the contact was.
               coalesce((w.keywords_before)[cardinality(w.keywords_before)] = 'out', w.opted_out) AS opted_before
        FROM (
            SELECT m.*,
                   coalesce(lag(m.created_at) OVER (PARTITION BY m.number_id, m.contact_id
                                                    ORDER BY m.created_at, m.message_id),
                            m.prev_inbound_at) AS prev_at,
                   array_agg(CASE WHEN m.is_out THEN 'out' ELSE 'in' END) FILTER (WHERE m.is_out OR m.is_in)
                       OVER (PARTITION BY m.contact_id ORDER BY m.created_at, m.message_id
                             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS keywords_before
            FROM (
                SELECT i.message_id, i.number_id, i.contact_id, i.created_at, n.tenant_id, x.norm,
                       coalesce(x.norm = ANY (t.opt_out_keywords), false) AS is_out,
                       coalesce(x.norm = ANY (t.opt_in_keywords), false) AS is_in,
                       c.opted_out, v.last_inbound_at AS prev_inbound_at, v.assigned_to,
                       n.llm_enabled AND NOT coalesce(v.needs_human, false) AS llm
                FROM unnest(p_message_ids) AS id(message_id)
                JOIN core.inbox_messages i ON i.message_id = id.message_id AND i.direction = 'in'
                JOIN core.wa_numbers n ON n.number_id = i.number_id
                JOIN core.tenants t ON t.tenant_id = n.tenant_id
                JOIN core.contacts c ON c.contact_id = i.contact_id
                LEFT JOIN core.conversations v ON v.number_id = i.number_id AND v.contact_id = i.contact_id
                CROSS JOIN LATERAL (SELECT core.normalize_text(i.body)) x(norm)
            ) m
        ) w
    ) s;
    IF v_steps IS NULL THEN
        RETURN;
    END IF;
    -- Images, audio, video, documents and stickers wait for the media workers (media.sql).
    PERFORM core.queue_media_downloads(p_message_ids);

    -- Conversations: the 24-hour window, the last message, the unread count; in key
    -- order, so that concurrent batches cannot deadlock.
    INSERT INTO core.conversations AS v (number_id, contact_id, last_inbound_at, last_message_at, unread)
    SELECT s.number_id, s.contact_id, max(s.created_at), max(s.created_at), count(*)
    FROM unnest(v_steps) s
    GROUP BY s.number_id, s.contact_id
    ORDER BY s.number_id, s.contact_id
    ON CONFLICT (number_id, contact_id) DO UPDATE SET
        last_inbound_at = greatest(v.last_inbound_at, excluded.last_inbound_at),
        last_message_at = greatest(v.last_message_at, excluded.last_message_at),
        unread = v.unread + excluded.unread;

    -- Opt-out and opt-in: a contact takes the state of its latest keyword. opted_out_at
    -- is when pgwa learned it, which api.claim_sends compares with campaign creation.
    UPDATE core.contacts c SET
        opted_out = k.opted_out,
        opted_out_at = CASE WHEN k.opted_out THEN now() END,
        updated_at = now()
    FROM (SELECT DISTINCT ON (s.contact_id) s.contact_id, s.action = 'opt_out' AS opted_out
          FROM unnest(v_steps) s
          WHERE s.action IN ('opt_out', 'opt_in')
          ORDER BY s.contact_id, s.created_at DESC, s.message_id DESC) k
    WHERE c.contact_id = k.contact_id AND c.opted_out IS DISTINCT FROM k.opted_out;

    -- Rules for the messages automation may answer; replies and LLM jobs.
    WITH auto AS MATERIALIZED (
        SELECT s.*, row_number() OVER (ORDER BY s.created_at, s.message_id) AS ord
        FROM unnest(v_steps) s WHERE s.action = 'auto'
    ), matched AS MATERIALIZED (
        SELECT a.*, mr.rule_id, mr.default_rule_id
        FROM core.match_bot_rules(ARRAY(SELECT a.number_id FROM auto a ORDER BY a.ord),
                                  ARRAY(SELECT a.norm FROM auto a ORDER BY a.ord),
                                  ARRAY(SELECT a.welcome FROM auto a ORDER BY a.ord)) mr
        JOIN auto a ON a.ord = mr.ord
    ), answers AS (
        SELECT s.number_id, s.contact_id, s.created_at, s.message_id,
               jsonb_build_object('type', 'text', 'text', jsonb_build_object('body',
                   CASE s.action WHEN 'opt_out' THEN t.opt_out_reply ELSE t.opt_in_reply END)) AS message
        FROM unnest(v_steps) s JOIN core.tenants t ON t.tenant_id = s.tenant_id
        WHERE s.action IN ('opt_out', 'opt_in')
        UNION ALL
        SELECT m.number_id, m.contact_id, m.created_at, m.message_id,
               core.render_reply(core.resolve_reply_media(r.reply, m.tenant_id, m.number_id, false), core.contact_vars(c))
        FROM matched m
        JOIN core.bot_rules r ON r.rule_id = CASE WHEN m.rule_id IS NOT NULL THEN m.rule_id
                                                  WHEN NOT m.llm THEN m.default_rule_id END
        JOIN core.contacts c ON c.contact_id = m.contact_id
    )
    SELECT (SELECT array_agg(ROW(a.number_id, a.contact_id, 'bot', a.message)::core.reply_request
                             ORDER BY a.created_at, a.message_id) FROM answers a),
           (SELECT array_agg(jsonb_build_object('number_id', j.number_id, 'contact_id', j.contact_id,
                                                'message_id', j.message_id))
            FROM (SELECT DISTINCT ON (m.number_id, m.contact_id) m.number_id, m.contact_id, m.message_id
                  FROM matched m WHERE m.rule_id IS NULL AND m.llm
                  ORDER BY m.number_id, m.contact_id, m.created_at DESC, m.message_id DESC) j)
    INTO v_replies, v_jobs;

    IF v_replies IS NOT NULL THEN
        PERFORM core.enqueue_replies(v_replies);
    END IF;
    IF v_jobs IS NOT NULL THEN
        PERFORM pgmq.send_batch('llm_jobs', v_jobs);
        PERFORM pg_notify('pgwa_llm', '');
    END IF;
END
$$;

-------------------------------------------------------------------------------
-- Bot rules
-------------------------------------------------------------------------------

-- The tenant's number, or PW202.
CREATE OR REPLACE FUNCTION core.number_for(p_tenant_id bigint, p_number_id bigint) RETURNS core.wa_numbers
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
DECLARE
    v_number core.wa_numbers;
BEGIN
    SELECT * INTO v_number FROM core.wa_numbers WHERE number_id = p_number_id AND tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'number % not found', p_number_id
            USING ERRCODE = 'PW202', HINT = 'List the tenant''s numbers; register the number first.';
    END IF;
    RETURN v_number;
END
$$;

CREATE OR REPLACE FUNCTION core.bot_rule_row(p_rule core.bot_rules) RETURNS api.bot_rule
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT ROW(p_rule.rule_id, p_rule.number_id, p_rule.kind, p_rule.pattern, p_rule.priority, p_rule.reply,
               p_rule.enabled, p_rule.created_at, p_rule.updated_at)::api.bot_rule
$$;

-- Why a regular expression is outside the safe subset a regex bot rule may use, or null.
-- Rules run inside webhook processing, so a pattern must stay cheap on any text. The
-- subset, checked in one left-to-right pass (bracket expressions and escapes skipped):
--   at most 200 characters; no back-references (\1..\9, \k); no look-around ((?=, (?!,
--   (?<=, (?<!), embedded options ((?i) ...) or directors (***); repetition bounds
--   {m}, {m,}, {m,n} with m and n at most 100; no quantifier applied to a quantifier; and
--   no repeated group ((...)*, (...)+, (...){m,n} with n > 1) that holds a quantifier
--   ((a+)+, (a*)*) or an alternation ((a|aa)*), anywhere inside it: the shapes whose
--   ambiguity makes matching blow up. Whether it compiles is checked by PostgreSQL.
CREATE OR REPLACE FUNCTION core.regex_unsafe_reason(p_pattern text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
DECLARE
    v_len integer := length(p_pattern);
    v_stack integer[] := '{}';   -- the enclosing groups' flags
    v_flags integer := 0;        -- the innermost open group's flags: 1 a quantifier, 2 an alternation inside
    v_prev text := 'start';      -- the previous token: start, open, alt, atom, group (v_group_flags), quant
    v_group_flags integer := 0;
    v_repeats boolean;
    i integer := 1;
    j integer;
    k integer;
    c text;
    b text[];
BEGIN
    IF v_len > 200 THEN
        RETURN format('it is %s characters long; the limit is 200', v_len);
    ELSIF left(p_pattern, 3) = '***' THEN
        RETURN 'it starts with a director (***)';
    END IF;
    WHILE i <= v_len LOOP
        c := substr(p_pattern, i, 1);
        v_repeats := NULL;
        IF c = '\' THEN
            c := substr(p_pattern, i + 1, 1);
            IF c ~ '^[1-9k]$' THEN
                RETURN format('it has a back-reference (\%s)', c);
            END IF;
            i := i + 2;
            v_prev := 'atom';
        ELSIF c = '[' THEN
            -- A bracket expression: to its closing ], past a leading ] or ^], [:class:],
            -- [.elem.], [=equiv=] and escapes.
            j := i + 1;
            IF substr(p_pattern, j, 1) = '^' THEN j := j + 1; END IF;
            IF substr(p_pattern, j, 1) = ']' THEN j := j + 1; END IF;
            WHILE j <= v_len AND substr(p_pattern, j, 1) <> ']' LOOP
                IF substr(p_pattern, j, 2) IN ('[:', '[.', '[=') THEN
                    k := strpos(substr(p_pattern, j + 2), substr(p_pattern, j + 1, 1) || ']');
                    j := CASE WHEN k = 0 THEN v_len + 1 ELSE j + 3 + k END;
                ELSIF substr(p_pattern, j, 1) = '\' THEN
                    j := j + 2;
                ELSE
                    j := j + 1;
                END IF;
            END LOOP;
            i := j + 1;
            v_prev := 'atom';
        ELSIF c = '(' THEN
            IF substr(p_pattern, i + 1, 1) = '?' THEN
                IF substr(p_pattern, i + 2, 1) IN ('=', '!') OR substr(p_pattern, i + 2, 2) IN ('<=', '<!') THEN
                    RETURN format('it has a look-around (%s)', substr(p_pattern, i, CASE WHEN substr(p_pattern, i + 2, 1) = '<' THEN 4 ELSE 3 END));
                ELSIF substr(p_pattern, i + 2, 1) <> ':' THEN
                    RETURN format('it has embedded options (%s); only (?: groups are allowed', substr(p_pattern, i, 3));
                END IF;
                i := i + 3;
            ELSE
                i := i + 1;
            END IF;
            v_stack := v_stack || v_flags;
            v_flags := 0;
            v_prev := 'open';
        ELSIF c = ')' AND cardinality(v_stack) > 0 THEN
            v_group_flags := v_flags;
            v_flags := v_stack[cardinality(v_stack)] | v_flags;
            v_stack := v_stack[1:cardinality(v_stack) - 1];
            i := i + 1;
            v_prev := 'group';
        ELSIF c = '|' THEN
            v_flags := v_flags | 2;
            i := i + 1;
            v_prev := 'alt';
        ELSIF c IN ('*', '+') THEN
            v_repeats := true;
            i := i + 1;
        ELSIF c = '?' THEN
            v_repeats := false;
            i := i + 1;
        ELSIF c = '{' AND substr(p_pattern, i + 1, 1) ~ '^[0-9]$' THEN
            b := regexp_match(substr(p_pattern, i), '^\{([0-9]+)(,([0-9]*))?\}');
            IF b IS NULL THEN
                RETURN format('it has an unterminated repetition bound (%s)', substr(p_pattern, i, 8));
            ELSIF b[1]::numeric > 100 OR nullif(b[3], '')::numeric > 100 THEN
                RETURN format('it has a repetition bound over 100 (%s)', substr(p_pattern, i, length(b[1]) + coalesce(length(b[2]), 0) + 2));
            END IF;
            v_repeats := b[2] IS NOT NULL AND (b[3] = '' OR b[3]::integer > 1) OR b[2] IS NULL AND b[1]::integer > 1;
            i := i + length(b[1]) + coalesce(length(b[2]), 0) + 2;
        ELSE
            i := i + 1;
            v_prev := 'atom';
        END IF;

        IF v_repeats IS NOT NULL THEN
            IF substr(p_pattern, i, 1) = '?' THEN          -- a non-greedy quantifier: one token
                i := i + 1;
            END IF;
            IF v_prev = 'quant' THEN
                RETURN 'it applies a quantifier to a quantifier';
            ELSIF v_prev = 'group' AND v_repeats AND v_group_flags & 1 = 1 THEN
                RETURN 'it repeats a group that holds a quantifier (nested quantifiers, as in (a+)+)';
            ELSIF v_prev = 'group' AND v_repeats AND v_group_flags & 2 = 2 THEN
                RETURN 'it repeats a group that holds an alternation (as in (a|aa)*)';
            END IF;
            v_flags := v_flags | 1;
            v_prev := 'quant';
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION api.save_bot_rule(
    p_tenant_id  bigint,
    p_number_id  bigint,
    p_kind       text,
    p_pattern    text,
    p_reply      jsonb,
    p_priority   integer DEFAULT 100,
    p_enabled    boolean DEFAULT true,
    p_rule_id    bigint DEFAULT NULL
) RETURNS api.bot_rule
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_number core.wa_numbers := core.number_for(p_tenant_id, p_number_id);
    v_match text;
    v_error text;
    v_rule core.bot_rules;
BEGIN
    IF p_kind IS NULL OR p_kind NOT IN ('exact', 'starts_with', 'contains', 'regex', 'welcome', 'default') THEN
        RAISE EXCEPTION 'rule kind must be exact, starts_with, contains, regex, welcome or default, not "%"', p_kind
            USING ERRCODE = 'PW100', HINT = 'welcome answers the first message in 24 hours; default answers what nothing else matched.';
    END IF;
    IF p_priority IS NULL OR p_priority NOT BETWEEN 0 AND 1000000 THEN
        RAISE EXCEPTION 'priority % is out of range', p_priority
            USING ERRCODE = 'PW100', HINT = 'Priorities run from 0 (first) to 1000000; the first match by priority answers.';
    END IF;
    IF p_kind IN ('welcome', 'default') THEN
        IF p_pattern IS NOT NULL THEN
            RAISE EXCEPTION 'a % rule takes no pattern', p_kind USING ERRCODE = 'PW100',
                HINT = 'Pass p_pattern => NULL.';
        END IF;
    ELSIF p_pattern IS NULL OR length(p_pattern) > 500 THEN
        RAISE EXCEPTION 'a % rule needs a pattern of at most 500 characters', p_kind
            USING ERRCODE = 'PW100', HINT = 'Give the keyword or regular expression to match.';
    ELSIF p_kind = 'regex' THEN
        -- Regexes see the normalised text (upper case, no accents) and match regardless of
        -- case; an accent in the pattern is removed as it is from the text.
        v_match := public.unaccent('public.unaccent'::regdictionary, p_pattern);
        -- The pattern as it will run (unaccent may turn a character into several).
        v_error := core.regex_unsafe_reason(v_match);
        IF v_error IS NOT NULL THEN
            RAISE EXCEPTION 'regular expression "%" is outside the safe subset: %', p_pattern, v_error
                USING ERRCODE = 'PW103',
                      HINT = 'At most 200 characters; no back-references, look-around or embedded options; repetition bounds up to 100; no repeated group that holds a quantifier or | (write (ab)+ or a+, not (a+)+ or (a|aa)*).';
        END IF;
        BEGIN
            PERFORM '' ~* v_match;
        EXCEPTION WHEN invalid_regular_expression THEN
            GET STACKED DIAGNOSTICS v_error = MESSAGE_TEXT;
            RAISE EXCEPTION 'regular expression "%" does not compile: %', p_pattern, v_error
                USING ERRCODE = 'PW103',
                      HINT = 'PostgreSQL regular expressions (POSIX ARE); matched case-insensitively against the text with accents removed.';
        END;
    ELSE
        v_match := core.normalize_text(p_pattern);
        IF v_match IS NULL THEN
            RAISE EXCEPTION 'the % pattern is empty', p_kind USING ERRCODE = 'PW100',
                HINT = 'Patterns are compared without case, accents and surrounding spaces; give some text.';
        END IF;
    END IF;
    PERFORM core.check_reply(p_reply, p_tenant_id, v_number.waba_id);
    PERFORM core.resolve_reply_media(p_reply, p_tenant_id, p_number_id);   -- an uploaded file of this number

    IF p_rule_id IS NULL THEN
        INSERT INTO core.bot_rules (number_id, kind, pattern, priority, reply, enabled, match_text, like_pattern)
        VALUES (p_number_id, p_kind, p_pattern, p_priority, p_reply, coalesce(p_enabled, true), v_match,
                CASE p_kind WHEN 'starts_with' THEN core.like_literal(v_match) || '%'
                            WHEN 'contains' THEN '%' || core.like_literal(v_match) || '%' END)
        RETURNING * INTO v_rule;
    ELSE
        UPDATE core.bot_rules r SET
            number_id = p_number_id, kind = p_kind, pattern = p_pattern, priority = p_priority, reply = p_reply,
            enabled = coalesce(p_enabled, true), match_text = v_match,
            like_pattern = CASE p_kind WHEN 'starts_with' THEN core.like_literal(v_match) || '%'
                                       WHEN 'contains' THEN '%' || core.like_literal(v_match) || '%' END,
            updated_at = now()
        FROM core.wa_numbers n
        WHERE r.rule_id = p_rule_id AND n.number_id = r.number_id AND n.tenant_id = p_tenant_id
        RETURNING r.* INTO v_rule;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'bot rule % not found', p_rule_id
                USING ERRCODE = 'PW206', HINT = 'List the number''s rules with api.bot_rules().';
        END IF;
    END IF;
    RETURN core.bot_rule_row(v_rule);
END
$$;
COMMENT ON FUNCTION api.save_bot_rule(bigint, bigint, text, text, jsonb, integer, boolean, bigint) IS
    'Creates a bot rule for a number (or replaces rule p_rule_id): kind exact, starts_with, contains, regex, welcome (first message in 24 hours) or default (fallback), a pattern matched without case, accents and surrounding spaces, a priority (lower answers first) and a reply ({"type": "text" | "buttons" | "template" | "list" | "cta_url" | "image" | "video" | "audio" | "document" | "sticker", ...} with {{name}} variables; media by pgwa media id or link). Rules see the first core.settings.bot_match_prefix_chars characters of a message. Returns the rule. Raises PW103 for a regular expression that does not compile or is outside the safe subset (at most 200 characters; no back-references, look-around or embedded options; repetition bounds up to 100; no repeated group holding a quantifier or an alternation), PW100 for a bad kind, pattern, priority or reply, PW102 for a template that is unknown, not approved or given the wrong parameters, PW245/PW345 for an uploaded file that is not the number''s or expires within a day, PW202/PW206 when the number or rule is not the tenant''s.';

CREATE OR REPLACE FUNCTION api.delete_bot_rule(p_tenant_id bigint, p_rule_id bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    DELETE FROM core.bot_rules r USING core.wa_numbers n
    WHERE r.rule_id = p_rule_id AND n.number_id = r.number_id AND n.tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'bot rule % not found', p_rule_id
            USING ERRCODE = 'PW206', HINT = 'List the number''s rules with api.bot_rules().';
    END IF;
    RETURN p_rule_id;
END
$$;
COMMENT ON FUNCTION api.delete_bot_rule(bigint, bigint) IS
    'Deletes a bot rule of the tenant; returns its id. Raises PW206 when it is not found.';

CREATE OR REPLACE FUNCTION api.bot_rules(p_tenant_id bigint, p_number_id bigint) RETURNS SETOF api.bot_rule
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
BEGIN
    PERFORM core.number_for(p_tenant_id, p_number_id);
    RETURN QUERY
    SELECT r.rule_id, r.number_id, r.kind, r.pattern, r.priority, r.reply, r.enabled, r.created_at, r.updated_at
    FROM core.bot_rules r
    WHERE r.number_id = p_number_id
    ORDER BY r.kind = 'default', r.priority, r.rule_id;
END
$$;
COMMENT ON FUNCTION api.bot_rules(bigint, bigint) IS
    'Lists a number''s bot rules in the order they are tried (default rules last). Raises PW202 when the number is not the tenant''s.';

CREATE OR REPLACE FUNCTION api.match_bot_rule(p_tenant_id bigint, p_number_id bigint, p_text text,
                                              p_welcome boolean DEFAULT false) RETURNS api.bot_rule
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
DECLARE
    v_rule_id bigint;
BEGIN
    PERFORM core.number_for(p_tenant_id, p_number_id);
    SELECT coalesce(m.rule_id, m.default_rule_id) INTO v_rule_id
    FROM core.match_bot_rules(ARRAY[p_number_id], ARRAY[core.normalize_text(p_text)], ARRAY[coalesce(p_welcome, false)]) m;
    RETURN (SELECT core.bot_rule_row(r) FROM core.bot_rules r WHERE r.rule_id = v_rule_id);
END
$$;
COMMENT ON FUNCTION api.match_bot_rule(bigint, bigint, text, boolean) IS
    'The rule that would answer p_text on this number (p_welcome: as the first message in 24 hours), exactly as webhook processing matches it, falling back to the default rule; null when none would. Raises PW202 when the number is not the tenant''s.';

-------------------------------------------------------------------------------
-- Opt-out keywords
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.configure_opt_out(
    p_tenant_id        bigint,
    p_opt_out_keywords text[] DEFAULT NULL,
    p_opt_in_keywords  text[] DEFAULT NULL,
    p_opt_out_reply    text DEFAULT NULL,
    p_opt_in_reply     text DEFAULT NULL
) RETURNS api.opt_out_settings
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_out text[];
    v_in text[];
    v_tenant core.tenants;
BEGIN
    SELECT * INTO v_tenant FROM core.tenants WHERE tenant_id = p_tenant_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % does not exist', p_tenant_id USING ERRCODE = 'PW205', HINT = 'Create the tenant first.';
    END IF;
    v_out := CASE WHEN p_opt_out_keywords IS NULL THEN v_tenant.opt_out_keywords
                  ELSE ARRAY(SELECT DISTINCT core.normalize_text(k) FROM unnest(p_opt_out_keywords) k
                             WHERE core.normalize_text(k) IS NOT NULL ORDER BY 1) END;
    v_in := CASE WHEN p_opt_in_keywords IS NULL THEN v_tenant.opt_in_keywords
                 ELSE ARRAY(SELECT DISTINCT core.normalize_text(k) FROM unnest(p_opt_in_keywords) k
                            WHERE core.normalize_text(k) IS NOT NULL ORDER BY 1) END;
    IF p_opt_out_keywords IS NOT NULL AND cardinality(v_out) = 0 THEN
        RAISE EXCEPTION 'at least one opt-out keyword is required' USING ERRCODE = 'PW100',
            HINT = 'Recipients must be able to stop messages; STOP is the usual keyword.';
    END IF;
    IF v_out && v_in THEN
        RAISE EXCEPTION 'keywords % are both opt-out and opt-in', ARRAY(SELECT unnest(v_out) INTERSECT SELECT unnest(v_in))
            USING ERRCODE = 'PW100', HINT = 'A keyword opts out or opts in, not both.';
    END IF;
    IF btrim(p_opt_out_reply) = '' OR btrim(p_opt_in_reply) = '' OR length(p_opt_out_reply) > core.text_body_max()
       OR length(p_opt_in_reply) > core.text_body_max() THEN
        RAISE EXCEPTION 'confirmation texts are 1 to % characters', core.text_body_max() USING ERRCODE = 'PW100',
            HINT = 'Pass NULL to keep a confirmation as it is.';
    END IF;
    UPDATE core.tenants SET opt_out_keywords = v_out, opt_in_keywords = v_in,
        opt_out_reply = coalesce(p_opt_out_reply, opt_out_reply), opt_in_reply = coalesce(p_opt_in_reply, opt_in_reply)
    WHERE tenant_id = p_tenant_id
    RETURNING * INTO v_tenant;
    RETURN ROW(v_tenant.tenant_id, v_tenant.opt_out_keywords, v_tenant.opt_in_keywords,
               v_tenant.opt_out_reply, v_tenant.opt_in_reply)::api.opt_out_settings;
END
$$;
COMMENT ON FUNCTION api.configure_opt_out(bigint, text[], text[], text, text) IS
    'Sets the tenant''s opt-out and opt-in keywords (matched against the whole message without case, accents and surrounding spaces) and the confirmations sent for them; a NULL argument keeps the current value. Returns the settings. Raises PW100 for an empty opt-out list, a keyword in both lists or an empty or over-long confirmation, PW205 for an unknown tenant.';

-- Called by api.claim_sends for each number's claimed messages: campaign messages of
-- contacts who opted out after their campaign was created, and marketing templates to
-- contacts who stopped marketing messages at Meta (131050), are cancelled (counted as
-- api.cancel_campaign counts withdrawn messages), so that claim_sends drops them from
-- the queue instead of sending. Costs two index probes while nobody has opted out since
-- the number's oldest running campaign began and nobody of the tenant stopped marketing.
-- Returns the messages cancelled.
CREATE OR REPLACE FUNCTION core.cancel_opted_out(p_batch core.claimed[], p_tenant_id bigint, p_number_id bigint)
RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_cancelled integer;
    v_campaigns bigint[];
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM core.contacts c
        WHERE c.tenant_id = p_tenant_id AND c.opted_out
          AND c.opted_out_at >= (SELECT min(created_at) FROM core.campaigns
                                 WHERE number_id = p_number_id AND status = 'running'))
       AND NOT EXISTS (SELECT 1 FROM core.contacts c
                       WHERE c.tenant_id = p_tenant_id AND c.marketing_stopped_at IS NOT NULL) THEN
        RETURN 0;
    END IF;
    WITH cancelled AS (
        UPDATE core.outbound_messages o SET state = 'cancelled', error_category = 'opted_out',
            error_detail = CASE WHEN c.opted_out THEN 'the contact opted out after the campaign was created'
                                ELSE 'the contact stopped marketing messages from this business' END
        FROM unnest(p_batch) b, core.contacts c
        WHERE o.outbound_id = b.outbound_id AND o.campaign_id IS NOT NULL AND o.state IN ('queued', 'in_flight')
          AND c.contact_id = o.contact_id
          AND (c.opted_out
               OR (c.marketing_stopped_at IS NOT NULL AND EXISTS (
                       SELECT 1 FROM core.campaign_templates ct JOIN core.templates t ON t.template_id = ct.template_id
                       WHERE ct.campaign_id = o.campaign_id AND ct.variant = o.variant AND t.category = 'MARKETING')))
        RETURNING o.campaign_id
    ), counted AS (
        UPDATE core.campaigns c SET cancelled = c.cancelled + k.n
        FROM (SELECT campaign_id, count(*)::integer AS n FROM cancelled GROUP BY campaign_id) k
        WHERE c.campaign_id = k.campaign_id
        RETURNING c.campaign_id, k.n
    )
    SELECT coalesce(sum(n), 0), array_agg(campaign_id) INTO v_cancelled, v_campaigns FROM counted;
    IF v_campaigns IS NOT NULL THEN
        PERFORM core.complete_campaigns(v_campaigns);
    END IF;
    RETURN v_cancelled;
END
$$;

-------------------------------------------------------------------------------
-- LLM replies
-------------------------------------------------------------------------------

-- The bounds of a number's LLM settings, their one home: api.configure_llm refuses a value
-- outside them, and the HTTP API reads them once at start-up to check its input and to show
-- the ranges in /openapi.json.
CREATE OR REPLACE FUNCTION api.llm_bounds() RETURNS SETOF api.llm_bound
LANGUAGE sql SECURITY DEFINER STABLE SET search_path = '' AS $$
    SELECT * FROM (VALUES
        ('system_prompt', 'string', 0, 20000, 'Characters of the system prompt; an empty string clears it'),
        ('daily_limit', 'integer', 0, 10000, 'LLM replies per contact and UTC day'),
        ('context_messages', 'integer', 1, 100, 'The last messages of the conversation that the LLM sees'),
        ('number_daily_limit', 'integer', 0, 1000000, 'LLM calls per number and UTC day, across its contacts')
    ) AS b(setting, type, minimum, maximum, meaning)
$$;
COMMENT ON FUNCTION api.llm_bounds() IS
    'The bounds of the LLM settings api.configure_llm takes, one row per setting: its name (the argument without p_), type (integer, or string: bounded in characters), minimum, maximum and meaning. Raises nothing.';

CREATE OR REPLACE FUNCTION api.configure_llm(
    p_tenant_id        bigint,
    p_number_id        bigint,
    p_enabled          boolean DEFAULT NULL,
    p_system_prompt    text DEFAULT NULL,
    p_daily_limit      integer DEFAULT NULL,
    p_context_messages integer DEFAULT NULL,
    p_number_daily_limit integer DEFAULT NULL
) RETURNS api.llm_settings
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_number core.wa_numbers := core.number_for(p_tenant_id, p_number_id);
    v_bad record;
BEGIN
    -- The first setting given outside its bounds (api.llm_bounds), named in the error.
    SELECT b.setting, b.type, b.minimum, b.maximum, b.meaning, v.value INTO v_bad
    FROM api.llm_bounds() b
    JOIN (VALUES ('system_prompt', length(p_system_prompt)), ('daily_limit', p_daily_limit),
                 ('context_messages', p_context_messages), ('number_daily_limit', p_number_daily_limit))
         AS v(setting, value) ON v.setting = b.setting
    WHERE v.value NOT BETWEEN b.minimum AND b.maximum
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%', format('%s%s %s is outside %s to %s', v_bad.setting,
                                    CASE v_bad.type WHEN 'string' THEN ' length' ELSE '' END,
                                    v_bad.value, v_bad.minimum, v_bad.maximum)
            USING ERRCODE = 'PW100', COLUMN = v_bad.setting, HINT = v_bad.meaning || '.';
    END IF;
    UPDATE core.wa_numbers SET
        llm_enabled = coalesce(p_enabled, llm_enabled),
        llm_system_prompt = CASE WHEN p_system_prompt IS NULL THEN llm_system_prompt ELSE nullif(btrim(p_system_prompt), '') END,
        llm_daily_limit = coalesce(p_daily_limit, llm_daily_limit),
        llm_context_messages = coalesce(p_context_messages, llm_context_messages),
        llm_number_daily_limit = coalesce(p_number_daily_limit, llm_number_daily_limit)
    WHERE number_id = v_number.number_id
    RETURNING * INTO v_number;
    RETURN ROW(v_number.number_id, v_number.llm_enabled, v_number.llm_system_prompt, v_number.llm_daily_limit,
               v_number.llm_context_messages, v_number.llm_number_daily_limit)::api.llm_settings;
END
$$;
COMMENT ON FUNCTION api.configure_llm(bigint, bigint, boolean, text, integer, integer, integer) IS
    'Enables or disables LLM replies on a number (they answer what no bot rule matched) and sets the system prompt, the replies allowed per contact and day, how many recent messages the LLM sees and the LLM calls allowed per number and UTC day (default 1000; over it, conversations go to a human with the fallback text and one notification a day); a NULL argument keeps the current value. Returns the settings. Raises PW100 naming the first setting outside api.llm_bounds(), PW202 when the number is not the tenant''s.';

-- Take up to p_max LLM jobs for p_vt_s seconds. A conversation's newer job supersedes
-- its older ones, and jobs no longer wanted (the contact opted out, handed to an agent,
-- a human asked for, LLM disabled, window closed, or already taken into an earlier job's
-- context) are deleted: an opt-out that arrives while a job waits cancels it here.
-- Each job returned carries its context and over_limit: the contact's daily replies are
-- used up, or the number's LLM calls for the UTC day of p_now are (the jobs that will call
-- the model are counted in core.llm_number_usage; the first to find the cap reached
-- raises one notification per number and day).
CREATE OR REPLACE FUNCTION api.claim_llm_jobs(p_worker text, p_max integer DEFAULT 16, p_vt_s integer DEFAULT 60,
                                              p_now timestamptz DEFAULT now())
RETURNS SETOF api.llm_job
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_keep bigint[];
    v_drop bigint[];
    v_capped bigint[];
    v_day date := (p_now AT TIME ZONE 'UTC')::date;
BEGIN
    IF p_max IS NULL OR p_max NOT BETWEEN 1 AND 1000 OR p_vt_s IS NULL OR p_vt_s NOT BETWEEN 5 AND 3600 THEN
        RAISE EXCEPTION 'p_max must be 1..1000 and p_vt_s 5..3600' USING ERRCODE = 'PW100',
            HINT = 'Claim what the worker can run at once, for longer than its LLM timeout.';
    END IF;
    WITH jobs AS (
        SELECT r.msg_id, (r.message->>'number_id')::bigint AS number_id,
               (r.message->>'contact_id')::bigint AS contact_id, (r.message->>'message_id')::bigint AS message_id
        FROM pgmq.read('llm_jobs', p_vt_s, p_max) r
    ), judged AS (
        SELECT j.msg_id,
               row_number() OVER (PARTITION BY j.number_id, j.contact_id ORDER BY j.message_id DESC, j.msg_id DESC) = 1
               AND n.llm_enabled AND v.assigned_to IS NULL AND NOT v.needs_human AND NOT c.opted_out
               AND core.window_open(v.last_inbound_at, p_now)
               AND j.message_id > coalesce(v.llm_answered_id, 0) AS keep
        FROM jobs j
        LEFT JOIN core.wa_numbers n ON n.number_id = j.number_id
        LEFT JOIN core.conversations v ON v.number_id = j.number_id AND v.contact_id = j.contact_id
        LEFT JOIN core.contacts c ON c.contact_id = j.contact_id
    )
    SELECT array_agg(msg_id) FILTER (WHERE keep), array_agg(msg_id) FILTER (WHERE keep IS NOT TRUE)
    INTO v_keep, v_drop FROM judged;
    IF v_drop IS NOT NULL THEN
        PERFORM pgmq.delete('llm_jobs', v_drop);
    END IF;
    IF v_keep IS NULL THEN
        RETURN;
    END IF;

    -- Everything the conversation received up to now is in this job's context.
    UPDATE core.conversations v SET
        llm_answered_id = greatest(v.llm_answered_id, (
            SELECT max(i.message_id) FROM core.inbox_messages i
            WHERE i.number_id = v.number_id AND i.contact_id = v.contact_id AND i.direction = 'in')),
        llm_replies = CASE WHEN v.llm_day = v_day THEN v.llm_replies ELSE 0 END,
        llm_day = v_day
    FROM pgmq.q_llm_jobs q
    WHERE q.msg_id = ANY (v_keep)
      AND v.number_id = (q.message->>'number_id')::bigint AND v.contact_id = (q.message->>'contact_id')::bigint;

    -- The number's cap: lock today's usage rows (in key order, so that two workers share
    -- the cap and cannot deadlock), then hand out calls to the jobs whose contact is under
    -- its own limit, oldest first, while the number has calls left.
    INSERT INTO core.llm_number_usage AS u (number_id, day)
    SELECT DISTINCT (q.message->>'number_id')::bigint, v_day FROM pgmq.q_llm_jobs q WHERE q.msg_id = ANY (v_keep)
    ORDER BY 1
    ON CONFLICT (number_id, day) DO NOTHING;
    PERFORM 1 FROM core.llm_number_usage u
    WHERE u.day = v_day AND u.number_id IN (SELECT (q.message->>'number_id')::bigint FROM pgmq.q_llm_jobs q
                                            WHERE q.msg_id = ANY (v_keep))
    ORDER BY u.number_id FOR UPDATE;
    WITH calls AS (
        SELECT q.msg_id, n.number_id, n.tenant_id, n.llm_number_daily_limit - u.calls AS left_today,
               row_number() OVER (PARTITION BY n.number_id ORDER BY q.msg_id) AS nth
        FROM pgmq.q_llm_jobs q
        JOIN core.conversations v ON v.number_id = (q.message->>'number_id')::bigint
                                 AND v.contact_id = (q.message->>'contact_id')::bigint
        JOIN core.wa_numbers n ON n.number_id = v.number_id
        JOIN core.llm_number_usage u ON u.number_id = n.number_id AND u.day = v_day
        WHERE q.msg_id = ANY (v_keep) AND v.llm_replies < n.llm_daily_limit
    ), counted AS (
        UPDATE core.llm_number_usage u SET calls = u.calls + k.granted
        FROM (SELECT c.number_id, count(*) FILTER (WHERE c.nth <= c.left_today)::integer AS granted
              FROM calls c GROUP BY c.number_id) k
        WHERE u.number_id = k.number_id AND u.day = v_day AND k.granted > 0
    ), notified AS (
        INSERT INTO core.notifications (tenant_id, kind, severity, message, details, dedupe_key)
        SELECT DISTINCT ON (c.number_id) c.tenant_id, 'llm_number_cap', 'warning',
               format('number %s reached its %s LLM calls for %s (UTC); conversations go to a human until the next day',
                      coalesce(n.display_phone_number, n.phone_number_id), n.llm_number_daily_limit, v_day),
               jsonb_build_object('number_id', c.number_id, 'day', v_day, 'limit', n.llm_number_daily_limit,
                                  'hint', 'Raise number_daily_limit with api.configure_llm, or answer the flagged conversations.'),
               format('llm_number_cap:%s:%s', c.number_id, v_day)
        FROM calls c JOIN core.wa_numbers n ON n.number_id = c.number_id
        WHERE c.nth > c.left_today
        ORDER BY c.number_id
        ON CONFLICT DO NOTHING
    )
    SELECT array_agg(c.msg_id) FILTER (WHERE c.nth > c.left_today) INTO v_capped FROM calls c;

    RETURN QUERY
    SELECT q.msg_id, v.number_id, v.contact_id, (q.message->>'message_id')::bigint, n.llm_system_prompt,
           coalesce((SELECT jsonb_agg(jsonb_build_object(
                                'role', CASE h.direction WHEN 'in' THEN 'user' ELSE 'assistant' END,
                                'content', coalesce(h.body, '[' || h.type || ']'))
                            ORDER BY h.created_at, h.message_id)
                     FROM (SELECT i.direction, i.body, i.type, i.created_at, i.message_id
                           FROM core.inbox_messages i
                           WHERE i.number_id = v.number_id AND i.contact_id = v.contact_id
                           ORDER BY i.created_at DESC, i.message_id DESC
                           LIMIT n.llm_context_messages) h), '[]'),
           v.llm_replies >= n.llm_daily_limit OR q.msg_id = ANY (coalesce(v_capped, '{}'))
    FROM pgmq.q_llm_jobs q
    JOIN core.conversations v ON v.number_id = (q.message->>'number_id')::bigint
                             AND v.contact_id = (q.message->>'contact_id')::bigint
    JOIN core.wa_numbers n ON n.number_id = v.number_id
    WHERE q.msg_id = ANY (v_keep)
    ORDER BY q.msg_id;
END
$$;
COMMENT ON FUNCTION api.claim_llm_jobs(text, integer, integer, timestamptz) IS
    'Claims up to p_max LLM jobs for p_vt_s seconds for worker p_worker; returns each with the number''s system prompt, the conversation''s last messages as chat messages (oldest first) and over_limit when the contact''s LLM replies or the number''s LLM calls for the UTC day of p_now are used up (the number''s cap raises one notification a day). Superseded or unwanted jobs (the contact opted out, assigned to an agent, flagged for a human, LLM disabled, window closed) are deleted, not returned. Raises PW100 for p_max outside 1..1000 or p_vt_s outside 5..3600.';

-- Store what the LLM worker got for claimed jobs. p_results is a JSON array of
-- {msg_id, text, error}: without error, text is the LLM's reply; with one (a timeout,
-- an HTTP error, the daily limit), text is the configured fallback, sent once, and the
-- conversation is flagged for a human (the LLM then stays quiet until an agent takes it).
CREATE OR REPLACE FUNCTION api.complete_llm_jobs(p_results jsonb) RETURNS api.llm_outcome
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_outcome api.llm_outcome := ROW(0, 0, 0);
    v_replies core.reply_request[];
    v_total integer;
    v_kinds text[];
    v_number_ids bigint[];
    v_contact_ids bigint[];
BEGIN
    IF jsonb_typeof(p_results) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'results must be a JSON array' USING ERRCODE = 'PW100',
            HINT = 'One object per claimed job: msg_id, text, error.';
    END IF;
    -- Deleting the job is what makes a result count: a job redelivered to a second
    -- worker after its visibility timeout is answered once, by whoever reports first.
    WITH done AS (
        DELETE FROM pgmq.q_llm_jobs q
        USING jsonb_to_recordset(p_results) AS r(msg_id bigint, text text, error text)
        WHERE q.msg_id = r.msg_id
        RETURNING (q.message->>'number_id')::bigint AS number_id, (q.message->>'contact_id')::bigint AS contact_id,
                  nullif(btrim(r.text), '') AS text, r.error
    ), judged AS (
        SELECT d.*, CASE
                   WHEN v.assigned_to IS NOT NULL OR d.text IS NULL OR c.opted_out THEN 'dropped'
                   WHEN d.error IS NULL THEN 'llm'
                   WHEN NOT v.needs_human THEN 'fallback'
                   ELSE 'dropped' END AS outcome
        FROM done d
        LEFT JOIN core.conversations v ON v.number_id = d.number_id AND v.contact_id = d.contact_id
        LEFT JOIN core.contacts c ON c.contact_id = d.contact_id
    ), flagged AS (
        UPDATE core.conversations v SET needs_human = true, needs_human_at = now(),
            needs_human_reason = left('LLM: ' || j.error, 300)
        FROM judged j
        WHERE j.outcome = 'fallback' AND v.number_id = j.number_id AND v.contact_id = j.contact_id
    )
    SELECT count(*),
           array_agg(ROW(j.number_id, j.contact_id, CASE j.outcome WHEN 'llm' THEN 'llm' ELSE 'bot' END,
                         jsonb_build_object('type', 'text', 'text', jsonb_build_object('body', left(j.text, core.text_body_max()))))::core.reply_request)
               FILTER (WHERE j.outcome <> 'dropped')
    INTO v_total, v_replies
    FROM judged j;

    IF v_replies IS NOT NULL THEN
        -- Queued replies by kind: 'llm' answers count against the daily limit, 'bot' ones
        -- are fallbacks. A reply refused (the window closed meanwhile) counts as dropped.
        SELECT array_agg(r.kind), array_agg(r.number_id), array_agg(r.contact_id)
        INTO v_kinds, v_number_ids, v_contact_ids
        FROM core.enqueue_replies(v_replies) q
        JOIN unnest(v_replies) WITH ORDINALITY AS r(number_id, contact_id, kind, message, ord) ON r.ord = q.ord
        WHERE q.outbound_id IS NOT NULL;
        UPDATE core.conversations v SET llm_replies = v.llm_replies + k.n
        FROM (SELECT number_id, contact_id, count(*)::integer AS n
              FROM unnest(v_kinds, v_number_ids, v_contact_ids) AS u(kind, number_id, contact_id)
              WHERE kind = 'llm' GROUP BY number_id, contact_id ORDER BY number_id, contact_id) k
        WHERE v.number_id = k.number_id AND v.contact_id = k.contact_id;
        SELECT count(*) FILTER (WHERE kind = 'llm'), count(*) FILTER (WHERE kind = 'bot')
        INTO v_outcome.replied, v_outcome.fell_back
        FROM unnest(v_kinds) kind;
    END IF;
    v_outcome.dropped := v_total - v_outcome.replied - v_outcome.fell_back;
    RETURN v_outcome;
END
$$;
COMMENT ON FUNCTION api.complete_llm_jobs(jsonb) IS
    'Stores the LLM worker''s results (JSON array of {msg_id, text, error}): a reply is queued on the number''s reply queue and counted against the contact''s daily limit; an error queues the fallback text once and flags the conversation for a human. Results for jobs already done, handed to an agent, outside the window or for a contact who opted out meanwhile are dropped. Returns (replied, fell_back, dropped). Raises PW100 when p_results is not an array.';

REVOKE ALL ON FUNCTION api.save_bot_rule(bigint, bigint, text, text, jsonb, integer, boolean, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.delete_bot_rule(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.bot_rules(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.match_bot_rule(bigint, bigint, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.configure_opt_out(bigint, text[], text[], text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.llm_bounds() FROM PUBLIC;
REVOKE ALL ON FUNCTION api.configure_llm(bigint, bigint, boolean, text, integer, integer, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.claim_llm_jobs(text, integer, integer, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.complete_llm_jobs(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.save_bot_rule(bigint, bigint, text, text, jsonb, integer, boolean, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.delete_bot_rule(bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.bot_rules(bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.match_bot_rule(bigint, bigint, text, boolean) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.configure_opt_out(bigint, text[], text[], text, text) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.llm_bounds() TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.configure_llm(bigint, bigint, boolean, text, integer, integer, integer) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.claim_llm_jobs(text, integer, integer, timestamptz) TO pgwa_worker;
GRANT EXECUTE ON FUNCTION api.complete_llm_jobs(jsonb) TO pgwa_worker;
