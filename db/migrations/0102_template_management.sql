-- Template management (issue 12): create templates through Meta's API (with their
-- examples), delete them, and follow their review and quality.

-- A definition pgwa refuses before asking Meta, one Meta refuses, and a delete that would
-- strand the campaigns sending the template.
INSERT INTO core.error_codes (sqlstate, name, http_status, meaning) VALUES
    ('PW130', 'invalid_template_definition', 422, 'A template definition breaks one of Meta''s rules (name, category, components, limits, examples, variables); the message names the component and the hint the fix.'),
    ('PW131', 'template_refused',            422, 'Meta refused to create or delete the template; the message carries Meta''s code and text.'),
    ('PW330', 'template_in_use',             409, 'The template is sent by scheduled, running or paused campaigns; the message names them.')
ON CONFLICT (sqlstate) DO NOTHING;

ALTER TABLE core.templates
    ADD COLUMN submitted_at timestamptz,
    ADD COLUMN quality_event_at timestamptz,
    ADD COLUMN deleted_at timestamptz;
COMMENT ON COLUMN core.templates.submitted_at IS
    'When pgwa last submitted the template to Meta (api.prepare_template); null for templates only synced.';
COMMENT ON COLUMN core.templates.quality_event_at IS
    'The time of the newest message_template_quality_update applied: an older one changes nothing.';
COMMENT ON COLUMN core.templates.deleted_at IS
    'When Meta confirmed the template''s deletion through pgwa (api.template_deleted).';

-- What the server needs to submit a template to Meta (api.prepare_template): never
-- returned to a client (it carries the access token).
CREATE TYPE api.template_submission AS (
    template_id        bigint,
    waba_id            text,
    status             text,       -- SUBMITTING: submit it now; anything else: already there, nothing to do
    submit             boolean,
    request            jsonb,      -- the body of POST /{waba-id}/message_templates
    access_token       text,
    graph_api_version  text
);

-- What the server needs to delete a template at Meta (api.prepare_template_deletion).
CREATE TYPE api.template_deletion AS (
    template_id        bigint,
    waba_id            text,
    name               text,
    meta_template_id   text,       -- hsm_id: only this language is deleted
    submit             boolean,    -- false: already deleted, nothing to ask Meta
    campaign_ids       bigint[],   -- unfinished campaigns sending it (p_force only)
    access_token       text,
    graph_api_version  text
);

-- One thing wrong with a template definition (api.template_definition_problems).
CREATE TYPE api.template_problem AS (
    component  text,   -- template, HEADER, BODY, FOOTER, BUTTONS[1], ...
    problem    text,
    fix        text
);
