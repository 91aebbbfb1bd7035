"""Start-up time, idle memory and idle CPU of ``hubd run`` as a real subprocess.

Both sandbox emulators (demo data set) run in this process; ``hubd run`` is started with a
config pointing at them and a real ``NOTIFY_SOCKET`` datagram socket, the way systemd starts it.
Prints, from one run:

- start-to-READY (process spawn → ``READY=1`` received), median of 5 starts on one state
  directory, next to the import floor measured in the same run: the time for a bare
  ``python -c "import grpc, aiohttp, aiosqlite, structlog, pydantic"`` to exit (median of 5);
- idle RSS 5 s after READY (``VmRSS``, and the peak ``VmHWM``) from ``/proc/PID/status``,
  target ≤ 100 MiB;
- CPU over N idle seconds (utime + stime from ``/proc/PID/stat``) as % of one core,
  target ≤ 1 %.

The config is the documented default apart from the URLs, state directory and socket (outbox
every 30 s, the weekday 09:00 cron), so "idle" is the daemon's real idle. Exits 1 when a target
is missed.

    .venv/bin/python benchmarks/bench_daemon.py [--idle-seconds 60] [--starts 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.demo import MS_AGENT, MS_ORGANIZATION, MS_STORE, demo_sandboxes  # noqa: E402
from daemon.sandbox.dataset import DONOR_NAMES, TARGET_NAME  # noqa: E402

RSS_TARGET_MIB = 100.0
CPU_TARGET_PCT = 1.0
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
IMPORT_FLOOR = "import grpc, aiohttp, aiosqlite, structlog, pydantic"


def config_text(state_dir: Path, socket_path: Path, onec_url: str, moysklad_url: str) -> str:
    donors = ", ".join(f'"{name}"' for name in DONOR_NAMES)
    return f"""[hub]
state_dir = "{state_dir}"

[control]
socket_path = "{socket_path}"

[logging]
level = "info"
format = "json"

[onec]
base_url = "{onec_url}"
username = "hub"

[moysklad]
base_url = "{moysklad_url}"
organization = "{MS_ORGANIZATION}"
agent = "{MS_AGENT}"
store = "{MS_STORE}"

[[replenishment.targets]]
warehouse = "{TARGET_NAME}"
donors = [{donors}]
"""


def child_env(**extra: str) -> dict[str, str]:
    """Our environment without anything systemd or a real install might have set."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HUB_", "NOTIFY_", "WATCHDOG_", "CREDENTIALS_", "LISTEN_"))
    }
    env.update(extra)
    return env


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    def drain(self) -> None:
        """Forget datagrams from an earlier daemon."""
        while True:
            try:
                self.sock.recv(4096)
            except BlockingIOError:
                return

    async def wait_ready(self, proc: asyncio.subprocess.Process) -> float:
        """perf_counter() at which READY=1 arrived; fails if the daemon exits first."""
        loop = asyncio.get_running_loop()
        exited = asyncio.create_task(proc.wait())
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                while True:
                    received = asyncio.ensure_future(loop.sock_recv(self.sock, 4096))
                    done, _ = await asyncio.wait(
                        {received, exited}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if received in done:
                        at = time.perf_counter()
                        if "READY=1" in received.result().decode().splitlines():
                            return at
                        continue
                    received.cancel()
                    raise RuntimeError(f"hubd exited with {proc.returncode} before READY=1")
        finally:
            exited.cancel()

    def close(self) -> None:
        self.sock.close()


@dataclass
class Start:
    ready_s: float
    stop_s: float


async def start_daemon(
    config: Path, env: dict[str, str], log_path: Path
) -> tuple[asyncio.subprocess.Process, float]:
    """Spawn ``hubd run``; returns the process and the spawn instant (perf_counter)."""
    with log_path.open("ab") as log:
        spawned = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "run", "--config", str(config),
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=REPO,
        )  # fmt: skip
    return proc, spawned


async def stop_daemon(proc: asyncio.subprocess.Process) -> float:
    """SIGTERM → exit, in seconds; the exit status must be 0."""
    began = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"hubd did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM") from None
    if code != 0:
        raise RuntimeError(f"hubd exited with {code} after SIGTERM")
    return time.perf_counter() - began


async def import_floor(env: dict[str, str]) -> float:
    """Seconds for a bare interpreter to import the daemon's heavy dependencies and exit."""
    began = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", IMPORT_FLOOR, env=env, cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    code = await asyncio.wait_for(proc.wait(), 60)
    if code != 0:
        raise RuntimeError(f"the import floor command exited with {code}")
    return time.perf_counter() - began


def proc_status(pid: int) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def kib(value: str) -> float:
    number, unit = value.split()
    if unit != "kB":
        raise ValueError(f"unexpected unit in /proc status: {value!r}")
    return float(number)


