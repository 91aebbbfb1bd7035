"""What the replenishment planner decides: the plan types and their JSON-safe forms.

A ``ReplenishmentPlan`` holds one ``TargetPlan`` per target warehouse, in the configured order.
Each target plan carries the documents to create (one ``TransferOrderPlan`` per donor that gives
anything, the ``ExternalOrderPlan`` parts for МойСклад), the items that have no МойСклад product
(``UnmappedItem``), one ``ItemDecision`` per item considered, and a ``TargetSummary``.

Everything is immutable and built from tuples, so two plans compare equal exactly when they
say the same thing: the documents and summaries are frozen dataclasses, and the records made
once per item (``ItemDecision``, ``Deficit``, ``DonorTake`` and the lines) are ``NamedTuple``s,
which build four times faster than a frozen dataclass (the planner makes a few hundred thousand
of them for 100,000 items). The ``to_dict()`` methods give JSON-safe dicts (``Decimal`` as
``str``, which round-trips exactly) for the run's stored plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

from daemon.model import EMPTY_GUID, Item, Norm, Product, Warehouse
from daemon.replenishment.reasons import describe

JsonDict = dict[str, Any]

_ZERO = Decimal(0)

# Decision codes, stored with each plan item.
NO_NORM = "no_norm"  # no norm for the item on the target: nothing ordered
OK = "ok"  # free + incoming is at or above the minimum
TRANSFER = "transfer"  # below min, donors cover all of it
TRANSFER_AND_EXTERNAL = "transfer_and_external"  # donors cover part, МойСклад the rest
EXTERNAL = "external"  # donors give nothing, МойСклад covers it
TRANSFER_AND_UNMAPPED = "transfer_and_unmapped"  # donors cover part, the rest has no product
UNMAPPED = "unmapped"  # donors give nothing and the item has no МойСклад product
DECISIONS = (
    NO_NORM,
    OK,
    TRANSFER,
    TRANSFER_AND_EXTERNAL,
    EXTERNAL,
    TRANSFER_AND_UNMAPPED,
    UNMAPPED,
)


def _dec(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _warehouse(warehouse: Warehouse) -> JsonDict:
    return {"key": warehouse.key, "name": warehouse.name}


class DonorTake(NamedTuple):
    """How one donor was consulted for one item of one target.

    ``free`` is the donor's free stock left for this target: the given free stock minus
    ``taken_earlier``, what earlier targets of the same run already took. ``spare`` is
    ``max(0, free - minimum)``; ``asked`` is the need still open when the planner reached this
    donor (0: earlier donors covered it); ``take`` is what it gives.
    """

    warehouse: Warehouse
    free: Decimal
    minimum: Decimal
    spare: Decimal
    asked: Decimal
    take: Decimal
    taken_earlier: Decimal


class Deficit(NamedTuple):
    """How the need of an item below its minimum was covered.

    ``need`` is the exact ``target_level - target_free - incoming``; ``need_rounded`` is ``need``
    rounded up to whole packages when the target norm names a packaging of ``package_size`` base
    units, else equal to ``need``. Every unit of ``need_rounded`` is accounted exactly once::

        sum(d.take for d in donors) + external + unmapped == need_rounded

    ``donors`` holds every configured donor in priority order, including those never asked.
    ``match_key`` is what the item would be matched to a МойСклад product by ("article", ...).
    """

    target_level: Decimal
    need: Decimal
    need_rounded: Decimal
    package_size: Decimal | None
    donors: tuple[DonorTake, ...]
    external: Decimal
    unmapped: Decimal
    match_key: str

    @property
    def transferred(self) -> Decimal:
        """Everything the donors give for this item."""
        return sum((d.take for d in self.donors), _ZERO)

    def to_dict(self) -> JsonDict:
        return {
            "target_level": str(self.target_level),
            "need": str(self.need),
            "need_rounded": str(self.need_rounded),
            "package_size": _dec(self.package_size),
            "donors": [
                {
                    "warehouse": _warehouse(d.warehouse),
                    "free": str(d.free),
                    "minimum": str(d.minimum),
                    "spare": str(d.spare),
                    "asked": str(d.asked),
                    "take": str(d.take),
                    "taken_earlier": str(d.taken_earlier),
                }
                for d in self.donors
            ],
            "external": str(self.external),
            "unmapped": str(self.unmapped),
            "match_key": self.match_key,
        }


class ItemDecision(NamedTuple):
    """What the planner decided for one item on one target, and from what.

    ``decision`` is one of ``DECISIONS``. ``norm`` is the target's resolved norm (``None``: no
    norm, nothing ordered); ``deficit`` is set exactly when the item is below its minimum.
    ``reason`` is a short sentence for people, rendered from these facts when asked for (the
    plan of 100,000 items must be cheap to build; most reasons are only read once, when stored).
    """

    item: Item
    decision: str
    norm: Norm | None
    target_free: Decimal
    incoming: Decimal
    deficit: Deficit | None = None

    @property
    def reason(self) -> str:
        return describe(self)

    def detail(self) -> JsonDict:
        """The inputs and quantities, for the stored plan item's ``detail_json``."""
        norm = self.norm
        return {
            "target_free": str(self.target_free),
            "incoming": str(self.incoming),
            "norm": None
            if norm is None
            else {
                "minimum": str(norm.minimum),
                "maximum": _dec(norm.maximum),
                "package_key": norm.package_key,
                "package_size": _dec(norm.package_size),
                "source": norm.source,
            },
            "deficit": None if self.deficit is None else self.deficit.to_dict(),
        }

    def to_dict(self) -> JsonDict:
        return {
            "item_key": self.item.key,
            "code": self.item.code,
            "article": self.item.article,
            "name": self.item.name,
            "decision": self.decision,
            "reason": self.reason,
            "detail": self.detail(),
        }


