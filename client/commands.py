"""hubctl commands other than runs: status, health, logs, outbox, schedules, check, reload."""

from __future__ import annotations

import argparse
import json

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.connection import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandError, stub
from client.render import Output, duration, local_time, to_dict
from protos.hub.v1 import control_pb2 as pb


def status(channel: grpc.Channel, args: argparse.Namespace, out: Output) -> int:
    reply = stub(channel).GetStatus(pb.GetStatusRequest())
    if args.json:
        out.json(to_dict(reply))
        return EXIT_OK
    state = out.paint("draining", "yellow") if reply.draining else out.paint("serving", "green")
    out.line(f"hubd {reply.version} (pid {reply.pid}) {state}, up {duration(reply.uptime_s)}")
    out.line(f"  config:   {reply.config_path}")
    out.line(f"  database: {reply.database_path}")
    out.line(f"  socket:   {reply.socket_path}")
    out.line(f"  storage:  {_storage(reply.storage, out)}")
    out.line()
    depth = dict(reply.outbox_depth)
    out.line("Outbox:")
    if depth:
        out.table(
            ["state", "documents"], [[out.status(k), str(v)] for k, v in sorted(depth.items())]
        )
    else:
        out.line("  empty")
    out.line()
    out.line("Last runs:")
    out.table(
        ["job", "run", "status", "started", "delivery"],
        [
            [r.job, r.id, out.status(r.status), local_time(r.started_at_ms), r.delivery]
            for r in reply.last_runs
        ],
    )
    for connector in reply.connectors:
        details = dict(connector.details)
        circuit = details.pop("circuit", "")
        if circuit:
            colour = "green" if circuit == "closed" else "red"
            out.line(f"{connector.system} circuit breaker: {out.paint(circuit, colour)}")
        note = details.pop("weight_note", "")
        shown = ", ".join(f"{k}={v}" for k, v in sorted(details.items()) if v)
        out.line(f"  {shown}")
        if note:
            out.line(f"  {out.paint(note, 'yellow')}")
    return EXIT_OK


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _storage(storage: pb.Storage, out: Output) -> str:
    """One line: the database's size and room, or the disk-full problem in red."""
    sizes = f"database {_size(storage.database_bytes)}"
    if storage.limit_bytes:
        sizes += f" of {_size(storage.limit_bytes)} allowed"
    if storage.free_bytes >= 0:
        sizes += f", {_size(storage.free_bytes)} free on its disk"
    if not storage.full:
        return sizes
    since = local_time(storage.full_since_ms)
    problem = storage.problem or "disk full"
    return (
        f"{out.paint(problem, 'red')} (since {since}, {storage.refused_writes} writes refused; "
        f"{sizes})"
    )


def health(channel: grpc.Channel, args: argparse.Namespace, out: Output) -> int:
    checker = health_pb2_grpc.HealthStub(channel)
    reply = checker.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if args.json:
        out.json({"status": name})
    else:
        out.line(out.status(name))
    return EXIT_OK if reply.status == health_pb2.HealthCheckResponse.SERVING else EXIT_FAILED


def _format_log(event: pb.LogEvent, out: Output) -> str:
    level_colour = {"error": "red", "critical": "red", "warning": "yellow", "debug": "dim"}
    level = out.paint(f"{event.level.upper():7}", level_colour.get(event.level, ""))
    data = json.loads(event.data_json) if event.data_json else {}
    pairs = " ".join(f"{k}={v}" for k, v in data.items())
    run = f" run={event.run_id}" if event.run_id else ""
    dropped = (
        out.paint(f"[{event.dropped_before} events dropped: reader too slow] ", "yellow")
        if event.dropped_before
        else ""
    )
    return f"{dropped}{local_time(event.ts_ms)} {level} {event.event}{run} {pairs}".rstrip()


def logs(channel: grpc.Channel, args: argparse.Namespace, out: Output) -> int:
    if args.lines < 0:
        raise CommandError("-n must be 0 or more", EXIT_USAGE)
    request = pb.TailLogsRequest(
        last=args.lines, follow=args.follow, level=args.level, run_id=args.run
    )
    stream = stub(channel).TailLogs(request)
    try:
        for batch in stream:
            for event in batch.events:
                if args.json:
                    out.json(to_dict(event))
                else:
                    out.line(_format_log(event, out))
    except KeyboardInterrupt:
        stream.cancel()  # type: ignore[no-untyped-call]
    return EXIT_OK


def _outbox_row(entry: pb.OutboxEntry, out: Output) -> list[str]:
    return [
        str(entry.id),
        out.status(entry.state),
        entry.summary,
        str(entry.attempts),
        entry.number or "-",
        local_time(entry.updated_at_ms),
        (entry.last_error[:60] + "…") if len(entry.last_error) > 60 else entry.last_error,
    ]


