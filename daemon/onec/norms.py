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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

import structlog

from daemon.model import EMPTY_GUID, Norm
from daemon.onec import odata
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


def decimal(value: Any) -> Decimal:
    """A JSON number from 1C as Decimal (floats already arrive as Decimal, see odata.loads)."""
    kind = type(value)
    if kind is int:
        return Decimal(value)
    if kind is Decimal:
        return value  # type: ignore[no-any-return]
    if isinstance(value, str):
        return Decimal(value.strip() or 0)
    return Decimal(0)


def resolve(rows: Iterable[NormRow]) -> dict[tuple[str, str], tuple[NormRow, str]]:
    """(item, warehouse) → (effective row, "item" | "group"), before the method check."""
    detailed: dict[tuple[str, str], NormRow] = {}
    membership: dict[tuple[str, str], NormRow] = {}
    settings: dict[str, NormRow] = {}
    for row in rows:
        has_item, has_wh, has_group = (
            row.item != EMPTY_GUID,
            row.warehouse != EMPTY_GUID,
            row.group != EMPTY_GUID,
        )
        if has_item and has_wh and not has_group:
            detailed[(row.item, row.warehouse)] = row
        elif has_item and has_wh:
            # An item in two groups on one warehouse would double UT's own join; the lowest
            # group key wins so the choice is at least stable.
            key = (row.item, row.warehouse)
            if key not in membership or row.group < membership[key].group:
                membership[key] = row
        elif not has_item and not has_wh and has_group:
            settings[row.group] = row
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
    select = (
        "Номенклатура_Key",
        group,
        "МинимальноеКоличествоЗапаса",
        "МаксимальноеКоличествоЗапаса",
        "МетодОбеспеченияПотребностей",
        "УпаковкаЗаказа_Key",
    )

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
        def convert(page: list[Any]) -> list[Any]:
            return [
                NormRow(
                    warehouse,
                    r["Номенклатура_Key"],
                    r[group],
                    decimal(r["МинимальноеКоличествоЗапаса"]),
                    decimal(r["МаксимальноеКоличествоЗапаса"]),
                    r["МетодОбеспеченияПотребностей"],
                    r["УпаковкаЗаказа_Key"] or EMPTY_GUID,
                )
                for r in page
            ]

        return convert

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
    rows: list[NormRow] = [row for task in tasks for row in task.result()]
    effective = {
        key: found
        for key, found in resolve(rows).items()
        if key[1].lower() in wanted and found[0].method == MINMAX
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
    for key, (row, source) in effective.items():
        package = None if row.package == EMPTY_GUID else row.package
        size = sizes.get(package) if package else None
        if package and size is None:
            log.warning("onec_norm_package_unknown", item_key=key[0], package_key=package)
            package = None
        norms[key] = Norm(
            minimum=row.minimum,
            maximum=row.maximum if row.maximum > 0 else None,
            package_key=package,
            package_size=size,
            source=source,
        )
    log.info("onec_read", what="norms", rows=len(rows), norms=len(norms), elapsed_s=since(started))
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
    sizes: dict[str, Decimal] = {}
    for row in rows:
        numerator, denominator = decimal(row.get("Числитель")), decimal(row.get("Знаменатель"))
        size = numerator / denominator if denominator > 0 else numerator
        if size > 0:
            sizes[row["Ref_Key"]] = size
    return sizes
