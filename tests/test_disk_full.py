"""A full disk fails the write that hit it and nothing else (issue 19).

The disk is made full with SQLite's own page cap (``hub.max_database_mb``, ``PRAGMA
max_page_count``), which refuses writes with the same ``SQLITE_FULL`` a full filesystem gives;
``test_real_full_filesystem_*`` uses a 2 MiB tmpfs where mounting one is allowed (root).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import tomllib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from daemon.errors import DiskFullError
from daemon.observability.logstream import LogHub, LogRecord, read_history
from daemon.sandbox.dataset import DemoDataset, build_demo_dataset
from daemon.scheduling.clock import FakeClock
from daemon.scheduling.scheduler import Scheduler
from daemon.store import Database, open_database
from daemon.store.outbox import depth_by_state, get_entry
from tests.conftest import Sandboxes, base_sections, write_config
from tests.hostile import Replace, hostile
from tests.test_outbox_connectors import customer_order, hub, transfer
from tests.test_scheduler_support import MONDAY, FakeLauncher, history, hourly, running

T0 = 1_800_000_000.0


async def fill_to_the_cap(db: Database) -> int:
    """Cap the database at its size and fill the room left in ``documents`` and the log
    history, so the next row added to either is refused; returns the filler rows written."""
    await db.set_size_limit(0.001)  # SQLite keeps the cap at the current size
    await db.conn.execute("PRAGMA foreign_keys=OFF")  # fillers point at no outbox row
    written = 0
    try:
        for n in range(1, 100_000):
            try:
                async with db.transaction() as conn:
                    await conn.execute(
                        "INSERT INTO documents (outbox_id, run_id, system, kind, external_id, "
                        "number, created_at) VALUES (?, 'filler', '1c', 'filler', 'x', 'x', 0)",
                        (-n,),
                    )
                    await conn.execute(
                        "INSERT INTO integration_logs (ts, level, event, logger, data_json) "
                        "VALUES (0, 'debug', 'filler', 'test', '{}')"
                    )
            except DiskFullError:
                return written
            written += 1
    finally:
        await db.conn.execute("PRAGMA foreign_keys=ON")
    raise AssertionError("the cap never refused a write")


async def fill_schedule_fires(db: Database) -> None:
    """Fill the room left in ``schedule_fires``; the cap must already be set."""
    for n in range(1, 100_000):
        try:
            async with db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO schedule_fires (job, nominal_at, recorded_at, outcome) "
                    "VALUES ('zz-filler', ?, 0, 'missed')",
                    (n,),
                )
        except DiskFullError:
            return
    raise AssertionError("the cap never refused a write")


async def test_the_scheduler_outlives_a_full_disk_and_fires_once_room_returns(
    db: Database,
) -> None:
    """A fire due while its record is refused is not lost and does not end the loop: it runs
    once, late, when the disk takes the record."""
    clock = FakeClock(MONDAY + timedelta(hours=5, minutes=30))
    launcher = FakeLauncher()
    async with running(Scheduler(db, hourly(), launcher, clock), clock) as loop:
        await fill_to_the_cap(db)
        await fill_schedule_fires(db)
        await clock.run_for(3600)  # 06:00 falls due while full
        assert launcher.launches == [] and not loop.done()
        assert db.health.full
        await db.set_size_limit(0)
        await clock.run_for(60)
    assert [trigger for _, trigger, _ in launcher.launches] == ["catch_up"]
    assert [(when, outcome) for when, outcome, _ in await history(db)] == [
        ("11-30 06:00", "succeeded")
    ]


@pytest.fixture(scope="module")
def dataset() -> DemoDataset:
    return build_demo_dataset(48, seed=9)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(tmp_path / "hub.db")
    async with database.transaction() as conn:
        await conn.execute(
            "INSERT INTO runs (id, job, trigger, status, started_at) "
            "VALUES ('run-1', 'replenishment', 'manual', 'succeeded', ?)",
            (T0,),
        )
    try:
        yield database
    finally:
        await database.close()


async def test_a_refused_write_rolls_back_and_leaves_the_connection_usable(db: Database) -> None:
    """A write refused for room is a DiskFullError saying "disk full:" and naming the cap; the
    connection is out of its transaction, reads work, and a raised cap lets writes through."""
    db.health.quiet_s = 0
    await fill_to_the_cap(db)
    with pytest.raises(DiskFullError, match=r"^disk full: .*hub.db reached its size limit"):
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO runs (id, job, trigger, status, started_at) "
                               "VALUES ('r2', 'j', 'manual', 'failed', 0)")  # fmt: skip
            await conn.executemany(
                "INSERT INTO integration_logs (ts, level, event, logger, data_json) "
                "VALUES (0, 'info', ?, 'test', '{}')",
                [(f"event {n}" * 20,) for n in range(200)],
            )
    assert not db.conn.in_transaction
    assert await db.fetchone("SELECT 1 FROM runs WHERE id = 'r2'") is None
    status = db.health.status()
    assert status.full and status.problem.startswith("disk full:") and status.refused_writes >= 1
    await db.set_size_limit(0)
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO runs (id, job, trigger, status, started_at) "
                           "VALUES ('r2', 'j', 'manual', 'failed', 0)")  # fmt: skip
    assert not db.health.status().full


async def test_a_delivery_whose_record_is_refused_is_looked_up_and_never_sent_twice(
    db: Database, dataset: DemoDataset
) -> None:
    """Both documents are created while the disk refuses to record it; the processor keeps
    running, and once there is room it looks them up and records them: one of each, remotely."""
    db.health.quiet_s = 0
    async with hub(db, dataset) as h:
        await h.put(transfer(dataset), customer_order(h.sandbox))
        await fill_to_the_cap(db)
        loop = asyncio.create_task(h.processor.run())
        try:
            async with asyncio.timeout(20):
                while not h.box.transfer_orders() or not db.health.full:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            assert not loop.done(), "the processor must survive a full disk"
            depth = await depth_by_state(db)
            assert depth["delivered"] == 0, depth
            await db.set_size_limit(0)
            h.processor.wake()
            async with asyncio.timeout(30):
                while (await depth_by_state(db))["delivered"] < 2:
                    await asyncio.sleep(0.05)
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
    assert len(h.box.transfer_orders()) == 1 and len(h.sandbox.orders()) == 1
    rows = await db.fetchall("SELECT outbox_id, external_id FROM documents WHERE outbox_id > 0")
    assert len(rows) == 2
    # the passes the full disk broke off did not use up the transfer's attempts
    assert (await get_entry(db, 1)).attempts == 1
    assert not db.health.full


async def test_log_history_waits_for_room_and_drops_only_past_its_bound(db: Database) -> None:
    """The history writer outlives a full disk, keeps at most ``max_unwritten`` events, writes
    them when there is room, and logs how many it had to drop."""
    db.health.quiet_s = 0
    log_hub = LogHub(history_batch=5, max_unwritten=40)
    log_hub.bind_loop()
    await fill_to_the_cap(db)
    writer = asyncio.create_task(log_hub.run_history_writer(db, interval_s=0.05))
    try:
        for n in range(100):
            log_hub.publish(LogRecord(time.time(), "info", f"while-full-{n}", "t", "", "", {}))
            await asyncio.sleep(0.005)
        await asyncio.sleep(1.5)
        assert not writer.done(), "the history writer must survive a full disk"
        assert log_hub.history_dropped >= 60
        await db.set_size_limit(0)
        async with asyncio.timeout(10):
            while True:
                history = await read_history(db, last=1000)
                events = [r.event for r in history if r.event.startswith("while-full-")]
                if events and log_hub.history_dropped == 0:
                    break
                await asyncio.sleep(0.05)
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    assert events[-1] == "while-full-99" and 0 < len(events) <= 40
    assert events == sorted(events, key=lambda e: int(e.rsplit("-", 1)[1]))


# ---- hubd as a subprocess ------------------------------------------------------------------


def _config(sandboxes: Sandboxes, tmp_path: Path, onec_url: str, state_dir: Path) -> Path:
    urls = tomllib.loads(sandboxes.config.read_text(encoding="utf-8"))
    sections = base_sections(tmp_path, onec_url, urls["moysklad"]["base_url"])
    sections["hub"]["state_dir"] = str(state_dir)
    sections["outbox"].update({"lease_s": 2, "interval_s": 0.5})
    sections["onec"].update({"retry_base_s": 0.05, "retry_cap_s": 0.1})
    return write_config(tmp_path / "config.toml", sections)


def _set_cap(config: Path, mb: float) -> None:
    text = config.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.startswith("max_database_mb")]
    at = lines.index("[hub]") + 1
    lines.insert(at, f"max_database_mb = {mb!r}")
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")


async def _storage(hub_process: Any) -> dict[str, Any]:
    reply = await hub_process.ctl("--json", "status")
    assert reply.code == 0, reply.err
    storage: dict[str, Any] = json.loads(reply.out).get("storage", {})
    return storage


async def _wait_storage(hub_process: Any, full: bool, timeout: float = 30) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            storage = await _storage(hub_process)
            if bool(storage.get("full")) == full:
                return storage
            await asyncio.sleep(0.2)


async def _all_delivered(hub_process: Any, count: int, timeout: float = 60) -> list[Any]:
    async with asyncio.timeout(timeout):
        while True:
            listing = await hub_process.ctl("--json", "outbox")
            entries: list[Any] = json.loads(listing.out)["entries"]
            if len(entries) == count and all(e["state"] == "delivered" for e in entries):
                return entries
            await asyncio.sleep(0.3)


async def test_hubd_at_its_database_cap_keeps_serving_and_delivers_once_when_raised(
    sandboxes: Sandboxes, hub_factory: Any, tmp_path: Path
) -> None:
    """hubd with documents waiting and the database at its cap: a run fails "disk full: …",
    hubctl status answers and says so, deliveries go on; a raised cap (reload) records
    every delivery, each document exists once, and status is back to normal."""
    upstream = tomllib.loads(sandboxes.config.read_text(encoding="utf-8"))["onec"]["base_url"]
    async with hostile(upstream) as (proxy, proxy_url):
        config = _config(sandboxes, tmp_path, proxy_url, tmp_path / "state")
        hub_process = await hub_factory(config, sandboxes.socket_path, **sandboxes.env)
        await hub_process.wait_socket()
        # 1C does every write but answers it 503, and its lookups by key 503 too: its documents
        # wait (outcome unknown) while the run's own reads go through
        busy = Replace(status=503, body=b"busy", content_type="text/plain")
        order = quote("Document_ЗаказНаПеремещение")
        proxy.arm(busy, rf"^(POST|PATCH) |^GET [^?]*/{order}\(guid")
        run = await hub_process.ctl("--json", "run", "replenishment", "--follow", timeout=120)
        assert run.code == 0, (run.out, run.err)
        await asyncio.sleep(1)
        waiting = json.loads((await hub_process.ctl("--json", "outbox")).out)["entries"]
        assert [e["state"] for e in waiting if e["kind"] == "onec_transfer_order"] and not any(
            e["state"] == "delivered" for e in waiting if e["kind"] == "onec_transfer_order"
        ), waiting

        _set_cap(config, 0.01)
        assert (await hub_process.ctl("reload")).code == 0
        dry = await hub_process.ctl("--json", "run", "replenishment", "--dry-run", "--follow")
        assert dry.code == 1
        if dry.out.strip():  # the run was recorded, and failed storing its plan
            finished = json.loads(dry.out.splitlines()[-1])
            assert finished["run"]["status"] == "failed"
            assert finished["run"]["reason"].startswith("disk full: "), finished
        else:  # even the run's own row found no room: the trigger says so
            assert dry.err.startswith("hubctl: disk full: "), dry.err
        storage = await _wait_storage(hub_process, full=True)
        assert (
            storage["problem"].startswith("disk full: ") and "max_database_mb" in storage["problem"]
        )
        human = await hub_process.ctl("status")
        assert human.code == 0 and "disk full: " in human.out

        proxy.disarm()
        await asyncio.sleep(3)  # lookups and deliveries while full (lease 2 s, retries ≤ 1 s)
        assert (await _storage(hub_process))["full"]
        assert (await hub_process.ctl("health")).code == 0
        assert hub_process.proc.returncode is None

        _set_cap(config, 0)
        assert (await hub_process.ctl("reload")).code == 0
        entries = await _all_delivered(hub_process, 3)
        assert len(sandboxes.onec.transfer_orders()) == 2 and len(sandboxes.moysklad.orders()) == 1
        assert sorted(e["kind"] for e in entries).count("onec_transfer_order") == 2
        await _wait_storage(hub_process, full=False)
        human = await hub_process.ctl("status")
        assert "  storage:  database " in human.out and "disk full" not in human.out, human.out
        assert await hub_process.stop() == 0
    events = [
        json.loads(line)["event"] for line in hub_process.stdout.splitlines() if line[:1] == "{"
    ]
    assert "storage_full" in events and "storage_writable_again" in events


async def _sh(*args: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await proc.wait()


async def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    await _sh("mkdir", "-p", str(where))
    return await _sh("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)) == 0


async def test_real_full_filesystem_keeps_hubd_up_and_a_restart_serves(
    sandboxes: Sandboxes, hub_factory: Any, tmp_path: Path
) -> None:
    """On a 2 MiB tmpfs (root only): runs until the disk is full never stop hubd, status says
    "disk full", a restart on a disk full to the last block starts and serves (no room even
    for the WAL index), and freeing space resumes everything without a restart."""
    mount = tmp_path / "small"
    if not await _mount_tmpfs(mount, "2m"):
        pytest.skip("mounting a tmpfs needs root; the max_database_mb test covers CI")
    try:
        urls = tomllib.loads(sandboxes.config.read_text(encoding="utf-8"))
        config = _config(sandboxes, tmp_path, urls["onec"]["base_url"], mount / "state")
        hub_process = await hub_factory(config, sandboxes.socket_path, **sandboxes.env)
        await hub_process.wait_socket()
        reasons = []
        for _ in range(15):
            run = await hub_process.ctl("--json", "run", "replenishment", "--follow", timeout=120)
            reasons.append(run.out.splitlines()[-1] if run.out else run.err)
            assert hub_process.proc.returncode is None, hub_process.stderr[-2000:]
            if run.code != 0:
                assert "disk full: " in reasons[-1], reasons[-1]
                break
        else:
            raise AssertionError("15 runs never filled 2 MiB")
        assert (await _wait_storage(hub_process, full=True))["problem"].startswith("disk full:")
        assert await hub_process.stop() == 0

        # a restart on the full disk: hubd stopped there kept its WAL index, so it opens as usual
        again = await hub_factory(config, sandboxes.socket_path, **sandboxes.env)
        await again.wait_socket()
        assert (await again.ctl("status")).code == 0
        assert await again.stop() == 0

        # room for a clean stop (WAL and its index removed), then full to the last block: no
        # room even for a new WAL index, and hubd still starts and serves
        assert await _sh("mount", "-o", "remount,size=4m", str(mount)) == 0
        ready = await hub_factory(config, sandboxes.socket_path, **sandboxes.env)
        await ready.wait_socket()
        assert await ready.stop() == 0
        await _sh("dd", "if=/dev/zero", f"of={mount / 'filler'}", "bs=4k")
        third = await hub_factory(config, sandboxes.socket_path, **sandboxes.env)
        await third.wait_socket()
        status = await third.ctl("status")
        assert status.code == 0 and "0 B free on its disk" in status.out, status.out
        assert '"database_opened_exclusively"' in third.stdout
        assert await _sh("rm", str(mount / "filler")) == 0
        await _wait_storage(third, full=False)
        async with asyncio.timeout(60):  # a run left running by the first hubd is closed
            while (await third.ctl("run", "replenishment", "--follow", timeout=120)).code:
                await asyncio.sleep(1)
        entries = await _all_delivered(third, 3)
        assert len(entries) == 3
        assert len(sandboxes.onec.transfer_orders()) == 2 and len(sandboxes.moysklad.orders()) == 1
        assert await third.stop() == 0
    finally:
        await _sh("umount", "-l", str(mount))
