-- SQLSTATEs of the bounded contact uploads (api/upload.py): a body over the byte or row
-- cap, a CSV field over the length cap, and a body that did not arrive within the deadline.
-- Each error names the cap, its environment variable and the row.
INSERT INTO core.error_codes (sqlstate, name, http_status, meaning) VALUES
    ('PW120', 'upload_too_large',   413, 'An upload is over the byte cap (PGWA_UPLOAD_MAX_BYTES) or the row cap (PGWA_UPLOAD_MAX_ROWS); the message names the cap and the row.'),
    ('PW121', 'field_too_long',     422, 'A CSV field is longer than the cap (PGWA_UPLOAD_MAX_FIELD); the message names the row and the column.'),
    ('PW122', 'upload_too_slow',    408, 'The upload''s body did not arrive within the deadline (PGWA_UPLOAD_DEADLINE_S).');
