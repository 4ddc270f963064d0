-- Dashboard hardening: a file of the inbox is served in the conversation that shows it
-- (db/functions/dashboard_inbox.sql), so api.inbox_media_content takes the conversation
-- too. The old form (tenant, user, media), which let an agent read an upload made in a
-- colleague's conversation, goes: no overloads in api.
DROP FUNCTION IF EXISTS api.inbox_media_content(bigint, bigint, bigint);
