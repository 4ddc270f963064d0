"""The send loop: claim paced requests, POST each at its time, report the results.

One ``Sender`` runs these tasks::

    listener: LISTEN pgwa_send ──wake──┐
    claim loop ──api.claim_sends──> rows ──> one lane per number: at each row's send_at
      (every PACE_S while busy, sooner on a    (never before), through the number's
       NOTIFY; idle: on NOTIFY or every         pacer (no late bursts) ──> POST task each
       HEARTBEAT_S)
    reporter <──results── POST tasks;  ──api.report_sends──> at most every REPORT_S

Claims are pipelined: the database paces each number up to its pace horizon ahead (1 s,
api.send_policy), so the loop claims again every half horizon while earlier rows still
wait in their lanes or are in flight, and at once after a claim that came back full.
Two round trips per batch (one claim, one coalesced report), whatever its size: about
four statements a second for a number at 1,000 msg/s.

One worker at a time sends a number's messages: the database makes the worker whose claim
took them the number's sender until a horizon after the last one's time, and renews it with
each claim (api.claim_sends). A worker behind its schedule (its loop starved) may hold
rows past that time with nothing more to claim, at a campaign's end: half a horizon
before its hold ends, the lane asks the database to keep the number (api.keep_numbers),
which it does for a horizon if no other worker took it. A lane that still holds rows when
its hold has passed (its worker stalled, or the number was not kept) hands them back
unsent, since another worker may be sending for the number by then; and so does one that
has held a row for the claim timeout (api.send_policy), as a pace horizon later the claim's
visibility ends and a claim would take the row again.

A worker that cannot reach Meta (BREAKER_FAILURES sends in a row and BREAKER_MIN_S with no
HTTP answer: its network, DNS or proxy is down) stops sending: it hands back unsent what
its lanes hold, gives its numbers up (api.release_numbers) so a worker that can reach Meta
takes them, and claims nothing until a probe of the Graph host gets an answer, any answer,
again (after BREAKER_FIRST_S, doubling to BREAKER_MAX_S, back to the first only once a send
is answered). Otherwise it would keep its numbers, renewing its hold with each claim, and
spend every message's attempts on a dead link until they failed.

On stop (SIGTERM/SIGINT) the loop claims nothing more, sends what it holds (at most one
pace horizon ahead, or a throttle hold), gives up its numbers (api.release_numbers),
reports and returns. Anything it cannot
report comes back to a worker when its visibility timeout ends.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import orjson

from pgwa.config import Settings

from .db import Database, Unavailable, listen
from .graph import GraphClient
from .loop import NotReported, Results, report, run_tasks, wait
from .pacing import Pacer

log = logging.getLogger("worker.sender")

CHANNEL = "pgwa_send"
PACE_S = None            # claim interval while there is work (None: half the database's pace horizon)
BUSY_GAP_S = 0.02        # busy: a NOTIFY brings the next claim forward, to no sooner than this
IDLE_AFTER_S = 1.0       # empty claims for this long: go idle
HEARTBEAT_S = 5.0        # idle: claim this often even without a NOTIFY (retries, throttled numbers)
# After a report with retried or throttled results, stay busy this long: the database
# holds a throttled number for the throttle hold (core.settings, 0.25 s) and its
# messages 1-2 s, and nothing NOTIFYs when they return.
AFTER_RETRY_S = 3.0
REPORT_S = 0.5           # at most one report per this interval (results are coalesced)
STOP_REPORT_S = 15.0     # on stop, keep trying to report for this long
THROUGHPUT_LOG_S = 60.0
DUE, EXPIRES = 0, 2          # a lane's row: (due, row, expires), loop / monotonic time
LATE_S = 0.025           # a send this late after its send_at counts as late (the loop lags)
# Jitter control, per number (worker/pacing.py). Sends held up by a stalled loop must not
# all go out the moment it resumes: that squeezes the schedule and crosses Meta's
# per-second limit (the database paces at rate_headroom of it). Each number's sends pass
# a GCRA at its pace (read from the spacing of its send_at values) divided by PACE_SHARE,
# with PACER_BURST_S of tolerance: after a stall the missed slots are skipped, so at most
# PACER_BURST_S worth of sends start together, and no window of one second holds more
# than pace / PACE_SHARE sends (990 at 990 msg/s; the tolerance alone allowed
# PACER_BURST_S x pace + 1 more, 994, which left Meta's clock 6 sends of jitter).
WINDOW_S = 1.0              # the pacer's capped window, and the worker's busiest-second count (stats.peak_1s)
PACE_SHARE = 0.9995
PACER_BURST_S = 0.003
# A lane wakes at most this often; the sends that came due meanwhile go out together,
# a few milliseconds late, which saves an event-loop cycle (and syscalls) per message.
TICK_S = 0.003
# No answer at all from Meta (a refused connection, a timeout, a dropped connection) this
# many sends in a row, over at least BREAKER_MIN_S: this worker cannot reach it (see the
# module's docstring). A blip shorter than that (a proxy restarting, stale keep-alive
# connections failing together) does not count; one dropped connection in five, which
# happens, makes 25 in a row about once in 10^17 sends.
BREAKER_FAILURES = 25
BREAKER_MIN_S = 2.0
BREAKER_FIRST_S = 1.0       # then a probe of the Graph host; each failed probe doubles it
BREAKER_MAX_S = 30.0
PROBE_TIMEOUT_S = 5.0
# Meta's throughput errors: the database halves the number's pace and sends nothing for it
# during the throttle hold; this worker holds the number's lane as long and hands back,
# unsent, what it holds for it that was due before the hold ends. They were paced at the
# old rate: sent after the hold on top of the new schedule, they would cross the limit
# again. Which codes throttle and for how long is the database's (api.send_policy), read
# once before the first claim.
POLICY_SQL = "SELECT throttle_hold_ms, throttle_codes, pace_horizon_ms, claim_timeout_s FROM api.send_policy()"

# Each row's delay is measured on the database's clock from the claim's start (now()),
# or from the claim's time when the sender has its own clock (the p_now it passes), then
# counted on the loop clock from when the rows arrive: a send can only be late, by the
# claim's round trip, and the rows keep the exact spacing the database gave them.
CLAIM_SQL = """
SELECT outbound_id, queue_name, msg_id, access_token, path, body::text,
       extract(epoch FROM send_at - coalesce(%(now)s::timestamptz, now()))::float8, phone_number_id
