-- The send API, second cut (issue 14): templates with every parameter (header, body,
-- buttons, mapped as campaigns map them), the customer-service window as a state error
-- naming when it closed, and the time as a parameter (p_now).

-- api.send_message gains p_now and p_wake; no overloads in api, so the old signature goes.
DROP FUNCTION IF EXISTS api.send_message(bigint, bigint, text, jsonb, text);
DROP FUNCTION IF EXISTS api.send_message(bigint, bigint, text, jsonb, text, timestamptz);

INSERT INTO core.error_codes (sqlstate, name, http_status, meaning) VALUES
    ('PW304', 'service_window_closed', 409,
     'A free-form message (text, media, interactive) needs the contact''s 24-hour customer-service window open; it is closed.');

-- The send API's layouts of a template, by the shape of its parameters: core.map_template's
-- render skeleton for a template and a mapping whose values are slots, so that a request
-- of a known shape is laid out by core.render_components alone (campaigns do the same per
-- row). A cache: unlogged, and keyed by the template's components, so a template Meta
-- changed gets new rows.
CREATE UNLOGGED TABLE core.api_template_layouts (
    template_id  bigint NOT NULL REFERENCES core.templates ON DELETE CASCADE,
    shape_md5    text NOT NULL,   -- md5 of the template's components and format and the mapping's shape
    render       jsonb NOT NULL,  -- core.map_template's skeleton, slot n the shape's n-th value
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, shape_md5)
);
COMMENT ON TABLE core.api_template_layouts IS
    'Cache of the send API (core.api_template_message): core.map_template''s render skeleton per template and shape of parameters (values as slots).';
