"""The Starlette application: the webhook receiver and /healthz.

``create_app()`` is the factory uvicorn serves (``python -m api``); more routes join
through ``routes``. /webhooks/whatsapp is a plain ASGI endpoint that ``PgwaApp`` calls
before Starlette's middleware and router: at thousands of webhooks a second, that
dispatch is a quarter of the request's CPU, and the endpoint answers every error
itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Sequence
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from api.dashboard.views import Dashboard
from api.routes import JsonApi
from api.webhooks import PATH, GroupCommitter, WhatsAppWebhook
from pgwa.config import Settings

SIGNERS = "SELECT app_secret, signer, waba_ids FROM api.webhook_signers()"
HEARTBEAT = "SELECT api.receiver_heartbeat()"
HEARTBEAT_RETRY_S = 1.0

log = logging.getLogger("pgwa.api")


async def beat(pool) -> None:
    """Tell the database, as often as it asks, that Meta's webhooks are being answered.

    The worker resends a message whose answer was lost only once the webhook stream has
    caught up past it; a gap in these beats is an outage during which Meta's statuses
    went unanswered (api.receiver_heartbeat).
    """
    while True:
        try:
            async with pool.connection() as conn:
                interval = (await (await conn.execute(HEARTBEAT)).fetchone())[0]
        except Exception as exc:  # noqa: BLE001 (the database is away: the gap is the record)
            log.warning("receiver heartbeat failed (%s); retrying", type(exc).__name__)
            interval = HEARTBEAT_RETRY_S
        await asyncio.sleep(interval)


class PgwaApp(Starlette):
    """Starlette, with the webhook path dispatched straight to its endpoint."""

    webhook: WhatsAppWebhook | None = None

    async def __call__(self, scope, receive, send) -> None:
        if self.webhook is not None and scope["type"] == "http" and scope["path"] == PATH:
            scope["app"] = self
            await self.webhook(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


async def healthz(request: Request) -> JSONResponse:
    """200 while the webhook receiver can reach PostgreSQL, 503 otherwise."""
    committer: GroupCommitter = request.app.state.committer
    ok = committer.healthy
    return JSONResponse({"ok": ok, "webhooks_stored": committer.stored,
                         "webhook_commits": committer.commits}, status_code=200 if ok else 503)


def create_app(settings: Settings | None = None, routes: Sequence[BaseRoute] = ()) -> PgwaApp:
    """The API app: /webhooks/whatsapp, /healthz and any extra ``routes``."""
    settings = settings or Settings.from_env()
    committer = GroupCommitter(settings.session_url())   # with the statement_timeout
    json_api = JsonApi(settings)  # /v1, /metrics, /openapi.json (api/routes.py)
    dashboard = Dashboard(json_api, listen_url=settings.session_url())  # /dashboard, /static (api/dashboard/)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        await committer.start()
        try:
            await json_api.start()
            await dashboard.start()
            await webhook.refresh_secrets()
            # Everything alive now lives as long as the process: out of the collector's
            # sight, a full collection no longer walks it (measured: 30-80 ms pauses of
            # the event loop, every second or so at 15,000 webhooks/s, without this).
            gc.collect()
            gc.freeze()
            heart = asyncio.create_task(beat(json_api.pool), name="receiver-heartbeat")
            try:
                yield
            finally:
                heart.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heart
        finally:
            await dashboard.stop()
            await json_api.stop()
            await committer.stop()

    async def numbers_secrets() -> list[tuple[str, str, list[str]]]:
        async with json_api.pool.connection() as conn:
            return await (await conn.execute(SIGNERS)).fetchall()

    webhook = WhatsAppWebhook(settings.verify_token, settings.app_secrets, committer, numbers_secrets)
    app = PgwaApp(
        # Also routed normally: listed with the others, and reached by /webhooks/whatsapp/.
        routes=[Route(PATH, webhook, methods=["GET", "HEAD", "POST"]),
                Route("/healthz", healthz),
                *routes,
                *json_api.routes(),
                *dashboard.routes()],
        lifespan=lifespan,
        exception_handlers=json_api.exception_handlers,
    )
    app.webhook = webhook
    app.state.settings = settings
    app.state.committer = committer
    app.state.json_api = json_api
    app.state.dashboard = dashboard
    return app
