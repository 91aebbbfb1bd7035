"""The 1C connector fed malformed OData answers (issue #9): it never crashes, hangs or guesses.

Every read (``$metadata``, warehouses, items, norms and packages, stock balances, the hub's open
transfer orders and their balances, ``check()``) and every step of the write (create, post,
re-read, lookup) is called through ``tests.hostile.HostileProxy`` in front of the real emulator
while one kind of answer is spoiled. The outcome must be a ``daemon.errors`` connector error
with a message, or a result equal to what the unspoiled answers give, except for entries built
from the one row that was broken (which may be skipped, never filled with garbage). A spoiled
answer to a write is never reported as a delivered order, and a clean retry that looks the
order up first always ends with exactly one posted order.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from structlog.testing import capture_logs

from daemon.errors import ConnectorError, PermanentError, TransientError
from daemon.model import (
    EMPTY_GUID,
    DeliveredDocument,
    Item,
    Norm,
    TransferLine,
    TransferOrderDocument,
    Warehouse,
    deterministic_uuid,
)
from daemon.onec.connector import OneCConnector
from daemon.onec.metadata import OneCSchema
from daemon.onec.odata import is_guid
from daemon.onec.settings import OneCSettings
from daemon.ports import OpenTransferLine
from daemon.sandbox.dataset import StockRecord, build_demo_dataset
from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox
from tests.hostile import (
    ATOM_FEED,
    HTML_PAGE,
    Edit,
    HostileProxy,
    JsonMutation,
    Path,
    Raw,
    Replace,
    Spoiler,
    XmlDrop,
    byte_spoilers,
    drop,
    hostile,
    json_mutations,
    put,
    run_capped,
)
from tests.hostile import assert_classified as classified_for
from tests.hostile import outcome as outcome_within

T = TypeVar("T")

SYSTEM = "1c"
HANG_S = 15.0
TARGET, FIRST, SECOND = "Магазин Центральный", "Бестужевых", "Контейнер"
NAMES = [TARGET, FIRST, SECOND]

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    # The emulator and the proxy are started once per test and reset between examples;
    # every example gets its own connector.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def route(method: str, entity_set: str, tail: str = "") -> str:
    """A proxy route for ``method`` on ``entity_set`` (percent-encoded as the connector sends)."""
    return rf"^{method} [^?]*/{re.escape(quote(entity_set))}{tail}"


ROUTE_METADATA = r"^GET [^?]*/\$metadata"
ROUTE_WAREHOUSES = route("GET", "Catalog_Склады")
ROUTE_ITEMS = route("GET", "Catalog_Номенклатура")
ROUTE_NORMS = route("GET", "InformationRegister_ТоварныеОграничения")
ROUTE_PACKAGES = route("GET", "Catalog_УпаковкиЕдиницыИзмерения")
ROUTE_STOCK = route("GET", "AccumulationRegister_ТоварыНаСкладах")
ROUTE_OPEN_ORDERS = route("GET", "Document_ЗаказНаПеремещение", r"\?")
ROUTE_ORDER_BALANCES = route("GET", "AccumulationRegister_ЗаказыНаПеремещение")
ROUTE_CREATE = route("POST", "Document_ЗаказНаПеремещение", r"\?")
ROUTE_POST = route("POST", "Document_ЗаказНаПеремещение", r"\([^)]*\)/Post")
ROUTE_REREAD = route("GET", "Document_ЗаказНаПеремещение", r"\([^)]*\)\?")

ROW_KEYS = ["value", "Ref_Key", "Description", "odata.metadata"]
ITEM_KEYS = [*ROW_KEYS, "Code", "Артикул"]
NORM_KEYS = [
    *ROW_KEYS,
    "Склад_Key",
    "Номенклатура_Key",
    "ГруппировкаТоварныхОграничений_Key",
    "МинимальноеКоличествоЗапаса",
    "МаксимальноеКоличествоЗапаса",
    "МетодОбеспеченияПотребностей",
    "УпаковкаЗаказа_Key",
    "Числитель",
    "Знаменатель",
]
STOCK_KEYS = ["value", "Номенклатура_Key", "ВНаличииBalance", "КОтгрузкеBalance"]
TRANSFER_KEYS = [
    *ROW_KEYS,
    "Комментарий",
    "СкладОтправитель_Key",
    "СкладПолучатель_Key",
    "ЗаказНаПеремещение_Key",
    "Номенклатура_Key",
    "КОформлениюBalance",
]
ORDER_ANSWER_KEYS = [
    "Ref_Key",
    "Number",
    "Posted",
    "DeletionMark",
    "СкладОтправитель_Key",
    "СкладПолучатель_Key",
    "Товары",
    "Количество",
    "КоличествоУпаковок",
    "Номенклатура_Key",
    "Комментарий",
]
ONEC_BYTES = byte_spoilers(
    extra=[
        Replace(body=ATOM_FEED, content_type="application/atom+xml;type=feed;charset=utf-8"),
        Replace(status=500, body=ATOM_FEED, content_type="application/xml"),
    ]
)


@dataclass(repr=False)
class World:
    """The emulator behind a hostile proxy, with what the unspoiled answers give."""

    box: OneCSandbox
    proxy: HostileProxy
    url: str
    warehouses: dict[str, Warehouse] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)  # target, first, second
    items: dict[str, Item] = field(default_factory=dict)
    norms: dict[tuple[str, str], Norm] = field(default_factory=dict)
    stock: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    transfers: list[OpenTransferLine] = field(default_factory=list)
    schema: OneCSchema | None = None
    order_lines: dict[str, list[str]] = field(default_factory=dict)  # order key -> item keys

    def __repr__(self) -> str:
        return f"World({self.url})"

    def connector(self, **overrides: Any) -> OneCConnector:
        options: dict[str, Any] = {
            "base_url": self.url,
            "username": "hub",
            "retry_base_s": 0.001,
            "retry_cap_s": 0.002,
            "read_attempts": 2,
            "request_timeout_s": 5,
            "page_size": 8,
            **overrides,
        }
        return OneCConnector(OneCSettings(**options), SecretStr("sandbox"))

    async def attempt(
        self,
        spoiler: Spoiler,
        route: str,
        call: Callable[[OneCConnector], Awaitable[T]],
        **overrides: Any,
    ) -> T | ConnectorError:
        """``call`` on a fresh connector while ``spoiler`` rewrites answers matching ``route``."""
        self.proxy.arm(spoiler, route)
        try:
            async with self.connector(**overrides) as connector:
                return await outcome(call(connector))
        finally:
            self.proxy.disarm()

    def transfer_doc(self, key: str) -> TransferOrderDocument:
        items = sorted(self.items)
        return TransferOrderDocument(
            idempotency_key=key,
            ref_key=deterministic_uuid(key),
            run_id="run-malformed",
            sender_key=self.keys[1],
            sender_name=FIRST,
            receiver_key=self.keys[0],
            receiver_name=TARGET,
            date=datetime(2026, 3, 10, 9, 0),
            desired_arrival=datetime(2026, 3, 12, 0, 0),
            comment=f"bisnesmedia-hub key={key} run=run-malformed",
            lines=(
                TransferLine(item_key=items[0], quantity=Decimal(3), packages=Decimal(3)),
                TransferLine(item_key=items[1], quantity=Decimal("2.5"), packages=Decimal("2.5")),
            ),
        )

    def stored(self, doc: TransferOrderDocument) -> list[dict[str, Any]]:
        """The orders in the base carrying this document's marker."""
        return [
            order
            for order in self.box.transfer_orders()
            if f"key={doc.idempotency_key}" in str(order["comment"]).split()
        ]


