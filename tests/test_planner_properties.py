"""Property-based tests of the replenishment planner (hypothesis).

Each test states one invariant of DESIGN §1.1 and checks it on small random worlds: a handful of
items (some with equal codes), up to three targets each with its own ordered donors drawn from a
shared pool (so donors are shared between targets), random norms with and without max and
packaging (whole and fractional package sizes), free stock that may be negative or fractional,
incoming stock, partial product mapping and a small position limit. Expected values are computed
here from the inputs, independently of the planner's bookkeeping.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.model import EMPTY_GUID, Item, Norm, Product, Warehouse
from daemon.replenishment.plan import ItemDecision, ReplenishmentPlan, TargetPlan
from daemon.replenishment.planner import (
    PlanningInputs,
    TargetInputs,
    plan_replenishment,
    with_products,
)

D = Decimal
ZERO = D(0)
POOL = tuple(Warehouse(key=f"wh-{n}", name=f"Склад {n}") for n in range(4))
K = TypeVar("K")
V = TypeVar("V")

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


def quantities(low: int, high: int) -> st.SearchStrategy[Decimal]:
    """Decimals in quarters between low and high (exact, and not always whole packages)."""
    return st.integers(low * 4, high * 4).map(lambda n: D(n) / 4)


@st.composite
def norms(draw: st.DrawFn) -> Norm:
    minimum = draw(quantities(0, 20))
    maximum = draw(st.none() | quantities(0, 40))
    package = draw(st.sampled_from([None, None, D(1), D(6), D("0.5"), D("2.5")]))
    return Norm(
        minimum=minimum,
        maximum=maximum,
        package_key=None if package is None else f"pkg-{package}",
        package_size=package,
    )


@st.composite
def worlds(draw: st.DrawFn) -> PlanningInputs:
    item_count = draw(st.integers(1, 6))
    items = {
        f"i{n}": Item(
            key=f"i{n}",
            code=draw(st.sampled_from(["A", "B", "C", "D"])),
            article=draw(st.sampled_from(["", f"ART-{n}"])),
            name=f"Товар {n}",
        )
        for n in range(item_count)
    }
    target_whs = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=3, unique=True))
    targets = []
    for target in target_whs:
        others = [w for w in POOL if w != target]
        donors = draw(st.lists(st.sampled_from(others), max_size=3, unique=True))
        incoming = {
            key: draw(quantities(0, 10))
            for key in items
            if draw(st.booleans()) and draw(st.booleans())
        }
        targets.append(TargetInputs(target=target, donors=tuple(donors), incoming=incoming))
    norm_map: dict[tuple[str, str], Norm] = {}
    free: dict[tuple[str, str], Decimal] = {}
    for key in items:
        for warehouse in POOL:
            if draw(st.integers(0, 3)):
                norm_map[(key, warehouse.key)] = draw(norms())
            if draw(st.integers(0, 3)):
                free[(key, warehouse.key)] = draw(quantities(-5, 30))
    products = {
        key: Product(id=f"p-{key}", name=key, match_value=key, price_kopecks=D(n * 100))
        for n, key in enumerate(items)
        if draw(st.integers(0, 3))
    }
    return PlanningInputs(
        targets=tuple(targets),
        items=items,
        norms=norm_map,
        free_stock=free,
        products=products,
        match_key=draw(st.sampled_from(["article", "code", "externalCode"])),
        max_positions_per_order=draw(st.integers(1, 4)),
    )


@dataclass(frozen=True)
class Row:
    """One deficit decision with its target, for the checks below."""

    target: TargetPlan
    decision: ItemDecision


def deficit_rows(plan: ReplenishmentPlan) -> Iterator[Row]:
    for target in plan.targets:
        for decision in target.decisions:
            if decision.deficit is not None:
                yield Row(target, decision)


def package_of(norm: Norm | None) -> Decimal | None:
    if norm is None or norm.package_size is None or norm.package_size <= 0:
        return None
    return norm.package_size


def floor_to(quantity: Decimal, package: Decimal | None) -> Decimal:
    return quantity if package is None else (quantity // package) * package


def own_min(inputs: PlanningInputs, item_key: str, warehouse_key: str) -> Decimal:
    norm = inputs.norms.get((item_key, warehouse_key))
    return ZERO if norm is None else norm.minimum


def transfer_totals(plan: ReplenishmentPlan) -> dict[tuple[str, str], Decimal]:
    """(item key, donor key) → everything the plan moves out of that donor, over all targets."""
    totals: dict[tuple[str, str], Decimal] = {}
    for target in plan.targets:
        for order in target.transfers:
            for line in order.lines:
                pair = (line.item_key, order.donor.key)
                totals[pair] = totals.get(pair, ZERO) + line.quantity
    return totals


def shuffled(mapping: Mapping[K, V], rng: random.Random) -> dict[K, V]:
    pairs = list(mapping.items())
    rng.shuffle(pairs)
    return dict(pairs)


@PROPERTY_SETTINGS
@given(worlds())
def test_never_takes_more_than_a_donors_spare(inputs: PlanningInputs) -> None:
    """Over all targets together, a donor gives at most max(0, its given free − its own min)."""
    plan = plan_replenishment(inputs)
    for (item_key, donor_key), moved in transfer_totals(plan).items():
        given_free = inputs.free_stock.get((item_key, donor_key), ZERO)
        spare = max(ZERO, given_free - own_min(inputs, item_key, donor_key))
        assert ZERO < moved <= spare
    for row in deficit_rows(plan):
        assert row.decision.deficit is not None
        for donor in row.decision.deficit.donors:
            assert ZERO <= donor.take <= donor.spare


@PROPERTY_SETTINGS
@given(worlds())
def test_never_orders_an_item_at_or_above_its_minimum(inputs: PlanningInputs) -> None:
    """Items without a norm or with free + incoming ≥ min get no line of any kind."""
    plan = plan_replenishment(inputs)
    for target_inputs, target in zip(inputs.targets, plan.targets, strict=True):
        covered = set()
        for key in inputs.items:
            norm = inputs.norms.get((key, target_inputs.target.key))
            free = inputs.free_stock.get((key, target_inputs.target.key), ZERO)
            incoming = target_inputs.incoming.get(key, ZERO)
            if norm is None or free + incoming >= norm.minimum:
                covered.add(key)
        ordered = {line.item_key for order in target.transfers for line in order.lines}
        ordered |= {line.item_key for order in target.external_orders for line in order.lines}
        ordered |= {u.item.key for u in target.unmapped}
        assert not covered & ordered
        below = {d.item.key for d in target.decisions if d.deficit is not None}
        assert below == set(inputs.items) - covered


@PROPERTY_SETTINGS
@given(worlds())
def test_every_unit_of_need_is_accounted_exactly_once(inputs: PlanningInputs) -> None:
    """takes + external + unmapped == need rounded up to packages, need is computed from the
    inputs, and the document lines carry exactly the decided quantities."""
    plan = plan_replenishment(inputs)
    targets = {t.target.key: t for t in inputs.targets}
    for row in deficit_rows(plan):
        decision, deficit = row.decision, row.decision.deficit
        assert deficit is not None and decision.norm is not None
        key, target_key = decision.item.key, row.target.target.key
        norm = decision.norm
        level = norm.minimum
        if norm.maximum is not None and norm.maximum >= norm.minimum:
            level = norm.maximum
        free = inputs.free_stock.get((key, target_key), ZERO)
        incoming = targets[target_key].incoming.get(key, ZERO)
        assert deficit.need == level - free - incoming > ZERO
        package = package_of(norm)
        if package is None:
            assert deficit.need_rounded == deficit.need
        else:
            assert deficit.need <= deficit.need_rounded < deficit.need + package
        assert deficit.transferred + deficit.external + deficit.unmapped == deficit.need_rounded
        assert not (deficit.external and deficit.unmapped)
        assert (deficit.external > ZERO) <= (key in inputs.products)
        assert (deficit.unmapped > ZERO) <= (key not in inputs.products)

        lines = {
            order.donor.key: line.quantity
            for order in row.target.transfers
            for line in order.lines
            if line.item_key == key
        }
        assert lines == {d.warehouse.key: d.take for d in deficit.donors if d.take}
        external = [
            line.quantity
            for order in row.target.external_orders
            for line in order.lines
            if line.item_key == key
        ]
        assert external == ([deficit.external] if deficit.external else [])
        unmapped = [u.quantity for u in row.target.unmapped if u.item.key == key]
        assert unmapped == ([deficit.unmapped] if deficit.unmapped else [])


@PROPERTY_SETTINGS
@given(worlds())
def test_packaged_quantities_are_whole_packages(inputs: PlanningInputs) -> None:
    """With an order packaging every take, external and unmapped quantity is a whole number of
    packages, and transfer lines state that number and the package."""
    plan = plan_replenishment(inputs)
    for row in deficit_rows(plan):
        deficit = row.decision.deficit
        assert deficit is not None
        package = package_of(row.decision.norm)
        if package is None:
            continue
        quantities = [d.take for d in deficit.donors] + [deficit.external, deficit.unmapped]
        assert all(q % package == 0 for q in quantities)
        assert deficit.need_rounded % package == 0
    for target in plan.targets:
        for order in target.transfers:
            for line in order.lines:
                norm = inputs.norms[(line.item_key, target.target.key)]
                package = package_of(norm)
                if package is None:
                    assert (line.packages, line.package_key) == (line.quantity, EMPTY_GUID)
                else:
                    assert line.packages == line.packages.to_integral_value() > 0
                    assert line.packages * package == line.quantity
                    assert line.package_key == norm.package_key


@PROPERTY_SETTINGS
@given(worlds())
def test_donor_priority_is_respected(inputs: PlanningInputs) -> None:
    """A donor gives only once every earlier donor gave all of its usable spare, where the spare
    is computed from the inputs minus what earlier targets moved out of that donor."""
    plan = plan_replenishment(inputs)
    moved: dict[tuple[str, str], Decimal] = {}
    for target in plan.targets:
        for decision in target.decisions:
            deficit = decision.deficit
            if deficit is None:
                continue
            package = package_of(decision.norm)
            key = decision.item.key
            open_need = deficit.need_rounded
            for index, donor in enumerate(deficit.donors):
                pair = (key, donor.warehouse.key)
                free = inputs.free_stock.get(pair, ZERO) - moved.get(pair, ZERO)
                spare = max(ZERO, free - own_min(inputs, key, donor.warehouse.key))
                assert donor.spare == spare
                assert donor.asked == open_need
                assert donor.take == min(open_need, floor_to(spare, package))
                if donor.take:
                    assert all(
                        earlier.take == floor_to(earlier.spare, package)
                        for earlier in deficit.donors[:index]
                    )
                open_need -= donor.take
        for order in target.transfers:
            for line in order.lines:
                pair = (line.item_key, order.donor.key)
                moved[pair] = moved.get(pair, ZERO) + line.quantity


@PROPERTY_SETTINGS
@given(worlds(), st.randoms(use_true_random=False))
def test_plan_is_deterministic_and_ignores_input_order(
    inputs: PlanningInputs, rng: random.Random
) -> None:
    """The same inputs give equal plans, also when every input mapping is built in another
    order; the stored form (with reasons) is equal too."""
    plan = plan_replenishment(inputs)
    assert plan_replenishment(inputs) == plan
    reordered = PlanningInputs(
        targets=tuple(
            TargetInputs(t.target, t.donors, shuffled(t.incoming, rng)) for t in inputs.targets
        ),
        items=shuffled(inputs.items, rng),
        norms=shuffled(inputs.norms, rng),
        free_stock=shuffled(inputs.free_stock, rng),
        products=shuffled(inputs.products, rng),
        match_key=inputs.match_key,
        max_positions_per_order=inputs.max_positions_per_order,
    )
    again = plan_replenishment(reordered)
    assert again == plan
    assert again.to_dict() == plan.to_dict()


@PROPERTY_SETTINGS
@given(worlds())
def test_orders_are_split_within_the_position_limit(inputs: PlanningInputs) -> None:
    """МойСклад orders have at most max_positions_per_order lines, as few orders as possible,
    numbered 1..n, and together hold every external line once in item order."""
    plan = plan_replenishment(inputs)
    limit = inputs.max_positions_per_order
    for target in plan.targets:
        orders = target.external_orders
        lines = [line for order in orders for line in order.lines]
        assert all(0 < len(order.lines) <= limit for order in orders)
        assert len(orders) == -(-len(lines) // limit)
        assert [(o.part, o.parts) for o in orders] == [
            (n + 1, len(orders)) for n in range(len(orders))
        ]
        external_keys = [d.item.key for d in target.decisions if d.deficit and d.deficit.external]
        assert [line.item_key for line in lines] == external_keys


@PROPERTY_SETTINGS
@given(worlds())
def test_every_item_gets_one_decision_in_item_order(inputs: PlanningInputs) -> None:
    """Each target has one decision per item, sorted by (code, key), with a code that matches
    its quantities and a non-empty reason."""
    plan = plan_replenishment(inputs)
    expected = sorted(inputs.items.values(), key=lambda item: (item.code, item.key))
    for target in plan.targets:
        assert [d.item for d in target.decisions] == expected
        for decision in target.decisions:
            deficit = decision.deficit
            assert decision.reason
            if deficit is None:
                assert decision.decision == ("no_norm" if decision.norm is None else "ok")
                continue
            gave = deficit.transferred > 0
            if deficit.external:
                code = "transfer_and_external" if gave else "external"
            elif deficit.unmapped:
                code = "transfer_and_unmapped" if gave else "unmapped"
            else:
                code = "transfer"
            assert decision.decision == code


@PROPERTY_SETTINGS
@given(worlds())
def test_products_added_after_planning_give_exactly_the_plan_made_with_them(
    inputs: PlanningInputs,
) -> None:
    """Planning with no products and adding them afterwards (what a run does while МойСклад is
    still being read) gives the very plan made with the products: decisions, reasons, lines,
    split orders, unmapped items and counts."""
    without = plan_replenishment(replace(inputs, products={}))
    assert with_products(without, inputs.products) == plan_replenishment(inputs)
