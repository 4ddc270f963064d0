"""The Graph API client: POST a message, parse Meta's success and error envelopes.

``GraphClient`` keeps httpx's interface over a thin aiohttp transport
(``AiohttpTransport``): httpx's own async transport manages a few hundred
requests a second here, aiohttp several thousand, and the send path needs
about two thousand on a machine it shares with PostgreSQL.

Meta's answers (WhatsApp Cloud API, "Send messages" and "Error codes")::

    200 {"messaging_product": "whatsapp", "contacts": [...],
         "messages": [{"id": "wamid...", "message_status": "accepted"}]}
    4xx/5xx {"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException",
                       "code": 130429, "error_subcode": 2494055,
                       "error_data": {"messaging_product": "whatsapp", "details": "..."},
                       "fbtrace_id": "..."}}

Callers branch on ``error_code``, never on the HTTP status (Meta's advice); an
answer without an error object, a timeout or a dropped connection gives
``error_code=None``, which the database treats as transient. No message or
result ever carries the access token.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Self

import aiohttp
import httpx
import orjson

ERROR_MESSAGE_MAX = 300
DEFAULT_TIMEOUT = httpx.Timeout(15.0, connect=5.0)


@dataclass(slots=True)
class SendResult:
    """The outcome of one send, in the shape ``api.report_sends`` takes."""

    wamid: str | None = None
    message_status: str | None = None
    error_code: int | None = None
    http_status: int | None = None
    error_message: str | None = None
    # Meta's X-Business-Use-Case-Usage said access comes back after so many seconds.
    retry_after_s: int | None = None
    # The request went out and no answer came back (a timeout, a dropped connection): Meta
    # may have accepted it. A refused connection sent nothing and is not unsure.
    unsure: bool = False

    @property
    def ok(self) -> bool:
        return self.wamid is not None


@dataclass(slots=True)
class GraphError:
    """Meta's ``error`` object, parsed (``code`` is None when the answer had none)."""

    code: int | None
    message: str | None = None
    type: str | None = None
    subcode: int | None = None
    details: str | None = None
    fbtrace_id: str | None = None

    def summary(self) -> str:
        text = self.message or "error"
        if self.details and self.details not in text:
            text = f"{text}: {self.details}"
        extras = [x for x in (self.type, self.subcode and f"subcode {self.subcode}",
                              self.fbtrace_id and f"fbtrace_id {self.fbtrace_id}") if x]
        if extras:
            text = f"{text} [{', '.join(extras)}]"
        return text


def parse_error(data: Any) -> GraphError | None:
    """Meta's error envelope ``{"error": {...}}``, or None if ``data`` is not one."""
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return None
    error_data = err.get("error_data")
    details = error_data.get("details") if isinstance(error_data, dict) else None
    return GraphError(code=_int(err.get("code")), message=_str(err.get("message")),
                      type=_str(err.get("type")), subcode=_int(err.get("error_subcode")),
                      details=_str(details), fbtrace_id=_str(err.get("fbtrace_id")))


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _short(text: str, token: str | None) -> str:
    if token and token in text:
        text = text.replace(token, "***")
    return text if len(text) <= ERROR_MESSAGE_MAX else text[: ERROR_MESSAGE_MAX - 1] + "…"


USAGE_HEADER = b"x-business-use-case-usage"


def regain_after_s(raw_headers: Any) -> int | None:
    """Seconds until Meta gives access back, from ``X-Business-Use-Case-Usage``.

    The header maps a business id to usage entries, each with
    ``estimated_time_to_regain_access`` in minutes (0 while under the limit); the
    longest wait wins. None when the header is absent, malformed or says nothing.
    """
    for name, value in raw_headers or ():
        if name.lower() != USAGE_HEADER:
            continue
        try:
            usage = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        minutes = [_int(entry.get("estimated_time_to_regain_access"))
                   for entries in (usage.values() if isinstance(usage, dict) else ())
                   if isinstance(entries, list) for entry in entries if isinstance(entry, dict)]
        longest = max((m for m in minutes if m), default=None)
        return longest * 60 if longest else None
    return None


