-- The send path: claim_sends hands workers paced, rendered requests; report_sends
-- takes their results. Two round trips per batch, whatever the batch size.

-- Read up to p_max messages from one queue with the claim's visibility timeout. A
-- queue message is {"o": outbound_id, "b": request body} for a rendered message
-- (replies), or {"o", "t": recipient, "v": template variant, "p": [per-row values]}
-- for a campaign message, rendered when claimed (core.render_components; "p" are the
-- body parameters of a campaign made before render skeletons).
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
         RETURNING %2$L::text, m.msg_id, m.read_ct, (m.message->>''o'')::bigint, m.message', pgmq.format_table_name(p_queue, 'q'), p_queue)
    USING coalesce(p_now, clock_timestamp()), p_max, make_interval(secs => p_vt);
END
$$;

-- Up to p_budget messages of one number: its replies first, then its running campaigns
-- in equal shares, in a fresh order each claim (the first campaign's share is rounded
-- up, and at a budget below the campaign count a fixed order would starve the last ones).
CREATE OR REPLACE FUNCTION core.read_number(p_number_id bigint, p_budget integer, p_vt integer, p_now timestamptz)
RETURNS core.claimed[]
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_batch core.claimed[] := ARRAY(SELECT core.read_queue(core.reply_queue(p_number_id), p_vt, p_budget, p_now));
    v_campaigns bigint[];
    v_more bigint[] := '{}';
    v_read core.claimed[];
    v_i integer := 1;
    v_got integer;
BEGIN
    SELECT array_agg(campaign_id ORDER BY random()) INTO v_campaigns
    FROM core.campaigns WHERE number_id = p_number_id AND status = 'running';
    WHILE v_i <= coalesce(cardinality(v_campaigns), 0) AND cardinality(v_batch) < p_budget LOOP
        -- An equal share of what is left; a campaign with less leaves the rest to the next.
        v_got := ceil((p_budget - cardinality(v_batch))::numeric / (cardinality(v_campaigns) - v_i + 1));
        v_read := ARRAY(SELECT core.read_queue(core.campaign_queue(v_campaigns[v_i]), p_vt, v_got, p_now));
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
    RETURN v_batch;
END
$$;

-- Of messages just read, the ones to send, marked in flight. Campaign messages of
-- contacts who opted out after their campaign was created are cancelled (bots.sql);
-- campaign messages to new users beyond the portfolio's messaging limit wait
-- (limits.sql). A
-- message redelivered after an expired claim (its worker died) but settled meanwhile by
-- a status webhook or a late report, or cancelled, is dropped from its queue instead of
-- messaging the contact twice; one whose last send lost its answer waits until the webhook
-- stream has caught up past it (receiver.sql).
CREATE OR REPLACE FUNCTION core.take_in_flight(p_batch core.claimed[], p_number core.wa_numbers, p_now timestamptz)
RETURNS core.claimed[]
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_dropped integer;
    v_batch core.claimed[];
BEGIN
    IF cardinality(p_batch) = 0 THEN
        RETURN p_batch;
    END IF;
    PERFORM core.cancel_opted_out(p_batch, p_number.tenant_id, p_number.number_id);
    WITH settled AS (
        SELECT b.queue_name, b.msg_id FROM unnest(p_batch) b
        LEFT JOIN core.outbound_messages o ON o.outbound_id = b.outbound_id
        WHERE o.state IS NULL OR o.state NOT IN ('queued', 'in_flight')
    )
    SELECT count(*) INTO v_dropped FROM (
        SELECT pgmq.delete(s.queue_name, array_agg(s.msg_id)) FROM settled s GROUP BY s.queue_name) d;
    v_batch := CASE WHEN v_dropped = 0 THEN p_batch
                    ELSE ARRAY(SELECT b FROM unnest(p_batch) b
                               JOIN core.outbound_messages o ON o.outbound_id = b.outbound_id
                               WHERE o.state IN ('queued', 'in_flight')) END;
    v_batch := core.hold_unsure(v_batch, p_number.number_id, p_now);
    v_batch := core.hold_outside_window(v_batch, p_number.number_id, p_now);
    IF p_number.portfolio_id IS NOT NULL THEN
        v_batch := core.spend_budget(v_batch, p_number.portfolio_id, p_now);
    END IF;
    -- A message withheld under the per-user marketing cap and now tried again no longer
    -- counts as retrying (core.defer_capped).
    WITH taken AS (
        SELECT o.outbound_id, o.campaign_id,
               o.state = 'queued' AND o.deferrals > 0 AND e.backoff = 'next_day' AS was_capped
        FROM unnest(v_batch) b
        JOIN core.outbound_messages o ON o.outbound_id = b.outbound_id
        LEFT JOIN core.meta_error_codes e ON e.code = o.error_code
    ), flown AS (
        UPDATE core.outbound_messages o SET state = 'in_flight', attempts = o.attempts + 1, claimed_at = p_now,
                                            unsure_since = NULL
        FROM taken t WHERE o.outbound_id = t.outbound_id AND o.state IN ('queued', 'in_flight')
        RETURNING t.campaign_id, t.was_capped
    )
    UPDATE core.campaigns c SET retrying = greatest(c.retrying - k.n, 0)
    FROM (SELECT campaign_id, count(*)::integer AS n FROM flown WHERE was_capped GROUP BY campaign_id) k
    WHERE c.campaign_id = k.campaign_id;
    RETURN v_batch;
END
$$;