async def outcome(call: Awaitable[T]) -> T | ConnectorError:
    return await outcome_within(call, HANG_S)


def assert_classified(error: ConnectorError) -> None:
    classified_for(error, SYSTEM)


def row_of(path: Path) -> int | None:
    """The row index a mutation path lies in (``value[i]…``), None for the envelope."""
    if len(path) >= 2 and path[0] == "value" and isinstance(path[1], int):
        return path[1]
    return None


def finite(value: Any) -> bool:
    return isinstance(value, Decimal) and value.is_finite()


def guid_key(value: Any) -> bool:
    return isinstance(value, str) and is_guid(value)


def huge_count(path: Path, mutation: JsonMutation) -> bool:
    """A number that would make the transport plan millions of pages (tested out of process)."""
    value = mutation.value
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 10_000
    )


def plausible_empty(spoil: Spoiler) -> bool:
    """A ``value`` list replaced by ``[]``: a well-formed "no rows" answer (an empty warehouse,
    no such package), a lie no single 1C answer reveals, so only shapes are checked."""
    return (
        isinstance(spoil, Edit)
        and spoil.mutation.op == "replace"
        and spoil.mutation.value == []
        and any(path == ("value",) for path, _ in spoil.hits)
    )


def touched_rows(spoil: Spoiler, key: str) -> set[str]:
    """Values of ``key`` in the rows a mutation hit (before it hit them).

    Entries built from other rows must come out exactly as without spoiling, whatever else was
    hit: an envelope hit touches no row, so a harmless one changes nothing and a harmful one
    (the row list gone) must fail the read. Paged reads are hit once per page."""
    touched: set[str] = set()
    if not isinstance(spoil, Edit):
        return touched
    for path, document in spoil.hits:
        index = row_of(path)
        if index is not None:
            row = document["value"][index]
            touched.add(str(row.get(key)) if isinstance(row, dict) else "")
    return touched


