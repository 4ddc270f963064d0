"""The dashboard's pages and form posts: each one statement (or two: the session for the
page's header, then its data) through ``api`` functions, with the tenant and the role
check resolved in SQL from the session's token hash::

    SELECT ... FROM api.campaigns(api.dashboard_authorize(%(s)s, 'campaigns.read'), ...)

A role without the action gets PW403 from SQL, rendered as a 403 page; no session is
PW401, a redirect to the login page. Every POST carries the session's CSRF token (a
hidden field, or the X-CSRF-Token header htmx sends). Nothing here writes a table.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from api.dashboard import passwords
from api.dashboard.events import EventHub
from api.dashboard.security import SecurityHeaders
from api.dashboard.sessions import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    OneTimeSlots,
    Signer,
    new_token,
    token_hash,
)

log = logging.getLogger("pgwa.api.dashboard")

HERE = Path(__file__).resolve().parent.parent
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))
LOGIN_CSRF_COOKIE = "pgwa_login_csrf"
# The forms a visitor fills in before they have a session (log in, accept an invitation)
# carry a double-submit token: a random value in a SameSite=Strict, HttpOnly cookie set by
# the form's page and in the form itself. A cross-site page can post the form but can
# neither read nor send the cookie, so it cannot log a victim into the attacker's account.
INVITE_CSRF_COOKIE = "pgwa_invite_csrf"
INVITE_PATH = "/dashboard/invitations"
HTMX = "/static/vendor/htmx-2.0.11.min.js"

# -- statements -------------------------------------------------------------------------------

COOKIE_KEY = "SELECT api.dashboard_cookie_key()"
SESSION = "SELECT row_to_json(s)::text FROM api.dashboard_session(%(s)s) s"
LOGIN_USERS = "SELECT user_id, tenant_id, password_hash FROM api.dashboard_login_users(%(email)s, %(tenant_id)s)"
LOGIN_FAILED = "SELECT api.dashboard_login_failed(%(email)s, %(tenant_id)s)"
LOGIN = "SELECT session_id FROM api.dashboard_login(%(user_id)s, %(s)s)"
LOGOUT = "SELECT api.dashboard_logout(%(s)s)"
INVITATION = "SELECT email, role, expires_at FROM api.invitation(%(t)s)"
ACCEPT = "SELECT user_id FROM api.accept_invitation(%(t)s, %(password_hash)s)"
USERS = """SELECT coalesce(json_agg(u ORDER BY u.email), '[]')::text
FROM api.dashboard_users(api.dashboard_authorize(%(s)s, 'users.manage')) u"""
INVITE = """SELECT email, role, expires_at
FROM api.invite_user(api.dashboard_authorize(%(s)s, 'users.manage'), %(email)s, %(role)s, %(t)s)"""
USER_ACTIONS = {
    "role": "SELECT user_id FROM api.set_user_role(api.dashboard_authorize(%(s)s, 'users.manage'),"
            " %(user_id)s::bigint, %(role)s)",
    "disable": "SELECT user_id FROM api.disable_user(api.dashboard_authorize(%(s)s, 'users.manage'),"
               " %(user_id)s::bigint)",
}

MAX_FIELD = 4096


class PageError(Exception):
    """Refused before SQL (a bad CSRF token, a form field missing): an HTML error page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- helpers ----------------------------------------------------------------------------------