-- Meta's components array of one campaign message: the variant's render skeleton
-- (core.map_template) with each slot {"$slot": n, "$path": "{text}"} filled with the
-- n-th (0-based) of the row's values p_values (the queue message's "p").
-- A set-returning function of one row without a SET clause, so that the planner inlines
-- it into the claim as a lateral subquery (see tests/test_catalog.py): called per row,
-- an SQL function that is not inlined cost half the rendering again. Scalar callers
-- read it as (SELECT components FROM core.render_components(...) components).
CREATE OR REPLACE FUNCTION core.render_components(p_skeleton jsonb, p_values jsonb) RETURNS SETOF jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE ROWS 1 AS $$
    SELECT coalesce(pg_catalog.jsonb_agg(
               CASE WHEN c.value OPERATOR(pg_catalog.?) 'parameters'
                    THEN pg_catalog.jsonb_set(c.value, '{parameters}', (
                        SELECT pg_catalog.jsonb_agg(
                                   CASE WHEN p.value OPERATOR(pg_catalog.?) '$slot'
                                        THEN pg_catalog.jsonb_set(
                                                 p.value OPERATOR(pg_catalog.-) '$slot' OPERATOR(pg_catalog.-) '$path',
                                                 (p.value OPERATOR(pg_catalog.->>) '$path')::pg_catalog.text[],
                                                 coalesce(p_values OPERATOR(pg_catalog.->)
                                                              ((p.value OPERATOR(pg_catalog.->>) '$slot')::pg_catalog.int4),
                                                          '""'))
                                        ELSE p.value END ORDER BY p.ordinality)
                        FROM pg_catalog.jsonb_array_elements(c.value OPERATOR(pg_catalog.->) 'parameters')
                             WITH ORDINALITY p))
                    ELSE c.value END ORDER BY c.ordinality), '[]')
    FROM pg_catalog.jsonb_array_elements(p_skeleton) WITH ORDINALITY c
$$;

-- A claim or a release names its worker: one at a time sends a number's messages, and
-- an unnamed worker's hold could not be told from another's.
CREATE OR REPLACE FUNCTION core.require_worker(p_worker text) RETURNS void
LANGUAGE plpgsql SET search_path = '' AS $$
BEGIN
    IF coalesce(btrim(p_worker), '') = '' THEN
        RAISE EXCEPTION 'worker must be named' USING ERRCODE = 'PW100',
            HINT = 'p_worker: a name unique to the worker process (PGWA_WORKER_NAME); one worker at a time sends a number''s messages.';
    END IF;
END
$$;

-- Take tokens from each number's rate (a GCRA: the number's theoretical arrival time
-- advances 1/rate per message, never more than the pace horizon ahead of now), read
-- that many messages (replies first, then the number's running campaigns in equal
-- shares), mark them in flight, and return ready-to-POST requests, each with the time
-- it may be sent. One worker at a time claims a number: the one whose claim last took
-- its messages, until a pace horizon after the last of them (wa_numbers.sender). A message whose claim expired (its worker died) is resent only if
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
    v_inbound bigint;
    v_batch core.claimed[];
    v_all core.claimed[] := '{}';
    v_starts jsonb := '{}';
BEGIN
    PERFORM core.require_worker(p_worker);
    SELECT * INTO v_settings FROM core.settings;
    v_horizon := make_interval(secs => v_settings.pace_horizon_ms / 1000.0);
    v_vt := v_settings.claim_timeout_s + ceil(v_settings.pace_horizon_ms / 1000.0)::integer;
    PERFORM core.start_due_campaigns(v_now);

    FOR v_number IN
        SELECT n.* FROM core.wa_numbers n
        WHERE n.send_tat < v_now + v_horizon AND n.paused_reason IS NULL
          -- Another worker sends this number's messages (migration 0124): its own pacer
          -- spaces them, and two workers' late sends would overlap in Meta's second.
          AND (n.sender_until IS NULL OR n.sender_until <= v_now OR n.sender = p_worker)
        ORDER BY n.send_tat, n.number_id
        -- NO KEY UPDATE: claims still exclude each other (and a report's pace update), but
        -- not the FOR KEY SHARE that a foreign key check takes (an inbox row, a
        -- conversation): FOR UPDATE skipped a number for as long as any webhook batch
        -- touching it was open, and its replies waited for a later claim.
        FOR NO KEY UPDATE SKIP LOCKED
    LOOP
        EXIT WHEN v_left <= 0;
        v_rate := least(v_number.rate_mps, v_number.throughput_mps * v_settings.rate_headroom);
        -- Inbound messages take the number's throughput too (Meta counts both within a
        -- second): those stored since the last claim move the schedule on by their share
        -- of a second, from no earlier than a second ago (a number that has been idle for
        -- a second has room for them) and by at most a second (the window they count in).
        WITH taken AS (DELETE FROM core.number_inbound i WHERE i.number_id = v_number.number_id
                       RETURNING i.messages)
        SELECT sum(t.messages) INTO v_inbound FROM taken t;
        IF v_inbound > 0 THEN
            v_number.send_tat := greatest(v_number.send_tat, v_now - interval '1 second')
                                 + make_interval(secs => least(v_inbound / v_rate, 1));
            UPDATE core.wa_numbers SET send_tat = v_number.send_tat WHERE number_id = v_number.number_id;
        END IF;
        v_start := greatest(v_now, v_number.send_tat);
        -- A number whose time has come sends at least one, or a rate AIMD halved below one
        -- send per horizon would never send again (and never report the clean batch that
        -- grows it back).
        v_budget := least(v_left, greatest(floor(extract(epoch FROM (v_now + v_horizon - v_start)) * v_rate)::integer,
                                           CASE WHEN v_number.send_tat <= v_now THEN 1 ELSE 0 END));
        CONTINUE WHEN v_budget <= 0;

        v_batch := core.take_in_flight(core.read_number(v_number.number_id, v_budget, v_vt, v_now), v_number, v_now);
        CONTINUE WHEN cardinality(v_batch) = 0;

        -- This worker is the number's sender until a horizon after its last send's time.
        v_number.send_tat := v_start + make_interval(secs => cardinality(v_batch) / v_rate);
        UPDATE core.wa_numbers
        SET send_tat = v_number.send_tat, sender = p_worker, sender_until = v_number.send_tat + v_horizon
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
                   -- The variant's render skeleton filled with the row's values; a
                   -- template without parameters has no components.
                   || CASE WHEN jsonb_typeof(ct.render) = 'array' THEN
                               CASE WHEN jsonb_array_length(ct.render) = 0 THEN '{}'::jsonb
                                    ELSE jsonb_build_object('components', rc.components) END
                   -- A campaign made before render skeletons: "p" are its body parameters
                   -- (and never a jsonb_array_length error that would fail every claim).
                           WHEN coalesce(jsonb_typeof(b.message->'p'), 'null') <> 'array' THEN '{}'::jsonb
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
    -- Only an array is a skeleton (the CASE above reads anything else as none): a lateral
    -- call runs for every row, and one render that is not an array would fail the claim.
    LEFT JOIN LATERAL core.render_components(CASE WHEN jsonb_typeof(ct.render) = 'array' THEN ct.render END,
                                             b.message->'p') rc(components) ON true
    CROSS JOIN LATERAL (SELECT v_starts->(n.number_id::text)) x(s)
    ORDER BY b.ord;
