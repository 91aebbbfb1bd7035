"""The replenishment cases of the demo data set, one builder each.

A builder returns how one item is set up — its norms per warehouse role, its stock per role —
and, written down from those numbers, what a correct run decides for it (DESIGN.md §1.1, with
nothing incoming). ``variant`` (0–3) varies the numbers so each case is seen on several items.
Roles: ``target`` (the shop), ``donor1``/``donor2`` (in priority order), ``junk`` (a warehouse
that must never be used).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

MINMAX = "ПоддержаниеЗапасаМинМакс"

CASES = (
    "no_deficit",
    "covered_by_first",
    "covered_by_second",
    "split",
    "partly_external",
    "all_external",
    "donor_protected",
    "reserved",
    "no_norm",
    "inactive_norm",
    "other_method",
    "packaging",
    "unmapped",
    "group_norm",
    "detailed_over_group",
    "min_only",
)

T, D1, D2, JUNK = "target", "donor1", "donor2", "junk"


@dataclass(slots=True)
class CaseNorm:
    minimum: int
    maximum: int = 0
    package: int = 0  # units per order package; 0 = none
    active: bool = True
    method: str = MINMAX
    group: str = ""  # name of the norm group the item belongs to on that warehouse
    detailed: bool = True  # a detailed row exists (False: only the group membership row)


@dataclass(slots=True)
class Case:
    name: str
    norms: dict[str, CaseNorm] = field(default_factory=dict)  # role → norm
    stock: dict[str, tuple[int, int]] = field(default_factory=dict)  # role → (ВНаличии, КОтгрузке)
    takes: dict[str, int] = field(default_factory=dict)  # role → quantity
    outside: int = 0  # quantity needed from outside MoySklad-or-unmapped
    mapped: bool = True
    empty_article: bool = False


# Group settings: (name, min, max, method). Group rows have no item and no warehouse.
GROUPS = (("Ходовые", 10, 20, MINMAX), ("Под заказ", 10, 20, "ЗаказПодЗаказ"))


def _no_deficit(v: int) -> Case:
    # v == 0: free stock equals the minimum exactly (not below it: no deficit).
    return Case("no_deficit", {T: CaseNorm(5 + v, 12 + v)}, {T: (5 + 2 * v, 0), D1: (10, 0)})


def _covered_by_first(v: int) -> Case:
    # need = 20+v − (3+v) = 17; Бестужевых spare = (24+v) − 2 = 22+v ≥ 17.
    return Case(
        "covered_by_first",
        {T: CaseNorm(10, 20 + v), D1: CaseNorm(2)},
        {T: (3 + v, 0), D1: (24 + v, 0), D2: (30, 0)},
        takes={D1: 17},
    )


def _covered_by_second(v: int) -> Case:
    # need = 16 − (2+v); Бестужевых holds 4 or 3 against its own minimum 4: spare 0.
    return Case(
        "covered_by_second",
        {T: CaseNorm(8, 16), D1: CaseNorm(4)},
        {T: (2 + v, 0), D1: (4 - v % 2, 0), D2: (20, 0)},
        takes={D2: 14 - v},
    )


def _split(v: int) -> Case:
    # need = 25 − 5 = 20; Бестужевых spare = 10+v − 3 = 7+v; Контейнер gives the rest.
    return Case(
        "split",
        {T: CaseNorm(10, 25), D1: CaseNorm(3)},
        {T: (5, 0), D1: (10 + v, 0), D2: (40, 0)},
        takes={D1: 7 + v, D2: 13 - v},
    )


def _partly_external(v: int) -> Case:
    # need = 15; Бестужевых spare 4 (no norm); Контейнер spare 5+v − 2 = 3+v; rest outside.
    return Case(
        "partly_external",
        {T: CaseNorm(10, 20), D2: CaseNorm(2)},
        {T: (5, 0), D1: (4, 0), D2: (5 + v, 0)},
        takes={D1: 4, D2: 3 + v},
        outside=8 - v,
    )


def _all_external(v: int) -> Case:
    # Donors hold nothing; the unrelated warehouse holds plenty and must not be used.
    return Case(
        "all_external",
        {T: CaseNorm(6 + v, 12 + v)},
        {T: (1, 0), JUNK: (50, 0)},
        outside=11 + v,
    )


def _donor_protected(v: int) -> Case:
    # need = 15; Бестужевых holds exactly its minimum, Контейнер less than its minimum.
    return Case(
        "donor_protected",
        {T: CaseNorm(10, 15), D1: CaseNorm(10), D2: CaseNorm(5)},
        {T: (0, 0), D1: (10, 0), D2: (3 + v % 3, 0)},
        outside=15,
    )


def _reserved(v: int) -> Case:
    # On hand 12+v ≥ min 6, but 8+v reserved: free 4 < 6, need 10 − 4 = 6.
    # Бестужевых: 20 on hand, 12 reserved, min 2 → spare 6.
    return Case(
        "reserved",
        {T: CaseNorm(6, 10), D1: CaseNorm(2)},
        {T: (12 + v, 8 + v), D1: (20, 12), D2: (30, 0)},
        takes={D1: 6},
    )


def _no_norm(v: int) -> Case:
    return Case("no_norm", {}, {T: (v, 0), D1: (50, 0)})


def _inactive_norm(v: int) -> Case:
    return Case("inactive_norm", {T: CaseNorm(10, 20, active=False)}, {T: (v, 0), D1: (50, 0)})


def _other_method(v: int) -> Case:
    if v == 3:  # member of a group whose setting is not min-max
        norm = CaseNorm(1, 2, group="Под заказ", detailed=False)
    else:
        norm = CaseNorm(
            10, 20, method="ПоддержаниеЗапасаНаСрокПоНорме" if v % 2 else "ЗаказПодЗаказ"
        )
    return Case("other_method", {T: norm}, {T: (0, 0), D1: (50, 0)})


def _packaging(v: int) -> Case:
    # Donor takes round down to whole packages, the outside quantity rounds up.
    if v == 0:  # box of 6: need 25; Бестужевых 14 → 12; Контейнер 4 → 0; 13 → 18 outside
        return Case(
            "packaging",
            {T: CaseNorm(12, 30, package=6)},
            {T: (5, 0), D1: (14, 0), D2: (4, 0)},
            takes={D1: 12},
            outside=18,
        )
    if v == 1:  # pack of 4: need 25; Бестужевых 14 → 12; Контейнер 4 → 4; 9 → 12 outside
        return Case(
            "packaging",
            {T: CaseNorm(12, 30, package=4)},
            {T: (5, 0), D1: (14, 0), D2: (4, 0)},
            takes={D1: 12, D2: 4},
            outside=12,
        )
    if v == 2:  # box of 6: need 24 = 4 boxes, Бестужевых covers it whole
        return Case(
            "packaging",
            {T: CaseNorm(12, 30, package=6)},
            {T: (6, 0), D1: (30, 0)},
            takes={D1: 24},
        )
    # pack of 4, nothing spare: need 25 → 28 outside
    return Case("packaging", {T: CaseNorm(12, 30, package=4)}, {T: (5, 0)}, outside=28)


def _unmapped(v: int) -> Case:
    # need = 14 − 2 = 12; odd variants get 5 from Бестужевых first.
    stock = {T: (2, 0), D1: (5, 0)} if v % 2 else {T: (2, 0)}
    takes = {D1: 5} if v % 2 else {}
    return Case(
        "unmapped",
        {T: CaseNorm(8, 14)},
        stock,
        takes=takes,
        outside=7 if v % 2 else 12,
        mapped=False,
        empty_article=v % 2 == 0,
    )


def _group_norm(v: int) -> Case:
    # Only a membership row (its own numbers 1/2 must lose to the group's 10/20).
    norms = {T: CaseNorm(1, 2, group="Ходовые", detailed=False)}
    if v == 2:
        # Бестужевых is a member too: its minimum 10 protects 10 of its 18; Контейнер the rest.
        norms[D1] = CaseNorm(1, 2, group="Ходовые", detailed=False)
        return Case(
            "group_norm", norms, {T: (6, 0), D1: (18, 0), D2: (40, 0)}, takes={D1: 8, D2: 6}
        )
    return Case("group_norm", norms, {T: (4 + v, 0), D1: (40, 0)}, takes={D1: 16 - v})


def _detailed_over_group(v: int) -> Case:
    # Detailed 5/8 wins over the group's 10/20: need 8 − 3 = 5 (the group would say 17).
    return Case(
        "detailed_over_group",
        {T: CaseNorm(5, 8, group="Ходовые")},
        {T: (3, 0), D1: (40, 0)},
        takes={D1: 5},
    )


def _min_only(v: int) -> Case:
    # No maximum: the target level is the minimum, need 10 − 4 = 6.
    return Case("min_only", {T: CaseNorm(10)}, {T: (4, 0), D1: (30, 0)}, takes={D1: 6})


BUILDERS: dict[str, Callable[[int], Case]] = {
    "no_deficit": _no_deficit,
    "covered_by_first": _covered_by_first,
    "covered_by_second": _covered_by_second,
    "split": _split,
    "partly_external": _partly_external,
    "all_external": _all_external,
    "donor_protected": _donor_protected,
    "reserved": _reserved,
    "no_norm": _no_norm,
    "inactive_norm": _inactive_norm,
    "other_method": _other_method,
    "packaging": _packaging,
    "unmapped": _unmapped,
    "group_norm": _group_norm,
    "detailed_over_group": _detailed_over_group,
    "min_only": _min_only,
}
