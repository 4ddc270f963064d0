-- The dashboard's campaign screens (api/dashboard/campaigns.py; columns: 0109_dashboard_campaigns).
--
-- The builder creates a draft through api.create_campaign / api.create_campaign_from_segment
-- like the JSON API; these functions only read: one message of a campaign as its
-- recipient will see it (the first queued row, rendered exactly as api.claim_sends
-- renders it), and the campaign's failures grouped by Meta error code with an advice.

-------------------------------------------------------------------------------
-- Preview
-------------------------------------------------------------------------------

-- A template text with its placeholders ({{1}}, {{first_name}}) replaced by the text
-- parameters given: positional ones by place, named ones by parameter_name.
CREATE OR REPLACE FUNCTION core.fill_placeholders(p_text text, p_params jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = '' AS $$
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

CREATE OR REPLACE FUNCTION api.preview_campaign_message(p_tenant_id bigint, p_campaign_id bigint)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.preview_campaign_message(bigint, bigint) IS
    'One message of a campaign as its recipient sees it: the first row still queued (else the first sent), rendered as api.claim_sends renders it. Returns {to, template, language, header_kind, header_text, header_link, header_media_id, body, footer, buttons [{text, value}], components (Meta''s components array)}, with the placeholders of the header and body filled; NULL when no message is left (or housekeeping dropped the finished campaign''s queue). Raises PW201 when the tenant has no such campaign.';

-------------------------------------------------------------------------------
-- Failures, explained
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.campaign_failures(p_tenant_id bigint, p_campaign_id bigint)
RETURNS TABLE (error_code integer, title text, category text, count integer, advice text)
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.campaign_failures(bigint, bigint) IS
    'A campaign''s failed messages grouped by Meta error code, most first: the code, Meta''s title, the category, how many messages, and an advice (what it means and what to do: core.meta_error_codes.advice, else the category''s). Raises PW201 when the tenant has no such campaign.';

CREATE OR REPLACE FUNCTION api.tenant_time_zone(p_tenant_id bigint) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.tenant_time_zone(bigint) IS
    'The IANA time zone the tenant writes schedules in (api.set_tenant_time_zone; api.tenant_local_time reads a wall-clock time in it). Raises PW205 for an unknown tenant.';

-------------------------------------------------------------------------------
-- Grants
-------------------------------------------------------------------------------

REVOKE ALL ON FUNCTION api.preview_campaign_message(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.campaign_failures(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.tenant_time_zone(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.preview_campaign_message(bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.campaign_failures(bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.tenant_time_zone(bigint) TO pgwa_api;
