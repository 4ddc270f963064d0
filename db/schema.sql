
CREATE SCHEMA api;

CREATE SCHEMA core;

CREATE TYPE api.api_key AS (
	api_key_id bigint,
	name text,
	key_prefix text,
	created_at timestamp with time zone,
	revoked_at timestamp with time zone,
	scope text,
	expires_at timestamp with time zone,
	last_used_at timestamp with time zone,
	rate_limit_per_minute integer
);

CREATE TYPE api.api_key_created AS (
	api_key_id bigint,
	tenant_id bigint,
	name text,
	key text,
	key_prefix text,
	created_at timestamp with time zone,
	scope text,
	expires_at timestamp with time zone,
	rate_limit_per_minute integer
);

CREATE TYPE api.bot_rule AS (
	rule_id bigint,
	number_id bigint,
	kind text,
	pattern text,
	priority integer,
	reply jsonb,
	enabled boolean,
	created_at timestamp with time zone,
	updated_at timestamp with time zone
);

CREATE TYPE api.campaign_created AS (
	campaign_id bigint,
	status text,
	total integer,
	skipped_invalid integer,
	skipped_opted_out integer,
	duplicates_removed integer,
	invalid_rows jsonb,
	days_at_limit integer
);

CREATE TYPE api.campaign_stats AS (
	campaign_id bigint,
	name text,
	status text,
	number_id bigint,
	pause_reason text,
	created_at timestamp with time zone,
	started_at timestamp with time zone,
	completed_at timestamp with time zone,
	total integer,
	queued integer,
	sent integer,
	delivered integer,
	read integer,
	replied integer,
	failed integer,
	cancelled integer,
	skipped_opted_out integer,
	skipped_invalid integer,
	duplicates_removed integer,
	progress double precision,
	delivery_rate double precision,
	read_rate double precision,
	reply_rate double precision,
	failure_rate double precision,
	templates jsonb,
	errors jsonb,
	errors_by_category jsonb,
	timeline jsonb,
	waiting_for text,
	resumes_at timestamp with time zone,
	messaging_limit integer,
	days_at_limit integer,
	retrying integer
);

CREATE TYPE api.campaign_summary AS (
	campaign_id bigint,
	name text,
	status text,
	number_id bigint,
	pause_reason text,
	scheduled_at timestamp with time zone,
	started_at timestamp with time zone,
	completed_at timestamp with time zone,
	cancelled_at timestamp with time zone,
	created_at timestamp with time zone,
	total integer,
	queued integer,
	sent integer,
	delivered integer,
	read integer,
	replied integer,
	failed integer,
	cancelled integer,
	skipped_opted_out integer,
	skipped_invalid integer,
	duplicates_removed integer,
	progress double precision
);

CREATE TYPE api.contact AS (
	contact_id bigint,
	wa_id text,
	user_id text,
	name text,
	profile_name text,
	attributes jsonb,
	opted_out boolean,
	opted_out_at timestamp with time zone,
	last_inbound_at timestamp with time zone,
	created_at timestamp with time zone
);

CREATE TYPE api.contacts_imported AS (
	staged integer,
	inserted integer,
	updated integer,
	unchanged integer,
	skipped_invalid integer,
	duplicates_removed integer,
	invalid_rows jsonb
);

CREATE TYPE api.conversation_summary AS (
	contact_id bigint,
	wa_id text,
	user_id text,
	name text,
	profile_name text,
	opted_out boolean,
	last_message_id bigint,
	last_direction text,
	last_type text,
	last_body text,
	last_message_at timestamp with time zone,
	unread integer,
	window_open boolean,
	window_closes_at timestamp with time zone,
	assigned_to text,
	assigned_at timestamp with time zone,
	needs_human boolean,
	needs_human_reason text
);

CREATE TYPE api.counter_drift AS (
	scope text,
	key text,
	counter text,
	maintained bigint,
	actual bigint,
	drift bigint,
	fixed boolean
);

CREATE TYPE api.function_doc AS (
	name text,
	arguments text,
	returns text,
	description text
);

CREATE TYPE api.graph_credentials AS (
	number_id bigint,
	phone_number_id text,
	waba_id text,
	access_token text,
	graph_api_version text
);

CREATE TYPE api.inbox_message AS (
	message_id bigint,
	direction text,
	type text,
	body text,
	payload jsonb,
	wamid text,
	context_wamid text,
	created_at timestamp with time zone,
	outbound_id bigint,
	kind text,
	state text,
	error_code integer,
	error_detail text,
	campaign_id bigint
);

CREATE TYPE api.llm_bound AS (
	setting text,
	type text,
	minimum integer,
	maximum integer,
	meaning text
);

CREATE TYPE api.llm_job AS (
	msg_id bigint,
	number_id bigint,
	contact_id bigint,
	message_id bigint,
	system_prompt text,
	messages jsonb,
	over_limit boolean
);

CREATE TYPE api.llm_outcome AS (
	replied integer,
	fell_back integer,
	dropped integer
);

CREATE TYPE api.llm_settings AS (
	number_id bigint,
	llm_enabled boolean,
	system_prompt text,
	daily_limit integer,
	context_messages integer,
	number_daily_limit integer
);

CREATE TYPE api.notification AS (
	notification_id bigint,
	kind text,
	severity text,
	message text,
	details jsonb,
	created_at timestamp with time zone,
	read_at timestamp with time zone
);

CREATE TYPE api.number AS (
	number_id bigint,
	phone_number_id text,
	waba_id text,
	display_phone_number text,
	throughput_mps integer,
	rate_mps double precision,
	quality_rating text,
	paused_reason text,
	has_app_secret boolean,
	created_at timestamp with time zone
);

CREATE TYPE api.opt_out_settings AS (
	tenant_id bigint,
	opt_out_keywords text[],
	opt_in_keywords text[],
	opt_out_reply text,
	opt_in_reply text
);

CREATE TYPE api.portfolio AS (
	portfolio_id bigint,
	business_id text,
	tier text,
	messaging_limit integer,
	used_24h integer,
	budget_wait_until timestamp with time zone,
	number_ids bigint[]
);

CREATE TYPE api.reply_queued AS (
	outbound_id bigint,
	message_id bigint,
	window_closes_at timestamp with time zone
);

CREATE TYPE api.report_result AS (
	accepted integer,
	retried integer,
	failed integer,
	paused integer,
	ignored integer
);

CREATE TYPE api.send_policy AS (
	throttle_hold_ms integer,
	throttle_codes integer[]
);

CREATE TYPE api.send_request AS (
	outbound_id bigint,
	queue_name text,
	msg_id bigint,
	phone_number_id text,
	access_token text,
	path text,
	body jsonb,
	send_at timestamp with time zone,
	attempt integer
);

CREATE TYPE api.template AS (
	template_id bigint,
	waba_id text,
	name text,
	language text,
	category text,
	status text,
	body_param_count smallint,
	components jsonb,
	meta_template_id text,
	updated_at timestamp with time zone
);

CREATE TYPE api.templates_synced AS (
	received integer,
	stored integer,
	unchanged integer
);

CREATE TYPE api.webhook_batch AS (
	payloads integer,
	status_events integer,
	messages integer,
	dead integer,
	dropped integer
);

CREATE TYPE api.webhook_claim AS (
	fresh bigint[],
	retried bigint[]
);

CREATE TYPE api.webhook_signer AS (
	app_secret text,
	signer text,
	waba_ids text[]
);

CREATE TYPE core.claimed AS (
	queue_name text,
	msg_id bigint,
	read_ct integer,
	outbound_id bigint,
	message jsonb
);

CREATE TYPE core.inbound_step AS (
	message_id bigint,
	number_id bigint,
	contact_id bigint,
	tenant_id bigint,
	created_at timestamp with time zone,
	norm text,
	welcome boolean,
	action text,
	llm boolean
);

CREATE TYPE core.reply_queued AS (
	ord integer,
	outbound_id bigint,
	message_id bigint,
	window_closes_at timestamp with time zone
);

CREATE TYPE core.reply_request AS (
	number_id bigint,
	contact_id bigint,
	kind text,
	message jsonb
);

CREATE TYPE core.send_outcome AS (
	outbound_id bigint,
	queue_name text,
	msg_id bigint,
	wamid text,
	error_code integer,
	error_message text,
	number_id bigint,
	campaign_id bigint,
	campaign_status text,
	category text,
	alert boolean,
	backoff text,
	outcome text,
	requeue_s double precision,
	unsure boolean
);

CREATE TYPE core.webhook_change AS (
	ord integer,
	waba_id text,
	entry_at timestamp with time zone,
	field text,
	phone_number_id text,
	value jsonb,
	signer text
);

CREATE FUNCTION api.api_keys(p_tenant_id bigint) RETURNS SETOF api.api_key
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT api_key_id, name, key_prefix, created_at, revoked_at, scope, expires_at, last_used_at,
           rate_limit_per_minute
    FROM core.api_keys WHERE tenant_id = p_tenant_id
    ORDER BY api_key_id
$$;

COMMENT ON FUNCTION api.api_keys(p_tenant_id bigint) IS 'Lists the tenant''s API keys (id, name, prefix, created, revoked, scope, expiry, last used within a minute, own rate limit or null for the platform''s), never the keys themselves.';

CREATE FUNCTION api.assign_conversation(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint, p_agent text) RETURNS api.conversation_summary
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    IF coalesce(btrim(p_agent), '') = '' OR length(p_agent) > 200 THEN
        RAISE EXCEPTION 'agent must be 1 to 200 characters' USING ERRCODE = 'PW100',
            HINT = 'Name the agent (an id or e-mail); api.release_conversation hands it back to the bots.';
    END IF;
    PERFORM core.conversation_for(p_tenant_id, p_number_id, p_contact_id);
    UPDATE core.conversations SET assigned_to = btrim(p_agent), assigned_at = now(),
        needs_human = false, needs_human_reason = NULL, needs_human_at = NULL
    WHERE number_id = p_number_id AND contact_id = p_contact_id;
    RETURN (SELECT s FROM core.conversation_summaries(p_number_id, ARRAY[p_contact_id]) s);
END
$$;

COMMENT ON FUNCTION api.assign_conversation(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint, p_agent text) IS 'Hands a conversation to an agent (or to another one): bots and the LLM stay quiet on it until api.release_conversation, and the call for a human is cleared. Returns the conversation. Raises PW100 for an empty agent, PW202/PW209 when the number or conversation is not the tenant''s.';

CREATE FUNCTION api.authenticate(p_key_hash bytea, p_scope text DEFAULT 'admin'::text, p_now timestamp with time zone DEFAULT now()) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_tenant_id bigint;
    v_key record;
    v_wait_s integer;
BEGIN
    IF core.scope_rank(p_scope) IS NULL THEN
        RAISE EXCEPTION 'scope % is not one of read, send, admin', p_scope USING ERRCODE = 'PW100',
            HINT = 'The route passes read, send or admin.';
    END IF;
    UPDATE core.api_keys k
    SET rate_tat = greatest(k.rate_tat, p_now)
                   + make_interval(secs => 60.0 / coalesce(k.rate_limit_per_minute, s.api_rate_limit_per_minute)),
        last_used_at = CASE WHEN k.last_used_at > p_now - interval '1 minute' THEN k.last_used_at ELSE p_now END
    FROM core.settings s
    WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL
      AND (k.expires_at IS NULL OR k.expires_at > p_now)
      AND core.scope_rank(k.scope) >= core.scope_rank(p_scope)
      AND greatest(k.rate_tat, p_now)
          + make_interval(secs => 60.0 / coalesce(k.rate_limit_per_minute, s.api_rate_limit_per_minute))
          <= p_now + interval '1 minute'
    RETURNING k.tenant_id INTO v_tenant_id;
    IF v_tenant_id IS NOT NULL THEN
        -- A read route's only write is this advisory state (a crash may forget its last
        -- fraction of a second), so its commit does not wait for the WAL flush: measured,
        -- that wait was two thirds of the write's cost. Routes that change data keep
        -- synchronous commits.
        IF p_scope = 'read' THEN
            PERFORM set_config('synchronous_commit', 'off', true);
        END IF;
        RETURN v_tenant_id;
    END IF;

    SELECT k.scope, k.expires_at, coalesce(k.rate_limit_per_minute, s.api_rate_limit_per_minute) AS per_minute,
           greatest(k.rate_tat, p_now)
           + make_interval(secs => 60.0 / coalesce(k.rate_limit_per_minute, s.api_rate_limit_per_minute))
           - (p_now + interval '1 minute') AS wait
    INTO v_key
    FROM core.api_keys k, core.settings s
    WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the API key is unknown or revoked' USING ERRCODE = 'PW401',
            HINT = 'Send Authorization: Bearer <key>, with a key from `pgwa key create`.';
    END IF;
    IF v_key.expires_at <= p_now THEN
        RAISE EXCEPTION 'the API key expired at %', v_key.expires_at USING ERRCODE = 'PW401',
            HINT = 'Use another key; an admin key (POST /v1/keys) or an operator (`pgwa key create`) makes one.';
    END IF;
    IF core.scope_rank(v_key.scope) < core.scope_rank(p_scope) THEN
        RAISE EXCEPTION 'this request needs an API key with scope %; this key has scope %', p_scope, v_key.scope
            USING ERRCODE = 'PW410',
            HINT = format('Use a key with scope %s or above (read < send < admin); an admin key makes one with '
                          'POST /v1/keys {"name": "...", "scope": "%s"}.', p_scope, p_scope);
    END IF;
    v_wait_s := greatest(1, ceil(extract(epoch FROM v_key.wait)))::integer;
    RAISE EXCEPTION 'the API key made more than % requests in a minute', v_key.per_minute USING ERRCODE = 'PW429',
        DETAIL = json_build_object('retry_after_s', v_wait_s)::text,
        HINT = format('Retry after %s seconds; an operator can raise the key''s limit '
                      '(`pgwa key create --rate-limit`, or core.settings.api_rate_limit_per_minute).', v_wait_s);
END
$$;

COMMENT ON FUNCTION api.authenticate(p_key_hash bytea, p_scope text, p_now timestamp with time zone) IS 'Returns the tenant of the API key whose sha256 is p_key_hash when the key is live, unexpired, holds p_scope (read < send < admin) and is within its request rate limit, and counts the request (moving last_used_at at most once a minute). Raises PW401 for an unknown, revoked or expired key, PW410 when the key lacks the scope, PW429 (DETAIL {"retry_after_s": n}) when it is over its limit, PW100 for an unknown scope.';

CREATE FUNCTION api.bot_rules(p_tenant_id bigint, p_number_id bigint) RETURNS SETOF api.bot_rule
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    PERFORM core.number_for(p_tenant_id, p_number_id);
    RETURN QUERY
    SELECT r.rule_id, r.number_id, r.kind, r.pattern, r.priority, r.reply, r.enabled, r.created_at, r.updated_at
    FROM core.bot_rules r
    WHERE r.number_id = p_number_id
    ORDER BY r.kind = 'default', r.priority, r.rule_id;
END
$$;

COMMENT ON FUNCTION api.bot_rules(p_tenant_id bigint, p_number_id bigint) IS 'Lists a number''s bot rules in the order they are tried (default rules last). Raises PW202 when the number is not the tenant''s.';

CREATE FUNCTION api.campaign_stats(p_tenant_id bigint, p_campaign_id bigint) RETURNS api.campaign_stats
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

COMMENT ON FUNCTION api.campaign_stats(p_tenant_id bigint, p_campaign_id bigint) IS 'Analytics of one campaign from maintained counters, in one query: the funnel (total, queued, sent, delivered, read, replied, failed, cancelled), rates, per-template counters, failures by Meta error code and by category, a per-minute timeline (latest 1,440 minutes), and what it waits for: waiting_for ''messaging_limit'' with resumes_at while its portfolio''s budget of new users is spent, the portfolio''s messaging_limit and the days_at_limit its queued messages still need; retrying counts the messages Meta withheld under the per-user marketing cap (131049) that wait for their next try a day later. Raises PW201 when the tenant has no such campaign.';

CREATE FUNCTION api.campaigns(p_tenant_id bigint, p_status text DEFAULT NULL::text, p_before_id bigint DEFAULT NULL::bigint, p_limit integer DEFAULT 50) RETURNS SETOF api.campaign_summary
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

COMMENT ON FUNCTION api.campaigns(p_tenant_id bigint, p_status text, p_before_id bigint, p_limit integer) IS 'Lists the tenant''s campaigns newest first with their live counters (total, queued, sent, delivered, read, replied, failed, cancelled, progress), optionally of one status; keyset pagination: p_before_id is the smallest campaign_id of the previous page. Raises PW100 for a limit outside 1..1000 or an unknown status.';

CREATE FUNCTION api.cancel_campaign(p_tenant_id bigint, p_campaign_id bigint) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_campaign core.campaigns := core.campaign_for(p_tenant_id, p_campaign_id);
    v_cancelled integer;
