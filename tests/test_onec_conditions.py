"""The guide's ways with 1C: the ``Condition`` form a server takes, IIS's two URL limits,
``$metadata`` as XML, ``substringof(…) eq true`` — the connector against emulators set each way."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from daemon.errors import PermanentError
from daemon.model import EMPTY_GUID, TransferLine, TransferOrderDocument, deterministic_uuid
from daemon.onec import odata
from daemon.onec.connector import OneCConnector
from daemon.sandbox.dataset import DemoDataset, NormRecord, StockRecord, build_demo_dataset
from daemon.sandbox.onec_emulator import OneCSandbox
from daemon.sandbox.onec_params import balance_params
from daemon.sandbox.onec_wire import parse_query, split_call
from tests.onec_support import connected

NAMES = ["Магазин Центральный", "Бестужевых", "Контейнер"]
GUID = "3aa3cd58-c109-11e6-a7a6-5404a6b4b8ed"


@pytest.fixture
def dataset() -> DemoDataset:
    return build_demo_dataset(60, seed=11)


async def keys_of(onec: OneCConnector) -> list[str]:
    found = await onec.resolve_warehouses(NAMES)
    return [found[name].key for name in NAMES]


def balance_calls(box: OneCSandbox) -> list[str]:
    """The decoded path and query of every Balance call the emulator was sent."""
    return [unquote(r.split(" ", 1)[1]) for r in box.raw_requests if "/Balance" in r]


def expected_stock(dataset: DemoDataset, keys: Sequence[str]) -> dict[tuple[str, str], Decimal]:
    free: dict[tuple[str, str], Decimal] = {}
    for row in dataset.stock:
        if row.warehouse_key in keys:
            pair = (row.item_key, row.warehouse_key)
            free[pair] = free.get(pair, Decimal(0)) + row.in_stock - row.to_ship
    return free


# -- the forms, as URLs ------------------------------------------------------------------------


def test_each_form_on_the_wire() -> None:
    """guide: quotes as they are; doubled: an OData string literal; query: two options."""
    condition = odata.eq("Склад_Key", odata.guid(GUID))
    register = "AccumulationRegister_ТоварыНаСкладах"
    assert odata.balance_call(register, condition, "guide", dimensions="Номенклатура") == (
        f"{register}/Balance(Condition='Склад_Key eq guid'{GUID}'',Dimensions='Номенклатура')",
        [],
    )
    assert odata.balance_call(register, condition, "doubled", dimensions="Номенклатура") == (
        f"{register}/Balance(Condition='Склад_Key eq guid''{GUID}''',Dimensions='Номенклатура')",
        [],
    )
    assert odata.balance_call(register, condition, "query", dimensions="Номенклатура") == (
        f"{register}/Balance",
        [("Condition", condition), ("Dimensions", "Номенклатура")],
    )


def test_a_quote_in_a_value_never_goes_in_the_guide_form() -> None:
    """A name with a quote (or a '/') cannot be written unescaped: refused, never misread."""
    evil = odata.eq("Description", odata.literal("x'',Dimensions='Склад"))
    assert not odata.expressible(evil, "guide") and odata.expressible(evil, "doubled")
    with pytest.raises(ValueError, match="guide"):
        odata.balance_call("R", evil, "guide", dimensions="Номенклатура")
    slash = odata.eq("Description", odata.literal("A/B"))
    assert not odata.expressible(slash, "guide") and not odata.expressible(slash, "doubled")
    assert odata.expressible(slash, "query")
    _, options = odata.balance_call("R", evil, "query", dimensions="Номенклатура")
    query = odata.encode_query(options)
    assert query.count("&") == 1 and unquote(query.split("&")[0]) == f"Condition={evil}"
    assert odata.expressible(odata.eq("Статус", odata.literal("Закрыт")), "guide")


@settings(max_examples=300)
@given(st.text(max_size=24), st.sampled_from(["guide", "doubled", "query"]))
def test_a_value_in_a_condition_reads_back_unchanged_or_is_refused(
    value: str, form: odata.ConditionForm
) -> None:
    """Whatever a name holds, a form either refuses it or the emulator (reading that form, as
    the path and query arrive on the wire) gets the same condition and dimensions back."""
    condition = odata.all_of(
        odata.eq("Склад_Key", odata.guid(GUID)), odata.eq("Description", odata.literal(value))
    )
    if not odata.expressible(condition, form):
        assert form != "query"
        return
    path, options = odata.balance_call("R", condition, form, dimensions="Склад")
    relative = odata.relative_url(path, [*options, ("$format", "json")])
    raw_path, _, raw_query = relative.partition("?")
    name, args, rest = split_call(unquote(raw_path)[len("R/") :])
    assert (name, rest) == ("Balance", "")
    server = {"guide": "guide", "doubled": "doubled", "query": "guide"}[form]
    params = balance_params(args, parse_query(raw_query), form=server, query_options="accept")
    assert params == {"Condition": condition, "Dimensions": "Склад"}


def test_url_limits_count_bytes_and_decoded_segment_characters() -> None:
    """The URL in bytes as sent; a path segment in characters once decoded (Cyrillic = 1)."""
    limits = odata.UrlLimits(url_bytes=2048, segment_chars=260)
    cyrillic = odata.relative_url("Ф" * 260)
    assert len(cyrillic) == 260 * 6 and limits.excess(cyrillic) is None
    over = limits.excess(odata.relative_url("Ф" * 261))
    assert over is not None and "261 characters" in over and "max_path_segment_chars" in over
    long_query = odata.relative_url("Catalog_X", [("$filter", "x" * 2100)])
    assert "onec.max_url_bytes" in str(limits.excess(long_query))
    assert odata.longest_segment("A/B%2FC?x=" + "y" * 300) == 1


def test_batches_fit_the_segment_limit() -> None:
    """Conditions over a path segment are cut so each segment holds at most 260 characters."""
    keys = [odata.guid(f"00000000-0000-0000-0000-{n:012d}") for n in range(9)]
    register = "AccumulationRegister_ЗаказыНаПеремещение"

    def render(run: Sequence[str]) -> str:
        condition = " or ".join(odata.eq("ЗаказНаПеремещение_Key", key) for key in run)
        path, _ = odata.balance_call(
            register, condition, "doubled", dimensions="ЗаказНаПеремещение,Номенклатура"
        )
        return odata.relative_url(path, [("$format", "json")])

    limits = odata.UrlLimits(2048, 260)
    runs = odata.batches(keys, render, limits)
    assert [k for run in runs for k in run] == keys and len(runs) == 5
    assert all(odata.longest_segment(render(run)) <= 260 for run in runs)
    assert odata.longest_segment(render(keys[:3])) > 260  # a byte budget alone would let 9 in
    with pytest.raises(PermanentError, match="max_path_segment_chars"):
        odata.batches(keys, render, odata.UrlLimits(2048, 128))


# -- the connector against each kind of server ----------------------------------------------


async def test_the_guide_form_is_sent_and_read(dataset: DemoDataset) -> None:
    """Against a server that reads the guide's form the stock comes in one try per warehouse."""
    box = OneCSandbox(dataset)
    async with connected(box) as onec:
        keys = await keys_of(onec)
        box.reset_counters()
        free = await onec.read_free_stock(keys)
    assert free == expected_stock(dataset, keys)
    assert box.requests_by_kind == {"balance": 3}
    assert all(f"Condition='Склад_Key eq guid'{k}''" in "".join(balance_calls(box)) for k in keys)


