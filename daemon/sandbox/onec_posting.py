"""What posting a «Заказ на перемещение» records in the emulated base, and the stock control.

Taken from the UT 11.5.20 configuration source (``work1cblackbird/ut11``), not from older notes:

* ``Documents/ЗаказНаПеремещение.xml`` lists the registers the order writes: ``ТоварыКОтгрузке``,
  ``ЗаказыНаПеремещение``, ``ТоварыКПоступлению``, ``ЗапасыИПотребности``. Not
  ``ТоварыНаСкладах``: posting an order leaves that register (and so the hub's free stock
  ``ВНаличии − КОтгрузке`` read from it) as it was; the units leave it when a «Перемещение
  товаров» ships them.
* ``ManagerModule.ТекстЗапросаТаблицаЗаказыНаПеремещение``: ``Заказано`` is credited for every
  line (and taken back for a cancelled one); ``КОформлению`` only for lines with
  ``ВариантОбеспечения = Отгрузить`` that are not ``Отменено``, on an order whose ``Статус`` is
  ``КВыполнению`` or ``Закрыт`` (11.4 also counts ``ОтгрузитьОбособленно``, reference
  Corrections 1). ``КОбеспечению``/``Требуется`` lines are credited nothing.
* The same ``Отгрузить`` lines are a planned shipment at the sender
  (``ЗапланироватьОтгрузкуТоваров`` → ``ТоварыКОтгрузке.КОтгрузке``) and an expense of its free
  stock in ``ЗапасыИПотребности`` with ``КонтрольСвободногоОстатка = ИСТИНА``
  (``ОтразитьРаспределениеЗапасовДвижения``). When that leaves the sender's free stock
  negative, posting is refused with ``РаспределениеЗапасов.СообщитьОбОшибкахПроведения``'s text
  for an item without purpose or characteristic, one line per item.

The emulator keeps no ``ТоварыКОтгрузке``/``ЗапасыИПотребности`` of its own: UT's free stock at
the sender is ``ВНаличии − КОтгрузке`` of ``ТоварыНаСкладах`` less what the sender's other posted
orders still owe (their ``КОформлению``), which is what those registers hold for these data.
The control applies to senders with ``КонтролироватьСвободныеОстатки`` (UT takes the setting
from ``НастройкаКонтроляОбеспечения``, falling back to the warehouse's).
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from daemon.sandbox.onec_database import OneCDatabase, Row
from daemon.sandbox.onec_schema import (
    ITEMS,
    ORDER,
    STOCK,
    TRANSFER_ORDERS,
    WAREHOUSES,
)

#: Statuses whose ``Отгрузить`` lines are credited ``КОформлению`` and planned for shipment.
SHIPPING_STATUSES = frozenset({"КВыполнению", "Закрыт"})
ZERO = Decimal(0)


def shipping_options(version: str) -> frozenset[str]:
    """``ВариантОбеспечения`` values UT ships from the sender (and counts as outstanding)."""
    return frozenset({"Отгрузить", "ОтгрузитьОбособленно"} if version == "11.4" else {"Отгрузить"})


def _amount(value: Any) -> Decimal:
    return Decimal(str(value))


def ships(row: Row, line: Row, options: frozenset[str]) -> bool:
    """Whether posting ``row`` plans the shipment of ``line`` (and credits its КОформлению)."""
    return (
        row["Статус"] in SHIPPING_STATUSES
        and line["ВариантОбеспечения"] in options
        and not line["Отменено"]
        and _amount(line["Количество"]) != 0
    )


def order_records(row: Row, options: frozenset[str]) -> list[tuple[Any, ...]]:
    """The ``ЗаказыНаПеремещение`` movements of a posted order, one per line, netted as UT's
    three movements (ordered, to formalise, cancelled) net: ``(order, item, characteristic,
    КодСтроки, series, Заказано, КОформлению)``."""
    records = []
    for line in row["Товары"]:
        quantity = _amount(line["Количество"])
        ordered = ZERO if line["Отменено"] else quantity
        outstanding = quantity if ships(row, line, options) else ZERO
        if ordered or outstanding:
            records.append(
                (
                    row["Ref_Key"],
                    line["Номенклатура_Key"],
                    line["Характеристика_Key"],
                    line["КодСтроки"],
                    line["Серия_Key"],
                    ordered,
                    outstanding,
                )
            )
    return records


def planned_shipments(row: Row, options: frozenset[str]) -> dict[str, Decimal]:
    """Item key → quantity posting ``row`` plans to ship from its sender."""
    wanted: dict[str, Decimal] = {}
    for line in row["Товары"]:
        if ships(row, line, options):
            item = line["Номенклатура_Key"]
            wanted[item] = wanted.get(item, ZERO) + _amount(line["Количество"])
    return wanted


def _free_at(db: OneCDatabase, warehouse: str, items: Iterable[str]) -> dict[str, Decimal]:
    """UT's free stock of ``items`` at ``warehouse`` before any posted order is subtracted."""
    wanted = set(items)
    free = dict.fromkeys(wanted, ZERO)
    for record in db.registers[STOCK].rows_of(warehouse):
        item = record[0]
        if item in wanted:
            free[item] += record[6] - record[7]
    return free


def _owed_by_other_orders(
    db: OneCDatabase, warehouse: str, items: set[str], exclude: str
) -> dict[str, Decimal]:
    """What the sender's other posted orders still have to ship, per item (КОформлению)."""
    owed = dict.fromkeys(items, ZERO)
    register = db.registers[TRANSFER_ORDERS]
    for order in db.tables[ORDER].rows:
        if not order["Posted"] or order["Ref_Key"] == exclude:
            continue
        if order["СкладОтправитель_Key"] != warehouse:
            continue
        for record in register.rows_of(order["Ref_Key"]):
            if record[1] in owed:
                owed[record[1]] += record[6]
    return owed


def _name(db: OneCDatabase, table: str, key: str) -> str:
    row = db.tables[table].get((key,))
    return str(row["Description"]) if row is not None else key


def _text(quantity: Decimal) -> str:
    normal = quantity.normalize()
    return f"{normal:f}"


def stock_shortages(db: OneCDatabase, row: Row, options: frozenset[str]) -> list[str]:
    """UT's refusal lines for ``row``'s planned shipments its sender cannot cover (none: fine)."""
    sender = row["СкладОтправитель_Key"]
    warehouse = db.tables[WAREHOUSES].get((sender,))
    if warehouse is None or not warehouse.get("КонтролироватьСвободныеОстатки"):
        return []
    wanted = planned_shipments(row, options)
    if not wanted:
        return []
    free = _free_at(db, sender, wanted)
    owed = _owed_by_other_orders(db, sender, set(wanted), row["Ref_Key"])
    problems = []
    for item, quantity in wanted.items():
        shortage = quantity - (free[item] - owed[item])
        if shortage > 0:
            # РаспределениеЗапасов.СообщитьОбОшибкахПроведения, «ТекстБезНазначения»
            problems.append(
                "Для отгрузки/резервирования необособленного товара "
                f'"{_name(db, ITEMS, item)}" на складе "{_name(db, WAREHOUSES, sender)}" '
                f"недостаточно свободного остатка в количестве {_text(shortage)} шт"
            )
    return problems
