"""The demo data set: deterministic, every case present, expectations consistent with its data."""

from __future__ import annotations

from collections import Counter
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from pydantic import SecretStr

from daemon.model import EMPTY_GUID
from daemon.onec.connector import OneCConnector
from daemon.onec.settings import OneCSettings
from daemon.sandbox.dataset import ExpectedOutcome, build_demo_dataset
from daemon.sandbox.onec_dataset_cases import CASES
from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox


def test_same_seed_same_data() -> None:
    """Two builds with one seed are identical; another seed gives other keys."""
    first, second = build_demo_dataset(200, seed=42), build_demo_dataset(200, seed=42)
    assert first == second
    other = build_demo_dataset(200, seed=43)
    assert {i.key for i in other.items}.isdisjoint(i.key for i in first.items)


def test_every_case_on_several_items() -> None:
    """Each replenishment case is built on at least five items; live items number n_items."""
    dataset = build_demo_dataset(300)
    counts = Counter(outcome.case for outcome in dataset.expected.values())
    assert set(counts) == set(CASES)
    assert min(counts.values()) >= 5
    live = [i for i in dataset.items if not i.is_folder and not i.deletion_mark]
    assert len(live) == len(dataset.expected) == 300


def test_base_has_the_awkward_parts() -> None:
    """Folders, deleted items, a deleted namesake warehouse, split and reserved stock rows."""
    dataset = build_demo_dataset(300)
    assert any(i.is_folder for i in dataset.items)
    deleted = [i for i in dataset.items if i.deletion_mark]
    assert deleted and not set(dataset.expected) & {i.key for i in deleted}
    names = Counter(w.name for w in dataset.warehouses)
    assert names["Контейнер"] == 2 and any(w.is_folder for w in dataset.warehouses)
    per_pair = Counter((row.item_key, row.warehouse_key) for row in dataset.stock)
    split = [pair for pair, rows in per_pair.items() if rows > 1]
    assert len(split) > 50
    assert any(row.purpose_key != EMPTY_GUID for row in dataset.stock)
    assert any(row.series_key != EMPTY_GUID for row in dataset.stock)
    assert any(row.to_ship > 0 for row in dataset.stock)
    assert any(not n.active for n in dataset.norms) and any(n.is_group for n in dataset.norms)
    assert {p.numerator for p in dataset.packages} >= {Decimal(4), Decimal(6)}


def test_moysklad_products_follow_the_mapping() -> None:
    """Everything ordered outside exists in MoySklad; the unmapped items never do."""
    dataset = build_demo_dataset(300)
    articles = [article for article, _, _ in dataset.moysklad_products]
    assert len(articles) == len(set(articles)) and all(articles)
    by_key = {i.key: i for i in dataset.items}
    known = set(articles)
    quiet_missing = 0
    for key, outcome in dataset.expected.items():
        present = by_key[key].article in known
        if outcome.external > 0:
            assert present
        if outcome.unmapped > 0:
            assert not present
        if outcome.external == outcome.unmapped == 0 and not present:
            quiet_missing += 1
    assert 0 < quiet_missing < len(dataset.expected) // 4
    assert all(price > 0 for _, _, price in dataset.moysklad_products)


def _round(value: Decimal, size: Decimal | None, rounding: str) -> Decimal:
    if not size:
        return value
    return (value / size).to_integral_value(rounding=rounding) * size


async def test_expectations_follow_the_design_rules() -> None:
    """Re-deriving DESIGN §1.1 from the data as 1C serves it reproduces every expectation."""
    dataset = build_demo_dataset(160, seed=11)
    box = OneCSandbox(dataset)
    names = [dataset.target_name, *dataset.donor_names]
    async with run_onec_sandbox(box) as base:
        settings = OneCSettings(base_url=base, username="hub")  # type: ignore[arg-type]
        async with OneCConnector(settings, SecretStr("sandbox")) as onec:
            warehouses = await onec.resolve_warehouses(names)
            keys = [warehouses[name].key for name in names]
            norms = await onec.read_norms(keys)
            free = await onec.read_free_stock(keys)
            items = {item.key: item for item in await onec.read_items()}
    mapped = {article for article, _, _ in dataset.moysklad_products}
    target, donors = keys[0], list(zip(dataset.donor_names, keys[1:], strict=True))
    zero = Decimal(0)
    for key, expected in dataset.expected.items():
        norm = norms.get((key, target))
        stock = free.get((key, target), zero)
        if norm is None or stock >= norm.minimum:
            assert expected == ExpectedOutcome(expected.case, {}, zero, zero), key
            continue
        need = (norm.maximum or norm.minimum) - stock
        takes: dict[str, Decimal] = {}
        for name, donor in donors:
            own = norms.get((key, donor))
            spare = max(zero, free.get((key, donor), zero) - (own.minimum if own else zero))
            take = _round(min(need, spare), norm.package_size, ROUND_FLOOR)
            if take > 0:
                takes[name] = take
                need -= take
        outside = _round(need, norm.package_size, ROUND_CEILING)
        known = items[key].article in mapped
        assert expected == ExpectedOutcome(
            expected.case, takes, outside if known else zero, zero if known else outside
        ), (key, expected.case)
