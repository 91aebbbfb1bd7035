"""Free stock ``ВНаличии − КОтгрузке`` from ``AccumulationRegister_ТоварыНаСкладах/Balance``.

One ``Balance`` call per warehouse, with the warehouse pushed into ``Condition`` (1C filters the
virtual table while computing it; a ``$filter`` would be applied afterwards) and
``Dimensions='Номенклатура,Склад'`` so 1C sums the Назначение/Серия/Помещение/Характеристика rows
itself. Never one request per item, and never ``$skip`` paging: every page of a virtual table
recomputes the whole table. The warehouses are asked concurrently.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import structlog

from daemon.onec import odata
from daemon.onec.metadata import STOCK
from daemon.onec.norms import decimal
from daemon.onec.transport import ODataTransport, rows_of

log = structlog.get_logger(__name__)

_SELECT = "Номенклатура_Key,Склад_Key,ВНаличииBalance,КОтгрузкеBalance"


def balance_url(transport: ODataTransport, warehouse_key: str) -> str:
    path = f"{STOCK}/" + odata.call(
        "Balance",
        Condition=odata.eq("Склад_Key", odata.guid(warehouse_key)),
        Dimensions="Номенклатура,Склад",
    )
    return transport.url(path, [("$format", "json"), ("$select", _SELECT)])


async def read_free_stock(
    transport: ODataTransport, warehouse_keys: Sequence[str]
) -> dict[tuple[str, str], Decimal]:
    """(item key, warehouse key) → free stock; pairs with no balance row are absent (0)."""
    started = time.monotonic()
    tasks: list[asyncio.Task[Any]] = []
    async with asyncio.TaskGroup() as group:
        for key in dict.fromkeys(warehouse_keys):
            relative = balance_url(transport, key)
            tasks.append(group.create_task(transport.get_json(relative, what="stock balance")))
    free: dict[tuple[str, str], Decimal] = {}
    rows = 0
    for task in tasks:
        for row in rows_of(task.result(), "stock balance"):
            rows += 1
            pair = (row["Номенклатура_Key"], row["Склад_Key"])
            amount = decimal(row.get("ВНаличииBalance")) - decimal(row.get("КОтгрузкеBalance"))
            free[pair] = free.get(pair, Decimal(0)) + amount
    log.info(
        "onec_read", what="free_stock", rows=rows, elapsed_s=round(time.monotonic() - started, 3)
    )
    return free
