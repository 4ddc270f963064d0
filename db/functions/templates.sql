-- Template management: check a definition against Meta's rules, create it through
-- Meta's API, show it with the parameters it takes, delete it; and what a template's
-- review, status and quality events do to the campaigns that send it.
--
--   POST /v1/templates ──> api.prepare_template      check (api.check_template_definition),
--                          │                         claim (waba, name, language): SUBMITTING
--                          │ POST /{waba-id}/message_templates (the WABA's token; no connection held)
--                          └> api.template_submitted Meta's id and status (PENDING)
--                             api.template_refused   Meta said no: the claim is let go
--   DELETE /v1/templates/{id} ──> api.prepare_template_deletion  (PW330 while campaigns send it)
--                                 DELETE /{waba-id}/message_templates?name=..&hsm_id=..
--                                 api.template_deleted           DELETED; with force, pauses them
--   webhooks (webhooks.sql) ──> core.apply_template_statuses / core.apply_template_quality /
--                               core.apply_category_updates, which pause or warn through
--                               core.pause_template_campaigns and core.warn_template_campaigns.

-------------------------------------------------------------------------------
-- Checking a definition
-------------------------------------------------------------------------------

-- The distinct placeholders of a text, in order of first appearance ({{1}}, {{first_name}}).
CREATE OR REPLACE FUNCTION core.template_variables(p_text text) RETURNS text[]
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT coalesce(array_agg(d.v ORDER BY d.first), '{}')
    FROM (SELECT r.m[1] AS v, min(r.k) AS first
          FROM regexp_matches(coalesce(p_text, ''), '\{\{\s*([A-Za-z0-9_]+)\s*\}\}', 'g') WITH ORDINALITY r(m, k)
          GROUP BY r.m[1]) d
$$;

-- What is wrong with the variables of a text in a template of this parameter format:
-- positional ones numbered {{1}}..{{n}} in order of first use (as the simulator checks
-- Meta's "sequential" rule), named ones lowercase, never mixed.
CREATE OR REPLACE FUNCTION core.variable_problems(p_component text, p_vars text[], p_format text)
RETURNS SETOF api.template_problem
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT p_component,
           format('{{%s}} is a named variable in a POSITIONAL template', v),
           'Number the variables {{1}}, {{2}}, ... or set "parameter_format": "NAMED".'
    FROM unnest(p_vars) v WHERE p_format = 'POSITIONAL' AND v !~ '^[0-9]{1,6}$'
    UNION ALL
    SELECT p_component,
           format('variables must be numbered {{1}} to {{%s}} in order of first use, not %s',
                  cardinality(p_vars), array_to_string(ARRAY(SELECT '{{' || v || '}}' FROM unnest(p_vars) v), ', ')),
           'Renumber them {{1}}, {{2}}, ... in the order they appear, without gaps.'
    WHERE p_format = 'POSITIONAL' AND NOT EXISTS (SELECT 1 FROM unnest(p_vars) v WHERE v !~ '^[0-9]{1,6}$')
      AND p_vars IS DISTINCT FROM ARRAY(SELECT g::text FROM generate_series(1, cardinality(p_vars)) g)
    UNION ALL
    SELECT p_component, format('{{%s}} is not a named variable (lowercase letters, digits, underscores)', v),
           'Name every variable like {{first_name}}, or set "parameter_format": "POSITIONAL" and number them.'
    FROM unnest(p_vars) v WHERE p_format = 'NAMED' AND v !~ '^[a-z][a-z0-9_]*$'
$$;

-- Every problem of a definition, in the order of its components: empty when Meta's
-- documented rules (reference §5.2, §5.4, §3.7) hold. A definition is Meta's POST
-- /{waba-id}/message_templates body: name, language, category, parameter_format,
-- components (HEADER, BODY, FOOTER, BUTTONS) with an example for every variable.
CREATE OR REPLACE FUNCTION api.template_definition_problems(p_definition jsonb)
RETURNS SETOF api.template_problem
LANGUAGE plpgsql SECURITY DEFINER IMMUTABLE SET search_path = '' AS $$
DECLARE
    v_p api.template_problem;
    v_category text := upper(p_definition->>'category');
    v_format text := upper(coalesce(p_definition->>'parameter_format', 'POSITIONAL'));
    v_auth boolean := upper(p_definition->>'category') = 'AUTHENTICATION';
    v_comp jsonb;
    v_type text;
    v_seen text[] := '{}';
    v_text text;
    v_vars text[];
    v_example jsonb;
    v_fmt text;
    v_btn jsonb;
    v_i integer;
    v_kind text;
    v_kinds text[] := '{}';
    v_where text;
BEGIN
    IF jsonb_typeof(p_definition) IS DISTINCT FROM 'object' THEN
        v_p := ROW('template', 'the definition is not a JSON object',
                   'Send {"name", "language", "category", "components": [...]}.');
        RETURN NEXT v_p;
        RETURN;
    END IF;
    -- ^[a-z0-9_]{1,512}$, in two parts: PostgreSQL counts repetitions to 255 at most.
    IF coalesce(p_definition->>'name', '') !~ '^[a-z0-9_]+$' OR char_length(p_definition->>'name') > 512 THEN
        v_p := ROW('template', format('name %s is not 1 to 512 lowercase letters, digits and underscores',
                                      coalesce(p_definition->'name', 'null')),
                   'e.g. "spring_sale_2026": no spaces, capitals or dashes.');
        RETURN NEXT v_p;
    END IF;
    IF coalesce(p_definition->>'language', '') !~ '^[a-z]{2,3}(_[A-Za-z]{2,4})?$' THEN
        v_p := ROW('template', format('language %s is not a language code', coalesce(p_definition->'language', 'null')),
                   'Use Meta''s code, e.g. "en_US", "en", "pt_BR".');
        RETURN NEXT v_p;
    END IF;
    IF v_category IS NULL OR v_category NOT IN ('MARKETING', 'UTILITY', 'AUTHENTICATION') THEN
        v_p := ROW('template', format('category %s is not one of Meta''s', coalesce(p_definition->'category', 'null')),
                   'Use "MARKETING", "UTILITY" or "AUTHENTICATION".');
        RETURN NEXT v_p;
    END IF;
    IF v_format NOT IN ('POSITIONAL', 'NAMED') THEN
        v_p := ROW('template', format('parameter_format %s is neither POSITIONAL nor NAMED', p_definition->'parameter_format'),
                   'Use "POSITIONAL" ({{1}}) or "NAMED" ({{first_name}}), or leave it out (POSITIONAL).');
        RETURN NEXT v_p;
        v_format := 'POSITIONAL';
    END IF;
    IF jsonb_typeof(p_definition->'components') IS DISTINCT FROM 'array'
       OR jsonb_array_length(p_definition->'components') = 0 THEN
        v_p := ROW('template', 'components is missing or empty',
                   'Give at least a BODY: "components": [{"type": "BODY", "text": "..."}].');
        RETURN NEXT v_p;
        RETURN;
    END IF;

    FOR v_comp IN SELECT c FROM jsonb_array_elements(p_definition->'components') c LOOP
        v_type := upper(v_comp->>'type');
        IF jsonb_typeof(v_comp) IS DISTINCT FROM 'object' OR v_type IS NULL
           OR v_type NOT IN ('HEADER', 'BODY', 'FOOTER', 'BUTTONS') THEN
            v_p := ROW(coalesce(v_type, 'components'),
                       format('component %s is not a HEADER, BODY, FOOTER or BUTTONS', left(v_comp::text, 80)),
                       'pgwa creates header/body/footer/buttons templates; make carousel and limited-time-offer templates in WhatsApp Manager and sync them.');
            RETURN NEXT v_p;
            CONTINUE;
        END IF;
        IF v_type = ANY (v_seen) THEN
            v_p := ROW(v_type, format('more than one %s component', v_type), 'A template has at most one of each component.');
            RETURN NEXT v_p;
            CONTINUE;
        END IF;
        v_seen := v_seen || v_type;
        v_text := v_comp->>'text';
        v_vars := core.template_variables(v_text);
        v_example := v_comp->'example';

        IF v_type = 'HEADER' THEN
            v_fmt := upper(v_comp->>'format');
            IF v_auth THEN
                v_p := ROW('HEADER', 'an AUTHENTICATION template has no header', 'Remove the HEADER component.');
                RETURN NEXT v_p;
            ELSIF v_fmt IS NULL OR v_fmt NOT IN ('TEXT', 'IMAGE', 'VIDEO', 'DOCUMENT', 'LOCATION') THEN
                v_p := ROW('HEADER', format('format %s is not a header format', coalesce(v_comp->'format', 'null')),
                           'Use "TEXT", "IMAGE", "VIDEO", "DOCUMENT" or "LOCATION".');
                RETURN NEXT v_p;
            ELSIF v_fmt = 'TEXT' THEN
                IF coalesce(v_text, '') = '' THEN
                    v_p := ROW('HEADER', 'a TEXT header has no text', 'Give "text" (at most 60 characters).');
                    RETURN NEXT v_p;
                ELSIF char_length(v_text) > 60 THEN
                    v_p := ROW('HEADER', format('text is %s characters, over Meta''s 60', char_length(v_text)),
                               'Shorten the header to 60 characters.');
                    RETURN NEXT v_p;
                END IF;
                IF cardinality(v_vars) > 1 THEN
                    v_p := ROW('HEADER', format('text has %s variables; a header takes at most one', cardinality(v_vars)),
                               'Keep one variable in the header and move the others to the body.');
                    RETURN NEXT v_p;
                ELSIF cardinality(v_vars) = 1 THEN
                    RETURN QUERY SELECT * FROM core.variable_problems('HEADER', v_vars, v_format);
                    IF v_format = 'NAMED' AND NOT EXISTS (
                           SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof(v_example->'header_text_named_params') = 'array'
                                                                   THEN v_example->'header_text_named_params' ELSE '[]' END) e
                           WHERE e->>'param_name' = v_vars[1] AND coalesce(e->>'example', '') <> '') THEN
                        v_p := ROW('HEADER', format('no example for {{%s}}', v_vars[1]),
                                   format('Add "example": {"header_text_named_params": [{"param_name": "%s", "example": "..."}]}.', v_vars[1]));
                        RETURN NEXT v_p;
                    ELSIF v_format = 'POSITIONAL' AND coalesce(v_example#>>'{header_text,0}', '') = '' THEN
                        v_p := ROW('HEADER', 'no example for {{1}}', 'Add "example": {"header_text": ["Pablo"]}.');
                        RETURN NEXT v_p;
                    END IF;
                END IF;
            ELSIF v_fmt IN ('IMAGE', 'VIDEO', 'DOCUMENT') AND (
                    jsonb_typeof(v_example->'header_handle') IS DISTINCT FROM 'array'
                    OR coalesce(v_example#>>'{header_handle,0}', '') = '') THEN
                v_p := ROW('HEADER', format('a %s header needs an example', v_fmt),
                           'Upload a sample with Meta''s resumable upload and add "example": {"header_handle": ["<handle>"]}.');
                RETURN NEXT v_p;
            END IF;

        ELSIF v_type = 'BODY' THEN
            -- Meta writes an AUTHENTICATION template's body itself (a code and, optionally,
            -- a security recommendation): its text is not the sender's to check.
            CONTINUE WHEN v_auth;
            IF coalesce(v_text, '') = '' THEN
                v_p := ROW('BODY', 'the body has no text', 'Give "text" (at most 1,024 characters).');
                RETURN NEXT v_p;
                CONTINUE;
            END IF;
            IF char_length(v_text) > 1024 THEN
                v_p := ROW('BODY', format('text is %s characters, over Meta''s 1,024', char_length(v_text)),
                           'Shorten the body to 1,024 characters.');
                RETURN NEXT v_p;
            END IF;
            CONTINUE WHEN cardinality(v_vars) = 0;
            RETURN QUERY SELECT * FROM core.variable_problems('BODY', v_vars, v_format);
            IF btrim(v_text) ~ '^\{\{' OR btrim(v_text) ~ '\}\}$' THEN
                v_p := ROW('BODY', 'the text starts or ends with a variable (Meta refuses it: 2388299)',
                           'Put words before the first variable and after the last one.');
                RETURN NEXT v_p;
            END IF;
            IF v_text ~ '\}\}\s*\{\{' THEN
                v_p := ROW('BODY', 'two variables are next to each other with no text between them (Meta rejects it: INVALID_FORMAT)',
                           'Separate the variables with descriptive text.');
                RETURN NEXT v_p;
            END IF;
            IF v_format = 'NAMED' THEN
                RETURN QUERY
                SELECT 'BODY'::text, format('no example for {{%s}}', v),
                       format('Add {"param_name": "%s", "example": "..."} to "example": {"body_text_named_params": [...]}.', v)
                FROM unnest(v_vars) v
                WHERE NOT EXISTS (
                    SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof(v_example->'body_text_named_params') = 'array'
                                                            THEN v_example->'body_text_named_params' ELSE '[]' END) e
                    WHERE e->>'param_name' = v AND coalesce(e->>'example', '') <> '');
            ELSIF jsonb_typeof(v_example#>'{body_text,0}') IS DISTINCT FROM 'array'
                  OR jsonb_array_length(v_example#>'{body_text,0}') <> cardinality(v_vars)
                  OR EXISTS (SELECT 1 FROM jsonb_array_elements(v_example#>'{body_text,0}') e
                             WHERE jsonb_typeof(e) <> 'string' OR e #>> '{}' = '') THEN
                v_p := ROW('BODY', format('the body has %s variables and needs an example for each', cardinality(v_vars)),
                           format('Add "example": {"body_text": [[%s]]}: one non-empty value per variable, in order.',
                                  array_to_string(ARRAY(SELECT format('"<{{%s}}>"', v) FROM unnest(v_vars) v), ', ')));
                RETURN NEXT v_p;
            END IF;

        ELSIF v_type = 'FOOTER' THEN
            CONTINUE WHEN v_auth;   -- code_expiration_minutes, no text
            IF coalesce(v_text, '') = '' THEN
                v_p := ROW('FOOTER', 'the footer has no text', 'Give "text" (at most 60 characters) or remove the FOOTER.');
                RETURN NEXT v_p;
            ELSIF char_length(v_text) > 60 THEN
                v_p := ROW('FOOTER', format('text is %s characters, over Meta''s 60', char_length(v_text)),
                           'Shorten the footer to 60 characters.');
                RETURN NEXT v_p;
            END IF;
            IF cardinality(v_vars) > 0 THEN
                v_p := ROW('FOOTER', 'a footer takes no variables', 'Move the variable to the body.');
                RETURN NEXT v_p;
            END IF;

        ELSE   -- BUTTONS
            IF jsonb_typeof(v_comp->'buttons') IS DISTINCT FROM 'array'
               OR jsonb_array_length(v_comp->'buttons') NOT BETWEEN 1 AND 10 THEN
                v_p := ROW('BUTTONS', 'buttons must be a list of 1 to 10 buttons',
                           'e.g. "buttons": [{"type": "QUICK_REPLY", "text": "Stop promotions"}].');
                RETURN NEXT v_p;
                CONTINUE;
            END IF;
            v_i := 0;
            FOR v_btn IN SELECT b FROM jsonb_array_elements(v_comp->'buttons') b LOOP
                v_where := format('BUTTONS[%s]', v_i);
                v_kind := upper(v_btn->>'type');
                v_kinds := v_kinds || v_kind;
                v_text := v_btn->>'text';
                IF v_kind IS NULL OR v_kind NOT IN ('QUICK_REPLY', 'URL', 'PHONE_NUMBER', 'COPY_CODE', 'OTP', 'FLOW',
                                                    'CATALOG', 'MPM', 'VOICE_CALL') THEN
                    v_p := ROW(v_where, format('type %s is not a button type', coalesce(v_btn->'type', 'null')),
                               'Use QUICK_REPLY, URL, PHONE_NUMBER, COPY_CODE, OTP (authentication) or FLOW.');
                    RETURN NEXT v_p;
                ELSIF v_kind IN ('QUICK_REPLY', 'URL', 'PHONE_NUMBER', 'FLOW', 'VOICE_CALL')
                      AND (coalesce(v_text, '') = '' OR char_length(v_text) > 25) THEN
                    v_p := ROW(v_where, format('a %s button needs a text of 1 to 25 characters', v_kind),
                               'Give "text", e.g. "Shop now".');
                    RETURN NEXT v_p;
                END IF;
                IF v_kind = 'URL' THEN
                    v_vars := core.template_variables(v_btn->>'url');
                    IF coalesce(v_btn->>'url', '') !~ '^https?://[^\s/]+' THEN
                        v_p := ROW(v_where, format('url %s is not an http(s) URL', coalesce(v_btn->'url', 'null')),
                                   'e.g. "url": "https://shop.example.com/sale/{{1}}".');
                        RETURN NEXT v_p;
                    ELSIF cardinality(v_vars) > 1 OR (cardinality(v_vars) = 1 AND v_btn->>'url' !~ '\{\{1\}\}$') THEN
                        v_p := ROW(v_where, 'a URL button takes one variable, {{1}}, at the end of its url',
                                   'e.g. "url": "https://shop.example.com/sale/{{1}}".');
                        RETURN NEXT v_p;
                    ELSIF cardinality(v_vars) = 1 AND coalesce(v_btn#>>'{example,0}', '') = '' THEN
                        v_p := ROW(v_where, 'the url''s {{1}} has no example',
                                   'Add "example": ["https://shop.example.com/sale/spring"] (the full url with a sample suffix).');
                        RETURN NEXT v_p;
                    END IF;
                ELSIF v_kind = 'PHONE_NUMBER' AND coalesce(v_btn->>'phone_number', '') !~ '^\+?[0-9]{5,20}$' THEN
                    v_p := ROW(v_where, 'a PHONE_NUMBER button needs a phone_number', 'e.g. "phone_number": "+15550100".');
                    RETURN NEXT v_p;
                ELSIF v_kind = 'COPY_CODE' THEN
                    v_example := CASE WHEN jsonb_typeof(v_btn->'example') = 'array' THEN v_btn->'example'->0 ELSE v_btn->'example' END;
                    IF coalesce(v_example #>> '{}', '') = '' OR char_length(v_example #>> '{}') > 15 THEN
                        v_p := ROW(v_where, 'a COPY_CODE button needs an example code of 1 to 15 characters',
                                   'e.g. "example": "SUMMER20".');
                        RETURN NEXT v_p;
                    END IF;
                ELSIF v_kind = 'OTP' THEN
                    IF NOT v_auth THEN
                        v_p := ROW(v_where, 'an OTP button belongs to an AUTHENTICATION template',
                                   'Set "category": "AUTHENTICATION", or use a COPY_CODE or URL button.');
                        RETURN NEXT v_p;
                    ELSIF upper(coalesce(v_btn->>'otp_type', '')) NOT IN ('COPY_CODE', 'ONE_TAP', 'ZERO_TAP') THEN
                        v_p := ROW(v_where, format('otp_type %s is not one of Meta''s', coalesce(v_btn->'otp_type', 'null')),
                                   'Use "COPY_CODE", "ONE_TAP" or "ZERO_TAP".');
                        RETURN NEXT v_p;
                    END IF;
                ELSIF v_kind = 'FLOW' AND coalesce(v_btn->>'flow_id', v_btn->>'flow_name', v_btn->>'flow_json') IS NULL THEN
                    v_p := ROW(v_where, 'a FLOW button names no Flow', 'Give "flow_id" (or "flow_name" or "flow_json").');
                    RETURN NEXT v_p;
                END IF;
                v_i := v_i + 1;
            END LOOP;
            IF (SELECT count(*) FROM unnest(v_kinds) k WHERE k = 'URL') > 2 THEN
                v_p := ROW('BUTTONS', 'more than 2 URL buttons', 'Meta allows at most 2 URL buttons.');
                RETURN NEXT v_p;
            END IF;
            IF (SELECT count(*) FROM unnest(v_kinds) k WHERE k = 'PHONE_NUMBER') > 1 THEN
                v_p := ROW('BUTTONS', 'more than 1 PHONE_NUMBER button', 'Meta allows one phone number button.');
                RETURN NEXT v_p;
            END IF;
            IF (SELECT count(*) FROM unnest(v_kinds) k WHERE k = 'COPY_CODE') > 1 THEN
                v_p := ROW('BUTTONS', 'more than 1 COPY_CODE button', 'Meta allows one copy-code button.');
                RETURN NEXT v_p;
            END IF;
        END IF;
    END LOOP;

    IF NOT 'BODY' = ANY (v_seen) THEN
        v_p := ROW('BODY', 'the template has no BODY', 'Add {"type": "BODY", "text": "..."}.');
        RETURN NEXT v_p;
    END IF;
    IF v_auth AND (SELECT count(*) FROM unnest(v_kinds) k WHERE k = 'OTP') <> 1 THEN
        v_p := ROW('BUTTONS', 'an AUTHENTICATION template needs exactly one OTP button',
                   'Add "buttons": [{"type": "OTP", "otp_type": "COPY_CODE"}].');
        RETURN NEXT v_p;
    END IF;
END
$$;
COMMENT ON FUNCTION api.template_definition_problems(jsonb) IS
    'Lists every way a template definition (the body of Meta''s POST /{waba-id}/message_templates: name, language, category, parameter_format, components with examples) breaks Meta''s documented rules, each with the component (template, HEADER, BODY, FOOTER, BUTTONS, BUTTONS[i]), the problem and the fix; no rows when it holds. Changes nothing.';

CREATE OR REPLACE FUNCTION api.check_template_definition(p_definition jsonb) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER IMMUTABLE SET search_path = '' AS $$
DECLARE
    v_first api.template_problem;
    v_all text;
BEGIN
    SELECT string_agg(p.component || ': ' || p.problem, '; ') INTO v_all
    FROM api.template_definition_problems(p_definition) p;
    IF v_all IS NOT NULL THEN
        SELECT * INTO v_first FROM api.template_definition_problems(p_definition) LIMIT 1;
        RAISE EXCEPTION 'template %: %: %', coalesce(p_definition->>'name', '?'), v_first.component, v_first.problem
            USING ERRCODE = 'PW130', HINT = v_first.fix, DETAIL = v_all;
    END IF;
    -- As Meta expects it: uppercase vocabulary, the parameter format always given.
    RETURN jsonb_build_object(
        'name', p_definition->>'name', 'language', p_definition->>'language',
        'category', upper(p_definition->>'category'),
        'parameter_format', upper(coalesce(p_definition->>'parameter_format', 'POSITIONAL')),
        'components', (SELECT jsonb_agg(c || jsonb_build_object('type', upper(c->>'type')) ORDER BY n)
                       FROM jsonb_array_elements(p_definition->'components') WITH ORDINALITY x(c, n)))
        || CASE WHEN jsonb_typeof(p_definition->'allow_category_change') = 'boolean'
                THEN jsonb_build_object('allow_category_change', p_definition->'allow_category_change') ELSE '{}' END;
END
$$;
COMMENT ON FUNCTION api.check_template_definition(jsonb) IS
    'Checks a template definition against Meta''s rules (api.template_definition_problems) and returns it as Meta''s create call takes it (category, parameter_format and component types uppercase). Raises PW130 naming the template, the first component at fault and the problem, with the fix in HINT and every problem in DETAIL.';

-------------------------------------------------------------------------------
-- Creating
-------------------------------------------------------------------------------

-- A template as the API shows it: its row without the tenant.
CREATE OR REPLACE FUNCTION core.template_json(p_template core.templates) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = '' AS $$
    SELECT to_jsonb(p_template) - 'tenant_id'
$$;

-- The number whose token speaks for a WABA of the tenant: the one given (it must be the
-- tenant's), or the tenant's first number on that WABA.
CREATE OR REPLACE FUNCTION core.waba_number(p_tenant_id bigint, p_waba_id text, p_number_id bigint)
RETURNS core.wa_numbers
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
DECLARE
    v_number core.wa_numbers;
BEGIN
    IF (p_waba_id IS NULL) = (p_number_id IS NULL) THEN
        RAISE EXCEPTION 'give exactly one of waba_id and number_id' USING ERRCODE = 'PW100',
            HINT = 'A template belongs to a WhatsApp Business Account: name it, or one of its numbers.';
    END IF;
    SELECT * INTO v_number FROM core.wa_numbers n
    WHERE n.tenant_id = p_tenant_id AND (n.number_id = p_number_id OR n.waba_id = p_waba_id)
    ORDER BY n.number_id LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% % has no number of this tenant', CASE WHEN p_waba_id IS NULL THEN 'number' ELSE 'waba_id' END,
            coalesce(p_waba_id, p_number_id::text)
            USING ERRCODE = 'PW202', HINT = 'Register a number of this WhatsApp Business Account first (api.numbers lists them).';
    END IF;
    RETURN v_number;
END
$$;

-- A submission left SUBMITTING this long (the server died while Meta answered) may go again.
CREATE OR REPLACE FUNCTION core.template_submit_timeout() RETURNS interval
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$ SELECT interval '2 minutes' $$;

CREATE OR REPLACE FUNCTION api.prepare_template(
    p_tenant_id   bigint,
    p_definition  jsonb,
    p_waba_id     text DEFAULT NULL,
    p_number_id   bigint DEFAULT NULL,
    p_now         timestamptz DEFAULT NULL
) RETURNS api.template_submission
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_def jsonb := api.check_template_definition(p_definition);
    v_number core.wa_numbers := core.waba_number(p_tenant_id, p_waba_id, p_number_id);
    v_template core.templates;
    v_result api.template_submission;
BEGIN
    -- Claim (waba, name, language) first: of two requests for one template, one submits.
    INSERT INTO core.templates AS t (tenant_id, waba_id, name, language, category, status, components,
                                     parameter_format, body_param_count, submitted_at)
    VALUES (p_tenant_id, v_number.waba_id, v_def->>'name', v_def->>'language', v_def->>'category', 'SUBMITTING',
            v_def->'components', v_def->>'parameter_format', core.body_param_count(v_def->'components'), v_now)
    ON CONFLICT ON CONSTRAINT templates_waba_name_language_unique DO NOTHING
    RETURNING * INTO v_template;
    IF NOT FOUND THEN
        SELECT * INTO v_template FROM core.templates
        WHERE waba_id = v_number.waba_id AND name = v_def->>'name' AND language = v_def->>'language' FOR UPDATE;
        IF v_template.tenant_id <> p_tenant_id THEN
            -- The WABA's number moved tenants (api.transfer_number); its templates did not.
            RAISE EXCEPTION 'template % (%) of WABA % is held by another tenant', v_template.name,
                v_template.language, v_template.waba_id
                USING ERRCODE = 'PW302', HINT = 'Choose another name, or ask an operator to move the WABA''s templates.';
        ELSIF v_template.status = 'DELETED'
           OR (v_template.status = 'SUBMITTING' AND v_template.submitted_at < v_now - core.template_submit_timeout()) THEN
            -- Made again: a deleted name (Meta refuses it within 30 days of deleting an
            -- approved one), or a submission whose answer was lost.
            UPDATE core.templates SET category = v_def->>'category', status = 'SUBMITTING', components = v_def->'components',
                parameter_format = v_def->>'parameter_format', body_param_count = core.body_param_count(v_def->'components'),
                rejected_reason = NULL, submitted_at = v_now, updated_at = now()
            WHERE template_id = v_template.template_id
            RETURNING * INTO v_template;
        ELSIF v_template.components IS DISTINCT FROM v_def->'components'
              OR v_template.category IS DISTINCT FROM v_def->>'category' THEN
            RAISE EXCEPTION 'template % (%) already exists on WABA % (%), with another definition',
                v_template.name, v_template.language, v_template.waba_id, v_template.status
                USING ERRCODE = 'PW302',
                      HINT = format('Delete it first (DELETE /v1/templates/%s) or choose another name; the same definition again returns it.',
                                    v_template.template_id);
        ELSIF v_template.status = 'SUBMITTING' THEN
            RAISE EXCEPTION 'template % (%) is being submitted to Meta by another request', v_template.name, v_template.language
                USING ERRCODE = 'PW301', HINT = 'Retry in a few seconds: the same definition then returns it.';
        END IF;
    END IF;
    v_result.template_id := v_template.template_id;
    v_result.waba_id := v_template.waba_id;
    v_result.status := v_template.status;
    v_result.submit := v_template.status = 'SUBMITTING';
    IF v_result.submit THEN
        v_result.request := v_def;
        v_result.access_token := v_number.access_token;
        v_result.graph_api_version := (SELECT s.graph_api_version FROM core.settings s);
    END IF;
    RETURN v_result;
END
$$;
COMMENT ON FUNCTION api.prepare_template(bigint, jsonb, text, bigint, timestamptz) IS
    'Step one of creating a template: checks the definition (api.check_template_definition) and claims (WABA, name, language) for it in status SUBMITTING; returns the template_id and, when the server must submit it to Meta (submit), the request body, the WABA''s access token and the Graph API version: for the server''s own call, never for a client. The same definition again returns the template as it stands (idempotent). Raises PW130 for a definition Meta would refuse, PW100 unless exactly one of waba_id and number_id is given, PW202 when the tenant has no number there, PW302 when the name and language exist with another definition (or another tenant''s), PW301 while another request submits it.';

-- The template of the tenant with this id, locked; another tenant's is not found.
CREATE OR REPLACE FUNCTION core.template_for(p_tenant_id bigint, p_template_id bigint) RETURNS core.templates
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_template core.templates;
BEGIN
    SELECT * INTO v_template FROM core.templates WHERE template_id = p_template_id AND tenant_id = p_tenant_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'template % not found', p_template_id USING ERRCODE = 'PW203',
            HINT = 'List the tenant''s templates with api.templates() (GET /v1/templates).';
    END IF;
    RETURN v_template;
END
$$;

CREATE OR REPLACE FUNCTION api.template_submitted(p_tenant_id bigint, p_template_id bigint, p_answer jsonb)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_template core.templates := core.template_for(p_tenant_id, p_template_id);
BEGIN
    IF jsonb_typeof(p_answer) IS DISTINCT FROM 'object' OR coalesce(p_answer->>'id', '') = '' THEN
        RAISE EXCEPTION 'Meta''s answer carries no template id' USING ERRCODE = 'PW105',
            HINT = 'Pass the body of Meta''s answer to POST /{waba-id}/message_templates: {"id", "status", "category"}.';
    END IF;
    -- A review webhook may have come first: it is newer than the answer's status.
    UPDATE core.templates SET
        meta_template_id = p_answer->>'id',
        status = CASE WHEN status = 'SUBMITTING' THEN upper(coalesce(p_answer->>'status', 'PENDING')) ELSE status END,
        category = coalesce(upper(p_answer->>'category'), category),
        deleted_at = NULL, updated_at = now()
    WHERE template_id = v_template.template_id
    RETURNING * INTO v_template;
    RETURN core.template_json(v_template);
END
$$;
COMMENT ON FUNCTION api.template_submitted(bigint, bigint, jsonb) IS
    'Step two of creating a template: records Meta''s answer to the submission ({"id", "status", "category"}): Meta''s template id and its status (PENDING until the review webhook). Returns the template. Raises PW203 when the tenant has no such template, PW105 when the answer carries no id.';

CREATE OR REPLACE FUNCTION api.template_refused(p_tenant_id bigint, p_template_id bigint) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_template core.templates := core.template_for(p_tenant_id, p_template_id);
BEGIN
    IF v_template.status <> 'SUBMITTING' THEN
        RETURN false;
    END IF;
    IF v_template.deleted_at IS NOT NULL THEN
        UPDATE core.templates SET status = 'DELETED', updated_at = now() WHERE template_id = v_template.template_id;
    ELSE
        DELETE FROM core.templates WHERE template_id = v_template.template_id;
    END IF;
    RETURN true;
END
$$;
COMMENT ON FUNCTION api.template_refused(bigint, bigint) IS
    'Step two of creating a template when Meta refused it (or could not be asked): lets go of the claim api.prepare_template made, so that a corrected definition may be submitted; a template deleted before goes back to DELETED. Returns whether there was a claim to let go. Raises PW203 when the tenant has no such template.';

-------------------------------------------------------------------------------
-- Showing
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.template_detail(p_tenant_id bigint, p_template_id bigint) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
DECLARE
    v_template core.templates;
BEGIN
    SELECT * INTO v_template FROM core.templates WHERE template_id = p_template_id AND tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'template % not found', p_template_id USING ERRCODE = 'PW203',
            HINT = 'List the tenant''s templates with api.templates() (GET /v1/templates).';
    END IF;
    RETURN core.template_json(v_template) || jsonb_build_object(
        'parameters', (SELECT coalesce(jsonb_agg(to_jsonb(p)), '[]')
                       FROM api.template_parameters(p_tenant_id, p_template_id) p),
        'campaigns', (SELECT coalesce(jsonb_agg(jsonb_build_object('campaign_id', c.campaign_id, 'name', c.name,
                                                                  'status', c.status) ORDER BY c.campaign_id), '[]')
                      FROM core.campaigns c
                      WHERE c.tenant_id = p_tenant_id AND c.status IN ('scheduled', 'running', 'paused')
                        AND EXISTS (SELECT 1 FROM core.campaign_templates ct
                                    WHERE ct.campaign_id = c.campaign_id AND ct.template_id = p_template_id)));
END
$$;
COMMENT ON FUNCTION api.template_detail(bigint, bigint) IS
    'One template of the tenant with its components, status, quality and category history, the parameters a send (and a campaign mapping) must give (component, index, parameter_name, kind, required, example, mapping), and the unfinished campaigns that send it. Raises PW203 when the tenant has no such template.';

-------------------------------------------------------------------------------
-- Deleting
-------------------------------------------------------------------------------

-- The scheduled, running and paused campaigns of the template's tenant that send it.
CREATE OR REPLACE FUNCTION core.template_campaigns(p_template core.templates)
RETURNS SETOF core.campaigns
LANGUAGE sql STABLE SET search_path = '' AS $$
    SELECT c.* FROM core.campaigns c
    WHERE c.tenant_id = p_template.tenant_id AND c.status IN ('scheduled', 'running', 'paused')
      AND EXISTS (SELECT 1 FROM core.campaign_templates ct
                  WHERE ct.campaign_id = c.campaign_id AND ct.template_id = p_template.template_id)
    ORDER BY c.campaign_id
$$;

CREATE OR REPLACE FUNCTION api.prepare_template_deletion(p_tenant_id bigint, p_template_id bigint,
                                                         p_force boolean DEFAULT false)
RETURNS api.template_deletion
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_template core.templates := core.template_for(p_tenant_id, p_template_id);
    v_names text;
    v_result api.template_deletion;
BEGIN
    v_result.template_id := v_template.template_id;
    v_result.waba_id := v_template.waba_id;
    v_result.name := v_template.name;
    v_result.meta_template_id := v_template.meta_template_id;
    v_result.submit := v_template.status <> 'DELETED';
    IF NOT v_result.submit THEN
        RETURN v_result;
    END IF;
    IF v_template.status = 'SUBMITTING' THEN
        RAISE EXCEPTION 'template % (%) is being submitted to Meta', v_template.name, v_template.language
            USING ERRCODE = 'PW301', HINT = 'Retry once the submission has an answer.';
    END IF;
    IF v_template.status = 'DISABLED' THEN
        RAISE EXCEPTION 'template % (%) is DISABLED: Meta does not delete disabled templates', v_template.name, v_template.language
            USING ERRCODE = 'PW301', HINT = 'Appeal or leave it; it cannot be sent either.';
    END IF;
    IF v_template.meta_template_id IS NULL THEN
        RAISE EXCEPTION 'template % (%) has no Meta id', v_template.name, v_template.language
            USING ERRCODE = 'PW301',
                  HINT = 'Sync the WABA''s templates first (POST /v1/templates/sync): deleting by name alone would delete every language.';
    END IF;
    SELECT string_agg(format('"%s" (%s, %s)', c.name, c.campaign_id, c.status), ', '), array_agg(c.campaign_id)
    INTO v_names, v_result.campaign_ids
    FROM core.template_campaigns(v_template) c;
    IF v_names IS NOT NULL AND NOT coalesce(p_force, false) THEN
        RAISE EXCEPTION 'template % (%) is sent by campaign(s) %', v_template.name, v_template.language, v_names
            USING ERRCODE = 'PW330',
                  HINT = 'Cancel or finish those campaigns first, or pass force: they are then paused, their messages kept queued.';
    END IF;
    v_result.access_token := (SELECT n.access_token FROM core.wa_numbers n
                              WHERE n.tenant_id = p_tenant_id AND n.waba_id = v_template.waba_id
                              ORDER BY n.number_id LIMIT 1);
    v_result.graph_api_version := (SELECT s.graph_api_version FROM core.settings s);
    RETURN v_result;
END
$$;
COMMENT ON FUNCTION api.prepare_template_deletion(bigint, bigint, boolean) IS
    'Step one of deleting a template (one language: Meta''s hsm_id): returns what the server needs to ask Meta (name, meta_template_id, the WABA''s access token: never for a client); submit false when it is already deleted. Raises PW203 when the tenant has no such template, PW301 while it is being submitted, when it is DISABLED or has no Meta id, PW330 naming the scheduled, running and paused campaigns that send it unless p_force.';

-- Pause the scheduled and running campaigns that send these templates (each of its own
-- tenant), each with a notification naming the template, the event and the reason; the
-- messages not sent yet stay queued for a resume. Returns the campaigns paused.
CREATE OR REPLACE FUNCTION core.pause_template_campaigns(p_template_ids bigint[], p_events text[], p_reasons text[])
RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_paused integer;
    v_tenants bigint[];
BEGIN
    WITH ev AS (
        SELECT DISTINCT ON (e.template_id) e.template_id, e.event, e.reason
        FROM unnest(p_template_ids, p_events, p_reasons) e(template_id, event, reason)
        ORDER BY e.template_id
    ), hit AS (
        SELECT DISTINCT ON (c.campaign_id) c.campaign_id, t.name, t.language, t.template_id, ev.event, ev.reason
        FROM ev
        JOIN core.templates t ON t.template_id = ev.template_id
        JOIN core.campaign_templates ct ON ct.template_id = t.template_id
        JOIN core.campaigns c ON c.campaign_id = ct.campaign_id AND c.tenant_id = t.tenant_id
        WHERE c.status IN ('scheduled', 'running')
        ORDER BY c.campaign_id, t.template_id
    ), paused AS (
        UPDATE core.campaigns c SET status = 'paused',
            pause_reason = format('template %s (%s) is %s: %s', h.name, h.language, h.event, h.reason)
        FROM hit h
        WHERE c.campaign_id = h.campaign_id AND c.status IN ('scheduled', 'running')
        RETURNING c.campaign_id, c.tenant_id, c.name AS campaign, h.template_id, h.name, h.language, h.event, h.reason
    ), noted AS (
        INSERT INTO core.notifications (tenant_id, kind, severity, message, details)
        SELECT p.tenant_id, 'campaign_paused', 'critical',
               format('Campaign "%s" paused: template %s (%s) is %s: %s. Its unsent messages stay queued; resume it once the template is APPROVED again (or cancel it).',
                      p.campaign, p.name, p.language, p.event, p.reason),
               jsonb_build_object('campaign_id', p.campaign_id, 'template_id', p.template_id, 'event', p.event,
                                  'reason', p.reason)
        FROM paused p
        RETURNING tenant_id
    )
    SELECT count(*), array_agg(DISTINCT tenant_id) INTO v_paused, v_tenants FROM noted;
    PERFORM pg_notify('pgwa_notification', t::text) FROM unnest(v_tenants) t;
    RETURN v_paused;
END
$$;

CREATE OR REPLACE FUNCTION api.template_deleted(p_tenant_id bigint, p_template_id bigint, p_now timestamptz DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_template core.templates := core.template_for(p_tenant_id, p_template_id);
BEGIN
    IF v_template.status <> 'DELETED' THEN
        UPDATE core.templates SET status = 'DELETED', deleted_at = coalesce(p_now, now()), updated_at = now()
        WHERE template_id = v_template.template_id
        RETURNING * INTO v_template;
        PERFORM core.pause_template_campaigns(ARRAY[v_template.template_id], ARRAY['DELETED'],
                                              ARRAY['deleted through pgwa']);
    END IF;
    RETURN core.template_json(v_template);
END
$$;
COMMENT ON FUNCTION api.template_deleted(bigint, bigint, timestamptz) IS
    'Step two of deleting a template, once Meta confirmed it: marks it DELETED and pauses the scheduled and running campaigns that send it (api.prepare_template_deletion refused them unless forced), with a notification each; their unsent messages stay queued. Returns the template. Raises PW203 when the tenant has no such template.';

-------------------------------------------------------------------------------
-- Warning the campaigns that send a template
-------------------------------------------------------------------------------

-- One notification per campaign (of the template's tenant, in one of p_statuses) that
-- sends one of these templates, the message built from the campaign's and the template's
-- names and the event's words (p_texts, with its severity, per template); the event's key
-- (p_keys) keeps a redelivered webhook from warning twice. Returns the notifications raised.
CREATE OR REPLACE FUNCTION core.warn_template_campaigns(p_template_ids bigint[], p_kind text, p_statuses text[],
                                                        p_texts text[], p_severities text[], p_keys text[])
RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_noted integer;
    v_tenants bigint[];
BEGIN
    WITH noted AS (
        INSERT INTO core.notifications (tenant_id, kind, severity, message, details, dedupe_key)
        SELECT DISTINCT ON (c.campaign_id, e.key) c.tenant_id, p_kind, e.severity,
               format('Campaign "%s" (%s): template %s (%s) %s', c.name, c.status, t.name, t.language, e.text),
               jsonb_build_object('campaign_id', c.campaign_id, 'template_id', t.template_id),
               md5(format('%s|%s|%s', p_kind, c.campaign_id, e.key))
        FROM unnest(p_template_ids, p_texts, p_severities, p_keys) e(template_id, text, severity, key)
        JOIN core.templates t ON t.template_id = e.template_id
        JOIN core.campaign_templates ct ON ct.template_id = t.template_id
        JOIN core.campaigns c ON c.campaign_id = ct.campaign_id AND c.tenant_id = t.tenant_id
        WHERE c.status = ANY (p_statuses)
        ORDER BY c.campaign_id, e.key
        ON CONFLICT DO NOTHING
        RETURNING tenant_id
    )
    SELECT count(*), array_agg(DISTINCT tenant_id) INTO v_noted, v_tenants FROM noted;
    PERFORM pg_notify('pgwa_notification', t::text) FROM unnest(v_tenants) t;
    RETURN v_noted;
END
$$;

-------------------------------------------------------------------------------
-- Quality events (applied with the other account-level fields: webhooks.sql)
-------------------------------------------------------------------------------

-- Meta's quality ratings, best first (UNKNOWN: not rated yet).
CREATE OR REPLACE FUNCTION core.quality_rank(p_score text) RETURNS integer
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT CASE upper(p_score) WHEN 'GREEN' THEN 3 WHEN 'YELLOW' THEN 2 WHEN 'RED' THEN 1 END
$$;

-- message_template_quality_update: a template takes the score of its newest event (an
-- older one changes nothing). A drop to YELLOW or RED warns the tenant and every
-- scheduled or running campaign that sends the template: Meta pauses a template whose
-- quality stays low. Returns the templates changed.
CREATE OR REPLACE FUNCTION core.apply_template_quality(p_changes core.webhook_change[]) RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_changed integer;
    v_ids bigint[];
    v_texts text[];
    v_severities text[];
    v_keys text[];
    v_notified bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(p_changes) ch WHERE ch.field = 'message_template_quality_update') THEN
        RETURN 0;
    END IF;
    WITH events AS (
        SELECT DISTINCT ON (t.template_id) t.template_id, t.quality_score AS old_score, ch.entry_at,
               upper(ch.value->>'new_quality_score') AS score,
               upper(coalesce(ch.value->>'previous_quality_score', t.quality_score)) AS previous
        FROM unnest(p_changes) ch
        CROSS JOIN LATERAL core.change_templates(ch.waba_id, ch.signer, ch.value) t
        WHERE ch.field = 'message_template_quality_update' AND ch.value->>'new_quality_score' IS NOT NULL
        ORDER BY t.template_id, ch.entry_at DESC NULLS LAST, ch.ord DESC
    ), changed AS (
        UPDATE core.templates t SET quality_score = e.score,
            quality_event_at = coalesce(e.entry_at, t.quality_event_at), updated_at = now()
        FROM events e
        WHERE t.template_id = e.template_id AND t.quality_score IS DISTINCT FROM e.score
          AND (e.entry_at IS NULL OR t.quality_event_at IS NULL OR e.entry_at >= t.quality_event_at)
        RETURNING t.tenant_id, t.template_id, t.name, t.language, e.score, e.previous, e.entry_at
    ), dropped AS (
        SELECT c.*, format('quality dropped from %s to %s%s', coalesce(c.previous, 'UNKNOWN'), c.score,
                           CASE c.score WHEN 'RED' THEN ': Meta pauses the template if it stays low'
                                        ELSE ': watch the replies and blocks' END) AS text,
               CASE c.score WHEN 'RED' THEN 'critical' ELSE 'warning' END AS severity,
               format('%s|%s|%s', c.template_id, c.score, c.entry_at) AS key
        FROM changed c
        WHERE c.score IN ('YELLOW', 'RED')
          AND coalesce(core.quality_rank(c.previous), 4) > core.quality_rank(c.score)
    ), notified AS (
        INSERT INTO core.notifications (tenant_id, kind, severity, message, details, dedupe_key)
        SELECT d.tenant_id, 'template_quality', d.severity, format('Template %s (%s): %s', d.name, d.language, d.text),
               jsonb_build_object('template_id', d.template_id, 'quality_score', d.score, 'previous', d.previous),
               md5('template_quality|' || d.key)
        FROM dropped d
        ON CONFLICT DO NOTHING
        RETURNING tenant_id
    )
    SELECT (SELECT count(*) FROM changed), (SELECT array_agg(tenant_id) FROM notified),
           array_agg(d.template_id), array_agg(d.text), array_agg(d.severity), array_agg(d.key)
    INTO v_changed, v_notified, v_ids, v_texts, v_severities, v_keys
    FROM dropped d;
    PERFORM core.wake_notified(v_notified);
    IF v_ids IS NOT NULL THEN
        PERFORM core.warn_template_campaigns(v_ids, 'campaign_template_quality', '{scheduled,running}', v_texts,
                                             v_severities, v_keys);
    END IF;
    RETURN v_changed;
END
$$;

REVOKE ALL ON FUNCTION api.template_definition_problems(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.check_template_definition(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.prepare_template(bigint, jsonb, text, bigint, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.template_submitted(bigint, bigint, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.template_refused(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.template_detail(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.prepare_template_deletion(bigint, bigint, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.template_deleted(bigint, bigint, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.template_definition_problems(jsonb) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.check_template_definition(jsonb) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.prepare_template(bigint, jsonb, text, bigint, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.template_submitted(bigint, bigint, jsonb) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.template_refused(bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.template_detail(bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.prepare_template_deletion(bigint, bigint, boolean) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.template_deleted(bigint, bigint, timestamptz) TO pgwa_api;
