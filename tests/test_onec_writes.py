"""Transfer orders through the connector: create, post, verify, idempotency, incoming, errors."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
import structlog
from pydantic import SecretStr

from daemon.errors import OutcomeUnknownError, PermanentError
from daemon.model import (
    EMPTY_GUID,
    TransferLine,
    TransferOrderDocument,
    deterministic_uuid,
)
from daemon.onec.connector import OneCConnector
from daemon.onec.order_answers import differences, stored_order
from daemon.onec.settings import OneCSettings
from daemon.sandbox.dataset import DemoDataset, StockRecord, build_demo_dataset
from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox
from tests.hostile import Replace, hostile
from tests.onec_support import connected

TARGET, FIRST, SECOND = "Магазин Центральный", "Бестужевых", "Контейнер"


@pytest.fixture
def dataset() -> DemoDataset:
    """The demo base with plenty of the two items ``order`` moves on every warehouse it moves
    them from, so UT's free-stock control on posting passes unless a test says otherwise."""
    data = build_demo_dataset(48, seed=9)
    for line in order(data).lines:
        for name in (FIRST, SECOND, TARGET):
            data.stock.append(StockRecord(line.item_key, data.warehouse_key(name), Decimal(100)))
    return data


def order(
    dataset: DemoDataset,
    key: str = "run-1/Бестужевых",
    sender: str = FIRST,
    receiver: str = TARGET,
    lines: tuple[TransferLine, ...] | None = None,
) -> TransferOrderDocument:
    packaged = next(p for p in dataset.packages if p.owner_key != EMPTY_GUID)
    plain = next(i for i in dataset.items if not i.is_folder and i.key != packaged.owner_key)
    default_lines = (
        TransferLine(item_key=plain.key, quantity=Decimal(7), packages=Decimal(7)),
        TransferLine(
            item_key=packaged.owner_key,
            quantity=Decimal(12),
            packages=Decimal(12) / packaged.numerator,
            package_key=packaged.key,
        ),
    )
    return TransferOrderDocument(
        idempotency_key=key,
        ref_key=deterministic_uuid(key),
        run_id="run-1",
        sender_key=dataset.warehouse_key(sender),
        sender_name=sender,
        receiver_key=dataset.warehouse_key(receiver),
        receiver_name=receiver,
        date=datetime(2026, 3, 10, 9, 0),
        desired_arrival=datetime(2026, 3, 12, 0, 0),
        comment=f"bisnesmedia-hub key={key} run=run-1",
        lines=default_lines if lines is None else lines,
    )


async def test_deliver_creates_posts_and_sends_every_field(dataset: DemoDataset) -> None:
    """One posted order with the client Ref_Key, the marker and every required field explicit."""
    box = OneCSandbox(dataset)
    doc = order(dataset)
    async with connected(box) as onec:
        delivered = await onec.deliver_transfer_order(doc, look_up_first=False)
    [stored] = box.transfer_orders()
    assert delivered.external_id == doc.ref_key == stored["Ref_Key"]
    assert delivered.number == stored["Number"] and delivered.created_now
    assert stored["Posted"] is True and stored["comment"] == doc.comment
    raw = stored["raw"]
    assert raw["Организация_Key"] == dataset.organizations[0].key
    assert raw["Приоритет_Key"] == next(p.key for p in dataset.priorities if p.name == "Средний")
    assert (raw["Статус"], raw["ХозяйственнаяОперация"]) == ("КВыполнению", "ПеремещениеТоваров")
    assert (raw["Date"], raw["ЖелаемаяДатаПоступления"]) == (
        "2026-03-10T09:00:00",
        "2026-03-12T00:00:00",
    )
    assert [line["LineNumber"] for line in stored["lines"]] == [1, 2]
    assert [(line["quantity"], line["packages"]) for line in stored["lines"]] == [
        (Decimal(7), Decimal(7)),
        (Decimal(12), Decimal(2)),
    ]
    assert {line["supply_option"] for line in stored["lines"]} == {"Отгрузить"}
    assert stored["lines"][1]["package_key"] == doc.lines[1].package_key


async def test_ut_114_dialect(dataset: DemoDataset) -> None:
    """On 11.4 the supply option is «Отгрузить» too and no Приоритет_Key is sent."""
    box = OneCSandbox(dataset, ut_version="11.4")
    async with connected(box) as onec:
        delivered = await onec.deliver_transfer_order(order(dataset), look_up_first=False)
    [stored] = box.transfer_orders()
    assert delivered.created_now and stored["Posted"] is True
    assert {line["supply_option"] for line in stored["lines"]} == {"Отгрузить"}
    assert "Приоритет_Key" not in stored["raw"]


