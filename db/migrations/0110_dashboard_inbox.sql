-- The dashboard's inbox for support agents (api/dashboard/inbox.py): each user's own
-- read mark per conversation (unread counts are per agent), internal notes that never
-- reach WhatsApp, a tenant's canned replies, and trigram indexes for the inbox search
-- (phone, name, message text). Functions: db/functions/dashboard_inbox.sql.

CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public;

CREATE TABLE core.conversation_reads (
    user_id         bigint NOT NULL REFERENCES core.dashboard_users ON DELETE CASCADE,
    number_id       bigint NOT NULL,
    contact_id      bigint NOT NULL,
    -- The newest message this user has seen (api.mark_conversation_read): messages after
    -- (read_up_to_at, read_up_to_id), in the conversation index's order, are unread.
    read_up_to_at   timestamptz NOT NULL,
    read_up_to_id   bigint NOT NULL,
    read_at         timestamptz NOT NULL,
    PRIMARY KEY (user_id, number_id, contact_id),
    CONSTRAINT conversation_reads_conversation_fk FOREIGN KEY (number_id, contact_id)
        REFERENCES core.conversations ON DELETE CASCADE
);
-- Read by the conversation foreign key.
CREATE INDEX conversation_reads_conversation ON core.conversation_reads (number_id, contact_id);
COMMENT ON TABLE core.conversation_reads IS
    'Each dashboard user''s read mark on a conversation: what the inbox counts as unread for them.';

CREATE TABLE core.conversation_notes (
    note_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number_id       bigint NOT NULL,
    contact_id      bigint NOT NULL,
    user_id         bigint REFERENCES core.dashboard_users ON DELETE SET NULL,
    -- The author's e-mail when written: a note outlives its author's account.
    author          text NOT NULL,
    body            text NOT NULL CONSTRAINT conversation_notes_body_valid
                        CHECK (length(btrim(body)) BETWEEN 1 AND 4096),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT conversation_notes_conversation_fk FOREIGN KEY (number_id, contact_id)
        REFERENCES core.conversations ON DELETE CASCADE
);
-- Read by api.conversation_notes (a thread's notes in order) and the conversation foreign key.
CREATE INDEX conversation_notes_conversation ON core.conversation_notes (number_id, contact_id, created_at);
-- Read by the user foreign key.
CREATE INDEX conversation_notes_user ON core.conversation_notes (user_id);
COMMENT ON TABLE core.conversation_notes IS
    'Internal notes agents leave on a conversation: shown in the dashboard''s thread, never sent to WhatsApp.';

CREATE TABLE core.canned_replies (
    canned_reply_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       bigint NOT NULL REFERENCES core.tenants ON DELETE CASCADE,
    title           text NOT NULL CONSTRAINT canned_replies_title_valid CHECK (length(btrim(title)) BETWEEN 1 AND 100),
    body            text NOT NULL CONSTRAINT canned_replies_body_valid CHECK (length(btrim(body)) BETWEEN 1 AND 4096),
    created_by      bigint REFERENCES core.dashboard_users ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Read by api.canned_replies (a tenant's list by title) and the tenant foreign key.
    CONSTRAINT canned_replies_tenant_title UNIQUE (tenant_id, title)
);
-- Read by the user foreign key.
CREATE INDEX canned_replies_created_by ON core.canned_replies (created_by);
COMMENT ON TABLE core.canned_replies IS
    'A tenant''s saved answers: an agent picks one to fill the reply box (contact variables like {{name}} are filled when sent).';

-- Read by the inbox search (core.inbox_rows): a substring of a message's text, or of a
-- contact's phone, name or profile name (ILIKE '%...%', served by trigrams).
CREATE INDEX inbox_messages_body_trgm ON core.inbox_messages USING gin (body public.gin_trgm_ops);
CREATE INDEX contacts_search_trgm ON core.contacts USING gin (
    (coalesce(wa_id, '') || ' ' || coalesce(name, '') || ' ' || coalesce(profile_name, '')) public.gin_trgm_ops);

INSERT INTO core.error_codes (sqlstate, name, http_status, meaning) VALUES
    ('PW165', 'invalid_note',               400, 'A conversation note must be 1 to 4,096 characters.'),
    ('PW166', 'invalid_canned_reply',       400, 'A canned reply needs a title (1 to 100 characters) and a body (1 to 4,096).'),
    ('PW167', 'invalid_inbox_search',       400, 'The inbox filter or search is not valid.'),
    ('PW275', 'canned_reply_not_found',     404, 'No such canned reply for this tenant.'),
    ('PW276', 'assignee_not_found',         404, 'No enabled user of this tenant who may answer conversations.'),
    ('PW375', 'canned_reply_title_taken',   409, 'The tenant already has a canned reply with this title.');

CREATE TYPE api.dashboard_actor AS (
    tenant_id       bigint,
    user_id         bigint,
    email           text,
    role            text
);

CREATE TYPE api.conversation_note AS (
    note_id         bigint,
    number_id       bigint,
    contact_id      bigint,
    author          text,
    body            text,
    created_at      timestamptz
);

CREATE TYPE api.canned_reply AS (
    canned_reply_id bigint,
    title           text,
    body            text,
    created_at      timestamptz
);

-- A template a reply can send (api.reply_templates): body parameters only.
CREATE TYPE api.reply_template AS (
    template_id       bigint,
    name              text,
    language          text,
    parameter_format  text,
    params            text[],     -- the body's parameters in order: names (NAMED) or positions
    body              text
);
