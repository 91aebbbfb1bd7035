"""Example tests of the replenishment planner: one per rule of DESIGN §1.1."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal

import pytest

from daemon.errors import RunFailedError
from daemon.model import EMPTY_GUID, Item, Norm, Product, Warehouse
from daemon.replenishment.plan import ItemDecision, ReplenishmentPlan, TargetPlan
from daemon.replenishment.planner import PlanningInputs, TargetInputs, plan_replenishment

D = Decimal
SHOP = Warehouse(key="wh-shop", name="Магазин")
SHOP2 = Warehouse(key="wh-shop2", name="Магазин 2")
BEST = Warehouse(key="wh-best", name="Бестужевых")
CONT = Warehouse(key="wh-cont", name="Контейнер")
ITEM = Item(key="item-a", code="УТ-00000001", article="ART-1", name="Кабель")
PRODUCT = Product(id="ms-a", name="Кабель", match_value="ART-1", price_kopecks=D(15000))


def plan_one(
    *,
    norm: Norm | None,
    free: Mapping[Warehouse, Decimal | int | str] | None = None,
    donor_norms: Mapping[Warehouse, Norm] | None = None,
    incoming: Decimal | int = 0,
    product: Product | None = PRODUCT,
    item: Item = ITEM,
    donors: tuple[Warehouse, ...] = (BEST, CONT),
    match_key: str = "article",
) -> tuple[TargetPlan, ItemDecision]:
    """Plan a single item for SHOP and return the target plan and the item's decision."""
    norms: dict[tuple[str, str], Norm] = {}
    if norm is not None:
        norms[(item.key, SHOP.key)] = norm
    for warehouse, donor_norm in (donor_norms or {}).items():
        norms[(item.key, warehouse.key)] = donor_norm
    inputs = PlanningInputs(
        targets=(TargetInputs(SHOP, donors, {item.key: D(incoming)} if incoming else {}),),
        items={item.key: item},
        norms=norms,
        free_stock={(item.key, w.key): D(q) for w, q in (free or {}).items()},
        products={item.key: product} if product is not None else {},
        match_key=match_key,
    )
    plan = plan_replenishment(inputs)
    target = plan.targets[0]
    return target, target.decisions[0]


def takes(decision: ItemDecision) -> dict[str, Decimal]:
    assert decision.deficit is not None
    return {d.warehouse.name: d.take for d in decision.deficit.donors}


def test_no_deficit_orders_nothing() -> None:
    """An item whose free stock is at or above its minimum is "ok" and produces no line."""
    target, decision = plan_one(norm=Norm(minimum=D(10)), free={SHOP: 12, BEST: 50})
    assert decision.decision == "ok"
    assert decision.deficit is None
    assert decision.reason == "at or above min 10: free 12 + incoming 0"
    assert target.transfers == () and target.external_orders == () and target.unmapped == ()


def test_first_donor_covers_the_need() -> None:
    """The first donor with enough spare covers the whole need; the second is not asked."""
    target, decision = plan_one(norm=Norm(minimum=D(10)), free={SHOP: 3, BEST: 20, CONT: 20})
    assert decision.decision == "transfer"
    assert takes(decision) == {"Бестужевых": D(7), "Контейнер": D(0)}
    assert decision.reason == "below min 10: free 3 + incoming 0, needs 7; takes 7 from Бестужевых"
    [order] = target.transfers
    assert (order.donor, order.target) == (BEST, SHOP)
    [line] = order.lines
    assert (line.item_key, line.quantity, line.packages, line.package_key) == (
        ITEM.key,
        D(7),
        D(7),
        EMPTY_GUID,
    )
    assert decision.deficit is not None and decision.deficit.donors[1].asked == 0
    assert target.external_orders == ()


def test_second_donor_covers_when_first_has_no_spare() -> None:
    """A first donor without free stock gives nothing and the reason says so."""
    target, decision = plan_one(norm=Norm(minimum=D(10)), free={SHOP: 3, BEST: 0, CONT: 20})
    assert takes(decision) == {"Бестужевых": D(0), "Контейнер": D(7)}
    assert [o.donor for o in target.transfers] == [CONT]
    assert "donor Бестужевых has no free stock (free 0)" in decision.reason


