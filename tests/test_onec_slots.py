"""The 1C connector's request slots: a bound on requests in flight that lets waiters in by
priority, and the transport's use of it (a count never waits behind another read's pages)."""

from __future__ import annotations

import asyncio
from urllib.parse import unquote

import pytest

from daemon.onec.slots import Slots
from daemon.sandbox.dataset import build_demo_dataset
from daemon.sandbox.onec_emulator import OneCSandbox
from tests.onec_support import connected


async def test_waiters_go_in_by_priority_then_in_order_of_arrival() -> None:
    """With every slot busy, the lowest priority number goes next; equals keep their order."""
    slots = Slots(1)
    order: list[str] = []

    async def take(name: str, priority: int) -> None:
        async with slots.held(priority):
            order.append(name)

    async with slots.held():
        tasks = [
            asyncio.create_task(take(name, priority))
            for name, priority in (("bulk", 2), ("count", 0), ("page", 1), ("lookup", 0))
        ]
        await asyncio.sleep(0)
        assert slots.waiting == 4 and not order
    await asyncio.gather(*tasks)
    assert order == ["count", "lookup", "page", "bulk"]


async def test_at_most_size_hold_a_slot() -> None:
    """However many ask at once, no more than the slots hold one together."""
    slots = Slots(3)
    holding = most = 0

    async def work(priority: int) -> None:
        nonlocal holding, most
        async with slots.held(priority):
            holding += 1
            most = max(most, holding)
            await asyncio.sleep(0.001)
            holding -= 1

    await asyncio.gather(*(work(n % 3) for n in range(20)))
    assert most == 3 and slots.waiting == 0


async def test_a_cancelled_waiter_loses_no_slot() -> None:
    """A waiter cancelled while waiting, or just as it was let in, leaves the slot to others."""
    slots = Slots(1)
    async with slots.held():
        gone = asyncio.create_task(slots.held().__aenter__())
        await asyncio.sleep(0)
        gone.cancel()
        handed = asyncio.create_task(slots.held(1).__aenter__())
        await asyncio.sleep(0)
    # The slot was just handed to ``handed``, which is cancelled before it could run.
    handed.cancel()
    for task in (gone, handed):
        with pytest.raises(asyncio.CancelledError):
            await task
    # Both slots' worth are free again: one can be taken without waiting.
    async with asyncio.timeout(1):
        async with slots.held():
            assert slots.waiting == 0


async def test_a_count_does_not_wait_behind_another_reads_pages() -> None:
    """One request at a time: the norms' count and pages go before the items' later pages."""
    dataset = build_demo_dataset(120, seed=5)
    box = OneCSandbox(dataset)
    async with connected(box, page_size=10, max_concurrency=1) as onec:
        found = await onec.resolve_warehouses(["Магазин Центральный"])
        box.reset_counters()
        await asyncio.gather(onec.read_items(), onec.read_norms([found["Магазин Центральный"].key]))
    sent = [unquote(r) for r in box.raw_requests]
    norms = [n for n, r in enumerate(sent) if "ТоварныеОграничения" in r]
    later_items = [n for n, r in enumerate(sent) if "Номенклатура?" in r and "$skip=0" not in r]
    assert len(later_items) > 5 and len(norms) > 3
    assert max(norms) < min(later_items)
