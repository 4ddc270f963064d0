"""Template sync: page through a WABA's templates on the Graph API into api.upsert_template."""

from __future__ import annotations

import httpx
import orjson
import psycopg

UPSERT = "SELECT api.upsert_template(%s, %s, %s, %s, %s, %s, %s, %s)"


def sync_templates(conn: psycopg.Connection, tenant_id: int, waba_id: str, token: str,
                   graph_base_url: str, version: str = "v21.0") -> int:
    """Fetch every template of the WABA (following Meta's cursor paging) and store it.

    Returns how many were stored. Raises httpx.HTTPStatusError with Meta's message (never
    the token) when the Graph API refuses.
    """
    url: str | None = f"{graph_base_url.rstrip('/')}/{version}/{waba_id}/message_templates"
    params: dict | None = {"limit": 100, "fields": "id,name,language,status,category,components"}
    stored = 0
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        while url:
            response = http.get(url, params=params)
            if response.status_code != 200:
                error = response.json().get("error", {}) if response.content else {}
                raise httpx.HTTPStatusError(
                    f"Graph API error {error.get('code')} listing templates of WABA {waba_id}: "
                    f"{error.get('message', response.reason_phrase)}",
                    request=response.request, response=response)
            page = response.json()
            with conn.transaction():
                for t in page.get("data", []):
                    conn.execute(UPSERT, (tenant_id, waba_id, t["name"], t["language"],
                                          orjson.dumps(t.get("components", [])).decode(),
                                          t.get("status", "APPROVED"), t.get("category"), t.get("id")))
                    stored += 1
            # `next` already carries the cursor and the query.
            url, params = page.get("paging", {}).get("next"), None
    return stored
