"""Time as the scheduler sees it: a wall clock that may jump, a monotonic one that never does.

``SystemClock`` is the real thing. ``FakeClock`` is virtual time for tests: its ``sleep``
advances time instead of waiting, up to a horizon the test moves with ``run_for`` /
``run_until``, so a test can drive days of schedule in milliseconds and stay deterministic.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """What the scheduler needs to know about time."""

    def now(self) -> datetime:
        """Wall-clock time, timezone-aware UTC. It may jump (NTP, an operator, a suspend)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps; only differences are meaningful."""
        ...

    async def sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Wait ``seconds`` of monotonic time, or less if ``wake`` is (or becomes) set."""
        ...


class SystemClock:
    """The machine's clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        seconds = max(0.0, seconds)
        if wake is None:
            await asyncio.sleep(seconds)
            return
        # asyncio.timeout raises TimeoutError only for its own deadline; an outside
        # cancellation still arrives here as CancelledError and propagates.
        try:
            async with asyncio.timeout(seconds):
                await wake.wait()
        except TimeoutError:
            return


class FakeClock:
    """Virtual time for tests.

    Time moves only when something sleeps, and never past the horizon: a sleep that would cross
    it advances to the horizon and parks there until the test calls ``run_for``/``run_until``,
    which move the horizon and return once a sleeper has parked again (i.e. the code under test
    has caught up and is waiting). The horizon starts at the start time, so nothing moves until
    the test says so. ``jump`` moves the wall clock alone, as an operator or NTP step would.

    A ``wake`` event given to ``sleep`` is honoured when the sleep starts or resumes, not while
    parked, so what the code under test sees depends only on what the test did, in order.
    """

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start time")
        self._wall = start.astimezone(UTC)
        self._mono = 0.0
        self._horizon = 0.0
        self._parked = asyncio.Event()
        self._resume = asyncio.Event()
        #: every requested sleep, in seconds, for tests that check the chunking
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def _move(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += timedelta(seconds=seconds)

    def advance(self, seconds: float) -> None:
        """Move both clocks forward (time passing while nothing sleeps)."""
        if seconds < 0:
            raise ValueError("time does not run backwards; use jump() for the wall clock")
        self._move(seconds)
        self._horizon = max(self._horizon, self._mono)

    def jump(self, seconds: float) -> None:
        """Step the wall clock alone, forward or backward; the monotonic clock is untouched."""
        self._wall += timedelta(seconds=seconds)

    async def sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        seconds = max(0.0, seconds)
        self.sleeps.append(seconds)
        target = self._mono + seconds
        while target > self._horizon:
            if wake is not None and wake.is_set():
                return
            self._move(self._horizon - self._mono)
            resume = self._resume
            self._parked.set()
            await resume.wait()
        if wake is not None and wake.is_set():
            return
        self._move(target - self._mono)
        # A real sleep always yields to the event loop; so does this one.
        await asyncio.sleep(0)

    async def run_for(self, seconds: float, *, real_timeout: float = 10.0) -> None:
        """Let sleepers advance up to ``seconds`` from now; return when one parks again.

        ``real_timeout`` (seconds of real time) turns a sleeper that never comes back, such as a
        crashed task, into a ``TimeoutError`` instead of a hung test.
        """
        self._horizon = max(self._horizon, self._mono + max(0.0, seconds))
        self._parked.clear()
        resume, self._resume = self._resume, asyncio.Event()
        resume.set()
        async with asyncio.timeout(real_timeout):
            await self._parked.wait()

    async def run_until(self, when: datetime, *, real_timeout: float = 10.0) -> None:
        """``run_for`` up to wall-clock time ``when``."""
        await self.run_for((when - self._wall).total_seconds(), real_timeout=real_timeout)
