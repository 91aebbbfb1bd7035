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
  request is let out at a time, so a drained budget costs one 429, not one per waiting caller;
- an ordinary request is debited at the *pace*: the configured ``request_weight`` is its floor,
  the weight learned from the answers (``weight.py``) raises it, a 429/1049 multiplies it by
  ``SLOW_DOWN`` at once, and it creeps back towards the learned weight while answers show the
  server has room;
- 429s are waited out, but never more than ``max_429_per_minute`` of them in a minute: the
  provider cuts the API off after 200.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog

from daemon.moysklad.weight import Estimate, WeightEstimator, reading

log = structlog.get_logger(__name__)

RETRY_AFTER = "X-Lognex-Retry-After"
RESET = "X-Lognex-Reset"
REMAINING = "X-RateLimit-Remaining"
LIMIT = "X-RateLimit-Limit"

# The server gives no hint for how long a 1073 (too many parallel requests) lasts.
PARALLEL_LIMIT_PAUSE_S = 0.5
# A 429/1049 means the pace was too fast: slow down at once by this factor (multiplicative
# decrease), then win back RECOVERY of the excess over the learned weight per answer with room.
SLOW_DOWN = 1.5
RECOVERY = 0.1
# Half the provider's cut-off (200 429s a minute switch the user's API access off).
MAX_429_PER_MINUTE = 100
# The observed weight is reported once the estimate rests on this many requests.
REPORT_AFTER_REQUESTS = 12


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

    weight: float  # units debited locally
    sent_seq: int
    in_flight_before: int
    sent_at: float = 0.0
    learnable: bool = False  # an ordinary request: its answer teaches the weight
    answered: bool = False


