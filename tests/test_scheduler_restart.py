"""Scheduler across restarts: at most once per fire, catch-up and missed fires, pause, reload.

A "restart" is a new ``Scheduler`` over the same SQLite file with a new clock, as a new hubd
process would be.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon.config import JobSection
from daemon.scheduling.clock import FakeClock
from daemon.scheduling.scheduler import Scheduler
from daemon.store import Database, open_database, schedules
from tests.test_scheduler_support import MONDAY, FakeLauncher, history, running

FIRE = MONDAY + timedelta(hours=6)  # Monday 09:00 Moscow
DAY = timedelta(days=1)
DEFAULT = {"replenishment": JobSection()}


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(tmp_path / "hub.db")
    yield database
    await database.close()


async def run_between(
    db: Database,
    start: datetime,
    stop: datetime,
    jobs: dict[str, JobSection] | None = None,
    launcher: FakeLauncher | None = None,
) -> FakeLauncher:
    """One hubd lifetime: a fresh scheduler from ``start`` to ``stop`` (wall clock)."""
    launcher = launcher or FakeLauncher()
    clock = FakeClock(start)
    async with running(Scheduler(db, jobs or DEFAULT, launcher, clock), clock):
        await clock.run_until(stop)
    return launcher


@pytest.mark.parametrize(
    ("stop", "start"),
    [(-1, -1), (-1, 1), (1, 1), (1, 2)],
    ids=["restart-1s-before", "down-across-the-fire", "restart-1s-after", "down-1s-after"],
)
async def test_restart_next_to_a_fire_runs_it_exactly_once(
    db: Database, stop: int, start: int
) -> None:
    """Stopping and starting a second around a fire runs that fire exactly once."""
    first = await run_between(db, FIRE - timedelta(hours=1), FIRE + timedelta(seconds=stop))
    second = await run_between(db, FIRE + timedelta(seconds=start), FIRE + timedelta(hours=1))
    assert len(first.launches) + len(second.launches) == 1
    assert [(when, outcome) for when, outcome, _ in await history(db)] == [
        ("11-30 06:00", "succeeded")
    ]


async def test_downtime_catches_up_the_last_fire_and_records_the_rest_missed(
    db: Database,
) -> None:
    """Down Monday→Thursday: Thursday's fire (1 h late) runs as catch_up; Tue and Wed missed."""
    await run_between(db, FIRE - timedelta(hours=1), FIRE + timedelta(hours=1))
    with capture_logs() as logs:
        later = await run_between(
            db,
            FIRE + 3 * DAY + timedelta(hours=1),
            FIRE + 3 * DAY + timedelta(hours=2),
        )
    assert [(job, trigger) for job, trigger, _ in later.launches] == [("replenishment", "catch_up")]
    assert [(when, outcome) for when, outcome, _ in await history(db)] == [
        ("11-30 06:00", "succeeded"),
        ("12-01 06:00", "missed"),
        ("12-02 06:00", "missed"),
        ("12-03 06:00", "succeeded"),
    ]
    missed = [entry for entry in logs if entry["event"] == "schedule_fire_missed"]
    assert [(e["count"], e["first"], e["last"]) for e in missed] == [
        (2, "2026-12-01T06:00:00+00:00", "2026-12-02T06:00:00+00:00")
    ]
    [info] = await Scheduler(
        db, DEFAULT, FakeLauncher(), FakeClock(FIRE + 4 * DAY)
    ).list_schedules()
    assert info.missed == 2


async def test_downtime_beyond_the_catch_up_window_runs_nothing(db: Database) -> None:
    """Back 4 h after Thursday's fire (window 3 h): Tue, Wed and Thu are missed, none run."""
    await run_between(db, FIRE - timedelta(hours=1), FIRE + timedelta(hours=1))
    later = await run_between(
        db, FIRE + 3 * DAY + timedelta(hours=4), FIRE + 3 * DAY + timedelta(hours=5)
    )
    assert later.launches == []
    assert [(when, outcome) for when, outcome, _ in await history(db)] == [
        ("11-30 06:00", "succeeded"),
        ("12-01 06:00", "missed"),
        ("12-02 06:00", "missed"),
        ("12-03 06:00", "missed"),
    ]


async def test_fresh_install_does_not_catch_up_history(db: Database) -> None:
    """The first start, an hour after a fire time, records and runs nothing before it."""
    launcher = await run_between(db, FIRE + timedelta(hours=1), FIRE + DAY + timedelta(hours=1))
    assert await history(db) == [("12-01 06:00", "succeeded", "run-1")]
    assert [trigger for _, trigger, _ in launcher.launches] == ["schedule"]


async def test_pause_survives_restart_and_paused_fires_are_skipped_not_caught_up(
    db: Database,
) -> None:
    """A paused job's fires are skipped, also after a restart and during downtime; resume runs
    the next fire and catches none of the skipped ones up."""
    launcher = FakeLauncher()
    clock = FakeClock(FIRE - timedelta(hours=1))
    scheduler = Scheduler(db, DEFAULT, launcher, clock)
    async with running(scheduler, clock):
        await scheduler.pause("replenishment")
        await clock.run_until(FIRE + timedelta(hours=1))
    # hubd is down Tuesday and Wednesday, still paused
    clock = FakeClock(FIRE + 2 * DAY + timedelta(hours=1))
    scheduler = Scheduler(db, DEFAULT, launcher, clock)
    async with running(scheduler, clock):
        [info] = await scheduler.list_schedules()
        assert info.paused
        await scheduler.resume("replenishment")
        await clock.run_until(FIRE + 3 * DAY + timedelta(hours=1))
    fires = list(reversed(await schedules.recent_fires(db, "replenishment", 10)))
    assert [(f.nominal_at.strftime("%m-%d"), f.outcome, f.detail) for f in fires[:3]] == [
        ("11-30", "skipped", "job paused"),
        ("12-01", "skipped", "job paused"),
        ("12-02", "skipped", "job paused"),
    ]
    assert [(f.nominal_at.strftime("%m-%d"), f.outcome) for f in fires[3:]] == [
        ("12-03", "succeeded")
    ]
    assert len(launcher.launches) == 1


