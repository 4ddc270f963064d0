"""The webhook emitter: status, inbound and account updates, batched, signed, retried.

Shapes follow Meta's webhook references (messages/status, messages/text,
messages/button, messages/interactive, message_template_status_update,
phone_number_quality_update)::

    {"object": "whatsapp_business_account",
     "entry": [{"id": "<WABA_ID>",
                "changes": [{"field": "messages",
                             "value": {"messaging_product": "whatsapp",
                                       "metadata": {"display_phone_number": "...",
                                                    "phone_number_id": "..."},
                                       "statuses": [...]}}]}]}

The request path only appends to a timing wheel (``at``). A ticker drains due
slots every ``webhook.flush_ms``, groups events per number into POSTs of up to
``webhook.batch_max`` statuses, signs each body with HMAC-SHA256 of the app
secret (``X-Hub-Signature-256``), and hands them to a few sender tasks on one
keep-alive aiohttp session. Any answer other than 200, or a connection error,
is retried with bounded exponential backoff, as Meta does (for up to 7 days).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
from collections import defaultdict
from dataclasses import dataclass

import aiohttp
import orjson

log = logging.getLogger("sim.webhooks")

TICK_S = 0.01


@dataclass(slots=True)
class Post:
    url: str
    secret: str
    body: bytes
    kind: str            # "statuses" | "messages" | "template" | "quality"
    count: int           # statuses or messages carried
    attempt: int = 0
    generation: int = 0


class Counters:
    __slots__ = (
        "account_updates_delivered",
        "gave_up",
        "messages_delivered",
        "posts_failed",
        "posts_ok",
        "retries",
        "skipped_no_url",
        "statuses_delivered",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}


def sign(body: bytes, secret: str) -> str:
    # The simulator stands in for Meta, so it signs with its own code, not api/signature.py.
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def envelope(waba_id: str, field: str, value: dict, at: float | None = None) -> bytes:
    """The webhook body; ``at`` (unix time) becomes the entry's ``time`` when given."""
    entry: dict = {"id": waba_id}
    if at is not None:
        entry["time"] = int(at)
    entry["changes"] = [{"value": value, "field": field}]
    return orjson.dumps({"object": "whatsapp_business_account", "entry": [entry]})


