-- Contacts as a managed list (issue 14): tags, typed custom fields defined per tenant,
-- saved segments (filters over tags, fields, opt-out, last inbound and campaign
-- engagement), and the types of the contact, segment and per-recipient report functions
-- (db/functions/contacts.sql, segments.sql).

-- Tags live on the contact as a text[]: a segment over a tag of a 1M-contact tenant is one
-- GIN lookup (tags @> ARRAY[...]) and the contact row needs no join; a tag table would
-- cost a row per tag per contact and a join on every read. Adding the column with a
-- constant default rewrites nothing.
ALTER TABLE core.contacts ADD COLUMN tags text[] NOT NULL DEFAULT '{}';
COMMENT ON COLUMN core.contacts.tags IS
    'The contact''s tags (trimmed, 1-64 characters, at most 100), set by api.update_contact, api.tag_contacts and imports.';
-- Read by segments and searches with a tag condition (tags @> ARRAY[tag]).
CREATE INDEX contacts_tags ON core.contacts USING gin (tags);

-- A tenant's custom fields: their values live in core.contacts.attributes under the
-- field's name (as CSV columns always have, so a template parameter maps to a field like to
-- a column), typed: text and date (YYYY-MM-DD) as JSON strings, number as a JSON number,
-- boolean as a JSON boolean. Values are checked when written (api.update_contact, imports).
CREATE TABLE core.contact_fields (
    tenant_id   bigint NOT NULL REFERENCES core.tenants ON DELETE CASCADE,
    name        text NOT NULL CONSTRAINT contact_fields_name_valid CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'
                                                                         AND name NOT IN ('phone', 'name', 'tags')),
    type        text NOT NULL CONSTRAINT contact_fields_type_valid CHECK (type IN ('text', 'number', 'date', 'boolean')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Read by every typed read and write of a tenant's fields; serves the tenant foreign key.
    CONSTRAINT contact_fields_pkey PRIMARY KEY (tenant_id, name)
);
COMMENT ON TABLE core.contact_fields IS
    'Custom contact fields per tenant (text, number, date, boolean); values are in core.contacts.attributes under the name.';

-- Saved segments: a filter (db/functions/segments.sql documents the grammar), compiled to
-- a fixed SQL shape whose every value is a query parameter, each time it is used.
CREATE TABLE core.segments (
    segment_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES core.tenants ON DELETE CASCADE,
    name        text NOT NULL CONSTRAINT segments_name_valid CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    filter      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- Read by api.segments (a tenant's segments by id) and saving by name; serves the foreign key.
CREATE UNIQUE INDEX segments_tenant_name ON core.segments (tenant_id, name);
CREATE INDEX segments_tenant_segment ON core.segments (tenant_id, segment_id);

INSERT INTO core.error_codes (sqlstate, name, http_status, meaning) VALUES
    ('PW132', 'invalid_segment',        422, 'A segment filter does not fit the grammar; the message names the condition''s path (e.g. all[2].op).'),
    ('PW133', 'invalid_field_value',    422, 'A custom field value does not fit the field''s type; the message names the field, the value and the type.'),
    ('PW232', 'segment_not_found',      404, 'No such segment for this tenant.'),
    ('PW233', 'contact_field_not_found', 404, 'No such custom contact field for this tenant.')
ON CONFLICT (sqlstate) DO NOTHING;

-- A contact with its tags (api.contact, which api.contacts returns, stays as it was).
CREATE TYPE api.contact_record AS (
    contact_id       bigint,
    wa_id            text,
    user_id          text,
    name             text,
    profile_name     text,
    attributes       jsonb,     -- custom field values and other imported columns
    tags             text[],
    opted_out        boolean,
    opted_out_at     timestamptz,
    last_inbound_at  timestamptz,
    created_at       timestamptz,
    updated_at       timestamptz
);

CREATE TYPE api.contact_field AS (
    name        text,
    type        text,          -- text, number, date, boolean
    created_at  timestamptz
);

CREATE TYPE api.contact_erased AS (
    contact_id         bigint,
    outbound_messages  integer,   -- messages sent (or queued) to the contact, deleted
    withdrawn          integer,   -- of those, still queued: withdrawn and counted cancelled
    inbox_messages     integer,   -- both directions, deleted
    conversations      integer,
    status_events      integer,
    events             integer    -- outbound events (core.events) about the contact, with their deliveries
);

CREATE TYPE api.segment AS (
    segment_id  bigint,
    name        text,
    filter      jsonb,
    created_at  timestamptz,
    updated_at  timestamptz
);

-- A filter compiled by core.compile_segment: a boolean SQL expression over core.contacts c
-- that names its values only as $1 (texts), $2 (numbers), $3 (times), $4 (campaign ids)
-- array elements, for EXECUTE ... USING; no text of the filter enters the SQL.
CREATE TYPE core.compiled_segment AS (
    sql      text,
    texts    text[],
    numbers  numeric[],
    times    timestamptz[],
    ids      bigint[]
);

-- What a mapped import (api.import_contacts_mapped) did: api.import_contacts's counts, the
-- values it skipped (row, column, value, reason: the row itself was imported without
-- them) and the contacts it tagged.
CREATE TYPE api.contacts_mapped_import AS (
    staged              integer,
    inserted            integer,
    updated             integer,
    unchanged           integer,
    skipped_invalid     integer,
    duplicates_removed  integer,
    invalid_rows        jsonb,
    skipped_values      jsonb,
    tagged              integer
);

