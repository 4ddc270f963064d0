CREATE TABLE core.templates (
    template_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         bigint NOT NULL REFERENCES core.tenants ON DELETE CASCADE,
    waba_id           text NOT NULL,
    meta_template_id  text,
    name              text NOT NULL,
    language          text NOT NULL,
    category          text,
    status            text NOT NULL DEFAULT 'APPROVED',
    components        jsonb NOT NULL DEFAULT '[]',
    body_param_count  smallint NOT NULL DEFAULT 0 CONSTRAINT templates_param_count_valid CHECK (body_param_count >= 0),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT templates_waba_name_language_unique UNIQUE (waba_id, name, language)
);
-- Read by the foreign key's ON DELETE and by the tenant's template listing.
CREATE INDEX templates_tenant_id ON core.templates (tenant_id);
