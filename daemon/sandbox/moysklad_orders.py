"""``customerorder`` semantics of the МойСклад emulator.

Create requires ``organization`` and ``agent`` (412/3000), validates every meta (2010–2013,
2024, 1059 for a foreign host), checks positions (3003, 17003, 17007, 17008; more than 1000 is
413), fills ``name`` (5-digit sequence), ``externalCode`` (22 random chars), ``moment`` (to the
minute), ``created``/``updated``, the default state, ``rate`` and the sums. A create whose
``syncId`` is already known returns the existing order and creates nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from daemon.sandbox.moysklad_validation import (
    Position,
    RequestContext,
    field_error,
    parse_description,
    parse_moment,
    parse_positions,
)
from daemon.sandbox.moysklad_wire import (
    MEDIA_TYPE,
    ApiError,
    Ids,
    meta,
    now_msk,
    reference,
    timestamp,
)

EXPANDED_POSITIONS = 100  # rows of an expanded nested collection [unverified: 100 or 1000]


@dataclass
class Order:
    id: str
    name: str
    external_code: str
    sync_id: str | None
    organization: str
    agent: tuple[str, str]
    store: str | None
    state: str
    moment: str
    created: str
    updated: str
    description: str | None = None
    applicable: bool = True
    vat_enabled: bool = False
    vat_included: bool = True
    version: int = 0
    positions: list[Position] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class State:
    id: str
    name: str
    color: int
    state_type: str  # Regular | Successful | Unsuccessful


class OrderBook:
    """The account's customer orders."""

    def __init__(self, ids: Ids, states: list[State]) -> None:
        self._ids = ids
        self.states = states
        self.orders: dict[str, Order] = {}
        self._by_sync_id: dict[str, str] = {}
        self._next_number = 1
        self.unique_names = False

    def reseed(self, ids: Ids) -> None:
        self._ids = ids

    def state(self, state_id: str) -> State:
        return next(state for state in self.states if state.id == state_id)

    def state_named(self, name: str) -> State:
        return next(state for state in self.states if state.name == name)

    def by_sync_id(self, sync_id: Any) -> Order | None:
        if isinstance(sync_id, str) and sync_id in self._by_sync_id:
            return self.orders[self._by_sync_id[sync_id]]
        return None

    # -- create / update ---------------------------------------------------------------------

    def create(self, body: Any, ctx: RequestContext) -> tuple[Order, bool]:
        """(order, created_now); a known ``syncId`` returns the existing order."""
        if not isinstance(body, dict):
            raise ApiError(400, 2001, "Ошибка формата JSON: ожидался объект")
        sync_id = body.get("syncId")
        if sync_id is not None:
            try:
                sync_id = str(uuid.UUID(str(sync_id)))
            except ValueError as exc:
                raise field_error(
                    400, 2016, "Неверный тип значения поля 'syncId'", "syncId"
                ) from exc
            existing = self.by_sync_id(sync_id)
            if existing is not None:
                return existing, False
        for required in ("organization", "agent"):
            if body.get(required) is None:
                raise field_error(
                    412,
                    3000,
                    f"Ошибка сохранения объекта: поле '{required}' не может быть пустым "
                    "или отсутствовать",
                    required,
                )
        organization = ctx.reference(
            body["organization"], "organization", frozenset({"organization"})
        )
        agent = ctx.reference(body["agent"], "agent", frozenset({"counterparty", "organization"}))
        store = None
        if body.get("store") is not None:
            store = ctx.reference(body["store"], "store", frozenset({"store"}))[1]
        state = self.states[0].id
        if body.get("state") is not None:
            state = ctx.reference(body["state"], "state", frozenset({"state"}))[1]
        positions = parse_positions(body.get("positions", []), ctx, self._ids)
        name = body.get("name")
        if name is None:
            name = f"{self._next_number:05d}"
            self._next_number += 1
        self._check_name(str(name), None)
        moment = parse_moment(body.get("moment"))
        stamp = timestamp(now_msk())
        order = Order(
            id=self._ids.new_id(),
            name=str(name),
            external_code=str(body.get("externalCode") or self._ids.external_code()),
            sync_id=sync_id,
            organization=organization[1],
            agent=agent,
            store=store,
            state=state,
            moment=moment,
            created=stamp,
            updated=stamp,
            description=parse_description(body.get("description")),
            applicable=bool(body.get("applicable", True)),
            vat_enabled=bool(body.get("vatEnabled", False)),
            vat_included=bool(body.get("vatIncluded", True)),
            positions=positions,
        )
        self.orders[order.id] = order
        if sync_id is not None:
            self._by_sync_id[sync_id] = order.id
        return order, True

    def update(self, order_id: str, body: Any, ctx: RequestContext) -> Order:
        order = self.orders.get(order_id)
        if order is None:
            raise ApiError(404, 1021, f"Объект с UUID {order_id} не найден")
        if not isinstance(body, dict):
            raise ApiError(400, 2001, "Ошибка формата JSON: ожидался объект")
        if "syncId" in body and body["syncId"] != order.sync_id:
            raise field_error(412, 1047, "Поле 'syncId' не может быть изменено", "syncId")
        if "organization" in body:
            order.organization = ctx.reference(
                body["organization"], "organization", frozenset({"organization"})
            )[1]
        if "agent" in body:
            order.agent = ctx.reference(
                body["agent"], "agent", frozenset({"counterparty", "organization"})
            )
        if "store" in body:
            store = body["store"]
            order.store = (
                None if store is None else ctx.reference(store, "store", frozenset({"store"}))[1]
            )
        if "state" in body:
            order.state = ctx.reference(body["state"], "state", frozenset({"state"}))[1]
        if "positions" in body:
            order.positions = parse_positions(
                body["positions"], ctx, self._ids, keep=order.positions
            )
        if "name" in body:
            self._check_name(str(body["name"]), order.id)
            order.name = str(body["name"])
        if "externalCode" in body:
            order.external_code = str(body["externalCode"])
        if "description" in body:
            order.description = parse_description(body["description"])
        if "moment" in body:
            order.moment = parse_moment(body["moment"])
        if "applicable" in body:
            order.applicable = bool(body["applicable"])
        order.version += 1
        order.updated = timestamp(now_msk())
        return order

    def add_positions(self, order_id: str, body: Any, ctx: RequestContext) -> list[Position]:
        order = self.orders[order_id]
        items = body if isinstance(body, list) else [body]
        added = parse_positions(items, ctx, self._ids)
        order.positions.extend(added)
        order.version += 1
        return added

    def delete(self, order_id: str) -> None:
        order = self.orders.pop(order_id, None)
        if order is None:
            raise ApiError(404, 1021, f"Объект с UUID {order_id} не найден")
        if order.sync_id is not None:
            self._by_sync_id.pop(order.sync_id, None)

    def _check_name(self, name: str, own_id: str | None) -> None:
        if not self.unique_names:
            return
        if any(o.name == name and o.id != own_id for o in self.orders.values()):
            raise field_error(412, 3006, f"Значение поля 'name' не уникально: '{name}'", "name")

    # -- rendering ---------------------------------------------------------------------------

    def render_state(self, base: str, state: State, *, expand: bool) -> dict[str, Any]:
        state_meta = {
            "href": f"{base}entity/customerorder/metadata/states/{state.id}",
            "metadataHref": f"{base}entity/customerorder/metadata",
            "type": "state",
            "mediaType": MEDIA_TYPE,
        }
        if not expand:
            return {"meta": state_meta}
        return {
            "meta": state_meta,
            "id": state.id,
            "name": state.name,
            "color": state.color,
            "stateType": state.state_type,
            "entityType": "customerorder",
        }

    def render_position(self, base: str, order: Order, position: Position) -> dict[str, Any]:
        return {
            "meta": {
                "href": f"{base}entity/customerorder/{order.id}/positions/{position.id}",
                "type": "customerorderposition",
                "mediaType": MEDIA_TYPE,
            },
            "id": position.id,
            "quantity": position.quantity,
            "price": position.price,
            "discount": position.discount,
            "vat": position.vat,
            "vatEnabled": order.vat_enabled,
            "assortment": reference(base, position.assortment_type, position.assortment_id),
            "shipped": position.shipped,
            "reserve": position.reserve,
        }

    def render(
        self,
        base: str,
        order: Order,
        *,
        account: dict[str, str],
        expand_positions: bool = False,
        expand_state: bool = False,
    ) -> dict[str, Any]:
        sums = {"sum": 0.0, "reservedSum": 0.0, "shippedSum": 0.0}
        for p in order.positions:
            price = p.price * (1 - p.discount / 100)
            sums["sum"] += price * p.quantity
            sums["reservedSum"] += price * p.reserve
            sums["shippedSum"] += price * p.shipped
        positions_meta: dict[str, Any] = {
            "href": f"{base}entity/customerorder/{order.id}/positions",
            "type": "customerorderposition",
            "mediaType": MEDIA_TYPE,
            "size": len(order.positions),
            "limit": EXPANDED_POSITIONS if expand_positions else 1000,
            "offset": 0,
        }
        positions: dict[str, Any] = {"meta": positions_meta}
        if expand_positions:
            positions["rows"] = [
                self.render_position(base, order, p) for p in order.positions[:EXPANDED_POSITIONS]
            ]
        rendered: dict[str, Any] = {
            "meta": meta(base, "customerorder", order.id),
            "id": order.id,
            "accountId": account["account"],
            "owner": reference(base, "employee", account["employee"]),
            "shared": False,
            "group": reference(base, "group", account["group"]),
            "version": order.version,
            "updated": order.updated,
            "name": order.name,
            "externalCode": order.external_code,
            "moment": order.moment,
            "applicable": order.applicable,
            "rate": {"currency": reference(base, "currency", account["currency"])},
            "sum": round(sums["sum"], 2),
            "organization": reference(base, "organization", order.organization),
            "agent": reference(base, order.agent[0], order.agent[1]),
            "state": self.render_state(base, self.state(order.state), expand=expand_state),
            "created": order.created,
            "printed": False,
            "published": False,
            "positions": positions,
            "vatEnabled": order.vat_enabled,
            "vatIncluded": order.vat_included,
            "vatSum": 0.0,
            "payedSum": 0.0,
            "shippedSum": round(sums["shippedSum"], 2),
            "invoicedSum": 0.0,
            "reservedSum": round(sums["reservedSum"], 2),
        }
        if order.sync_id is not None:
            rendered["syncId"] = order.sync_id
        if order.description is not None:
            rendered["description"] = order.description
        if order.store is not None:
            rendered["store"] = reference(base, "store", order.store)
        return rendered
