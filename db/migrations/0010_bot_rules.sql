CREATE TABLE core.bot_rules (
    rule_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number_id   bigint NOT NULL REFERENCES core.wa_numbers ON DELETE CASCADE,
    kind        text NOT NULL CONSTRAINT bot_rules_kind_valid CHECK (kind IN
                    ('exact', 'starts_with', 'contains', 'regex', 'welcome', 'default')),
    pattern     text,
    priority    integer NOT NULL DEFAULT 100,
    reply       jsonb NOT NULL,
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT bot_rules_pattern_present CHECK (kind IN ('welcome', 'default') OR pattern IS NOT NULL)
);
-- Read by matching (a number's enabled rules in priority order) and the number foreign key.
CREATE INDEX bot_rules_number_priority ON core.bot_rules (number_id, priority, rule_id);
