-- The send path: claim_sends hands workers paced, rendered requests; report_sends
-- takes their results. Two round trips per batch, whatever the batch size.

-- Read up to p_max messages from one queue with the claim's visibility timeout. A
-- queue message is {"o": outbound_id, "b": request body} for a rendered message
-- (replies), or {"o", "t": recipient, "v": template variant, "p": [body parameters]}
-- for a campaign message, rendered when claimed.
-- pgmq.read's statement, on the time p_now (NULL: the clock) instead of the clock: a
-- message is visible when its vt has passed at p_now, and invisible p_vt seconds after it.
CREATE OR REPLACE FUNCTION core.read_queue(p_queue text, p_vt integer, p_max integer,
                                           p_now timestamptz DEFAULT NULL) RETURNS SETOF core.claimed
LANGUAGE plpgsql SET search_path = '' AS $$
BEGIN
    IF p_max <= 0 THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format(
        'WITH cte AS (SELECT msg_id FROM pgmq.%1$I WHERE vt <= $1 ORDER BY msg_id LIMIT $2 FOR UPDATE SKIP LOCKED)
         UPDATE pgmq.%1$I m SET last_read_at = $1, vt = $1 + $3, read_ct = m.read_ct + 1
         FROM cte WHERE m.msg_id = cte.msg_id
         RETURNING %2$L::text, m.msg_id, m.read_ct, (m.message->>''o'')::bigint, m.message', 'q_' || p_queue, p_queue)
    USING coalesce(p_now, clock_timestamp()), p_max, make_interval(secs => p_vt);
END
$$;

-- Take tokens from each number's rate (a GCRA: the number's theoretical arrival time
-- advances 1/rate per message, never more than the pace horizon ahead of now), read
-- that many messages (replies first, then the number's running campaigns in equal
-- shares), mark them in flight, and return ready-to-POST requests, each with the time
-- it may be sent. A message whose claim expired (its worker died) is resent only if
-- no status came back for it meanwhile; otherwise it is settled and dropped.
-- p_now is the time of the claim (NULL: the clock); tests pass it instead of waiting.
CREATE OR REPLACE FUNCTION api.claim_sends(p_worker text, p_max integer DEFAULT 500, p_now timestamptz DEFAULT NULL)
RETURNS SETOF api.send_request
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_settings core.settings;
    v_now timestamptz := coalesce(p_now, clock_timestamp());
    v_horizon interval;
    v_vt integer;
    v_left integer := least(greatest(p_max, 0), 5000);
    v_number core.wa_numbers;
    v_rate double precision;
    v_start timestamptz;
    v_budget integer;
    v_batch core.claimed[];
    v_campaigns bigint[];
    v_i integer;
    v_got integer;
    v_read core.claimed[];
    v_more bigint[];
    v_all core.claimed[] := '{}';
    v_starts jsonb := '{}';
