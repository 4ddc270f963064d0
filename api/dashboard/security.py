"""The headers every dashboard response carries (pages, fragments, the event stream, static
files): a Content-Security-Policy that runs only our own script files (no inline script,
no inline event handler, no eval: htmx is told so by the ``htmx-config`` meta tag of
base.html) and only our own style sheets, plus nosniff, a same-origin Referer (an
invitation link's token never leaves in one) and no framing.

A response that sets its own policy keeps it: a media file is served with
``default-src 'none'; sandbox`` (api/dashboard/inbox.py).
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# img-src https: the campaign preview shows a template's header image by its public link.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https:; media-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


class SecurityHeaders:
    """ASGI wrapper of one route's app: adds HEADERS to its response, each unless already set."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