BEGIN
    IF v_campaign.status IN ('completed', 'cancelled') THEN
        RAISE EXCEPTION 'campaign % is already %', p_campaign_id, v_campaign.status
            USING ERRCODE = 'PW301', HINT = 'A finished campaign cannot be cancelled.';
    END IF;
    -- Messages waiting in the queue are withdrawn; those a worker holds finish and report.
    EXECUTE format('DELETE FROM pgmq.%I q USING core.outbound_messages o
                    WHERE o.outbound_id = (q.message->>''o'')::bigint AND o.state = ''queued''',
                   pgmq.format_table_name(core.campaign_queue(p_campaign_id), 'q'));
    UPDATE core.outbound_messages SET state = 'cancelled'
    WHERE campaign_id = p_campaign_id AND state = 'queued';
    GET DIAGNOSTICS v_cancelled = ROW_COUNT;
    UPDATE core.campaigns SET status = 'cancelled', cancelled_at = now(), cancelled = cancelled + v_cancelled
    WHERE campaign_id = p_campaign_id;
    RETURN 'cancelled';
END
$$;

COMMENT ON FUNCTION api.cancel_campaign(p_tenant_id bigint, p_campaign_id bigint) IS 'Cancels a campaign: its queued messages are withdrawn and marked cancelled (messages a worker already holds finish). Returns the new status. Raises PW201 when not found, PW301 when already completed or cancelled.';

CREATE FUNCTION api.claim_llm_jobs(p_worker text, p_max integer DEFAULT 16, p_vt_s integer DEFAULT 60, p_now timestamp with time zone DEFAULT now()) RETURNS SETOF api.llm_job
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_keep bigint[];
    v_drop bigint[];
    v_capped bigint[];
    v_day date := (p_now AT TIME ZONE 'UTC')::date;
BEGIN
    IF p_max IS NULL OR p_max NOT BETWEEN 1 AND 1000 OR p_vt_s IS NULL OR p_vt_s NOT BETWEEN 5 AND 3600 THEN
        RAISE EXCEPTION 'p_max must be 1..1000 and p_vt_s 5..3600' USING ERRCODE = 'PW100',
            HINT = 'Claim what the worker can run at once, for longer than its LLM timeout.';
    END IF;
    WITH jobs AS (
        SELECT r.msg_id, (r.message->>'number_id')::bigint AS number_id,
               (r.message->>'contact_id')::bigint AS contact_id, (r.message->>'message_id')::bigint AS message_id
        FROM pgmq.read('llm_jobs', p_vt_s, p_max) r
    ), judged AS (
        SELECT j.msg_id,
               row_number() OVER (PARTITION BY j.number_id, j.contact_id ORDER BY j.message_id DESC, j.msg_id DESC) = 1
               AND n.llm_enabled AND v.assigned_to IS NULL AND NOT v.needs_human AND NOT c.opted_out
               AND core.window_open(v.last_inbound_at, p_now)
               AND j.message_id > coalesce(v.llm_answered_id, 0) AS keep
        FROM jobs j
        LEFT JOIN core.wa_numbers n ON n.number_id = j.number_id
        LEFT JOIN core.conversations v ON v.number_id = j.number_id AND v.contact_id = j.contact_id
        LEFT JOIN core.contacts c ON c.contact_id = j.contact_id
    )
    SELECT array_agg(msg_id) FILTER (WHERE keep), array_agg(msg_id) FILTER (WHERE keep IS NOT TRUE)
    INTO v_keep, v_drop FROM judged;
    IF v_drop IS NOT NULL THEN
        PERFORM pgmq.delete('llm_jobs', v_drop);
    END IF;
    IF v_keep IS NULL THEN
        RETURN;
    END IF;

    -- Everything the conversation received up to now is in this job's context.
    UPDATE core.conversations v SET
        llm_answered_id = greatest(v.llm_answered_id, (
            SELECT max(i.message_id) FROM core.inbox_messages i
            WHERE i.number_id = v.number_id AND i.contact_id = v.contact_id AND i.direction = 'in')),
        llm_replies = CASE WHEN v.llm_day = v_day THEN v.llm_replies ELSE 0 END,
        llm_day = v_day
    FROM pgmq.q_llm_jobs q
    WHERE q.msg_id = ANY (v_keep)
      AND v.number_id = (q.message->>'number_id')::bigint AND v.contact_id = (q.message->>'contact_id')::bigint;

    -- The number's cap: lock today's usage rows (in key order, so that two workers share
    -- the cap and cannot deadlock), then hand out calls to the jobs whose contact is under
    -- its own limit, oldest first, while the number has calls left.
    INSERT INTO core.llm_number_usage AS u (number_id, day)
    SELECT DISTINCT (q.message->>'number_id')::bigint, v_day FROM pgmq.q_llm_jobs q WHERE q.msg_id = ANY (v_keep)
    ORDER BY 1
    ON CONFLICT (number_id, day) DO NOTHING;
    PERFORM 1 FROM core.llm_number_usage u
    WHERE u.day = v_day AND u.number_id IN (SELECT (q.message->>'number_id')::bigint FROM pgmq.q_llm_jobs q
                                            WHERE q.msg_id = ANY (v_keep))
    ORDER BY u.number_id FOR UPDATE;
    WITH calls AS (
        SELECT q.msg_id, n.number_id, n.tenant_id, n.llm_number_daily_limit - u.calls AS left_today,
               row_number() OVER (PARTITION BY n.number_id ORDER BY q.msg_id) AS nth
        FROM pgmq.q_llm_jobs q
        JOIN core.conversations v ON v.number_id = (q.message->>'number_id')::bigint
                                 AND v.contact_id = (q.message->>'contact_id')::bigint
        JOIN core.wa_numbers n ON n.number_id = v.number_id
        JOIN core.llm_number_usage u ON u.number_id = n.number_id AND u.day = v_day
        WHERE q.msg_id = ANY (v_keep) AND v.llm_replies < n.llm_daily_limit
    ), counted AS (
        UPDATE core.llm_number_usage u SET calls = u.calls + k.granted
        FROM (SELECT c.number_id, count(*) FILTER (WHERE c.nth <= c.left_today)::integer AS granted
              FROM calls c GROUP BY c.number_id) k
        WHERE u.number_id = k.number_id AND u.day = v_day AND k.granted > 0
    ), notified AS (
        INSERT INTO core.notifications (tenant_id, kind, severity, message, details, dedupe_key)
        SELECT DISTINCT ON (c.number_id) c.tenant_id, 'llm_number_cap', 'warning',
               format('number %s reached its %s LLM calls for %s (UTC); conversations go to a human until the next day',
                      coalesce(n.display_phone_number, n.phone_number_id), n.llm_number_daily_limit, v_day),
               jsonb_build_object('number_id', c.number_id, 'day', v_day, 'limit', n.llm_number_daily_limit,
                                  'hint', 'Raise number_daily_limit with api.configure_llm, or answer the flagged conversations.'),
               format('llm_number_cap:%s:%s', c.number_id, v_day)
        FROM calls c JOIN core.wa_numbers n ON n.number_id = c.number_id
        WHERE c.nth > c.left_today
        ORDER BY c.number_id
        ON CONFLICT DO NOTHING
    )
    SELECT array_agg(c.msg_id) FILTER (WHERE c.nth > c.left_today) INTO v_capped FROM calls c;

    RETURN QUERY
    SELECT q.msg_id, v.number_id, v.contact_id, (q.message->>'message_id')::bigint, n.llm_system_prompt,
           coalesce((SELECT jsonb_agg(jsonb_build_object(
                                'role', CASE h.direction WHEN 'in' THEN 'user' ELSE 'assistant' END,
                                'content', coalesce(h.body, '[' || h.type || ']'))
                            ORDER BY h.created_at, h.message_id)
                     FROM (SELECT i.direction, i.body, i.type, i.created_at, i.message_id
                           FROM core.inbox_messages i
                           WHERE i.number_id = v.number_id AND i.contact_id = v.contact_id
                           ORDER BY i.created_at DESC, i.message_id DESC
                           LIMIT n.llm_context_messages) h), '[]'),
           v.llm_replies >= n.llm_daily_limit OR q.msg_id = ANY (coalesce(v_capped, '{}'))
    FROM pgmq.q_llm_jobs q
    JOIN core.conversations v ON v.number_id = (q.message->>'number_id')::bigint
                             AND v.contact_id = (q.message->>'contact_id')::bigint
    JOIN core.wa_numbers n ON n.number_id = v.number_id
    WHERE q.msg_id = ANY (v_keep)
    ORDER BY q.msg_id;
END
$$;

COMMENT ON FUNCTION api.claim_llm_jobs(p_worker text, p_max integer, p_vt_s integer, p_now timestamp with time zone) IS 'Claims up to p_max LLM jobs for p_vt_s seconds for worker p_worker; returns each with the number''s system prompt, the conversation''s last messages as chat messages (oldest first) and over_limit when the contact''s LLM replies or the number''s LLM calls for the UTC day of p_now are used up (the number''s cap raises one notification a day). Superseded or unwanted jobs (the contact opted out, assigned to an agent, flagged for a human, LLM disabled, window closed) are deleted, not returned. Raises PW100 for p_max outside 1..1000 or p_vt_s outside 5..3600.';

CREATE FUNCTION api.claim_sends(p_worker text, p_max integer DEFAULT 500, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS SETOF api.send_request
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

        v_batch := core.take_in_flight(core.read_number(v_number.number_id, v_budget, v_vt, v_now), v_number, v_now);
        CONTINUE WHEN cardinality(v_batch) = 0;

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

COMMENT ON FUNCTION api.claim_sends(p_worker text, p_max integer, p_now timestamp with time zone) IS 'Claims up to p_max messages for worker p_worker within each number''s rate (replies first, then running campaigns in equal shares) and returns rendered Graph API requests with the time each may be sent (send_at); they stay invisible to other workers for the claim timeout. A redelivered message that a status already settled is dropped, not resent. p_now is the time of the claim (NULL: the clock).';

CREATE FUNCTION api.claim_webhooks(p_max integer DEFAULT 200) RETURNS api.webhook_claim
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_settings core.settings;
    v_claim api.webhook_claim;
    v_spent bigint[];
BEGIN
    IF p_max IS NULL OR p_max NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'p_max must be between 1 and 10000, not %', p_max
            USING ERRCODE = 'PW100', HINT = 'Claim a few hundred payloads per call.';
    END IF;
    SELECT * INTO v_settings FROM core.settings;
    WITH claimed AS MATERIALIZED (
        SELECT * FROM pgmq.read('webhooks', v_settings.webhook_claim_s, p_max)
    ), spent AS (
        -- Read this often and never archived: every batch that held it crashed or timed out.
        SELECT c.msg_id, core.dead_letter_webhook(c.msg_id, c.message, c.headers, coalesce(c.headers->>'sqlstate', '57014'),
                   format('not processed after %s attempts: %s', c.read_ct - 1,
                          coalesce(c.headers->>'last_error', 'the batch never finished')))
        FROM claimed c WHERE c.read_ct > v_settings.webhook_max_attempts
    )
    SELECT coalesce(array_agg(c.msg_id ORDER BY c.msg_id) FILTER (WHERE c.read_ct = 1), '{}'),
           coalesce(array_agg(c.msg_id ORDER BY c.msg_id)
                    FILTER (WHERE c.read_ct > 1 AND c.msg_id NOT IN (SELECT s.msg_id FROM spent s)), '{}'),
           (SELECT array_agg(s.msg_id) FROM spent s)
    INTO v_claim.fresh, v_claim.retried, v_spent
    FROM claimed c;
    IF v_spent IS NOT NULL THEN
        PERFORM pgmq.delete('webhooks', v_spent);
    END IF;
    IF cardinality(v_claim.fresh) + cardinality(v_claim.retried) = 0 AND v_spent IS NULL THEN
        PERFORM core.restore_webhook_notify();
    END IF;
    RETURN v_claim;
END
$$;

COMMENT ON FUNCTION api.claim_webhooks(p_max integer) IS 'Claims up to p_max queued webhook payloads for api.process_claimed_webhooks, in its own transaction, so that a batch that crashes or times out still counts as an attempt: the payloads come back after webhook_claim_s, and one read more than webhook_max_attempts times is dead-lettered (webhooks_dead) instead of returned. Returns the queue ids read for the first time (fresh: process them as one batch) and those read again after a failed attempt (retried: process them one by one). Raises PW100 for p_max outside 1..10000.';

CREATE FUNCTION api.complete_llm_jobs(p_results jsonb) RETURNS api.llm_outcome
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_outcome api.llm_outcome := ROW(0, 0, 0);
    v_replies core.reply_request[];
    v_total integer;
    v_kinds text[];
    v_number_ids bigint[];
    v_contact_ids bigint[];
BEGIN
    IF jsonb_typeof(p_results) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'results must be a JSON array' USING ERRCODE = 'PW100',
            HINT = 'One object per claimed job: msg_id, text, error.';
    END IF;
    -- Deleting the job is what makes a result count: a job redelivered to a second
    -- worker after its visibility timeout is answered once, by whoever reports first.
    WITH done AS (
        DELETE FROM pgmq.q_llm_jobs q
        USING jsonb_to_recordset(p_results) AS r(msg_id bigint, text text, error text)
        WHERE q.msg_id = r.msg_id
        RETURNING (q.message->>'number_id')::bigint AS number_id, (q.message->>'contact_id')::bigint AS contact_id,
                  nullif(btrim(r.text), '') AS text, r.error
    ), judged AS (
        SELECT d.*, CASE
                   WHEN v.assigned_to IS NOT NULL OR d.text IS NULL OR c.opted_out THEN 'dropped'
                   WHEN d.error IS NULL THEN 'llm'
                   WHEN NOT v.needs_human THEN 'fallback'
                   ELSE 'dropped' END AS outcome
        FROM done d
        LEFT JOIN core.conversations v ON v.number_id = d.number_id AND v.contact_id = d.contact_id
        LEFT JOIN core.contacts c ON c.contact_id = d.contact_id
    ), flagged AS (
        UPDATE core.conversations v SET needs_human = true, needs_human_at = now(),
            needs_human_reason = left('LLM: ' || j.error, 300)
        FROM judged j
        WHERE j.outcome = 'fallback' AND v.number_id = j.number_id AND v.contact_id = j.contact_id
    )
    SELECT count(*),
           array_agg(ROW(j.number_id, j.contact_id, CASE j.outcome WHEN 'llm' THEN 'llm' ELSE 'bot' END,
                         jsonb_build_object('type', 'text', 'text', jsonb_build_object('body', left(j.text, core.text_body_max()))))::core.reply_request)
               FILTER (WHERE j.outcome <> 'dropped')
    INTO v_total, v_replies
    FROM judged j;

    IF v_replies IS NOT NULL THEN
        -- Queued replies by kind: 'llm' answers count against the daily limit, 'bot' ones
        -- are fallbacks. A reply refused (the window closed meanwhile) counts as dropped.
        SELECT array_agg(r.kind), array_agg(r.number_id), array_agg(r.contact_id)
        INTO v_kinds, v_number_ids, v_contact_ids
        FROM core.enqueue_replies(v_replies) q
        JOIN unnest(v_replies) WITH ORDINALITY AS r(number_id, contact_id, kind, message, ord) ON r.ord = q.ord
        WHERE q.outbound_id IS NOT NULL;
        UPDATE core.conversations v SET llm_replies = v.llm_replies + k.n
        FROM (SELECT number_id, contact_id, count(*)::integer AS n
              FROM unnest(v_kinds, v_number_ids, v_contact_ids) AS u(kind, number_id, contact_id)
              WHERE kind = 'llm' GROUP BY number_id, contact_id ORDER BY number_id, contact_id) k
        WHERE v.number_id = k.number_id AND v.contact_id = k.contact_id;
        SELECT count(*) FILTER (WHERE kind = 'llm'), count(*) FILTER (WHERE kind = 'bot')
        INTO v_outcome.replied, v_outcome.fell_back
        FROM unnest(v_kinds) kind;
    END IF;
    v_outcome.dropped := v_total - v_outcome.replied - v_outcome.fell_back;
    RETURN v_outcome;
END
$$;

COMMENT ON FUNCTION api.complete_llm_jobs(p_results jsonb) IS 'Stores the LLM worker''s results (JSON array of {msg_id, text, error}): a reply is queued on the number''s reply queue and counted against the contact''s daily limit; an error queues the fallback text once and flags the conversation for a human. Results for jobs already done, handed to an agent, outside the window or for a contact who opted out meanwhile are dropped. Returns (replied, fell_back, dropped). Raises PW100 when p_results is not an array.';

CREATE FUNCTION api.configure_llm(p_tenant_id bigint, p_number_id bigint, p_enabled boolean DEFAULT NULL::boolean, p_system_prompt text DEFAULT NULL::text, p_daily_limit integer DEFAULT NULL::integer, p_context_messages integer DEFAULT NULL::integer, p_number_daily_limit integer DEFAULT NULL::integer) RETURNS api.llm_settings
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_number core.wa_numbers := core.number_for(p_tenant_id, p_number_id);
    v_bad record;
BEGIN
    -- The first setting given outside its bounds (api.llm_bounds), named in the error.
    SELECT b.setting, b.type, b.minimum, b.maximum, b.meaning, v.value INTO v_bad
    FROM api.llm_bounds() b
    JOIN (VALUES ('system_prompt', length(p_system_prompt)), ('daily_limit', p_daily_limit),
                 ('context_messages', p_context_messages), ('number_daily_limit', p_number_daily_limit))
         AS v(setting, value) ON v.setting = b.setting
    WHERE v.value NOT BETWEEN b.minimum AND b.maximum
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%', format('%s%s %s is outside %s to %s', v_bad.setting,
                                    CASE v_bad.type WHEN 'string' THEN ' length' ELSE '' END,
                                    v_bad.value, v_bad.minimum, v_bad.maximum)
            USING ERRCODE = 'PW100', COLUMN = v_bad.setting, HINT = v_bad.meaning || '.';
    END IF;
    UPDATE core.wa_numbers SET
        llm_enabled = coalesce(p_enabled, llm_enabled),
        llm_system_prompt = CASE WHEN p_system_prompt IS NULL THEN llm_system_prompt ELSE nullif(btrim(p_system_prompt), '') END,
        llm_daily_limit = coalesce(p_daily_limit, llm_daily_limit),
        llm_context_messages = coalesce(p_context_messages, llm_context_messages),
        llm_number_daily_limit = coalesce(p_number_daily_limit, llm_number_daily_limit)
    WHERE number_id = v_number.number_id
    RETURNING * INTO v_number;
    RETURN ROW(v_number.number_id, v_number.llm_enabled, v_number.llm_system_prompt, v_number.llm_daily_limit,
               v_number.llm_context_messages, v_number.llm_number_daily_limit)::api.llm_settings;
END
$$;

COMMENT ON FUNCTION api.configure_llm(p_tenant_id bigint, p_number_id bigint, p_enabled boolean, p_system_prompt text, p_daily_limit integer, p_context_messages integer, p_number_daily_limit integer) IS 'Enables or disables LLM replies on a number (they answer what no bot rule matched) and sets the system prompt, the replies allowed per contact and day, how many recent messages the LLM sees and the LLM calls allowed per number and UTC day (default 1000; over it, conversations go to a human with the fallback text and one notification a day); a NULL argument keeps the current value. Returns the settings. Raises PW100 naming the first setting outside api.llm_bounds(), PW202 when the number is not the tenant''s.';

CREATE FUNCTION api.configure_opt_out(p_tenant_id bigint, p_opt_out_keywords text[] DEFAULT NULL::text[], p_opt_in_keywords text[] DEFAULT NULL::text[], p_opt_out_reply text DEFAULT NULL::text, p_opt_in_reply text DEFAULT NULL::text) RETURNS api.opt_out_settings
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_out text[];
    v_in text[];
    v_tenant core.tenants;
BEGIN
    SELECT * INTO v_tenant FROM core.tenants WHERE tenant_id = p_tenant_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % does not exist', p_tenant_id USING ERRCODE = 'PW205', HINT = 'Create the tenant first.';
    END IF;
    v_out := CASE WHEN p_opt_out_keywords IS NULL THEN v_tenant.opt_out_keywords
                  ELSE ARRAY(SELECT DISTINCT core.normalize_text(k) FROM unnest(p_opt_out_keywords) k
                             WHERE core.normalize_text(k) IS NOT NULL ORDER BY 1) END;
    v_in := CASE WHEN p_opt_in_keywords IS NULL THEN v_tenant.opt_in_keywords
                 ELSE ARRAY(SELECT DISTINCT core.normalize_text(k) FROM unnest(p_opt_in_keywords) k
                            WHERE core.normalize_text(k) IS NOT NULL ORDER BY 1) END;
    IF p_opt_out_keywords IS NOT NULL AND cardinality(v_out) = 0 THEN
        RAISE EXCEPTION 'at least one opt-out keyword is required' USING ERRCODE = 'PW100',
            HINT = 'Recipients must be able to stop messages; STOP is the usual keyword.';
    END IF;
    IF v_out && v_in THEN
        RAISE EXCEPTION 'keywords % are both opt-out and opt-in', ARRAY(SELECT unnest(v_out) INTERSECT SELECT unnest(v_in))
            USING ERRCODE = 'PW100', HINT = 'A keyword opts out or opts in, not both.';
    END IF;
    IF btrim(p_opt_out_reply) = '' OR btrim(p_opt_in_reply) = '' OR length(p_opt_out_reply) > core.text_body_max()
       OR length(p_opt_in_reply) > core.text_body_max() THEN
        RAISE EXCEPTION 'confirmation texts are 1 to % characters', core.text_body_max() USING ERRCODE = 'PW100',
            HINT = 'Pass NULL to keep a confirmation as it is.';
    END IF;
    UPDATE core.tenants SET opt_out_keywords = v_out, opt_in_keywords = v_in,
        opt_out_reply = coalesce(p_opt_out_reply, opt_out_reply), opt_in_reply = coalesce(p_opt_in_reply, opt_in_reply)
    WHERE tenant_id = p_tenant_id
    RETURNING * INTO v_tenant;
    RETURN ROW(v_tenant.tenant_id, v_tenant.opt_out_keywords, v_tenant.opt_in_keywords,
               v_tenant.opt_out_reply, v_tenant.opt_in_reply)::api.opt_out_settings;
END
$$;

COMMENT ON FUNCTION api.configure_opt_out(p_tenant_id bigint, p_opt_out_keywords text[], p_opt_in_keywords text[], p_opt_out_reply text, p_opt_in_reply text) IS 'Sets the tenant''s opt-out and opt-in keywords (matched against the whole message without case, accents and surrounding spaces) and the confirmations sent for them; a NULL argument keeps the current value. Returns the settings. Raises PW100 for an empty opt-out list, a keyword in both lists or an empty or over-long confirmation, PW205 for an unknown tenant.';

CREATE FUNCTION api.contacts(p_tenant_id bigint, p_phone text DEFAULT NULL::text, p_opted_out boolean DEFAULT NULL::boolean, p_before_id bigint DEFAULT NULL::bigint, p_limit integer DEFAULT 50) RETURNS SETOF api.contact
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'limit must be between 1 and 1000, not %', p_limit USING ERRCODE = 'PW100',
            HINT = 'Page with before_id: pass the smallest contact_id of the previous page.';
    END IF;
    IF p_phone IS NOT NULL AND core.normalize_phone(p_phone) IS NULL THEN
        RAISE EXCEPTION 'phone "%" is not a phone number with a country code', p_phone USING ERRCODE = 'PW100',
            HINT = 'E.164, e.g. +14155550100.';
    END IF;
    RETURN QUERY
    SELECT c.contact_id, c.wa_id, c.user_id, c.name, c.profile_name, c.attributes, c.opted_out, c.opted_out_at,
           c.last_inbound_at, c.created_at
    FROM core.contacts c
    WHERE c.tenant_id = p_tenant_id
      AND (p_phone IS NULL OR c.wa_id = core.normalize_phone(p_phone))
      AND (p_opted_out IS NULL OR c.opted_out = p_opted_out)
      AND (p_before_id IS NULL OR c.contact_id < p_before_id)
    ORDER BY c.contact_id DESC
    LIMIT p_limit;
END
$$;

COMMENT ON FUNCTION api.contacts(p_tenant_id bigint, p_phone text, p_opted_out boolean, p_before_id bigint, p_limit integer) IS 'Lists the tenant''s contacts newest first, optionally the one with a phone (any common format, with country code) or only opted-out/in ones; keyset pagination on contact_id (p_before_id). Raises PW100 for a limit outside 1..1000 or a malformed phone.';

CREATE FUNCTION api.conversation(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint, p_before_at timestamp with time zone DEFAULT NULL::timestamp with time zone, p_before_id bigint DEFAULT NULL::bigint, p_limit integer DEFAULT 50) RETURNS SETOF api.inbox_message
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    PERFORM core.number_for(p_tenant_id, p_number_id);
    PERFORM core.contact_for(p_tenant_id, p_contact_id);
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 500 THEN
        RAISE EXCEPTION 'limit % is out of range', p_limit USING ERRCODE = 'PW100', HINT = 'Ask for 1 to 500 messages a page.';
    END IF;
    RETURN QUERY
    SELECT i.message_id, i.direction, i.type, i.body, i.payload, coalesce(i.wamid, o.wamid), i.context_wamid,
           i.created_at, i.outbound_id, o.kind, o.state, o.error_code, o.error_detail, i.campaign_id
    FROM core.inbox_messages i
    LEFT JOIN core.outbound_messages o ON o.outbound_id = i.outbound_id AND i.direction = 'out'
    WHERE i.number_id = p_number_id AND i.contact_id = p_contact_id
      AND (i.created_at, i.message_id) < (coalesce(p_before_at, 'infinity'), coalesce(p_before_id, 9223372036854775807))
    ORDER BY i.created_at DESC, i.message_id DESC
    LIMIT p_limit;
END
$$;

COMMENT ON FUNCTION api.conversation(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint, p_before_at timestamp with time zone, p_before_id bigint, p_limit integer) IS 'One page of a conversation''s messages, newest first, both directions; an outbound one carries its kind (bot, agent, llm, reply) and delivery state. Keyset pagination: pass the last row''s created_at and message_id as p_before_at and p_before_id. Raises PW100 for a limit outside 1..500, PW202/PW204 when the number or contact is not the tenant''s.';

CREATE FUNCTION api.conversations(p_tenant_id bigint, p_number_id bigint, p_filter text DEFAULT 'all'::text, p_agent text DEFAULT NULL::text, p_before_at timestamp with time zone DEFAULT NULL::timestamp with time zone, p_before_contact_id bigint DEFAULT NULL::bigint, p_limit integer DEFAULT 50) RETURNS SETOF api.conversation_summary
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    PERFORM core.number_for(p_tenant_id, p_number_id);
    IF p_filter IS NULL OR p_filter NOT IN ('all', 'unread', 'open', 'assigned', 'unassigned', 'needs_human') THEN
        RAISE EXCEPTION 'filter must be all, unread, open, assigned, unassigned or needs_human, not "%"', p_filter
            USING ERRCODE = 'PW100', HINT = 'open: the 24-hour window is open; p_agent narrows to one agent''s conversations.';
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 500 THEN
        RAISE EXCEPTION 'limit % is out of range', p_limit USING ERRCODE = 'PW100', HINT = 'Ask for 1 to 500 conversations a page.';
    END IF;
    RETURN QUERY
    SELECT * FROM core.conversation_summaries(p_number_id, ARRAY(
        SELECT v.contact_id FROM core.conversations v
        WHERE v.number_id = p_number_id
          AND (v.last_message_at, v.contact_id)
              < (coalesce(p_before_at, 'infinity'), coalesce(p_before_contact_id, 9223372036854775807))
          AND CASE p_filter
                  WHEN 'unread' THEN v.unread > 0
                  WHEN 'open' THEN v.last_inbound_at > (SELECT core.window_start(now()))
                  WHEN 'assigned' THEN v.assigned_to IS NOT NULL
                  WHEN 'unassigned' THEN v.assigned_to IS NULL
                  WHEN 'needs_human' THEN v.needs_human
                  ELSE true END
          AND (p_agent IS NULL OR v.assigned_to = p_agent)
        ORDER BY v.last_message_at DESC, v.contact_id DESC
        LIMIT p_limit));
END
$$;

COMMENT ON FUNCTION api.conversations(p_tenant_id bigint, p_number_id bigint, p_filter text, p_agent text, p_before_at timestamp with time zone, p_before_contact_id bigint, p_limit integer) IS 'Lists a number''s conversations, latest message first: the contact, the last message, unread count, whether the 24-hour window is open and until when, the assigned agent and whether a human was asked for. p_filter is all, unread, open, assigned, unassigned or needs_human; p_agent narrows to one agent. Keyset pagination: pass the last row''s last_message_at and contact_id as p_before_at and p_before_contact_id. Raises PW100 for a bad filter or limit (1..500), PW202 when the number is not the tenant''s.';

CREATE FUNCTION api.create_api_key(p_tenant_id bigint, p_name text, p_scope text DEFAULT 'admin'::text, p_expires_at timestamp with time zone DEFAULT NULL::timestamp with time zone, p_rate_limit_per_minute integer DEFAULT NULL::integer, p_now timestamp with time zone DEFAULT now()) RETURNS api.api_key_created
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_key text;
    v_result api.api_key_created;
BEGIN
    IF coalesce(btrim(p_name), '') = '' THEN
        RAISE EXCEPTION 'API key name is empty' USING ERRCODE = 'PW100',
            HINT = 'Name the key after who uses it, e.g. "dashboard".';
    END IF;
    IF core.scope_rank(coalesce(p_scope, '')) IS NULL THEN
        RAISE EXCEPTION 'scope % is not one of read, send, admin', p_scope USING ERRCODE = 'PW100',
            HINT = 'read: GET routes only; send: also campaigns, contacts and the inbox; admin: also numbers, settings and keys.';
    END IF;
    IF p_expires_at <= p_now THEN
        RAISE EXCEPTION 'expires_at % is not in the future', p_expires_at USING ERRCODE = 'PW100',
            HINT = 'Give a time after now, or none for a key that does not expire.';
    END IF;
    IF NOT p_rate_limit_per_minute BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'rate_limit_per_minute % is out of range', p_rate_limit_per_minute USING ERRCODE = 'PW100',
            HINT = 'Give 1 to 1000000 requests a minute, or none for the platform''s default.';
    END IF;
    -- A tenant's own admin key must not lift its keys past the platform's limit.
    IF p_rate_limit_per_minute > (SELECT s.api_rate_limit_per_minute FROM core.settings s)
       AND NOT core.caller_is_operator() THEN
        RAISE EXCEPTION 'rate_limit_per_minute % is above the platform''s limit of %', p_rate_limit_per_minute,
            (SELECT s.api_rate_limit_per_minute FROM core.settings s) USING ERRCODE = 'PW410',
            HINT = 'Only an operator (pgwa key create --rate-limit) gives a key more than the platform''s limit.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM core.tenants WHERE tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'tenant % does not exist', p_tenant_id USING ERRCODE = 'PW205',
            HINT = 'Create the tenant first.';
    END IF;
    -- 244 random bits from the server's strong random source (gen_random_uuid).
    v_key := 'pgwa_' || replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
    INSERT INTO core.api_keys (tenant_id, name, key_hash, key_prefix, scope, expires_at, rate_limit_per_minute,
                               created_at)
    VALUES (p_tenant_id, btrim(p_name), sha256(convert_to(v_key, 'UTF8')), left(v_key, 13), p_scope, p_expires_at,
            p_rate_limit_per_minute, p_now)
    RETURNING api_key_id, tenant_id, name, v_key, key_prefix, created_at, scope, expires_at, rate_limit_per_minute
    INTO v_result;
    RETURN v_result;
END
$$;

COMMENT ON FUNCTION api.create_api_key(p_tenant_id bigint, p_name text, p_scope text, p_expires_at timestamp with time zone, p_rate_limit_per_minute integer, p_now timestamp with time zone) IS 'Creates an API key for a tenant with a scope (read, send or admin; default admin), an optional expiry and an optional rate limit (requests a minute; default the platform''s), and returns it with its id and prefix; the key is shown this once, only its sha256 is kept. Raises PW100 for an empty name, an unknown scope, a past expiry or a limit out of range, PW410 when a client (not an operator) asks for more than core.settings.api_rate_limit_per_minute, PW205 for an unknown tenant.';

CREATE FUNCTION api.create_campaign(p_tenant_id bigint, p_number_id bigint, p_name text, p_templates jsonb, p_on_invalid text DEFAULT 'reject'::text, p_scheduled_at timestamp with time zone DEFAULT NULL::timestamp with time zone, p_start boolean DEFAULT false, p_default_country_code text DEFAULT NULL::text) RETURNS api.campaign_created
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    SET client_min_messages TO 'warning'
    SET work_mem TO '256MB'
    AS $_$
DECLARE
    v_number core.wa_numbers;
    v_k integer;
    v_bad record;
    v_columns text[];
    v_campaign_id bigint;
    v_status text;
    v_result api.campaign_created;
    v_invalid integer;
    v_staged integer;
    v_params_sql text;
BEGIN
    IF coalesce(btrim(p_name), '') = '' THEN
        RAISE EXCEPTION 'campaign name is empty' USING ERRCODE = 'PW100', HINT = 'Name the campaign.';
    END IF;
    v_number := core.number_for(p_tenant_id, p_number_id);
    PERFORM core.staged_count();
    IF jsonb_typeof(p_templates) IS DISTINCT FROM 'array' OR jsonb_array_length(p_templates) NOT BETWEEN 1 AND 10 THEN
        RAISE EXCEPTION 'templates must be a JSON array of 1 to 10 templates' USING ERRCODE = 'PW102',
            HINT = '[{"name": "...", "language": "en_US", "params": [{"column": "..."}, {"value": "..."}]}]';
    END IF;
    v_k := jsonb_array_length(p_templates);

    -- Templates: each must exist for the number's WABA, be approved, and have a source
    -- for every body parameter.
    DROP TABLE IF EXISTS pg_temp.campaign_variants;
    CREATE TEMP TABLE campaign_variants ON COMMIT DROP AS
    SELECT (e.ord - 1)::smallint AS variant, e.spec, t.template_id, t.name, t.language, t.status,
           t.body_param_count, coalesce(e.spec->'params', '[]') AS params
    FROM jsonb_array_elements(p_templates) WITH ORDINALITY e(spec, ord)
    LEFT JOIN core.templates t
      ON t.waba_id = v_number.waba_id AND t.tenant_id = p_tenant_id
     AND t.name = e.spec->>'name' AND t.language = e.spec->>'language';
    ANALYZE pg_temp.campaign_variants;
    FOR v_bad IN SELECT * FROM pg_temp.campaign_variants ORDER BY variant LOOP
        IF v_bad.template_id IS NULL THEN
            RAISE EXCEPTION 'template % ("%" %) does not exist for WABA %', v_bad.variant + 1,
                v_bad.spec->>'name', coalesce(v_bad.spec->>'language', 'with no language'), v_number.waba_id
                USING ERRCODE = 'PW102', HINT = 'Sync templates from Meta or check the name and language.';
        ELSIF v_bad.status <> 'APPROVED' THEN
            RAISE EXCEPTION 'template "%" (%) is %, not APPROVED', v_bad.name, v_bad.language, v_bad.status
                USING ERRCODE = 'PW102', HINT = 'Only approved templates can be sent.';
        ELSIF jsonb_typeof(v_bad.params) <> 'array' OR jsonb_array_length(v_bad.params) <> v_bad.body_param_count THEN
            RAISE EXCEPTION 'template "%" has % body parameters but % were mapped', v_bad.name,
                v_bad.body_param_count, CASE WHEN jsonb_typeof(v_bad.params) = 'array' THEN jsonb_array_length(v_bad.params) END
                USING ERRCODE = 'PW102', HINT = 'Map each {{n}} to {"column": "csv column"} or {"value": "constant"}.';
        ELSIF EXISTS (SELECT 1 FROM jsonb_array_elements(v_bad.params) p
                      WHERE jsonb_typeof(p) <> 'object' OR NOT (p ? 'column' OR p ? 'value')
                         OR jsonb_typeof(coalesce(p->'column', p->'value')) <> 'string') THEN
            RAISE EXCEPTION 'template "%" has a parameter that is neither {"column": ...} nor {"value": ...}', v_bad.name
                USING ERRCODE = 'PW102', HINT = 'Each parameter names a CSV column or gives a constant string.';
        END IF;
    END LOOP;
    SELECT coalesce(array_agg(DISTINCT p->>'column'), '{}') INTO v_columns
    FROM pg_temp.campaign_variants v, jsonb_array_elements(v.params) p WHERE p ? 'column';
    FOR v_bad IN SELECT c FROM unnest(v_columns) c
                 WHERE c NOT IN ('phone', 'name')
                   AND NOT EXISTS (SELECT 1 FROM pg_temp.staged_contacts s WHERE s.attributes ? c) LOOP
        RAISE EXCEPTION 'column "%" is mapped to a template parameter but is not in the contact list', v_bad.c
            USING ERRCODE = 'PW102', HINT = 'Check the CSV header.';
    END LOOP;

    -- Rows: normalise, find the invalid ones, dedupe, skip opted-out contacts.
    SELECT c.invalid, c.invalid_rows, c.duplicates, c.staged
    INTO v_invalid, v_result.invalid_rows, v_result.duplicates_removed, v_staged
    FROM core.check_staged_contacts(p_default_country_code, p_on_invalid, v_columns) c;

    DROP TABLE IF EXISTS pg_temp.campaign_sends;
    CREATE TEMP TABLE campaign_sends ON COMMIT DROP AS
    SELECT r.*, ((row_number() OVER (ORDER BY r.row_no) - 1) % v_k)::smallint AS variant
    FROM (SELECT DISTINCT ON (wa_id) * FROM pg_temp.contact_rows
          WHERE problem IS NULL ORDER BY wa_id, row_no) r
    WHERE NOT EXISTS (SELECT 1 FROM core.contacts c
                      WHERE c.tenant_id = p_tenant_id AND c.wa_id = r.wa_id AND c.opted_out);
    -- Temp tables have no statistics until analysed; without them the joins below
    -- plan for one row and loop.
    ANALYZE pg_temp.campaign_sends;

    v_result.skipped_invalid := v_invalid;
    v_result.total := (SELECT count(*) FROM pg_temp.campaign_sends);
    v_result.skipped_opted_out := v_staged - v_invalid - v_result.duplicates_removed - v_result.total;
    IF v_result.total = 0 THEN
        RAISE EXCEPTION 'no contact is left to message (% invalid, % opted out, % duplicates)', v_invalid,
            v_result.skipped_opted_out, v_result.duplicates_removed
            USING ERRCODE = 'PW101', HINT = 'Check the contact list.';
    END IF;

    -- Existing contacts are only rewritten when the list brings something new.
    INSERT INTO core.contacts AS c (tenant_id, wa_id, name, attributes)
    SELECT p_tenant_id, s.wa_id, s.name, s.attributes FROM pg_temp.campaign_sends s
    ON CONFLICT (tenant_id, wa_id) DO UPDATE SET
        name = coalesce(excluded.name, c.name),
        attributes = c.attributes || excluded.attributes,
        updated_at = now()
    WHERE c.name IS DISTINCT FROM coalesce(excluded.name, c.name) OR NOT c.attributes @> excluded.attributes;

    v_status := CASE WHEN p_scheduled_at IS NOT NULL AND p_scheduled_at > now() THEN 'scheduled'
                     WHEN p_start OR p_scheduled_at IS NOT NULL THEN 'running'
                     ELSE 'draft' END;
    INSERT INTO core.campaigns (tenant_id, number_id, name, status, scheduled_at, started_at, total,
                                skipped_opted_out, skipped_invalid, duplicates_removed)
    VALUES (p_tenant_id, p_number_id, btrim(p_name), v_status, p_scheduled_at,
            CASE WHEN v_status = 'running' THEN now() END, v_result.total,
            v_result.skipped_opted_out, v_result.skipped_invalid, v_result.duplicates_removed)
    RETURNING campaign_id INTO v_campaign_id;

    INSERT INTO core.campaign_templates (campaign_id, variant, template_id, params, total)
    SELECT v_campaign_id, v.variant, v.template_id, v.params,
           (SELECT count(*) FROM pg_temp.campaign_sends s WHERE s.variant = v.variant)
    FROM pg_temp.campaign_variants v;

    PERFORM pgmq.create(core.campaign_queue(v_campaign_id));
    -- The body parameters of each row as one expression (a CASE over the variants), so
    -- queueing 100,000 messages is expression evaluation, not a subquery per row.
    -- Column names and constants enter the SQL only through format's %L.
    SELECT 'CASE s.variant ' || string_agg(format('WHEN %s THEN %s', v.variant, coalesce(
               (SELECT 'jsonb_build_array(' || string_agg(
                    CASE WHEN p ? 'value' THEN format('%L::text', p->>'value')
                         WHEN p->>'column' = 'phone' THEN 's.wa_id'
                         WHEN p->>'column' = 'name' THEN 's.name'
                         ELSE format('s.attributes->>%L', p->>'column') END, ', ' ORDER BY n) || ')'
                FROM jsonb_array_elements(v.params) WITH ORDINALITY pp(p, n)), '''[]''::jsonb')), ' ')
           || ' END'
    INTO v_params_sql FROM pg_temp.campaign_variants v;
    -- Ids are drawn in list order before anything is written, so that the templates
    -- interleave in the queue and both inserts below read one table straight through.
    ALTER TABLE pg_temp.campaign_sends ADD COLUMN contact_id bigint, ADD COLUMN outbound_id bigint;
    UPDATE pg_temp.campaign_sends s SET contact_id = c.contact_id,
        outbound_id = nextval('core.outbound_messages_outbound_id_seq')
    FROM (SELECT s2.row_no, c2.contact_id FROM pg_temp.campaign_sends s2
          JOIN core.contacts c2 ON c2.tenant_id = p_tenant_id AND c2.wa_id = s2.wa_id ORDER BY s2.row_no) c
    WHERE c.row_no = s.row_no;
    INSERT INTO core.outbound_messages (outbound_id, number_id, campaign_id, variant, contact_id, kind)
    OVERRIDING SYSTEM VALUE
    SELECT s.outbound_id, p_number_id, v_campaign_id, s.variant, s.contact_id, 'campaign'
    FROM pg_temp.campaign_sends s;
    -- One queue message per contact: the outbound id, the recipient, the template variant
    -- and the body parameters. api.claim_sends renders the Graph API request from them.
    EXECUTE format($q$
        INSERT INTO pgmq.%I (vt, message)
        SELECT now(), jsonb_build_object('o', s.outbound_id, 't', s.wa_id, 'v', s.variant, 'p', %s)
        FROM pg_temp.campaign_sends s
        ORDER BY s.outbound_id
    $q$, pgmq.format_table_name(core.campaign_queue(v_campaign_id), 'q'), v_params_sql);

    TRUNCATE pg_temp.staged_contacts;
    IF v_status = 'running' THEN
        PERFORM core.wake_sender(p_number_id);
    END IF;
    v_result.campaign_id := v_campaign_id;
    v_result.status := v_status;
    -- How many days the list needs at the portfolio's messaging limit (NULL: unlimited).
    v_result.days_at_limit := (SELECT ceil(v_result.total::numeric / p.messaging_limit)::integer
                               FROM core.wa_numbers n JOIN core.portfolios p ON p.portfolio_id = n.portfolio_id
                               WHERE n.number_id = p_number_id);
    RETURN v_result;
END
$_$;

COMMENT ON FUNCTION api.create_campaign(p_tenant_id bigint, p_number_id bigint, p_name text, p_templates jsonb, p_on_invalid text, p_scheduled_at timestamp with time zone, p_start boolean, p_default_country_code text) IS 'Creates a campaign in one transaction from the contacts staged by api.stage_contacts: validates the templates and their parameter mapping, normalises phones to E.164 digits, drops duplicates, skips opted-out contacts, upserts contacts and queues one rendered message per contact, interleaved across templates. Status is draft, scheduled (p_scheduled_at) or running (p_start). Returns the counts and the invalid rows. Raises PW100/PW102 on bad arguments or templates, PW101 on invalid rows when p_on_invalid is reject, PW202 for an unknown number; nothing is left behind on error.';

CREATE FUNCTION api.create_tenant(p_name text) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_id bigint;
BEGIN
    IF coalesce(btrim(p_name), '') = '' THEN
        RAISE EXCEPTION 'tenant name is empty' USING ERRCODE = 'PW100', HINT = 'Give the tenant a name.';
    END IF;
    INSERT INTO core.tenants (name) VALUES (btrim(p_name))
    ON CONFLICT ON CONSTRAINT tenants_name_unique DO NOTHING
    RETURNING tenant_id INTO v_id;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'tenant "%" already exists', btrim(p_name)
            USING ERRCODE = 'PW302', HINT = 'Tenant names are unique; pick another.';
    END IF;
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION api.create_tenant(p_name text) IS 'Creates a tenant and returns its id. Raises PW100 for an empty name, PW302 when the name is taken.';

CREATE FUNCTION api.delete_bot_rule(p_tenant_id bigint, p_rule_id bigint) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    DELETE FROM core.bot_rules r USING core.wa_numbers n
    WHERE r.rule_id = p_rule_id AND n.number_id = r.number_id AND n.tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'bot rule % not found', p_rule_id
            USING ERRCODE = 'PW206', HINT = 'List the number''s rules with api.bot_rules().';
    END IF;
    RETURN p_rule_id;
END
$$;

COMMENT ON FUNCTION api.delete_bot_rule(p_tenant_id bigint, p_rule_id bigint) IS 'Deletes a bot rule of the tenant; returns its id. Raises PW206 when it is not found.';

CREATE TABLE core.error_codes (
    sqlstate text NOT NULL,
    name text NOT NULL,
    http_status smallint NOT NULL,
    meaning text NOT NULL,
    CONSTRAINT error_codes_http_status_valid CHECK (((http_status >= 400) AND (http_status <= 599))),
    CONSTRAINT error_codes_sqlstate_shape CHECK ((sqlstate ~ '^(PW[1-5][0-9]{2}|[0-9A-Z]{5})$'::text))
);

COMMENT ON TABLE core.error_codes IS 'Registry of project SQLSTATEs (PWgnn) with their HTTP status; the API maps errors through it.';

CREATE FUNCTION api.error_codes() RETURNS SETOF core.error_codes
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT * FROM core.error_codes ORDER BY sqlstate
$$;

COMMENT ON FUNCTION api.error_codes() IS 'Lists the SQLSTATEs pgwa raises or maps (PWgnn codes and standard ones), each with its name, HTTP status and meaning; the HTTP layer loads it once at start-up.';

CREATE FUNCTION api.extend_webhook_claims(p_ids bigint[]) RETURNS integer
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO ''
    AS $$
    WITH extended AS (
        UPDATE pgmq.q_webhooks w
        SET vt = clock_timestamp() + make_interval(secs => (SELECT s.webhook_claim_s FROM core.settings s))
        WHERE w.msg_id = ANY (p_ids)
        RETURNING 1
    )
    SELECT count(*)::integer FROM extended
$$;

COMMENT ON FUNCTION api.extend_webhook_claims(p_ids bigint[]) IS 'Keeps claimed webhook payloads invisible for another webhook_claim_s, while the worker retries them one by one, so that no other loop claims them again meanwhile (which would spend an attempt of payloads that never failed). Returns how many were still queued.';

CREATE FUNCTION api.fail_webhooks(p_ids bigint[], p_sqlstate text, p_reason text) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_settings core.settings;
    v_dead bigint[];
BEGIN
    SELECT * INTO v_settings FROM core.settings;
    -- Out of attempts: set aside now. The others come back after a pause that grows
    -- with their attempts (capped by the claim's visibility timeout).
    WITH failed AS (
        UPDATE pgmq.q_webhooks w SET
            headers = coalesce(w.headers, '{}') || jsonb_build_object('last_error', left(p_reason, 1000),
                                                                     'sqlstate', p_sqlstate),
            vt = clock_timestamp() + make_interval(secs => least(v_settings.webhook_claim_s, 2 ^ w.read_ct))
        WHERE w.msg_id = ANY (p_ids)
        RETURNING w.msg_id, w.read_ct, w.message, w.headers
    ), dead AS (
        SELECT f.msg_id, core.dead_letter_webhook(f.msg_id, f.message, f.headers, p_sqlstate,
                   format('not processed after %s attempts: %s', f.read_ct, left(p_reason, 1000)))
        FROM failed f WHERE f.read_ct >= v_settings.webhook_max_attempts
    )
    SELECT array_agg(d.msg_id) INTO v_dead FROM dead d;
    IF v_dead IS NOT NULL THEN
        PERFORM pgmq.delete('webhooks', v_dead);
    END IF;
    RETURN coalesce(cardinality(v_dead), 0);
END
$$;

COMMENT ON FUNCTION api.fail_webhooks(p_ids bigint[], p_sqlstate text, p_reason text) IS 'Records that claimed webhook payloads failed outside the database''s own error handling (their batch timed out or crashed): keeps the reason, and dead-letters those read webhook_max_attempts times; the others come back after a back-off. Returns how many were dead-lettered.';

CREATE FUNCTION api.functions() RETURNS SETOF api.function_doc
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT p.proname::text, pg_catalog.pg_get_function_arguments(p.oid), pg_catalog.pg_get_function_result(p.oid),
           pg_catalog.obj_description(p.oid, 'pg_proc')
    FROM pg_catalog.pg_proc p
    WHERE p.pronamespace = 'api'::regnamespace
    ORDER BY p.proname
$$;

COMMENT ON FUNCTION api.functions() IS 'Lists the api functions with their arguments, result and COMMENT ON text: the documentation the OpenAPI document and the README draw from.';

CREATE FUNCTION api.graph_credentials(p_tenant_id bigint, p_number_id bigint) RETURNS api.graph_credentials
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_number core.wa_numbers := core.number_for(p_tenant_id, p_number_id);
BEGIN
    RETURN (SELECT ROW(v_number.number_id, v_number.phone_number_id, v_number.waba_id, v_number.access_token,
                       s.graph_api_version)::api.graph_credentials
            FROM core.settings s);
END
$$;

COMMENT ON FUNCTION api.graph_credentials(p_tenant_id bigint, p_number_id bigint) IS 'Returns what the server needs to call the Graph API for one of the tenant''s numbers (its ids, access token, API version). For the server''s own calls (template sync): never return it to a client. Raises PW202 when the tenant has no such number.';

CREATE FUNCTION api.import_contacts(p_tenant_id bigint, p_default_country_code text DEFAULT NULL::text, p_on_invalid text DEFAULT 'skip'::text) RETURNS api.contacts_imported
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    SET client_min_messages TO 'warning'
    AS $$
DECLARE
    v_result api.contacts_imported;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM core.tenants WHERE tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'tenant % does not exist', p_tenant_id USING ERRCODE = 'PW205', HINT = 'Create the tenant first.';
    END IF;
    SELECT c.invalid, c.invalid_rows, c.duplicates, c.staged
    INTO v_result.skipped_invalid, v_result.invalid_rows, v_result.duplicates_removed, v_result.staged
    FROM core.check_staged_contacts(p_default_country_code, p_on_invalid) c;

    -- The first row of a phone wins, as in api.create_campaign; opt-out state is kept.
    WITH upserted AS (
        INSERT INTO core.contacts AS c (tenant_id, wa_id, name, attributes)
        SELECT p_tenant_id, r.wa_id, r.name, r.attributes
        FROM (SELECT DISTINCT ON (wa_id) * FROM pg_temp.contact_rows WHERE problem IS NULL ORDER BY wa_id, row_no) r
        ON CONFLICT (tenant_id, wa_id) DO UPDATE SET
            name = coalesce(excluded.name, c.name),
            attributes = c.attributes || excluded.attributes,
            updated_at = now()
        WHERE c.name IS DISTINCT FROM coalesce(excluded.name, c.name) OR NOT c.attributes @> excluded.attributes
        RETURNING (xmax = 0) AS inserted
    )
    SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted)
    INTO v_result.inserted, v_result.updated FROM upserted;
    v_result.unchanged := v_result.staged - v_result.skipped_invalid - v_result.duplicates_removed
                          - v_result.inserted - v_result.updated;
    TRUNCATE pg_temp.staged_contacts;
    RETURN v_result;
END
$$;

COMMENT ON FUNCTION api.import_contacts(p_tenant_id bigint, p_default_country_code text, p_on_invalid text) IS 'Imports the contacts staged by api.stage_contacts into the tenant''s contacts, without a campaign: normalises phones to E.164 digits, drops duplicates (first row wins), inserts new contacts and merges names and attributes into existing ones; opt-out state is never changed. Returns the counts and the invalid rows. Raises PW100 on bad arguments or nothing staged, PW101 for an empty list or (p_on_invalid reject) invalid rows, PW205 for an unknown tenant.';

CREATE FUNCTION api.ingest_webhook(p_payload jsonb, p_signer text DEFAULT NULL::text) RETURNS bigint
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT (api.ingest_webhooks(ARRAY[p_payload], ARRAY[p_signer]))[1]
$$;

COMMENT ON FUNCTION api.ingest_webhook(p_payload jsonb, p_signer text) IS 'Enqueue one signature-checked webhook payload with its signer (null: the platform''s app secret); returns its queue id. The single form of api.ingest_webhooks; raises PW105 if it is not a JSON object.';

CREATE FUNCTION api.ingest_webhooks(p_payloads jsonb[], p_signers text[] DEFAULT NULL::text[]) RETURNS bigint[]
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $_$
DECLARE
    v_ids bigint[];
BEGIN
    IF p_payloads IS NULL OR cardinality(p_payloads) = 0 THEN
        RETURN '{}';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_payloads) p WHERE jsonb_typeof(p) IS DISTINCT FROM 'object') THEN
        RAISE EXCEPTION 'a webhook payload must be a JSON object'
            USING ERRCODE = 'PW105', HINT = 'Enqueue the body Meta posted, as it was received.';
    END IF;
    IF cardinality(p_signers) > cardinality(p_payloads)
       OR EXISTS (SELECT 1 FROM unnest(p_signers) s WHERE s !~ '^[0-9a-f]{64}$') THEN
        RAISE EXCEPTION 'p_signers must hold at most one signer per payload, each from api.webhook_signers()'
            USING ERRCODE = 'PW100', HINT = 'Pass null for a payload the platform''s app secret verified.';
    END IF;
    -- The row pgmq.send_batch would write (visible now), inserted directly: send_batch
    -- builds and plans a dynamic INSERT on every call, which on this path costs more
    -- than the insert itself (~160 us a call, measured). pgmq's insert trigger still
    -- fires (0086_baseline/08_queues_and_cron.sql). The signer rides in the message's headers.
    WITH queued AS (
        INSERT INTO pgmq.q_webhooks (vt, message, headers)
        SELECT clock_timestamp(), u.p, CASE WHEN u.s IS NOT NULL THEN jsonb_build_object('signer', u.s) END
        FROM unnest(p_payloads, p_signers) AS u(p, s)
        RETURNING msg_id
    )
    SELECT array_agg(msg_id ORDER BY msg_id) INTO v_ids FROM queued;
    RETURN v_ids;
