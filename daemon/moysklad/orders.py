"""Customer orders: the body the hub sends, and reading back what is still outstanding.

Reads check every field they use (see ``answers.py``): an order page, an order or a position
that cannot be read fails the whole read with a ``TransientError``, because leaving one out
would understate what is still incoming and the next run would order the same deficit again.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from daemon.errors import PermanentError, TransientError
from daemon.model import CustomerOrderDocument
from daemon.moysklad.answers import (
    ErrorKind,
    as_count,
    as_list,
    as_object,
    as_quantity,
    as_text,
    as_uuid,
    is_last,
    malformed,
    read_page,
    shape,
)
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
POSITION_PAGE = 1000
MAX_POSITION_PAGES = 10  # the hub's orders have at most MAX_POSITIONS positions
MAX_ORDER_PAGES = 10_000  # a million open hub orders: far beyond any real account
ASSORTMENT_TYPES = frozenset({"product", "variant", "service", "bundle", "consignment"})


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


@dataclass(frozen=True, slots=True)
class OrderRef:
    """A customer order the hub created, as МойСклад identifies it."""

    id: str
    name: str  # the order number shown to people, e.g. "00042"


def order_ref(
    answer: Any, sync_id: str, what: str, *, kind: ErrorKind = TransientError
) -> OrderRef:
    """The id and number of the order in ``answer``, which must be the order with ``sync_id``.

    Anything else (no id, a number that is not text, another order's syncId) is ``kind``:
    reporting it as delivered would put a made-up id in the outbox, or another order's."""
    order = as_object(answer, what, "the order", kind=kind)
    order_id = as_uuid(order.get("id"), what, "the order id", kind=kind)
    name = as_text(order.get("name"), what, f"the number of order {order_id}", kind=kind)
    echoed = order.get("syncId")
    if not isinstance(echoed, str) or echoed.lower() != sync_id.lower():
        raise malformed(
            what, f"order {order_id} carries syncId {shape(echoed)}, not {sync_id}", kind=kind
        )
    return OrderRef(order_id, name)


async def find_by_sync_id(transport: MoySkladTransport, sync_id: str) -> OrderRef | None:
    """The order created with ``sync_id``, or None when the lookup finds none.

    A lookup answer that cannot be understood is a ``TransientError`` (the order may exist, so
    the outbox must look again later, neither resend blindly nor give up)."""
    what = "GET entity/customerorder (lookup by syncId)"
    answer = await transport.get(
        "entity/customerorder", {"filter": f"syncId={filter_value(sync_id)}", "limit": 1}
    )
    rows = as_list(as_object(answer, what, "the answer").get("rows"), what, "rows")
    return order_ref(rows[0], sync_id, what) if rows else None


async def _positions(transport: MoySkladTransport, order: dict[str, Any], what: str) -> list[Any]:
    """All positions of ``order``: the expanded ones, or the sub-resource when cut short.

    ``meta.size`` of the positions decides whether the expanded rows are all of them; the
    sub-resource is paged until ``is_last`` accepts a page, at most ``MAX_POSITION_PAGES``."""
    positions = as_object(order.get("positions"), what, "the positions of an order")
    meta = as_object(positions.get("meta"), what, "positions.meta")
    size = as_count(meta.get("size"), what, "positions.meta.size")
    expanded = positions.get("rows")
    if expanded is not None and len(as_list(expanded, what, "positions.rows")) >= size:
        return list(expanded)
    order_id = as_uuid(order.get("id"), what, "the id of an order")
    path = f"entity/customerorder/{order_id}/positions"
    rows: list[Any] = []
    for _ in range(MAX_POSITION_PAGES):
        offset = len(rows)
        answer = await transport.get(path, {"limit": POSITION_PAGE, "offset": offset})
        page = read_page(answer, f"GET {path}")
        rows.extend(page.rows)
        if is_last(page, offset, POSITION_PAGE, f"GET {path}"):
            return rows
    raise malformed(f"GET {path}", f"more than {MAX_POSITION_PAGES} full pages of positions")


def _left_to_ship(position: Any, what: str) -> tuple[str, Decimal] | None:
    """(product id, quantity − shipped) of a position; None for other assortment or nothing
    left. A position that cannot be read fails the read: skipping it would make "incoming"
    smaller and the next run order the same deficit again."""
    row = as_object(position, what, "a position")
    assortment = as_object(row.get("assortment"), what, "a position's assortment")
    meta = as_object(assortment.get("meta"), what, "a position's assortment.meta")
    kind = meta.get("type")
    if not isinstance(kind, str) or kind not in ASSORTMENT_TYPES:
        raise malformed(what, f"a position's assortment type is {shape(kind)}")
    if kind != "product":
        return None
    href = as_text(meta.get("href"), what, "a position's assortment.meta.href")
    product_id = as_uuid(id_from_href(href), what, "the product id in a position's href")
    quantity = as_quantity(row.get("quantity"), what, f"the quantity of product {product_id}")
    # An omitted field is an empty one in this API; nothing shipped yet is such a case.
    shipped = as_quantity(row.get("shipped", 0), what, f"the shipped of product {product_id}")
    left = quantity - shipped
    return (product_id, left) if left > 0 else None


def _is_closed(order: dict[str, Any], states: OrderStates, what: str) -> bool:
    state = order.get("state")
    if state is None:
        return False  # no state at all: the order is open
    meta = as_object(as_object(state, what, "an order's state").get("meta"), what, "state.meta")
    href = as_text(meta.get("href"), what, "an order's state.meta.href")
    state_id = id_from_href(href)
    if state_id not in states.by_id:
        # Open or closed cannot be told; the states may have changed since they were read.
        raise malformed(what, f"an order is in state {state_id[:40]!r}, which the metadata lacks")
    return state_id in states.final_ids


async def read_outstanding(
    transport: MoySkladTransport, external_code_prefix: str, states: OrderStates
) -> tuple[dict[str, Decimal], int]:
    """(outstanding quantity per product id, number of open orders) for the hub's orders.

    A page without a ``rows`` list or a readable ``meta.size`` fails the read instead of
    reading as "no open orders" (incoming 0 would make the next run order again)."""
    what = "GET entity/customerorder"
    outstanding: dict[str, Decimal] = {}
    open_orders = 0
    offset = 0
    query: Query = {
        "filter": f"externalCode~={filter_value(external_code_prefix)}",
        "expand": "positions",
        "limit": EXPAND_LIMIT,
    }
    for _ in range(MAX_ORDER_PAGES):
        page = read_page(
            await transport.get("entity/customerorder", {**query, "offset": offset}), what
        )
        for row in page.rows:
            order = as_object(row, what, "an order")
            code = as_text(order.get("externalCode"), what, "an order's externalCode")
            if not code.startswith(external_code_prefix) or _is_closed(order, states, what):
                continue
            open_orders += 1
            for position in await _positions(transport, order, what):
                left = _left_to_ship(position, what)
                if left is not None:
                    product_id, quantity = left
                    outstanding[product_id] = outstanding.get(product_id, Decimal(0)) + quantity
        if is_last(page, offset, EXPAND_LIMIT, what):
            return outstanding, open_orders
        offset += len(page.rows)
    raise malformed(what, f"more than {MAX_ORDER_PAGES} full pages of the hub's orders")
