"""Runs of jobs: single-flight per job, phases and counts, progress for watchers.

A run of the ``replenishment`` job (its work is ``daemon.replenishment.run_job``) gathers its
inputs, plans, and stores its plan and one outbox row per document in ONE transaction, then
wakes the outbox processor. A dry run stores the plan and touches no outbox. A failed read fails
the run with a clear reason and enqueues nothing. Manual triggers and scheduled fires share the
single-flight rule here.

Single flight holds twice over. In memory, a trigger claims the job and creates the run's task
before its first ``await``, so concurrent triggers find the claim and get the running run. In
the database, a partial unique index allows one ``running`` row per job, so even a claim this
process does not know of (a bug, another process) cannot start a second run. The run's task,
not its caller, records the run: a caller that gives up (a gRPC deadline) cannot leave a run
recorded but never executed. At shutdown ``stop()`` cancels the runs; one that had not stored
its plan ends ``failed`` with reason "stopped by shutdown", one that had stays as stored.
"""

from __future__ import annotations

import asyncio
import copy
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import structlog

from daemon.config import HubConfig
from daemon.errors import DrainingError, HubError, NotFoundError, RunFailedError
from daemon.ports import MoySkladPort, OneCPort
from daemon.replenishment.run_job import ReplenishmentJob, run_to_end
from daemon.store import Database
from daemon.store import outbox as outbox_store
from daemon.store import runs as run_store
from daemon.store.runs import RunRecord

_log = structlog.get_logger(__name__)

FINAL_DOCUMENT_STATES = {"delivered", "dead", "discarded"}
STOPPED_BY_SHUTDOWN = "stopped by shutdown"


@dataclass(frozen=True)
class RunEvent:
    kind: Literal["phase", "counts", "finished", "document"]
    run: RunRecord
    phase: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    message: str = ""


@dataclass
class _Active:
    """A claimed run. ``stored`` is set once the run's row is written, or it is known that it
    will not be: ``refused`` (the store failed) or ``found`` (the database already had a
    running run of the job, which triggers then return)."""

    record: RunRecord
    events: list[RunEvent] = field(default_factory=list)
    watchers: set[asyncio.Queue[RunEvent | None]] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    stored: asyncio.Event = field(default_factory=asyncio.Event)
    refused: HubError | None = None
    found: RunRecord | None = None
    committed: bool = False  # the plan, outbox rows and final status are in the database
    task: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class Launch:
    """What a trigger or a scheduled fire got: the run, and whether it was already running."""

    run: RunRecord
    already_running: bool
    done: asyncio.Event


def new_run_id(job: str, now: float) -> str:
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{job}-{secrets.token_hex(2)}"


def delivery_summary(states: list[str]) -> str:
    if not states:
        return "none"
    if "dead" in states:
        return "failed"
    if all(s in ("delivered", "discarded") for s in states):
        return "delivered"
    return "pending"


