"""Rate limits: token buckets with bounded memory.

Each key (a queue id, a contact address, a client address) gets a bucket of
``burst`` tokens refilled at ``rate`` per second. The table of buckets is an
LRU capped at ``max_keys`` entries, so a flood of distinct keys costs bounded
memory (an evicted key simply starts again with a full bucket).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LogSampler", "RateLimiter"]


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

    def blocked(self, key: object, now: float) -> int:
        """Seconds until ``key`` has a whole token again (0: it has one now);
        takes nothing. For budgets spent only on failures: check before the
        work, :meth:`allow` after a failure."""
        b = self._buckets.get(key)
        if b is None:
            return 0
        tokens = min(float(self.burst), b.tokens + (now - b.stamp) * self.rate)
        if tokens >= 1.0:
            return 0
        return max(1, math.ceil((1.0 - tokens) / self.rate))


class LogSampler:
    """Refusal log lines, sampled so that a flood cannot fill the disk.

    Each key (route, status and code: a bounded set) gets its first
    ``per_interval`` lines in every ``interval`` seconds written; the others
    are only counted, and one summary line per key says how many were left
    out, written with the first line logged after the interval ends (and by
    :meth:`flush`, at shutdown).
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        per_interval: int,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1000,
    ) -> None:
        if per_interval < 0 or interval <= 0:
            raise ValueError("per_interval must be >= 0 and interval positive")
        self.logger = logger
        self.per_interval = per_interval
        self.interval = interval
        self.clock = clock
        self.max_keys = max_keys
        self._counts: dict[str, int] = {}
        self._end = clock() + interval

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        now = self.clock()
        if now >= self._end:
            self.flush(now)
        n = self._counts.get(key, 0) + 1
        if n == 1 and len(self._counts) >= self.max_keys:
            key = "other"
            n = self._counts.get(key, 0) + 1
        self._counts[key] = n
        if n <= self.per_interval:
            self.logger.log(level, msg, *args)

    def flush(self, now: float | None = None) -> None:
        """Write the summary lines of the interval and start a new one."""
        now = self.clock() if now is None else now
        for key, n in self._counts.items():
            if n > self.per_interval:
                self.logger.warning(
                    "%s: %d more like this not logged (at most %d lines per %g s)",
                    key,
                    n - self.per_interval,
                    self.per_interval,
                    self.interval,
                )
        self._counts.clear()
        self._end = now + self.interval
