"""The run manager in process, against both emulators and a real SQLite file: what happens to
a run whose writes the database refuses."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from pydantic import SecretStr

from daemon.config import load_config
from daemon.moysklad.connector import MoySkladConnector
from daemon.onec.connector import OneCConnector
from daemon.replenishment.runs import RunManager
from daemon.sandbox.dataset import build_demo_dataset
from daemon.sandbox.moysklad_emulator import MoySkladSandbox, run_moysklad_sandbox
from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox
from daemon.store import open_database
from tests.conftest import base_sections, write_config

PASSWORD, TOKEN = "onec-pass", "ms-token"


async def test_a_run_whose_last_write_failed_does_not_block_the_job_for_good(
    tmp_path: Path,
) -> None:
    """Another process write-locks the database while a run stores: the run fails, its final
    row cannot be written either (it stays ``running`` on disk), yet the job is free in
    memory; once the lock is gone the next trigger first writes that run's end, then starts."""
    dataset = build_demo_dataset(60, seed=3)
    onec_box = OneCSandbox(dataset, username="hub", password=PASSWORD)
    onec_box.latency_s = 0.1
    ms_box = MoySkladSandbox(dataset.moysklad_products, token=TOKEN, weight=1)
    async with run_onec_sandbox(onec_box) as onec_url, run_moysklad_sandbox(ms_box) as ms_url:
        config = load_config(
            write_config(tmp_path / "config.toml", base_sections(tmp_path, onec_url, ms_url))
        )
        path = tmp_path / "hub.sqlite3"
        db = await open_database(path)
        await db.conn.execute("PRAGMA busy_timeout = 200")  # give up on the lock quickly
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            async with (
                OneCConnector(config.onec, SecretStr(PASSWORD)) as onec,
                MoySkladConnector(config.moysklad, SecretStr(TOKEN), None) as moysklad,
                asyncio.TaskGroup() as group,
            ):
                runs = RunManager(db, lambda: config, onec, moysklad, lambda: None)
                runs.attach(group)
                first = await runs.trigger("replenishment")
                blocker.execute("BEGIN IMMEDIATE")
                await asyncio.wait_for(first.done.wait(), 20)
                (status,) = blocker.execute(
                    "SELECT status FROM runs WHERE id = ?", (first.run.id,)
                ).fetchone()
                assert status == "running", "the run's end could not be written"
                assert first.run.status == "failed" and runs.active_run("replenishment") is None
                blocker.execute("ROLLBACK")

                second = await runs.trigger("replenishment")
                assert not second.already_running and second.run.id != first.run.id
                await asyncio.wait_for(second.done.wait(), 20)
            rows = {r[0]: r[1] for r in await db.fetchall("SELECT id, status FROM runs")}
        finally:
            blocker.close()
            await db.close()
    assert rows == {first.run.id: "failed", second.run.id: "succeeded"}
