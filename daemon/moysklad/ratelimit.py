"""Client-side pacing for МойСклад: a weight-aware token bucket plus an in-flight gate.

The provider debits each request's weight from a 45-unit bucket that refills over 3 s, allows
at most 5 requests in flight per user, and switches API access off for a user who collects more
than 200 429s a minute. So the limiter keeps its own bucket *below* the server's:

- it debits locally right before a request is sent, i.e. no later than the server does, so with
  equal refill rates the local estimate never exceeds the server's budget;
- each response's ``X-RateLimit-Remaining`` lowers the local estimate when the server knows of
  consumption we did not cause (another process with the same user), counting every request
  of ours the server may have seen since as already spent;
- a 429 pauses everybody for the ``X-Lognex-Retry-After`` milliseconds and leaves the bucket so
  that exactly one request's weight is available when the pause ends;
- until the first response has told us the server's state (and again after every 429), only one
  request is let out at a time, so a drained budget costs one 429, not one per waiting caller.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

RETRY_AFTER = "X-Lognex-Retry-After"
RESET = "X-Lognex-Reset"
REMAINING = "X-RateLimit-Remaining"

# The server gives no hint for how long a 1073 (too many parallel requests) lasts.
PARALLEL_LIMIT_PAUSE_S = 0.5


def header_int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value.strip()))
    except ValueError:
        return None


@dataclass
class Permit:
    """One admitted request; the caller reports the response through ``observe``."""

    weight: int
    sent_seq: int
    in_flight_before: int


class RateLimiter:
    """Token bucket (``capacity`` units per ``interval_s``) and an in-flight gate."""

    def __init__(
        self,
        *,
        capacity: int,
        interval_s: float,
        max_in_flight: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._capacity = float(capacity)
        self._rate = capacity / interval_s  # units per second
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._tokens = float(capacity)
        self._stamp = clock()
        self._paused_until = 0.0
        self._probing = True
        self._in_flight = 0
        self._sent_seq = 0
        self._gate = asyncio.Condition()
        self._bucket_lock = asyncio.Lock()
        self.server_remaining: int | None = None
        self.count_429 = 0

    # -- state -------------------------------------------------------------------------------

    def _refill(self) -> float:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        return now

    def available(self) -> float:
        """Units the local estimate says may be spent now (negative while paused)."""
        self._refill()
        return self._tokens

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def paused_for_s(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    def remaining_requests(self, weight: int) -> int:
        return max(0, math.floor(self.available() / weight))

    # -- admission ---------------------------------------------------------------------------

    @asynccontextmanager
    async def slot(self, weight: int) -> AsyncIterator[Permit]:
        """Wait for a free in-flight slot and ``weight`` units, then hold the slot."""
        async with self._gate:
            await self._gate.wait_for(self._may_enter)
            self._in_flight += 1
        try:
            await self._take(weight)
            self._sent_seq += 1
            yield Permit(weight, self._sent_seq, self._in_flight - 1)
        finally:
            async with self._gate:
                self._in_flight -= 1
                self._gate.notify_all()

    def _may_enter(self) -> bool:
        limit = 1 if self._probing else self._max_in_flight
        return self._in_flight < limit

    async def _take(self, weight: int) -> None:
        # The lock makes waiters queue in arrival order, so pacing is fair and nobody starves.
        async with self._bucket_lock:
            for _ in range(10_000):
                now = self._refill()
                wait = self._paused_until - now
                if wait <= 0 and self._tokens >= weight:
                    self._tokens -= weight
                    return
                wait = max(wait, (weight - self._tokens) / self._rate, 0.001)
                await asyncio.sleep(wait)
            raise RuntimeError("rate limiter could not admit a request")  # pragma: no cover

    # -- feedback ----------------------------------------------------------------------------

    async def observe(
        self, permit: Permit, status: int, headers: Mapping[str, str], code: int | None
    ) -> float:
        """Learn from a response; returns how long the caller should wait before retrying."""
        now = self._refill()
        remaining = header_int(headers, REMAINING)
        if remaining is not None:
            self.server_remaining = remaining
        if status == 429:
            self.count_429 += 1
            if code == 1073:
                pause_s = PARALLEL_LIMIT_PAUSE_S
            else:
                pause_ms = header_int(headers, RETRY_AFTER) or header_int(headers, RESET)
                pause_s = (pause_ms if pause_ms else self._capacity / self._rate * 1000) / 1000
            self._paused_until = max(self._paused_until, now + pause_s)
            # When the pause ends exactly one request of this weight is affordable; the next
            # ones follow at the refill rate instead of bursting into another 429.
            self._tokens = min(self._tokens, permit.weight - pause_s * self._rate)
            await self._set_probing(True)
            log.warning(
                "moysklad_rate_limited", code=code, pause_ms=round(pause_s * 1000), status=status
            )
            return pause_s
        if remaining is not None:
            seen_since = (self._sent_seq - permit.sent_seq) + permit.in_flight_before
            bound = (remaining - seen_since) * permit.weight
            if bound < self._tokens:
                self._tokens = float(bound)
        await self._set_probing(False)
        return 0.0

    async def _set_probing(self, probing: bool) -> None:
        if self._probing == probing:
            return
        async with self._gate:
            self._probing = probing
            self._gate.notify_all()
