-- Media: files a tenant uploads to Meta (sent by id, reused while their id is valid) and
-- files contacts send in (downloaded by the worker through Meta's two-step media API and
-- kept in the media store). Functions: db/functions/media.sql.

-- Meta's supported media (reference §1.4): one row per MIME type, with the media type it
-- is sent as and the largest file Meta takes. The API (uploads), the worker (downloads)
-- and SQL (core.check_media_file) all read these rows; nothing else holds a limit.
CREATE TABLE core.media_types (
    mime_type   text PRIMARY KEY CONSTRAINT media_types_mime_lower CHECK (mime_type = lower(mime_type)),
    media_type  text NOT NULL CONSTRAINT media_types_media_type_valid
                    CHECK (media_type IN ('image', 'audio', 'video', 'document', 'sticker')),
    max_bytes   bigint NOT NULL CONSTRAINT media_types_max_bytes_valid CHECK (max_bytes > 0)
);
COMMENT ON TABLE core.media_types IS
    'Meta''s supported media: MIME type, the media type it is sent as, and the largest file Meta accepts (reference §1.4).';
INSERT INTO core.media_types (mime_type, media_type, max_bytes) VALUES
    ('image/jpeg', 'image', 5 << 20),
    ('image/png', 'image', 5 << 20),
    ('audio/aac', 'audio', 16 << 20),
    ('audio/amr', 'audio', 16 << 20),
    ('audio/mpeg', 'audio', 16 << 20),
    ('audio/mp4', 'audio', 16 << 20),
    ('audio/ogg', 'audio', 16 << 20),          -- OPUS codecs only; "audio/ogg; codecs=opus" is this row
    ('video/mp4', 'video', 16 << 20),
    ('video/3gpp', 'video', 16 << 20),
    ('text/plain', 'document', 100 << 20),
    ('application/pdf', 'document', 100 << 20),
    ('application/vnd.ms-excel', 'document', 100 << 20),
    ('application/vnd.openxmlformats-officedocument.spreadsheetml.sheet', 'document', 100 << 20),
    ('application/msword', 'document', 100 << 20),
    ('application/vnd.openxmlformats-officedocument.wordprocessingml.document', 'document', 100 << 20),
    ('application/vnd.ms-powerpoint', 'document', 100 << 20),
    ('application/vnd.openxmlformats-officedocument.presentationml.presentation', 'document', 100 << 20),
    -- 100 KB static, 500 KB animated: a file cannot say which before it is parsed.
    ('image/webp', 'sticker', 500 << 10);

INSERT INTO core.error_codes (sqlstate, name, http_status, meaning) VALUES
    ('PW145', 'media_too_large',        413, 'A media file is over Meta''s size limit for its type (core.media_types); the message names the field, the size and the limit.'),
    ('PW146', 'media_type_unsupported', 415, 'Meta does not accept this MIME type as media (core.media_types); the message names the field and the types it accepts.'),
    ('PW245', 'media_not_found',        404, 'No such media for this tenant and number.'),
    ('PW345', 'media_expired',          409, 'The media''s Meta id has expired or expires within a day; upload the file again.');

