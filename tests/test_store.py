"""The SQLite store: pragmas, versioned migrations from empty and from every earlier version."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from daemon.errors import StoreError
from daemon.store import open_database
from daemon.store.database import LATEST_VERSION, migrations

TABLES = {"runs", "plan_items", "outbox", "documents", "schedule_fires", "job_state",
          "integration_logs"}  # fmt: skip


async def _tables(path: Path) -> set[str]:
    db = await open_database(path)
    try:
        rows = await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {r[0] for r in rows}
    finally:
        await db.close()


async def test_empty_file_is_migrated_to_latest(tmp_path: Path) -> None:
    """A new database gets every table and the latest user_version, in WAL with FULL sync."""
    db = await open_database(tmp_path / "hub.sqlite3")
    try:
        assert await db.schema_version() == LATEST_VERSION
        journal = await db.fetchone("PRAGMA journal_mode")
        sync = await db.fetchone("PRAGMA synchronous")
        assert journal is not None and journal[0] == "wal"
        assert sync is not None and sync[0] == 2  # FULL
    finally:
        await db.close()
    tables = await _tables(tmp_path / "hub.sqlite3")
    assert tables >= TABLES


@pytest.mark.parametrize("start", range(1, LATEST_VERSION + 1))
async def test_every_earlier_version_upgrades(tmp_path: Path, start: int) -> None:
    """A database left at any earlier version is brought to the latest, keeping its rows."""
    path = tmp_path / "hub.sqlite3"
    old = await open_database(path, migrate_to=start)
    assert await old.schema_version() == start
    async with old.transaction() as conn:
        await conn.execute("INSERT INTO job_state (job, paused, updated_at) VALUES ('x', 1, 0)")
    await old.close()
    db = await open_database(path)
    try:
        assert await db.schema_version() == LATEST_VERSION
        row = await db.fetchone("SELECT paused FROM job_state WHERE job = 'x'")
        assert row is not None and row[0] == 1
    finally:
        await db.close()


async def test_reopening_is_idempotent(tmp_path: Path) -> None:
    """Opening a migrated database again changes nothing."""
    path = tmp_path / "hub.sqlite3"
    for _ in range(3):
        db = await open_database(path)
        assert await db.schema_version() == LATEST_VERSION
        await db.close()


async def test_newer_database_is_refused(tmp_path: Path) -> None:
    """A database written by a newer hub is not touched."""
    path = tmp_path / "hub.sqlite3"
    db = await open_database(path)
    await db.conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 5}")
    await db.close()
    with pytest.raises(StoreError, match="newer than this hub"):
        await open_database(path)


def test_migrations_are_numbered_without_gaps() -> None:
    """Migration files are 0001..n."""
    assert [m[0] for m in migrations()] == list(range(1, LATEST_VERSION + 1))


async def test_failed_transaction_rolls_back(tmp_path: Path) -> None:
    """An exception inside transaction() leaves nothing behind."""
    db = await open_database(tmp_path / "hub.sqlite3")
    try:
        with pytest.raises(RuntimeError):
            async with db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO job_state (job, paused, updated_at) VALUES ('y', 0, 0)"
                )
                raise RuntimeError("boom")
        assert await db.fetchone("SELECT * FROM job_state WHERE job = 'y'") is None
    finally:
        await db.close()


async def test_plan_items_keep_their_rows_and_are_found_by_run_after_0004(tmp_path: Path) -> None:
    """Plan items stored before 0004 are all still there, in plan order, and the plan query
    finds a run's items through the run_id index, not by scanning every run's items."""
    from daemon.store import runs as run_store
    from daemon.store.runs import RunRecord

    path = tmp_path / "hub.sqlite3"
    old = await open_database(path, migrate_to=3)
    for run_id in ("run-a", "run-b"):
        await run_store.insert_run(old, RunRecord(run_id, "replenishment", "manual", True, "ok", 0))
        async with old.transaction() as conn:
            await run_store.insert_plan_item_rows(
                conn,
                [
                    (run_id, "Магазин", f"key-{n}", f"УТ-{9 - n}", "", "", "ok", "fine", "{}")
                    for n in range(10)
                ],
            )
    await old.close()
    db = await open_database(path)
    try:
        items = await run_store.plan_items(db, "run-b")
        assert [i.code for i in items] == [f"УТ-{n}" for n in range(10)]
        assert {i.item_key for i in items} == {f"key-{n}" for n in range(10)}
        plan = await db.fetchall(
            "EXPLAIN QUERY PLAN SELECT target, item_key FROM plan_items WHERE run_id = ?"
            " ORDER BY target, code, item_key",
            ("run-b",),
        )
        assert any("plan_items_by_run" in str(row[-1]) for row in plan), [r[-1] for r in plan]
    finally:
        await db.close()


async def test_a_write_lock_held_by_another_process_is_a_clear_store_error(
    tmp_path: Path,
) -> None:
    """A write that waits out busy_timeout behind another process's lock fails as "database
    busy" naming the file (not an internal error), and writes work again once it is released."""
    db = await open_database(tmp_path / "hub.sqlite3")
    await db.conn.execute("PRAGMA busy_timeout=100")  # the test need not wait 5 s
    other = sqlite3.connect(tmp_path / "hub.sqlite3")
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match=r"database busy: .*hub\.sqlite3"):
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO job_state (job, updated_at) VALUES ('a', 0)")
        other.rollback()
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO job_state (job, updated_at) VALUES ('a', 0)")
        assert await db.fetchone("SELECT job FROM job_state") is not None
    finally:
        other.close()
        await db.close()