BEGIN
    SELECT * INTO v_settings FROM core.settings;
    v_horizon := make_interval(secs => v_settings.pace_horizon_ms / 1000.0);
    v_vt := v_settings.claim_timeout_s + ceil(v_settings.pace_horizon_ms / 1000.0)::integer;
    PERFORM core.start_due_campaigns(v_now);

    FOR v_number IN
        SELECT n.* FROM core.wa_numbers n
        WHERE n.send_tat < v_now + v_horizon AND n.paused_reason IS NULL
        ORDER BY n.send_tat
        FOR UPDATE SKIP LOCKED
    LOOP
        EXIT WHEN v_left <= 0;
        v_rate := least(v_number.rate_mps, v_number.throughput_mps * v_settings.rate_headroom);
        v_start := greatest(v_now, v_number.send_tat);
        -- A number whose time has come sends at least one, or a rate AIMD halved below one
        -- send per horizon would never send again (and never report the clean batch that
        -- grows it back).
        v_budget := least(v_left, greatest(floor(extract(epoch FROM (v_now + v_horizon - v_start)) * v_rate)::integer,
                                           CASE WHEN v_number.send_tat <= v_now THEN 1 ELSE 0 END));
        CONTINUE WHEN v_budget <= 0;

        v_batch := ARRAY(SELECT core.read_queue('r_' || v_number.number_id, v_vt, v_budget, v_now));
        -- In a fresh order each claim: the first campaign's share is rounded up, and at a
        -- budget below the campaign count a fixed order would starve the last ones.
        SELECT array_agg(campaign_id ORDER BY random()) INTO v_campaigns
        FROM core.campaigns WHERE number_id = v_number.number_id AND status = 'running';
        v_i := 1;
        v_more := '{}';
        WHILE v_i <= coalesce(cardinality(v_campaigns), 0) AND cardinality(v_batch) < v_budget LOOP
            -- An equal share of what is left; a campaign with less leaves the rest to the next.
            v_got := ceil((v_budget - cardinality(v_batch))::numeric / (cardinality(v_campaigns) - v_i + 1));
            v_read := ARRAY(SELECT core.read_queue('c_' || v_campaigns[v_i], v_vt, v_got, v_now));
            v_batch := v_batch || v_read;
            IF cardinality(v_read) = v_got THEN
                v_more := v_more || v_campaigns[v_i];
            END IF;
            v_i := v_i + 1;
            -- What the last ones left goes round again to those that filled their share.
            IF v_i > cardinality(v_campaigns) THEN
                v_campaigns := v_more;
                v_more := '{}';
                v_i := 1;
            END IF;
        END LOOP;
        CONTINUE WHEN cardinality(v_batch) = 0;

        -- Campaign messages of contacts who opted out after their campaign was created
        -- are cancelled (bots.sql), and so dropped just below.
        PERFORM core.cancel_opted_out(v_batch, v_number.tenant_id, v_number.number_id);

        -- Redelivered after an expired claim (its worker died) but settled meanwhile by a
        -- status webhook or a late report, or cancelled: dropped from the queue instead of
        -- messaging the contact twice.
        WITH settled AS (
            SELECT b.queue_name, b.msg_id FROM unnest(v_batch) b
            LEFT JOIN core.outbound_messages o ON o.outbound_id = b.outbound_id
            WHERE o.state IS NULL OR o.state NOT IN ('queued', 'in_flight')
        )
        SELECT count(*) INTO v_got FROM (
            SELECT pgmq.delete(s.queue_name, array_agg(s.msg_id)) FROM settled s GROUP BY s.queue_name) d;
        IF v_got > 0 THEN
            v_batch := ARRAY(SELECT b FROM unnest(v_batch) b
                             JOIN core.outbound_messages o ON o.outbound_id = b.outbound_id
                             WHERE o.state IN ('queued', 'in_flight'));
        END IF;
        CONTINUE WHEN cardinality(v_batch) = 0;

        UPDATE core.outbound_messages o SET state = 'in_flight', attempts = o.attempts + 1, claimed_at = v_now
        FROM unnest(v_batch) b WHERE o.outbound_id = b.outbound_id AND o.state IN ('queued', 'in_flight');

        UPDATE core.wa_numbers SET send_tat = v_start + make_interval(secs => cardinality(v_batch) / v_rate)
        WHERE number_id = v_number.number_id;
        v_starts := v_starts || jsonb_build_object(v_number.number_id::text,
                        jsonb_build_array(v_start, v_rate, cardinality(v_all)));
        v_all := v_all || v_batch;
        v_left := v_left - cardinality(v_batch);
    END LOOP;

    RETURN QUERY
    SELECT b.outbound_id, b.queue_name, b.msg_id, n.phone_number_id, n.access_token,
           format('%s/%s/messages', v_settings.graph_api_version, n.phone_number_id),
           coalesce(b.message->'b', jsonb_build_object(
               'messaging_product', 'whatsapp',
               'recipient_type', 'individual',
               'to', b.message->>'t',
               'type', 'template',
               'template', jsonb_build_object('name', t.name, 'language', jsonb_build_object('code', t.language))
                   -- A template without body parameters has no components (and never a
                   -- jsonb_array_length error that would fail every claim).
                   || CASE WHEN coalesce(jsonb_typeof(b.message->'p'), 'null') <> 'array' THEN '{}'::jsonb
                           WHEN jsonb_array_length(b.message->'p') = 0 THEN '{}'::jsonb
                           ELSE jsonb_build_object('components', jsonb_build_array(jsonb_build_object(
                                'type', 'body', 'parameters', (
                                    SELECT jsonb_agg(jsonb_build_object('type', 'text', 'text', x) ORDER BY i)
                                    FROM jsonb_array_elements_text(b.message->'p') WITH ORDINALITY p(x, i)))))
                      END,
               'biz_opaque_callback_data', core.opaque_data(o.campaign_id, o.outbound_id))),
           (s->>0)::timestamptz + make_interval(secs => (b.ord - 1 - (s->>2)::integer) / (s->>1)::double precision),
           o.attempts::integer
    FROM unnest(v_all) WITH ORDINALITY b(queue_name, msg_id, read_ct, outbound_id, message, ord)
    JOIN core.outbound_messages o ON o.outbound_id = b.outbound_id
    JOIN core.wa_numbers n ON n.number_id = o.number_id
    LEFT JOIN core.campaign_templates ct ON ct.campaign_id = o.campaign_id AND ct.variant = o.variant
    LEFT JOIN core.templates t ON t.template_id = ct.template_id
    CROSS JOIN LATERAL (SELECT v_starts->(n.number_id::text)) x(s)
    ORDER BY b.ord;
