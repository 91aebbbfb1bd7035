"""The UT 11 OData emulator on the wire: formats, auth, errors, registers, writes, knobs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import yarl

from daemon.model import EMPTY_GUID
from daemon.sandbox.dataset import DemoDataset, build_demo_dataset
from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox

ORDER = "Document_ЗаказНаПеремещение"
STOCK = "AccumulationRegister_ТоварыНаСкладах"


def balance(register: str, condition: str, dimensions: str) -> str:
    """A Balance call in the guide's form: the condition's quotes as they are."""
    return f"{register}/Balance(Condition='{condition}',Dimensions='{dimensions}')"


class Wire:
    """A raw client: the URL is sent exactly as written here."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def call(
        self, method: str, path: str, query: str = "$format=json", body: Any = None
    ) -> tuple[int, bytes, dict[str, str]]:
        url = yarl.URL(
            self.base + quote(path, safe="/(),'=_-$") + (f"?{query}" if query else ""), encoded=True
        )
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        async with self.session.request(method, url, data=data) as response:
            return response.status, await response.read(), dict(response.headers)

    async def json(
        self, method: str, path: str, query: str = "$format=json", body: Any = None
    ) -> tuple[int, Any]:
        status, raw, _ = await self.call(method, path, query, body)
        return status, json.loads(raw) if raw else None


@pytest.fixture
def dataset() -> DemoDataset:
    return build_demo_dataset(64, seed=3)


@pytest.fixture
async def sandbox(dataset: DemoDataset) -> AsyncIterator[tuple[OneCSandbox, Wire]]:
    box = OneCSandbox(dataset, username="Робот", password="пароль")
    async with run_onec_sandbox(box) as base:
        headers = {"Authorization": aiohttp.encode_basic_auth("Робот", "пароль")}
        async with aiohttp.ClientSession(headers=headers) as session:
            yield box, Wire(session, base)


def q(text: str) -> str:
    return quote(text, safe="'(),$")


async def test_json_only_with_format_json(sandbox: tuple[OneCSandbox, Wire]) -> None:
    """Without $format=json the answer is Atom XML; with it, the odata.metadata envelope."""
    _, wire = sandbox
    status, body, _ = await wire.call("GET", "Catalog_Склады", "")
    assert status == 200 and body.startswith(b"<?xml") and b"<feed" in body
    status, payload = await wire.json("GET", "Catalog_Склады")
    assert status == 200
    assert payload["odata.metadata"].endswith("/$metadata#Catalog_Склады")
    assert {"Ref_Key", "Description", "IsFolder", "DeletionMark"} <= set(payload["value"][0])
    assert "Code" not in payload["value"][0]


async def test_basic_auth_utf8_and_401(sandbox: tuple[OneCSandbox, Wire]) -> None:
    """A UTF-8 Cyrillic login is accepted; a wrong password or none gets 401."""
    _, wire = sandbox
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(wire.base + "?$format=json") as response:
            assert response.status == 401
            assert "Basic" in response.headers["WWW-Authenticate"]
        wrong = {"Authorization": aiohttp.encode_basic_auth("Робот", "нет")}
        async with anonymous.get(wire.base, headers=wrong) as response:
            assert response.status == 401
    status, _ = await wire.json("GET", "")
    assert status == 200


async def test_plus_is_not_a_space(sandbox: tuple[OneCSandbox, Wire]) -> None:
    """'+' in the query is a parse error (400 code 14) like on the real platform; %20 works."""
    _, wire = sandbox
    status, payload = await wire.json(
        "GET", "Catalog_Склады", "$format=json&$filter=IsFolder+eq+false"
    )
    assert status == 400 and payload["odata.error"]["code"] == "14"
    status, payload = await wire.json(
        "GET", "Catalog_Склады", "$format=json&$filter=IsFolder%20eq%20false"
    )
    assert status == 200 and all(not row["IsFolder"] for row in payload["value"])


async def test_error_codes(sandbox: tuple[OneCSandbox, Wire], dataset: DemoDataset) -> None:
    """Unknown $select → 400/6 echoing the name; bad key → 404/9; unknown set → 404;
    bad GUID → 400/1."""
    _, wire = sandbox
    status, payload = await wire.json(
        "GET", "Catalog_Склады", "$format=json&$select=" + q("НетТакогоПоля")
    )
    assert status == 400
    assert payload["odata.error"] == {
        "code": "6",
        "message": {"lang": "ru", "value": "Сегмент пути НетТакогоПоля не найден!"},
    }
    status, payload = await wire.json("GET", f"Catalog_Склады(guid'{EMPTY_GUID}')")
    assert (status, payload["odata.error"]["code"]) == (404, "9")
    status, _ = await wire.json("GET", "Catalog_НетТакого")
    assert status == 404
    status, payload = await wire.json("GET", "Catalog_Склады(guid'nope')")
    assert (status, payload["odata.error"]["code"]) == (400, "1")


