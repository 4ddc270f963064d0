-- The schemas, and the registries everything else reads: pgwa's own SQLSTATEs, Meta's
-- error codes with what pgwa does about each, and the send path's tunables.
-- core holds the tables and private helpers; api holds what clients call.
CREATE SCHEMA IF NOT EXISTS core;
CREATE SCHEMA IF NOT EXISTS api;

-- The registry of pgwa's own SQLSTATEs. Codes are shaped PWgnn: the digit g names the
-- HTTP family (1 bad input, 2 not found, 3 state conflict, 4 auth, 5 upstream), after
-- PostgREST's PGRSTgxx. The HTTP layer maps codes with this table, never message text.
-- Standard codes the JSON API maps are listed too; a code not listed here is a bug as far
-- as a client is concerned: 500 with a generic message (api/errors.py).
CREATE TABLE core.error_codes (
    sqlstate    text PRIMARY KEY CONSTRAINT error_codes_sqlstate_shape CHECK (sqlstate ~ '^(PW[1-5][0-9]{2}|[0-9A-Z]{5})$'),
    name        text NOT NULL UNIQUE,
    http_status smallint NOT NULL CONSTRAINT error_codes_http_status_valid CHECK (http_status BETWEEN 400 AND 599),
    meaning     text NOT NULL
);
COMMENT ON TABLE core.error_codes IS 'Registry of project SQLSTATEs (PWgnn) with their HTTP status; the API maps errors through it.';