async def test_reload_keeps_history_and_does_not_rerun_a_fire(db: Database) -> None:
    """Reloading (same, changed, earlier cron) keeps every fire and never repeats one."""
    launcher = FakeLauncher()
    clock = FakeClock(FIRE - timedelta(hours=1))
    scheduler = Scheduler(db, DEFAULT, launcher, clock)
    async with running(scheduler, clock):
        await clock.run_until(FIRE + timedelta(minutes=30))
        scheduler.reload(DEFAULT)
        await clock.run_for(60)
        # 09:00 and 10:00 Moscow: 09:00 already ran, 10:00 is still to come
        scheduler.reload({"replenishment": JobSection(cron="0 9,10 * * 1-5")})
        await clock.run_until(FIRE + timedelta(hours=1, minutes=30))
        # 08:00 Moscow is already past today: not owed, next is tomorrow
        scheduler.reload({"replenishment": JobSection(cron="0 8 * * 1-5")})
        await clock.run_until(FIRE + DAY)
    assert await history(db) == [
        ("11-30 06:00", "succeeded", "run-1"),
        ("11-30 07:00", "succeeded", "run-2"),
        ("12-01 05:00", "succeeded", "run-3"),
    ]


async def test_schedule_changed_while_down_owes_nothing_from_before_the_start(
    db: Database,
) -> None:
    """A cron changed between runs of hubd does not catch up fires of the new cron."""
    await run_between(db, FIRE - timedelta(hours=1), FIRE + timedelta(hours=1))
    earlier = {"replenishment": JobSection(cron="0 8 * * 1-5")}  # 05:00 UTC
    back = FIRE + DAY + timedelta(hours=1)  # Tuesday 07:00 UTC, 2 h after the new 05:00
    launcher = await run_between(db, back, back + timedelta(hours=20), earlier)
    assert launcher.launches == []
    assert await history(db) == [("11-30 06:00", "succeeded", "run-1")]


async def test_fires_left_started_by_a_dead_process_are_settled_on_start(db: Database) -> None:
    """Fires a killed hubd left 'started' take their run's final status, else failed."""
    now = FIRE.timestamp()
    ids: list[int] = []
    for days_ago in (3, 2, 1):
        fire_id = await schedules.claim_fire(db, "replenishment", int(now) - days_ago * 86400, now)
        assert fire_id is not None
        ids.append(fire_id)
    async with db.transaction() as conn:
        for run_id, status, fire_id in (
            ("r-ok", "succeeded", ids[0]),
            ("r-gone", "running", ids[1]),
        ):
            await conn.execute(
                "INSERT INTO runs (id, job, trigger, status, started_at, fire_id) "
                "VALUES (?, 'replenishment', 'schedule', ?, ?, ?)",
                (run_id, status, now, fire_id),
            )
    await schedules.set_outcome(db, ids[0], "started", run_id="r-ok")
    await schedules.set_outcome(db, ids[1], "started", run_id="r-gone")
    launcher = await run_between(db, FIRE - timedelta(hours=2), FIRE - timedelta(hours=1))
    fires = list(reversed(await schedules.recent_fires(db, "replenishment", 10)))
    assert [(f.outcome, f.run_id, f.detail) for f in fires] == [
        ("succeeded", "r-ok", None),
        ("failed", "r-gone", "interrupted: hubd stopped during the run"),
        ("failed", None, "interrupted: hubd stopped before the run started"),
    ]
    assert launcher.launches == []


async def test_long_outage_of_a_minute_job_is_recorded_in_full(db: Database) -> None:
    """A day down for an every-minute job: 1,438 missed fires recorded, the last one runs."""
    every_minute = {"replenishment": JobSection(cron="* * * * *", timezone="UTC")}
    await run_between(db, MONDAY, MONDAY + timedelta(seconds=90), every_minute)
    back = MONDAY + DAY + timedelta(seconds=30)
    launcher = await run_between(db, back, back + timedelta(seconds=1), every_minute)
    counts = await schedules.outcome_counts(db, "replenishment")
    assert (counts["missed"], counts["succeeded"]) == (1438, 2)
    assert [trigger for _, trigger, _ in launcher.launches] == ["schedule"]
    last = await schedules.last_fire(db, "replenishment")
    assert last is not None and last.nominal_at == MONDAY + DAY


async def test_disabled_period_is_not_caught_up_when_enabled_again(db: Database) -> None:
    """Disabled by reload over a fire and enabled again later: that fire is not owed."""
    launcher = FakeLauncher()
    clock = FakeClock(FIRE - timedelta(hours=1))
    scheduler = Scheduler(db, DEFAULT, launcher, clock)
    async with running(scheduler, clock):
        await clock.run_until(FIRE + timedelta(hours=1))
        scheduler.reload({"replenishment": JobSection(enabled=False)})
        await clock.run_until(FIRE + DAY + timedelta(hours=1))
        scheduler.reload(DEFAULT)
        await clock.run_until(FIRE + 2 * DAY + timedelta(hours=1))
    assert [(when, outcome) for when, outcome, _ in await history(db)] == [
        ("11-30 06:00", "succeeded"),
        ("12-02 06:00", "succeeded"),
    ]
