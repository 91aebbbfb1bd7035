"""The daemon's parts, built once and handed to the control API.

``HubServices.open`` is where adapters are constructed (connectors with their HTTP sessions, the
run manager, the outbox processor, the scheduler); the gRPC servicer only talks to this object.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from daemon import __version__
from daemon.config import HubConfig
from daemon.logstream import Follower, LogRecord
from daemon.store import Database

if TYPE_CHECKING:
    from daemon.app import Hub

_log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class StatusInfo:
    version: str
    pid: int
    started_at: float
    uptime_s: float
    config_path: str
    database_path: str
    socket_path: str
    draining: bool
    outbox_depth: dict[str, int]
    connectors: dict[str, dict[str, str]]


class HubServices:
    def __init__(self, hub: Hub, db: Database) -> None:
        self.hub = hub
        self.db = db

    @classmethod
    async def open(cls, hub: Hub, db: Database, stack: AsyncExitStack) -> HubServices:
        return cls(hub, db)

    @property
    def config(self) -> HubConfig:
        return self.hub.config

    def start_loops(self, group: asyncio.TaskGroup) -> list[asyncio.Task[Any]]:
        return []

    def close_watchers(self) -> None:
        pass

    def apply_config(self, new: HubConfig, changed: list[str]) -> None:
        if any(key.startswith("logging.level") for key in changed):
            import logging

            logging.getLogger().setLevel(new.logging.level.upper())

    # ---- status and logs --------------------------------------------------------------------

    async def status(self) -> StatusInfo:
        import os

        rows = await self.db.fetchall("SELECT state, COUNT(*) FROM outbox GROUP BY state")
        return StatusInfo(
            version=__version__,
            pid=os.getpid(),
            started_at=self.hub.started_at,
            uptime_s=time.time() - self.hub.started_at,
            config_path=str(self.hub.config_path),
            database_path=str(self.db.path),
            socket_path=str(self.hub.socket_path),
            draining=self.hub.draining,
            outbox_depth={str(r[0]): int(r[1]) for r in rows},
            connectors={},
        )

    async def logs(
        self, *, last: int, min_level: str, run_id: str
    ) -> tuple[list[LogRecord], Follower]:
        return await self.hub.log_hub.history_then_follow(
            self.db, last=last, min_level=min_level, run_id=run_id
        )
