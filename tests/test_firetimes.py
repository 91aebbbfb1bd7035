"""Fire-time computation: cron read as wall-clock time in a zone, placed once on the UTC line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.scheduling.firetimes import FireSchedule, to_unix


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_weekdays_at_nine_moscow_fire_monday_to_friday_only() -> None:
    """The default job fires at 09:00 Moscow (06:00 UTC) on weekdays and never at weekends."""
    schedule = FireSchedule("0 9 * * 1-5", "Europe/Moscow")
    saturday = utc(2026, 11, 28, 12)
    fires = schedule.upcoming(saturday, 10)
    local = [fire.astimezone(ZoneInfo("Europe/Moscow")) for fire in fires]
    assert [day.strftime("%a") for day in local] == ["Mon", "Tue", "Wed", "Thu", "Fri"] * 2
    assert all((moment.hour, moment.minute) == (9, 0) for moment in local)
    assert fires[0] == utc(2026, 11, 30, 6)


@pytest.mark.parametrize(
    ("zone", "cron", "day_before", "expected"),
    [
        # Berlin 2026-03-29: 02:00 CET → 03:00 CEST; 02:30 does not exist.
        ("Europe/Berlin", "30 2 * * *", utc(2026, 3, 28, 12), utc(2026, 3, 29, 1, 0)),
        # New York 2026-03-08: 02:00 EST → 03:00 EDT.
        ("America/New_York", "30 2 * * *", utc(2026, 3, 7, 12), utc(2026, 3, 8, 7, 0)),
        # Lord Howe 2026-10-04: 02:00 +10:30 → 02:30 +11 (a 30-minute shift).
        ("Australia/Lord_Howe", "15 2 * * *", utc(2026, 10, 3, 2), utc(2026, 10, 3, 15, 30)),
    ],
)
def test_fire_in_skipped_hour_happens_once_at_the_jump(
    zone: str, cron: str, day_before: datetime, expected: datetime
) -> None:
    """A wall time inside a spring-forward gap fires once, at the instant the clocks jump."""
    schedule = FireSchedule(cron, zone)
    fires = schedule.between(day_before, day_before + timedelta(days=1), 10)
    assert fires == [expected]
    tz = ZoneInfo(zone)
    just_before = expected - timedelta(seconds=1)
    assert just_before.astimezone(tz).utcoffset() != expected.astimezone(tz).utcoffset()


@pytest.mark.parametrize(
    ("zone", "cron", "day_before", "expected"),
    [
        # Berlin 2026-10-25: 03:00 CEST → 02:00 CET; 02:30 happens twice.
        ("Europe/Berlin", "30 2 * * *", utc(2026, 10, 24, 12), utc(2026, 10, 25, 0, 30)),
        # New York 2026-11-01: 02:00 EDT → 01:00 EST; 01:30 happens twice.
        ("America/New_York", "30 1 * * *", utc(2026, 10, 31, 12), utc(2026, 11, 1, 5, 30)),
        # Lord Howe 2026-04-05: 02:00 +11 → 01:30 +10:30; 01:45 happens twice.
        ("Australia/Lord_Howe", "45 1 * * *", utc(2026, 4, 4, 2), utc(2026, 4, 4, 14, 45)),
    ],
)
def test_fire_in_repeated_hour_happens_once_at_first_occurrence(
    zone: str, cron: str, day_before: datetime, expected: datetime
) -> None:
    """A wall time that occurs twice in a fall-back fires once, at its first occurrence."""
    schedule = FireSchedule(cron, zone)
    assert schedule.between(day_before, day_before + timedelta(days=1), 10) == [expected]


@pytest.mark.parametrize(
    ("zone", "local_day", "wall_hours"),
    [
        ("Europe/Berlin", (2026, 3, 29), 23),  # 02:00 does not exist; its fire is 03:00's
        ("Europe/Berlin", (2026, 10, 25), 24),  # 02:00 exists twice; fires once
        ("America/New_York", (2026, 3, 8), 23),
        ("America/New_York", (2026, 11, 1), 24),
    ],
)
def test_hourly_job_fires_once_per_wall_hour_on_transition_days(
    zone: str, local_day: tuple[int, int, int], wall_hours: int
) -> None:
    """An hourly job fires once per distinct wall-clock hour on a DST-change day."""
    tz = ZoneInfo(zone)
    start = datetime(*local_day, tzinfo=tz).astimezone(UTC) - timedelta(seconds=1)
    end = (datetime(*local_day, tzinfo=tz) + timedelta(days=1)).astimezone(UTC)
    fires = FireSchedule("0 * * * *", zone).between(start, end - timedelta(seconds=1), 100)
    labels = [fire.astimezone(tz).strftime("%H:%M") for fire in fires]
    assert len(fires) == wall_hours
    assert len(set(labels)) == len(labels)
    assert fires == sorted(set(fires))


def test_ten_minute_job_never_repeats_a_wall_time_in_lord_howe_fall_back() -> None:
    """A sub-hour job over Lord Howe's 30-minute fall-back fires once per wall time."""
    tz = ZoneInfo("Australia/Lord_Howe")
    schedule = FireSchedule("*/10 * * * *", "Australia/Lord_Howe")
    fires = schedule.between(utc(2026, 4, 4, 13), utc(2026, 4, 4, 17), 100)
    labels = [fire.astimezone(tz).strftime("%H:%M") for fire in fires]
    assert len(labels) == len(set(labels))
    assert "01:40" in labels and "01:50" in labels
    # 4 hours of real time holds 30 minutes that repeat wall times: 24 - 3 fires.
    assert len(fires) == 21


