"""The short sentences the planner stores with each decision, for a warehouse manager to read.

Examples::

    at or above min 10: free 12 + incoming 0
    below min 10: free 3 + incoming 0, needs 7; takes 5 from Бестужевых, 2 from Контейнер
    below min 10: free 3 + incoming 0, needs 17 to max 20; takes 8 from Бестужевых;
        donor Контейнер kept at its own min 4 (free 4); orders 9 from МойСклад
    below min 6: free 0 + incoming 0, needs 6; 6 unmapped: no МойСклад product with article X

Whenever a donor that was asked gives less than asked, the sentence says why: no free stock,
kept at its own minimum, all of its spare given, or spare rounded down to whole packages.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Protocol

from daemon.model import Item, Norm, Warehouse

NO_NORM_REASON = "no norm"


# The facts a sentence is worded from, as the plan's records (``daemon.replenishment.plan``)
# carry them. Stated here, not imported: the plan imports this module to render
# ``ItemDecision.reason``, and the dependency runs that one way only.


class DonorFacts(Protocol):
    """How one donor was consulted (``plan.DonorTake``)."""

    @property
    def warehouse(self) -> Warehouse: ...
    @property
    def free(self) -> Decimal: ...
    @property
    def minimum(self) -> Decimal: ...
    @property
    def spare(self) -> Decimal: ...
    @property
    def asked(self) -> Decimal: ...
    @property
    def take(self) -> Decimal: ...
    @property
    def taken_earlier(self) -> Decimal: ...


class DeficitFacts(Protocol):
    """How the need of an item below its minimum was covered (``plan.Deficit``)."""

    @property
    def target_level(self) -> Decimal: ...
    @property
    def need(self) -> Decimal: ...
    @property
    def need_rounded(self) -> Decimal: ...
    @property
    def package_size(self) -> Decimal | None: ...
    @property
    def donors(self) -> Sequence[DonorFacts]: ...
    @property
    def external(self) -> Decimal: ...
    @property
    def unmapped(self) -> Decimal: ...
    @property
    def match_key(self) -> str: ...


class DecisionFacts(Protocol):
    """What was decided for one item on one target, and from what (``plan.ItemDecision``)."""

    @property
    def item(self) -> Item: ...
    @property
    def norm(self) -> Norm | None: ...
    @property
    def target_free(self) -> Decimal: ...
    @property
    def incoming(self) -> Decimal: ...
    @property
    def deficit(self) -> DeficitFacts | None: ...


_ZERO = Decimal(0)


def fmt(value: Decimal) -> str:
    """A quantity as people write it: exact, fixed-point, no trailing zeros ("2.5", "100")."""
    text = str(value)
    if "E" in text:
        text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def match_value(item: Item, match_key: str) -> str:
    """The item's value of the МойСклад match key: externalCode carries the 1C Ref_Key."""
    if match_key == "article":
        return item.article
    if match_key == "code":
        return item.code
    if match_key == "externalCode":
        return item.key
    return ""


def describe(decision: DecisionFacts) -> str:
    """The reason sentence for one decision."""
    norm = decision.norm
    if norm is None:
        return NO_NORM_REASON
    head = (
        f"below min {fmt(norm.minimum)}"
        if decision.deficit
        else f"at or above min {fmt(norm.minimum)}"
    ) + f": free {fmt(decision.target_free)} + incoming {fmt(decision.incoming)}"
    if decision.deficit is None:
        return head
    return _deficit_reason(decision.item, norm.maximum, head, decision.deficit)


def _packages(quantity: Decimal, package: Decimal) -> str:
    count = quantity / package
    noun = "package" if count == 1 else "packages"
    return f"{fmt(count)} {noun} of {fmt(package)}"


def _need_clause(maximum: Decimal | None, deficit: DeficitFacts) -> str:
    need, need_rounded, package = deficit.need, deficit.need_rounded, deficit.package_size
    clause = f"needs {fmt(need)}"
    if maximum is not None:
        if deficit.target_level == maximum:
            clause += f" to max {fmt(maximum)}"
        else:
            clause += f" (max {fmt(maximum)} is below min, ignored)"
    if package is not None:
        if need_rounded != need:
            clause += f", {fmt(need_rounded)} in whole packages of {fmt(package)}"
        else:
            clause += f", in whole packages of {fmt(package)}"
    return clause


def _shortfall(donor: DonorFacts, package: Decimal | None) -> str:
    """Why a donor that was asked gave less than asked."""
    name = donor.warehouse.name
    earlier = (
        f" after {fmt(donor.taken_earlier)} taken for earlier targets"
        if donor.taken_earlier
        else ""
    )
    minimum = donor.minimum
    if not donor.spare:
        if donor.free <= _ZERO:
            return f"donor {name} has no free stock (free {fmt(donor.free)}{earlier})"
        return f"donor {name} kept at its own min {fmt(minimum)} (free {fmt(donor.free)}{earlier})"
    kept = f", kept at its own min {fmt(minimum)}" if minimum > _ZERO else ""
    if package is not None and donor.take < donor.spare:
        return (
            f"donor {name} spare {fmt(donor.spare)} rounded down to whole packages of "
            f"{fmt(package)}{kept}{earlier}"
        )
    return f"donor {name} gave all its spare {fmt(donor.spare)}{kept}{earlier}"


def _deficit_reason(item: Item, maximum: Decimal | None, head: str, deficit: DeficitFacts) -> str:
    """What is needed, who gives what, who gives less than asked and why, and what goes to
    МойСклад or stays unmapped."""
    package = deficit.package_size
    parts = [f"{head}, {_need_clause(maximum, deficit)}"]
    given = [f"{fmt(d.take)} from {d.warehouse.name}" for d in deficit.donors if d.take]
    if given:
        parts.append("takes " + ", ".join(given))
    parts.extend(_shortfall(d, package) for d in deficit.donors if d.asked and d.take < d.asked)
    if deficit.external:
        ordered = f"orders {fmt(deficit.external)} from МойСклад"
        if package is not None:
            ordered += f" ({_packages(deficit.external, package)})"
        parts.append(ordered)
    if deficit.unmapped:
        match_key = deficit.match_key
        value = match_value(item, match_key)
        why = (
            f"no МойСклад product with {match_key} {value}"
            if value
            else f"the item has no {match_key} to find a МойСклад product by"
        )
        parts.append(f"{fmt(deficit.unmapped)} unmapped: {why}")
    return "; ".join(parts)
