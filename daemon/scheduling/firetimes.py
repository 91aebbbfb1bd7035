"""When a cron schedule fires: wall-clock cron in an IANA zone, answered as UTC instants.

The cron expression is matched against the zone's *wall-clock* time (croniter iterates naive
local times, which is pure calendar arithmetic), and each match is then placed on the UTC time
line by one rule for the two kinds of daylight-saving change:

* a wall time that does not exist (spring forward, e.g. 02:30 on the last Sunday of March in
  Europe/Berlin) fires at the first valid instant after the gap, the moment the clocks jump
  (03:00 CEST). Several matches in one gap become that one instant, so they fire once;
* a wall time that exists twice (fall back) fires at its first occurrence only.

Why not croniter's own time-zone support: with a timezone-aware start it does the first
(spring forward lands on the jump), but in a repeated hour it yields both occurrences, so
``30 2 * * *`` in Europe/Berlin would fire twice on the last Sunday of October.

The UTC results are strictly increasing and independent of where iteration starts:
``between(a, c) == between(a, b) + between(b, c)``, which is what lets a restarted daemon pick
up exactly where the previous one stopped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

# Naive matches are monotone in time but a repeated period can hold many of them that map to
# instants already passed (a per-minute job inside a day-long fold is 1,440); no zone folds
# more than a day, so this bound is never reached by a schedule that fires at all.
_MAX_MATCHES_PER_STEP = 5_000


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")


class FireSchedule:
    """The fire times of one 5-field cron expression read in one time zone."""

    def __init__(self, cron: str, timezone: str) -> None:
        if len(cron.split()) != 5:
            raise ValueError(f"a 5-field cron expression such as '0 9 * * 1-5', got {cron!r}")
        try:
            self._zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"an IANA time zone such as 'Europe/Moscow', got {timezone!r}"
            ) from exc
        try:
            croniter(cron, datetime(2000, 1, 1))
        except (CroniterBadCronError, CroniterError, ValueError, KeyError) as exc:
            raise ValueError(f"not a valid cron expression: {cron!r} ({exc})") from exc
        self.cron = cron
        self.timezone = timezone

    def __repr__(self) -> str:
        return f"FireSchedule({self.cron!r}, {self.timezone!r})"

    def to_utc(self, wall: datetime) -> datetime:
        """Place a naive wall-clock time of the zone on the UTC time line (see module doc)."""
        first = wall.replace(tzinfo=self._zone, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=self._zone, fold=1).astimezone(UTC)
        if first.astimezone(self._zone).replace(tzinfo=None) == wall:
            return min(first, second)
        # In a gap PEP 495 gives the offsets from either side of the transition; the
        # transition instant lies between the two readings.
        return self._transition_between(min(first, second), max(first, second))

    def _transition_between(self, before: datetime, after: datetime) -> datetime:
        """The first whole second in (before, after] whose UTC offset differs from before's."""
        offset = before.astimezone(self._zone).utcoffset()
        low = int(before.timestamp())  # offset(low) == offset
        high = int(after.timestamp()) + 1
        while high - low > 1:  # bisection: at most ~log2(gap seconds) rounds
            middle = (low + high) // 2
            moment = datetime.fromtimestamp(middle, UTC)
            if moment.astimezone(self._zone).utcoffset() == offset:
                low = middle
            else:
                high = middle
        return datetime.fromtimestamp(high, UTC)

    def next_after(self, after: datetime) -> datetime | None:
        """The first fire strictly after ``after``, in UTC; None if the schedule never fires
        again (e.g. ``0 0 30 2 *``)."""
        _require_aware(after, "after")
        after = after.astimezone(UTC)
        # Matches before the wall time of ``after`` all map to instants <= after (the mapping
        # is monotone), so iteration can start there.
        wall = after.astimezone(self._zone).replace(tzinfo=None)
        matches = croniter(self.cron, wall)
        for _ in range(_MAX_MATCHES_PER_STEP):
            try:
                match: datetime = matches.get_next(datetime)
            except CroniterBadDateError:
                return None
            fire = self.to_utc(match)
            if fire > after:
                return fire
        raise RuntimeError(
            f"{self!r}: no fire after {after.isoformat()} within {_MAX_MATCHES_PER_STEP} matches"
        )

    def upcoming(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` fires strictly after ``after`` (fewer if the schedule ends)."""
        fires: list[datetime] = []
        cursor = after
        for _ in range(max(0, count)):
            fire = self.next_after(cursor)
            if fire is None:
                break
            fires.append(fire)
            cursor = fire
        return fires

    def between(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        """Fires in ``(after, until]``, oldest first, at most ``limit`` of them."""
        _require_aware(until, "until")
        fires: list[datetime] = []
        cursor = after
        for _ in range(max(0, limit)):
            fire = self.next_after(cursor)
            if fire is None or fire > until:
                break
            fires.append(fire)
            cursor = fire
        return fires


def to_unix(moment: datetime) -> int:
    """Whole unix seconds of an aware datetime (fire times are whole seconds)."""
    _require_aware(moment, "moment")
    return int(moment.timestamp())