async def test_resend_after_success_finds_instead_of_duplicating(dataset: DemoDataset) -> None:
    """A lookup-first resend, or even a blind one, returns the existing order, created_now False."""
    box = OneCSandbox(dataset)
    doc = order(dataset)
    async with connected(box) as onec:
        first = await onec.deliver_transfer_order(doc, look_up_first=False)
        again = await onec.deliver_transfer_order(doc, look_up_first=True)
        blind = await onec.deliver_transfer_order(doc, look_up_first=False)
    assert again.external_id == blind.external_id == first.external_id
    assert not again.created_now and not blind.created_now
    assert len(box.transfer_orders()) == 1


async def test_commit_then_drop_is_unknown_and_reconciled(dataset: DemoDataset) -> None:
    """A create whose answer is lost is OutcomeUnknownError; the lookup-first retry posts the
    order that did get created, and nothing is duplicated."""
    box = OneCSandbox(dataset)
    doc = order(dataset)
    async with connected(box) as onec:
        await onec.load_metadata()
        box.drop_after_commit = 1
        with pytest.raises(OutcomeUnknownError):
            await onec.deliver_transfer_order(doc, look_up_first=False)
        assert [o["Posted"] for o in box.transfer_orders()] == [False]
        delivered = await onec.deliver_transfer_order(doc, look_up_first=True)
    [stored] = box.transfer_orders()
    assert stored["Posted"] is True and delivered.external_id == stored["Ref_Key"]
    assert delivered.created_now is False


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_lost_create_answers_are_unknown(dataset: DemoDataset, seed: int) -> None:
    """A 500 without odata.error, a 502 or a hang on the create is OutcomeUnknownError."""
    box = OneCSandbox(dataset)
    async with connected(box, request_timeout_s=0.2) as onec:
        await onec.deliver_transfer_order(order(dataset, key="warm-up"), look_up_first=False)
        box.fault_rate, box.hang_s, box.seed = 1.0, 0.4, seed
        with pytest.raises(OutcomeUnknownError) as caught:
            await onec.deliver_transfer_order(order(dataset), look_up_first=False)
    assert caught.value.status in (500, 502, None)
    assert len(box.transfer_orders()) == 1


async def test_posting_refusal_is_permanent_with_1c_text(dataset: DemoDataset) -> None:
    """Sender = receiver: posting is refused; the error carries 1C's code and message; the
    draft stays unposted and a retry finds it instead of creating another."""
    box = OneCSandbox(dataset)
    doc = order(dataset, sender=TARGET, receiver=TARGET)
    async with connected(box) as onec:
        with pytest.raises(PermanentError) as caught:
            await onec.deliver_transfer_order(doc, look_up_first=False)
        with pytest.raises(PermanentError):
            await onec.deliver_transfer_order(doc, look_up_first=False)
    error = caught.value
    assert (error.status, error.code) == (500, "-1")
    assert error.remote_message and "отличаться" in error.remote_message
    assert "отличаться" in error.describe()
    assert [o["Posted"] for o in box.transfer_orders()] == [False]


async def test_bad_reference_is_a_400(dataset: DemoDataset) -> None:
    """A value 1C cannot parse (not a GUID) is a PermanentError with HTTP 400 and code 1."""
    box = OneCSandbox(dataset)
    bad = (TransferLine(item_key="not-a-guid", quantity=Decimal(1), packages=Decimal(1)),)
    async with connected(box) as onec:
        with pytest.raises(PermanentError) as caught:
            await onec.deliver_transfer_order(order(dataset, lines=bad), look_up_first=False)
    assert (caught.value.status, caught.value.code) == (400, "1")
    assert box.transfer_orders() == []


async def test_unposted_order_is_posted_on_lookup(dataset: DemoDataset) -> None:
    """An order that exists but was unposted is posted by the lookup-first delivery."""
    box = OneCSandbox(dataset)
    doc = order(dataset)
    async with connected(box) as onec:
        await onec.deliver_transfer_order(doc, look_up_first=False)
        box.orders.unpost(doc.ref_key)
        delivered = await onec.deliver_transfer_order(doc, look_up_first=True)
    assert not delivered.created_now
    assert [o["Posted"] for o in box.transfer_orders()] == [True]


