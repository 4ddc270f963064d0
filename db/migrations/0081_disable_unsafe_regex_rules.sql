-- Regex rules saved before the safe subset (0080) that fall outside it are disabled, not
-- deleted: the tenant sees them with enabled = false in api.bot_rules, and gets one
-- notification per number listing them, to rewrite and re-enable. The test below is the
-- subset as core.regex_unsafe_reason (bots.sql) defined it when this ran, written as
-- patterns over the stored pattern (bots.sql is applied after migrations); it errs on
-- the side of disabling.
WITH unsafe AS (
    SELECT r.rule_id, r.number_id, r.pattern
    FROM core.bot_rules r
    WHERE r.kind = 'regex' AND r.enabled AND (
          length(r.pattern) > 200
       OR r.pattern ~ '\\[1-9k]'                                   -- back-references
       OR r.pattern ~ '\(\?[^:]' OR left(r.pattern, 3) = '***'     -- look-around, options, directors
       OR EXISTS (SELECT 1 FROM regexp_matches(r.pattern, '\{([0-9]+)(,([0-9]*))?\}', 'g') b
                  WHERE b[1]::numeric > 100 OR nullif(b[3], '')::numeric > 100)
       OR r.pattern ~ '\([^()]*([*+?]|\{[0-9])[^()]*\)([*+]|\{[0-9])' -- a repeated group with a quantifier
       OR r.pattern ~ '\([^()]*\|[^()]*\)([*+]|\{[0-9])')             -- or an alternation
), disabled AS (
    UPDATE core.bot_rules r SET enabled = false, updated_at = now()
    FROM unsafe u WHERE r.rule_id = u.rule_id
    RETURNING r.rule_id, r.number_id, r.pattern
)
INSERT INTO core.notifications (tenant_id, kind, severity, message, details, dedupe_key)
SELECT n.tenant_id, 'bot_rules_disabled', 'warning',
       format('%s regex bot rule(s) of number %s were disabled: their patterns are outside the safe subset',
              count(*), coalesce(n.display_phone_number, n.phone_number_id)),
       jsonb_build_object('number_id', n.number_id,
                          'rules', jsonb_agg(jsonb_build_object('rule_id', d.rule_id, 'pattern', d.pattern)
                                             ORDER BY d.rule_id),
                          'hint', 'No back-references, look-around or embedded options; at most 200 characters; '
                                  'repetition bounds up to 100; no repeated group that holds a quantifier or |. '
                                  'Save the rule again with a pattern inside the subset.'),
       'bot_rules_disabled:0081:' || n.number_id
FROM disabled d JOIN core.wa_numbers n ON n.number_id = d.number_id
GROUP BY n.tenant_id, n.number_id, n.display_phone_number, n.phone_number_id
ON CONFLICT DO NOTHING;
