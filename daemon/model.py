"""Domain types shared by the connectors, the planner, the run and the outbox.

Quantities are ``Decimal`` everywhere: 1C sends doubles (a kilogram item can have 2.5 in stock)
and the planner must account for every unit exactly, so floats are never used for stock.

Reads (connectors → run → planner) use frozen dataclasses: they are built in bulk (100,000 items)
and must be cheap. Documents (run → outbox → connectors) are pydantic models because they are
stored as JSON in the outbox and must round-trip exactly.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict

EMPTY_GUID = "00000000-0000-0000-0000-000000000000"

# Namespace for the hub's deterministic ids (1C Ref_Key, MoySklad syncId). Never change it:
# resending an old outbox row must produce the same id it produced before.
HUB_NAMESPACE = uuid.UUID("6f1c2b52-3c0e-5b0a-9d7e-2f8a1c0b4e11")


def deterministic_uuid(idempotency_key: str) -> str:
    """The same key always gives the same UUID (uuid5), so a resend is recognisable."""
    return str(uuid.uuid5(HUB_NAMESPACE, idempotency_key))


# ---------------------------------------------------------------------------------------------
# What the connectors read
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Warehouse:
    """A 1C warehouse (``Catalog_Склады``)."""

    key: str  # Ref_Key
    name: str  # Description


@dataclass(frozen=True, slots=True)
class Item:
    """A 1C item (``Catalog_Номенклатура``), not a folder, not marked for deletion."""

    key: str  # Ref_Key
    code: str  # Code, e.g. "УТ-00000123"
    article: str  # Артикул (may be empty)
    name: str  # Description


@dataclass(frozen=True, slots=True)
class Norm:
    """The effective min/max norm of one item on one warehouse, as UT resolves it.

    ``package_size`` is the number of base units in the order packaging (``УпаковкаЗаказа_Key``)
    when the norm names one; quantities are then rounded to whole packages.
    """

    minimum: Decimal
    maximum: Decimal | None = None
    package_key: str | None = None
    package_size: Decimal | None = None
    source: str = "item"  # "item" (detailed row) or "group" (via ГруппировкаТоварныхОграничений)


@dataclass(frozen=True, slots=True)
class Product:
    """A MoySklad product an item maps to."""

    id: str
    name: str
    match_value: str  # the article / code / externalCode it was matched by
    price_kopecks: Decimal = Decimal(0)


# ---------------------------------------------------------------------------------------------
# Documents the hub creates (stored in the outbox as JSON)
# ---------------------------------------------------------------------------------------------


class _Document(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TransferLine(_Document):
    item_key: str
    quantity: Decimal  # base units
    packages: Decimal  # КоличествоУпаковок (== quantity when there is no packaging)
    package_key: str = EMPTY_GUID


class TransferOrderDocument(_Document):
    """A «Заказ на перемещение» to create and post in 1C."""

    kind: str = "onec_transfer_order"
    idempotency_key: str  # deterministic; the marker in Комментарий
    ref_key: str  # client-chosen Ref_Key = deterministic_uuid(idempotency_key)
    run_id: str
    sender_key: str
    sender_name: str
    receiver_key: str
    receiver_name: str
    date: datetime  # naive, the 1C base's local time
    desired_arrival: datetime
    comment: str  # contains the marker, e.g. "bisnesmedia-hub key=<idempotency_key> run=<run_id>"
    lines: tuple[TransferLine, ...]


class OrderLine(_Document):
    product_id: str
    item_key: str
    quantity: Decimal
    price_kopecks: Decimal = Decimal(0)


class CustomerOrderDocument(_Document):
    """A «Заказ покупателя» (customerorder) to create in MoySklad."""

    kind: str = "moysklad_customer_order"
    idempotency_key: str
    sync_id: str  # deterministic_uuid(idempotency_key)
    run_id: str
    external_code: str  # traceable to the run, e.g. "hub-<run_id>-<target>-1"
    description: str
    target_name: str
    lines: tuple[OrderLine, ...]
    target_key: str = ""  # 1C Ref_Key of the target warehouse the order replenishes


Document = TransferOrderDocument | CustomerOrderDocument


class DeliveredDocument(_Document):
    """What a connector reports after a document exists (created now or found)."""

    external_id: str  # 1C Ref_Key / MoySklad id
    number: str  # 1C Number / MoySklad name
    created_now: bool  # False when the lookup found it already there
