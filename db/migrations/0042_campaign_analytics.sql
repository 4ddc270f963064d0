-- Analytics counters beyond the campaign's own, maintained by core.advance_outbound per
-- batch (never per message) so that api.campaign_stats reads a few rows, never the
-- outbound messages or their status events.

-- Per campaign and minute (of the event: accepted, delivered, read, failed, replied).
CREATE TABLE core.campaign_minutes (
    campaign_id  bigint NOT NULL REFERENCES core.campaigns ON DELETE CASCADE,
    minute       timestamptz NOT NULL,
    sent         integer NOT NULL DEFAULT 0,
    delivered    integer NOT NULL DEFAULT 0,
    read         integer NOT NULL DEFAULT 0,
    failed       integer NOT NULL DEFAULT 0,
    replied      integer NOT NULL DEFAULT 0,
    -- Read by api.campaign_stats (a campaign's latest minutes) and the foreign key.
    PRIMARY KEY (campaign_id, minute)
);

-- Final failures per campaign and Meta error code; -2 stands for no code (a network
-- error, or a failed status that carried none), as in core.meta_error.
CREATE TABLE core.campaign_errors (
    campaign_id  bigint NOT NULL REFERENCES core.campaigns ON DELETE CASCADE,
    error_code   integer NOT NULL,
    category     text NOT NULL,
    count        integer NOT NULL DEFAULT 0,
    -- Read by api.campaign_stats and the foreign key.
    PRIMARY KEY (campaign_id, error_code)
);

-- Read by api.campaigns: a tenant's campaigns newest first, keyset on campaign_id.
CREATE INDEX campaigns_tenant_campaign ON core.campaigns (tenant_id, campaign_id);
-- Read by api.notifications: keyset on notification_id per tenant.
CREATE INDEX notifications_tenant_notification ON core.notifications (tenant_id, notification_id);

-- Campaigns that existed before this migration: their minutes and errors, once.
INSERT INTO core.campaign_errors (campaign_id, error_code, category, count)
SELECT campaign_id, coalesce(error_code, -2), coalesce(max(error_category), 'unknown'), count(*)
FROM core.outbound_messages
WHERE campaign_id IS NOT NULL AND state = 'failed'
GROUP BY campaign_id, coalesce(error_code, -2);

INSERT INTO core.campaign_minutes (campaign_id, minute, sent, delivered, read, failed, replied)
SELECT o.campaign_id, e.minute, sum(e.sent), sum(e.delivered), sum(e.read), sum(e.failed), sum(e.replied)
FROM core.outbound_messages o
CROSS JOIN LATERAL (VALUES
    (date_trunc('minute', coalesce(o.accepted_at, o.sent_at, o.delivered_at, o.read_at, o.queued_at)),
     (o.state IN ('accepted', 'sent', 'delivered', 'read')
      OR (o.state = 'failed' AND coalesce(o.accepted_at, o.sent_at, o.delivered_at, o.read_at) IS NOT NULL))::int, 0, 0, 0, 0),
    (date_trunc('minute', coalesce(o.delivered_at, o.read_at, o.queued_at)), 0,
     (o.state IN ('delivered', 'read') OR (o.state = 'failed' AND coalesce(o.delivered_at, o.read_at) IS NOT NULL))::int, 0, 0, 0),
    (date_trunc('minute', coalesce(o.read_at, o.queued_at)), 0, 0, (o.state = 'read' OR (o.state = 'failed' AND o.read_at IS NOT NULL))::int, 0, 0),
    (date_trunc('minute', coalesce(o.failed_at, o.queued_at)), 0, 0, 0, (o.state = 'failed')::int, 0),
    (date_trunc('minute', coalesce(o.replied_at, o.queued_at)), 0, 0, 0, 0, (o.replied_at IS NOT NULL)::int)
) AS e(minute, sent, delivered, read, failed, replied)
WHERE o.campaign_id IS NOT NULL AND e.sent + e.delivered + e.read + e.failed + e.replied > 0
GROUP BY o.campaign_id, e.minute;
