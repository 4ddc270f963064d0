-- Every status Meta reported, stored once per (wamid, status) whatever the redelivery.
CREATE TABLE core.status_events (
    wamid         text NOT NULL,
    status        text NOT NULL
                  CONSTRAINT status_events_status_valid CHECK (status IN ('sent', 'delivered', 'read', 'failed', 'deleted', 'warning', 'played')),
    -- Null while the wamid is unknown (its send not reported yet); matched later.
    outbound_id   bigint,
    occurred_at   timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    recipient_id  text,
    error_code    integer,
    pricing_category text,
    conversation_id  text,
    PRIMARY KEY (wamid, status)
);
-- Read when a report_sends brings a wamid whose statuses arrived first.
CREATE INDEX status_events_unmatched ON core.status_events (wamid) WHERE outbound_id IS NULL;
-- Read by retention (oldest first).
CREATE INDEX status_events_received ON core.status_events USING brin (received_at);
