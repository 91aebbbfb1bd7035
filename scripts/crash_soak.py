"""Crash soak (issue #6): SIGKILL hubd at random moments; no document may be lost or duplicated.

Both emulators run in this process, so their state outlives every daemon; faults are on (random
5xx and hangs, answers dropped after a create committed, latency). In a loop, hubd is started on
one state directory, a burst of concurrent TriggerRun calls is sent (issue 19: they must all get
one run), and hubd is SIGKILLed after a random wait (sometimes during start-up, sometimes after a
longer wait so deliveries are in flight). In some lives a second hubd is started mid-run on the
same state directory with another socket: it must refuse (exit 78, naming the first's PID)
before the first is killed. While hubd is down, every document it created is "closed" without
moving goods (МойСклад: shipped; 1C: nothing outstanding on any line), so the next run orders
the same deficits again as new documents. At the end hubd runs once more without faults until
the outbox is drained, and ``scripts/soak_audit.py`` compares every outbox row with the
documents in both emulators (lost, duplicated, mismatched, over-ordered, overlapping runs).
This file is the driver; ``scripts/soak_daemon.py`` is the daemon under test.

Dead rows are counted separately. The last three lines printed are ``kills: N``, ``lost: N``,
``duplicated: N``; the exit status is 1 when anything is lost, duplicated, mismatched,
over-ordered or dead, when runs overlapped or one burst started two runs, when a second daemon
did not refuse, when hubd exited on its own, or when fewer kills than asked were made.

    .venv/bin/python scripts/crash_soak.py [--kills 500] [--seed 1] [--items 60] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from daemon.sandbox.dataset import build_demo_dataset
from daemon.sandbox.moysklad_emulator import MoySkladSandbox, run_moysklad_sandbox
from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python scripts/crash_soak.py`: import its sibling too
    sys.path.insert(0, str(REPO))

from scripts.soak_audit import Audit, Order, audit, leased_by, undrained  # noqa: E402
from scripts.soak_daemon import Daemon, config_text  # noqa: E402

__all__ = ["Order", "SoakOptions", "SoakResult", "audit", "run_soak"]
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
    lease_s: float = 3.0  # short, so the rows of a killed daemon are reclaimed within the soak
    drain_limit_s: float = 180.0
    progress_every: int = 50
    triggers_per_life: int = 12  # concurrent TriggerRun calls; all must name one run
    second_daemon_share: float = 0.1  # lives in which a second hubd tries the state directory


@dataclass
class SoakResult:
    target_kills: int
    kills: int = 0
    kills_mid_delivery: int = 0  # the killed daemon held a lease on a row being delivered
    unexpected_exits: int = 0
    trigger_failures: int = 0
    bursts: int = 0
    bursts_with_several_runs: list[str] = field(default_factory=list)
    second_daemons: int = 0
    second_daemons_not_refused: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    audit: Audit = field(default_factory=Audit)
    coverage: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        a = self.audit
        problems = (
            a.lost or a.duplicated or a.mismatched or a.dead or a.over_ordered or a.overlapping
        ) or (
            self.unexpected_exits
            or self.bursts_with_several_runs
            or self.second_daemons_not_refused
        )
        return self.kills >= self.target_kills and not problems

    def report(self) -> list[str]:
        a = self.audit
        lines = [
            f"runs {a.runs} (with documents {a.runs_with_documents}), outbox rows {a.rows}, "
            f"delivered {a.delivered}, wall time {self.wall_s:.0f} s",
            f"kills mid-delivery {self.kills_mid_delivery}, trigger failures "
            f"{self.trigger_failures}, hubd exits on its own {self.unexpected_exits}",
            ", ".join(f"{name} {count}" for name, count in self.coverage.items()),
            f"trigger bursts {self.bursts}, bursts that started several runs: "
            f"{len(self.bursts_with_several_runs)}",
            f"second daemons started mid-run {self.second_daemons}, not refused: "
            f"{len(self.second_daemons_not_refused)}",
            f"dead: {len(a.dead)}",
            f"mismatched: {len(a.mismatched)}",
            f"over-ordered: {len(a.over_ordered)}",
            f"overlapping runs: {len(a.overlapping)}",
        ]
        for label, found in (
            ("dead", a.dead),
            ("mismatched", a.mismatched),
            ("over-ordered", a.over_ordered),
            ("overlapping", a.overlapping),
            ("burst", self.bursts_with_several_runs),
            ("second daemon", self.second_daemons_not_refused),
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
            # Written off, not shipped: shipping would move the goods to the target and the
            # donors would soon have nothing left to send, so later lives would make no 1C
            # documents at all.
            if order["Posted"] and order["Ref_Key"] not in self.closed_at:
                self._onec.write_off_transfer(order["Ref_Key"])
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


# -- the soak -----------------------------------------------------------------------------------


async def _one_life(
    daemon: Daemon,
    db_path: Path,
    second_config: Path,
    options: SoakOptions,
    rng: random.Random,
    result: SoakResult,
) -> bool:
    """Start, trigger (a burst), maybe start a second daemon, wait, SIGKILL; False if hubd
    exited on its own instead."""
    await daemon.start()
    if rng.random() < options.startup_kill_share:
        await asyncio.sleep(rng.uniform(0.0, 0.6))
    else:
        if not await daemon.wait_ready():
            return False
        ids, failures = await daemon.trigger_burst(options.triggers_per_life)
        result.bursts += 1
        result.trigger_failures += failures
        if len(ids) > 1:
            result.bursts_with_several_runs.append(f"one burst got runs {sorted(ids)}")
        second = None
        if rng.random() < options.second_daemon_share:
            result.second_daemons += 1
            second = asyncio.ensure_future(daemon.second(second_config))
        wait = rng.uniform(0.0, options.max_wait_s)
        if rng.random() < options.long_wait_share:
            wait = rng.uniform(options.max_wait_s, 3 * options.max_wait_s)
        await asyncio.sleep(wait)
        if second is not None:  # it must have refused while the first held the directory
            problem = await second
            if problem is not None:
                result.second_daemons_not_refused.append(problem)
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
        second_config = _write(
            workdir / "second.toml",
            config_text(workdir / "state", onec_url, moysklad_url, options.lease_s, "second.sock"),
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
            if not await _one_life(daemon, db_path, second_config, options, rng, result):
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