def _print_entry(entry: pb.OutboxEntry, out: Output) -> None:
    out.line(f"Outbox entry {entry.id}: {out.status(entry.state)}")
    fields = [
        ("run", entry.run_id),
        ("kind", entry.kind),
        ("summary", entry.summary),
        ("payload", entry.payload_summary),
        ("idempotency key", entry.idempotency_key),
        ("attempts", str(entry.attempts)),
        ("outcome unknown", "yes" if entry.outcome_unknown else "no"),
        ("next attempt", local_time(entry.next_attempt_at_ms)),
        ("external id", entry.external_id or "-"),
        ("number", entry.number or "-"),
        ("last error", entry.last_error or "-"),
        ("discard reason", entry.discard_reason or "-"),
        ("created", local_time(entry.created_at_ms)),
        ("delivered", local_time(entry.delivered_at_ms)),
    ]
    for name, value in fields:
        out.line(f"  {name + ':':17}{value}")


def outbox(channel: grpc.Channel, args: argparse.Namespace, out: Output) -> int:
    api = stub(channel)
    command = args.outbox_command
    if command is None:
        reply = api.ListOutbox(pb.ListOutboxRequest(state=args.state, limit=args.limit))
        if args.json:
            out.json(to_dict(reply))
        else:
            out.table(
                ["id", "state", "document", "attempts", "number", "updated", "last error"],
                [_outbox_row(e, out) for e in reply.entries],
            )
        return EXIT_OK
    if command == "show":
        entry = api.GetOutboxEntry(pb.OutboxEntryRequest(id=args.id))
    elif command == "retry":
        entry = api.RetryOutboxEntry(pb.OutboxEntryRequest(id=args.id))
    else:
        entry = api.DiscardOutboxEntry(pb.DiscardOutboxEntryRequest(id=args.id, reason=args.reason))
    if args.json:
        out.json(to_dict(entry))
    else:
        _print_entry(entry, out)
    return EXIT_OK


def _schedule_row(s: pb.Schedule, out: Output) -> list[str]:
    state = "paused" if s.paused else ("enabled" if s.enabled else "disabled")
    last = local_time(s.last_fire_nominal_ms, seconds=False)
    if s.last_fire_outcome:
        last += f" ({s.last_fire_outcome})"
    nexts = ", ".join(local_time(t, seconds=False) for t in s.next_fires_ms[:3])
    return [s.job, s.cron, s.timezone, state, last, nexts or "-", str(s.missed), str(s.skipped)]


def schedules(channel: grpc.Channel, args: argparse.Namespace, out: Output) -> int:
    api = stub(channel)
    command = args.schedules_command
    if command is None:
        reply = api.ListSchedules(pb.ListSchedulesRequest())
        if args.json:
            out.json(to_dict(reply))
            return EXIT_OK
        out.table(
            ["job", "cron", "zone", "state", "last fire", "next fires", "missed", "skipped"],
            [_schedule_row(s, out) for s in reply.schedules],
        )
        out.line(f"outbox processor: every {reply.outbox_interval_s:g} s and on every new run")
        return EXIT_OK
    if command == "next":
        if args.count < 1:
            raise CommandError("-n must be at least 1", EXIT_USAGE)
        fires = api.NextFireTimes(pb.NextFireTimesRequest(job=args.job, count=args.count))
        if args.json:
            out.json(to_dict(fires))
        else:
            out.line(f"next fires of {fires.job} ({fires.timezone}), in your local time:")
            for fire in fires.fires_ms:
                out.line(f"  {local_time(fire, seconds=False)}")
        return EXIT_OK
    request = pb.ScheduleRequest(job=args.job)
    reply_schedule = (
        api.PauseSchedule(request) if command == "pause" else api.ResumeSchedule(request)
    )
    if args.json:
        out.json(to_dict(reply_schedule))
    else:
        state = "paused" if reply_schedule.paused else "resumed"
        out.line(f"{reply_schedule.job}: {state}")
    return EXIT_OK


def check(channel: grpc.Channel, args: argparse.Namespace, out: Output) -> int:
    reply = stub(channel).CheckConnections(pb.CheckConnectionsRequest(), timeout=600)
    if args.json:
        out.json(to_dict(reply))
    else:
        for item in reply.checks:
            mark = out.paint("ok  ", "green") if item.ok else out.paint("FAIL", "red")
            detail = f": {item.detail}" if item.detail else ""
            out.line(f"{mark} {item.system:9} {item.name}{detail}")
    return EXIT_OK if reply.ok else EXIT_FAILED


def reload(channel: grpc.Channel, args: argparse.Namespace, out: Output) -> int:
    reply = stub(channel).ReloadConfig(pb.ReloadConfigRequest())
    if args.json:
        out.json(to_dict(reply))
    elif reply.ok:
        changed = ", ".join(reply.changed) if reply.changed else "nothing changed"
        out.line(f"config reloaded: {changed}")
    else:
        out.line(f"config refused, the old one stays in force: {reply.error}")
    return EXIT_OK if reply.ok else EXIT_FAILED
