"""The outbox processor delivering through the real connectors to the sandbox emulators."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from daemon.config import OutboxSection
from daemon.model import (
    CustomerOrderDocument,
    TransferLine,
    TransferOrderDocument,
    deterministic_uuid,
)
from daemon.onec.connector import OneCConnector
from daemon.onec.settings import OneCSettings
from daemon.outbox.processor import OutboxProcessor
from daemon.sandbox.dataset import DemoDataset, build_demo_dataset
from daemon.sandbox.moysklad_emulator import MoySkladSandbox
from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox
from daemon.store import Database, open_database
from daemon.store.outbox import depth_by_state, enqueue, get_entry, run_delivery_state
from tests.test_moysklad_support import PRODUCTS, order_doc
from tests.test_moysklad_support import connected as moysklad_connected

T0 = 1_800_000_000.0
TARGET, DONOR = "Магазин Центральный", "Бестужевых"


class Clock:
    """The outbox's wall clock, moved by hand so backoff needs no sleeping."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Hub:
    db: Database
    box: OneCSandbox
    sandbox: MoySkladSandbox
    processor: OutboxProcessor
    clock: Clock

    async def put(self, *docs: TransferOrderDocument | CustomerOrderDocument) -> list[int]:
        async with self.db.transaction() as conn:
            return await enqueue(conn, "run-1", docs, self.clock.now)

    async def drain_until_settled(self, limit: int = 12) -> int:
        """Drain, jumping the clock past each backoff, until nothing waits; returns passes."""
        for passes in range(1, limit + 1):
            await self.processor.drain_once()
            depth = await depth_by_state(self.db)
            if depth["pending"] + depth["retry_wait"] + depth["outcome_unknown"] == 0:
                return passes
            self.clock.now += 3600
        raise AssertionError(f"still not settled after {limit} passes: {depth}")


@asynccontextmanager
async def hub(
    db: Database,
    dataset: DemoDataset,
    *,
    onec: dict[str, Any] | None = None,
    moysklad: dict[str, Any] | None = None,
) -> AsyncIterator[Hub]:
    box = OneCSandbox(dataset)
    sandbox = MoySkladSandbox(PRODUCTS, weight=1)
    async with (
        run_onec_sandbox(box) as onec_url,
        moysklad_connected(sandbox, **(moysklad or {})) as ms_connector,
    ):
        options: dict[str, Any] = {"retry_base_s": 0.01, "retry_cap_s": 0.02, **(onec or {})}
        settings = OneCSettings.model_validate({"base_url": onec_url, "username": "hub", **options})
        async with OneCConnector(settings, SecretStr("sandbox")) as onec_connector:
            clock = Clock()
            processor = OutboxProcessor(
                db,
                OutboxSection(retry_base_s=5, retry_cap_s=60, max_attempts=30),
                onec_connector,
                ms_connector,
                clock=clock,
                worker_id="hubd-test",
            )
            yield Hub(db, box, sandbox, processor, clock)


@pytest.fixture(scope="module")
def dataset() -> DemoDataset:
    return build_demo_dataset(48, seed=9)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(tmp_path / "hub.db")
    async with database.transaction() as conn:
        await conn.execute(
            "INSERT INTO runs (id, job, trigger, status, started_at) "
            "VALUES ('run-1', 'replenishment', 'manual', 'succeeded', ?)",
            (T0,),
        )
    try:
        yield database
    finally:
        await database.close()


def transfer(
    dataset: DemoDataset, key: str = "run-1/Бестужевых", sender: str = DONOR
) -> TransferOrderDocument:
    items = [item for item in dataset.items if not item.is_folder][:3]
    return TransferOrderDocument(
        idempotency_key=key,
        ref_key=deterministic_uuid(key),
        run_id="run-1",
        sender_key=dataset.warehouse_key(sender),
        sender_name=sender,
        receiver_key=dataset.warehouse_key(TARGET),
        receiver_name=TARGET,
        date=datetime(2026, 3, 10, 9, 0),
        desired_arrival=datetime(2026, 3, 12, 0, 0),
        comment=f"bisnesmedia-hub key={key} run=run-1",
        lines=tuple(
            TransferLine(item_key=item.key, quantity=Decimal(n + 1), packages=Decimal(n + 1))
            for n, item in enumerate(items)
        ),
    )


def customer_order(sandbox: MoySkladSandbox, key: str = "run-1/order") -> CustomerOrderDocument:
    bolt = sandbox.entity_id("product", "Болт М8")
    nut = sandbox.entity_id("product", "Гайка М8")
    return order_doc(key, [(bolt, 4), (nut, 10)])


async def test_a_run_is_delivered_once_to_both_systems(db: Database, dataset: DemoDataset) -> None:
    """A transfer order is created and posted in 1C and an order created in МойСклад, once."""
    async with hub(db, dataset) as h:
        doc, order = transfer(dataset), customer_order(h.sandbox)
        onec_id, ms_id = await h.put(doc, order)
        assert await h.processor.drain_once() == 2
        assert await h.processor.drain_once() == 0
        [stored] = h.box.transfer_orders()
        [created] = h.sandbox.orders()
    assert stored["Ref_Key"] == doc.ref_key and stored["Posted"] is True
    onec_row, ms_row = await get_entry(h.db, onec_id), await get_entry(h.db, ms_id)
    assert (onec_row.external_id, onec_row.external_number) == (doc.ref_key, stored["Number"])
    assert (ms_row.external_id, ms_row.external_number) == (created["id"], created["name"])
    assert created["syncId"] == order.sync_id
    assert (await run_delivery_state(h.db, "run-1")).delivered