class RateLimiter:
    """Token bucket (``capacity`` units per ``interval_s``) and an in-flight gate."""

    def __init__(
        self,
        *,
        capacity: int,
        interval_s: float,
        max_in_flight: int,
        request_weight: int = 1,
        max_429_per_minute: int = MAX_429_PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._capacity = float(capacity)
        self._rate = capacity / interval_s  # units per second
        self.configured_weight = request_weight
        self._target = float(request_weight)  # max(configured, learned)
        self._pace = float(request_weight)  # what an ordinary request is debited
        self._estimator = WeightEstimator(capacity=self._capacity, rate=self._rate)
        self.estimate: Estimate | None = None
        self.observed_weight: int | None = None
        self._reported: set[int] = set()
        self._max_429_per_minute = max_429_per_minute
        self._recent_429: deque[float] = deque()
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

    def remaining_requests(self, weight: float | None = None) -> int:
        """Requests of ``weight`` units (default: the current pace) the local budget allows."""
        return max(0, math.floor(self.available() / (weight or self._pace)))

    @property
    def pace(self) -> float:
        """Units an ordinary request is debited now."""
        return self._pace

    def weight_note(self) -> str:
        """ "configured weight 1, МойСклад charges 4" when they differ, else ""."""
        observed = self.observed_weight
        if observed is None or observed == self.configured_weight:
            return ""
        return f"configured weight {self.configured_weight}, МойСклад charges {observed}"

    # -- admission ---------------------------------------------------------------------------

    @asynccontextmanager
    async def slot(self, weight: int) -> AsyncIterator[Permit]:
        """Wait for a free in-flight slot and the units, then hold the slot. A request of the
        configured ``request_weight`` is debited at the pace; any other (the heavy reports)
        at its own ``weight``."""
        async with self._gate:
            await self._gate.wait_for(self._may_enter)
            self._in_flight += 1
        permit: Permit | None = None
        learnable = weight == self.configured_weight
        try:
            debit = await self._take(None if learnable else float(weight))
            self._sent_seq += 1
            permit = Permit(debit, self._sent_seq, self._in_flight - 1, self._clock(), learnable)
            yield permit
        finally:
            if permit is not None and not permit.answered:
                # The server may or may not have charged it: the window no longer adds up.
                self._estimator.reset()
            async with self._gate:
                self._in_flight -= 1
                self._gate.notify_all()

    def _may_enter(self) -> bool:
        limit = 1 if self._probing else self._max_in_flight
        return self._in_flight < limit

    async def _take(self, fixed: float | None) -> float:
        # The lock makes waiters queue in arrival order, so pacing is fair and nobody starves.
        async with self._bucket_lock:
            for _ in range(10_000):
                weight = self._pace if fixed is None else fixed
                now = self._refill()
                wait = self._paused_until - now
                if wait <= 0 and self._tokens >= weight:
                    self._tokens -= weight
                    return weight
                wait = max(wait, (weight - self._tokens) / self._rate, 0.001)
                await asyncio.sleep(wait)
            raise RuntimeError("rate limiter could not admit a request")  # pragma: no cover

    # -- feedback ----------------------------------------------------------------------------

    async def observe(
        self, permit: Permit, status: int, headers: Mapping[str, str], code: int | None
    ) -> float:
        """Learn from a response; returns how long the caller should wait before retrying."""
        now = self._refill()
        permit.answered = True
        remaining = header_int(headers, REMAINING)
        limit = header_int(headers, LIMIT)
        if remaining is not None:
            self.server_remaining = remaining
        if status == 429:
            return await self._throttled(now, permit, headers, code)
        if remaining is not None:
            seen_since = (self._sent_seq - permit.sent_seq) + permit.in_flight_before
            bound = remaining * self._step_low(limit, permit) - seen_since * self._pace
            if bound < self._tokens:
                self._tokens = float(bound)
            elif bound >= self._tokens + self._pace:
                self._recover()
        if permit.learnable and remaining is not None and limit:
            estimate = self._estimator.add(
                reading(
                    sent_at=permit.sent_at,
                    arrived_at=now,
                    sent=self._sent_seq,
                    remaining=remaining,
                    limit=limit,
                    capacity=self._capacity,
                )
            )
            if estimate is not None:
                self._learn(estimate)
        elif not permit.learnable:
            self._estimator.reset()
        await self._set_probing(False)
        return 0.0

    def _step_low(self, limit: int | None, permit: Permit) -> float:
        """Units one step of ``Remaining`` stands for, at the low end (see ``weight.py``)."""
        if not limit or limit <= 0:
            return permit.weight  # no Limit header: read Remaining as requests of ours
        low, high = self._capacity / (limit + 1), self._capacity / limit
        return min(max(permit.weight, low), high)

    async def _throttled(
        self, now: float, permit: Permit, headers: Mapping[str, str], code: int | None
    ) -> float:
        self.count_429 += 1
        self._estimator.reset()
        if code == 1073:
            pause_s = PARALLEL_LIMIT_PAUSE_S
        else:
            pause_ms = header_int(headers, RETRY_AFTER) or header_int(headers, RESET)
            pause_s = (pause_ms if pause_ms else self._capacity / self._rate * 1000) / 1000
            if permit.learnable:
                self._pace = min(self._capacity, max(self._pace, self._target) * SLOW_DOWN)
        recent = self._recent_429
        recent.append(now)
        while recent and recent[0] <= now - 60:
            recent.popleft()
        if len(recent) >= self._max_429_per_minute:
            # Waiting out every 429 must not add up to the provider's cut-off.
            pause_s = max(pause_s, recent[0] + 60 - now)
        self._paused_until = max(self._paused_until, now + pause_s)
        # When the pause ends exactly one request of this weight is affordable; the next
        # ones follow at the refill rate instead of bursting into another 429.
        self._tokens = min(self._tokens, permit.weight - pause_s * self._rate)
        await self._set_probing(True)
        log.warning(
            "moysklad_rate_limited",
            code=code,
            pause_ms=round(pause_s * 1000),
            status=429,
            pace=round(self._pace, 2),
        )
        return pause_s

    def _recover(self) -> None:
        """The server has room: win back part of the slow-down, never below the target."""
        excess = self._pace - self._target
        if excess > 0:
            self._pace = self._target if excess < 0.05 else self._target + excess * (1 - RECOVERY)

    def _learn(self, estimate: Estimate) -> None:
        self.estimate = estimate
        configured = self.configured_weight
        # Leave the configured weight only when even the low end of the estimate is above it.
        self._target = estimate.weight if estimate.low > configured else float(configured)
        if self._pace < self._target:
            self._pace = self._target
        if estimate.requests < REPORT_AFTER_REQUESTS:
            return
        observed = max(1, round(estimate.weight))
        self.observed_weight = observed
        if observed != configured and observed not in self._reported:
            self._reported.add(observed)
            log.warning(
                "moysklad_weight_differs",
                configured=configured,
                observed=observed,
                estimate=round(estimate.weight, 2),
                requests=estimate.requests,
            )

    async def _set_probing(self, probing: bool) -> None:
        if self._probing == probing:
            return
        async with self._gate:
            self._probing = probing
            self._gate.notify_all()
