-- Segments: saved filters over a tenant's contacts, their live count, and campaigns made
-- from a segment (or tags, or an inline filter) or from another campaign's recipients
-- (retargeting). A campaign made here hands the compiled selection to core.new_campaign,
-- the body of api.create_campaign, which reads the contacts straight into the campaign
-- (their phones are already E.164 and they are the list, so nothing is staged,
-- normalised again or upserted): it gets every check create_campaign makes, and nothing
-- is left behind on error.
--
-- The filter grammar (a JSON object; every node has exactly one of these keys):
--   {"all": [node, ...]}            every node holds (1 to 100 nodes)
--   {"any": [node, ...]}            at least one holds
--   {"not": node}
--   {"tag": "vip"}                  the contact has the tag
--   {"field": "city", "op": "eq", "value": "Paris"}
--        a custom field (api.define_contact_field); op by the field's type:
--        text: eq, ne, contains (case-insensitive), exists; number and date: eq, ne, lt,
--        gt, lte, gte, exists; boolean: eq, ne, exists. exists takes "value": true|false
--        (default true); ne holds for a contact without a value too.
--   {"opted_out": true|false}
--   {"last_inbound_at": {"within": "7 days"}}   an interval before p_now; or
--        {"before": timestamp}, {"after": timestamp}, {"exists": true|false}
--   {"campaign": 42, "event": "delivered"}
--        the contact's message of campaign 42 (the tenant's) was: messaged (queued at
--        all), sent, delivered, read, replied or failed; negate with "not".
--
-- Compiled, each time it is used, by core.compile_segment into a boolean SQL expression
-- over core.contacts c, built from fixed fragments: every value of the filter (a tag, a
-- field's name, a constant, a time, a campaign id) is an element of one of four arrays
-- passed with EXECUTE ... USING ($1 texts, $2 numbers, $3 times, $4 campaign ids), and
-- the fragments name only positions in them. No text of a filter ever enters the SQL.

-- The expression for one node, appended to p_acc's arrays; p_path names the node in
-- errors (filter.all[2].value). Raises PW132 for a node outside the grammar, PW233 for a
-- field the tenant has not defined, PW201 for another tenant's (or no) campaign.
CREATE OR REPLACE FUNCTION core.compile_segment_node(
    p_tenant_id bigint, p_node jsonb, p_path text, p_now timestamptz, p_depth integer, p_acc core.compiled_segment)
RETURNS core.compiled_segment
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
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
$$;

-- A filter compiled for core.contacts c (see the grammar above). p_now anchors "within".
CREATE OR REPLACE FUNCTION core.compile_segment(p_tenant_id bigint, p_filter jsonb, p_now timestamptz DEFAULT NULL)
RETURNS core.compiled_segment
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
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

-- The filter to use: a saved segment's, an inline one, or "any of these tags"; exactly one.
CREATE OR REPLACE FUNCTION core.segment_filter(p_tenant_id bigint, p_segment_id bigint, p_filter jsonb, p_tags text[])
RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
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

-------------------------------------------------------------------------------
-- Saved segments
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.save_segment(p_tenant_id bigint, p_name text, p_filter jsonb, p_segment_id bigint DEFAULT NULL)
RETURNS api.segment
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.save_segment(bigint, text, jsonb, bigint) IS
    'Saves a segment (a named filter over the tenant''s contacts; grammar in db/functions/segments.sql), or with p_segment_id replaces one. Returns it. Raises PW100 for a bad name, PW132 for a filter outside the grammar (naming the condition''s path), PW233 for an undefined field, PW201 for an unknown campaign, PW232 when p_segment_id is not the tenant''s, PW302 for a name in use.';

CREATE OR REPLACE FUNCTION api.segments(p_tenant_id bigint) RETURNS SETOF api.segment
LANGUAGE sql SECURITY DEFINER STABLE SET search_path = '' AS $$
    -- segments_tenant_segment.
    SELECT s.segment_id, s.name, s.filter, s.created_at, s.updated_at
    FROM core.segments s WHERE s.tenant_id = p_tenant_id ORDER BY s.segment_id
$$;
COMMENT ON FUNCTION api.segments(bigint) IS 'Lists the tenant''s saved segments with their filters, oldest first.';

CREATE OR REPLACE FUNCTION api.delete_segment(p_tenant_id bigint, p_segment_id bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    DELETE FROM core.segments WHERE segment_id = p_segment_id AND tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'segment % not found', p_segment_id USING ERRCODE = 'PW232',
            HINT = 'List the tenant''s segments with api.segments().';
    END IF;
    RETURN p_segment_id;
END
$$;
COMMENT ON FUNCTION api.delete_segment(bigint, bigint) IS
    'Deletes a saved segment (campaigns made from it keep their recipients); returns its id. Raises PW232 when not found.';

CREATE OR REPLACE FUNCTION api.segment_count(
    p_tenant_id   bigint,
    p_segment_id  bigint DEFAULT NULL,
    p_filter      jsonb DEFAULT NULL,
    p_tags        text[] DEFAULT NULL,
    p_now         timestamptz DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
DECLARE
    v core.compiled_segment := core.compile_segment(p_tenant_id, core.segment_filter(p_tenant_id, p_segment_id, p_filter, p_tags), p_now);
    v_count bigint;
BEGIN
    EXECUTE 'SELECT count(*) FROM core.contacts c WHERE c.tenant_id = $5 AND ' || v.sql
        INTO v_count USING v.texts, v.numbers, v.times, v.ids, p_tenant_id;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION api.segment_count(bigint, bigint, jsonb, text[], timestamptz) IS
    'Counts the tenant''s contacts that a segment matches now: a saved one (p_segment_id), an inline filter, or contacts with any of p_tags (exactly one). Opted-out contacts count unless the filter excludes them (a campaign skips them). Raises PW100 unless exactly one source is given, PW132/PW233/PW201 for a bad filter, PW232 for an unknown segment.';

-------------------------------------------------------------------------------
-- Campaigns from segments, and retargeting
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.create_campaign_from_segment(
    p_tenant_id     bigint,
    p_number_id     bigint,
    p_name          text,
    p_templates     jsonb,
    p_segment_id    bigint DEFAULT NULL,
    p_filter        jsonb DEFAULT NULL,
    p_tags          text[] DEFAULT NULL,
    p_scheduled_at  timestamptz DEFAULT NULL,
    p_start         boolean DEFAULT false,
    p_on_invalid    text DEFAULT 'skip',
    p_now           timestamptz DEFAULT NULL
) RETURNS api.campaign_created
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' SET client_min_messages = warning SET work_mem = '256MB' AS $$
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
$$;
COMMENT ON FUNCTION api.create_campaign_from_segment(bigint, bigint, text, jsonb, bigint, jsonb, text[], timestamptz, boolean, text, timestamptz) IS
    'Creates a campaign, in one transaction, for the contacts a segment matches at that moment (a saved segment, an inline filter, or contacts with any of p_tags: exactly one): reads them (phone, name, attributes, so template parameters map to fields and columns) as api.create_campaign reads a list, skipping opted-out contacts and, with p_on_invalid skip (the default), contacts lacking a mapped value. Contacts added later are not in it. Returns what api.create_campaign returns. Raises what api.create_campaign and api.segment_count raise, and PW101 when no contact with a phone matches; nothing is left behind on error.';

-- Which of a campaign's messages a retarget picks, as a condition on core.outbound_messages
-- o. Messages still waiting or in flight are never picked: they may yet arrive.
CREATE OR REPLACE FUNCTION core.retarget_condition(p_who text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT '(o.state NOT IN (''queued'', ''in_flight'') AND ' || CASE p_who
        WHEN 'failed' THEN 'o.state = ''failed'''
        WHEN 'not_delivered' THEN 'NOT (o.state IN (''delivered'', ''read'') OR coalesce(o.delivered_at, o.read_at) IS NOT NULL)'
        WHEN 'not_read' THEN 'NOT (o.state = ''read'' OR o.read_at IS NOT NULL)'
        WHEN 'not_replied' THEN 'o.replied_at IS NULL' END || ')'
$$;

CREATE OR REPLACE FUNCTION api.retarget_campaign(
    p_tenant_id     bigint,
    p_campaign_id   bigint,
    p_who           text,
    p_name          text DEFAULT NULL,
    p_templates     jsonb DEFAULT NULL,
    p_scheduled_at  timestamptz DEFAULT NULL,
    p_start         boolean DEFAULT false,
    p_number_id     bigint DEFAULT NULL,
    p_on_invalid    text DEFAULT 'skip'
) RETURNS api.campaign_created
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' SET client_min_messages = warning SET work_mem = '256MB' AS $$
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
$$;
COMMENT ON FUNCTION api.retarget_campaign(bigint, bigint, text, text, jsonb, timestamptz, boolean, bigint, text) IS
    'Creates a new campaign, in one transaction, for the recipients of campaign p_campaign_id who failed, were not delivered, did not read or did not reply (p_who; messages still queued or in flight are never picked), with the same templates and mapping unless p_templates is given (mapped columns come from the contacts'' current attributes), from the same number unless p_number_id, now (p_start), later (p_scheduled_at) or as a draft. Returns what api.create_campaign returns. Raises PW201 when the campaign is not the tenant''s, PW100 for a bad p_who, PW101 when no recipient fits, and what api.create_campaign raises; nothing is left behind on error.';

-------------------------------------------------------------------------------
-- The per-recipient campaign report
-------------------------------------------------------------------------------

-- A text value as one CSV field (always quoted; null is empty), for report lines.
CREATE OR REPLACE FUNCTION core.csv_text(p_expr text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT format('coalesce(''"'' || replace(%s, ''"'', ''""'') || ''"'', '''')', p_expr)
$$;

-- A timestamp as ISO 8601 in UTC, whatever the session's time zone.
CREATE OR REPLACE FUNCTION core.iso_time(p_expr text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT format('to_char(%s AT TIME ZONE ''UTC'', ''YYYY-MM-DD"T"HH24:MI:SS.US"Z"'')', p_expr)
$$;

CREATE OR REPLACE FUNCTION api.open_campaign_recipients(
    p_tenant_id    bigint,
    p_campaign_id  bigint,
    p_format       text DEFAULT 'csv',
    p_cursor       text DEFAULT 'campaign_recipients'
) RETURNS refcursor
-- Planned for the whole result, not the first 10% a cursor is planned for by default: a
-- report is read to its end (hash joins over a whole campaign, not a walk of an index).
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' SET cursor_tuple_fraction = 1 AS $$
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
$$;
COMMENT ON FUNCTION api.open_campaign_recipients(bigint, bigint, text, text) IS
    'Opens, in the caller''s transaction, the cursor p_cursor over every recipient of a campaign, one text line each: p_format csv (a header line first; text fields quoted, times ISO 8601 UTC) or json (one object per line): outbound and contact ids, phone, name, template, final state, replied, attempts, Meta error code, title and detail, and the queued, accepted, sent, delivered, read, failed and replied times. FETCH from it to stream the report in constant memory. Returns the cursor''s name. Raises PW100 for a bad format or cursor name, PW201 when the campaign is not the tenant''s.';

REVOKE ALL ON FUNCTION api.save_segment(bigint, text, jsonb, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.segments(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.delete_segment(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.segment_count(bigint, bigint, jsonb, text[], timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.create_campaign_from_segment(bigint, bigint, text, jsonb, bigint, jsonb, text[], timestamptz, boolean, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.retarget_campaign(bigint, bigint, text, text, jsonb, timestamptz, boolean, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.open_campaign_recipients(bigint, bigint, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.save_segment(bigint, text, jsonb, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.segments(bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.delete_segment(bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.segment_count(bigint, bigint, jsonb, text[], timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.create_campaign_from_segment(bigint, bigint, text, jsonb, bigint, jsonb, text[], timestamptz, boolean, text, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.retarget_campaign(bigint, bigint, text, text, jsonb, timestamptz, boolean, bigint, text) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.open_campaign_recipients(bigint, bigint, text, text) TO pgwa_api;
