"""The clocks the scheduler runs on: the real one's wakeable sleep and the fake's virtual time."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from daemon.scheduling.clock import Clock, FakeClock, SystemClock

START = datetime(2026, 11, 30, 6, tzinfo=UTC)


async def test_system_clock_sleep_ends_early_when_woken() -> None:
    """A long real sleep returns as soon as its wake event is set."""
    clock: Clock = SystemClock()
    wake = asyncio.Event()
    asyncio.get_running_loop().call_later(0.02, wake.set)
    began = time.monotonic()
    await clock.sleep(5.0, wake)
    assert time.monotonic() - began < 1.0
    assert clock.now().tzinfo is UTC


async def test_system_clock_sleep_times_out_without_a_wake() -> None:
    """Without a wake the real sleep lasts its time (monotonic), and is not cut short."""
    clock = SystemClock()
    began = clock.monotonic()
    await clock.sleep(0.05, asyncio.Event())
    assert clock.monotonic() - began >= 0.04


async def test_system_clock_sleep_passes_cancellation_through() -> None:
    """Cancelling a wakeable real sleep raises CancelledError, not a timeout."""
    task = asyncio.create_task(SystemClock().sleep(5.0, asyncio.Event()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_fake_clock_sleep_advances_to_the_horizon_and_parks() -> None:
    """Fake sleeps move both clocks, stop at the horizon, and continue when it moves."""
    clock = FakeClock(START)
    woke: list[datetime] = []

    async def sleeper() -> None:
        await clock.sleep(100)
        woke.append(clock.now())
        await clock.sleep(1000)

    task = asyncio.create_task(sleeper())
    await clock.run_for(40)
    assert (clock.monotonic(), clock.now(), woke) == (40.0, START + timedelta(seconds=40), [])
    await clock.run_for(70)
    assert woke == [START + timedelta(seconds=100)]
    assert clock.monotonic() == 110.0
    task.cancel()
    await asyncio.wait([task])


async def test_fake_clock_jump_moves_only_the_wall_clock() -> None:
    """A jump steps the wall clock either way and leaves the monotonic clock alone."""
    clock = FakeClock(START)
    clock.jump(-3600)
    assert (clock.now(), clock.monotonic()) == (START - timedelta(hours=1), 0.0)
    clock.advance(10)
    assert (clock.now(), clock.monotonic()) == (START - timedelta(seconds=3590), 10.0)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)


async def test_fake_clock_wake_ends_a_parked_sleep_when_time_resumes() -> None:
    """A wake set while parked ends the sleep at the next run_for, without advancing time."""
    clock = FakeClock(START)
    wake = asyncio.Event()
    sleeper = asyncio.create_task(clock.sleep(30, wake))
    await clock.run_for(10)
    wake.set()
    with pytest.raises(TimeoutError):
        await clock.run_for(100, real_timeout=0.05)  # nobody parks: the sleeper returned
    assert sleeper.done()
    assert clock.now() == START + timedelta(seconds=10)


def test_fake_clock_needs_an_aware_start() -> None:
    """A naive start time is refused: the wall clock is UTC."""
    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock(datetime(2026, 11, 30))
