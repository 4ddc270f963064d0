
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

CREATE TYPE api.canned_reply AS (
	canned_reply_id bigint,
	title text,
	body text,
	created_at timestamp with time zone
);

CREATE TYPE api.claimed_event AS (
	msg_id bigint,
	endpoint_id bigint,
	event_id bigint,
	event_type text,
	attempt integer,
	url text,
	secret text,
	body text
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

CREATE TYPE api.contact_erased AS (
	contact_id bigint,
	outbound_messages integer,
	withdrawn integer,
	inbox_messages integer,
	conversations integer,
	status_events integer,
	events integer
);

CREATE TYPE api.contact_field AS (
	name text,
	type text,
	created_at timestamp with time zone
);

CREATE TYPE api.contact_record AS (
	contact_id bigint,
	wa_id text,
	user_id text,
	name text,
	profile_name text,
	attributes jsonb,
	tags text[],
	opted_out boolean,
	opted_out_at timestamp with time zone,
	last_inbound_at timestamp with time zone,
	created_at timestamp with time zone,
	updated_at timestamp with time zone
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

CREATE TYPE api.contacts_mapped_import AS (
	staged integer,
	inserted integer,
	updated integer,
	unchanged integer,
	skipped_invalid integer,
	duplicates_removed integer,
	invalid_rows jsonb,
	skipped_values jsonb,
	tagged integer
);

CREATE TYPE api.conversation_note AS (
	note_id bigint,
	number_id bigint,
	contact_id bigint,
	author text,
	body text,
	created_at timestamp with time zone
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

CREATE TYPE api.dashboard_actor AS (
	tenant_id bigint,
	user_id bigint,
	email text,
	role text
);

CREATE TYPE api.dashboard_invitation AS (
	invitation_id bigint,
	tenant_id bigint,
	email text,
	role text,
	created_at timestamp with time zone,
	expires_at timestamp with time zone,
	accepted_at timestamp with time zone,
	revoked_at timestamp with time zone
);

CREATE TYPE api.dashboard_login_user AS (
	user_id bigint,
	tenant_id bigint,
	password_hash text
);

CREATE TYPE api.dashboard_session AS (
	session_id bigint,
	tenant_id bigint,
	tenant_name text,
	user_id bigint,
	email text,
	role text,
	actions text[],
	expires_at timestamp with time zone
);

CREATE TYPE api.dashboard_user AS (
	user_id bigint,
	tenant_id bigint,
	email text,
	role text,
	created_at timestamp with time zone,
	disabled_at timestamp with time zone,
	last_login_at timestamp with time zone,
	locked_until timestamp with time zone
);

CREATE TYPE api.event_endpoint AS (
	endpoint_id bigint,
	url text,
	event_types text[],
	description text,
	created_at timestamp with time zone,
	failures integer,
	retry_at timestamp with time zone,
	pending bigint
);

CREATE TYPE api.event_endpoint_created AS (
	endpoint_id bigint,
	url text,
	event_types text[],
	description text,
	created_at timestamp with time zone,
	secret text
);

CREATE TYPE api.event_policy AS (
	timeout_ms integer,
	lane_concurrency integer,
	allow_private_urls boolean
);

CREATE TYPE api.events_reported AS (
	delivered integer,
	retried integer,
	dead integer
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
	campaign_id bigint,
	media jsonb
);

CREATE TYPE api.key_result AS (
	item integer,
	tenant_id bigint,
	sqlstate text,
	message text,
	detail text,
	hint text
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

CREATE TYPE api.media_content AS (
	media_id bigint,
	mime_type text,
	size_bytes bigint,
	filename text,
	storage_key text
);

CREATE TYPE api.media_download AS (
	media_id bigint,
	tenant_id bigint,
	meta_media_id text,
	media_type text,
	mime_type text,
	sha256 text,
	attempts integer,
	phone_number_id text,
	access_token text,
	graph_api_version text
);

CREATE TYPE api.media_file AS (
	media_id bigint,
	number_id bigint,
	direction text,
	media_type text,
	mime_type text,
	size_bytes bigint,
	sha256 text,
	filename text,
	caption text,
	state text,
	meta_media_id text,
	message_id bigint,
	attempts integer,
	last_error text,
	created_at timestamp with time zone,
	expires_at timestamp with time zone,
	stored_at timestamp with time zone,
	reused boolean
);

CREATE TYPE api.media_upload_target AS (
	tenant_id bigint,
	media_type text,
	reuse api.media_file,
	phone_number_id text,
	access_token text,
	graph_api_version text
);

CREATE TYPE api.message_sent AS (
	outbound_id bigint,
	number_id bigint,
	contact_id bigint,
	recipient text,
	state text,
	replayed boolean,
	window_closes_at timestamp with time zone,
	queued_at timestamp with time zone
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

CREATE TYPE api.outbound_event AS (
	event_id bigint,
	event_type text,
	created_at timestamp with time zone,
	endpoint_id bigint,
	status text,
	attempts integer,
	next_attempt_at timestamp with time zone,
	last_attempt_at timestamp with time zone,
	last_http_status smallint,
	last_error text,
	delivered_at timestamp with time zone,
	dead_at timestamp with time zone,
	replays integer,
	data jsonb
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

CREATE TYPE api.reply_template AS (
	template_id bigint,
	name text,
	language text,
	parameter_format text,
	params text[],
	body text
);

CREATE TYPE api.report_result AS (
	accepted integer,
	retried integer,
	failed integer,
	paused integer,
	ignored integer
);

CREATE TYPE api.segment AS (
	segment_id bigint,
	name text,
	filter jsonb,
	created_at timestamp with time zone,
	updated_at timestamp with time zone
);

CREATE TYPE api.send_policy AS (
	throttle_hold_ms integer,
	throttle_codes integer[],
	pace_horizon_ms integer,
	claim_timeout_s integer
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

CREATE TYPE api.send_result AS (
	item integer,
	sent api.message_sent,
	sqlstate text,
	message text,
	detail text,
	hint text
);

CREATE TYPE api.send_window AS (
	campaign_id bigint,
	send_window_start time without time zone,
	send_window_end time without time zone
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
	updated_at timestamp with time zone,
	parameter_format text,
	sub_category text,
	quality_score text,
	rejected_reason text,
	previous_category text
);

CREATE TYPE api.template_deletion AS (
	template_id bigint,
	waba_id text,
	name text,
	meta_template_id text,
	submit boolean,
	campaign_ids bigint[],
	access_token text,
	graph_api_version text
);

CREATE TYPE api.template_parameter AS (
	component text,
	index integer,
	parameter_name text,
	kind text,
	required boolean,
	example text,
	mapping text
);

CREATE TYPE api.template_problem AS (
	component text,
	problem text,
	fix text
);

CREATE TYPE api.template_submission AS (
	template_id bigint,
	waba_id text,
	status text,
	submit boolean,
	request jsonb,
	access_token text,
	graph_api_version text
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

CREATE TYPE core.compiled_segment AS (
	sql text,
	texts text[],
	numbers numeric[],
	times timestamp with time zone[],
	ids bigint[]
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

CREATE FUNCTION api.accept_invitation(p_token_hash bytea, p_password_hash text, p_now timestamp with time zone DEFAULT now()) RETURNS api.dashboard_user
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_invitation core.dashboard_invitations;
    v_user api.dashboard_user;
BEGIN
    PERFORM core.dashboard_check(NULL, coalesce(p_password_hash, ''), NULL);
    -- Single use: the one statement that claims the invitation is guarded by its state.
    UPDATE core.dashboard_invitations SET accepted_at = p_now
    WHERE token_hash = p_token_hash AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > p_now
    RETURNING * INTO v_invitation;
    IF v_invitation.invitation_id IS NULL THEN
        RAISE EXCEPTION 'the invitation is unknown, used or expired' USING ERRCODE = 'PW260',
            HINT = 'Ask an admin of the workspace for a new invitation.';
    END IF;
    v_user := api.create_user(v_invitation.tenant_id, v_invitation.email, v_invitation.role, p_password_hash, p_now);
    UPDATE core.dashboard_invitations SET user_id = v_user.user_id WHERE invitation_id = v_invitation.invitation_id;
    RETURN v_user;
END
$$;

COMMENT ON FUNCTION api.accept_invitation(p_token_hash bytea, p_password_hash text, p_now timestamp with time zone) IS 'Accepts an invitation once: creates its user with the argon2 password hash given and marks the invitation used. Returns the user. Raises PW260 for an unknown, used, revoked or expired invitation, PW100 for a hash that is not argon2, PW302 when the e-mail became a user meanwhile.';

CREATE FUNCTION api.add_conversation_note(p_tenant_id bigint, p_user_id bigint, p_number_id bigint, p_contact_id bigint, p_body text, p_now timestamp with time zone DEFAULT now()) RETURNS api.conversation_note
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_user core.dashboard_users := core.inbox_user(p_tenant_id, p_user_id);
    v_note api.conversation_note;
BEGIN
    IF length(btrim(coalesce(p_body, ''))) NOT BETWEEN 1 AND core.text_body_max() THEN
        RAISE EXCEPTION 'note must be 1 to % characters, not %', core.text_body_max(), length(btrim(coalesce(p_body, '')))
            USING ERRCODE = 'PW165', HINT = 'Write the note (it stays inside the dashboard; the contact never sees it).';
    END IF;
    PERFORM core.conversation_for(p_tenant_id, p_number_id, p_contact_id);
    INSERT INTO core.conversation_notes (number_id, contact_id, user_id, author, body, created_at)
    VALUES (p_number_id, p_contact_id, v_user.user_id, v_user.email, btrim(p_body), p_now)
    RETURNING note_id, number_id, contact_id, author, body, created_at INTO v_note;
    RETURN v_note;
END
$$;

COMMENT ON FUNCTION api.add_conversation_note(p_tenant_id bigint, p_user_id bigint, p_number_id bigint, p_contact_id bigint, p_body text, p_now timestamp with time zone) IS 'Adds an internal note by a dashboard user to a conversation: shown in the thread, never sent to WhatsApp. Returns the note. Raises PW165 for an empty note or one over 4,096 characters, PW260 for a user not the tenant''s, PW202/PW209 for a number or conversation not the tenant''s.';

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

CREATE FUNCTION api.assign_conversation_to_user(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint, p_user_id bigint) RETURNS api.conversation_summary
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_email text;
BEGIN
    SELECT u.email INTO v_email FROM core.dashboard_users u
    WHERE u.user_id = p_user_id AND u.tenant_id = p_tenant_id AND u.disabled_at IS NULL
      AND EXISTS (SELECT 1 FROM core.dashboard_role_actions a WHERE a.role = u.role AND a.action = 'inbox.reply');
    IF v_email IS NULL THEN
        RAISE EXCEPTION 'user % is not an enabled user of this tenant who may answer conversations', p_user_id
            USING ERRCODE = 'PW276', HINT = 'Pick an agent or an admin from api.inbox_assignees().';
    END IF;
    RETURN api.assign_conversation(p_tenant_id, p_number_id, p_contact_id, v_email);
END
$$;

COMMENT ON FUNCTION api.assign_conversation_to_user(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint, p_user_id bigint) IS 'Assigns a conversation to one of the tenant''s dashboard users who may answer (an agent or an admin), as api.assign_conversation with their e-mail. Returns the conversation. Raises PW276 for a user not the tenant''s, disabled, or without inbox.reply, PW202/PW209 for a number or conversation not the tenant''s.';

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

CREATE FUNCTION api.authenticate_many(p_key_hashes bytea[], p_scope text DEFAULT 'admin'::text, p_now timestamp with time zone DEFAULT now()) RETURNS SETOF api.key_result
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_key record;
    v_tenant_id bigint;
    v_key_id bigint;
    v_taken integer;
    v_counted boolean := false;
    v_n integer;
    v_state text;
    v_text text;
    v_detail text;
    v_hint text;
BEGIN
    IF core.scope_rank(p_scope) IS NULL THEN
        RAISE EXCEPTION 'scope % is not one of read, send, admin', p_scope USING ERRCODE = 'PW100',
            HINT = 'The route passes read, send or admin.';
    END IF;
    FOR v_key IN
        SELECT k.key_hash, array_agg(k.n ORDER BY k.n) AS items
        FROM unnest(p_key_hashes) WITH ORDINALITY k(key_hash, n)
        GROUP BY k.key_hash ORDER BY k.key_hash
    LOOP
        v_tenant_id := NULL;
        v_taken := 0;
        IF v_key.key_hash IS NOT NULL THEN
            SELECT k.api_key_id, (SELECT count(*)::integer FROM generate_series(1, cardinality(v_key.items)) g
                                  WHERE greatest(k.rate_tat, p_now) + g * make_interval(secs => 60.0 / coalesce(
                                            k.rate_limit_per_minute, s.api_rate_limit_per_minute))
                                        <= p_now + interval '1 minute')
            INTO v_key_id, v_taken
            FROM core.api_keys k, core.settings s
            WHERE k.key_hash = v_key.key_hash AND k.revoked_at IS NULL
              AND (k.expires_at IS NULL OR k.expires_at > p_now)
              AND core.scope_rank(k.scope) >= core.scope_rank(p_scope)
            FOR UPDATE OF k;
            IF v_taken > 0 THEN
                UPDATE core.api_keys k
                SET rate_tat = greatest(k.rate_tat, p_now)
                               + v_taken * make_interval(secs => 60.0 / coalesce(k.rate_limit_per_minute, s.api_rate_limit_per_minute)),
                    last_used_at = CASE WHEN k.last_used_at > p_now - interval '1 minute' THEN k.last_used_at ELSE p_now END
                FROM core.settings s
                WHERE k.api_key_id = v_key_id
                RETURNING k.tenant_id INTO v_tenant_id;
                v_counted := true;
            ELSE
                v_taken := 0;
            END IF;
        END IF;
        FOR v_n IN 1 .. cardinality(v_key.items) LOOP
            IF v_n <= v_taken THEN
                RETURN NEXT ROW(v_key.items[v_n], v_tenant_id, NULL, NULL, NULL, NULL)::api.key_result;
                CONTINUE;
            END IF;
            BEGIN
                RETURN NEXT ROW(v_key.items[v_n], api.authenticate(v_key.key_hash, p_scope, p_now),
                                NULL, NULL, NULL, NULL)::api.key_result;
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_text = MESSAGE_TEXT,
                                        v_detail = PG_EXCEPTION_DETAIL, v_hint = PG_EXCEPTION_HINT;
                RETURN NEXT ROW(v_key.items[v_n], NULL, v_state, v_text, nullif(v_detail, ''), nullif(v_hint, ''))::api.key_result;
            END;
        END LOOP;
    END LOOP;
    IF v_counted AND p_scope = 'read' THEN
        PERFORM set_config('synchronous_commit', 'off', true);     -- as api.authenticate does
    END IF;
END
$$;

COMMENT ON FUNCTION api.authenticate_many(p_key_hashes bytea[], p_scope text, p_now timestamp with time zone) IS 'api.authenticate for each of a batch of requests (POST /v1/messages gathers them): one api.key_result per key hash (its item, from 1; in key order), with the tenant, or the error (sqlstate, message, detail, hint) that request alone gets: PW401 for an unknown, revoked or expired key, PW410 when the key lacks p_scope, PW429 (DETAIL {"retry_after_s": n}) over its rate limit. Each request is counted, so a request whose send then fails still counts.';

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

CREATE FUNCTION api.campaign_failures(p_tenant_id bigint, p_campaign_id bigint) RETURNS TABLE(error_code integer, title text, category text, count integer, advice text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM core.campaigns c WHERE c.campaign_id = p_campaign_id AND c.tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'campaign % not found', p_campaign_id
            USING ERRCODE = 'PW201', HINT = 'List the tenant''s campaigns with api.campaigns().';
    END IF;
    RETURN QUERY
    SELECT e.error_code, coalesce(m.title, 'Unknown error code'), e.category, e.count,
           coalesce(m.advice, CASE e.category
               WHEN 'rate_limit' THEN 'A rate limit: pgwa slows down and retries; nothing to do unless it repeats.'
               WHEN 'auth' THEN 'The number''s credentials or permissions fail: fix them in Meta Business Manager, register the number again, then resume.'
               WHEN 'template' THEN 'The template or its parameters were refused: sync the templates, check the mapping, then resume.'
               WHEN 'payment' THEN 'A payment problem: fix the WhatsApp Business Account''s payment method, then resume.'
               WHEN 'recipient' THEN 'The recipient cannot get this message: remove these numbers from the list.'
               WHEN 'policy' THEN 'A WhatsApp policy blocked the message: check Account Quality in WhatsApp Manager.'
               WHEN 'transient' THEN 'A temporary failure at Meta: the messages were retried; resume later if the campaign paused.'
               WHEN 'request' THEN 'Meta refused the request: check the mapped values (links, lengths, formats).'
               ELSE 'Look the code up in Meta''s error reference.' END)
    FROM core.campaign_errors e
    LEFT JOIN core.meta_error_codes m ON m.code = e.error_code
    WHERE e.campaign_id = p_campaign_id AND e.count <> 0
    ORDER BY e.count DESC, e.error_code;
END
$$;

COMMENT ON FUNCTION api.campaign_failures(p_tenant_id bigint, p_campaign_id bigint) IS 'A campaign''s failed messages grouped by Meta error code, most first: the code, Meta''s title, the category, how many messages, and an advice (what it means and what to do: core.meta_error_codes.advice, else the category''s). Raises PW201 when the tenant has no such campaign.';

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

CREATE FUNCTION api.canned_replies(p_tenant_id bigint) RETURNS SETOF api.canned_reply
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    RETURN QUERY
    SELECT r.canned_reply_id, r.title, r.body, r.created_at FROM core.canned_replies r
    WHERE r.tenant_id = p_tenant_id ORDER BY r.title;
END
$$;

COMMENT ON FUNCTION api.canned_replies(p_tenant_id bigint) IS 'The tenant''s canned replies by title: saved answers an agent picks to fill the reply box.';

CREATE FUNCTION api.check_template_definition(p_definition jsonb) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_first api.template_problem;
    v_all text;
BEGIN
    SELECT string_agg(p.component || ': ' || p.problem, '; ') INTO v_all
    FROM api.template_definition_problems(p_definition) p;
    IF v_all IS NOT NULL THEN
        SELECT * INTO v_first FROM api.template_definition_problems(p_definition) LIMIT 1;
        RAISE EXCEPTION 'template %: %: %', coalesce(p_definition->>'name', '?'), v_first.component, v_first.problem
            USING ERRCODE = 'PW130', HINT = v_first.fix, DETAIL = v_all;
    END IF;
    -- As Meta expects it: uppercase vocabulary, the parameter format always given.
    RETURN jsonb_build_object(
        'name', p_definition->>'name', 'language', p_definition->>'language',
        'category', upper(p_definition->>'category'),
        'parameter_format', upper(coalesce(p_definition->>'parameter_format', 'POSITIONAL')),
        'components', (SELECT jsonb_agg(c || jsonb_build_object('type', upper(c->>'type')) ORDER BY n)
                       FROM jsonb_array_elements(p_definition->'components') WITH ORDINALITY x(c, n)))
        || CASE WHEN jsonb_typeof(p_definition->'allow_category_change') = 'boolean'
                THEN jsonb_build_object('allow_category_change', p_definition->'allow_category_change') ELSE '{}' END;
END
$$;

COMMENT ON FUNCTION api.check_template_definition(p_definition jsonb) IS 'Checks a template definition against Meta''s rules (api.template_definition_problems) and returns it as Meta''s create call takes it (category, parameter_format and component types uppercase). Raises PW130 naming the template, the first component at fault and the problem, with the fix in HINT and every problem in DETAIL.';

CREATE FUNCTION api.claim_events(p_worker text, p_max integer, p_busy bigint[] DEFAULT '{}'::bigint[], p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS SETOF api.claimed_event
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, clock_timestamp());
    v_settings core.settings;
    v_vt interval;
    v_left integer := p_max;
    v_got integer;
    v_lane record;
    v_msgs bigint[];
    v_events bigint[];
    v_claimed bigint[] := '{}';
BEGIN
    -- Delivery is at least once (receivers dedupe on the event id): a claim or a report that
    -- a crash forgets only sends an event again, so neither waits for the WAL flush.
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT * INTO v_settings FROM core.settings;
    -- Long enough for the worker to send (at its timeout) and report; a claim the worker
    -- never reports comes back then.
    v_vt := make_interval(secs => 30 + 3 * v_settings.event_timeout_ms / 1000.0);
    FOR v_lane IN
        SELECT e.endpoint_id, e.url, e.secret, e.failures FROM core.event_endpoints e
        WHERE (e.retry_at IS NULL OR e.retry_at <= v_now)
          AND e.endpoint_id <> ALL (coalesce(p_busy, '{}'))
        ORDER BY e.claimed_at NULLS FIRST, e.endpoint_id
    LOOP
        EXIT WHEN v_left <= 0;
        SELECT array_agg(r.msg_id ORDER BY r.msg_id), array_agg(r.event_id ORDER BY r.msg_id)
        INTO v_msgs, v_events
        FROM core.read_event_queue(core.event_queue(v_lane.endpoint_id),
                                   least(v_left, CASE WHEN v_lane.failures > 0 THEN 1
                                                      ELSE 4 * v_settings.event_lane_concurrency END),
                                   v_vt, v_now) r;
        CONTINUE WHEN v_msgs IS NULL;
        -- A statement of its own, after the read: its snapshot sees every event whose queue
        -- message the read could see (a statement around the read would not see those
        -- committed while it ran, and would claim them without returning them).
        -- The body: {"id", "type", "created_at", "data"} as jsonb's canonical text, the time in
        -- UTC: the same bytes at every attempt and replay, whatever the session's time zone.
        RETURN QUERY
        SELECT m.msg_id, v_lane.endpoint_id, ev.event_id, ev.event_type, d.attempts + 1, v_lane.url, v_lane.secret,
               jsonb_build_object(
                   'id', ev.event_id, 'type', ev.event_type,
                   'created_at', to_char(ev.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                   'data', ev.data)::text
        FROM unnest(v_msgs, v_events) AS m(msg_id, event_id)
        JOIN core.events ev ON ev.event_id = m.event_id
        JOIN core.event_deliveries d ON d.endpoint_id = v_lane.endpoint_id AND d.event_id = m.event_id
        ORDER BY m.msg_id;
        GET DIAGNOSTICS v_got = ROW_COUNT;
        IF v_got > 0 THEN
            v_left := v_left - v_got;
            v_claimed := v_claimed || v_lane.endpoint_id;
        END IF;
    END LOOP;
    -- Rotates the order of the next claims; one statement, rows locked in id order.
    UPDATE core.event_endpoints e SET claimed_at = v_now
    FROM (SELECT unnest(v_claimed) AS endpoint_id ORDER BY 1) c
    WHERE e.endpoint_id = c.endpoint_id;
END
$$;

COMMENT ON FUNCTION api.claim_events(p_worker text, p_max integer, p_busy bigint[], p_now timestamp with time zone) IS 'Claims up to p_max outbound event deliveries at p_now (NULL: the clock), lane by lane (one lane an endpoint, least recently claimed first, none of p_busy, none backing off after a failure): each with its endpoint''s URL and secret (for the worker''s signature; no client role may call this) and the exact body to POST. An unreported claim comes back after the delivery timeout.';

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

CREATE FUNCTION api.claim_media_downloads(p_worker text, p_max integer DEFAULT 8, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS SETOF api.media_download
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_settings core.settings;
BEGIN
    SELECT * INTO v_settings FROM core.settings;
    -- A pending file whose Meta id has expired cannot be fetched any more.
    UPDATE core.media m SET state = 'failed', next_attempt_at = NULL,
        last_error = coalesce(m.last_error || '; ', '') || 'Meta''s media id expired before the download'
    WHERE m.state = 'pending' AND m.next_attempt_at <= v_now AND m.expires_at <= v_now;

    RETURN QUERY
    WITH picked AS (
        SELECT m.media_id FROM core.media m
        WHERE m.state = 'pending' AND m.next_attempt_at <= v_now
        ORDER BY m.next_attempt_at, m.media_id
        LIMIT greatest(coalesce(p_max, 0), 0)
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE core.media m SET attempts = m.attempts + 1,
            next_attempt_at = v_now + make_interval(secs => v_settings.media_download_lease_s)
        FROM picked p WHERE m.media_id = p.media_id
        RETURNING m.*
    )
    SELECT c.media_id, c.tenant_id, c.meta_media_id, c.media_type, c.mime_type, c.sha256, c.attempts,
           n.phone_number_id, n.access_token, v_settings.graph_api_version
    FROM claimed c JOIN core.wa_numbers n ON n.number_id = c.number_id
    ORDER BY c.media_id;
END
$$;

COMMENT ON FUNCTION api.claim_media_downloads(p_worker text, p_max integer, p_now timestamp with time zone) IS 'For the media workers: claims up to p_max inbound media files waiting for download (FOR UPDATE SKIP LOCKED: no file goes to two workers), each hidden for core.settings.media_download_lease_s (a worker that dies loses it then), with Meta''s media id and the number''s credentials (never log the token). Files whose Meta id expired first are given up. Report with api.complete_media_downloads.';

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

COMMENT ON FUNCTION api.claim_sends(p_worker text, p_max integer, p_now timestamp with time zone) IS 'Claims up to p_max messages for worker p_worker within each number''s rate (replies first, then running campaigns in equal shares), of numbers no other worker is sending for (a worker whose claim takes a number''s messages sends them alone until a pace horizon after the last), and returns rendered Graph API requests with the time each may be sent (send_at); they stay invisible to other workers for the claim timeout. A redelivered message that a status already settled is dropped, not resent. p_now is the time of the claim (NULL: the clock). Raises PW100 when p_worker is empty.';

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

CREATE FUNCTION api.clear_needs_human(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_conversation core.conversations := core.conversation_for(p_tenant_id, p_number_id, p_contact_id);
BEGIN
    UPDATE core.conversations SET needs_human = false, needs_human_reason = NULL, needs_human_at = NULL
    WHERE number_id = p_number_id AND contact_id = p_contact_id AND needs_human;
    RETURN v_conversation.needs_human;
END
$$;

COMMENT ON FUNCTION api.clear_needs_human(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint) IS 'Clears a conversation''s call for a human (set when a bot rule or the LLM handed it over) without assigning it. Returns whether the flag was set. Raises PW202/PW209 for a number or conversation not the tenant''s.';

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

CREATE FUNCTION api.complete_media_downloads(p_results jsonb, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS TABLE(media_id bigint, state text, last_error text)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_settings core.settings;
BEGIN
    IF jsonb_typeof(p_results) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'results must be a JSON array' USING ERRCODE = 'PW105',
            HINT = '[{"media_id": 1, "storage_key": "...", "sha256": "...", "size_bytes": 1, "mime_type": "image/jpeg"} | {"media_id": 1, "error": "...", "permanent": false}]';
    END IF;
    SELECT * INTO v_settings FROM core.settings;
    RETURN QUERY
    WITH r AS (
        SELECT x.media_id, x.storage_key, lower(x.sha256) AS sha256, x.size_bytes, core.media_mime(x.mime_type) AS mime,
               left(x.error, 500) AS error, coalesce(x.permanent, false) AS permanent, x.filename
        FROM jsonb_to_recordset(p_results) AS x(media_id bigint, storage_key text, sha256 text, size_bytes bigint,
                                                 mime_type text, error text, permanent boolean, filename text)
    ), judged AS (
        SELECT r.*, m.attempts,
               CASE WHEN r.error IS NOT NULL OR r.storage_key IS NULL THEN coalesce(r.error, 'no file stored')
                    WHEN t.mime_type IS NULL THEN format('mime_type: "%s" is not one Meta accepts as media', r.mime)
                    WHEN r.size_bytes IS NULL OR r.size_bytes < 1 THEN 'the file is empty'
                    WHEN r.size_bytes > t.max_bytes THEN format('%s bytes is over Meta''s limit of %s bytes for %s',
                                                                r.size_bytes, t.max_bytes, t.media_type)
               END AS problem,
               r.error IS NULL AND r.storage_key IS NOT NULL AS bad_file
        FROM r
        JOIN core.media m ON m.media_id = r.media_id AND m.direction = 'in' AND m.state = 'pending'
        LEFT JOIN core.media_types t ON t.mime_type = r.mime
    )
    UPDATE core.media m SET
        state = CASE WHEN j.problem IS NULL THEN 'stored'
                     WHEN j.permanent OR j.bad_file OR j.attempts >= v_settings.media_download_attempts
                          OR m.expires_at <= v_now THEN 'failed'
                     ELSE 'pending' END,
        storage_key = CASE WHEN j.problem IS NULL THEN j.storage_key END,
        sha256 = CASE WHEN j.problem IS NULL THEN j.sha256 ELSE m.sha256 END,
        size_bytes = CASE WHEN j.problem IS NULL THEN j.size_bytes ELSE m.size_bytes END,
        mime_type = CASE WHEN j.problem IS NULL THEN j.mime ELSE m.mime_type END,
        filename = coalesce(m.filename, left(j.filename, 240)),
        stored_at = CASE WHEN j.problem IS NULL THEN v_now END,
        last_error = j.problem,
        next_attempt_at = CASE
            WHEN j.problem IS NULL OR j.permanent OR j.bad_file OR j.attempts >= v_settings.media_download_attempts
                 OR m.expires_at <= v_now THEN NULL
            ELSE v_now + make_interval(secs => v_settings.media_download_backoff_s[
                     least(j.attempts, cardinality(v_settings.media_download_backoff_s))]) END
    FROM judged j
    WHERE m.media_id = j.media_id
    RETURNING m.media_id, m.state, m.last_error;
END
$$;

COMMENT ON FUNCTION api.complete_media_downloads(p_results jsonb, p_now timestamp with time zone) IS 'For the media workers: reports claimed downloads, [{"media_id", "storage_key", "sha256", "size_bytes", "mime_type"}] for a stored file or [{"media_id", "error", "permanent"}] for a failure. A stored file is checked against Meta''s limits again (a file outside them is failed: the worker deletes it from the store); a failure is retried after core.settings.media_download_backoff_s until media_download_attempts, or at once given up when permanent or the Meta id expired. Returns each applied file''s new state and error; reports for files no longer pending are ignored. Raises PW105 when p_results is not an array.';

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

CREATE FUNCTION api.contact(p_tenant_id bigint, p_contact_id bigint) RETURNS api.contact_record
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT core.contact_record(p_tenant_id, p_contact_id)
$$;

COMMENT ON FUNCTION api.contact(p_tenant_id bigint, p_contact_id bigint) IS 'One contact of the tenant with its fields (attributes) and tags. Raises PW204 when not found.';

CREATE FUNCTION api.contact_fields(p_tenant_id bigint) RETURNS SETOF api.contact_field
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT f.name, f.type, f.created_at FROM core.contact_fields f WHERE f.tenant_id = p_tenant_id ORDER BY f.name
$$;

COMMENT ON FUNCTION api.contact_fields(p_tenant_id bigint) IS 'Lists the tenant''s custom contact fields and their types, by name.';

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
           i.created_at, i.outbound_id, o.kind, o.state, o.error_code, o.error_detail, i.campaign_id,
           core.message_media(i.message_id, i.number_id, i.direction, i.type, i.payload)
    FROM core.inbox_messages i
    LEFT JOIN core.outbound_messages o ON o.outbound_id = i.outbound_id AND i.direction = 'out'
    WHERE i.number_id = p_number_id AND i.contact_id = p_contact_id
      AND (i.created_at, i.message_id) < (coalesce(p_before_at, 'infinity'), coalesce(p_before_id, 9223372036854775807))
    ORDER BY i.created_at DESC, i.message_id DESC
    LIMIT p_limit;
END
$$;

COMMENT ON FUNCTION api.conversation(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint, p_before_at timestamp with time zone, p_before_id bigint, p_limit integer) IS 'One page of a conversation''s messages, newest first, both directions; an outbound one carries its kind (bot, agent, llm, reply) and delivery state. Keyset pagination: pass the last row''s created_at and message_id as p_before_at and p_before_id. Raises PW100 for a limit outside 1..500, PW202/PW204 when the number or contact is not the tenant''s.';

CREATE FUNCTION api.conversation_notes(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint) RETURNS SETOF api.conversation_note
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    PERFORM core.number_for(p_tenant_id, p_number_id);
    PERFORM core.contact_for(p_tenant_id, p_contact_id);
    RETURN QUERY
    SELECT x.* FROM (
        SELECT n.note_id, n.number_id, n.contact_id, n.author, n.body, n.created_at FROM core.conversation_notes n
        WHERE n.number_id = p_number_id AND n.contact_id = p_contact_id
        ORDER BY n.created_at DESC, n.note_id DESC
        LIMIT 500) x
    ORDER BY x.created_at, x.note_id;
END
$$;

COMMENT ON FUNCTION api.conversation_notes(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint) IS 'A conversation''s internal notes, oldest first (the latest 500 at most): author e-mail, text, time. Raises PW202/PW204 for a number or contact not the tenant''s.';

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
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT core.new_campaign(p_tenant_id, p_number_id, p_name, p_templates, p_on_invalid, p_scheduled_at,
                             p_start, p_default_country_code, NULL)
$$;

COMMENT ON FUNCTION api.create_campaign(p_tenant_id bigint, p_number_id bigint, p_name text, p_templates jsonb, p_on_invalid text, p_scheduled_at timestamp with time zone, p_start boolean, p_default_country_code text) IS 'Creates a campaign in one transaction from the contacts staged by api.stage_contacts: validates the templates and their parameter mapping (each element of p_templates: {"name", "language", "header": {"column"} | {"value": text or link} | {"media_id"} (+ "filename" for a DOCUMENT) | {"location": {latitude, longitude, name, address}}, "body": [sources] for POSITIONAL templates or {"parameter_name": source} for NAMED ones ("params": the old spelling of a positional body), "buttons": {"<index>": source} for URL suffixes, copy codes, quick-reply payloads and OTP codes (by default the body''s code)}, a source being {"column": "csv column"} or {"value": "constant"}; api.template_parameters lists what a template needs; a row whose mapped column is empty is an invalid row), normalises phones to E.164 digits, drops duplicates, skips opted-out contacts, upserts contacts and queues one rendered message per contact, interleaved across templates. Status is draft, scheduled (p_scheduled_at) or running (p_start). Returns the counts and the invalid rows. Raises PW100/PW102 on bad arguments or templates (PW102 names the template, the component, the parameter and the fix for a missing, extra or wrongly kinded parameter), PW101 on invalid rows when p_on_invalid is reject, PW202 for an unknown number; nothing is left behind on error.';

CREATE FUNCTION api.create_campaign_from_segment(p_tenant_id bigint, p_number_id bigint, p_name text, p_templates jsonb, p_segment_id bigint DEFAULT NULL::bigint, p_filter jsonb DEFAULT NULL::jsonb, p_tags text[] DEFAULT NULL::text[], p_scheduled_at timestamp with time zone DEFAULT NULL::timestamp with time zone, p_start boolean DEFAULT false, p_on_invalid text DEFAULT 'skip'::text, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS api.campaign_created
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    SET client_min_messages TO 'warning'
    SET work_mem TO '256MB'
    AS $_$
DECLARE
    v core.compiled_segment := core.compile_segment(p_tenant_id, core.segment_filter(p_tenant_id, p_segment_id, p_filter, p_tags), p_now);
    v_created api.campaign_created;
    v_found boolean;
BEGIN
    PERFORM core.number_for(p_tenant_id, p_number_id);
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM core.contacts c WHERE c.tenant_id = $5 AND c.wa_id IS NOT NULL AND ' || v.sql || ')'
        INTO v_found USING v.texts, v.numbers, v.times, v.ids, p_tenant_id;
    IF NOT v_found THEN
        RAISE EXCEPTION 'the segment matches no contact with a phone number' USING ERRCODE = 'PW101',
            HINT = 'Check the segment''s live count with api.segment_count().';
    END IF;
    -- The segment's contacts are read straight into the campaign (no staging, no
    -- second normalisation, no upsert of contacts that are already themselves).
    v_created := core.new_campaign(p_tenant_id, p_number_id, p_name, p_templates, p_on_invalid,
                                   p_scheduled_at, p_start, NULL, v);
    RETURN v_created;
END
$_$;

COMMENT ON FUNCTION api.create_campaign_from_segment(p_tenant_id bigint, p_number_id bigint, p_name text, p_templates jsonb, p_segment_id bigint, p_filter jsonb, p_tags text[], p_scheduled_at timestamp with time zone, p_start boolean, p_on_invalid text, p_now timestamp with time zone) IS 'Creates a campaign, in one transaction, for the contacts a segment matches at that moment (a saved segment, an inline filter, or contacts with any of p_tags: exactly one): reads them (phone, name, attributes, so template parameters map to fields and columns) as api.create_campaign reads a list, skipping opted-out contacts and, with p_on_invalid skip (the default), contacts lacking a mapped value. Contacts added later are not in it. Returns what api.create_campaign returns. Raises what api.create_campaign and api.segment_count raise, and PW101 when no contact with a phone matches; nothing is left behind on error.';

CREATE FUNCTION api.create_canned_reply(p_tenant_id bigint, p_user_id bigint, p_title text, p_body text) RETURNS api.canned_reply
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_row api.canned_reply;
BEGIN
    IF length(btrim(coalesce(p_title, ''))) NOT BETWEEN 1 AND 100 OR length(btrim(coalesce(p_body, ''))) NOT BETWEEN 1 AND core.text_body_max() THEN
        RAISE EXCEPTION 'a canned reply needs a title of 1 to 100 characters and a body of 1 to % characters', core.text_body_max()
            USING ERRCODE = 'PW166', HINT = 'Give both; the body may use contact variables like {{name}}.';
    END IF;
    IF p_user_id IS NOT NULL THEN
        PERFORM core.inbox_user(p_tenant_id, p_user_id);
    END IF;
    INSERT INTO core.canned_replies (tenant_id, title, body, created_by)
    VALUES (p_tenant_id, btrim(p_title), btrim(p_body), p_user_id)
    ON CONFLICT ON CONSTRAINT canned_replies_tenant_title DO NOTHING
    RETURNING canned_reply_id, title, body, created_at INTO v_row;
    IF v_row.canned_reply_id IS NULL THEN
        RAISE EXCEPTION 'a canned reply titled "%" already exists', btrim(p_title)
            USING ERRCODE = 'PW375', HINT = 'Choose another title, or delete the old reply first.';
    END IF;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION api.create_canned_reply(p_tenant_id bigint, p_user_id bigint, p_title text, p_body text) IS 'Saves a canned reply for the tenant (p_user_id: its author, or null). Returns it. Raises PW166 for a missing or too long title or body, PW375 when the title is taken, PW260 for a user not the tenant''s.';

CREATE FUNCTION api.create_event_endpoint(p_tenant_id bigint, p_url text, p_event_types text[], p_secret text DEFAULT NULL::text, p_description text DEFAULT NULL::text) RETURNS api.event_endpoint_created
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_problem text := core.event_url_problem(p_url);
    v_unknown text;
    v_secret text := coalesce(p_secret,
                              'whsec_' || replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));
    v_result api.event_endpoint_created;
BEGIN
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'url is refused: %', v_problem USING ERRCODE = 'PW100',
            HINT = 'Give a public https:// URL, e.g. https://shop.example.com/pgwa/events.';
    END IF;
    IF coalesce(cardinality(p_event_types), 0) = 0 THEN
        RAISE EXCEPTION 'event_types is empty' USING ERRCODE = 'PW100',
            HINT = 'Name one or more of: ' || (SELECT string_agg(event_type, ', ' ORDER BY event_type)
                                             FROM core.event_types WHERE subscribable) || '.';
    END IF;
    SELECT string_agg(DISTINCT t, ', ') INTO v_unknown FROM unnest(p_event_types) t
    WHERE t IS NULL OR NOT EXISTS (SELECT 1 FROM core.event_types e WHERE e.event_type = t AND e.subscribable);
    IF v_unknown IS NOT NULL OR array_position(p_event_types, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'event_types holds unknown types: %', coalesce(v_unknown, 'null') USING ERRCODE = 'PW100',
            HINT = 'Known types: ' || (SELECT string_agg(event_type, ', ' ORDER BY event_type)
                                       FROM core.event_types WHERE subscribable) || '.';
    END IF;
    IF length(v_secret) NOT BETWEEN 16 AND 200 THEN
        RAISE EXCEPTION 'secret must have 16 to 200 characters' USING ERRCODE = 'PW100',
            HINT = 'Leave it out and one is made for you (shown once, in this answer).';
    END IF;
    IF length(p_description) > 500 THEN
        RAISE EXCEPTION 'description is longer than 500 characters' USING ERRCODE = 'PW100',
            HINT = 'Say in a few words what the endpoint is for.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM core.tenants WHERE tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'tenant % does not exist', p_tenant_id USING ERRCODE = 'PW205',
            HINT = 'Create the tenant first.';
    END IF;
    INSERT INTO core.event_endpoints (tenant_id, url, secret, description)
    VALUES (p_tenant_id, p_url, v_secret, p_description)
    RETURNING endpoint_id, url, NULL::text[], description, created_at, secret INTO v_result;
    INSERT INTO core.event_subscriptions (event_type, tenant_id, endpoint_id)
    SELECT DISTINCT t, p_tenant_id, v_result.endpoint_id FROM unnest(p_event_types) t;
    v_result.event_types := ARRAY(SELECT DISTINCT t FROM unnest(p_event_types) t ORDER BY t);
    PERFORM pgmq.create(core.event_queue(v_result.endpoint_id));
    RETURN v_result;
END
$$;

COMMENT ON FUNCTION api.create_event_endpoint(p_tenant_id bigint, p_url text, p_event_types text[], p_secret text, p_description text) IS 'Registers an endpoint that receives the tenant''s outbound events of the given types, signed with p_secret (or a generated whsec_ secret); returns it with the secret, shown this once. Raises PW100 for a URL that is not http(s), carries credentials or (unless allowed) names a local or private address, for no or unknown event types, or a secret outside 16..200 characters; PW205 for an unknown tenant.';

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

CREATE FUNCTION api.create_user(p_tenant_id bigint, p_email text, p_role text, p_password_hash text, p_now timestamp with time zone DEFAULT now()) RETURNS api.dashboard_user
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_email text := core.dashboard_email(p_email);
    v_user core.dashboard_users;
BEGIN
    PERFORM core.dashboard_check(coalesce(p_role, ''), coalesce(p_password_hash, ''), NULL);
    IF NOT EXISTS (SELECT 1 FROM core.tenants WHERE tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'tenant % does not exist', p_tenant_id USING ERRCODE = 'PW205',
            HINT = 'Create the tenant first (pgwa tenant create).';
    END IF;
    INSERT INTO core.dashboard_users (tenant_id, email, password_hash, role, created_at)
    VALUES (p_tenant_id, v_email, p_password_hash, p_role, p_now)
    ON CONFLICT ON CONSTRAINT dashboard_users_tenant_email DO NOTHING
    RETURNING * INTO v_user;
    IF v_user.user_id IS NULL THEN
        RAISE EXCEPTION 'a user with e-mail % already exists in tenant %', v_email, p_tenant_id
            USING ERRCODE = 'PW302', HINT = 'Log in as that user, or give another e-mail.';
    END IF;
    RETURN core.dashboard_user_row(v_user);
END
$$;

COMMENT ON FUNCTION api.create_user(p_tenant_id bigint, p_email text, p_role text, p_password_hash text, p_now timestamp with time zone) IS 'Creates a dashboard user of a tenant with a role (admin, marketer, agent, viewer) and an argon2 password hash made by the caller; the e-mail is lower-cased. Returns the user, never the hash. Raises PW100 for a bad e-mail, role or hash, PW205 for an unknown tenant, PW302 when the e-mail is taken in the tenant.';

CREATE FUNCTION api.dashboard_actor(p_token_hash bytea, p_action text, p_number_id bigint DEFAULT NULL::bigint, p_contact_id bigint DEFAULT NULL::bigint, p_now timestamp with time zone DEFAULT now()) RETURNS api.dashboard_actor
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_tenant_id bigint;
    v_user core.dashboard_users;
BEGIN
    IF p_number_id IS NOT NULL AND p_contact_id IS NOT NULL THEN
        v_tenant_id := api.dashboard_authorize_conversation(p_token_hash, p_action, p_number_id, p_contact_id, p_now);
    ELSE
        v_tenant_id := api.dashboard_authorize(p_token_hash, p_action, p_now);
    END IF;
    v_user := core.dashboard_session_user(p_token_hash, p_now);
    RETURN ROW(v_tenant_id, v_user.user_id, v_user.email, v_user.role)::api.dashboard_actor;
END
$$;

COMMENT ON FUNCTION api.dashboard_actor(p_token_hash bytea, p_action text, p_number_id bigint, p_contact_id bigint, p_now timestamp with time zone) IS 'The tenant, user, e-mail and role of the live session whose token has sha256 p_token_hash, once its role holds p_action (and, given a conversation, once an agent is not refused it for being another agent''s). Raises PW401 for no live session, PW403 when the role lacks the action or the conversation is another agent''s.';

CREATE FUNCTION api.dashboard_authorize(p_token_hash bytea, p_action text, p_now timestamp with time zone DEFAULT now()) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_user core.dashboard_users := core.dashboard_session_user(p_token_hash, p_now);
BEGIN
    PERFORM core.dashboard_require(v_user.role, p_action);
    UPDATE core.dashboard_sessions SET last_seen_at = p_now
    WHERE token_hash = p_token_hash AND last_seen_at <= p_now - interval '1 minute';
    RETURN v_user.tenant_id;
END
$$;

COMMENT ON FUNCTION api.dashboard_authorize(p_token_hash bytea, p_action text, p_now timestamp with time zone) IS 'Returns the tenant of the live session whose token has sha256 p_token_hash when its user''s role holds p_action (campaigns.read, campaigns.manage, inbox.read, inbox.reply, inbox.assign, users.manage), for the dashboard''s one statement per request: SELECT … FROM api.f(api.dashboard_authorize(…), …). Raises PW401 for no live session, PW403 when the role lacks the action.';

CREATE FUNCTION api.dashboard_authorize_conversation(p_token_hash bytea, p_action text, p_number_id bigint, p_contact_id bigint, p_now timestamp with time zone DEFAULT now()) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_tenant_id bigint := api.dashboard_authorize(p_token_hash, p_action, p_now);
    v_user core.dashboard_users := core.dashboard_session_user(p_token_hash, p_now);
    v_assigned_to text;
BEGIN
    -- An agent works on the conversations assigned to them and on the unassigned queue.
    IF v_user.role = 'agent' THEN
        SELECT v.assigned_to INTO v_assigned_to FROM core.conversations v
        JOIN core.contacts c ON c.contact_id = v.contact_id AND c.tenant_id = v_tenant_id
        WHERE v.number_id = p_number_id AND v.contact_id = p_contact_id;
        IF v_assigned_to IS NOT NULL AND v_assigned_to <> v_user.email THEN
            RAISE EXCEPTION 'this conversation is assigned to another agent' USING ERRCODE = 'PW403',
                HINT = 'Agents see the conversations assigned to them and the unassigned queue.';
        END IF;
    END IF;
    RETURN v_tenant_id;
END
$$;

COMMENT ON FUNCTION api.dashboard_authorize_conversation(p_token_hash bytea, p_action text, p_number_id bigint, p_contact_id bigint, p_now timestamp with time zone) IS 'As api.dashboard_authorize, for an action on one conversation: an agent is also refused (PW403) a conversation assigned to someone else. Returns the tenant. Raises PW401 for no live session, PW403 when the role lacks the action or the conversation is another agent''s; ids of another tenant are then not found by the function called.';

CREATE FUNCTION api.dashboard_cookie_key() RETURNS bytea
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT s.dashboard_cookie_key FROM core.settings s
$$;

COMMENT ON FUNCTION api.dashboard_cookie_key() IS 'The key every API process signs dashboard cookies and derives CSRF tokens with (core.settings.dashboard_cookie_key, random per database).';

CREATE FUNCTION api.dashboard_login(p_user_id bigint, p_token_hash bytea, p_now timestamp with time zone DEFAULT now()) RETURNS api.dashboard_session
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_user core.dashboard_users;
BEGIN
    PERFORM core.dashboard_check(NULL, NULL, coalesce(p_token_hash, ''::bytea));
    UPDATE core.dashboard_users SET failed_logins = 0, failed_since = NULL, locked_until = NULL, last_login_at = p_now
    WHERE user_id = p_user_id AND disabled_at IS NULL AND (locked_until IS NULL OR locked_until <= p_now)
    RETURNING * INTO v_user;
    IF v_user.user_id IS NULL THEN
        RAISE EXCEPTION 'user % cannot log in: unknown, disabled or locked', p_user_id USING ERRCODE = 'PW401',
            HINT = 'Check the password with api.dashboard_login_users() first.';
    END IF;
    INSERT INTO core.dashboard_sessions (user_id, token_hash, created_at, expires_at, last_seen_at)
    SELECT p_user_id, p_token_hash, p_now, p_now + s.dashboard_session_ttl, p_now FROM core.settings s;
    RETURN api.dashboard_session(p_token_hash, p_now);
END
$$;

COMMENT ON FUNCTION api.dashboard_login(p_user_id bigint, p_token_hash bytea, p_now timestamp with time zone) IS 'Starts a session for a user whose password the caller has just verified (argon2, against api.dashboard_login_users): clears the failed logins and stores the sha256 of the session''s random token, expiring after core.settings.dashboard_session_ttl. Returns the session. Raises PW401 for an unknown, disabled or locked user, PW100 for a hash that is not 32 bytes.';

CREATE FUNCTION api.dashboard_login_failed(p_email text, p_tenant_id bigint DEFAULT NULL::bigint, p_now timestamp with time zone DEFAULT now()) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_locked boolean;
BEGIN
    -- A failure counts within the window that its first one opened; the failure that
    -- reaches dashboard_max_failures locks the user for dashboard_lockout.
    WITH locked AS (
        UPDATE core.dashboard_users u
        SET failed_logins = CASE WHEN c.failures >= s.dashboard_max_failures THEN 0 ELSE c.failures END,
            failed_since = CASE WHEN c.failures >= s.dashboard_max_failures THEN NULL
                                WHEN c.failures = 1 THEN p_now ELSE u.failed_since END,
            locked_until = CASE WHEN c.failures >= s.dashboard_max_failures THEN p_now + s.dashboard_lockout END
        FROM core.settings s,
             (SELECT x.user_id, CASE WHEN x.failed_since > p_now - st.dashboard_failure_window
                                     THEN x.failed_logins + 1 ELSE 1 END AS failures
              FROM core.dashboard_users x, core.settings st
              WHERE x.email = lower(btrim(coalesce(p_email, ''))) AND (p_tenant_id IS NULL OR x.tenant_id = p_tenant_id)
                AND x.disabled_at IS NULL AND (x.locked_until IS NULL OR x.locked_until <= p_now)) c
        WHERE u.user_id = c.user_id
        RETURNING c.failures >= s.dashboard_max_failures AS locks
    )
    SELECT coalesce(bool_or(locks), false) INTO v_locked FROM locked;
    RETURN v_locked;
END
$$;

COMMENT ON FUNCTION api.dashboard_login_failed(p_email text, p_tenant_id bigint, p_now timestamp with time zone) IS 'Records a failed login (wrong password) against the users of this e-mail (in one tenant when given): after core.settings.dashboard_max_failures failures within dashboard_failure_window the user is locked out for dashboard_lockout. Returns whether this failure locked someone; an unknown e-mail changes nothing.';

CREATE FUNCTION api.dashboard_login_users(p_email text, p_tenant_id bigint DEFAULT NULL::bigint, p_now timestamp with time zone DEFAULT now()) RETURNS SETOF api.dashboard_login_user
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_email text := lower(btrim(coalesce(p_email, '')));
    v_locked_until timestamptz;
BEGIN
    RETURN QUERY
    SELECT u.user_id, u.tenant_id, u.password_hash FROM core.dashboard_users u
    WHERE u.email = v_email AND (p_tenant_id IS NULL OR u.tenant_id = p_tenant_id) AND u.disabled_at IS NULL
      AND (u.locked_until IS NULL OR u.locked_until <= p_now)
    ORDER BY u.tenant_id;
    IF FOUND THEN
        RETURN;
    END IF;
    SELECT max(u.locked_until) INTO v_locked_until FROM core.dashboard_users u
    WHERE u.email = v_email AND (p_tenant_id IS NULL OR u.tenant_id = p_tenant_id) AND u.disabled_at IS NULL;
    IF v_locked_until > p_now THEN
        RAISE EXCEPTION 'too many failed logins: locked until %', v_locked_until USING ERRCODE = 'PW460',
            DETAIL = json_build_object('retry_after_s', ceil(extract(epoch FROM v_locked_until - p_now)))::text,
            HINT = 'Wait, or ask an admin of the workspace.';
    END IF;
END
$$;

COMMENT ON FUNCTION api.dashboard_login_users(p_email text, p_tenant_id bigint, p_now timestamp with time zone) IS 'The enabled, unlocked dashboard users with this e-mail (in one tenant when p_tenant_id is given) and their argon2 password hashes, for the login to verify the password against; no row for an unknown e-mail. Raises PW460 when every such user is locked out after failed logins.';

CREATE FUNCTION api.dashboard_logout(p_token_hash bytea, p_now timestamp with time zone DEFAULT now()) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    UPDATE core.dashboard_sessions SET revoked_at = p_now WHERE token_hash = p_token_hash AND revoked_at IS NULL;
    RETURN FOUND;
END
$$;

COMMENT ON FUNCTION api.dashboard_logout(p_token_hash bytea, p_now timestamp with time zone) IS 'Ends the session whose token has sha256 p_token_hash at once. Returns whether a live session ended (false when it had already).';

CREATE FUNCTION api.dashboard_session(p_token_hash bytea, p_now timestamp with time zone DEFAULT now()) RETURNS api.dashboard_session
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_result api.dashboard_session;
BEGIN
    SELECT s.session_id, u.tenant_id, t.name, u.user_id, u.email, u.role,
           ARRAY(SELECT a.action FROM core.dashboard_role_actions a WHERE a.role = u.role ORDER BY a.action),
           s.expires_at
    INTO v_result
    FROM core.dashboard_sessions s
    JOIN core.dashboard_users u ON u.user_id = s.user_id
    JOIN core.tenants t ON t.tenant_id = u.tenant_id
    WHERE s.token_hash = p_token_hash AND s.revoked_at IS NULL AND s.expires_at > p_now AND u.disabled_at IS NULL;
    IF v_result.session_id IS NULL THEN
        RAISE EXCEPTION 'not logged in: the session is unknown, expired or ended' USING ERRCODE = 'PW401',
            HINT = 'Log in again at /dashboard/login.';
    END IF;
    RETURN v_result;
END
$$;

COMMENT ON FUNCTION api.dashboard_session(p_token_hash bytea, p_now timestamp with time zone) IS 'The live session whose token has sha256 p_token_hash: its tenant, user, e-mail, role and the actions that role holds. Raises PW401 for an unknown, expired or revoked session or a disabled user.';

CREATE FUNCTION api.dashboard_take_conversation(p_token_hash bytea, p_number_id bigint, p_contact_id bigint, p_now timestamp with time zone DEFAULT now()) RETURNS api.conversation_summary
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_tenant_id bigint := api.dashboard_authorize_conversation(p_token_hash, 'inbox.reply', p_number_id, p_contact_id,
                                                               p_now);
    v_user core.dashboard_users := core.dashboard_session_user(p_token_hash, p_now);
BEGIN
    PERFORM core.conversation_for(v_tenant_id, p_number_id, p_contact_id);      -- PW202/PW209
    -- One statement decides: of two agents taking the same conversation at once, the
    -- second's UPDATE waits for the first's row lock, sees it taken and changes nothing.
    UPDATE core.conversations SET assigned_to = v_user.email, assigned_at = p_now,
        needs_human = false, needs_human_reason = NULL, needs_human_at = NULL
    WHERE number_id = p_number_id AND contact_id = p_contact_id
      AND (v_user.role <> 'agent' OR assigned_to IS NULL OR assigned_to = v_user.email);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'conversation with contact % was just taken by another agent', p_contact_id
            USING ERRCODE = 'PW403', HINT = 'Reload the inbox: it is no longer in the unassigned queue.';
    END IF;
    RETURN (SELECT s FROM core.conversation_summaries(p_number_id, ARRAY[p_contact_id]) s);
END
$$;

COMMENT ON FUNCTION api.dashboard_take_conversation(p_token_hash bytea, p_number_id bigint, p_contact_id bigint, p_now timestamp with time zone) IS 'Assigns a conversation to the session''s own user (an agent takes one from the unassigned queue). Returns the conversation. Raises PW401 for no live session, PW403 when the role may not reply or the conversation is another agent''s, PW202/PW209 for ids not the tenant''s.';

CREATE FUNCTION api.dashboard_users(p_tenant_id bigint) RETURNS SETOF api.dashboard_user
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT core.dashboard_user_row(u) FROM core.dashboard_users u WHERE u.tenant_id = p_tenant_id ORDER BY u.email
$$;

COMMENT ON FUNCTION api.dashboard_users(p_tenant_id bigint) IS 'Lists the tenant''s dashboard users (e-mail, role, created, disabled, last login, locked until), never their password hashes.';

CREATE FUNCTION api.define_contact_field(p_tenant_id bigint, p_name text, p_type text) RETURNS api.contact_field
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $_$
DECLARE
    v_field api.contact_field;
BEGIN
    IF p_name IS NULL OR p_name !~ '^[a-z][a-z0-9_]{0,62}$' OR p_name IN ('phone', 'name', 'tags') THEN
        RAISE EXCEPTION 'field name "%" is not a lower-case name of 1 to 63 letters, digits and _ (phone, name and tags are taken)',
            left(coalesce(p_name, ''), 80) USING ERRCODE = 'PW100', HINT = 'e.g. city, birth_date, loyalty_points.';
    END IF;
    IF p_type IS NULL OR p_type NOT IN ('text', 'number', 'date', 'boolean') THEN
        RAISE EXCEPTION 'field type must be text, number, date or boolean, not "%"', left(coalesce(p_type, ''), 40)
            USING ERRCODE = 'PW100', HINT = 'Dates are YYYY-MM-DD.';
    END IF;
    IF NOT EXISTS (SELECT FROM core.tenants WHERE tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'tenant % does not exist', p_tenant_id USING ERRCODE = 'PW205', HINT = 'Create the tenant first.';
    END IF;
    INSERT INTO core.contact_fields (tenant_id, name, type) VALUES (p_tenant_id, p_name, p_type)
    ON CONFLICT (tenant_id, name) DO NOTHING;
    SELECT f.name, f.type, f.created_at INTO v_field FROM core.contact_fields f
    WHERE f.tenant_id = p_tenant_id AND f.name = p_name;
    IF v_field.type <> p_type THEN
        RAISE EXCEPTION 'field "%" is already defined as %', p_name, v_field.type USING ERRCODE = 'PW302',
            HINT = 'Delete the field first (its values stay as plain attributes), or choose another name.';
    END IF;
    RETURN v_field;
END
$_$;

COMMENT ON FUNCTION api.define_contact_field(p_tenant_id bigint, p_name text, p_type text) IS 'Defines a custom contact field of the tenant (text, number, date or boolean); its values live in the contact''s attributes under the name, checked on every write. Idempotent for the same type. Returns the field. Raises PW100 for a bad name or type, PW205 for an unknown tenant, PW302 when the name is defined with another type.';

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

CREATE FUNCTION api.delete_canned_reply(p_tenant_id bigint, p_canned_reply_id bigint) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    DELETE FROM core.canned_replies WHERE canned_reply_id = p_canned_reply_id AND tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'canned reply % not found', p_canned_reply_id USING ERRCODE = 'PW275',
            HINT = 'List the tenant''s canned replies with api.canned_replies().';
    END IF;
    RETURN p_canned_reply_id;
END
$$;

COMMENT ON FUNCTION api.delete_canned_reply(p_tenant_id bigint, p_canned_reply_id bigint) IS 'Deletes one of the tenant''s canned replies. Returns its id. Raises PW275 when the tenant has no such reply.';

CREATE FUNCTION api.delete_contact(p_tenant_id bigint, p_contact_id bigint) RETURNS api.contact_erased
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_result api.contact_erased;
    v_queue record;
BEGIN
    PERFORM 1 FROM core.contacts WHERE contact_id = p_contact_id AND tenant_id = p_tenant_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'contact % not found', p_contact_id USING ERRCODE = 'PW204',
            HINT = 'List the tenant''s contacts with api.search_contacts().';
    END IF;
    v_result.contact_id := p_contact_id;
    DROP TABLE IF EXISTS pg_temp.erased_outbound;
    CREATE TEMP TABLE erased_outbound ON COMMIT DROP AS
    SELECT o.outbound_id, o.campaign_id, o.number_id, o.wamid, o.state FROM core.outbound_messages o
    WHERE o.contact_id = p_contact_id;

    -- Queue messages (they carry the phone and the parameters): those still waiting, and
    -- those archived for history, in campaign queues and the numbers' reply queues.
    FOR v_queue IN
        SELECT DISTINCT CASE WHEN e.campaign_id IS NOT NULL THEN core.campaign_queue(e.campaign_id)
                             ELSE core.reply_queue(e.number_id) END AS name
        FROM pg_temp.erased_outbound e
    LOOP
        IF EXISTS (SELECT FROM pgmq.list_queues() q WHERE q.queue_name = v_queue.name) THEN
            EXECUTE format('DELETE FROM pgmq.%I q USING pg_temp.erased_outbound e
                            WHERE (q.message->>''o'')::bigint = e.outbound_id', pgmq.format_table_name(v_queue.name, 'q'));
            EXECUTE format('DELETE FROM pgmq.%I a USING pg_temp.erased_outbound e
                            WHERE (a.message->>''o'')::bigint = e.outbound_id', pgmq.format_table_name(v_queue.name, 'a'));
        END IF;
    END LOOP;
    UPDATE core.campaigns c SET cancelled = c.cancelled + w.n
    FROM (SELECT campaign_id, count(*)::integer AS n FROM pg_temp.erased_outbound
          WHERE state IN ('queued', 'in_flight') AND campaign_id IS NOT NULL GROUP BY campaign_id) w
    WHERE c.campaign_id = w.campaign_id;
    SELECT count(*) FILTER (WHERE state IN ('queued', 'in_flight')) INTO v_result.withdrawn FROM pg_temp.erased_outbound;

    DELETE FROM core.status_events s USING pg_temp.erased_outbound e WHERE s.wamid = e.wamid;
    GET DIAGNOSTICS v_result.status_events = ROW_COUNT;
    DELETE FROM core.outbound_messages o USING pg_temp.erased_outbound e WHERE o.outbound_id = e.outbound_id;
    GET DIAGNOSTICS v_result.outbound_messages = ROW_COUNT;
    DELETE FROM core.inbox_messages WHERE contact_id = p_contact_id;
    GET DIAGNOSTICS v_result.inbox_messages = ROW_COUNT;
    DELETE FROM core.conversations WHERE contact_id = p_contact_id;
    GET DIAGNOSTICS v_result.conversations = ROW_COUNT;
    -- Events for the tenant's systems that name the contact (message statuses, inbound
    -- messages, opt-outs), and with them their pending deliveries: read from the tenant's
    -- events (events_tenant_event), erasure being rare.
    DELETE FROM core.events e WHERE e.tenant_id = p_tenant_id
      AND p_contact_id::text IN (e.data->>'contact_id', e.data->'recipient'->>'contact_id', e.data->'from'->>'contact_id');
    GET DIAGNOSTICS v_result.events = ROW_COUNT;
    DELETE FROM core.contacts WHERE contact_id = p_contact_id;
    PERFORM core.complete_campaigns(ARRAY(SELECT DISTINCT campaign_id FROM pg_temp.erased_outbound
                                          WHERE campaign_id IS NOT NULL));
    RETURN v_result;
END
$$;

COMMENT ON FUNCTION api.delete_contact(p_tenant_id bigint, p_contact_id bigint) IS 'Erases one contact of the tenant and everything pgwa holds about it: its outbound messages and their status events, queue messages still waiting (counted cancelled, so their campaigns still complete) and archived, inbox messages (and their media rows) and conversations, and the outbound events that name it. Campaign counters of messages already sent stay (anonymous aggregates). Returns what was deleted. Raises PW204 when not found.';

CREATE FUNCTION api.delete_contact_field(p_tenant_id bigint, p_name text) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    DELETE FROM core.contact_fields WHERE tenant_id = p_tenant_id AND name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'field "%" not found', left(coalesce(p_name, ''), 80) USING ERRCODE = 'PW233',
            HINT = 'List the fields with api.contact_fields().';
    END IF;
    RETURN p_name;
END
$$;

COMMENT ON FUNCTION api.delete_contact_field(p_tenant_id bigint, p_name text) IS 'Deletes a custom field''s definition; contacts keep its values as plain attributes, and segments naming it no longer compile. Returns the name. Raises PW233 when not found.';

CREATE FUNCTION api.delete_event_endpoint(p_tenant_id bigint, p_endpoint_id bigint) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    DELETE FROM core.event_endpoints WHERE endpoint_id = p_endpoint_id AND tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event endpoint % not found', p_endpoint_id USING ERRCODE = 'PW230',
            HINT = 'List the tenant''s endpoints with GET /v1/endpoints.';
    END IF;
    PERFORM pgmq.drop_queue(core.event_queue(p_endpoint_id));
    RETURN p_endpoint_id;
END
$$;

COMMENT ON FUNCTION api.delete_event_endpoint(p_tenant_id bigint, p_endpoint_id bigint) IS 'Deletes one of the tenant''s event endpoints with its queue and its deliveries (nothing more is sent to it); returns its id. Raises PW230 when the tenant has no such endpoint.';

CREATE FUNCTION api.delete_segment(p_tenant_id bigint, p_segment_id bigint) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    DELETE FROM core.segments WHERE segment_id = p_segment_id AND tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'segment % not found', p_segment_id USING ERRCODE = 'PW232',
            HINT = 'List the tenant''s segments with api.segments().';
    END IF;
    RETURN p_segment_id;
END
$$;

COMMENT ON FUNCTION api.delete_segment(p_tenant_id bigint, p_segment_id bigint) IS 'Deletes a saved segment (campaigns made from it keep their recipients); returns its id. Raises PW232 when not found.';

CREATE FUNCTION api.disable_user(p_tenant_id bigint, p_user_id bigint, p_now timestamp with time zone DEFAULT now()) RETURNS api.dashboard_user
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_user core.dashboard_users;
BEGIN
    SELECT * INTO v_user FROM core.dashboard_users WHERE user_id = p_user_id AND tenant_id = p_tenant_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % not found', p_user_id USING ERRCODE = 'PW260',
            HINT = 'List the tenant''s users with api.dashboard_users().';
    END IF;
    IF v_user.role = 'admin' AND v_user.disabled_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM core.dashboard_users WHERE tenant_id = p_tenant_id AND role = 'admin'
                       AND disabled_at IS NULL AND user_id <> p_user_id) THEN
        RAISE EXCEPTION 'user % is the tenant''s last admin', p_user_id USING ERRCODE = 'PW301',
            HINT = 'Make another user admin first.';
    END IF;
    UPDATE core.dashboard_users SET disabled_at = coalesce(disabled_at, p_now) WHERE user_id = p_user_id
    RETURNING * INTO v_user;
    UPDATE core.dashboard_sessions SET revoked_at = p_now WHERE user_id = p_user_id AND revoked_at IS NULL;
    RETURN core.dashboard_user_row(v_user);
END
$$;

COMMENT ON FUNCTION api.disable_user(p_tenant_id bigint, p_user_id bigint, p_now timestamp with time zone) IS 'Disables one of the tenant''s dashboard users (idempotent) and ends their sessions at once. Returns the user. Raises PW260 when the tenant has no such user, PW301 for the tenant''s last enabled admin.';

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

CREATE FUNCTION api.event_endpoints(p_tenant_id bigint) RETURNS SETOF api.event_endpoint
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT e.endpoint_id, e.url,
           ARRAY(SELECT s.event_type FROM core.event_subscriptions s WHERE s.endpoint_id = e.endpoint_id
                 ORDER BY s.event_type),
           e.description, e.created_at, e.failures, e.retry_at,
           (SELECT count(*) FROM core.event_deliveries d WHERE d.endpoint_id = e.endpoint_id AND d.status = 'pending')
    FROM core.event_endpoints e WHERE e.tenant_id = p_tenant_id
    ORDER BY e.endpoint_id
$$;

COMMENT ON FUNCTION api.event_endpoints(p_tenant_id bigint) IS 'Lists the tenant''s event endpoints: URL, event types, consecutive failures, when a failing one is tried next, deliveries pending; never their secrets.';

CREATE FUNCTION api.event_policy() RETURNS api.event_policy
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT s.event_timeout_ms, s.event_lane_concurrency, s.event_allow_private_urls FROM core.settings s
$$;

COMMENT ON FUNCTION api.event_policy() IS 'Returns what the event worker must know: how long to wait for an endpoint (timeout_ms), how many deliveries to one endpoint it may have in flight (lane_concurrency), and whether endpoints may be on private addresses.';

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

CREATE FUNCTION api.import_contacts_mapped(p_tenant_id bigint, p_mapping jsonb, p_default_country_code text DEFAULT NULL::text, p_on_invalid text DEFAULT 'skip'::text) RETURNS api.contacts_mapped_import
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    SET client_min_messages TO 'warning'
    SET work_mem TO '256MB'
    AS $$
DECLARE
    v_fields jsonb := coalesce(p_mapping->'fields', '{}');
    v_tag_columns text[];
    v_tags text[];
    v_missing text;
    v_imported api.contacts_imported;
    v_result api.contacts_mapped_import;
BEGIN
    IF jsonb_typeof(p_mapping) IS DISTINCT FROM 'object' OR jsonb_typeof(v_fields) <> 'object'
       OR jsonb_typeof(coalesce(p_mapping->'tag_columns', '[]')) <> 'array' OR jsonb_typeof(coalesce(p_mapping->'tags', '[]')) <> 'array'
       OR EXISTS (SELECT FROM jsonb_object_keys(p_mapping) k WHERE k NOT IN ('fields', 'tag_columns', 'tags'))
       OR EXISTS (SELECT FROM jsonb_each(v_fields) e WHERE jsonb_typeof(e.value) <> 'string') THEN
        RAISE EXCEPTION 'mapping must be {"fields": {"column": "field"}, "tag_columns": ["column"], "tags": ["tag"]}'
            USING ERRCODE = 'PW100', HINT = 'Every key is optional; column names as in the CSV header (lower case).';
    END IF;
    v_tag_columns := ARRAY(SELECT jsonb_array_elements_text(coalesce(p_mapping->'tag_columns', '[]')));
    v_tags := core.clean_tags(ARRAY(SELECT jsonb_array_elements_text(coalesce(p_mapping->'tags', '[]'))), 'mapping.tags');
    SELECT e.value #>> '{}' INTO v_missing FROM jsonb_each(v_fields) e
    WHERE NOT EXISTS (SELECT FROM core.contact_fields f WHERE f.tenant_id = p_tenant_id AND f.name = e.value #>> '{}') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'mapping.fields names the field "%", which is not defined', left(v_missing, 80) USING ERRCODE = 'PW233',
            HINT = 'Define it with api.define_contact_field() first.';
    END IF;
    PERFORM core.staged_count();

    -- Each mapped value, checked; the staged rows then carry the typed values under the
    -- fields' names (bad values dropped), and no longer the mapped or tag columns.
    DROP TABLE IF EXISTS pg_temp.mapped_values;
    CREATE TEMP TABLE mapped_values ON COMMIT DROP AS
    SELECT s.row_no, m.key AS column_name, m.value #>> '{}' AS field, s.attributes->m.key AS raw, v.value, v.problem
    FROM pg_temp.staged_contacts s
    CROSS JOIN jsonb_each(v_fields) m
    JOIN core.contact_fields f ON f.tenant_id = p_tenant_id AND f.name = m.value #>> '{}'
    CROSS JOIN LATERAL core.field_value(f.type, s.attributes->m.key) v
    WHERE coalesce(btrim(s.attributes->>m.key), '') <> '';
    v_result.skipped_values := coalesce((
        SELECT jsonb_agg(jsonb_build_object('row', row_no, 'column', column_name, 'value', raw, 'reason',
                                            format('%s (field %s)', problem, field)) ORDER BY row_no, column_name)
        FROM (SELECT * FROM pg_temp.mapped_values WHERE problem IS NOT NULL ORDER BY row_no, column_name LIMIT 1000) b), '[]');
    IF p_on_invalid = 'reject' AND v_result.skipped_values <> '[]' THEN
        RAISE EXCEPTION '% values do not fit their fields; first: row %, column "%": %',
            (SELECT count(*) FROM pg_temp.mapped_values WHERE problem IS NOT NULL), v_result.skipped_values->0->>'row',
            v_result.skipped_values->0->>'column', v_result.skipped_values->0->>'reason'
            USING ERRCODE = 'PW133', DETAIL = left(v_result.skipped_values::text, 100000),
                  HINT = 'Fix the values, or pass on_invalid => ''skip'' to import the rows without them.';
    END IF;
    DROP TABLE IF EXISTS pg_temp.mapped_tags;
    CREATE TEMP TABLE mapped_tags ON COMMIT DROP AS
    SELECT s.row_no, core.normalize_phone(s.phone, p_default_country_code) AS wa_id,
           ARRAY(SELECT DISTINCT btrim(t) FROM unnest(v_tag_columns) tc,
                 regexp_split_to_table(coalesce(s.attributes->>tc, ''), '[,;|]') t
                 WHERE length(btrim(t)) BETWEEN 1 AND 64 AND t !~ '[[:cntrl:]]') || v_tags AS tags
    FROM pg_temp.staged_contacts s;
    UPDATE pg_temp.staged_contacts s
    SET attributes = (s.attributes - ARRAY(SELECT jsonb_object_keys(v_fields)) - v_tag_columns)
                     || coalesce((SELECT jsonb_object_agg(m.field, m.value) FROM pg_temp.mapped_values m
                                  WHERE m.row_no = s.row_no AND m.problem IS NULL), '{}');

    v_imported := api.import_contacts(p_tenant_id, p_default_country_code, p_on_invalid);
    -- Tags of the rows imported (the first row of a phone, as the import keeps it).
    WITH t AS (
        SELECT DISTINCT ON (wa_id) wa_id, tags FROM pg_temp.mapped_tags
        WHERE wa_id IS NOT NULL AND cardinality(tags) > 0 ORDER BY wa_id, row_no
    ), tagged AS (
        UPDATE core.contacts c SET tags = (ARRAY(SELECT DISTINCT x FROM unnest(c.tags || t.tags) x ORDER BY 1))[1:100],
                                   updated_at = now()
        FROM t WHERE c.tenant_id = p_tenant_id AND c.wa_id = t.wa_id AND NOT c.tags @> t.tags
        RETURNING 1
    )
    SELECT count(*) INTO v_result.tagged FROM tagged;
    v_result.staged := v_imported.staged;
    v_result.inserted := v_imported.inserted;
    v_result.updated := v_imported.updated;
    v_result.unchanged := v_imported.unchanged;
    v_result.skipped_invalid := v_imported.skipped_invalid;
    v_result.duplicates_removed := v_imported.duplicates_removed;
    v_result.invalid_rows := v_imported.invalid_rows;
    RETURN v_result;
END
$$;

COMMENT ON FUNCTION api.import_contacts_mapped(p_tenant_id bigint, p_mapping jsonb, p_default_country_code text, p_on_invalid text) IS 'Imports the contacts staged by api.stage_contacts as api.import_contacts does, mapping CSV columns to custom fields (p_mapping.fields: each value checked against its field''s type) and to tags (p_mapping.tag_columns split on , ; or |, and p_mapping.tags on every row). Returns api.import_contacts''s counts and invalid rows, the values skipped per row (row, column, value, reason: the row is imported without them) and how many contacts were tagged. Raises PW100 for a malformed mapping, PW233 for an undefined field, PW133 (p_on_invalid reject) for a value that does not fit, and what api.import_contacts raises.';

CREATE FUNCTION api.inbox_assignees(p_tenant_id bigint) RETURNS SETOF api.dashboard_user
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    RETURN QUERY
    SELECT (core.dashboard_user_row(u)).* FROM core.dashboard_users u
    WHERE u.tenant_id = p_tenant_id AND u.disabled_at IS NULL
      AND EXISTS (SELECT 1 FROM core.dashboard_role_actions a WHERE a.role = u.role AND a.action = 'inbox.reply')
    ORDER BY u.email;
END
$$;

COMMENT ON FUNCTION api.inbox_assignees(p_tenant_id bigint) IS 'The tenant''s enabled dashboard users a conversation can be assigned to (roles holding inbox.reply: agents and admins), by e-mail.';

CREATE FUNCTION api.inbox_conversation(p_tenant_id bigint, p_user_id bigint, p_number_id bigint, p_contact_id bigint, p_now timestamp with time zone DEFAULT now()) RETURNS api.conversation_summary
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_user core.dashboard_users := core.inbox_user(p_tenant_id, p_user_id);
    v_row api.conversation_summary;
BEGIN
    PERFORM core.number_for(p_tenant_id, p_number_id);
    SELECT * INTO v_row FROM core.inbox_rows(p_tenant_id, v_user, p_number_id, p_contact_id, 'all', NULL, 1, p_now);
    IF v_row.contact_id IS NULL THEN
        RAISE EXCEPTION 'no conversation between number % and contact % for this user', p_number_id, p_contact_id
            USING ERRCODE = 'PW209', HINT = 'List the number''s conversations with api.inbox_conversations().';
    END IF;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION api.inbox_conversation(p_tenant_id bigint, p_user_id bigint, p_number_id bigint, p_contact_id bigint, p_now timestamp with time zone) IS 'One conversation as api.inbox_conversations shows it to the user (the thread''s header: window, assignment, hand-over, unread). Raises PW209 when there is no such conversation of the tenant, or it is another agent''s and the user an agent; PW202 for a number not the tenant''s, PW260 for a user not the tenant''s.';

CREATE FUNCTION api.inbox_conversations(p_tenant_id bigint, p_user_id bigint, p_number_id bigint, p_filter text DEFAULT 'all'::text, p_search text DEFAULT NULL::text, p_limit integer DEFAULT 50, p_now timestamp with time zone DEFAULT now()) RETURNS SETOF api.conversation_summary
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_user core.dashboard_users := core.inbox_user(p_tenant_id, p_user_id);
    v_search text := nullif(btrim(coalesce(p_search, '')), '');
BEGIN
    PERFORM core.number_for(p_tenant_id, p_number_id);
    IF p_filter IS NULL OR p_filter NOT IN ('all', 'mine', 'unassigned', 'needs_human', 'unread') THEN
        RAISE EXCEPTION 'filter must be all, mine, unassigned, needs_human or unread, not "%"', left(p_filter, 40)
            USING ERRCODE = 'PW167', HINT = 'mine: assigned to you; an agent''s "all" is theirs and the unassigned queue.';
    END IF;
    IF length(v_search) > 100 THEN
        RAISE EXCEPTION 'search is % characters; at most 100', length(v_search)
            USING ERRCODE = 'PW167', HINT = 'Search a phone number, a name or words of a message.';
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 500 THEN
        RAISE EXCEPTION 'limit % is out of range', p_limit USING ERRCODE = 'PW100', HINT = 'Ask for 1 to 500 conversations.';
    END IF;
    RETURN QUERY SELECT * FROM core.inbox_rows(p_tenant_id, v_user, p_number_id, NULL, p_filter,
        '%' || replace(replace(replace(v_search, '\', '\\'), '%', '\%'), '_', '\_') || '%', p_limit, p_now);
END
$$;

COMMENT ON FUNCTION api.inbox_conversations(p_tenant_id bigint, p_user_id bigint, p_number_id bigint, p_filter text, p_search text, p_limit integer, p_now timestamp with time zone) IS 'A number''s conversations as one dashboard user sees them, latest first (as api.conversations, but unread counts the inbound messages after that user''s own read mark, up to 100): p_filter all, mine (assigned to the user), unassigned, needs_human (a bot or the LLM handed over) or unread; p_search a substring of the contact''s phone, name or profile name or of a message''s text. An agent sees only the conversations assigned to them and the unassigned queue. Raises PW167 for a bad filter or a search over 100 characters, PW100 for a limit outside 1..500, PW260 for a user not the tenant''s, PW202 for a number not the tenant''s.';

CREATE FUNCTION api.inbox_media_content(p_tenant_id bigint, p_user_id bigint, p_number_id bigint, p_contact_id bigint, p_media_id bigint) RETURNS api.media_content
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_user core.dashboard_users := core.inbox_user(p_tenant_id, p_user_id);
BEGIN
    PERFORM 1
    FROM core.media m
    JOIN core.conversations v ON v.number_id = p_number_id AND v.contact_id = p_contact_id
    JOIN core.contacts c ON c.contact_id = v.contact_id AND c.tenant_id = p_tenant_id
    WHERE m.media_id = p_media_id AND m.tenant_id = p_tenant_id AND m.number_id = p_number_id
      AND (v_user.role <> 'agent' OR v.assigned_to IS NULL OR v.assigned_to = v_user.email)
      AND EXISTS (SELECT 1 FROM core.inbox_messages i
                  WHERE i.number_id = p_number_id AND i.contact_id = p_contact_id
                    AND (i.message_id = m.message_id
                         OR (m.direction = 'out' AND i.direction = 'out'
                             AND i.payload -> i.type ->> 'id' = m.meta_media_id)));
    IF NOT FOUND THEN
        RAISE EXCEPTION 'media % not found in this conversation', p_media_id
            USING ERRCODE = 'PW245',
                  HINT = 'A file is served in the conversation that shows it; agents see their own conversations and the unassigned queue.';
    END IF;
    RETURN api.media_content(p_tenant_id, p_media_id);
END
$$;

COMMENT ON FUNCTION api.inbox_media_content(p_tenant_id bigint, p_user_id bigint, p_number_id bigint, p_contact_id bigint, p_media_id bigint) IS 'As api.media_content, for a dashboard user in one conversation: the file of one of its inbound messages, or one sent by its Meta id in one of its replies; an agent only in a conversation assigned to them or unassigned. Raises PW245 (not found) when the media is not the tenant''s, not in that conversation, or the conversation is another agent''s; PW301 when no file is stored; PW260 for a user not the tenant''s.';

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

CREATE FUNCTION api.invitation(p_token_hash bytea, p_now timestamp with time zone DEFAULT now()) RETURNS api.dashboard_invitation
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_result api.dashboard_invitation;
BEGIN
    SELECT invitation_id, tenant_id, email, role, created_at, expires_at, accepted_at, revoked_at INTO v_result
    FROM core.dashboard_invitations
    WHERE token_hash = p_token_hash AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > p_now;
    IF v_result.invitation_id IS NULL THEN
        RAISE EXCEPTION 'the invitation is unknown, used or expired' USING ERRCODE = 'PW260',
            HINT = 'Ask an admin of the workspace for a new invitation.';
    END IF;
    RETURN v_result;
END
$$;

COMMENT ON FUNCTION api.invitation(p_token_hash bytea, p_now timestamp with time zone) IS 'The open invitation whose link token has sha256 p_token_hash (for the accept page: its e-mail and role). Raises PW260 when it is unknown, already used, revoked or expired.';

CREATE FUNCTION api.invite_user(p_tenant_id bigint, p_email text, p_role text, p_token_hash bytea, p_now timestamp with time zone DEFAULT now()) RETURNS api.dashboard_invitation
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_email text := core.dashboard_email(p_email);
    v_result api.dashboard_invitation;
BEGIN
    PERFORM core.dashboard_check(coalesce(p_role, ''), NULL, coalesce(p_token_hash, ''::bytea));
    IF NOT EXISTS (SELECT 1 FROM core.tenants WHERE tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'tenant % does not exist', p_tenant_id USING ERRCODE = 'PW205',
            HINT = 'Create the tenant first (pgwa tenant create).';
    END IF;
    IF EXISTS (SELECT 1 FROM core.dashboard_users WHERE tenant_id = p_tenant_id AND email = v_email) THEN
        RAISE EXCEPTION 'a user with e-mail % already exists in this tenant', v_email USING ERRCODE = 'PW302',
            HINT = 'Change that user''s role instead.';
    END IF;
    -- Inviting an e-mail again replaces its open invitation: only the newest link (and its
    -- role) works. One invitation at a time per e-mail and tenant.
    PERFORM pg_advisory_xact_lock(hashtextextended('pgwa.invite:' || p_tenant_id || ':' || v_email, 0));
    UPDATE core.dashboard_invitations SET revoked_at = p_now
    WHERE tenant_id = p_tenant_id AND email = v_email AND accepted_at IS NULL AND revoked_at IS NULL;
    INSERT INTO core.dashboard_invitations (tenant_id, email, role, token_hash, created_at, expires_at)
    SELECT p_tenant_id, v_email, p_role, p_token_hash, p_now, p_now + s.dashboard_invitation_ttl FROM core.settings s
    RETURNING invitation_id, tenant_id, email, role, created_at, expires_at, accepted_at, revoked_at INTO v_result;
    RETURN v_result;
END
$$;

COMMENT ON FUNCTION api.invite_user(p_tenant_id bigint, p_email text, p_role text, p_token_hash bytea, p_now timestamp with time zone) IS 'Invites an e-mail into the tenant with a role: stores the sha256 of the link''s random token (made by the caller, sent to the invitee, never stored), expiring after core.settings.dashboard_invitation_ttl; an open invitation of the same e-mail is revoked (only the newest link works). Returns the invitation. Raises PW100 for a bad e-mail, role or hash, PW205 for an unknown tenant, PW302 when the e-mail is already a user of the tenant.';

CREATE FUNCTION api.keep_numbers(p_worker text, p_phone_number_ids text[], p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS text[]
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

COMMENT ON FUNCTION api.keep_numbers(p_worker text, p_phone_number_ids text[], p_now timestamp with time zone) IS 'Keeps worker p_worker the sender of the numbers p_phone_number_ids (Meta''s phone number ids) for a pace horizon from p_now (NULL: the clock), so that a worker behind its schedule sends what it still holds instead of handing it back when its hold ends (api.claim_sends renews a hold only with a claim that takes messages). Only numbers p_worker is still the sender of are kept, and none that another transaction holds locked (never waited for; ask again); returns the ids kept. Raises PW100 when p_worker is empty or for more than 10000 ids.';

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

CREATE FUNCTION api.mark_conversation_read(p_tenant_id bigint, p_user_id bigint, p_number_id bigint, p_contact_id bigint, p_now timestamp with time zone DEFAULT now()) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_user core.dashboard_users := core.inbox_user(p_tenant_id, p_user_id);
    v_before integer;
BEGIN
    PERFORM core.conversation_for(p_tenant_id, p_number_id, p_contact_id);
    SELECT s.unread INTO v_before FROM core.inbox_rows(p_tenant_id, v_user, p_number_id, p_contact_id, 'all', NULL, 1, p_now) s;
    -- Up to the newest message; a mark never moves back (two tabs, out of order).
    INSERT INTO core.conversation_reads AS r (user_id, number_id, contact_id, read_up_to_at, read_up_to_id, read_at)
    SELECT v_user.user_id, i.number_id, i.contact_id, i.created_at, i.message_id, p_now
    FROM core.inbox_messages i
    WHERE i.number_id = p_number_id AND i.contact_id = p_contact_id
    ORDER BY i.created_at DESC, i.message_id DESC
    LIMIT 1
    ON CONFLICT (user_id, number_id, contact_id) DO UPDATE SET
        read_up_to_at = excluded.read_up_to_at, read_up_to_id = excluded.read_up_to_id, read_at = excluded.read_at
    WHERE (r.read_up_to_at, r.read_up_to_id) < (excluded.read_up_to_at, excluded.read_up_to_id);
    RETURN coalesce(v_before, 0);
END
$$;

COMMENT ON FUNCTION api.mark_conversation_read(p_tenant_id bigint, p_user_id bigint, p_number_id bigint, p_contact_id bigint, p_now timestamp with time zone) IS 'Moves one dashboard user''s read mark on a conversation to its newest message (never back): their unread count drops to zero, other users'' stay. Meta''s read receipt is api.mark_read''s. Returns how many inbound messages were unread for the user. Raises PW260 for a user not the tenant''s, PW202/PW209 for a number or conversation not the tenant''s.';

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

CREATE FUNCTION api.media(p_tenant_id bigint, p_number_id bigint DEFAULT NULL::bigint, p_direction text DEFAULT NULL::text, p_before_id bigint DEFAULT NULL::bigint, p_limit integer DEFAULT 50) RETURNS SETOF api.media_file
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    IF p_number_id IS NOT NULL THEN
        PERFORM core.number_for(p_tenant_id, p_number_id);
    END IF;
    IF p_direction IS NOT NULL AND p_direction NOT IN ('in', 'out') THEN
        RAISE EXCEPTION 'direction must be in or out, not "%"', p_direction USING ERRCODE = 'PW100',
            HINT = 'out: files uploaded to Meta; in: files contacts sent.';
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'limit % is out of range', p_limit USING ERRCODE = 'PW100', HINT = 'Ask for 1 to 1000 files a page.';
    END IF;
    RETURN QUERY
    SELECT (core.media_row(m)).* FROM core.media m
    WHERE m.tenant_id = p_tenant_id
      AND (p_number_id IS NULL OR m.number_id = p_number_id)
      AND (p_direction IS NULL OR m.direction = p_direction)
      AND m.media_id < coalesce(p_before_id, 9223372036854775807)
    ORDER BY m.media_id DESC
    LIMIT p_limit;
END
$$;

COMMENT ON FUNCTION api.media(p_tenant_id bigint, p_number_id bigint, p_direction text, p_before_id bigint, p_limit integer) IS 'Lists the tenant''s media, newest first: files uploaded to Meta (direction out, with their Meta id and expiry) and files contacts sent (direction in, with their download state: pending, stored, failed and why). Optionally one number''s, one direction''s; keyset on media_id (p_before_id). Raises PW100 for a bad direction or limit (1..1000), PW202 when the number is not the tenant''s.';

CREATE FUNCTION api.media_content(p_tenant_id bigint, p_media_id bigint) RETURNS api.media_content
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_media core.media;
BEGIN
    SELECT * INTO v_media FROM core.media m WHERE m.media_id = p_media_id AND m.tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'media % not found', p_media_id
            USING ERRCODE = 'PW245', HINT = 'List the tenant''s media with GET /v1/media.';
    END IF;
    IF v_media.storage_key IS NULL THEN
        RAISE EXCEPTION 'media % has no stored file (%)', p_media_id,
            CASE v_media.state WHEN 'pending' THEN 'its download is pending'
                               WHEN 'failed' THEN 'its download failed: ' || coalesce(v_media.last_error, 'unknown')
                               ELSE 'only Meta holds it' END
            USING ERRCODE = 'PW301', HINT = 'A pending file is downloaded within minutes; see GET /v1/media.';
    END IF;
    RETURN ROW(v_media.media_id, v_media.mime_type, v_media.size_bytes, v_media.filename,
               v_media.storage_key)::api.media_content;
END
$$;

COMMENT ON FUNCTION api.media_content(p_tenant_id bigint, p_media_id bigint) IS 'Where the media store keeps one of the tenant''s files (for GET /v1/media/{id}/content, which streams it), with its MIME type, size and file name. Raises PW245 when the media is not the tenant''s, PW301 when no file is stored (download pending or failed, or an upload kept only at Meta).';

CREATE TABLE core.media_types (
    mime_type text NOT NULL,
    media_type text NOT NULL,
    max_bytes bigint NOT NULL,
    CONSTRAINT media_types_max_bytes_valid CHECK ((max_bytes > 0)),
    CONSTRAINT media_types_media_type_valid CHECK ((media_type = ANY (ARRAY['image'::text, 'audio'::text, 'video'::text, 'document'::text, 'sticker'::text]))),
    CONSTRAINT media_types_mime_lower CHECK ((mime_type = lower(mime_type)))
);

COMMENT ON TABLE core.media_types IS 'Meta''s supported media: MIME type, the media type it is sent as, and the largest file Meta accepts (reference §1.4).';

CREATE FUNCTION api.media_types() RETURNS SETOF core.media_types
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT * FROM core.media_types ORDER BY media_type, mime_type
$$;

COMMENT ON FUNCTION api.media_types() IS 'Meta''s supported media: each MIME type, the media type it is sent as (image, audio, video, document, sticker) and the largest file Meta accepts, in bytes. Uploads and inbound downloads are checked against these rows.';

CREATE FUNCTION api.message(p_tenant_id bigint, p_outbound_id bigint) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_out jsonb;
BEGIN
    SELECT jsonb_build_object(
               'outbound_id', o.outbound_id, 'number_id', o.number_id, 'contact_id', o.contact_id,
               'recipient', coalesce(c.wa_id, c.user_id), 'kind', o.kind, 'campaign_id', o.campaign_id,
               'state', o.state, 'wamid', o.wamid, 'attempts', o.attempts,
               'error', CASE WHEN o.error_code IS NOT NULL THEN jsonb_build_object(
                   'code', o.error_code, 'category', o.error_category, 'title', e.title, 'detail', o.error_detail) END,
               'idempotency_key', s.idempotency_key,
               -- Each state the message reached, oldest first (a read message was also
               -- delivered even when Meta's delivered status never came).
               'history', (SELECT coalesce(jsonb_agg(jsonb_build_object('state', h.state, 'at', h.at) ORDER BY h.at, h.n), '[]')
                           FROM (VALUES (1, 'queued', o.queued_at), (2, 'claimed', o.claimed_at),
                                        (3, 'accepted', o.accepted_at), (4, 'sent', o.sent_at),
                                        (5, 'delivered', o.delivered_at), (6, 'read', o.read_at),
                                        (7, 'failed', o.failed_at), (8, 'replied', o.replied_at)) h(n, state, at)
                           WHERE h.at IS NOT NULL))
    INTO v_out
    FROM core.outbound_messages o
    JOIN core.wa_numbers n ON n.number_id = o.number_id
    JOIN core.contacts c ON c.contact_id = o.contact_id
    LEFT JOIN core.meta_error_codes e ON e.code = o.error_code
    LEFT JOIN core.api_sends s ON s.outbound_id = o.outbound_id
    WHERE o.outbound_id = p_outbound_id AND n.tenant_id = p_tenant_id;
    IF v_out IS NULL THEN
        RAISE EXCEPTION 'message % not found', p_outbound_id
            USING ERRCODE = 'PW210', HINT = 'Use the outbound_id that api.send_message (POST /v1/messages) returned.';
    END IF;
    RETURN v_out;
END
$$;

COMMENT ON FUNCTION api.message(p_tenant_id bigint, p_outbound_id bigint) IS 'One of the tenant''s outbound messages (sent through the send API, a campaign, a bot or an agent): recipient, kind, state, Meta''s wamid, attempts, the error with its title, the idempotency key it was sent with, and its history (each state reached with its time, oldest first). Raises PW210 when the tenant has no such message.';

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

CREATE FUNCTION api.open_campaign_recipients(p_tenant_id bigint, p_campaign_id bigint, p_format text DEFAULT 'csv'::text, p_cursor text DEFAULT 'campaign_recipients'::text) RETURNS refcursor
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    SET cursor_tuple_fraction TO '1'
    AS $_$
DECLARE
    v_cursor refcursor := p_cursor;
    v_columns text[] := ARRAY['outbound_id', 'contact_id', 'phone', 'user_id', 'name', 'variant', 'template', 'language',
                              'state', 'replied', 'attempts', 'error_code', 'error_title', 'error_detail', 'queued_at',
                              'accepted_at', 'sent_at', 'delivered_at', 'read_at', 'failed_at', 'replied_at'];
    v_exprs text[] := ARRAY['o.outbound_id::text', 'o.contact_id::text', 'c.wa_id', 'c.user_id', 'c.name', 'o.variant::text',
                            't.name', 't.language', 'o.state', '(o.replied_at IS NOT NULL)::text', 'o.attempts::text',
                            'o.error_code::text', 'e.title', 'o.error_detail', 'o.queued_at', 'o.accepted_at', 'o.sent_at',
                            'o.delivered_at', 'o.read_at', 'o.failed_at', 'o.replied_at'];
    v_line text;
    v_header text;
BEGIN
    IF p_format IS NULL OR p_format NOT IN ('csv', 'json') THEN
        RAISE EXCEPTION 'format must be csv or json, not "%"', left(coalesce(p_format, ''), 20) USING ERRCODE = 'PW100',
            HINT = 'csv: a header line, then a line per recipient; json: one JSON object per line.';
    END IF;
    IF p_cursor IS NULL OR p_cursor !~ '^[a-z_][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'cursor name "%" is not a lower-case identifier', left(coalesce(p_cursor, ''), 80)
            USING ERRCODE = 'PW100', HINT = 'e.g. campaign_recipients';
    END IF;
    IF NOT EXISTS (SELECT FROM core.campaigns WHERE campaign_id = p_campaign_id AND tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'campaign % not found', p_campaign_id
            USING ERRCODE = 'PW201', HINT = 'List the tenant''s campaigns with api.campaigns().';
    END IF;
    IF p_format = 'csv' THEN
        SELECT string_agg(CASE WHEN n ~ '_at$' THEN 'coalesce(' || core.iso_time(x) || ', '''')'
                               WHEN x IN ('c.wa_id', 'c.user_id', 'c.name', 't.name', 't.language', 'e.title', 'o.error_detail')
                                   THEN core.csv_text(x)
                               ELSE 'coalesce(' || x || ', '''')' END, ' || '','' || ' ORDER BY i)
        INTO v_line
        FROM unnest(v_columns, v_exprs) WITH ORDINALITY u(n, x, i);
        v_header := array_to_string(v_columns, ',');
    ELSE
        SELECT 'json_build_object(' || string_agg(format('%L, %s', n, CASE WHEN n ~ '_at$' THEN core.iso_time(x)
                                                                           WHEN n IN ('outbound_id', 'contact_id', 'variant', 'attempts', 'error_code') THEN x || '::bigint'
                                                                           WHEN n = 'replied' THEN x || '::boolean'
                                                                           ELSE x END), ', ' ORDER BY i) || ')::text'
        INTO v_line
        FROM unnest(v_columns, v_exprs) WITH ORDINALITY u(n, x, i);
    END IF;
    -- In queue order as stored; no sort, so the first lines leave at once and the server
    -- holds no more than a fetch of them.
    OPEN v_cursor NO SCROLL FOR EXECUTE
        CASE WHEN v_header IS NOT NULL THEN format('SELECT %L::text AS line UNION ALL ', v_header) ELSE '' END ||
        format('SELECT %s AS line
                FROM core.outbound_messages o
                LEFT JOIN core.contacts c ON c.contact_id = o.contact_id
                LEFT JOIN core.campaign_templates ct ON ct.campaign_id = o.campaign_id AND ct.variant = o.variant
                LEFT JOIN core.templates t ON t.template_id = ct.template_id
                LEFT JOIN core.meta_error_codes e ON e.code = o.error_code
                WHERE o.campaign_id = $1', v_line)
        USING p_campaign_id;
    RETURN v_cursor;
END
$_$;

COMMENT ON FUNCTION api.open_campaign_recipients(p_tenant_id bigint, p_campaign_id bigint, p_format text, p_cursor text) IS 'Opens, in the caller''s transaction, the cursor p_cursor over every recipient of a campaign, one text line each: p_format csv (a header line first; text fields quoted, times ISO 8601 UTC) or json (one object per line): outbound and contact ids, phone, name, template, final state, replied, attempts, Meta error code, title and detail, and the queued, accepted, sent, delivered, read, failed and replied times. FETCH from it to stream the report in constant memory. Returns the cursor''s name. Raises PW100 for a bad format or cursor name, PW201 when the campaign is not the tenant''s.';

CREATE FUNCTION api.open_contacts_export(p_tenant_id bigint, p_segment_id bigint DEFAULT NULL::bigint, p_filter jsonb DEFAULT NULL::jsonb, p_cursor text DEFAULT 'contacts_export'::text, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS refcursor
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    SET cursor_tuple_fraction TO '1'
    AS $_$
DECLARE
    v_cursor refcursor := p_cursor;
    v core.compiled_segment;
    v_fields text[];
    v_header text;
    v_line text;
BEGIN
    IF p_cursor IS NULL OR p_cursor !~ '^[a-z_][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'cursor name "%" is not a lower-case identifier', left(coalesce(p_cursor, ''), 80)
            USING ERRCODE = 'PW100', HINT = 'e.g. contacts_export';
    END IF;
    IF NOT EXISTS (SELECT FROM core.tenants WHERE tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'tenant % does not exist', p_tenant_id USING ERRCODE = 'PW205', HINT = 'Create the tenant first.';
    END IF;
    v := CASE WHEN p_segment_id IS NULL AND p_filter IS NULL THEN ROW('true', '{}', '{}', '{}', '{}')::core.compiled_segment
              ELSE core.compile_segment(p_tenant_id, core.segment_filter(p_tenant_id, p_segment_id, p_filter, NULL), p_now) END;
    -- One column per custom field, by name; the field names reach the query only as $6.
    v_fields := ARRAY(SELECT f.name FROM core.contact_fields f WHERE f.tenant_id = p_tenant_id ORDER BY f.name);
    v_header := array_to_string(ARRAY['contact_id', 'phone', 'user_id', 'name', 'tags', 'opted_out', 'last_inbound_at',
                                      'created_at'] || v_fields, ',');
    v_line := 'c.contact_id::text || '','' || coalesce(c.wa_id, '''') || '','' || ' || core.csv_text('c.user_id') || ' || '','' || '
              || core.csv_text('c.name') || ' || '','' || ' || core.csv_text('array_to_string(c.tags, '';'')') || ' || '','' || '
              || 'c.opted_out::text || '','' || coalesce(' || core.iso_time('c.last_inbound_at') || ', '''') || '','' || '
              || core.iso_time('c.created_at')
              || coalesce((SELECT string_agg(' || '','' || ' || core.csv_text(format('(c.attributes->>$6[%s])', i)), '' ORDER BY i)
                           FROM generate_subscripts(v_fields, 1) i), '');
    OPEN v_cursor NO SCROLL FOR EXECUTE
        format('SELECT %L::text AS line UNION ALL
                SELECT %s FROM core.contacts c WHERE c.tenant_id = $5 AND %s', v_header, v_line, v.sql)
        USING v.texts, v.numbers, v.times, v.ids, p_tenant_id, v_fields;
    RETURN v_cursor;
END
$_$;

COMMENT ON FUNCTION api.open_contacts_export(p_tenant_id bigint, p_segment_id bigint, p_filter jsonb, p_cursor text, p_now timestamp with time zone) IS 'Opens, in the caller''s transaction, the cursor p_cursor over the tenant''s contacts (all, or a saved segment''s, or an inline filter''s) as CSV lines: a header, then contact_id, phone, user_id, name, tags (separated by ;), opted_out, last_inbound_at, created_at and one column per custom field. FETCH from it to stream the export in constant memory. Returns the cursor''s name. Raises PW100 for a bad cursor name, PW205 for an unknown tenant, and what a segment filter raises.';

CREATE FUNCTION api.outbound_events(p_tenant_id bigint, p_endpoint_id bigint DEFAULT NULL::bigint, p_status text DEFAULT NULL::text, p_before_id bigint DEFAULT NULL::bigint, p_limit integer DEFAULT 50) RETURNS SETOF api.outbound_event
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    IF p_status NOT IN ('pending', 'delivered', 'dead') THEN
        RAISE EXCEPTION 'status % is not one of pending, delivered, dead', p_status USING ERRCODE = 'PW100',
            HINT = 'Leave it out for every status.';
    END IF;
    IF NOT coalesce(p_limit BETWEEN 1 AND 1000, false) THEN
        RAISE EXCEPTION 'limit % is outside 1..1000', p_limit USING ERRCODE = 'PW100',
            HINT = 'Page with before_id: pass the smallest event_id of the previous page.';
    END IF;
    IF p_endpoint_id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM core.event_endpoints WHERE endpoint_id = p_endpoint_id AND tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'event endpoint % not found', p_endpoint_id USING ERRCODE = 'PW230',
            HINT = 'List the tenant''s endpoints with GET /v1/endpoints.';
    END IF;
    RETURN QUERY
    SELECT ev.event_id, ev.event_type, ev.created_at, d.endpoint_id, d.status, d.attempts, d.next_attempt_at,
           d.last_attempt_at, d.last_http_status, d.last_error, d.delivered_at, d.dead_at, d.replays, ev.data
    FROM core.events ev
    JOIN core.event_deliveries d ON d.event_id = ev.event_id
    WHERE ev.tenant_id = p_tenant_id
      AND (p_before_id IS NULL OR ev.event_id < p_before_id)
      AND (p_endpoint_id IS NULL OR d.endpoint_id = p_endpoint_id)
      AND (p_status IS NULL OR d.status = p_status)
    ORDER BY ev.event_id DESC, d.endpoint_id
    LIMIT p_limit;
END
$$;

COMMENT ON FUNCTION api.outbound_events(p_tenant_id bigint, p_endpoint_id bigint, p_status text, p_before_id bigint, p_limit integer) IS 'Lists the tenant''s outbound events newest first, one row per event and endpoint with the delivery''s status (pending, delivered, dead), attempts, next and last attempt, last HTTP status and error; optionally of one endpoint or status; keyset on event_id (p_before_id). Raises PW100 for an unknown status or a limit outside 1..1000, PW230 for an endpoint the tenant does not have.';

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

CREATE FUNCTION api.prepare_media_upload(p_tenant_id bigint, p_number_id bigint, p_mime_type text, p_size_bytes bigint, p_sha256 text, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS api.media_upload_target
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $_$
DECLARE
    v_number core.wa_numbers := core.number_for(p_tenant_id, p_number_id);
    v_type core.media_types := core.check_media_file('file', p_mime_type, p_size_bytes);
    v_reuse core.media;
BEGIN
    IF p_sha256 IS NULL OR p_sha256 !~ '^[0-9a-fA-F]{64}$' THEN
        RAISE EXCEPTION 'sha256 must be 64 hex digits' USING ERRCODE = 'PW100',
            HINT = 'The SHA-256 of the file''s bytes, in hex.';
    END IF;
    v_reuse := core.reusable_media(p_number_id, p_sha256, coalesce(p_now, now()));
    RETURN ROW(p_tenant_id, v_type.media_type,
               CASE WHEN v_reuse.media_id IS NOT NULL THEN core.media_row(v_reuse, true) END,
               v_number.phone_number_id, v_number.access_token, s.graph_api_version)::api.media_upload_target
    FROM core.settings s;
END
$_$;

COMMENT ON FUNCTION api.prepare_media_upload(p_tenant_id bigint, p_number_id bigint, p_mime_type text, p_size_bytes bigint, p_sha256 text, p_now timestamp with time zone) IS 'Checks a file before it is uploaded to Meta for one of the tenant''s numbers: its MIME type and size against Meta''s limits (api.media_types). Returns its media type and either the earlier upload of the same bytes (sha256) on that number, still valid for more than a day (reuse: upload nothing), or what the server needs to upload it (never return the token to a client). Raises PW146 for a MIME type Meta does not take, PW145 for a file over its limit, PW100 for an empty file or a bad sha256, PW202 when the number is not the tenant''s.';

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

CREATE FUNCTION api.prepare_template(p_tenant_id bigint, p_definition jsonb, p_waba_id text DEFAULT NULL::text, p_number_id bigint DEFAULT NULL::bigint, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS api.template_submission
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_def jsonb := api.check_template_definition(p_definition);
    v_number core.wa_numbers := core.waba_number(p_tenant_id, p_waba_id, p_number_id);
    v_template core.templates;
    v_result api.template_submission;
BEGIN
    -- Claim (waba, name, language) first: of two requests for one template, one submits.
    INSERT INTO core.templates AS t (tenant_id, waba_id, name, language, category, status, components,
                                     parameter_format, body_param_count, submitted_at)
    VALUES (p_tenant_id, v_number.waba_id, v_def->>'name', v_def->>'language', v_def->>'category', 'SUBMITTING',
            v_def->'components', v_def->>'parameter_format', core.body_param_count(v_def->'components'), v_now)
    ON CONFLICT ON CONSTRAINT templates_waba_name_language_unique DO NOTHING
    RETURNING * INTO v_template;
    IF NOT FOUND THEN
        SELECT * INTO v_template FROM core.templates
        WHERE waba_id = v_number.waba_id AND name = v_def->>'name' AND language = v_def->>'language' FOR UPDATE;
        IF v_template.tenant_id <> p_tenant_id THEN
            -- The WABA's number moved tenants (api.transfer_number); its templates did not.
            RAISE EXCEPTION 'template % (%) of WABA % is held by another tenant', v_template.name,
                v_template.language, v_template.waba_id
                USING ERRCODE = 'PW302', HINT = 'Choose another name, or ask an operator to move the WABA''s templates.';
        ELSIF v_template.status = 'DELETED'
           OR (v_template.status = 'SUBMITTING' AND v_template.submitted_at < v_now - core.template_submit_timeout()) THEN
            -- Made again: a deleted name (Meta refuses it within 30 days of deleting an
            -- approved one), or a submission whose answer was lost.
            UPDATE core.templates SET category = v_def->>'category', status = 'SUBMITTING', components = v_def->'components',
                parameter_format = v_def->>'parameter_format', body_param_count = core.body_param_count(v_def->'components'),
                rejected_reason = NULL, submitted_at = v_now, updated_at = now()
            WHERE template_id = v_template.template_id
            RETURNING * INTO v_template;
        ELSIF v_template.components IS DISTINCT FROM v_def->'components'
              OR v_template.category IS DISTINCT FROM v_def->>'category' THEN
            RAISE EXCEPTION 'template % (%) already exists on WABA % (%), with another definition',
                v_template.name, v_template.language, v_template.waba_id, v_template.status
                USING ERRCODE = 'PW302',
                      HINT = format('Delete it first (DELETE /v1/templates/%s) or choose another name; the same definition again returns it.',
                                    v_template.template_id);
        ELSIF v_template.status = 'SUBMITTING' THEN
            RAISE EXCEPTION 'template % (%) is being submitted to Meta by another request', v_template.name, v_template.language
                USING ERRCODE = 'PW301', HINT = 'Retry in a few seconds: the same definition then returns it.';
        END IF;
    END IF;
    v_result.template_id := v_template.template_id;
    v_result.waba_id := v_template.waba_id;
    v_result.status := v_template.status;
    v_result.submit := v_template.status = 'SUBMITTING';
    IF v_result.submit THEN
        v_result.request := v_def;
        v_result.access_token := v_number.access_token;
        v_result.graph_api_version := (SELECT s.graph_api_version FROM core.settings s);
    END IF;
    RETURN v_result;
END
$$;

COMMENT ON FUNCTION api.prepare_template(p_tenant_id bigint, p_definition jsonb, p_waba_id text, p_number_id bigint, p_now timestamp with time zone) IS 'Step one of creating a template: checks the definition (api.check_template_definition) and claims (WABA, name, language) for it in status SUBMITTING; returns the template_id and, when the server must submit it to Meta (submit), the request body, the WABA''s access token and the Graph API version: for the server''s own call, never for a client. The same definition again returns the template as it stands (idempotent). Raises PW130 for a definition Meta would refuse, PW100 unless exactly one of waba_id and number_id is given, PW202 when the tenant has no number there, PW302 when the name and language exist with another definition (or another tenant''s), PW301 while another request submits it.';

CREATE FUNCTION api.prepare_template_deletion(p_tenant_id bigint, p_template_id bigint, p_force boolean DEFAULT false) RETURNS api.template_deletion
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_template core.templates := core.template_for(p_tenant_id, p_template_id);
    v_names text;
    v_result api.template_deletion;
BEGIN
    v_result.template_id := v_template.template_id;
    v_result.waba_id := v_template.waba_id;
    v_result.name := v_template.name;
    v_result.meta_template_id := v_template.meta_template_id;
    v_result.submit := v_template.status <> 'DELETED';
    IF NOT v_result.submit THEN
        RETURN v_result;
    END IF;
    IF v_template.status = 'SUBMITTING' THEN
        RAISE EXCEPTION 'template % (%) is being submitted to Meta', v_template.name, v_template.language
            USING ERRCODE = 'PW301', HINT = 'Retry once the submission has an answer.';
    END IF;
    IF v_template.status = 'DISABLED' THEN
        RAISE EXCEPTION 'template % (%) is DISABLED: Meta does not delete disabled templates', v_template.name, v_template.language
            USING ERRCODE = 'PW301', HINT = 'Appeal or leave it; it cannot be sent either.';
    END IF;
    IF v_template.meta_template_id IS NULL THEN
        RAISE EXCEPTION 'template % (%) has no Meta id', v_template.name, v_template.language
            USING ERRCODE = 'PW301',
                  HINT = 'Sync the WABA''s templates first (POST /v1/templates/sync): deleting by name alone would delete every language.';
    END IF;
    SELECT string_agg(format('"%s" (%s, %s)', c.name, c.campaign_id, c.status), ', '), array_agg(c.campaign_id)
    INTO v_names, v_result.campaign_ids
    FROM core.template_campaigns(v_template) c;
    IF v_names IS NOT NULL AND NOT coalesce(p_force, false) THEN
        RAISE EXCEPTION 'template % (%) is sent by campaign(s) %', v_template.name, v_template.language, v_names
            USING ERRCODE = 'PW330',
                  HINT = 'Cancel or finish those campaigns first, or pass force: they are then paused, their messages kept queued.';
    END IF;
    v_result.access_token := (SELECT n.access_token FROM core.wa_numbers n
                              WHERE n.tenant_id = p_tenant_id AND n.waba_id = v_template.waba_id
                              ORDER BY n.number_id LIMIT 1);
    v_result.graph_api_version := (SELECT s.graph_api_version FROM core.settings s);
    RETURN v_result;
END
$$;

COMMENT ON FUNCTION api.prepare_template_deletion(p_tenant_id bigint, p_template_id bigint, p_force boolean) IS 'Step one of deleting a template (one language: Meta''s hsm_id): returns what the server needs to ask Meta (name, meta_template_id, the WABA''s access token: never for a client); submit false when it is already deleted. Raises PW203 when the tenant has no such template, PW301 while it is being submitted, when it is DISABLED or has no Meta id, PW330 naming the scheduled, running and paused campaigns that send it unless p_force.';

CREATE FUNCTION api.preview_campaign_message(p_tenant_id bigint, p_campaign_id bigint) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_campaign core.campaigns;
    v_message jsonb;
    v_variant core.campaign_templates;
    v_template core.templates;
    v_components jsonb;
    v_header jsonb;
    v_body jsonb;
    v_media jsonb;
BEGIN
    SELECT * INTO v_campaign FROM core.campaigns WHERE campaign_id = p_campaign_id AND tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'campaign % not found', p_campaign_id
            USING ERRCODE = 'PW201', HINT = 'List the tenant''s campaigns with api.campaigns().';
    END IF;
    -- The first row still queued, else the first one sent (pgmq's archive). Housekeeping
    -- drops a finished campaign's queue: then there is nothing left to show.
    IF to_regclass(format('pgmq.%I', pgmq.format_table_name(core.campaign_queue(p_campaign_id), 'q'))) IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT message FROM pgmq.%I ORDER BY msg_id LIMIT 1',
                   pgmq.format_table_name(core.campaign_queue(p_campaign_id), 'q')) INTO v_message;
    IF v_message IS NULL AND to_regclass(format('pgmq.%I', pgmq.format_table_name(core.campaign_queue(p_campaign_id), 'a'))) IS NOT NULL THEN
        EXECUTE format('SELECT message FROM pgmq.%I ORDER BY msg_id LIMIT 1',
                       pgmq.format_table_name(core.campaign_queue(p_campaign_id), 'a')) INTO v_message;
    END IF;
    IF v_message IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT * INTO v_variant FROM core.campaign_templates
    WHERE campaign_id = p_campaign_id AND variant = (v_message->>'v')::smallint;
    SELECT * INTO v_template FROM core.templates WHERE template_id = v_variant.template_id;
    v_components := (SELECT components FROM core.render_components(v_variant.render, coalesce(v_message->'p', '[]')) components);
    SELECT c INTO v_header FROM jsonb_array_elements(v_components) c WHERE c->>'type' = 'header';
    SELECT c INTO v_body FROM jsonb_array_elements(v_components) c WHERE c->>'type' = 'body';
    v_media := v_header#>'{parameters,0}';
    RETURN jsonb_build_object(
        'to', v_message->>'t',
        'template', v_template.name,
        'language', v_template.language,
        'header_kind', CASE WHEN v_media IS NOT NULL THEN v_media->>'type'
                            WHEN EXISTS (SELECT 1 FROM jsonb_array_elements(v_template.components) c
                                         WHERE upper(c->>'type') = 'HEADER') THEN 'text' END,
        'header_text', (SELECT core.fill_placeholders(c->>'text', v_header->'parameters')
                        FROM jsonb_array_elements(v_template.components) c
                        WHERE upper(c->>'type') = 'HEADER' AND upper(coalesce(c->>'format', 'TEXT')) = 'TEXT' LIMIT 1),
        'header_link', v_media->(v_media->>'type')->>'link',
        'header_media_id', v_media->(v_media->>'type')->>'id',
        'body', (SELECT core.fill_placeholders(c->>'text', v_body->'parameters')
                 FROM jsonb_array_elements(v_template.components) c WHERE upper(c->>'type') = 'BODY' LIMIT 1),
        'footer', (SELECT c->>'text' FROM jsonb_array_elements(v_template.components) c
                   WHERE upper(c->>'type') = 'FOOTER' LIMIT 1),
        'buttons', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                        'text', b.btn->>'text',
                        'value', (SELECT coalesce(p->>'text', p->>'payload', p->>'coupon_code')
                                  FROM jsonb_array_elements(v_components) rc, jsonb_array_elements(rc->'parameters') p
                                  WHERE rc->>'type' = 'button' AND rc->>'index' = (b.i - 1)::text LIMIT 1))
                        ORDER BY b.i), '[]')
                    FROM jsonb_array_elements(v_template.components) c,
                         jsonb_array_elements(CASE WHEN jsonb_typeof(c->'buttons') = 'array' THEN c->'buttons' ELSE '[]' END)
                             WITH ORDINALITY b(btn, i)
                    WHERE upper(c->>'type') = 'BUTTONS'),
        'components', v_components);
END
$$;

COMMENT ON FUNCTION api.preview_campaign_message(p_tenant_id bigint, p_campaign_id bigint) IS 'One message of a campaign as its recipient sees it: the first row still queued (else the first sent), rendered as api.claim_sends renders it. Returns {to, template, language, header_kind, header_text, header_link, header_media_id, body, footer, buttons [{text, value}], components (Meta''s components array)}, with the placeholders of the header and body filled; NULL when no message is left (or housekeeping dropped the finished campaign''s queue). Raises PW201 when the tenant has no such campaign.';

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

CREATE FUNCTION api.release_numbers(p_worker text) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

COMMENT ON FUNCTION api.release_numbers(p_worker text) IS 'Gives up the numbers worker p_worker was sending for (api.claim_sends hands a number''s messages to one worker at a time), so that other workers take them at once; called by a worker that stops, after it sent what it held, and by one that cannot reach Meta, after it handed back what it held. Returns how many it gave up. Raises PW100 when p_worker is empty.';

CREATE FUNCTION api.replay_event(p_tenant_id bigint, p_event_id bigint, p_endpoint_id bigint DEFAULT NULL::bigint, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_lane record;
    v_replayed integer := 0;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM core.events WHERE event_id = p_event_id AND tenant_id = p_tenant_id)
       OR (p_endpoint_id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM core.event_deliveries d WHERE d.event_id = p_event_id AND d.endpoint_id = p_endpoint_id)) THEN
        RAISE EXCEPTION 'event % not found', p_event_id USING ERRCODE = 'PW231',
            HINT = 'List the tenant''s events with GET /v1/events (with ?endpoint= for one endpoint).';
    END IF;
    -- A pending delivery is queued already: a replay of it would send it twice.
    FOR v_lane IN
        UPDATE core.event_deliveries d SET status = 'pending', retry_from = v_now, next_attempt_at = v_now,
                                           dead_at = NULL, replays = d.replays + 1
        WHERE d.event_id = p_event_id AND d.status <> 'pending'
          AND (p_endpoint_id IS NULL OR d.endpoint_id = p_endpoint_id)
        RETURNING d.endpoint_id
    LOOP
        PERFORM pgmq.send(core.event_queue(v_lane.endpoint_id), jsonb_build_object('e', p_event_id));
        -- A replay is asked for now: a failing endpoint's back-off does not hold it.
        UPDATE core.event_endpoints SET retry_at = v_now WHERE endpoint_id = v_lane.endpoint_id AND retry_at > v_now;
        v_replayed := v_replayed + 1;
    END LOOP;
    IF v_replayed > 0 THEN
        PERFORM pg_notify('pgwa_events', '');
    END IF;
    RETURN v_replayed;
END
$$;

COMMENT ON FUNCTION api.replay_event(p_tenant_id bigint, p_event_id bigint, p_endpoint_id bigint, p_now timestamp with time zone) IS 'Queues one of the tenant''s events again (the same id and body) to every endpoint it went to, or to p_endpoint_id: delivered and dead deliveries become pending, retried for a fresh window; pending ones are left as they are. Returns the deliveries queued again. Raises PW231 when the tenant has no such event (or it never went to that endpoint).';

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
    -- An uploaded file is sent by its Meta id (media.sql); PW245/PW345 when unusable.
    p_reply := core.resolve_reply_media(p_reply, p_tenant_id, p_number_id);
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

COMMENT ON FUNCTION api.reply(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint, p_reply jsonb) IS 'An agent''s reply to a contact on a number, queued before campaign traffic: {"type": "text" | "buttons" | "list" | "cta_url", ...} or media ({"type": "image" | "video" | "audio" | "document" | "sticker", "media": <pgwa media id> | "link": "https://...", "caption": ...}) inside the 24-hour window, {"type": "template", ...} at any time; {{name}} and other contact variables are filled in. Returns the outbound id, the inbox row and when the window closes. Raises PW104 for a free-form reply outside the window (send a template), PW106 for a template to an opted-out contact, PW100/PW102 for a bad reply or template (PW100 names the field), PW245/PW345 for an uploaded file that is not the number''s or whose Meta id expires within a day, PW202/PW204 when the number or contact is not the tenant''s.';

CREATE FUNCTION api.reply_templates(p_tenant_id bigint, p_number_id bigint) RETURNS SETOF api.reply_template
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_number core.wa_numbers := core.number_for(p_tenant_id, p_number_id);
BEGIN
    RETURN QUERY
    SELECT t.template_id, t.name, t.language, t.parameter_format,
           ARRAY(SELECT coalesce(s.parameter_name, s.index::text)
                 FROM core.template_slots(t.components, t.parameter_format) s
                 WHERE s.component = 'body' ORDER BY s.index),
           (SELECT c->>'text' FROM jsonb_array_elements(t.components) c WHERE upper(c->>'type') = 'BODY' LIMIT 1)
    FROM core.templates t
    WHERE t.tenant_id = p_tenant_id AND t.waba_id = v_number.waba_id AND t.status = 'APPROVED'
      AND NOT EXISTS (SELECT 1 FROM core.template_slots(t.components, t.parameter_format) s
                      WHERE s.component <> 'body' AND s.required)
    ORDER BY t.name, t.language;
END
$$;

COMMENT ON FUNCTION api.reply_templates(p_tenant_id bigint, p_number_id bigint) IS 'The approved templates of the number''s WABA that a reply can send (body parameters only, api.reply''s rule), each with its parameter format, its body parameters in order (names, or positions 1, 2, …) and its body text. Raises PW202 for a number not the tenant''s.';

CREATE FUNCTION api.report_events(p_results jsonb, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS api.events_reported
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $_$
DECLARE
    v_now timestamptz := coalesce(p_now, clock_timestamp());
    v_window interval := make_interval(secs => (SELECT s.event_retry_window_s FROM core.settings s));
    v_out api.events_reported := (0, 0, 0);
    v_lane record;
    v_dead bigint[];
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);     -- as in api.claim_events
    FOR v_lane IN
        WITH r AS (
            SELECT x.* FROM jsonb_to_recordset(p_results)
                AS x(endpoint_id bigint, event_id bigint, msg_id bigint, ok boolean, http_status integer, error text)
        ), moved AS (
            UPDATE core.event_deliveries d SET
                attempts = d.attempts + 1, last_attempt_at = v_now,
                last_http_status = CASE WHEN r.http_status BETWEEN 100 AND 599 THEN r.http_status END,
                last_error = CASE WHEN r.ok THEN NULL ELSE left(coalesce(r.error, 'failed'), 500) END,
                status = CASE WHEN r.ok THEN 'delivered' WHEN v_now >= d.retry_from + v_window THEN 'dead'
                              ELSE 'pending' END,
                delivered_at = CASE WHEN r.ok THEN v_now ELSE d.delivered_at END,
                dead_at = CASE WHEN NOT r.ok AND v_now >= d.retry_from + v_window THEN v_now END,
                next_attempt_at = CASE WHEN NOT r.ok AND v_now < d.retry_from + v_window
                                       THEN v_now + core.event_backoff(d.attempts + 1) END
            FROM r
            WHERE d.endpoint_id = r.endpoint_id AND d.event_id = r.event_id AND d.status = 'pending'
            RETURNING d.endpoint_id, r.msg_id, d.status, d.next_attempt_at
        )
        SELECT r.endpoint_id,
               -- Those settled, and those whose delivery is gone (its endpoint or event deleted).
               array_agg(r.msg_id) FILTER (WHERE m.status IS DISTINCT FROM 'pending') AS done,
               array_agg(r.msg_id) FILTER (WHERE m.status = 'pending') AS retry,
               array_agg(m.next_attempt_at) FILTER (WHERE m.status = 'pending') AS retry_at,
               count(*) FILTER (WHERE m.status = 'delivered') AS delivered,
               count(*) FILTER (WHERE m.status = 'dead') AS dead,
               bool_or(r.ok) AS any_ok
        FROM (SELECT x.* FROM jsonb_to_recordset(p_results)
                  AS x(endpoint_id bigint, event_id bigint, msg_id bigint, ok boolean)) r
        LEFT JOIN moved m ON m.endpoint_id = r.endpoint_id AND m.msg_id = r.msg_id
        GROUP BY r.endpoint_id
        ORDER BY r.endpoint_id      -- endpoint rows are locked in id order, as the claim locks them
    LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = core.event_queue(v_lane.endpoint_id));
        IF v_lane.done IS NOT NULL THEN
            PERFORM pgmq.delete(core.event_queue(v_lane.endpoint_id), v_lane.done);
        END IF;
        IF v_lane.retry IS NOT NULL THEN
            EXECUTE format('UPDATE pgmq.%I q SET vt = r.at FROM unnest($1, $2) r(msg_id, at) WHERE q.msg_id = r.msg_id',
                           pgmq.format_table_name(core.event_queue(v_lane.endpoint_id), 'q'))
            USING v_lane.retry, v_lane.retry_at;
        END IF;
        v_out.delivered := v_out.delivered + v_lane.delivered;
        v_out.retried := v_out.retried + coalesce(cardinality(v_lane.retry), 0);
        v_out.dead := v_out.dead + v_lane.dead;
        IF v_lane.any_ok THEN
            UPDATE core.event_endpoints SET failures = 0, retry_at = NULL
            WHERE endpoint_id = v_lane.endpoint_id AND (failures <> 0 OR retry_at IS NOT NULL);
        ELSE
            UPDATE core.event_endpoints e SET failures = e.failures + 1,
                                              retry_at = v_now + core.event_backoff(e.failures + 1)
            WHERE e.endpoint_id = v_lane.endpoint_id;
            -- Deliveries that waited behind the failing endpoint past their window.
            WITH expired AS (
                UPDATE core.event_deliveries d SET status = 'dead', dead_at = v_now, next_attempt_at = NULL,
                                                   last_error = coalesce(d.last_error, 'the endpoint kept failing')
                WHERE d.endpoint_id = v_lane.endpoint_id AND d.status = 'pending' AND v_now >= d.retry_from + v_window
                RETURNING d.event_id
            )
            SELECT array_agg(event_id) INTO v_dead FROM expired;
            IF v_dead IS NOT NULL THEN
                EXECUTE format('DELETE FROM pgmq.%I WHERE (message->>''e'')::bigint = ANY ($1)',
                               pgmq.format_table_name(core.event_queue(v_lane.endpoint_id), 'q'))
                USING v_dead;
                v_out.dead := v_out.dead + cardinality(v_dead);
            END IF;
        END IF;
    END LOOP;
    RETURN v_out;
END
$_$;

COMMENT ON FUNCTION api.report_events(p_results jsonb, p_now timestamp with time zone) IS 'Takes the worker''s delivery results at p_now (NULL: the clock): delivered ones leave the queue; failed ones are retried after core.settings.event_backoff_s, or dead-lettered once their retry window (event_retry_window_s from creation or replay) has passed; an endpoint with only failures backs off. Returns how many were delivered, retried and dead.';

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

CREATE FUNCTION api.retarget_campaign(p_tenant_id bigint, p_campaign_id bigint, p_who text, p_name text DEFAULT NULL::text, p_templates jsonb DEFAULT NULL::jsonb, p_scheduled_at timestamp with time zone DEFAULT NULL::timestamp with time zone, p_start boolean DEFAULT false, p_number_id bigint DEFAULT NULL::bigint, p_on_invalid text DEFAULT 'skip'::text) RETURNS api.campaign_created
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    SET client_min_messages TO 'warning'
    SET work_mem TO '256MB'
    AS $_$
DECLARE
    v_campaign core.campaigns;
    v_templates jsonb := p_templates;
    v_unknown boolean;
    v_pick core.compiled_segment;
    v_found boolean;
    v_created api.campaign_created;
BEGIN
    SELECT * INTO v_campaign FROM core.campaigns WHERE campaign_id = p_campaign_id AND tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'campaign % not found', p_campaign_id
            USING ERRCODE = 'PW201', HINT = 'List the tenant''s campaigns with api.campaigns().';
    END IF;
    IF p_who IS NULL OR p_who NOT IN ('failed', 'not_delivered', 'not_read', 'not_replied') THEN
        RAISE EXCEPTION 'who must be failed, not_delivered, not_read or not_replied, not "%"', left(coalesce(p_who, ''), 40)
            USING ERRCODE = 'PW100', HINT = 'Messages still queued or in flight are never picked.';
    END IF;
    -- The recipients picked, as a segment over the tenant's contacts (core.new_campaign
    -- reads them straight into the campaign).
    v_pick := ROW('(c.contact_id IN (SELECT o.contact_id FROM core.outbound_messages o WHERE o.campaign_id = $4[1] AND '
                  || core.retarget_condition(p_who) || '))', '{}', '{}', '{}', ARRAY[p_campaign_id])::core.compiled_segment;
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM core.contacts c WHERE c.tenant_id = $5 AND c.wa_id IS NOT NULL AND ' || v_pick.sql || ')'
        INTO v_found USING v_pick.texts, v_pick.numbers, v_pick.times, v_pick.ids, p_tenant_id;
    IF NOT v_found THEN
        RAISE EXCEPTION 'no recipient of campaign % is %', p_campaign_id, replace(p_who, '_', ' ')
            USING ERRCODE = 'PW101', HINT = 'Nothing to send again; check api.campaign_stats().';
    END IF;
    -- The same templates and parameter mapping, unless others are given: the mapping each
    -- variant was made with (campaign_templates.mapping), or for a campaign made before
    -- mappings were kept, its body parameters.
    IF v_templates IS NULL THEN
        SELECT jsonb_agg(jsonb_build_object('name', t.name, 'language', t.language)
                         || coalesce(ct.mapping, CASE WHEN ct.render IS NULL THEN
                                                     jsonb_build_object('params', ct.params) END) ORDER BY ct.variant),
               bool_or(ct.mapping IS NULL AND ct.render IS NOT NULL)
        INTO v_templates, v_unknown
        FROM core.campaign_templates ct JOIN core.templates t ON t.template_id = ct.template_id
        WHERE ct.campaign_id = p_campaign_id;
        IF v_unknown THEN
            RAISE EXCEPTION 'campaign % does not record the template mapping it was made with', p_campaign_id
                USING ERRCODE = 'PW100', HINT = 'Pass p_templates: the templates and mapping to send.';
        END IF;
    END IF;
    v_created := core.new_campaign(
        p_tenant_id, coalesce(p_number_id, v_campaign.number_id),
        coalesce(p_name, left(v_campaign.name, 150) || ' (' || replace(p_who, '_', ' ') || ')'),
        v_templates, p_on_invalid, p_scheduled_at, p_start, NULL, v_pick);
    RETURN v_created;
END
$_$;

COMMENT ON FUNCTION api.retarget_campaign(p_tenant_id bigint, p_campaign_id bigint, p_who text, p_name text, p_templates jsonb, p_scheduled_at timestamp with time zone, p_start boolean, p_number_id bigint, p_on_invalid text) IS 'Creates a new campaign, in one transaction, for the recipients of campaign p_campaign_id who failed, were not delivered, did not read or did not reply (p_who; messages still queued or in flight are never picked), with the same templates and mapping unless p_templates is given (mapped columns come from the contacts'' current attributes), from the same number unless p_number_id, now (p_start), later (p_scheduled_at) or as a draft. Returns what api.create_campaign returns. Raises PW201 when the campaign is not the tenant''s, PW100 for a bad p_who, PW101 when no recipient fits, and what api.create_campaign raises; nothing is left behind on error.';

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
    PERFORM core.resolve_reply_media(p_reply, p_tenant_id, p_number_id);   -- an uploaded file of this number

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

COMMENT ON FUNCTION api.save_bot_rule(p_tenant_id bigint, p_number_id bigint, p_kind text, p_pattern text, p_reply jsonb, p_priority integer, p_enabled boolean, p_rule_id bigint) IS 'Creates a bot rule for a number (or replaces rule p_rule_id): kind exact, starts_with, contains, regex, welcome (first message in 24 hours) or default (fallback), a pattern matched without case, accents and surrounding spaces, a priority (lower answers first) and a reply ({"type": "text" | "buttons" | "template" | "list" | "cta_url" | "image" | "video" | "audio" | "document" | "sticker", ...} with {{name}} variables; media by pgwa media id or link). Rules see the first core.settings.bot_match_prefix_chars characters of a message. Returns the rule. Raises PW103 for a regular expression that does not compile or is outside the safe subset (at most 200 characters; no back-references, look-around or embedded options; repetition bounds up to 100; no repeated group holding a quantifier or an alternation), PW100 for a bad kind, pattern, priority or reply, PW102 for a template that is unknown, not approved or given the wrong parameters, PW245/PW345 for an uploaded file that is not the number''s or expires within a day, PW202/PW206 when the number or rule is not the tenant''s.';

CREATE FUNCTION api.save_media(p_tenant_id bigint, p_number_id bigint, p_meta_media_id text, p_mime_type text, p_size_bytes bigint, p_sha256 text, p_filename text DEFAULT NULL::text, p_storage_key text DEFAULT NULL::text, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS api.media_file
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $_$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_type core.media_types;
    v_media core.media;
BEGIN
    PERFORM core.number_for(p_tenant_id, p_number_id);
    v_type := core.check_media_file('file', p_mime_type, p_size_bytes);
    IF coalesce(p_meta_media_id, '') !~ '^[0-9A-Za-z_.:-]{1,128}$' THEN
        RAISE EXCEPTION 'meta_media_id "%" is not a Meta media id', left(p_meta_media_id, 40)
            USING ERRCODE = 'PW100', HINT = 'Pass the "id" that POST /{phone-number-id}/media answered.';
    END IF;
    IF p_sha256 IS NULL OR p_sha256 !~ '^[0-9a-fA-F]{64}$' THEN
        RAISE EXCEPTION 'sha256 must be 64 hex digits' USING ERRCODE = 'PW100',
            HINT = 'The SHA-256 of the file''s bytes, in hex.';
    END IF;
    IF length(p_filename) > 240 THEN
        RAISE EXCEPTION 'filename is longer than 240 characters' USING ERRCODE = 'PW100', HINT = 'Shorten the file name.';
    END IF;
    -- Two uploads of the same bytes at once: the second keeps the first's id.
    PERFORM pg_advisory_xact_lock(hashtextextended(p_number_id::text || ':' || lower(p_sha256), 0));
    v_media := core.reusable_media(p_number_id, p_sha256, v_now);
    IF v_media.media_id IS NOT NULL THEN
        RETURN core.media_row(v_media, true);
    END IF;
    INSERT INTO core.media (tenant_id, number_id, direction, meta_media_id, media_type, mime_type, size_bytes,
                            sha256, filename, state, storage_key, created_at, expires_at)
    VALUES (p_tenant_id, p_number_id, 'out', p_meta_media_id, v_type.media_type, core.media_mime(p_mime_type),
            p_size_bytes, lower(p_sha256), nullif(btrim(p_filename), ''), 'uploaded', p_storage_key, v_now,
            v_now + interval '30 days')
    RETURNING * INTO v_media;
    RETURN core.media_row(v_media);
END
$_$;

COMMENT ON FUNCTION api.save_media(p_tenant_id bigint, p_number_id bigint, p_meta_media_id text, p_mime_type text, p_size_bytes bigint, p_sha256 text, p_filename text, p_storage_key text, p_now timestamp with time zone) IS 'Records a file uploaded to Meta for one of the tenant''s numbers: Meta''s media id, MIME type, size, sha256, file name and where the media store keeps a copy; the id expires 30 days after p_now. Returns pgwa''s media (reused true, and nothing recorded, when the same bytes were uploaded meanwhile and are still valid). Raises PW146/PW145 for a file Meta does not take, PW100 for a bad id, sha256 or file name, PW202 when the number is not the tenant''s.';

CREATE FUNCTION api.save_segment(p_tenant_id bigint, p_name text, p_filter jsonb, p_segment_id bigint DEFAULT NULL::bigint) RETURNS api.segment
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_segment api.segment;
BEGIN
    IF length(btrim(coalesce(p_name, ''))) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'segment name must be 1 to 200 characters' USING ERRCODE = 'PW100', HINT = 'Name the segment.';
    END IF;
    IF NOT EXISTS (SELECT FROM core.tenants WHERE tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'tenant % does not exist', p_tenant_id USING ERRCODE = 'PW205', HINT = 'Create the tenant first.';
    END IF;
    PERFORM core.compile_segment(p_tenant_id, p_filter);   -- raises on a filter outside the grammar
    IF p_segment_id IS NULL THEN
        INSERT INTO core.segments (tenant_id, name, filter) VALUES (p_tenant_id, btrim(p_name), p_filter)
        ON CONFLICT (tenant_id, name) DO NOTHING
        RETURNING segment_id, name, filter, created_at, updated_at INTO v_segment;
        IF v_segment.segment_id IS NULL THEN
            RAISE EXCEPTION 'a segment named "%" already exists', btrim(p_name) USING ERRCODE = 'PW302',
                HINT = 'Pass its segment_id to change it, or choose another name.';
        END IF;
    ELSE
        BEGIN
            UPDATE core.segments SET name = btrim(p_name), filter = p_filter, updated_at = now()
            WHERE segment_id = p_segment_id AND tenant_id = p_tenant_id
            RETURNING segment_id, name, filter, created_at, updated_at INTO v_segment;
        EXCEPTION WHEN unique_violation THEN
            RAISE EXCEPTION 'a segment named "%" already exists', btrim(p_name) USING ERRCODE = 'PW302',
                HINT = 'Choose another name.';
        END;
        IF v_segment.segment_id IS NULL THEN
            RAISE EXCEPTION 'segment % not found', p_segment_id USING ERRCODE = 'PW232',
                HINT = 'List the tenant''s segments with api.segments().';
        END IF;
    END IF;
    RETURN v_segment;
END
$$;

COMMENT ON FUNCTION api.save_segment(p_tenant_id bigint, p_name text, p_filter jsonb, p_segment_id bigint) IS 'Saves a segment (a named filter over the tenant''s contacts; grammar in db/functions/segments.sql), or with p_segment_id replaces one. Returns it. Raises PW100 for a bad name, PW132 for a filter outside the grammar (naming the condition''s path), PW233 for an undefined field, PW201 for an unknown campaign, PW232 when p_segment_id is not the tenant''s, PW302 for a name in use.';

CREATE FUNCTION api.search_contacts(p_tenant_id bigint, p_phone text DEFAULT NULL::text, p_name text DEFAULT NULL::text, p_tag text DEFAULT NULL::text, p_filter jsonb DEFAULT NULL::jsonb, p_opted_out boolean DEFAULT NULL::boolean, p_before_id bigint DEFAULT NULL::bigint, p_limit integer DEFAULT 50, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS SETOF api.contact_record
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $_$
DECLARE
    v core.compiled_segment;
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'limit must be between 1 and 1000, not %', p_limit USING ERRCODE = 'PW100',
            HINT = 'Page with before_id: pass the smallest contact_id of the previous page.';
    END IF;
    IF p_phone IS NOT NULL AND core.normalize_phone(p_phone) IS NULL THEN
        RAISE EXCEPTION 'phone "%" is not a phone number with a country code', left(p_phone, 40) USING ERRCODE = 'PW100',
            HINT = 'E.164, e.g. +14155550100.';
    END IF;
    IF length(p_name) > 200 THEN
        RAISE EXCEPTION 'name is longer than 200 characters' USING ERRCODE = 'PW100', HINT = 'Search by a part of the name.';
    END IF;
    -- A tag and a filter are conditions of the segment grammar, so search and segments agree.
    v := CASE WHEN p_tag IS NULL AND p_filter IS NULL THEN ROW('true', '{}', '{}', '{}', '{}')::core.compiled_segment
              ELSE core.compile_segment(p_tenant_id, jsonb_build_object('all',
                       CASE WHEN p_tag IS NOT NULL THEN jsonb_build_array(jsonb_build_object('tag', p_tag)) ELSE '[]' END
                       || CASE WHEN p_filter IS NOT NULL THEN jsonb_build_array(p_filter) ELSE '[]' END), p_now) END;
    -- contacts_tenant_wa_id for a phone, contacts_tags for a tag, else the primary key
    -- backwards from p_before_id. A name is a case-insensitive substring (no index: it
    -- reads the tenant's contacts until the page is full).
    RETURN QUERY EXECUTE
        'SELECT c.contact_id, c.wa_id, c.user_id, c.name, c.profile_name, c.attributes, c.tags, c.opted_out,
                c.opted_out_at, c.last_inbound_at, c.created_at, c.updated_at
         FROM core.contacts c
         WHERE c.tenant_id = $5 AND ' || v.sql || '
           AND ($6 IS NULL OR c.opted_out = $6)
           AND ($7 IS NULL OR c.wa_id = $7)
           AND ($8 IS NULL OR strpos(lower(c.name), lower($8)) > 0 OR strpos(lower(c.profile_name), lower($8)) > 0)
           AND ($9 IS NULL OR c.contact_id < $9)
         ORDER BY c.contact_id DESC LIMIT $10'
        USING v.texts, v.numbers, v.times, v.ids, p_tenant_id, p_opted_out, core.normalize_phone(p_phone),
              nullif(btrim(p_name), ''), p_before_id, p_limit;
END
$_$;

COMMENT ON FUNCTION api.search_contacts(p_tenant_id bigint, p_phone text, p_name text, p_tag text, p_filter jsonb, p_opted_out boolean, p_before_id bigint, p_limit integer, p_now timestamp with time zone) IS 'Searches the tenant''s contacts, newest first, by phone (any common format), a part of the name, a tag, opt-out state and a segment filter (any of them; fields by their typed operators), with keyset pagination on contact_id (p_before_id). Raises PW100 for a limit outside 1..1000, a malformed phone or long name, and what a segment filter raises (PW132, PW233, PW201).';

CREATE FUNCTION api.segment_count(p_tenant_id bigint, p_segment_id bigint DEFAULT NULL::bigint, p_filter jsonb DEFAULT NULL::jsonb, p_tags text[] DEFAULT NULL::text[], p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS bigint
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $_$
DECLARE
    v core.compiled_segment := core.compile_segment(p_tenant_id, core.segment_filter(p_tenant_id, p_segment_id, p_filter, p_tags), p_now);
    v_count bigint;
BEGIN
    EXECUTE 'SELECT count(*) FROM core.contacts c WHERE c.tenant_id = $5 AND ' || v.sql
        INTO v_count USING v.texts, v.numbers, v.times, v.ids, p_tenant_id;
    RETURN v_count;
END
$_$;

COMMENT ON FUNCTION api.segment_count(p_tenant_id bigint, p_segment_id bigint, p_filter jsonb, p_tags text[], p_now timestamp with time zone) IS 'Counts the tenant''s contacts that a segment matches now: a saved one (p_segment_id), an inline filter, or contacts with any of p_tags (exactly one). Opted-out contacts count unless the filter excludes them (a campaign skips them). Raises PW100 unless exactly one source is given, PW132/PW233/PW201 for a bad filter, PW232 for an unknown segment.';

CREATE FUNCTION api.segments(p_tenant_id bigint) RETURNS SETOF api.segment
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    -- segments_tenant_segment.
    SELECT s.segment_id, s.name, s.filter, s.created_at, s.updated_at
    FROM core.segments s WHERE s.tenant_id = p_tenant_id ORDER BY s.segment_id
$$;

COMMENT ON FUNCTION api.segments(p_tenant_id bigint) IS 'Lists the tenant''s saved segments with their filters, oldest first.';

CREATE FUNCTION api.send_message(p_tenant_id bigint, p_number_id bigint, p_to text, p_message jsonb, p_idempotency_key text DEFAULT NULL::text, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone, p_wake boolean DEFAULT true) RETURNS api.message_sent
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_result api.send_result;
BEGIN
    SELECT * INTO v_result FROM api.send_messages(jsonb_build_array(jsonb_build_object(
        'tenant_id', p_tenant_id, 'number_id', p_number_id, 'to', p_to, 'message', p_message,
        'idempotency_key', p_idempotency_key)), p_now, p_wake);
    IF v_result.sqlstate IS NULL THEN
        RETURN v_result.sent;
    END IF;
    -- The item's error, raised as it was (RAISE takes no null option).
    IF v_result.detail IS NOT NULL AND v_result.hint IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = v_result.sqlstate, MESSAGE = v_result.message,
            DETAIL = v_result.detail, HINT = v_result.hint;
    ELSIF v_result.detail IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = v_result.sqlstate, MESSAGE = v_result.message, DETAIL = v_result.detail;
    ELSIF v_result.hint IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = v_result.sqlstate, MESSAGE = v_result.message, HINT = v_result.hint;
    END IF;
    RAISE EXCEPTION USING ERRCODE = v_result.sqlstate, MESSAGE = v_result.message;
END
$$;

COMMENT ON FUNCTION api.send_message(p_tenant_id bigint, p_number_id bigint, p_to text, p_message jsonb, p_idempotency_key text, p_now timestamp with time zone, p_wake boolean) IS 'Sends one message from a tenant''s own system to p_to (a phone with its country code, or a business-scoped user id), on the number''s reply queue ahead of campaign traffic and paced with it: api.send_messages with one item, its error raised. A template at any time: {"type": "template", "name", "language", "header": "text" | {"link"} | {"media": uploaded id} | {"media_id": Meta id} | {"location": {...}}, "body": [values] (POSITIONAL) or {"name": value} (NAMED), "buttons": {"<index>": value}}, laid out by core.map_template as a campaign''s; values may use {{name}} and other contact variables. A free-form message (text, buttons, media, list, cta_url: the reply shapes of api.reply) only inside the contact''s 24-hour window at p_now (NULL: the clock). The contact is created on first use. With p_idempotency_key, a retry with the same key and message answers the first message (replayed true) and sends nothing; a concurrent one waits for the first. The message is written to the shared inbox (without a dashboard NOTIFY). p_wake false leaves waking the sender (NOTIFY pgwa_send) to the caller after commit. Returns the outbound id, its state and when the window closes. Raises PW100 for a bad recipient, key or message, PW102 for an unknown or unapproved template or a parameter that does not fit, PW304 when the window is closed (naming when it closed), PW106 when the contact opted out, PW303 when the key was used for another message, PW202 when the number is not the tenant''s, PW245/PW345 for an unknown or expired uploaded media.';

CREATE FUNCTION api.send_messages(p_items jsonb, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone, p_wake boolean DEFAULT true) RETURNS SETOF api.send_result
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    SET lock_timeout TO '2s'
    AS $_$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_count integer := CASE WHEN jsonb_typeof(p_items) = 'array' THEN jsonb_array_length(p_items) ELSE 0 END;
    -- The answers, by item: the message, or the error's parts.
    r_sent api.message_sent[] := '{}';
    r_state text[] := '{}';
    r_text text[] := '{}';
    r_detail text[] := '{}';
    r_hint text[] := '{}';
    r_replayed bigint[] := '{}';        -- the message an earlier batch sent with the item's key
    v_item jsonb;
    v_tenant_id bigint;
    v_number core.wa_numbers;
    v_recipient text;
    v_message jsonb;
    v_key text;
    v_hash text;
    v_used core.api_sends;
    v_first integer;
    v_contact core.contacts;
    v_last_inbound timestamptz;
    v_rendered jsonb;
    v_seen jsonb := '{}';           -- "tenant:key" -> {"h": hash, "s": the survivor that sent it}
    v_replay_items integer[] := '{}';   -- items answered by a survivor of this batch ...
    v_replay_of integer[] := '{}';      -- ... and that survivor
    v_s integer := 0;                   -- survivors so far
    v_next integer;                     -- the item in hand
    v_replay record;
    -- The survivors, one position each.
    s_item integer[] := '{}';
    s_tenant bigint[] := '{}';
    s_number bigint[] := '{}';
    s_contact bigint[] := '{}';
    s_wa text[] := '{}';
    s_user text[] := '{}';
    s_recipient text[] := '{}';
    s_message jsonb[] := '{}';
    s_last_inbound timestamptz[] := '{}';
    s_key text[] := '{}';
    s_hash text[] := '{}';
    s_outbound bigint[];
    s_body jsonb[];
    v_n integer;
    v_state text;
    v_text text;
    v_detail text;
    v_hint text;
BEGIN
    IF jsonb_typeof(p_items) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'p_items must be a JSON array of messages' USING ERRCODE = 'PW100',
            HINT = '[{"tenant_id": 1, "number_id": 1, "to": "+15551234567", "message": {...}, "idempotency_key": "..."}]';
    END IF;
    -- Every well-formed key of the batch, locked in lock-id order (see above).
    PERFORM pg_advisory_xact_lock(k.lock_id)
    FROM (SELECT DISTINCT hashtextextended(i.value->>'tenant_id' || ':' || (i.value->>'idempotency_key'), 0) AS lock_id
          FROM jsonb_array_elements(p_items) i
          WHERE i.value->>'tenant_id' ~ '^[0-9]{1,18}$' AND i.value->>'idempotency_key' ~ '^[!-~]{1,255}$'
          ORDER BY 1) k;

    -- Items run in one block (one subtransaction) while none fails: a block per item would
    -- cost each item the set-up of every SQL function it calls (PL/pgSQL keeps their plans
    -- per subtransaction). The item that raises gets its error, which undoes only what its
    -- block wrote (layouts cached by core.api_template_message; what an item keeps is in
    -- variables), and the next block starts after it.
    v_next := 1;
    WHILE v_next <= v_count LOOP
        BEGIN
            FOR v_n IN v_next .. v_count LOOP
                v_next := v_n;
                v_item := p_items->(v_n - 1);
                v_tenant_id := (v_item->>'tenant_id')::bigint;
                -- Batches come mostly from one number: looked up again only when it changes.
                IF v_number.number_id IS DISTINCT FROM (v_item->>'number_id')::bigint
                   OR v_number.tenant_id IS DISTINCT FROM v_tenant_id THEN
                    v_number := core.number_for(v_tenant_id, (v_item->>'number_id')::bigint);
                END IF;
                v_recipient := core.api_recipient(v_item->>'to');
                v_message := v_item->'message';
                IF jsonb_typeof(v_message) IS DISTINCT FROM 'object' THEN
                    RAISE EXCEPTION 'message must be a JSON object' USING ERRCODE = 'PW100',
                        HINT = '{"type": "text", "text": "..."} or {"type": "template", "name": "...", "language": "en_US"}';
                END IF;
                v_key := v_item->>'idempotency_key';
                v_hash := NULL;
                IF v_key IS NOT NULL THEN
                    IF v_key !~ '^[!-~]{1,255}$' THEN
                        RAISE EXCEPTION 'Idempotency-Key must be 1 to 255 printable ASCII characters without spaces'
                            USING ERRCODE = 'PW100', HINT = 'Use a UUID or your own order id.';
                    END IF;
                    -- The request a key stands for: jsonb's text is canonical, so key order in the
                    -- message does not make two requests differ.
                    v_hash := md5(jsonb_build_array(v_number.number_id, v_recipient, v_message)::text);
                    v_first := (v_seen->(v_tenant_id || ':' || v_key)->>'s')::integer;
                    IF v_first IS NOT NULL THEN
                        IF v_seen->(v_tenant_id || ':' || v_key)->>'h' <> v_hash THEN
                            RAISE EXCEPTION 'Idempotency-Key "%" was already used for a different message', v_key
                                USING ERRCODE = 'PW303', HINT = 'Use a new key for a new message; retry a message with its own key and the same body.';
                        END IF;
                        v_replay_items[cardinality(v_replay_items) + 1] := v_n;
                        v_replay_of[cardinality(v_replay_of) + 1] := v_first;
                        CONTINUE;
                    END IF;
                    SELECT * INTO v_used FROM core.api_sends s
                    WHERE s.tenant_id = v_tenant_id AND s.idempotency_key = v_key;
                    IF FOUND THEN
                        IF v_used.request_hash <> v_hash THEN
                            RAISE EXCEPTION 'Idempotency-Key "%" was already used for a different message', v_key
                                USING ERRCODE = 'PW303', HINT = 'Use a new key for a new message; retry a message with its own key and the same body.';
                        END IF;
                        r_replayed[v_n] := v_used.outbound_id;     -- answered once all is written
                        CONTINUE;
                    END IF;
                END IF;

                IF v_message->>'type' IS DISTINCT FROM 'template' THEN
                    PERFORM core.check_reply(v_message, v_tenant_id, v_number.waba_id);
                END IF;
                -- The contact as it is, or as it will be created (a phone as wa_id, a user id as
                -- user_id): each lookup on its own unique index.
                v_contact := NULL;
                IF v_recipient ~ '^[0-9]+$' THEN
                    SELECT * INTO v_contact FROM core.contacts c WHERE c.tenant_id = v_tenant_id AND c.wa_id = v_recipient;
                ELSE
                    SELECT * INTO v_contact FROM core.contacts c WHERE c.tenant_id = v_tenant_id AND c.user_id = v_recipient;
                END IF;
                v_last_inbound := NULL;
                IF v_contact.contact_id IS NULL THEN
                    v_contact.tenant_id := v_tenant_id;
                    v_contact.attributes := '{}';
                    v_contact.opted_out := false;
                    IF v_recipient ~ '^[0-9]+$' THEN
                        v_contact.wa_id := v_recipient;
                    ELSE
                        v_contact.user_id := v_recipient;
                    END IF;
                ELSE
                    SELECT v.last_inbound_at INTO v_last_inbound FROM core.conversations v
                    WHERE v.number_id = v_number.number_id AND v.contact_id = v_contact.contact_id;
                END IF;
                IF v_message->>'type' = 'template' THEN
                    IF v_contact.opted_out THEN
                        RAISE EXCEPTION 'contact % (%) has opted out of messages', v_contact.contact_id, v_recipient
                            USING ERRCODE = 'PW106', HINT = 'The contact opts in again by writing to the number (or api.set_contact_opt_out).';
                    END IF;
                    -- The contact's variables only for a message that uses them.
                    v_rendered := core.api_template_message(v_message, CASE WHEN strpos(v_message::text, '{{') > 0
                                                                            THEN core.contact_vars(v_contact) ELSE '{}' END,
                                                            v_tenant_id, v_number, v_now);
                ELSE
                    IF NOT core.window_open(v_last_inbound, v_now) THEN
                        RAISE EXCEPTION 'the 24-hour customer service window with % %', v_recipient,
                            coalesce('closed at ' || to_char(core.window_closes_at(v_last_inbound) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                                     'is not open: the contact never wrote to this number')
                            USING ERRCODE = 'PW304',
                                  DETAIL = json_build_object('window_closes_at', core.window_closes_at(v_last_inbound))::text,
                                  HINT = 'Outside the window only an approved template reaches the contact: {"type": "template", ...}.';
                    END IF;
                    v_rendered := core.render_reply(core.resolve_reply_media(v_message, v_tenant_id, v_number.number_id),
                                                    core.contact_vars(v_contact));
                END IF;

                -- Assigned by position: PL/pgSQL changes an array in place, where || copies it.
                v_s := v_s + 1;
                s_item[v_s] := v_n;
                s_tenant[v_s] := v_tenant_id;
                s_number[v_s] := v_number.number_id;
                s_contact[v_s] := v_contact.contact_id;
                s_wa[v_s] := v_contact.wa_id;
                s_user[v_s] := v_contact.user_id;
                s_recipient[v_s] := v_recipient;
                s_message[v_s] := v_rendered;
                s_last_inbound[v_s] := v_last_inbound;
                s_key[v_s] := v_key;
                s_hash[v_s] := v_hash;
                IF v_key IS NOT NULL THEN
                    v_seen := v_seen || jsonb_build_object(v_tenant_id || ':' || v_key,
                                                           jsonb_build_object('h', v_hash, 's', v_s));
                END IF;
            END LOOP;
            v_next := v_count + 1;
        EXCEPTION
        WHEN deadlock_detected OR serialization_failure THEN
            -- Two batches caching the same new layouts: the batch fails whole, and POST
            -- /v1/messages sends its requests again one at a time.
            RAISE;
        WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_text = MESSAGE_TEXT,
                                    v_detail = PG_EXCEPTION_DETAIL, v_hint = PG_EXCEPTION_HINT;
            r_state[v_next] := v_state;
            r_text[v_next] := v_text;
            r_detail[v_next] := nullif(v_detail, '');
            r_hint[v_next] := nullif(v_hint, '');
            v_next := v_next + 1;
        END;
    END LOOP;

    IF v_s > 0 THEN
        -- Contacts seen for the first time, in key order (two batches never wait on each
        -- other in a cycle); one created meanwhile by another transaction is taken as it is.
        INSERT INTO core.contacts (tenant_id, wa_id, user_id)
        SELECT DISTINCT s.t, s.w, s.u FROM unnest(s_tenant, s_wa, s_user, s_contact) s(t, w, u, c)
        WHERE s.c IS NULL
        ORDER BY 1, 2, 3
        ON CONFLICT DO NOTHING;
        IF array_position(s_contact, NULL) IS NOT NULL THEN
            SELECT array_agg(coalesce(s.c, cw.contact_id, cu.contact_id) ORDER BY s.n),
                   array_agg(CASE WHEN s.c IS NOT NULL THEN s.w ELSE coalesce(cw.wa_id, cu.wa_id) END ORDER BY s.n),
                   array_agg(CASE WHEN s.c IS NOT NULL THEN s.u ELSE coalesce(cw.user_id, cu.user_id) END ORDER BY s.n)
            INTO s_contact, s_wa, s_user
            FROM unnest(s_tenant, s_wa, s_user, s_contact) WITH ORDINALITY s(t, w, u, c, n)
            LEFT JOIN core.contacts cw ON s.c IS NULL AND s.w IS NOT NULL AND cw.tenant_id = s.t AND cw.wa_id = s.w
            LEFT JOIN core.contacts cu ON s.c IS NULL AND s.w IS NULL AND cu.tenant_id = s.t AND cu.user_id = s.u;
        END IF;

        -- The requests as core.enqueue_replies queues a reply ({"o", "b"} on the reply queue);
        -- a user known only by a business-scoped user id is addressed by it.
        SELECT array_agg(x.o ORDER BY x.n),
               array_agg(jsonb_build_object('messaging_product', 'whatsapp', 'recipient_type', 'individual')
                         || CASE WHEN x.w IS NOT NULL THEN jsonb_build_object('to', x.w)
                                 ELSE jsonb_build_object('recipient', x.u) END
                         || x.m
                         || jsonb_build_object('biz_opaque_callback_data', core.opaque_data(NULL, x.o)) ORDER BY x.n)
        INTO s_outbound, s_body
        FROM (SELECT s.*, nextval('core.outbound_messages_outbound_id_seq') AS o
              FROM unnest(s_wa, s_user, s_message) WITH ORDINALITY s(w, u, m, n)) x;

        INSERT INTO core.outbound_messages (outbound_id, number_id, contact_id, kind)
        OVERRIDING SYSTEM VALUE
        SELECT s.o, s.nb, s.c, 'api' FROM unnest(s_outbound, s_number, s_contact) s(o, nb, c);
        -- Written to the shared inbox, so that agents see what the tenant's system sent. No
        -- NOTIFY inside this transaction: the dashboard's inbox trigger leaves API sends
        -- out, and the sender's wake-up is the caller's after commit (p_wake), since a NOTIFY
        -- holds PostgreSQL's cluster-wide notify lock through the commit's WAL flush.
        INSERT INTO core.inbox_messages (number_id, contact_id, direction, type, body, payload, outbound_id)
        SELECT s.nb, s.c, 'out', coalesce(s.m->>'type', 'text'), core.message_text(s.m), s.b, s.o
        FROM unnest(s_number, s_contact, s_message, s_body, s_outbound) s(nb, c, m, b, o);
        INSERT INTO core.conversations AS v (number_id, contact_id, last_message_at)
        SELECT DISTINCT s.nb, s.c, now() FROM unnest(s_number, s_contact) s(nb, c)
        ORDER BY 1, 2
        ON CONFLICT (number_id, contact_id) DO UPDATE SET
            last_message_at = greatest(v.last_message_at, excluded.last_message_at);
        PERFORM pgmq.send_batch(core.reply_queue(q.nb), q.msgs)
        FROM (SELECT s.nb, array_agg(jsonb_build_object('o', s.o, 'b', s.b) ORDER BY s.n) AS msgs
              FROM unnest(s_number, s_outbound, s_body) WITH ORDINALITY s(nb, o, b, n)
              GROUP BY s.nb ORDER BY s.nb) q;
        INSERT INTO core.api_sends (tenant_id, idempotency_key, request_hash, outbound_id)
        SELECT s.t, s.k, s.h, s.o FROM unnest(s_tenant, s_key, s_hash, s_outbound) s(t, k, h, o)
        WHERE s.k IS NOT NULL;
        -- p_wake false: the caller wakes the sender once this has committed (POST /v1/messages does).
        IF p_wake THEN
            PERFORM core.wake_sender(nb) FROM (SELECT DISTINCT nb FROM unnest(s_number) nb) d;
        END IF;

        FOR v_n IN 1 .. v_s LOOP
            r_sent[s_item[v_n]] := ROW(s_outbound[v_n], s_number[v_n], s_contact[v_n], s_recipient[v_n],
                                       'queued', false, core.window_closes_at(s_last_inbound[v_n]),
                                       now())::api.message_sent;
        END LOOP;
        FOR v_n IN 1 .. cardinality(v_replay_items) LOOP
            r_sent[v_replay_items[v_n]] := ROW(s_outbound[v_replay_of[v_n]], s_number[v_replay_of[v_n]],
                                               s_contact[v_replay_of[v_n]], s_recipient[v_replay_of[v_n]],
                                               'queued', true, core.window_closes_at(s_last_inbound[v_replay_of[v_n]]),
                                               now())::api.message_sent;
        END LOOP;
    END IF;
    -- Keys used by earlier batches: their messages in one query (core.message_sent's).
    IF cardinality(r_replayed) > 0 THEN
        FOR v_replay IN
            SELECT r.n, ROW(o.outbound_id, o.number_id, o.contact_id, coalesce(c.wa_id, c.user_id), o.state, true,
                            core.window_closes_at(v.last_inbound_at), o.queued_at)::api.message_sent AS sent
            FROM generate_subscripts(r_replayed, 1) r(n)
            JOIN core.outbound_messages o ON o.outbound_id = r_replayed[r.n]
            JOIN core.contacts c ON c.contact_id = o.contact_id
            LEFT JOIN core.conversations v ON v.number_id = o.number_id AND v.contact_id = o.contact_id
        LOOP
            r_sent[v_replay.n] := v_replay.sent;
        END LOOP;
    END IF;
    -- Arrays assigned by position are as long as their last position: each answer at its item.
    RETURN QUERY SELECT g.n, r_sent[g.n], r_state[g.n], r_text[g.n], r_detail[g.n], r_hint[g.n]
                 FROM generate_series(1, v_count) g(n);
END
$_$;

COMMENT ON FUNCTION api.send_messages(p_items jsonb, p_now timestamp with time zone, p_wake boolean) IS 'Sends a batch of messages as api.send_message sends one, in one transaction: p_items is a JSON array of {"tenant_id", "number_id", "to", "message", "idempotency_key"} (the tenant taken from each request''s own key). Returns one api.send_result per item, in order: the message (api.message_sent; replayed true for a key already used, in this batch or before) or the error that item alone raised (sqlstate, message, detail, hint: PW100, PW102, PW106, PW202, PW303, PW304, PW245/PW345 as api.send_message raises them), which leaves nothing of that item behind and sends the others. Two items with one tenant''s key send once: the second answers the first''s message, or PW303 for another message. p_wake false leaves waking the senders (NOTIFY pgwa_send) to the caller after commit. Raises PW100 when p_items is not an array, and 55P03 (the batch whole) when a row it needs, a new contact say, is held by another transaction for more than 2 s (lock_timeout).';

CREATE FUNCTION api.send_policy() RETURNS api.send_policy
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT s.throttle_hold_ms, ARRAY(SELECT e.code FROM core.meta_error_codes e WHERE e.backoff = 'throttle' ORDER BY e.code),
           s.pace_horizon_ms, s.claim_timeout_s
    FROM core.settings s
$$;

COMMENT ON FUNCTION api.send_policy() IS 'Returns what a worker must know of Meta''s pacing rules: the error codes that throttle a number (throttle_codes), how long a throttled number sends nothing (throttle_hold_ms), how far ahead a claim schedules sends (pace_horizon_ms: a worker claims every half of it), and how long it may hold a claimed message before handing it back unsent (claim_timeout_s: a pace horizon later a claim may take it again).';

CREATE FUNCTION api.set_campaign_send_window(p_tenant_id bigint, p_campaign_id bigint, p_start time without time zone, p_end time without time zone) RETURNS api.send_window
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_campaign core.campaigns := core.campaign_for(p_tenant_id, p_campaign_id);
BEGIN
    IF (p_start IS NULL) <> (p_end IS NULL) OR p_start = p_end THEN
        RAISE EXCEPTION 'a send window needs a start and an end that differ (or neither, to send at any time)'
            USING ERRCODE = 'PW100', HINT = 'e.g. start 09:00, end 20:00 (local time of each recipient); an end before the start runs past midnight.';
    END IF;
    IF v_campaign.status NOT IN ('draft', 'scheduled', 'running', 'paused') THEN
        RAISE EXCEPTION 'campaign % is %, its send window no longer matters', p_campaign_id, v_campaign.status
            USING ERRCODE = 'PW301', HINT = 'Set the window on a draft, scheduled, running or paused campaign.';
    END IF;
    UPDATE core.campaigns SET send_window_start = p_start, send_window_end = p_end
    WHERE campaign_id = p_campaign_id;
    -- Messages held for the old window come back when it would have opened; a wider
    -- window lets the sender look again now.
    PERFORM core.wake_sender(v_campaign.number_id);
    RETURN ROW(p_campaign_id, p_start, p_end)::api.send_window;
END
$$;

COMMENT ON FUNCTION api.set_campaign_send_window(p_tenant_id bigint, p_campaign_id bigint, p_start time without time zone, p_end time without time zone) IS 'Limits a campaign to hours of each recipient''s local day: messages go out from p_start until p_end local time (an end before the start runs past midnight); both NULL lifts the limit. The recipient''s zone is the contact''s own (api.set_contact_time_zone), else the phone prefix''s, else the tenant''s. A message claimed outside its window goes back to its queue until the window opens for its recipient, its attempt not counted. Returns the window. Raises PW100 for a half or empty window, PW201 when the tenant has no such campaign, PW301 when it is completed or cancelled.';

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
    -- Opting out a phone pgwa has not met yet keeps it out of every future campaign. A
    -- campaign, a send or an inbound message may be adding the same phone meanwhile: the
    -- insert then waits for it and opts out the contact it made.
    IF v_id IS NULL AND p_phone IS NOT NULL AND p_opted_out THEN
        INSERT INTO core.contacts AS c (tenant_id, wa_id, opted_out, opted_out_at)
        VALUES (p_tenant_id, v_wa_id, true, now())
        ON CONFLICT (tenant_id, wa_id) DO UPDATE
            SET opted_out = true, opted_out_at = coalesce(c.opted_out_at, now()), updated_at = now()
        RETURNING c.contact_id INTO v_id;
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

CREATE FUNCTION api.set_contact_time_zone(p_tenant_id bigint, p_contact_id bigint, p_time_zone text) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_contact core.contacts := core.contact_for(p_tenant_id, p_contact_id);
BEGIN
    UPDATE core.contacts SET time_zone = core.check_time_zone(p_time_zone, 'time_zone'), updated_at = now()
    WHERE contact_id = v_contact.contact_id;
    RETURN coalesce(p_time_zone, core.phone_zone(v_contact.wa_id), (SELECT t.time_zone FROM core.tenants t
                                                                    WHERE t.tenant_id = p_tenant_id));
END
$$;

COMMENT ON FUNCTION api.set_contact_time_zone(p_tenant_id bigint, p_contact_id bigint, p_time_zone text) IS 'Sets a contact''s own IANA time zone for campaign send windows (NULL: from the phone''s prefix again). Returns the zone now in effect for the contact. Raises PW100 for a zone PostgreSQL does not know, PW204 when the tenant has no such contact.';

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

CREATE FUNCTION api.set_tenant_time_zone(p_tenant_id bigint, p_time_zone text) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
BEGIN
    IF p_time_zone IS NULL THEN
        RAISE EXCEPTION 'time_zone is required' USING ERRCODE = 'PW100', HINT = 'e.g. "Europe/Lisbon"; "UTC" is the default.';
    END IF;
    UPDATE core.tenants SET time_zone = core.check_time_zone(p_time_zone, 'time_zone') WHERE tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % not found', p_tenant_id USING ERRCODE = 'PW205';
    END IF;
    RETURN p_time_zone;
END
$$;

COMMENT ON FUNCTION api.set_tenant_time_zone(p_tenant_id bigint, p_time_zone text) IS 'Sets the IANA time zone in which the tenant writes schedules (api.tenant_local_time) and which recipients of unknown zone take. Returns it. Raises PW100 for a zone PostgreSQL does not know.';

CREATE FUNCTION api.set_user_role(p_tenant_id bigint, p_user_id bigint, p_role text) RETURNS api.dashboard_user
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_user core.dashboard_users;
BEGIN
    PERFORM core.dashboard_check(coalesce(p_role, ''), NULL, NULL);
    SELECT * INTO v_user FROM core.dashboard_users WHERE user_id = p_user_id AND tenant_id = p_tenant_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % not found', p_user_id USING ERRCODE = 'PW260',
            HINT = 'List the tenant''s users with api.dashboard_users().';
    END IF;
    IF v_user.role = 'admin' AND p_role <> 'admin' AND v_user.disabled_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM core.dashboard_users WHERE tenant_id = p_tenant_id AND role = 'admin'
                       AND disabled_at IS NULL AND user_id <> p_user_id) THEN
        RAISE EXCEPTION 'user % is the tenant''s last admin', p_user_id USING ERRCODE = 'PW301',
            HINT = 'Make another user admin first.';
    END IF;
    UPDATE core.dashboard_users SET role = p_role WHERE user_id = p_user_id RETURNING * INTO v_user;
    RETURN core.dashboard_user_row(v_user);
END
$$;

COMMENT ON FUNCTION api.set_user_role(p_tenant_id bigint, p_user_id bigint, p_role text) IS 'Gives one of the tenant''s dashboard users another role, effective on their next request. Returns the user. Raises PW100 for an unknown role, PW260 when the tenant has no such user, PW301 when it would leave the tenant without an enabled admin.';

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
               upper(coalesce(t->>'status', 'APPROVED')) AS status, t->>'category' AS category, t->>'id' AS meta_id,
               CASE WHEN upper(t->>'parameter_format') IN ('POSITIONAL', 'NAMED') THEN upper(t->>'parameter_format')
                    ELSE core.parameter_format(coalesce(t->'components', '[]')) END AS parameter_format,
               t->>'sub_category' AS sub_category,
               CASE jsonb_typeof(t->'quality_score') WHEN 'object' THEN t#>>'{quality_score,score}'
                                                      WHEN 'string' THEN t->>'quality_score' END AS quality_score,
               t->>'rejected_reason' AS rejected_reason, t->>'previous_category' AS previous_category
        FROM jsonb_array_elements(p_templates) WITH ORDINALITY e(t, ord)
        WHERE t->>'name' <> '' AND t->>'language' <> ''
        ORDER BY t->>'name', t->>'language', ord DESC
    ), stored AS (
        INSERT INTO core.templates AS t (tenant_id, waba_id, name, language, components, status, category,
                                         meta_template_id, body_param_count, parameter_format, sub_category,
                                         quality_score, rejected_reason, previous_category)
        SELECT p_tenant_id, p_waba_id, i.name, i.language, i.components, i.status, i.category, i.meta_id,
               core.body_param_count(i.components), i.parameter_format, i.sub_category, i.quality_score,
               i.rejected_reason, i.previous_category
        FROM incoming i
        ON CONFLICT ON CONSTRAINT templates_waba_name_language_unique DO UPDATE SET
            components = excluded.components, status = excluded.status,
            category = coalesce(excluded.category, t.category),
            meta_template_id = coalesce(excluded.meta_template_id, t.meta_template_id),
            body_param_count = excluded.body_param_count, parameter_format = excluded.parameter_format,
            sub_category = excluded.sub_category, quality_score = coalesce(excluded.quality_score, t.quality_score),
            rejected_reason = excluded.rejected_reason, previous_category = excluded.previous_category,
            updated_at = now()
        WHERE t.tenant_id = p_tenant_id
          AND (t.components, t.status, t.category, t.meta_template_id, t.parameter_format, t.sub_category,
               t.quality_score, t.rejected_reason, t.previous_category)
              IS DISTINCT FROM (excluded.components, excluded.status, coalesce(excluded.category, t.category),
                                coalesce(excluded.meta_template_id, t.meta_template_id), excluded.parameter_format,
                                excluded.sub_category, coalesce(excluded.quality_score, t.quality_score),
                                excluded.rejected_reason, excluded.previous_category)
        RETURNING 1
    )
    SELECT count(*) INTO v_result.stored FROM stored;
    v_result.unchanged := v_result.received - v_result.stored;
    RETURN v_result;
END
$$;

COMMENT ON FUNCTION api.sync_templates(p_tenant_id bigint, p_waba_id text, p_templates jsonb) IS 'Stores a WABA''s templates as the Graph API lists them (a JSON array of Meta''s template objects) in one statement: inserts new ones, updates changed ones, keeping every component as Meta returns it with parameter_format (POSITIONAL or NAMED; inferred from the placeholders when absent), category, sub_category, status, quality_score.score, rejected_reason and previous_category, and counts their body parameters. Returns how many were received, stored and unchanged. Raises PW105 on a malformed list, PW202 when the tenant has no number on that WABA.';

CREATE FUNCTION api.tag_contacts(p_tenant_id bigint, p_contact_ids bigint[], p_add_tags text[] DEFAULT NULL::text[], p_remove_tags text[] DEFAULT NULL::text[]) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_add text[] := core.clean_tags(p_add_tags, 'add_tags');
    v_remove text[] := core.clean_tags(p_remove_tags, 'remove_tags');
    v_missing bigint;
    v_changed integer;
BEGIN
    IF p_contact_ids IS NULL OR cardinality(p_contact_ids) NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'contact_ids must list 1 to 100,000 contacts' USING ERRCODE = 'PW100',
            HINT = 'Tag more with a segment-sized import, or in batches.';
    END IF;
    SELECT i INTO v_missing FROM unnest(p_contact_ids) i
    WHERE NOT EXISTS (SELECT FROM core.contacts c WHERE c.contact_id = i AND c.tenant_id = p_tenant_id) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'contact % not found', v_missing USING ERRCODE = 'PW204',
            HINT = 'List the tenant''s contacts with api.search_contacts(); nothing was tagged.';
    END IF;
    WITH changed AS (
        UPDATE core.contacts c SET tags = n.tags, updated_at = now()
        FROM (SELECT c2.contact_id, ARRAY(SELECT DISTINCT t FROM unnest(c2.tags || v_add) t
                                          WHERE t <> ALL (v_remove) ORDER BY 1) AS tags
              FROM core.contacts c2 WHERE c2.contact_id = ANY (p_contact_ids) AND c2.tenant_id = p_tenant_id) n
        WHERE c.contact_id = n.contact_id AND c.tags IS DISTINCT FROM n.tags
        RETURNING c.contact_id, cardinality(c.tags) AS n_tags
    )
    SELECT count(*), max(n_tags) INTO v_changed, v_missing FROM changed;
    IF v_missing > 100 THEN
        RAISE EXCEPTION 'a contact would have more than 100 tags' USING ERRCODE = 'PW100', HINT = 'Remove some tags first.';
    END IF;
    RETURN v_changed;
END
$$;

COMMENT ON FUNCTION api.tag_contacts(p_tenant_id bigint, p_contact_ids bigint[], p_add_tags text[], p_remove_tags text[]) IS 'Adds p_add_tags to and removes p_remove_tags from each of the tenant''s contacts listed (up to 100,000); returns how many changed. Raises PW100 for bad tags or more than 100 tags on a contact, PW204 (tagging nothing) when an id is not the tenant''s.';

CREATE FUNCTION api.template_definition_problems(p_definition jsonb) RETURNS SETOF api.template_problem
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
    SET search_path TO ''
    AS $_$
DECLARE
    v_p api.template_problem;
    v_category text := upper(p_definition->>'category');
    v_format text := upper(coalesce(p_definition->>'parameter_format', 'POSITIONAL'));
    v_auth boolean := upper(p_definition->>'category') = 'AUTHENTICATION';
    v_comp jsonb;
    v_type text;
    v_seen text[] := '{}';
    v_text text;
    v_vars text[];
    v_example jsonb;
    v_fmt text;
    v_btn jsonb;
    v_i integer;
    v_kind text;
    v_kinds text[] := '{}';
    v_where text;
BEGIN
    IF jsonb_typeof(p_definition) IS DISTINCT FROM 'object' THEN
        v_p := ROW('template', 'the definition is not a JSON object',
                   'Send {"name", "language", "category", "components": [...]}.');
        RETURN NEXT v_p;
        RETURN;
    END IF;
    -- ^[a-z0-9_]{1,512}$, in two parts: PostgreSQL counts repetitions to 255 at most.
    IF coalesce(p_definition->>'name', '') !~ '^[a-z0-9_]+$' OR char_length(p_definition->>'name') > 512 THEN
        v_p := ROW('template', format('name %s is not 1 to 512 lowercase letters, digits and underscores',
                                      coalesce(p_definition->'name', 'null')),
                   'e.g. "spring_sale_2026": no spaces, capitals or dashes.');
        RETURN NEXT v_p;
    END IF;
    IF coalesce(p_definition->>'language', '') !~ '^[a-z]{2,3}(_[A-Za-z]{2,4})?$' THEN
        v_p := ROW('template', format('language %s is not a language code', coalesce(p_definition->'language', 'null')),
                   'Use Meta''s code, e.g. "en_US", "en", "pt_BR".');
        RETURN NEXT v_p;
    END IF;
    IF v_category IS NULL OR v_category NOT IN ('MARKETING', 'UTILITY', 'AUTHENTICATION') THEN
        v_p := ROW('template', format('category %s is not one of Meta''s', coalesce(p_definition->'category', 'null')),
                   'Use "MARKETING", "UTILITY" or "AUTHENTICATION".');
        RETURN NEXT v_p;
    END IF;
    IF v_format NOT IN ('POSITIONAL', 'NAMED') THEN
        v_p := ROW('template', format('parameter_format %s is neither POSITIONAL nor NAMED', p_definition->'parameter_format'),
                   'Use "POSITIONAL" ({{1}}) or "NAMED" ({{first_name}}), or leave it out (POSITIONAL).');
        RETURN NEXT v_p;
        v_format := 'POSITIONAL';
    END IF;
    IF jsonb_typeof(p_definition->'components') IS DISTINCT FROM 'array'
       OR jsonb_array_length(p_definition->'components') = 0 THEN
        v_p := ROW('template', 'components is missing or empty',
                   'Give at least a BODY: "components": [{"type": "BODY", "text": "..."}].');
        RETURN NEXT v_p;
        RETURN;
    END IF;

    FOR v_comp IN SELECT c FROM jsonb_array_elements(p_definition->'components') c LOOP
        v_type := upper(v_comp->>'type');
        IF jsonb_typeof(v_comp) IS DISTINCT FROM 'object' OR v_type IS NULL
           OR v_type NOT IN ('HEADER', 'BODY', 'FOOTER', 'BUTTONS') THEN
            v_p := ROW(coalesce(v_type, 'components'),
                       format('component %s is not a HEADER, BODY, FOOTER or BUTTONS', left(v_comp::text, 80)),
                       'pgwa creates header/body/footer/buttons templates; make carousel and limited-time-offer templates in WhatsApp Manager and sync them.');
            RETURN NEXT v_p;
            CONTINUE;
        END IF;
        IF v_type = ANY (v_seen) THEN
            v_p := ROW(v_type, format('more than one %s component', v_type), 'A template has at most one of each component.');
            RETURN NEXT v_p;
            CONTINUE;
        END IF;
        v_seen := v_seen || v_type;
        v_text := v_comp->>'text';
        v_vars := core.template_variables(v_text);
        v_example := v_comp->'example';

        IF v_type = 'HEADER' THEN
            v_fmt := upper(v_comp->>'format');
            IF v_auth THEN
                v_p := ROW('HEADER', 'an AUTHENTICATION template has no header', 'Remove the HEADER component.');
                RETURN NEXT v_p;
            ELSIF v_fmt IS NULL OR v_fmt NOT IN ('TEXT', 'IMAGE', 'VIDEO', 'DOCUMENT', 'LOCATION') THEN
                v_p := ROW('HEADER', format('format %s is not a header format', coalesce(v_comp->'format', 'null')),
                           'Use "TEXT", "IMAGE", "VIDEO", "DOCUMENT" or "LOCATION".');
                RETURN NEXT v_p;
            ELSIF v_fmt = 'TEXT' THEN
                IF coalesce(v_text, '') = '' THEN
                    v_p := ROW('HEADER', 'a TEXT header has no text', 'Give "text" (at most 60 characters).');
                    RETURN NEXT v_p;
                ELSIF char_length(v_text) > 60 THEN
                    v_p := ROW('HEADER', format('text is %s characters, over Meta''s 60', char_length(v_text)),
                               'Shorten the header to 60 characters.');
                    RETURN NEXT v_p;
                END IF;
                IF cardinality(v_vars) > 1 THEN
                    v_p := ROW('HEADER', format('text has %s variables; a header takes at most one', cardinality(v_vars)),
                               'Keep one variable in the header and move the others to the body.');
                    RETURN NEXT v_p;
                ELSIF cardinality(v_vars) = 1 THEN
                    RETURN QUERY SELECT * FROM core.variable_problems('HEADER', v_vars, v_format);
                    IF v_format = 'NAMED' AND NOT EXISTS (
                           SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof(v_example->'header_text_named_params') = 'array'
                                                                   THEN v_example->'header_text_named_params' ELSE '[]' END) e
                           WHERE e->>'param_name' = v_vars[1] AND coalesce(e->>'example', '') <> '') THEN
                        v_p := ROW('HEADER', format('no example for {{%s}}', v_vars[1]),
                                   format('Add "example": {"header_text_named_params": [{"param_name": "%s", "example": "..."}]}.', v_vars[1]));
                        RETURN NEXT v_p;
                    ELSIF v_format = 'POSITIONAL' AND coalesce(v_example#>>'{header_text,0}', '') = '' THEN
                        v_p := ROW('HEADER', 'no example for {{1}}', 'Add "example": {"header_text": ["Pablo"]}.');
                        RETURN NEXT v_p;
                    END IF;
                END IF;
            ELSIF v_fmt IN ('IMAGE', 'VIDEO', 'DOCUMENT') AND (
                    jsonb_typeof(v_example->'header_handle') IS DISTINCT FROM 'array'
                    OR coalesce(v_example#>>'{header_handle,0}', '') = '') THEN
                v_p := ROW('HEADER', format('a %s header needs an example', v_fmt),
                           'Upload a sample with Meta''s resumable upload and add "example": {"header_handle": ["<handle>"]}.');
                RETURN NEXT v_p;
            END IF;

        ELSIF v_type = 'BODY' THEN
            -- Meta writes an AUTHENTICATION template's body itself (a code and, optionally,
            -- a security recommendation): its text is not the sender's to check.
            CONTINUE WHEN v_auth;
            IF coalesce(v_text, '') = '' THEN
                v_p := ROW('BODY', 'the body has no text', 'Give "text" (at most 1,024 characters).');
                RETURN NEXT v_p;
                CONTINUE;
            END IF;
            IF char_length(v_text) > 1024 THEN
                v_p := ROW('BODY', format('text is %s characters, over Meta''s 1,024', char_length(v_text)),
                           'Shorten the body to 1,024 characters.');
                RETURN NEXT v_p;
            END IF;
            CONTINUE WHEN cardinality(v_vars) = 0;
            RETURN QUERY SELECT * FROM core.variable_problems('BODY', v_vars, v_format);
            IF btrim(v_text) ~ '^\{\{' OR btrim(v_text) ~ '\}\}$' THEN
                v_p := ROW('BODY', 'the text starts or ends with a variable (Meta refuses it: 2388299)',
                           'Put words before the first variable and after the last one.');
                RETURN NEXT v_p;
            END IF;
            IF v_text ~ '\}\}\s*\{\{' THEN
                v_p := ROW('BODY', 'two variables are next to each other with no text between them (Meta rejects it: INVALID_FORMAT)',
                           'Separate the variables with descriptive text.');
                RETURN NEXT v_p;
            END IF;
            IF v_format = 'NAMED' THEN
                RETURN QUERY
                SELECT 'BODY'::text, format('no example for {{%s}}', v),
                       format('Add {"param_name": "%s", "example": "..."} to "example": {"body_text_named_params": [...]}.', v)
                FROM unnest(v_vars) v
                WHERE NOT EXISTS (
                    SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof(v_example->'body_text_named_params') = 'array'
                                                            THEN v_example->'body_text_named_params' ELSE '[]' END) e
                    WHERE e->>'param_name' = v AND coalesce(e->>'example', '') <> '');
            ELSIF jsonb_typeof(v_example#>'{body_text,0}') IS DISTINCT FROM 'array'
                  OR jsonb_array_length(v_example#>'{body_text,0}') <> cardinality(v_vars)
                  OR EXISTS (SELECT 1 FROM jsonb_array_elements(v_example#>'{body_text,0}') e
                             WHERE jsonb_typeof(e) <> 'string' OR e #>> '{}' = '') THEN
                v_p := ROW('BODY', format('the body has %s variables and needs an example for each', cardinality(v_vars)),
                           format('Add "example": {"body_text": [[%s]]}: one non-empty value per variable, in order.',
                                  array_to_string(ARRAY(SELECT format('"<{{%s}}>"', v) FROM unnest(v_vars) v), ', ')));
                RETURN NEXT v_p;
            END IF;

        ELSIF v_type = 'FOOTER' THEN
            CONTINUE WHEN v_auth;   -- code_expiration_minutes, no text
            IF coalesce(v_text, '') = '' THEN
                v_p := ROW('FOOTER', 'the footer has no text', 'Give "text" (at most 60 characters) or remove the FOOTER.');
                RETURN NEXT v_p;
            ELSIF char_length(v_text) > 60 THEN
                v_p := ROW('FOOTER', format('text is %s characters, over Meta''s 60', char_length(v_text)),
                           'Shorten the footer to 60 characters.');
                RETURN NEXT v_p;
            END IF;
            IF cardinality(v_vars) > 0 THEN
                v_p := ROW('FOOTER', 'a footer takes no variables', 'Move the variable to the body.');
                RETURN NEXT v_p;
            END IF;

        ELSE   -- BUTTONS
            IF jsonb_typeof(v_comp->'buttons') IS DISTINCT FROM 'array'
               OR jsonb_array_length(v_comp->'buttons') NOT BETWEEN 1 AND 10 THEN
                v_p := ROW('BUTTONS', 'buttons must be a list of 1 to 10 buttons',
                           'e.g. "buttons": [{"type": "QUICK_REPLY", "text": "Stop promotions"}].');
                RETURN NEXT v_p;
                CONTINUE;
            END IF;
            v_i := 0;
            FOR v_btn IN SELECT b FROM jsonb_array_elements(v_comp->'buttons') b LOOP
                v_where := format('BUTTONS[%s]', v_i);
                v_kind := upper(v_btn->>'type');
                v_kinds := v_kinds || v_kind;
                v_text := v_btn->>'text';
                IF v_kind IS NULL OR v_kind NOT IN ('QUICK_REPLY', 'URL', 'PHONE_NUMBER', 'COPY_CODE', 'OTP', 'FLOW',
                                                    'CATALOG', 'MPM', 'VOICE_CALL') THEN
                    v_p := ROW(v_where, format('type %s is not a button type', coalesce(v_btn->'type', 'null')),
                               'Use QUICK_REPLY, URL, PHONE_NUMBER, COPY_CODE, OTP (authentication) or FLOW.');
                    RETURN NEXT v_p;
                ELSIF v_kind IN ('QUICK_REPLY', 'URL', 'PHONE_NUMBER', 'FLOW', 'VOICE_CALL')
                      AND (coalesce(v_text, '') = '' OR char_length(v_text) > 25) THEN
                    v_p := ROW(v_where, format('a %s button needs a text of 1 to 25 characters', v_kind),
                               'Give "text", e.g. "Shop now".');
                    RETURN NEXT v_p;
                END IF;
                IF v_kind = 'URL' THEN
                    v_vars := core.template_variables(v_btn->>'url');
                    IF coalesce(v_btn->>'url', '') !~ '^https?://[^\s/]+' THEN
                        v_p := ROW(v_where, format('url %s is not an http(s) URL', coalesce(v_btn->'url', 'null')),
                                   'e.g. "url": "https://shop.example.com/sale/{{1}}".');
                        RETURN NEXT v_p;
                    ELSIF cardinality(v_vars) > 1 OR (cardinality(v_vars) = 1 AND v_btn->>'url' !~ '\{\{1\}\}$') THEN
                        v_p := ROW(v_where, 'a URL button takes one variable, {{1}}, at the end of its url',
                                   'e.g. "url": "https://shop.example.com/sale/{{1}}".');
                        RETURN NEXT v_p;
                    ELSIF cardinality(v_vars) = 1 AND coalesce(v_btn#>>'{example,0}', '') = '' THEN
                        v_p := ROW(v_where, 'the url''s {{1}} has no example',
                                   'Add "example": ["https://shop.example.com/sale/spring"] (the full url with a sample suffix).');
                        RETURN NEXT v_p;
                    END IF;
                ELSIF v_kind = 'PHONE_NUMBER' AND coalesce(v_btn->>'phone_number', '') !~ '^\+?[0-9]{5,20}$' THEN
                    v_p := ROW(v_where, 'a PHONE_NUMBER button needs a phone_number', 'e.g. "phone_number": "+15550100".');
                    RETURN NEXT v_p;
                ELSIF v_kind = 'COPY_CODE' THEN
                    v_example := CASE WHEN jsonb_typeof(v_btn->'example') = 'array' THEN v_btn->'example'->0 ELSE v_btn->'example' END;
                    IF coalesce(v_example #>> '{}', '') = '' OR char_length(v_example #>> '{}') > 15 THEN
                        v_p := ROW(v_where, 'a COPY_CODE button needs an example code of 1 to 15 characters',
                                   'e.g. "example": "SUMMER20".');
                        RETURN NEXT v_p;
                    END IF;
                ELSIF v_kind = 'OTP' THEN
                    IF NOT v_auth THEN
                        v_p := ROW(v_where, 'an OTP button belongs to an AUTHENTICATION template',
                                   'Set "category": "AUTHENTICATION", or use a COPY_CODE or URL button.');
                        RETURN NEXT v_p;
                    ELSIF upper(coalesce(v_btn->>'otp_type', '')) NOT IN ('COPY_CODE', 'ONE_TAP', 'ZERO_TAP') THEN
                        v_p := ROW(v_where, format('otp_type %s is not one of Meta''s', coalesce(v_btn->'otp_type', 'null')),
                                   'Use "COPY_CODE", "ONE_TAP" or "ZERO_TAP".');
                        RETURN NEXT v_p;
                    END IF;
                ELSIF v_kind = 'FLOW' AND coalesce(v_btn->>'flow_id', v_btn->>'flow_name', v_btn->>'flow_json') IS NULL THEN
                    v_p := ROW(v_where, 'a FLOW button names no Flow', 'Give "flow_id" (or "flow_name" or "flow_json").');
                    RETURN NEXT v_p;
                END IF;
                v_i := v_i + 1;
            END LOOP;
            IF (SELECT count(*) FROM unnest(v_kinds) k WHERE k = 'URL') > 2 THEN
                v_p := ROW('BUTTONS', 'more than 2 URL buttons', 'Meta allows at most 2 URL buttons.');
                RETURN NEXT v_p;
            END IF;
            IF (SELECT count(*) FROM unnest(v_kinds) k WHERE k = 'PHONE_NUMBER') > 1 THEN
                v_p := ROW('BUTTONS', 'more than 1 PHONE_NUMBER button', 'Meta allows one phone number button.');
                RETURN NEXT v_p;
            END IF;
            IF (SELECT count(*) FROM unnest(v_kinds) k WHERE k = 'COPY_CODE') > 1 THEN
                v_p := ROW('BUTTONS', 'more than 1 COPY_CODE button', 'Meta allows one copy-code button.');
                RETURN NEXT v_p;
            END IF;
        END IF;
    END LOOP;

    IF NOT 'BODY' = ANY (v_seen) THEN
        v_p := ROW('BODY', 'the template has no BODY', 'Add {"type": "BODY", "text": "..."}.');
        RETURN NEXT v_p;
    END IF;
    IF v_auth AND (SELECT count(*) FROM unnest(v_kinds) k WHERE k = 'OTP') <> 1 THEN
        v_p := ROW('BUTTONS', 'an AUTHENTICATION template needs exactly one OTP button',
                   'Add "buttons": [{"type": "OTP", "otp_type": "COPY_CODE"}].');
        RETURN NEXT v_p;
    END IF;
END
$_$;

COMMENT ON FUNCTION api.template_definition_problems(p_definition jsonb) IS 'Lists every way a template definition (the body of Meta''s POST /{waba-id}/message_templates: name, language, category, parameter_format, components with examples) breaks Meta''s documented rules, each with the component (template, HEADER, BODY, FOOTER, BUTTONS, BUTTONS[i]), the problem and the fix; no rows when it holds. Changes nothing.';

CREATE FUNCTION api.template_deleted(p_tenant_id bigint, p_template_id bigint, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_template core.templates := core.template_for(p_tenant_id, p_template_id);
BEGIN
    IF v_template.status <> 'DELETED' THEN
        UPDATE core.templates SET status = 'DELETED', deleted_at = coalesce(p_now, now()), updated_at = now()
        WHERE template_id = v_template.template_id
        RETURNING * INTO v_template;
        PERFORM core.pause_template_campaigns(ARRAY[v_template.template_id], ARRAY['DELETED'],
                                              ARRAY['deleted through pgwa']);
    END IF;
    RETURN core.template_json(v_template);
END
$$;

COMMENT ON FUNCTION api.template_deleted(p_tenant_id bigint, p_template_id bigint, p_now timestamp with time zone) IS 'Step two of deleting a template, once Meta confirmed it: marks it DELETED and pauses the scheduled and running campaigns that send it (api.prepare_template_deletion refused them unless forced), with a notification each; their unsent messages stay queued. Returns the template. Raises PW203 when the tenant has no such template.';

CREATE FUNCTION api.template_detail(p_tenant_id bigint, p_template_id bigint) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_template core.templates;
BEGIN
    SELECT * INTO v_template FROM core.templates WHERE template_id = p_template_id AND tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'template % not found', p_template_id USING ERRCODE = 'PW203',
            HINT = 'List the tenant''s templates with api.templates() (GET /v1/templates).';
    END IF;
    RETURN core.template_json(v_template) || jsonb_build_object(
        'parameters', (SELECT coalesce(jsonb_agg(to_jsonb(p)), '[]')
                       FROM api.template_parameters(p_tenant_id, p_template_id) p),
        'campaigns', (SELECT coalesce(jsonb_agg(jsonb_build_object('campaign_id', c.campaign_id, 'name', c.name,
                                                                  'status', c.status) ORDER BY c.campaign_id), '[]')
                      FROM core.campaigns c
                      WHERE c.tenant_id = p_tenant_id AND c.status IN ('scheduled', 'running', 'paused')
                        AND EXISTS (SELECT 1 FROM core.campaign_templates ct
                                    WHERE ct.campaign_id = c.campaign_id AND ct.template_id = p_template_id)));
END
$$;

COMMENT ON FUNCTION api.template_detail(p_tenant_id bigint, p_template_id bigint) IS 'One template of the tenant with its components, status, quality and category history, the parameters a send (and a campaign mapping) must give (component, index, parameter_name, kind, required, example, mapping), and the unfinished campaigns that send it. Raises PW203 when the tenant has no such template.';

CREATE FUNCTION api.template_parameters(p_tenant_id bigint, p_template_id bigint) RETURNS SETOF api.template_parameter
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_template core.templates;
BEGIN
    SELECT * INTO v_template FROM core.templates WHERE template_id = p_template_id AND tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'template % not found', p_template_id
            USING ERRCODE = 'PW203', HINT = 'List the tenant''s templates with api.templates().';
    END IF;
    RETURN QUERY
    SELECT s.* FROM core.template_slots(v_template.components, v_template.parameter_format) s
    ORDER BY CASE s.component WHEN 'header' THEN 0 WHEN 'body' THEN 1 ELSE 2 END, s.index;
END
$$;

COMMENT ON FUNCTION api.template_parameters(p_tenant_id bigint, p_template_id bigint) IS 'Describes the parameters a template needs when sent, one row a slot in the order of Meta''s components array: component (header, body, button), index (header/body: the placeholder''s 1-based position; button: its 0-based index), parameter_name (NAMED templates), kind (text, image, video, document, location, url_suffix, coupon_code, payload, otp), required (a campaign mapping must give it; an OTP button defaults to the body''s code, a quick-reply payload is optional), Meta''s example value, and mapping (where it goes in an api.create_campaign template mapping: header, body[0], body.first_name, buttons.0). Raises PW203 when the tenant has no such template.';

CREATE FUNCTION api.template_refused(p_tenant_id bigint, p_template_id bigint) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_template core.templates := core.template_for(p_tenant_id, p_template_id);
BEGIN
    IF v_template.status <> 'SUBMITTING' THEN
        RETURN false;
    END IF;
    IF v_template.deleted_at IS NOT NULL THEN
        UPDATE core.templates SET status = 'DELETED', updated_at = now() WHERE template_id = v_template.template_id;
    ELSE
        DELETE FROM core.templates WHERE template_id = v_template.template_id;
    END IF;
    RETURN true;
END
$$;

COMMENT ON FUNCTION api.template_refused(p_tenant_id bigint, p_template_id bigint) IS 'Step two of creating a template when Meta refused it (or could not be asked): lets go of the claim api.prepare_template made, so that a corrected definition may be submitted; a template deleted before goes back to DELETED. Returns whether there was a claim to let go. Raises PW203 when the tenant has no such template.';

CREATE FUNCTION api.template_submitted(p_tenant_id bigint, p_template_id bigint, p_answer jsonb) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_template core.templates := core.template_for(p_tenant_id, p_template_id);
BEGIN
    IF jsonb_typeof(p_answer) IS DISTINCT FROM 'object' OR coalesce(p_answer->>'id', '') = '' THEN
        RAISE EXCEPTION 'Meta''s answer carries no template id' USING ERRCODE = 'PW105',
            HINT = 'Pass the body of Meta''s answer to POST /{waba-id}/message_templates: {"id", "status", "category"}.';
    END IF;
    -- A review webhook may have come first: it is newer than the answer's status.
    UPDATE core.templates SET
        meta_template_id = p_answer->>'id',
        status = CASE WHEN status = 'SUBMITTING' THEN upper(coalesce(p_answer->>'status', 'PENDING')) ELSE status END,
        category = coalesce(upper(p_answer->>'category'), category),
        deleted_at = NULL, updated_at = now()
    WHERE template_id = v_template.template_id
    RETURNING * INTO v_template;
    RETURN core.template_json(v_template);
END
$$;

COMMENT ON FUNCTION api.template_submitted(p_tenant_id bigint, p_template_id bigint, p_answer jsonb) IS 'Step two of creating a template: records Meta''s answer to the submission ({"id", "status", "category"}): Meta''s template id and its status (PENDING until the review webhook). Returns the template. Raises PW203 when the tenant has no such template, PW105 when the answer carries no id.';

CREATE FUNCTION api.templates(p_tenant_id bigint, p_waba_id text DEFAULT NULL::text, p_status text DEFAULT NULL::text) RETURNS SETOF api.template
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT t.template_id, t.waba_id, t.name, t.language, t.category, t.status, t.body_param_count, t.components,
           t.meta_template_id, t.updated_at, t.parameter_format, t.sub_category, t.quality_score, t.rejected_reason,
           t.previous_category
    FROM core.templates t
    WHERE t.tenant_id = p_tenant_id
      AND (p_waba_id IS NULL OR t.waba_id = p_waba_id)
      AND (p_status IS NULL OR t.status = upper(p_status))
    ORDER BY t.name, t.language, t.template_id
$$;

COMMENT ON FUNCTION api.templates(p_tenant_id bigint, p_waba_id text, p_status text) IS 'Lists the tenant''s message templates (optionally of one WABA or status) with their components, body parameter count, parameter_format, sub_category, quality_score, rejected_reason and previous_category; api.template_parameters describes what one needs when sent.';

CREATE FUNCTION api.tenant_local_time(p_tenant_id bigint, p_local timestamp without time zone) RETURNS timestamp with time zone
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    SELECT p_local AT TIME ZONE t.time_zone FROM core.tenants t WHERE t.tenant_id = p_tenant_id
$$;

COMMENT ON FUNCTION api.tenant_local_time(p_tenant_id bigint, p_local timestamp without time zone) IS 'A wall-clock time as the tenant writes it (no offset), in its time zone: "schedule at 09:00 tomorrow" means 09:00 where the tenant is. NULL for NULL.';

CREATE FUNCTION api.tenant_time_zone(p_tenant_id bigint) RETURNS text
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_zone text;
BEGIN
    SELECT t.time_zone INTO v_zone FROM core.tenants t WHERE t.tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % not found', p_tenant_id USING ERRCODE = 'PW205',
            HINT = 'Create the tenant first (pgwa tenant create).';
    END IF;
    RETURN v_zone;
END
$$;

COMMENT ON FUNCTION api.tenant_time_zone(p_tenant_id bigint) IS 'The IANA time zone the tenant writes schedules in (api.set_tenant_time_zone; api.tenant_local_time reads a wall-clock time in it). Raises PW205 for an unknown tenant.';

CREATE FUNCTION api.test_event_endpoint(p_tenant_id bigint, p_endpoint_id bigint) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_event_id bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM core.event_endpoints WHERE endpoint_id = p_endpoint_id AND tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'event endpoint % not found', p_endpoint_id USING ERRCODE = 'PW230',
            HINT = 'List the tenant''s endpoints with GET /v1/endpoints.';
    END IF;
    PERFORM core.queue_events('endpoint.test', ARRAY[p_tenant_id],
                              ARRAY[jsonb_build_object('endpoint_id', p_endpoint_id, 'message', 'pgwa test event')],
                              p_endpoint_id);
    SELECT max(d.event_id) INTO v_event_id FROM core.event_deliveries d WHERE d.endpoint_id = p_endpoint_id;
    RETURN v_event_id;
END
$$;

COMMENT ON FUNCTION api.test_event_endpoint(p_tenant_id bigint, p_endpoint_id bigint) IS 'Queues an endpoint.test event to one of the tenant''s endpoints (delivered, signed and retried like any other); returns its event id. Raises PW230 when the tenant has no such endpoint.';

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
    -- The number's messages not yet sent (replies, bot and API sends) are the ones its reply
    -- queue holds, waiting or claimed: found through it, not by reading every message the
    -- number ever sent (outbound_messages has no index by number; one whose predicate named
    -- the state would make every state change a non-HOT update).
    IF EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = core.reply_queue(v_number.number_id)) THEN
        EXECUTE format('UPDATE core.outbound_messages o SET state = ''cancelled''
                        FROM pgmq.%I q
                        WHERE o.outbound_id = (q.message->>''o'')::bigint AND o.number_id = $1
                          AND o.campaign_id IS NULL AND o.state IN (''queued'', ''in_flight'')',
                       pgmq.format_table_name(core.reply_queue(v_number.number_id), 'q'))
        USING v_number.number_id;
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

CREATE FUNCTION api.update_contact(p_tenant_id bigint, p_contact_id bigint, p_name text DEFAULT NULL::text, p_fields jsonb DEFAULT NULL::jsonb, p_add_tags text[] DEFAULT NULL::text[], p_remove_tags text[] DEFAULT NULL::text[]) RETURNS api.contact_record
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
DECLARE
    v_fields jsonb;
BEGIN
    PERFORM core.contact_record(p_tenant_id, p_contact_id);
    IF length(p_name) > 200 THEN
        RAISE EXCEPTION 'name is longer than 200 characters' USING ERRCODE = 'PW100', HINT = 'Shorten the name.';
    END IF;
    v_fields := core.checked_fields(p_tenant_id, p_fields);
    UPDATE core.contacts c SET
        name = CASE WHEN p_name IS NULL THEN c.name ELSE nullif(btrim(p_name), '') END,
        attributes = (c.attributes || jsonb_strip_nulls(v_fields))
                     - ARRAY(SELECT e.key FROM jsonb_each(v_fields) e WHERE e.value = 'null'),
        updated_at = now()
    WHERE c.contact_id = p_contact_id;
    IF p_add_tags IS NOT NULL OR p_remove_tags IS NOT NULL THEN
        PERFORM api.tag_contacts(p_tenant_id, ARRAY[p_contact_id], p_add_tags, p_remove_tags);
    END IF;
    RETURN core.contact_record(p_tenant_id, p_contact_id);
END
$$;

COMMENT ON FUNCTION api.update_contact(p_tenant_id bigint, p_contact_id bigint, p_name text, p_fields jsonb, p_add_tags text[], p_remove_tags text[]) IS 'Edits one contact of the tenant: p_name (null keeps it, '''' clears it), p_fields merged into its custom field values ({"city": "Paris", "points": null}: null removes one; each checked against its field''s type), tags added and removed. Returns the contact. Raises PW204 when not found, PW100 for a bad name or tags, PW233 for an undefined field, PW133 for a value that does not fit its field''s type.';

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
                                     meta_template_id, body_param_count, parameter_format)
    VALUES (p_tenant_id, p_waba_id, p_name, p_language, coalesce(p_components, '[]'), upper(p_status),
            p_category, p_meta_template_id, core.body_param_count(p_components), core.parameter_format(p_components))
    ON CONFLICT ON CONSTRAINT templates_waba_name_language_unique DO UPDATE SET
        components = excluded.components, status = excluded.status,
        category = coalesce(excluded.category, t.category),
        meta_template_id = coalesce(excluded.meta_template_id, t.meta_template_id),
        body_param_count = excluded.body_param_count, parameter_format = excluded.parameter_format, updated_at = now()
    RETURNING template_id INTO v_id;
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION api.upsert_template(p_tenant_id bigint, p_waba_id text, p_name text, p_language text, p_components jsonb, p_status text, p_category text, p_meta_template_id text) IS 'Creates or updates a message template of a WABA (as listed by Meta) and returns its template_id; counts its body parameters and takes its parameter_format from its placeholders (NAMED when one is not a number). Raises PW100 on a malformed field, PW202 when the tenant has no number on that WABA.';

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

CREATE FUNCTION core.api_recipient(p_to text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO ''
    AS $_$
DECLARE
    v_phone text;
BEGIN
    IF p_to ~ '^[A-Z]{2}\.[0-9]{5,40}$' THEN
        RETURN p_to;
    END IF;
    v_phone := core.normalize_phone(p_to);
    IF v_phone IS NULL THEN
        RAISE EXCEPTION 'to "%" is neither a phone number with its country code nor a business-scoped user id',
            left(coalesce(p_to, ''), 60)
            USING ERRCODE = 'PW100', HINT = 'Give "+15551234567" (E.164) or a user id such as "US.13491208655302741918".';
    END IF;
    RETURN v_phone;
END
$_$;

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
    sender text,
    sender_until timestamp with time zone,
    CONSTRAINT wa_numbers_phone_number_id_digits CHECK ((phone_number_id ~ '^[0-9]{1,32}$'::text)),
    CONSTRAINT wa_numbers_rate_positive CHECK ((rate_mps > (0)::double precision)),
    CONSTRAINT wa_numbers_throughput_valid CHECK (((throughput_mps >= 1) AND (throughput_mps <= 1000))),
    CONSTRAINT wa_numbers_waba_id_digits CHECK ((waba_id ~ '^[0-9]{1,32}$'::text))
);

COMMENT ON COLUMN core.wa_numbers.quality_event_at IS 'When the newest phone_number_quality_update applied to the number happened; an older one changes nothing.';

COMMENT ON COLUMN core.wa_numbers.ban_event_at IS 'When the newest account_update DISABLED_UPDATE (ban or reinstatement) of the number''s WABA happened; an older one changes nothing.';

COMMENT ON COLUMN core.wa_numbers.sender IS 'The worker (api.claim_sends'' p_worker) that sends this number''s messages until sender_until; other workers do not claim them meanwhile.';

COMMENT ON COLUMN core.wa_numbers.sender_until IS 'When the sender gives the number up unless it claims again: a pace horizon after the last message it was given, or after an api.keep_numbers call (a worker behind its schedule that still holds the number''s messages). api.release_numbers clears it sooner, when the worker stops or cannot reach Meta.';

CREATE FUNCTION core.api_template_message(p_message jsonb, p_vars jsonb, p_tenant_id bigint, p_number core.wa_numbers, p_now timestamp with time zone) RETURNS jsonb
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_template core.templates;
    v_params jsonb := CASE WHEN jsonb_typeof(p_message->'parameters') = 'object' THEN p_message->'parameters' ELSE '{}' END;
    v_header jsonb := coalesce(p_message->'header', v_params->'header');
    v_body jsonb := coalesce(p_message->'body', p_message->'params', v_params->'body',
                             CASE WHEN jsonb_typeof(p_message->'parameters') = 'array' THEN p_message->'parameters' END);
    v_buttons jsonb := coalesce(p_message->'buttons', v_params->'buttons');
    v_key text;
    v_spec jsonb;
    v_shape jsonb;
    v_values jsonb;
    v_md5 text;
    v_render jsonb;
    v_plain boolean := false;
    v_fits boolean;
BEGIN
    IF p_message - '{type,name,language,header,body,buttons,params,parameters}'::text[] <> '{}'::jsonb THEN
        SELECT string_agg(format('"%s"', k), ', ') INTO v_key FROM jsonb_object_keys(p_message) k
        WHERE k NOT IN ('type', 'name', 'language', 'header', 'body', 'buttons', 'params', 'parameters');
        RAISE EXCEPTION 'a template message has no key %', v_key USING ERRCODE = 'PW100',
            HINT = '{"name": "...", "language": "en_US", "header": ..., "body": [...] or {...}, "buttons": {"0": ...}}';
    END IF;
    SELECT * INTO v_template FROM core.templates t
    WHERE t.tenant_id = p_tenant_id AND t.waba_id = p_number.waba_id
      AND t.name = p_message->>'name' AND t.language = p_message->>'language';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'template "%" (%) does not exist for WABA %', p_message->>'name',
            coalesce(p_message->>'language', 'no language'), p_number.waba_id
            USING ERRCODE = 'PW102', HINT = 'Sync templates from Meta or check the name and language.';
    ELSIF v_template.status <> 'APPROVED' THEN
        RAISE EXCEPTION 'template "%" (%) is %, not APPROVED', v_template.name, v_template.language, v_template.status
            USING ERRCODE = 'PW102', HINT = 'Only approved templates can be sent.';
    END IF;
    -- The common request, a body list of plain values (no {{variables}}), has a shape known
    -- without walking it (core.api_template_shape's: slot n the n-th value); others are walked.
    IF v_header IS NULL AND v_buttons IS NULL AND jsonb_typeof(v_body) = 'array' AND jsonb_array_length(v_body) > 0 THEN
        SELECT bool_and(jsonb_typeof(b.value) IN ('string', 'number', 'boolean') AND strpos(b.value #>> '{}', '{{') = 0),
               jsonb_build_object('body', jsonb_agg(jsonb_build_object('column', format('v%s', lpad((b.i - 1)::text, 3, '0')))
                                                    ORDER BY b.i)),
               jsonb_agg(to_jsonb(b.value #>> '{}') ORDER BY b.i)
        INTO v_plain, v_shape, v_values
        FROM jsonb_array_elements(v_body) WITH ORDINALITY b(value, i);
    END IF;
    IF NOT v_plain THEN
        v_spec := jsonb_strip_nulls(jsonb_build_object(
            'header', core.api_template_source(v_header, p_vars, p_tenant_id, p_number.number_id, p_now),
            'body', CASE jsonb_typeof(v_body)
                WHEN 'array' THEN (SELECT coalesce(jsonb_agg(coalesce(core.api_template_source(b.value, p_vars, p_tenant_id,
                                                               p_number.number_id, p_now), 'null') ORDER BY b.i), '[]')
                                   FROM jsonb_array_elements(v_body) WITH ORDINALITY b(value, i))
                WHEN 'object' THEN (SELECT coalesce(jsonb_object_agg(b.key, core.api_template_source(b.value, p_vars, p_tenant_id,
                                                                      p_number.number_id, p_now)), '{}')
                                    FROM jsonb_each(v_body) b)
                ELSE v_body END,
            'buttons', CASE jsonb_typeof(v_buttons)
                WHEN 'object' THEN (SELECT coalesce(jsonb_object_agg(b.key, core.api_template_source(b.value, p_vars, p_tenant_id,
                                                                      p_number.number_id, p_now)), '{}')
                                    FROM jsonb_each(v_buttons) b)
                -- A list: the button at each position (null where a button takes nothing).
                WHEN 'array' THEN (SELECT coalesce(jsonb_object_agg((b.i - 1)::text, core.api_template_source(b.value, p_vars, p_tenant_id,
                                                                     p_number.number_id, p_now)), '{}')
                                   FROM jsonb_array_elements(v_buttons) WITH ORDINALITY b(value, i)
                                   WHERE jsonb_typeof(b.value) <> 'null')
                ELSE v_buttons END));
        SELECT s.shape, s.vals INTO v_shape, v_values FROM core.api_template_shape(v_spec) s;
    END IF;
    v_md5 := md5(v_template.components::text || coalesce(v_template.parameter_format, '') || v_shape::text);
    SELECT l.render INTO v_render FROM core.api_template_layouts l
    WHERE l.template_id = v_template.template_id AND l.shape_md5 = v_md5;
    v_fits := v_render IS NOT NULL AND core.api_values_fit(v_render, v_values);
    IF v_plain AND NOT v_fits THEN
        -- What core.api_template_source makes of plain values, for core.map_template below.
        v_spec := jsonb_build_object('body', (SELECT jsonb_agg(jsonb_build_object('value', v.value) ORDER BY v.i)
                                              FROM jsonb_array_elements(v_values) WITH ORDINALITY v(value, i)));
    END IF;
    IF v_render IS NOT NULL AND NOT v_fits THEN
        -- Laid out with its values: map_template names what does not fit.
        v_render := (core.map_template(v_template, v_spec)).render;
    ELSIF v_render IS NULL THEN
        -- A new shape: checked with its values first (what does not fit raises here,
        -- named), then laid out with slots and kept.
        PERFORM core.map_template(v_template, v_spec);
        v_render := (core.map_template(v_template, v_shape)).render;
        INSERT INTO core.api_template_layouts (template_id, shape_md5, render)
        VALUES (v_template.template_id, v_md5, v_render) ON CONFLICT DO NOTHING;
    END IF;
    RETURN jsonb_build_object('type', 'template', 'template',
        jsonb_build_object('name', v_template.name, 'language', jsonb_build_object('code', v_template.language))
        || CASE WHEN jsonb_array_length(v_render) = 0 THEN '{}'::jsonb
                ELSE jsonb_build_object('components', (SELECT components FROM core.render_components(v_render, v_values) components)) END);
END
$$;

CREATE FUNCTION core.api_template_shape(p_spec jsonb, OUT shape jsonb, OUT vals jsonb) RETURNS record
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_part text;
    v_key text;
    v_src jsonb;
    v_n integer := 0;
BEGIN
    shape := p_spec;
    vals := '[]';
    FOREACH v_part IN ARRAY ARRAY['header', 'body', 'buttons'] LOOP
        CONTINUE WHEN NOT p_spec ? v_part;
        IF v_part = 'header' THEN
            IF jsonb_typeof(p_spec->'header') = 'object' AND jsonb_typeof(p_spec#>'{header,value}') = 'string' THEN
                shape := jsonb_set(shape, '{header}', ((p_spec->'header') - 'value')
                                                      || jsonb_build_object('column', format('v%s', lpad(v_n::text, 3, '0'))));
                vals := vals || jsonb_build_array(p_spec#>'{header,value}');
                v_n := v_n + 1;
            END IF;
            CONTINUE;
        END IF;
        FOR v_key, v_src IN
            SELECT CASE WHEN jsonb_typeof(p_spec->v_part) = 'array' THEN (e.i - 1)::text ELSE e.k END, e.v
            FROM (SELECT NULL::text AS k, a.v, a.i FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p_spec->v_part) = 'array'
                                                                               THEN p_spec->v_part END) WITH ORDINALITY a(v, i)
                  UNION ALL
                  SELECT o.key, o.value, row_number() OVER (ORDER BY o.key) FROM jsonb_each(CASE WHEN jsonb_typeof(p_spec->v_part) = 'object'
                                                                                              THEN p_spec->v_part END) o) e
            ORDER BY e.i
        LOOP
            CONTINUE WHEN jsonb_typeof(v_src) <> 'object' OR jsonb_typeof(v_src->'value') <> 'string';
            shape := jsonb_set(shape, ARRAY[v_part, v_key], (v_src - 'value')
                                                            || jsonb_build_object('column', format('v%s', lpad(v_n::text, 3, '0'))));
            vals := vals || jsonb_build_array(v_src->'value');
            v_n := v_n + 1;
        END LOOP;
    END LOOP;
END
$$;

CREATE FUNCTION core.api_template_source(p_src jsonb, p_vars jsonb, p_tenant_id bigint, p_number_id bigint, p_now timestamp with time zone) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_text text;
BEGIN
    IF p_src IS NULL OR jsonb_typeof(p_src) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(p_src) IN ('string', 'number', 'boolean') OR (jsonb_typeof(p_src) = 'object' AND jsonb_typeof(p_src->'value') = 'string') THEN
        v_text := CASE WHEN jsonb_typeof(p_src) = 'object' THEN p_src->>'value' ELSE p_src #>> '{}' END;
        IF strpos(v_text, '{{') > 0 THEN
            v_text := coalesce(nullif(core.render_vars(v_text, p_vars), ''), '-');
        END IF;
        RETURN CASE WHEN jsonb_typeof(p_src) = 'object' THEN p_src ELSE '{}' END || jsonb_build_object('value', v_text);
    END IF;
    IF jsonb_typeof(p_src) <> 'object' THEN
        RETURN p_src;                       -- core.map_template names it and says what it takes
    END IF;
    IF p_src ? 'column' THEN
        RAISE EXCEPTION 'the send API takes parameter values, not CSV columns: %', left(p_src::text, 100)
            USING ERRCODE = 'PW102', HINT = 'Give the value itself: "Ana", {"link": "https://..."}, {"media": 12} or {"location": {...}}.';
    END IF;
    IF p_src ? 'link' THEN
        RETURN (p_src - 'link') || jsonb_build_object('value', p_src->'link');
    END IF;
    IF p_src ? 'media' THEN
        IF jsonb_typeof(p_src->'media') <> 'number' THEN
            RAISE EXCEPTION '"media" must be the number POST /v1/media returned, not %', left(p_src->>'media', 60)
                USING ERRCODE = 'PW102', HINT = 'Give {"media": 12} for an uploaded file, {"media_id": "..."} for a Meta media id or {"link": "https://..."}.';
        END IF;
        RETURN (p_src - 'media') || jsonb_build_object('media_id',
            core.media_for_send(p_tenant_id, (p_src->>'media')::bigint, p_number_id, p_now)->'id');
    END IF;
    RETURN p_src;
END
$$;

CREATE FUNCTION core.api_values_fit(p_render jsonb, p_values jsonb) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    SET search_path TO ''
    AS $_$
    SELECT NOT EXISTS (
        SELECT 1 FROM jsonb_array_elements(p_render) c, jsonb_array_elements(c->'parameters') p,
             LATERAL (SELECT p_values->>((p->>'$slot')::integer) AS v) x
        WHERE p ? '$slot'
          AND (x.v IS NULL OR btrim(x.v) = ''
               OR (p->>'$path' LIKE '%,link}' AND x.v !~* '^https?://[^\s/]+')
               OR (p->>'$path' = '{coupon_code}' AND length(x.v) > 15)))
$_$;

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
                                      'message_template_quality_update', 'phone_number_quality_update', 'business_capability_update',
                                      'account_update', 'user_preferences')) THEN
        RETURN 0;
    END IF;
    RETURN core.apply_template_statuses(p_changes) + core.apply_category_updates(p_changes)
         + core.apply_template_quality(p_changes)
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
        UPDATE core.templates t SET category = e.category, previous_category = e.previous, updated_at = now()
        FROM (SELECT DISTINCT ON (x.template_id) x.template_id, x.category, x.previous FROM events x WHERE NOT x.impending
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

    -- The sender's entry in contacts[]: the one naming it (by wa_id, else by user_id), or
    -- the only one. Found by hash joins on the change's contacts, not by scanning them
    -- for every message: a POST may carry 1,000 messages and 1,000 contacts.
    WITH ch AS MATERIALIZED (
        SELECT ch.ord, ch.k, n.number_id, n.tenant_id, ch.value
        FROM unnest(p_changes) WITH ORDINALITY AS ch(ord, waba_id, entry_at, field, phone_number_id, value, signer, k)
        JOIN core.wa_numbers n ON n.phone_number_id = ch.phone_number_id
        WHERE ch.field = 'messages' AND ch.value ? 'messages'
    ), cts AS MATERIALIZED (
        SELECT ch.k, c.i, c.value AS ct, c.value->>'wa_id' AS wa_id, c.value->>'user_id' AS user_id,
               count(*) OVER (PARTITION BY ch.k) AS n
        FROM ch CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(ch.value->'contacts') = 'array'
                                                             THEN ch.value->'contacts' ELSE '[]' END)
                                   WITH ORDINALITY AS c(value, i)
    )
    SELECT array_agg(x.number_id ORDER BY x.ord, x.k, x.i), array_agg(x.tenant_id ORDER BY x.ord, x.k, x.i),
           array_agg(x.wa_id ORDER BY x.ord, x.k, x.i), array_agg(x.user_id ORDER BY x.ord, x.k, x.i),
           array_agg(x.name ORDER BY x.ord, x.k, x.i), array_agg(x.at ORDER BY x.ord, x.k, x.i),
           array_agg(x.msg ORDER BY x.ord, x.k, x.i)
    INTO v_number_ids, v_tenant_ids, v_wa_ids, v_user_ids, v_names, v_at, v_messages
    FROM (
        SELECT m.ord, m.k, m.i, m.number_id, m.tenant_id, m.msg,
               CASE WHEN coalesce(nullif(m.msg->>'from', ''), m.ct->>'wa_id') ~ '^[1-9][0-9]{6,14}$'
                    THEN coalesce(nullif(m.msg->>'from', ''), m.ct->>'wa_id') END AS wa_id,
               nullif(coalesce(m.msg->>'from_user_id', m.ct->>'user_id'), '') AS user_id,
               nullif(m.ct->'profile'->>'name', '') AS name,
               coalesce(core.unix_ts(m.msg->>'timestamp'), now()) AS at
        FROM (
            SELECT ch.ord, ch.k, msg.i, ch.number_id, ch.tenant_id, msg.value AS msg,
                   coalesce(by_wa.ct, by_user.ct, only_one.ct) AS ct
            FROM ch
            CROSS JOIN LATERAL jsonb_array_elements(ch.value->'messages') WITH ORDINALITY AS msg(value, i)
            LEFT JOIN (SELECT DISTINCT ON (c.k, c.wa_id) c.k, c.wa_id, c.ct FROM cts c
                       WHERE c.wa_id IS NOT NULL ORDER BY c.k, c.wa_id, c.i) by_wa
                   ON by_wa.k = ch.k AND by_wa.wa_id = msg.value->>'from'
            LEFT JOIN (SELECT DISTINCT ON (c.k, c.user_id) c.k, c.user_id, c.ct FROM cts c
                       WHERE c.user_id IS NOT NULL ORDER BY c.k, c.user_id, c.i) by_user
                   ON by_user.k = ch.k AND by_user.user_id = msg.value->>'from_user_id'
            LEFT JOIN cts only_one ON only_one.k = ch.k AND only_one.n = 1
            WHERE msg.value->>'id' IS NOT NULL
        ) m
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
    WHERE c.contact_id = l.contact_id
      -- A contact inserted just above holds all of it already: not written twice.
      AND (c.last_inbound_at IS DISTINCT FROM greatest(c.last_inbound_at, l.at)
           OR (l.name IS NOT NULL AND c.profile_name IS DISTINCT FROM l.name)
           OR (c.wa_id IS NULL AND l.wa_id IS NOT NULL)
           OR (c.user_id IS NULL AND l.user_id IS NOT NULL));

    -- A message's place in the inbox: Meta's timestamp counts whole seconds, and a reply
    -- stored at 12.4 s must not come after the message the user sent back at 12.9 s (Meta:
    -- 12 s). So its time is as late within Meta's second as its arrival allows.
    WITH inserted AS (
        INSERT INTO core.inbox_messages (number_id, contact_id, direction, wamid, type, body, payload,
                                         context_wamid, outbound_id, campaign_id, created_at)
        SELECT u.number_id, u.contact_id, 'in', u.msg->>'id', coalesce(u.msg->>'type', 'unknown'),
               core.inbound_body(u.msg), u.msg, u.msg->'context'->>'id', o.outbound_id, o.campaign_id,
               greatest(u.at, least(now(), u.at + interval '999999 microseconds'))
        FROM unnest(v_number_ids, v_contact_ids, v_messages, v_at) AS u(number_id, contact_id, msg, at)
        -- A reply is attributed only to a message of the number it was sent to.
        LEFT JOIN core.outbound_messages o ON o.wamid = u.msg->'context'->>'id' AND o.number_id = u.number_id
        WHERE u.contact_id IS NOT NULL
        ORDER BY u.msg->>'id'
        ON CONFLICT (wamid) WHERE wamid IS NOT NULL DO NOTHING
        RETURNING message_id, number_id, outbound_id, created_at
    ), paced AS (
        -- Meta counts inbound messages toward the number's throughput: the next claim
        -- of a number that is sending moves its schedule on by them (core.number_inbound).
        INSERT INTO core.number_inbound (number_id, messages)
        SELECT i.number_id, count(*)::integer FROM inserted i
        JOIN core.wa_numbers n ON n.number_id = i.number_id AND n.paused_reason IS NULL
        GROUP BY i.number_id
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

CREATE FUNCTION core.apply_matched_statuses(p_ids bigint[], p_states text[], p_at timestamp with time zone[], p_codes integer[]) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_deferred bigint[] := core.defer_capped(p_ids, p_states, p_codes, p_at);
BEGIN
    PERFORM core.advance_outbound(array_agg(m.id), array_agg(m.state), array_agg(m.at), NULL, array_agg(m.code))
    FROM unnest(p_ids, p_states, p_at, p_codes) m(id, state, at, code)
    WHERE m.id <> ALL (v_deferred)
    HAVING count(*) > 0;
END
$$;

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
        SELECT b.wamid, b.phone_number_id, core.opaque_outbound_id(b.opaque) AS opaque_id,
               bool_or(b.status = 'failed' AND e.backoff IS NOT DISTINCT FROM 'next_day')
                   OVER (PARTITION BY b.wamid) AS capped
        FROM by_wamid b LEFT JOIN core.meta_error_codes e ON e.code = b.error_code
        WHERE b.outbound_id IS NULL AND b.opaque IS NOT NULL
    ), by_opaque AS (
        SELECT DISTINCT ON (u.wamid) u.wamid, o.outbound_id
        FROM unknown u
        JOIN core.wa_numbers n ON n.phone_number_id = u.phone_number_id
        JOIN core.outbound_messages o ON o.outbound_id = u.opaque_id AND o.number_id = n.number_id
                                     AND (o.wamid IS NULL OR o.wamid = u.wamid)
                                     -- Withheld under the marketing cap before its send was
                                     -- reported: left for the report, which defers it.
                                     AND NOT (u.capped AND o.state = 'in_flight')
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
    v_deferred := core.defer_capped(v_ids, v_states, v_codes, v_at);
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
    END IF;
    -- Most batches have no failure: then neither function is planned and run (both are
    -- SQL functions, planned on every call).
    IF 'failed' = ANY (v_states) THEN
        PERFORM core.stop_marketing(array_agg(f.id), array_agg(f.code), max(f.at))
        FROM unnest(v_ids, v_states, v_codes, v_at) f(id, state, code, at)
        WHERE f.state = 'failed' AND f.code IS NOT NULL
        HAVING count(*) > 0;
        -- A template or media error (131053) pauses the campaign (sending.sql).
        PERFORM core.pause_for_failed(v_ids, v_states, v_codes, v_details);
    END IF;
    RETURN v_stored;
END
$_$;

CREATE FUNCTION core.apply_template_quality(p_changes core.webhook_change[]) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_changed integer;
    v_ids bigint[];
    v_texts text[];
    v_severities text[];
    v_keys text[];
    v_notified bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(p_changes) ch WHERE ch.field = 'message_template_quality_update') THEN
        RETURN 0;
    END IF;
    WITH events AS (
        SELECT DISTINCT ON (t.template_id) t.template_id, t.quality_score AS old_score, ch.entry_at,
               upper(ch.value->>'new_quality_score') AS score,
               upper(coalesce(ch.value->>'previous_quality_score', t.quality_score)) AS previous
        FROM unnest(p_changes) ch
        CROSS JOIN LATERAL core.change_templates(ch.waba_id, ch.signer, ch.value) t
        WHERE ch.field = 'message_template_quality_update' AND ch.value->>'new_quality_score' IS NOT NULL
        ORDER BY t.template_id, ch.entry_at DESC NULLS LAST, ch.ord DESC
    ), changed AS (
        UPDATE core.templates t SET quality_score = e.score,
            quality_event_at = coalesce(e.entry_at, t.quality_event_at), updated_at = now()
        FROM events e
        WHERE t.template_id = e.template_id AND t.quality_score IS DISTINCT FROM e.score
          AND (e.entry_at IS NULL OR t.quality_event_at IS NULL OR e.entry_at >= t.quality_event_at)
        RETURNING t.tenant_id, t.template_id, t.name, t.language, e.score, e.previous, e.entry_at
    ), dropped AS (
        SELECT c.*, format('quality dropped from %s to %s%s', coalesce(c.previous, 'UNKNOWN'), c.score,
                           CASE c.score WHEN 'RED' THEN ': Meta pauses the template if it stays low'
                                        ELSE ': watch the replies and blocks' END) AS text,
               CASE c.score WHEN 'RED' THEN 'critical' ELSE 'warning' END AS severity,
               format('%s|%s|%s', c.template_id, c.score, c.entry_at) AS key
        FROM changed c
        WHERE c.score IN ('YELLOW', 'RED')
          AND coalesce(core.quality_rank(c.previous), 4) > core.quality_rank(c.score)
    ), notified AS (
        INSERT INTO core.notifications (tenant_id, kind, severity, message, details, dedupe_key)
        SELECT d.tenant_id, 'template_quality', d.severity, format('Template %s (%s): %s', d.name, d.language, d.text),
               jsonb_build_object('template_id', d.template_id, 'quality_score', d.score, 'previous', d.previous),
               md5('template_quality|' || d.key)
        FROM dropped d
        ON CONFLICT DO NOTHING
        RETURNING tenant_id
    )
    SELECT (SELECT count(*) FROM changed), (SELECT array_agg(tenant_id) FROM notified),
           array_agg(d.template_id), array_agg(d.text), array_agg(d.severity), array_agg(d.key)
    INTO v_changed, v_notified, v_ids, v_texts, v_severities, v_keys
    FROM dropped d;
    PERFORM core.wake_notified(v_notified);
    IF v_ids IS NOT NULL THEN
        PERFORM core.warn_template_campaigns(v_ids, 'campaign_template_quality', '{scheduled,running}', v_texts,
                                             v_severities, v_keys);
    END IF;
    RETURN v_changed;
END
$$;

CREATE FUNCTION core.apply_template_statuses(p_changes core.webhook_change[]) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_changed integer;
    v_notified bigint[];
    v_stop bigint[];
    v_stop_events text[];
    v_stop_reasons text[];
    v_back bigint[];
    v_back_texts text[];
    v_back_keys text[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(p_changes) ch WHERE ch.field = 'message_template_status_update') THEN
        RETURN 0;
    END IF;
    WITH events AS (
        SELECT DISTINCT ON (t.template_id)
               t.tenant_id, t.template_id, t.name, t.language, t.status AS old_status, ch.entry_at, ch.value AS v,
               upper(ch.value->>'event') AS event,
               CASE upper(ch.value->>'event') WHEN 'REINSTATED' THEN 'APPROVED' WHEN 'UNARCHIVED' THEN 'APPROVED'
                    WHEN 'FLAGGED' THEN t.status ELSE upper(ch.value->>'event') END AS status,
               coalesce(nullif(concat_ws(': ', coalesce(nullif(upper(ch.value->>'reason'), 'NONE'),
                                                        ch.value#>>'{other_info,title}'),
                                         coalesce(ch.value#>>'{rejection_info,reason}',
                                                  ch.value#>>'{other_info,description}')), ''),
                        'no reason given') AS reason
        FROM unnest(p_changes) ch
        CROSS JOIN LATERAL core.change_templates(ch.waba_id, ch.signer, ch.value) t
        WHERE ch.field = 'message_template_status_update' AND ch.value->>'event' IS NOT NULL
        ORDER BY t.template_id, ch.entry_at DESC NULLS LAST, ch.ord DESC
    ), changed AS (
        UPDATE core.templates t SET
            status = e.status,
            status_event_at = coalesce(e.entry_at, t.status_event_at),
            meta_template_id = coalesce(t.meta_template_id, e.v->>'message_template_id'),
            rejected_reason = CASE WHEN e.status = 'REJECTED' THEN e.reason
                                   WHEN e.status = 'APPROVED' THEN NULL ELSE t.rejected_reason END,
            updated_at = now()
        FROM events e
        WHERE t.template_id = e.template_id
          AND t.status IS DISTINCT FROM e.status
          AND t.status <> 'DELETED'            -- Meta brings no deleted template back
          AND (e.entry_at IS NULL OR t.status_event_at IS NULL OR e.entry_at >= t.status_event_at)
        RETURNING t.tenant_id, t.template_id, t.name, t.language, t.status, e.old_status, e.entry_at, e.v, e.reason
    ), notified AS (
        INSERT INTO core.notifications (tenant_id, kind, severity, message, details, dedupe_key)
        SELECT n.tenant_id, 'template_status', n.severity, n.message,
               jsonb_build_object('template_id', n.template_id, 'event', n.v), n.dedupe_key
        FROM (SELECT c.tenant_id, c.template_id, c.v,
                     CASE WHEN c.status = 'DISABLED' THEN 'critical' WHEN c.status = 'APPROVED' THEN 'info'
                          ELSE 'warning' END AS severity,
                     CASE WHEN c.status = 'APPROVED' THEN format('Template %s (%s) is APPROVED: it can be sent', c.name, c.language)
                          ELSE format('Template %s (%s) is %s: %s', c.name, c.language, c.status, c.reason) END AS message,
                     md5(format('template_status|%s|%s|%s', c.template_id, c.status, c.entry_at)) AS dedupe_key
              FROM changed c
              WHERE c.status IN ('PAUSED', 'REJECTED', 'DISABLED', 'ARCHIVED', 'PENDING_DELETION', 'DELETED')
                 OR (c.status = 'APPROVED' AND c.old_status IN ('PENDING', 'SUBMITTING', 'IN_APPEAL'))
              UNION ALL
              SELECT e.tenant_id, e.template_id, e.v, 'warning',
                     format('Template %s (%s) is FLAGGED: %s; Meta pauses it if its quality does not improve',
                            e.name, e.language, e.reason),
                     md5(format('template_status|%s|FLAGGED|%s', e.template_id, e.entry_at))
              FROM events e WHERE e.event = 'FLAGGED') n
        ON CONFLICT DO NOTHING
        RETURNING tenant_id
    )
    SELECT (SELECT count(*) FROM changed), (SELECT array_agg(tenant_id) FROM notified),
           s.stop, s.stop_events, s.stop_reasons, s.back, s.back_texts, s.back_keys
    INTO v_changed, v_notified, v_stop, v_stop_events, v_stop_reasons, v_back, v_back_texts, v_back_keys
    FROM (SELECT array_agg(c.template_id) FILTER (WHERE c.status IN ('PAUSED', 'REJECTED', 'DISABLED', 'ARCHIVED',
                                                                     'PENDING_DELETION', 'DELETED')) AS stop,
                 array_agg(c.status) FILTER (WHERE c.status IN ('PAUSED', 'REJECTED', 'DISABLED', 'ARCHIVED',
                                                                'PENDING_DELETION', 'DELETED')) AS stop_events,
                 array_agg(c.reason) FILTER (WHERE c.status IN ('PAUSED', 'REJECTED', 'DISABLED', 'ARCHIVED',
                                                                'PENDING_DELETION', 'DELETED')) AS stop_reasons,
                 array_agg(c.template_id) FILTER (WHERE c.status = 'APPROVED') AS back,
                 array_agg(format('is APPROVED again (%s): the campaign can be resumed; pgwa does not resume it by itself',
                                  c.v->>'event')) FILTER (WHERE c.status = 'APPROVED') AS back_texts,
                 array_agg(format('%s|APPROVED|%s', c.template_id, c.entry_at)) FILTER (WHERE c.status = 'APPROVED') AS back_keys
          FROM changed c) s;
    PERFORM core.wake_notified(v_notified);
    IF v_stop IS NOT NULL THEN
        PERFORM core.pause_template_campaigns(v_stop, v_stop_events, v_stop_reasons);
    END IF;
    IF v_back IS NOT NULL THEN
        PERFORM core.warn_template_campaigns(v_back, 'campaign_resumable', '{paused}', v_back_texts,
                                             array_fill('info'::text, ARRAY[cardinality(v_back)]), v_back_keys);
    END IF;
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
    match_key text GENERATED ALWAYS AS (
CASE
    WHEN ((kind = ANY (ARRAY['starts_with'::text, 'contains'::text])) AND (length(match_text) >= 4)) THEN "right"(match_text, 4)
    ELSE NULL::text
END) STORED,
    CONSTRAINT bot_rules_kind_valid CHECK ((kind = ANY (ARRAY['exact'::text, 'starts_with'::text, 'contains'::text, 'regex'::text, 'welcome'::text, 'default'::text]))),
    CONSTRAINT bot_rules_match_text_present CHECK (((kind = ANY (ARRAY['welcome'::text, 'default'::text])) OR (match_text IS NOT NULL))),
    CONSTRAINT bot_rules_pattern_present CHECK (((kind = ANY (ARRAY['welcome'::text, 'default'::text])) OR (pattern IS NOT NULL))),
    CONSTRAINT bot_rules_priority_valid CHECK (((priority >= 0) AND (priority <= 1000000)))
);

COMMENT ON COLUMN core.bot_rules.match_key IS 'starts_with and contains rules of 4 characters or more: the last 4 characters of match_text, which any text the rule matches contains (core.match_bot_rules looks the rule up by it).';

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
    send_window_start time without time zone,
    send_window_end time without time zone,
    CONSTRAINT campaigns_retrying_valid CHECK ((retrying >= 0)),
    CONSTRAINT campaigns_send_window_whole CHECK ((((send_window_start IS NULL) = (send_window_end IS NULL)) AND ((send_window_start IS NULL) OR (send_window_start <> send_window_end)))),
    CONSTRAINT campaigns_status_valid CHECK ((status = ANY (ARRAY['draft'::text, 'scheduled'::text, 'running'::text, 'paused'::text, 'completed'::text, 'cancelled'::text])))
);

COMMENT ON COLUMN core.campaigns.send_window_start IS 'Messages go out only from this local time of the recipient''s day until send_window_end (which may be past midnight); NULL: any time.';

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

CREATE FUNCTION core.capture_campaign_status() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM core.event_subscriptions
                   WHERE event_type IN ('campaign.completed', 'campaign.paused')) THEN
        RETURN NULL;
    END IF;
    PERFORM core.queue_events(x.event_type, array_agg(x.tenant_id ORDER BY x.campaign_id),
                              array_agg(x.data ORDER BY x.campaign_id))
    FROM (
        SELECT 'campaign.' || n.status AS event_type, n.tenant_id, n.campaign_id, jsonb_build_object(
            'campaign_id', n.campaign_id, 'name', n.name, 'number_id', n.number_id, 'status', n.status,
            'previous_status', o.status, 'pause_reason', n.pause_reason, 'total', n.total, 'sent', n.sent,
            'delivered', n.delivered, 'read', n.read, 'replied', n.replied, 'failed', n.failed,
            'cancelled', n.cancelled, 'started_at', n.started_at, 'completed_at', n.completed_at) AS data
        FROM new_rows n JOIN old_rows o ON o.campaign_id = n.campaign_id
        WHERE n.status IS DISTINCT FROM o.status AND n.status IN ('completed', 'paused')
    ) x
    GROUP BY x.event_type;
    RETURN NULL;
END
$$;

CREATE FUNCTION core.capture_contact_opt() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM core.event_subscriptions
                   WHERE event_type IN ('contact.opted_out', 'contact.opted_in')) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        PERFORM core.queue_events('contact.opted_out', array_agg(x.tenant_id ORDER BY x.contact_id),
                                  array_agg(x.data ORDER BY x.contact_id))
        FROM (SELECT n.tenant_id, n.contact_id, jsonb_build_object(
                  'contact_id', n.contact_id, 'wa_id', n.wa_id, 'user_id', n.user_id, 'name', n.name,
                  'opted_out', n.opted_out, 'previously_opted_out', NULL, 'opted_out_at', n.opted_out_at,
                  'at', n.updated_at) AS data
              FROM new_rows n WHERE n.opted_out) x
        HAVING count(*) > 0;
    ELSE
        PERFORM core.queue_events(CASE WHEN x.opted_out THEN 'contact.opted_out' ELSE 'contact.opted_in' END,
                                  array_agg(x.tenant_id ORDER BY x.contact_id), array_agg(x.data ORDER BY x.contact_id))
        FROM (SELECT n.opted_out, n.tenant_id, n.contact_id, jsonb_build_object(
                  'contact_id', n.contact_id, 'wa_id', n.wa_id, 'user_id', n.user_id, 'name', n.name,
                  'opted_out', n.opted_out, 'previously_opted_out', o.opted_out, 'opted_out_at', n.opted_out_at,
                  'at', n.updated_at) AS data
              FROM new_rows n JOIN old_rows o ON o.contact_id = n.contact_id
              WHERE n.opted_out IS DISTINCT FROM o.opted_out) x
        GROUP BY x.opted_out;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION core.capture_message_inbound() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM core.event_subscriptions WHERE event_type = 'message.inbound') THEN
        RETURN NULL;
    END IF;
    PERFORM core.queue_events('message.inbound', array_agg(x.tenant_id ORDER BY x.message_id),
                              array_agg(x.data ORDER BY x.message_id))
    FROM (
        SELECT w.tenant_id, n.message_id, jsonb_build_object(
            'message_id', n.message_id, 'wamid', n.wamid, 'type', n.type, 'text', n.body,
            'context_wamid', n.context_wamid, 'number_id', n.number_id, 'phone_number_id', w.phone_number_id,
            'from', jsonb_build_object('contact_id', n.contact_id, 'wa_id', c.wa_id, 'user_id', c.user_id,
                                       'profile_name', c.profile_name),
            'campaign_id', n.campaign_id, 'received_at', n.created_at, 'message', n.payload) AS data
        FROM new_rows n
        JOIN core.wa_numbers w ON w.number_id = n.number_id
        LEFT JOIN core.contacts c ON c.contact_id = n.contact_id
        WHERE n.direction = 'in'
          AND w.tenant_id IN (SELECT s.tenant_id FROM core.event_subscriptions s WHERE s.event_type = 'message.inbound')
    ) x
    HAVING count(*) > 0;
    RETURN NULL;
END
$$;

CREATE FUNCTION core.capture_message_status() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM core.event_subscriptions WHERE event_type = 'message.status') THEN
        RETURN NULL;
    END IF;
    PERFORM core.queue_events('message.status', array_agg(x.tenant_id ORDER BY x.outbound_id),
                              array_agg(x.data ORDER BY x.outbound_id))
    FROM (
        SELECT w.tenant_id, n.outbound_id, jsonb_build_object(
            'outbound_id', n.outbound_id, 'campaign_id', n.campaign_id, 'kind', n.kind,
            'status', n.state, 'previous_status', o.state, 'wamid', n.wamid,
            'number_id', n.number_id, 'phone_number_id', w.phone_number_id,
            'recipient', jsonb_build_object('contact_id', n.contact_id, 'wa_id', c.wa_id, 'user_id', c.user_id),
            'error', CASE WHEN n.state = 'failed' THEN jsonb_build_object(
                'code', n.error_code, 'category', n.error_category, 'detail', n.error_detail) END,
            'at', CASE n.state WHEN 'accepted' THEN n.accepted_at WHEN 'sent' THEN n.sent_at
                               WHEN 'delivered' THEN n.delivered_at WHEN 'read' THEN n.read_at
                               WHEN 'failed' THEN n.failed_at END) AS data
        FROM new_rows n
        JOIN old_rows o ON o.outbound_id = n.outbound_id
        JOIN core.wa_numbers w ON w.number_id = n.number_id
        LEFT JOIN core.contacts c ON c.contact_id = n.contact_id
        WHERE n.state IS DISTINCT FROM o.state
          AND n.state IN ('accepted', 'sent', 'delivered', 'read', 'failed') AND n.kind <> 'receipt'
          AND w.tenant_id IN (SELECT s.tenant_id FROM core.event_subscriptions s WHERE s.event_type = 'message.status')
    ) x
    HAVING count(*) > 0;
    RETURN NULL;
END
$$;

CREATE FUNCTION core.capture_template_status() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM core.event_subscriptions WHERE event_type = 'template.status') THEN
        RETURN NULL;
    END IF;
    PERFORM core.queue_events('template.status', array_agg(n.tenant_id ORDER BY n.template_id),
                              array_agg(jsonb_build_object(
                                  'template_id', n.template_id, 'waba_id', n.waba_id, 'name', n.name,
                                  'language', n.language, 'category', n.category, 'status', n.status,
                                  'previous_status', o.status, 'rejected_reason', n.rejected_reason,
                                  'meta_template_id', n.meta_template_id, 'at', n.updated_at)
                                  ORDER BY n.template_id))
    FROM new_rows n JOIN old_rows o ON o.template_id = n.template_id
    WHERE n.status IS DISTINCT FROM o.status
    HAVING count(*) > 0;
    RETURN NULL;
END
$$;

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
    parameter_format text DEFAULT 'POSITIONAL'::text NOT NULL,
    sub_category text,
    quality_score text,
    rejected_reason text,
    previous_category text,
    submitted_at timestamp with time zone,
    quality_event_at timestamp with time zone,
    deleted_at timestamp with time zone,
    CONSTRAINT templates_param_count_valid CHECK ((body_param_count >= 0)),
    CONSTRAINT templates_parameter_format_valid CHECK ((parameter_format = ANY (ARRAY['POSITIONAL'::text, 'NAMED'::text])))
);

COMMENT ON COLUMN core.templates.parameter_format IS 'POSITIONAL ({{1}}) or NAMED ({{first_name}}): named parameters are sent with their parameter_name.';

COMMENT ON COLUMN core.templates.quality_score IS 'Meta''s quality_score.score (GREEN, YELLOW, RED, UNKNOWN) at the last sync or quality event.';

COMMENT ON COLUMN core.templates.previous_category IS 'The category before Meta changed it (template_category_update), as Meta reports it.';

COMMENT ON COLUMN core.templates.submitted_at IS 'When pgwa last submitted the template to Meta (api.prepare_template); null for templates only synced.';

COMMENT ON COLUMN core.templates.quality_event_at IS 'The time of the newest message_template_quality_update applied: an older one changes nothing.';

COMMENT ON COLUMN core.templates.deleted_at IS 'When Meta confirmed the template''s deletion through pgwa (api.template_deleted).';

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

CREATE FUNCTION core.check_contact_tenants() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_tenants bigint[];
    v_missing bigint;
BEGIN
    IF TG_LEVEL = 'ROW' THEN
        v_tenants := ARRAY[NEW.tenant_id];
    ELSE
        v_tenants := ARRAY(SELECT DISTINCT n.tenant_id FROM new_rows n ORDER BY 1);
    END IF;
    PERFORM FROM core.tenants t WHERE t.tenant_id = ANY (v_tenants) ORDER BY t.tenant_id FOR KEY SHARE;
    SELECT min(x) INTO v_missing FROM unnest(v_tenants) x
    WHERE NOT EXISTS (SELECT 1 FROM core.tenants t WHERE t.tenant_id = x);
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'contact of tenant % that does not exist', v_missing
            USING ERRCODE = '23503', TABLE = 'contacts', COLUMN = 'tenant_id', SCHEMA = 'core',
                  HINT = 'Create the tenant first.';
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION core.check_media_file(p_field text, p_mime text, p_size bigint) RETURNS core.media_types
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_type core.media_types;
BEGIN
    SELECT * INTO v_type FROM core.media_types WHERE mime_type = core.media_mime(p_mime);
    IF NOT FOUND THEN
        RAISE EXCEPTION '%: MIME type "%" is not one Meta accepts as media', p_field, coalesce(p_mime, '')
            USING ERRCODE = 'PW146',
                  HINT = 'Accepted: ' || (SELECT string_agg(t.mime_type, ', ' ORDER BY t.media_type, t.mime_type)
                                          FROM core.media_types t) || '.';
    END IF;
    IF p_size IS NULL OR p_size < 1 THEN
        RAISE EXCEPTION '%: the file is empty', p_field USING ERRCODE = 'PW100', HINT = 'Send the file''s bytes.';
    END IF;
    IF p_size > v_type.max_bytes THEN
        RAISE EXCEPTION '%: % bytes is over Meta''s limit of % bytes for % (%)', p_field, p_size, v_type.max_bytes,
            v_type.media_type, v_type.mime_type
            USING ERRCODE = 'PW145', HINT = 'Compress or shrink the file, or send it as a link.';
    END IF;
    RETURN v_type;
END
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
       OR p_reply->>'type' NOT IN ('text', 'buttons', 'template',
                                   'image', 'video', 'audio', 'document', 'sticker', 'list', 'cta_url') THEN
        RAISE EXCEPTION 'a reply must be an object with type text, buttons, template, image, video, audio, document, sticker, list or cta_url'
            USING ERRCODE = 'PW100',
                  HINT = '{"type": "text", "text": "Hi {{name}}"}, {"type": "buttons", "text": "...", "buttons": ["Yes", "No"]} or {"type": "template", "name": "...", "language": "en_US", "params": [...]}';
    END IF;
    -- Media, list and CTA-URL replies: db/functions/media.sql.
    IF p_reply->>'type' NOT IN ('text', 'buttons', 'template') THEN
        PERFORM core.check_rich_reply(p_reply);
        RETURN;
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
        ELSIF EXISTS (SELECT 1 FROM core.template_slots(v_template.components, v_template.parameter_format) s
                      WHERE s.component <> 'body' AND s.required) THEN
            -- A reply sends body parameters only (core.render_reply); a template whose
            -- header or buttons take one goes out in a campaign (api.create_campaign).
            RAISE EXCEPTION 'template "%" (%) needs % parameters, and a reply sends body parameters only', v_template.name,
                v_template.language, (SELECT string_agg(DISTINCT s.component || ' ' || s.kind, ', ')
                                      FROM core.template_slots(v_template.components, v_template.parameter_format) s
                                      WHERE s.component <> 'body' AND s.required)
                USING ERRCODE = 'PW102', HINT = 'Send it in a campaign, whose mapping gives the header and buttons, or reply with a template whose header and buttons are fixed.';
        ELSIF v_template.parameter_format = 'NAMED' AND v_template.body_param_count > 0 THEN
            -- Named parameters: "params" is an object of exactly the template's names.
            IF jsonb_typeof(p_reply->'params') IS DISTINCT FROM 'object'
               OR EXISTS (SELECT 1 FROM jsonb_each(p_reply->'params') p WHERE jsonb_typeof(p.value) <> 'string')
               OR ARRAY(SELECT k FROM jsonb_object_keys(p_reply->'params') k ORDER BY k)
                  <> ARRAY(SELECT s.parameter_name FROM core.template_slots(v_template.components, v_template.parameter_format) s
                           WHERE s.component = 'body' ORDER BY s.parameter_name) THEN
                RAISE EXCEPTION 'template "%" has NAMED body parameters %; give "params" as an object of those names to strings',
                    v_template.name, (SELECT string_agg(format('{{%s}}', s.parameter_name), ', ' ORDER BY s.index)
                                      FROM core.template_slots(v_template.components, v_template.parameter_format) s
                                      WHERE s.component = 'body')
                    USING ERRCODE = 'PW102', HINT = 'E.g. "params": {"first_name": "{{name}}"}; values may use {{name}} and other contact variables.';
            END IF;
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

CREATE FUNCTION core.check_rich_reply(p_reply jsonb) RETURNS void
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO ''
    AS $_$
DECLARE
    v_type text := p_reply->>'type';
    v_problem text;
    v_rows integer;
BEGIN
    IF v_type IN ('image', 'video', 'audio', 'document', 'sticker') THEN
        IF (p_reply ? 'media') = (p_reply ? 'link') THEN
            v_problem := 'a ' || v_type || ' reply needs "media" (a pgwa media id) or "link" (an https URL), not both';
        ELSIF p_reply ? 'media' AND (jsonb_typeof(p_reply->'media') <> 'number' OR (p_reply->>'media') !~ '^[1-9][0-9]{0,18}$') THEN
            v_problem := 'media must be a pgwa media id (an integer from POST /v1/media)';
        ELSIF p_reply ? 'link' AND (jsonb_typeof(p_reply->'link') <> 'string' OR (p_reply->>'link') !~ '^https?://[^\s/]+\S*$'
                                    OR length(p_reply->>'link') > 2000) THEN
            v_problem := 'link must be an http(s) URL of at most 2000 characters';
        ELSIF p_reply ? 'caption' AND v_type NOT IN ('image', 'video', 'document') THEN
            v_problem := 'caption: a ' || v_type || ' cannot carry a caption (only image, video and document)';
        ELSIF p_reply ? 'caption' AND (jsonb_typeof(p_reply->'caption') <> 'string' OR length(p_reply->>'caption') > 1024) THEN
            v_problem := 'caption must be a string of at most 1024 characters';
        ELSIF p_reply ? 'filename' AND v_type <> 'document' THEN
            v_problem := 'filename: only a document carries a file name';
        ELSIF p_reply ? 'filename' AND (jsonb_typeof(p_reply->'filename') <> 'string' OR length(p_reply->>'filename') NOT BETWEEN 1 AND 240) THEN
            v_problem := 'filename must be a string of 1 to 240 characters';
        END IF;
    ELSIF v_type IN ('list', 'cta_url') THEN
        IF jsonb_typeof(p_reply->'text') IS DISTINCT FROM 'string' OR btrim(p_reply->>'text') = ''
           OR length(p_reply->>'text') > 1024 THEN
            v_problem := 'text (the body) must be 1 to 1024 characters';
        ELSIF p_reply ? 'header' AND (jsonb_typeof(p_reply->'header') <> 'string' OR length(p_reply->>'header') > 60) THEN
            v_problem := 'header must be a string of at most 60 characters';
        ELSIF p_reply ? 'footer' AND (jsonb_typeof(p_reply->'footer') <> 'string' OR length(p_reply->>'footer') > 60) THEN
            v_problem := 'footer must be a string of at most 60 characters';
        ELSIF v_type = 'cta_url' THEN
            IF jsonb_typeof(p_reply->'display_text') IS DISTINCT FROM 'string'
               OR length(btrim(p_reply->>'display_text')) NOT BETWEEN 1 AND 20 THEN
                v_problem := 'display_text (the button) must be 1 to 20 characters';
            ELSIF jsonb_typeof(p_reply->'url') IS DISTINCT FROM 'string' OR (p_reply->>'url') !~ '^https?://[^\s/]+\S*$'
                  OR length(p_reply->>'url') > 2000 THEN
                v_problem := 'url must be an http(s) URL of at most 2000 characters';
            END IF;
        ELSIF jsonb_typeof(p_reply->'button') IS DISTINCT FROM 'string' OR length(btrim(p_reply->>'button')) NOT BETWEEN 1 AND 20 THEN
            v_problem := 'button (the list''s menu label) must be 1 to 20 characters';
        ELSIF jsonb_typeof(p_reply->'sections') IS DISTINCT FROM 'array' OR jsonb_array_length(p_reply->'sections') NOT BETWEEN 1 AND 10 THEN
            v_problem := 'sections must be an array of 1 to 10 sections';
        ELSE
            SELECT CASE
                       WHEN jsonb_typeof(s) <> 'object' THEN format('sections[%s] must be an object', si - 1)
                       WHEN jsonb_array_length(p_reply->'sections') > 1
                            AND (jsonb_typeof(s->'title') IS DISTINCT FROM 'string' OR btrim(s->>'title') = '')
                           THEN format('sections[%s].title is required when there are several sections', si - 1)
                       WHEN s ? 'title' AND (jsonb_typeof(s->'title') <> 'string' OR length(s->>'title') > 24)
                           THEN format('sections[%s].title must be a string of at most 24 characters', si - 1)
                       WHEN jsonb_typeof(s->'rows') IS DISTINCT FROM 'array' OR jsonb_array_length(s->'rows') = 0
                           THEN format('sections[%s].rows must be a non-empty array', si - 1)
                   END
            INTO v_problem
            FROM jsonb_array_elements(p_reply->'sections') WITH ORDINALITY AS x(s, si)
            WHERE jsonb_typeof(s) <> 'object'
               OR (jsonb_array_length(p_reply->'sections') > 1
                   AND (jsonb_typeof(s->'title') IS DISTINCT FROM 'string' OR btrim(s->>'title') = ''))
               OR (s ? 'title' AND (jsonb_typeof(s->'title') <> 'string' OR length(s->>'title') > 24))
               OR jsonb_typeof(s->'rows') IS DISTINCT FROM 'array' OR jsonb_array_length(s->'rows') = 0
            ORDER BY si LIMIT 1;
            IF v_problem IS NULL THEN
                SELECT CASE
                           WHEN jsonb_typeof(r) <> 'object' THEN format('sections[%s].rows[%s] must be an object', si - 1, ri - 1)
                           WHEN jsonb_typeof(r->'id') IS DISTINCT FROM 'string' OR length(r->>'id') NOT BETWEEN 1 AND 200
                               THEN format('sections[%s].rows[%s].id must be 1 to 200 characters', si - 1, ri - 1)
                           WHEN jsonb_typeof(r->'title') IS DISTINCT FROM 'string' OR length(btrim(r->>'title')) NOT BETWEEN 1 AND 24
                               THEN format('sections[%s].rows[%s].title must be 1 to 24 characters', si - 1, ri - 1)
                           WHEN r ? 'description' AND (jsonb_typeof(r->'description') <> 'string' OR length(r->>'description') > 72)
                               THEN format('sections[%s].rows[%s].description must be a string of at most 72 characters', si - 1, ri - 1)
                       END
                INTO v_problem
                FROM jsonb_array_elements(p_reply->'sections') WITH ORDINALITY AS x(s, si),
                     jsonb_array_elements(s->'rows') WITH ORDINALITY AS y(r, ri)
                WHERE jsonb_typeof(r) <> 'object'
                   OR jsonb_typeof(r->'id') IS DISTINCT FROM 'string' OR length(r->>'id') NOT BETWEEN 1 AND 200
                   OR jsonb_typeof(r->'title') IS DISTINCT FROM 'string' OR length(btrim(r->>'title')) NOT BETWEEN 1 AND 24
                   OR (r ? 'description' AND (jsonb_typeof(r->'description') <> 'string' OR length(r->>'description') > 72))
                ORDER BY si, ri LIMIT 1;
            END IF;
            IF v_problem IS NULL THEN
                SELECT count(*), CASE WHEN count(*) > 10 THEN format('the list has %s rows; Meta allows at most 10 in all', count(*))
                                      WHEN count(DISTINCT r->>'id') < count(*) THEN 'sections[].rows[].id must be unique across the list' END
                INTO v_rows, v_problem
                FROM jsonb_array_elements(p_reply->'sections') s, jsonb_array_elements(s->'rows') r;
            END IF;
        END IF;
    END IF;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION '%', v_problem USING ERRCODE = 'PW100',
            HINT = CASE WHEN v_type = 'list' THEN '{"type": "list", "text": "...", "button": "Choose", "sections": [{"title": "...", "rows": [{"id": "a", "title": "A", "description": "..."}]}]}'
                        WHEN v_type = 'cta_url' THEN '{"type": "cta_url", "text": "...", "display_text": "Open", "url": "https://..."}'
                        ELSE '{"type": "' || v_type || '", "media": <media_id from POST /v1/media> | "link": "https://...", "caption": "..."}' END;
    END IF;
END
$_$;

CREATE FUNCTION core.check_source(p_where text, p_src jsonb, p_allowed text[], p_hint text) RETURNS void
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_keys text[];
    v_key text;
BEGIN
    IF p_src IS NULL OR jsonb_typeof(p_src) <> 'object' THEN
        RAISE EXCEPTION '%: is not mapped', p_where USING ERRCODE = 'PW102', HINT = p_hint;
    END IF;
    v_keys := ARRAY(SELECT k FROM jsonb_object_keys(p_src) k WHERE k <> 'filename' OR NOT 'filename' = ANY (p_allowed) ORDER BY k);
    IF cardinality(v_keys) <> 1 OR NOT v_keys[1] = ANY (p_allowed) THEN
        RAISE EXCEPTION '%: % is neither %', p_where, p_src,
            (SELECT string_agg(format('{"%s": ...}', a), ' nor ') FROM unnest(p_allowed) a WHERE a <> 'filename')
            USING ERRCODE = 'PW102', HINT = p_hint;
    END IF;
    v_key := v_keys[1];
    IF v_key = 'location' THEN
        IF jsonb_typeof(p_src->'location') <> 'object' OR jsonb_typeof(p_src#>'{location,latitude}') IS DISTINCT FROM 'number'
           OR jsonb_typeof(p_src#>'{location,longitude}') IS DISTINCT FROM 'number'
           OR (p_src#>>'{location,latitude}')::numeric NOT BETWEEN -90 AND 90
           OR (p_src#>>'{location,longitude}')::numeric NOT BETWEEN -180 AND 180
           OR EXISTS (SELECT 1 FROM jsonb_each(p_src->'location') e
                      WHERE e.key NOT IN ('latitude', 'longitude', 'name', 'address')
                         OR (e.key IN ('name', 'address') AND jsonb_typeof(e.value) <> 'string')) THEN
            RAISE EXCEPTION '%: location needs numeric latitude (-90..90) and longitude (-180..180), and optional name and address strings', p_where
                USING ERRCODE = 'PW102', HINT = p_hint;
        END IF;
    ELSIF jsonb_typeof(p_src->v_key) IS DISTINCT FROM 'string' OR btrim(p_src->>v_key) = '' THEN
        RAISE EXCEPTION '%: "%" must be a non-empty string', p_where, v_key USING ERRCODE = 'PW102', HINT = p_hint;
    ELSIF v_key = 'value' AND 'media_id' = ANY (p_allowed) AND p_src->>'value' !~* '^https?://[^\s/]+' THEN
        RAISE EXCEPTION '%: "%" is not an http(s) link', p_where, p_src->>'value' USING ERRCODE = 'PW102', HINT = p_hint;
    END IF;
    IF p_src ? 'filename' AND (jsonb_typeof(p_src->'filename') <> 'string' OR btrim(p_src->>'filename') = '') THEN
        RAISE EXCEPTION '%: "filename" must be a non-empty string', p_where USING ERRCODE = 'PW102', HINT = p_hint;
    END IF;
END
$$;

CREATE FUNCTION core.check_staged_contacts(p_default_cc text, p_on_invalid text, p_columns text[] DEFAULT '{}'::text[], p_count_duplicates boolean DEFAULT true, OUT invalid integer, OUT invalid_rows jsonb, OUT duplicates integer, OUT staged integer) RETURNS record
    LANGUAGE plpgsql
    SET search_path TO ''
    SET client_min_messages TO 'warning'
    AS $_$
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

    -- One pass over the staged rows: the digits once per row (the OFFSET 0 subquery), the
    -- E.164 number from them, and the first problem: the phone's, then an empty mapped
    -- column's, in p_columns' order. Column names enter the SQL only through %L.
    DROP TABLE IF EXISTS pg_temp.contact_rows;
    EXECUTE format($q$
        CREATE TEMP TABLE contact_rows ON COMMIT DROP AS
        SELECT n.row_no, n.raw_phone, n.wa_id, n.name, n.attributes,
               CASE WHEN n.wa_id IS NULL THEN core.phone_problem(n.raw_phone, $1) %s END AS problem
        FROM (SELECT d.row_no, d.raw_phone, core.phone_from_digits(d.raw_phone, d.digits, $1) AS wa_id, d.name, d.attributes
              FROM (SELECT s.row_no, s.phone AS raw_phone, core.phone_digits(s.phone) AS digits,
                           nullif(btrim(s.name), '') AS name, s.attributes
                    FROM pg_temp.staged_contacts s OFFSET 0) d
              OFFSET 0) n
    $q$, coalesce((SELECT string_agg(format('WHEN coalesce(btrim(%s), %L) = %L THEN %L',
                                            CASE c WHEN 'phone' THEN 'n.raw_phone' WHEN 'name' THEN 'n.name'
                                                   ELSE format('n.attributes->>%L', c) END,
                                            '', '', format('column "%s" is empty', c)), ' ' ORDER BY i)
                   FROM unnest(coalesce(p_columns, '{}')) WITH ORDINALITY u(c, i)), ''))
    USING p_default_cc;
    -- Temp tables have no statistics until analysed; without them the joins that read
    -- this one plan for a single row and loop. The columns they join, group and filter
    -- on: sampling the names and attributes too (jsonb compared to sort) cost as much.
    ANALYZE pg_temp.contact_rows (row_no, wa_id, problem);

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
    invalid_rows := CASE WHEN invalid = 0 THEN '[]' ELSE coalesce((
        SELECT jsonb_agg(jsonb_build_object('row', row_no, 'value', raw_phone, 'reason', problem) ORDER BY row_no)
        FROM (SELECT * FROM pg_temp.contact_rows WHERE problem IS NOT NULL ORDER BY row_no LIMIT 1000) f), '[]') END;
    IF p_count_duplicates THEN   -- api.create_campaign counts them as it dedupes
        duplicates := (SELECT count(*) - count(DISTINCT wa_id) FROM pg_temp.contact_rows WHERE problem IS NULL);
    END IF;
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

CREATE FUNCTION core.check_tenant_id_kept() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
BEGIN
    RAISE EXCEPTION 'tenant %: its tenant_id cannot change (to %)', OLD.tenant_id, NEW.tenant_id
        USING ERRCODE = '0A000', TABLE = 'tenants', COLUMN = 'tenant_id', SCHEMA = 'core',
              HINT = 'Contacts and everything else of the tenant keep its id.';
END
$$;

CREATE FUNCTION core.check_time_zone(p_zone text, p_field text) RETURNS text
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
BEGIN
    IF p_zone IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_timezone_names WHERE name = p_zone) THEN
        RAISE EXCEPTION '% "%" is not a time zone', p_field, left(p_zone, 60)
            USING ERRCODE = 'PW100', HINT = 'Give an IANA zone name such as "Europe/Lisbon" or "America/Sao_Paulo".';
    END IF;
    RETURN p_zone;
END
$$;

CREATE FUNCTION core.checked_fields(p_tenant_id bigint, p_fields jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_bad record;
BEGIN
    IF p_fields IS NULL THEN
        RETURN '{}';
    END IF;
    IF jsonb_typeof(p_fields) <> 'object' THEN
        RAISE EXCEPTION 'fields must be a JSON object of field names and values' USING ERRCODE = 'PW100',
            HINT = '{"city": "Paris", "loyalty_points": 120, "old_field": null}';
    END IF;
    SELECT e.key INTO v_bad FROM jsonb_each(p_fields) e
    WHERE NOT EXISTS (SELECT FROM core.contact_fields f WHERE f.tenant_id = p_tenant_id AND f.name = e.key) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'field "%" is not defined', left(v_bad.key, 80) USING ERRCODE = 'PW233',
            HINT = 'Define it with api.define_contact_field() first.';
    END IF;
    SELECT e.key, e.value, f.type, v.problem INTO v_bad
    FROM jsonb_each(p_fields) e
    JOIN core.contact_fields f ON f.tenant_id = p_tenant_id AND f.name = e.key,
    LATERAL core.field_value(f.type, e.value) v
    WHERE jsonb_typeof(e.value) <> 'null' AND v.problem IS NOT NULL LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'field "%": % is % (a % field)', v_bad.key, left(v_bad.value::text, 100), v_bad.problem, v_bad.type
            USING ERRCODE = 'PW133', HINT = 'text: a string; number: 42 or "3.5"; date: "YYYY-MM-DD"; boolean: true or false.';
    END IF;
    RETURN (SELECT jsonb_object_agg(e.key, CASE WHEN jsonb_typeof(e.value) = 'null' THEN 'null'::jsonb ELSE v.value END)
            FROM jsonb_each(p_fields) e
            JOIN core.contact_fields f ON f.tenant_id = p_tenant_id AND f.name = e.key,
            LATERAL core.field_value(f.type, e.value) v);
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
        -- Only a failure's code is looked up: the subquery (kept whole by OFFSET 0) makes
        -- the condition a one-time filter, where a join condition would still call the
        -- function for every accepted send.
        LEFT JOIN LATERAL (SELECT m.* FROM core.meta_error(r.error_code) m WHERE r.wamid IS NULL OFFSET 0) e ON true
    ) c
$$;

CREATE FUNCTION core.clean_tags(p_tags text[], p_what text) RETURNS text[]
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_bad text;
BEGIN
    IF p_tags IS NULL THEN
        RETURN '{}';
    END IF;
    IF cardinality(p_tags) > 100 THEN
        RAISE EXCEPTION '% lists more than 100 tags', p_what USING ERRCODE = 'PW100', HINT = 'A contact has at most 100 tags.';
    END IF;
    SELECT t INTO v_bad FROM unnest(p_tags) t
    WHERE t IS NULL OR length(btrim(t)) NOT BETWEEN 1 AND 64 OR t ~ '[[:cntrl:]]' LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '% has a tag that is empty, longer than 64 characters or has control characters: "%"', p_what,
            left(coalesce(v_bad, 'null'), 80) USING ERRCODE = 'PW100', HINT = 'e.g. ["vip", "newsletter"].';
    END IF;
    RETURN ARRAY(SELECT DISTINCT btrim(t) FROM unnest(p_tags) t ORDER BY 1);
END
$$;

CREATE FUNCTION core.compile_segment(p_tenant_id bigint, p_filter jsonb, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS core.compiled_segment
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
BEGIN
    IF p_filter IS NULL THEN
        RAISE EXCEPTION 'segment filter is missing' USING ERRCODE = 'PW132',
            HINT = 'e.g. {"all": [{"tag": "vip"}, {"opted_out": false}]}.';
    END IF;
    IF length(p_filter::text) > 65536 THEN
        RAISE EXCEPTION 'segment filter is longer than 64 KiB' USING ERRCODE = 'PW132', HINT = 'Use fewer conditions.';
    END IF;
    RETURN core.compile_segment_node(p_tenant_id, p_filter, 'filter', coalesce(p_now, now()), 1,
                                     ROW(NULL, '{}', '{}', '{}', '{}')::core.compiled_segment);
END
$$;

CREATE FUNCTION core.compile_segment_node(p_tenant_id bigint, p_node jsonb, p_path text, p_now timestamp with time zone, p_depth integer, p_acc core.compiled_segment) RETURNS core.compiled_segment
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $_$
DECLARE
    v_key text;
    v_parts text[] := '{}';
    v_child jsonb;
    v_i integer := 0;
    v_type text;
    v_op text;
    v_value jsonb;
    v_f text;       -- the field name's position, as text for the fragment
    v_v text;       -- the value's position
    v_interval interval;
    v_time timestamptz;
    v_event text;
    v_expr text;
BEGIN
    IF p_depth > 10 THEN
        RAISE EXCEPTION 'segment filter is nested deeper than 10 levels at %', p_path USING ERRCODE = 'PW132',
            HINT = 'Flatten the filter: all/any take up to 100 conditions each.';
    END IF;
    IF jsonb_typeof(p_node) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'segment condition % is not a JSON object', p_path USING ERRCODE = 'PW132',
            HINT = 'e.g. {"tag": "vip"} or {"all": [{"tag": "vip"}, {"opted_out": false}]}.';
    END IF;
    SELECT k INTO v_key FROM jsonb_object_keys(p_node) k
    WHERE k IN ('all', 'any', 'not', 'tag', 'field', 'opted_out', 'last_inbound_at', 'campaign') LIMIT 1;
    IF v_key IS NULL THEN
        RAISE EXCEPTION 'segment condition % has none of all, any, not, tag, field, opted_out, last_inbound_at, campaign', p_path
            USING ERRCODE = 'PW132', HINT = 'e.g. {"field": "city", "op": "eq", "value": "Paris"}.';
    END IF;
    IF EXISTS (SELECT FROM jsonb_object_keys(p_node) k WHERE k NOT IN (v_key) AND NOT (
                   (v_key = 'field' AND k IN ('op', 'value')) OR (v_key = 'campaign' AND k = 'event'))) THEN
        RAISE EXCEPTION 'segment condition % has keys beside "%": %', p_path, v_key,
            (SELECT string_agg(k, ', ') FROM jsonb_object_keys(p_node) k WHERE k <> v_key)
            USING ERRCODE = 'PW132', HINT = 'One condition per object; combine conditions with all or any.';
    END IF;

    CASE v_key
    WHEN 'all', 'any' THEN
        IF jsonb_typeof(p_node->v_key) IS DISTINCT FROM 'array' OR jsonb_array_length(p_node->v_key) NOT BETWEEN 1 AND 100 THEN
            RAISE EXCEPTION 'segment condition %.% must be an array of 1 to 100 conditions', p_path, v_key
                USING ERRCODE = 'PW132', HINT = '{"all": [{"tag": "vip"}, {"opted_out": false}]}';
        END IF;
        FOR v_child IN SELECT e FROM jsonb_array_elements(p_node->v_key) e LOOP
            p_acc := core.compile_segment_node(p_tenant_id, v_child, format('%s.%s[%s]', p_path, v_key, v_i),
                                               p_now, p_depth + 1, p_acc);
            v_parts := v_parts || p_acc.sql;
            v_i := v_i + 1;
        END LOOP;
        v_expr := '(' || array_to_string(v_parts, CASE v_key WHEN 'all' THEN ' AND ' ELSE ' OR ' END) || ')';
    WHEN 'not' THEN
        p_acc := core.compile_segment_node(p_tenant_id, p_node->'not', p_path || '.not', p_now, p_depth + 1, p_acc);
        v_expr := '(NOT coalesce(' || p_acc.sql || ', false))';
    WHEN 'tag' THEN
        IF jsonb_typeof(p_node->'tag') IS DISTINCT FROM 'string' OR length(btrim(p_node->>'tag')) NOT BETWEEN 1 AND 64 THEN
            RAISE EXCEPTION 'segment condition %.tag must be a tag of 1 to 64 characters', p_path
                USING ERRCODE = 'PW132', HINT = '{"tag": "vip"}';
        END IF;
        p_acc.texts := p_acc.texts || btrim(p_node->>'tag');
        v_expr := format('(c.tags @> ARRAY[$1[%s]])', cardinality(p_acc.texts));
    WHEN 'opted_out' THEN
        IF jsonb_typeof(p_node->'opted_out') IS DISTINCT FROM 'boolean' THEN
            RAISE EXCEPTION 'segment condition %.opted_out must be true or false', p_path USING ERRCODE = 'PW132',
                HINT = '{"opted_out": false}';
        END IF;
        v_expr := CASE WHEN (p_node->'opted_out')::boolean THEN '(c.opted_out)' ELSE '(NOT c.opted_out)' END;
    WHEN 'last_inbound_at' THEN
        v_value := p_node->'last_inbound_at';
        IF jsonb_typeof(v_value) IS DISTINCT FROM 'object' OR (SELECT count(*) FROM jsonb_object_keys(v_value)) <> 1
           OR NOT EXISTS (SELECT FROM jsonb_object_keys(v_value) k WHERE k IN ('within', 'before', 'after', 'exists')) THEN
            RAISE EXCEPTION 'segment condition %.last_inbound_at must be one of {"within": interval}, {"before": time}, {"after": time}, {"exists": boolean}', p_path
                USING ERRCODE = 'PW132', HINT = '{"last_inbound_at": {"within": "7 days"}}';
        END IF;
        v_op := (SELECT k FROM jsonb_object_keys(v_value) k);
        IF v_op = 'exists' THEN
            IF jsonb_typeof(v_value->'exists') IS DISTINCT FROM 'boolean' THEN
                RAISE EXCEPTION 'segment condition %.last_inbound_at.exists must be true or false', p_path
                    USING ERRCODE = 'PW132', HINT = '{"last_inbound_at": {"exists": false}}: never wrote in.';
            END IF;
            v_expr := CASE WHEN (v_value->'exists')::boolean THEN '(c.last_inbound_at IS NOT NULL)'
                           ELSE '(c.last_inbound_at IS NULL)' END;
        ELSE
            BEGIN
                IF v_op = 'within' THEN
                    v_interval := (v_value->>'within')::interval;
                ELSE
                    v_time := (v_value->>v_op)::timestamptz;
                END IF;
            EXCEPTION WHEN data_exception THEN
                v_time := NULL; v_interval := NULL;
            END;
            IF jsonb_typeof(v_value->v_op) IS DISTINCT FROM 'string' OR (v_op = 'within' AND (v_interval IS NULL
               OR v_interval <= interval '0' OR v_interval > interval '10 years')) OR (v_op <> 'within' AND v_time IS NULL) THEN
                RAISE EXCEPTION 'segment condition %.last_inbound_at.% is not %', p_path, v_op,
                    CASE v_op WHEN 'within' THEN 'an interval between 0 and 10 years' ELSE 'a timestamp' END
                    USING ERRCODE = 'PW132',
                          HINT = CASE v_op WHEN 'within' THEN 'e.g. "7 days" or "12 hours".' ELSE 'e.g. "2026-05-01T00:00:00Z".' END;
            END IF;
            p_acc.times := p_acc.times || CASE WHEN v_op = 'within' THEN p_now - v_interval ELSE v_time END;
            v_expr := format(CASE WHEN v_op = 'before' THEN '(c.last_inbound_at < $3[%s])'
                                  ELSE '(c.last_inbound_at >= $3[%s])' END, cardinality(p_acc.times));
        END IF;
    WHEN 'field' THEN
        IF jsonb_typeof(p_node->'field') IS DISTINCT FROM 'string' THEN
            RAISE EXCEPTION 'segment condition %.field must be a field name', p_path USING ERRCODE = 'PW132',
                HINT = '{"field": "city", "op": "eq", "value": "Paris"}';
        END IF;
        SELECT f.type INTO v_type FROM core.contact_fields f
        WHERE f.tenant_id = p_tenant_id AND f.name = p_node->>'field';
        IF v_type IS NULL THEN
            RAISE EXCEPTION 'segment condition %.field: the field "%" is not defined', p_path, left(p_node->>'field', 100)
                USING ERRCODE = 'PW233', HINT = 'List the fields with api.contact_fields(); define one with api.define_contact_field().';
        END IF;
        v_op := p_node->>'op';
        IF v_op IS NULL OR NOT v_op = ANY (CASE v_type
                WHEN 'text' THEN ARRAY['eq', 'ne', 'contains', 'exists']
                WHEN 'boolean' THEN ARRAY['eq', 'ne', 'exists']
                ELSE ARRAY['eq', 'ne', 'lt', 'gt', 'lte', 'gte', 'exists'] END) THEN
            RAISE EXCEPTION 'segment condition %.op: "%" is not an operator of % field "%"', p_path,
                left(coalesce(p_node->>'op', ''), 40), v_type, p_node->>'field'
                USING ERRCODE = 'PW132', HINT = CASE v_type
                    WHEN 'text' THEN 'A text field takes eq, ne, contains or exists.'
                    WHEN 'boolean' THEN 'A boolean field takes eq, ne or exists.'
                    ELSE format('A %s field takes eq, ne, lt, gt, lte, gte or exists.', v_type) END;
        END IF;
        p_acc.texts := p_acc.texts || (p_node->>'field');
        v_f := cardinality(p_acc.texts)::text;
        v_value := p_node->'value';
        IF v_op = 'exists' THEN
            IF v_value IS NOT NULL AND jsonb_typeof(v_value) <> 'boolean' THEN
                RAISE EXCEPTION 'segment condition %.value: exists takes true or false', p_path USING ERRCODE = 'PW132',
                    HINT = '{"field": "city", "op": "exists", "value": false}: contacts without a city.';
            END IF;
            v_expr := format(CASE WHEN coalesce(v_value, 'true')::boolean
                                  THEN '(c.attributes ? $1[%s] AND c.attributes->$1[%1$s] <> ''null'')'
                                  ELSE '(NOT (c.attributes ? $1[%s] AND c.attributes->$1[%1$s] <> ''null''))' END, v_f);
        ELSE
            -- The value, checked against the field's type as a stored value is.
            SELECT v.value INTO v_value FROM core.field_value(v_type, v_value) v;
            IF v_value IS NULL OR (v_type = 'text' AND v_op = 'contains' AND v_value = '""') THEN
                RAISE EXCEPTION 'segment condition %.value: % is not a % value for field "%"', p_path,
                    left(coalesce((p_node->'value')::text, 'nothing'), 100), v_type, p_node->>'field'
                    USING ERRCODE = 'PW132', HINT = CASE v_type
                        WHEN 'number' THEN 'A number, e.g. 42 or 3.5.' WHEN 'date' THEN 'A date, YYYY-MM-DD.'
                        WHEN 'boolean' THEN 'true or false.' ELSE 'A non-empty string.' END;
            END IF;
            -- The stored value as the type compares: numbers and dates that are not one (a
            -- column imported before the field was defined, say) are null, and match no
            -- comparison but ne.
            v_expr := CASE v_type
                WHEN 'number' THEN format('(CASE WHEN jsonb_typeof(c.attributes->$1[%1$s]) = ''number'' THEN (c.attributes->$1[%1$s])::numeric
                                              WHEN c.attributes->>$1[%1$s] ~ ''^\s*-?[0-9]+(\.[0-9]+)?\s*$'' THEN (c.attributes->>$1[%1$s])::numeric END)', v_f)
                WHEN 'date' THEN format('(CASE WHEN c.attributes->>$1[%1$s] ~ ''^[0-9]{4}-[0-9]{2}-[0-9]{2}$'' THEN c.attributes->>$1[%1$s] END)', v_f)
                WHEN 'boolean' THEN format('(CASE WHEN lower(c.attributes->>$1[%1$s]) IN (''true'', ''yes'', ''1'') THEN ''true''
                                              WHEN lower(c.attributes->>$1[%1$s]) IN (''false'', ''no'', ''0'') THEN ''false'' END)', v_f)
                ELSE format('(c.attributes->>$1[%s])', v_f) END;
            IF v_type = 'number' THEN
                p_acc.numbers := p_acc.numbers || (v_value::text)::numeric;
                v_v := format('$2[%s]', cardinality(p_acc.numbers));
            ELSE
                p_acc.texts := p_acc.texts || (v_value #>> '{}');
                v_v := format('$1[%s]', cardinality(p_acc.texts));
            END IF;
            v_expr := CASE v_op
                WHEN 'eq' THEN format('(%s = %s)', v_expr, v_v)
                WHEN 'ne' THEN format('(%s IS DISTINCT FROM %s)', v_expr, v_v)
                WHEN 'lt' THEN format('(%s < %s)', v_expr, v_v)
                WHEN 'gt' THEN format('(%s > %s)', v_expr, v_v)
                WHEN 'lte' THEN format('(%s <= %s)', v_expr, v_v)
                WHEN 'gte' THEN format('(%s >= %s)', v_expr, v_v)
                WHEN 'contains' THEN format('(strpos(lower(%s), lower(%s)) > 0)', v_expr, v_v) END;
        END IF;
    WHEN 'campaign' THEN
        IF jsonb_typeof(p_node->'campaign') IS DISTINCT FROM 'number' OR (p_node->>'campaign') !~ '^[1-9][0-9]{0,18}$' THEN
            RAISE EXCEPTION 'segment condition %.campaign must be a campaign id', p_path USING ERRCODE = 'PW132',
                HINT = '{"campaign": 42, "event": "read"}';
        END IF;
        IF NOT EXISTS (SELECT FROM core.campaigns WHERE campaign_id = (p_node->>'campaign')::bigint AND tenant_id = p_tenant_id) THEN
            RAISE EXCEPTION 'segment condition %.campaign: campaign % not found', p_path, p_node->>'campaign'
                USING ERRCODE = 'PW201', HINT = 'List the tenant''s campaigns with api.campaigns().';
        END IF;
        v_event := coalesce(p_node->>'event', 'messaged');
        IF v_event NOT IN ('messaged', 'sent', 'delivered', 'read', 'replied', 'failed') THEN
            RAISE EXCEPTION 'segment condition %.event: "%" is not messaged, sent, delivered, read, replied or failed', p_path,
                left(v_event, 40) USING ERRCODE = 'PW132', HINT = '{"campaign": 42, "event": "read"}; negate with {"not": ...}.';
        END IF;
        p_acc.ids := p_acc.ids || (p_node->>'campaign')::bigint;
        -- As api.campaign_stats counts them (a read without its delivered status was delivered).
        v_expr := format('(c.contact_id IN (SELECT o.contact_id FROM core.outbound_messages o WHERE o.campaign_id = $4[%s] AND %s))',
            cardinality(p_acc.ids), CASE v_event
                WHEN 'messaged' THEN 'true'
                WHEN 'sent' THEN '(o.state IN (''accepted'', ''sent'', ''delivered'', ''read'') OR coalesce(o.accepted_at, o.sent_at, o.delivered_at, o.read_at) IS NOT NULL)'
                WHEN 'delivered' THEN '(o.state IN (''delivered'', ''read'') OR coalesce(o.delivered_at, o.read_at) IS NOT NULL)'
                WHEN 'read' THEN '(o.state = ''read'' OR o.read_at IS NOT NULL)'
                WHEN 'replied' THEN 'o.replied_at IS NOT NULL'
                WHEN 'failed' THEN 'o.state = ''failed''' END);
    END CASE;
    p_acc.sql := v_expr;
    RETURN p_acc;
END
$_$;

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
    tags text[] DEFAULT '{}'::text[] NOT NULL,
    time_zone text,
    CONSTRAINT contacts_identified CHECK (((wa_id IS NOT NULL) OR (user_id IS NOT NULL))),
    CONSTRAINT contacts_wa_id_e164 CHECK (((wa_id ~ '^[1-9][0-9]*$'::text) AND ((length(wa_id) >= 7) AND (length(wa_id) <= 15))))
);

COMMENT ON COLUMN core.contacts.tenant_id IS 'The contact''s tenant. No foreign key (one check per row was a sixth of a campaign''s creation): the contacts_tenant_exists triggers check each statement''s tenants once (FOR KEY SHARE, as the key did), and the tenants_delete_contacts and tenants_truncate_contacts triggers delete a tenant''s contacts with it.';

COMMENT ON COLUMN core.contacts.marketing_stopped_at IS 'When Meta said the user stopped marketing messages from this business (error 131050 or a user_preferences webhook); marketing templates skip the contact, utility ones do not.';

COMMENT ON COLUMN core.contacts.marketing_resumed_at IS 'When the user last resumed marketing messages (user_preferences webhook); a stop older than this changes nothing.';

COMMENT ON COLUMN core.contacts.tags IS 'The contact''s tags (trimmed, 1-64 characters, at most 100), set by api.update_contact, api.tag_contacts and imports.';

COMMENT ON COLUMN core.contacts.time_zone IS 'The contact''s own IANA time zone, for campaign send windows (NULL: from the phone''s prefix, core.phone_zone).';

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

CREATE FUNCTION core.contact_record(p_tenant_id bigint, p_contact_id bigint) RETURNS api.contact_record
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_contact api.contact_record;
BEGIN
    SELECT c.contact_id, c.wa_id, c.user_id, c.name, c.profile_name, c.attributes, c.tags, c.opted_out, c.opted_out_at,
           c.last_inbound_at, c.created_at, c.updated_at
    INTO v_contact FROM core.contacts c WHERE c.contact_id = p_contact_id AND c.tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'contact % not found', p_contact_id USING ERRCODE = 'PW204',
            HINT = 'List the tenant''s contacts with api.search_contacts().';
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

CREATE FUNCTION core.csv_text(p_expr text) RETURNS text
    LANGUAGE sql IMMUTABLE
    SET search_path TO ''
    AS $$
    SELECT format('coalesce(''"'' || replace(%s, ''"'', ''""'') || ''"'', '''')', p_expr)
$$;

CREATE FUNCTION core.dashboard_check(p_role text, p_password_hash text, p_token_hash bytea) RETURNS void
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO ''
    AS $_$
BEGIN
    IF p_role IS NOT NULL AND p_role NOT IN ('admin', 'marketer', 'agent', 'viewer') THEN
        RAISE EXCEPTION 'role "%" is not one of admin, marketer, agent, viewer', p_role USING ERRCODE = 'PW100',
            HINT = 'admin: everything, users too; marketer: campaigns; agent: the inbox; viewer: reads only.';
    END IF;
    IF p_password_hash IS NOT NULL AND p_password_hash NOT LIKE '$argon2%' THEN
        RAISE EXCEPTION 'password_hash is not an argon2 hash' USING ERRCODE = 'PW100',
            HINT = 'Hash the password with argon2 (argon2-cffi PasswordHasher) and pass its PHC string.';
    END IF;
    IF p_token_hash IS NOT NULL AND length(p_token_hash) <> 32 THEN
        RAISE EXCEPTION 'token hash is % bytes, not 32', length(p_token_hash) USING ERRCODE = 'PW100',
            HINT = 'Pass the sha256 of the token, never the token.';
    END IF;
END
$_$;

CREATE FUNCTION core.dashboard_email(p_email text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO ''
    AS $_$
BEGIN
    IF p_email IS NULL OR lower(btrim(p_email)) !~ '^[^@\s]+@[^@\s]+$' OR length(btrim(p_email)) > 254 THEN
        RAISE EXCEPTION 'email "%" is not an e-mail address', left(p_email, 254) USING ERRCODE = 'PW100',
            HINT = 'Give an address like ana@example.com (at most 254 characters).';
    END IF;
    RETURN lower(btrim(p_email));
END
$_$;

CREATE FUNCTION core.dashboard_require(p_role text, p_action text) RETURNS void
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM core.dashboard_role_actions WHERE role = p_role AND action = p_action) THEN
        RAISE EXCEPTION 'the % role lacks the % permission', p_role, p_action USING ERRCODE = 'PW403',
            HINT = 'Ask an admin of the workspace for a role that may (admin, marketer, agent, viewer).';
    END IF;
END
$$;

CREATE TABLE core.dashboard_users (
    user_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    email text NOT NULL,
    password_hash text NOT NULL,
    role text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    disabled_at timestamp with time zone,
    last_login_at timestamp with time zone,
    failed_logins integer DEFAULT 0 NOT NULL,
    failed_since timestamp with time zone,
    locked_until timestamp with time zone,
    CONSTRAINT dashboard_users_email_valid CHECK (((email ~ '^[^@\s]+@[^@\s]+$'::text) AND (length(email) <= 254) AND (email = lower(email)))),
    CONSTRAINT dashboard_users_password_hash_argon2 CHECK ((password_hash ~~ '$argon2%'::text)),
    CONSTRAINT dashboard_users_role_valid CHECK ((role = ANY (ARRAY['admin'::text, 'marketer'::text, 'agent'::text, 'viewer'::text])))
);

COMMENT ON TABLE core.dashboard_users IS 'People who log in to the dashboard: one tenant each, e-mail unique per tenant, argon2 password hash, role (admin, marketer, agent, viewer), lockout state.';

CREATE FUNCTION core.dashboard_session_user(p_token_hash bytea, p_now timestamp with time zone) RETURNS core.dashboard_users
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_user core.dashboard_users;
BEGIN
    SELECT u.* INTO v_user FROM core.dashboard_sessions s JOIN core.dashboard_users u ON u.user_id = s.user_id
    WHERE s.token_hash = p_token_hash AND s.revoked_at IS NULL AND s.expires_at > p_now AND u.disabled_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'not logged in: the session is unknown, expired or ended' USING ERRCODE = 'PW401',
            HINT = 'Log in again at /dashboard/login.';
    END IF;
    RETURN v_user;
END
$$;

CREATE FUNCTION core.dashboard_user_row(p_user core.dashboard_users) RETURNS api.dashboard_user
    LANGUAGE sql IMMUTABLE
    SET search_path TO ''
    AS $$
    SELECT ROW(p_user.user_id, p_user.tenant_id, p_user.email, p_user.role, p_user.created_at, p_user.disabled_at,
               p_user.last_login_at, p_user.locked_until)::api.dashboard_user
$$;

CREATE FUNCTION core.dead_letter_webhook(p_msg_id bigint, p_payload jsonb, p_headers jsonb, p_sqlstate text, p_reason text) RETURNS void
    LANGUAGE sql
    SET search_path TO ''
    AS $$
    SELECT pgmq.send('webhooks_dead', jsonb_build_object(
        'msg_id', p_msg_id, 'sqlstate', p_sqlstate, 'reason', p_reason, 'failed_at', now(),
        'headers', p_headers, 'payload', p_payload));
$$;

CREATE FUNCTION core.defer_capped(p_ids bigint[], p_states text[], p_codes integer[], p_at timestamp with time zone[]) RETURNS bigint[]
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

CREATE FUNCTION core.delete_campaign_messages() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
BEGIN
    DELETE FROM core.outbound_messages o USING old_rows d WHERE o.campaign_id = d.campaign_id;
    RETURN NULL;
END
$$;

CREATE FUNCTION core.delete_tenant_contacts() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF NOT EXISTS (SELECT 1 FROM old_rows) THEN
            RETURN NULL;
        END IF;
    END IF;
    -- (READ UNCOMMITTED runs as READ COMMITTED.)
    IF current_setting('transaction_isolation') NOT IN ('read committed', 'read uncommitted') THEN
        RAISE EXCEPTION 'tenants are deleted under READ COMMITTED, not %', current_setting('transaction_isolation')
            USING ERRCODE = '0A000', TABLE = 'tenants', SCHEMA = 'core',
                  HINT = 'A snapshot older than the deletion would not see contacts added meanwhile, and leave them without a tenant.';
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM core.contacts;
    ELSE
        DELETE FROM core.contacts c USING old_rows d WHERE c.tenant_id = d.tenant_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION core.drop_old_partitions(p_parent text, p_keep interval) RETURNS bigint
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $_$
DECLARE
    v_control text;
    v_removed bigint := 0;
    v_rows bigint;
    v_child record;
BEGIN
    SELECT c.control INTO v_control FROM partman.part_config c WHERE c.parent_table = p_parent;
    IF v_control IS NULL THEN
        RAISE EXCEPTION 'core.drop_old_partitions: % is not partitioned by pg_partman', p_parent
            USING ERRCODE = 'undefined_table';
    END IF;
    FOR v_child IN
        SELECT format('%I.%I', p.partition_schemaname, p.partition_tablename) AS name
        FROM partman.show_partitions(p_parent) p
        CROSS JOIN LATERAL partman.show_partition_info(p.partition_schemaname || '.' || p.partition_tablename,
                                                       p_parent_table => p_parent) i
        WHERE i.child_end_time <= now() - p_keep
    LOOP
        -- The planner's count (autovacuum analyzes a partition as it fills): counting a
        -- day of statuses at full rate would read it all. Never analyzed: counted.
        SELECT c.reltuples::bigint INTO v_rows FROM pg_catalog.pg_class c WHERE c.oid = v_child.name::regclass;
        IF v_rows < 0 THEN
            EXECUTE format('SELECT count(*) FROM %s', v_child.name) INTO v_rows;
        END IF;
        EXECUTE format('DROP TABLE %s', v_child.name);
        v_removed := v_removed + v_rows;
    END LOOP;
    IF to_regclass(p_parent || '_default') IS NOT NULL THEN
        EXECUTE format('DELETE FROM %s WHERE %I < now() - $1', p_parent || '_default', v_control) USING p_keep;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_removed := v_removed + v_rows;
    END IF;
    RETURN v_removed;
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

CREATE FUNCTION core.event_backoff(p_attempt integer) RETURNS interval
    LANGUAGE sql STABLE
    SET search_path TO ''
    AS $$
    SELECT make_interval(secs => s.event_backoff_s[least(greatest(p_attempt, 1), cardinality(s.event_backoff_s))])
    FROM core.settings s
$$;

CREATE FUNCTION core.event_queue(p_endpoint_id bigint) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT 'ev_' || p_endpoint_id::text
$$;

CREATE FUNCTION core.event_url_problem(p_url text) RETURNS text
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $_$
DECLARE
    v_host text := lower(substring(p_url FROM '^https?://([^/?#]+)'));
    v_addr inet;
BEGIN
    IF p_url IS NULL OR p_url !~ '^https?://[^[:space:]/?#]+([/?#][^[:space:]]*)?$' OR length(p_url) > 2000 THEN
        RETURN 'it is not an http:// or https:// URL of at most 2000 characters without spaces';
    END IF;
    IF v_host LIKE '%@%' THEN
        RETURN 'it carries credentials (user:password@); put a secret in the path or rely on the signature';
    END IF;
    IF (SELECT s.event_allow_private_urls FROM core.settings s) THEN
        RETURN NULL;
    END IF;
    -- The host without the port: [v6] or name/v4.
    v_host := CASE WHEN v_host LIKE '[%' THEN substring(v_host FROM '^\[([^\]]+)\]')
                   ELSE regexp_replace(v_host, ':[0-9]*$', '') END;
    IF v_host = 'localhost' OR v_host LIKE '%.localhost' OR v_host LIKE '%.local' OR v_host LIKE '%.internal' THEN
        RETURN format('host %s is local', v_host);
    END IF;
    BEGIN
        v_addr := v_host::inet;
    EXCEPTION WHEN invalid_text_representation THEN
        RETURN NULL;        -- a name: the worker checks what it resolves to
    END;
    IF v_addr << ANY ('{127.0.0.0/8,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,169.254.0.0/16,100.64.0.0/10,0.0.0.0/8,::1/128,fc00::/7,fe80::/10,::/128}'::inet[])
       OR v_addr = ANY ('{::1,::}'::inet[]) THEN
        RETURN format('address %s is loopback, private or link-local', v_host);
    END IF;
    RETURN NULL;
END
$_$;

CREATE FUNCTION core.field_value(p_type text, p_value jsonb, OUT value jsonb, OUT problem text) RETURNS record
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO ''
    AS $_$
DECLARE
    v_text text := CASE jsonb_typeof(p_value) WHEN 'string' THEN btrim(p_value #>> '{}') ELSE p_value::text END;
BEGIN
    IF p_value IS NULL OR jsonb_typeof(p_value) = 'null' THEN
        problem := 'no value';
        RETURN;
    ELSIF jsonb_typeof(p_value) IN ('object', 'array') THEN
        problem := format('a %s field takes a single value, not a JSON %s', p_type, jsonb_typeof(p_value));
        RETURN;
    END IF;
    CASE p_type
    WHEN 'text' THEN
        IF length(v_text) > 1000 THEN
            problem := 'text is longer than 1000 characters';
        ELSE
            value := to_jsonb(v_text);
        END IF;
    WHEN 'number' THEN
        IF v_text ~ '^-?[0-9]{1,30}(\.[0-9]{1,30})?$' THEN
            value := to_jsonb(v_text::numeric);
        ELSE
            problem := 'not a number (digits, an optional minus and decimal point)';
        END IF;
    WHEN 'date' THEN
        IF v_text ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}$' THEN
            BEGIN
                value := to_jsonb(to_char(v_text::date, 'YYYY-MM-DD'));
            EXCEPTION WHEN data_exception THEN
                problem := 'not a calendar date';
            END;
        ELSE
            problem := 'not a date in the form YYYY-MM-DD';
        END IF;
    WHEN 'boolean' THEN
        value := CASE WHEN lower(v_text) IN ('true', 'yes', '1') THEN 'true'::jsonb
                      WHEN lower(v_text) IN ('false', 'no', '0') THEN 'false'::jsonb END;
        IF value IS NULL THEN
            problem := 'not true or false (or yes/no, 1/0)';
        END IF;
    END CASE;
END
$_$;

CREATE FUNCTION core.fill_placeholders(p_text text, p_params jsonb) RETURNS text
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_out text := coalesce(p_text, '');
    v_param jsonb;
    v_n integer := 0;
BEGIN
    FOR v_param IN SELECT e FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p_params) = 'array' THEN p_params ELSE '[]' END) e LOOP
        v_n := v_n + 1;
        v_out := regexp_replace(v_out,
                                format('\{\{\s*%s\s*\}\}', coalesce(v_param->>'parameter_name', v_n::text)),
                                replace(coalesce(v_param->>'text', ''), '\', '\\'), 'g');
    END LOOP;
    RETURN v_out;
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

CREATE FUNCTION core.hold_outside_window(p_batch core.claimed[], p_number_id bigint, p_now timestamp with time zone) RETURNS core.claimed[]
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_held bigint[];
BEGIN
    -- The common case costs one index probe: no running campaign of the number has a window.
    IF NOT EXISTS (SELECT 1 FROM core.campaigns c
                   WHERE c.number_id = p_number_id AND c.status = 'running' AND c.send_window_start IS NOT NULL) THEN
        RETURN p_batch;
    END IF;
    WITH outside AS (
        SELECT b.queue_name, b.msg_id, b.outbound_id,
               core.window_opens_at(p_now, coalesce(ct.time_zone, core.phone_zone(ct.wa_id), t.time_zone),
                                    c.send_window_start, c.send_window_end) AS opens_at
        FROM unnest(p_batch) b
        JOIN core.outbound_messages o ON o.outbound_id = b.outbound_id
        JOIN core.campaigns c ON c.campaign_id = o.campaign_id AND c.send_window_start IS NOT NULL
        JOIN core.tenants t ON t.tenant_id = c.tenant_id
        JOIN core.contacts ct ON ct.contact_id = o.contact_id
    ), held AS (
        SELECT o.queue_name, o.opens_at, array_agg(o.msg_id) AS msg_ids, array_agg(o.outbound_id) AS outbound_ids
        FROM outside o WHERE o.opens_at IS NOT NULL
        GROUP BY o.queue_name, o.opens_at
    ), moved AS (
        SELECT h.outbound_ids, (SELECT count(*) FROM pgmq.set_vt(h.queue_name, h.msg_ids, h.opens_at)) AS n
        FROM held h
    )
    SELECT coalesce(array_agg(x), '{}') INTO v_held FROM moved m, unnest(m.outbound_ids) x;
    IF cardinality(v_held) = 0 THEN
        RETURN p_batch;
    END IF;
    RETURN ARRAY(SELECT b FROM unnest(p_batch) b WHERE b.outbound_id <> ALL (v_held));
END
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

CREATE FUNCTION core.inbox_rows(p_tenant_id bigint, p_user core.dashboard_users, p_number_id bigint, p_contact_id bigint, p_filter text, p_pattern text, p_limit integer, p_now timestamp with time zone) RETURNS SETOF api.conversation_summary
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
BEGIN
    RETURN QUERY
    SELECT c.contact_id, c.wa_id, c.user_id, c.name, c.profile_name, c.opted_out,
           l.message_id, l.direction, l.type, l.body, v.last_message_at, n.unread::integer,
           core.window_open(v.last_inbound_at, p_now), core.window_closes_at(v.last_inbound_at),
           v.assigned_to, v.assigned_at, v.needs_human, v.needs_human_reason
    FROM core.conversations v
    JOIN core.contacts c ON c.contact_id = v.contact_id AND c.tenant_id = p_tenant_id
    LEFT JOIN core.conversation_reads r
        ON r.user_id = p_user.user_id AND r.number_id = v.number_id AND r.contact_id = v.contact_id
    LEFT JOIN LATERAL (
        SELECT i.message_id, i.direction, i.type, i.body FROM core.inbox_messages i
        WHERE i.number_id = v.number_id AND i.contact_id = v.contact_id
        ORDER BY i.created_at DESC, i.message_id DESC
        LIMIT 1
    ) l ON true
    -- Unread for this user: inbound messages after their mark, counted up to 100.
    CROSS JOIN LATERAL (
        SELECT count(*) AS unread FROM (
            SELECT 1 FROM core.inbox_messages i
            WHERE i.number_id = v.number_id AND i.contact_id = v.contact_id AND i.direction = 'in'
              AND (i.created_at, i.message_id) > (coalesce(r.read_up_to_at, '-infinity'), coalesce(r.read_up_to_id, 0))
            LIMIT 100) x
    ) n
    WHERE v.number_id = p_number_id
      AND (p_contact_id IS NULL OR v.contact_id = p_contact_id)
      AND (p_user.role <> 'agent' OR v.assigned_to IS NULL OR v.assigned_to = p_user.email)
      AND CASE p_filter
              WHEN 'mine' THEN v.assigned_to = p_user.email
              WHEN 'unassigned' THEN v.assigned_to IS NULL
              WHEN 'needs_human' THEN v.needs_human
              WHEN 'unread' THEN n.unread > 0
              ELSE true END
      AND (p_pattern IS NULL
           OR v.contact_id IN (SELECT k.contact_id FROM core.contacts k
                               WHERE k.tenant_id = p_tenant_id
                                 AND (coalesce(k.wa_id, '') || ' ' || coalesce(k.name, '') || ' '
                                      || coalesce(k.profile_name, '')) ILIKE p_pattern)
           OR v.contact_id IN (SELECT i.contact_id FROM core.inbox_messages i
                               WHERE i.number_id = p_number_id AND i.body ILIKE p_pattern))
    ORDER BY v.last_message_at DESC, v.contact_id DESC
    LIMIT p_limit;
END
$$;

CREATE FUNCTION core.inbox_user(p_tenant_id bigint, p_user_id bigint) RETURNS core.dashboard_users
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_user core.dashboard_users;
BEGIN
    SELECT * INTO v_user FROM core.dashboard_users u
    WHERE u.user_id = p_user_id AND u.tenant_id = p_tenant_id AND u.disabled_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % not found', p_user_id USING ERRCODE = 'PW260',
            HINT = 'List the tenant''s users with api.dashboard_users().';
    END IF;
    RETURN v_user;
END
$$;

CREATE FUNCTION core.iso_time(p_expr text) RETURNS text
    LANGUAGE sql IMMUTABLE
    SET search_path TO ''
    AS $$
    SELECT format('to_char(%s AT TIME ZONE ''UTC'', ''YYYY-MM-DD"T"HH24:MI:SS.US"Z"'')', p_expr)
$$;

CREATE FUNCTION core.like_literal(p_text text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT replace(replace(replace(p_text, '\', '\\'), '%', '\%'), '_', '\_')
$$;

CREATE FUNCTION core.map_template(p_template core.templates, p_spec jsonb, OUT render jsonb, OUT columns text[]) RETURNS record
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $_$
DECLARE
    v_named boolean := p_template.parameter_format = 'NAMED';
    v_t text := format('template "%s" (%s)', p_template.name, p_template.language);
    v_slot api.template_parameter;
    v_slots api.template_parameter[];
    v_body jsonb;
    v_buttons jsonb;
    v_src jsonb;
    v_where text;
    v_hint text;
    v_key text;
    v_body_params jsonb := '[]';
    v_code jsonb;   -- the body's {{1}}, an OTP button's default
    v_param jsonb;
    v_n integer;
BEGIN
    render := '[]';
    columns := '{}';
    v_slots := ARRAY(SELECT s FROM core.template_slots(p_template.components, p_template.parameter_format) s);
    SELECT string_agg(format('"%s"', k), ', ') INTO v_key FROM jsonb_object_keys(p_spec) k
    WHERE k NOT IN ('name', 'language', 'header', 'body', 'buttons', 'params');
    IF v_key IS NOT NULL THEN
        RAISE EXCEPTION '%: unknown mapping key %', v_t, v_key USING ERRCODE = 'PW102',
            HINT = 'A template mapping has name, language, header, body and buttons (params: the old spelling of a positional body).';
    END IF;
    IF p_spec ? 'params' AND p_spec ? 'body' THEN
        RAISE EXCEPTION '%: both "body" and "params" are given', v_t USING ERRCODE = 'PW102',
            HINT = '"params" is the old spelling of a positional "body": give one of them.';
    END IF;

    -- Every CSV column of the mapping, by name: the queue message's per-row values.
    columns := ARRAY(
        SELECT DISTINCT x.s->>'column' FROM (
            SELECT p_spec->'header' AS s
            UNION ALL SELECT e FROM jsonb_array_elements(CASE WHEN jsonb_typeof(coalesce(p_spec->'body', p_spec->'params')) = 'array'
                                                              THEN coalesce(p_spec->'body', p_spec->'params') END) e
            UNION ALL SELECT e FROM jsonb_path_query(CASE WHEN jsonb_typeof(p_spec->'body') = 'object' THEN p_spec->'body' END, '$.*') e
            UNION ALL SELECT e FROM jsonb_path_query(CASE WHEN jsonb_typeof(p_spec->'buttons') = 'object' THEN p_spec->'buttons' END, '$.*') e) x
        WHERE jsonb_typeof(x.s->'column') = 'string' AND btrim(x.s->>'column') <> ''
        ORDER BY 1);

    -- Header.
    SELECT * INTO v_slot FROM unnest(v_slots) s WHERE s.component = 'header';
    IF v_slot.component IS NULL THEN
        IF p_spec ? 'header' THEN
            RAISE EXCEPTION '%: the header takes no parameter, but one is mapped', v_t USING ERRCODE = 'PW102',
                HINT = 'Remove "header" from the mapping (the template''s header, if any, is fixed text).';
        END IF;
    ELSE
        v_where := format('%s: header %s%s', v_t, upper(v_slot.kind),
                          CASE WHEN v_slot.parameter_name IS NOT NULL THEN format(' {{%s}}', v_slot.parameter_name)
                               WHEN v_slot.kind = 'text' THEN ' {{1}}' ELSE '' END);
        v_src := p_spec->'header';
        CASE v_slot.kind
        WHEN 'text' THEN
            v_hint := 'Map the header text: "header": {"column": "csv column"} or {"value": "text"}.';
            PERFORM core.check_source(v_where, v_src, '{column,value}', v_hint);
            v_param := core.slot_param(jsonb_build_object('type', 'text', 'text', '')
                                       || CASE WHEN v_named THEN jsonb_build_object('parameter_name', v_slot.parameter_name) ELSE '{}' END,
                                       '{text}', v_src, columns);
        WHEN 'image', 'video', 'document' THEN
            v_hint := format('Map the %s: "header": {"column": "csv column of links"}, {"value": "https://..."} or {"media_id": "uploaded media id"}%s.',
                             v_slot.kind, CASE WHEN v_slot.kind = 'document' THEN ', optionally with "filename"' ELSE '' END);
            PERFORM core.check_source(v_where, v_src,
                                      CASE WHEN v_slot.kind = 'document' THEN '{column,value,media_id,filename}'
                                           ELSE '{column,value,media_id}' END::text[], v_hint);
            v_param := jsonb_build_object('type', v_slot.kind, v_slot.kind,
                           CASE WHEN v_src ? 'media_id' THEN jsonb_build_object('id', v_src->'media_id') ELSE '{}' END
                           || CASE WHEN v_src ? 'filename' THEN jsonb_build_object('filename', v_src->'filename') ELSE '{}' END);
            IF NOT v_src ? 'media_id' THEN
                v_param := core.slot_param(v_param, ARRAY[v_slot.kind, 'link'], v_src, columns);
            END IF;
        WHEN 'location' THEN
            v_hint := 'Map the location: "header": {"location": {"latitude": 37.48, "longitude": -122.15, "name": "...", "address": "..."}}.';
            PERFORM core.check_source(v_where, v_src, '{location}', v_hint);
            v_param := jsonb_build_object('type', 'location', 'location', v_src->'location');
        ELSE
            RAISE EXCEPTION '%: pgwa cannot send a % header', v_t, upper(v_slot.kind) USING ERRCODE = 'PW102',
                HINT = 'Use a template with a TEXT, IMAGE, VIDEO, DOCUMENT or LOCATION header.';
        END CASE;
        render := render || jsonb_build_array(jsonb_build_object('type', 'header', 'parameters', jsonb_build_array(v_param)));
    END IF;

    -- Body: positional (an array, {{1}} first) or named (an object keyed by name).
    v_body := coalesce(p_spec->'body', p_spec->'params');
    v_n := (SELECT count(*) FROM unnest(v_slots) s WHERE s.component = 'body');
    IF v_named AND v_n > 0 THEN
        v_hint := format('Map each named parameter: "body": {%s}.',
                         (SELECT string_agg(format('"%s": {"column": "..."} or {"value": "..."}', s.parameter_name), ', ' ORDER BY s.index)
                          FROM unnest(v_slots) s WHERE s.component = 'body'));
        IF jsonb_typeof(v_body) IS DISTINCT FROM 'object' THEN
            RAISE EXCEPTION '%: the template has NAMED parameters, so body must be an object keyed by parameter name', v_t
                USING ERRCODE = 'PW102', HINT = v_hint;
        END IF;
        SELECT string_agg(format('{{%s}}', k), ', ') INTO v_key FROM jsonb_object_keys(v_body) k
        WHERE NOT EXISTS (SELECT 1 FROM unnest(v_slots) s WHERE s.component = 'body' AND s.parameter_name = k);
        IF v_key IS NOT NULL THEN
            RAISE EXCEPTION '%: body has no parameter %', v_t, v_key USING ERRCODE = 'PW102', HINT = v_hint;
        END IF;
    ELSIF v_n > 0 THEN
        v_hint := format('Map each of {{1}}..{{%s}} in order: "body": [{"column": "csv column"} or {"value": "constant"}, ...].', v_n);
        IF jsonb_typeof(v_body) IS DISTINCT FROM 'array' THEN
            RAISE EXCEPTION '%: body has % positional parameters, so body must be an array of % sources', v_t, v_n, v_n
                USING ERRCODE = 'PW102', HINT = v_hint;
        ELSIF jsonb_array_length(v_body) <> v_n THEN
            RAISE EXCEPTION '%: has % body parameters but % were mapped: {{%}} %', v_t, v_n, jsonb_array_length(v_body),
                least(v_n, jsonb_array_length(v_body)) + 1,
                CASE WHEN jsonb_array_length(v_body) > v_n THEN 'does not exist' ELSE 'is not mapped' END
                USING ERRCODE = 'PW102', HINT = v_hint;
        END IF;
    ELSIF v_body IS NOT NULL AND jsonb_typeof(v_body) <> 'null' AND v_body NOT IN ('[]'::jsonb, '{}'::jsonb) THEN
        RAISE EXCEPTION '%: the body takes no parameter, but % are mapped', v_t,
            CASE WHEN jsonb_typeof(v_body) IN ('array', 'object') THEN (SELECT count(*) FROM jsonb_each(
                 CASE WHEN jsonb_typeof(v_body) = 'object' THEN v_body ELSE '{}' END)) + CASE WHEN jsonb_typeof(v_body) = 'array' THEN jsonb_array_length(v_body) ELSE 0 END END
            USING ERRCODE = 'PW102', HINT = 'Remove "body" from the mapping.';
    END IF;
    FOR v_slot IN SELECT * FROM unnest(v_slots) s WHERE s.component = 'body' ORDER BY s.index LOOP
        v_where := format('%s: body parameter {{%s}}', v_t, coalesce(v_slot.parameter_name, v_slot.index::text));
        v_src := CASE WHEN v_named THEN v_body->v_slot.parameter_name ELSE v_body->(v_slot.index - 1) END;
        PERFORM core.check_source(v_where, v_src, '{column,value}', v_hint);
        v_code := coalesce(v_code, v_src);
        v_body_params := v_body_params || core.slot_param(jsonb_build_object('type', 'text', 'text', '')
                             || CASE WHEN v_named THEN jsonb_build_object('parameter_name', v_slot.parameter_name) ELSE '{}' END,
                             '{text}', v_src, columns);
    END LOOP;
    IF jsonb_array_length(v_body_params) > 0 THEN
        render := render || jsonb_build_array(jsonb_build_object('type', 'body', 'parameters', v_body_params));
    END IF;

    -- Buttons: {"<index>": source}, for URL suffixes, copy codes, quick-reply payloads
    -- and OTP codes (by default the body's {{1}}, the code).
    v_buttons := p_spec->'buttons';
    IF v_buttons IS NOT NULL AND jsonb_typeof(v_buttons) <> 'object' THEN
        RAISE EXCEPTION '%: buttons must be an object keyed by button index', v_t USING ERRCODE = 'PW102',
            HINT = '"buttons": {"0": {"column": "csv column"}, "1": {"value": "constant"}}';
    END IF;
    SELECT string_agg(format('%s', k), ', ') INTO v_key FROM jsonb_object_keys(coalesce(v_buttons, '{}')) k
    WHERE NOT EXISTS (SELECT 1 FROM unnest(v_slots) s WHERE s.component = 'button' AND s.index::text = k);
    IF v_key IS NOT NULL THEN
        RAISE EXCEPTION '%: button % takes no parameter%', v_t, v_key,
            coalesce(' (buttons that do: ' || (SELECT string_agg(format('%s %s', s.index, s.kind), ', ' ORDER BY s.index)
                                               FROM unnest(v_slots) s WHERE s.component = 'button') || ')', '')
            USING ERRCODE = 'PW102', HINT = 'Map only URL buttons with a {{1}} suffix, copy-code, quick-reply and OTP buttons, by their 0-based index.';
    END IF;
    FOR v_slot IN SELECT * FROM unnest(v_slots) s WHERE s.component = 'button' ORDER BY s.index LOOP
        v_src := v_buttons->(v_slot.index::text);
        IF v_src IS NULL AND v_slot.kind = 'otp' THEN
            v_src := v_code;
        END IF;
        CONTINUE WHEN v_src IS NULL AND NOT v_slot.required;
        v_where := format('%s: button %s (%s)', v_t, v_slot.index,
                          CASE v_slot.kind WHEN 'url_suffix' THEN 'URL suffix {{1}}' WHEN 'coupon_code' THEN 'copy code'
                                           WHEN 'payload' THEN 'quick-reply payload' ELSE 'OTP code' END);
        v_hint := format('Map it: "buttons": {"%s": {"column": "csv column"} or {"value": "constant"}}.', v_slot.index);
        PERFORM core.check_source(v_where, v_src, '{column,value}', v_hint);
        IF v_slot.kind = 'coupon_code' AND length(v_src->>'value') > 15 THEN
            RAISE EXCEPTION '%: "%" is longer than Meta''s 15 characters for a coupon code', v_where, v_src->>'value'
                USING ERRCODE = 'PW102', HINT = 'Shorten the code.';
        END IF;
        render := render || jsonb_build_array(jsonb_build_object(
            'type', 'button', 'index', v_slot.index::text,
            'sub_type', CASE v_slot.kind WHEN 'coupon_code' THEN 'copy_code' WHEN 'payload' THEN 'quick_reply' ELSE 'url' END,
            'parameters', jsonb_build_array(CASE v_slot.kind
                WHEN 'coupon_code' THEN core.slot_param('{"type": "coupon_code", "coupon_code": ""}', '{coupon_code}', v_src, columns)
                WHEN 'payload' THEN core.slot_param('{"type": "payload", "payload": ""}', '{payload}', v_src, columns)
                ELSE core.slot_param('{"type": "text", "text": ""}', '{text}', v_src, columns) END)));
    END LOOP;
END
$_$;

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
    WITH m AS MATERIALIZED (
        SELECT u.number_id, u.norm, u.welcome, u.ord
        FROM unnest(p_number_ids, v_texts, p_welcome) WITH ORDINALITY AS u(number_id, norm, welcome, ord)
    ), grams AS MATERIALIZED (
        SELECT m.ord, m.number_id, substr(m.norm, s.i, 4) AS gram
        FROM m, generate_series(1, length(m.norm) - 3) AS s(i)
    ), keyed AS MATERIALIZED (
        -- starts_with and contains rules with a key (0115_inbound_speed.sql): a rule can
        -- only match a text that holds its key, so the texts' four-character substrings
        -- find the candidates for the whole batch in one join, and only those run LIKE.
        SELECT DISTINCT ON (g.ord) g.ord, r.priority, r.rule_id
        FROM grams g
        JOIN m ON m.ord = g.ord
        JOIN core.bot_rules r ON r.number_id = g.number_id AND r.match_key = g.gram
                             AND r.enabled AND r.kind IN ('starts_with', 'contains') AND r.match_key IS NOT NULL
        WHERE m.norm LIKE r.like_pattern
        ORDER BY g.ord, r.priority, r.rule_id
    )
    SELECT m.ord, coalesce(x.rule_id, k.rule_id), d.rule_id
    FROM m
    LEFT JOIN keyed kw ON kw.ord = m.ord
    -- The best keyword or welcome rule: each branch stops at its first hit.
    LEFT JOIN LATERAL (
        SELECT b.priority, b.rule_id FROM (
            (SELECT r.priority, r.rule_id FROM core.bot_rules r
             WHERE r.number_id = m.number_id AND r.enabled AND r.kind = 'exact' AND r.match_text = m.norm
             ORDER BY r.priority, r.rule_id LIMIT 1)
            UNION ALL
            SELECT kw.priority, kw.rule_id WHERE kw.rule_id IS NOT NULL
            UNION ALL
            (SELECT r.priority, r.rule_id FROM core.bot_rules r
             WHERE r.number_id = m.number_id AND r.enabled AND r.kind IN ('starts_with', 'contains')
               AND r.match_key IS NULL AND m.norm LIKE r.like_pattern
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

CREATE FUNCTION core.match_late_capped() RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
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

CREATE FUNCTION core.media_expiry_margin() RETURNS interval
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT interval '1 day'
$$;

CREATE FUNCTION core.media_for_send(p_tenant_id bigint, p_media_id bigint, p_number_id bigint, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_media core.media;
BEGIN
    SELECT * INTO v_media FROM core.media m
    WHERE m.media_id = p_media_id AND m.tenant_id = p_tenant_id AND m.direction = 'out';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'media % not found', p_media_id
            USING ERRCODE = 'PW245', HINT = 'Upload the file (POST /v1/media) and use the media_id it returns.';
    ELSIF v_media.number_id <> p_number_id THEN
        RAISE EXCEPTION 'media % was uploaded for number %, not %', p_media_id, v_media.number_id, p_number_id
            USING ERRCODE = 'PW245', HINT = 'Upload the file for the number that sends it.';
    ELSIF v_media.expires_at <= coalesce(p_now, now()) + core.media_expiry_margin() THEN
        RAISE EXCEPTION 'media % expire% at %', p_media_id,
            CASE WHEN v_media.expires_at <= coalesce(p_now, now()) THEN 'd' ELSE 's' END, v_media.expires_at
            USING ERRCODE = 'PW345', HINT = 'Meta keeps an upload 30 days: upload the file again (the same bytes get a new id).';
    END IF;
    RETURN jsonb_build_object('id', v_media.meta_media_id);
END
$$;

CREATE FUNCTION core.media_mime(p_mime text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT nullif(lower(btrim(split_part(p_mime, ';', 1))), '')
$$;

CREATE TABLE core.media (
    media_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    number_id bigint NOT NULL,
    direction text NOT NULL,
    message_id bigint,
    meta_media_id text NOT NULL,
    media_type text NOT NULL,
    mime_type text,
    size_bytes bigint,
    sha256 text,
    filename text,
    caption text,
    state text NOT NULL,
    storage_key text,
    attempts integer DEFAULT 0 NOT NULL,
    next_attempt_at timestamp with time zone,
    last_error text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    stored_at timestamp with time zone,
    CONSTRAINT media_direction_valid CHECK ((direction = ANY (ARRAY['in'::text, 'out'::text]))),
    CONSTRAINT media_inbound_has_message CHECK (((direction = 'out'::text) OR (message_id IS NOT NULL))),
    CONSTRAINT media_media_type_valid CHECK ((media_type = ANY (ARRAY['image'::text, 'audio'::text, 'video'::text, 'document'::text, 'sticker'::text]))),
    CONSTRAINT media_out_uploaded CHECK (((direction = 'out'::text) = (state = 'uploaded'::text))),
    CONSTRAINT media_state_valid CHECK ((state = ANY (ARRAY['uploaded'::text, 'pending'::text, 'stored'::text, 'failed'::text])))
);

COMMENT ON TABLE core.media IS 'Media files: uploaded to Meta by a tenant (direction out, reusable until expires_at) or sent in by contacts (direction in, downloaded by the worker into the media store).';

CREATE FUNCTION core.media_row(p_media core.media, p_reused boolean DEFAULT false) RETURNS api.media_file
    LANGUAGE sql IMMUTABLE
    SET search_path TO ''
    AS $$
    SELECT ROW(p_media.media_id, p_media.number_id, p_media.direction, p_media.media_type, p_media.mime_type,
               p_media.size_bytes, p_media.sha256, p_media.filename, p_media.caption, p_media.state,
               p_media.meta_media_id, p_media.message_id, p_media.attempts, p_media.last_error,
               p_media.created_at, p_media.expires_at, p_media.stored_at, p_reused)::api.media_file
$$;

CREATE FUNCTION core.message_media(p_message_id bigint, p_number_id bigint, p_direction text, p_type text, p_payload jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_media core.media;
    v_object jsonb := p_payload->p_type;
BEGIN
    -- PL/pgSQL: its lookups keep their plans across the rows of a page.
    IF p_type IS NULL OR p_type NOT IN ('image', 'audio', 'video', 'document', 'sticker') THEN
        RETURN NULL;
    END IF;
    IF p_direction = 'in' THEN
        SELECT * INTO v_media FROM core.media m WHERE m.message_id = p_message_id;
    ELSIF v_object->>'id' IS NOT NULL THEN
        SELECT * INTO v_media FROM core.media m
        WHERE m.number_id = p_number_id AND m.meta_media_id = v_object->>'id'
        ORDER BY m.media_id DESC LIMIT 1;
    END IF;
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'type', p_type,
        'caption', v_object->>'caption',
        'filename', coalesce(v_media.filename, v_object->>'filename'),
        'link', v_object->>'link',
        'media_id', v_media.media_id,
        'mime_type', coalesce(v_media.mime_type, core.media_mime(v_object->>'mime_type')),
        'size_bytes', v_media.size_bytes,
        'state', v_media.state,
        'error', v_media.last_error,
        'content_url', CASE WHEN v_media.storage_key IS NOT NULL THEN format('/v1/media/%s/content', v_media.media_id) END));
END
$$;

CREATE FUNCTION core.message_sent(p_outbound_id bigint, p_replayed boolean) RETURNS api.message_sent
    LANGUAGE sql STABLE
    SET search_path TO ''
    AS $$
    SELECT ROW(o.outbound_id, o.number_id, o.contact_id, coalesce(c.wa_id, c.user_id), o.state, p_replayed,
               core.window_closes_at(v.last_inbound_at), o.queued_at)::api.message_sent
    FROM core.outbound_messages o
    JOIN core.contacts c ON c.contact_id = o.contact_id
    LEFT JOIN core.conversations v ON v.number_id = o.number_id AND v.contact_id = o.contact_id
    WHERE o.outbound_id = p_outbound_id
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
    advice text,
    CONSTRAINT meta_error_codes_backoff_s_given CHECK (((backoff = ANY (ARRAY['retry'::text, 'throttle'::text])) OR (backoff_s IS NOT NULL))),
    CONSTRAINT meta_error_codes_backoff_s_positive CHECK ((backoff_s > 0)),
    CONSTRAINT meta_error_codes_backoff_valid CHECK ((backoff = ANY (ARRAY['retry'::text, 'throttle'::text, 'number_hold'::text, 'waba_hold'::text, 'app_hold'::text, 'recipient'::text, 'next_day'::text]))),
    CONSTRAINT meta_error_codes_category_valid CHECK ((category = ANY (ARRAY['rate_limit'::text, 'auth'::text, 'template'::text, 'payment'::text, 'recipient'::text, 'policy'::text, 'transient'::text, 'request'::text, 'unknown'::text])))
);

COMMENT ON TABLE core.meta_error_codes IS 'Meta Cloud API error codes: category, retry, alert, pause and backoff policy (what a retryable error waits for); code -1 is the default for unknown codes.';

COMMENT ON COLUMN core.meta_error_codes.advice IS 'What the error means for a campaign and what to do about it, shown beside the failures of a campaign in the dashboard; NULL: the category''s advice (api.campaign_failures).';

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

CREATE FUNCTION core.new_campaign(p_tenant_id bigint, p_number_id bigint, p_name text, p_templates jsonb, p_on_invalid text, p_scheduled_at timestamp with time zone, p_start boolean, p_default_country_code text, p_segment core.compiled_segment) RETURNS api.campaign_created
    LANGUAGE plpgsql
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
    v_map record;
    v_new integer;
    v_inserted integer;
    v_problem text;
    v_contact_seq regclass := pg_get_serial_sequence('core.contacts', 'contact_id')::regclass;
    v_outbound_seq regclass := pg_get_serial_sequence('core.outbound_messages', 'outbound_id')::regclass;
    v_found boolean;
    v_rest text := '';   -- the tail of the statements that read campaign_sends
    v_distinct integer;
    v_changed boolean;
    v_probe boolean;
    v_queue_table text;
    v_queue_indexes text[];
    v_drops text[];
    v_i integer;
BEGIN
    IF coalesce(btrim(p_name), '') = '' THEN
        RAISE EXCEPTION 'campaign name is empty' USING ERRCODE = 'PW100', HINT = 'Name the campaign.';
    END IF;
    v_number := core.number_for(p_tenant_id, p_number_id);
    IF p_segment IS NULL THEN
        PERFORM core.staged_count();
    END IF;
    IF jsonb_typeof(p_templates) IS DISTINCT FROM 'array' OR jsonb_array_length(p_templates) NOT BETWEEN 1 AND 10 THEN
        RAISE EXCEPTION 'templates must be a JSON array of 1 to 10 templates' USING ERRCODE = 'PW102',
            HINT = '[{"name": "...", "language": "en_US", "header": {...}, "body": [{"column": "..."}, {"value": "..."}], "buttons": {"0": {...}}}]';
    END IF;
    v_k := jsonb_array_length(p_templates);

    -- Templates: each must exist for the number's WABA, be approved, and have a source
    -- for every parameter of every component (core.map_template).
    DROP TABLE IF EXISTS pg_temp.campaign_variants;
    CREATE TEMP TABLE campaign_variants ON COMMIT DROP AS
    SELECT (e.ord - 1)::smallint AS variant, e.spec, t.template_id, t.name, t.language, t.status,
           NULL::jsonb AS render, NULL::text[] AS columns
    FROM jsonb_array_elements(p_templates) WITH ORDINALITY e(spec, ord)
    LEFT JOIN core.templates t
      ON t.waba_id = v_number.waba_id AND t.tenant_id = p_tenant_id
     AND t.name = e.spec->>'name' AND t.language = e.spec->>'language';
    FOR v_bad IN SELECT * FROM pg_temp.campaign_variants ORDER BY variant LOOP
        IF v_bad.template_id IS NULL THEN
            RAISE EXCEPTION 'template % ("%" %) does not exist for WABA %', v_bad.variant + 1,
                v_bad.spec->>'name', coalesce(v_bad.spec->>'language', 'with no language'), v_number.waba_id
                USING ERRCODE = 'PW102', HINT = 'Sync templates from Meta or check the name and language.';
        ELSIF v_bad.status <> 'APPROVED' THEN
            RAISE EXCEPTION 'template "%" (%) is %, not APPROVED', v_bad.name, v_bad.language, v_bad.status
                USING ERRCODE = 'PW102', HINT = 'Only approved templates can be sent.';
        END IF;
        SELECT m.render, m.columns INTO v_map
        FROM core.templates t, core.map_template(t, v_bad.spec) m WHERE t.template_id = v_bad.template_id;
        UPDATE pg_temp.campaign_variants SET render = v_map.render, columns = v_map.columns WHERE variant = v_bad.variant;
    END LOOP;
    SELECT coalesce(array_agg(DISTINCT c), '{}') INTO v_columns
    FROM pg_temp.campaign_variants v, unnest(v.columns) c;
    FOR v_bad IN SELECT c FROM unnest(v_columns) c WHERE c NOT IN ('phone', 'name') LOOP
        IF p_segment IS NULL THEN
            CONTINUE WHEN EXISTS (SELECT 1 FROM pg_temp.staged_contacts s WHERE s.attributes ? v_bad.c);
        ELSE
            EXECUTE 'SELECT EXISTS (SELECT 1 FROM core.contacts c WHERE c.tenant_id = $5 AND c.wa_id IS NOT NULL AND c.attributes ? $6 AND '
                    || p_segment.sql || ')' INTO v_found
                USING p_segment.texts, p_segment.numbers, p_segment.times, p_segment.ids, p_tenant_id, v_bad.c;
            CONTINUE WHEN v_found;
        END IF;
        RAISE EXCEPTION 'column "%" is mapped to a template parameter but is not in the contact list', v_bad.c
            USING ERRCODE = 'PW102', HINT = 'Check the CSV header.';
    END LOOP;

    IF p_segment IS NULL THEN
        -- Rows: normalise, find the invalid ones, dedupe (the first row of a phone wins),
        -- skip opted-out contacts, and see which known contacts the list changes.
        SELECT c.invalid, c.invalid_rows, c.duplicates, c.staged
        INTO v_invalid, v_result.invalid_rows, v_result.duplicates_removed, v_staged
        FROM core.check_staged_contacts(p_default_country_code, p_on_invalid, v_columns, false) c;
        -- Known contacts: a list much smaller than the tenant's contacts probes the
        -- (tenant_id, wa_id) index once a phone, in phone order (the LATERAL ... LIMIT 1
        -- keeps the planner from turning it into a join); a larger one hashes the list and
        -- reads the tenant's contacts once (a probe costs about four rows of that read).
        -- Both give the same rows; the setting pgwa.campaign_probe (on, off) forces one,
        -- for the test that compares them.
        v_probe := coalesce(current_setting('pgwa.campaign_probe', true), '') = 'on'
                   OR (coalesce(current_setting('pgwa.campaign_probe', true), '') <> 'off'
                       AND 4 * (v_staged - v_invalid) < core.tenant_contacts_estimate(p_tenant_id));
        DROP TABLE IF EXISTS pg_temp.campaign_sends;
        EXECUTE format($q$
            CREATE TEMP TABLE campaign_sends ON COMMIT DROP AS
            SELECT r.row_no, r.wa_id, r.name, r.attributes,
                   CASE WHEN NOT r.opted_out THEN %s END AS variant,
                   coalesce(r.contact_id, nextval($3)) AS contact_id,
                   r.contact_id IS NULL AS is_new, r.changed AND NOT r.opted_out AS changed,
                   CASE WHEN NOT r.opted_out THEN nextval($4) END AS outbound_id
            FROM (SELECT u.row_no, u.wa_id, u.name, u.attributes, c.contact_id, coalesce(c.opted_out, false) AS opted_out,
                         c.contact_id IS NOT NULL AND (c.name IS DISTINCT FROM coalesce(u.name, c.name)
                                                      OR NOT c.attributes @> u.attributes) AS changed
                  FROM (SELECT DISTINCT ON (wa_id) row_no, wa_id, name, attributes FROM pg_temp.contact_rows
                        WHERE problem IS NULL ORDER BY wa_id, row_no) u
                  %s) r
            WINDOW w AS (ORDER BY r.row_no ROWS UNBOUNDED PRECEDING)
            ORDER BY r.row_no
        $q$, CASE WHEN v_k = 1 THEN '0::smallint'
                  ELSE '((count(*) FILTER (WHERE NOT r.opted_out) OVER w - 1) % $2)::smallint' END,
             CASE WHEN v_probe
                  THEN 'LEFT JOIN LATERAL (SELECT k.contact_id, k.opted_out, k.name, k.attributes FROM core.contacts k
                                           WHERE k.tenant_id = $1 AND k.wa_id = u.wa_id LIMIT 1) c ON true'
                  ELSE 'LEFT JOIN core.contacts c ON c.tenant_id = $1 AND c.wa_id = u.wa_id' END)
        USING p_tenant_id, v_k, v_contact_seq, v_outbound_seq;
        -- One row per phone: the duplicates are the valid rows not here; opted-out
        -- contacts stay without an outbound id, which the writes below skip.
        SELECT count(*), count(outbound_id), count(*) FILTER (WHERE is_new), coalesce(bool_or(changed), false)
        INTO v_distinct, v_result.total, v_new, v_changed FROM pg_temp.campaign_sends;
        v_result.duplicates_removed := v_staged - v_invalid - v_distinct;
    ELSE
        -- Rows: the segment's contacts in contact_id order (row numbers as if staged),
        -- their phones already E.164; invalid only for an empty mapped column. The
        -- contacts are the list: nothing to insert or merge.
        IF p_on_invalid IS NULL OR p_on_invalid NOT IN ('reject', 'skip') THEN
            RAISE EXCEPTION 'on_invalid must be reject or skip, not "%"', p_on_invalid USING ERRCODE = 'PW100',
                HINT = 'reject refuses the list when any row is invalid; skip goes on with the valid rows.';
        END IF;
        v_problem := coalesce((SELECT 'CASE ' || string_agg(format('WHEN coalesce(btrim(%s), %L) = %L THEN %L',
                                   CASE c WHEN 'phone' THEN 'c.wa_id' WHEN 'name' THEN 'c.name'
                                          ELSE format('c.attributes->>%L', c) END,
                                   '', '', format('column "%s" is empty', c)), ' ' ORDER BY i) || ' END'
                               FROM unnest(v_columns) WITH ORDINALITY u(c, i)), 'NULL::text');
        DROP TABLE IF EXISTS pg_temp.campaign_sends;
        EXECUTE format($q$
            CREATE TEMP TABLE campaign_sends ON COMMIT DROP AS
            SELECT row_number() OVER w AS row_no, r.wa_id, r.name, r.attributes, r.problem, r.opted_out,
                   CASE WHEN r.problem IS NULL AND NOT r.opted_out THEN %s END AS variant,
                   r.contact_id, false AS is_new, false AS changed,
                   CASE WHEN r.problem IS NULL AND NOT r.opted_out THEN nextval($7) END AS outbound_id
            FROM (SELECT c.contact_id, c.wa_id, nullif(btrim(c.name), '') AS name, c.attributes, c.opted_out,
                         %s AS problem
                  FROM core.contacts c
                  WHERE c.tenant_id = $5 AND c.wa_id IS NOT NULL AND %s) r
            WINDOW w AS (ORDER BY r.contact_id ROWS UNBOUNDED PRECEDING)
            ORDER BY r.contact_id
        $q$, CASE WHEN v_k = 1 THEN '0::smallint'
                  ELSE '((count(*) FILTER (WHERE r.problem IS NULL AND NOT r.opted_out) OVER w - 1) % $6)::smallint' END,
             v_problem, p_segment.sql)
        USING p_segment.texts, p_segment.numbers, p_segment.times, p_segment.ids, p_tenant_id, v_k, v_outbound_seq;
        SELECT count(*), count(*) FILTER (WHERE problem IS NOT NULL), count(outbound_id)
        INTO v_staged, v_invalid, v_result.total FROM pg_temp.campaign_sends;
        IF v_staged = 0 THEN
            RAISE EXCEPTION 'the segment matches no contact with a phone number' USING ERRCODE = 'PW101',
                HINT = 'Check the segment''s live count with api.segment_count().';
        END IF;
        IF v_invalid > 0 AND p_on_invalid = 'reject' THEN
            RAISE EXCEPTION '% of % contact rows are invalid; first: %', v_invalid, v_staged,
                (SELECT string_agg(format('row %s "%s": %s', row_no, wa_id, problem), '; ' ORDER BY row_no)
                 FROM (SELECT * FROM pg_temp.campaign_sends WHERE problem IS NOT NULL ORDER BY row_no LIMIT 5) f)
                USING ERRCODE = 'PW101',
                      DETAIL = (SELECT jsonb_agg(jsonb_build_object('row', row_no, 'value', wa_id, 'reason', problem) ORDER BY row_no)
                                FROM (SELECT * FROM pg_temp.campaign_sends WHERE problem IS NOT NULL ORDER BY row_no LIMIT 100) f)::text,
                      HINT = 'Fix the rows, or pass on_invalid => ''skip'' to go on with the valid ones.';
        END IF;
        v_result.invalid_rows := CASE WHEN v_invalid = 0 THEN '[]' ELSE coalesce((
            SELECT jsonb_agg(jsonb_build_object('row', row_no, 'value', wa_id, 'reason', problem) ORDER BY row_no)
            FROM (SELECT * FROM pg_temp.campaign_sends WHERE problem IS NOT NULL ORDER BY row_no LIMIT 1000) f), '[]') END;
        v_result.duplicates_removed := 0;
        -- The rows not sent stay in the table without an outbound id; the writes below skip them.
    END IF;

    v_result.skipped_invalid := v_invalid;
    v_result.skipped_opted_out := v_staged - v_invalid - v_result.duplicates_removed - v_result.total;
    IF v_result.total = 0 THEN
        RAISE EXCEPTION 'no contact is left to message (% invalid, % opted out, % duplicates)', v_invalid,
            v_result.skipped_opted_out, v_result.duplicates_removed
            USING ERRCODE = 'PW101', HINT = 'Check the contact list.';
    END IF;

    IF p_segment IS NULL THEN
        -- New contacts, with the ids drawn above. A phone another transaction added since
        -- is left to it, and its id looked up (then the list order is restored below).
        IF v_new > 0 THEN
            -- A plain INSERT first: ON CONFLICT probes the unique index once more per row
            -- before inserting it (a tenth of the statement), for a conflict that only a
            -- concurrent transaction can cause. When one did, the block's insert is undone
            -- and the rows go in again around the phones it added.
            BEGIN
                INSERT INTO core.contacts (contact_id, tenant_id, wa_id, name, attributes) OVERRIDING SYSTEM VALUE
                SELECT s.contact_id, p_tenant_id, s.wa_id, s.name, s.attributes FROM pg_temp.campaign_sends s WHERE s.is_new;
                v_inserted := v_new;
            EXCEPTION WHEN unique_violation THEN
                INSERT INTO core.contacts (contact_id, tenant_id, wa_id, name, attributes) OVERRIDING SYSTEM VALUE
                SELECT s.contact_id, p_tenant_id, s.wa_id, s.name, s.attributes FROM pg_temp.campaign_sends s WHERE s.is_new
                ON CONFLICT (tenant_id, wa_id) DO NOTHING;
                GET DIAGNOSTICS v_inserted = ROW_COUNT;
            END;
            IF v_inserted < v_new THEN
                UPDATE pg_temp.campaign_sends s SET contact_id = c.contact_id, is_new = false,
                    changed = c.name IS DISTINCT FROM coalesce(s.name, c.name) OR NOT c.attributes @> s.attributes
                FROM core.contacts c
                WHERE s.is_new AND c.tenant_id = p_tenant_id AND c.wa_id = s.wa_id AND c.contact_id <> s.contact_id;
                v_rest := ' ORDER BY s.outbound_id';   -- the update moved rows
            END IF;
        END IF;
        -- Known contacts are only rewritten when the list brings something new.
        IF v_changed OR v_rest <> '' THEN
            UPDATE core.contacts c SET
                name = coalesce(s.name, c.name),
                attributes = c.attributes || s.attributes,
                updated_at = now()
            FROM (SELECT * FROM pg_temp.campaign_sends WHERE changed) s
            WHERE c.contact_id = s.contact_id
              AND (c.name IS DISTINCT FROM coalesce(s.name, c.name) OR NOT c.attributes @> s.attributes);
        END IF;
    END IF;

    v_status := CASE WHEN p_scheduled_at IS NOT NULL AND p_scheduled_at > now() THEN 'scheduled'
                     WHEN p_start OR p_scheduled_at IS NOT NULL THEN 'running'
                     ELSE 'draft' END;
    INSERT INTO core.campaigns (tenant_id, number_id, name, status, scheduled_at, started_at, total,
                                skipped_opted_out, skipped_invalid, duplicates_removed)
    VALUES (p_tenant_id, p_number_id, btrim(p_name), v_status, p_scheduled_at,
            CASE WHEN v_status = 'running' THEN now() END, v_result.total,
            v_result.skipped_opted_out, v_result.skipped_invalid, v_result.duplicates_removed)
    RETURNING campaign_id INTO v_campaign_id;

    -- params: the per-row values' columns, in the order of the queue message's "p" (as
    -- core.defer_capped rebuilds it); render: the components with the constants in place.
    -- total: the variants take the rows in turn, so variant v has ceil((total - v) / k).
    INSERT INTO core.campaign_templates (campaign_id, variant, template_id, params, render, mapping, total)
    SELECT v_campaign_id, v.variant, v.template_id,
           (SELECT coalesce(jsonb_agg(jsonb_build_object('column', c) ORDER BY n), '[]')
            FROM unnest(v.columns) WITH ORDINALITY x(c, n)), v.render, v.spec - 'name' - 'language',
           greatest(v_result.total - v.variant + v_k - 1, 0) / v_k
    FROM pg_temp.campaign_variants v;

    PERFORM pgmq.create(core.campaign_queue(v_campaign_id));
    v_queue_table := pgmq.format_table_name(core.campaign_queue(v_campaign_id), 'q');
    -- The queue is new in this transaction: for a large list its indexes (whatever pgmq
    -- made) are dropped and built once after the load, a sorted build instead of an
    -- entry at a time.
    IF v_result.total >= 10000 THEN
        SELECT array_agg(CASE WHEN k.conname IS NULL THEN pg_get_indexdef(i.indexrelid)
                              ELSE format('ALTER TABLE pgmq.%I ADD CONSTRAINT %I %s', v_queue_table, k.conname,
                                          pg_get_constraintdef(k.oid)) END),
               array_agg(CASE WHEN k.conname IS NULL THEN format('DROP INDEX %s', i.indexrelid::regclass)
                              ELSE format('ALTER TABLE pgmq.%I DROP CONSTRAINT %I', v_queue_table, k.conname) END)
        INTO v_queue_indexes, v_drops
        FROM pg_index i LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid AND k.conrelid = i.indrelid
        WHERE i.indrelid = format('pgmq.%I', v_queue_table)::regclass;
        FOR v_i IN 1 .. coalesce(cardinality(v_drops), 0) LOOP
            EXECUTE v_drops[v_i];
        END LOOP;
    END IF;
    -- The per-row values of each row (its mapped columns) as one expression (a CASE over
    -- the variants), so queueing 100,000 messages is expression evaluation, not a
    -- subquery per row. Column names enter the SQL only through format's %L. The message
    -- is written as JSON text and parsed once: jsonb_build_object converts each argument
    -- through its type's output function and costs more per row. to_json escapes every
    -- string; a missing value is null, as jsonb_build_array makes it.
    SELECT 'CASE s.variant ' || string_agg(format('WHEN %s THEN %s', v.variant, coalesce(
               (SELECT '''['' || ' || string_agg(format('coalesce(to_json(%s)::text, ''null'')',
                    CASE WHEN c = 'phone' THEN 's.wa_id'
                         WHEN c = 'name' THEN 's.name'
                         ELSE format('s.attributes->>%L', c) END), ' || '','' || ' ORDER BY n) || ' || '']'''
                FROM unnest(v.columns) WITH ORDINALITY x(c, n)), '''[]''')), ' ')
           || ' END'
    INTO v_params_sql FROM pg_temp.campaign_variants v;
    -- campaign_sends is in list order, which is outbound id order (the ids were drawn as
    -- it was written), so both inserts read it straight through with no sort and the
    -- templates interleave in the queue.
    EXECUTE format($q$
        INSERT INTO core.outbound_messages (outbound_id, number_id, campaign_id, variant, contact_id, kind)
        OVERRIDING SYSTEM VALUE
        SELECT s.outbound_id, $1, $2, s.variant, s.contact_id, 'campaign'
        FROM pg_temp.campaign_sends s WHERE s.outbound_id IS NOT NULL %s
    $q$, v_rest) USING p_number_id, v_campaign_id;
    -- One queue message per contact: the outbound id, the recipient, the template variant
    -- and the body parameters. api.claim_sends renders the Graph API request from them.
    -- The queue's message ids are the rows' numbers (in list order, as the outbound ids),
    -- not a nextval each; its sequence then goes on after the last.
    EXECUTE format($q$
        INSERT INTO pgmq.%I (msg_id, vt, message) OVERRIDING SYSTEM VALUE
        SELECT s.row_no, now(), ('{"o":' || s.outbound_id || ',"t":' || to_json(s.wa_id)::text || ',"v":' || s.variant
                       || ',"p":' || %s || '}')::jsonb
        FROM pg_temp.campaign_sends s WHERE s.outbound_id IS NOT NULL %s
    $q$, v_queue_table, v_params_sql, v_rest);
    PERFORM setval(pg_get_serial_sequence(format('pgmq.%I', v_queue_table), 'msg_id'),
                   (SELECT max(s.row_no) FROM pg_temp.campaign_sends s));
    FOR v_i IN 1 .. coalesce(cardinality(v_queue_indexes), 0) LOOP
        EXECUTE v_queue_indexes[v_i];
    END LOOP;

    IF p_segment IS NULL THEN
        TRUNCATE pg_temp.staged_contacts;
    END IF;
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

CREATE FUNCTION core.normalize_phone(p_raw text, p_default_cc text DEFAULT NULL::text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $_$
    SELECT CASE WHEN p_raw OPERATOR(pg_catalog.~) '[^0-9+()./ \t-]' THEN NULL
        WHEN pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), '') OPERATOR(pg_catalog.~~) '00%' THEN
            CASE WHEN pg_catalog.substr(pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), ''), 3) OPERATOR(pg_catalog.~) '^[1-9][0-9]*$'
                      AND pg_catalog.length(pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), '')) OPERATOR(pg_catalog.<=) 17
                      AND pg_catalog.length(pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), '')) OPERATOR(pg_catalog.>=) 9
                 THEN pg_catalog.substr(pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), ''), 3) END
        WHEN pg_catalog.ltrim(p_raw) OPERATOR(pg_catalog.~~) '+%' OR p_default_cc IS NULL
             OR pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), '') OPERATOR(pg_catalog.!~~) '0%' THEN
            CASE WHEN pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), '') OPERATOR(pg_catalog.~) '^[1-9][0-9]*$'
                      AND pg_catalog.length(pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), '')) OPERATOR(pg_catalog.<=) 15
                      AND pg_catalog.length(pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), '')) OPERATOR(pg_catalog.>=) 7
                 THEN pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), '') END
        ELSE
            CASE WHEN (p_default_cc OPERATOR(pg_catalog.||) pg_catalog.ltrim(pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), ''), '0')) OPERATOR(pg_catalog.~) '^[1-9][0-9]*$'
                      AND pg_catalog.length(p_default_cc OPERATOR(pg_catalog.||) pg_catalog.ltrim(pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), ''), '0')) OPERATOR(pg_catalog.<=) 15
                      AND pg_catalog.length(p_default_cc OPERATOR(pg_catalog.||) pg_catalog.ltrim(pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), ''), '0')) OPERATOR(pg_catalog.>=) 7
                 THEN p_default_cc OPERATOR(pg_catalog.||) pg_catalog.ltrim(pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), ''), '0') END
    END
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

CREATE FUNCTION core.notify_dashboard_campaigns() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
BEGIN
    PERFORM pg_notify('pgwa_dashboard', 'campaign ' || left(string_agg(DISTINCT n.tenant_id || ':' || n.campaign_id, ','), 7000))
    FROM changed n
    HAVING count(*) > 0;
    RETURN NULL;
END
$$;

CREATE FUNCTION core.notify_dashboard_inbox() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
BEGIN
    PERFORM pg_notify('pgwa_dashboard', 'inbox ' || left(string_agg(DISTINCT w.tenant_id || ':' || i.number_id || '.' || i.contact_id, ','), 7000))
    FROM changed i JOIN core.wa_numbers w ON w.number_id = i.number_id
    -- A message sent through the send API is left out: a NOTIFY would serialise those
    -- transactions' commits (PostgreSQL's notify lock); an open page sees it on its next refresh.
    WHERE NOT (i.direction = 'out' AND i.outbound_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM core.outbound_messages o WHERE o.outbound_id = i.outbound_id AND o.kind = 'api'))
    HAVING count(*) > 0;
    RETURN NULL;
END
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
    -- Images, audio, video, documents and stickers wait for the media workers (media.sql).
    PERFORM core.queue_media_downloads(p_message_ids);

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
        SELECT m.number_id, m.contact_id, m.created_at, m.message_id,
               core.render_reply(core.resolve_reply_media(r.reply, m.tenant_id, m.number_id, false), core.contact_vars(c))
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
    AS $_$
    SELECT CASE WHEN p_opaque OPERATOR(pg_catalog.~) '^(c[0-9]{1,18}:)?[0-9]{1,18}$'
                THEN pg_catalog.split_part(p_opaque, ':', -1)::pg_catalog.int8 END
$_$;

CREATE FUNCTION core.parameter_format(p_components jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE
    SET search_path TO ''
    AS $_$
    SELECT CASE WHEN EXISTS (
        SELECT 1 FROM jsonb_array_elements(coalesce(p_components, '[]')) c,
                      regexp_matches(coalesce(c->>'text', ''), '\{\{\s*([A-Za-z0-9_]+)\s*\}\}', 'g') m
        WHERE upper(c->>'type') IN ('HEADER', 'BODY') AND m[1] !~ '^[0-9]+$') THEN 'NAMED' ELSE 'POSITIONAL' END
$_$;

CREATE FUNCTION core.pause_for_errors(p_outbound_ids bigint[], p_codes integer[], p_messages text[]) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
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

CREATE FUNCTION core.pause_for_failed(p_ids bigint[], p_states text[], p_codes integer[], p_details text[]) RETURNS integer
    LANGUAGE sql
    SET search_path TO ''
    AS $$
    SELECT coalesce((
        SELECT core.pause_for_errors(array_agg(f.id), array_agg(f.code), array_agg(f.detail))
        FROM unnest(p_ids, p_states, p_codes, p_details) f(id, state, code, detail)
        JOIN core.meta_error_codes e ON e.code = f.code AND e.pauses_campaign
                                    AND (e.category = 'template' OR e.code = 131053)
        WHERE f.state = 'failed'
        HAVING count(*) > 0), 0)
$$;

CREATE FUNCTION core.pause_template_campaigns(p_template_ids bigint[], p_events text[], p_reasons text[]) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_paused integer;
    v_tenants bigint[];
BEGIN
    WITH ev AS (
        SELECT DISTINCT ON (e.template_id) e.template_id, e.event, e.reason
        FROM unnest(p_template_ids, p_events, p_reasons) e(template_id, event, reason)
        ORDER BY e.template_id
    ), hit AS (
        SELECT DISTINCT ON (c.campaign_id) c.campaign_id, t.name, t.language, t.template_id, ev.event, ev.reason
        FROM ev
        JOIN core.templates t ON t.template_id = ev.template_id
        JOIN core.campaign_templates ct ON ct.template_id = t.template_id
        JOIN core.campaigns c ON c.campaign_id = ct.campaign_id AND c.tenant_id = t.tenant_id
        WHERE c.status IN ('scheduled', 'running')
        ORDER BY c.campaign_id, t.template_id
    ), paused AS (
        UPDATE core.campaigns c SET status = 'paused',
            pause_reason = format('template %s (%s) is %s: %s', h.name, h.language, h.event, h.reason)
        FROM hit h
        WHERE c.campaign_id = h.campaign_id AND c.status IN ('scheduled', 'running')
        RETURNING c.campaign_id, c.tenant_id, c.name AS campaign, h.template_id, h.name, h.language, h.event, h.reason
    ), noted AS (
        INSERT INTO core.notifications (tenant_id, kind, severity, message, details)
        SELECT p.tenant_id, 'campaign_paused', 'critical',
               format('Campaign "%s" paused: template %s (%s) is %s: %s. Its unsent messages stay queued; resume it once the template is APPROVED again (or cancel it).',
                      p.campaign, p.name, p.language, p.event, p.reason),
               jsonb_build_object('campaign_id', p.campaign_id, 'template_id', p.template_id, 'event', p.event,
                                  'reason', p.reason)
        FROM paused p
        RETURNING tenant_id
    )
    SELECT count(*), array_agg(DISTINCT tenant_id) INTO v_paused, v_tenants FROM noted;
    PERFORM pg_notify('pgwa_notification', t::text) FROM unnest(v_tenants) t;
    RETURN v_paused;
END
$$;

CREATE FUNCTION core.phone_digits(p_raw text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), '')
$$;

CREATE FUNCTION core.phone_from_digits(p_raw text, p_digits text, p_default_cc text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $_$
    SELECT CASE WHEN p_raw OPERATOR(pg_catalog.~) '[^0-9+()./ \t-]' THEN NULL
        WHEN p_digits OPERATOR(pg_catalog.~~) '00%' THEN
            CASE WHEN pg_catalog.substr(p_digits, 3) OPERATOR(pg_catalog.~) '^[1-9][0-9]*$'
                      AND pg_catalog.length(p_digits) OPERATOR(pg_catalog.<=) 17
                      AND pg_catalog.length(p_digits) OPERATOR(pg_catalog.>=) 9
                 THEN pg_catalog.substr(p_digits, 3) END
        WHEN pg_catalog.ltrim(p_raw) OPERATOR(pg_catalog.~~) '+%' OR p_default_cc IS NULL
             OR p_digits OPERATOR(pg_catalog.!~~) '0%' THEN
            CASE WHEN p_digits OPERATOR(pg_catalog.~) '^[1-9][0-9]*$'
                      AND pg_catalog.length(p_digits) OPERATOR(pg_catalog.<=) 15
                      AND pg_catalog.length(p_digits) OPERATOR(pg_catalog.>=) 7
                 THEN p_digits END
        ELSE
            CASE WHEN (p_default_cc OPERATOR(pg_catalog.||) pg_catalog.ltrim(p_digits, '0')) OPERATOR(pg_catalog.~) '^[1-9][0-9]*$'
                      AND pg_catalog.length(p_default_cc OPERATOR(pg_catalog.||) pg_catalog.ltrim(p_digits, '0')) OPERATOR(pg_catalog.<=) 15
                      AND pg_catalog.length(p_default_cc OPERATOR(pg_catalog.||) pg_catalog.ltrim(p_digits, '0')) OPERATOR(pg_catalog.>=) 7
                 THEN p_default_cc OPERATOR(pg_catalog.||) pg_catalog.ltrim(p_digits, '0') END
    END
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

CREATE FUNCTION core.phone_zone(p_wa_id text) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT z.time_zone FROM core.phone_zones z
    WHERE z.prefix = ANY (ARRAY(SELECT left(p_wa_id, n) FROM generate_series(1, least(length(p_wa_id), 10)) n))
    ORDER BY length(z.prefix) DESC
    LIMIT 1
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

CREATE FUNCTION core.prune_events(p_now timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_deleted integer;
BEGIN
    DELETE FROM core.events ev
    USING core.settings s
    WHERE ev.created_at < coalesce(p_now, now()) - make_interval(days => s.event_retention_days)
      AND NOT EXISTS (SELECT 1 FROM core.event_deliveries d WHERE d.event_id = ev.event_id AND d.status = 'pending');
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
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

CREATE FUNCTION core.quality_rank(p_score text) RETURNS integer
    LANGUAGE sql IMMUTABLE
    SET search_path TO ''
    AS $$
    SELECT CASE upper(p_score) WHEN 'GREEN' THEN 3 WHEN 'YELLOW' THEN 2 WHEN 'RED' THEN 1 END
$$;

CREATE FUNCTION core.queue_campaign_id(p_queue_name text) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $_$
    SELECT x.id FROM (SELECT substring(p_queue_name FROM '[0-9]{1,18}$')::bigint AS id) x
    WHERE core.campaign_queue(x.id) = p_queue_name
$_$;

CREATE FUNCTION core.queue_endpoint_id(p_queue_name text) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO ''
    AS $_$
    SELECT x.id FROM (SELECT substring(p_queue_name FROM '[0-9]{1,18}$')::bigint AS id) x
    WHERE core.event_queue(x.id) = p_queue_name
$_$;

CREATE FUNCTION core.queue_events(p_type text, p_tenant_ids bigint[], p_data jsonb[], p_endpoint_id bigint DEFAULT NULL::bigint) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_endpoints bigint[];
    v_tenants bigint[];
    v_lane record;
    v_queued integer := 0;
BEGIN
    SELECT array_agg(l.endpoint_id ORDER BY l.endpoint_id), array_agg(l.tenant_id ORDER BY l.endpoint_id)
    INTO v_endpoints, v_tenants
    FROM (SELECT e.endpoint_id, e.tenant_id FROM core.event_endpoints e
          WHERE CASE WHEN p_endpoint_id IS NOT NULL THEN e.endpoint_id = p_endpoint_id
                     ELSE e.endpoint_id IN (SELECT s.endpoint_id FROM core.event_subscriptions s
                                            WHERE s.event_type = p_type AND s.tenant_id = ANY (p_tenant_ids)) END
          ORDER BY e.endpoint_id
          FOR KEY SHARE OF e) l;
    IF v_endpoints IS NULL THEN
        RETURN 0;
    END IF;
    FOR v_lane IN
        WITH lanes AS (
            SELECT u.endpoint_id, u.tenant_id FROM unnest(v_endpoints, v_tenants) AS u(endpoint_id, tenant_id)
        ), ev AS (
            INSERT INTO core.events (tenant_id, event_type, data)
            SELECT u.tenant_id, p_type, u.data
            FROM unnest(p_tenant_ids, p_data) WITH ORDINALITY AS u(tenant_id, data, i)
            WHERE u.tenant_id IN (SELECT l.tenant_id FROM lanes l)
            ORDER BY u.i
            RETURNING event_id, tenant_id
        ), dl AS (
            INSERT INTO core.event_deliveries (endpoint_id, event_id)
            SELECT l.endpoint_id, ev.event_id FROM ev JOIN lanes l ON l.tenant_id = ev.tenant_id
            RETURNING endpoint_id, event_id
        )
        SELECT dl.endpoint_id, array_agg(jsonb_build_object('e', dl.event_id) ORDER BY dl.event_id) AS msgs
        FROM dl GROUP BY dl.endpoint_id ORDER BY dl.endpoint_id
    LOOP
        PERFORM pgmq.send_batch(core.event_queue(v_lane.endpoint_id), v_lane.msgs);
        v_queued := v_queued + cardinality(v_lane.msgs);
    END LOOP;
    IF v_queued > 0 THEN
        PERFORM pg_notify('pgwa_events', '');     -- at commit, once per transaction
    END IF;
    RETURN v_queued;
END
$$;

CREATE FUNCTION core.queue_media_downloads(p_message_ids bigint[]) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_queued integer;
BEGIN
    INSERT INTO core.media (tenant_id, number_id, direction, message_id, meta_media_id, media_type, mime_type,
                            sha256, filename, caption, state, next_attempt_at, created_at, expires_at)
    SELECT n.tenant_id, i.number_id, 'in', i.message_id, o->>'id', i.type, core.media_mime(o->>'mime_type'),
           o->>'sha256', left(o->>'filename', 240), left(o->>'caption', 1024), 'pending', now(), i.created_at,
           i.created_at + interval '7 days'
    FROM unnest(p_message_ids) AS id(message_id)
    JOIN core.inbox_messages i ON i.message_id = id.message_id AND i.direction = 'in'
    JOIN core.wa_numbers n ON n.number_id = i.number_id
    CROSS JOIN LATERAL (SELECT i.payload->i.type) x(o)
    WHERE i.type IN ('image', 'audio', 'video', 'document', 'sticker')
      AND jsonb_typeof(o) = 'object' AND coalesce(o->>'id', '') <> ''
    ORDER BY i.message_id
    ON CONFLICT (message_id) WHERE message_id IS NOT NULL DO NOTHING;
    GET DIAGNOSTICS v_queued = ROW_COUNT;
    IF v_queued > 0 THEN
        PERFORM pg_notify('pgwa_media', '');
    END IF;
    RETURN v_queued;
END
$$;

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

CREATE FUNCTION core.read_event_queue(p_queue text, p_max integer, p_vt interval, p_now timestamp with time zone) RETURNS TABLE(msg_id bigint, event_id bigint)
    LANGUAGE plpgsql ROWS 64
    SET search_path TO ''
    AS $_$
BEGIN
    RETURN QUERY EXECUTE format(
        'WITH cte AS (SELECT q.msg_id FROM pgmq.%1$I q WHERE q.vt <= $1 ORDER BY q.msg_id LIMIT $2 FOR UPDATE SKIP LOCKED)
         UPDATE pgmq.%1$I q SET last_read_at = $1, vt = $1 + $3, read_ct = q.read_ct + 1
         FROM cte WHERE q.msg_id = cte.msg_id
         RETURNING q.msg_id, (q.message->>''e'')::bigint', pgmq.format_table_name(p_queue, 'q'))
    USING p_now, p_max, p_vt;
END
$_$;

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

CREATE FUNCTION core.render_components(p_skeleton jsonb, p_values jsonb) RETURNS SETOF jsonb
    LANGUAGE sql IMMUTABLE ROWS 1 PARALLEL SAFE
    AS $_$
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
            || CASE WHEN jsonb_typeof(p_reply->'params') = 'object' THEN
                        -- A NAMED template's parameters (core.check_reply), matched by name.
                        CASE WHEN p_reply->'params' = '{}' THEN '{}'::jsonb
                             ELSE jsonb_build_object('components', jsonb_build_array(jsonb_build_object(
                                 'type', 'body', 'parameters', (
                                     SELECT jsonb_agg(jsonb_build_object('type', 'text', 'parameter_name', x.key, 'text',
                                                coalesce(nullif(core.render_vars(x.value, p_vars), ''), '-')) ORDER BY x.key)
                                     FROM jsonb_each_text(p_reply->'params') x)))) END
                    WHEN coalesce(jsonb_array_length(p_reply->'params'), 0) = 0 THEN '{}'::jsonb
                    ELSE jsonb_build_object('components', jsonb_build_array(jsonb_build_object(
                        'type', 'body', 'parameters', (
                            SELECT jsonb_agg(jsonb_build_object('type', 'text', 'text',
                                       coalesce(nullif(core.render_vars(p, p_vars), ''), '-')) ORDER BY i)
                            FROM jsonb_array_elements_text(p_reply->'params') WITH ORDINALITY x(p, i)))))
               END)
        -- Media (its pgwa id resolved by core.resolve_reply_media), list, cta_url: media.sql.
        ELSE core.render_rich_reply(p_reply, p_vars)
    END
$$;

CREATE FUNCTION core.render_rich_reply(p_reply jsonb, p_vars jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE
    SET search_path TO ''
    AS $$
    SELECT CASE
        WHEN p_reply->>'type' IN ('image', 'video', 'audio', 'document', 'sticker') THEN
            jsonb_build_object('type', p_reply->>'type', p_reply->>'type', jsonb_strip_nulls(jsonb_build_object(
                'id', CASE WHEN p_reply ? 'media' THEN coalesce(p_reply->>'meta_id', '') END,
                'link', p_reply->>'link',
                'caption', core.render_vars(p_reply->>'caption', p_vars),
                'filename', p_reply->>'filename')))
        WHEN p_reply->>'type' IN ('list', 'cta_url') THEN
            jsonb_build_object('type', 'interactive', 'interactive', jsonb_build_object(
                'type', p_reply->>'type',
                'body', jsonb_build_object('text', left(core.render_vars(p_reply->>'text', p_vars), 1024)),
                'action', CASE p_reply->>'type'
                    WHEN 'cta_url' THEN jsonb_build_object('name', 'cta_url', 'parameters', jsonb_build_object(
                        'display_text', p_reply->>'display_text', 'url', p_reply->>'url'))
                    ELSE jsonb_build_object('button', p_reply->>'button', 'sections', (
                        SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                                   'title', s->>'title',
                                   'rows', (SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                                                'id', r->>'id', 'title', core.render_vars(r->>'title', p_vars),
                                                'description', core.render_vars(r->>'description', p_vars))) ORDER BY ri)
                                            FROM jsonb_array_elements(s->'rows') WITH ORDINALITY y(r, ri))))
                               ORDER BY si)
                        FROM jsonb_array_elements(p_reply->'sections') WITH ORDINALITY x(s, si)))
                END)
                || CASE WHEN coalesce(p_reply->>'header', '') <> '' THEN jsonb_build_object('header',
                       jsonb_build_object('type', 'text', 'text', core.render_vars(p_reply->>'header', p_vars))) ELSE '{}' END
                || CASE WHEN coalesce(p_reply->>'footer', '') <> '' THEN jsonb_build_object('footer',
                       jsonb_build_object('text', core.render_vars(p_reply->>'footer', p_vars))) ELSE '{}' END)
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
               ELSE r.errors * 10 <= r.accepted AND r.accepted > 0 AND n.rate_mps < n.throughput_mps
                    AND p_now > coalesce(n.rate_changed_at, '-infinity') END;
END
$$;

CREATE FUNCTION core.report_paused(p_rows core.send_outcome[]) RETURNS void
    LANGUAGE sql
    SET search_path TO ''
    AS $$
    SELECT core.pause_for_errors(array_agg(x.outbound_id), array_agg(x.error_code), array_agg(x.error_message))
    FROM unnest(p_rows) x WHERE x.outcome = 'paused'
    HAVING count(*) > 0;
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

CREATE FUNCTION core.require_worker(p_worker text) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
BEGIN
    IF coalesce(btrim(p_worker), '') = '' THEN
        RAISE EXCEPTION 'worker must be named' USING ERRCODE = 'PW100',
            HINT = 'p_worker: a name unique to the worker process (PGWA_WORKER_NAME); one worker at a time sends a number''s messages.';
    END IF;
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

CREATE FUNCTION core.resolve_reply_media(p_reply jsonb, p_tenant_id bigint, p_number_id bigint, p_strict boolean DEFAULT true) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_meta text;
BEGIN
    IF p_reply->>'type' NOT IN ('image', 'video', 'audio', 'document', 'sticker') OR NOT p_reply ? 'media'
       OR jsonb_typeof(p_reply->'media') <> 'number' THEN
        RETURN p_reply;
    END IF;
    IF p_strict THEN
        v_meta := core.media_for_send(p_tenant_id, (p_reply->>'media')::bigint, p_number_id)->>'id';
    ELSE
        SELECT m.meta_media_id INTO v_meta FROM core.media m
        WHERE m.media_id = (p_reply->>'media')::bigint AND m.number_id = p_number_id AND m.direction = 'out';
    END IF;
    RETURN p_reply || jsonb_build_object('meta_id', v_meta);
END
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

CREATE FUNCTION core.retarget_condition(p_who text) RETURNS text
    LANGUAGE sql IMMUTABLE
    SET search_path TO ''
    AS $$
    SELECT '(o.state NOT IN (''queued'', ''in_flight'') AND ' || CASE p_who
        WHEN 'failed' THEN 'o.state = ''failed'''
        WHEN 'not_delivered' THEN 'NOT (o.state IN (''delivered'', ''read'') OR coalesce(o.delivered_at, o.read_at) IS NOT NULL)'
        WHEN 'not_read' THEN 'NOT (o.state = ''read'' OR o.read_at IS NOT NULL)'
        WHEN 'not_replied' THEN 'o.replied_at IS NULL' END || ')'
$$;

CREATE FUNCTION core.reusable_media(p_number_id bigint, p_sha256 text, p_now timestamp with time zone) RETURNS core.media
    LANGUAGE sql STABLE
    SET search_path TO ''
    AS $$
    SELECT m.* FROM core.media m
    WHERE m.number_id = p_number_id AND m.direction = 'out' AND m.sha256 = lower(p_sha256)
      AND m.expires_at > p_now + core.media_expiry_margin()
    ORDER BY m.expires_at DESC
    LIMIT 1
$$;

CREATE FUNCTION core.run_partition_maintenance() RETURNS void
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_table record;
    v_ahead boolean;
BEGIN
    FOR v_table IN SELECT c.parent_table, c.control FROM partman.part_config c ORDER BY 1 LOOP
        IF to_regclass(v_table.parent_table || '_default') IS NOT NULL THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE %I >= now())',
                           v_table.parent_table || '_default', v_table.control) INTO v_ahead;
            IF v_ahead THEN
                PERFORM partman.partition_data_time(v_table.parent_table, p_batch_count => 1000, p_analyze => false);
            END IF;
        END IF;
    END LOOP;
    PERFORM partman.run_maintenance(p_analyze => false, p_jobmon => false);
END
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
    v_deleted := v_deleted + core.drop_old_partitions('core.status_events', p_keep);
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

CREATE FUNCTION core.segment_filter(p_tenant_id bigint, p_segment_id bigint, p_filter jsonb, p_tags text[]) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_filter jsonb;
BEGIN
    IF (p_segment_id IS NOT NULL)::int + (p_filter IS NOT NULL)::int + (p_tags IS NOT NULL)::int <> 1 THEN
        RAISE EXCEPTION 'give exactly one of segment_id, filter and tags' USING ERRCODE = 'PW100',
            HINT = 'segment_id: a saved segment; filter: an inline one; tags: contacts with any of them.';
    END IF;
    IF p_segment_id IS NOT NULL THEN
        SELECT s.filter INTO v_filter FROM core.segments s WHERE s.segment_id = p_segment_id AND s.tenant_id = p_tenant_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'segment % not found', p_segment_id USING ERRCODE = 'PW232',
                HINT = 'List the tenant''s segments with api.segments().';
        END IF;
        RETURN v_filter;
    ELSIF p_tags IS NOT NULL THEN
        IF cardinality(p_tags) NOT BETWEEN 1 AND 100 THEN
            RAISE EXCEPTION 'tags must list 1 to 100 tags' USING ERRCODE = 'PW100', HINT = '["vip", "newsletter"]';
        END IF;
        RETURN jsonb_build_object('any', (SELECT jsonb_agg(jsonb_build_object('tag', t)) FROM unnest(p_tags) t));
    END IF;
    RETURN p_filter;
END
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

CREATE FUNCTION core.slot_param(p_base jsonb, p_path text[], p_src jsonb, p_columns text[]) RETURNS jsonb
    LANGUAGE sql IMMUTABLE
    SET search_path TO ''
    AS $_$
    SELECT CASE WHEN p_src ? 'column'
                THEN p_base || jsonb_build_object('$slot', array_position(p_columns, p_src->>'column') - 1,
                                                  '$path', p_path::text)
                ELSE jsonb_set(p_base, p_path, p_src->'value') END
$_$;

CREATE FUNCTION core.spend_budget(p_batch core.claimed[], p_portfolio_id bigint, p_now timestamp with time zone) RETURNS core.claimed[]
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $_$
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
$_$;

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

CREATE FUNCTION core.template_campaigns(p_template core.templates) RETURNS SETOF core.campaigns
    LANGUAGE sql STABLE
    SET search_path TO ''
    AS $$
    SELECT c.* FROM core.campaigns c
    WHERE c.tenant_id = p_template.tenant_id AND c.status IN ('scheduled', 'running', 'paused')
      AND EXISTS (SELECT 1 FROM core.campaign_templates ct
                  WHERE ct.campaign_id = c.campaign_id AND ct.template_id = p_template.template_id)
    ORDER BY c.campaign_id
$$;

CREATE FUNCTION core.template_for(p_tenant_id bigint, p_template_id bigint) RETURNS core.templates
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_template core.templates;
BEGIN
    SELECT * INTO v_template FROM core.templates WHERE template_id = p_template_id AND tenant_id = p_tenant_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'template % not found', p_template_id USING ERRCODE = 'PW203',
            HINT = 'List the tenant''s templates with api.templates() (GET /v1/templates).';
    END IF;
    RETURN v_template;
END
$$;

CREATE FUNCTION core.template_json(p_template core.templates) RETURNS jsonb
    LANGUAGE sql STABLE
    SET search_path TO ''
    AS $$
    SELECT to_jsonb(p_template) - 'tenant_id'
$$;

CREATE FUNCTION core.template_slots(p_components jsonb, p_parameter_format text) RETURNS SETOF api.template_parameter
    LANGUAGE sql IMMUTABLE
    SET search_path TO ''
    AS $_$
    SELECT h.* FROM (
        SELECT 'header'::text, 1,
               CASE WHEN p_parameter_format = 'NAMED' AND f.fmt = 'TEXT'
                    THEN substring(c->>'text' FROM '\{\{\s*([A-Za-z0-9_]+)\s*\}\}') END,
               CASE f.fmt WHEN 'TEXT' THEN 'text' ELSE lower(f.fmt) END, true,
               CASE f.fmt WHEN 'TEXT' THEN coalesce(c#>>'{example,header_text,0}', c#>>'{example,header_text_named_params,0,example}')
                          ELSE c#>>'{example,header_handle,0}' END,
               'header'::text
        FROM jsonb_array_elements(coalesce(p_components, '[]')) WITH ORDINALITY x(c, n)
        CROSS JOIN LATERAL (SELECT upper(coalesce(c->>'format', 'TEXT')) AS fmt) f
        WHERE upper(c->>'type') = 'HEADER' AND (f.fmt <> 'TEXT' OR c->>'text' ~ '\{\{\s*[A-Za-z0-9_]+\s*\}\}')
        ORDER BY n LIMIT 1) h
    UNION ALL
    SELECT 'body', b.pos::integer, CASE WHEN p_parameter_format = 'NAMED' THEN b.p END, 'text', true,
           CASE WHEN p_parameter_format = 'NAMED'
                THEN (SELECT e->>'example' FROM jsonb_array_elements(CASE WHEN jsonb_typeof(bc.c#>'{example,body_text_named_params}') = 'array'
                                                                          THEN bc.c#>'{example,body_text_named_params}' ELSE '[]' END) e
                      WHERE e->>'param_name' = b.p LIMIT 1)
                ELSE bc.c#>>ARRAY['example', 'body_text', '0', (b.pos - 1)::text] END,
           CASE WHEN p_parameter_format = 'NAMED' THEN 'body.' || b.p ELSE format('body[%s]', b.pos - 1) END
    FROM (SELECT c FROM jsonb_array_elements(coalesce(p_components, '[]')) c
          WHERE upper(c->>'type') = 'BODY' LIMIT 1) bc
    CROSS JOIN LATERAL (
        SELECT d.p, row_number() OVER (ORDER BY CASE WHEN p_parameter_format <> 'NAMED' AND d.p ~ '^[0-9]{1,9}$'
                                                     THEN d.p::integer END, d.first) AS pos
        FROM (SELECT r.m[1] AS p, min(r.k) AS first
              FROM regexp_matches(coalesce(bc.c->>'text', ''), '\{\{\s*([A-Za-z0-9_]+)\s*\}\}', 'g') WITH ORDINALITY r(m, k)
              GROUP BY r.m[1]) d) b
    UNION ALL
    SELECT 'button', (k.i - 1)::integer, NULL, k.kind, k.kind IN ('url_suffix', 'coupon_code'),
           CASE WHEN jsonb_typeof(k.btn->'example') = 'array' THEN k.btn#>>'{example,0}' ELSE k.btn->>'example' END,
           'buttons.' || (k.i - 1)
    FROM (SELECT btn, i, CASE upper(btn->>'type')
                             WHEN 'URL' THEN CASE WHEN btn->>'url' ~ '\{\{' THEN 'url_suffix' END
                             WHEN 'COPY_CODE' THEN 'coupon_code'
                             WHEN 'QUICK_REPLY' THEN 'payload'
                             WHEN 'OTP' THEN 'otp'
                         END AS kind
          FROM (SELECT c FROM jsonb_array_elements(coalesce(p_components, '[]')) c
                WHERE upper(c->>'type') = 'BUTTONS' LIMIT 1) bc,
               jsonb_array_elements(CASE WHEN jsonb_typeof(bc.c->'buttons') = 'array' THEN bc.c->'buttons' ELSE '[]' END)
                   WITH ORDINALITY bb(btn, i)) k
    WHERE k.kind IS NOT NULL
$_$;

CREATE FUNCTION core.template_submit_timeout() RETURNS interval
    LANGUAGE sql IMMUTABLE
    SET search_path TO ''
    AS $$ SELECT interval '2 minutes' $$;

CREATE FUNCTION core.template_variables(p_text text) RETURNS text[]
    LANGUAGE sql IMMUTABLE
    SET search_path TO ''
    AS $$
    SELECT coalesce(array_agg(d.v ORDER BY d.first), '{}')
    FROM (SELECT r.m[1] AS v, min(r.k) AS first
          FROM regexp_matches(coalesce(p_text, ''), '\{\{\s*([A-Za-z0-9_]+)\s*\}\}', 'g') WITH ORDINALITY r(m, k)
          GROUP BY r.m[1]) d
$$;

CREATE FUNCTION core.tenant_contacts_estimate(p_tenant_id bigint) RETURNS double precision
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_plan jsonb;
BEGIN
    EXECUTE format('EXPLAIN (FORMAT JSON) SELECT 1 FROM core.contacts WHERE tenant_id = %L', p_tenant_id) INTO v_plan;
    RETURN (v_plan->0->'Plan'->>'Plan Rows')::double precision;
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

CREATE FUNCTION core.variable_problems(p_component text, p_vars text[], p_format text) RETURNS SETOF api.template_problem
    LANGUAGE sql IMMUTABLE
    SET search_path TO ''
    AS $_$
    SELECT p_component,
           format('{{%s}} is a named variable in a POSITIONAL template', v),
           'Number the variables {{1}}, {{2}}, ... or set "parameter_format": "NAMED".'
    FROM unnest(p_vars) v WHERE p_format = 'POSITIONAL' AND v !~ '^[0-9]{1,6}$'
    UNION ALL
    SELECT p_component,
           format('variables must be numbered {{1}} to {{%s}} in order of first use, not %s',
                  cardinality(p_vars), array_to_string(ARRAY(SELECT '{{' || v || '}}' FROM unnest(p_vars) v), ', ')),
           'Renumber them {{1}}, {{2}}, ... in the order they appear, without gaps.'
    WHERE p_format = 'POSITIONAL' AND NOT EXISTS (SELECT 1 FROM unnest(p_vars) v WHERE v !~ '^[0-9]{1,6}$')
      AND p_vars IS DISTINCT FROM ARRAY(SELECT g::text FROM generate_series(1, cardinality(p_vars)) g)
    UNION ALL
    SELECT p_component, format('{{%s}} is not a named variable (lowercase letters, digits, underscores)', v),
           'Name every variable like {{first_name}}, or set "parameter_format": "POSITIONAL" and number them.'
    FROM unnest(p_vars) v WHERE p_format = 'NAMED' AND v !~ '^[a-z][a-z0-9_]*$'
$_$;

CREATE FUNCTION core.waba_number(p_tenant_id bigint, p_waba_id text, p_number_id bigint) RETURNS core.wa_numbers
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
DECLARE
    v_number core.wa_numbers;
BEGIN
    IF (p_waba_id IS NULL) = (p_number_id IS NULL) THEN
        RAISE EXCEPTION 'give exactly one of waba_id and number_id' USING ERRCODE = 'PW100',
            HINT = 'A template belongs to a WhatsApp Business Account: name it, or one of its numbers.';
    END IF;
    SELECT * INTO v_number FROM core.wa_numbers n
    WHERE n.tenant_id = p_tenant_id AND (n.number_id = p_number_id OR n.waba_id = p_waba_id)
    ORDER BY n.number_id LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% % has no number of this tenant', CASE WHEN p_waba_id IS NULL THEN 'number' ELSE 'waba_id' END,
            coalesce(p_waba_id, p_number_id::text)
            USING ERRCODE = 'PW202', HINT = 'Register a number of this WhatsApp Business Account first (api.numbers lists them).';
    END IF;
    RETURN v_number;
END
$$;

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

CREATE FUNCTION core.warn_template_campaigns(p_template_ids bigint[], p_kind text, p_statuses text[], p_texts text[], p_severities text[], p_keys text[]) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO ''
    AS $$
DECLARE
    v_noted integer;
    v_tenants bigint[];
BEGIN
    WITH noted AS (
        INSERT INTO core.notifications (tenant_id, kind, severity, message, details, dedupe_key)
        SELECT DISTINCT ON (c.campaign_id, e.key) c.tenant_id, p_kind, e.severity,
               format('Campaign "%s" (%s): template %s (%s) %s', c.name, c.status, t.name, t.language, e.text),
               jsonb_build_object('campaign_id', c.campaign_id, 'template_id', t.template_id),
               md5(format('%s|%s|%s', p_kind, c.campaign_id, e.key))
        FROM unnest(p_template_ids, p_texts, p_severities, p_keys) e(template_id, text, severity, key)
        JOIN core.templates t ON t.template_id = e.template_id
        JOIN core.campaign_templates ct ON ct.template_id = t.template_id
        JOIN core.campaigns c ON c.campaign_id = ct.campaign_id AND c.tenant_id = t.tenant_id
        WHERE c.status = ANY (p_statuses)
        ORDER BY c.campaign_id, e.key
        ON CONFLICT DO NOTHING
        RETURNING tenant_id
    )
    SELECT count(*), array_agg(DISTINCT tenant_id) INTO v_noted, v_tenants FROM noted;
    PERFORM pg_notify('pgwa_notification', t::text) FROM unnest(v_tenants) t;
    RETURN v_noted;
END
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

CREATE FUNCTION core.window_opens_at(p_now timestamp with time zone, p_zone text, p_start time without time zone, p_end time without time zone) RETURNS timestamp with time zone
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path TO ''
    AS $$
    SELECT CASE
        WHEN CASE WHEN p_start < p_end THEN l.t >= p_start AND l.t < p_end ELSE l.t >= p_start OR l.t < p_end END
            THEN NULL
        WHEN l.t < p_start THEN (l.d + p_start) AT TIME ZONE p_zone
        ELSE (l.d + 1 + p_start) AT TIME ZONE p_zone
    END
    FROM (SELECT (p_now AT TIME ZONE p_zone)::date AS d, (p_now AT TIME ZONE p_zone)::time AS t) l
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

CREATE TABLE core.api_sends (
    tenant_id bigint NOT NULL,
    idempotency_key text NOT NULL,
    request_hash text NOT NULL,
    outbound_id bigint NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT api_sends_key_shape CHECK ((idempotency_key ~ '^[!-~]{1,255}$'::text))
);

COMMENT ON TABLE core.api_sends IS 'Idempotency keys of the send API (api.send_message): the request each stood for and the outbound message it queued.';

CREATE UNLOGGED TABLE core.api_template_layouts (
    template_id bigint NOT NULL,
    shape_md5 text NOT NULL,
    render jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

COMMENT ON TABLE core.api_template_layouts IS 'Cache of the send API (core.api_template_message): core.map_template''s render skeleton per template and shape of parameters (values as slots).';

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
    opt_in_reply text DEFAULT 'You are subscribed again. Reply STOP to unsubscribe.'::text NOT NULL,
    time_zone text DEFAULT 'UTC'::text NOT NULL
);

COMMENT ON COLUMN core.tenants.time_zone IS 'The IANA time zone in which the tenant writes schedules (api.tenant_local_time) and the fallback for recipients of unknown zone.';

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
    failed integer DEFAULT 0 NOT NULL,
    render jsonb,
    mapping jsonb
);

COMMENT ON COLUMN core.campaign_templates.params IS 'The sources of the queue message''s per-row values "p", in order: [{"column": ...}] (core.defer_capped rebuilds "p" from them); before render skeletons, the body parameters ({"column"} or {"value"}).';

COMMENT ON COLUMN core.campaign_templates.render IS 'Skeleton of Meta''s components array: constants folded in, per-row values marked {"$slot": n, "$path": ...} (core.render_components); null for body-only campaigns made before it.';

COMMENT ON COLUMN core.campaign_templates.mapping IS 'The template mapping as api.create_campaign was given it (header, body, buttons); null for campaigns made before it, whose params are their body mapping.';

ALTER TABLE core.campaigns ALTER COLUMN campaign_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.campaigns_campaign_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.canned_replies (
    canned_reply_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    created_by bigint,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT canned_replies_body_valid CHECK (((length(btrim(body)) >= 1) AND (length(btrim(body)) <= 4096))),
    CONSTRAINT canned_replies_title_valid CHECK (((length(btrim(title)) >= 1) AND (length(btrim(title)) <= 100)))
);

COMMENT ON TABLE core.canned_replies IS 'A tenant''s saved answers: an agent picks one to fill the reply box (contact variables like {{name}} are filled when sent).';

ALTER TABLE core.canned_replies ALTER COLUMN canned_reply_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.canned_replies_canned_reply_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.contact_fields (
    tenant_id bigint NOT NULL,
    name text NOT NULL,
    type text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT contact_fields_name_valid CHECK (((name ~ '^[a-z][a-z0-9_]{0,62}$'::text) AND (name <> ALL (ARRAY['phone'::text, 'name'::text, 'tags'::text])))),
    CONSTRAINT contact_fields_type_valid CHECK ((type = ANY (ARRAY['text'::text, 'number'::text, 'date'::text, 'boolean'::text])))
);

COMMENT ON TABLE core.contact_fields IS 'Custom contact fields per tenant (text, number, date, boolean); values are in core.contacts.attributes under the name.';

ALTER TABLE core.contacts ALTER COLUMN contact_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.contacts_contact_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.conversation_notes (
    note_id bigint NOT NULL,
    number_id bigint NOT NULL,
    contact_id bigint NOT NULL,
    user_id bigint,
    author text NOT NULL,
    body text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT conversation_notes_body_valid CHECK (((length(btrim(body)) >= 1) AND (length(btrim(body)) <= 4096)))
);

COMMENT ON TABLE core.conversation_notes IS 'Internal notes agents leave on a conversation: shown in the dashboard''s thread, never sent to WhatsApp.';

ALTER TABLE core.conversation_notes ALTER COLUMN note_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.conversation_notes_note_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.conversation_reads (
    user_id bigint NOT NULL,
    number_id bigint NOT NULL,
    contact_id bigint NOT NULL,
    read_up_to_at timestamp with time zone NOT NULL,
    read_up_to_id bigint NOT NULL,
    read_at timestamp with time zone NOT NULL
);

COMMENT ON TABLE core.conversation_reads IS 'Each dashboard user''s read mark on a conversation: what the inbox counts as unread for them.';

CREATE TABLE core.cron_jobs (
    job_name text NOT NULL,
    schedule text NOT NULL,
    command text NOT NULL
);

CREATE TABLE core.dashboard_invitations (
    invitation_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    email text NOT NULL,
    role text NOT NULL,
    token_hash bytea NOT NULL,
    created_at timestamp with time zone NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    accepted_at timestamp with time zone,
    revoked_at timestamp with time zone,
    user_id bigint,
    CONSTRAINT dashboard_invitations_email_valid CHECK (((email ~ '^[^@\s]+@[^@\s]+$'::text) AND (length(email) <= 254) AND (email = lower(email)))),
    CONSTRAINT dashboard_invitations_role_valid CHECK ((role = ANY (ARRAY['admin'::text, 'marketer'::text, 'agent'::text, 'viewer'::text])))
);

COMMENT ON TABLE core.dashboard_invitations IS 'Invitations by link: the sha256 of a random token, the e-mail and role it grants, single use, expiring.';

ALTER TABLE core.dashboard_invitations ALTER COLUMN invitation_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.dashboard_invitations_invitation_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.dashboard_role_actions (
    role text NOT NULL,
    action text NOT NULL,
    CONSTRAINT dashboard_role_actions_role_valid CHECK ((role = ANY (ARRAY['admin'::text, 'marketer'::text, 'agent'::text, 'viewer'::text])))
);

COMMENT ON TABLE core.dashboard_role_actions IS 'The dashboard actions each role holds: campaigns.read, campaigns.manage, inbox.read, inbox.reply, inbox.assign, users.manage, contacts.read, contacts.manage, templates.read, bots.read, bots.manage, numbers.read, notifications.read, notifications.manage, keys.manage.';

CREATE TABLE core.dashboard_sessions (
    session_id bigint NOT NULL,
    user_id bigint NOT NULL,
    token_hash bytea NOT NULL,
    created_at timestamp with time zone NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    last_seen_at timestamp with time zone NOT NULL,
    revoked_at timestamp with time zone
);

COMMENT ON TABLE core.dashboard_sessions IS 'Dashboard login sessions: the sha256 of the cookie''s random token, an absolute expiry, revocable (logout, a disabled user).';

ALTER TABLE core.dashboard_sessions ALTER COLUMN session_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.dashboard_sessions_session_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

ALTER TABLE core.dashboard_users ALTER COLUMN user_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.dashboard_users_user_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.event_deliveries (
    endpoint_id bigint NOT NULL,
    event_id bigint NOT NULL,
    status text DEFAULT 'pending'::text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    retry_from timestamp with time zone DEFAULT now() NOT NULL,
    next_attempt_at timestamp with time zone,
    last_attempt_at timestamp with time zone,
    last_http_status smallint,
    last_error text,
    delivered_at timestamp with time zone,
    dead_at timestamp with time zone,
    replays integer DEFAULT 0 NOT NULL,
    CONSTRAINT event_deliveries_status_valid CHECK ((status = ANY (ARRAY['pending'::text, 'delivered'::text, 'dead'::text])))
);

CREATE TABLE core.event_endpoints (
    endpoint_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    url text NOT NULL,
    secret text NOT NULL,
    description text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    failures integer DEFAULT 0 NOT NULL,
    retry_at timestamp with time zone,
    claimed_at timestamp with time zone,
    CONSTRAINT event_endpoints_url_valid CHECK (((url ~ '^https?://[^[:space:]/?#]+'::text) AND (length(url) <= 2000)))
);

ALTER TABLE core.event_endpoints ALTER COLUMN endpoint_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.event_endpoints_endpoint_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.event_subscriptions (
    event_type text NOT NULL,
    tenant_id bigint NOT NULL,
    endpoint_id bigint NOT NULL
);

CREATE TABLE core.event_types (
    event_type text NOT NULL,
    subscribable boolean DEFAULT true NOT NULL,
    meaning text NOT NULL
);

CREATE TABLE core.events (
    event_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    event_type text NOT NULL,
    data jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE core.events ALTER COLUMN event_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.events_event_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
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

ALTER TABLE core.media ALTER COLUMN media_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.media_media_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

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

CREATE UNLOGGED TABLE core.number_inbound (
    number_id bigint NOT NULL,
    messages integer NOT NULL,
    CONSTRAINT number_inbound_messages_check CHECK ((messages > 0))
);

COMMENT ON TABLE core.number_inbound IS 'Inbound messages not yet counted in their number''s pace: one row per webhook batch and number, taken by api.claim_sends.';

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
    CONSTRAINT outbound_messages_kind_valid CHECK ((kind = ANY (ARRAY['campaign'::text, 'reply'::text, 'bot'::text, 'agent'::text, 'llm'::text, 'receipt'::text, 'api'::text]))),
    CONSTRAINT outbound_messages_state_valid CHECK ((state = ANY (ARRAY['queued'::text, 'in_flight'::text, 'accepted'::text, 'sent'::text, 'delivered'::text, 'read'::text, 'failed'::text, 'cancelled'::text])))
)
WITH (fillfactor='70');

COMMENT ON COLUMN core.outbound_messages.campaign_id IS 'The campaign of a campaign message (NULL for replies, bot, agent and API messages). No foreign key (one check per row was most of a campaign''s creation): only core.new_campaign writes it, from the campaign it has just inserted; the campaigns_delete_messages trigger deletes a campaign''s messages with it.';

ALTER TABLE core.outbound_messages ALTER COLUMN outbound_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.outbound_messages_outbound_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.phone_zones (
    prefix text NOT NULL,
    time_zone text NOT NULL,
    CONSTRAINT phone_zones_prefix_digits CHECK ((prefix ~ '^[1-9][0-9]{0,9}$'::text))
);

COMMENT ON TABLE core.phone_zones IS 'The IANA time zone of each phone number prefix (libphonenumber''s map; one zone per prefix): core.phone_zone takes a number''s longest prefix.';

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
            WHEN (core.queue_endpoint_id((q.queue_name)::text) IS NOT NULL) THEN 'events'::character varying
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

CREATE TABLE core.segments (
    segment_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    name text NOT NULL,
    filter jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT segments_name_valid CHECK (((length(btrim(name)) >= 1) AND (length(btrim(name)) <= 200)))
);

ALTER TABLE core.segments ALTER COLUMN segment_id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME core.segments_segment_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE core.settings (
    singleton boolean DEFAULT true NOT NULL,
    claim_timeout_s integer DEFAULT 30 NOT NULL,
    max_attempts integer DEFAULT 6 NOT NULL,
    retry_backoff_s integer[] DEFAULT '{5,10,20,40,60,120}'::integer[] NOT NULL,
    pace_horizon_ms integer DEFAULT 1000 NOT NULL,
    rate_headroom double precision DEFAULT 0.99 NOT NULL,
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
    media_download_attempts integer DEFAULT 5 NOT NULL,
    media_download_lease_s integer DEFAULT 120 NOT NULL,
    media_download_backoff_s integer[] DEFAULT '{10,60,300,1800}'::integer[] NOT NULL,
    event_retry_window_s integer DEFAULT 86400 NOT NULL,
    event_backoff_s integer[] DEFAULT '{5,15,30,60,120,300,600,1200,1800,3600}'::integer[] NOT NULL,
    event_timeout_ms integer DEFAULT 10000 NOT NULL,
    event_lane_concurrency integer DEFAULT 16 NOT NULL,
    event_allow_private_urls boolean DEFAULT false NOT NULL,
    event_retention_days integer DEFAULT 7 NOT NULL,
    dashboard_max_failures integer DEFAULT 5 NOT NULL,
    dashboard_failure_window interval DEFAULT '00:15:00'::interval NOT NULL,
    dashboard_lockout interval DEFAULT '00:15:00'::interval NOT NULL,
    dashboard_session_ttl interval DEFAULT '12:00:00'::interval NOT NULL,
    dashboard_invitation_ttl interval DEFAULT '7 days'::interval NOT NULL,
    dashboard_cookie_key bytea DEFAULT decode(replace(((gen_random_uuid())::text || (gen_random_uuid())::text), '-'::text, ''::text), 'hex'::text) NOT NULL,
    CONSTRAINT settings_api_rate_limit_valid CHECK (((api_rate_limit_per_minute >= 1) AND (api_rate_limit_per_minute <= 1000000))),
    CONSTRAINT settings_bot_match_prefix_valid CHECK (((bot_match_prefix_chars >= 500) AND (bot_match_prefix_chars <= 100000))),
    CONSTRAINT settings_capped_retry_days_valid CHECK (((capped_retry_days >= 0) AND (capped_retry_days <= 30))),
    CONSTRAINT settings_claim_timeout_valid CHECK (((claim_timeout_s >= 5) AND (claim_timeout_s <= 3600))),
    CONSTRAINT settings_dashboard_max_failures_valid CHECK (((dashboard_max_failures >= 1) AND (dashboard_max_failures <= 100))),
    CONSTRAINT settings_event_lane_concurrency_valid CHECK (((event_lane_concurrency >= 1) AND (event_lane_concurrency <= 256))),
    CONSTRAINT settings_event_retention_valid CHECK (((event_retention_days >= 1) AND (event_retention_days <= 365))),
    CONSTRAINT settings_event_retry_window_valid CHECK (((event_retry_window_s >= 60) AND (event_retry_window_s <= 2592000))),
    CONSTRAINT settings_event_timeout_valid CHECK (((event_timeout_ms >= 100) AND (event_timeout_ms <= 60000))),
    CONSTRAINT settings_max_attempts_valid CHECK (((max_attempts >= 1) AND (max_attempts <= 50))),
    CONSTRAINT settings_media_download_attempts_valid CHECK (((media_download_attempts >= 1) AND (media_download_attempts <= 50))),
    CONSTRAINT settings_media_download_lease_s_valid CHECK (((media_download_lease_s >= 5) AND (media_download_lease_s <= 3600))),
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

COMMENT ON COLUMN core.settings.pace_horizon_ms IS 'How far ahead of now one claim schedules a number''s sends; workers claim every half of it (api.send_policy).';

COMMENT ON COLUMN core.settings.rate_headroom IS 'The share of a number''s throughput_mps that claim_sends paces at (0.99: the worker''s pacer holds a starved loop''s late sends to the pace, so 1% covers the network''s jitter).';

COMMENT ON COLUMN core.settings.bot_match_prefix_chars IS 'Bot rules see at most this many leading characters of the normalised inbound text.';

COMMENT ON COLUMN core.settings.throttle_hold_ms IS 'After a throughput error (core.meta_error_codes.throttles) a number sends nothing for this long; the worker hands back what it holds for the number that was due before the hold ends.';

COMMENT ON COLUMN core.settings.capped_retry_days IS 'How many times a message Meta withheld under the per-user marketing cap (131049) is tried again, a day apart, before it fails for good.';

COMMENT ON COLUMN core.settings.receiver_beat_s IS 'How often the webhook receiver beats (api.receiver_heartbeat); a gap of three beats is an outage.';

COMMENT ON COLUMN core.settings.status_grace_s IS 'How long after a send its first status webhook normally arrives: a send whose answer was lost is not resent sooner.';

COMMENT ON COLUMN core.settings.unsure_resend_after_s IS 'After this long a send whose answer was lost is resent even if the webhook stream never caught up past it (Meta retries webhooks for up to 7 days).';

COMMENT ON COLUMN core.settings.media_download_attempts IS 'An inbound media file is given up (state failed) after this many download attempts.';

COMMENT ON COLUMN core.settings.media_download_lease_s IS 'A claimed media download comes back to the queue after this long if its worker never reports.';

COMMENT ON COLUMN core.settings.media_download_backoff_s IS 'Seconds before the next attempt of a failed media download, by attempt (the last repeats).';

COMMENT ON COLUMN core.settings.event_retry_window_s IS 'An outbound event is retried for this long (from its creation or replay) before it is dead-lettered.';

COMMENT ON COLUMN core.settings.event_backoff_s IS 'Seconds before the n-th retry of an outbound event (and of a failing endpoint''s probe); the last repeats.';

COMMENT ON COLUMN core.settings.event_timeout_ms IS 'How long the worker waits for an endpoint''s answer; a slower one is a failed attempt.';

COMMENT ON COLUMN core.settings.event_lane_concurrency IS 'Deliveries one worker has in flight to one endpoint at most; a claim takes no more than four times as many.';

COMMENT ON COLUMN core.settings.event_allow_private_urls IS 'Allow endpoints on loopback, private and link-local addresses (local development and tests only).';

COMMENT ON COLUMN core.settings.event_retention_days IS 'Delivered and dead events are deleted this many days after they were created.';

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
)
PARTITION BY RANGE (occurred_at);

COMMENT ON TABLE core.status_events IS 'Every status Meta reported, once per (wamid, status) and number; partitioned daily by occurred_at with pg_partman (0114), retained by dropping partitions (core.run_retention).';

CREATE TABLE core.status_events_default (
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

ALTER TABLE ONLY core.status_events ATTACH PARTITION core.status_events_default DEFAULT;

ALTER TABLE ONLY core.api_keys
    ADD CONSTRAINT api_keys_key_hash_unique UNIQUE (key_hash);

ALTER TABLE ONLY core.api_keys
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (api_key_id);

ALTER TABLE ONLY core.api_sends
    ADD CONSTRAINT api_sends_pkey PRIMARY KEY (tenant_id, idempotency_key);

ALTER TABLE ONLY core.api_template_layouts
    ADD CONSTRAINT api_template_layouts_pkey PRIMARY KEY (template_id, shape_md5);

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

ALTER TABLE ONLY core.canned_replies
    ADD CONSTRAINT canned_replies_pkey PRIMARY KEY (canned_reply_id);

ALTER TABLE ONLY core.canned_replies
    ADD CONSTRAINT canned_replies_tenant_title UNIQUE (tenant_id, title);

ALTER TABLE ONLY core.contact_fields
    ADD CONSTRAINT contact_fields_pkey PRIMARY KEY (tenant_id, name);

ALTER TABLE ONLY core.contacts
    ADD CONSTRAINT contacts_pkey PRIMARY KEY (contact_id);

ALTER TABLE ONLY core.conversation_notes
    ADD CONSTRAINT conversation_notes_pkey PRIMARY KEY (note_id);

ALTER TABLE ONLY core.conversation_reads
    ADD CONSTRAINT conversation_reads_pkey PRIMARY KEY (user_id, number_id, contact_id);

ALTER TABLE ONLY core.conversations
    ADD CONSTRAINT conversations_pkey PRIMARY KEY (number_id, contact_id);

ALTER TABLE ONLY core.cron_jobs
    ADD CONSTRAINT cron_jobs_pkey PRIMARY KEY (job_name);

ALTER TABLE ONLY core.dashboard_invitations
    ADD CONSTRAINT dashboard_invitations_pkey PRIMARY KEY (invitation_id);

ALTER TABLE ONLY core.dashboard_invitations
    ADD CONSTRAINT dashboard_invitations_token_hash_unique UNIQUE (token_hash);

ALTER TABLE ONLY core.dashboard_role_actions
    ADD CONSTRAINT dashboard_role_actions_pkey PRIMARY KEY (role, action);

ALTER TABLE ONLY core.dashboard_sessions
    ADD CONSTRAINT dashboard_sessions_pkey PRIMARY KEY (session_id);

ALTER TABLE ONLY core.dashboard_sessions
    ADD CONSTRAINT dashboard_sessions_token_hash_unique UNIQUE (token_hash);

ALTER TABLE ONLY core.dashboard_users
    ADD CONSTRAINT dashboard_users_pkey PRIMARY KEY (user_id);

ALTER TABLE ONLY core.dashboard_users
    ADD CONSTRAINT dashboard_users_tenant_email UNIQUE (tenant_id, email);

ALTER TABLE ONLY core.error_codes
    ADD CONSTRAINT error_codes_name_key UNIQUE (name);

ALTER TABLE ONLY core.error_codes
    ADD CONSTRAINT error_codes_pkey PRIMARY KEY (sqlstate);

ALTER TABLE ONLY core.event_deliveries
    ADD CONSTRAINT event_deliveries_pkey PRIMARY KEY (endpoint_id, event_id);

ALTER TABLE ONLY core.event_endpoints
    ADD CONSTRAINT event_endpoints_pkey PRIMARY KEY (endpoint_id);

ALTER TABLE ONLY core.event_subscriptions
    ADD CONSTRAINT event_subscriptions_pkey PRIMARY KEY (event_type, tenant_id, endpoint_id);

ALTER TABLE ONLY core.event_types
    ADD CONSTRAINT event_types_pkey PRIMARY KEY (event_type);

ALTER TABLE ONLY core.events
    ADD CONSTRAINT events_pkey PRIMARY KEY (event_id);

ALTER TABLE ONLY core.inbox_messages
    ADD CONSTRAINT inbox_messages_pkey PRIMARY KEY (message_id);

ALTER TABLE ONLY core.llm_number_usage
    ADD CONSTRAINT llm_number_usage_pkey PRIMARY KEY (number_id, day);

ALTER TABLE ONLY core.media
    ADD CONSTRAINT media_pkey PRIMARY KEY (media_id);

ALTER TABLE ONLY core.media_types
    ADD CONSTRAINT media_types_pkey PRIMARY KEY (mime_type);

ALTER TABLE ONLY core.meta_error_codes
    ADD CONSTRAINT meta_error_codes_pkey PRIMARY KEY (code);

ALTER TABLE ONLY core.notifications
    ADD CONSTRAINT notifications_pkey PRIMARY KEY (notification_id);

ALTER TABLE ONLY core.outbound_messages
    ADD CONSTRAINT outbound_messages_pkey PRIMARY KEY (outbound_id);

ALTER TABLE ONLY core.phone_zones
    ADD CONSTRAINT phone_zones_pkey PRIMARY KEY (prefix);

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

ALTER TABLE ONLY core.segments
    ADD CONSTRAINT segments_pkey PRIMARY KEY (segment_id);

ALTER TABLE ONLY core.send_minutes
    ADD CONSTRAINT send_minutes_pkey PRIMARY KEY (number_id, minute);

ALTER TABLE ONLY core.settings
    ADD CONSTRAINT settings_pkey PRIMARY KEY (singleton);

ALTER TABLE ONLY core.status_events
    ADD CONSTRAINT status_events_pkey PRIMARY KEY (wamid, status, number_id, occurred_at);

ALTER TABLE ONLY core.status_events_default
    ADD CONSTRAINT status_events_default_pkey PRIMARY KEY (wamid, status, number_id, occurred_at);

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

CREATE INDEX api_sends_outbound ON core.api_sends USING btree (outbound_id);

CREATE INDEX bot_rules_exact ON core.bot_rules USING btree (number_id, match_text, priority, rule_id) WHERE (enabled AND (kind = 'exact'::text));

CREATE INDEX bot_rules_fallbacks ON core.bot_rules USING btree (number_id, kind, priority, rule_id) WHERE (enabled AND (kind = ANY (ARRAY['welcome'::text, 'default'::text])));

CREATE INDEX bot_rules_like_key ON core.bot_rules USING btree (number_id, match_key) INCLUDE (priority, like_pattern) WHERE (enabled AND (kind = ANY (ARRAY['starts_with'::text, 'contains'::text])) AND (match_key IS NOT NULL));

CREATE INDEX bot_rules_like_short ON core.bot_rules USING btree (number_id, priority, rule_id) INCLUDE (like_pattern) WHERE (enabled AND (kind = ANY (ARRAY['starts_with'::text, 'contains'::text])) AND (match_key IS NULL));

CREATE INDEX bot_rules_number_priority ON core.bot_rules USING btree (number_id, priority, rule_id);

CREATE INDEX bot_rules_regex ON core.bot_rules USING btree (number_id, priority, rule_id) INCLUDE (match_text) WHERE (enabled AND (kind = 'regex'::text));

CREATE INDEX campaign_templates_template_id ON core.campaign_templates USING btree (template_id);

CREATE INDEX campaigns_number_status ON core.campaigns USING btree (number_id, status);

CREATE INDEX campaigns_scheduled_due ON core.campaigns USING btree (scheduled_at) WHERE (status = 'scheduled'::text);

CREATE INDEX campaigns_tenant_campaign ON core.campaigns USING btree (tenant_id, campaign_id);

CREATE INDEX campaigns_tenant_created ON core.campaigns USING btree (tenant_id, created_at DESC);

CREATE INDEX canned_replies_created_by ON core.canned_replies USING btree (created_by);

CREATE INDEX contacts_marketing_stopped ON core.contacts USING btree (tenant_id) WHERE (marketing_stopped_at IS NOT NULL);

CREATE INDEX contacts_opted_out ON core.contacts USING btree (tenant_id, opted_out_at) WHERE opted_out;

CREATE INDEX contacts_search_trgm ON core.contacts USING gin ((((((COALESCE(wa_id, ''::text) || ' '::text) || COALESCE(name, ''::text)) || ' '::text) || COALESCE(profile_name, ''::text))) public.gin_trgm_ops);

CREATE INDEX contacts_tags ON core.contacts USING gin (tags);

CREATE UNIQUE INDEX contacts_tenant_user_id ON core.contacts USING btree (tenant_id, user_id) WHERE (user_id IS NOT NULL);

CREATE UNIQUE INDEX contacts_tenant_wa_id ON core.contacts USING btree (tenant_id, wa_id);

CREATE INDEX conversation_notes_conversation ON core.conversation_notes USING btree (number_id, contact_id, created_at);

CREATE INDEX conversation_notes_user ON core.conversation_notes USING btree (user_id);

CREATE INDEX conversation_reads_conversation ON core.conversation_reads USING btree (number_id, contact_id);

CREATE INDEX conversations_contact ON core.conversations USING btree (contact_id);

CREATE INDEX conversations_number_last ON core.conversations USING btree (number_id, last_message_at DESC, contact_id DESC);

CREATE INDEX dashboard_invitations_tenant ON core.dashboard_invitations USING btree (tenant_id);

CREATE INDEX dashboard_invitations_user ON core.dashboard_invitations USING btree (user_id);

CREATE INDEX dashboard_sessions_user ON core.dashboard_sessions USING btree (user_id);

CREATE INDEX dashboard_users_email ON core.dashboard_users USING btree (email);

CREATE INDEX event_deliveries_event_id ON core.event_deliveries USING btree (event_id);

CREATE INDEX event_endpoints_tenant_id ON core.event_endpoints USING btree (tenant_id);

CREATE INDEX event_subscriptions_endpoint_id ON core.event_subscriptions USING btree (endpoint_id);

CREATE INDEX events_tenant_event ON core.events USING btree (tenant_id, event_id);

CREATE INDEX inbox_messages_body_trgm ON core.inbox_messages USING gin (body public.gin_trgm_ops);

CREATE INDEX inbox_messages_contact ON core.inbox_messages USING btree (contact_id);

CREATE INDEX inbox_messages_conversation ON core.inbox_messages USING btree (number_id, contact_id, created_at DESC, message_id DESC);

CREATE UNIQUE INDEX inbox_messages_wamid ON core.inbox_messages USING btree (wamid) WHERE (wamid IS NOT NULL);

CREATE UNIQUE INDEX media_message ON core.media USING btree (message_id) WHERE (message_id IS NOT NULL);

CREATE INDEX media_number_meta ON core.media USING btree (number_id, meta_media_id);

CREATE INDEX media_number_sha ON core.media USING btree (number_id, sha256, expires_at DESC) WHERE (direction = 'out'::text);

CREATE INDEX media_pending ON core.media USING btree (next_attempt_at) WHERE (state = 'pending'::text);

CREATE INDEX media_tenant ON core.media USING btree (tenant_id, media_id DESC);

CREATE INDEX notifications_tenant_created ON core.notifications USING btree (tenant_id, created_at DESC);

CREATE UNIQUE INDEX notifications_tenant_dedupe_key ON core.notifications USING btree (tenant_id, dedupe_key) NULLS NOT DISTINCT WHERE (dedupe_key IS NOT NULL);

CREATE INDEX notifications_tenant_notification ON core.notifications USING btree (tenant_id, notification_id);

CREATE INDEX number_inbound_number ON core.number_inbound USING btree (number_id);

CREATE INDEX outbound_messages_campaign ON core.outbound_messages USING btree (campaign_id);

CREATE INDEX outbound_messages_contact ON core.outbound_messages USING btree (contact_id, outbound_id);

CREATE UNIQUE INDEX outbound_messages_wamid ON core.outbound_messages USING btree (wamid) WHERE (wamid IS NOT NULL);

CREATE UNIQUE INDEX segments_tenant_name ON core.segments USING btree (tenant_id, name);

CREATE INDEX segments_tenant_segment ON core.segments USING btree (tenant_id, segment_id);

CREATE INDEX status_events_unmatched ON ONLY core.status_events USING btree (wamid) WHERE (outbound_id IS NULL);

CREATE INDEX status_events_default_wamid_idx ON core.status_events_default USING btree (wamid) WHERE (outbound_id IS NULL);

CREATE INDEX templates_meta_template_id ON core.templates USING btree (meta_template_id) WHERE (meta_template_id IS NOT NULL);

CREATE INDEX templates_tenant_id ON core.templates USING btree (tenant_id);

CREATE INDEX wa_numbers_portfolio ON core.wa_numbers USING btree (portfolio_id);

CREATE INDEX wa_numbers_tenant_id ON core.wa_numbers USING btree (tenant_id);

ALTER INDEX core.status_events_pkey ATTACH PARTITION core.status_events_default_pkey;

ALTER INDEX core.status_events_unmatched ATTACH PARTITION core.status_events_default_wamid_idx;

CREATE TRIGGER campaigns_delete_messages AFTER DELETE ON core.campaigns REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION core.delete_campaign_messages();

CREATE TRIGGER campaigns_events AFTER UPDATE ON core.campaigns REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION core.capture_campaign_status();

CREATE TRIGGER campaigns_notify_dashboard AFTER UPDATE ON core.campaigns REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION core.notify_dashboard_campaigns();

CREATE TRIGGER contacts_events_insert AFTER INSERT ON core.contacts REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION core.capture_contact_opt();

CREATE TRIGGER contacts_events_update AFTER UPDATE ON core.contacts REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION core.capture_contact_opt();

CREATE TRIGGER contacts_tenant_exists AFTER INSERT ON core.contacts REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION core.check_contact_tenants();

CREATE TRIGGER contacts_tenant_exists_update AFTER UPDATE ON core.contacts FOR EACH ROW WHEN ((old.tenant_id IS DISTINCT FROM new.tenant_id)) EXECUTE FUNCTION core.check_contact_tenants();

CREATE TRIGGER inbox_messages_events AFTER INSERT ON core.inbox_messages REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION core.capture_message_inbound();

CREATE TRIGGER inbox_messages_notify_dashboard AFTER INSERT ON core.inbox_messages REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION core.notify_dashboard_inbox();

CREATE TRIGGER outbound_messages_events AFTER UPDATE ON core.outbound_messages REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION core.capture_message_status();

CREATE TRIGGER templates_events AFTER UPDATE ON core.templates REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION core.capture_template_status();

CREATE TRIGGER tenants_delete_contacts AFTER DELETE ON core.tenants REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION core.delete_tenant_contacts();

CREATE TRIGGER tenants_keep_contacts_tenant_id BEFORE UPDATE ON core.tenants FOR EACH ROW WHEN ((old.tenant_id IS DISTINCT FROM new.tenant_id)) EXECUTE FUNCTION core.check_tenant_id_kept();

CREATE TRIGGER tenants_truncate_contacts AFTER TRUNCATE ON core.tenants FOR EACH STATEMENT EXECUTE FUNCTION core.delete_tenant_contacts();

ALTER TABLE ONLY core.api_keys
    ADD CONSTRAINT api_keys_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.api_sends
    ADD CONSTRAINT api_sends_outbound_id_fkey FOREIGN KEY (outbound_id) REFERENCES core.outbound_messages(outbound_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.api_sends
    ADD CONSTRAINT api_sends_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.api_template_layouts
    ADD CONSTRAINT api_template_layouts_template_id_fkey FOREIGN KEY (template_id) REFERENCES core.templates(template_id) ON DELETE CASCADE;

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

ALTER TABLE ONLY core.canned_replies
    ADD CONSTRAINT canned_replies_created_by_fkey FOREIGN KEY (created_by) REFERENCES core.dashboard_users(user_id) ON DELETE SET NULL;

ALTER TABLE ONLY core.canned_replies
    ADD CONSTRAINT canned_replies_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.contact_fields
    ADD CONSTRAINT contact_fields_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.conversation_notes
    ADD CONSTRAINT conversation_notes_conversation_fk FOREIGN KEY (number_id, contact_id) REFERENCES core.conversations(number_id, contact_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.conversation_notes
    ADD CONSTRAINT conversation_notes_user_id_fkey FOREIGN KEY (user_id) REFERENCES core.dashboard_users(user_id) ON DELETE SET NULL;

ALTER TABLE ONLY core.conversation_reads
    ADD CONSTRAINT conversation_reads_conversation_fk FOREIGN KEY (number_id, contact_id) REFERENCES core.conversations(number_id, contact_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.conversation_reads
    ADD CONSTRAINT conversation_reads_user_id_fkey FOREIGN KEY (user_id) REFERENCES core.dashboard_users(user_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.conversations
    ADD CONSTRAINT conversations_contact_id_fkey FOREIGN KEY (contact_id) REFERENCES core.contacts(contact_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.conversations
    ADD CONSTRAINT conversations_number_id_fkey FOREIGN KEY (number_id) REFERENCES core.wa_numbers(number_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.dashboard_invitations
    ADD CONSTRAINT dashboard_invitations_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.dashboard_invitations
    ADD CONSTRAINT dashboard_invitations_user_id_fkey FOREIGN KEY (user_id) REFERENCES core.dashboard_users(user_id) ON DELETE SET NULL;

ALTER TABLE ONLY core.dashboard_sessions
    ADD CONSTRAINT dashboard_sessions_user_id_fkey FOREIGN KEY (user_id) REFERENCES core.dashboard_users(user_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.dashboard_users
    ADD CONSTRAINT dashboard_users_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.event_deliveries
    ADD CONSTRAINT event_deliveries_endpoint_id_fkey FOREIGN KEY (endpoint_id) REFERENCES core.event_endpoints(endpoint_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.event_deliveries
    ADD CONSTRAINT event_deliveries_event_id_fkey FOREIGN KEY (event_id) REFERENCES core.events(event_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.event_endpoints
    ADD CONSTRAINT event_endpoints_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.event_subscriptions
    ADD CONSTRAINT event_subscriptions_endpoint_id_fkey FOREIGN KEY (endpoint_id) REFERENCES core.event_endpoints(endpoint_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.event_subscriptions
    ADD CONSTRAINT event_subscriptions_event_type_fkey FOREIGN KEY (event_type) REFERENCES core.event_types(event_type);

ALTER TABLE ONLY core.inbox_messages
    ADD CONSTRAINT inbox_messages_contact_id_fkey FOREIGN KEY (contact_id) REFERENCES core.contacts(contact_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.inbox_messages
    ADD CONSTRAINT inbox_messages_number_id_fkey FOREIGN KEY (number_id) REFERENCES core.wa_numbers(number_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.llm_number_usage
    ADD CONSTRAINT llm_number_usage_number_id_fkey FOREIGN KEY (number_id) REFERENCES core.wa_numbers(number_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.media
    ADD CONSTRAINT media_message_id_fkey FOREIGN KEY (message_id) REFERENCES core.inbox_messages(message_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.media
    ADD CONSTRAINT media_number_id_fkey FOREIGN KEY (number_id) REFERENCES core.wa_numbers(number_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.media
    ADD CONSTRAINT media_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.notifications
    ADD CONSTRAINT notifications_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.portfolio_reach_minutes
    ADD CONSTRAINT portfolio_reach_minutes_portfolio_id_fkey FOREIGN KEY (portfolio_id) REFERENCES core.portfolios(portfolio_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.portfolio_reach
    ADD CONSTRAINT portfolio_reach_portfolio_id_fkey FOREIGN KEY (portfolio_id) REFERENCES core.portfolios(portfolio_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.portfolios
    ADD CONSTRAINT portfolios_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY core.segments
    ADD CONSTRAINT segments_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES core.tenants(tenant_id) ON DELETE CASCADE;

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

