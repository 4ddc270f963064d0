-- API keys carry a scope, an optional expiry and when they were last used (issue 11).
-- Scopes nest: read < send < admin (a key holds its scope and every one below it);
-- api.authenticate checks the scope a route asks for. Keys made before scopes existed
-- keep the full access they had: admin.
ALTER TABLE core.api_keys
    ADD COLUMN scope text NOT NULL DEFAULT 'admin'
        CONSTRAINT api_keys_scope_valid CHECK (scope IN ('read', 'send', 'admin')),
    ADD COLUMN expires_at timestamptz,
    -- Moved at most once a minute, so a busy key's reads are not each a write of it.
    ADD COLUMN last_used_at timestamptz;

ALTER TYPE api.api_key_created
    ADD ATTRIBUTE scope text,
    ADD ATTRIBUTE expires_at timestamptz;
ALTER TYPE api.api_key
    ADD ATTRIBUTE scope text,
    ADD ATTRIBUTE expires_at timestamptz,
    ADD ATTRIBUTE last_used_at timestamptz;

-- New signatures (db/functions/auth.sql): a scope for authenticate, scope, expiry and
-- rate limit for create_api_key. api functions are never overloaded. (IF EXISTS: on a
-- fresh database the function files run after every migration.)
DROP FUNCTION IF EXISTS api.authenticate(bytea);
DROP FUNCTION IF EXISTS api.create_api_key(bigint, text);
