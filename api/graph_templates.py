"""Templates at the Graph API: sync (fetch a WABA's message templates, following Meta's
cursor paging, then store every page with one ``api.sync_templates`` call), create
(``POST /{waba-id}/message_templates``) and delete (``DELETE /{waba-id}/message_templates``
with the template's ``hsm_id``: one language).

``POST /v1/templates/sync`` (api/routes.py) does it with the number's credentials and no
connection held while Meta answers; :func:`sync_templates` is the same fetch and the same
statement for scripts, the local stack, the demo, the benchmarks and the tests. The access
token goes only to the Graph API's own host: a ``paging.next`` link to anywhere else is not
followed. Errors name Meta's code and message, never the token.

Creating and deleting are three steps each, so that no connection is held while Meta
answers: the SQL checks and claims (``api.prepare_template`` / ``api.prepare_template_deletion``),
Meta is asked (:func:`create_template` / :func:`delete_template`), the SQL records the
answer (``api.template_submitted`` or ``api.template_refused`` / ``api.template_deleted``).
``POST /v1/templates`` and ``DELETE /v1/templates/{id}`` (api/templates.py) and the CLI
(:func:`submit_template`, :func:`remove_template`) run the same steps.
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
# What a definition sent to Meta may hold (the rest of a request body is pgwa's).
DEFINITION_FIELDS = ("name", "language", "category", "parameter_format", "components", "allow_category_change")
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


def _refused(action: str, response: httpx.Response, page: object) -> ApiError:
    """Meta's error for a create or delete, by its code: a refusal (4xx) is the client's to fix,
    anything else is Meta being unavailable."""
    error = page.get("error", {}) if isinstance(page, dict) else {}
    error = error if isinstance(error, dict) else {}
    code = error.get("code", response.status_code)
    sub = f"/{error['error_subcode']}" if error.get("error_subcode") else ""
    text = error.get("error_user_msg") or error.get("message") or response.reason_phrase
    if 400 <= response.status_code < 500 and code != 190:
        return ApiError("PW131", f"Meta refused to {action}: error {code}{sub}: {text}",
                        "Fix the definition as Meta says (a name may not be reused for 30 days after "
                        "deleting an approved template), or sync the WABA's templates to see Meta's list.")
    if code == 190:
        return ApiError("PW415", f"Meta rejected the WABA's access token while trying to {action} (error 190)",
                        "Register the number again with a valid system user token.")
    return ApiError("PW515", f"the Graph API could not {action}: error {code}: {text}", "Retry later.")


async def _call(method: str, url: str, token: str, action: str, *, json: dict | None = None,
                params: dict | None = None, transport: httpx.AsyncBaseTransport | None = None) -> dict:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30,
                                 transport=transport) as http:
        try:
            response = await http.request(method, url, json=json, params=params)
        except httpx.HTTPError as exc:
            raise ApiError("PW515", f"the Graph API could not be reached to {action}: {type(exc).__name__}",
                           "Retry later.") from None
    try:
        page = response.json()
    except ValueError:
        page = None
    if response.status_code != 200 or not isinstance(page, dict) or "error" in page:
        raise _refused(action, response, page)
    return page


async def create_template(graph_base_url: str, version: str, waba_id: str, token: str, definition: dict, *,
                          transport: httpx.AsyncBaseTransport | None = None) -> dict:
    """Meta's answer to ``POST /{waba-id}/message_templates``: ``{"id", "status", "category"}``.
    Raises ApiError PW131 when Meta refuses the definition, PW415 for a rejected token, PW515
    when the Graph API is unavailable."""
    url = f"{graph_base_url.rstrip('/')}/{version}/{waba_id}/message_templates"
    answer = await _call("POST", url, token, f"create template {definition.get('name')}", json=definition,
                         transport=transport)
    if not answer.get("id"):
        raise ApiError("PW515", "the Graph API created the template but answered no id",
                       "Sync the WABA's templates to pick it up.")
    return answer


async def delete_template(graph_base_url: str, version: str, waba_id: str, token: str, name: str, hsm_id: str, *,
                          transport: httpx.AsyncBaseTransport | None = None) -> dict:
    """Meta's answer to ``DELETE /{waba-id}/message_templates?name=..&hsm_id=..`` (this one
    language only); raises ApiError as :func:`create_template` does."""
    url = f"{graph_base_url.rstrip('/')}/{version}/{waba_id}/message_templates"
    return await _call("DELETE", url, token, f"delete template {name}", params={"name": name, "hsm_id": hsm_id},
                       transport=transport)


def _one(conn: psycopg.Connection, query: str, params: dict) -> dict:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchone()


def submit_template(conn: psycopg.Connection, tenant_id: int, definition: dict, graph_base_url: str, *,
                    waba_id: str | None = None, number_id: int | None = None) -> tuple[dict, bool]:
    """Create a template as POST /v1/templates does (check, claim, ask Meta, record); returns
    the template and whether it was submitted now (False: it already existed). Blocking:
    not for a running event loop. Raises what the steps raise (psycopg errors, ApiError)."""
    claim = _one(conn, queries["prepare_template"], {
        "tenant_id": tenant_id, "definition": orjson.dumps(definition).decode(), "waba_id": waba_id,
        "number_id": number_id})
    if not claim["submit"]:
        return _one(conn, queries["template_detail"], {"tenant_id": tenant_id, "template_id": claim["template_id"]}
                    )["template"], False
    try:
        answer = asyncio.run(create_template(graph_base_url, claim["graph_api_version"], claim["waba_id"],
                                             claim["access_token"], claim["request"]))
    except ApiError:
        conn.execute(queries["template_refused"], {"tenant_id": tenant_id, "template_id": claim["template_id"]})
        raise
    return _one(conn, queries["template_submitted"], {
        "tenant_id": tenant_id, "template_id": claim["template_id"], "answer": orjson.dumps(answer).decode()}
        )["template"], True


def remove_template(conn: psycopg.Connection, tenant_id: int, template_id: int, graph_base_url: str, *,
                    force: bool = False) -> dict:
    """Delete a template (this language) as DELETE /v1/templates/{id} does; returns it, DELETED.
    Blocking. Raises what the steps raise."""
    plan = _one(conn, queries["prepare_template_deletion"], {
        "tenant_id": tenant_id, "template_id": template_id, "force": force})
    if plan["submit"]:
        asyncio.run(delete_template(graph_base_url, plan["graph_api_version"], plan["waba_id"], plan["access_token"],
                                    plan["name"], plan["meta_template_id"]))
    return _one(conn, queries["template_deleted"], {"tenant_id": tenant_id, "template_id": template_id})["template"]
