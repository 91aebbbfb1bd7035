"""The outbox processor against in-test remotes: retries, dead letters, leases, wake-ups."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from daemon.config import OutboxSection
from daemon.errors import (
    CircuitOpenError,
    OutcomeUnknownError,
    PermanentError,
    TransientError,
)
from daemon.model import (
    CustomerOrderDocument,
    DeliveredDocument,
    OrderLine,
    TransferLine,
    TransferOrderDocument,
    deterministic_uuid,
)
from daemon.outbox.backoff import backoff_ceiling
from daemon.outbox.processor import OutboxProcessor
from daemon.store import Database, open_database
from daemon.store.outbox import (
    enqueue,
    get_entry,
    list_entries,
    retry_entry,
    run_delivery_state,
)
from daemon.store.outbox_leases import claim_due

T0 = 1_800_000_000.0
COMMIT_THEN_DROP = "commit-then-drop"


class Clock:
    """A settable wall clock, so backoff and lease expiry need no sleeping."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MaxDraw(random.Random):
    """Always draws just under 1, so every delay sits at the top of its jitter range."""

    def random(self) -> float:
        return 0.999


class FakeRemote:
    """An external system at the edge: creates documents keyed like the real ones.

    Like a remote without a lookup, a create that repeats a key makes a second document, so a
    processor that resends without ``look_up_first`` after an unknown outcome is caught.
    ``script`` holds what the next calls do: an exception to raise, COMMIT_THEN_DROP (create,
    then lose the answer), or a "gate" event the call waits on first.
    """

    def __init__(self, system: str) -> None:
        self.system = system
        self.documents: dict[str, list[DeliveredDocument]] = {}
        self.calls: list[tuple[str, bool]] = []
        self.script: list[BaseException | str | asyncio.Event] = []
        self.called = asyncio.Event()
        self.active: set[str] = set()
        self.overlaps: list[str] = []
        self.max_active = 0
        self.run_ids_bound: list[object] = []
        self.delay_s = 0.0

    def create(self, key: str) -> DeliveredDocument:
        found = self.documents.setdefault(key, [])
        doc = DeliveredDocument(
            external_id=f"{self.system}-{key}-{len(found)}",
            number=f"N{sum(map(len, self.documents.values())):05d}",
            created_now=True,
        )
        found.append(doc)
        return doc

    def count(self, key: str) -> int:
        return len(self.documents.get(key, []))

    async def deliver(self, key: str, look_up_first: bool) -> DeliveredDocument:
        self.calls.append((key, look_up_first))
        self.run_ids_bound.append(structlog.contextvars.get_contextvars().get("run_id"))
        self.called.set()
        if key in self.active:
            self.overlaps.append(key)
        self.active.add(key)
        self.max_active = max(self.max_active, len(self.active))
        try:
            step = self.script.pop(0) if self.script else None
            if isinstance(step, asyncio.Event):
                await step.wait()
                step = None
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if isinstance(step, BaseException):
                raise step
            if look_up_first and self.documents.get(key):
                return self.documents[key][0].model_copy(update={"created_now": False})
            created = self.create(key)
            if step == COMMIT_THEN_DROP:
                raise OutcomeUnknownError("connection dropped after the write", system=self.system)
            return created
        finally:
            self.active.discard(key)


class FakeOneC(FakeRemote):
    def __init__(self) -> None:
        super().__init__("1c")

    async def deliver_transfer_order(
        self, doc: TransferOrderDocument, *, look_up_first: bool
    ) -> DeliveredDocument:
        return await self.deliver(doc.idempotency_key, look_up_first)


class FakeMoySklad(FakeRemote):
    def __init__(self) -> None:
        super().__init__("moysklad")

    async def deliver_customer_order(
        self, doc: CustomerOrderDocument, *, look_up_first: bool
    ) -> DeliveredDocument:
        return await self.deliver(doc.idempotency_key, look_up_first)