async def test_paging_count_and_inlinecount(
    sandbox: tuple[OneCSandbox, Wire], dataset: DemoDataset
) -> None:
    """$top/$skip with $orderby page stably; /$count is a bare number; odata.count a string."""
    _, wire = sandbox
    live = sorted(i.key for i in dataset.items if not i.is_folder and not i.deletion_mark)
    where = q("IsFolder eq false and DeletionMark eq false")
    status, raw, _ = await wire.call("GET", "Catalog_Номенклатура/$count", f"$filter={where}")
    assert (status, raw) == (200, str(len(live)).encode())
    seen: list[str] = []
    for skip in range(0, len(live), 10):
        query = (
            f"$format=json&$filter={where}&$orderby=Ref_Key&$top=10&$skip={skip}&$select=Ref_Key"
        )
        _, payload = await wire.json("GET", "Catalog_Номенклатура", query)
        seen += [row["Ref_Key"] for row in payload["value"]]
    assert seen == live
    _, payload = await wire.json(
        "GET", "Catalog_Номенклатура", "$format=json&$inlinecount=allpages&$top=1"
    )
    assert payload["odata.count"] == str(len(dataset.items)) and len(payload["value"]) == 1
    assert "odata.nextLink" not in payload


async def test_metadata_is_edmx_with_bindable_functions(sandbox: tuple[OneCSandbox, Wire]) -> None:
    """$metadata lists entity sets, Balance bound to registers, Post/Unpost bound to the order."""
    _, wire = sandbox
    status, raw, headers = await wire.call("GET", "$metadata", "")
    text = raw.decode()
    assert status == 200 and headers["Content-Type"].startswith("application/xml")
    assert '<EntitySet Name="Catalog_Номенклатура"' in text
    assert '<FunctionImport Name="Balance" IsBindable="true"' in text
    assert 'Type="StandardODATA.AccumulationRegister_ТоварыНаСкладах"' in text
    assert '<Property Name="ГруппировкаТоварныхОграничений_Key"' in text
    assert "AccumulationRegister_СвободныеОстатки" not in text
    assert '<FunctionImport Name="Post"' in text and '<FunctionImport Name="Unpost"' in text


async def test_version_switch_114(dataset: DemoDataset) -> None:
    """The 11.4 switch renames the group dimension and publishes СвободныеОстатки."""
    box = OneCSandbox(dataset, ut_version="11.4")
    text = box.metadata_xml().decode()
    assert '<Property Name="Группировка_Key"' in text
    assert '<EntitySet Name="AccumulationRegister_СвободныеОстатки"' in text
    assert "Приоритет_Key" not in text
    assert '<Member Name="Требуется"' in text


async def test_balance_sums_split_rows_by_dimensions(
    sandbox: tuple[OneCSandbox, Wire], dataset: DemoDataset
) -> None:
    """Balance with a quoted Condition and Dimensions sums Назначение/Серия rows, omits zeros."""
    _, wire = sandbox
    warehouse = dataset.warehouse_key("Бестужевых")
    path = balance(STOCK, f"Склад_Key eq guid'{warehouse}'", "Номенклатура,Склад")
    status, payload = await wire.json("GET", path)
    assert status == 200
    expected: dict[str, Any] = {}
    for row in dataset.stock:
        if row.warehouse_key == warehouse:
            expected[row.item_key] = expected.get(row.item_key, 0) + row.in_stock
    got = {row["Номенклатура_Key"]: row["ВНаличииBalance"] for row in payload["value"]}
    assert got == {k: v for k, v in expected.items() if v}
    assert set(payload["value"][0]) == {
        "Номенклатура_Key",
        "Склад_Key",
        "ВНаличииBalance",
        "КОтгрузкеBalance",
    }
    for bare in (
        "AccumulationRegister_ТоварыНаСкладах/Balance",
        "AccumulationRegister_ТоварыНаСкладах/Balance()",
    ):
        status, payload = await wire.json("GET", bare)
        assert status == 200 and "Серия_Key" in payload["value"][0]
    status, payload = await wire.json("GET", "Catalog_Склады/Balance")
    assert (status, payload["odata.error"]["code"]) == (400, "6")


