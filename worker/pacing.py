"""Per-number pacing on the worker's side: a GCRA (virtual scheduling) on an injected clock.

The database spaces each number's sends (their send_at) at its pace. The worker sends
each at its time, but a starved event loop (or process) wakes late with many sends
overdue. Firing them together squeezes the schedule into Meta's one-second window and
earns 130429. ``Pacer`` decides, for each send, whether it may start now:

* a theoretical arrival time ``tat`` advances ``interval`` per send;
* a send may start when ``tat - now <= burst`` (the tolerance, in seconds);
* a late send does not catch up: ``tat`` never lags ``now``, so the slots a stalled loop
  missed are skipped, not spent together. After a stall of any length at most
  ``burst / interval + 1`` sends start at once, then one per ``interval``.

Hence in any window of W seconds at most ``W / interval + burst / interval + 1`` sends
start. ``set_interval`` changes the pace at once (a throughput upgrade takes effect on
the next send, a halving too). No I/O and no clock of its own: tests drive ``now``.
"""

from __future__ import annotations


class Pacer:
    """GCRA for one number. ``interval``: seconds between sends (None: no pacing yet);
    ``burst``: how far (seconds) the schedule may run ahead of the clock."""

    __slots__ = ("burst", "interval", "tat")

    def __init__(self, interval: float | None = None, burst: float = 0.0) -> None:
        if interval is not None and interval <= 0:
            raise ValueError("interval must be positive")
        if burst < 0:
            raise ValueError("burst must not be negative")
        self.interval = interval
        self.burst = burst
        self.tat = float("-inf")

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
        self.tat = tat + interval
        return 0.0

    def most_in(self, window: float) -> int:
        """The most sends this pacer lets start in any ``window`` seconds at its pace."""
        if self.interval is None:
            raise ValueError("no pace")
        return int(window / self.interval + self.burst / self.interval) + 1