END
$_$;

COMMENT ON FUNCTION api.ingest_webhooks(p_payloads jsonb[], p_signers text[]) IS 'Enqueue signature-checked webhook payloads (JSON objects) in the webhooks queue, in one statement, each with the signer of the number app secret that verified it (null: the platform''s secret); returns their queue ids. Raises PW105 if one is not a JSON object, PW100 for a malformed signer.';

CREATE FUNCTION api.keep_raw_webhook(p_body bytea, p_signer text, p_reason text, p_repaired jsonb DEFAULT NULL::jsonb) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_raw_id bigint;
    v_msg_id bigint;
BEGIN
    IF p_body IS NULL THEN
        RAISE EXCEPTION 'p_body is null' USING ERRCODE = 'PW100', HINT = 'Pass the bytes Meta posted.';
    END IF;
    INSERT INTO core.webhook_raw (signer, reason, body)
    VALUES (p_signer, left(coalesce(p_reason, 'unknown'), 1000), p_body)
    RETURNING raw_id INTO v_raw_id;
    IF jsonb_typeof(p_repaired) = 'object' THEN
        v_msg_id := api.ingest_webhook(p_repaired, p_signer);
        UPDATE pgmq.q_webhooks SET headers = coalesce(headers, '{}') || jsonb_build_object('raw_id', v_raw_id)
        WHERE msg_id = v_msg_id;
        UPDATE core.webhook_raw SET queued_msg_id = v_msg_id WHERE raw_id = v_raw_id;
    END IF;
    RETURN v_raw_id;
END
$$;

COMMENT ON FUNCTION api.keep_raw_webhook(p_body bytea, p_signer text, p_reason text, p_repaired jsonb) IS 'Keeps a signed webhook body that jsonb cannot hold or that is not a JSON object, byte for byte (core.webhook_raw), and queues p_repaired (when it is a JSON object) for processing with the same signer. Returns the raw row''s id. Raises PW100 for a null body.';

CREATE FUNCTION api.llm_bounds() RETURNS SETOF api.llm_bound
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT * FROM (VALUES
        ('system_prompt', 'string', 0, 20000, 'Characters of the system prompt; an empty string clears it'),
        ('daily_limit', 'integer', 0, 10000, 'LLM replies per contact and UTC day'),
        ('context_messages', 'integer', 1, 100, 'The last messages of the conversation that the LLM sees'),
        ('number_daily_limit', 'integer', 0, 1000000, 'LLM calls per number and UTC day, across its contacts')
    ) AS b(setting, type, minimum, maximum, meaning)
$$;

COMMENT ON FUNCTION api.llm_bounds() IS 'The bounds of the LLM settings api.configure_llm takes, one row per setting: its name (the argument without p_), type (integer, or string: bounded in characters), minimum, maximum and meaning. Raises nothing.';

