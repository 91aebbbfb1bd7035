"""Control-plane figures: GetStatus latency and live log fan-out under load.

The daemon (``Hub.serve()``, as ``hubd demo`` runs it) and both sandbox emulators run in this
process, the daemon's log lines go to a file; every client is a separate process on the Unix
socket. Before measuring, one real replenishment run is triggered and delivered, so the status
has a last run and documents to report. Prints:

- unary ``GetStatus`` latency p50/p99 from a sync gRPC client in another process, 2000 calls
  after 200 warm-up calls; target p99 ≤ 5 ms;
- log fan-out: 10 followers (``benchmarks/log_follower.py``, each its own process, each one
  ``TailLogs(follow=True, last=0)``) while a task in the daemon's loop emits
  ``structlog.get_logger("bench").info("bench_event", seq=n)`` at 5,000 events/s for 10 s:
  events delivered per follower vs emitted (target: all, 0 dropped by the ``dropped_before``
  sums) and p99 emit-to-receive latency from each event's ``ts_ms`` (target ≤ 50 ms);
- CPU of the daemon process and of the followers during fan-out, to tell a slow daemon from
  a saturated machine. ``--profile`` adds the daemon loop's hottest functions (cProfile).

Exits 1 when a target is missed.

    .venv/bin/python benchmarks/bench_control.py [--rate 5000] [--seconds 10] [--followers 10]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import math
import os
import pstats
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import structlog  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from daemon.app import Hub  # noqa: E402
from daemon.config import load_config  # noqa: E402
from daemon.demo import (  # noqa: E402
    demo_config_text,
    demo_sandboxes,
    wait_ready,
)
from protos.hub.v1 import control_pb2 as pb  # noqa: E402
from protos.hub.v1 import control_pb2_grpc  # noqa: E402

STATUS_P99_TARGET_MS = 5.0
FANOUT_P99_TARGET_MS = 50.0
SELF = Path(__file__).resolve()
FOLLOWER = SELF.parent / "log_follower.py"
FINAL_STATES = {"delivered", "dead", "discarded"}
PROBE_EVENT = "bench_probe"
BENCH_EVENT = "bench_event"
DONE_EVENT = "bench_done"


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def figure(label: str, value: str, note: str) -> None:
    print(f"{label:<44} {value:>14}   {note}".rstrip())


def child_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HUB_", "NOTIFY_", "WATCHDOG_", "CREDENTIALS_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user/nice
    return total - idle, total


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---- the GetStatus client (runs as a child process: ``--status-client SOCKET``) ---------------


def timed_calls(call: Callable[[], object], calls: int, warmup: int) -> list[float]:
    """Latencies in ms of ``calls`` sequential calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    latencies: list[float] = []
    for _ in range(calls):
        began = time.perf_counter_ns()
        call()
        latencies.append((time.perf_counter_ns() - began) / 1e6)
    return latencies


def status_client(socket_path: str, calls: int, warmup: int) -> int:
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        api = control_pb2_grpc.HubControlStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        status_request = pb.GetStatusRequest()
        health_request = health_pb2.HealthCheckRequest(service="")
        status = timed_calls(lambda: api.GetStatus(status_request, timeout=10), calls, warmup)
        # the same number of health checks: the transport's floor (no handler work, no SQLite)
        floor = timed_calls(lambda: health.Check(health_request, timeout=10), calls, warmup)
        last = api.GetStatus(status_request, timeout=10)
    result = {"latencies_ms": status, "health_ms": floor, "last_runs": len(last.last_runs)}
    print(json.dumps(result), flush=True)
    return 0


# ---- the daemon side ----------------------------------------------------------------------------


async def one_delivered_run(api: control_pb2_grpc.HubControlAsyncStub) -> str:
    """Trigger a replenishment run and wait until its documents are delivered."""
    reply = await api.TriggerRun(pb.TriggerRunRequest(job="replenishment"))
    async with asyncio.timeout(180):
        while True:
            detail = await api.GetRun(pb.GetRunRequest(run_id=reply.run.id))
            finished = detail.run.status not in ("running", "pending", "")
            if finished and all(d.state in FINAL_STATES for d in detail.documents):
                states = sorted(d.state for d in detail.documents)
                return f"run {detail.run.status}, documents: {', '.join(states) or 'none'}"
            await asyncio.sleep(0.2)


