"""Template sync: fetch a WABA's message templates from the Graph API, following Meta's
cursor paging, then store every page with one ``api.sync_templates`` call.

``POST /v1/templates/sync`` (api/routes.py) does it with the number's credentials and no
connection held while Meta answers; :func:`sync_templates` is the same fetch and the same
statement for scripts, the local stack, the demo, the benchmarks and the tests. The access
token goes only to the Graph API's own host: a ``paging.next`` link to anywhere else is not
followed. Errors name Meta's code and message, never the token.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx
import orjson
import psycopg
from psycopg.rows import dict_row

from api.errors import ApiError
from pgwa.queries import queries

FIELDS = "id,name,language,status,category,components"
MAX_PAGES = 200


def _upstream(message: str) -> ApiError:
    return ApiError("PW501", message, "Check the number's access token and WABA in WhatsApp Manager; "
                    "retry later if Meta is unavailable.")


async def fetch_templates(graph_base_url: str, version: str, waba_id: str, token: str, *,
                          page_size: int = 100, transport: httpx.AsyncBaseTransport | None = None) -> list[dict]:
    """Every template of the WABA, as Meta lists them; raises ApiError PW501 when Meta refuses."""
    base = graph_base_url.rstrip("/")
    origin = urlsplit(base)[:2]
    url: str | None = f"{base}/{version}/{waba_id}/message_templates"
    params: dict | None = {"limit": page_size, "fields": FIELDS}
    templates: list[dict] = []
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30,
                                 transport=transport) as http:
        for _ in range(MAX_PAGES):
            if url is None:
                return templates
            if urlsplit(url)[:2] != origin:
                raise _upstream("the Graph API's next page is on another host; not followed")
            try:
                response = await http.get(url, params=params)
            except httpx.HTTPError as exc:
                raise _upstream(f"the Graph API could not be reached: {type(exc).__name__}") from None
            try:
                page = response.json()
            except ValueError:
                page = None
            if response.status_code != 200 or not isinstance(page, dict):
                error = page.get("error", {}) if isinstance(page, dict) else {}
                raise _upstream(f"Graph API error {error.get('code', response.status_code)} listing "
                                f"templates of WABA {waba_id}: {error.get('message', response.reason_phrase)}")
            data = page.get("data", [])
            if not isinstance(data, list):
                raise _upstream("the Graph API answered a page without a data list")
            templates.extend(t for t in data if isinstance(t, dict))
            # `next` already carries the cursor and the query.
            paging = page.get("paging")
            url, params = (paging.get("next") if isinstance(paging, dict) else None), None
    raise _upstream(f"more than {MAX_PAGES} pages of templates; stopped")


def sync_templates(conn: psycopg.Connection, tenant_id: int, waba_id: str, token: str, graph_base_url: str,
                   version: str) -> int:
    """Fetch every template of the WABA and store them, as the route does; returns how many
    Meta listed. Blocking: not for a running event loop. Raises ApiError PW501 when Meta refuses."""
    templates = asyncio.run(fetch_templates(graph_base_url, version, waba_id, token))
    with conn.cursor(row_factory=dict_row) as cur:
        synced = cur.execute(queries["sync_templates"], {
            "tenant_id": tenant_id, "waba_id": waba_id, "templates": orjson.dumps(templates).decode()}).fetchone()
    return synced["received"]
