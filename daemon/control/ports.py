"""What the control plane needs from the running daemon.

``HubControlService`` talks only to a ``ControlledHub``; the composition root's
``daemon.services.HubServices`` is the one that serves it. Stated here, so the dependency runs
from the composition root to the control plane and never back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from daemon.config import HubConfig
from daemon.observability.logstream import Follower, LogHub, LogRecord
from daemon.ports import CheckResult
from daemon.replenishment.runs import RunManager
from daemon.scheduling.scheduler import Scheduler
from daemon.store import Database
from daemon.store.runs import RunRecord
from daemon.store.space import StorageStatus


@dataclass(frozen=True)
class StatusInfo:
    """What ``hubctl status`` shows."""

    version: str
    pid: int
    started_at: float
    uptime_s: float
    config_path: str
    database_path: str
    socket_path: str
    draining: bool
    outbox_depth: dict[str, int]
    last_runs: list[RunRecord]
    connectors: dict[str, dict[str, str]]
    storage: StorageStatus


class ControlledHub(Protocol):
    """The daemon's parts and the operations a control request may call."""

    @property
    def db(self) -> Database: ...

    @property
    def config(self) -> HubConfig:
        """The current config (a reload replaces it)."""
        ...

    @property
    def runs(self) -> RunManager: ...

    @property
    def scheduler(self) -> Scheduler: ...

    @property
    def log_hub(self) -> LogHub: ...

    async def status(self) -> StatusInfo: ...

    async def logs(
        self, *, last: int, min_level: str, run_id: str
    ) -> tuple[list[LogRecord], Follower]: ...

    async def check_connections(self) -> list[CheckResult]: ...

    async def outbox_payload_summary(self, outbox_id: int) -> str: ...

    def wake_outbox(self) -> None: ...

    async def reload_config(self) -> tuple[bool, str, list[str]]: ...