def test_need_split_across_both_donors() -> None:
    """When the first donor's spare is short the second gives the rest, in priority order."""
    target, decision = plan_one(norm=Norm(minimum=D(10)), free={SHOP: 3, BEST: 5, CONT: 10})
    assert takes(decision) == {"Бестужевых": D(5), "Контейнер": D(2)}
    assert decision.reason == (
        "below min 10: free 3 + incoming 0, needs 7; takes 5 from Бестужевых, 2 from Контейнер; "
        "donor Бестужевых gave all its spare 5"
    )
    assert [(o.donor, o.lines[0].quantity) for o in target.transfers] == [
        (BEST, D(5)),
        (CONT, D(2)),
    ]


def test_partly_external() -> None:
    """What the donors cannot cover goes to the МойСклад order at the product's price."""
    target, decision = plan_one(norm=Norm(minimum=D(10)), free={SHOP: 3, BEST: 2})
    assert decision.decision == "transfer_and_external"
    assert decision.deficit is not None and decision.deficit.external == D(5)
    [order] = target.external_orders
    [line] = order.lines
    assert (line.item_key, line.product, line.quantity, line.price_kopecks) == (
        ITEM.key,
        PRODUCT,
        D(5),
        D(15000),
    )
    assert decision.reason.endswith(
        "takes 2 from Бестужевых; donor Бестужевых gave all its spare 2; "
        "donor Контейнер has no free stock (free 0); orders 5 from МойСклад"
    )


def test_all_external_when_donors_are_empty() -> None:
    """With no donor stock the whole need is ordered from МойСклад."""
    target, decision = plan_one(norm=Norm(minimum=D(10)), free={SHOP: 3})
    assert decision.decision == "external"
    assert target.transfers == ()
    assert target.external_orders[0].lines[0].quantity == D(7)


def test_donor_protected_by_its_own_minimum() -> None:
    """A donor never goes below its own minimum for the item; the reason names that minimum."""
    target, decision = plan_one(
        norm=Norm(minimum=D(10)),
        free={SHOP: 3, BEST: 4, CONT: 6},
        donor_norms={BEST: Norm(minimum=D(4)), CONT: Norm(minimum=D(4))},
    )
    assert takes(decision) == {"Бестужевых": D(0), "Контейнер": D(2)}
    assert "donor Бестужевых kept at its own min 4 (free 4)" in decision.reason
    assert "donor Контейнер gave all its spare 2, kept at its own min 4" in decision.reason
    assert target.external_orders[0].lines[0].quantity == D(5)


def test_reserved_stock_makes_an_item_deficient() -> None:
    """Free stock is on hand minus reserved: 12 on hand with 5 reserved is below a min of 10."""
    on_hand, reserved = D(12), D(5)
    _, decision = plan_one(norm=Norm(minimum=D(10)), free={SHOP: on_hand - reserved, BEST: 20})
    assert decision.decision == "transfer"
    assert decision.deficit is not None and decision.deficit.need == D(3)


def test_item_without_norm_is_not_ordered() -> None:
    """An item without a target norm is recorded as "no norm" even with zero stock."""
    target, decision = plan_one(norm=None, free={SHOP: 0, BEST: 50})
    assert (decision.decision, decision.reason) == ("no_norm", "no norm")
    assert target.transfers == () and target.external_orders == () and target.unmapped == ()
    assert target.summary.no_norm == 1


def test_max_is_the_target_level() -> None:
    """With a max the item is filled up to the max, not just to the min."""
    _, decision = plan_one(norm=Norm(minimum=D(10), maximum=D(25)), free={SHOP: 3, BEST: 100})
    assert decision.deficit is not None
    assert (decision.deficit.target_level, decision.deficit.need) == (D(25), D(22))
    assert "needs 22 to max 25" in decision.reason


def test_max_below_min_is_ignored() -> None:
    """A max below the min cannot be a target level; the min is used and the reason says so."""
    _, decision = plan_one(norm=Norm(minimum=D(10), maximum=D(4)), free={SHOP: 3})
    assert decision.deficit is not None
    assert (decision.deficit.target_level, decision.deficit.need) == (D(10), D(7))
    assert "(max 4 is below min, ignored)" in decision.reason


