"""The 1C emulator as the developer guide and IIS have it: the ``Condition`` form per knob,
parameters as query options, IIS's two URL limits, ``$metadata`` as XML only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import yarl

from daemon.sandbox.dataset import DemoDataset, build_demo_dataset
from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox
from tests.test_onec_emulator import STOCK, Wire, balance, q


@pytest.fixture
def dataset() -> DemoDataset:
    return build_demo_dataset(64, seed=3)


@pytest.fixture
async def sandbox(dataset: DemoDataset) -> AsyncIterator[tuple[OneCSandbox, Wire]]:
    box = OneCSandbox(dataset)
    async with run_onec_sandbox(box) as base:
        headers = {"Authorization": aiohttp.encode_basic_auth("hub", "sandbox")}
        async with aiohttp.ClientSession(headers=headers) as session:
            yield box, Wire(session, base)


@pytest.mark.parametrize(
    ("server", "guide_ok", "doubled_ok"),
    [("guide", True, False), ("doubled", False, True), ("both", True, True)],
)
async def test_condition_is_read_in_the_configured_form(
    sandbox: tuple[OneCSandbox, Wire],
    dataset: DemoDataset,
    server: str,
    guide_ok: bool,
    doubled_ok: bool,
) -> None:
    """The guide's form (quotes as they are), the doubled form, or both; a form the server does
    not read is 400 code 1 «Не удалось разобрать строку …», never a wrong answer."""
    box, wire = sandbox
    box.condition_form = server
    warehouse = dataset.warehouse_key("Бестужевых")
    answers = []
    for quote_mark, ok in (("'", guide_ok), ("''", doubled_ok)):
        condition = f"Склад_Key eq guid{quote_mark}{warehouse}{quote_mark}"
        status, payload = await wire.json("GET", balance(STOCK, condition, "Номенклатура"))
        if ok:
            assert status == 200
            answers.append(payload["value"])
        else:
            assert (status, payload["odata.error"]["code"]) == (400, "1")
            assert payload["odata.error"]["message"]["value"].startswith(
                "Не удалось разобрать строку"
            )
    assert answers and all(rows == answers[0] and rows for rows in answers)


async def test_parameters_as_query_options(
    sandbox: tuple[OneCSandbox, Wire], dataset: DemoDataset
) -> None:
    """Balance?Condition=…&Dimensions=… as the guide writes it for SliceLast: accepted (the
    same rows as in the path), refused (400 code 14), or ignored (the whole register)."""
    box, wire = sandbox
    warehouse = dataset.warehouse_key("Бестужевых")
    condition = f"Склад_Key eq guid'{warehouse}'"
    _, in_path = await wire.json("GET", balance(STOCK, condition, "Склад"))
    options = f"Condition={q(condition)}&Dimensions={q('Склад')}&$format=json"
    status, in_query = await wire.json("GET", f"{STOCK}/Balance", options)
    assert status == 200 and in_query["value"] == in_path["value"]
    assert [row["Склад_Key"] for row in in_query["value"]] == [warehouse]
    box.query_options = "refuse"
    status, refused = await wire.json("GET", f"{STOCK}/Balance", options)
    assert (status, refused["odata.error"]["code"]) == (400, "14")
    box.query_options = "ignore"
    _, ignored = await wire.json("GET", f"{STOCK}/Balance", options)
    assert len({row["Склад_Key"] for row in ignored["value"]}) > 1


async def test_iis_limits_answer_as_iis(sandbox: tuple[OneCSandbox, Wire]) -> None:
    """A path segment over 260 characters once decoded: HTTP.sys's 400 «Invalid URL»; a query
    string over 2048 bytes: IIS's 404.15; both HTML, never odata.error. Off when unset."""
    box, wire = sandbox
    cyrillic = "Catalog_" + "Ф" * 252  # 260 characters, 1,520 bytes on the wire
    status, raw, _ = await wire.call("GET", cyrillic)
    assert status == 404 and b"odata.error" in raw  # past IIS: 1C's own "no such set"
    status, raw, headers = await wire.call("GET", cyrillic + "Ф")
    assert status == 400 and b"Bad Request - Invalid URL" in raw
    assert headers["Content-Type"].startswith("text/html") and b"odata.error" not in raw
    long_query = "$format=json&$filter=" + q("Description eq '" + "x" * 2020 + "'")
    status, raw, headers = await wire.call("GET", "Catalog_Склады", long_query)
    assert status == 404 and b"404.15" in raw and headers["Content-Type"].startswith("text/html")
    assert box.requests_by_kind["iis_400"] == 1 and box.requests_by_kind["iis_404"] == 1
    box.max_url_segment_chars = box.max_query_string_bytes = None
    status, _, _ = await wire.call("GET", "Catalog_Склады", long_query)
    assert status == 200


async def test_metadata_is_xml_only(sandbox: tuple[OneCSandbox, Wire]) -> None:
    """$metadata with $format=json or a JSON-only Accept is refused; XML or */* is served."""
    _, wire = sandbox
    status, payload = await wire.json("GET", "$metadata", "$format=json")
    assert (status, payload["odata.error"]["code"]) == (415, "3")
    for accept, expected in (
        ("application/json", 415),
        ("application/xml", 200),
        ("*/*", 200),
    ):
        url = yarl.URL(wire.base + "$metadata", encoded=True)
        async with wire.session.get(url, headers={"Accept": accept}) as response:
            assert response.status == expected, accept
