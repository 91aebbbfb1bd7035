"""Benchmark: a whole replenishment dry run next to the connectors' minimum read time.

    .venv/bin/python benchmarks/bench_run.py [--items 20000] [--latency-ms 20]

Both emulators run in their own process (as the real systems would), with the given latency on
every request. In this process:

1. the reference: the run's reads alone — ``gather_inputs`` through the real connectors
   (warehouses, items → МойСклад products, norms, free stock, open documents), best of 3;
2. the figure: a whole dry run through the daemon — ``hubd`` (``Hub.serve``) is started on a
   temporary state directory, ``TriggerRun(dry_run=True)`` is sent over its Unix socket and the
   time until the run has finished (read, plan, store the plan) is taken, best of 3 (both
   figures alike: two processes share the machine's two cores, and single passes vary by a
   tenth of a second).

Target: dry run / reads ≤ 1.3. The МойСклад sandbox runs at weight 1 (a solution token), so
the 20 product pages are not bucket-bound and the figure measures the hub, not the bucket.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
import structlog
from pydantic import SecretStr

from daemon.app import Hub
from daemon.config import load_config
from daemon.demo import MS_AGENT, MS_ORGANIZATION, MS_STORE, demo_config_text
from daemon.moysklad.connector import MoySkladConnector
from daemon.onec.connector import OneCConnector
from daemon.replenishment.inputs import gather_inputs
from protos.hub.v1 import control_pb2 as pb
from protos.hub.v1 import control_pb2_grpc

PASSWORD = "bench-pass"
TOKEN = "bench-token"
TARGET_RATIO = 1.3


def _serve(items: int, latency_s: float, pipe: Connection) -> None:
    from daemon.sandbox.dataset import build_demo_dataset
    from daemon.sandbox.moysklad_emulator import MoySkladSandbox, run_moysklad_sandbox
    from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox

    async def main() -> None:
        dataset = build_demo_dataset(n_items=items, seed=42)
        onec = OneCSandbox(dataset, password=PASSWORD)
        onec.latency_s = latency_s
        moysklad = MoySkladSandbox(
            dataset.moysklad_products,
            organization=MS_ORGANIZATION,
            agent=MS_AGENT,
            store=MS_STORE,
            token=TOKEN,
            weight=1,
        )
        moysklad.latency_s = latency_s
        async with run_onec_sandbox(onec) as onec_url, run_moysklad_sandbox(moysklad) as ms_url:
            pipe.send((onec_url, ms_url))
            await asyncio.get_running_loop().run_in_executor(None, pipe.recv)

    asyncio.run(main())


async def _reads(config_path: Path) -> float:
    config = load_config(config_path)
    async with (
        OneCConnector(config.onec, SecretStr(PASSWORD)) as onec,
        MoySkladConnector(config.moysklad, SecretStr(TOKEN), None) as moysklad,
    ):

        async def progress(phase: str, counts: dict[str, int]) -> None:
            return None

        started = time.perf_counter()
        await gather_inputs(config, onec, moysklad, [], progress)
        return time.perf_counter() - started


async def _dry_run(config_path: Path) -> tuple[float, dict[str, float]]:
    hub = Hub(
        config_path,
        load_config(config_path),
        environ={"HUB_ONEC_PASSWORD": PASSWORD, "HUB_MOYSKLAD_TOKEN": TOKEN},
        log_stream=open("/dev/null", "w"),  # noqa: SIM115, ASYNC230 - closed with the process
    )
    serve = asyncio.create_task(hub.serve())
    try:
        async with grpc.aio.insecure_channel(
            f"unix:{hub.socket_path}", options=[("grpc.max_receive_message_length", 1 << 29)]
        ) as channel:
            api: control_pb2_grpc.HubControlAsyncStub = control_pb2_grpc.HubControlStub(channel)
            for _ in range(200):
                try:
                    await api.GetStatus(pb.GetStatusRequest(), timeout=1)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.05)
            started = time.perf_counter()
            reply = await api.TriggerRun(pb.TriggerRunRequest(job="replenishment", dry_run=True))
            async for event in api.WatchRun(pb.WatchRunRequest(run_id=reply.run.id)):
                if event.kind == "finished":
                    break
            elapsed = time.perf_counter() - started
            detail = await api.GetRun(pb.GetRunRequest(run_id=reply.run.id))
            if detail.run.status != "succeeded":
                raise SystemExit(f"dry run failed: {detail.run.reason}")
            phases = {p.name: p.seconds for p in detail.run.phases}
    finally:
        hub.stop_requested.set()
        await serve
    return elapsed, phases


async def _main(items: int, latency_ms: float) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_serve, args=(items, latency_ms / 1000, child))
    server.start()
    try:
        onec_url, ms_url = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
        with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
            state = Path(tmp)
            config_path = state / "config.toml"
            text = demo_config_text(state, onec_url, ms_url)
            text = text.replace('store = "', 'request_weight = 1\nstore = "', 1)
            text = text.replace('level = "info"', 'level = "warning"')
            config_path.write_text(text, encoding="utf-8")
            await _reads(config_path)  # warm the emulator's caches, unmeasured
            reads = min([await _reads(config_path) for _ in range(3)])
            runs = [await _dry_run(config_path) for _ in range(3)]
            dry, phases = min(runs, key=lambda r: r[0])
    finally:
        parent.send("stop")
        server.join(30)
    ratio = dry / reads
    print(f"items: {items}, latency per request: {latency_ms:g} ms")
    print(f"connectors' read time (reference):  {reads:.2f} s")
    print(f"whole dry run (read, plan, store):  {dry:.2f} s")
    print("  phases: " + ", ".join(f"{name} {secs:.2f} s" for name, secs in phases.items()))
    verdict = "OK" if ratio <= TARGET_RATIO else "MISSED"
    print(f"dry run / reads: {ratio:.2f} (target ≤ {TARGET_RATIO}) {verdict}")
    return 0 if ratio <= TARGET_RATIO else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    return asyncio.run(_main(args.items, args.latency_ms))


if __name__ == "__main__":
    sys.exit(main())
