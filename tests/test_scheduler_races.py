"""A scheduled fire and manual triggers at the same instant: the real scheduler (on virtual
time) and the real run manager against both emulators, in one process, so the test chooses
how the fire and a burst of 100 triggers interleave."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from daemon.config import load_config
from daemon.moysklad.connector import MoySkladConnector
from daemon.onec.connector import OneCConnector
from daemon.replenishment.runs import Launch, RunManager
from daemon.sandbox.dataset import build_demo_dataset
from daemon.sandbox.moysklad_emulator import MoySkladSandbox, run_moysklad_sandbox
from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox
from daemon.scheduling.clock import FakeClock
from daemon.scheduling.scheduler import Scheduler
from daemon.store import open_database
from tests.conftest import base_sections, write_config

PASSWORD, TOKEN = "onec-pass", "ms-token"
NINE_MOSCOW = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)  # a Monday, 09:00 Europe/Moscow


@pytest.mark.parametrize("delay_s", [0.0, 0.001, 0.003, 0.01, 0.05])
async def test_a_scheduled_fire_and_100_triggers_at_one_instant_start_one_run(
    tmp_path: Path, delay_s: float
) -> None:
    """The 09:00 fire comes due while 100 TriggerRun-style triggers arrive (after 0–50 ms of
    the fire's own work): one run, which every trigger gets; the fire either started it or is
    recorded skipped naming it; the outbox holds that run's documents only."""
    dataset = build_demo_dataset(60, seed=3)
    onec_box = OneCSandbox(dataset, username="hub", password=PASSWORD)
    ms_box = MoySkladSandbox(dataset.moysklad_products, token=TOKEN, weight=1)
    onec_box.latency_s = 0.1  # the run outlasts the burst, however late in the window it comes
    async with run_onec_sandbox(onec_box) as onec_url, run_moysklad_sandbox(ms_box) as ms_url:
        config = load_config(
            write_config(tmp_path / "config.toml", base_sections(tmp_path, onec_url, ms_url))
        )
        db = await open_database(tmp_path / "hub.sqlite3")
        clock = FakeClock(NINE_MOSCOW - timedelta(seconds=1))
        try:
            async with (
                OneCConnector(config.onec, SecretStr(PASSWORD)) as onec,
                MoySkladConnector(config.moysklad, SecretStr(TOKEN), None) as moysklad,
            ):
                runs = RunManager(db, lambda: config, onec, moysklad, lambda: None)

                async def launch(job: str, trigger: str, fire_id: int | None) -> Launch:
                    return await runs.trigger(job, trigger=trigger, fire_id=fire_id)

                scheduler = Scheduler(db, config.jobs, launch, clock)
                async with asyncio.TaskGroup() as group:
                    runs.attach(group)
                    loop = group.create_task(scheduler.run(), name="scheduler")
                    await clock.run_for(0)  # parked one second before 09:00
                    fired = asyncio.ensure_future(clock.run_for(2))
                    await asyncio.sleep(delay_s)
                    launches = await asyncio.gather(
                        *(runs.trigger("replenishment") for _ in range(100))
                    )
                    await fired
                    await launches[0].done.wait()
                    await clock.run_for(1)  # the scheduler records the fire's outcome
                    loop.cancel()
            runs_rows = await db.fetchall("SELECT id, trigger, status FROM runs")
            fires = await db.fetchall("SELECT outcome, run_id, detail FROM schedule_fires")
            outbox = await db.fetchall("SELECT DISTINCT run_id FROM outbox")
        finally:
            await db.close()
    assert len(runs_rows) == 1, [tuple(r) for r in runs_rows]
    run_id, trigger, status = runs_rows[0]
    assert status == "succeeded"
    assert {launch.run.id for launch in launches} == {run_id}
    started_by_a_trigger = sum(not launch.already_running for launch in launches)
    [(outcome, fire_run, detail)] = [tuple(f) for f in fires]
    if trigger == "schedule":
        assert started_by_a_trigger == 0 and (outcome, fire_run) == ("succeeded", run_id)
    else:
        assert trigger == "manual" and started_by_a_trigger == 1
        assert outcome == "skipped" and run_id in detail
    assert [r[0] for r in outbox] in ([run_id], [])
