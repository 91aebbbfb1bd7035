"""Free stock ``ВНаличии − КОтгрузке`` from ``AccumulationRegister_ТоварыНаСкладах/Balance``.

One ``Balance`` call per warehouse, with the warehouse pushed into ``Condition`` (1C filters the
virtual table while computing it; a ``$filter`` would be applied afterwards; the form of the
Condition is the one the server takes, ``daemon.onec.conditions``) and
``Dimensions='Номенклатура'`` so 1C itself sums the Назначение/Серия/Помещение/Характеристика
rows (the warehouse is fixed by the Condition). Never one request per item, and never ``$skip``
paging: every page of a virtual table recomputes the whole table. The warehouses are asked
concurrently.

A row without a GUID item key, or with a balance that is not a number, fails the read with a
message naming the item and the warehouse: skipping it would read that item's stock as 0, and
so would change the plan.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from functools import partial
from typing import Any

import structlog

from daemon.onec import odata
from daemon.onec.answers import LIMIT, guid_text, malformed, need_quantity, row_label
from daemon.onec.conditions import ConditionForms, read_balance
from daemon.onec.metadata import STOCK
from daemon.onec.transport import AHEAD, ODataTransport, since, task_group

log = structlog.get_logger(__name__)

ITEM, ON_HAND, RESERVED = "Номенклатура_Key", "ВНаличииBalance", "КОтгрузкеBalance"
# The warehouse is fixed by the Condition, so rows carry only the item (a third less JSON).
_SELECT = f"{ITEM},{ON_HAND},{RESERVED}"


def warehouse_condition(warehouse_key: str) -> str:
    return odata.eq("Склад_Key", odata.guid(warehouse_key))


async def read_free_stock(
    transport: ODataTransport, forms: ConditionForms, warehouse_keys: Sequence[str]
) -> dict[tuple[str, str], Decimal]:
    """(item key, warehouse key) → free stock; pairs with no balance row are absent (0)."""
    started = time.monotonic()
    tasks = []
    async with task_group() as group:
        for warehouse_key in dict.fromkeys(warehouse_keys):
            read = read_balance(
                transport,
                forms,
                STOCK,
                warehouse_condition(warehouse_key),
                dimensions="Номенклатура",
                select=_SELECT,
                what="stock balance",
                convert=partial(_free_stock, warehouse=warehouse_key),
                # Nothing waits for a balance to ask for more, as it waits for a count.
                priority=AHEAD,
            )
            tasks.append(group.create_task(read))
    free: dict[tuple[str, str], Decimal] = {}
    rows = 0
    for task in tasks:
        sent, part = task.result()
        rows += sent
        free.update(part)
    log.info("onec_read", what="free_stock", rows=rows, elapsed_s=since(started))
    return free


def _free_stock(rows: list[Any], warehouse: str) -> dict[tuple[str, str], Decimal]:
    """(item key, ``warehouse``) → free stock, from the rows of one warehouse's balance."""
    free: dict[tuple[str, str], Decimal] = {}
    # Free stock is mostly a few small whole numbers: one Decimal for each, not for each row.
    numbers: dict[int, Decimal] = {}
    low, high = -LIMIT, LIMIT
    item: Any  # as 1C sent it, until checked
    for row in rows:
        item = row.get(ITEM) if type(row) is dict else None
        if type(item) is not str or guid_text(item) is None:
            raise malformed(
                "stock balance",
                f"warehouse {warehouse}: a row without a GUID item key ({row_label(row, ITEM)})",
            )
        pair = (item, warehouse)
        on_hand, reserved = row.get(ON_HAND), row.get(RESERVED)
        if (
            type(on_hand) is int
            and type(reserved) is int
            and low < on_hand < high
            and low < reserved < high
        ):
            difference = on_hand - reserved  # the common case, one conversion
            amount = numbers.get(difference)
            if amount is None:
                amount = numbers[difference] = Decimal(difference)
        else:
            label = f"item {item} on warehouse {warehouse}"
            amount = need_quantity(row, ON_HAND, "stock balance", label)
            amount -= need_quantity(row, RESERVED, "stock balance", label)
        # One row per item is the norm (Dimensions='Номенклатура'); add up just in case.
        if pair in free:
            free[pair] += amount
        else:
            free[pair] = amount
    return free