END
$$;
COMMENT ON FUNCTION api.claim_sends(text, integer, timestamptz) IS
    'Claims up to p_max messages for worker p_worker within each number''s rate (replies first, then running campaigns in equal shares), of numbers no other worker is sending for (a worker whose claim takes a number''s messages sends them alone until a pace horizon after the last), and returns rendered Graph API requests with the time each may be sent (send_at); they stay invisible to other workers for the claim timeout. A redelivered message that a status already settled is dropped, not resent. p_now is the time of the claim (NULL: the clock). Raises PW100 when p_worker is empty.';

-- A worker that stops gives up the numbers it was sending for, once it sent what it
-- held, and so does one that cannot reach Meta, once it handed back what it held:
-- other workers take them at once (woken by NOTIFY pgwa_send) instead of when its hold
-- would have ended (wa_numbers.sender_until).
CREATE OR REPLACE FUNCTION api.release_numbers(p_worker text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_released integer;
BEGIN
    PERFORM core.require_worker(p_worker);
    WITH released AS (
        UPDATE core.wa_numbers SET sender = NULL, sender_until = NULL WHERE sender = p_worker
        RETURNING number_id
    )
    SELECT count(core.wake_sender(r.number_id) IS NULL) INTO v_released FROM released r;
    RETURN v_released;
END
$$;
COMMENT ON FUNCTION api.release_numbers(text) IS
    'Gives up the numbers worker p_worker was sending for (api.claim_sends hands a number''s messages to one worker at a time), so that other workers take them at once; called by a worker that stops, after it sent what it held, and by one that cannot reach Meta, after it handed back what it held. Returns how many it gave up. Raises PW100 when p_worker is empty.';

-- A worker behind its schedule (its event loop starved) may still hold a number's
-- messages when its hold on the number ends: the hold runs a pace horizon past the last
-- message's time, and only a claim that takes more renews it. At a campaign's end there
-- is nothing more to take, and the worker had to hand back what it still held, to be
-- claimed and sent again later. It asks instead, before its hold ends, to keep the
-- numbers it still holds messages for: each one it is still the sender of is kept a pace
-- horizon from now. One that another worker took meanwhile is not; the worker hands its
-- messages back. The schedule (send_tat) does not move: the messages kept were paced
-- when they were claimed.
CREATE OR REPLACE FUNCTION api.keep_numbers(p_worker text, p_phone_number_ids text[],
                                            p_now timestamptz DEFAULT NULL) RETURNS text[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, clock_timestamp());
    v_horizon interval;
    v_kept text[];
BEGIN
    PERFORM core.require_worker(p_worker);
    IF cardinality(p_phone_number_ids) > 10000 THEN
        RAISE EXCEPTION 'p_phone_number_ids: % numbers, at most 10000', cardinality(p_phone_number_ids)
            USING ERRCODE = 'PW100';
    END IF;
    SELECT make_interval(secs => s.pace_horizon_ms / 1000.0) INTO v_horizon FROM core.settings s;
    WITH mine AS (
        -- Never waited for: a claim or a report that holds one (a throttled number's
        -- pace) would keep the claim loop waiting, or deadlock with it. The worker asks
        -- again a quarter horizon later. A row locked here is still this worker's: the
        -- lock rechecks the sender on its latest version, and holds it until the update.
        SELECT n.number_id FROM core.wa_numbers n
        WHERE n.phone_number_id = ANY (p_phone_number_ids) AND n.sender = p_worker
        FOR NO KEY UPDATE SKIP LOCKED
    ), kept AS (
        UPDATE core.wa_numbers n SET sender_until = greatest(n.sender_until, v_now + v_horizon)
        FROM mine m WHERE n.number_id = m.number_id
        RETURNING n.phone_number_id
    )
    SELECT coalesce(array_agg(k.phone_number_id ORDER BY k.phone_number_id), '{}') INTO v_kept FROM kept k;
    RETURN v_kept;
END
$$;
COMMENT ON FUNCTION api.keep_numbers(text, text[], timestamptz) IS
    'Keeps worker p_worker the sender of the numbers p_phone_number_ids (Meta''s phone number ids) for a pace horizon from p_now (NULL: the clock), so that a worker behind its schedule sends what it still holds instead of handing it back when its hold ends (api.claim_sends renews a hold only with a claim that takes messages). Only numbers p_worker is still the sender of are kept, and none that another transaction holds locked (never waited for; ask again); returns the ids kept. Raises PW100 when p_worker is empty or for more than 10000 ids.';

-- Store the results of sent requests. p_results is a JSON array of
-- {outbound_id, queue_name, msg_id, wamid, message_status, error_code, http_status,
-- error_message, retry_after_s, unsure}; a result with a wamid is a success. Errors are
-- handled by Meta's error.code (core.meta_error_codes, its backoff column): transient
-- ones come back after a backoff, throughput errors halve the number's rate, account
-- call limits hold the WABA's or app's numbers for retry_after_s (Meta's usage header),
-- pair-rate and marketing-cap errors defer only that recipient, auth/payment/template
-- errors pause the campaign and return its message to the queue, permanent ones fail
-- the message. unsure: the request went out and its answer was lost (core.hold_unsure).
-- {outbound_id, queue_name, msg_id, "sent": false} hands back a message the worker
-- never POSTed (it held it for a number Meta just throttled): it comes back to the
-- queue once the throttle hold is over, its attempt not counted.
-- p_now is the time of the report (NULL: the clock); tests pass it instead of waiting.
--
-- Each result is classified once (core.classify_reports), then each step below applies
-- one outcome, each UPDATE guarded by the state the message must still be in.
CREATE OR REPLACE FUNCTION api.report_sends(p_results jsonb, p_now timestamptz DEFAULT NULL) RETURNS api.report_result
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, clock_timestamp());
    v_rows core.send_outcome[];
    v_touched bigint[];
BEGIN
    IF jsonb_typeof(p_results) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'results must be a JSON array' USING ERRCODE = 'PW100',
            HINT = 'One object per claimed message: outbound_id, queue_name, msg_id, wamid or error_code.';
    END IF;
    v_rows := core.classify_reports(p_results);

    PERFORM core.report_accepted(v_rows, v_now);
    PERFORM core.report_requeued(v_rows, v_now);
    PERFORM core.report_held(v_rows, v_now);
    PERFORM core.report_failed(v_rows, v_now);
    PERFORM core.report_paused(v_rows);
    PERFORM core.report_alerts(v_rows, v_now);
    PERFORM core.report_pace(v_rows, v_now);
    PERFORM core.report_minute(v_rows, v_now);
    v_touched := ARRAY(SELECT DISTINCT r.campaign_id FROM unnest(v_rows) r WHERE r.campaign_id IS NOT NULL);
    IF cardinality(v_touched) > 0 THEN
        PERFORM core.complete_campaigns(v_touched, v_now);
    END IF;

    RETURN (SELECT ROW(count(*) FILTER (WHERE r.outcome IN ('accepted', 'receipt')),
                       count(*) FILTER (WHERE r.outcome IN ('retried', 'throttled', 'held', 'deferred', 'returned')),
                       count(*) FILTER (WHERE r.outcome = 'failed'),
                       count(*) FILTER (WHERE r.outcome = 'paused'),
                       count(*) FILTER (WHERE r.outcome = 'ignored'))::api.report_result
            FROM unnest(v_rows) r);
END
$$;
COMMENT ON FUNCTION api.report_sends(jsonb, timestamptz) IS
    'Stores the results of claimed sends (JSON array of {outbound_id, queue_name, msg_id, wamid, message_status, error_code, http_status, error_message, retry_after_s (seconds until Meta gives access back, from X-Business-Use-Case-Usage), unsure (the request went out and its answer was lost)}, or {outbound_id, queue_name, msg_id, "sent": false} for a message handed back unsent): wamids and accepted state, retries with backoff, holds and deferrals as core.meta_error_codes.backoff says (none spends an attempt), permanent failures, campaign pauses with a notification on auth/payment/template errors, AIMD rate control and completion. Returns (accepted, retried, failed, paused, ignored); retried counts every message back in the queue. p_now is the time of the report (NULL: the clock). Raises PW100 when p_results is not an array.';

-- What each reported send becomes, decided once, in this order:
--   ignored    the message is unknown, reported twice in this batch (its success is
--              applied, the rest ignored), or no longer in flight (settled meanwhile);
--   accepted   Meta answered with a wamid (a status may have moved the message already);
--   returned   the worker never POSTed it (held for a throttled number);
--   receipt    a read receipt (inbox.sql) answered {"success": true}, without a wamid;
--   paused     an error that pauses the campaign (auth, payment, template);
--   throttled  the number's throughput was exceeded (backoff 'throttle');
--   held       the number, its WABA or its app may not send for a while (backoff
--              number_hold, waba_hold, app_hold): as long as Meta's usage header said
--              (retry_after_s), else the code's backoff_s;
--   deferred   only this recipient waits: 4^n seconds after the n-th pair-rate deferral
--              (backoff 'recipient', at most 16 times), a day under the marketing cap ('next_day', at most
--              core.settings.capped_retry_days times, then failed);
--   retried    a transient error, attempts left;
--   failed     anything else.
-- requeue_s is when a message comes back to its queue: a paused campaign's at once (the
-- campaign is not read while paused), a throttled one shortly, a returned one when the
-- throttle hold is over, a retried one after a jittered backoff.
CREATE OR REPLACE FUNCTION core.classify_reports(p_results jsonb) RETURNS core.send_outcome[]
LANGUAGE sql VOLATILE SET search_path = '' AS $$
    SELECT coalesce(array_agg(ROW(c.outbound_id, c.queue_name, c.msg_id, c.wamid, c.error_code, c.error_message,
                                  c.number_id, c.campaign_id, c.campaign_status, c.category, c.alert, c.backoff,
                                  c.outcome,
                                  CASE c.outcome
                                      WHEN 'paused' THEN 0
                                      WHEN 'throttled' THEN 1 + random()
                                      WHEN 'returned' THEN c.throttle_hold_ms / 1000.0
                                      WHEN 'held' THEN greatest(coalesce(c.retry_after_s, c.backoff_s), 1)
                                      WHEN 'deferred' THEN CASE c.backoff WHEN 'recipient' THEN least(power(c.backoff_s, c.deferrals), 3600)
                                                                          ELSE c.backoff_s END
                                      WHEN 'retried' THEN c.retry_backoff_s[least(c.attempts, cardinality(c.retry_backoff_s))]
                                                          * (0.8 + 0.4 * random())
                                  END,
                                  c.unsure IS TRUE)::core.send_outcome), '{}')
    FROM (
        SELECT r.*, o.attempts, o.deferrals, o.campaign_id, o.number_id, cp.status AS campaign_status,
               e.category, e.alert, e.backoff, e.backoff_s, s.throttle_hold_ms, s.retry_backoff_s,
               CASE
                   WHEN o.outbound_id IS NULL THEN 'ignored'
                   WHEN row_number() OVER (PARTITION BY r.outbound_id ORDER BY r.wamid IS NULL) > 1 THEN 'ignored'
                   WHEN r.wamid IS NOT NULL AND (o.state = 'in_flight' OR o.wamid IS NULL) THEN 'accepted'
                   WHEN o.state <> 'in_flight' THEN 'ignored'
                   WHEN r.sent IS FALSE THEN 'returned'
                   WHEN o.kind = 'receipt' AND r.error_code IS NULL AND r.http_status BETWEEN 200 AND 299 THEN 'receipt'
                   WHEN e.pauses_campaign AND o.campaign_id IS NOT NULL THEN 'paused'
                   WHEN e.backoff = 'throttle' THEN 'throttled'
                   WHEN e.backoff IN ('number_hold', 'waba_hold', 'app_hold') THEN 'held'
                   -- 4^0 .. 4^6 s, then hourly: about half a day of tries in all.
                   WHEN e.backoff = 'recipient' AND o.deferrals < 16 THEN 'deferred'
                   WHEN e.backoff = 'next_day' AND o.deferrals < s.capped_retry_days THEN 'deferred'
                   WHEN e.retryable AND e.backoff = 'retry' AND o.attempts < s.max_attempts THEN 'retried'
                   ELSE 'failed'
               END AS outcome
        FROM jsonb_to_recordset(p_results) AS r(outbound_id bigint, queue_name text, msg_id bigint, wamid text,
                                                error_code integer, http_status integer, error_message text,
                                                sent boolean, retry_after_s integer, unsure boolean)
        CROSS JOIN core.settings s
        LEFT JOIN core.outbound_messages o ON o.outbound_id = r.outbound_id
        LEFT JOIN core.campaigns cp ON cp.campaign_id = o.campaign_id
        -- Only a failure's code is looked up: the subquery (kept whole by OFFSET 0) makes
        -- the condition a one-time filter, where a join condition would still call the
        -- function for every accepted send.
        LEFT JOIN LATERAL (SELECT m.* FROM core.meta_error(r.error_code) m WHERE r.wamid IS NULL OFFSET 0) e ON true
    ) c
