"""The replenishment job: gather inputs from both systems, plan, and turn the plan into documents.

Imports no I/O library: the systems are reached through ``daemon.ports`` and the caller stores
what this module returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import orjson

from daemon.config import HubConfig
from daemon.model import (
    CustomerOrderDocument,
    Document,
    Item,
    Norm,
    OrderLine,
    Product,
    TransferLine,
    TransferOrderDocument,
    Warehouse,
    deterministic_uuid,
)
from daemon.ports import MoySkladPort, OneCPort, OpenTransferLine
from daemon.replenishment.plan import DECISIONS, ReplenishmentPlan
from daemon.replenishment.planner import PlanningInputs, TargetInputs
from daemon.store.runs import PlanItemRow

#: Marker every hub document carries (1C Комментарий, МойСклад description); the connectors
#: look for it when they read the hub's own open documents.
MARKER = "bisnesmedia-hub"

Progress = Callable[[str, dict[str, int]], Awaitable[None]]


def order_code_prefix(target: Warehouse) -> str:
    """externalCode prefix of the МойСклад orders for one target (stable across runs)."""
    return f"hub-{target.key[:8]}-"


@dataclass(frozen=True)
class GatheredInputs:
    planning: PlanningInputs
    warehouses: Mapping[str, Warehouse]


def _add(into: dict[str, Decimal], more: Mapping[str, Decimal]) -> None:
    for key, qty in more.items():
        into[key] = into.get(key, Decimal(0)) + qty


def undelivered_transfer_lines(documents: Iterable[Document]) -> list[OpenTransferLine]:
    """Transfer orders still in the outbox: not in 1C yet, but already promised."""
    return [
        OpenTransferLine(doc.sender_key, doc.receiver_key, line.item_key, line.quantity)
        for doc in documents
        if isinstance(doc, TransferOrderDocument)
        for line in doc.lines
    ]


def undelivered_orders(documents: Iterable[Document], target_key: str) -> dict[str, Decimal]:
    """Item key → quantity on МойСклад orders for the target still in the outbox."""
    incoming: dict[str, Decimal] = {}
    for doc in documents:
        if isinstance(doc, CustomerOrderDocument) and doc.target_key == target_key:
            _add(incoming, {line.item_key: line.quantity for line in doc.lines})
    return incoming


#: Called with the inputs of a run minus the МойСклад products, while those are being read.
Early = Callable[[PlanningInputs], Awaitable[None]]


async def gather_inputs(
    config: HubConfig,
    onec: OneCPort,
    moysklad: MoySkladPort,
    undelivered: Sequence[Document],
    progress: Progress,
    *,
    early: Early | None = None,
) -> GatheredInputs:
    """Read everything the planner needs; independent reads run concurrently.

    The МойСклад products are read last (they need the items) and take longest. ``early``, if
    given, is called with everything else (``products`` empty) as soon as that is read, so a
    run can plan meanwhile; the reading ends when ``early`` has. It is not called when the
    hub's open МойСклад orders bring incoming stock: attributing it to items needs the products.
    """
    targets = config.replenishment.targets
    names: list[str] = []
    for target in targets:
        for name in (target.warehouse, *target.donors):
            if name not in names:
                names.append(name)

    reading = asyncio.Event()  # the phases follow each other even when the reads do not

    async def match_products() -> dict[str, Product]:
        items = await items_task
        await reading.wait()
        await progress("match МойСклад products", {"items": len(items)})
        return await moysklad.match_products(items)

    def planning_inputs(products: dict[str, Product]) -> PlanningInputs:
        return _planning_inputs(
            config,
            undelivered,
            warehouses,
            items_task.result(),
            products,
            norms_task.result(),
            stock_task.result(),
            transfers_task.result(),
            [task.result() for task in orders_tasks],
        )

    async def plan_early(early: Early) -> None:
        for task in (items_task, norms_task, stock_task, transfers_task, *orders_tasks):
            await task
        if not any(task.result() for task in orders_tasks):
            await early(planning_inputs({}))

    await progress("resolve warehouses", {"warehouses": len(names)})
    async with asyncio.TaskGroup() as group:
        # The items need no warehouse: they are read while the warehouses are resolved.
        items_task = group.create_task(onec.read_items())
        products_task = group.create_task(match_products())
        warehouses = await onec.resolve_warehouses(names)
        keys = [warehouses[name].key for name in names]
        target_keys = [warehouses[t.warehouse].key for t in targets]
        await progress("read 1C and МойСклад", {})
        reading.set()
        norms_task = group.create_task(onec.read_norms(keys))
        stock_task = group.create_task(onec.read_free_stock(keys))
        transfers_task = group.create_task(onec.read_open_transfers(target_keys))
        orders_tasks = [
            group.create_task(
                moysklad.read_incoming_orders(order_code_prefix(warehouses[t.warehouse]))
            )
            for t in targets
        ]
        if early is not None:
            group.create_task(plan_early(early))
    planning = planning_inputs(products_task.result())
    await progress(
        "plan",
        {
            "items": len(planning.items),
            "norms": len(planning.norms),
            "products_matched": len(planning.products),
        },
    )
    return GatheredInputs(planning=planning, warehouses=warehouses)


def _planning_inputs(
    config: HubConfig,
    undelivered: Sequence[Document],
    warehouses: Mapping[str, Warehouse],
    items: Sequence[Item],
    products: Mapping[str, Product],
    norms: Mapping[tuple[str, str], Norm],
    stock: Mapping[tuple[str, str], Decimal],
    transfers: Sequence[OpenTransferLine],
    orders: Sequence[Mapping[str, Decimal]],
) -> PlanningInputs:
    """The planner's inputs from what was read: incoming per target (the hub's open transfer
    orders in 1C and in the outbox, its open МойСклад orders and those in the outbox), and the
    donors' free stock less what those transfer orders still owe.

    Why the orders already posted in 1C are subtracted at their donors too (with
    ``subtract_open_transfers_at_donors``): the donor's free stock is read from
    ``ТоварыНаСкладах``, and posting a «Заказ на перемещение» does not write that register
    (UT 11.5.20 ``Documents/ЗаказНаПеремещение.xml``, RegisterRecords: ``ТоварыКОтгрузке``,
    ``ЗаказыНаПеремещение``, ``ТоварыКПоступлению``, ``ЗапасыИПотребности``). UT takes the promised
    units off its own free stock (``ЗапасыИПотребности``, which its posting control checks) and
    off ``ТоварыНаСкладах`` only when a «Перемещение товаров» ships them — at the moment
    ``КОформлению`` drops by as much. So ``КОформлению`` is exactly what ``ТоварыНаСкладах`` still
    holds for the hub's orders, and subtracting it counts nothing twice; leaving it out would
    promise those units again, and UT would refuse to post the second order.

    Documents still in the outbox count both ways as well; one whose attempt is in flight or
    unknown may already be in 1C and is then counted twice for this run — on the side of
    ordering less, which the next run corrects. A dead one counts only as far as 1C holds it
    posted: one 1C refused to post is marked for deletion (``daemon.onec.transfers``), so its
    items are planned again from fresh stock."""
    targets = config.replenishment.targets
    item_by_product = {product.id: item_key for item_key, product in products.items()}
    open_lines = [*transfers, *undelivered_transfer_lines(undelivered)]
    free_stock = dict(stock)
    if config.replenishment.subtract_open_transfers_at_donors:
        for line in open_lines:
            key = (line.item_key, line.sender_key)
            free_stock[key] = free_stock.get(key, Decimal(0)) - line.outstanding
    target_inputs = []
    for target, ordered in zip(targets, orders, strict=True):
        target_wh = warehouses[target.warehouse]
        incoming: dict[str, Decimal] = {}
        for line in open_lines:
            if line.receiver_key == target_wh.key:
                _add(incoming, {line.item_key: line.outstanding})
        _add(
            incoming,
            {item_by_product[pid]: qty for pid, qty in ordered.items() if pid in item_by_product},
        )
        _add(incoming, undelivered_orders(undelivered, target_wh.key))
        donors = tuple(warehouses[name] for name in target.donors)
        target_inputs.append(TargetInputs(target=target_wh, donors=donors, incoming=incoming))
    return PlanningInputs(
        targets=tuple(target_inputs),
        items={item.key: item for item in items},
        norms=norms,
        free_stock=free_stock,
        products=products,
        match_key=config.moysklad.match_key,
        max_positions_per_order=config.replenishment.max_positions_per_order,
    )


def plan_item_rows(
    plan: ReplenishmentPlan, run_id: str, decisions: Collection[str] = DECISIONS
) -> list[PlanItemRow]:
    """Every item decision of every target whose code is in ``decisions`` as a ``plan_items``
    row (inputs, decision, reason).

    Pure CPU work (a worker thread may run it); built straight from the decisions because a run
    of 100,000 items stores 100,000 rows.
    """
    rows: list[PlanItemRow] = []
    append = rows.append
    dumps = orjson.dumps
    wanted = frozenset(decisions)
    for target in plan.targets:
        name = target.target.name
        for decision in target.decisions:
            if decision.decision not in wanted:
                continue
            item = decision.item
            append(
                (
                    run_id,
                    name,
                    item.key,
                    item.code,
                    item.article,
                    item.name,
                    decision.decision,
                    decision.reason,
                    dumps(decision.detail()).decode(),
                )
            )
    return rows


def build_documents(
    plan: ReplenishmentPlan, run_id: str, now: datetime, config: HubConfig, zone: str
) -> list[Document]:
    """One transfer order per donor → target, one МойСклад order (or several parts) per target.

    Idempotency keys are derived from the run id, so resending a row never creates a second
    document, while a later run creates its own.
    """
    local = now.astimezone(ZoneInfo(zone)).replace(tzinfo=None, microsecond=0)
    arrival = (local + timedelta(days=config.replenishment.desired_arrival_days)).replace(
        hour=0, minute=0, second=0
    )
    docs: list[Document] = []
    for target in plan.targets:
        for transfer in target.transfers:
            key = f"{run_id}:transfer:{transfer.donor.key}:{transfer.target.key}"
            docs.append(
                TransferOrderDocument(
                    idempotency_key=key,
                    ref_key=deterministic_uuid(key),
                    run_id=run_id,
                    sender_key=transfer.donor.key,
                    sender_name=transfer.donor.name,
                    receiver_key=transfer.target.key,
                    receiver_name=transfer.target.name,
                    date=local,
                    desired_arrival=max(arrival, local),
                    comment=f"{MARKER} key={key} run={run_id}",
                    lines=tuple(
                        TransferLine(
                            item_key=line.item_key,
                            quantity=line.quantity,
                            packages=line.packages,
                            package_key=line.package_key,
                        )
                        for line in transfer.lines
                    ),
                )
            )
        for order in target.external_orders:
            key = f"{run_id}:order:{order.target.key}:{order.part}"
            part = f", часть {order.part} из {order.parts}" if order.parts > 1 else ""
            docs.append(
                CustomerOrderDocument(
                    idempotency_key=key,
                    sync_id=deterministic_uuid(key),
                    run_id=run_id,
                    external_code=f"{order_code_prefix(order.target)}{run_id}-{order.part}",
                    description=(
                        f"{MARKER}: пополнение склада «{order.target.name}», запуск {run_id}{part}"
                    ),
                    target_name=order.target.name,
                    target_key=order.target.key,
                    lines=tuple(
                        OrderLine(
                            product_id=line.product.id,
                            item_key=line.item_key,
                            quantity=line.quantity,
                            price_kopecks=line.price_kopecks,
                        )
                        for line in order.lines
                    ),
                )
            )
    return docs


def describe_document(doc: Document) -> str:
    """A few lines an operator can read: where from/to and the first lines (no secrets)."""
    if isinstance(doc, TransferOrderDocument):
        head = (
            f"1C transfer order {doc.sender_name} → {doc.receiver_name}, Ref_Key {doc.ref_key},"
            f" date {doc.date:%Y-%m-%d}"
        )
        lines = [f"{line.item_key}: {line.quantity}" for line in doc.lines]
    else:
        head = f"МойСклад order {doc.external_code} for {doc.target_name}, syncId {doc.sync_id}"
        lines = [f"product {line.product_id}: {line.quantity}" for line in doc.lines]
    more = f"; … {len(lines) - 5} more" if len(lines) > 5 else ""
    return f"{head}; {len(lines)} lines: " + "; ".join(lines[:5]) + more