CREATE FUNCTION api.mark_read(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_conversation core.conversations := core.conversation_for(p_tenant_id, p_number_id, p_contact_id);
    v_last core.inbox_messages;
BEGIN
    SELECT * INTO v_last FROM core.inbox_messages i
    WHERE i.number_id = p_number_id AND i.contact_id = p_contact_id AND i.direction = 'in'
    ORDER BY i.created_at DESC, i.message_id DESC
    LIMIT 1;
    IF v_last.message_id IS NULL OR v_last.message_id <= coalesce(v_conversation.read_up_to_id, 0) THEN
        RETURN 0;
    END IF;
    -- Meta marks the message and every earlier one read; it accepts receipts for 30 days.
    IF v_last.wamid IS NOT NULL AND v_last.created_at > now() - interval '30 days' THEN
        PERFORM core.enqueue_replies(ARRAY[ROW(p_number_id, p_contact_id, 'receipt',
                    jsonb_build_object('status', 'read', 'message_id', v_last.wamid))::core.reply_request]);
    END IF;
    UPDATE core.conversations SET unread = 0, read_up_to_id = v_last.message_id
    WHERE number_id = p_number_id AND contact_id = p_contact_id;
    RETURN v_conversation.unread;
END
$$;

COMMENT ON FUNCTION api.mark_read(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint) IS 'Marks a conversation read: its unread count drops to zero and Meta''s read receipt for the latest inbound message (blue ticks, for it and every earlier one) is queued on the number''s reply queue. Returns how many messages were unread; 0, and nothing queued, when everything was read already. Raises PW202/PW209 when the number or conversation is not the tenant''s.';

CREATE FUNCTION api.match_bot_rule(p_tenant_id bigint, p_number_id bigint, p_text text, p_welcome boolean DEFAULT false) RETURNS api.bot_rule
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_rule_id bigint;
BEGIN
    PERFORM core.number_for(p_tenant_id, p_number_id);
    SELECT coalesce(m.rule_id, m.default_rule_id) INTO v_rule_id
    FROM core.match_bot_rules(ARRAY[p_number_id], ARRAY[core.normalize_text(p_text)], ARRAY[coalesce(p_welcome, false)]) m;
    RETURN (SELECT core.bot_rule_row(r) FROM core.bot_rules r WHERE r.rule_id = v_rule_id);
END
$$;

COMMENT ON FUNCTION api.match_bot_rule(p_tenant_id bigint, p_number_id bigint, p_text text, p_welcome boolean) IS 'The rule that would answer p_text on this number (p_welcome: as the first message in 24 hours), exactly as webhook processing matches it, falling back to the default rule; null when none would. Raises PW202 when the number is not the tenant''s.';

CREATE FUNCTION api.metrics(p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS text
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
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
                          WHEN o.number_id IS NOT NULL THEN 'reply' ELSE q.queue_name END AS kind
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

COMMENT ON FUNCTION api.metrics(p_now timestamp with time zone) IS 'Returns the Prometheus text exposition of pgwa, with no tenant''s identifier in it: queue depths and ages per queue kind (pgmq), webhook lag, sends per second per outcome (core.send_minutes), failures per category and code, the numbers'' summed pace, limits and tokens and furthest GCRA arrival time, paused numbers, campaigns per status and the summed funnel of unfinished campaigns per status. Rates and tokens are as of p_now (NULL: now; queue ages are pgmq''s, on the clock). Raises nothing of its own.';

CREATE FUNCTION api.notifications(p_tenant_id bigint, p_unread_only boolean DEFAULT false, p_before_id bigint DEFAULT NULL::bigint, p_limit integer DEFAULT 50) RETURNS SETOF api.notification
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'limit must be between 1 and 1000, not %', p_limit USING ERRCODE = 'PW100',
            HINT = 'Page with before_id: pass the smallest notification_id of the previous page.';
    END IF;
    -- notifications_tenant_notification, read backwards from p_before_id.
    RETURN QUERY
    SELECT n.notification_id, n.kind, n.severity, n.message, n.details, n.created_at, n.read_at
    FROM core.notifications n
    WHERE n.tenant_id = p_tenant_id
      AND (NOT coalesce(p_unread_only, false) OR n.read_at IS NULL)
      AND (p_before_id IS NULL OR n.notification_id < p_before_id)
    ORDER BY n.notification_id DESC
    LIMIT p_limit;
END
$$;

COMMENT ON FUNCTION api.notifications(p_tenant_id bigint, p_unread_only boolean, p_before_id bigint, p_limit integer) IS 'Lists the tenant''s notifications newest first (optionally unread only); keyset pagination on notification_id (p_before_id). Raises PW100 for a limit outside 1..1000.';

CREATE FUNCTION api.numbers(p_tenant_id bigint) RETURNS SETOF api.number
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT n.number_id, n.phone_number_id, n.waba_id, n.display_phone_number, n.throughput_mps, n.rate_mps,
           n.quality_rating, n.paused_reason, n.app_secret IS NOT NULL, n.created_at
    FROM core.wa_numbers n WHERE n.tenant_id = p_tenant_id
    ORDER BY n.number_id
$$;

COMMENT ON FUNCTION api.numbers(p_tenant_id bigint) IS 'Lists the tenant''s WhatsApp numbers with their limit, current pace and quality; never the access token or the app secret (has_app_secret says whether one is set).';

CREATE FUNCTION api.pause_campaign(p_tenant_id bigint, p_campaign_id bigint, p_reason text DEFAULT 'paused by operator'::text) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_campaign core.campaigns := core.campaign_for(p_tenant_id, p_campaign_id);
BEGIN
    IF v_campaign.status NOT IN ('running', 'scheduled') THEN
        RAISE EXCEPTION 'campaign % is %, it cannot be paused', p_campaign_id, v_campaign.status
            USING ERRCODE = 'PW301', HINT = 'Only a running or scheduled campaign pauses.';
    END IF;
    UPDATE core.campaigns SET status = 'paused', pause_reason = p_reason WHERE campaign_id = p_campaign_id;
    RETURN 'paused';
END
$$;

COMMENT ON FUNCTION api.pause_campaign(p_tenant_id bigint, p_campaign_id bigint, p_reason text) IS 'Pauses a running or scheduled campaign: no further message of it is claimed (those already claimed finish). Returns the new status. Raises PW201 when not found, PW301 from any other status.';

CREATE FUNCTION api.portfolios(p_tenant_id bigint, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS SETOF api.portfolio
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT (core.portfolio_row(p.portfolio_id, coalesce(p_now, now()))).*
    FROM core.portfolios p WHERE p.tenant_id = p_tenant_id ORDER BY p.portfolio_id
$$;

COMMENT ON FUNCTION api.portfolios(p_tenant_id bigint, p_now timestamp with time zone) IS 'The tenant''s business portfolios (WABAs and numbers sharing one messaging limit): Meta''s tier, the limit of unique users per moving 24 hours (NULL: unlimited), the users messaged business-initiated in the 24 hours before p_now (NULL: the clock), until when messages to new users wait, and the numbers.';

CREATE FUNCTION api.prepare_number_registration(p_tenant_id bigint, p_phone_number_id text, p_waba_id text, p_access_token text, p_throughput_mps integer DEFAULT 80) RETURNS text
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    PERFORM core.check_number_fields(p_tenant_id, p_phone_number_id, p_waba_id, p_access_token, p_throughput_mps);
    RETURN (SELECT graph_api_version FROM core.settings);
END
$$;

COMMENT ON FUNCTION api.prepare_number_registration(p_tenant_id bigint, p_phone_number_id text, p_waba_id text, p_access_token text, p_throughput_mps integer) IS 'Checks a number registration''s fields before the server asks the Graph API about them, and returns the Graph API version to ask with. Changes nothing. Raises PW100 on a malformed field, PW205 for an unknown tenant.';

CREATE FUNCTION api.process_claimed_webhooks(p_ids bigint[]) RETURNS api.webhook_batch
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    IF cardinality(p_ids) > 10000 THEN
        RAISE EXCEPTION 'at most 10000 payloads per call, not %', cardinality(p_ids)
            USING ERRCODE = 'PW100', HINT = 'Pass the ids one api.claim_webhooks call returned.';
    END IF;
    RETURN core.process_webhook_batch(p_ids);
END
$$;

COMMENT ON FUNCTION api.process_claimed_webhooks(p_ids bigint[]) IS 'Processes the webhook payloads api.claim_webhooks returned, as api.process_webhooks does (signer-checked, set-based, idempotent; a payload that raises is dead-lettered with the reason), and archives them. Ids no longer queued or being processed elsewhere are skipped. Returns the counts. Raises PW100 for more than 10000 ids.';

CREATE FUNCTION api.process_webhooks(p_max integer DEFAULT 100) RETURNS api.webhook_batch
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_ids bigint[];
BEGIN
    IF p_max IS NULL OR p_max NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'p_max must be between 1 and 10000, not %', p_max
            USING ERRCODE = 'PW100', HINT = 'Process a few hundred payloads per call.';
    END IF;
    -- Read and processing share this transaction: a crash rolls the read back too, and
    -- concurrent workers skip each other's rows (FOR UPDATE SKIP LOCKED in pgmq.read).
    v_ids := ARRAY(SELECT r.msg_id FROM pgmq.read('webhooks', 60, p_max) r);
    IF cardinality(v_ids) = 0 THEN
        PERFORM core.restore_webhook_notify();
    END IF;
    RETURN core.process_webhook_batch(v_ids);
END
$$;

COMMENT ON FUNCTION api.process_webhooks(p_max integer) IS 'Read and process up to p_max queued webhook payloads in one transaction, set-based and idempotent under redelivery and reordering; applies each change only for the numbers its signer speaks for (dropped counts the others); archives the payloads and dead-letters any that fail (webhooks_dead, with the reason). A crash or timeout rolls the read back too: the worker uses api.claim_webhooks + api.process_claimed_webhooks, which count it. Raises PW100 for p_max outside 1..10000.';

CREATE FUNCTION api.read_notifications(p_tenant_id bigint, p_notification_ids bigint[] DEFAULT NULL::bigint[]) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_missing bigint;
    v_marked integer;
BEGIN
    SELECT i INTO v_missing FROM unnest(p_notification_ids) i
    WHERE NOT EXISTS (SELECT 1 FROM core.notifications n WHERE n.notification_id = i AND n.tenant_id = p_tenant_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'notification % not found', v_missing USING ERRCODE = 'PW208',
            HINT = 'List the tenant''s notifications with api.notifications(); nothing was marked.';
    END IF;
    UPDATE core.notifications SET read_at = now()
    WHERE tenant_id = p_tenant_id AND read_at IS NULL
      AND (p_notification_ids IS NULL OR notification_id = ANY (p_notification_ids));
    GET DIAGNOSTICS v_marked = ROW_COUNT;
    RETURN v_marked;
END
$$;

COMMENT ON FUNCTION api.read_notifications(p_tenant_id bigint, p_notification_ids bigint[]) IS 'Marks the given notifications of the tenant read (all unread ones when p_notification_ids is null); returns how many were newly marked. Raises PW208, marking nothing, when an id is not one of the tenant''s.';

CREATE FUNCTION api.receiver_heartbeat(p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, clock_timestamp());
    v_beat_s integer := (SELECT s.receiver_beat_s FROM core.settings s);
    v_last timestamptz;
BEGIN
    SELECT beat_at INTO v_last FROM core.receiver_beats FOR UPDATE;
    IF v_last IS NULL THEN
        INSERT INTO core.receiver_beats (beat_at) VALUES (v_now)
        ON CONFLICT (singleton) DO UPDATE SET beat_at = greatest(core.receiver_beats.beat_at, excluded.beat_at);
    ELSE
        IF v_now - v_last > make_interval(secs => 3 * v_beat_s) THEN
            INSERT INTO core.receiver_outages (started_at, ended_at) VALUES (v_last, v_now)
            ON CONFLICT (started_at) DO UPDATE SET ended_at = greatest(core.receiver_outages.ended_at, excluded.ended_at);
        END IF;
        UPDATE core.receiver_beats SET beat_at = greatest(beat_at, v_now);
    END IF;
    RETURN v_beat_s;
END
$$;

COMMENT ON FUNCTION api.receiver_heartbeat(p_now timestamp with time zone) IS 'Called by each webhook receiver every core.settings.receiver_beat_s seconds (returned): records that Meta''s webhooks are being answered, and an outage when no receiver beat for three beats. api.claim_sends resends a message whose answer was lost only once the webhook stream has caught up past it. p_now: the time (NULL: the clock).';

CREATE FUNCTION api.reconcile_campaign(p_tenant_id bigint, p_campaign_id bigint, p_fix boolean DEFAULT false) RETURNS SETOF api.counter_drift
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    SET client_min_messages TO 'warning'
    AS $$
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

COMMENT ON FUNCTION api.reconcile_campaign(p_tenant_id bigint, p_campaign_id bigint, p_fix boolean) IS 'Recounts a campaign from its outbound messages and returns every maintained counter beside the recount (scope campaign, template, error, timeline; drift = maintained - actual). With p_fix, locks the campaign, sets the counters to the recount, rebuilds its error and per-minute tables, and marks the rows fixed. Raises PW201 when the tenant has no such campaign.';

CREATE FUNCTION api.register_number(p_tenant_id bigint, p_phone_number_id text, p_waba_id text, p_access_token text, p_app_secret text DEFAULT NULL::text, p_throughput_mps integer DEFAULT 80, p_display_phone_number text DEFAULT NULL::text, p_verified jsonb DEFAULT NULL::jsonb, p_now timestamp with time zone DEFAULT now()) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_id bigint;
    v_owner bigint;
    v_old_secret text;
    v_new_secret text;
    v_action text;
    v_display text := p_display_phone_number;
    v_portfolio bigint;
BEGIN
    PERFORM core.check_number_fields(p_tenant_id, p_phone_number_id, p_waba_id, p_access_token, p_throughput_mps);
    IF p_verified IS NULL AND NOT core.caller_is_operator() THEN
        RAISE EXCEPTION 'the registration of % carries no answer from the Graph API', p_phone_number_id
            USING ERRCODE = 'PW417',
                  HINT = 'Register through POST /v1/numbers or pgwa number register, which ask Meta that the token reads the number and that the WABA holds it.';
    END IF;
    IF p_verified IS NOT NULL THEN
        IF jsonb_typeof(p_verified) <> 'object' OR p_verified->>'id' IS DISTINCT FROM p_phone_number_id
           OR p_verified->>'waba_id' IS DISTINCT FROM p_waba_id
           OR coalesce(p_verified->>'display_phone_number', '') = '' THEN
            RAISE EXCEPTION 'p_verified is not the Graph API''s answer for phone_number_id % in waba_id %',
                p_phone_number_id, p_waba_id
                USING ERRCODE = 'PW100',
                      HINT = 'Pass the phone number node Meta returned (id, display_phone_number, verified_name) with the waba_id whose phone_numbers list holds it.';
        END IF;
        v_display := p_verified->>'display_phone_number';
    END IF;
    SELECT number_id, tenant_id, app_secret INTO v_id, v_owner, v_old_secret
    FROM core.wa_numbers WHERE phone_number_id = p_phone_number_id FOR UPDATE;
    IF v_owner IS NOT NULL AND v_owner <> p_tenant_id THEN
        RAISE EXCEPTION 'phone_number_id % is registered to another tenant', p_phone_number_id
            USING ERRCODE = 'PW302',
                  HINT = 'A number belongs to one tenant; an operator moves it with api.transfer_number (pgwa number transfer).';
    END IF;
    IF EXISTS (SELECT 1 FROM core.wa_numbers WHERE waba_id = p_waba_id AND tenant_id <> p_tenant_id) THEN
        RAISE EXCEPTION 'waba_id % belongs to another tenant', p_waba_id
            USING ERRCODE = 'PW302', HINT = 'A WhatsApp Business Account belongs to one tenant.';
    END IF;
    -- NULL keeps the secret a number has; '' clears it.
    v_new_secret := CASE WHEN p_app_secret IS NULL THEN v_old_secret ELSE nullif(p_app_secret, '') END;
    INSERT INTO core.wa_numbers AS n (tenant_id, phone_number_id, waba_id, access_token, app_secret,
                                      throughput_mps, rate_mps, display_phone_number,
                                      verified_name, verified_at, quality_rating)
    VALUES (p_tenant_id, p_phone_number_id, p_waba_id, p_access_token, v_new_secret,
            p_throughput_mps, p_throughput_mps, v_display,
            p_verified->>'verified_name', CASE WHEN p_verified IS NOT NULL THEN p_now END,
            p_verified->>'quality_rating')
    ON CONFLICT ON CONSTRAINT wa_numbers_phone_number_id_unique DO UPDATE SET
        waba_id = excluded.waba_id,
        access_token = excluded.access_token,
        app_secret = excluded.app_secret,
        throughput_mps = excluded.throughput_mps,
        rate_mps = least(n.rate_mps, excluded.throughput_mps),
        display_phone_number = coalesce(excluded.display_phone_number, n.display_phone_number),
        -- An operator's unverified update no longer vouches for the token it sets.
        verified_name = CASE WHEN p_verified IS NOT NULL THEN excluded.verified_name ELSE n.verified_name END,
        verified_at = excluded.verified_at,
        quality_rating = coalesce(excluded.quality_rating, n.quality_rating),
        paused_reason = NULL
    RETURNING number_id INTO v_id;
    v_portfolio := core.place_in_portfolio(v_id);
    -- The portfolio's messaging-limit tier, as Meta reported it with the number.
    IF core.meta_tier(p_verified->>'messaging_limit') = p_verified->>'messaging_limit' THEN
        PERFORM core.set_tier(v_portfolio, p_verified->>'messaging_limit');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = core.reply_queue(v_id)) THEN
        PERFORM pgmq.create(core.reply_queue(v_id));
    END IF;
    IF v_new_secret IS DISTINCT FROM v_old_secret THEN
        -- The audit holds neither the secret nor anything derived from it.
        v_action := CASE WHEN v_old_secret IS NULL THEN 'set' WHEN v_new_secret IS NULL THEN 'cleared' ELSE 'changed' END;
        PERFORM core.notify(p_tenant_id, 'app_secret_changed', 'warning',
            format('The app secret of number %s was %s.', p_phone_number_id, v_action),
            jsonb_build_object('number_id', v_id, 'phone_number_id', p_phone_number_id, 'action', v_action,
                               'by', CASE WHEN core.caller_is_operator() THEN 'operator' ELSE 'tenant' END));
    END IF;
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION api.register_number(p_tenant_id bigint, p_phone_number_id text, p_waba_id text, p_access_token text, p_app_secret text, p_throughput_mps integer, p_display_phone_number text, p_verified jsonb, p_now timestamp with time zone) IS 'Registers or updates a WhatsApp number (Meta phone_number_id, waba_id, token, app secret, throughput) for a tenant, creates its reply queue and returns its number_id. A tenant''s call must pass p_verified: the Graph API''s phone number node plus the waba_id whose phone_numbers list holds it (the server asks Meta first); Meta''s display number and verified name are stored. Only an operator (owner, superuser) registers without it. p_app_secret NULL keeps the current secret and an empty string clears it; setting, changing or clearing it raises an app_secret_changed notification. Raises PW100 on a malformed field, PW205 for an unknown tenant, PW302 when another tenant owns the number or its WABA, PW417 when a tenant''s call carries no verification.';

CREATE FUNCTION api.release_conversation(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint) RETURNS api.conversation_summary
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    PERFORM core.conversation_for(p_tenant_id, p_number_id, p_contact_id);
    UPDATE core.conversations SET assigned_to = NULL, assigned_at = NULL,
        needs_human = false, needs_human_reason = NULL, needs_human_at = NULL
    WHERE number_id = p_number_id AND contact_id = p_contact_id;
    RETURN (SELECT s FROM core.conversation_summaries(p_number_id, ARRAY[p_contact_id]) s);
END
$$;

COMMENT ON FUNCTION api.release_conversation(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint) IS 'Hands a conversation back to automation: bots and the LLM answer its next messages again. Returns the conversation. Raises PW202/PW209 when the number or conversation is not the tenant''s.';

CREATE FUNCTION api.reply(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint, p_reply jsonb) RETURNS api.reply_queued
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_number core.wa_numbers := core.number_for(p_tenant_id, p_number_id);
    v_contact core.contacts;
    v_queued core.reply_queued;
BEGIN
    v_contact := core.contact_for(p_tenant_id, p_contact_id);
    PERFORM core.check_reply(p_reply, p_tenant_id, v_number.waba_id);
    -- Outside the window only a template reaches the contact, and only one who has not
    -- opted out; inside it the contact wrote first, and may be answered.
    IF p_reply->>'type' = 'template' AND v_contact.opted_out THEN
        RAISE EXCEPTION 'contact % has opted out of messages', p_contact_id
            USING ERRCODE = 'PW106', HINT = 'A template starts a conversation; wait for the contact to write (or opt in again).';
    END IF;
    SELECT * INTO v_queued FROM core.enqueue_replies(ARRAY[ROW(p_number_id, p_contact_id, 'agent',
                                    core.render_reply(p_reply, core.contact_vars(v_contact)))::core.reply_request]);
    IF v_queued.outbound_id IS NULL THEN
        RAISE EXCEPTION 'the 24-hour customer service window with contact % is closed%', p_contact_id,
            coalesce(' since ' || v_queued.window_closes_at::text, ' (the contact never wrote to this number)')
            USING ERRCODE = 'PW104',
                  HINT = 'Send an approved template instead: api.reply(..., p_reply => ''{"type": "template", "name": "...", "language": "en_US", "params": [...]}'').';
    END IF;
    RETURN ROW(v_queued.outbound_id, v_queued.message_id, v_queued.window_closes_at)::api.reply_queued;
END
$$;

COMMENT ON FUNCTION api.reply(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint, p_reply jsonb) IS 'An agent''s reply to a contact on a number, queued before campaign traffic: {"type": "text" | "buttons", ...} inside the 24-hour window, {"type": "template", ...} at any time; {{name}} and other contact variables are filled in. Returns the outbound id, the inbox row and when the window closes. Raises PW104 for a free-form reply outside the window (send a template), PW106 for a template to an opted-out contact, PW100/PW102 for a bad reply or template, PW202/PW204 when the number or contact is not the tenant''s.';

CREATE FUNCTION api.report_sends(p_results jsonb, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS api.report_result
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

COMMENT ON FUNCTION api.report_sends(p_results jsonb, p_now timestamp with time zone) IS 'Stores the results of claimed sends (JSON array of {outbound_id, queue_name, msg_id, wamid, message_status, error_code, http_status, error_message, retry_after_s (seconds until Meta gives access back, from X-Business-Use-Case-Usage), unsure (the request went out and its answer was lost)}, or {outbound_id, queue_name, msg_id, "sent": false} for a message handed back unsent): wamids and accepted state, retries with backoff, holds and deferrals as core.meta_error_codes.backoff says (none spends an attempt), permanent failures, campaign pauses with a notification on auth/payment/template errors, AIMD rate control and completion. Returns (accepted, retried, failed, paused, ignored); retried counts every message back in the queue. p_now is the time of the report (NULL: the clock). Raises PW100 when p_results is not an array.';

CREATE FUNCTION api.resume_campaign(p_tenant_id bigint, p_campaign_id bigint) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_campaign core.campaigns := core.campaign_for(p_tenant_id, p_campaign_id);
BEGIN
    IF v_campaign.status <> 'paused' THEN
        RAISE EXCEPTION 'campaign % is %, not paused', p_campaign_id, v_campaign.status
            USING ERRCODE = 'PW301', HINT = 'Only a paused campaign resumes.';
    END IF;
    -- A campaign paused before its scheduled time goes back to waiting for it.
    IF v_campaign.started_at IS NULL AND v_campaign.scheduled_at > now() THEN
        UPDATE core.campaigns SET status = 'scheduled', pause_reason = NULL WHERE campaign_id = p_campaign_id;
        RETURN 'scheduled';
    END IF;
    UPDATE core.campaigns SET status = 'running', pause_reason = NULL, started_at = coalesce(started_at, now())
    WHERE campaign_id = p_campaign_id;
    PERFORM core.wake_sender(v_campaign.number_id);
    PERFORM core.complete_campaigns(ARRAY[p_campaign_id]);
    RETURN (SELECT status FROM core.campaigns WHERE campaign_id = p_campaign_id);
END
$$;

COMMENT ON FUNCTION api.resume_campaign(p_tenant_id bigint, p_campaign_id bigint) IS 'Resumes a paused campaign (one paused before its scheduled time waits for it again); returns the new status. Raises PW201 when not found, PW301 when it is not paused.';

CREATE FUNCTION api.revoke_api_key(p_tenant_id bigint, p_api_key_id bigint) RETURNS api.api_key
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_key api.api_key;
BEGIN
    UPDATE core.api_keys SET revoked_at = coalesce(revoked_at, now())
    WHERE api_key_id = p_api_key_id AND tenant_id = p_tenant_id
    RETURNING api_key_id, name, key_prefix, created_at, revoked_at, scope, expires_at, last_used_at,
              rate_limit_per_minute INTO v_key;
    IF v_key.api_key_id IS NULL THEN
        RAISE EXCEPTION 'API key % not found', p_api_key_id USING ERRCODE = 'PW207',
            HINT = 'List the tenant''s keys with api.api_keys().';
    END IF;
    RETURN v_key;
END
$$;

COMMENT ON FUNCTION api.revoke_api_key(p_tenant_id bigint, p_api_key_id bigint) IS 'Revokes one of the tenant''s API keys at once (idempotent) and returns it. Raises PW207 when the tenant has no such key.';

CREATE FUNCTION api.save_bot_rule(p_tenant_id bigint, p_number_id bigint, p_kind text, p_pattern text, p_reply jsonb, p_priority integer DEFAULT 100, p_enabled boolean DEFAULT true, p_rule_id bigint DEFAULT NULL::bigint) RETURNS api.bot_rule
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_number core.wa_numbers := core.number_for(p_tenant_id, p_number_id);
    v_match text;
    v_error text;
    v_rule core.bot_rules;
BEGIN
    IF p_kind IS NULL OR p_kind NOT IN ('exact', 'starts_with', 'contains', 'regex', 'welcome', 'default') THEN
        RAISE EXCEPTION 'rule kind must be exact, starts_with, contains, regex, welcome or default, not "%"', p_kind
            USING ERRCODE = 'PW100', HINT = 'welcome answers the first message in 24 hours; default answers what nothing else matched.';
    END IF;
    IF p_priority IS NULL OR p_priority NOT BETWEEN 0 AND 1000000 THEN
        RAISE EXCEPTION 'priority % is out of range', p_priority
            USING ERRCODE = 'PW100', HINT = 'Priorities run from 0 (first) to 1000000; the first match by priority answers.';
    END IF;
    IF p_kind IN ('welcome', 'default') THEN
        IF p_pattern IS NOT NULL THEN
            RAISE EXCEPTION 'a % rule takes no pattern', p_kind USING ERRCODE = 'PW100',
                HINT = 'Pass p_pattern => NULL.';
        END IF;
    ELSIF p_pattern IS NULL OR length(p_pattern) > 500 THEN
        RAISE EXCEPTION 'a % rule needs a pattern of at most 500 characters', p_kind
            USING ERRCODE = 'PW100', HINT = 'Give the keyword or regular expression to match.';
    ELSIF p_kind = 'regex' THEN
        -- Regexes see the normalised text (upper case, no accents) and match regardless of
        -- case; an accent in the pattern is removed as it is from the text.
        v_match := public.unaccent('public.unaccent'::regdictionary, p_pattern);
        -- The pattern as it will run (unaccent may turn a character into several).
        v_error := core.regex_unsafe_reason(v_match);
        IF v_error IS NOT NULL THEN
            RAISE EXCEPTION 'regular expression "%" is outside the safe subset: %', p_pattern, v_error
                USING ERRCODE = 'PW103',
                      HINT = 'At most 200 characters; no back-references, look-around or embedded options; repetition bounds up to 100; no repeated group that holds a quantifier or | (write (ab)+ or a+, not (a+)+ or (a|aa)*).';
        END IF;
        BEGIN
            PERFORM '' ~* v_match;
        EXCEPTION WHEN invalid_regular_expression THEN
            GET STACKED DIAGNOSTICS v_error = MESSAGE_TEXT;
            RAISE EXCEPTION 'regular expression "%" does not compile: %', p_pattern, v_error
                USING ERRCODE = 'PW103',
                      HINT = 'PostgreSQL regular expressions (POSIX ARE); matched case-insensitively against the text with accents removed.';
        END;
    ELSE
        v_match := core.normalize_text(p_pattern);
        IF v_match IS NULL THEN
            RAISE EXCEPTION 'the % pattern is empty', p_kind USING ERRCODE = 'PW100',
                HINT = 'Patterns are compared without case, accents and surrounding spaces; give some text.';
        END IF;
    END IF;
    PERFORM core.check_reply(p_reply, p_tenant_id, v_number.waba_id);

    IF p_rule_id IS NULL THEN
        INSERT INTO core.bot_rules (number_id, kind, pattern, priority, reply, enabled, match_text, like_pattern)
        VALUES (p_number_id, p_kind, p_pattern, p_priority, p_reply, coalesce(p_enabled, true), v_match,
                CASE p_kind WHEN 'starts_with' THEN core.like_literal(v_match) || '%'
                            WHEN 'contains' THEN '%' || core.like_literal(v_match) || '%' END)
        RETURNING * INTO v_rule;
    ELSE
        UPDATE core.bot_rules r SET
            number_id = p_number_id, kind = p_kind, pattern = p_pattern, priority = p_priority, reply = p_reply,
            enabled = coalesce(p_enabled, true), match_text = v_match,
            like_pattern = CASE p_kind WHEN 'starts_with' THEN core.like_literal(v_match) || '%'
                                       WHEN 'contains' THEN '%' || core.like_literal(v_match) || '%' END,
            updated_at = now()
        FROM core.wa_numbers n
        WHERE r.rule_id = p_rule_id AND n.number_id = r.number_id AND n.tenant_id = p_tenant_id
        RETURNING r.* INTO v_rule;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'bot rule % not found', p_rule_id
                USING ERRCODE = 'PW206', HINT = 'List the number''s rules with api.bot_rules().';
        END IF;
    END IF;
    RETURN core.bot_rule_row(v_rule);
END
$$;

COMMENT ON FUNCTION api.save_bot_rule(p_tenant_id bigint, p_number_id bigint, p_kind text, p_pattern text, p_reply jsonb, p_priority integer, p_enabled boolean, p_rule_id bigint) IS 'Creates a bot rule for a number (or replaces rule p_rule_id): kind exact, starts_with, contains, regex, welcome (first message in 24 hours) or default (fallback), a pattern matched without case, accents and surrounding spaces, a priority (lower answers first) and a reply ({"type": "text" | "buttons" | "template", ...} with {{name}} variables). Rules see the first core.settings.bot_match_prefix_chars characters of a message. Returns the rule. Raises PW103 for a regular expression that does not compile or is outside the safe subset (at most 200 characters; no back-references, look-around or embedded options; repetition bounds up to 100; no repeated group holding a quantifier or an alternation), PW100 for a bad kind, pattern, priority or reply, PW102 for a template that is unknown, not approved or given the wrong parameters, PW202/PW206 when the number or rule is not the tenant''s.';

CREATE FUNCTION api.send_policy() RETURNS api.send_policy
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT s.throttle_hold_ms, ARRAY(SELECT e.code FROM core.meta_error_codes e WHERE e.backoff = 'throttle' ORDER BY e.code)
    FROM core.settings s
$$;

COMMENT ON FUNCTION api.send_policy() IS 'Returns what a worker must know of Meta''s pacing rules: the error codes that throttle a number (throttle_codes) and how long a throttled number sends nothing (throttle_hold_ms).';

CREATE FUNCTION api.set_contact_opt_out(p_tenant_id bigint, p_opted_out boolean, p_contact_id bigint DEFAULT NULL::bigint, p_phone text DEFAULT NULL::text) RETURNS api.contact
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_wa_id text := core.normalize_phone(p_phone);
    v_id bigint;
    v_contact api.contact;
BEGIN
    IF p_opted_out IS NULL OR (p_contact_id IS NULL) = (p_phone IS NULL) THEN
        RAISE EXCEPTION 'give opted_out and exactly one of contact_id and phone' USING ERRCODE = 'PW100',
            HINT = 'e.g. {"phone": "+14155550100"} or {"contact_id": 42}.';
    END IF;
    IF p_phone IS NOT NULL AND v_wa_id IS NULL THEN
        RAISE EXCEPTION 'phone "%" is not a phone number with a country code', p_phone USING ERRCODE = 'PW100',
            HINT = 'E.164, e.g. +14155550100.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM core.tenants WHERE tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'tenant % does not exist', p_tenant_id USING ERRCODE = 'PW205', HINT = 'Create the tenant first.';
    END IF;
    UPDATE core.contacts c SET opted_out = p_opted_out,
        opted_out_at = CASE WHEN p_opted_out THEN coalesce(c.opted_out_at, now()) END, updated_at = now()
    WHERE c.tenant_id = p_tenant_id
      AND (c.contact_id = p_contact_id OR c.wa_id = v_wa_id)
    RETURNING c.contact_id INTO v_id;
    -- Opting out a phone pgwa has not met yet keeps it out of every future campaign.
    IF v_id IS NULL AND p_phone IS NOT NULL AND p_opted_out THEN
        INSERT INTO core.contacts (tenant_id, wa_id, opted_out, opted_out_at)
        VALUES (p_tenant_id, v_wa_id, true, now())
        RETURNING contact_id INTO v_id;
    END IF;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'contact % not found', coalesce(p_contact_id::text, p_phone) USING ERRCODE = 'PW204',
            HINT = 'List the tenant''s contacts with api.contacts().';
    END IF;
    SELECT c.contact_id, c.wa_id, c.user_id, c.name, c.profile_name, c.attributes, c.opted_out, c.opted_out_at,
           c.last_inbound_at, c.created_at
    INTO v_contact FROM core.contacts c WHERE c.contact_id = v_id;
    RETURN v_contact;
END
$$;

COMMENT ON FUNCTION api.set_contact_opt_out(p_tenant_id bigint, p_opted_out boolean, p_contact_id bigint, p_phone text) IS 'Opts a contact of the tenant out of (p_opted_out true) or back into messages, by contact_id or by phone; opting out an unknown phone creates the contact opted out, so that no campaign reaches it. Returns the contact. Raises PW100 unless exactly one of contact_id and phone is given or for a malformed phone, PW204 when the contact is not found.';

CREATE FUNCTION api.set_messaging_limit(p_tenant_id bigint, p_number_id bigint, p_tier text, p_business_id text DEFAULT NULL::text) RETURNS api.portfolio
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $_$
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
$_$;

COMMENT ON FUNCTION api.set_messaging_limit(p_tenant_id bigint, p_number_id bigint, p_tier text, p_business_id text) IS 'Sets the messaging-limit tier (TIER_50 .. TIER_UNLIMITED) of the portfolio of a number, and with p_business_id moves the number''s WABA into that business portfolio (WABAs with one business id share one limit). api.claim_sends never starts a conversation with a new user beyond the limit. Returns the portfolio. Raises PW202 when the number is not the tenant''s, PW100 for an unknown tier or a business id that is not numeric.';

CREATE FUNCTION api.stage_contacts() RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    SET client_min_messages TO 'warning'
    AS $$
BEGIN
    IF pg_catalog.to_regclass('pg_temp.staged_contacts') IS NULL THEN
        CREATE TEMP TABLE staged_contacts (
            row_no      integer NOT NULL,
            phone       text,
            name        text,
            attributes  jsonb NOT NULL DEFAULT '{}'
        );
        GRANT INSERT ON pg_temp.staged_contacts TO pgwa_api;
    END IF;
    PERFORM core.check_staging_table();
    TRUNCATE pg_temp.staged_contacts;
    RETURN 'pg_temp.staged_contacts';
END
$$;

COMMENT ON FUNCTION api.stage_contacts() IS 'Creates (or empties) this session''s staging table pg_temp.staged_contacts(row_no, phone, name, attributes jsonb), owned by the functions'' owner and open to the caller for INSERT (COPY) only, for the contact rows that api.create_campaign or api.import_contacts then consume. Returns the table name. Raises PW403 when a pg_temp.staged_contacts it did not make is in the way.';

CREATE FUNCTION api.start_campaign(p_tenant_id bigint, p_campaign_id bigint, p_at timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_campaign core.campaigns := core.campaign_for(p_tenant_id, p_campaign_id);
BEGIN
    IF v_campaign.status NOT IN ('draft', 'scheduled') THEN
        RAISE EXCEPTION 'campaign % is %, it cannot be started', p_campaign_id, v_campaign.status
            USING ERRCODE = 'PW301', HINT = 'Only a draft or scheduled campaign starts; a paused one resumes.';
    END IF;
    IF p_at IS NOT NULL AND p_at > now() THEN
        UPDATE core.campaigns SET status = 'scheduled', scheduled_at = p_at WHERE campaign_id = p_campaign_id;
        RETURN 'scheduled';
    END IF;
    UPDATE core.campaigns SET status = 'running', started_at = now() WHERE campaign_id = p_campaign_id;
    PERFORM core.wake_sender(v_campaign.number_id);
    RETURN 'running';
END
$$;

COMMENT ON FUNCTION api.start_campaign(p_tenant_id bigint, p_campaign_id bigint, p_at timestamp with time zone) IS 'Starts a draft or scheduled campaign now, or schedules it for p_at; returns the new status. Raises PW201 when not found, PW301 from any other status.';

CREATE FUNCTION api.sync_templates(p_tenant_id bigint, p_waba_id text, p_templates jsonb) RETURNS api.templates_synced
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_result api.templates_synced;
BEGIN
    IF jsonb_typeof(p_templates) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'templates must be a JSON array' USING ERRCODE = 'PW105',
            HINT = 'Pass the data[] of every page of GET /{waba_id}/message_templates, concatenated.';
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(p_templates) t
               WHERE jsonb_typeof(t) <> 'object' OR jsonb_typeof(t->'name') IS DISTINCT FROM 'string'
                  OR jsonb_typeof(t->'language') IS DISTINCT FROM 'string'
                  OR coalesce(jsonb_typeof(t->'components'), 'array') <> 'array') THEN
        RAISE EXCEPTION 'a template has no name or language, or its components are not an array'
            USING ERRCODE = 'PW105', HINT = 'Pass Meta''s template objects unchanged.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM core.wa_numbers WHERE tenant_id = p_tenant_id AND waba_id = p_waba_id) THEN
        RAISE EXCEPTION 'waba_id % has no number of this tenant', p_waba_id
            USING ERRCODE = 'PW202', HINT = 'Register a number of this WhatsApp Business Account first.';
    END IF;
    v_result.received := jsonb_array_length(p_templates);
    -- One statement for the whole list; a template listed twice takes its last entry.
    WITH incoming AS (
        SELECT DISTINCT ON (t->>'name', t->>'language')
               t->>'name' AS name, t->>'language' AS language, coalesce(t->'components', '[]') AS components,
               upper(coalesce(t->>'status', 'APPROVED')) AS status, t->>'category' AS category, t->>'id' AS meta_id
        FROM jsonb_array_elements(p_templates) WITH ORDINALITY e(t, ord)
        WHERE t->>'name' <> '' AND t->>'language' <> ''
        ORDER BY t->>'name', t->>'language', ord DESC
    ), stored AS (
        INSERT INTO core.templates AS t (tenant_id, waba_id, name, language, components, status, category,
                                         meta_template_id, body_param_count)
        SELECT p_tenant_id, p_waba_id, i.name, i.language, i.components, i.status, i.category, i.meta_id,
               core.body_param_count(i.components)
        FROM incoming i
        ON CONFLICT ON CONSTRAINT templates_waba_name_language_unique DO UPDATE SET
            components = excluded.components, status = excluded.status,
            category = coalesce(excluded.category, t.category),
            meta_template_id = coalesce(excluded.meta_template_id, t.meta_template_id),
            body_param_count = excluded.body_param_count, updated_at = now()
        WHERE t.tenant_id = p_tenant_id
          AND (t.components, t.status, t.category, t.meta_template_id)
              IS DISTINCT FROM (excluded.components, excluded.status, coalesce(excluded.category, t.category),
                                coalesce(excluded.meta_template_id, t.meta_template_id))
        RETURNING 1
    )
    SELECT count(*) INTO v_result.stored FROM stored;
    v_result.unchanged := v_result.received - v_result.stored;
    RETURN v_result;
END
$$;

COMMENT ON FUNCTION api.sync_templates(p_tenant_id bigint, p_waba_id text, p_templates jsonb) IS 'Stores a WABA''s templates as the Graph API lists them (a JSON array of Meta''s template objects) in one statement: inserts new ones, updates changed ones, counts their body parameters. Returns how many were received, stored and unchanged. Raises PW105 on a malformed list, PW202 when the tenant has no number on that WABA.';

CREATE FUNCTION api.templates(p_tenant_id bigint, p_waba_id text DEFAULT NULL::text, p_status text DEFAULT NULL::text) RETURNS SETOF api.template
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT t.template_id, t.waba_id, t.name, t.language, t.category, t.status, t.body_param_count, t.components,
           t.meta_template_id, t.updated_at
    FROM core.templates t
    WHERE t.tenant_id = p_tenant_id
      AND (p_waba_id IS NULL OR t.waba_id = p_waba_id)
      AND (p_status IS NULL OR t.status = upper(p_status))
    ORDER BY t.name, t.language, t.template_id
$$;

COMMENT ON FUNCTION api.templates(p_tenant_id bigint, p_waba_id text, p_status text) IS 'Lists the tenant''s message templates (optionally of one WABA or status) with their components and body parameter count.';

CREATE FUNCTION api.transfer_number(p_phone_number_id text, p_to_tenant_id bigint, p_waba_id text DEFAULT NULL::text) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $_$
DECLARE
    v_number core.wa_numbers;
    v_waba text;
    v_open integer;
    v_details jsonb;
BEGIN
    SELECT * INTO v_number FROM core.wa_numbers WHERE phone_number_id = p_phone_number_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'phone_number_id % is not registered', p_phone_number_id
            USING ERRCODE = 'PW202', HINT = 'Give Meta''s phone_number_id of a registered number.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM core.tenants WHERE tenant_id = p_to_tenant_id) THEN
        RAISE EXCEPTION 'tenant % does not exist', p_to_tenant_id USING ERRCODE = 'PW205', HINT = 'Create the tenant first.';
    END IF;
    IF v_number.tenant_id = p_to_tenant_id THEN
        RAISE EXCEPTION 'phone_number_id % already belongs to tenant %', p_phone_number_id, p_to_tenant_id
            USING ERRCODE = 'PW301', HINT = 'Nothing to move.';
    END IF;
    v_waba := coalesce(p_waba_id, v_number.waba_id);
    IF v_waba !~ '^[0-9]{1,32}$' THEN
        RAISE EXCEPTION 'waba_id "%" is not Meta''s numeric id', v_waba
            USING ERRCODE = 'PW100', HINT = 'Give the WhatsApp Business Account the number is in now.';
    END IF;
    IF EXISTS (SELECT 1 FROM core.wa_numbers
               WHERE waba_id = v_waba AND tenant_id <> p_to_tenant_id AND number_id <> v_number.number_id) THEN
        RAISE EXCEPTION 'waba_id % holds numbers of another tenant', v_waba
            USING ERRCODE = 'PW302',
                  HINT = 'A WABA belongs to one tenant: give the WABA the number is in now (p_waba_id), or move its other numbers too.';
    END IF;
    SELECT count(*) INTO v_open FROM core.campaigns
    WHERE number_id = v_number.number_id AND status NOT IN ('completed', 'cancelled');
    IF v_open > 0 THEN
        RAISE EXCEPTION 'number % has % campaign(s) not finished', p_phone_number_id, v_open
            USING ERRCODE = 'PW301',
                  HINT = 'Cancel the old tenant''s draft, scheduled, running and paused campaigns on this number first.';
    END IF;
    -- Nothing of the old tenant goes with the number: its token and secret, its bots and
    -- LLM set-up, its inbox listing (the messages stay with its contacts) and queued
    -- replies. The number waits, paused, until the new tenant registers it with its own
    -- token, which Meta must confirm.
    UPDATE core.wa_numbers SET
        tenant_id = p_to_tenant_id, waba_id = v_waba, access_token = '', app_secret = NULL,
        verified_name = NULL, verified_at = NULL, llm_enabled = false, llm_system_prompt = NULL,
        paused_reason = 'transferred: the new tenant must register the number with its own token'
    WHERE number_id = v_number.number_id;
    PERFORM core.place_in_portfolio(v_number.number_id);
    DELETE FROM core.bot_rules WHERE number_id = v_number.number_id;
    DELETE FROM core.conversations WHERE number_id = v_number.number_id;
    UPDATE core.outbound_messages SET state = 'cancelled'
    WHERE number_id = v_number.number_id AND campaign_id IS NULL AND state IN ('queued', 'in_flight');
    IF EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = core.reply_queue(v_number.number_id)) THEN
        PERFORM pgmq.purge_queue(core.reply_queue(v_number.number_id));
    END IF;
    v_details := jsonb_build_object('number_id', v_number.number_id, 'phone_number_id', p_phone_number_id,
                                    'from_tenant_id', v_number.tenant_id, 'to_tenant_id', p_to_tenant_id);
    PERFORM core.notify(v_number.tenant_id, 'number_transferred', 'warning',
        format('An operator moved number %s to another tenant.', p_phone_number_id), v_details);
    PERFORM core.notify(p_to_tenant_id, 'number_transferred', 'warning',
        format('An operator moved number %s to this tenant; register it with your own access token to use it.',
               p_phone_number_id), v_details);
    RETURN v_number.number_id;
END
$_$;

COMMENT ON FUNCTION api.transfer_number(p_phone_number_id text, p_to_tenant_id bigint, p_waba_id text) IS 'Operator only (granted to no client role): moves a registered number to another tenant, e.g. after Meta moved it to that tenant''s WABA (p_waba_id, default unchanged). The old tenant''s token, app secret, bot rules, LLM set-up, inbox listing and queued replies do not follow; the number stays paused until the new tenant registers it with its own token. Notifies both tenants (number_transferred) and returns the number_id. Raises PW202 for an unregistered number, PW205 for an unknown tenant, PW301 when it already belongs there or has unfinished campaigns, PW302 when the WABA holds another tenant''s numbers.';

CREATE FUNCTION api.upsert_template(p_tenant_id bigint, p_waba_id text, p_name text, p_language text, p_components jsonb DEFAULT '[]'::jsonb, p_status text DEFAULT 'APPROVED'::text, p_category text DEFAULT NULL::text, p_meta_template_id text DEFAULT NULL::text) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_id bigint;
BEGIN
    IF coalesce(p_name, '') = '' OR coalesce(p_language, '') = '' THEN
        RAISE EXCEPTION 'template name and language are required' USING ERRCODE = 'PW100',
            HINT = 'Give the template''s name and language code (e.g. en_US) as Meta lists them.';
    END IF;
    IF jsonb_typeof(coalesce(p_components, '[]')) <> 'array' THEN
        RAISE EXCEPTION 'template components must be a JSON array' USING ERRCODE = 'PW100',
            HINT = 'Pass Meta''s components array unchanged.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM core.wa_numbers WHERE tenant_id = p_tenant_id AND waba_id = p_waba_id) THEN
        RAISE EXCEPTION 'waba_id % has no number of tenant %', p_waba_id, p_tenant_id
            USING ERRCODE = 'PW202', HINT = 'Register a number of this WhatsApp Business Account first.';
    END IF;
    INSERT INTO core.templates AS t (tenant_id, waba_id, name, language, components, status, category,
                                     meta_template_id, body_param_count)
    VALUES (p_tenant_id, p_waba_id, p_name, p_language, coalesce(p_components, '[]'), upper(p_status),
            p_category, p_meta_template_id, core.body_param_count(p_components))
    ON CONFLICT ON CONSTRAINT templates_waba_name_language_unique DO UPDATE SET
        components = excluded.components, status = excluded.status,
        category = coalesce(excluded.category, t.category),
        meta_template_id = coalesce(excluded.meta_template_id, t.meta_template_id),
        body_param_count = excluded.body_param_count, updated_at = now()
    RETURNING template_id INTO v_id;
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION api.upsert_template(p_tenant_id bigint, p_waba_id text, p_name text, p_language text, p_components jsonb, p_status text, p_category text, p_meta_template_id text) IS 'Creates or updates a message template of a WABA (as listed by Meta) and returns its template_id; counts its body parameters. Raises PW100 on a malformed field, PW202 when the tenant has no number on that WABA.';

CREATE FUNCTION api.webhook_signers() RETURNS SETOF api.webhook_signer
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT d.app_secret, core.app_signer(d.app_secret), d.waba_ids
    FROM (SELECT n.app_secret, array_agg(DISTINCT n.waba_id ORDER BY n.waba_id) AS waba_ids
          FROM core.wa_numbers n
          WHERE n.app_secret IS NOT NULL AND n.app_secret <> ''
          GROUP BY n.app_secret) d
$$;

COMMENT ON FUNCTION api.webhook_signers() IS 'The app secrets registered with numbers, each with its signer and the WABAs of its numbers: the webhook receiver checks X-Hub-Signature-256 against these (after WHATSAPP_APP_SECRET) and stores the signer of the one that verified a payload, which then speaks only for that secret''s numbers. For the receiver only; never shown.';

CREATE FUNCTION core.advance_outbound(p_outbound_ids bigint[], p_states text[], p_at timestamp with time zone[], p_wamids text[] DEFAULT NULL::text[], p_error_codes integer[] DEFAULT NULL::integer[], p_error_details text[] DEFAULT NULL::text[]) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
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
        SELECT m.campaign_id, x.minute, sum(x.sent)::int AS sent, sum(x.delivered)::int AS delivered,
               sum(x.read)::int AS read, sum(x.failed)::int AS failed
        FROM moved m
        CROSS JOIN LATERAL (VALUES
            (date_trunc('minute', coalesce(m.accepted_at, m.sent_at, m.delivered_at, m.read_at, now())),
             (m.r0 < 2 AND m.r1 BETWEEN 2 AND 5)::int, 0, 0, 0),
            (date_trunc('minute', coalesce(m.delivered_at, m.read_at, now())), 0,
             ((m.r0 < 4 OR m.r0 = 6) AND m.r1 BETWEEN 4 AND 5)::int, 0, 0),
            (date_trunc('minute', coalesce(m.read_at, now())), 0, 0, ((m.r0 < 5 OR m.r0 = 6) AND m.r1 = 5)::int, 0),
            (date_trunc('minute', coalesce(m.failed_at, now())), 0, 0, 0,
             (m.r0 < 6 AND m.r1 = 6)::int - (m.r0 = 6 AND m.r1 BETWEEN 4 AND 5)::int)
        ) AS x(minute, sent, delivered, read, failed)
        WHERE m.campaign_id IS NOT NULL AND (m.r1 > m.r0 OR m.r0 = 6)
        GROUP BY m.campaign_id, x.minute
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

CREATE FUNCTION core.app_signer(p_app_secret text) RETURNS text
    LANGUAGE sql STABLE
    SET search_path TO ''
    AS $$
    SELECT encode(pg_catalog.sha256(convert_to(s.signer_salt || p_app_secret, 'UTF8')), 'hex')
    FROM core.settings s
$$;

CREATE FUNCTION core.apply_account_events(p_changes core.webhook_change[]) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_moved bigint[];
    v_notified bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(p_changes) ch WHERE ch.field = 'account_update') THEN
        RETURN 0;
    END IF;
    WITH bans AS (
        SELECT DISTINCT ON (n.number_id) n.number_id, ch.waba_id, ch.entry_at,
               upper(ch.value->'ban_info'->>'waba_ban_state') AS state, ch.value->'ban_info'->>'waba_ban_date' AS ban_date
        FROM unnest(p_changes) ch
        CROSS JOIN LATERAL core.change_numbers(ch.waba_id, NULL, ch.signer) n
        WHERE ch.field = 'account_update' AND upper(ch.value->>'event') = 'DISABLED_UPDATE'
          AND upper(ch.value->'ban_info'->>'waba_ban_state') IN ('DISABLE', 'REINSTATE')
        ORDER BY n.number_id, ch.entry_at DESC NULLS LAST, ch.ord DESC
    ), moved AS (
        UPDATE core.wa_numbers n SET
            paused_reason = CASE
                WHEN b.state = 'DISABLE' AND o.paused_reason IS NULL
                    THEN format('waba_disabled: Meta disabled WhatsApp Business Account %s%s', b.waba_id,
                                coalesce(' on ' || b.ban_date, ''))
                WHEN b.state = 'REINSTATE' AND o.paused_reason LIKE 'waba\_disabled:%' THEN NULL
                ELSE o.paused_reason END,
            ban_event_at = coalesce(b.entry_at, o.ban_event_at)
        FROM bans b JOIN core.wa_numbers o ON o.number_id = b.number_id
        WHERE n.number_id = b.number_id
          AND (b.entry_at IS NULL OR o.ban_event_at IS NULL OR b.entry_at >= o.ban_event_at)
        RETURNING n.number_id, n.paused_reason IS DISTINCT FROM o.paused_reason AS moved
    )
    SELECT array_agg(m.number_id) FILTER (WHERE m.moved) INTO v_moved FROM moved m;
    -- Reinstated numbers send again at once.
    PERFORM core.wake_sender(n.number_id) FROM core.wa_numbers n
    WHERE n.number_id = ANY (v_moved) AND n.paused_reason IS NULL;

    WITH events AS (
        SELECT DISTINCT n.tenant_id, ch.waba_id, ch.entry_at, ch.value AS v, upper(ch.value->>'event') AS event,
               upper(ch.value->'ban_info'->>'waba_ban_state') AS ban_state
        FROM unnest(p_changes) ch
        CROSS JOIN LATERAL core.change_numbers(ch.waba_id, NULL, ch.signer) n
        WHERE ch.field = 'account_update'
    ), notified AS (
        INSERT INTO core.notifications (tenant_id, kind, severity, message, details, dedupe_key)
        SELECT e.tenant_id, 'account_update',
               CASE WHEN e.event = 'DISABLED_UPDATE' AND e.ban_state = 'REINSTATE' THEN 'info'
                    WHEN e.event IN ('ACCOUNT_VIOLATION', 'ACCOUNT_RESTRICTION', 'DISABLED_UPDATE', 'ACCOUNT_DELETED',
                                     'ACCOUNT_OFFBOARDED', 'PARTNER_REMOVED', 'PARTNER_APP_UNINSTALLED')
                        THEN 'critical'
                    WHEN e.event = 'PARTNER_CLIENT_CERTIFICATION_STATUS_UPDATE'
                         AND upper(e.v->'partner_client_certification_info'->>'status') IS DISTINCT FROM 'APPROVED'
                        THEN 'warning'
                    ELSE 'info' END,
               format('WhatsApp Business Account %s: %s', e.waba_id, concat_ws('; ', coalesce(e.event, 'update'),
                      e.v->'violation_info'->>'violation_type',
                      (SELECT string_agg(concat_ws(' until ', r->>'restriction_type',
                                                   coalesce(to_char(core.unix_ts(r->>'expiration'), 'YYYY-MM-DD HH24:MI TZ'),
                                                            r->>'expiration')), ', ')
                       FROM jsonb_array_elements(CASE jsonb_typeof(e.v->'restriction_info')
                                                 WHEN 'array' THEN e.v->'restriction_info' ELSE '[]' END) r),
                      nullif(concat_ws(' ', e.ban_state, e.v->'ban_info'->>'waba_ban_date'), ''),
                      e.v->>'country',
                      CASE WHEN e.event = 'DISABLED_UPDATE' AND e.ban_state = 'DISABLE' THEN 'sending paused on its numbers'
                           WHEN e.event = 'DISABLED_UPDATE' AND e.ban_state = 'REINSTATE' THEN 'sending resumed' END)),
               jsonb_build_object('waba_id', e.waba_id, 'event', e.v),
               md5(format('account_update|%s|%s|%s', e.waba_id, e.entry_at, e.v))
        FROM events e
        ON CONFLICT DO NOTHING
        RETURNING tenant_id
    )
    SELECT array_agg(tenant_id) INTO v_notified FROM notified;
    PERFORM core.wake_notified(v_notified);
    RETURN coalesce(cardinality(v_moved), 0);
END
$$;

CREATE FUNCTION core.apply_account_updates(p_changes core.webhook_change[]) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(p_changes) ch
                   WHERE ch.field IN ('message_template_status_update', 'template_category_update',
                                      'phone_number_quality_update', 'business_capability_update',
                                      'account_update', 'user_preferences')) THEN
        RETURN 0;
    END IF;
    RETURN core.apply_template_statuses(p_changes) + core.apply_category_updates(p_changes)
         + core.apply_quality_updates(p_changes) + core.apply_capability_updates(p_changes)
         + core.apply_account_events(p_changes) + core.apply_user_preferences(p_changes);
END
$$;

CREATE FUNCTION core.apply_capability_updates(p_changes core.webhook_change[]) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_notified bigint[];
    v_portfolios bigint[];
    v_tiers text[];
    v_at timestamptz[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(p_changes) ch WHERE ch.field = 'business_capability_update') THEN
        RETURN 0;
    END IF;
    WITH events AS (
        SELECT DISTINCT n.tenant_id, n.portfolio_id, ch.waba_id, ch.entry_at, ch.value AS v,
               coalesce(core.meta_tier(ch.value->>'max_daily_conversations_per_business'),
                        core.meta_tier(ch.value->>'max_daily_conversation_per_phone')) AS tier
        FROM unnest(p_changes) ch
        CROSS JOIN LATERAL core.change_numbers(ch.waba_id, NULL, ch.signer) n
        WHERE ch.field = 'business_capability_update' AND n.portfolio_id IS NOT NULL
    ), graded AS (
        SELECT e.*, CASE WHEN e.tier IS NOT NULL AND p.tier IS NOT NULL
                              AND coalesce(core.tier_limit(e.tier), 2147483647) < coalesce(core.tier_limit(p.tier), 2147483647)
                         THEN 'warning' ELSE 'info' END AS severity
        FROM events e JOIN core.portfolios p ON p.portfolio_id = e.portfolio_id
        -- A limit older than the portfolio's newest is old news: not applied, not told.
        WHERE e.tier IS NULL OR e.entry_at IS NULL OR p.tier_event_at IS NULL OR e.entry_at >= p.tier_event_at
    ), notified AS (
        INSERT INTO core.notifications (tenant_id, kind, severity, message, details, dedupe_key)
        SELECT g.tenant_id, 'business_capability', g.severity,
               format('Capabilities of WhatsApp Business Account %s: %s', g.waba_id, coalesce(nullif(concat_ws('; ',
                      'messaging limit ' || CASE WHEN g.tier = 'TIER_UNLIMITED' THEN 'unlimited'
                                                 ELSE core.tier_limit(g.tier) || ' users per 24 hours' END,
                      'phone numbers per business portfolio ' || (g.v->>'max_phone_numbers_per_business'),
                      'phone numbers per WABA ' || (g.v->>'max_phone_numbers_per_waba')), ''), 'updated')),
               jsonb_build_object('waba_id', g.waba_id, 'portfolio_id', g.portfolio_id, 'event', g.v),
               md5(format('business_capability|%s|%s|%s|%s', g.portfolio_id, g.waba_id, g.entry_at, g.v))
        FROM graded g
        ON CONFLICT DO NOTHING
        RETURNING tenant_id
    )
    SELECT (SELECT array_agg(tenant_id) FROM notified), t.portfolios, t.tiers, t.at
    INTO v_notified, v_portfolios, v_tiers, v_at
    FROM (SELECT array_agg(g.portfolio_id) AS portfolios, array_agg(g.tier) AS tiers, array_agg(g.entry_at) AS at
          FROM graded g WHERE g.tier IS NOT NULL) t;

    PERFORM core.wake_notified(v_notified);
    RETURN core.apply_tiers(v_portfolios, v_tiers, v_at);
END
$$;

CREATE FUNCTION core.apply_category_updates(p_changes core.webhook_change[]) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_changed integer;
    v_notified bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(p_changes) ch WHERE ch.field = 'template_category_update') THEN
        RETURN 0;
    END IF;
    WITH events AS (
        SELECT t.tenant_id, t.template_id, t.name, t.language, ch.entry_at, ch.ord, ch.value AS v,
               upper(ch.value->>'new_category') AS category,
               upper(coalesce(ch.value->>'previous_category', t.category)) AS previous,
               ch.value ? 'correct_category' AS impending
        FROM unnest(p_changes) ch
        CROSS JOIN LATERAL core.change_templates(ch.waba_id, ch.signer, ch.value) t
        WHERE ch.field = 'template_category_update' AND ch.value->>'new_category' IS NOT NULL
    ), changed AS (
        UPDATE core.templates t SET category = e.category, updated_at = now()
        FROM (SELECT DISTINCT ON (x.template_id) x.template_id, x.category FROM events x WHERE NOT x.impending
              ORDER BY x.template_id, x.entry_at DESC NULLS LAST, x.ord DESC) e
        WHERE t.template_id = e.template_id AND t.category IS DISTINCT FROM e.category
        RETURNING t.template_id
    ), notes AS (
        SELECT 1 AS pos, e.tenant_id, 'template_category' AS kind,
               CASE WHEN e.impending
                    THEN format('Template %s (%s) will be recategorised from %s to %s %s', e.name, e.language,
                                e.category, upper(e.v->>'correct_category'),
                                coalesce('on ' || to_char(core.unix_ts(e.v->>'category_update_timestamp'),
                                                          'YYYY-MM-DD HH24:MI TZ'), 'within 24 hours'))
                    ELSE format('Template %s (%s) is now %s (was %s)', e.name, e.language, e.category,
                                coalesce(e.previous, 'unknown')) END AS message,
               jsonb_build_object('template_id', e.template_id, 'event', e.v) AS details,
               md5(format('template_category|%s|%s|%s', e.template_id, e.entry_at, e.v)) AS dedupe_key
        FROM events e
        UNION ALL
        SELECT 2, c.tenant_id, 'campaign_template_category',
               format('Campaign "%s" sends template %s (%s), which Meta moved from %s to %s', c.name, e.name,
                      e.language, coalesce(e.previous, 'unknown'), e.category),
               jsonb_build_object('campaign_id', c.campaign_id, 'template_id', e.template_id, 'category', e.category),
               md5(format('campaign_template_category|%s|%s|%s|%s', c.campaign_id, e.template_id, e.entry_at, e.v))
        FROM events e
        JOIN core.campaign_templates ct ON ct.template_id = e.template_id
        JOIN core.campaigns c ON c.campaign_id = ct.campaign_id AND c.tenant_id = e.tenant_id
        WHERE NOT e.impending AND c.status IN ('scheduled', 'running', 'paused')
    ), notified AS (
        INSERT INTO core.notifications (tenant_id, kind, severity, message, details, dedupe_key)
        SELECT d.tenant_id, d.kind, 'warning', d.message, d.details, d.dedupe_key
        FROM (SELECT DISTINCT ON (n.dedupe_key) n.* FROM notes n ORDER BY n.dedupe_key) d
        ORDER BY d.pos, d.kind
        ON CONFLICT DO NOTHING
        RETURNING tenant_id
    )
    SELECT (SELECT count(*) FROM changed), (SELECT array_agg(tenant_id) FROM notified)
    INTO v_changed, v_notified;
    PERFORM core.wake_notified(v_notified);
    RETURN v_changed;
END
$$;

