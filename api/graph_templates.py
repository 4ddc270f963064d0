"""Fetch a WABA's message templates from the Graph API, following Meta's cursor paging.

The async twin of pgwa.templates.sync_templates' fetch: the route gathers every page,
then stores them all with one ``api.sync_templates`` call. The access token goes only
to the Graph API's own host: a ``paging.next`` link to anywhere else is not followed.
Errors name Meta's code and message, never the token.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from api.errors import ApiError

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
