"""Transfer orders UT counts: runs, the outbox and both connectors against the emulators.

The daemon's own parts do the work here — ``RunManager`` reads both systems, plans and stores
the documents in the outbox, ``OutboxProcessor`` delivers them through the real connectors —
with the emulators on loopback ports and SQLite in ``tmp_path``. Between a run and its delivery
the test can change the emulated base (stock sold at a donor), which a subprocess hub would not
let it do at a chosen moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from daemon.config import HubConfig, load_config
from daemon.errors import PermanentError
from daemon.model import (
    EMPTY_GUID,
    TransferLine,
    TransferOrderDocument,
    deterministic_uuid,
)
from daemon.moysklad.connector import MoySkladConnector
from daemon.onec.connector import OneCConnector
from daemon.onec.metadata import (
    OneCSchema,
    detect_schema,
    parse_metadata,
    types_to_keep,
    verify_published,
)
from daemon.onec.transfers import OrderContext, order_body
from daemon.outbox.processor import OutboxProcessor
from daemon.replenishment.runs import RunManager
from daemon.sandbox.dataset import (
    DemoDataset,
    ItemRecord,
    NormRecord,
    StockRecord,
    WarehouseRecord,
    build_demo_dataset,
)
from daemon.sandbox.moysklad_emulator import MoySkladSandbox, run_moysklad_sandbox
from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox
from daemon.sandbox.onec_schema import entity_defs, enums, render_metadata
from daemon.store import Database, open_database
from daemon.store.runs import get_run, plan_items
from tests.conftest import base_sections, write_config

PASSWORD, TOKEN = "onec-pass", "ms-token"
TARGET, FIRST, SECOND = "Магазин Центральный", "Бестужевых", "Контейнер"
NORTH = "Магазин Северный"  # a second shop, added by the tests that need one


@dataclass
class Outboxed:
    """One outbox row as the test reads it back."""

    id: int
    run_id: str
    kind: str
    state: str
    last_error: str | None
    doc: TransferOrderDocument | None  # None for a МойСклад order


@dataclass
class World:
    dataset: DemoDataset
    onec: OneCSandbox
    moysklad: MoySkladSandbox
    db: Database
    runs: RunManager
    outbox: OutboxProcessor

    async def run(self) -> str:
        """One replenishment run to its end; its id."""
        launch = await self.runs.trigger("replenishment")
        await launch.done.wait()
        record = await get_run(self.db, launch.run.id)
        assert record.status == "succeeded", record.reason
        return launch.run.id

    async def deliver(self) -> None:
        """Drain the outbox until every row is delivered, dead or discarded."""
        for _ in range(20):
            await self.outbox.drain_once()
            if all(e.state in ("delivered", "dead", "discarded") for e in await self.entries()):
                return
            await asyncio.sleep(0.3)  # a transient failure's short backoff
        raise AssertionError([(e.id, e.state, e.last_error) for e in await self.entries()])

    async def entries(self, run_id: str | None = None) -> list[Outboxed]:
        rows = await self.db.fetchall(
            "SELECT id, run_id, kind, state, last_error, payload_json FROM outbox ORDER BY id"
        )
        found = []
        for outbox_id, run, kind, state, error, payload in rows:
            if run_id is not None and run != run_id:
                continue
            doc = (
                TransferOrderDocument.model_validate_json(payload)
                if kind == "onec_transfer_order"
                else None
            )
            found.append(Outboxed(outbox_id, run, kind, state, error, doc))
        return found

    def wh(self, name: str) -> str:
        return self.dataset.warehouse_key(name)


@asynccontextmanager
async def world(
    tmp_path: Path, dataset: DemoDataset, targets: tuple[str, ...] = (TARGET,)
) -> AsyncIterator[World]:
    onec_box = OneCSandbox(dataset, username="hub", password=PASSWORD)
    ms_box = MoySkladSandbox(dataset.moysklad_products, token=TOKEN, weight=1)
    async with run_onec_sandbox(onec_box) as onec_url, run_moysklad_sandbox(ms_box) as ms_url:
        sections: dict[str, Any] = base_sections(tmp_path, onec_url, ms_url)
        text = "".join(
            f'\n[[replenishment.targets]]\nwarehouse = "{name}"\ndonors = ["{FIRST}", "{SECOND}"]\n'
            for name in targets[1:]
        )
        path = write_config(tmp_path / "config.toml", sections)
        path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")
        config: HubConfig = load_config(path)
        db = await open_database(tmp_path / "hub.sqlite3")
        try:
            async with (
                OneCConnector(config.onec, SecretStr(PASSWORD)) as onec,
                MoySkladConnector(config.moysklad, SecretStr(TOKEN), None) as moysklad,
            ):
                outbox = OutboxProcessor(db, config.outbox, onec, moysklad, worker_id="test")
                runs = RunManager(db, lambda: config, onec, moysklad, lambda: None)
                async with asyncio.TaskGroup() as group:
                    runs.attach(group)
                    yield World(dataset, onec_box, ms_box, db, runs, outbox)
        finally:
            await db.close()


@pytest.fixture
def dataset() -> DemoDataset:
    return build_demo_dataset(48, seed=5)


def _registered(box: OneCSandbox, ref_key: str) -> list[tuple[Any, ...]]:
    """The ЗаказыНаПеремещение movements the emulated base holds for one order."""
    return box.db.registers["AccumulationRegister_ЗаказыНаПеремещение"].rows_of(ref_key)


async def test_second_run_after_delivery_orders_nothing(
    tmp_path: Path, dataset: DemoDataset
) -> None:
    """Run, deliver (every line «Отгрузить», posted, КОформлению credited), run again: the second
    run sees the delivered orders as incoming and enqueues no document at all."""
    async with world(tmp_path, dataset) as w:
        first = await w.run()
        await w.deliver()
        delivered = await w.entries(first)
        assert delivered and all(e.state == "delivered" for e in delivered), delivered
        orders = w.onec.transfer_orders()
        assert orders and all(o["Posted"] for o in orders)
        for order in orders:
            assert {line["supply_option"] for line in order["lines"]} == {"Отгрузить"}
            owed = sum(r[6] for r in _registered(w.onec, order["Ref_Key"]))
            assert owed == sum(line["quantity"] for line in order["lines"]) > 0
        second = await w.run()
        assert await w.entries(second) == []
        assert len(w.onec.transfer_orders()) == len(orders)
        assert (await get_run(w.db, second)).counts.get("documents") == 0


async def test_refused_posting_ends_dead_withdrawn_and_is_planned_again(
    tmp_path: Path, dataset: DemoDataset
) -> None:
    """Stock sold at a donor between plan and delivery: 1C refuses to post, the entry ends dead
    with 1C's message naming the item, the draft is marked for deletion and credited nothing,
    and the next run plans the order's items again (the sold item no longer from that donor)."""
    async with world(tmp_path, dataset) as w:
        first = await w.run()
        [refused] = [
            e for e in await w.entries(first) if e.doc is not None and e.doc.sender_name == FIRST
        ]
        assert refused.doc is not None
        sold = refused.doc.lines[0]
        donor = w.wh(FIRST)
        free = sum(
            r[6] - r[7] for r in w.onec.db.registers["AccumulationRegister_ТоварыНаСкладах"]
            .rows_of(donor) if r[0] == sold.item_key
        )  # fmt: skip
        w.onec.db.add_stock(StockRecord(sold.item_key, donor, -free))  # all of it sold
        await w.deliver()

        entry = next(e for e in await w.entries(first) if e.id == refused.id)
        assert entry.state == "dead"
        name = next(i.name for i in dataset.items if i.key == sold.item_key)
        assert entry.last_error is not None
        assert "недостаточно свободного остатка" in entry.last_error
        assert f'"{name}"' in entry.last_error and f'"{FIRST}"' in entry.last_error
        assert "marked for deletion" in entry.last_error
        [draft] = [o for o in w.onec.transfer_orders() if o["Ref_Key"] == refused.doc.ref_key]
        assert draft["Posted"] is False and draft["DeletionMark"] is True
        assert _registered(w.onec, draft["Ref_Key"]) == []
        others = [e for e in await w.entries(first) if e.id != refused.id]
        assert all(e.state == "delivered" for e in others), others

        second = await w.run()
        before = {p.item_key: p.detail["deficit"] for p in await plan_items(w.db, first)}
        plans = {p.item_key: p for p in await plan_items(w.db, second)}
        again = [e.doc for e in await w.entries(second) if e.doc and e.doc.sender_name == FIRST]
        taken = {line.item_key: line.quantity for doc in again for line in doc.lines}
        alone = 0  # lines whose item had nothing else coming: planned again in full
        for line in refused.doc.lines:
            planned = before[line.item_key]
            ordered = Decimal(planned["external"]) + sum(
                Decimal(d["take"]) for d in planned["donors"]
            )
            # Incoming now: what the delivered documents bring, not the refused line.
            assert Decimal(plans[line.item_key].detail["incoming"]) == ordered - line.quantity
            if line.item_key == sold.item_key:
                assert line.item_key not in taken  # nothing left at that donor
            elif ordered == line.quantity:
                assert taken[line.item_key] == line.quantity, plans[line.item_key]
                alone += 1
        assert alone > 0
        await w.deliver()
        assert all(e.state == "delivered" for e in await w.entries(second))


