"""The LLM loop: answer what no bot rule matched, through an OpenAI-compatible endpoint.

::

    LISTEN pgwa_llm ──wake──> api.claim_llm_jobs(worker, free slots, vt)   one call per claim:
    (core.on_inbound, when a      │                                       each job with its
     job is queued)               v                                       context and daily limit
                     one task per job: POST {PGWA_LLM_BASE_URL}/chat/completions
                                  │  the reply, or on a timeout/error/limit the fallback text
                                  v
                     api.complete_llm_jobs(results)   coalesced, at most every REPORT_S

The database decides everything: which jobs are still wanted, what the model sees (the
number's system prompt and the conversation's last messages), whether the contact's
replies or the number's LLM calls for today are used up (``over_limit``: no call), which
jobs are cancelled (an opt-out, an agent taking over), and what a failure does (the
fallback text, sent once, and the conversation flagged for a human). This loop only
makes the HTTP calls, so a slow model holds a slot of PGWA_LLM_CONCURRENCY, never the
webhook or send loops.

A job claimed by a worker that dies comes back after its visibility timeout (the LLM
timeout plus a margin). The API key goes into the Authorization header and nowhere
else: it is never logged, and error messages carry only the status and error type.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import orjson

from pgwa.config import Settings

from .db import Database, Unavailable, listen
from .loop import Results, run_tasks, wait

log = logging.getLogger("worker.llm")

CHANNEL = "pgwa_llm"
HEARTBEAT_S = 5.0        # idle: claim this often even without a NOTIFY (jobs back from a dead worker)
REPORT_S = 0.05          # at most one api.complete_llm_jobs per this interval
VT_MARGIN_S = 30         # a claimed job stays invisible for the LLM timeout plus this
ERROR_MAX = 200

CLAIM_SQL = """
SELECT msg_id, number_id, contact_id, message_id, system_prompt, messages::text, over_limit
FROM api.claim_llm_jobs(%s, %s, %s)
"""
COMPLETE_SQL = "SELECT replied, fell_back, dropped FROM api.complete_llm_jobs(%s::jsonb)"


class LLMResponder:
    """Claim LLM jobs, ask the model, report; ``await run(stop)`` until ``stop`` is set."""

    def __init__(self, settings: Settings, *, http: httpx.AsyncClient | None = None,
                 heartbeat_s: float = HEARTBEAT_S, report_s: float = REPORT_S) -> None:
        self.settings = settings
        self.heartbeat_s = heartbeat_s
        self.report_s = report_s
        self.http = http
        self._own_http = http is None
        self.db = Database(settings.session_url(), f"{settings.worker_name}-llm")
        self.totals = {"claimed": 0, "asked": 0, "answered": 0, "failed": 0,
                       "replied": 0, "fell_back": 0, "dropped": 0}
        self._tasks: set[asyncio.Task] = set()
        self._results = Results()
        self._slot_free = asyncio.Event()
        self._warned_unconfigured = False

    # --- one job ----------------------------------------------------------------------

    async def answer(self, job: dict) -> dict:
        """The result for one claimed job: {msg_id, text, error}."""
        fallback = {"msg_id": job["msg_id"], "text": self.settings.llm_fallback_text}
        if job["over_limit"]:
            return {**fallback, "error": "daily LLM reply limit reached"}
        if not self.settings.llm_base_url:
            if not self._warned_unconfigured:
                log.warning("an LLM job arrived but PGWA_LLM_BASE_URL is not set; sending the fallback text")
                self._warned_unconfigured = True
            return {**fallback, "error": "no LLM endpoint configured"}
        messages = [{"role": "system", "content": job["system_prompt"]}] if job["system_prompt"] else []
        messages += job["messages"]
        self.totals["asked"] += 1
        try:
            text = await self.complete(messages)
        except LLMError as exc:
            self.totals["failed"] += 1
            log.warning("LLM call for job %s failed: %s", job["msg_id"], exc)
            return {**fallback, "error": str(exc)}
        self.totals["answered"] += 1
        return {"msg_id": job["msg_id"], "text": text, "error": None}

    async def complete(self, messages: list[dict]) -> str:
        """One chat completion: the assistant's text. Raises LLMError."""
        headers = {"Content-Type": "application/json"}
        if self.settings.llm_api_key:
            headers["Authorization"] = f"Bearer {self.settings.llm_api_key}"
        body = orjson.dumps({"model": self.settings.llm_model, "messages": messages})
        try:
            response = await self.http.post(f"{self.settings.llm_base_url}/chat/completions",
                                            content=body, headers=headers)
        except httpx.TimeoutException:
            raise LLMError(f"timeout after {self.settings.llm_timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise LLMError(f"connection error ({type(exc).__name__})") from None
        try:
            data: Any = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            data = None
        if response.status_code != 200:
            err = data.get("error") if isinstance(data, dict) else None
            kind = err.get("type") or err.get("code") if isinstance(err, dict) else None
            raise LLMError(f"HTTP {response.status_code}" + (f" ({str(kind)[:60]})" if kind else ""))
        try:
            text = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            text = None
        if not isinstance(text, str) or not text.strip():
            raise LLMError("answer without choices[0].message.content")
        return text.strip()

    # --- the loop ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        if self.http is None:
            self.http = httpx.AsyncClient(timeout=httpx.Timeout(settings.llm_timeout_s, connect=5.0),
                                          limits=httpx.Limits(max_connections=settings.llm_concurrency))
        wake = asyncio.Event()
        done = asyncio.Event()              # claiming has stopped and every job has its result
        log.info("LLM loop %s started: %s, model %s, concurrency %d", settings.worker_name,
                 settings.llm_base_url or "no endpoint (fallback only)", settings.llm_model,
                 settings.llm_concurrency)
        try:
            await run_tasks(
                {"llm-claim": self._claim_then_answer(stop, wake, done), "llm-report": self._report_loop(done)},
                {"llm-listen": listen(settings.database_url, CHANNEL, wake, stop, f"{settings.worker_name}-llm-listen")},
                stop=stop)
        finally:
            await self.db.close()
            if self._own_http:
                await self.http.aclose()
            log.info("LLM loop %s stopped: %s", settings.worker_name, self.totals)

    async def _claim_then_answer(self, stop: asyncio.Event, wake: asyncio.Event, done: asyncio.Event) -> None:
        """The claim loop until ``stop``; then the jobs in hand are answered, and ``done`` is set."""
        try:
            await self._claim_loop(stop, wake)
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            done.set()

    async def _claim_loop(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        vt = int(self.settings.llm_timeout_s) + VT_MARGIN_S
        while not stop.is_set():
            wake.clear()
            self._slot_free.clear()
            free = self.settings.llm_concurrency - len(self._tasks)
            claimed = 0
            if free > 0:
                try:
                    rows, _ = await self.db.fetch(CLAIM_SQL, (self.settings.worker_name, free, vt), stop=stop)
                except Unavailable:
                    break
                except Exception:
                    log.exception("claim_llm_jobs failed; retrying in %.0f s", self.heartbeat_s)
                    await wait(stop, None, self.heartbeat_s)
                    continue
                claimed = len(rows)
                self.totals["claimed"] += claimed
                for msg_id, number_id, contact_id, message_id, prompt, messages, over_limit in rows:
                    job = {"msg_id": msg_id, "number_id": number_id, "contact_id": contact_id,
                           "message_id": message_id, "system_prompt": prompt,
                           "messages": orjson.loads(messages), "over_limit": over_limit}
                    task = asyncio.create_task(self._run_job(job))
                    self._tasks.add(task)
                    task.add_done_callback(self._task_done)
            if claimed and claimed == free:
                continue                        # there may be more: claim again at once
            # Full: wait for a slot. Otherwise: for a NOTIFY, or the heartbeat.
            await wait(stop, self._slot_free if free <= 0 else wake, self.heartbeat_s)

    async def _run_job(self, job: dict) -> None:
        try:
            result = await self.answer(job)
        except Exception as exc:  # a bug must not lose the job's fallback
            log.exception("LLM job %s failed", job["msg_id"])
            result = {"msg_id": job["msg_id"], "text": self.settings.llm_fallback_text,
                      "error": f"worker error ({type(exc).__name__})"}
        result["error"] = result["error"][:ERROR_MAX] if result["error"] else None
        self._results.add(result)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._slot_free.set()

    async def _report_loop(self, done: asyncio.Event) -> None:
        async for batch in self._results.batches(self.report_s, done):
            await self._report(batch, done)

    async def _report(self, batch: list[dict], done: asyncio.Event) -> None:
        payload = orjson.dumps(batch).decode()
        for attempt in range(3):
            try:
                deadline = asyncio.get_running_loop().time() + 15 if done.is_set() else None
                rows, names = await self.db.fetch(COMPLETE_SQL, (payload,), deadline=deadline)
            except Unavailable:
                break
            except Exception:
                log.exception("complete_llm_jobs failed (%d results, attempt %d)", len(batch), attempt + 1)
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            for name, value in zip(names, rows[0]):
                self.totals[name] += value
            return
        log.error("%d LLM results not reported; their jobs come back after the visibility timeout",
                  len(batch))


class LLMError(Exception):
    """The endpoint did not give a usable answer; the message is safe to log and store."""


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """The LLM loop of ``python -m worker``, until ``stop`` is set."""
    await LLMResponder(settings).run(stop)
