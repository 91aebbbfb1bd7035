"""Crash soak (issue #6): SIGKILL hubd at random moments; no document may be lost or duplicated.

Both emulators run in this process, so their state outlives every daemon; faults are on (random
5xx and hangs, answers dropped after a create committed, latency). In a loop, hubd is started on
one state directory, a replenishment run is triggered, and hubd is SIGKILLed after a random wait
(sometimes during start-up, sometimes after a longer wait so deliveries are in flight). While it
is down, every document it created is "closed" without moving goods (МойСклад: shipped; 1C:
nothing outstanding on any line), so the next run orders the same deficits again as new
documents. At the end hubd runs once more without faults until the outbox is drained, and every
outbox row (idempotency key, kind, lines) is compared with the documents in both emulators:

- lost: a planned document missing in its emulator, a row still undelivered after the drain,
  or a run whose stored plan counts more documents than it has outbox rows;
- duplicated: a second document for one key (1C: same ``Ref_Key`` or marker key; МойСклад: same
  ``syncId`` or ``externalCode``), or a document no outbox row accounts for;
- mismatched: a document whose lines, quantities, warehouses or posting differ from its row;
- over-ordered: an item whose documents still open when a run planned add up to more than the
  whole deficit (one deficit ordered twice under different keys, which no key check sees).

Dead rows are counted separately. The last three lines printed are ``kills: N``, ``lost: N``,
``duplicated: N``; the exit status is 1 when anything is lost, duplicated, mismatched,
over-ordered or dead, when hubd exited on its own, or when fewer kills than asked were made.

    .venv/bin/python scripts/crash_soak.py [--kills 500] [--seed 1] [--items 60] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import random
import secrets
import shutil
import socket
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import grpc

from daemon.model import CustomerOrderDocument, TransferOrderDocument
from daemon.sandbox.dataset import DONOR_NAMES, TARGET_NAME, build_demo_dataset
from daemon.sandbox.moysklad_emulator import MoySkladSandbox, run_moysklad_sandbox
from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox
from protos.hub.v1 import control_pb2 as pb
from protos.hub.v1 import control_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
UNDELIVERED = ("pending", "in_flight", "retry_wait", "outcome_unknown")
Say = Callable[[str], None]
Order = dict[str, Any]  # one document as an emulator's inspection helper shows it


@dataclass(frozen=True)
class SoakOptions:
    kills: int = 500
    seed: int = 1
    items: int = 60
    max_wait_s: float = 2.0  # the usual kill comes 0..max_wait_s after the trigger
    long_wait_share: float = 0.15  # these wait max_wait_s..3*max_wait_s instead
    startup_kill_share: float = 0.05  # these kill during start-up, before READY
    onec_fault_rate: float = 0.08
    moysklad_fault_rate: float = 0.05
    drop_share: float = 0.3  # lives in which each emulator drops the answer of a committed create
    latency_s: float = 0.01
    lease_s: float = 3.0  # short, so the rows of a killed daemon are reclaimed within the soak
    drain_limit_s: float = 180.0
    progress_every: int = 50


@dataclass
class Audit:
    rows: int = 0
    delivered: int = 0
    runs: int = 0
    runs_with_documents: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    over_ordered: list[str] = field(default_factory=list)


@dataclass
class SoakResult:
    target_kills: int
    kills: int = 0
    kills_mid_delivery: int = 0  # the killed daemon held a lease on a row being delivered
    unexpected_exits: int = 0
    trigger_failures: int = 0
    wall_s: float = 0.0
    audit: Audit = field(default_factory=Audit)
    coverage: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        a = self.audit
        problems = (
            a.lost or a.duplicated or a.mismatched or a.dead or a.over_ordered
        ) or self.unexpected_exits
        return self.kills >= self.target_kills and not problems

    def report(self) -> list[str]:
        a = self.audit
        lines = [
            f"runs {a.runs} (with documents {a.runs_with_documents}), outbox rows {a.rows}, "
            f"delivered {a.delivered}, wall time {self.wall_s:.0f} s",
            f"kills mid-delivery {self.kills_mid_delivery}, trigger failures "
            f"{self.trigger_failures}, hubd exits on its own {self.unexpected_exits}",
            ", ".join(f"{name} {count}" for name, count in self.coverage.items()),
            f"dead: {len(a.dead)}",
            f"mismatched: {len(a.mismatched)}",
            f"over-ordered: {len(a.over_ordered)}",
        ]
        for label, found in (
            ("dead", a.dead),
            ("mismatched", a.mismatched),
            ("over-ordered", a.over_ordered),
        ):
            lines += [f"  {label}: {text}" for text in found[:10]]
        for label, found in (("lost", a.lost), ("duplicated", a.duplicated)):
            lines += [f"  {label}: {text}" for text in found[:10]]
        return [
            *lines,
            f"kills: {self.kills}",
            f"lost: {len(a.lost)}",
            f"duplicated: {len(a.duplicated)}",
        ]


# -- the daemon under test ----------------------------------------------------------------------


def config_text(state: Path, onec_url: str, moysklad_url: str, lease_s: float) -> str:
    donors = ", ".join(f'"{name}"' for name in DONOR_NAMES)
    return f"""[hub]
