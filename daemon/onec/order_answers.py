"""What 1C's answers about one «Заказ на перемещение» say, read without trusting their shape.

Three kinds of answer describe an order: the create answer, a lookup (by ``Ref_Key`` or by the
marker in ``Комментарий``) and the re-read after posting. ``order_state`` and ``stored_order``
return the facts the delivery needs, or a sentence saying what is wrong with the answer. The
delivery (``daemon.onec.transfers``) decides what that costs: an unusable create answer sends
it to look the order up, an unusable lookup or re-read is ``OutcomeUnknownError`` (the order
may exist, so the retry looks again), and only well-formed facts that differ from what was
sent fail verification.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from daemon.model import TransferOrderDocument
from daemon.onec.answers import field_shape, flag, quantity, shape, text, valid_key
from daemon.onec.metadata import SUPPLY

# Reference §2.4: the order's Number is String(11), fixed length, numbered automatically. A
# customised base may use another length, so anything from 1 to 50 characters of text is taken;
# an empty, non-text or absurdly long value is not a number 1C gave.
NUMBER_MAX_LENGTH = 50
SENDER, RECEIVER = "СкладОтправитель_Key", "СкладПолучатель_Key"
ITEM, QUANTITY, PACKAGES = "Номенклатура_Key", "Количество", "КоличествоУпаковок"
SUPPLY_FIELD = "ВариантОбеспечения"


@dataclass(frozen=True, slots=True)
class OrderState:
    """An order as a create answer, a lookup or a re-read describes it."""

    ref_key: str
    number: str
    posted: bool
    deleted: bool

    @property
    def label(self) -> str:
        return f"transfer order {self.number.strip() or self.ref_key}"


@dataclass(frozen=True, slots=True)
class StoredOrder:
    """What a re-read says 1C stored: the state, the route, the totals per item and the supply
    options of the lines that show one."""

    state: OrderState
    sender: str
    receiver: str
    totals: dict[str, tuple[Decimal, Decimal]]  # item key (lower case) → (quantity, packages)
    supply_options: frozenset[str] = frozenset()


def order_state(answer: Any) -> OrderState | str:
    """The state an order answer (or a lookup row) describes, or what is wrong with it."""
    if not isinstance(answer, dict):
        return f"the answer is {shape(answer)}, not an object"
    ref_key = valid_key(answer.get("Ref_Key"))
    if ref_key is None:
        return f"Ref_Key is {field_shape(answer, 'Ref_Key')}, not a GUID"
    number = answer.get("Number")
    if not isinstance(number, str) or not 0 < len(number.strip()) <= NUMBER_MAX_LENGTH:
        shown = field_shape(answer, "Number")
        return f"Number is {shown}, not a document number (1 to {NUMBER_MAX_LENGTH} characters)"
    posted, deleted = flag(answer.get("Posted")), flag(answer.get("DeletionMark"))
    if posted is None:
        return f"Posted is {field_shape(answer, 'Posted')}, not true/false"
    if deleted is None:
        return f"DeletionMark is {field_shape(answer, 'DeletionMark')}, not true/false"
    return OrderState(ref_key, number, posted, deleted)


def stored_order(row: Any, lines: Any, ref_key: str) -> StoredOrder | str:
    """What the re-read of order ``ref_key`` says (``lines``: its Товары rows)."""
    state = order_state(row)
    if isinstance(state, str):
        return state
    if state.ref_key.lower() != ref_key.lower():
        return f"it describes order {state.ref_key}, not {ref_key}"
    sender, receiver = valid_key(row.get(SENDER)), valid_key(row.get(RECEIVER))
    if sender is None or receiver is None:
        name = SENDER if sender is None else RECEIVER
        return f"{name} is {field_shape(row, name)}, not a GUID"
    if not isinstance(lines, list):
        return f"the lines are {shape(lines)}, not a list"
    totals: dict[str, tuple[Decimal, Decimal]] = {}
    options: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not isinstance(line, dict):
            return f"line {number} is {shape(line)}, not an object"
        item = valid_key(line.get(ITEM))
        amount, packages = quantity(line.get(QUANTITY)), quantity(line.get(PACKAGES))
        if item is None:
            return f"line {number}: {ITEM} is {field_shape(line, ITEM)}, not a GUID"
        if amount is None or packages is None:
            name = QUANTITY if amount is None else PACKAGES
            return f"line {number} (item {item}): {name} is {field_shape(line, name)}"
        if SUPPLY_FIELD in line:
            option = text(line[SUPPLY_FIELD])
            if option is None:
                shown = field_shape(line, SUPPLY_FIELD)
                return f"line {number} (item {item}): {SUPPLY_FIELD} is {shown}, not text"
            options.add(option)
        had_amount, had_packages = totals.get(item.lower(), (Decimal(0), Decimal(0)))
        totals[item.lower()] = (had_amount + amount, had_packages + packages)
    return StoredOrder(state, sender, receiver, totals, frozenset(options))


def differences(doc: TransferOrderDocument, stored: StoredOrder) -> list[str]:
    """How the stored order differs from ``doc`` (empty when it is what the hub sent)."""
    problems = []
    if not stored.state.posted:
        problems.append("it is not posted")
    if stored.state.deleted:
        problems.append("it is marked for deletion")
    for field, kept, wanted in (
        (SENDER, stored.sender, doc.sender_key),
        (RECEIVER, stored.receiver, doc.receiver_key),
    ):
        if kept.lower() != wanted.lower():
            problems.append(f"{field} is {kept} instead of {wanted}")
    sent: dict[str, tuple[Decimal, Decimal]] = {}
    for line in doc.lines:
        quantity_sent, packages_sent = sent.get(line.item_key, (Decimal(0), Decimal(0)))
        sent[line.item_key] = (quantity_sent + line.quantity, packages_sent + line.packages)
    remaining = dict(stored.totals)
    for item_key, (amount, packages) in sent.items():
        got = remaining.pop(item_key.lower(), None)
        if got is None:
            problems.append(f"item {item_key} is missing")
        elif got != (amount, packages):
            problems.append(
                f"item {item_key}: {got[0]} ({got[1]} packages) instead of {amount} ({packages})"
            )
    problems += [f"unexpected item {key}" for key in remaining]
    # Lines stored with another supply option are not counted by UT as still to be moved, so
    # the next run would order them again.
    problems += [
        f"lines have {SUPPLY_FIELD} {option!r} instead of {SUPPLY!r}"
        for option in sorted(stored.supply_options - {SUPPLY})
    ]
    return problems
