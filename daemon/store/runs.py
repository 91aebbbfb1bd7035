"""SQL for the ``runs`` and ``plan_items`` tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from daemon.errors import NotFoundError, StoreError
from daemon.store.database import Database

#: Why a run left ``running`` by a daemon that is gone was closed (at start-up, or by 0006).
INTERRUPTED = "interrupted: hubd stopped; nothing was enqueued"


@dataclass
class RunRecord:
    id: str
    job: str
    trigger: str
    dry_run: bool
    status: str  # running | succeeded | failed
    started_at: float
    reason: str = ""
    finished_at: float | None = None
    phases: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    fire_id: int | None = None


@dataclass(frozen=True)
class PlanItemRecord:
    target: str
    item_key: str
    code: str
    article: str
    name: str
    decision: str
    reason: str
    detail: dict[str, Any]


_COLUMNS = (
    "id, job, trigger, dry_run, status, reason, started_at, finished_at, phases_json,"
    " counts_json, fire_id"
)


def _run(row: aiosqlite.Row) -> RunRecord:
    return RunRecord(
        id=row["id"],
        job=row["job"],
        trigger=row["trigger"],
        dry_run=bool(row["dry_run"]),
        status=row["status"],
        reason=row["reason"] or "",
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        phases=json.loads(row["phases_json"]),
        counts=json.loads(row["counts_json"]),
        fire_id=row["fire_id"],
    )


async def insert_run(db: Database, run: RunRecord) -> RunRecord | None:
    """Record a new running run. If the job already has a running run (the partial unique
    index ``runs_one_running_per_job``), nothing is written and that run is returned."""
    try:
        async with db.transaction() as conn:
            try:
                await conn.execute(
                    f"INSERT INTO runs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run.id,
                        run.job,
                        run.trigger,
                        int(run.dry_run),
                        run.status,
                        run.reason or None,
                        run.started_at,
                        run.finished_at,
                        json.dumps(run.phases),
                        json.dumps(run.counts),
                        run.fire_id,
                    ),
                )
            except aiosqlite.IntegrityError:
                cursor = await conn.execute(
                    f"SELECT {_COLUMNS} FROM runs WHERE job = ? AND status = 'running'",
                    (run.job,),
                )
                row = await cursor.fetchone()
                if row is None:  # not the one-running-run index: e.g. a reused id
                    raise
                return _run(row)
    except aiosqlite.Error as exc:
        raise StoreError(f"could not record run {run.id}: {exc}") from exc
    return None


async def save_progress(conn: aiosqlite.Connection, run: RunRecord) -> None:
    """Write the run's status, reason, phases and counts (inside the caller's transaction)."""
    await conn.execute(
        "UPDATE runs SET status = ?, reason = ?, finished_at = ?, phases_json = ?,"
        " counts_json = ? WHERE id = ?",
        (
            run.status,
            run.reason or None,
            run.finished_at,
            json.dumps(run.phases),
            json.dumps(run.counts),
            run.id,
        ),
    )


async def update_run(db: Database, run: RunRecord) -> None:
    try:
        async with db.transaction() as conn:
            await save_progress(conn, run)
    except aiosqlite.Error as exc:
        raise StoreError(f"could not record the state of run {run.id}: {exc}") from exc


#: run_id, target, item_key, code, article, name, decision, reason, detail_json
PlanItemRow = tuple[str, str, str, str, str, str, str, str, str]


async def insert_plan_item_rows(conn: aiosqlite.Connection, rows: list[PlanItemRow]) -> None:
    await conn.executemany(
        "INSERT INTO plan_items (run_id, target, item_key, code, article, name, decision,"
        " reason, detail_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


async def get_run(db: Database, run_id: str) -> RunRecord:
    row = await db.fetchone(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", (run_id,))
    if row is None:
        raise NotFoundError(f"no run with id {run_id!r}")
    return _run(row)


async def list_runs(db: Database, job: str, limit: int) -> list[RunRecord]:
    if job:
        rows = await db.fetchall(
            f"SELECT {_COLUMNS} FROM runs WHERE job = ? ORDER BY started_at DESC LIMIT ?",
            (job, limit),
        )
    else:
        rows = await db.fetchall(
            f"SELECT {_COLUMNS} FROM runs ORDER BY started_at DESC LIMIT ?", (limit,)
        )
    return [_run(r) for r in rows]


async def last_run_per_job(db: Database) -> list[RunRecord]:
    rows = await db.fetchall(
        f"SELECT {_COLUMNS} FROM runs r WHERE started_at ="
        " (SELECT MAX(started_at) FROM runs WHERE job = r.job) ORDER BY job"
    )
    return [_run(r) for r in rows]


async def plan_items(db: Database, run_id: str) -> list[PlanItemRecord]:
    rows = await db.fetchall(
        "SELECT target, item_key, code, article, name, decision, reason, detail_json"
        " FROM plan_items WHERE run_id = ? ORDER BY target, code, item_key",
        (run_id,),
    )
    return [
        PlanItemRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7])) for r in rows
    ]


async def prune_plan_items(db: Database, started_before: float) -> tuple[int, int]:
    """Remove the plan items of finished runs started before ``started_before``; the runs
    themselves stay. Returns (runs whose plan was removed, rows removed)."""
    async with db.transaction() as conn:
        cursor = await conn.execute(
            "SELECT DISTINCT run_id FROM plan_items WHERE run_id IN"
            " (SELECT id FROM runs WHERE started_at < ? AND status != 'running')",
            (started_before,),
        )
        runs = [r[0] for r in await cursor.fetchall()]
        removed = 0
        for run_id in runs:
            deleted = await conn.execute("DELETE FROM plan_items WHERE run_id = ?", (run_id,))
            removed += deleted.rowcount
        return len(runs), removed


async def fail_interrupted_runs(db: Database, now: float) -> Sequence[str]:
    """Runs still 'running' at start-up were cut off by a stop or crash: mark them failed.

    Only a daemon holding the state lock calls this, so no live process owns such a run.
    Nothing of theirs was enqueued (the plan, the outbox rows and the status 'succeeded'
    commit together at the end).
    """
    async with db.transaction() as conn:
        cursor = await conn.execute(
            "UPDATE runs SET status = 'failed', finished_at = ?, reason = ?"
            " WHERE status = 'running' RETURNING id",
            (now, INTERRUPTED),
        )
        return [r[0] for r in await cursor.fetchall()]