def test_incoming_stock_prevents_a_reorder() -> None:
    """Stock already on its way counts: free 3 + incoming 7 meets a min of 10."""
    target, decision = plan_one(norm=Norm(minimum=D(10)), free={SHOP: 3, BEST: 50}, incoming=7)
    assert decision.decision == "ok"
    assert decision.reason == "at or above min 10: free 3 + incoming 7"
    assert target.transfers == ()


def test_incoming_stock_reduces_the_need() -> None:
    """Incoming below the gap orders only the rest."""
    _, decision = plan_one(norm=Norm(minimum=D(10)), free={SHOP: 3, BEST: 50}, incoming=4)
    assert decision.deficit is not None and decision.deficit.need == D(3)
    assert takes(decision)["Бестужевых"] == D(3)


def test_packaging_rounds_donor_down_and_external_up() -> None:
    """With packages of 6: need 7 becomes 12; a donor spare of 10 gives one package, the
    external order gets the other whole package."""
    norm = Norm(minimum=D(10), package_key="pkg-6", package_size=D(6))
    target, decision = plan_one(norm=norm, free={SHOP: 3, BEST: 10})
    deficit = decision.deficit
    assert deficit is not None
    assert (deficit.need, deficit.need_rounded) == (D(7), D(12))
    assert takes(decision) == {"Бестужевых": D(6), "Контейнер": D(0)}
    [line] = target.transfers[0].lines
    assert (line.quantity, line.packages, line.package_key) == (D(6), D(1), "pkg-6")
    assert target.external_orders[0].lines[0].quantity == D(6)
    assert deficit.transferred + deficit.external + deficit.unmapped == deficit.need_rounded
    assert "needs 7, 12 in whole packages of 6" in decision.reason
    assert "donor Бестужевых spare 10 rounded down to whole packages of 6" in decision.reason
    assert "orders 6 from МойСклад (1 package of 6)" in decision.reason


def test_packaging_spare_under_one_package_gives_nothing() -> None:
    """A donor spare smaller than one package gives nothing; everything goes out in packages."""
    norm = Norm(minimum=D(10), package_key="pkg-6", package_size=D(6))
    target, decision = plan_one(norm=norm, free={SHOP: 3, BEST: 5})
    assert takes(decision)["Бестужевых"] == D(0)
    assert target.transfers == ()
    assert target.external_orders[0].lines[0].quantity == D(12)
    assert "orders 12 from МойСклад (2 packages of 6)" in decision.reason


def test_packaging_donor_take_is_bounded_by_the_rounded_need() -> None:
    """A large donor gives the need rounded up to whole packages, not more."""
    norm = Norm(minimum=D(10), package_key="pkg-6", package_size=D(6))
    target, _ = plan_one(norm=norm, free={SHOP: 3, BEST: 100})
    [line] = target.transfers[0].lines
    assert (line.quantity, line.packages) == (D(12), D(2))
    assert target.external_orders == ()


def test_fractional_packaging_and_need_stay_exact() -> None:
    """Packages of 0.5 round a need of 1.2 up to 1.5; without packaging 1.5 stays 1.5."""
    packed = Norm(minimum=D(4), package_key="pkg-half", package_size=D("0.5"))
    _, decision = plan_one(norm=packed, free={SHOP: D("2.8")})
    assert decision.deficit is not None
    assert (decision.deficit.need, decision.deficit.need_rounded) == (D("1.2"), D("1.5"))
    _, loose = plan_one(norm=Norm(minimum=D(4)), free={SHOP: D("2.5")})
    assert loose.deficit is not None and loose.deficit.external == D("1.5")


def test_unmapped_item_is_reported_not_dropped() -> None:
    """Need no donor covers for an item without a МойСклад product is reported as unmapped."""
    target, decision = plan_one(norm=Norm(minimum=D(10)), free={SHOP: 3, BEST: 2}, product=None)
    assert decision.decision == "transfer_and_unmapped"
    [unmapped] = target.unmapped
    assert (unmapped.item, unmapped.quantity, unmapped.match_value) == (ITEM, D(5), "ART-1")
    assert target.external_orders == ()
    assert decision.reason.endswith("5 unmapped: no МойСклад product with article ART-1")