INSERT INTO core.error_codes (sqlstate, name, http_status, meaning) VALUES
    -- Bad input.
    ('PW100', 'invalid_input',        400, 'An argument is missing, malformed or out of range; the message names it.'),
    ('PW101', 'invalid_rows',         422, 'Contact rows failed validation; the detail lists row number, value and reason.'),
    ('PW102', 'invalid_template',     422, 'A template is unknown, not approved, or its parameter mapping does not fit.'),
    ('PW103', 'invalid_pattern',      422, 'A bot rule pattern (regular expression) does not compile or is outside the safe subset; the message says why.'),
    ('PW104', 'window_closed',        422, 'A free-form message outside the 24-hour customer service window; send a template.'),
    ('PW105', 'invalid_payload',      400, 'A webhook or JSON payload does not have the expected shape.'),
    ('PW106', 'opted_out',            422, 'The contact has opted out of messages.'),
    -- A registration the Graph API does not confirm.
    ('PW115', 'number_not_in_waba',   422, 'Meta does not list the phone number under the WhatsApp Business Account given.'),
    -- Bounded contact uploads (api/upload.py): each error names the cap, its environment
    -- variable and the row.
    ('PW120', 'upload_too_large',     413, 'An upload is over the byte cap (PGWA_UPLOAD_MAX_BYTES) or the row cap (PGWA_UPLOAD_MAX_ROWS); the message names the cap and the row.'),
    ('PW121', 'field_too_long',       422, 'A CSV field is longer than the cap (PGWA_UPLOAD_MAX_FIELD); the message names the row and the column.'),
    ('PW122', 'upload_too_slow',      408, 'The upload''s body did not arrive within the deadline (PGWA_UPLOAD_DEADLINE_S).'),
    -- Not found.
    ('PW201', 'campaign_not_found',   404, 'No such campaign for this tenant.'),
    ('PW202', 'number_not_found',     404, 'No such WhatsApp number for this tenant.'),
    ('PW203', 'template_not_found',   404, 'No such template for this number.'),
    ('PW204', 'contact_not_found',    404, 'No such contact for this tenant.'),
    ('PW205', 'tenant_not_found',     404, 'No such tenant.'),
    ('PW206', 'rule_not_found',       404, 'No such bot rule for this tenant.'),
    ('PW207', 'api_key_not_found',      404, 'No such API key for this tenant.'),
    ('PW208', 'notification_not_found', 404, 'No such notification for this tenant.'),
    ('PW209', 'conversation_not_found', 404, 'No conversation between this number and contact for this tenant.'),
    -- State conflicts.
    ('PW301', 'invalid_transition',   409, 'The object is not in a state that allows this operation.'),
    ('PW302', 'already_exists',       409, 'An object with this key already exists.'),
    -- Authentication and authorisation: a key that may not do what it asks, and what the
    -- Graph API says about a number being registered.
    ('PW401', 'unauthenticated',      401, 'The API key is missing, unknown or revoked.'),
    ('PW403', 'forbidden',            403, 'The caller may not do this.'),
    ('PW410', 'insufficient_scope',   403, 'The API key lacks the scope the route needs (read < send < admin).'),
    ('PW415', 'graph_token_rejected', 403, 'Meta rejected the access token (Graph error 190): expired, revoked or not a token.'),
    ('PW416', 'number_not_readable',  403, 'The access token cannot read the phone number on the Graph API (Graph error 100): no WABA of the token holds it.'),
    ('PW417', 'number_unverified',    403, 'A tenant''s registration must carry what the Graph API answered about the number; only an operator registers directly.'),
    ('PW429', 'rate_limited',         429, 'The API key made more requests than its limit allows; retry after Retry-After seconds.'),
    -- Upstream.
    ('PW501', 'upstream_error',       502, 'Meta''s Graph API answered with an error.'),
    ('PW515', 'graph_unavailable',    502, 'Meta''s Graph API could not be reached or answered a server error; retry later.'),
    -- Standard codes bad input reaches when a value cannot even be cast (a timestamp that
    -- is not one, a number out of range), and those of concurrency.
    ('22P02', 'invalid_text_representation', 400, 'A value is not of the expected type (a number, a timestamp, JSON).'),
    ('22003', 'numeric_value_out_of_range',  400, 'A number is out of range.'),
    ('22007', 'invalid_datetime_format',     400, 'A timestamp is not in a recognised format (use ISO 8601).'),
    ('22008', 'datetime_field_overflow',     400, 'A timestamp field is out of range.'),
    ('22023', 'invalid_parameter_value',     400, 'A parameter value is not valid.'),
    ('22021', 'character_not_in_repertoire', 400, 'Text is not valid UTF-8.'),
    ('22P05', 'untranslatable_character',    400, 'Text holds a character PostgreSQL cannot store (e.g. \u0000).'),
    ('2202E', 'array_subscript_error',       400, 'An array argument has the wrong shape.'),
    ('23502', 'not_null_violation',          422, 'A required value is missing.'),
    ('23505', 'unique_violation',            409, 'An object with this key already exists.'),
    ('23514', 'check_violation',             422, 'A value breaks a rule of the schema; the constraint is named.'),
    ('40001', 'serialization_failure',       503, 'A concurrent change got in the way; retry.'),
    ('40P01', 'deadlock_detected',           503, 'A concurrent change got in the way; retry.'),
    ('57014', 'query_canceled',              503, 'The statement took too long and was cancelled; retry later.');

-- What api.functions returns: the api schema documented from pg_description.
CREATE TYPE api.function_doc AS (
    name         text,
    arguments    text,
    returns      text,
    description  text
);