END
$$;
COMMENT ON FUNCTION api.claim_sends(text, integer, timestamptz) IS
    'Claims up to p_max messages for worker p_worker within each number''s rate (replies first, then running campaigns in equal shares) and returns rendered Graph API requests with the time each may be sent (send_at); they stay invisible to other workers for the claim timeout. A redelivered message that a status already settled is dropped, not resent. p_now is the time of the claim (NULL: the clock).';

-- Store the results of sent requests. p_results is a JSON array of
-- {outbound_id, queue_name, msg_id, wamid, message_status, error_code, http_status,
-- error_message}; a result with a wamid is a success. Errors are handled by Meta's
-- error.code (core.meta_error_codes): transient ones come back after a backoff,
-- throughput errors halve the number's rate, auth/payment/template errors pause the
-- campaign and return its message to the queue, permanent ones fail the message.
-- {outbound_id, queue_name, msg_id, "sent": false} hands back a message the worker
-- never POSTed (it held it for a number Meta just throttled): it comes back to the
-- queue once the throttle hold is over, its attempt not counted.
-- p_now is the time of the report (NULL: the clock); tests pass it instead of waiting.
CREATE OR REPLACE FUNCTION api.report_sends(p_results jsonb, p_now timestamptz DEFAULT NULL) RETURNS api.report_result
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_settings core.settings;
    v_now timestamptz := coalesce(p_now, clock_timestamp());
    v_hold interval;
    v_result api.report_result := ROW(0, 0, 0, 0, 0);
    v_paused bigint[];
    v_touched bigint[];
    v_early integer;
    v_noticed integer;