def cpu_ticks(pid: int) -> int:
    """utime + stime of every thread of ``pid``, in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # the command name may contain spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def figure(label: str, value: str, note: str) -> None:
    print(f"{label:<34} {value:>11}   {note}".rstrip())


def log_tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


async def bench(starts: int, idle_seconds: float, work: Path) -> bool:
    world = demo_sandboxes()
    notify = NotifySocket(work / "notify.sock")
    log_path = work / "hubd.log"
    floor_env = child_env()
    env = child_env(
        NOTIFY_SOCKET=str(notify.path),
        **world.environ,
    )
    proc: asyncio.subprocess.Process | None = None
    try:
        async with world.running() as (onec_url, moysklad_url):
            config = work / "config.toml"
            config.write_text(
                config_text(work / "state", work / "hubd.sock", onec_url, moysklad_url),
                encoding="utf-8",
            )
            print(f"python {sys.version.split()[0]} on {os.cpu_count()} CPUs; work dir {work}")
            results: list[Start] = []
            floors: list[float] = []
            # alternate the two so both see the same machine conditions (page cache, load)
            for number in range(starts):
                floors.append(await import_floor(floor_env))
                notify.drain()
                proc, spawned = await start_daemon(config, env, log_path)
                try:
                    ready_at = await notify.wait_ready(proc)
                except RuntimeError as exc:
                    raise RuntimeError(f"{exc}; log tail:\n{log_tail(log_path)}") from None
                ready_s = ready_at - spawned
                if number == starts - 1:
                    results.append(Start(ready_s, float("nan")))
                    break
                stop_s = await stop_daemon(proc)
                proc = None
                results.append(Start(ready_s, stop_s))
                print(
                    f"  start {number + 1}: READY after {ready_s * 1000:.0f} ms, "
                    f"SIGTERM→exit {stop_s * 1000:.0f} ms; import floor {floors[-1] * 1000:.0f} ms"
                )
            assert proc is not None
            print(
                f"  start {starts}: READY after {results[-1].ready_s * 1000:.0f} ms "
                f"(kept running); import floor {floors[-1] * 1000:.0f} ms"
            )
            pid = proc.pid

            await asyncio.sleep(5.0)
            status = proc_status(pid)
            rss_mib = kib(status["VmRSS"]) / 1024
            hwm_mib = kib(status["VmHWM"]) / 1024
            threads = status.get("Threads", "?")

            tick = os.sysconf("SC_CLK_TCK")
            before = cpu_ticks(pid)
            began = time.monotonic()
            await asyncio.sleep(idle_seconds)
            used_s = (cpu_ticks(pid) - before) / tick
            wall_s = time.monotonic() - began
            cpu_pct = used_s / wall_s * 100
            if proc.returncode is not None:
                raise RuntimeError(f"hubd exited with {proc.returncode} while idle")
            stop_s = await stop_daemon(proc)
            proc = None
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.close()

    ready = statistics.median(s.ready_s for s in results)
    floor = statistics.median(floors)
    stops = [s.stop_s for s in results[:-1]] + [stop_s]
    ok_rss = rss_mib <= RSS_TARGET_MIB
    ok_cpu = cpu_pct <= CPU_TARGET_PCT
    lo, hi = min(s.ready_s for s in results), max(s.ready_s for s in results)
    print()
    figure(
        f"start-to-READY, median of {starts}",
        f"{ready * 1000:.0f} ms",
        f"reference: import floor below (range {lo * 1000:.0f}–{hi * 1000:.0f} ms)",
    )
    figure(
        f"import floor, median of {starts}",
        f"{floor * 1000:.0f} ms",
        f'python -c "{IMPORT_FLOOR}"; READY − floor = {(ready - floor) * 1000:.0f} ms',
    )
    figure(f"SIGTERM→exit, median of {starts}", f"{statistics.median(stops) * 1000:.0f} ms", "")
    figure(
        "idle RSS at READY + 5 s",
        f"{rss_mib:.1f} MiB",
        f"target ≤ {RSS_TARGET_MIB:.0f} MiB {'OK' if ok_rss else 'MISSED'} "
        f"(VmHWM {hwm_mib:.1f} MiB, {threads} threads)",
    )
    figure(
        f"idle CPU over {wall_s:.0f} s",
        f"{cpu_pct:.3f} %",
        f"target ≤ {CPU_TARGET_PCT:.0f} % of one core {'OK' if ok_cpu else 'MISSED'} "
        f"({used_s:.2f} s CPU)",
    )
    print()
    print(
        f"SUMMARY start→READY {ready * 1000:.0f} ms (import floor {floor * 1000:.0f} ms, "
        f"×{ready / floor:.1f}); RSS {rss_mib:.1f} MiB (≤ {RSS_TARGET_MIB:.0f}); "
        f"idle CPU {cpu_pct:.3f} % (≤ {CPU_TARGET_PCT:.0f})"
    )
    print(f"SUMMARY {'all targets met' if ok_rss and ok_cpu else 'TARGET MISSED'}")
    return ok_rss and ok_cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="CPU window (s)")
    parser.add_argument("--starts", type=int, default=5, help="daemon starts to time")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (kept)")
    args = parser.parse_args()
    if args.starts < 1 or args.idle_seconds <= 0:
        parser.error("--starts must be ≥ 1 and --idle-seconds > 0")
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        return 0 if asyncio.run(bench(args.starts, args.idle_seconds, args.dir)) else 1
    # AF_UNIX paths are limited to 107 bytes: keep the work directory short
    with tempfile.TemporaryDirectory(prefix="hubd-bench-", dir="/tmp") as work:
        return 0 if asyncio.run(bench(args.starts, args.idle_seconds, Path(work))) else 1


if __name__ == "__main__":
    sys.exit(main())
