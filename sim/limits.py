"""Meta's per-recipient and per-portfolio limits, kept in O(1) per send.

* ``PairBuckets`` — the pair rate (reference §3.2): per (business number, user), one
  message every ``interval_s`` (6 s) on average, bursts of up to ``burst`` (45) that
  borrow from the future quota. A token bucket: ``burst`` tokens, one back every
  ``interval_s``; a send with no token left is 131056.
* ``Reach`` — the messaging limit (reference §3.3): the unique users a business
  portfolio reached business-initiated (a template to a user whose customer-service
  window is closed) in a moving 24 hours. A user is new when it was not reached in the
  last 24 hours; a new user beyond the tier's limit is refused.
* ``is_us_number`` — which ``+1`` numbers count as US numbers for Meta's pause on
  marketing templates to the US (reference §3.4).
"""

from __future__ import annotations

from collections import deque

WINDOW_24H = 24 * 3600.0

# Tier -> unique users per moving 24 hours (None: unlimited). TIER_50 and TIER_1K appear
# in Meta's webhooks (the older per-number ladder); new portfolios start at 250.
TIERS: dict[str, int | None] = {
    "TIER_50": 50, "TIER_250": 250, "TIER_1K": 1000, "TIER_2K": 2000, "TIER_10K": 10_000,
    "TIER_100K": 100_000, "TIER_UNLIMITED": None,
}


def tier_limit(tier: str) -> int | None:
    return TIERS[tier]


def capability_value(tier: str) -> int:
    """``max_daily_conversations_per_business`` of a business_capability_update webhook:
    an integer, -1 for unlimited."""
    limit = TIERS[tier]
    return -1 if limit is None else limit


# NANP area codes outside the United States: Canada (geographic and 600/622), and the
# Caribbean and Atlantic countries of +1. Meta's pause covers "US phone numbers"; whether
# the US territories (Puerto Rico 787/939, Guam 671, ...) count is not said [unsure]:
# they count as US here. An area code must start with 2-9, so "+1 0..." is no US number.
NON_US_AREA_CODES = frozenset((
    # Canada
    "204", "226", "236", "249", "250", "257", "263", "289", "306", "343", "354", "365",
    "367", "368", "382", "403", "416", "418", "428", "431", "437", "438", "450", "468",
    "474", "506", "514", "519", "548", "579", "581", "584", "587", "600", "604", "613",
    "622", "639", "647", "672", "683", "705", "709", "742", "753", "778", "780", "782",
    "807", "819", "825", "867", "873", "879", "902", "905", "942",
    # the Caribbean and Bermuda
    "242", "246", "264", "268", "284", "345", "441", "473", "649", "658", "664", "721",
    "758", "767", "784", "809", "829", "849", "868", "869", "876",
))


def is_us_number(wa_id: str) -> bool:
    """A +1 number whose area code is not Canadian or Caribbean (no check that the area
    code is in service: a fictional +1 555 number counts as a US number)."""
    return (len(wa_id) == 11 and wa_id[0] == "1" and "2" <= wa_id[1] <= "9"
            and wa_id[1:4] not in NON_US_AREA_CODES)


class PairBuckets:
    """Token buckets per (phone_number_id, wa_id): (tokens, time of that reading)."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        self.buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def take(self, key: tuple[str, str], now: float, interval_s: float, burst: float) -> bool:
        """Spend a token if there is one; False (131056) when the bucket is empty."""
        got = self.buckets.get(key)
        tokens = burst if got is None else min(burst, got[0] + (now - got[1]) / interval_s)
        if tokens < 1.0:
            return False
        self.buckets[key] = (tokens - 1.0, now)
        return True


class Reach:
    """One business portfolio's unique users in a moving 24 hours, and its peak."""

    __slots__ = ("last", "max_users", "order", "refused")

    def __init__(self) -> None:
        self.last: dict[str, float] = {}                  # user -> when last reached
        self.order: deque[tuple[float, str]] = deque()    # (when, user), oldest first
        self.max_users = 0
        self.refused = 0

    def users(self, now: float) -> int:
        """Users reached in the 24 hours up to ``now``."""
        edge = now - WINDOW_24H
        order, last = self.order, self.last
        while order and order[0][0] <= edge:
            when, user = order.popleft()
            if last.get(user) == when:        # not reached again since
                del last[user]
        return len(last)

    def admit(self, user: str, now: float, limit: int | None) -> bool:
        """Count a business-initiated message to ``user``; False when the user is new and
        the portfolio already reached ``limit`` users (then nothing is counted)."""
        count = self.users(now)
        if user not in self.last:
            if limit is not None and count >= limit:
                self.refused += 1
                return False
            count += 1
            self.max_users = max(self.max_users, count)
        self.last[user] = now
        self.order.append((now, user))
        return True
