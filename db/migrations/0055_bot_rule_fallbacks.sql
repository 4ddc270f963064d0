-- Read by core.match_bot_rules: a number's welcome and default rules in priority order
-- (without it, finding the default rule walks every rule of the number by priority).
CREATE INDEX bot_rules_fallbacks ON core.bot_rules (number_id, kind, priority, rule_id)
    WHERE enabled AND kind IN ('welcome', 'default');
