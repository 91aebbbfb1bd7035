"""Resolving the configured organization, counterparty, store, order state and price type.

Config names them for people ("ООО «Бизнесмедиа»"); an id (UUID) is accepted too, for the
rare account where two counterparties share a name. A name that matches nothing, or more than
one entity, is a ``PermanentError`` naming what was looked for, so the operator can fix config.
An answer that cannot be read (no rows list, a row without an id, name or matching meta.href,
states missing or of an unknown type) is a ``TransientError`` (see ``answers.py``): an order
must never point at an entity made up from a broken answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.errors import PermanentError
from daemon.moysklad.answers import (
    UUID,
    as_list,
    as_object,
    as_text,
    as_uuid,
    malformed,
    shape,
)
from daemon.moysklad.failures import SYSTEM
from daemon.moysklad.transport import MoySkladTransport

MEDIA_TYPE = "application/json"
STATE_TYPES = frozenset({"Regular", "Successful", "Unsuccessful"})
FINAL_STATE_TYPES = frozenset({"Successful", "Unsuccessful"})


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


def _reference(kind: str, row: Any, what: str) -> Reference:
    """A checked reference: a МойСклад id, a name, and a meta whose href ends in that id (an
    order pointing at a made-up href would go to the wrong entity or be refused)."""
    entity = as_object(row, what, f"a {kind}")
    entity_id = as_uuid(entity.get("id"), what, f"the {kind} id")
    name = as_text(entity.get("name"), what, f"the name of {kind} {entity_id}")
    meta = as_object(entity.get("meta"), what, f"the meta of {kind} {entity_id}")
    href = as_text(meta.get("href"), what, f"the meta.href of {kind} {entity_id}")
    if id_from_href(href).lower() != entity_id.lower():
        raise malformed(what, f"{kind} {entity_id} has a meta.href for another id")
    meta_type = meta.get("type", kind)
    if meta_type != kind:
        raise malformed(what, f"{kind} {entity_id} has meta.type {shape(meta_type)}")
    return Reference(kind=kind, id=entity_id, name=name, href=href)


async def resolve_entity(
    transport: MoySkladTransport, entity: str, wanted: str, label: str
) -> Reference:
    """The ``entity`` (e.g. "counterparty") whose id or exact name is ``wanted``."""
    if UUID.match(wanted):
        path = f"entity/{entity}/{wanted}"
        try:
            row = await transport.get(path)
        except PermanentError as exc:
            raise PermanentError(
                f"{label} with id {wanted} not found in МойСклад: {exc}",
                system=SYSTEM,
                status=exc.status,
                code=exc.code,
                remote_message=exc.remote_message,
            ) from exc
        found = _reference(entity, row, f"GET {path}")
        if found.id.lower() != wanted.lower():
            raise malformed(f"GET {path}", f"answered {entity} {found.id} instead")
        return found
    what = f"GET entity/{entity}"
    page = as_object(
        await transport.get(
            f"entity/{entity}", {"filter": f"name={filter_value(wanted)}", "limit": 2}
        ),
        what,
        "the answer",
    )
    rows = []
    for row in as_list(page.get("rows"), what, "rows"):
        name = as_text(as_object(row, what, f"a {entity}").get("name"), what, f"a {entity} name")
        if name == wanted:
            rows.append(_reference(entity, row, what))
    if not rows:
        raise PermanentError(f"{label} named {wanted!r} not found in МойСклад", system=SYSTEM)
    if len(rows) > 1:
        ids = ", ".join(row.id for row in rows)
        raise PermanentError(
            f"{label} name {wanted!r} is ambiguous in МойСклад (ids {ids}); "
            "put the id in config instead",
            system=SYSTEM,
        )
    return rows[0]


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
    """States from ``customerorder/metadata``; Successful/Unsuccessful ones are final.

    Metadata without a ``states`` list, or a state whose ``stateType`` is not one of the three
    the API knows, fails the read: guessing "not final" would count a closed order's
    quantities as still incoming, guessing "final" would hide an open one."""
    what = "GET entity/customerorder/metadata"
    metadata = as_object(await transport.get("entity/customerorder/metadata"), what, "the answer")
    by_id: dict[str, Reference] = {}
    final: set[str] = set()
    for row in as_list(metadata.get("states"), what, "states"):
        state = _reference("state", row, what)
        state_type = row.get("stateType")
        if not isinstance(state_type, str) or state_type not in STATE_TYPES:
            raise malformed(what, f"state {state.name!r} has stateType {shape(state_type)}")
        by_id[state.id] = state
        if state_type in FINAL_STATE_TYPES or state.name in extra_final:
            final.add(state.id)
    return OrderStates(by_id, frozenset(final))


async def check_price_type(transport: MoySkladTransport, name: str) -> str:
    """The id of the sale price type ``name``; ``PermanentError`` if the account has none."""
    what = "GET context/companysettings/pricetype"
    rows = [
        as_object(row, what, "a price type")
        for row in as_list(
            await transport.get("context/companysettings/pricetype"), what, "the answer"
        )
    ]
    known = [as_text(row.get("name"), what, "a price type name") for row in rows]
    for row, row_name in zip(rows, known, strict=True):
        if row_name == name:
            return as_uuid(row.get("id"), what, f"the id of price type {name!r}")
    raise PermanentError(
        f"price type {name!r} not found in МойСклад (known: {', '.join(sorted(known))})",
        system=SYSTEM,
    )
