"""The worker: thin asyncio loops around SQL functions.

``worker.sender`` claims, sends and reports campaign and reply messages;
``worker.graph`` is the Graph API client; ``worker.db`` holds the connection
handling. Run it with ``python -m worker``.
"""
