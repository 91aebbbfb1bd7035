"""Issue 19's concurrency and lifecycle figures, measured against any checkout of the hub.

Both emulators run in this process; hubd is started from ``--repo`` (default: this checkout),
so the same measurement can be taken on the code before and after a change:

- triggers: runs started by 100 concurrent TriggerRun calls (1C answering after 0.3 s);
- deadlines: runs left ``running`` 10 s after 60 TriggerRun calls with 0.5–6 ms deadlines;
- watchers: of 200 concurrent WatchRun streams on one run, and of 30 streams each opened right
  after its trigger, how many ended without the "finished" event;
- sigterm: seconds from SIGTERM to exit, mid-run, with 1C answering after 8 s and
  ``shutdown_timeout_s = 10``; the run's status and reason; whether the budget was reported
  exceeded (``hub_shutdown_timed_out``).

    .venv/bin/python benchmarks/bench_lifecycle.py [--repo DIR] [--only triggers,sigterm,...]

The emulators are imported from ``sys.path``: to measure an older checkout against its own
emulators, copy this file into it and run it there, e.g.
``git archive e1b3ccf | tar -x -C /tmp/before; cp benchmarks/bench_lifecycle.py
/tmp/before/benchmarks/; cd /tmp/before; PYTHONPATH=/tmp/before /work/main/.venv/bin/python
benchmarks/bench_lifecycle.py --repo /tmp/before``.

Measured on 2026-12-03 (2 shared cores), e1b3ccf → after issue 19:
triggers 28 runs / 84 outbox rows → 1 run / 3 rows; deadlines 5 of 10 runs left running → 0
of 5; watchers 67 of 200 and 1 of 30 without "finished" → 0 and 0; sigterm 31.1 s, the run
'succeeded' after shutdown began → 0.1 s, the run failed "stopped by shutdown".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from daemon.sandbox.dataset import DONOR_NAMES, TARGET_NAME, build_demo_dataset
from daemon.sandbox.moysklad_emulator import MoySkladSandbox, run_moysklad_sandbox
from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox
from protos.hub.v1 import control_pb2 as pb
from protos.hub.v1 import control_pb2_grpc

HERE = Path(__file__).resolve().parent.parent
PASSWORD, TOKEN = "onec-pass-bench", "ms-token-bench"


@dataclass
class World:
    repo: Path
    work: Path
    onec: OneCSandbox
    moysklad: MoySkladSandbox
    onec_url: str
    moysklad_url: str

    @property
    def socket(self) -> Path:
        return self.work / "hubd.sock"

    @property
    def db(self) -> Path:
        return self.work / "state" / "hub.sqlite3"

    def config(self, budget_s: float = 10) -> Path:
        donors = ", ".join(f'"{d}"' for d in DONOR_NAMES)
        knows_limit = "max_concurrent_rpcs" in (self.repo / "daemon/config.py").read_text()
        limit = "max_concurrent_rpcs = 400\n" if knows_limit else ""
        path = self.work / "config.toml"
        path.write_text(
            f"""[hub]
