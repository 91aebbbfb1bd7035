"""Peak memory of ``hubd`` through a large run, and the size of the largest control answer.

Sizes the unit's ``MemoryHigh=``/``MemoryMax=`` and the control server's send limit. Both
sandbox emulators (``--items`` items, demo data) run in a child process; ``hubd run`` is a real
subprocess on a temporary state directory. The script triggers one real replenishment run over
the Unix socket, waits until it has finished and its documents are delivered, then reads
``GetRun`` (the whole plan in one message) ``--readers`` times at once. It prints hubd's RSS at
start, its peak (``VmHWM``) after the run and after the concurrent reads, and the serialized
size of the ``GetRun`` answer.

    .venv/bin/python benchmarks/bench_control_run_memory.py [--items 20000] [--readers 8] \
        [--repo /tmp/base]

``--repo`` runs hubd from another checkout (e.g. a ``git worktree`` of older code) with this
venv, so old and new code are measured the same way.

Only 127.0.0.1 and a Unix socket in a temporary directory are used; it stops by itself (every
wait has a deadline).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from protos.hub.v1 import control_pb2 as pb  # noqa: E402
from protos.hub.v1 import control_pb2_grpc  # noqa: E402

PASSWORD = "bench-pass"
TOKEN = "bench-token"
FINAL_STATES = {"delivered", "dead", "discarded"}


def _serve(items: int, repo: Path, pipe: Connection) -> None:
    # the emulators of the checkout under test: they change with its connectors
    sys.path.insert(0, str(repo))
    from daemon.demo import MS_AGENT, MS_ORGANIZATION, MS_STORE
    from daemon.sandbox.dataset import build_demo_dataset
    from daemon.sandbox.moysklad_emulator import MoySkladSandbox, run_moysklad_sandbox
    from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox

    async def main() -> None:
        dataset = build_demo_dataset(n_items=items, seed=42)
        onec = OneCSandbox(dataset, password=PASSWORD)
        moysklad = MoySkladSandbox(
            dataset.moysklad_products,
            organization=MS_ORGANIZATION,
            agent=MS_AGENT,
            store=MS_STORE,
            token=TOKEN,
            weight=1,
        )
        async with run_onec_sandbox(onec) as onec_url, run_moysklad_sandbox(moysklad) as ms_url:
            pipe.send((onec_url, ms_url))
            await asyncio.get_running_loop().run_in_executor(None, pipe.recv)

    asyncio.run(main())


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key}")


def figure(label: str, value: str, note: str = "") -> None:
    print(f"{label:<44} {value:>12}   {note}".rstrip(), flush=True)


async def bench(
    items: int, readers: int, onec_url: str, ms_url: str, work: Path, repo: Path
) -> None:
    from daemon.demo import demo_config_text

    config = work / "config.toml"
    text = demo_config_text(work, onec_url, ms_url)
    text = text.replace('store = "', 'request_weight = 1\nstore = "', 1)
    text = text.replace('level = "info"', 'level = "warning"')
    config.write_text(text, encoding="utf-8")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HUB_", "NOTIFY_", "WATCHDOG_", "CREDENTIALS_"))
    }
    env.update(HUB_ONEC_PASSWORD=PASSWORD, HUB_MOYSKLAD_TOKEN=TOKEN)
    log = (work / "hubd.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "run", "--config", str(config),
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=repo,
    )  # fmt: skip
    options = [("grpc.max_receive_message_length", 1 << 29)]
    try:
        async with grpc.aio.insecure_channel(f"unix:{work / 'hubd.sock'}", options=options) as ch:
            api = control_pb2_grpc.HubControlStub(ch)
            async with asyncio.timeout(60):
                while True:
                    try:
                        await api.GetStatus(pb.GetStatusRequest(), timeout=2)
                        break
                    except grpc.aio.AioRpcError:
                        await asyncio.sleep(0.2)
            await asyncio.sleep(2)
            figure("RSS at start", f"{status_kib(proc.pid, 'VmRSS') / 1024:.0f} MiB")
            began = time.monotonic()
            reply = await api.TriggerRun(pb.TriggerRunRequest(job="replenishment"))
            async with asyncio.timeout(600):
                while True:
                    detail = await api.GetRun(pb.GetRunRequest(run_id=reply.run.id))
                    done = detail.run.status not in ("running", "pending", "")
                    if done and all(d.state in FINAL_STATES for d in detail.documents):
                        break
                    await asyncio.sleep(1)
            states = ", ".join(sorted(d.state for d in detail.documents))
            figure(
                f"run of {items} items",
                f"{time.monotonic() - began:.1f} s",
                f"{detail.run.status} {detail.run.reason[:200]}".strip() + f"; documents: {states}",
            )
            figure(
                "peak RSS (VmHWM) through the run",
                f"{status_kib(proc.pid, 'VmHWM') / 1024:.0f} MiB",
            )
            figure("RSS after the run", f"{status_kib(proc.pid, 'VmRSS') / 1024:.0f} MiB")
            size = detail.ByteSize()
            figure("GetRun answer", f"{size / 1e6:.1f} MB", f"{len(detail.items)} plan items")
            request = pb.GetRunRequest(run_id=reply.run.id)
            await asyncio.gather(*(api.GetRun(request, timeout=120) for _ in range(readers)))
            figure(
                f"peak RSS after {readers} GetRun at once",
                f"{status_kib(proc.pid, 'VmHWM') / 1024:.0f} MiB",
            )
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout to run hubd from")
    args = parser.parse_args()
    sys.path.insert(0, str(args.repo))  # hubd's config text comes from the same checkout
    spawn = multiprocessing.get_context("spawn")
    parent, child = spawn.Pipe()
    server = spawn.Process(target=_serve, args=(args.items, args.repo, child))
    server.start()
    try:
        onec_url, ms_url = parent.recv()
        with tempfile.TemporaryDirectory(prefix="bench-run-memory-") as tmp:
            asyncio.run(bench(args.items, args.readers, onec_url, ms_url, Path(tmp), args.repo))
    finally:
        parent.send("stop")
        server.join(30)
        if server.is_alive():
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
