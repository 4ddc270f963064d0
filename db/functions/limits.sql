-- Meta's messaging limit, kept by pgwa (reference §3.3): a business portfolio may message
-- only so many unique users business-initiated in any moving 24 hours, shared by all its
-- WABAs and numbers. api.claim_sends never starts a new user beyond it
-- (core.spend_budget); the messages to new users wait in their queues until the window
-- rolls past the oldest of the users counted.

-- The limit of a tier as Meta names it; NULL: unlimited (or unknown).
CREATE OR REPLACE FUNCTION core.tier_limit(p_tier text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT CASE p_tier WHEN 'TIER_50' THEN 50 WHEN 'TIER_250' THEN 250 WHEN 'TIER_1K' THEN 1000
                       WHEN 'TIER_2K' THEN 2000 WHEN 'TIER_10K' THEN 10000 WHEN 'TIER_100K' THEN 100000 END
$$;

-- A messaging-limit tier as Meta writes it (the number's
-- whatsapp_business_manager_messaging_limit, webhooks): a tier name
-- (phone_number_quality_update) or a number of users, -1 for unlimited
-- (business_capability_update). NULL for anything else (TIER_NOT_SET, a value Meta adds
-- later), which then sets no tier.
CREATE OR REPLACE FUNCTION core.meta_tier(p_value text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT CASE
        WHEN upper(p_value) IN ('TIER_50', 'TIER_250', 'TIER_1K', 'TIER_2K', 'TIER_10K', 'TIER_100K', 'TIER_UNLIMITED')
            THEN upper(p_value)
        WHEN p_value ~ '^-?[0-9]{1,9}$' THEN CASE p_value::integer
            WHEN -1 THEN 'TIER_UNLIMITED' WHEN 50 THEN 'TIER_50' WHEN 250 THEN 'TIER_250' WHEN 1000 THEN 'TIER_1K'
            WHEN 2000 THEN 'TIER_2K' WHEN 10000 THEN 'TIER_10K' WHEN 100000 THEN 'TIER_100K' END
    END
$$;

-- The portfolio a number belongs to: the one its tenant's other numbers of the same WABA
-- are in; else the one it is in, if its tenant's; else one standing for the WABA until
-- Meta's business id is known. Called after a number is registered or moved; also makes
-- the number's status watermark row (receiver.sql).
CREATE OR REPLACE FUNCTION core.place_in_portfolio(p_number_id bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_number core.wa_numbers;
    v_portfolio bigint;
BEGIN
    SELECT * INTO v_number FROM core.wa_numbers WHERE number_id = p_number_id;
    SELECT n.portfolio_id INTO v_portfolio FROM core.wa_numbers n
    WHERE n.tenant_id = v_number.tenant_id AND n.waba_id = v_number.waba_id AND n.number_id <> p_number_id
      AND n.portfolio_id IS NOT NULL
    LIMIT 1;
    IF v_portfolio IS NULL THEN
        SELECT p.portfolio_id INTO v_portfolio FROM core.portfolios p
        WHERE p.portfolio_id = v_number.portfolio_id AND p.tenant_id = v_number.tenant_id;
    END IF;
    IF v_portfolio IS NULL THEN
        INSERT INTO core.portfolios AS p (tenant_id, business_id) VALUES (v_number.tenant_id, v_number.waba_id)
        ON CONFLICT ON CONSTRAINT portfolios_tenant_business_unique DO UPDATE SET updated_at = p.updated_at
        RETURNING p.portfolio_id INTO v_portfolio;
    END IF;
    UPDATE core.wa_numbers SET portfolio_id = v_portfolio
    WHERE number_id = p_number_id AND portfolio_id IS DISTINCT FROM v_portfolio;
    -- Its status watermark's row too (receiver.sql), so that webhook batches never insert it.
    INSERT INTO core.status_watermarks (number_id, sent_through) VALUES (p_number_id, '-infinity')
    ON CONFLICT (number_id) DO NOTHING;
    RETURN v_portfolio;
END
$$;

-- Unique users the portfolio messaged business-initiated in the 24 hours before p_now.
-- A minute's bucket counts while any instant of it is inside the window, so the figure
-- is never below Meta's.
CREATE OR REPLACE FUNCTION core.budget_used(p_portfolio_id bigint, p_now timestamptz) RETURNS integer
LANGUAGE sql STABLE SET search_path = '' AS $$
    SELECT coalesce(sum(m.users), 0)::integer FROM core.portfolio_reach_minutes m
    WHERE m.portfolio_id = p_portfolio_id
      AND m.minute > core.window_start(p_now) - interval '1 minute'
$$;

-- Of a number's claimed messages, the ones its portfolio's budget allows: replies (inside
-- a customer-service window) and campaign messages to users messaged in the last 24
-- hours always, campaign messages to new users while the budget lasts, in claim order.
-- The rest go back to their queues until the oldest counted user leaves the window
-- (the portfolio records when: budget_wait_until). Every campaign recipient sent to
-- moves to the current minute. Claims of one portfolio's numbers take turns on its row.
-- Nothing is counted for a portfolio without a limit.
CREATE OR REPLACE FUNCTION core.spend_budget(p_batch core.claimed[], p_portfolio_id bigint, p_now timestamptz)
RETURNS core.claimed[]
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_limit integer;
    v_room integer;
    v_wait timestamptz;
    v_keep core.claimed[];
    v_late core.claimed[];
    v_sent text[];
    v_queue text;
BEGIN
    -- Unlimited portfolios (most) cost one index probe and no lock.
    SELECT p.messaging_limit INTO v_limit FROM core.portfolios p WHERE p.portfolio_id = p_portfolio_id;
    IF v_limit IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(p_batch) b WHERE b.message ? 't') THEN
        RETURN p_batch;
    END IF;
    SELECT p.messaging_limit INTO v_limit FROM core.portfolios p WHERE p.portfolio_id = p_portfolio_id FOR UPDATE;
    IF v_limit IS NULL THEN                   -- raised to unlimited meanwhile
        RETURN p_batch;
    END IF;
    v_room := greatest(v_limit - core.budget_used(p_portfolio_id, p_now), 0);

    WITH sends AS (
        SELECT b, b.ord,
               b.message->>'t' IS NOT NULL AND coalesce(r.last_at <= core.window_start(p_now), true) AS is_new,
               min(b.ord) OVER (PARTITION BY b.message->>'t') AS first_ord
        FROM unnest(p_batch) WITH ORDINALITY b(queue_name, msg_id, read_ct, outbound_id, message, ord)
        LEFT JOIN core.portfolio_reach r ON r.portfolio_id = p_portfolio_id AND r.wa_id = b.message->>'t'
    ), ranked AS (
        -- New users in claim order; several messages to one user count it once.
        SELECT s.*, CASE WHEN s.is_new THEN dense_rank() OVER (PARTITION BY s.is_new ORDER BY s.first_ord)
                         ELSE 0 END AS new_rank
        FROM sends s
    )
    SELECT array_agg(ROW((r.b).queue_name, (r.b).msg_id, (r.b).read_ct, (r.b).outbound_id, (r.b).message)::core.claimed
                     ORDER BY r.ord) FILTER (WHERE r.new_rank <= v_room),
           array_agg(ROW((r.b).queue_name, (r.b).msg_id, (r.b).read_ct, (r.b).outbound_id, (r.b).message)::core.claimed
                     ORDER BY r.ord) FILTER (WHERE r.new_rank > v_room)
    INTO v_keep, v_late FROM ranked r;

    -- The recipients sent to move to this minute, out of the minute they were last in.
    v_sent := ARRAY(SELECT DISTINCT k.message->>'t' FROM unnest(v_keep) k WHERE k.message ? 't');
    UPDATE core.portfolio_reach_minutes m SET users = greatest(m.users - d.n, 0)
    FROM (SELECT date_trunc('minute', r.last_at) AS minute, count(*)::integer AS n
          FROM core.portfolio_reach r
          WHERE r.portfolio_id = p_portfolio_id AND r.wa_id = ANY (v_sent) GROUP BY 1) d
    WHERE m.portfolio_id = p_portfolio_id AND m.minute = d.minute;
    INSERT INTO core.portfolio_reach AS r (portfolio_id, wa_id, last_at)
    SELECT p_portfolio_id, w, p_now FROM unnest(v_sent) w
    ON CONFLICT (portfolio_id, wa_id) DO UPDATE SET last_at = excluded.last_at;
    INSERT INTO core.portfolio_reach_minutes AS m (portfolio_id, minute, users)
    VALUES (p_portfolio_id, date_trunc('minute', p_now), cardinality(v_sent))
    ON CONFLICT (portfolio_id, minute) DO UPDATE SET users = m.users + excluded.users;

    IF v_late IS NOT NULL THEN
        SELECT min(m.minute) + core.service_window() + interval '1 minute' INTO v_wait
        FROM core.portfolio_reach_minutes m
        WHERE m.portfolio_id = p_portfolio_id AND m.users > 0
          AND m.minute > core.window_start(p_now) - interval '1 minute';
        v_wait := greatest(coalesce(v_wait, p_now + interval '1 minute'), p_now + interval '1 second');
        PERFORM core.delay_messages(l.queue_name, array_agg(l.msg_id),
                                    array_fill(extract(epoch FROM v_wait - p_now)::double precision, ARRAY[count(*)::int]),
                                    p_now)
        FROM unnest(v_late) l GROUP BY l.queue_name;
        -- The budget was spent before this claim: the rest of these campaigns' queues
        -- would only be read and put back, a claim's worth at a time, until they all wait
        -- (tens of thousands of messages after each roll of the window). They wait at once.
        IF v_room = 0 THEN
            FOR v_queue IN
                SELECT DISTINCT l.queue_name FROM unnest(v_late) l WHERE core.queue_campaign_id(l.queue_name) IS NOT NULL
            LOOP
                EXECUTE format('UPDATE pgmq.%I SET vt = $1 WHERE vt <= $2', pgmq.format_table_name(v_queue, 'q'))
                USING v_wait, p_now;
            END LOOP;
        END IF;
        UPDATE core.portfolios SET budget_wait_until = v_wait WHERE portfolio_id = p_portfolio_id;
    ELSE
        UPDATE core.portfolios SET budget_wait_until = NULL
        WHERE portfolio_id = p_portfolio_id AND budget_wait_until IS NOT NULL;
    END IF;
    RETURN coalesce(v_keep, '{}');
END
$$;

-- Set a portfolio's tier (from Meta: a webhook, the number's
-- whatsapp_business_manager_messaging_limit, or its owner); the limit follows at once,
-- and messages that waited for the budget come back now when it grew (the next claim
-- counts them against the new limit).
CREATE OR REPLACE FUNCTION core.set_tier(p_portfolio_id bigint, p_tier text) RETURNS void
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_old core.portfolios;
    v_queue text;
BEGIN
    SELECT * INTO v_old FROM core.portfolios WHERE portfolio_id = p_portfolio_id FOR UPDATE;
    IF NOT FOUND OR v_old.tier IS NOT DISTINCT FROM p_tier THEN
        RETURN;
    END IF;
    UPDATE core.portfolios SET tier = p_tier, messaging_limit = core.tier_limit(p_tier), updated_at = now(),
                               budget_wait_until = NULL
    WHERE portfolio_id = p_portfolio_id;
    IF v_old.budget_wait_until > now()
       AND coalesce(core.tier_limit(p_tier), 2147483647) > coalesce(v_old.messaging_limit, 2147483647) THEN
        FOR v_queue IN
            SELECT core.campaign_queue(c.campaign_id) FROM core.campaigns c
            JOIN core.wa_numbers n ON n.number_id = c.number_id
            WHERE n.portfolio_id = p_portfolio_id AND c.status = 'running'
        LOOP
            EXECUTE format('UPDATE pgmq.%I SET vt = now() WHERE vt > now() AND vt <= $1',
                           pgmq.format_table_name(v_queue, 'q'))
            USING v_old.budget_wait_until;
        END LOOP;
        PERFORM core.wake_sender(n.number_id) FROM core.wa_numbers n WHERE n.portfolio_id = p_portfolio_id;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION core.portfolio_row(p_portfolio_id bigint, p_now timestamptz) RETURNS api.portfolio
LANGUAGE sql STABLE SET search_path = '' AS $$
    SELECT p.portfolio_id, p.business_id, p.tier, p.messaging_limit,
           CASE WHEN p.messaging_limit IS NOT NULL THEN core.budget_used(p.portfolio_id, p_now) END,
           CASE WHEN p.budget_wait_until > p_now THEN p.budget_wait_until END,
           ARRAY(SELECT n.number_id FROM core.wa_numbers n WHERE n.portfolio_id = p.portfolio_id ORDER BY n.number_id)
    FROM core.portfolios p WHERE p.portfolio_id = p_portfolio_id
$$;

-- The tenant's portfolios: tier, limit, the budget used and whether new users wait.
CREATE OR REPLACE FUNCTION api.portfolios(p_tenant_id bigint, p_now timestamptz DEFAULT NULL)
RETURNS SETOF api.portfolio
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $$
    SELECT (core.portfolio_row(p.portfolio_id, coalesce(p_now, now()))).*
    FROM core.portfolios p WHERE p.tenant_id = p_tenant_id ORDER BY p.portfolio_id
$$;
COMMENT ON FUNCTION api.portfolios(bigint, timestamptz) IS
    'The tenant''s business portfolios (WABAs and numbers sharing one messaging limit): Meta''s tier, the limit of unique users per moving 24 hours (NULL: unlimited), the users messaged business-initiated in the 24 hours before p_now (NULL: the clock), until when messages to new users wait, and the numbers.';

-- Set the tier of a number's portfolio, and optionally say which business portfolio its
-- WABA is in (p_business_id: Meta's id): every number of the tenant in that WABA moves
-- there, and WABAs given the same business id share one limit.
CREATE OR REPLACE FUNCTION api.set_messaging_limit(p_tenant_id bigint, p_number_id bigint, p_tier text,
                                                   p_business_id text DEFAULT NULL)
RETURNS api.portfolio
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_number core.wa_numbers;
    v_portfolio bigint;
BEGIN
    SELECT * INTO v_number FROM core.wa_numbers WHERE number_id = p_number_id AND tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'number % not found', p_number_id
            USING ERRCODE = 'PW202', HINT = 'List the tenant''s numbers with api.numbers().';
    END IF;
    IF p_tier IS NOT NULL AND core.meta_tier(p_tier) IS DISTINCT FROM p_tier THEN   -- a tier name, exactly
        RAISE EXCEPTION 'tier "%" is not one of Meta''s messaging limit tiers', p_tier
            USING ERRCODE = 'PW100', COLUMN = 'tier',
                  HINT = 'TIER_250, TIER_2K, TIER_10K, TIER_100K or TIER_UNLIMITED (as whatsapp_business_manager_messaging_limit says).';
    END IF;
    IF p_business_id IS NOT NULL AND p_business_id !~ '^[0-9]{1,32}$' THEN
        RAISE EXCEPTION 'business_id "%" is not Meta''s numeric id', p_business_id
            USING ERRCODE = 'PW100', COLUMN = 'business_id', HINT = 'Give the business portfolio''s id from Business Manager.';
    END IF;
    v_portfolio := v_number.portfolio_id;
    IF p_business_id IS NOT NULL THEN
        INSERT INTO core.portfolios AS p (tenant_id, business_id) VALUES (p_tenant_id, p_business_id)
        ON CONFLICT ON CONSTRAINT portfolios_tenant_business_unique DO UPDATE SET updated_at = p.updated_at
        RETURNING p.portfolio_id INTO v_portfolio;
        UPDATE core.wa_numbers SET portfolio_id = v_portfolio
        WHERE tenant_id = p_tenant_id AND waba_id = v_number.waba_id;
    END IF;
    IF p_tier IS NOT NULL THEN
        PERFORM core.set_tier(v_portfolio, p_tier);
    END IF;
    RETURN core.portfolio_row(v_portfolio, now());
END
$$;
COMMENT ON FUNCTION api.set_messaging_limit(bigint, bigint, text, text) IS
    'Sets the messaging-limit tier (TIER_50 .. TIER_UNLIMITED) of the portfolio of a number, and with p_business_id moves the number''s WABA into that business portfolio (WABAs with one business id share one limit). api.claim_sends never starts a conversation with a new user beyond the limit. Returns the portfolio. Raises PW202 when the number is not the tenant''s, PW100 for an unknown tier or a business id that is not numeric.';

REVOKE ALL ON FUNCTION api.portfolios(bigint, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.set_messaging_limit(bigint, bigint, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.portfolios(bigint, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.set_messaging_limit(bigint, bigint, text, text) TO pgwa_api;

-- Campaign messages Meta accepted and then withheld under the per-user marketing cap
-- (a failed status whose code has backoff 'next_day': 131049) go back to their campaign's
-- queue, to be tried again backoff_s later (a day), at most core.settings.capped_retry_days
-- times; the last failure stands. The attempt is undone: the message is queued again
-- without its wamid, and the counters it moved (sent, finished, the timeline's sent) move
-- back; a campaign already completed runs again until the retries are over. The queue
-- message is rebuilt from the campaign's parameter mapping and the contact. The day is
-- counted from the failed status's own time (p_at, Meta's timestamp) when that is later
-- than the clock, so that a scenario on a compressed clock (the simulator's, moved
-- forward) retries a day after the failure on that clock. Returns the messages
-- deferred; their statuses in this batch are not applied.
-- (It took no p_at before: a new argument is a new signature.)
DROP FUNCTION IF EXISTS core.defer_capped(bigint[], text[], integer[]);
CREATE OR REPLACE FUNCTION core.defer_capped(p_ids bigint[], p_states text[], p_codes integer[],
                                             p_at timestamptz[])
RETURNS bigint[]
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_deferred bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(p_states, p_codes) f(state, code)
                   JOIN core.meta_error_codes e ON e.code = f.code AND e.backoff = 'next_day'
                   WHERE f.state = 'failed') THEN
        RETURN '{}';
    END IF;
    WITH picked AS (
        SELECT DISTINCT ON (o.outbound_id) o.outbound_id, o.campaign_id, o.variant, e.code, e.category,
               e.title, e.backoff_s, coalesce(o.accepted_at, o.sent_at) AS at,
               greatest(f.failed_at, clock_timestamp()) + make_interval(secs => e.backoff_s) AS retry_at,
               jsonb_build_object('o', o.outbound_id, 't', ct.wa_id, 'v', o.variant, 'p', (
                   SELECT coalesce(jsonb_agg(CASE WHEN p ? 'value' THEN p->>'value'
                                                  WHEN p->>'column' = 'phone' THEN ct.wa_id
                                                  WHEN p->>'column' = 'name' THEN ct.name
                                                  ELSE ct.attributes->>(p->>'column') END ORDER BY n), '[]')
                   FROM jsonb_array_elements(t.params) WITH ORDINALITY pp(p, n))) AS message
        FROM unnest(p_ids, p_states, p_codes, p_at) f(id, state, code, failed_at)
        JOIN core.meta_error_codes e ON e.code = f.code AND e.backoff = 'next_day'
        JOIN core.outbound_messages o ON o.outbound_id = f.id AND o.campaign_id IS NOT NULL
                                     AND o.state IN ('accepted', 'sent')
        JOIN core.campaigns c ON c.campaign_id = o.campaign_id AND c.status IN ('running', 'paused', 'completed')
        JOIN core.campaign_templates t ON t.campaign_id = o.campaign_id AND t.variant = o.variant
        JOIN core.contacts ct ON ct.contact_id = o.contact_id
        CROSS JOIN core.settings s
        WHERE f.state = 'failed' AND o.deferrals < s.capped_retry_days
          AND EXISTS (SELECT 1 FROM pgmq.meta q WHERE q.queue_name = core.campaign_queue(o.campaign_id))
        ORDER BY o.outbound_id
    ), reset AS (
        UPDATE core.outbound_messages o SET state = 'queued', wamid = NULL, accepted_at = NULL, sent_at = NULL,
            claimed_at = NULL, deferrals = o.deferrals + 1, error_code = p.code, error_category = p.category,
            error_detail = format('%s: tried again after %s s', p.title, p.backoff_s)
        FROM picked p WHERE o.outbound_id = p.outbound_id
        RETURNING p.*
    ), per_campaign AS (
        UPDATE core.campaigns c SET sent = c.sent - d.n, finished = c.finished - d.n, retrying = c.retrying + d.n,
            status = CASE WHEN c.status = 'completed' THEN 'running' ELSE c.status END,
            completed_at = CASE WHEN c.status = 'completed' THEN NULL ELSE c.completed_at END
        FROM (SELECT campaign_id, count(*)::integer AS n FROM reset GROUP BY 1) d
        WHERE c.campaign_id = d.campaign_id
    ), per_template AS (
        UPDATE core.campaign_templates t SET sent = t.sent - d.n
        FROM (SELECT campaign_id, variant, count(*)::integer AS n FROM reset GROUP BY 1, 2) d
        WHERE t.campaign_id = d.campaign_id AND t.variant = d.variant
    ), per_minute AS (
        UPDATE core.campaign_minutes m SET sent = m.sent - d.n
        FROM (SELECT campaign_id, date_trunc('minute', at) AS minute, count(*)::integer AS n
              FROM reset WHERE at IS NOT NULL GROUP BY 1, 2) d
        WHERE m.campaign_id = d.campaign_id AND m.minute = d.minute
    ), queued AS (
        SELECT pgmq.send_batch(core.campaign_queue(q.campaign_id), q.messages, q.retry_at)
        FROM (SELECT campaign_id, array_agg(message ORDER BY outbound_id) AS messages, max(retry_at) AS retry_at
              FROM reset GROUP BY campaign_id) q
    )
    SELECT array_agg(r.outbound_id) INTO v_deferred
    FROM reset r, (SELECT count(*) FROM queued) x;
    RETURN coalesce(v_deferred, '{}');
END
$$;

-- A 131049 failed status processed while its send's report was being stored: each
-- transaction saw the other's work uncommitted, so core.apply_statuses left the status
-- for the report (the message was still in flight) and the report found none. The
-- minute's sweep (core.sweep_sends) matches such statuses of the last day to their
-- message and defers it as core.defer_capped says (or fails it, after the last retry).
-- Returns the statuses matched.
CREATE OR REPLACE FUNCTION core.match_late_capped() RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_ids bigint[];
    v_states text[];
    v_at timestamptz[];
    v_codes integer[];
BEGIN
    WITH late AS (
        UPDATE core.status_events se SET outbound_id = o.outbound_id
        FROM core.outbound_messages o, core.meta_error_codes e
        WHERE se.outbound_id IS NULL AND se.status = 'failed' AND se.received_at > now() - interval '1 day'
          AND e.code = se.error_code AND e.backoff = 'next_day'
          AND o.wamid = se.wamid AND o.number_id = se.number_id AND o.state IN ('accepted', 'sent')
        RETURNING se.outbound_id, se.status, se.occurred_at, se.error_code
    )
    SELECT array_agg(outbound_id), array_agg(status), array_agg(occurred_at), array_agg(error_code)
    INTO v_ids, v_states, v_at, v_codes FROM late;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM core.apply_matched_statuses(v_ids, v_states, v_at, v_codes);
    RETURN cardinality(v_ids);
END
$$;

-- Statuses just matched to their messages (parallel arrays), applied: a 131049 defers
-- its message to a day later (core.defer_capped), the rest move it forward. Shared by
-- the report that finds statuses which came before it (core.report_accepted) and the
-- sweep that finds those whose transactions crossed it (core.match_late_capped).
CREATE OR REPLACE FUNCTION core.apply_matched_statuses(p_ids bigint[], p_states text[], p_at timestamptz[],
                                                       p_codes integer[]) RETURNS void
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_deferred bigint[] := core.defer_capped(p_ids, p_states, p_codes, p_at);
BEGIN
    PERFORM core.advance_outbound(array_agg(m.id), array_agg(m.state), array_agg(m.at), NULL, array_agg(m.code))
    FROM unnest(p_ids, p_states, p_at, p_codes) m(id, state, at, code)
    WHERE m.id <> ALL (v_deferred)
    HAVING count(*) > 0;
END
$$;
