"""A short crash soak: hubd SIGKILLed at random moments against faulty emulators loses and
duplicates no document (the full soak is ``make soak``, 500 kills)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from daemon.model import (
    CustomerOrderDocument,
    Document,
    OrderLine,
    TransferLine,
    TransferOrderDocument,
    deterministic_uuid,
)
from daemon.store import open_database
from daemon.store import outbox as outbox_store
from daemon.store import runs as run_store
from daemon.store.outbox_leases import claim_due, record_delivered
from daemon.store.runs import RunRecord
from scripts.crash_soak import Order, SoakOptions, audit, run_soak


# About 25 s on an idle 2-core machine; the margin is for a loaded one.
@pytest.mark.timeout(120)
async def test_sigkill_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """20 SIGKILLs mid-run and mid-delivery, then a drain: every planned document exists once,
    with its lines, and nothing else exists."""
    options = SoakOptions(
        kills=20, seed=7, items=60, max_wait_s=1.0, long_wait_share=0.1, lease_s=2.0
    )
    notes: list[str] = []
    result = await run_soak(options, tmp_path, notes.append)
    report = "\n".join([*notes, *result.report()])
    assert result.kills >= 20, report
    assert result.audit.lost == [], report
    assert result.audit.duplicated == [], report
    assert result.audit.mismatched == [] and result.audit.dead == [], report
    assert result.unexpected_exits == 0, report
    # the soak is only worth something if kills landed while documents were being delivered
    assert result.kills_mid_delivery > 0, report
    assert result.audit.delivered == result.audit.rows > 0, report
    assert report.splitlines()[-3:] == ["kills: 20", "lost: 0", "duplicated: 0"]


RUN = "20261126-090000-replenishment-abcd"
ITEM_A, ITEM_B = str(uuid.uuid4()), str(uuid.uuid4())
DONOR, SHOP = str(uuid.uuid4()), str(uuid.uuid4())
PRODUCT = str(uuid.uuid4())


def _documents() -> list[Document]:
    transfer_key = f"{RUN}:transfer:{DONOR}:{SHOP}"
    order_key = f"{RUN}:order:{SHOP}:1"
    when = datetime(2026, 11, 26, 12, 0)
    return [
        TransferOrderDocument(
            idempotency_key=transfer_key,
            ref_key=deterministic_uuid(transfer_key),
            run_id=RUN,
            sender_key=DONOR,
            sender_name="Бестужевых",
            receiver_key=SHOP,
            receiver_name="Магазин Центральный",
            date=when,
            desired_arrival=when,
            comment=f"bisnesmedia-hub key={transfer_key} run={RUN}",
            lines=(
                TransferLine(item_key=ITEM_A, quantity=Decimal(3), packages=Decimal(3)),
                TransferLine(item_key=ITEM_B, quantity=Decimal("2.5"), packages=Decimal("2.5")),
            ),
        ),
        CustomerOrderDocument(
            idempotency_key=order_key,
            sync_id=deterministic_uuid(order_key),
            run_id=RUN,
            external_code=f"hub-{SHOP[:8]}-{RUN}-1",
            description="bisnesmedia-hub",
            target_name="Магазин Центральный",
            lines=(OrderLine(product_id=PRODUCT, item_key=ITEM_A, quantity=Decimal(7)),),
        ),
    ]


async def _delivered_outbox(tmp_path: Path, planned: int) -> tuple[Path, list[Document]]:
    """A real hub database: one run whose plan counts ``planned`` documents, two delivered."""
    path = tmp_path / "hub.sqlite3"
    docs = _documents()
    db = await open_database(path)
    try:
        record = RunRecord(RUN, "replenishment", "manual", False, "succeeded", time.time())
        record.counts = {"documents": planned}
        await run_store.insert_run(db, record)
        async with db.transaction() as conn:
            await outbox_store.enqueue(conn, RUN, docs, time.time())
            await run_store.save_progress(conn, record)
        for kind, external_id in (
            ("onec_transfer_order", deterministic_uuid(docs[0].idempotency_key)),
            ("moysklad_customer_order", "ms-1"),
        ):
            (entry,) = await claim_due(
                db, kind=kind, owner="test", now=time.time(), lease_s=60, limit=5
            )
            await record_delivered(db, entry, external_id=external_id, number="1", now=time.time())
    finally:
        await db.close()
    return path, docs


def _emulated(docs: list[Document]) -> tuple[list[Order], list[Order]]:
    """The two documents as the emulators' inspection helpers show them after a delivery."""
    transfer, order = docs
    assert isinstance(transfer, TransferOrderDocument)
    assert isinstance(order, CustomerOrderDocument)
    onec = {
        "Ref_Key": transfer.ref_key,
        "comment": transfer.comment,
        "Posted": True,
        "sender": DONOR,
        "receiver": SHOP,
        "lines": [{"item_key": ln.item_key, "quantity": ln.quantity} for ln in transfer.lines],
    }
    moysklad = {
        "id": "ms-1",
        "syncId": order.sync_id,
        "externalCode": order.external_code,
        "positions": [{"product_id": PRODUCT, "quantity": 7.0, "shipped": 7.0}],
    }
    return [onec], [moysklad]


async def test_audit_counts_lost_duplicated_and_mismatched_documents(tmp_path: Path) -> None:
    """The audit is clean when the emulators hold exactly the planned documents, and counts a
    missing document, a second copy, a stray document, a changed quantity and a short plan."""
    path, docs = await _delivered_outbox(tmp_path, planned=2)
    onec, moysklad = _emulated(docs)
    clean = audit(path, onec, moysklad)
    assert (clean.rows, clean.delivered, clean.runs_with_documents) == (2, 2, 1)
    assert clean.lost == clean.duplicated == clean.mismatched == clean.dead == []

    assert len(audit(path, onec, []).lost) == 1
    copy = {**onec[0], "Ref_Key": str(uuid.uuid4())}  # same marker key, another Ref_Key
    assert len(audit(path, [*onec, copy], moysklad).duplicated) == 1
    stray = {**moysklad[0], "id": "ms-2", "syncId": str(uuid.uuid4()), "externalCode": "x"}
    assert len(audit(path, onec, [*moysklad, stray]).duplicated) == 1
    changed = {**moysklad[0], "positions": [{"product_id": PRODUCT, "quantity": 6.0}]}
    assert len(audit(path, onec, [changed]).mismatched) == 1
    unposted = {**onec[0], "Posted": False}
    assert len(audit(path, [unposted], moysklad).mismatched) == 1

    short, _ = await _delivered_outbox(tmp_path / "short", planned=3)
    assert len(audit(short, onec, moysklad).lost) == 1