BEGIN
    IF jsonb_typeof(p_results) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'results must be a JSON array' USING ERRCODE = 'PW100',
            HINT = 'One object per claimed message: outbound_id, queue_name, msg_id, wamid or error_code.';
    END IF;
    SELECT * INTO v_settings FROM core.settings;
    v_hold := make_interval(secs => v_settings.throttle_hold_ms / 1000.0);

    DROP TABLE IF EXISTS pg_temp.send_results;
    CREATE TEMP TABLE send_results ON COMMIT DROP AS
    SELECT r.*, o.state, o.attempts, o.campaign_id, o.number_id, c.status AS campaign_status,
           e.category, e.retryable, e.alert, e.pauses_campaign, e.throttles,
           CASE
               WHEN o.outbound_id IS NULL THEN 'ignored'
               -- A message reported twice in one batch (sent twice after an expired claim)
               -- is applied once, its success first; the rest are ignored.
               WHEN row_number() OVER (PARTITION BY r.outbound_id ORDER BY r.wamid IS NULL) > 1 THEN 'ignored'
               -- A status webhook may have moved the message on before this report.
               WHEN r.wamid IS NOT NULL AND (o.state = 'in_flight' OR o.wamid IS NULL) THEN 'accepted'
               WHEN o.state <> 'in_flight' THEN 'ignored'
               WHEN r.sent IS FALSE THEN 'returned'
               -- A read receipt (inbox.sql) is answered {"success": true}, without a wamid.
               WHEN o.kind = 'receipt' AND r.error_code IS NULL AND r.http_status BETWEEN 200 AND 299 THEN 'receipt'
               WHEN e.pauses_campaign AND o.campaign_id IS NOT NULL THEN 'paused'
               WHEN e.throttles THEN 'throttled'
               WHEN e.retryable AND o.attempts < v_settings.max_attempts THEN 'retried'
               ELSE 'failed'
           END AS outcome
    FROM jsonb_to_recordset(p_results) AS r(outbound_id bigint, queue_name text, msg_id bigint, wamid text,
                                            message_status text, error_code integer, http_status integer,
                                            error_message text, sent boolean)
    LEFT JOIN core.outbound_messages o ON o.outbound_id = r.outbound_id
    LEFT JOIN core.campaigns c ON c.campaign_id = o.campaign_id
    LEFT JOIN LATERAL core.meta_error(r.error_code) e ON r.wamid IS NULL;

    -- Successes: the message moves forward (a status may have moved it already), and
    -- statuses that arrived before this report are matched now.
    PERFORM core.advance_outbound(array_agg(outbound_id), array_fill('accepted'::text, ARRAY[count(*)::int]),
                                  array_fill(v_now, ARRAY[count(*)::int]), array_agg(wamid))
    FROM pg_temp.send_results WHERE wamid IS NOT NULL AND outbound_id IS NOT NULL;
    PERFORM core.advance_outbound(array_agg(outbound_id), array_fill('accepted'::text, ARRAY[count(*)::int]),
                                  array_fill(v_now, ARRAY[count(*)::int]))
    FROM pg_temp.send_results WHERE outcome = 'receipt';
    WITH early AS (
        UPDATE core.status_events se SET outbound_id = r.outbound_id
        FROM pg_temp.send_results r
        WHERE r.wamid IS NOT NULL AND se.wamid = r.wamid AND se.outbound_id IS NULL
          AND se.number_id = r.number_id       -- only events that came through its number
        RETURNING se.outbound_id, se.status, se.occurred_at, se.error_code
    )
    SELECT core.advance_outbound(array_agg(outbound_id), array_agg(status), array_agg(occurred_at),
                                 NULL, array_agg(error_code))
    INTO v_early FROM early;

    -- Back to the queue: transient errors after a jittered backoff, throughput errors
    -- shortly, messages never sent when the throttle hold is over, paused campaigns'
    -- messages at once (the campaign is not read while paused).
    -- A message of a campaign cancelled while it was in flight does not come back: it is
    -- cancelled and counted as cancel_campaign counts the ones it withdraws.
    WITH back AS (
        UPDATE core.outbound_messages o SET
            state = CASE WHEN r.campaign_status = 'cancelled' THEN 'cancelled' ELSE 'queued' END,
            attempts = CASE WHEN r.outcome IN ('paused', 'throttled', 'returned') THEN o.attempts - 1 ELSE o.attempts END,
            -- A message handed back unsent keeps the error of its last real attempt. An
            -- answer without Meta's error object is -2, as when it finally fails.
            error_code = CASE WHEN r.outcome = 'returned' THEN o.error_code ELSE coalesce(r.error_code, -2) END,
            error_category = CASE WHEN r.outcome = 'returned' THEN o.error_category ELSE r.category END,
            error_detail = CASE WHEN r.outcome = 'returned' THEN o.error_detail ELSE left(r.error_message, 500) END
        FROM pg_temp.send_results r
        WHERE o.outbound_id = r.outbound_id AND r.outcome IN ('retried', 'throttled', 'paused', 'returned')
          -- Re-checked on the locked row: a concurrent report may have settled it meanwhile.
          AND o.state = 'in_flight'
        RETURNING o.campaign_id, o.state
    )
    UPDATE core.campaigns c SET cancelled = c.cancelled + b.n
    FROM (SELECT campaign_id, count(*)::int AS n FROM back WHERE state = 'cancelled' GROUP BY campaign_id) b
    WHERE c.campaign_id = b.campaign_id;
    PERFORM core.delay_messages(r.queue_name, array_agg(r.msg_id), array_agg(
                CASE r.outcome
                    WHEN 'paused' THEN 0
                    WHEN 'throttled' THEN 1 + random()
                    WHEN 'returned' THEN v_settings.throttle_hold_ms / 1000.0
                    ELSE v_settings.retry_backoff_s[least(r.attempts, cardinality(v_settings.retry_backoff_s))]
                         * (0.8 + 0.4 * random())
                END), v_now)
    FROM pg_temp.send_results r
    WHERE r.outcome IN ('retried', 'throttled', 'paused', 'returned') AND r.campaign_status IS DISTINCT FROM 'cancelled'
    GROUP BY r.queue_name;
    PERFORM pgmq.delete(queue_name, array_agg(msg_id)) FROM pg_temp.send_results
    WHERE outcome IN ('retried', 'throttled', 'paused', 'returned') AND campaign_status = 'cancelled' GROUP BY queue_name;

    -- Permanent failures.
    PERFORM core.advance_outbound(array_agg(outbound_id), array_fill('failed'::text, ARRAY[count(*)::int]),
                                  array_fill(v_now, ARRAY[count(*)::int]), NULL,
                                  array_agg(coalesce(error_code, -2)), array_agg(left(error_message, 500)))
    FROM pg_temp.send_results WHERE outcome = 'failed';

    -- Done with the queue: successes are deleted, failures archived for history.
    PERFORM pgmq.delete(queue_name, array_agg(msg_id))
    FROM pg_temp.send_results WHERE (wamid IS NOT NULL AND outbound_id IS NOT NULL) OR outcome = 'receipt'
    GROUP BY queue_name;
    PERFORM pgmq.archive(queue_name, array_agg(msg_id))
    FROM pg_temp.send_results WHERE outcome = 'failed' GROUP BY queue_name;

    -- Campaigns that must not burn their list: paused, and an operator told.
    WITH paused AS (
        UPDATE core.campaigns c SET status = 'paused',
            pause_reason = format('Meta error %s: %s', r.error_code, r.title)
        FROM (SELECT DISTINCT ON (sr.campaign_id) sr.campaign_id, sr.error_code, (core.meta_error(sr.error_code)).title
              FROM pg_temp.send_results sr WHERE sr.outcome = 'paused' ORDER BY sr.campaign_id) r
        WHERE c.campaign_id = r.campaign_id AND c.status = 'running'
        RETURNING c.campaign_id, c.tenant_id, c.name, c.pause_reason
    )
    SELECT array_agg(campaign_id) INTO v_paused FROM (
        SELECT p.campaign_id, core.notify(p.tenant_id, 'campaign_paused', 'critical',
                   format('Campaign "%s" paused: %s', p.name, p.pause_reason),
                   jsonb_build_object('campaign_id', p.campaign_id))
        FROM paused p) n;
    -- Errors an operator must see that do not pause anything: one notice per number,
    -- code and hour, which later batches count into (and mark unread again), instead of
    -- a new notice per report, several a second while the error lasts.
    WITH noticed AS (
        INSERT INTO core.notifications AS nt (tenant_id, kind, severity, message, details, dedupe_key)
        SELECT n.tenant_id, 'send_error', 'warning',
               format('Meta error %s (%s) on %s message(s) from number %s since %s',
                      r.error_code, r.category, r.cnt, n.phone_number_id, to_char(r.hour, 'YYYY-MM-DD HH24:00 TZ')),
               jsonb_build_object('error_code', r.error_code, 'number_id', r.number_id, 'messages', r.cnt,
                                  'category', r.category, 'phone_number_id', n.phone_number_id, 'since', r.hour),
               format('send_error|%s|%s|%s', r.number_id, r.error_code, r.hour)
        FROM (SELECT number_id, error_code, category, count(*) AS cnt, date_trunc('hour', v_now) AS hour
              FROM pg_temp.send_results
              WHERE alert AND outcome IN ('retried', 'failed') GROUP BY number_id, error_code, category) r
        JOIN core.wa_numbers n ON n.number_id = r.number_id
        ON CONFLICT (tenant_id, dedupe_key) WHERE dedupe_key IS NOT NULL DO UPDATE SET
            details = nt.details || jsonb_build_object('messages', (nt.details->>'messages')::bigint + (excluded.details->>'messages')::bigint),
            message = format('Meta error %s (%s) on %s message(s) from number %s since %s',
                             excluded.details->>'error_code', excluded.details->>'category',
                             (nt.details->>'messages')::bigint + (excluded.details->>'messages')::bigint,
                             excluded.details->>'phone_number_id',
                             to_char((excluded.details->>'since')::timestamptz, 'YYYY-MM-DD HH24:00 TZ')),
            read_at = NULL
        RETURNING nt.tenant_id
    )
    SELECT count(pg_notify('pgwa_notification', tenant_id::text)) INTO v_noticed FROM noticed;

    -- AIMD per number. Halve on throughput errors, once per throttle event: the sends
    -- already in flight when Meta said stop report the same error within the second
    -- after, and halving for each would collapse the rate. A throttled number sends
    -- nothing for the throttle hold (its workers hand back what they hold for it, and
    -- it resumes from an empty schedule, at the halved pace). Grow back additively by
    -- two fifths of the limit per second of clean sending (a batch with sends accepted and no
    -- error; a batch of ignored duplicates is no evidence), counted from the end of the
    -- hold. The pace never exceeds the number's limit.
    UPDATE core.wa_numbers n SET
        rate_mps = CASE WHEN r.throttled > 0 THEN greatest(1, n.rate_mps / 2)
                        ELSE least(n.throughput_mps, n.rate_mps + n.throughput_mps * 0.4
                             * least(1, greatest(0, extract(epoch FROM v_now - coalesce(n.rate_changed_at, '-infinity'))))) END,
        rate_changed_at = CASE WHEN r.throttled > 0 THEN v_now + v_hold ELSE v_now END,
        throttled_at = CASE WHEN r.throttled > 0 THEN v_now ELSE n.throttled_at END,
        send_tat = CASE WHEN r.throttled > 0 THEN greatest(n.send_tat, v_now + v_hold) ELSE n.send_tat END
    FROM (SELECT number_id, count(*) FILTER (WHERE outcome = 'throttled') AS throttled,
                 count(*) FILTER (WHERE outcome IN ('retried', 'failed')) AS errors,
                 count(*) FILTER (WHERE outcome = 'accepted') AS accepted
          FROM pg_temp.send_results WHERE number_id IS NOT NULL GROUP BY number_id) r
    WHERE n.number_id = r.number_id
      AND CASE WHEN r.throttled > 0 THEN coalesce(n.throttled_at, '-infinity') < v_now - interval '1 second'
               ELSE r.errors = 0 AND r.accepted > 0 AND n.rate_mps < n.throughput_mps
                    AND v_now > coalesce(n.rate_changed_at, '-infinity') END;

    INSERT INTO core.send_minutes AS m (number_id, minute, accepted, retried, failed, throttled)
    SELECT number_id, date_trunc('minute', v_now),
           count(*) FILTER (WHERE outcome = 'accepted'), count(*) FILTER (WHERE outcome = 'retried'),
           count(*) FILTER (WHERE outcome = 'failed'), count(*) FILTER (WHERE outcome = 'throttled')
    FROM pg_temp.send_results WHERE number_id IS NOT NULL GROUP BY number_id
    ON CONFLICT (number_id, minute) DO UPDATE SET
        accepted = m.accepted + excluded.accepted, retried = m.retried + excluded.retried,
        failed = m.failed + excluded.failed, throttled = m.throttled + excluded.throttled;

    SELECT array_agg(DISTINCT campaign_id) INTO v_touched FROM pg_temp.send_results WHERE campaign_id IS NOT NULL;
    IF v_touched IS NOT NULL THEN
        PERFORM core.complete_campaigns(v_touched, v_now);
    END IF;

    SELECT count(*) FILTER (WHERE outcome IN ('accepted', 'receipt')),
           count(*) FILTER (WHERE outcome IN ('retried', 'throttled', 'returned')),
           count(*) FILTER (WHERE outcome = 'failed'),
           count(*) FILTER (WHERE outcome = 'paused'),
           count(*) FILTER (WHERE outcome = 'ignored')
    INTO v_result FROM pg_temp.send_results;
    RETURN v_result;
