"""Catalog reads: warehouses by name, the organization, the order priority, items.

Names are matched by 1C itself (``Description eq '…'``, which compares case-insensitively like
every 1C query); a name that matches no live warehouse, or more than one, is a PermanentError
that says what to do. Deleted warehouses and folders never match.

Rows are checked before use (``daemon.onec.answers``): a warehouse, organization or priority
row without a GUID ``Ref_Key``, a text ``Description`` or boolean flags fails the lookup, since
guessing there could pick the wrong warehouse. An item row without them is skipped with a
warning (``onec_item_skipped``): it costs only its own item. An item "row" that is not even an
object means the row list itself is broken, and fails the read.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from daemon.errors import PermanentError
from daemon.model import Item, Warehouse
from daemon.onec import odata
from daemon.onec.answers import (
    SYSTEM,
    field_shape,
    flag,
    guid_text,
    malformed,
    row_label,
    shape,
    text,
    valid_key,
)
from daemon.onec.metadata import ITEMS, ORGANIZATIONS, PRIORITIES, WAREHOUSES
from daemon.onec.paging import read_all
from daemon.onec.transport import ODataTransport, rows_of, since

log = structlog.get_logger(__name__)

_LIVE = odata.all_of("DeletionMark eq false", "IsFolder eq false")


async def resolve_warehouses(
    transport: ODataTransport,
    names: Sequence[str],
    pinned: Mapping[str, str],
    limits: odata.UrlLimits,
) -> dict[str, Warehouse]:
    """Configured name → warehouse; ``pinned`` names are looked up by their Ref_Key instead."""
    wanted = list(dict.fromkeys(names))
    by_key = [n for n in wanted if n in pinned]
    by_name = [n for n in wanted if n not in pinned]
    problems: list[str] = []
    for name in by_key:
        if not odata.is_guid(pinned[name]):
            problems.append(f"onec.warehouse_keys[{name!r}] is not a GUID: {pinned[name]!r}")
    rows: list[Any] = []
    select = "Ref_Key,Description,IsFolder,DeletionMark"
    keys = [odata.guid(pinned[n]) for n in by_key if odata.is_guid(pinned[n])]
    if keys:

        def render_keys(run: Sequence[str]) -> str:
            where = odata.any_of("Ref_Key", run)
            params = [("$format", "json"), ("$filter", where), ("$select", select)]
            return odata.relative_url(WAREHOUSES, params)

        for run in odata.batches(keys, render_keys, limits):
            relative = transport.checked(render_keys(run))
            rows += rows_of(
                await transport.get_json(relative, what="warehouses by key"), "warehouses"
            )
    if by_name:

        def render_names(run: Sequence[str]) -> str:
            where = odata.all_of(_LIVE, odata.any_of("Description", run))
            return odata.relative_url(
                WAREHOUSES, [("$format", "json"), ("$filter", where), ("$select", select)]
            )

        literals = [odata.literal(n) for n in by_name]
        for run in odata.batches(literals, render_names, limits):
            relative = transport.checked(render_names(run))
            rows += rows_of(
                await transport.get_json(relative, what="warehouses by name"), "warehouses"
            )

    for row in rows:
        _check_catalog_row(row, "warehouses", flags=("IsFolder", "DeletionMark"))
    found: dict[str, Warehouse] = {}
    for name in by_key:
        pinned_key = pinned[name]
        if not odata.is_guid(pinned_key):
            continue
        row = next((r for r in rows if r["Ref_Key"].lower() == pinned_key.lower()), None)
        if row is None:
            problems.append(f"warehouse {name!r}: pinned Ref_Key {pinned_key} does not exist in 1C")
        elif row["IsFolder"] or row["DeletionMark"]:
            kind = "a folder" if row["IsFolder"] else "marked for deletion"
            problems.append(f"warehouse {name!r}: pinned Ref_Key {pinned_key} is {kind}")
        else:
            found[name] = Warehouse(key=row["Ref_Key"], name=row["Description"])
    for name in by_name:
        matches = [
            r
            for r in rows
            if r["Description"].casefold() == name.casefold()
            and not r["IsFolder"]
            and not r["DeletionMark"]
        ]
        if not matches:
            problems.append(
                f"warehouse {name!r} not found in 1C (Catalog_Склады: no live warehouse, not a "
                "folder, has that name)"
            )
        elif len(matches) > 1:
            keys_text = ", ".join(r["Ref_Key"] for r in matches)
            problems.append(
                f"warehouse name {name!r} is ambiguous ({len(matches)} warehouses: {keys_text}); "
                f"pin the right one in [onec.warehouse_keys]"
            )
        else:
            found[name] = Warehouse(key=matches[0]["Ref_Key"], name=matches[0]["Description"])
    if problems:
        raise PermanentError("; ".join(problems), system=SYSTEM, code="warehouses")
    return found


async def resolve_single(
    transport: ODataTransport, set_name: str, wanted: str, *, what: str, setting: str
) -> tuple[str, str]:
    """(Ref_Key, Description) of the live catalog entry called ``wanted`` or, when that is
    empty or absent, of the only entry there is."""
    relative = transport.url(
        set_name,
        [
            ("$format", "json"),
            ("$filter", "DeletionMark eq false"),
            ("$select", "Ref_Key,Description"),
            ("$orderby", "Description"),
        ],
    )
    rows = rows_of(await transport.get_json(relative, what=what), what)
    for row in rows:
        _check_catalog_row(row, what)
    if wanted:
        named = [r for r in rows if str(r["Description"]).casefold() == wanted.casefold()]
        if len(named) == 1:
            return named[0]["Ref_Key"], named[0]["Description"]
    if len(rows) == 1 and (not wanted or set_name == PRIORITIES):
        return rows[0]["Ref_Key"], rows[0]["Description"]
    names = ", ".join(repr(r["Description"]) for r in rows[:10]) or "none"
    if wanted:
        problem = f"{what} {wanted!r} is not in {set_name} (or is there twice)"
    else:
        problem = f"{set_name} holds {len(rows)} entries, the hub cannot pick one"
    raise PermanentError(
        f"{problem}; set {setting} to one of: {names}", system=SYSTEM, code="catalog"
    )


async def resolve_organization(transport: ODataTransport, wanted: str) -> tuple[str, str]:
    return await resolve_single(
        transport, ORGANIZATIONS, wanted, what="organization", setting="onec.organization"
    )


async def resolve_priority(transport: ODataTransport, wanted: str) -> tuple[str, str]:
    return await resolve_single(
        transport, PRIORITIES, wanted, what="priority", setting="onec.priority"
    )


def _check_catalog_row(row: Any, what: str, flags: Sequence[str] = ()) -> None:
    """A catalog row the lookups can use: a GUID Ref_Key, a text Description, true/false
    ``flags``; anything else fails the lookup."""
    if not isinstance(row, dict) or valid_key(row.get("Ref_Key")) is None:
        raise malformed(what, f"a row without a GUID Ref_Key ({row_label(row, 'Ref_Key')})")
    label = f"Ref_Key {row['Ref_Key']}"
    if not isinstance(row.get("Description"), str):
        raise malformed(what, f"{label}: Description is {field_shape(row, 'Description')}")
    for name in flags:
        if flag(row.get(name)) is None:
            raise malformed(what, f"{label}: {name} is {field_shape(row, name)}, not true/false")


def item_rows(rows: list[Any]) -> list[Item]:
    """The items of one page; a row that cannot be an item is skipped with a warning."""
    items: list[Item] = []
    append = items.append
    ref: Any  # as 1C sent it, until checked
    for row in rows:
        # The common case in one test; ``_item_or_reason`` works out anything else.
        if type(row) is dict:
            ref, code = row.get("Ref_Key"), row.get("Code")
            article, name = row.get("Артикул"), row.get("Description")
            if type(code) is type(article) is type(name) is str and (
                type(ref) is str and guid_text(ref) is not None
            ):
                append(Item(key=ref, code=code, article=article.strip(), name=name))
                continue
        if type(row) is not dict:
            raise malformed("items", f"a row that is {shape(row)}, not an object")
        found = _item_or_reason(row)
        if isinstance(found, Item):
            append(found)
        else:
            log.warning("onec_item_skipped", reason=found, ref_key=row_label(row, "Ref_Key"))
    return items


def _item_or_reason(row: dict[str, Any]) -> Item | str:
    ref = valid_key(row.get("Ref_Key"))
    if ref is None:
        return f"Ref_Key is {field_shape(row, 'Ref_Key')}, not a GUID"
    values: dict[str, str] = {}
    for name in ("Code", "Артикул", "Description"):
        value = text(row.get(name))  # a missing or null text is empty, as 1C means it
        if value is None:
            return f"{name} is {field_shape(row, name)}, not text"
        values[name] = value
    return Item(
        key=ref, code=values["Code"], article=values["Артикул"].strip(), name=values["Description"]
    )


async def read_items(transport: ODataTransport) -> list[Item]:
    """Every item that is not a folder and not marked for deletion, in Ref_Key order."""
    started = time.monotonic()
    items: list[Item] = await read_all(
        transport,
        ITEMS,
        where=_LIVE,
        select=("Ref_Key", "Code", "Description", "Артикул"),
        orderby=("Ref_Key",),
        what="items",
        large=True,
        convert=item_rows,
    )
    log.info("onec_read", what="items", rows=len(items), elapsed_s=since(started))
    return items
