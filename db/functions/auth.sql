-- API keys: one tenant each, stored as the sha256 of the key, shown once at creation.
--
--   client ── Authorization: Bearer pgwa_… ──> api/auth.py: sha256(key)
--        ──> SELECT … FROM api.<route function>(api.authenticate(<hash>, <scope>), …)
--
-- The raw key never reaches the database after creation; a route resolves its tenant
-- inside the one statement it runs. A key has a scope (read < send < admin, each
-- implying the ones below), may expire, and is rate limited by a GCRA on its row.

-- The rank of a scope (NULL for none): a key serves a route whose scope ranks no higher.
CREATE OR REPLACE FUNCTION core.scope_rank(p_scope text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT CASE p_scope WHEN 'read' THEN 1 WHEN 'send' THEN 2 WHEN 'admin' THEN 3 END
$$;

CREATE OR REPLACE FUNCTION api.create_api_key(p_tenant_id bigint, p_name text, p_scope text DEFAULT 'admin',
                                              p_expires_at timestamptz DEFAULT NULL,
                                              p_rate_limit_per_minute integer DEFAULT NULL,
                                              p_now timestamptz DEFAULT now())
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
    IF core.scope_rank(coalesce(p_scope, '')) IS NULL THEN
        RAISE EXCEPTION 'scope % is not one of read, send, admin', p_scope USING ERRCODE = 'PW100',
            HINT = 'read: GET routes only; send: also campaigns, contacts and the inbox; admin: also numbers, settings and keys.';
    END IF;
    IF p_expires_at <= p_now THEN
        RAISE EXCEPTION 'expires_at % is not in the future', p_expires_at USING ERRCODE = 'PW100',
            HINT = 'Give a time after now, or none for a key that does not expire.';
    END IF;
    IF NOT p_rate_limit_per_minute BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'rate_limit_per_minute % is out of range', p_rate_limit_per_minute USING ERRCODE = 'PW100',
            HINT = 'Give 1 to 1000000 requests a minute, or none for the platform''s default.';
    END IF;
    -- A tenant's own admin key must not lift its keys past the platform's limit.
    IF p_rate_limit_per_minute > (SELECT s.api_rate_limit_per_minute FROM core.settings s)
       AND NOT core.caller_is_operator() THEN
        RAISE EXCEPTION 'rate_limit_per_minute % is above the platform''s limit of %', p_rate_limit_per_minute,
            (SELECT s.api_rate_limit_per_minute FROM core.settings s) USING ERRCODE = 'PW410',
            HINT = 'Only an operator (pgwa key create --rate-limit) gives a key more than the platform''s limit.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM core.tenants WHERE tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'tenant % does not exist', p_tenant_id USING ERRCODE = 'PW205',
            HINT = 'Create the tenant first.';
    END IF;
    -- 244 random bits from the server's strong random source (gen_random_uuid).
    v_key := 'pgwa_' || replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
    INSERT INTO core.api_keys (tenant_id, name, key_hash, key_prefix, scope, expires_at, rate_limit_per_minute,
                               created_at)
    VALUES (p_tenant_id, btrim(p_name), sha256(convert_to(v_key, 'UTF8')), left(v_key, 13), p_scope, p_expires_at,
            p_rate_limit_per_minute, p_now)
    RETURNING api_key_id, tenant_id, name, v_key, key_prefix, created_at, scope, expires_at, rate_limit_per_minute
    INTO v_result;
    RETURN v_result;
END
$$;
COMMENT ON FUNCTION api.create_api_key(bigint, text, text, timestamptz, integer, timestamptz) IS
    'Creates an API key for a tenant with a scope (read, send or admin; default admin), an optional expiry and an optional rate limit (requests a minute; default the platform''s), and returns it with its id and prefix; the key is shown this once, only its sha256 is kept. Raises PW100 for an empty name, an unknown scope, a past expiry or a limit out of range, PW410 when a client (not an operator) asks for more than core.settings.api_rate_limit_per_minute, PW205 for an unknown tenant.';

-- One guarded UPDATE serves every request that passes: the key is live, unexpired, holds
-- the scope and has budget (GCRA: each request moves the key's theoretical arrival time
-- one period of 60 s / limit ahead; a request is refused when that would run more than a
-- minute ahead of now, so a fresh key may spend a whole minute's limit at once). It moves
-- last_used_at only when that is a minute old. Volatile for the write; only a refusal
-- reads the key again, to say why.
CREATE OR REPLACE FUNCTION api.authenticate(p_key_hash bytea, p_scope text DEFAULT 'admin',
                                            p_now timestamptz DEFAULT now()) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_tenant_id bigint;
    v_key record;
    v_wait_s integer;
BEGIN
    IF core.scope_rank(p_scope) IS NULL THEN
        RAISE EXCEPTION 'scope % is not one of read, send, admin', p_scope USING ERRCODE = 'PW100',
            HINT = 'The route passes read, send or admin.';
    END IF;
    UPDATE core.api_keys k
    SET rate_tat = greatest(k.rate_tat, p_now)
                   + make_interval(secs => 60.0 / coalesce(k.rate_limit_per_minute, s.api_rate_limit_per_minute)),
        last_used_at = CASE WHEN k.last_used_at > p_now - interval '1 minute' THEN k.last_used_at ELSE p_now END
    FROM core.settings s
    WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL
      AND (k.expires_at IS NULL OR k.expires_at > p_now)
      AND core.scope_rank(k.scope) >= core.scope_rank(p_scope)
      AND greatest(k.rate_tat, p_now)
          + make_interval(secs => 60.0 / coalesce(k.rate_limit_per_minute, s.api_rate_limit_per_minute))
          <= p_now + interval '1 minute'
    RETURNING k.tenant_id INTO v_tenant_id;
    IF v_tenant_id IS NOT NULL THEN
        -- A read route's only write is this advisory state (a crash may forget its last
        -- fraction of a second), so its commit does not wait for the WAL flush: measured,
        -- that wait was two thirds of the write's cost. Routes that change data keep
        -- synchronous commits.
        IF p_scope = 'read' THEN
            PERFORM set_config('synchronous_commit', 'off', true);
        END IF;
        RETURN v_tenant_id;
    END IF;

    SELECT k.scope, k.expires_at, coalesce(k.rate_limit_per_minute, s.api_rate_limit_per_minute) AS per_minute,
           greatest(k.rate_tat, p_now)
           + make_interval(secs => 60.0 / coalesce(k.rate_limit_per_minute, s.api_rate_limit_per_minute))
           - (p_now + interval '1 minute') AS wait
    INTO v_key
    FROM core.api_keys k, core.settings s
    WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the API key is unknown or revoked' USING ERRCODE = 'PW401',
            HINT = 'Send Authorization: Bearer <key>, with a key from `pgwa key create`.';
    END IF;
    IF v_key.expires_at <= p_now THEN
        RAISE EXCEPTION 'the API key expired at %', v_key.expires_at USING ERRCODE = 'PW401',
            HINT = 'Use another key; an admin key (POST /v1/keys) or an operator (`pgwa key create`) makes one.';
    END IF;
    IF core.scope_rank(v_key.scope) < core.scope_rank(p_scope) THEN
        RAISE EXCEPTION 'this request needs an API key with scope %; this key has scope %', p_scope, v_key.scope
            USING ERRCODE = 'PW410',
            HINT = format('Use a key with scope %s or above (read < send < admin); an admin key makes one with '
                          'POST /v1/keys {"name": "...", "scope": "%s"}.', p_scope, p_scope);
    END IF;
    v_wait_s := greatest(1, ceil(extract(epoch FROM v_key.wait)))::integer;
    RAISE EXCEPTION 'the API key made more than % requests in a minute', v_key.per_minute USING ERRCODE = 'PW429',
        DETAIL = json_build_object('retry_after_s', v_wait_s)::text,
        HINT = format('Retry after %s seconds; an operator can raise the key''s limit '
                      '(`pgwa key create --rate-limit`, or core.settings.api_rate_limit_per_minute).', v_wait_s);
END
$$;
COMMENT ON FUNCTION api.authenticate(bytea, text, timestamptz) IS
    'Returns the tenant of the API key whose sha256 is p_key_hash when the key is live, unexpired, holds p_scope (read < send < admin) and is within its request rate limit, and counts the request (moving last_used_at at most once a minute). Raises PW401 for an unknown, revoked or expired key, PW410 when the key lacks the scope, PW429 (DETAIL {"retry_after_s": n}) when it is over its limit, PW100 for an unknown scope.';

CREATE OR REPLACE FUNCTION api.api_keys(p_tenant_id bigint) RETURNS SETOF api.api_key
LANGUAGE sql SECURITY DEFINER STABLE SET search_path = '' AS $$
    SELECT api_key_id, name, key_prefix, created_at, revoked_at, scope, expires_at, last_used_at,
           rate_limit_per_minute
    FROM core.api_keys WHERE tenant_id = p_tenant_id
    ORDER BY api_key_id
$$;
COMMENT ON FUNCTION api.api_keys(bigint) IS
    'Lists the tenant''s API keys (id, name, prefix, created, revoked, scope, expiry, last used within a minute, own rate limit or null for the platform''s), never the keys themselves.';

CREATE OR REPLACE FUNCTION api.revoke_api_key(p_tenant_id bigint, p_api_key_id bigint) RETURNS api.api_key
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_key api.api_key;
BEGIN
    UPDATE core.api_keys SET revoked_at = coalesce(revoked_at, now())
    WHERE api_key_id = p_api_key_id AND tenant_id = p_tenant_id
    RETURNING api_key_id, name, key_prefix, created_at, revoked_at, scope, expires_at, last_used_at,
              rate_limit_per_minute INTO v_key;
    IF v_key.api_key_id IS NULL THEN
        RAISE EXCEPTION 'API key % not found', p_api_key_id USING ERRCODE = 'PW207',
            HINT = 'List the tenant''s keys with api.api_keys().';
    END IF;
    RETURN v_key;
END
$$;
COMMENT ON FUNCTION api.revoke_api_key(bigint, bigint) IS
    'Revokes one of the tenant''s API keys at once (idempotent) and returns it. Raises PW207 when the tenant has no such key.';

REVOKE ALL ON FUNCTION api.create_api_key(bigint, text, text, timestamptz, integer, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.authenticate(bytea, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.api_keys(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.revoke_api_key(bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.create_api_key(bigint, text, text, timestamptz, integer, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.authenticate(bytea, text, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.api_keys(bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.revoke_api_key(bigint, bigint) TO pgwa_api;
