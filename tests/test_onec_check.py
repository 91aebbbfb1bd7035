"""``OneCConnector.check`` and the $metadata gate: version, composition, one line per step."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import SecretStr

from daemon.errors import PermanentError
from daemon.onec.connector import OneCConnector
from daemon.onec.settings import OneCSettings
from daemon.ports import CheckResult
from daemon.sandbox.dataset import DemoDataset, build_demo_dataset
from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox
from tests.conftest import Sandboxes
from tests.onec_support import connected

NAMES = ["Магазин Центральный", "Бестужевых", "Контейнер"]
STEPS = [
    "reachable",
    "credentials accepted",
    "UT version detected",
    "required objects published",
    "organization and priority resolved",
    "warehouses resolved",
    "balance read",
]
BUDGETS = (
    "URL budgets: 2048 bytes of path and query (onec.max_url_bytes), "
    "260 characters per path segment (onec.max_path_segment_chars)"
)
GUIDE = "guide form (Condition='…guid'…'')"
QUERY = "query-option form (Balance?Condition=…)"
DOUBLED = "doubled form (Condition='…guid''…''')"


@pytest.fixture
def dataset() -> DemoDataset:
    return build_demo_dataset(32, seed=1)


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    assert [r.name for r in results] == STEPS
    assert {r.system for r in results} == {"1c"}
    return {r.name: r for r in results}


async def test_all_good(dataset: DemoDataset) -> None:
    """A healthy publication passes every line, naming the version, organization, warehouses."""
    async with connected(OneCSandbox(dataset)) as onec:
        lines = by_name(await onec.check(NAMES))
    assert all(line.ok for line in lines.values())
    assert lines["UT version detected"].detail == "UT 11.5 (detected from $metadata)"
    assert "Бизнес Медиа" in lines["organization and priority resolved"].detail
    assert dataset.warehouse_key("Бестужевых") in lines["warehouses resolved"].detail
    assert lines["balance read"].detail == f"Condition in the {GUIDE}, detected; {BUDGETS}"


@pytest.mark.parametrize(
    ("server", "setting", "expected"),
    [
        ("doubled", "auto", f"{DOUBLED}, detected after the server refused the {GUIDE}"),
        ("both", "auto", f"{GUIDE}, detected"),
        ("guide", "query", f"{QUERY}, pinned by onec.condition_form"),
    ],
)
async def test_balance_line_names_the_form_the_server_took(
    dataset: DemoDataset, server: str, setting: str, expected: str
) -> None:
    """check reads one balance and says which Condition form worked, and the URL budgets."""
    box = OneCSandbox(dataset)
    box.condition_form = server
    async with connected(box, condition_form=setting, max_path_segment_chars=300) as onec:
        line = by_name(await onec.check(NAMES))["balance read"]
    assert line.ok, line.detail
    assert line.detail == f"Condition in the {expected}; " + BUDGETS.replace("260", "300")


async def test_balance_line_fails_when_the_server_refuses_the_pinned_form(
    dataset: DemoDataset,
) -> None:
    """A server that refuses the pinned form: the line fails with 1C's own words and the key."""
    async with connected(OneCSandbox(dataset), condition_form="doubled") as onec:
        line = by_name(await onec.check(NAMES))["balance read"]
    assert not line.ok
    assert "could not parse the Condition" in line.detail and "'doubled'" in line.detail
    assert "Не удалось разобрать строку" in line.detail and BUDGETS in line.detail


async def test_balance_line_fails_when_the_condition_is_ignored(dataset: DemoDataset) -> None:
    """Query options silently ignored (the whole register comes back): check says so."""
    box = OneCSandbox(dataset)
    box.query_options = "ignore"
    async with connected(box, condition_form="query") as onec:
        line = by_name(await onec.check(NAMES))["balance read"]
    assert not line.ok and "did not apply the Condition sent in the query form" in line.detail


async def test_wrong_credentials(dataset: DemoDataset) -> None:
    """Reachable yes, credentials no, the rest skipped."""
    async with connected(OneCSandbox(dataset), password="nope") as onec:
        lines = by_name(await onec.check(NAMES))
    assert lines["reachable"].ok and not lines["credentials accepted"].ok
    assert "HTTP 401" in lines["credentials accepted"].detail
    assert all(not lines[s].ok and "skipped" in lines[s].detail for s in STEPS[2:])


async def test_unreachable(dataset: DemoDataset) -> None:
    """Nothing listening: not reachable, everything else skipped."""
    async with run_onec_sandbox(OneCSandbox(dataset)) as base:
        closed = base
    settings = OneCSettings(base_url=closed, username="hub", read_attempts=1)  # type: ignore[arg-type]
    async with OneCConnector(settings, SecretStr("sandbox")) as onec:
        lines = by_name(await onec.check(NAMES))
    assert not lines["reachable"].ok and "cannot connect" in lines["reachable"].detail
    assert all("skipped" in lines[s].detail for s in STEPS[1:])


async def test_unpublished_objects_are_named(dataset: DemoDataset) -> None:
    """A set missing from the composition fails check and every read, naming the object."""
    box = OneCSandbox(dataset)
    box.unpublished = {"Catalog_Приоритеты", "AccumulationRegister_ЗаказыНаПеремещение"}
    async with connected(box) as onec:
        lines = by_name(await onec.check(NAMES))
        with pytest.raises(PermanentError) as caught:
            await onec.read_items()
    detail = lines["required objects published"].detail
    assert not lines["required objects published"].ok and lines["UT version detected"].ok
    for text in (detail, str(caught.value)):
        assert "Справочник.Приоритеты (Catalog_Приоритеты)" in text
        assert "РегистрНакопления.ЗаказыНаПеремещение" in text
        assert "Состав" in text
    assert caught.value.code == "composition"


