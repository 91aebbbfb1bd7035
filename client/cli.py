"""``hubctl``: the operator's client for hubd.

Exit status: 0 ok; 1 the thing asked about failed (a failed run, an unknown id, a failed check);
2 usage error; 69 the daemon cannot be reached.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import grpc

from client import commands, runs
from client.connection import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CommandError,
    Target,
    default_socket,
    open_channel,
    translate,
)
from client.render import Output

Handler = Callable[[grpc.Channel, argparse.Namespace, Output], int]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubctl", description="Control and inspect hubd, the 1C ↔ МойСклад integration hub."
    )
    parser.add_argument(
        "--socket",
        default=None,
        help="hubd's control socket (default: $HUBCTL_SOCKET, "
        "/run/hubd/hubd.sock, or ./state/hubd.sock)",
    )
    parser.add_argument("--tcp", default="", help="HOST:PORT of hubd's TLS listener instead")
    parser.add_argument("--ca-cert", default="", help="CA certificate for --tcp")
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("status", help="daemon, outbox and last runs at a glance")
    p.set_defaults(handler=commands.status)
    p = sub.add_parser("health", help="the standard gRPC health check")
    p.set_defaults(handler=commands.health)

    p = sub.add_parser("logs", help="recent log events; -f to follow")
    p.add_argument("-n", "--lines", type=int, default=50, help="how many past events")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("--level", default="", choices=["", "debug", "info", "warning", "error"])
    p.add_argument("--run", default="", help="only events of this run id")
    p.set_defaults(handler=commands.logs)

    p = sub.add_parser("run", help="start a run of a job (returns the running one if busy)")
    p.add_argument("job", help="job name, e.g. replenishment")
    p.add_argument("--dry-run", action="store_true", help="compute and store the plan only")
    p.add_argument("--follow", action="store_true", help="show progress until the run ends")
    p.set_defaults(handler=runs.trigger)

    p = sub.add_parser("runs", help="list runs, or 'runs show ID'")
    p.add_argument("--job", default="")
    p.add_argument("-n", "--limit", type=int, default=20)
    runs_sub = p.add_subparsers(dest="runs_command", metavar="show")
    show = runs_sub.add_parser("show", help="a run's plan and documents")
    show.add_argument("run_id")
    show.add_argument("--csv", default="", metavar="FILE", help="export the plan as CSV")
    show.add_argument("--all", action="store_true", help="include items that need nothing")
    p.set_defaults(handler=runs.list_or_show)

    p = sub.add_parser("outbox", help="documents waiting for or after delivery")
    p.add_argument("--state", default="")
    p.add_argument("-n", "--limit", type=int, default=100)
    ob = p.add_subparsers(dest="outbox_command", metavar="show|retry|discard")
    s = ob.add_parser("show", help="one entry in detail")
    s.add_argument("id", type=int)
    s = ob.add_parser("retry", help="put a dead entry back to pending (same idempotency key)")
    s.add_argument("id", type=int)
    s = ob.add_parser("discard", help="never deliver this entry (kept, with the reason)")
    s.add_argument("id", type=int)
    s.add_argument("--reason", required=True)
    p.set_defaults(handler=commands.outbox)

    p = sub.add_parser("schedules", help="jobs, their cron and next fire times")
    sc = p.add_subparsers(dest="schedules_command", metavar="next|pause|resume")
    s = sc.add_parser("next", help="the next fire times of a job")
    s.add_argument("job")
    s.add_argument("-n", "--count", type=int, default=10)
    s = sc.add_parser("pause", help="stop firing a job (survives restarts)")
    s.add_argument("job")
    s = sc.add_parser("resume", help="fire a paused job again")
    s.add_argument("job")
    p.set_defaults(handler=commands.schedules)

    p = sub.add_parser("check", help="check the connections to 1C and МойСклад")
    p.set_defaults(handler=commands.check)
    p = sub.add_parser("reload", help="re-read config.toml (same as SIGHUP)")
    p.set_defaults(handler=commands.reload)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    out = Output()
    target = Target(socket=args.socket or default_socket(), tcp=args.tcp, ca_cert=args.ca_cert)
    handler: Handler = args.handler
    try:
        channel = open_channel(target)
        with channel:
            try:
                return handler(channel, args, out)
            except grpc.RpcError as exc:
                raise translate(exc, target) from None
    except CommandError as exc:
        print(f"hubctl: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        print(f"hubctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE if isinstance(exc, ConnectionError) else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