async def test_marker_search_finds_an_order_under_another_key(dataset: DemoDataset) -> None:
    """If the base kept its own Ref_Key, the order is found by the marker in Комментарий."""
    box = OneCSandbox(dataset)
    doc = order(dataset)
    async with connected(box) as onec:
        await onec.deliver_transfer_order(doc, look_up_first=False)
        row = box.orders.get(doc.ref_key)
        foreign = box.orders.create(
            {**{k: v for k, v in row.items() if k != "Number"}, "Ref_Key": EMPTY_GUID}
        )
        box.orders.patch(doc.ref_key, {"DeletionMark": True})
        box.db.tables["Document_ЗаказНаПеремещение"].remove((doc.ref_key,))
        delivered = await onec.deliver_transfer_order(doc, look_up_first=True)
    assert delivered.external_id == foreign["Ref_Key"] != doc.ref_key
    assert box.orders.get(foreign["Ref_Key"])["Posted"] is True


async def test_deleted_order_is_not_recreated(dataset: DemoDataset) -> None:
    """An order marked for deletion in 1C stops delivery with a PermanentError."""
    box = OneCSandbox(dataset)
    doc = order(dataset)
    async with connected(box) as onec:
        await onec.deliver_transfer_order(doc, look_up_first=False)
        box.orders.patch(doc.ref_key, {"DeletionMark": True})
        with pytest.raises(PermanentError, match="marked for deletion"):
            await onec.deliver_transfer_order(doc, look_up_first=True)
    assert len(box.transfer_orders()) == 1


async def test_tampered_order_fails_verification(dataset: DemoDataset) -> None:
    """An existing order whose quantities differ from the document is reported, not accepted."""
    box = OneCSandbox(dataset)
    doc = order(dataset)
    async with connected(box) as onec:
        await onec.deliver_transfer_order(doc, look_up_first=False)
        lines = box.orders.get(doc.ref_key)["Товары"]
        box.orders.patch(doc.ref_key, {"Товары": [{**lines[0], "Количество": 70}, lines[1]]})
        with pytest.raises(PermanentError, match="differs") as caught:
            await onec.deliver_transfer_order(doc, look_up_first=True)
    assert "70" in str(caught.value)


async def _incoming(onec: OneCConnector, receiver_key: str) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for line in await onec.read_open_transfers([receiver_key]):
        assert line.receiver_key == receiver_key
        totals[line.item_key] = totals.get(line.item_key, Decimal(0)) + line.outstanding
    return totals


async def test_incoming_transfers_count_only_open_hub_orders(dataset: DemoDataset) -> None:
    """Outstanding КОформлению per item over the hub's posted, open orders to the receiver."""
    box = OneCSandbox(dataset)
    to_target = order(dataset, key="a")
    second = order(dataset, key="b", sender=SECOND)
    elsewhere = order(dataset, key="c", sender=TARGET, receiver=SECOND)
    plain, packaged = (line.item_key for line in to_target.lines)
    async with connected(box) as onec:
        for doc in (to_target, second, elsewhere):
            await onec.deliver_transfer_order(doc, look_up_first=False)
        foreign = box.orders.create(
            {
                **{k: v for k, v in box.orders.get(to_target.ref_key).items() if k != "Number"},
                "Ref_Key": EMPTY_GUID,
                "Комментарий": "вручную",
            }
        )
        box.orders.post(foreign["Ref_Key"], operational=False)
        target_key = dataset.warehouse_key(TARGET)
        assert await _incoming(onec, target_key) == {
            plain: Decimal(14),
            packaged: Decimal(24),
        }
        by_sender = {
            (line.sender_key, line.item_key): line.outstanding
            for line in await onec.read_open_transfers([target_key])
        }
        assert by_sender[(dataset.warehouse_key(FIRST), plain)] == Decimal(7)
        assert by_sender[(dataset.warehouse_key(SECOND), plain)] == Decimal(7)
        box.set_transfer_outstanding(second.ref_key, plain, Decimal(3))
        box.mark_transfer_received(to_target.ref_key)
        assert await _incoming(onec, target_key) == {
            plain: Decimal(3),
            packaged: Decimal(12),
        }
        box.orders.unpost(second.ref_key)
        assert await _incoming(onec, target_key) == {}


async def test_password_never_leaks(dataset: DemoDataset) -> None:
    """Neither errors, reprs nor log events carry the password, even on failures and retries."""
    secret = "S3cr3t-пароль"
    box = OneCSandbox(dataset, password=secret)
    with structlog.testing.capture_logs() as events:
        async with connected(box, password=secret, read_attempts=2) as onec:
            await onec.load_metadata()
            box.fault_rate = 1.0
            box.hang_s = 0.0
            errors: list[BaseException] = []
            for call in (
                onec.read_items(),
                onec.deliver_transfer_order(order(dataset), look_up_first=False),
            ):
                try:
                    await call
                except Exception as exc:  # the point is to inspect whatever comes out
                    errors.append(exc)
            box.fault_rate = 0.0
            box.password = "changed"
            try:
                await onec.read_items()
            except PermanentError as exc:
                errors.append(exc)
            texts = [repr(onec), *(repr(e) for e in errors), *(str(e) for e in errors)]
    assert len(errors) == 3 and errors[-1].status == 401  # type: ignore[attr-defined]
    texts += [repr(event) for event in events]
    assert events and not [text for text in texts if secret in text]


