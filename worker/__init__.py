"""The worker: thin asyncio loops around SQL functions.

``worker.sender`` claims, sends and reports campaign and reply messages;
``worker.webhooks`` processes the queued webhook payloads; ``worker.llm`` answers
through an LLM what no bot rule matched; ``worker.graph`` is the Graph API client;
``worker.db`` holds the connection handling; ``worker.loop`` what the loops share
(the supervisor that runs their tasks, their one way to wait, their batched reports).
Run it with ``python -m worker``.
"""
