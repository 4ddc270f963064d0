-- A read receipt ({"messaging_product": "whatsapp", "status": "read", "message_id": wamid})
-- travels the reply queue like a reply, as an outbound message of kind 'receipt'; Meta
-- answers it {"success": true}, without a wamid (api.report_sends settles it).
ALTER TABLE core.outbound_messages DROP CONSTRAINT outbound_messages_kind_valid;
ALTER TABLE core.outbound_messages ADD CONSTRAINT outbound_messages_kind_valid
    CHECK (kind IN ('campaign', 'reply', 'bot', 'agent', 'llm', 'receipt')) NOT VALID;
ALTER TABLE core.outbound_messages VALIDATE CONSTRAINT outbound_messages_kind_valid;