FROM api.claim_sends(%(worker)s, %(max)s, %(now)s::timestamptz)
"""
REPORT_SQL = "SELECT * FROM api.report_sends(%(results)s::jsonb, %(now)s::timestamptz)"
RELEASE_SQL = "SELECT api.release_numbers(%s)"
KEEP_SQL = "SELECT api.keep_numbers(%(worker)s, %(numbers)s, %(now)s::timestamptz)"


class SendPolicy(NamedTuple):
    """What the database tells the worker of Meta's pacing rules (api.send_policy)."""

    throttle_hold_s: float
    throttle_codes: frozenset[int]
    pace_horizon_s: float
    # A claimed message held this long goes back unsent: a pace horizon later its claim's
    # visibility ends, and a claim (this worker's too) would take it again.
    claim_timeout_s: float


@dataclass
class SenderStats:
    claims: int = 0
    claimed: int = 0
    sent: int = 0
    accepted: int = 0           # answered with a wamid
    errors: int = 0             # answered with an error (or none at all)
    returned: int = 0           # handed back unsent (throttled number, lapsed hold, Meta out of reach)
    kept: int = 0               # holds on numbers kept without a claim (behind schedule)
    unreachable: int = 0        # times this worker found Meta out of its reach (the breaker)
    reports: int = 0
    reported: int = 0
    unreported: int = 0         # given up on: they come back by visibility timeout
    late: int = 0               # POSTed more than LATE_S after their send_at
    peak_1s: int = 0            # the most requests one number started in any WINDOW_S
    max_late_ms: float = 0.0
    report_totals: dict[str, int] = field(default_factory=dict)
    error_codes: dict[str | int, int] = field(default_factory=dict)