@asynccontextmanager
async def running_world() -> AsyncIterator[World]:
    """A 24-item demo base with two open hub transfer orders, behind a hostile proxy."""
    box = OneCSandbox(build_demo_dataset(24, seed=3))
    async with run_onec_sandbox(box) as upstream, hostile(upstream) as (proxy, url):
        world = World(box, proxy, url)
        async with world.connector() as onec:
            world.schema = await onec.load_metadata()
            world.warehouses = await onec.resolve_warehouses(NAMES)
            world.keys = [world.warehouses[name].key for name in NAMES]
            world.items = {item.key: item for item in await onec.read_items()}
            for item_key in sorted(world.items)[:2]:
                # UT refuses to post an order its sender's free stock cannot cover.
                box.db.add_stock(StockRecord(item_key, world.keys[1], Decimal(100_000)))
            for key in ("open-a", "open-b"):
                doc = world.transfer_doc(key)
                await onec.deliver_transfer_order(doc, look_up_first=False)
                world.order_lines[doc.ref_key] = [line.item_key for line in doc.lines]
            world.norms = await onec.read_norms(world.keys)
            world.stock = await onec.read_free_stock(world.keys)
            world.transfers = await onec.read_open_transfers([world.keys[0]])
        assert len(world.items) == 24 and world.norms and world.stock and world.transfers
        yield world


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with running_world() as running:
        yield running


# -- $metadata and check() ------------------------------------------------------------------


def check_schema(world: World, result: OneCSchema | ConnectorError) -> None:
    """An error, or the dialect the intact $metadata gives (fields may only be fewer)."""
    if isinstance(result, ConnectorError):
        assert_classified(result)
        return
    base = world.schema
    assert base is not None
    assert (result.version, result.group_field, result.supply_option) == (
        base.version,
        base.group_field,
        base.supply_option,
    ), f"a broken $metadata switched the dialect to {result.describe()}"
    assert result.order_fields <= base.order_fields
    assert result.line_fields <= base.line_fields


@PROPERTY
@given(pick=st.integers(min_value=0, max_value=100_000))
async def test_metadata_with_an_element_missing_is_the_same_dialect_or_an_error(
    world: World, pick: int
) -> None:
    """$metadata missing any one XML element: the same UT dialect, or a classified error."""
    spoil = XmlDrop(pick)
    result = await world.attempt(spoil, ROUTE_METADATA, lambda c: c.load_metadata())
    assert spoil.dropped
    check_schema(world, result)


@PROPERTY
@given(spoiler=ONEC_BYTES)
async def test_metadata_with_broken_bytes_is_a_classified_error(
    world: World, spoiler: Spoiler
) -> None:
    """Truncated/garbage/HTML/JSON/Atom/odd-status $metadata gives a connector error."""
    result = await world.attempt(spoiler, ROUTE_METADATA, lambda c: c.load_metadata())
    check_schema(world, result)


@PROPERTY
@given(
    spoiler=st.one_of(ONEC_BYTES, st.builds(Edit, json_mutations(ROW_KEYS))),
    target=st.sampled_from([ROUTE_METADATA, ROUTE_WAREHOUSES, r"^GET [^?]*/\?", r"^GET "]),
)
@example(spoiler=Edit(drop("value", 0, "Description")), target=route("GET", "Catalog_Организации"))
async def test_check_reports_malformed_answers_instead_of_raising(
    world: World, spoiler: Spoiler, target: str
) -> None:
    """check() answers every line whatever it is fed; a failed line says why."""
    result = await world.attempt(spoiler, target, lambda c: c.check(NAMES))
    assert not isinstance(result, ConnectorError), f"check() raised {result!r}"
    assert [line.name for line in result][:2] == ["reachable", "credentials accepted"]
    for line in result:
        assert line.system == SYSTEM
        if not line.ok:
            assert line.detail.strip(), f"{line.name}: a failed check must say why"


