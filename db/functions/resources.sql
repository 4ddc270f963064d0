-- What the JSON API lists and changes besides campaigns: numbers (never their secrets),
-- templates (synced from the Graph API), contacts (CSV import, opt-out), notifications,
-- and the registries a client reads once (error codes, this surface's own comments).

-------------------------------------------------------------------------------
-- Numbers
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.numbers(p_tenant_id bigint) RETURNS SETOF api.number
LANGUAGE sql SECURITY DEFINER STABLE SET search_path = '' AS $$
    SELECT n.number_id, n.phone_number_id, n.waba_id, n.display_phone_number, n.throughput_mps, n.rate_mps,
           n.quality_rating, n.paused_reason, n.app_secret IS NOT NULL, n.created_at
    FROM core.wa_numbers n WHERE n.tenant_id = p_tenant_id
    ORDER BY n.number_id
$$;
COMMENT ON FUNCTION api.numbers(bigint) IS
    'Lists the tenant''s WhatsApp numbers with their limit, current pace and quality; never the access token or the app secret (has_app_secret says whether one is set).';


CREATE OR REPLACE FUNCTION api.graph_credentials(p_tenant_id bigint, p_number_id bigint)
RETURNS api.graph_credentials
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
DECLARE
    v_number core.wa_numbers := core.number_for(p_tenant_id, p_number_id);
BEGIN
    RETURN (SELECT ROW(v_number.number_id, v_number.phone_number_id, v_number.waba_id, v_number.access_token,
                       s.graph_api_version)::api.graph_credentials
            FROM core.settings s);
END
$$;
COMMENT ON FUNCTION api.graph_credentials(bigint, bigint) IS
    'Returns what the server needs to call the Graph API for one of the tenant''s numbers (its ids, access token, API version). For the server''s own calls (template sync): never return it to a client. Raises PW202 when the tenant has no such number.';

-------------------------------------------------------------------------------
-- Templates
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.sync_templates(p_tenant_id bigint, p_waba_id text, p_templates jsonb)
RETURNS api.templates_synced
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.sync_templates(bigint, text, jsonb) IS
    'Stores a WABA''s templates as the Graph API lists them (a JSON array of Meta''s template objects) in one statement: inserts new ones, updates changed ones, keeping every component as Meta returns it with parameter_format (POSITIONAL or NAMED; inferred from the placeholders when absent), category, sub_category, status, quality_score.score, rejected_reason and previous_category, and counts their body parameters. Returns how many were received, stored and unchanged. Raises PW105 on a malformed list, PW202 when the tenant has no number on that WABA.';

CREATE OR REPLACE FUNCTION api.templates(p_tenant_id bigint, p_waba_id text DEFAULT NULL, p_status text DEFAULT NULL)
RETURNS SETOF api.template
LANGUAGE sql SECURITY DEFINER STABLE SET search_path = '' AS $$
    SELECT t.template_id, t.waba_id, t.name, t.language, t.category, t.status, t.body_param_count, t.components,
           t.meta_template_id, t.updated_at, t.parameter_format, t.sub_category, t.quality_score, t.rejected_reason,
           t.previous_category
    FROM core.templates t
    WHERE t.tenant_id = p_tenant_id
      AND (p_waba_id IS NULL OR t.waba_id = p_waba_id)
      AND (p_status IS NULL OR t.status = upper(p_status))
    ORDER BY t.name, t.language, t.template_id
$$;
COMMENT ON FUNCTION api.templates(bigint, text, text) IS
    'Lists the tenant''s message templates (optionally of one WABA or status) with their components, body parameter count, parameter_format, sub_category, quality_score, rejected_reason and previous_category; api.template_parameters describes what one needs when sent.';

CREATE OR REPLACE FUNCTION api.template_parameters(p_tenant_id bigint, p_template_id bigint)
RETURNS SETOF api.template_parameter
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.template_parameters(bigint, bigint) IS
    'Describes the parameters a template needs when sent, one row a slot in the order of Meta''s components array: component (header, body, button), index (header/body: the placeholder''s 1-based position; button: its 0-based index), parameter_name (NAMED templates), kind (text, image, video, document, location, url_suffix, coupon_code, payload, otp), required (a campaign mapping must give it; an OTP button defaults to the body''s code, a quick-reply payload is optional), Meta''s example value, and mapping (where it goes in an api.create_campaign template mapping: header, body[0], body.first_name, buttons.0). Raises PW203 when the tenant has no such template.';

-------------------------------------------------------------------------------
-- Contacts
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.import_contacts(
    p_tenant_id             bigint,
    p_default_country_code  text DEFAULT NULL,
    p_on_invalid            text DEFAULT 'skip'
) RETURNS api.contacts_imported
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' SET client_min_messages = warning AS $$
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
COMMENT ON FUNCTION api.import_contacts(bigint, text, text) IS
    'Imports the contacts staged by api.stage_contacts into the tenant''s contacts, without a campaign: normalises phones to E.164 digits, drops duplicates (first row wins), inserts new contacts and merges names and attributes into existing ones; opt-out state is never changed. Returns the counts and the invalid rows. Raises PW100 on bad arguments or nothing staged, PW101 for an empty list or (p_on_invalid reject) invalid rows, PW205 for an unknown tenant.';

CREATE OR REPLACE FUNCTION api.contacts(
    p_tenant_id  bigint,
    p_phone      text DEFAULT NULL,
    p_opted_out  boolean DEFAULT NULL,
    p_before_id  bigint DEFAULT NULL,
    p_limit      integer DEFAULT 50
) RETURNS SETOF api.contact
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.contacts(bigint, text, boolean, bigint, integer) IS
    'Lists the tenant''s contacts newest first, optionally the one with a phone (any common format, with country code) or only opted-out/in ones; keyset pagination on contact_id (p_before_id). Raises PW100 for a limit outside 1..1000 or a malformed phone.';

CREATE OR REPLACE FUNCTION api.set_contact_opt_out(
    p_tenant_id   bigint,
    p_opted_out   boolean,
    p_contact_id  bigint DEFAULT NULL,
    p_phone       text DEFAULT NULL
) RETURNS api.contact
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.set_contact_opt_out(bigint, boolean, bigint, text) IS
    'Opts a contact of the tenant out of (p_opted_out true) or back into messages, by contact_id or by phone; opting out an unknown phone creates the contact opted out, so that no campaign reaches it. Returns the contact. Raises PW100 unless exactly one of contact_id and phone is given or for a malformed phone, PW204 when the contact is not found.';

-------------------------------------------------------------------------------
-- Notifications
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.notifications(
    p_tenant_id    bigint,
    p_unread_only  boolean DEFAULT false,
    p_before_id    bigint DEFAULT NULL,
    p_limit        integer DEFAULT 50
) RETURNS SETOF api.notification
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.notifications(bigint, boolean, bigint, integer) IS
    'Lists the tenant''s notifications newest first (optionally unread only); keyset pagination on notification_id (p_before_id). Raises PW100 for a limit outside 1..1000.';

CREATE OR REPLACE FUNCTION api.read_notifications(p_tenant_id bigint, p_notification_ids bigint[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.read_notifications(bigint, bigint[]) IS
    'Marks the given notifications of the tenant read (all unread ones when p_notification_ids is null); returns how many were newly marked. Raises PW208, marking nothing, when an id is not one of the tenant''s.';

-------------------------------------------------------------------------------
-- Registries
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.error_codes() RETURNS SETOF core.error_codes
LANGUAGE sql SECURITY DEFINER STABLE SET search_path = '' AS $$
    SELECT * FROM core.error_codes ORDER BY sqlstate
$$;
COMMENT ON FUNCTION api.error_codes() IS
    'Lists the SQLSTATEs pgwa raises or maps (PWgnn codes and standard ones), each with its name, HTTP status and meaning; the HTTP layer loads it once at start-up.';

CREATE OR REPLACE FUNCTION api.functions() RETURNS SETOF api.function_doc
LANGUAGE sql SECURITY DEFINER STABLE SET search_path = '' AS $$
    SELECT p.proname::text, pg_catalog.pg_get_function_arguments(p.oid), pg_catalog.pg_get_function_result(p.oid),
           pg_catalog.obj_description(p.oid, 'pg_proc')
    FROM pg_catalog.pg_proc p
    WHERE p.pronamespace = 'api'::regnamespace
    ORDER BY p.proname
$$;
COMMENT ON FUNCTION api.functions() IS
    'Lists the api functions with their arguments, result and COMMENT ON text: the documentation the OpenAPI document and the README draw from.';

REVOKE ALL ON FUNCTION api.numbers(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.graph_credentials(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.sync_templates(bigint, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.templates(bigint, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.template_parameters(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.import_contacts(bigint, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.contacts(bigint, text, boolean, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.set_contact_opt_out(bigint, boolean, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.notifications(bigint, boolean, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.read_notifications(bigint, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.error_codes() FROM PUBLIC;
REVOKE ALL ON FUNCTION api.functions() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.numbers(bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.graph_credentials(bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.sync_templates(bigint, text, jsonb) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.templates(bigint, text, text) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.template_parameters(bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.import_contacts(bigint, text, text) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.contacts(bigint, text, boolean, bigint, integer) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.set_contact_opt_out(bigint, boolean, bigint, text) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.notifications(bigint, boolean, bigint, integer) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.read_notifications(bigint, bigint[]) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.error_codes() TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.functions() TO pgwa_api;
