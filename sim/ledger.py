"""The ledger of accepted sends, and the counters ``GET /_sim/stats`` answers.

Everything is maintained incrementally on the request path (O(1) per send), so
the stats answer costs the same at 100 sends as at 10 million:

* per number, a sliding 1-second window of accepted sends and delivered inbound
  messages (Meta's throughput counts both; the window enforces it) and one of all
  send attempts; their peaks are the highest count any window ever held;
* sends accepted but failed later by status (131026, 131049, ...), by code, and
  template sends held for quality, released or not yet;
* duplicates: an accepted send whose (phone_number_id, recipient, campaign tag)
  was already accepted, the tag being ``biz_opaque_callback_data`` up to the
  first ':' (the whole value if none); sends without it are not counted.
"""

from __future__ import annotations

from collections import Counter, deque

WINDOW_S = 1.0

# Ledger row layout (tuples are cheaper than dicts at thousands per second).
LEDGER_FIELDS = ("time", "phone_number_id", "to", "type", "template", "language",
                 "biz_opaque_callback_data", "wamid", "message_status")


class NumberStats:
    __slots__ = (
        "accepted",
        "accepted_window",
        "attempt_window",
        "inbound",
        "peak_1s_attempts",
        "peak_1s_rate",
        "requests",
    )

    def __init__(self) -> None:
        self.accepted_window: deque[float] = deque()
        self.attempt_window: deque[float] = deque()
        self.requests = 0
        self.accepted = 0
        self.inbound = 0
        self.peak_1s_rate = 0
        self.peak_1s_attempts = 0

    def attempt(self, now: float) -> None:
        self.requests += 1
        win = self.attempt_window
        win.append(now)
        edge = now - WINDOW_S
        while win[0] <= edge:
            win.popleft()
        self.peak_1s_attempts = max(self.peak_1s_attempts, len(win))

    def in_window(self, now: float) -> int:
        """Accepted sends and inbound messages in the trailing second (the throughput
        check reads this)."""
        win = self.accepted_window
        edge = now - WINDOW_S
        while win and win[0] <= edge:
            win.popleft()
        return len(win)

    def receive(self, now: float) -> None:
        """An inbound message reached the number: it takes its share of the throughput."""
        self.inbound += 1
        self._count(now)

    def accept(self, now: float) -> None:
        self.accepted += 1
        self._count(now)

    def _count(self, now: float) -> None:
        win = self.accepted_window
        win.append(now)
        edge = now - WINDOW_S
        while win[0] <= edge:
            win.popleft()
        self.peak_1s_rate = max(self.peak_1s_rate, len(win))


class Ledger:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.rows: list[tuple] = []
        self.numbers: dict[str, NumberStats] = {}
        self.requests = 0
        self.read_receipts = 0
        self.rejected: Counter[str] = Counter()
        self.seen_tags: set[tuple[str, str, str]] = set()
        self.duplicates = 0
        self.duplicates_by_tag: Counter[str] = Counter()
        self.failed_later: Counter[str] = Counter()   # accepted, then a failed status
        self.held = 0                                  # answered held_for_quality_assessment
        self.released = 0                              # of those, later sent

    def number(self, phone_number_id: str) -> NumberStats:
        stats = self.numbers.get(phone_number_id)
        if stats is None:
            stats = self.numbers[phone_number_id] = NumberStats()
        return stats

    def reject(self, code: int | str) -> None:
        self.rejected[str(code)] += 1

    def record(self, row: tuple) -> None:
        """Record an accepted send (a tuple in LEDGER_FIELDS order)."""
        self.rows.append(row)
        biz = row[6]
        if biz:
            tag = biz.split(":", 1)[0]
            key = (row[1], row[2], tag)
            if key in self.seen_tags:
                self.duplicates += 1
                self.duplicates_by_tag[tag] += 1
            else:
                self.seen_tags.add(key)

    def entries(self, since: int = 0, limit: int = 1000, phone_number_id: str | None = None):
        """Ledger rows from sequence number ``since`` on, as dicts."""
        out = []
        seq = max(0, since)
        rows = self.rows
        while seq < len(rows) and len(out) < limit:
            row = rows[seq]
            if phone_number_id is None or row[1] == phone_number_id:
                out.append({"seq": seq, **dict(zip(LEDGER_FIELDS, row))})
            seq += 1
        return {"entries": out, "next": seq, "total": len(rows)}

    def stats(self, throughput: dict[str, float]) -> dict:
        accepted = len(self.rows)
        return {
            "requests": self.requests,
            "accepted": accepted,
            "rejected": sum(self.rejected.values()),
            "rejected_by_code": dict(self.rejected),
            "read_receipts": self.read_receipts,
            "duplicates": self.duplicates,
            "duplicates_by_tag": dict(self.duplicates_by_tag),
            "failed_later_by_code": dict(self.failed_later),
            "held": self.held,
            "released": self.released,
            "numbers": {
                pnid: {
                    "requests": s.requests,
                    "accepted": s.accepted,
                    "inbound": s.inbound,
                    "peak_1s_rate": s.peak_1s_rate,
                    "peak_1s_attempts": s.peak_1s_attempts,
                    "throughput_mps": throughput.get(pnid),
                }
                for pnid, s in self.numbers.items()
            },
        }