def transfer(run_id: str, n: int = 1) -> TransferOrderDocument:
    key = f"{run_id}/transfer/{n}"
    return TransferOrderDocument(
        idempotency_key=key,
        ref_key=deterministic_uuid(key),
        run_id=run_id,
        sender_key="s",
        sender_name="Бестужевых",
        receiver_key="r",
        receiver_name="Магазин Центральный",
        date=datetime(2026, 11, 26, 9),
        desired_arrival=datetime(2026, 11, 28, 9),
        comment=f"bisnesmedia-hub key={key} run={run_id}",
        lines=(TransferLine(item_key="i", quantity=Decimal(3), packages=Decimal(3)),),
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
        lines=(OrderLine(product_id="p", item_key="i", quantity=Decimal(2)),),
    )


async def add_run(db: Database, run_id: str = "run-1") -> None:
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO runs (id, job, trigger, status, started_at) "
            "VALUES (?, 'replenishment', 'manual', 'running', ?)",
            (run_id, T0),
        )


async def put(
    db: Database,
    docs: list[TransferOrderDocument | CustomerOrderDocument],
    now: float = T0,
    run_id: str = "run-1",
) -> list[int]:
    async with db.transaction() as conn:
        return await enqueue(conn, run_id, docs, now)


def settings(**overrides: float) -> OutboxSection:
    values: dict[str, float] = {"retry_base_s": 10.0, "retry_cap_s": 40.0, "max_attempts": 30}
    values.update(overrides)
    return OutboxSection.model_validate(values)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(tmp_path / "hub.db")
    await add_run(database)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def onec() -> FakeOneC:
    return FakeOneC()


@pytest.fixture
def ms() -> FakeMoySklad:
    return FakeMoySklad()


def processor(
    db: Database,
    onec: FakeOneC,
    ms: FakeMoySklad,
    clock: Clock | None = None,
    worker_id: str = "w1",
    rng: random.Random | None = None,
    **overrides: float,
) -> OutboxProcessor:
    return OutboxProcessor(
        db,
        settings(**overrides),
        onec,
        ms,
        clock=clock or Clock(),
        worker_id=worker_id,
        rng=rng,
    )


async def test_delivers_every_document_of_a_run(
    db: Database, onec: FakeOneC, ms: FakeMoySklad
) -> None:
    """One drain creates each document once, records numbers and marks the run delivered."""
    ids = await put(db, [transfer("run-1", 1), transfer("run-1", 2), order("run-1")])
    with capture_logs() as logs:
        assert await processor(db, onec, ms).drain_once() == 3
    assert [(key, look) for key, look in onec.calls] == [
        ("run-1/transfer/1", False),
        ("run-1/transfer/2", False),
    ]
    assert ms.calls == [("run-1/order/1", False)]
    state = await run_delivery_state(db, "run-1")
    assert state.delivered
    entry = await get_entry(db, ids[2])
    assert entry.external_id == "moysklad-run-1/order/1-0" and entry.attempts == 1
    documents = await db.fetchall("SELECT system, run_id FROM documents ORDER BY outbox_id")
    assert [tuple(row) for row in documents] == [
        ("1c", "run-1"),
        ("1c", "run-1"),
        ("moysklad", "run-1"),
    ]
    delivered = [log for log in logs if log["event"] == "outbox_delivered"]
    assert {log["outbox_id"] for log in delivered} == set(ids)
    assert all(log["run_id"] == "run-1" and log["attempt"] == 1 for log in delivered)
    assert not any("payload" in key or "lines" in key for log in logs for key in log)
    assert onec.run_ids_bound == ["run-1", "run-1"]
    assert await processor(db, onec, ms).drain_once() == 0


