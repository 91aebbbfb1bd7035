"""The outbox processor: delivers outbox rows to 1C and MoySklad, exactly once.

Exactly once comes from three pieces working together:

- a row is worked on only under a lease (``daemon.store.outbox_leases``), renewed while a slow
  delivery runs, so two processors never deliver the same row at once, and a row whose worker
  died is reclaimed when its lease expires;
- every document carries a deterministic id (1C ``Ref_Key`` + ``Комментарий`` marker, MoySklad
  ``syncId``), so a resend is recognisable;
- whenever a previous attempt may have reached the remote (``OutcomeUnknownError``, a crashed
  delivery, a reclaimed lease, a shutdown mid-request) the row is flagged ``outcome_unknown`` and
  every later attempt asks the connector to look the document up before creating it.

Retry decisions depend only on the error class: ``PermanentError`` goes dead at once with the
remote's text; any ``TransientError`` is retried with full-jitter backoff until ``max_attempts``
or ``max_age_h`` is used up. Rate limits are the connectors' business, not this module's.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog
from pydantic import ValidationError

from daemon.backoff import full_jitter_delay
from daemon.config import OutboxSection
from daemon.errors import ConnectorError, OutcomeUnknownError, PermanentError, TransientError
from daemon.model import (
    CustomerOrderDocument,
    DeliveredDocument,
    Document,
    TransferOrderDocument,
)
from daemon.store.database import Database
from daemon.store.outbox import KIND_MOYSKLAD, KIND_ONEC
from daemon.store.outbox_leases import (
    ClaimedEntry,
    claim_due,
    extend_lease,
    next_due_at,
    record_dead,
    record_delivered,
    record_retry,
)

logger = structlog.get_logger(__name__)

_T = TypeVar("_T")

# When the database says a row is due but nothing could be claimed (another processor took it
# between the two queries), wait this long rather than spinning.
_MIN_IDLE_S = 0.05


class TransferOrderSink(Protocol):
    """The one method of ``daemon.ports.OneCPort`` the processor uses."""

    async def deliver_transfer_order(
        self, doc: TransferOrderDocument, *, look_up_first: bool
    ) -> DeliveredDocument: ...


class CustomerOrderSink(Protocol):
    """The one method of ``daemon.ports.MoySkladPort`` the processor uses."""

    async def deliver_customer_order(
        self, doc: CustomerOrderDocument, *, look_up_first: bool
    ) -> DeliveredDocument: ...


async def _finish_write(write: Awaitable[_T]) -> _T:
    """Run a database write to its end even if the calling task is cancelled meanwhile.

    Cancellation must not cut a transaction in half: an interrupted ``BEGIN`` can leave the
    daemon's one shared connection inside a transaction. The write completes, then the
    cancellation propagates. Rows a completed claim leased to a cancelled lane are not
    attempted; they become claimable again when their lease expires.
    """
    task = asyncio.ensure_future(write)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            logger.error("outbox_write_failed_while_cancelled", error=repr(task.exception()))
        raise


@dataclass(frozen=True, slots=True)
class _Lane:
    """One document kind: how many of its rows may be in delivery at once."""

    kind: str
    concurrency: int


def _unreadable(exc: ValidationError | ValueError) -> str:
    # pydantic's own str() quotes the offending input; payloads never go into errors or logs.
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        return (
            f"stored document cannot be read: {exc.error_count()} validation error(s), "
            f"first at {where or 'top level'}: {first['msg']}"
        )
    return f"stored document cannot be read: {exc}"


class OutboxProcessor:
    """Delivers due outbox rows through the connector ports.

    ``onec`` and ``moysklad`` are the connectors (any ``OneCPort`` / ``MoySkladPort`` will do;
    only their deliver methods are used).

    ``run()`` is the long-lived loop: it drains every ``settings.interval_s``, sooner when a
    retry falls due, and at once after ``wake()``. ``drain_once()`` delivers everything due now.
    """

    def __init__(
        self,
        db: Database,
        settings: OutboxSection,
        onec: TransferOrderSink,
        moysklad: CustomerOrderSink,
        *,
        clock: Callable[[], float] = time.time,
        worker_id: str,
        rng: random.Random | None = None,
    ) -> None:
        self._db = db
        self._settings = settings
        self._onec = onec
        self._moysklad = moysklad
        self._clock = clock
        self._worker_id = worker_id
        self._draw = (rng if rng is not None else random.Random()).random
        self._lanes = (
            _Lane(KIND_ONEC, settings.concurrency_onec),
            _Lane(KIND_MOYSKLAD, settings.concurrency_moysklad),
        )
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()

    @property
    def worker_id(self) -> str:
        return self._worker_id

    def wake(self) -> None:
        """Ask the loop to drain now (e.g. right after a run enqueued documents)."""
        self._wake.set()

    @property
    def is_idle(self) -> bool:
        """True while ``run()`` is waiting for the next interval or ``wake()``."""
        return self._idle.is_set()

    async def wait_idle(self) -> None:
        """Return once ``run()`` has finished a drain and is waiting."""
        await self._idle.wait()

    async def run(self) -> None:
        """Drain, wait for the interval, a due retry or ``wake()``, repeat until cancelled.

        Cancellation abandons the rows being delivered (they are flagged outcome unknown and
        become due at once, or are reclaimed after their lease) and propagates.
        """
        logger.info("outbox_processor_started", worker_id=self._worker_id)
        try:
            while True:
                self._wake.clear()
                self._idle.clear()
                processed = await self.drain_once()
                delay = await self._idle_delay(processed)
                self._idle.set()
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            self._idle.clear()
            logger.info("outbox_processor_stopped", worker_id=self._worker_id)

    async def _idle_delay(self, processed: int) -> float:
        delay = self._settings.interval_s
        due = await next_due_at(self._db, [lane.kind for lane in self._lanes])
        if due is not None:
            delay = min(delay, max(0.0, due - self._clock()))
        if processed == 0:
            delay = max(delay, _MIN_IDLE_S)
        return delay

    async def drain_once(self) -> int:
        """Deliver every row that is due now; returns how many rows were attempted."""
        async with asyncio.TaskGroup() as group:
            lanes = [
                group.create_task(self._drain_lane(lane), name=f"outbox-{lane.kind}")
                for lane in self._lanes
            ]
        return sum(task.result() for task in lanes)

    async def _drain_lane(self, lane: _Lane) -> int:
        """Keep ``lane.concurrency`` deliveries going while rows of the lane are due.

        Rows are claimed only when a slot is free, so no lease ticks away while its row waits
        behind a slow delivery. A row retried during this pass is not claimed again in it,
        which bounds the pass even when a backoff draw comes out as zero.
        """
        attempted = 0
        running: set[int] = set()
        retried: set[int] = set()
        slot_freed = asyncio.Event()

        def finished(entry_id: int) -> Callable[[asyncio.Task[bool]], None]:
            def callback(task: asyncio.Task[bool]) -> None:
                running.discard(entry_id)
                if not task.cancelled() and task.exception() is None and task.result():
                    retried.add(entry_id)
                slot_freed.set()

            return callback

        async with asyncio.TaskGroup() as group:
            while True:
                free = lane.concurrency - len(running)
                if free <= 0:
                    slot_freed.clear()
                    await slot_freed.wait()
                    continue
                claimed = await _finish_write(
                    claim_due(
                        self._db,
                        kind=lane.kind,
                        owner=self._worker_id,
                        now=self._clock(),
                        lease_s=self._settings.lease_s,
                        limit=free,
                        exclude=sorted(running | retried),
                    )
                )
                for entry in claimed:
                    attempted += 1
                    running.add(entry.id)
                    task = group.create_task(
                        self._process(entry), name=f"outbox-deliver-{entry.id}"
                    )
                    task.add_done_callback(finished(entry.id))
                if len(claimed) < free:
                    # Nothing else is due; rows enqueued from now on are for the next pass.
                    break
        return attempted

    async def _process(self, entry: ClaimedEntry) -> bool:
        """Deliver one claimed row and record the outcome; True if it was scheduled again."""
        with structlog.contextvars.bound_contextvars(run_id=entry.run_id):
            log = logger.bind(
                outbox_id=entry.id, run_id=entry.run_id, kind=entry.kind, attempt=entry.attempt
            )
            if entry.attempt > self._settings.max_attempts:
                # Only reachable when earlier attempts never finished (their workers died).
                await self._dead(
                    entry,
                    log,
                    f"gave up after {entry.attempt - 1} attempts; the last ones never finished "
                    f"(worker stopped mid-delivery), so the document may exist: "
                    f"{entry.last_error or 'no error recorded'}",
                )
                return False
            try:
                doc = entry.document()
            except (ValidationError, ValueError) as exc:
                await self._dead(entry, log, _unreadable(exc))
                return False
            try:
                async with self._lease_kept(entry, log):
                    delivered = await self._deliver(doc, look_up_first=entry.outcome_unknown)
            except asyncio.CancelledError:
                await self._abandon(entry, log)
                raise
            except PermanentError as exc:
                await self._dead(entry, log, exc.describe())
                return False
            except TransientError as exc:
                return await self._failed(
                    entry, log, exc.describe(), unknown=isinstance(exc, OutcomeUnknownError)
                )
            except Exception as exc:
                # A bug or an untranslated library error: the request may have gone out, so
                # the row is treated as outcome unknown instead of killing the loop.
                log.exception("outbox_delivery_crashed", error=type(exc).__name__)
                text = (
                    exc.describe()
                    if isinstance(exc, ConnectorError)
                    else f"delivery crashed: {type(exc).__name__}: {exc}"
                )
                return await self._failed(entry, log, text, unknown=True)
            await self._delivered(entry, log, delivered)
            return False

    async def _deliver(self, doc: Document, *, look_up_first: bool) -> DeliveredDocument:
        if isinstance(doc, TransferOrderDocument):
            return await self._onec.deliver_transfer_order(doc, look_up_first=look_up_first)
        return await self._moysklad.deliver_customer_order(doc, look_up_first=look_up_first)

    @asynccontextmanager
    async def _lease_kept(
        self, entry: ClaimedEntry, log: structlog.typing.FilteringBoundLogger
    ) -> AsyncIterator[None]:
        """Renew the lease every third of its length while the body runs."""
        renewer = asyncio.create_task(
            self._renew_lease(entry, log), name=f"outbox-lease-{entry.id}"
        )
        try:
            yield
        finally:
            renewer.cancel()
            # asyncio.wait never raises the renewer's own CancelledError, so a cancellation
            # of this task (the caller) is the only one that can propagate from here.
            await asyncio.wait({renewer})
            if not renewer.cancelled() and renewer.exception() is not None:
                log.error("outbox_lease_renewal_failed", error=repr(renewer.exception()))

    async def _renew_lease(
        self, entry: ClaimedEntry, log: structlog.typing.FilteringBoundLogger
    ) -> None:
        lease_s = self._settings.lease_s
        while True:
            await asyncio.sleep(lease_s / 3)
            now = self._clock()
            renewed = await _finish_write(
                extend_lease(self._db, entry.id, self._worker_id, now + lease_s, now)
            )
            if not renewed:
                log.warning("outbox_lease_lost", worker_id=self._worker_id)
                return

    async def _delivered(
        self,
        entry: ClaimedEntry,
        log: structlog.typing.FilteringBoundLogger,
        delivered: DeliveredDocument,
    ) -> None:
        await _finish_write(
            record_delivered(
                self._db,
                entry,
                external_id=delivered.external_id,
                number=delivered.number,
                now=self._clock(),
            )
        )
        log.info(
            "outbox_delivered",
            external_id=delivered.external_id,
            number=delivered.number,
            created_now=delivered.created_now,
            looked_up=entry.outcome_unknown,
        )

    async def _failed(
        self,
        entry: ClaimedEntry,
        log: structlog.typing.FilteringBoundLogger,
        error: str,
        *,
        unknown: bool,
    ) -> bool:
        now = self._clock()
        settings = self._settings
        age_h = (now - entry.created_at) / 3600
        if entry.attempt >= settings.max_attempts:
            await self._dead(entry, log, f"gave up after {entry.attempt} attempts: {error}")
            return False
        if age_h >= settings.max_age_h:
            await self._dead(
                entry,
                log,
                f"gave up after {entry.attempt} attempts over {age_h:.1f} h "
                f"(max_age_h {settings.max_age_h:g}): {error}",
            )
            return False
        delay = full_jitter_delay(
            entry.attempt, settings.retry_base_s, settings.retry_cap_s, self._draw
        )
        kept = await _finish_write(
            record_retry(
                self._db,
                entry,
                owner=self._worker_id,
                error=error,
                next_attempt_at=now + delay,
                outcome_unknown=unknown,
                now=now,
            )
        )
        if not kept:
            log.warning("outbox_lease_lost", worker_id=self._worker_id, error=error)
            return False
        log.warning(
            "outbox_outcome_unknown" if unknown else "outbox_retry_scheduled",
            error=error,
            delay_s=round(delay, 3),
        )
        return True

    async def _dead(
        self, entry: ClaimedEntry, log: structlog.typing.FilteringBoundLogger, error: str
    ) -> None:
        kept = await _finish_write(
            record_dead(self._db, entry, owner=self._worker_id, error=error, now=self._clock())
        )
        if not kept:
            log.warning("outbox_lease_lost", worker_id=self._worker_id, error=error)
            return
        log.error("outbox_dead", error=error)

    async def _abandon(
        self, entry: ClaimedEntry, log: structlog.typing.FilteringBoundLogger
    ) -> None:
        """Hand a row back when cancelled mid-request: due at once, looked up before resending.

        If even this write cannot finish (a second cancellation, a database error) the row
        stays in flight and is reclaimed when its lease expires.
        """
        now = self._clock()
        try:
            await _finish_write(
                record_retry(
                    self._db,
                    entry,
                    owner=self._worker_id,
                    error="abandoned mid-delivery (processor stopped); outcome unknown",
                    next_attempt_at=now,
                    outcome_unknown=True,
                    now=now,
                )
            )
        except Exception as exc:
            log.warning("outbox_abandon_failed", error=repr(exc))
            return
        log.info("outbox_abandoned")
