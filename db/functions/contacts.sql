-- Contacts as a managed list: typed custom fields, tags, one contact's edits and erasure,
-- search with keyset paging, a streamed CSV export, and imports that map CSV columns to
-- fields and tags. (Listing, the plain import and opt-out live in resources.sql.)

-------------------------------------------------------------------------------
-- Custom fields
-------------------------------------------------------------------------------

-- A value for a field of type p_type as stored (text and date: a JSON string, date as
-- YYYY-MM-DD; number: a JSON number; boolean: a JSON boolean), from JSON or from the
-- text a CSV gives; or value null and the problem in words. JSON null is "no value".
CREATE OR REPLACE FUNCTION core.field_value(p_type text, p_value jsonb, OUT value jsonb, OUT problem text)
LANGUAGE plpgsql IMMUTABLE SET search_path = '' AS $$
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
$$;

CREATE OR REPLACE FUNCTION api.define_contact_field(p_tenant_id bigint, p_name text, p_type text)
RETURNS api.contact_field
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
$$;
COMMENT ON FUNCTION api.define_contact_field(bigint, text, text) IS
    'Defines a custom contact field of the tenant (text, number, date or boolean); its values live in the contact''s attributes under the name, checked on every write. Idempotent for the same type. Returns the field. Raises PW100 for a bad name or type, PW205 for an unknown tenant, PW302 when the name is defined with another type.';

CREATE OR REPLACE FUNCTION api.contact_fields(p_tenant_id bigint) RETURNS SETOF api.contact_field
LANGUAGE sql SECURITY DEFINER STABLE SET search_path = '' AS $$
    SELECT f.name, f.type, f.created_at FROM core.contact_fields f WHERE f.tenant_id = p_tenant_id ORDER BY f.name
$$;
COMMENT ON FUNCTION api.contact_fields(bigint) IS 'Lists the tenant''s custom contact fields and their types, by name.';

