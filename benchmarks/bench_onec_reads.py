"""Benchmark: everything a replenishment run reads from 1C, for 20,000 items × 3 warehouses.

    .venv/bin/python benchmarks/bench_onec_reads.py [--items 20000] [--latency-ms 20]

The UT emulator runs in its own process (as a real 1C server would), with the given latency on
every request; one unmeasured pass warms it first (see ``main``), then the best of three passes
is reported. The hub side — ``OneCConnector`` with default settings — reads $metadata,
resolves the warehouses, then reads items, norms (with packages), free stock and incoming
transfers concurrently, as a run does. Printed, each next to its reference:

* requests made vs the minimum for that data: one request per ``page_size`` rows of each paged
  set (items, norm rows), one for $metadata, warehouses, packages and the open-orders lookup,
  and one ``Balance`` call for the stock of all warehouses;
* wall time vs that minimum × latency / max_concurrency;
* peak RSS of the hub process (``resource.getrusage``), and of the emulator for information.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import resource
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog
from pydantic import SecretStr

from daemon.model import EMPTY_GUID
from daemon.onec.connector import OneCConnector
from daemon.onec.settings import OneCSettings

WAREHOUSES = ["Магазин Центральный", "Бестужевых", "Контейнер"]
TARGET_RATIO = 1.5
TARGET_RSS_MB = 250


def _minimum(n_items: int, page_size: int) -> dict[str, int]:
    """Requests the data needs at the least (computed from the data set the emulator serves)."""
    from daemon.sandbox.dataset import build_demo_dataset

    dataset = build_demo_dataset(n_items)
    keys = {dataset.warehouse_key(name) for name in WAREHOUSES}
    live = [i for i in dataset.items if not i.is_folder and not i.deletion_mark]
    norm_rows = [
        n
        for n in dataset.norms
        if n.active
        and n.characteristic_key == EMPTY_GUID
        and (n.warehouse_key in keys or (n.is_group and n.warehouse_key == EMPTY_GUID))
    ]
    pages = -(-len(live) // page_size) + -(-len(norm_rows) // page_size)
    return {"pages": pages, "singles": 6, "items": len(live), "norm_rows": len(norm_rows)}


def _serve(n_items: int, latency_s: float, pipe: Connection) -> None:
    """The emulator process: build the base, serve it, report URL and minimum, wait for stop."""
    from daemon.sandbox.dataset import build_demo_dataset
    from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox

    async def main() -> None:
        sandbox = OneCSandbox(build_demo_dataset(n_items))
        sandbox.latency_s = latency_s
        async with run_onec_sandbox(sandbox) as base:
            pipe.send(base)
            await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
            pipe.send(sandbox.request_count)

    asyncio.run(main())


async def _run(base: str, settings_extra: dict[str, Any]) -> tuple[float, int, dict[str, int]]:
    settings = OneCSettings(base_url=base, username="hub", **settings_extra)  # type: ignore[arg-type]
    started = time.perf_counter()
    async with OneCConnector(settings, SecretStr("sandbox")) as onec:
        found = await onec.resolve_warehouses(WAREHOUSES)
        keys = [found[name].key for name in WAREHOUSES]
        items, norms, free, incoming = await asyncio.gather(
            onec.read_items(),
            onec.read_norms(keys),
            onec.read_free_stock(keys),
            onec.read_incoming_transfers(keys[0]),
        )
        elapsed = time.perf_counter() - started
        sizes = {"items": len(items), "norms": len(norms), "free": len(free), "in": len(incoming)}
        return elapsed, onec.request_count, sizes


def main() -> int:
    # A run logs at info; per-request debug lines are not part of what is measured.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    defaults = OneCSettings(base_url="http://127.0.0.1/", username="hub")  # type: ignore[arg-type]
    concurrency, page_size = defaults.max_concurrency, defaults.page_size
    latency = args.latency_ms / 1000

    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    server = context.Process(target=_serve, args=(args.items, latency, theirs), daemon=True)
    server.start()
    minimum = _minimum(args.items, page_size)
    if not ours.poll(120):
        print("the emulator did not start", file=sys.stderr)
        return 2
    base = ours.recv()
    # The first pass warms the emulator: its own work (filtering and JSON-encoding ~25 MB in
    # one Python process, serially) is the server's cost, not the hub's, and a real 1C serves
    # concurrent sessions in parallel. The second pass is the measured one.
    cold, _, _ = asyncio.run(_run(base, {}))
    # Best of three measured passes: a shared 2-core machine is noisy.
    passes = []
    for _ in range(3):
        cpu_before = time.process_time()
        elapsed, made, sizes = asyncio.run(_run(base, {}))
        passes.append((elapsed, time.process_time() - cpu_before, made, sizes))
    elapsed, hub_cpu, made, sizes = min(passes, key=lambda p: p[0])
    ours.send("stop")
    served = ours.recv()
    server.join(10)

    least = minimum["pages"] + minimum["singles"]
    reference = least * latency / concurrency
    hub_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    emulator_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    request_ratio, time_ratio = made / least, elapsed / reference

    def verdict(ok: bool) -> str:
        return "ok" if ok else "OVER TARGET"

    print(
        f"1C reads for one run: {sizes['items']} items × {len(WAREHOUSES)} warehouses, "
        f"latency {args.latency_ms:g} ms, max_concurrency {concurrency}, page_size {page_size}"
    )
    print(
        f"  read: {sizes['norms']} norms from {minimum['norm_rows']} norm rows, "
        f"{sizes['free']} free-stock pairs, {sizes['in']} incoming items"
    )
    print(
        f"requests made   {made:8d}    minimum {least} ({minimum['pages']} pages + "
        f"{minimum['singles']} single requests)    ratio {request_ratio:.2f} "
        f"(target ≤ {TARGET_RATIO})  {verdict(request_ratio <= TARGET_RATIO)}"
    )
    print(
        f"wall time       {elapsed:8.3f} s  reference {reference:.3f} s "
        f"({least} × {args.latency_ms:g} ms / {concurrency})    ratio {time_ratio:.2f} "
        f"(target ≤ {TARGET_RATIO})  {verdict(time_ratio <= TARGET_RATIO)}"
    )
    print(
        f"peak RSS (hub)  {hub_rss:8.1f} MB target ≤ {TARGET_RSS_MB} MB  "
        f"{verdict(hub_rss <= TARGET_RSS_MB)}"
    )
    print(
        f"  for information: hub CPU {hub_cpu:.3f} s; first (cold-emulator) pass {cold:.3f} s; "
        f"emulator peak RSS {emulator_rss:.1f} MB, {served} requests served over all passes"
    )
    ok = request_ratio <= TARGET_RATIO and time_ratio <= TARGET_RATIO and hub_rss <= TARGET_RSS_MB
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
