-- The registry of pgwa's own SQLSTATEs. Codes are shaped PWgnn: the digit g names the
-- HTTP family (1 bad input, 2 not found, 3 state conflict, 4 auth, 5 upstream), after
-- PostgREST's PGRSTgxx. The HTTP layer maps codes with this table, never message text.
CREATE SCHEMA IF NOT EXISTS core;
CREATE SCHEMA IF NOT EXISTS api;

CREATE TABLE core.error_codes (
    sqlstate    text PRIMARY KEY CONSTRAINT error_codes_sqlstate_shape CHECK (sqlstate ~ '^(PW[1-5][0-9]{2}|[0-9A-Z]{5})$'),
    name        text NOT NULL UNIQUE,
    http_status smallint NOT NULL CONSTRAINT error_codes_http_status_valid CHECK (http_status BETWEEN 400 AND 599),
    meaning     text NOT NULL
);

INSERT INTO core.error_codes (sqlstate, name, http_status, meaning) VALUES
    ('PW100', 'invalid_input',        400, 'An argument is missing, malformed or out of range; the message names it.'),
    ('PW101', 'invalid_rows',         422, 'Contact rows failed validation; the detail lists row number, value and reason.'),
    ('PW102', 'invalid_template',     422, 'A template is unknown, not approved, or its parameter mapping does not fit.'),
    ('PW103', 'invalid_pattern',      422, 'A bot rule pattern (regular expression) does not compile.'),
    ('PW104', 'window_closed',        422, 'A free-form message outside the 24-hour customer service window; send a template.'),
    ('PW105', 'invalid_payload',      400, 'A webhook or JSON payload does not have the expected shape.'),
    ('PW106', 'opted_out',            422, 'The contact has opted out of messages.'),
    ('PW201', 'campaign_not_found',   404, 'No such campaign for this tenant.'),
    ('PW202', 'number_not_found',     404, 'No such WhatsApp number for this tenant.'),
    ('PW203', 'template_not_found',   404, 'No such template for this number.'),
    ('PW204', 'contact_not_found',    404, 'No such contact for this tenant.'),
    ('PW205', 'tenant_not_found',     404, 'No such tenant.'),
    ('PW206', 'rule_not_found',       404, 'No such bot rule for this tenant.'),
    ('PW301', 'invalid_transition',   409, 'The object is not in a state that allows this operation.'),
    ('PW302', 'already_exists',       409, 'An object with this key already exists.'),
    ('PW401', 'unauthenticated',      401, 'The API key is missing, unknown or revoked.'),
    ('PW403', 'forbidden',            403, 'The caller may not do this.'),
    ('PW501', 'upstream_error',       502, 'Meta''s Graph API answered with an error.');

COMMENT ON TABLE core.error_codes IS 'Registry of project SQLSTATEs (PWgnn) with their HTTP status; the API maps errors through it.';
