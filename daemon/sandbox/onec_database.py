"""The emulated UT 11 base: entity tables and accumulation registers, indexed for scale.

Query work per request is proportional to the answer, not to the base: filtered and ordered
row lists are cached per (filter, order) until the table changes, so paging through 100,000 items
filters once; register balances are grouped once per (Condition, Dimensions) and the Condition
uses the register's index dimension when it pins it (``Склад_Key eq guid'…'``).
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from decimal import Decimal
from operator import itemgetter
from typing import Any

from daemon.model import EMPTY_GUID
from daemon.sandbox.dataset import DemoDataset, StockRecord
from daemon.sandbox.onec_filter import (
    FilterSyntaxError,
    Getter,
    UnknownFieldError,
    compile_filter,
    parse_filter,
    restricted_values,
)
from daemon.sandbox.onec_schema import (
    FREE_STOCK_114,
    ITEMS,
    NORMS,
    PACKAGES,
    STOCK,
    TRANSFER_ORDERS,
    WAREHOUSES,
    EntityDef,
    entity_defs,
    group_dimension,
)

Row = dict[str, Any]
_CACHE_SIZE = 32


class ODataFault(Exception):
    """An error the emulated publication answers with (an ``odata.error`` body)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"{status} {code} {message}")


def filter_error() -> ODataFault:
    return ODataFault(400, "14", "Ошибка при разборе опции запроса $filter")


def unknown_segment(name: str) -> ODataFault:
    # The real text echoes the name back (reference §1.8, P7).
    return ODataFault(400, "6", f"Сегмент пути {name} не найден!")


def data_version(counter: int) -> str:
    """``DataVersion``: base64 of an 8-byte counter (``AAAAAAAAAAE=`` …)."""
    return base64.b64encode(counter.to_bytes(8, "big")).decode("ascii")


def json_number(value: Decimal) -> int | float:
    """Edm.Double goes out as a JSON number; whole values as integers, like 1C prints them."""
    return int(value) if value == value.to_integral_value() else float(value)


class EntityTable:
    """One entity set held as dict rows (every row carries every property)."""

    def __init__(self, entity: EntityDef, rows: Iterable[Row] = ()) -> None:
        self.entity = entity
        self.rows: list[Row] = []
        self.version = 0
        self._by_key: dict[tuple[Any, ...], Row] = {}
        self._key = itemgetter(*entity.keys) if len(entity.keys) > 1 else None
        self._cache: OrderedDict[tuple[str, str], tuple[int, list[Row]]] = OrderedDict()
        for row in rows:
            self.insert(row)

    def key_of(self, row: Row) -> tuple[Any, ...]:
        if self._key is None:
            return (row[self.entity.keys[0]],)
        return tuple(self._key(row))

    def get(self, key: tuple[Any, ...]) -> Row | None:
        return self._by_key.get(key)

    def insert(self, row: Row) -> None:
        self.rows.append(row)
        self._by_key[self.key_of(row)] = row
        self.version += 1

    def remove(self, key: tuple[Any, ...]) -> None:
        row = self._by_key.pop(key, None)
        if row is not None:
            self.rows.remove(row)
            self.version += 1

    def touch(self) -> None:
        """A row was changed in place: cached query results are stale."""
        self.version += 1

    def getter(self, name: str) -> Getter:
        if name not in self.entity.property_names:
            raise UnknownFieldError(name)
        return itemgetter(name)

    def select(self, filter_text: str, orderby: str) -> list[Row]:
        """Rows matching ``$filter`` in ``$orderby`` order. Both steps are cached until the
        table changes, so every page (and the ``/$count``) of one query filters once."""
        ordered = self._cached((filter_text, orderby))
        if ordered is not None:
            return ordered
        rows = self._cached((filter_text, ""))
        if rows is None:
            rows = self.rows
            if filter_text:
                predicate = compile_filter(_parse(filter_text), self._field)
                rows = [row for row in rows if predicate(row)]
            self._store((filter_text, ""), rows)
        if orderby:
            rows = self._sorted(rows, orderby)
            self._store((filter_text, orderby), rows)
        return rows

    def _cached(self, key: tuple[str, str]) -> list[Row] | None:
        cached = self._cache.get(key)
        if cached is None or cached[0] != self.version:
            return None
        self._cache.move_to_end(key)
        return cached[1]

    def _store(self, key: tuple[str, str], rows: list[Row]) -> None:
        self._cache[key] = (self.version, rows)
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)

    def _field(self, name: str) -> Getter:
        try:
            return self.getter(name)
        except UnknownFieldError:
            raise unknown_segment(name) from None

    def _sorted(self, rows: list[Row], orderby: str) -> list[Row]:
        clauses = []
        for clause in (part.strip() for part in orderby.split(",")):
            name, _, direction = clause.partition(" ")
            direction = direction.strip().lower()
            if direction not in ("", "asc", "desc"):
                raise ODataFault(400, "14", "Ошибка при разборе опции запроса $orderby")
            self._field(name)
            clauses.append((name, direction == "desc"))
        names = [name for name, _ in clauses]
        if len({desc for _, desc in clauses}) == 1:
            try:
                # One pass with a tuple key: the usual case (no nulls, one direction).
                return sorted(rows, key=itemgetter(*names), reverse=clauses[0][1])
            except TypeError:
                pass
        ordered = list(rows)
        for name, desc in reversed(clauses):
            get = itemgetter(name)
            ordered.sort(key=lambda row: _sort_key(get(row)), reverse=desc)
        return ordered


