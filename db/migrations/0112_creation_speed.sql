-- Campaign creation speed (issue 17). The check on a contact's wa_id said
-- '^[1-9][0-9]{6,14}$': PostgreSQL's regular expression engine spends microseconds a row
-- on a bounded repeat, a measurable share of inserting 100,000 new contacts. The same
-- rule, spelled as an unbounded match and a length test, costs a fraction of that.
ALTER TABLE core.contacts DROP CONSTRAINT contacts_wa_id_e164;
ALTER TABLE core.contacts ADD CONSTRAINT contacts_wa_id_e164
    CHECK (wa_id ~ '^[1-9][0-9]*$' AND length(wa_id) BETWEEN 7 AND 15);

-- core.check_staged_contacts gains p_count_duplicates (api.create_campaign counts them
-- as it dedupes, sparing a sort of the whole list); no overloads, so the old one goes.
DROP FUNCTION IF EXISTS core.check_staged_contacts(text, text, text[]);

-- A campaign from a segment no longer stages its contacts (core.new_campaign reads them).
DROP FUNCTION IF EXISTS core.stage_segment(bigint, core.compiled_segment);
