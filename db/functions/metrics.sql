-- /metrics (Prometheus text format, from one function), the operators' views of queues
-- and numbers, and retention of what they read.

-- api.metrics took no argument before it took p_now (a new argument is a new signature,
-- and api functions are never overloaded).
DROP FUNCTION IF EXISTS api.metrics();

-- A label value escaped for the Prometheus text format.
CREATE OR REPLACE FUNCTION core.prom_label(p_value text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT replace(replace(replace(coalesce(p_value, ''), '\', '\\'), '"', '\"'), E'\n', '\n')
$$;

-- One metric family: its HELP and TYPE lines, then its samples (none is allowed).
CREATE OR REPLACE FUNCTION core.prom_family(p_name text, p_type text, p_help text, p_samples text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT format(E'# HELP %s %s\n# TYPE %s %s\n', p_name, p_help, p_name, p_type)
           || coalesce(p_samples || E'\n', '')
$$;

-------------------------------------------------------------------------------
-- Views for operators (read-only: each joins, so none is updatable)
-------------------------------------------------------------------------------

CREATE OR REPLACE VIEW core.queue_depths AS
SELECT q.queue_name,
       CASE WHEN o.campaign_id IS NOT NULL THEN 'campaign'
            WHEN o.number_id IS NOT NULL THEN 'reply'
            WHEN core.queue_endpoint_id(q.queue_name) IS NOT NULL THEN 'events'
            ELSE q.queue_name END AS kind,
       c.campaign_id, c.status AS campaign_status, coalesce(c.number_id, n.number_id) AS number_id,
       m.queue_length, m.queue_visible_length, m.oldest_msg_age_sec, m.total_messages
FROM pgmq.meta q
CROSS JOIN LATERAL (SELECT core.queue_campaign_id(q.queue_name) AS campaign_id,
                           core.queue_number_id(q.queue_name) AS number_id) o
LEFT JOIN core.campaigns c ON c.campaign_id = o.campaign_id
LEFT JOIN core.wa_numbers n ON n.number_id = o.number_id
CROSS JOIN LATERAL pgmq.metrics(q.queue_name) m;
COMMENT ON VIEW core.queue_depths IS
    'Every pgmq queue with its kind (campaign, reply, webhooks, ...), campaign or number, messages waiting (all and visible now), the oldest message''s age in seconds and messages ever sent.';

CREATE OR REPLACE VIEW core.number_health AS
SELECT n.number_id, t.name AS tenant, n.phone_number_id, n.display_phone_number, n.quality_rating,
       n.throughput_mps, round(n.rate_mps::numeric, 1) AS rate_mps,
       round(extract(epoch FROM n.send_tat - now())::numeric, 3) AS tat_ahead_s,
       n.throttled_at, n.paused_reason,
       coalesce(m.accepted, 0) AS accepted_last_minute, coalesce(m.retried, 0) AS retried_last_minute,
       coalesce(m.failed, 0) AS failed_last_minute, coalesce(m.throttled, 0) AS throttled_last_minute
FROM core.wa_numbers n
JOIN core.tenants t ON t.tenant_id = n.tenant_id
LEFT JOIN core.send_minutes m
       ON m.number_id = n.number_id AND m.minute = date_trunc('minute', now()) - interval '1 minute';
COMMENT ON VIEW core.number_health IS
    'One row per WhatsApp number: quality, Meta''s limit, the AIMD pace, how far its GCRA arrival time runs ahead of now, and the last complete minute''s send outcomes. No token or secret.';

-------------------------------------------------------------------------------
-- /metrics
-------------------------------------------------------------------------------

-- No series carries a tenant's identifier (issue 11): a scrape sees the platform, not who
-- is on it. Queues are summed per kind (a campaign's or a number's queue is named by its
-- id), numbers and campaigns are summed or maxed over all of them; per-tenant detail is
-- for operators in psql (core.queue_depths, core.number_health) and for tenants in
-- their own routes.
-- p_now is the time of the scrape (NULL: the transaction's); tests pass it instead of
-- racing the turn of a minute.
CREATE OR REPLACE FUNCTION api.metrics(p_now timestamptz DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
DECLARE
    v_settings core.settings;
    v_out text[];
    v_now timestamptz := coalesce(p_now, now());
    v_last_minute timestamptz := date_trunc('minute', v_now) - interval '1 minute';
BEGIN
    SELECT * INTO v_settings FROM core.settings;

    -- Queues per kind (campaign, reply, or the platform queue's own name), except those
    -- of finished campaigns (the sweep drops them a day later).
    WITH q AS MATERIALIZED (
        SELECT q.kind, sum(m.queue_length) AS length, sum(m.queue_visible_length) AS visible,
               max(coalesce(m.oldest_msg_age_sec, 0)) AS oldest_s
        FROM (SELECT q.queue_name,
                     CASE WHEN o.campaign_id IS NOT NULL THEN 'campaign'
                          WHEN o.number_id IS NOT NULL THEN 'reply'
                          -- One queue per event endpoint (db/functions/events.sql): one kind.
                          WHEN core.queue_endpoint_id(q.queue_name) IS NOT NULL THEN 'events'
                          ELSE q.queue_name END AS kind
              FROM pgmq.meta q
              CROSS JOIN LATERAL (SELECT core.queue_campaign_id(q.queue_name) AS campaign_id,
                                         core.queue_number_id(q.queue_name) AS number_id) o
              LEFT JOIN core.campaigns c ON c.campaign_id = o.campaign_id
              WHERE c.status IS NULL OR c.status NOT IN ('completed', 'cancelled')
              OFFSET 0) q
        CROSS JOIN LATERAL pgmq.metrics(q.queue_name) m
        GROUP BY q.kind
    )
    SELECT ARRAY[
        core.prom_family('pgwa_queue_messages', 'gauge', 'Messages in the pgmq queues of a kind, waiting or in flight.',
            (SELECT string_agg(format('pgwa_queue_messages{kind="%s"} %s', core.prom_label(q.kind), q.length), E'\n'
                               ORDER BY q.kind) FROM q)),
        core.prom_family('pgwa_queue_visible_messages', 'gauge',
            'Messages in the pgmq queues of a kind that a reader could take now.',
            (SELECT string_agg(format('pgwa_queue_visible_messages{kind="%s"} %s', core.prom_label(q.kind), q.visible),
                               E'\n' ORDER BY q.kind) FROM q)),
        core.prom_family('pgwa_queue_oldest_message_age_seconds', 'gauge',
            'Age of the oldest message in the pgmq queues of a kind (0 when empty).',
            (SELECT string_agg(format('pgwa_queue_oldest_message_age_seconds{kind="%s"} %s',
                                      core.prom_label(q.kind), q.oldest_s), E'\n' ORDER BY q.kind) FROM q)),
        core.prom_family('pgwa_webhook_lag_seconds', 'gauge',
            'Age of the oldest webhook payload waiting to be processed (0 when none waits).',
            format('pgwa_webhook_lag_seconds %s',
                   coalesce((SELECT q.oldest_s FROM q WHERE q.kind = 'webhooks'), 0)))]
    INTO v_out;

    -- Send outcomes over the last complete minute (core.send_minutes), all numbers.
    v_out := v_out || core.prom_family('pgwa_sends_per_second', 'gauge',
        'Send results per second over the last complete minute, all numbers, per outcome.',
        (SELECT string_agg(format('pgwa_sends_per_second{outcome="%s"} %s', o.outcome, round(o.n / 60.0, 3)),
                           E'\n' ORDER BY o.outcome)
         FROM (SELECT coalesce(sum(m.accepted), 0) AS accepted, coalesce(sum(m.retried), 0) AS retried,
                      coalesce(sum(m.failed), 0) AS failed, coalesce(sum(m.throttled), 0) AS throttled
               FROM core.send_minutes m WHERE m.minute = v_last_minute) m
         CROSS JOIN LATERAL (VALUES ('accepted', m.accepted), ('retried', m.retried),
                                    ('failed', m.failed), ('throttled', m.throttled)) o(outcome, n)));

    v_out := v_out || core.prom_family('pgwa_message_failures', 'gauge',
        'Campaign messages failed for good, per error category and Meta error code (-2: no code), over existing campaigns.',
        (SELECT string_agg(format('pgwa_message_failures{category="%s",code="%s"} %s',
                                  core.prom_label(category), error_code, n), E'\n' ORDER BY category, error_code)
         FROM (SELECT category, error_code, sum(count) AS n FROM core.campaign_errors
               GROUP BY category, error_code) e));

    -- Rate state over all numbers: AIMD pace, Meta's limits, GCRA arrival time, tokens now.
    v_out := v_out || (
        SELECT core.prom_family('pgwa_numbers', 'gauge', 'WhatsApp numbers registered.', format('pgwa_numbers %s', n.count))
            || core.prom_family('pgwa_number_rate_mps', 'gauge',
                   'The pace all numbers send at now (AIMD-controlled), summed, messages per second.',
                   format('pgwa_number_rate_mps %s', n.rate))
            || core.prom_family('pgwa_number_throughput_mps', 'gauge',
                   'Meta''s throughput limits of all numbers, summed, messages per second.',
                   format('pgwa_number_throughput_mps %s', n.throughput))
            || core.prom_family('pgwa_number_tat_ahead_seconds', 'gauge',
                   'How far the furthest number''s GCRA theoretical arrival time runs ahead of now (0 when idle).',
                   format('pgwa_number_tat_ahead_seconds %s', n.tat_ahead))
            || core.prom_family('pgwa_number_tokens', 'gauge',
                   'Messages a claim could be given now over all numbers (their GCRA budgets within the pace horizon).',
                   format('pgwa_number_tokens %s', n.tokens))
            || core.prom_family('pgwa_number_paused', 'gauge', 'Numbers whose sending is paused.',
                   format('pgwa_number_paused %s', n.paused))
        FROM (SELECT count(*) AS count, round(coalesce(sum(rate_mps), 0)::numeric, 3) AS rate,
                     coalesce(sum(throughput_mps), 0) AS throughput,
                     round(coalesce(max(greatest(extract(epoch FROM send_tat - v_now), 0)), 0)::numeric, 3) AS tat_ahead,
                     coalesce(sum(floor(greatest(0, extract(epoch FROM v_now + make_interval(secs => v_settings.pace_horizon_ms / 1000.0)
                                                                 - greatest(v_now, send_tat)))
                                        * least(rate_mps, throughput_mps * v_settings.rate_headroom))), 0) AS tokens,
                     count(*) FILTER (WHERE paused_reason IS NOT NULL) AS paused
              FROM core.wa_numbers) n);

    -- Campaigns.
    v_out := v_out || core.prom_family('pgwa_campaigns', 'gauge', 'Campaigns per status.',
        (SELECT string_agg(format('pgwa_campaigns{status="%s"} %s', x.status, x.n), E'\n' ORDER BY x.status)
         FROM (SELECT s.status, count(c.campaign_id) AS n
               FROM unnest(ARRAY['draft', 'scheduled', 'running', 'paused', 'completed', 'cancelled']) s(status)
               LEFT JOIN core.campaigns c ON c.status = s.status
               GROUP BY s.status) x));
    v_out := v_out || core.prom_family('pgwa_campaign_messages', 'gauge',
        'Messages of the unfinished campaigns of a status per funnel stage, summed (maintained counters).',
        (SELECT string_agg(format('pgwa_campaign_messages{status="%s",stage="%s"} %s', x.status, x.stage, x.n), E'\n'
                           ORDER BY x.status, x.stage)
         FROM (SELECT c.status, x.stage, sum(x.n) AS n
               FROM core.campaigns c
               CROSS JOIN LATERAL (VALUES ('total', c.total), ('queued', greatest(c.total - c.finished - c.cancelled, 0)),
                                          ('sent', c.sent), ('delivered', c.delivered), ('read', c.read),
                                          ('replied', c.replied), ('failed', c.failed),
                                          ('cancelled', c.cancelled)) x(stage, n)
               WHERE c.status IN ('draft', 'scheduled', 'running', 'paused')
               GROUP BY c.status, x.stage) x));
    v_out := v_out || core.prom_family('pgwa_campaign_progress_ratio', 'gauge',
        'Share of the messages of the unfinished campaigns of a status that are past sending (0 to 1).',
        (SELECT string_agg(format('pgwa_campaign_progress_ratio{status="%s"} %s', x.status,
                                  CASE WHEN x.total > 0 THEN round(least(1.0, x.done::numeric / x.total), 4) ELSE 1 END),
                           E'\n' ORDER BY x.status)
         FROM (SELECT c.status, sum(c.total) AS total, sum(c.finished + c.cancelled) AS done
               FROM core.campaigns c WHERE c.status IN ('draft', 'scheduled', 'running', 'paused')
               GROUP BY c.status) x));

    v_out := v_out || core.prom_family('pgwa_notifications_unread', 'gauge', 'Unread notifications per severity.',
        (SELECT string_agg(format('pgwa_notifications_unread{severity="%s"} %s', x.severity, x.n), E'\n'
                           ORDER BY x.severity)
         FROM (SELECT s.severity, count(n.notification_id) AS n
               FROM unnest(ARRAY['critical', 'info', 'warning']) s(severity)
               LEFT JOIN core.notifications n ON n.severity = s.severity AND n.read_at IS NULL
               GROUP BY s.severity) x));

    RETURN array_to_string(v_out, '');
END
$$;
COMMENT ON FUNCTION api.metrics(timestamptz) IS
    'Returns the Prometheus text exposition of pgwa, with no tenant''s identifier in it: queue depths and ages per queue kind (pgmq), webhook lag, sends per second per outcome (core.send_minutes), failures per category and code, the numbers'' summed pace, limits and tokens and furthest GCRA arrival time, paused numbers, campaigns per status and the summed funnel of unfinished campaigns per status. Rates and tokens are as of p_now (NULL: now; queue ages are pgmq''s, on the clock). Raises nothing of its own.';
REVOKE ALL ON FUNCTION api.metrics(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.metrics(timestamptz) TO pgwa_api;

-------------------------------------------------------------------------------
-- Retention (pg_cron; core.cron_jobs)
-------------------------------------------------------------------------------

-- Notifications read more than p_read_keep ago, or raised more than p_keep ago. A daily
-- sweep of a small table: no index is kept for it. Returns the rows deleted.
CREATE OR REPLACE FUNCTION core.prune_notifications(p_read_keep interval DEFAULT '30 days',
                                                    p_keep interval DEFAULT '180 days') RETURNS bigint
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_deleted bigint;
BEGIN
    DELETE FROM core.notifications WHERE read_at < now() - p_read_keep OR created_at < now() - p_keep;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$$;

-- Per-number send minutes older than p_keep (/metrics reads only the last one). Returns
-- the rows deleted.
CREATE OR REPLACE FUNCTION core.prune_send_minutes(p_keep interval DEFAULT '30 days') RETURNS bigint
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_deleted bigint;
BEGIN
    DELETE FROM core.send_minutes WHERE minute < now() - p_keep;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$$;
