"""The API's rate limits: a token bucket per action and identifier.

DOCS: "1 request, per second, per action … burst up to 3 req/s, per action", scoped per
identifier, with Get Machine at 5 req/s burst 10. The bucket key is (method, path), so
listing the snapshots of two volumes draws on two buckets, while a client that polls one
path in a loop gets 429s, as it would in production.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from volguard.sim.scenario import Limits

_GET_MACHINE = re.compile(r"/v1/apps/[^/]+/machines/[^/]+")


@dataclass
class _Bucket:
    rate: float
    capacity: float
    tokens: float
    stamp: float

    def take(self, now: float) -> float:
        """Take one token; 0 when granted, else seconds until one is there."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    def __init__(self, limits: Limits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def acquire(self, method: str, path: str) -> int | None:
        """None when the request may go ahead, else the Retry-After in whole seconds (>= 1)."""
        rate, burst = self._limit_for(method, path)
        if rate <= 0:
            return None
        with self._lock:
            now = self._clock()
            bucket = self._buckets.setdefault(
                (method, path), _Bucket(rate, burst, float(burst), now)
            )
            wait = bucket.take(now)
        return None if wait == 0 else max(1, math.ceil(wait))

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()

    def _limit_for(self, method: str, path: str) -> tuple[float, int]:
        if method == "GET" and _GET_MACHINE.fullmatch(path):
            return self.limits.get_machine_rate, self.limits.get_machine_burst
        return self.limits.rate_per_second, self.limits.burst