def _order(dataset: DemoDataset, **overrides: Any) -> dict[str, Any]:
    """An order of 5 units of an item Бестужевых has at least 5 free of (UT controls it)."""
    sender = dataset.warehouse_key("Бестужевых")
    free: dict[str, Decimal] = {}
    for record in dataset.stock:
        if record.warehouse_key == sender:
            free[record.item_key] = free.get(record.item_key, Decimal(0)) + (
                record.in_stock - record.to_ship
            )
    item = next(i for i in dataset.items if not i.is_folder and free.get(i.key, 0) >= 5)
    body: dict[str, Any] = {
        "Date": "2026-03-10T09:00:00",
        "Организация_Key": dataset.organizations[0].key,
        "СкладОтправитель_Key": dataset.warehouse_key("Бестужевых"),
        "СкладПолучатель_Key": dataset.warehouse_key("Магазин Центральный"),
        "ХозяйственнаяОперация": "ПеремещениеТоваров",
        "Статус": "КВыполнению",
        "ЖелаемаяДатаПоступления": "2026-03-12T00:00:00",
        "Приоритет_Key": dataset.priorities[1].key,
        "Комментарий": "test",
        "НеизвестноеПоле": "ignored",
        "Товары": [
            {
                "LineNumber": "1",
                "Номенклатура_Key": item.key,
                "Количество": 5,
                "КоличествоУпаковок": 5,
                "ВариантОбеспечения": "Отгрузить",
            }
        ],
    }
    body.update(overrides)
    return body


async def test_create_honours_ref_key_and_refuses_a_duplicate(
    sandbox: tuple[OneCSandbox, Wire], dataset: DemoDataset
) -> None:
    """201 + Location + full object with Int64 as strings; the same Ref_Key twice is refused."""
    _, wire = sandbox
    ref = "11111111-2222-3333-4444-555555555555"
    status, raw, headers = await wire.call("POST", ORDER, body=_order(dataset, Ref_Key=ref))
    created = json.loads(raw)
    assert status == 201
    assert created["Ref_Key"] == ref and created["Posted"] is False
    assert len(created["Number"]) == 11
    assert created["Товары"][0]["LineNumber"] == "1" and created["Товары"][0]["КодСтроки"] == "1"
    assert created["odata.metadata"].endswith(f"#{ORDER}/@Element")
    assert "НеизвестноеПоле" not in created
    assert ref in headers["Location"] and headers["Location"].isascii()
    status, payload = await wire.json("POST", ORDER, body=_order(dataset, Ref_Key=ref))
    assert status == 500 and payload["odata.error"]["code"] == "-1"


async def test_line_without_line_number_is_an_opaque_500(
    sandbox: tuple[OneCSandbox, Wire], dataset: DemoDataset
) -> None:
    """A Товары row without LineNumber fails the whole write with 500 code −1; nothing is stored."""
    box, wire = sandbox
    body = _order(dataset)
    del body["Товары"][0]["LineNumber"]
    status, payload = await wire.json("POST", ORDER, body=body)
    assert status == 500 and payload["odata.error"]["code"] == "-1"
    assert box.transfer_orders() == []
    status, payload = await wire.json("POST", "Document_ЗаказНаПеремещение_Товары", body={})
    assert (status, payload["odata.error"]["code"]) == (400, "13")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"СкладПолучатель_Key": None}, "должен отличаться"),
        ({"Приоритет_Key": EMPTY_GUID}, '"Приоритет"'),
        ({"ЖелаемаяДатаПоступления": "2026-03-01T00:00:00"}, "Желаемая дата"),
        ({"Товары": []}, "Товары"),
    ],
)
async def test_posting_rules(
    sandbox: tuple[OneCSandbox, Wire], dataset: DemoDataset, overrides: dict[str, Any], message: str
) -> None:
    """Posting re-validates the order; a refusal is 500 code −1 with the reason, the draft stays."""
    box, wire = sandbox
    if overrides.get("СкладПолучатель_Key", "") is None:
        overrides["СкладПолучатель_Key"] = dataset.warehouse_key("Бестужевых")
    _, created = await wire.json("POST", ORDER, body=_order(dataset, **overrides))
    status, payload = await wire.json(
        "POST",
        f"{ORDER}(guid'{created['Ref_Key']}')/Post",
        "$format=json&PostingModeOperational=false",
    )
    assert status == 500 and payload["odata.error"]["code"] == "-1"
    assert message in payload["odata.error"]["message"]["value"]
    assert box.transfer_orders()[0]["Posted"] is False


