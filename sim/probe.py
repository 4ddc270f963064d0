"""How steady the simulator's own event loop is: the loop lag and garbage-collection pauses.

A rate limit counted on a busy loop is only as exact as the loop is prompt: a request
that waited 80 ms in the socket is counted 80 ms late, in the same instant as the ones
behind it. ``/_sim/stats`` reports these figures under ``loop`` so that a benchmark can
tell a client that broke the limit from a simulator that squeezed its arrivals.
"""

from __future__ import annotations

import asyncio
import gc
import time

TICK_S = 0.01
STALL_MS = 50.0


class LoopProbe:
    def __init__(self) -> None:
        self.max_lag_ms = 0.0
        self.stalls = 0             # ticks that came more than STALL_MS late
        self.gc_max_ms = 0.0
        self.gc_total_ms = 0.0
        self.gc_max_ms_by_generation = [0.0, 0.0, 0.0]
        self._gc_started = 0.0

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            ms = (time.perf_counter() - self._gc_started) * 1000
            self.gc_total_ms += ms
            self.gc_max_ms = max(self.gc_max_ms, ms)
            generation = info.get("generation", 2)
            self.gc_max_ms_by_generation[generation] = max(self.gc_max_ms_by_generation[generation], ms)

    async def run(self, stop: asyncio.Event) -> None:
        gc.callbacks.append(self._on_gc)
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                due = loop.time() + TICK_S
                await asyncio.sleep(TICK_S)
                lag = (loop.time() - due) * 1000
                self.max_lag_ms = max(self.max_lag_ms, lag)
                if lag > STALL_MS:
                    self.stalls += 1
        finally:
            gc.callbacks.remove(self._on_gc)

    def as_dict(self) -> dict:
        return {"max_lag_ms": round(self.max_lag_ms, 1), "stalls_over_50ms": self.stalls,
                "gc_max_ms": round(self.gc_max_ms, 1), "gc_total_ms": round(self.gc_total_ms, 1),
                "gc_max_ms_by_generation": [round(ms, 1) for ms in self.gc_max_ms_by_generation]}