def _int(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise PageError(400, f"{name} must be a whole number") from None
    if not 0 < number < 1 << 63:
        raise PageError(404, f"no such {name}")
    return number


def _field(form: FormData, name: str, *, required: bool = True) -> str:
    value = form.get(name)
    value = value if isinstance(value, str) else ""
    if required and not value.strip():
        raise PageError(400, f"{name.replace('_', ' ')} is required")
    if len(value) > MAX_FIELD:
        raise PageError(400, f"{name.replace('_', ' ')} is too long")
    return value


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


class Dashboard:
    """The dashboard's routes over the JSON API's connection pool and error registry."""

    def __init__(self, json_api, *, listen_url: str) -> None:
        self.json_api = json_api
        self.signer: Signer | None = None
        self.events = EventHub(listen_url)
        self.once = OneTimeSlots()

    @property
    def pool(self):
        return self.json_api.pool

    async def start(self) -> None:
        async with self.pool.connection() as conn:
            key = (await (await conn.execute(COOKIE_KEY)).fetchone())[0]
        self.signer = Signer(bytes(key))
        await self.events.start()

    async def stop(self) -> None:
        await self.events.stop()

    def routes(self) -> list[BaseRoute]:
        from api.dashboard.campaigns import CampaignScreens  # it imports this module's helpers
        from api.dashboard.inbox import InboxPages  # it imports this module's helpers
        from api.dashboard.screens import Screens  # it imports this module's helpers
        page = self._page
        routes: list[BaseRoute] = [
            Route("/dashboard", page(self.home), methods=["GET"]),
            Route("/dashboard/login", page(self.login_form), methods=["GET"]),
            Route("/dashboard/login", page(self.login), methods=["POST"]),
            Route("/dashboard/logout", page(self.logout), methods=["POST"]),
            Route("/dashboard/invitations/{token}", page(self.invitation_form), methods=["GET"]),
            Route("/dashboard/invitations/{token}", page(self.accept_invitation), methods=["POST"]),
            *CampaignScreens(self).routes(),   # /dashboard/campaigns… (api/dashboard/campaigns.py)
            *InboxPages(self).routes(),     # /dashboard/inbox… (api/dashboard/inbox.py)
            Route("/dashboard/users", page(self.users), methods=["GET"]),
            Route("/dashboard/users/invite", page(self.invite), methods=["POST"]),
            Route("/dashboard/users/{user_id}/{action}", page(self.user_action), methods=["POST"]),
            Route("/dashboard/events", self.event_stream, methods=["GET"]),
            *Screens(self).routes(),   # contacts, templates, bots, numbers, notifications, keys
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]
        for route in routes:
            # What Route(middleware=...) would do, for every route the screens' classes made too.
            route.app = SecurityHeaders(route.app)
        return routes

    # -- plumbing -----------------------------------------------------------------------------

    def _page(self, endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """Runs a page; SQL's refusals become HTML pages (401: the login page)."""

        @functools.wraps(endpoint)
        async def run(request: Request) -> Response:
            try:
                return await endpoint(request)
            except PageError as exc:
                return self._error(request, exc.status, exc.message, None)
            except PoolTimeout:
                return self._error(request, 503, "The database is busy; retry in a few seconds.", None)
            except psycopg.Error as exc:
                sqlstate = exc.diag.sqlstate
                code = self.json_api.codes.lookup(sqlstate)
                if sqlstate == "PW401":
                    if request.method == "GET" and not request.headers.get("hx-request"):
                        return _redirect(f"/dashboard/login?next={quote(request.url.path)}")
                    return self._error(request, 401, "Your session has ended; log in again.", None)
                if code is None:
                    log.error("500 on %s %s: SQLSTATE %s", request.method, _loggable(request.url.path), sqlstate)
                    return self._error(request, 500, "The server could not complete the request.", None)
                return self._error(request, code.status, exc.diag.message_primary or code.name,
                                   exc.diag.message_hint)
        return run

    def _error(self, request: Request, status: int, message: str, hint: str | None) -> Response:
        return self._render(request, "error.html", {"status": status, "message": message, "hint": hint},
                            status=status, session=getattr(request.state, "dashboard_session", None))

    def _render(self, request: Request, template: str, context: dict[str, Any], *, status: int = 200,
                session: dict | None = None) -> Response:
        token = self._token(request)
        csrf = self.signer.csrf(token) if token and self.signer else ""
        return TEMPLATES.TemplateResponse(request, template, {
            **context, "session": session, "csrf": csrf, "htmx": HTMX}, status_code=status)

    def _token(self, request: Request) -> str | None:
        return self.signer.unsign(request.cookies.get(COOKIE)) if self.signer else None

    def _hash(self, request: Request) -> bytes:
        """The session's token hash; no (valid) cookie is an unknown session, PW401 from SQL."""
        token = self._token(request)
        return token_hash(token) if token else b"\0" * 32

    async def _one(self, sql: str, params: dict[str, Any]) -> Any:
        async with self.pool.connection() as conn:
            row = await (await conn.execute(sql, params)).fetchone()
        return row[0] if row else None

    async def _json(self, sql: str, params: dict[str, Any]) -> Any:
        return orjson.loads(await self._one(sql, params))

    async def _session(self, request: Request) -> dict:
        session = await self._json(SESSION, {"s": self._hash(request)})
        request.state.dashboard_session = session
        return session

    async def _form(self, request: Request) -> FormData:
        """The POST's form, once its CSRF token (field or header) matches the session's."""
        form = await request.form(max_files=0, max_fields=20)
        token = self._token(request)
        given = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
        if token is None or not self.signer.csrf_ok(token, given if isinstance(given, str) else None):
            raise PageError(403, "The form has expired (CSRF check failed); reload the page and try again.")
        return form

    def _set_session_cookie(self, request: Request, response: Response, token: str) -> None:
        response.set_cookie(COOKIE, self.signer.sign(token), httponly=True, samesite="lax", path="/",
                            secure=request.url.scheme == "https")

    # -- log in and out -----------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        session = await self._session(request)
        return _redirect("/dashboard/campaigns" if "campaigns.read" in session["actions"] else "/dashboard/inbox")

    async def login_form(self, request: Request, *, error: str | None = None, status: int = 200,
                         email: str = "") -> Response:
        csrf = new_token()
        response = TEMPLATES.TemplateResponse(request, "login.html", {
            "error": error, "login_csrf": csrf, "email": email, "next": request.query_params.get("next", ""),
            "session": None, "csrf": "", "htmx": HTMX}, status_code=status)
        response.set_cookie(LOGIN_CSRF_COOKIE, csrf, httponly=True, samesite="strict", path="/dashboard/login",
                            secure=request.url.scheme == "https")
        return response

    async def login(self, request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=10)
        # Login CSRF: a double-submit token, set by the form's page.
        expected = request.cookies.get(LOGIN_CSRF_COOKIE)
        given = form.get(CSRF_FIELD)
        if not expected or not isinstance(given, str) or not _safe_equal(expected, given):
            return await self.login_form(request, error="The form expired; try again.", status=403)
        email = _field(form, "email", required=False).strip()
        password = _field(form, "password", required=False)
        tenant_raw = _field(form, "tenant_id", required=False).strip()
        tenant_id = _int(tenant_raw, "workspace") if tenant_raw else None
        params = {"email": email, "tenant_id": tenant_id}
        try:
            async with self.pool.connection() as conn:
                users = await (await conn.execute(LOGIN_USERS, params)).fetchall()
        except psycopg.Error as exc:
            if exc.diag.sqlstate == "PW460":
                return await self.login_form(request, error="Too many failed logins: try again later.",
                                             status=429, email=email)
            raise
        matched = [u for u in users if await passwords.verify_async(u[2], password)]
        if not users:
            await passwords.verify_async(None, password)   # as slow as a wrong password
        if len(matched) != 1:
            if not matched:
                await self._one(LOGIN_FAILED, params)
                error = "Wrong e-mail or password."
            else:
                error = "This e-mail belongs to several workspaces: give the workspace number too."
            return await self.login_form(request, error=error, status=401, email=email)
        token = new_token()
        await self._one(LOGIN, {"user_id": matched[0][0], "s": token_hash(token)})
        target = request.query_params.get("next") or form.get("next") or "/dashboard"
        if not isinstance(target, str) or not target.startswith("/dashboard") or "//" in target:
            target = "/dashboard"
        response = _redirect(target)
        self._set_session_cookie(request, response, token)
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/dashboard/login")
        return response

    async def logout(self, request: Request) -> Response:
        await self._form(request)
        await self._one(LOGOUT, {"s": self._hash(request)})
        response = _redirect("/dashboard/login")
        response.delete_cookie(COOKIE, path="/")
        return response

    async def invitation_form(self, request: Request, *, error: str | None = None, status: int = 200) -> Response:
        invitation = await self._invitation(request)
        csrf = new_token()
        response = TEMPLATES.TemplateResponse(request, "invitation.html", {
            "invitation": invitation, "error": error, "invite_csrf": csrf, "session": None, "csrf": "",
            "htmx": HTMX}, status_code=status)
        response.set_cookie(INVITE_CSRF_COOKIE, csrf, httponly=True, samesite="strict", path=INVITE_PATH,
                            secure=request.url.scheme == "https")
        return response

    async def _invitation(self, request: Request) -> dict:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            return await (await cur.execute(INVITATION, {"t": token_hash(request.path_params["token"])})).fetchone()

    async def accept_invitation(self, request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=10)
        expected = request.cookies.get(INVITE_CSRF_COOKIE)
        given = form.get(CSRF_FIELD)
        if not expected or not isinstance(given, str) or not _safe_equal(expected, given):
            return await self.invitation_form(request, error="The form expired; try again.", status=403)
        password = _field(form, "password", required=False)
        if password != _field(form, "confirm", required=False):
            return await self.invitation_form(request, error="The two passwords differ.", status=400)
        problem = passwords.password_problem(password)
        if problem:
            return await self.invitation_form(request, error=problem, status=400)
        user_id = await self._one(ACCEPT, {"t": token_hash(request.path_params["token"]),
                                           "password_hash": await passwords.hash_password_async(password)})
        token = new_token()
        await self._one(LOGIN, {"user_id": user_id, "s": token_hash(token)})
        response = _redirect("/dashboard")
        self._set_session_cookie(request, response, token)
        response.delete_cookie(INVITE_CSRF_COOKIE, path=INVITE_PATH)
        return response

    # -- users --------------------------------------------------------------------------------

    async def users(self, request: Request, *, invited: dict | None = None) -> Response:
        session = await self._session(request)
        users = await self._json(USERS, {"s": self._hash(request)})
        return self._render(request, "users.html", {"users": users, "invited": invited}, session=session)

    async def invite(self, request: Request) -> Response:
        form = await self._form(request)
        token = new_token()
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            row = await (await cur.execute(INVITE, {
                "s": self._hash(request), "email": _field(form, "email"), "role": _field(form, "role"),
                "t": token_hash(token)})).fetchone()
        # The link is shown this once; only its token's hash is stored.
        row["link"] = f"{request.base_url}dashboard/invitations/{token}"
        return await self.users(request, invited=row)

    async def user_action(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in USER_ACTIONS:
            raise PageError(404, "no such action")
        form = await self._form(request)
        await self._one(USER_ACTIONS[action], {
            "s": self._hash(request), "user_id": _int(request.path_params["user_id"], "user"),
            "role": _field(form, "role") if action == "role" else None})
        return _redirect("/dashboard/users")

    # -- live ---------------------------------------------------------------------------------

    async def event_stream(self, request: Request) -> Response:
        try:
            session = await self._session(request)
        except psycopg.Error as exc:
            if exc.diag.sqlstate == "PW401":
                return Response("not logged in", status_code=401, media_type="text/plain")
            raise
        return self.events.response(request, session["tenant_id"],
                                    recheck=lambda: self._one(SESSION, {"s": self._hash(request)}))


def _loggable(path: str) -> str:
    """A path fit for a log line: an invitation link's token (a password until used) cut out."""
    return INVITE_PATH + "/…" if path.startswith(INVITE_PATH + "/") else path


def _safe_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
