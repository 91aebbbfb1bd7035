"""Outbox throughput and wake-up latency on this machine's disk.

Prints, from one run on one directory:

- the raw single-row commit rate of SQLite (stdlib ``sqlite3``, WAL, ``synchronous=FULL``): the
  ceiling for anything that commits once per row;
- outbox deliveries per second through ``OutboxProcessor.drain_once()`` to no-op remotes, on the
  daemon's own database settings (WAL, ``synchronous=FULL``), and its ratio to the raw rate
  (target ≥ 0.25);
- enqueue → first attempt latency while ``run()`` is idle (interval 30 s, so only ``wake()``
  explains a prompt attempt), p50/p99 (target p99 ≤ 100 ms),
  measured from the start of the enqueue transaction to the remote being called.

Log events below WARNING are dropped so the console does not become the bottleneck.

    .venv/bin/python benchmarks/bench_outbox.py [--dir DIR] [--rows N] [--samples N] [--rounds N]

The raw rate and the outbox rate are measured alternately, ``--rounds`` times, and compared by
their medians, because the disk's flush speed drifts with other I/O on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import structlog

from daemon.config import OutboxSection
from daemon.model import (
    CustomerOrderDocument,
    DeliveredDocument,
    Document,
    OrderLine,
    TransferLine,
    TransferOrderDocument,
    deterministic_uuid,
)
from daemon.outbox.processor import OutboxProcessor
from daemon.store import Database, open_database
from daemon.store.outbox import enqueue


class NoOpRemote:
    """Accepts every document at once; ``called`` fires on each call."""

    def __init__(self) -> None:
        self.calls = 0
        self.called = asyncio.Event()

    def _accept(self, key: str) -> DeliveredDocument:
        self.calls += 1
        self.called.set()
        return DeliveredDocument(
            external_id=deterministic_uuid(key), number=str(self.calls), created_now=True
        )

    async def deliver_transfer_order(
        self, doc: TransferOrderDocument, *, look_up_first: bool
    ) -> DeliveredDocument:
        return self._accept(doc.idempotency_key)

    async def deliver_customer_order(
        self, doc: CustomerOrderDocument, *, look_up_first: bool
    ) -> DeliveredDocument:
        return self._accept(doc.idempotency_key)


def make_doc(run_id: str, n: int) -> Document:
    key = f"{run_id}/{n}"
    if n % 2:
        return CustomerOrderDocument(
            idempotency_key=key,
            sync_id=deterministic_uuid(key),
            run_id=run_id,
            external_code=f"hub-{run_id}-{n}",
            description="bench",
            target_name="Магазин Центральный",
            lines=tuple(
                OrderLine(product_id=f"p{i}", item_key=f"i{i}", quantity=Decimal(i + 1))
                for i in range(10)
            ),
        )
    return TransferOrderDocument(
        idempotency_key=key,
        ref_key=deterministic_uuid(key),
        run_id=run_id,
        sender_key="s",
        sender_name="Бестужевых",
        receiver_key="r",
        receiver_name="Магазин Центральный",
        date=datetime(2026, 11, 26, 9),
        desired_arrival=datetime(2026, 11, 28, 9),
        comment=f"bisnesmedia-hub key={key} run={run_id}",
        lines=tuple(
            TransferLine(item_key=f"i{i}", quantity=Decimal(i + 1), packages=Decimal(i + 1))
            for i in range(10)
        ),
    )


def raw_commit_rate(path: Path, seconds: float) -> float:
    """Single-row INSERT + COMMIT per row, as fast as stdlib sqlite3 can go."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t (v) VALUES (?)", ("x" * 200,))
            conn.execute("COMMIT")
            count += 1
        return count / (time.perf_counter() - start)
    finally:
        conn.close()


async def add_run(db: Database, run_id: str) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO runs (id, job, trigger, status, started_at) "
            "VALUES (?, 'bench', 'manual', 'running', ?)",
            (run_id, time.time()),
        )