CREATE FUNCTION core.apply_inbound(p_changes core.webhook_change[]) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $_$
DECLARE
    v_number_ids bigint[];
    v_tenant_ids bigint[];
    v_wa_ids text[];
    v_user_ids text[];
    v_names text[];
    v_at timestamptz[];
    v_messages jsonb[];
    v_contact_ids bigint[];
    v_new bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(p_changes) ch WHERE ch.field = 'messages' AND ch.value ? 'messages') THEN
        RETURN 0;
    END IF;

    SELECT array_agg(x.number_id ORDER BY x.ord, x.i), array_agg(x.tenant_id ORDER BY x.ord, x.i),
           array_agg(x.wa_id ORDER BY x.ord, x.i), array_agg(x.user_id ORDER BY x.ord, x.i),
           array_agg(x.name ORDER BY x.ord, x.i), array_agg(x.at ORDER BY x.ord, x.i),
           array_agg(x.msg ORDER BY x.ord, x.i)
    INTO v_number_ids, v_tenant_ids, v_wa_ids, v_user_ids, v_names, v_at, v_messages
    FROM (
        SELECT ch.ord, m.i, n.number_id, n.tenant_id, m.msg,
               CASE WHEN coalesce(nullif(m.msg->>'from', ''), ct->>'wa_id') ~ '^[1-9][0-9]{6,14}$'
                    THEN coalesce(nullif(m.msg->>'from', ''), ct->>'wa_id') END AS wa_id,
               nullif(coalesce(m.msg->>'from_user_id', ct->>'user_id'), '') AS user_id,
               nullif(ct->'profile'->>'name', '') AS name,
               coalesce(core.unix_ts(m.msg->>'timestamp'), now()) AS at
        FROM unnest(p_changes) ch
        JOIN core.wa_numbers n ON n.phone_number_id = ch.phone_number_id
        CROSS JOIN LATERAL jsonb_array_elements(ch.value->'messages') WITH ORDINALITY AS m(msg, i)
        -- The sender's entry in contacts[]: the one naming it, or the only one.
        LEFT JOIN LATERAL (
            SELECT c.value AS ct
            FROM jsonb_array_elements(CASE WHEN jsonb_typeof(ch.value->'contacts') = 'array'
                                           THEN ch.value->'contacts' ELSE '[]' END) c
            WHERE c.value->>'wa_id' = m.msg->>'from' OR c.value->>'user_id' = m.msg->>'from_user_id'
               OR jsonb_array_length(ch.value->'contacts') = 1
            ORDER BY (c.value->>'wa_id' = m.msg->>'from' OR c.value->>'user_id' = m.msg->>'from_user_id') DESC NULLS LAST
            LIMIT 1
        ) c ON true
        WHERE ch.field = 'messages' AND ch.value ? 'messages' AND m.msg->>'id' IS NOT NULL
    ) x
    WHERE x.wa_id IS NOT NULL OR x.user_id IS NOT NULL;

    IF v_messages IS NULL THEN
        RETURN 0;
    END IF;

    -- New senders. A sender seen by both keys in one batch may come out as one row per
    -- key; the second then conflicts on the first's key and is skipped.
    INSERT INTO core.contacts (tenant_id, wa_id, user_id, profile_name, last_inbound_at)
    SELECT DISTINCT ON (u.tenant_id, coalesce(u.wa_id, u.user_id))
           u.tenant_id, u.wa_id, u.user_id, u.name, u.at
    FROM unnest(v_tenant_ids, v_wa_ids, v_user_ids, v_names, v_at) AS u(tenant_id, wa_id, user_id, name, at)
    WHERE NOT EXISTS (SELECT 1 FROM core.contacts c WHERE c.tenant_id = u.tenant_id AND c.wa_id = u.wa_id)
      AND NOT EXISTS (SELECT 1 FROM core.contacts c WHERE c.tenant_id = u.tenant_id AND c.user_id = u.user_id)
    ORDER BY u.tenant_id, coalesce(u.wa_id, u.user_id), u.at DESC
    ON CONFLICT DO NOTHING;

    SELECT array_agg(coalesce(by_wa.contact_id, by_user.contact_id) ORDER BY u.i)
    INTO v_contact_ids
    FROM unnest(v_tenant_ids, v_wa_ids, v_user_ids) WITH ORDINALITY AS u(tenant_id, wa_id, user_id, i)
    LEFT JOIN core.contacts by_wa ON by_wa.tenant_id = u.tenant_id AND by_wa.wa_id = u.wa_id
    LEFT JOIN core.contacts by_user ON by_user.tenant_id = u.tenant_id AND by_user.user_id = u.user_id;

    -- Profile name and window from the latest message; a key the contact lacked is
    -- filled in unless another contact of the tenant already holds it.
    UPDATE core.contacts c SET
        profile_name = coalesce(l.name, c.profile_name),
        last_inbound_at = greatest(c.last_inbound_at, l.at),
        wa_id = CASE WHEN c.wa_id IS NULL AND l.wa_id IS NOT NULL AND NOT EXISTS (
                         SELECT 1 FROM core.contacts o WHERE o.tenant_id = c.tenant_id AND o.wa_id = l.wa_id)
                     THEN l.wa_id ELSE c.wa_id END,
        user_id = CASE WHEN c.user_id IS NULL AND l.user_id IS NOT NULL AND NOT EXISTS (
                           SELECT 1 FROM core.contacts o WHERE o.tenant_id = c.tenant_id AND o.user_id = l.user_id)
                       THEN l.user_id ELSE c.user_id END,
        updated_at = now()
    FROM (
        SELECT u.contact_id, max(u.at) AS at,
               (array_agg(u.name ORDER BY u.at DESC) FILTER (WHERE u.name IS NOT NULL))[1] AS name,
               (array_agg(u.wa_id ORDER BY u.at DESC) FILTER (WHERE u.wa_id IS NOT NULL))[1] AS wa_id,
               (array_agg(u.user_id ORDER BY u.at DESC) FILTER (WHERE u.user_id IS NOT NULL))[1] AS user_id
        FROM unnest(v_contact_ids, v_wa_ids, v_user_ids, v_names, v_at) AS u(contact_id, wa_id, user_id, name, at)
        WHERE u.contact_id IS NOT NULL
        GROUP BY u.contact_id
        ORDER BY u.contact_id
    ) l
    WHERE c.contact_id = l.contact_id;

    WITH inserted AS (
        INSERT INTO core.inbox_messages (number_id, contact_id, direction, wamid, type, body, payload,
                                         context_wamid, outbound_id, campaign_id, created_at)
        SELECT u.number_id, u.contact_id, 'in', u.msg->>'id', coalesce(u.msg->>'type', 'unknown'),
               core.inbound_body(u.msg), u.msg, u.msg->'context'->>'id', o.outbound_id, o.campaign_id, u.at
        FROM unnest(v_number_ids, v_contact_ids, v_messages, v_at) AS u(number_id, contact_id, msg, at)
        -- A reply is attributed only to a message of the number it was sent to.
        LEFT JOIN core.outbound_messages o ON o.wamid = u.msg->'context'->>'id' AND o.number_id = u.number_id
        WHERE u.contact_id IS NOT NULL
        ORDER BY u.msg->>'id'
        ON CONFLICT (wamid) WHERE wamid IS NOT NULL DO NOTHING
        RETURNING message_id, outbound_id, created_at
    ), replied AS (
        UPDATE core.outbound_messages o SET replied_at = r.at
        FROM (SELECT i.outbound_id, min(i.created_at) AS at FROM inserted i
              WHERE i.outbound_id IS NOT NULL GROUP BY i.outbound_id) r
        WHERE o.outbound_id = r.outbound_id AND o.replied_at IS NULL
        RETURNING o.campaign_id, o.variant, o.replied_at
    ), per_minute AS (
        -- The campaign's per-minute timeline (api.campaign_stats) counts replies too.
        INSERT INTO core.campaign_minutes AS cm (campaign_id, minute, replied)
        SELECT r.campaign_id, date_trunc('minute', r.replied_at), count(*)::integer
        FROM replied r WHERE r.campaign_id IS NOT NULL
        GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (campaign_id, minute) DO UPDATE SET replied = cm.replied + excluded.replied
    ), deltas AS (
        SELECT r.campaign_id, r.variant, count(*)::integer AS n
        FROM replied r WHERE r.campaign_id IS NOT NULL GROUP BY r.campaign_id, r.variant
    ), per_template AS (
        UPDATE core.campaign_templates t SET replied = t.replied + d.n
        FROM deltas d WHERE t.campaign_id = d.campaign_id AND t.variant = d.variant
    ), per_campaign AS (
        UPDATE core.campaigns c SET replied = c.replied + d.n
        FROM (SELECT campaign_id, sum(n)::integer AS n FROM deltas GROUP BY campaign_id) d
        WHERE c.campaign_id = d.campaign_id
    )
    SELECT array_agg(i.message_id ORDER BY i.message_id) INTO v_new FROM inserted i;

    IF v_new IS NOT NULL THEN
        PERFORM core.on_inbound(v_new);      -- issue 6: bots, opt-outs
    END IF;
    RETURN coalesce(cardinality(v_new), 0);
END
$_$;

CREATE FUNCTION core.apply_quality_updates(p_changes core.webhook_change[]) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_numbers integer;
    v_notified bigint[];
    v_portfolios bigint[];
    v_tiers text[];
    v_at timestamptz[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(p_changes) ch WHERE ch.field = 'phone_number_quality_update') THEN
        RETURN 0;
    END IF;
    WITH events AS (
        SELECT q.*, q.entry_at IS NULL OR n.quality_event_at IS NULL OR q.entry_at >= n.quality_event_at AS fresh,
               q.tier IS NOT NULL AND p.tier IS NOT NULL
               AND (q.entry_at IS NULL OR p.tier_event_at IS NULL OR q.entry_at >= p.tier_event_at) AS compared,
               coalesce(core.tier_limit(q.tier), 2147483647) AS new_limit,
               coalesce(core.tier_limit(p.tier), 2147483647) AS old_limit
        FROM core.quality_events(p_changes) q
        JOIN core.wa_numbers n ON n.number_id = q.number_id
        LEFT JOIN core.portfolios p ON p.portfolio_id = q.portfolio_id
    ), graded AS (
        SELECT e.*, CASE
                   WHEN e.event = 'FLAGGED' OR e.rating = 'RED' THEN 'critical'
                   WHEN e.event = 'DOWNGRADE' OR (e.compared AND e.new_limit < e.old_limit) THEN 'warning'
                   WHEN e.event IN ('UPGRADE', 'THROUGHPUT_UPGRADE') OR (e.compared AND e.new_limit > e.old_limit)
                       THEN 'info'
               END AS severity
        FROM events e WHERE e.fresh
    ), notified AS (
        INSERT INTO core.notifications (tenant_id, kind, severity, message, details, dedupe_key)
        SELECT g.tenant_id, 'phone_quality', g.severity,
               format('Number %s: %s', g.display, concat_ws('; ', nullif(g.event, ''),
                      'quality ' || g.rating, 'messaging limit ' || g.tier,
                      CASE WHEN g.event = 'THROUGHPUT_UPGRADE' THEN 'now 1,000 messages per second' END)),
               jsonb_build_object('number_id', g.number_id, 'event', g.v),
               md5(format('phone_quality|%s|%s|%s', g.number_id, g.entry_at, g.v))
        FROM graded g WHERE g.severity IS NOT NULL
        ON CONFLICT DO NOTHING
        RETURNING tenant_id
    )
    SELECT (SELECT array_agg(tenant_id) FROM notified), t.portfolios, t.tiers, t.at
    INTO v_notified, v_portfolios, v_tiers, v_at
    FROM (SELECT array_agg(g.portfolio_id) AS portfolios, array_agg(g.tier) AS tiers, array_agg(g.entry_at) AS at
          FROM graded g WHERE g.tier IS NOT NULL) t;

    UPDATE core.wa_numbers n SET
        quality_rating = CASE WHEN e.fresh THEN coalesce(e.rating, n.quality_rating) ELSE n.quality_rating END,
        quality_event_at = CASE WHEN e.fresh THEN coalesce(e.entry_at, n.quality_event_at) ELSE n.quality_event_at END,
        throughput_mps = CASE WHEN e.event = 'THROUGHPUT_UPGRADE' THEN 1000 ELSE n.throughput_mps END,
        -- The pace grows from the upgrade on; core.report_pace cannot measure from NULL.
        rate_changed_at = CASE WHEN e.event = 'THROUGHPUT_UPGRADE' THEN coalesce(n.rate_changed_at, now())
                               ELSE n.rate_changed_at END
    FROM (SELECT q.*, q.entry_at IS NULL OR o.quality_event_at IS NULL OR q.entry_at >= o.quality_event_at AS fresh,
                 o.quality_rating AS old_rating, o.quality_event_at AS old_event_at, o.throughput_mps AS old_mps
          FROM core.quality_events(p_changes) q JOIN core.wa_numbers o ON o.number_id = q.number_id) e
    WHERE n.number_id = e.number_id
      AND ((e.fresh AND (e.old_rating IS DISTINCT FROM coalesce(e.rating, e.old_rating)
                         OR e.old_event_at IS DISTINCT FROM coalesce(e.entry_at, e.old_event_at)))
           OR (e.event = 'THROUGHPUT_UPGRADE' AND e.old_mps < 1000));
    GET DIAGNOSTICS v_numbers = ROW_COUNT;

    PERFORM core.wake_notified(v_notified);
    RETURN v_numbers + core.apply_tiers(v_portfolios, v_tiers, v_at);
END
$$;

CREATE FUNCTION core.apply_statuses(p_changes core.webhook_change[]) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $_$
DECLARE
    v_stored integer;
    v_ids bigint[];
    v_states text[];
    v_at timestamptz[];
    v_wamids text[];
    v_codes integer[];
    v_details text[];
    v_deferred bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(p_changes) ch WHERE ch.field = 'messages' AND ch.value ? 'statuses') THEN
        RETURN 0;
    END IF;

    WITH by_wamid AS MATERIALIZED (
        SELECT ch.phone_number_id, s->>'id' AS wamid, s->>'status' AS status,
               CASE WHEN s->>'timestamp' ~ '^[0-9]{1,11}$'
                    THEN pg_catalog.to_timestamp((s->>'timestamp')::double precision) ELSE now() END AS at,
               s->>'biz_opaque_callback_data' AS opaque,
               coalesce(s->>'recipient_id', s->>'recipient_user_id') AS recipient_id,
               CASE WHEN s->'errors'->0->>'code' ~ '^-?[0-9]{1,9}$' THEN (s->'errors'->0->>'code')::integer END AS error_code,
               coalesce(s->'errors'->0->'error_data'->>'details', s->'errors'->0->>'message',
                        s->'errors'->0->>'title') AS error_detail,
               s->'pricing'->>'category' AS pricing_category,
               s->'conversation'->>'id' AS conversation_id,
               coalesce(sn.number_id, 0) AS number_id,
               o.outbound_id
        FROM unnest(p_changes) ch
        CROSS JOIN LATERAL jsonb_array_elements(ch.value->'statuses') AS s
        -- A wamid moves a message only through the number that sent it.
        LEFT JOIN core.wa_numbers sn ON sn.phone_number_id = ch.phone_number_id
        LEFT JOIN core.outbound_messages o ON o.wamid = s->>'id' AND o.number_id = sn.number_id
        WHERE ch.field = 'messages' AND ch.value ? 'statuses' AND s->>'id' IS NOT NULL
          AND s->>'status' IN ('sent', 'delivered', 'read', 'failed', 'deleted', 'warning', 'played')
    ), unknown AS (
        SELECT b.wamid, b.phone_number_id, core.opaque_outbound_id(b.opaque) AS opaque_id
        FROM by_wamid b WHERE b.outbound_id IS NULL AND b.opaque IS NOT NULL
    ), by_opaque AS (
        SELECT DISTINCT ON (u.wamid) u.wamid, o.outbound_id
        FROM unknown u
        JOIN core.wa_numbers n ON n.phone_number_id = u.phone_number_id
        JOIN core.outbound_messages o ON o.outbound_id = u.opaque_id AND o.number_id = n.number_id
                                     AND (o.wamid IS NULL OR o.wamid = u.wamid)
        ORDER BY u.wamid, o.outbound_id
    ), matched AS MATERIALIZED (
        SELECT b.wamid, b.status, b.at, b.recipient_id, b.error_code, b.error_detail, b.pricing_category,
               b.conversation_id, b.number_id, coalesce(b.outbound_id, bo.outbound_id) AS outbound_id
        FROM by_wamid b LEFT JOIN by_opaque bo ON b.outbound_id IS NULL AND bo.wamid = b.wamid
    ), stored AS (
        -- In key order, so that two batches inserting the same events cannot deadlock.
        INSERT INTO core.status_events (wamid, status, number_id, outbound_id, occurred_at, recipient_id,
                                        error_code, pricing_category, conversation_id)
        SELECT m.wamid, m.status, m.number_id, m.outbound_id, m.at, m.recipient_id, m.error_code,
               m.pricing_category, m.conversation_id
        FROM matched m
        ORDER BY m.wamid, m.status, m.number_id
        ON CONFLICT DO NOTHING
        RETURNING 1
    ), claimed AS (
        -- Events stored before their message was known, now that it is: only those that
        -- came through the message's own number.
        UPDATE core.status_events e SET outbound_id = k.outbound_id
        FROM (SELECT DISTINCT m.wamid, m.number_id, m.outbound_id FROM matched m WHERE m.outbound_id IS NOT NULL) k
        WHERE e.wamid = k.wamid AND e.number_id = k.number_id AND e.outbound_id IS NULL
        RETURNING e.outbound_id, e.status, e.occurred_at, e.wamid, e.error_code
    ), moves AS (
        SELECT m.outbound_id, m.status, m.at, m.wamid, m.error_code, m.error_detail
        FROM matched m WHERE m.outbound_id IS NOT NULL
        UNION ALL
        SELECT c.outbound_id, c.status, c.occurred_at, c.wamid, c.error_code, NULL
        FROM claimed c
    )
    SELECT (SELECT count(*) FROM stored)::integer,
           array_agg(v.outbound_id), array_agg(v.state), array_agg(v.at), array_agg(v.wamid),
           array_agg(v.error_code), array_agg(v.error_detail)
    INTO v_stored, v_ids, v_states, v_at, v_wamids, v_codes, v_details
    FROM (
        -- The state a status moves its message to: a played voice message has been
        -- read; deleted and warning move nothing.
        SELECT mv.*, CASE mv.status WHEN 'played' THEN 'read' WHEN 'deleted' THEN NULL
                                    WHEN 'warning' THEN NULL ELSE mv.status END AS state
        FROM moves mv
    ) v
    WHERE v.state IS NOT NULL;

    -- Withheld under the per-user marketing cap: tried again later, not failed (limits.sql).
    v_deferred := core.defer_capped(v_ids, v_states, v_codes);
    IF cardinality(v_deferred) > 0 THEN
        SELECT array_agg(u.id), array_agg(u.state), array_agg(u.at), array_agg(u.wamid), array_agg(u.code),
               array_agg(u.detail)
        INTO v_ids, v_states, v_at, v_wamids, v_codes, v_details
        FROM unnest(v_ids, v_states, v_at, v_wamids, v_codes, v_details) u(id, state, at, wamid, code, detail)
        WHERE u.id <> ALL (v_deferred);
    END IF;
    IF v_ids IS NOT NULL THEN
        PERFORM core.advance_outbound(v_ids, v_states, v_at, v_wamids, v_codes, v_details);
        PERFORM core.raise_watermarks(v_ids);
        PERFORM core.stop_marketing(array_agg(f.id), array_agg(f.code), max(f.at))
        FROM unnest(v_ids, v_states, v_codes, v_at) f(id, state, code, at)
        WHERE f.state = 'failed' AND f.code IS NOT NULL
        HAVING count(*) > 0;
    END IF;
    RETURN v_stored;
END
$_$;

CREATE FUNCTION core.apply_template_statuses(p_changes core.webhook_change[]) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_changed integer;
    v_notified bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(p_changes) ch WHERE ch.field = 'message_template_status_update') THEN
        RETURN 0;
    END IF;
    WITH events AS (
        SELECT DISTINCT ON (t.template_id)
               t.template_id, ch.entry_at, ch.value AS v,
               CASE upper(ch.value->>'event') WHEN 'REINSTATED' THEN 'APPROVED'
                    ELSE upper(ch.value->>'event') END AS status
        FROM unnest(p_changes) ch
        CROSS JOIN LATERAL core.change_templates(ch.waba_id, ch.signer, ch.value) t
        WHERE ch.field = 'message_template_status_update' AND ch.value->>'event' IS NOT NULL
        ORDER BY t.template_id, ch.entry_at DESC NULLS LAST, ch.ord DESC
    ), changed AS (
        UPDATE core.templates t SET
            status = e.status,
            status_event_at = coalesce(e.entry_at, t.status_event_at),
            meta_template_id = coalesce(t.meta_template_id, e.v->>'message_template_id'),
            updated_at = now()
        FROM events e
        WHERE t.template_id = e.template_id
          AND t.status IS DISTINCT FROM e.status
          AND (e.entry_at IS NULL OR t.status_event_at IS NULL OR e.entry_at >= t.status_event_at)
        RETURNING t.tenant_id, t.template_id, t.name, t.language, t.status, e.entry_at, e.v
    ), notified AS (
        INSERT INTO core.notifications (tenant_id, kind, severity, message, details, dedupe_key)
        SELECT c.tenant_id, 'template_status',
               CASE c.status WHEN 'DISABLED' THEN 'critical' ELSE 'warning' END,
               format('Template %s (%s) is %s: %s', c.name, c.language, c.status,
                      coalesce(nullif(c.v->>'reason', 'NONE'), 'no reason given')),
               jsonb_build_object('template_id', c.template_id, 'event', c.v),
               md5(format('template_status|%s|%s|%s', c.template_id, c.status, c.entry_at))
        FROM changed c
        WHERE c.status IN ('PAUSED', 'REJECTED', 'DISABLED')
        ON CONFLICT DO NOTHING
        RETURNING tenant_id
    )
    SELECT (SELECT count(*) FROM changed), (SELECT array_agg(tenant_id) FROM notified)
    INTO v_changed, v_notified;
    PERFORM core.wake_notified(v_notified);
    RETURN v_changed;
END
$$;

CREATE FUNCTION core.apply_tiers(p_portfolio_ids bigint[], p_tiers text[], p_event_at timestamp with time zone[]) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_row record;
    v_changed integer := 0;
BEGIN
    FOR v_row IN
        SELECT DISTINCT ON (u.portfolio_id) u.portfolio_id, u.tier, u.event_at, p.tier AS old_tier
        FROM unnest(p_portfolio_ids, p_tiers, p_event_at) u(portfolio_id, tier, event_at)
        JOIN core.portfolios p ON p.portfolio_id = u.portfolio_id
        WHERE u.tier IS NOT NULL
          AND (u.event_at IS NULL OR p.tier_event_at IS NULL OR u.event_at >= p.tier_event_at)
        ORDER BY u.portfolio_id, u.event_at DESC NULLS LAST
    LOOP
        PERFORM core.set_tier(v_row.portfolio_id, v_row.tier);
        UPDATE core.portfolios SET tier_event_at = greatest(tier_event_at, v_row.event_at)
        WHERE portfolio_id = v_row.portfolio_id AND v_row.event_at IS NOT NULL;
        v_changed := v_changed + (v_row.old_tier IS DISTINCT FROM v_row.tier)::integer;
    END LOOP;
    RETURN v_changed;
END
$$;

CREATE FUNCTION core.apply_user_preferences(p_changes core.webhook_change[]) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_resumed integer;
    v_stopped integer;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(p_changes) ch WHERE ch.field = 'user_preferences') THEN
        RETURN 0;
    END IF;
    UPDATE core.contacts c SET marketing_stopped_at = NULL, marketing_resumed_at = p.at, updated_at = now()
    FROM core.marketing_preferences(p_changes) p
    WHERE NOT p.stop AND c.tenant_id = p.tenant_id AND c.wa_id = p.wa_id
      AND p.at > coalesce(c.marketing_resumed_at, '-infinity')
      AND p.at >= coalesce(c.marketing_stopped_at, '-infinity');
    GET DIAGNOSTICS v_resumed = ROW_COUNT;

    INSERT INTO core.contacts AS c (tenant_id, wa_id, marketing_stopped_at)
    SELECT p.tenant_id, p.wa_id, p.at FROM core.marketing_preferences(p_changes) p WHERE p.stop
    ON CONFLICT (tenant_id, wa_id) DO UPDATE SET marketing_stopped_at = excluded.marketing_stopped_at,
                                                 updated_at = now()
    WHERE c.marketing_stopped_at IS NULL
      AND excluded.marketing_stopped_at > coalesce(c.marketing_resumed_at, '-infinity');
    GET DIAGNOSTICS v_stopped = ROW_COUNT;
    RETURN v_resumed + v_stopped;
END
$$;

CREATE FUNCTION core.authorised_changes(p_changes core.webhook_change[], OUT changes core.webhook_change[], OUT dropped integer) RETURNS record
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(p_changes) c WHERE c.signer IS NOT NULL) THEN
        changes := p_changes;
        dropped := 0;
        RETURN;
    END IF;
    changes := ARRAY(
        SELECT c FROM unnest(p_changes) c
        WHERE c.signer IS NULL
           OR EXISTS (SELECT 1 FROM core.wa_numbers n
                      WHERE n.waba_id = c.waba_id
                        AND (n.phone_number_id = c.phone_number_id
                             OR (c.phone_number_id IS NULL AND c.field <> 'messages'))
                        AND n.app_secret <> '' AND core.app_signer(n.app_secret) = c.signer)
        ORDER BY c.ord);
    dropped := cardinality(p_changes) - cardinality(changes);
    IF dropped = 0 THEN
        RETURN;
    END IF;
    WITH refused AS (
        SELECT c.signer, count(*) AS cnt,
               array_agg(DISTINCT coalesce(c.phone_number_id, c.waba_id)) AS named
        FROM unnest(p_changes) c
        WHERE c.signer IS NOT NULL AND NOT (c = ANY (changes))
        GROUP BY c.signer
    )
    INSERT INTO core.notifications AS nt (tenant_id, kind, severity, message, details, dedupe_key)
    SELECT NULL, 'webhook_forbidden', 'critical',
           format('%s webhook change(s) signed by a tenant''s app named numbers that app does not hold; dropped', r.cnt),
           jsonb_build_object('changes', r.cnt, 'signer', left(r.signer, 16), 'named', to_jsonb(r.named[1:20]),
                              'signer_tenants', (SELECT to_jsonb(array_agg(DISTINCT n.tenant_id)) FROM core.wa_numbers n
                                                 WHERE n.app_secret <> '' AND core.app_signer(n.app_secret) = r.signer),
                              'since', date_trunc('hour', now())),
           format('webhook_forbidden|%s|%s', r.signer, date_trunc('hour', now()))
    FROM refused r
    ON CONFLICT (tenant_id, dedupe_key) WHERE dedupe_key IS NOT NULL DO UPDATE SET
        details = nt.details || jsonb_build_object('changes', (nt.details->>'changes')::bigint + (excluded.details->>'changes')::bigint),
        message = format('%s webhook change(s) signed by a tenant''s app named numbers that app does not hold; dropped',
                         (nt.details->>'changes')::bigint + (excluded.details->>'changes')::bigint),
        read_at = NULL;
END
$$;

CREATE FUNCTION core.body_param_count(p_components jsonb) RETURNS smallint
    LANGUAGE sql IMMUTABLE
    SET search_path TO ''
    AS $$
    SELECT count(DISTINCT m[1])::smallint
    FROM jsonb_array_elements(coalesce(p_components, '[]')) c,
         regexp_matches(coalesce(c->>'text', ''), '\{\{\s*([A-Za-z0-9_]+)\s*\}\}', 'g') m
    WHERE upper(c->>'type') = 'BODY'
$$;

CREATE TABLE core.bot_rules (
    rule_id bigint NOT NULL,
    number_id bigint NOT NULL,
    kind text NOT NULL,
    pattern text,
    priority integer DEFAULT 100 NOT NULL,
    reply jsonb NOT NULL,
    enabled boolean DEFAULT true NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    match_text text,
    like_pattern text,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT bot_rules_kind_valid CHECK ((kind = ANY (ARRAY['exact'::text, 'starts_with'::text, 'contains'::text, 'regex'::text, 'welcome'::text, 'default'::text]))),
    CONSTRAINT bot_rules_match_text_present CHECK (((kind = ANY (ARRAY['welcome'::text, 'default'::text])) OR (match_text IS NOT NULL))),
    CONSTRAINT bot_rules_pattern_present CHECK (((kind = ANY (ARRAY['welcome'::text, 'default'::text])) OR (pattern IS NOT NULL))),
    CONSTRAINT bot_rules_priority_valid CHECK (((priority >= 0) AND (priority <= 1000000)))
);

CREATE FUNCTION core.bot_rule_row(p_rule core.bot_rules) RETURNS api.bot_rule
    LANGUAGE sql IMMUTABLE
    SET search_path TO ''
    AS $$
    SELECT ROW(p_rule.rule_id, p_rule.number_id, p_rule.kind, p_rule.pattern, p_rule.priority, p_rule.reply,
               p_rule.enabled, p_rule.created_at, p_rule.updated_at)::api.bot_rule
$$;

CREATE FUNCTION core.budget_used(p_portfolio_id bigint, p_now timestamp with time zone) RETURNS integer
    LANGUAGE sql STABLE
    SET search_path TO ''
    AS $$
    SELECT coalesce(sum(m.users), 0)::integer FROM core.portfolio_reach_minutes m
    WHERE m.portfolio_id = p_portfolio_id
      AND m.minute > core.window_start(p_now) - interval '1 minute'
$$;

CREATE FUNCTION core.caller_is_operator() RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path TO ''
    AS $$
    SELECT pg_catalog.pg_has_role(session_user, current_user, 'MEMBER')
$$;

CREATE TABLE core.campaigns (
    campaign_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    number_id bigint NOT NULL,
    name text NOT NULL,
    status text DEFAULT 'draft'::text NOT NULL,
    pause_reason text,
    scheduled_at timestamp with time zone,
    started_at timestamp with time zone,
    completed_at timestamp with time zone,
    cancelled_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    total integer DEFAULT 0 NOT NULL,
    skipped_opted_out integer DEFAULT 0 NOT NULL,
    skipped_invalid integer DEFAULT 0 NOT NULL,
    duplicates_removed integer DEFAULT 0 NOT NULL,
    sent integer DEFAULT 0 NOT NULL,
    delivered integer DEFAULT 0 NOT NULL,
    read integer DEFAULT 0 NOT NULL,
    replied integer DEFAULT 0 NOT NULL,
    failed integer DEFAULT 0 NOT NULL,
    cancelled integer DEFAULT 0 NOT NULL,
    finished integer DEFAULT 0 NOT NULL,
    retrying integer DEFAULT 0 NOT NULL,
    CONSTRAINT campaigns_retrying_valid CHECK ((retrying >= 0)),
    CONSTRAINT campaigns_status_valid CHECK ((status = ANY (ARRAY['draft'::text, 'scheduled'::text, 'running'::text, 'paused'::text, 'completed'::text, 'cancelled'::text])))
);

CREATE FUNCTION core.campaign_for(p_tenant_id bigint, p_campaign_id bigint) RETURNS core.campaigns
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_campaign core.campaigns;
BEGIN
    SELECT * INTO v_campaign FROM core.campaigns
    WHERE campaign_id = p_campaign_id AND tenant_id = p_tenant_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'campaign % not found', p_campaign_id
            USING ERRCODE = 'PW201', HINT = 'List the tenant''s campaigns with api.campaigns().';
    END IF;
    RETURN v_campaign;
END
$$;

CREATE FUNCTION core.campaign_queue(p_campaign_id bigint) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT 'c_' || p_campaign_id::text
$$;

CREATE FUNCTION core.cancel_opted_out(p_batch core.claimed[], p_tenant_id bigint, p_number_id bigint) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_cancelled integer;
    v_campaigns bigint[];
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM core.contacts c
        WHERE c.tenant_id = p_tenant_id AND c.opted_out
          AND c.opted_out_at >= (SELECT min(created_at) FROM core.campaigns
                                 WHERE number_id = p_number_id AND status = 'running'))
       AND NOT EXISTS (SELECT 1 FROM core.contacts c
                       WHERE c.tenant_id = p_tenant_id AND c.marketing_stopped_at IS NOT NULL) THEN
        RETURN 0;
    END IF;
    WITH cancelled AS (
        UPDATE core.outbound_messages o SET state = 'cancelled', error_category = 'opted_out',
            error_detail = CASE WHEN c.opted_out THEN 'the contact opted out after the campaign was created'
                                ELSE 'the contact stopped marketing messages from this business' END
        FROM unnest(p_batch) b, core.contacts c
        WHERE o.outbound_id = b.outbound_id AND o.campaign_id IS NOT NULL AND o.state IN ('queued', 'in_flight')
          AND c.contact_id = o.contact_id
          AND (c.opted_out
               OR (c.marketing_stopped_at IS NOT NULL AND EXISTS (
                       SELECT 1 FROM core.campaign_templates ct JOIN core.templates t ON t.template_id = ct.template_id
                       WHERE ct.campaign_id = o.campaign_id AND ct.variant = o.variant AND t.category = 'MARKETING')))
        RETURNING o.campaign_id
    ), counted AS (
        UPDATE core.campaigns c SET cancelled = c.cancelled + k.n
        FROM (SELECT campaign_id, count(*)::integer AS n FROM cancelled GROUP BY campaign_id) k
        WHERE c.campaign_id = k.campaign_id
        RETURNING c.campaign_id, k.n
    )
    SELECT coalesce(sum(n), 0), array_agg(campaign_id) INTO v_cancelled, v_campaigns FROM counted;
    IF v_campaigns IS NOT NULL THEN
        PERFORM core.complete_campaigns(v_campaigns);
    END IF;
    RETURN v_cancelled;
END
$$;

CREATE TABLE core.wa_numbers (
    number_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    phone_number_id text NOT NULL,
    waba_id text NOT NULL,
    display_phone_number text,
    access_token text NOT NULL,
    app_secret text,
    throughput_mps integer DEFAULT 80 NOT NULL,
    rate_mps double precision DEFAULT 80 NOT NULL,
    send_tat timestamp with time zone DEFAULT now() NOT NULL,
    throttled_at timestamp with time zone,
    quality_rating text,
    llm_enabled boolean DEFAULT false NOT NULL,
    paused_reason text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    rate_changed_at timestamp with time zone,
    llm_system_prompt text,
    llm_daily_limit integer DEFAULT 20 NOT NULL,
    llm_context_messages integer DEFAULT 12 NOT NULL,
    verified_name text,
    verified_at timestamp with time zone,
    llm_number_daily_limit integer DEFAULT 1000 NOT NULL,
    portfolio_id bigint,
    quality_event_at timestamp with time zone,
    ban_event_at timestamp with time zone,
    CONSTRAINT wa_numbers_phone_number_id_digits CHECK ((phone_number_id ~ '^[0-9]{1,32}$'::text)),
    CONSTRAINT wa_numbers_rate_positive CHECK ((rate_mps > (0)::double precision)),
    CONSTRAINT wa_numbers_throughput_valid CHECK (((throughput_mps >= 1) AND (throughput_mps <= 1000))),
    CONSTRAINT wa_numbers_waba_id_digits CHECK ((waba_id ~ '^[0-9]{1,32}$'::text))
);

COMMENT ON COLUMN core.wa_numbers.quality_event_at IS 'When the newest phone_number_quality_update applied to the number happened; an older one changes nothing.';

COMMENT ON COLUMN core.wa_numbers.ban_event_at IS 'When the newest account_update DISABLED_UPDATE (ban or reinstatement) of the number''s WABA happened; an older one changes nothing.';

CREATE FUNCTION core.change_numbers(p_waba_id text, p_phone_number_id text, p_signer text) RETURNS SETOF core.wa_numbers
    LANGUAGE sql STABLE
    SET search_path TO ''
    AS $$
    SELECT n.* FROM core.wa_numbers n
    WHERE n.waba_id = p_waba_id
      AND (p_phone_number_id IS NULL OR n.phone_number_id = p_phone_number_id)
      AND (p_signer IS NULL OR (n.app_secret <> '' AND core.app_signer(n.app_secret) = p_signer))
$$;