def _too_many(dataset: DemoDataset) -> TransferOrderDocument:
    """``order`` asking for more of its first item than its sender holds (100 and a few)."""
    doc = order(dataset)
    first, second = doc.lines
    return doc.model_copy(
        update={"lines": (first.model_copy(update={"quantity": Decimal(130),
                                                    "packages": Decimal(130)}), second)}
    )  # fmt: skip


async def test_refused_posting_withdraws_the_draft_with_1cs_text(dataset: DemoDataset) -> None:
    """1C refuses to post for the sender's free stock: the delivery fails for good with 1C's
    message naming the item, the draft is marked for deletion (unposted, nothing registered),
    and any retry stops at that mark without creating a second order."""
    box = OneCSandbox(dataset)
    doc = _too_many(dataset)
    name = next(i.name for i in dataset.items if i.key == doc.lines[0].item_key)
    async with connected(box) as onec:
        with pytest.raises(PermanentError) as refused:
            await onec.deliver_transfer_order(doc, look_up_first=False)
        text = refused.value.describe()
        assert f'товара "{name}" на складе "{FIRST}"' in text
        sender, item = dataset.warehouse_key(FIRST), doc.lines[0].item_key
        free = sum(
            r.in_stock - r.to_ship
            for r in dataset.stock
            if (r.warehouse_key, r.item_key) == (sender, item)
        )
        assert f"недостаточно свободного остатка в количестве {130 - free} шт" in text
        assert "marked for deletion" in text and refused.value.status == 500
        [stored] = box.transfer_orders()
        assert (stored["Posted"], stored["DeletionMark"]) == (False, True)
        assert await _incoming(onec, dataset.warehouse_key(TARGET)) == {}
        for look_up_first in (True, False):
            with pytest.raises(PermanentError) as again:
                await onec.deliver_transfer_order(doc, look_up_first=look_up_first)
            assert again.value.code == "deleted"
    assert len(box.transfer_orders()) == 1


async def test_a_lost_answer_to_the_deletion_mark_keeps_1cs_text(dataset: DemoDataset) -> None:
    """The mark went through but its answer was lost: a re-read confirms it, and the failure is
    still the permanent one with 1C's refusal text (not an unknown outcome)."""
    box = OneCSandbox(dataset)
    doc = _too_many(dataset)
    async with run_onec_sandbox(box) as upstream, hostile(upstream) as (proxy, url):
        proxy.arm(Replace(status=502, body=b""), r"^PATCH ")
        settings = OneCSettings.model_validate(
            {"base_url": url, "username": "hub", "retry_base_s": 0.01}
        )
        async with OneCConnector(settings, SecretStr("sandbox")) as onec:
            with pytest.raises(PermanentError) as refused:
                await onec.deliver_transfer_order(doc, look_up_first=False)
    assert "недостаточно свободного остатка" in refused.value.describe()
    assert not isinstance(refused.value, OutcomeUnknownError)
    [stored] = box.transfer_orders()
    assert (stored["Posted"], stored["DeletionMark"]) == (False, True)


def test_lines_stored_with_another_supply_option_fail_verification(dataset: DemoDataset) -> None:
    """A base that stores the lines with «КОбеспечению» would not count them as incoming: the
    re-read comparison names it; the lines as sent pass."""
    doc = order(dataset)
    row = {
        "Ref_Key": doc.ref_key,
        "Number": "БМ-00000001",
        "Posted": True,
        "DeletionMark": False,
        "СкладОтправитель_Key": doc.sender_key,
        "СкладПолучатель_Key": doc.receiver_key,
    }

    def lines(option: str) -> list[dict[str, object]]:
        return [
            {
                "Номенклатура_Key": line.item_key,
                "Количество": float(line.quantity),
                "КоличествоУпаковок": float(line.packages),
                "ВариантОбеспечения": option,
            }
            for line in doc.lines
        ]

    sent = stored_order(row, lines("Отгрузить"), doc.ref_key)
    changed = stored_order(row, lines("КОбеспечению"), doc.ref_key)
    assert not isinstance(sent, str) and not isinstance(changed, str)
    assert differences(doc, sent) == []
    assert differences(doc, changed) == [
        "lines have ВариантОбеспечения 'КОбеспечению' instead of 'Отгрузить'"
    ]
