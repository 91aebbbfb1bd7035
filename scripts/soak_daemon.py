"""The crash soak's daemon under test: hubd as a subprocess on one state directory.

``config_text`` writes its config (faults come from the emulators, runs only from the soak's
triggers); ``Daemon`` starts it, waits for READY on the soak's own ``NOTIFY_SOCKET``, sends the
burst of concurrent TriggerRun calls, starts a second hubd on the same state directory (which
must refuse), and SIGKILLs it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import IO

import grpc

from daemon.sandbox.dataset import DONOR_NAMES, TARGET_NAME
from protos.hub.v1 import control_pb2 as pb
from protos.hub.v1 import control_pb2_grpc

REPO = Path(__file__).resolve().parent.parent


def config_text(
    state: Path, onec_url: str, moysklad_url: str, lease_s: float, socket_name: str = "hubd.sock"
) -> str:
    donors = ", ".join(f'"{name}"' for name in DONOR_NAMES)
    return f"""[hub]
state_dir = "{state}"
shutdown_timeout_s = 10
[control]
socket_path = "{state / socket_name}"
[logging]
level = "info"
format = "json"
[onec]
base_url = "{onec_url}"
username = "hub"
request_timeout_s = 5
[moysklad]
base_url = "{moysklad_url}"
organization = "ООО «Бизнесмедиа»"
agent = "ООО «Поставщик»"
store = "Основной склад"
request_timeout_s = 5
request_weight = 1
[[replenishment.targets]]
warehouse = "{TARGET_NAME}"
donors = [{donors}]
[outbox]
interval_s = 1
lease_s = {lease_s}
retry_base_s = 0.2
retry_cap_s = 1.5
# Runs come only from the soak's triggers, never from the clock.
[jobs.replenishment]
cron = "0 9 * * 1-5"
timezone = "Europe/Moscow"
enabled = false
"""


class Daemon:
    """hubd on one state directory; READY comes over the soak's own NOTIFY_SOCKET."""

    def __init__(self, workdir: Path, config: Path, env: dict[str, str], log: IO[bytes]) -> None:
        self.socket_path = workdir / "state" / "hubd.sock"
        self._config, self._log = config, log
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(workdir / "notify.sock"))
        self._notify.setblocking(False)
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("HUB_", "NOTIFY_", "WATCHDOG_", "CREDENTIALS_"))
        }
        self._env = {**inherited, **env, "NOTIFY_SOCKET": str(workdir / "notify.sock")}
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def worker_id(self) -> str:
        """The outbox lease owner this daemon uses (``daemon.services``: host:pid)."""
        return f"{socket.gethostname()}:{self.proc.pid if self.proc else 0}"

    async def start(self) -> None:
        for _ in range(10_000):  # forget datagrams a killed predecessor left behind
            try:
                self._notify.recv(4096)
            except BlockingIOError:
                break
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "run", "--config", str(self._config),
            stdin=asyncio.subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            env=self._env, cwd=REPO,
        )  # fmt: skip

    async def wait_ready(self) -> bool:
        """True once READY=1 arrives; False if hubd exited first."""
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(30):
            while self.proc.returncode is None:
                try:
                    data = await asyncio.wait_for(loop.sock_recv(self._notify, 4096), 0.2)
                except TimeoutError:
                    continue
                if b"READY=1" in data:
                    return True
        return False

    async def trigger_burst(self, n: int) -> tuple[set[str], int]:
        """``n`` concurrent TriggerRun calls on two channels: (run ids answered, failures)."""
        async with (
            grpc.aio.insecure_channel(f"unix:{self.socket_path}") as one,
            grpc.aio.insecure_channel(f"unix:{self.socket_path}") as two,
        ):
            apis = [control_pb2_grpc.HubControlStub(one), control_pb2_grpc.HubControlStub(two)]
            replies = await asyncio.gather(
                *(
                    apis[i % 2].TriggerRun(pb.TriggerRunRequest(job="replenishment"), timeout=10)
                    for i in range(n)
                ),
                return_exceptions=True,
            )
        ids = {r.run.id for r in replies if isinstance(r, pb.TriggerRunResponse)}
        return ids, sum(isinstance(r, BaseException) for r in replies)

    async def second(self, config: Path) -> str | None:
        """Start another hubd on this state directory; None if it refused as it must (exit 78,
        one line naming this daemon's PID), else what it did instead."""
        assert self.proc is not None
        env = {k: v for k, v in self._env.items() if k != "NOTIFY_SOCKET"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "run", "--config", str(config),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=REPO,
        )  # fmt: skip
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return "it kept running for 20 s"
        text = err.decode(errors="replace").strip()
        if proc.returncode == 78 and f"in use by hubd PID {self.proc.pid}" in text:
            return None
        return f"exit {proc.returncode}: {text[-300:]}"

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    async def kill(self) -> None:
        if self.proc is not None:
            if self.proc.returncode is None:
                self.proc.kill()
            await self.proc.wait()

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.terminate()
        return await asyncio.wait_for(self.proc.wait(), 30)

    def close(self) -> None:
        self._notify.close()
