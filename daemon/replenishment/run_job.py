"""The work of one replenishment run: read both systems, plan, store the plan with its documents.

The run manager (``daemon.replenishment.runs``) decides when a run starts and records how it
ends; this module is what it runs. The plan items, the outbox rows (one per document) and the
run's status 'succeeded' are written in ONE transaction, which ``run_to_end`` lets finish even
when the run is cancelled meanwhile (a shutdown), so a run either stored all of them or nothing.
A dry run stores the plan and no outbox rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog

from daemon.config import HubConfig
from daemon.gcpause import collector_paused
from daemon.model import CustomerOrderDocument, Document, TransferOrderDocument
from daemon.ports import MoySkladPort, OneCPort
from daemon.replenishment.inputs import build_documents, gather_inputs, plan_item_rows
from daemon.replenishment.plan import DECISIONS, NO_NORM, OK, TRANSFER, ReplenishmentPlan
from daemon.replenishment.planner import PlanningInputs, plan_replenishment, with_products
from daemon.store import Database
from daemon.store import outbox as outbox_store
from daemon.store import runs as run_store
from daemon.store.runs import RunRecord

_log = structlog.get_logger(__name__)

UNDELIVERED_STATES = ("pending", "in_flight", "retry_wait", "outcome_unknown")
_T = TypeVar("_T")
#: a phase's name and counts, as watchers see them
Progress = Callable[[str, dict[str, int]], Awaitable[None]]


async def undelivered_documents(db: Database) -> list[Document]:
    marks = ",".join("?" for _ in UNDELIVERED_STATES)
    rows = await db.fetchall(
        f"SELECT kind, payload_json FROM outbox WHERE state IN ({marks})", UNDELIVERED_STATES
    )
    docs: list[Document] = []
    for kind, payload in rows:
        if kind == "onec_transfer_order":
            docs.append(TransferOrderDocument.model_validate_json(payload))
        else:
            docs.append(CustomerOrderDocument.model_validate_json(payload))
    return docs


class ReplenishmentJob:
    """What a run of the ``replenishment`` job does, with the hub's ports."""

    def __init__(
        self,
        db: Database,
        config: Callable[[], HubConfig],
        onec: OneCPort,
        moysklad: MoySkladPort,
        wake_outbox: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._config = config
        self._onec = onec
        self._moysklad = moysklad
        self._wake_outbox = wake_outbox
        self._clock = clock

    async def run(
        self, record: RunRecord, progress: Progress, committed: Callable[[], None]
    ) -> None:
        """Read, plan and store the plan with its documents; ``committed`` is called once they
        and the status 'succeeded' are in the database (a cancellation after that changes
        nothing stored). ``progress`` gets each phase and its counts."""
        config = self._config()
        undelivered = await undelivered_documents(self._db)
        early: list[tuple[ReplenishmentPlan, list[run_store.PlanItemRow]]] = []

        async def plan_early(planning: PlanningInputs) -> None:
            # While МойСклад's products are read: plan without them, and render the rows of
            # the decisions products cannot change.
            _log.info("run_planning_before_products")
            early.append(
                await asyncio.to_thread(_plan_and_rows, planning, record.id, _WITHOUT_PRODUCTS)
            )

        gathered = await gather_inputs(
            config, self._onec, self._moysklad, undelivered, progress, early=plan_early
        )
        with collector_paused():
            if early:
                plan, rows = await asyncio.to_thread(
                    _add_products, *early[0], gathered.planning, record.id
                )
            else:
                plan, rows = await asyncio.to_thread(_plan_and_rows, gathered.planning, record.id)
            early.clear()  # the early plan is not needed past here
            counts = plan.counts()
            zone = (
                config.jobs[record.job].timezone if record.job in config.jobs else "Europe/Moscow"
            )
            documents = (
                []
                if record.dry_run
                else build_documents(plan, record.id, datetime.now(UTC), config, zone)
            )
            counts["documents"] = len(documents)
            await progress("store plan", counts)
            await run_to_end(self._store(record, rows, documents, committed))
            del plan, rows  # freed by reference counting while the collector still sleeps
        if documents:
            self._wake_outbox()
        _log.info(
            "run_planned",
            below_min=counts.get("below_min", 0),
            documents=len(documents),
            unmapped=counts.get("unmapped", 0),
        )

    async def _store(
        self,
        record: RunRecord,
        rows: list[run_store.PlanItemRow],
        documents: list[Document],
        committed: Callable[[], None],
    ) -> None:
        """The plan, the outbox rows and the status 'succeeded', in one transaction."""
        record.status = "succeeded"
        try:
            async with self._db.transaction() as conn:
                await run_store.insert_plan_item_rows(conn, rows)
                if documents:
                    await outbox_store.enqueue(conn, record.id, documents, self._clock())
                await run_store.save_progress(conn, record)
        except BaseException:
            record.status = "running"
            raise
        committed()


async def run_to_end(coro: Coroutine[Any, Any, _T]) -> _T:
    """Await ``coro`` to its end even if this task is cancelled meanwhile, then re-raise the
    cancellation: a transaction may be committing on aiosqlite's thread, and whether it did
    decides what the run's status says."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):  # its own failure loses to the cancellation
            await task
        raise


#: The decisions that do not depend on МойСклад products, and those that do.
_WITHOUT_PRODUCTS = (NO_NORM, OK, TRANSFER)
_WITH_PRODUCTS = tuple(code for code in DECISIONS if code not in _WITHOUT_PRODUCTS)


def _plan_and_rows(
    planning: PlanningInputs, run_id: str, decisions: tuple[str, ...] = DECISIONS
) -> tuple[ReplenishmentPlan, list[run_store.PlanItemRow]]:
    """Plan, and render the plan items whose decision is in ``decisions``: CPU work for a
    worker thread, with the collector paused (already so when ``_replenish`` paused it)."""
    with collector_paused():
        plan = plan_replenishment(planning)
        return plan, plan_item_rows(plan, run_id, decisions)


def _add_products(
    early: ReplenishmentPlan,
    rows: list[run_store.PlanItemRow],
    planning: PlanningInputs,
    run_id: str,
) -> tuple[ReplenishmentPlan, list[run_store.PlanItemRow]]:
    """The plan of ``planning`` from the one made before its products were read, and every row:
    those rendered then and those of the decisions the products settle."""
    plan = with_products(early, planning.products)
    return plan, rows + plan_item_rows(plan, run_id, _WITH_PRODUCTS)
