"""The HubControl servicer: turns requests into calls on a ``ControlledHub`` and results into
messages. Errors become status codes in ``daemon.control.errors`` only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from daemon.control.errors import streaming, unary
from daemon.control.ports import ControlledHub
from daemon.errors import BadArgumentError, NotFoundError
from daemon.observability.logstream import LEVELS, LogRecord
from daemon.replenishment.runs import delivery_summary
from daemon.scheduling.scheduler import ScheduleInfo
from daemon.store import outbox as outbox_store
from daemon.store import runs as run_store
from daemon.store.outbox import STATES as OUTBOX_STATES
from daemon.store.outbox import OutboxEntry
from daemon.store.runs import PlanItemRecord, RunRecord
from protos.hub.v1 import control_pb2 as pb
from protos.hub.v1 import control_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]

#: GetRun calls that build their answer at the same time; the others wait their turn.
PLAN_READERS = 2


def ms(seconds: float | None) -> int:
    return int(seconds * 1000) if seconds else 0


def log_event(record: LogRecord) -> pb.LogEvent:
    return pb.LogEvent(
        ts_ms=ms(record.ts),
        level=record.level,
        event=record.event,
        logger=record.logger,
        run_id=record.run_id,
        job=record.job,
        data_json=record.data_json(),
        dropped_before=record.dropped_before,
    )


class HubControlService(control_pb2_grpc.HubControlServicer):
    def __init__(self, services: ControlledHub) -> None:
        self.services = services
        # A whole plan is built per GetRun (about 70 MB of objects for 20,000 items): a few
        # callers at once could otherwise take the daemon past its MemoryMax.
        self._plan_readers = asyncio.Semaphore(PLAN_READERS)

    @unary
    async def GetStatus(self, request: pb.GetStatusRequest, context: Context) -> pb.Status:
        info = await self.services.status()
        return pb.Status(
            version=info.version,
            pid=info.pid,
            started_at_ms=ms(info.started_at),
            uptime_s=info.uptime_s,
            config_path=info.config_path,
            database_path=info.database_path,
            socket_path=info.socket_path,
            draining=info.draining,
            outbox_depth=info.outbox_depth,
            last_runs=[await self._run(r) for r in info.last_runs],
            connectors=[
                pb.ConnectorHealth(system=system, details=details)
                for system, details in sorted(info.connectors.items())
            ],
            storage=pb.Storage(
                full=info.storage.full,
                problem=info.storage.problem,
                full_since_ms=ms(info.storage.since) if info.storage.since else 0,
                refused_writes=info.storage.refused_writes,
                database_bytes=info.storage.database_bytes,
                free_bytes=info.storage.free_bytes,
                limit_bytes=info.storage.limit_bytes,
            ),
        )

    @streaming
    async def TailLogs(
        self, request: pb.TailLogsRequest, context: Context
    ) -> AsyncIterator[pb.LogBatch]:
        if request.level and request.level not in LEVELS:
            raise BadArgumentError(
                f"level must be one of {', '.join(LEVELS)}; got {request.level!r}"
            )
        if request.last < 0:
            raise BadArgumentError("last must be 0 or more")
        history, follower = await self.services.logs(
            last=min(request.last, 10_000),
            min_level=request.level or "debug",
            run_id=request.run_id,
        )
        try:
            for start in range(0, len(history), 1000):
                yield pb.LogBatch(events=[log_event(r) for r in history[start : start + 1000]])
            if not request.follow:
                return
            async for batch in self.services.log_hub.follow_batches(follower):
                yield pb.LogBatch(events=[log_event(r) for r in batch])
        finally:
            self.services.log_hub.unsubscribe(follower)

    # ---- runs -----------------------------------------------------------------------------

    @unary
    async def TriggerRun(
        self, request: pb.TriggerRunRequest, context: Context
    ) -> pb.TriggerRunResponse:
        if not request.job:
            raise BadArgumentError("job is required, e.g. 'replenishment'")
        launch = await self.services.runs.trigger(
            request.job, trigger="manual", dry_run=request.dry_run
        )
        return pb.TriggerRunResponse(
            run=await self._run(launch.run), already_running=launch.already_running
        )

    @streaming
    async def WatchRun(
        self, request: pb.WatchRunRequest, context: Context
    ) -> AsyncIterator[pb.RunProgress]:
        if not request.run_id:
            raise BadArgumentError("run_id is required")
        async for event in self.services.runs.watch(request.run_id):
            yield pb.RunProgress(
                run_id=event.run.id,
                kind=event.kind,
                phase=event.phase,
                counts=event.counts,
                message=event.message,
                run=await self._run(event.run),
            )

    @unary
    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        if request.limit < 0 or request.limit > 1000:
            raise BadArgumentError("limit must be between 0 and 1000")
        records = await run_store.list_runs(self.services.db, request.job, request.limit or 20)
        return pb.ListRunsResponse(runs=[await self._run(r) for r in records])

    @unary
    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.RunDetail:
        if not request.run_id:
            raise BadArgumentError("run_id is required")
        async with self._plan_readers:
            record = await run_store.get_run(self.services.db, request.run_id)
            items = await run_store.plan_items(self.services.db, record.id)
            delivery = await outbox_store.run_delivery_state(self.services.db, record.id)
            return pb.RunDetail(
                run=self._run_message(record, [d.state for d in delivery.documents]),
                items=[plan_item(i) for i in items],
                documents=[
                    pb.RunDocument(
                        outbox_id=d.outbox_id,
                        kind=d.kind,
                        summary=d.summary,
                        state=d.state,
                        external_id=d.external_id or "",
                        number=d.number or "",
                        last_error=d.last_error or "",
                    )
                    for d in delivery.documents
                ],
            )

    async def _run(self, record: RunRecord) -> pb.Run:
        delivery = await outbox_store.run_delivery_state(self.services.db, record.id)
        return self._run_message(record, [d.state for d in delivery.documents])

    @staticmethod
    def _run_message(record: RunRecord, document_states: list[str]) -> pb.Run:
        return pb.Run(
            id=record.id,
            job=record.job,
            trigger=record.trigger,
            dry_run=record.dry_run,
            status=record.status,
            reason=record.reason,
            started_at_ms=ms(record.started_at),
            finished_at_ms=ms(record.finished_at),
            phases=[
                pb.Phase(
                    name=p["name"],
                    started_at_ms=ms(p["started_at"]),
                    seconds=float(p.get("seconds", 0.0)),
                )
                for p in record.phases
            ],
            counts={k: int(v) for k, v in record.counts.items()},
            delivery=delivery_summary(document_states),
        )

    # ---- outbox ---------------------------------------------------------------------------

    @unary
    async def ListOutbox(
        self, request: pb.ListOutboxRequest, context: Context
    ) -> pb.ListOutboxResponse:
        if request.state and request.state not in OUTBOX_STATES:
            raise BadArgumentError(
                f"state must be one of {', '.join(OUTBOX_STATES)}; got {request.state!r}"
            )
        if request.limit < 0 or request.limit > 1000:
            raise BadArgumentError("limit must be between 0 and 1000")
        entries = await outbox_store.list_entries(
            self.services.db, request.state or None, request.limit or 100
        )
        return pb.ListOutboxResponse(entries=[outbox_entry(e) for e in entries])

    @unary
    async def GetOutboxEntry(
        self, request: pb.OutboxEntryRequest, context: Context
    ) -> pb.OutboxEntry:
        _positive_id(request.id)
        entry = await outbox_store.get_entry(self.services.db, request.id)
        return outbox_entry(entry, await self.services.outbox_payload_summary(request.id))

    @unary
    async def RetryOutboxEntry(
        self, request: pb.OutboxEntryRequest, context: Context
    ) -> pb.OutboxEntry:
        _positive_id(request.id)
        entry = await outbox_store.retry_entry(self.services.db, request.id)
        self.services.wake_outbox()
        return outbox_entry(entry)

    @unary
    async def DiscardOutboxEntry(
        self, request: pb.DiscardOutboxEntryRequest, context: Context
    ) -> pb.OutboxEntry:
        _positive_id(request.id)
        if not request.reason.strip():
            raise BadArgumentError("a reason is required to discard an entry")
        entry = await outbox_store.discard_entry(
            self.services.db, request.id, request.reason.strip()
        )
        return outbox_entry(entry)

    # ---- schedules ------------------------------------------------------------------------

    @unary
    async def ListSchedules(
        self, request: pb.ListSchedulesRequest, context: Context
    ) -> pb.ListSchedulesResponse:
        infos = await self.services.scheduler.list_schedules()
        return pb.ListSchedulesResponse(
            schedules=[schedule_message(i) for i in infos],
            outbox_interval_s=self.services.config.outbox.interval_s,
        )

    @unary
    async def NextFireTimes(
        self, request: pb.NextFireTimesRequest, context: Context
    ) -> pb.NextFireTimesResponse:
        if not request.job:
            raise BadArgumentError("job is required")
        if not 1 <= (request.count or 10) <= 1000:
            raise BadArgumentError("count must be between 1 and 1000")
        fires = await self.services.scheduler.next_fire_times(request.job, request.count or 10)
        zone = self.services.config.jobs[request.job].timezone
        return pb.NextFireTimesResponse(
            job=request.job, timezone=zone, fires_ms=[ms(f.timestamp()) for f in fires]
        )

    @unary
    async def PauseSchedule(self, request: pb.ScheduleRequest, context: Context) -> pb.Schedule:
        if not request.job:
            raise BadArgumentError("job is required")
        await self.services.scheduler.pause(request.job)
        return await self._schedule(request.job)

    @unary
    async def ResumeSchedule(self, request: pb.ScheduleRequest, context: Context) -> pb.Schedule:
        if not request.job:
            raise BadArgumentError("job is required")
        await self.services.scheduler.resume(request.job)
        return await self._schedule(request.job)

    async def _schedule(self, job: str) -> pb.Schedule:
        for info in await self.services.scheduler.list_schedules():
            if info.job == job:
                return schedule_message(info)
        raise NotFoundError(f"no job named {job!r}")

    # ---- connections and config -----------------------------------------------------------

    @unary
    async def CheckConnections(
        self, request: pb.CheckConnectionsRequest, context: Context
    ) -> pb.CheckConnectionsResponse:
        results = await self.services.check_connections()
        return pb.CheckConnectionsResponse(
            checks=[
                pb.ConnectionCheck(system=r.system, name=r.name, ok=r.ok, detail=r.detail)
                for r in results
            ],
            ok=all(r.ok for r in results),
        )

    @unary
    async def ReloadConfig(
        self, request: pb.ReloadConfigRequest, context: Context
    ) -> pb.ReloadConfigResponse:
        ok, error, changed = await self.services.reload_config()
        return pb.ReloadConfigResponse(ok=ok, error=error, changed=changed)


def _positive_id(value: int) -> None:
    if value <= 0:
        raise BadArgumentError("id must be a positive outbox entry id")


def plan_item(item: PlanItemRecord) -> pb.PlanItem:
    """A stored plan item (``ItemDecision.detail()``) as a message; quantities stay strings."""
    detail = item.detail
    norm = detail.get("norm") or {}
    deficit = detail.get("deficit") or {}
    return pb.PlanItem(
        target=item.target,
        item_key=item.item_key,
        code=item.code,
        article=item.article,
        name=item.name,
        target_free=str(detail.get("target_free") or ""),
        target_min=str(norm.get("minimum") or ""),
        target_max=str(norm.get("maximum") or ""),
        incoming=str(detail.get("incoming") or ""),
        need=str(deficit.get("need_rounded") or ""),
        donors=[
            pb.DonorTake(
                donor=d["warehouse"]["name"],
                free=str(d["free"]),
                own_min=str(d["minimum"]),
                take=str(d["take"]),
            )
            for d in deficit.get("donors", [])
        ],
        external=str(deficit.get("external") or ""),
        unmapped=str(deficit.get("unmapped") or ""),
        decision=item.decision,
        reason=item.reason,
    )


def outbox_entry(entry: OutboxEntry, payload_summary: str = "") -> pb.OutboxEntry:
    return pb.OutboxEntry(
        id=entry.id,
        run_id=entry.run_id,
        kind=entry.kind,
        idempotency_key=entry.idempotency_key,
        summary=entry.summary,
        state=entry.state,
        attempts=entry.attempts,
        next_attempt_at_ms=ms(entry.next_attempt_at),
        last_error=entry.last_error or "",
        external_id=entry.external_id or "",
        number=entry.external_number or "",
        discard_reason=entry.discard_reason or "",
        created_at_ms=ms(entry.created_at),
        updated_at_ms=ms(entry.updated_at),
        delivered_at_ms=ms(entry.delivered_at),
        outcome_unknown=entry.outcome_unknown,
        payload_summary=payload_summary,
    )


def schedule_message(info: ScheduleInfo) -> pb.Schedule:
    return pb.Schedule(
        job=info.job,
        kind=info.kind,
        cron=info.cron,
        timezone=info.timezone,
        enabled=info.enabled,
        paused=info.paused,
        last_fire_nominal_ms=ms(info.last_fire.timestamp()) if info.last_fire else 0,
        last_fire_outcome=info.last_outcome or "",
        last_fire_run_id=info.last_run_id or "",
        next_fires_ms=[ms(f.timestamp()) for f in info.next_fires],
        missed=info.missed,
        skipped=info.skipped,
    )
