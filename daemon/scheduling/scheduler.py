"""The scheduler: fires each configured job on its cron, at most once per nominal fire time.

It does not run jobs. For each due fire it first claims the fire in ``schedule_fires`` (unique
per job and nominal UTC time; a conflict means it was handled before, by this process or an
earlier one), then asks the *launcher* (the run manager, which applies the same single-flight
rule to ``hubctl run``) to start a run, and records the run's outcome when it ends.

Policies, per job (``[jobs.NAME]`` in config.toml):

* **Due fires.** On every wake the fires between the last one handled and "now" are due. All
  but the latest are recorded ``missed`` (logged as ``schedule_fire_missed``). The latest runs
  with trigger ``schedule`` if it is at most ``grace_s`` (60 s) late, with trigger ``catch_up``
  if it is at most ``catch_up_window_s`` late (the hub was down or the machine slept), and is
  recorded ``missed`` otherwise. The same rule covers start-up after downtime and a wall clock
  that stepped forward.
* **Where "handled" starts.** The later of the job's last recorded fire and the moment the
  job's current schedule was first seen (``job_state.since_at``), so a fresh install, a newly
  added or re-enabled job, or a changed cron/zone owes nothing from before.
* **Overlap.** A fire while a run of the job is going is recorded ``skipped`` (overlap
  ``skip``), or (``run_after``) waits for that run to end and then starts once; a further fire
  while one is waiting is ``skipped``.
* **Pause.** A paused job's fires are recorded ``skipped`` with detail "job paused", so the
  history shows them and resuming does not catch them up. Pause is kept in ``job_state`` and
  survives restarts.
* **Clock.** The loop sleeps at most ``max_sleep_s`` (30 s) of monotonic time, then reads the
  wall clock again: a wall-clock jump is noticed within one chunk. A step back never fires
  twice (handled fires are behind the cursor and in the table); a step forward makes the
  skipped-over fires due under the rules above.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import structlog

from daemon.config import JobSection
from daemon.errors import ConfigError, DiskFullError, NotFoundError
from daemon.scheduling.clock import Clock, SystemClock
from daemon.scheduling.fire_runs import PAUSED_DETAIL, FireRunner
from daemon.scheduling.firetimes import FireSchedule, to_unix
from daemon.scheduling.launcher import Launcher
from daemon.store import schedules
from daemon.store.database import Database
from daemon.store.schedules import MISSED, SKIPPED, FireRecord

_log = structlog.get_logger(__name__)

MAX_SLEEP_S = 30.0
ON_TIME_GRACE_S = 60.0
_BATCH = 500  # due fires recorded per transaction; a long outage of a per-minute job is many
_MAX_BATCHES_PER_STEP = 20
_JUMP_LOG_S = 5.0
_DISK_FULL_RETRY_S = 5.0  # how soon a pass refused by a full disk is tried again
_MISSED = (
    "hubd was down, the machine slept or the clock jumped past it; only the latest fire "
    "within catch_up_window_s is caught up"
)


# ---------------------------------------------------------------------------------------------
# What the control plane sees
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """One job's schedule as ``hubctl schedules`` shows it; times are UTC."""

    job: str
    kind: str
    cron: str
    timezone: str
    enabled: bool
    paused: bool
    overlap: str
    catch_up_window_s: float
    last_fire: datetime | None  # nominal time of the latest recorded fire
    last_outcome: str | None
    last_run_id: str | None
    last_detail: str | None
    next_fires: list[datetime]  # the next three (none when disabled)
    missed: int
    skipped: int


# ---------------------------------------------------------------------------------------------
# Internal state
# ---------------------------------------------------------------------------------------------


def _schedule_key(section: JobSection) -> str:
    return f"{section.cron}|{section.timezone}" if section.enabled else ""


@dataclass
class _Job:
    name: str
    section: JobSection
    schedule: FireSchedule
    key: str
    cursor: datetime | None = None  # the latest nominal time handled; None: load from the store
    next_fire: datetime | None = None  # schedule.next_after(cursor), kept to make wakes cheap


def _build_job(name: str, section: JobSection) -> _Job:
    try:
        schedule = FireSchedule(section.cron, section.timezone)
    except ValueError as exc:
        raise ConfigError("config", f"jobs.{name}", str(exc)) from exc
    return _Job(name, section, schedule, _schedule_key(section))


def _late(now: datetime, nominal: datetime) -> float:
    return (now - nominal).total_seconds()