state_dir = "{state}"
shutdown_timeout_s = 10
[control]
socket_path = "{state / "hubd.sock"}"
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

    async def trigger(self) -> bool:
        async with grpc.aio.insecure_channel(f"unix:{self.socket_path}") as channel:
            api = control_pb2_grpc.HubControlStub(channel)
            try:
                await api.TriggerRun(pb.TriggerRunRequest(job="replenishment"), timeout=10)
            except grpc.aio.AioRpcError:
                return False
        return True

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


# -- the emulators ------------------------------------------------------------------------------


class Closer:
    """Closes the hub's documents without moving goods, so their deficits count again."""

    def __init__(self, onec: OneCSandbox, moysklad: MoySkladSandbox) -> None:
        self._onec, self._moysklad = onec, moysklad
        self.closed_at: dict[str, float] = {}  # 1C Ref_Key / МойСклад id → when it was closed

    def close_all(self) -> None:
        for order in self._onec.transfer_orders():
            # An unposted order has no register rows yet; once the hub posts it, a later pass
            # closes it.
            if order["Posted"] and order["Ref_Key"] not in self.closed_at:
                for line in order["lines"]:
                    self._onec.set_transfer_outstanding(
                        order["Ref_Key"], line["item_key"], Decimal(0)
                    )
                self.closed_at[order["Ref_Key"]] = time.time()
        for ms_order in self._moysklad.orders():
            if ms_order["id"] not in self.closed_at:
                self._moysklad.mark_shipped(ms_order["id"])
                self.closed_at[ms_order["id"]] = time.time()


def set_faults(
    onec: OneCSandbox, moysklad: MoySkladSandbox, options: SoakOptions | None, rng: random.Random
) -> None:
    """Faults for the next life of hubd (``options`` None: none at all)."""
    onec.fault_rate = options.onec_fault_rate if options else 0.0
    moysklad.fault_rate = options.moysklad_fault_rate if options else 0.0
    onec.latency_s = moysklad.latency_s = options.latency_s if options else 0.0
    drop = options.drop_share if options else 0.0
    onec.drop_after_commit = int(rng.random() < drop)
    moysklad.drop_after_commit = int(rng.random() < drop)


def coverage(onec: OneCSandbox, moysklad: MoySkladSandbox, log: Path) -> dict[str, int]:
    """What the faults and kills provoked: evidence the soak exercised the hard paths."""
    found = Counter[str]()
    with log.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if '"outbox_delivered"' in line and '"created_now": false' in line:
                found["deliveries that found their document already there"] += 1
    faults = sum(n for kind, n in onec.requests_by_kind.items() if kind.startswith("fault_"))
    return {
        **found,
        "1C faults": faults,
        "1C answers dropped after commit": onec.requests_by_kind["dropped_after_commit"],
        "МойСклад faults": moysklad.faults_injected,
        "МойСклад answers dropped after commit": moysklad.drops,
    }


