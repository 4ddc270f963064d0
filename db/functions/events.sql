-- Outbound events: a tenant's endpoints, the triggers that queue an event in the
-- transaction of the change that causes it, and the worker's claim and report.
--
--   change to core.outbound_messages / inbox_messages / campaigns / contacts / templates
--     ──statement trigger (transition tables)──> core.queue_events
--        core.events + core.event_deliveries + pgmq ev_<endpoint_id> + NOTIFY pgwa_events
--   worker/events.py ──api.claim_events──> POST signed ──api.report_events──> delivered,
--        retried after core.event_backoff (pgmq vt), or dead after the retry window
--
-- A trigger first asks core.event_subscriptions whether any endpoint wants its event type
-- (one index probe): on the send path, with no subscriber, that is all it costs.
-- Signature (worker/events.py signs, a receiver checks; README "Outbound events"):
--   X-Pgwa-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

-------------------------------------------------------------------------------
-- Names and rules
-------------------------------------------------------------------------------

-- The pgmq queue of an endpoint's deliveries, ev_<endpoint_id>: its lane.
CREATE OR REPLACE FUNCTION core.event_queue(p_endpoint_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT 'ev_' || p_endpoint_id::text
$$;

-- The endpoint whose queue p_queue_name is, or NULL for any other queue.
CREATE OR REPLACE FUNCTION core.queue_endpoint_id(p_queue_name text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT x.id FROM (SELECT substring(p_queue_name FROM '[0-9]{1,18}$')::bigint AS id) x
    WHERE core.event_queue(x.id) = p_queue_name
$$;

-- How long before the p_attempt-th retry (1-based): core.settings.event_backoff_s, whose
-- last element repeats.
CREATE OR REPLACE FUNCTION core.event_backoff(p_attempt integer) RETURNS interval
LANGUAGE sql STABLE SET search_path = '' AS $$
    SELECT make_interval(secs => s.event_backoff_s[least(greatest(p_attempt, 1), cardinality(s.event_backoff_s))])
    FROM core.settings s
$$;

-- Why an endpoint URL is refused, or NULL when it is fine: http(s) only, no credentials,
-- and (unless core.settings.event_allow_private_urls) no loopback, private or link-local
-- host written as an address or as localhost. The worker checks the address a name
-- resolves to again before each delivery.
CREATE OR REPLACE FUNCTION core.event_url_problem(p_url text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
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
$$;

-------------------------------------------------------------------------------
-- Queueing: in the transaction of the change
-------------------------------------------------------------------------------

-- Queue events of type p_type, one per element of the parallel arrays (the tenant, the
-- event's data), to every endpoint of that tenant that wants the type (or only to
-- p_endpoint_id when given). Returns the deliveries queued.
-- The endpoints are locked FOR KEY SHARE first: an endpoint deleted meanwhile is skipped
-- (never a foreign-key error in the transaction of the change), and one being deleted
-- waits for this transaction, whose deliveries then go with it.
CREATE OR REPLACE FUNCTION core.queue_events(p_type text, p_tenant_ids bigint[], p_data jsonb[],
                                             p_endpoint_id bigint DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- message.status: an outbound message (not a read receipt) moved to accepted, sent,
-- delivered, read or failed.
CREATE OR REPLACE FUNCTION core.capture_message_status() RETURNS trigger
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- message.inbound: a contact's message stored in the inbox.
CREATE OR REPLACE FUNCTION core.capture_message_inbound() RETURNS trigger
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- campaign.completed and campaign.paused: a campaign's status moved to one of them.
CREATE OR REPLACE FUNCTION core.capture_campaign_status() RETURNS trigger
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- contact.opted_out and contact.opted_in: a contact's opted_out flag changed, or a contact
-- was created opted out (an opt-out of a phone never seen before).
CREATE OR REPLACE FUNCTION core.capture_contact_opt() RETURNS trigger
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- template.status: Meta changed a template's status.
CREATE OR REPLACE FUNCTION core.capture_template_status() RETURNS trigger
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- The triggers live here, beside their functions (a migration runs before the function
-- files, so it could not name them). Statement-level, over transition tables: one call
-- per statement whatever its row count.
CREATE OR REPLACE TRIGGER outbound_messages_events AFTER UPDATE ON core.outbound_messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION core.capture_message_status();
CREATE OR REPLACE TRIGGER inbox_messages_events AFTER INSERT ON core.inbox_messages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION core.capture_message_inbound();
CREATE OR REPLACE TRIGGER campaigns_events AFTER UPDATE ON core.campaigns
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION core.capture_campaign_status();
CREATE OR REPLACE TRIGGER contacts_events_update AFTER UPDATE ON core.contacts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION core.capture_contact_opt();
CREATE OR REPLACE TRIGGER contacts_events_insert AFTER INSERT ON core.contacts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION core.capture_contact_opt();
CREATE OR REPLACE TRIGGER templates_events AFTER UPDATE ON core.templates
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION core.capture_template_status();

-------------------------------------------------------------------------------
-- Endpoints (the tenant's side)
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.create_event_endpoint(p_tenant_id bigint, p_url text, p_event_types text[],
                                                     p_secret text DEFAULT NULL, p_description text DEFAULT NULL)
RETURNS api.event_endpoint_created
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.create_event_endpoint(bigint, text, text[], text, text) IS
    'Registers an endpoint that receives the tenant''s outbound events of the given types, signed with p_secret (or a generated whsec_ secret); returns it with the secret, shown this once. Raises PW100 for a URL that is not http(s), carries credentials or (unless allowed) names a local or private address, for no or unknown event types, or a secret outside 16..200 characters; PW205 for an unknown tenant.';

CREATE OR REPLACE FUNCTION api.event_endpoints(p_tenant_id bigint) RETURNS SETOF api.event_endpoint
LANGUAGE sql SECURITY DEFINER STABLE SET search_path = '' AS $$
    SELECT e.endpoint_id, e.url,
           ARRAY(SELECT s.event_type FROM core.event_subscriptions s WHERE s.endpoint_id = e.endpoint_id
                 ORDER BY s.event_type),
           e.description, e.created_at, e.failures, e.retry_at,
           (SELECT count(*) FROM core.event_deliveries d WHERE d.endpoint_id = e.endpoint_id AND d.status = 'pending')
    FROM core.event_endpoints e WHERE e.tenant_id = p_tenant_id
    ORDER BY e.endpoint_id
$$;
COMMENT ON FUNCTION api.event_endpoints(bigint) IS
    'Lists the tenant''s event endpoints: URL, event types, consecutive failures, when a failing one is tried next, deliveries pending; never their secrets.';

CREATE OR REPLACE FUNCTION api.delete_event_endpoint(p_tenant_id bigint, p_endpoint_id bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.delete_event_endpoint(bigint, bigint) IS
    'Deletes one of the tenant''s event endpoints with its queue and its deliveries (nothing more is sent to it); returns its id. Raises PW230 when the tenant has no such endpoint.';

CREATE OR REPLACE FUNCTION api.test_event_endpoint(p_tenant_id bigint, p_endpoint_id bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.test_event_endpoint(bigint, bigint) IS
    'Queues an endpoint.test event to one of the tenant''s endpoints (delivered, signed and retried like any other); returns its event id. Raises PW230 when the tenant has no such endpoint.';

CREATE OR REPLACE FUNCTION api.outbound_events(p_tenant_id bigint, p_endpoint_id bigint DEFAULT NULL,
                                               p_status text DEFAULT NULL, p_before_id bigint DEFAULT NULL,
                                               p_limit integer DEFAULT 50) RETURNS SETOF api.outbound_event
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.outbound_events(bigint, bigint, text, bigint, integer) IS
    'Lists the tenant''s outbound events newest first, one row per event and endpoint with the delivery''s status (pending, delivered, dead), attempts, next and last attempt, last HTTP status and error; optionally of one endpoint or status; keyset on event_id (p_before_id). Raises PW100 for an unknown status or a limit outside 1..1000, PW230 for an endpoint the tenant does not have.';

CREATE OR REPLACE FUNCTION api.replay_event(p_tenant_id bigint, p_event_id bigint, p_endpoint_id bigint DEFAULT NULL,
                                            p_now timestamptz DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.replay_event(bigint, bigint, bigint, timestamptz) IS
    'Queues one of the tenant''s events again (the same id and body) to every endpoint it went to, or to p_endpoint_id: delivered and dead deliveries become pending, retried for a fresh window; pending ones are left as they are. Returns the deliveries queued again. Raises PW231 when the tenant has no such event (or it never went to that endpoint).';

-------------------------------------------------------------------------------
-- Delivery (the worker's side)
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.event_policy() RETURNS api.event_policy
LANGUAGE sql SECURITY DEFINER STABLE SET search_path = '' AS $$
    SELECT s.event_timeout_ms, s.event_lane_concurrency, s.event_allow_private_urls FROM core.settings s
$$;
COMMENT ON FUNCTION api.event_policy() IS
    'Returns what the event worker must know: how long to wait for an endpoint (timeout_ms), how many deliveries to one endpoint it may have in flight (lane_concurrency), and whether endpoints may be on private addresses.';

-- Up to p_max visible messages of an endpoint's queue at p_now, made invisible for p_vt:
-- pgmq.read's statement on the time given. Only this statement is dynamic (the queue's
-- name), so the claim's own query keeps its cached plan.
CREATE OR REPLACE FUNCTION core.read_event_queue(p_queue text, p_max integer, p_vt interval, p_now timestamptz)
RETURNS TABLE (msg_id bigint, event_id bigint)
LANGUAGE plpgsql ROWS 64 SET search_path = '' AS $$
BEGIN
    RETURN QUERY EXECUTE format(
        'WITH cte AS (SELECT q.msg_id FROM pgmq.%1$I q WHERE q.vt <= $1 ORDER BY q.msg_id LIMIT $2 FOR UPDATE SKIP LOCKED)
         UPDATE pgmq.%1$I q SET last_read_at = $1, vt = $1 + $3, read_ct = q.read_ct + 1
         FROM cte WHERE q.msg_id = cte.msg_id
         RETURNING q.msg_id, (q.message->>''e'')::bigint', pgmq.format_table_name(p_queue, 'q'))
    USING p_now, p_max, p_vt;
END
$$;

-- Each endpoint's lane in turn (least recently claimed first), skipping those backing off
-- after a failure and those p_busy names (the worker's lanes that are full): up to four
-- times the lane concurrency of its oldest visible deliveries, or one as a probe when it has
-- been failing. A slow or dead endpoint thus holds at most its own lane.
CREATE OR REPLACE FUNCTION api.claim_events(p_worker text, p_max integer, p_busy bigint[] DEFAULT '{}',
                                            p_now timestamptz DEFAULT NULL) RETURNS SETOF api.claimed_event
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.claim_events(text, integer, bigint[], timestamptz) IS
    'Claims up to p_max outbound event deliveries at p_now (NULL: the clock), lane by lane (one lane an endpoint, least recently claimed first, none of p_busy, none backing off after a failure): each with its endpoint''s URL and secret (for the worker''s signature; no client role may call this) and the exact body to POST. An unreported claim comes back after the delivery timeout.';

-- Results: [{"endpoint_id", "event_id", "msg_id", "ok", "http_status", "error"}]. A success
-- is delivered and leaves the queue; a failure is retried after core.event_backoff of its
-- attempts, unless its retry window has passed: then it is dead (and so is every pending
-- delivery of that endpoint whose window has passed). An endpoint with a success is
-- healthy again; one with failures only backs off (core.event_backoff of its failures).
CREATE OR REPLACE FUNCTION api.report_events(p_results jsonb, p_now timestamptz DEFAULT NULL)
RETURNS api.events_reported
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
$$;
COMMENT ON FUNCTION api.report_events(jsonb, timestamptz) IS
    'Takes the worker''s delivery results at p_now (NULL: the clock): delivered ones leave the queue; failed ones are retried after core.settings.event_backoff_s, or dead-lettered once their retry window (event_retry_window_s from creation or replay) has passed; an endpoint with only failures backs off. Returns how many were delivered, retried and dead.';

-- Retention (pg_cron, daily): delivered and dead events older than event_retention_days,
-- and events of endpoints or tenants since deleted. Returns the events deleted.
CREATE OR REPLACE FUNCTION core.prune_events(p_now timestamptz DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
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

REVOKE ALL ON FUNCTION api.create_event_endpoint(bigint, text, text[], text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.event_endpoints(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.delete_event_endpoint(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.test_event_endpoint(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.outbound_events(bigint, bigint, text, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.replay_event(bigint, bigint, bigint, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.event_policy() FROM PUBLIC;
REVOKE ALL ON FUNCTION api.claim_events(text, integer, bigint[], timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.report_events(jsonb, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.create_event_endpoint(bigint, text, text[], text, text) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.event_endpoints(bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.delete_event_endpoint(bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.test_event_endpoint(bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.outbound_events(bigint, bigint, text, bigint, integer) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.replay_event(bigint, bigint, bigint, timestamptz) TO pgwa_api;
-- The secret leaves the database only through the claim, to the worker.
GRANT EXECUTE ON FUNCTION api.event_policy() TO pgwa_worker;
GRANT EXECUTE ON FUNCTION api.claim_events(text, integer, bigint[], timestamptz) TO pgwa_worker;
GRANT EXECUTE ON FUNCTION api.report_events(jsonb, timestamptz) TO pgwa_worker;