$$;

-- Successes (and read receipts) move forward, statuses that came before this report
-- are matched now, and their queue messages are done. A success reported for a message
-- settled meanwhile still records its wamid and accepted time (advance_outbound never
-- moves a message back).
CREATE OR REPLACE FUNCTION core.report_accepted(p_rows core.send_outcome[], p_now timestamptz) RETURNS void
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_ids bigint[];
    v_states text[];
    v_at timestamptz[];
    v_codes integer[];
BEGIN
    PERFORM core.advance_outbound(array_agg(r.outbound_id), array_fill('accepted'::text, ARRAY[count(*)::int]),
                                  array_fill(p_now, ARRAY[count(*)::int]), array_agg(r.wamid))
    FROM unnest(p_rows) r
    WHERE (r.wamid IS NOT NULL AND r.outbound_id IS NOT NULL) OR r.outcome = 'receipt'
    HAVING count(*) > 0;

    WITH early AS (
        UPDATE core.status_events se SET outbound_id = r.outbound_id
        FROM unnest(p_rows) r
        WHERE r.wamid IS NOT NULL AND se.wamid = r.wamid AND se.outbound_id IS NULL
          AND se.number_id = r.number_id       -- only events that came through its number
        RETURNING se.outbound_id, se.status, se.occurred_at, se.error_code
    )
    SELECT array_agg(outbound_id), array_agg(status), array_agg(occurred_at), array_agg(error_code)
    INTO v_ids, v_states, v_at, v_codes FROM early;
    -- A 131049 that came before this report (core.apply_statuses left it for it): the
    -- message is tried again a day later, not failed (limits.sql).
    PERFORM core.apply_matched_statuses(v_ids, v_states, v_at, v_codes);

    PERFORM pgmq.delete(r.queue_name, array_agg(r.msg_id))
    FROM unnest(p_rows) r
    WHERE (r.wamid IS NOT NULL AND r.outbound_id IS NOT NULL) OR r.outcome = 'receipt'
    GROUP BY r.queue_name;