CREATE TABLE core.templates (
    template_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    waba_id text NOT NULL,
    meta_template_id text,
    name text NOT NULL,
    language text NOT NULL,
    category text,
    status text DEFAULT 'APPROVED'::text NOT NULL,
    components jsonb DEFAULT '[]'::jsonb NOT NULL,
    body_param_count smallint DEFAULT 0 NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    status_event_at timestamp with time zone,
    CONSTRAINT templates_param_count_valid CHECK ((body_param_count >= 0))
);

CREATE FUNCTION core.change_templates(p_waba_id text, p_signer text, p_value jsonb) RETURNS SETOF core.templates
    LANGUAGE sql STABLE
    SET search_path TO ''
    AS $$
    SELECT t.* FROM core.templates t
    WHERE t.waba_id = p_waba_id
      AND (t.meta_template_id = p_value->>'message_template_id'
           OR (t.name = p_value->>'message_template_name'
               AND t.language IN (p_value->>'message_template_language',
                                  replace(p_value->>'message_template_language', '-', '_'))))
      AND EXISTS (SELECT 1 FROM core.change_numbers(p_waba_id, NULL, p_signer) n WHERE n.tenant_id = t.tenant_id)
$$;

CREATE FUNCTION core.check_number_fields(p_tenant_id bigint, p_phone_number_id text, p_waba_id text, p_access_token text, p_throughput_mps integer) RETURNS void
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $_$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM core.tenants WHERE tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'tenant % does not exist', p_tenant_id USING ERRCODE = 'PW205', HINT = 'Create the tenant first.';
    END IF;
    IF p_phone_number_id IS NULL OR p_phone_number_id !~ '^[0-9]{1,32}$' THEN
        RAISE EXCEPTION 'phone_number_id "%" is not Meta''s numeric id', p_phone_number_id
            USING ERRCODE = 'PW100', HINT = 'Use the Phone number ID from WhatsApp Manager, not the phone number.';
    END IF;
    IF p_waba_id IS NULL OR p_waba_id !~ '^[0-9]{1,32}$' THEN
        RAISE EXCEPTION 'waba_id "%" is not Meta''s numeric id', p_waba_id
            USING ERRCODE = 'PW100', HINT = 'Use the WhatsApp Business Account ID.';
    END IF;
    IF coalesce(p_access_token, '') = '' THEN
        RAISE EXCEPTION 'access_token is empty' USING ERRCODE = 'PW100', HINT = 'Give a system user access token.';
    END IF;
    IF p_throughput_mps IS NULL OR p_throughput_mps NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'throughput_mps % is out of range', p_throughput_mps
            USING ERRCODE = 'PW100', HINT = 'Meta allows 80 messages per second by default and up to 1,000.';
    END IF;
END
$_$;

CREATE FUNCTION core.check_reply(p_reply jsonb, p_tenant_id bigint, p_waba_id text) RETURNS void
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_template core.templates;
    v_titles text[];
BEGIN
    IF jsonb_typeof(p_reply) IS DISTINCT FROM 'object' OR p_reply->>'type' IS NULL
       OR p_reply->>'type' NOT IN ('text', 'buttons', 'template') THEN
        RAISE EXCEPTION 'a reply must be an object with type text, buttons or template'
            USING ERRCODE = 'PW100',
                  HINT = '{"type": "text", "text": "Hi {{name}}"}, {"type": "buttons", "text": "...", "buttons": ["Yes", "No"]} or {"type": "template", "name": "...", "language": "en_US", "params": [...]}';
    END IF;
    IF p_reply->>'type' IN ('text', 'buttons') AND (jsonb_typeof(p_reply->'text') IS DISTINCT FROM 'string'
            OR btrim(p_reply->>'text') = '' OR length(p_reply->>'text') > core.text_body_max()) THEN
        RAISE EXCEPTION 'a % reply needs a text of 1 to % characters', p_reply->>'type', core.text_body_max()
            USING ERRCODE = 'PW100', HINT = 'Give "text"; it may use {{name}} and other contact variables.';
    END IF;
    IF p_reply->>'type' = 'buttons' THEN
        IF jsonb_typeof(p_reply->'buttons') IS DISTINCT FROM 'array' OR jsonb_array_length(p_reply->'buttons') NOT BETWEEN 1 AND 3 THEN
            RAISE EXCEPTION 'a buttons reply needs 1 to 3 buttons' USING ERRCODE = 'PW100',
                HINT = '"buttons": [{"id": "yes", "title": "Yes"}, "No"] (Meta allows three reply buttons).';
        END IF;
        SELECT array_agg(coalesce(b->>'title', b #>> '{}')) INTO v_titles
        FROM jsonb_array_elements(p_reply->'buttons') b
        WHERE jsonb_typeof(b) = 'string' OR (jsonb_typeof(b) = 'object' AND jsonb_typeof(b->'title') = 'string');
        IF coalesce(cardinality(v_titles), 0) <> jsonb_array_length(p_reply->'buttons')
           OR EXISTS (SELECT 1 FROM unnest(v_titles) t WHERE btrim(t) = '' OR length(t) > 20) THEN
            RAISE EXCEPTION 'each button needs a title of 1 to 20 characters' USING ERRCODE = 'PW100',
                HINT = 'A button is "Title" or {"id": "...", "title": "Title"}; Meta limits titles to 20 characters.';
        END IF;
        IF length(coalesce(p_reply->>'header', '')) > 60 OR length(coalesce(p_reply->>'footer', '')) > 60 THEN
            RAISE EXCEPTION 'header and footer are at most 60 characters' USING ERRCODE = 'PW100',
                HINT = 'Shorten the header or footer.';
        END IF;
    END IF;
    IF p_reply->>'type' = 'template' THEN
        SELECT * INTO v_template FROM core.templates t
        WHERE t.tenant_id = p_tenant_id AND t.waba_id = p_waba_id
          AND t.name = p_reply->>'name' AND t.language = p_reply->>'language';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'template "%" (%) does not exist for WABA %', p_reply->>'name',
                coalesce(p_reply->>'language', 'no language'), p_waba_id
                USING ERRCODE = 'PW102', HINT = 'Sync templates from Meta or check the name and language.';
        ELSIF v_template.status <> 'APPROVED' THEN
            RAISE EXCEPTION 'template "%" (%) is %, not APPROVED', v_template.name, v_template.language, v_template.status
                USING ERRCODE = 'PW102', HINT = 'Only approved templates can be sent.';
        ELSIF coalesce(jsonb_typeof(p_reply->'params'), 'array') <> 'array'
              OR coalesce(jsonb_array_length(p_reply->'params'), 0) <> v_template.body_param_count
              OR EXISTS (SELECT 1 FROM jsonb_array_elements(coalesce(p_reply->'params', '[]')) p
                         WHERE jsonb_typeof(p) <> 'string') THEN
            RAISE EXCEPTION 'template "%" has % body parameters; give "params" as that many strings',
                v_template.name, v_template.body_param_count
                USING ERRCODE = 'PW102', HINT = 'Parameters may use {{name}} and other contact variables.';
        END IF;
    END IF;
END
$$;

CREATE FUNCTION core.check_staged_contacts(p_default_cc text, p_on_invalid text, p_columns text[] DEFAULT '{}'::text[], OUT invalid integer, OUT invalid_rows jsonb, OUT duplicates integer, OUT staged integer) RETURNS record
    LANGUAGE plpgsql
    SET search_path TO ''
    SET client_min_messages TO 'warning'
    AS $_$
DECLARE
    v_column text;
BEGIN
    IF p_on_invalid IS NULL OR p_on_invalid NOT IN ('reject', 'skip') THEN
        RAISE EXCEPTION 'on_invalid must be reject or skip, not "%"', p_on_invalid USING ERRCODE = 'PW100',
            HINT = 'reject refuses the list when any row is invalid; skip goes on with the valid rows.';
    END IF;
    IF p_default_cc IS NOT NULL AND p_default_cc !~ '^[1-9][0-9]{0,2}$' THEN
        RAISE EXCEPTION 'default_country_code "%" is not a country calling code', p_default_cc
            USING ERRCODE = 'PW100', HINT = 'Digits only, e.g. 44 or 1.';
    END IF;
    staged := core.staged_count();

    DROP TABLE IF EXISTS pg_temp.contact_rows;
    CREATE TEMP TABLE contact_rows ON COMMIT DROP AS
    SELECT n.*, CASE WHEN n.wa_id IS NULL THEN core.phone_problem(n.raw_phone, p_default_cc) END AS problem
    FROM (SELECT s.row_no, s.phone AS raw_phone, core.normalize_phone(s.phone, p_default_cc) AS wa_id,
                 nullif(btrim(s.name), '') AS name, s.attributes
          FROM pg_temp.staged_contacts s) n;
    -- Temp tables have no statistics until analysed; without them the joins that read
    -- this one plan for a single row and loop.
    ANALYZE pg_temp.contact_rows;
    FOREACH v_column IN ARRAY coalesce(p_columns, '{}') LOOP
        UPDATE pg_temp.contact_rows SET problem = format('column "%s" is empty', v_column)
        WHERE problem IS NULL
          AND coalesce(btrim(CASE v_column WHEN 'phone' THEN raw_phone WHEN 'name' THEN name
                                           ELSE attributes->>v_column END), '') = '';
    END LOOP;

    SELECT count(*) INTO invalid FROM pg_temp.contact_rows WHERE problem IS NOT NULL;
    IF invalid > 0 AND p_on_invalid = 'reject' THEN
        RAISE EXCEPTION '% of % contact rows are invalid; first: %', invalid, staged,
            (SELECT string_agg(format('row %s "%s": %s', row_no, raw_phone, problem), '; ' ORDER BY row_no)
             FROM (SELECT * FROM pg_temp.contact_rows WHERE problem IS NOT NULL ORDER BY row_no LIMIT 5) f)
            USING ERRCODE = 'PW101',
                  DETAIL = (SELECT jsonb_agg(jsonb_build_object('row', row_no, 'value', raw_phone, 'reason', problem) ORDER BY row_no)
                            FROM (SELECT * FROM pg_temp.contact_rows WHERE problem IS NOT NULL ORDER BY row_no LIMIT 100) f)::text,
                  HINT = 'Fix the rows, or pass on_invalid => ''skip'' to go on with the valid ones.';
    END IF;
    invalid_rows := coalesce((
        SELECT jsonb_agg(jsonb_build_object('row', row_no, 'value', raw_phone, 'reason', problem) ORDER BY row_no)
        FROM (SELECT * FROM pg_temp.contact_rows WHERE problem IS NOT NULL ORDER BY row_no LIMIT 1000) f), '[]');
    duplicates := (SELECT count(*) - count(DISTINCT wa_id) FROM pg_temp.contact_rows WHERE problem IS NULL);
END
$_$;

CREATE FUNCTION core.check_staging_table() RETURNS void
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_problem text;
BEGIN
    SELECT CASE
        WHEN c.relkind <> 'r' THEN format('it is a %s, not a table',
            CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table'
                           WHEN 'p' THEN 'partitioned table' WHEN 'S' THEN 'sequence' ELSE 'relation of kind ' || c.relkind::text END)
        WHEN c.relowner <> p.proowner
            THEN format('it is owned by %s, not by the functions'' owner', pg_get_userbyid(c.relowner))
        WHEN c.relhastriggers OR EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid)
            THEN 'it has triggers'
        WHEN c.relhasrules OR EXISTS (SELECT FROM pg_catalog.pg_rewrite r WHERE r.ev_class = c.oid)
            THEN 'it has rules'
        WHEN c.relrowsecurity OR EXISTS (SELECT FROM pg_catalog.pg_policy o WHERE o.polrelid = c.oid)
            THEN 'it has row-level security'
        WHEN c.relhassubclass OR EXISTS (SELECT FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid)
            THEN 'it is part of an inheritance tree'
    END INTO v_problem
    FROM pg_catalog.pg_class c, pg_catalog.pg_proc p
    WHERE c.oid = to_regclass('pg_temp.staged_contacts')
      AND p.oid = 'api.stage_contacts()'::pg_catalog.regprocedure;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'pg_temp.staged_contacts is not the staging table api.stage_contacts makes: %', v_problem
            USING ERRCODE = 'PW403',
                  HINT = 'Drop your own pg_temp.staged_contacts (or reconnect), then call api.stage_contacts() and COPY the rows.';
    END IF;
END
$$;

CREATE FUNCTION core.classify_reports(p_results jsonb) RETURNS core.send_outcome[]
    LANGUAGE sql
    SET search_path TO ''
    AS $$
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
        LEFT JOIN LATERAL core.meta_error(r.error_code) e ON r.wamid IS NULL
    ) c
$$;

CREATE FUNCTION core.complete_campaigns(p_campaign_ids bigint[] DEFAULT NULL::bigint[], p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS bigint[]
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_done bigint[];
BEGIN
    WITH done AS (
        UPDATE core.campaigns SET status = 'completed', completed_at = coalesce(p_now, now())
        WHERE status = 'running' AND finished + cancelled >= total
          AND (p_campaign_ids IS NULL OR campaign_id = ANY (p_campaign_ids))
        RETURNING campaign_id
    )
    SELECT array_agg(campaign_id) INTO v_done FROM done;
    IF v_done IS NOT NULL THEN
        PERFORM pg_notify('pgwa_campaign', array_to_string(v_done, ','));
    END IF;
    RETURN coalesce(v_done, '{}');
END
$$;

CREATE TABLE core.contacts (
    contact_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    wa_id text,
    user_id text,
    name text,
    profile_name text,
    attributes jsonb DEFAULT '{}'::jsonb NOT NULL,
    opted_out boolean DEFAULT false NOT NULL,
    opted_out_at timestamp with time zone,
    last_inbound_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    marketing_stopped_at timestamp with time zone,
    marketing_resumed_at timestamp with time zone,
    CONSTRAINT contacts_identified CHECK (((wa_id IS NOT NULL) OR (user_id IS NOT NULL))),
    CONSTRAINT contacts_wa_id_e164 CHECK ((wa_id ~ '^[1-9][0-9]{6,14}$'::text))
);

COMMENT ON COLUMN core.contacts.marketing_stopped_at IS 'When Meta said the user stopped marketing messages from this business (error 131050 or a user_preferences webhook); marketing templates skip the contact, utility ones do not.';

COMMENT ON COLUMN core.contacts.marketing_resumed_at IS 'When the user last resumed marketing messages (user_preferences webhook); a stop older than this changes nothing.';

CREATE FUNCTION core.contact_for(p_tenant_id bigint, p_contact_id bigint) RETURNS core.contacts
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_contact core.contacts;
BEGIN
    SELECT * INTO v_contact FROM core.contacts WHERE contact_id = p_contact_id AND tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'contact % not found', p_contact_id
            USING ERRCODE = 'PW204', HINT = 'List the number''s conversations with api.conversations().';
    END IF;
    RETURN v_contact;
END
$$;

CREATE FUNCTION core.contact_vars(p_contact core.contacts) RETURNS jsonb
    LANGUAGE sql IMMUTABLE
    SET search_path TO ''
    AS $$
    SELECT coalesce(p_contact.attributes, '{}') || jsonb_strip_nulls(jsonb_build_object(
        'name', coalesce(p_contact.name, p_contact.profile_name),
        'first_name', split_part(coalesce(p_contact.name, p_contact.profile_name), ' ', 1),
        'profile_name', p_contact.profile_name,
        'phone', p_contact.wa_id,
        'wa_id', p_contact.wa_id))
$$;

CREATE TABLE core.conversations (
    number_id bigint NOT NULL,
    contact_id bigint NOT NULL,
    last_inbound_at timestamp with time zone,
    last_message_at timestamp with time zone NOT NULL,
    unread integer DEFAULT 0 NOT NULL,
    read_up_to_id bigint,
    assigned_to text,
    assigned_at timestamp with time zone,
    needs_human boolean DEFAULT false NOT NULL,
    needs_human_reason text,
    needs_human_at timestamp with time zone,
    llm_day date,
    llm_replies integer DEFAULT 0 NOT NULL,
    llm_answered_id bigint,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT conversations_unread_valid CHECK ((unread >= 0))
);

CREATE FUNCTION core.conversation_for(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint) RETURNS core.conversations
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_conversation core.conversations;
BEGIN
    PERFORM core.number_for(p_tenant_id, p_number_id);
    SELECT v.* INTO v_conversation FROM core.conversations v
    JOIN core.contacts c ON c.contact_id = v.contact_id AND c.tenant_id = p_tenant_id
    WHERE v.number_id = p_number_id AND v.contact_id = p_contact_id
    FOR UPDATE OF v;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no conversation between number % and contact %', p_number_id, p_contact_id
            USING ERRCODE = 'PW209', HINT = 'List the number''s conversations with api.conversations().';
    END IF;
    RETURN v_conversation;
END
$$;

CREATE FUNCTION core.conversation_summaries(p_number_id bigint, p_contact_ids bigint[]) RETURNS SETOF api.conversation_summary
    LANGUAGE sql STABLE
    SET search_path TO ''
    AS $$
    SELECT c.contact_id, c.wa_id, c.user_id, c.name, c.profile_name, c.opted_out,
           l.message_id, l.direction, l.type, l.body, v.last_message_at, v.unread,
           core.window_open(v.last_inbound_at, now()),
           core.window_closes_at(v.last_inbound_at),
           v.assigned_to, v.assigned_at, v.needs_human, v.needs_human_reason
    FROM unnest(p_contact_ids) AS k(contact_id)
    JOIN core.conversations v ON v.number_id = p_number_id AND v.contact_id = k.contact_id
    JOIN core.contacts c ON c.contact_id = v.contact_id
    -- The last message, off the conversation index.
    LEFT JOIN LATERAL (
        SELECT i.message_id, i.direction, i.type, i.body FROM core.inbox_messages i
        WHERE i.number_id = v.number_id AND i.contact_id = v.contact_id
        ORDER BY i.created_at DESC, i.message_id DESC
        LIMIT 1
    ) l ON true
    ORDER BY v.last_message_at DESC, v.contact_id DESC
$$;

CREATE FUNCTION core.dead_letter_webhook(p_msg_id bigint, p_payload jsonb, p_headers jsonb, p_sqlstate text, p_reason text) RETURNS void
    LANGUAGE sql
    SET search_path TO ''
    AS $$
    SELECT pgmq.send('webhooks_dead', jsonb_build_object(
        'msg_id', p_msg_id, 'sqlstate', p_sqlstate, 'reason', p_reason, 'failed_at', now(),
        'headers', p_headers, 'payload', p_payload));
$$;

CREATE FUNCTION core.defer_capped(p_ids bigint[], p_states text[], p_codes integer[]) RETURNS bigint[]
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
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
               jsonb_build_object('o', o.outbound_id, 't', ct.wa_id, 'v', o.variant, 'p', (
                   SELECT coalesce(jsonb_agg(CASE WHEN p ? 'value' THEN p->>'value'
                                                  WHEN p->>'column' = 'phone' THEN ct.wa_id
                                                  WHEN p->>'column' = 'name' THEN ct.name
                                                  ELSE ct.attributes->>(p->>'column') END ORDER BY n), '[]')
                   FROM jsonb_array_elements(t.params) WITH ORDINALITY pp(p, n))) AS message
        FROM unnest(p_ids, p_states, p_codes) f(id, state, code)
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
        SELECT pgmq.send_batch(core.campaign_queue(q.campaign_id), q.messages, q.delay_s)
        FROM (SELECT campaign_id, array_agg(message ORDER BY outbound_id) AS messages, max(backoff_s) AS delay_s
              FROM reset GROUP BY campaign_id) q
    )
    SELECT array_agg(r.outbound_id) INTO v_deferred
    FROM reset r, (SELECT count(*) FROM queued) x;
    RETURN coalesce(v_deferred, '{}');
END
$$;

CREATE FUNCTION core.delay_messages(p_queue text, p_msg_ids bigint[], p_delays double precision[], p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $_$
BEGIN
    EXECUTE format('UPDATE pgmq.%I q SET vt = $3 + make_interval(secs => d.delay)
                    FROM unnest($1, $2) d(msg_id, delay) WHERE q.msg_id = d.msg_id', pgmq.format_table_name(p_queue, 'q'))
    USING p_msg_ids, p_delays, coalesce(p_now, clock_timestamp());
END
$_$;

CREATE FUNCTION core.enqueue_replies(p_replies core.reply_request[]) RETURNS SETOF core.reply_queued
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_done core.reply_queued[];
    v_queue jsonb[];
BEGIN
    IF p_replies IS NULL OR cardinality(p_replies) = 0 THEN
        RETURN;
    END IF;
    WITH req AS MATERIALIZED (
        SELECT r.ord::integer AS ord, r.number_id, r.contact_id, r.kind, r.message, c.wa_id, c.user_id,
               core.window_closes_at(v.last_inbound_at) AS closes_at,
               r.kind = 'receipt' OR r.message->>'type' = 'template'
               OR core.window_open(v.last_inbound_at, now()) AS allowed
        FROM unnest(p_replies) WITH ORDINALITY AS r(number_id, contact_id, kind, message, ord)
        JOIN core.contacts c ON c.contact_id = r.contact_id
        LEFT JOIN core.conversations v ON v.number_id = r.number_id AND v.contact_id = r.contact_id
    ), ids AS MATERIALIZED (
        SELECT q.*, nextval('core.outbound_messages_outbound_id_seq') AS outbound_id
        FROM req q WHERE q.allowed ORDER BY q.ord
    ), ok AS MATERIALIZED (
        SELECT i.*, CASE
                   WHEN i.kind = 'receipt' THEN jsonb_build_object('messaging_product', 'whatsapp') || i.message
                   ELSE jsonb_build_object('messaging_product', 'whatsapp', 'recipient_type', 'individual')
                        -- A user known only by a business-scoped user id is addressed by it.
                        || CASE WHEN i.wa_id IS NOT NULL THEN jsonb_build_object('to', i.wa_id)
                                ELSE jsonb_build_object('recipient', i.user_id) END
                        || i.message
                        || jsonb_build_object('biz_opaque_callback_data', core.opaque_data(NULL, i.outbound_id))
               END AS body
        FROM ids i
    ), outbound AS (
        INSERT INTO core.outbound_messages (outbound_id, number_id, contact_id, kind)
        OVERRIDING SYSTEM VALUE
        SELECT o.outbound_id, o.number_id, o.contact_id, o.kind FROM ok o ORDER BY o.outbound_id
    ), inbox AS (
        INSERT INTO core.inbox_messages (number_id, contact_id, direction, type, body, payload, outbound_id)
        SELECT o.number_id, o.contact_id, 'out', coalesce(o.message->>'type', 'text'), core.message_text(o.message),
               o.body, o.outbound_id
        FROM ok o WHERE o.kind <> 'receipt'
        ORDER BY o.ord
        RETURNING message_id, outbound_id
    ), conversations AS (
        INSERT INTO core.conversations AS v (number_id, contact_id, last_message_at)
        SELECT o.number_id, o.contact_id, now() FROM ok o WHERE o.kind <> 'receipt'
        GROUP BY o.number_id, o.contact_id
        ORDER BY o.number_id, o.contact_id
        ON CONFLICT (number_id, contact_id) DO UPDATE SET
            last_message_at = greatest(v.last_message_at, excluded.last_message_at),
            needs_human = v.needs_human AND NOT EXISTS (
                SELECT 1 FROM ok a WHERE a.kind = 'agent' AND a.number_id = v.number_id AND a.contact_id = v.contact_id)
    )
    SELECT array_agg(ROW(q.ord, o.outbound_id, i.message_id, q.closes_at)::core.reply_queued ORDER BY q.ord),
           array_agg(jsonb_build_object('n', o.number_id, 'o', o.outbound_id, 'b', o.body) ORDER BY q.ord)
               FILTER (WHERE o.outbound_id IS NOT NULL)
    INTO v_done, v_queue
    FROM req q
    LEFT JOIN ok o ON o.ord = q.ord
    LEFT JOIN inbox i ON i.outbound_id = o.outbound_id;

    IF v_queue IS NOT NULL THEN
        PERFORM pgmq.send_batch(core.reply_queue((m->>'n')::bigint), array_agg(jsonb_build_object('o', m->'o', 'b', m->'b') ORDER BY (m->>'o')::bigint))
        FROM unnest(v_queue) m GROUP BY m->>'n';
        PERFORM core.wake_sender(n) FROM (SELECT DISTINCT (m->>'n')::bigint AS n FROM unnest(v_queue) m) d;
    END IF;
    RETURN QUERY SELECT * FROM unnest(v_done);
END
$$;

CREATE FUNCTION core.flatten_webhooks(p_payloads jsonb[], p_signers text[] DEFAULT NULL::text[]) RETURNS SETOF core.webhook_change
    LANGUAGE sql IMMUTABLE
    SET search_path TO ''
    AS $$
    SELECT p.ord::integer, e.value->>'id', core.unix_ts(e.value->>'time'), c.value->>'field',
           c.value->'value'->'metadata'->>'phone_number_id', c.value->'value', p.signer
    FROM unnest(p_payloads, p_signers) WITH ORDINALITY AS p(payload, signer, ord)
    CROSS JOIN LATERAL jsonb_array_elements(p.payload->'entry') AS e
    CROSS JOIN LATERAL jsonb_array_elements(e.value->'changes') AS c
    WHERE p.payload->>'object' = 'whatsapp_business_account'
$$;

CREATE FUNCTION core.hold_unsure(p_batch core.claimed[], p_number_id bigint, p_now timestamp with time zone) RETURNS core.claimed[]
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_held core.claimed[];
    v_waits double precision[];
BEGIN
    SELECT array_agg(b),
           -- Another grace, but no later than the bound.
           array_agg(least(s.status_grace_s,
                           greatest(1, extract(epoch FROM coalesce(o.unsure_since, o.claimed_at)
                                                          + make_interval(secs => s.unsure_resend_after_s) - p_now)))
                     ::double precision)
    INTO v_held, v_waits
    FROM unnest(p_batch) b
    JOIN core.outbound_messages o ON o.outbound_id = b.outbound_id
    CROSS JOIN core.settings s
    WHERE (o.state = 'in_flight' OR o.unsure_since IS NOT NULL)
      AND NOT core.resend_safe(p_number_id, coalesce(o.unsure_since, o.claimed_at), p_now);
    IF v_held IS NULL THEN
        RETURN p_batch;
    END IF;
    PERFORM core.delay_messages(h.queue_name, array_agg(h.msg_id), array_agg(h.wait_s), p_now)
    FROM unnest(v_held, v_waits) h(queue_name, msg_id, read_ct, outbound_id, message, wait_s)
    GROUP BY h.queue_name;
    RETURN ARRAY(SELECT b FROM unnest(p_batch) b
                 WHERE NOT EXISTS (SELECT 1 FROM unnest(v_held) h
                                   WHERE h.queue_name = b.queue_name AND h.msg_id = b.msg_id));
END
$$;

CREATE FUNCTION core.inbound_body(p_message jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT CASE p_message->>'type'
        WHEN 'text' THEN p_message->'text'->>'body'
        WHEN 'button' THEN p_message->'button'->>'text'
        WHEN 'interactive' THEN coalesce(p_message->'interactive'->'button_reply'->>'title',
                                         p_message->'interactive'->'list_reply'->>'title',
                                         p_message->'interactive'->'nfm_reply'->>'body')
        WHEN 'reaction' THEN p_message->'reaction'->>'emoji'
        WHEN 'location' THEN nullif(concat_ws(', ', p_message->'location'->>'name',
                                              p_message->'location'->>'address'), '')
        WHEN 'order' THEN p_message->'order'->>'text'
        ELSE coalesce(p_message->(p_message->>'type')->>'caption',
                      p_message->(p_message->>'type')->>'filename')
    END
$$;

CREATE FUNCTION core.like_literal(p_text text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT replace(replace(replace(p_text, '\', '\\'), '%', '\%'), '_', '\_')
$$;

CREATE FUNCTION core.marketing_preferences(p_changes core.webhook_change[]) RETURNS TABLE(tenant_id bigint, wa_id text, stop boolean, at timestamp with time zone)
    LANGUAGE sql STABLE
    SET search_path TO ''
    AS $_$
    SELECT DISTINCT ON (n.tenant_id, p.value->>'wa_id')
           n.tenant_id, p.value->>'wa_id', lower(p.value->>'value') = 'stop',
           coalesce(core.unix_ts(p.value->>'timestamp'), ch.entry_at, now())
    FROM unnest(p_changes) ch
    CROSS JOIN LATERAL core.change_numbers(ch.waba_id, ch.phone_number_id, ch.signer) n
    CROSS JOIN LATERAL jsonb_array_elements(CASE jsonb_typeof(ch.value->'user_preferences')
                                            WHEN 'array' THEN ch.value->'user_preferences' ELSE '[]' END) p
    WHERE ch.field = 'user_preferences' AND ch.phone_number_id IS NOT NULL
      AND p.value->>'category' = 'marketing_messages' AND lower(p.value->>'value') IN ('stop', 'resume')
      AND p.value->>'wa_id' ~ '^[1-9][0-9]{6,14}$'
    ORDER BY n.tenant_id, p.value->>'wa_id', 4 DESC, ch.ord DESC
$_$;

CREATE FUNCTION core.match_bot_rules(p_number_ids bigint[], p_texts text[], p_welcome boolean[]) RETURNS TABLE(ord bigint, rule_id bigint, default_rule_id bigint)
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
DECLARE
    -- Cut once here: in the query, left() would be evaluated again for every rule tried.
    v_texts text[] := ARRAY(SELECT left(t.norm, s.bot_match_prefix_chars)
                            FROM unnest(p_texts) WITH ORDINALITY AS t(norm, i), core.settings s ORDER BY t.i);
BEGIN
    -- PL/pgSQL keeps this statement's plan for the session; as a SQL function it would be
    -- planned on every call (~0.4 ms, more than running it).
    RETURN QUERY
    SELECT m.ord, coalesce(x.rule_id, k.rule_id), d.rule_id
    FROM unnest(p_number_ids, v_texts, p_welcome) WITH ORDINALITY AS m(number_id, norm, welcome, ord)
    -- The best keyword or welcome rule: each branch stops at its first hit.
    LEFT JOIN LATERAL (
        SELECT b.priority, b.rule_id FROM (
            (SELECT r.priority, r.rule_id FROM core.bot_rules r
             WHERE r.number_id = m.number_id AND r.enabled AND r.kind = 'exact' AND r.match_text = m.norm
             ORDER BY r.priority, r.rule_id LIMIT 1)
            UNION ALL
            (SELECT r.priority, r.rule_id FROM core.bot_rules r
             WHERE r.number_id = m.number_id AND r.enabled AND r.kind IN ('starts_with', 'contains')
               AND m.norm LIKE r.like_pattern
             ORDER BY r.priority, r.rule_id LIMIT 1)
            UNION ALL
            (SELECT r.priority, r.rule_id FROM core.bot_rules r
             WHERE m.welcome AND r.number_id = m.number_id AND r.enabled AND r.kind = 'welcome'
             ORDER BY r.priority, r.rule_id LIMIT 1)
        ) b
        ORDER BY b.priority, b.rule_id LIMIT 1
    ) k ON true
    -- Regexes cost the most (PostgreSQL caches 32 compiled ones per session): only those
    -- that would beat the keyword hit are tried, in priority order, until one matches.
    LEFT JOIN LATERAL (
        SELECT r.rule_id FROM core.bot_rules r
        WHERE r.number_id = m.number_id AND r.enabled AND r.kind = 'regex'
          AND (r.priority, r.rule_id) < (coalesce(k.priority, 2147483647), coalesce(k.rule_id, 9223372036854775807))
          AND m.norm ~* r.match_text
        ORDER BY r.priority, r.rule_id LIMIT 1
    ) x ON true
    LEFT JOIN LATERAL (
        SELECT r.rule_id FROM core.bot_rules r
        WHERE r.number_id = m.number_id AND r.enabled AND r.kind = 'default'
        ORDER BY r.priority, r.rule_id LIMIT 1
    ) d ON true;
END
$$;

CREATE FUNCTION core.message_text(p_message jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT CASE p_message->>'type'
        WHEN 'text' THEN p_message->'text'->>'body'
        WHEN 'interactive' THEN p_message->'interactive'->'body'->>'text'
        WHEN 'template' THEN p_message->'template'->>'name'
        ELSE coalesce(p_message->(p_message->>'type')->>'caption', p_message->(p_message->>'type')->>'body')
    END
$$;

CREATE TABLE core.meta_error_codes (
    code integer NOT NULL,
    title text NOT NULL,
    category text NOT NULL,
    retryable boolean NOT NULL,
    alert boolean NOT NULL,
    pauses_campaign boolean DEFAULT false NOT NULL,
    backoff text DEFAULT 'retry'::text NOT NULL,
    backoff_s integer,
    stops_marketing boolean DEFAULT false NOT NULL,
    CONSTRAINT meta_error_codes_backoff_s_given CHECK (((backoff = ANY (ARRAY['retry'::text, 'throttle'::text])) OR (backoff_s IS NOT NULL))),
    CONSTRAINT meta_error_codes_backoff_s_positive CHECK ((backoff_s > 0)),
    CONSTRAINT meta_error_codes_backoff_valid CHECK ((backoff = ANY (ARRAY['retry'::text, 'throttle'::text, 'number_hold'::text, 'waba_hold'::text, 'app_hold'::text, 'recipient'::text, 'next_day'::text]))),
    CONSTRAINT meta_error_codes_category_valid CHECK ((category = ANY (ARRAY['rate_limit'::text, 'auth'::text, 'template'::text, 'payment'::text, 'recipient'::text, 'policy'::text, 'transient'::text, 'request'::text, 'unknown'::text])))
);

COMMENT ON TABLE core.meta_error_codes IS 'Meta Cloud API error codes: category, retry, alert, pause and backoff policy (what a retryable error waits for); code -1 is the default for unknown codes.';

CREATE FUNCTION core.meta_error(p_code integer) RETURNS core.meta_error_codes
    LANGUAGE sql STABLE
    SET search_path TO ''
    AS $$
    SELECT e.* FROM core.meta_error_codes e
    WHERE e.code = coalesce(p_code, -2)
    UNION ALL
    SELECT d.* FROM core.meta_error_codes d
    WHERE d.code = -1 AND NOT EXISTS (SELECT 1 FROM core.meta_error_codes x WHERE x.code = coalesce(p_code, -2))
$$;

CREATE FUNCTION core.meta_tier(p_value text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $_$
    SELECT CASE
        WHEN upper(p_value) IN ('TIER_50', 'TIER_250', 'TIER_1K', 'TIER_2K', 'TIER_10K', 'TIER_100K', 'TIER_UNLIMITED')
            THEN upper(p_value)
        WHEN p_value ~ '^-?[0-9]{1,9}$' THEN CASE p_value::integer
            WHEN -1 THEN 'TIER_UNLIMITED' WHEN 50 THEN 'TIER_50' WHEN 250 THEN 'TIER_250' WHEN 1000 THEN 'TIER_1K'
            WHEN 2000 THEN 'TIER_2K' WHEN 10000 THEN 'TIER_10K' WHEN 100000 THEN 'TIER_100K' END
    END
$_$;

CREATE FUNCTION core.normalize_phone(p_raw text, p_default_cc text DEFAULT NULL::text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $_$
    SELECT CASE WHEN p_raw OPERATOR(pg_catalog.~) '[^0-9+()./ \t-]' THEN NULL ELSE pg_catalog.substring(
        CASE
            WHEN pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), '') OPERATOR(pg_catalog.~~) '00%'
                THEN pg_catalog.substr(pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), ''), 3)
            WHEN pg_catalog.ltrim(p_raw) OPERATOR(pg_catalog.~~) '+%' OR p_default_cc IS NULL
                 OR pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), '') OPERATOR(pg_catalog.!~~) '0%'
                THEN pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), '')
            ELSE p_default_cc OPERATOR(pg_catalog.||)
                 pg_catalog.ltrim(pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), ''), '0')
        END, '^([1-9][0-9]{6,14})$') END