def _sort_key(value: Any) -> tuple[bool, Any]:
    return (value is None, value)


def _parse(text: str) -> Any:
    try:
        return parse_filter(text)
    except FilterSyntaxError:
        raise filter_error() from None


def filter_rows(rows: list[Row], filter_text: str, known: frozenset[str]) -> list[Row]:
    """``$filter`` over rows that are not a table (a virtual table's answer)."""

    def field(name: str) -> Getter:
        if name not in known:
            raise unknown_segment(name)
        return itemgetter(name)

    predicate = compile_filter(_parse(filter_text), field)
    return [row for row in rows if predicate(row)]


class BalanceRegister:
    """An accumulation register of balance type, held as tuples in ``dims + resources`` order
    and indexed by one dimension property."""

    def __init__(self, entity: EntityDef, index_prop: str) -> None:
        self.entity = entity
        self.props = tuple(d.prop for d in entity.dimensions) + entity.resources
        self._index_at = self.props.index(index_prop)
        self._index_prop = index_prop
        self._rows: dict[Any, list[tuple[Any, ...]]] = {}
        self.version = 0
        self._cache: OrderedDict[tuple[str, str], tuple[int, list[Row]]] = OrderedDict()

    def add(self, row: Sequence[Any]) -> None:
        self._rows.setdefault(row[self._index_at], []).append(tuple(row))
        self.version += 1

    def replace(self, index_value: Any, rows: Iterable[Sequence[Any]]) -> None:
        """Replace every row whose index dimension is ``index_value`` (a recorder's movements)."""
        self._rows[index_value] = [tuple(row) for row in rows]
        self.version += 1

    def rows_of(self, index_value: Any) -> list[tuple[Any, ...]]:
        return self._rows.get(index_value, [])

    def balance(self, condition: str, dimensions: str) -> list[Row]:
        """``Balance(Condition=…, Dimensions=…)``: rows grouped by the chosen dimensions, every
        resource suffixed ``Balance``, all-zero rows left out."""
        cache_key = (condition, dimensions)
        cached = self._cache.get(cache_key)
        if cached is not None and cached[0] == self.version:
            return cached[1]
        chosen = self._dimensions(dimensions)
        candidates: Iterable[tuple[Any, ...]]
        if condition:
            node = _parse(condition)
            predicate = compile_filter(node, self._field)
            pinned = restricted_values(node, self._index_prop)
            pool = (
                (row for value in pinned for row in self._rows.get(value, ()))
                if pinned is not None
                else (row for rows in self._rows.values() for row in rows)
            )
            candidates = (row for row in pool if predicate(row))
        else:
            candidates = (row for rows in self._rows.values() for row in rows)
        resources = slice(len(self.entity.dimensions), None)
        group_of = itemgetter(*chosen) if len(chosen) > 1 else (lambda row: (row[chosen[0]],))
        totals: dict[tuple[Any, ...], list[Decimal]] = {}
        for row in candidates:
            group = group_of(row)
            sums = totals.get(group)
            if sums is None:
                totals[group] = list(row[resources])
            else:
                for offset, value in enumerate(row[resources]):
                    sums[offset] += value
        names = [self.props[i] for i in chosen]
        balance_names = [resource + "Balance" for resource in self.entity.resources]
        result = []
        for group, sums in totals.items():
            if not any(sums):
                continue
            out: Row = dict(zip(names, group, strict=True))
            for name, total in zip(balance_names, sums, strict=True):
                out[name] = json_number(total)
            result.append(out)
        self._cache[cache_key] = (self.version, result)
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return result

    def _field(self, name: str) -> Getter:
        if name not in self.props[: len(self.entity.dimensions)]:
            raise unknown_segment(name)
        return itemgetter(self.props.index(name))

    def _dimensions(self, text: str) -> list[int]:
        dims = self.entity.dimensions
        if not text:
            return list(range(len(dims)))
        chosen = []
        for name in (part.strip() for part in text.split(",")):
            index = next((i for i, d in enumerate(dims) if d.name == name), None)
            if index is None:
                raise unknown_segment(name)
            chosen.append(index)
        return chosen