def send_result(status: int, content: bytes, token: str | None = None, raw_headers: Any = None) -> SendResult:
    """Turn one HTTP answer to ``POST /messages`` into a SendResult."""
    try:
        data = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        data = None
    if 200 <= status < 300 and isinstance(data, dict):
        messages = data.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[0], dict):
            first = messages[0]
            wamid = first.get("id")
            if isinstance(wamid, str) and wamid:
                return SendResult(wamid, _str(first.get("message_status")), None, status, None)
    err = parse_error(data)
    if err is not None:
        return SendResult(None, None, err.code, status, _short(err.summary(), token), regain_after_s(raw_headers))
    if 200 <= status < 300:
        return SendResult(None, None, None, status, "answer without messages[0].id")
    snippet = content[:120].decode("utf-8", "replace").strip() if content else ""
    return SendResult(None, None, None, status,
                      _short(f"HTTP {status}" + (f": {snippet}" if snippet else ""), token))


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one aiohttp session with a keep-alive pool of ``limit``.

    It reads every answer whole (Graph answers are small) and maps aiohttp's
    exceptions onto httpx's, so callers see only httpx.
    """

    def __init__(self, limit: int = 100, keepalive_s: float = 30.0) -> None:
        self._limit = limit
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple, aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=self._limit,
                                         keepalive_timeout=self._keepalive_s,
                                         ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",))
        return self._session

    def timeout(self, spec: dict) -> aiohttp.ClientTimeout:
        """aiohttp's timeout for httpx's ``{"connect", "read", "pool"}`` (cached)."""
        key = (spec.get("connect"), spec.get("read"), spec.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None, connect=key[2], sock_connect=key[0], sock_read=key[1])
        return timeout

    async def fetch(self, method: str, url: str, headers: Any, data: bytes | str | None,
                    timeout: aiohttp.ClientTimeout) -> tuple[int, Any, bytes]:
        """One request, read whole: (status, raw headers, body). Raises httpx's exceptions.

        The core of the transport; ``GraphClient.send`` calls it directly, without
        building httpx.Request/Response objects (half the CPU of a send).
        """
        session = self._session or self._open()
        try:
            async with session.request(method, url, headers=headers, data=data,
                                       allow_redirects=False, timeout=timeout) as resp:
                return resp.status, resp.raw_headers, await resp.read()
        except TimeoutError as exc:
            raise httpx.TimeoutException("timed out") from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(f"cannot connect ({type(exc).__name__})") from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise httpx.RemoteProtocolError("server disconnected") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise httpx.ReadError(type(exc).__name__) from exc

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            status, headers, content = await self.fetch(
                request.method, str(request.url), request.headers.multi_items(),
                request.content or None, self.timeout(request.extensions.get("timeout", {})))
        except httpx.TransportError as exc:
            exc.request = request
            raise
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class GraphClient:
    """The Graph API client, for sends now and templates or read receipts later.

    ``concurrency`` bounds requests in flight (a semaphore) and sizes the
    keep-alive pool to match.
    """

    def __init__(self, base_url: str, concurrency: int = 256,
                 timeout: httpx.Timeout = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._transport = AiohttpTransport(limit=concurrency)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout,
                                       transport=self._transport,
                                       headers={"Accept": "application/json"})
        self._send_timeout = self._transport.timeout(timeout.as_dict())
        self._urls: dict[str, str] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, token: str, *, body: Any = None,
                      params: dict | None = None) -> httpx.Response:
        """One authenticated Graph call; ``body`` is JSON bytes/str or an object to encode.

        Raises httpx.TransportError (including timeouts); never retries, since a
        POST that timed out may still have been sent.
        """
        headers = {"Authorization": f"Bearer {token}"}
        content = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            content = body if isinstance(body, (bytes, str)) else orjson.dumps(body)
        async with self._slots:
            return await self._http.request(method, f"/{path.lstrip('/')}", content=content,
                                            params=params, headers=headers)

    async def probe(self, timeout_s: float) -> str | None:
        """Whether Meta's host answers at all: GET the base URL, without a token. Any HTTP
        answer (graph.facebook.com answers 400 there) is None; no answer, its reason."""
        try:
            await self._transport.fetch("GET", f"{self.base_url}/", {}, None,
                                        aiohttp.ClientTimeout(total=timeout_s))
        except Exception as exc:  # noqa: BLE001 (a probe reports; it never stops the claim loop)
            return f"{type(exc).__name__}: {exc}"[:200]
        return None

    async def send(self, path: str, token: str, body: Any) -> SendResult:
        """POST one message to ``{base_url}/{path}``; never raises for HTTP or network trouble.

        The hot path: straight to the transport's core, skipping httpx's per-request
        objects and the client's machinery (cookies, auth flows, redirects, hooks) that
        Graph sends do not use; they cost more CPU than the request itself.
        """
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = f"{self.base_url}/{path.lstrip('/')}"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        data = body if isinstance(body, (bytes, str)) else orjson.dumps(body)
        try:
            async with self._slots:
                status, raw_headers, content = await self._transport.fetch(
                    "POST", url, headers, data, self._send_timeout)
        except httpx.TimeoutException:
            return SendResult(error_message="timeout", unsure=True)
        except httpx.ConnectError as exc:
            return SendResult(error_message=_short(f"connection error: {exc}", token))
        except httpx.TransportError as exc:
            return SendResult(error_message=_short(f"connection error: {exc}", token), unsure=True)
        return send_result(status, content, token, raw_headers)
