-- Send windows: a campaign limited to hours of each recipient's local day. At claim
-- time (core.take_in_flight) a message whose recipient is outside the window goes back
-- to its queue, invisible until the window next opens there, its attempt not counted;
-- the rest of the batch goes ahead. Time zones are IANA names: the contact's own, else
-- the phone prefix's (core.phone_zones), else the tenant's.

-- A phone's time zone by its longest known prefix (libphonenumber's map), or NULL.
CREATE OR REPLACE FUNCTION core.phone_zone(p_wa_id text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT z.time_zone FROM core.phone_zones z
    WHERE z.prefix = ANY (ARRAY(SELECT left(p_wa_id, n) FROM generate_series(1, least(length(p_wa_id), 10)) n))
    ORDER BY length(z.prefix) DESC
    LIMIT 1
$$;

-- A zone name PostgreSQL knows, or PW100 naming the field.
CREATE OR REPLACE FUNCTION core.check_time_zone(p_zone text, p_field text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
BEGIN
    IF p_zone IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_timezone_names WHERE name = p_zone) THEN
        RAISE EXCEPTION '% "%" is not a time zone', p_field, left(p_zone, 60)
            USING ERRCODE = 'PW100', HINT = 'Give an IANA zone name such as "Europe/Lisbon" or "America/Sao_Paulo".';
    END IF;
    RETURN p_zone;
END
$$;

-- When a window [p_start, p_end) of local time in p_zone next opens after p_now, or NULL
-- while it is open. A window whose end is before its start runs past midnight.
CREATE OR REPLACE FUNCTION core.window_opens_at(p_now timestamptz, p_zone text, p_start time, p_end time)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT CASE
        WHEN CASE WHEN p_start < p_end THEN l.t >= p_start AND l.t < p_end ELSE l.t >= p_start OR l.t < p_end END
            THEN NULL
        WHEN l.t < p_start THEN (l.d + p_start) AT TIME ZONE p_zone
        ELSE (l.d + 1 + p_start) AT TIME ZONE p_zone
    END
    FROM (SELECT (p_now AT TIME ZONE p_zone)::date AS d, (p_now AT TIME ZONE p_zone)::time AS t) l
$$;

-- The part of a claimed batch whose recipients are inside their campaign's send window;
-- the others are put back in their queues until the window opens for them.
CREATE OR REPLACE FUNCTION core.hold_outside_window(p_batch core.claimed[], p_number_id bigint, p_now timestamptz)
RETURNS core.claimed[]
LANGUAGE plpgsql SET search_path = '' AS $$
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

CREATE OR REPLACE FUNCTION api.set_campaign_send_window(p_tenant_id bigint, p_campaign_id bigint,
                                                        p_start time, p_end time)
RETURNS api.send_window
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.set_campaign_send_window(bigint, bigint, time, time) IS
    'Limits a campaign to hours of each recipient''s local day: messages go out from p_start until p_end local time (an end before the start runs past midnight); both NULL lifts the limit. The recipient''s zone is the contact''s own (api.set_contact_time_zone), else the phone prefix''s, else the tenant''s. A message claimed outside its window goes back to its queue until the window opens for its recipient, its attempt not counted. Returns the window. Raises PW100 for a half or empty window, PW201 when the tenant has no such campaign, PW301 when it is completed or cancelled.';

CREATE OR REPLACE FUNCTION api.set_contact_time_zone(p_tenant_id bigint, p_contact_id bigint, p_time_zone text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_contact core.contacts := core.contact_for(p_tenant_id, p_contact_id);
BEGIN
    UPDATE core.contacts SET time_zone = core.check_time_zone(p_time_zone, 'time_zone'), updated_at = now()
    WHERE contact_id = v_contact.contact_id;
    RETURN coalesce(p_time_zone, core.phone_zone(v_contact.wa_id), (SELECT t.time_zone FROM core.tenants t
                                                                    WHERE t.tenant_id = p_tenant_id));
END
$$;
COMMENT ON FUNCTION api.set_contact_time_zone(bigint, bigint, text) IS
    'Sets a contact''s own IANA time zone for campaign send windows (NULL: from the phone''s prefix again). Returns the zone now in effect for the contact. Raises PW100 for a zone PostgreSQL does not know, PW204 when the tenant has no such contact.';

CREATE OR REPLACE FUNCTION api.set_tenant_time_zone(p_tenant_id bigint, p_time_zone text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.set_tenant_time_zone(bigint, text) IS
    'Sets the IANA time zone in which the tenant writes schedules (api.tenant_local_time) and which recipients of unknown zone take. Returns it. Raises PW100 for a zone PostgreSQL does not know.';

CREATE OR REPLACE FUNCTION api.tenant_local_time(p_tenant_id bigint, p_local timestamp) RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $$
    SELECT p_local AT TIME ZONE t.time_zone FROM core.tenants t WHERE t.tenant_id = p_tenant_id
$$;
COMMENT ON FUNCTION api.tenant_local_time(bigint, timestamp) IS
    'A wall-clock time as the tenant writes it (no offset), in its time zone: "schedule at 09:00 tomorrow" means 09:00 where the tenant is. NULL for NULL.';

REVOKE ALL ON FUNCTION api.set_campaign_send_window(bigint, bigint, time, time) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.set_contact_time_zone(bigint, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.set_tenant_time_zone(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.tenant_local_time(bigint, timestamp) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.set_campaign_send_window(bigint, bigint, time, time) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.set_contact_time_zone(bigint, bigint, text) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.tenant_local_time(bigint, timestamp) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.set_tenant_time_zone(bigint, text) TO pgwa_api;
