"""One hubd per state directory: the lock is taken before the database is touched, a second
daemon refuses with one line naming the holder, and a dead holder never blocks a restart."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import tomllib
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import StateLockedError
from daemon.statelock import LOCK_NAME, acquire_state_lock
from tests.conftest import Sandboxes, base_sections, write_config


def test_a_second_lock_on_the_directory_is_refused_naming_the_holder(tmp_path: Path) -> None:
    """Locked once, the directory refuses another lock (even in the same process) with the
    holder's PID and the lock file; released, it can be locked again."""
    held = acquire_state_lock(tmp_path)
    with pytest.raises(StateLockedError) as refused:
        acquire_state_lock(tmp_path)
    message = str(refused.value)
    assert f"PID {os.getpid()}" in message and str(tmp_path / LOCK_NAME) in message
    assert "\n" not in message
    held.release()
    acquire_state_lock(tmp_path).release()


def test_a_lock_file_left_by_a_dead_holder_does_not_block(tmp_path: Path) -> None:
    """The kernel drops the lock with its holder: a lock file with a stale PID is no lock."""
    (tmp_path / LOCK_NAME).write_text("999999\n", encoding="ascii")
    lock = acquire_state_lock(tmp_path)
    assert (tmp_path / LOCK_NAME).read_text(encoding="ascii") == f"{os.getpid()}\n"
    lock.release()


def _fingerprint(state: Path) -> dict[str, tuple[int, int, str]]:
    found = {}
    for name in ("hub.sqlite3", "hub.sqlite3-wal", "hub.sqlite3-shm"):
        path = state / name
        if path.exists():
            data = path.read_bytes()
            found[name] = (len(data), path.stat().st_mtime_ns, hashlib.sha256(data).hexdigest())
    return found


async def test_a_second_hubd_on_the_same_state_dir_refuses_without_touching_the_database(
    sandboxes: Sandboxes, hub_factory: Any, tmp_path: Path
) -> None:
    """With a run in progress in the first daemon, a second one on the same state directory
    and another socket exits 78 with one line naming the first's PID and the lock file; the
    database, its WAL and shm are byte for byte and mtime unchanged, the live run still runs."""
    first = await hub_factory(sandboxes.config, sandboxes.socket_path, **sandboxes.env)
    await first.wait_socket()
    sandboxes.onec.latency_s = 30.0  # the run waits on 1C: the first daemon writes nothing
    started = await first.ctl("--json", "run", "replenishment")
    assert started.code == 0, started.err
    run_id = json.loads(started.out)["run"]["id"]
    await asyncio.sleep(1.0)  # its log lines reach the history table before the snapshot
    state = tmp_path / "state"
    before = _fingerprint(state)
    assert "hub.sqlite3" in before and "hub.sqlite3-wal" in before

    config = tomllib.loads(sandboxes.config.read_text(encoding="utf-8"))
    sections = base_sections(tmp_path, config["onec"]["base_url"], config["moysklad"]["base_url"])
    sections["control"]["socket_path"] = str(tmp_path / "second.sock")
    second_config = write_config(tmp_path / "second.toml", sections)
    second = await hub_factory(second_config, tmp_path / "second.sock", **sandboxes.env)
    code = await asyncio.wait_for(second.proc.wait(), 15)
    for reader in second._readers:
        await reader
    assert code == 78, (second.stdout, second.stderr)
    assert second.stderr.strip() == (
        f"hubd: state directory {state} is in use by hubd PID {first.proc.pid} "
        f"(lock file {state / LOCK_NAME}); stop that daemon first, or give this one "
        "another hub.state_dir"
    )
    assert "Traceback" not in second.stdout
    assert not (tmp_path / "second.sock").exists()
    assert _fingerprint(state) == before

    conn = sqlite3.connect(f"file:{state / 'hub.sqlite3'}?mode=ro", uri=True)
    try:
        (status,) = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
    finally:
        conn.close()
    assert status == "running"
    assert (await first.ctl("status")).code == 0
    sandboxes.onec.latency_s = 0.0
    assert await first.stop() == 0
