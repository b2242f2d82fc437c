"""Rate limiting per API key (the limits library): a sliding window counter, 429 with Retry-After.

A sliding window counter keeps two counters per key, so a hit costs the same at 600/minute as
at 600,000/minute (a moving window keeps every hit's timestamp and slows down as limits grow).

The default storage is this process's memory, so each API process enforces the limit on its
own; give ``UNBLOCK_RATE_LIMIT_STORAGE`` a shared store (``redis://...``) for one limit across
processes.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse, storage, strategies


class RateLimiter:
    def __init__(self, spec: str, storage_uri: str = "memory://") -> None:
        self.item: RateLimitItem = parse(spec)
        self._strategy = strategies.SlidingWindowCounterRateLimiter(storage.storage_from_string(storage_uri))

    def exceeded(self, key: str) -> float | None:
        """Without counting: None while ``key`` is under the limit, else the seconds until it is again."""
        if self._strategy.test(self.item, key):
            return None
        reset = self._strategy.get_window_stats(self.item, key).reset_time
        return float(max(1, math.ceil(reset - time.time())))

    def record(self, key: str) -> None:
        self._strategy.hit(self.item, key)

    def hit(self, key: str) -> float | None:
        """None when allowed; otherwise the seconds until the next request would be."""
        if self._strategy.hit(self.item, key):
            return None
        reset = self._strategy.get_window_stats(self.item, key).reset_time
        return float(max(1, math.ceil(reset - time.time())))
