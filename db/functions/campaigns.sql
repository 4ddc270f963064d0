-- Campaigns: staging contacts, atomic creation, lifecycle, scheduling, completion.

-- E.164 digits of a phone as people type it ('+1 (415) 555-0100', '0044...', with a
-- default country code for national numbers starting with 0), or null. A single
-- expression with no SET clause, so the planner inlines it into set-based callers
-- (whose search_path is pinned); see the exemption in tests/test_catalog.py.
-- It is core.phone_from_digits with p_digits spelled out (a helper here may name only
-- pg_catalog); a set-based caller that reads many phones calls core.phone_from_digits
-- with core.phone_digits computed once per row in a subquery (OFFSET 0 keeps the
-- planner from copying the translate into every place the inlined body names it).
CREATE OR REPLACE FUNCTION core.normalize_phone(p_raw text, p_default_cc text DEFAULT NULL) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
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
$$;

-- core.normalize_phone given p_digits = core.phone_digits(p_raw). The last check is a
-- regular expression without a bounded repeat plus a length test: '^[1-9][0-9]{6,14}$'
-- costs several microseconds a row in PostgreSQL's engine (substring with it, ten),
-- which made normalising a 1,000,000-row list take seconds.
CREATE OR REPLACE FUNCTION core.phone_from_digits(p_raw text, p_digits text, p_default_cc text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
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
$$;

-- The characters of a typed phone that are not spacing or punctuation: what
-- core.phone_from_digits reads as p_digits.
CREATE OR REPLACE FUNCTION core.phone_digits(p_raw text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT pg_catalog.translate(p_raw, '+()./ -' OPERATOR(pg_catalog.||) pg_catalog.chr(9), '')
$$;

-- Why a phone was refused, in words for the row report.
CREATE OR REPLACE FUNCTION core.phone_problem(p_raw text, p_default_cc text DEFAULT NULL) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT CASE
        WHEN coalesce(btrim(p_raw), '') = '' THEN 'phone is empty'
        WHEN p_raw ~ '[^0-9+()./ \t-]' THEN 'phone has characters other than digits, spaces, +, -, ., ( and )'
        WHEN core.normalize_phone(p_raw, p_default_cc) IS NULL AND regexp_replace(p_raw, '[^0-9]', '', 'g') ~ '^0'
             AND p_default_cc IS NULL THEN 'phone is in national format; give the country code or a default one'
        WHEN core.normalize_phone(p_raw, p_default_cc) IS NULL THEN 'phone is not 7 to 15 digits with a country code'
    END
$$;

-- Prepare this session's staging table for a contact upload and empty it. The client
-- then streams rows with COPY pg_temp.staged_contacts (row_no, phone, name, attributes)
-- FROM STDIN, and api.create_campaign / api.import_contacts read them. Returns its name.
-- The table is created by this function's owner, the owner of the functions that read
-- it, and pgwa_api gets INSERT on it alone: a caller can COPY rows in but never attach a
-- trigger, rule or policy that the owner's reads would run (and callers may not create
-- temporary objects at all, db/migrations/0086_baseline/09_roles.sql). core.staged_count checks it again.
CREATE OR REPLACE FUNCTION api.stage_contacts() RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' SET client_min_messages = warning AS $$
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
COMMENT ON FUNCTION api.stage_contacts() IS
    'Creates (or empties) this session''s staging table pg_temp.staged_contacts(row_no, phone, name, attributes jsonb), owned by the functions'' owner and open to the caller for INSERT (COPY) only, for the contact rows that api.create_campaign or api.import_contacts then consume. Returns the table name. Raises PW403 when a pg_temp.staged_contacts it did not make is in the way.';

-- Whether pg_temp.staged_contacts, if there is one, is the table api.stage_contacts made:
-- a plain table of this session's, owned by the functions' owner, with no trigger, rule,
-- row-level security or inheritance. The functions that read it run as that owner, so a
-- caller's view or a table with a trigger there would run the caller's code with the
-- owner's rights: it is refused before anything reads it.
CREATE OR REPLACE FUNCTION core.check_staging_table() RETURNS void
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
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

-- How many contact rows this session staged; raises when there are none, or when the
-- staging table is not the one api.stage_contacts made.
CREATE OR REPLACE FUNCTION core.staged_count() RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- Check the rows staged by api.stage_contacts: normalise phones (with a default country
-- code for national numbers), find the invalid rows (a bad phone, or an empty value in
-- one of p_columns), and count duplicate phones. The rows land in pg_temp.contact_rows
-- (row_no, raw_phone, wa_id, name, attributes, problem) for the caller. With p_on_invalid
-- 'reject', any invalid row raises PW101 naming the first rows, value and reason.
CREATE OR REPLACE FUNCTION core.check_staged_contacts(
    p_default_cc text, p_on_invalid text, p_columns text[] DEFAULT '{}', p_count_duplicates boolean DEFAULT true,
    OUT invalid integer, OUT invalid_rows jsonb, OUT duplicates integer, OUT staged integer)
LANGUAGE plpgsql SET search_path = '' SET client_min_messages = warning AS $$
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
$$;

-- A mapping source of one template parameter, checked: an object with exactly one of
-- p_allowed's keys (besides "filename" where p_allowed has it), whose value is a
-- non-empty string ("location" an object). p_where names the template and the parameter.
CREATE OR REPLACE FUNCTION core.check_source(p_where text, p_src jsonb, p_allowed text[], p_hint text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = '' AS $$
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

-- One parameter of Meta's send request from its mapping source: p_base with the
-- constant at p_path, or, for a CSV column, a slot marker {"$slot": n, "$path": p_path}
-- that core.render_components fills with the n-th (0-based) per-row value of the queue
-- message (n: the column's place in p_columns).
CREATE OR REPLACE FUNCTION core.slot_param(p_base jsonb, p_path text[], p_src jsonb, p_columns text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT CASE WHEN p_src ? 'column'
                THEN p_base || jsonb_build_object('$slot', array_position(p_columns, p_src->>'column') - 1,
                                                  '$path', p_path::text)
                ELSE jsonb_set(p_base, p_path, p_src->'value') END
$$;

-- Check a campaign's mapping of one template (an element of api.create_campaign's
-- p_templates) against every parameter the template takes (core.template_slots), and
-- build its render skeleton: Meta's components array with the constants in place and
-- the CSV columns as slots, and the columns in slot order (the queue message's "p").
-- Raises PW102 naming the template, the component, the parameter and the fix.
CREATE OR REPLACE FUNCTION core.map_template(p_template core.templates, p_spec jsonb,
                                             OUT render jsonb, OUT columns text[])
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
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
$$;

-- The tenant's campaign, locked; another tenant's id is not found.
CREATE OR REPLACE FUNCTION core.campaign_for(p_tenant_id bigint, p_campaign_id bigint) RETURNS core.campaigns
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- How many contacts the tenant has, as the planner estimates it from the statistics
-- (no count: reading a large tenant's contacts to decide how to read them costs what
-- the choice saves). core.new_campaign decides with it how to look up a list's phones.
CREATE OR REPLACE FUNCTION core.tenant_contacts_estimate(p_tenant_id bigint) RETURNS double precision
LANGUAGE plpgsql VOLATILE SET search_path = '' AS $$
DECLARE
    v_plan jsonb;
BEGIN
    EXECUTE format('EXPLAIN (FORMAT JSON) SELECT 1 FROM core.contacts WHERE tenant_id = %L', p_tenant_id) INTO v_plan;
    RETURN (v_plan->0->'Plan'->>'Plan Rows')::double precision;
END
$$;

-- Create a campaign in one transaction, from the contacts staged by api.stage_contacts
-- (p_segment NULL) or from the tenant's contacts that p_segment (core.compile_segment's
-- output) selects, in contact_id order. p_templates is a JSON array of template
-- mappings (core.map_template): [{"name": "spring_sale", "language": "en_US", "header":
-- {"column": "photo"}, "body": {"first_name": {"column": "name"}}, "buttons": {"0":
-- {"value": "spring"}}}]; contacts are split across the templates and interleaved.
--
-- The rows go through pg_temp.campaign_sends, written once in list order with every id
-- drawn (contact ids of new contacts, outbound ids) and the variant, so that each write
-- after it (new contacts, changed contacts, outbound_messages, the queue) is one
-- statement reading it straight through. A contact already known is never locked or
-- rewritten unless the list brings it a new name or attribute; a segment's contacts are
-- the list, so they never are.
CREATE OR REPLACE FUNCTION core.new_campaign(
    p_tenant_id          bigint,
    p_number_id          bigint,
    p_name               text,
    p_templates          jsonb,
    p_on_invalid         text,
    p_scheduled_at       timestamptz,
    p_start              boolean,
    p_default_country_code text,
    p_segment            core.compiled_segment
) RETURNS api.campaign_created
LANGUAGE plpgsql SET search_path = '' SET client_min_messages = warning SET work_mem = '256MB' AS $$
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
$$;

-- Create a campaign from the staged contacts in one transaction (core.new_campaign).
CREATE OR REPLACE FUNCTION api.create_campaign(
    p_tenant_id          bigint,
    p_number_id          bigint,
    p_name               text,
    p_templates          jsonb,
    p_on_invalid         text DEFAULT 'reject',
    p_scheduled_at       timestamptz DEFAULT NULL,
    p_start              boolean DEFAULT false,
    p_default_country_code text DEFAULT NULL
) RETURNS api.campaign_created
LANGUAGE sql SECURITY DEFINER SET search_path = '' AS $$
    SELECT core.new_campaign(p_tenant_id, p_number_id, p_name, p_templates, p_on_invalid, p_scheduled_at,
                             p_start, p_default_country_code, NULL)
$$;
COMMENT ON FUNCTION api.create_campaign(bigint, bigint, text, jsonb, text, timestamptz, boolean, text) IS
    'Creates a campaign in one transaction from the contacts staged by api.stage_contacts: validates the templates and their parameter mapping (each element of p_templates: {"name", "language", "header": {"column"} | {"value": text or link} | {"media_id"} (+ "filename" for a DOCUMENT) | {"location": {latitude, longitude, name, address}}, "body": [sources] for POSITIONAL templates or {"parameter_name": source} for NAMED ones ("params": the old spelling of a positional body), "buttons": {"<index>": source} for URL suffixes, copy codes, quick-reply payloads and OTP codes (by default the body''s code)}, a source being {"column": "csv column"} or {"value": "constant"}; api.template_parameters lists what a template needs; a row whose mapped column is empty is an invalid row), normalises phones to E.164 digits, drops duplicates, skips opted-out contacts, upserts contacts and queues one rendered message per contact, interleaved across templates. Status is draft, scheduled (p_scheduled_at) or running (p_start). Returns the counts and the invalid rows. Raises PW100/PW102 on bad arguments or templates (PW102 names the template, the component, the parameter and the fix for a missing, extra or wrongly kinded parameter), PW101 on invalid rows when p_on_invalid is reject, PW202 for an unknown number; nothing is left behind on error.';

-- Lifecycle. Each checks the tenant (another tenant's id is not found), moves the
-- status, and wakes the workers where there is new work.
CREATE OR REPLACE FUNCTION api.start_campaign(p_tenant_id bigint, p_campaign_id bigint, p_at timestamptz DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.start_campaign(bigint, bigint, timestamptz) IS
    'Starts a draft or scheduled campaign now, or schedules it for p_at; returns the new status. Raises PW201 when not found, PW301 from any other status.';

CREATE OR REPLACE FUNCTION api.pause_campaign(p_tenant_id bigint, p_campaign_id bigint, p_reason text DEFAULT 'paused by operator')
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.pause_campaign(bigint, bigint, text) IS
    'Pauses a running or scheduled campaign: no further message of it is claimed (those already claimed finish). Returns the new status. Raises PW201 when not found, PW301 from any other status.';

CREATE OR REPLACE FUNCTION api.resume_campaign(p_tenant_id bigint, p_campaign_id bigint)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.resume_campaign(bigint, bigint) IS
    'Resumes a paused campaign (one paused before its scheduled time waits for it again); returns the new status. Raises PW201 when not found, PW301 when it is not paused.';

CREATE OR REPLACE FUNCTION api.cancel_campaign(p_tenant_id bigint, p_campaign_id bigint)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.cancel_campaign(bigint, bigint) IS
    'Cancels a campaign: its queued messages are withdrawn and marked cancelled (messages a worker already holds finish). Returns the new status. Raises PW201 when not found, PW301 when already completed or cancelled.';

-- Running campaigns whose every message is past sending become completed. Returns the
-- ids completed. The one completion check: report_sends, resume and the sweep call it.
-- p_now is when (NULL: now()).
CREATE OR REPLACE FUNCTION core.complete_campaigns(p_campaign_ids bigint[] DEFAULT NULL, p_now timestamptz DEFAULT NULL)
RETURNS bigint[]
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- Scheduled campaigns whose time has come start. Cheap (a partial index), so the
-- claim path calls it too, with its p_now: pg_cron's minute is then only the floor.
CREATE OR REPLACE FUNCTION core.start_due_campaigns(p_now timestamptz DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
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

-- A campaign's messages go with it (a tenant's deletion cascades to its campaigns). The
-- foreign key that did this checked every message written (migration 0118); this
-- statement-level trigger deletes them once per statement, through the index that
-- leads with campaign_id.
CREATE OR REPLACE FUNCTION core.delete_campaign_messages() RETURNS trigger
LANGUAGE plpgsql SET search_path = '' AS $$
BEGIN
    DELETE FROM core.outbound_messages o USING old_rows d WHERE o.campaign_id = d.campaign_id;
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER campaigns_delete_messages AFTER DELETE ON core.campaigns
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION core.delete_campaign_messages();

REVOKE ALL ON FUNCTION api.stage_contacts() FROM PUBLIC;
REVOKE ALL ON FUNCTION api.create_campaign(bigint, bigint, text, jsonb, text, timestamptz, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.start_campaign(bigint, bigint, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.pause_campaign(bigint, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.resume_campaign(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.cancel_campaign(bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.stage_contacts() TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.create_campaign(bigint, bigint, text, jsonb, text, timestamptz, boolean, text) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.start_campaign(bigint, bigint, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.pause_campaign(bigint, bigint, text) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.resume_campaign(bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.cancel_campaign(bigint, bigint) TO pgwa_api;