def test_unmapped_reason_uses_the_match_key() -> None:
    """The unmapped reason names the configured match key, or says the item has no value."""
    _, by_code = plan_one(norm=Norm(minimum=D(1)), product=None, match_key="code")
    assert by_code.decision == "unmapped"
    assert by_code.reason.endswith("no МойСклад product with code УТ-00000001")
    no_article = Item(key="item-b", code="УТ-2", article="", name="Без артикула")
    _, bare = plan_one(norm=Norm(minimum=D(1)), product=None, item=no_article)
    assert bare.reason.endswith("1 unmapped: the item has no article to find a МойСклад product by")


def test_negative_free_stock_is_taken_as_given() -> None:
    """Negative free stock raises the target's need and gives a donor no spare."""
    _, decision = plan_one(norm=Norm(minimum=D(3)), free={SHOP: -2, BEST: -4})
    assert decision.deficit is not None and decision.deficit.need == D(5)
    assert decision.deficit.donors[0].spare == D(0)
    assert "donor Бестужевых has no free stock (free -4)" in decision.reason


def _two_target_inputs(donor_free: int) -> PlanningInputs:
    key = ITEM.key
    return PlanningInputs(
        targets=(TargetInputs(SHOP, (BEST,)), TargetInputs(SHOP2, (BEST,))),
        items={key: ITEM},
        norms={
            (key, SHOP.key): Norm(minimum=D(5)),
            (key, SHOP2.key): Norm(minimum=D(5)),
            (key, BEST.key): Norm(minimum=D(2)),
        },
        free_stock={(key, BEST.key): D(donor_free)},
        products={key: PRODUCT},
    )


def test_donor_spare_is_shared_between_targets_in_order() -> None:
    """A later target only gets what an earlier target left of a donor's spare."""
    plan = plan_replenishment(_two_target_inputs(donor_free=10))
    first, second = plan.targets
    assert first.transfers[0].lines[0].quantity == D(5)
    assert second.transfers[0].lines[0].quantity == D(3)
    assert second.external_orders[0].lines[0].quantity == D(2)
    decision = second.decisions[0]
    assert decision.deficit is not None
    assert (decision.deficit.donors[0].free, decision.deficit.donors[0].taken_earlier) == (
        D(5),
        D(5),
    )
    assert "donor Бестужевых gave all its spare 3, kept at its own min 2 after 5 taken" in (
        decision.reason
    )


def test_exhausted_donor_gives_nothing_to_a_later_target() -> None:
    """Once an earlier target took a donor down to its minimum, the next target gets nothing."""
    plan = plan_replenishment(_two_target_inputs(donor_free=7))
    assert plan.targets[0].transfers[0].lines[0].quantity == D(5)
    assert plan.targets[1].transfers == ()
    assert "donor Бестужевых kept at its own min 2 (free 2 after 5 taken for earlier targets)" in (
        plan.targets[1].decisions[0].reason
    )


def _many_items_inputs(count: int, max_positions: int = 1000) -> PlanningInputs:
    items = {
        f"k{n:05d}": Item(key=f"k{n:05d}", code=f"C{count - n:05d}", article=f"A{n}", name="x")
        for n in range(count)
    }
    return PlanningInputs(
        targets=(TargetInputs(SHOP, ()),),
        items=items,
        norms={(key, SHOP.key): Norm(minimum=D(1)) for key in items},
        free_stock={},
        products={key: Product(id=f"p-{key}", name="x", match_value="") for key in items},
        max_positions_per_order=max_positions,
    )


def test_external_order_is_split_at_1000_positions() -> None:
    """2,500 external lines become orders of 1000, 1000 and 500 lines, cut in item-code order."""
    plan = plan_replenishment(_many_items_inputs(2500))
    orders = plan.targets[0].external_orders
    assert [len(o.lines) for o in orders] == [1000, 1000, 500]
    assert [(o.part, o.parts) for o in orders] == [(1, 3), (2, 3), (3, 3)]
    keys = [line.item_key for o in orders for line in o.lines]
    assert keys == [f"k{n:05d}" for n in reversed(range(2500))]
    assert plan.targets[0].summary.external_orders == 3


def test_exactly_1000_positions_make_one_order() -> None:
    """1,000 lines fit in a single order; one more line starts a second one."""
    assert len(plan_replenishment(_many_items_inputs(1000)).targets[0].external_orders) == 1
    assert len(plan_replenishment(_many_items_inputs(1001)).targets[0].external_orders) == 2


