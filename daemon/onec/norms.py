"""Min/max norms from ``InformationRegister_ТоварныеОграничения``, resolved as UT resolves them.

UT's ``ТоварныеОграничения.ПодставитьСоединение`` (reference §2.2; 11.5 manager module), for one
item on one warehouse, among rows with ``ЭтоДействующийПараметр = true``:

1. the detailed row (same item and warehouse, no group) wins;
2. otherwise a membership row (same item and warehouse, a group) points to the group's setting
   row (no item, no characteristic, no warehouse, that group), whose values replace the member
   row's (``ЕСТЬNULL(НастройкаГруппировки.X, Таблица.X)``); without a setting row the member
   row's own values stand.

Only then is the method checked: the effective row must say ``ПоддержаниеЗапасаМинМакс``. The hub
works per item, not per characteristic, so only rows with an empty ``Характеристика`` are read.
A maximum of 0 means "not set" (the target level is then the minimum).

A norm row or a needed package row that is not what 1C sends (a key that is not a GUID, a
quantity that is not a number) fails the read with a message naming the item or the package:
dropping the row could let a group's norm stand in for the item's own, and a minimum read as 0
would silently stop replenishing the item.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from itertools import chain
from typing import Any, NamedTuple

import structlog

from daemon.errors import PermanentError
from daemon.model import EMPTY_GUID, Norm
from daemon.onec import odata
from daemon.onec.answers import (
    LIMIT,
    field_shape,
    guid_text,
    malformed,
    quantity,
    row_label,
    shape,
    valid_key,
)
from daemon.onec.metadata import NORMS, PACKAGES, OneCSchema
from daemon.onec.transport import ODataTransport, rows_of, since, task_group

log = structlog.get_logger(__name__)

MINMAX = "ПоддержаниеЗапасаМинМакс"


class NormRow(NamedTuple):
    # A NamedTuple: tens of thousands are built per run, and it is the cheapest record.
    warehouse: str
    item: str
    group: str
    minimum: Decimal
    maximum: Decimal
    method: str
    package: str


ITEM = "Номенклатура_Key"
MINIMUM, MAXIMUM = "МинимальноеКоличествоЗапаса", "МаксимальноеКоличествоЗапаса"
METHOD, PACKAGE = "МетодОбеспеченияПотребностей", "УпаковкаЗаказа_Key"


def norm_rows(page: list[Any], warehouse: str, group: str) -> list[NormRow]:
    """The rows of one page read for ``warehouse`` (EMPTY_GUID: the group setting rows)."""
    rows: list[NormRow] = []
    append = rows.append
    low, high = -LIMIT, LIMIT
    item: Any  # as 1C sent them, until checked
    grouping: Any
    package: Any
    minimum: Any
    maximum: Any
    for r in page:
        if type(r) is dict:
            item, grouping, package = r.get(ITEM), r.get(group), r.get(PACKAGE)
            minimum, maximum, method = r.get(MINIMUM), r.get(MAXIMUM), r.get(METHOD)
            # The plain case inline (whole numbers; no group and no package, which most rows
            # name as the empty GUID); ``quantity`` and ``guid_text`` for anything else.
            minimum = (
                Decimal(minimum)
                if type(minimum) is int and low < minimum < high
                else quantity(minimum)
            )
            maximum = (
                Decimal(maximum)
                if type(maximum) is int and low < maximum < high
                else quantity(maximum)
            )
            if (
                type(item) is str
                and guid_text(item) is not None
                and (grouping == EMPTY_GUID or (type(grouping) is str and guid_text(grouping)))
                and (package == EMPTY_GUID or (type(package) is str and guid_text(package)))
                and minimum is not None
                and maximum is not None
                and type(method) is str
            ):
                append(NormRow(warehouse, item, grouping, minimum, maximum, method, package))
                continue
        raise _bad_norm(r, warehouse, group)
    return rows


def _bad_norm(row: Any, warehouse: str, group: str) -> PermanentError:
    where = "group settings" if warehouse == EMPTY_GUID else f"warehouse {warehouse}"
    if not isinstance(row, dict):
        return malformed("norms", f"{where}: a row that is {shape(row)}, not an object")
    label = f"{where}, {row_label(row, ITEM)}"
    for name in (ITEM, group, PACKAGE):
        if valid_key(row.get(name)) is None:
            return malformed("norms", f"{label}: {name} is {field_shape(row, name)}, not a GUID")
    for name in (MINIMUM, MAXIMUM):
        if quantity(row.get(name)) is None:
            return malformed(
                "norms", f"{label}: {name} is {field_shape(row, name)}, not a quantity"
            )
    return malformed("norms", f"{label}: {METHOD} is {field_shape(row, METHOD)}, not text")


def resolve(rows: Iterable[NormRow]) -> dict[tuple[str, str], tuple[NormRow, str]]:
    """(item, warehouse) → (effective row, "item" | "group"), before the method check."""
    detailed: dict[tuple[str, str], NormRow] = {}
    membership: dict[tuple[str, str], NormRow] = {}
    settings: dict[str, NormRow] = {}
    empty = EMPTY_GUID
    for row in rows:
        # Indexing rather than field names: this runs once per norm row.
        warehouse, item, grouping = row[0], row[1], row[2]
        if item != empty and warehouse != empty:
            key = (item, warehouse)
            if grouping == empty:
                detailed[key] = row
            else:
                # An item in two groups on one warehouse would double UT's own join; the
                # lowest group key wins so the choice is at least stable.
                held = membership.get(key)
                if held is None or grouping < held.group:
                    membership[key] = row
        elif item == empty and warehouse == empty and grouping != empty:
            settings[grouping] = row
    resolved: dict[tuple[str, str], tuple[NormRow, str]] = {
        key: (row, "item") for key, row in detailed.items()
    }
    for key, member in membership.items():
        if key not in resolved:
            resolved[key] = (settings.get(member.group, member), "group")
    return resolved


async def read_norms(
    transport: ODataTransport,
    schema: OneCSchema,
    warehouse_keys: Sequence[str],
    *,
    page_size: int,
    max_url_bytes: int,
) -> dict[tuple[str, str], Norm]:
    """Effective min/max norms per (item key, warehouse key) for ``warehouse_keys``."""
    started = time.monotonic()
    wanted = {key.lower() for key in warehouse_keys}
    group = schema.group_field
    # The warehouse is fixed by each query, so rows do not repeat it.
    select = (ITEM, group, MINIMUM, MAXIMUM, METHOD, PACKAGE)

    empty = odata.guid(EMPTY_GUID)
    active = "ЭтоДействующийПараметр eq true"
    # One query per warehouse (concurrent, and short enough for IIS's 2048-byte query limit:
    # the Cyrillic names make each one ~1.7 KB) plus one for the group setting rows, which have
    # neither warehouse nor item.
    queries = [
        (
            key,
            odata.all_of(
                active,
                odata.eq("Склад_Key", odata.guid(key)),
                odata.eq("Характеристика_Key", empty),
            ),
            ("Номенклатура_Key", group),
        )
        for key in sorted(wanted)
    ]
    queries.append(
        (
            EMPTY_GUID,
            odata.all_of(active, odata.eq("Склад_Key", empty), odata.eq("Номенклатура_Key", empty)),
            (group, "Характеристика_Key"),
        )
    )

    def converter(warehouse: str) -> Callable[[list[Any]], list[Any]]:
        return lambda page: norm_rows(page, warehouse, group)

    tasks: list[asyncio.Task[list[Any]]] = []
    async with task_group() as tasks_group:
        # The package catalog's size decides later how packages are looked up; asking now
        # takes that round trip off the end of the read.
        catalog = tasks_group.create_task(transport.count(PACKAGES, "", what="packages"))
        for warehouse, where, orderby in queries:
            read = transport.get_all(
                NORMS,
                where=where,
                select=select,
                orderby=orderby,
                what="norms",
                large=warehouse != EMPTY_GUID,
                convert=converter(warehouse),
            )
            tasks.append(tasks_group.create_task(read))
    # Every resolved key's warehouse is one of the queries' (lower-cased ``wanted``) keys.
    effective = {
        key: found
        for key, found in resolve(chain.from_iterable(task.result() for task in tasks)).items()
        if found[0].method == MINMAX
    }
    package_keys = sorted({row.package for row, _ in effective.values()} - {EMPTY_GUID})
    sizes = await read_package_sizes(
        transport,
        package_keys,
        catalog_size=catalog.result(),
        page_size=page_size,
        max_url_bytes=max_url_bytes,
    )
    norms: dict[tuple[str, str], Norm] = {}
    # Norms are immutable and repeat (about a thousand distinct among tens of thousands):
    # one object per distinct norm costs a dict lookup instead of a dataclass build each.
    made: dict[tuple[Decimal, Decimal, str | None, Decimal | None, str], Norm] = {}
    for key, (row, source) in effective.items():
        package = None if row.package == EMPTY_GUID else row.package
        size = sizes.get(package) if package else None
        if package and size is None:
            log.warning("onec_norm_package_unknown", item_key=key[0], package_key=package)
            package = None
        spec = (row.minimum, row.maximum, package, size, source)
        norm = made.get(spec)
        if norm is None:
            norm = made[spec] = Norm(
                minimum=row.minimum,
                maximum=row.maximum if row.maximum > 0 else None,
                package_key=package,
                package_size=size,
                source=source,
            )
        norms[key] = norm
    rows = sum(len(task.result()) for task in tasks)
    log.info("onec_read", what="norms", rows=rows, norms=len(norms), elapsed_s=since(started))
    return norms


async def read_package_sizes(
    transport: ODataTransport,
    keys: Sequence[str],
    *,
    catalog_size: int,
    page_size: int,
    max_url_bytes: int,
) -> dict[str, Decimal]:
    """Base units per package (Числитель / Знаменатель) for the given package keys.

    Looked up by key in batches; when that would take more requests than reading the whole
    catalog (``catalog_size`` entries) page by page, the catalog is read instead."""
    if not keys:
        return {}
    select = "Ref_Key,Числитель,Знаменатель"

    def render(run: Sequence[str]) -> str:
        return odata.relative_url(
            PACKAGES,
            [("$format", "json"), ("$filter", odata.any_of("Ref_Key", run)), ("$select", select)],
        )

    literals = [odata.guid(k) for k in keys]
    # GUID terms all have one length, so the number of batches is known without cutting them.
    alone = len(render(literals[:1]))
    per_key = len(render(literals[:2])) - alone if len(literals) > 1 else 0
    per_run = 1 + (max_url_bytes - alone) // per_key if per_key else len(literals)
    expected_runs = -(-len(literals) // max(per_run, 1))
    rows: list[Any] = []
    if -(-catalog_size // page_size) < expected_runs:
        rows = await transport.get_all(
            PACKAGES,
            where="",
            select=select.split(","),
            orderby=("Ref_Key",),
            what="packages",
            count=catalog_size,
        )
    else:
        tasks = []
        async with task_group() as group:
            for run in odata.batches(literals, render, max_url_bytes):
                relative = transport.checked(render(run))
                tasks.append(group.create_task(transport.get_json(relative, what="packages")))
        for task in tasks:
            rows += rows_of(task.result(), "packages")
    return _sizes(rows, set(keys))


def _sizes(rows: list[Any], wanted: set[str]) -> dict[str, Decimal]:
    """Size per wanted package; a package row with a bad key, or a wanted one whose numbers
    are not numbers, fails the read (a size is never guessed)."""
    sizes: dict[str, Decimal] = {}
    for row in rows:
        package = valid_key(row.get("Ref_Key")) if isinstance(row, dict) else None
        if package is None:
            raise malformed(
                "packages", f"a row without a GUID Ref_Key ({row_label(row, 'Ref_Key')})"
            )
        if package not in wanted:
            continue
        numerator, denominator = quantity(row.get("Числитель")), quantity(row.get("Знаменатель"))
        if numerator is None or denominator is None:
            name = "Числитель" if numerator is None else "Знаменатель"
            raise malformed(
                "packages", f"package {package}: {name} is {field_shape(row, name)}, not a quantity"
            )
        size = numerator / denominator if denominator > 0 else numerator
        if size > 0:
            sizes[package] = size
    return sizes
