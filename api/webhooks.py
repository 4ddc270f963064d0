"""The WhatsApp webhook receiver: Meta's handshake, the signature check, a durable enqueue.

A POST does this and nothing else::

    read at most 1 MiB ──> X-Hub-Signature-256 over the raw bytes: which app signed it?
        ──> a JSON object? ──> GroupCommitter.submit(raw bytes, signer)
        ──> 200 once the INSERT holding it has committed

``GroupCommitter`` is why this is fast: requests that arrive while a commit is in
flight share the next one, so many webhooks cost one ``api.ingest_webhooks`` call, one
INSERT and one WAL flush, and each response is released only after that commit. The
bodies go to PostgreSQL untouched, as a binary ``jsonb[]``; processing happens later,
in ``api.process_webhooks`` (worker/webhooks.py).

The signer goes with the body: none when the platform's WHATSAPP_APP_SECRET verified
it (that app may speak for every number), else the signer of the number app secret that
did, and processing then applies the payload only to the numbers registered with that
secret (core.authorised_changes).

The endpoint is a plain ASGI app (no Request/Response objects on the hot path) mounted
by ``api.app.create_app``. Bad requests store nothing: 401 unsigned or badly signed,
413 over 1 MiB (refused from Content-Length before reading, or as soon as the streamed
body passes the limit); 503 when the database is unreachable, which Meta retries. A
signed body that is not a JSON object, or that jsonb cannot hold (``\u0000``, a lone
surrogate), is acknowledged all the same: kept byte for byte (``api.keep_raw_webhook``),
with a repaired copy queued when one can be made, because an acknowledged webhook is
never lost.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import parse_qs

import orjson
import psycopg
from psycopg import pq
from psycopg.types.json import Jsonb

from api.signature import matching_secret

log = logging.getLogger("pgwa.api.webhooks")

PATH = "/webhooks/whatsapp"
MAX_BODY = 1 << 20

# Run on libpq directly (psycopg.pq): the committer only ever executes this one
# prepared statement, and psycopg's cursor machinery around it costs more CPU per
# commit than the statement's round trip (measured ~60 us of ~130).
INGEST_NAME = b"pgwa_ingest_webhooks"
INGEST_SQL = b"SELECT cardinality(api.ingest_webhooks($1, $2))"
KEEP_RAW_SQL = "SELECT api.keep_raw_webhook(%s, %s, %s, %s)"

_JSONB_OID = 3802
_JSONB_ARRAY_OID = 3807
_TEXT_OID = 25
_TEXT_ARRAY_OID = 1009
_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)


def jsonb_array(docs: Sequence[bytes]) -> bytes:
    """Binary ``jsonb[]`` straight from the received bytes: no re-encoding, no escaping.

    Array wire format: ndim, has-nulls, element oid, length, lower bound; then each
    element as its length and its binary jsonb (format version 1, then the JSON text).
    """
    parts = [struct.pack("!iiIii", 1, 0, _JSONB_OID, len(docs), 1)]
    for doc in docs:
        parts.append(struct.pack("!iB", len(doc) + 1, 1))
        parts.append(doc)
    return b"".join(parts)


def text_array(items: Sequence[str | None]) -> bytes:
    """Binary ``text[]``, nulls allowed (length -1)."""
    parts = [struct.pack("!iiIii", 1, 1, _TEXT_OID, len(items), 1)]
    for item in items:
        if item is None:
            parts.append(struct.pack("!i", -1))
        else:
            raw = item.encode()
            parts.append(struct.pack("!i", len(raw)))
            parts.append(raw)
    return b"".join(parts)


_UNHOLDABLE = re.compile("[\x00\ud800-\udfff]")


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def repaired(body: bytes) -> dict | None:
    """``body`` as a JSON object with what jsonb cannot hold (NUL, lone surrogates)
    replaced by U+FFFD; None when it is not a JSON object at all."""
    try:
        doc = json.loads(body.decode("utf-8", errors="replace"), parse_constant=_not_json)
    except (ValueError, RecursionError):
        return None

    def clean(value):
        if isinstance(value, str):
            return _UNHOLDABLE.sub("\ufffd", value)
        if isinstance(value, dict):
            return {clean(k): clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    if not isinstance(doc, dict):
        return None
    try:
        return clean(doc)
    except RecursionError:      # nested deeper than Python recurses: keep it raw only
        return None


async def _wait_fd(add, remove, fd: int) -> None:
    fut = asyncio.get_running_loop().create_future()
    add(fd, fut.set_result, None)
    try:
        await fut
    finally:
        remove(fd)


async def _finish(pg: pq.PGconn) -> None:
    """Flush what was sent, read every result of it; raise the server's error, if any."""
    loop = asyncio.get_running_loop()
    while pg.flush():
        await _wait_fd(loop.add_writer, loop.remove_writer, pg.socket)
    error = None
    while True:
        pg.consume_input()
        while not pg.is_busy():
            res = pg.get_result()
            if res is None:
                if error is not None:
                    raise psycopg.errors.error_from_result(error, encoding="utf-8")
                return
            if error is None and res.status not in _OK:
                error = res
        await _wait_fd(loop.add_reader, loop.remove_reader, pg.socket)