async def test_transient_errors_are_retried_with_growing_capped_backoff(
    db: Database, onec: FakeOneC, ms: FakeMoySklad
) -> None:
    """Each transient failure waits longer (base, 2×, 4×, …) up to the cap, then delivery works."""
    (row_id,) = await put(db, [transfer("run-1")])
    clock = Clock()
    errors: list[BaseException] = [
        TransientError("HTTP 503", system="1c", status=503),
        TransientError("timeout", system="1c"),
        CircuitOpenError("circuit open", system="1c"),
        TransientError("HTTP 502", system="1c", status=502),
        TransientError("HTTP 500", system="1c", status=500),
    ]
    onec.script = list(errors)
    proc = processor(db, onec, ms, clock=clock, rng=MaxDraw(), retry_base_s=10, retry_cap_s=40)
    delays = []
    for attempt in range(1, 6):
        with capture_logs() as logs:
            assert await proc.drain_once() == 1
        entry = await get_entry(db, row_id)
        assert entry.state == "retry_wait" and entry.attempts == attempt
        assert entry.last_error is not None and entry.last_error.startswith("1c: ")
        assert [log["event"] for log in logs] == ["outbox_retry_scheduled"]
        delays.append(entry.next_attempt_at - clock.now)
        clock.now = entry.next_attempt_at - 0.01
        assert await proc.drain_once() == 0, "a row is not attempted before its backoff ends"
        clock.now = entry.next_attempt_at
    assert delays == pytest.approx([9.99, 19.98, 39.96, 39.96, 39.96])
    assert await proc.drain_once() == 1
    assert (await get_entry(db, row_id)).state == "delivered"
    assert [look for _, look in onec.calls] == [False] * 6
    assert onec.count("run-1/transfer/1") == 1


async def test_backoff_is_jittered_between_rows(
    db: Database, onec: FakeOneC, ms: FakeMoySklad
) -> None:
    """Rows failing together get different delays, all within the first ceiling."""
    ids = await put(db, [transfer("run-1", n) for n in range(8)])
    onec.script = [TransientError("HTTP 503", system="1c", status=503) for _ in ids]
    clock = Clock()
    proc = processor(db, onec, ms, clock=clock, rng=random.Random(3), concurrency_onec=8)
    assert await proc.drain_once() == 8
    delays = [(await get_entry(db, row_id)).next_attempt_at - T0 for row_id in ids]
    assert all(0 <= delay < backoff_ceiling(1, 10, 40) for delay in delays)
    assert len(set(delays)) == 8


async def test_permanent_error_goes_dead_with_the_remote_text_and_is_never_retried(
    db: Database, onec: FakeOneC, ms: FakeMoySklad
) -> None:
    """A PermanentError buries the row at once, keeping the remote's message, with no retry."""
    (row_id,) = await put(db, [order("run-1")])
    ms.script = [
        PermanentError(
            "order refused",
            system="moysklad",
            status=412,
            code="3000",
            remote_message="Поле 'agent' не может быть пустым",
        )
    ]
    clock = Clock()
    proc = processor(db, onec, ms, clock=clock)
    with capture_logs() as logs:
        assert await proc.drain_once() == 1
    entry = await get_entry(db, row_id)
    assert entry.state == "dead" and entry.attempts == 1
    assert entry.last_error == (
        "moysklad: order refused; HTTP 412; code 3000; Поле 'agent' не может быть пустым"
    )
    dead = [log for log in logs if log["event"] == "outbox_dead"]
    assert dead and dead[0]["error"] == entry.last_error and dead[0]["outbox_id"] == row_id
    clock.now += 30 * 86400
    assert await proc.drain_once() == 0
    assert len(ms.calls) == 1
    assert not (await run_delivery_state(db, "run-1")).delivered


async def test_outcome_unknown_is_looked_up_first_and_creates_exactly_one_document(
    db: Database, onec: FakeOneC, ms: FakeMoySklad
) -> None:
    """After a write whose answer was lost, the next attempt looks up and finds the document."""
    (row_id,) = await put(db, [transfer("run-1")])
    onec.script = [COMMIT_THEN_DROP]
    clock = Clock()
    proc = processor(db, onec, ms, clock=clock)
    with capture_logs() as logs:
        await proc.drain_once()
    entry = await get_entry(db, row_id)
    assert (entry.state, entry.outcome_unknown) == ("outcome_unknown", True)
    assert [log["event"] for log in logs] == ["outbox_outcome_unknown"]
    clock.now = entry.next_attempt_at
    await proc.drain_once()
    assert onec.calls == [("run-1/transfer/1", False), ("run-1/transfer/1", True)]
    assert onec.count("run-1/transfer/1") == 1
    entry = await get_entry(db, row_id)
    assert entry.state == "delivered" and not entry.outcome_unknown
    assert entry.external_id == onec.documents["run-1/transfer/1"][0].external_id