# -- warehouses and items -------------------------------------------------------------------


@PROPERTY
@given(spoiler=st.one_of(ONEC_BYTES, st.builds(Edit, json_mutations(ROW_KEYS))))
@example(spoiler=Edit(drop("value", 0, "Ref_Key")))
async def test_warehouses_from_a_malformed_answer_are_an_error_or_exact(
    world: World, spoiler: Spoiler
) -> None:
    """A broken Catalog_Склады answer: a classified error, or exactly the right warehouses."""
    result = await world.attempt(spoiler, ROUTE_WAREHOUSES, lambda c: c.resolve_warehouses(NAMES))
    if isinstance(result, ConnectorError):
        assert_classified(result)
    else:
        assert result == world.warehouses, f"{spoiler!r} gave {result}"


def check_items(world: World, result: list[Item] | ConnectorError, spoil: Spoiler) -> None:
    if isinstance(result, ConnectorError):
        assert_classified(result)
        return
    for item in result:
        assert guid_key(item.key), f"item key {item.key!r}"
        assert all(isinstance(text, str) for text in (item.code, item.article, item.name)), item
    got = {item.key: item for item in result}
    if plausible_empty(spoil):
        return
    touched = touched_rows(spoil, "Ref_Key")
    for key, item in world.items.items():
        if key not in touched:
            assert got.get(key) == item, f"untouched item {key} changed or vanished"


@PROPERTY
@given(mutation=json_mutations(ITEM_KEYS))
@example(mutation=put(7, "value", 0))
async def test_item_pages_with_broken_json_never_crash_or_guess(
    world: World, mutation: JsonMutation
) -> None:
    """Broken item pages/$count: an error, or the broken row's item skipped and the rest exact."""
    spoil = Edit(mutation, spare=huge_count)
    result = await world.attempt(spoil, ROUTE_ITEMS, lambda c: c.read_items())
    check_items(world, result, spoil)


@PROPERTY
@given(spoiler=ONEC_BYTES)
async def test_item_pages_with_broken_bytes_are_a_classified_error(
    world: World, spoiler: Spoiler
) -> None:
    """Truncated/garbage/HTML/Atom/lying-gzip/odd-status item pages give a connector error."""
    result = await world.attempt(spoiler, ROUTE_ITEMS, lambda c: c.read_items())
    check_items(world, result, spoiler)


# -- norms and packages ---------------------------------------------------------------------


def check_norms(
    world: World, result: dict[tuple[str, str], Norm] | ConnectorError, spoil: Spoiler
) -> None:
    if isinstance(result, ConnectorError):
        assert_classified(result)
        return
    for (item_key, warehouse_key), norm in result.items():
        assert guid_key(item_key) and warehouse_key in world.keys, (item_key, warehouse_key)
        assert finite(norm.minimum), norm
        assert norm.maximum is None or (finite(norm.maximum) and norm.maximum > 0), norm
        assert norm.package_size is None or (finite(norm.package_size) and norm.package_size > 0), (
            norm
        )
    if plausible_empty(spoil):
        return
    touched: set[str] = set()
    for path, document in spoil.hits if isinstance(spoil, Edit) else ():
        index = row_of(path)
        row = document["value"][index] if index is not None else None
        if not isinstance(row, dict):
            continue  # an envelope or a $count: no row touched
        item = row.get("Номенклатура_Key")
        package = row.get("Ref_Key")
        if item == EMPTY_GUID or (item is None and package is None):
            return  # a group's setting row stands for every member: shape checked above
        if item is not None:
            touched.add(str(item))
        if package is not None:
            touched.update(
                key[0] for key, norm in world.norms.items() if norm.package_key == package
            )
    for key, norm in world.norms.items():
        if key[0] not in touched:
            assert result.get(key) == norm, f"untouched norm {key} changed or vanished"


@PROPERTY
@given(mutation=json_mutations(NORM_KEYS), packages=st.booleans())
@example(mutation=put("abc", "value", 0, "МинимальноеКоличествоЗапаса"), packages=False)
async def test_norm_pages_with_broken_json_never_crash_or_guess(
    world: World, mutation: JsonMutation, packages: bool
) -> None:
    """Broken norm/package rows: an error, or only their items differ, all values finite."""
    spoil = Edit(mutation, spare=huge_count)
    result = await world.attempt(
        spoil, ROUTE_PACKAGES if packages else ROUTE_NORMS, lambda c: c.read_norms(world.keys)
    )
    check_norms(world, result, spoil)


