"""Memory of ``hubd`` under rounds of large control requests (issue 19).

Starts a real ``hubd run`` subprocess (1C and МойСклад unreachable: the control plane is what
is measured), with the optional TLS TCP listener on 127.0.0.1 and a bearer token. Records its
``VmRSS`` after start, then fires:

1. ``--rounds`` rounds of ``--concurrency`` concurrent requests over the Unix socket, each one
   carrying a string field of 3.9–4.1 MB (``GetRun.run_id``, ``TriggerRun.job``,
   ``DiscardOutboxEntry.reason`` in turn: an id, a name and a reason);
2. ``--tcp-rounds`` rounds of the same over TLS TCP without a token.

The payloads are serialized once and sent as raw bytes, so the client stays small and the RSS
is the daemon's. After each round and again ``--settle-s`` seconds after the last one it prints
the daemon's RSS, the status codes the calls got, and whether ``GetStatus`` still answers.

``--repo`` runs the daemon from another checkout (e.g. a ``git worktree`` of the old code) with
this venv, so old and new code are measured the same way:

    .venv/bin/python benchmarks/bench_control_memory.py [--repo /tmp/base] \
        [--rounds 3] [--concurrency 400] [--tcp-rounds 2]

Only 127.0.0.1 and a Unix socket in a temporary directory are used; every call has a deadline,
so the script stops by itself. Exits 1 when the daemon died or stopped answering, or when its
RSS after the rounds is more than ``--max-growth-mib`` above its RSS at start.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from protos.hub.v1 import control_pb2 as pb  # noqa: E402

TOKEN = "bench-token-" + "k" * 40
SERVICE = "/bisnesmedia.hub.v1.HubControl/"
MB = 1_000_000


def config_text(work: Path, port: int, cert: Path, key: Path) -> str:
    return f"""[hub]
state_dir = "{work / "state"}"
shutdown_timeout_s = 10

[control]
socket_path = "{work / "hubd.sock"}"
tcp_listen = "127.0.0.1:{port}"
tls_cert_file = "{cert}"
tls_key_file = "{key}"

[logging]
level = "info"
format = "json"

[onec]
base_url = "http://127.0.0.1:9/ut/odata/standard.odata/"
username = "hub"

[moysklad]
base_url = "http://127.0.0.1:9/api/remap/1.2/"
organization = "org"
agent = "agent"

