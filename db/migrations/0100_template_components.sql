-- Templates as Meta defines them (issue 12): what template sync keeps beside the
-- components, the render skeleton a campaign variant sends, and template errors that
-- pause a campaign instead of burning its list.

-- Meta's template fields (reference §5.1): NAMED templates match parameters by
-- parameter_name ({{first_name}}), POSITIONAL ones by position ({{1}}).
ALTER TABLE core.templates
    ADD COLUMN parameter_format text NOT NULL DEFAULT 'POSITIONAL'
        CONSTRAINT templates_parameter_format_valid CHECK (parameter_format IN ('POSITIONAL', 'NAMED')),
    ADD COLUMN sub_category text,
    ADD COLUMN quality_score text,
    ADD COLUMN rejected_reason text,
    ADD COLUMN previous_category text;
COMMENT ON COLUMN core.templates.parameter_format IS
    'POSITIONAL ({{1}}) or NAMED ({{first_name}}): named parameters are sent with their parameter_name.';
COMMENT ON COLUMN core.templates.quality_score IS
    'Meta''s quality_score.score (GREEN, YELLOW, RED, UNKNOWN) at the last sync or quality event.';
COMMENT ON COLUMN core.templates.previous_category IS
    'The category before Meta changed it (template_category_update), as Meta reports it.';

-- The components array of the send request with the campaign's constants folded in and
-- one slot a per-row value ({"$slot": n, "$path": "{text}"} stands for a parameter whose
-- value is the n-th (0-based) element of the queue message's "p" array). Null for a
-- campaign made before it: its "p" are the body parameters in order.
ALTER TABLE core.campaign_templates ADD COLUMN render jsonb, ADD COLUMN mapping jsonb;
COMMENT ON COLUMN core.campaign_templates.render IS
    'Skeleton of Meta''s components array: constants folded in, per-row values marked {"$slot": n, "$path": ...} (core.render_components); null for body-only campaigns made before it.';
COMMENT ON COLUMN core.campaign_templates.mapping IS
    'The template mapping as api.create_campaign was given it (header, body, buttons); null for campaigns made before it, whose params are their body mapping.';
COMMENT ON COLUMN core.campaign_templates.params IS
    'The sources of the queue message''s per-row values "p", in order: [{"column": ...}] (core.defer_capped rebuilds "p" from them); before render skeletons, the body parameters ({"column"} or {"value"}).';

-- Flow errors (reference §2): a blocked or throttled Flow stops every send of the template.
INSERT INTO core.meta_error_codes (code, title, category, retryable, alert, pauses_campaign) VALUES
    (132068, 'Flow is blocked',                                        'template', false, true, true),
    (132069, 'Flow is throttled: 10 messages sent with it in the last hour', 'template', false, true, true)
ON CONFLICT (code) DO NOTHING;

-- A template error repeats on every send of the campaign: pause it, tell the operator,
-- keep the rest queued for a resume after the fix. 131053 (media could not be fetched)
-- also arrives as a failed status.
UPDATE core.meta_error_codes SET pauses_campaign = true, alert = true
 WHERE code IN (132000, 132001, 132005, 132007, 132012, 132015, 132016, 132068, 132069, 131053);

-- The template listing (api.templates) shows them too.
ALTER TYPE api.template
    ADD ATTRIBUTE parameter_format text,
    ADD ATTRIBUTE sub_category text,
    ADD ATTRIBUTE quality_score text,
    ADD ATTRIBUTE rejected_reason text,
    ADD ATTRIBUTE previous_category text;

-- One parameter a template needs when sent (api.template_parameters).
CREATE TYPE api.template_parameter AS (
    component       text,      -- header, body or button
    index           integer,   -- header/body: the placeholder's position (1-based); button: its index (0-based)
    parameter_name  text,      -- NAMED templates: the placeholder's name
    kind            text,      -- text, image, video, document, location, url_suffix, coupon_code, payload, otp
    required        boolean,   -- the campaign mapping must give it
    example         text,      -- Meta's example value, where the template has one
    mapping         text       -- where it goes in a campaign mapping: header, body[0], body.first_name, buttons.0
);