# -- the audit ----------------------------------------------------------------------------------


def _query(path: Path, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(path, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql, tuple(params)).fetchall()
    finally:
        conn.close()


def undrained(path: Path) -> int:
    marks = ",".join("?" for _ in UNDELIVERED)
    rows = _query(path, f"SELECT count(*) FROM outbox WHERE state IN ({marks})", UNDELIVERED)
    return int(rows[0][0])


def leased_by(path: Path, owner: str) -> int:
    if not path.exists():  # killed before it created its database
        return 0
    sql = "SELECT count(*) FROM outbox WHERE state = 'in_flight' AND lease_owner = ?"
    return int(_query(path, sql, (owner,))[0][0])


def _totals(pairs: Iterable[tuple[str, Any]]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for key, qty in pairs:
        totals[key] = totals.get(key, Decimal(0)) + Decimal(str(qty))
    return totals


def _item_totals(row: sqlite3.Row) -> dict[str, Decimal]:
    doc: TransferOrderDocument | CustomerOrderDocument
    if row["kind"] == "onec_transfer_order":
        doc = TransferOrderDocument.model_validate_json(row["payload_json"])
    else:
        doc = CustomerOrderDocument.model_validate_json(row["payload_json"])
    return _totals((line.item_key, line.quantity) for line in doc.lines)


def _marker_key(comment: str) -> str | None:
    return next((t[4:] for t in comment.split() if t.startswith("key=")), None)


def _onec_match(payload: str, orders: list[Order]) -> tuple[list[str], list[str]]:
    """(every 1C order this row accounts for, those that differ from it)."""
    doc = TransferOrderDocument.model_validate_json(payload)
    found = [
        o for o in orders
        if o["Ref_Key"] == doc.ref_key or _marker_key(o["comment"]) == doc.idempotency_key
    ]  # fmt: skip
    wanted = _totals((line.item_key, line.quantity) for line in doc.lines)
    bad = [
        o["Ref_Key"] for o in found
        if not o["Posted"]
        or (o["sender"], o["receiver"]) != (doc.sender_key, doc.receiver_key)
        or _totals((line["item_key"], line["quantity"]) for line in o["lines"]) != wanted
    ]  # fmt: skip
    return [o["Ref_Key"] for o in found], bad


def _moysklad_match(payload: str, orders: list[Order]) -> tuple[list[str], list[str]]:
    """(every МойСклад order this row accounts for, those that differ from it)."""
    doc = CustomerOrderDocument.model_validate_json(payload)
    found = [
        o for o in orders if doc.sync_id == o["syncId"] or doc.external_code == o["externalCode"]
    ]
    wanted = _totals((line.product_id, line.quantity) for line in doc.lines)
    bad = [
        o["id"] for o in found
        if _totals((p["product_id"], p["quantity"]) for p in o["positions"]) != wanted
    ]  # fmt: skip
    return [o["id"] for o in found], bad


def _over_ordered(opened: list[tuple[str, float, float, dict[str, Decimal]]]) -> list[str]:
    """Items whose open documents, once a run had planned, exceed what the first run ordered.

    ``opened`` holds (run id, run start, when the soak closed the document or inf, quantity per
    item) per outbox row. The first run saw no open documents, so it ordered the whole deficit;
    a later run may only add what the documents still open at its start do not cover. More
    means one deficit was ordered twice, under different keys, which no key check can see.
    """
    starts = sorted({(start, run) for run, start, _, _ in opened})
    cap: dict[str, Decimal] = {}
    found = []
    for start, run in starts:
        open_now: dict[str, Decimal] = {}
        for other, other_start, closed, totals in opened:
            if other == run or (other_start < start < closed):
                for item, qty in totals.items():
                    open_now[item] = open_now.get(item, Decimal(0)) + qty
        cap = cap or open_now
        found += [
            f"run {run}: {qty} of item {item} open, the whole deficit is {cap.get(item, 0)}"
            for item, qty in sorted(open_now.items())
            if qty > cap.get(item, Decimal(0))
        ]
    return found


def audit(
    db_path: Path,
    onec_orders: list[Order],
    ms_orders: list[Order],
    closed_at: dict[str, float] | None = None,
) -> Audit:
    """Compare every run's outbox rows with the documents in both emulators.

    ``onec_orders`` and ``ms_orders`` are what ``OneCSandbox.transfer_orders()`` and
    ``MoySkladSandbox.orders()`` return; ``closed_at`` is ``Closer.closed_at``.
    """
    closed_at = closed_at or {}
    rows = _query(db_path, "SELECT * FROM outbox ORDER BY id")
    runs = _query(db_path, "SELECT id, started_at, counts_json FROM runs")
    started = {str(run["id"]): float(run["started_at"]) for run in runs}
    opened = []
    result = Audit(rows=len(rows), runs=len(runs))
    per_run = Counter(str(row["run_id"]) for row in rows)
    for run in runs:
        planned = int(json.loads(run["counts_json"] or "{}").get("documents", 0))
        result.runs_with_documents += planned > 0
        if per_run[run["id"]] < planned:
            result.lost.append(
                f"run {run['id']} planned {planned}, outbox has {per_run[run['id']]}"
            )
    used: set[str] = set()
    for row in rows:
        key, state = str(row["idempotency_key"]), str(row["state"])
        if row["kind"] == "onec_transfer_order":
            ids, bad = _onec_match(row["payload_json"], onec_orders)
        else:
            ids, bad = _moysklad_match(row["payload_json"], ms_orders)
        used.update(ids)
        closed = min((closed_at.get(i, math.inf) for i in ids), default=math.inf)
        run_id = str(row["run_id"])
        opened.append((run_id, started[run_id], closed, _item_totals(row)))
        result.delivered += state == "delivered"
        if state == "dead":
            result.dead.append(f"{key} ({len(ids)} document(s)): {row['last_error']}")
        elif state != "delivered":
            result.lost.append(f"{key} still {state} after the drain")
        elif not ids:
            result.lost.append(f"{key} is delivered as {row['external_id']}, which does not exist")
        elif row["external_id"] not in ids:
            result.mismatched.append(f"{key}: the outbox says {row['external_id']}, found {ids}")
        result.duplicated += [f"{key} also as {extra}" for extra in ids[1:]]
        result.mismatched += [f"{key}: document {ref} differs from the row" for ref in bad]
    result.duplicated += [
        f"1C order {o['Ref_Key']} ({o['comment']!r}) matches no outbox row"
        for o in onec_orders
        if o["Ref_Key"] not in used
    ]
    result.duplicated += [
        f"МойСклад order {o['id']} ({o['externalCode']}) matches no outbox row"
        for o in ms_orders
        if o["id"] not in used
    ]
    result.over_ordered = _over_ordered(opened)
    return result


# -- the soak -----------------------------------------------------------------------------------


async def _one_life(
    daemon: Daemon, db_path: Path, options: SoakOptions, rng: random.Random, result: SoakResult
) -> bool:
    """Start, trigger, wait, SIGKILL; False if hubd exited on its own instead."""
    await daemon.start()
    if rng.random() < options.startup_kill_share:
        await asyncio.sleep(rng.uniform(0.0, 0.6))
    else:
        if not await daemon.wait_ready():
            return False
        result.trigger_failures += not await daemon.trigger()
        wait = rng.uniform(0.0, options.max_wait_s)
        if rng.random() < options.long_wait_share:
            wait = rng.uniform(options.max_wait_s, 3 * options.max_wait_s)
        await asyncio.sleep(wait)
    if daemon.exited() is not None:
        return False
    await daemon.kill()
    result.kills += 1
    if await asyncio.to_thread(leased_by, db_path, daemon.worker_id):
        result.kills_mid_delivery += 1
    return True


async def _drain(daemon: Daemon, db_path: Path, limit_s: float) -> None:
    """Run hubd until no row waits for delivery (or ``limit_s`` passes), then stop it."""
    await daemon.start()
    if not await daemon.wait_ready():
        raise RuntimeError(f"hubd exited with {daemon.exited()} before the final drain")
    for _ in range(int(limit_s / 0.5)):
        if not await asyncio.to_thread(undrained, db_path):
            break
        await asyncio.sleep(0.5)
    await daemon.stop()


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


async def run_soak(options: SoakOptions, workdir: Path, say: Say) -> SoakResult:
    """The whole soak in ``workdir``, an existing empty directory (kept for the post-mortem)."""
    started = time.monotonic()
    rng = random.Random(options.seed)
    dataset = build_demo_dataset(n_items=options.items, seed=options.seed)
    password, token = secrets.token_hex(12), secrets.token_hex(16)
    onec = OneCSandbox(dataset, username="hub", password=password)
    onec.seed, onec.hang_s = options.seed, 1.0
    moysklad = MoySkladSandbox(dataset.moysklad_products, token=token, weight=1, seed=options.seed)
    closer = Closer(onec, moysklad)
    db_path, log_path = workdir / "state" / "hub.sqlite3", workdir / "hubd.log"
    result = SoakResult(target_kills=options.kills)
    async with AsyncExitStack() as stack:
        onec_url = await stack.enter_async_context(run_onec_sandbox(onec))
        moysklad_url = await stack.enter_async_context(run_moysklad_sandbox(moysklad))
        config = _write(
            workdir / "config.toml",
            config_text(workdir / "state", onec_url, moysklad_url, options.lease_s),
        )
        log = stack.enter_context(log_path.open("ab"))
        env = {"HUB_ONEC_PASSWORD": password, "HUB_MOYSKLAD_TOKEN": token, "PYTHONUNBUFFERED": "1"}
        daemon = Daemon(workdir, config, env, log)
        stack.callback(daemon.close)
        stack.push_async_callback(daemon.kill)
        for _ in range(options.kills * 2):
            if result.kills >= options.kills:
                break
            before = result.kills
            set_faults(onec, moysklad, options, rng)
            if not await _one_life(daemon, db_path, options, rng, result):
                result.unexpected_exits += 1
                say(f"hubd exited on its own with status {daemon.exited()}; see {log_path}")
                await daemon.kill()
            closer.close_all()
            if result.kills != before and result.kills % options.progress_every == 0:
                say(
                    f"kills {result.kills}/{options.kills}: 1C orders {len(onec.transfer_orders())}"
                    f", МойСклад orders {len(moysklad.orders())}, "
                    f"{time.monotonic() - started:.0f} s"
                )
        set_faults(onec, moysklad, None, rng)
        say("final drain without faults")
        await _drain(daemon, db_path, options.drain_limit_s)
        result.audit = await asyncio.to_thread(
            audit, db_path, onec.transfer_orders(), moysklad.orders(), closer.closed_at
        )
    result.coverage = await asyncio.to_thread(coverage, onec, moysklad, log_path)
    result.wall_s = time.monotonic() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SIGKILL hubd at random moments; audit after.")
    parser.add_argument("--kills", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--items", type=int, default=60, help="demo data set size")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    # A SIGKILLed client leaves a request body half sent; the emulators' server logs each one
    # with a traceback, which would bury the progress lines.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    options = SoakOptions(kills=args.kills, seed=args.seed, items=args.items)
    workdir = Path(tempfile.mkdtemp(prefix="hub-soak-"))
    print(f"crash soak: {options.kills} kills, seed {options.seed}, {options.items} items")
    print(f"work directory: {workdir}", flush=True)
    result = asyncio.run(run_soak(options, workdir, lambda text: print(text, flush=True)))
    if args.keep or not result.ok:
        print(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(result.report()))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
