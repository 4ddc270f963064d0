"""Per-number pacing on the worker's side: a GCRA (virtual scheduling) on an injected clock,
with a cap on any window of one second.

The database spaces each number's sends (their send_at) at its pace. The worker sends
each at its time, but a starved event loop (or process) wakes late with many sends
overdue. Firing them together squeezes the schedule into Meta's one-second window and
earns 130429. ``Pacer`` decides, for each send, whether it may start now:

* a theoretical arrival time ``tat`` advances ``interval`` per send;
* a send may start when ``tat - now <= burst`` (the tolerance, in seconds);
* a late send does not catch up: ``tat`` never lags ``now``, so the slots a stalled loop
  missed are skipped, not spent together. After a stall of any length at most
  ``burst / interval + 1`` sends start at once, then one per ``interval``;
* and no ``window`` seconds (one) hold more than ``window / interval`` starts: the
  tolerance lets a wake-up start the sends of the next ``burst`` seconds with the ones
  due, which alone would let a second hold ``burst / interval + 1`` more than the pace
  (994 at 990 msg/s with 3 ms). The cap keeps that room for what the pacer cannot see:
  the network's jitter and Meta's own clock, which count the same sends a few
  milliseconds apart. It holds for a window of exactly ``window``: one a few
  milliseconds longer holds its share of the pace plus the few sends a wake-up starts
  together (998 in 1.006 s at 990 msg/s with 3 ms wake-ups, against 996 for sends
  exactly one interval apart), so the room Meta's clock has shrinks with its skew.

Hence in any window of W seconds at most ``W / interval + burst / interval + 1`` sends
start, and in one of ``window`` seconds at most ``window / interval``. ``set_interval``
changes the pace at once (a throughput upgrade takes effect on the next send, a halving
too, the cap with it: the next send waits until the last window holds fewer starts than
the new cap, which after a halving at 990 msg/s is half a second, longer than the
database's throttle hold of 250 ms; Meta saw those starts too). No I/O and no clock of
its own: tests drive ``now``.
"""

from __future__ import annotations

import math
from collections import deque


class Pacer:
    """GCRA for one number. ``interval``: seconds between sends (None: no pacing yet);
    ``burst``: how far (seconds) the schedule may run ahead of the clock; ``window``: the
    span (seconds) that holds at most ``window / interval`` starts."""

    __slots__ = ("burst", "interval", "starts", "tat", "window")

    def __init__(self, interval: float | None = None, burst: float = 0.0, window: float = 1.0) -> None:
        if interval is not None and interval <= 0:
            raise ValueError("interval must be positive")
        if burst < 0:
            raise ValueError("burst must not be negative")
        if window <= 0:
            raise ValueError("window must be positive")
        self.interval = interval
        self.burst = burst
        self.window = window
        self.tat = float("-inf")
        self.starts: deque[float] = deque()     # the starts of the last window, oldest first

    def set_interval(self, interval: float | None) -> None:
        """A new pace, from the next send on (the one already booked keeps its slot, at
        most one old interval away)."""
        if interval is not None and interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval

    def wait(self, now: float) -> float:
        """0.0 and the send is booked, or the seconds to wait before asking again."""
        interval = self.interval
        if interval is None:
            return 0.0
        tat = max(now, self.tat)                # missed slots are skipped
        ahead = tat - now
        if ahead > self.burst + 1e-9:          # (float sums of the interval)
            return ahead - self.burst
        starts = self.starts
        edge = now - self.window
        while starts and starts[0] <= edge:
            starts.popleft()
        over = len(starts) - self.cap()
        if over >= 0:                           # until enough have left the window
            return starts[over] - edge
        starts.append(now)
        self.tat = tat + interval
        return 0.0

    def cap(self) -> int:
        """The most starts in any ``window`` seconds at the current pace."""
        if self.interval is None:
            raise ValueError("no pace")
        return max(1, int(self.window / self.interval + 1e-9))

    def most_in(self, window: float) -> int:
        """The most sends this pacer lets start in any ``window`` seconds at its pace."""
        if self.interval is None:
            raise ValueError("no pace")
        gcra = int(window / self.interval + self.burst / self.interval) + 1
        # A span of up to ``window`` lies within one capped window, a longer one within
        # as many as cover it.
        return min(gcra, self.cap() * max(1, math.ceil(window / self.window - 1e-9)))
