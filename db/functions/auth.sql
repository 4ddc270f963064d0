-- API keys: one tenant each, stored as the sha256 of the key, shown once at creation.
--
--   client ── Authorization: Bearer pgwa_… ──> api/auth.py: sha256(key)
--        ──> SELECT … FROM api.<route function>(api.authenticate(<hash>), …)
--
-- The raw key never reaches the database after creation; a route resolves its tenant
-- inside the one statement it runs.

CREATE OR REPLACE FUNCTION api.create_api_key(p_tenant_id bigint, p_name text)
RETURNS api.api_key_created
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_key text;
    v_result api.api_key_created;
BEGIN
    IF coalesce(btrim(p_name), '') = '' THEN
        RAISE EXCEPTION 'API key name is empty' USING ERRCODE = 'PW100',
            HINT = 'Name the key after who uses it, e.g. "dashboard".';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM core.tenants WHERE tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'tenant % does not exist', p_tenant_id USING ERRCODE = 'PW205',
            HINT = 'Create the tenant first.';
    END IF;
    -- 244 random bits from the server's strong random source (gen_random_uuid).
    v_key := 'pgwa_' || replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
    INSERT INTO core.api_keys (tenant_id, name, key_hash, key_prefix)
    VALUES (p_tenant_id, btrim(p_name), sha256(convert_to(v_key, 'UTF8')), left(v_key, 13))
    RETURNING api_key_id, tenant_id, name, v_key, key_prefix, created_at INTO v_result;
    RETURN v_result;
END
$$;
COMMENT ON FUNCTION api.create_api_key(bigint, text) IS
    'Creates an API key for a tenant and returns it with its id and prefix; the key is shown this once, only its sha256 is kept. Raises PW100 for an empty name, PW205 for an unknown tenant.';

CREATE OR REPLACE FUNCTION api.authenticate(p_key_hash bytea) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
DECLARE
    v_tenant_id bigint;
BEGIN
    SELECT tenant_id INTO v_tenant_id FROM core.api_keys
    WHERE key_hash = p_key_hash AND revoked_at IS NULL;
    IF v_tenant_id IS NULL THEN
        RAISE EXCEPTION 'the API key is unknown or revoked' USING ERRCODE = 'PW401',
            HINT = 'Send Authorization: Bearer <key>, with a key from `pgwa key create`.';
    END IF;
    RETURN v_tenant_id;
END
$$;
COMMENT ON FUNCTION api.authenticate(bytea) IS
    'Returns the tenant of the API key whose sha256 is p_key_hash. Raises PW401 when no live key has that hash.';

CREATE OR REPLACE FUNCTION api.api_keys(p_tenant_id bigint) RETURNS SETOF api.api_key
LANGUAGE sql SECURITY DEFINER STABLE SET search_path = '' AS $$
    SELECT api_key_id, name, key_prefix, created_at, revoked_at
    FROM core.api_keys WHERE tenant_id = p_tenant_id
    ORDER BY api_key_id
$$;
COMMENT ON FUNCTION api.api_keys(bigint) IS
    'Lists the tenant''s API keys (id, name, prefix, created, revoked), never the keys themselves.';

CREATE OR REPLACE FUNCTION api.revoke_api_key(p_tenant_id bigint, p_api_key_id bigint) RETURNS api.api_key
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_key api.api_key;
BEGIN
    UPDATE core.api_keys SET revoked_at = coalesce(revoked_at, now())
    WHERE api_key_id = p_api_key_id AND tenant_id = p_tenant_id
    RETURNING api_key_id, name, key_prefix, created_at, revoked_at INTO v_key;
    IF v_key.api_key_id IS NULL THEN
        RAISE EXCEPTION 'API key % not found', p_api_key_id USING ERRCODE = 'PW207',
            HINT = 'List the tenant''s keys with api.api_keys().';
    END IF;
    RETURN v_key;
END
$$;
COMMENT ON FUNCTION api.revoke_api_key(bigint, bigint) IS
    'Revokes one of the tenant''s API keys at once (idempotent) and returns it. Raises PW207 when the tenant has no such key.';

REVOKE ALL ON FUNCTION api.create_api_key(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.authenticate(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.api_keys(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.revoke_api_key(bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.create_api_key(bigint, text) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.authenticate(bytea) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.api_keys(bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.revoke_api_key(bigint, bigint) TO pgwa_api;
