-- api.send_messages waits at most 2 s for a row another transaction holds (a contact that a
-- campaign being created has inserted but not committed, say; db/functions/messages.sql):
-- the request whose row is held answers 503 with Retry-After, the requests beside it go on.
INSERT INTO core.error_codes (sqlstate, name, http_status, meaning) VALUES
    ('55P03', 'lock_not_available', 503,
     'A row the request needs is being written by another transaction (a campaign being created, say); retry in a second.');
