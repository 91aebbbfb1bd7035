"""Shared fixtures: a config writer, a notify socket, and hubd/hubctl as real subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(sections: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for name, values in sections.items():
        if name.startswith("[["):
            lines.append(name)
        else:
            lines.append(f"[{name}]")
        for key, value in values.items():
            lines.append(f"{key} = {toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def base_sections(
    tmp_path: Path,
    onec_url: str = "http://127.0.0.1:9/ut/odata/standard.odata/",
    moysklad_url: str = "http://127.0.0.1:9/api/remap/1.2/",
) -> dict[str, dict[str, Any]]:
    """A complete config; unreachable systems by default (the daemon must still start)."""
    return {
        "hub": {"state_dir": str(tmp_path / "state"), "shutdown_timeout_s": 10},
        "control": {"socket_path": str(tmp_path / "hubd.sock")},
        "logging": {"level": "info", "format": "json"},
        "onec": {"base_url": onec_url, "username": "hub", "request_timeout_s": 10},
        "moysklad": {
            "base_url": moysklad_url,
            "organization": "ООО «Бизнесмедиа»",
            "agent": "ООО «Поставщик»",
            "store": "Основной склад",
            "request_timeout_s": 10,
            "request_weight": 1,
        },
        "[[replenishment.targets]]": {
            "warehouse": "Магазин Центральный",
            "donors": ["Бестужевых", "Контейнер"],
        },
        "outbox": {"interval_s": 1, "retry_base_s": 0.2, "retry_cap_s": 1},
        "jobs.replenishment": {"cron": "0 9 * * 1-5", "timezone": "Europe/Moscow"},
    }


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    path.write_text(render_config(sections), encoding="utf-8")
    return path


class NotifySocket:
    """A real datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    async def wait_for(self, needle: str, timeout: float = 15.0) -> str:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                for message in self.messages:
                    if needle in message:
                        return message
                data = await loop.sock_recv(self.sock, 4096)
                self.messages.append(data.decode())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


@dataclass
class Result:
    code: int
    out: str
    err: str


def child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HUB_", "NOTIFY_", "WATCHDOG_", "CREDENTIALS_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


async def hubctl(socket_path: Path | str, *args: str, timeout: float = 30.0) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.cli", "--socket", str(socket_path), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=child_env(), cwd=REPO,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@dataclass
class HubProcess:
    config: Path
    socket_path: Path
    proc: asyncio.subprocess.Process
    stdout_chunks: list[bytes] = field(default_factory=list)
    stderr_chunks: list[bytes] = field(default_factory=list)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return b"".join(self.stdout_chunks).decode(errors="replace")

    @property
    def stderr(self) -> str:
        return b"".join(self.stderr_chunks).decode(errors="replace")

    async def ctl(self, *args: str, timeout: float = 30.0) -> Result:
        return await hubctl(self.socket_path, *args, timeout=timeout)

    async def wait_socket(self, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while True:
                if self.proc.returncode is not None:
                    raise AssertionError(f"hubd exited {self.proc.returncode}: {self.stderr}")
                result = await self.ctl("health")
                if result.code == 0:
                    return
                await asyncio.sleep(0.1)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        for reader in self._readers:
            await reader
        return code


async def _pump(stream: asyncio.StreamReader | None, into: list[bytes]) -> None:
    if stream is None:
        return
    while chunk := await stream.read(65536):
        into.append(chunk)


async def start_hub(config: Path, socket_path: Path, **env: str) -> HubProcess:
    env = {
        "HUB_ONEC_PASSWORD": ONEC_TEST_PASSWORD,
        "HUB_MOYSKLAD_TOKEN": MOYSKLAD_TEST_TOKEN,
        **env,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=child_env(**env), cwd=REPO,
    )  # fmt: skip
    hub = HubProcess(config, socket_path, proc)
    hub._readers = [
        asyncio.create_task(_pump(proc.stdout, hub.stdout_chunks)),
        asyncio.create_task(_pump(proc.stderr, hub.stderr_chunks)),
    ]
    return hub


@pytest.fixture
async def hub_factory() -> AsyncIterator[Any]:
    """Start hubd subprocesses; any still running at the end are killed."""
    started: list[HubProcess] = []

    async def factory(config: Path, socket_path: Path, **env: str) -> HubProcess:
        hub = await start_hub(config, socket_path, **env)
        started.append(hub)
        return hub

    yield factory
    for hub in started:
        if hub.proc.returncode is None:
            hub.proc.kill()
            await hub.proc.wait()
        for reader in hub._readers:
            reader.cancel()


@dataclass
class Sandboxes:
    """Both emulators with the demo data set, and a config pointing hubd at them."""

    dataset: Any
    onec: Any
    moysklad: Any
    config: Path
    socket_path: Path
    env: dict[str, str]


ONEC_TEST_PASSWORD = "onec-pass-7Q2x"
MOYSKLAD_TEST_TOKEN = "ms-token-4f1c9a7e"


@pytest.fixture
async def sandboxes(tmp_path: Path) -> AsyncIterator[Sandboxes]:
    from daemon.sandbox.dataset import build_demo_dataset
    from daemon.sandbox.moysklad_emulator import MoySkladSandbox, run_moysklad_sandbox
    from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox

    dataset = build_demo_dataset(n_items=300, seed=42)
    onec = OneCSandbox(dataset, username="hub", password=ONEC_TEST_PASSWORD)
    moysklad = MoySkladSandbox(dataset.moysklad_products, token=MOYSKLAD_TEST_TOKEN, weight=1)
    async with (
        run_onec_sandbox(onec) as onec_url,
        run_moysklad_sandbox(moysklad) as moysklad_url,
    ):
        sections = base_sections(tmp_path, onec_url, moysklad_url)
        config = write_config(tmp_path / "config.toml", sections)
        yield Sandboxes(
            dataset,
            onec,
            moysklad,
            config,
            tmp_path / "hubd.sock",
            {"HUB_ONEC_PASSWORD": ONEC_TEST_PASSWORD, "HUB_MOYSKLAD_TOKEN": MOYSKLAD_TEST_TOKEN},
        )