$_$;

CREATE FUNCTION core.normalize_text(p_text text) RETURNS text
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
BEGIN
    RETURN nullif(upper(public.unaccent('public.unaccent'::regdictionary,
                                        btrim(regexp_replace(p_text, '\s+', ' ', 'g')))), '');
END
$$;

CREATE FUNCTION core.notify(p_tenant_id bigint, p_kind text, p_severity text, p_message text, p_details jsonb DEFAULT '{}'::jsonb) RETURNS bigint
    LANGUAGE sql
    SET search_path TO ''
    AS $$
    WITH n AS (
        INSERT INTO core.notifications (tenant_id, kind, severity, message, details)
        VALUES (p_tenant_id, p_kind, p_severity, p_message, p_details)
        RETURNING notification_id
    )
    SELECT notification_id FROM n, LATERAL pg_notify('pgwa_notification', p_tenant_id::text) x
$$;

CREATE FUNCTION core.number_for(p_tenant_id bigint, p_number_id bigint) RETURNS core.wa_numbers
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_number core.wa_numbers;
BEGIN
    SELECT * INTO v_number FROM core.wa_numbers WHERE number_id = p_number_id AND tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'number % not found', p_number_id
            USING ERRCODE = 'PW202', HINT = 'List the tenant''s numbers; register the number first.';
    END IF;
    RETURN v_number;
END
$$;

CREATE FUNCTION core.on_inbound(p_message_ids bigint[]) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_steps core.inbound_step[];
    v_replies core.reply_request[];
    v_jobs jsonb[];
BEGIN
    SELECT array_agg(ROW(s.message_id, s.number_id, s.contact_id, s.tenant_id, s.created_at, s.norm,
                         -- Welcome: the window was closed (or never open) when it came.
                         NOT core.window_open(s.prev_at, s.created_at),
                         CASE WHEN s.is_out THEN 'opt_out'
                              WHEN s.is_in AND s.opted_before THEN 'opt_in'
                              WHEN NOT core.window_open(s.created_at, now()) THEN 'none'
                              WHEN s.assigned_to IS NOT NULL OR s.opted_before THEN 'none'
                              ELSE 'auto' END,
                         s.llm)::core.inbound_step
                     ORDER BY s.created_at, s.message_id)
    INTO v_steps
    FROM (
        SELECT w.*,
               -- Opted out before this message: by the latest keyword before it in the
               -- batch, else as the contact was.
               coalesce((w.keywords_before)[cardinality(w.keywords_before)] = 'out', w.opted_out) AS opted_before
        FROM (
            SELECT m.*,
                   coalesce(lag(m.created_at) OVER (PARTITION BY m.number_id, m.contact_id
                                                    ORDER BY m.created_at, m.message_id),
                            m.prev_inbound_at) AS prev_at,
                   array_agg(CASE WHEN m.is_out THEN 'out' ELSE 'in' END) FILTER (WHERE m.is_out OR m.is_in)
                       OVER (PARTITION BY m.contact_id ORDER BY m.created_at, m.message_id
                             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS keywords_before
            FROM (
                SELECT i.message_id, i.number_id, i.contact_id, i.created_at, n.tenant_id, x.norm,
                       coalesce(x.norm = ANY (t.opt_out_keywords), false) AS is_out,
                       coalesce(x.norm = ANY (t.opt_in_keywords), false) AS is_in,
                       c.opted_out, v.last_inbound_at AS prev_inbound_at, v.assigned_to,
                       n.llm_enabled AND NOT coalesce(v.needs_human, false) AS llm
                FROM unnest(p_message_ids) AS id(message_id)
                JOIN core.inbox_messages i ON i.message_id = id.message_id AND i.direction = 'in'
                JOIN core.wa_numbers n ON n.number_id = i.number_id
                JOIN core.tenants t ON t.tenant_id = n.tenant_id
                JOIN core.contacts c ON c.contact_id = i.contact_id
                LEFT JOIN core.conversations v ON v.number_id = i.number_id AND v.contact_id = i.contact_id
                CROSS JOIN LATERAL (SELECT core.normalize_text(i.body)) x(norm)
            ) m
        ) w
    ) s;
    IF v_steps IS NULL THEN
        RETURN;
    END IF;

    -- Conversations: the 24-hour window, the last message, the unread count; in key
    -- order, so that concurrent batches cannot deadlock.
    INSERT INTO core.conversations AS v (number_id, contact_id, last_inbound_at, last_message_at, unread)
    SELECT s.number_id, s.contact_id, max(s.created_at), max(s.created_at), count(*)
    FROM unnest(v_steps) s
    GROUP BY s.number_id, s.contact_id
    ORDER BY s.number_id, s.contact_id
    ON CONFLICT (number_id, contact_id) DO UPDATE SET
        last_inbound_at = greatest(v.last_inbound_at, excluded.last_inbound_at),
        last_message_at = greatest(v.last_message_at, excluded.last_message_at),
        unread = v.unread + excluded.unread;

    -- Opt-out and opt-in: a contact takes the state of its latest keyword. opted_out_at
    -- is when pgwa learned it, which api.claim_sends compares with campaign creation.
    UPDATE core.contacts c SET
        opted_out = k.opted_out,
        opted_out_at = CASE WHEN k.opted_out THEN now() END,
        updated_at = now()
    FROM (SELECT DISTINCT ON (s.contact_id) s.contact_id, s.action = 'opt_out' AS opted_out
          FROM unnest(v_steps) s
          WHERE s.action IN ('opt_out', 'opt_in')
          ORDER BY s.contact_id, s.created_at DESC, s.message_id DESC) k
    WHERE c.contact_id = k.contact_id AND c.opted_out IS DISTINCT FROM k.opted_out;

    -- Rules for the messages automation may answer; replies and LLM jobs.
    WITH auto AS MATERIALIZED (
        SELECT s.*, row_number() OVER (ORDER BY s.created_at, s.message_id) AS ord
        FROM unnest(v_steps) s WHERE s.action = 'auto'
    ), matched AS MATERIALIZED (
        SELECT a.*, mr.rule_id, mr.default_rule_id
        FROM core.match_bot_rules(ARRAY(SELECT a.number_id FROM auto a ORDER BY a.ord),
                                  ARRAY(SELECT a.norm FROM auto a ORDER BY a.ord),
                                  ARRAY(SELECT a.welcome FROM auto a ORDER BY a.ord)) mr
        JOIN auto a ON a.ord = mr.ord
    ), answers AS (
        SELECT s.number_id, s.contact_id, s.created_at, s.message_id,
               jsonb_build_object('type', 'text', 'text', jsonb_build_object('body',
                   CASE s.action WHEN 'opt_out' THEN t.opt_out_reply ELSE t.opt_in_reply END)) AS message
        FROM unnest(v_steps) s JOIN core.tenants t ON t.tenant_id = s.tenant_id
        WHERE s.action IN ('opt_out', 'opt_in')
        UNION ALL
        SELECT m.number_id, m.contact_id, m.created_at, m.message_id, core.render_reply(r.reply, core.contact_vars(c))
        FROM matched m
        JOIN core.bot_rules r ON r.rule_id = CASE WHEN m.rule_id IS NOT NULL THEN m.rule_id
                                                  WHEN NOT m.llm THEN m.default_rule_id END
        JOIN core.contacts c ON c.contact_id = m.contact_id
    )
    SELECT (SELECT array_agg(ROW(a.number_id, a.contact_id, 'bot', a.message)::core.reply_request
                             ORDER BY a.created_at, a.message_id) FROM answers a),
           (SELECT array_agg(jsonb_build_object('number_id', j.number_id, 'contact_id', j.contact_id,
                                                'message_id', j.message_id))
            FROM (SELECT DISTINCT ON (m.number_id, m.contact_id) m.number_id, m.contact_id, m.message_id
                  FROM matched m WHERE m.rule_id IS NULL AND m.llm
                  ORDER BY m.number_id, m.contact_id, m.created_at DESC, m.message_id DESC) j)
    INTO v_replies, v_jobs;

    IF v_replies IS NOT NULL THEN
        PERFORM core.enqueue_replies(v_replies);
    END IF;
    IF v_jobs IS NOT NULL THEN
        PERFORM pgmq.send_batch('llm_jobs', v_jobs);
        PERFORM pg_notify('pgwa_llm', '');
    END IF;
END
$$;

CREATE FUNCTION core.opaque_data(p_campaign_id bigint, p_outbound_id bigint) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN p_campaign_id IS NULL THEN p_outbound_id::pg_catalog.text
                ELSE 'c' OPERATOR(pg_catalog.||) p_campaign_id::pg_catalog.text
                     OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) p_outbound_id::pg_catalog.text END
$$;

CREATE FUNCTION core.opaque_outbound_id(p_opaque text) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $_$
    SELECT CASE WHEN p_opaque ~ '^(c[0-9]{1,18}:)?[0-9]{1,18}$'
                THEN split_part(p_opaque, ':', -1)::bigint END
$_$;

