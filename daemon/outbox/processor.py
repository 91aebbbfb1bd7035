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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from pydantic import ValidationError

from daemon.config import OutboxSection
from daemon.errors import (
    ConnectorError,
    DiskFullError,
    OutcomeUnknownError,
    PermanentError,
    TransientError,
)
from daemon.model import (
    CustomerOrderDocument,
    DeliveredDocument,
    Document,
    TransferOrderDocument,
)
from daemon.outbox.backoff import full_jitter_delay
from daemon.outbox.settle import OutcomeWriter, finish_write
from daemon.store.database import Database
from daemon.store.outbox import KIND_MOYSKLAD, KIND_ONEC
from daemon.store.outbox_leases import (
    ClaimedEntry,
    ClaimRequest,
    Dead,
    Delivered,
    Outcome,
    Retry,
    claim_due,
    extend_leases,
    next_due_at,
    reclaim_own,
)

logger = structlog.get_logger(__name__)

BoundLogger = structlog.typing.FilteringBoundLogger

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


@dataclass(frozen=True, slots=True)
class _Result:
    """What to record about one attempt, and the log event that goes with it."""

    outcome: Outcome
    event: str
    level: str  # the structlog method: info / warning / error
    fields: dict[str, object]


def _dead(error: str) -> _Result:
    return _Result(Dead(error), "outbox_dead", "error", {"error": error})