async def test_units_promised_by_a_posted_order_are_not_promised_again(
    tmp_path: Path, dataset: DemoDataset
) -> None:
    """Posting an order leaves the donor's ТоварыНаСкладах as it was, so the hub subtracts what
    its posted orders still owe there: a second shop's deficit gets only the rest, and UT (which
    checks its own free stock) posts that order instead of refusing it."""
    north = deterministic_uuid("wh:north")
    item = ItemRecord(deterministic_uuid("item:shared"), "УТ-99000001", "", "Кабель общий")
    dataset.warehouses.append(WarehouseRecord(north, NORTH, kind="РозничныйМагазин"))
    dataset.items.append(item)
    target = dataset.warehouse_key(TARGET)
    donor = dataset.warehouse_key(FIRST)
    for shop in (target, north):
        dataset.norms.append(NormRecord(shop, item.key, minimum=Decimal(10), maximum=Decimal(20)))
    dataset.stock += [
        StockRecord(item.key, donor, Decimal(30)),
        StockRecord(item.key, north, Decimal(20)),  # no deficit on the first run
    ]
    async with world(tmp_path, dataset, targets=(TARGET, NORTH)) as w:
        first = await w.run()
        await w.deliver()
        to_target = [
            line.quantity
            for e in await w.entries(first)
            if e.doc and e.doc.receiver_key == target
            for line in e.doc.lines
            if line.item_key == item.key
        ]
        assert to_target == [Decimal(20)]
        assert all(e.state == "delivered" for e in await w.entries(first))
        w.onec.db.add_stock(StockRecord(item.key, north, Decimal(-20)))  # the north shop sold out

        second = await w.run()
        lines = [
            (e.doc.sender_key, e.doc.receiver_key, line.quantity)
            for e in await w.entries(second)
            if e.doc
            for line in e.doc.lines
            if line.item_key == item.key
        ]
        assert lines == [(donor, north, Decimal(10))]  # 30 on hand, 20 owed to the target
        await w.deliver()
        assert all(e.state == "delivered" for e in await w.entries(second))