async def delivery_rate(path: Path, rows: int, settings: OutboxSection, label: str) -> float:
    db = await open_database(path)
    try:
        run_id = f"bench-{label}"
        await add_run(db, run_id)
        async with db.transaction() as conn:
            await enqueue(conn, run_id, [make_doc(run_id, n) for n in range(rows)], time.time())
        remote = NoOpRemote()
        processor = OutboxProcessor(db, settings, remote, remote, worker_id=f"bench-{label}")
        start = time.perf_counter()
        processed = await processor.drain_once()
        elapsed = time.perf_counter() - start
        if processed != rows or remote.calls != rows:
            raise SystemExit(f"expected {rows} deliveries, got {processed} ({remote.calls} calls)")
        return rows / elapsed
    finally:
        await db.close()


async def wake_latency(path: Path, samples: int) -> list[float]:
    db = await open_database(path)
    remote = NoOpRemote()
    processor = OutboxProcessor(
        db, OutboxSection(interval_s=30.0), remote, remote, worker_id="bench-latency"
    )
    loop = asyncio.create_task(processor.run(), name="bench-outbox-run")
    latencies: list[float] = []
    try:
        run_id = "bench-latency"
        await add_run(db, run_id)
        for n in range(samples):
            await asyncio.wait_for(processor.wait_idle(), 30)
            # Let the loop settle into its wait, as a processor idle between runs would be.
            await asyncio.sleep(0.002)
            remote.called.clear()
            start = time.perf_counter()
            async with db.transaction() as conn:
                await enqueue(conn, run_id, [make_doc(run_id, n)], time.time())
            processor.wake()
            await asyncio.wait_for(remote.called.wait(), 30)
            latencies.append(time.perf_counter() - start)
    finally:
        loop.cancel()
        await asyncio.wait({loop})
        await db.close()
    if not loop.cancelled() and loop.exception() is not None:
        raise RuntimeError("the outbox loop crashed") from loop.exception()
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def main_async(directory: Path, rows: int, samples: int, rounds: int) -> int:
    print(f"directory: {directory}  (rows {rows} per round, {rounds} rounds, {samples} samples)")
    # Disk flush speed drifts (other I/O on the machine), so the baseline and the outbox are
    # measured in alternation and compared by their medians.
    configs = {
        "default": OutboxSection(),
        "max": OutboxSection(concurrency_onec=16, concurrency_moysklad=5),
    }
    raw_rates: list[float] = []
    rates: dict[str, list[float]] = {label: [] for label in configs}
    for n in range(rounds):
        raw_rates.append(raw_commit_rate(directory / f"raw-{n}.db", 1.0))
        for label, settings in configs.items():
            path = directory / f"outbox-{label}-{n}.db"
            rates[label].append(await delivery_rate(path, rows, settings, f"{label}-{n}"))
    raw = statistics.median(raw_rates)
    print(
        f"raw sqlite3 single-row commits (WAL, synchronous=FULL): median {raw:7.0f} /s  "
        f"rounds {' '.join(f'{rate:.0f}' for rate in raw_rates)}"
    )
    ok = True
    for label, settings in configs.items():
        rate = statistics.median(rates[label])
        ratio = rate / raw
        print(
            f"outbox deliveries, no-op remotes, concurrency 1C {settings.concurrency_onec} / "
            f"МойСклад {settings.concurrency_moysklad}: median {rate:7.0f} /s  "
            f"rounds {' '.join(f'{value:.0f}' for value in rates[label])}  "
            f"ratio {ratio:.2f} (target >= 0.25)"
        )
        ok = ok and ratio >= 0.25
    latencies = await wake_latency(directory / "latency.db", samples)
    p50, p99 = percentile(latencies, 0.50) * 1000, percentile(latencies, 0.99) * 1000
    print(
        f"enqueue -> first attempt while idle: p50 {p50:.2f} ms  p99 {p99:.2f} ms  "
        f"max {max(latencies) * 1000:.2f} ms  (target p99 <= 100 ms)"
    )
    ok = ok and p99 <= 100
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(main_async(args.dir, args.rows, args.samples, args.rounds))
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmp:
        return asyncio.run(main_async(Path(tmp), args.rows, args.samples, args.rounds))


if __name__ == "__main__":
    sys.exit(main())
