"""The 1C connector's reads against the emulator: warehouses, items, norms, stock, resilience."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from decimal import Decimal
from decimal import Decimal as D
from urllib.parse import unquote

import pytest

from daemon.errors import OutcomeUnknownError, PermanentError, TransientError
from daemon.model import EMPTY_GUID
from daemon.onec.connector import OneCConnector
from daemon.onec.transport import classify
from daemon.sandbox.dataset import DemoDataset, WarehouseRecord, build_demo_dataset
from daemon.sandbox.onec_emulator import PREFIX, OneCSandbox
from tests.onec_support import connected

NAMES = ["Магазин Центральный", "Бестужевых", "Контейнер"]


@pytest.fixture
def dataset() -> DemoDataset:
    return build_demo_dataset(120, seed=5)


async def keys_of(onec: OneCConnector, names: list[str] = NAMES) -> list[str]:
    found = await onec.resolve_warehouses(names)
    return [found[name].key for name in names]


async def test_warehouses_resolve_by_name(dataset: DemoDataset) -> None:
    """Names map to live warehouses case-insensitively; a deleted namesake is ignored."""
    async with connected(OneCSandbox(dataset)) as onec:
        found = await onec.resolve_warehouses(["магазин центральный", "Контейнер"])
    assert found["магазин центральный"].key == dataset.warehouse_key("Магазин Центральный")
    assert found["магазин центральный"].name == "Магазин Центральный"
    assert found["Контейнер"].key == dataset.warehouse_key("Контейнер")


async def test_missing_folder_and_injected_names_are_not_found(dataset: DemoDataset) -> None:
    """A missing name, a folder's name and a name written as a filter injection all fail clearly."""
    evil = "x' or IsFolder eq false or Description eq 'y"
    async with connected(OneCSandbox(dataset)) as onec:
        with pytest.raises(PermanentError) as caught:
            await onec.resolve_warehouses(["Нет такого", "Розница", evil])
    text = str(caught.value)
    assert "'Нет такого' not found" in text and "'Розница' not found" in text
    assert repr(evil) + " not found" in text
    assert "ambiguous" not in text


async def test_quoted_warehouse_name(dataset: DemoDataset) -> None:
    """A warehouse called Склад "О'Брайен" resolves (quotes doubled, nothing broken)."""
    odd = WarehouseRecord("5a4e3c1b-0000-4000-8000-000000000001", 'Склад "О\'Брайен" & Co #1+2')
    dataset.warehouses.append(odd)
    async with connected(OneCSandbox(dataset)) as onec:
        found = await onec.resolve_warehouses([odd.name])
    assert found[odd.name].key == odd.key


async def test_ambiguous_name_needs_a_pinned_key(dataset: DemoDataset) -> None:
    """Two live warehouses with one name are refused; pinning a Ref_Key in config resolves it."""
    twin = WarehouseRecord("5a4e3c1b-0000-4000-8000-000000000002", "Бестужевых")
    dataset.warehouses.append(twin)
    box = OneCSandbox(dataset)
    async with connected(box) as onec:
        with pytest.raises(PermanentError, match=r"ambiguous.*onec\.warehouse_keys"):
            await onec.resolve_warehouses(["Бестужевых"])
    async with connected(box, warehouse_keys={"Бестужевых": twin.key.upper()}) as onec:
        found = await onec.resolve_warehouses(["Бестужевых", "Контейнер"])
    assert found["Бестужевых"].key == twin.key
    folder = next(w for w in dataset.warehouses if w.is_folder)
    async with connected(box, warehouse_keys={"Бестужевых": folder.key}) as onec:
        with pytest.raises(PermanentError, match="is a folder"):
            await onec.resolve_warehouses(["Бестужевых"])