CREATE FUNCTION core.phone_problem(p_raw text, p_default_cc text DEFAULT NULL::text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT CASE
        WHEN coalesce(btrim(p_raw), '') = '' THEN 'phone is empty'
        WHEN p_raw ~ '[^0-9+()./ \t-]' THEN 'phone has characters other than digits, spaces, +, -, ., ( and )'
        WHEN core.normalize_phone(p_raw, p_default_cc) IS NULL AND regexp_replace(p_raw, '[^0-9]', '', 'g') ~ '^0'
             AND p_default_cc IS NULL THEN 'phone is in national format; give the country code or a default one'
        WHEN core.normalize_phone(p_raw, p_default_cc) IS NULL THEN 'phone is not 7 to 15 digits with a country code'
    END
$$;

CREATE FUNCTION core.place_in_portfolio(p_number_id bigint) RETURNS bigint
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
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

CREATE FUNCTION core.portfolio_row(p_portfolio_id bigint, p_now timestamp with time zone) RETURNS api.portfolio
    LANGUAGE sql STABLE
    SET search_path TO ''
    AS $$
    SELECT p.portfolio_id, p.business_id, p.tier, p.messaging_limit,
           CASE WHEN p.messaging_limit IS NOT NULL THEN core.budget_used(p.portfolio_id, p_now) END,
           CASE WHEN p.budget_wait_until > p_now THEN p.budget_wait_until END,
           ARRAY(SELECT n.number_id FROM core.wa_numbers n WHERE n.portfolio_id = p.portfolio_id ORDER BY n.number_id)
    FROM core.portfolios p WHERE p.portfolio_id = p_portfolio_id
$$;

CREATE FUNCTION core.process_webhook_batch(p_ids bigint[]) RETURNS api.webhook_batch
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_batch api.webhook_batch;
    v_ids bigint[];
    v_payloads jsonb[];
    v_headers jsonb[];
BEGIN
    SELECT array_agg(q.msg_id ORDER BY q.msg_id), array_agg(q.message ORDER BY q.msg_id),
           array_agg(q.headers ORDER BY q.msg_id)
    INTO v_ids, v_payloads, v_headers
    FROM (SELECT w.msg_id, w.message, w.headers FROM pgmq.q_webhooks w
          WHERE w.msg_id = ANY (p_ids) ORDER BY w.msg_id FOR UPDATE) q;
    IF v_ids IS NULL THEN
        RETURN ROW(0, 0, 0, 0, 0);
    END IF;
    v_batch := core.process_webhook_part(v_ids, v_payloads, v_headers);
    v_batch.payloads := cardinality(v_ids);
    PERFORM pgmq.archive('webhooks', v_ids);    -- the dead-lettered ones are gone already
    RETURN v_batch;
END
$$;

CREATE FUNCTION core.process_webhook_part(p_ids bigint[], p_payloads jsonb[], p_headers jsonb[]) RETURNS api.webhook_batch
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_n integer := coalesce(cardinality(p_ids), 0);
    v_half integer := v_n / 2;
    v_batch api.webhook_batch := ROW(0, 0, 0, 0, 0);
    v_left api.webhook_batch;
    v_right api.webhook_batch;
    v_result record;
    v_state text;
    v_reason text;
BEGIN
    IF v_n = 0 THEN
        RETURN v_batch;
    END IF;
    BEGIN
        SELECT * INTO v_result
        FROM core.process_webhook_payloads(p_payloads, ARRAY(SELECT h->>'signer' FROM unnest(p_headers) h));
        v_batch.status_events := v_result.status_events;
        v_batch.messages := v_result.messages;
        v_batch.dropped := v_result.dropped;
    EXCEPTION
        WHEN deadlock_detected OR serialization_failure OR lock_not_available THEN
            RAISE;
        WHEN OTHERS THEN
            IF v_n = 1 THEN
                GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_reason = MESSAGE_TEXT;
                PERFORM core.dead_letter_webhook(p_ids[1], p_payloads[1], p_headers[1], v_state, v_reason);
                PERFORM pgmq.delete('webhooks', p_ids[1]);
                v_batch.dead := 1;
            ELSE
                v_left := core.process_webhook_part(p_ids[1:v_half], p_payloads[1:v_half], p_headers[1:v_half]);
                v_right := core.process_webhook_part(p_ids[v_half + 1:], p_payloads[v_half + 1:],
                                                     p_headers[v_half + 1:]);
                v_batch := ROW(0, v_left.status_events + v_right.status_events, v_left.messages + v_right.messages,
                               v_left.dead + v_right.dead, v_left.dropped + v_right.dropped);
            END IF;
    END;
    RETURN v_batch;
END
$$;

CREATE FUNCTION core.process_webhook_payloads(p_payloads jsonb[], p_signers text[], OUT status_events integer, OUT messages integer, OUT updates integer, OUT dropped integer) RETURNS record
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_changes core.webhook_change[];
BEGIN
    SELECT a.changes, a.dropped INTO v_changes, dropped
    FROM core.authorised_changes(ARRAY(SELECT c FROM core.flatten_webhooks(p_payloads, p_signers) c)) a;
    -- Inbound messages (and the bots they run) first, statuses last: statuses move the
    -- campaign counter rows every batch needs, so a batch that stalls in the inbound
    -- part (a stuck lock, a slow rule) does so before it holds them, instead of holding
    -- up every other batch of those campaigns until its timeout.
    messages := core.apply_inbound(v_changes);
    updates := core.apply_account_updates(v_changes);
    status_events := core.apply_statuses(v_changes);
END
$$;

CREATE FUNCTION core.prom_family(p_name text, p_type text, p_help text, p_samples text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT format(E'# HELP %s %s\n# TYPE %s %s\n', p_name, p_help, p_name, p_type)
           || coalesce(p_samples || E'\n', '')
$$;

CREATE FUNCTION core.prom_label(p_value text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT replace(replace(replace(coalesce(p_value, ''), '\', '\\'), '"', '\"'), E'\n', '\n')
$$;

CREATE FUNCTION core.prune_notifications(p_read_keep interval DEFAULT '30 days'::interval, p_keep interval DEFAULT '180 days'::interval) RETURNS bigint
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_deleted bigint;
BEGIN
    DELETE FROM core.notifications WHERE read_at < now() - p_read_keep OR created_at < now() - p_keep;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$$;

CREATE FUNCTION core.prune_send_minutes(p_keep interval DEFAULT '30 days'::interval) RETURNS bigint
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_deleted bigint;
BEGIN
    DELETE FROM core.send_minutes WHERE minute < now() - p_keep;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$$;

CREATE FUNCTION core.quality_events(p_changes core.webhook_change[]) RETURNS TABLE(number_id bigint, tenant_id bigint, portfolio_id bigint, display text, entry_at timestamp with time zone, v jsonb, event text, rating text, tier text)
    LANGUAGE sql STABLE
    SET search_path TO ''
    AS $$
    SELECT DISTINCT ON (n.number_id)
           n.number_id, n.tenant_id, n.portfolio_id, ch.value->>'display_phone_number', ch.entry_at, ch.value,
           e.event,
           CASE WHEN e.rating IN ('GREEN', 'YELLOW', 'RED', 'UNKNOWN') THEN e.rating END,
           coalesce(core.meta_tier(ch.value->>'max_daily_conversations_per_business'),
                    CASE WHEN e.event NOT IN ('FLAGGED', 'UNFLAGGED') THEN core.meta_tier(ch.value->>'current_limit') END)
    FROM unnest(p_changes) ch
    CROSS JOIN LATERAL core.change_numbers(ch.waba_id, ch.phone_number_id, ch.signer) n
    CROSS JOIN LATERAL (
        SELECT coalesce(upper(ch.value->>'event'), '') AS event,
               upper(coalesce(ch.value->>'quality_rating', ch.value->>'current_quality_rating',
                              CASE upper(ch.value->>'event') WHEN 'FLAGGED' THEN 'RED'
                                                             WHEN 'UNFLAGGED' THEN 'GREEN' END)) AS rating) e
    WHERE ch.field = 'phone_number_quality_update'
      AND (ch.phone_number_id IS NOT NULL
           OR regexp_replace(n.display_phone_number, '[^0-9]', '', 'g')
              = regexp_replace(ch.value->>'display_phone_number', '[^0-9]', '', 'g'))
    ORDER BY n.number_id, ch.entry_at DESC NULLS LAST, ch.ord DESC
$$;

CREATE FUNCTION core.queue_campaign_id(p_queue_name text) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $_$
    SELECT x.id FROM (SELECT substring(p_queue_name FROM '[0-9]{1,18}$')::bigint AS id) x
    WHERE core.campaign_queue(x.id) = p_queue_name
$_$;

CREATE FUNCTION core.queue_number_id(p_queue_name text) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $_$
    SELECT x.id FROM (SELECT substring(p_queue_name FROM '[0-9]{1,18}$')::bigint AS id) x
    WHERE core.reply_queue(x.id) = p_queue_name
$_$;

CREATE FUNCTION core.raise_watermarks(p_outbound_ids bigint[]) RETURNS void
    LANGUAGE sql
    SET search_path TO ''
    AS $$
    WITH sent AS (
        SELECT o.number_id, max(o.claimed_at) AS through FROM core.outbound_messages o
        WHERE o.outbound_id = ANY (p_outbound_ids) AND o.claimed_at IS NOT NULL
        GROUP BY o.number_id
    ), free AS (
        SELECT w.number_id FROM core.status_watermarks w JOIN sent s USING (number_id)
        WHERE w.sent_through < s.through
        ORDER BY w.number_id
        FOR UPDATE OF w SKIP LOCKED
    )
    UPDATE core.status_watermarks w SET sent_through = s.through
    FROM sent s JOIN free f USING (number_id)
    WHERE w.number_id = s.number_id AND w.sent_through < s.through;
$$;

CREATE FUNCTION core.ratio(p_a bigint, p_b bigint) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT CASE WHEN p_b > 0 THEN round(p_a::numeric / p_b, 4)::double precision END
$$;

CREATE FUNCTION core.read_number(p_number_id bigint, p_budget integer, p_vt integer, p_now timestamp with time zone) RETURNS core.claimed[]
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
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

CREATE FUNCTION core.read_queue(p_queue text, p_vt integer, p_max integer, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS SETOF core.claimed
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $_$
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
$_$;

CREATE FUNCTION core.regex_unsafe_reason(p_pattern text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $_$
DECLARE
    v_len integer := length(p_pattern);
    v_stack integer[] := '{}';   -- the enclosing groups' flags
    v_flags integer := 0;        -- the innermost open group's flags: 1 a quantifier, 2 an alternation inside
    v_prev text := 'start';      -- the previous token: start, open, alt, atom, group (v_group_flags), quant
    v_group_flags integer := 0;
    v_repeats boolean;
    i integer := 1;
    j integer;
    k integer;
    c text;
    b text[];
BEGIN
    IF v_len > 200 THEN
        RETURN format('it is %s characters long; the limit is 200', v_len);
    ELSIF left(p_pattern, 3) = '***' THEN
        RETURN 'it starts with a director (***)';
    END IF;
    WHILE i <= v_len LOOP
        c := substr(p_pattern, i, 1);
        v_repeats := NULL;
        IF c = '\' THEN
            c := substr(p_pattern, i + 1, 1);
            IF c ~ '^[1-9k]$' THEN
                RETURN format('it has a back-reference (\%s)', c);
            END IF;
            i := i + 2;
            v_prev := 'atom';
        ELSIF c = '[' THEN
            -- A bracket expression: to its closing ], past a leading ] or ^], [:class:],
            -- [.elem.], [=equiv=] and escapes.
            j := i + 1;
            IF substr(p_pattern, j, 1) = '^' THEN j := j + 1; END IF;
            IF substr(p_pattern, j, 1) = ']' THEN j := j + 1; END IF;
            WHILE j <= v_len AND substr(p_pattern, j, 1) <> ']' LOOP
                IF substr(p_pattern, j, 2) IN ('[:', '[.', '[=') THEN
                    k := strpos(substr(p_pattern, j + 2), substr(p_pattern, j + 1, 1) || ']');
                    j := CASE WHEN k = 0 THEN v_len + 1 ELSE j + 3 + k END;
                ELSIF substr(p_pattern, j, 1) = '\' THEN
                    j := j + 2;
                ELSE
                    j := j + 1;
                END IF;
            END LOOP;
            i := j + 1;
            v_prev := 'atom';
        ELSIF c = '(' THEN
            IF substr(p_pattern, i + 1, 1) = '?' THEN
                IF substr(p_pattern, i + 2, 1) IN ('=', '!') OR substr(p_pattern, i + 2, 2) IN ('<=', '<!') THEN
                    RETURN format('it has a look-around (%s)', substr(p_pattern, i, CASE WHEN substr(p_pattern, i + 2, 1) = '<' THEN 4 ELSE 3 END));
                ELSIF substr(p_pattern, i + 2, 1) <> ':' THEN
                    RETURN format('it has embedded options (%s); only (?: groups are allowed', substr(p_pattern, i, 3));
                END IF;
                i := i + 3;
            ELSE
                i := i + 1;
            END IF;
            v_stack := v_stack || v_flags;
            v_flags := 0;
            v_prev := 'open';
        ELSIF c = ')' AND cardinality(v_stack) > 0 THEN
            v_group_flags := v_flags;
            v_flags := v_stack[cardinality(v_stack)] | v_flags;
            v_stack := v_stack[1:cardinality(v_stack) - 1];
            i := i + 1;
            v_prev := 'group';
        ELSIF c = '|' THEN
            v_flags := v_flags | 2;
            i := i + 1;
            v_prev := 'alt';
        ELSIF c IN ('*', '+') THEN
            v_repeats := true;
            i := i + 1;
        ELSIF c = '?' THEN
            v_repeats := false;
            i := i + 1;
        ELSIF c = '{' AND substr(p_pattern, i + 1, 1) ~ '^[0-9]$' THEN
            b := regexp_match(substr(p_pattern, i), '^\{([0-9]+)(,([0-9]*))?\}');
            IF b IS NULL THEN
                RETURN format('it has an unterminated repetition bound (%s)', substr(p_pattern, i, 8));
            ELSIF b[1]::numeric > 100 OR nullif(b[3], '')::numeric > 100 THEN
                RETURN format('it has a repetition bound over 100 (%s)', substr(p_pattern, i, length(b[1]) + coalesce(length(b[2]), 0) + 2));
            END IF;
            v_repeats := b[2] IS NOT NULL AND (b[3] = '' OR b[3]::integer > 1) OR b[2] IS NULL AND b[1]::integer > 1;
            i := i + length(b[1]) + coalesce(length(b[2]), 0) + 2;
        ELSE
            i := i + 1;
            v_prev := 'atom';
        END IF;

        IF v_repeats IS NOT NULL THEN
            IF substr(p_pattern, i, 1) = '?' THEN          -- a non-greedy quantifier: one token
                i := i + 1;
            END IF;
            IF v_prev = 'quant' THEN
                RETURN 'it applies a quantifier to a quantifier';
            ELSIF v_prev = 'group' AND v_repeats AND v_group_flags & 1 = 1 THEN
                RETURN 'it repeats a group that holds a quantifier (nested quantifiers, as in (a+)+)';
            ELSIF v_prev = 'group' AND v_repeats AND v_group_flags & 2 = 2 THEN
                RETURN 'it repeats a group that holds an alternation (as in (a|aa)*)';
            END IF;
            v_flags := v_flags | 1;
            v_prev := 'quant';
        END IF;
    END LOOP;
    RETURN NULL;
END
$_$;

CREATE FUNCTION core.render_reply(p_reply jsonb, p_vars jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE
    SET search_path TO ''
    AS $$
    SELECT CASE p_reply->>'type'
        WHEN 'text' THEN jsonb_build_object('type', 'text', 'text',
            jsonb_build_object('body', left(core.render_vars(p_reply->>'text', p_vars), core.text_body_max()))
            || CASE WHEN jsonb_typeof(p_reply->'preview_url') = 'boolean'
                    THEN jsonb_build_object('preview_url', p_reply->'preview_url') ELSE '{}' END)
        WHEN 'buttons' THEN jsonb_build_object('type', 'interactive', 'interactive',
            jsonb_build_object(
                'type', 'button',
                'body', jsonb_build_object('text', left(core.render_vars(p_reply->>'text', p_vars), 1024)),
                'action', jsonb_build_object('buttons', (
                    SELECT jsonb_agg(jsonb_build_object('type', 'reply', 'reply', jsonb_build_object(
                               'id', coalesce(b->>'id', b->>'title', b #>> '{}'),
                               'title', left(core.render_vars(coalesce(b->>'title', b #>> '{}'), p_vars), 20)))
                           ORDER BY i)
                    FROM jsonb_array_elements(p_reply->'buttons') WITH ORDINALITY x(b, i))))
            || CASE WHEN coalesce(p_reply->>'header', '') <> '' THEN jsonb_build_object('header',
                   jsonb_build_object('type', 'text', 'text', core.render_vars(p_reply->>'header', p_vars))) ELSE '{}' END
            || CASE WHEN coalesce(p_reply->>'footer', '') <> '' THEN jsonb_build_object('footer',
                   jsonb_build_object('text', core.render_vars(p_reply->>'footer', p_vars))) ELSE '{}' END)
        WHEN 'template' THEN jsonb_build_object('type', 'template', 'template',
            jsonb_build_object('name', p_reply->>'name', 'language', jsonb_build_object('code', p_reply->>'language'))
            || CASE WHEN coalesce(jsonb_array_length(p_reply->'params'), 0) = 0 THEN '{}'::jsonb
                    ELSE jsonb_build_object('components', jsonb_build_array(jsonb_build_object(
                        'type', 'body', 'parameters', (
                            SELECT jsonb_agg(jsonb_build_object('type', 'text', 'text',
                                       coalesce(nullif(core.render_vars(p, p_vars), ''), '-')) ORDER BY i)
                            FROM jsonb_array_elements_text(p_reply->'params') WITH ORDINALITY x(p, i)))))
               END)
    END
$$;

CREATE FUNCTION core.render_vars(p_text text, p_vars jsonb) RETURNS text
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_out text := p_text;
    m text[];
BEGIN
    IF p_text IS NULL OR strpos(p_text, '{{') = 0 THEN
        RETURN p_text;
    END IF;
    FOR m IN SELECT DISTINCT r FROM regexp_matches(p_text, '(\{\{\s*([A-Za-z0-9_]+)\s*(\|[^{}]*)?\}\})', 'g') r LOOP
        v_out := replace(v_out, m[1], coalesce(nullif(coalesce(p_vars->>m[2], p_vars->>lower(m[2])), ''),
                                               substr(m[3], 2), ''));
    END LOOP;
    RETURN v_out;
END
$$;

CREATE FUNCTION core.reply_queue(p_number_id bigint) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT 'r_' || p_number_id::text
$$;

CREATE FUNCTION core.report_accepted(p_rows core.send_outcome[], p_now timestamp with time zone) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_early integer;
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
    SELECT core.advance_outbound(array_agg(outbound_id), array_agg(status), array_agg(occurred_at),
                                 NULL, array_agg(error_code))
    INTO v_early FROM early;

    PERFORM pgmq.delete(r.queue_name, array_agg(r.msg_id))
    FROM unnest(p_rows) r
    WHERE (r.wamid IS NOT NULL AND r.outbound_id IS NOT NULL) OR r.outcome = 'receipt'
    GROUP BY r.queue_name;
END
$$;

CREATE FUNCTION core.report_alerts(p_rows core.send_outcome[], p_now timestamp with time zone) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
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

CREATE FUNCTION core.report_failed(p_rows core.send_outcome[], p_now timestamp with time zone) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
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

CREATE FUNCTION core.report_held(p_rows core.send_outcome[], p_now timestamp with time zone) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
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

CREATE FUNCTION core.report_minute(p_rows core.send_outcome[], p_now timestamp with time zone) RETURNS void
    LANGUAGE sql
    SET search_path TO ''
    AS $$
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

CREATE FUNCTION core.report_pace(p_rows core.send_outcome[], p_now timestamp with time zone) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
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
               ELSE r.errors = 0 AND r.accepted > 0 AND n.rate_mps < n.throughput_mps
                    AND p_now > coalesce(n.rate_changed_at, '-infinity') END;
END
$$;

CREATE FUNCTION core.report_paused(p_rows core.send_outcome[]) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_paused integer;
BEGIN
    WITH paused AS (
        UPDATE core.campaigns c SET status = 'paused',
            pause_reason = format('Meta error %s: %s', r.error_code, (core.meta_error(r.error_code)).title)
        FROM (SELECT DISTINCT ON (x.campaign_id) x.campaign_id, x.error_code
              FROM unnest(p_rows) x WHERE x.outcome = 'paused' ORDER BY x.campaign_id) r
        WHERE c.campaign_id = r.campaign_id AND c.status = 'running'
        RETURNING c.campaign_id, c.tenant_id, c.name, c.pause_reason
    )
    SELECT count(core.notify(p.tenant_id, 'campaign_paused', 'critical',
                             format('Campaign "%s" paused: %s', p.name, p.pause_reason),
                             jsonb_build_object('campaign_id', p.campaign_id)))
    INTO v_paused FROM paused p;
END
$$;

CREATE FUNCTION core.report_requeued(p_rows core.send_outcome[], p_now timestamp with time zone) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
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

CREATE FUNCTION core.resend_safe(p_number_id bigint, p_since timestamp with time zone, p_now timestamp with time zone) RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path TO ''
    AS $$
    SELECT p_now >= p_since + make_interval(secs => s.unsure_resend_after_s)
        OR (p_now >= p_since + make_interval(secs => s.status_grace_s)
            AND ((EXISTS (SELECT 1 FROM core.receiver_beats b
                          WHERE b.beat_at >= p_now - make_interval(secs => 3 * s.receiver_beat_s))
                  AND NOT EXISTS (SELECT 1 FROM core.receiver_outages g WHERE g.ended_at >= p_since)
                  AND NOT EXISTS (SELECT 1 FROM pgmq.q_webhooks q
                                  WHERE q.enqueued_at <= p_since + make_interval(secs => s.status_grace_s)))
                 OR EXISTS (SELECT 1 FROM core.status_watermarks w
                            WHERE w.number_id = p_number_id
                              AND w.sent_through >= p_since + make_interval(secs => s.status_grace_s))))
    FROM core.settings s
$$;

CREATE FUNCTION core.restore_webhook_notify() RETURNS void
    LANGUAGE sql
    SET search_path TO ''
    AS $$
    INSERT INTO pgmq.notify_insert_throttle (queue_name, throttle_interval_ms)
    SELECT 'webhooks', 50
    WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                  WHERE tgrelid = 'pgmq.q_webhooks'::regclass
                    AND tgname = 'trigger_notify_queue_insert_listeners')
      AND NOT EXISTS (SELECT 1 FROM pgmq.notify_insert_throttle WHERE queue_name = 'webhooks')
    ON CONFLICT DO NOTHING;
$$;

CREATE FUNCTION core.run_retention(p_keep interval DEFAULT '30 days'::interval) RETURNS bigint
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $_$
DECLARE
    v_deleted bigint := 0;
    v_rows bigint;
    v_queue text;
BEGIN
    FOR v_queue IN SELECT queue_name FROM pgmq.meta LOOP
        EXECUTE format('DELETE FROM pgmq.%I WHERE archived_at < now() - $1', 'a_' || v_queue) USING p_keep;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_deleted := v_deleted + v_rows;
    END LOOP;
    DELETE FROM core.status_events WHERE received_at < now() - p_keep;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    v_deleted := v_deleted + v_rows;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        DELETE FROM cron.job_run_details WHERE end_time < now() - p_keep;
    END IF;
    RETURN v_deleted;
END
$_$;

CREATE FUNCTION core.scope_rank(p_scope text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT CASE p_scope WHEN 'read' THEN 1 WHEN 'send' THEN 2 WHEN 'admin' THEN 3 END
$$;

CREATE FUNCTION core.service_window() RETURNS interval
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT interval '24 hours'
$$;

CREATE FUNCTION core.set_tier(p_portfolio_id bigint, p_tier text) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $_$
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
$_$;

CREATE FUNCTION core.spend_budget(p_batch core.claimed[], p_portfolio_id bigint, p_now timestamp with time zone) RETURNS core.claimed[]
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_limit integer;
    v_room integer;
    v_wait timestamptz;
    v_keep core.claimed[];
    v_late core.claimed[];
    v_sent text[];
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
        UPDATE core.portfolios SET budget_wait_until = v_wait WHERE portfolio_id = p_portfolio_id;
    ELSE
        UPDATE core.portfolios SET budget_wait_until = NULL
        WHERE portfolio_id = p_portfolio_id AND budget_wait_until IS NOT NULL;
    END IF;
    RETURN coalesce(v_keep, '{}');
END
$$;

CREATE FUNCTION core.staged_count() RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_count integer;
BEGIN
    IF to_regclass('pg_temp.staged_contacts') IS NULL THEN
        RAISE EXCEPTION 'no contacts staged in this session' USING ERRCODE = 'PW100',
            HINT = 'Call api.stage_contacts() and COPY the rows first.';
    END IF;
    PERFORM core.check_staging_table();
    SELECT count(*) INTO v_count FROM pg_temp.staged_contacts;
    IF v_count = 0 THEN
        RAISE EXCEPTION 'the contact list is empty' USING ERRCODE = 'PW101', HINT = 'Upload at least one contact.';
    END IF;
    RETURN v_count;
END
$$;

CREATE FUNCTION core.start_due_campaigns(p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_started integer;
BEGIN
    WITH started AS (
        UPDATE core.campaigns SET status = 'running', started_at = coalesce(p_now, now())
        WHERE status = 'scheduled' AND scheduled_at <= coalesce(p_now, now())
        RETURNING number_id
    )
    SELECT count(*) INTO v_started FROM (SELECT core.wake_sender(number_id) FROM started) n;
    RETURN v_started;
END
$$;

CREATE FUNCTION core.state_rank(p_state text) RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT (CASE p_state
        WHEN 'queued' THEN 0 WHEN 'in_flight' THEN 1 WHEN 'accepted' THEN 2 WHEN 'sent' THEN 3
        WHEN 'delivered' THEN 4 WHEN 'read' THEN 5 WHEN 'failed' THEN 6 WHEN 'cancelled' THEN 7
    END)::pg_catalog.int2
$$;

CREATE FUNCTION core.stop_marketing(p_outbound_ids bigint[], p_error_codes integer[], p_at timestamp with time zone) RETURNS void
    LANGUAGE sql
    SET search_path TO ''
    AS $$
    UPDATE core.contacts c SET marketing_stopped_at = p_at, updated_at = p_at
    FROM unnest(p_outbound_ids, p_error_codes) f(outbound_id, error_code)
    JOIN core.meta_error_codes e ON e.code = f.error_code AND e.stops_marketing
    JOIN core.outbound_messages o ON o.outbound_id = f.outbound_id
    WHERE c.contact_id = o.contact_id AND c.marketing_stopped_at IS NULL;
$$;

CREATE FUNCTION core.sweep_sends() RETURNS jsonb
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
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
                              'stuck_cancelled', v_settled, 'queues_dropped', v_dropped);
END
$$;

CREATE FUNCTION core.sync_cron_jobs() RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_count integer := 0;
    v_job record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RETURN 0;
    END IF;
    FOR v_job IN SELECT job_name, schedule, command FROM core.cron_jobs ORDER BY job_name LOOP
        -- cron.schedule upserts by name; unchanged jobs are left as they are so that
        -- re-applying functions changes nothing.
        IF NOT EXISTS (SELECT 1 FROM cron.job j WHERE j.jobname = v_job.job_name
                       AND j.schedule = v_job.schedule AND j.command = v_job.command) THEN
            PERFORM cron.schedule(v_job.job_name, v_job.schedule, v_job.command);
        END IF;
        v_count := v_count + 1;
    END LOOP;
    PERFORM cron.unschedule(j.jobid) FROM cron.job j
    WHERE j.jobname LIKE 'pgwa\_%' AND j.jobname NOT IN (SELECT job_name FROM core.cron_jobs);
    RETURN v_count;
END
$$;

CREATE FUNCTION core.take_in_flight(p_batch core.claimed[], p_number core.wa_numbers, p_now timestamp with time zone) RETURNS core.claimed[]
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
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

CREATE FUNCTION core.text_body_max() RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT 4096
$$;

CREATE FUNCTION core.tier_limit(p_tier text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT CASE p_tier WHEN 'TIER_50' THEN 50 WHEN 'TIER_250' THEN 250 WHEN 'TIER_1K' THEN 1000
                       WHEN 'TIER_2K' THEN 2000 WHEN 'TIER_10K' THEN 10000 WHEN 'TIER_100K' THEN 100000 END
$$;

CREATE FUNCTION core.unix_ts(p_value text) RETURNS timestamp with time zone
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $_$
    SELECT CASE WHEN p_value ~ '^[0-9]{1,11}$' THEN pg_catalog.to_timestamp(p_value::double precision) END
$_$;

CREATE FUNCTION core.wake_notified(p_tenant_ids bigint[]) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
BEGIN
    PERFORM pg_notify('pgwa_notification', d.t::text)
    FROM (SELECT DISTINCT t FROM unnest(p_tenant_ids) t WHERE t IS NOT NULL) d;
END
$$;

CREATE FUNCTION core.wake_sender(p_number_id bigint) RETURNS void
    LANGUAGE sql
    SET search_path TO ''
    AS $$
    SELECT pg_catalog.pg_notify('pgwa_send', p_number_id::text)
$$;

CREATE FUNCTION core.window_closes_at(p_last_inbound_at timestamp with time zone) RETURNS timestamp with time zone
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT p_last_inbound_at + core.service_window()
$$;

CREATE FUNCTION core.window_open(p_last_inbound_at timestamp with time zone, p_now timestamp with time zone) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT coalesce(p_last_inbound_at > p_now - core.service_window(), false)
$$;

CREATE FUNCTION core.window_start(p_now timestamp with time zone) RETURNS timestamp with time zone
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT p_now - core.service_window()
$$;

CREATE TABLE core.api_keys (
    api_key_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    name text NOT NULL,
    key_hash bytea NOT NULL,
    key_prefix text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    revoked_at timestamp with time zone,
    scope text DEFAULT 'admin'::text NOT NULL,
    expires_at timestamp with time zone,
    last_used_at timestamp with time zone,
    rate_limit_per_minute integer,
    rate_tat timestamp with time zone,
    CONSTRAINT api_keys_rate_limit_valid CHECK (((rate_limit_per_minute >= 1) AND (rate_limit_per_minute <= 1000000))),
    CONSTRAINT api_keys_scope_valid CHECK ((scope = ANY (ARRAY['read'::text, 'send'::text, 'admin'::text])))
);

ALTER TABLE core.api_keys ALTER COLUMN api_key_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.api_keys_api_key_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

ALTER TABLE core.bot_rules ALTER COLUMN rule_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.bot_rules_rule_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.campaign_errors (
    campaign_id bigint NOT NULL,
    error_code integer NOT NULL,
    category text NOT NULL,
    count integer DEFAULT 0 NOT NULL
);

CREATE VIEW core.campaign_failures AS
 SELECT e.campaign_id,
    c.name AS campaign,
    e.error_code,
    e.category,
    m.title,
    e.count
   FROM ((core.campaign_errors e
     JOIN core.campaigns c ON ((c.campaign_id = e.campaign_id)))
     LEFT JOIN core.meta_error_codes m ON ((m.code = e.error_code)));

COMMENT ON VIEW core.campaign_failures IS 'Final failures per campaign and Meta error code, with the category and Meta''s title.';

CREATE TABLE core.campaign_minutes (
    campaign_id bigint NOT NULL,
    minute timestamp with time zone NOT NULL,
    sent integer DEFAULT 0 NOT NULL,
    delivered integer DEFAULT 0 NOT NULL,
    read integer DEFAULT 0 NOT NULL,
    failed integer DEFAULT 0 NOT NULL,
    replied integer DEFAULT 0 NOT NULL
);

CREATE TABLE core.tenants (
    tenant_id bigint NOT NULL,
    name text NOT NULL,
    opt_out_keywords text[] DEFAULT '{STOP,UNSUBSCRIBE}'::text[] NOT NULL,
    opt_in_keywords text[] DEFAULT '{START}'::text[] NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    opt_out_reply text DEFAULT 'You have been unsubscribed and will get no more messages from us. Reply START to subscribe again.'::text NOT NULL,
    opt_in_reply text DEFAULT 'You are subscribed again. Reply STOP to unsubscribe.'::text NOT NULL
);

CREATE VIEW core.campaign_overview AS
 SELECT c.campaign_id,
    c.tenant_id,
    t.name AS tenant,
    c.name,
    c.status,
    n.phone_number_id,
    c.created_at,
    c.started_at,
    c.completed_at,
    c.total,
    GREATEST(((c.total - c.finished) - c.cancelled), 0) AS queued,
    c.sent,
    c.delivered,
    c.read,
    c.replied,
    c.failed,
    c.cancelled,
    round(((100.0 * ((c.finished + c.cancelled))::numeric) / (NULLIF(c.total, 0))::numeric), 1) AS progress_pct,
    round(((100.0 * (c.delivered)::numeric) / (NULLIF(c.sent, 0))::numeric), 1) AS delivered_pct,
    round(((100.0 * (c.read)::numeric) / (NULLIF(c.delivered, 0))::numeric), 1) AS read_pct,
    COALESCE(m.sent, 0) AS sent_last_minute,
    c.pause_reason
   FROM (((core.campaigns c
     JOIN core.tenants t ON ((t.tenant_id = c.tenant_id)))
     JOIN core.wa_numbers n ON ((n.number_id = c.number_id)))
     LEFT JOIN core.campaign_minutes m ON (((m.campaign_id = c.campaign_id) AND (m.minute = (date_trunc('minute'::text, now()) - '00:01:00'::interval)))));

COMMENT ON VIEW core.campaign_overview IS 'One row per campaign for operators: tenant, number, status, funnel counters, progress/delivered/read percentages and messages sent in the last complete minute.';

CREATE TABLE core.campaign_templates (
    campaign_id bigint NOT NULL,
    variant smallint NOT NULL,
    template_id bigint NOT NULL,
    params jsonb DEFAULT '[]'::jsonb NOT NULL,
    total integer DEFAULT 0 NOT NULL,
    sent integer DEFAULT 0 NOT NULL,
    delivered integer DEFAULT 0 NOT NULL,
    read integer DEFAULT 0 NOT NULL,
    replied integer DEFAULT 0 NOT NULL,
    failed integer DEFAULT 0 NOT NULL
);

ALTER TABLE core.campaigns ALTER COLUMN campaign_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.campaigns_campaign_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

ALTER TABLE core.contacts ALTER COLUMN contact_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.contacts_contact_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.cron_jobs (
    job_name text NOT NULL,
    schedule text NOT NULL,
    command text NOT NULL
);

CREATE TABLE core.inbox_messages (
    message_id bigint NOT NULL,
    number_id bigint NOT NULL,
    contact_id bigint NOT NULL,
    direction text NOT NULL,
    wamid text,
    type text NOT NULL,
    body text,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL,
    context_wamid text,
    outbound_id bigint,
    campaign_id bigint,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT inbox_messages_direction_valid CHECK ((direction = ANY (ARRAY['in'::text, 'out'::text])))
);

ALTER TABLE core.inbox_messages ALTER COLUMN message_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.inbox_messages_message_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.llm_number_usage (
    number_id bigint NOT NULL,
    day date NOT NULL,
    calls integer DEFAULT 0 NOT NULL
);

COMMENT ON TABLE core.llm_number_usage IS 'LLM calls per number and UTC day, counted when api.claim_llm_jobs hands a job to a worker; capped by wa_numbers.llm_number_daily_limit.';

CREATE TABLE core.notifications (
    notification_id bigint NOT NULL,
    tenant_id bigint,
    kind text NOT NULL,
    severity text DEFAULT 'warning'::text NOT NULL,
    message text NOT NULL,
    details jsonb DEFAULT '{}'::jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    read_at timestamp with time zone,
    dedupe_key text,
    CONSTRAINT notifications_severity_valid CHECK ((severity = ANY (ARRAY['info'::text, 'warning'::text, 'critical'::text])))
);

ALTER TABLE core.notifications ALTER COLUMN notification_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.notifications_notification_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.send_minutes (
    number_id bigint NOT NULL,
    minute timestamp with time zone NOT NULL,
    accepted integer DEFAULT 0 NOT NULL,
    retried integer DEFAULT 0 NOT NULL,
    failed integer DEFAULT 0 NOT NULL,
    throttled integer DEFAULT 0 NOT NULL
);

CREATE VIEW core.number_health AS
 SELECT n.number_id,
    t.name AS tenant,
    n.phone_number_id,
    n.display_phone_number,
    n.quality_rating,
    n.throughput_mps,
    round((n.rate_mps)::numeric, 1) AS rate_mps,
    round(EXTRACT(epoch FROM (n.send_tat - now())), 3) AS tat_ahead_s,
    n.throttled_at,
    n.paused_reason,
    COALESCE(m.accepted, 0) AS accepted_last_minute,
    COALESCE(m.retried, 0) AS retried_last_minute,
    COALESCE(m.failed, 0) AS failed_last_minute,
    COALESCE(m.throttled, 0) AS throttled_last_minute
   FROM ((core.wa_numbers n
     JOIN core.tenants t ON ((t.tenant_id = n.tenant_id)))
     LEFT JOIN core.send_minutes m ON (((m.number_id = n.number_id) AND (m.minute = (date_trunc('minute'::text, now()) - '00:01:00'::interval)))));

COMMENT ON VIEW core.number_health IS 'One row per WhatsApp number: quality, Meta''s limit, the AIMD pace, how far its GCRA arrival time runs ahead of now, and the last complete minute''s send outcomes. No token or secret.';

CREATE TABLE core.outbound_messages (
    outbound_id bigint NOT NULL,
    number_id bigint NOT NULL,
    campaign_id bigint,
    variant smallint,
    contact_id bigint NOT NULL,
    kind text DEFAULT 'campaign'::text NOT NULL,
    state text DEFAULT 'queued'::text NOT NULL,
    attempts smallint DEFAULT 0 NOT NULL,
    wamid text,
    error_code integer,
    error_category text,
    error_detail text,
    queued_at timestamp with time zone DEFAULT now() NOT NULL,
    claimed_at timestamp with time zone,
    accepted_at timestamp with time zone,
    sent_at timestamp with time zone,
    delivered_at timestamp with time zone,
    read_at timestamp with time zone,
    failed_at timestamp with time zone,
    replied_at timestamp with time zone,
    deferrals smallint DEFAULT 0 NOT NULL,
    unsure_since timestamp with time zone,
    CONSTRAINT outbound_messages_kind_valid CHECK ((kind = ANY (ARRAY['campaign'::text, 'reply'::text, 'bot'::text, 'agent'::text, 'llm'::text, 'receipt'::text]))),
    CONSTRAINT outbound_messages_state_valid CHECK ((state = ANY (ARRAY['queued'::text, 'in_flight'::text, 'accepted'::text, 'sent'::text, 'delivered'::text, 'read'::text, 'failed'::text, 'cancelled'::text])))
);

ALTER TABLE core.outbound_messages ALTER COLUMN outbound_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.outbound_messages_outbound_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.portfolio_reach (
    portfolio_id bigint NOT NULL,
    wa_id text NOT NULL,
    last_at timestamp with time zone NOT NULL
);

CREATE TABLE core.portfolio_reach_minutes (
    portfolio_id bigint NOT NULL,
    minute timestamp with time zone NOT NULL,
    users integer NOT NULL,
    CONSTRAINT portfolio_reach_minutes_users_valid CHECK ((users >= 0))
);

CREATE TABLE core.portfolios (
    portfolio_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    business_id text NOT NULL,
    tier text,
    messaging_limit integer,
    budget_wait_until timestamp with time zone,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    tier_event_at timestamp with time zone,
    CONSTRAINT portfolios_messaging_limit_positive CHECK ((messaging_limit > 0)),
    CONSTRAINT portfolios_tier_valid CHECK ((tier = ANY (ARRAY['TIER_50'::text, 'TIER_250'::text, 'TIER_1K'::text, 'TIER_2K'::text, 'TIER_10K'::text, 'TIER_100K'::text, 'TIER_UNLIMITED'::text])))
);

COMMENT ON TABLE core.portfolios IS 'Business portfolios: the WABAs and numbers that share one messaging limit (unique users per moving 24 hours).';

COMMENT ON COLUMN core.portfolios.tier_event_at IS 'When the newest webhook that set the tier happened (phone_number_quality_update, business_capability_update); an older one leaves the tier alone.';

ALTER TABLE core.portfolios ALTER COLUMN portfolio_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.portfolios_portfolio_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE VIEW core.queue_depths AS
 SELECT q.queue_name,
        CASE
            WHEN (o.campaign_id IS NOT NULL) THEN 'campaign'::character varying
            WHEN (o.number_id IS NOT NULL) THEN 'reply'::character varying
            ELSE q.queue_name
        END AS kind,
    c.campaign_id,
    c.status AS campaign_status,
    COALESCE(c.number_id, n.number_id) AS number_id,
    m.queue_length,
    m.queue_visible_length,
    m.oldest_msg_age_sec,
    m.total_messages
   FROM ((((pgmq.meta q
     CROSS JOIN LATERAL ( SELECT core.queue_campaign_id((q.queue_name)::text) AS campaign_id,
            core.queue_number_id((q.queue_name)::text) AS number_id) o)
     LEFT JOIN core.campaigns c ON ((c.campaign_id = o.campaign_id)))
     LEFT JOIN core.wa_numbers n ON ((n.number_id = o.number_id)))
     CROSS JOIN LATERAL pgmq.metrics((q.queue_name)::text) m(queue_name, queue_length, newest_msg_age_sec, oldest_msg_age_sec, total_messages, scrape_time, queue_visible_length, default_partition_length));

COMMENT ON VIEW core.queue_depths IS 'Every pgmq queue with its kind (campaign, reply, webhooks, ...), campaign or number, messages waiting (all and visible now), the oldest message''s age in seconds and messages ever sent.';

CREATE TABLE core.receiver_beats (
    singleton boolean DEFAULT true NOT NULL,
    beat_at timestamp with time zone NOT NULL,
    CONSTRAINT receiver_beats_one_row CHECK (singleton)
);

CREATE TABLE core.receiver_outages (
    started_at timestamp with time zone NOT NULL,
    ended_at timestamp with time zone NOT NULL
);

CREATE TABLE core.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    sha256 text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE core.settings (
    singleton boolean DEFAULT true NOT NULL,
    claim_timeout_s integer DEFAULT 30 NOT NULL,
    max_attempts integer DEFAULT 6 NOT NULL,
    retry_backoff_s integer[] DEFAULT '{5,10,20,40,60,120}'::integer[] NOT NULL,
    pace_horizon_ms integer DEFAULT 250 NOT NULL,
    rate_headroom double precision DEFAULT 0.97 NOT NULL,
    graph_api_version text DEFAULT 'v21.0'::text NOT NULL,
    signer_salt text DEFAULT replace(((gen_random_uuid())::text || (gen_random_uuid())::text), '-'::text, ''::text) NOT NULL,
    webhook_max_attempts integer DEFAULT 5 NOT NULL,
    webhook_claim_s integer DEFAULT 30 NOT NULL,
    api_rate_limit_per_minute integer DEFAULT 600 NOT NULL,
    bot_match_prefix_chars integer DEFAULT 1024 NOT NULL,
    throttle_hold_ms integer DEFAULT 250 NOT NULL,
    capped_retry_days smallint DEFAULT 3 NOT NULL,
    receiver_beat_s integer DEFAULT 5 NOT NULL,
    status_grace_s integer DEFAULT 60 NOT NULL,
    unsure_resend_after_s integer DEFAULT 604800 NOT NULL,
    CONSTRAINT settings_api_rate_limit_valid CHECK (((api_rate_limit_per_minute >= 1) AND (api_rate_limit_per_minute <= 1000000))),
    CONSTRAINT settings_bot_match_prefix_valid CHECK (((bot_match_prefix_chars >= 500) AND (bot_match_prefix_chars <= 100000))),
    CONSTRAINT settings_capped_retry_days_valid CHECK (((capped_retry_days >= 0) AND (capped_retry_days <= 30))),
    CONSTRAINT settings_claim_timeout_valid CHECK (((claim_timeout_s >= 5) AND (claim_timeout_s <= 3600))),
    CONSTRAINT settings_max_attempts_valid CHECK (((max_attempts >= 1) AND (max_attempts <= 50))),
    CONSTRAINT settings_pace_horizon_valid CHECK (((pace_horizon_ms >= 10) AND (pace_horizon_ms <= 5000))),
    CONSTRAINT settings_rate_headroom_valid CHECK (((rate_headroom > (0)::double precision) AND (rate_headroom <= (1)::double precision))),
    CONSTRAINT settings_receiver_beat_s_valid CHECK (((receiver_beat_s >= 1) AND (receiver_beat_s <= 300))),
    CONSTRAINT settings_singleton CHECK (singleton),
    CONSTRAINT settings_status_grace_s_valid CHECK (((status_grace_s >= 1) AND (status_grace_s <= 86400))),
    CONSTRAINT settings_throttle_hold_valid CHECK (((throttle_hold_ms >= 0) AND (throttle_hold_ms <= 10000))),
    CONSTRAINT settings_unsure_resend_after_s_valid CHECK ((unsure_resend_after_s >= 60)),
    CONSTRAINT settings_webhook_claim_s_valid CHECK (((webhook_claim_s >= 1) AND (webhook_claim_s <= 3600))),
    CONSTRAINT settings_webhook_max_attempts_valid CHECK (((webhook_max_attempts >= 1) AND (webhook_max_attempts <= 100)))
);

COMMENT ON COLUMN core.settings.bot_match_prefix_chars IS 'Bot rules see at most this many leading characters of the normalised inbound text.';

COMMENT ON COLUMN core.settings.throttle_hold_ms IS 'After a throughput error (core.meta_error_codes.throttles) a number sends nothing for this long; the worker hands back what it holds for the number that was due before the hold ends.';

COMMENT ON COLUMN core.settings.capped_retry_days IS 'How many times a message Meta withheld under the per-user marketing cap (131049) is tried again, a day apart, before it fails for good.';

COMMENT ON COLUMN core.settings.receiver_beat_s IS 'How often the webhook receiver beats (api.receiver_heartbeat); a gap of three beats is an outage.';

COMMENT ON COLUMN core.settings.status_grace_s IS 'How long after a send its first status webhook normally arrives: a send whose answer was lost is not resent sooner.';

COMMENT ON COLUMN core.settings.unsure_resend_after_s IS 'After this long a send whose answer was lost is resent even if the webhook stream never caught up past it (Meta retries webhooks for up to 7 days).';

CREATE TABLE core.status_events (
    wamid text NOT NULL,
    status text NOT NULL,
    outbound_id bigint,
    occurred_at timestamp with time zone NOT NULL,
    received_at timestamp with time zone DEFAULT now() NOT NULL,
    recipient_id text,
    error_code integer,
    pricing_category text,
    conversation_id text,
    number_id bigint DEFAULT 0 NOT NULL,
    CONSTRAINT status_events_status_valid CHECK ((status = ANY (ARRAY['sent'::text, 'delivered'::text, 'read'::text, 'failed'::text, 'deleted'::text, 'warning'::text, 'played'::text])))
);

CREATE TABLE core.status_watermarks (
    number_id bigint NOT NULL,
    sent_through timestamp with time zone NOT NULL
);

ALTER TABLE core.templates ALTER COLUMN template_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.templates_template_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

ALTER TABLE core.tenants ALTER COLUMN tenant_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.tenants_tenant_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

ALTER TABLE core.wa_numbers ALTER COLUMN number_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.wa_numbers_number_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.webhook_raw (
    raw_id bigint NOT NULL,
    received_at timestamp with time zone DEFAULT now() NOT NULL,
    signer text,
    reason text NOT NULL,
    body bytea NOT NULL,
    queued_msg_id bigint
);

ALTER TABLE core.webhook_raw ALTER COLUMN raw_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.webhook_raw_raw_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

ALTER TABLE ONLY core.api_keys
    ADD CONSTRAINT api_keys_key_hash_unique UNIQUE (key_hash);

ALTER TABLE ONLY core.api_keys
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (api_key_id);

ALTER TABLE ONLY core.bot_rules
    ADD CONSTRAINT bot_rules_pkey PRIMARY KEY (rule_id);

ALTER TABLE ONLY core.campaign_errors
    ADD CONSTRAINT campaign_errors_pkey PRIMARY KEY (campaign_id, error_code);

ALTER TABLE ONLY core.campaign_minutes
    ADD CONSTRAINT campaign_minutes_pkey PRIMARY KEY (campaign_id, minute);

ALTER TABLE ONLY core.campaign_templates
    ADD CONSTRAINT campaign_templates_pkey PRIMARY KEY (campaign_id, variant);

ALTER TABLE ONLY core.campaigns
    ADD CONSTRAINT campaigns_pkey PRIMARY KEY (campaign_id);

ALTER TABLE ONLY core.contacts
    ADD CONSTRAINT contacts_pkey PRIMARY KEY (contact_id);

ALTER TABLE ONLY core.conversations
    ADD CONSTRAINT conversations_pkey PRIMARY KEY (number_id, contact_id);

ALTER TABLE ONLY core.cron_jobs
    ADD CONSTRAINT cron_jobs_pkey PRIMARY KEY (job_name);

ALTER TABLE ONLY core.error_codes
    ADD CONSTRAINT error_codes_name_key UNIQUE (name);

ALTER TABLE ONLY core.error_codes
    ADD CONSTRAINT error_codes_pkey PRIMARY KEY (sqlstate);

ALTER TABLE ONLY core.inbox_messages
    ADD CONSTRAINT inbox_messages_pkey PRIMARY KEY (message_id);

ALTER TABLE ONLY core.llm_number_usage
    ADD CONSTRAINT llm_number_usage_pkey PRIMARY KEY (number_id, day);

ALTER TABLE ONLY core.meta_error_codes
    ADD CONSTRAINT meta_error_codes_pkey PRIMARY KEY (code);

ALTER TABLE ONLY core.notifications
    ADD CONSTRAINT notifications_pkey PRIMARY KEY (notification_id);

ALTER TABLE ONLY core.outbound_messages
    ADD CONSTRAINT outbound_messages_pkey PRIMARY KEY (outbound_id);

ALTER TABLE ONLY core.portfolio_reach_minutes
    ADD CONSTRAINT portfolio_reach_minutes_pkey PRIMARY KEY (portfolio_id, minute);

ALTER TABLE ONLY core.portfolio_reach
    ADD CONSTRAINT portfolio_reach_pkey PRIMARY KEY (portfolio_id, wa_id);

ALTER TABLE ONLY core.portfolios
    ADD CONSTRAINT portfolios_pkey PRIMARY KEY (portfolio_id);

ALTER TABLE ONLY core.portfolios
    ADD CONSTRAINT portfolios_tenant_business_unique UNIQUE (tenant_id, business_id);

ALTER TABLE ONLY core.receiver_beats
    ADD CONSTRAINT receiver_beats_pkey PRIMARY KEY (singleton);

ALTER TABLE ONLY core.receiver_outages
    ADD CONSTRAINT receiver_outages_pkey PRIMARY KEY (started_at);

ALTER TABLE ONLY core.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);

ALTER TABLE ONLY core.send_minutes
    ADD CONSTRAINT send_minutes_pkey PRIMARY KEY (number_id, minute);

ALTER TABLE ONLY core.settings
    ADD CONSTRAINT settings_pkey PRIMARY KEY (singleton);

ALTER TABLE ONLY core.status_events
    ADD CONSTRAINT status_events_pkey PRIMARY KEY (wamid, status, number_id);

ALTER TABLE ONLY core.status_watermarks
    ADD CONSTRAINT status_watermarks_pkey PRIMARY KEY (number_id);

ALTER TABLE ONLY core.templates
    ADD CONSTRAINT templates_pkey PRIMARY KEY (template_id);

ALTER TABLE ONLY core.templates
    ADD CONSTRAINT templates_waba_name_language_unique UNIQUE (waba_id, name, language);

ALTER TABLE ONLY core.tenants
    ADD CONSTRAINT tenants_name_unique UNIQUE (name);

ALTER TABLE ONLY core.tenants
    ADD CONSTRAINT tenants_pkey PRIMARY KEY (tenant_id);

ALTER TABLE ONLY core.wa_numbers
    ADD CONSTRAINT wa_numbers_phone_number_id_unique UNIQUE (phone_number_id);

ALTER TABLE ONLY core.wa_numbers
    ADD CONSTRAINT wa_numbers_pkey PRIMARY KEY (number_id);

ALTER TABLE ONLY core.webhook_raw
    ADD CONSTRAINT webhook_raw_pkey PRIMARY KEY (raw_id);

CREATE INDEX api_keys_tenant_id ON core.api_keys USING btree (tenant_id);

CREATE INDEX bot_rules_exact ON core.bot_rules USING btree (number_id, match_text, priority, rule_id) WHERE (enabled AND (kind = 'exact'::text));

CREATE INDEX bot_rules_fallbacks ON core.bot_rules USING btree (number_id, kind, priority, rule_id) WHERE (enabled AND (kind = ANY (ARRAY['welcome'::text, 'default'::text])));

CREATE INDEX bot_rules_like ON core.bot_rules USING btree (number_id, priority, rule_id) INCLUDE (like_pattern) WHERE (enabled AND (kind = ANY (ARRAY['starts_with'::text, 'contains'::text])));

CREATE INDEX bot_rules_number_priority ON core.bot_rules USING btree (number_id, priority, rule_id);

CREATE INDEX bot_rules_regex ON core.bot_rules USING btree (number_id, priority, rule_id) INCLUDE (match_text) WHERE (enabled AND (kind = 'regex'::text));

CREATE INDEX campaign_templates_template_id ON core.campaign_templates USING btree (template_id);

CREATE INDEX campaigns_number_status ON core.campaigns USING btree (number_id, status);

CREATE INDEX campaigns_scheduled_due ON core.campaigns USING btree (scheduled_at) WHERE (status = 'scheduled'::text);

CREATE INDEX campaigns_tenant_campaign ON core.campaigns USING btree (tenant_id, campaign_id);

CREATE INDEX campaigns_tenant_created ON core.campaigns USING btree (tenant_id, created_at DESC);

CREATE INDEX contacts_marketing_stopped ON core.contacts USING btree (tenant_id) WHERE (marketing_stopped_at IS NOT NULL);

CREATE INDEX contacts_opted_out ON core.contacts USING btree (tenant_id, opted_out_at) WHERE opted_out;

CREATE UNIQUE INDEX contacts_tenant_user_id ON core.contacts USING btree (tenant_id, user_id) WHERE (user_id IS NOT NULL);

CREATE UNIQUE INDEX contacts_tenant_wa_id ON core.contacts USING btree (tenant_id, wa_id);

CREATE INDEX conversations_contact ON core.conversations USING btree (contact_id);

CREATE INDEX conversations_number_last ON core.conversations USING btree (number_id, last_message_at DESC, contact_id DESC);

CREATE INDEX inbox_messages_contact ON core.inbox_messages USING btree (contact_id);

CREATE INDEX inbox_messages_conversation ON core.inbox_messages USING btree (number_id, contact_id, created_at DESC, message_id DESC);

CREATE UNIQUE INDEX inbox_messages_wamid ON core.inbox_messages USING btree (wamid) WHERE (wamid IS NOT NULL);

CREATE INDEX notifications_tenant_created ON core.notifications USING btree (tenant_id, created_at DESC);

CREATE UNIQUE INDEX notifications_tenant_dedupe_key ON core.notifications USING btree (tenant_id, dedupe_key) NULLS NOT DISTINCT WHERE (dedupe_key IS NOT NULL);

CREATE INDEX notifications_tenant_notification ON core.notifications USING btree (tenant_id, notification_id);

CREATE INDEX outbound_messages_campaign_state ON core.outbound_messages USING btree (campaign_id, state);

CREATE INDEX outbound_messages_contact ON core.outbound_messages USING btree (contact_id, outbound_id);

CREATE UNIQUE INDEX outbound_messages_wamid ON core.outbound_messages USING btree (wamid) WHERE (wamid IS NOT NULL);

CREATE INDEX status_events_received ON core.status_events USING brin (received_at);

CREATE INDEX status_events_unmatched ON core.status_events USING btree (wamid) WHERE (outbound_id IS NULL);

CREATE INDEX templates_meta_template_id ON core.templates USING btree (meta_template_id) WHERE (meta_template_id IS NOT NULL);

CREATE INDEX templates_tenant_id ON core.templates USING btree (tenant_id);

CREATE INDEX wa_numbers_portfolio ON core.wa_numbers USING btree (portfolio_id);

CREATE INDEX wa_numbers_tenant_id ON core.wa_numbers USING btree (tenant_id);

ALTER TABLE ONLY core.api_keys
    ADD CONSTRAINT api_keys_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.bot_rules
    ADD CONSTRAINT bot_rules_number_id_fkey FOREIGN KEY (number_id) REFERENCES core.wa_numbers(number_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.campaign_errors
    ADD CONSTRAINT campaign_errors_campaign_id_fkey FOREIGN KEY (campaign_id) REFERENCES core.campaigns(campaign_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.campaign_minutes
    ADD CONSTRAINT campaign_minutes_campaign_id_fkey FOREIGN KEY (campaign_id) REFERENCES core.campaigns(campaign_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.campaign_templates
    ADD CONSTRAINT campaign_templates_campaign_id_fkey FOREIGN KEY (campaign_id) REFERENCES core.campaigns(campaign_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.campaign_templates
    ADD CONSTRAINT campaign_templates_template_id_fkey FOREIGN KEY (template_id) REFERENCES core.templates(template_id);

ALTER TABLE ONLY core.campaigns
    ADD CONSTRAINT campaigns_number_id_fkey FOREIGN KEY (number_id) REFERENCES core.wa_numbers(number_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.campaigns
    ADD CONSTRAINT campaigns_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.contacts
    ADD CONSTRAINT contacts_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.conversations
    ADD CONSTRAINT conversations_contact_id_fkey FOREIGN KEY (contact_id) REFERENCES core.contacts(contact_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.conversations
    ADD CONSTRAINT conversations_number_id_fkey FOREIGN KEY (number_id) REFERENCES core.wa_numbers(number_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.inbox_messages
    ADD CONSTRAINT inbox_messages_contact_id_fkey FOREIGN KEY (contact_id) REFERENCES core.contacts(contact_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.inbox_messages
    ADD CONSTRAINT inbox_messages_number_id_fkey FOREIGN KEY (number_id) REFERENCES core.wa_numbers(number_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.llm_number_usage
    ADD CONSTRAINT llm_number_usage_number_id_fkey FOREIGN KEY (number_id) REFERENCES core.wa_numbers(number_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.notifications
    ADD CONSTRAINT notifications_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.outbound_messages
    ADD CONSTRAINT outbound_messages_campaign_id_fkey FOREIGN KEY (campaign_id) REFERENCES core.campaigns(campaign_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.portfolio_reach_minutes
    ADD CONSTRAINT portfolio_reach_minutes_portfolio_id_fkey FOREIGN KEY (portfolio_id) REFERENCES core.portfolios(portfolio_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.portfolio_reach
    ADD CONSTRAINT portfolio_reach_portfolio_id_fkey FOREIGN KEY (portfolio_id) REFERENCES core.portfolios(portfolio_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.portfolios
    ADD CONSTRAINT portfolios_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.send_minutes
    ADD CONSTRAINT send_minutes_number_id_fkey FOREIGN KEY (number_id) REFERENCES core.wa_numbers(number_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.status_watermarks
    ADD CONSTRAINT status_watermarks_number_id_fkey FOREIGN KEY (number_id) REFERENCES core.wa_numbers(number_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.templates
    ADD CONSTRAINT templates_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.wa_numbers
    ADD CONSTRAINT wa_numbers_portfolio_id_fkey FOREIGN KEY (portfolio_id) REFERENCES core.portfolios(portfolio_id);

ALTER TABLE ONLY core.wa_numbers
    ADD CONSTRAINT wa_numbers_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