END
$$;
COMMENT ON FUNCTION api.report_sends(jsonb, timestamptz) IS
    'Stores the results of claimed sends (JSON array of {outbound_id, queue_name, msg_id, wamid, message_status, error_code, http_status, error_message}, or {outbound_id, queue_name, msg_id, "sent": false} for a message handed back unsent): wamids and accepted state, retries with backoff, permanent failures, campaign pauses with a notification on auth/payment/template errors, AIMD rate control and completion. Returns (accepted, retried, failed, paused, ignored); retried counts every message back in the queue. p_now is the time of the report (NULL: the clock). Raises PW100 when p_results is not an array.';

-- What the worker needs of Meta's pacing rules, so that it copies none: the error codes
-- that throttle a number (core.meta_error_codes) and how long the number then sends
-- nothing (core.settings). The worker holds a throttled number's lane as long.
CREATE OR REPLACE FUNCTION api.send_policy() RETURNS api.send_policy
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $$
    SELECT s.throttle_hold_ms, ARRAY(SELECT e.code FROM core.meta_error_codes e WHERE e.throttles ORDER BY e.code)
    FROM core.settings s
$$;
COMMENT ON FUNCTION api.send_policy() IS
    'Returns what a worker must know of Meta''s pacing rules: the error codes that throttle a number (throttle_codes) and how long a throttled number sends nothing (throttle_hold_ms).';