class Sender:
    """One worker's claim → send → report loop. ``await run(stop)`` until ``stop`` is set."""

    def __init__(self, settings: Settings, graph: GraphClient | None = None, *,
                 pace_s: float | None = PACE_S, idle_after_s: float = IDLE_AFTER_S,
                 heartbeat_s: float = HEARTBEAT_S, report_s: float = REPORT_S,
                 after_retry_s: float = AFTER_RETRY_S,
                 max_inflight: int | None = None, status_line: bool | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        """``clock``: the time this sender claims and reports at (the functions' p_now);
        None, the database's clock. A scenario on a compressed clock (the simulator's
        moved forward, bench/scenario_limits.py) passes the same time as the simulator."""
        self.settings = settings
        self.clock = clock
        self.graph = graph
        self._own_graph = graph is None
        self.pace_s = pace_s
        self.idle_after_s = idle_after_s
        self.heartbeat_s = heartbeat_s
        self.report_s = report_s
        self.after_retry_s = after_retry_s
        # Claimed and not yet reported: a horizon of sends, those in flight, and those
        # waiting for the next report.
        self.max_inflight = max_inflight or max(6 * settings.claim_batch,
                                                2 * settings.send_concurrency)
        self.status_line = sys.stderr.isatty() if status_line is None else status_line
        self.stats = SenderStats()
        self._claims = Database(settings.session_url(), f"{settings.worker_name}-claim")
        self._reports = Database(settings.session_url(), f"{settings.worker_name}-report")
        self._inflight = 0                  # claimed and not yet reported (or given up)
        self._lanes: dict[str, _Lane] = {}  # by request path: one per number
        self._draining = False
        self._sending: set[asyncio.Task] = set()
        self._results = Results()
        self._retry_seen = -1e9             # loop time of the last report with retries
        self._claim_idle = False            # the claim loop waits for a NOTIFY or its heartbeat
        self._no_answer = 0                 # sends in a row that got no HTTP answer
        self._no_answer_since = 0.0         # time.monotonic() the first of them went out
        self._wake: asyncio.Event | None = None     # the claim loop's
        self._keep: set[_Lane] = set()      # lanes whose hold ends before their rows are sent
        self._cut_off = False               # Meta out of reach: claim nothing, hand back
        self._cut_off_s = BREAKER_FIRST_S
        self._reach = 0                     # counts the times Meta answered again
        self.policy: SendPolicy | None = None   # read before the first claim

    # --- the loop ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> SenderStats:
        if self.graph is None:
            self.graph = GraphClient(self.settings.graph_base_url, self.settings.send_concurrency)
        name = self.settings.worker_name
        wake = self._wake = asyncio.Event()
        done = asyncio.Event()              # the claim loop has stopped
        sent = asyncio.Event()              # ... and every claimed message was sent
        log.info("sender %s started: graph %s, batch %d, concurrency %d",
                 name, self.settings.graph_base_url, self.settings.claim_batch, self.settings.send_concurrency)
        try:
            await run_tasks(
                {"pgwa-send-claim": self._claim_then_send(stop, wake, done, sent),
                 "pgwa-send-report": self._report_loop(sent)},
                {"pgwa-send-listen": listen(self.settings.database_url, CHANNEL, wake, stop, f"{name}-listen"),
                 "pgwa-send-status": self._status_loop(done)},
                stop=stop)
        finally:
            await self._claims.close()
            await self._reports.close()
            if self._own_graph:
                await self.graph.aclose()
            s = self.stats
            log.info("sender %s stopped: %d sent (%d accepted, %d errors), %d reported, "
                     "%d left to the visibility timeout; %d handed back unsent; %d sent late (max %.0f ms), "
                     "holds kept %d times; busiest second %d requests for one number",
                     self.settings.worker_name, s.sent, s.accepted, s.errors, s.reported,
                     s.unreported, s.returned, s.late, s.max_late_ms, s.kept, s.peak_1s)
        return self.stats

    async def _claim_then_send(self, stop: asyncio.Event, wake: asyncio.Event, done: asyncio.Event,
                               sent: asyncio.Event) -> None:
        """The claim loop until ``stop``; then every lane sends what it holds, and ``sent`` is set."""
        try:
            await self._claim_loop(stop, wake)
        finally:
            done.set()
            self._draining = True
            for lane in self._lanes.values():
                lane.wake.set()
            await asyncio.gather(*(lane.task for lane in self._lanes.values()),
                                 return_exceptions=True)
            if self._sending:
                await asyncio.gather(*self._sending, return_exceptions=True)
            sent.set()
            await self._release()

    async def _release(self, stop: asyncio.Event | None = None) -> None:
        """Give up the numbers this worker sent for (api.release_numbers): everything it
        held is sent or handed back, and other workers may take them at once."""
        if self.policy is None:
            return                          # it never claimed
        try:
            await self._claims.fetch(RELEASE_SQL, (self.settings.worker_name,), stop=stop,
                                     deadline=asyncio.get_running_loop().time() + STOP_REPORT_S)
        except Exception as exc:  # noqa: BLE001 (stopping: the holds then end by themselves)
            log.warning("could not give up this worker's numbers (%s); other workers take them "
                        "when its hold ends", _describe(exc))

    async def _claim_loop(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        last_work = -1e9
        failures = 0
        while not stop.is_set():
            if self._cut_off and not await self._wait_for_meta(stop):
                break
            wake.clear()
            started = loop.time()
            if self._keep:
                await self._keep_numbers(stop)
                if self._cut_off:
                    continue
            room = min(self.settings.claim_batch, self.max_inflight - self._inflight)
            if room > 0:
                try:
                    if self.policy is None:
                        rows, _ = await self._claims.fetch(POLICY_SQL, (), stop=stop)
                        self.policy = SendPolicy(rows[0][0] / 1000, frozenset(rows[0][1]),
                                                 rows[0][2] / 1000, rows[0][3])
                        if self.pace_s is None:
                            self.pace_s = self.policy.pace_horizon_s / 2
                    rows, _ = await self._claims.fetch(
                        CLAIM_SQL, {"worker": self.settings.worker_name, "max": room, "now": self._now()},
                        stop=stop)
                    failures = 0
                except Unavailable:
                    break                   # stopping while the database is away
                except Exception as exc:     # noqa: BLE001 (a broken function must not kill the loop)
                    failures += 1
                    log.error("%s failed: %s", "claim_sends" if self.policy else "send_policy", _describe(exc))
                    await wait(stop, None, min(self.heartbeat_s, 0.5 * 2 ** failures))
                    continue
                self.stats.claims += 1
                if rows:
                    last_work = loop.time()
                    self._dispatch(rows, last_work, started)
                if len(rows) >= room:
                    continue                # a full claim: more is due now (a fast number)
            else:
                last_work = started         # backpressure: work is waiting on us
            now = loop.time()
            if now - last_work < self.idle_after_s or now - self._retry_seen < self.after_retry_s:
                # Busy: claim again one pace interval after this claim began, or sooner on a
                # NOTIFY (a reply or an API send queued meanwhile must not wait for the
                # half horizon), but never within BUSY_GAP_S of the last claim.
                await wait(stop, None, BUSY_GAP_S - (loop.time() - started))
                await wait(stop, wake, self.pace_s - (loop.time() - started))
            else:
                self._claim_idle = True
                await wait(stop, wake, self.heartbeat_s)
                self._claim_idle = False

    def _dispatch(self, rows: list[tuple], arrived: float, started: float) -> None:
        """Rows of a claim that began at ``started`` and came back at ``arrived`` (loop time)."""
        self.stats.claimed += len(rows)
        self._inflight += len(rows)
        touched: dict[_Lane, tuple[float, float, int]] = {}
        horizon = self.policy.pace_horizon_s
        for row in rows:
            lane = self._lanes.get(row[4])
            if lane is None:
                lane = self._lanes[row[4]] = _Lane(row[7])
                lane.task = asyncio.get_running_loop().create_task(self._lane(lane))
            due = arrived + row[6]
            lane.rows.append((due, row, started + self.policy.claim_timeout_s))
            # The database makes this worker the number's sender until a horizon after
            # this row's time (api.claim_sends), counted from its clock when the claim
            # ran, which is no earlier than when it began here.
            lane.sender_until = max(lane.sender_until, started + row[6] + horizon)
            first, _, n = touched.get(lane, (due, due, 0))
            touched[lane] = (first, due, n + 1)
        for lane, (first, last, n) in touched.items():
            # One claim paces a number's rows evenly at its current rate: a new rate (an
            # upgrade, a halving after 130429) holds from the next send on.
            if n > 1 and last > first:
                lane.pacer.set_interval((last - first) / (n - 1) * PACE_SHARE)
            lane.wake.set()

    async def _lane(self, lane: _Lane) -> None:
        """Start one number's sends in order, none before its send_at.

        One timer per wake-up, not per message: every send whose time has come goes out
        at once, as far as the number's pacer lets it (see PACE_SHARE): late ones are
        not caught up in a burst.
        """
        loop = asyncio.get_running_loop()
        rows, pacer = lane.rows, lane.pacer
        stats = self.stats
        while True:
            if not rows:
                if self._draining:
                    return
                lane.wake.clear()
                await lane.wake.wait()
                continue
            if self._cut_off:
                self._hand_back(rows, float("inf"))     # Meta is out of this worker's reach
                continue
            now = loop.time()
            if lane.hold_until > now:
                self._hand_back(rows, lane.hold_until)
                if rows:
                    await asyncio.sleep(lane.hold_until - now)
                continue
            # The hold and the claims' age on the precise clock: the loop's is cached per
            # turn, and a starved loop's turn may have begun long before.
            clock = time.monotonic()
            if rows[0][EXPIRES] <= clock:
                # Held for the claim timeout (this worker far behind its schedule): a pace
                # horizon later their claim's visibility ends, and a claim would take them
                # again, to be sent twice. They go back unsent now.
                n = self._hand_back(rows, clock, EXPIRES)
                log.warning("%d sends for %s handed back: held for the claim timeout (%.0f s)",
                            n, lane.phone_number_id, self.policy.claim_timeout_s)
                continue
            if clock > lane.sender_until:
                # This worker's claims stopped taking the number's messages for longer
                # than its hold, and it was not kept (a stall, or another worker took the
                # number): another worker may be sending for it now, so what is left here
                # goes back unsent.
                log.warning("%d sends for %s handed back: this worker's hold on the number "
                            "lapsed %.0f ms ago", len(rows), lane.phone_number_id,
                            (clock - lane.sender_until) * 1000)
                self._hand_back(rows, float("inf"))
                continue
            horizon = self.policy.pace_horizon_s
            if clock > lane.sender_until - horizon / 2 and clock >= lane.ask_after:
                # Behind: its hold ends within half a horizon and it still holds rows, and
                # the claims (nothing more of the number's is queued, or no room) may not
                # renew it. The claim loop asks the database to keep the number
                # (_keep_numbers); not kept, the lane asks again a quarter horizon later,
                # and hands back when its hold ends.
                lane.ask_after = clock + horizon / 4
                self._keep.add(lane)
                if self._wake is not None:
                    self._wake.set()
            due = rows[0][DUE]
            if due > now:
                await asyncio.sleep(max(due - now, TICK_S))
                continue
            # On the precise clock read above: the loop's is cached per iteration (to the
            # millisecond under uvloop), which let 1% more sends into a real second.
            ahead = pacer.wait(clock)
            if ahead > 0.0:
                await asyncio.sleep(ahead)
                continue
            row = rows.popleft()[1]
            if now - due > LATE_S:
                stats.late += 1
                stats.max_late_ms = max(stats.max_late_ms, (now - due) * 1000)
            task = loop.create_task(self._send(row, lane))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _keep_numbers(self, stop: asyncio.Event) -> None:
        """Keep this worker the sender of the numbers whose lanes asked (api.keep_numbers):
        a pace horizon from now for each one it still is; a lane whose number another
        worker took meanwhile hands its rows back when its own hold ends."""
        lanes, self._keep = self._keep, set()
        started = asyncio.get_running_loop().time()
        try:
            rows, _ = await self._claims.fetch(
                KEEP_SQL, {"worker": self.settings.worker_name, "now": self._now(),
                           "numbers": sorted({lane.phone_number_id for lane in lanes})}, stop=stop)
        except Unavailable:
            return
        except Exception as exc:  # noqa: BLE001 (the lanes then hand back when their holds end)
            log.error("keep_numbers failed: %s", _describe(exc))
            return
        kept = set(rows[0][0]) if rows else set()
        for lane in lanes:
            if lane.phone_number_id in kept:
                # Counted from before the call, as the claims' holds are: no later than the
                # database's.
                lane.sender_until = max(lane.sender_until, started + self.policy.pace_horizon_s)
                self.stats.kept += 1

    def _hand_back(self, rows: deque, until: float, column: int = DUE) -> int:
        """Return, unsent, the rows due (``column`` DUE) or whose claim expires (EXPIRES)
        before ``until``: the database requeues them. Returns how many."""
        n = 0
        while rows and rows[0][column] < until:
            outbound_id, queue_name, msg_id = rows.popleft()[1][:3]
            n += 1
            self.stats.returned += 1
            self._results.add({"outbound_id": outbound_id, "queue_name": queue_name,
                               "msg_id": msg_id, "sent": False})
        return n

    def _cut_off_from_meta(self, last_error: str | None) -> None:
        """Meta did not answer BREAKER_FAILURES sends in a row: stop sending. What the lanes
        hold goes back now (reported at once); the claim loop, woken, gives the numbers up
        and probes."""
        self._cut_off = True
        self.stats.unreachable += 1
        log.error("Meta is out of this worker's reach: %d sends in a row got no answer over %.1f s "
                  "(last: %s); handing back what it holds and giving its numbers up to other workers "
                  "until %s answers again", self._no_answer,
                  time.monotonic() - self._no_answer_since, last_error, self.graph.base_url)
        for lane in self._lanes.values():
            self._hand_back(lane.rows, float("inf"))
        self._results.urgent.set()
        if self._wake is not None:
            self._wake.set()

    async def _wait_for_meta(self, stop: asyncio.Event) -> bool:
        """While Meta is out of reach: give the numbers up, then probe the Graph host after
        BREAKER_FIRST_S, doubling the wait up to BREAKER_MAX_S, until it answers. False
        when stopping first."""
        # The handed-back messages are queued again a throttle hold after their report
        # (at once): released after that, the workers the release wakes find them.
        await wait(stop, None, self.report_s + self.policy.throttle_hold_s)
        await self._release(stop)
        while not stop.is_set():
            await wait(stop, None, self._cut_off_s)
            if stop.is_set():
                break
            probe = asyncio.ensure_future(self.graph.probe(PROBE_TIMEOUT_S))
            answered = asyncio.Event()
            probe.add_done_callback(lambda _, done=answered: done.set())
            await wait(stop, answered, None)
            if not probe.done():
                probe.cancel()
                break
            problem = probe.result()
            # The wait is not reset here: Meta's host may answer a probe while sends still
            # go unanswered (it is slower than the send timeout); the first answered send
            # resets it (_send).
            self._cut_off_s = min(2 * self._cut_off_s, BREAKER_MAX_S)
            if problem is None:
                log.info("Meta answers this worker again (%s): claiming again", self.graph.base_url)
                self._cut_off, self._no_answer = False, 0
                self._reach += 1
                return True
            log.warning("Meta is still out of this worker's reach (%s); next try in %.0f s",
                        problem, self._cut_off_s)
        return False

    async def _send(self, row: tuple, lane: _Lane) -> None:
        # The worker's own busiest second (stats only), from when the request really leaves.
        started = time.monotonic()
        window = lane.window
        window.append(started)
        while window[0] <= started - WINDOW_S:
            window.popleft()
        self.stats.peak_1s = max(self.stats.peak_1s, len(window))
        outbound_id, queue_name, msg_id, token, path, body = row[:6]
        reach = self._reach
        try:
            r = await self.graph.send(path, token, body)
        except Exception as exc:  # noqa: BLE001 (send() should not raise; never lose a result)
            r = None
            error = _describe(exc)
        stats = self.stats
        stats.sent += 1
        if reach != self._reach:
            pass        # sent before Meta was out of reach and answered again: says nothing now
        elif r is None or r.http_status is None:
            if self._no_answer == 0:
                self._no_answer_since = started
            self._no_answer += 1
            if (self._no_answer >= BREAKER_FAILURES and not self._cut_off
                    and time.monotonic() - self._no_answer_since >= BREAKER_MIN_S):
                self._cut_off_from_meta(r.error_message if r is not None else error)
        else:
            self._no_answer = 0
            self._cut_off_s = BREAKER_FIRST_S
        if r is None:
            stats.errors += 1
            result = {"outbound_id": outbound_id, "queue_name": queue_name, "msg_id": msg_id,
                      "wamid": None, "message_status": None, "error_code": None,
                      "http_status": None, "error_message": error, "unsure": True}
        else:
            if r.wamid is not None:
                stats.accepted += 1
            else:
                stats.errors += 1
                if r.error_code in self.policy.throttle_codes:
                    now = asyncio.get_running_loop().time()
                    if lane.hold_until <= now:          # once per throttle event
                        lane.hold_until = now + self.policy.throttle_hold_s
                        # The database halves the number's pace (report_sends); the rows
                        # held here were spaced at the old one, so the pacer halves now.
                        if lane.pacer.interval is not None:
                            lane.pacer.set_interval(lane.pacer.interval * 2)
                        lane.wake.set()
                key = r.error_code if r.error_code is not None else (r.http_status or "network")
                stats.error_codes[key] = stats.error_codes.get(key, 0) + 1
            result = {"outbound_id": outbound_id, "queue_name": queue_name, "msg_id": msg_id,
                      "wamid": r.wamid, "message_status": r.message_status,
                      "error_code": r.error_code, "http_status": r.http_status,
                      "error_message": r.error_message, "retry_after_s": r.retry_after_s,
                      "unsure": r.unsure}
        # Meta's refusal of this request (4xx: auth, payment, template...), not a transient
        # error nor a throttle: the database may pause the campaign or the number on it,
        # which it should do before the next report interval's sends go out.
        self._results.add(result, urgent=r is not None and r.error_code is not None
                          and r.error_code not in self.policy.throttle_codes
                          and (r.http_status or 0) < 500)

    async def _report_loop(self, sent: asyncio.Event) -> None:
        """Report coalesced results, at most one call per ``report_s``; after ``sent``,
        the rest at once, then return."""
        async for batch in self._results.batches(self.report_s, sent):
            await self._report(batch, sent)

    async def _report(self, batch: list[dict], sent: asyncio.Event) -> None:
        """One api.report_sends call; retried until it succeeds, or for STOP_REPORT_S
        once everything is sent (stopping), or three times on a database error."""
        try:
            rows, names = await report(
                self._reports, REPORT_SQL, {"results": orjson.dumps(batch).decode(), "now": self._now()},
                what="report_sends", size=len(batch), sent=sent, stop_report_s=STOP_REPORT_S,
                describe=_describe, logger=log)
        except NotReported as why:
            return self._give_up(batch, str(why))
        stats = self.stats
        stats.reports += 1
        stats.reported += len(batch)
        if rows:
            for name, value in zip(names, rows[0]):
                if isinstance(value, int):
                    stats.report_totals[name] = stats.report_totals.get(name, 0) + value
            totals = dict(zip(names, rows[0]))
            if totals.get("retried"):
                # Messages went back to the queue (a retry, a throttle, rows handed back)
                # and nothing NOTIFYs when they are due: an idle claim loop wakes and stays
                # busy a while. Else the end of a campaign, whose last rows a worker had to
                # hand back (its hold lapsed while it was behind), waited for the heartbeat.
                self._retry_seen = asyncio.get_running_loop().time()
                if self._claim_idle and self._wake is not None:
                    self._wake.set()
            if totals.get("paused"):
                # A campaign or number was paused: what the lanes hold (up to a pace
                # horizon ahead) goes back unsent; the database keeps the paused ones
                # queued and gives the rest to the next claim.
                for lane in self._lanes.values():
                    self._hand_back(lane.rows, float("inf"))
        self._settle(len(batch))

    def _now(self) -> datetime | None:
        return None if self.clock is None else self.clock()

    def _give_up(self, batch: list[dict], why: str) -> None:
        log.error("%d sent results not reported (%s); their messages come back after the "
                  "claim timeout and are reconciled against status webhooks", len(batch), why)
        self.stats.unreported += len(batch)
        self._settle(len(batch))

    def _settle(self, n: int) -> None:
        self._inflight -= n

    # --- visibility -------------------------------------------------------------------

    async def _status_loop(self, done: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        last_log = loop.time()
        last_sent = logged_sent = 0
        while not done.is_set():
            await asyncio.sleep(1.0)
            now = loop.time()
            s = self.stats
            if self.status_line:
                sys.stderr.write(f"\rsent {s.sent}  {s.sent - last_sent}/s  accepted {s.accepted}"
                                 f"  errors {s.errors}  in flight {self._inflight}   ")
                sys.stderr.flush()
                last_sent = s.sent
            if now - last_log >= THROUGHPUT_LOG_S:
                if s.sent != logged_sent:
                    log.info("sent %d in the last %.0f s (%.0f/s); total %d, errors %d%s",
                             s.sent - logged_sent, now - last_log,
                             (s.sent - logged_sent) / (now - last_log), s.sent, s.errors,
                             f" {dict(s.error_codes)}" if s.error_codes else "")
                logged_sent, last_log = s.sent, now
        if self.status_line:
            sys.stderr.write("\n")


class _Lane:
    """One number's claimed messages waiting for their send_at, in order."""

    __slots__ = ("ask_after", "hold_until", "pacer", "phone_number_id", "rows", "sender_until", "task",
                 "wake", "window")

    def __init__(self, phone_number_id: str) -> None:
        self.phone_number_id = phone_number_id
        self.ask_after = 0.0                    # time.monotonic(): may ask to keep the number again
        self.rows: deque[tuple[float, tuple, float]] = deque()     # (due, row, expires): DUE, EXPIRES
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.window: deque[float] = deque()     # start times of the last second's sends (stats)
        self.pacer = Pacer(burst=PACER_BURST_S, window=WINDOW_S)  # no pace until a claim spaces two rows
        self.hold_until = 0.0                   # loop time: throttled by Meta until then
        self.sender_until = 0.0                 # loop time: this worker sends for the number until then


def _describe(exc: BaseException) -> str:
    """An exception for a log line: class and SQLSTATE, message cut short. No parameters
    (the only secret, the access token, is never a query parameter or part of a message)."""
    state = getattr(getattr(exc, "diag", None), "sqlstate", None)
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}{f' [{state}]' if state else ''}: {text}"


async def run(settings: Settings, stop: asyncio.Event) -> SenderStats:
    """Entry point for ``python -m worker``: the send loop until ``stop``."""
    return await Sender(settings).run(stop)
