"""The database's own guarantee of one running run per job (migration 0006), for writers in one
process and in several, and start-up's closing of runs a dead daemon left running."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from daemon.store import open_database
from daemon.store import runs as run_store
from daemon.store.runs import INTERRUPTED, RunRecord


def _run(run_id: str, job: str = "replenishment", status: str = "running") -> RunRecord:
    return RunRecord(
        id=run_id, job=job, trigger="manual", dry_run=False, status=status, started_at=time.time()
    )


async def test_a_second_running_run_of_a_job_is_not_written_and_the_first_is_returned(
    tmp_path: Path,
) -> None:
    """Inserting a running run while the job has one writes nothing and returns the running
    one; another job, or the same job once its run ended, inserts normally."""
    db = await open_database(tmp_path / "hub.sqlite3")
    try:
        assert await run_store.insert_run(db, _run("a")) is None
        found = await run_store.insert_run(db, _run("b"))
        assert found is not None and found.id == "a" and found.status == "running"
        assert await run_store.insert_run(db, _run("c", job="other")) is None
        first = await run_store.get_run(db, "a")
        first.status, first.finished_at = "succeeded", time.time()
        await run_store.update_run(db, first)
        assert await run_store.insert_run(db, _run("d")) is None
        ids = [r[0] for r in await db.fetchall("SELECT id FROM runs ORDER BY id")]
        assert ids == ["a", "c", "d"]
    finally:
        await db.close()


async def test_concurrent_inserts_from_separate_connections_write_one_running_run(
    tmp_path: Path,
) -> None:
    """Eight connections (as eight processes would have) each insert 25 runs of one job at
    once: exactly one row is written and every other insert is told which run is running."""
    path = tmp_path / "hub.sqlite3"
    await (await open_database(path)).close()  # migrated once, before the crowd
    dbs = [await open_database(path) for _ in range(8)]
    try:
        answers = await asyncio.gather(
            *(run_store.insert_run(dbs[i % 8], _run(f"r{i:03}")) for i in range(200))
        )
        rows = await dbs[0].fetchall("SELECT id FROM runs")
        assert len(rows) == 1
        winner = rows[0][0]
        assert answers.count(None) == 1
        assert {a.id for a in answers if a is not None} == {winner}
    finally:
        for db in dbs:
            await db.close()


async def test_migration_0006_closes_leftover_running_runs_before_building_the_index(
    tmp_path: Path,
) -> None:
    """A version-5 database with two runs of one job left running (the old race) migrates:
    both are closed as interrupted, with a finish time, and the index then holds."""
    path = tmp_path / "hub.sqlite3"
    old = await open_database(path, migrate_to=5)
    for run_id in ("x1", "x2"):
        await run_store.insert_run(old, _run(run_id))
    await old.close()
    db = await open_database(path)
    try:
        rows = await db.fetchall("SELECT status, reason, finished_at FROM runs ORDER BY id")
        assert [(r[0], r[1]) for r in rows] == [("failed", INTERRUPTED)] * 2
        assert all(r[2] and abs(r[2] - time.time()) < 60 for r in rows)
        assert await run_store.insert_run(db, _run("y")) is None
        assert (await run_store.insert_run(db, _run("z"))) is not None
    finally:
        await db.close()


async def test_start_up_closes_runs_left_running_as_interrupted(tmp_path: Path) -> None:
    """fail_interrupted_runs marks every running run failed "interrupted: hubd stopped" and
    leaves finished runs alone; a new run of the job can then start."""
    db = await open_database(tmp_path / "hub.sqlite3")
    try:
        await run_store.insert_run(db, _run("gone"))
        await run_store.insert_run(db, _run("done", job="other"))
        done = await run_store.get_run(db, "done")
        done.status = "succeeded"
        await run_store.update_run(db, done)
        closed = await run_store.fail_interrupted_runs(db, time.time())
        assert list(closed) == ["gone"]
        gone = await run_store.get_run(db, "gone")
        assert gone.status == "failed" and gone.reason.startswith("interrupted: hubd stopped")
        assert (await run_store.get_run(db, "done")).status == "succeeded"
        assert await run_store.insert_run(db, _run("next")) is None
    finally:
        await db.close()