class RunManager:
    def __init__(
        self,
        db: Database,
        config: Callable[[], HubConfig],
        onec: OneCPort,
        moysklad: MoySkladPort,
        wake_outbox: Callable[[], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._config = config
        self._clock = clock
        self._job = ReplenishmentJob(db, config, onec, moysklad, wake_outbox, clock)
        self._active: dict[str, _Active] = {}
        self._unsaved: dict[str, RunRecord] = {}  # ended runs whose final row write failed
        self._group: asyncio.TaskGroup | None = None
        self.draining = False

    def attach(self, group: asyncio.TaskGroup) -> None:
        """Runs are tasks of the daemon's TaskGroup (no fire-and-forget tasks)."""
        self._group = group

    def active_run(self, job: str) -> RunRecord | None:
        active = self._active.get(job)
        return active.record if active else None

    # ---- triggering ---------------------------------------------------------------------

    async def trigger(
        self,
        job: str,
        *,
        trigger: str = "manual",
        dry_run: bool = False,
        fire_id: int | None = None,
    ) -> Launch:
        if self.draining:
            raise DrainingError("hubd is shutting down and starts no new runs")
        jobs = self._config().jobs
        if job not in jobs:
            known = ", ".join(sorted(jobs)) or "none"
            raise NotFoundError(f"no job named {job!r} (configured jobs: {known})")
        active = self._active.get(job)
        claimed = active is None
        if active is None:
            # no await between the look-up above and the claim here: that is the rule
            active = self._claim(job, trigger, dry_run, fire_id)
        # The run's task records it; waiting for that here lets a trigger answer with a run
        # that exists, and cancelling this wait (a caller's deadline) changes nothing for it.
        await active.stored.wait()
        if active.refused is not None:
            raise active.refused
        if active.found is not None:
            return Launch(active.found, True, active.done)
        return Launch(active.record, not claimed, active.done)

    def _claim(self, job: str, trigger: str, dry_run: bool, fire_id: int | None) -> _Active:
        if self._group is None:
            raise RunFailedError("the run manager is not started")
        now = self._clock()
        record = RunRecord(
            id=new_run_id(job, now),
            job=job,
            trigger=trigger,
            dry_run=dry_run,
            status="running",
            started_at=now,
            fire_id=fire_id,
        )
        active = _Active(record)
        self._active[job] = active
        active.task = self._group.create_task(self._execute(active), name=f"run-{record.id}")
        return active

    async def stop(self) -> None:
        """Shutdown: no new runs; cancel the running ones and wait until each has ended
        (``failed``, "stopped by shutdown", unless its plan was already stored)."""
        self.draining = True
        tasks = [a.task for a in self._active.values() if a.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:  # not gather: a caller's timeout must end this wait, not wait for the runs
            await asyncio.wait(tasks)

    # ---- watching -----------------------------------------------------------------------

    async def watch(self, run_id: str) -> AsyncIterator[RunEvent]:
        active = next((a for a in self._active.values() if a.record.id == run_id), None)
        if active is not None:
            queue: asyncio.Queue[RunEvent | None] = asyncio.Queue()
            past = list(active.events)
            active.watchers.add(queue)
            try:
                # Everything emitted after the snapshot is in the queue, the "finished" event
                # included even if the run ended while the past was being sent: read the queue
                # unless the past already holds the end. (None: hubd is shutting down.)
                finished = False
                for event in past:
                    yield event
                    finished = finished or event.kind == "finished"
                while not finished and (event_or_end := await queue.get()) is not None:
                    yield event_or_end
                    finished = event_or_end.kind == "finished"
            finally:
                active.watchers.discard(queue)
            record = active.record
        else:
            record = await run_store.get_run(self._db, run_id)
            if record.status == "running":
                # started by an earlier hubd that is gone; nothing more will happen to it
                yield RunEvent("finished", record, message="run was interrupted")
                return
            yield RunEvent("finished", record)
        async for event in self._watch_delivery(record):
            yield event

    async def _watch_delivery(self, record: RunRecord) -> AsyncIterator[RunEvent]:
        """After the run: document state changes until all are final, or one waits to retry."""
        if record.dry_run or record.status != "succeeded":
            return
        seen: dict[int, str] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not self.draining:
            state = await outbox_store.run_delivery_state(self._db, record.id)
            for doc in state.documents:
                if seen.get(doc.outbox_id) != doc.state:
                    seen[doc.outbox_id] = doc.state
                    number = f" № {doc.number}" if doc.number else ""
                    error = f": {doc.last_error}" if doc.last_error else ""
                    yield RunEvent(
                        "document", record, message=f"{doc.summary}: {doc.state}{number}{error}"
                    )
            states = [d.state for d in state.documents]
            if all(s in FINAL_DOCUMENT_STATES for s in states):
                return
            if any(s in ("retry_wait", "outcome_unknown") for s in states):
                yield RunEvent(
                    "document",
                    record,
                    message="delivery continues in the background; see hubctl outbox",
                )
                return
            await asyncio.sleep(0.2)

    def close_watchers(self) -> None:
        self.draining = True
        for active in self._active.values():
            for queue in active.watchers:
                queue.put_nowait(None)

    # ---- executing ----------------------------------------------------------------------

    def _emit(self, active: _Active, event: RunEvent) -> None:
        active.events.append(event)
        for queue in active.watchers:
            queue.put_nowait(event)

    def _snapshot(self, active: _Active) -> RunRecord:
        return copy.deepcopy(active.record)

    async def _phase(self, active: _Active, name: str, counts: dict[str, int]) -> None:
        record = active.record
        now = self._clock()
        if record.phases and "seconds" not in record.phases[-1]:
            last = record.phases[-1]
            last["seconds"] = round(now - last["started_at"], 3)
        if not name:
            return
        record.phases.append({"name": name, "started_at": now})
        record.counts.update(counts)
        _log.info("run_phase", phase=name, **counts)
        self._emit(active, RunEvent("phase", self._snapshot(active), phase=name, counts=counts))

    async def _record(self, active: _Active) -> bool:
        """Write the claimed run's row; False when it must not go on (see ``_Active``)."""
        record = active.record
        try:
            await self._save_unsaved()
            found = await run_store.insert_run(self._db, record)
        except HubError as exc:
            active.refused = exc
            _log.error("run_not_recorded", error=str(exc))
            return False
        if found is not None:
            active.found = found
            _log.warning("run_already_running_in_database", running_run_id=found.id)
            return False
        return True

    async def _save_unsaved(self) -> None:
        """Retry the final writes that failed (a full disk): until one succeeds, its run stays
        ``running`` in the database and the unique index refuses every new run of the job."""
        for run_id, record in list(self._unsaved.items()):
            await run_store.update_run(self._db, record)
            del self._unsaved[run_id]
            _log.info("run_final_state_saved", saved_run_id=run_id, status=record.status)

    def _release(self, active: _Active) -> None:
        if self._active.get(active.record.job) is active:
            del self._active[active.record.job]
        active.stored.set()
        active.done.set()

    async def _execute(self, active: _Active) -> None:
        record = active.record
        with structlog.contextvars.bound_contextvars(run_id=record.id, job=record.job):
            try:
                recorded = await self._record(active)
            except BaseException:  # cancelled while recording: the triggers waiting must end
                active.refused = DrainingError("hubd is shutting down and starts no new runs")
                self._release(active)
                raise
            if not recorded:
                self._release(active)
                return
            active.stored.set()
            _log.info("run_started", trigger=record.trigger, dry_run=record.dry_run)

            async def progress(phase: str, counts: dict[str, int]) -> None:
                await self._phase(active, phase, counts)

            def committed() -> None:
                active.committed = True

            try:
                await self._job.run(record, progress, committed)
                record.status = "succeeded"
            except HubError as exc:
                record.status = "failed"
                record.reason = _reason(exc)
                _log.error("run_failed", reason=record.reason)
            except ExceptionGroup as group:
                # concurrent reads (TaskGroup) fail together: an expected failure is the first
                # hub error among them; anything else is a defect and handled as one below
                expected, unexpected = group.split(HubError)
                if expected is None or unexpected is not None:
                    record.status = "failed"
                    record.reason = "internal error: see hubd's log"
                    _log.exception("run_crashed")
                else:
                    record.status = "failed"
                    record.reason = _reason(_first_leaf(expected))
                    _log.error("run_failed", reason=record.reason)
            except asyncio.CancelledError:
                if not active.committed:
                    record.status = "failed"
                    record.reason = STOPPED_BY_SHUTDOWN
                    _log.warning("run_stopped", reason=record.reason)
                raise
            except Exception as exc:
                record.status = "failed"
                record.reason = f"internal error: {type(exc).__name__}; see hubd's log"
                _log.exception("run_crashed")
            finally:
                await self._finish(active)
            await self._prune_old_plans()

    async def _prune_old_plans(self) -> None:
        """After a run: drop the per-item plans of runs older than
        ``replenishment.plan_retention_days`` (a 20,000-item run stores 12 MB of them, so a
        year of weekday runs would keep 3 GB). The runs and their documents stay."""
        keep_days = self._config().replenishment.plan_retention_days
        try:
            runs, rows = await run_store.prune_plan_items(
                self._db, started_before=self._clock() - keep_days * 86400
            )
        except HubError as exc:  # the next run tries again
            _log.warning("plans_prune_failed", error=str(exc))
            return
        if runs:
            _log.info("plans_pruned", runs=runs, rows=rows, keep_days=keep_days)

    async def _finish(self, active: _Active) -> None:
        record = active.record
        try:
            await self._phase(active, "", {})
            record.finished_at = self._clock()
            try:
                await run_to_end(run_store.update_run(self._db, record))
            except HubError as exc:
                self._unsaved[record.id] = record
                _log.error("run_final_state_not_saved", error=str(exc))
            _log.info("run_finished", status=record.status, reason=record.reason or None)
        finally:
            self._emit(active, RunEvent("finished", self._snapshot(active), message=record.reason))
            self._release(active)


def _first_leaf(group: BaseExceptionGroup[HubError]) -> HubError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _reason(exc: HubError) -> str:
    describe = getattr(exc, "describe", None)
    text = describe() if callable(describe) else str(exc)
    return str(text)
