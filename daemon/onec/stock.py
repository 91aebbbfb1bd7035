"""Free stock ``ВНаличии − КОтгрузке`` from ``AccumulationRegister_ТоварыНаСкладах/Balance``.

One ``Balance`` call per warehouse, with the warehouse pushed into ``Condition`` (1C filters the
virtual table while computing it; a ``$filter`` would be applied afterwards) and
``Dimensions='Номенклатура'`` so 1C itself sums the Назначение/Серия/Помещение/Характеристика
rows (the warehouse is fixed by the Condition). Never one request per item, and never ``$skip``
paging: every page of a virtual table recomputes the whole table. The warehouses are asked
concurrently.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from decimal import Decimal

import structlog

from daemon.onec import odata
from daemon.onec.metadata import STOCK
from daemon.onec.norms import decimal
from daemon.onec.transport import ODataTransport, rows_of, since, task_group

log = structlog.get_logger(__name__)

# The warehouse is fixed by the Condition, so rows carry only the item (a third less JSON).
_SELECT = "Номенклатура_Key,ВНаличииBalance,КОтгрузкеBalance"


def balance_url(transport: ODataTransport, warehouse_key: str) -> str:
    path = f"{STOCK}/" + odata.call(
        "Balance",
        Condition=odata.eq("Склад_Key", odata.guid(warehouse_key)),
        Dimensions="Номенклатура",
    )
    return transport.url(path, [("$format", "json"), ("$select", _SELECT)])


async def read_free_stock(
    transport: ODataTransport, warehouse_keys: Sequence[str]
) -> dict[tuple[str, str], Decimal]:
    """(item key, warehouse key) → free stock; pairs with no balance row are absent (0)."""
    started = time.monotonic()
    free: dict[tuple[str, str], Decimal] = {}
    counted = [0]

    async def read(warehouse: str) -> None:
        answer = await transport.get_json(balance_url(transport, warehouse), what="stock balance")
        for number, row in enumerate(rows_of(answer, "stock balance"), start=1):
            if number % 2000 == 0:
                await asyncio.sleep(0)  # a long answer: let the other requests move on
            pair = (row["Номенклатура_Key"], warehouse)
            on_hand, reserved = row.get("ВНаличииBalance", 0), row.get("КОтгрузкеBalance", 0)
            if type(on_hand) is int and type(reserved) is int:
                amount = Decimal(on_hand - reserved)  # the common case, one conversion
            else:
                amount = decimal(on_hand) - decimal(reserved)
            # One row per item is the norm (Dimensions='Номенклатура'); add up just in case.
            free[pair] = free[pair] + amount if pair in free else amount
            counted[0] += 1

    async with task_group() as group:
        for key in dict.fromkeys(warehouse_keys):
            group.create_task(read(key))
    rows = counted[0]
    log.info("onec_read", what="free_stock", rows=rows, elapsed_s=since(started))
    return free