def test_decisions_are_in_code_then_key_order() -> None:
    """Decisions follow item code, and item key among equal codes, whatever the input order."""
    items = [
        Item(key="z", code="B", article="", name=""),
        Item(key="y", code="A", article="", name=""),
        Item(key="x", code="B", article="", name=""),
    ]
    inputs = PlanningInputs(
        targets=(TargetInputs(SHOP, ()),),
        items={i.key: i for i in items},
        norms={},
        free_stock={},
        products={},
    )
    decisions = plan_replenishment(inputs).targets[0].decisions
    assert [d.item.key for d in decisions] == ["y", "x", "z"]


def test_summary_counts() -> None:
    """The summary counts items by outcome and transfer lines per donor."""
    items = {n: Item(key=n, code=n, article=n, name=n) for n in ("a", "b", "c", "d", "e")}
    inputs = PlanningInputs(
        targets=(TargetInputs(SHOP, (BEST, CONT)),),
        items=items,
        norms={(k, SHOP.key): Norm(minimum=D(5)) for k in ("b", "c", "d", "e")},
        free_stock={("b", SHOP.key): D(9), ("c", BEST.key): D(2), ("d", CONT.key): D(9)},
        products={"c": PRODUCT},
    )
    plan = plan_replenishment(inputs)
    summary = plan.targets[0].summary
    assert (summary.items, summary.no_norm, summary.ok, summary.below_min) == (5, 1, 1, 3)
    assert summary.transfer_lines == (("Бестужевых", 1), ("Контейнер", 1))
    assert (summary.external_lines, summary.external_orders, summary.unmapped) == (1, 1, 1)
    assert plan.counts()["transfer_lines"] == 2 and plan.counts()["transfer_orders"] == 2


def test_to_dict_is_json_safe_and_exact() -> None:
    """The stored form is plain JSON with quantities as exact decimal strings."""
    norm = Norm(minimum=D("10.5"), package_key="pkg", package_size=D(2))
    target, decision = plan_one(norm=norm, free={SHOP: D("3.25"), BEST: D(4)})
    plan = ReplenishmentPlan(targets=(target,), match_key="article", max_positions_per_order=1000)
    data = json.loads(json.dumps(plan.to_dict()))
    stored = data["targets"][0]["decisions"][0]
    assert stored["decision"] == decision.decision == "transfer_and_external"
    assert stored["reason"] == decision.reason
    detail = stored["detail"]
    assert D(detail["target_free"]) == D("3.25")
    assert D(detail["deficit"]["need"]) == D("7.25")
    assert D(detail["deficit"]["need_rounded"]) == D(8)
    assert detail["deficit"]["donors"][0]["warehouse"]["name"] == "Бестужевых"
    assert data["targets"][0]["transfers"][0]["lines"][0]["packages"] == "2"
    assert data["counts"]["below_min"] == 1


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ((TargetInputs(SHOP, (BEST, SHOP)),), "Магазин is listed as its own donor"),
        ((TargetInputs(SHOP, (BEST, BEST)),), "donor Бестужевых is listed twice"),
        ((TargetInputs(SHOP, (BEST,)), TargetInputs(SHOP, (CONT,))), "target Магазин is listed"),
    ],
)
def test_inconsistent_targets_fail_the_run(targets: tuple[TargetInputs, ...], message: str) -> None:
    """A target as its own donor, a repeated donor or a repeated target is refused."""
    inputs = PlanningInputs(targets=targets, items={}, norms={}, free_stock={}, products={})
    with pytest.raises(RunFailedError, match=message):
        plan_replenishment(inputs)


def test_position_limit_below_one_fails_the_run() -> None:
    """A per-order position limit below 1 cannot split anything and is refused."""
    inputs = PlanningInputs(
        targets=(), items={}, norms={}, free_stock={}, products={}, max_positions_per_order=0
    )
    with pytest.raises(RunFailedError, match="max_positions_per_order"):
        plan_replenishment(inputs)


def test_quantity_beyond_exact_arithmetic_fails_the_run() -> None:
    """A quantity whose arithmetic would have to round fails the run instead of ordering a
    silently rounded amount."""
    huge = D("1" + "0" * 40 + ".5")
    with pytest.raises(RunFailedError, match="exact decimal arithmetic"):
        plan_one(norm=Norm(minimum=huge), free={SHOP: D("0.25")})
