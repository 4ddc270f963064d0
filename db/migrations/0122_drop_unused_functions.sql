-- Two functions nothing called: api.dashboard_conversations (the dashboard's inbox reads
-- api.inbox_conversations through api.dashboard_actor; a second path that authorises
-- the same read is one more place to get it wrong) and core.api_contact (the send API
-- creates its contacts in one statement per batch, db/functions/messages.sql).
DROP FUNCTION IF EXISTS api.dashboard_conversations(bytea, bigint, text, integer, timestamptz);
DROP FUNCTION IF EXISTS core.api_contact(bigint, text);
