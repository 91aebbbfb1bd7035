"""Reading 1C answers without trusting them: value checks, paging against the count, and what a
malformed answer costs (a skipped item, a failed read naming the row, an outcome-unknown write)."""

from __future__ import annotations

import gc
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from structlog.testing import capture_logs

from daemon.errors import OutcomeUnknownError, PermanentError, TransientError
from daemon.model import TransferLine, TransferOrderDocument, deterministic_uuid
from daemon.onec import odata
from daemon.onec.answers import quantity, valid_key
from daemon.onec.connector import OneCConnector
from daemon.onec.settings import OneCSettings
from daemon.sandbox.dataset import build_demo_dataset
from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox
from tests.hostile import Edit, HostileProxy, Replace, drop, hostile, put

GUID = "3aa3cd58-c109-11e6-a7a6-5404a6b4b8ed"
NAMES = ["Магазин Центральный", "Бестужевых", "Контейнер"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, Decimal(5)),
        (Decimal("2.5"), Decimal("2.5")),
        ("12.5", Decimal("12.5")),  # Edm.Int64/Decimal may come as JSON text
        (" -3 ", Decimal(-3)),
        ("1e3", Decimal(1000)),
        (10**15 - 1, Decimal(10**15 - 1)),
    ],
)
def test_quantity_reads_numbers_and_plain_numeric_text(value: Any, expected: Decimal) -> None:
    """JSON numbers and plain ASCII numeric text below 10^15 are quantities."""
    assert quantity(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "12,5",
        "abc",
        "",
        "NaN",
        "Infinity",
        "1_000",
        "٣",
        True,
        None,
        [5],
        {"x": 1},
        Decimal("NaN"),
        Decimal("Infinity"),
        Decimal("1E+999"),
        10**15,
        -(10**15),
        float("nan"),
    ],
)
def test_anything_else_is_not_a_quantity(value: Any) -> None:
    """Text that is not a plain number, bools, nulls, containers, NaN, infinities and
    magnitudes UT cannot store are not quantities (never 0)."""
    assert quantity(value) is None


@pytest.mark.parametrize(
    "value", [GUID.upper(), GUID, f"{{{GUID}}}", GUID.replace("-", ""), None, 7, [GUID], "x"]
)
def test_a_key_is_a_guid_string_as_1c_writes_it(value: Any) -> None:
    """Only the 8-4-4-4-12 hexadecimal form is a key (no braces, no bare hex, no containers)."""
    assert valid_key(value) == (value if value in (GUID, GUID.upper()) else None)


@pytest.mark.parametrize("literal", [b"NaN", b"[Infinity]", b'{"x": -Infinity}'])
def test_nan_and_infinity_are_not_json(literal: bytes) -> None:
    """An answer carrying NaN/Infinity literals is refused as not JSON, like any other."""
    with pytest.raises(ValueError, match="not a JSON value"):
        odata.loads(literal)


# -- through a proxy that spoils the emulator's answers --------------------------------------


@dataclass
class Spoiled:
    box: OneCSandbox
    proxy: HostileProxy
    url: str

    @asynccontextmanager
    async def connector(self, **overrides: Any) -> AsyncIterator[OneCConnector]:
        options: dict[str, Any] = {"retry_base_s": 0.001, "retry_cap_s": 0.002, **overrides}
        settings = OneCSettings(base_url=self.url, username="hub", **options)  # type: ignore[arg-type]
        async with OneCConnector(settings, SecretStr("sandbox")) as onec:
            yield onec


@pytest.fixture
async def spoiled() -> AsyncIterator[Spoiled]:
    box = OneCSandbox(build_demo_dataset(24, seed=3))
    async with run_onec_sandbox(box) as upstream, hostile(upstream) as (proxy, url):
        yield Spoiled(box, proxy, url)


def route(entity_set: str, tail: str = "", method: str = "GET") -> str:
    return rf"^{method} [^?]*/{re.escape(quote(entity_set))}{tail}"