async def test_the_doubled_form_is_refused_by_a_guide_server(dataset: DemoDataset) -> None:
    """The form public code sends is a 400 code 1 from a server reading the guide's form."""
    box = OneCSandbox(dataset)
    async with connected(box, condition_form="doubled") as onec:
        keys = await keys_of(onec)
        box.reset_counters()
        with pytest.raises(PermanentError) as caught:
            await onec.read_free_stock(keys[:1])
    assert (caught.value.status, caught.value.code) == (400, "1")
    assert "Не удалось разобрать строку" in str(caught.value.remote_message)
    assert "onec.condition_form = 'doubled'" in str(caught.value)
    assert box.requests_by_kind == {"balance": 1, "error": 1}  # pinned: no other form is tried


async def test_auto_falls_back_to_doubled_once_and_remembers(dataset: DemoDataset) -> None:
    """A server that reads only doubled quotes: the first balance is refused once and resent
    doubled; every later call, open orders included, goes doubled at once."""
    box = OneCSandbox(dataset)
    box.condition_form = "doubled"
    async with connected(box) as onec:
        keys = await keys_of(onec)
        box.reset_counters()
        with capture_logs() as logs:
            first = await onec.read_free_stock(keys[:1])
        assert box.requests_by_kind == {"balance": 2, "error": 1}
        box.reset_counters()
        free = await onec.read_free_stock(keys)
        await onec.read_open_transfers(keys[:1])
    assert first == expected_stock(dataset, keys[:1]) and free == expected_stock(dataset, keys)
    assert box.requests_by_kind["error"] == 0 and box.requests_by_kind["balance"] == 3
    assert all("guid''" in call for call in balance_calls(box))
    events = [(e["event"], e.get("form")) for e in logs if e["event"].startswith("onec_cond")]
    assert events == [
        ("onec_condition_form_refused", "guide"),
        ("onec_condition_form", "doubled"),
    ]