class OneCDatabase:
    """Every table and register of the emulated base, built from a ``DemoDataset``."""

    def __init__(self, dataset: DemoDataset, version: str) -> None:
        if version not in ("11.4", "11.5"):
            raise ValueError(f"ut_version must be '11.4' or '11.5', got {version!r}")
        self.version = version
        self.defs = entity_defs(version)
        self._counter = 0
        self.tables: dict[str, EntityTable] = {
            name: EntityTable(entity) for name, entity in self.defs.items() if not entity.dimensions
        }
        self.registers: dict[str, BalanceRegister] = {
            STOCK: BalanceRegister(self.defs[STOCK], "Склад_Key"),
            TRANSFER_ORDERS: BalanceRegister(self.defs[TRANSFER_ORDERS], "ЗаказНаПеремещение_Key"),
        }
        if version == "11.4":
            self.registers[FREE_STOCK_114] = BalanceRegister(self.defs[FREE_STOCK_114], "Склад_Key")
        self._load(dataset)

    @property
    def generation(self) -> int:
        """Changes whenever any table or register does (keys the emulator's answer cache)."""
        return sum(t.version for t in self.tables.values()) + sum(
            r.version for r in self.registers.values()
        )

    def next_version(self) -> str:
        self._counter += 1
        return data_version(self._counter)

    def add_stock(self, record: StockRecord) -> None:
        """A movement of ТоварыНаСкладах (and of 11.4 СвободныеОстатки, which mirrors it)."""
        r = record
        self.registers[STOCK].add(
            [
                *(r.item_key, r.characteristic_key, r.purpose_key, r.warehouse_key),
                *(r.room_key, r.series_key, r.in_stock, r.to_ship),
            ]
        )
        free = self.registers.get(FREE_STOCK_114)
        if free is not None:
            free.add((r.item_key, r.characteristic_key, r.warehouse_key, r.in_stock, r.to_ship, 0))

    def _catalog_row(self, key: str, **fields: Any) -> Row:
        return {
            "Ref_Key": key,
            "DataVersion": self.next_version(),
            "DeletionMark": False,
            "Predefined": False,
            "PredefinedDataName": "",
            **fields,
        }

    def _load(self, dataset: DemoDataset) -> None:
        def insert(name: str, row: Row) -> None:
            self.tables[name].insert(row)

        for w in dataset.warehouses:
            insert(
                WAREHOUSES,
                self._catalog_row(
                    w.key,
                    DeletionMark=w.deletion_mark,
                    Parent_Key=w.parent_key,
                    IsFolder=w.is_folder,
                    Description=w.name,
                    ТипСклада="" if w.is_folder else w.kind,
                    Подразделение_Key=EMPTY_GUID,
                    КонтролироватьСвободныеОстатки=not w.is_folder,
                    ИспользоватьОрдернуюСхемуПриОтгрузке=False,
                ),
            )
        for o in dataset.organizations:
            insert(
                "Catalog_Организации",
                self._catalog_row(
                    o.key,
                    Description=o.name,
                    Префикс=o.prefix,
                    ИНН=o.inn,
                    КПП="770101001",
                    НаименованиеПолное=o.name,
                ),
            )
        for p in dataset.priorities:
            insert(
                "Catalog_Приоритеты",
                self._catalog_row(
                    p.key, Description=p.name, РеквизитДопУпорядочивания=str(p.order)
                ),
            )
        for g in dataset.norm_groups:
            insert(
                "Catalog_ГруппировкиТоварныхОграничений",
                self._catalog_row(g.key, Code=g.key[:4].upper(), Description=g.name),
            )
        for i in dataset.items:
            insert(
                ITEMS,
                self._catalog_row(
                    i.key,
                    DeletionMark=i.deletion_mark,
                    Parent_Key=i.parent_key,
                    IsFolder=i.is_folder,
                    Code=i.code,
                    Description=i.name,
                    Артикул=i.article,
                    ЕдиницаИзмерения_Key=EMPTY_GUID if i.is_folder else i.unit_key,
                    ВидНоменклатуры_Key=EMPTY_GUID,
                    НаименованиеПолное=i.name,
                    ТипНоменклатуры="" if i.is_folder else "Товар",
                    ИспользованиеХарактеристик="" if i.is_folder else "НеИспользовать",
                    ИспользоватьУпаковки=False,
                ),
            )
        for number, pkg in enumerate(dataset.packages, start=1):
            insert(
                PACKAGES,
                self._catalog_row(
                    pkg.key,
                    Owner=pkg.owner_key,
                    Owner_Type="StandardODATA.Catalog_Номенклатура",
                    Code=f"{number:04d}"[-4:],
                    Description=pkg.name,
                    ЕдиницаИзмерения_Key=EMPTY_GUID,
                    Числитель=json_number(pkg.numerator),
                    Знаменатель=json_number(pkg.denominator),
                    ТипУпаковки="Конечная" if pkg.owner_key != EMPTY_GUID else "",
                ),
            )
        group = group_dimension(self.version)
        for n in dataset.norms:
            insert(
                NORMS,
                {
                    "Склад_Key": n.warehouse_key,
                    "Номенклатура_Key": n.item_key,
                    "Характеристика_Key": n.characteristic_key,
                    group: n.group_key,
                    "СтраховоеКоличествоЗапаса": json_number(n.safety),
                    "МинимальноеКоличествоЗапаса": json_number(n.minimum),
                    "МаксимальноеКоличествоЗапаса": json_number(n.maximum),
                    "НормаПотребления": 0,
                    "СреднедневноеПотребление": 0,
                    "СреднееОтклонениеПотребления": 0,
                    "МетодОбеспеченияПотребностей": n.method,
                    "УпаковкаЗаказа_Key": n.package_key,
                    "ОбеспечениеЗаказовПриПоддержанииЗапаса": "ЗаСчетЗапасов",
                    "РеквизитДопУпорядочивания": "0",
                    "ДатаРасчетаРекомендаций": "0001-01-01T00:00:00",
                    "ЭтоДействующийПараметр": n.active,
                    "ЕстьРекомендацияПоИзменению": False,
                    "ЭтоГруппировка": n.is_group,
                },
            )
        for record in dataset.stock:
            self.add_stock(record)
