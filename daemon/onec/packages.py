"""Package sizes (``Catalog_УпаковкиЕдиницыИзмерения``): base units per order package.

A norm that names a package orders whole packages, so its size must be known: Числитель /
Знаменатель of the package row. A catalog of at most ``PACKAGE_PAGES_UP_FRONT`` pages is read
whole while the norms are read (that many requests, under the norm pages); a larger one is
looked up by key once the norms are known, a round trip after them, or read whole then when
that takes fewer requests.

A package row without a GUID key fails the read, and so does a needed one whose numbers are
not numbers: a size is never guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from daemon.onec import odata
from daemon.onec.answers import field_shape, malformed, quantity, row_label, valid_key
from daemon.onec.metadata import PACKAGES
from daemon.onec.paging import read_all
from daemon.onec.transport import ODataTransport, rows_of, task_group

PACKAGE_PAGES_UP_FRONT = 4

PACKAGE_FIELDS = ("Ref_Key", "Числитель", "Знаменатель")


async def package_catalog(transport: ODataTransport) -> tuple[int, list[Any] | None]:
    """(entries in the package catalog, all its rows when it is small enough to read whole)."""
    size = await transport.count(PACKAGES, "", what="packages")
    if -(-size // transport.page_size) > PACKAGE_PAGES_UP_FRONT:
        return size, None
    rows = await read_all(
        transport,
        PACKAGES,
        where="",
        select=PACKAGE_FIELDS,
        orderby=("Ref_Key",),
        what="packages",
        count=size,
        ahead=True,
    )
    return size, rows


async def read_package_sizes(
    transport: ODataTransport,
    keys: Sequence[str],
    *,
    catalog_size: int,
    page_size: int,
    max_url_bytes: int,
    catalog_rows: list[Any] | None = None,
) -> dict[str, Decimal]:
    """Base units per package (Числитель / Знаменатель) for the given package keys.

    From ``catalog_rows`` when the whole catalog was read already; otherwise looked up by key
    in batches, or, when that would take more requests than reading the whole catalog
    (``catalog_size`` entries) page by page, the catalog is read instead."""
    if not keys:
        return {}
    if catalog_rows is not None:
        return _sizes(catalog_rows, set(keys))
    select = ",".join(PACKAGE_FIELDS)

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
        rows = await read_all(
            transport,
            PACKAGES,
            where="",
            select=PACKAGE_FIELDS,
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