class Scheduler:
    """Fires the configured jobs through ``launcher``; see the module docstring."""

    def __init__(
        self,
        db: Database,
        jobs: Mapping[str, JobSection],
        launcher: Launcher,
        clock: Clock | None = None,
        *,
        max_sleep_s: float = MAX_SLEEP_S,
        grace_s: float = ON_TIME_GRACE_S,
    ) -> None:
        if max_sleep_s <= 0:
            raise ValueError("max_sleep_s must be positive")
        self._db = db
        self._clock: Clock = SystemClock() if clock is None else clock
        self._max_sleep_s = max_sleep_s
        self._grace_s = grace_s
        self._jobs = {name: _build_job(name, section) for name, section in jobs.items()}
        self._needs_sync = True
        self._wake = asyncio.Event()
        self._runner = FireRunner(db, launcher, self._enabled_section, self._wake)

    # ---- control plane --------------------------------------------------------------------

    def _enabled_section(self, job: str) -> JobSection | None:
        found = self._jobs.get(job)
        return found.section if found is not None and found.section.enabled else None

    def _job(self, job: str) -> _Job:
        found = self._jobs.get(job)
        if found is None:
            known = ", ".join(sorted(self._jobs)) or "none"
            raise NotFoundError(f"no job named {job!r} (configured jobs: {known})")
        return found

    async def list_schedules(self) -> list[ScheduleInfo]:
        """Every configured job, in config order."""
        now = self._clock.now()
        infos = []
        for job in list(self._jobs.values()):
            state = await schedules.get_job_state(self._db, job.name)
            last = await schedules.last_fire(self._db, job.name)
            counts = await schedules.outcome_counts(self._db, job.name)
            section = job.section
            infos.append(
                ScheduleInfo(
                    job=job.name,
                    kind=section.kind,
                    cron=section.cron,
                    timezone=section.timezone,
                    enabled=section.enabled,
                    paused=state is not None and state.paused,
                    overlap=section.overlap,
                    catch_up_window_s=section.catch_up_window_s,
                    last_fire=last.nominal_at if last else None,
                    last_outcome=last.outcome if last else None,
                    last_run_id=last.run_id if last else None,
                    last_detail=last.detail if last else None,
                    next_fires=self._upcoming(job, last, now, 3),
                    missed=counts[MISSED],
                    skipped=counts[SKIPPED],
                )
            )
        return infos

    async def next_fire_times(self, job: str, n: int) -> list[datetime]:
        """The job's next ``n`` fire times (UTC, n capped at 1000); empty when disabled."""
        found = self._job(job)
        last = await schedules.last_fire(self._db, job)
        return self._upcoming(found, last, self._clock.now(), max(0, min(n, 1000)))

    async def recent_fires(self, job: str, limit: int = 20) -> list[FireRecord]:
        """The job's latest recorded fires, newest first (missed and skipped ones included)."""
        self._job(job)
        return await schedules.recent_fires(self._db, job, limit)

    def _upcoming(
        self, job: _Job, last: FireRecord | None, now: datetime, n: int
    ) -> list[datetime]:
        if not job.section.enabled:
            return []
        after = now
        for handled in (job.cursor, last.nominal_at if last else None):
            if handled is not None and handled > after:
                after = handled
        return job.schedule.upcoming(after, n)

    async def pause(self, job: str) -> None:
        """Stop firing ``job`` (its fires are recorded skipped) until ``resume``; persisted."""
        self._job(job)
        await schedules.set_paused(self._db, job, True, self._clock.now().timestamp())
        _log.info("schedule_paused", job=job)
        self._wake.set()

    async def resume(self, job: str) -> None:
        """Fire ``job`` again from its next fire time; fires skipped while paused stay so."""
        self._job(job)
        await schedules.set_paused(self._db, job, False, self._clock.now().timestamp())
        _log.info("schedule_resumed", job=job)
        self._wake.set()

    def reload(self, jobs: Mapping[str, JobSection]) -> None:
        """Switch to a new set of jobs. History stays; a job whose cron, zone or enabled flag
        changed owes nothing from before now; unchanged jobs keep their place. A bad cron or
        zone is a ``ConfigError`` and changes nothing."""
        new = {name: _build_job(name, section) for name, section in jobs.items()}
        for name, job in new.items():
            old = self._jobs.get(name)
            if old is not None and old.key == job.key:
                job.cursor, job.next_fire = old.cursor, old.next_fire
        _log.info(
            "schedule_reloaded",
            added=sorted(new.keys() - self._jobs.keys()),
            removed=sorted(self._jobs.keys() - new.keys()),
            changed=sorted(
                n for n in new.keys() & self._jobs.keys() if new[n].section != self._jobs[n].section
            ),
        )
        self._jobs = new
        self._needs_sync = True
        self._wake.set()

    # ---- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """The long-lived loop; it ends only by cancellation, which it never swallows."""
        async with asyncio.TaskGroup() as group:
            self._runner.attach(group)
            try:
                recovered = False
                _log.info("scheduler_started", jobs=sorted(self._jobs))
                wall, mono = self._clock.now(), self._clock.monotonic()
                disk_full = False
                while True:  # a daemon loop: each pass is bounded, cancellation ends it
                    self._wake.clear()
                    try:
                        if not recovered:
                            await self._runner.recover()
                            recovered = True
                        delay = await self._step()
                        disk_full = False
                    except DiskFullError as exc:
                        # Nothing due was recorded, so the next pass fires it (late, within
                        # catch_up_window_s) once the disk takes writes again.
                        if not disk_full:
                            _log.error("scheduler_paused_disk_full", error=str(exc))
                        disk_full = True
                        delay = _DISK_FULL_RETRY_S
                    await self._clock.sleep(delay, self._wake)
                    wall, mono = self._note_jump(wall, mono)
            finally:
                self._runner.attach(None)

    def _note_jump(self, wall: datetime, mono: float) -> tuple[datetime, float]:
        now_wall, now_mono = self._clock.now(), self._clock.monotonic()
        drift = _late(now_wall, wall) - (now_mono - mono)
        if abs(drift) > _JUMP_LOG_S:
            _log.warning("wall_clock_jump", seconds=round(drift, 3))
        return now_wall, now_mono

    async def _step(self) -> float:
        """Handle everything due now; return how long to sleep."""
        now = self._clock.now()
        if self._needs_sync:
            self._needs_sync = False
            await self._sync_states(now)
        await self._runner.settle()
        for job in list(self._jobs.values()):
            if job.section.enabled:
                await self._process_due(job, now)
        await self._runner.settle()  # runs that ended at once
        return self._sleep_for()

    def _sleep_for(self) -> float:
        fires = [
            job.next_fire for job in self._jobs.values() if job.next_fire and job.section.enabled
        ]
        if not fires:
            return self._max_sleep_s
        until = _late(min(fires), self._clock.now())
        return min(self._max_sleep_s, max(0.0, until))

    async def _sync_states(self, now: datetime) -> None:
        """Make ``job_state`` follow the config: a new or changed schedule starts owing now."""
        stamp = now.timestamp()
        states = {state.job: state for state in await schedules.list_job_states(self._db)}
        for job in list(self._jobs.values()):
            state = states.get(job.name)
            if state is None or state.schedule_key != job.key:
                await schedules.set_schedule(self._db, job.name, job.key, stamp, stamp)
                job.cursor = job.next_fire = None
                if state is not None:
                    _log.info("schedule_changed", job=job.name, schedule=job.key or "disabled")
        for name, state in states.items():
            if name not in self._jobs and state.schedule_key:
                await schedules.set_schedule(self._db, name, "", stamp, stamp)

    def _advance(self, job: _Job, cursor: datetime) -> None:
        job.cursor = cursor
        job.next_fire = job.schedule.next_after(cursor)

    async def _load_cursor(self, job: _Job, now: datetime) -> None:
        state = await schedules.get_job_state(self._db, job.name)
        last = await schedules.last_fire(self._db, job.name)
        cursor = now if state is None else datetime.fromtimestamp(state.since_at, now.tzinfo)
        if last is not None and last.nominal_at > cursor:
            cursor = last.nominal_at
        self._advance(job, cursor)

    async def _process_due(self, job: _Job, now: datetime) -> None:
        if job.cursor is None:
            await self._load_cursor(job, now)
        if job.cursor is None or job.next_fire is None or job.next_fire > now:
            return
        paused = await schedules.is_paused(self._db, job.name)
        for _ in range(_MAX_BATCHES_PER_STEP):
            due = job.schedule.between(job.cursor, now, _BATCH + 1)
            if not due:
                return
            if len(due) > _BATCH:
                await self._record_not_run(job, due[:_BATCH], paused, now)
                self._advance(job, due[_BATCH - 1])
                continue
            late = _late(now, due[-1])
            if paused or late > max(self._grace_s, job.section.catch_up_window_s):
                await self._record_not_run(job, due, paused, now)
            else:
                await self._record_not_run(job, due[:-1], paused, now)
                trigger = "schedule" if late <= self._grace_s else "catch_up"
                await self._fire(job, due[-1], trigger, now)
            self._advance(job, due[-1])
            return

    async def _record_not_run(
        self, job: _Job, fires: list[datetime], paused: bool, now: datetime
    ) -> None:
        """Record fires that will not run: skipped while paused, missed otherwise."""
        if not fires:
            return
        outcome, detail = (SKIPPED, PAUSED_DETAIL) if paused else (MISSED, _MISSED)
        added = await schedules.record_fires(
            self._db, job.name, [to_unix(f) for f in fires], outcome, detail, now.timestamp()
        )
        log = _log.info if paused else _log.warning
        log(
            "schedule_fire_skipped" if paused else "schedule_fire_missed",
            job=job.name,
            count=added,
            first=fires[0].isoformat(),
            last=fires[-1].isoformat(),
            reason=detail,
        )

    async def _fire(self, job: _Job, nominal: datetime, trigger: str, now: datetime) -> None:
        fire_id = await schedules.claim_fire(self._db, job.name, to_unix(nominal), now.timestamp())
        if fire_id is None:
            _log.info(
                "schedule_fire_already_recorded", job=job.name, nominal_at=nominal.isoformat()
            )
            return
        await self._runner.fire(job.name, fire_id, trigger)