async def test_outcome_unknown_flag_survives_a_later_plain_failure(
    db: Database, onec: FakeOneC, ms: FakeMoySklad
) -> None:
    """Once unknown, every later attempt looks up first, even after an ordinary 503."""
    await put(db, [order("run-1")])
    ms.script = [COMMIT_THEN_DROP, TransientError("HTTP 503", system="moysklad", status=503)]
    clock = Clock()
    proc = processor(db, onec, ms, clock=clock)
    for _ in range(3):
        await proc.drain_once()
        clock.now += 1000
    assert [look for _, look in ms.calls] == [False, True, True]
    assert ms.count("run-1/order/1") == 1


async def test_crashing_delivery_is_outcome_unknown_and_other_rows_still_go(
    db: Database, onec: FakeOneC, ms: FakeMoySklad
) -> None:
    """An unexpected exception marks its row outcome unknown, logs it, and the drain goes on."""
    first, second = await put(db, [transfer("run-1", 1), transfer("run-1", 2)])
    onec.script = [KeyError("Ref_Key")]
    proc = processor(db, onec, ms, concurrency_onec=1)
    with capture_logs() as logs:
        assert await proc.drain_once() == 2
    crashed = await get_entry(db, first)
    assert crashed.state == "outcome_unknown"
    assert crashed.last_error == "delivery crashed: KeyError: 'Ref_Key'"
    assert (await get_entry(db, second)).state == "delivered"
    events = [log["event"] for log in logs]
    assert "outbox_delivery_crashed" in events and "outbox_outcome_unknown" in events


async def test_max_attempts_turns_a_failing_row_dead(
    db: Database, onec: FakeOneC, ms: FakeMoySklad
) -> None:
    """After max_attempts transient failures the row is dead, with the count and last error."""
    (row_id,) = await put(db, [transfer("run-1")])
    onec.script = [TransientError("HTTP 502", system="1c", status=502) for _ in range(5)]
    clock = Clock()
    proc = processor(db, onec, ms, clock=clock, max_attempts=3)
    for _ in range(5):
        await proc.drain_once()
        clock.now += 1000
    entry = await get_entry(db, row_id)
    assert entry.state == "dead" and entry.attempts == 3 and len(onec.calls) == 3
    assert entry.last_error == "gave up after 3 attempts: 1c: HTTP 502; HTTP 502"


async def test_max_age_turns_a_failing_row_dead(
    db: Database, onec: FakeOneC, ms: FakeMoySklad
) -> None:
    """A row still failing after max_age_h is dead even with attempts left."""
    (row_id,) = await put(db, [transfer("run-1")])
    onec.script = [TransientError("timeout", system="1c") for _ in range(2)]
    clock = Clock()
    proc = processor(db, onec, ms, clock=clock, max_age_h=1)
    await proc.drain_once()
    assert (await get_entry(db, row_id)).state == "retry_wait"
    clock.now = T0 + 3601
    await proc.drain_once()
    entry = await get_entry(db, row_id)
    assert entry.state == "dead" and entry.attempts == 2
    assert entry.last_error is not None and "max_age_h 1" in entry.last_error


async def test_an_operator_retry_restarts_the_age_budget(
    db: Database, onec: FakeOneC, ms: FakeMoySklad
) -> None:
    """A row dead of old age and sent again by an operator gets max_age_h from the retry: its
    next failures are retried, and it goes dead of age only max_age_h after the retry."""
    (row_id,) = await put(db, [transfer("run-1")])
    onec.script = [TransientError("timeout", system="1c") for _ in range(5)]
    clock = Clock()
    proc = processor(db, onec, ms, clock=clock, max_age_h=1)
    await proc.drain_once()
    clock.now = T0 + 3601
    await proc.drain_once()
    assert (await get_entry(db, row_id)).state == "dead"

    clock.now = T0 + 5 * 3600  # the operator looks days later
    await retry_entry(db, row_id, now=clock.now)
    await proc.drain_once()
    entry = await get_entry(db, row_id)
    assert entry.state == "retry_wait" and entry.attempts == 1, entry.last_error
    clock.now += 1800
    await proc.drain_once()
    assert (await get_entry(db, row_id)).state == "retry_wait"
    clock.now = T0 + 5 * 3600 + 3601
    await proc.drain_once()
    entry = await get_entry(db, row_id)
    assert entry.state == "dead" and entry.attempts == 3
    assert entry.last_error is not None and "max_age_h 1" in entry.last_error
    assert len(onec.calls) == 5


