-- Webhooks: ingestion (the request path) and set-based processing (the worker).
--
--   POST /webhooks/whatsapp ──> api.ingest_webhooks(payloads)  one INSERT per group commit
--                                   │ pgmq queue 'webhooks' (NOTIFY pgmq.q_webhooks.INSERT)
--   worker/webhooks.py ────────> api.process_webhooks(max)     one transaction per batch
--        core.apply_statuses         status_events, outbound state, campaign counters
--        core.apply_inbound          contacts, 24-hour window, inbox, reply attribution
--        core.apply_account_updates  templates, number quality, account notifications
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
-- expressions: a call of a core function costs ~10 us a row (its SET search_path is
-- saved and restored on every call), more than the row's insert. Hence the inline
-- timestamp parse and state mapping, and core.opaque_outbound_id only for statuses
-- whose wamid is not known yet.
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

    IF v_ids IS NOT NULL THEN
        PERFORM core.advance_outbound(v_ids, v_states, v_at, v_wamids, v_codes, v_details);
        PERFORM core.stop_marketing(array_agg(f.id), array_agg(f.code), max(f.at))
        FROM unnest(v_ids, v_states, v_codes, v_at) f(id, state, code, at)
        WHERE f.state = 'failed' AND f.code IS NOT NULL
        HAVING count(*) > 0;
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
$$;

-------------------------------------------------------------------------------
-- Account-level updates
-------------------------------------------------------------------------------

-- Apply template status, phone quality and account updates. A template takes the
-- status of its newest event (older ones are ignored) and a PAUSED, REJECTED or
-- DISABLED one raises a notification; a quality update sets the number's rating; an
-- account update notifies the tenants of the WABA. Notifications carry a key from the
-- event, so a redelivered webhook raises nothing twice. Returns the rows changed.
CREATE OR REPLACE FUNCTION core.apply_account_updates(p_changes core.webhook_change[]) RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_templates integer;
    v_numbers integer;
    v_accounts integer;
    v_notified bigint[];
    v_more bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(p_changes) ch
                   WHERE ch.field IN ('message_template_status_update', 'phone_number_quality_update',
                                      'account_update')) THEN
        RETURN 0;
    END IF;

    WITH events AS (
        SELECT DISTINCT ON (t.template_id)
               t.template_id, ch.entry_at, ch.value AS v,
               CASE upper(ch.value->>'event') WHEN 'REINSTATED' THEN 'APPROVED'
                    ELSE upper(ch.value->>'event') END AS status
        FROM unnest(p_changes) ch
        -- Only a template of the WABA the entry came through, whatever id it names.
        JOIN core.templates t
          ON t.waba_id = ch.waba_id
         AND (t.meta_template_id = ch.value->>'message_template_id'
              OR (t.name = ch.value->>'message_template_name'
                  AND t.language = ch.value->>'message_template_language'))
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
    INTO v_templates, v_notified;

    WITH events AS (
        SELECT DISTINCT ON (n.number_id)
               n.number_id, n.tenant_id, ch.entry_at, ch.value AS v, upper(ch.value->>'event') AS event,
               upper(coalesce(ch.value->>'quality_rating', ch.value->>'current_quality_rating',
                              CASE upper(ch.value->>'event') WHEN 'FLAGGED' THEN 'RED'
                                                             WHEN 'UNFLAGGED' THEN 'GREEN' END)) AS rating
        FROM unnest(p_changes) ch
        JOIN core.wa_numbers n
          ON n.waba_id = ch.waba_id
         AND regexp_replace(n.display_phone_number, '[^0-9]', '', 'g')
             = regexp_replace(ch.value->>'display_phone_number', '[^0-9]', '', 'g')
        WHERE ch.field = 'phone_number_quality_update'
        ORDER BY n.number_id, ch.entry_at DESC NULLS LAST, ch.ord DESC
    ), changed AS (
        UPDATE core.wa_numbers n SET quality_rating = e.rating
        FROM events e
        WHERE n.number_id = e.number_id AND e.rating IS NOT NULL
          AND n.quality_rating IS DISTINCT FROM e.rating
        RETURNING n.number_id
    ), notified AS (
        INSERT INTO core.notifications (tenant_id, kind, severity, message, details, dedupe_key)
        SELECT e.tenant_id, 'phone_quality',
               CASE WHEN e.event = 'FLAGGED' THEN 'critical' ELSE 'warning' END,
               format('Number %s: %s (messaging limit %s)', e.v->>'display_phone_number', e.event,
                      coalesce(e.v->>'max_daily_conversations_per_business', e.v->>'current_limit', 'unchanged')),
               jsonb_build_object('number_id', e.number_id, 'event', e.v),
               md5(format('phone_quality|%s|%s|%s', e.number_id, e.entry_at, e.v))
        FROM events e
        WHERE e.event IN ('FLAGGED', 'DOWNGRADE') OR e.rating = 'RED'
        ON CONFLICT DO NOTHING
        RETURNING tenant_id
    )
    SELECT (SELECT count(*) FROM changed), (SELECT array_agg(tenant_id) FROM notified)
    INTO v_numbers, v_more;
    v_notified := v_notified || v_more;

    WITH events AS (
        SELECT DISTINCT n.tenant_id, ch.waba_id, ch.entry_at, ch.value AS v, upper(ch.value->>'event') AS event
        FROM unnest(p_changes) ch
        JOIN core.wa_numbers n ON n.waba_id = ch.waba_id
        WHERE ch.field = 'account_update'
    ), notified AS (
        INSERT INTO core.notifications (tenant_id, kind, severity, message, details, dedupe_key)
        SELECT e.tenant_id, 'account_update',
               CASE WHEN e.event IN ('DISABLED_UPDATE', 'ACCOUNT_VIOLATION', 'ACCOUNT_RESTRICTION',
                                     'ACCOUNT_DELETED', 'ACCOUNT_OFFBOARDED', 'PARTNER_REMOVED',
                                     'PARTNER_APP_UNINSTALLED')
                    THEN 'critical' ELSE 'info' END,
               format('WhatsApp Business Account %s: %s', e.waba_id, coalesce(e.event, 'update')),
               jsonb_build_object('waba_id', e.waba_id, 'event', e.v),
               md5(format('account_update|%s|%s|%s', e.waba_id, e.entry_at, e.v))
        FROM events e
        ON CONFLICT DO NOTHING
        RETURNING tenant_id
    )
    SELECT count(*), array_agg(tenant_id) INTO v_accounts, v_more FROM notified;
    v_notified := v_notified || v_more;

    -- Wake whoever shows notifications, as core.notify does.
    PERFORM pg_notify('pgwa_notification', t::text) FROM (SELECT DISTINCT unnest(v_notified) AS t) d;
    RETURN v_templates + v_numbers + v_accounts;
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
