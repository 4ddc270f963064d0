-- Bot rules are matched inside webhook processing (core.match_bot_rules), set-based,
-- against the inbound text normalised for case, whitespace and accents. A rule keeps its
-- pattern normalised the same way, so that matching compares stored values and needs
-- no per-rule function call: match_text for exact rules (and regexes, unaccented only),
-- like_pattern ('PATTERN%' or '%PATTERN%', wildcards escaped) for starts_with and
-- contains, evaluated as LIKE over an index-only scan in priority order.
-- unaccent ships in contrib (Debian's postgresql-15, the postgres image).
CREATE EXTENSION IF NOT EXISTS unaccent SCHEMA public;

ALTER TABLE core.bot_rules
    ADD COLUMN match_text   text,
    ADD COLUMN like_pattern text,
    ADD COLUMN updated_at   timestamptz NOT NULL DEFAULT now();

-- Rules saved before this migration (no api function wrote any), normalised as
-- core.normalize_text does.
UPDATE core.bot_rules SET
    match_text = CASE WHEN kind = 'regex' THEN public.unaccent('public.unaccent'::regdictionary, pattern)
                      WHEN kind IN ('exact', 'starts_with', 'contains') THEN
                          upper(public.unaccent('public.unaccent'::regdictionary,
                                                btrim(regexp_replace(pattern, '\s+', ' ', 'g'))))
                 END;
UPDATE core.bot_rules SET like_pattern =
    CASE kind WHEN 'starts_with' THEN replace(replace(replace(match_text, '\', '\\'), '%', '\%'), '_', '\_') || '%'
              WHEN 'contains' THEN '%' || replace(replace(replace(match_text, '\', '\\'), '%', '\%'), '_', '\_') || '%'
    END;

ALTER TABLE core.bot_rules
    ADD CONSTRAINT bot_rules_match_text_present CHECK (kind IN ('welcome', 'default') OR match_text IS NOT NULL),
    ADD CONSTRAINT bot_rules_priority_valid CHECK (priority BETWEEN 0 AND 1000000);

-- Read by core.match_bot_rules: a number's exact rules by their normalised text.
CREATE INDEX bot_rules_exact ON core.bot_rules (number_id, match_text, priority, rule_id)
    WHERE enabled AND kind = 'exact';
-- Read by core.match_bot_rules: starts_with and contains rules in priority order; the
-- LIKE runs on the index tuples (index-only), the scan stops at the first hit.
CREATE INDEX bot_rules_like ON core.bot_rules (number_id, priority, rule_id) INCLUDE (like_pattern)
    WHERE enabled AND kind IN ('starts_with', 'contains');
-- Read by core.match_bot_rules: regex rules in priority order, index-only.
CREATE INDEX bot_rules_regex ON core.bot_rules (number_id, priority, rule_id) INCLUDE (match_text)
    WHERE enabled AND kind = 'regex';
