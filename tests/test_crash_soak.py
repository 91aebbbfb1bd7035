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
from scripts.crash_soak import SoakOptions, run_soak
from scripts.soak_audit import Order, audit


# About 25 s on an idle 2-core machine; the margin is for a loaded one.
@pytest.mark.timeout(120)
async def test_sigkill_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """20 SIGKILLs mid-run and mid-delivery after bursts of concurrent triggers, some with a
    second hubd refused mid-run, then a drain: every planned document exists once, with its
    lines, nothing else exists, and no two runs overlapped."""
    options = SoakOptions(
        kills=20,
        seed=7,
        items=60,
        max_wait_s=1.0,
        long_wait_share=0.1,
        lease_s=2.0,
        second_daemon_share=0.2,
    )
    notes: list[str] = []
    result = await run_soak(options, tmp_path, notes.append)
    report = "\n".join([*notes, *result.report()])
    assert result.kills >= 20, report
    assert result.audit.lost == [], report
    assert result.audit.duplicated == [], report
    assert result.audit.mismatched == result.audit.dead == result.audit.over_ordered == [], report
    assert result.unexpected_exits == 0, report
    # issue 19: bursts of concurrent triggers start one run each, runs never overlap, and a
    # second daemon started mid-run refuses the state directory
    assert result.bursts > 0 and result.bursts_with_several_runs == [], report
    assert result.audit.overlapping == [], report
    assert result.second_daemons > 0 and result.second_daemons_not_refused == [], report
    # the soak is only worth something if kills landed while documents were being delivered
    assert result.kills_mid_delivery > 0, report
    assert result.audit.delivered == result.audit.rows > 0, report
    assert report.splitlines()[-3:] == ["kills: 20", "lost: 0", "duplicated: 0"]


RUN, LATER = "20261126-090000-replenishment-abcd", "20261126-100000-replenishment-ef01"
ITEM_A, ITEM_B = str(uuid.uuid4()), str(uuid.uuid4())
DONOR, SHOP = str(uuid.uuid4()), str(uuid.uuid4())
PRODUCT = str(uuid.uuid4())


def _documents(run: str) -> list[Document]:
    transfer_key = f"{run}:transfer:{DONOR}:{SHOP}"
    order_key = f"{run}:order:{SHOP}:1"
    when = datetime(2026, 11, 26, 12, 0)
    return [
        TransferOrderDocument(
            idempotency_key=transfer_key,
            ref_key=deterministic_uuid(transfer_key),
            run_id=run,
            sender_key=DONOR,
            sender_name="Бестужевых",
            receiver_key=SHOP,
            receiver_name="Магазин Центральный",
            date=when,
            desired_arrival=when,
            comment=f"bisnesmedia-hub key={transfer_key} run={run}",
            lines=(
                TransferLine(item_key=ITEM_A, quantity=Decimal(3), packages=Decimal(3)),
                TransferLine(item_key=ITEM_B, quantity=Decimal("2.5"), packages=Decimal("2.5")),
            ),
        ),
        CustomerOrderDocument(
            idempotency_key=order_key,
            sync_id=deterministic_uuid(order_key),
            run_id=run,
            external_code=f"hub-{SHOP[:8]}-{run}-1",
            description="bisnesmedia-hub",
            target_name="Магазин Центральный",
            lines=(OrderLine(product_id=PRODUCT, item_key=ITEM_A, quantity=Decimal(7)),),
        ),
    ]


async def _delivered_outbox(path: Path, runs: dict[str, tuple[float, int]]) -> None:
    """A real hub database: per run (started at, documents its plan counts), both documents
    of ``_documents(run)`` enqueued and delivered."""
    db = await open_database(path)
    try:
        for run, (started_at, planned) in runs.items():
            record = RunRecord(run, "replenishment", "manual", False, "succeeded", started_at)
            record.counts = {"documents": planned}
            record.finished_at = started_at + 10
            await run_store.insert_run(db, record)
            async with db.transaction() as conn:
                await outbox_store.enqueue(conn, run, _documents(run), started_at)
                await run_store.save_progress(conn, record)
        for kind in ("onec_transfer_order", "moysklad_customer_order"):
            claimed = await claim_due(
                db, kind=kind, owner="test", now=time.time(), lease_s=60, limit=10
            )
            for entry in claimed:
                doc = entry.document()
                external_id = doc.ref_key if isinstance(doc, TransferOrderDocument) else doc.run_id
                await record_delivered(
                    db, entry, external_id=external_id, number="1", now=time.time()
                )
    finally:
        await db.close()


