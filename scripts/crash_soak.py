"""Crash soak (issue #6): SIGKILL hubd at random moments; no document may be lost or duplicated.

Both emulators run in this process, so their state outlives every daemon; faults are switched on
(random 5xx and hangs, answers dropped after a create committed, latency). In a loop, hubd is
started on one state directory, a replenishment run is triggered, and hubd is SIGKILLed after a
random wait (sometimes during start-up, sometimes after a longer wait so deliveries are in
flight). While it is down, every document it created is "closed" without moving goods
(МойСклад: shipped; 1C: nothing outstanding on any line), so the next run orders the same
deficits again as new documents. At the end hubd runs once more without faults until the outbox
is drained, and every outbox row (idempotency key, kind, lines) is compared with the documents
in both emulators:

- lost: a planned document missing in its emulator (or a run whose plan counted more documents
  than it has outbox rows, or a row never drained);
- duplicated: two documents for one key (1C: same ``Ref_Key`` or marker key; МойСклад: same
  ``syncId`` or ``externalCode``), or a document no outbox row accounts for;
- mismatched: a document whose lines, quantities, warehouses or posting differ from the row.

Dead rows are counted separately. The last three lines printed are ``kills: N``, ``lost: N``,
``duplicated: N``; the exit status is 1 when anything is lost, duplicated, mismatched or dead,
when hubd exited on its own, or when fewer kills than asked were made.

    .venv/bin/python scripts/crash_soak.py [--kills 500] [--seed 1] [--items 60] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO

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
    lease_s: float = 3.0  # short, so rows of a killed daemon are reclaimed within the soak
    drain_timeout_s: float = 180.0
    progress_every: int = 50


@dataclass
class Audit:
    rows: int = 0
    delivered: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)


@dataclass
class SoakResult:
    kills: int
    runs_planned: int
    audit: Audit
    unexpected_exits: int
    trigger_failures: int
    wall_s: float
    target_kills: int

    @property
    def ok(self) -> bool:
        a = self.audit
        return (
            self.kills >= self.target_kills
            and not (a.lost or a.duplicated or a.mismatched or a.dead)
            and self.unexpected_exits == 0
        )

    def report(self) -> list[str]:
        a = self.audit
        lines = [
            f"runs with documents: {self.runs_planned}, outbox rows: {a.rows}, "
            f"delivered: {a.delivered}, trigger failures: {self.trigger_failures}, "
            f"hubd exits on its own: {self.unexpected_exits}, wall time: {self.wall_s:.0f} s",
        ]
        for label, found in (("dead", a.dead), ("mismatched", a.mismatched)):
            lines.append(f"{label}: {len(found)}")
            lines += [f"  {text}" for text in found[:10]]
        lines += [f"  lost: {text}" for text in a.lost[:10]]
        lines += [f"  duplicated: {text}" for text in a.duplicated[:10]]
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
    """hubd lives on one state directory; READY comes over our own NOTIFY_SOCKET."""

    def __init__(self, workdir: Path, config: Path, env: dict[str, str], log: IO[bytes]) -> None:
        self.socket_path = workdir / "state" / "hubd.sock"
        self._config = config
        self._log = log
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(workdir / "notify.sock"))
        self._notify.setblocking(False)
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("HUB_", "NOTIFY_", "WATCHDOG_", "CREDENTIALS_"))
        }
        self._env = {**clean, **env, "NOTIFY_SOCKET": str(workdir / "notify.sock")}
        self.proc: asyncio.subprocess.Process | None = None

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
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
        if self.proc is not None:
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
    """Closes delivered documents without moving goods, so their deficits count again."""

    def __init__(self, onec: OneCSandbox, moysklad: MoySkladSandbox) -> None:
        self._onec, self._moysklad = onec, moysklad
        self._onec_done: set[str] = set()
        self._moysklad_done: set[str] = set()

    def close_all(self) -> None:
        for order in self._onec.transfer_orders():
            # Unposted orders have no register rows yet; the hub posts them later, so they are
            # closed on a later pass.
            if order["Posted"] and order["Ref_Key"] not in self._onec_done:
                for line in order["lines"]:
                    self._onec.set_transfer_outstanding(
                        order["Ref_Key"], line["item_key"], Decimal(0)
                    )
                self._onec_done.add(order["Ref_Key"])
        for ms_order in self._moysklad.orders():
            if ms_order["id"] not in self._moysklad_done:
                self._moysklad.mark_shipped(ms_order["id"])
                self._moysklad_done.add(ms_order["id"])


def set_faults(
    onec: OneCSandbox, moysklad: MoySkladSandbox, options: SoakOptions | None, rng: random.Random
) -> None:
    """Faults for the next life (``options`` None: none at all)."""
    onec.fault_rate = options.onec_fault_rate if options else 0.0
    moysklad.fault_rate = options.moysklad_fault_rate if options else 0.0
    onec.latency_s = moysklad.latency_s = options.latency_s if options else 0.0
    drop = options.drop_share if options else 0.0
    onec.drop_after_commit = int(rng.random() < drop)
    moysklad.drop_after_commit = int(rng.random() < drop)


# -- the audit ----------------------------------------------------------------------------------


def _read_db(path: Path) -> tuple[list[sqlite3.Row], list[sqlite3.Row]]:
    with sqlite3.connect(path, timeout=10) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT id, run_id, kind, idempotency_key, payload_json, state, external_id, "
            "last_error FROM outbox ORDER BY id"
        ).fetchall()
        runs = conn.execute("SELECT id, counts_json FROM runs").fetchall()
    conn.close()
    return rows, runs


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _append(path: Path) -> IO[bytes]:
    return path.open("ab")


def undrained(path: Path) -> int:
    with sqlite3.connect(path, timeout=10) as conn:
        marks = ",".join("?" for _ in UNDELIVERED)
        (count,) = conn.execute(
            f"SELECT count(*) FROM outbox WHERE state IN ({marks})", UNDELIVERED
        ).fetchone()
    conn.close()
    return int(count)


def _marker_key(comment: str) -> str | None:
    for token in comment.split():
        if token.startswith("key="):
            return token[4:]
    return None


def _totals(pairs: list[tuple[str, Decimal]]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for key, qty in pairs:
        totals[key] = totals.get(key, Decimal(0)) + qty
    return totals


def audit(db_path: Path, onec: OneCSandbox, moysklad: MoySkladSandbox) -> tuple[Audit, int]:
    """Compare every outbox row with both emulators; also returns how many runs planned any."""
    rows, runs = _read_db(db_path)
    result = Audit(rows=len(rows))
    per_run = Counter(str(row["run_id"]) for row in rows)
    planned_runs = 0
    for run in runs:
        planned = int(json.loads(run["counts_json"] or "{}").get("documents", 0))
        planned_runs += planned > 0
        if per_run[run["id"]] < planned:
            result.lost.append(
                f"run {run['id']} planned {planned}, outbox has {per_run[run['id']]}"
            )

    onec_orders = onec.transfer_orders()
    ms_orders = moysklad.orders()
    onec_used: set[str] = set()
    ms_used: set[str] = set()
    for row in rows:
        key, state = str(row["idempotency_key"]), str(row["state"])
        result.delivered += state == "delivered"
        if state == "dead":
            result.dead.append(f"{key}: {row['last_error']}")
        elif state != "delivered":
            result.lost.append(f"{key} still {state} after the drain")
        if row["kind"] == "onec_transfer_order":
            doc = TransferOrderDocument.model_validate_json(row["payload_json"])
            found = [
                o for o in onec_orders
                if o["Ref_Key"] == doc.ref_key or _marker_key(o["comment"]) == key
            ]  # fmt: skip
            onec_used.update(o["Ref_Key"] for o in found)
            ids = [o["Ref_Key"] for o in found]
            wanted = _totals([(ln.item_key, ln.quantity) for ln in doc.lines])
            got = [_totals([(ln["item_key"], ln["quantity"]) for ln in o["lines"]]) for o in found]
            bad = [
                o["Ref_Key"] for o, lines in zip(found, got, strict=True)
                if lines != wanted or not o["Posted"]
                or (o["sender"], o["receiver"]) != (doc.sender_key, doc.receiver_key)
            ]  # fmt: skip
        else:
            ms_doc = CustomerOrderDocument.model_validate_json(row["payload_json"])
            found = [
                o for o in ms_orders
                if o["syncId"] == ms_doc.sync_id or o["externalCode"] == ms_doc.external_code
            ]  # fmt: skip
            ms_used.update(o["id"] for o in found)
            ids = [o["id"] for o in found]
            wanted = _totals([(ln.product_id, ln.quantity) for ln in ms_doc.lines])
            bad = [
                o["id"] for o in found
                if _totals([(p["product_id"], Decimal(str(p["quantity"]))) for p in o["positions"]])
                != wanted
            ]  # fmt: skip
        if not found and state != "dead":
            result.lost.append(f"{key} ({state}) has no document")
        if len(found) > 1:
            result.duplicated += [f"{key} also as {extra}" for extra in ids[1:]]
        if state == "delivered" and found and row["external_id"] not in ids:
            result.mismatched.append(f"{key}: outbox says {row['external_id']}, found {ids}")
        result.mismatched += [f"{key}: document {ref} differs from the row" for ref in bad]
    result.duplicated += [
        f"1C order {o['Ref_Key']} ({o['comment']}) matches no outbox row"
        for o in onec_orders
        if o["Ref_Key"] not in onec_used
    ]
    result.duplicated += [
        f"МойСклад order {o['id']} ({o['externalCode']}) matches no outbox row"
        for o in ms_orders
        if o["id"] not in ms_used
    ]
    return result, planned_runs


# -- the soak -----------------------------------------------------------------------------------


async def _one_life(daemon: Daemon, options: SoakOptions, rng: random.Random) -> tuple[bool, bool]:
    """Start, trigger, wait, SIGKILL. Returns (killed, trigger failed)."""
    await daemon.start()
    if rng.random() < options.startup_kill_share:
        await asyncio.sleep(rng.uniform(0.0, 0.6))
        await daemon.kill()
        return True, False
    if not await daemon.wait_ready():
        return False, False
    triggered = await daemon.trigger()
    wait = rng.uniform(0.0, options.max_wait_s)
    if rng.random() < options.long_wait_share:
        wait = rng.uniform(options.max_wait_s, 3 * options.max_wait_s)
    await asyncio.sleep(wait)
    if daemon.exited() is not None:
        return False, not triggered
    await daemon.kill()
    return True, not triggered


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


async def run_soak(options: SoakOptions, workdir: Path, say: Say) -> SoakResult:
    """The whole soak in ``workdir``, an existing empty directory."""
    started = time.monotonic()
    rng = random.Random(options.seed)
    dataset = build_demo_dataset(n_items=options.items, seed=options.seed)
    password, token = secrets.token_hex(12), secrets.token_hex(16)
    onec = OneCSandbox(dataset, username="hub", password=password)
    onec.seed = options.seed
    onec.hang_s = 1.0
    moysklad = MoySkladSandbox(dataset.moysklad_products, token=token, weight=1, seed=options.seed)
    closer = Closer(onec, moysklad)
    db_path = workdir / "state" / "hub.sqlite3"
    kills = exits = trigger_failures = 0
    async with AsyncExitStack() as stack:
        onec_url = await stack.enter_async_context(run_onec_sandbox(onec))
        moysklad_url = await stack.enter_async_context(run_moysklad_sandbox(moysklad))
        config = _write(
            workdir / "config.toml",
            config_text(workdir / "state", onec_url, moysklad_url, options.lease_s),
        )
        log = stack.enter_context(_append(workdir / "hubd.log"))
        env = {"HUB_ONEC_PASSWORD": password, "HUB_MOYSKLAD_TOKEN": token, "PYTHONUNBUFFERED": "1"}
        daemon = Daemon(workdir, config, env, log)
        stack.callback(daemon.close)
        stack.push_async_callback(daemon.kill)
        lives = 0
        while kills < options.kills and lives < options.kills * 2:
            lives += 1
            set_faults(onec, moysklad, options, rng)
            killed, failed = await _one_life(daemon, options, rng)
            kills += killed
            trigger_failures += failed
            if not killed:
                exits += 1
                say(f"hubd exited on its own with status {daemon.exited()}; see {workdir}/hubd.log")
                await daemon.kill()
            closer.close_all()
            if killed and kills % options.progress_every == 0:
                say(
                    f"kills {kills}/{options.kills}: 1C orders {len(onec.transfer_orders())}, "
                    f"МойСклад orders {len(moysklad.orders())}, {time.monotonic() - started:.0f} s"
                )
        set_faults(onec, moysklad, None, rng)
        say("final drain without faults")
        await _drain(daemon, db_path, options.drain_timeout_s)
        found, planned_runs = await asyncio.to_thread(audit, db_path, onec, moysklad)
    return SoakResult(
        kills=kills,
        runs_planned=planned_runs,
        audit=found,
        unexpected_exits=exits,
        trigger_failures=trigger_failures,
        wall_s=time.monotonic() - started,
        target_kills=options.kills,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kills", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--items", type=int, default=60, help="demo data set size")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    options = SoakOptions(kills=args.kills, seed=args.seed, items=args.items)
    workdir = Path(tempfile.mkdtemp(prefix="hub-soak-"))
    print(f"crash soak: {options.kills} kills, seed {options.seed}, {options.items} items")
    print(f"work directory: {workdir}", flush=True)
    result = asyncio.run(run_soak(options, workdir, lambda text: print(text, flush=True)))
    if args.keep or not result.ok:
        print(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    for line in result.report():
        print(line)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
