-- Webhooks: ingestion (the request path) and set-based processing (the worker).
--
--   POST /webhooks/whatsapp ──> api.ingest_webhooks(payloads)  one INSERT per group commit
--                                   │ pgmq queue 'webhooks' (NOTIFY pgmq.q_webhooks.INSERT)
--   worker/webhooks.py ────────> api.process_webhooks(max)     one transaction per batch
--        core.apply_statuses         status_events, outbound state, campaign counters
--        core.apply_inbound          contacts, 24-hour window, inbox, reply attribution
--        core.apply_account_updates  templates, number quality and pace, portfolio tiers, bans,
--                                    marketing preferences, account notifications
--   then pgmq.archive (history), or the 'webhooks_dead' queue with the reason.

-------------------------------------------------------------------------------
-- Ingestion
-------------------------------------------------------------------------------

-- Who signed a payload: the salted sha256 of a number's own app secret (the platform's
-- WHATSAPP_APP_SECRET signs with no signer). Salted, so that a queue row or a log line
-- that shows a signer reveals nothing a dictionary could turn back into the secret.
CREATE OR REPLACE FUNCTION core.app_signer(p_app_secret text) RETURNS text
LANGUAGE sql STABLE SET search_path = '' AS $$
    SELECT encode(pg_catalog.sha256(convert_to(s.signer_salt || p_app_secret, 'UTF8')), 'hex')
    FROM core.settings s
$$;

CREATE OR REPLACE FUNCTION api.webhook_signers() RETURNS SETOF api.webhook_signer
LANGUAGE sql SECURITY DEFINER STABLE SET search_path = '' AS $$
    SELECT d.app_secret, core.app_signer(d.app_secret), d.waba_ids
    FROM (SELECT n.app_secret, array_agg(DISTINCT n.waba_id ORDER BY n.waba_id) AS waba_ids
          FROM core.wa_numbers n
          WHERE n.app_secret IS NOT NULL AND n.app_secret <> ''
          GROUP BY n.app_secret) d
$$;
COMMENT ON FUNCTION api.webhook_signers() IS
    'The app secrets registered with numbers, each with its signer and the WABAs of its numbers: the webhook receiver checks X-Hub-Signature-256 against these (after WHATSAPP_APP_SECRET) and stores the signer of the one that verified a payload, which then speaks only for that secret''s numbers. For the receiver only; never shown.';
REVOKE ALL ON FUNCTION api.webhook_signers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.webhook_signers() TO pgwa_api;