ITEMS = route("Catalog_Номенклатура")
STOCK = route("AccumulationRegister_ТоварыНаСкладах")
ORDER_BY_KEY = route("Document_ЗаказНаПеремещение", r"\([^)]*\)\?")


async def test_an_item_row_without_a_key_is_skipped_with_a_warning(spoiled: Spoiled) -> None:
    """An item row whose Ref_Key is null costs that item only, and the log says why."""
    async with spoiled.connector(page_size=8) as onec:
        whole = {item.key for item in await onec.read_items()}
        spoiled.proxy.arm(Edit(put(None, "value", 0, "Ref_Key")), ITEMS + r"\?.*skip=8", times=1)
        with capture_logs() as logs:
            items = await onec.read_items()
    assert len(items) == len(whole) - 1 and {item.key for item in items} < whole
    [warning] = [event for event in logs if event["event"] == "onec_item_skipped"]
    assert warning["log_level"] == "warning" and "Ref_Key is null" in warning["reason"]


async def test_a_short_page_before_the_last_fails_the_read(spoiled: Spoiled) -> None:
    """A row missing from a middle page (the count says the page is full) is a transient
    error, never a read that silently lacks that item."""
    async with spoiled.connector(page_size=8) as onec:
        spoiled.proxy.arm(Edit(drop("value", 3)), ITEMS + r"\?.*skip=8", times=1)
        with pytest.raises(TransientError, match=r"sent 7 on page 2 of 3"):
            await onec.read_items()


async def test_a_count_far_too_large_costs_one_window_of_pages(spoiled: Spoiled) -> None:
    """A /$count of 5,000,000 for 24 items ends after the first window of pages with a
    transient error; the count never plans work it has not checked."""
    async with spoiled.connector(page_size=8) as onec:
        await onec.load_metadata()
        before = spoiled.proxy.forwarded
        spoiled.proxy.arm(Replace(body=b"5000000", content_type="text/plain"), ITEMS + "/")
        with pytest.raises(TransientError, match="counts 5000000 rows of items"):
            await onec.read_items()
    assert spoiled.proxy.forwarded - before <= 66  # page 1 and the count, then one window


async def test_a_bad_stock_quantity_fails_the_read_naming_the_item(spoiled: Spoiled) -> None:
    """A balance that is not a number fails the stock read with the item and warehouse named
    (read as 0 it would order stock the warehouse has)."""
    async with spoiled.connector() as onec:
        found = await onec.resolve_warehouses(NAMES[:1])
        key = found[NAMES[0]].key
        spoiled.proxy.arm(Edit(put("12,5", "value", 2, "ВНаличииBalance")), STOCK)
        with pytest.raises(PermanentError) as caught:
            await onec.read_free_stock([key])
    error = caught.value
    assert error.code == "malformed" and key in str(error) and "'12,5'" in str(error)
    assert re.search(r"item [0-9a-f-]{36} on warehouse", str(error))


NORMS = route("InformationRegister_ТоварныеОграничения")


async def test_a_norm_row_for_a_warehouse_not_asked_for_fails_the_read(spoiled: Spoiled) -> None:
    """A norm row filed under a warehouse the query did not ask for (or under no GUID) fails
    the read naming the item: filed anywhere, it could be another warehouse's norm."""
    async with spoiled.connector() as onec:
        found = await onec.resolve_warehouses(NAMES)
        keys = [found[name].key for name in NAMES[:2]]
        other = found[NAMES[2]].key
        for value, says in (
            (other, f"Склад_Key {other} is not a warehouse asked for"),
            (7, "Склад_Key is 7, not a GUID"),
        ):
            spoiled.proxy.arm(Edit(put(value, "value", 0, "Склад_Key")), NORMS + r"\?", times=1)
            with pytest.raises(PermanentError) as caught:
                await onec.read_norms(keys)
            assert caught.value.code == "malformed" and says in str(caught.value)
            assert re.search(r"Номенклатура_Key [0-9a-f-]{36}", str(caught.value))


