-- core.render_components becomes a one-row set-returning function, which the planner
-- inlines into the claim (db/functions/sending.sql); a return type cannot be replaced,
-- so the old one goes first and the function files make the new one.
DROP FUNCTION IF EXISTS core.render_components(jsonb, jsonb);
