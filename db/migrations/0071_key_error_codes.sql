-- The answers of a key that may not do what it asks: a scope it lacks, a rate it exceeds.
INSERT INTO core.error_codes (sqlstate, name, http_status, meaning) VALUES
    ('PW410', 'insufficient_scope', 403, 'The API key lacks the scope the route needs (read < send < admin).'),
    ('PW429', 'rate_limited',       429, 'The API key made more requests than its limit allows; retry after Retry-After seconds.');
