-- Tenants, WhatsApp numbers and templates: the setup a campaign needs.

CREATE OR REPLACE FUNCTION api.create_tenant(p_name text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_id bigint;
BEGIN
    IF coalesce(btrim(p_name), '') = '' THEN
        RAISE EXCEPTION 'tenant name is empty' USING ERRCODE = 'PW100', HINT = 'Give the tenant a name.';
    END IF;
    INSERT INTO core.tenants (name) VALUES (btrim(p_name))
    ON CONFLICT ON CONSTRAINT tenants_name_unique DO NOTHING
    RETURNING tenant_id INTO v_id;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'tenant "%" already exists', btrim(p_name)
            USING ERRCODE = 'PW302', HINT = 'Tenant names are unique; pick another.';
    END IF;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION api.create_tenant(text) IS
    'Creates a tenant and returns its id. Raises PW100 for an empty name, PW302 when the name is taken.';

-- True when the session is an operator's: the functions' owner (a member of it) or a
-- superuser, as psql and the CLI connect. The roles clients take (pgwa_api, pgwa_worker)
-- are not. session_user, not current_user: inside a SECURITY DEFINER function
-- current_user is always the owner.
CREATE OR REPLACE FUNCTION core.caller_is_operator() RETURNS boolean
LANGUAGE sql STABLE SET search_path = '' AS $$
    SELECT pg_catalog.pg_has_role(session_user, current_user, 'MEMBER')
$$;

-- The fields of a registration, checked before anyone asks Meta about them.
CREATE OR REPLACE FUNCTION core.check_number_fields(
    p_tenant_id bigint, p_phone_number_id text, p_waba_id text, p_access_token text, p_throughput_mps integer
) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM core.tenants WHERE tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'tenant % does not exist', p_tenant_id USING ERRCODE = 'PW205', HINT = 'Create the tenant first.';
    END IF;
    IF p_phone_number_id IS NULL OR p_phone_number_id !~ '^[0-9]{1,32}$' THEN
        RAISE EXCEPTION 'phone_number_id "%" is not Meta''s numeric id', p_phone_number_id
            USING ERRCODE = 'PW100', HINT = 'Use the Phone number ID from WhatsApp Manager, not the phone number.';
    END IF;
    IF p_waba_id IS NULL OR p_waba_id !~ '^[0-9]{1,32}$' THEN
        RAISE EXCEPTION 'waba_id "%" is not Meta''s numeric id', p_waba_id
            USING ERRCODE = 'PW100', HINT = 'Use the WhatsApp Business Account ID.';
    END IF;
    IF coalesce(p_access_token, '') = '' THEN
        RAISE EXCEPTION 'access_token is empty' USING ERRCODE = 'PW100', HINT = 'Give a system user access token.';
    END IF;
    IF p_throughput_mps IS NULL OR p_throughput_mps NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'throughput_mps % is out of range', p_throughput_mps
            USING ERRCODE = 'PW100', HINT = 'Meta allows 80 messages per second by default and up to 1,000.';
    END IF;
END
$$;

-- Step one of a tenant's registration: the server checks the fields here, then asks
-- the Graph API with the version this returns, then calls api.register_number.
CREATE OR REPLACE FUNCTION api.prepare_number_registration(
    p_tenant_id        bigint,
    p_phone_number_id  text,
    p_waba_id          text,
    p_access_token     text,
    p_throughput_mps   integer DEFAULT 80
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
BEGIN
    PERFORM core.check_number_fields(p_tenant_id, p_phone_number_id, p_waba_id, p_access_token, p_throughput_mps);
    RETURN (SELECT graph_api_version FROM core.settings);
END
$$;
COMMENT ON FUNCTION api.prepare_number_registration(bigint, text, text, text, integer) IS
    'Checks a number registration''s fields before the server asks the Graph API about them, and returns the Graph API version to ask with. Changes nothing. Raises PW100 on a malformed field, PW205 for an unknown tenant.';

-- Register (or update) a WhatsApp number of a tenant and create its reply queue.
CREATE OR REPLACE FUNCTION api.register_number(
    p_tenant_id            bigint,
    p_phone_number_id      text,
    p_waba_id              text,
    p_access_token         text,
    p_app_secret           text DEFAULT NULL,
    p_throughput_mps       integer DEFAULT 80,
    p_display_phone_number text DEFAULT NULL,
    p_verified             jsonb DEFAULT NULL,
    p_now                  timestamptz DEFAULT now()
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_id bigint;
    v_owner bigint;
    v_old_secret text;
    v_new_secret text;
    v_action text;
    v_display text := p_display_phone_number;
    v_portfolio bigint;
BEGIN
    PERFORM core.check_number_fields(p_tenant_id, p_phone_number_id, p_waba_id, p_access_token, p_throughput_mps);
    IF p_verified IS NULL AND NOT core.caller_is_operator() THEN
        RAISE EXCEPTION 'the registration of % carries no answer from the Graph API', p_phone_number_id
            USING ERRCODE = 'PW417',
                  HINT = 'Register through POST /v1/numbers or pgwa number register, which ask Meta that the token reads the number and that the WABA holds it.';
    END IF;
    IF p_verified IS NOT NULL THEN
        IF jsonb_typeof(p_verified) <> 'object' OR p_verified->>'id' IS DISTINCT FROM p_phone_number_id
           OR p_verified->>'waba_id' IS DISTINCT FROM p_waba_id
           OR coalesce(p_verified->>'display_phone_number', '') = '' THEN
            RAISE EXCEPTION 'p_verified is not the Graph API''s answer for phone_number_id % in waba_id %',
                p_phone_number_id, p_waba_id
                USING ERRCODE = 'PW100',
                      HINT = 'Pass the phone number node Meta returned (id, display_phone_number, verified_name) with the waba_id whose phone_numbers list holds it.';
        END IF;
        v_display := p_verified->>'display_phone_number';
    END IF;
    SELECT number_id, tenant_id, app_secret INTO v_id, v_owner, v_old_secret
    FROM core.wa_numbers WHERE phone_number_id = p_phone_number_id FOR UPDATE;
    IF v_owner IS NOT NULL AND v_owner <> p_tenant_id THEN
        RAISE EXCEPTION 'phone_number_id % is registered to another tenant', p_phone_number_id
            USING ERRCODE = 'PW302',
                  HINT = 'A number belongs to one tenant; an operator moves it with api.transfer_number (pgwa number transfer).';
    END IF;
    IF EXISTS (SELECT 1 FROM core.wa_numbers WHERE waba_id = p_waba_id AND tenant_id <> p_tenant_id) THEN
        RAISE EXCEPTION 'waba_id % belongs to another tenant', p_waba_id
            USING ERRCODE = 'PW302', HINT = 'A WhatsApp Business Account belongs to one tenant.';
    END IF;
    -- NULL keeps the secret a number has; '' clears it.
    v_new_secret := CASE WHEN p_app_secret IS NULL THEN v_old_secret ELSE nullif(p_app_secret, '') END;
    INSERT INTO core.wa_numbers AS n (tenant_id, phone_number_id, waba_id, access_token, app_secret,
                                      throughput_mps, rate_mps, display_phone_number,
                                      verified_name, verified_at, quality_rating)
    VALUES (p_tenant_id, p_phone_number_id, p_waba_id, p_access_token, v_new_secret,
            p_throughput_mps, p_throughput_mps, v_display,
            p_verified->>'verified_name', CASE WHEN p_verified IS NOT NULL THEN p_now END,
            p_verified->>'quality_rating')
    ON CONFLICT ON CONSTRAINT wa_numbers_phone_number_id_unique DO UPDATE SET
        waba_id = excluded.waba_id,
        access_token = excluded.access_token,
        app_secret = excluded.app_secret,
        throughput_mps = excluded.throughput_mps,
        rate_mps = least(n.rate_mps, excluded.throughput_mps),
        display_phone_number = coalesce(excluded.display_phone_number, n.display_phone_number),
        -- An operator's unverified update no longer vouches for the token it sets.
        verified_name = CASE WHEN p_verified IS NOT NULL THEN excluded.verified_name ELSE n.verified_name END,
        verified_at = excluded.verified_at,
        quality_rating = coalesce(excluded.quality_rating, n.quality_rating),
        paused_reason = NULL
    RETURNING number_id INTO v_id;
    v_portfolio := core.place_in_portfolio(v_id);
    -- The portfolio's messaging-limit tier, as Meta reported it with the number.
    IF core.meta_tier(p_verified->>'messaging_limit') = p_verified->>'messaging_limit' THEN
        PERFORM core.set_tier(v_portfolio, p_verified->>'messaging_limit');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = core.reply_queue(v_id)) THEN
        PERFORM pgmq.create(core.reply_queue(v_id));
    END IF;
    IF v_new_secret IS DISTINCT FROM v_old_secret THEN
        -- The audit holds neither the secret nor anything derived from it.
        v_action := CASE WHEN v_old_secret IS NULL THEN 'set' WHEN v_new_secret IS NULL THEN 'cleared' ELSE 'changed' END;
        PERFORM core.notify(p_tenant_id, 'app_secret_changed', 'warning',
            format('The app secret of number %s was %s.', p_phone_number_id, v_action),
            jsonb_build_object('number_id', v_id, 'phone_number_id', p_phone_number_id, 'action', v_action,
                               'by', CASE WHEN core.caller_is_operator() THEN 'operator' ELSE 'tenant' END));
    END IF;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION api.register_number(bigint, text, text, text, text, integer, text, jsonb, timestamptz) IS
    'Registers or updates a WhatsApp number (Meta phone_number_id, waba_id, token, app secret, throughput) for a tenant, creates its reply queue and returns its number_id. A tenant''s call must pass p_verified: the Graph API''s phone number node plus the waba_id whose phone_numbers list holds it (the server asks Meta first); Meta''s display number and verified name are stored. Only an operator (owner, superuser) registers without it. p_app_secret NULL keeps the current secret and an empty string clears it; setting, changing or clearing it raises an app_secret_changed notification. Raises PW100 on a malformed field, PW205 for an unknown tenant, PW302 when another tenant owns the number or its WABA, PW417 when a tenant''s call carries no verification.';

-- An operator's action: granted to no client role.
CREATE OR REPLACE FUNCTION api.transfer_number(
    p_phone_number_id  text,
    p_to_tenant_id     bigint,
    p_waba_id          text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_number core.wa_numbers;
    v_waba text;
    v_open integer;
    v_details jsonb;
BEGIN
    SELECT * INTO v_number FROM core.wa_numbers WHERE phone_number_id = p_phone_number_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'phone_number_id % is not registered', p_phone_number_id
            USING ERRCODE = 'PW202', HINT = 'Give Meta''s phone_number_id of a registered number.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM core.tenants WHERE tenant_id = p_to_tenant_id) THEN
        RAISE EXCEPTION 'tenant % does not exist', p_to_tenant_id USING ERRCODE = 'PW205', HINT = 'Create the tenant first.';
    END IF;
    IF v_number.tenant_id = p_to_tenant_id THEN
        RAISE EXCEPTION 'phone_number_id % already belongs to tenant %', p_phone_number_id, p_to_tenant_id
            USING ERRCODE = 'PW301', HINT = 'Nothing to move.';
    END IF;
    v_waba := coalesce(p_waba_id, v_number.waba_id);
    IF v_waba !~ '^[0-9]{1,32}$' THEN
        RAISE EXCEPTION 'waba_id "%" is not Meta''s numeric id', v_waba
            USING ERRCODE = 'PW100', HINT = 'Give the WhatsApp Business Account the number is in now.';
    END IF;
    IF EXISTS (SELECT 1 FROM core.wa_numbers
               WHERE waba_id = v_waba AND tenant_id <> p_to_tenant_id AND number_id <> v_number.number_id) THEN
        RAISE EXCEPTION 'waba_id % holds numbers of another tenant', v_waba
            USING ERRCODE = 'PW302',
                  HINT = 'A WABA belongs to one tenant: give the WABA the number is in now (p_waba_id), or move its other numbers too.';
    END IF;
    SELECT count(*) INTO v_open FROM core.campaigns
    WHERE number_id = v_number.number_id AND status NOT IN ('completed', 'cancelled');
    IF v_open > 0 THEN
        RAISE EXCEPTION 'number % has % campaign(s) not finished', p_phone_number_id, v_open
            USING ERRCODE = 'PW301',
                  HINT = 'Cancel the old tenant''s draft, scheduled, running and paused campaigns on this number first.';
    END IF;
    -- Nothing of the old tenant goes with the number: its token and secret, its bots and
    -- LLM set-up, its inbox listing (the messages stay with its contacts) and queued
    -- replies. The number waits, paused, until the new tenant registers it with its own
    -- token, which Meta must confirm.
    UPDATE core.wa_numbers SET
        tenant_id = p_to_tenant_id, waba_id = v_waba, access_token = '', app_secret = NULL,
        verified_name = NULL, verified_at = NULL, llm_enabled = false, llm_system_prompt = NULL,
        paused_reason = 'transferred: the new tenant must register the number with its own token'
    WHERE number_id = v_number.number_id;
    PERFORM core.place_in_portfolio(v_number.number_id);
    DELETE FROM core.bot_rules WHERE number_id = v_number.number_id;
    DELETE FROM core.conversations WHERE number_id = v_number.number_id;
    -- The number's messages not yet sent (replies, bot and API sends) are the ones its reply
    -- queue holds, waiting or claimed: found through it, not by reading every message the
    -- number ever sent (outbound_messages has no index by number; one whose predicate named
    -- the state would make every state change a non-HOT update).
    IF EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = core.reply_queue(v_number.number_id)) THEN
        EXECUTE format('UPDATE core.outbound_messages o SET state = ''cancelled''
                        FROM pgmq.%I q
                        WHERE o.outbound_id = (q.message->>''o'')::bigint AND o.number_id = $1
                          AND o.campaign_id IS NULL AND o.state IN (''queued'', ''in_flight'')',
                       pgmq.format_table_name(core.reply_queue(v_number.number_id), 'q'))
        USING v_number.number_id;
        PERFORM pgmq.purge_queue(core.reply_queue(v_number.number_id));
    END IF;
    v_details := jsonb_build_object('number_id', v_number.number_id, 'phone_number_id', p_phone_number_id,
                                    'from_tenant_id', v_number.tenant_id, 'to_tenant_id', p_to_tenant_id);
    PERFORM core.notify(v_number.tenant_id, 'number_transferred', 'warning',
        format('An operator moved number %s to another tenant.', p_phone_number_id), v_details);
    PERFORM core.notify(p_to_tenant_id, 'number_transferred', 'warning',
        format('An operator moved number %s to this tenant; register it with your own access token to use it.',
               p_phone_number_id), v_details);
    RETURN v_number.number_id;
END
$$;
COMMENT ON FUNCTION api.transfer_number(text, bigint, text) IS
    'Operator only (granted to no client role): moves a registered number to another tenant, e.g. after Meta moved it to that tenant''s WABA (p_waba_id, default unchanged). The old tenant''s token, app secret, bot rules, LLM set-up, inbox listing and queued replies do not follow; the number stays paused until the new tenant registers it with its own token. Notifies both tenants (number_transferred) and returns the number_id. Raises PW202 for an unregistered number, PW205 for an unknown tenant, PW301 when it already belongs there or has unfinished campaigns, PW302 when the WABA holds another tenant''s numbers.';

-- The count of distinct body placeholders ({{1}}, {{2}} or named {{first_name}}).
CREATE OR REPLACE FUNCTION core.body_param_count(p_components jsonb) RETURNS smallint
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT count(DISTINCT m[1])::smallint
    FROM jsonb_array_elements(coalesce(p_components, '[]')) c,
         regexp_matches(coalesce(c->>'text', ''), '\{\{\s*([A-Za-z0-9_]+)\s*\}\}', 'g') m
    WHERE upper(c->>'type') = 'BODY'
$$;

-- POSITIONAL ({{1}}) or NAMED ({{first_name}}) from a template's placeholders, for a
-- template listed without Meta's parameter_format.
CREATE OR REPLACE FUNCTION core.parameter_format(p_components jsonb) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT CASE WHEN EXISTS (
        SELECT 1 FROM jsonb_array_elements(coalesce(p_components, '[]')) c,
                      regexp_matches(coalesce(c->>'text', ''), '\{\{\s*([A-Za-z0-9_]+)\s*\}\}', 'g') m
        WHERE upper(c->>'type') IN ('HEADER', 'BODY') AND m[1] !~ '^[0-9]+$') THEN 'NAMED' ELSE 'POSITIONAL' END
$$;

-- The parameters a template takes when sent, in the order of Meta's components array:
-- a TEXT header's placeholder or a media / location header, the body's placeholders
-- (positional by number, named in order of first appearance), then one a button that
-- takes one (a URL with a {{1}} suffix, a copy code, a quick-reply payload, an OTP code).
-- PHONE_NUMBER, static URL and FLOW buttons take none.
CREATE OR REPLACE FUNCTION core.template_slots(p_components jsonb, p_parameter_format text)
RETURNS SETOF api.template_parameter
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT h.* FROM (
        SELECT 'header'::text, 1,
               CASE WHEN p_parameter_format = 'NAMED' AND f.fmt = 'TEXT'
                    THEN substring(c->>'text' FROM '\{\{\s*([A-Za-z0-9_]+)\s*\}\}') END,
               CASE f.fmt WHEN 'TEXT' THEN 'text' ELSE lower(f.fmt) END, true,
               CASE f.fmt WHEN 'TEXT' THEN coalesce(c#>>'{example,header_text,0}', c#>>'{example,header_text_named_params,0,example}')
                          ELSE c#>>'{example,header_handle,0}' END,
               'header'::text
        FROM jsonb_array_elements(coalesce(p_components, '[]')) WITH ORDINALITY x(c, n)
        CROSS JOIN LATERAL (SELECT upper(coalesce(c->>'format', 'TEXT')) AS fmt) f
        WHERE upper(c->>'type') = 'HEADER' AND (f.fmt <> 'TEXT' OR c->>'text' ~ '\{\{\s*[A-Za-z0-9_]+\s*\}\}')
        ORDER BY n LIMIT 1) h
    UNION ALL
    SELECT 'body', b.pos::integer, CASE WHEN p_parameter_format = 'NAMED' THEN b.p END, 'text', true,
           CASE WHEN p_parameter_format = 'NAMED'
                THEN (SELECT e->>'example' FROM jsonb_array_elements(CASE WHEN jsonb_typeof(bc.c#>'{example,body_text_named_params}') = 'array'
                                                                          THEN bc.c#>'{example,body_text_named_params}' ELSE '[]' END) e
                      WHERE e->>'param_name' = b.p LIMIT 1)
                ELSE bc.c#>>ARRAY['example', 'body_text', '0', (b.pos - 1)::text] END,
           CASE WHEN p_parameter_format = 'NAMED' THEN 'body.' || b.p ELSE format('body[%s]', b.pos - 1) END
    FROM (SELECT c FROM jsonb_array_elements(coalesce(p_components, '[]')) c
          WHERE upper(c->>'type') = 'BODY' LIMIT 1) bc
    CROSS JOIN LATERAL (
        SELECT d.p, row_number() OVER (ORDER BY CASE WHEN p_parameter_format <> 'NAMED' AND d.p ~ '^[0-9]{1,9}$'
                                                     THEN d.p::integer END, d.first) AS pos
        FROM (SELECT r.m[1] AS p, min(r.k) AS first
              FROM regexp_matches(coalesce(bc.c->>'text', ''), '\{\{\s*([A-Za-z0-9_]+)\s*\}\}', 'g') WITH ORDINALITY r(m, k)
              GROUP BY r.m[1]) d) b
    UNION ALL
    SELECT 'button', (k.i - 1)::integer, NULL, k.kind, k.kind IN ('url_suffix', 'coupon_code'),
           CASE WHEN jsonb_typeof(k.btn->'example') = 'array' THEN k.btn#>>'{example,0}' ELSE k.btn->>'example' END,
           'buttons.' || (k.i - 1)
    FROM (SELECT btn, i, CASE upper(btn->>'type')
                             WHEN 'URL' THEN CASE WHEN btn->>'url' ~ '\{\{' THEN 'url_suffix' END
                             WHEN 'COPY_CODE' THEN 'coupon_code'
                             WHEN 'QUICK_REPLY' THEN 'payload'
                             WHEN 'OTP' THEN 'otp'
                         END AS kind
          FROM (SELECT c FROM jsonb_array_elements(coalesce(p_components, '[]')) c
                WHERE upper(c->>'type') = 'BUTTONS' LIMIT 1) bc,
               jsonb_array_elements(CASE WHEN jsonb_typeof(bc.c->'buttons') = 'array' THEN bc.c->'buttons' ELSE '[]' END)
                   WITH ORDINALITY bb(btn, i)) k
    WHERE k.kind IS NOT NULL
$$;

CREATE OR REPLACE FUNCTION api.upsert_template(
    p_tenant_id        bigint,
    p_waba_id          text,
    p_name             text,
    p_language         text,
    p_components       jsonb DEFAULT '[]',
    p_status           text DEFAULT 'APPROVED',
    p_category         text DEFAULT NULL,
    p_meta_template_id text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_id bigint;
BEGIN
    IF coalesce(p_name, '') = '' OR coalesce(p_language, '') = '' THEN
        RAISE EXCEPTION 'template name and language are required' USING ERRCODE = 'PW100',
            HINT = 'Give the template''s name and language code (e.g. en_US) as Meta lists them.';
    END IF;
    IF jsonb_typeof(coalesce(p_components, '[]')) <> 'array' THEN
        RAISE EXCEPTION 'template components must be a JSON array' USING ERRCODE = 'PW100',
            HINT = 'Pass Meta''s components array unchanged.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM core.wa_numbers WHERE tenant_id = p_tenant_id AND waba_id = p_waba_id) THEN
        RAISE EXCEPTION 'waba_id % has no number of tenant %', p_waba_id, p_tenant_id
            USING ERRCODE = 'PW202', HINT = 'Register a number of this WhatsApp Business Account first.';
    END IF;
    INSERT INTO core.templates AS t (tenant_id, waba_id, name, language, components, status, category,
                                     meta_template_id, body_param_count, parameter_format)
    VALUES (p_tenant_id, p_waba_id, p_name, p_language, coalesce(p_components, '[]'), upper(p_status),
            p_category, p_meta_template_id, core.body_param_count(p_components), core.parameter_format(p_components))
    ON CONFLICT ON CONSTRAINT templates_waba_name_language_unique DO UPDATE SET
        components = excluded.components, status = excluded.status,
        category = coalesce(excluded.category, t.category),
        meta_template_id = coalesce(excluded.meta_template_id, t.meta_template_id),
        body_param_count = excluded.body_param_count, parameter_format = excluded.parameter_format, updated_at = now()
    RETURNING template_id INTO v_id;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION api.upsert_template(bigint, text, text, text, jsonb, text, text, text) IS
    'Creates or updates a message template of a WABA (as listed by Meta) and returns its template_id; counts its body parameters and takes its parameter_format from its placeholders (NAMED when one is not a number). Raises PW100 on a malformed field, PW202 when the tenant has no number on that WABA.';

REVOKE ALL ON FUNCTION api.create_tenant(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.prepare_number_registration(bigint, text, text, text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.register_number(bigint, text, text, text, text, integer, text, jsonb, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.transfer_number(text, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.upsert_template(bigint, text, text, text, jsonb, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.create_tenant(text) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.prepare_number_registration(bigint, text, text, text, integer) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.register_number(bigint, text, text, text, text, integer, text, jsonb, timestamptz) TO pgwa_api;
-- api.transfer_number is granted to no role: only the owner (psql, the CLI) runs it.
GRANT EXECUTE ON FUNCTION api.upsert_template(bigint, text, text, text, jsonb, text, text, text) TO pgwa_api, pgwa_worker;
