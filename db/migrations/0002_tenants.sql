CREATE TABLE core.tenants (
    tenant_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name               text NOT NULL CONSTRAINT tenants_name_unique UNIQUE,
    -- Matched against the normalised (upper-cased, trimmed, unaccented) inbound text.
    opt_out_keywords   text[] NOT NULL DEFAULT '{STOP,UNSUBSCRIBE}',
    opt_in_keywords    text[] NOT NULL DEFAULT '{START}',
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE core.api_keys (
    api_key_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES core.tenants ON DELETE CASCADE,
    name        text NOT NULL,
    -- sha256 of the key; the key itself is shown once, at creation, and never stored.
    key_hash    bytea NOT NULL CONSTRAINT api_keys_key_hash_unique UNIQUE,
    key_prefix  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
-- Read by the foreign key's ON DELETE and by the key listing per tenant.
CREATE INDEX api_keys_tenant_id ON core.api_keys (tenant_id);
