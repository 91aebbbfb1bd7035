"""SQL for the ``schedule_fires`` and ``job_state`` tables.

A fire is one nominal fire time of one job, unique per (job, nominal_at): inserting it is how
the scheduler claims the fire, so whoever inserts first runs it and a second insert (after a
restart, a reload, a clock step back) finds the row and does nothing. Outcomes::

    started ──► succeeded | failed        (the run ended; run_id names it)
    missed                                (due while the hub was down, outside catch-up)
    skipped                               (overlap with a running run, or the job was paused)

A ``started`` row with no ``run_id`` is waiting for a running run (overlap "run_after").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import aiosqlite

from daemon.errors import StoreError
from daemon.store.database import Database

STARTED = "started"
SUCCEEDED = "succeeded"
FAILED = "failed"
MISSED = "missed"
SKIPPED = "skipped"

OUTCOMES: tuple[str, ...] = (STARTED, SUCCEEDED, FAILED, MISSED, SKIPPED)

_FIRE_COLUMNS = "id, job, nominal_at, recorded_at, outcome, run_id, detail"
_MAX_LIST = 1000


@dataclass(frozen=True, slots=True)
class FireRecord:
    """One recorded fire; times are UTC."""

    id: int
    job: str
    nominal_at: datetime
    recorded_at: datetime
    outcome: str
    run_id: str | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class JobState:
    """What is persisted about a job between restarts."""

    job: str
    paused: bool
    schedule_key: str
    since_at: float
    updated_at: float


def _fire(row: aiosqlite.Row) -> FireRecord:
    return FireRecord(
        id=int(row["id"]),
        job=str(row["job"]),
        nominal_at=datetime.fromtimestamp(int(row["nominal_at"]), UTC),
        recorded_at=datetime.fromtimestamp(float(row["recorded_at"]), UTC),
        outcome=str(row["outcome"]),
        run_id=row["run_id"],
        detail=row["detail"],
    )


def _job_state(row: aiosqlite.Row) -> JobState:
    return JobState(
        job=str(row["job"]),
        paused=bool(row["paused"]),
        schedule_key=str(row["schedule_key"]),
        since_at=float(row["since_at"]),
        updated_at=float(row["updated_at"]),
    )


def _check_outcome(outcome: str) -> None:
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown fire outcome {outcome!r}; expected one of {OUTCOMES}")


# ---------------------------------------------------------------------------------------------
# Fires
# ---------------------------------------------------------------------------------------------


async def claim_fire(
    db: Database, job: str, nominal_at: int, now: float, *, detail: str | None = None
) -> int | None:
    """Record the fire as ``started``; its id, or None if the fire was already recorded."""
    async with (
        db.transaction() as conn,
        conn.execute(
            "INSERT INTO schedule_fires (job, nominal_at, recorded_at, outcome, detail) "
            "VALUES (?, ?, ?, 'started', ?) ON CONFLICT (job, nominal_at) DO NOTHING "
            "RETURNING id",
            (job, nominal_at, now, detail),
        ) as cursor,
    ):
        row = await cursor.fetchone()
    return None if row is None else int(row[0])


async def record_fires(
    db: Database, job: str, nominal_ats: Sequence[int], outcome: str, detail: str, now: float
) -> int:
    """Record fires that will not run (missed/skipped); ones already recorded are left alone.

    Returns how many rows were added.
    """
    _check_outcome(outcome)
    if not nominal_ats:
        return 0
    async with db.transaction() as conn:
        cursor = await conn.executemany(
            "INSERT INTO schedule_fires (job, nominal_at, recorded_at, outcome, detail) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (job, nominal_at) DO NOTHING",
            [(job, nominal, now, outcome, detail) for nominal in nominal_ats],
        )
        added = cursor.rowcount
        await cursor.close()
    return int(added)


async def set_outcome(
    db: Database,
    fire_id: int,
    outcome: str,
    *,
    run_id: str | None = None,
    detail: str | None = None,
) -> None:
    """Set a fire's outcome and detail; ``run_id`` is only ever filled in, never cleared."""
    _check_outcome(outcome)
    async with db.transaction() as conn:
        cursor = await conn.execute(
            "UPDATE schedule_fires SET outcome = ?, run_id = COALESCE(?, run_id), detail = ? "
            "WHERE id = ?",
            (outcome, run_id, detail, fire_id),
        )
        changed = cursor.rowcount
        await cursor.close()
    if changed != 1:
        raise StoreError(f"schedule fire {fire_id} does not exist")


