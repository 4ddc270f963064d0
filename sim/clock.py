"""The simulator's time: the real clocks, which a test may freeze and move forward.

Everything the simulator decides by time reads this clock: the throughput window and
pair buckets, forced 130429 bursts, account call-limit bursts, throughput upgrades,
token expiry, the 24-hour window, each portfolio's moving 24 hours of reached users,
conversations, the ledger's times and the webhook schedule (statuses, inbound messages,
held messages released, retries over hours). A test
then pins a window or a back-off by moving the clock (``POST /_sim/clock``) instead
of sleeping through it and hoping the machine kept up::

    {"frozen": true}      time stands still: a burst of requests all lands in one instant
    {"advance_s": 1.05}   jump ahead; anything due by then (a window's end, a webhook
                          retry) is due now
    {"frozen": false}     run again from where it stands

``/_sim/reset`` puts it back on the real clocks. The loop probe (sim/probe.py) keeps the
real clock: it measures the process, not the simulated world.
"""

from __future__ import annotations

import math
import time


class SimClock:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.offset_s = 0.0                             # added to the real clocks
        self._frozen: tuple[float, float] | None = None  # (monotonic, unix) while frozen

    def monotonic(self) -> float:
        return self._frozen[0] if self._frozen else time.monotonic() + self.offset_s

    def time(self) -> float:
        """Unix time, moved and frozen with ``monotonic``."""
        return self._frozen[1] if self._frozen else time.time() + self.offset_s

    def set(self, *, frozen: bool | None = None, advance_s: float = 0.0) -> dict:
        if not 0 <= advance_s < math.inf:
            raise ValueError("advance_s must be a finite number of seconds, not negative: "
                             "the clock only moves forward")
        if frozen is True and self._frozen is None:
            self._frozen = (self.monotonic(), self.time())
        elif frozen is False and self._frozen is not None:
            self.offset_s = self._frozen[0] - time.monotonic()
            self._frozen = None
        if self._frozen:
            self._frozen = (self._frozen[0] + advance_s, self._frozen[1] + advance_s)
        else:
            self.offset_s += advance_s
        return self.as_dict()

    def as_dict(self) -> dict:
        """Frozen or not, and how far ahead of the real clock it stands (to the ms)."""
        offset = self._frozen[0] - time.monotonic() if self._frozen else self.offset_s
        return {"frozen": self._frozen is not None, "offset_s": round(offset, 3)}
