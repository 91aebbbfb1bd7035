"""``Slots``: at most N requests in flight, the waiting ones let in by priority.

``asyncio.Semaphore`` lets waiters in first come, first served, so the nineteen follow-up pages
of one read, asked for together, hold up a count another read needs before it can ask for
anything. Here the lowest priority number goes first, and among equals the first to ask.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Slots:
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("Slots needs at least one slot")
        self._free = size
        # (priority, arrival, waiter); a cancelled waiter stays until it comes up, then is
        # passed over.
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot (tests look at it)."""
        return sum(1 for _, _, waiter in self._waiting if not waiter.done())

    @asynccontextmanager
    async def held(self, priority: int = 0) -> AsyncIterator[None]:
        """One slot for the body of the ``async with``; lower ``priority`` numbers first."""
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        # A free slot means nobody is waiting: a released slot goes to a waiter first.
        if self._free > 0:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrivals), waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot just as it was cancelled: pass it on
            raise

    def _release(self) -> None:
        while self._waiting:
            waiter = heapq.heappop(self._waiting)[2]
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