state_dir = "{self.work / "state"}"
shutdown_timeout_s = {budget_s}
[control]
socket_path = "{self.socket}"
{limit}[logging]
level = "info"
format = "json"
[onec]
base_url = "{self.onec_url}"
username = "hub"
request_timeout_s = 30
[moysklad]
base_url = "{self.moysklad_url}"
organization = "ООО «Бизнесмедиа»"
agent = "ООО «Поставщик»"
store = "Основной склад"
request_timeout_s = 30
request_weight = 1
[[replenishment.targets]]
warehouse = "{TARGET_NAME}"
donors = [{donors}]
[jobs.replenishment]
cron = "0 9 * * 1-5"
timezone = "Europe/Moscow"
enabled = false
""",
            encoding="utf-8",
        )
        return path


@asynccontextmanager
async def hubd(world: World, config: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "NOTIFY_"))}
    env.update(
        HUB_ONEC_PASSWORD=PASSWORD,
        HUB_MOYSKLAD_TOKEN=TOKEN,
        PYTHONPATH=str(world.repo),
        PYTHONUNBUFFERED="1",
    )
    log = (world.work / "hubd.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "run", "--config", str(config),
        stdout=log, stderr=log, env=env, cwd=world.repo,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            while True:
                try:
                    async with grpc.aio.insecure_channel(f"unix:{world.socket}") as channel:
                        await stub(channel).GetStatus(pb.GetStatusRequest(), timeout=1)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


def stub(channel: grpc.aio.Channel) -> Any:
    return control_pb2_grpc.HubControlStub(channel)


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


async def settle(db: Path, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not rows(db, "SELECT 1 FROM runs WHERE status = 'running'"):
            return
        await asyncio.sleep(0.2)


async def measure_triggers(world: World) -> str:
    world.onec.latency_s = 0.3
    async with hubd(world, world.config()):
        channels = [grpc.aio.insecure_channel(f"unix:{world.socket}") for _ in range(4)]
        apis = [stub(c) for c in channels]
        for api in apis:
            await api.GetStatus(pb.GetStatusRequest(), timeout=5)
        replies = await asyncio.gather(
            *(
                apis[i % 4].TriggerRun(pb.TriggerRunRequest(job="replenishment"), timeout=60)
                for i in range(100)
            ),
            return_exceptions=True,
        )
        for channel in channels:
            await channel.close(None)
        await settle(world.db, 120)
    world.onec.latency_s = 0.0
    errors = sum(isinstance(r, BaseException) for r in replies)
    runs = rows(world.db, "SELECT count(*) FROM runs")[0][0]
    docs = rows(world.db, "SELECT count(*) FROM outbox")[0][0]
    return f"triggers: 100 concurrent TriggerRun → {runs} runs, {docs} outbox rows, {errors} errors"


async def measure_deadlines(world: World) -> str:
    rng = random.Random(19)
    async with hubd(world, world.config()):
        async with grpc.aio.insecure_channel(f"unix:{world.socket}") as channel:
            api = stub(channel)
            await api.GetStatus(pb.GetStatusRequest(), timeout=5)
            for wave in range(6):
                await asyncio.gather(
                    *(
                        api.TriggerRun(
                            pb.TriggerRunRequest(job="replenishment", dry_run=True),
                            timeout=rng.uniform(0.0005, 0.006),
                        )
                        for _ in range(10)
                    ),
                    return_exceptions=True,
                )
                await asyncio.sleep(0.05 * wave)
        await asyncio.sleep(10)
        left = rows(world.db, "SELECT count(*) FROM runs WHERE status = 'running'")[0][0]
        total = rows(world.db, "SELECT count(*) FROM runs")[0][0]
    return (
        f"deadlines: 60 TriggerRun with 0.5–6 ms deadlines → {total} runs, "
        f"{left} still running after 10 s"
    )


async def _watch(api: Any, run_id: str) -> bool:
    kinds = [e.kind async for e in api.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=60)]
    return "finished" in kinds


async def measure_watchers(world: World) -> str:
    async with (
        hubd(world, world.config()),
        grpc.aio.insecure_channel(f"unix:{world.socket}") as channel,
    ):
        api = stub(channel)
        reply = await api.TriggerRun(pb.TriggerRunRequest(job="replenishment", dry_run=True))
        crowd = await asyncio.gather(
            *(_watch(api, reply.run.id) for _ in range(200)), return_exceptions=True
        )
        single = []
        for _ in range(30):
            one = await api.TriggerRun(pb.TriggerRunRequest(job="replenishment", dry_run=True))
            single.append(await _watch(api, one.run.id))
    lacking = sum(r is not True for r in crowd)
    return (
        f"watchers: {lacking} of 200 concurrent watchers ended without 'finished'; "
        f"{single.count(False)} of 30 single watchers right after the trigger"
    )


async def measure_sigterm(world: World) -> str:
    async with hubd(world, world.config(budget_s=10)) as proc:
        world.onec.latency_s = 8.0
        async with grpc.aio.insecure_channel(f"unix:{world.socket}") as channel:
            reply = await stub(channel).TriggerRun(pb.TriggerRunRequest(job="replenishment"))
        await asyncio.sleep(1.0)
        began = time.monotonic()
        proc.terminate()
        await proc.wait()
        took = time.monotonic() - began
    world.onec.latency_s = 0.0
    (status, reason), *_ = rows(
        world.db, f"SELECT status, reason FROM runs WHERE id = '{reply.run.id}'"
    ) or [("?", "?")]
    log = (world.work / "hubd.log").read_text(encoding="utf-8", errors="replace")
    timed_out = "hub_shutdown_timed_out" in log
    return (
        f"sigterm: exit {proc.returncode} after {took:.1f} s (budget 10 s, 1C latency 8 s); "
        f"run {status!r} reason {reason!r}; hub_shutdown_timed_out logged: {timed_out}"
    )


MEASURES = {
    "triggers": measure_triggers,
    "deadlines": measure_deadlines,
    "watchers": measure_watchers,
    "sigterm": measure_sigterm,
}


async def main_async(repo: Path, only: list[str]) -> None:
    dataset = build_demo_dataset(n_items=300, seed=42)
    onec = OneCSandbox(dataset, username="hub", password=PASSWORD)
    moysklad = MoySkladSandbox(dataset.moysklad_products, token=TOKEN, weight=1)
    async with run_onec_sandbox(onec) as onec_url, run_moysklad_sandbox(moysklad) as ms_url:
        for name in only:
            with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as work:
                world = World(repo, Path(work), onec, moysklad, onec_url, ms_url)
                print(await MEASURES[name](world), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=HERE)
    parser.add_argument("--only", default=",".join(MEASURES))
    args = parser.parse_args()
    asyncio.run(main_async(args.repo.resolve(), args.only.split(",")))


if __name__ == "__main__":
    main()