@PROPERTY
@given(spoiler=ONEC_BYTES, packages=st.booleans())
async def test_norm_pages_with_broken_bytes_are_a_classified_error(
    world: World, spoiler: Spoiler, packages: bool
) -> None:
    """Truncated/garbage/HTML/Atom/lying-gzip/odd-status norm or package answers: an error."""
    result = await world.attempt(
        spoiler, ROUTE_PACKAGES if packages else ROUTE_NORMS, lambda c: c.read_norms(world.keys)
    )
    check_norms(world, result, spoiler)


# -- stock balances -------------------------------------------------------------------------


def check_stock(
    world: World, result: dict[tuple[str, str], Decimal] | ConnectorError, spoil: Spoiler
) -> None:
    if isinstance(result, ConnectorError):
        assert_classified(result)
        return
    for (item_key, warehouse_key), amount in result.items():
        assert guid_key(item_key) and warehouse_key in world.keys, (item_key, warehouse_key)
        assert finite(amount), f"{item_key}: {amount!r}"
    if plausible_empty(spoil):
        return
    touched = touched_rows(spoil, "Номенклатура_Key")
    for key, amount in world.stock.items():
        if key[0] not in touched:
            assert result.get(key) == amount, f"untouched stock {key} changed or vanished"


@PROPERTY
@given(mutation=json_mutations(STOCK_KEYS))
@example(mutation=drop("value", 0, "Номенклатура_Key"))
async def test_stock_balances_with_broken_json_never_crash_or_guess(
    world: World, mutation: JsonMutation
) -> None:
    """Broken balance rows: an error, or that row skipped and every other item's stock exact."""
    spoil = Edit(mutation)
    result = await world.attempt(spoil, ROUTE_STOCK, lambda c: c.read_free_stock(world.keys))
    check_stock(world, result, spoil)


@PROPERTY
@given(spoiler=ONEC_BYTES)
async def test_stock_balances_with_broken_bytes_are_a_classified_error(
    world: World, spoiler: Spoiler
) -> None:
    """Truncated/garbage/HTML/Atom/lying-gzip/odd-status balance answers: a connector error."""
    result = await world.attempt(spoiler, ROUTE_STOCK, lambda c: c.read_free_stock(world.keys))
    check_stock(world, result, spoiler)


# -- open transfer orders -------------------------------------------------------------------


def check_transfers(
    world: World, result: list[OpenTransferLine] | ConnectorError, spoil: Spoiler
) -> None:
    if isinstance(result, ConnectorError):
        assert_classified(result)
        return
    for line in result:
        assert line.receiver_key == world.keys[0] and line.sender_key in world.keys, line
        assert guid_key(line.item_key) and finite(line.outstanding), line
        assert line.outstanding > 0, line
    if plausible_empty(spoil):
        return
    touched: set[str] = set()
    for path, document in spoil.hits if isinstance(spoil, Edit) else ():
        index = row_of(path)
        row = document["value"][index] if index is not None else None
        if not isinstance(row, dict):
            continue  # an envelope: no row touched
        order = str(row.get("Ref_Key") or row.get("ЗаказНаПеремещение_Key"))
        touched.update(world.order_lines.get(order, [str(row.get("Номенклатура_Key"))]))
    for line in world.transfers:
        if line.item_key not in touched:
            assert line in result, f"untouched open line {line} changed or vanished"


@PROPERTY
@given(mutation=json_mutations(TRANSFER_KEYS), balances=st.booleans())
@example(mutation=put([], "value", 0, "СкладОтправитель_Key"), balances=False)
async def test_open_transfers_with_broken_json_never_crash_or_guess(
    world: World, mutation: JsonMutation, balances: bool
) -> None:
    """Broken open orders or their balances: an error, or only the broken row's lines differ."""
    spoil = Edit(mutation, spare=huge_count)
    result = await world.attempt(
        spoil,
        ROUTE_ORDER_BALANCES if balances else ROUTE_OPEN_ORDERS,
        lambda c: c.read_open_transfers([world.keys[0]]),
    )
    check_transfers(world, result, spoil)