-- Meta's Cloud API error codes and what pgwa does about each. Errors are handled by
-- error.code, never by HTTP status (Meta marks error_subcode deprecated). A code not
-- listed here takes the row for code -1: retry with backoff up to the attempt limit, and
-- tell an operator. Code -2 stands for no code at all (a network error, or HTTP 5xx
-- without an error body).
CREATE TABLE core.meta_error_codes (
    code            integer PRIMARY KEY,
    title           text NOT NULL,
    category        text NOT NULL CONSTRAINT meta_error_codes_category_valid CHECK (category IN
                        ('rate_limit', 'auth', 'template', 'payment', 'recipient', 'policy', 'transient', 'request', 'unknown')),
    retryable       boolean NOT NULL,
    -- An operator must look: a notification is raised.
    alert           boolean NOT NULL,
    -- Sending more of this campaign would only burn the list: pause it.
    pauses_campaign boolean NOT NULL DEFAULT false,
    -- A throughput error: the number's AIMD rate is halved.
    throttles       boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE core.meta_error_codes IS 'Meta Cloud API error codes: category, retry, alert, pause and throttle policy; code -1 is the default for unknown codes.';

INSERT INTO core.meta_error_codes (code, title, category, retryable, alert, pauses_campaign, throttles) VALUES
    (-1,     'Unknown error code',                                   'unknown',    true,  true,  false, false),
    (-2,     'Network error or HTTP 5xx without an error body',       'transient',  true,  false, false, false),
    (0,      'AuthException: unable to authenticate the app user',    'auth',       false, true,  true,  false),
    (1,      'API Unknown',                                          'transient',  true,  false, false, false),
    (2,      'API Service: temporary downtime or overload',           'transient',  true,  false, false, false),
    (3,      'API Method: capability or permissions issue',           'auth',       false, true,  true,  false),
    (4,      'API Too Many Calls: app rate limit reached',            'rate_limit', true,  false, false, true),
    (10,     'Permission Denied',                                    'auth',       false, true,  true,  false),
    (100,    'Invalid parameter',                                    'request',    false, false, false, false),
    (190,    'Access token has expired or is invalid',                'auth',       false, true,  true,  false),
    (200,    'API Permission',                                       'auth',       false, true,  true,  false),
    (368,    'Temporarily blocked for policies violations',           'policy',     false, true,  true,  false),
    (80007,  'Rate limit issues (WhatsApp Business Account)',         'rate_limit', true,  false, false, true),
    (130429, 'Rate limit hit: Cloud API message throughput reached',  'rate_limit', true,  false, false, true),
    (130472, 'User''s number is part of an experiment',              'recipient',  false, false, false, false),
    (130497, 'Business account is restricted from messaging users in this country', 'policy', false, true, false, false),
    (131000, 'Something went wrong',                                 'transient',  true,  false, false, false),
    (131005, 'Access denied',                                        'auth',       false, true,  true,  false),
    (131008, 'Required parameter is missing',                        'request',    false, false, false, false),
    (131009, 'Parameter value is not valid',                         'request',    false, false, false, false),
    (131016, 'Service unavailable',                                  'transient',  true,  false, false, false),
    (131021, 'Recipient cannot be sender',                           'recipient',  false, false, false, false),
    (131026, 'Message undeliverable',                                'recipient',  false, false, false, false),
    (131031, 'Business account has been locked',                     'auth',       false, true,  true,  false),
    (131037, 'WhatsApp provided number needs display name approval', 'auth',       false, true,  true,  false),
    (131042, 'Business eligibility payment issue',                   'payment',    false, true,  true,  false),
    (131045, 'Incorrect certificate: phone number not registered',   'auth',       false, true,  true,  false),
    (131047, 'Re-engagement message: more than 24 hours since the user last replied', 'policy', false, false, false, false),
    (131048, 'Spam rate limit hit: the number''s quality restricts sending', 'policy', false, true, true, false),
    (131049, 'Meta chose not to deliver this message (ecosystem engagement)', 'policy', false, false, false, false),
    (131050, 'User stopped receiving marketing messages',            'recipient',  false, false, false, false),
    (131051, 'Unsupported message type',                             'request',    false, false, false, false),
    (131052, 'Media download error',                                 'request',    false, false, false, false),
    (131053, 'Media upload error',                                   'request',    false, false, false, false),
    (131056, 'Pair rate limit hit: too many messages to this recipient', 'rate_limit', true, false, false, false),
    (131057, 'Account in maintenance mode',                          'transient',  true,  false, false, false),
    (132000, 'Template parameter count mismatch',                    'template',   false, true,  false, false),
    (132001, 'Template does not exist',                              'template',   false, true,  true,  false),
    (132005, 'Template hydrated text too long',                      'template',   false, false, false, false),
    (132007, 'Template format character policy violated',           'template',   false, false, false, false),
    (132012, 'Template parameter format mismatch',                   'template',   false, false, false, false),
    (132015, 'Template is paused',                                   'template',   false, true,  true,  false),
    (132016, 'Template is disabled',                                 'template',   false, true,  true,  false),
    (133004, 'Server temporarily unavailable',                       'transient',  true,  false, false, false),
    (133010, 'Phone number not registered',                          'auth',       false, true,  true,  false);

-- The platform's tunables, one row: the send path (read by claim_sends and report_sends),
-- webhook processing, API keys and bots. Columns are in the order they were added, the
-- order a `SELECT *` into core.settings sees.
CREATE TABLE core.settings (
    singleton           boolean PRIMARY KEY DEFAULT true CONSTRAINT settings_singleton CHECK (singleton),
    -- A claimed message comes back after this long if its worker never reports; its
    -- status webhooks are checked before it is resent.
    claim_timeout_s     integer NOT NULL DEFAULT 30 CONSTRAINT settings_claim_timeout_valid CHECK (claim_timeout_s BETWEEN 5 AND 3600),
    max_attempts        integer NOT NULL DEFAULT 6 CONSTRAINT settings_max_attempts_valid CHECK (max_attempts BETWEEN 1 AND 50),
    retry_backoff_s     integer[] NOT NULL DEFAULT '{5,10,20,40,60,120}',
    -- How far ahead of now a number's sends may be scheduled in one claim (GCRA horizon).
    pace_horizon_ms     integer NOT NULL DEFAULT 250 CONSTRAINT settings_pace_horizon_valid CHECK (pace_horizon_ms BETWEEN 10 AND 5000),
    -- Pace at most this share of the number's limit, so clock jitter never crosses it.
    rate_headroom       double precision NOT NULL DEFAULT 0.97 CONSTRAINT settings_rate_headroom_valid CHECK (rate_headroom > 0 AND rate_headroom <= 1),
    graph_api_version   text NOT NULL DEFAULT 'v21.0',
    -- Salt of the signers the webhook receiver stores beside a payload a number's own app
    -- secret verified (core.app_signer): a salted sha256 of the secret, so a queue row
    -- never holds the secret itself nor a hash a dictionary could reverse.
    signer_salt         text NOT NULL
                        DEFAULT replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''),
    -- A payload read this many times without being processed (its batch crashed or
    -- timed out each time) is dead-lettered instead of being read again.
    webhook_max_attempts integer NOT NULL DEFAULT 5
                        CONSTRAINT settings_webhook_max_attempts_valid CHECK (webhook_max_attempts BETWEEN 1 AND 100),
    -- How long a claimed batch of payloads stays invisible to other workers.
    webhook_claim_s     integer NOT NULL DEFAULT 30
                        CONSTRAINT settings_webhook_claim_s_valid CHECK (webhook_claim_s BETWEEN 1 AND 3600),
    -- The request rate limit of an API key without a limit of its own.
    api_rate_limit_per_minute integer NOT NULL DEFAULT 600
                        CONSTRAINT settings_api_rate_limit_valid CHECK (api_rate_limit_per_minute BETWEEN 1 AND 1000000),
    -- Regex bot rules are matched inside webhook processing, so a hostile pattern or a
    -- huge text must not be able to stall it: rules see a bounded prefix of the normalised
    -- text (patterns outside the safe subset are refused when saved, with PW103). The
    -- lower bound keeps every keyword pattern (at most 500 characters) comparable whole.
    bot_match_prefix_chars integer NOT NULL DEFAULT 1024
                        CONSTRAINT settings_bot_match_prefix_valid CHECK (bot_match_prefix_chars BETWEEN 500 AND 100000),
    -- Read by report_sends (it holds the number's schedule) and by the worker through
    -- api.send_policy (it holds the number's lane).
    throttle_hold_ms    integer NOT NULL DEFAULT 250
                        CONSTRAINT settings_throttle_hold_valid CHECK (throttle_hold_ms BETWEEN 0 AND 10000)
);
COMMENT ON COLUMN core.settings.bot_match_prefix_chars IS
    'Bot rules see at most this many leading characters of the normalised inbound text.';
COMMENT ON COLUMN core.settings.throttle_hold_ms IS
    'After a throughput error (core.meta_error_codes.throttles) a number sends nothing for this long; the worker hands back what it holds for the number that was due before the hold ends.';

INSERT INTO core.settings DEFAULT VALUES;
