"""What the hub's open «Заказы на перемещение» still owe, per sender, receiver and item.

Outstanding quantities come from the balance of ``AccumulationRegister_ЗаказыНаПеремещение``,
resource ``КОформлению`` — what the order still expects to be formalised by a transfer — over
the hub's own posted, open, not deleted orders to the receivers (marker ``bisnesmedia-hub`` in
``Комментарий``), per sender, receiver and item. A closed order (``Статус = Закрыт``) is left
out even if a balance remained.

These quantities are stock already on its way: an order or balance row that cannot be read
fails the read (naming the order or item), since leaving it out would order the same units
again.

The orders go into the balance's ``Condition`` in batches. In a path segment
(``Balance(Condition='… or …')``) HTTP.sys lets 260 characters through: two orders; with the
query-option form (``onec.condition_form = "query"``) the 2048 bytes of the URL hold eight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import structlog

from daemon.onec import odata
from daemon.onec.answers import (
    field_shape,
    malformed,
    need_key,
    need_quantity,
    row_label,
    shape,
    text,
)
from daemon.onec.conditions import ConditionForms, read_balance
from daemon.onec.metadata import ORDER, ORDER_BALANCES
from daemon.onec.paging import read_all
from daemon.onec.transport import ODataTransport, task_group
from daemon.ports import OpenTransferLine

log = structlog.get_logger(__name__)

HUB_MARKER = "bisnesmedia-hub"
SENDER, RECEIVER, COMMENT = "СкладОтправитель_Key", "СкладПолучатель_Key", "Комментарий"
ORDER_KEY, ITEM, OUTSTANDING = "ЗаказНаПеремещение_Key", "Номенклатура_Key", "КОформлениюBalance"


_DIMENSIONS = "ЗаказНаПеремещение,Номенклатура"
_SELECT = f"{ORDER_KEY},{ITEM},{OUTSTANDING}"


async def read_open_transfers(
    transport: ODataTransport, forms: ConditionForms, receiver_keys: Sequence[str]
) -> list[OpenTransferLine]:
    """What the hub's open transfer orders to the receivers still owe, per sender and item."""
    if not receiver_keys:
        return []
    where = odata.all_of(
        odata.any_of(RECEIVER, [odata.guid(k) for k in receiver_keys]),
        "Posted eq true",
        "DeletionMark eq false",
        f"Статус ne {odata.literal('Закрыт')}",
        odata.substringof(HUB_MARKER, COMMENT),
    )
    orders = await read_all(
        transport,
        ORDER,
        where=where,
        select=("Ref_Key", COMMENT, SENDER, RECEIVER),
        orderby=("Ref_Key",),
        what="open hub transfer orders",
    )
    route = _routes(orders, {key.lower() for key in receiver_keys})
    keys = [odata.guid(key) for key in route]
    if not keys:
        return []

    def condition(run: Sequence[str]) -> str:
        return " or ".join(odata.eq(ORDER_KEY, key) for key in run)

    form = forms.batching_form()

    def render(run: Sequence[str]) -> str:
        path, options = odata.balance_call(
            ORDER_BALANCES, condition(run), form, dimensions=_DIMENSIONS
        )
        return odata.relative_url(path, [*options, ("$format", "json"), ("$select", _SELECT)])

    tasks: list[asyncio.Task[tuple[int, list[Any]]]] = []
    async with task_group() as group:
        for run in odata.batches(keys, render, transport.limits):
            read = read_balance(
                transport,
                forms,
                ORDER_BALANCES,
                condition(run),
                dimensions=_DIMENSIONS,
                select=_SELECT,
                what="transfer balances",
                convert=list,
            )
            tasks.append(group.create_task(read))
    outstanding: dict[tuple[str, str, str], Decimal] = {}
    for task in tasks:
        for row in task.result()[1]:
            order, item, amount = _balance(row)
            sender_receiver = route.get(order.lower())
            if amount > 0 and sender_receiver is not None:
                line = (*sender_receiver, item)
                outstanding[line] = outstanding.get(line, Decimal(0)) + amount
    log.info(
        "onec_read",
        what="open_transfers",
        orders=len(keys),
        requests=len(tasks),
        lines=len(outstanding),
    )
    return [
        OpenTransferLine(sender, receiver, item, qty)
        for (sender, receiver, item), qty in sorted(outstanding.items())
    ]


def _routes(orders: list[Any], receivers: set[str]) -> dict[str, tuple[str, str]]:
    """Order key (lower case) → (sender, receiver) of the hub's orders among ``orders``."""
    route: dict[str, tuple[str, str]] = {}
    what = "open hub transfer orders"
    for order in orders:
        if not isinstance(order, dict):
            raise malformed(what, f"a row that is {shape(order)}, not an object")
        label = row_label(order, "Ref_Key")
        ref = need_key(order, "Ref_Key", what, label)
        sender, receiver = (
            need_key(order, SENDER, what, label),
            need_key(order, RECEIVER, what, label),
        )
        comment = text(order.get(COMMENT))
        if comment is None:
            raise malformed(what, f"{label}: {COMMENT} is {field_shape(order, COMMENT)}, not text")
        if HUB_MARKER not in comment:
            continue
        if receiver.lower() not in receivers:
            raise malformed(what, f"{label}: {RECEIVER} {receiver} is not a receiver asked for")
        route[ref.lower()] = (sender, receiver)
    return route


def _balance(row: Any) -> tuple[str, str, Decimal]:
    """(order key, item key, КОформлению) of one balance row."""
    what = "transfer balances"
    if not isinstance(row, dict):
        raise malformed(what, f"a row that is {shape(row)}, not an object")
    order = need_key(row, ORDER_KEY, what, "a row")
    item = need_key(row, ITEM, what, f"order {order}")
    return order, item, need_quantity(row, OUTSTANDING, what, f"order {order}, item {item}")
