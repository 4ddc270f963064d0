-- Registration proves ownership (issue 11): what the Graph API answered when the number
-- was last checked. A tenant's registration stores Meta's display number and verified
-- name; verified_at stays null for a number an operator registered directly.
ALTER TABLE core.wa_numbers
    ADD COLUMN verified_name text,
    ADD COLUMN verified_at   timestamptz;

-- The arguments change (Meta's answer, p_now); the function file recreates it.
DROP FUNCTION IF EXISTS api.register_number(bigint, text, text, text, text, integer, text);