-- One row per media file: direction 'out' is a file the tenant uploaded to Meta (its
-- meta_media_id is valid for 30 days, expires_at); 'in' is a file a contact sent
-- (message_id), waiting for the worker (state pending) until stored or failed. media_id
-- is pgwa's media id, the one clients use.
CREATE TABLE core.media (
    media_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        bigint NOT NULL REFERENCES core.tenants ON DELETE CASCADE,
    number_id        bigint NOT NULL REFERENCES core.wa_numbers ON DELETE CASCADE,
    direction        text NOT NULL CONSTRAINT media_direction_valid CHECK (direction IN ('in', 'out')),
    message_id       bigint REFERENCES core.inbox_messages ON DELETE CASCADE,
    meta_media_id    text NOT NULL,
    media_type       text NOT NULL CONSTRAINT media_media_type_valid
                         CHECK (media_type IN ('image', 'audio', 'video', 'document', 'sticker')),
    mime_type        text,
    size_bytes       bigint,
    sha256           text,              -- hex, of the bytes pgwa holds or uploaded
    filename         text,
    caption          text,
    -- out: uploaded; in: pending (the worker's queue), stored, failed (given up, last_error says why).
    state            text NOT NULL CONSTRAINT media_state_valid CHECK (state IN ('uploaded', 'pending', 'stored', 'failed')),
    storage_key      text,              -- where the media store keeps the bytes
    attempts         integer NOT NULL DEFAULT 0,
    -- pending: claimable from then on (a claim pushes it out by the lease: a worker that
    -- dies holding it loses it when the lease ends).
    next_attempt_at  timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,   -- Meta's id: 30 days after upload, 7 after receipt
    stored_at        timestamptz,
    CONSTRAINT media_inbound_has_message CHECK (direction = 'out' OR message_id IS NOT NULL),
    CONSTRAINT media_out_uploaded CHECK ((direction = 'out') = (state = 'uploaded'))
);
COMMENT ON TABLE core.media IS
    'Media files: uploaded to Meta by a tenant (direction out, reusable until expires_at) or sent in by contacts (direction in, downloaded by the worker into the media store).';
-- Read by api.media (a tenant's media, newest first) and the tenant foreign key.
CREATE INDEX media_tenant ON core.media (tenant_id, media_id DESC);
-- Read by api.prepare_media_upload (reuse: the same bytes on the same number) and by the
-- inbox (an outbound message's media by its Meta id); also the number foreign key.
CREATE INDEX media_number_meta ON core.media (number_id, meta_media_id);
CREATE INDEX media_number_sha ON core.media (number_id, sha256, expires_at DESC) WHERE direction = 'out';
-- Read by the inbox (an inbound message's media) and the message foreign key.
CREATE UNIQUE INDEX media_message ON core.media (message_id) WHERE message_id IS NOT NULL;
-- Read by api.claim_media_downloads: pending downloads by when they may be tried.
CREATE INDEX media_pending ON core.media (next_attempt_at) WHERE state = 'pending';

ALTER TABLE core.settings
    ADD COLUMN media_download_attempts integer NOT NULL DEFAULT 5
        CONSTRAINT settings_media_download_attempts_valid CHECK (media_download_attempts BETWEEN 1 AND 50),
    ADD COLUMN media_download_lease_s integer NOT NULL DEFAULT 120
        CONSTRAINT settings_media_download_lease_s_valid CHECK (media_download_lease_s BETWEEN 5 AND 3600),
    ADD COLUMN media_download_backoff_s integer[] NOT NULL DEFAULT '{10,60,300,1800}';
COMMENT ON COLUMN core.settings.media_download_attempts IS
    'An inbound media file is given up (state failed) after this many download attempts.';
COMMENT ON COLUMN core.settings.media_download_lease_s IS
    'A claimed media download comes back to the queue after this long if its worker never reports.';
COMMENT ON COLUMN core.settings.media_download_backoff_s IS
    'Seconds before the next attempt of a failed media download, by attempt (the last repeats).';

-- Named types of the media functions.
CREATE TYPE api.media_file AS (
    media_id       bigint,
    number_id      bigint,
    direction      text,          -- out: uploaded; in: received
    media_type     text,          -- image, audio, video, document, sticker
    mime_type      text,
    size_bytes     bigint,
    sha256         text,
    filename       text,
    caption        text,
    state          text,          -- uploaded, pending, stored, failed
    meta_media_id  text,
    message_id     bigint,        -- in: the inbox message
    attempts       integer,
    last_error     text,
    created_at     timestamptz,
    expires_at     timestamptz,
    stored_at      timestamptz,
    reused         boolean        -- api.prepare_media_upload / api.save_media: an earlier upload of the same bytes
);

CREATE TYPE api.media_upload_target AS (
    tenant_id        bigint,
    media_type       text,
    reuse            api.media_file,   -- not null: the same bytes are uploaded and valid; upload nothing
    phone_number_id  text,
    access_token     text,
    graph_api_version text
);

CREATE TYPE api.media_download AS (
    media_id          bigint,
    tenant_id         bigint,
    meta_media_id     text,
    media_type        text,
    mime_type         text,       -- as the webhook said
    sha256            text,       -- as the webhook said (Meta's encoding)
    attempts          integer,    -- including this one
    phone_number_id   text,
    access_token      text,
    graph_api_version text
);

CREATE TYPE api.media_content AS (
    media_id     bigint,
    mime_type    text,
    size_bytes   bigint,
    filename     text,
    storage_key  text
);

-- The inbox shows a message's media: {"media_id", "type", "mime_type", "caption",
-- "filename", "state", ...} (core.message_media).
ALTER TYPE api.inbox_message ADD ATTRIBUTE media jsonb;

-- core.render_reply (db/functions/bots.sql, a SQL function, checked when created) hands
-- the media, list and CTA-URL replies to core.render_rich_reply, defined in media.sql,
-- which is applied after bots.sql: this placeholder lets bots.sql be created first on a
-- fresh database; media.sql replaces it in the same run.
CREATE FUNCTION core.render_rich_reply(p_reply jsonb, p_vars jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$ SELECT NULL::jsonb $$;
