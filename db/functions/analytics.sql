-- Campaign analytics, read from maintained counters only: core.campaigns and
-- core.campaign_templates (moved by core.advance_outbound and reply attribution),
-- core.campaign_errors and core.campaign_minutes (moved by core.advance_outbound, once
-- per batch). Nothing here reads outbound messages or status events, except
-- api.reconcile_campaign, whose job is to recount them.

-- a / b rounded to 4 places, null when b is 0.
CREATE OR REPLACE FUNCTION core.ratio(p_a bigint, p_b bigint) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT CASE WHEN p_b > 0 THEN round(p_a::numeric / p_b, 4)::double precision END
$$;

-------------------------------------------------------------------------------
-- Listing and stats
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.campaigns(
    p_tenant_id  bigint,
    p_status     text DEFAULT NULL,
    p_before_id  bigint DEFAULT NULL,
    p_limit      integer DEFAULT 50
) RETURNS SETOF api.campaign_summary
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'limit must be between 1 and 1000, not %', p_limit USING ERRCODE = 'PW100',
            HINT = 'Page with before_id: pass the smallest campaign_id of the previous page.';
    END IF;
    IF p_status IS NOT NULL AND p_status NOT IN ('draft', 'scheduled', 'running', 'paused', 'completed', 'cancelled') THEN
        RAISE EXCEPTION 'status "%" is not a campaign status', p_status USING ERRCODE = 'PW100',
            HINT = 'One of draft, scheduled, running, paused, completed, cancelled.';
    END IF;
    -- campaigns_tenant_campaign, read backwards from p_before_id.
    RETURN QUERY
    SELECT c.campaign_id, c.name, c.status, c.number_id, c.pause_reason, c.scheduled_at, c.started_at,
           c.completed_at, c.cancelled_at, c.created_at, c.total,
           greatest(c.total - c.finished - c.cancelled, 0), c.sent, c.delivered, c.read, c.replied,
           c.failed, c.cancelled, c.skipped_opted_out, c.skipped_invalid, c.duplicates_removed,
           CASE WHEN c.total > 0 THEN least(1.0, (c.finished + c.cancelled)::double precision / c.total) ELSE 1.0 END
    FROM core.campaigns c
    WHERE c.tenant_id = p_tenant_id
      AND (p_status IS NULL OR c.status = p_status)
      AND (p_before_id IS NULL OR c.campaign_id < p_before_id)
    ORDER BY c.campaign_id DESC
    LIMIT p_limit;
END
$$;
COMMENT ON FUNCTION api.campaigns(bigint, text, bigint, integer) IS
    'Lists the tenant''s campaigns newest first with their live counters (total, queued, sent, delivered, read, replied, failed, cancelled, progress), optionally of one status; keyset pagination: p_before_id is the smallest campaign_id of the previous page. Raises PW100 for a limit outside 1..1000 or an unknown status.';

CREATE OR REPLACE FUNCTION api.campaign_stats(p_tenant_id bigint, p_campaign_id bigint)
RETURNS api.campaign_stats
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
DECLARE
    v_stats api.campaign_stats;