class IngestUnavailable(Exception):
    """The database could not take the payload now; Meta should retry (503)."""


class IngestRejected(Exception):
    """PostgreSQL refused this payload itself (e.g. a \\u0000 escape jsonb cannot hold)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class GroupCommitter:
    """Stores webhook bodies in the queue, many per transaction, each acknowledged after commit.

    A flusher takes everything that is waiting (up to ``max_batch`` bodies or
    ``max_bytes``), stores it with one statement in autocommit (so the statement is the
    transaction), and resolves the waiting requests when it returns; meanwhile new
    requests gather for the next flush. One flusher does the work: measured, flushing
    on two connections at once splits the same requests into more, smaller commits and
    costs more CPU per webhook than it saves in waiting. The others (``connections``
    in all) are standbys: one takes the waiting requests only when every flusher before
    it has been busy for ``hedge_s`` or twice the usual flush time, so that one slow
    commit (a stalled backend, a lock) does not hold up everything behind it.
    """

    def __init__(self, database_url: str, *, connections: int = 2, max_batch: int = 1000,
                 max_bytes: int = 8 * MAX_BODY, hedge_s: float = 0.001) -> None:
        self.database_url = database_url
        self.connections = connections
        self.hedge_s = hedge_s
        self._busy_since: list[float | None] = [None] * connections
        self._flush_s = 0.0005          # moving average of a flush's duration
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self._pending: deque[tuple[bytes, str | None, asyncio.Future]] = deque()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._conns: list[psycopg.AsyncConnection | None] = []
        self._closing = False
        self._raw_lock = asyncio.Lock()
        self._raw_conn: psycopg.AsyncConnection | None = None
        self.stored = 0
        self.commits = 0
        self.kept_raw = 0

    @property
    def healthy(self) -> bool:
        return any(c is not None and not c.closed for c in self._conns)

    async def start(self) -> None:
        self._closing = False
        self._conns = [None] * self.connections
        # Connect once up front so that a wrong URL fails at startup, not on the first POST.
        self._conns[0] = await self._connect()
        self._tasks = [asyncio.create_task(self._flusher(i), name=f"webhook-commit-{i}")
                       for i in range(self.connections)]

    async def stop(self) -> None:
        self._closing = True
        self._wakeup.set()
        # Let the flushers finish what they hold, then fail whatever is left.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for *_, fut in self._pending:
            if not fut.done():
                fut.set_exception(IngestUnavailable("shutting down"))
        self._pending.clear()
        for conn in [*self._conns, self._raw_conn]:
            if conn is not None:
                await conn.close()
        self._conns = []
        self._raw_conn = None

    async def submit(self, body: bytes, signer: str | None = None) -> None:
        """Return once ``body`` is committed to the webhooks queue with its ``signer``
        (None: the platform's app); raise if it is not."""
        if self._closing:
            raise IngestUnavailable("shutting down")
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((body, signer, fut))
        self._wakeup.set()
        await fut

    async def keep_raw(self, body: bytes, signer: str | None, reason: str) -> None:
        """Keep a signed body the queue cannot hold as it is, and queue a repaired copy
        when one can be made. Rare, so one connection opened on first use serves it."""
        fixed = repaired(body)
        async with self._raw_lock:
            try:
                if self._raw_conn is None or self._raw_conn.closed:
                    self._raw_conn = await psycopg.AsyncConnection.connect(
                        self.database_url, autocommit=True, application_name="pgwa-api-webhooks-raw")
                await self._raw_conn.execute(KEEP_RAW_SQL, (body, signer, reason,
                                                            None if fixed is None else Jsonb(fixed)))
            except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
                raise IngestUnavailable(str(exc)) from exc
        self.kept_raw += 1

    async def _connect(self) -> psycopg.AsyncConnection:
        conn = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True,
                                                     application_name="pgwa-api-webhooks")
        conn.pgconn.send_prepare(INGEST_NAME, INGEST_SQL, [_JSONB_ARRAY_OID, _TEXT_ARRAY_OID])
        await _finish(conn.pgconn)
        return conn

    async def _flusher(self, i: int) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.05
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if i > 0:
                # A standby: it takes waiting work only from a flusher that has been busy
                # for much longer than a commit usually takes, so that one slow commit
                # does not hold up every request behind it.
                busy = self._busy_since[:i]
                if None in busy:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                delay = max(busy) + max(self.hedge_s, 2 * self._flush_s) - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue
            batch = [self._pending.popleft()]
            size = len(batch[0][0])
            while (self._pending and len(batch) < self.max_batch
                   and size + len(self._pending[0][0]) <= self.max_bytes):
                batch.append(self._pending.popleft())
                size += len(batch[-1][0])
            started = self._busy_since[i] = loop.time()
            try:
                conn = self._conns[i]
                if conn is None or conn.closed:
                    conn = self._conns[i] = await self._connect()
                await self._store(conn, batch)
                self._flush_s += (loop.time() - started - self._flush_s) / 16
                backoff = 0.05
            except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
                log.warning("webhook ingest: database unavailable: %s", exc)
                _fail(batch, IngestUnavailable(str(exc)))
                conn, self._conns[i] = self._conns[i], None
                if conn is not None:
                    await conn.close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception as exc:  # a bug must fail these requests, not the flusher
                log.exception("webhook ingest failed")
                _fail(batch, IngestUnavailable(str(exc)))
            finally:
                self._busy_since[i] = None

    async def _store(self, conn: psycopg.AsyncConnection, batch: list) -> None:
        signers = [signer for _, signer, _ in batch]
        try:
            conn.pgconn.send_query_prepared(
                INGEST_NAME,
                [jsonb_array([body for body, _, _ in batch]),
                 text_array(signers) if any(signers) else None],
                param_formats=[1, 1], result_format=1)
            await _finish(conn.pgconn)
        except psycopg.Error as exc:
            state = exc.diag.sqlstate or ""
            if not (state.startswith("22") or state == "PW105"):
                raise
            # A body PostgreSQL will not hold (class 22 data exception, or PW105). Store
            # the others one by one, so an odd payload never fails its neighbours.
            if len(batch) == 1:
                _fail(batch, IngestRejected(str(exc)))
                return
            for item in batch:
                await self._store(conn, [item])
            return
        self.commits += 1
        self.stored += len(batch)
        for *_, fut in batch:
            if not fut.done():
                fut.set_result(None)


