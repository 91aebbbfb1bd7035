"""Rate limits the МойСклад emulator enforces per user (and per account for parallelism).

- A bucket of ``capacity`` units over ``interval_ms``; each request debits its weight. It refills
  smoothly by default ("равномерно" in the docs); ``mode="window"`` switches to fixed windows,
  since which of the two the provider uses is not documented.
- Every answer carries the five rate headers (milliseconds). ``X-RateLimit-Limit`` and
  ``-Remaining`` count requests at the weight of the request (``counts="requests"``, what the
  reference claims, unverified) or bucket units (``counts="units"``): the hub must cope with
  both. When exhausted: 429/1049 with ``X-Lognex-Retry-After`` > 0.
- More than 5 requests in flight per user, or 20 per account: 429/1073 (not in the headers).
- More than ``ban_after`` 429s, or identical failing requests, within a minute: the user's API
  access is switched off for the rest of the run, as the provider does.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

BucketMode = Literal["smooth", "window"]
HeaderCounts = Literal["requests", "units"]


class Bucket:
    def __init__(
        self,
        *,
        capacity: int,
        interval_ms: int,
        mode: BucketMode,
        clock: Callable[[], float],
    ) -> None:
        self.capacity = float(capacity)
        self.interval_s = interval_ms / 1000
        self.mode = mode
        self._clock = clock
        self.tokens = float(capacity)
        self._stamp = clock()
        self._rate = capacity / self.interval_s

    def _refill(self) -> float:
        now = self._clock()
        if self.mode == "smooth":
            self.tokens = min(self.capacity, self.tokens + (now - self._stamp) * self._rate)
            self._stamp = now
        elif now - self._stamp >= self.interval_s:
            windows = math.floor((now - self._stamp) / self.interval_s)
            self._stamp += windows * self.interval_s
            self.tokens = self.capacity
        return now

    def drain(self) -> None:
        """Spend the whole budget, as another program using the same user would."""
        self._refill()
        self.tokens = 0.0

    def try_debit(self, weight: int) -> int:
        """Debit ``weight``; 0 on success, else the milliseconds until it would fit."""
        now = self._refill()
        if self.tokens >= weight:
            self.tokens -= weight
            return 0
        if self.mode == "smooth":
            wait = (weight - self.tokens) / self._rate
        else:
            wait = self._stamp + self.interval_s - now
        return max(1, math.ceil(wait * 1000))

    def full_in_ms(self) -> int:
        now = self._refill()
        if self.mode == "smooth":
            return math.ceil((self.capacity - self.tokens) / self._rate * 1000)
        return max(0, math.ceil((self._stamp + self.interval_s - now) * 1000))

    def headers(
        self, weight: int, retry_after_ms: int, counts: HeaderCounts = "requests"
    ) -> dict[str, str]:
        self._refill()
        per = weight if counts == "requests" else 1
        return {
            "X-RateLimit-Limit": str(int(self.capacity // per)),
            "X-RateLimit-Remaining": str(max(0, math.floor(self.tokens / per))),
            "X-Lognex-Retry-TimeInterval": str(round(self.interval_s * 1000)),
            "X-Lognex-Reset": str(self.full_in_ms() if retry_after_ms else 0),
            "X-Lognex-Retry-After": str(retry_after_ms),
        }


class UserLimits:
    """The bucket, in-flight count and cut-off bookkeeping of one user."""

    def __init__(
        self,
        *,
        capacity: int,
        interval_ms: int,
        mode: BucketMode,
        ban_after: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bucket = Bucket(capacity=capacity, interval_ms=interval_ms, mode=mode, clock=clock)
        self.in_flight = 0
        self.banned = False
        self._ban_after = ban_after
        self._clock = clock
        self._recent_429: deque[float] = deque()
        self._failures: dict[str, deque[float]] = {}

    def _count(self, window: deque[float]) -> int:
        now = self._clock()
        window.append(now)
        while window and window[0] < now - 60:
            window.popleft()
        return len(window)

    def note_429(self) -> None:
        if self._count(self._recent_429) > self._ban_after:
            self.banned = True

    def note_failure(self, signature: str) -> None:
        window = self._failures.setdefault(signature, deque())
        if self._count(window) > self._ban_after:
            self.banned = True
