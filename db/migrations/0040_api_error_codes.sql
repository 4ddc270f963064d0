-- SQLSTATEs the JSON API maps besides pgwa's own: the not-found codes its new functions
-- raise, and the standard codes bad input reaches when a value cannot even be cast
-- (a timestamp that is not one, a number out of range). A code not listed here is a
-- bug as far as a client is concerned: 500 with a generic message (api/errors.py).
INSERT INTO core.error_codes (sqlstate, name, http_status, meaning) VALUES
    ('PW207', 'api_key_not_found',          404, 'No such API key for this tenant.'),
    ('PW208', 'notification_not_found',     404, 'No such notification for this tenant.'),
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