async def test_unreadable_payload_goes_dead_without_quoting_it(
    db: Database, onec: FakeOneC, ms: FakeMoySklad
) -> None:
    """A stored document that no longer parses is dead with a reason, and never sent."""
    (row_id,) = await put(db, [transfer("run-1")])
    async with db.transaction() as conn:
        await conn.execute(
            "UPDATE outbox SET payload_json = ? WHERE id = ?",
            (json.dumps({"idempotency_key": "secret-ish-value"}), row_id),
        )
    await processor(db, onec, ms).drain_once()
    entry = await get_entry(db, row_id)
    assert entry.state == "dead" and onec.calls == []
    assert entry.last_error is not None
    assert entry.last_error.startswith("stored document cannot be read")
    assert "secret-ish-value" not in entry.last_error


async def test_two_processors_never_deliver_the_same_row_at_once(tmp_path: Path) -> None:
    """Two processors on separate connections share the work, each row delivered exactly once."""
    path = tmp_path / "hub.db"
    first, second = await open_database(path), await open_database(path)
    onec, ms = FakeOneC(), FakeMoySklad()
    onec.delay_s = ms.delay_s = 0.002
    try:
        await add_run(first)
        docs: list[TransferOrderDocument | CustomerOrderDocument] = [
            transfer("run-1", n) for n in range(30)
        ]
        docs += [order("run-1", n) for n in range(10)]
        await put(first, docs)
        a = processor(first, onec, ms, worker_id="a", concurrency_onec=4, concurrency_moysklad=3)
        b = processor(second, onec, ms, worker_id="b", concurrency_onec=4, concurrency_moysklad=3)
        counts = await asyncio.gather(a.drain_once(), b.drain_once())
        assert sum(counts) == 40 and all(counts)
        assert onec.overlaps == [] and ms.overlaps == []
        assert len(onec.calls) == 30 and len(ms.calls) == 10
        assert all(
            onec.count(doc.idempotency_key) + ms.count(doc.idempotency_key) == 1 for doc in docs
        )
        assert (await run_delivery_state(first, "run-1")).delivered
    finally:
        await first.close()
        await second.close()


async def test_slow_delivery_renews_its_lease_so_no_one_else_takes_the_row(
    db: Database, onec: FakeOneC, ms: FakeMoySklad
) -> None:
    """While a delivery outlasts several lease lengths, a second processor cannot claim it."""
    await put(db, [transfer("run-1")], now=time.time())
    gate = asyncio.Event()
    onec.script = [gate]
    a = OutboxProcessor(db, settings(lease_s=0.9), onec, ms, worker_id="a")
    b = OutboxProcessor(db, settings(lease_s=0.9), onec, ms, worker_id="b")
    slow = asyncio.create_task(a.drain_once())
    await onec.called.wait()
    for _ in range(12):
        await asyncio.sleep(0.25)
        assert await b.drain_once() == 0
    gate.set()
    assert await slow == 1
    assert len(onec.calls) == 1 and onec.count("run-1/transfer/1") == 1


async def test_row_of_a_dead_worker_is_reclaimed_after_its_lease_and_looked_up(
    db: Database, onec: FakeOneC, ms: FakeMoySklad
) -> None:
    """A worker that died mid-delivery leaves a lease; on expiry another worker looks up first."""
    (row_id,) = await put(db, [transfer("run-1")])
    await claim_due(db, kind="onec_transfer_order", owner="died", now=T0, lease_s=300, limit=1)
    onec.create("run-1/transfer/1")  # the dead worker's request did reach 1C
    clock = Clock(T0 + 299)
    proc = processor(db, onec, ms, clock=clock, lease_s=300)
    assert await proc.drain_once() == 0
    clock.now = T0 + 300
    assert await proc.drain_once() == 1
    assert onec.calls == [("run-1/transfer/1", True)]
    assert onec.count("run-1/transfer/1") == 1
    entry = await get_entry(db, row_id)
    assert entry.state == "delivered" and entry.attempts == 2


