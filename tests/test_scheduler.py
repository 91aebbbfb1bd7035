"""Scheduler: firing on the cron, outcomes, overlap, the control API, and the loop's lifecycle.

Time is virtual (``FakeClock``): the scheduler's sleeps advance it, so days pass in
milliseconds. The launcher is a small fake with the run manager's single-flight rule; the
database is real SQLite in tmp_path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.config import JobSection
from daemon.errors import ConfigError, NotFoundError
from daemon.scheduling.clock import FakeClock
from daemon.scheduling.scheduler import Scheduler
from daemon.store import Database, open_database, schedules
from tests.test_scheduler_support import MONDAY, FakeLauncher, history, hourly, running


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(tmp_path / "hub.db")
    yield database
    await database.close()


async def test_default_job_fires_weekdays_at_nine_moscow_only(db: Database) -> None:
    """The default job fires Monday–Friday at 09:00 Moscow, never at weekends, each once."""
    clock = FakeClock(MONDAY - timedelta(days=2))  # Saturday 00:00 UTC
    launcher = FakeLauncher()
    scheduler = Scheduler(db, {"replenishment": JobSection()}, launcher, clock)
    async with running(scheduler, clock):
        await clock.run_until(MONDAY + timedelta(days=8))  # Saturday to the Tuesday after next
    days = ["11-30", "12-01", "12-02", "12-03", "12-04", "12-07"]  # 12-05/06: the weekend
    assert await history(db) == [
        (f"{day} 06:00", "succeeded", f"run-{n}") for n, day in enumerate(days, start=1)
    ]
    assert [trigger for _, trigger, _ in launcher.launches] == ["schedule"] * 6
    assert max(clock.sleeps) <= 30.0


async def test_fire_id_of_the_claimed_row_is_passed_to_the_launcher(db: Database) -> None:
    """The launcher gets the id of the fire row recorded before the run started."""
    clock = FakeClock(MONDAY + timedelta(hours=5))
    launcher = FakeLauncher()
    async with running(Scheduler(db, {"replenishment": JobSection()}, launcher, clock), clock):
        await clock.run_for(3600)
    [(job, trigger, fire_id)] = launcher.launches
    fire = await schedules.last_fire(db, "replenishment")
    assert fire is not None and (job, trigger, fire_id) == ("replenishment", "schedule", fire.id)


async def test_overlap_skip_records_skipped_and_outcome_arrives_when_run_ends(
    db: Database,
) -> None:
    """A fire during a running run is skipped; the first fire gets its outcome at the run's end."""
    clock = FakeClock(MONDAY + timedelta(hours=8, minutes=30))
    launcher = FakeLauncher(finish=None)
    async with running(Scheduler(db, hourly(), launcher, clock), clock):
        await clock.run_until(MONDAY + timedelta(hours=10, minutes=30))
        fires = await schedules.recent_fires(db, "replenishment", 10)
        assert [(f.outcome, f.run_id) for f in reversed(fires)] == [
            ("started", "run-1"),
            ("skipped", None),
        ]
        assert fires[0].detail == "run run-1 of this job was still running"
        launcher.end("run-1", "failed")
        await clock.run_for(0)
        assert await history(db) == [
            ("11-30 09:00", "failed", "run-1"),
            ("11-30 10:00", "skipped", None),
        ]
    assert len(launcher.launches) == 1


async def test_manual_run_in_progress_makes_a_fire_skipped(db: Database) -> None:
    """A fire while an operator's run of the same job is going is skipped, not queued."""
    clock = FakeClock(MONDAY + timedelta(hours=8, minutes=30))
    launcher = FakeLauncher(finish=None)
    launcher.start("replenishment")
    async with running(Scheduler(db, hourly(), launcher, clock), clock):
        await clock.run_until(MONDAY + timedelta(hours=9, minutes=1))
    assert await history(db) == [("11-30 09:00", "skipped", None)]
    assert launcher.launches == [("replenishment", "manual", None)]


async def test_overlap_run_after_waits_then_runs_once(db: Database) -> None:
    """With run_after, a fire during a run waits, runs once after it, and later fires skip."""
    clock = FakeClock(MONDAY + timedelta(hours=8, minutes=30))
    launcher = FakeLauncher(finish=None)
    async with running(Scheduler(db, hourly(overlap="run_after"), launcher, clock), clock):
        await clock.run_until(MONDAY + timedelta(hours=11, minutes=30))
        assert await history(db) == [
            ("11-30 09:00", "started", "run-1"),
            ("11-30 10:00", "started", None),  # waiting for run-1
            ("11-30 11:00", "skipped", None),  # one waiting fire is enough
        ]
        launcher.end("run-1")
        await clock.run_for(0)
        assert [trigger for _, trigger, _ in launcher.launches] == ["schedule", "schedule"]
        launcher.end("run-2")
        await clock.run_for(0)
    assert await history(db) == [
        ("11-30 09:00", "succeeded", "run-1"),
        ("11-30 10:00", "succeeded", "run-2"),
        ("11-30 11:00", "skipped", None),
    ]