[[replenishment.targets]]
warehouse = "shop"
"""


def self_signed(work: Path) -> tuple[Path, Path]:
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def payloads(count: int, seed: int, size: int | None) -> list[tuple[str, bytes]]:
    """(method, serialized request) pairs, each with one 3.9–4.1 MB string field (or one of
    ``size`` bytes)."""
    rng = random.Random(seed)
    found: list[tuple[str, bytes]] = []
    for index in range(count):
        text = "x" * (size or rng.randint(int(3.9 * MB), int(4.1 * MB)))
        kind = index % 3
        if kind == 0:
            found.append(("GetRun", pb.GetRunRequest(run_id=text).SerializeToString()))
        elif kind == 1:
            found.append(("TriggerRun", pb.TriggerRunRequest(job=text).SerializeToString()))
        else:
            message = pb.DiscardOutboxEntryRequest(id=1, reason=text)
            found.append(("DiscardOutboxEntry", message.SerializeToString()))
    return found


async def one_call(channel: grpc.aio.Channel, method: str, body: bytes, token: bool) -> str:
    call = channel.unary_unary(  # bytes in, bytes out
        SERVICE + method, request_serializer=None, response_deserializer=None
    )
    metadata = (("authorization", f"Bearer {TOKEN}"),) if token else None
    try:
        await call(body, timeout=60, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return "OK"


async def still_answers(socket_path: Path) -> bool:
    async with grpc.aio.insecure_channel(f"unix:{socket_path}") as channel:
        call = channel.unary_unary(
            SERVICE + "GetStatus",
            request_serializer=pb.GetStatusRequest.SerializeToString,
            response_deserializer=pb.Status.FromString,
        )
        try:
            await call(pb.GetStatusRequest(), timeout=10)
        except grpc.aio.AioRpcError:
            return False
    return True


OPTIONS = [("grpc.max_send_message_length", 64 * MB), ("grpc.max_receive_message_length", 64 * MB)]


async def fire_round(
    make_channel: Callable[[], grpc.aio.Channel],
    bodies: list[tuple[str, bytes]],
    concurrency: int,
    token: bool,
) -> collections.Counter[str]:
    async with make_channel() as channel:
        calls = [
            one_call(channel, *bodies[index % len(bodies)], token) for index in range(concurrency)
        ]
        return collections.Counter(await asyncio.gather(*calls))


#: The same command on the code before issue 19 (e1b3ccf, run with ``--repo`` on a worktree of
#: it): the daemon kept every large request it had read.
BASELINE = (
    "old code (e1b3ccf), default rounds: RSS 70 MiB at start, 6006 MiB after 3 socket "
    "rounds, 5899 MiB 5 s after 2 more TLS rounds; TLS rounds alone: 70 -> 3010 MiB"
)


def figure(label: str, value: str, note: str = "") -> None:
    print(f"{label:<40} {value:>12}   {note}".rstrip(), flush=True)


async def bench(args: argparse.Namespace, work: Path) -> bool:
    cert, key = self_signed(work)
    port = free_port()
    config = work / "config.toml"
    config.write_text(config_text(work, port, cert, key), encoding="utf-8")
    socket_path = work / "hubd.sock"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HUB_", "NOTIFY_", "WATCHDOG_", "CREDENTIALS_"))
    }
    env.update(HUB_ONEC_PASSWORD="p", HUB_MOYSKLAD_TOKEN="t", HUB_GRPC_TOKEN=TOKEN)
    log = (work / "hubd.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "run", "--config", str(config),
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=args.repo,
    )  # fmt: skip
    ok = True
    try:
        async with asyncio.timeout(60):
            while not await still_answers(socket_path):
                if proc.returncode is not None:
                    raise RuntimeError(f"hubd exited {proc.returncode}")
                await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        start = rss_mib(proc.pid)
        print(f"hubd from {args.repo} (pid {proc.pid})")
        figure("RSS at start", f"{start:.0f} MiB")
        bodies = payloads(args.distinct, seed=19, size=args.field_bytes)

        def unix() -> grpc.aio.Channel:
            return grpc.aio.insecure_channel(f"unix:{socket_path}", options=OPTIONS)

        def tcp() -> grpc.aio.Channel:
            creds = grpc.ssl_channel_credentials(cert.read_bytes())
            return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=OPTIONS)

        began = time.monotonic()
        for number in range(1, args.rounds + 1):
            codes = await fire_round(unix, bodies, args.concurrency, token=False)
            detail = ", ".join(f"{code} {n}" for code, n in sorted(codes.items()))
            figure(f"unix round {number}: RSS", f"{rss_mib(proc.pid):.0f} MiB", detail)
        for number in range(1, args.tcp_rounds + 1):
            codes = await fire_round(tcp, bodies, args.concurrency, token=False)
            detail = ", ".join(f"{code} {n}" for code, n in sorted(codes.items()))
            figure(
                f"tls tcp round {number} (no token): RSS", f"{rss_mib(proc.pid):.0f} MiB", detail
            )
        await asyncio.sleep(args.settle_s)
        end = rss_mib(proc.pid)
        answers = await still_answers(socket_path)
        figure(
            f"RSS {args.settle_s:.0f} s after the rounds", f"{end:.0f} MiB", f"start {start:.0f}"
        )
        figure("growth", f"{end - start:+.0f} MiB", f"limit +{args.max_growth_mib:.0f} MiB")
        print(f"baseline: {BASELINE}")
        figure("GetStatus still answers", "yes" if answers else "NO")
        figure("rounds took", f"{time.monotonic() - began:.1f} s")
        tracebacks = (work / "hubd.log").read_bytes().count(b"Traceback")
        figure("tracebacks in hubd's log", str(tracebacks))
        ok = answers and proc.returncode is None and end - start <= args.max_growth_mib
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()
    print(f"SUMMARY {'OK' if ok else 'TARGET MISSED'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout to run hubd from")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tcp-rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=400)
    parser.add_argument("--distinct", type=int, default=12, help="distinct payloads")
    parser.add_argument(
        "--field-bytes", type=int, default=None, help="one size instead of 3.9–4.1 MB, e.g. 7000"
    )
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--max-growth-mib", type=float, default=50.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-control-memory-") as tmp:
        return 0 if asyncio.run(bench(args, Path(tmp))) else 1


if __name__ == "__main__":
    sys.exit(main())
