"""The connector's rate limiter and circuit breaker on their own (real asyncio time, small
buckets so the tests stay fast)."""

from __future__ import annotations

import asyncio
import time

import pytest
from structlog.testing import capture_logs

from daemon.errors import CircuitOpenError, TransientError
from daemon.moysklad.circuit import CircuitBreaker
from daemon.moysklad.ratelimit import RateLimiter


async def _one(limiter: RateLimiter, weight: int, hold_s: float, remaining: int | None) -> None:
    async with limiter.slot(weight) as permit:
        await asyncio.sleep(hold_s)
        headers = {} if remaining is None else {"X-RateLimit-Remaining": str(remaining)}
        await limiter.observe(permit, 200, headers, None)


async def test_bucket_paces_requests_at_the_refill_rate_after_the_burst() -> None:
    """With 10 units per 0.5 s and weight 2, 15 requests need ≥ (15 − 5) × 0.1 s."""
    limiter = RateLimiter(capacity=10, interval_s=0.5, max_in_flight=5)
    started = time.monotonic()
    for _ in range(15):
        await _one(limiter, 2, 0.0, None)
    elapsed = time.monotonic() - started
    assert 0.95 <= elapsed < 1.5


async def test_in_flight_gate_never_exceeds_the_limit_and_probes_first() -> None:
    """Until a response arrives only one request is out; then at most max_in_flight."""
    limiter = RateLimiter(capacity=100, interval_s=1.0, max_in_flight=3)
    peak = 0
    first_alone = None

    async def worker(index: int) -> None:
        nonlocal peak, first_alone
        async with limiter.slot(1) as permit:
            peak = max(peak, limiter.in_flight)
            if index == 0:
                first_alone = limiter.in_flight == 1
            await asyncio.sleep(0.05)
            await limiter.observe(permit, 200, {"X-RateLimit-Remaining": "90"}, None)

    await worker(0)
    await asyncio.gather(*(worker(i) for i in range(1, 10)))
    assert first_alone is True
    assert peak == 3


async def test_429_pauses_everyone_for_retry_after_milliseconds() -> None:
    """After a 429 with X-Lognex-Retry-After: 300 the next request waits ≥ 0.3 s."""
    limiter = RateLimiter(capacity=45, interval_s=3.0, max_in_flight=5)
    async with limiter.slot(1) as permit:
        pause = await limiter.observe(
            permit, 429, {"X-Lognex-Retry-After": "300", "X-RateLimit-Remaining": "0"}, 1049
        )
    assert pause == pytest.approx(0.3)
    started = time.monotonic()
    await _one(limiter, 1, 0.0, 10)
    assert time.monotonic() - started >= 0.29
    assert limiter.count_429 == 1


async def test_429_retry_after_read_as_milliseconds_not_seconds() -> None:
    """X-Lognex-Retry-After: 2 means 2 ms: the limiter must not wait two seconds."""
    limiter = RateLimiter(capacity=45, interval_s=3.0, max_in_flight=5)
    async with limiter.slot(1) as permit:
        await limiter.observe(permit, 429, {"X-Lognex-Retry-After": "2"}, 1049)
    started = time.monotonic()
    await _one(limiter, 1, 0.0, 10)
    assert time.monotonic() - started < 0.5


async def test_low_remaining_header_lowers_the_local_budget() -> None:
    """A server that reports 0 requests left makes the next request wait for a refill."""
    limiter = RateLimiter(capacity=10, interval_s=1.0, max_in_flight=5)
    await _one(limiter, 2, 0.0, 0)
    assert limiter.available() < 2
    started = time.monotonic()
    await _one(limiter, 2, 0.0, None)
    assert time.monotonic() - started >= 0.15


async def test_cancelled_waiter_releases_its_slot() -> None:
    """A caller cancelled while waiting for budget does not keep an in-flight slot."""
    limiter = RateLimiter(capacity=2, interval_s=10.0, max_in_flight=5)
    await _one(limiter, 2, 0.0, None)
    waiter = asyncio.create_task(_one(limiter, 2, 0.0, None))
    await asyncio.sleep(0.05)
    assert limiter.in_flight == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.in_flight == 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_circuit_opens_after_threshold_identical_failures_and_logs_it() -> None:
    """N identical failures within the window open it; calls then fail fast, logged once."""
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=3, window_s=60, open_s=30, clock=clock)
    with capture_logs() as logs:
        for _ in range(3):
            probe = breaker.before_call()
            breaker.record_failure("GET entity/product http 404 1021", probe)
    assert breaker.state == "open"
    assert [entry["event"] for entry in logs] == ["moysklad_circuit_opened"]
    with pytest.raises(CircuitOpenError) as raised:
        breaker.before_call()
    assert isinstance(raised.value, TransientError)
    health = breaker.health()
    assert health["circuit"] == "open"
    assert "3 identical failures" in health["circuit_reason"]
    assert health["circuit_until"]


def test_circuit_ignores_different_or_old_failures() -> None:
    """Failures with other signatures, or older than the window, do not add up."""
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=3, window_s=60, open_s=30, clock=clock)
    breaker.record_failure("GET a http 500", False)
    breaker.record_failure("GET b http 500", False)
    clock.now += 61
    breaker.record_failure("GET a http 500", False)
    breaker.record_failure("GET a http 500", False)
    assert breaker.state == "closed"
    breaker.record_failure("GET a http 500", False)
    assert breaker.state == "open"


def test_successes_in_between_do_not_hide_repeated_failures() -> None:
    """Identical failures interleaved with successes still open the circuit at the threshold."""
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=3, window_s=60, open_s=30, clock=clock)
    for _ in range(3):
        breaker.record_success(breaker.before_call())
        breaker.record_failure("POST entity/customerorder http 412 1021", breaker.before_call())
    assert breaker.state == "open"


def test_half_open_probe_success_closes_and_failure_reopens() -> None:
    """After open_s one probe is allowed; its success closes, its failure re-opens."""
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, window_s=60, open_s=30, clock=clock)
    breaker.record_failure("POST x http 412 3000", False)
    clock.now += 31
    assert breaker.state == "half_open"
    assert breaker.before_call() is True
    with pytest.raises(CircuitOpenError):
        breaker.before_call()
    breaker.record_failure("POST x http 412 3000", True)
    assert breaker.state == "open"
    clock.now += 31
    probe = breaker.before_call()
    breaker.record_success(probe)
    assert breaker.state == "closed"
    assert breaker.before_call() is False
