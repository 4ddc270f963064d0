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

The request path only appends to a timing wheel (``at``), its slots ordered by a
heap. A ticker drains due slots every ``webhook.flush_ms``, groups events per
number into POSTs of up to ``webhook.batch_max`` statuses or inbound messages
(Meta aggregates up to 1,000 updates per POST), signs each body with
HMAC-SHA256 of the app secret (``X-Hub-Signature-256``), and hands them to a
few sender tasks (``webhook.concurrency``) on one keep-alive aiohttp session. While
every sender is busy and POSTs wait for one, the statuses and messages that come due
are held back and join the next flush instead: as Meta aggregates more updates per POST
when an endpoint answers slowly, batches grow with the backlog (still up to
``batch_max``) instead of the POSTs queueing up one small batch each, so a receiver that
takes a while to answer gets fuller POSTs, not a growing delay. An inbound message takes
its share of the number's throughput when it is delivered. Any answer other
than 200, or a connection error, is retried as Meta does: at once, then with
decreasing frequency (``retry_base_ms`` doubling up to ``retry_max_ms``) for
up to ``max_age_s`` (7 days), on the simulator's clock, so a test moves it on
through the hours instead of waiting.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
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
    kind: str            # "statuses" | "messages" | "template" | "quality" | "capability"
    count: int           # statuses or messages carried
    attempt: int = 0
    generation: int = 0
    first_failed: float | None = None    # sim monotonic time of the first failed attempt


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
        self.wheel: dict[int, list] = {}
        self.ticks: list[int] = []          # heap of the wheel's slots
        self.held: list = []                # due statuses and messages held back by a backlog
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
               ("post", Post) — a retry;
               ("call", fn) — the simulator's own timer (a held message released, a
               throughput upgrade done).
        """
        tick = int(due / TICK_S)
        slot = self.wheel.get(tick)
        if slot is None:
            self.wheel[tick] = [item]
            heapq.heappush(self.ticks, tick)
        else:
            slot.append(item)

    def pending(self) -> int:
        """Events and posts not yet answered with a 200 or given up on: scheduled, queued or
        on the wire (and the simulator's own timers). Zero means nothing more will be posted
        until something new happens."""
        return (sum(len(v) for v in self.wheel.values()) + len(self.held) + self.queue.qsize()
                + self.delivering)

    def clear(self) -> None:
        self.generation += 1
        self.wheel.clear()
        self.ticks.clear()
        self.held.clear()
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
        mono = clock.monotonic()
        now_tick = int(mono / TICK_S)
        wheel, ticks = self.wheel, self.ticks
        due: list = []
        while ticks and ticks[0] <= now_tick:
            due.extend(wheel.pop(heapq.heappop(ticks)))
        if not due and not self.held:
            return
        # POSTs already wait for a sender: hold the due updates back for a fuller POST at
        # a later flush (timers and retries go on as due).
        backlog = not self.queue.empty()
        held, self.held = self.held, []
        statuses: dict[str, list] = defaultdict(list)
        messages: dict[str, list] = defaultdict(list)
        for item in due:
            kind = item[0]
            if kind == "status" or kind == "message":
                held.append(item)
            elif kind == "post" and item[1].generation == self.generation:
                self.queue.put_nowait(item[1])
            elif kind == "call":
                try:
                    item[1]()
                except Exception:
                    log.exception("simulator timer failed")
        if backlog:
            self.held = held
            return
        for item in held:
            (statuses if item[0] == "status" else messages)[item[1]].append(item[2])
        wall = clock.time()
        ts = str(int(wall))
        batch_max = int(self.sim.settings["webhook"]["batch_max"])
        for pnid, items in statuses.items():
            for status in items:
                status["timestamp"] = ts
            for i in range(0, len(items), batch_max):
                self._post_value(pnid, "statuses", items[i:i + batch_max])
        windows = self.sim.windows
        ledger = self.sim.ledger
        for pnid, items in messages.items():
            stats = ledger.number(pnid)
            for contact, message in items:
                message.setdefault("timestamp", ts)
                windows[(pnid, message["from"])] = wall   # a customer message opens 24 h
                stats.receive(mono)                       # and takes throughput
            # Batched like statuses: the messages due together, each sender's contact once.
            for i in range(0, len(items), batch_max):
                chunk = items[i:i + batch_max]
                contacts = list({c["wa_id"]: c for c, _ in chunk}.values())
                self._post_value(pnid, "messages", [m for _, m in chunk], contacts=contacts)

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
        now = self.sim.clock.monotonic()
        if post.first_failed is None:
            post.first_failed = now
        max_attempts = int(conf["max_attempts"])
        if (max_attempts and post.attempt + 1 >= max_attempts) \
                or now - post.first_failed >= float(conf["max_age_s"]):
            c.gave_up += 1
            return
        c.retries += 1
        delay_ms = min(float(conf["retry_base_ms"]) * (2.0 ** min(post.attempt, 60)),
                       float(conf["retry_max_ms"]))
        delay_ms *= random.uniform(0.8, 1.2)
        post.attempt += 1
        self.at(now + delay_ms / 1000.0, ("post", post))