class Emitter:
    """Schedules and delivers webhooks; ``sim`` supplies numbers and settings."""

    def __init__(self, sim) -> None:
        self.sim = sim
        self.wheel: dict[int, list] = defaultdict(list)
        self.counters = Counters()
        self.queue: asyncio.Queue[Post] = asyncio.Queue()
        self.generation = 0
        self.session: aiohttp.ClientSession | None = None
        self.tasks: list[asyncio.Task] = []
        self.delivering = 0             # posts taken from the queue, not yet answered

    # --- scheduling (request path) ------------------------------------------

    def at(self, due: float, item: tuple) -> None:
        """Queue ``item`` for the flush at ``due``, a reading of ``sim.clock.monotonic()``.

        Items: ("status", phone_number_id, status_dict) — timestamp filled at flush;
               ("message", phone_number_id, (contact, message));
               ("post", Post) — a retry.
        """
        self.wheel[int(due / TICK_S)].append(item)

    def pending(self) -> int:
        """Events and posts not yet answered with a 200 or given up on: scheduled, queued or
        on the wire. Zero means nothing more will be posted until something new happens."""
        return sum(len(v) for v in self.wheel.values()) + self.queue.qsize() + self.delivering

    def clear(self) -> None:
        self.generation += 1
        self.wheel.clear()
        while not self.queue.empty():
            self.queue.get_nowait()
        self.counters = Counters()

    # --- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        conf = self.sim.settings["webhook"]
        concurrency = int(conf["concurrency"])
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency * 2, keepalive_timeout=30),
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )
        self.tasks = [asyncio.create_task(self._ticker(), name="sim-webhook-ticker")]
        self.tasks += [asyncio.create_task(self._sender(), name=f"sim-webhook-sender-{i}")
                       for i in range(concurrency)]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.session:
            await self.session.close()

    # --- flushing -------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            flush_s = max(float(self.sim.settings["webhook"]["flush_ms"]) / 1000.0, TICK_S)
            await asyncio.sleep(flush_s)
            try:
                self.flush()
            except Exception:  # a bug here must not stop all webhooks
                log.exception("webhook flush failed")

    def flush(self) -> None:
        clock = self.sim.clock
        now_tick = int(clock.monotonic() / TICK_S)
        wheel = self.wheel
        due: list = []
        for tick in sorted(t for t in wheel if t <= now_tick):
            due.extend(wheel.pop(tick))
        if not due:
            return
        statuses: dict[str, list] = defaultdict(list)
        messages: dict[str, list] = defaultdict(list)
        for item in due:
            kind = item[0]
            if kind == "status":
                statuses[item[1]].append(item[2])
            elif kind == "message":
                messages[item[1]].append(item[2])
            elif kind == "post" and item[1].generation == self.generation:
                self.queue.put_nowait(item[1])
        wall = clock.time()
        ts = str(int(wall))
        batch_max = int(self.sim.settings["webhook"]["batch_max"])
        for pnid, items in statuses.items():
            for status in items:
                status["timestamp"] = ts
            for i in range(0, len(items), batch_max):
                self._post_value(pnid, "statuses", items[i:i + batch_max])
        windows = self.sim.windows
        for pnid, items in messages.items():
            for contact, message in items:
                message.setdefault("timestamp", ts)
                windows[(pnid, message["from"])] = wall   # a customer message opens 24 h
            # One inbound message per POST, as Meta delivers them.
            for contact, message in items:
                self._post_value(pnid, "messages", [message], contacts=[contact])

    def _post_value(self, pnid: str, key: str, items: list, contacts: list | None = None) -> None:
        number = self.sim.numbers.get(pnid)
        if number is None:
            return
        url = number.webhook_url or self.sim.webhook_url
        if not url:
            self.counters.skipped_no_url += len(items)
            return
        value: dict = {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": number.display_phone_number,
                         "phone_number_id": number.phone_number_id},
        }
        if contacts is not None:
            value["contacts"] = contacts
        value[key] = items
        body = envelope(number.waba_id, "messages", value)
        secret = number.app_secret or self.sim.app_secret
        self.queue.put_nowait(Post(url, secret, body, key, len(items),
                                   generation=self.generation))

    def post_account_update(self, waba_id: str, field: str, value: dict, kind: str) -> int:
        """Send a WABA-level webhook (template or quality update) to every URL of that WABA."""
        targets: dict[str, str] = {}
        for number in self.sim.numbers.values():
            if number.waba_id == waba_id:
                url = number.webhook_url or self.sim.webhook_url
                if url and url not in targets:
                    targets[url] = number.app_secret or self.sim.app_secret
        if not targets and self.sim.webhook_url:
            targets[self.sim.webhook_url] = self.sim.app_secret
        body = envelope(waba_id, field, value, at=self.sim.clock.time())
        for url, secret in targets.items():
            self.queue.put_nowait(Post(url, secret, body, kind, 1, generation=self.generation))
        return len(targets)

    # --- delivery ---------------------------------------------------------------

    async def _sender(self) -> None:
        while True:
            post = await self.queue.get()
            if post.generation != self.generation:
                continue
            self.delivering += 1
            try:
                await self._deliver(post)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery crashed")
            finally:
                self.delivering -= 1

    async def _deliver(self, post: Post) -> None:
        conf = self.sim.settings["webhook"]
        ok = False
        try:
            async with self.session.post(
                post.url, data=post.body,
                headers={"Content-Type": "application/json",
                         "X-Hub-Signature-256": sign(post.body, post.secret)},
                timeout=aiohttp.ClientTimeout(total=float(conf["timeout_s"])),
            ) as resp:
                await resp.read()
                ok = resp.status == 200  # Meta retries anything but 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            ok = False
        if post.generation != self.generation:
            return
        c = self.counters
        if ok:
            c.posts_ok += 1
            if post.kind == "statuses":
                c.statuses_delivered += post.count
            elif post.kind == "messages":
                c.messages_delivered += post.count
            else:
                c.account_updates_delivered += post.count
            return
        c.posts_failed += 1
        if post.attempt + 1 >= int(conf["max_attempts"]):
            c.gave_up += 1
            return
        c.retries += 1
        delay_ms = min(float(conf["retry_base_ms"]) * (2 ** post.attempt),
                       float(conf["retry_max_ms"]))
        delay_ms *= random.uniform(0.8, 1.2)
        post.attempt += 1
        self.at(self.sim.clock.monotonic() + delay_ms / 1000.0, ("post", post))
