"""Rate limits: token buckets with bounded memory.

Each key (a queue id, a contact address, a client address) gets a bucket of
``burst`` tokens refilled at ``rate`` per second. The table of buckets is an
LRU capped at ``max_keys`` entries, so a flood of distinct keys costs bounded
memory (an evicted key simply starts again with a full bucket).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["RateLimiter"]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """``allow(key, now)`` returns 0 when allowed, else seconds to wait."""

    def __init__(self, *, rate: float, burst: int, max_keys: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[object, _Bucket] = OrderedDict()

    def allow(self, key: object, now: float, cost: float = 1.0) -> int:
        """Take ``cost`` tokens if available; else return Retry-After seconds."""
        b = self._buckets.get(key)
        if b is None:
            b = _Bucket(tokens=float(self.burst), stamp=now)
            self._buckets[key] = b
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            b.tokens = min(float(self.burst), b.tokens + (now - b.stamp) * self.rate)
            b.stamp = now
        if b.tokens >= cost:
            b.tokens -= cost
            return 0
        return max(1, math.ceil((cost - b.tokens) / self.rate))
