"""The 1C emulator's transfer-order posting, as the UT 11.5.20 configuration source has it:
what the order registers, which lines count, and the sender's free-stock control."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from daemon.model import deterministic_uuid
from daemon.sandbox.dataset import DemoDataset, ItemRecord, StockRecord, build_demo_dataset
from daemon.sandbox.onec_database import ODataFault
from daemon.sandbox.onec_emulator import OneCSandbox

SENDER, RECEIVER = "Бестужевых", "Магазин Центральный"
ORDERS = "AccumulationRegister_ЗаказыНаПеремещение"
STOCK = "AccumulationRegister_ТоварыНаСкладах"


@pytest.fixture
def dataset() -> DemoDataset:
    """The demo base plus three items only this module uses, 50 of each at the sender."""
    data = build_demo_dataset(24, seed=11)
    for n in range(3):
        key = deterministic_uuid(f"posting-item-{n}")
        data.items.append(ItemRecord(key, f"УТ-9800000{n}", "", f"Розетка тестовая {n}"))
        data.stock.append(StockRecord(key, data.warehouse_key(SENDER), Decimal(50)))
    return data


def _items(dataset: DemoDataset) -> list[str]:
    return [i.key for i in dataset.items if i.name.startswith("Розетка тестовая")]


def _body(dataset: DemoDataset, lines: list[dict[str, Any]], **header: Any) -> dict[str, Any]:
    return {
        "Date": "2026-03-10T09:00:00",
        "Организация_Key": dataset.organizations[0].key,
        "СкладОтправитель_Key": dataset.warehouse_key(SENDER),
        "СкладПолучатель_Key": dataset.warehouse_key(RECEIVER),
        "ХозяйственнаяОперация": "ПеремещениеТоваров",
        "Статус": "КВыполнению",
        "Приоритет_Key": dataset.priorities[0].key,
        "Товары": [
            {
                "LineNumber": str(n),
                "КоличествоУпаковок": line["Количество"],
                "ВариантОбеспечения": "Отгрузить",
                **line,
            }
            for n, line in enumerate(lines, start=1)
        ],
        **header,
    }


def _balance(box: OneCSandbox, ref_key: str) -> dict[str, tuple[Decimal, Decimal]]:
    """Item → (Заказано, КОформлению) of one order, as its Balance answers them."""
    rows = box.db.registers[ORDERS].balance(
        f"ЗаказНаПеремещение_Key eq guid'{ref_key}'", "Номенклатура"
    )
    return {
        row["Номенклатура_Key"]: (
            Decimal(row["ЗаказаноBalance"]),
            Decimal(row["КОформлениюBalance"]),
        )
        for row in rows
    }


def _free(box: OneCSandbox, dataset: DemoDataset, item: str) -> Decimal:
    rows = box.db.registers[STOCK].balance(
        f"Склад_Key eq guid'{dataset.warehouse_key(SENDER)}'", "Номенклатура"
    )
    row = next(r for r in rows if r["Номенклатура_Key"] == item)
    return Decimal(row["ВНаличииBalance"]) - Decimal(row["КОтгрузкеBalance"])


def test_only_shipping_lines_of_orders_to_execute_are_owed(dataset: DemoDataset) -> None:
    """КОформлению is credited for «Отгрузить» lines only, never for «КОбеспечению» or a
    cancelled line; Заказано for every line not cancelled; an order «НаСогласовании» owes
    nothing; and posting leaves ТоварыНаСкладах as it was."""
    box = OneCSandbox(dataset)
    ship, supply, cancelled = _items(dataset)
    before = _free(box, dataset, ship)
    order = box.orders.create(
        _body(
            dataset,
            [
                {"Номенклатура_Key": ship, "Количество": 5},
                {"Номенклатура_Key": supply, "Количество": 4, "ВариантОбеспечения": "КОбеспечению"},
                {"Номенклатура_Key": cancelled, "Количество": 3, "Отменено": True},
            ],
        )
    )
    box.orders.post(order["Ref_Key"], operational=False)
    assert _balance(box, order["Ref_Key"]) == {
        ship: (Decimal(5), Decimal(5)),
        supply: (Decimal(4), Decimal(0)),
    }
    assert _free(box, dataset, ship) == before  # the order moves nothing in ТоварыНаСкладах
    waiting = box.orders.create(
        _body(dataset, [{"Номенклатура_Key": ship, "Количество": 2}], Статус="НаСогласовании")
    )
    box.orders.post(waiting["Ref_Key"], operational=False)
    assert _balance(box, waiting["Ref_Key"]) == {ship: (Decimal(2), Decimal(0))}


def test_ut_114_also_owes_separated_shipping_lines(dataset: DemoDataset) -> None:
    """On 11.4 «ОтгрузитьОбособленно» counts like «Отгрузить»; «Требуется» does not."""
    box = OneCSandbox(dataset, ut_version="11.4")
    ship, separated, supply = _items(dataset)
    body = _body(
        dataset,
        [
            {"Номенклатура_Key": ship, "Количество": 1},
            {
                "Номенклатура_Key": separated,
                "Количество": 2,
                "ВариантОбеспечения": "ОтгрузитьОбособленно",
            },
            {"Номенклатура_Key": supply, "Количество": 3, "ВариантОбеспечения": "Требуется"},
        ],
    )
    del body["Приоритет_Key"]
    order = box.orders.create(body)
    box.orders.post(order["Ref_Key"], operational=False)
    owed = {item: pair[1] for item, pair in _balance(box, order["Ref_Key"]).items()}
    assert owed == {ship: Decimal(1), separated: Decimal(2), supply: Decimal(0)}


def test_posting_is_refused_when_the_senders_free_stock_is_short(dataset: DemoDataset) -> None:
    """The sender's free stock less what its other posted orders still owe must cover the
    shipping lines: else 500 code −1 with UT's text naming item, warehouse and shortage, one
    line per item, and nothing recorded; supply-only lines are not controlled."""
    box = OneCSandbox(dataset)
    first, second, third = _items(dataset)
    names = {i.key: i.name for i in dataset.items}
    earlier = box.orders.create(_body(dataset, [{"Номенклатура_Key": first, "Количество": 30}]))
    box.orders.post(earlier["Ref_Key"], operational=False)
    order = box.orders.create(
        _body(
            dataset,
            [
                {"Номенклатура_Key": first, "Количество": 25},  # 50 − 30 owed = 20 free
                {"Номенклатура_Key": second, "Количество": 51},
                {"Номенклатура_Key": third, "Количество": 99, "ВариантОбеспечения": "КОбеспечению"},
            ],
        )
    )
    with pytest.raises(ODataFault) as refused:
        box.orders.post(order["Ref_Key"], operational=False)
    assert (refused.value.status, refused.value.code) == (500, "-1")
    assert refused.value.message.splitlines() == [
        f'Для отгрузки/резервирования необособленного товара "{names[first]}" на складе '
        f'"{SENDER}" недостаточно свободного остатка в количестве 5 шт',
        f'Для отгрузки/резервирования необособленного товара "{names[second]}" на складе '
        f'"{SENDER}" недостаточно свободного остатка в количестве 1 шт',
    ]
    [stored] = [o for o in box.transfer_orders() if o["Ref_Key"] == order["Ref_Key"]]
    assert stored["Posted"] is False and _balance(box, order["Ref_Key"]) == {}
    box.mark_transfer_received(earlier["Ref_Key"])  # 30 shipped: nothing owed, 20 on hand
    box.orders.patch(
        order["Ref_Key"],
        {"Товары": [{"LineNumber": "1", "Номенклатура_Key": first, "Количество": 20,
                     "КоличествоУпаковок": 20, "ВариантОбеспечения": "Отгрузить"}]},
    )  # fmt: skip
    box.orders.post(order["Ref_Key"], operational=False)
    assert _balance(box, order["Ref_Key"]) == {first: (Decimal(20), Decimal(20))}


def test_no_control_where_the_warehouse_does_not_ask_for_it(dataset: DemoDataset) -> None:
    """A sender without «Контролировать свободные остатки» posts whatever it is asked to ship."""
    box = OneCSandbox(dataset)
    warehouse = box.db.tables["Catalog_Склады"].get((dataset.warehouse_key(SENDER),))
    assert warehouse is not None
    warehouse["КонтролироватьСвободныеОстатки"] = False
    [item, *_] = _items(dataset)
    order = box.orders.create(_body(dataset, [{"Номенклатура_Key": item, "Количество": 500}]))
    box.orders.post(order["Ref_Key"], operational=False)
    assert _balance(box, order["Ref_Key"]) == {item: (Decimal(500), Decimal(500))}


@pytest.mark.parametrize("line_number", ["1", 1], ids=["string", "number"])
def test_int64_writes_line_number_either_way_and_nothing_else(
    dataset: DemoDataset, line_number: str | int
) -> None:
    """LineNumber is read as a string or a number; any other Int64 a client sends (КодСтроки,
    МаксимальныйКодСтроки) is not written: the server numbers the lines itself."""
    box = OneCSandbox(dataset)
    [item, *_] = _items(dataset)
    body = _body(dataset, [{"Номенклатура_Key": item, "Количество": 1, "КодСтроки": "77"}])
    body["Товары"][0]["LineNumber"] = line_number
    body["МаксимальныйКодСтроки"] = 99
    order = box.orders.create(body)
    [line] = order["Товары"]
    assert (line["LineNumber"], line["КодСтроки"], order["МаксимальныйКодСтроки"]) == (
        "1",
        "1",
        "1",
    )


def test_shipping_hooks_move_each_unit_once(dataset: DemoDataset) -> None:
    """A partial shipment then the rest: the sender loses, and the receiver gains, exactly the
    ordered quantity in ТоварыНаСкладах, and nothing stays owed."""
    box = OneCSandbox(dataset)
    [item, *_] = _items(dataset)
    order = box.orders.create(_body(dataset, [{"Номенклатура_Key": item, "Количество": 5}]))
    box.orders.post(order["Ref_Key"], operational=False)
    before = _free(box, dataset, item)
    box.set_transfer_outstanding(order["Ref_Key"], item, Decimal(3))
    assert _free(box, dataset, item) == before - 2
    assert _balance(box, order["Ref_Key"]) == {item: (Decimal(5), Decimal(3))}
    box.mark_transfer_received(order["Ref_Key"])
    assert _free(box, dataset, item) == before - 5
    assert _balance(box, order["Ref_Key"]) == {item: (Decimal(5), Decimal(0))}
