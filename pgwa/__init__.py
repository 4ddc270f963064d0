"""pgwa: WhatsApp Cloud API campaigns, webhooks, inbox and bots, with the logic in PostgreSQL."""