class TransferLinePlan(NamedTuple):
    """One line of a «Заказ на перемещение»: ``quantity`` base units in ``packages`` packages
    (``packages == quantity`` and ``package_key == EMPTY_GUID`` without packaging)."""

    item_key: str
    quantity: Decimal
    packages: Decimal
    package_key: str = EMPTY_GUID

    def to_dict(self) -> JsonDict:
        return {
            "item_key": self.item_key,
            "quantity": str(self.quantity),
            "packages": str(self.packages),
            "package_key": self.package_key,
        }


@dataclass(frozen=True, slots=True)
class TransferOrderPlan:
    """The one transfer order ``donor → target`` of a run; only donors that give something."""

    donor: Warehouse
    target: Warehouse
    lines: tuple[TransferLinePlan, ...]

    def to_dict(self) -> JsonDict:
        return {
            "donor": _warehouse(self.donor),
            "target": _warehouse(self.target),
            "lines": [line.to_dict() for line in self.lines],
        }


class ExternalLinePlan(NamedTuple):
    """One position of the МойСклад order, in base units (rounded up to whole packages)."""

    item_key: str
    product: Product
    quantity: Decimal
    price_kopecks: Decimal

    def to_dict(self) -> JsonDict:
        return {
            "item_key": self.item_key,
            "product_id": self.product.id,
            "product_name": self.product.name,
            "quantity": str(self.quantity),
            "price_kopecks": str(self.price_kopecks),
        }


@dataclass(frozen=True, slots=True)
class ExternalOrderPlan:
    """One МойСклад order for a target; ``part`` of ``parts`` (1-based) when the lines had to be
    split to stay within the per-order position limit."""

    target: Warehouse
    part: int
    parts: int
    lines: tuple[ExternalLinePlan, ...]

    def to_dict(self) -> JsonDict:
        return {
            "target": _warehouse(self.target),
            "part": self.part,
            "parts": self.parts,
            "lines": [line.to_dict() for line in self.lines],
        }


class UnmappedItem(NamedTuple):
    """Need that no donor covered and that cannot go to МойСклад: the item has no product.

    ``match_value`` is the item's value of the match key (e.g. its article; may be empty).
    """

    item: Item
    quantity: Decimal
    match_key: str
    match_value: str

    def to_dict(self) -> JsonDict:
        return {
            "item_key": self.item.key,
            "code": self.item.code,
            "name": self.item.name,
            "quantity": str(self.quantity),
            "match_key": self.match_key,
            "match_value": self.match_value,
        }


@dataclass(frozen=True, slots=True)
class TargetSummary:
    """Counts for one target; ``transfer_lines`` is (donor name, lines) in donor order."""

    items: int
    no_norm: int
    ok: int
    below_min: int
    transfer_lines: tuple[tuple[str, int], ...]
    external_lines: int
    external_orders: int
    unmapped: int

    def to_dict(self) -> JsonDict:
        return {
            "items": self.items,
            "no_norm": self.no_norm,
            "ok": self.ok,
            "below_min": self.below_min,
            "transfer_lines": dict(self.transfer_lines),
            "external_lines": self.external_lines,
            "external_orders": self.external_orders,
            "unmapped": self.unmapped,
        }


@dataclass(frozen=True, slots=True)
class TargetPlan:
    """Everything planned for one target warehouse."""

    target: Warehouse
    donors: tuple[Warehouse, ...]
    decisions: tuple[ItemDecision, ...]
    transfers: tuple[TransferOrderPlan, ...]
    external_orders: tuple[ExternalOrderPlan, ...]
    unmapped: tuple[UnmappedItem, ...]
    summary: TargetSummary

    def to_dict(self) -> JsonDict:
        return {
            "target": _warehouse(self.target),
            "donors": [_warehouse(d) for d in self.donors],
            "decisions": [d.to_dict() for d in self.decisions],
            "transfers": [t.to_dict() for t in self.transfers],
            "external_orders": [o.to_dict() for o in self.external_orders],
            "unmapped": [u.to_dict() for u in self.unmapped],
            "summary": self.summary.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class ReplenishmentPlan:
    """The whole plan of one run: one ``TargetPlan`` per target, in the configured order."""

    targets: tuple[TargetPlan, ...]
    match_key: str
    max_positions_per_order: int

    def counts(self) -> dict[str, int]:
        """Totals over all targets, for the run's ``counts_json``."""
        totals = {
            "targets": len(self.targets),
            "items": 0,
            "no_norm": 0,
            "ok": 0,
            "below_min": 0,
            "transfer_orders": 0,
            "transfer_lines": 0,
            "external_orders": 0,
            "external_lines": 0,
            "unmapped": 0,
        }
        for target in self.targets:
            summary = target.summary
            totals["items"] += summary.items
            totals["no_norm"] += summary.no_norm
            totals["ok"] += summary.ok
            totals["below_min"] += summary.below_min
            totals["transfer_orders"] += len(target.transfers)
            totals["transfer_lines"] += sum(lines for _, lines in summary.transfer_lines)
            totals["external_orders"] += summary.external_orders
            totals["external_lines"] += summary.external_lines
            totals["unmapped"] += summary.unmapped
        return totals

    def to_dict(self) -> JsonDict:
        return {
            "match_key": self.match_key,
            "max_positions_per_order": self.max_positions_per_order,
            "counts": self.counts(),
            "targets": [t.to_dict() for t in self.targets],
        }