@PROPERTY
@given(spoiler=ONEC_BYTES, balances=st.booleans())
async def test_open_transfers_with_broken_bytes_are_a_classified_error(
    world: World, spoiler: Spoiler, balances: bool
) -> None:
    """Truncated/garbage/HTML/Atom/odd-status open-order or balance answers: an error."""
    result = await world.attempt(
        spoiler,
        ROUTE_ORDER_BALANCES if balances else ROUTE_OPEN_ORDERS,
        lambda c: c.read_open_transfers([world.keys[0]]),
    )
    check_transfers(world, result, spoiler)


# -- the write ------------------------------------------------------------------------------


WRITE_STEPS = {"create": ROUTE_CREATE, "post": ROUTE_POST, "re-read": ROUTE_REREAD}


async def check_write(
    world: World,
    doc: TransferOrderDocument,
    step: str,
    spoiler: Spoiler,
    result: DeliveredDocument | ConnectorError,
) -> None:
    """Never a false delivery; a created order is never dead-lettered for a garbled create
    answer; and a clean retry that looks the order up first ends with one posted order."""
    stored = world.stored(doc)
    assert len(stored) <= 1, "two orders for one document"
    if isinstance(result, ConnectorError):
        assert_classified(result)
        status = getattr(spoiler, "status", None)
        garbled_2xx = status is None or 200 <= status < 300
        if step == "create" and garbled_2xx and stored:
            assert isinstance(result, TransientError), (
                f"{result!r}: the order exists, only a transient error lets the outbox finish it"
            )
    else:
        assert stored, "reported delivered, but there is no order"
        assert result.external_id == doc.ref_key == stored[0]["Ref_Key"]
        assert stored[0]["Posted"] is True, "reported delivered, but the order is not posted"
        assert result.number == stored[0]["Number"], f"wrong number {result.number!r}"
    async with world.connector() as onec:
        again = await onec.deliver_transfer_order(doc, look_up_first=True)
    [final] = world.stored(doc)
    assert again.external_id == final["Ref_Key"] and final["Posted"] is True


@PROPERTY
@given(mutation=json_mutations(ORDER_ANSWER_KEYS), step=st.sampled_from(sorted(WRITE_STEPS)))
@example(mutation=drop("Ref_Key"), step="create")
async def test_write_answers_with_broken_json_are_never_a_false_delivery(
    world: World, mutation: JsonMutation, step: str
) -> None:
    """Broken create/post/re-read JSON: never delivered unless the order is there and posted."""
    doc = world.transfer_doc(f"json-{world.proxy.forwarded}")
    spoil = Edit(mutation)
    result = await world.attempt(
        spoil, WRITE_STEPS[step], lambda c: c.deliver_transfer_order(doc, look_up_first=False)
    )
    await check_write(world, doc, step, spoil, result)


@PROPERTY
@given(spoiler=ONEC_BYTES, step=st.sampled_from(sorted(WRITE_STEPS)))
@example(spoiler=Replace(body=b"null"), step="re-read")
async def test_write_answers_with_broken_bytes_are_never_a_false_delivery(
    world: World, spoiler: Spoiler, step: str
) -> None:
    """A garbled create/post/re-read answer is a connector error or a true delivery."""
    doc = world.transfer_doc(f"bytes-{world.proxy.forwarded}")
    result = await world.attempt(
        spoiler, WRITE_STEPS[step], lambda c: c.deliver_transfer_order(doc, look_up_first=False)
    )
    await check_write(world, doc, step, spoiler, result)


@PROPERTY
@given(
    spoiler=st.one_of(ONEC_BYTES, st.builds(Edit, json_mutations(ORDER_ANSWER_KEYS))),
    by_marker=st.booleans(),
)
@example(spoiler=Edit(drop("Ref_Key")), by_marker=False)
async def test_lookup_before_resend_with_a_broken_answer_is_never_a_false_delivery(
    world: World, spoiler: Spoiler, by_marker: bool
) -> None:
    """A garbled lookup before a resend: an error or the one real order, never a second one."""
    doc = world.transfer_doc(f"lookup-{world.proxy.forwarded}")
    async with world.connector() as onec:
        await onec.deliver_transfer_order(doc, look_up_first=False)
    result = await world.attempt(
        spoiler,
        ROUTE_OPEN_ORDERS if by_marker else ROUTE_REREAD,
        lambda c: c.deliver_transfer_order(doc, look_up_first=True),
    )
    await check_write(world, doc, "lookup", spoiler, result)