-- Make queue messages visible again after per-message delays (seconds) from p_now
-- (NULL: the clock).
CREATE OR REPLACE FUNCTION core.delay_messages(p_queue text, p_msg_ids bigint[], p_delays double precision[],
                                               p_now timestamptz DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SET search_path = '' AS $$
BEGIN
    EXECUTE format('UPDATE pgmq.%I q SET vt = $3 + make_interval(secs => d.delay)
                    FROM unnest($1, $2) d(msg_id, delay) WHERE q.msg_id = d.msg_id', 'q_' || p_queue)
    USING p_msg_ids, p_delays, coalesce(p_now, clock_timestamp());
END
$$;

-- Raise a notification for a tenant's operators; returns its id.
CREATE OR REPLACE FUNCTION core.notify(p_tenant_id bigint, p_kind text, p_severity text, p_message text,
                                       p_details jsonb DEFAULT '{}') RETURNS bigint
LANGUAGE sql SET search_path = '' AS $$
    WITH n AS (
        INSERT INTO core.notifications (tenant_id, kind, severity, message, details)
        VALUES (p_tenant_id, p_kind, p_severity, p_message, p_details)
        RETURNING notification_id
    )
    SELECT notification_id FROM n, LATERAL pg_notify('pgwa_notification', p_tenant_id::text) x
$$;

-- The periodic sweep (pg_cron, every minute): start due campaigns, complete finished
-- ones, and drop the queues of campaigns finished a day ago. Returns a summary.
CREATE OR REPLACE FUNCTION core.sweep_sends() RETURNS jsonb
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_started integer := core.start_due_campaigns();
    v_completed bigint[] := core.complete_campaigns(NULL);
    v_queue text;
    v_dropped integer := 0;
    v_settled integer;
BEGIN
    -- A message a worker held when its campaign was cancelled, whose worker then died,
    -- would stay in flight for ever (a cancelled campaign is never read again).
    WITH stuck AS (
        UPDATE core.outbound_messages o SET state = 'cancelled'
        FROM core.campaigns c, core.settings s
        WHERE c.status = 'cancelled' AND o.campaign_id = c.campaign_id AND o.state = 'in_flight'
          AND o.claimed_at < now() - make_interval(secs => 2 * s.claim_timeout_s)
        RETURNING o.campaign_id
    ), counted AS (
        UPDATE core.campaigns c SET cancelled = c.cancelled + k.n
        FROM (SELECT campaign_id, count(*)::integer AS n FROM stuck GROUP BY campaign_id) k
        WHERE c.campaign_id = k.campaign_id
        RETURNING k.n
    )
    SELECT coalesce(sum(n), 0) INTO v_settled FROM counted;
    FOR v_queue IN
        SELECT m.queue_name FROM pgmq.meta m
        JOIN core.campaigns c ON m.queue_name = 'c_' || c.campaign_id
        WHERE c.status IN ('completed', 'cancelled')
          AND coalesce(c.completed_at, c.cancelled_at) < now() - interval '1 day'
    LOOP
        PERFORM pgmq.drop_queue(v_queue);
        v_dropped := v_dropped + 1;
    END LOOP;
    RETURN jsonb_build_object('started', v_started, 'completed', cardinality(v_completed),
                              'stuck_cancelled', v_settled, 'queues_dropped', v_dropped);
END
$$;

REVOKE ALL ON FUNCTION api.claim_sends(text, integer, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.report_sends(jsonb, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.send_policy() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.claim_sends(text, integer, timestamptz) TO pgwa_worker;
GRANT EXECUTE ON FUNCTION api.report_sends(jsonb, timestamptz) TO pgwa_worker;
GRANT EXECUTE ON FUNCTION api.send_policy() TO pgwa_worker;
