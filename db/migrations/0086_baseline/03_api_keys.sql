-- API keys: how a client authenticates. A key has a scope, an optional expiry and a
-- request rate limit; api.authenticate checks them all.

CREATE TABLE core.api_keys (
    api_key_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES core.tenants ON DELETE CASCADE,
    name        text NOT NULL,
    -- sha256 of the key; the key itself is shown once, at creation, and never stored.
    key_hash    bytea NOT NULL CONSTRAINT api_keys_key_hash_unique UNIQUE,
    key_prefix  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    -- Scopes nest: read < send < admin (a key holds its scope and every one below it).
    scope       text NOT NULL DEFAULT 'admin'
                CONSTRAINT api_keys_scope_valid CHECK (scope IN ('read', 'send', 'admin')),
    expires_at  timestamptz,
    -- Moved at most once a minute, so a busy key's reads are not each a write of it.
    last_used_at timestamptz,
    -- A GCRA, like a number's send pacing, whose theoretical arrival time (rate_tat) lives
    -- on the key's row, so the limit holds across any number of API processes.
    -- NULL: core.settings.api_rate_limit_per_minute.
    rate_limit_per_minute integer
                CONSTRAINT api_keys_rate_limit_valid CHECK (rate_limit_per_minute BETWEEN 1 AND 1000000),
    rate_tat    timestamptz
);
-- Read by the foreign key's ON DELETE and by the key listing per tenant.
CREATE INDEX api_keys_tenant_id ON core.api_keys (tenant_id);

CREATE TYPE api.api_key_created AS (
    api_key_id  bigint,
    tenant_id   bigint,
    name        text,
    key         text,      -- shown this once; only its sha256 is stored
    key_prefix  text,
    created_at  timestamptz,
    scope       text,
    expires_at  timestamptz,
    rate_limit_per_minute integer
);

CREATE TYPE api.api_key AS (
    api_key_id  bigint,
    name        text,
    key_prefix  text,
    created_at  timestamptz,
    revoked_at  timestamptz,
    scope       text,
    expires_at  timestamptz,
    last_used_at timestamptz,
    rate_limit_per_minute integer
);
