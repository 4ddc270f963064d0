CREATE TABLE core.wa_numbers (
    number_id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id            bigint NOT NULL REFERENCES core.tenants ON DELETE CASCADE,
    phone_number_id      text NOT NULL CONSTRAINT wa_numbers_phone_number_id_unique UNIQUE
                         CONSTRAINT wa_numbers_phone_number_id_digits CHECK (phone_number_id ~ '^[0-9]{1,32}$'),
    waba_id              text NOT NULL CONSTRAINT wa_numbers_waba_id_digits CHECK (waba_id ~ '^[0-9]{1,32}$'),
    display_phone_number text,
    access_token         text NOT NULL,
    app_secret           text,
    -- Meta's throughput for the number: 80 msg/s by default, up to 1,000.
    throughput_mps       integer NOT NULL DEFAULT 80
                         CONSTRAINT wa_numbers_throughput_valid CHECK (throughput_mps BETWEEN 1 AND 1000),
    -- Rate state, persisted so it survives restarts: the AIMD-controlled pace and the
    -- GCRA theoretical arrival time of the next send.
    rate_mps             double precision NOT NULL DEFAULT 80
                         CONSTRAINT wa_numbers_rate_positive CHECK (rate_mps > 0),
    send_tat             timestamptz NOT NULL DEFAULT now(),
    throttled_at         timestamptz,
    quality_rating       text,
    llm_enabled          boolean NOT NULL DEFAULT false,
    paused_reason        text,
    created_at           timestamptz NOT NULL DEFAULT now()
);
-- Read by the foreign key's ON DELETE and by the tenant's number listing.
CREATE INDEX wa_numbers_tenant_id ON core.wa_numbers (tenant_id);
