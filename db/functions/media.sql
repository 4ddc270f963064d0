-- Media: uploads (sent by Meta id, reused while valid), inbound downloads (a queue the
-- worker claims), what the inbox shows, and the media, list and CTA-URL replies.
--
--   upload    api.prepare_media_upload ─> (the API POSTs /{phone-number-id}/media) ─> api.save_media
--   inbound   core.on_inbound ─> core.queue_media_downloads (state pending, NOTIFY pgwa_media)
--             worker/media.py: api.claim_media_downloads ─> GET /{media-id}, GET url ─> media store
--                              ─> api.complete_media_downloads (stored, retried with back-off, failed)
--   serving   api.media_content (GET /v1/media/{id}/content), api.media (GET /v1/media)
--   sending   core.media_for_send (a pgwa media id -> {"id": Meta's id}), core.check_rich_reply,
--             core.render_rich_reply (bots.sql's check_reply / render_reply hand them the new shapes)
--
-- Meta's limits are rows of core.media_types; core.check_media_file is the one check.

-------------------------------------------------------------------------------
-- Limits
-------------------------------------------------------------------------------

-- A MIME type as core.media_types keys it: parameters ("; codecs=opus") dropped, lower case.
CREATE OR REPLACE FUNCTION core.media_mime(p_mime text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT nullif(lower(btrim(split_part(p_mime, ';', 1))), '')
$$;

-- The row of core.media_types for a file of p_mime and p_size bytes; raises PW146 for a
-- MIME type Meta does not take, PW145 for a file over its type's limit, naming p_field.
CREATE OR REPLACE FUNCTION core.check_media_file(p_field text, p_mime text, p_size bigint)
RETURNS core.media_types
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
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

CREATE OR REPLACE FUNCTION api.media_types() RETURNS SETOF core.media_types
LANGUAGE sql SECURITY DEFINER STABLE SET search_path = '' AS $$
    SELECT * FROM core.media_types ORDER BY media_type, mime_type
$$;
COMMENT ON FUNCTION api.media_types() IS
    'Meta''s supported media: each MIME type, the media type it is sent as (image, audio, video, document, sticker) and the largest file Meta accepts, in bytes. Uploads and inbound downloads are checked against these rows.';

-------------------------------------------------------------------------------
-- Uploads
-------------------------------------------------------------------------------

-- A media row as clients see it.
CREATE OR REPLACE FUNCTION core.media_row(p_media core.media, p_reused boolean DEFAULT false) RETURNS api.media_file
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT ROW(p_media.media_id, p_media.number_id, p_media.direction, p_media.media_type, p_media.mime_type,
               p_media.size_bytes, p_media.sha256, p_media.filename, p_media.caption, p_media.state,
               p_media.meta_media_id, p_media.message_id, p_media.attempts, p_media.last_error,
               p_media.created_at, p_media.expires_at, p_media.stored_at, p_reused)::api.media_file
$$;

-- How long before its expiry a Meta media id is no longer used for a new send: a
-- campaign may take that long to send.
CREATE OR REPLACE FUNCTION core.media_expiry_margin() RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT interval '1 day'
$$;

-- An uploaded file of the number still usable for sends: the same bytes (sha256), the
-- newest, valid past the margin.
CREATE OR REPLACE FUNCTION core.reusable_media(p_number_id bigint, p_sha256 text, p_now timestamptz)
RETURNS core.media
LANGUAGE sql STABLE SET search_path = '' AS $$
    SELECT m.* FROM core.media m
    WHERE m.number_id = p_number_id AND m.direction = 'out' AND m.sha256 = lower(p_sha256)
      AND m.expires_at > p_now + core.media_expiry_margin()
    ORDER BY m.expires_at DESC
    LIMIT 1
$$;

CREATE OR REPLACE FUNCTION api.prepare_media_upload(
    p_tenant_id  bigint,
    p_number_id  bigint,
    p_mime_type  text,
    p_size_bytes bigint,
    p_sha256     text,
    p_now        timestamptz DEFAULT NULL
) RETURNS api.media_upload_target
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
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
$$;
COMMENT ON FUNCTION api.prepare_media_upload(bigint, bigint, text, bigint, text, timestamptz) IS
    'Checks a file before it is uploaded to Meta for one of the tenant''s numbers: its MIME type and size against Meta''s limits (api.media_types). Returns its media type and either the earlier upload of the same bytes (sha256) on that number, still valid for more than a day (reuse: upload nothing), or what the server needs to upload it (never return the token to a client). Raises PW146 for a MIME type Meta does not take, PW145 for a file over its limit, PW100 for an empty file or a bad sha256, PW202 when the number is not the tenant''s.';

CREATE OR REPLACE FUNCTION api.save_media(
    p_tenant_id      bigint,
    p_number_id      bigint,
    p_meta_media_id  text,
    p_mime_type      text,
    p_size_bytes     bigint,
    p_sha256         text,
    p_filename       text DEFAULT NULL,
    p_storage_key    text DEFAULT NULL,
    p_now            timestamptz DEFAULT NULL
) RETURNS api.media_file
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
$$;
COMMENT ON FUNCTION api.save_media(bigint, bigint, text, text, bigint, text, text, text, timestamptz) IS
    'Records a file uploaded to Meta for one of the tenant''s numbers: Meta''s media id, MIME type, size, sha256, file name and where the media store keeps a copy; the id expires 30 days after p_now. Returns pgwa''s media (reused true, and nothing recorded, when the same bytes were uploaded meanwhile and are still valid). Raises PW146/PW145 for a file Meta does not take, PW100 for a bad id, sha256 or file name, PW202 when the number is not the tenant''s.';

CREATE OR REPLACE FUNCTION api.media(
    p_tenant_id  bigint,
    p_number_id  bigint DEFAULT NULL,
    p_direction  text DEFAULT NULL,
    p_before_id  bigint DEFAULT NULL,
    p_limit      integer DEFAULT 50
) RETURNS SETOF api.media_file
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.media(bigint, bigint, text, bigint, integer) IS
    'Lists the tenant''s media, newest first: files uploaded to Meta (direction out, with their Meta id and expiry) and files contacts sent (direction in, with their download state: pending, stored, failed and why). Optionally one number''s, one direction''s; keyset on media_id (p_before_id). Raises PW100 for a bad direction or limit (1..1000), PW202 when the number is not the tenant''s.';

-- Meta's media object for a send of pgwa media p_media_id from number p_number_id:
-- {"id": "<Meta id>"}. Raises PW245 when it is not the tenant's uploaded file of that
-- number, PW345 when its Meta id has expired or expires within the margin.
CREATE OR REPLACE FUNCTION core.media_for_send(p_tenant_id bigint, p_media_id bigint, p_number_id bigint,
                                               p_now timestamptz DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
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

-------------------------------------------------------------------------------
-- Inbound media: the download queue
-------------------------------------------------------------------------------

-- Called by core.on_inbound (bots.sql) with a webhook batch's new inbound messages: each
-- one carrying a media object (image, audio, video, document, sticker) becomes a pending
-- download, and the media workers are woken.
CREATE OR REPLACE FUNCTION core.queue_media_downloads(p_message_ids bigint[]) RETURNS integer
LANGUAGE plpgsql SET search_path = '' AS $$
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

CREATE OR REPLACE FUNCTION api.claim_media_downloads(p_worker text, p_max integer DEFAULT 8,
                                                     p_now timestamptz DEFAULT NULL)
RETURNS SETOF api.media_download
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.claim_media_downloads(text, integer, timestamptz) IS
    'For the media workers: claims up to p_max inbound media files waiting for download (FOR UPDATE SKIP LOCKED: no file goes to two workers), each hidden for core.settings.media_download_lease_s (a worker that dies loses it then), with Meta''s media id and the number''s credentials (never log the token). Files whose Meta id expired first are given up. Report with api.complete_media_downloads.';

CREATE OR REPLACE FUNCTION api.complete_media_downloads(p_results jsonb, p_now timestamptz DEFAULT NULL)
RETURNS TABLE (media_id bigint, state text, last_error text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.complete_media_downloads(jsonb, timestamptz) IS
    'For the media workers: reports claimed downloads, [{"media_id", "storage_key", "sha256", "size_bytes", "mime_type"}] for a stored file or [{"media_id", "error", "permanent"}] for a failure. A stored file is checked against Meta''s limits again (a file outside them is failed: the worker deletes it from the store); a failure is retried after core.settings.media_download_backoff_s until media_download_attempts, or at once given up when permanent or the Meta id expired. Returns each applied file''s new state and error; reports for files no longer pending are ignored. Raises PW105 when p_results is not an array.';

-------------------------------------------------------------------------------
-- Serving
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.media_content(p_tenant_id bigint, p_media_id bigint) RETURNS api.media_content
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
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
COMMENT ON FUNCTION api.media_content(bigint, bigint) IS
    'Where the media store keeps one of the tenant''s files (for GET /v1/media/{id}/content, which streams it), with its MIME type, size and file name. Raises PW245 when the media is not the tenant''s, PW301 when no file is stored (download pending or failed, or an upload kept only at Meta).';

-- What the inbox shows of a message's media: pgwa's media id, type, MIME type, caption,
-- file name, download state (and why it failed), or for an outbound file sent by link,
-- the link; null for a message without media.
CREATE OR REPLACE FUNCTION core.message_media(p_message_id bigint, p_number_id bigint, p_direction text,
                                              p_type text, p_payload jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
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

-------------------------------------------------------------------------------
-- Replies: media, list, CTA URL
-------------------------------------------------------------------------------

-- Check a media, list or cta_url reply (core.check_reply hands these shapes here); PW100
-- naming the field. The shapes:
--   {"type": "image" | "video" | "audio" | "document" | "sticker", "media": <pgwa media id> | "link": "https://...",
--    "caption": "...", "filename": "..."}        (caption: image, video, document; filename: document)
--   {"type": "list", "text": "...", "button": "Choose", "header": "...", "footer": "...",
--    "sections": [{"title": "...", "rows": [{"id": "...", "title": "...", "description": "..."}]}]}
--   {"type": "cta_url", "text": "...", "display_text": "Open", "url": "https://...", "header": "...", "footer": "..."}
CREATE OR REPLACE FUNCTION core.check_rich_reply(p_reply jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = '' AS $$
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
$$;

-- A reply with its pgwa media id resolved to Meta's id for a send from p_number_id
-- ("meta_id" added; core.render_rich_reply sends it). p_strict (an agent's reply, a rule
-- being saved): raises as core.media_for_send does. Not strict (a bot rule answering
-- inside webhook processing, which must not fail): the stored id is used as it is.
CREATE OR REPLACE FUNCTION core.resolve_reply_media(p_reply jsonb, p_tenant_id bigint, p_number_id bigint,
                                                    p_strict boolean DEFAULT true) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
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

-- The Graph API message object of a checked media, list or cta_url reply (media resolved
-- by core.resolve_reply_media), variables filled in from p_vars.
CREATE OR REPLACE FUNCTION core.render_rich_reply(p_reply jsonb, p_vars jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
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

REVOKE ALL ON FUNCTION api.media_types() FROM PUBLIC;
REVOKE ALL ON FUNCTION api.prepare_media_upload(bigint, bigint, text, bigint, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.save_media(bigint, bigint, text, text, bigint, text, text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.media(bigint, bigint, text, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.claim_media_downloads(text, integer, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.complete_media_downloads(jsonb, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.media_content(bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.media_types() TO pgwa_api, pgwa_worker;
GRANT EXECUTE ON FUNCTION api.prepare_media_upload(bigint, bigint, text, bigint, text, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.save_media(bigint, bigint, text, text, bigint, text, text, text, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.media(bigint, bigint, text, bigint, integer) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.claim_media_downloads(text, integer, timestamptz) TO pgwa_worker;
GRANT EXECUTE ON FUNCTION api.complete_media_downloads(jsonb, timestamptz) TO pgwa_worker;
GRANT EXECUTE ON FUNCTION api.media_content(bigint, bigint) TO pgwa_api;