async def measure_status(socket_path: Path, calls: int, warmup: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SELF), "--status-client", str(socket_path),
        "--calls", str(calls), "--warmup", str(warmup),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env(), cwd=REPO,
    )  # fmt: skip
    busy_before, total_before = machine_busy_ticks()
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    busy_after, total_after = machine_busy_ticks()
    if proc.returncode != 0:
        raise RuntimeError(f"status client exited with {proc.returncode}: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out.decode().splitlines()[-1])
    # other processes on the machine show up in the tail latency: say how busy it was
    result["machine_busy_pct"] = (
        (busy_after - busy_before) / max(1, total_after - total_before) * 100
    )
    return result


@dataclass
class Follower:
    proc: asyncio.subprocess.Process
    stderr_path: Path
    subscribed: asyncio.Event
    result: dict[str, Any] | None = None


async def start_follower(socket_path: Path, number: int, work: Path, deadline_s: float) -> Follower:
    stderr_path = work / f"follower-{number}.err"
    with stderr_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(FOLLOWER), "--socket", str(socket_path),
            "--deadline-s", str(deadline_s),
            stdout=asyncio.subprocess.PIPE, stderr=err, env=child_env(), cwd=REPO,
        )  # fmt: skip
    return Follower(proc, stderr_path, asyncio.Event())


async def collect(follower: Follower) -> None:
    """Note the subscription, then read the follower's one JSON result line."""
    stdout = follower.proc.stdout
    assert stdout is not None
    first = await stdout.readline()
    if first.strip() == b"subscribed":
        follower.subscribed.set()
        rest = await stdout.read()
    else:
        rest = first + await stdout.read()
    await follower.proc.wait()
    lines = rest.decode().strip().splitlines()
    if follower.proc.returncode != 0 or not lines:
        err = follower.stderr_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"follower exited with {follower.proc.returncode}: {err}")
    follower.result = json.loads(lines[-1])


async def emit(rate: float, seconds: float) -> tuple[int, float, float]:
    """Emit ``rate`` events/s for ``seconds`` from the daemon's loop, paced by the clock.

    Returns (events emitted, seconds taken, worst lag behind the schedule in seconds).
    """
    log = structlog.get_logger("bench")
    total = int(rate * seconds)
    emitted = 0
    worst_lag = 0.0
    began = time.perf_counter()
    while emitted < total:
        elapsed = time.perf_counter() - began
        due = min(total, int(elapsed * rate) + 1)
        worst_lag = max(worst_lag, (due - emitted) / rate)
        while emitted < due:
            log.info(BENCH_EVENT, seq=emitted)
            emitted += 1
        await asyncio.sleep(0.001)
    return emitted, time.perf_counter() - began, worst_lag


async def probe_until_subscribed(followers: list[Follower]) -> None:
    log = structlog.get_logger("bench")
    async with asyncio.timeout(60):
        while not all(f.subscribed.is_set() for f in followers):
            for f in followers:
                if f.proc.returncode is not None and not f.subscribed.is_set():
                    err = f.stderr_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"follower exited with {f.proc.returncode}: {err}")
            log.info(PROBE_EVENT)
            await asyncio.sleep(0.05)


@dataclass
class FanOut:
    emitted: int
    emit_s: float
    emit_lag_s: float
    window_s: float
    daemon_cpu_s: float
    machine_busy_pct: float
    results: list[dict[str, Any]]
    profile: str