# -- explicit cases -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "quantity",
    [
        pytest.param("abc", id="text"),
        pytest.param("12,5", id="comma-decimal"),
        pytest.param(None, id="null"),
        pytest.param(True, id="bool"),
        pytest.param([5], id="list"),
        pytest.param(Raw("NaN"), id="NaN-literal"),
        pytest.param("NaN", id="NaN-text"),
        pytest.param(Raw("Infinity"), id="Infinity-literal"),
    ],
)
async def test_a_stock_row_with_a_non_numeric_quantity_is_skipped_with_a_reason(
    world: World, quantity: Any
) -> None:
    """A non-numeric ВНаличииBalance: that row skipped with a logged reason, the rest exact."""
    spoil = Edit(put(quantity, "value", 0, "ВНаличииBalance"))
    with capture_logs() as logs:
        result = await world.attempt(
            spoil, ROUTE_STOCK, lambda c: c.read_free_stock(world.keys[:1])
        )
    expected = {key: amount for key, amount in world.stock.items() if key[1] == world.keys[0]}
    if isinstance(result, ConnectorError):
        assert_classified(result)
        return
    [(_, document)] = spoil.hits
    broken = document["value"][0]["Номенклатура_Key"]
    pair = (broken, world.keys[0])
    assert pair not in result, f"{quantity!r} read as {result.get(pair)}"
    assert result == {key: v for key, v in expected.items() if key[0] != broken}
    warned = [e for e in logs if e["log_level"] in ("warning", "error")]
    assert any(broken in str(event) for event in warned), "skipped without a reason in the log"


@pytest.mark.parametrize(
    "mutation",
    [
        pytest.param(put(7, "value", 0), id="row-a-number"),
        pytest.param(drop("value", 0, "Номенклатура_Key"), id="no-item"),
        pytest.param(put(None, "value", 0, "Номенклатура_Key"), id="item-null"),
    ],
)
async def test_a_broken_stock_row_costs_at_most_its_own_item(
    world: World, mutation: JsonMutation
) -> None:
    """A balance row not an object or without an item key costs at most that item."""
    spoil = Edit(mutation)
    result = await world.attempt(spoil, ROUTE_STOCK, lambda c: c.read_free_stock(world.keys[:1]))
    check_stock(world, result, spoil)


@pytest.mark.parametrize(
    "mutation",
    [
        pytest.param(drop("value"), id="no-value"),
        pytest.param(put({"value": "rows"}), id="value-a-string"),
        pytest.param(put([]), id="answer-a-list"),
    ],
)
async def test_a_collection_answer_without_a_value_list_is_an_error(
    world: World, mutation: JsonMutation
) -> None:
    """An answer without a ``value`` list is a classified error, never "no stock"."""
    result = await world.attempt(
        Edit(mutation), ROUTE_STOCK, lambda c: c.read_free_stock(world.keys)
    )
    assert isinstance(result, ConnectorError), f"{mutation} gave {result}"
    assert_classified(result)
    assert "value" in str(result)


@pytest.mark.parametrize(
    "mutation",
    [
        pytest.param(drop("value", 0, "Ref_Key"), id="no-ref-key"),
        pytest.param(put(7, "value", 0), id="row-a-number"),
        pytest.param(put(["x"], "value", 0, "Ref_Key"), id="ref-key-a-list"),
        pytest.param(put(None, "value", 0, "Description"), id="description-null"),
    ],
)
async def test_a_broken_warehouse_row_is_an_error_never_a_wrong_key(
    world: World, mutation: JsonMutation
) -> None:
    """A warehouse row without a usable Ref_Key: a classified error, never a made-up key."""
    result = await world.attempt(
        Edit(mutation), ROUTE_WAREHOUSES, lambda c: c.resolve_warehouses(NAMES)
    )
    if isinstance(result, ConnectorError):
        assert_classified(result)
    else:
        assert result == world.warehouses, f"{mutation} gave {result}"


async def test_check_reports_a_garbled_organization_row_as_a_failed_line(world: World) -> None:
    """check() with the organization row lacking its Description says so in that line."""
    result = await world.attempt(
        Edit(drop("value", 0, "Description")),
        route("GET", "Catalog_Организации"),
        lambda c: c.check(NAMES),
    )
    assert not isinstance(result, ConnectorError), result
    lines = {line.name: line for line in result}
    assert not lines["organization and priority resolved"].ok
    assert lines["organization and priority resolved"].detail.strip()
    assert lines["warehouses resolved"].ok