async def test_a_server_reading_both_keeps_the_guide_form(dataset: DemoDataset) -> None:
    """Nothing refused: the guide's form is kept."""
    box = OneCSandbox(dataset)
    box.condition_form = "both"
    async with connected(box) as onec:
        keys = await keys_of(onec)
        box.reset_counters()
        await onec.read_free_stock(keys)
    assert box.requests_by_kind == {"balance": 3}
    assert not any("guid''" in call for call in balance_calls(box))


@pytest.mark.parametrize("server", ["guide", "doubled"])
async def test_pinned_query_form_is_read_by_any_server(dataset: DemoDataset, server: str) -> None:
    """condition_form = "query": the parameters travel as query options, read as they are."""
    box = OneCSandbox(dataset)
    box.condition_form = server
    async with connected(box, condition_form="query") as onec:
        keys = await keys_of(onec)
        box.reset_counters()
        free = await onec.read_free_stock(keys)
    assert free == expected_stock(dataset, keys)
    calls = balance_calls(box)
    assert len(calls) == 3 and all("/Balance?Condition=Склад_Key eq guid'" in c for c in calls)


async def test_a_server_refusing_query_options_is_a_clear_error(dataset: DemoDataset) -> None:
    """Pinned to the query form against a server that refuses it: 1C's refusal, the key named."""
    box = OneCSandbox(dataset)
    box.query_options = "refuse"
    async with connected(box, condition_form="query") as onec:
        keys = await keys_of(onec)
        with pytest.raises(PermanentError, match=r"onec\.condition_form = 'query'") as caught:
            await onec.read_free_stock(keys[:1])
    assert (caught.value.status, caught.value.code) == (400, "14")


# -- open orders: the long condition cut to fit ----------------------------------------------


def transfer(dataset: DemoDataset, n: int, item: str) -> TransferOrderDocument:
    """The n-th of the open orders: n + 1 units of ``item`` from Бестужевых to the shop."""
    key, amount = f"split-{n}", Decimal(n + 1)
    return TransferOrderDocument(
        idempotency_key=key,
        ref_key=deterministic_uuid(key),
        run_id="run-1",
        sender_key=dataset.warehouse_key("Бестужевых"),
        sender_name="Бестужевых",
        receiver_key=dataset.warehouse_key("Магазин Центральный"),
        receiver_name="Магазин Центральный",
        date=datetime(2026, 3, 10, 9, 0),
        desired_arrival=datetime(2026, 3, 12, 0, 0),
        comment=f"bisnesmedia-hub key={key} run=run-1",
        lines=(TransferLine(item_key=item, quantity=amount, packages=amount),),
    )