def test_line_numbers_are_sent_as_json_strings(dataset: DemoDataset) -> None:
    """LineNumber goes out as "1", "2", … — the form 1C gives Edm.Int64 — with «Отгрузить»."""
    items = [i for i in dataset.items if not i.is_folder][:3]
    lines = tuple(
        TransferLine(item_key=i.key, quantity=Decimal(n), packages=Decimal(n))
        for n, i in enumerate(items, start=1)
    )
    when = datetime(2026, 3, 10, 9, 0)
    doc = TransferOrderDocument(
        idempotency_key="k",
        ref_key=deterministic_uuid("k"),
        run_id="r",
        sender_key=dataset.warehouse_key(FIRST),
        sender_name=FIRST,
        receiver_key=dataset.warehouse_key(TARGET),
        receiver_name=TARGET,
        date=when,
        desired_arrival=when,
        comment="bisnesmedia-hub key=k run=r",
        lines=lines,
    )
    schema = OneCSchema(
        version="11.5",
        detected=True,
        group_field="ГруппировкаТоварныхОграничений_Key",
        supply_option="Отгрузить",
        has_priority=True,
        order_fields=frozenset({"Ref_Key", "Date"}),
        line_fields=frozenset({"Номенклатура_Key", "ВариантОбеспечения", "КодСтроки"}),
    )
    body = order_body(doc, schema, OrderContext((EMPTY_GUID, "org"), None))
    assert [line["LineNumber"] for line in body["Товары"]] == ["1", "2", "3"]
    assert {line["ВариантОбеспечения"] for line in body["Товары"]} == {"Отгрузить"}
    assert all("КодСтроки" not in line for line in body["Товары"])  # 1C fills it itself


def test_a_base_without_the_shipping_option_is_refused_by_name() -> None:
    """The hub writes «Отгрузить» on every line: a base whose ВариантыОбеспечения lacks it is
    named as incomplete when $metadata is read, before anything is written."""
    version_enums = enums("11.5")
    options = tuple(v for v in version_enums["ВариантыОбеспечения"] if v != "Отгрузить")
    edmx = render_metadata(
        entity_defs("11.5").values(), {**version_enums, "ВариантыОбеспечения": options}
    )
    meta = parse_metadata(edmx, types_to_keep())
    with pytest.raises(PermanentError, match=r"ВариантыОбеспечения\.Отгрузить"):
        verify_published(meta, detect_schema(meta, "auto"))
