-- Errors of a registration the Graph API does not confirm (issue 11).
INSERT INTO core.error_codes (sqlstate, name, http_status, meaning) VALUES
    ('PW115', 'number_not_in_waba',   422, 'Meta does not list the phone number under the WhatsApp Business Account given.'),
    ('PW415', 'graph_token_rejected', 403, 'Meta rejected the access token (Graph error 190): expired, revoked or not a token.'),
    ('PW416', 'number_not_readable',  403, 'The access token cannot read the phone number on the Graph API (Graph error 100): no WABA of the token holds it.'),
    ('PW417', 'number_unverified',    403, 'A tenant''s registration must carry what the Graph API answered about the number; only an operator registers directly.'),
    ('PW515', 'graph_unavailable',    502, 'Meta''s Graph API could not be reached or answered a server error; retry later.');