async def test_the_collector_is_left_as_it_was(spoiled: Spoiled) -> None:
    """Answers are converted with the cyclic GC paused; after a read, a failed one too, it
    is on again, and one turned off by someone else stays off."""
    async with spoiled.connector(page_size=8) as onec:
        assert len(await onec.read_items()) == 24 and gc.isenabled()
        spoiled.proxy.arm(Edit(put("x", "value", 0, "ВНаличииBalance")), STOCK, times=1)
        with pytest.raises(PermanentError):
            await onec.read_free_stock([spoiled.box.dataset.warehouse_key(NAMES[0])])
        assert gc.isenabled()
        gc.disable()
        try:
            await onec.read_items()
            assert not gc.isenabled()
        finally:
            gc.enable()


def transfer(spoiled: Spoiled, idempotency_key: str) -> TransferOrderDocument:
    dataset = spoiled.box.dataset
    items = sorted(i.key for i in dataset.items if not i.is_folder)
    return TransferOrderDocument(
        idempotency_key=idempotency_key,
        ref_key=deterministic_uuid(idempotency_key),
        run_id="run-answers",
        sender_key=dataset.warehouse_key(NAMES[1]),
        sender_name=NAMES[1],
        receiver_key=dataset.warehouse_key(NAMES[0]),
        receiver_name=NAMES[0],
        date=datetime(2026, 3, 10, 9, 0),
        desired_arrival=datetime(2026, 3, 12, 0, 0),
        comment=f"bisnesmedia-hub key={idempotency_key} run=run-answers",
        lines=(TransferLine(item_key=items[0], quantity=Decimal(2), packages=Decimal(2)),),
    )


async def test_a_failed_lookup_is_outcome_unknown_never_a_dead_letter(spoiled: Spoiled) -> None:
    """The lookup before a resend answered 403 or with a garbled order: the order may exist,
    so the error keeps the outcome unknown (the outbox looks again) and nothing is created."""
    doc = transfer(spoiled, "lookup-fails")
    async with spoiled.connector() as onec:
        await onec.deliver_transfer_order(doc, look_up_first=False)
        for spoiler in (Replace(status=403, body=b""), Edit(put("yes", "Posted"))):
            spoiled.proxy.arm(spoiler, ORDER_BY_KEY)
            with pytest.raises(OutcomeUnknownError, match="looking up transfer order"):
                await onec.deliver_transfer_order(doc, look_up_first=True)
            spoiled.proxy.disarm()
        delivered = await onec.deliver_transfer_order(doc, look_up_first=True)
    [stored] = spoiled.box.transfer_orders()
    assert delivered.external_id == stored["Ref_Key"] and stored["Posted"] is True


async def test_a_create_answer_about_another_order_is_checked_by_lookup(spoiled: Spoiled) -> None:
    """A 201 whose body names another Ref_Key is not believed: the order is looked up by the
    key that was sent, posted and reported with its real number."""
    doc = transfer(spoiled, "create-other-key")
    spoiled.proxy.arm(
        Edit(put(GUID, "Ref_Key")), route("Document_ЗаказНаПеремещение", r"\?", "POST")
    )
    async with spoiled.connector() as onec:
        with capture_logs() as logs:
            delivered = await onec.deliver_transfer_order(doc, look_up_first=False)
    [stored] = spoiled.box.transfer_orders()
    assert (delivered.external_id, delivered.number) == (doc.ref_key, stored["Number"])
    assert delivered.created_now and stored["Posted"] is True
    assert any(event["event"] == "onec_transfer_create_answer_unusable" for event in logs)


@settings(max_examples=300, deadline=None)
@given(
    st.decimals(
        min_value=Decimal("-999999999999.999"),
        max_value=Decimal("999999999999.999"),
        places=3,
        allow_nan=False,
        allow_infinity=False,
    )
)
def test_every_1c_quantity_survives_the_json_parser_exactly(value: Decimal) -> None:
    """An N(15,3) quantity as 1C writes it in JSON reads back as exactly that Decimal."""
    assert quantity(odata.loads(f'{{"q": {value}}}'.encode())["q"]) == value