async def test_forced_version_mismatch(dataset: DemoDataset) -> None:
    """ut_version = 11.4 against an 11.5 base: the version line says forced, objects line fails."""
    async with connected(OneCSandbox(dataset), ut_version="11.4") as onec:
        lines = by_name(await onec.check(NAMES))
    assert lines["UT version detected"].detail == "UT 11.4 (forced by onec.ut_version)"
    assert "Группировка_Key" in lines["required objects published"].detail


async def test_detects_114(dataset: DemoDataset) -> None:
    """An 11.4 base is detected as such and passes."""
    async with connected(OneCSandbox(dataset, ut_version="11.4")) as onec:
        lines = by_name(await onec.check(NAMES))
    assert all(line.ok for line in lines.values())
    assert lines["UT version detected"].detail.startswith("UT 11.4")


async def test_unknown_warehouse_and_organization(dataset: DemoDataset) -> None:
    """A missing warehouse and an unknown organization each fail their own line only."""
    async with connected(OneCSandbox(dataset), organization="ООО Другая") as onec:
        lines = by_name(await onec.check(["Магазин Центральный", "Нет такого склада"]))
    assert all(lines[s].ok for s in STEPS[:4])
    assert "onec.organization" in lines["organization and priority resolved"].detail
    assert "Бизнес Медиа" in lines["organization and priority resolved"].detail
    assert "'Нет такого склада' not found" in lines["warehouses resolved"].detail


async def test_metadata_is_read_once(dataset: DemoDataset) -> None:
    """$metadata is fetched once and cached across reads; check reads it again."""
    box = OneCSandbox(dataset)
    async with connected(box) as onec:
        await onec.read_items()
        await onec.resolve_warehouses(NAMES)
        assert box.requests_by_kind["metadata"] == 1
        await onec.check(NAMES)
        assert box.requests_by_kind["metadata"] == 2


async def test_reads_go_out_with_metadata_and_share_it(dataset: DemoDataset) -> None:
    """On a fresh connector reads do not wait for $metadata, and concurrent ones read it once."""
    box = OneCSandbox(dataset)
    box.latency_s = 0.05
    async with connected(box) as onec:
        items, found = await asyncio.gather(onec.read_items(), onec.resolve_warehouses(NAMES))
        # $metadata, the warehouse lookup, the first items page and the count, all at once.
        assert box.max_in_flight == 4 and box.requests_by_kind["metadata"] == 1
        box.reset_counters()
        await onec.read_free_stock([w.key for w in found.values()])
    assert items and len(found) == 3
    assert box.requests_by_kind == {"balance": 3}


@pytest.mark.parametrize(
    ("hidden", "read", "named"),
    [
        ("Catalog_Номенклатура", "items", "Справочник.Номенклатура (Catalog_Номенклатура)"),
        ("Catalog_Склады", "warehouses", "Справочник.Склады (Catalog_Склады)"),
        (
            "AccumulationRegister_ТоварыНаСкладах",
            "stock",
            "РегистрНакопления.ТоварыНаСкладах (AccumulationRegister_ТоварыНаСкладах)",
        ),
    ],
)
async def test_a_read_of_an_unpublished_set_names_the_composition(
    dataset: DemoDataset, hidden: str, read: str, named: str
) -> None:
    """A read's own 404 on a set left out of the composition gives way to the $metadata verdict."""
    box = OneCSandbox(dataset)
    box.unpublished = {hidden}
    box.metadata_latency_s = 0.2  # the read's 404 comes back first
    keys = [dataset.warehouse_key(name) for name in NAMES]
    calls: dict[str, Callable[[OneCConnector], Awaitable[object]]] = {
        "items": lambda onec: onec.read_items(),
        "warehouses": lambda onec: onec.resolve_warehouses(NAMES),
        "stock": lambda onec: onec.read_free_stock(keys),
    }
    async with connected(box) as onec:
        with pytest.raises(PermanentError) as caught:
            await calls[read](onec)
    assert caught.value.code == "composition"
    assert named in str(caught.value) and "Состав" in str(caught.value)
    assert box.requests_by_kind["metadata"] == 1 and box.requests_by_kind["error"] >= 1


async def test_hubctl_check_shows_the_condition_form_and_budgets(
    sandboxes: Sandboxes, hub_factory: Any
) -> None:
    """hubctl check, human and --json, has the balance line with the form and the budgets."""
    sandboxes.onec.condition_form = "doubled"
    hub = await hub_factory(sandboxes.config, sandboxes.socket_path, **sandboxes.env)
    await hub.wait_socket()
    human = await hub.ctl("check", timeout=120)
    assert human.code == 0, human.out + human.err
    [line] = [text for text in human.out.splitlines() if "balance read" in text]
    assert f"Condition in the {DOUBLED}, detected after the server refused the {GUIDE}" in line
    assert BUDGETS in line
    answer = json.loads((await hub.ctl("--json", "check", timeout=120)).out)
    [check] = [c for c in answer["checks"] if c["name"] == "balance read"]
    assert check["ok"] is True and check["system"] == "1c" and BUDGETS in check["detail"]
    assert await hub.stop() == 0
