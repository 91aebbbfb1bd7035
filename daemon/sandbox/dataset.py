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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal

from daemon.model import EMPTY_GUID

# Keys of the demo base are uuid5 names under this namespace, so a given seed always yields the
# same Ref_Keys (tests and the demo can refer to them across runs).
DATASET_NAMESPACE = uuid.UUID("0b7e4d2c-9a51-5f3e-8c62-41d0a9e7b3f5")

MINMAX = "ПоддержаниеЗапасаМинМакс"
TARGET_NAME = "Магазин Центральный"
DONOR_NAMES = ("Бестужевых", "Контейнер")
UNRELATED_NAME = "Склад брака"
ORGANIZATION_NAME = 'ООО "Бизнес Медиа"'
PRIORITY_NAMES = ("Высокий", "Средний", "Низкий")

CASES = (
    "no_deficit",
    "covered_by_first",
    "covered_by_second",
    "split",
    "partly_external",
    "all_external",
    "donor_protected",
    "reserved",
    "no_norm",
    "inactive_norm",
    "other_method",
    "packaging",
    "unmapped",
    "group_norm",
    "detailed_over_group",
    "min_only",
)

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


# ---------------------------------------------------------------------------------------------
# Case construction
# ---------------------------------------------------------------------------------------------

T, D1, D2, JUNK = "target", "donor1", "donor2", "junk"


@dataclass(slots=True)
class _Norm:
    minimum: int
    maximum: int = 0
    package: int = 0  # units per order package; 0 = none
    active: bool = True
    method: str = MINMAX
    group: str = ""  # name of the norm group the item belongs to on that warehouse
    detailed: bool = True  # a detailed row exists (False: only the group membership row)


@dataclass(slots=True)
class _Case:
    name: str
    norms: dict[str, _Norm] = field(default_factory=dict)  # role → norm
    stock: dict[str, tuple[int, int]] = field(default_factory=dict)  # role → (ВНаличии, КОтгрузке)
    takes: dict[str, int] = field(default_factory=dict)  # role → quantity
    outside: int = 0  # quantity needed from outside MoySklad-or-unmapped
    mapped: bool = True
    empty_article: bool = False


# Group settings: (name, min, max, method). Group rows have no item and no warehouse.
_GROUPS = (("Ходовые", 10, 20, MINMAX), ("Под заказ", 10, 20, "ЗаказПодЗаказ"))


def _no_deficit(v: int) -> _Case:
    # v == 0: free stock equals the minimum exactly (not below it: no deficit).
    return _Case("no_deficit", {T: _Norm(5 + v, 12 + v)}, {T: (5 + 2 * v, 0), D1: (10, 0)})


def _covered_by_first(v: int) -> _Case:
    # need = 20+v − (3+v) = 17; Бестужевых spare = (24+v) − 2 = 22+v ≥ 17.
    return _Case(
        "covered_by_first",
        {T: _Norm(10, 20 + v), D1: _Norm(2)},
        {T: (3 + v, 0), D1: (24 + v, 0), D2: (30, 0)},
        takes={D1: 17},
    )


def _covered_by_second(v: int) -> _Case:
    # need = 16 − (2+v); Бестужевых holds 4 or 3 against its own minimum 4: spare 0.
    return _Case(
        "covered_by_second",
        {T: _Norm(8, 16), D1: _Norm(4)},
        {T: (2 + v, 0), D1: (4 - v % 2, 0), D2: (20, 0)},
        takes={D2: 14 - v},
    )


def _split(v: int) -> _Case:
    # need = 25 − 5 = 20; Бестужевых spare = 10+v − 3 = 7+v; Контейнер gives the rest.
    return _Case(
        "split",
        {T: _Norm(10, 25), D1: _Norm(3)},
        {T: (5, 0), D1: (10 + v, 0), D2: (40, 0)},
        takes={D1: 7 + v, D2: 13 - v},
    )


def _partly_external(v: int) -> _Case:
    # need = 15; Бестужевых spare 4 (no norm); Контейнер spare 5+v − 2 = 3+v; rest outside.
    return _Case(
        "partly_external",
        {T: _Norm(10, 20), D2: _Norm(2)},
        {T: (5, 0), D1: (4, 0), D2: (5 + v, 0)},
        takes={D1: 4, D2: 3 + v},
        outside=8 - v,
    )


def _all_external(v: int) -> _Case:
    # Donors hold nothing; the unrelated warehouse holds plenty and must not be used.
    return _Case(
        "all_external",
        {T: _Norm(6 + v, 12 + v)},
        {T: (1, 0), JUNK: (50, 0)},
        outside=11 + v,
    )


def _donor_protected(v: int) -> _Case:
    # need = 15; Бестужевых holds exactly its minimum, Контейнер less than its minimum.
    return _Case(
        "donor_protected",
        {T: _Norm(10, 15), D1: _Norm(10), D2: _Norm(5)},
        {T: (0, 0), D1: (10, 0), D2: (3 + v % 3, 0)},
        outside=15,
    )


