-- message_template_status_update webhooks: Meta may deliver them late or out of order,
-- so a template keeps the time of the event that set its status and ignores older ones.
ALTER TABLE core.templates ADD COLUMN status_event_at timestamptz;

-- Read by webhook processing, which matches template updates by Meta's template id.
CREATE INDEX templates_meta_template_id ON core.templates (meta_template_id) WHERE meta_template_id IS NOT NULL;