@pytest.mark.parametrize(
    ("spoiler", "kind"),
    [
        pytest.param(Replace(status=500, body=b""), TransientError, id="500-empty"),
        pytest.param(
            Replace(status=404, body=HTML_PAGE, content_type="text/html"),
            PermanentError,
            id="404-html",
        ),
        pytest.param(
            Replace(status=401, body=b"", content_type="application/json"),
            PermanentError,
            id="401-no-error-body",
        ),
    ],
)
async def test_odd_error_statuses_keep_their_class(
    world: World, spoiler: Replace, kind: type[ConnectorError]
) -> None:
    """500 without a body is transient; 404 HTML and 401 without odata.error are permanent."""
    result = await world.attempt(spoiler, ROUTE_STOCK, lambda c: c.read_free_stock(world.keys))
    assert isinstance(result, kind), result
    assert_classified(result)
    assert result.status == spoiler.status
    assert "stock balance" in str(result) or "credentials" in str(result), str(result)


@pytest.mark.parametrize(
    "count",
    [
        pytest.param(b"-1", id="negative"),
        pytest.param(b"abc", id="text"),
        pytest.param(b"", id="empty"),
        pytest.param(b"1e999", id="overflow"),
    ],
)
async def test_a_garbled_count_is_an_error(world: World, count: bytes) -> None:
    """/$count answered with something that is not a whole number is a classified error."""
    result = await world.attempt(
        Replace(body=count, content_type="text/plain"),
        route("GET", "Catalog_Номенклатура", "/\\$count"),
        lambda c: c.read_items(),
    )
    assert isinstance(result, ConnectorError), f"count {count!r} gave {len(result)} items"
    assert_classified(result)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("abc", id="text"),
        pytest.param(Raw("NaN"), id="NaN-literal"),
        pytest.param({"x": 1}, id="object"),
    ],
)
async def test_a_norm_with_a_garbled_minimum_is_never_read_as_zero(
    world: World, value: Any
) -> None:
    """A non-numeric norm minimum fails the read or drops that norm with a reason, never 0."""
    spoil = Edit(put(value, "value", 0, "МинимальноеКоличествоЗапаса"))
    with capture_logs() as logs:
        result = await world.attempt(spoil, ROUTE_NORMS, lambda c: c.read_norms(world.keys))
    if isinstance(result, ConnectorError):
        assert_classified(result)
        return
    check_norms(world, result, spoil)
    zeroed = [
        key
        for key, norm in result.items()
        if norm.minimum == 0 and (key not in world.norms or world.norms[key].minimum != 0)
    ]
    changed = [key for key, norm in world.norms.items() if result.get(key) != norm]
    assert not zeroed, f"garbled minimum read as 0 for {zeroed}"
    if changed:
        warned = [e for e in logs if e["log_level"] in ("warning", "error")]
        assert warned, f"norms {changed} dropped without a reason in the log"


@pytest.mark.parametrize(
    "mutation",
    [
        pytest.param(put("not-a-guid", "Ref_Key"), id="ref-key-garbled"),
        pytest.param(put("yes", "DeletionMark"), id="deletion-mark-text"),
        pytest.param(drop("Ref_Key"), id="no-ref-key"),
        pytest.param(put(True, "Posted"), id="claims-posted"),
        pytest.param(put(None), id="null-answer"),
    ],
)
async def test_a_garbled_create_answer_leaves_the_order_to_be_finished(
    world: World, mutation: JsonMutation
) -> None:
    """A created order with a garbled answer: a transient error, never a dead letter."""
    doc = world.transfer_doc(f"create-{mutation.op}-{mutation.at}-{mutation.value}")
    result = await world.attempt(
        Edit(mutation), ROUTE_CREATE, lambda c: c.deliver_transfer_order(doc, look_up_first=False)
    )
    await check_write(world, doc, "create", Edit(mutation), result)


async def huge_count_scenario() -> None:
    """Run in a child process (see the test below): an item count of 10^15."""
    async with running_world() as world:
        result = await world.attempt(
            Replace(body=b"1000000000000000", content_type="text/plain"),
            route("GET", "Catalog_Номенклатура", "/\\$count"),
            lambda c: c.read_items(),
        )
        if isinstance(result, ConnectorError):
            assert_classified(result)
        assert world.proxy.forwarded < 10_000, f"{world.proxy.forwarded} requests"


async def test_a_huge_count_is_refused_without_exhausting_memory() -> None:
    """A /$count of 10^15 is not planned as 10^14 pages (child process with a memory cap)."""
    code = "import asyncio, tests.test_malformed_onec as t; asyncio.run(t.huge_count_scenario())"
    await run_capped(code, "a huge $count: the item read")