async def last_fire(db: Database, job: str) -> FireRecord | None:
    """The job's fire with the latest nominal time, whatever its outcome."""
    row = await db.fetchone(
        f"SELECT {_FIRE_COLUMNS} FROM schedule_fires WHERE job = ? "
        "ORDER BY nominal_at DESC LIMIT 1",
        (job,),
    )
    return None if row is None else _fire(row)


async def recent_fires(db: Database, job: str, limit: int) -> list[FireRecord]:
    """The job's latest ``limit`` fires (at most 1000), newest first."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    rows = await db.fetchall(
        f"SELECT {_FIRE_COLUMNS} FROM schedule_fires WHERE job = ? "
        "ORDER BY nominal_at DESC LIMIT ?",
        (job, min(limit, _MAX_LIST)),
    )
    return [_fire(row) for row in rows]


async def outcome_counts(db: Database, job: str) -> dict[str, int]:
    """How many of the job's fires have each outcome; every outcome is present."""
    counts = dict.fromkeys(OUTCOMES, 0)
    rows = await db.fetchall(
        "SELECT outcome, count(*) FROM schedule_fires WHERE job = ? GROUP BY outcome", (job,)
    )
    for row in rows:
        counts[str(row[0])] = int(row[1])
    return counts


async def unfinished_fires(db: Database) -> list[FireRecord]:
    """Every fire still ``started``: at start-up, ones a previous process left behind."""
    rows = await db.fetchall(
        f"SELECT {_FIRE_COLUMNS} FROM schedule_fires WHERE outcome = 'started' ORDER BY id"
    )
    return [_fire(row) for row in rows]


async def run_status(db: Database, run_id: str) -> str | None:
    """The status of a run in ``runs`` (running | succeeded | failed), None if there is none."""
    row = await db.fetchone("SELECT status FROM runs WHERE id = ?", (run_id,))
    return None if row is None else str(row[0])


# ---------------------------------------------------------------------------------------------
# Job state
# ---------------------------------------------------------------------------------------------

_JOB_COLUMNS = "job, paused, schedule_key, since_at, updated_at"


async def get_job_state(db: Database, job: str) -> JobState | None:
    row = await db.fetchone(f"SELECT {_JOB_COLUMNS} FROM job_state WHERE job = ?", (job,))
    return None if row is None else _job_state(row)


async def is_paused(db: Database, job: str) -> bool:
    state = await get_job_state(db, job)
    return state is not None and state.paused


async def list_job_states(db: Database) -> list[JobState]:
    rows = await db.fetchall(f"SELECT {_JOB_COLUMNS} FROM job_state ORDER BY job")
    return [_job_state(row) for row in rows]


async def set_schedule(
    db: Database, job: str, schedule_key: str, since_at: float, now: float
) -> None:
    """Record the schedule a job now follows and since when; a new row starts unpaused."""
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO job_state (job, paused, updated_at, schedule_key, since_at) "
            "VALUES (?, 0, ?, ?, ?) ON CONFLICT (job) DO UPDATE SET "
            "schedule_key = excluded.schedule_key, since_at = excluded.since_at, "
            "updated_at = excluded.updated_at",
            (job, now, schedule_key, since_at),
        )


async def set_paused(db: Database, job: str, paused: bool, now: float) -> None:
    """Persist pause/resume. A job without a row gets one that owes nothing before ``now``."""
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO job_state (job, paused, updated_at, schedule_key, since_at) "
            "VALUES (?, ?, ?, '', ?) ON CONFLICT (job) DO UPDATE SET "
            "paused = excluded.paused, updated_at = excluded.updated_at",
            (job, int(paused), now, now),
        )