BEGIN
    SELECT c.campaign_id, c.name, c.status, c.number_id, c.pause_reason, c.created_at, c.started_at, c.completed_at,
           c.total, greatest(c.total - c.finished - c.cancelled, 0), c.sent, c.delivered, c.read, c.replied,
           c.failed, c.cancelled, c.skipped_opted_out, c.skipped_invalid, c.duplicates_removed,
           CASE WHEN c.total > 0 THEN least(1.0, (c.finished + c.cancelled)::double precision / c.total) ELSE 1.0 END,
           core.ratio(c.delivered, c.sent), core.ratio(c.read, c.delivered), core.ratio(c.replied, c.delivered),
           core.ratio(c.failed, c.finished),
           (SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'variant', ct.variant, 'template_id', ct.template_id, 'name', t.name, 'language', t.language,
                       'total', ct.total, 'sent', ct.sent, 'delivered', ct.delivered, 'read', ct.read,
                       'replied', ct.replied, 'failed', ct.failed,
                       'delivery_rate', core.ratio(ct.delivered, ct.sent), 'read_rate', core.ratio(ct.read, ct.delivered),
                       'reply_rate', core.ratio(ct.replied, ct.delivered)) ORDER BY ct.variant), '[]')
            FROM core.campaign_templates ct JOIN core.templates t ON t.template_id = ct.template_id
            WHERE ct.campaign_id = c.campaign_id),
           (SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'error_code', e.error_code, 'category', e.category, 'title', m.title, 'count', e.count)
                       ORDER BY e.count DESC, e.error_code), '[]')
            FROM core.campaign_errors e LEFT JOIN core.meta_error_codes m ON m.code = e.error_code
            WHERE e.campaign_id = c.campaign_id AND e.count <> 0),
           (SELECT coalesce(jsonb_agg(jsonb_build_object('category', g.category, 'count', g.count)
                       ORDER BY g.count DESC, g.category), '[]')
            FROM (SELECT e.category, sum(e.count)::integer AS count FROM core.campaign_errors e
                  WHERE e.campaign_id = c.campaign_id GROUP BY e.category HAVING sum(e.count) <> 0) g),
           -- The latest day of minutes, oldest first (campaign_minutes' primary key, backwards).
           (SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'minute', m.minute, 'sent', m.sent, 'delivered', m.delivered, 'read', m.read,
                       'failed', m.failed, 'replied', m.replied) ORDER BY m.minute), '[]')
            FROM (SELECT * FROM core.campaign_minutes cm WHERE cm.campaign_id = c.campaign_id
                  ORDER BY cm.minute DESC LIMIT 1440) m),
           -- Its messages to new users wait while the portfolio's messaging limit is spent.
           CASE WHEN c.status = 'running' AND c.total > c.finished + c.cancelled AND p.budget_wait_until > now()
                THEN 'messaging_limit' END,
           CASE WHEN c.status = 'running' AND c.total > c.finished + c.cancelled AND p.budget_wait_until > now()
                THEN p.budget_wait_until END,
           p.messaging_limit,
           ceil(greatest(c.total - c.finished - c.cancelled, 0)::numeric / p.messaging_limit)::integer,
           c.retrying
    INTO v_stats
    FROM core.campaigns c
    LEFT JOIN core.wa_numbers n ON n.number_id = c.number_id
    LEFT JOIN core.portfolios p ON p.portfolio_id = n.portfolio_id
    WHERE c.campaign_id = p_campaign_id AND c.tenant_id = p_tenant_id;
    IF v_stats.campaign_id IS NULL THEN
        RAISE EXCEPTION 'campaign % not found', p_campaign_id
            USING ERRCODE = 'PW201', HINT = 'List the tenant''s campaigns with api.campaigns().';
    END IF;
    RETURN v_stats;
END
$$;
COMMENT ON FUNCTION api.campaign_stats(bigint, bigint) IS
    'Analytics of one campaign from maintained counters, in one query: the funnel (total, queued, sent, delivered, read, replied, failed, cancelled), rates, per-template counters, failures by Meta error code and by category, a per-minute timeline (latest 1,440 minutes), and what it waits for: waiting_for ''messaging_limit'' with resumes_at while its portfolio''s budget of new users is spent, the portfolio''s messaging_limit and the days_at_limit its queued messages still need; retrying counts the messages Meta withheld under the per-user marketing cap (131049) that wait for their next try a day later. Raises PW201 when the tenant has no such campaign.';