@dataclass
class _LanePass:
    """What the workers of one lane share during one drain pass.

    A row retried during the pass is not claimed again in it, which bounds the pass even when
    a backoff draw comes out as zero.
    """

    attempted: int = 0
    retried: set[int] = field(default_factory=set)


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
        self._writer = OutcomeWriter(db, worker_id, clock)
        self._running: set[int] = set()  # rows this processor is delivering right now
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
        full_passes = 0  # drains in a row broken off by a full disk
        try:
            while True:
                self._wake.clear()
                self._idle.clear()
                try:
                    if full_passes:
                        await self._reclaim_own()
                    processed = await self.drain_once()
                    delay = await self._idle_delay(processed)
                    if full_passes:
                        logger.info("outbox_resumed", worker_id=self._worker_id)
                    full_passes = 0
                except* DiskFullError as group:
                    # The disk, not the delivery, failed: the daemon stays up and tries again.
                    # A document created but not recorded is found by its lookup next time.
                    if not full_passes:
                        first: BaseException = group
                        while isinstance(first, BaseExceptionGroup):
                            first = first.exceptions[0]
                        logger.error("outbox_paused_disk_full", error=str(first))
                    full_passes += 1
                    delay = min(self._settings.interval_s, 2.0 ** min(full_passes, 5))
                self._idle.set()
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            self._idle.clear()
            logger.info("outbox_processor_stopped", worker_id=self._worker_id)

    async def _reclaim_own(self) -> None:
        reclaimed = await reclaim_own(
            self._db, self._worker_id, sorted(self._running), self._clock()
        )
        if reclaimed:
            logger.warning("outbox_reclaimed_after_disk_full", outbox_ids=reclaimed)

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
        keeper = asyncio.create_task(self._keep_leases(), name="outbox-leases")
        try:
            async with asyncio.TaskGroup() as group:
                lanes = [
                    group.create_task(self._drain_lane(lane), name=f"outbox-{lane.kind}")
                    for lane in self._lanes
                ]
        finally:
            keeper.cancel()
            # asyncio.wait never raises the keeper's own CancelledError, so only a
            # cancellation of this task can propagate from here.
            await asyncio.wait({keeper})
            if not keeper.cancelled() and keeper.exception() is not None:
                logger.error("outbox_lease_renewal_failed", error=repr(keeper.exception()))
        return sum(task.result() for task in lanes)

    async def _keep_leases(self) -> None:
        """Renew, every third of a lease, the leases of the rows being delivered.

        A delivery can outlast its lease (a slow 1C posting, a long МойСклад answer); renewing
        keeps any other processor from taking the row while this one still works on it.
        """
        lease_s = self._settings.lease_s
        while True:
            await asyncio.sleep(lease_s / 3)
            held = sorted(self._running)
            if not held:
                continue
            now = self._clock()
            renewed = await finish_write(
                extend_leases(self._db, held, self._worker_id, now + lease_s, now)
            )
            for lost in sorted(set(held) - renewed):
                if lost in self._running:
                    logger.warning("outbox_lease_lost", outbox_id=lost, worker_id=self._worker_id)

    async def _drain_lane(self, lane: _Lane) -> int:
        """Run up to ``lane.concurrency`` workers while rows of the lane are due.

        One claim starts the pass; after that each worker records its outcome and claims its
        next row in the same commit, and stops when nothing more is due. A worker never holds
        a row it is not delivering, so no lease ticks away while its row waits.
        """
        claimed = await finish_write(
            claim_due(
                self._db,
                kind=lane.kind,
                owner=self._worker_id,
                now=self._clock(),
                lease_s=self._settings.lease_s,
                limit=lane.concurrency,
                exclude=sorted(self._running),
            ),
            undo=self._writer.release,
        )
        if not claimed:
            return 0
        lane_pass = _LanePass()
        async with asyncio.TaskGroup() as group:
            for n, entry in enumerate(claimed):
                group.create_task(
                    self._work(lane, entry, lane_pass), name=f"outbox-{lane.kind}-{n}"
                )
        return lane_pass.attempted

    async def _work(self, lane: _Lane, first: ClaimedEntry, lane_pass: _LanePass) -> None:
        entry: ClaimedEntry | None = first
        while entry is not None:
            lane_pass.attempted += 1
            self._running.add(entry.id)
            with structlog.contextvars.bound_contextvars(run_id=entry.run_id):
                log = logger.bind(
                    outbox_id=entry.id, run_id=entry.run_id, kind=entry.kind, attempt=entry.attempt
                )
                try:
                    result = await self._attempt(entry, log)
                finally:
                    self._running.discard(entry.id)
                if isinstance(result.outcome, Retry):
                    lane_pass.retried.add(entry.id)
                request = ClaimRequest(
                    kind=lane.kind,
                    owner=self._worker_id,
                    lease_s=self._settings.lease_s,
                    limit=1,
                    exclude=tuple(sorted(self._running | lane_pass.retried)),
                )
                recorded, entry = await self._writer.settle(entry, result.outcome, request)
                if recorded or isinstance(result.outcome, Delivered):
                    getattr(log, result.level)(result.event, **result.fields)
                else:
                    log.warning("outbox_lease_lost", worker_id=self._worker_id, **result.fields)

    async def _attempt(self, entry: ClaimedEntry, log: BoundLogger) -> _Result:
        """Deliver one claimed row; what to record about it (nothing is written here)."""
        if entry.attempt > self._settings.max_attempts:
            # Only reachable when earlier attempts never finished (their workers died).
            return _dead(
                f"gave up after {entry.attempt - 1} attempts; the last ones never finished "
                f"(worker stopped mid-delivery), so the document may exist: "
                f"{entry.last_error or 'no error recorded'}"
            )
        try:
            doc = entry.document()
        except (ValidationError, ValueError) as exc:
            return _dead(_unreadable(exc))
        try:
            delivered = await self._deliver(doc, look_up_first=entry.outcome_unknown)
        except asyncio.CancelledError:
            await self._abandon(entry, log)
            raise
        except PermanentError as exc:
            return _dead(exc.describe())
        except TransientError as exc:
            return self._failure(
                entry, exc.describe(), unknown=isinstance(exc, OutcomeUnknownError)
            )
        except Exception as exc:
            # A bug or an untranslated library error: the request may have gone out, so the
            # row is treated as outcome unknown instead of killing the loop.
            log.exception("outbox_delivery_crashed", error=type(exc).__name__)
            text = (
                exc.describe()
                if isinstance(exc, ConnectorError)
                else f"delivery crashed: {type(exc).__name__}: {exc}"
            )
            return self._failure(entry, text, unknown=True)
        return _Result(
            Delivered(delivered.external_id, delivered.number),
            "outbox_delivered",
            "info",
            {
                "external_id": delivered.external_id,
                "number": delivered.number,
                "created_now": delivered.created_now,
                "looked_up": entry.outcome_unknown,
            },
        )

    async def _deliver(self, doc: Document, *, look_up_first: bool) -> DeliveredDocument:
        if isinstance(doc, TransferOrderDocument):
            return await self._onec.deliver_transfer_order(doc, look_up_first=look_up_first)
        return await self._moysklad.deliver_customer_order(doc, look_up_first=look_up_first)

    def _failure(self, entry: ClaimedEntry, error: str, *, unknown: bool) -> _Result:
        """A transient failure: another attempt after a backoff, or dead when out of budget."""
        settings = self._settings
        now = self._clock()
        # Counted from the last operator retry, if any: a retry gives a fresh budget.
        age_h = (now - entry.budget_from) / 3600
        if entry.attempt >= settings.max_attempts:
            return _dead(f"gave up after {entry.attempt} attempts: {error}")
        if age_h >= settings.max_age_h:
            return _dead(
                f"gave up after {entry.attempt} attempts over {age_h:.1f} h "
                f"(max_age_h {settings.max_age_h:g}): {error}"
            )
        delay = full_jitter_delay(
            entry.attempt, settings.retry_base_s, settings.retry_cap_s, self._draw
        )
        return _Result(
            Retry(error, now + delay, unknown),
            "outbox_outcome_unknown" if unknown else "outbox_retry_scheduled",
            "warning",
            {"error": error, "delay_s": round(delay, 3)},
        )

    async def _abandon(self, entry: ClaimedEntry, log: BoundLogger) -> None:
        """Hand a row back when cancelled mid-request: due at once, looked up before resending.

        If even this write cannot finish (a second cancellation, a database error) the row
        stays in flight and is reclaimed when its lease expires.
        """
        now = self._clock()
        abandoned = Retry("abandoned mid-delivery (processor stopped); outcome unknown", now, True)
        try:
            await self._writer.settle(entry, abandoned)
        except Exception as exc:
            log.warning("outbox_abandon_failed", error=repr(exc))
            return
        log.info("outbox_abandoned")
