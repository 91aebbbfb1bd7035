"""Customer orders: the body the hub sends, and reading back what is still outstanding."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from daemon.errors import PermanentError
from daemon.model import CustomerOrderDocument
from daemon.moysklad.failures import SYSTEM
from daemon.moysklad.references import (
    MEDIA_TYPE,
    OrderStates,
    Reference,
    filter_value,
    id_from_href,
)
from daemon.moysklad.transport import MoySkladTransport, Query

MAX_POSITIONS = 1000  # the API's array limit; more gives 413
DESCRIPTION_MAX = 4096
EXPAND_LIMIT = 100  # expand is silently ignored above this list limit


def _number(value: Decimal) -> int | float:
    """JSON number for a quantity or price: whole values stay integers."""
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def description(doc: CustomerOrderDocument) -> str:
    """The document's description, always naming the hub run that made it."""
    text = doc.description
    if doc.run_id not in text:
        text = f"{text} (bisnesmedia-hub run {doc.run_id})".strip()
    return text[:DESCRIPTION_MAX]


def check_document(doc: CustomerOrderDocument) -> None:
    """``PermanentError`` for a document the API would refuse as a whole."""
    if not doc.lines:
        raise PermanentError(f"order {doc.external_code} has no positions", system=SYSTEM)
    if len(doc.lines) > MAX_POSITIONS:
        raise PermanentError(
            f"order {doc.external_code} has {len(doc.lines)} positions; МойСклад takes at most "
            f"{MAX_POSITIONS} in one request (the run must split it)",
            system=SYSTEM,
        )


def order_body(
    doc: CustomerOrderDocument,
    *,
    base_url: str,
    organization: Reference,
    agent: Reference,
    store: Reference | None,
    state: Reference | None,
) -> dict[str, Any]:
    """The POST body for ``doc`` (already checked by ``check_document``)."""
    check_document(doc)
    body: dict[str, Any] = {
        "syncId": doc.sync_id,
        "externalCode": doc.external_code,
        "description": description(doc),
        "organization": organization.as_meta(),
        "agent": agent.as_meta(),
        "positions": [
            {
                "quantity": _number(line.quantity),
                "price": _number(line.price_kopecks),
                "assortment": {
                    "meta": {
                        "href": f"{base_url}entity/product/{line.product_id}",
                        "type": "product",
                        "mediaType": MEDIA_TYPE,
                    }
                },
            }
            for line in doc.lines
        ],
    }
    if store is not None:
        body["store"] = store.as_meta()
    if state is not None:
        body["state"] = state.as_meta()
    return body


async def find_by_sync_id(transport: MoySkladTransport, sync_id: str) -> dict[str, Any] | None:
    page = await transport.get(
        "entity/customerorder", {"filter": f"syncId={filter_value(sync_id)}", "limit": 1}
    )
    rows = page.get("rows") or []
    return rows[0] if rows else None


async def _positions(transport: MoySkladTransport, order: dict[str, Any]) -> list[dict[str, Any]]:
    """All positions of ``order``: the expanded ones, or the sub-resource when cut short."""
    positions = order.get("positions") or {}
    rows: list[dict[str, Any]] = positions.get("rows") or []
    size = int((positions.get("meta") or {}).get("size", len(rows)))
    if len(rows) >= size:
        return rows
    rows = []
    for _ in range(size // 1000 + 2):
        page = await transport.get(
            f"entity/customerorder/{order['id']}/positions",
            {"limit": 1000, "offset": len(rows)},
        )
        chunk = page.get("rows") or []
        rows.extend(chunk)
        if not chunk or len(rows) >= int(page.get("meta", {}).get("size", 0)):
            break
    return rows


async def read_outstanding(
    transport: MoySkladTransport, external_code_prefix: str, states: OrderStates
) -> tuple[dict[str, Decimal], int]:
    """(outstanding quantity per product id, number of open orders) for the hub's orders."""
    outstanding: dict[str, Decimal] = {}
    open_orders = 0
    offset = 0
    query: Query = {
        "filter": f"externalCode~={filter_value(external_code_prefix)}",
        "expand": "positions",
        "limit": EXPAND_LIMIT,
    }
    for _ in range(100_000):
        page = await transport.get("entity/customerorder", {**query, "offset": offset})
        rows = page.get("rows") or []
        for order in rows:
            if not str(order.get("externalCode", "")).startswith(external_code_prefix):
                continue
            state_href = ((order.get("state") or {}).get("meta") or {}).get("href")
            if state_href and id_from_href(state_href) in states.final_ids:
                continue
            open_orders += 1
            for position in await _positions(transport, order):
                meta = (position.get("assortment") or {}).get("meta") or {}
                if meta.get("type") != "product":
                    continue
                left = Decimal(str(position.get("quantity", 0))) - Decimal(
                    str(position.get("shipped", 0))
                )
                if left > 0:
                    product_id = id_from_href(str(meta["href"]))
                    outstanding[product_id] = outstanding.get(product_id, Decimal(0)) + left
        offset += len(rows)
        if not rows or offset >= int(page.get("meta", {}).get("size", 0)):
            break
    return outstanding, open_orders