-------------------------------------------------------------------------------
-- Reconciliation
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.reconcile_campaign(p_tenant_id bigint, p_campaign_id bigint, p_fix boolean DEFAULT false)
RETURNS SETOF api.counter_drift
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' SET client_min_messages = warning AS $$
BEGIN
    IF p_fix THEN
        -- Locked first: batches that move this campaign's counters wait, and the recount
        -- (a later statement, a later snapshot) sees everything committed before them.
        PERFORM core.campaign_for(p_tenant_id, p_campaign_id);
    ELSIF NOT EXISTS (SELECT 1 FROM core.campaigns WHERE campaign_id = p_campaign_id AND tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'campaign % not found', p_campaign_id
            USING ERRCODE = 'PW201', HINT = 'List the tenant''s campaigns with api.campaigns().';
    END IF;

    -- What each counter counts, from the messages themselves. A message counts as sent
    -- once Meta accepted it, even if it failed afterwards (as advance_outbound counts).
    DROP TABLE IF EXISTS pg_temp.reconcile_counts;
    CREATE TEMP TABLE reconcile_counts ON COMMIT DROP AS
    SELECT CASE WHEN grouping(o.variant) = 0 THEN o.variant END AS variant,
           count(*) AS total,
           count(*) FILTER (WHERE o.state IN ('accepted', 'sent', 'delivered', 'read')
                               OR (o.state = 'failed' AND coalesce(o.accepted_at, o.sent_at, o.delivered_at, o.read_at) IS NOT NULL)) AS sent,
           count(*) FILTER (WHERE o.state IN ('delivered', 'read')
                               OR (o.state = 'failed' AND coalesce(o.delivered_at, o.read_at) IS NOT NULL)) AS delivered,
           count(*) FILTER (WHERE o.state = 'read' OR (o.state = 'failed' AND o.read_at IS NOT NULL)) AS read,
           count(*) FILTER (WHERE o.replied_at IS NOT NULL) AS replied,
           count(*) FILTER (WHERE o.state = 'failed') AS failed,
           count(*) FILTER (WHERE o.state = 'cancelled') AS cancelled,
           count(*) FILTER (WHERE o.state IN ('accepted', 'sent', 'delivered', 'read', 'failed')) AS finished
    FROM core.outbound_messages o
    WHERE o.campaign_id = p_campaign_id
    GROUP BY ROLLUP (o.variant);

    DROP TABLE IF EXISTS pg_temp.reconcile_errors;
    CREATE TEMP TABLE reconcile_errors ON COMMIT DROP AS
    SELECT coalesce(o.error_code, -2) AS error_code, coalesce(max(o.error_category), 'unknown') AS category,
           count(*) AS count
    FROM core.outbound_messages o
    WHERE o.campaign_id = p_campaign_id AND o.state = 'failed'
    GROUP BY coalesce(o.error_code, -2);

    RETURN QUERY
    WITH a AS (SELECT * FROM pg_temp.reconcile_counts WHERE variant IS NULL),
    report AS (
        SELECT 1 AS ord, 'campaign' AS scope, '' AS key, x.counter, x.maintained, x.actual
        FROM core.campaigns c, a,
        LATERAL (VALUES ('total', c.total::bigint, a.total), ('sent', c.sent, a.sent),
                        ('delivered', c.delivered, a.delivered), ('read', c.read, a.read),
                        ('replied', c.replied, a.replied), ('failed', c.failed, a.failed),
                        ('cancelled', c.cancelled, a.cancelled), ('finished', c.finished, a.finished))
                AS x(counter, maintained, actual)
        WHERE c.campaign_id = p_campaign_id
        UNION ALL
        SELECT 2, 'template', t.variant::text, x.counter, x.maintained, x.actual
        FROM core.campaign_templates t
        LEFT JOIN pg_temp.reconcile_counts r ON r.variant = t.variant,
        LATERAL (VALUES ('total', t.total::bigint, coalesce(r.total, 0)), ('sent', t.sent, coalesce(r.sent, 0)),
                        ('delivered', t.delivered, coalesce(r.delivered, 0)), ('read', t.read, coalesce(r.read, 0)),
                        ('replied', t.replied, coalesce(r.replied, 0)), ('failed', t.failed, coalesce(r.failed, 0)))
                AS x(counter, maintained, actual)
        WHERE t.campaign_id = p_campaign_id
        UNION ALL
        SELECT 3, 'error', coalesce(m.error_code, e.error_code)::text, 'count',
               coalesce(m.count, 0)::bigint, coalesce(e.count, 0)
        FROM (SELECT * FROM core.campaign_errors WHERE campaign_id = p_campaign_id) m
        FULL JOIN pg_temp.reconcile_errors e ON e.error_code = m.error_code
        UNION ALL
        SELECT 4, 'timeline', '', x.counter, x.maintained, x.actual
        FROM (SELECT coalesce(sum(m.sent), 0)::bigint AS sent, coalesce(sum(m.delivered), 0)::bigint AS delivered,
                     coalesce(sum(m.read), 0)::bigint AS read, coalesce(sum(m.failed), 0)::bigint AS failed,
                     coalesce(sum(m.replied), 0)::bigint AS replied
              FROM core.campaign_minutes m WHERE m.campaign_id = p_campaign_id) s, a,
        LATERAL (VALUES ('sent', s.sent, a.sent), ('delivered', s.delivered, a.delivered), ('read', s.read, a.read),
                        ('failed', s.failed, a.failed), ('replied', s.replied, a.replied))
                AS x(counter, maintained, actual)
    )
    SELECT r.scope, r.key, r.counter, r.maintained, r.actual, r.maintained - r.actual,
           p_fix AND r.maintained <> r.actual
    FROM report r
    ORDER BY r.ord, r.key, r.counter;

    IF NOT p_fix THEN
        RETURN;
    END IF;

    UPDATE core.campaigns c SET total = a.total, sent = a.sent, delivered = a.delivered, read = a.read,
        replied = a.replied, failed = a.failed, cancelled = a.cancelled, finished = a.finished
    FROM pg_temp.reconcile_counts a
    WHERE c.campaign_id = p_campaign_id AND a.variant IS NULL;

    UPDATE core.campaign_templates t SET (total, sent, delivered, read, replied, failed) = (
        SELECT coalesce(max(r.total), 0), coalesce(max(r.sent), 0), coalesce(max(r.delivered), 0),
               coalesce(max(r.read), 0), coalesce(max(r.replied), 0), coalesce(max(r.failed), 0)
        FROM pg_temp.reconcile_counts r WHERE r.variant = t.variant)
    WHERE t.campaign_id = p_campaign_id;

    DELETE FROM core.campaign_errors WHERE campaign_id = p_campaign_id;
    INSERT INTO core.campaign_errors (campaign_id, error_code, category, count)
    SELECT p_campaign_id, e.error_code, e.category, e.count FROM pg_temp.reconcile_errors e;

    -- The timeline, rebuilt from each message's timestamps.
    DELETE FROM core.campaign_minutes WHERE campaign_id = p_campaign_id;
    INSERT INTO core.campaign_minutes (campaign_id, minute, sent, delivered, read, failed, replied)
    SELECT p_campaign_id, e.minute, sum(e.sent), sum(e.delivered), sum(e.read), sum(e.failed), sum(e.replied)
    FROM core.outbound_messages o
    CROSS JOIN LATERAL (VALUES
        (date_trunc('minute', coalesce(o.accepted_at, o.sent_at, o.delivered_at, o.read_at, o.queued_at)),
         (o.state IN ('accepted', 'sent', 'delivered', 'read')
          OR (o.state = 'failed' AND coalesce(o.accepted_at, o.sent_at, o.delivered_at, o.read_at) IS NOT NULL))::int, 0, 0, 0, 0),
        (date_trunc('minute', coalesce(o.delivered_at, o.read_at, o.queued_at)), 0,
         (o.state IN ('delivered', 'read') OR (o.state = 'failed' AND coalesce(o.delivered_at, o.read_at) IS NOT NULL))::int, 0, 0, 0),
        (date_trunc('minute', coalesce(o.read_at, o.queued_at)), 0, 0,
         (o.state = 'read' OR (o.state = 'failed' AND o.read_at IS NOT NULL))::int, 0, 0),
        (date_trunc('minute', coalesce(o.failed_at, o.queued_at)), 0, 0, 0, (o.state = 'failed')::int, 0),
        (date_trunc('minute', coalesce(o.replied_at, o.queued_at)), 0, 0, 0, 0, (o.replied_at IS NOT NULL)::int)
    ) AS e(minute, sent, delivered, read, failed, replied)
    WHERE o.campaign_id = p_campaign_id AND e.sent + e.delivered + e.read + e.failed + e.replied > 0
    GROUP BY e.minute;
END
$$;
COMMENT ON FUNCTION api.reconcile_campaign(bigint, bigint, boolean) IS
    'Recounts a campaign from its outbound messages and returns every maintained counter beside the recount (scope campaign, template, error, timeline; drift = maintained - actual). With p_fix, locks the campaign, sets the counters to the recount, rebuilds its error and per-minute tables, and marks the rows fixed. Raises PW201 when the tenant has no such campaign.';

REVOKE ALL ON FUNCTION api.campaigns(bigint, text, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.campaign_stats(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.reconcile_campaign(bigint, bigint, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.campaigns(bigint, text, bigint, integer) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.campaign_stats(bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.reconcile_campaign(bigint, bigint, boolean) TO pgwa_api;

-------------------------------------------------------------------------------
-- For operators in psql (read-only: every view joins, so none is updatable)
-------------------------------------------------------------------------------

CREATE OR REPLACE VIEW core.campaign_overview AS
SELECT c.campaign_id, c.tenant_id, t.name AS tenant, c.name, c.status, n.phone_number_id,
       c.created_at, c.started_at, c.completed_at,
       c.total, greatest(c.total - c.finished - c.cancelled, 0) AS queued,
       c.sent, c.delivered, c.read, c.replied, c.failed, c.cancelled,
       round(100.0 * (c.finished + c.cancelled) / nullif(c.total, 0), 1) AS progress_pct,
       round(100.0 * c.delivered / nullif(c.sent, 0), 1) AS delivered_pct,
       round(100.0 * c.read / nullif(c.delivered, 0), 1) AS read_pct,
       coalesce(m.sent, 0) AS sent_last_minute,
       c.pause_reason
FROM core.campaigns c
JOIN core.tenants t ON t.tenant_id = c.tenant_id
JOIN core.wa_numbers n ON n.number_id = c.number_id
LEFT JOIN core.campaign_minutes m
       ON m.campaign_id = c.campaign_id AND m.minute = date_trunc('minute', now()) - interval '1 minute';
COMMENT ON VIEW core.campaign_overview IS
    'One row per campaign for operators: tenant, number, status, funnel counters, progress/delivered/read percentages and messages sent in the last complete minute.';

CREATE OR REPLACE VIEW core.campaign_failures AS
SELECT e.campaign_id, c.name AS campaign, e.error_code, e.category, m.title, e.count
FROM core.campaign_errors e
JOIN core.campaigns c ON c.campaign_id = e.campaign_id
LEFT JOIN core.meta_error_codes m ON m.code = e.error_code;
COMMENT ON VIEW core.campaign_failures IS
    'Final failures per campaign and Meta error code, with the category and Meta''s title.';