END
$$;

-- Messages that come back: queued again (their attempt not counted unless the error was
-- transient), their queue message visible after requeue_s. A message of a campaign
-- cancelled while it was in flight does not come back: it is cancelled and counted as
-- cancel_campaign counts the ones it withdraws.
CREATE OR REPLACE FUNCTION core.report_requeued(p_rows core.send_outcome[], p_now timestamptz) RETURNS void
LANGUAGE plpgsql SET search_path = '' AS $$
BEGIN
    WITH back AS (
        UPDATE core.outbound_messages o SET
            state = CASE WHEN r.campaign_status = 'cancelled' THEN 'cancelled' ELSE 'queued' END,
            -- Only a transient error spends an attempt; the rest waited for something else.
            attempts = CASE WHEN r.outcome = 'retried' THEN o.attempts ELSE o.attempts - 1 END,
            deferrals = CASE WHEN r.outcome = 'deferred' THEN o.deferrals + 1 ELSE o.deferrals END,
            -- A message handed back unsent keeps the error of its last real attempt. An
            -- answer without Meta's error object is -2, as when it finally fails.
            error_code = CASE WHEN r.outcome = 'returned' THEN o.error_code ELSE coalesce(r.error_code, -2) END,
            error_category = CASE WHEN r.outcome = 'returned' THEN o.error_category ELSE r.category END,
            error_detail = CASE WHEN r.outcome = 'returned' THEN o.error_detail ELSE left(r.error_message, 500) END,
            -- The request went out and its answer was lost: Meta may have it. Resent only
            -- once the webhook stream has caught up past it (core.hold_unsure).
            unsure_since = CASE WHEN r.outcome = 'returned' THEN o.unsure_since
                                WHEN r.unsure THEN coalesce(o.unsure_since, o.claimed_at) END
        FROM unnest(p_rows) r
        WHERE r.requeue_s IS NOT NULL AND o.outbound_id = r.outbound_id
          AND o.state = 'in_flight'    -- a concurrent report or status may have settled it
        RETURNING o.campaign_id, o.state, r.outcome = 'deferred' AND r.backoff = 'next_day' AS capped
    )
    -- Withheld under the per-user marketing cap: retrying until tried again (take_in_flight).
    UPDATE core.campaigns c SET cancelled = c.cancelled + b.cancelled, retrying = c.retrying + b.capped
    FROM (SELECT campaign_id, count(*) FILTER (WHERE state = 'cancelled')::int AS cancelled,
                 count(*) FILTER (WHERE capped AND state = 'queued')::int AS capped
          FROM back WHERE campaign_id IS NOT NULL GROUP BY campaign_id) b
    WHERE c.campaign_id = b.campaign_id AND (b.cancelled, b.capped) <> (0, 0);

    PERFORM core.delay_messages(r.queue_name, array_agg(r.msg_id), array_agg(r.requeue_s), p_now)
    FROM unnest(p_rows) r
    WHERE r.requeue_s IS NOT NULL AND r.campaign_status IS DISTINCT FROM 'cancelled'
    GROUP BY r.queue_name;
    PERFORM pgmq.delete(r.queue_name, array_agg(r.msg_id))
    FROM unnest(p_rows) r
    WHERE r.requeue_s IS NOT NULL AND r.campaign_status = 'cancelled'
    GROUP BY r.queue_name;