async def test_zero_quantity_refused_and_valid_order_posts(
    sandbox: tuple[OneCSandbox, Wire], dataset: DemoDataset
) -> None:
    """Quantities must be positive; a correct order posts, writes the order register, unposts."""
    _, wire = sandbox
    zero = _order(dataset)
    zero["Товары"][0]["Количество"] = 0
    _, created = await wire.json("POST", ORDER, body=zero)
    status, _ = await wire.json(
        "POST",
        f"{ORDER}(guid'{created['Ref_Key']}')/Post",
        "$format=json&PostingModeOperational=false",
    )
    assert status == 500
    _, created = await wire.json("POST", ORDER, body=_order(dataset))
    ref = created["Ref_Key"]
    status, _ = await wire.json(
        "POST", f"{ORDER}(guid'{ref}')/Post", "$format=json&PostingModeOperational=false"
    )
    assert status == 200
    _, row = await wire.json("GET", f"{ORDER}(guid'{ref}')")
    assert row["Posted"] is True and row["DataVersion"] != created["DataVersion"]
    path = balance(
        "AccumulationRegister_ЗаказыНаПеремещение",
        f"ЗаказНаПеремещение_Key eq guid'{ref}'",
        "ЗаказНаПеремещение,Номенклатура",
    )
    _, payload = await wire.json("GET", path)
    assert payload["value"][0]["КОформлениюBalance"] == 5
    await wire.json("POST", f"{ORDER}(guid'{ref}')/Unpost", "$format=json")
    _, payload = await wire.json("GET", path)
    assert payload["value"] == []


async def test_operational_posting_of_a_past_date_is_refused(
    sandbox: tuple[OneCSandbox, Wire], dataset: DemoDataset
) -> None:
    """PostingModeOperational=true only works for today's documents."""
    _, wire = sandbox
    _, created = await wire.json("POST", ORDER, body=_order(dataset))
    status, payload = await wire.json(
        "POST",
        f"{ORDER}(guid'{created['Ref_Key']}')/Post",
        "$format=json&PostingModeOperational=true",
    )
    assert status == 500 and "задним числом" in payload["odata.error"]["message"]["value"]


async def test_patch_deletion_mark_unposts(
    sandbox: tuple[OneCSandbox, Wire], dataset: DemoDataset
) -> None:
    """PATCH answers 200 with the full object; marking a posted order for deletion unposts it."""
    _, wire = sandbox
    _, created = await wire.json("POST", ORDER, body=_order(dataset))
    ref = created["Ref_Key"]
    await wire.json(
        "POST", f"{ORDER}(guid'{ref}')/Post", "$format=json&PostingModeOperational=false"
    )
    status, row = await wire.json("PATCH", f"{ORDER}(guid'{ref}')", body={"DeletionMark": True})
    assert status == 200 and row["DeletionMark"] is True and row["Posted"] is False
    assert row["Комментарий"] == "test"


async def test_drop_after_commit_keeps_the_order(
    sandbox: tuple[OneCSandbox, Wire], dataset: DemoDataset
) -> None:
    """drop_after_commit: the client sees a dropped connection, the order exists anyway."""
    box, wire = sandbox
    box.drop_after_commit = 1
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await wire.call("POST", ORDER, body=_order(dataset))
    assert len(box.transfer_orders()) == 1 and box.drop_after_commit == 0
    status, _, _ = await wire.call("POST", ORDER, body=_order(dataset))
    assert status == 201


async def test_faults_and_cold_start(sandbox: tuple[OneCSandbox, Wire]) -> None:
    """fault_rate=1 gives 500 without odata.error, 502 or a hang that drops; cold start is once."""
    box, wire = sandbox
    box.fault_rate, box.hang_s, box.seed = 1.0, 0.05, 11
    outcomes: set[int | str] = set()
    for _ in range(12):
        try:
            status, raw, _ = await wire.call("GET", "Catalog_Склады")
            assert b"odata.error" not in raw
            outcomes.add(status)
        except aiohttp.ServerDisconnectedError:
            outcomes.add("dropped")
    assert outcomes == {500, 502, "dropped"}
    box.fault_rate = 0.0


