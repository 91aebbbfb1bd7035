"""Secrets never leak: not to stdout/stderr, integration_logs, the SQLite files, or hubctl."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from pathlib import Path
from typing import Any

from tests.conftest import Sandboxes


def _forms(secret: str, login: str = "") -> list[bytes]:
    """The secret as text, and as it would appear inside a Basic Authorization header."""
    forms = [secret.encode()]
    if login:
        forms.append(base64.b64encode(f"{login}:{secret}".encode()))
    return forms


async def test_no_secret_anywhere_after_good_and_failing_runs(
    sandboxes: Sandboxes, hub_factory: Any, tmp_path: Path
) -> None:
    """A full flow with debug logging, failed auth on both systems and every hubctl command
    leaves no trace of the 1C password, the МойСклад token or the gRPC token."""
    onec_password = f"Leak1C-{secrets.token_hex(8)}"
    ms_token = f"leakms{secrets.token_hex(16)}"
    grpc_token = f"leakgrpc-{secrets.token_hex(8)}"
    sandboxes.onec.password = onec_password
    sandboxes.moysklad.add_user("hub@leak", "unused-pass", ms_token)
    text = sandboxes.config.read_text(encoding="utf-8")
    sandboxes.config.write_text(text.replace('level = "info"', 'level = "debug"'), "utf-8")
    env = {
        "HUB_ONEC_PASSWORD": onec_password,
        "HUB_MOYSKLAD_TOKEN": ms_token,
        "HUB_GRPC_TOKEN": grpc_token,
    }
    hub = await hub_factory(sandboxes.config, sandboxes.socket_path, **env)
    await hub.wait_socket()
    outputs: list[str] = []

    async def ctl(*args: str) -> None:
        result = await hub.ctl(*args, timeout=120)
        outputs.extend([result.out, result.err])

    await ctl("run", "replenishment", "--follow")
    async with asyncio.timeout(60):
        while True:
            entries = json.loads((await hub.ctl("--json", "outbox")).out)["entries"]
            if entries and all(e["state"] == "delivered" for e in entries):
                break
            await asyncio.sleep(0.3)

    # now both systems refuse the credentials: failing reads, failing check
    sandboxes.onec.password = "rotated-by-admin"
    sandboxes.moysklad.issue_token("hub@leak")  # revokes the hub's token
    await ctl("run", "replenishment", "--follow")
    await ctl("check")
    runs = json.loads((await hub.ctl("--json", "runs")).out)["runs"]
    assert runs[0]["status"] == "failed", runs[0]
    for run in runs:
        await ctl("runs", "show", run["id"])
        await ctl("--json", "runs", "show", run["id"])
    for entry in json.loads((await hub.ctl("--json", "outbox")).out)["entries"]:
        await ctl("outbox", "show", str(entry["id"]))
        await ctl("--json", "outbox", "show", str(entry["id"]))
    commands = [
        ("status",), ("--json", "status"), ("outbox",), ("schedules",), ("--json", "check"),
        ("logs", "-n", "10000"), ("--json", "logs", "-n", "10000"), ("reload",),
    ]  # fmt: skip
    for args in commands:
        await ctl(*args)
    assert await hub.stop() == 0

    haystacks: dict[str, bytes] = {
        "stdout": hub.stdout.encode(),
        "stderr": hub.stderr.encode(),
        "hubctl": "\n".join(outputs).encode(),
    }
    state = tmp_path / "state"
    for path in state.rglob("*"):
        if path.is_file():
            haystacks[str(path)] = path.read_bytes()
    assert any("hub.sqlite3" in name for name in haystacks)
    assert b"run_finished" in haystacks["stdout"], "the flow really logged"
    assert b"401" in haystacks["hubctl"], "the failing requests really happened"
    needles = [
        *_forms(onec_password, "hub"),
        *_forms(ms_token),
        *_forms(grpc_token),
    ]
    for name, data in haystacks.items():
        for needle in needles:
            assert needle not in data, f"secret found in {name}"