CREATE OR REPLACE FUNCTION api.delete_contact_field(p_tenant_id bigint, p_name text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    DELETE FROM core.contact_fields WHERE tenant_id = p_tenant_id AND name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'field "%" not found', left(coalesce(p_name, ''), 80) USING ERRCODE = 'PW233',
            HINT = 'List the fields with api.contact_fields().';
    END IF;
    RETURN p_name;
END
$$;
COMMENT ON FUNCTION api.delete_contact_field(bigint, text) IS
    'Deletes a custom field''s definition; contacts keep its values as plain attributes, and segments naming it no longer compile. Returns the name. Raises PW233 when not found.';

-- p_fields ({"name": value, ...}; null removes a value) checked against the tenant's
-- field definitions: the values to merge (nulls stay, to remove), or PW233/PW133.
CREATE OR REPLACE FUNCTION core.checked_fields(p_tenant_id bigint, p_fields jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
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

-------------------------------------------------------------------------------
-- Tags
-------------------------------------------------------------------------------

-- Tags trimmed and deduplicated, or PW100 naming the bad one (p_what: which argument).
CREATE OR REPLACE FUNCTION core.clean_tags(p_tags text[], p_what text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE SET search_path = '' AS $$
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

CREATE OR REPLACE FUNCTION api.tag_contacts(
    p_tenant_id     bigint,
    p_contact_ids   bigint[],
    p_add_tags      text[] DEFAULT NULL,
    p_remove_tags   text[] DEFAULT NULL
) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.tag_contacts(bigint, bigint[], text[], text[]) IS
    'Adds p_add_tags to and removes p_remove_tags from each of the tenant''s contacts listed (up to 100,000); returns how many changed. Raises PW100 for bad tags or more than 100 tags on a contact, PW204 (tagging nothing) when an id is not the tenant''s.';

-------------------------------------------------------------------------------
-- One contact
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION core.contact_record(p_tenant_id bigint, p_contact_id bigint) RETURNS api.contact_record
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
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

CREATE OR REPLACE FUNCTION api.contact(p_tenant_id bigint, p_contact_id bigint) RETURNS api.contact_record
LANGUAGE sql SECURITY DEFINER STABLE SET search_path = '' AS $$
    SELECT core.contact_record(p_tenant_id, p_contact_id)
$$;
COMMENT ON FUNCTION api.contact(bigint, bigint) IS
    'One contact of the tenant with its fields (attributes) and tags. Raises PW204 when not found.';

CREATE OR REPLACE FUNCTION api.update_contact(
    p_tenant_id    bigint,
    p_contact_id   bigint,
    p_name         text DEFAULT NULL,
    p_fields       jsonb DEFAULT NULL,
    p_add_tags     text[] DEFAULT NULL,
    p_remove_tags  text[] DEFAULT NULL
) RETURNS api.contact_record
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.update_contact(bigint, bigint, text, jsonb, text[], text[]) IS
    'Edits one contact of the tenant: p_name (null keeps it, '''' clears it), p_fields merged into its custom field values ({"city": "Paris", "points": null}: null removes one; each checked against its field''s type), tags added and removed. Returns the contact. Raises PW204 when not found, PW100 for a bad name or tags, PW233 for an undefined field, PW133 for a value that does not fit its field''s type.';

-- Erasure of one contact: everything pgwa holds about it. Its outbound messages (and
-- their status events, by wamid), their queue messages, waiting (counted cancelled in
-- their campaigns, so that the campaigns still complete) or archived, its inbox messages
-- and conversations (which cascade from the contact, and inbound media rows with them),
-- the outbound events that name it, then the contact. Campaign counters
-- of messages already past sending are aggregates and stay as they were: a campaign's
-- funnel does not change when a recipient asks to be forgotten (api.reconcile_campaign
-- would report the difference as drift).
CREATE OR REPLACE FUNCTION api.delete_contact(p_tenant_id bigint, p_contact_id bigint) RETURNS api.contact_erased
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.delete_contact(bigint, bigint) IS
    'Erases one contact of the tenant and everything pgwa holds about it: its outbound messages and their status events, queue messages still waiting (counted cancelled, so their campaigns still complete) and archived, inbox messages (and their media rows) and conversations, and the outbound events that name it. Campaign counters of messages already sent stay (anonymous aggregates). Returns what was deleted. Raises PW204 when not found.';

-------------------------------------------------------------------------------
-- Search and export
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.search_contacts(
    p_tenant_id  bigint,
    p_phone      text DEFAULT NULL,
    p_name       text DEFAULT NULL,
    p_tag        text DEFAULT NULL,
    p_filter     jsonb DEFAULT NULL,
    p_opted_out  boolean DEFAULT NULL,
    p_before_id  bigint DEFAULT NULL,
    p_limit      integer DEFAULT 50,
    p_now        timestamptz DEFAULT NULL
) RETURNS SETOF api.contact_record
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
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
$$;
COMMENT ON FUNCTION api.search_contacts(bigint, text, text, text, jsonb, boolean, bigint, integer, timestamptz) IS
    'Searches the tenant''s contacts, newest first, by phone (any common format), a part of the name, a tag, opt-out state and a segment filter (any of them; fields by their typed operators), with keyset pagination on contact_id (p_before_id). Raises PW100 for a limit outside 1..1000, a malformed phone or long name, and what a segment filter raises (PW132, PW233, PW201).';

CREATE OR REPLACE FUNCTION api.open_contacts_export(
    p_tenant_id   bigint,
    p_segment_id  bigint DEFAULT NULL,
    p_filter      jsonb DEFAULT NULL,
    p_cursor      text DEFAULT 'contacts_export',
    p_now         timestamptz DEFAULT NULL
) RETURNS refcursor
-- Planned for the whole result, not the first 10% a cursor is planned for by default: a
-- report is read to its end (hash joins over a whole campaign, not a walk of an index).
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' SET cursor_tuple_fraction = 1 AS $$
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
$$;
COMMENT ON FUNCTION api.open_contacts_export(bigint, bigint, jsonb, text, timestamptz) IS
    'Opens, in the caller''s transaction, the cursor p_cursor over the tenant''s contacts (all, or a saved segment''s, or an inline filter''s) as CSV lines: a header, then contact_id, phone, user_id, name, tags (separated by ;), opted_out, last_inbound_at, created_at and one column per custom field. FETCH from it to stream the export in constant memory. Returns the cursor''s name. Raises PW100 for a bad cursor name, PW205 for an unknown tenant, and what a segment filter raises.';

-------------------------------------------------------------------------------
-- Imports that map columns to fields and tags
-------------------------------------------------------------------------------

-- p_mapping: {"fields": {"csv column": "field name", ...}, "tag_columns": ["interests"],
-- "tags": ["spring-fair"]}. A mapped column's value is checked against its field's type
-- and stored under the field's name (a bad value is skipped and reported, the row is
-- imported without it); a tag column's value splits on , ; or | into tags; "tags" go on
-- every imported contact. Columns not mapped stay attributes, as with api.import_contacts.
CREATE OR REPLACE FUNCTION api.import_contacts_mapped(
    p_tenant_id             bigint,
    p_mapping               jsonb,
    p_default_country_code  text DEFAULT NULL,
    p_on_invalid            text DEFAULT 'skip'
) RETURNS api.contacts_mapped_import
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' SET client_min_messages = warning SET work_mem = '256MB' AS $$
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
COMMENT ON FUNCTION api.import_contacts_mapped(bigint, jsonb, text, text) IS
    'Imports the contacts staged by api.stage_contacts as api.import_contacts does, mapping CSV columns to custom fields (p_mapping.fields: each value checked against its field''s type) and to tags (p_mapping.tag_columns split on , ; or |, and p_mapping.tags on every row). Returns api.import_contacts''s counts and invalid rows, the values skipped per row (row, column, value, reason: the row is imported without them) and how many contacts were tagged. Raises PW100 for a malformed mapping, PW233 for an undefined field, PW133 (p_on_invalid reject) for a value that does not fit, and what api.import_contacts raises.';

REVOKE ALL ON FUNCTION api.define_contact_field(bigint, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.contact_fields(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.delete_contact_field(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.tag_contacts(bigint, bigint[], text[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.contact(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.update_contact(bigint, bigint, text, jsonb, text[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.delete_contact(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.search_contacts(bigint, text, text, text, jsonb, boolean, bigint, integer, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.open_contacts_export(bigint, bigint, jsonb, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.import_contacts_mapped(bigint, jsonb, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.define_contact_field(bigint, text, text) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.contact_fields(bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.delete_contact_field(bigint, text) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.tag_contacts(bigint, bigint[], text[], text[]) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.contact(bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.update_contact(bigint, bigint, text, jsonb, text[], text[]) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.delete_contact(bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.search_contacts(bigint, text, text, text, jsonb, boolean, bigint, integer, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.open_contacts_export(bigint, bigint, jsonb, text, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.import_contacts_mapped(bigint, jsonb, text, text) TO pgwa_api;

-------------------------------------------------------------------------------
-- A contact's tenant (migration 0128: no per-row foreign key)
-------------------------------------------------------------------------------

-- Every contact's tenant exists, and stays until the contact's transaction ends: the
-- distinct tenants of the rows a statement inserted (or moved to another tenant) are
-- locked FOR KEY SHARE, in id order, once per statement, as the foreign key locked
-- them once per row; a tenant deleted meanwhile refuses the statement (23503), and a
-- deletion waits for this transaction, then deletes its contacts too.
CREATE OR REPLACE FUNCTION core.check_contact_tenants() RETURNS trigger
LANGUAGE plpgsql SET search_path = '' AS $$
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
CREATE OR REPLACE TRIGGER contacts_tenant_exists AFTER INSERT ON core.contacts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION core.check_contact_tenants();
-- A contact never changes tenant in pgwa's functions; if one did, the new tenant is
-- checked, whatever set it (a BEFORE trigger too: no column list). A row trigger, so only
-- the rows that moved are queued; their WHEN is evaluated as each row is updated.
CREATE OR REPLACE TRIGGER contacts_tenant_exists_update AFTER UPDATE ON core.contacts
    FOR EACH ROW WHEN (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id)
    EXECUTE FUNCTION core.check_contact_tenants();

-- A tenant's id never changes (the foreign key refused it while contacts had it; asking
-- whether they have it would need a snapshot that sees contacts added meanwhile).
CREATE OR REPLACE FUNCTION core.check_tenant_id_kept() RETURNS trigger
LANGUAGE plpgsql SET search_path = '' AS $$
BEGIN
    RAISE EXCEPTION 'tenant %: its tenant_id cannot change (to %)', OLD.tenant_id, NEW.tenant_id
        USING ERRCODE = '0A000', TABLE = 'tenants', COLUMN = 'tenant_id', SCHEMA = 'core',
              HINT = 'Contacts and everything else of the tenant keep its id.';
END
$$;
CREATE OR REPLACE TRIGGER tenants_keep_contacts_tenant_id BEFORE UPDATE ON core.tenants
    FOR EACH ROW WHEN (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id)
    EXECUTE FUNCTION core.check_tenant_id_kept();

-- A tenant's contacts go with it (their conversations and messages by their own keys).
-- After a TRUNCATE of the tenants no contact has one; the TRUNCATE's CASCADE, which
-- holds the tables that refer to the contacts, keeps them from being truncated here.
-- Only under READ COMMITTED: a deletion waits for the transactions adding contacts to
-- the tenant (their FOR KEY SHARE lock), and only a new snapshot sees what they added;
-- a REPEATABLE READ or SERIALIZABLE one would leave those contacts without a tenant.
CREATE OR REPLACE FUNCTION core.delete_tenant_contacts() RETURNS trigger
LANGUAGE plpgsql SET search_path = '' AS $$
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
CREATE OR REPLACE TRIGGER tenants_delete_contacts AFTER DELETE ON core.tenants
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION core.delete_tenant_contacts();
CREATE OR REPLACE TRIGGER tenants_truncate_contacts AFTER TRUNCATE ON core.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION core.delete_tenant_contacts();