def _reserved(v: int) -> _Case:
    # On hand 12+v ≥ min 6, but 8+v reserved: free 4 < 6, need 10 − 4 = 6.
    # Бестужевых: 20 on hand, 12 reserved, min 2 → spare 6.
    return _Case(
        "reserved",
        {T: _Norm(6, 10), D1: _Norm(2)},
        {T: (12 + v, 8 + v), D1: (20, 12), D2: (30, 0)},
        takes={D1: 6},
    )


def _no_norm(v: int) -> _Case:
    return _Case("no_norm", {}, {T: (v, 0), D1: (50, 0)})


def _inactive_norm(v: int) -> _Case:
    return _Case("inactive_norm", {T: _Norm(10, 20, active=False)}, {T: (v, 0), D1: (50, 0)})


def _other_method(v: int) -> _Case:
    if v == 3:  # member of a group whose setting is not min-max
        norm = _Norm(1, 2, group="Под заказ", detailed=False)
    else:
        norm = _Norm(10, 20, method="ПоддержаниеЗапасаНаСрокПоНорме" if v % 2 else "ЗаказПодЗаказ")
    return _Case("other_method", {T: norm}, {T: (0, 0), D1: (50, 0)})


def _packaging(v: int) -> _Case:
    # Donor takes round down to whole packages, the outside quantity rounds up.
    if v == 0:  # box of 6: need 25; Бестужевых 14 → 12; Контейнер 4 → 0; 13 → 18 outside
        return _Case(
            "packaging",
            {T: _Norm(12, 30, package=6)},
            {T: (5, 0), D1: (14, 0), D2: (4, 0)},
            takes={D1: 12},
            outside=18,
        )
    if v == 1:  # pack of 4: need 25; Бестужевых 14 → 12; Контейнер 4 → 4; 9 → 12 outside
        return _Case(
            "packaging",
            {T: _Norm(12, 30, package=4)},
            {T: (5, 0), D1: (14, 0), D2: (4, 0)},
            takes={D1: 12, D2: 4},
            outside=12,
        )
    if v == 2:  # box of 6: need 24 = 4 boxes, Бестужевых covers it whole
        return _Case(
            "packaging",
            {T: _Norm(12, 30, package=6)},
            {T: (6, 0), D1: (30, 0)},
            takes={D1: 24},
        )
    # pack of 4, nothing spare: need 25 → 28 outside
    return _Case("packaging", {T: _Norm(12, 30, package=4)}, {T: (5, 0)}, outside=28)


def _unmapped(v: int) -> _Case:
    # need = 14 − 2 = 12; odd variants get 5 from Бестужевых first.
    stock = {T: (2, 0), D1: (5, 0)} if v % 2 else {T: (2, 0)}
    takes = {D1: 5} if v % 2 else {}
    return _Case(
        "unmapped",
        {T: _Norm(8, 14)},
        stock,
        takes=takes,
        outside=7 if v % 2 else 12,
        mapped=False,
        empty_article=v % 2 == 0,
    )


def _group_norm(v: int) -> _Case:
    # Only a membership row (its own numbers 1/2 must lose to the group's 10/20).
    norms = {T: _Norm(1, 2, group="Ходовые", detailed=False)}
    if v == 2:
        # Бестужевых is a member too: its minimum 10 protects 10 of its 18; Контейнер the rest.
        norms[D1] = _Norm(1, 2, group="Ходовые", detailed=False)
        return _Case(
            "group_norm", norms, {T: (6, 0), D1: (18, 0), D2: (40, 0)}, takes={D1: 8, D2: 6}
        )
    return _Case("group_norm", norms, {T: (4 + v, 0), D1: (40, 0)}, takes={D1: 16 - v})


def _detailed_over_group(v: int) -> _Case:
    # Detailed 5/8 wins over the group's 10/20: need 8 − 3 = 5 (the group would say 17).
    return _Case(
        "detailed_over_group",
        {T: _Norm(5, 8, group="Ходовые")},
        {T: (3, 0), D1: (40, 0)},
        takes={D1: 5},
    )


def _min_only(v: int) -> _Case:
    # No maximum: the target level is the minimum, need 10 − 4 = 6.
    return _Case("min_only", {T: _Norm(10)}, {T: (4, 0), D1: (30, 0)}, takes={D1: 6})


_BUILDERS: dict[str, Callable[[int], _Case]] = {
    "no_deficit": _no_deficit,
    "covered_by_first": _covered_by_first,
    "covered_by_second": _covered_by_second,
    "split": _split,
    "partly_external": _partly_external,
    "all_external": _all_external,
    "donor_protected": _donor_protected,
    "reserved": _reserved,
    "no_norm": _no_norm,
    "inactive_norm": _inactive_norm,
    "other_method": _other_method,
    "packaging": _packaging,
    "unmapped": _unmapped,
    "group_norm": _group_norm,
    "detailed_over_group": _detailed_over_group,
    "min_only": _min_only,
}

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
    groups = {name: NormGroupRecord(keys("group", name), name) for name, _, _, _ in _GROUPS}
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
        for name, low, high, method in _GROUPS
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
        case = _BUILDERS[case_name](variant)
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
    case: _Case,
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
