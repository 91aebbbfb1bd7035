"""The interfaces the run logic and the outbox use to talk to 1C and MoySklad.

The connectors in ``daemon.onec`` and ``daemon.moysklad`` implement them over HTTP; the run and
the outbox processor only ever see these protocols, so neither imports aiohttp.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from daemon.model import (
    CustomerOrderDocument,
    DeliveredDocument,
    Item,
    Norm,
    Product,
    TransferOrderDocument,
    Warehouse,
)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of ``hubctl check``: e.g. ("1c", "credentials accepted", True, "user Робот")."""

    system: str
    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class OpenTransferLine:
    """Outstanding quantity of one item on the hub's open transfer orders sender → receiver."""

    sender_key: str
    receiver_key: str
    item_key: str
    outstanding: Decimal


class OneCPort(Protocol):
    """What the hub needs from 1C:UT 11 (standard OData)."""

    async def check(self, warehouse_names: Sequence[str]) -> list[CheckResult]:
        """Reachable, credentials, UT version, published objects, warehouses resolved."""
        ...

    async def resolve_warehouses(self, names: Sequence[str]) -> dict[str, Warehouse]:
        """Map configured warehouse names (or pinned keys) to warehouses; PermanentError if a
        name is missing or ambiguous."""
        ...

    async def read_items(self) -> list[Item]:
        """All items that are not folders and not marked for deletion."""
        ...

    async def read_norms(self, warehouse_keys: Sequence[str]) -> dict[tuple[str, str], Norm]:
        """Active min/max norms resolved per (item key, warehouse key) as UT does."""
        ...

    async def read_free_stock(
        self, warehouse_keys: Sequence[str]
    ) -> dict[tuple[str, str], Decimal]:
        """Free stock ВНаличии − КОтгрузке per (item key, warehouse key); absent means 0."""
        ...

    async def read_open_transfers(self, receiver_keys: Sequence[str]) -> list[OpenTransferLine]:
        """What the hub's own open transfer orders to ``receiver_keys`` still owe, per
        (sender, receiver, item): incoming stock for the receiver, and stock still promised
        away at the sender."""
        ...

    async def deliver_transfer_order(
        self, doc: TransferOrderDocument, *, look_up_first: bool
    ) -> DeliveredDocument:
        """Create (with the client-chosen Ref_Key), post and verify. With ``look_up_first`` the
        document is looked up by key before anything is created."""
        ...


class MoySkladPort(Protocol):
    """What the hub needs from MoySklad (JSON API 1.2)."""

    async def check(self) -> list[CheckResult]:
        """Reachable, credentials, organization/agent/store resolved, rate budget."""
        ...

    async def match_products(self, items: Sequence[Item]) -> dict[str, Product]:
        """Products for the items that have one, keyed by item key (the match key is config)."""
        ...

    async def read_incoming_orders(self, external_code_prefix: str) -> dict[str, Decimal]:
        """Outstanding (ordered − shipped) quantity per product id on the hub's own open orders
        whose externalCode starts with ``external_code_prefix``."""
        ...

    async def deliver_customer_order(
        self, doc: CustomerOrderDocument, *, look_up_first: bool
    ) -> DeliveredDocument:
        """Create with the deterministic syncId (a resend returns the existing order)."""
        ...