@pytest.mark.parametrize(
    ("form", "server", "most_per_call"), [("auto", "guide", 2), ("query", "guide", 7)]
)
async def test_open_orders_are_split_to_fit_the_segment_limit(
    dataset: DemoDataset, form: str, server: str, most_per_call: int
) -> None:
    """Seven open orders: in the path form each Balance segment stays within 260 characters
    (two orders a call), with query options all go in one call; the totals are the same."""
    box = OneCSandbox(dataset)
    box.condition_form = server
    item = next(i.key for i in dataset.items if not i.is_folder and not i.deletion_mark)
    box.db.add_stock(StockRecord(item, dataset.warehouse_key("Бестужевых"), Decimal(100)))
    async with connected(box, condition_form=form) as onec:
        for n in range(7):
            await onec.deliver_transfer_order(transfer(dataset, n, item), look_up_first=False)
        target = dataset.warehouse_key("Магазин Центральный")
        box.reset_counters()
        lines = await onec.read_open_transfers([target])
    assert [(line.item_key, line.outstanding) for line in lines] == [(item, Decimal(28))]
    calls = [c for c in balance_calls(box) if "ЗаказыНаПеремещение" in c]
    assert box.requests_by_kind["error"] == 0 and box.requests_by_kind["iis_400"] == 0
    assert len(calls) == -(-7 // most_per_call)
    for call in calls:
        assert call.count("ЗаказНаПеремещение_Key eq") <= most_per_call
        assert max(len(segment) for segment in call.split("?")[0].split("/")) <= 260


# -- IIS in front ------------------------------------------------------------------------------


async def test_iis_refusals_name_the_setting(dataset: DemoDataset) -> None:
    """Limits set higher than the server's: HTTP.sys's 400 «Invalid URL» and IIS's 404.15 come
    back as permanent errors that name the key to lower."""
    box = OneCSandbox(dataset)
    box.max_url_segment_chars = 90  # the stock call's segment is about 100
    async with connected(box) as onec:
        keys = await keys_of(onec)
        with pytest.raises(PermanentError, match=r"onec\.max_path_segment_chars") as caught:
            await onec.read_free_stock(keys[:1])
    assert caught.value.status == 400 and caught.value.code is None
    box.max_url_segment_chars, box.max_query_string_bytes = 260, 600
    async with connected(box) as onec:
        with pytest.raises(PermanentError, match=r"onec\.max_url_bytes") as caught:
            await onec.read_norms(await keys_of(onec))
    assert caught.value.status == 404 and box.requests_by_kind["iis_404"] >= 1


async def test_metadata_is_asked_as_xml(dataset: DemoDataset) -> None:
    """$metadata goes with Accept: application/xml; the server refuses a JSON $metadata."""
    box = OneCSandbox(dataset)
    async with connected(box) as onec:
        schema = await onec.load_metadata()
    assert schema.version == "11.5" and box.requests_by_kind["metadata"] == 1
    async with connected(box) as onec:
        transport: Any = onec._transport
        with pytest.raises(PermanentError) as caught:
            await transport.get(transport.url("$metadata"), what="$metadata")  # JSON Accept
    assert caught.value.status == 415 and box.requests_by_kind["metadata_json_refused"] == 1


async def test_substringof_is_compared_with_true(dataset: DemoDataset) -> None:
    """Every substringof the hub sends is written as the guide writes it: … eq true."""
    box = OneCSandbox(dataset)
    async with connected(box) as onec:
        await onec.read_open_transfers(await keys_of(onec))
    sent = [unquote(r) for r in box.raw_requests if "substringof" in unquote(r)]
    assert sent and all("substringof('bisnesmedia-hub', Комментарий) eq true" in r for r in sent)


async def test_a_group_without_its_setting_row_gives_no_norm(dataset: DemoDataset) -> None:
    """A membership row whose group has no setting row: no norm, as UT resolves it (its own
    numbers are never read), while a member of a configured group takes the group's."""
    target = dataset.warehouse_key("Магазин Центральный")
    normed = {n.item_key for n in dataset.norms if n.warehouse_key == target}
    loose = next(i.key for i in dataset.items if not i.is_folder and i.key not in normed)
    orphan_group = "5a4e3c1b-0000-4000-8000-00000000abcd"
    dataset.norms.append(
        NormRecord(target, loose, group_key=orphan_group, minimum=Decimal(7), maximum=Decimal(9))
    )
    async with connected(OneCSandbox(dataset)) as onec:
        norms = await onec.read_norms([target])
    assert (loose, target) not in norms
    grouped = [k for k, e in dataset.expected.items() if e.case == "group_norm"]
    assert grouped and all(norms[(k, target)].source == "group" for k in grouped)
    assert EMPTY_GUID not in {warehouse for _, warehouse in norms}