def _fail(batch: list, exc: Exception) -> None:
    for *_, fut in batch:
        if not fut.done():
            fut.set_exception(exc)


# --- the ASGI endpoint -----------------------------------------------------------------

_TEXT = b"text/plain; charset=utf-8"


async def _respond(send, status: int, body: bytes = b"", extra: Sequence = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", _TEXT), (b"content-length", b"%d" % len(body)),
                            *extra]})
    await send({"type": "http.response.body", "body": body})


def named_wabas(body: bytes) -> list[str]:
    """The WABA ids (entry[].id) a webhook body names; none when it is not such a body."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    entries = payload.get("entry") if type(payload) is dict else None
    if type(entries) is not list:
        return []
    return [str(e["id"]) for e in entries[:100] if type(e) is dict and "id" in e]


class WhatsAppWebhook:
    """``GET`` (Meta's verification handshake) and ``POST`` (webhooks) of /webhooks/whatsapp.

    A POST is signed by one Meta app: WHATSAPP_APP_SECRET's, or the app of a tenant that
    registered its number with its own secret. The numbers' secrets, their signers and
    their WABAs come from ``load_secrets`` (api.webhook_signers) at start-up, at most every
    SECRETS_MAX_AGE_S after, and at once (at most every SECRETS_RETRY_S) when a signature
    matches none, so a number registered a moment ago is received. A body the platform's
    app did not sign is checked only against the secrets of the WABAs its entries name:
    one HMAC per app that could have sent it, however many apps the platform knows.
    """

    SECRETS_MAX_AGE_S = 60.0
    SECRETS_RETRY_S = 5.0

    def __init__(self, verify_token: str, app_secrets: Sequence[str],
                 committer: GroupCommitter,
                 load_secrets: Callable[[], Awaitable[Sequence[tuple[str, str, Sequence[str]]]]] | None = None,
                 ) -> None:
        self.verify_token = verify_token
        self.app_secrets = tuple(app_secrets)
        self.number_secrets: dict[str, str] = {}     # app secret -> its signer
        self.waba_secrets: dict[str, tuple[str, ...]] = {}   # WABA id -> app secrets
        self.committer = committer
        self.load_secrets = load_secrets
        self._loaded_at = -1e9
        self._loading: asyncio.Task | None = None

    async def refresh_secrets(self) -> None:
        """The numbers' secrets, again; on a database error the known ones stay."""
        if self.load_secrets is None:
            return
        self._loaded_at = asyncio.get_running_loop().time()
        try:
            numbers = await self.load_secrets()
        except Exception as exc:  # noqa: BLE001 (the receiver keeps receiving)
            log.warning("could not load the numbers' app secrets: %s", type(exc).__name__)
            return
        secrets = [(secret, signer, wabas) for secret, signer, wabas in numbers
                   if secret not in self.app_secrets]
        by_waba: dict[str, list[str]] = {}
        for secret, _, wabas in secrets:
            for waba in wabas or ():
                by_waba.setdefault(waba, []).append(secret)
        self.number_secrets = {secret: signer for secret, signer, _ in secrets}
        self.waba_secrets = {waba: tuple(names) for waba, names in by_waba.items()}

    def _candidates(self, wabas: Sequence[str]) -> list[str]:
        return list(dict.fromkeys(s for waba in wabas for s in self.waba_secrets.get(waba, ())))

    async def _signer(self, body: bytes, signature: str | None) -> tuple[bool, str | None]:
        """(signed, signer): signer is None for the platform's app, else the signer of
        the number app secret that verified ``body``."""
        age = asyncio.get_running_loop().time() - self._loaded_at
        if age > self.SECRETS_MAX_AGE_S and self._loading is None and self.load_secrets is not None:
            self._loading = asyncio.create_task(self.refresh_secrets())
            self._loading.add_done_callback(lambda _: setattr(self, "_loading", None))
        # The environment's app first: one HMAC for most deployments, one per app beyond.
        if matching_secret(body, signature, self.app_secrets) is not None:
            return True, None
        wabas = named_wabas(body)
        if not wabas:
            return False, None
        secret = matching_secret(body, signature, self._candidates(wabas))
        if secret is None and self.load_secrets is not None and age >= self.SECRETS_RETRY_S:
            await self.refresh_secrets()
            secret = matching_secret(body, signature, self._candidates(wabas))
        if secret is None:
            return False, None
        return True, self.number_secrets[secret]

    async def __call__(self, scope, receive, send) -> None:
        method = scope["method"]
        if method == "POST":
            await self.post(scope, receive, send)
        elif method in ("GET", "HEAD"):
            await self.handshake(scope, send)
        else:
            await _respond(send, 405, b"method not allowed", [(b"allow", b"GET, HEAD, POST")])

    async def handshake(self, scope, send) -> None:
        """Echo ``hub.challenge`` when ``hub.mode=subscribe`` and the verify token matches."""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        mode = query.get("hub.mode", [""])[0]
        token = query.get("hub.verify_token", [""])[0]
        challenge = query.get("hub.challenge", [""])[0]
        if (mode == "subscribe" and self.verify_token
                and hmac.compare_digest(token.encode(), self.verify_token.encode())):
            await _respond(send, 200, challenge.encode())
        else:
            await _respond(send, 403, b"forbidden")

    async def post(self, scope, receive, send) -> None:
        signature = None
        length = None
        for name, value in scope["headers"]:
            if name == b"x-hub-signature-256":
                signature = value.decode("latin-1")
            elif name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await _respond(send, 400, b"bad content-length")
                    return
        if length is not None and length > MAX_BODY:
            await _respond(send, 413, b"payload too large")
            return

        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY:
                await _respond(send, 413, b"payload too large")
                return

        signed, signer = await self._signer(body, signature)
        if not signed:
            await _respond(send, 401, b"bad signature")
            return
        try:
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                await self.committer.keep_raw(body, signer, "not JSON (or not UTF-8 JSON orjson reads)")
            else:
                if type(payload) is not dict:
                    await self.committer.keep_raw(body, signer, "not a JSON object")
                else:
                    try:
                        await self.committer.submit(body, signer)
                    except IngestRejected as exc:
                        await self.committer.keep_raw(body, signer, exc.reason)
        except IngestUnavailable:
            await _respond(send, 503, b"try again", [(b"retry-after", b"5")])
            return
        await _respond(send, 200)