async def measure_fanout(
    socket_path: Path,
    work: Path,
    *,
    followers: int,
    rate: float,
    seconds: float,
    profile: bool,
) -> FanOut:
    deadline_s = seconds * 6 + 120
    started = [await start_follower(socket_path, n, work, deadline_s) for n in range(followers)]
    readers = [asyncio.create_task(collect(f), name=f"follower-{n}") for n, f in enumerate(started)]
    try:
        await probe_until_subscribed(started)
        # let the probes already queued drain so they do not count against the first events
        await asyncio.sleep(0.5)
        profiler = cProfile.Profile() if profile else None
        cpu_before = own_cpu_s()
        busy_before, total_before = machine_busy_ticks()
        window_began = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        emitted, emit_s, lag_s = await emit(rate, seconds)
        structlog.get_logger("bench").info(DONE_EVENT, emitted=emitted)
        async with asyncio.timeout(deadline_s + 30):
            await asyncio.gather(*readers)
        if profiler is not None:
            profiler.disable()
        window_s = time.perf_counter() - window_began
        busy_after, total_after = machine_busy_ticks()
        daemon_cpu_s = own_cpu_s() - cpu_before
    finally:
        for reader in readers:
            reader.cancel()
        for f in started:
            if f.proc.returncode is None:
                f.proc.kill()
                await f.proc.wait()
    text = ""
    if profiler is not None:
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(25)
        text = buffer.getvalue()
    return FanOut(
        emitted=emitted,
        emit_s=emit_s,
        emit_lag_s=lag_s,
        window_s=window_s,
        daemon_cpu_s=daemon_cpu_s,
        machine_busy_pct=(busy_after - busy_before) / max(1, total_after - total_before) * 100,
        results=[f.result for f in started if f.result is not None],
        profile=text,
    )


async def bench(args: argparse.Namespace, work: Path) -> bool:
    world = demo_sandboxes()
    print(f"python {sys.version.split()[0]} on {os.cpu_count()} CPUs; work dir {work}")
    async with world.running() as (onec_url, moysklad_url):
        config_path = work / "config.toml"
        config_path.write_text(
            demo_config_text(work / "state", onec_url, moysklad_url), encoding="utf-8"
        )
        with (work / "hubd.log").open("a", encoding="utf-8") as log_file:
            hub = Hub(
                config_path,
                load_config(config_path),
                environ=world.environ,
                log_stream=log_file,
            )
            serve = asyncio.create_task(hub.serve(), name="hubd")
            try:
                async with grpc.aio.insecure_channel(f"unix:{hub.socket_path}") as channel:
                    api = control_pb2_grpc.HubControlStub(channel)
                    await wait_ready(api, serve)
                    print(f"setup: {await one_delivered_run(api)}")
                status = await measure_status(hub.socket_path, args.calls, args.warmup)
                fanout = await measure_fanout(
                    hub.socket_path,
                    work,
                    followers=args.followers,
                    rate=args.rate,
                    seconds=args.seconds,
                    profile=args.profile,
                )
            finally:
                hub.stop_requested.set()
                await asyncio.wait_for(serve, 60)
    return report(args, status, fanout)


