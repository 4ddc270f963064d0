"""pgwa: WhatsApp Cloud API campaigns, webhooks, inbox and bots, with the logic in PostgreSQL.

This package holds what the services, the operator's tools and the tests share (the
settings, the named queries, the migration runner, contact staging, number checks);
``pgwa.cli`` is the operator's command line and ``pgwa.local`` runs the whole system on
this machine (the local stack and ``make demo``).
"""