async def test_cold_start_delays_only_the_first_request(dataset: DemoDataset) -> None:
    """cold_start_s holds the first request; the next ones answer at normal speed."""
    box = OneCSandbox(dataset)
    box.cold_start_s = 0.3
    async with run_onec_sandbox(box) as base:
        headers = {"Authorization": aiohttp.encode_basic_auth("hub", "sandbox")}
        async with aiohttp.ClientSession(headers=headers) as session:
            timings = []
            for _ in range(2):
                started = time.monotonic()
                async with session.get(base + "?$format=json") as response:
                    assert response.status == 200
                timings.append(time.monotonic() - started)
    assert timings[0] >= 0.3 > timings[1]


async def test_requests_are_served_concurrently(sandbox: tuple[OneCSandbox, Wire]) -> None:
    """Latency is per request, not serialised: 8 parallel requests take about one latency."""
    box, wire = sandbox
    box.latency_s = 0.1
    started = time.monotonic()
    results = await asyncio.gather(*(wire.call("GET", "Catalog_Склады") for _ in range(8)))
    assert all(status == 200 for status, _, _ in results)
    assert time.monotonic() - started < 0.5
    assert box.max_in_flight == 8


async def test_filtered_pages_reuse_one_filtering(dataset: DemoDataset) -> None:
    """Paging a filtered set filters once (cached per filter and order until the table changes)."""
    box = OneCSandbox(dataset)
    table = box.db.tables["Catalog_Номенклатура"]
    first = table.select("IsFolder eq false", "Ref_Key")
    assert table.select("IsFolder eq false", "Ref_Key") is first
    table.touch()
    assert table.select("IsFolder eq false", "Ref_Key") is not first


async def test_mark_received_moves_stock_and_closes(
    sandbox: tuple[OneCSandbox, Wire], dataset: DemoDataset
) -> None:
    """mark_transfer_received: outstanding 0, status Закрыт, goods moved sender → receiver."""
    box, wire = sandbox
    _, created = await wire.json("POST", ORDER, body=_order(dataset))
    ref = created["Ref_Key"]
    await wire.json(
        "POST", f"{ORDER}(guid'{ref}')/Post", "$format=json&PostingModeOperational=false"
    )
    item = created["Товары"][0]["Номенклатура_Key"]
    target = dataset.warehouse_key("Магазин Центральный")

    async def on_hand() -> Any:
        condition = f"Склад_Key eq guid'{target}' and Номенклатура_Key eq guid'{item}'"
        path = balance(STOCK, condition, "Номенклатура")
        _, payload = await wire.json("GET", path)
        return sum(row["ВНаличииBalance"] for row in payload["value"])

    before = await on_hand()
    box.mark_transfer_received(ref)
    assert await on_hand() == before + 5
    order = box.transfer_orders()[0]
    assert order["status"] == "Закрыт" and order["Posted"] is True
    assert datetime.fromisoformat(order["Date"]) == datetime(2026, 3, 10, 9, 0)


async def test_write_off_leaves_nothing_outstanding_and_moves_no_goods(
    sandbox: tuple[OneCSandbox, Wire], dataset: DemoDataset
) -> None:
    """write_off_transfer (the crash soak's "closed early"): КОформлению 0 on every line,
    ТоварыНаСкладах unchanged at both ends, so the same deficit can be ordered again."""
    box, wire = sandbox
    _, created = await wire.json("POST", ORDER, body=_order(dataset))
    ref = created["Ref_Key"]
    await wire.json(
        "POST", f"{ORDER}(guid'{ref}')/Post", "$format=json&PostingModeOperational=false"
    )
    owed = balance(
        "AccumulationRegister_ЗаказыНаПеремещение",
        f"ЗаказНаПеремещение_Key eq guid'{ref}'",
        "ЗаказНаПеремещение,Номенклатура",
    )
    stock = f"{STOCK}/Balance(Dimensions='Номенклатура,Склад')"
    _, before = await wire.json("GET", stock)
    _, payload = await wire.json("GET", owed)
    assert payload["value"][0]["КОформлениюBalance"] == 5
    box.write_off_transfer(ref)
    _, payload = await wire.json("GET", owed)
    assert all(row["КОформлениюBalance"] == 0 for row in payload["value"])
    _, after = await wire.json("GET", stock)
    assert after["value"] == before["value"]