def test_schedule_that_never_matches_has_no_fires() -> None:
    """A valid but impossible date (30 February) yields no fire instead of an error."""
    schedule = FireSchedule("0 0 30 2 *", "Europe/Moscow")
    assert schedule.next_after(utc(2026, 1, 1)) is None
    assert schedule.upcoming(utc(2026, 1, 1), 3) == []
    assert schedule.between(utc(2026, 1, 1), utc(2027, 1, 1), 3) == []


@pytest.mark.parametrize(
    ("cron", "zone"),
    [("0 9 * * 1-5 0", "Europe/Moscow"), ("61 9 * * *", "Europe/Moscow"), ("0 9 * * *", "Mars/X")],
)
def test_rejects_bad_cron_or_zone(cron: str, zone: str) -> None:
    """A 6-field or out-of-range cron, or an unknown zone, is a ValueError naming it."""
    with pytest.raises(ValueError, match=r"cron|zone"):
        FireSchedule(cron, zone)


def test_rejects_naive_datetimes() -> None:
    """Naive datetimes are refused: a fire time without a zone is ambiguous."""
    with pytest.raises(ValueError, match="timezone-aware"):
        FireSchedule("0 9 * * *", "UTC").next_after(datetime(2026, 1, 1))


def test_unix_round_trip() -> None:
    """Fire times round-trip through the whole unix seconds stored in the database."""
    moment = utc(2026, 3, 29, 1)
    assert datetime.fromtimestamp(to_unix(moment), UTC) == moment


ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Europe/Moscow", "UTC"]
CRONS = ["0 9 * * 1-5", "30 2 * * *", "*/20 * * * *", "0 * * * *", "45 1 * * 0", "15 2 1 * *"]
instants = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=60, deadline=None)
@given(zone=st.sampled_from(ZONES), cron=st.sampled_from(CRONS), start=instants, data=st.data())
def test_splitting_an_interval_never_loses_or_repeats_a_fire(
    zone: str, cron: str, start: datetime, data: st.DataObject
) -> None:
    """Fires over (a, c] equal fires over (a, b] then (b, c]: a restart at b changes nothing."""
    schedule = FireSchedule(cron, zone)
    end = start + timedelta(days=3)
    split = data.draw(
        st.datetimes(
            min_value=start.replace(tzinfo=None),
            max_value=end.replace(tzinfo=None),
            timezones=st.just(UTC),
        )
    )
    whole = schedule.between(start, end, 1000)
    assert whole == schedule.between(start, split, 1000) + schedule.between(split, end, 1000)


@settings(max_examples=60, deadline=None)
@given(zone=st.sampled_from(ZONES), cron=st.sampled_from(CRONS), start=instants)
def test_every_fire_matches_the_cron_in_wall_time_or_is_a_jump(
    zone: str, cron: str, start: datetime
) -> None:
    """Fires strictly increase, and each matches the cron in local time or is a DST jump."""
    tz = ZoneInfo(zone)
    fires = FireSchedule(cron, zone).upcoming(start, 40)
    assert fires == sorted(set(fires))
    assert all(fire > start for fire in fires)
    for fire in fires:
        wall = fire.astimezone(tz).replace(tzinfo=None)
        jumped = (fire - timedelta(seconds=1)).astimezone(tz).utcoffset() != fire.astimezone(
            tz
        ).utcoffset()
        assert croniter.match(cron, wall) or jumped


@settings(max_examples=40, deadline=None)
@given(zone=st.sampled_from(["UTC", "Europe/Moscow", "Asia/Tokyo"]), cron=st.sampled_from(CRONS))
def test_agrees_with_croniter_in_zones_without_dst(zone: str, cron: str) -> None:
    """Where there is no DST change, the fires are exactly croniter's own zone-aware ones."""
    tz = ZoneInfo(zone)
    start = datetime(2026, 2, 1, 7, 13, tzinfo=tz)
    expected = croniter(cron, start)
    ours = FireSchedule(cron, zone).upcoming(start, 25)
    theirs = [expected.get_next(datetime).astimezone(UTC) for _ in range(25)]
    assert ours == theirs