END
$$;

-- Numbers Meta told to wait (outcome held): their schedule moves past the hold, so that
-- api.claim_sends skips them until then; the pace is untouched (it is not a throughput
-- error). 80007 holds every number of the WABA, 4 every number of the tenant's app.
CREATE OR REPLACE FUNCTION core.report_held(p_rows core.send_outcome[], p_now timestamptz) RETURNS void
LANGUAGE plpgsql SET search_path = '' AS $$
BEGIN
    UPDATE core.wa_numbers n SET send_tat = greatest(n.send_tat, p_now + make_interval(secs => h.hold_s))
    FROM (SELECT x.number_id, x.backoff, max(x.requeue_s) AS hold_s
          FROM unnest(p_rows) x WHERE x.outcome = 'held' GROUP BY x.number_id, x.backoff) h
    JOIN core.wa_numbers held ON held.number_id = h.number_id
    WHERE CASE h.backoff WHEN 'waba_hold' THEN n.tenant_id = held.tenant_id AND n.waba_id = held.waba_id
                         WHEN 'app_hold' THEN n.tenant_id = held.tenant_id
                         ELSE n.number_id = held.number_id END;
END
$$;

-- Permanent failures: the message fails, its queue message is archived for history.
CREATE OR REPLACE FUNCTION core.report_failed(p_rows core.send_outcome[], p_now timestamptz) RETURNS void
LANGUAGE plpgsql SET search_path = '' AS $$
BEGIN
    PERFORM core.advance_outbound(array_agg(r.outbound_id), array_fill('failed'::text, ARRAY[count(*)::int]),
                                  array_fill(p_now, ARRAY[count(*)::int]), NULL,
                                  array_agg(coalesce(r.error_code, -2)), array_agg(left(r.error_message, 500)))
    FROM unnest(p_rows) r WHERE r.outcome = 'failed'
    HAVING count(*) > 0;
    PERFORM pgmq.archive(r.queue_name, array_agg(r.msg_id))
    FROM unnest(p_rows) r WHERE r.outcome = 'failed'
    GROUP BY r.queue_name;
    PERFORM core.stop_marketing(array_agg(r.outbound_id), array_agg(r.error_code), p_now)
    FROM unnest(p_rows) r WHERE r.outcome = 'failed' AND r.error_code IS NOT NULL
    HAVING count(*) > 0;
END
$$;

-- Contacts whose messages failed with an error that says the user stopped marketing
-- messages from this business (core.meta_error_codes.stops_marketing: 131050), as an
-- answer or a failed status: marketing templates skip them from now on
-- (core.cancel_opted_out); utility templates and replies still reach them.
CREATE OR REPLACE FUNCTION core.stop_marketing(p_outbound_ids bigint[], p_error_codes integer[], p_at timestamptz)
RETURNS void
LANGUAGE sql SET search_path = '' AS $$
    UPDATE core.contacts c SET marketing_stopped_at = p_at, updated_at = p_at
    FROM unnest(p_outbound_ids, p_error_codes) f(outbound_id, error_code)
    JOIN core.meta_error_codes e ON e.code = f.error_code AND e.stops_marketing
    JOIN core.outbound_messages o ON o.outbound_id = f.outbound_id
    WHERE c.contact_id = o.contact_id AND c.marketing_stopped_at IS NULL;
$$;