def report(args: argparse.Namespace, status: dict[str, Any], fanout: FanOut) -> bool:
    calls = sorted(status["latencies_ms"])
    status_p50, status_p99 = percentile(calls, 50), percentile(calls, 99)
    ok_status = status_p99 <= STATUS_P99_TARGET_MS

    print()
    print(f"GetStatus over the Unix socket, sync client in another process ({len(calls)} calls,")
    print(
        f"  after {args.warmup} warm-up calls; the status reports {status['last_runs']} last run):"
    )
    figure("GetStatus p50", f"{status_p50:.2f} ms", "")
    figure(
        "GetStatus p99",
        f"{status_p99:.2f} ms",
        f"target ≤ {STATUS_P99_TARGET_MS:.0f} ms {'OK' if ok_status else 'MISSED'}",
    )
    figure("GetStatus max", f"{calls[-1]:.2f} ms", f"mean {statistics.fmean(calls):.2f} ms")
    floor = sorted(status["health_ms"])
    figure(
        "transport floor: Health/Check p50 / p99",
        f"{percentile(floor, 50):.2f} / {percentile(floor, 99):.2f} ms",
        "same client and socket, no handler work",
    )
    figure(
        "machine busy while measuring",
        f"{status['machine_busy_pct']:.0f} %",
        f"of all {os.cpu_count()} CPUs, every process counted",
    )

    emitted = fanout.emitted
    print()
    print(
        f"Log fan-out: {len(fanout.results)} followers (own processes), "
        f"{args.rate:.0f} events/s for {args.seconds:.0f} s:"
    )
    for number, r in enumerate(fanout.results):
        mine = sorted(r["latencies_ms"])
        print(
            f"  follower {number:2}: {r['received']:6}/{emitted} received "
            f"({r['distinct']} distinct, {r['out_of_order']} out of order), "
            f"dropped_before Σ {r['dropped_before']}, p50 {percentile(mine, 50):.1f} ms, "
            f"p99 {percentile(mine, 99):.1f} ms, CPU {r['cpu_streaming_s']:.1f} s"
        )
    pooled = sorted(v for r in fanout.results for v in r["latencies_ms"])
    fewest = min((r["distinct"] for r in fanout.results), default=0)
    dropped = sum(r["dropped_before"] for r in fanout.results)
    all_delivered = len(fanout.results) == args.followers and fewest == emitted and dropped == 0
    fan_p99 = percentile(pooled, 99)
    ok_latency = fan_p99 <= FANOUT_P99_TARGET_MS
    follower_cpu = sum(r["cpu_streaming_s"] for r in fanout.results)
    figure(
        "emitted",
        f"{emitted}",
        f"in {fanout.emit_s:.2f} s = {emitted / fanout.emit_s:.0f}/s "
        f"(target rate {args.rate:.0f}/s; worst lag behind schedule "
        f"{fanout.emit_lag_s * 1000:.0f} ms)",
    )
    figure(
        "delivered to the worst follower",
        f"{fewest}/{emitted}",
        f"target all {'OK' if fewest == emitted else 'MISSED'}",
    )
    figure(
        "dropped (Σ dropped_before, all followers)",
        f"{dropped}",
        f"target 0 {'OK' if dropped == 0 else 'MISSED'}",
    )
    figure("emit→receive p50 (all followers)", f"{percentile(pooled, 50):.1f} ms", "")
    figure(
        "emit→receive p99 (all followers)",
        f"{fan_p99:.1f} ms",
        f"target ≤ {FANOUT_P99_TARGET_MS:.0f} ms {'OK' if ok_latency else 'MISSED'} "
        "(ts_ms is truncated to whole ms: up to +1 ms)",
    )
    figure("emit→receive max", f"{pooled[-1] if pooled else math.nan:.1f} ms", "")
    figure(
        "daemon process CPU during fan-out",
        f"{fanout.daemon_cpu_s / fanout.window_s * 100:.0f} %",
        f"of one core, over {fanout.window_s:.1f} s (includes the emitter)",
    )
    figure(
        "followers' CPU during fan-out",
        f"{follower_cpu / fanout.window_s * 100:.0f} %",
        f"of one core, all {len(fanout.results)} together, since subscribing",
    )
    delivered = sum(r["received"] for r in fanout.results)
    if delivered:
        figure(
            "daemon CPU per delivered event",
            f"{fanout.daemon_cpu_s / delivered * 1e6:.0f} µs",
            f"emission of {emitted} included; follower CPU per received event "
            f"{follower_cpu / delivered * 1e6:.0f} µs",
        )
    figure(
        "machine busy during fan-out",
        f"{fanout.machine_busy_pct:.0f} %",
        f"of all {os.cpu_count()} CPUs",
    )
    if fanout.profile:
        print()
        print("Daemon loop profile during fan-out (cProfile, by own time):")
        print(fanout.profile.rstrip())

    ok = ok_status and all_delivered and ok_latency
    print()
    print(
        f"SUMMARY GetStatus p50 {status_p50:.2f} ms, p99 {status_p99:.2f} ms (≤ 5); "
        f"fan-out to {len(fanout.results)}: worst {fewest}/{emitted} delivered, "
        f"{dropped} dropped (0), p99 {fan_p99:.1f} ms (≤ 50)"
    )
    print(f"SUMMARY {'all targets met' if ok else 'TARGET MISSED'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description="control-plane benchmarks for hubd")
    parser.add_argument("--calls", type=int, default=2000, help="timed GetStatus calls")
    parser.add_argument("--warmup", type=int, default=200, help="untimed GetStatus calls first")
    parser.add_argument("--followers", type=int, default=10, help="follower processes")
    parser.add_argument("--rate", type=float, default=5000.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="emission time")
    parser.add_argument("--profile", action="store_true", help="cProfile the daemon loop")
    parser.add_argument("--status-client", metavar="SOCKET", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.status_client:
        return status_client(args.status_client, args.calls, args.warmup)
    if min(args.calls, args.followers) < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--calls and --followers must be ≥ 1, --rate and --seconds > 0")
    # AF_UNIX paths are limited to 107 bytes: keep the work directory short
    with tempfile.TemporaryDirectory(prefix="hubd-bench-", dir="/tmp") as work:
        return 0 if asyncio.run(bench(args, Path(work))) else 1


if __name__ == "__main__":
    sys.exit(main())
