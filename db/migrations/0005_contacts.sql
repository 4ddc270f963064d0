CREATE TABLE core.contacts (
    contact_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        bigint NOT NULL REFERENCES core.tenants ON DELETE CASCADE,
    -- E.164 digits without '+'. Since 2026 Meta may identify a user only by a
    -- business-scoped user id with an empty wa_id, so either key may be absent.
    wa_id            text CONSTRAINT contacts_wa_id_e164 CHECK (wa_id ~ '^[1-9][0-9]{6,14}$'),
    user_id          text,
    name             text,
    profile_name     text,
    attributes       jsonb NOT NULL DEFAULT '{}',
    opted_out        boolean NOT NULL DEFAULT false,
    opted_out_at     timestamptz,
    last_inbound_at  timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT contacts_identified CHECK (wa_id IS NOT NULL OR user_id IS NOT NULL)
);
-- Upsert keys for campaign creation and inbound messages; the first also serves the
-- tenant foreign key.
CREATE UNIQUE INDEX contacts_tenant_wa_id ON core.contacts (tenant_id, wa_id);
CREATE UNIQUE INDEX contacts_tenant_user_id ON core.contacts (tenant_id, user_id) WHERE user_id IS NOT NULL;
