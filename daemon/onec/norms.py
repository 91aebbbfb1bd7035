"""Min/max norms from ``InformationRegister_ТоварныеОграничения``, resolved as UT resolves them.

UT's ``ТоварныеОграничения.ПодставитьСоединение`` (reference §2.2; 11.5 manager module), for one
item on one warehouse, among rows with ``ЭтоДействующийПараметр = true``:

1. the detailed row (same item and warehouse, no group) wins;
2. otherwise a membership row (same item and warehouse, a group) points to the group's setting
   row (no item, no characteristic, no warehouse, that group), whose values are the norm. The
   member row's own numbers are never read: every field is
   ``ЕСТЬNULL(НастройкаДетальная.X, ЕСТЬNULL(НастройкаГруппировки.X, …))``, so a group without
   a setting row gives no norm at all. (``ВременнаяТаблицаТоварыПоддерживаемогоЗапаса`` in the
   same module does fall back to the member row, ``ЕСТЬNULL(НастройкаГруппировки.X,
   Таблица.X)``, but it lists the items whose stock is kept, it does not resolve a norm.)

Only then is the method checked: the effective row must say ``ПоддержаниеЗапасаМинМакс``. The hub
works per item, not per characteristic, so only rows with an empty ``Характеристика`` are read.
A maximum of 0 means "not set" (the target level is then the minimum).

The rows of every wanted warehouse and the group setting rows (those with no warehouse) come
from one paged query whenever its URL fits the ``limits`` (batches of warehouses when it does
not); each row carries its ``Склад_Key``. Pages are resolved as they arrive, so that little is
left to do once the last one is in; package sizes come from ``daemon.onec.packages``.

A norm row or a needed package row that is not what 1C sends (a key that is not a GUID, a
quantity that is not a number) fails the read with a message naming the item or the package:
dropping the row could let a group's norm stand in for the item's own, and a minimum read as 0
would silently stop replenishing the item.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
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
from daemon.onec.metadata import NORMS, OneCSchema
from daemon.onec.packages import package_catalog, read_package_sizes
from daemon.onec.paging import farthest_page, read_all
from daemon.onec.transport import ODataTransport, since, task_group

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


WAREHOUSE, ITEM = "Склад_Key", "Номенклатура_Key"
MINIMUM, MAXIMUM = "МинимальноеКоличествоЗапаса", "МаксимальноеКоличествоЗапаса"
METHOD, PACKAGE = "МетодОбеспеченияПотребностей", "УпаковкаЗаказа_Key"
CHARACTERISTIC = "Характеристика_Key"
_BUILD_STRETCH = 2048  # norms built between two chances for the other reads to move on


def norm_rows(
    page: list[Any], asked: Mapping[str, str], group: str, numbers: dict[int, Decimal]
) -> list[NormRow]:
    """The rows of one page of a query for the warehouses in ``asked`` (``Склад_Key`` as 1C
    writes it → the key the norm is filed under; EMPTY_GUID: the group setting rows).

    ``numbers`` holds the whole quantities already seen, so that equal ones are one object:
    norms are told apart by their values, and a Decimal caches its hash."""
    rows: list[NormRow] = []
    append = rows.append
    low, high = -LIMIT, LIMIT
    sent: Any  # as 1C sent them, until checked
    item: Any
    grouping: Any
    package: Any
    minimum: Any
    maximum: Any
    for r in page:
        if type(r) is dict:
            sent = r.get(WAREHOUSE)
            # ``asked`` holds lower-case keys, as 1C writes them; one in capitals is the same.
            warehouse = (asked.get(sent) or asked.get(sent.lower())) if type(sent) is str else None
            item, grouping, package = r.get(ITEM), r.get(group), r.get(PACKAGE)
            minimum, maximum, method = r.get(MINIMUM), r.get(MAXIMUM), r.get(METHOD)
            # The plain case inline (whole numbers; no group and no package, which most rows
            # name as the empty GUID); ``quantity`` and ``guid_text`` for anything else.
            if type(minimum) is int:
                known = numbers.get(minimum)
                if known is None and low < minimum < high:
                    known = numbers[minimum] = Decimal(minimum)
                minimum = known
            else:
                minimum = quantity(minimum)
            if type(maximum) is int:
                known = numbers.get(maximum)
                if known is None and low < maximum < high:
                    known = numbers[maximum] = Decimal(maximum)
                maximum = known
            else:
                maximum = quantity(maximum)
            if (
                warehouse is not None
                and type(item) is str
                and guid_text(item) is not None
                and (grouping == EMPTY_GUID or (type(grouping) is str and guid_text(grouping)))
                and (package == EMPTY_GUID or (type(package) is str and guid_text(package)))
                and minimum is not None
                and maximum is not None
                and type(method) is str
            ):
                append(NormRow(warehouse, item, grouping, minimum, maximum, method, package))
                continue
        raise _bad_norm(r, asked, group)
    return rows


def _bad_norm(row: Any, asked: Mapping[str, str], group: str) -> PermanentError:
    if not isinstance(row, dict):
        return malformed("norms", f"a row that is {shape(row)}, not an object")
    sent = valid_key(row.get(WAREHOUSE))
    if sent is None:
        return malformed(
            "norms",
            f"{row_label(row, ITEM)}: {WAREHOUSE} is {field_shape(row, WAREHOUSE)}, not a GUID",
        )
    if sent.lower() not in asked:
        return malformed(
            "norms", f"{row_label(row, ITEM)}: {WAREHOUSE} {sent} is not a warehouse asked for"
        )
    where = "group settings" if sent == EMPTY_GUID else f"warehouse {sent.lower()}"
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


class Resolution:
    """UT's resolution (see the module docstring), fed page by page as the pages arrive, so
    that little is left to do once the last one is in."""

    def __init__(self) -> None:
        self.detailed: dict[tuple[str, str], NormRow] = {}
        self.membership: dict[tuple[str, str], NormRow] = {}
        self.settings: dict[str, NormRow] = {}

    def add(self, rows: Iterable[NormRow]) -> None:
        detailed, membership, settings = self.detailed, self.membership, self.settings
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

    def effective(self) -> dict[tuple[str, str], tuple[NormRow, str]]:
        """(item, warehouse) → (effective row, "item" | "group"), where that row's method is
        min-max."""
        detailed, settings = self.detailed, self.settings
        found = {key: (row, "item") for key, row in detailed.items() if row.method == MINMAX}
        for key, member in self.membership.items():
            if key not in detailed:
                row = settings.get(member.group)
                if row is not None and row.method == MINMAX:
                    found[key] = (row, "group")
        return found


async def read_norms(
    transport: ODataTransport,
    schema: OneCSchema,
    warehouse_keys: Sequence[str],
    *,
    page_size: int,
    limits: odata.UrlLimits,
) -> dict[tuple[str, str], Norm]:
    """Effective min/max norms per (item key, warehouse key) for ``warehouse_keys``."""
    started = time.monotonic()
    wanted = sorted({key.lower() for key in warehouse_keys})
    group = schema.group_field
    select = (WAREHOUSE, ITEM, group, MINIMUM, MAXIMUM, METHOD, PACKAGE)
    empty = odata.guid(EMPTY_GUID)
    active = "ЭтоДействующийПараметр eq true"
    # The key of a row is (warehouse, item, characteristic, group), the characteristic fixed
    # by the filter: in this order the pages are disjoint.
    orderby = (WAREHOUSE, ITEM, group)

    def where(literals: Sequence[str]) -> str:
        return odata.all_of(
            active, odata.eq(CHARACTERISTIC, empty), odata.any_of(WAREHOUSE, literals)
        )

    def farthest(literals: Sequence[str]) -> str:
        return farthest_page(
            transport, NORMS, where=where(literals), select=select, orderby=orderby
        )

    # The group setting rows are those with no warehouse (and no item: rows with an item but
    # no warehouse, if a base has any, are read and left out by ``Resolution``). All in one
    # query when its URL fits — IIS cuts query strings at 2048 bytes and the Cyrillic names
    # take ~1.7 KB, so three warehouses and the settings do — else in batches: every query
    # costs a /$count and ends in a partial page.
    key_of = {odata.guid(key): key for key in [*wanted, EMPTY_GUID]}
    queries = [
        {key_of[literal]: key_of[literal] for literal in run}
        for run in odata.batches(list(key_of), farthest, limits)
    ]

    resolution = Resolution()
    numbers: dict[int, Decimal] = {}

    def converter(asked: dict[str, str]) -> Callable[[list[Any]], list[Any]]:
        def convert(page: list[Any]) -> list[Any]:
            rows = norm_rows(page, asked, group, numbers)
            resolution.add(rows)
            return rows

        return convert

    tasks: list[asyncio.Task[list[Any]]] = []
    async with task_group() as tasks_group:
        # Asked now, so that a small catalog is read under the norm pages, not after them.
        catalog = tasks_group.create_task(package_catalog(transport))
        # ``asked``: Склад_Key the rows may carry → the key their norms are filed under.
        for asked in queries:
            read = read_all(
                transport,
                NORMS,
                where=where([odata.guid(key) for key in asked]),
                select=select,
                orderby=orderby,
                what="norms",
                # A warehouse's rows surely span pages: ask the count with the first one.
                # The settings alone are a few rows.
                large=list(asked) != [EMPTY_GUID],
                convert=converter(asked),
                ahead=True,  # resolved once all are in: the other reads' pages run under that
            )
            tasks.append(tasks_group.create_task(read))
    # Every resolved key's warehouse is one of the (lower-cased) ``wanted`` keys.
    effective = resolution.effective()
    package_keys = sorted({row.package for row, _ in effective.values()} - {EMPTY_GUID})
    catalog_size, catalog_rows = catalog.result()
    sizes = await read_package_sizes(
        transport,
        package_keys,
        catalog_size=catalog_size,
        catalog_rows=catalog_rows,
        page_size=page_size,
        max_url_bytes=limits.url_bytes,
    )
    norms: dict[tuple[str, str], Norm] = {}
    # Norms are immutable and repeat (about a thousand distinct among tens of thousands):
    # one object per distinct norm costs a dict lookup instead of a dataclass build each.
    made: dict[tuple[Decimal, Decimal, str, str], Norm] = {}
    for index, (key, (row, source)) in enumerate(effective.items()):
        if not index % _BUILD_STRETCH:
            # Other reads' answers arrive meanwhile: their slots are passed on between
            # stretches rather than after the whole build.
            await asyncio.sleep(0)
        spec = (row[3], row[4], row[6], source)  # minimum, maximum, package, source
        norm = made.get(spec)
        if norm is None:
            package = None if row.package == EMPTY_GUID else row.package
            size = sizes.get(package) if package else None
            norm = made[spec] = Norm(
                minimum=row.minimum,
                maximum=row.maximum if row.maximum > 0 else None,
                package_key=package if size is not None else None,
                package_size=size,
                source=source,
            )
        if norm.package_key is None and spec[2] != EMPTY_GUID:
            log.warning("onec_norm_package_unknown", item_key=key[0], package_key=spec[2])
        norms[key] = norm
    rows = sum(len(task.result()) for task in tasks)
    log.info(
        "onec_read",
        what="norms",
        rows=rows,
        queries=len(queries),
        norms=len(norms),
        elapsed_s=since(started),
    )
    return norms