-- Pause the running campaigns of these messages for the Meta errors they met (the
-- first message of each campaign gives the reason), and tell the operator. A template
-- error (132000 parameter count, 132012 parameter format, 132001 unknown, 132015 paused,
-- ...) or a media one (131053) names the template and the component Meta's message
-- names (header, body or button: its error_data.details, which the worker appends to
-- the message), so that the mapping or the template can be fixed before a resume.
-- Returns the campaigns paused.
CREATE OR REPLACE FUNCTION core.pause_for_errors(p_outbound_ids bigint[], p_codes integer[], p_messages text[])
RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_paused integer;
BEGIN
    WITH first AS (
        SELECT DISTINCT ON (o.campaign_id) o.campaign_id, o.variant, f.code, f.message,
               (core.meta_error(f.code)).category AS category
        FROM unnest(p_outbound_ids, p_codes, p_messages) f(outbound_id, code, message)
        JOIN core.outbound_messages o ON o.outbound_id = f.outbound_id AND o.campaign_id IS NOT NULL
        ORDER BY o.campaign_id, f.outbound_id
    ), r AS (
        SELECT f.*, t.name AS template, t.language,
               (f.category = 'template' OR f.code = 131053) AS names_template,
               lower(substring(f.message FROM '(?i)\m(header|body|button)s?\M')) AS component
        FROM first f
        LEFT JOIN core.campaign_templates ct ON ct.campaign_id = f.campaign_id AND ct.variant = f.variant
        LEFT JOIN core.templates t ON t.template_id = ct.template_id
    ), paused AS (
        UPDATE core.campaigns c SET status = 'paused',
            pause_reason = format('Meta error %s: %s', r.code, (core.meta_error(r.code)).title)
                || CASE WHEN r.names_template AND r.template IS NOT NULL
                        THEN format(' (template "%s" %s%s)', r.template, r.language,
                                    CASE WHEN r.component IS NOT NULL THEN ', component ' || r.component ELSE '' END)
                        ELSE '' END
        FROM r
        WHERE c.campaign_id = r.campaign_id AND c.status = 'running'
        RETURNING c.campaign_id, c.tenant_id, c.name, c.pause_reason, r.code, r.message, r.template, r.language,
                  r.component, r.names_template
    )
    SELECT count(core.notify(p.tenant_id, 'campaign_paused', 'critical',
                             format('Campaign "%s" paused: %s', p.name, p.pause_reason)
                                 || CASE WHEN p.names_template AND p.message IS NOT NULL
                                         THEN format('. Meta said: %s', left(p.message, 300)) ELSE '' END,
                             jsonb_build_object('campaign_id', p.campaign_id, 'error_code', p.code)
                                 || CASE WHEN p.names_template AND p.template IS NOT NULL
                                         THEN jsonb_build_object('template', p.template, 'language', p.language,
                                                                 'component', p.component, 'error_message', left(p.message, 500))
                                         ELSE '{}' END))
    INTO v_paused FROM paused p;
    RETURN v_paused;
END
$$;

-- Campaigns that must not burn their list: paused (their messages are back in the
-- queue, see report_requeued), and an operator told (core.pause_for_errors).
CREATE OR REPLACE FUNCTION core.report_paused(p_rows core.send_outcome[]) RETURNS void
LANGUAGE sql SET search_path = '' AS $$
    SELECT core.pause_for_errors(array_agg(x.outbound_id), array_agg(x.error_code), array_agg(x.error_message))
    FROM unnest(p_rows) x WHERE x.outcome = 'paused'
    HAVING count(*) > 0;
$$;