CREATE OR REPLACE FUNCTION api.ingest_webhooks(p_payloads jsonb[], p_signers text[] DEFAULT NULL)
RETURNS bigint[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
$$;
COMMENT ON FUNCTION api.ingest_webhooks(jsonb[], text[]) IS
    'Enqueue signature-checked webhook payloads (JSON objects) in the webhooks queue, in one statement, each with the signer of the number app secret that verified it (null: the platform''s secret); returns their queue ids. Raises PW105 if one is not a JSON object, PW100 for a malformed signer.';
REVOKE ALL ON FUNCTION api.ingest_webhooks(jsonb[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.ingest_webhooks(jsonb[], text[]) TO pgwa_api;

CREATE OR REPLACE FUNCTION api.ingest_webhook(p_payload jsonb, p_signer text DEFAULT NULL) RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = '' AS $$
    SELECT (api.ingest_webhooks(ARRAY[p_payload], ARRAY[p_signer]))[1]
$$;
COMMENT ON FUNCTION api.ingest_webhook(jsonb, text) IS
    'Enqueue one signature-checked webhook payload with its signer (null: the platform''s app secret); returns its queue id. The single form of api.ingest_webhooks; raises PW105 if it is not a JSON object.';
REVOKE ALL ON FUNCTION api.ingest_webhook(jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.ingest_webhook(jsonb, text) TO pgwa_api;

-- A signed body the queue cannot hold as it is: kept byte for byte, and, when the
-- receiver could repair it (p_repaired: the same JSON with \u0000 and lone surrogates
-- replaced by U+FFFD), the repaired copy is queued for processing as usual.
CREATE OR REPLACE FUNCTION api.keep_raw_webhook(p_body bytea, p_signer text, p_reason text,
                                                p_repaired jsonb DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.keep_raw_webhook(bytea, text, text, jsonb) IS
    'Keeps a signed webhook body that jsonb cannot hold or that is not a JSON object, byte for byte (core.webhook_raw), and queues p_repaired (when it is a JSON object) for processing with the same signer. Returns the raw row''s id. Raises PW100 for a null body.';
REVOKE ALL ON FUNCTION api.keep_raw_webhook(bytea, text, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.keep_raw_webhook(bytea, text, text, jsonb) TO pgwa_api;

-------------------------------------------------------------------------------
-- Parsing helpers
-------------------------------------------------------------------------------

-- Meta's Unix timestamps arrive as strings ("1750857384") or numbers; null when absent
-- or not a timestamp, so that a malformed one never fails a batch.
CREATE OR REPLACE FUNCTION core.unix_ts(p_value text) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT CASE WHEN p_value ~ '^[0-9]{1,11}$' THEN pg_catalog.to_timestamp(p_value::double precision) END
$$;

-- Every change of a batch of payloads, flattened: one row per entry[].changes[] of a
-- whatsapp_business_account payload, with the signer of the payload (null: the
-- platform's app). Anything else is skipped (it stays in the archive).
CREATE OR REPLACE FUNCTION core.flatten_webhooks(p_payloads jsonb[], p_signers text[] DEFAULT NULL)
RETURNS SETOF core.webhook_change
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT p.ord::integer, e.value->>'id', core.unix_ts(e.value->>'time'), c.value->>'field',
           c.value->'value'->'metadata'->>'phone_number_id', c.value->'value', p.signer
    FROM unnest(p_payloads, p_signers) WITH ORDINALITY AS p(payload, signer, ord)
    CROSS JOIN LATERAL jsonb_array_elements(p.payload->'entry') AS e
    CROSS JOIN LATERAL jsonb_array_elements(e.value->'changes') AS c
    WHERE p.payload->>'object' = 'whatsapp_business_account'
$$;

-- The changes a payload's signer may speak for. The platform's app (no signer) speaks
-- for every number; a number's own app only for the WABAs (entry[].id) and numbers
-- (metadata.phone_number_id) registered with that same secret, both on one row, so a
-- payload naming its own WABA and another tenant's number is dropped too. What is
-- dropped is counted into one operator notification (no tenant) per signer and hour.
CREATE OR REPLACE FUNCTION core.authorised_changes(p_changes core.webhook_change[], OUT changes core.webhook_change[],
                                                   OUT dropped integer)
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- The text of an inbound message for the inbox and for bot matching: the body, the
-- tapped button or list row, the emoji, or a media caption.
CREATE OR REPLACE FUNCTION core.inbound_body(p_message jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
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

-------------------------------------------------------------------------------
-- Statuses
-------------------------------------------------------------------------------

-- Store the statuses of a batch once per (wamid, status) and move their messages
-- forward through core.advance_outbound (which moves the campaign counters). A status
-- is matched to its message by wamid, or else by the outbound id pgwa put in
-- biz_opaque_callback_data, which also fills in the wamid: that is how a status that
-- beats the worker's report still finds its message. Unknown statuses are kept with
-- outbound_id null for report_sends to match; a later match also claims them here.
-- Returns the number of status events newly stored.
--
-- This is the hot path (up to 1,000 statuses a webhook), so per-row work is plain
-- expressions: a call of a core function the planner does not inline costs ~10 us a row
-- (it runs its own executor on every call; saving and restoring its SET search_path is a
-- tenth of that), more than the row's insert. Hence the inline
-- timestamp parse and state mapping, and core.opaque_outbound_id (inlined: it has no SET
-- clause) only for statuses whose wamid is not known yet.
CREATE OR REPLACE FUNCTION core.apply_statuses(p_changes core.webhook_change[]) RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
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
$$;

-------------------------------------------------------------------------------
-- Inbound messages
-------------------------------------------------------------------------------

-- core.on_inbound(message ids), the hook for opt-outs, bots and the LLM hand-off, is
-- defined in bots.sql (applied before this file).

-- Store the inbound messages of a batch: upsert each sender as a contact of the number's
-- tenant (keyed by wa_id, or by the business-scoped user id when Meta sends no phone),
-- with its profile name and the 24-hour window (last_inbound_at); insert each message
-- into the inbox once per wamid; attribute replies (context.id) to the outbound message
-- they answer, setting replied_at once and moving campaign counters, aggregated.
-- Returns the number of messages newly stored.
CREATE OR REPLACE FUNCTION core.apply_inbound(p_changes core.webhook_change[]) RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
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
$$;

-------------------------------------------------------------------------------
-- Account-level updates
-------------------------------------------------------------------------------

-- The numbers an account-level change may touch: those of the WABA it came through (only
-- the one it names, when it names one), and for a change a tenant's own app signed, only
-- the numbers registered with that app's secret (the platform's app speaks for all).
CREATE OR REPLACE FUNCTION core.change_numbers(p_waba_id text, p_phone_number_id text, p_signer text)
RETURNS SETOF core.wa_numbers
LANGUAGE sql STABLE SET search_path = '' AS $$
    SELECT n.* FROM core.wa_numbers n
    WHERE n.waba_id = p_waba_id
      AND (p_phone_number_id IS NULL OR n.phone_number_id = p_phone_number_id)
      AND (p_signer IS NULL OR (n.app_secret <> '' AND core.app_signer(n.app_secret) = p_signer))
$$;

-- The template a template webhook names: one of the WABA the change came through
-- (whatever id it names), by Meta's id or by name and language (Meta's examples write
-- en-US, its API en_US), of a tenant with a number the change may touch.
CREATE OR REPLACE FUNCTION core.change_templates(p_waba_id text, p_signer text, p_value jsonb)
RETURNS SETOF core.templates
LANGUAGE sql STABLE SET search_path = '' AS $$
    SELECT t.* FROM core.templates t
    WHERE t.waba_id = p_waba_id
      AND (t.meta_template_id = p_value->>'message_template_id'
           OR (t.name = p_value->>'message_template_name'
               AND t.language IN (p_value->>'message_template_language',
                                  replace(p_value->>'message_template_language', '-', '_'))))
      AND EXISTS (SELECT 1 FROM core.change_numbers(p_waba_id, NULL, p_signer) n WHERE n.tenant_id = t.tenant_id)
$$;

-- Set the tiers webhooks name, per portfolio the newest, through core.set_tier (which
-- releases messages that waited for the budget), unless the portfolio already holds a
-- newer event's tier. Returns the portfolios whose tier changed.
CREATE OR REPLACE FUNCTION core.apply_tiers(p_portfolio_ids bigint[], p_tiers text[], p_event_at timestamptz[])
RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- Wake whoever shows these tenants' notifications, as core.notify does.
CREATE OR REPLACE FUNCTION core.wake_notified(p_tenant_ids bigint[]) RETURNS void
LANGUAGE plpgsql SET search_path = '' AS $$
BEGIN
    PERFORM pg_notify('pgwa_notification', d.t::text)
    FROM (SELECT DISTINCT t FROM unnest(p_tenant_ids) t WHERE t IS NOT NULL) d;
END
$$;

-- message_template_status_update: a template takes the status of its newest event (an
-- older one changes nothing). REINSTATED and UNARCHIVED make it APPROVED again; FLAGGED
-- (at risk of a pause) changes no status and warns. A REJECTED template keeps Meta's
-- reason. PAUSED, REJECTED, DISABLED, ARCHIVED, PENDING_DELETION and DELETED raise a
-- notification and pause the scheduled and running campaigns that send the template
-- (core.pause_template_campaigns); APPROVED again tells the campaigns paused meanwhile
-- that they can be resumed (never resumed here); an approval after review is news.
CREATE OR REPLACE FUNCTION core.apply_template_statuses(p_changes core.webhook_change[]) RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- template_category_update. An impending change (correct_category: Meta recategorises
-- the template within 24 hours; new_category is still the current one) warns the tenant;
-- a completed one (previous_category -> new_category) sets the template's category
-- (keeping the one before in previous_category), which the next claim reads (a MARKETING template skips contacts who stopped marketing
-- messages), and warns the tenant and every unfinished campaign that sends the template.
CREATE OR REPLACE FUNCTION core.apply_category_updates(p_changes core.webhook_change[]) RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- The newest phone_number_quality_update of each number in a batch (matched by its
-- display number within the WABA), and what it says: the event, the quality rating
-- (GREEN, YELLOW, RED, UNKNOWN; the retired FLAGGED and UNFLAGGED stand for RED and
-- GREEN), and the portfolio's tier in max_daily_conversations_per_business, or in
-- current_limit (until Meta drops it in February 2026) unless the event is one of the
-- retired quality events, whose limit was the number's own.
CREATE OR REPLACE FUNCTION core.quality_events(p_changes core.webhook_change[])
RETURNS TABLE (number_id bigint, tenant_id bigint, portfolio_id bigint, display text, entry_at timestamptz,
               v jsonb, event text, rating text, tier text)
LANGUAGE sql STABLE SET search_path = '' AS $$
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

-- phone_number_quality_update (reference §3.1, §3.3). THROUGHPUT_UPGRADE: the number may
-- send 1,000 messages a second, so throughput_mps rises at once (rate_mps, the AIMD pace,
-- then grows to it with the next clean reports, core.report_pace, measured from the
-- upgrade when it has never changed). A tier sets the
-- number's portfolio's (core.apply_tiers). A rating sets the number's. Alerts, once per
-- event: RED or FLAGGED critical; DOWNGRADE or a lower tier a warning; UPGRADE,
-- THROUGHPUT_UPGRADE or a higher tier info. An event older than the number's newest
-- changes nothing and raises nothing (a throughput upgrade still applies: it is never
-- taken back).
CREATE OR REPLACE FUNCTION core.apply_quality_updates(p_changes core.webhook_change[]) RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- business_capability_update (reference §3.3): max_daily_conversations_per_business
-- (users, -1 for unlimited; max_daily_conversation_per_phone until February 2026) sets
-- the tier of the portfolios of the WABA the entry came through (core.apply_tiers). The
-- change, with the other capabilities it carries (max_phone_numbers_per_business,
-- max_phone_numbers_per_waba), is told to the tenant once: a lower limit as a warning,
-- anything else as info; a limit older than the portfolio's newest changes and tells nothing.
CREATE OR REPLACE FUNCTION core.apply_capability_updates(p_changes core.webhook_change[]) RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- account_update: every event is told to the tenant of the WABA it came through, once.
-- Critical: ACCOUNT_VIOLATION, ACCOUNT_RESTRICTION, DISABLED_UPDATE (a ban, or one
-- scheduled), ACCOUNT_DELETED, ACCOUNT_OFFBOARDED, PARTNER_REMOVED,
-- PARTNER_APP_UNINSTALLED; a warning: a partner-led business verification not approved;
-- info: the rest (VERIFIED_ACCOUNT, PARTNER_ADDED, PARTNER_APP_INSTALLED,
-- BUSINESS_PRIMARY_LOCATION_COUNTRY_UPDATE, AUTH_INTL_PRICE_ELIGIBILITY_UPDATE,
-- VOLUME_BASED_PRICING_TIER_UPDATE, MM_LITE_TERMS_SIGNED, ACCOUNT_RECONNECTED, a
-- reinstatement, events Meta adds later). A DISABLED_UPDATE whose ban state is DISABLE
-- pauses the WABA's numbers (paused_reason 'waba_disabled: ...': api.claim_sends skips
-- them); REINSTATE lifts that pause and no other. A ban event older than a number's
-- newest changes nothing there. Returns the numbers paused or resumed.
CREATE OR REPLACE FUNCTION core.apply_account_events(p_changes core.webhook_change[]) RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- The newest marketing preference of each user in a batch of user_preferences changes,
-- for the tenant of the number the change came through (never another tenant's): stop
-- or resume, at the preference's own timestamp.
CREATE OR REPLACE FUNCTION core.marketing_preferences(p_changes core.webhook_change[])
RETURNS TABLE (tenant_id bigint, wa_id text, stop boolean, at timestamptz)
LANGUAGE sql STABLE SET search_path = '' AS $$
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
$$;

-- user_preferences: a user stopped or resumed marketing messages in WhatsApp's settings.
-- A stop sets the contact's marketing_stopped_at (creating the contact, so that a later
-- campaign skips it too): marketing templates skip it (core.cancel_opted_out), utility
-- ones do not. A resume clears it, unless it was set after the resume (an error 131050
-- since); a stop older than the contact's last resume changes nothing. Nothing is
-- notified: these are users' choices, not incidents. Returns the contacts changed.
CREATE OR REPLACE FUNCTION core.apply_user_preferences(p_changes core.webhook_change[]) RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- Apply the account-level fields of a batch, one function per field:
--   message_template_status_update  core.apply_template_statuses   a template's status
--   template_category_update        core.apply_category_updates    a template's category
--   message_template_quality_update core.apply_template_quality    a template's quality (templates.sql)
--   phone_number_quality_update     core.apply_quality_updates     rating, 1,000 msg/s, tier
--   business_capability_update      core.apply_capability_updates  the portfolio's tier
--   account_update                  core.apply_account_events      alerts; a ban pauses numbers
--   user_preferences                core.apply_user_preferences    marketing stop / resume
-- Each touches only rows of the WABA (and number) a change came through, and for a change
-- signed by a tenant's own app only that app's numbers (core.change_numbers). An event
-- older than what a row already holds changes nothing there (Meta retries for 7 days, in
-- no order); notifications carry a key from the event, so a redelivered webhook raises
-- nothing twice. Returns the rows changed.
CREATE OR REPLACE FUNCTION core.apply_account_updates(p_changes core.webhook_change[]) RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
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

-------------------------------------------------------------------------------
-- Processing
-------------------------------------------------------------------------------

-- Everything a batch of payloads changes, set-based: statuses, inbound messages,
-- account-level updates, each only for the numbers the payload's signer speaks for.
-- Raises on a payload it cannot process; the caller isolates it.
CREATE OR REPLACE FUNCTION core.process_webhook_payloads(
    p_payloads jsonb[], p_signers text[],
    OUT status_events integer, OUT messages integer, OUT updates integer, OUT dropped integer)
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- Set aside one payload with the reason it could not be processed.
CREATE OR REPLACE FUNCTION core.dead_letter_webhook(p_msg_id bigint, p_payload jsonb, p_headers jsonb,
                                                    p_sqlstate text, p_reason text) RETURNS void
LANGUAGE sql SET search_path = '' AS $$
    SELECT pgmq.send('webhooks_dead', jsonb_build_object(
        'msg_id', p_msg_id, 'sqlstate', p_sqlstate, 'reason', p_reason, 'failed_at', now(),
        'headers', p_headers, 'payload', p_payload));
$$;

-- Process payloads in one set-based pass; if that raises, split them in halves and try
-- each (a subtransaction each), down to the single payloads that still fail, which are
-- dead-lettered with the reason and taken off the queue: one bad payload costs about
-- 2 log2(n) passes, not n, and never holds up the rest. Transient errors (deadlock,
-- serialization, lock) and cancellation (a statement timeout) are raised: the caller
-- retries. Returns the counts (payloads 0: the caller knows them).
CREATE OR REPLACE FUNCTION core.process_webhook_part(p_ids bigint[], p_payloads jsonb[], p_headers jsonb[])
RETURNS api.webhook_batch
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- Process the queued payloads with these ids (core.process_webhook_part), then archive
-- those not dead-lettered. Ids no longer queued (archived meanwhile: a claim that
-- outlived its visibility timeout was claimed and processed again elsewhere) are skipped.
-- No SKIP LOCKED: a concurrent claim's pgmq.read may hold a lock on a row it then found
-- invisible (the row lock is taken before the recheck), and skipping that row would
-- leave it for its whole visibility timeout; the wait is one claim's length, and claims
-- never wait.
CREATE OR REPLACE FUNCTION core.process_webhook_batch(p_ids bigint[]) RETURNS api.webhook_batch
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- Idle: restore the insert-notification throttle row that a crash empties (pgmq keeps
-- it UNLOGGED); 50 ms as in 0086_baseline/08_queues_and_cron.sql.
CREATE OR REPLACE FUNCTION core.restore_webhook_notify() RETURNS void
LANGUAGE sql SET search_path = '' AS $$
    INSERT INTO pgmq.notify_insert_throttle (queue_name, throttle_interval_ms)
    SELECT 'webhooks', 50
    WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                  WHERE tgrelid = 'pgmq.q_webhooks'::regclass
                    AND tgname = 'trigger_notify_queue_insert_listeners')
      AND NOT EXISTS (SELECT 1 FROM pgmq.notify_insert_throttle WHERE queue_name = 'webhooks')
    ON CONFLICT DO NOTHING;
$$;

CREATE OR REPLACE FUNCTION api.process_webhooks(p_max integer DEFAULT 100) RETURNS api.webhook_batch
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.process_webhooks(integer) IS
    'Read and process up to p_max queued webhook payloads in one transaction, set-based and idempotent under redelivery and reordering; applies each change only for the numbers its signer speaks for (dropped counts the others); archives the payloads and dead-letters any that fail (webhooks_dead, with the reason). A crash or timeout rolls the read back too: the worker uses api.claim_webhooks + api.process_claimed_webhooks, which count it. Raises PW100 for p_max outside 1..10000.';
REVOKE ALL ON FUNCTION api.process_webhooks(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.process_webhooks(integer) TO pgwa_worker;

CREATE OR REPLACE FUNCTION api.claim_webhooks(p_max integer DEFAULT 200) RETURNS api.webhook_claim
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.claim_webhooks(integer) IS
    'Claims up to p_max queued webhook payloads for api.process_claimed_webhooks, in its own transaction, so that a batch that crashes or times out still counts as an attempt: the payloads come back after webhook_claim_s, and one read more than webhook_max_attempts times is dead-lettered (webhooks_dead) instead of returned. Returns the queue ids read for the first time (fresh: process them as one batch) and those read again after a failed attempt (retried: process them one by one). Raises PW100 for p_max outside 1..10000.';
REVOKE ALL ON FUNCTION api.claim_webhooks(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.claim_webhooks(integer) TO pgwa_worker;

CREATE OR REPLACE FUNCTION api.process_claimed_webhooks(p_ids bigint[]) RETURNS api.webhook_batch
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    IF cardinality(p_ids) > 10000 THEN
        RAISE EXCEPTION 'at most 10000 payloads per call, not %', cardinality(p_ids)
            USING ERRCODE = 'PW100', HINT = 'Pass the ids one api.claim_webhooks call returned.';
    END IF;
    RETURN core.process_webhook_batch(p_ids);
END
$$;
COMMENT ON FUNCTION api.process_claimed_webhooks(bigint[]) IS
    'Processes the webhook payloads api.claim_webhooks returned, as api.process_webhooks does (signer-checked, set-based, idempotent; a payload that raises is dead-lettered with the reason), and archives them. Ids no longer queued or being processed elsewhere are skipped. Returns the counts. Raises PW100 for more than 10000 ids.';
REVOKE ALL ON FUNCTION api.process_claimed_webhooks(bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.process_claimed_webhooks(bigint[]) TO pgwa_worker;

CREATE OR REPLACE FUNCTION api.extend_webhook_claims(p_ids bigint[]) RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = '' AS $$
    WITH extended AS (
        UPDATE pgmq.q_webhooks w
        SET vt = clock_timestamp() + make_interval(secs => (SELECT s.webhook_claim_s FROM core.settings s))
        WHERE w.msg_id = ANY (p_ids)
        RETURNING 1
    )
    SELECT count(*)::integer FROM extended
$$;
COMMENT ON FUNCTION api.extend_webhook_claims(bigint[]) IS
    'Keeps claimed webhook payloads invisible for another webhook_claim_s, while the worker retries them one by one, so that no other loop claims them again meanwhile (which would spend an attempt of payloads that never failed). Returns how many were still queued.';
REVOKE ALL ON FUNCTION api.extend_webhook_claims(bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.extend_webhook_claims(bigint[]) TO pgwa_worker;

CREATE OR REPLACE FUNCTION api.fail_webhooks(p_ids bigint[], p_sqlstate text, p_reason text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.fail_webhooks(bigint[], text, text) IS
    'Records that claimed webhook payloads failed outside the database''s own error handling (their batch timed out or crashed): keeps the reason, and dead-letters those read webhook_max_attempts times; the others come back after a back-off. Returns how many were dead-lettered.';
REVOKE ALL ON FUNCTION api.fail_webhooks(bigint[], text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.fail_webhooks(bigint[], text, text) TO pgwa_worker;
