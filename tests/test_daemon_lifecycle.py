"""hubd as a real subprocess: READY, status, signals, reload, watchdog, logs, socket access."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import stat
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from protos.hub.v1 import control_pb2 as pb
from protos.hub.v1 import control_pb2_grpc
from tests.conftest import NotifySocket, base_sections, hubctl, write_config


async def _start(tmp_path: Path, hub_factory: Any, notify: NotifySocket, **env: str) -> Any:
    config = write_config(tmp_path / "config.toml", base_sections(tmp_path))
    hub = await hub_factory(config, tmp_path / "hubd.sock", NOTIFY_SOCKET=str(notify.path), **env)
    await notify.wait_for("READY=1")
    return hub


async def test_start_ready_status_sigterm(
    tmp_path: Path, hub_factory: Any, notify_socket: NotifySocket
) -> None:
    """READY comes after the socket listens; status answers; SIGTERM exits 0 within 5 s."""
    hub = await _start(tmp_path, hub_factory, notify_socket)
    result = await hub.ctl("status")
    assert result.code == 0, result.err
    assert "hubd 0.1.0" in result.out and str(tmp_path / "state" / "hub.sqlite3") in result.out
    as_json = await hub.ctl("--json", "status")
    data = json.loads(as_json.out)
    assert data["pid"] == str(hub.proc.pid) and data["draining"] is False
    started = time.monotonic()
    code = await hub.stop()
    assert code == 0, hub.stderr
    assert time.monotonic() - started < 5
    await notify_socket.wait_for("STOPPING=1", timeout=1)
    assert not (tmp_path / "hubd.sock").exists()


async def test_socket_is_not_world_accessible(
    tmp_path: Path, hub_factory: Any, notify_socket: NotifySocket
) -> None:
    """The control socket is created 0660: owner and group only."""
    hub = await _start(tmp_path, hub_factory, notify_socket)
    mode = stat.S_IMODE(os.stat(tmp_path / "hubd.sock").st_mode)
    assert mode & 0o007 == 0
    assert mode == 0o660
    await hub.stop()


async def test_sighup_good_config_reloads_and_bad_config_is_refused(
    tmp_path: Path, hub_factory: Any, notify_socket: NotifySocket
) -> None:
    """SIGHUP applies a good config (RELOADING=1 with MONOTONIC_USEC); a bad one keeps the old."""
    hub = await _start(tmp_path, hub_factory, notify_socket)
    sections = base_sections(tmp_path)
    sections["logging"]["level"] = "warning"
    write_config(hub.config, sections)
    hub.proc.send_signal(signal.SIGHUP)
    reloading = await notify_socket.wait_for("RELOADING=1")
    assert "MONOTONIC_USEC=" in reloading
    logs = await _wait_log(hub, "config_reloaded")
    assert "logging.level" in logs
    hub.config.write_text("[hub\nbroken", encoding="utf-8")
    hub.proc.send_signal(signal.SIGHUP)
    refused = await _wait_log(hub, "config_reload_refused")
    assert "TOML syntax error" in refused
    result = await hub.ctl("status")
    assert result.code == 0, "the daemon keeps serving on the old config"
    reply = await hub.ctl("--json", "reload")
    assert reply.code == 1 and json.loads(reply.out)["ok"] is False
    assert await hub.stop() == 0


async def _wait_log(hub: Any, event: str, timeout: float = 10.0) -> str:
    async with asyncio.timeout(timeout):
        while True:
            for line in hub.stdout.splitlines():
                if f'"event": "{event}"' in line:
                    return str(line)
            await asyncio.sleep(0.05)


async def test_watchdog_pings_at_half_the_interval(
    tmp_path: Path, hub_factory: Any, notify_socket: NotifySocket
) -> None:
    """With WATCHDOG_USEC=400000 the daemon sends WATCHDOG=1 about every 0.2 s."""
    hub = await _start(tmp_path, hub_factory, notify_socket, WATCHDOG_USEC="400000")
    await asyncio.sleep(1.0)
    await notify_socket.wait_for("WATCHDOG=1")
    pings = sum(m.count("WATCHDOG=1") for m in notify_socket.messages)
    await hub.stop()
    # drain what arrived meanwhile
    while True:
        try:
            notify_socket.messages.append(notify_socket.sock.recv(4096).decode())
        except BlockingIOError:
            break
    pings = sum(m.count("WATCHDOG=1") for m in notify_socket.messages)
    assert pings >= 4


async def test_no_notify_socket_means_no_notifications(tmp_path: Path, hub_factory: Any) -> None:
    """Without NOTIFY_SOCKET the daemon runs normally and sends nothing."""
    config = write_config(tmp_path / "config.toml", base_sections(tmp_path))
    hub = await hub_factory(config, tmp_path / "hubd.sock")
    await hub.wait_socket()
    assert (await hub.ctl("health")).code == 0
    assert await hub.stop() == 0


async def test_logs_follow_gets_new_events_and_ends_with_the_daemon(
    tmp_path: Path, hub_factory: Any, notify_socket: NotifySocket
) -> None:
    """hubctl logs -f prints events emitted after it connected and exits when hubd stops."""
    hub = await _start(tmp_path, hub_factory, notify_socket)
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.cli", "--socket", str(hub.socket_path), "--json", "logs",
        "-n", "0", "-f", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(1.0)  # let it connect
    reply = await hub.ctl("reload")  # emits config_reloaded
    assert reply.code == 0, reply.err
    assert follower.stdout is not None
    line = await asyncio.wait_for(follower.stdout.readline(), 10)
    events = [json.loads(line)["event"]]
    while "config_reloaded" not in events:
        events.append(json.loads(await asyncio.wait_for(follower.stdout.readline(), 10))["event"])
    assert await hub.stop() == 0
    await asyncio.wait_for(follower.wait(), 10)
    assert follower.returncode in (0, 69)


async def test_hubctl_without_daemon_exits_69_with_one_line(tmp_path: Path) -> None:
    """No daemon: one clear line and exit status 69, never a traceback."""
    result = await hubctl(tmp_path / "nothing.sock", "status")
    assert result.code == 69
    assert (
        result.err.strip()
        == f"hubctl: cannot reach hubd at {tmp_path / 'nothing.sock'}: is it running?"
    )


async def test_stale_socket_from_a_crash_is_replaced(
    tmp_path: Path, hub_factory: Any, notify_socket: NotifySocket
) -> None:
    """A socket file left by a killed daemon does not stop the next start."""
    hub = await _start(tmp_path, hub_factory, notify_socket)
    hub.proc.kill()
    await hub.proc.wait()
    assert (tmp_path / "hubd.sock").exists()
    notify_socket.messages.clear()
    again = await _start(tmp_path, hub_factory, notify_socket)
    assert (await again.ctl("health")).code == 0
    assert await again.stop() == 0


async def test_watchdog_is_withheld_while_the_database_is_stuck(
    tmp_path: Path, hub_factory: Any, notify_socket: NotifySocket
) -> None:
    """A write held up by another process's lock stalls the database connection: no
    WATCHDOG=1 while it lasts (so systemd would restart hubd), pings again once it is free."""
    hub = await _start(tmp_path, hub_factory, notify_socket, WATCHDOG_USEC="400000")
    loop = asyncio.get_running_loop()
    pings: list[float] = []

    async def receive() -> None:
        while True:
            data = await loop.sock_recv(notify_socket.sock, 4096)
            if b"WATCHDOG=1" in data:
                pings.append(time.monotonic())

    receiver = asyncio.create_task(receive())
    blocker = sqlite3.connect(tmp_path / "state" / "hub.sqlite3", isolation_level=None)
    try:
        await asyncio.sleep(0.5)
        assert pings, "the watchdog pings while the database answers"
        blocker.execute("BEGIN IMMEDIATE")
        stuck_at = time.monotonic()
        async with grpc.aio.insecure_channel(f"unix:{hub.socket_path}") as channel:
            api = control_pb2_grpc.HubControlStub(channel)
            trigger = asyncio.ensure_future(
                api.TriggerRun(pb.TriggerRunRequest(job="replenishment", dry_run=True), timeout=20)
            )
            await asyncio.sleep(4.0)  # below SQLite's 5 s busy timeout: the write then succeeds
            blocker.execute("ROLLBACK")
            freed_at = time.monotonic()
            await trigger  # the held-up write goes through once the lock is gone
        await asyncio.sleep(1.0)
    finally:
        blocker.close()
        receiver.cancel()
    # the trigger's write reaches the database within the first second, even on a busy machine
    during = [round(t - stuck_at, 2) for t in pings if stuck_at + 1.5 < t < freed_at]
    assert during == [], f"pings at {during} s while the database was stuck"
    assert any(t > freed_at for t in pings), "pings resume once the database answers"
    assert await hub.stop() == 0
    events = [json.loads(line)["event"] for line in hub.stdout.splitlines() if line.startswith("{")]
    assert "watchdog_withheld" in events and "watchdog_resumed" in events