-- Failed status webhooks of campaign messages whose error is a template's or its media's
-- (core.meta_error_codes.pauses_campaign, category template, or 131053: Meta could not
-- fetch the header's media): the campaign pauses as it does on a synchronous error; its
-- unsent messages stay queued for a resume after the fix.
CREATE OR REPLACE FUNCTION core.pause_for_failed(p_ids bigint[], p_states text[], p_codes integer[], p_details text[])
RETURNS integer
LANGUAGE sql SET search_path = '' AS $$
    SELECT coalesce((
        SELECT core.pause_for_errors(array_agg(f.id), array_agg(f.code), array_agg(f.detail))
        FROM unnest(p_ids, p_states, p_codes, p_details) f(id, state, code, detail)
        JOIN core.meta_error_codes e ON e.code = f.code AND e.pauses_campaign
                                    AND (e.category = 'template' OR e.code = 131053)
        WHERE f.state = 'failed'
        HAVING count(*) > 0), 0)
$$;

-- Errors an operator must see that do not pause anything: one notice per number, code
-- and hour, which later batches count into (and mark unread again), instead of a new
-- notice per report, several a second while the error lasts.
CREATE OR REPLACE FUNCTION core.report_alerts(p_rows core.send_outcome[], p_now timestamptz) RETURNS void
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_noticed integer;
BEGIN
    WITH noticed AS (
        INSERT INTO core.notifications AS nt (tenant_id, kind, severity, message, details, dedupe_key)
        SELECT n.tenant_id, 'send_error', 'warning',
               format('Meta error %s (%s) on %s message(s) from number %s since %s',
                      r.error_code, r.category, r.cnt, n.phone_number_id, to_char(r.hour, 'YYYY-MM-DD HH24:00 TZ')),
               jsonb_build_object('error_code', r.error_code, 'number_id', r.number_id, 'messages', r.cnt,
                                  'category', r.category, 'phone_number_id', n.phone_number_id, 'since', r.hour),
               format('send_error|%s|%s|%s', r.number_id, r.error_code, r.hour)
        FROM (SELECT x.number_id, x.error_code, x.category, count(*) AS cnt, date_trunc('hour', p_now) AS hour
              FROM unnest(p_rows) x
              WHERE x.alert AND x.outcome IN ('retried', 'held', 'failed') GROUP BY x.number_id, x.error_code, x.category) r
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
END
$$;

-- AIMD per number. Halve on throughput errors, once per throttle event: the sends
-- already in flight when Meta said stop report the same error within the second after,
-- and halving for each would collapse the rate. A throttled number sends nothing for
-- the throttle hold (its workers hand back what they hold for it, and it resumes from
-- an empty schedule, at the halved pace). Grow back additively by two fifths of the
-- limit per second of clean sending (a batch with sends accepted and no throttle, and
-- other errors at most a tenth of its accepted sends: a worker reports about twice a
-- second, and a few transient errors in a batch of hundreds say nothing of the pace; a
-- batch of ignored duplicates is no evidence), counted from the end of the hold. The pace
-- never exceeds the number's limit.
CREATE OR REPLACE FUNCTION core.report_pace(p_rows core.send_outcome[], p_now timestamptz) RETURNS void
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_hold interval := (SELECT make_interval(secs => s.throttle_hold_ms / 1000.0) FROM core.settings s);
BEGIN
    UPDATE core.wa_numbers n SET
        rate_mps = CASE WHEN r.throttled > 0 THEN greatest(1, n.rate_mps / 2)
                        ELSE least(n.throughput_mps, n.rate_mps + n.throughput_mps * 0.4
                             * least(1, greatest(0, extract(epoch FROM p_now - coalesce(n.rate_changed_at, p_now - interval '1 second'))))) END,
        rate_changed_at = CASE WHEN r.throttled > 0 THEN p_now + v_hold ELSE p_now END,
        throttled_at = CASE WHEN r.throttled > 0 THEN p_now ELSE n.throttled_at END,
        send_tat = CASE WHEN r.throttled > 0 THEN greatest(n.send_tat, p_now + v_hold) ELSE n.send_tat END
    FROM (SELECT x.number_id, count(*) FILTER (WHERE x.outcome = 'throttled') AS throttled,
                 count(*) FILTER (WHERE x.outcome IN ('retried', 'failed')) AS errors,
                 count(*) FILTER (WHERE x.outcome = 'accepted') AS accepted
          FROM unnest(p_rows) x WHERE x.number_id IS NOT NULL GROUP BY x.number_id) r
    WHERE n.number_id = r.number_id
      AND CASE WHEN r.throttled > 0 THEN coalesce(n.throttled_at, '-infinity') < p_now - interval '1 second'
               ELSE r.errors * 10 <= r.accepted AND r.accepted > 0 AND n.rate_mps < n.throughput_mps
                    AND p_now > coalesce(n.rate_changed_at, '-infinity') END;
END
$$;

-- The per-minute send counters of each number (analytics).
CREATE OR REPLACE FUNCTION core.report_minute(p_rows core.send_outcome[], p_now timestamptz) RETURNS void
LANGUAGE sql SET search_path = '' AS $$
    INSERT INTO core.send_minutes AS m (number_id, minute, accepted, retried, failed, throttled)
    SELECT x.number_id, date_trunc('minute', p_now),
           count(*) FILTER (WHERE x.outcome = 'accepted'),
           count(*) FILTER (WHERE x.outcome IN ('retried', 'held', 'deferred')),
           count(*) FILTER (WHERE x.outcome = 'failed'), count(*) FILTER (WHERE x.outcome = 'throttled')
    FROM unnest(p_rows) x WHERE x.number_id IS NOT NULL GROUP BY x.number_id
    ON CONFLICT (number_id, minute) DO UPDATE SET
        accepted = m.accepted + excluded.accepted, retried = m.retried + excluded.retried,
        failed = m.failed + excluded.failed, throttled = m.throttled + excluded.throttled;
$$;

-- What the worker needs of Meta's pacing rules, so that it copies none: the error codes
-- that throttle a number (core.meta_error_codes) and how long the number then sends
-- nothing (core.settings). The worker holds a throttled number's lane as long.
CREATE OR REPLACE FUNCTION api.send_policy() RETURNS api.send_policy
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $$
    SELECT s.throttle_hold_ms, ARRAY(SELECT e.code FROM core.meta_error_codes e WHERE e.backoff = 'throttle' ORDER BY e.code),
           s.pace_horizon_ms, s.claim_timeout_s
    FROM core.settings s
$$;
COMMENT ON FUNCTION api.send_policy() IS
    'Returns what a worker must know of Meta''s pacing rules: the error codes that throttle a number (throttle_codes), how long a throttled number sends nothing (throttle_hold_ms), how far ahead a claim schedules sends (pace_horizon_ms: a worker claims every half of it), and how long it may hold a claimed message before handing it back unsent (claim_timeout_s: a pace horizon later a claim may take it again).';

-- Make queue messages visible again after per-message delays (seconds) from p_now
-- (NULL: the clock).
CREATE OR REPLACE FUNCTION core.delay_messages(p_queue text, p_msg_ids bigint[], p_delays double precision[],
                                               p_now timestamptz DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SET search_path = '' AS $$
BEGIN
    EXECUTE format('UPDATE pgmq.%I q SET vt = $3 + make_interval(secs => d.delay)
                    FROM unnest($1, $2) d(msg_id, delay) WHERE q.msg_id = d.msg_id', pgmq.format_table_name(p_queue, 'q'))
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
    v_capped integer := core.match_late_capped();
BEGIN
    -- A message a worker held when its campaign was cancelled, whose worker then died,
    -- would stay in flight for ever (a cancelled campaign is never read again). Only
    -- campaigns cancelled within the last hour are read: such a message is due two claim
    -- timeouts after its claim, and the messages are found by campaign alone (0120), so
    -- every cancelled campaign's rows read every minute would grow without end.
    WITH stuck AS (
        UPDATE core.outbound_messages o SET state = 'cancelled'
        FROM core.campaigns c, core.settings s
        WHERE c.status = 'cancelled' AND o.campaign_id = c.campaign_id AND o.state = 'in_flight'
          AND c.cancelled_at > now() - interval '1 hour' - make_interval(secs => 2 * s.claim_timeout_s)
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
        JOIN core.campaigns c ON c.campaign_id = core.queue_campaign_id(m.queue_name)
        WHERE c.status IN ('completed', 'cancelled')
          AND coalesce(c.completed_at, c.cancelled_at) < now() - interval '1 day'
    LOOP
        PERFORM pgmq.drop_queue(v_queue);
        v_dropped := v_dropped + 1;
    END LOOP;
    -- Messaging-limit buckets and users that left the window (core.spend_budget).
    DELETE FROM core.portfolio_reach_minutes WHERE minute < core.window_start(now()) - interval '1 hour';
    DELETE FROM core.portfolio_reach WHERE last_at < core.window_start(now()) - interval '1 hour';
    RETURN jsonb_build_object('started', v_started, 'completed', cardinality(v_completed),
                              'stuck_cancelled', v_settled, 'queues_dropped', v_dropped,
                              'late_capped', v_capped);
END
$$;

REVOKE ALL ON FUNCTION api.claim_sends(text, integer, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.report_sends(jsonb, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.send_policy() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.claim_sends(text, integer, timestamptz) TO pgwa_worker;
GRANT EXECUTE ON FUNCTION api.report_sends(jsonb, timestamptz) TO pgwa_worker;
GRANT EXECUTE ON FUNCTION api.send_policy() TO pgwa_worker;
REVOKE ALL ON FUNCTION api.release_numbers(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.release_numbers(text) TO pgwa_worker;
REVOKE ALL ON FUNCTION api.keep_numbers(text, text[], timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.keep_numbers(text, text[], timestamptz) TO pgwa_worker;