async def test_launch_error_fails_the_fire_and_the_loop_goes_on(db: Database) -> None:
    """A launcher that raises makes that fire failed (with the reason); later fires still run."""
    clock = FakeClock(MONDAY + timedelta(hours=8, minutes=30))
    launcher = FakeLauncher()
    launcher.error = RuntimeError("run manager exploded")
    async with running(Scheduler(db, hourly(), launcher, clock), clock):
        await clock.run_until(MONDAY + timedelta(hours=9, minutes=30))
        launcher.error = None
        await clock.run_until(MONDAY + timedelta(hours=10, minutes=30))
    fires = list(reversed(await schedules.recent_fires(db, "replenishment", 10)))
    assert [(f.outcome, f.detail) for f in fires] == [
        ("failed", "could not start the run: run manager exploded"),
        ("succeeded", None),
    ]


async def test_run_that_ends_without_a_final_status_is_recorded_failed(db: Database) -> None:
    """A run whose done event fires with a non-final status is a failed fire, not a success."""
    clock = FakeClock(MONDAY + timedelta(hours=8, minutes=30))
    launcher = FakeLauncher(finish="running")
    async with running(Scheduler(db, hourly(), launcher, clock), clock):
        await clock.run_until(MONDAY + timedelta(hours=9, minutes=30))
    fire = await schedules.last_fire(db, "replenishment")
    assert fire is not None
    assert (fire.outcome, fire.run_id) == ("failed", "run-1")
    assert fire.detail == "the run ended with status 'running'"


async def test_jobs_are_added_by_config_alone(db: Database) -> None:
    """Every [jobs.NAME] entry is scheduled on its own cron and zone."""
    clock = FakeClock(MONDAY)
    launcher = FakeLauncher()
    jobs = {
        "replenishment": JobSection(),
        "evening": JobSection(cron="30 18 * * *", timezone="Asia/Yekaterinburg"),
    }
    async with running(Scheduler(db, jobs, launcher, clock), clock):
        await clock.run_for(24 * 3600)
    assert await history(db, "replenishment") == [("11-30 06:00", "succeeded", "run-1")]
    assert await history(db, "evening") == [("11-30 13:30", "succeeded", "run-2")]


async def test_list_schedules_shows_last_fire_next_fires_and_counts(db: Database) -> None:
    """list_schedules gives the config, last fire with outcome and run, next 3 and the counts."""
    clock = FakeClock(MONDAY + timedelta(hours=8, minutes=30))
    launcher = FakeLauncher(finish=None)
    scheduler = Scheduler(db, hourly(), launcher, clock)
    async with running(scheduler, clock):
        await clock.run_until(MONDAY + timedelta(hours=10, minutes=30))
        [info] = await scheduler.list_schedules()
    assert (info.job, info.kind, info.cron, info.timezone) == (
        "replenishment",
        "replenishment",
        "0 * * * *",
        "Europe/Moscow",
    )
    assert (info.enabled, info.paused, info.missed, info.skipped) == (True, False, 0, 1)
    assert info.last_fire == MONDAY + timedelta(hours=10)
    assert (info.last_outcome, info.last_run_id) == ("skipped", None)
    assert info.next_fires == [MONDAY + timedelta(hours=h) for h in (11, 12, 13)]
    assert await scheduler.next_fire_times("replenishment", 2) == info.next_fires[:2]


async def test_disabled_job_never_fires_and_shows_no_next_fires(db: Database) -> None:
    """enabled = false: no fires, no next fire times, but the job is listed."""
    clock = FakeClock(MONDAY)
    launcher = FakeLauncher()
    scheduler = Scheduler(db, {"replenishment": JobSection(enabled=False)}, launcher, clock)
    async with running(scheduler, clock):
        await clock.run_for(2 * 24 * 3600)
        [info] = await scheduler.list_schedules()
    assert launcher.launches == []
    assert (info.enabled, info.next_fires) == (False, [])
    assert await scheduler.next_fire_times("replenishment", 3) == []


async def test_unknown_job_is_not_found(db: Database) -> None:
    """Pause, resume, next fire times and history of a job not in the config: NotFoundError."""
    scheduler = Scheduler(db, {"replenishment": JobSection()}, FakeLauncher(), FakeClock(MONDAY))
    with pytest.raises(NotFoundError, match="nightly"):
        await scheduler.pause("nightly")
    with pytest.raises(NotFoundError):
        await scheduler.resume("nightly")
    with pytest.raises(NotFoundError):
        await scheduler.next_fire_times("nightly", 3)
    with pytest.raises(NotFoundError):
        await scheduler.recent_fires("nightly")


async def test_reload_with_a_bad_schedule_changes_nothing(db: Database) -> None:
    """A job section that cannot be scheduled is a ConfigError naming the job; old jobs stay."""
    scheduler = Scheduler(db, {"replenishment": JobSection()}, FakeLauncher(), FakeClock(MONDAY))
    bad = JobSection.model_construct(cron="0 9 * *", timezone="Europe/Moscow", enabled=True)
    with pytest.raises(ConfigError, match=r"jobs\.nightly"):
        scheduler.reload({"replenishment": JobSection(), "nightly": bad})
    assert [info.job for info in await scheduler.list_schedules()] == ["replenishment"]


async def test_cancel_stops_the_loop_promptly_even_with_a_run_in_progress(db: Database) -> None:
    """Cancelling run() ends it at once (CancelledError propagates) while a run is watched."""
    clock = FakeClock(MONDAY + timedelta(hours=8, minutes=59))
    launcher = FakeLauncher(finish=None)
    task = asyncio.create_task(Scheduler(db, hourly(), launcher, clock).run())
    await clock.run_for(120)
    assert len(launcher.launches) == 1
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert task in done and task.cancelled()
