"""Catalog reads: warehouses by name, the organization, the order priority, items.

Names are matched by 1C itself (``Description eq '…'``, which compares case-insensitively like
every 1C query); a name that matches no live warehouse, or more than one, is a PermanentError
that says what to do. Deleted warehouses and folders never match.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from daemon.errors import PermanentError
from daemon.model import Item, Warehouse
from daemon.onec import odata
from daemon.onec.metadata import ITEMS, ORGANIZATIONS, PRIORITIES, WAREHOUSES
from daemon.onec.transport import SYSTEM, ODataTransport, rows_of, since

log = structlog.get_logger(__name__)

_LIVE = odata.all_of("DeletionMark eq false", "IsFolder eq false")


async def resolve_warehouses(
    transport: ODataTransport,
    names: Sequence[str],
    pinned: Mapping[str, str],
    max_url_bytes: int,
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

        for run in odata.batches(keys, render_keys, max_url_bytes):
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
        for run in odata.batches(literals, render_names, max_url_bytes):
            relative = transport.checked(render_names(run))
            rows += rows_of(
                await transport.get_json(relative, what="warehouses by name"), "warehouses"
            )

    found: dict[str, Warehouse] = {}
    for name in by_key:
        key = pinned[name]
        row = next((r for r in rows if str(r.get("Ref_Key", "")).lower() == key.lower()), None)
        if not odata.is_guid(key):
            continue
        if row is None:
            problems.append(f"warehouse {name!r}: pinned Ref_Key {key} does not exist in 1C")
        elif row.get("IsFolder") or row.get("DeletionMark"):
            kind = "a folder" if row.get("IsFolder") else "marked for deletion"
            problems.append(f"warehouse {name!r}: pinned Ref_Key {key} is {kind}")
        else:
            found[name] = Warehouse(key=row["Ref_Key"], name=row["Description"])
    for name in by_name:
        matches = [
            r
            for r in rows
            if str(r.get("Description", "")).casefold() == name.casefold()
            and not r.get("IsFolder")
            and not r.get("DeletionMark")
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


async def read_items(transport: ODataTransport) -> list[Item]:
    """Every item that is not a folder and not marked for deletion, in Ref_Key order."""
    started = time.monotonic()

    def convert(rows: list[Any]) -> list[Any]:
        return [
            Item(
                key=row["Ref_Key"],
                code=row.get("Code") or "",
                article=(row.get("Артикул") or "").strip(),
                name=row.get("Description") or "",
            )
            for row in rows
        ]

    items: list[Item] = await transport.get_all(
        ITEMS,
        where=_LIVE,
        select=("Ref_Key", "Code", "Description", "Артикул"),
        orderby=("Ref_Key",),
        what="items",
        large=True,
        convert=convert,
    )
    log.info("onec_read", what="items", rows=len(items), elapsed_s=since(started))
    return items
