"""Resolving the configured organization, counterparty, store, order state and price type.

Config names them for people ("ООО «Бизнесмедиа»"); an id (UUID) is accepted too, for the
rare account where two counterparties share a name. A name that matches nothing, or more than
one entity, is a ``PermanentError`` naming what was looked for, so the operator can fix config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from daemon.errors import PermanentError
from daemon.moysklad.failures import SYSTEM
from daemon.moysklad.transport import MoySkladTransport

UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
MEDIA_TYPE = "application/json"


def filter_value(value: str) -> str:
    """A value for ``filter=``: a literal ``;`` would end the condition, so it is escaped."""
    return value.replace(";", r"\;")


def id_from_href(href: str) -> str:
    """The entity id at the end of a meta href."""
    return href.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class Reference:
    """An entity the hub points at from its orders."""

    kind: str  # e.g. "organization"; the meta type
    id: str
    name: str
    href: str

    def as_meta(self) -> dict[str, Any]:
        return {"meta": {"href": self.href, "type": self.kind, "mediaType": MEDIA_TYPE}}

    def describe(self) -> str:
        return f"{self.name} ({self.id})"


def _reference(kind: str, row: dict[str, Any]) -> Reference:
    meta = row.get("meta") or {}
    return Reference(
        kind=str(meta.get("type") or kind),
        id=str(row["id"]),
        name=str(row.get("name", "")),
        href=str(meta["href"]),
    )


async def resolve_entity(
    transport: MoySkladTransport, entity: str, wanted: str, label: str
) -> Reference:
    """The ``entity`` (e.g. "counterparty") whose id or exact name is ``wanted``."""
    if UUID.match(wanted):
        try:
            row = await transport.get(f"entity/{entity}/{wanted}")
        except PermanentError as exc:
            raise PermanentError(
                f"{label} with id {wanted} not found in МойСклад: {exc}",
                system=SYSTEM,
                status=exc.status,
                code=exc.code,
                remote_message=exc.remote_message,
            ) from exc
        return _reference(entity, row)
    page = await transport.get(
        f"entity/{entity}", {"filter": f"name={filter_value(wanted)}", "limit": 2}
    )
    rows = [row for row in page.get("rows", []) if row.get("name") == wanted]
    if not rows:
        raise PermanentError(f"{label} named {wanted!r} not found in МойСклад", system=SYSTEM)
    if len(rows) > 1:
        ids = ", ".join(str(row["id"]) for row in rows)
        raise PermanentError(
            f"{label} name {wanted!r} is ambiguous in МойСклад (ids {ids}); "
            "put the id in config instead",
            system=SYSTEM,
        )
    return _reference(entity, rows[0])


@dataclass(frozen=True, slots=True)
class OrderStates:
    """The customerorder states of the account and which of them close an order."""

    by_id: dict[str, Reference]
    final_ids: frozenset[str]

    def named(self, name: str) -> Reference:
        for state in self.by_id.values():
            if state.name == name:
                return state
        known = ", ".join(sorted(state.name for state in self.by_id.values()))
        raise PermanentError(
            f"order state {name!r} not found in МойСклад (known: {known})", system=SYSTEM
        )


async def read_order_states(
    transport: MoySkladTransport, extra_final: tuple[str, ...]
) -> OrderStates:
    """States from ``customerorder/metadata``; Successful/Unsuccessful ones are final."""
    metadata = await transport.get("entity/customerorder/metadata")
    by_id: dict[str, Reference] = {}
    final: set[str] = set()
    for row in metadata.get("states", []):
        state = _reference("state", row)
        by_id[state.id] = state
        if row.get("stateType") in ("Successful", "Unsuccessful") or state.name in extra_final:
            final.add(state.id)
    return OrderStates(by_id, frozenset(final))


async def check_price_type(transport: MoySkladTransport, name: str) -> str:
    """The id of the sale price type ``name``; ``PermanentError`` if the account has none."""
    rows = await transport.get("context/companysettings/pricetype")
    for row in rows:
        if row.get("name") == name:
            return str(row["id"])
    known = ", ".join(sorted(str(row.get("name")) for row in rows))
    raise PermanentError(
        f"price type {name!r} not found in МойСклад (known: {known})", system=SYSTEM
    )
