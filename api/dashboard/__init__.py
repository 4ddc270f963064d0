"""The web dashboard under /dashboard: server-rendered pages (Jinja2, htmx) for marketers
and agents, as thin as the JSON API: every page reads and writes through ``api``
functions, with the tenant and the role check resolved in SQL from the session.

::

    passwords.py   argon2 hashing and checking (argon2-cffi); the hash alone reaches SQL
    sessions.py    the signed session cookie, token hashes, CSRF tokens, one-time slots
    security.py    the Content-Security-Policy and companion headers of every response
    events.py      /dashboard/events: Server-Sent Events fed by one LISTEN connection
    views.py       the pages and their form posts
    inbox.py       the inbox: conversations, threads, replies, notes, canned replies
"""