async def test_row_whose_workers_keep_dying_goes_dead_after_max_attempts(
    db: Database, onec: FakeOneC, ms: FakeMoySklad
) -> None:
    """Attempts that never finish still count, so a row that kills its worker ends up dead."""
    (row_id,) = await put(db, [transfer("run-1")])
    for n in range(2):
        await claim_due(
            db, kind="onec_transfer_order", owner="died", now=T0 + n * 10, lease_s=5, limit=1
        )
    proc = processor(db, onec, ms, clock=Clock(T0 + 100), max_attempts=2)
    await proc.drain_once()
    entry = await get_entry(db, row_id)
    assert entry.state == "dead" and onec.calls == []
    assert entry.last_error is not None and "may exist" in entry.last_error


async def test_cancel_mid_delivery_hands_the_row_back_as_outcome_unknown(
    db: Database, onec: FakeOneC, ms: FakeMoySklad
) -> None:
    """Cancelling a drain propagates, and the abandoned row is due at once with a lookup."""
    (row_id,) = await put(db, [transfer("run-1")])
    onec.script = [asyncio.Event()]  # never set: the request hangs
    clock = Clock()
    proc = processor(db, onec, ms, clock=clock)
    drain = asyncio.create_task(proc.drain_once())
    await onec.called.wait()
    drain.cancel()
    with pytest.raises(asyncio.CancelledError):
        await drain
    entry = await get_entry(db, row_id)
    assert (entry.state, entry.outcome_unknown, entry.lease_owner) == (
        "outcome_unknown",
        True,
        None,
    )
    assert entry.next_attempt_at <= clock.now
    await proc.drain_once()
    assert onec.calls[-1] == ("run-1/transfer/1", True)
    assert (await get_entry(db, row_id)).state == "delivered"


async def test_concurrency_is_per_connector(db: Database, onec: FakeOneC, ms: FakeMoySklad) -> None:
    """1C deliveries never exceed their limit, and a stuck 1C lane does not hold up МойСклад."""
    await put(db, [transfer("run-1", n) for n in range(6)] + [order("run-1")])
    gate = asyncio.Event()
    onec.script = [gate, gate]
    onec.delay_s = 0.005
    proc = processor(db, onec, ms, concurrency_onec=2, concurrency_moysklad=1)
    drain = asyncio.create_task(proc.drain_once())
    for _ in range(200):
        if ms.calls and len(onec.calls) == 2:
            break
        await asyncio.sleep(0.01)
    assert ms.count("run-1/order/1") == 1, "МойСклад delivered while 1C is stuck"
    assert len(onec.calls) == 2, "no third 1C row while two are in flight"
    gate.set()
    assert await drain == 7
    assert onec.max_active == 2


async def test_wake_gets_a_row_enqueued_while_idle_attempted(
    db: Database, onec: FakeOneC, ms: FakeMoySklad
) -> None:
    """With a one-hour interval, only wake() can explain the prompt attempt of a new row."""
    proc = OutboxProcessor(db, settings(interval_s=3600), onec, ms, worker_id="w")
    loop = asyncio.create_task(proc.run())
    try:
        await asyncio.wait_for(proc.wait_idle(), 10)
        await put(db, [transfer("run-1")], now=time.time())
        proc.wake()
        await asyncio.wait_for(onec.called.wait(), 10)
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop


async def test_run_loop_comes_back_for_a_due_retry_without_being_woken(
    db: Database, onec: FakeOneC, ms: FakeMoySklad
) -> None:
    """The loop sleeps only until the next retry is due, not the whole interval."""
    (row_id,) = await put(db, [order("run-1")], now=time.time())
    ms.script = [TransientError("HTTP 503", system="moysklad", status=503)]
    proc = OutboxProcessor(
        db, settings(interval_s=3600, retry_base_s=0.05, retry_cap_s=0.05), onec, ms, worker_id="w"
    )
    loop = asyncio.create_task(proc.run())
    try:
        for _ in range(1000):
            if len(ms.calls) == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.wait_for(proc.wait_idle(), 10)
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
    assert len(ms.calls) == 2
    assert (await get_entry(db, row_id)).state == "delivered"
    assert [entry.state for entry in await list_entries(db, None, 5)] == ["delivered"]
