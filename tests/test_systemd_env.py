"""hubd started the way systemd starts it: directories, credentials and notify from the unit."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from tests.conftest import (
    MOYSKLAD_TEST_TOKEN,
    ONEC_TEST_PASSWORD,
    REPO,
    NotifySocket,
    Sandboxes,
    child_env,
    hubctl,
)


async def test_daemon_under_systemd_environment(
    sandboxes: Sandboxes, tmp_path: Path, notify_socket: NotifySocket
) -> None:
    """With STATE_/RUNTIME_/CONFIGURATION_/CREDENTIALS_DIRECTORY, NOTIFY_SOCKET and WATCHDOG_USEC
    set as systemd sets them, hubd finds everything itself and does a full run."""
    state, runtime, conf, creds = (tmp_path / n for n in ("lib", "run", "etc", "creds"))
    for directory in (state, runtime, conf, creds):
        directory.mkdir()
    text = sandboxes.config.read_text(encoding="utf-8").splitlines()
    # the unit's config leaves the paths empty: they come from the environment
    text = [line for line in text if not line.startswith(("state_dir", "socket_path"))]
    (conf / "config.toml").write_text("\n".join(text) + "\n", encoding="utf-8")
    (creds / "onec_password").write_text(ONEC_TEST_PASSWORD + "\n", encoding="utf-8")
    (creds / "moysklad_token").write_text(MOYSKLAD_TEST_TOKEN, encoding="utf-8")
    (creds / "grpc_token").write_text("\n", encoding="utf-8")  # the unit's SetCredential default
    env = child_env(
        STATE_DIRECTORY=str(state),
        RUNTIME_DIRECTORY=str(runtime),
        CONFIGURATION_DIRECTORY=str(conf),
        CREDENTIALS_DIRECTORY=str(creds),
        NOTIFY_SOCKET=str(notify_socket.path),
        WATCHDOG_USEC="1000000",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "run",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env, cwd=REPO,
    )  # fmt: skip
    try:
        await notify_socket.wait_for("READY=1")
        sock = runtime / "hubd.sock"
        assert sock.exists() and oct(os.stat(sock).st_mode & 0o777) == "0o660"
        run = await hubctl(sock, "run", "replenishment", "--follow", timeout=120)
        assert run.code == 0, run.err
        runs = json.loads((await hubctl(sock, "--json", "runs")).out)["runs"]
        assert runs[0]["status"] == "succeeded"
        assert (state / "hub.sqlite3").exists()
        await notify_socket.wait_for("WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        await notify_socket.wait_for("STOPPING=1")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
