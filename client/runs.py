"""hubctl run / runs: trigger, follow, list, and the plan a warehouse manager can read."""

from __future__ import annotations

import argparse
import csv
import sys
from decimal import Decimal, InvalidOperation

import grpc

from client.connection import EXIT_FAILED, EXIT_OK, stub
from client.render import Output, duration, local_time, to_dict
from protos.hub.v1 import control_pb2 as pb


def _counts(run: pb.Run) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(run.counts.items()))


def _run_seconds(run: pb.Run) -> str:
    if not run.finished_at_ms:
        return "-"
    return duration((run.finished_at_ms - run.started_at_ms) / 1000)


def print_run(run: pb.Run, out: Output) -> None:
    dry = " (dry run)" if run.dry_run else ""
    out.line(f"Run {run.id}{dry}: {out.status(run.status)}")
    out.line(f"  job {run.job}, trigger {run.trigger}, started {local_time(run.started_at_ms)}")
    if run.finished_at_ms:
        out.line(f"  finished {local_time(run.finished_at_ms)} after {_run_seconds(run)}")
    if run.reason:
        out.line(f"  reason: {out.paint(run.reason, 'red')}")
    if run.phases:
        phases = ", ".join(f"{p.name} {duration(p.seconds)}" for p in run.phases)
        out.line(f"  phases: {phases}")
    if run.counts:
        out.line(f"  counts: {_counts(run)}")
    if run.delivery and run.delivery != "none":
        out.line(f"  documents: {out.status(run.delivery)}")


def follow(api: object, run_id: str, out: Output, as_json: bool) -> pb.Run:
    """Print progress events until the run ends; returns the final run."""
    assert hasattr(api, "WatchRun")
    last = pb.Run()
    live = out.stream.isatty() and not as_json
    for event in api.WatchRun(pb.WatchRunRequest(run_id=run_id)):
        last = event.run
        if as_json:
            out.json(to_dict(event))
            continue
        if event.kind == "phase":
            text = f"▸ {event.phase}"
        elif event.kind == "counts":
            text = "  " + ", ".join(f"{k} {v}" for k, v in sorted(event.counts.items()))
        elif event.kind == "finished":
            text = f"■ {out.status(event.run.status)}"
        else:
            text = f"  {event.message}"
        if event.message and event.kind != "document":
            text += f" — {event.message}"
        out.line(("\r\x1b[K" if live and event.kind == "counts" else "") + text)
    return last


def trigger(channel: grpc.Channel, args: argparse.Namespace, out: Output) -> int:
    api = stub(channel)
    reply = api.TriggerRun(pb.TriggerRunRequest(job=args.job, dry_run=args.dry_run))
    run = reply.run
    if args.json and not args.follow:
        out.json(to_dict(reply))
        return EXIT_OK
    if not args.json:
        if reply.already_running:
            out.line(f"a run of {run.job} is already in progress: {run.id} (following it)")
        else:
            dry = " (dry run)" if run.dry_run else ""
            out.line(f"started run {run.id}{dry}")
    if args.follow:
        run = follow(api, run.id, out, args.json)
        if not args.json:
            print_run(run, out)
            out.line(f"see the plan: hubctl runs show {run.id}")
        return EXIT_OK if run.status == "succeeded" else EXIT_FAILED
    return EXIT_OK


def _qty(text: str) -> str:
    """Decimal strings without noise: '5.000' → '5', '' → ''."""
    if not text:
        return ""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return text
    normal = value.normalize()
    return f"{normal:f}" if normal == normal.to_integral() else str(normal)


def _donor_names(items: list[pb.PlanItem]) -> list[str]:
    names: list[str] = []
    for item in items:
        for donor in item.donors:
            if donor.donor not in names:
                names.append(donor.donor)
    return names


def plan_rows(items: list[pb.PlanItem]) -> tuple[list[str], list[list[str]]]:
    donors = _donor_names(items)
    headers = [
        "target", "code", "article", "name", "free", "min", "max", "incoming", "need",
        *[f"from {d}" for d in donors], "external", "unmapped", "decision", "reason",
    ]  # fmt: skip
    rows = []
    for item in items:
        takes = {d.donor: _qty(d.take) for d in item.donors}
        rows.append(
            [
                item.target,
                item.code,
                item.article,
                item.name,
                _qty(item.target_free),
                _qty(item.target_min),
                _qty(item.target_max),
                _qty(item.incoming),
                _qty(item.need),
                *[takes.get(d, "") for d in donors],
                _qty(item.external),
                _qty(item.unmapped),
                item.decision,
                item.reason,
            ]
        )
    return headers, rows


def _show(api: object, args: argparse.Namespace, out: Output) -> int:
    assert hasattr(api, "GetRun")
    detail: pb.RunDetail = api.GetRun(pb.GetRunRequest(run_id=args.run_id))
    if args.csv:
        headers, rows = plan_rows(list(detail.items))
        with open(args.csv, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(headers)
            writer.writerows(rows)
        if not args.json:
            print(f"wrote {len(rows)} plan rows to {args.csv}", file=sys.stderr)
    if args.json:
        out.json(to_dict(detail))
        return EXIT_OK
    print_run(detail.run, out)
    shown = [i for i in detail.items if args.all or i.decision not in ("ok", "no_norm")]
    hidden = len(detail.items) - len(shown)
    out.line()
    if not detail.items and detail.run.counts.get("items", 0):
        # the run planned items, but its per-item plan has been pruned since
        out.line("Plan: no longer kept (older than replenishment.plan_retention_days)")
    else:
        out.line(
            f"Plan ({len(shown)} items needing action" + (f", {hidden} fine)" if hidden else ")")
        )
        headers, rows = plan_rows(shown)
        keep = [i for i, h in enumerate(headers) if h != "target"] if _one_target(shown) else None
        if keep is not None:
            headers = [headers[i] for i in keep]
            rows = [[row[i] for i in keep] for row in rows]
        out.table(headers, rows)
    out.line()
    out.line("Documents:")
    out.table(
        ["outbox", "document", "state", "number", "last error"],
        [
            [str(d.outbox_id), d.summary, out.status(d.state), d.number or "-", d.last_error]
            for d in detail.documents
        ],
    )
    return EXIT_OK if detail.run.status != "failed" else EXIT_FAILED


def _one_target(items: list[pb.PlanItem]) -> bool:
    return len({i.target for i in items}) <= 1


def list_or_show(channel: grpc.Channel, args: argparse.Namespace, out: Output) -> int:
    api = stub(channel)
    if args.runs_command == "show":
        return _show(api, args, out)
    reply = api.ListRuns(pb.ListRunsRequest(job=args.job, limit=args.limit))
    if args.json:
        out.json(to_dict(reply))
        return EXIT_OK
    out.table(
        ["run", "job", "trigger", "status", "started", "took", "documents", "counts"],
        [
            [
                r.id + (" (dry)" if r.dry_run else ""),
                r.job,
                r.trigger,
                out.status(r.status),
                local_time(r.started_at_ms),
                _run_seconds(r),
                r.delivery or "-",
                _counts(r),
            ]
            for r in reply.runs
        ],
    )
    return EXIT_OK
