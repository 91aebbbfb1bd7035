"""The outbox tables: enqueue, leased claims, outcomes and the operator queries (real SQLite)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from daemon.errors import InvalidStateError, NotFoundError, StoreError
from daemon.model import (
    CustomerOrderDocument,
    OrderLine,
    TransferLine,
    TransferOrderDocument,
    deterministic_uuid,
)
from daemon.outbox.backoff import backoff_ceiling, full_jitter_delay
from daemon.store import Database, open_database
from daemon.store.outbox import (
    KIND_MOYSKLAD,
    KIND_ONEC,
    depth_by_state,
    discard_entry,
    enqueue,
    get_entry,
    list_entries,
    retry_entry,
    run_delivery_state,
)
from daemon.store.outbox_leases import (
    ClaimedEntry,
    claim_due,
    extend_leases,
    next_due_at,
    record_dead,
    record_delivered,
    record_retry,
)

T0 = 1_800_000_000.0


def transfer(run_id: str, n: int = 1, lines: int = 3) -> TransferOrderDocument:
    key = f"{run_id}/transfer/{n}"
    return TransferOrderDocument(
        idempotency_key=key,
        ref_key=deterministic_uuid(key),
        run_id=run_id,
        sender_key="s-key",
        sender_name="Бестужевых",
        receiver_key="r-key",
        receiver_name="Магазин Центральный",
        date=datetime(2026, 11, 26, 9, 0),
        desired_arrival=datetime(2026, 11, 28, 9, 0),
        comment=f"bisnesmedia-hub key={key} run={run_id}",
        lines=tuple(
            TransferLine(item_key=f"item-{i}", quantity=Decimal("2.5"), packages=Decimal("2.5"))
            for i in range(lines)
        ),
    )


def order(run_id: str, n: int = 1) -> CustomerOrderDocument:
    key = f"{run_id}/order/{n}"
    return CustomerOrderDocument(
        idempotency_key=key,
        sync_id=deterministic_uuid(key),
        run_id=run_id,
        external_code=f"hub-{run_id}-{n}",
        description="replenishment",
        target_name="Магазин Центральный",
        lines=(OrderLine(product_id="p-1", item_key="item-1", quantity=Decimal(4)),),
    )


async def add_run(db: Database, run_id: str) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO runs (id, job, trigger, status, started_at) "
            "VALUES (?, 'replenishment', 'manual', 'running', ?)",
            (run_id, T0),
        )


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(tmp_path / "hub.db")
    await add_run(database, "run-1")
    try:
        yield database
    finally:
        await database.close()


async def enqueue_docs(
    db: Database, docs: list[TransferOrderDocument | CustomerOrderDocument], now: float = T0
) -> list[int]:
    async with db.transaction() as conn:
        return await enqueue(conn, "run-1", docs, now)


async def claim_one(
    db: Database,
    kind: str = KIND_ONEC,
    *,
    owner: str = "w1",
    now: float = T0,
    lease_s: float = 60.0,
    limit: int = 1,
) -> ClaimedEntry:
    claimed = await claim_due(db, kind=kind, owner=owner, now=now, lease_s=lease_s, limit=limit)
    assert len(claimed) == 1
    return claimed[0]


async def test_enqueue_stores_pending_rows_with_summary_and_round_tripping_payload(
    db: Database,
) -> None:
    """Enqueue writes one pending row per document, summarised, with an exact JSON payload."""
    doc, ms = transfer("run-1", lines=12), order("run-1")
    ids = await enqueue_docs(db, [doc, ms])
    entry = await get_entry(db, ids[0])
    assert entry.state == "pending"
    assert entry.summary == "1C transfer Бестужевых → Магазин Центральный, 12 lines"
    assert entry.idempotency_key == doc.idempotency_key
    assert (await get_entry(db, ids[1])).summary == "МойСклад order for Магазин Центральный, 1 line"
    claimed = await claim_one(db, KIND_ONEC)
    assert claimed.document() == doc
    assert (await claim_one(db, KIND_MOYSKLAD)).document() == ms


async def test_enqueue_is_part_of_the_callers_transaction(db: Database) -> None:
    """Rows enqueued in a transaction that rolls back never appear."""
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            await enqueue(conn, "run-1", [transfer("run-1")], T0)
            raise RuntimeError("plan could not be stored")
    assert await list_entries(db, None, 10) == []


async def test_enqueue_rejects_a_repeated_idempotency_key(db: Database) -> None:
    """A second row with the same idempotency key is refused with a StoreError."""
    await enqueue_docs(db, [transfer("run-1")])
    with pytest.raises(StoreError, match="run-1/transfer/1"):
        await enqueue_docs(db, [transfer("run-1")])


async def test_claim_takes_only_due_rows_of_its_kind_up_to_the_limit(db: Database) -> None:
    """A claim leases due rows of one kind, oldest first, at most ``limit`` of them."""
    ids = await enqueue_docs(db, [transfer("run-1", n) for n in range(1, 4)] + [order("run-1")])
    await enqueue_docs(db, [transfer("run-1", 9)], now=T0 + 100)
    claimed = await claim_due(db, kind=KIND_ONEC, owner="w1", now=T0, lease_s=60, limit=2)
    assert [entry.id for entry in claimed] == ids[:2]
    assert all(entry.attempt == 1 and not entry.outcome_unknown for entry in claimed)
    rest = await claim_due(db, kind=KIND_ONEC, owner="w1", now=T0, lease_s=60, limit=10)
    assert [entry.id for entry in rest] == [ids[2]]
    entry = await get_entry(db, ids[0])
    assert (entry.state, entry.lease_owner, entry.lease_until) == ("in_flight", "w1", T0 + 60)


async def test_leased_row_is_not_claimed_again_until_the_lease_expires(db: Database) -> None:
    """Another worker cannot claim a leased row; after expiry it can, flagged outcome unknown."""
    (row_id,) = await enqueue_docs(db, [transfer("run-1")])
    await claim_one(db, owner="w1", now=T0, lease_s=60)
    before = await claim_due(db, kind=KIND_ONEC, owner="w2", now=T0 + 59, lease_s=60, limit=5)
    assert before == []
    reclaimed = await claim_one(db, owner="w2", now=T0 + 60, lease_s=60)
    assert (reclaimed.id, reclaimed.attempt, reclaimed.outcome_unknown) == (row_id, 2, True)
    entry = await get_entry(db, row_id)
    assert entry.lease_owner == "w2"
    assert entry.last_error is not None and "lease of w1 expired" in entry.last_error


async def test_extend_leases_renews_only_rows_the_owner_still_holds(db: Database) -> None:
    """The owner can push its leases out; rows it lost or never held are not renewed."""
    ids = await enqueue_docs(db, [transfer("run-1", n) for n in (1, 2, 3)])
    mine = await claim_one(db, owner="w1", now=T0, lease_s=60)
    lost = await claim_one(db, owner="w1", now=T0, lease_s=10)
    await claim_one(db, owner="w2", now=T0 + 11, lease_s=60)  # takes over the expired lease
    renewed = await extend_leases(db, [mine.id, lost.id, ids[2]], "w1", T0 + 200, T0 + 50)
    assert renewed == {mine.id}
    later = await claim_due(db, kind=KIND_ONEC, owner="w3", now=T0 + 150, lease_s=60, limit=3)
    assert {entry.id for entry in later} == {lost.id, ids[2]}


async def test_concurrent_claims_from_two_connections_never_share_a_row(tmp_path: Path) -> None:
    """Two connections claiming in parallel on one file never lease the same row."""
    path = tmp_path / "hub.db"
    first = await open_database(path)
    second = await open_database(path)
    try:
        await add_run(first, "run-1")
        async with first.transaction() as conn:
            await enqueue(conn, "run-1", [transfer("run-1", n) for n in range(40)], T0)

        together = asyncio.Barrier(2)

        async def claim_all(database: Database, owner: str) -> list[int]:
            got: list[int] = []
            for _ in range(25):
                await together.wait()
                claimed = await claim_due(
                    database, kind=KIND_ONEC, owner=owner, now=T0, lease_s=60, limit=1
                )
                got.extend(entry.id for entry in claimed)
            return got

        a, b = await asyncio.gather(claim_all(first, "a"), claim_all(second, "b"))
        assert len(a) == len(b) == 20
        assert not set(a) & set(b)
    finally:
        await first.close()
        await second.close()


async def test_record_delivered_links_a_document_to_the_run(db: Database) -> None:
    """Delivered rows carry the external id and number, and a documents row names the run."""
    (row_id,) = await enqueue_docs(db, [order("run-1")])
    entry = await claim_one(db, KIND_MOYSKLAD)
    assert await record_delivered(db, entry, external_id="ext-1", number="00042", now=T0 + 1)
    assert not await record_delivered(db, entry, external_id="ext-1", number="00042", now=T0 + 2)
    shown = await get_entry(db, row_id)
    assert (shown.state, shown.external_id, shown.external_number) == (
        "delivered",
        "ext-1",
        "00042",
    )
    assert shown.delivered_at == T0 + 1
    rows = await db.fetchall("SELECT run_id, system, kind, external_id, number FROM documents")
    assert [tuple(row) for row in rows] == [("run-1", "moysklad", KIND_MOYSKLAD, "ext-1", "00042")]


async def test_retry_outcome_unknown_flag_sticks_until_delivered(db: Database) -> None:
    """An outcome-unknown row stays flagged through later plain retries and clears on delivery."""
    (row_id,) = await enqueue_docs(db, [transfer("run-1")])
    entry = await claim_one(db)
    kept = await record_retry(
        db, entry, owner="w1", error="timeout", next_attempt_at=T0 + 5, outcome_unknown=True, now=T0
    )
    assert kept
    assert (await get_entry(db, row_id)).state == "outcome_unknown"
    entry = await claim_one(db, now=T0 + 5)
    assert entry.outcome_unknown and entry.attempt == 2
    await record_retry(
        db, entry, owner="w1", error="503", next_attempt_at=T0 + 9, outcome_unknown=False, now=T0
    )
    shown = await get_entry(db, row_id)
    assert (shown.state, shown.outcome_unknown, shown.last_error) == (
        "outcome_unknown",
        True,
        "503",
    )
    entry = await claim_one(db, now=T0 + 9)
    await record_delivered(db, entry, external_id="x", number="1", now=T0 + 9)
    assert not (await get_entry(db, row_id)).outcome_unknown


async def test_outcome_writes_need_the_lease(db: Database) -> None:
    """A worker whose lease was taken over cannot reschedule or bury the row."""
    (row_id,) = await enqueue_docs(db, [transfer("run-1")])
    stale = await claim_one(db, owner="w1", now=T0, lease_s=10)
    await claim_one(db, owner="w2", now=T0 + 11, lease_s=10)
    assert not await record_retry(
        db, stale, owner="w1", error="e", next_attempt_at=T0, outcome_unknown=False, now=T0 + 12
    )
    assert not await record_dead(db, stale, owner="w1", error="e", now=T0 + 12)
    assert (await get_entry(db, row_id)).lease_owner == "w2"


async def test_next_due_at_reports_the_earliest_retry_or_lease_expiry(db: Database) -> None:
    """The processor learns when the next row becomes claimable."""
    assert await next_due_at(db, [KIND_ONEC, KIND_MOYSKLAD]) is None
    await enqueue_docs(db, [transfer("run-1")])
    entry = await claim_one(db, now=T0, lease_s=60)
    assert await next_due_at(db, [KIND_ONEC]) == T0 + 60
    await record_retry(
        db, entry, owner="w1", error="e", next_attempt_at=T0 + 7, outcome_unknown=False, now=T0
    )
    assert await next_due_at(db, [KIND_ONEC]) == T0 + 7
    assert await next_due_at(db, [KIND_MOYSKLAD]) is None


async def test_retry_entry_revives_only_dead_rows_with_the_same_key(db: Database) -> None:
    """Retry turns dead into pending, due now, same key, fresh attempts; else InvalidStateError."""
    doc = transfer("run-1")
    (row_id,) = await enqueue_docs(db, [doc])
    with pytest.raises(InvalidStateError, match="pending"):
        await retry_entry(db, row_id, now=T0)
    entry = await claim_one(db)
    await record_retry(
        db, entry, owner="w1", error="t", next_attempt_at=T0, outcome_unknown=True, now=T0
    )
    entry = await claim_one(db)
    await record_dead(db, entry, owner="w1", error="1c: refused; HTTP 500", now=T0)
    revived = await retry_entry(db, row_id, now=T0 + 100)
    assert (revived.state, revived.attempts, revived.next_attempt_at) == ("pending", 0, T0 + 100)
    assert revived.idempotency_key == doc.idempotency_key
    assert revived.outcome_unknown
    again = await claim_one(db, now=T0 + 100)
    assert again.outcome_unknown and again.document() == doc
    with pytest.raises(NotFoundError):
        await retry_entry(db, 999)


async def test_discard_keeps_the_row_and_refuses_delivered_or_in_flight(db: Database) -> None:
    """Discard marks waiting rows discarded with a reason; delivered/in-flight rows refuse."""
    first, second, third = await enqueue_docs(db, [transfer("run-1", n) for n in (1, 2, 3)])
    shown = await discard_entry(db, first, "  ordered by phone  ", now=T0)
    assert (shown.state, shown.discard_reason) == ("discarded", "ordered by phone")
    with pytest.raises(InvalidStateError, match="discarded"):
        await discard_entry(db, first, "again")
    in_flight = await claim_one(db, limit=1)
    assert in_flight.id == second
    with pytest.raises(InvalidStateError, match="in_flight"):
        await discard_entry(db, second, "no")
    await record_delivered(db, in_flight, external_id="x", number="1", now=T0)
    with pytest.raises(InvalidStateError, match="delivered"):
        await discard_entry(db, second, "no")
    with pytest.raises(ValueError, match="reason"):
        await discard_entry(db, third, " ")
    with pytest.raises(NotFoundError):
        await discard_entry(db, 999, "gone")
    claimed = await claim_due(db, kind=KIND_ONEC, owner="w", now=T0 + 1e6, lease_s=1, limit=9)
    assert [entry.id for entry in claimed] == [third]


async def test_list_get_and_depth_for_operators(db: Database) -> None:
    """Listing is newest first with a state filter; depth counts every state; bad ids fail."""
    ids = await enqueue_docs(db, [transfer("run-1", n) for n in range(1, 4)])
    await claim_one(db)
    assert [entry.id for entry in await list_entries(db, None, 2)] == [ids[2], ids[1]]
    assert [entry.id for entry in await list_entries(db, "in_flight", 10)] == [ids[0]]
    assert await list_entries(db, "dead", 10) == []
    depth = await depth_by_state(db)
    assert depth == {
        "pending": 2,
        "in_flight": 1,
        "retry_wait": 0,
        "outcome_unknown": 0,
        "delivered": 0,
        "dead": 0,
        "discarded": 0,
    }
    with pytest.raises(ValueError, match="unknown outbox state"):
        await list_entries(db, "lost", 10)
    with pytest.raises(ValueError, match="limit"):
        await list_entries(db, None, 0)
    with pytest.raises(NotFoundError, match="outbox entry 999"):
        await get_entry(db, 999)


async def test_run_delivery_state_is_delivered_only_when_every_document_is(db: Database) -> None:
    """A run counts as delivered only once all of its documents are delivered."""
    ids = await enqueue_docs(db, [transfer("run-1"), order("run-1")])
    entry = await claim_one(db, KIND_ONEC)
    await record_delivered(db, entry, external_id="ref", number="УТ-1", now=T0)
    state = await run_delivery_state(db, "run-1")
    assert not state.delivered
    assert [(doc.outbox_id, doc.state, doc.number) for doc in state.documents] == [
        (ids[0], "delivered", "УТ-1"),
        (ids[1], "pending", None),
    ]
    entry = await claim_one(db, KIND_MOYSKLAD)
    await record_delivered(db, entry, external_id="ms", number="00007", now=T0)
    state = await run_delivery_state(db, "run-1")
    assert state.delivered and state.counts() == {"delivered": 2}
    with pytest.raises(NotFoundError, match="run nope"):
        await run_delivery_state(db, "nope")


def test_backoff_doubles_from_base_and_stops_at_cap() -> None:
    """The ceiling is base, 2×base, 4×base, … never above the cap, even for huge attempts."""
    assert [backoff_ceiling(n, 5, 60) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    assert backoff_ceiling(10_000, 5, 900) == 900
    with pytest.raises(ValueError):
        backoff_ceiling(0, 5, 60)


def test_full_jitter_spreads_delays_below_the_ceiling() -> None:
    """Delays are drawn across [0, ceiling): all below it, not all equal, some near each end."""
    draw = random.Random(7).random
    delays = [full_jitter_delay(3, 5, 900, draw) for _ in range(500)]
    assert all(0 <= delay < 20 for delay in delays)
    assert min(delays) < 2 and max(delays) > 18
    assert len(set(delays)) > 450
