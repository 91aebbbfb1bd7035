"""Shared by the scheduler tests: a fake launcher at the edge, and helpers to drive the loop.

The fake launcher has the run manager's single-flight rule (one run per job at a time) and
ends runs at once or when the test says; everything else in the tests is the real thing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from daemon.config import JobSection
from daemon.scheduling.clock import FakeClock
from daemon.scheduling.scheduler import Scheduler
from daemon.store import Database, schedules

MONDAY = datetime(2026, 11, 30, tzinfo=UTC)  # 09:00 Moscow is 06:00 UTC


@dataclass
class FakeRun:
    id: str
    status: str = "running"


@dataclass(frozen=True)
class FakeLaunch:
    run: FakeRun
    already_running: bool
    done: asyncio.Event


class FakeLauncher:
    """One run per job at a time, like the run manager; runs end at once or when told."""

    def __init__(self, *, finish: str | None = "succeeded") -> None:
        self.finish = finish
        self.error: Exception | None = None
        self.launches: list[tuple[str, str, int | None]] = []
        self.runs: dict[str, FakeLaunch] = {}
        self._current: dict[str, FakeLaunch] = {}

    async def __call__(self, job: str, trigger: str, fire_id: int | None) -> FakeLaunch:
        if self.error is not None:
            raise self.error
        current = self._current.get(job)
        if current is not None and not current.done.is_set():
            return FakeLaunch(current.run, True, current.done)
        return self.start(job, trigger, fire_id)

    def start(self, job: str, trigger: str = "manual", fire_id: int | None = None) -> FakeLaunch:
        self.launches.append((job, trigger, fire_id))
        launch = FakeLaunch(FakeRun(f"run-{len(self.launches)}"), False, asyncio.Event())
        self.runs[launch.run.id] = self._current[job] = launch
        if self.finish is not None:
            self.end(launch.run.id, self.finish)
        return launch

    def end(self, run_id: str, status: str = "succeeded") -> None:
        self.runs[run_id].run.status = status
        self.runs[run_id].done.set()


@asynccontextmanager
async def running(scheduler: Scheduler, clock: FakeClock) -> AsyncIterator[asyncio.Task[None]]:
    """Run the loop until the block ends; then it must stop by cancellation, not otherwise."""
    task = asyncio.create_task(scheduler.run(), name="scheduler-under-test")
    try:
        await clock.run_for(0)
        yield task
    finally:
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            raise AssertionError("the scheduler loop crashed") from task.exception()
    assert task.cancelled()


async def history(db: Database, job: str = "replenishment") -> list[tuple[str, str, str | None]]:
    """(nominal UTC time, outcome, run id) of every recorded fire, oldest first."""
    fires = await schedules.recent_fires(db, job, 1000)
    return [(f.nominal_at.strftime("%m-%d %H:%M"), f.outcome, f.run_id) for f in reversed(fires)]


def hourly(**options: object) -> dict[str, JobSection]:
    return {"replenishment": JobSection.model_validate({"cron": "0 * * * *", **options})}
