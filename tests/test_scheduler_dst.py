"""Scheduler over daylight-saving changes and wall-clock jumps: every nominal fire exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from structlog.testing import capture_logs

from daemon.config import JobSection
from daemon.scheduling.clock import FakeClock
from daemon.scheduling.scheduler import Scheduler
from daemon.store import Database, open_database, schedules
from tests.test_scheduler_support import MONDAY, FakeLauncher, history, hourly, running


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(tmp_path / "hub.db")
    yield database
    await database.close()


def local_midnight(zone: str, day: tuple[int, int, int]) -> datetime:
    return datetime(*day, tzinfo=ZoneInfo(zone)).astimezone(UTC)


async def wall_labels(db: Database, job: str, zone: str) -> list[str]:
    fires = reversed(await schedules.recent_fires(db, job, 1000))
    return [fire.nominal_at.astimezone(ZoneInfo(zone)).strftime("%H:%M") for fire in fires]


TRANSITIONS = [
    # zone, local day, daily cron inside the skipped/repeated time, its one UTC fire, and how
    # many distinct quarter-hour wall times the day has (96 minus those in a skipped gap)
    ("Europe/Berlin", (2026, 3, 29), "30 2 * * *", datetime(2026, 3, 29, 1, 0), 92),
    ("Europe/Berlin", (2026, 10, 25), "30 2 * * *", datetime(2026, 10, 25, 0, 30), 96),
    ("America/New_York", (2026, 3, 8), "30 2 * * *", datetime(2026, 3, 8, 7, 0), 92),
    ("America/New_York", (2026, 11, 1), "30 1 * * *", datetime(2026, 11, 1, 5, 30), 96),
    ("Australia/Lord_Howe", (2026, 10, 4), "15 2 * * *", datetime(2026, 10, 3, 15, 30), 94),
    ("Australia/Lord_Howe", (2026, 4, 5), "45 1 * * *", datetime(2026, 4, 4, 14, 45), 96),
]


@pytest.mark.parametrize(
    ("zone", "day", "daily_cron", "daily_fire", "quarters"),
    TRANSITIONS,
    ids=[f"{zone}-{day[1]:02d}" for zone, day, *_ in TRANSITIONS],
)
async def test_dst_change_fires_each_nominal_time_exactly_once(
    db: Database,
    zone: str,
    day: tuple[int, int, int],
    daily_cron: str,
    daily_fire: datetime,
    quarters: int,
) -> None:
    """Across a spring-forward or fall-back, a job in the skipped/repeated time fires once, and
    a quarter-hourly job fires once per wall time of the day."""
    jobs = {
        "daily": JobSection(cron=daily_cron, timezone=zone),
        "quarterly": JobSection(cron="*/15 * * * *", timezone=zone),
    }
    start = local_midnight(zone, day) - timedelta(minutes=1)
    end = local_midnight(zone, (day[0], day[1], day[2] + 1)) - timedelta(minutes=1)
    launcher = FakeLauncher()
    clock = FakeClock(start)
    async with running(Scheduler(db, jobs, launcher, clock), clock):
        await clock.run_until(end)
    assert [(f.nominal_at, f.outcome) for f in await schedules.recent_fires(db, "daily", 10)] == [
        (daily_fire.replace(tzinfo=UTC), "succeeded")
    ]
    labels = await wall_labels(db, "quarterly", zone)
    assert len(labels) == len(set(labels)) == quarters
    assert len(launcher.launches) == quarters + 1
    counts = await schedules.outcome_counts(db, "quarterly")
    assert counts["succeeded"] == quarters


async def test_restart_inside_the_repeated_hour_does_not_repeat_its_fires(db: Database) -> None:
    """Stopped and restarted during the second pass of 02:xx in Berlin: no quarter fires twice."""
    jobs = {"quarterly": JobSection(cron="*/15 * * * *", timezone="Europe/Berlin")}
    start = local_midnight("Europe/Berlin", (2026, 10, 25)) - timedelta(minutes=1)
    second_pass = datetime(2026, 10, 25, 1, 10, tzinfo=UTC)  # 02:10 CET, after 02:xx CEST
    for begin, stop in ((start, second_pass), (second_pass, start + timedelta(hours=25))):
        clock = FakeClock(begin)
        async with running(Scheduler(db, jobs, FakeLauncher(), clock), clock):
            await clock.run_until(stop)
    labels = await wall_labels(db, "quarterly", "Europe/Berlin")
    assert len(labels) == len(set(labels)) == 96


async def test_wall_clock_jumps_forward_and_back_never_double_fire(db: Database) -> None:
    """A step forward over a fire runs it once (catch_up) within one sleep chunk; a step back
    over fires already run repeats none of them."""
    launcher = FakeLauncher()
    clock = FakeClock(MONDAY + timedelta(hours=8, minutes=30))
    scheduler = Scheduler(db, hourly(timezone="UTC"), launcher, clock)
    with capture_logs() as logs:
        async with running(scheduler, clock):
            await clock.run_until(MONDAY + timedelta(hours=8, minutes=50))
            clock.jump(3600)  # wall 09:50: the 09:00 fire is now 50 minutes late
            await clock.run_for(30)
            assert [trigger for _, trigger, _ in launcher.launches] == ["catch_up"]
            await clock.run_until(MONDAY + timedelta(hours=10, minutes=10))
            clock.jump(-3600)  # wall 09:10 again: 09:00 and 10:00 already ran
            await clock.run_until(MONDAY + timedelta(hours=11, minutes=5))
    assert await history(db) == [
        ("11-30 09:00", "succeeded", "run-1"),
        ("11-30 10:00", "succeeded", "run-2"),
        ("11-30 11:00", "succeeded", "run-3"),
    ]
    assert [trigger for _, trigger, _ in launcher.launches] == ["catch_up", "schedule", "schedule"]
    jumps = [round(entry["seconds"]) for entry in logs if entry["event"] == "wall_clock_jump"]
    assert jumps == [3600, -3600]
    assert max(clock.sleeps) <= 30.0


async def test_backward_step_just_after_the_daily_fire_does_not_run_it_again(
    db: Database,
) -> None:
    """The wall clock steps back an hour right after 09:00 Moscow: the day still has one run."""
    launcher = FakeLauncher()
    fire = MONDAY + timedelta(hours=6)
    clock = FakeClock(fire - timedelta(minutes=5))
    async with running(Scheduler(db, {"replenishment": JobSection()}, launcher, clock), clock):
        await clock.run_until(fire + timedelta(seconds=30))
        clock.jump(-3600)
        await clock.run_until(fire + timedelta(hours=12))
    assert await history(db) == [("11-30 06:00", "succeeded", "run-1")]


async def test_machine_sleep_over_several_fires_is_handled_like_downtime(db: Database) -> None:
    """The machine sleeps Monday→Thursday (wall clock leaps, monotonic does not): Tue and Wed
    are missed, Thursday's fire runs once as catch_up."""
    launcher = FakeLauncher()
    clock = FakeClock(MONDAY + timedelta(hours=7))
    async with running(Scheduler(db, {"replenishment": JobSection()}, launcher, clock), clock):
        clock.jump(3 * 86400)  # Thursday 07:00 UTC, an hour after Thursday's fire
        await clock.run_for(60)
    assert [(when, outcome) for when, outcome, _ in await history(db)] == [
        ("12-01 06:00", "missed"),
        ("12-02 06:00", "missed"),
        ("12-03 06:00", "succeeded"),
    ]
    assert [trigger for _, trigger, _ in launcher.launches] == ["catch_up"]
