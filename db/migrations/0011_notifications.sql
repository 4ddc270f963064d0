CREATE TABLE core.notifications (
    notification_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        bigint NOT NULL REFERENCES core.tenants ON DELETE CASCADE,
    kind             text NOT NULL,
    severity         text NOT NULL DEFAULT 'warning'
                     CONSTRAINT notifications_severity_valid CHECK (severity IN ('info', 'warning', 'critical')),
    message          text NOT NULL,
    details          jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    read_at          timestamptz
);
-- Read by the notification list (newest first) and the tenant foreign key.
CREATE INDEX notifications_tenant_created ON core.notifications (tenant_id, created_at DESC);
