"""One log follower for ``bench_control.py``: its own process, one sync gRPC stream.

Calls ``TailLogs(follow=True, last=0)`` on the daemon's Unix socket, prints ``subscribed`` on
the first probe event (so the benchmark knows the server-side subscription exists), then counts
the benchmark's events until the done marker arrives or the deadline passes. At the end it
prints one JSON line: events received, distinct and out-of-order sequence numbers, the sum of
``dropped_before`` over every event, emit-to-receive latencies (receive ``time.time()`` minus the
event's ``ts_ms``, same machine clock) and its own CPU time (in all, and since subscribing).

    .venv/bin/python benchmarks/log_follower.py --socket PATH [--deadline-s 120]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from protos.hub.v1 import control_pb2 as pb
from protos.hub.v1 import control_pb2_grpc

PROBE_EVENT = "bench_probe"
BENCH_EVENT = "bench_event"
DONE_EVENT = "bench_done"


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def follow(socket_path: str, deadline_s: float) -> dict[str, Any]:
    received = 0
    dropped = 0
    out_of_order = 0
    seen: set[int] = set()
    last_seq = -1
    latencies: list[float] = []
    subscribed = False
    cpu_at_subscribe = 0.0
    finished = False
    ended_by = "done"
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        api = control_pb2_grpc.HubControlStub(channel)
        stream = api.TailLogs(pb.TailLogsRequest(follow=True, last=0), timeout=deadline_s)
        try:
            for event in (e for batch in stream for e in batch.events):
                now_ms = time.time() * 1000
                dropped += event.dropped_before
                if event.event == BENCH_EVENT:
                    received += 1
                    latencies.append(round(now_ms - event.ts_ms, 3))
                    seq = int(json.loads(event.data_json)["seq"])
                    if seq < last_seq:
                        out_of_order += 1
                    last_seq = max(last_seq, seq)
                    seen.add(seq)
                elif event.event == PROBE_EVENT and not subscribed:
                    subscribed = True
                    cpu_at_subscribe = cpu_s()
                    print("subscribed", flush=True)
                elif event.event == DONE_EVENT:
                    finished = True
                    break
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            ended_by = code.name.lower()
    # leaving the channel's block closed it, which cancels the stream after a break
    if not finished and ended_by == "done":
        ended_by = "stream_ended"
    return {
        "received": received,
        "distinct": len(seen),
        "out_of_order": out_of_order,
        "dropped_before": dropped,
        "ended_by": ended_by,
        "cpu_s": cpu_s(),
        "cpu_streaming_s": cpu_s() - cpu_at_subscribe,
        "latencies_ms": latencies,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="one TailLogs follower for bench_control.py")
    parser.add_argument("--socket", required=True, help="the daemon's control socket")
    parser.add_argument("--deadline-s", type=float, default=120.0, help="gRPC deadline")
    args = parser.parse_args()
    result = follow(args.socket, args.deadline_s)
    print(json.dumps(result), flush=True)
    return 0 if result["ended_by"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