async def test_1c_500_502_and_timeouts_are_retried_into_exactly_one_posted_order(
    db: Database, dataset: DemoDataset
) -> None:
    """Through 500s, 502s and hangs the row keeps retrying; one posted order results."""
    async with hub(db, dataset, onec={"request_timeout_s": 0.15}) as h:
        (row_id,) = await h.put(transfer(dataset))
        h.box.fault_rate, h.box.hang_s, h.box.seed = 1.0, 0.3, 5
        for _ in range(4):
            await h.processor.drain_once()
            h.clock.now += 3600
        failing = await get_entry(h.db, row_id)
        assert failing.state in ("retry_wait", "outcome_unknown") and failing.attempts == 4
        h.box.fault_rate = 0.0
        await h.drain_until_settled()
        faults = {kind for kind in h.box.requests_by_kind if kind.startswith("fault_")}
        orders = h.box.transfer_orders()
    assert faults == {"fault_500", "fault_502", "fault_timeout"}
    assert len(orders) == 1 and orders[0]["Posted"] is True
    entry = await get_entry(h.db, row_id)
    assert entry.state == "delivered" and entry.attempts == 5


async def test_moysklad_5xx_and_timeouts_are_retried_into_exactly_one_order(
    db: Database, dataset: DemoDataset
) -> None:
    """МойСклад 5xx answers and timeouts are retried by the outbox; one order results."""
    async with hub(db, dataset, moysklad={"request_timeout_s": 0.2, "read_retries": 0}) as h:
        (row_id,) = await h.put(customer_order(h.sandbox))
        h.sandbox.fault_rate = 1.0
        await h.processor.drain_once()
        h.clock.now += 3600
        h.sandbox.fault_rate, h.sandbox.latency_s = 0.0, 0.5
        await h.processor.drain_once()
        failing = await get_entry(h.db, row_id)
        assert failing.state in ("retry_wait", "outcome_unknown") and failing.attempts == 2
        h.sandbox.latency_s = 0.0
        h.clock.now += 3600
        await h.drain_until_settled()
        orders = h.sandbox.orders()
    assert h.sandbox.faults_injected >= 1
    assert len(orders) == 1
    assert (await get_entry(h.db, row_id)).external_id == orders[0]["id"]


async def test_moysklad_429_is_absorbed_by_the_connector_without_retries_or_dead_letters(
    db: Database, dataset: DemoDataset
) -> None:
    """With the rate budget drained elsewhere, every order still goes through on attempt one."""
    async with hub(db, dataset) as h:
        ids = await h.put(*(customer_order(h.sandbox, f"run-1/order/{n}") for n in range(4)))
        h.sandbox.exhaust_budget()
        assert await h.processor.drain_once() == 4
        count_429 = h.sandbox.count_429
        orders = h.sandbox.orders()
    assert count_429 >= 1
    assert len(orders) == 4
    for row_id in ids:
        entry = await get_entry(h.db, row_id)
        assert (entry.state, entry.attempts) == ("delivered", 1)
    assert (await depth_by_state(h.db))["dead"] == 0


async def test_commit_then_drop_on_both_systems_gives_exactly_one_document_each(
    db: Database, dataset: DemoDataset
) -> None:
    """Answers lost after the commit: the next attempt looks up and finds, never re-creates."""
    async with hub(db, dataset) as h:
        onec_id, ms_id = await h.put(transfer(dataset), customer_order(h.sandbox))
        h.box.drop_after_commit = 1
        h.sandbox.drop_after_commit = 1
        await h.processor.drain_once()
        for row_id in (onec_id, ms_id):
            entry = await get_entry(h.db, row_id)
            assert (entry.state, entry.outcome_unknown) == ("outcome_unknown", True)
        h.clock.now += 3600
        await h.processor.drain_once()
        onec_orders, ms_orders = h.box.transfer_orders(), h.sandbox.orders()
    assert len(onec_orders) == 1 and onec_orders[0]["Posted"] is True
    assert len(ms_orders) == 1
    assert (await get_entry(h.db, onec_id)).external_id == onec_orders[0]["Ref_Key"]
    assert (await get_entry(h.db, ms_id)).external_id == ms_orders[0]["id"]
    assert (await run_delivery_state(h.db, "run-1")).delivered


async def test_1c_posting_refusal_and_moysklad_412_go_dead_with_their_text(
    db: Database, dataset: DemoDataset
) -> None:
    """Refusals are dead letters carrying 1C's and МойСклад's own words, and are not retried."""
    async with hub(db, dataset) as h:
        refused = transfer(dataset, key="run-1/self", sender=TARGET)  # sender == receiver
        ghost = order_doc("run-1/ghost", [("0a0b0c0d-0000-11f1-8000-000000000000", 1)])
        onec_id, ms_id = await h.put(refused, ghost)
        await h.processor.drain_once()
        onec_requests, ms_requests = h.box.request_count, h.sandbox.request_count
        h.clock.now += 30 * 86400
        assert await h.processor.drain_once() == 0
        assert (h.box.request_count, h.sandbox.request_count) == (onec_requests, ms_requests)
    onec_row, ms_row = await get_entry(h.db, onec_id), await get_entry(h.db, ms_id)
    assert onec_row.state == "dead" and onec_row.attempts == 1
    assert onec_row.last_error is not None and "отличаться" in onec_row.last_error
    assert ms_row.state == "dead" and ms_row.attempts == 1
    assert ms_row.last_error is not None
    assert "HTTP 412" in ms_row.last_error and "code 1021" in ms_row.last_error
