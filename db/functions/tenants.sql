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

-- Register (or update) a WhatsApp number of a tenant and create its reply queue.
CREATE OR REPLACE FUNCTION api.register_number(
    p_tenant_id            bigint,
    p_phone_number_id      text,
    p_waba_id              text,
    p_access_token         text,
    p_app_secret           text DEFAULT NULL,
    p_throughput_mps       integer DEFAULT 80,
    p_display_phone_number text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_id bigint;
    v_owner bigint;
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
    SELECT number_id, tenant_id INTO v_id, v_owner FROM core.wa_numbers WHERE phone_number_id = p_phone_number_id;
    IF v_owner IS NOT NULL AND v_owner <> p_tenant_id THEN
        RAISE EXCEPTION 'phone_number_id % is registered to another tenant', p_phone_number_id
            USING ERRCODE = 'PW302', HINT = 'A number belongs to one tenant.';
    END IF;
    IF EXISTS (SELECT 1 FROM core.wa_numbers WHERE waba_id = p_waba_id AND tenant_id <> p_tenant_id) THEN
        RAISE EXCEPTION 'waba_id % belongs to another tenant', p_waba_id
            USING ERRCODE = 'PW302', HINT = 'A WhatsApp Business Account belongs to one tenant.';
    END IF;
    INSERT INTO core.wa_numbers AS n (tenant_id, phone_number_id, waba_id, access_token, app_secret,
                                      throughput_mps, rate_mps, display_phone_number)
    VALUES (p_tenant_id, p_phone_number_id, p_waba_id, p_access_token, p_app_secret,
            p_throughput_mps, p_throughput_mps, p_display_phone_number)
    ON CONFLICT ON CONSTRAINT wa_numbers_phone_number_id_unique DO UPDATE SET
        waba_id = excluded.waba_id,
        access_token = excluded.access_token,
        app_secret = coalesce(excluded.app_secret, n.app_secret),
        throughput_mps = excluded.throughput_mps,
        rate_mps = least(n.rate_mps, excluded.throughput_mps),
        display_phone_number = coalesce(excluded.display_phone_number, n.display_phone_number),
        paused_reason = NULL
    RETURNING number_id INTO v_id;
    IF NOT EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = 'r_' || v_id) THEN
        PERFORM pgmq.create('r_' || v_id);
    END IF;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION api.register_number(bigint, text, text, text, text, integer, text) IS
    'Registers or updates a WhatsApp number (Meta phone_number_id, waba_id, token, app secret, throughput) for a tenant, creates its reply queue and returns its number_id. Raises PW100 on a malformed field, PW205 for an unknown tenant, PW302 when another tenant owns the number or its WABA.';

-- The count of distinct body placeholders ({{1}}, {{2}} or named {{first_name}}).
CREATE OR REPLACE FUNCTION core.body_param_count(p_components jsonb) RETURNS smallint
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT count(DISTINCT m[1])::smallint
    FROM jsonb_array_elements(coalesce(p_components, '[]')) c,
         regexp_matches(coalesce(c->>'text', ''), '\{\{\s*([A-Za-z0-9_]+)\s*\}\}', 'g') m
    WHERE upper(c->>'type') = 'BODY'
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
                                     meta_template_id, body_param_count)
    VALUES (p_tenant_id, p_waba_id, p_name, p_language, coalesce(p_components, '[]'), upper(p_status),
            p_category, p_meta_template_id, core.body_param_count(p_components))
    ON CONFLICT ON CONSTRAINT templates_waba_name_language_unique DO UPDATE SET
        components = excluded.components, status = excluded.status,
        category = coalesce(excluded.category, t.category),
        meta_template_id = coalesce(excluded.meta_template_id, t.meta_template_id),
        body_param_count = excluded.body_param_count, updated_at = now()
    RETURNING template_id INTO v_id;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION api.upsert_template(bigint, text, text, text, jsonb, text, text, text) IS
    'Creates or updates a message template of a WABA (as listed by Meta) and returns its template_id; counts its body parameters. Raises PW100 on a malformed field, PW202 when the tenant has no number on that WABA.';

REVOKE ALL ON FUNCTION api.create_tenant(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.register_number(bigint, text, text, text, text, integer, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.upsert_template(bigint, text, text, text, jsonb, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.create_tenant(text) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.register_number(bigint, text, text, text, text, integer, text) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.upsert_template(bigint, text, text, text, jsonb, text, text, text) TO pgwa_api, pgwa_worker;
