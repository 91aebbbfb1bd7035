"""From a claimed fire to a run and back: launching, overlap, and recording how it ended.

The scheduler decides *which* fires are due and claims them; ``FireRunner`` asks the launcher
to start the run, applies the job's overlap policy when a run is already going, and writes the
fire's outcome (succeeded/failed + run id) when the run ends. It also settles fires a previous
process left ``started``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from daemon.config import JobSection
from daemon.errors import HubError
from daemon.scheduling.launcher import Launcher, LaunchResult
from daemon.store import schedules
from daemon.store.database import Database
from daemon.store.schedules import FAILED, SKIPPED, STARTED, SUCCEEDED

_log = structlog.get_logger(__name__)

_MAX_RUN_AFTER_WAITS = 10  # run_after gives up (skipped) if the job stays busy this many runs
PAUSED_DETAIL = "job paused"


@dataclass
class _Active:
    """A run started for a fire; its outcome goes to the fire when ``done`` is set."""

    fire_id: int
    job: str
    result: LaunchResult


@dataclass
class _Waiting:
    """A claimed ``run_after`` fire waiting for ``blocker`` (another run of the job) to end."""

    fire_id: int
    trigger: str
    blocker: LaunchResult
    waits: int


class FireRunner:
    """Starts runs for claimed fires and records their outcomes.

    ``job_section(name)`` gives a job's current config, or None if it was removed or disabled
    (reloads change it). ``wake`` is set when a watched run ends, so the scheduler's loop calls
    ``settle`` promptly; ``settle`` also works by polling, e.g. before ``attach``.
    """

    def __init__(
        self,
        db: Database,
        launcher: Launcher,
        job_section: Callable[[str], JobSection | None],
        wake: asyncio.Event,
    ) -> None:
        self._db = db
        self._launcher = launcher
        self._job_section = job_section
        self._wake = wake
        self._active: dict[int, _Active] = {}
        self._waiting: dict[str, _Waiting] = {}
        self._group: asyncio.TaskGroup | None = None

    def attach(self, group: asyncio.TaskGroup | None) -> None:
        """Watch runs with tasks of ``group`` (the scheduler's loop); None detaches."""
        self._group = group

    async def fire(self, job: str, fire_id: int, trigger: str) -> None:
        """Start a run for a fire just claimed (recorded ``started``)."""
        if job in self._waiting:
            await self._skip(
                job, fire_id, "another fire of this job is waiting for the running run"
            )
            return
        await self._launch(job, fire_id, trigger, waits=0)

    async def settle(self) -> None:
        """Record the outcome of ended runs; start ``run_after`` fires whose wait is over."""
        for fire_id, active in list(self._active.items()):
            if active.result.done.is_set():
                del self._active[fire_id]
                await self._finished(active)
        for job, waiting in list(self._waiting.items()):
            if not waiting.blocker.done.is_set():
                continue
            del self._waiting[job]
            if self._job_section(job) is None:
                detail = "the job was removed or disabled while this fire waited"
            elif await schedules.is_paused(self._db, job):
                detail = PAUSED_DETAIL
            else:
                await self._launch(job, waiting.fire_id, waiting.trigger, waits=waiting.waits)
                continue
            await self._skip(job, waiting.fire_id, detail)

    async def recover(self) -> None:
        """Settle fires a previous process left ``started``: from the run's row if that run
        ended, as failed (interrupted) otherwise."""
        mine = set(self._active) | {waiting.fire_id for waiting in self._waiting.values()}
        for fire in await schedules.unfinished_fires(self._db):
            if fire.id in mine:
                continue
            status = None
            if fire.run_id is not None:
                status = await schedules.run_status(self._db, fire.run_id)
            if status in (SUCCEEDED, FAILED):
                outcome, detail = str(status), None
            elif fire.run_id is None:
                outcome, detail = FAILED, "interrupted: hubd stopped before the run started"
            else:
                outcome, detail = FAILED, "interrupted: hubd stopped during the run"
            await schedules.set_outcome(self._db, fire.id, outcome, detail=detail)
            _log.warning(
                "schedule_fire_recovered",
                job=fire.job,
                nominal_at=fire.nominal_at.isoformat(),
                outcome=outcome,
                run_id=fire.run_id,
            )

    async def _launch(self, job: str, fire_id: int, trigger: str, *, waits: int) -> None:
        try:
            result = await self._launcher(job, trigger, fire_id)
        except Exception as exc:
            # The run manager refused or broke; the fire says why and the loop carries on.
            detail = f"could not start the run: {exc}"
            await schedules.set_outcome(self._db, fire_id, FAILED, detail=detail)
            _log.error(
                "schedule_launch_failed",
                job=job,
                fire_id=fire_id,
                error=str(exc),
                exc_info=not isinstance(exc, HubError),  # a refusal needs no traceback
            )
            return
        run_id = result.run.id
        if not result.already_running:
            await schedules.set_outcome(self._db, fire_id, STARTED, run_id=run_id)
            self._active[fire_id] = _Active(fire_id, job, result)
            self._watch(result)
            _log.info(
                "schedule_fire_started", job=job, trigger=trigger, run_id=run_id, fire_id=fire_id
            )
            return
        section = self._job_section(job)
        if section is not None and section.overlap == "run_after" and waits < _MAX_RUN_AFTER_WAITS:
            detail = f"waiting for run {run_id} to end"
            await schedules.set_outcome(self._db, fire_id, STARTED, detail=detail)
            self._waiting[job] = _Waiting(fire_id, trigger, result, waits + 1)
            self._watch(result)
            _log.info("schedule_fire_waiting", job=job, running_run_id=run_id, fire_id=fire_id)
            return
        await self._skip(job, fire_id, f"run {run_id} of this job was still running")

    async def _skip(self, job: str, fire_id: int, detail: str) -> None:
        await schedules.set_outcome(self._db, fire_id, SKIPPED, detail=detail)
        _log.info("schedule_fire_skipped", job=job, count=1, reason=detail)

    async def _finished(self, active: _Active) -> None:
        run_id, status = active.result.run.id, active.result.run.status
        if status in (SUCCEEDED, FAILED):
            outcome, detail = status, None
        else:
            outcome, detail = FAILED, f"the run ended with status {status!r}"
        await schedules.set_outcome(self._db, active.fire_id, outcome, run_id=run_id, detail=detail)
        _log.info("schedule_fire_finished", job=active.job, run_id=run_id, outcome=outcome)

    def _watch(self, result: LaunchResult) -> None:
        """Wake the scheduler's loop when the run ends, so its outcome is recorded at once."""
        group = self._group
        if group is None:
            return

        async def wake_when_done(done: asyncio.Event) -> None:
            await done.wait()
            self._wake.set()

        group.create_task(wake_when_done(result.done), name=f"scheduler-watch-{result.run.id}")
