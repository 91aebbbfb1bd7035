"""The HubControl servicer: turns requests into calls on ``HubServices`` and results into
messages. Errors become status codes in ``daemon.control.errors`` only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from daemon.control.errors import BadArgumentError, streaming, unary
from daemon.logstream import LEVELS, LogRecord
from protos.hub.v1 import control_pb2 as pb
from protos.hub.v1 import control_pb2_grpc

if TYPE_CHECKING:
    from daemon.services import HubServices

Context = grpc.aio.ServicerContext[Any, Any]


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
    def __init__(self, services: HubServices) -> None:
        self.services = services

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
            connectors=[
                pb.ConnectorHealth(system=system, details=details)
                for system, details in sorted(info.connectors.items())
            ],
        )

    @streaming
    async def TailLogs(
        self, request: pb.TailLogsRequest, context: Context
    ) -> AsyncIterator[pb.LogEvent]:
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
            for record in history:
                yield log_event(record)
            if not request.follow:
                return
            async for record in self.services.hub.log_hub.follow(follower):
                yield log_event(record)
        finally:
            self.services.hub.log_hub.unsubscribe(follower)