def _emulated(run: str) -> tuple[Order, Order]:
    """The two documents of ``run`` as the emulators' inspection helpers show them."""
    transfer, order = _documents(run)
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
        "id": run,
        "syncId": order.sync_id,
        "externalCode": order.external_code,
        "positions": [{"product_id": PRODUCT, "quantity": 7.0, "shipped": 7.0}],
    }
    return onec, moysklad


async def test_audit_counts_lost_duplicated_and_mismatched_documents(tmp_path: Path) -> None:
    """The audit is clean when the emulators hold exactly the planned documents, and counts a
    missing document, a second copy, a stray document, a changed quantity and a short plan."""
    path = tmp_path / "hub.sqlite3"
    await _delivered_outbox(path, {RUN: (1000.0, 2)})
    onec, moysklad = _emulated(RUN)
    clean = audit(path, [onec], [moysklad])
    assert (clean.rows, clean.delivered, clean.runs_with_documents) == (2, 2, 1)
    assert clean.lost == clean.duplicated == clean.mismatched == clean.dead == []
    assert clean.over_ordered == clean.overlapping == []

    assert len(audit(path, [onec], []).lost) == 1
    copy = {**onec, "Ref_Key": str(uuid.uuid4())}  # same marker key, another Ref_Key
    assert len(audit(path, [onec, copy], [moysklad]).duplicated) == 1
    stray = {**moysklad, "id": "ms-2", "syncId": str(uuid.uuid4()), "externalCode": "x"}
    assert len(audit(path, [onec], [moysklad, stray]).duplicated) == 1
    changed = {**moysklad, "positions": [{"product_id": PRODUCT, "quantity": 6.0}]}
    assert len(audit(path, [onec], [changed]).mismatched) == 1
    unposted = {**onec, "Posted": False}
    assert len(audit(path, [unposted], [moysklad]).mismatched) == 1

    short = tmp_path / "short.sqlite3"
    await _delivered_outbox(short, {RUN: (1000.0, 3)})
    assert len(audit(short, [onec], [moysklad]).lost) == 1


async def test_audit_counts_a_deficit_ordered_again_while_still_open(tmp_path: Path) -> None:
    """A second run ordering the same items is over-ordering unless the first run's documents
    were closed before it started."""
    path = tmp_path / "hub.sqlite3"
    await _delivered_outbox(path, {RUN: (1000.0, 2), LATER: (2000.0, 2)})
    first, second = _emulated(RUN), _emulated(LATER)
    onec, moysklad = [first[0], second[0]], [first[1], second[1]]
    still_open = audit(path, onec, moysklad, {})
    assert len(still_open.over_ordered) == 2, still_open.over_ordered  # items A and B
    assert still_open.lost == still_open.duplicated == []
    closed_between = {first[0]["Ref_Key"]: 1500.0, first[1]["id"]: 1500.0}
    assert audit(path, onec, moysklad, closed_between).over_ordered == []
    closed_late = {first[0]["Ref_Key"]: 2500.0, first[1]["id"]: 1500.0}
    assert len(audit(path, onec, moysklad, closed_late).over_ordered) == 2


async def test_audit_counts_runs_of_one_job_that_overlapped(tmp_path: Path) -> None:
    """Two runs of one job are overlapping when the later started before the earlier ended
    (or the earlier never ended); one after the other they are not."""
    apart = tmp_path / "apart.sqlite3"
    await _delivered_outbox(apart, {RUN: (1000.0, 2), LATER: (2000.0, 2)})
    first, second = _emulated(RUN), _emulated(LATER)
    onec, moysklad = [first[0], second[0]], [first[1], second[1]]
    assert audit(apart, onec, moysklad).overlapping == []
    together = tmp_path / "together.sqlite3"
    await _delivered_outbox(together, {RUN: (1000.0, 2), LATER: (1005.0, 2)})
    found = audit(together, onec, moysklad).overlapping
    assert found == [f"replenishment: run {LATER} started while {RUN} ran"]
