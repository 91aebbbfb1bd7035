"""The demo data set: a small UT 11 base and the replenishment outcome it must produce.

``build_demo_dataset`` is deterministic for a given ``(n_items, seed)``. Every live item is built
as one *case* of the replenishment rules (DESIGN.md §1.1), and its ``ExpectedOutcome`` is written
down from how the case was constructed — the numbers below are chosen so that each case exercises
exactly one rule — never by running a planner over the data.

The same records feed the 1C emulator (``daemon.sandbox.onec_emulator``), the MoySklad emulator
(``moysklad_products``), the demo, the tests and the benchmarks.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field, replace
from decimal import Decimal

from daemon.model import EMPTY_GUID
from daemon.sandbox.onec_dataset_cases import (
    BUILDERS,
    CASES,
    D1,
    D2,
    GROUPS,
    JUNK,
    MINMAX,
    Case,
    T,
)

# Keys of the demo base are uuid5 names under this namespace, so a given seed always yields the
# same Ref_Keys (tests and the demo can refer to them across runs).
DATASET_NAMESPACE = uuid.UUID("0b7e4d2c-9a51-5f3e-8c62-41d0a9e7b3f5")

TARGET_NAME = "Магазин Центральный"
DONOR_NAMES = ("Бестужевых", "Контейнер")
UNRELATED_NAME = "Склад брака"
ORGANIZATION_NAME = 'ООО "Бизнес Медиа"'
PRIORITY_NAMES = ("Высокий", "Средний", "Низкий")

ZERO = Decimal(0)


# ---------------------------------------------------------------------------------------------
# Records (what the 1C base holds)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WarehouseRecord:
    key: str
    name: str
    parent_key: str = EMPTY_GUID
    is_folder: bool = False
    deletion_mark: bool = False
    kind: str = "ОптовыйСклад"  # ТипСклада


@dataclass(frozen=True, slots=True)
class OrganizationRecord:
    key: str
    name: str
    prefix: str = "БМ"
    inn: str = "7701234567"


@dataclass(frozen=True, slots=True)
class PriorityRecord:
    key: str
    name: str
    order: int


@dataclass(frozen=True, slots=True)
class ItemRecord:
    key: str
    code: str
    article: str
    name: str
    parent_key: str = EMPTY_GUID
    is_folder: bool = False
    deletion_mark: bool = False
    unit_key: str = EMPTY_GUID


@dataclass(frozen=True, slots=True)
class PackageRecord:
    """A row of Catalog_УпаковкиЕдиницыИзмерения: ``numerator/denominator`` base units."""

    key: str
    owner_key: str
    name: str
    numerator: Decimal
    denominator: Decimal = Decimal(1)


@dataclass(frozen=True, slots=True)
class NormGroupRecord:
    """A row of Catalog_ГруппировкиТоварныхОграничений."""

    key: str
    name: str


@dataclass(frozen=True, slots=True)
class NormRecord:
    """A row of InformationRegister_ТоварныеОграничения (keyed by its four dimensions)."""

    warehouse_key: str
    item_key: str
    group_key: str = EMPTY_GUID
    characteristic_key: str = EMPTY_GUID
    minimum: Decimal = ZERO
    maximum: Decimal = ZERO
    safety: Decimal = ZERO
    method: str = MINMAX
    package_key: str = EMPTY_GUID
    active: bool = True
    is_group: bool = False  # ЭтоГруппировка: the setting row of a group (no item, no warehouse)


@dataclass(frozen=True, slots=True)
class StockRecord:
    """One balance row of AccumulationRegister_ТоварыНаСкладах (all six dimensions)."""

    item_key: str
    warehouse_key: str
    in_stock: Decimal  # ВНаличии
    to_ship: Decimal = ZERO  # КОтгрузке (reserved)
    purpose_key: str = EMPTY_GUID  # Назначение
    series_key: str = EMPTY_GUID  # Серия
    characteristic_key: str = EMPTY_GUID
    room_key: str = EMPTY_GUID  # Помещение


@dataclass(frozen=True, slots=True)
class ExpectedOutcome:
    """What a correct run (with no incoming) decides for one item."""

    case: str
    takes: dict[str, Decimal]  # donor name → quantity moved to the target
    external: Decimal  # ordered in MoySklad
    unmapped: Decimal  # needed from outside but no MoySklad product


@dataclass(slots=True)
class DemoDataset:
    """The whole demo base. Mutable on purpose: tests add odd records before building a sandbox."""

    seed: int
    warehouses: list[WarehouseRecord]
    organizations: list[OrganizationRecord]
    priorities: list[PriorityRecord]
    items: list[ItemRecord]
    packages: list[PackageRecord]
    norm_groups: list[NormGroupRecord]
    norms: list[NormRecord]
    stock: list[StockRecord]
    purposes: list[str]  # Назначение keys used in stock rows
    series: list[str]  # Серия keys used in stock rows
    target_name: str = TARGET_NAME
    donor_names: tuple[str, ...] = DONOR_NAMES
    expected: dict[str, ExpectedOutcome] = field(default_factory=dict)
    moysklad_products: list[tuple[str, str, int]] = field(default_factory=list)

    def warehouse_key(self, name: str) -> str:
        """The key of the live warehouse called ``name`` (the demo has exactly one each)."""
        for warehouse in self.warehouses:
            if warehouse.name == name and not warehouse.is_folder and not warehouse.deletion_mark:
                return warehouse.key
        raise KeyError(name)


_WORDS = (
    "Кабель ВВГнг",
    "Розетка",
    "Выключатель",
    "Лампа светодиодная",
    "Удлинитель",
    "Автомат",
    "Щиток",
    "Провод ПуГВ",
    "Клемма",
    'Патрон "Эра"',
    "Хомут",
    "Гофра",
    "Изолента",
    "Светильник O'Light",
)
_FOLDERS = ("Электрика", "Освещение", "Кабель и провод", "Монтаж", "Архив")


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


class _Keys:
    def __init__(self, seed: int) -> None:
        self._seed = seed

    def __call__(self, kind: str, n: int | str) -> str:
        return str(uuid.uuid5(DATASET_NAMESPACE, f"{self._seed}:{kind}:{n}"))


def _split_rows(
    rng: random.Random,
    item_key: str,
    warehouse_key: str,
    on_hand: int,
    reserved: int,
    purposes: list[str],
    series: list[str],
) -> list[StockRecord]:
    """Spread a balance over up to three rows differing in Назначение/Серия, like a real base."""
    if on_hand == 0 and reserved == 0:
        return []
    parts = min(on_hand, 1 + rng.randrange(3)) or 1
    cuts = sorted(rng.sample(range(1, on_hand), parts - 1)) if parts > 1 else []
    amounts = [b - a for a, b in zip([0, *cuts], [*cuts, on_hand], strict=True)]
    slots = (
        (EMPTY_GUID, EMPTY_GUID),
        (rng.choice(purposes), EMPTY_GUID),
        (EMPTY_GUID, rng.choice(series)),
    )
    rows = []
    for index, amount in enumerate(amounts):
        purpose, serie = slots[index]
        rows.append(
            StockRecord(
                item_key=item_key,
                warehouse_key=warehouse_key,
                in_stock=Decimal(amount),
                to_ship=Decimal(reserved) if index == 0 else ZERO,
                purpose_key=purpose,
                series_key=serie,
            )
        )
    return rows


def build_demo_dataset(n_items: int = 300, seed: int = 42) -> DemoDataset:
    """A deterministic UT 11 demo base with ``n_items`` live items spread over every case."""
    if n_items < 1:
        raise ValueError("n_items must be at least 1")
    rng = random.Random(seed)
    keys = _Keys(seed)

    folder = WarehouseRecord(keys("wh", "folder"), "Розница", is_folder=True)
    roles = {
        T: WarehouseRecord(keys("wh", T), TARGET_NAME, folder.key, kind="РозничныйМагазин"),
        D1: WarehouseRecord(keys("wh", D1), DONOR_NAMES[0]),
        D2: WarehouseRecord(keys("wh", D2), DONOR_NAMES[1]),
        JUNK: WarehouseRecord(keys("wh", JUNK), UNRELATED_NAME),
    }
    # A deleted namesake of a donor: resolving «Контейнер» must not call it ambiguous.
    deleted_namesake = WarehouseRecord(keys("wh", "old"), DONOR_NAMES[1], deletion_mark=True)
    warehouses = [folder, *roles.values(), deleted_namesake]

    unit = PackageRecord(keys("unit", "pcs"), EMPTY_GUID, "шт", Decimal(1))
    groups = {name: NormGroupRecord(keys("group", name), name) for name, _, _, _ in GROUPS}
    norms: list[NormRecord] = [
        NormRecord(
            EMPTY_GUID,
            EMPTY_GUID,
            group_key=groups[name].key,
            minimum=Decimal(low),
            maximum=Decimal(high),
            method=method,
            is_group=True,
        )
        for name, low, high, method in GROUPS
    ]
    dataset = DemoDataset(
        seed=seed,
        warehouses=warehouses,
        organizations=[OrganizationRecord(keys("org", 1), ORGANIZATION_NAME)],
        priorities=[
            PriorityRecord(keys("priority", name), name, order)
            for order, name in enumerate(PRIORITY_NAMES)
        ],
        items=[ItemRecord(keys("folder", name), "", "", name, is_folder=True) for name in _FOLDERS],
        packages=[unit],
        norm_groups=list(groups.values()),
        norms=norms,
        stock=[],
        purposes=[keys("purpose", n) for n in range(3)],
        series=[keys("series", n) for n in range(5)],
    )
    folder_keys = [item.key for item in dataset.items[:-1]]
    archive_key = dataset.items[-1].key
    # Each live item is the next case in turn; every 37th item is deletion-marked instead.
    live = 0
    number = 0
    while live < n_items:
        number += 1
        key = keys("item", number)
        name = f"{rng.choice(_WORDS)} {number}"
        if number % 37 == 0:
            dataset.items.append(
                ItemRecord(
                    key,
                    f"УТ-{number:08d}",
                    f"BM-{number:06d}",
                    name,
                    archive_key,
                    deletion_mark=True,
                    unit_key=unit.key,
                )
            )
            dataset.norms.append(NormRecord(roles[T].key, key, minimum=Decimal(10)))
            continue
        case_name = CASES[live % len(CASES)]
        variant = (live // len(CASES)) % 4
        live += 1
        case = BUILDERS[case_name](variant)
        article = "" if case.empty_article else f"BM-{number:06d}"
        dataset.items.append(
            ItemRecord(
                key, f"УТ-{number:08d}", article, name, rng.choice(folder_keys), unit_key=unit.key
            )
        )
        _add_case(dataset, case, key, roles, groups, keys, rng)
        outside = Decimal(case.outside)
        dataset.expected[key] = ExpectedOutcome(
            case=case.name,
            takes={roles[role].name: Decimal(qty) for role, qty in case.takes.items()},
            external=outside if case.mapped else ZERO,
            unmapped=ZERO if case.mapped else outside,
        )
        # Most items exist in MoySklad; the unmapped case never does, a few quiet ones neither.
        quiet_and_absent = case.outside == 0 and number % 7 == 0
        if case.mapped and not quiet_and_absent:
            dataset.moysklad_products.append((article, name, rng.randrange(5_000, 500_000)))
    return dataset


def _add_case(
    dataset: DemoDataset,
    case: Case,
    item_key: str,
    roles: dict[str, WarehouseRecord],
    groups: dict[str, NormGroupRecord],
    keys: _Keys,
    rng: random.Random,
) -> None:
    for role, norm in case.norms.items():
        package_key = EMPTY_GUID
        if norm.package:
            package = PackageRecord(
                keys("package", f"{item_key}:{norm.package}"),
                item_key,
                f"Упаковка ({norm.package} шт)",
                Decimal(norm.package),
            )
            dataset.packages.append(package)
            package_key = package.key
        row = NormRecord(
            warehouse_key=roles[role].key,
            item_key=item_key,
            minimum=Decimal(norm.minimum),
            maximum=Decimal(norm.maximum),
            method=norm.method,
            package_key=package_key,
            active=norm.active,
        )
        if norm.detailed:
            dataset.norms.append(row)
        if norm.group:
            dataset.norms.append(replace(row, group_key=groups[norm.group].key))
    for role, (on_hand, reserved) in case.stock.items():
        dataset.stock.extend(
            _split_rows(
                rng,
                item_key,
                roles[role].key,
                on_hand,
                reserved,
                dataset.purposes,
                dataset.series,
            )
        )
