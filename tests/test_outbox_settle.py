"""Group commit of outbox outcomes: many settles share one commit and split the next claims."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from daemon.model import TransferLine, TransferOrderDocument, deterministic_uuid
from daemon.outbox.settle import OutcomeWriter, finish_write
from daemon.store import Database, open_database
from daemon.store.outbox import KIND_ONEC, enqueue, get_entry
from daemon.store.outbox_leases import ClaimRequest, Delivered, Retry, claim_due

T0 = 1_800_000_000.0


def transfer(n: int) -> TransferOrderDocument:
    key = f"run-1/transfer/{n}"
    return TransferOrderDocument(
        idempotency_key=key,
        ref_key=deterministic_uuid(key),
        run_id="run-1",
        sender_key="s",
        sender_name="Бестужевых",
        receiver_key="r",
        receiver_name="Магазин Центральный",
        date=datetime(2026, 11, 26, 9),
        desired_arrival=datetime(2026, 11, 28, 9),
        comment=f"bisnesmedia-hub key={key} run=run-1",
        lines=(TransferLine(item_key="i", quantity=Decimal(1), packages=Decimal(1)),),
    )


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(tmp_path / "hub.db")
    async with database.transaction() as conn:
        await conn.execute(
            "INSERT INTO runs (id, job, trigger, status, started_at) "
            "VALUES ('run-1', 'replenishment', 'manual', 'running', ?)",
            (T0,),
        )
        await enqueue(conn, "run-1", [transfer(n) for n in range(8)], T0)
    try:
        yield database
    finally:
        await database.close()


def request(limit: int = 1) -> ClaimRequest:
    return ClaimRequest(kind=KIND_ONEC, owner="w1", lease_s=60, limit=limit)


async def test_concurrent_settles_share_one_commit_and_split_the_next_claims(
    db: Database,
) -> None:
    """Five outcomes arriving together commit once; three due rows go to three of the callers."""
    held = await claim_due(db, kind=KIND_ONEC, owner="w1", now=T0, lease_s=60, limit=5)
    statements: list[str] = []
    await db.conn.set_trace_callback(statements.append)
    writer = OutcomeWriter(db, "w1", lambda: T0 + 1)
    results = await asyncio.gather(
        *(
            writer.settle(entry, Delivered(f"x{entry.id}", str(entry.id)), request())
            for entry in held
        )
    )
    await db.conn.set_trace_callback(lambda _sql: None)
    assert [text for text in statements if text.strip().upper() == "COMMIT"] == ["COMMIT"]
    assert all(recorded for recorded, _ in results)
    handed = [entry.id for _, entry in results if entry is not None]
    assert len(handed) == 3 and len(set(handed)) == 3
    assert not set(handed) & {entry.id for entry in held}
    for entry in held:
        assert (await get_entry(db, entry.id)).state == "delivered"


async def test_a_lone_settle_is_written_at_once(db: Database) -> None:
    """With nothing else queued, one outcome is committed without waiting for company."""
    (entry,) = await claim_due(db, kind=KIND_ONEC, owner="w1", now=T0, lease_s=60, limit=1)
    writer = OutcomeWriter(db, "w1", lambda: T0 + 1)
    recorded, nxt = await asyncio.wait_for(
        writer.settle(entry, Retry("HTTP 503", T0 + 30, False)), 10
    )
    assert recorded and nxt is None
    shown = await get_entry(db, entry.id)
    assert (shown.state, shown.next_attempt_at) == ("retry_wait", T0 + 30)


async def test_a_settle_cancelled_midway_is_still_committed(db: Database) -> None:
    """Cancelling the caller does not cut the write: the outcome is in the database after."""
    (entry,) = await claim_due(db, kind=KIND_ONEC, owner="w1", now=T0, lease_s=60, limit=1)
    writer = OutcomeWriter(db, "w1", lambda: T0 + 1)
    task = asyncio.create_task(writer.settle(entry, Delivered("x", "1")))
    await asyncio.sleep(0)  # the write has started
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await get_entry(db, entry.id)).state == "delivered"


async def test_a_row_claimed_for_a_cancelled_caller_is_handed_back_untouched(
    db: Database,
) -> None:
    """The next row claimed in a cancelled caller's commit returns to pending, attempt uncounted."""
    (entry,) = await claim_due(db, kind=KIND_ONEC, owner="w1", now=T0, lease_s=60, limit=1)
    writer = OutcomeWriter(db, "w1", lambda: T0 + 1)
    task = asyncio.create_task(writer.settle(entry, Delivered("x", "1"), request()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await get_entry(db, entry.id)).state == "delivered"
    others = [await get_entry(db, row_id) for row_id in range(entry.id + 1, entry.id + 8)]
    assert [(e.state, e.attempts, e.lease_owner) for e in others] == [("pending", 0, None)] * 7


async def test_a_claim_cancelled_midway_completes_and_its_rows_are_handed_back(
    db: Database,
) -> None:
    """finish_write lets a cancelled claim commit, then its undo returns the rows unattempted."""
    writer = OutcomeWriter(db, "w1", lambda: T0 + 1)
    task = asyncio.create_task(
        finish_write(
            claim_due(db, kind=KIND_ONEC, owner="w1", now=T0, lease_s=60, limit=3),
            undo=writer.release,
        )
    )
    await asyncio.sleep(0)  # the claim is running
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rows = [await get_entry(db, row_id) for row_id in range(1, 9)]
    assert [(e.state, e.attempts, e.lease_owner) for e in rows] == [("pending", 0, None)] * 8
    again = await claim_due(db, kind=KIND_ONEC, owner="w2", now=T0, lease_s=60, limit=8)
    assert len(again) == 8
