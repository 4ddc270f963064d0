-- Outbound message state: the one place where a message moves forward and the
-- campaign counters move with it. report_sends (the worker's results) and
-- process_webhooks (Meta's statuses) both go through core.advance_outbound.

-- States in the order a message moves through them. A message only moves to a higher
-- rank; failed and cancelled are final.
-- Inlinable (no SET clause; see tests/test_catalog.py): it runs several times per
-- status in every batch, and a function call per use was two thirds of processing time.
CREATE OR REPLACE FUNCTION core.state_rank(p_state text) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (CASE p_state
        WHEN 'queued' THEN 0 WHEN 'in_flight' THEN 1 WHEN 'accepted' THEN 2 WHEN 'sent' THEN 3
        WHEN 'delivered' THEN 4 WHEN 'read' THEN 5 WHEN 'failed' THEN 6 WHEN 'cancelled' THEN 7
    END)::pg_catalog.int2
$$;

-- The outbound id carried in biz_opaque_callback_data: 'c<campaign>:<outbound>' for
-- campaign messages, '<outbound>' for the rest (see core.opaque_data). Null when the
-- text is not one of ours.
-- Inlinable (no SET clause; see tests/test_catalog.py): a status that comes before its
-- send's report is matched by it, which is most of them at full rate.
CREATE OR REPLACE FUNCTION core.opaque_outbound_id(p_opaque text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_opaque OPERATOR(pg_catalog.~) '^(c[0-9]{1,18}:)?[0-9]{1,18}$'
                THEN pg_catalog.split_part(p_opaque, ':', -1)::pg_catalog.int8 END
$$;

-- The biz_opaque_callback_data of an outbound message. The part before ':' is the
-- campaign tag the simulator's ledger counts duplicates by.
-- Inlinable (no SET clause; see tests/test_catalog.py), as it renders every request.
CREATE OR REPLACE FUNCTION core.opaque_data(p_campaign_id bigint, p_outbound_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_campaign_id IS NULL THEN p_outbound_id::pg_catalog.text
                ELSE 'c' OPERATOR(pg_catalog.||) p_campaign_id::pg_catalog.text
                     OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) p_outbound_id::pg_catalog.text END
$$;

-- Move messages forward, set-based. Arrays are parallel: one element per event
-- (several events for one message collapse to the highest state, each timestamp kept).
-- A lower or equal state changes nothing but fills a missing timestamp or wamid, with
-- one exception: a delivered or read status for a failed message is the truth (Meta
-- delivered it after all), and the message is revived: counted delivered, not failed.
-- Campaign and per-template counters move by the transitions, aggregated per campaign,
-- and so do the campaign's per-minute timeline and failures by error code (analytics.sql).
-- Returns the number of messages whose state moved.
CREATE OR REPLACE FUNCTION core.advance_outbound(
    p_outbound_ids bigint[],
    p_states       text[],
    p_at           timestamptz[],
    p_wamids       text[] DEFAULT NULL,
    p_error_codes  integer[] DEFAULT NULL,
    p_error_details text[] DEFAULT NULL
) RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_moved integer;
BEGIN
    WITH input AS (
        SELECT u.outbound_id, u.state, coalesce(u.at, now()) AS at, u.wamid, u.error_code, u.error_detail
        FROM unnest(p_outbound_ids, p_states, p_at, p_wamids, p_error_codes, p_error_details)
             AS u(outbound_id, state, at, wamid, error_code, error_detail)
        WHERE u.outbound_id IS NOT NULL AND core.state_rank(u.state) IS NOT NULL
    ), events AS (
        SELECT i.outbound_id,
               -- Delivered or read outranks failed: if Meta said both, it delivered.
               (array_agg(i.state ORDER BY i.state IN ('delivered', 'read') DESC, core.state_rank(i.state) DESC))[1]
                   AS state,
               max(i.wamid) AS wamid,
               min(i.at) FILTER (WHERE i.state = 'accepted') AS accepted_at,
               min(i.at) FILTER (WHERE i.state = 'sent') AS sent_at,
               min(i.at) FILTER (WHERE i.state = 'delivered') AS delivered_at,
               min(i.at) FILTER (WHERE i.state = 'read') AS read_at,
               min(i.at) FILTER (WHERE i.state = 'failed') AS failed_at,
               max(i.error_code) FILTER (WHERE i.state = 'failed') AS error_code,
               max(i.error_detail) FILTER (WHERE i.state = 'failed') AS error_detail
        FROM input i GROUP BY i.outbound_id
    ), locked AS (
        -- Rows are locked in id order so that concurrent batches cannot deadlock.
        SELECT o.outbound_id, o.state AS old_state
        FROM core.outbound_messages o JOIN events e USING (outbound_id)
        ORDER BY o.outbound_id
        FOR UPDATE OF o
    ), moved AS (
        UPDATE core.outbound_messages o SET
            state = CASE WHEN core.state_rank(e.state) > core.state_rank(o.state) THEN e.state
                         WHEN o.state = 'failed' AND e.state IN ('delivered', 'read') THEN e.state
                         ELSE o.state END,
            wamid = coalesce(o.wamid, e.wamid),
            accepted_at = coalesce(o.accepted_at, e.accepted_at),
            sent_at = coalesce(o.sent_at, e.sent_at),
            delivered_at = coalesce(o.delivered_at, e.delivered_at),
            read_at = coalesce(o.read_at, e.read_at),
            failed_at = coalesce(o.failed_at, e.failed_at),
            error_code = CASE WHEN e.state = 'failed' AND o.state <> 'failed' THEN e.error_code ELSE o.error_code END,
            error_category = CASE WHEN e.state = 'failed' AND o.state <> 'failed'
                                  THEN (core.meta_error(e.error_code)).category ELSE o.error_category END,
            error_detail = CASE WHEN e.state = 'failed' AND o.state <> 'failed' THEN e.error_detail ELSE o.error_detail END
        FROM events e JOIN locked l USING (outbound_id)
        WHERE o.outbound_id = e.outbound_id
          AND (core.state_rank(e.state) > core.state_rank(o.state)
               OR (o.state = 'failed' AND e.state IN ('delivered', 'read'))
               OR (e.wamid IS NOT NULL AND o.wamid IS NULL)
               OR (e.accepted_at IS NOT NULL AND o.accepted_at IS NULL)
               OR (e.sent_at IS NOT NULL AND o.sent_at IS NULL)
               OR (e.delivered_at IS NOT NULL AND o.delivered_at IS NULL)
               OR (e.read_at IS NOT NULL AND o.read_at IS NULL))
        RETURNING o.campaign_id, o.variant, core.state_rank(l.old_state) AS r0, core.state_rank(o.state) AS r1,
                  o.accepted_at, o.sent_at, o.delivered_at, o.read_at, o.failed_at, o.error_code, o.error_category
    ), deltas AS (
        SELECT m.campaign_id, m.variant,
               count(*) FILTER (WHERE m.r1 > m.r0) AS moved,
               count(*) FILTER (WHERE m.r0 < 2 AND m.r1 BETWEEN 2 AND 5) AS sent,
               -- r0 = 6 and r1 in 4, 5: a failed message revived by a later delivered or read.
               count(*) FILTER (WHERE (m.r0 < 4 OR m.r0 = 6) AND m.r1 BETWEEN 4 AND 5) AS delivered,
               count(*) FILTER (WHERE (m.r0 < 5 OR m.r0 = 6) AND m.r1 = 5) AS read,
               count(*) FILTER (WHERE m.r0 < 6 AND m.r1 = 6)
               - count(*) FILTER (WHERE m.r0 = 6 AND m.r1 BETWEEN 4 AND 5) AS failed,
               count(*) FILTER (WHERE m.r0 < 2 AND m.r1 >= 2) AS finished
        FROM moved m GROUP BY m.campaign_id, m.variant
    ), per_template AS (
        UPDATE core.campaign_templates t SET
            sent = t.sent + d.sent, delivered = t.delivered + d.delivered,
            read = t.read + d.read, failed = t.failed + d.failed
        FROM deltas d
        WHERE t.campaign_id = d.campaign_id AND t.variant = d.variant
          AND (d.sent, d.delivered, d.read, d.failed) <> (0, 0, 0, 0)
    ), per_campaign AS (
        UPDATE core.campaigns c SET
            sent = c.sent + d.sent, delivered = c.delivered + d.delivered, read = c.read + d.read,
            failed = c.failed + d.failed, finished = c.finished + d.finished
        FROM (SELECT campaign_id, sum(sent)::int AS sent, sum(delivered)::int AS delivered,
                     sum(read)::int AS read, sum(failed)::int AS failed, sum(finished)::int AS finished
              FROM deltas WHERE campaign_id IS NOT NULL GROUP BY campaign_id) d
        WHERE c.campaign_id = d.campaign_id
          AND (d.sent, d.delivered, d.read, d.failed, d.finished) <> (0, 0, 0, 0, 0)
    ), minutes AS (
        -- The timeline (api.campaign_stats): each transition in the minute of its event.
        -- One branch per counter, each reading only the messages that moved it: a message
        -- usually moves one counter. Four rows for every message (a lateral VALUES) and their
        -- aggregate cost about 6 us a message, a sixth of a batch of statuses.
        SELECT x.campaign_id, x.minute, sum(x.sent)::int AS sent, sum(x.delivered)::int AS delivered,
               sum(x.read)::int AS read, sum(x.failed)::int AS failed
        FROM (
            SELECT m.campaign_id, date_trunc('minute', coalesce(m.accepted_at, m.sent_at, m.delivered_at, m.read_at, now()))
                       AS minute, 1 AS sent, 0 AS delivered, 0 AS read, 0 AS failed
            FROM moved m WHERE m.r0 < 2 AND m.r1 BETWEEN 2 AND 5
            UNION ALL
            -- r0 = 6 and r1 in 4, 5: a failed message revived by a later delivered or read.
            SELECT m.campaign_id, date_trunc('minute', coalesce(m.delivered_at, m.read_at, now())), 0, 1, 0, 0
            FROM moved m WHERE (m.r0 < 4 OR m.r0 = 6) AND m.r1 BETWEEN 4 AND 5
            UNION ALL
            SELECT m.campaign_id, date_trunc('minute', coalesce(m.read_at, now())), 0, 0, 1, 0
            FROM moved m WHERE (m.r0 < 5 OR m.r0 = 6) AND m.r1 = 5
            UNION ALL
            SELECT m.campaign_id, date_trunc('minute', coalesce(m.failed_at, now())), 0, 0, 0,
                   CASE WHEN m.r0 = 6 THEN -1 ELSE 1 END
            FROM moved m WHERE (m.r0 < 6 AND m.r1 = 6) OR (m.r0 = 6 AND m.r1 BETWEEN 4 AND 5)
        ) x
        WHERE x.campaign_id IS NOT NULL
        GROUP BY x.campaign_id, x.minute
        HAVING (sum(x.sent), sum(x.delivered), sum(x.read), sum(x.failed)) <> (0, 0, 0, 0)
    ), per_minute AS (
        INSERT INTO core.campaign_minutes AS cm (campaign_id, minute, sent, delivered, read, failed)
        SELECT campaign_id, minute, sent, delivered, read, failed FROM minutes
        ORDER BY campaign_id, minute
        ON CONFLICT (campaign_id, minute) DO UPDATE SET
            sent = cm.sent + excluded.sent, delivered = cm.delivered + excluded.delivered,
            read = cm.read + excluded.read, failed = cm.failed + excluded.failed
    ), per_error AS (
        -- Final failures by Meta error code (-2: none given, as core.meta_error reads it);
        -- a revived message no longer counts under the code it failed with.
        INSERT INTO core.campaign_errors AS ce (campaign_id, error_code, category, count)
        SELECT m.campaign_id, coalesce(m.error_code, -2), coalesce(max(m.error_category), 'unknown'),
               sum(CASE WHEN m.r0 = 6 THEN -1 ELSE 1 END)::int
        FROM moved m
        WHERE m.campaign_id IS NOT NULL AND ((m.r0 < 6 AND m.r1 = 6) OR (m.r0 = 6 AND m.r1 BETWEEN 4 AND 5))
        GROUP BY m.campaign_id, coalesce(m.error_code, -2)
        ORDER BY 1, 2
        ON CONFLICT (campaign_id, error_code) DO UPDATE SET count = ce.count + excluded.count
    )
    SELECT coalesce(sum(moved), 0) INTO v_moved FROM deltas;
    RETURN v_moved;
END
$$;