async def test_items_skip_folders_and_deleted_across_pages(dataset: DemoDataset) -> None:
    """All live items, each once, paged with a small page size; folders and deleted left out."""
    box = OneCSandbox(dataset)
    async with connected(box, page_size=7) as onec:
        await onec.load_metadata()
        box.reset_counters()
        items = await onec.read_items()
    live = {i.key: i for i in dataset.items if not i.is_folder and not i.deletion_mark}
    assert len(items) == len(live) == len({i.key for i in items})
    for item in items:
        source = live[item.key]
        assert (item.code, item.article, item.name) == (source.code, source.article, source.name)
    pages = -(-len(live) // 7)
    assert box.requests_by_kind == {"collection": pages, "count": 1}


async def test_norms_resolve_like_ut(dataset: DemoDataset) -> None:
    """Detailed rows win, group members take the group's values, inactive/other methods drop out."""
    async with connected(OneCSandbox(dataset)) as onec:
        target, first, _ = await keys_of(onec)
        norms = await onec.read_norms([target, first])
    seen: set[str] = set()
    for key, expected in dataset.expected.items():
        norm = norms.get((key, target))
        case = expected.case
        seen.add(case)
        if case in ("no_norm", "inactive_norm", "other_method"):
            assert norm is None, case
            continue
        assert norm is not None, case
        if case == "group_norm":
            assert (norm.minimum, norm.maximum, norm.source) == (D(10), D(20), "group")
        elif case == "detailed_over_group":
            assert (norm.minimum, norm.maximum, norm.source) == (D(5), D(8), "item")
        elif case in ("min_only",):
            assert (norm.minimum, norm.maximum) == (D(10), None)
        elif case == "packaging":
            assert norm.package_size in (Decimal(6), Decimal(4)) and norm.package_key
        else:
            assert norm.source == "item" and norm.package_size is None and norm.minimum > 0
    assert {"group_norm", "packaging", "inactive_norm", "other_method"} <= seen
    donor_groups = [n for (_, wh), n in norms.items() if wh == first and n.source == "group"]
    assert donor_groups and all(n.minimum == 10 for n in donor_groups)


async def test_free_stock_is_on_hand_minus_reserved(dataset: DemoDataset) -> None:
    """ВНаличии − КОтгрузке summed over split rows, only for the warehouses asked."""
    box = OneCSandbox(dataset)
    async with connected(box) as onec:
        keys = await keys_of(onec)
        box.reset_counters()
        free = await onec.read_free_stock(keys)
    expected: dict[tuple[str, str], Decimal] = {}
    for row in dataset.stock:
        if row.warehouse_key in keys:
            pair = (row.item_key, row.warehouse_key)
            expected[pair] = expected.get(pair, Decimal(0)) + row.in_stock - row.to_ship
    assert free == expected
    reserved = [k for k, e in dataset.expected.items() if e.case == "reserved"]
    assert all(free[(k, keys[0])] == 4 for k in reserved)
    assert box.requests_by_kind == {"balance": 3}


async def test_reads_use_the_allowed_concurrency(dataset: DemoDataset) -> None:
    """Pages are fetched concurrently, never more than max_concurrency at once."""
    box = OneCSandbox(dataset)
    async with connected(box, page_size=10, max_concurrency=3) as onec:
        await onec.load_metadata()
        box.latency_s = 0.05
        box.reset_counters()
        started = time.monotonic()
        items = await onec.read_items()
        elapsed = time.monotonic() - started
    pages = -(-len(items) // 10)
    assert box.max_in_flight == 3
    # First page, count, then the rest three at a time — far below one page after another.
    assert elapsed < (2 + -(-(pages - 1) // 3) + 2) * 0.05
    assert elapsed < pages * 0.05


async def test_concurrent_reads_share_one_limit(dataset: DemoDataset) -> None:
    """Items, norms and stock read together stay within max_concurrency in total."""
    box = OneCSandbox(dataset)
    async with connected(box, page_size=10, max_concurrency=4) as onec:
        keys = await keys_of(onec)
        box.latency_s = 0.02
        box.reset_counters()
        await asyncio.gather(onec.read_items(), onec.read_norms(keys), onec.read_free_stock(keys))
    assert box.max_in_flight == 4


async def test_retries_ride_out_faults(dataset: DemoDataset) -> None:
    """Random 500/502/hangs are retried; the result equals a fault-free read."""
    box = OneCSandbox(dataset)
    async with connected(box) as onec:
        clean = await onec.read_items()
    async with connected(
        box, page_size=12, max_concurrency=1, read_attempts=10, request_timeout_s=0.1
    ) as onec:
        await onec.load_metadata()
        box.fault_rate, box.hang_s, box.seed = 0.5, 0.3, 4
        box.reset_counters()
        items = await onec.read_items()
    assert items == clean
    faults = {k for k in box.requests_by_kind if k.startswith("fault_")}
    assert faults == {"fault_500", "fault_502", "fault_timeout"}


async def test_a_read_survives_1c_internal_errors(dataset: DemoDataset) -> None:
    """GETs answered 500 with 1C's generic code -1 (a restart, a lock) are retried and succeed."""
    box = OneCSandbox(dataset)
    async with connected(box, read_attempts=4) as onec:
        await onec.load_metadata()
        clean = await onec.read_items()
        box.reset_counters()
        box.internal_error_gets = 3
        items = await onec.read_items()
    assert items == clean
    assert box.requests_by_kind["fault_internal_error"] == 3 and box.internal_error_gets == 0


async def test_internal_errors_past_the_budget_are_transient(dataset: DemoDataset) -> None:
    """500 code -1 on every try gives up after read_attempts with a TransientError naming it."""
    box = OneCSandbox(dataset)
    async with connected(box, read_attempts=2) as onec:
        await onec.load_metadata()
        box.internal_error_gets = 100
        sent = onec.request_count
        with pytest.raises(TransientError) as caught:
            await onec.resolve_warehouses(NAMES)
        assert onec.request_count - sent == 2
    assert (caught.value.status, caught.value.code) == (500, "-1")


async def test_a_500_with_another_code_is_a_permanent_read_error() -> None:
    """A 500 whose odata.error names another code is a refusal: permanent, not retried."""
    body = b'{"odata.error":{"code":"3","message":{"lang":"ru","value":"refused"}}}'
    error = classify(500, body, what="stock balance", unsafe=False, user="hub")
    assert isinstance(error, PermanentError) and error.code == "3"
    generic = b'{"odata.error":{"code":"-1","message":{"lang":"ru","value":"x"}}}'
    write = classify(500, generic, what="a transfer order", unsafe=True, user="hub")
    assert isinstance(write, PermanentError) and not isinstance(write, OutcomeUnknownError)


async def test_retries_are_bounded(dataset: DemoDataset) -> None:
    """When 1C keeps failing, a read gives up after read_attempts with a TransientError."""
    box = OneCSandbox(dataset)
    async with connected(box, read_attempts=3) as onec:
        await onec.load_metadata()
        box.fault_rate, box.hang_s = 1.0, 0.0
        sent = onec.request_count
        with pytest.raises(TransientError):
            await onec.resolve_warehouses(NAMES)
        assert onec.request_count - sent == 3
        with pytest.raises(TransientError):  # concurrent requests: the error, not a group
            await onec.read_items()


async def test_wrong_password_is_permanent_and_not_retried(dataset: DemoDataset) -> None:
    """401 is a PermanentError, no request is sent twice; the password appears nowhere in it."""
    box = OneCSandbox(dataset)
    async with connected(box, password="Wr0ng-пароль") as onec:
        with pytest.raises(PermanentError) as caught:
            await onec.read_items()
    assert caught.value.status == 401
    # $metadata, the first items page and the items count go out together; none again.
    sent = list(box.raw_requests)
    assert len(sent) == len(set(sent)) == box.request_count <= 3
    assert "Wr0ng" not in caught.value.describe() and "Wr0ng" not in repr(onec)


async def test_cold_start_is_survived(dataset: DemoDataset) -> None:
    """A first request slower than the timeout is retried, and the second one answers."""
    box = OneCSandbox(dataset)
    box.cold_start_s = 0.4
    async with connected(box, request_timeout_s=0.15) as onec:
        found = await onec.resolve_warehouses(NAMES)
    assert len(found) == 3
    # $metadata and the lookup go out together: the one that met the cold start went twice.
    sent = Counter(box.raw_requests)
    assert sorted(sent.values()) == [1, 2] and any("$metadata" in raw for raw in sent)


async def test_wire_format_has_no_plus_and_stays_short(dataset: DemoDataset) -> None:
    """Every request uses %20 for spaces, never '+', and stays under max_url_bytes."""
    extra = [f"Склад {n} с очень длинным названием" for n in range(16)]
    dataset.warehouses.extend(
        WarehouseRecord(f"5a4e3c1b-0000-4000-8000-{n:012d}", name) for n, name in enumerate(extra)
    )
    box = OneCSandbox(dataset)
    async with connected(box, max_url_bytes=2048) as onec:
        found = await onec.resolve_warehouses(NAMES + extra)
        keys = [w.key for w in found.values()]
        await onec.read_norms(keys)
        await onec.read_items()
    assert len(found) == len(NAMES) + len(extra)
    requests = [r.split(" ", 1)[1] for r in box.raw_requests]
    assert sum("Catalog_%D0%A1%D0%BA%D0%BB%D0%B0%D0%B4%D1%8B?" in r for r in requests) > 1
    for raw in requests:
        assert "+" not in raw and " " not in raw
        assert len(raw) - len(PREFIX) <= 2048
    assert any("%20eq%20" in raw for raw in requests)


async def test_emulator_version_114_norms(dataset: DemoDataset) -> None:
    """On an 11.4 base the group dimension is Группировка_Key and group norms still resolve."""
    async with connected(OneCSandbox(dataset, ut_version="11.4")) as onec:
        schema = await onec.load_metadata()
        target = (await keys_of(onec))[0]
        norms = await onec.read_norms([target])
    assert schema.version == "11.4" and schema.group_field == "Группировка_Key"
    groups = [k for k, e in dataset.expected.items() if e.case == "group_norm"]
    assert groups and all(norms[(k, target)].source == "group" for k in groups)
    assert all(wh != EMPTY_GUID for _, wh in norms)


def norm_requests(box: OneCSandbox) -> list[str]:
    """The norm register requests among those sent, decoded."""
    return [unquote(r) for r in box.raw_requests if "ТоварныеОграничения" in unquote(r)]


async def test_norms_of_all_warehouses_come_in_one_paged_query(dataset: DemoDataset) -> None:
    """Three warehouses and the group settings are one query (one count, disjoint pages),
    and give what three queries give."""
    box = OneCSandbox(dataset)
    async with connected(box, page_size=7) as onec:
        keys = await keys_of(onec)
        separately = {}
        for key in keys:
            separately.update(await onec.read_norms([key]))
        box.reset_counters()
        together = await onec.read_norms(keys)
    assert together == separately and len(together) > 7
    sent = norm_requests(box)
    counts = [r for r in sent if "/$count" in r]
    assert len(counts) == 1 and all(f"Склад_Key eq guid'{key}'" in counts[0] for key in keys)
    assert f"Склад_Key eq guid'{EMPTY_GUID}'" in counts[0]
    rows = sum(
        1
        for n in dataset.norms
        if n.active
        and n.characteristic_key == EMPTY_GUID
        and n.warehouse_key in [*keys, EMPTY_GUID]
    )
    assert len(sent) == -(-rows // 7) + 1  # the pages of the one query and its count


async def test_norm_queries_are_cut_to_fit_the_url_limit(dataset: DemoDataset) -> None:
    """When the warehouses do not fit one URL they are queried in batches, with equal norms."""
    box = OneCSandbox(dataset)
    async with connected(box, page_size=7) as onec:
        keys = await keys_of(onec)
        together = await onec.read_norms(keys)
    async with connected(box, page_size=7, max_url_bytes=1800) as onec:
        box.reset_counters()
        batched = await onec.read_norms(keys)
    assert batched == together
    counts = [r for r in norm_requests(box) if "/$count" in r]
    assert len(counts) == 3 and all(r.count("Склад_Key eq") == 1 for r in counts)
    assert all(len(r.split(" ", 1)[1]) - len(PREFIX) <= 1800 for r in box.raw_requests)


async def test_a_small_package_catalog_is_read_with_the_norms(dataset: DemoDataset) -> None:
    """A catalog of a few pages is read whole beside the norms; a larger one only by key."""
    box = OneCSandbox(dataset)
    results = []
    for page_size, whole in ((2, True), (1, False)):  # 8 packages: 4 pages, then 8
        async with connected(box, page_size=page_size) as onec:
            keys = await keys_of(onec)
            box.reset_counters()
            results.append(await onec.read_norms(keys))
        sent = [unquote(r) for r in box.raw_requests if "УпаковкиЕдиницыИзмерения" in unquote(r)]
        pages = [r for r in sent if "$skip=" in r]
        by_key = [r for r in sent if "Ref_Key eq guid" in r]
        assert (len(pages), len(by_key)) == ((len(dataset.packages) // 2, 0) if whole else (0, 1))
    assert results[0] == results[1]
    assert any(norm.package_size not in (None, 1) for norm in results[0].values())
